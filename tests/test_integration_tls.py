"""
Listener TLS end to end (issue 14 parts 1 and 3): txmesh under twistd (its own TCP transport under Twisted's TLS)
with real clients -- curl (HTTP/2 and HTTP/1.1 chosen by ALPN on one port, client certificates), openssl s_client
(SNI, ALPN, versions), grpcio with TLS channel credentials -- bad peers that must be refused and counted, and
certificates replaced while a client loop runs.
"""

import http.client
import json
import os
import socket
import ssl
import subprocess
import sys
import threading
import time

import grpc
import pytest

from tests import support
from tests.certs import CertAuthority

pytestmark = pytest.mark.timeout(120)

FRONTEND = "spiffe://mesh.local/ns/default/sa/frontend"
INBOUND = "spiffe://mesh.local/ns/default/sa/inbound"

CONFIG = """
drain_timeout: 1s
admin:
  address: tcp:{admin}:interface=127.0.0.1
listeners:
  - name: web
    protocol: http
    address: tcp:{web}:interface=127.0.0.1
    tls:
      certificates:
        - {{cert_chain: {server.chainPath}, private_key: {server.keyPath}}}
        - {{cert_chain: {api.chainPath}, private_key: {api.keyPath}, server_names: [api.mesh.test]}}
      client_certificate: optional
      ca: {caPath}
    forward_client_cert_details: sanitize_set
    set_current_client_cert_details: {{uri: true, subject: true}}
    filters:
      - name: access_log
        config:
          path: {log}
          json_format: {{tls: "%DOWNSTREAM_TLS_VERSION%", peer: "%DOWNSTREAM_PEER_URI_SAN%",
                         sni: "%REQUESTED_SERVER_NAME%", proto: "%PROTOCOL%", path: "%REQ(:PATH)%"}}
      - name: router
    route_config:
      virtual_hosts:
        - name: app
          domains: ["*"]
          routes:
            - match: {{prefix: /who, peer: {{principal: "{frontend}"}}}}
              direct_response: {{status: 200, body: "hello frontend"}}
            - match: {{prefix: /}}
              route: {{cluster: echo}}
  - name: mtls
    protocol: http
    address: tcp:{mtls}:interface=127.0.0.1
    tls:
      certificates: [{{cert_chain: {server.chainPath}, private_key: {server.keyPath}}}]
      client_certificate: required
      ca: {caPath}
      handshake_timeout: 2s
    route_config:
      virtual_hosts: [{{name: a, domains: ["*"], routes: [{{match: {{prefix: /}}, route: {{cluster: echo}}}}]}}]
  - name: rot
    protocol: http
    address: tcp:{rot}:interface=127.0.0.1
    tls:
      certificates: [{{cert_chain: {rotCert}, private_key: {rotKey}}}]
      watch_interval: 200ms
    route_config:
      virtual_hosts: [{{name: a, domains: ["*"], routes: [{{match: {{prefix: /}}, route: {{cluster: echo}}}}]}}]
  - name: grpc_in
    protocol: grpc
    address: tcp:{grpc}:interface=127.0.0.1
    tls:
      certificates: [{{cert_chain: {server.chainPath}, private_key: {server.keyPath}}}]
      client_certificate: required
      ca: {caPath}
    route_config:
      virtual_hosts: [{{name: a, domains: ["*"], routes: [{{match: {{prefix: /}}, route: {{cluster: grpc_echo}}}}]}}]
clusters:
  - name: echo
    endpoints: [{{address: "127.0.0.1:{echo}"}}]
  - name: grpc_echo
    protocol: grpc
    endpoints: [{{address: "127.0.0.1:{grpcEcho}"}}]
"""


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    d = tmp_path_factory.mktemp("tls")
    ca = CertAuthority(d / "ca", "mesh-ca")
    other = CertAuthority(d / "other", "other-ca")
    server = ca.issue("server", dns=["localhost"], ips=["127.0.0.1"], uris=[INBOUND])
    api = ca.issue("api", dns=["api.mesh.test"])
    rotating = ca.issue("rot", dns=["localhost"])
    rotDir = d / "rotating"
    rotDir.mkdir()
    rotCert, rotKey = str(rotDir / "tls.crt"), str(rotDir / "tls.key")
    os.replace(rotating.chainPath, rotCert)
    os.replace(rotating.keyPath, rotKey)
    up, echo, _ = support.startUpstream()
    grpcPort = support.freePort()
    peer = support.Proc([sys.executable, os.path.join(support.ROOT, "tests", "grpc_peers", "echo_server.py"),
                         str(grpcPort)])
    support.waitForPort(grpcPort, proc=peer.popen)
    ports = {k: support.freePort() for k in ("admin", "web", "mtls", "rot", "grpc")}
    log = str(d / "access.log")
    text = CONFIG.format(server=server, api=api, caPath=ca.certPath, log=log, frontend=FRONTEND, echo=echo,
                         grpcEcho=grpcPort, rotCert=rotCert, rotKey=rotKey, **ports)
    proc = support.startTxmesh(text, ports["admin"])
    try:
        yield dict(ports, proc=proc, ca=ca, other=other, server=server, log=log, rotCert=rotCert, rotKey=rotKey,
                   client=ca.issue("frontend", uris=[FRONTEND], client=True), dir=d)
    finally:
        proc.stop()
        up.stop()
        peer.stop()


