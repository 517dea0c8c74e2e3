"""
txmesh.tls.client: the per-host creator (SNI, ALPN, the names checked with service_identity), and the connect that
counts as made only once the handshake and the identity check passed -- real TLS between an in-memory client and
server (MemoryReactorClock, iosim's pump), no sockets, no sleep.
"""

import os
import pytest
from OpenSSL import SSL
from twisted.internet import defer
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator, IOpenSSLServerConnectionCreator
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.test.iosim import ConnectionCompleter
from zope.interface import implementer
from zope.interface.verify import verifyObject

from tests.certs import CertAuthority
from txmesh import errors
from txmesh.interfaces import IUpstreamTLS
from txmesh.stats import StatsStore
from txmesh.tls.client import UpstreamTLS
from txmesh.tls.upstream_config import SanMatcher, UpstreamTLSConfig
from txmesh.upstream.outcome import Outcome, classifyError

SPIFFE = "spiffe://mesh.local/ns/default/sa/backend"


class Host:
    def __init__(self, hostname="backend.mesh", port=8443):
        self.hostname = hostname
        self.port = port
        self.address = "%s:%d" % (hostname, port)
        self.tlsPeer = None


@pytest.fixture
def pki(tmp_path):
    ca = CertAuthority(tmp_path / "ca", "mesh-ca")
    return {
        "ca": ca,
        "other": CertAuthority(tmp_path / "other", "other-ca"),
        "server": ca.issue("server", dns=["backend.mesh", "*.wild.mesh"], uris=[SPIFFE], ips=["127.0.0.1"]),
        "client": ca.issue("client", uris=["spiffe://mesh.local/ns/default/sa/frontend"], client=True),
    }


def upstreamTLS(pki, **kw):
    kw.setdefault("ca", pki["ca"].certPath)
    store = StatsStore()
    tls = UpstreamTLS(UpstreamTLSConfig(**kw), store.scope(cluster="c"), clock=None)
    return tls, store


def names(tls, host, cert):
    return tls.clientCreator(host).checkIdentity(cert.cert)


# -- the creator ----------------------------------------------------------------------------------------------------


def test_interfaces(pki):
    tls, _ = upstreamTLS(pki)
    verifyObject(IUpstreamTLS, tls)
    assert IOpenSSLClientConnectionCreator.providedBy(tls.clientCreator(Host()))


def test_sni_is_the_host_name_none_for_an_ip_unless_set(pki):
    tls, _ = upstreamTLS(pki)
    assert tls.clientCreator(Host("backend.mesh")).sni == "backend.mesh"
    assert tls.clientCreator(Host("127.0.0.1")).sni is None
    assert tls.clientCreator(Host("::1")).sni is None
    tls, _ = upstreamTLS(pki, sni="api.mesh")
    assert tls.clientCreator(Host("127.0.0.1")).sni == "api.mesh"


def test_without_names_the_certificate_must_name_the_host(pki):
    tls, _ = upstreamTLS(pki)
    server = pki["server"]
    assert names(tls, Host("backend.mesh"), server) is None
    assert names(tls, Host("a.wild.mesh"), server) is None  # a wildcard certificate, RFC 6125 via service_identity
    assert names(tls, Host("127.0.0.1"), server) is None  # an IP SAN
    assert names(tls, Host("127.0.0.2"), server) == (
        "the upstream certificate (dns:backend.mesh, dns:*.wild.mesh, uri:%s) names none of ip:127.0.0.2" % SPIFFE)
    assert "names none of dns:other.mesh" in names(tls, Host("other.mesh"), server)


