"""
Tunnels end to end over loopback (issue 15 part 2), txmesh under twistd between real peers: a real WebSocket server
and client (the ``websockets`` package) through the HTTP/1.1 listener's upgrade, curl's ``--proxytunnel`` through a
CONNECT route to nginx, and RFC 8441 (WebSocket over HTTP/2) with the ``h2`` library as the client.  Behaviour
(refusals, backpressure, half-close, timeouts) is tested against the clock in tests/test_tunnels.py.
"""

import json
import os
import socket
import subprocess
import sys
import tempfile
import time

import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest

from tests import support

websockets_sync = pytest.importorskip("websockets.sync.client")

pytestmark = pytest.mark.timeout(60)

CONFIG = """
drain_timeout: 1s
admin:
  address: tcp:{admin}:interface=127.0.0.1
listeners:
  - name: edge
    protocol: http1
    address: tcp:{listen}:interface=127.0.0.1
    upgrade_configs: [{{upgrade_type: websocket}}]
    limits: {{stream_idle_timeout: 10s}}
    filters:
      - name: access_log
        config:
          path: "{log}"
          json_format: {{status: "%RESPONSE_CODE%", rx: "%BYTES_RECEIVED%", tx: "%BYTES_SENT%", path: "%REQ(:PATH)%",
                        method: "%REQ(:METHOD)%", flags: "%RESPONSE_FLAGS%"}}
      - name: router
    route_config:
      virtual_hosts:
        - name: all
          domains: ["*"]
          routes:
            - match: {{connect_matcher: {{}}}}
              route: {{cluster: nginx, upgrade_configs: [{{upgrade_type: CONNECT}}]}}
            - match: {{prefix: /nows}}
              route: {{cluster: ws, upgrade_configs: [{{upgrade_type: websocket, enabled: false}}]}}
            - match: {{prefix: /}}
              route: {{cluster: ws}}
  - name: edge2
    protocol: http2
    address: tcp:{listen2}:interface=127.0.0.1
    upgrade_configs: [{{upgrade_type: websocket}}]
    route_config:
      virtual_hosts:
        - name: all
          domains: ["*"]
          routes:
            - match: {{prefix: /}}
              route: {{cluster: ws}}
clusters:
  - name: ws
    endpoints: [{{address: "127.0.0.1:{ws}"}}]
  - name: nginx
    endpoints: [{{address: "127.0.0.1:{nginx}"}}]
"""


@pytest.fixture(scope="module")
def mesh():
    ports = dict(admin=support.freePort(), listen=support.freePort(), listen2=support.freePort(),
                 ws=support.freePort(), nginx=support.freePort())
    log = tempfile.NamedTemporaryFile(prefix="txmesh-tunnel-", suffix=".log", delete=False).name
    ws = support.Proc([sys.executable, os.path.join(support.ROOT, "tests", "websocket_peer.py"), str(ports["ws"])])
    nginx, prefix = support.startNginx("server { listen 127.0.0.1:%d; location / { return 200 'nginx here\\n'; } }"
                                       % (ports["nginx"],))
    procs = [ws, nginx]
    try:
        support.waitForPort(ports["ws"], proc=ws.popen)
        support.waitForPort(ports["nginx"], proc=nginx.popen)
        procs.append(support.startTxmesh(CONFIG.format(log=log, **ports), ports["admin"]))
        support.waitForPort(ports["listen"])
        yield ports, log
    finally:
        for p in reversed(procs):
            p.stop()


def _stat(ports, name, **labels):
    for series in json.loads(support.adminGet(ports["admin"], "/stats")[1]).get(name, []):
        if all(series["labels"].get(k) == v for k, v in labels.items()):
            return series["value"]
    return 0


