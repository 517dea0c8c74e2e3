"""
The multiplexed pool of one HTTP/2 upstream host.  Streams share a connection up to the peer's
SETTINGS_MAX_CONCURRENT_STREAMS (and ``maxStreamsPerConnection``); a new connection opens when every one is
saturated.  ``acquire()`` gives a per-request stream handle (the client protocol's ``newStream()``);
``release``/``discard`` end that stream only.  Connections are kept alive with PING (closed if unanswered within
the timeout); after a GOAWAY a connection takes no new streams, streams above its last-stream-id are replayed on
another connection when their request is small enough to have been kept, and the others finish.

txmesh.protocols.dubbo.pool (Dubbo's) does not fit HTTP/2: it has no per-stream flow control, no peer stream
limit and no GOAWAY, hence this pool.
"""

from collections import deque

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from txmesh.errors import ConnectFailure, ConnectTimeout, Overflow, PoolClosed, UpstreamReset
from txmesh.interfaces import IConnectionPool

KEEPALIVE_INTERVAL = 30.0
KEEPALIVE_TIMEOUT = 10.0
MAX_STREAMS_PER_CONNECTION = 1000


class H2UpstreamStats:
    """Per-cluster HTTP/2 series (on the cluster's scope); the client protocol counts in them."""

    def __init__(self, scope):
        c = scope.counter
        self.streams_opened = c("upstream_h2_streams", help="HTTP/2 streams opened upstream")
        self.streams_reset_sent = c("upstream_h2_tx_reset", help="RST_STREAM sent upstream")
        self.streams_reset_by_peer = c("upstream_h2_rx_reset", help="RST_STREAM received from upstream")
        self.goaway_received = c("upstream_h2_goaway_received", help="GOAWAY frames received from upstream")
        self.goaway_retried = c("upstream_h2_goaway_retried",
                                help="Streams above a GOAWAY's last-stream-id retried on another connection")
        self.ping_timeout = c("upstream_h2_ping_timeout", help="Connections closed as their PING went unanswered")
        self._grpc = {}
        self._scope = scope

    def grpcStatus(self, code):
        c = self._grpc.get(code)
        if c is None:
            label = code.decode("ascii", "replace") if code else "none"
            c = self._grpc[code] = self._scope.counter("upstream_grpc_status", help="gRPC statuses from upstream",
                                                       code=label)
        c.value += 1


