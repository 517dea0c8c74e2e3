"""
TLS origination on clusters (issue 14 part 2): a cluster's ``tls`` block (L{txmesh.tls.upstream_config}) as one
OpenSSL context, a client connection creator per upstream host (SNI, ALPN, the names its certificate must carry),
and a connect that counts as made only once the handshake *and* the identity check passed.

How a connection is made (L{UpstreamTLS.connect}): TCP through the given endpoint (txmesh's own TCP transport,
L{txmesh.tcp}, under ``twistd``), Twisted's TLS transport (C{TLSMemoryBIOProtocol}) over it, and between the TLS
transport and the cluster's client protocol a L{_HandshakeGate}:

  - OpenSSL verifies the chain during the handshake (``ca``, or the system trust store): an untrusted, expired or
    not-yet-valid certificate fails the handshake (``upstream_ssl_fail_verify_error``);
  - once the handshake is done the gate checks the upstream's identity: the DNS (and IP) names with
    service_identity (``DNS_ID``/``IPAddress_ID`` patterns, RFC 6125, wildcard certificates included), URI SANs
    (SPIFFE IDs) by exact string or prefix/suffix against the certificate's URI SANs -- service_identity's
    ``URI_ID`` compares only a URI's scheme and host (RFC 6125 6.5.2), which cannot tell two SPIFFE IDs of one trust
    domain apart.  A mismatch aborts the connection (``upstream_ssl_fail_verify_san``);
  - only then is the client protocol connected and the connect Deferred fired: no request byte is ever written to an
    unverified upstream.  Every failure before that is a L{txmesh.errors.UpstreamTLSHandshakeError} or
    L{txmesh.errors.UpstreamTLSVerifyError} (connect failures: the pool counts ``upstream_cx_connect_fail``, the
    host's outlier detection sees a local-origin connect failure, the router answers 503 ``UF``, gRPC UNAVAILABLE,
    Dubbo SERVICE_NOT_FOUND).
"""

import ipaddress
from dataclasses import dataclass

from OpenSSL import SSL, crypto
from service_identity import CertificateError, VerificationError
from service_identity.cryptography import extract_patterns
from service_identity.hazmat import DNS_ID, IPAddress_ID, verify_service_identity
from twisted.internet import defer
from twisted.internet.interfaces import (IConnector, IHandshakeListener, IOpenSSLClientConnectionCreator,
                                         IReactorPluggableNameResolver, IReactorTCP, IReactorTime)
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.logger import Logger
from twisted.protocols.tls import BufferingTLSTransport, TLSMemoryBIOFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from txmesh.errors import UpstreamTLSHandshakeError, UpstreamTLSVerifyError
from txmesh.interfaces import IUpstreamTLS
from txmesh.tls.material import PeerIdentity, loadCertificates, loadPrivateKey, toOpenSSLCertificate
from txmesh.tls.rotation import RotatingMaterial
from txmesh.tls.upstream_config import TLS_VERSIONS

# X509_V_ERR_* codes a verify callback sees most, as OpenSSL words them (X509_verify_cert_error_string)
_X509_ERRORS = {
    2: "unable to get issuer certificate",
    9: "certificate is not yet valid",
    10: "certificate has expired",
    18: "self-signed certificate",
    19: "self-signed certificate in certificate chain",
    20: "unable to get local issuer certificate",
    21: "unable to verify the first certificate",
    26: "unsupported certificate purpose",
}


def x509ErrorText(code):
    """OpenSSL's words for an X509_V_ERR code (the common ones), else the number."""
    return _X509_ERRORS.get(code, "X509 verify error %d" % (code,))


