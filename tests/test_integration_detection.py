"""
Protocol detection end to end: one ``protocol: auto`` port serves curl (HTTP/1.1), curl
``--http2-prior-knowledge``, grpcio and the real sofa-rpc-node Dubbo consumer, then TLS on the same port: curl
``--cacert`` negotiating ``h2`` and ``http/1.1`` by ALPN.  The mesh runs in-process on the real reactor
(tests/reactor_thread.py) so the test can give the auto listener its IServerTLS (the test one of
tests/test_detect_listener.py; the merge with listener TLS passes the ``tls`` block's); the apps are real
subprocesses.  Garbage, a silent client and a plain-text client on the same port are refused and counted while the
others are served; every connection is counted once in the overload gauge.
"""

import json
import os
import shutil
import socket
import subprocess
import time

import grpc
import pytest

from tests import support
from tests.certs import CertAuthority
from tests.reactor_thread import onReactor, reactor, waitFor
from tests.test_grpc_integration import OPTIONS, call
from tests.test_grpc_integration import startPeer as startGrpcPeer
from tests.test_integration_dubbo import NODE, PEERS, consume, startProvider
from txmesh.config import loads
from txmesh.service import MeshService

pytestmark = pytest.mark.timeout(90)

CURL = shutil.which("curl")
DUBBO = NODE is not None and os.path.isdir(os.path.join(PEERS, "node_modules", "sofa-rpc-node"))

CONFIG = """
admin: {{address: "tcp:0:interface=127.0.0.1"}}
listeners:
  - name: edge
    protocol: auto
    address: tcp:{port}:interface=127.0.0.1
    detect: {{http1: web, http2: h2in, dubbo: dub}}
    detection_timeout: 1s
    tls: {{certificates: [{{cert_chain: "{cert}", private_key: "{key}"}}]}}
  - name: web
    address: internal
    default_cluster: http_app
  - name: h2in
    protocol: http2
    address: internal
    route_config:
      virtual_hosts:
        - name: all
          domains: ["*"]
          routes:
            - match: {{prefix: /test.Echo/}}
              route: {{cluster: grpc_app}}
            - match: {{prefix: /}}
              route: {{cluster: http_app}}
  - name: dub
    protocol: dubbo
    address: internal
    default_cluster: dubbo_app
clusters:
  - name: http_app
    endpoints: [{{address: "127.0.0.1:{http}"}}]
  - name: grpc_app
    protocol: grpc
    endpoints: [{{address: "127.0.0.1:{grpc}"}}]
  - name: dubbo_app
    protocol: dubbo
    endpoints: [{{address: "127.0.0.1:{dubbo}"}}]
"""


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    procs = []
    svc = None
    try:
        up, httpPort, _ = support.startUpstream()
        procs.append(up)
        grpcPeer, grpcPort = startGrpcPeer()
        procs.append(grpcPeer)
        dubboPort = support.freePort()
        if DUBBO:
            provider, dubboPort = startProvider()
            procs.append(provider)
        ca = CertAuthority(str(tmp_path_factory.mktemp("detect-ca")), "detect-test-ca")
        issued = ca.issue("localhost", dns=["localhost"])
        port = support.freePort()
        # the auto listener's own tls block: listener TLS (txmesh.tls.server) started by the detector
        config = loads(CONFIG.format(port=port, http=httpPort, grpc=grpcPort, dubbo=dubboPort,
                                     cert=issued.chainPath, key=issued.keyPath))
        r = reactor()

        def start():
            s = MeshService(config, r, installSignal=lambda *a: None)
            s.startService()
            return s

        svc = onReactor(start)
        support.waitForPort(port)
        yield {"svc": svc, "port": port, "ca": ca}
    finally:
        if svc is not None:
            onReactor(svc.stopService, timeout=30)
        for p in reversed(procs):
            p.stop()


def stat(env, name, **labels):
    return onReactor(lambda: env["svc"].stats.total(name, **labels))


def curl(env, *args, scheme="http"):
    out = subprocess.run([CURL, "-sS", "--max-time", "10", "-o", "-", "-w", "\n%{http_version} %{http_code}"]
                         + list(args) + ["%s://localhost:%d/echo/x" % (scheme, env["port"])],
                         capture_output=True, timeout=20)
    assert out.returncode == 0, out.stderr
    body, _, status = out.stdout.rpartition(b"\n")
    return json.loads(body), status.decode()


def noConnections(env):
    """Every connection closed: none on any listener's books, none in the overload gauge."""
    svc = env["svc"]
    return svc.overload.active.value == 0 and not any(f.connections for f in svc.listenerFactories)


@pytest.mark.skipif(CURL is None, reason="curl is not installed")
def test_curl_http1_and_http2_prior_knowledge_on_one_port(env):
    before = stat(env, "downstream_cx_detected", listener="edge", protocol="http1")
    echo, status = curl(env)
    assert status == "1.1 200" and echo["method"] == "GET"
    echo, status = curl(env, "--http2-prior-knowledge")
    assert status == "2 200" and echo["path"].startswith("/echo/x")
    assert stat(env, "downstream_cx_detected", listener="edge", protocol="http1") == before + 1
    assert stat(env, "downstream_rq", listener="h2in") >= 1
    waitFor(lambda: noConnections(env))


