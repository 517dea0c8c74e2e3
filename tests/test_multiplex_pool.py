"""MultiplexConnectionPool driven with a fake multiplexed client protocol, StringTransports and a Clock."""

from dataclasses import dataclass

import pytest
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from txmesh.errors import ConnectFailure, Overflow, PoolClosed, UpstreamReset
from txmesh.stats import StatsStore
from txmesh.upstream.host import Host
from txmesh.protocols.dubbo.pool import MultiplexConnectionPool
from txmesh.testing import FakeConnector


@dataclass(frozen=True)
class Cfg:
    connectTimeout: float = 1.0
    maxPendingRequests: int = 10
    connectionsPerHost: int = 1
    maxConcurrentStreams: int = 2
    heartbeatInterval: float = 10.0
    idleTimeout: float = 0.0


class FakeMux(Protocol):
    """Records streams and pings; fails its streams on connectionLost like a real multiplexed client."""

    onConnectionLost = None
    onReadOnly = None
    readOnly = False

    def __init__(self):
        self.framesReceived = 0
        self.streams = {}
        self.pings = 0
        self._next = 0

    def startStream(self, head, endStream, responder):
        self._next += 1
        self.streams[self._next] = responder
        return self._next

    def writeBody(self, key, data, endStream):
        pass

    def writeTrailers(self, key, trailers):
        pass

    def cancelStream(self, key):
        self.streams.pop(key, None)

    def sendPing(self):
        self.pings += 1

    def connectionLost(self, reason=Failure(ConnectionDone())):
        streams, self.streams = self.streams, {}
        for r in streams.values():
            r.failed = UpstreamReset("lost")
        if self.onConnectionLost is not None:
            self.onConnectionLost(self)


class Transport(StringTransport):
    def __init__(self, proto):
        super().__init__()
        self.proto = proto
        self.aborted = False

    def loseConnection(self):
        self.proto.connectionLost()

    def abortConnection(self):
        self.aborted = True
        self.proto.connectionLost()


class Responder:
    failed = None


def Connector():
    return FakeConnector(FakeMux, Transport)


def makePool(**kw):
    clock = Clock()
    connector = Connector()
    stats = StatsStore()
    pool = MultiplexConnectionPool(clock, Host("10.0.0.1", 20880), Cfg(**kw), connector, stats.scope(cluster="c"))
    return pool, clock, connector, stats


def results(ds):
    out = []
    for d in ds:
        d.addBoth(out.append)
    return out


def test_many_requests_share_one_connection_up_to_the_stream_limit():
    pool, clock, connector, stats = makePool(maxConcurrentStreams=3)
    got = results([pool.acquire() for _ in range(4)])
    assert len(connector.attempts) == 1 and got == []
    proto = connector.succeed()
    assert len(got) == 3 and all(h.conn.proto is proto for h in got)
    assert pool.pendingCount == 1
    pool.release(got[0])
    assert len(got) == 4 and pool.activeStreams == 3
    assert stats.value("upstream_cx_total", cluster="c") == 1


def test_connections_per_host_spreads_load():
    pool, clock, connector, stats = makePool(connectionsPerHost=2, maxConcurrentStreams=1)
    got = results([pool.acquire() for _ in range(2)])
    connector.succeed()
    assert len(connector.attempts) == 2  # a second connect for the request that did not fit
    connector.succeed()
    assert len({id(h.conn) for h in got}) == 2


def test_pending_overflow_fails_at_once():
    pool, clock, connector, stats = makePool(maxPendingRequests=1)
    first = results([pool.acquire()])
    second = results([pool.acquire()])
    assert first == [] and isinstance(second[0].value, Overflow)
    assert stats.value("upstream_rq_pending_overflow", cluster="c") == 1


def test_release_and_discard_end_only_the_stream():
    pool, clock, connector, stats = makePool()
    got = results([pool.acquire(), pool.acquire()])
    proto = connector.succeed()
    got[0].sendRequest(None, True, Responder())
    got[1].sendRequest(None, True, Responder())
    pool.discard(got[0])
    assert list(proto.streams) == [2] and not proto.transport.aborted
    pool.release(got[1])
    pool.release(got[1])  # twice is harmless
    assert pool.activeStreams == 0 and pool.connectionCount == 1


def test_connect_failure_fails_waiters_then_calls_wait_out_the_backoff():
    pool, clock, connector, stats = makePool()
    got = results([pool.acquire(), pool.acquire()])
    connector.attempts[0].errback(Failure(ConnectionRefusedError()))
    assert [type(f.value) for f in got] == [ConnectFailure, ConnectFailure]
    # the upstream restarts: calls made during the backoff wait for the next attempt, which serves them
    during = results([pool.acquire() for _ in range(2)])
    assert during == [] and len(connector.attempts) == 1
    clock.advance(0.1)
    assert len(connector.attempts) == 2
    connector.succeed()
    assert len(during) == 2 and not any(isinstance(x, Failure) for x in during)
    assert stats.value("upstream_cx_connect_fail", cluster="c") == 1


def test_idle_timeout_closes_an_unused_connection_despite_heartbeats():
    pool, clock, connector, stats = makePool(idleTimeout=25.0, heartbeatInterval=10.0)
    got = results([pool.acquire()])
    proto = connector.succeed()
    pool.release(got[0])
    clock.advance(20.0)
    assert proto.pings >= 1 and pool.connectionCount == 1  # heartbeats do not count as use
    clock.advance(5.0)
    assert pool.connectionCount == 0
    assert stats.value("upstream_cx_idle_timeout", cluster="c") == 1


def test_connect_timeout():
    pool, clock, connector, stats = makePool()
    got = results([pool.acquire()])
    clock.advance(1.0)
    assert got and isinstance(got[0].value, Exception)
    assert stats.value("upstream_cx_connect_timeout", cluster="c") == 1


def test_lost_connection_fails_its_streams_and_reconnects_on_demand():
    pool, clock, connector, stats = makePool()
    got = results([pool.acquire()])
    proto = connector.succeed()
    r = Responder()
    got[0].sendRequest(None, True, r)
    proto.connectionLost()
    assert isinstance(r.failed, UpstreamReset) and pool.connectionCount == 0
    pool.discard(got[0])  # the router discards the handle after upstreamFailed: harmless
    results([pool.acquire()])
    assert len(connector.attempts) == 2


def test_heartbeat_on_idle_connection_and_close_after_three_missed():
    pool, clock, connector, stats = makePool()
    results([pool.acquire()])
    proto = connector.succeed()
    clock.advance(10)
    assert proto.pings == 1
    proto.framesReceived += 1  # the reply
    clock.advance(10)
    assert proto.pings == 1  # it read something: no ping needed
    for _ in range(3):
        clock.advance(10)
    assert proto.pings == 4 and not proto.transport.aborted  # 3 pings unanswered so far
    clock.advance(10)
    assert proto.transport.aborted and pool.connectionCount == 0
    assert stats.value("upstream_cx_heartbeat_fail", cluster="c") == 1


def test_drain_waits_for_streams_then_refuses():
    pool, clock, connector, stats = makePool()
    got = results([pool.acquire()])
    connector.succeed()
    queued = results([pool.acquire() for _ in range(2)])  # 1 fits (limit 2), 1 waits
    drained = results([pool.drain()])
    assert isinstance(queued[-1].value, PoolClosed) and drained == []
    pool.release(got[0])
    assert drained == []
    pool.release(queued[0])
    assert drained == [None]
    assert isinstance(results([pool.acquire()])[0].value, PoolClosed)
