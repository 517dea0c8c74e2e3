"""
The ``rbac`` filter and the locked-down admin end to end (issue 14 parts 5 and 7), txmesh under twistd over plain
text on loopback: curl against source-address, header, path and method policies (with encoded and dotted paths),
grpcio against a gRPC service/method policy (PERMISSION_DENIED), the sofa-rpc-node Dubbo consumer against an
interface/method policy; the admin behind a bearer token, then on a unix socket (mode 0600, a stale socket file
from a crashed run in the way) driven with ``curl --unix-socket``.  Principals from certificates are tested at the
StreamInfo level in tests/test_rbac.py (mutual TLS end to end comes with the TLS listener).
"""

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile

import grpc
import pytest

from tests import support

CURL = shutil.which("curl")
NODE = shutil.which("node")
PEERS = os.path.join(support.ROOT, "tests", "dubbo_peers")
GRPC_PEER = os.path.join(support.ROOT, "tests", "grpc_peers", "echo_server.py")
HAVE_DUBBO = NODE is not None and os.path.isdir(os.path.join(PEERS, "node_modules", "sofa-rpc-node"))

pytestmark = [pytest.mark.timeout(90), pytest.mark.skipif(CURL is None, reason="needs curl")]

CONFIG = """
node: {id: rbac-it}
drain_timeout: 1s
admin:
  address: tcp:%(admin)d:interface=127.0.0.1
  auth: {bearer_token_file: %(token)s}
listeners:
- name: web
  address: tcp:%(web)d:interface=127.0.0.1
  filters:
  - name: rbac
    config:
      default_action: allow
      policies:
      - {name: ops, action: allow, permissions: [{path: {prefix: /echo/admin}}],
         principals: [{and_ids: [{source_ip: 127.0.0.0/8}, {header: {name: x-role, exact: ops}}]}]}
      - {name: no-admin, action: deny, permissions: [{path: {prefix: /echo/admin}}], principals: [{any: true}]}
      - {name: read-only, action: deny, permissions: [{not_rule: {method: [GET, HEAD]}}], principals: [{any: true}]}
      - {name: outsiders, action: deny, permissions: [{any: true}], principals: [{not_id: {source_ip: 127.0.0.0/8}}]}
  - name: router
  default_cluster: app
- name: rpc
  protocol: grpc
  address: tcp:%(grpc)d:interface=127.0.0.1
  filters:
  - name: rbac
    config:
      rules:
        action: ALLOW
        policies:
          unary-from-loopback:
            permissions: [{and_rules: {rules: [{grpc_service: test.Echo}, {grpc_method: Unary}]}}]
            principals: [{direct_remote_ip: {address_prefix: 127.0.0.1, prefix_len: 32}}]
  - name: router
  default_cluster: echo
%(dubbo)s
clusters:
- {name: app, endpoints: [{address: "127.0.0.1:%(upstream)d"}]}
- {name: echo, protocol: grpc, endpoints: [{address: "127.0.0.1:%(echo)d"}]}
%(dubboCluster)s
"""

DUBBO = """- name: dubbo_in
  protocol: dubbo
  address: tcp:%(dubboPort)d:interface=127.0.0.1
  filters:
  - name: rbac
    config:
      action: deny
      policies:
      - {name: no-add, permissions: [{and_rules: [{dubbo_interface: org.txmesh.peers.EchoService},
         {dubbo_method: add}, {dubbo_group: SOFA}]}], principals: [{any: true}]}
  - name: router
  default_cluster: provider"""
DUBBO_CLUSTER = """- {name: provider, protocol: dubbo, endpoints: [{address: "127.0.0.1:%(provider)d"}]}"""
TOKEN = "it-token-3f9a"


def curl(*args, timeout=5):
    done = subprocess.run([CURL, "-s", "--max-time", str(timeout), *args], capture_output=True, timeout=timeout + 5)
    return done.returncode, done.stdout.decode("utf-8", "replace")


def status(url, *args):
    code, out = curl("-o", "/dev/null", "-w", "%{http_code}", *args, url)
    return int(out) if code == 0 else -code


@pytest.fixture(scope="module")
def mesh():
    procs = []
    try:
        upstream, http, _ = support.startUpstream()
        procs.append(upstream)
        echoPort = support.freePort()
        procs.append(support.Proc([sys.executable, GRPC_PEER, str(echoPort)]))
        support.waitForPort(echoPort, proc=procs[-1].popen)
        ports = {"admin": support.freePort(), "web": support.freePort(), "grpc": support.freePort(),
                 "upstream": http, "echo": echoPort, "dubbo": "", "dubboCluster": ""}
        if HAVE_DUBBO:
            provider = support.freePort()
            procs.append(support.Proc([NODE, os.path.join(PEERS, "provider.js"), str(provider)], cwd=PEERS))
            support.waitForPort(provider, proc=procs[-1].popen)
            ports["dubboPort"] = support.freePort()
            ports["dubbo"] = DUBBO % ports
            ports["dubboCluster"] = DUBBO_CLUSTER % {"provider": provider}
        directory = tempfile.mkdtemp(prefix="txmesh-rbac-")
        ports["token"] = os.path.join(directory, "admin.token")
        with open(ports["token"], "w") as f:
            f.write(TOKEN + "\n")
        proc = support.startTxmesh(CONFIG % ports, ports["admin"])
        procs.append(proc)
        support.waitForPort(ports["web"], proc=proc.popen)
        yield ports
    finally:
        for p in reversed(procs):
            p.stop()


