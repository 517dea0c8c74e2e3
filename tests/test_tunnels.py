"""
Tunnels (issue 15 part 2) in memory, against the clock: an HTTP/1.1 upgrade allowed or not, the 101 relayed then
bytes both ways, an upstream that answers otherwise, backpressure both ways, the idle timeout, half-close, CONNECT
(its 200, a connect failure), RFC 8441 on the HTTP/2 listener (advertised, accepted, refused), the config keys.
Real peers (websockets, curl, nginx, the h2 library over sockets) are in tests/test_integration_tunnels.py.
"""

import h2.config
import h2.connection
import h2.events
import pytest
from twisted.internet import defer
from twisted.internet.error import ConnectionLost, ConnectionRefusedError
from twisted.python.failure import Failure
from twisted.internet.testing import StringTransport
from zope.interface.verify import verifyObject

from txmesh.config import loads
from txmesh.errors import ConfigError
from txmesh.interfaces import IConnectionPool, ITunnelConnectors, IUpstreamStream
from txmesh.protocols.tunnel import TunnelClientProtocol, TunnelConnector, TunnelConnectors
from txmesh.testing import InMemoryMesh

MESH = """
listeners:
  - name: edge
    protocol: {protocol}
    address: tcp:8080
    upgrade_configs: [{{upgrade_type: websocket}}]
    limits: {{stream_idle_timeout: 30s}}
    route_config:
      virtual_hosts:
        - name: all
          domains: ["*"]
          routes:
            - match: {{connect_matcher: {{}}}}
              route: {{cluster: tcp, upgrade_configs: [{{upgrade_type: CONNECT}}]}}
            - match: {{prefix: /nows}}
              route: {{cluster: ws, upgrade_configs: [{{upgrade_type: websocket, enabled: false}}]}}
            - match: {{prefix: /}}
              route: {{cluster: ws}}
clusters:
  - name: ws
    endpoints: [{{address: "127.0.0.1:9001"}}]
  - name: tcp
    endpoints: [{{address: "127.0.0.1:9002"}}]
"""

