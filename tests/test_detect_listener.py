"""
The ``protocol: auto`` listener in memory (txmesh.protocols.auto.server): connections on StringTransport, time on
a Clock.  Detection hands each connection to the factory of the listener its ``detect`` map names, with every byte
read; timeouts, garbage and too many bytes close and count; a connection is counted once by the overload bounds.
TLS detection runs here against a real TLS client in memory (Twisted's TLSMemoryBIOFactory on both sides, through
twisted.test.iosim); tests/test_integration_detection.py runs curl, grpcio and the Dubbo consumer on one port.
"""

import socket

import pytest
from twisted.internet import protocol as tprotocol
from OpenSSL import SSL
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.internet.address import IPv4Address
from twisted.test.iosim import FakeTransport, connect
from zope.interface import implementer
from zope.interface.verify import verifyObject

from tests.certs import certs  # noqa: F401  (a pytest fixture)
from tests.h2wire import PREFACE
from txmesh.config import loads
from txmesh.interfaces import IListenerConnection, IListenerFactory, IServerTLS
from txmesh.protocols.auto.server import AutoListenerFactory, DetectingProtocol
from txmesh.service import MeshService
from txmesh.tls.material import loadCertificates, loadPrivateKey
from txmesh.twisted_private import switchProtocol

CONFIG = """
admin: {{address: "tcp:0:interface=127.0.0.1"}}
overload: {{max_connections: {globalMax}}}
listeners:
  - name: edge
    protocol: auto
    address: tcp:0:interface=127.0.0.1
    detect: {{http1: web, http2: rpc, dubbo: dub}}
    detection_timeout: 2s
    limits: {{max_connections: {autoMax}}}
  - name: web
    protocol: http1
    address: internal
    limits: {{max_connections: {webMax}}}
    route_config:
      virtual_hosts: [{{name: all, domains: ["*"], routes: [{{match: {{prefix: /}}, direct_response: {{status: 200}}}}]}}]
  - name: rpc
    protocol: grpc
    address: internal
    default_cluster: app
  - name: dub
    protocol: dubbo
    address: internal
    default_cluster: app
clusters:
  - name: app
    endpoints: [{{address: "127.0.0.1:1"}}]
"""

DUBBO_HEARTBEAT = bytes.fromhex("dabbe2000000000000000001000000014e")  # a two-way event frame, hessian null


def mesh(globalMax=0, autoMax=0, webMax=0, serverTLS=None):
    class Mesh(MeshService):
        def serverTLSFor(self, lc):
            return serverTLS

    svc = Mesh(loads(CONFIG.format(globalMax=globalMax, autoMax=autoMax, webMax=webMax)), MemoryReactorClock(),
               installSignal=lambda *a: None)
    factories = dict(zip([lc.name for lc in svc.config.listeners], svc.listenerFactories))
    return svc, factories


def connectOne(factory):
    p = factory.buildProtocol(("127.0.0.1", 5555))
    if p is None:
        return None, None
    t = StringTransport(peerAddress=_Peer())
    p.makeConnection(t)
    return p, t


class _Peer:
    type = "TCP"
    host = "127.0.0.1"
    port = 5555


def stat(svc, name, **labels):
    return svc.stats.total(name, **labels)


def test_contracts_and_books(certs):  # noqa: F811
    verifyObject(IServerTLS, CertServerTLS(certs.issue("localhost", dns=["localhost"])))
    svc, f = mesh()
    auto = f["edge"]
    assert isinstance(auto, AutoListenerFactory)
    verifyObject(IListenerFactory, auto)
    p, t = connectOne(auto)
    assert isinstance(p, DetectingProtocol)
    verifyObject(IListenerConnection, p)
    assert auto.connections == {p} and svc.overload.active.value == 1
    assert stat(svc, "downstream_cx_active", listener="edge") == 1


