"""
Listener TLS (issue 14 parts 1 and 3) in memory: the ``tls`` block's checks and errors, the contexts (SNI, ALPN,
client certificates, versions), the handshake counters and timeout, ALPN choosing the protocol, rotation driven by
a Clock, x-forwarded-client-cert, and route matches on the peer.  Real clients are in
tests/test_integration_tls.py.
"""

import os
import textwrap
import time

import pytest
from OpenSSL import SSL
from twisted.internet import ssl
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator, ISSLTransport, ISystemHandle
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.test import iosim
from zope.interface import implementer
from zope.interface.verify import verifyObject

from tests.certs import certs, otherCA  # noqa: F401  (pytest fixtures)
from txmesh.config import loads
from txmesh.errors import ConfigError
from txmesh.filters.network import FilteringFactory
from txmesh.interfaces import IDownstreamTLS, IListenerFactory, INegotiatedProtocolFactory, IServerTLS
from txmesh.protocols.alpn import ALPNListenerFactory
from txmesh.stats import StatsStore
from txmesh.testing import DownstreamClient, InMemoryMesh, MemoryTransport
from txmesh.stream import HeaderMap, RequestHead
from txmesh.tls.material import PeerIdentity
from txmesh.tls.rotation import RotatingMaterial
from txmesh.tls.server import ROTATION_SETTLE, DownstreamTLS, ServerTLS, downstreamTLSOf
from txmesh.tls.xfcc import XFCC, applyForwardClientCert, xfccElement
from txmesh.tls.server_config import ForwardClientCert

FRONTEND = "spiffe://mesh.local/ns/default/sa/frontend"


def meshYaml(tmp_path, listener, protocol="http"):
    text = textwrap.dedent("""\
        listeners:
          - name: in
            protocol: %s
            address: tcp:0
        %s
            route_config:
              virtual_hosts: [{name: a, domains: ["*"], routes: [{match: {prefix: /}, route: {cluster: c}}]}]
        clusters:
          - name: c
            endpoints: [{address: "127.0.0.1:1"}]
        """) % (protocol, textwrap.indent(textwrap.dedent(listener), "    "))
    path = tmp_path / "mesh.yaml"
    path.write_text(text)
    return text, str(path)


def load(tmp_path, listener, protocol="http"):
    text, path = meshYaml(tmp_path, listener, protocol)
    return loads(text, path).listeners[0]


def error(tmp_path, listener, protocol="http"):
    with pytest.raises(ConfigError) as e:
        load(tmp_path, listener, protocol)
    return str(e.value)


def tlsBlock(certs, extra=""):
    server = certs.issue("server", dns=["localhost"])
    return "tls:\n  certificates: [{cert_chain: %s, private_key: %s}]\n%s" % (
        server.chainPath, server.keyPath, textwrap.indent(extra, "  "))


# -- config ---------------------------------------------------------------------------------------------------


def test_defaults_by_protocol(tmp_path, certs):
    lc = load(tmp_path, tlsBlock(certs))
    t = lc.tls
    assert t.alpn == ("h2", "http/1.1") and t.minVersion == "TLSv1.2" and t.maxVersion is None
    assert t.clientCertificate == "none" and t.sessionTickets and t.handshakeTimeout == 10.0
    assert lc.forwardClientCert == ForwardClientCert("sanitize", frozenset())
    assert load(tmp_path, tlsBlock(certs), "grpc").tls.alpn == ("h2",)
    assert load(tmp_path, "", "http").tls is None


def test_relative_paths_are_read_from_the_config_directory(tmp_path, certs):
    server = certs.issue("rel", dns=["localhost"])
    os.rename(server.certPath, tmp_path / "rel.crt")
    os.rename(server.keyPath, tmp_path / "rel.key")
    lc = load(tmp_path, """\
        tls:
          certificates: [{cert_chain: rel.crt, private_key: rel.key, server_names: ["*.Mesh.test", a.b]}]
        """)
    assert lc.tls.certificates[0].certChain == str(tmp_path / "rel.crt")
    assert lc.tls.certificates[0].serverNames == ("*.mesh.test", "a.b")