@pytest.mark.parametrize("matchers, ok", [
    ((SanMatcher("uri", "exact", SPIFFE),), True),
    ((SanMatcher("uri", "exact", "spiffe://mesh.local/ns/default/sa/other"),), False),
    # service_identity's URI_ID compares scheme and host only: a SPIFFE ID is compared whole, as a string
    ((SanMatcher("uri", "exact", "spiffe://mesh.local"),), False),
    ((SanMatcher("uri", "prefix", "spiffe://mesh.local/ns/default/"),), True),
    ((SanMatcher("uri", "prefix", "spiffe://mesh.local/ns/prod/"),), False),
    ((SanMatcher("dns", "exact", "backend.mesh"),), True),
    ((SanMatcher("dns", "exact", "x.wild.mesh"),), True),
    ((SanMatcher("dns", "exact", "x.y.wild.mesh"),), False),
    ((SanMatcher("dns", "suffix", ".mesh"),), True),
    ((SanMatcher("dns", "exact", "nope.mesh"), SanMatcher("uri", "exact", SPIFFE)), True),  # any one is enough
])
def test_match_subject_alt_names(pki, matchers, ok):
    tls, _ = upstreamTLS(pki, matchSubjectAltNames=matchers)
    # configured names replace the host-name check: the host connected to does not matter then
    result = names(tls, Host("10.0.0.1"), pki["server"])
    assert (result is None) == ok, result


# -- the connect, over real TLS in memory -----------------------------------------------------------------------------


@implementer(IOpenSSLServerConnectionCreator)
class ServerTLS:
    """An OpenSSL server: a certificate, ALPN h2/http/1.1, optional client certificates; records SNI and ALPN."""

    def __init__(self, cert, ca=None, maxVersion=None):
        ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
        ctx.use_certificate(cert.cert)
        ctx.use_privatekey(cert.key)
        if maxVersion is not None:
            ctx.set_max_proto_version(maxVersion)
        if ca is not None:
            ctx.set_session_id(b"txmesh-test")  # OpenSSL resumes client-verified sessions only with one
            ctx.load_verify_locations(ca.certPath)
            ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, lambda *a: a[-1])
        self.sni = []
        self.offered = []
        ctx.set_tlsext_servername_callback(lambda conn: self.sni.append(conn.get_servername()))

        def select(conn, protos):
            self.offered.append(list(protos))
            return b"h2" if b"h2" in protos else protos[0]

        ctx.set_alpn_select_callback(select)
        self.ctx = ctx

    def serverConnectionForTLS(self, tlsProtocol):
        return SSL.Connection(self.ctx, None)


class Recorder(Protocol):
    def __init__(self, greeting=b""):
        self.greeting = greeting
        self.received = b""
        self.made = False
        self.lost = None

    def connectionMade(self):
        self.made = True
        if self.greeting:
            self.transport.write(self.greeting)

    def dataReceived(self, data):
        self.received += data

    def connectionLost(self, reason):
        self.lost = reason


def pipe(server, tls, host, greeting=b"GET / HTTP/1.1\r\n\r\n"):
    """Connect a client Recorder through ``tls.connect`` to an in-memory TLS server; returns the pieces."""
    reactor = MemoryReactorClock()
    tls.clock = reactor
    serverProto = Recorder()
    TCP4ServerEndpoint(reactor, 8443).listen(TLSMemoryBIOFactory(server, False, Factory.forProtocol(
        lambda: serverProto), reactor))
    client = Recorder(greeting)
    d = tls.connect(TCP4ClientEndpoint(reactor, "127.0.0.1", 8443), Factory.forProtocol(lambda: client), host)
    return reactor, d, client, serverProto


def run(reactor):
    pump = ConnectionCompleter(reactor).succeedOnce()
    for _ in range(20):
        pump.pump()
        reactor.advance(0.01)
    return pump


def outcome(d):
    results = []
    d.addBoth(results.append)
    assert results, "the connect did not finish"
    return results[0]


