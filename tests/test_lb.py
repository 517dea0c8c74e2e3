"""Load balancers: distributions, health, attempted hosts, and discovery as Twisted plugins."""

import random
from collections import Counter

import pytest
from twisted.internet.task import Clock
from twisted.plugin import IPlugin, getPlugins

import txmesh.plugins
from txmesh.config import ClusterConfig, EndpointConfig, LbConfig, SlowStartConfig
from txmesh.interfaces import ILoadBalancer, ILoadBalancerFactory
from txmesh.stats import StatsStore
from txmesh.upstream.cluster import Cluster
from txmesh.upstream.host import HealthFlag, Host
from txmesh.upstream.lb import (
    EdfSchedule,
    LBContext,
    LoadBalancerFactory,
    LoadBalancerOptions,
    RoundRobinLoadBalancer,
    SlowStart,
    findLoadBalancerFactory,
    smoothWeightedSequence,
)


def makeHosts(*weights):
    return [Host("10.0.0.%d" % (i + 1), 8080, w) for i, w in enumerate(weights)]


def factory(name):
    return findLoadBalancerFactory(name, getPlugins(ILoadBalancerFactory, txmesh.plugins))


def picks(lb, n, context=None):
    return Counter(lb.chooseHost(context).address for _ in range(n))


def test_plugins_found():
    found = {f.name: f for f in getPlugins(ILoadBalancerFactory, txmesh.plugins)}
    for name in ("round_robin", "weighted_round_robin", "random", "least_request"):
        assert name in found
        assert IPlugin.providedBy(found[name])
        lb = found[name].create(makeHosts(1, 1), random.Random(1))
        assert ILoadBalancer.providedBy(lb)
    assert factory("nope") is None


def test_find_among_given_factories():
    """The caller (config) finds the plugins and passes them: the upstream layer does not import txmesh.plugins."""
    mine = LoadBalancerFactory("mine", RoundRobinLoadBalancer)
    assert findLoadBalancerFactory("mine", [factory("round_robin"), mine]) is mine
    assert findLoadBalancerFactory("round_robin", [mine]) is None


def test_round_robin_even_and_in_turn():
    hosts = makeHosts(1, 5, 1)  # weights ignored
    lb = factory("round_robin").create(hosts, random.Random(1))
    seq = [lb.chooseHost(None) for _ in range(6)]
    assert seq[:3] == seq[3:]
    assert set(seq[:3]) == set(hosts)
    assert picks(lb, 300) == {h.address: 100 for h in hosts}


def test_round_robin_skips_unhealthy():
    hosts = makeHosts(1, 1, 1)
    hosts[1].healthy = False
    lb = factory("round_robin").create(hosts, random.Random(2))
    counts = picks(lb, 100)
    assert hosts[1].address not in counts
    assert counts[hosts[0].address] == counts[hosts[2].address] == 50


def test_none_when_no_healthy_or_no_hosts():
    for name in ("round_robin", "weighted_round_robin", "random", "least_request"):
        hosts = makeHosts(1, 2)
        for h in hosts:
            h.healthy = False
        assert factory(name).create(hosts, random.Random(3)).chooseHost(LBContext()) is None
        assert factory(name).create([], random.Random(3)).chooseHost(None) is None


def test_attempted_hosts_avoided_while_others_healthy():
    for name in ("round_robin", "weighted_round_robin", "random", "least_request"):
        hosts = makeHosts(1, 1, 1)
        lb = factory(name).create(hosts, random.Random(4))
        ctx = LBContext(attempted=frozenset([hosts[0], hosts[1].address]))
        assert {lb.chooseHost(ctx) for _ in range(50)} == {hosts[2]}
        hosts[2].healthy = False
        # Only attempted hosts are left: retrying one of them beats failing.
        assert {lb.chooseHost(ctx) for _ in range(50)} <= {hosts[0], hosts[1]}


def test_smooth_weighted_sequence_is_nginx():
    # nginx's documented example: weights a=5, b=1, c=1 give a a b a c a a.
    assert smoothWeightedSequence([5, 1, 1]) == [0, 0, 1, 0, 2, 0, 0]


def test_weighted_round_robin_exact_proportions():
    hosts = makeHosts(5, 1, 1)
    lb = factory("weighted_round_robin").create(hosts, random.Random(5))
    assert picks(lb, 700) == {hosts[0].address: 500, hosts[1].address: 100, hosts[2].address: 100}
    # Smooth: the light hosts are never picked twice in a row.
    seq = [lb.chooseHost(None) for _ in range(70)]
    assert all(not (a is b and a is not hosts[0]) for a, b in zip(seq, seq[1:]))


def test_weighted_round_robin_large_weights_scaled():
    hosts = makeHosts(100000, 1)
    lb = factory("weighted_round_robin").create(hosts, random.Random(6))
    counts = picks(lb, 20000)
    assert counts[hosts[1].address] >= 1
    assert counts[hosts[0].address] > 19900


