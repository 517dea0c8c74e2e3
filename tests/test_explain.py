"""
Tests for txmesh.explain (the admin API's /explain) on the route tables of tests/test_routing.py,
tests/test_dubbo_listener.py and tests/test_hashing.py: the answer agrees with the real matching and, for hash
policies, with the host the router really sends the request to.
"""

import random
import textwrap

import pytest
from twisted.internet.task import Clock

from tests.test_hashing import DUBBO_MESH, HOSTS, MESH, served
from tests.test_routing import CLUSTERS
from txmesh.config import loads
from txmesh.explain import ExplainError, explain, requestFor
from txmesh.stats import StatsStore
from txmesh.testing import InMemoryMesh
from txmesh.upstream.cluster import ClusterManager


def mesh(vhosts, clusters=CLUSTERS):
    """(config, ClusterManager) of test_routing's CLUSTERS with the YAML list ``vhosts`` as its virtual hosts."""
    config = loads(clusters + textwrap.indent(textwrap.dedent(vhosts), " " * 8))
    manager = ClusterManager(Clock(), config.clusters, lambda c: None, StatsStore(), random.Random(0))
    return config, manager


def ask(world, **args):
    """explain() for keyword arguments; a list value repeats the argument (header=, attachment=)."""
    query = {k: v if isinstance(v, list) else [v] for k, v in args.items()}
    return explain(world[0], world[1], query)


# test_routing.py's `matches` table, with a route to a cluster so that a host is chosen
MATCHES = """\
- name: all
  domains: ['*']
  routes:
    - {name: exactPath, match: {path: /exact}, direct_response: {status: 200}}
    - {name: regex, match: {regex: '/r/[0-9]+'}, direct_response: {status: 200}}
    - {name: post, match: {prefix: /m, methods: [POST, put]}, direct_response: {status: 200}}
    - name: headers
      match:
        prefix: /h
        headers:
          - {name: X-Exact, exact: "1"}
          - {name: x-prefix, prefix: ab}
          - {name: x-present, present: true}
      route: {cluster: a}
    - {name: redirect, match: {prefix: /old/}, redirect: {prefix_rewrite: /new/}}
    - name: weighted
      match: {prefix: /w}
      route: {weighted_clusters: [{name: b, weight: 90}, {name: c, weight: 10}]}
    - {name: catchall, match: {prefix: /}, direct_response: {status: 404}}
"""


@pytest.fixture
def matches():
    return mesh(MATCHES)


def test_eachEarlierRouteSaysWhichMatcherFailed(matches):
    answer = ask(matches, path="/h", header=["X-Exact:1", "x-prefix:abc", "x-present:"])
    assert answer["virtual_host"] == "all"
    assert answer["routes_tried"] == [{"route": "exactPath", "failed": "path"},
                                      {"route": "regex", "failed": "regex"},
                                      {"route": "post", "failed": "prefix"}]
    assert answer["route"] == {"name": "headers", "default_route": False}
    action = answer["action"]
    assert (action["type"], action["cluster"], action["lb_policy"]) == ("cluster", "a", "round_robin")
    assert action["host"]["address"] == "127.0.0.1:1"
    assert action["lb_state_changed"] is True


@pytest.mark.parametrize("args, route, failedAt", [
    (dict(path="/m", method="GET"), "catchall", ("post", "method")),
    (dict(path="/h", header=["x-prefix:abc", "x-present:"]), "catchall", ("headers", "header x-exact")),
    (dict(path="/h", header=["x-exact:1", "x-prefix:xab", "x-present:"]), "catchall", ("headers", "header x-prefix")),
    (dict(path="/h", header=["x-exact:1", "x-prefix:ab"]), "catchall", ("headers", "header x-present")),
    (dict(path="/r/12x"), "catchall", ("regex", "regex")),
    (dict(path="/exact/"), "catchall", ("exactPath", "path")),
    (dict(path="/m", method="put"), "post", ("regex", "regex")),
    (dict(path="/exact", method="POST"), "exactPath", None),
])
def test_agreesWithMatch(matches, args, route, failedAt):
    answer = ask(matches, **args)
    assert answer["route"]["name"] == route
    tried = {t["route"]: t["failed"] for t in answer["routes_tried"]}
    if failedAt is not None:
        assert tried[failedAt[0]] == failedAt[1]
    else:
        assert tried == {}
    config = matches[0]
    real = config.listeners[0].routeConfig.match(requestFor("http1", {k: v if isinstance(v, list) else [v]
                                                                       for k, v in args.items()}))
    assert real.name == route