def test_a_verified_upstream_gets_the_client_protocol_with_sni_and_alpn(pki):
    tls, store = upstreamTLS(pki, alpn=("h2",), sni="backend.mesh", certChain=pki["client"].chainPath,
                             privateKey=pki["client"].keyPath)
    server = ServerTLS(pki["server"], ca=pki["ca"])
    host = Host("127.0.0.1")
    reactor, d, client, serverProto = pipe(server, tls, host)
    run(reactor)
    assert outcome(d) is client and client.made
    assert client.transport.negotiatedProtocol == b"h2"
    assert server.sni == [b"backend.mesh"] and server.offered == [[b"h2"]]
    assert serverProto.received == b"GET / HTTP/1.1\r\n\r\n"  # written once verified, delivered
    assert store.value("upstream_ssl_handshake", cluster="c") == 1
    assert store.value("upstream_ssl_connection_error", cluster="c") == 0
    # what the access log shows for requests to this host
    assert host.tlsPeer.identity.uriSans == (SPIFFE,) and host.tlsPeer.version in ("TLSv1.2", "TLSv1.3")
    assert host.tlsPeer.alpn == "h2"


def test_closing_with_a_write_watcher_registered_closes(pki):
    """
    The HTTP/1.1 and HTTP/2 clients keep a streaming producer (their write watcher) on the transport for the
    connection's life; Twisted's TLS transport alone would hold the close_notify (and the close) until it went, so
    a pooled connection closed for idleness or a drain would stay open.  txmesh's closes, both ends see it.
    """
    from txmesh.protocols.transport import WriteWatcher
    tls, _ = upstreamTLS(pki)
    reactor, d, client, serverProto = pipe(ServerTLS(pki["server"]), tls, Host("127.0.0.1"))
    pump = run(reactor)
    assert outcome(d) is client
    client.transport.registerProducer(WriteWatcher(lambda: None, lambda: None), True)
    client.transport.loseConnection()
    for _ in range(10):
        pump.pump()
    assert client.lost is not None and serverProto.lost is not None


def test_a_wrong_san_fails_the_connect_and_not_a_byte_is_sent(pki):
    tls, store = upstreamTLS(pki, matchSubjectAltNames=(SanMatcher("uri", "exact", "spiffe://x/other"),))
    reactor, d, client, serverProto = pipe(ServerTLS(pki["server"]), tls, Host("backend.mesh"))
    run(reactor)
    failure = outcome(d)
    assert isinstance(failure, Failure) and failure.check(errors.UpstreamTLSVerifyError)
    exc = failure.value
    assert (exc.status, exc.flag, exc.cause) == (503, "UF", "upstream_tls_verify_failed")
    assert "names none of uri:spiffe://x/other" in str(exc)
    assert classifyError(exc) is Outcome.LOCAL_ORIGIN_CONNECT_FAILED
    assert not client.made and serverProto.received == b""
    assert store.value("upstream_ssl_fail_verify_san", cluster="c") == 1
    assert store.value("upstream_ssl_connection_error", cluster="c") == 1
    assert store.value("upstream_ssl_handshake", cluster="c") == 0


@pytest.mark.parametrize("kind, text", [("untrusted", "unable to get local issuer certificate"),
                                        ("expired", "certificate has expired")])
def test_a_bad_chain_fails_the_handshake_with_the_x509_reason(pki, kind, text):
    if kind == "untrusted":
        cert = pki["other"].issue("untrusted", dns=["backend.mesh"])
    else:
        cert = pki["ca"].expired("expired", dns=["backend.mesh"])
    tls, store = upstreamTLS(pki)
    reactor, d, client, serverProto = pipe(ServerTLS(cert), tls, Host("backend.mesh"))
    run(reactor)
    failure = outcome(d)
    assert failure.check(errors.UpstreamTLSVerifyError), failure
    assert text in str(failure.value)
    assert not client.made and serverProto.received == b""
    assert store.value("upstream_ssl_fail_verify_error", cluster="c") == 1
    assert store.value("upstream_ssl_connection_error", cluster="c") == 1


