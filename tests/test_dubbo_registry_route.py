"""
Dubbo without a cluster per interface (issue 12 part 2), in memory: a Dubbo listener whose route names a ZooKeeper
registry (``dubbo_registry``), the on-demand clusters (txmesh.discovery.dubbo_clusters) fed by an in-memory session,
real captured Dubbo frames, time on a Clock.  The config keys and their errors.  End to end with real peers:
tests/test_integration_dubbo_registry.py.
"""

import pytest
from twisted.internet import defer
from twisted.internet.testing import StringTransport
from zope.interface.verify import verifyObject

from tests.test_dubbo_listener import ECHO, ECHO_RESP, answer, frames, replies, sent
from tests.test_zookeeper_discovery import SessionDouble, node
from txmesh.config import ConfigError, loads
from txmesh.discovery.dubbo_clusters import RegistryClusters
from txmesh.interfaces import IRegistryClusters
from txmesh.protocols.dubbo import codec as dc
from txmesh.protocols.dubbo.client import DubboClientProtocol
from txmesh.routing import DubboRegistryAction
from txmesh.testing import InMemoryMesh

IFACE = "org.txmesh.peers.EchoService"  # what the captured ECHO call names (group SOFA, version 1.0.0)
PROVIDERS = "/dubbo/%s/providers" % (IFACE,)
CLUSTER = "dubbo:zk:%s:SOFA:1.0.0" % (IFACE,)

MESH = """
registries:
  - {name: zk, type: zookeeper, hosts: "127.0.0.1:2181"}
listeners:
- name: dubbo_out
  protocol: dubbo
  address: tcp:0
  route_config:
    virtual_hosts:
    - name: all
      domains: ["*"]
      routes:
      - match: {dubbo: {interface: "org.txmesh.legacy.*"}}
        route: {cluster: legacy}
      - match: {dubbo: {interface: "*"}}
        route:
          timeout: 5s
          dubbo_registry:
            registry: zk
            cluster_template: dubbo_defaults
            max_clusters: %(cap)d
            idle_timeout: 60s
            initial_fetch_timeout: 2s
clusters:
- name: legacy
  protocol: dubbo
  endpoints: [{address: "10.0.0.9:20880"}]
- name: dubbo_defaults
  protocol: dubbo
  lb_policy: least_request
  outlier_detection: {consecutive_5xx: 3}
"""


def provider(port, host="10.0.0.5", **params):
    query = "&".join("%s=%s" % kv for kv in dict({"interface": IFACE, "group": "SOFA", "version": "1.0.0",
                                                   "side": "provider"}, **params).items())
    return node("dubbo://%s:%d/%s?%s" % (host, port, IFACE, query))


class Registries:
    """The running registry clients, in memory: ``get(name)`` -> a SessionDouble."""

    def __init__(self):
        self.sessions = {"zk": SessionDouble()}

    def get(self, name):
        return self.sessions[name]


class Mesh:
    def __init__(self, cap=16):
        self.upstreams = {}
        self.mesh = InMemoryMesh(MESH % {"cap": cap}, connect=self._connect)
        self.registries = Registries()
        self.session = self.registries.sessions["zk"]
        runtime = self.mesh.runtime
        runtime.registryClusters = RegistryClusters(runtime.clock, runtime.clusters, self.registries, runtime.stats)
        self.clock, self.clusters = self.mesh.clock, self.mesh.clusters

    def _connect(self, host, clusterConfig):
        proto = DubboClientProtocol()
        proto.makeConnection(StringTransport())
        self.upstreams.setdefault(host.address, []).append(proto)
        return defer.succeed(proto)

    def client(self):
        proto = self.mesh.factory.buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        return proto, transport

    def value(self, name, **labels):
        return self.mesh.stats.total(name, **labels)


def call(mesh, frame=ECHO, requestId=1):
    proto, t = mesh.client()
    proto.dataReceived(dc.withRequestId(frame, requestId) + frame[16:])
    return proto, t