# (name, help): a TLS cluster's series on its scope (labelled cluster=name), Envoy's cluster.<name>.ssl.* names
UPSTREAM_TLS_STATS = (
    ("upstream_ssl_handshake", "TLS handshakes with upstreams that completed and passed verification "
                               "(Envoy's ssl.handshake)."),
    ("upstream_ssl_connection_error", "TLS handshakes with upstreams that failed, verification failures included "
                                      "(Envoy's ssl.connection_error)."),
    ("upstream_ssl_fail_verify_error", "Upstream certificates whose chain failed verification: untrusted CA, "
                                       "expired, not yet valid (Envoy's ssl.fail_verify_error)."),
    ("upstream_ssl_fail_verify_san", "Upstream certificates with no subject alt name the cluster accepts "
                                     "(Envoy's ssl.fail_verify_san)."),
    ("upstream_tls_rotation", "Cluster TLS material (client certificate, key, CA) reloaded after its files changed."),
    ("upstream_tls_rotation_failed", "Cluster TLS material changes refused (the old material kept)."),
)
# how often a cluster's TLS files are looked at (on a new connection, at most this often)
WATCH_INTERVAL = 5.0


class UpstreamTLSStats:
    """The TLS series of one cluster."""

    def __init__(self, scope):
        for name, help in UPSTREAM_TLS_STATS:
            setattr(self, name, scope.counter(name, help=help))


def buildContext(config):
    """
    The OpenSSL client context of an L{UpstreamTLSConfig}: versions, trust (``ca`` or the system store), the client
    certificate, ALPN, TLS 1.2 cipher suites; peer verification on.  @raise TLSMaterialError: a file went bad
    since the config was loaded.
    """
    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    ctx.set_min_proto_version(TLS_VERSIONS[config.minVersion])
    if config.maxVersion is not None:
        ctx.set_max_proto_version(TLS_VERSIONS[config.maxVersion])
    ctx.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_NO_RENEGOTIATION)
    if config.ca is not None:
        store = ctx.get_cert_store()
        for cert in loadCertificates(config.ca):
            store.add_cert(toOpenSSLCertificate(cert))
    else:
        # the system trust store: OpenSSL's default verify paths (SSL_CERT_FILE / SSL_CERT_DIR, else the build's
        # OPENSSLDIR; pyOpenSSL falls back to the distribution bundle, e.g. /etc/ssl/certs/ca-certificates.crt)
        ctx.set_default_verify_paths()
    ctx.set_verify(SSL.VERIFY_PEER)  # each connection sets its own callback (ClientCreator), recording errors
    if config.certChain is not None:
        chain = loadCertificates(config.certChain)
        # pyOpenSSL takes cryptography objects here (its own X509/PKey are deprecated), X509Store.add_cert does not
        ctx.use_certificate(chain[0])
        for extra in chain[1:]:
            ctx.add_extra_chain_cert(extra)
        ctx.use_privatekey(loadPrivateKey(config.privateKey))
        ctx.check_privatekey()
    if config.alpn:
        ctx.set_alpn_protos([name.encode("ascii") for name in config.alpn])
    if config.cipherSuites:
        ctx.set_cipher_list(":".join(config.cipherSuites).encode("ascii"))
    return ctx


def _isIP(name):
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


