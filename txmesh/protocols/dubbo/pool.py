"""
The connection pool of one upstream host for multiplexed protocols (Dubbo, later h2/gRPC): a few long-lived
connections, each carrying many requests at once (MOSN's multiplex pool mode).

``acquire()`` does not hand out a connection but a *stream handle* bound to one: the router uses it like a
ping-pong connection (``sendRequest``, ``writeBody``, ``writeTrailers``, ``abandon``, ``pauseReading``), and
``release(handle)`` / ``discard(handle)`` end that stream only, never the shared connection.

The per-protocol part is the client protocol, which must provide (see L{IMultiplexClient} below, documentation
only):

  - ``startStream(head, endStream, responder) -> key``: send a request; the protocol picks its own stream/request
    id per connection (so ids of different downstream clients never collide) and later calls the responder
    (``upstreamHeaders/Data/Trailers``, ``upstreamComplete(reusable)`` or ``upstreamFailed(exc)``).
  - ``writeBody(key, data, endStream)``, ``writeTrailers(key, trailers)``, ``cancelStream(key)`` (forget the
    stream; a late response is dropped).
  - ``sendPing()``: a protocol-level keep-alive (Dubbo heartbeat, h2 PING); ``framesReceived``: an int that grows
    with every frame read, which the pool watches to tell an idle connection from a dead one.
  - ``onConnectionLost``: set by the pool, called with the protocol from ``connectionLost``, *after* the protocol
    has failed every in-flight stream with L{UpstreamReset}.
"""

from collections import deque

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Attribute, Interface, implementer

from txmesh.errors import ConnectFailure, ConnectTimeout, Overflow, PoolClosed
from txmesh.interfaces import IConnectionPool

DEFAULT_MAX_CONCURRENT = 1000
MISSED_PINGS_LIMIT = 3
BACKOFF_BASE = 0.1
BACKOFF_MAX = 5.0


class IMultiplexClient(Interface):
    """What L{MultiplexConnectionPool} needs of a client protocol (see the module docstring)."""

    framesReceived = Attribute("Frames read so far (int).")
    onConnectionLost = Attribute("Set by the pool: called with the protocol once the connection is gone.")

    def startStream(head, endStream, responder):
        """Send a request; return a key for the other calls."""

    def writeBody(key, data, endStream):
        """More request body for stream ``key``."""

    def writeTrailers(key, trailers):
        """Request trailers for stream ``key``."""

    def cancelStream(key):
        """Forget stream ``key``: its responder is never called again."""

    def sendPing():
        """Send a protocol keep-alive; its reply counts in framesReceived."""


class _Connection:
    """The pool's record of one connection."""

    __slots__ = ("proto", "active", "seenFrames", "pingOutstanding", "missed", "pingTimer", "closing")

    def __init__(self, proto):
        self.proto = proto
        self.active = 0
        self.seenFrames = 0
        self.pingOutstanding = False
        self.missed = 0
        self.pingTimer = None
        self.closing = False


class StreamHandle:
    """
    One request on a shared connection: what ``acquire()`` gives the router.  Its methods forward to the client
    protocol under the stream's key; pausing is a no-op, since pausing a shared connection would stall every other
    stream on it (a multiplexed response is one bounded frame).
    """

    __slots__ = ("conn", "key", "done")

    def __init__(self, conn):
        self.conn = conn
        self.key = None
        self.done = False

    def sendRequest(self, head, endStream, responder):
        self.key = self.conn.proto.startStream(head, endStream, responder)

    def writeBody(self, data, endStream):
        if self.key is not None:
            self.conn.proto.writeBody(self.key, data, endStream)

    def writeTrailers(self, trailers):
        if self.key is not None:
            self.conn.proto.writeTrailers(self.key, trailers)

    def abandon(self):
        if self.key is not None:
            self.conn.proto.cancelStream(self.key)

    def pauseReading(self):
        pass

    def resumeReading(self):
        pass


