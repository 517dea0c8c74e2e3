"""
A cluster's ``tls`` block (TLS origination, issue 14 part 2): the keys, their defaults and their validation at load.

The block mirrors Envoy's ``UpstreamTlsContext`` where it is natural::

    tls:
      sni: backend.mesh.local            # default: the host's name when it is a name; none for an IP
      ca: /etc/txmesh/mesh-ca.crt        # default: the system trust store (OpenSSL's default verify paths)
      cert_chain: /etc/txmesh/me.crt     # with private_key: the client certificate (mutual TLS)
      private_key: /etc/txmesh/me.key
      alpn: [h2]                         # default: h2 for http2/grpc clusters, http/1.1 for http1, none for dubbo
      min_version: TLSv1.2               # TLSv1.2 (default) or TLSv1.3
      max_version: TLSv1.3
      cipher_suites: [ECDHE-ECDSA-AES128-GCM-SHA256]   # TLS 1.2 only, as Envoy's
      match_subject_alt_names:           # any one matching is enough
        - dns: backend.mesh.local
        - uri: spiffe://mesh.local/ns/default/sa/backend
        - uri: {prefix: "spiffe://mesh.local/ns/default/"}

Verification is always on: there is no ``insecure_skip_verify``.  The files are read here, at load, so a missing,
malformed or mismatched certificate or key fails the load with ``file:line: key.path: reason`` before any port is
bound.  L{txmesh.tls.client} builds the OpenSSL context from the resulting L{UpstreamTLSConfig}.
"""

import ipaddress
from dataclasses import dataclass

from OpenSSL import SSL

from txmesh.config_reader import joinPath
from txmesh.tls.material import TLSMaterialError, keyMatchesCertificate, loadCertificates, loadPrivateKey

# the version names the keys take (Envoy spells them TLSv1_2; both are accepted) -> OpenSSL's constants
TLS_VERSIONS = {"TLSv1.2": SSL.TLS1_2_VERSION, "TLSv1.3": SSL.TLS1_3_VERSION}
_VERSION_SPELLINGS = {"TLSv1_2": "TLSv1.2", "TLSv1_3": "TLSv1.3"}
_REFUSED_VERSIONS = ("TLSv1", "TLSv1.0", "TLSv1_0", "TLSv1.1", "TLSv1_1", "SSLv3")

# the default ALPN list per cluster protocol (what the cluster's client speaks); a plugin protocol offers none
DEFAULT_ALPN = {"http2": ("h2",), "grpc": ("h2",), "http1": ("http/1.1",), "dubbo": ()}

SAN_KINDS = ("dns", "uri")
SAN_MATCHERS = ("exact", "prefix", "suffix")

KEYS = ("sni", "ca", "cert_chain", "private_key", "alpn", "min_version", "max_version", "cipher_suites",
        "match_subject_alt_names")


@dataclass(frozen=True, slots=True)
class SanMatcher:
    """One ``match_subject_alt_names`` entry: a SAN of ``kind`` (dns, uri) equal to, or starting or ending with,
    ``value`` (``matcher``: exact, prefix, suffix)."""

    kind: str
    matcher: str
    value: str

    def describe(self):
        if self.matcher == "exact":
            return "%s:%s" % (self.kind, self.value)
        return "%s %s %s" % (self.kind, self.matcher, self.value)


@dataclass(frozen=True, slots=True)
class UpstreamTLSConfig:
    """
    A validated cluster ``tls`` block.  ``sni`` None: the host's name (none for an IP host); ``ca`` None: the system
    trust store; ``certChain``/``privateKey``: both or neither; ``matchSubjectAltNames`` empty: the certificate must
    name the host txmesh connects to (the SNI name, else the IP).
    """

    sni: str | None = None
    ca: str | None = None
    certChain: str | None = None
    privateKey: str | None = None
    alpn: tuple = ()
    minVersion: str = "TLSv1.2"
    maxVersion: str | None = None
    cipherSuites: tuple = ()
    matchSubjectAltNames: tuple = ()  # SanMatcher, any one matching is enough


def _version(r, t, path, key, default):
    value = r.get(t, path, key, str, default)
    if value is None:
        return None
    value = _VERSION_SPELLINGS.get(value, value)
    if value in TLS_VERSIONS:
        return value
    if value in _REFUSED_VERSIONS:
        raise r.error("%s is not offered: TLS 1.0 and 1.1 are deprecated (RFC 8996); use TLSv1.2 or TLSv1.3"
                      % (value,), joinPath(path, key))
    raise r.error("must be TLSv1.2 or TLSv1.3, not %r" % (value,), joinPath(path, key))


def _file(r, t, path, key, load):
    value = r.get(t, path, key, str, None)
    if value is None:
        return None, None
    if not value:
        raise r.error("must be a file path", joinPath(path, key))
    try:
        return value, load(value)
    except TLSMaterialError as e:
        raise r.error(str(e), joinPath(path, key)) from None


def _strings(r, t, path, key, what):
    raw = t.get(key)
    if raw is None:
        return None
    where = joinPath(path, key)
    r.check(raw, where, list)
    out = []
    for i, item in enumerate(raw):
        if not isinstance(item, str) or not item or not item.isascii() or not item.isprintable():
            raise r.error("must be %s (non-empty printable ASCII strings)" % (what,), "%s[%d]" % (where, i))
        out.append(item)
    return tuple(out)