def test_a_version_mismatch_is_a_handshake_failure(pki):
    tls, store = upstreamTLS(pki, minVersion="TLSv1.3")
    server = ServerTLS(pki["server"], maxVersion=SSL.TLS1_2_VERSION)
    reactor, d, client, _ = pipe(server, tls, Host("backend.mesh"))
    run(reactor)
    failure = outcome(d)
    assert failure.check(errors.UpstreamTLSHandshakeError) and not failure.check(errors.UpstreamTLSVerifyError)
    assert failure.value.cause == "upstream_tls_handshake_failed"
    assert "TLS handshake failed" in str(failure.value)
    assert store.value("upstream_ssl_connection_error", cluster="c") == 1
    assert store.value("upstream_ssl_fail_verify_error", cluster="c") == 0


def test_cancelling_during_the_handshake_aborts_it(pki):
    tls, store = upstreamTLS(pki)
    reactor, d, client, _ = pipe(ServerTLS(pki["server"]), tls, Host("backend.mesh"))
    pump = ConnectionCompleter(reactor).succeedOnce(greet=False)  # TCP up, the ClientHello not answered
    d.cancel()
    failure = outcome(d)
    assert failure.check(defer.CancelledError)
    assert pump.clientIO.disconnecting or pump.clientIO.disconnected
    pump.pump()
    assert not client.made


def test_a_failed_tcp_connect_keeps_its_error(pki):
    tls, store = upstreamTLS(pki)
    reactor = MemoryReactorClock()
    tls.clock = reactor
    d = tls.connect(TCP4ClientEndpoint(reactor, "127.0.0.1", 8443), Factory.forProtocol(Recorder), Host())
    ConnectionCompleter(reactor).failOnce()
    assert outcome(d).check(ConnectionRefusedError)
    assert store.value("upstream_ssl_connection_error", cluster="c") == 0


def test_cancelling_the_tcp_connect(pki):
    tls, _ = upstreamTLS(pki)
    reactor = MemoryReactorClock()
    tls.clock = reactor
    d = tls.connect(TCP4ClientEndpoint(reactor, "127.0.0.1", 8443), Factory.forProtocol(Recorder), Host())
    d.cancel()
    assert outcome(d).check(defer.CancelledError)
    [connector] = reactor.connectors
    assert connector.stoppedConnecting


# -- the health checks' reactor ---------------------------------------------------------------------------------------


def checkerConnect(pki, tls, server):
    """A checker's endpoint connect through ``tls.reactorFor``, against an in-memory TLS server."""
    from twisted.internet.endpoints import connectProtocol
    reactor = MemoryReactorClock()
    tls.clock = reactor
    serverProto = Recorder()
    TCP4ServerEndpoint(reactor, 8443).listen(TLSMemoryBIOFactory(server, False, Factory.forProtocol(
        lambda: serverProto), reactor))
    wrapped = tls.reactorFor(reactor, Host("backend.mesh"))
    client = Recorder(b"PING")
    d = connectProtocol(TCP4ClientEndpoint(wrapped, "127.0.0.1", 8443), client)
    return reactor, wrapped, d, client, serverProto


def test_the_checks_reactor_provides_what_endpoints_and_agents_use(pki):
    from twisted.internet.interfaces import IConnector, IReactorPluggableNameResolver, IReactorTCP, IReactorTime
    tls, _ = upstreamTLS(pki)
    reactor, wrapped, d, _, _ = checkerConnect(pki, tls, ServerTLS(pki["server"]))
    verifyObject(IReactorTCP, wrapped)
    verifyObject(IReactorTime, wrapped)
    verifyObject(IReactorPluggableNameResolver, wrapped)
    assert wrapped.seconds() == reactor.seconds() and wrapped.nameResolver is reactor.nameResolver
    from twisted.internet.protocol import ClientFactory
    connector = wrapped.connectTCP("127.0.0.1", 8443, ClientFactory.forProtocol(Recorder))
    verifyObject(IConnector, connector)
    assert connector.getDestination().port == 8443


