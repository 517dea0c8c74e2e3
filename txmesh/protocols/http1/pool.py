"""
The connection pool of one upstream host for ping-pong protocols (HTTP/1.1): one request per connection at a
time, as twisted.web.client.HTTPConnectionPool and MOSN's ping-pong pool mode.

The pool knows nothing of the protocol: ``connect(host)`` makes a connected client protocol, the caller sends its
request on what ``acquire()`` gives it, and says how the exchange ended with ``release`` (reusable) or
``discard`` (not reusable).  The pool sets ``proto.onConnectionLost`` on every connection it makes; the client
protocol calls it (with itself) from ``connectionLost``.

``host.activeRequests`` (read by the least-request balancer) is kept by the router, for the whole life of the
request; the pool counts requests (upstream_rq_total, host rq_total) and connections.
"""

from collections import deque

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from txmesh.errors import ConnectFailure, ConnectTimeout, Overflow, PoolClosed
from txmesh.interfaces import IConnectionPool


class _Connection:
    """The pool's record of one connection."""

    __slots__ = ("proto", "requests", "idleSince", "idleTimer")

    def __init__(self, proto):
        self.proto = proto
        self.requests = 0
        self.idleSince = 0.0
        self.idleTimer = None


class _Waiter:
    """One acquire() not yet answered: queued (pending) or owning a connect attempt."""

    __slots__ = ("deferred", "connecting", "connectTimer", "timedOut", "cancelled")

    def __init__(self):
        self.deferred = None
        self.connecting = None
        self.connectTimer = None
        self.timedOut = False
        self.cancelled = False


