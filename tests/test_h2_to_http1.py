"""
HTTP/2 downstream to an HTTP/1.1 cluster (issue 3's "and the reverse"), end to end under twistd: curl with
prior-knowledge h2c and an h2 client made with the ``h2`` library, through an ``http2`` listener, to the
scriptable HTTP/1.1 upstream (tests/upstream_server.py).  What the client sees: the upstream's status, headers
(no connection-specific ones), body and trailers, as HTTP/2.  Bounded by socket and subprocess timeouts.
"""

import hashlib
import json
import os
import socket
import subprocess

import pytest
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import DataReceived, ResponseReceived, StreamEnded, StreamReset, TrailersReceived

from tests import support

pytestmark = pytest.mark.timeout(60)

CONFIG = """
admin:
  address: tcp:{admin}:interface=127.0.0.1
listeners:
  - name: h2_in
    protocol: http2
    address: tcp:{listen}:interface=127.0.0.1
    route_config:
      virtual_hosts:
        - name: svc
          domains: ["*"]
          routes:
            - match: {{prefix: /raw/}}
              route: {{cluster: raw, timeout: 10s}}
            - match: {{prefix: /}}
              route: {{cluster: web, timeout: 10s}}
clusters:
  - name: web
    endpoints: [{{address: "127.0.0.1:{http}"}}]
  - name: raw
    endpoints: [{{address: "127.0.0.1:{raw}"}}]
"""


@pytest.fixture(scope="module")
def mesh():
    upstream, http, raw = support.startUpstream()
    admin, listen = support.freePort(), support.freePort()
    proc = support.startTxmesh(CONFIG.format(admin=admin, listen=listen, http=http, raw=raw), admin)
    try:
        support.waitForPort(listen, proc=proc.popen)
        yield listen
    finally:
        proc.stop()
        upstream.stop()


def h2request(port, headers, body=b""):
    """One request on a fresh h2c connection; returns (response headers, body, trailers, reset code)."""
    conn = H2Connection(H2Configuration(client_side=True, header_encoding=None))
    conn.initiate_connection()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        sid = conn.get_next_available_stream_id()
        conn.send_headers(sid, headers, end_stream=not body)
        events = []
        while body:  # within the proxy's flow-control windows, as a real client does
            n = min(len(body), conn.local_flow_control_window(sid), conn.max_outbound_frame_size)
            if n:
                conn.send_data(sid, body[:n], end_stream=n == len(body))
                body = body[n:]
            else:
                s.sendall(conn.data_to_send())
                events += conn.receive_data(s.recv(65536))
        s.sendall(conn.data_to_send())
        resp, data, trailers, reset = None, b"", None, None
        while True:
            if not events:
                chunk = s.recv(65536)
                assert chunk, "connection closed before the stream ended"
                events = conn.receive_data(chunk)
            batch, events = events, []
            for ev in batch:
                if isinstance(ev, ResponseReceived):
                    resp = dict(ev.headers)
                elif isinstance(ev, DataReceived):
                    data += ev.data
                    conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                elif isinstance(ev, TrailersReceived):
                    trailers = dict(ev.headers)
                elif isinstance(ev, StreamReset):
                    reset = ev.error_code
                if isinstance(ev, (StreamEnded, StreamReset)):
                    return resp, data, trailers, reset
            s.sendall(conn.data_to_send())


def get(path, authority=b"app.svc"):
    return [(b":method", b"GET"), (b":scheme", b"http"), (b":path", path), (b":authority", authority)]


def test_get_reaches_http1_upstream_with_translated_headers(mesh):
    resp, data, trailers, reset = h2request(mesh, get(b"/echo/x?q=1") + [(b"x-custom", b"v")])
    assert resp[b":status"] == b"200"
    assert resp[b"content-type"] == b"application/json"
    assert not {b"connection", b"keep-alive", b"transfer-encoding"} & set(resp)
    seen = json.loads(data)
    assert seen["method"] == "GET" and seen["path"] == "/echo/x?q=1"
    headers = dict((k, v) for k, v in seen["headers"])
    assert headers["host"] == "app.svc"  # :authority became Host
    assert headers["x-custom"] == "v"
    assert "x-request-id" in headers and "x-forwarded-proto" in headers
    assert not any(k.startswith(":") for k in headers)


def test_post_body_streams_to_http1_upstream_whole(mesh):
    body = os.urandom(1 << 20)
    headers = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/echo"), (b":authority", b"app.svc"),
               (b"content-length", b"%d" % len(body))]
    resp, data, trailers, reset = h2request(mesh, headers, body)
    seen = json.loads(data)
    assert resp[b":status"] == b"200"
    assert seen["body_length"] == len(body)
    assert seen["body_sha256"] == hashlib.sha256(body).hexdigest()


def test_chunked_http1_response_reaches_curl_over_h2(mesh):
    out = subprocess.run(["curl", "-sS", "--http2-prior-knowledge", "--max-time", "20", "-D", "-",
                          "http://127.0.0.1:%d/chunked/1000/50" % mesh], capture_output=True, timeout=30)
    assert out.returncode == 0, out.stderr
    head, _, body = out.stdout.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/2 200")
    assert b"transfer-encoding" not in head.lower()
    assert body == b"y" * 50000


def test_http1_trailers_become_h2_trailers(mesh):
    resp, data, trailers, reset = h2request(mesh, get(b"/raw/trailers"))
    assert resp[b":status"] == b"200"
    assert data == b"hello"
    assert trailers == {b"x-checksum": b"abc"}


def test_bad_upstream_framing_is_502_over_h2(mesh):
    resp, data, trailers, reset = h2request(mesh, get(b"/raw/bad-framing"))
    assert resp[b":status"] == b"502"
    assert resp[b"x-txmesh-error"] == b"upstream_protocol_error"


def test_upstream_status_and_empty_body(mesh):
    resp, data, trailers, reset = h2request(mesh, get(b"/status/404"))
    assert resp[b":status"] == b"404"
    assert data == b"status 404\n"
    resp, data, trailers, reset = h2request(mesh, get(b"/bytes/0"))
    assert resp[b":status"] == b"200" and data == b""