def test_a_check_connects_once_verified(pki):
    tls, store = upstreamTLS(pki)
    reactor, _, d, client, serverProto = checkerConnect(pki, tls, ServerTLS(pki["server"]))
    run(reactor)
    assert outcome(d) is client and serverProto.received == b"PING"
    assert store.value("upstream_ssl_handshake", cluster="c") == 1


def test_a_check_of_a_wrong_san_fails_its_connect(pki):
    tls, store = upstreamTLS(pki, matchSubjectAltNames=(SanMatcher("dns", "exact", "other.mesh"),))
    reactor, _, d, client, serverProto = checkerConnect(pki, tls, ServerTLS(pki["server"]))
    run(reactor)
    assert outcome(d).check(errors.UpstreamTLSVerifyError)
    assert not client.made and serverProto.received == b""
    assert store.value("upstream_ssl_fail_verify_san", cluster="c") == 1


def test_a_check_cancelled_during_the_handshake_aborts_it(pki):
    tls, _ = upstreamTLS(pki)
    reactor, _, d, client, _ = checkerConnect(pki, tls, ServerTLS(pki["server"]))
    pump = ConnectionCompleter(reactor).succeedOnce(greet=False)
    d.cancel()  # the health check's timeout: the endpoint's cancel stops the connector, which aborts the handshake
    from twisted.internet.error import ConnectingCancelledError
    assert outcome(d).check(ConnectingCancelledError)
    assert pump.clientIO.disconnecting or pump.clientIO.disconnected
    pump.pump()
    assert not client.made


def test_a_check_whose_tcp_connect_fails(pki):
    tls, _ = upstreamTLS(pki)
    reactor, _, d, _, _ = checkerConnect(pki, tls, ServerTLS(pki["server"]))
    ConnectionCompleter(reactor).failOnce()
    assert outcome(d).check(ConnectionRefusedError)


def test_the_next_connection_to_a_host_resumes_the_verified_session(pki):
    tls, store = upstreamTLS(pki, matchSubjectAltNames=(SanMatcher("uri", "exact", SPIFFE),),
                             certChain=pki["client"].chainPath, privateKey=pki["client"].keyPath)
    server = ServerTLS(pki["server"], ca=pki["ca"])
    verifies = []  # the server verifies txmesh's certificate on a full handshake, not on a resumed one
    server.ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, lambda *a: verifies.append(1) or a[-1])
    counts = []
    for _ in range(3):
        reactor, d, client, serverProto = pipe(server, tls, Host("backend.mesh"))
        run(reactor)
        assert outcome(d) is client
        assert client.transport.getPeerCertificate() is not None  # the session's, checked again
        counts.append(len(verifies))
    assert counts[0] > 0 and counts[2] == counts[1] == counts[0], counts
    assert store.value("upstream_ssl_handshake", cluster="c") == 3


def test_an_upstream_refusing_our_missing_client_certificate(pki):
    # TLS 1.2: the server refuses inside the handshake, a connect failure
    tls, store = upstreamTLS(pki)
    server = ServerTLS(pki["server"], ca=pki["ca"], maxVersion=SSL.TLS1_2_VERSION)
    reactor, d, client, serverProto = pipe(server, tls, Host("backend.mesh"))
    run(reactor)
    assert outcome(d).check(errors.UpstreamTLSHandshakeError)
    assert store.value("upstream_ssl_connection_error", cluster="c") == 1
    # TLS 1.3: the client's handshake is complete before the server reads our (missing) certificate: the
    # connection is made, then ended by the server's alert -- a request on it fails as a reset (UC); docs/security.md
    tls, store = upstreamTLS(pki)
    reactor, d, client, serverProto = pipe(ServerTLS(pki["server"], ca=pki["ca"]), tls, Host("backend.mesh"))
    run(reactor)
    assert outcome(d) is client
    assert "certificate required" in client.lost.getErrorMessage()
    assert serverProto.received == b""


