"""
TLS termination on listeners (issue 14 parts 1 and 3): L{ServerTLS}, one per listener with a ``tls`` block.

- Contexts are pyOpenSSL ``SSL.Context``s built from the files of the block (txmesh.tls.server_config): one per
  certificate; the first answers clients without SNI or whose name matches none, the others are switched to by the
  SNI callback (exact names, then Envoy's wildcards ``*.example.com``, longest suffix first).  ALPN is chosen by the server's
  preference (``alpn``, ``h2`` first); no overlap goes on without ALPN.  Client certificates are verified by
  OpenSSL against ``ca``; ``required`` fails the handshake without one.
- L{ServerTLS.wrapFactory} puts Twisted's TLS transport (``TLSMemoryBIOFactory``) in front of a listener's factory,
  with a small protocol under it (L{_Handshake}) that counts handshakes and their failures (Envoy's
  ``ssl.handshake``, ``ssl.connection_error``, ``ssl.fail_verify_no_cert``, ``ssl.fail_verify_error`` ...), bounds
  the handshake by ``handshake_timeout``, and builds the listener's protocol only once the handshake is done, so
  it sees plain text, its peer's identity, and (an HTTP listener) is chosen by ALPN
  (L{txmesh.interfaces.INegotiatedProtocolFactory}).
- Rotation: every certificate, key and CA file is watched (L{txmesh.discovery.files.WatchedFile}: inotify and a
  stat poll); a change reloads the whole block after a short settle delay.  New material that does not load (bad
  PEM, a key that is not the certificate's) is refused, logged once per reason, counted (``tls_rotation_failed``)
  and the old material kept; once it loads, new handshakes use it and open connections keep theirs.
  ``serverCreator`` is the same object throughout and always hands out the current contexts.
- Expiry: a gauge per certificate (``tls_certificate_expiry_seconds``) and ``describe()`` for the admin ``/certs``.
"""

import weakref
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL
from twisted.internet.interfaces import (IHandshakeListener, IOpenSSLServerConnectionCreator, ISSLTransport,
                                         ISystemHandle)
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from zope.interface import implementer

from txmesh.interfaces import IDownstreamTLS, INegotiatedProtocolFactory, IServerTLS
from txmesh.stats import LabelledCounter
from txmesh.tls.material import PeerIdentity, loadCertificates, toOpenSSLCertificate
from txmesh.tls.rotation import ROTATION_SETTLE, RotatingMaterial
from txmesh.tls.server_config import VERSIONS, loadPair, warnIfExpired

__all__ = ["ROTATION_SETTLE", "DownstreamTLS", "ServerTLS", "downstreamTLSOf", "serverTLSFor", "describeCertificate"]

_DAY = 86400.0


@implementer(IDownstreamTLS)
@dataclass(frozen=True, slots=True)
class DownstreamTLS:
    """See L{IDownstreamTLS}.  Made once per connection by L{downstreamTLSOf}."""

    version: str = ""
    cipher: str = ""
    serverName: str | None = None
    alpn: str | None = None
    peer: object = None
    peerCertificatePem: bytes | None = None
    localUriSan: str | None = None


def downstreamTLSOf(transport):
    """
    The L{DownstreamTLS} of a connection whose TLS handshake is done (the transport, or a wrapper of it, provides
    ISSLTransport and ISystemHandle: L{_Handshake} declares it), else None (plain text).
    """
    if not (ISSLTransport.providedBy(transport) and ISystemHandle.providedBy(transport)):
        return None
    conn = transport.getHandle()
    if not isinstance(conn, SSL.Connection):
        return None
    peer = pem = None
    cert = conn.get_peer_certificate(as_cryptography=True)
    if cert is not None:
        peer = PeerIdentity.fromCertificate(cert)
        pem = cert.public_bytes(serialization.Encoding.PEM)
    name = conn.get_servername()
    alpn = conn.get_alpn_proto_negotiated()
    return DownstreamTLS(version=conn.get_protocol_version_name(), cipher=conn.get_cipher_name() or "",
                         serverName=name.decode("ascii", "replace") if name else None,
                         alpn=alpn.decode("ascii", "replace") if alpn else None, peer=peer,
                         peerCertificatePem=pem, localUriSan=_LOCAL_URI_SAN.get(conn.get_context()))


def _sans(cert):
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return (), ()
    return (tuple(san.get_values_for_type(x509.UniformResourceIdentifier)),
            tuple(san.get_values_for_type(x509.DNSName)))