def test_first_call_waits_for_the_providers_then_goes_to_them():
    mesh = Mesh()
    verifyObject(IRegistryClusters, mesh.mesh.runtime.registryClusters)
    _, t = call(mesh)
    assert replies(t) == [] and mesh.upstreams == {}  # waiting for the providers list
    cluster = mesh.clusters.get(CLUSTER)
    assert cluster is not None and cluster.config.lbPolicy == "least_request"  # from the template
    assert cluster.config.outlierDetection.consecutive5xx == 3
    [watch] = [w for w in mesh.session.watches if w.path == PROVIDERS]
    mesh.session.set("/dubbo/%s/configurators" % (IFACE,), [])
    mesh.session.set(PROVIDERS, [provider(20880), provider(20881, group="other")])
    [up] = mesh.upstreams["10.0.0.5:20880"]
    [req] = sent(up)
    assert req.isRequest and req.invocation.methodName == "echo"  # (the timeout attachment re-stamped: 5s route)
    answer(up, req, ECHO_RESP)
    [resp] = replies(t)
    assert resp.status == dc.OK and resp.requestId == 1 and resp.body == ECHO_RESP[16:]
    # the next call finds the cluster at once
    _, t2 = call(mesh, requestId=9)
    [req2] = sent(up)
    answer(up, req2, ECHO_RESP)
    assert [f.requestId for f in replies(t2)] == [9]
    assert mesh.value("dubbo_registry_clusters_created", registry="zk") == 1
    assert mesh.value("dubbo_registry_clusters", registry="zk") == 1
    [described] = mesh.mesh.runtime.registryClusters.describe()["zk"]
    assert described["cluster"] == CLUSTER and described["hosts"] == 1 and described["source"]["path"] == PROVIDERS


def test_no_provider_answers_service_not_found_after_the_initial_fetch_timeout():
    mesh = Mesh()
    _, t = call(mesh)
    mesh.clock.advance(1.9)
    assert replies(t) == []
    mesh.clock.advance(0.2)  # initial_fetch_timeout: 2s; the registry never answered
    [resp] = replies(t)
    assert resp.status == dc.SERVICE_NOT_FOUND and resp.requestId == 1
    assert mesh.value("dubbo_registry_initial_fetch_timeouts", registry="zk") == 1
    # providers registered later are used from then on
    mesh.session.set("/dubbo/%s/configurators" % (IFACE,), [])
    mesh.session.set(PROVIDERS, [provider(20880)])
    _, t2 = call(mesh, requestId=2)
    assert len(sent(mesh.upstreams["10.0.0.5:20880"][0])) == 1
    # the registry says there are none: the next call is refused at once
    mesh.session.set(PROVIDERS, [])
    _, t3 = call(mesh, requestId=3)
    [resp3] = replies(t3)
    assert resp3.status == dc.SERVICE_NOT_FOUND and b"no_healthy_upstream" in resp3.body


def test_explicit_routes_still_win():
    mesh = Mesh()
    legacy = ECHO.replace(IFACE.encode(), b"org.txmesh.legacy.EchoServic")  # same length: still a valid frame
    _, t = call(mesh, legacy)
    [req] = sent(mesh.upstreams["10.0.0.9:20880"][0])  # the explicit route's cluster, at once
    assert req.invocation.serviceName == "org.txmesh.legacy.EchoServic"
    assert [c.name for c in mesh.clusters if c.name.startswith("dubbo:")] == []


def test_the_cap_refuses_new_services_and_counts():
    mesh = Mesh(cap=1)
    call(mesh)
    other = ECHO.replace(b"SOFA", b"SOFB")  # another group: another service
    _, t = call(mesh, other, requestId=5)
    [resp] = replies(t)
    assert resp.status == dc.SERVICE_NOT_FOUND and resp.requestId == 5
    assert mesh.value("dubbo_registry_clusters_overflow", registry="zk") == 1
    assert len([c for c in mesh.clusters if c.name.startswith("dubbo:")]) == 1


