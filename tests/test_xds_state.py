"""
The xDS resource state (txmesh/xds/state.py) applying through the real ConfigApplier of a MeshService built on a
memory reactor: ACK/NACK, the last good kept, warming, Envoy's order, the static parts, /config_dump.
"""

import json
import os

import pytest
from twisted.internet import defer
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import json_format
from zope.interface import implementer
from zope.interface.verify import verifyObject

from txmesh import config as _config
from txmesh.errors import ConfigError
from txmesh.interfaces import IConfigApplier, IConfigSource, IXdsResourceHandler
from txmesh.reload import FileConfigSource
from txmesh.service import MeshService
from txmesh.xds.config import XdsConfig
from txmesh.xds.state import XdsFileSource, XdsState
from txmesh.xds.translate import CLUSTER, ENDPOINT, LISTENER, ROUTE

from tests.test_reload import Client, Notifier, Reactor
from tests.test_reopen_logs import Signals
from tests.xds_resources import ROUTER, assignment, cluster, endpoint, listener, routeConfig, staticCluster

BOOTSTRAP = """
admin: {address: "tcp:9901:interface=127.0.0.1"}
drain_timeout: 5s
listeners:
- name: static_web
  address: "tcp:15001:interface=127.0.0.1"
  route_config:
    virtual_hosts:
    - name: all
      domains: ["*"]
      routes:
      - match: {prefix: /}
        direct_response: {status: 200, body: "static"}
clusters:
- name: xds_cp
  protocol: http2
  endpoints: [{address: "127.0.0.1:18000"}]
"""

DIRECT = [{"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": "dynamic"}}}]


@pytest.fixture
def world(tmp_path):
    path = tmp_path / "mesh.yaml"
    path.write_text(BOOTSTRAP)
    reactor = Reactor()
    mesh = MeshService(_config.load(str(path)), reactor, installSignal=Signals(), notifier=Notifier())
    mesh.startService()

    class World:
        pass

    w = World()
    w.reactor, w.mesh, w.path = reactor, mesh, str(path)
    w.state = XdsState(mesh.config, mesh.applier, reactor, "127.0.0.1:18000", XdsConfig(initialFetchTimeout=15.0))
    w.changed = []
    w.state.watchSubscriptions(w.changed.append)

    def update(typeUrl, version, resources):
        d = w.state.update(typeUrl, version, resources)
        assert d.called, "an update on a memory reactor ends at once"
        return d.result

    w.update = update
    yield w
    w.state.stop()
    if mesh.running:
        mesh.stopService()
        reactor.advance(10)


def hosts(mesh, name):
    return {h.address: h for h in mesh.clusters.get(name).hosts}


def test_interfaces(world):
    verifyObject(IXdsResourceHandler, world.state)
    verifyObject(IConfigSource, world.state.source)
    assert world.state.typeUrls() == (CLUSTER, ENDPOINT, LISTENER, ROUTE)
    assert XdsState(world.mesh.config, world.mesh.applier, world.reactor, "cp",
                    XdsConfig(lds=False)).typeUrls() == (CLUSTER, ENDPOINT)


def test_eds_cluster_warms_until_its_assignment_then_serves_its_hosts(world):
    assert world.update(CLUSTER, "1", [cluster("app")]) is None  # ACK
    assert "app" not in world.mesh.clusters  # warming: waits for its endpoints
    assert world.state.subscriptions(ENDPOINT) == frozenset({"app"})
    assert world.changed == [ENDPOINT]
    assert world.update(ENDPOINT, "1", [assignment("app", "10.0.0.1:80", "10.0.0.2:80")]) is None
    assert set(hosts(world.mesh, "app")) == {"10.0.0.1:80", "10.0.0.2:80"}
    assert world.mesh.config.cluster("app").connectTimeout == 0.25
    assert "xds_cp" in world.mesh.clusters  # the static parts stay


def test_eds_health_status_and_weights_reach_the_hosts(world):
    world.update(CLUSTER, "1", [cluster("app")])
    world.update(ENDPOINT, "1", [assignment("app", groups=[{"lb_endpoints": [
        endpoint("10.0.0.1:80", load_balancing_weight=5),
        endpoint("10.0.0.2:80", health_status="UNHEALTHY"),
        endpoint("10.0.0.3:80", health_status="DRAINING")]},
        {"priority": 1, "lb_endpoints": [endpoint("10.0.0.4:80")]}])])
    h = hosts(world.mesh, "app")
    assert h["10.0.0.1:80"].healthy and h["10.0.0.1:80"].weight == 5
    assert not h["10.0.0.2:80"].healthy and not h["10.0.0.3:80"].healthy
    assert h["10.0.0.2:80"].describe()["health_flags"] == ["failed_eds_health"]
    assert h["10.0.0.4:80"].priority == 1
    # the control plane says it is healthy again: the same Host, its flag cleared
    world.update(ENDPOINT, "2", [assignment("app", "10.0.0.2:80")])
    assert hosts(world.mesh, "app")["10.0.0.2:80"] is h["10.0.0.2:80"] and h["10.0.0.2:80"].healthy