# the first URI SAN of each context's certificate (XFCC's By), found once when the context is built
_LOCAL_URI_SAN = weakref.WeakKeyDictionary()


class _Material:
    """One loaded version of a ``tls`` block: the certificate chains, the CA bundle, and the contexts built on them."""

    def __init__(self, config, sessionId, selectALPN, serverNameReceived):
        self.chains = []
        self.contexts = []
        self.names = {}  # exact SNI name -> context
        self.wildcards = {}  # ".example.com" -> context
        self.ca = loadCertificates(config.ca) if config.ca is not None else []
        for entry in config.certificates:
            chain, key = loadPair(entry.certChain, entry.privateKey)
            self.chains.append(chain)
            ctx = self._context(config, chain, key, sessionId, selectALPN)
            uris = _sans(chain[0])[0]
            if uris:
                _LOCAL_URI_SAN[ctx] = uris[0]
            self.contexts.append(ctx)
            for name in entry.serverNames:
                if name.startswith("*."):
                    self.wildcards[name[1:]] = ctx
                else:
                    self.names[name] = ctx
        self.default = self.contexts[0]
        if self.names or self.wildcards:
            self.default.set_tlsext_servername_callback(serverNameReceived)

    def _context(self, config, chain, key, sessionId, selectALPN):
        ctx = SSL.Context(SSL.TLS_METHOD)
        ctx.set_min_proto_version(VERSIONS[config.minVersion])
        if config.maxVersion is not None:
            ctx.set_max_proto_version(VERSIONS[config.maxVersion])
        options = SSL.OP_NO_COMPRESSION | SSL.OP_CIPHER_SERVER_PREFERENCE | SSL.OP_NO_RENEGOTIATION
        if not config.sessionTickets:
            options |= SSL.OP_NO_TICKET
        ctx.set_options(options)
        if config.cipherSuites is not None:
            ctx.set_cipher_list(config.cipherSuites.encode("ascii"))
        ctx.use_certificate(chain[0])  # pyOpenSSL takes cryptography objects (its own X509/PKey are deprecated)
        for c in chain[1:]:
            ctx.add_extra_chain_cert(c)
        ctx.use_privatekey(key)
        ctx.check_privatekey()
        # the server-side session cache: the same id on every context, so a session survives the SNI switch
        ctx.set_session_id(sessionId)
        ctx.set_session_cache_mode(SSL.SESS_CACHE_SERVER)
        ctx.set_timeout(max(1, int(config.sessionTimeout)))
        if config.clientCertificate != "none":
            mode = SSL.VERIFY_PEER | SSL.VERIFY_CLIENT_ONCE
            if config.clientCertificate == "required":
                mode |= SSL.VERIFY_FAIL_IF_NO_PEER_CERT
            ctx.set_verify(mode)  # no callback: OpenSSL's own chain verification decides
            store = ctx.get_cert_store()
            for c in self.ca:
                store.add_cert(toOpenSSLCertificate(c))  # X509Store takes pyOpenSSL's X509 only
        if config.alpn:
            ctx.set_alpn_select_callback(selectALPN)
        return ctx

    def contextFor(self, name):
        """Envoy's order: the exact name, then ever shorter wildcards (a.b.example.com: *.b.example.com, then
        *.example.com, then *.com); None: the default."""
        ctx = self.names.get(name)
        dot = name.find(".")
        while ctx is None and dot >= 0:
            ctx = self.wildcards.get(name[dot:])
            dot = name.find(".", dot + 1)
        return ctx