def test_idle_clusters_are_removed_and_their_watches_cancelled():
    mesh = Mesh()
    call(mesh)
    mesh.session.set("/dubbo/%s/configurators" % (IFACE,), [])
    mesh.session.set(PROVIDERS, [provider(20880)])
    assert mesh.clusters.get(CLUSTER) is not None
    up = mesh.upstreams["10.0.0.5:20880"][0]
    answer(up, sent(up)[0], ECHO_RESP)
    for _ in range(4):  # used within each half of idle_timeout: kept
        mesh.clock.advance(25)
        _, t = call(mesh, requestId=7)
        answer(up, sent(up)[0], ECHO_RESP)
    mesh.clock.advance(30)
    assert mesh.clusters.get(CLUSTER) is not None
    mesh.clock.advance(30)
    mesh.clock.advance(30)  # idle for idle_timeout (60s), seen by two checks
    assert mesh.clusters.get(CLUSTER) is None
    assert mesh.session.watches == [] and mesh.session.listeners == []
    assert mesh.value("dubbo_registry_clusters_removed", registry="zk") == 1
    assert mesh.value("dubbo_registry_clusters", registry="zk") == 0
    _, t = call(mesh, requestId=8)  # a new call makes it again
    assert mesh.clusters.get(CLUSTER) is not None


def test_session_loss_keeps_the_last_known_providers():
    mesh = Mesh()
    call(mesh)
    mesh.session.set("/dubbo/%s/configurators" % (IFACE,), [])
    mesh.session.set(PROVIDERS, [provider(20880)])
    up = mesh.upstreams["10.0.0.5:20880"][0]
    answer(up, sent(up)[0], ECHO_RESP)
    mesh.session.state("suspended")
    _, t = call(mesh, requestId=4)
    [req] = sent(up)
    answer(up, req, ECHO_RESP)
    assert [f.status for f in replies(t)] == [dc.OK]
    assert mesh.value("dubbo_registry_source_failures", registry="zk") == 1


def test_stream_reset_while_waiting_cancels_the_wait():
    mesh = Mesh()
    proto, t = call(mesh)
    proto.connectionLost(None)
    mesh.clock.advance(3)
    assert mesh.value("dubbo_registry_initial_fetch_timeouts", registry="zk") == 1
    assert t.value() == b""


# -- config ----------------------------------------------------------------------------------------------------


def test_config():
    c = loads(MESH % {"cap": 5})
    action = c.listeners[0].routeConfig.virtualHosts[0].routes[1].action
    assert isinstance(action, DubboRegistryAction)
    assert (action.registry, action.maxClusters, action.idleTimeout, action.initialFetchTimeout, action.timeout) \
        == ("zk", 5, 60.0, 2.0, 5.0)
    assert action.template.name == "dubbo_defaults" and action.template.lbPolicy == "least_request"
    # no template: Dubbo's cluster defaults
    bare = loads(MESH.replace("            cluster_template: dubbo_defaults\n", "") % {"cap": 5})
    template = bare.listeners[0].routeConfig.virtualHosts[0].routes[1].action.template
    assert (template.protocol, template.lbPolicy, template.connectTimeout) == ("dubbo", "round_robin", 1.0)


ROUTE = "listeners[0].route_config.virtual_hosts[0].routes[1].route"


