"""
The connection-pool base (txmesh.upstream.conn_pool) driven by a Clock, and the contracts every pool and every
handle it gives out declare (verifyObject).
"""

import json
from dataclasses import dataclass

from twisted.internet import defer
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from zope.interface.verify import verifyObject

from txmesh.config import ClusterConfig
from txmesh.errors import ConnectFailure, ConnectTimeout, Overflow, PoolClosed
from txmesh.interfaces import (
    IConnectionPool,
    IHTTP2ClientCallbacks,
    IHTTP2ClientConnection,
    IMultiplexClient,
    IPooledConnection,
    IUpstreamStream,
)
from txmesh.protocols.dubbo.client import DubboClientProtocol
from txmesh.protocols.dubbo.pool import MultiplexConnectionPool, StreamHandle
from txmesh.protocols.h2.client import H2ClientProtocol, H2UpstreamStream
from txmesh.protocols.h2.pool import H2ConnectionPool
from txmesh.protocols.http1.client import HTTP1ClientProtocol
from txmesh.protocols.http1.pool import HTTP1ConnectionPool
from txmesh.stats import StatsStore
from txmesh.testing import FakeConnector
from txmesh.upstream.conn_pool import ConnectionPoolBase
from txmesh.upstream.host import Host


@dataclass(frozen=True)
class Cfg:
    connectTimeout: float = 1.0
    maxPendingRequests: int = 2
    idleTimeout: float = 0.0


class Stream:
    def __init__(self, client):
        self.client = client
        self.ended = False


class TwoStreamPool(ConnectionPoolBase):
    """A multiplexed protocol of two streams per connection, at most two connections."""

    maxConnections = 2
    BACKOFF = (1.0, 4.0)

    def __init__(self, *args, idleTimeout=0, maxRequestsPerConnection=0):
        ConnectionPoolBase.__init__(self, *args)
        self.idleTimeout = idleTimeout
        self.maxRequestsPerConnection = maxRequestsPerConnection
        self.full = set()  # clients that take no more streams

    def capacity(self, client):
        return 0 if client in self.full else 2

    def makeStream(self, client):
        return Stream(client)

    def streamClient(self, stream):
        if stream.ended:
            return None
        stream.ended = True
        return stream.client


class Harness:
    def __init__(self, **kw):
        self.clock = Clock()
        self.store = StatsStore()
        self.host = Host("10.0.0.1", 80)
        self.connector = FakeConnector()
        self.pool = TwoStreamPool(self.clock, self.host, Cfg(maxPendingRequests=kw.pop("maxPendingRequests", 2)),
                                  self.connector, self.store.scope(cluster="c"), **kw)

    def stat(self, name):
        return self.store.value(name, cluster="c")

    def acquire(self):
        out = []
        d = self.pool.acquire()
        d.addBoth(out.append)
        return d, out


# -- contracts --------------------------------------------------------------------------------------------------


def pools():
    store = StatsStore()
    host = Host("10.0.0.1", 80)
    for cls in (HTTP1ConnectionPool, MultiplexConnectionPool, H2ConnectionPool):
        yield cls(Clock(), host, ClusterConfig("c"), FakeConnector(), store.scope(cluster=cls.__name__))


def test_every_pool_provides_IConnectionPool_and_describes_itself_as_json():
    for pool in pools():
        assert verifyObject(IConnectionPool, pool)
        state = pool.describe()
        json.dumps(state)
        assert state["connections"] == 0 and state["pending"] == 0


def test_every_handle_provides_IUpstreamStream():
    h2 = H2ClientProtocol()
    h2.makeConnection(StringTransport())
    assert verifyObject(IUpstreamStream, HTTP1ClientProtocol())
    assert verifyObject(IUpstreamStream, StreamHandle(None))
    assert verifyObject(IUpstreamStream, H2UpstreamStream(h2))
    assert verifyObject(IUpstreamStream, h2.newStream())


def test_client_protocols_provide_what_their_pools_use():
    assert verifyObject(IPooledConnection, HTTP1ClientProtocol())
    assert verifyObject(IMultiplexClient, DubboClientProtocol())
    assert verifyObject(IHTTP2ClientConnection, H2ClientProtocol())


def test_h2_pool_gives_each_connection_its_callbacks():
    store = StatsStore()
    proto = H2ClientProtocol()
    proto.makeConnection(StringTransport())
    pool = H2ConnectionPool(Clock(), Host("10.0.0.1", 80), ClusterConfig("c"), lambda host: defer.succeed(proto),
                            store.scope(cluster="c"))
    handles = []
    pool.acquire().addCallback(handles.append)
    assert verifyObject(IUpstreamStream, handles[0])
    assert verifyObject(IHTTP2ClientCallbacks, pool.clientClass(pool))
    # no SETTINGS from the peer yet: its limit is unbounded, so the configured one (1000) holds
    assert pool.describe()["clients"] == [{"active": 1, "capacity": 1000, "served": 1,
                                           "draining": False}]