@pytest.mark.parametrize("extra, expected", [
    ("min_version: TLSv1.1", "mesh.yaml:7: listeners[0].tls.min_version: TLSv1.1 is refused (TLS 1.0 and 1.1 are "
                             "deprecated by RFC 8996): use TLSv1.2 or TLSv1.3"),
    ("min_version: TLSv1.3\nmax_version: TLSv1.2", "listeners[0].tls.max_version: max_version TLSv1.2 is below "
                                                   "min_version TLSv1.3"),
    ("cipher_suites: NOPE-CIPHER", "listeners[0].tls.cipher_suites: OpenSSL knows no cipher in 'NOPE-CIPHER'"),
    ("client_certificate: required", "listeners[0].tls.client_certificate: client_certificate: required needs ca"),
    ("client_certificate: maybe", "listeners[0].tls.client_certificate: must be one of none, optional, required"),
    ("alpn: [spdy/3]", "listeners[0].tls.alpn[0]: a http1 listener cannot serve ALPN 'spdy/3' (it serves: h2, "
                       "http/1.1)"),
    ("handshake_timeout: 0s", "listeners[0].tls.handshake_timeout: must be above 0"),
    ("bogus: 1", "listeners[0].tls.bogus: unknown key 'bogus'"),
])
def test_tls_block_errors(tmp_path, certs, extra, expected):
    assert expected in error(tmp_path, tlsBlock(certs, extra))


def test_certificate_file_errors_name_the_file_and_the_key(tmp_path, certs):
    a, b = certs.issue("a"), certs.issue("b")
    bad = tmp_path / "bad.pem"
    bad.write_text("-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n")
    msg = error(tmp_path, "tls: {certificates: [{cert_chain: %s, private_key: %s}]}" % (bad, a.keyPath))
    assert "mesh.yaml:5: listeners[0].tls.certificates[0].cert_chain: %s: not a PEM certificate" % (bad,) in msg
    msg = error(tmp_path, "tls: {certificates: [{cert_chain: %s, private_key: %s}]}" % (a.certPath, b.keyPath))
    assert "listeners[0].tls.certificates[0].private_key: %s: the private key does not match the certificate" % (
        b.keyPath,) in msg
    msg = error(tmp_path, "tls: {certificates: [{cert_chain: %s, private_key: %s}], client_certificate: optional,"
                          " ca: /nonexistent/ca.pem}" % (a.certPath, a.keyPath))
    assert "listeners[0].tls.ca: /nonexistent/ca.pem: No such file" in msg


def test_server_name_errors(tmp_path, certs):
    a, b = certs.issue("a"), certs.issue("b")
    two = "tls: {certificates: [{cert_chain: %s, private_key: %s, server_names: [%%s]}, " \
          "{cert_chain: %s, private_key: %s, server_names: [%%s]}]}" % (a.certPath, a.keyPath, b.certPath, b.keyPath)
    assert "certificates[1].server_names[0]: server name 'x.test' is also at listeners[0].tls.certificates[0]" \
        in error(tmp_path, two % ("x.test", "X.test"))
    assert "server_names[0]: invalid server name 'a.*.test'" in error(tmp_path, two % ('"a.*.test"', "y"))
    assert "server_names[0]: invalid server name '*' (a wildcard is '*.' before a domain)" \
        in error(tmp_path, two % ('"*"', "y"))


def test_ssl_endpoints_are_refused_with_a_pointer_to_the_tls_block(tmp_path):
    text, path = meshYaml(tmp_path, "")
    text = text.replace("address: tcp:0", "address: ssl:0:privateKey=k.pem:certKey=c.pem")
    with pytest.raises(ConfigError) as e:
        loads(text, path)
    assert "listeners[0].address: ssl: endpoints are not supported (clients offering ALPN fail the handshake); " \
           "listen on tcp: and add a tls block" in str(e.value)


