"""
Config reload (issue 13 parts 1 and 2), in process on a memory reactor: the diff (txmesh/config_diff.py), the apply
path (txmesh/reload.py) through a real MeshService, SIGHUP, POST /reload and the cluster side (ClusterManager).
"""

import dataclasses
import random
import signal

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.error import CannotListenError, ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from zope.interface import implementer
from zope.interface.verify import verifyObject

from txmesh import config as _config
from txmesh.config_diff import ADDRESS, CONNECTIONS, ROUTES, adoptEntries, diffConfigs
from txmesh.control import MeshControl
from txmesh.errors import ConfigError
from txmesh.interfaces import IConfigApplier, IConfigSource, IServiceNotifier, IStreamFactorySwitch
from txmesh.reload import FileConfigSource
from txmesh.service import MeshService
from txmesh.stats import StatsStore
from txmesh.upstream.cluster import ClusterManager

from tests.test_reopen_logs import Signals

ROUTE = """
      - match: {{prefix: /}}
        direct_response: {{status: 200, body: "{body}"}}"""

MESH = """
admin: {{address: "tcp:9901:interface=127.0.0.1"}}
drain_timeout: 5s
listeners:
- name: web
  address: "tcp:{port}:interface=127.0.0.1"
  limits: {{idle_timeout: {idle}}}
  filters:
  - name: fault
    config: {{delay: {{fixed_delay: 1s, percentage: 100}}}}
  route_config:
    virtual_hosts:
    - name: all
      domains: ["*"]
      routes:{route}
{extra}
clusters:
- name: app
  endpoints: [{endpoints}]
"""

EXTRA = """- name: extra
  address: "tcp:15002:interface=127.0.0.1"
  route_config:
    virtual_hosts:
    - name: all
      domains: ["*"]
      routes:
      - match: {prefix: /}
        direct_response: {status: 200, body: "extra"}
"""


def meshText(body="one", port=15001, idle="300s", extra="", endpoints='{address: "10.0.0.1:80"}'):
    return MESH.format(port=port, idle=idle, route=ROUTE.format(body=body), extra=extra, endpoints=endpoints)


class Port:
    """A listening port of L{Reactor}: closed by stopListening."""

    def __init__(self, reactor, number, factory):
        self.reactor, self.number, self.factory = reactor, number, factory

    def getHost(self):
        return IPv4Address("TCP", "127.0.0.1", self.number)

    def stopListening(self):
        del self.reactor.listening[self.number]


class Reactor(MemoryReactorClock):
    """A memory reactor with ports that close, ports it refuses (``taken``) and queued callFromThread calls."""

    def __init__(self):
        MemoryReactorClock.__init__(self)
        self.listening = {}  # port number -> Port
        self.binds = []  # port numbers, in the order bound
        self.taken = set()
        self.fromThread = []

    def listenTCP(self, port, factory, backlog=50, interface=""):
        if port in self.taken:
            raise CannotListenError(interface, port, OSError(98, "Address already in use"))
        self.binds.append(port)
        p = self.listening[port] = Port(self, port, factory)
        return p

    def callFromThread(self, f, *args, **kw):
        self.fromThread.append((f, args, kw))

    def runQueued(self):
        queued, self.fromThread = self.fromThread, []
        for f, args, kw in queued:
            f(*args, **kw)


@implementer(IServiceNotifier)
class Notifier:
    def __init__(self):
        self.sent = []

    def ready(self, status):
        self.sent.append("READY")

    def reloading(self):
        self.sent.append("RELOADING")

    def stopping(self, status):
        self.sent.append("STOPPING")

    def status(self, text):
        pass

    def start(self, describe):
        pass

    def stop(self):
        pass


