"""
The discovery core (issue 12, parts 1 and 4): ClusterDiscovery applies host sets to a real Cluster, keeps the last
known set when its source fails, counts with Envoy's names, reports staleness at scrape time, logs once per change
of state; ClusterManager wires sources and warming; the static source and its config; /clusters and /metrics.
"""

import json
import random

import pytest
from twisted.internet.task import Clock
from twisted.logger import Logger
from twisted.plugin import getPlugins
from twisted.python.failure import Failure
from zope.interface import implementer
from zope.interface.verify import verifyObject

import txmesh.plugins
from tests.test_admin import request
from tests.test_cluster import FakePool, lbFactory
from txmesh.admin import makeAdminSite
from txmesh.config import ClusterConfig, EndpointConfig, loads
from txmesh.discovery.base import ClusterDiscovery
from txmesh.discovery.static import StaticSource
from txmesh.discovery_config import DiscoveryConfig
from txmesh.errors import ConfigError
from txmesh.interfaces import IDiscoverySource, IDiscoverySourceFactory, IHostSetSink
from txmesh.protocols.http1.protocol import HTTP1
from txmesh.stats import StatsStore
from txmesh.upstream.cluster import Cluster, ClusterManager


@implementer(IDiscoverySource)
class ScriptedSource:
    """A source the test drives: it reports what the test tells it to."""

    def __init__(self, sink):
        self.sink = sink
        self.started = self.stopped = False

    def start(self):
        self.started = True

    def stop(self):
        self.stopped = True

    def describe(self):
        return {"scripted": True}


@implementer(IDiscoverySourceFactory)
class ScriptedFactory:
    name = "scripted"
    keys = ()
    registryType = None

    def __init__(self):
        self.sources = []
        self.contexts = []

    def buildConfig(self, raw, context):
        return None

    def makeSource(self, config, context, sink):
        self.contexts.append(context)
        self.sources.append(ScriptedSource(sink))
        return self.sources[-1]


def ep(port, weight=1, **kw):
    return EndpointConfig("10.0.0.1", port, weight, **kw)


def makeDiscovered(keepLastKnown=True, initialFetchTimeout=5.0):
    clock = Clock()
    store = StatsStore()
    factory = ScriptedFactory()
    dconfig = DiscoveryConfig(type="scripted", factory=factory, keepLastKnown=keepLastKnown,
                              initialFetchTimeout=initialFetchTimeout)
    config = ClusterConfig("web", lbPolicy="round_robin", descriptor=HTTP1, discovery=dconfig)
    pools = []
    cluster = Cluster("web", config, (), lbFactory("round_robin"), lambda h: pools.append(FakePool(h)) or pools[-1],
                      random.Random(1), store.scope(cluster="web"), clock=clock)
    sink = ClusterDiscovery(cluster, dconfig, clock, store.scope(cluster="web"))
    events = []
    sink.log = Logger(observer=events.append)
    return clock, store, factory, cluster, sink, events, pools


def value(store, name):
    return store.value(name, cluster="web")


def test_sink_provides_its_interface_and_applies_sets():
    clock, store, factory, cluster, sink, events, _ = makeDiscovered()
    assert verifyObject(IHostSetSink, sink)
    warm = sink.start()
    source = factory.sources[0]
    assert verifyObject(IDiscoverySource, source) and source.started
    assert not warm.called and sink.describe()["state"] == "waiting"
    assert cluster.chooseHost(None) is None  # an empty cluster until the first set
    sink.hostsUpdated([ep(1), ep(2)], "v1")
    assert warm.called
    assert {h.address for h in cluster.hosts} == {"10.0.0.1:1", "10.0.0.1:2"}
    assert cluster.chooseHost(None) is not None
    d = sink.describe()
    assert (d["state"], d["version"], d["staleness_seconds"], d["source"]) == ("ok", "v1", 0.0, {"scripted": True})
    assert [value(store, n) for n in ("update_attempt", "update_success", "update_failure", "update_empty",
                                      "update_no_rebuild")] == [1, 1, 0, 0, 0]
    assert len(events) == 1 and "first host set" in events[0]["log_format"]


