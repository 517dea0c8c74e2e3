"""
A listener's ``tls`` block (TLS termination, issue 14 part 1) and its ``forward_client_cert_details`` keys, read and
checked at load (docs/configuration.md, "Listener TLS"; docs/security.md, "TLS").

Every file is read and checked now, so a bad certificate, a key that is not the certificate's, an unreadable CA
bundle or a cipher string OpenSSL does not know fails the load with ``file:line: key.path: reason``.  The names
follow Envoy's DownstreamTlsContext where they map (``tls_certificates`` -> ``certificates``, ``alpn_protocols`` ->
``alpn``, ``tls_minimum_protocol_version`` -> ``min_version``, ``require_client_certificate`` ->
``client_certificate: required``, ``validation_context.trusted_ca`` -> ``ca``).
"""

import os
import time
from dataclasses import dataclass

from OpenSSL import SSL
from twisted.logger import Logger

from txmesh.config_reader import joinPath
from txmesh.tls.material import (TLSMaterialError, keyMatchesCertificate, loadCertificates, loadPrivateKey)

# the listener keys this module reads (config.py adds them to the listener's allowed keys)
KEYS = ("tls", "forward_client_cert_details", "set_current_client_cert_details")

VERSIONS = {"TLSv1.2": SSL.TLS1_2_VERSION, "TLSv1.3": SSL.TLS1_3_VERSION}
REFUSED_VERSIONS = ("TLSv1", "TLSv1.0", "TLSv1.1", "SSLv3")
CLIENT_CERTIFICATE = ("none", "optional", "required")
# the ALPN names each listener protocol can serve, the default offer first-preferred
ALPN_FOR_PROTOCOL = {"http1": ("h2", "http/1.1"), "http2": ("h2",), "grpc": ("h2",), "dubbo": (),
                     # protocol detection (protocol: auto): ALPN picks the h2 or http1 target, else detection does
                     "auto": ("h2", "http/1.1")}
XFCC_MODES = ("sanitize", "forward_only", "append_forward", "sanitize_set", "always_forward_only")
XFCC_DETAILS = ("subject", "uri", "dns", "cert", "chain")

_log = Logger()


@dataclass(frozen=True, slots=True)
class CertificateConfig:
    """One ``certificates`` entry: PEM paths (absolute) and the SNI names it answers (empty: the default only)."""

    certChain: str
    privateKey: str
    serverNames: tuple = ()


@dataclass(frozen=True, slots=True)
class ServerTLSConfig:
    """A listener's ``tls`` block, checked.  ``certificates[0]`` is the default (no SNI, or no name matched)."""

    certificates: tuple
    alpn: tuple = ()
    minVersion: str = "TLSv1.2"
    maxVersion: str | None = None
    cipherSuites: str | None = None
    sessionTickets: bool = True
    sessionTimeout: float = 300.0
    clientCertificate: str = "none"
    ca: str | None = None
    handshakeTimeout: float = 10.0
    watchInterval: float = 5.0

    def files(self):
        """Every file the block reads (watched for rotation), in a stable order."""
        out = []
        for c in self.certificates:
            out += [c.certChain, c.privateKey]
        if self.ca is not None:
            out.append(self.ca)
        return tuple(dict.fromkeys(out))


@dataclass(frozen=True, slots=True)
class ForwardClientCert:
    """
    Envoy's ``forward_client_cert_details`` (what happens to ``x-forwarded-client-cert`` toward the upstream) and
    ``set_current_client_cert_details`` (which fields this hop adds; By and Hash always).
    """

    mode: str = "sanitize"
    details: frozenset = frozenset()

    @property
    def sets(self):
        return self.mode in ("append_forward", "sanitize_set")


def _resolve(r, m, path, key, base):
    value = r.get(m, path, key, str)
    if not value:
        raise r.error("must not be empty", joinPath(path, key))
    if base is not None and not os.path.isabs(value):
        value = os.path.join(base, value)
    return os.path.abspath(value)


def _baseDirectory(r):
    """Relative paths are read from the mesh.yaml's directory (as plugin_paths and the file discovery source)."""
    if r.filename.startswith("<"):
        return None
    return os.path.dirname(os.path.abspath(r.filename))