def test_grpcio_on_the_same_port(env):
    channel = grpc.insecure_channel("127.0.0.1:%d" % env["port"], options=OPTIONS)
    try:
        reply, c = call(channel, "Unary").with_call(b"hello", timeout=5)
        assert reply == b"hello" and c.code() == grpc.StatusCode.OK
        replies = list(call(channel, "ServerStream", "unary_stream")(b"5:100", timeout=5))
        assert len(replies) == 5 and all(len(m) == 100 for m in replies)
    finally:
        channel.close()
    assert stat(env, "downstream_cx_detected", listener="edge", protocol="http2") >= 1


@pytest.mark.skipif(not DUBBO, reason="Dubbo peers not installed")
def test_real_dubbo_consumer_on_the_same_port(env):
    proxied = consume(env["port"], "basic")
    assert proxied["echo"] == {"ok": "héllo"} and proxied["add"] == {"ok": 42}
    assert proxied["fail"]["message"] == "boom"
    assert stat(env, "downstream_cx_detected", listener="edge", protocol="dubbo") >= 1
    assert stat(env, "dubbo_requests", listener="dub") >= 1


@pytest.mark.skipif(CURL is None, reason="curl is not installed")
@pytest.mark.parametrize("flag, version", [("--http2", "2"), ("--http1.1", "1.1")])
def test_tls_on_the_same_port_alpn_chooses(env, flag, version):
    tlsBefore = stat(env, "downstream_cx_detected", listener="edge", protocol="tls")
    echo, status = curl(env, "--cacert", env["ca"].certPath, flag, scheme="https")
    assert status == version + " 200"
    assert stat(env, "downstream_cx_detected", listener="edge", protocol="tls") == tlsBefore + 1


def rawConnection(env, data):
    s = socket.create_connection(("127.0.0.1", env["port"]), timeout=5)
    if data:
        s.sendall(data)
    return s


def closedByPeer(s, timeout=5.0):
    s.settimeout(timeout)
    try:
        return s.recv(100) == b""
    except ConnectionResetError:
        return True
    finally:
        s.close()


def test_garbage_and_silence_are_refused_and_counted_while_others_are_served(env):
    unknown = stat(env, "downstream_cx_detect_failed", listener="edge", reason="unknown")
    timeouts = stat(env, "downstream_cx_detect_failed", listener="edge", reason="timeout")
    silent = rawConnection(env, b"")
    started = time.monotonic()
    assert closedByPeer(rawConnection(env, b"\x00\x01\x02garbage"))
    echo, status = curl(env)  # served meanwhile
    assert status == "1.1 200"
    assert closedByPeer(silent)  # detection_timeout: 1s
    assert time.monotonic() - started < 5
    assert stat(env, "downstream_cx_detect_failed", listener="edge", reason="unknown") == unknown + 1
    assert stat(env, "downstream_cx_detect_failed", listener="edge", reason="timeout") == timeouts + 1
    waitFor(lambda: noConnections(env))


def test_handed_off_connections_leave_the_detector_out_of_the_data_path(env):
    s = rawConnection(env, b"GET /echo/a HTTP/1.1\r\nHost: x\r\n\r\n")
    try:
        s.settimeout(5)
        assert s.recv(100).startswith(b"HTTP/1.1 200")

        def switched():
            [p] = env["svc"].listenerFactories[1].connections  # web's
            return p.transport.protocol is p  # Twisted's TCP transport delivers to the HTTP/1.1 protocol itself

        assert onReactor(switched)
        assert onReactor(lambda: env["svc"].overload.active.value) == 1
    finally:
        s.close()
    waitFor(lambda: noConnections(env))


@pytest.mark.skipif(CURL is None, reason="curl is not installed")
def test_under_twistd_on_txmeshs_own_transport(tmp_path):
    """The same port under ``twistd txmesh`` (txmesh's reactor and TCP transport, tests/support.py)."""
    up, httpPort, _ = support.startUpstream()
    admin, port = support.freePort(), support.freePort()
    issued = CertAuthority(str(tmp_path), "detect-twistd-ca").issue("localhost", dns=["localhost"])
    text = CONFIG.format(port=port, http=httpPort, grpc=support.freePort(), dubbo=support.freePort(),
                         cert=issued.chainPath, key=issued.keyPath)
    text = text.replace('admin: {address: "tcp:0:interface=127.0.0.1"}',
                        'admin: {address: "tcp:%d:interface=127.0.0.1"}' % admin)
    proc = support.startTxmesh(text, admin)
    try:
        support.waitForPort(port, proc=proc.popen)
        env = {"port": port}
        assert curl(env)[1] == "1.1 200"
        assert curl(env, "--http2-prior-knowledge")[1] == "2 200"
        assert closedByPeer(rawConnection(env, b"\xff" * 10))
        stats = json.loads(support.adminGet(admin, "/stats")[1])
        counted = {(s["labels"].get("protocol"), s["labels"].get("reason")): s["value"]
                   for name in ("downstream_cx_detected", "downstream_cx_detect_failed")
                   for s in stats.get(name, []) if s["labels"]["listener"] == "edge"}
        assert counted[("http1", None)] == 1 and counted[("http2", None)] == 1
        assert counted[(None, "unknown")] == 1
    finally:
        proc.stop()
        up.stop()