def test_without_ca_the_system_trust_store_decides(pki):
    # the system store (OpenSSL's default verify paths) does not know the test CA: verification fails, never "trust all"
    tls, store = upstreamTLS(pki, ca=None)
    reactor, d, client, serverProto = pipe(ServerTLS(pki["server"]), tls, Host("backend.mesh"))
    run(reactor)
    failure = outcome(d)
    assert failure.check(errors.UpstreamTLSVerifyError)
    assert "unable to get local issuer certificate" in str(failure.value)
    assert store.value("upstream_ssl_fail_verify_error", cluster="c") == 1


def test_a_san_service_identity_cannot_read_fails_closed(pki):
    odd = pki["ca"].issue("odd", dns=["backend.mesh"], uris=["urn:*"])
    tls, _ = upstreamTLS(pki)
    reason = names(tls, Host("backend.mesh"), odd)
    assert reason.startswith("the upstream certificate (dns:backend.mesh, uri:urn:*) names none of dns:backend.mesh (")
    # a URI match does not go through service_identity: it still works
    tls, _ = upstreamTLS(pki, matchSubjectAltNames=(SanMatcher("uri", "exact", "urn:*"),))
    assert names(tls, Host("backend.mesh"), odd) is None


# -- rotation of the cluster's client certificate, key and CA (issue 14 part 3) -------------------------------------


def rotatingTLS(pki, tmp_path):
    """An UpstreamTLS on copies of the client certificate and key (so the test can replace them), on a Clock."""
    import shutil
    from twisted.internet.task import Clock
    cert, key = str(tmp_path / "client.crt"), str(tmp_path / "client.key")
    shutil.copy(pki["client"].chainPath, cert)
    shutil.copy(pki["client"].keyPath, key)
    tls, store = upstreamTLS(pki, certChain=cert, privateKey=key)
    clock = Clock()
    tls.clock = clock
    return tls, store, clock, cert, key


def servedSerial(pki, tls):
    """The serial of the client certificate an in-memory server sees on a new connection made by ``tls``."""
    reactor, d, client, serverProto = pipe(ServerTLS(pki["server"], ca=pki["ca"], maxVersion=SSL.TLS1_2_VERSION),
                                           tls, Host("127.0.0.1"))
    run(reactor)
    assert outcome(d) is client
    return serverProto.transport.getPeerCertificate().to_cryptography().serial_number


def test_a_rotated_client_certificate_is_used_for_new_connections(pki, tmp_path):
    from txmesh.tls.client import WATCH_INTERVAL
    from txmesh.tls.rotation import ROTATION_SETTLE
    tls, store, clock, cert, key = rotatingTLS(pki, tmp_path)
    old = tls.context
    tls.clientCreator(Host("127.0.0.1"))  # the first look reads the files as loaded: nothing to reload
    renewed = pki["ca"].issue("renewed", uris=["spiffe://mesh.local/ns/default/sa/frontend"], client=True)
    os.replace(renewed.keyPath, key)
    os.replace(renewed.chainPath, cert)
    clock.advance(WATCH_INTERVAL - 1)
    tls.clientCreator(Host("127.0.0.1"))
    clock.advance(ROTATION_SETTLE)
    assert tls.context is old  # not looked at yet: at most once per WATCH_INTERVAL
    clock.advance(1)
    tls.clientCreator(Host("127.0.0.1"))  # this connection still gets the old context ...
    clock.advance(ROTATION_SETTLE)  # ... the reload comes once the writer had time to write both files
    assert tls.context is not old
    assert store.value("upstream_tls_rotation", cluster="c") == 1
    gauge = store.value("upstream_tls_certificate_expiry_seconds", cluster="c", certificate=cert)
    assert gauge == pytest.approx(renewed.cert.not_valid_after_utc.timestamp() - clock.seconds(), abs=1)
    assert servedSerial(pki, tls) == renewed.cert.serial_number