def test_unchanged_set_is_not_rebuilt():
    clock, store, factory, cluster, sink, _, _ = makeDiscovered()
    sink.start()
    sink.hostsUpdated([ep(1), ep(2)], "v1")
    assert value(store, "membership_change") == 1
    balancer = cluster._levels[0][2]
    sink.hostsUpdated([ep(2), ep(1)], "v2")  # same set, other order
    assert value(store, "update_no_rebuild") == 1 and value(store, "membership_change") == 1
    assert cluster._levels[0][2] is balancer
    assert sink.version == "v2"
    sink.hostsUpdated([ep(2), ep(1, weight=5)], "v3")  # a weight change is a change
    assert value(store, "membership_change") == 2
    assert {h.address: h.weight for h in cluster.hosts} == {"10.0.0.1:1": 5, "10.0.0.1:2": 1}
    kept = {h.port: h for h in cluster.hosts}[2]
    sink.hostsUpdated([ep(2, metadata=(("version", "2"),)), ep(1, weight=5)], "v4")  # new metadata, same host
    assert {h.port: h for h in cluster.hosts}[2] is kept and dict(kept.metadata) == {"version": "2"}


def test_removed_hosts_pools_drain_and_kept_hosts_keep_theirs():
    clock, store, factory, cluster, sink, _, pools = makeDiscovered()
    sink.start()
    sink.hostsUpdated([ep(1), ep(2)], "v1")
    kept, gone = cluster.hosts
    keptPool, gonePool = cluster.poolFor(kept), cluster.poolFor(gone)
    sink.hostsUpdated([ep(1), ep(3)], "v2")
    assert gonePool.draining and not keptPool.draining
    assert cluster.hosts[0] is kept and cluster.poolFor(kept) is keptPool


def test_failure_keeps_the_last_known_set_and_logs_once():
    clock, store, factory, cluster, sink, events, _ = makeDiscovered()
    sink.start()
    sink.hostsUpdated([ep(1)], "v1")
    clock.advance(10)
    for _ in range(3):
        sink.sourceFailed("registry unreachable")
        clock.advance(5)
    assert [h.address for h in cluster.hosts] == ["10.0.0.1:1"]
    assert value(store, "update_failure") == 3 and value(store, "update_attempt") == 4
    d = sink.describe()
    assert d["state"] == "failing" and d["last_failure"] == "registry unreachable"
    assert d["staleness_seconds"] == 15.0  # since the first failure after the last good set
    assert value(store, "discovery_staleness_seconds") == 15.0  # read at scrape time, no timer ticks it
    assert clock.getDelayedCalls() == []
    warnings = [e for e in events if "failing" in e["log_format"]]
    assert len(warnings) == 1 and "keeping the last known 1 host(s)" in warnings[0]["what"]
    sink.hostsUpdated([ep(1)], "v2")  # recovery with the same set: not rebuilt, state back to ok
    assert value(store, "update_no_rebuild") == 1 and value(store, "discovery_staleness_seconds") == 0.0
    recovered = [e for e in events if "recovered" in e["log_format"]]
    assert len(recovered) == 1 and recovered[0]["s"] == 15.0


def test_failure_without_keep_last_known_empties_the_cluster():
    clock, store, factory, cluster, sink, events, _ = makeDiscovered(keepLastKnown=False)
    sink.start()
    sink.hostsUpdated([ep(1)], "v1")
    sink.sourceFailed(Failure(ConnectionError("refused")))
    assert cluster.hosts == () and cluster.chooseHost(None) is None
    assert sink.describe()["last_failure"] == "refused"
    sink.hostsUpdated([ep(1)], "v1")  # the same set as before the failure is applied again
    assert [h.address for h in cluster.hosts] == ["10.0.0.1:1"]
    assert value(store, "update_no_rebuild") == 0


