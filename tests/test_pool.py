"""HTTP1ConnectionPool driven with fake client protocols on StringTransport and a fake clock."""

import functools

import pytest
from twisted.internet import defer
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock

from txmesh.config import ClusterConfig
from txmesh.errors import ConnectFailure, ConnectTimeout, Overflow, PoolClosed
from txmesh.stats import StatsStore
from txmesh.testing import FakeConnector
from txmesh.upstream.host import Host
from txmesh.protocols.http1.pool import HTTP1ConnectionPool


# the real config object, with this module's defaults
FakeClusterConfig = functools.partial(ClusterConfig, "backend", idleTimeout=10.0, maxConnections=2,
                                      maxPendingRequests=2)


class Harness:
    def __init__(self, **config):
        self.clock = Clock()
        self.store = StatsStore()
        self.host = Host("10.0.0.1", 8080)
        self.connector = FakeConnector()
        self.pool = HTTP1ConnectionPool(self.clock, self.host, FakeClusterConfig(**config), self.connector,
                                        self.store.scope(cluster="backend"))

    def stat(self, name):
        return self.store.value(name, cluster="backend")

    def acquire(self):
        """acquire() and collect its outcome into a list: [proto] or [Failure]."""
        out = []
        d = self.pool.acquire()
        d.addBoth(out.append)
        return d, out

    def connected(self):
        """acquire() completed by a fresh connect; returns the proto."""
        _, out = self.acquire()
        proto = self.connector.succeed()
        assert out == [proto]
        return proto


def test_new_connection_then_reuse_lifo():
    h = Harness()
    a = h.connected()
    b = h.connected()
    assert h.stat("upstream_cx_total") == 2 and h.stat("upstream_cx_active") == 2
    h.pool.release(a)
    h.pool.release(b)
    assert h.pool.idleCount == 2
    # Most recently used first, handed over synchronously, no new connect.
    d, out = h.acquire()
    assert out == [b]
    d, out = h.acquire()
    assert out == [a]
    assert len(h.connector.attempts) == 2
    assert h.stat("upstream_rq_total") == 4 and h.host.stats.rq_total.value == 4
    assert h.host.stats.cx_total.value == 2
    assert a.onConnectionLost == h.pool.connectionLost


def test_pending_then_overflow():
    h = Harness(maxConnections=1, maxPendingRequests=2)
    a = h.connected()
    _, first = h.acquire()
    _, second = h.acquire()
    assert first == second == [] and h.stat("upstream_rq_pending_active") == 2
    _, third = h.acquire()
    assert third[0].check(Overflow)
    assert h.stat("upstream_rq_pending_overflow") == 1
    # Released connection goes to the oldest pending request.
    h.pool.release(a)
    assert first == [a] and second == []
    h.pool.release(a)
    assert second == [a]
    assert h.stat("upstream_rq_pending_active") == 0
    assert len(h.connector.attempts) == 1


def test_connect_timeout():
    h = Harness(connectTimeout=2.0)
    _, out = h.acquire()
    h.clock.advance(1.9)
    assert out == []
    h.clock.advance(0.1)
    assert out[0].check(ConnectTimeout)
    assert h.connector.cancelled == 1
    assert h.stat("upstream_cx_connect_timeout") == 1
    assert h.stat("upstream_cx_connect_fail") == 1
    assert h.host.stats.cx_connect_fail.value == 1
    assert h.stat("upstream_cx_active") == 0
    assert h.clock.getDelayedCalls() == []


def test_connect_failure_chains_cause_and_lets_pending_connect():
    h = Harness(maxConnections=1)
    _, first = h.acquire()
    _, second = h.acquire()
    assert len(h.connector.attempts) == 1
    h.connector.attempts[0].errback(ConnectionRefusedError("nope"))
    assert first[0].check(ConnectFailure) and not first[0].check(ConnectTimeout)
    assert isinstance(first[0].value.__cause__, ConnectionRefusedError)
    # Only the request that caused the connect failed; the queued one gets a fresh attempt.
    assert second == [] and len(h.connector.attempts) == 2
    proto = h.connector.succeed()
    assert second == [proto]
    assert h.stat("upstream_cx_connect_fail") == 1 and h.stat("upstream_cx_connect_timeout") == 0
    assert h.clock.getDelayedCalls() == []


def test_connect_raising_synchronously_is_connect_failure():
    h = Harness()

    def boom(host):
        raise OSError("DNS lookup failed")

    h.pool._connect = boom
    _, out = h.acquire()
    assert out[0].check(ConnectFailure)
    assert isinstance(out[0].value.__cause__, OSError)


def test_cancel_pending_request_leaves_queue():
    h = Harness(maxConnections=1, maxPendingRequests=1)
    a = h.connected()
    d, out = h.acquire()
    d.cancel()
    assert out[0].check(defer.CancelledError)
    assert h.stat("upstream_rq_pending_active") == 0
    # The queue has room again, and releasing does not hand the connection to the cancelled request.
    _, again = h.acquire()
    h.pool.release(a)
    assert again == [a]