def _alpn(r, t, path, protocol):
    names = _strings(r, t, path, "alpn", "protocol names such as h2 or http/1.1")
    if names is None:
        return DEFAULT_ALPN.get(protocol, ())
    for i, name in enumerate(names):
        if len(name) > 255:
            raise r.error("an ALPN protocol name is at most 255 bytes", "%s[%d]" % (joinPath(path, "alpn"), i))
    return names


def _ciphers(r, t, path):
    names = _strings(r, t, path, "cipher_suites", "OpenSSL cipher names")
    if not names:
        return ()
    where = joinPath(path, "cipher_suites")
    for i, name in enumerate(names):
        if ":" in name or " " in name:
            raise r.error("one cipher name per entry", "%s[%d]" % (where, i))
    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    for i, name in enumerate(names):
        try:
            ctx.set_cipher_list(name.encode("ascii"))
        except SSL.Error:
            raise r.error("OpenSSL knows no TLS 1.2 cipher suite %r" % (name,), "%s[%d]" % (where, i)) from None
    return names


def _sni(r, t, path):
    sni = r.get(t, path, "sni", str, None)
    if sni is None:
        return None
    where = joinPath(path, "sni")
    try:
        ipaddress.ip_address(sni)
    except ValueError:
        pass
    else:
        raise r.error("SNI is a host name, not an IP address (RFC 6066)", where)
    try:
        encoded = sni.encode("idna")
    except UnicodeError:
        encoded = b""
    if not encoded or len(encoded) > 253 or sni.startswith(".") or sni.endswith(".") or any(
            c.isspace() for c in sni):
        raise r.error("must be a DNS host name", where)
    return sni


def _sanMatchers(r, t, path):
    raw = t.get("match_subject_alt_names")
    if raw is None:
        return ()
    where = joinPath(path, "match_subject_alt_names")
    r.check(raw, where, list)
    out = []
    for i, item in enumerate(raw):
        iPath = "%s[%d]" % (where, i)
        r.mapping(item, iPath, optional=SAN_KINDS)
        if len(item) != 1:
            raise r.error("must be one of {dns: name} or {uri: name}", iPath)
        (kind, value), = item.items()
        kPath = joinPath(iPath, kind)
        if isinstance(value, str):
            matcher = "exact"
        else:
            r.mapping(value, kPath, optional=SAN_MATCHERS)
            if len(value) != 1:
                raise r.error("must be a name, or one of {exact: s}, {prefix: s}, {suffix: s}", kPath)
            (matcher, value), = value.items()
            kPath = joinPath(kPath, matcher)
            r.check(value, kPath, str)
        if not value or not value.isascii() or not value.isprintable():
            raise r.error("must be a non-empty printable ASCII string", kPath)
        if kind == "uri" and matcher == "exact" and ":" not in value:
            raise r.error("a URI SAN has a scheme, e.g. spiffe://trust-domain/ns/x/sa/y", kPath)
        if kind == "dns" and "*" in value:
            raise r.error("a DNS name to match has no wildcard (the certificate may have one)", kPath)
        out.append(SanMatcher(kind, matcher, value))
    return tuple(out)


def buildUpstreamTLS(r, m, path, protocol):
    """
    The cluster's ``tls`` block as an L{UpstreamTLSConfig}, or None when absent (plain text).

    @param r: the config Reader; @param m: the cluster mapping; @param path: its key path;
    @param protocol: the cluster's protocol name (the ALPN default depends on it).
    @raise ConfigError: a bad key, value or file, naming file:line and the key path.
    """
    if "tls" not in m:
        return None
    raw = m["tls"]
    tPath = joinPath(path, "tls")
    if raw is None:
        raise r.error("must be a mapping of TLS options ({} for the defaults)", tPath)
    t = r.mapping(raw, tPath, optional=KEYS)
    minVersion = _version(r, t, tPath, "min_version", "TLSv1.2")
    maxVersion = _version(r, t, tPath, "max_version", None)
    if maxVersion is not None and TLS_VERSIONS[maxVersion] < TLS_VERSIONS[minVersion]:
        raise r.error("must be >= min_version (%s)" % (minVersion,), joinPath(tPath, "max_version"))
    ca, _ = _file(r, t, tPath, "ca", loadCertificates)
    chainPath, chain = _file(r, t, tPath, "cert_chain", loadCertificates)
    keyPath, key = _file(r, t, tPath, "private_key", loadPrivateKey)
    if (chainPath is None) != (keyPath is None):
        missing = "private_key" if keyPath is None else "cert_chain"
        raise r.error("cert_chain and private_key go together (the client certificate for mutual TLS); %s is "
                      "missing" % (missing,), tPath)
    if chain is not None and not keyMatchesCertificate(key, chain[0]):
        raise r.error("%s: the key is not the private key of the first certificate of %s" % (keyPath, chainPath),
                      joinPath(tPath, "private_key"))
    return UpstreamTLSConfig(
        sni=_sni(r, t, tPath), ca=ca, certChain=chainPath, privateKey=keyPath, alpn=_alpn(r, t, tPath, protocol),
        minVersion=minVersion, maxVersion=maxVersion, cipherSuites=_ciphers(r, t, tPath),
        matchSubjectAltNames=_sanMatchers(r, t, tPath))