def test_invalid_data_counts_as_rejected():
    clock, store, factory, cluster, sink, _, _ = makeDiscovered()
    sink.start()
    sink.sourceFailed(Failure(ConfigError("must be a list", "endpoints", "/etc/eps.yaml", 3)))
    assert value(store, "update_rejected") == 1 and value(store, "update_failure") == 0
    assert sink.describe()["last_failure"] == "/etc/eps.yaml:3: endpoints: must be a list"


def test_empty_set_counted():
    clock, store, factory, cluster, sink, _, _ = makeDiscovered()
    sink.start()
    sink.hostsUpdated([], "0")
    assert value(store, "update_empty") == 1 and cluster.hosts == ()


def test_initial_fetch_timeout_warms_without_hosts():
    clock, store, factory, cluster, sink, events, _ = makeDiscovered(initialFetchTimeout=2.0)
    warm = sink.start()
    clock.advance(1.9)
    assert not warm.called and value(store, "discovery_staleness_seconds") == pytest.approx(1.9)
    clock.advance(0.1)
    assert warm.called and value(store, "init_fetch_timeout") == 1
    assert cluster.chooseHost(None) is None
    assert any("within" in e["log_format"] for e in events)
    sink.hostsUpdated([ep(1)], "late")  # a late set still applies
    assert len(cluster.hosts) == 1 and sink.describe()["state"] == "ok"


def test_failure_while_waiting_does_not_end_warming():
    clock, store, factory, cluster, sink, _, _ = makeDiscovered(initialFetchTimeout=3.0)
    warm = sink.start()
    sink.sourceFailed("not yet")
    assert not warm.called and sink.describe()["state"] == "failing"
    clock.advance(3)
    assert warm.called


def test_zero_initial_fetch_timeout_does_not_wait():
    clock, store, factory, cluster, sink, _, _ = makeDiscovered(initialFetchTimeout=0)
    assert sink.start().called


def test_stop_stops_the_source_and_releases_waiters():
    clock, store, factory, cluster, sink, _, _ = makeDiscovered()
    warm = sink.start()
    sink.stop()
    assert factory.sources[0].stopped and warm.called
    assert clock.getDelayedCalls() == []


# -- ClusterManager, config, admin ------------------------------------------------------------------------------

MESH = """
listeners:
  - name: l
    address: tcp:0:interface=127.0.0.1
    default_cluster: s
clusters:
  - name: s
    discovery:
      type: static
      keep_last_known: false
      initial_fetch_timeout: 250ms
      endpoints: [{address: "127.0.0.1:8001"}, {address: "127.0.0.1:8002", weight: 3, priority: 1,
                   locality: "eu/a", metadata: {version: "2"}}]
  - name: fixed
    endpoints: [{address: "127.0.0.1:9000"}]
"""


def makeManager(text=MESH, registries=None):
    mesh = loads(text)
    store = StatsStore()
    clock = Clock()
    manager = ClusterManager(clock, mesh.clusters, lambda config: None, store, random.Random(1),
                             registries=registries)
    return mesh, manager, store, clock


def test_static_source_through_the_manager():
    mesh, manager, store, clock = makeManager()
    assert mesh.cluster("s").discovery.keepLastKnown is False
    assert mesh.cluster("s").discovery.initialFetchTimeout == 0.25
    assert manager.get("s").hosts == ()
    warm = manager.startDiscovery()
    assert warm.called  # the static source delivers at start
    hosts = manager.get("s").hosts
    assert [(h.address, h.weight, h.priority, h.locality, dict(h.metadata)) for h in hosts] == [
        ("127.0.0.1:8001", 1, 0, "", {}), ("127.0.0.1:8002", 3, 1, "eu/a", {"version": "2"})]
    described = {c["name"]: c for c in manager.describe()}
    assert "discovery" not in described["fixed"]
    d = described["s"]["discovery"]
    assert (d["type"], d["registry"], d["state"], d["version"], d["source"]) == (
        "static", None, "ok", "static", {"endpoints": 2})
    assert verifyObject(IDiscoverySource, manager.discovery("s").source)
    manager.stopDiscovery()
    assert manager.discovery("fixed") is None