class Client:
    """One HTTP/1.1 connection to a port of the reactor."""

    def __init__(self, reactor, port):
        self.reactor = reactor
        self.transport = StringTransport()
        self.transport.lost = False
        self.protocol = reactor.listening[port].factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        self.protocol.makeConnection(self.transport)

    def send(self, path=b"/"):
        self.transport.clear()
        self.protocol.dataReceived(b"GET " + path + b" HTTP/1.1\r\nHost: a\r\n\r\n")
        self.reactor.advance(0)

    def closed(self):
        """Whether the server closed the connection (then it is lost, as a real transport would report)."""
        if self.transport.disconnecting and not self.transport.lost:
            self.transport.lost = True
            self.protocol.connectionLost(Failure(ConnectionDone()))
        return self.transport.disconnecting

    def body(self):
        """The response body so far ('' before the answer), after the fault filter's one-second delay."""
        data = self.transport.value()
        return data.partition(b"\r\n\r\n")[2].decode() if data.startswith(b"HTTP/1.1 200") else ""

    def get(self, path=b"/"):
        self.send(path)
        self.reactor.advance(1)
        return self.body()


@pytest.fixture
def world(tmp_path):
    path = tmp_path / "mesh.yaml"
    path.write_text(meshText())
    reactor, signals, notifier = Reactor(), Signals(), Notifier()
    mesh = MeshService(_config.load(str(path)), reactor, installSignal=signals, notifier=notifier)
    mesh.startService()

    class World:
        pass

    w = World()
    w.path, w.reactor, w.signals, w.notifier, w.mesh = path, reactor, signals, notifier, mesh

    def reload(text=None):
        if text is not None:
            path.write_text(text)
        d = mesh.reload()
        assert d.called, "a file reload on a memory reactor ends at once"
        return d.result

    w.reload = reload
    yield w
    if mesh.running:
        mesh.stopService()
        reactor.advance(10)


# --- the diff ---------------------------------------------------------------------------------------------------


def load(text):
    return _config.loads(text, "mesh.yaml")


def diff(old, new):
    old, new = load(old), load(new)
    running = {lc.name: lc for lc in old.listeners}
    new = dataclasses.replace(new, listeners=tuple(adoptEntries(running[lc.name], lc) if lc.name in running else lc
                                                   for lc in new.listeners))
    return diffConfigs(old, new)


def kinds(d):
    return {c.new.name: c.kind for c in d.listenersChanged}


def test_diff_of_the_same_text_is_empty():
    d = diff(meshText(), meshText())
    assert d.empty and d.listenersUnchanged == ("web",) and d.clustersUnchanged == ("app",)


def test_diff_listener_kinds():
    assert kinds(diff(meshText(), meshText(body="two"))) == {"web": ROUTES}
    assert kinds(diff(meshText(), meshText(idle="10s"))) == {"web": CONNECTIONS}
    assert kinds(diff(meshText(), meshText(port=15003, body="two"))) == {"web": ADDRESS}
    d = diff(meshText(), meshText(extra=EXTRA))
    assert [lc.name for lc in d.listenersAdded] == ["extra"] and not d.listenersChanged
    d = diff(meshText(extra=EXTRA), meshText())
    assert [lc.name for lc in d.listenersRemoved] == ["extra"] and d.listenersUnchanged == ("web",)


def test_diff_clusters_keep_pools_unless_a_pool_setting_changed():
    d = diff(meshText(), meshText(endpoints='{address: "10.0.0.1:80"}, {address: "10.0.0.2:80"}'))
    [change] = d.clustersChanged
    assert change.keepPools
    d = diff(meshText(), meshText().replace("- name: app\n", "- name: app\n  connect_timeout: 3s\n"))
    assert not d.clustersChanged[0].keepPools
    d = diff(meshText(), meshText() + "- name: b\n  endpoints: [{address: \"10.0.0.9:80\"}]\n")
    assert [c.name for c in d.clustersAdded] == ["b"]
    d = diff(meshText() + "- name: b\n  endpoints: [{address: \"10.0.0.9:80\"}]\n", meshText())
    assert [c.name for c in d.clustersRemoved] == ["b"]


def test_diff_access_log_of_the_same_raw_config_is_unchanged(tmp_path):
    text = meshText().replace("  - name: fault\n", "  - name: access_log\n    config: {path: %s}\n  - name: fault\n"
                              % (tmp_path / "access.log"))
    old, new = load(text), load(text)
    assert old.listeners[0].filters[0] != new.listeners[0].filters[0]  # each load opens its own file
    d = diff(text, text)
    assert d.empty