def test_forward_client_cert_keys(tmp_path):
    lc = load(tmp_path, "forward_client_cert_details: append_forward\n"
                        "set_current_client_cert_details: {uri: true, subject: true, dns: false}")
    assert lc.forwardClientCert == ForwardClientCert("append_forward", frozenset({"uri", "subject"}))
    assert "forward_client_cert_details: must be one of sanitize, forward_only" in error(
        tmp_path, "forward_client_cert_details: sanitise")
    assert "set_current_client_cert_details: only used with forward_client_cert_details append_forward or " \
           "sanitize_set" in error(tmp_path, "set_current_client_cert_details: {uri: true}")
    assert "forward_client_cert_details: Dubbo listeners have no x-forwarded-client-cert header" in error(
        tmp_path, "forward_client_cert_details: sanitize", "dubbo")


# -- handshakes in memory -----------------------------------------------------------------------------------------


class Recorder(Protocol):
    """A listener protocol stand-in: records what it was made for and the bytes it got."""

    def __init__(self, name):
        self.name = name
        self.data = b""
        self.tls = None

    def connectionMade(self):
        self.tls = downstreamTLSOf(self.transport)
        self.transport.write(self.name.encode() + b"|")

    def dataReceived(self, data):
        self.data += data


class Recorders(Factory):
    def __init__(self, name):
        self.name = name
        self.built = []

    def buildProtocol(self, addr):
        p = Recorder(self.name)
        self.built.append(p)
        return p


@implementer(IListenerFactory, INegotiatedProtocolFactory)
class Negotiating(Factory):
    """What the TLS layer sees of an ALPN listener: one recorder factory per ALPN name."""

    def __init__(self):
        self.byName = {b"h2": Recorders("h2"), b"http/1.1": Recorders("http/1.1")}
        self.listenerName = "in"
        self.connections = set()

    def buildNegotiatedProtocol(self, addr, negotiated):
        return self.byName.get(negotiated, self.byName[b"http/1.1"]).buildProtocol(addr)

    buildProtocol = drain = abortAll = closeIdleConnections = None


class ClientProto(Protocol):
    def __init__(self):
        self.data = b""
        self.lost = None

    def dataReceived(self, data):
        self.data += data

    def connectionLost(self, reason):
        self.lost = reason


def serverTLS(tmp_path, certs, extra="", names=None, protocol="http"):
    server = certs.issue("server", dns=["localhost", "a.b.apis.test.other"],
                         uris=["spiffe://mesh.local/ns/default/sa/inbound"])
    entries = "{cert_chain: %s, private_key: %s}" % (server.chainPath, server.keyPath)
    if names:
        other = certs.issue("api", dns=["api.mesh.test", "*.apis.test", "a.b.apis.test"])
        entries += ", {cert_chain: %s, private_key: %s, server_names: [%s]}" % (other.chainPath, other.keyPath, names)
    lc = load(tmp_path, "tls:\n  certificates: [%s]\n%s" % (entries, textwrap.indent(extra, "  ")), protocol)
    clock = Clock()
    clock.advance(time.time())  # certificates are dated in wall time
    stats = StatsStore()
    return ServerTLS(lc.tls, "in", clock, stats), clock, stats


def handshake(tls, clock, certs, inner=None, serverName="localhost", alpn=(b"h2", b"http/1.1"), client=None,
              ca=None):
    """Connect an in-memory TLS client to ``tls.wrapFactory(inner)``; returns (client protocol, inner, pump)."""
    inner = inner if inner is not None else Negotiating()
    serverFactory = tls.wrapFactory(inner)
    trust = ssl.Certificate.loadPEM(open(ca or certs.certPath, "rb").read())
    kw = {}
    if client is not None:
        kw["clientCertificate"] = ssl.PrivateCertificate.loadPEM(open(client.keyPath).read()
                                                                 + open(client.certPath).read())
    options = ssl.optionsForClientTLS(serverName, trustRoot=trust, acceptableProtocols=list(alpn) or None, **kw)
    cp = ClientProto()
    clientFactory = TLSMemoryBIOFactory(options, True, Factory.forProtocol(lambda: cp), clock)
    sp = serverFactory.buildProtocol(None)
    clientTLS = clientFactory.buildProtocol(None)
    pump = iosim.connect(sp, iosim.makeFakeServer(sp), clientTLS, iosim.makeFakeClient(clientTLS), greet=False,
                         clock=clock)
    for _ in range(20):
        pump.flush()
        clock.advance(0)
    return cp, clientTLS, inner, pump