def test_cancel_connecting_request_cancels_connect_and_lets_pending_connect():
    h = Harness(maxConnections=1)
    d, out = h.acquire()
    _, queued = h.acquire()
    d.cancel()
    assert out[0].check(defer.CancelledError)
    assert h.connector.cancelled == 1
    assert h.stat("upstream_cx_connect_fail") == 0
    assert len(h.connector.attempts) == 2
    proto = h.connector.succeed()
    assert queued == [proto]
    assert h.clock.getDelayedCalls() == []


def test_idle_timeout_closes_and_reuse_postpones_it():
    h = Harness(idleTimeout=10.0)
    a = h.connected()
    h.pool.release(a)
    h.clock.advance(5)
    d, out = h.acquire()
    assert out == [a]
    h.clock.advance(3)
    h.pool.release(a)  # idle since t=8
    h.clock.advance(7)  # t=15: the first timer fired, found it recently used
    assert not a.transport.disconnecting
    h.clock.advance(3)  # t=18
    assert a.transport.disconnecting
    assert h.stat("upstream_cx_idle_timeout") == 1
    assert h.stat("upstream_cx_active") == 0 and h.stat("upstream_cx_destroy") == 1
    assert h.pool.idleCount == 0
    a.connectionLost()
    # The next request connects afresh.
    h.acquire()
    assert len(h.connector.attempts) == 2


def test_idle_timer_fires_while_busy_then_rearms_on_release():
    h = Harness(idleTimeout=10.0)
    a = h.connected()
    h.pool.release(a)
    h.acquire()
    h.clock.advance(20)
    assert not a.transport.disconnecting
    h.pool.release(a)
    h.clock.advance(10)
    assert a.transport.disconnecting


def test_no_idle_timer_when_zero():
    h = Harness(idleTimeout=0)
    a = h.connected()
    h.pool.release(a)
    assert h.clock.getDelayedCalls() == []


def test_max_requests_per_connection():
    h = Harness(maxRequestsPerConnection=2)
    a = h.connected()
    h.pool.release(a)
    _, out = h.acquire()
    assert out == [a]
    h.pool.release(a)
    assert a.transport.disconnecting and not a.transport.disconnected
    assert h.pool.idleCount == 0 and h.stat("upstream_cx_destroy") == 1
    h.acquire()
    assert len(h.connector.attempts) == 2


def test_discard_aborts_and_lets_pending_connect():
    h = Harness(maxConnections=1)
    a = h.connected()
    _, queued = h.acquire()
    h.pool.discard(a)
    assert a.transport.disconnected  # abortConnection
    assert h.stat("upstream_cx_destroy") == 1 and h.stat("upstream_cx_active") == 0
    assert len(h.connector.attempts) == 2
    b = h.connector.succeed()
    assert queued == [b]
    a.connectionLost()  # late, harmless
    assert h.stat("upstream_cx_destroy") == 1


def test_connection_lost_idle_and_busy():
    h = Harness()
    a = h.connected()
    b = h.connected()
    h.pool.release(a)
    a.connectionLost()
    assert h.pool.idleCount == 0
    b.connectionLost()
    assert h.pool.busyCount == 0
    assert h.stat("upstream_cx_active") == 0 and h.stat("upstream_cx_destroy") == 2
    assert h.clock.getDelayedCalls() == []
    h.pool.release(b)  # the router releasing a lost connection is ignored
    assert h.pool.idleCount == 0


def test_drain_closes_idle_now_busy_on_release():
    h = Harness(maxConnections=2)
    idle = h.connected()
    busy = h.connected()
    h.pool.release(idle)
    done = []
    h.pool.drain().addCallback(done.append)
    assert idle.transport.disconnecting and not busy.transport.disconnecting
    _, refused = h.acquire()
    assert refused[0].check(PoolClosed)
    idle.connectionLost()
    assert done == []
    h.pool.release(busy)
    assert busy.transport.disconnecting and done == []
    busy.connectionLost()
    assert done == [None]
    assert h.stat("upstream_cx_active") == 0 and h.stat("upstream_cx_destroy") == 2


def test_drain_fails_pending_requests():
    h = Harness(maxConnections=1)
    a = h.connected()
    _, pending = h.acquire()
    done = []
    h.pool.drain().addCallback(done.append)
    assert pending[0].check(PoolClosed)
    assert h.stat("upstream_rq_pending_active") == 0
    h.pool.release(a)
    a.connectionLost()
    assert done == [None]


def test_drain_waits_for_connects_in_flight():
    h = Harness()
    _, out = h.acquire()
    done = []
    h.pool.drain().addCallback(done.append)
    proto = h.connector.succeed()
    assert out == [proto] and done == []
    h.pool.discard(proto)
    proto.connectionLost()
    assert done == [None]


def test_drain_empty_pool_fires_at_once():
    h = Harness()
    done = []
    h.pool.drain().addCallback(done.append)
    assert done == [None]


@pytest.mark.parametrize("n", [1, 5])
def test_gauges_return_to_zero(n):
    h = Harness(maxConnections=n, maxPendingRequests=n)
    protos = [h.connected() for _ in range(n)]
    for p in protos:
        h.pool.discard(p)
        p.connectionLost()
    assert h.stat("upstream_cx_active") == 0
    assert h.stat("upstream_cx_total") == n == h.stat("upstream_cx_destroy")
