"""
The active health-check scheduler (txmesh/upstream/health.py) on a Clock with scripted checkers: thresholds, fail
fast, recovery, timeouts, intervals and jitter bounds, host-set changes, stop; and the cluster's view of it.
"""

import random

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock
from zope.interface import implementer
from zope.interface.verify import verifyObject

from txmesh.config import HealthCheckConfig
from txmesh.interfaces import IHealthChecker, IHealthCheckerFactory
from txmesh.stats import StatsStore
from txmesh.upstream.cluster import Cluster
from txmesh.upstream.health import (
    PASSED,
    CheckOutcome,
    CheckResult,
    ClusterHealthChecker,
    HealthCheckSession,
    HealthCheckStats,
    failed,
)
from txmesh.upstream.host import HealthFlag, Host
from txmesh.upstream.lb import LoadBalancerFactory, RoundRobinLoadBalancer

REFUSED = CheckResult(CheckOutcome.REFUSED, "connection refused")
NETWORK = CheckResult(CheckOutcome.NETWORK, "reset")


@implementer(IHealthChecker)
class ScriptedChecker:
    """Each check returns a Deferred the test fires (or leaves pending)."""

    def __init__(self, host=None):
        self.host = host
        self.pending = []
        self.cancelled = 0

    def check(self):
        d = defer.Deferred(lambda _: self._cancelled())
        self.pending.append(d)
        return d

    def _cancelled(self):
        self.cancelled += 1

    def answer(self, result):
        d = self.pending.pop(0)
        d.callback(result)


@implementer(IHealthCheckerFactory)
class ScriptedFactory:
    name = "scripted"
    protocols = None
    keys = ()

    def __init__(self):
        self.checkers = {}

    def buildConfig(self, raw, context):
        return None

    def makeChecker(self, config, host, reactor):
        checker = self.checkers[host.address] = ScriptedChecker(host)
        return checker


def hcConfig(**kw):
    kw.setdefault("interval", 10.0)
    kw.setdefault("unhealthyInterval", kw["interval"])
    return HealthCheckConfig(type="scripted", factory=kw.pop("factory", ScriptedFactory()), **kw)


class Session:
    """One host's session on a Clock, with its stats."""

    def __init__(self, seed=1, **kw):
        self.clock = Clock()
        self.host = Host("10.0.0.1", 80)
        self.checker = ScriptedChecker(self.host)
        self.store = StatsStore()
        self.stats = HealthCheckStats(self.store.scope(cluster="c"))
        self.changes = 0
        self.session = HealthCheckSession(self.host, hcConfig(**kw), self.checker, self.clock, random.Random(seed),
                                          self.stats, self._changed)

    def _changed(self):
        self.changes += 1

    def value(self, name):
        return self.store.value(name, cluster="c")

    def run(self, result):
        """Let the next check start and answer it."""
        self.clock.advance(self.session.nextInterval() if self.session.lastCheck else 0)
        self.checker.answer(result)


def test_factories_and_checkers_provide_their_interfaces():
    factory = ScriptedFactory()
    verifyObject(IHealthCheckerFactory, factory)
    verifyObject(IHealthChecker, factory.makeChecker(None, Host("10.0.0.1", 80), Clock()))


def test_a_new_host_starts_failed_and_pending_and_one_pass_makes_it_healthy():
    s = Session(healthyThreshold=3)
    assert not s.host.healthy
    assert s.host.healthFlags == HealthFlag.FAILED_ACTIVE_HC | HealthFlag.PENDING_ACTIVE_HC
    s.session.start()
    s.clock.advance(0)
    assert len(s.checker.pending) == 1
    s.checker.answer(PASSED)
    assert s.host.healthy and s.host.healthFlags == 0  # Envoy: the first check decides, whatever the threshold
    assert (s.value("health_check_attempt"), s.value("health_check_success")) == (1, 1)


def test_a_new_host_whose_first_check_fails_stays_failed_but_no_longer_pending():
    s = Session()
    s.session.start()
    s.run(NETWORK)
    assert s.host.healthFlags == HealthFlag.FAILED_ACTIVE_HC
    assert s.session.describe()["last_check"]["result"] == "network"


def healthySession(**kw):
    s = Session(**kw)
    s.session.start()
    s.run(PASSED)
    assert s.host.healthy
    return s


def test_network_failures_and_timeouts_count_toward_the_unhealthy_threshold():
    s = healthySession(unhealthyThreshold=3)
    s.run(NETWORK)
    s.run(NETWORK)
    assert s.host.healthy
    s.run(NETWORK)
    assert not s.host.healthy
    assert s.host.healthFlags == HealthFlag.FAILED_ACTIVE_HC
    assert (s.value("health_check_failure"), s.value("health_check_network_failure")) == (3, 3)


def test_a_pass_between_failures_resets_the_count():
    s = healthySession(unhealthyThreshold=2)
    s.run(NETWORK)
    s.run(PASSED)
    s.run(NETWORK)
    assert s.host.healthy
    s.run(NETWORK)
    assert not s.host.healthy