def test_contracts(tmp_path, certs):
    tls, _, _ = serverTLS(tmp_path, certs)
    verifyObject(IServerTLS, tls)
    verifyObject(IOpenSSLServerConnectionCreator, tls.serverCreator)
    verifyObject(IDownstreamTLS, DownstreamTLS())
    a, b = Recorders("a"), Recorders("b")
    for f in (a, b):
        f.listenerName, f.connections, f.draining = "in", set(), False
    combined = ALPNListenerFactory({b"http/1.1": a, b"h2": b}, {b"http/1.1": a, b"h2": b}, b"http/1.1")
    verifyObject(IListenerFactory, combined)
    verifyObject(INegotiatedProtocolFactory, combined)
    assert combined.buildNegotiatedProtocol(None, b"h2").name == "b"
    assert combined.buildNegotiatedProtocol(None, None).name == "a"


def test_alpn_chooses_the_protocol_and_the_handshake_is_counted(tmp_path, certs):
    tls, clock, stats = serverTLS(tmp_path, certs)
    for offer, chosen in (((b"h2", b"http/1.1"), "h2"), ((b"http/1.1",), "http/1.1"), ((), "http/1.1")):
        cp, clientTLS, inner, _ = handshake(tls, clock, certs, alpn=offer)
        assert cp.data == chosen.encode() + b"|"
        built = inner.byName[chosen.encode()].built[0]
        assert built.tls.alpn == (chosen if offer else None)
        assert built.tls.version == "TLSv1.3" and built.tls.peer is None and built.tls.serverName == "localhost"
        assert built.tls.localUriSan == "spiffe://mesh.local/ns/default/sa/inbound"
    assert stats.value("ssl_handshake", listener="in") == 3
    assert stats.value("ssl_versions", listener="in", version="TLSv1.3") == 3
    assert stats.value("ssl_no_certificate", listener="in") == 3


def test_sni_picks_the_certificate_exact_and_wildcard(tmp_path, certs):
    tls, clock, _ = serverTLS(tmp_path, certs, names='api.mesh.test, "*.apis.test"')
    for name, cn in (("api.mesh.test", "api"), ("x.apis.test", "api"), ("localhost", "server"),
                     ("a.b.apis.test", "api"), ("a.b.apis.test.other", "server")):
        cp, clientTLS, _, _ = handshake(tls, clock, certs, serverName=name)
        peer = clientTLS.getHandle().get_peer_certificate(as_cryptography=True)
        assert peer is not None and peer.subject.rfc4514_string() == "CN=" + cn, name


def test_client_certificates_verified_counted_and_the_identity_reaches_the_protocol(tmp_path, certs, otherCA):
    tls, clock, stats = serverTLS(tmp_path, certs, "client_certificate: required\nca: %s\n" % (certs.certPath,))
    good = certs.issue("frontend", uris=[FRONTEND], client=True)
    cp, _, inner, _ = handshake(tls, clock, certs, client=good)
    built = inner.byName[b"h2"].built[0]
    assert built.tls.peer.spiffeId == FRONTEND and built.tls.peer.principal == FRONTEND
    assert built.tls.peerCertificatePem.startswith(b"-----BEGIN CERTIFICATE-----")
    cp, _, inner, _ = handshake(tls, clock, certs)
    assert cp.lost is not None and not inner.byName[b"h2"].built
    assert stats.value("ssl_fail_verify_no_cert", listener="in") == 1
    for bad in (otherCA.issue("stranger", client=True), certs.expired("old", client=True)):
        cp, _, inner, _ = handshake(tls, clock, certs, client=bad)
        assert not inner.byName[b"h2"].built
    assert stats.value("ssl_fail_verify_error", listener="in") == 2
    # the listener still serves the next good client
    cp, _, inner, _ = handshake(tls, clock, certs, client=good)
    assert cp.data == b"h2|"
    assert stats.value("ssl_handshake", listener="in") == 2


