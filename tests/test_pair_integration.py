"""
The sidecar pair end to end (docs/sidecar-pair.md): real clients (curl, grpcio, the sofa-rpc-node Dubbo consumer)
call real apps (tests/upstream_server.py, tests/grpc_peers/echo_server.py, tests/dubbo_peers/provider.js) three
ways, and must get the same answers each way:

  - ``direct``: client -> app
  - ``hop``:    client -> inbound sidecar -> app                      (one txmesh, etc/inbound.yaml)
  - ``pair``:   client -> outbound sidecar -> inbound sidecar -> app  (two txmesh processes, etc/outbound.yaml)

The two txmesh processes run the shipped etc/outbound.yaml and etc/inbound.yaml, with only their ports (free
loopback ports), the peer and app addresses and the access log paths changed (L{pairConfigs}), so the examples
cannot drift from what is tested.  All processes are module-scoped; every call has a deadline.
"""

import json
import os
import shutil
import subprocess
import tempfile
import time
import uuid

import grpc
import pytest
import yaml

from tests import support
from tests.test_grpc_integration import OPTIONS, call
from tests.test_grpc_integration import startPeer as startGrpcPeer
from tests.test_integration_dubbo import NODE, PEERS

pytestmark = pytest.mark.timeout(120)

ETC = os.path.join(support.ROOT, "etc")
TARGETS = ["direct", "hop", "pair"]
HOST = "peer.svc"  # the outbound sidecar's HTTP virtual host (etc/outbound.yaml)
CURL = shutil.which("curl")
DUBBO = NODE is not None and os.path.isdir(os.path.join(PEERS, "node_modules", "sofa-rpc-node"))


def pairConfigs(app, inbound, outbound, inboundAdmin, outboundAdmin, accessLogs=None):
    """
    The texts of etc/inbound.yaml and etc/outbound.yaml for this machine's free ports.

    @param app: {"http": port, "grpc": port, "dubbo": port} of the local app.
    @param inbound: the same for the inbound sidecar's listeners; outbound: for the outbound sidecar's.
    @param accessLogs: (inbound path, outbound path) for the access logs, or None to keep stdout.
    @return: (inbound text, outbound text).
    """
    def load(name):
        with open(os.path.join(ETC, name)) as f:
            return yaml.safe_load(f)

    logs = accessLogs or (None, None)
    return (rewrite(load("inbound.yaml"), inboundAdmin, inbound, app, logs[0]),
            rewrite(load("outbound.yaml"), outboundAdmin, outbound, inbound, logs[1]))


def rewrite(cfg, admin, listen, upstream, logPath):
    """
    A sidecar config (parsed) moved to this machine's ports: the admin, each listener by its protocol (``listen``:
    {"http": port, "grpc": port, "dubbo": port}), each cluster's one endpoint likewise (``upstream``), and the
    access logs to ``logPath`` (None keeps them).  Also used by tests/test_sidecar_pair_mtls.py.

    @return: the YAML text.
    """
    cfg["admin"]["address"] = "tcp:%d:interface=127.0.0.1" % admin
    for listener in cfg["listeners"]:
        proto = {"http1": "http", "grpc": "grpc", "dubbo": "dubbo"}[listener["protocol"]]
        listener["address"] = "tcp:%d:interface=127.0.0.1" % listen[proto]
        for f in listener["filters"]:
            if f["name"] == "access_log" and logPath:
                f["config"]["path"] = logPath
    for cluster in cfg["clusters"]:
        proto = {"http1": "http", "grpc": "grpc", "dubbo": "dubbo"}[cluster["protocol"]]
        [endpoint] = cluster["endpoints"]
        endpoint["address"] = "127.0.0.1:%d" % upstream[proto]
    return yaml.safe_dump(cfg, sort_keys=False)


def startPair(app, accessLogs=None):
    """
    Start the inbound then the outbound sidecar in front of ``app`` (as in L{pairConfigs}).

    @return: (procs to stop, {"hop": ports of the inbound, "pair": ports of the outbound}, admin ports).
    """
    ports = {side: {p: support.freePort() for p in ("http", "grpc", "dubbo")} for side in ("hop", "pair")}
    admins = {"hop": support.freePort(), "pair": support.freePort()}
    inText, outText = pairConfigs(app, ports["hop"], ports["pair"], admins["hop"], admins["pair"], accessLogs)
    procs = []
    try:
        for side, text in (("hop", inText), ("pair", outText)):
            proc = support.startTxmesh(text, admins[side])
            procs.append(proc)
            for port in ports[side].values():
                support.waitForPort(port, proc=proc.popen)
    except Exception:
        for p in reversed(procs):
            p.stop()
        raise
    return procs, ports, admins