# -- the base -----------------------------------------------------------------------------------------------------


def test_one_connect_serves_every_waiter_it_has_room_for():
    h = Harness()
    _, a = h.acquire()
    _, b = h.acquire()
    assert len(h.connector.attempts) == 1 and h.stat("upstream_rq_pending_active") == 2
    h.connector.succeed()
    assert a[0].client is b[0].client
    assert h.stat("upstream_rq_pending_active") == 0 and h.stat("upstream_rq_active") == 2
    assert h.pool.describe()["active_streams"] == 2


def test_connect_timeout_fails_waiters_and_counts():
    h = Harness()
    _, out = h.acquire()
    h.clock.advance(0.9)
    assert out == []
    h.clock.advance(0.1)
    assert out[0].check(ConnectTimeout)
    assert h.connector.cancelled == 1
    assert h.stat("upstream_cx_connect_timeout") == 1 and h.stat("upstream_cx_connect_fail") == 1
    assert h.host.stats.cx_connect_fail.value == 1


def test_a_typed_connect_failure_keeps_its_type_and_cause():
    # a cluster's TLS handshake or verification failure (txmesh.tls.client) is a connect failure with its own cause
    from txmesh.errors import UpstreamTLSVerifyError
    h = Harness()
    _, out = h.acquire()
    h.connector.attempts[0].errback(UpstreamTLSVerifyError("TLS: the upstream certificate names none of uri:x"))
    assert out[0].check(UpstreamTLSVerifyError)
    assert out[0].value.cause == "upstream_tls_verify_failed" and out[0].value.flag == "UF"
    assert str(out[0].value) == "connect to 10.0.0.1:80 failed: TLS: the upstream certificate names none of uri:x"
    assert h.stat("upstream_cx_connect_fail") == 1 and h.host.stats.cx_connect_fail.value == 1


def test_backoff_makes_requests_wait_for_the_next_attempt_then_doubles():
    h = Harness()
    _, out = h.acquire()
    h.connector.attempts[0].errback(ConnectionRefusedError())
    assert out[0].check(ConnectFailure)
    assert isinstance(out[0].value.__cause__, ConnectionRefusedError)
    # during the backoff a request waits for the next attempt rather than failing at once
    _, waiting = h.acquire()
    assert waiting == [] and len(h.connector.attempts) == 1
    h.clock.advance(1.0)
    assert len(h.connector.attempts) == 2
    h.connector.attempts[1].errback(ConnectionRefusedError())
    assert waiting[0].check(ConnectFailure)  # it had its attempt
    _, second = h.acquire()
    h.clock.advance(1.9)  # the second failure waits 2 s
    assert second == [] and len(h.connector.attempts) == 2
    h.clock.advance(0.1)
    assert len(h.connector.attempts) == 3
    h.connector.succeed()
    assert isinstance(second[0], Stream)
    _, fine = h.acquire()
    assert isinstance(fine[0], Stream)


def test_request_waiting_out_a_backoff_may_give_up_and_drain_stops_the_timer():
    h = Harness()
    _, out = h.acquire()
    h.connector.attempts[0].errback(ConnectionRefusedError())
    d, waiting = h.acquire()
    d.cancel()  # its own timeout: it leaves the queue
    assert h.pool.pendingCount == 0
    h.clock.advance(1.0)
    assert len(h.connector.attempts) == 1  # nobody waits: no connect
    h.acquire()
    h.pool.drain()
    assert h.clock.getDelayedCalls() == []


def test_overflow_past_the_pending_limit():
    h = Harness(maxPendingRequests=1)
    _, first = h.acquire()
    _, second = h.acquire()
    assert first == [] and second[0].check(Overflow)
    assert h.stat("upstream_rq_pending_overflow") == 1 and h.stat("upstream_rq_total") == 2


def test_cancelled_waiter_leaves_the_queue():
    h = Harness()
    d, out = h.acquire()
    _, kept = h.acquire()
    d.cancel()
    assert out[0].check(defer.CancelledError)
    assert h.stat("upstream_rq_pending_active") == 1
    h.connector.succeed()
    assert len(kept) == 1 and h.pool.describe()["active_streams"] == 1


def test_drain_fires_only_when_every_connection_is_closed():
    h = Harness()
    _, out = h.acquire()
    proto = h.connector.succeed()
    done = []
    h.pool.drain().addCallback(done.append)
    _, refused = h.acquire()
    assert refused[0].check(PoolClosed)
    assert done == [] and not proto.transport.disconnecting
    h.pool.release(out[0])
    assert proto.transport.disconnecting and done == []  # closed, its connectionLost not come yet
    proto.connectionLost()
    assert done == [None]
    assert h.stat("upstream_cx_active") == 0 and h.stat("upstream_cx_destroy") == 1
    assert h.stat("upstream_rq_active") == 0