def test_tls_1_1_is_refused_and_max_version_holds(tmp_path, certs):
    tls, clock, stats = serverTLS(tmp_path, certs, "max_version: TLSv1.2\n")
    cp, clientTLS, inner, _ = handshake(tls, clock, certs)
    assert clientTLS.getHandle().get_protocol_version_name() == "TLSv1.2"
    ctx = SSL.Context(SSL.TLS_METHOD)
    ctx.set_max_proto_version(SSL.TLS1_1_VERSION)
    ctx.set_cipher_list(b"DEFAULT@SECLEVEL=0")
    conn = SSL.Connection(tls.serverCreator.serverConnectionForTLS(None).get_context(), None)
    conn.set_accept_state()
    client = SSL.Connection(ctx, None)
    client.set_connect_state()
    with pytest.raises(SSL.Error):
        for _ in range(5):
            try:
                client.do_handshake()
            except SSL.WantReadError:
                pass
            conn.bio_write(client.bio_read(65536))
            try:
                conn.do_handshake()
            except SSL.WantReadError:
                pass
            client.bio_write(conn.bio_read(65536))


def test_garbage_and_a_stalled_handshake_are_counted(tmp_path, certs):
    tls, clock, stats = serverTLS(tmp_path, certs)
    sp = tls.wrapFactory(Negotiating()).buildProtocol(None)
    transport = iosim.makeFakeServer(sp)
    sp.makeConnection(transport)
    sp.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    clock.advance(0)
    assert transport.disconnecting
    sp.connectionLost(Failure(ConnectionDone()))
    assert stats.value("ssl_connection_error", listener="in") == 1
    stalled = tls.wrapFactory(Negotiating()).buildProtocol(None)
    t2 = iosim.makeFakeServer(stalled)
    stalled.makeConnection(t2)
    clock.advance(9.9)
    assert not t2.disconnecting
    clock.advance(0.2)
    assert t2.disconnecting or t2.disconnected
    assert stats.value("ssl_handshake_timeout", listener="in") == 1


# -- rotation -----------------------------------------------------------------------------------------------------


def test_rotation_reloads_new_files_and_refuses_broken_ones(tmp_path, certs, monkeypatch):
    tls, clock, stats = serverTLS(tmp_path, certs)
    entry = tls.config.certificates[0]
    first = tls.describe()["cert_chain"][0]
    assert first["path"] == entry.certChain and first["days_until_expiration"] in (364, 365)
    assert "private" not in repr(tls.describe()).lower()
    logged = []
    monkeypatch.setattr(RotatingMaterial, "log", Logger(observer=logged.append))  # the shared rotation's log
    tls.start()
    try:
        renewed = certs.issue("renewed", dns=["localhost"])
        os.replace(renewed.keyPath, entry.privateKey)
        os.replace(renewed.chainPath, entry.certChain)
        clock.advance(tls.config.watchInterval)
        clock.advance(ROTATION_SETTLE)
        assert stats.value("tls_rotation", listener="in") == 1
        assert tls.describe()["cert_chain"][0]["serial_number"] == "%x" % (renewed.cert.serial_number,)
        cp, clientTLS, _, _ = handshake(tls, clock, certs)
        assert clientTLS.getHandle().get_peer_certificate(as_cryptography=True).serial_number == renewed.cert.serial_number
        # a broken certificate: refused, counted, the renewed one kept
        with open(entry.certChain, "w") as f:
            f.write("-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n")
        clock.advance(tls.config.watchInterval)
        clock.advance(ROTATION_SETTLE)
        assert stats.value("tls_rotation_failed", listener="in") == 1
        # a certificate whose key is not the one on disk
        other = certs.issue("other", dns=["localhost"])
        os.replace(other.chainPath, entry.certChain)
        clock.advance(tls.config.watchInterval)
        clock.advance(ROTATION_SETTLE)
        assert stats.value("tls_rotation_failed", listener="in") == 2
        # the same broken state again: counted again, logged once per reason
        assert not tls.reload() and not tls.reload()
        assert stats.value("tls_rotation_failed", listener="in") == 4
        assert len([e for e in logged if e["log_level"] == LogLevel.error]) == 2
        cp, clientTLS, _, _ = handshake(tls, clock, certs)
        assert clientTLS.getHandle().get_peer_certificate(as_cryptography=True).serial_number == renewed.cert.serial_number
        assert tls.serverCreator is tls.serverCreator  # the same creator throughout (protocol detection holds it)
    finally:
        tls.stop()


