"""
HTTP/1.1 downstream to an ``h2`` cluster, end to end under twistd: a raw HTTP/1.1 client posts a gRPC-framed
unary call through an ``http`` listener to the grpcio echo server (tests/grpc_peers/echo_server.py), which only
speaks HTTP/2.  What the client sees: HTTP/1.1 200, the echoed message, and grpc-status 0 (as a chunked trailer
or a header).  Bounded by socket timeouts.
"""

import socket

import pytest

from tests import support
from tests.test_grpc_integration import startPeer

pytestmark = pytest.mark.timeout(60)

CONFIG = """
admin:
  address: tcp:{admin}:interface=127.0.0.1
listeners:
  - name: http_in
    protocol: http
    address: tcp:{listen}:interface=127.0.0.1
    route_config:
      virtual_hosts:
        - name: svc
          domains: ["*"]
          routes:
            - match: {{prefix: /}}
              route: {{cluster: echo, timeout: 10s}}
clusters:
  - name: echo
    protocol: h2
    endpoints: [{{address: "127.0.0.1:{upstream}"}}]
"""


@pytest.fixture(scope="module")
def mesh():
    peer, upstream = startPeer()
    admin, listen = support.freePort(), support.freePort()
    proc = support.startTxmesh(CONFIG.format(admin=admin, listen=listen, upstream=upstream), admin)
    try:
        support.waitForPort(listen, proc=proc.popen)
        yield listen
    finally:
        proc.stop()
        peer.stop()


def _exchange(port, request):
    """Send ``request``, read one HTTP/1.1 response (chunked or sized) to its end; returns the raw bytes."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request)
        buf = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return buf
            buf += chunk
            head, sep, rest = buf.partition(b"\r\n\r\n")
            if not sep:
                continue
            lower = head.lower()
            if b"transfer-encoding: chunked" in lower:
                if rest.endswith(b"\r\n\r\n") and (b"\r\n0\r\n" in b"\r\n" + rest):
                    return buf
            elif b"content-length:" in lower:
                n = int(lower.split(b"content-length:", 1)[1].split(b"\r\n", 1)[0])
                if len(rest) >= n:
                    return buf


def test_http1_client_reaches_grpc_server_over_h2(mesh):
    payload = b"hello over h2"
    message = b"\x00" + len(payload).to_bytes(4, "big") + payload
    request = (b"POST /test.Echo/Unary HTTP/1.1\r\nHost: echo.svc\r\nContent-Type: application/grpc\r\n"
               b"TE: trailers\r\nContent-Length: %d\r\n\r\n" % len(message)) + message
    raw = _exchange(mesh, request)
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), raw[:200]
    # the echoed gRPC message crosses intact (inside a chunk if the response is chunked)
    assert message in body, raw
    # grpc-status travels as a chunked trailer (or a header for a trailers-only answer)
    assert b"grpc-status: 0" in raw.lower(), raw


def test_http1_client_sees_trailers_only_grpc_error_as_headers(mesh):
    message = b"\x00\x00\x00\x00\x02hi"
    request = (b"POST /test.Nope/Missing HTTP/1.1\r\nHost: echo.svc\r\nContent-Type: application/grpc\r\n"
               b"TE: trailers\r\nContent-Length: %d\r\n\r\n" % len(message)) + message
    raw = _exchange(mesh, request)
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), raw[:200]
    assert b"\r\ngrpc-status: 12\r\n" in head.lower() + b"\r\n", raw
    assert body == b""
