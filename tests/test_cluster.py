"""Cluster and ClusterManager: host choice, lazy pools, host-set updates, drain, describe()."""

import functools
import json
import random

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.plugin import getPlugins

import txmesh.plugins
from txmesh.config import ClusterConfig, EndpointConfig
from txmesh.interfaces import ICluster, ILoadBalancerFactory
from txmesh.stats import StatsStore
from txmesh.upstream.cluster import Cluster, ClusterManager
from txmesh.upstream.host import HealthFlag, Host
from txmesh.upstream.lb import findLoadBalancerFactory
from txmesh.protocols.http1.pool import HTTP1ConnectionPool
from txmesh.protocols.http1.protocol import HTTP1
from txmesh.testing import FakeClientProtocol


# the real config objects, with this module's defaults
Endpoint = EndpointConfig
FakeClusterConfig = functools.partial(ClusterConfig, maxConnections=10, maxPendingRequests=10, descriptor=HTTP1)


class FakePool:
    def __init__(self, host):
        self.host = host
        self.drained = defer.Deferred()
        self.draining = False

    def drain(self, serveQueued=False):
        self.draining = True
        return self.drained


def lbFactory(name):
    """The built-in policy ``name``, found among the plugins as txmesh.config finds it."""
    return findLoadBalancerFactory(name, getPlugins(ILoadBalancerFactory, txmesh.plugins))


def makeCluster(endpoints, policy="round_robin"):
    store = StatsStore()
    pools = []

    def poolFactory(host):
        pools.append(FakePool(host))
        return pools[-1]

    config = FakeClusterConfig("backend", lbPolicy=policy, endpoints=tuple(endpoints))
    cluster = Cluster("backend", config, endpoints, lbFactory(policy), poolFactory,
                      random.Random(1), store.scope(cluster="backend"))
    return cluster, pools, store


def test_choose_host_and_lazy_pools():
    cluster, pools, _ = makeCluster([Endpoint("10.0.0.1", 80), Endpoint("10.0.0.2", 80)])
    assert ICluster.providedBy(cluster)
    chosen = {cluster.chooseHost(None).address for _ in range(4)}
    assert chosen == {"10.0.0.1:80", "10.0.0.2:80"}
    assert pools == []
    h = cluster.hosts[0]
    assert cluster.poolFor(h) is cluster.poolFor(h)
    assert len(pools) == 1 and pools[0].host is h


def test_no_healthy_host_counted():
    cluster, _, store = makeCluster([Endpoint("10.0.0.1", 80)])
    cluster.hosts[0].healthy = False
    assert cluster.chooseHost(None) is None
    assert store.value("upstream_cx_none_healthy", cluster="backend") == 1


def test_update_hosts_keeps_known_hosts_and_drains_removed():
    cluster, pools, store = makeCluster([Endpoint("10.0.0.1", 80), Endpoint("10.0.0.2", 80)])
    old1, old2 = cluster.hosts
    old1.stats.rq_total.inc(7)
    cluster.poolFor(old2)
    cluster.updateHosts([Endpoint("10.0.0.1", 80, weight=3), Endpoint("10.0.0.3", 80)])
    assert cluster.hosts[0] is old1 and old1.weight == 3 and old1.stats.rq_total.value == 7
    assert [h.address for h in cluster.hosts] == ["10.0.0.1:80", "10.0.0.3:80"]
    assert pools[0].draining
    assert {cluster.chooseHost(None).address for _ in range(4)} == {"10.0.0.1:80", "10.0.0.3:80"}
    # A new pool is made for a host that comes back.
    assert cluster.poolFor(old2) is not pools[0]
    assert store.value("membership_total", cluster="backend") == 2
    assert store.value("membership_change", cluster="backend") == 1
    # Host objects from discovery are accepted too; known addresses keep the existing object.
    fresh = Host("10.0.0.9", 80)
    cluster.updateHosts([Host("10.0.0.1", 80), fresh])
    assert cluster.hosts == (old1, fresh)


def test_cluster_drain_waits_for_removed_pools():
    cluster, pools, _ = makeCluster([Endpoint("10.0.0.1", 80), Endpoint("10.0.0.2", 80)])
    cluster.poolFor(cluster.hosts[0])
    cluster.poolFor(cluster.hosts[1])
    cluster.updateHosts([Endpoint("10.0.0.1", 80)])
    done = []
    cluster.drain().addCallback(done.append)
    assert pools[0].draining
    pools[0].drained.callback(None)
    assert done == []
    pools[1].drained.callback(None)
    assert done == [None]


def makeManager():
    clock = Clock()
    store = StatsStore()
    attempts = []

    def connectFactory(config):
        def connect(host):
            d = defer.Deferred()
            attempts.append((config.name, host, d))
            return d
        return connect

    configs = [
        FakeClusterConfig("a", lbFactory=lbFactory("round_robin"),
                          endpoints=(Endpoint("10.0.0.1", 80), Endpoint("10.0.0.2", 80, 2))),
        FakeClusterConfig("b", lbPolicy="least_request", lbFactory=lbFactory("least_request"),
                          endpoints=(Endpoint("10.0.1.1", 9000),)),
    ]
    return ClusterManager(clock, configs, connectFactory, store, random.Random(2)), store, attempts, clock


def test_manager_builds_clusters_and_pools():
    manager, store, attempts, _ = makeManager()
    assert [c.name for c in manager] == ["a", "b"] and len(manager) == 2
    assert manager.get("nope") is None and "a" in manager
    b = manager.get("b")
    host = b.chooseHost(None)
    pool = b.poolFor(host)
    assert isinstance(pool, HTTP1ConnectionPool)
    out = []
    pool.acquire().addCallback(out.append)
    name, connectedHost, d = attempts[0]
    assert name == "b" and connectedHost is host
    proto = FakeClientProtocol()
    proto.makeConnection(StringTransport())
    d.callback(proto)
    assert out == [proto]
    assert store.value("upstream_rq_total", cluster="b") == 1
    assert store.value("upstream_cx_active", cluster="b") == 1
    assert store.value("upstream_host_rq_total", cluster="b", host="10.0.1.1:9000") == 1
    assert b.stats.upstream_cx_total.value == 1

    done = []
    manager.drain().addCallback(done.append)
    assert done == []
    pool.release(proto)
    proto.connectionLost()
    assert done == [None]


def test_describe():
    manager, _, attempts, _ = makeManager()
    a = manager.get("a")
    a.hosts[1].setHealthFlag(HealthFlag.FAILED_ACTIVE_HC)
    a.hosts[0].activeRequests = 3
    a.poolFor(a.hosts[0]).acquire()
    described = manager.describe()
    json.dumps(described)
    first = described[0]
    assert first["name"] == "a" and first["lb_policy"] == "round_robin" and first["protocol"] == "http1"
    assert first["stats"]["upstream_rq_total"] == 1 and first["stats"]["membership_healthy"] == 1
    assert first["hosts"][0] == {"address": "10.0.0.1:80", "weight": 1, "healthy": True, "health_flags": [],
                                 "priority": 0, "active_requests": 3,
                                 "stats": {"cx_total": 1, "cx_connect_fail": 0, "rq_total": 1, "rq_error": 0}}
    assert first["hosts"][1]["healthy"] is False and first["hosts"][1]["weight"] == 2
    assert first["hosts"][1]["health_flags"] == ["failed_active_hc"]
    assert described[1]["lb_policy"] == "least_request"
