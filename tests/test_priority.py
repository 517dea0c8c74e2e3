"""
Priority levels and panic mode (txmesh.upstream.cluster): Envoy's load arithmetic with the 1.4 overprovisioning
factor, spill to lower priorities, panic on and off, recomputation on health and host-set changes; the balancers'
ignoreHealth; the common_lb_config and endpoint priority/locality config.
"""

import collections
import functools
import random

import pytest
from twisted.internet.task import Clock
from twisted.plugin import getPlugins

import txmesh.plugins
from txmesh.config import ClusterConfig, CommonLbConfig, ConfigError, OutlierDetectionConfig, loads
from txmesh.interfaces import ILoadBalancerFactory
from txmesh.protocols.http1.protocol import HTTP1
from txmesh.stats import StatsStore
from txmesh.upstream.cluster import Cluster, ClusterManager, priorityLoads
from txmesh.upstream.host import HealthFlag, Host
from txmesh.upstream.lb import LBContext, findLoadBalancerFactory
from txmesh.upstream.outcome import Outcome

FAILED = HealthFlag.FAILED_ACTIVE_HC
POLICIES = ("round_robin", "weighted_round_robin", "random", "least_request")


def lbFactory(name):
    return findLoadBalancerFactory(name, getPlugins(ILoadBalancerFactory, txmesh.plugins))


FakeClusterConfig = functools.partial(ClusterConfig, maxConnections=10, maxPendingRequests=10, descriptor=HTTP1)


def makeCluster(priorities, policy="round_robin", common=None):
    """A cluster of hosts 10.0.<priority>.<i>, ``priorities`` giving the host count of each level."""
    hosts = [Host("10.0.%d.%d" % (p, i + 1), 80, priority=p) for p, n in enumerate(priorities) for i in range(n)]
    store = StatsStore()
    config = FakeClusterConfig("backend", lbPolicy=policy, commonLbConfig=common)
    cluster = Cluster("backend", config, hosts, lbFactory(policy), lambda host: None, random.Random(3),
                      store.scope(cluster="backend"))
    return cluster, hosts, store


def fail(hosts):
    for h in hosts:
        h.setHealthFlag(FAILED)


def picks(cluster, n=1000, context=None):
    return collections.Counter(cluster.chooseHost(context) for _ in range(n))


def byPriority(counter):
    out = collections.Counter()
    for host, n in counter.items():
        out[None if host is None else host.priority] += n
    return out


@pytest.mark.parametrize("levels, loads, panic", [
    ([(10, 10), (10, 10)], [100, 0], [False, False]),
    ([(10, 8), (10, 10)], [100, 0], [False, False]),  # 80% x 1.4 = 112%, capped at 100: no spill yet
    ([(10, 5), (10, 10)], [70, 30], [False, False]),  # 50% x 1.4 = 70%: 30% spills to P1
    ([(10, 0), (10, 10)], [0, 100], [False, False]),  # total health 100%: no panic anywhere
    ([(10, 5), (10, 2)], [72, 28], [False, True]),  # 70 + 28 = 98% < 100: scaled up (rounding to P0); P1 at 20%
    ([(10, 4)], [100], [True]),  # 40% healthy: under the 50% threshold
    ([(10, 5)], [100], [False]),  # 50% is not under 50%
    ([(4, 0), (12, 0)], [25, 75], [True, True]),  # every level in panic: load by host count
    ([(3, 1), (3, 0)], [50, 50], [True, True]),  # P0 health 46% would take it all, but both are in panic
])
def test_priority_load_arithmetic(levels, loads, panic):
    assert priorityLoads(levels, 140, 50.0) == (loads, panic)


def test_panic_threshold_zero_never_panics():
    assert priorityLoads([(4, 0), (4, 0)], 140, 0.0) == ([100, 0], [False, False])
    assert priorityLoads([(10, 1)], 140, 0.0) == ([100], [False])


def test_overprovisioning_factor_100_spills_at_once():
    assert priorityLoads([(10, 9), (10, 10)], 100, 50.0) == ([90, 10], [False, False])


def test_all_traffic_goes_to_the_highest_priority_while_it_is_healthy():
    cluster, hosts, _ = makeCluster([4, 4])
    assert byPriority(picks(cluster)) == {0: 1000}


def test_load_spills_to_the_next_priority_as_health_drops_and_comes_back():
    cluster, hosts, store = makeCluster([10, 10])
    fail(hosts[:5])  # P0 health 70%
    counts = byPriority(picks(cluster, 4000))
    assert 0.66 < counts[0] / 4000 < 0.74 and counts[0] + counts[1] == 4000
    assert all(h.healthy for h in picks(cluster))
    for h in hosts[:5]:
        h.clearHealthFlag(FAILED)
    assert byPriority(picks(cluster)) == {0: 1000}
    assert [p["load"] for p in cluster.describe()["priorities"]] == [100, 0]


def test_panic_balances_over_every_host_of_the_level_and_counts():
    cluster, hosts, store = makeCluster([4])
    fail(hosts[:3])  # 25% healthy
    counts = picks(cluster, 400)
    assert set(counts) == set(hosts)  # unhealthy hosts too
    assert store.value("lb_healthy_panic", cluster="backend") == 400
    assert cluster.describe()["priorities"] == [{"priority": 0, "hosts": 4, "healthy": 1, "load": 100,
                                                 "panic": True}]
    hosts[0].clearHealthFlag(FAILED)  # 50%: out of panic
    assert set(picks(cluster, 100)) == set(hosts[:1] + hosts[3:])
    assert store.value("lb_healthy_panic", cluster="backend") == 400


