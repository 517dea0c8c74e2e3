"""
A cluster's ``tls`` block (txmesh.tls.upstream_config): defaults, and every error names file:line, the key path and
the reason, before anything is bound.
"""

import pytest

from tests.certs import CertAuthority
from txmesh.config import ConfigError, loads
from txmesh.tls.upstream_config import SanMatcher, UpstreamTLSConfig

MESH = """\
clusters:
  - name: backend
    protocol: {protocol}
    endpoints: [{{address: "localhost:8443"}}]
    tls:
{tls}
admin:
  address: tcp:0:interface=127.0.0.1
listeners:
  - name: in
    protocol: {protocol}
    address: tcp:0:interface=127.0.0.1
    route_config: {{virtual_hosts: [{{name: all, domains: ["*"], routes: [{{match: {{prefix: /}},
                                                                         route: {{cluster: backend}}}}]}}]}}
"""


def cluster(tls, protocol="http1"):
    text = MESH.format(protocol=protocol, tls="".join("      " + line + "\n" for line in tls.splitlines()))
    return loads(text, "mesh.yaml").cluster("backend")


def error(tls, protocol="http1"):
    with pytest.raises(ConfigError) as info:
        cluster(tls, protocol)
    return str(info.value)


@pytest.fixture
def pki(tmp_path):
    ca = CertAuthority(tmp_path / "ca", "mesh-ca")
    return ca, ca.issue("client", uris=["spiffe://mesh.local/ns/default/sa/frontend"], client=True), \
        ca.issue("other", dns=["other"])


def test_no_tls_block_is_plain_text():
    text = MESH.format(protocol="http1", tls="").replace("    tls:\n\n", "")
    assert loads(text, "mesh.yaml").cluster("backend").tls is None


def test_defaults_and_alpn_by_protocol():
    assert cluster("{}").tls == UpstreamTLSConfig(alpn=("http/1.1",))
    assert cluster("{}", "grpc").tls.alpn == ("h2",)
    assert cluster("{}", "http2").tls.alpn == ("h2",)
    assert cluster("{}", "dubbo").tls.alpn == ()
    assert cluster("{alpn: []}", "grpc").tls.alpn == ()
    assert cluster("{min_version: TLSv1_3}").tls.minVersion == "TLSv1.3"


def test_a_full_block(pki):
    ca, client, _ = pki
    tls = cluster("sni: backend.mesh.local\nca: %s\ncert_chain: %s\nprivate_key: %s\nalpn: [h2, http/1.1]\n"
                  "min_version: TLSv1.2\nmax_version: TLSv1.3\ncipher_suites: [ECDHE-ECDSA-AES128-GCM-SHA256]\n"
                  "match_subject_alt_names:\n  - dns: backend.mesh.local\n"
                  "  - uri: spiffe://mesh.local/ns/default/sa/backend\n"
                  "  - uri: {prefix: \"spiffe://mesh.local/ns/prod/\"}\n  - dns: {suffix: .mesh.local}\n"
                  % (ca.certPath, client.chainPath, client.keyPath)).tls
    assert tls.sni == "backend.mesh.local" and tls.ca == ca.certPath
    assert (tls.certChain, tls.privateKey) == (client.chainPath, client.keyPath)
    assert tls.alpn == ("h2", "http/1.1") and tls.maxVersion == "TLSv1.3"
    assert tls.cipherSuites == ("ECDHE-ECDSA-AES128-GCM-SHA256",)
    assert tls.matchSubjectAltNames == (
        SanMatcher("dns", "exact", "backend.mesh.local"),
        SanMatcher("uri", "exact", "spiffe://mesh.local/ns/default/sa/backend"),
        SanMatcher("uri", "prefix", "spiffe://mesh.local/ns/prod/"), SanMatcher("dns", "suffix", ".mesh.local"))