def curl(mesh, port, path="/echo", *args, host="localhost"):
    cmd = ["curl", "-sS", "--max-time", "5", "--cacert", mesh["ca"].certPath, "--resolve",
           "%s:%d:127.0.0.1" % (host, port), "-w", "\n%{http_version}", *args, "https://%s:%d%s" % (host, port, path)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=15)
    body, _, version = r.stdout.rpartition("\n")
    return r.returncode, body, version, r.stderr


def withCert(cert):
    return ("--cert", cert.certPath, "--key", cert.keyPath)


def stat(mesh, name, **labels):
    _, body = support.adminGet(mesh["admin"], "/stats")
    return sum(s["value"] for s in json.loads(body).get(name, []) if labels.items() <= s["labels"].items())


def waitStat(mesh, name, atLeast, **labels):
    """Wait (bounded) until the counter reaches ``atLeast``: the server counts a refused peer when it closes."""
    deadline = time.monotonic() + 5
    while stat(mesh, name, **labels) < atLeast:
        assert time.monotonic() < deadline, "%s stayed at %s (want >= %s)" % (name, stat(mesh, name, **labels),
                                                                              atLeast)
        time.sleep(0.05)


def headersOf(body):
    return {k: v for k, v in json.loads(body)["headers"]}


def test_alpn_serves_http2_and_http1_on_one_port(mesh):
    for flag, version in (("--http2", "2"), ("--http1.1", "1.1")):
        rc, body, got, err = curl(mesh, mesh["web"], "/echo", flag, "-H", "x-forwarded-client-cert: By=forged")
        assert rc == 0, err
        assert got == version
        headers = headersOf(body)
        assert headers["x-forwarded-proto"] == "https"
        assert "x-forwarded-client-cert" not in headers  # no client certificate: the forged header is removed


def test_client_identity_reaches_routes_xfcc_and_the_access_log(mesh):
    rc, body, _, err = curl(mesh, mesh["web"], "/who", *withCert(mesh["client"]))
    assert (rc, body) == (0, "hello frontend"), err
    rc, body, _, _ = curl(mesh, mesh["web"], "/who")
    assert rc == 0 and body != "hello frontend"  # no certificate: the peer route does not match
    rc, body, _, _ = curl(mesh, mesh["web"], "/echo", "--http2", "-H", "x-forwarded-client-cert: By=forged",
                          *withCert(mesh["client"]))
    xfcc = headersOf(body)["x-forwarded-client-cert"]
    assert xfcc.startswith("By=%s;Hash=" % (INBOUND,)) and xfcc.endswith(';Subject="CN=frontend";URI=' + FRONTEND)
    line = waitForLine(mesh["log"], lambda e: e["path"] == "/who" and e["peer"] is not None)
    assert line["tls"] == "TLSv1.3" and line["peer"] == FRONTEND and line["sni"] == "localhost"