def test_a_broken_client_certificate_is_refused_counted_and_logged_once(pki, tmp_path, monkeypatch):
    from twisted.logger import Logger, LogLevel
    from txmesh.tls.client import WATCH_INTERVAL
    from txmesh.tls.rotation import ROTATION_SETTLE, RotatingMaterial
    logged = []
    monkeypatch.setattr(RotatingMaterial, "log", Logger(observer=logged.append))
    tls, store, clock, cert, key = rotatingTLS(pki, tmp_path)
    tls.clientCreator(Host("127.0.0.1"))
    old = tls.context
    for text in ("-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n",
                 "-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n\n"):
        with open(cert, "w") as f:
            f.write(text)
        clock.advance(WATCH_INTERVAL)
        tls.clientCreator(Host("127.0.0.1"))
        clock.advance(ROTATION_SETTLE)
    other = pki["ca"].issue("other", client=True)  # a certificate that is not the key's
    os.replace(other.chainPath, cert)
    clock.advance(WATCH_INTERVAL)
    tls.clientCreator(Host("127.0.0.1"))
    clock.advance(ROTATION_SETTLE)
    assert tls.context is old
    assert store.value("upstream_tls_rotation_failed", cluster="c") == 3
    assert store.value("upstream_tls_rotation", cluster="c") == 0
    errorsLogged = [e for e in logged if e["log_level"] == LogLevel.error]
    assert len(errorsLogged) == 2 and all("cluster c" in e["name"] for e in errorsLogged)  # once per reason
    assert servedSerial(pki, tls) == pki["client"].cert.serial_number  # the old certificate still served


def test_the_expiry_gauges_count_down_with_the_clock(pki, tmp_path):
    tls, store, clock, cert, key = rotatingTLS(pki, tmp_path)
    first = store.value("upstream_tls_certificate_expiry_seconds", cluster="c", certificate=cert)
    ca = store.value("upstream_tls_certificate_expiry_seconds", cluster="c", certificate=pki["ca"].certPath)
    clock.advance(3600)
    assert store.value("upstream_tls_certificate_expiry_seconds", cluster="c", certificate=cert) == first - 3600
    assert ca > first  # the CA outlives the leaf


# -- connects that must always end: a rotation racing a handshake, a failure setting up TLS --------------------------


class Servers(Factory):
    """A fresh Recorder per accepted connection (``protocols``, in order)."""

    def __init__(self):
        self.protocols = []

    def buildProtocol(self, addr):
        p = Recorder()
        self.protocols.append(p)
        return p


def test_a_handshake_begun_before_a_rotation_leaves_no_session_for_the_new_material(pki, tmp_path):
    """
    The sidecar pair's stall under rotation (tests/test_sidecar_pair_mtls.py): a connect whose handshake began with
    the old material and passed after the reload recorded its connection as the host's session to resume; the next
    connect offered that session on the new context, pyOpenSSL refused it (ValueError inside Twisted's TLS
    transport), the TCP connection was dropped without a word to the gate, and the connect never ended: every later
    request to the host waited for its route timeout (504), until the next rotation.
    """
    from txmesh.tls.client import WATCH_INTERVAL
    from txmesh.tls.rotation import ROTATION_SETTLE
    tls, store, _, cert, key = rotatingTLS(pki, tmp_path)
    reactor = MemoryReactorClock()  # the connections' and rotation's clock alike
    tls.clock = reactor
    servers = Servers()
    TCP4ServerEndpoint(reactor, 8443).listen(TLSMemoryBIOFactory(ServerTLS(pki["server"], ca=pki["ca"]), False,
                                                                 servers, reactor))
    host = Host("127.0.0.1")
    completer = ConnectionCompleter(reactor)

    def connect():
        client = Recorder()
        d = tls.connect(TCP4ClientEndpoint(reactor, "127.0.0.1", 8443), Factory.forProtocol(lambda: client), host)
        return d, client

    d, first = connect()  # a first connection: its session is kept for the host (TLS 1.3 ticket)
    pump = completer.succeedOnce()
    for _ in range(5):
        pump.pump()
    assert outcome(d) is first
    renewed = pki["ca"].issue("renewed", uris=["spiffe://mesh.local/ns/default/sa/frontend"], client=True)
    os.replace(renewed.keyPath, key)
    os.replace(renewed.chainPath, cert)
    reactor.advance(WATCH_INTERVAL)
    d, racing = connect()  # looks at the files (a reload in ROTATION_SETTLE), connects with the old material
    pump = completer.succeedOnce(greet=False)  # TCP is up, the ClientHello not answered yet
    reactor.advance(ROTATION_SETTLE)  # the reload, while that handshake runs
    assert store.value("upstream_tls_rotation", cluster="c") == 1
    for _ in range(5):
        pump.pump()
    assert outcome(d) is racing  # it passes, with the old certificate: fine, it began before
    d, after = connect()
    pump = completer.succeedOnce()
    for _ in range(5):
        pump.pump()
    assert outcome(d) is after and after.made  # before the fix: ValueError out of the TLS transport, no outcome
    served = servers.protocols[-1].transport.getPeerCertificate().to_cryptography()
    assert served.serial_number == renewed.cert.serial_number  # a full handshake with the new certificate
    assert store.value("upstream_ssl_handshake", cluster="c") == 3