def describeCertificate(path, cert, now):
    """One certificate as ``/certs`` shows it (Envoy's CertificateDetails, snake_case)."""
    uris, dns = _sans(cert)
    notAfter = cert.not_valid_after_utc.timestamp()
    return {"path": path, "serial_number": "%x" % (cert.serial_number,), "subject": cert.subject.rfc4514_string(),
            "subject_alt_names": [{"uri": u} for u in uris] + [{"dns": d} for d in dns],
            "valid_from": cert.not_valid_before_utc.isoformat(), "expiration_time": cert.not_valid_after_utc.isoformat(),
            "days_until_expiration": int((notAfter - now) // _DAY), "seconds_until_expiration": int(notAfter - now)}


@implementer(IOpenSSLServerConnectionCreator)
class _ServerCreator:
    """The connection creator Twisted's TLS transport asks for each accepted connection: the current default."""

    def __init__(self, tls):
        self._tls = tls

    def serverConnectionForTLS(self, tlsProtocol):
        return SSL.Connection(self._tls.material.default, None)


class TLSStats:
    """A TLS listener's counters (Envoy's ``listener.<addr>.ssl.*``, as ``ssl_*`` series labelled by listener)."""

    def __init__(self, stats, listener):
        s = stats.scope(listener=listener)
        self.handshake = s.counter("ssl_handshake", help="TLS handshakes completed")
        self.connection_error = s.counter("ssl_connection_error",
                                          help="TLS handshakes failed (not TLS, garbage, no shared version/cipher)")
        self.fail_verify_no_cert = s.counter("ssl_fail_verify_no_cert",
                                             help="TLS handshakes failed: a required client certificate missing")
        self.fail_verify_error = s.counter("ssl_fail_verify_error",
                                           help="TLS handshakes failed: the client certificate did not verify")
        self.no_certificate = s.counter("ssl_no_certificate", help="TLS handshakes without a client certificate")
        self.handshake_timeout = s.counter("ssl_handshake_timeout",
                                           help="TLS handshakes not done within handshake_timeout")
        self.version = LabelledCounter(s, "ssl_versions", "TLS handshakes by protocol version", "version").inc
        self.rotation = s.counter("tls_rotation", help="TLS material reloaded after its files changed")
        self.rotation_failed = s.counter("tls_rotation_failed",
                                         help="TLS material changes refused (the old material kept)")


@implementer(IServerTLS)
class ServerTLS:
    """
    One listener's TLS termination (see the module docstring).

    @param config: the listener's ServerTLSConfig.
    @param listenerName: for stats, logs and ``/certs``.
    @param reactor: IReactorTime (timers, the TLS write aggregation); with IReactorFDSet files are watched by inotify.
    @param stats: the StatsStore.
    @raise TLSMaterialError: the files do not load (they were checked at config load; this is a race with a writer).
    """

    log = Logger()

    def __init__(self, config, listenerName, reactor, stats):
        self.config = config
        self.listenerName = listenerName
        self.reactor = reactor
        self.stats = TLSStats(stats, listenerName)
        self._alpn = tuple(p.encode("ascii") for p in config.alpn)
        # the session id context: OpenSSL resumes only sessions made under the same id (<= 32 bytes)
        self._sessionId = ("txmesh:" + listenerName).encode("utf-8")[:32]
        self._rotating = RotatingMaterial(
            config.files(), config.watchInterval, reactor, self._load, "listener " + listenerName,
            self.stats.rotation, self.stats.rotation_failed, lambda m: ["%x" % (c[0].serial_number,) for c in m.chains])
        self.serverCreator = _ServerCreator(self)
        scope = stats.scope(listener=listenerName)
        for i, entry in enumerate(config.certificates):
            scope.computedGauge("tls_certificate_expiry_seconds", self._expiryReader(i),
                                help="Seconds until the listener's certificate expires", certificate=entry.certChain)
        if config.ca is not None:
            scope.computedGauge("tls_certificate_expiry_seconds", self._caExpiry,
                                help="Seconds until the listener's certificate expires", certificate=config.ca)

    @property
    def material(self):
        """The material in use now (L{_Material}): what new handshakes get."""
        return self._rotating.material

    def _load(self):
        material = _Material(self.config, self._sessionId, self._selectALPN, self._serverNameReceived)
        for entry, chain in zip(self.config.certificates, material.chains):
            warnIfExpired(entry.certChain, chain, self.reactor.seconds())
        return material

    def _expiryReader(self, i):
        return lambda: self.material.chains[i][0].not_valid_after_utc.timestamp() - self.reactor.seconds()

    def _caExpiry(self):
        return min(c.not_valid_after_utc.timestamp() for c in self.material.ca) - self.reactor.seconds()

    # -- the OpenSSL callbacks ----------------------------------------------------------------------------------

    def _selectALPN(self, conn, offered):
        for name in self._alpn:
            if name in offered:
                return name
        return SSL.NO_OVERLAPPING_PROTOCOLS

    def _serverNameReceived(self, conn):
        name = conn.get_servername()
        if not name:
            return
        ctx = self.material.contextFor(name.decode("ascii", "replace").lower().rstrip("."))
        if ctx is not None:
            conn.set_context(ctx)

    # -- IServerTLS ---------------------------------------------------------------------------------------------

    def wrapFactory(self, factory):
        """See L{IServerTLS.wrapFactory}; ``factory`` may provide L{INegotiatedProtocolFactory} (ALPN)."""
        return _TLSFactory(self.serverCreator, False, _HandshakeFactory(factory, self), self.reactor)

    # -- rotation -----------------------------------------------------------------------------------------------

    def start(self):
        """Watch the block's files (the material was loaded at construction)."""
        self._rotating.start()

    def stop(self):
        self._rotating.stop()

    def reload(self):
        """
        Load the files again; new handshakes use them.  A failure is counted, logged once per reason, and leaves
        the current material.  @return: True if the new material is in use.
        """
        return self._rotating.reload()

    def describe(self):
        """The listener's material for ``/certs`` (never a key)."""
        now = self.reactor.seconds()
        m = self.material
        return {"listener": self.listenerName,
                "cert_chain": [describeCertificate(entry.certChain, chain[0], now)
                               for entry, chain in zip(self.config.certificates, m.chains)],
                "ca_cert": [describeCertificate(self.config.ca, c, now) for c in m.ca]}


def serverTLSFor(tlsConfig, listenerName, reactor, stats):
    """The L{ServerTLS} of a listener's ``tls`` block (None: plain text, None back)."""
    if tlsConfig is None:
        return None
    return ServerTLS(tlsConfig, listenerName, reactor, stats)


@implementer(ISSLTransport)
class _TLSProtocol(TLSMemoryBIOProtocol):
    """
    Twisted's TLS transport, declared an ISSLTransport (it has ``getPeerCertificate`` but does not say so; declared
    on the class, it costs nothing per connection), and not the one that holds small writes for a reactor turn
    (BufferingTLSTransport): the listeners' Writer already sends one write per turn.
    """


class _TLSFactory(TLSMemoryBIOFactory):
    protocol = _TLSProtocol


class _HandshakeFactory(Factory):
    noisy = False

    def __init__(self, factory, tls):
        self.factory = factory
        self.tls = tls
        self.negotiates = INegotiatedProtocolFactory.providedBy(factory)

    def logPrefix(self):
        return "listener %s" % (self.tls.listenerName,)

    def buildProtocol(self, addr):
        return _Handshake(self, addr)


@implementer(IHandshakeListener)
class _Handshake(Protocol):
    """
    Under the TLS transport until the handshake is done: counts it, bounds it by ``handshake_timeout``, then
    builds the listener's protocol (by ALPN when its factory negotiates) and hands it the TLS transport.
    """

    def __init__(self, factory, addr):
        self.factory = factory
        self.addr = addr
        self.inner = None
        self._timer = None
        self._timedOut = False

    def connectionMade(self):
        tls = self.factory.tls
        self._timer = tls.reactor.callLater(tls.config.handshakeTimeout, self._handshakeTimedOut)

    def _handshakeTimedOut(self):
        self._timer = None
        self._timedOut = True
        self.factory.tls.stats.handshake_timeout.value += 1
        self.transport.abortConnection()

    def handshakeCompleted(self):
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        transport = self.transport
        stats = self.factory.tls.stats
        stats.handshake.value += 1
        conn = transport.getHandle()
        stats.version(conn.get_protocol_version_name())
        if conn.get_peer_certificate() is None:
            stats.no_certificate.value += 1
        f = self.factory
        if f.negotiates:
            inner = f.factory.buildNegotiatedProtocol(self.addr, transport.negotiatedProtocol)
        else:
            inner = f.factory.buildProtocol(self.addr)
        if inner is None:  # refused by the listener's overload bounds (counted there)
            transport.loseConnection()
            return
        self.inner = inner
        inner.makeConnection(transport)

    def dataReceived(self, data):
        if self.inner is not None:
            self.inner.dataReceived(data)

    def connectionLost(self, reason):
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        inner, self.inner = self.inner, None
        if inner is not None:
            inner.connectionLost(reason)
            return
        if self._timedOut:
            return
        stats = self.factory.tls.stats
        text = str(reason.value) if isinstance(reason.value, SSL.Error) else ""
        if "peer did not return a certificate" in text or "certificate required" in text:
            stats.fail_verify_no_cert.value += 1
        elif "certificate verify failed" in text:
            stats.fail_verify_error.value += 1
        else:
            stats.connection_error.value += 1