def checkServerName(name):
    """
    A ``server_names`` entry in lower case, or ValueError: a host name, or a wildcard ``*.example.com`` (Envoy's:
    the star is the whole left-most label; it matches any name ending in ``.example.com``, the longest wildcard
    first).
    """
    name = name.strip().lower().rstrip(".")
    labels = name.split(".")
    if not name or any(not label for label in labels):
        raise ValueError("invalid server name '%s'" % (name,))
    for i, label in enumerate(labels):
        if "*" in label and (i != 0 or label != "*" or len(labels) < 2):
            raise ValueError("invalid server name '%s' (a wildcard is '*.' before a domain)" % (name,))
        if label != "*" and not all(c.isalnum() or c in "-_" for c in label):
            raise ValueError("invalid server name '%s'" % (name,))
    return name


def loadPair(certPath, keyPath):
    """
    The (certificates, key) of one certificate entry, checked: a PEM chain, a private key that is the leaf's.
    @raise TLSMaterialError: naming the file and the reason.
    """
    chain = loadCertificates(certPath)
    key = loadPrivateKey(keyPath)
    if not keyMatchesCertificate(key, chain[0]):
        raise TLSMaterialError(keyPath, "the private key does not match the certificate in %s" % (certPath,))
    return chain, key


def warnIfExpired(path, chain, now=None):
    """Log (a warning, not an error: Envoy serves it too) a leaf certificate that is expired or not yet valid."""
    now = time.time() if now is None else now
    leaf = chain[0]
    if leaf.not_valid_after_utc.timestamp() < now:
        _log.warn("{path}: the certificate expired on {when}; serving it anyway", path=path,
                  when=leaf.not_valid_after_utc.isoformat())
        return True
    if leaf.not_valid_before_utc.timestamp() > now:
        _log.warn("{path}: the certificate is not valid before {when}; serving it anyway", path=path,
                  when=leaf.not_valid_before_utc.isoformat())
        return True
    return False


def refuseSSLEndpoint(r, m, path):
    """
    Refuse a listener's ``ssl:`` address (Twisted's ssl endpoint negotiates no ALPN: curl's default handshake
    fails) with a pointer to the ``tls`` block, before the endpoint parser tries to read its files.
    """
    address = m.get("address")
    if isinstance(address, str) and address.strip().lower().startswith("ssl:"):
        raise r.error("ssl: endpoints are not supported (clients offering ALPN fail the handshake); listen on tcp: "
                      "and add a tls block (docs/configuration.md, Listener TLS)", joinPath(path, "address"))


