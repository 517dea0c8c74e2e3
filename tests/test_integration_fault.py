"""
Fault injection and request mirroring end to end over loopback: txmesh under twistd with real clients (curl,
grpcio, the real Dubbo consumer in tests/dubbo_peers) and real upstreams (tests/upstream_server.py, the grpcio echo
server, a recording HTTP server in this process as the shadow).  Behaviour against the clock (percentages, delays,
bounds) is tested in memory in tests/test_fault.py and tests/test_shadow.py; here what clients really see.
"""

import http.server
import json
import os
import shutil
import subprocess
import threading
import time

import grpc
import pytest

from tests import support
from tests.test_grpc_integration import OPTIONS, call, startPeer
from tests.test_integration_dubbo import Raw, request as dubboRequest
from txmesh.protocols.dubbo import codec as dc

pytestmark = pytest.mark.timeout(120)

PEERS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dubbo_peers")
NODE = shutil.which("node")
CURL = shutil.which("curl")

CONFIG = """
admin:
  address: tcp:{admin}:interface=127.0.0.1
listeners:
  - name: web
    protocol: http
    address: tcp:{web}:interface=127.0.0.1
    filters:
      - name: fault
        config:
          delay: {{header_delay: {{}}, percentage: 100}}
          abort: {{header_abort: {{}}, percentage: 100}}
    route_config:
      virtual_hosts:
        - name: app
          domains: ["*"]
          routes:
            - match: {{prefix: /mirrored-to-nowhere}}
              route:
                cluster: echo
                request_mirror_policies: [{{cluster: deadshadow, timeout: 2s}}]
            - match: {{prefix: /mirrored}}
              route:
                cluster: echo
                request_mirror_policies: [{{cluster: shadow}}]
            - match: {{prefix: /}}
              route: {{cluster: echo}}
  - name: grpc_in
    protocol: grpc
    address: tcp:{grpc}:interface=127.0.0.1
    filters:
      - name: fault
        config:
          abort: {{grpc_status: 8, percentage: 100}}
          headers: [{{name: x-fault, exact: "on"}}]
    route_config:
      virtual_hosts:
        - name: svc
          domains: ["*"]
          routes:
            - match: {{grpc: {{service: test.Echo}}}}
              route: {{cluster: grpc_echo, timeout: 20s}}
  - name: dubbo_in
    protocol: dubbo
    address: tcp:{dubbo}:interface=127.0.0.1
    filters:
      - name: fault
        config:
          abort: {{dubbo_status: 100, percentage: 100}}
    route_config:
      virtual_hosts:
        - name: all
          domains: ["*"]
          routes:
            - match: {{dubbo: {{interface: "org.txmesh.peers.*"}}}}
              route: {{cluster: provider}}
clusters:
  - name: echo
    endpoints: [{{address: "127.0.0.1:{echo}"}}]
  - name: shadow
    endpoints: [{{address: "127.0.0.1:{shadow}"}}]
  - name: deadshadow
    connect_timeout: 1s
    endpoints: [{{address: "127.0.0.1:{dead}"}}]
  - name: grpc_echo
    protocol: h2
    endpoints: [{{address: "127.0.0.1:{grpcEcho}"}}]
  - name: provider
    protocol: dubbo
    connect_timeout: 1s
    endpoints: [{{address: "127.0.0.1:{dead}"}}]
"""


class Recorder(http.server.BaseHTTPRequestHandler):
    """The shadow upstream: records each request's method, path, Host and body, answers 200."""

    seen = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.seen.append((self.command, self.path, self.headers.get("Host"), body))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_POST

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def mesh():
    procs = []
    shadow = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=shadow.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        up, echo, _ = support.startUpstream()
        procs.append(up)
        peer, grpcEcho = startPeer()
        procs.append(peer)
        ports = {k: support.freePort() for k in ("admin", "web", "grpc", "dubbo", "dead")}
        tx = support.startTxmesh(CONFIG.format(echo=echo, shadow=shadow.server_address[1], grpcEcho=grpcEcho,
                                               **ports), ports["admin"])
        procs.append(tx)
        for k in ("web", "grpc", "dubbo"):
            support.waitForPort(ports[k], proc=tx.popen)
        yield dict(ports, proc=tx)
    finally:
        for p in reversed(procs):
            p.stop()
        shadow.shutdown()
        shadow.server_close()
        thread.join(5)


def stat(mesh, name, **labels):
    data = json.loads(support.adminGet(mesh["admin"], "/stats")[1])
    return sum(s["value"] for s in data.get(name, []) if labels.items() <= s["labels"].items())