def test_the_static_source_is_a_plugin():
    found = {p.name: p for p in getPlugins(IDiscoverySourceFactory, txmesh.plugins)}
    assert {"static", "file"} <= set(found)
    for name in ("static", "file"):
        assert verifyObject(IDiscoverySourceFactory, found[name])
    mesh = loads(MESH)
    source = found["static"].makeSource(mesh.cluster("s").discovery.sourceConfig, None, None)
    assert isinstance(source, StaticSource)


def test_manager_passes_the_named_registry():
    factory = ScriptedFactory()
    dconfig = DiscoveryConfig(type="scripted", factory=factory, registry="zk")
    config = ClusterConfig("web", descriptor=HTTP1, lbFactory=lbFactory("round_robin"), discovery=dconfig)

    class Registries:
        asked = []

        def get(self, name):
            self.asked.append(name)
            return "the zk session"

    manager = ClusterManager(Clock(), [config], lambda c: None, StatsStore(), random.Random(1),
                             registries=Registries())
    assert Registries.asked == []  # no registry session before discovery starts
    manager.startDiscovery()
    assert Registries.asked == ["zk"]
    context = factory.contexts[0]
    assert (context.registry, context.clusterName, context.clusterProtocol) == ("the zk session", "web", "http1")


@pytest.mark.parametrize("snippet, message", [
    ("discovery: {type: static}", "clusters[0].discovery: missing required key 'endpoints'"),
    ("discovery: {type: static, endpoints: {}}", "clusters[0].discovery.endpoints: must be a list"),
    ("discovery: {type: static, endpoints: [{address: 'a:1'}, {address: 'a:1'}]}",
     "clusters[0].discovery.endpoints[1].address: duplicate endpoint 'a:1' (also clusters[0].discovery.endpoints[0])"),
    ("discovery: {type: static, endpoints: [{address: 'a:1', weight: 0}]}",
     "clusters[0].discovery.endpoints[0].weight: must be between 1 and 128, got 0"),
    ("discovery: {type: static, endpoints: [{addr: 'a:1'}]}",
     "clusters[0].discovery.endpoints[0].addr: unknown key 'addr'"),
    ("discovery: {type: static, endpoints: [], registry: zk}",
     "clusters[0].discovery.registry: discovery 'static' uses no registry"),
    ("discovery: {type: file}", "clusters[0].discovery: missing required key 'path'"),
    ("discovery: {type: file, path: /x, refresh_interval: 1ms}",
     "clusters[0].discovery.refresh_interval: must be at least 10ms"),
    ("discovery: {type: file, path: /x, refresh_interval: soon}",
     "clusters[0].discovery.refresh_interval: invalid duration 'soon'"),
    ("discovery: {type: file, path: 3}", "clusters[0].discovery.path: must be a string, not an integer"),
])
def test_source_config_errors_name_file_line_and_key(snippet, message):
    text = "listeners:\n  - {name: l, address: 'tcp:0'}\nclusters:\n  - name: c\n    %s\n" % (snippet,)
    with pytest.raises(ConfigError) as e:
        loads(text, filename="mesh.yaml")
    assert str(e.value).startswith("mesh.yaml:5: " + message), str(e.value)


def test_cluster_endpoints_keep_their_messages():
    text = ("listeners:\n  - {name: l, address: 'tcp:0'}\nclusters:\n  - name: c\n    endpoints:\n"
            "      - {address: 'a:1'}\n      - {address: 'a:99999'}\n")
    with pytest.raises(ConfigError) as e:
        loads(text, filename="mesh.yaml")
    assert str(e.value) == "mesh.yaml:7: clusters[0].endpoints[1].address: invalid port in 'a:99999' (must be 1..65535)"