@implementer(IOpenSSLClientConnectionCreator)
class ClientCreator:
    """
    The connection creator for one upstream host: ``sni`` (str or None), ``alpn`` (tuple of str) and the identity
    check (L{ClientCreator.checkIdentity}).  @ivar expected: a description of the names accepted, for messages.
    @ivar verifyError: (X509 error code, depth) of the first chain verification error OpenSSL reported on the
        latest connection made, or None (L{UpstreamTLS.connect} makes one creator per connection).
    """

    def __init__(self, context, sni, alpn, dnsIds, ipIds, uriMatchers, dnsMatchers, previous=None):
        self.context = context
        self.previous = previous  # the host's latest verified SSL.Connection: its session is offered for resumption
        self.sni = sni
        self.alpn = alpn
        self._dnsIds = dnsIds  # service_identity DNS_IDs, any one matching
        self._ipIds = ipIds  # service_identity IPAddress_IDs, any one matching
        self._uriMatchers = uriMatchers  # SanMatcher of kind uri
        self._dnsMatchers = dnsMatchers  # SanMatcher of kind dns, prefix/suffix
        names = ["dns:" + i.hostname.decode("ascii") for i in dnsIds] + ["ip:%s" % (i.ip,) for i in ipIds]
        names += [m.describe() for m in uriMatchers + dnsMatchers]
        self.expected = names
        self.verifyError = None

    def _verified(self, connection, x509, errno, depth, ok):
        # OpenSSL decides (ok); we only remember the first complaint, for the error message and the counter
        if not ok and self.verifyError is None:
            self.verifyError = (errno, depth)
        return ok

    def clientConnectionForTLS(self, tlsProtocol):
        connection = SSL.Connection(self.context, None)
        connection.set_verify(SSL.VERIFY_PEER, self._verified)
        self.verifyError = None
        previous = self.previous
        if previous is not None and previous.get_context() is self.context:
            # resumption (TLS 1.2 session id or ticket, TLS 1.3 ticket): the upstream may skip the certificate
            # exchange and its asymmetric crypto; the session keeps the peer certificate verified before, which the
            # identity check reads again.  Only a session of this context: OpenSSL refuses another's (ValueError),
            # and one made with the material before a rotation would present the old certificate anyway
            session = previous.get_session()
            if session is not None:
                connection.set_session(session)
        if self.sni is not None:
            connection.set_tlsext_host_name(self.sni.encode("idna"))
        connection.set_connect_state()
        return connection

    def checkIdentity(self, cert, identity=None):
        """
        Whether the verified peer certificate ``cert`` (C{cryptography} or pyOpenSSL) carries a name this host is
        expected to have; ``identity``: its PeerIdentity, if made already.  @return: None if it does, else a
        one-line reason.
        """
        if isinstance(cert, crypto.X509):
            cert = cert.to_cryptography()
        if identity is None:
            identity = PeerIdentity.fromCertificate(cert)
        if self._dnsIds or self._ipIds:
            try:
                patterns = extract_patterns(cert)
            except (CertificateError, ValueError) as e:  # a SAN service_identity cannot read: no match through it
                patterns = []
                unreadable = str(e)
            else:
                unreadable = None
            for sid in self._dnsIds + self._ipIds if patterns else ():
                try:
                    verify_service_identity(patterns, [sid], [])
                except VerificationError:
                    continue
                return None
        else:
            unreadable = None
        for m in self._uriMatchers:
            if any(_matches(m, uri) for uri in identity.uriSans):
                return None
        for m in self._dnsMatchers:
            if any(_matches(m, name.lower()) for name in identity.dnsSans):
                return None
        presented = ["dns:" + n for n in identity.dnsSans] + ["uri:" + u for u in identity.uriSans]
        reason = "the upstream certificate (%s) names none of %s" % (
            ", ".join(presented) or "no subject alt names", ", ".join(self.expected))
        if unreadable:
            reason += " (%s)" % (unreadable,)
        return reason


def _matches(matcher, san):
    value = matcher.value
    if matcher.matcher == "exact":
        return san == value
    if matcher.matcher == "prefix":
        return san.startswith(value)
    return san.endswith(value)


@dataclass(frozen=True, slots=True)
class UpstreamPeer:
    """What a verified handshake with an upstream host showed: ``identity`` (IPeerIdentity), ``version``
    ('TLSv1.3'), ``alpn`` (the protocol chosen, or None)."""

    identity: object
    version: str
    alpn: str | None = None


class _ClientMaterial:
    """One loaded version of a cluster's ``tls`` files: the context, the client certificate chain, the CA bundle."""

    def __init__(self, config):
        self.context = buildContext(config)
        self.chain = loadCertificates(config.certChain) if config.certChain is not None else []
        self.ca = loadCertificates(config.ca) if config.ca is not None else []