@implementer(IConnectionPool)
class HTTP1ConnectionPool:
    """
    Connections to one host, one request at a time each.

    @param clock: an IReactorTime for the connect and idle timers.
    @param host: the IHost.
    @param clusterConfig: connectTimeout, idleTimeout (seconds; 0 = none), maxConnections, maxPendingRequests,
        maxRequestsPerConnection (0 = unlimited).
    @param connect: ``connect(host) -> Deferred`` firing with a connected client protocol.
    @param stats: the cluster's txmesh.stats.Scope; the pool's upstream_cx_* and upstream_rq_* series are made
        there (the same series the Cluster reads).
    """

    log = Logger()

    def __init__(self, clock, host, clusterConfig, connect, stats):
        self.clock = clock
        self.host = host
        self._connect = connect
        self.connectTimeout = clusterConfig.connectTimeout or 0
        self.idleTimeout = clusterConfig.idleTimeout or 0
        self.maxConnections = clusterConfig.maxConnections
        self.maxPendingRequests = clusterConfig.maxPendingRequests
        self.maxRequestsPerConnection = clusterConfig.maxRequestsPerConnection or 0

        self._idle = []  # _Connection, most recently released last
        self._busy = {}  # proto -> _Connection
        self._closing = set()  # protos we closed whose connectionLost has not come yet
        self._pending = deque()  # _Waiter, oldest first
        self._connecting = 0
        self._closed = False
        self._drained = []  # Deferreds of drain()

        c = stats.counter
        self._rqTotal = c("upstream_rq_total", help="Requests sent (or queued) upstream.")
        self._cxTotal = c("upstream_cx_total", help="Upstream connections opened.")
        self._cxActive = stats.gauge("upstream_cx_active", help="Open upstream connections.")
        self._cxConnectFail = c("upstream_cx_connect_fail", help="Upstream connects that failed (timeouts included).")
        self._cxConnectTimeout = c("upstream_cx_connect_timeout", help="Upstream connects that timed out.")
        self._cxIdleTimeout = c("upstream_cx_idle_timeout", help="Upstream connections closed as idle too long.")
        self._cxDestroy = c("upstream_cx_destroy", help="Upstream connections closed.")
        self._rqPendingOverflow = c("upstream_rq_pending_overflow",
                                    help="Requests failed at once because the pending queue was full.")
        self._rqPendingActive = stats.gauge("upstream_rq_pending_active", help="Requests waiting for a connection.")

    # -- the request side -------------------------------------------------------------------------------------

    def acquire(self):
        """
        A connection for one request: the most recently used idle one, else a new one (below maxConnections), else
        after queueing (below maxPendingRequests).  Cancel the Deferred if the request goes away meanwhile.

        @return: a Deferred firing with the client protocol, or failing with Overflow (queue full, at once),
            ConnectTimeout, ConnectFailure (the cause chained) or PoolClosed.
        """
        self._rqTotal.value += 1
        self.host.stats.rq_total.value += 1
        if self._closed:
            return defer.fail(PoolClosed("pool for %s is closed" % (self.host.address,)))
        if self._idle:
            conn = self._idle.pop()
            conn.requests += 1
            self._busy[conn.proto] = conn
            return defer.succeed(conn.proto)
        if self._connecting + len(self._busy) < self.maxConnections:
            waiter = self._newWaiter()
            self._startConnect(waiter)
            return waiter.deferred
        if len(self._pending) < self.maxPendingRequests:
            waiter = self._newWaiter()
            self._pending.append(waiter)
            self._rqPendingActive.value += 1
            return waiter.deferred
        self._rqPendingOverflow.value += 1
        return defer.fail(Overflow("pending queue of %s is full (%d)" % (self.host.address, self.maxPendingRequests)))

    def acquireIdle(self):
        """
        The synchronous fast path of acquire(): an idle connection (counted like acquire()), or None when acquire()
        must be used.
        """
        if self._closed or not self._idle:
            return None
        self._rqTotal.value += 1
        self.host.stats.rq_total.value += 1
        conn = self._idle.pop()
        conn.requests += 1
        self._busy[conn.proto] = conn
        return conn.proto

    def newStream(self, stream):
        """IConnectionPool.newStream: for a ping-pong pool, the same as acquire()."""
        return self.acquire()

    def release(self, proto):
        """The exchange on ``proto`` completed and the connection can carry another request."""
        conn = self._busy.pop(proto, None)
        if conn is None:
            return
        if self._closed or (self.maxRequestsPerConnection and conn.requests >= self.maxRequestsPerConnection):
            self._close(conn, abort=False)
            self._processPending()
            return
        if self._pending:
            waiter = self._pending.popleft()
            self._rqPendingActive.value -= 1
            conn.requests += 1
            self._busy[proto] = conn
            waiter.deferred.callback(proto)
            return
        conn.idleSince = self.clock.seconds()
        self._idle.append(conn)
        if self.idleTimeout and conn.idleTimer is None:
            conn.idleTimer = self.clock.callLater(self.idleTimeout, self._idleTimerFired, conn)

    def discard(self, proto):
        """``proto`` must not be reused (bad framing, unfinished response, Connection: close): abort it."""
        conn = self._busy.pop(proto, None) or self._removeIdle(proto)
        if conn is None:
            return
        self._close(conn, abort=True)
        self._processPending()

    def drain(self):
        """
        Refuse new requests (PoolClosed), fail the queued ones with PoolClosed, close idle connections now and busy
        ones when their exchange ends.

        @return: a Deferred firing (with None) once every connection is closed.
        """
        self._closed = True
        while self._pending:
            waiter = self._pending.popleft()
            self._rqPendingActive.value -= 1
            waiter.deferred.errback(PoolClosed("pool for %s was drained" % (self.host.address,)))
        while self._idle:
            self._close(self._idle.pop(), abort=False)
        d = defer.Deferred()
        self._drained.append(d)
        self._checkDrained()
        return d

    # -- state, for the admin API and tests ---------------------------------------------------------------------

    @property
    def idleCount(self):
        return len(self._idle)

    @property
    def busyCount(self):
        return len(self._busy)

    @property
    def pendingCount(self):
        return len(self._pending)

    @property
    def connectingCount(self):
        return self._connecting

    # -- internals ----------------------------------------------------------------------------------------------

    def _newWaiter(self):
        waiter = _Waiter()
        waiter.deferred = defer.Deferred(lambda d: self._cancelWaiter(waiter))
        return waiter

    def _cancelWaiter(self, waiter):
        """The requester went away: leave the queue, or stop the connect made for it."""
        waiter.cancelled = True
        if waiter.connecting is not None:
            # _connectFailed sees the CancelledError, frees the slot and lets a queued request connect.
            waiter.connecting.cancel()
        else:
            try:
                self._pending.remove(waiter)
            except ValueError:
                return
            self._rqPendingActive.value -= 1

    def _startConnect(self, waiter):
        self._connecting += 1
        self._cxTotal.value += 1
        self.host.stats.cx_total.value += 1
        try:
            d = self._connect(self.host)
        except Exception:
            d = defer.fail()
        waiter.connecting = d
        if self.connectTimeout:
            waiter.connectTimer = self.clock.callLater(self.connectTimeout, self._connectTimedOut, waiter)
        d.addCallbacks(self._connected, self._connectFailed, callbackArgs=(waiter,), errbackArgs=(waiter,))

    def _connectTimedOut(self, waiter):
        waiter.connectTimer = None
        waiter.timedOut = True
        waiter.connecting.cancel()

    def _connected(self, proto, waiter):
        self._connecting -= 1
        waiter.connecting = None
        if waiter.connectTimer is not None:
            waiter.connectTimer.cancel()
            waiter.connectTimer = None
        conn = _Connection(proto)
        conn.requests = 1
        proto.onConnectionLost = self._connectionLost
        self._cxActive.value += 1
        self._busy[proto] = conn
        if waiter.cancelled:
            # The connect Deferred ignored cancellation and succeeded anyway: keep the connection for others.
            self.release(proto)
            return None
        waiter.deferred.callback(proto)
        return None

    def _connectFailed(self, failure, waiter):
        self._connecting -= 1
        waiter.connecting = None
        if waiter.connectTimer is not None:
            waiter.connectTimer.cancel()
            waiter.connectTimer = None
        if waiter.cancelled:
            # The requester went away; its Deferred is already failed with CancelledError.
            self._processPending()
            return None
        self._cxConnectFail.value += 1
        self.host.stats.cx_connect_fail.value += 1
        if waiter.timedOut:
            self._cxConnectTimeout.value += 1
            error = ConnectTimeout("connect to %s timed out after %gs" % (self.host.address, self.connectTimeout))
        else:
            error = ConnectFailure("connect to %s failed: %s" % (self.host.address, failure.getErrorMessage()))
            error.__cause__ = failure.value
        waiter.deferred.errback(Failure(error))
        # The failure belongs to this request only; a queued one gets a fresh attempt.
        self._processPending()
        return None

    def _processPending(self):
        """Start connects for queued requests while there is room."""
        pending = self._pending
        while pending and self._connecting + len(self._busy) + len(self._idle) < self.maxConnections:
            waiter = pending.popleft()
            self._rqPendingActive.value -= 1
            self._startConnect(waiter)
        self._checkDrained()

    def _idleTimerFired(self, conn):
        conn.idleTimer = None
        if conn.proto in self._busy or conn not in self._idle:
            # Reused since the timer was set (acquire does not cancel timers, to stay cheap); release re-arms it.
            return
        remaining = conn.idleSince + self.idleTimeout - self.clock.seconds()
        if remaining > 1e-6:
            conn.idleTimer = self.clock.callLater(remaining, self._idleTimerFired, conn)
            return
        self._idle.remove(conn)
        self._cxIdleTimeout.value += 1
        self._close(conn, abort=False)
        self._processPending()

    def _removeIdle(self, proto):
        for i, conn in enumerate(self._idle):
            if conn.proto is proto:
                del self._idle[i]
                return conn
        return None

    def _forget(self, conn):
        if conn.idleTimer is not None:
            if conn.idleTimer.active():
                conn.idleTimer.cancel()
            conn.idleTimer = None
        self._cxActive.value -= 1
        self._cxDestroy.value += 1

    def _close(self, conn, abort):
        """Close a connection the pool no longer tracks as busy or idle; its connectionLost is awaited by drain."""
        self._forget(conn)
        proto = conn.proto
        self._closing.add(proto)
        transport = getattr(proto, "transport", None)
        if transport is None:
            self._closing.discard(proto)
            return
        if abort and hasattr(transport, "abortConnection"):
            transport.abortConnection()
        else:
            transport.loseConnection()

    def _connectionLost(self, proto):
        """Set as ``proto.onConnectionLost``: the connection ended, by our close or not."""
        if proto in self._closing:
            self._closing.discard(proto)
            self._checkDrained()
            return
        # A busy connection's client protocol reports the failure to its request itself.
        conn = self._busy.pop(proto, None) or self._removeIdle(proto)
        if conn is None:
            return
        self._forget(conn)
        self._processPending()

    def _checkDrained(self):
        if (self._drained and self._closed and not self._busy and not self._idle and not self._closing
                and not self._connecting):
            drained, self._drained = self._drained, []
            for d in drained:
                d.callback(None)