@pytest.mark.parametrize("result", [REFUSED, failed("status 503")])
def test_a_refused_connect_or_a_wrong_answer_fails_the_host_at_once(result):
    s = healthySession(unhealthyThreshold=5)
    s.run(result)
    assert not s.host.healthy
    assert s.session.describe()["last_check"] == {"time": s.clock.seconds(), "result": result.outcome.value,
                                                 "reason": result.reason}
    # a wrong answer is not a network failure; a refusal is
    assert s.value("health_check_network_failure") == (1 if result is REFUSED else 0)


def test_recovery_needs_the_healthy_threshold_of_passes_in_a_row():
    s = healthySession(healthyThreshold=3)
    s.run(REFUSED)
    assert not s.host.healthy
    s.run(PASSED)
    s.run(PASSED)
    s.run(NETWORK)  # interrupts the run
    s.run(PASSED)
    s.run(PASSED)
    assert not s.host.healthy
    s.run(PASSED)
    assert s.host.healthy
    assert s.value("health_check_healthy") == 0  # the gauge is the cluster checker's, tested below


def test_health_watchers_see_each_flip_once():
    s = healthySession()
    seen = []
    s.host.addHealthWatcher(lambda h: seen.append(h.healthy))
    s.run(REFUSED)
    s.run(REFUSED)
    s.run(PASSED)
    s.run(PASSED)
    assert seen == [False, True]


def test_a_check_without_answer_times_out_and_counts_as_a_network_failure():
    s = healthySession(timeout=2.0, unhealthyThreshold=2, interval=10.0)
    s.clock.advance(10.0)
    assert len(s.checker.pending) == 1
    s.clock.advance(1.9)
    assert s.checker.cancelled == 0
    s.clock.advance(0.1)
    assert s.checker.cancelled == 1  # its connection is closed
    assert s.session.describe()["last_check"]["result"] == "timeout"
    assert s.value("health_check_timeout") == 1 and s.value("health_check_network_failure") == 1
    assert s.host.healthy  # one timeout of two
    s.checker.pending.clear()
    # the next check comes an interval after the timeout
    s.clock.advance(9.9)
    assert not s.checker.pending
    s.clock.advance(0.1)
    assert len(s.checker.pending) == 1
    s.clock.advance(2.0)
    assert not s.host.healthy


def test_intervals_healthy_unhealthy_and_no_traffic():
    s = healthySession(interval=10.0, unhealthyInterval=2.0, noTrafficInterval=60.0)
    assert s.session.nextInterval() == 60.0  # the host never had a request
    s.clock.advance(59.9)
    assert not s.checker.pending
    s.clock.advance(0.1)
    s.host.stats.rq_total.value += 1
    assert s.session.nextInterval() == 10.0
    s.checker.answer(REFUSED)
    assert s.session.nextInterval() == 2.0
    # the schedule follows: the next check comes 2s after the failure
    s.clock.advance(1.9)
    assert not s.checker.pending
    s.clock.advance(0.1)
    assert len(s.checker.pending) == 1


def test_jitter_stays_within_its_bounds():
    s = Session(interval=10.0, intervalJitter=1.0, intervalJitterPercent=20, seed=7)
    s.host.clearHealthFlag(HealthFlag.FAILED_ACTIVE_HC | HealthFlag.PENDING_ACTIVE_HC)
    seen = [s.session.nextInterval() for _ in range(2000)]
    assert min(seen) >= 10.0 and max(seen) <= 10.0 + 1.0 + 2.0
    assert max(seen) - min(seen) > 2.5  # it does spread


def test_initial_jitter_delays_the_first_check_within_its_bound():
    firsts = []
    for seed in range(20):
        s = Session(initialJitter=3.0, seed=seed)
        s.session.start()
        [call] = s.clock.getDelayedCalls()
        firsts.append(call.getTime())
    assert all(0 <= t <= 3.0 for t in firsts) and len(set(firsts)) > 10


def test_stop_cancels_the_timer_and_the_check_in_flight():
    s = healthySession()
    s.clock.advance(10.0)
    assert len(s.checker.pending) == 1
    s.session.stop()
    assert s.checker.cancelled == 1
    assert s.clock.getDelayedCalls() == []
    assert s.host.healthy  # flags are kept


def test_a_checker_that_raises_is_a_network_failure_not_a_crash():
    s = Session()

    def boom():
        raise RuntimeError("bug")

    s.checker.check = boom
    s.session.start()
    s.clock.advance(0)
    assert s.session.describe()["last_check"]["result"] == "network"
    assert len(s.clock.getDelayedCalls()) == 1  # checking goes on


# -- the cluster's health checker -----------------------------------------------------------------------------------


class Endpoint:
    def __init__(self, port):
        self.host, self.port, self.weight = "10.0.0.1", port, 1
        self.priority, self.locality, self.metadata, self.healthy = 0, "", (), True