def test_drain_stops_connects_nobody_waits_for():
    h = Harness()
    h.acquire()
    done = []
    h.pool.drain().addCallback(done.append)
    assert h.connector.cancelled == 1 and done == [None]
    assert h.stat("upstream_cx_connect_fail") == 0


def test_drain_serving_queued_requests_lets_the_connect_serve_them():
    """A host removed from its cluster (issue 12): a request waiting for the pool's first connect is still served."""
    h = Harness()
    _, waiting = h.acquire()
    done = []
    h.pool.drain(serveQueued=True).addCallback(done.append)
    assert h.connector.cancelled == 0 and waiting == [] and done == []
    _, refused = h.acquire()  # nothing new is taken
    assert refused[0].check(PoolClosed)
    proto = h.connector.succeed()
    assert isinstance(waiting[0], Stream)  # served by the connect made for it
    assert not proto.transport.disconnecting and done == []
    h.pool.release(waiting[0])
    assert proto.transport.disconnecting  # then drained as usual
    proto.connectionLost()
    assert done == [None] and h.stat("upstream_rq_pending_active") == 0


def test_drain_serving_queued_requests_waits_for_a_busy_connection():
    h = Harness()
    out = [h.acquire()[1] for _ in range(2)]
    proto = h.connector.succeed()  # both streams of the one connection
    _, third = h.acquire()  # no room: queued, a second connect starts
    assert third == [] and len(h.connector.attempts) == 2
    done = []
    h.pool.drain(serveQueued=True).addCallback(done.append)
    h.pool.release(out[0][0])  # a stream ends: the queued request takes it
    assert isinstance(third[0], Stream) and third[0].client.proto is proto
    assert h.connector.cancelled == 1  # the second connect is no longer needed
    h.pool.release(out[1][0])
    assert not proto.transport.disconnecting and done == []
    h.pool.release(third[0])
    assert proto.transport.disconnecting
    proto.connectionLost()
    assert done == [None]


def test_drain_serving_queued_requests_fails_them_at_shutdown():
    h = Harness()
    _, waiting = h.acquire()
    first = []
    h.pool.drain(serveQueued=True).addCallback(first.append)
    h.pool.drain()  # the process stops meanwhile
    assert waiting[0].check(PoolClosed) and first == [None]


def test_drain_serving_queued_requests_with_none_queued_is_a_drain():
    h = Harness()
    done = []
    h.pool.drain(serveQueued=True).addCallback(done.append)
    assert done == [None]


def test_idle_timeout_closes_a_connection_without_streams():
    h = Harness(idleTimeout=5.0)
    _, out = h.acquire()
    proto = h.connector.succeed()
    h.clock.advance(10)
    assert not proto.transport.disconnecting  # busy
    h.pool.release(out[0])
    h.clock.advance(4.9)
    assert not proto.transport.disconnecting
    h.clock.advance(0.1)
    assert proto.transport.disconnecting and h.stat("upstream_cx_idle_timeout") == 1
    assert h.pool.connectionCount == 0


def test_capacity_dropping_to_zero_retires_the_connection():
    h = Harness()
    _, a = h.acquire()
    first = h.connector.succeed()
    client = a[0].client
    h.pool.full.add(client)  # as after an HTTP/2 GOAWAY
    h.pool.capacityChanged(client)
    _, b = h.acquire()
    assert len(h.connector.attempts) == 2 and b == []
    h.connector.succeed()
    assert b[0].client is not a[0].client
    h.pool.release(a[0])
    assert first.transport.disconnecting


def test_max_requests_per_connection():
    h = Harness(maxRequestsPerConnection=3)
    _, a = h.acquire()
    proto = h.connector.succeed()
    streams = [a[0], h.pool.acquireIdle(), h.pool.acquireIdle()]
    assert streams[2] is None  # two streams at once
    h.pool.release(streams[1])
    third = h.pool.acquireIdle()
    assert third is not None and h.pool.acquireIdle() is None  # three served: no more on this one
    h.pool.release(a[0])
    assert not proto.transport.disconnecting
    h.pool.release(third)
    assert proto.transport.disconnecting


def test_connection_lost_forgets_its_streams():
    h = Harness()
    _, a = h.acquire()
    proto = h.connector.succeed()
    proto.connectionLost()
    assert h.stat("upstream_rq_active") == 0 and h.stat("upstream_cx_active") == 0
    h.pool.discard(a[0])  # the router discards after upstreamFailed: harmless
    assert h.stat("upstream_rq_active") == 0 and h.stat("upstream_cx_destroy") == 1