def test_weighted_round_robin_unhealthy_keeps_ratio_of_rest():
    hosts = makeHosts(3, 1, 2)
    hosts[2].healthy = False
    lb = factory("weighted_round_robin").create(hosts, random.Random(7))
    counts = picks(lb, 4000)
    assert hosts[2].address not in counts
    assert abs(counts[hosts[0].address] / 4000 - 0.75) < 0.05


def test_random_uniform_and_weighted():
    hosts = makeHosts(1, 1, 1, 1)
    counts = picks(factory("random").create(hosts, random.Random(8)), 40000)
    assert all(abs(c / 40000 - 0.25) < 0.02 for c in counts.values())
    hosts = makeHosts(3, 1)
    counts = picks(factory("random").create(hosts, random.Random(9)), 40000)
    assert abs(counts[hosts[0].address] / 40000 - 0.75) < 0.02


def test_random_seeded_is_reproducible():
    hosts = makeHosts(1, 2, 3)
    lbA = factory("random").create(hosts, random.Random(10))
    lbB = factory("random").create(hosts, random.Random(10))
    assert [lbA.chooseHost(None) for _ in range(50)] == [lbB.chooseHost(None) for _ in range(50)]


def test_least_request_prefers_idle_host():
    hosts = makeHosts(1, 1, 1)
    hosts[1].activeRequests = hosts[2].activeRequests = 10
    counts = picks(factory("least_request").create(hosts, random.Random(11)), 30000)
    # Two draws: the idle host wins whenever drawn, 1 - (2/3)**2 = 5/9 of the time.
    assert abs(counts[hosts[0].address] / 30000 - 5 / 9) < 0.02
    assert abs(counts[hosts[1].address] - counts[hosts[2].address]) < 30000 * 0.03


def test_least_request_weights_when_idle_and_loaded():
    hosts = makeHosts(3, 1)
    lb = factory("least_request").create(hosts, random.Random(12))
    counts = picks(lb, 40000)
    assert abs(counts[hosts[0].address] / 40000 - 0.75) < 0.02
    # Envoy's weights under load: weight / (active + 1), here 3/5 against 1/2
    hosts[0].activeRequests, hosts[1].activeRequests = 4, 1
    counts = picks(lb, 40000)
    assert abs(counts[hosts[0].address] / 40000 - 0.6 / 1.1) < 0.01


def test_least_request_avoids_unhealthy():
    hosts = makeHosts(1, 1)
    hosts[0].healthy = False
    lb = factory("least_request").create(hosts, random.Random(13))
    assert {lb.chooseHost(None) for _ in range(50)} == {hosts[1]}


def options(clock=None, **config):
    return LoadBalancerOptions(clock=clock, config=LbConfig(**config) if config else None)


def test_least_request_active_request_bias():
    hosts = makeHosts(2, 1)
    hosts[0].activeRequests, hosts[1].activeRequests = 3, 0
    share = {}
    for bias in (0.0, 0.5, 1.0, 2.0):
        lb = factory("least_request").create(hosts, random.Random(20), options(activeRequestBias=bias))
        share[bias] = picks(lb, 30000)[hosts[0].address] / 30000
    # weight / (active + 1) ** bias: 2/1, 2/2, 2/4 and 2/16 against 1
    for bias, w in ((0.0, 2.0), (0.5, 1.0), (1.0, 0.5), (2.0, 0.125)):
        assert abs(share[bias] - w / (w + 1)) < 0.01, (bias, share[bias])


def test_least_request_load_changes_are_seen_as_picks_happen():
    """The EDF schedule re-reads a host's weight each time it picks it: a host that gets loaded gets fewer."""
    hosts = makeHosts(2, 1)
    lb = factory("least_request").create(hosts, random.Random(21))
    for _ in range(300):
        h = lb.chooseHost(None)
        h.activeRequests += 1  # nothing completes: load piles up where the picks go
    # the k-th pick of a host comes 1/w = (k+1)/weight after its previous one, so after k0 and k1 picks
    # k0**2/(2*2) = k1**2/2: the heavy host holds sqrt(2) times the requests of the light one, not all of them
    assert abs(hosts[0].activeRequests / hosts[1].activeRequests - 2 ** 0.5) < 0.05


def test_least_request_choice_count():
    hosts = makeHosts(1, 1, 1, 1)
    for i, h in enumerate(hosts):
        h.activeRequests = i
    for choices in (2, 3, 5):
        lb = factory("least_request").create(hosts, random.Random(22), options(choiceCount=choices))
        # the idle host wins unless it is never among the draws
        share = picks(lb, 40000)[hosts[0].address] / 40000
        assert abs(share - (1 - 0.75 ** choices)) < 0.015


def test_least_request_unhealthy_draw_loses():
    hosts = makeHosts(1, 1)
    hosts[0].activeRequests = 0
    hosts[1].activeRequests = 5
    hosts[0].setHealthFlag(HealthFlag.FAILED_OUTLIER_CHECK)
    lb = factory("least_request").create(hosts, random.Random(23))
    assert {lb.chooseHost(None) for _ in range(100)} == {hosts[1]}