def test_expiry_gauge_counts_down_with_the_clock(tmp_path, certs):
    tls, clock, stats = serverTLS(tmp_path, certs)
    entry = tls.config.certificates[0]
    before = stats.value("tls_certificate_expiry_seconds", listener="in", certificate=entry.certChain)
    clock.advance(3600)
    after = stats.value("tls_certificate_expiry_seconds", listener="in", certificate=entry.certChain)
    assert 360 * 86400 < before and before - after == pytest.approx(3600)


# -- x-forwarded-client-cert --------------------------------------------------------------------------------------


def _tlsInfo(peer=True):
    identity = PeerIdentity(uriSans=(FRONTEND,), dnsSans=("a.svc", "b.svc"), subject='CN=a "b"', fingerprint="ff")
    return DownstreamTLS(version="TLSv1.3", peer=identity if peer else None, peerCertificatePem=b"-----PEM\n",
                         localUriSan="spiffe://mesh.local/sa/in")


@pytest.mark.parametrize("mode, tls, incoming, expected", [
    ("sanitize", _tlsInfo(), b"By=x", None),
    ("sanitize", None, b"By=x", None),
    ("forward_only", _tlsInfo(), b"By=x", b"By=x"),
    ("forward_only", _tlsInfo(peer=False), b"By=x", None),
    ("forward_only", None, b"By=x", None),
    ("append_forward", _tlsInfo(), b"By=x", b"By=x,By=spiffe://mesh.local/sa/in;Hash=ff;URI=" + FRONTEND.encode()),
    ("append_forward", _tlsInfo(), None, b"By=spiffe://mesh.local/sa/in;Hash=ff;URI=" + FRONTEND.encode()),
    ("append_forward", None, b"By=x", None),
    ("sanitize_set", _tlsInfo(), b"By=x", b"By=spiffe://mesh.local/sa/in;Hash=ff;URI=" + FRONTEND.encode()),
    ("sanitize_set", None, b"By=x", None),
    ("always_forward_only", None, b"By=x", b"By=x"),
])
def test_xfcc_modes(mode, tls, incoming, expected):
    headers = HeaderMap([(XFCC, incoming)] if incoming is not None else [])
    fcc = ForwardClientCert(mode, frozenset({"uri"}) if mode in ("append_forward", "sanitize_set") else frozenset())
    applyForwardClientCert(headers, fcc, tls, lambda: xfccElement(tls, fcc.details))
    assert headers.get(XFCC) == expected


def test_xfcc_element_fields():
    element = xfccElement(_tlsInfo(), frozenset({"subject", "uri", "dns", "cert"}))
    assert element == (b'By=spiffe://mesh.local/sa/in;Hash=ff;Cert="-----PEM%0A";Subject="CN=a \\"b\\"";URI='
                       + FRONTEND.encode() + b";DNS=a.svc;DNS=b.svc")


