"""
Certificates and keys from PEM files, and the identity a peer certificate carries.

The loaders read with ``cryptography`` (pyOpenSSL's own PEM readers are deprecated) and hand pyOpenSSL objects to
the context factories; every failure is a L{TLSMaterialError} naming the file and the reason, so config
validation and certificate rotation can report it in one line.
"""

from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtensionOID
from OpenSSL import crypto
from twisted.internet.interfaces import ISSLTransport
from zope.interface import implementer

from txmesh.interfaces import IPeerIdentity


class TLSMaterialError(ValueError):
    """A certificate, key or CA file that cannot be used: ``path`` and a one-line ``reason``."""

    def __init__(self, path, reason):
        ValueError.__init__(self, "%s: %s" % (path, reason))
        self.path = path
        self.reason = reason


def _read(path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise TLSMaterialError(path, e.strerror or str(e)) from e


def loadCertificates(path):
    """
    Every certificate in a PEM file, in file order (a chain: the leaf first; a CA bundle: any order).
    @return: a non-empty list of C{cryptography.x509.Certificate}.
    @raise TLSMaterialError: unreadable, no certificate, or a malformed one.
    """
    data = _read(path)
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as e:
        raise TLSMaterialError(path, "not a PEM certificate file (%s)" % (e,)) from e
    if not certs:
        raise TLSMaterialError(path, "no certificate in the file")
    return certs


def loadPrivateKey(path):
    """
    The private key in a PEM file (unencrypted PKCS#8 or traditional RSA/EC).
    @return: a C{cryptography} private key.
    @raise TLSMaterialError: unreadable, encrypted, or not a key.
    """
    data = _read(path)
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError as e:
        raise TLSMaterialError(path, "the key is encrypted; txmesh reads unencrypted keys only") from e
    except (ValueError, Exception) as e:  # cryptography raises ValueError or UnsupportedAlgorithm
        raise TLSMaterialError(path, "not a PEM private key (%s)" % (e,)) from e


def toOpenSSLCertificate(cert):
    """A C{cryptography} certificate as a pyOpenSSL C{X509} (what SSL.Context methods take)."""
    return crypto.X509.from_cryptography(cert)


def toOpenSSLKey(key):
    """A C{cryptography} private key as a pyOpenSSL C{PKey}."""
    return crypto.PKey.from_cryptography_key(key)


def keyMatchesCertificate(key, cert):
    """Whether ``key`` (cryptography private key) is the private half of ``cert``'s public key."""
    fmt = serialization.PublicFormat.SubjectPublicKeyInfo
    enc = serialization.Encoding.DER
    return key.public_key().public_bytes(enc, fmt) == cert.public_key().public_bytes(enc, fmt)


@implementer(IPeerIdentity)
@dataclass(frozen=True, slots=True)
class PeerIdentity:
    """See L{IPeerIdentity}.  Built from the peer's leaf certificate by L{PeerIdentity.fromCertificate}."""

    uriSans: tuple = ()
    dnsSans: tuple = ()
    subject: str = ""
    serial: str = ""
    fingerprint: str = ""  # sha256, hex
    notAfter: float = 0.0  # POSIX seconds

    @property
    def spiffeId(self):
        for uri in self.uriSans:
            if uri.startswith("spiffe://"):
                return uri
        return None

    @property
    def principal(self):
        spiffe = self.spiffeId
        if spiffe is not None:
            return spiffe
        if self.uriSans:
            return self.uriSans[0]
        if self.dnsSans:
            return self.dnsSans[0]
        return self.subject

    @classmethod
    def fromCertificate(cls, cert):
        """The identity in a C{cryptography.x509.Certificate} (or a pyOpenSSL C{X509}, converted)."""
        if isinstance(cert, crypto.X509):
            cert = cert.to_cryptography()
        uris, dns = (), ()
        try:
            san = cert.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value
        except x509.ExtensionNotFound:
            san = None
        if san is not None:
            uris = tuple(san.get_values_for_type(x509.UniformResourceIdentifier))
            dns = tuple(san.get_values_for_type(x509.DNSName))
        return cls(uriSans=uris, dnsSans=dns, subject=cert.subject.rfc4514_string(),
                   serial="%x" % (cert.serial_number,), fingerprint=cert.fingerprint(hashes.SHA256()).hex(),
                   notAfter=cert.not_valid_after_utc.timestamp())


def peerIdentityOf(transport):
    """
    The IPeerIdentity of the peer at the other end of ``transport`` once its TLS handshake is done and the peer
    sent a certificate (ISSLTransport.getPeerCertificate), else None (plain text, no client certificate, or the
    handshake not finished).
    """
    if not ISSLTransport.providedBy(transport):
        return None
    cert = transport.getPeerCertificate()
    if cert is None:
        return None
    return PeerIdentity.fromCertificate(cert)
