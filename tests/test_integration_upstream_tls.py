"""
TLS origination end to end (issue 14 part 2): txmesh under twistd (its own TCP transport under the TLS one) with
real TLS upstreams -- nginx (with and without ``ssl_verify_client on``), a grpcio server with
``grpc.ssl_server_credentials`` (h2 chosen by ALPN), and the real sofa-rpc-node Dubbo provider behind an in-process
Twisted TLS terminator -- and bad upstreams: a wrong SAN, an untrusted CA, an expired certificate, a plain-text
upstream, TLS 1.1 only.  Each bad one fails with its counter and the protocol-native error, at once (no hang), and
the cluster serves again once its upstream is fixed.  One txmesh and one nginx serve every case.
"""

import http.client
import json
import os
import shutil
import signal
import time

import grpc
import pytest
from OpenSSL import SSL
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.protocols.portforward import ProxyFactory
from twisted.protocols.tls import TLSMemoryBIOFactory
from zope.interface import implementer

from tests import support
from tests.certs import CertAuthority
from tests.reactor_thread import onReactor
from txmesh.protocols.dubbo import codec as dc

pytestmark = [pytest.mark.timeout(60),
              pytest.mark.skipif(support.NGINX is None, reason="nginx is not installed")]

SPIFFE = "spiffe://mesh.local/ns/default/sa/backend"
CLIENT_SPIFFE = "spiffe://mesh.local/ns/default/sa/frontend"

NGINX = """
server {{
    listen 127.0.0.1:{port}{flag};
    {ssl}
    location / {{ return 200 "ok $ssl_protocol $ssl_client_verify $ssl_client_s_dn\\n"; }}
}}
"""


def _ssl(cert, extra="", mtls=None):
    text = "ssl_certificate %s; ssl_certificate_key %s; %s" % (cert.chainPath, cert.keyPath, extra)
    if mtls is not None:
        text += " ssl_verify_client on; ssl_client_certificate %s;" % (mtls,)
    return text


def _cluster(name, port, tls, protocol="http1"):
    return ("  - name: %s\n    protocol: %s\n    connect_timeout: 2s\n    endpoints: [{address: \"%s:%d\"}]\n"
            "    tls: %s\n" % (name, protocol, "localhost" if name != "by_ip" else "127.0.0.1", port, tls))