def test_assignment_before_its_cluster_is_kept_and_used(world):
    assert world.update(ENDPOINT, "1", [assignment("app", "10.0.0.7:80")]) is None
    world.update(CLUSTER, "1", [cluster("app")])
    assert set(hosts(world.mesh, "app")) == {"10.0.0.7:80"}


def test_cluster_warming_ends_after_initial_fetch_timeout(world):
    world.update(CLUSTER, "1", [cluster("app")])
    world.reactor.advance(14.9)
    assert "app" not in world.mesh.clusters
    world.reactor.advance(0.2)
    assert "app" in world.mesh.clusters and hosts(world.mesh, "app") == {}
    world.update(ENDPOINT, "1", [assignment("app", "10.0.0.1:80")])
    assert set(hosts(world.mesh, "app")) == {"10.0.0.1:80"}


def test_listener_warms_until_its_route_configuration(world):
    world.update(CLUSTER, "1", [staticCluster("app", "10.0.0.1:80")])
    assert world.update(LISTENER, "1", [listener("web", 10000, rds="routes")]) is None
    assert 10000 not in world.reactor.listening  # warming: no port before its routes
    assert world.state.subscriptions(ROUTE) == frozenset({"routes"}) and world.changed == [ROUTE]
    assert world.update(ROUTE, "1", [routeConfig("routes", routes=DIRECT)]) is None
    assert 10000 in world.reactor.listening
    assert Client(world.reactor, 10000).get() == "dynamic"
    assert Client(world.reactor, 15001).get() == "static"


def test_listener_warming_bound_serves_without_routes(world):
    world.update(LISTENER, "1", [listener("web", 10000, rds="late")])
    world.reactor.advance(15)
    assert 10000 in world.reactor.listening
    client = Client(world.reactor, 10000)
    client.send()
    assert client.transport.value().startswith(b"HTTP/1.1 404")
    world.update(ROUTE, "1", [routeConfig("late", routes=DIRECT)])
    assert Client(world.reactor, 10000).get() == "dynamic"


def test_nack_names_the_resource_and_keeps_the_last_good(world):
    world.update(CLUSTER, "1", [staticCluster("app", "10.0.0.1:80")])
    bad = staticCluster("bad", "10.0.0.2:80", lb_policy="CLUSTER_PROVIDED")
    detail = world.update(CLUSTER, "2", [staticCluster("app", "10.0.0.9:80"), bad])
    assert detail == ("cluster bad: lb_policy CLUSTER_PROVIDED: txmesh balances with ROUND_ROBIN, LEAST_REQUEST, "
                      "RANDOM, RING_HASH or MAGLEV")
    assert set(hosts(world.mesh, "app")) == {"10.0.0.1:80"} and "bad" not in world.mesh.clusters
    assert world.state.versions[CLUSTER] == "1"


def test_builder_error_is_mapped_back_to_the_resource(world):
    world.update(LISTENER, "1", [listener("web", 10000, rds="routes")])
    bad = routeConfig("routes", routes=[{"match": {"safe_regex": {"regex": "("}}, "direct_response": {"status": 200}}])
    detail = world.update(ROUTE, "1", [bad])
    assert detail.startswith("route_configuration routes: listeners[1].route_config.virtual_hosts[0].routes[0]"
                             ".match.regex: invalid regex '(':")
    # a weight txmesh cannot take: the assignment is named
    world.update(CLUSTER, "1", [cluster("app")])
    detail = world.update(ENDPOINT, "1", [assignment("app", groups=[{"lb_endpoints": [
        endpoint("10.0.0.1:80", load_balancing_weight=1000)]}])])
    assert detail == ("cluster_load_assignment app: clusters[1].endpoints[0].weight: must be between 1 and 128, "
                      "got 1000")


def test_names_of_static_parts_are_refused(world):
    detail = world.update(CLUSTER, "1", [staticCluster("xds_cp", "10.0.0.1:80")])
    assert detail == "cluster xds_cp: the bootstrap has a static cluster of that name"
    detail = world.update(LISTENER, "1", [listener("static_web", 10001, rds="r")])
    assert detail == "listener static_web: the bootstrap has a static listener of that name"


def test_rejected_apply_is_a_nack_and_changes_nothing(world):
    world.reactor.taken.add(10000)
    world.update(ROUTE, "1", [routeConfig("routes", routes=DIRECT)])
    detail = world.update(LISTENER, "1", [listener("web", 10000, rds="routes")])
    assert detail.startswith("the configuration was not applied: listener 'web' cannot listen on "
                             "tcp:10000:interface=127.0.0.1")
    assert [lc.name for lc in world.mesh.config.listeners] == ["static_web"]
    assert world.state.subscriptions(ROUTE) == frozenset()