def test_admin_shows_discovery_and_metrics_carry_the_gauge():
    mesh, manager, store, clock = makeManager()
    manager.startDiscovery()
    manager.discovery("s").sourceFailed("gone")
    clock.advance(7)
    site = makeAdminSite(store, manager, lambda: {}, lambda: True, reactor=Clock())

    def render(path):
        return request(site, b"/" + path.encode()).body.decode()

    clusters = {c["name"]: c for c in json.loads(render("clusters"))}
    d = clusters["s"]["discovery"]
    assert (d["state"], d["staleness_seconds"], d["last_failure"], d["keep_last_known"]) == ("failing", 7.0, "gone",
                                                                                             False)
    assert clusters["s"]["hosts"] == []  # keep_last_known: false emptied it
    metrics = render("metrics")
    assert 'txmesh_discovery_staleness_seconds{cluster="s"} 7.0' in metrics
    assert 'txmesh_update_failure_total{cluster="s"} 1.0' in metrics


def test_manager_warming_waits_for_every_discovered_cluster():
    text = MESH.replace("type: static", "type: file\n      path: /nonexistent/eps.yaml").replace(
        "      endpoints: [{address: \"127.0.0.1:8001\"}, {address: \"127.0.0.1:8002\", weight: 3, priority: 1,\n"
        "                   locality: \"eu/a\", metadata: {version: \"2\"}}]\n", "")
    mesh, manager, store, clock = makeManager(text)
    warm = manager.startDiscovery()
    assert not warm.called
    assert manager.discovery("s").describe()["last_failure"].startswith("cannot read /nonexistent/eps.yaml")
    clock.advance(0.25)
    assert warm.called
    assert store.value("init_fetch_timeout", cluster="s") == 1
    d = manager.stopDiscovery()
    assert d.called and clock.getDelayedCalls() == []


# -- an empty discovered cluster answers each protocol's no-healthy-upstream error ----------------------------------

EMPTY = """
listeners:
- name: l
  protocol: %(protocol)s
  address: tcp:0
  default_cluster: c
clusters:
- name: c
  protocol: %(cluster)s
  discovery: {type: file, path: /nonexistent/eps.yaml, initial_fetch_timeout: 1s}
"""


def emptyMesh(protocol, cluster):
    from txmesh.testing import InMemoryMesh
    mesh = InMemoryMesh(EMPTY % {"protocol": protocol, "cluster": cluster})
    warm = mesh.clusters.startDiscovery()
    mesh.advance(1)
    assert warm.called and mesh.clusters.get("c").hosts == ()
    return mesh


def test_empty_cluster_http1_is_503_uh():
    mesh = emptyMesh("http1", "http1")
    client = mesh.connect()
    client.request()
    response = client.response()
    assert response.status == 503 and response.header(b"x-txmesh-error") == b"no_healthy_upstream"
    assert mesh.responseFlags() == [{"UH"}]
    mesh.clusters.stopDiscovery()


def test_empty_cluster_grpc_is_unavailable():
    from tests.test_fault import grpcCall
    mesh = emptyMesh("grpc", "grpc")
    fields = grpcCall(mesh)
    assert fields[b"grpc-status"] == b"14" and fields[b"x-txmesh-error"] == b"no_healthy_upstream"
    mesh.clusters.stopDiscovery()


def test_empty_cluster_dubbo_is_service_not_found():
    from tests.test_dubbo_listener import ECHO, replies
    from txmesh.protocols.dubbo import codec as dc
    mesh = emptyMesh("dubbo", "dubbo")
    proto = mesh.factory.buildProtocol(None)
    from twisted.internet.testing import StringTransport
    transport = StringTransport()
    proto.makeConnection(transport)
    proto.dataReceived(ECHO)
    [reply] = replies(transport)
    assert reply.status == dc.SERVICE_NOT_FOUND and "no_healthy_upstream" in dc.decodeErrorMessage(reply)
    mesh.clusters.stopDiscovery()