@implementer(IUpstreamTLS)
class UpstreamTLS:
    """
    A cluster's TLS origination: an OpenSSL context built from the block's files, a L{ClientCreator} per host.

    The files (``cert_chain``, ``private_key``, ``ca``) rotate (L{txmesh.tls.rotation.RotatingMaterial}): each new
    connection looks at them if WATCH_INTERVAL passed since the last look, and a change is loaded ROTATION_SETTLE
    later for the connections made from then on (open ones keep theirs; the sessions kept for resumption are
    dropped, so the upstream sees the new certificate at once).  Material that does not load is refused, logged
    once per reason and counted (``upstream_tls_rotation_failed``); the old stays in use.  A gauge per file counts
    down to its certificate's expiry (``upstream_tls_certificate_expiry_seconds{cluster, certificate}``).

    @param config: the cluster's L{txmesh.tls.upstream_config.UpstreamTLSConfig}.
    @param scope: the cluster's stats scope (L{UpstreamTLSStats} and the gauges are made there).
    @param clock: the IReactorTime the TLS transport schedules its write flushes on, and rotation's clock.
    @cvar MAX_SESSIONS: hosts whose latest session is kept for resumption.
    """

    MAX_SESSIONS = 1024

    def __init__(self, config, scope=None, clock=None):
        self.config = config
        self.stats = UpstreamTLSStats(scope)
        self._verifiedConnections = {}  # host address -> its latest verified SSL.Connection, oldest first
        files = [p for p in (config.certChain, config.privateKey, config.ca) if p is not None]
        name = "cluster %s" % (dict(scope.labels).get("cluster", "?"),)
        self._rotating = RotatingMaterial(
            files, WATCH_INTERVAL, clock, lambda: _ClientMaterial(config), name, self.stats.upstream_tls_rotation,
            self.stats.upstream_tls_rotation_failed, lambda m: ["%x" % (c.serial_number,) for c in m.chain[:1]],
            lambda material: self._verifiedConnections.clear())
        help = "Seconds until the cluster's TLS certificate (client certificate, CA) expires"
        if config.certChain is not None:
            scope.computedGauge("upstream_tls_certificate_expiry_seconds", self._expiry(lambda m: m.chain[:1]),
                                help=help, certificate=config.certChain)
        if config.ca is not None:
            scope.computedGauge("upstream_tls_certificate_expiry_seconds", self._expiry(lambda m: m.ca),
                                help=help, certificate=config.ca)

    def _expiry(self, certs):
        return lambda: (min(c.not_valid_after_utc.timestamp() for c in certs(self._rotating.material))
                        - self.clock.seconds())

    @property
    def clock(self):
        """The IReactorTime of the TLS transports and of rotation (None: files are not looked at again)."""
        return self._rotating.reactor

    @clock.setter
    def clock(self, clock):
        self._rotating.reactor = clock

    @property
    def context(self):
        """The OpenSSL context new connections are made with (the current material's)."""
        return self._rotating.material.context

    def clientCreator(self, host):
        if self.clock is not None:
            self._rotating.checkDue()
        config = self.config
        hostname = host.hostname
        isIP = _isIP(hostname)
        sni = config.sni if config.sni is not None else (None if isIP else hostname)
        uriMatchers = tuple(m for m in config.matchSubjectAltNames if m.kind == "uri")
        dnsExact = [m.value for m in config.matchSubjectAltNames if m.kind == "dns" and m.matcher == "exact"]
        dnsMatchers = tuple(m for m in config.matchSubjectAltNames if m.kind == "dns" and m.matcher != "exact")
        ipIds = []
        if not config.matchSubjectAltNames:
            # no names configured: the certificate must name the host connected to (as curl and Twisted's
            # optionsForClientTLS check), the SNI name, else the IP
            if sni is not None:
                dnsExact = [sni]
            elif isIP:
                ipIds = [IPAddress_ID(hostname)]
        return ClientCreator(self.context, sni, config.alpn, [DNS_ID(n) for n in dnsExact], ipIds, uriMatchers,
                             dnsMatchers, self._verifiedConnections.get(host.address))

    def _verified(self, host, connection):
        """
        ``connection`` to ``host`` passed: its session is what the host's next connection offers to resume.  Not a
        connection begun with the material before a rotation (its handshake ran across the reload): its session
        belongs to the old context, and the sessions were dropped so that the upstream sees the new certificate.
        """
        if connection.get_context() is not self.context:
            return
        held = self._verifiedConnections
        held.pop(host.address, None)
        held[host.address] = connection
        if len(held) > self.MAX_SESSIONS:
            del held[next(iter(held))]  # the least recently verified host's

    def connect(self, endpoint, factory, host):
        """
        Connect ``factory``'s protocol to ``host`` through ``endpoint`` (an IStreamClientEndpoint to the host) over
        TLS.  @return: a Deferred firing with the connected protocol once the handshake and the identity check
        passed, or failing with UpstreamTLSHandshakeError / UpstreamTLSVerifyError (or the endpoint's own connect
        error); cancelling it aborts the connect or the handshake.
        """
        connected = defer.Deferred(lambda d: gate.cancel())
        gate, _, tlsFactory = self._wrap(host, factory.buildProtocol(None), connected)
        tcp = endpoint.connect(tlsFactory)
        if gate.transport is None:
            gate.tcpConnecting = tcp
        tcp.addErrback(gate.tcpFailed)
        return connected

    def _wrap(self, host, inner, connected):
        creator = self.clientCreator(host)
        gate = _HandshakeGate(inner, connected, creator, self.stats, host, self._verified)
        gateFactory = _GateFactory(gate)
        return gate, gateFactory, _ClosingTLSFactory(_GuardedCreator(gate), True, gateFactory, self.clock)

    def reactorFor(self, reactor, host):
        """
        ``reactor`` (IReactorTCP, IReactorTime, IReactorPluggableNameResolver) except that its ``connectTCP``
        makes verified TLS connections to ``host``: what a cluster's active health checks connect with, so the
        tcp, http, grpc and dubbo checkers (Twisted endpoints and treq's Agent underneath) run over the cluster's
        TLS unchanged.  See L{TLSConnectingReactor}.
        """
        return TLSConnectingReactor(reactor, self, host)


