"""
Retries end to end over loopback (issue 11 part 5): txmesh under twistd in front of nginx answering 503, the
scriptable upstream (tests/upstream_server.py) answering 200, and a port nothing listens on.  Every test is
bounded by its clients' timeouts and waitFor.
"""

import concurrent.futures
import http.client
import json
import os
import shutil
import socket
import sys
import threading

import pytest

from tests import support

pytestmark = pytest.mark.timeout(120)
NODE = shutil.which("node")
PEERS = os.path.join(support.ROOT, "tests", "dubbo_peers")

CONFIG = """
admin: {{address: "tcp:{admin}:interface=127.0.0.1"}}
listeners:
  - name: ingress
    protocol: http
    address: tcp:{listen}:interface=127.0.0.1
    route_config:
      virtual_hosts:
        - name: app
          domains: ["*"]
          routes:
            - match: {{prefix: /half}}
              route:
                cluster: half
                retry_policy: {{retry_on: "5xx", num_retries: 2}}
            - match: {{prefix: /dead}}
              route:
                cluster: dead
                retry_policy:
                  retry_on: "connect-failure,reset"
                  num_retries: 2
                  retry_budget: {{budget_percent: 100, min_retry_concurrency: 10}}
            - match: {{prefix: /storm}}
              route:
                cluster: failing
                retry_policy:
                  retry_on: "5xx"
                  num_retries: 3
                  retry_budget: {{budget_percent: 20, min_retry_concurrency: 1}}
clusters:
  - name: half
    lb_policy: round_robin
    endpoints: [{{address: "127.0.0.1:{echo}"}}, {{address: "127.0.0.1:{unavailable}"}}]
  - name: dead
    lb_policy: round_robin
    endpoints: [{{address: "127.0.0.1:{echo}"}}, {{address: "127.0.0.1:{echo2}"}}]
  - name: failing
    endpoints: [{{address: "127.0.0.1:{unavailable}"}}, {{address: "127.0.0.1:{unavailable2}"}}]
"""


@pytest.fixture(scope="module")
def mesh():
    if not support.NGINX:
        pytest.skip("nginx not installed")
    procs = []
    try:
        up, echo, _ = support.startUpstream()
        procs.append(up)
        unavailable, unavailable2 = support.freePort(), support.freePort()
        ng, _ = support.startNginx(
            "server { listen 127.0.0.1:%d; location / { return 503; } }\n"
            "server { listen 127.0.0.1:%d; location / { return 503; } }" % (unavailable, unavailable2))
        procs.append(ng)
        support.waitForPort(unavailable, proc=ng.popen)
        up2, echo2, _ = support.startUpstream()  # killed by a test, mid-load
        procs.append(up2)
        admin, listen = support.freePort(), support.freePort()
        cfg = CONFIG.format(admin=admin, listen=listen, echo=echo, unavailable=unavailable,
                            unavailable2=unavailable2, echo2=echo2)
        tx = support.startTxmesh(cfg, admin)
        procs.append(tx)
        support.waitForPort(listen, proc=tx.popen)
        yield {"admin": admin, "port": listen, "victim": up2}
    finally:
        for p in reversed(procs):
            p.stop()


def get(mesh, path):
    c = http.client.HTTPConnection("127.0.0.1", mesh["port"], timeout=10)
    try:
        c.request("GET", path, headers={"Host": "app.svc"})
        r = c.getresponse()
        r.read()
        return r.status
    finally:
        c.close()


def stat(mesh, name, **labels):
    _, body = support.adminGet(mesh["admin"], "/stats")
    return sum(s["value"] for s in json.loads(body).get(name, [])
               if all(s["labels"].get(k) == v for k, v in labels.items()))


def test_a_503_host_is_retried_on_the_other_and_every_request_succeeds(mesh):
    assert [get(mesh, "/half/%d" % i) for i in range(20)] == [200] * 20
    assert stat(mesh, "upstream_rq_retry", cluster="half") >= 5  # round robin sent about half to the 503 host
    assert stat(mesh, "upstream_rq_retry_success", cluster="half") == stat(mesh, "upstream_rq_retry", cluster="half")


def test_an_upstream_killed_mid_load_loses_no_request(mesh):
    def one(i):
        if i == 40:
            mesh["victim"].signal(9)  # SIGKILL: connections reset, later connects refused
        return get(mesh, "/dead/%d" % i)

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(200)))
    assert results == [200] * 200
    assert stat(mesh, "upstream_rq_retry", cluster="dead") >= 1


def test_a_budget_stops_a_retry_storm_when_every_host_fails(mesh):
    n = 60
    before = stat(mesh, "upstream_rq_total", cluster="failing")
    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        results = list(pool.map(lambda i: get(mesh, "/storm/%d" % i), range(n)))
    assert results == [503] * n
    attempts = stat(mesh, "upstream_rq_total", cluster="failing") - before
    retries = stat(mesh, "upstream_rq_retry", cluster="failing")
    assert attempts == n + retries
    # without the budget every request would make num_retries + 1 = 4 attempts
    assert attempts < 4 * n * 0.75, attempts
    assert stat(mesh, "upstream_rq_retry_budget_exhausted", cluster="failing") > 0


# -- gRPC: UNAVAILABLE from one grpcio server, retried on the other ---------------------------------------------------