def test_a_failure_setting_up_tls_fails_the_connect_at_once(pki):
    """
    Whatever raises while the TLS transport is set up (here: a host name IDNA cannot encode for SNI, a label over 63
    characters) fails the connect with a typed, counted error at once; before, Twisted dropped the TCP connection
    and nobody heard of it, so the connect waited for connect_timeout (and the connect-timeout's cancel raised).
    """
    tls, store = upstreamTLS(pki)
    reactor, d, client, serverProto = pipe(ServerTLS(pki["server"]), tls, Host("x" * 64 + ".mesh"))
    pump = ConnectionCompleter(reactor).succeedOnce()
    failure = outcome(d)
    assert failure.check(errors.UpstreamTLSHandshakeError), failure
    assert "TLS setup failed" in str(failure.value) and failure.value.cause == "upstream_tls_handshake_failed"
    assert store.value("upstream_ssl_connection_error", cluster="c") == 1
    assert pump.clientIO.disconnecting or pump.clientIO.disconnected  # the TCP connection is closed
    pump.pump()
    assert not client.made and serverProto.received == b""


def test_a_check_whose_tls_setup_fails_fails_its_connect(pki):
    tls, store = upstreamTLS(pki)
    reactor = MemoryReactorClock()
    tls.clock = reactor
    from twisted.internet.endpoints import connectProtocol
    TCP4ServerEndpoint(reactor, 8443).listen(TLSMemoryBIOFactory(ServerTLS(pki["server"]), False, Servers(),
                                                                 reactor))
    wrapped = tls.reactorFor(reactor, Host("x" * 64 + ".mesh"))
    d = connectProtocol(TCP4ClientEndpoint(wrapped, "127.0.0.1", 8443), Recorder(b"PING"))
    ConnectionCompleter(reactor).succeedOnce()
    assert outcome(d).check(errors.UpstreamTLSHandshakeError)


def test_cancelling_a_connect_whose_endpoint_cannot_stop_still_ends_it(pki):
    """
    The pool's connect timeout cancels the connect; an endpoint whose connect already ended without firing (its
    connector no longer connecting: Twisted's raises NotConnectingError on cancel) must not keep the connect open.
    """
    from twisted.internet.error import NotConnectingError

    class StuckEndpoint:
        def connect(self, factory):
            def refuse(_):
                raise NotConnectingError()
            return defer.Deferred(refuse)

    tls, _ = upstreamTLS(pki)
    tls.clock = MemoryReactorClock()
    d = tls.connect(StuckEndpoint(), Factory.forProtocol(Recorder), Host())
    d.cancel()
    assert outcome(d).check(defer.CancelledError)