def _route(name):
    return "            - match: {prefix: /%s/}\n              route: {cluster: %s}\n" % (name, name)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    d = tmp_path_factory.mktemp("upstream-tls")
    ca = CertAuthority(d / "ca", "mesh-ca")
    other = CertAuthority(d / "other", "other-ca")
    server = ca.issue("server", dns=["localhost"], uris=[SPIFFE], ips=["127.0.0.1"])
    wrongSan = ca.issue("wrong-san", dns=["other.mesh"], uris=["spiffe://mesh.local/ns/default/sa/intruder"])
    untrusted = other.issue("untrusted", dns=["localhost"], uris=[SPIFFE])
    expired = ca.expired("expired", dns=["localhost"], uris=[SPIFFE])
    client = ca.issue("client", uris=[CLIENT_SPIFFE], client=True, server=False)
    procs = []
    grpcServer = dubboStop = None
    ports = {n: support.freePort() for n in ("mtls", "plain_tls", "wrong_san", "untrusted", "expired", "tls11",
                                             "plaintext", "fixable", "by_ip")}
    servers = {
        "mtls": _ssl(server, mtls=ca.certPath), "plain_tls": _ssl(server), "wrong_san": _ssl(wrongSan),
        "untrusted": _ssl(untrusted), "expired": _ssl(expired),
        "tls11": _ssl(server, "ssl_protocols TLSv1.1; ssl_ciphers DEFAULT:@SECLEVEL=0;"), "plaintext": "",
        "fixable": _ssl(wrongSan), "by_ip": _ssl(server)}

    def nginxConf(fixed):
        conf = dict(servers, fixable=_ssl(server)) if fixed else servers
        return "".join(NGINX.format(port=ports[n], flag=" ssl" if conf[n] else "", ssl=conf[n]) for n in ports)

    try:
        ng, prefix = support.startNginx(nginxConf(False))
        procs.append(ng)
        for p in ports.values():
            support.waitForPort(p, proc=ng.popen)
        grpcPort, grpcServer = _grpcServer(server, ca)
        dubboPort, dubboStop, provider = _dubboBehindTLS(server)
        if provider is not None:
            procs.append(provider)
        admin, http1, grpcIn, dubboIn = (support.freePort() for _ in range(4))
        strict = "{ca: %s, match_subject_alt_names: [{uri: \"%s\"}]}" % (ca.certPath, SPIFFE)
        mtls = ("{ca: %s, cert_chain: %s, private_key: %s, match_subject_alt_names: [{uri: \"%s\"}]}"
                % (ca.certPath, client.chainPath, client.keyPath, SPIFFE))
        clusters = [_cluster("mtls", ports["mtls"], mtls), _cluster("plain_tls", ports["plain_tls"],
                                                                     "{ca: %s}" % (ca.certPath,))]
        clusters += [_cluster(n, ports[n], strict) for n in ("wrong_san", "untrusted", "expired", "tls11",
                                                             "plaintext", "fixable")]
        clusters.append(_cluster("by_ip", ports["by_ip"], "{ca: %s}" % (ca.certPath,)))
        clusters.append(_cluster("grpc_tls", grpcPort, mtls, "grpc"))
        clusters.append(_cluster("grpc_wrong", grpcPort, "{ca: %s, match_subject_alt_names: [{dns: other.mesh}]}"
                                 % (ca.certPath,), "grpc"))
        clusters.append(_cluster("dubbo_tls", dubboPort, strict, "dubbo"))
        clusters.append(_cluster("dubbo_untrusted", dubboPort, "{ca: %s}" % (other.certPath,), "dubbo"))
        # active health checks over the cluster's TLS: an http check of nginx (verified), a tcp check of the
        # wrong-SAN nginx (the connect itself fails verification), a dubbo check of the provider behind TLS
        check = "    health_checks: [{type: %s, interval: 200ms, timeout: 1s, unhealthy_threshold: 1}]\n"
        clusters.append(_cluster("hc_good", ports["plain_tls"], "{ca: %s}" % (ca.certPath,)) + check % "http")
        clusters.append(_cluster("hc_bad", ports["wrong_san"], strict) + check % "tcp")
        clusters.append(_cluster("hc_dubbo", dubboPort, strict, "dubbo") + check % "dubbo")
        accessLog = str(d / "access.log")
        config = CONFIG.format(admin=admin, http1=http1, grpcIn=grpcIn, dubboIn=dubboIn, accessLog=accessLog,
                               routes="".join(_route(n) for n in ports)) + "".join(clusters)
        tx = support.startTxmesh(config, admin)
        procs.append(tx)
        for p in (http1, grpcIn, dubboIn):
            support.waitForPort(p, proc=tx.popen)
        env = type("Mesh", (), {})()
        env.http1, env.grpcIn, env.dubboIn, env.admin, env.tx = http1, grpcIn, dubboIn, admin, tx
        env.dubbo = provider is not None
        env.accessLog = accessLog

        def fix():
            with open(os.path.join(prefix, "nginx.conf")) as f:
                text = f.read()
            with open(os.path.join(prefix, "nginx.conf"), "w") as f:
                f.write(text.replace(nginxConf(False), nginxConf(True)))
            ng.signal(signal.SIGHUP)

        env.fix = fix
        yield env
    finally:
        for p in reversed(procs):
            p.stop()
        if grpcServer is not None:
            grpcServer.stop(0)
        if dubboStop is not None:
            onReactor(dubboStop)


CONFIG = """
admin:
  address: tcp:{admin}:interface=127.0.0.1
listeners:
  - name: http_in
    protocol: http1
    address: tcp:{http1}:interface=127.0.0.1
    filters:
      - name: access_log
        config:
          path: "{accessLog}"
          format: "%REQ(:PATH)% %RESPONSE_CODE% %RESPONSE_FLAGS% %UPSTREAM_PEER_URI_SAN% %UPSTREAM_TLS_VERSION%
            %UPSTREAM_TRANSPORT_FAILURE_REASON%"
    route_config:
      virtual_hosts:
        - name: all
          domains: ["*"]
          routes:
{routes}
  - name: grpc_in
    protocol: grpc
    address: tcp:{grpcIn}:interface=127.0.0.1
    route_config:
      virtual_hosts:
        - name: all
          domains: ["*"]
          routes:
            - match: {{grpc: {{service: test.Echo}}, headers: [{{name: x-route, exact: wrong}}]}}
              route: {{cluster: grpc_wrong}}
            - match: {{grpc: {{service: test.Echo}}}}
              route: {{cluster: grpc_tls}}
  - name: dubbo_in
    protocol: dubbo
    address: tcp:{dubboIn}:interface=127.0.0.1
    route_config:
      virtual_hosts:
        - name: all
          domains: ["*"]
          routes:
            - match: {{dubbo: {{interface: "org.txmesh.peers.*", method: add}}}}
              route: {{cluster: dubbo_untrusted}}
            - match: {{dubbo: {{interface: "org.txmesh.peers.*"}}}}
              route: {{cluster: dubbo_tls}}
clusters:
"""


