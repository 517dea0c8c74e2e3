"""
Certificates made by the tests (issue 14): a CA, leaf certificates with DNS and URI (SPIFFE) SANs for servers and
clients, expired and not-yet-valid ones, and a second, unrelated CA — written as PEM files for txmesh, curl,
openssl s_client, grpcio, nginx and Envoy.

    ca = CertAuthority(tmp_path, "mesh-ca")
    server = ca.issue("server", dns=["localhost"], ips=["127.0.0.1"])
    client = ca.issue("client", uris=["spiffe://mesh.local/ns/default/sa/frontend"], client=True)
    server.certPath, server.keyPath, server.chainPath, ca.certPath

A pytest fixture ``certs`` gives a L{CertAuthority} in a fresh directory; ``otherCA`` a second, unrelated one.
"""

import datetime
import ipaddress
import os

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_NOW = datetime.datetime.now(datetime.timezone.utc)


def _key():
    return ec.generate_private_key(ec.SECP256R1())


def _pem(cert):
    return cert.public_bytes(serialization.Encoding.PEM)


def _keyPem(key):
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


class Issued:
    """A leaf certificate and its key, as objects and as files (cert, key, chain = cert + intermediates)."""

    def __init__(self, directory, name, cert, key, chain):
        self.name = name
        self.cert = cert
        self.key = key
        self.certPath = os.path.join(directory, name + ".crt")
        self.keyPath = os.path.join(directory, name + ".key")
        self.chainPath = os.path.join(directory, name + "-chain.crt")
        with open(self.certPath, "wb") as f:
            f.write(_pem(cert))
        with open(self.keyPath, "wb") as f:
            f.write(_keyPem(key))
        os.chmod(self.keyPath, 0o600)
        with open(self.chainPath, "wb") as f:
            f.write(b"".join(_pem(c) for c in chain))


class CertAuthority:
    """A self-signed CA that issues leaf certificates into ``directory``."""

    def __init__(self, directory, name="txmesh-test-ca"):
        self.directory = str(directory)
        os.makedirs(self.directory, exist_ok=True)
        self.name = name
        self.key = _key()
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(subject).issuer_name(subject)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_NOW - datetime.timedelta(days=1))
            .not_valid_after(_NOW + datetime.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        self.certPath = os.path.join(self.directory, name + ".crt")
        with open(self.certPath, "wb") as f:
            f.write(_pem(self.cert))

    def issue(self, name, dns=(), uris=(), ips=(), client=False, server=True, commonName=None,
              notBefore=None, notAfter=None, days=365):
        """
        A leaf certificate signed by this CA, written as ``<name>.crt``, ``<name>.key``, ``<name>-chain.crt``.
        ``notBefore``/``notAfter`` (datetimes) make expired or not-yet-valid ones; ``client``/``server`` set the
        extended key usages.
        """
        key = _key()
        notBefore = notBefore if notBefore is not None else _NOW - datetime.timedelta(hours=1)
        notAfter = notAfter if notAfter is not None else _NOW + datetime.timedelta(days=days)
        sans = [x509.DNSName(d) for d in dns] + [x509.UniformResourceIdentifier(u) for u in uris]
        sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
        usages = []
        if server:
            usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
        if client:
            usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, commonName or name)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(notBefore)
            .not_valid_after(notAfter)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False)
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        if usages:
            builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        return Issued(self.directory, name, cert, key, [cert])

    def expired(self, name, **kw):
        """A certificate that expired yesterday."""
        return self.issue(name, notBefore=_NOW - datetime.timedelta(days=30),
                          notAfter=_NOW - datetime.timedelta(days=1), **kw)

    def notYetValid(self, name, **kw):
        """A certificate valid from tomorrow."""
        return self.issue(name, notBefore=_NOW + datetime.timedelta(days=1),
                          notAfter=_NOW + datetime.timedelta(days=30), **kw)


@pytest.fixture
def certs(tmp_path):
    """A test CA in a fresh directory."""
    return CertAuthority(tmp_path / "ca", "txmesh-test-ca")


@pytest.fixture
def otherCA(tmp_path):
    """A second CA nobody trusts."""
    return CertAuthority(tmp_path / "other-ca", "txmesh-other-ca")