def waitFor(condition, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in %gs" % timeout
        time.sleep(0.02)


def curl(mesh, path, *args):
    """(status, headers text, body) of one curl request to the HTTP listener."""
    out = subprocess.run([CURL, "-sS", "-i", "--max-time", "10", "-H", "Host: app.svc"] + list(args)
                         + ["http://127.0.0.1:%d%s" % (mesh["web"], path)], capture_output=True, timeout=20)
    head, _, body = out.stdout.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), head.decode("latin-1").lower(), body


@pytest.mark.skipif(CURL is None, reason="curl is not installed")
def test_http_abort_and_delay_by_header_seen_by_curl(mesh):
    assert curl(mesh, "/echo")[0] == 200  # no fault header, no fault
    status, head, body = curl(mesh, "/echo", "-H", "x-txmesh-fault-abort-request: 429")
    assert status == 429 and body == b"fault filter abort" and "x-txmesh-error: fault_abort" in head
    start = time.monotonic()
    status, _, body = curl(mesh, "/echo", "-H", "x-txmesh-fault-delay-request: 300")
    assert status == 200 and json.loads(body)["path"] == "/echo"
    assert time.monotonic() - start >= 0.3  # a lower bound only: the delay cannot be shorter
    assert stat(mesh, "fault_aborts_injected", listener="web") == 1
    assert stat(mesh, "fault_delays_injected", listener="web") == 1
    assert stat(mesh, "fault_active_faults", listener="web") == 0


def test_grpc_abort_seen_by_grpcio(mesh):
    channel = grpc.insecure_channel("127.0.0.1:%d" % (mesh["grpc"],), options=OPTIONS)
    try:
        assert call(channel, "Unary")(b"hi", timeout=5) == b"hi"
        with pytest.raises(grpc.RpcError) as e:
            call(channel, "Unary")(b"hi", timeout=5, metadata=(("x-fault", "on"),))
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "fault filter abort" in e.value.details()
    finally:
        channel.close()
    assert stat(mesh, "fault_aborts_injected", listener="grpc_in") == 1


@pytest.mark.skipif(NODE is None or not os.path.isdir(os.path.join(PEERS, "node_modules", "sofa-rpc-node")),
                    reason="Dubbo peers not installed (run `npm ci` in tests/dubbo_peers)")
def test_dubbo_abort_seen_by_the_real_consumer(mesh):
    out = subprocess.run([NODE, os.path.join(PEERS, "consumer.js"), "127.0.0.1:%d" % mesh["dubbo"], "basic"],
                         cwd=PEERS, capture_output=True, timeout=60, text=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    for name in ("echo", "add", "size", "count", "fail"):
        assert "ok" not in result[name] and "fault filter abort" in result[name]["message"], result
    assert stat(mesh, "fault_aborts_injected", listener="dubbo_in") == 5


def test_dubbo_abort_status_on_the_wire(mesh):
    # sofa-rpc-node keeps only the error message of a non-OK response; the status byte is read here
    client = Raw(mesh["dubbo"])
    try:
        client.send(dubboRequest(7, "echo", "Ljava/lang/String;", ["x"]))
        [reply] = client.read()
    finally:
        client.close()
    assert (reply.requestId, reply.status) == (7, dc.SERVER_THREADPOOL_EXHAUSTED_ERROR)  # dubbo_status: 100


def test_mirrored_request_reaches_the_shadow(mesh):
    Recorder.seen.clear()
    status, _, body = curl(mesh, "/mirrored/x", "--data-binary", "payload-1")
    assert status == 200 and json.loads(body)["path"] == "/mirrored/x"
    waitFor(lambda: Recorder.seen)
    assert Recorder.seen == [("POST", "/mirrored/x", "app.svc-shadow", b"payload-1")]
    waitFor(lambda: stat(mesh, "shadow_rq_success", cluster="shadow") == 1)
    assert stat(mesh, "shadow_rq_total", cluster="shadow") == 1


def test_shadow_down_leaves_the_primary_alone(mesh):
    for i in range(5):
        status, _, body = curl(mesh, "/mirrored-to-nowhere/%d" % i)
        assert status == 200 and json.loads(body)["path"] == "/mirrored-to-nowhere/%d" % i
    waitFor(lambda: stat(mesh, "shadow_rq_failed", cluster="deadshadow") == 5)
    assert stat(mesh, "shadow_rq_total", cluster="deadshadow") == 5