@pytest.mark.parametrize("chunks, target", [
    ([b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n"], "web"),
    ([b"G", b"ET", b" /x HTTP/1.1\r\nHost: a\r\n\r\n"], "web"),
    ([PREFACE], "rpc"),
    ([PREFACE[i:i + 1] for i in range(len(PREFACE))], "rpc"),
    ([DUBBO_HEARTBEAT], "dub"),
    ([DUBBO_HEARTBEAT[:1], DUBBO_HEARTBEAT[1:]], "dub"),
])
def test_hand_off_replays_every_byte_to_the_target_and_counts_once(chunks, target):
    svc, f = mesh()
    p, t = connectOne(f["edge"])
    for c in chunks:
        p.dataReceived(c)
    assert f["edge"].connections == set()
    [handed] = f[target].connections
    assert handed.transport is t
    assert svc.overload.active.value == 1  # the target's count only
    assert stat(svc, "downstream_cx_active", listener="edge") == 0
    assert stat(svc, "downstream_cx", listener=target) == 1
    protocol = {"web": "http1", "rpc": "http2", "dub": "dubbo"}[target]
    assert stat(svc, "downstream_cx_detected", listener="edge", protocol=protocol) == 1
    # the target answered what it was replayed (the h2 SETTINGS, the Dubbo heartbeat response ...)
    svc.reactor.advance(0)  # the writes of one reactor turn leave together (txmesh.protocols.transport)
    if target == "web":
        assert t.value().startswith(b"HTTP/1.1 200 ")  # the route's direct response
    elif target == "rpc":
        assert t.value()[3:4] == b"\x04"  # SETTINGS
    else:
        assert t.value()[:2] == b"\xda\xbb" and t.value()[4:12] == DUBBO_HEARTBEAT[4:12]
    # later bytes reach the target through the detector (StringTransport cannot be switched)
    t.clear()
    p.connectionLost(tprotocol.connectionDone)
    assert f[target].connections == set()
    assert svc.overload.active.value == 0


def test_web_request_through_the_hand_off_reaches_the_router():
    svc, f = mesh()
    p, t = connectOne(f["edge"])
    p.dataReceived(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
    assert stat(svc, "downstream_rq", listener="web") == 1


@pytest.mark.parametrize("data, reason", [
    (b"\x00\x01garbage", "unknown"),
    (b"\x16\x03\x01\x02\x00", "no_tls"),  # a ClientHello, no tls block
    (b"A" * 64, "too_many_bytes"),
    (b"PRI * HTTP/1.1\r\n", "unknown"),
])
def test_failures_close_and_count(data, reason):
    svc, f = mesh()
    p, t = connectOne(f["edge"])
    p.dataReceived(data)
    assert t.disconnecting
    assert stat(svc, "downstream_cx_detect_failed", listener="edge", reason=reason) == 1
    assert f["edge"].connections == set() and svc.overload.active.value == 0
    p.dataReceived(b"GET / HTTP/1.1\r\n\r\n")  # nothing more is read
    assert all(not x.connections for x in f.values())
    p.connectionLost(tprotocol.connectionDone)
    assert svc.overload.active.value == 0


def test_timeout_closes_a_silent_or_slow_connection():
    svc, f = mesh()
    clock = svc.reactor
    p, t = connectOne(f["edge"])
    p.dataReceived(b"GE")
    clock.advance(1.9)
    assert not t.disconnecting
    clock.advance(0.2)
    assert t.disconnecting
    assert stat(svc, "downstream_cx_detect_failed", listener="edge", reason="timeout") == 1
    assert svc.overload.active.value == 0
    p.connectionLost(tprotocol.connectionDone)
    # a detected connection's timer is gone
    p2, t2 = connectOne(f["edge"])
    p2.dataReceived(b"GET ")
    clock.advance(10)
    assert stat(svc, "downstream_cx_detect_failed", listener="edge", reason="timeout") == 1
    assert not clock.getDelayedCalls() or all(c.getTime() > clock.seconds() for c in clock.getDelayedCalls())


def test_a_connection_lost_while_detecting_leaves_the_books():
    svc, f = mesh()
    p, t = connectOne(f["edge"])
    p.dataReceived(b"PO")
    p.connectionLost(tprotocol.connectionDone)
    assert f["edge"].connections == set() and svc.overload.active.value == 0
    assert stat(svc, "downstream_cx_detect_failed", listener="edge") == 0


def test_overload_limits_count_each_connection_once():
    svc, f = mesh(globalMax=2, autoMax=0, webMax=1)
    a, ta = connectOne(f["edge"])
    b, tb = connectOne(f["edge"])
    assert svc.overload.active.value == 2
    assert connectOne(f["edge"]) == (None, None)  # the global bound, at accept
    assert stat(svc, "downstream_global_cx_overflow", listener="edge") == 1
    a.dataReceived(b"GET / HTTP/1.1\r\n")
    assert svc.overload.active.value == 2  # moved from edge to web, not counted twice
    b.dataReceived(b"GET / HTTP/1.1\r\n")  # web's own limit (1) refuses the second
    assert tb.disconnecting
    assert stat(svc, "downstream_cx_overflow", listener="web") == 1
    assert svc.overload.active.value == 1


def test_auto_listener_max_connections_bounds_connections_being_detected():
    svc, f = mesh(autoMax=1)
    a, _ = connectOne(f["edge"])
    assert connectOne(f["edge"]) == (None, None)
    assert stat(svc, "downstream_cx_overflow", listener="edge") == 1
    a.dataReceived(PREFACE)
    assert connectOne(f["edge"])[0] is not None  # the first moved to rpc


def test_drain_closes_connections_being_detected():
    svc, f = mesh()
    p, t = connectOne(f["edge"])
    d = f["edge"].drain()
    assert t.disconnecting
    p.connectionLost(tprotocol.connectionDone)
    assert d.called
    p2, t2 = connectOne(f["edge"])
    assert f["edge"].closeIdleConnections() == 1 and t2.disconnecting


def test_switch_protocol_on_a_real_tcp_connection():
    """The detector leaves the data path on Twisted's TCP transport (txmesh.twisted_private.switchProtocol)."""
    from twisted.internet import tcp

    a, b = socket.socketpair()
    try:
        old, new = tprotocol.Protocol(), tprotocol.Protocol()
        received = []
        new.dataReceived = received.append
        conn = tcp.Connection(a, old, MemoryReactorClock())
        assert switchProtocol(conn, old, new)
        assert conn.protocol is new
        assert not switchProtocol(conn, old, new)  # only from the protocol it has
        b.send(b"hello")
        conn.doRead()
        assert received == [b"hello"]
        assert not switchProtocol(StringTransport(), old, new)
    finally:
        a.close()
        b.close()


# -- TLS -------------------------------------------------------------------------------------------------------


@implementer(IOpenSSLServerConnectionCreator)
class _ServerCreator:
    def __init__(self, context):
        self.context = context

    def serverConnectionForTLS(self, tlsProtocol):
        return SSL.Connection(self.context, None)


@implementer(IServerTLS)
class CertServerTLS:
    """A test IServerTLS: one certificate, ALPN h2 and http/1.1 (the real one is listener TLS's, issue 14 part 1)."""

    def __init__(self, issued, alpn=(b"h2", b"http/1.1")):
        ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
        ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
        ctx.use_certificate(loadCertificates(issued.certPath)[0])
        ctx.use_privatekey(loadPrivateKey(issued.keyPath))
        offered = list(alpn)

        def select(conn, protocols):
            return next((p for p in offered if p in protocols), SSL.NO_OVERLAPPING_PROTOCOLS)

        if offered:
            ctx.set_alpn_select_callback(select)
        self.serverCreator = _ServerCreator(ctx)

    def start(self):
        pass  # nothing to watch: the material is made in memory

    def stop(self):
        pass

    def describe(self):
        return {}

    def wrapFactory(self, factory):
        return TLSMemoryBIOFactory(self.serverCreator, False, factory)


class _Client(tprotocol.Protocol):
    def __init__(self, first):
        self.first = first
        self.received = b""

    def connectionMade(self):
        if self.first:
            self.transport.write(self.first)

    def dataReceived(self, data):
        self.received += data


def tlsConnect(svc, factory, certs, alpn, first):
    """A TLS client (iosim, in memory) offering ``alpn`` and writing ``first``, connected to ``factory``."""
    ca = Certificate.loadPEM(open(certs.certPath, "rb").read())
    clientTLS = optionsForClientTLS("localhost", trustRoot=ca, acceptableProtocols=list(alpn) or None)
    client = _Client(first)
    clientFactory = TLSMemoryBIOFactory(clientTLS, True, tprotocol.Factory.forProtocol(lambda: client),
                                        clock=svc.reactor)
    clientProto = clientFactory.buildProtocol(None)
    serverProto = factory.buildProtocol(None)
    server = IPv4Address("TCP", "127.0.0.1", 8443)
    client_ = IPv4Address("TCP", "127.0.0.1", 50000)
    pump = connect(serverProto, FakeTransport(serverProto, True, server, client_), clientProto,
                   FakeTransport(clientProto, False, client_, server), clock=svc.reactor)
    return client, clientProto, serverProto, pump


@pytest.mark.parametrize("alpn, first, target, protocol", [
    ([b"h2"], PREFACE, "rpc", "http2"),
    ([b"h2"], b"", "rpc", "http2"),  # ALPN h2 decides before a byte
    ([b"http/1.1"], b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", "web", "http1"),
    ([], b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", "web", "http1"),  # no ALPN: detected on the decrypted bytes
    ([], PREFACE, "rpc", "http2"),
    ([], DUBBO_HEARTBEAT, "dub", "dubbo"),
])
def test_tls_is_terminated_then_detected_again(certs, alpn, first, target, protocol):
    issued = certs.issue("localhost", dns=["localhost"])
    svc, f = mesh(serverTLS=CertServerTLS(issued))
    client, clientProto, serverProto, pump = tlsConnect(svc, f["edge"], certs, alpn, first)
    pump.flush()
    assert stat(svc, "downstream_cx_detected", listener="edge", protocol="tls") == 1
    assert stat(svc, "downstream_cx_detected", listener="edge", protocol=protocol) == 1
    [handed] = f[target].connections
    assert f["edge"].connections == set() and svc.overload.active.value == 1
    if target == "web":
        assert client.received.startswith(b"HTTP/1.1 200 ")  # answered over TLS
    elif target == "rpc":
        assert client.received[3:4] == b"\x04"  # the server's SETTINGS, decrypted by the client
    else:
        assert client.received[:2] == b"\xda\xbb"
    clientProto.transport.loseConnection()
    pump.flush()
    assert f[target].connections == set() and svc.overload.active.value == 0


def test_tls_garbage_after_the_record_header_is_a_failed_handshake(certs):
    issued = certs.issue("localhost", dns=["localhost"])
    svc, f = mesh(serverTLS=CertServerTLS(issued))
    p, t = connectOne(f["edge"])
    p.dataReceived(b"\x16\x03\x01\x00\x05" + b"\x00" * 5)
    assert t.disconnecting
    p.connectionLost(tprotocol.connectionDone)
    assert stat(svc, "downstream_cx_detect_failed", listener="edge", reason="tls_handshake") == 1
    assert f["edge"].connections == set() and svc.overload.active.value == 0


def test_tls_handshake_counts_against_the_detection_timeout(certs):
    issued = certs.issue("localhost", dns=["localhost"])
    svc, f = mesh(serverTLS=CertServerTLS(issued))
    p, t = connectOne(f["edge"])
    p.dataReceived(open(__file__.replace("test_detect_listener.py", "fixtures/detect/curl-tls-h2.c2s.bin"),
                        "rb").read())
    assert t.value()[:1] == b"\x16"  # the ServerHello went out
    svc.reactor.advance(2.1)  # the client never finishes the handshake
    assert t.disconnecting
    assert stat(svc, "downstream_cx_detect_failed", listener="edge", reason="timeout") == 1
    p.connectionLost(tprotocol.connectionDone)
    assert stat(svc, "downstream_cx_detect_failed", listener="edge") == 1  # not also tls_handshake
    assert svc.overload.active.value == 0


def test_admin_views_of_an_auto_listener_and_its_targets():
    from txmesh.control import MeshControl
    from txmesh.explain import ExplainError, explain

    svc, f = mesh()
    described = {d["name"]: d for d in MeshControl(svc, svc.reactor).describeListeners()}
    assert described["edge"]["protocol"] == "auto" and described["web"]["address"] == "internal"
    with pytest.raises(ExplainError) as e:
        explain(svc.config, svc.clusters, {"listener": ["edge"], "path": ["/x"]})
    assert "ask the listener it hands to (http1: web, http2: rpc, dubbo: dub)" in str(e.value)
    assert explain(svc.config, svc.clusters, {"listener": ["web"], "path": ["/x"]})["listener"] == "web"