def _grpcServer(cert, ca):
    from concurrent import futures

    from tests.grpc_peers.echo_server import HANDLERS

    def read(path):
        with open(path, "rb") as f:
            return f.read()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Echo", HANDLERS),))
    creds = grpc.ssl_server_credentials([(read(cert.keyPath), read(cert.chainPath))],
                                        root_certificates=read(ca.certPath), require_client_auth=True)
    port = support.freePort()
    server.add_secure_port("127.0.0.1:%d" % (port,), creds)
    server.start()
    return port, server


@implementer(IOpenSSLServerConnectionCreator)
class _ServerTLS:
    """A TLS server with ``cert`` (cryptography objects: pyOpenSSL's own are deprecated)."""

    def __init__(self, cert):
        self.ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
        self.ctx.use_certificate(cert.cert)
        self.ctx.use_privatekey(cert.key)

    def serverConnectionForTLS(self, tlsProtocol):
        return SSL.Connection(self.ctx, None)


def _dubboBehindTLS(cert):
    """The real sofa-rpc-node provider (plain text) behind an in-process Twisted TLS terminator."""
    node = shutil.which("node")
    peers = os.path.join(support.ROOT, "tests", "dubbo_peers")
    port = support.freePort()
    provider = None
    if node is not None and os.path.isdir(os.path.join(peers, "node_modules", "sofa-rpc-node")):
        providerPort = support.freePort()
        provider = support.Proc([node, os.path.join(peers, "provider.js"), str(providerPort)], cwd=peers)
        support.waitForPort(providerPort, proc=provider.popen)
    else:
        providerPort = support.freePort()  # nothing listens: the Dubbo cases are skipped

    def listen():
        from twisted.internet import reactor
        factory = TLSMemoryBIOFactory(_ServerTLS(cert), False, ProxyFactory("127.0.0.1", providerPort), reactor)
        return TCP4ServerEndpoint(reactor, port, interface="127.0.0.1").listen(factory)

    listening = onReactor(listen)
    return port, listening.stopListening, provider


def stats(mesh):
    return json.loads(support.adminGet(mesh.admin, "/stats")[1])


def total(s, name, **labels):
    return sum(x["value"] for x in s.get(name, []) if labels.items() <= x["labels"].items())


def get(mesh, path):
    c = http.client.HTTPConnection("127.0.0.1", mesh.http1, timeout=10)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return r.status, r.getheader("x-txmesh-error"), r.read()
    finally:
        c.close()


def test_nginx_mutual_tls_and_one_way_tls(mesh):
    status, _, body = get(mesh, "/mtls/x")
    assert status == 200, body
    # nginx verified txmesh's client certificate (ssl_verify_client on)
    assert body.startswith(b"ok TLSv1.2 SUCCESS CN=client"), body
    status, _, body = get(mesh, "/plain_tls/x")
    assert status == 200 and body.startswith(b"ok TLSv1.2 NONE"), body
    # an IP host without sni: the certificate must carry the IP (it does)
    status, _, body = get(mesh, "/by_ip/x")
    assert status == 200, body
    s = stats(mesh)
    assert total(s, "upstream_ssl_handshake", cluster="mtls") >= 1
    assert total(s, "upstream_ssl_handshake", cluster="plain_tls") >= 1
    line = accessLogLine(mesh, "/mtls/x")
    assert line == "/mtls/x 200 - %s TLSv1.2 -" % (SPIFFE,), line


def accessLogLine(mesh, path):
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        with open(mesh.accessLog) as f:
            lines = [line.rstrip("\n") for line in f if line.startswith(path + " ")]
        if lines:
            return lines[-1]
        time.sleep(0.05)
    raise AssertionError("no access log line for " + path)


