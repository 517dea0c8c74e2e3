"""
Tests for txmesh.control (the admin API's IMeshControl) on a real MeshService over a MemoryReactorClock: what the
admin pages say and do, read through the admin Site the service builds.
"""

import json
import re

import pytest
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import LogLevel
from twisted.web.server import Site
from zope.interface.verify import verifyObject

import txmesh
from tests.test_admin import request
from txmesh.config import loads
from txmesh.control import MeshControl, configDigest
from txmesh.interfaces import IMeshControl
from txmesh.logs import OperatorLogObserver
from txmesh.service import MeshService
from txmesh.speedups import describe as describeSpeedups

CONFIG = """\
node: {id: sidecar-1, cluster: shop}
admin: {address: "tcp:0:interface=127.0.0.1"}
listeners:
- name: web
  address: tcp:0
  route_config:
    virtual_hosts:
    - name: all
      domains: ["*"]
      routes:
      - {name: api, match: {prefix: /api}, route: {cluster: app}}
- {name: rpc, protocol: dubbo, address: tcp:0, default_cluster: app}
clusters:
- name: app
  endpoints: [{address: "127.0.0.1:18080"}]
  health_checks: [{type: tcp, interval: 5s}]
  outlier_detection: {consecutive_5xx: 3}
"""


class World:
    def __init__(self):
        self.reactor = MemoryReactorClock()
        self.config = loads(CONFIG, filename="/etc/txmesh/mesh.yaml")
        self.mesh = MeshService(self.config, self.reactor, installSignal=lambda signum, handler: None)
        self.site = None

    def start(self):
        self.mesh.startService()
        self.site = [args[1] for args in self.reactor.tcpServers if isinstance(args[1], Site)][0]

    def get(self, target, method=b"GET"):
        return request(self.site, target, method=method, headers=[b"Content-Length: 0"] if method == b"POST" else [])


@pytest.fixture
def world():
    w = World()
    w.start()
    return w


def test_providesTheInterface(world):
    verifyObject(IMeshControl, MeshControl(world.mesh, world.reactor))


def test_serverInfo(world):
    world.reactor.advance(12.5)
    info = world.get(b"/server_info").json()
    assert info["version"] == txmesh.__version__
    assert info["reactor"] == "twisted.internet.testing.MemoryReactorClock"
    assert info["uptime_seconds"] == 12.5
    assert info["state"] == "live"
    assert info["config_file"] == "/etc/txmesh/mesh.yaml"
    assert info["config_digest"] == configDigest(world.config.raw)
    assert info["config_digest"].startswith("sha256:") and len(info["config_digest"]) == 71
    assert info["node"] == {"id": "sidecar-1", "cluster": "shop"}
    assert (info["hot_path_mode"], info["workers"], info["listeners"], info["clusters"]) == (describeSpeedups()["mode"], 1, 2, 1)
    assert info["compiled_modules"] == describeSpeedups()["compiled"]
    assert info["healthcheck_failed"] is False


def test_configDigestFollowsTheConfig():
    assert configDigest({"a": 1, "b": [1, 2]}) == configDigest({"b": [1, 2], "a": 1})
    assert configDigest({"a": 1}) != configDigest({"a": 2})


def test_stateStarting():
    w = World()
    info = MeshControl(w.mesh, w.reactor).serverInfo()
    assert info["state"] == "starting"


def test_listeners(world):
    web = world.reactor.tcpServers[0][1]
    protocol = web.buildProtocol(None)
    protocol.makeConnection(StringTransport())
    listeners = world.get(b"/listeners").json()
    assert [(entry["name"], entry["protocol"], entry["address"]) for entry in listeners] == [
        ("web", "http1", "tcp:0"), ("rpc", "dubbo", "tcp:0")]
    assert [(entry["connections"], entry["draining"], entry["accepting"]) for entry in listeners] == [
        (1, False, True), (0, False, True)]


def test_healthcheckFailThenOk(world):
    assert world.get(b"/ready").code == 200
    r = world.get(b"/healthcheck/fail", b"POST")
    assert r.json() == {"healthcheck_failed": True, "registration": "not configured"}
    r = world.get(b"/ready")
    assert (r.code, r.body) == (503, b"HEALTHCHECK FAILED\n")
    assert world.get(b"/server_info").json()["healthcheck_failed"] is True
    assert world.get(b"/healthcheck/ok", b"POST").json()["healthcheck_failed"] is False
    assert world.get(b"/ready").code == 200