def startApps(procs):
    """
    Start the local app: tests/upstream_server.py, the gRPC echo peer and (when installed) the sofa-rpc-node Dubbo
    provider, appending each to ``procs`` (to stop).  Also used by tests/test_sidecar_pair_mtls.py.

    @return: {"http": port, "grpc": port, "dubbo": port}.
    """
    up, httpPort, _ = support.startUpstream()
    procs.append(up)
    grpcPeer, grpcPort = startGrpcPeer()
    procs.append(grpcPeer)
    dubboPort = support.freePort()
    if DUBBO:
        provider = support.Proc([NODE, os.path.join(PEERS, "provider.js"), str(dubboPort)], cwd=PEERS)
        procs.append(provider)
        support.waitForPort(dubboPort, proc=provider.popen)
    return {"http": httpPort, "grpc": grpcPort, "dubbo": dubboPort}


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    procs = []
    try:
        app = startApps(procs)
        logDir = tmp_path_factory.mktemp("pairlogs")
        logs = (str(logDir / "inbound.log"), str(logDir / "outbound.log"))
        meshProcs, ports, admins = startPair(app, logs)
        procs += meshProcs
        ports["direct"] = app
        channels = {t: grpc.insecure_channel("127.0.0.1:%d" % ports[t]["grpc"], options=OPTIONS) for t in TARGETS}
        try:
            yield {"ports": ports, "admins": admins, "channels": channels, "logs": logs}
        finally:
            for c in channels.values():
                c.close()
    finally:
        for p in reversed(procs):
            p.stop()


# ---------------------------------------------------------------------------------------------------- HTTP/1.1


def curl(port, path, *args):
    """curl's response body and headers (-D) for one request to 127.0.0.1:port with Host: peer.svc."""
    headers = tempfile.NamedTemporaryFile(prefix="txmesh-curl-", delete=False)
    headers.close()
    try:
        out = subprocess.run([CURL, "-sS", "--max-time", "10", "-D", headers.name, "-H", "Host: " + HOST]
                             + list(args) + ["http://127.0.0.1:%d%s" % (port, path)],
                             capture_output=True, timeout=20)
        assert out.returncode == 0, out.stderr
        with open(headers.name, "rb") as f:
            return out.stdout, f.read()
    finally:
        os.unlink(headers.name)


def echoed(body):
    """The parts of upstream_server.py's /echo answer that must not depend on the path taken."""
    data = json.loads(body)
    return {"method": data["method"], "path": data["path"], "body_length": data["body_length"],
            "body_sha256": data["body_sha256"], "host": dict(data["headers"]).get("host")}


needsCurl = pytest.mark.skipif(CURL is None, reason="curl not installed")


@needsCurl
@pytest.mark.parametrize("target", TARGETS)
def test_http_get(pair, target):
    body, head = curl(pair["ports"][target]["http"], "/echo/get?q=1")
    assert head.startswith(b"HTTP/1.1 200")
    assert echoed(body) == echoed(curl(pair["ports"]["direct"]["http"], "/echo/get?q=1")[0])
    assert echoed(body)["path"] == "/echo/get?q=1" and echoed(body)["host"] == HOST


@needsCurl
@pytest.mark.parametrize("target", TARGETS)
def test_http_post_body(pair, target, tmp_path):
    data = tmp_path / "body.bin"
    data.write_bytes(os.urandom(300000))
    body, _ = curl(pair["ports"][target]["http"], "/echo/post", "--data-binary", "@%s" % data)
    direct, _ = curl(pair["ports"]["direct"]["http"], "/echo/post", "--data-binary", "@%s" % data)
    assert echoed(body) == echoed(direct)
    assert echoed(body)["body_length"] == 300000


@needsCurl
@pytest.mark.parametrize("target", TARGETS)
def test_http_chunked_both_ways(pair, target, tmp_path):
    data = tmp_path / "body.bin"
    data.write_bytes(os.urandom(100000))
    body, _ = curl(pair["ports"][target]["http"], "/echo/chunked", "-H", "Transfer-Encoding: chunked",
                   "--data-binary", "@%s" % data)
    assert echoed(body)["body_length"] == 100000
    assert echoed(body)["body_sha256"] == echoed(curl(pair["ports"]["direct"]["http"], "/echo/chunked", "-H",
                                                      "Transfer-Encoding: chunked", "--data-binary",
                                                      "@%s" % data)[0])["body_sha256"]
    body, head = curl(pair["ports"][target]["http"], "/chunked/1000/50")  # a chunked response
    assert head.startswith(b"HTTP/1.1 200") and body == b"y" * 50000


def appHeaders(pair, target, *args):
    body, _ = curl(pair["ports"][target]["http"], "/echo/headers", *args)
    return dict(json.loads(body)["headers"])