@pytest.mark.parametrize("old, new, message", [
    ("registry: zk\n", "registry: nope\n",
     ROUTE + ".dubbo_registry.registry: 'nope' is not a zookeeper registry (registries: zk)"),
    ("cluster_template: dubbo_defaults", "cluster_template: legacy",
     ROUTE + ".dubbo_registry.cluster_template: cluster 'legacy' has endpoints or discovery"),
    ("cluster_template: dubbo_defaults", "cluster_template: nope", ROUTE + ".dubbo_registry.cluster_template: "
                                                                        "unknown cluster 'nope'"),
    ("idle_timeout: 60s", "idle_timeout: 0s", ROUTE + ".dubbo_registry.idle_timeout: must be a duration > 0"),
    ("initial_fetch_timeout: 2s", "initial_fetch_timeout: 2m",
     ROUTE + ".dubbo_registry.initial_fetch_timeout: must be a duration between 0 and 60s"),
    ("max_clusters: 16", "max_clusters: 0", ROUTE + ".dubbo_registry.max_clusters"),
    ("timeout: 5s\n", "timeout: 5s\n          host_rewrite: x\n",
     ROUTE + ".host_rewrite: a dubbo_registry route does not rewrite calls"),
    ("registry: zk\n", "registry: zk\n            weight: 1\n", ROUTE + ".dubbo_registry.weight: unknown key"),
    ("  protocol: dubbo\n  address", "  protocol: http1\n  address",
     ROUTE + ".dubbo_registry: dubbo_registry routes only Dubbo calls (this listener is 'http1')"),
])
def test_config_errors(old, new, message):
    text = (MESH % {"cap": 16}).replace(old, new, 1)
    assert text != MESH % {"cap": 16}
    with pytest.raises(ConfigError) as e:
        loads(text, "mesh.yaml")
    assert message in str(e.value) and str(e.value).startswith("mesh.yaml:")


def test_routes_to_one_registry_must_agree():
    text = (MESH % {"cap": 16}).replace("""      - match: {dubbo: {interface: "org.txmesh.legacy.*"}}
        route: {cluster: legacy}""", """      - match: {dubbo: {interface: "org.txmesh.legacy.*"}}
        route: {dubbo_registry: {registry: zk}}""")
    with pytest.raises(ConfigError) as e:
        loads(text, "mesh.yaml")
    assert "routes[1].route.dubbo_registry: routes to registry 'zk' share its clusters" in str(e.value)


def test_schema_takes_the_keys():
    import json
    from importlib import resources

    import jsonschema
    import yaml

    from tests.test_zookeeper_discovery import MESH as DISCOVERY_MESH
    schema = json.loads(resources.files("txmesh").joinpath("mesh.schema.json").read_text())
    validator = jsonschema.Draft202012Validator(schema)
    # (the schema has no outlier_detection yet: issue 11's key, not this part's)
    validator.validate(yaml.safe_load((MESH % {"cap": 16}).replace("  outlier_detection: {consecutive_5xx: 3}\n", "")))
    keys = "      interface: org.Demo\n      group: g\n      version: '1.0'"
    validator.validate(yaml.safe_load(DISCOVERY_MESH % keys))
    bad = yaml.safe_load((MESH % {"cap": 16}).replace("max_clusters: 16", "max_clusters: 0").replace(
        "  outlier_detection: {consecutive_5xx: 3}\n", ""))
    assert not validator.is_valid(bad)


def test_a_call_naming_no_usable_interface_is_refused_without_a_cluster():
    mesh = Mesh()
    bad = ECHO.replace(IFACE.encode(), b"org.txmesh.peers Echo..rvice")  # not a class name
    _, t = call(mesh, bad, requestId=3)
    [resp] = replies(t)
    assert resp.status == dc.SERVICE_NOT_FOUND and resp.requestId == 3 and b"no_cluster" in resp.body
    assert [c.name for c in mesh.clusters if c.name.startswith("dubbo:")] == []
    assert mesh.session.watches == []


# -- one sink: on-demand clusters report to a ClusterDiscovery, shown on /clusters like configured ones ------------


def _discovery(mesh, name=CLUSTER):
    [c] = [c for c in mesh.clusters.describe() if c["name"] == name]
    return c


