"""txmesh.tls.material: PEM loading with one-line errors, and the identity a certificate carries."""

import pytest
from zope.interface.verify import verifyObject

from tests.certs import CertAuthority, certs, otherCA  # noqa: F401 (fixtures)
from txmesh.interfaces import IPeerIdentity
from txmesh.tls.material import (PeerIdentity, TLSMaterialError, keyMatchesCertificate, loadCertificates,
                                 loadPrivateKey, peerIdentityOf, toOpenSSLCertificate, toOpenSSLKey)


def test_a_chain_and_its_key_load_and_match(certs):
    leaf = certs.issue("server", dns=["localhost"], ips=["127.0.0.1"])
    [cert] = loadCertificates(leaf.certPath)
    key = loadPrivateKey(leaf.keyPath)
    assert keyMatchesCertificate(key, cert)
    assert not keyMatchesCertificate(loadPrivateKey(certs.issue("other").keyPath), cert)
    assert toOpenSSLCertificate(cert).to_cryptography() == cert
    assert toOpenSSLKey(key).bits() == 256


def test_errors_name_the_file_and_the_reason(tmp_path):
    missing = str(tmp_path / "nope.pem")
    with pytest.raises(TLSMaterialError) as e:
        loadCertificates(missing)
    assert e.value.path == missing and "No such file" in str(e.value)
    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(b"-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n")
    with pytest.raises(TLSMaterialError, match="garbage.pem: not a PEM certificate"):
        loadCertificates(str(garbage))
    empty = tmp_path / "empty.pem"
    empty.write_bytes(b"")
    with pytest.raises(TLSMaterialError, match="empty.pem: "):
        loadCertificates(str(empty))
    with pytest.raises(TLSMaterialError, match="garbage.pem: not a PEM private key"):
        loadPrivateKey(str(garbage))


def test_identity_prefers_the_spiffe_id(certs):
    spiffe = "spiffe://mesh.local/ns/default/sa/frontend"
    leaf = certs.issue("client", dns=["frontend.local"], uris=["https://example.com/x", spiffe], client=True)
    ident = PeerIdentity.fromCertificate(leaf.cert)
    assert verifyObject(IPeerIdentity, ident)
    assert ident.spiffeId == spiffe and ident.principal == spiffe
    assert ident.dnsSans == ("frontend.local",)
    assert ident.subject == "CN=client"
    assert ident.notAfter == leaf.cert.not_valid_after_utc.timestamp()
    # the pyOpenSSL form gives the same identity
    assert PeerIdentity.fromCertificate(toOpenSSLCertificate(leaf.cert)) == ident


def test_identity_without_uris_falls_back_to_dns_then_subject(certs):
    assert PeerIdentity.fromCertificate(certs.issue("a", dns=["a.local"]).cert).principal == "a.local"
    assert PeerIdentity.fromCertificate(certs.issue("b").cert).principal == "CN=b"


def test_plain_transports_have_no_identity():
    from twisted.internet.testing import StringTransport
    assert peerIdentityOf(StringTransport()) is None


def test_expired_and_other_ca_certificates_are_made(certs, otherCA):
    assert certs.expired("old").cert.not_valid_after_utc < certs.cert.not_valid_after_utc
    assert otherCA.issue("x").cert.issuer != certs.cert.subject