def test_diff_refuses_what_only_a_restart_changes():
    with pytest.raises(ConfigError) as e:
        diffConfigs(load(meshText()), load(meshText().replace("9901", "9902")))
    assert str(e.value) == ("mesh.yaml: admin: cannot change while txmesh runs (reload rejected; restart txmesh to "
                            "change it)")


# --- apply, through the service ---------------------------------------------------------------------------------


def test_interfaces(world):
    verifyObject(IConfigApplier, world.mesh.applier)
    verifyObject(IConfigSource, FileConfigSource(str(world.path)))
    verifyObject(IStreamFactorySwitch, world.mesh.listeners["web"].factory)


def test_route_change_new_streams_see_it_in_flight_ones_finish_on_theirs(world):
    old, inFlight = Client(world.reactor, 15001), Client(world.reactor, 15001)
    assert old.get() == "one"
    inFlight.send()  # held by the fault filter's delay: its stream started on the old template
    result = world.reload(meshText(body="two"))
    assert (result["outcome"], result["error"], result["version"]) == ("applied", None, 2)
    assert result["changes"]["listeners"]["routes"] == ["web"]
    assert Client(world.reactor, 15001).get() == "two"  # a new connection
    assert inFlight.body() == "one"  # answered at the end of the delay, on the route it started with
    assert old.get() == "two"  # the open connection's next stream takes the new template
    assert world.reactor.binds == [15001, 9901]  # no rebind
    assert world.notifier.sent[-2:] == ["RELOADING", "READY"]
    assert world.mesh.stats.value("config_reload_success") == 1


def test_connection_change_new_factory_on_the_same_port_old_connections_drain(world):
    old = Client(world.reactor, 15001)
    before = world.mesh.listeners["web"].factory
    old.send()
    assert world.reload(meshText(idle="10s", body="two"))["changes"]["listeners"]["connections"] == ["web"]
    after = world.mesh.listeners["web"].factory
    assert after is not before and after.limits.idleTimeout == 10 and before in world.mesh.retiring
    assert world.reactor.binds == [15001, 9901]
    assert Client(world.reactor, 15001).get() == "two"
    assert after.connections and before.connections == {old.protocol}
    world.reactor.advance(1)
    assert old.body() == "one" and old.closed()  # answered, then closed: drained
    assert before not in world.mesh.retiring and before not in world.mesh.overload.listenerFactories


def test_address_change_binds_the_new_address_then_drains_the_old(world):
    old = Client(world.reactor, 15001)
    old.send()
    assert world.reload(meshText(port=15003, body="two"))["changes"]["listeners"]["address"] == ["web"]
    assert 15001 not in world.reactor.listening and world.reactor.binds == [15001, 9901, 15003]
    assert Client(world.reactor, 15003).get() == "two"
    world.reactor.advance(1)
    assert old.body() == "one" and old.closed()
    assert [lst["bound"] for lst in MeshControl(world.mesh, world.reactor).describeListeners()] == [
        ["127.0.0.1:15003"]]


def test_listener_added_then_removed_while_the_other_keeps_its_connections(world):
    web = Client(world.reactor, 15001)
    assert web.get() == "one"
    assert world.reload(meshText(extra=EXTRA))["changes"]["listeners"]["added"] == ["extra"]
    extra = Client(world.reactor, 15002)
    assert extra.get() == "extra"
    extra.send()
    extra.protocol.dataReceived(b"")  # a request answered at once: nothing in flight, the connection idle
    assert world.reload(meshText())["changes"]["listeners"]["removed"] == ["extra"]
    assert 15002 not in world.reactor.listening and "extra" not in world.mesh.listeners
    assert extra.closed()  # idle: closed by the drain
    assert web.get() == "one" and not web.closed()
    assert world.mesh.applier.version.version == 3


def test_removed_listener_connections_are_cut_after_the_drain_timeout(world):
    world.reload(meshText(extra=EXTRA.replace('direct_response: {status: 200, body: "extra"}',
                                              'route: {cluster: app}')))
    extra = Client(world.reactor, 15002)
    extra.send()  # to the cluster's host, which never answers (no upstream on a memory reactor)
    world.reload(meshText())
    factory = next(iter(world.mesh.retiring))
    assert factory.connections == {extra.protocol}
    world.reactor.advance(5)  # drain_timeout
    assert world.mesh.retiring == set() and extra.closed()