@pytest.mark.parametrize("name, cause, counter", [
    ("wrong_san", "upstream_tls_verify_failed", "upstream_ssl_fail_verify_san"),
    ("untrusted", "upstream_tls_verify_failed", "upstream_ssl_fail_verify_error"),
    ("expired", "upstream_tls_verify_failed", "upstream_ssl_fail_verify_error"),
    ("tls11", "upstream_tls_handshake_failed", "upstream_ssl_connection_error"),
    ("plaintext", "upstream_tls_handshake_failed", "upstream_ssl_connection_error"),
])
def test_bad_upstreams_fail_at_once_with_503_uf_and_a_counter(mesh, name, cause, counter):
    started = time.monotonic()
    status, error, body = get(mesh, "/%s/x" % (name,))
    assert (status, error) == (503, cause), body
    assert time.monotonic() - started < 1.5  # the handshake's failure, not the 2 s connect timeout
    s = stats(mesh)
    assert total(s, counter, cluster=name) >= 1
    assert total(s, "upstream_ssl_connection_error", cluster=name) >= 1
    assert total(s, "upstream_cx_connect_fail", cluster=name) >= 1
    assert total(s, "upstream_ssl_handshake", cluster=name) == 0
    line = accessLogLine(mesh, "/%s/x" % (name,))
    assert line.startswith("/%s/x 503 UF - - connect to localhost:" % (name,)) and " failed: TLS" in line, line


def test_a_fixed_upstream_serves_again(mesh):
    status, error, _ = get(mesh, "/fixable/x")
    assert (status, error) == (503, "upstream_tls_verify_failed")
    mesh.fix()  # nginx reloads with the right certificate
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        status, error, body = get(mesh, "/fixable/x")
        if status == 200:
            break
        time.sleep(0.1)
    assert status == 200, (status, error)
    assert total(stats(mesh), "upstream_ssl_fail_verify_san", cluster="fixable") >= 1


def test_health_checks_run_over_the_cluster_tls(mesh):
    def hosts():
        clusters = json.loads(support.adminGet(mesh.admin, "/clusters")[1])
        return {c["name"]: c["hosts"][0] for c in clusters if c["name"].startswith("hc_")}

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        h = hosts()
        if all(x["health_check"]["last_check"] for x in h.values()) and h["hc_good"]["healthy"]:
            break
        time.sleep(0.1)
    assert h["hc_good"]["healthy"] is True, h["hc_good"]
    assert h["hc_bad"]["healthy"] is False
    last = h["hc_bad"]["health_check"]["last_check"]
    assert last["result"] == "network" and "names none of uri:" + SPIFFE in last["reason"], last
    if mesh.dubbo:
        assert h["hc_dubbo"]["healthy"] is True, h["hc_dubbo"]
    s = stats(mesh)
    assert total(s, "upstream_ssl_handshake", cluster="hc_good") >= 1
    assert total(s, "upstream_ssl_fail_verify_san", cluster="hc_bad") >= 1


def test_grpc_over_mutual_tls_with_h2_by_alpn(mesh):
    channel = grpc.insecure_channel("127.0.0.1:%d" % (mesh.grpcIn,))
    try:
        unary = channel.unary_unary("/test.Echo/Unary", request_serializer=None, response_deserializer=None)
        assert unary(b"hello", timeout=5) == b"hello"
        bidi = channel.stream_stream("/test.Echo/Bidi", request_serializer=None, response_deserializer=None)
        assert list(bidi(iter([b"a", b"b"]), timeout=5)) == [b"a", b"b"]
        with pytest.raises(grpc.RpcError) as e:
            unary(b"hello", timeout=5, metadata=(("x-route", "wrong"),))
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "upstream_tls_verify_failed" in e.value.details()
    finally:
        channel.close()
    s = stats(mesh)
    assert total(s, "upstream_ssl_handshake", cluster="grpc_tls") >= 1
    assert total(s, "upstream_ssl_fail_verify_san", cluster="grpc_wrong") >= 1


def test_dubbo_over_tls_to_the_real_provider(mesh):
    if not mesh.dubbo:
        pytest.skip("Dubbo peers not installed")
    from tests.test_integration_dubbo import Raw, request
    raw = Raw(mesh.dubboIn)
    try:
        raw.send(request(7, "echo", "Ljava/lang/String;", ["over tls"]))
        [ok] = raw.read(1)
        assert ok.status == dc.OK and b"over tls" in ok.body
        raw.send(request(8, "add", "II", [20, 22]))
        [refused] = raw.read(1)
        assert refused.requestId == 8 and refused.status == dc.SERVICE_NOT_FOUND
        assert b"upstream_tls_verify_failed" in refused.body
    finally:
        raw.close()
    s = stats(mesh)
    assert total(s, "upstream_ssl_handshake", cluster="dubbo_tls") >= 1
    assert total(s, "upstream_ssl_fail_verify_error", cluster="dubbo_untrusted") >= 1
