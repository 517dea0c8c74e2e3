"""
Cluster circuit breakers (issue 11 part 4): ``circuit_breakers`` config, ClusterResources and its gauges, and the
pools of all three protocols sharing the cluster's connection and pending-request limits.
"""

import random

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from zope.interface.verify import verifyObject

from tests.test_multiplex_pool import Cfg, Connector as MuxConnector, Responder as MuxResponder
from tests.test_h2_pool import Peer
from txmesh import config as _config
from txmesh.config import CircuitBreakersConfig, ClusterConfig
from txmesh.errors import ConfigError, Overflow
from txmesh.interfaces import IResourceLimit
from txmesh.protocols.dubbo.pool import MultiplexConnectionPool
from txmesh.protocols.h2.client import H2ClientProtocol
from txmesh.protocols.h2.pool import H2ConnectionPool
from txmesh.protocols.http1.pool import HTTP1ConnectionPool
from txmesh.stats import StatsStore
from txmesh.testing import FakeConnector
from txmesh.upstream.cluster import ClusterManager
from txmesh.upstream.host import Host
from txmesh.upstream.resources import ClusterResources, ResourceLimit

MESH = """
listeners:
  - name: in
    address: tcp:0
    default_cluster: backend
clusters:
  - name: backend
    endpoints: [{address: 10.0.0.1:80}, {address: 10.0.0.2:80}]
%s
"""


def load(extra):
    return _config.loads(MESH % (extra,))


def test_config_defaults_are_envoys_and_keys_are_read():
    assert load("").clusters[0].circuitBreakers is None
    cb = load("    circuit_breakers: {max_connections: 2, max_pending_requests: 0, max_requests: 5, max_retries: 1}"
              ).clusters[0].circuitBreakers
    assert cb == CircuitBreakersConfig(2, 0, 5, 1)
    assert load("    circuit_breakers: {}").clusters[0].circuitBreakers == CircuitBreakersConfig(1024, 1024, 1024, 3)


@pytest.mark.parametrize("value, message", [
    ("{max_connections: 0}", "clusters[0].circuit_breakers.max_connections: must be >= 1, got 0"),
    ("{max_retries: -1}", "clusters[0].circuit_breakers.max_retries: must be >= 0, got -1"),
    ("{max_requests: many}", "clusters[0].circuit_breakers.max_requests"),
    ("{thresholds: []}", "clusters[0].circuit_breakers"),
    ("[1]", "clusters[0].circuit_breakers"),
])
def test_config_errors_name_the_key(value, message):
    with pytest.raises(ConfigError) as e:
        load("    circuit_breakers: " + value)
    assert message in str(e.value) and str(e.value).startswith("<string>:9: ")


def test_resources_from_config_and_gauges():
    store = StatsStore()
    scope = store.scope(cluster="c")
    r = ClusterResources.fromConfig(CircuitBreakersConfig(2, 1, 3, 0), scope)
    assert r.describe()["connections"] == {"max": 2, "count": 0}
    verifyObject(IResourceLimit, r.connections)
    verifyObject(IResourceLimit, ResourceLimit(1))
    assert not r.retries.canCreate()  # max_retries 0: no retry at all
    r.connections.inc()
    assert store.value("circuit_breakers_remaining_cx", cluster="c") == 1
    assert store.value("circuit_breakers_open_cx", cluster="c") == 0
    r.connections.inc()
    assert not r.connections.canCreate()
    assert store.value("circuit_breakers_remaining_cx", cluster="c") == 0
    assert store.value("circuit_breakers_open_cx", cluster="c") == 1
    r.connections.dec()
    assert r.connections.canCreate() and store.value("circuit_breakers_open_cx", cluster="c") == 0
    assert ClusterResources.fromConfig(None).describe()["retries"] == {"max": 3, "count": 0}


def test_cluster_manager_gives_every_pool_the_clusters_resources():
    cfg = load("    circuit_breakers: {max_connections: 1, max_pending_requests: 1}").clusters[0]
    attempts = []

    def connectFactory(config):
        def connect(host):
            attempts.append(defer.Deferred())
            return attempts[-1]
        return connect

    store = StatsStore()
    manager = ClusterManager(Clock(), [cfg], connectFactory, store, random.Random(0))
    cluster = manager.get("backend")
    assert cluster.resources.connections.max == 1 and cluster.resources.pendingRequests.max == 1
    a, b = (cluster.poolFor(h) for h in cluster.hosts)
    a.acquire()
    assert cluster.resources.connections.count == 1
    b.acquire()  # b has no connection at all: it may make one (Envoy's rule), over the limit
    assert cluster.resources.connections.count == 2
    a.acquire()  # over the limit: no connect, it waits as pending
    assert len(attempts) == 2 and cluster.resources.pendingRequests.count == 1
    failed = []
    b.acquire().addErrback(failed.append)
    assert isinstance(failed[0].value, Overflow)
    assert store.value("upstream_cx_overflow", cluster="backend") == 1
    assert store.value("upstream_rq_pending_overflow", cluster="backend") == 1
    assert cluster.describe()["stats"]["upstream_cx_overflow"] == 1
    assert cluster.describe()["circuit_breakers"]["pending_requests"] == {"max": 1, "count": 1}
    assert store.value("circuit_breakers_remaining_rq_pending", cluster="backend") == 0