@implementer(IConnectionPool)
class MultiplexConnectionPool:
    """
    Up to ``connectionsPerHost`` connections to one host, up to ``maxConcurrentStreams`` streams each; past that,
    requests wait (up to ``maxPendingRequests``, then fail at once with Overflow).  Idle connections are pinged every
    ``heartbeatInterval`` and closed after 3 pings without any frame back.  After failed connects, new connects wait
    an exponential backoff (0.1 s doubling to 5 s) and requests arriving meanwhile with no usable connection fail at
    once with ConnectFailure.

    @param clock: an IReactorTime.
    @param host: the IHost.
    @param clusterConfig: connectTimeout, maxPendingRequests and (optional) connectionsPerHost,
        maxConcurrentStreams, heartbeatInterval (seconds; 0 = none).
    @param connect: ``connect(host) -> Deferred`` firing with a connected client protocol (IMultiplexClient).
    @param stats: the cluster's txmesh.stats.Scope.
    """

    log = Logger()

    def __init__(self, clock, host, clusterConfig, connect, stats):
        self.clock = clock
        self.host = host
        self._connect = connect
        self.connectTimeout = clusterConfig.connectTimeout or 0
        self.maxPendingRequests = clusterConfig.maxPendingRequests
        self.connectionsPerHost = max(1, getattr(clusterConfig, "connectionsPerHost", 1) or 1)
        self.maxConcurrentStreams = getattr(clusterConfig, "maxConcurrentStreams", 0) or DEFAULT_MAX_CONCURRENT
        self.heartbeatInterval = getattr(clusterConfig, "heartbeatInterval", 0) or 0

        self._ready = []  # _Connection
        self._byProto = {}
        self._connecting = {}  # connect Deferred -> its timeout DelayedCall or None
        self._pending = deque()  # Deferreds waiting for a stream
        self._closing = set()  # protos we closed whose connectionLost has not come yet
        self._failures = 0  # consecutive failed connects
        self._retryAt = 0.0
        self._closed = False
        self._drained = []

        c = stats.counter
        self._rqTotal = c("upstream_rq_total", help="Requests sent (or queued) upstream.")
        self._cxTotal = c("upstream_cx_total", help="Upstream connections opened.")
        self._cxActive = stats.gauge("upstream_cx_active", help="Open upstream connections.")
        self._cxConnectFail = c("upstream_cx_connect_fail", help="Upstream connects that failed (timeouts included).")
        self._cxConnectTimeout = c("upstream_cx_connect_timeout", help="Upstream connects that timed out.")
        self._cxDestroy = c("upstream_cx_destroy", help="Upstream connections closed.")
        self._cxHeartbeatFail = c("upstream_cx_heartbeat_fail",
                                  help="Upstream connections closed after 3 heartbeats without a reply.")
        self._rqPendingOverflow = c("upstream_rq_pending_overflow",
                                    help="Requests failed at once because the pending queue was full.")
        self._rqPendingActive = stats.gauge("upstream_rq_pending_active", help="Requests waiting for a connection.")
        self._rqActive = stats.gauge("upstream_rq_active", help="Requests in flight on multiplexed connections.")

    # -- the request side -------------------------------------------------------------------------------------

    def acquire(self):
        """
        A stream handle on the least loaded connection with room, else after a connect or a wait.

        @return: a Deferred firing with a L{StreamHandle}, or failing with Overflow (at once), ConnectFailure,
            ConnectTimeout or PoolClosed.  Cancel it if the request goes away meanwhile.
        """
        self._rqTotal.value += 1
        self.host.stats.rq_total.value += 1
        if self._closed:
            return defer.fail(PoolClosed("pool for %s is closed" % (self.host.address,)))
        conn = self._pick()
        if conn is not None:
            return defer.succeed(self._open(conn))
        if (not self._ready and not self._connecting and self._failures
                and self.clock.seconds() < self._retryAt):
            return defer.fail(ConnectFailure("%s is unreachable; next connect in %.1fs" % (
                self.host.address, self._retryAt - self.clock.seconds())))
        if len(self._pending) >= self.maxPendingRequests:
            self._rqPendingOverflow.value += 1
            return defer.fail(Overflow("pending queue of %s is full (%d)" % (self.host.address,
                                                                            self.maxPendingRequests)))
        d = defer.Deferred(self._cancelWaiter)
        self._pending.append(d)
        self._rqPendingActive.value += 1
        self._maybeConnect()
        return d

    def newStream(self, stream):
        return self.acquire()

    def release(self, handle):
        """The stream on ``handle`` ended normally."""
        self._end(handle)

    def discard(self, handle):
        """The stream on ``handle`` is given up; only that stream ends, the connection stays."""
        if not handle.done and handle.key is not None:
            handle.conn.proto.cancelStream(handle.key)
        self._end(handle)

    def drain(self):
        """
        Refuse new requests, fail waiting ones with PoolClosed, close connections once their streams end.

        @return: a Deferred firing when every connection is closed.
        """
        self._closed = True
        self._failPending(lambda: PoolClosed("pool for %s was drained" % (self.host.address,)))
        for d in list(self._connecting):
            d.cancel()
        for conn in list(self._ready):
            if conn.active == 0:
                self._close(conn)
        d = defer.Deferred()
        self._drained.append(d)
        self._checkDrained()
        return d

    # -- state, for the admin API and tests ---------------------------------------------------------------------

    @property
    def connectionCount(self):
        return len(self._ready)

    @property
    def pendingCount(self):
        return len(self._pending)

    @property
    def activeStreams(self):
        return sum(c.active for c in self._ready)

    # -- internals ----------------------------------------------------------------------------------------------

    def _pick(self):
        best = None
        for conn in self._ready:
            if not conn.closing and conn.active < self.maxConcurrentStreams and (best is None
                                                                                  or conn.active < best.active):
                best = conn
        return best

    def _open(self, conn):
        conn.active += 1
        self._rqActive.value += 1
        return StreamHandle(conn)

    def _end(self, handle):
        if handle.done:
            return
        handle.done = True
        conn = handle.conn
        conn.active -= 1
        self._rqActive.value -= 1
        if conn.proto in self._byProto:
            if self._closed and conn.active == 0:
                self._close(conn)
            else:
                self._servePending()
        self._checkDrained()

    def _cancelWaiter(self, d):
        try:
            self._pending.remove(d)
        except ValueError:
            return
        self._rqPendingActive.value -= 1

    def _servePending(self):
        while self._pending:
            conn = self._pick()
            if conn is None:
                break
            d = self._pending.popleft()
            self._rqPendingActive.value -= 1
            d.callback(self._open(conn))

    def _maybeConnect(self):
        """Connect if requests wait and there is room for another connection (and no backoff in force)."""
        if self._closed or not self._pending or len(self._ready) + len(self._connecting) >= self.connectionsPerHost:
            return
        if self._connecting:
            return  # one connect at a time; the next starts when it ends
        delay = self._retryAt - self.clock.seconds()
        if self._failures and delay > 0:
            return
        self._cxTotal.value += 1
        self.host.stats.cx_total.value += 1
        try:
            d = self._connect(self.host)
        except Exception:
            d = defer.fail()
        timer = None
        if self.connectTimeout:
            timer = self.clock.callLater(self.connectTimeout, d.cancel)
        self._connecting[d] = timer
        d.addCallbacks(self._connected, self._connectFailed, callbackArgs=(d,), errbackArgs=(d,))

    def _connectDone(self, d):
        timer = self._connecting.pop(d, None)
        timedOut = timer is not None and not timer.active()
        if timer is not None and timer.active():
            timer.cancel()
        return timedOut

    def _connected(self, proto, d):
        self._connectDone(d)
        self._failures = 0
        self._cxActive.value += 1
        conn = _Connection(proto)
        proto.onConnectionLost = self._connectionLost
        self._byProto[proto] = conn
        if self._closed:
            self._close(conn)
            return None
        self._ready.append(conn)
        if self.heartbeatInterval:
            conn.pingTimer = self.clock.callLater(self.heartbeatInterval, self._heartbeat, conn)
        self._servePending()
        self._maybeConnect()
        return None

    def _connectFailed(self, failure, d):
        timedOut = self._connectDone(d)
        if self._closed:
            self._checkDrained()
            return None
        self._cxConnectFail.value += 1
        self.host.stats.cx_connect_fail.value += 1
        self._failures += 1
        self._retryAt = self.clock.seconds() + min(BACKOFF_MAX, BACKOFF_BASE * 2 ** (self._failures - 1))
        if timedOut:
            self._cxConnectTimeout.value += 1
            make = lambda: ConnectTimeout("connect to %s timed out after %gs" % (self.host.address,
                                                                                 self.connectTimeout))
        else:
            message = "connect to %s failed: %s" % (self.host.address, failure.getErrorMessage())
            make = lambda: ConnectFailure(message)
        if not self._ready and not self._connecting:
            # nobody can serve the waiting requests: they had their attempt
            self._failPending(make)
        return None

    def _failPending(self, make):
        while self._pending:
            d = self._pending.popleft()
            self._rqPendingActive.value -= 1
            d.errback(Failure(make()))

    def _heartbeat(self, conn):
        """Every heartbeatInterval: a connection that read nothing since the last tick gets a ping."""
        conn.pingTimer = None
        if conn.proto not in self._byProto or conn.closing:
            return
        frames = conn.proto.framesReceived
        if frames != conn.seenFrames:
            # it read something since the last tick: alive, no ping needed
            conn.seenFrames = frames
            conn.missed = 0
            conn.pingOutstanding = False
        else:
            if conn.pingOutstanding:
                conn.missed += 1
                if conn.missed >= MISSED_PINGS_LIMIT:
                    self.log.warn("{host}: {n} heartbeats unanswered; closing the connection",
                                  host=self.host.address, n=conn.missed)
                    self._cxHeartbeatFail.value += 1
                    self._close(conn, abort=True)
                    return
            conn.pingOutstanding = True
            conn.proto.sendPing()
        conn.pingTimer = self.clock.callLater(self.heartbeatInterval, self._heartbeat, conn)

    def _close(self, conn, abort=False):
        """Close a connection; its in-flight streams are failed by the protocol on connectionLost."""
        conn.closing = True
        if conn in self._ready:
            self._ready.remove(conn)
        if conn.pingTimer is not None and conn.pingTimer.active():
            conn.pingTimer.cancel()
        conn.pingTimer = None
        proto = conn.proto
        self._closing.add(proto)
        transport = getattr(proto, "transport", None)
        if transport is None:
            self._connectionLost(proto)
        elif abort:
            transport.abortConnection()
        else:
            transport.loseConnection()

    def _connectionLost(self, proto):
        """Set as ``proto.onConnectionLost``."""
        self._closing.discard(proto)
        conn = self._byProto.pop(proto, None)
        if conn is not None:
            if conn in self._ready:
                self._ready.remove(conn)
            if conn.pingTimer is not None and conn.pingTimer.active():
                conn.pingTimer.cancel()
            conn.pingTimer = None
            self._cxActive.value -= 1
            self._cxDestroy.value += 1
        self._maybeConnect()
        self._checkDrained()

    def _checkDrained(self):
        if self._drained and self._closed and not self._byProto and not self._connecting and not self._closing:
            drained, self._drained = self._drained, []
            for d in drained:
                d.callback(None)