@needsCurl
@pytest.mark.parametrize("target", ["hop", "pair"])
def test_app_sees_forwarding_headers(pair, target):
    """
    Envoy's trust model as the shipped pair sets it (traffic_direction): the outbound sidecar appends nothing (the
    app's loopback address does not leak into the mesh), the inbound appends its peer and trusts one hop; so the
    app behind one hop or a pair sees exactly one x-forwarded-for entry, the caller (here 127.0.0.1), one
    x-forwarded-proto ``http`` and one x-request-id (a UUID txmesh made).
    """
    headers = appHeaders(pair, target)
    assert headers["x-forwarded-proto"] == "http"
    assert headers["x-forwarded-for"] == "127.0.0.1"
    assert str(uuid.UUID(headers["x-request-id"])) == headers["x-request-id"]


def readLog(path, needle, timeout=5.0):
    """The access log line holding ``needle`` (lines are written within a second); bounded."""
    deadline = time.monotonic() + timeout
    while True:
        if os.path.exists(path):
            with open(path) as f:
                lines = [ln for ln in f if needle in ln]
            if lines:
                return lines
        assert time.monotonic() < deadline, "%r not in %s after %gs" % (needle, path, timeout)
        time.sleep(0.05)


@needsCurl
def test_one_call_in_both_access_logs_by_request_id(pair):
    """The id the outbound sidecar gives a call is the one the app sees and both access logs show."""
    path = "/echo/logs-%s" % uuid.uuid4().hex
    body, _ = curl(pair["ports"]["pair"]["http"], path)
    rid = dict(json.loads(body)["headers"])["x-request-id"]
    inboundLog, outboundLog = pair["logs"]
    [outLine] = readLog(outboundLog, path)
    [inLine] = readLog(inboundLog, path)
    assert ' "%s" "curl/' % rid in outLine and ' "%s" "curl/' % rid in inLine  # the user agent follows the id
    assert '"GET %s HTTP/1.1" 200' % path in outLine and '"GET %s HTTP/1.1" 200' % path in inLine


@needsCurl
def test_request_id_from_the_app_is_kept(pair):
    """
    The app's own x-request-id crosses the pair: the outbound listener does not use the remote address (its peer
    is the local app) and the inbound trusts one hop, so the callee's app and both access logs share the caller's id.
    """
    rid = str(uuid.uuid4())
    assert appHeaders(pair, "pair", "-H", "X-Request-Id: " + rid)["x-request-id"] == rid


# ---------------------------------------------------------------------------------------------------- gRPC


@pytest.mark.parametrize("target", TARGETS)
def test_grpc_unary(pair, target):
    reply, c = call(pair["channels"][target], "Unary").with_call(b"hello", timeout=5)
    assert (reply, c.code()) == (b"hello", grpc.StatusCode.OK)


@pytest.mark.parametrize("target", TARGETS)
def test_grpc_server_streaming(pair, target):
    replies = list(call(pair["channels"][target], "ServerStream", "unary_stream")(b"20:1000", timeout=10))
    assert replies == [bytes([65 + i]) * 1000 for i in range(20)]


@pytest.mark.parametrize("target", TARGETS)
def test_grpc_client_streaming(pair, target):
    reqs = iter([b"x" * 100] * 20 + [b"y" * 100000])
    assert call(pair["channels"][target], "ClientStream", "stream_unary")(reqs, timeout=10) == b"21:102000"


@pytest.mark.parametrize("target", TARGETS)
def test_grpc_bidi(pair, target):
    reqs = iter([b"msg%d" % i for i in range(10)])
    replies = list(call(pair["channels"][target], "Bidi", "stream_stream")(reqs, timeout=10))
    assert replies == [b"msg%d" % i for i in range(10)]


@pytest.mark.parametrize("target", TARGETS)
def test_grpc_error_status_with_details(pair, target):
    with pytest.raises(grpc.RpcError) as info:
        call(pair["channels"][target], "Unary")(b"status:PERMISSION_DENIED:not for you", timeout=5)
    e = info.value
    assert (e.code(), e.details()) == (grpc.StatusCode.PERMISSION_DENIED, "not for you")
    trailing = dict(e.trailing_metadata())
    assert trailing["grpc-status-details-bin"] == b"\x08\x05details"
    assert trailing["x-detail"] == "yes"


# ---------------------------------------------------------------------------------------------------- Dubbo


@pytest.fixture(scope="module")
def dubboDirect(pair):
    return consume(pair["ports"]["direct"]["dubbo"])


def consume(port):
    out = subprocess.run([NODE, os.path.join(PEERS, "consumer.js"), "127.0.0.1:%d" % port, "basic", "1"],
                         cwd=PEERS, capture_output=True, timeout=60, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not DUBBO, reason="node or the Dubbo peers (npm ci in tests/dubbo_peers) not installed")
@pytest.mark.parametrize("target", ["hop", "pair"])
def test_dubbo_calls_and_business_exception(pair, dubboDirect, target):
    got = consume(pair["ports"][target]["dubbo"])
    assert got == dubboDirect
    assert got["echo"] == {"ok": "héllo"} and got["add"] == {"ok": 42}
    assert got["fail"]["message"] == "boom"  # the provider's exception, relayed over both hops
