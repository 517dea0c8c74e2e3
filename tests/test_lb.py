"""Load balancers: distributions, health, attempted hosts, and discovery as Twisted plugins."""

import random
from collections import Counter

from twisted.plugin import IPlugin, getPlugins

import txmesh.plugins
from txmesh.interfaces import ILoadBalancer, ILoadBalancerFactory
from txmesh.upstream.host import Host
from txmesh.upstream.lb import (
    LBContext,
    LoadBalancerFactory,
    RoundRobinLoadBalancer,
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
    # 4 active on weight 3 (1.33 per weight) loses to 1 active on weight 1 whenever both are drawn.
    hosts[0].activeRequests, hosts[1].activeRequests = 4, 1
    counts = picks(lb, 40000)
    # the heavy host wins only when drawn twice: 0.75**2
    assert abs(counts[hosts[0].address] / 40000 - 0.5625) < 0.02


def test_least_request_avoids_unhealthy():
    hosts = makeHosts(1, 1)
    hosts[0].healthy = False
    lb = factory("least_request").create(hosts, random.Random(13))
    assert {lb.chooseHost(None) for _ in range(50)} == {hosts[1]}