def test_directResponseAndRedirect(matches):
    assert ask(matches, path="/nothing")["action"] == {"type": "direct_response", "status": 404}
    redirect = ask(matches, path="/old/x?q=1", authority="svc")["action"]
    assert redirect == {"type": "redirect", "status": 301, "location": "http://svc/new/x?q=1"}


def test_weightedGivesTheCandidates(matches):
    action = ask(matches, path="/w")["action"]
    assert action["type"] == "weighted_clusters" and action["cluster"] is None
    assert [(c["cluster"], c["weight"], c["share"]) for c in action["candidates"]] == [("b", 90, 0.9), ("c", 10, 0.1)]
    assert [c["host"]["address"] for c in action["candidates"]] == ["127.0.0.1:2", "127.0.0.1:3"]


def test_virtualHostByAuthority():
    world = mesh("""\
        - {name: exact, domains: [api.example.com], routes: [{match: {prefix: /}, route: {cluster: a}}]}
        - {name: wild, domains: ["*.example.com"], routes: [{name: w, match: {prefix: /api}, route: {cluster: b}}]}
    """)
    assert ask(world, authority="API.example.com:8080")["virtual_host"] == "exact"
    answer = ask(world, authority="x.example.com", path="/web")
    assert answer["virtual_host"] == "wild"
    assert answer["routes_tried"] == [{"route": "w", "failed": "prefix"}]
    assert answer["route"] is None and answer["action"] is None
    assert "no route" in answer["result"]
    nohost = ask(world, authority="other.org")
    assert (nohost["virtual_host"], nohost["route"]) == (None, None)


def test_unnamedRoutesByIndex():
    world = mesh("- {name: all, domains: ['*'], routes: [{match: {prefix: /a}, route: {cluster: a}},"
                 " {match: {prefix: /}, route: {cluster: b}}]}")
    answer = ask(world, path="/b")
    assert answer["routes_tried"] == [{"route": "#0", "failed": "prefix"}]
    assert answer["route"]["name"] == "#1"
    assert answer["action"]["cluster"] == "b"


def test_grpcPathAndContentType():
    text = CLUSTERS.replace("    address: tcp:0\n", "    address: tcp:0\n    protocol: grpc\n")
    world = mesh("""\
        - name: all
          domains: ['*']
          routes:
            - {name: echo, match: {prefix: /pkg.Echo/, headers: [{name: content-type, prefix: application/grpc}]},
               route: {cluster: a}}
            - {name: slow, match: {path: /pkg.Other/Slow, methods: [POST]}, route: {cluster: b}}
    """, text)
    answer = ask(world, path="/pkg.Echo/Say")
    assert answer["protocol"] == "grpc"
    assert answer["request"]["method"] == "POST"
    assert answer["route"]["name"] == "echo"
    answer = ask(world, path="/pkg.Other/Slow")
    assert answer["routes_tried"] == [{"route": "echo", "failed": "prefix"}]
    assert answer["action"]["cluster"] == "b"
    assert ask(world, path="/pkg.Other/Slow", method="GET")["routes_tried"][1] == {"route": "slow",
                                                                                  "failed": "method"}


# tests/test_dubbo_listener.py's route table
DUBBO = """\
listeners:
- name: d
  protocol: dubbo
  address: tcp:0
  route_config:
    virtual_hosts:
    - name: all
      domains: ["*"]
      routes:
      - name: tagged
        match: {dubbo: {interface: "org.txmesh.peers.*", group: SOFA,
                        attachments: [{name: x-txmesh-test, exact: att-value-1}]}}
        route: {cluster: tagged}
      - name: echo
        match: {dubbo: {interface: org.txmesh.peers.EchoService, version: "1.0.0", group: SOFA, method: echo}}
        route: {cluster: provider, timeout: 5s}
clusters:
- {name: provider, protocol: dubbo, endpoints: [{address: "10.0.0.1:20880"}]}
- {name: tagged, protocol: dubbo, endpoints: [{address: "10.0.0.2:20880"}]}
"""


@pytest.fixture
def dubbo():
    config = loads(DUBBO)
    return config, ClusterManager(Clock(), config.clusters, lambda c: None, StatsStore(), random.Random(0))