@pytest.mark.parametrize("tls, expected", [
    ("null", "mesh.yaml:5: clusters[0].tls: must be a mapping of TLS options ({} for the defaults)"),
    ("{insecure_skip_verify: true}", "mesh.yaml:6: clusters[0].tls.insecure_skip_verify: unknown key "
                                     "'insecure_skip_verify' (allowed: sni, ca, cert_chain"),
    ("{min_version: TLSv1.1}", "clusters[0].tls.min_version: TLSv1.1 is not offered: TLS 1.0 and 1.1 are "
                               "deprecated (RFC 8996)"),
    ("{min_version: tls12}", "clusters[0].tls.min_version: must be TLSv1.2 or TLSv1.3, not 'tls12'"),
    ("{min_version: TLSv1.3, max_version: TLSv1.2}", "clusters[0].tls.max_version: must be >= min_version (TLSv1.3)"),
    ("{ca: /nonexistent/ca.crt}", "clusters[0].tls.ca: /nonexistent/ca.crt: No such file or directory"),
    ("{ca: ''}", "clusters[0].tls.ca: must be a file path"),
    ("{sni: 127.0.0.1}", "clusters[0].tls.sni: SNI is a host name, not an IP address (RFC 6066)"),
    ("{sni: 'a b'}", "clusters[0].tls.sni: must be a DNS host name"),
    ("{alpn: [h2, '']}", "clusters[0].tls.alpn[1]: must be protocol names such as h2 or http/1.1"),
    ("{alpn: h2}", "clusters[0].tls.alpn: must be a list"),
    ("{cipher_suites: [NOT-A-CIPHER]}", "clusters[0].tls.cipher_suites[0]: OpenSSL knows no TLS 1.2 cipher suite"),
    ("{cipher_suites: ['A:B']}", "clusters[0].tls.cipher_suites[0]: one cipher name per entry"),
    ("{match_subject_alt_names: [{ip: 127.0.0.1}]}", "clusters[0].tls.match_subject_alt_names[0].ip: unknown key"),
    ("{match_subject_alt_names: [{dns: a, uri: b}]}",
     "clusters[0].tls.match_subject_alt_names[0]: must be one of {dns: name} or {uri: name}"),
    ("{match_subject_alt_names: [{uri: backend}]}",
     "clusters[0].tls.match_subject_alt_names[0].uri: a URI SAN has a scheme"),
    ("{match_subject_alt_names: [{dns: '*.mesh'}]}",
     "clusters[0].tls.match_subject_alt_names[0].dns: a DNS name to match has no wildcard"),
    ("{match_subject_alt_names: [{uri: {regex: x}}]}",
     "clusters[0].tls.match_subject_alt_names[0].uri.regex: unknown key 'regex' (allowed: exact, prefix, suffix)"),
    ("{match_subject_alt_names: [{dns: {prefix: ''}}]}",
     "clusters[0].tls.match_subject_alt_names[0].dns.prefix: must be a non-empty printable ASCII string"),
])
def test_errors(tls, expected):
    assert expected in error(tls)


def test_file_errors(pki, tmp_path):
    ca, client, other = pki
    assert error("{cert_chain: %s}" % (client.chainPath,)).endswith(
        "clusters[0].tls: cert_chain and private_key go together (the client certificate for mutual TLS); "
        "private_key is missing")
    assert "clusters[0].tls.private_key: %s: the key is not the private key of the first certificate of %s" % (
        other.keyPath, client.chainPath) in error("{cert_chain: %s, private_key: %s}" % (client.chainPath,
                                                                                         other.keyPath))
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    assert "clusters[0].tls.ca: %s: " % (garbage,) in error("{ca: %s}" % (garbage,))
    assert "clusters[0].tls.private_key: %s: not a PEM private key" % (garbage,) in error(
        "{cert_chain: %s, private_key: %s}" % (client.chainPath, garbage))
    assert error("{ca: %s}" % (garbage,)).startswith("mesh.yaml:6: ")


def test_the_schema_takes_what_the_loader_takes(pki):
    import json
    from importlib import resources

    import jsonschema
    import yaml

    schema = json.loads(resources.files("txmesh").joinpath("mesh.schema.json").read_text())
    validator = jsonschema.Draft202012Validator(schema)
    ca, client, _ = pki
    good = ("{sni: b.mesh, ca: %s, cert_chain: %s, private_key: %s, alpn: [h2], min_version: TLSv1.3, "
            "cipher_suites: [ECDHE-ECDSA-AES128-GCM-SHA256], match_subject_alt_names: [{dns: b.mesh}, "
            "{uri: {prefix: 'spiffe://mesh.local/'}}]}" % (ca.certPath, client.chainPath, client.keyPath))
    text = MESH.format(protocol="http1", tls="      " + good)
    cluster(good)  # the loader takes it
    validator.validate(yaml.safe_load(text))
    for bad in ("{insecure_skip_verify: true}", "{min_version: TLSv1.1}", "{cert_chain: x.pem}",
                "{match_subject_alt_names: [{ip: 1.2.3.4}]}"):
        with pytest.raises(jsonschema.ValidationError):
            validator.validate(yaml.safe_load(MESH.format(protocol="http1", tls="      " + bad)))