def test_schema_knows_the_static_and_file_keys():
    import jsonschema
    import yaml
    from importlib import resources
    schema = json.loads(resources.files("txmesh").joinpath("mesh.schema.json").read_text())
    validator = jsonschema.Draft202012Validator(schema)
    validator.validate(yaml.safe_load(MESH))
    validator.validate(yaml.safe_load(EMPTY % {"protocol": "http1", "cluster": "http1"}).__or__(
        {"clusters": [{"name": "c", "discovery": {"type": "file", "path": "eps.yaml", "refresh_interval": "2s"}}]}))
    bad = yaml.safe_load(MESH)
    bad["clusters"][0]["discovery"]["endpoints"][0]["address"] = "no-port"
    assert list(validator.iter_errors(bad))


DUBBO = """
listeners:
- name: l
  protocol: dubbo
  address: tcp:0
  default_cluster: c
clusters:
- name: c
  protocol: dubbo
  discovery: {type: static, endpoints: [{address: "10.0.0.1:20880"}]}
"""


def test_dubbo_calls_queued_and_in_flight_survive_a_host_set_change():
    """A multiplexed pool: a call waiting for the removed host's first connect is served by it, then it closes."""
    from twisted.internet import defer
    from twisted.internet.testing import StringTransport

    from tests.test_dubbo_listener import ECHO, ECHO_RESP, answer, replies, sent
    from txmesh.protocols.dubbo import codec as dc
    from txmesh.protocols.dubbo.client import DubboClientProtocol
    from txmesh.testing import InMemoryMesh

    connects = []

    def connect(host, clusterConfig):
        d = defer.Deferred()
        connects.append((host.address, d))
        return d

    def upstream():
        p = DubboClientProtocol()
        p.makeConnection(StringTransport())
        return p

    mesh = InMemoryMesh(DUBBO, connect=connect)
    mesh.clusters.startDiscovery()
    proto = mesh.factory.buildProtocol(None)
    downstream = StringTransport()
    proto.makeConnection(downstream)
    proto.dataReceived(dc.withRequestId(ECHO, 1) + ECHO[16:])  # waits for the connect to a
    assert [address for address, _ in connects] == ["10.0.0.1:20880"]
    mesh.clusters.discovery("c").hostsUpdated([EndpointConfig("10.0.0.2", 20880)], "2")  # a leaves meanwhile
    a = upstream()
    connects[0][1].callback(a)
    [request] = sent(a)  # the queued call went out on a's connection
    proto.dataReceived(dc.withRequestId(ECHO, 2) + ECHO[16:])  # a new call goes to b
    assert [address for address, _ in connects] == ["10.0.0.1:20880", "10.0.0.2:20880"]
    assert not a.transport.disconnecting
    answer(a, request, ECHO_RESP)
    mesh.runTurns()
    [reply] = replies(downstream)
    assert (reply.requestId, reply.status) == (1, 20)
    assert a.transport.disconnecting  # a's pool closed its connection once its last call ended
    assert mesh.value("downstream_rq_error") == 0


def test_a_source_that_raises_at_start_is_reported_not_fatal():
    clock, store, factory, cluster, sink, events, _ = makeDiscovered(initialFetchTimeout=1.0)

    def broken():
        raise RuntimeError("plugin bug")

    original = factory.makeSource

    def makeSource(config, context, s):
        source = original(config, context, s)
        source.start = broken
        return source

    factory.makeSource = makeSource
    warm = sink.start()
    assert sink.describe()["state"] == "failing" and sink.describe()["last_failure"] == "plugin bug"
    assert value(store, "update_failure") == 1
    assert any(e.get("log_failure") is not None for e in events)
    clock.advance(1)
    assert warm.called