def buildServerTLS(r, m, path, protocol):
    """The ServerTLSConfig of a listener's ``tls`` block, or None without one."""
    raw = m.get("tls")
    if raw is None:
        return None
    tPath = joinPath(path, "tls")
    r.mapping(raw, tPath, required=("certificates",), optional=(
        "alpn", "min_version", "max_version", "cipher_suites", "session_tickets", "session_timeout",
        "client_certificate", "ca", "handshake_timeout", "watch_interval"))
    base = _baseDirectory(r)
    certificates = []
    names = {}
    entries = r.list(raw, tPath, "certificates")
    if not entries:
        raise r.error("must list at least one certificate", joinPath(tPath, "certificates"))
    for i, entry in enumerate(entries):
        cPath = "%s[%d]" % (joinPath(tPath, "certificates"), i)
        r.mapping(entry, cPath, required=("cert_chain", "private_key"), optional=("server_names",))
        certPath = _resolve(r, entry, cPath, "cert_chain", base)
        keyPath = _resolve(r, entry, cPath, "private_key", base)
        try:
            chain, _ = loadPair(certPath, keyPath)
        except TLSMaterialError as e:
            which = "private_key" if e.path == keyPath else "cert_chain"
            raise r.error(str(e), joinPath(cPath, which)) from None
        warnIfExpired(certPath, chain)
        serverNames = []
        for j, name in enumerate(r.list(entry, cPath, "server_names")):
            nPath = "%s[%d]" % (joinPath(cPath, "server_names"), j)
            try:
                name = checkServerName(r.check(name, nPath, str))
            except ValueError as e:
                raise r.error(str(e), nPath) from None
            if name in names:
                raise r.error("server name '%s' is also at %s" % (name, names[name]), nPath)
            names[name] = nPath
            serverNames.append(name)
        certificates.append(CertificateConfig(certPath, keyPath, tuple(serverNames)))
    allowed = ALPN_FOR_PROTOCOL.get(protocol, ())
    if raw.get("alpn") is None:
        alpn = allowed
    else:
        alpn = []
        for i, name in enumerate(r.list(raw, tPath, "alpn")):
            aPath = "%s[%d]" % (joinPath(tPath, "alpn"), i)
            r.check(name, aPath, str)
            if name not in allowed:
                raise r.error("a %s listener cannot serve ALPN '%s' (it serves: %s)" % (
                    protocol, name, ", ".join(allowed) or "none"), aPath)
            alpn.append(name)
        alpn = tuple(dict.fromkeys(alpn))
    minVersion = _version(r, raw, tPath, "min_version", "TLSv1.2")
    maxVersion = _version(r, raw, tPath, "max_version", None)
    if maxVersion is not None and VERSIONS[maxVersion] < VERSIONS[minVersion]:
        raise r.error("max_version %s is below min_version %s" % (maxVersion, minVersion),
                      joinPath(tPath, "max_version"))
    ciphers = r.get(raw, tPath, "cipher_suites", str, None)
    if ciphers is not None:
        try:
            SSL.Context(SSL.TLS_METHOD).set_cipher_list(ciphers.encode("ascii"))
        except (SSL.Error, UnicodeEncodeError) as e:
            raise r.error("OpenSSL knows no cipher in '%s' (%s)" % (ciphers, e), joinPath(tPath, "cipher_suites")) \
                from None
    clientCertificate = r.get(raw, tPath, "client_certificate", str, "none")
    if clientCertificate not in CLIENT_CERTIFICATE:
        raise r.error("must be one of %s, not '%s'" % (", ".join(CLIENT_CERTIFICATE), clientCertificate),
                      joinPath(tPath, "client_certificate"))
    ca = None
    if raw.get("ca") is not None:
        ca = _resolve(r, raw, tPath, "ca", base)
        try:
            loadCertificates(ca)
        except TLSMaterialError as e:
            raise r.error(str(e), joinPath(tPath, "ca")) from None
    if clientCertificate != "none" and ca is None:
        raise r.error("client_certificate: %s needs ca (the CA bundle client certificates are verified against)" % (
            clientCertificate,), joinPath(tPath, "client_certificate"))
    if clientCertificate == "none" and ca is not None:
        raise r.error("ca is set but client_certificate is none: say optional or required", joinPath(tPath, "ca"))
    handshakeTimeout = r.duration(raw, tPath, "handshake_timeout", 10.0)
    if handshakeTimeout <= 0:
        raise r.error("must be above 0", joinPath(tPath, "handshake_timeout"))
    watchInterval = r.duration(raw, tPath, "watch_interval", 5.0)
    if watchInterval < 0.01:
        raise r.error("must be at least 10ms", joinPath(tPath, "watch_interval"))
    return ServerTLSConfig(
        certificates=tuple(certificates), alpn=tuple(alpn), minVersion=minVersion, maxVersion=maxVersion,
        cipherSuites=ciphers, sessionTickets=r.get(raw, tPath, "session_tickets", bool, True),
        sessionTimeout=r.duration(raw, tPath, "session_timeout", 300.0), clientCertificate=clientCertificate,
        ca=ca, handshakeTimeout=handshakeTimeout, watchInterval=watchInterval)


def _version(r, raw, path, key, default):
    value = r.get(raw, path, key, str, default)
    if value is None or value in VERSIONS:
        return value
    if value in REFUSED_VERSIONS:
        raise r.error("%s is refused (TLS 1.0 and 1.1 are deprecated by RFC 8996): use TLSv1.2 or TLSv1.3" % (
            value,), joinPath(path, key))
    raise r.error("must be TLSv1.2 or TLSv1.3, not '%s'" % (value,), joinPath(path, key))


def buildForwardClientCert(r, m, path, filterFamily):
    """A listener's ``forward_client_cert_details`` + ``set_current_client_cert_details`` (HTTP and gRPC only)."""
    mode = r.get(m, path, "forward_client_cert_details", str, None)
    raw = m.get("set_current_client_cert_details")
    if filterFamily == "dubbo":
        for key in ("forward_client_cert_details", "set_current_client_cert_details"):
            if m.get(key) is not None:
                raise r.error("Dubbo listeners have no x-forwarded-client-cert header", joinPath(path, key))
        return None
    if mode is None:
        mode = "sanitize"
    elif mode not in XFCC_MODES:
        raise r.error("must be one of %s, not '%s'" % (", ".join(XFCC_MODES), mode),
                      joinPath(path, "forward_client_cert_details"))
    dPath = joinPath(path, "set_current_client_cert_details")
    d = r.mapping(raw, dPath, optional=XFCC_DETAILS)
    details = frozenset(k for k in XFCC_DETAILS if r.get(d, dPath, k, bool, False))
    if details and mode not in ("append_forward", "sanitize_set"):
        raise r.error("only used with forward_client_cert_details append_forward or sanitize_set", dPath)
    return ForwardClientCert(mode, details)