def makeCluster(ports, **kw):
    clock = Clock()
    factory = ScriptedFactory()
    store = StatsStore()
    scope = store.scope(cluster="c")
    checker = ClusterHealthChecker(hcConfig(factory=factory, **kw), clock, random.Random(1), scope)
    from txmesh.config import ClusterConfig

    cluster = Cluster("c", ClusterConfig("c"), [Endpoint(p) for p in ports],
                      LoadBalancerFactory("round_robin", RoundRobinLoadBalancer), lambda h: None, random.Random(1),
                      scope, healthChecker=checker)
    return clock, factory, store, cluster, checker


def test_the_cluster_checks_every_host_and_routes_only_to_those_that_pass():
    clock, factory, store, cluster, checker = makeCluster([1, 2])
    # every host pending its first check: the cluster is in panic (Envoy's), so a pick ignores health
    assert cluster.chooseHost() is not None and store.value("lb_healthy_panic", cluster="c") == 1
    checker.start()
    clock.advance(0)
    factory.checkers["10.0.0.1:1"].answer(PASSED)
    factory.checkers["10.0.0.1:2"].answer(REFUSED)
    assert {cluster.chooseHost().address for _ in range(10)} == {"10.0.0.1:1"}
    assert store.value("health_check_healthy", cluster="c") == 1
    hosts = {h["address"]: h for h in cluster.describe()["hosts"]}
    assert hosts["10.0.0.1:2"]["healthy"] is False
    assert hosts["10.0.0.1:2"]["health_flags"] == ["failed_active_hc"]
    assert hosts["10.0.0.1:2"]["health_check"]["last_check"] == {"time": 0.0, "result": "refused",
                                                               "reason": "connection refused"}
    assert hosts["10.0.0.1:1"]["health_check"]["last_check"]["result"] == "passed"


def test_hosts_added_and_removed_by_updateHosts_get_and_lose_their_checks():
    clock, factory, store, cluster, checker = makeCluster([1, 2])
    checker.start()
    clock.advance(0)
    factory.checkers["10.0.0.1:1"].answer(PASSED)
    old2 = factory.checkers["10.0.0.1:2"]
    cluster.updateHosts([Endpoint(1), Endpoint(3)])
    assert old2.cancelled == 1  # host 2's check in flight is cancelled
    assert sorted(h.address for h in checker.sessions) == ["10.0.0.1:1", "10.0.0.1:3"]
    host1 = cluster.hosts[0]
    assert host1.healthy  # a kept host keeps its health and its session
    clock.advance(0)
    factory.checkers["10.0.0.1:3"].answer(PASSED)
    assert store.value("health_check_healthy", cluster="c") == 2


def test_stop_leaves_no_timer_running():
    clock, factory, store, cluster, checker = makeCluster([1, 2])
    checker.start()
    clock.advance(0)
    checker.stop()
    assert clock.getDelayedCalls() == []
    assert all(c.cancelled == 1 for c in factory.checkers.values())


def test_a_cluster_without_health_checks_has_no_checker_and_healthy_hosts():
    from txmesh.config import ClusterConfig

    cluster = Cluster("c", ClusterConfig("c"), [Endpoint(1)], LoadBalancerFactory("round_robin",
                                                                                   RoundRobinLoadBalancer),
                      lambda h: None, random.Random(1), StatsStore().scope(cluster="c"))
    assert cluster.healthChecker is None
    assert cluster.chooseHost().healthy
    assert "health_check" not in cluster.describe()["hosts"][0]


# -- the service starts and stops the checks ------------------------------------------------------------------------

SERVICE_MESH = """
drain_timeout: 1s
admin: {address: "tcp:0:interface=127.0.0.1"}
listeners: [{name: web, address: "tcp:0", default_cluster: backend}]
clusters:
  - name: backend
    endpoints: [{address: "10.0.0.1:80"}, {address: "10.0.0.2:80"}]
    health_checks: [{type: tcp, interval: 5s}]
"""


def test_the_service_starts_checks_on_its_reactor_and_stops_them_on_shutdown():
    from twisted.internet.testing import MemoryReactorClock

    from txmesh.config import loads
    from txmesh.service import MeshService

    reactor = MemoryReactorClock()
    svc = MeshService(loads(SERVICE_MESH), reactor, installSignal=lambda *a: None)
    [cluster] = list(svc.clusters)
    assert [h.healthy for h in cluster.hosts] == [False, False]  # pending their first check
    reactor.advance(0)
    assert reactor.tcpClients == []  # nothing before the service starts
    svc.startService()
    reactor.advance(0)
    assert sorted((c[0], c[1]) for c in reactor.tcpClients) == [("10.0.0.1", 80), ("10.0.0.2", 80)]
    connectors = list(reactor.connectors)
    done = []
    svc.stopService().addBoth(done.append)
    reactor.advance(1)
    assert done == [None]
    assert all(c.stoppedConnecting for c in connectors)  # the checks in flight were cancelled
    assert reactor.getDelayedCalls() == []


def test_checks_stopped_then_started_again_go_on():
    s = healthySession()
    s.session.stop()
    s.session.start()
    s.clock.advance(0)
    s.checker.answer(PASSED)
    assert len(s.clock.getDelayedCalls()) == 1  # the next one is scheduled