def test_websocket_messages_both_ways_and_close_handshake(mesh):
    ports, log = mesh
    url = "ws://127.0.0.1:%d/echo" % (ports["listen"],)
    with websockets_sync.connect(url, open_timeout=5, close_timeout=5, max_size=None, compression=None) as ws:
        for text in ("hello", "second", "x" * 1000):
            ws.send(text)
            assert ws.recv(timeout=5) == text
        ws.send(b"\x00\x01binary")
        assert ws.recv(timeout=5) == b"\x00\x01binary"
    assert ws.close_code == 1000  # the close handshake went through both ways
    # the server closes first (code 4001): the client sees its code
    with websockets_sync.connect("ws://127.0.0.1:%d/close" % (ports["listen"],), open_timeout=5,
                                 close_timeout=5) as ws:
        ws.send("bye")
        assert ws.recv(timeout=5) == "bye"
        with pytest.raises(Exception):
            ws.recv(timeout=5)
    assert ws.close_code == 4001
    entries = _waitLog(log, 2, lambda e: e["path"] in ("/echo", "/close"))
    assert [e["status"] for e in entries] == [101, 101]
    assert entries[0]["rx"] > 1000 and entries[0]["tx"] > 1000  # the tunnel's bytes both ways, at its end
    assert _stat(ports, "downstream_cx_upgrades_total", listener="edge") >= 2
    assert _stat(ports, "downstream_cx_upgrades_active", listener="edge") == 0  # both tunnels ended
    assert _stat(ports, "upstream_cx_tunnel_active", cluster="ws") == 0


def _waitLog(path, n, predicate=lambda e: True):
    """The access log's entries that fit ``predicate`` once there are ``n`` (bounded wait: lines come at stream end)."""
    deadline = time.monotonic() + 5
    while True:
        with open(path) as f:
            entries = [e for e in (json.loads(line) for line in f if line.strip()) if predicate(e)]
        if len(entries) >= n or time.monotonic() > deadline:
            return entries
        time.sleep(0.05)


def test_large_websocket_message_goes_through_backpressure(mesh):
    ports, _ = mesh
    big = os.urandom(8 << 20)  # 8 MiB: well over every buffer's high-water mark
    with websockets_sync.connect("ws://127.0.0.1:%d/big" % (ports["listen"],), open_timeout=5, close_timeout=5,
                                 max_size=None, compression=None) as ws:
        ws.send(big)
        assert ws.recv(timeout=10) == big