def test_on_demand_cluster_discovery_state_on_the_admin_clusters_page():
    from tests.test_admin import request
    from txmesh.admin import makeAdminSite
    from txmesh.discovery.base import ClusterDiscovery
    from txmesh.interfaces import IHostSetSink

    mesh = Mesh()
    mesh.clock.advance(100)
    call(mesh)
    assert _discovery(mesh)["discovery"]["state"] == "waiting"
    mesh.session.set("/dubbo/%s/configurators" % (IFACE,), [])
    mesh.session.set(PROVIDERS, [provider(20880), provider(20881)])
    discovery = mesh.clusters.discovery(CLUSTER)
    assert isinstance(discovery, ClusterDiscovery)  # the one sink every discovered cluster has
    verifyObject(IHostSetSink, discovery)
    site = makeAdminSite(mesh.mesh.stats, mesh.clusters, lambda: {}, lambda: True, reactor=mesh.clock)
    [page] = [c for c in request(site, b"/clusters").json() if c["name"] == CLUSTER]
    assert sorted(h["address"] for h in page["hosts"]) == ["10.0.0.5:20880", "10.0.0.5:20881"]
    d = page["discovery"]
    assert (d["type"], d["registry"], d["state"], d["staleness_seconds"], d["last_failure"], d["keep_last_known"]) \
        == ("zookeeper", "zk", "ok", 0.0, None, True)
    assert d["last_update"] == 100.0 and d["version"] == mesh.clusters.discovery(CLUSTER).source.version
    assert (d["source"]["path"], d["source"]["interface"], d["source"]["group"], d["source"]["version"],
            d["source"]["hosts"]) == (PROVIDERS, IFACE, "SOFA", "1.0.0", 2)
    assert mesh.value("update_success", cluster=CLUSTER) == 1  # the per-cluster series of any discovered cluster
    assert mesh.value("dubbo_registry_updates", registry="zk") == 1  # and the registry's, as before

    # the session lost: the last known providers stay, the cluster goes failing and grows stale, counted once each
    mesh.session.state("suspended")
    mesh.clock.advance(7)
    [page] = [c for c in request(site, b"/clusters").json() if c["name"] == CLUSTER]
    d = page["discovery"]
    assert (d["state"], d["staleness_seconds"], len(page["hosts"])) == ("failing", 7.0, 2)
    assert "session suspended" in d["last_failure"]
    assert mesh.value("discovery_staleness_seconds", cluster=CLUSTER) == 7.0
    assert mesh.value("update_failure", cluster=CLUSTER) == 1
    assert mesh.value("dubbo_registry_source_failures", registry="zk") == 1
    # the same set again on reconnect: nothing rebuilt, ok again
    mesh.session.set(PROVIDERS, [provider(20881), provider(20880)])
    assert _discovery(mesh)["discovery"]["state"] == "ok"
    assert mesh.value("update_no_rebuild", cluster=CLUSTER) == 1
    assert mesh.value("discovery_staleness_seconds", cluster=CLUSTER) == 0.0


def test_initial_fetch_timeout_is_counted_per_cluster_and_per_registry():
    mesh = Mesh()
    _, t = call(mesh)
    mesh.clock.advance(2.1)
    assert [r.status for r in replies(t)] == [dc.SERVICE_NOT_FOUND]
    assert mesh.value("init_fetch_timeout", cluster=CLUSTER) == 1
    assert mesh.value("dubbo_registry_initial_fetch_timeouts", registry="zk") == 1
    assert _discovery(mesh)["discovery"]["state"] == "waiting"


def test_a_removed_cluster_does_not_look_stale_and_its_successor_reads_its_own_state():
    mesh = Mesh()
    call(mesh)
    mesh.session.set("/dubbo/%s/configurators" % (IFACE,), [])
    mesh.session.set(PROVIDERS, [provider(20880)])
    up = mesh.upstreams["10.0.0.5:20880"][0]
    answer(up, sent(up)[0], ECHO_RESP)
    mesh.session.state("suspended")  # failing when it goes idle
    for _ in range(4):  # idle for idle_timeout (60s), seen by two checks: removed
        mesh.clock.advance(30)
    assert mesh.clusters.get(CLUSTER) is None and mesh.clusters.discovery(CLUSTER) is None
    assert CLUSTER not in [c["name"] for c in mesh.clusters.describe()]
    assert mesh.value("discovery_staleness_seconds", cluster=CLUSTER) == 0.0  # the series stays; no false alert
    mesh.session.state("connected")
    call(mesh, requestId=2)  # made again under the same name: the gauge reads the new cluster's discovery
    mesh.clock.advance(1.5)
    assert _discovery(mesh)["discovery"]["state"] == "waiting"
    assert mesh.value("discovery_staleness_seconds", cluster=CLUSTER) == 1.5