# -- routes on the peer -------------------------------------------------------------------------------------------


def test_routes_match_on_the_peer_identity(tmp_path):
    text = textwrap.dedent("""\
        listeners:
          - name: in
            address: tcp:0
            route_config:
              virtual_hosts:
                - name: a
                  domains: ["*"]
                  routes:
                    - match: {prefix: /, peer: {principal: {prefix: "spiffe://mesh.local/ns/default/"}}}
                      direct_response: {status: 200, body: default-ns}
                    - match: {prefix: /, peer: {dns_san: b.svc, uri_san: {exact: "urn:x"}}}
                      direct_response: {status: 200, body: dns}
                    - match: {prefix: /}
                      direct_response: {status: 403}
        """)
    path = str(tmp_path / "mesh.yaml")
    table = loads(text, path).listeners[0].routeConfig
    request = RequestHead(b"GET", b"/", b"x")
    frontend = PeerIdentity(uriSans=(FRONTEND,))
    other = PeerIdentity(uriSans=("urn:x",), dnsSans=("a.svc", "b.svc"))
    assert table.match(request, frontend).action.body == b"default-ns"
    assert table.match(request, other).action.body == b"dns"
    assert table.match(request, PeerIdentity(dnsSans=("b.svc",))).action.status == 403
    assert table.match(request, None).action.status == 403
    _, failed, _ = table.explain(request)
    assert [why for _, why in failed] == ["peer", "peer"]
    bad = text.replace("{principal: {prefix:", "{principal: {suffix:")
    with pytest.raises(ConfigError, match=r"match.peer.principal.suffix: unknown key 'suffix'"):
        loads(bad, path)


# -- the identity in every protocol's StreamInfo -------------------------------------------------------------------


def completedServerConnection(tls, certs, client):
    """A server SSL.Connection of ``tls`` whose handshake with ``client`` (an Issued) is done, over memory BIOs."""
    ctx = SSL.Context(SSL.TLS_METHOD)
    ctx.use_certificate(client.cert)
    ctx.use_privatekey(client.key)
    server = tls.serverCreator.serverConnectionForTLS(None)
    server.set_accept_state()
    conn = SSL.Connection(ctx, None)
    conn.set_connect_state()
    conn.set_tlsext_host_name(b"localhost")
    for _ in range(10):
        for a, b in ((conn, server), (server, conn)):
            try:
                a.do_handshake()
            except SSL.WantReadError:
                pass
            try:
                b.bio_write(a.bio_read(65536))
            except SSL.WantReadError:
                pass
    return server


@implementer(ISSLTransport, ISystemHandle)
class TLSMemoryTransport(MemoryTransport):
    """A MemoryTransport that is, to the listener, a TLS connection whose handshake is done."""

    def __init__(self, clock, peer, connection):
        MemoryTransport.__init__(self, clock, peer)
        self.connection = connection

    def getHandle(self):
        return self.connection

    def getPeerCertificate(self):
        return self.connection.get_peer_certificate()


def connectOverTLS(mesh, connection):
    transport = TLSMemoryTransport(mesh.clock, IPv4Address("TCP", "10.1.2.3", 40000), connection)
    protocol = transport.protocol = mesh.factory.buildProtocol(transport.getPeer())
    protocol.makeConnection(transport)
    mesh.runTurns()
    return DownstreamClient(mesh, protocol, transport)