@pytest.mark.parametrize("args, route, failed", [
    (dict(group="SOFA", attachment="x-txmesh-test:att-value-1"), "tagged", []),
    (dict(group="SOFA", version="1.0.0", method="echo"), "echo", [("tagged", "dubbo attachment x-txmesh-test")]),
    (dict(group="SOFA", version="1.0.0", method="echo", attachment="x-txmesh-test:other"), "echo",
     [("tagged", "dubbo attachment x-txmesh-test")]),
    (dict(group="OTHER", version="1.0.0", method="echo"), None,
     [("tagged", "dubbo group"), ("echo", "dubbo group")]),
    (dict(group="SOFA", version="2.0.0", method="echo"), None,
     [("tagged", "dubbo attachment x-txmesh-test"), ("echo", "dubbo version")]),
    (dict(group="SOFA", version="1.0.0", method="other"), None,
     [("tagged", "dubbo attachment x-txmesh-test"), ("echo", "dubbo method")]),
])
def test_dubbo(dubbo, args, route, failed):
    answer = ask(dubbo, interface="org.txmesh.peers.EchoService", **args)
    assert answer["protocol"] == "dubbo"
    assert [(t["route"], t["failed"]) for t in answer["routes_tried"]] == failed
    if route is None:
        assert answer["route"] is None
    else:
        assert answer["route"]["name"] == route
        assert answer["action"]["host"]["address"] == {"tagged": "10.0.0.2:20880", "echo": "10.0.0.1:20880"}[route]


def test_dubboOtherInterface(dubbo):
    answer = ask(dubbo, interface="com.example.Other", group="SOFA")
    assert answer["routes_tried"] == [{"route": "tagged", "failed": "dubbo interface"},
                                      {"route": "echo", "failed": "dubbo interface"}]


@pytest.mark.parametrize("args, message", [
    (dict(), "needs interface="),
    (dict(interface="x", attachment="novalue"), "expected attachment=name:value"),
])
def test_dubboBadQueries(dubbo, args, message):
    with pytest.raises(ExplainError, match=message):
        ask(dubbo, **args)


def test_badQueries(matches):
    with pytest.raises(ExplainError, match="no listener 'x'"):
        ask(matches, listener="x")
    with pytest.raises(ExplainError, match="must start with /"):
        ask(matches, path="relative")
    with pytest.raises(ExplainError, match="header=name:value"):
        ask(matches, header="nocolon")
    with pytest.raises(ExplainError, match="at most 64"):
        ask(matches, header=["a:b"] * 65)


TWO_LISTENERS = """\
listeners:
- {name: l1, address: tcp:0, default_cluster: a}
- {name: l2, address: tcp:0, default_cluster: b}
clusters:
- {name: a, endpoints: [{address: "127.0.0.1:1"}]}
- {name: b, endpoints: [{address: "127.0.0.1:2"}]}
"""


def test_listenerRequiredWithSeveral():
    config = loads(TWO_LISTENERS)
    world = (config, ClusterManager(Clock(), config.clusters, lambda c: None, StatsStore(), random.Random(0)))
    with pytest.raises(ExplainError, match="listener= is required"):
        ask(world)
    answer = ask(world, listener="l2", path="/x")
    assert answer["route"] == {"name": "default_cluster", "default_route": True}
    assert answer["action"]["host"]["address"] == "127.0.0.1:2"


@pytest.mark.parametrize("policy", ["ring_hash", "maglev"])
def test_hashPolicyHostIsTheOneTheRouterUses(policy):
    """For hash policies the answer is the router's real choice, and asking does not move the balancer."""
    m = InMemoryMesh(MESH % {"policy": policy})
    for a in HOSTS:
        m.upstream(a).respondWith(200, body=b"ok")
    world = (m.config, m.clusters)
    for i in range(8):
        action = ask(world, path="/hashed", header="x-user:user-%d" % i)["action"]
        assert action["lb_state_changed"] is False
        assert action["hash_key"] is not None
        assert action["host"]["address"] == served(m, b"/hashed", "user-%d" % i)


def test_dubboAttachmentHash():
    config = loads(DUBBO_MESH)
    world = (config, ClusterManager(Clock(), config.clusters, lambda c: None, StatsStore(), random.Random(0)))
    picks = {ask(world, interface="org.txmesh.peers.EchoService", attachment="tenant:t%d" % (i % 3))["action"]
             ["host"]["address"] for i in range(30)}
    assert 1 <= len(picks) <= 3  # one host per tenant value
    again = {ask(world, interface="org.txmesh.peers.EchoService", attachment="tenant:t1")["action"]["host"]["address"]
             for _ in range(5)}
    assert len(again) == 1