def test_bind_failure_rejects_the_whole_reload(world):
    world.reactor.taken.add(15002)
    result = world.reload(meshText(body="two", extra=EXTRA))
    assert result["outcome"] == "rejected" and result["version"] == 1
    assert result["error"].startswith("listener 'extra' cannot listen on tcp:15002:interface=127.0.0.1: ")
    assert "extra" not in world.mesh.listeners
    assert Client(world.reactor, 15001).get() == "one"  # the route change in the same file is not applied
    assert world.mesh.stats.value("config_reload_failed") == 1


def test_invalid_file_is_rejected_with_the_check_error_and_changes_nothing(world):
    bad = meshText(body="two").replace("  address: \"tcp:15001", "  adress: \"tcp:15001")
    world.path.write_text(bad)
    with pytest.raises(ConfigError) as expected:
        _config.load(str(world.path))
    result = world.reload()
    assert result["outcome"] == "rejected" and result["error"] == str(expected.value)
    assert result["error"].startswith(str(world.path) + ":")
    assert Client(world.reactor, 15001).get() == "one"
    assert world.mesh.stats.value("config_reload_failed") == 1
    assert world.notifier.sent[-2:] == ["RELOADING", "READY"]
    assert world.mesh.configDump()["version_info"]["version"] == 1


def test_fixed_part_changed_is_rejected(world):
    result = world.reload(meshText().replace("9901", "9902"))
    assert result["outcome"] == "rejected" and "admin: cannot change while txmesh runs" in result["error"]
    assert world.reactor.binds == [15001, 9901]


def test_same_file_is_unchanged(world):
    result = world.reload()
    assert (result["outcome"], result["version"]) == ("unchanged", 1)
    assert world.mesh.stats.value("config_reload_success") == 1


def test_version_in_config_dump_and_server_info(world):
    world.reload(meshText(body="two"))
    world.reload(meshText(body="two") + "- name: b\n  endpoints: [{address: \"10.0.0.9:80\"}]\n")
    dump = world.mesh.configDump()
    info = dump["version_info"]
    assert info["version"] == 3 and info["source"] == "file" and info["location"] == str(world.path)
    assert info["listeners"]["web"]["version"] == 2 and info["clusters"] == {
        "app": {"version": 1, "source": "file", "location": str(world.path)},
        "b": {"version": 3, "source": "file", "location": str(world.path)}}
    assert dump["clusters"][1]["name"] == "b"
    server = MeshControl(world.mesh, world.reactor).serverInfo()
    assert (server["config_version"], server["config_source"]) == (3, "file")
    assert server["config_digest"] == info["digest"]
    assert world.mesh.stats.value("config_version") == 3


def test_sighup_reloads_on_the_reactor(world):
    handler = world.signals.handlers[signal.SIGHUP]
    world.path.write_text(meshText(body="two"))
    handler(signal.SIGHUP, None)
    assert Client(world.reactor, 15001).get() == "one"  # nothing done in the signal handler itself
    world.reactor.runQueued()
    assert Client(world.reactor, 15001).get() == "two"
    world.mesh.stopService()
    world.reactor.advance(10)
    assert world.signals.handlers[signal.SIGHUP] is signal.SIG_DFL


def test_post_reload(world):
    world.path.write_text(meshText(body="two"))
    admin = world.reactor.listening[9901].factory.buildProtocol(None)
    transport = StringTransport()
    admin.makeConnection(transport)
    admin.dataReceived(b"POST /reload HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n")
    head, _, body = transport.value().partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and b'"outcome": "applied"' in body and b'"version": 2' in body
    assert Client(world.reactor, 15001).get() == "two"


def test_clusters_added_changed_removed(world):
    clusters = world.mesh.clusters
    app = clusters.get("app")
    host = app.hosts[0]
    pool = app.poolFor(host)
    world.reload(meshText(endpoints='{address: "10.0.0.1:80"}, {address: "10.0.0.2:80"}')
                 + "- name: b\n  endpoints: [{address: \"10.0.0.9:80\"}]\n")
    assert clusters.get("app") is app and app.hosts[0] is host and app.poolFor(host) is pool  # kept
    assert [h.address for h in app.hosts] == ["10.0.0.1:80", "10.0.0.2:80"] and clusters.get("b") is not None
    world.reload(meshText().replace("- name: app\n", "- name: app\n  connect_timeout: 3s\n"))
    assert app.poolFor(host) is not pool and app.config.connectTimeout == 3  # a pool setting changed: new pools
    assert clusters.get("b") is None and [c["name"] for c in clusters.describe()] == ["app"]