def test_drainListenersStopsAcceptingKeepsConnections(world):
    web = world.reactor.tcpServers[0][1]
    protocol = web.buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    protocol.dataReceived(b"GET /api HTTP/1.1\r\nHost: x\r\n\r\n")  # in flight: the upstream never answers
    body = world.get(b"/drain_listeners", b"POST").json()
    assert body == {"stopped": 2, "graceful": False, "connections": 1, "registration": "not configured"}
    assert not transport.disconnecting  # the open connection goes on
    assert not world.mesh.getServiceNamed("listener:web").running
    r = world.get(b"/ready")
    assert (r.code, r.body) == (503, b"DRAINING\n")
    listeners = world.get(b"/listeners").json()
    assert [(e["accepting"], e["draining"], e["bound"]) for e in listeners] == [(False, True, [])] * 2
    assert world.get(b"/server_info").json()["state"] == "draining"
    # again: nothing more to stop
    assert world.get(b"/drain_listeners?graceful", b"POST").json()["stopped"] == 0
    # the shutdown afterwards still completes
    d = world.mesh.stopService()
    world.reactor.advance(world.config.drainTimeout + 1)
    assert d.called


def test_gracefulDrainClosesIdleConnections(world):
    web = world.reactor.tcpServers[0][1]
    protocol = web.buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    body = world.get(b"/drain_listeners?graceful", b"POST").json()
    assert body["graceful"] is True
    # it has sent nothing yet: the listener's drain_grace (1 s) for its first request, then closed
    assert not transport.disconnecting
    world.reactor.advance(1.0)
    assert transport.disconnecting


def test_logLevel(world):
    assert world.get(b"/logging").json()["observer"] == "twistd"
    r = world.get(b"/logging?level=debug", b"POST")
    assert r.code == 409
    world.mesh.logObserver = observer = OperatorLogObserver(open("/dev/null", "w"))
    assert world.get(b"/logging").json()["level"] == "info"
    r = world.get(b"/logging?level=debug", b"POST")
    assert (r.code, r.json()["level"]) == (200, "debug")
    assert observer.level is LogLevel.debug
    assert world.get(b"/logging?level=WARNING", b"POST").json()["level"] == "warn"
    assert world.get(b"/logging?level=verbose", b"POST").code == 400
    assert observer.level is LogLevel.warn


def test_explainThroughTheService(world):
    r = world.get(b"/explain?listener=web&path=/api/x&authority=shop")
    assert r.code == 200
    body = r.json()
    assert (body["virtual_host"], body["route"]["name"], body["action"]["cluster"]) == ("all", "api", "app")
    assert body["action"]["host"]["address"] == "127.0.0.1:18080"
    body = world.get(b"/explain?listener=rpc&interface=com.example.Svc&method=get").json()
    assert body["route"] == {"name": "default_cluster", "default_route": True}
    r = world.get(b"/explain?path=/")
    assert r.code == 400 and b"listener= is required" in r.body
    assert json.loads(world.get(b"/explain?listener=web&path=/other").body)["route"] is None


SNAKE = re.compile(r"^[a-z0-9_]+$")


def keysOf(value, path=""):
    """Every dict key in a JSON value, with its path."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield path + "." + k, k
            yield from keysOf(v, path + "." + k)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from keysOf(v, "%s[%d]" % (path, i))


@pytest.mark.parametrize("page", [b"/clusters", b"/server_info", b"/listeners", b"/logging",
                                  b"/explain?listener=web&path=/api"])
def test_everyJsonKeyIsSnakeCase(world, page):
    """One style for every admin answer (issue 16 part 4); /clusters with health checks and outlier detection."""
    world.reactor.advance(6)
    body = world.get(page).json()
    camel = [path for path, key in keysOf(body) if not SNAKE.match(key)]
    assert camel == []
    if page == b"/clusters":
        host = body[0]["hosts"][0]
        assert {"health_flags", "active_requests", "health_check", "outlier"} <= set(host)
        assert "pending_requests" in body[0]["circuit_breakers"]