@pytest.mark.parametrize("name", ["round_robin", "weighted_round_robin", "random", "least_request"])
def test_ignore_health_picks_among_all(name):
    hosts = makeHosts(1, 1, 1)
    for h in hosts:
        h.setHealthFlag(HealthFlag.FAILED_ACTIVE_HC)
    lb = factory(name).create(hosts, random.Random(24))
    assert lb.chooseHost(None) is None
    chosen = Counter(lb.chooseHost(LBContext(ignoreHealth=True)) for _ in range(300))
    assert set(chosen) == set(hosts)
    # still avoiding attempted hosts
    ctx = LBContext(ignoreHealth=True, attempted=frozenset(hosts[:2]))
    assert {lb.chooseHost(ctx) for _ in range(50)} == {hosts[2]}


def test_edf_schedule_proportions_and_dynamic_weights():
    hosts = makeHosts(1, 2, 5)
    weights = {h: h.weight for h in hosts}
    edf = EdfSchedule(hosts, weights.__getitem__, random.Random(25))
    counts = Counter(edf.pick() for _ in range(8000))
    assert [counts[h] for h in hosts] == [1000, 2000, 5000]
    weights[hosts[2]] = 1  # seen the next time the host is picked
    counts = Counter(edf.pick() for _ in range(4000))
    assert abs(counts[hosts[2]] - 1000) <= 2


def rampHosts(clock, *weights):
    """Hosts as a running cluster has them: the first at start, the others added at the clock's now."""
    hosts = makeHosts(*weights)
    for h in hosts[1:]:
        h.addedAt = clock.seconds()
    return hosts


def share(lb, host, n=4000):
    return picks(lb, n)[host.address] / n


@pytest.mark.parametrize("name", ["round_robin", "weighted_round_robin", "least_request"])
def test_slow_start_ramps_a_new_host_over_the_window(name):
    clock = Clock()
    clock.advance(1000)
    hosts = rampHosts(clock, 1, 1)
    new = hosts[1]
    lb = factory(name).create(hosts, random.Random(26),
                              options(clock, slowStart=SlowStartConfig(window=60.0)))
    # min_weight_percent 10 at first: 0.1 / 1.1 of the picks
    assert abs(share(lb, new) - 0.1 / 1.1) < 0.02
    clock.advance(30)  # half way: weight 0.5
    assert abs(share(lb, new) - 0.5 / 1.5) < 0.02
    clock.advance(30)  # the window has passed: an even split, by the policy's own pick
    assert share(lb, new) == pytest.approx(0.5, abs=0.02)


def test_slow_start_aggression_and_min_weight():
    clock = Clock()
    hosts = rampHosts(clock, 1, 1)
    config = SlowStartConfig(window=100.0, aggression=2.0, minWeightPercent=30.0)
    lb = factory("round_robin").create(hosts, random.Random(27), options(clock, slowStart=config))
    clock.advance(4)  # (4/100) ** (1/2) = 0.2, below the 30% floor
    assert abs(share(lb, hosts[1]) - 0.3 / 1.3) < 0.02
    clock.advance(60)  # (64/100) ** (1/2) = 0.8
    assert abs(share(lb, hosts[1]) - 0.8 / 1.8) < 0.02


def test_slow_start_leaves_start_hosts_and_unhealthy_hosts_alone():
    clock = Clock()
    hosts = makeHosts(1, 1)  # the hosts a cluster starts with never ramp
    lb = factory("round_robin").create(hosts, random.Random(28),
                                       options(clock, slowStart=SlowStartConfig(window=60.0)))
    assert share(lb, hosts[1]) == 0.5
    # an unhealthy new host is not ramped (Envoy: slow start applies to healthy hosts)
    ramp = SlowStart(SlowStartConfig(window=60.0), clock, hosts)
    hosts[1].addedAt = clock.seconds()
    hosts[1].setHealthFlag(HealthFlag.FAILED_ACTIVE_HC)
    assert ramp.factor(hosts[1], clock.seconds()) == 1.0
    hosts[1].clearHealthFlag(HealthFlag.FAILED_ACTIVE_HC)
    assert ramp.factor(hosts[1], clock.seconds()) == 0.1


def test_cluster_marks_hosts_added_after_start_and_rebuilds_with_options():
    clock = Clock()
    clock.advance(50)
    store = StatsStore()
    config = ClusterConfig("c", lbPolicy="round_robin", endpoints=(EndpointConfig("10.0.0.1", 80),),
                           lbConfig=LbConfig(slowStart=SlowStartConfig(window=10.0)))
    cluster = Cluster("c", config, config.endpoints, factory("round_robin"), lambda h: None, random.Random(29),
                      store.scope(cluster="c"), clock=clock)
    first = cluster.hosts[0]
    assert first.addedAt is None
    clock.advance(5)
    cluster.updateHosts([EndpointConfig("10.0.0.1", 80), EndpointConfig("10.0.0.2", 80)])
    assert cluster.hosts[0] is first and first.addedAt is None
    assert cluster.hosts[1].addedAt == 55
    counts = Counter(cluster.chooseHost(None) for _ in range(1100))
    assert abs(counts[cluster.hosts[1]] - 100) < 25
    clock.advance(10)
    counts = Counter(cluster.chooseHost(None) for _ in range(1000))
    assert counts[cluster.hosts[1]] == 500