@implementer(IReactorTCP, IReactorTime, IReactorPluggableNameResolver)
class TLSConnectingReactor:
    """
    A reactor whose TCP connects are TLS connects to one upstream host through an L{UpstreamTLS}: the factory's
    protocol is connected (``buildProtocol``, then ``makeConnection`` over the TLS transport) only once the
    handshake and the identity check passed; a failure calls the factory's ``clientConnectionFailed`` with the
    typed, counted error, as a refused connect would.  Everything else is the wrapped reactor's.
    """

    def __init__(self, reactor, upstreamTLS, host):
        self._reactor = reactor
        self._tls = upstreamTLS
        self._host = host

    def connectTCP(self, host, port, factory, timeout=30, bindAddress=None):
        connected = defer.Deferred()
        gate, gateFactory, tlsFactory = self._tls._wrap(self._host, factory.buildProtocol(None), connected)
        connector = _HandshakingConnector(gate)

        def started(tcpConnector):
            connector.tcp = tcpConnector
            factory.startedConnecting(connector)

        # the TCP connect's events reach the TLS factory's wrapped one, the gate's, which hands them to ``factory``
        gateFactory.started = started
        gateFactory.connectFailed = lambda _, reason: factory.clientConnectionFailed(connector, reason)
        connected.addErrback(lambda f: factory.clientConnectionFailed(connector, f))
        connector.tcp = self._reactor.connectTCP(host, port, tlsFactory, timeout, bindAddress)
        return connector

    def listenTCP(self, port, factory, backlog=50, interface=""):
        return self._reactor.listenTCP(port, factory, backlog, interface)

    def callLater(self, delay, callable, *args, **kw):
        return self._reactor.callLater(delay, callable, *args, **kw)

    def getDelayedCalls(self):
        return self._reactor.getDelayedCalls()

    def seconds(self):
        return self._reactor.seconds()

    @property
    def nameResolver(self):
        return self._reactor.nameResolver

    def installNameResolver(self, resolver):
        return self._reactor.installNameResolver(resolver)


@implementer(IConnector)
class _HandshakingConnector:
    """
    The IConnector a L{TLSConnectingReactor} connect returns: stopping it while the handshake runs aborts the
    handshake (an endpoint's cancel, a health check's timeout), before that it stops the TCP connect.
    """

    def __init__(self, gate):
        self.gate = gate
        self.tcp = None

    def stopConnecting(self):
        if self.gate.transport is not None:
            self.gate.cancel()
        else:
            self.tcp.stopConnecting()

    def disconnect(self):
        self.tcp.disconnect()

    def connect(self):
        self.tcp.connect()

    def getDestination(self):
        return self.tcp.getDestination()


