"""
Network filters end to end: txmesh under twistd with connection_limit, source_ip and the third-party fixture
filter (tests/fixtures/example_network_filter, through plugin_paths) on HTTP/1.1, HTTP/2, gRPC and Dubbo
listeners; real TCP clients over loopback are refused (closed before any byte) or served, and the counters show in
the admin ``/stats``.  Every wait is bounded.
"""

import hashlib
import json
import os
import socket
import struct
import time

import pytest

from tests import support
from txmesh.protocols.dubbo.codec import encodeHeartbeat

pytestmark = pytest.mark.timeout(120)

FIXTURE = os.path.join(support.ROOT, "tests", "fixtures", "example_network_filter", "txmesh", "plugins")
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
SETTINGS_FRAME = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


def routes(action):
    """A listener's route_config: every path to ``action`` (doubled braces: CONFIG is formatted later)."""
    return """
    route_config:
      virtual_hosts:
        - name: all
          domains: ["*"]
          routes:
            - match: {{prefix: /}}
              %s
""" % (action,)


DIRECT = routes('direct_response: {{status: 200, body: "hello\\n"}}')

CONFIG = """
plugin_paths: ["{fixture}"]
admin:
  address: tcp:{admin}:interface=127.0.0.1
listeners:
  - name: limited
    address: tcp:{limited}:interface=127.0.0.1
    network_filters:
      - name: connection_limit
        config: {{max_connections: 1}}
""" + DIRECT + """
  - name: allowed
    address: tcp:{allowed}:interface=127.0.0.1
    network_filters:
      - name: source_ip
        config: {{allow: [127.0.0.0/8, "::1"], deny: [10.0.0.0/8]}}
      - name: connection_limit
        config: {{max_connections: 100}}
""" + DIRECT + """
  - name: denied
    address: tcp:{denied}:interface=127.0.0.1
    network_filters:
      - name: source_ip
        config: {{deny: [127.0.0.1/32]}}
""" + DIRECT + """
  - name: preamble
    address: tcp:{preamble}:interface=127.0.0.1
    network_filters:
      - name: example_preamble
        config: {{token: open-sesame}}
""" + DIRECT + """
  - name: h2allowed
    protocol: http2
    address: tcp:{h2allowed}:interface=127.0.0.1
    network_filters:
      - {{name: source_ip, config: {{allow: [127.0.0.0/8]}}}}
  - name: grpcdenied
    protocol: grpc
    address: tcp:{grpcdenied}:interface=127.0.0.1
    network_filters:
      - {{name: source_ip, config: {{deny: [127.0.0.0/8]}}}}
  - name: dubboallowed
    protocol: dubbo
    address: tcp:{dubboallowed}:interface=127.0.0.1
    network_filters:
      - {{name: connection_limit, config: {{max_connections: 5}}}}
  - name: proxied
    address: tcp:{proxied}:interface=127.0.0.1
    network_filters:
      - {{name: connection_limit, config: {{max_connections: 100}}}}
      - {{name: source_ip, config: {{allow: [127.0.0.0/8]}}}}
""" + routes("route: {{cluster: upstream}}") + """
  - name: dubbodenied
    protocol: dubbo
    address: tcp:{dubbodenied}:interface=127.0.0.1
    network_filters:
      - {{name: source_ip, config: {{allow: [192.0.2.0/24]}}}}
clusters:
  - name: upstream
    endpoints: [{{address: "127.0.0.1:{upstream}"}}]
"""

NAMES = ("limited", "allowed", "denied", "preamble", "h2allowed", "grpcdenied", "dubboallowed", "dubbodenied",
         "proxied")


@pytest.fixture(scope="module")
def mesh():
    up, upstream, _ = support.startUpstream()
    try:
        ports = {name: support.freePort() for name in NAMES + ("admin",)}
        tx = support.startTxmesh(CONFIG.format(fixture=FIXTURE, upstream=upstream, **ports), ports["admin"])
        try:
            for name in NAMES:
                support.waitForPort(ports[name], proc=tx.popen)
            yield ports
        finally:
            tx.stop()
    finally:
        up.stop()