def test_http_listener_streams_carry_the_identity_and_xfcc(tmp_path, certs):
    tls, _, _ = serverTLS(tmp_path, certs, "client_certificate: required\nca: %s\n" % (certs.certPath,))
    frontend = certs.issue("frontend", uris=[FRONTEND], client=True)
    mesh = InMemoryMesh(textwrap.dedent("""\
        listeners:
          - name: in
            address: tcp:0
            forward_client_cert_details: append_forward
            set_current_client_cert_details: {uri: true}
            route_config:
              virtual_hosts: [{name: a, domains: ["*"], routes: [{match: {prefix: /}, route: {cluster: c}}]}]
        clusters: [{name: c, endpoints: [{address: "10.0.0.1:80"}]}]
        """))
    client = connectOverTLS(mesh, completedServerConnection(tls, certs, frontend))
    client.request(headers=[(b"x-forwarded-client-cert", b"By=spiffe://earlier;Hash=00")])
    info = mesh.streams[0].streamInfo
    assert info.peerIdentity.spiffeId == FRONTEND and info.downstreamTls.version == "TLSv1.3"
    forwarded = mesh.upstream("c").requests[0].head.headers.get(XFCC)
    assert forwarded.startswith(b"By=spiffe://earlier;Hash=00,By=spiffe://mesh.local/ns/default/sa/inbound;Hash=")
    assert forwarded.endswith(b";URI=" + FRONTEND.encode())


def test_dubbo_listener_streams_carry_the_identity(tmp_path, certs):
    tls, _, _ = serverTLS(tmp_path, certs, "client_certificate: required\nca: %s\n" % (certs.certPath,),
                          protocol="dubbo")
    assert tls.config.alpn == ()
    frontend = certs.issue("frontend", uris=[FRONTEND], client=True)
    mesh = InMemoryMesh(textwrap.dedent("""\
        listeners:
          - name: in
            protocol: dubbo
            address: tcp:0
            route_config:
              virtual_hosts: [{name: a, domains: ["*"], routes: [{match: {dubbo: {interface: "*"}}, route: {cluster: p}}]}]
        clusters: [{name: p, protocol: dubbo, endpoints: [{address: "10.0.0.1:20880"}]}]
        """))
    fixture = os.path.join(os.path.dirname(__file__), "fixtures", "dubbo-frames", "sofa-consumer__sofa-provider",
                           "c0-c2s-000-req-echo.hex")
    client = connectOverTLS(mesh, completedServerConnection(tls, certs, frontend))
    client.send(bytes.fromhex(open(fixture).read()))
    info = mesh.streams[0].streamInfo
    assert info.protocol == "dubbo" and info.peerIdentity.spiffeId == FRONTEND
    assert info.downstreamTls.serverName == "localhost"


def test_network_filters_see_plain_text_and_the_peer_identity(tmp_path, certs):
    """TLS sits outside the network filters: their IConnectionInfo has the peer's identity."""
    tls, clock, _ = serverTLS(tmp_path, certs, "client_certificate: optional\nca: %s\n" % (certs.certPath,))
    recorders = Recorders("plain")
    filtering = FilteringFactory(recorders, (), None, "in")
    cp, _, _, pump = handshake(tls, clock, certs, inner=filtering,
                               client=certs.issue("frontend", uris=[FRONTEND], client=True))
    cp.transport.write(b"hello")
    for _ in range(5):
        pump.flush()
    [built] = recorders.built
    assert built.data == b"hello"
    connection = built.transport  # the FilteringProtocol: what network filters get as IConnectionInfo
    assert connection.peerIdentity.spiffeId == FRONTEND and connection.listenerName == "in"


def test_alpn_factory_drains_both_and_its_drain_can_be_cancelled():
    from twisted.internet import defer
    from txmesh.protocols.listener import DrainingFactory

    class Busy:
        def drain(self):
            pass

    one, two = DrainingFactory(), DrainingFactory()
    one.listenerName = two.listenerName = "in"
    busy = Busy()
    two.connections.add(busy)
    combined = ALPNListenerFactory({b"http/1.1": one, b"h2": two}, {b"http/1.1": one, b"h2": two}, b"http/1.1")
    assert combined.connections == {busy}
    d = combined.drain()
    assert not d.called and combined.draining
    two.connections.discard(busy)
    two.connectionEnded(busy)
    assert d.called
    two.connections.add(busy)
    d = combined.drain()
    d.cancel()
    failures = []
    d.addErrback(failures.append)
    assert failures[0].check(defer.CancelledError)