class _GateFactory(ClientFactory):
    """
    Builds the one gate of a connection.  Under a L{TLSConnectingReactor} the TCP connect's start and failure go
    to ``started`` and ``connectFailed``; under an endpoint they are the endpoint's business.
    """

    noisy = False

    def __init__(self, gate):
        self.gate = gate
        self.started = None
        self.connectFailed = None

    def buildProtocol(self, addr):
        return self.gate

    def startedConnecting(self, connector):
        if self.started is not None:
            self.started(connector)

    def clientConnectionFailed(self, connector, reason):
        if self.connectFailed is not None:
            self.connectFailed(connector, reason)


@implementer(IOpenSSLClientConnectionCreator)
class _GuardedCreator:
    """
    The gate's creator as Twisted's TLS transport calls it, so that nothing raised there goes unheard: an exception
    out of ``clientConnectionForTLS`` escapes into the reactor, which drops the TCP connection without a word to
    the gate or to the endpoint's connect, and the connect would never end.  Instead the gate fails the connect at
    once (L{_HandshakeGate.setupFailed}) and the transport gets a bare connection to close.
    """

    def __init__(self, gate):
        self.gate = gate

    def clientConnectionForTLS(self, tlsProtocol):
        creator = self.gate.creator
        try:
            return creator.clientConnectionForTLS(tlsProtocol)
        except Exception:
            self.gate.setupFailed(Failure())
            connection = SSL.Connection(creator.context, None)
            connection.set_connect_state()
            return connection


class _ClosingTLS(BufferingTLSTransport):
    """
    Twisted's TLS transport, closing when told to even with a producer registered.  The HTTP/1.1 and HTTP/2
    clients register a write watcher for the connection's life (txmesh.protocols.transport.WriteWatcher) and never
    unregister it; Twisted's TCP transport closes regardless, but its TLS transport defers the close_notify until
    the producer goes, so a pooled TLS connection closed for idleness or a drain stayed open (and a sidecar
    stopping with one waited for it until SIGKILL).  Closing unregisters the producer, which sends close_notify.
    """

    def loseConnection(self):
        super().loseConnection()
        self.unregisterProducer()


class _ClosingTLSFactory(TLSMemoryBIOFactory):
    protocol = _ClosingTLS