UPGRADE = (b"GET /chat HTTP/1.1\r\nHost: app\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
SWITCH = (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
          b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n")


class HalfCloseTransport(StringTransport):
    """A StringTransport that records a write-side shutdown (a FIN) as TCP's does."""

    writeClosed = False
    aborted = False

    def loseWriteConnection(self):
        self.writeClosed = True

    def abortConnection(self):
        self.aborted = True
        self.loseConnection()


class Upstreams:
    """The tunnels' connect: each call makes a TunnelClientProtocol on a HalfCloseTransport (or fails)."""

    def __init__(self):
        self.made = []
        self.fail = None

    def connect(self, host, factory):
        if self.fail is not None:
            return defer.fail(self.fail)
        proto = factory.buildProtocol(None)
        transport = HalfCloseTransport()
        proto.makeConnection(transport)
        self.made.append((host, proto, transport))
        return defer.succeed(proto)


def build(protocol="http1"):
    mesh = InMemoryMesh(MESH.format(protocol=protocol))
    upstreams = Upstreams()
    for name in ("ws", "tcp"):
        mesh.clusters.get(name).tunnels = TunnelConnectors(upstreams.connect, mesh.stats.scope(cluster=name))
    return mesh, upstreams


def opened():
    """A downstream connection whose upgrade the upstream accepted: (mesh, client, upstream proto, transport)."""
    mesh, upstreams = build()
    client = mesh.connect()
    client.send(UPGRADE)
    [(host, proto, transport)] = upstreams.made
    proto.dataReceived(SWITCH)
    mesh.runTurns()
    return mesh, client, proto, transport


def test_the_tunnel_classes_provide_their_interfaces():
    upstreams = Upstreams()
    connectors = TunnelConnectors(upstreams.connect, InMemoryMesh(MESH.format(protocol="http1")).stats.scope())
    verifyObject(ITunnelConnectors, connectors)
    connector = connectors.connectorFor(object(), "upgrade")
    assert isinstance(connector, TunnelConnector)
    verifyObject(IConnectionPool, connector)
    verifyObject(IUpstreamStream, TunnelClientProtocol("upgrade"))


def test_an_allowed_upgrade_is_forwarded_with_its_fields_and_the_101_opens_a_tunnel():
    mesh, client, proto, transport = opened()
    head = transport.value()
    assert head.startswith(b"GET /chat HTTP/1.1\r\n")
    assert b"connection: upgrade\r\nupgrade: websocket\r\n" in head
    assert b"sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==" in head
    answer = client.received()
    assert answer.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    assert b"connection: upgrade\r\nupgrade: websocket\r\n" in answer
    assert b"sec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" in answer
    assert b"content-length" not in answer and b"transfer-encoding" not in answer
    # opaque bytes both ways, not parsed as HTTP
    transport.clear()
    client.send(b"\x81\x05hello not http\r\n\r\n")
    assert transport.value() == b"\x81\x05hello not http\r\n\r\n"
    before = len(client.received())
    proto.dataReceived(b"\x81\x02hi")
    mesh.runTurns()
    assert client.received()[before:] == b"\x81\x02hi"
    assert mesh.value("downstream_cx_upgrades_total", listener="edge") == 1
    assert mesh.value("downstream_cx_upgrades_active", listener="edge") == 1
    assert mesh.value("upstream_cx_tunnel_active", cluster="ws") == 1


def test_an_upgrade_the_route_does_not_allow_goes_on_as_a_plain_request():
    mesh, upstreams = build()
    client = mesh.connect()
    client.send(UPGRADE.replace(b"/chat", b"/nows"))
    assert upstreams.made == []  # no tunnel connection
    [request] = mesh.upstream("127.0.0.1:9001").requests
    assert request.head.upgrade is None and b"upgrade" not in dict(request.head.headers.items())


def test_an_upstream_that_does_not_switch_is_relayed_as_a_normal_response():
    mesh, upstreams = build()
    client = mesh.connect()
    client.send(UPGRADE)
    [(_, proto, transport)] = upstreams.made
    proto.dataReceived(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 4\r\n\r\nnope")
    mesh.runTurns()
    r = client.response()
    assert r.status == 403 and r.body == b"nope"
    assert transport.disconnecting  # the tunnel connection is never reused
    assert not client.closed  # the downstream connection stays keep-alive
    assert mesh.value("downstream_cx_upgrades_total", listener="edge") == 0


def test_backpressure_both_ways():
    mesh, client, proto, transport = opened()
    # the upstream cannot take more: the downstream stops being read
    transport.producer.pauseProducing()
    assert client.readingPaused
    transport.producer.resumeProducing()
    assert not client.readingPaused
    # the downstream cannot take more: the upstream stops being read
    client.transport.producer.pauseProducing()
    assert transport.producerState == "paused"
    client.transport.producer.resumeProducing()
    assert transport.producerState == "producing"


def test_the_idle_timeout_ends_a_quiet_tunnel():
    mesh, client, proto, transport = opened()
    mesh.clock.advance(20)
    client.send(b"ping")  # activity moves the deadline
    mesh.clock.advance(20)
    assert not client.closed
    mesh.clock.advance(11)
    mesh.runTurns()
    assert client.closed and transport.disconnecting
    [stream] = mesh.streams
    assert "SI" in stream.streamInfo.responseFlags


def test_half_close_from_the_client_then_the_upstream_ends():
    mesh, client, proto, transport = opened()
    client.protocol.readConnectionLost()  # the client's FIN
    mesh.runTurns()
    assert transport.writeClosed and not transport.disconnecting  # FIN upstream, still reading its answer
    before = len(client.received())
    proto.dataReceived(b"late answer")
    mesh.runTurns()
    assert client.received()[before:] == b"late answer"
    proto.readConnectionLost()  # the upstream's FIN ends the tunnel
    mesh.runTurns()
    assert client.closed and not client.aborted
    [stream] = mesh.streams
    assert stream.streamInfo.responseCode == 101
    assert stream.streamInfo.bytesSent == len(b"late answer")


def test_an_upstream_reset_resets_the_downstream():
    mesh, client, proto, transport = opened()
    proto.connectionLost(Failure(ConnectionLost()))
    mesh.runTurns()
    assert client.aborted


def test_connect_opens_a_tcp_tunnel_with_200_and_held_bytes():
    mesh, upstreams = build()
    client = mesh.connect()
    client.send(b"CONNECT db.internal:5432 HTTP/1.1\r\nHost: db.internal:5432\r\n\r\nearly")
    [(host, proto, transport)] = upstreams.made
    assert host.address == "127.0.0.1:9002"
    assert client.received() == b"HTTP/1.1 200 Connection Established\r\n\r\n"
    assert transport.value() == b"early"  # bytes sent before the 200 were held, then tunnelled
    proto.dataReceived(b"\x00server")
    mesh.runTurns()
    assert client.received().endswith(b"\x00server")


def test_connect_failure_is_503_not_a_hang():
    mesh, upstreams = build()
    upstreams.fail = ConnectionRefusedError()
    client = mesh.connect()
    client.send(b"CONNECT db.internal:5432 HTTP/1.1\r\nHost: db.internal:5432\r\n\r\n")
    r = client.response()
    assert r.status == 503 and r.headers.get(b"x-txmesh-error") == b"upstream_connect_failure"
    assert client.closed
    assert mesh.value("upstream_cx_tunnel_connect_fail", cluster="tcp") == 1


def test_connect_on_a_listener_without_a_connect_route_stays_501():
    mesh = InMemoryMesh(MESH.format(protocol="http1").replace(
        "            - match: {connect_matcher: {}}\n"
        "              route: {cluster: tcp, upgrade_configs: [{upgrade_type: CONNECT}]}\n", ""))
    client = mesh.connect()
    client.send(b"CONNECT db.internal:5432 HTTP/1.1\r\nHost: db.internal:5432\r\n\r\n")
    r = client.response()
    assert r.status == 501 and r.headers.get(b"x-txmesh-error") == b"connect_not_supported"


# -- HTTP/2 --------------------------------------------------------------------------------------------------------

def h2client(mesh):
    client = mesh.connect()
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    conn.initiate_connection()
    events = []

    def exchange():
        out = conn.data_to_send()
        if out:
            client.send(out)
        data = client.received()[exchange.seen:]
        exchange.seen += len(data)
        if data:
            events.extend(conn.receive_data(data))
        out = conn.data_to_send()
        if out:
            client.send(out)
        return events

    exchange.seen = 0
    exchange()
    return client, conn, exchange


EXTENDED = [(":method", "CONNECT"), (":protocol", "websocket"), (":scheme", "http"), (":path", "/chat"),
            (":authority", "app"), ("sec-websocket-version", "13")]


def test_h2_extended_connect_is_advertised_and_forwarded_as_an_http1_upgrade():
    mesh, upstreams = build("http2")
    client, conn, exchange = h2client(mesh)
    assert conn.remote_settings.enable_connect_protocol == 1
    conn.send_headers(1, EXTENDED)
    exchange()
    [(_, proto, transport)] = upstreams.made
    head = transport.value()
    assert head.startswith(b"GET /chat HTTP/1.1\r\n") and b"upgrade: websocket\r\n" in head
    assert b"sec-websocket-key: " in head and b"sec-websocket-version: 13" in head  # RFC 8441 5
    proto.dataReceived(SWITCH)
    mesh.runTurns()
    [resp] = [e for e in exchange() if isinstance(e, h2.events.ResponseReceived)]
    assert dict(resp.headers)[b":status"] == b"200" and b"sec-websocket-accept" not in dict(resp.headers)
    transport.clear()
    conn.send_data(1, b"frame up")
    exchange()
    assert transport.value() == b"frame up"
    proto.dataReceived(b"frame down")
    mesh.runTurns()
    assert b"frame down" in b"".join(e.data for e in exchange() if isinstance(e, h2.events.DataReceived))
    conn.end_stream(1)  # END_STREAM is the client's FIN
    exchange()
    assert transport.writeClosed
    proto.readConnectionLost()
    mesh.runTurns()
    assert any(isinstance(e, h2.events.StreamEnded) for e in exchange())
    assert mesh.value("downstream_cx_upgrades_total", listener="edge") == 1
    assert mesh.value("downstream_cx_upgrades_active", listener="edge") == 0


def test_h2_extended_connect_to_a_route_without_websocket_is_403():
    mesh, upstreams = build("http2")
    client, conn, exchange = h2client(mesh)
    conn.send_headers(1, [(k, v.replace("/chat", "/nows")) for k, v in EXTENDED])
    [resp] = [e for e in exchange() if isinstance(e, h2.events.ResponseReceived)]
    assert dict(resp.headers)[b":status"] == b"403" and upstreams.made == []


def test_h2_protocol_without_the_setting_is_a_protocol_error():
    text = MESH.format(protocol="http2").replace("    upgrade_configs: [{upgrade_type: websocket}]\n", "")
    mesh = InMemoryMesh(text.replace("upgrade_configs: [{upgrade_type: websocket, enabled: false}]", "timeout: 5s"))
    client, conn, exchange = h2client(mesh)
    assert conn.remote_settings.enable_connect_protocol == 0
    # the h2 library refuses to send :protocol unasked; its frames are sent as if the setting were on
    conn.remote_settings.update({0x8: 1})
    conn.remote_settings.acknowledge()
    conn.send_headers(1, EXTENDED)
    events = exchange()
    [reset] = [e for e in events if isinstance(e, h2.events.StreamReset)]
    assert reset.error_code == 1  # PROTOCOL_ERROR (RFC 8441 3)


def test_h2_plain_connect_to_a_connect_route_is_a_tcp_tunnel():
    mesh, upstreams = build("http2")
    client, conn, exchange = h2client(mesh)
    conn.send_headers(1, [(":method", "CONNECT"), (":authority", "db.internal:5432")])
    [resp] = [e for e in exchange() if isinstance(e, h2.events.ResponseReceived)]
    assert dict(resp.headers)[b":status"] == b"200"
    [(host, proto, transport)] = upstreams.made
    assert host.address == "127.0.0.1:9002"
    conn.send_data(1, b"bytes")
    exchange()
    assert transport.value() == b"bytes"


# -- config --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("old, new, message", [
    ("route: {cluster: tcp, upgrade_configs: [{upgrade_type: CONNECT}]}", "route: {cluster: tcp}",
     "listeners[0].route_config.virtual_hosts[0].routes[0].match.connect_matcher: a connect_matcher route tunnels "
     "CONNECT: enable upgrade_type CONNECT in the listener's or this route's upgrade_configs"),
    ("[{upgrade_type: websocket}]", "[{upgrade_type: 'web socket'}]",
     "listeners[0].upgrade_configs[0].upgrade_type: invalid upgrade_type 'web socket': an HTTP token such as "
     "websocket or CONNECT"),
    ("[{upgrade_type: websocket}]", "[{upgrade_type: websocket}, {upgrade_type: WebSocket}]",
     "listeners[0].upgrade_configs[1].upgrade_type: upgrade_type 'WebSocket' is already in "
     "listeners[0].upgrade_configs[0]"),
    ("protocol: http1", "protocol: grpc", "listeners[0].upgrade_configs: only http1 and http2 listeners tunnel "
     "upgrades (this one is 'grpc')"),
    ("{connect_matcher: {}}", "{connect_matcher: {}, prefix: /}", "listeners[0].route_config.virtual_hosts[0]"
     ".routes[0].match: exactly one of prefix, path, regex, connect_matcher is required (got prefix, connect_matcher)"),
])
def test_config_errors(old, new, message):
    text = MESH.format(protocol="http1")
    assert old in text
    with pytest.raises(ConfigError) as e:
        loads(text.replace(old, new, 1), "mesh.yaml")
    assert str(e.value).split(": ", 1)[1] == message


def test_route_upgrade_configs_override_the_listener():
    config = loads(MESH.format(protocol="http1"), "mesh.yaml")
    routes = config.listeners[0].routeConfig.virtualHosts[0].routes
    assert routes[0].action.upgrades == {b"websocket", b"connect"}
    assert routes[1].action.upgrades == frozenset()
    assert routes[2].action.upgrades == {b"websocket"}
    assert config.listeners[0].routeConfig.upgradeTypes == {b"websocket", b"connect"}


def test_bytes_after_an_upgrade_request_wait_for_the_answer():
    """Sent before the 101, they are the tunnel's; after an upgrade that was not taken, HTTP again (in order)."""
    mesh, upstreams = build()
    client = mesh.connect()
    client.send(UPGRADE + b"\x81\x05early")
    [(_, proto, transport)] = upstreams.made
    assert b"early" not in transport.value()
    proto.dataReceived(SWITCH)
    mesh.runTurns()
    assert transport.value().endswith(b"\x81\x05early")
    # refused on the route: the request after it is served once the first is answered
    mesh, upstreams = build()
    upstream = mesh.upstream("127.0.0.1:9001")
    upstream.respondWith(200, body=b"one")
    client = mesh.connect()
    client.send(UPGRADE.replace(b"/chat", b"/nows") + b"GET /second HTTP/1.1\r\nHost: app\r\n\r\n")
    assert [r.head.path for r in upstream.requests] == [b"/nows", b"/second"]
    mesh.clock.advance(0)
    mesh.runTurns()
    assert [r.status for r in client.responses()] == [200, 200]


def test_an_http10_upgrade_offer_is_never_tunnelled():
    mesh, upstreams = build()
    client = mesh.connect()
    client.send(UPGRADE.replace(b"HTTP/1.1", b"HTTP/1.0"))
    assert upstreams.made == []
    [request] = mesh.upstream("127.0.0.1:9001").requests
    assert request.head.upgrade is None