@implementer(IConnectionPool)
class H2ConnectionPool:
    """
    @param clock: IReactorTime for connect timeouts and keepalive.
    @param host: the IHost.
    @param clusterConfig: connectTimeout, maxConnections, maxPendingRequests, maxConcurrentStreams (0: 1000, and
        never above the peer's limit), heartbeatInterval (the PING interval; 0: 30 s).
    @param connect: ``connect(host) -> Deferred`` firing with a connected H2ClientProtocol.
    @param stats: the cluster's Scope.
    """

    log = Logger()

    def __init__(self, clock, host, clusterConfig, connect, stats):
        self.clock = clock
        self.host = host
        self._connect = connect
        self.connectTimeout = clusterConfig.connectTimeout or 0
        self.maxConnections = clusterConfig.maxConnections
        self.maxPendingRequests = clusterConfig.maxPendingRequests
        self.keepaliveInterval = getattr(clusterConfig, "heartbeatInterval", 0) or KEEPALIVE_INTERVAL
        self.keepaliveTimeout = KEEPALIVE_TIMEOUT
        self.maxStreamsPerConnection = getattr(clusterConfig, "maxConcurrentStreams", 0) or MAX_STREAMS_PER_CONNECTION
        self._conns = []  # usable connections (not going away)
        self._all = set()  # every open connection, going away included
        self._connecting = 0
        self._pending = deque()  # Deferreds waiting for a stream
        self._retry = deque()  # handles refused by GOAWAY, waiting for a stream
        self._closed = False
        self._drained = []
        c = stats.counter
        self._rqTotal = c("upstream_rq_total", help="Requests sent (or queued) upstream.")
        self._cxTotal = c("upstream_cx_total", help="Upstream connections opened.")
        self._cxActive = stats.gauge("upstream_cx_active", help="Open upstream connections.")
        self._cxConnectFail = c("upstream_cx_connect_fail", help="Upstream connects that failed (timeouts included).")
        self._cxConnectTimeout = c("upstream_cx_connect_timeout", help="Upstream connects that timed out.")
        self._cxDestroy = c("upstream_cx_destroy", help="Upstream connections closed.")
        self._rqPendingOverflow = c("upstream_rq_pending_overflow",
                                    help="Requests failed at once because the pending queue was full.")
        self._rqPendingActive = stats.gauge("upstream_rq_pending_active", help="Requests waiting for a connection.")
        self.h2stats = H2UpstreamStats(stats)

    # -- requests ---------------------------------------------------------------------------------------------------

    def acquire(self):
        """
        A stream handle on a connection with room, else after a connect (below maxConnections), else queued (below
        maxPendingRequests).  Fails with Overflow, ConnectFailure, ConnectTimeout or PoolClosed.
        """
        handle = self.acquireIdle()
        if handle is not None:
            return defer.succeed(handle)
        self._rqTotal.value += 1
        self.host.stats.rq_total.value += 1
        if self._closed:
            return defer.fail(PoolClosed("pool for %s is closed" % (self.host.address,)))
        if len(self._pending) >= self.maxPendingRequests:
            self._rqPendingOverflow.value += 1
            return defer.fail(Overflow("pending queue of %s is full (%d)" % (self.host.address,
                                                                             self.maxPendingRequests)))
        d = defer.Deferred(self._cancelWaiter)
        self._pending.append(d)
        self._rqPendingActive.value += 1
        self._maybeConnect()
        return d

    def acquireIdle(self):
        """
        The synchronous fast path of acquire(): a stream handle on a connection with room (counted like
        acquire()), or None when acquire() must be used.
        """
        if self._closed:
            return None
        proto = self._pick()
        if proto is None:
            return None
        self._rqTotal.value += 1
        self.host.stats.rq_total.value += 1
        proto.slots += 1
        return proto.newStream()

    newStream = acquire

    def release(self, handle):
        """The stream completed on both sides."""
        self._end(handle, False)

    def discard(self, handle):
        """The stream is given up: reset it if it is still open (the connection stays)."""
        self._end(handle, True)

    def drain(self):
        """Refuse new requests, fail queued ones, close connections as their streams end; fires when all closed."""
        self._closed = True
        self._failPending(lambda: PoolClosed("pool for %s was drained" % (self.host.address,)))
        for proto in list(self._all):
            if proto.slots == 0:
                proto.transport.loseConnection()
        d = defer.Deferred()
        self._drained.append(d)
        self._checkDrained()
        return d

    @property
    def connectionCount(self):
        return len(self._all)

    @property
    def pendingCount(self):
        return len(self._pending)

    # -- internals -----------------------------------------------------------------------------------------------------

    def _capacity(self, proto):
        return min(proto.maxStreams(), self.maxStreamsPerConnection)

    def _pick(self):
        for proto in self._conns:
            if proto.slots < self._capacity(proto):
                return proto
        return None

    def _end(self, handle, reset):
        if handle.released:
            return
        handle.released = True
        proto = handle.proto
        if reset:
            handle.responder = None
            if not handle.done:
                handle.done = True
            proto._cancel(handle, 8)  # CANCEL, if the stream is still open
        proto.slots -= 1
        if proto.goingAway or self._closed:
            if proto.slots == 0 and not proto.streams and proto.connected:
                proto.transport.loseConnection()
        self._servePending()

    def _cancelWaiter(self, d):
        try:
            self._pending.remove(d)
        except ValueError:
            return
        self._rqPendingActive.value -= 1

    def _servePending(self):
        while self._retry:
            proto = self._pick()
            if proto is None:
                break
            self._replay(self._retry.popleft(), proto)
        while self._pending:
            proto = self._pick()
            if proto is None:
                break
            d = self._pending.popleft()
            self._rqPendingActive.value -= 1
            proto.slots += 1
            d.callback(proto.newStream())
        if self._pending or self._retry:
            self._maybeConnect()
        self._checkDrained()

    def _maybeConnect(self):
        # one connect in flight at a time serves every waiter it has room for
        if self._closed or self._connecting or len(self._all) >= self.maxConnections:
            return
        self._connecting += 1
        self._cxTotal.value += 1
        self.host.stats.cx_total.value += 1
        try:
            d = self._connect(self.host)
        except Exception:
            d = defer.fail()
        timer = None
        if self.connectTimeout:
            timer = self.clock.callLater(self.connectTimeout, d.cancel)
        d.addCallbacks(self._connected, self._connectFailed, callbackArgs=(timer,), errbackArgs=(timer,))

    def _connected(self, proto, timer):
        self._connecting -= 1
        if timer is not None and timer.active():
            timer.cancel()
        proto.onConnectionLost = self._connectionLost
        proto.onGoaway = self._goaway
        proto.onCapacity = lambda p: self._servePending()
        proto.stats = self.h2stats
        self._cxActive.value += 1
        self._all.add(proto)
        self._conns.append(proto)
        proto.startKeepalive(self.clock, self.keepaliveInterval, self.keepaliveTimeout)
        self._servePending()

    def _connectFailed(self, failure, timer):
        self._connecting -= 1
        timedOut = timer is not None and not timer.active()
        if timer is not None and timer.active():
            timer.cancel()
        self._cxConnectFail.value += 1
        self.host.stats.cx_connect_fail.value += 1
        if timedOut:
            self._cxConnectTimeout.value += 1
            make = lambda: ConnectTimeout("connect to %s timed out after %gs" % (self.host.address,
                                                                                 self.connectTimeout))
        else:
            make = lambda: ConnectFailure("connect to %s failed: %s" % (self.host.address, failure.getErrorMessage()))
        # everyone waiting for this connect fails: they would wait for the same unreachable host
        self._failPending(make)
        self._checkDrained()

    def _failPending(self, make):
        pending, self._pending = self._pending, deque()
        self._rqPendingActive.value -= len(pending)
        for d in pending:
            d.errback(Failure(make()))
        retry, self._retry = self._retry, deque()
        for h in retry:
            h.proto._failStream(h, make())

    def _goaway(self, proto, unprocessed):
        if proto in self._conns:
            self._conns.remove(proto)
        for h in unprocessed:
            proto.slots -= 1
            if h.replay is None or h.responseStarted or self._closed:
                proto._failStream(h, UpstreamReset("upstream sent GOAWAY before processing the stream"))
            else:
                self.h2stats.goaway_retried.value += 1
                self._retry.append(h)
        self._servePending()

    def _replay(self, h, proto):
        """Send a GOAWAY-refused request again, on ``proto``, from what the handle kept."""
        proto.slots += 1
        h.proto = proto
        h.sid = None
        h.done = False
        replay = h.replay
        h.replay = []
        h.replaySize = 0
        proto._startStream(h, not replay and h.requestEnded)
        for kind, payload, endStream in replay:
            if kind == 1:
                h.writeBody(payload, endStream)
            else:
                h.writeTrailers(payload)

    def _connectionLost(self, proto):
        if proto in self._conns:
            self._conns.remove(proto)
        if proto in self._all:
            self._all.discard(proto)
            self._cxActive.value -= 1
            self._cxDestroy.value += 1
        self._servePending()

    def _checkDrained(self):
        if self._drained and self._closed and not self._all and not self._connecting:
            drained, self._drained = self._drained, []
            for d in drained:
                d.callback(None)