@implementer(IHandshakeListener)
class _HandshakeGate(Protocol):
    """
    Holds the cluster's client protocol back until the TLS handshake and the identity check passed, then hands the
    TLS transport to it (the TLS protocol's ``wrappedProtocol`` becomes the client protocol, so the gate costs
    nothing afterwards) and fires the connect Deferred with it.  Any end before that fails the Deferred with a
    typed, counted error.
    """

    log = Logger()

    def __init__(self, inner, connected, creator, stats, host, verified):
        self.verified = verified  # verified(host, SSL.Connection): the connection passed
        self.inner = inner
        self.result = connected
        self.creator = creator
        self.stats = stats
        self.host = host
        self.tcpConnecting = None
        self.done = False
        self.failure = None  # the error this side decided (identity, ALPN) before aborting

    def connectionMade(self):
        self.tcpConnecting = None
        if self.done:
            self.transport.abortConnection()  # setupFailed: the connect already failed
            return
        try:
            # as txmesh's plain connections (txmesh.protocols.transport.Writer): small writes must not wait for
            # a delayed ACK; the TLS transport passes this to the TCP one
            self.transport.setTcpNoDelay(True)
        except (AttributeError, OSError):
            pass  # not TCP

    def handshakeCompleted(self):
        tls = self.transport
        chosen = tls.negotiatedProtocol
        offered = self.creator.alpn
        if offered and chosen is not None and chosen.decode("ascii", "replace") not in offered:
            self._refuse(UpstreamTLSHandshakeError(
                "TLS: the upstream chose ALPN protocol %r, not one of %s" % (chosen, ", ".join(offered))))
            return
        cert = tls.getPeerCertificate()
        if cert is None:
            reason = "no certificate"
        else:
            cert = cert.to_cryptography()
            identity = PeerIdentity.fromCertificate(cert)
            reason = self.creator.checkIdentity(cert, identity)
        if reason is not None:
            self.stats.upstream_ssl_fail_verify_san.value += 1
            self._refuse(UpstreamTLSVerifyError("TLS: " + reason))
            return
        self.stats.upstream_ssl_handshake.value += 1
        # what the access log's %UPSTREAM_PEER_URI_SAN% and %UPSTREAM_TLS_VERSION% show for requests on this host
        handle = tls.getHandle()
        self.host.tlsPeer = UpstreamPeer(identity, handle.get_protocol_version_name(),
                                         chosen.decode("ascii", "replace") if chosen else None)
        self.verified(self.host, handle)
        self.done = True
        inner = self.inner
        tls.wrappedProtocol = inner  # from now on the TLS transport talks to the client protocol directly
        inner.makeConnection(tls)
        self.result.callback(inner)

    def _refuse(self, error):
        self.stats.upstream_ssl_connection_error.value += 1
        self.failure = error
        self.transport.abortConnection()

    def dataReceived(self, data):
        # application data before handshakeCompleted cannot come (the TLS transport holds it); nothing to do
        pass

    def connectionLost(self, reason):
        if self.done:
            return
        self.done = True
        if self.result.called:
            return  # cancelled
        error = self.failure
        if error is None:
            error = self._classify(reason)
        self.result.errback(Failure(error))

    def _classify(self, reason):
        """The typed error of a handshake that ended before completing, counted."""
        stats = self.stats
        stats.upstream_ssl_connection_error.value += 1
        if self.creator.verifyError is not None:
            stats.upstream_ssl_fail_verify_error.value += 1
            errno, depth = self.creator.verifyError
            return UpstreamTLSVerifyError("TLS: the upstream certificate failed verification: %s (depth %d)"
                                          % (x509ErrorText(errno), depth))
        if reason.check(SSL.Error):
            return UpstreamTLSHandshakeError("TLS handshake failed: %s" % (_sslErrorText(reason.value),))
        return UpstreamTLSHandshakeError("TLS handshake failed: the upstream closed the connection (%s)"
                                         % (reason.getErrorMessage(),))

    def setupFailed(self, failure):
        """Setting up the TLS connection raised (see L{_GuardedCreator}): the connect fails now, typed and counted."""
        self.log.failure("TLS setup for {host} failed", failure, host=self.host.address)
        if self.done:
            return
        self.done = True
        self.stats.upstream_ssl_connection_error.value += 1
        if not self.result.called:
            error = UpstreamTLSHandshakeError("TLS setup failed: %s" % (failure.getErrorMessage(),))
            self.result.errback(Failure(error))

    def tcpFailed(self, failure):
        """The TCP connect failed: the connect fails with the endpoint's error (a plain connect failure)."""
        self.tcpConnecting = None
        if self.done:
            return None  # cancelled: the Deferred fails with CancelledError
        self.done = True
        self.result.errback(failure)
        return None

    def cancel(self):
        """The pool gave up (connect timeout, request gone): stop the TCP connect or abort the handshake."""
        self.done = True
        if self.transport is not None:
            self.transport.abortConnection()
        elif self.tcpConnecting is not None:
            d, self.tcpConnecting = self.tcpConnecting, None
            try:
                d.cancel()
            except Exception:
                # an endpoint whose connect ended without firing cannot stop it (Twisted's raises
                # NotConnectingError once its connector is done): the connect must end regardless, and does, with
                # CancelledError, once this returns
                self.log.failure("cancelling the TCP connect to {host} failed", host=self.host.address)


def _sslErrorText(error):
    """OpenSSL's reasons in an SSL.Error, in one line ('tlsv1 alert protocol version', 'wrong version number')."""
    reasons = []
    for entry in error.args[0] if error.args and isinstance(error.args[0], list) else ():
        if isinstance(entry, tuple) and entry:
            reasons.append(str(entry[-1]))
    return ", ".join(r for r in reasons if r) or str(error) or type(error).__name__