# -- the three pools, two hosts sharing one cluster's resources --------------------------------------------------

def sharedResources(store, maxConnections=1, maxPendingRequests=1):
    return ClusterResources(maxConnections, maxPendingRequests, scope=store.scope(cluster="c"))


def outcomes(d):
    out = []
    d.addBoth(out.append)
    return out


def test_http1_pools_share_the_cluster_limits():
    store = StatsStore()
    resources = sharedResources(store)
    clock = Clock()
    cfg = ClusterConfig("c", maxConnections=10, maxPendingRequests=10)
    connA, connB = FakeConnector(), FakeConnector()
    poolA = HTTP1ConnectionPool(clock, Host("10.0.0.1", 80), cfg, connA, store.scope(cluster="c"), resources)
    poolB = HTTP1ConnectionPool(clock, Host("10.0.0.2", 80), cfg, connB, store.scope(cluster="c"), resources)
    first = outcomes(poolA.acquire())
    protoA = connA.succeed()
    assert first == [protoA] and resources.connections.count == 1
    waiting = outcomes(poolA.acquire())  # A's second request: cluster at max_connections, so it waits
    assert len(connA.attempts) == 1 and waiting == [] and poolA.pendingCount == 1
    assert store.value("upstream_cx_overflow", cluster="c") == 1
    over = outcomes(poolA.acquire())  # the cluster's one pending slot is taken
    assert isinstance(over[0].value, Overflow) and "max_pending_requests" in str(over[0].value)
    overB = outcomes(poolB.acquire())  # B connects (its first), and B's next has no pending slot either
    assert len(connB.attempts) == 1 and overB == []
    overB2 = outcomes(poolB.acquire())
    assert isinstance(overB2[0].value, Overflow)
    assert store.value("upstream_rq_pending_overflow", cluster="c") == 2
    # A's connection frees: the waiter takes it and the pending slot comes back
    poolA.release(protoA)
    assert waiting == [protoA] and resources.pendingRequests.count == 0
    assert store.value("circuit_breakers_remaining_rq_pending", cluster="c") == 1
    # a connection closed gives its slot back
    connB.attempts[0].errback(Exception("refused"))
    protoA.transport.loseConnection()
    poolA.connectionLost(protoA)
    assert resources.connections.count == 0 and store.value("circuit_breakers_remaining_cx", cluster="c") == 1


def test_multiplex_pool_overflow_at_the_cluster_limits():
    store = StatsStore()
    resources = sharedResources(store, maxPendingRequests=2)
    clock = Clock()
    connector = MuxConnector()
    pool = MultiplexConnectionPool(clock, Host("10.0.0.1", 20880), Cfg(connectionsPerHost=2, maxConcurrentStreams=1),
                                   connector, store.scope(cluster="c"), resources)
    first, second = outcomes(pool.acquire()), outcomes(pool.acquire())
    assert resources.pendingRequests.count == 2 and len(connector.attempts) == 1  # both wait for the connect
    connector.succeed()
    assert len(first) == 1 and second == []  # the one stream is taken; the cluster allows no second connection
    assert len(connector.attempts) == 1 and resources.pendingRequests.count == 1
    outcomes(pool.acquire())  # waits, and the cluster refuses the connect it would make
    assert store.value("upstream_cx_overflow", cluster="c") == 1
    third = outcomes(pool.acquire())
    assert isinstance(third[0].value, Overflow)
    assert store.value("upstream_rq_pending_overflow", cluster="c") == 1
    first[0].conn.proto.streams[1] = MuxResponder()
    pool.release(first[0])
    assert len(second) == 1 and resources.pendingRequests.count == 1


def test_h2_pool_overflow_at_the_cluster_limits():
    store = StatsStore()
    resources = sharedResources(store)
    peers = []

    def connect(host):
        proto = H2ClientProtocol()
        proto.makeConnection(StringTransport())
        peers.append(Peer(proto, 1))
        peers[-1].pump()
        return defer.succeed(proto)

    pool = H2ConnectionPool(Clock(), Host("127.0.0.1", 1), ClusterConfig("c", protocol="h2"), connect,
                            store.scope(cluster="c"), resources)
    first = outcomes(pool.acquire())
    assert len(first) == 1 and len(peers) == 1
    second = outcomes(pool.acquire())  # the peer allows one stream; the cluster one connection: it waits
    assert second == [] and len(peers) == 1 and store.value("upstream_cx_overflow", cluster="c") >= 1
    third = outcomes(pool.acquire())
    assert isinstance(third[0].value, Overflow)
    assert store.value("upstream_rq_pending_overflow", cluster="c") == 1
    assert store.value("circuit_breakers_open_rq_pending", cluster="c") == 1