GRPC_CONFIG = """
admin: {{address: "tcp:{admin}:interface=127.0.0.1"}}
listeners:
  - name: grpc_in
    protocol: grpc
    address: tcp:{listen}:interface=127.0.0.1
    route_config:
      virtual_hosts:
        - name: svc
          domains: ["*"]
          routes:
            - match: {{grpc: {{service: test.Echo}}}}
              route:
                cluster: echo
                timeout: 10s
                retry_policy: {{retry_on: unavailable, num_retries: 1}}
clusters:
  - name: echo
    protocol: h2
    lb_policy: round_robin
    endpoints: [{{address: "127.0.0.1:{a}"}}, {{address: "127.0.0.1:{b}"}}]
"""


def test_grpc_unavailable_is_retried_on_the_other_server():
    grpc = pytest.importorskip("grpc")
    peer = os.path.join(support.ROOT, "tests", "grpc_peers", "echo_server.py")
    procs = []
    try:
        ports = {}
        for name in ("a", "b"):
            ports[name] = support.freePort()
            procs.append(support.Proc([sys.executable, peer, str(ports[name]), name]))
            support.waitForPort(ports[name], proc=procs[-1].popen)
        admin, listen = support.freePort(), support.freePort()
        procs.append(support.startTxmesh(GRPC_CONFIG.format(admin=admin, listen=listen, **ports), admin))
        support.waitForPort(listen, proc=procs[-1].popen)
        with grpc.insecure_channel("127.0.0.1:%d" % (listen,)) as channel:
            unary = channel.unary_unary("/test.Echo/Unary", request_serializer=None, response_deserializer=None)
            answers = [unary(b"failon:a", timeout=5) for _ in range(10)]
        assert answers == [b"b"] * 10
        _, body = support.adminGet(admin, "/stats")
        retries = sum(s["value"] for s in json.loads(body).get("upstream_rq_retry", []))
        assert retries >= 3  # round robin sent about half the first attempts to a
    finally:
        for p in reversed(procs):
            p.stop()


# -- Dubbo: SERVICE_NOT_FOUND from one provider, retried on the real one -----------------------------------------------

DUBBO_CONFIG = """
admin: {{address: "tcp:{admin}:interface=127.0.0.1"}}
listeners:
  - name: dubbo_in
    protocol: dubbo
    address: tcp:{listen}:interface=127.0.0.1
    route_config:
      virtual_hosts:
        - name: all
          domains: ["*"]
          routes:
            - match: {{dubbo: {{interface: "org.txmesh.peers.*"}}}}
              route:
                cluster: provider
                retry_policy: {{retry_on: "service-not-found,connect-failure", num_retries: 1}}
clusters:
  - name: provider
    protocol: dubbo
    lb_policy: round_robin
    endpoints: [{{address: "127.0.0.1:{provider}"}}, {{address: "127.0.0.1:{missing}"}}]
"""


class NotFoundProvider:
    """A Dubbo provider that answers every two-way call SERVICE_NOT_FOUND (and counts them), in a thread."""

    def __init__(self):
        from txmesh.protocols.dubbo import codec as dc

        self.dc = dc
        self.calls = 0
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(30)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        try:
            while True:
                conn, _ = self.sock.accept()
                threading.Thread(target=self._serve, args=(conn,), daemon=True).start()
        except OSError:
            return

    def _serve(self, conn):
        dc = self.dc
        decoder = dc.DubboDecoder()
        conn.settimeout(30)
        try:
            while True:
                data = conn.recv(65536)
                if not data:
                    return
                for frame in decoder.feed(data):
                    if frame.isRequest and frame.twoWay:
                        if frame.event:
                            conn.sendall(dc.encodeResponse(frame.requestId, dc.OK, "", event=True))
                        else:
                            self.calls += 1
                            conn.sendall(dc.encodeResponse(frame.requestId, dc.SERVICE_NOT_FOUND, "not here"))
        except OSError:
            return
        finally:
            conn.close()

    def close(self):
        self.sock.close()


@pytest.mark.skipif(NODE is None or not os.path.isdir(os.path.join(PEERS, "node_modules", "sofa-rpc-node")),
                    reason="node or the Dubbo peers are not installed")
def test_dubbo_service_not_found_is_retried_on_another_provider():
    from tests.test_integration_dubbo import Raw, request, startProvider
    from txmesh.protocols.dubbo import codec as dc

    missing = NotFoundProvider()
    procs = []
    try:
        provider, providerPort = startProvider()
        procs.append(provider)
        admin, listen = support.freePort(), support.freePort()
        procs.append(support.startTxmesh(DUBBO_CONFIG.format(admin=admin, listen=listen, provider=providerPort,
                                                             missing=missing.port), admin))
        support.waitForPort(listen, proc=procs[-1].popen)
        raw = Raw(listen)
        frames = []
        for i in range(10):  # one at a time: concurrent retries past 3 would meet the max_retries breaker
            raw.send(request(i + 1, "echo", "Ljava/lang/String;", ["call %d" % i]))
            frames += raw.read(1, timeout=10)
        raw.close()
        assert sorted(f.requestId for f in frames) == list(range(1, 11))
        assert [f.status for f in frames] == [dc.OK] * 10
        assert missing.calls >= 3  # round robin sent about half the first attempts to it
    finally:
        missing.close()
        for p in reversed(procs):
            p.stop()