def test_route_to_a_missing_cluster_answers_503_unless_validate_clusters(world):
    world.update(ROUTE, "1", [routeConfig("routes", cluster="nowhere")])
    assert world.update(LISTENER, "1", [listener("web", 10000, rds="routes")]) is None
    client = Client(world.reactor, 10000)
    client.send()
    assert client.transport.value().startswith(b"HTTP/1.1 503")
    detail = world.update(ROUTE, "2", [routeConfig("routes", cluster="nowhere", validate_clusters=True)])
    assert detail == "route_configuration routes: virtual_hosts[0].routes[0].route: unknown cluster nowhere"


def test_inline_routes_validate_clusters_by_default(world):
    inline = {"name": "inline", "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
        {"match": {"prefix": "/"}, "route": {"cluster": "nowhere"}}]}]}
    detail = world.update(LISTENER, "1", [listener("web", 10000, routeConfig=inline)])
    assert detail == "listener web: virtual_hosts[0].routes[0].route: unknown cluster nowhere"


def test_cds_without_a_cluster_removes_it_and_its_assignment(world):
    world.update(CLUSTER, "1", [cluster("app"), cluster("other")])
    world.update(ENDPOINT, "1", [assignment("app", "10.0.0.1:80"), assignment("other", "10.0.0.2:80")])
    assert "app" in world.mesh.clusters and "other" in world.mesh.clusters
    world.update(CLUSTER, "2", [cluster("app")])
    assert "other" not in world.mesh.clusters
    assert world.state.subscriptions(ENDPOINT) == frozenset({"app"})
    assert world.state.describe()["cluster_load_assignment"]["resources"] == {"app": "1"}


def test_config_dump_names_source_resource_and_version(world):
    world.update(CLUSTER, "c1", [cluster("app")])
    world.update(ENDPOINT, "e1", [assignment("app", "10.0.0.1:80")])
    world.update(LISTENER, "l1", [listener("web", 10000, rds="routes")])
    world.update(ROUTE, "r1", [routeConfig("routes", routes=DIRECT)])
    world.update(CLUSTER, "c2", [cluster("app")])  # the same resource: its version stays c1
    info = world.mesh.configDump()["version_info"]
    assert info["source"] == "xds" and info["location"] == "127.0.0.1:18000"
    assert info["clusters"]["app"]["source"] == "xds" and info["clusters"]["app"]["resource"] == "app"
    assert info["clusters"]["app"]["version_info"] == "c1"
    assert info["clusters"]["app"]["endpoints"] == {"resource": "app", "version_info": "e1"}
    assert info["listeners"]["web"]["version_info"] == "l1"
    assert info["listeners"]["web"]["route_config"] == {"resource": "routes", "version_info": "r1"}
    assert info["listeners"]["static_web"]["source"] == "file"
    assert info["listeners"]["static_web"]["location"] == world.path
    assert world.state.source.read().raw == world.mesh.config.raw


def test_unknown_type_and_duplicate_names_are_refused(world):
    assert world.update("type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret", "1", []) == (
        "txmesh does not apply resources of type type.googleapis.com/envoy.extensions.transport_sockets.tls.v3."
        "Secret")
    detail = world.update(CLUSTER, "1", [cluster("app"), cluster("app")])
    assert detail == "cluster app: listed twice"


def test_lds_update_replaces_and_removes_listeners(world):
    world.update(ROUTE, "1", [routeConfig("routes", routes=DIRECT)])
    world.update(LISTENER, "1", [listener("web", 10000), listener("two", 10002)])
    assert {10000, 10002} <= set(world.reactor.listening)
    world.update(LISTENER, "2", [listener("web", 10000)])
    assert 10002 not in world.reactor.listening and 10000 in world.reactor.listening


def test_http_filters_from_the_control_plane_act_on_requests(world):
    fault = {"name": "envoy.filters.http.fault", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault",
        "abort": {"http_status": 418, "percentage": {"numerator": 100}},
        "headers": [{"name": "x-fault", "present_match": True}]}}
    rbac = {"name": "envoy.filters.http.rbac", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
        "rules": {"action": "DENY", "policies": {"no-admin": {"permissions": [{"url_path": {"path": {
            "prefix": "/admin"}}}], "principals": [{"any": True}]}}}}}
    world.update(ROUTE, "1", [routeConfig("routes", routes=DIRECT)])
    assert world.update(LISTENER, "1", [listener("web", 10000, hcmFields={"http_filters": [fault, rbac, ROUTER]})]) \
        is None
    client = Client(world.reactor, 10000)
    client.send(b"/admin")
    assert client.transport.value().startswith(b"HTTP/1.1 403")
    client.transport.clear()
    client.protocol.dataReceived(b"GET / HTTP/1.1\r\nHost: a\r\nx-fault: 1\r\n\r\n")
    world.reactor.advance(0)
    assert client.transport.value().startswith(b"HTTP/1.1 418")
    assert Client(world.reactor, 10000).get() == "dynamic"