def exchange(port, data, timeout=5.0):
    """Connect, send ``data``, and read until the proxy closes or the timeout."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        return readAll(s, data, timeout)
    finally:
        s.close()


def readAll(s, data, timeout=5.0, until=None):
    """Send ``data`` on ``s``; read until EOF, a reset, ``until`` (bytes) seen, or the timeout."""
    if data:
        try:
            s.sendall(data)
        except OSError:
            return b""
    out = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if until is not None and until in out:
            break
        try:
            chunk = s.recv(65536)
        except socket.timeout:
            break
        except ConnectionResetError:
            break
        if not chunk:
            break
        out += chunk
    return out


GET = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


def stat(mesh, name, **labels):
    """The value of one series in /stats (0 when absent)."""
    _, body = support.adminGet(mesh["admin"], "/stats")
    for series in json.loads(body).get(name, []):
        if series["labels"] == labels:
            return series["value"]
    return 0


def waitForStat(mesh, value, name, **labels):
    deadline = time.monotonic() + 5
    while stat(mesh, name, **labels) != value:
        if time.monotonic() > deadline:
            raise AssertionError("%s%r never became %r" % (name, labels, value))
        time.sleep(0.02)


def test_connectionLimitRefusesThePastTheLimitAndFreesOnClose(mesh):
    # the fixture's port probes were connections too: wait until txmesh has seen them close
    waitForStat(mesh, 0, "connection_limit_active_connections", listener="limited")
    first = socket.create_connection(("127.0.0.1", mesh["limited"]), timeout=5)
    try:
        answer = readAll(first, GET, until=b"hello\n")
        assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"hello\n")
        assert stat(mesh, "connection_limit_active_connections", listener="limited") == 1
        # the first connection stays open (keep-alive): a second one is closed before any byte
        assert exchange(mesh["limited"], GET) == b""
        assert stat(mesh, "connection_limit_limited_connections", listener="limited") == 1
    finally:
        first.close()
    waitForStat(mesh, 0, "connection_limit_active_connections", listener="limited")
    answer = exchange(mesh["limited"], b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"hello\n")


def test_sourceIPAllowsAndDenies(mesh):
    answer = exchange(mesh["allowed"], b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"hello\n")
    assert exchange(mesh["denied"], GET) == b""
    assert stat(mesh, "source_ip_allowed", listener="allowed") >= 1
    assert stat(mesh, "source_ip_denied", listener="denied") >= 1
    # a denied connection never reached the HTTP listener
    assert stat(mesh, "downstream_cx", listener="denied") == 0


def test_thirdPartyFilterFromPluginPaths(mesh):
    answer = exchange(mesh["preamble"], b"open-sesame\r\nGET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"hello\n")
    assert exchange(mesh["preamble"], b"let-me-in\r\n" + GET) == b"bad preamble\r\n"
    assert stat(mesh, "example_preamble_refused") == 1


def test_http2AndGrpcListeners(mesh):
    # an allowed HTTP/2 client gets the server's SETTINGS after its preface; a denied gRPC one is closed
    s = socket.create_connection(("127.0.0.1", mesh["h2allowed"]), timeout=5)
    try:
        answer = readAll(s, PREFACE + SETTINGS_FRAME, timeout=2, until=b"\x04")
    finally:
        s.close()
    assert len(answer) >= 9 and answer[3] == 4  # a SETTINGS frame
    assert exchange(mesh["grpcdenied"], PREFACE + SETTINGS_FRAME) == b""
    assert stat(mesh, "source_ip_denied", listener="grpcdenied") >= 1


def test_dubboListeners(mesh):
    s = socket.create_connection(("127.0.0.1", mesh["dubboallowed"]), timeout=5)
    try:
        answer = readAll(s, encodeHeartbeat(77), timeout=2, until=struct.pack(">Q", 77))
    finally:
        s.close()
    assert answer[:2] == b"\xda\xbb" and struct.unpack(">Q", answer[4:12])[0] == 77
    assert exchange(mesh["dubbodenied"], encodeHeartbeat(78)) == b""
    assert stat(mesh, "source_ip_denied", listener="dubbodenied") >= 1


def test_proxiedThroughTheFiltersBothWaysWithBackpressure(mesh):
    """
    A 2 MiB upload and a 16 MiB download through the filtered listener, the client reading slowly so the
    downstream fills and the proxy must pause the upstream (through the producer registered across the wrapper).
    """
    body = os.urandom(2 << 20)
    s = socket.create_connection(("127.0.0.1", mesh["proxied"]), timeout=10)
    try:
        s.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        answer = readAll(s, b"", timeout=10, until=b"}")
        assert answer.startswith(b"HTTP/1.1 200")
        assert hashlib.sha256(body).hexdigest().encode() in answer
        size = 16 << 20
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        s.sendall(b"GET /bytes/%d HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % size)
        time.sleep(0.3)  # let the proxy's buffers fill while nothing is read
        got = readAll(s, b"", timeout=30)
    finally:
        s.close()
    head, _, payload = got.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and payload == b"x" * size