def waitForLine(path, predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while True:
        with open(path) as f:
            for line in f:
                event = json.loads(line)
                if predicate(event):
                    return event
        assert time.monotonic() < deadline, "no such access log line"
        time.sleep(0.05)


def sClient(mesh, port, *args):
    r = subprocess.run(["openssl", "s_client", "-connect", "127.0.0.1:%d" % (port,), "-CAfile", mesh["ca"].certPath,
                        *args], input="", capture_output=True, text=True, errors="replace", timeout=15)
    return r.returncode, r.stdout + r.stderr


def test_openssl_sni_alpn_and_versions(mesh):
    port = mesh["web"]
    _, out = sClient(mesh, port, "-servername", "api.mesh.test")
    assert "subject=CN = api" in out
    _, out = sClient(mesh, port, "-servername", "other.test")
    assert "subject=CN = server" in out
    _, out = sClient(mesh, port, "-alpn", "h2")
    assert "ALPN protocol: h2" in out
    _, out = sClient(mesh, port, "-alpn", "http/1.1")
    assert "ALPN protocol: http/1.1" in out
    for flag, version in (("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")):
        rc, out = sClient(mesh, port, flag)
        assert rc == 0 and "New, %s, Cipher is" % (version,) in out
    errors = stat(mesh, "ssl_connection_error", listener="web")
    for flag in ("-tls1", "-tls1_1"):
        rc, out = sClient(mesh, port, flag, "-cipher", "DEFAULT@SECLEVEL=0")
        assert rc != 0 and "Cipher is (NONE)" in out
    waitStat(mesh, "ssl_connection_error", errors + 2, listener="web")
    # session resumption: the second connection of -reconnect reuses the session
    _, out = sClient(mesh, port, "-tls1_2", "-reconnect")
    assert "Reused, TLSv1.2" in out


def test_bad_peers_are_refused_counted_and_the_listener_serves_the_next(mesh):
    port, ca, other = mesh["mtls"], mesh["ca"], mesh["other"]
    rc, _, _, err = curl(mesh, port)
    assert rc != 0
    rc, _, _, err = curl(mesh, port, "/echo", *withCert(other.issue("stranger", client=True)))
    assert rc != 0
    rc, _, _, err = curl(mesh, port, "/echo", *withCert(ca.expired("old", client=True)))
    assert rc != 0
    r = subprocess.run(["curl", "-sS", "--max-time", "5", "http://127.0.0.1:%d/echo" % (port,)], capture_output=True,
                       timeout=15)
    assert r.returncode != 0  # plain text on the TLS port
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"\x16\x03\x01\x00\x05garbagegarbage" * 4)
        s.settimeout(5)
        try:
            while s.recv(4096):
                pass
        except ConnectionResetError:
            pass
    rc, body, _, err = curl(mesh, port, "/echo", *withCert(mesh["client"]))
    assert rc == 0 and headersOf(body)["x-forwarded-proto"] == "https", err
    waitStat(mesh, "ssl_fail_verify_no_cert", 1, listener="mtls")
    waitStat(mesh, "ssl_fail_verify_error", 2, listener="mtls")
    waitStat(mesh, "ssl_connection_error", 2, listener="mtls")
    assert stat(mesh, "ssl_handshake", listener="mtls") >= 1