# --- ClusterManager.updateCluster on its own ------------------------------------------------------------------------

CLUSTERS = """
listeners: [{{name: l, address: "tcp:0", route_config: {{virtual_hosts: [{{name: v, domains: ["*"], routes: [
  {{match: {{prefix: /}}, route: {{cluster: c}}}}]}}]}}}}]
clusters:
- name: c
  lb_policy: {policy}
  endpoints: [{{address: "10.0.0.1:80"}}, {{address: "10.0.0.2:80"}}]
{more}
"""


def test_update_cluster_health_checks_and_outlier_detection_follow_the_config():
    first = load(CLUSTERS.format(policy="round_robin", more="  outlier_detection: {}\n  health_checks: [{}]"))
    manager = ClusterManager(Reactor(), first.clusters, lambda c: None, StatsStore(), random.Random(0))
    cluster = manager.get("c")
    manager.startHealthChecks()
    assert not cluster.hosts[0].healthy  # pending its first check
    second = load(CLUSTERS.format(policy="least_request", more=""))
    manager.updateCluster(second.clusters[0], keepPools=True)
    assert cluster.healthChecker is None and cluster.outlierDetector is None
    assert all(h.healthy for h in cluster.hosts)  # the checker's flags went with it
    assert cluster.describe()["lb_policy"] == "least_request"


STATIC = """  discovery:
    type: static
    endpoints: [{address: "%s"}]"""


def test_discovery_source_replaced_when_its_config_changes_and_added_clusters_discover(world):
    discovered = meshText().replace("  endpoints: [{address: \"10.0.0.1:80\"}]\n", STATIC % "10.0.0.5:80" + "\n")
    assert "discovery" in discovered
    world.reload(discovered)  # fixed endpoints -> a static source, started at once
    clusters = world.mesh.clusters
    assert [h.address for h in clusters.get("app").hosts] == ["10.0.0.5:80"]
    first = clusters.discovery("app")
    world.reload(discovered.replace("10.0.0.5", "10.0.0.6"))
    assert clusters.discovery("app") is not first
    assert [h.address for h in clusters.get("app").hosts] == ["10.0.0.6:80"]
    same = clusters.discovery("app")
    world.reload(discovered.replace("10.0.0.5", "10.0.0.6") + "- name: b\n" + STATIC % "10.0.0.9:80" + "\n")
    assert clusters.discovery("app") is same  # unchanged: kept
    assert [h.address for h in clusters.get("b").hosts] == ["10.0.0.9:80"]


def test_reload_while_the_listeners_are_drained_is_rejected(world):
    MeshControl(world.mesh, world.reactor).drainListeners(False)
    result = world.reload(meshText(body="two"))
    assert result["outcome"] == "rejected" and "POST /drain_listeners" in result["error"]


def test_reload_before_serving_is_rejected(world):
    world.mesh.serving = False  # as while discovered clusters warm up: the accept gate holds the ports
    result = world.reload(meshText(body="two"))
    assert result["outcome"] == "rejected" and result["error"].startswith("txmesh is starting")


def test_the_registration_listener_cannot_move():
    from tests.test_registration import BASE, REGISTRATION

    old = load(BASE + REGISTRATION)
    moved = load(BASE.replace("tcp:20880:interface=0.0.0.0", "tcp:20881:interface=0.0.0.0") + REGISTRATION)
    with pytest.raises(ConfigError) as e:
        diffConfigs(old, moved)
    assert str(e.value).startswith("mesh.yaml: listeners[0].address: the listener 'registration' publishes cannot")
    other = load(BASE.replace("tcp:8080:", "tcp:8081:") + REGISTRATION)
    assert kinds(diffConfigs(old, other)) == {"http_in": ADDRESS}