def test_upgrade_not_allowed_on_the_route_goes_on_as_a_plain_request(mesh):
    ports, _ = mesh
    with socket.create_connection(("127.0.0.1", ports["listen"]), timeout=5) as s:
        s.sendall(b"GET /nows HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        answer = s.recv(65536)
    # websockets saw a plain GET (the offer dropped): it answers 426 Upgrade Required, relayed as is
    assert answer.startswith(b"HTTP/1.1 426"), answer[:200]


def test_curl_proxytunnel_through_a_connect_route_to_nginx(mesh):
    ports, log = mesh
    out = subprocess.run(["curl", "-sS", "-m", "10", "--proxytunnel", "-x", "http://127.0.0.1:%d" % ports["listen"],
                          "http://127.0.0.1:%d/" % ports["nginx"]], capture_output=True, timeout=15)
    assert out.returncode == 0, out.stderr
    assert out.stdout == b"nginx here\n"
    entries = _waitLog(log, 1, lambda e: e["method"] == "CONNECT")
    assert entries and entries[-1]["status"] == 200 and entries[-1]["rx"] > 0 and entries[-1]["tx"] > 0


def _frame(payload, opcode=0x1):
    """A masked client WebSocket frame (RFC 6455 5.2) of a short payload."""
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + masked


def test_rfc8441_websocket_over_http2(mesh):
    ports, _ = mesh
    s = socket.create_connection(("127.0.0.1", ports["listen2"]), timeout=5)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    s.sendall(conn.data_to_send())
    events = []

    def pump(until):
        deadline = time.monotonic() + 5
        while not until() and time.monotonic() < deadline:
            data = s.recv(65536)
            if not data:
                break
            events.extend(conn.receive_data(data))
            out = conn.data_to_send()
            if out:
                s.sendall(out)

    pump(lambda: any(isinstance(e, h2.events.RemoteSettingsChanged) for e in events))
    assert conn.remote_settings.enable_connect_protocol == 1
    sid = conn.get_next_available_stream_id()
    conn.send_headers(sid, [(":method", "CONNECT"), (":protocol", "websocket"), (":scheme", "http"),
                            (":path", "/h2ws"), (":authority", "127.0.0.1"), ("sec-websocket-version", "13")])
    s.sendall(conn.data_to_send())
    pump(lambda: any(isinstance(e, h2.events.ResponseReceived) for e in events))
    [resp] = [e for e in events if isinstance(e, h2.events.ResponseReceived)]
    headers = dict(resp.headers)
    assert headers[b":status"] == b"200" and b"sec-websocket-accept" not in headers
    received = bytearray()
    for text in (b"over h2", b"again"):
        conn.send_data(sid, _frame(text))
        s.sendall(conn.data_to_send())
        start = len(received)

        def gotEcho():
            for e in events:
                if isinstance(e, h2.events.DataReceived) and not getattr(e, "_seen", False):
                    e._seen = True
                    received.extend(e.data)
                    conn.acknowledge_received_data(e.flow_controlled_length, sid)
            return len(received) >= start + 2 + len(text)

        pump(gotEcho)
        assert bytes(received[start:start + 2 + len(text)]) == bytes([0x81, len(text)]) + text
    # END_STREAM ends the client's half: the server's close comes back and the stream ends
    conn.send_data(sid, _frame(b"\x03\xe8", opcode=0x8), end_stream=True)
    s.sendall(conn.data_to_send())
    pump(lambda: any(isinstance(e, (h2.events.StreamEnded, h2.events.StreamReset)) for e in events))
    assert any(isinstance(e, h2.events.StreamEnded) for e in events)
    s.close()


# -- Envoy parity: the same tunnels through Envoy with the equivalent config --------------------------------------

ENVOY = os.path.join(os.path.dirname(sys.executable), "envoy")

ENVOY_CONFIG = """
static_resources:
  listeners:
  - name: edge
    address: {{socket_address: {{address: 127.0.0.1, port_value: {listen}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: edge
          upgrade_configs: [{{upgrade_type: websocket}}]
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{connect_matcher: {{}}}}
                route: {{cluster: nginx, upgrade_configs: [{{upgrade_type: CONNECT, connect_config: {{}}}}]}}
              - match: {{prefix: /nows}}
                route: {{cluster: ws, upgrade_configs: [{{upgrade_type: websocket, enabled: false}}]}}
              - match: {{prefix: /}}
                route: {{cluster: ws}}
  clusters:
  - name: ws
    type: STATIC
    load_assignment: {{cluster_name: ws, endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {ws}}}}}}}}}]}}]}}
  - name: nginx
    type: STATIC
    load_assignment: {{cluster_name: nginx, endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {nginx}}}}}}}}}]}}]}}
"""


@pytest.fixture(scope="module")
def envoy(mesh):
    if not os.path.exists(ENVOY):
        pytest.skip("no envoy binary in the venv")
    ports, _ = mesh
    port = support.freePort()
    path = tempfile.NamedTemporaryFile(prefix="envoy-tunnel-", suffix=".yaml", delete=False).name
    with open(path, "w") as f:
        f.write(ENVOY_CONFIG.format(listen=port, ws=ports["ws"], nginx=ports["nginx"]))
    proc = support.Proc([ENVOY, "-c", path, "--disable-hot-restart", "-l", "warning", "--concurrency", "1"])
    try:
        support.waitForPort(port, timeout=20, proc=proc.popen)
        yield port
    finally:
        proc.stop()


def _proxies(mesh, envoy):
    ports, _ = mesh
    return (("txmesh", ports["listen"]), ("envoy", envoy))


def test_parity_websocket_echo_and_close_through_txmesh_and_envoy(mesh, envoy):
    for name, port in _proxies(mesh, envoy):
        with websockets_sync.connect("ws://127.0.0.1:%d/echo" % (port,), open_timeout=5, close_timeout=5,
                                     max_size=None, compression=None) as ws:
            for message in ("hello", b"\x00" * 100000):
                ws.send(message)
                assert ws.recv(timeout=5) == message, name
        assert ws.close_code == 1000, name


def test_parity_curl_proxytunnel_through_txmesh_and_envoy(mesh, envoy):
    ports, _ = mesh
    for name, port in _proxies(mesh, envoy):
        out = subprocess.run(["curl", "-sS", "-m", "10", "--proxytunnel", "-x", "http://127.0.0.1:%d" % port,
                              "http://127.0.0.1:%d/" % ports["nginx"]], capture_output=True, timeout=15)
        assert (out.returncode, out.stdout) == (0, b"nginx here\n"), (name, out.stderr)


def test_parity_where_txmesh_differs_a_refused_upgrade(mesh, envoy):
    """Envoy answers 403 to an upgrade its route refuses; txmesh forwards it as a plain request (issue 15's choice)."""
    answers = {}
    for name, port in _proxies(mesh, envoy):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"GET /nows HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                      b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
            answers[name] = s.recv(65536).split(b"\r\n", 1)[0]
    assert answers == {"txmesh": b"HTTP/1.1 426 Upgrade Required", "envoy": b"HTTP/1.1 403 Forbidden"}