def stats(mesh):
    code, out = curl("-H", "Authorization: Bearer " + TOKEN, "http://127.0.0.1:%d/stats" % (mesh["admin"],))
    assert code == 0
    return json.loads(out)


def total(data, name, **labels):
    return sum(s["value"] for s in data.get(name, []) if labels.items() <= s["labels"].items())


def test_http_policies_with_curl(mesh):
    web = "http://127.0.0.1:%d" % (mesh["web"],)
    assert status(web + "/echo/public") == 200
    code, out = curl("-i", web + "/echo/admin/users")
    assert out.startswith("HTTP/1.1 403") and "x-txmesh-error: rbac_access_denied" in out
    assert out.endswith("\r\n\r\nRBAC: access denied")
    assert status(web + "/echo/admin/users", "-H", "x-role: ops") == 200
    for variant in ("/echo/public/%2e%2e/admin", "//echo//admin", "/echo/admin;x", "/echo/%61dmin",
                    "/echo/./admin/../admin/x"):
        assert status(web + variant, "--path-as-is") == 403, variant
    assert status(web + "/echo/public", "-X", "DELETE") == 403
    data = stats(mesh)
    assert total(data, "rbac_denied", listener="web", policy="no-admin") == 6
    assert total(data, "rbac_denied", listener="web", policy="read-only") == 1
    assert total(data, "rbac_allowed", listener="web", policy="ops") == 1


def test_grpc_service_and_method_policy_with_grpcio(mesh):
    with grpc.insecure_channel("127.0.0.1:%d" % (mesh["grpc"],)) as channel:
        unary = channel.unary_unary("/test.Echo/Unary", request_serializer=None, response_deserializer=None)
        assert unary(b"hello", timeout=5) == b"hello"
        stream = channel.unary_stream("/test.Echo/ServerStream", request_serializer=None,
                                      response_deserializer=None)
        with pytest.raises(grpc.RpcError) as e:
            list(stream(b"3:10", timeout=5))
        assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert e.value.details() == "txmesh rbac-it: RBAC: access denied"
    data = stats(mesh)
    assert total(data, "rbac_allowed", listener="rpc", policy="unary-from-loopback") == 1
    assert total(data, "rbac_denied", listener="rpc", policy="_default") == 1


@pytest.mark.skipif(not HAVE_DUBBO, reason="node or the Dubbo peers are not installed")
def test_dubbo_interface_and_method_policy_with_the_sofa_consumer(mesh):
    out = subprocess.run([NODE, os.path.join(PEERS, "consumer.js"), "127.0.0.1:%d" % (mesh["dubboPort"],), "basic"],
                         cwd=PEERS, capture_output=True, timeout=60, text=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["echo"] == {"ok": "héllo"}
    assert "add" not in result or "ok" not in result["add"], result
    assert "RBAC: access denied" in result["add"]["message"]
    assert result["size"] == {"ok": 3}
    data = stats(mesh)
    assert total(data, "rbac_denied", listener="dubbo_in", policy="no-add") == 1
    assert total(data, "rbac_allowed", listener="dubbo_in") == 4


def test_admin_needs_the_bearer_token(mesh):
    admin = "http://127.0.0.1:%d" % (mesh["admin"],)
    code, out = curl("-i", admin + "/ready")
    assert out.startswith("HTTP/1.1 401") and 'WWW-Authenticate: Bearer realm="txmesh admin"' in out
    assert status(admin + "/ready", "-H", "Authorization: Bearer wrong") == 401
    assert status(admin + "/ready", "-H", "Authorization: Bearer " + TOKEN) == 200
    code, out = curl("-H", "Authorization: Bearer " + TOKEN, admin + "/config_dump")
    assert TOKEN not in out and mesh["token"] in out
    assert total(stats(mesh), "admin_rq_unauthorized") >= 2


UNIX_CONFIG = """
admin: {address: "unix:%(sock)s"}
listeners:
- {name: web, address: "tcp:%(web)d:interface=127.0.0.1", default_cluster: app}
clusters: [{name: app, endpoints: [{address: "127.0.0.1:%(web)d"}]}]
"""


def test_admin_on_a_unix_socket_with_mode_0600_over_a_stale_socket():
    directory = tempfile.mkdtemp(prefix="txmesh-admin-")
    sock = os.path.join(directory, "admin.sock")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(sock)
    stale.close()  # what a killed process leaves behind: the file, nobody listening
    web = support.freePort()
    proc = support.startTxmesh(UNIX_CONFIG % {"sock": sock, "web": web}, web)
    try:
        mode = os.stat(sock).st_mode
        assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
        code, out = curl("--unix-socket", sock, "http://admin/ready")
        assert (code, out) == (0, "LIVE\n")
        code, out = curl("-i", "--unix-socket", sock, "http://admin/healthcheck/fail")
        assert out.startswith("HTTP/1.1 405") and "Allow: POST" in out
        assert status("http://admin/healthcheck/fail", "--unix-socket", sock, "-X", "POST") == 200
        assert curl("--unix-socket", sock, "http://admin/ready")[1] == "HEALTHCHECK FAILED\n"
        assert "removed the stale admin socket" in proc.output()
    finally:
        proc.stop()
    assert not os.path.exists(sock)  # removed on a clean stop