def test_no_panic_when_the_threshold_is_zero():
    cluster, hosts, store = makeCluster([4], common=CommonLbConfig(healthyPanicThreshold=0))
    fail(hosts[:3])
    assert set(picks(cluster, 100)) == {hosts[3]}
    fail(hosts[3:])
    assert picks(cluster, 10) == {None: 10}
    assert store.value("upstream_cx_none_healthy", cluster="backend") == 10
    assert store.value("lb_healthy_panic", cluster="backend") == 0


def test_a_lower_priority_in_panic_still_takes_its_share():
    cluster, hosts, _ = makeCluster([10, 10])
    fail(hosts[:5])  # P0: 70%
    fail(hosts[10:18])  # P1: 2 of 10 healthy, 28%, under the threshold: panic
    counts = picks(cluster, 4000)
    p1 = [h for h in counts if h.priority == 1]
    assert any(not h.healthy for h in p1)  # P1's pick ignores health
    assert all(h.healthy for h in counts if h.priority == 0)


def test_every_level_down_balances_by_host_count():
    cluster, hosts, _ = makeCluster([2, 6])
    fail(hosts)
    counts = byPriority(picks(cluster, 4000))
    assert 0.2 < counts[0] / 4000 < 0.3


def test_panic_respects_attempted_hosts():
    cluster, hosts, _ = makeCluster([3])
    fail(hosts)
    context = LBContext(attempted=frozenset([hosts[0], hosts[1].address]))
    assert set(picks(cluster, 100, context)) == {hosts[2]}


def test_host_set_changes_recompute_the_levels():
    cluster, hosts, _ = makeCluster([2, 2])
    fail(hosts[:2])
    assert byPriority(picks(cluster)) == {1: 1000}
    cluster.updateHosts(hosts[2:] + [Host("10.0.9.1", 80, priority=0)])
    assert byPriority(picks(cluster)) == {0: 1000}
    hosts[0].clearHealthFlag(FAILED)  # removed: its health no longer counts
    assert cluster.describe()["priorities"][0]["healthy"] == 1


def test_one_host_ejected_by_outlier_detection_is_still_served_in_panic():
    store = StatsStore()
    clock = Clock()
    config = FakeClusterConfig("solo", lbFactory=lbFactory("round_robin"), endpoints=(),
                               outlierDetection=OutlierDetectionConfig(maxEjectionPercent=100))
    manager = ClusterManager(clock, [config], lambda c: None, store, random.Random(0))
    cluster = manager.get("solo")
    cluster.updateHosts([Host("10.0.0.1", 80)])
    [host] = cluster.hosts
    for _ in range(5):
        host.monitor.putResult(Outcome.GATEWAY_FAILURE)
    assert not host.healthy and cluster.chooseHost() is host
    assert store.value("lb_healthy_panic", cluster="solo") == 1
    manager.drain()
    assert clock.getDelayedCalls() == []


@pytest.mark.parametrize("policy", POLICIES)
def test_every_balancer_honours_ignore_health(policy):
    hosts = [Host("10.0.0.%d" % i, 80, weight=i) for i in (1, 2, 3)]
    fail(hosts)
    lb = lbFactory(policy).create(hosts, random.Random(0))
    assert lb.chooseHost() is None
    assert {lb.chooseHost(LBContext(ignoreHealth=True)) for _ in range(200)} == set(hosts)
    context = LBContext(ignoreHealth=True, attempted=frozenset(hosts[:2]))
    assert {lb.chooseHost(context) for _ in range(50)} == {hosts[2]}


# -- config ---------------------------------------------------------------------------------------------------

BASE = """listeners:
- name: ingress
  address: tcp:0
  default_cluster: backend
clusters:
- name: backend
"""


def cluster(text):
    return loads(BASE + text).clusters[0]


def test_common_lb_config():
    c = cluster('  endpoints: [{address: "10.0.0.1:80"}]\n')
    assert c.commonLbConfig is None
    c = cluster('  endpoints: [{address: "10.0.0.1:80"}]\n  common_lb_config: {healthy_panic_threshold: 25.5,'
                ' overprovisioning_factor: 100}\n')
    assert c.commonLbConfig == CommonLbConfig(25.5, 100)
    assert cluster('  common_lb_config: {}\n').commonLbConfig == CommonLbConfig(50.0, 140)


def test_endpoint_priority_and_locality():
    c = cluster('  endpoints:\n  - {address: "10.0.0.1:80", priority: 1, locality: eu-west-1a}\n'
                '  - {address: "10.0.0.2:80"}\n')
    assert [(e.priority, e.locality) for e in c.endpoints] == [(1, "eu-west-1a"), (0, "")]


@pytest.mark.parametrize("text, expected", [
    ('  common_lb_config: {healthy_panic_threshold: 101}\n',
     "<string>:7: clusters[0].common_lb_config.healthy_panic_threshold: must be between 0 and 100, got 101"),
    ('  common_lb_config: {overprovisioning_factor: 0}\n',
     "<string>:7: clusters[0].common_lb_config.overprovisioning_factor: must be >= 1, got 0"),
    ('  common_lb_config: {panic: 1}\n',
     "<string>:7: clusters[0].common_lb_config.panic: unknown key 'panic'"),
    ('  endpoints: [{address: "10.0.0.1:80", priority: 128}]\n',
     "<string>:7: clusters[0].endpoints[0].priority: must be between 0 and 127, got 128"),
    ('  endpoints: [{address: "10.0.0.1:80", locality: 3}]\n',
     "<string>:7: clusters[0].endpoints[0].locality: must be a string"),
])
def test_config_errors(text, expected):
    with pytest.raises(ConfigError) as info:
        cluster(text)
    assert str(info.value).startswith(expected)