def test_a_captured_snapshot_as_a_control_plane_sends_it(world):
    """DiscoveryResponses as JSON (go-control-plane's example snapshot's shape), their Any resources unpacked."""
    classes = {CLUSTER: cluster().__class__, ENDPOINT: assignment("x").__class__, LISTENER: listener().__class__,
               ROUTE: routeConfig().__class__}
    with open(os.path.join(os.path.dirname(__file__), "fixtures", "xds", "snapshot.json")) as f:
        responses = [json_format.ParseDict(doc, discovery_pb2.DiscoveryResponse()) for doc in json.load(f)]
    for response in responses:
        messages = []
        for resource in response.resources:
            message = classes[response.type_url]()
            assert resource.Unpack(message)
            messages.append(message)
        assert world.update(response.type_url, response.version_info, messages) is None, response.type_url
    h = hosts(world.mesh, "backend")
    assert h["127.0.0.1:18081"].weight == 2 and not h["127.0.0.1:18082"].healthy
    assert world.mesh.config.cluster("backend").lbPolicy == "weighted_round_robin"
    assert Client(world.reactor, 10000).get(b"/health") == "ok"
    route = world.mesh.config.listeners[1].routeConfig.virtualHosts[0].routes[1]
    assert (route.action.cluster, route.action.timeout, route.action.retryPolicy.numRetries) == ("backend", 5.0, 2)


def test_a_file_reload_keeps_the_control_planes_parts(world):
    world.update(ROUTE, "1", [routeConfig("routes", routes=DIRECT)])
    world.update(LISTENER, "1", [listener("web", 10000)])
    source = XdsFileSource(FileConfigSource(world.path), world.state)
    verifyObject(IConfigSource, source)
    with open(world.path, "w") as f:
        f.write(BOOTSTRAP.replace('body: "static"', 'body: "static2"'))
    d = world.mesh.applier.apply(source.read(), source)
    assert d.result["outcome"] == "applied"
    assert Client(world.reactor, 15001).get() == "static2" and Client(world.reactor, 10000).get() == "dynamic"
    info = world.mesh.configDump()["version_info"]
    assert (info["source"], info["listeners"]["web"]["source"]) == ("file", "xds")
    # a file whose listener takes a dynamic listener's name: refused, naming both
    with open(world.path, "w") as f:
        f.write(BOOTSTRAP.replace("name: static_web", "name: web"))
    with pytest.raises(ConfigError) as info:
        source.read()
    assert str(info.value).endswith("listener web: the bootstrap has a static listener of that name")
    assert world.update(LISTENER, "2", [listener("web", 10000)]) is None  # the old static parts still stand


@implementer(IConfigApplier)
class HeldApplier:
    """An IConfigApplier whose applies wait until the test fires them (``applies``: [(config, Deferred)])."""

    version = None

    def __init__(self):
        self.applies = []

    def apply(self, config, source):
        d = defer.Deferred()
        self.applies.append((config, d))
        return d

    def finish(self, outcome="applied", error=None):
        config, d = self.applies[-1]
        d.callback({"outcome": outcome, "error": error})
        return config


def test_warming_bound_applies_the_resources_accepted_by_then(world):
    """A warming bound that passes while an update is applying: its apply comes after, with that update in."""
    applier = HeldApplier()
    verifyObject(IConfigApplier, applier)
    state = XdsState(world.mesh.config, applier, world.reactor, "cp", XdsConfig(initialFetchTimeout=15.0))
    d = state.update(LISTENER, "1", [listener("web", 10000, rds="late")])
    assert [lc.name for lc in applier.finish().listeners] == ["static_web"] and d.result is None  # warming
    d = state.update(CLUSTER, "1", [staticCluster("app", "10.0.0.1:80")])
    world.reactor.advance(15)  # the bound passes while the CDS update applies
    assert len(applier.applies) == 2
    applier.finish()
    assert d.result is None
    config = applier.finish()
    assert [lc.name for lc in config.listeners] == ["static_web", "web"]
    assert [c.name for c in config.clusters] == ["xds_cp", "app"]
    state.stop()


def test_a_failing_watcher_does_not_turn_an_applied_update_into_a_nack(world):
    def broken(typeUrl):
        raise RuntimeError("transport gone")

    world.state.watchSubscriptions(broken)
    assert world.update(CLUSTER, "1", [cluster("app")]) is None
    assert world.changed == [ENDPOINT]