def test_grpc_over_mutual_tls(mesh):
    client = mesh["client"]
    creds = grpc.ssl_channel_credentials(open(mesh["ca"].certPath, "rb").read(), open(client.keyPath, "rb").read(),
                                         open(client.chainPath, "rb").read())
    with grpc.secure_channel("localhost:%d" % (mesh["grpc"],), creds) as channel:
        unary = channel.unary_unary("/test.Echo/Unary", request_serializer=None, response_deserializer=None)
        assert unary(b"hello", timeout=5) == b"hello"
        stream = channel.unary_stream("/test.Echo/ServerStream", request_serializer=None, response_deserializer=None)
        assert [len(m) for m in stream(b"3:10", timeout=5)] == [10, 10, 10]
    noCert = grpc.ssl_channel_credentials(open(mesh["ca"].certPath, "rb").read())
    with grpc.secure_channel("localhost:%d" % (mesh["grpc"],), noCert) as channel:
        unary = channel.unary_unary("/test.Echo/Unary", request_serializer=None, response_deserializer=None)
        with pytest.raises(grpc.RpcError) as e:
            unary(b"hello", timeout=5)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE


def peerSerial(port, ca):
    ctx = ssl.create_default_context(cafile=ca)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as s:
            from cryptography import x509
            return x509.load_der_x509_certificate(s.getpeercert(binary_form=True)).serial_number


def test_rotation_under_load_drops_nothing(mesh):
    port, caPath = mesh["rot"], mesh["ca"].certPath
    ctx = ssl.create_default_context(cafile=caPath)
    failures, done, stop = [], [0], threading.Event()

    def loop():
        keep = http.client.HTTPSConnection("localhost", port, context=ctx, timeout=5)
        while not stop.is_set():
            try:
                fresh = http.client.HTTPSConnection("localhost", port, context=ctx, timeout=5)  # a new handshake
                for conn in (fresh, keep):
                    conn.request("GET", "/echo")
                    r = conn.getresponse()
                    r.read()
                    if r.status != 200:
                        failures.append(r.status)
                fresh.close()
                done[0] += 1
            except Exception as e:  # noqa: BLE001 - every failure is one to report
                failures.append(repr(e))
        keep.close()

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    try:
        time.sleep(0.3)
        renewed = mesh["ca"].issue("rot-renewed", dns=["localhost"])
        os.replace(renewed.keyPath, mesh["rotKey"])
        os.replace(renewed.chainPath, mesh["rotCert"])
        deadline = time.monotonic() + 10
        while peerSerial(port, caPath) != renewed.cert.serial_number:
            assert time.monotonic() < deadline, "the new certificate was not served"
            time.sleep(0.05)
        certs = json.loads(support.adminGet(mesh["admin"], "/certs")[1])["certificates"]
        [rot] = [c for c in certs if c["listener"] == "rot"]
        assert rot["cert_chain"][0]["serial_number"] == "%x" % (renewed.cert.serial_number,)
        # a broken file: refused, counted, the renewed certificate still served
        with open(mesh["rotCert"], "w") as f:
            f.write("-----BEGIN CERTIFICATE-----\nbroken\n-----END CERTIFICATE-----\n")
        deadline = time.monotonic() + 10
        while stat(mesh, "tls_rotation_failed", listener="rot") < 1:
            assert time.monotonic() < deadline, "the broken file was not noticed"
            time.sleep(0.05)
        assert peerSerial(port, caPath) == renewed.cert.serial_number
        time.sleep(0.2)
    finally:
        stop.set()
        t.join(10)
    assert failures == [] and done[0] > 5
    assert stat(mesh, "tls_rotation", listener="rot") >= 1
    _, metrics = support.adminGet(mesh["admin"], "/metrics")
    assert b'txmesh_tls_certificate_expiry_seconds{certificate="%s",listener="rot"}' % (
        mesh["rotCert"].encode(),) in metrics
    assert b"PRIVATE KEY" not in support.adminGet(mesh["admin"], "/certs")[1]
