"""
The router: the terminal stream filter.

It matches the route, answers direct responses and redirects itself, picks the cluster and a host, gets an
upstream connection from the host's pool and relays the request and the response, coupling backpressure both
ways.  Every failure becomes a local reply whose status, ``x-txmesh-error`` header and response flag name the cause
(Envoy's response flags); the listener's codec makes it protocol-native.

Time bounds (Envoy's model), all on one timer per stream that is re-armed only when it fires early:

- the route ``timeout`` bounds the whole response, counted from the end of the request (a request still
  streaming is not timed by it);
- the route ``max_stream_duration`` and the client's deadline (``grpc-timeout``, Dubbo's ``timeout`` attachment,
  ``x-txmesh-expected-rq-timeout-ms`` on a listener that trusts it) count from the request's arrival;
- the listener's ``stream_idle_timeout`` ends a stream on which nothing moved either way for that long.

An HTTP CONNECT gets 501 Not Implemented (``x-txmesh-error: connect_not_supported``) before any route is matched:
no listener runs tunnels yet (RFC 9110 9.3.6 leaves the answer to a proxy that does not; 501, not 405, since no
target resource on this listener would allow it).

The upstream request carries the time left when it is sent, less DEADLINE_MARGIN (``grpc-timeout``, the
``timeout`` attachment, or ``x-txmesh-expected-rq-timeout-ms``), so the next hop gives up first and the hop nearest
the cause answers.
"""

from twisted.logger import Logger
from zope.interface import implementer
from twisted.plugin import IPlugin

from txmesh import errors
from txmesh.interfaces import (
    FilterStatus,
    IDownstreamWatermarkCallbacks,
    IFilterFactory,
    IStreamDecoderFilter,
    IUpstreamResponder,
)
from txmesh.protocols.h2.grpc import encodeTimeout
from txmesh.routing import DirectResponseAction, RedirectAction
from txmesh.upstream.outcome import classifyDubbo, classifyError, classifyGRPC, classifyHTTP, Outcome

STOP = FilterStatus.STOP

_HEADERS, _DATA, _TRAILERS = 0, 1, 2

EXPECTED_TIMEOUT = b"x-txmesh-expected-rq-timeout-ms"
DEADLINE_MARGIN = 0.01  # seconds the next hop is told less than this hop has left (at most a tenth of it)
CONNECT_NOT_SUPPORTED = "connect_not_supported"  # the x-txmesh-error of the 501 that answers CONNECT
_GRPC_TIMEOUT = b"grpc-timeout"
_GRPC_STATUS = b"grpc-status"
_CONTENT_TYPE = b"content-type"
_DUBBO_TIMEOUT = b"timeout"


def parseExpectedTimeout(value):
    """``x-txmesh-expected-rq-timeout-ms`` (bytes, decimal ms > 0) in seconds, or None if malformed."""
    if value.isdigit() and len(value) <= 12:
        ms = int(value)
        if ms > 0:
            return ms / 1000.0
    return None


_toldMs = {}  # seconds left -> the milliseconds told (bytes); mostly the few route timeouts


def toldMs(left):
    """
    The milliseconds (bytes) the next hop is told when this one has ``left`` seconds (> 0): less a margin for
    the way there and back, rounded down, so the next hop gives up, and its answer comes back, before this hop's
    own timer fires; never 0.
    """
    value = _toldMs.get(left)
    if value is None:
        value = b"%d" % (int((left - min(DEADLINE_MARGIN, left * 0.1)) * 1000) or 1,)
        if len(_toldMs) < 256:
            _toldMs[left] = value
    return value


def stampTimeout(request, left, hadExpected):
    """
    Tell the next hop the time it has left (``left`` seconds > 0, see L{toldMs}): gRPC's ``grpc-timeout``, Dubbo's
    ``timeout`` attachment (when the call has one, and only when it differs: a change re-encodes the call), else
    ``x-txmesh-expected-rq-timeout-ms``.  ``hadExpected``: the request came with that field.
    """
    ms = toldMs(left)
    protocol = request.protocol
    headers = request.headers
    if protocol == "grpc":
        headers.set(_GRPC_TIMEOUT, encodeTimeout(int(ms)))
    elif protocol == "dubbo":
        old = headers.get(_DUBBO_TIMEOUT)
        if old is not None and old != ms:
            headers.set(_DUBBO_TIMEOUT, ms)
    elif hadExpected:
        headers.set(EXPECTED_TIMEOUT, ms)
    else:
        headers.add(EXPECTED_TIMEOUT, ms)  # add: no search for a field to replace


def applyHeaderMutations(headers, toRemove, toAdd):
    """Remove then add header fields (HeaderValueOption: name, value, append)."""
    if toRemove:
        headers.removeMany(toRemove)
    for opt in toAdd:
        if opt.append:
            headers.add(opt.name, opt.value)
        else:
            headers.set(opt.name, opt.value)


@implementer(IStreamDecoderFilter, IUpstreamResponder, IDownstreamWatermarkCallbacks)
class Router:
    """One per stream.  See the module docstring."""

    log = Logger()

    __slots__ = ("callbacks", "runtime", "route", "action", "cluster", "host", "pool", "connection",
                 "_pending", "_connecting", "_timer", "_requestDone", "_done",
                 "_bodyLimit", "_bodySeen", "_clusterStats", "_upstreamPaused", "_downstreamPaused",
                 "_clock", "_deadline", "_deadlineKind", "_routeTimeout", "_idle", "_lastActive", "_sendBy",
                 "_sentAt", "_reported", "_shadows")

    def __init__(self, runtime):
        self.runtime = runtime
        self.callbacks = None
        self.route = None
        self.action = None
        self.cluster = None
        self.host = None
        self.pool = None
        self.connection = None
        self._pending = None
        self._connecting = None
        self._timer = None
        self._requestDone = False
        self._done = False
        self._bodyLimit = 0
        self._bodySeen = 0
        self._clusterStats = None
        self._upstreamPaused = False
        self._downstreamPaused = False
        # set by _startTimers: _clock; _deadlineKind (the UpstreamTimeout subclass the deadline ends with) with
        # _deadline; _lastActive (when something last moved) with _idle
        self._deadline = None  # when the stream must end (seconds since the epoch), or None
        self._routeTimeout = 0  # the route timeout, until the request ends and starts it
        self._idle = 0  # the listener's stream_idle_timeout
        self._sendBy = None  # the deadline told to the next hop, or None
        self._sentAt = None  # when the request went to the upstream connection (for putResponseTime)
        self._reported = False  # the attempt's outcome went to host.monitor (or waits for gRPC trailers: None)
        self._shadows = None  # request mirroring (issue 11 part 9): the shadows the body and trailers are teed to

    def setDecoderFilterCallbacks(self, callbacks):
        self.callbacks = callbacks

    # -- request side ----------------------------------------------------------------------------------------

    def decodeHeaders(self, request, endStream):
        cb = self.callbacks
        if request.method == b"CONNECT" and request.protocol != "dubbo":  # a Dubbo method may be named so
            # no listener runs tunnels yet: refuse before routing, so no upstream is ever chosen or connected
            cb.sendLocalReply(501, b"connect_not_supported\n", (), CONNECT_NOT_SUPPORTED)
            return STOP
        route = cb.route()
        if route is None:
            self._fail(errors.NoRoute("no route for %r%r" % (request.authority, request.pathOnly())))
            return STOP
        self.route = route
        action = route.action
        if isinstance(action, DirectResponseAction):
            cb.sendLocalReply(action.status, action.body)
            return STOP
        if isinstance(action, RedirectAction):
            cb.sendLocalReply(action.responseCode, b"", ((b"location", action.location(request)),))
            return STOP
        self.action = action
        info = cb.streamInfo
        clusterName = action.pickCluster(self.runtime.random)
        info.clusterName = clusterName
        cluster = self.runtime.clusters.get(clusterName)
        if cluster is None:
            self._fail(errors.NoClusterFound("cluster %r is not configured" % (clusterName,)))
            return STOP
        self.cluster = cluster
        self._clusterStats = self.runtime.routerStats(clusterName)
        self._clusterStats.rq_total.value += 1

        limit = action.maxRequestBody
        if limit is None:
            limit = cb.maxRequestBody
        self._bodyLimit = limit or 0
        if limit and request.contentLength is not None and request.contentLength > limit:
            cb.sendLocalReply(413, b"request body too large\n", cause="request_body_too_large")
            return STOP

        # rewrite the request for the upstream
        vhost = route.virtualHost
        headers = request.headers
        applyHeaderMutations(headers, vhost.requestHeadersToRemove, vhost.requestHeadersToAdd)
        applyHeaderMutations(headers, route.requestHeadersToRemove, route.requestHeadersToAdd)
        if action.prefixRewrite is not None or action.regexRewrite is not None:
            action.rewritePath(request)
        if action.hostRewrite is not None:
            request.authority = action.hostRewrite
        if action.mirrorPolicies:  # request mirroring (issue 11 part 9): before the primary stamps its timeouts
            self._shadows = self.runtime.shadows.start(request, action.mirrorPolicies, endStream)

        host = cluster.chooseHost(None)
        if host is None:
            self._fail(errors.NoHealthyUpstream("no healthy host in cluster %r" % (clusterName,)))
            return STOP
        self.host = host
        info.upstreamHost = host.address
        host.activeRequests += 1

        self._startTimers(cb, info.startTime, request, action, endStream)
        self._requestDone = endStream
        self._pending = [(_HEADERS, request, endStream)]
        self.pool = pool = cluster.poolFor(host)
        conn = pool.acquireIdle()
        if conn is not None:
            # the common case under load: a pooled keep-alive connection, no Deferred needed
            self._connected(conn)
            return STOP
        d = pool.acquire()
        self._connecting = d
        d.addCallbacks(self._connectedLater, self._connectFailed)
        return STOP

    def _startTimers(self, cb, now, request, action, endStream):
        """
        Arm the stream's one timer (see the module docstring) and stamp the request with the time it has left.
        ``now``: when the request arrived.
        """
        clock, idle, trusted = cb.timeBounds
        self._clock = clock
        hadExpected = False
        deadline = request.timeout
        protocol = request.protocol
        if protocol != "dubbo" and protocol != "grpc":
            expected = request.headers.get(EXPECTED_TIMEOUT)
            if expected is not None:
                hadExpected = True
                if deadline is None and trusted:
                    deadline = parseExpectedTimeout(expected)
        kind = errors.UpstreamTimeout
        msd = action.maxStreamDuration
        if msd and (deadline is None or msd < deadline):
            deadline = msd
            kind = errors.MaxStreamDuration
        route = action.timeout
        left = deadline
        if route and (left is None or route < left):
            left = route  # what the next hop is told: at most the route timeout
        if route and endStream:
            if deadline is None or route < deadline:
                deadline = route
                kind = errors.UpstreamTimeout
            route = 0
        self._routeTimeout = route
        if deadline is not None:
            self._deadline = now + deadline
            self._deadlineKind = kind
            if deadline <= idle:
                idle = 0  # the deadline comes first whatever moves: no need to watch for idleness
        if idle:
            self._idle = idle
            self._lastActive = now
            if deadline is not None and deadline < idle:
                idle = deadline
            self._timer = clock.callLater(idle, self._timerFired)
        elif deadline is not None:
            self._timer = clock.callLater(deadline, self._timerFired)
        if left:
            self._sendBy = now + left
            stampTimeout(request, left, hadExpected)
        elif hadExpected and not trusted:
            request.headers.remove(EXPECTED_TIMEOUT)  # never pass on an untrusted deadline

    def _requestEnded(self):
        """The request ended: the route timeout starts (and the timer moves nearer if it must)."""
        self._requestDone = True
        route = self._routeTimeout
        if route:
            self._routeTimeout = 0
            now = self._clock.seconds()
            deadline = now + route
            if self._deadline is None or deadline < self._deadline:
                self._deadline = deadline
                self._deadlineKind = errors.UpstreamTimeout
                if route <= self._idle:
                    self._idle = 0  # as in _startTimers
                timer = self._timer
                if timer is None:
                    self._timer = self._clock.callLater(route, self._timerFired)
                elif timer.getTime() > deadline:
                    timer.reset(route)

    def _timerFired(self):
        self._timer = None
        if self._done:
            return
        now = self._clock.seconds()
        deadline = self._deadline
        if deadline is not None and deadline <= now:
            kind = self._deadlineKind
            self._timedOut(kind("max stream duration reached" if kind is errors.MaxStreamDuration
                                else "upstream request timeout"))
            return
        idle = self._idle
        if idle:
            idleEnd = self._lastActive + idle
            if idleEnd <= now:
                self._timedOut(errors.StreamIdleTimeout("stream idle timeout"))
                return
            if deadline is None or idleEnd < deadline:
                deadline = idleEnd
        self._timer = self._clock.callLater(deadline - now, self._timerFired)

    def _connectedLater(self, conn):
        """The pool gave a connection after a wait: the time the next hop is told shrinks by the wait."""
        sendBy = self._sendBy
        if sendBy is not None and not self._done and self._pending:
            left = sendBy - self._clock.seconds()
            if left > 0:
                stampTimeout(self._pending[0][1], left, True)
        self._connected(conn)

    def decodeData(self, data, endStream):
        if self._done:
            return STOP
        if self._bodyLimit:
            self._bodySeen += len(data)
            if self._bodySeen > self._bodyLimit:
                self._abandonUpstream()
                self.callbacks.sendLocalReply(413, b"request body too large\n", cause="request_body_too_large")
                return STOP
        if self._idle:
            self._lastActive = self._clock.seconds()
        if self._shadows is not None:  # request mirroring (issue 11 part 9)
            for shadow in self._shadows:
                shadow.writeBody(data, endStream)
        if endStream:
            self._requestEnded()
        conn = self.connection
        if conn is None:
            self._pending.append((_DATA, data, endStream))
        else:
            conn.writeBody(data, endStream)
        return STOP

    def decodeTrailers(self, trailers):
        if self._done:
            return STOP
        self._requestEnded()
        if self._shadows is not None:  # request mirroring (issue 11 part 9)
            for shadow in self._shadows:
                shadow.writeTrailers(trailers)
        conn = self.connection
        if conn is None:
            self._pending.append((_TRAILERS, trailers, True))
        else:
            conn.writeTrailers(trailers)
        return STOP

    def _connected(self, conn):
        self._connecting = None
        if self._done:
            # the stream ended while we waited; hand the connection back untouched
            self.pool.release(conn)
            return
        self.connection = conn
        self._sentAt = self._clock.seconds()
        pending = self._pending
        self._pending = None
        for kind, payload, endStream in pending:
            if kind == _HEADERS:
                conn.sendRequest(payload, endStream, self)
            elif kind == _DATA:
                conn.writeBody(payload, endStream)
            else:
                conn.writeTrailers(payload)
            if self._done:
                return
        if self._downstreamPaused:
            conn.pauseReading()

    def _connectFailed(self, failure):
        self._connecting = None
        if self._done:
            return None
        exc = failure.value
        if not isinstance(exc, errors.UpstreamError):
            self.log.failure("unexpected connection failure", failure)
            exc = errors.ConnectFailure(str(exc))
        self._reportError(exc)
        self._fail(exc)
        return None

    # -- what the attempt came to, for the host's monitor (outlier detection, latency-aware balancing) ---------

    def _report(self, outcome):
        if not self._reported:
            self._reported = True
            self.host.monitor.putResult(outcome)

    def _reportError(self, exc):
        if self.host is not None and not self._reported:
            outcome = classifyError(exc)
            if outcome is not None:
                self._report(outcome)

    def _reportResponse(self, response, endStream):
        """Classify the response head by the cluster's protocol (gRPC waits for its grpc-status)."""
        monitor = self.host.monitor
        if self._sentAt is not None:
            monitor.putResponseTime(self._clock.seconds() - self._sentAt)
        status = response.status
        if self.cluster.config.protocol == "dubbo":
            self._report(classifyDubbo(status))
            return
        if status == 200:
            ctype = response.headers.get(_CONTENT_TYPE)
            if ctype is not None and ctype.startswith(b"application/grpc"):
                if endStream:  # trailers-only
                    self._reportGRPC(response.headers)
                else:
                    self._reported = None  # decided by the trailers
                return
        self._report(classifyHTTP(status))

    def _reportGRPC(self, fields):
        value = fields.get(_GRPC_STATUS)
        self._reported = False
        code = int(value) if value is not None and value.isdigit() else 2  # none or malformed: UNKNOWN
        self._report(classifyGRPC(code))

    # -- response side (called by the upstream client protocol) ------------------------------------------------

    def upstreamHeaders(self, response, endStream):
        if self._idle:
            self._lastActive = self._clock.seconds()
        if not self._reported:
            self._reportResponse(response, endStream)
        route = self.route
        vhost = route.virtualHost
        headers = response.headers
        applyHeaderMutations(headers, route.responseHeadersToRemove, route.responseHeadersToAdd)
        applyHeaderMutations(headers, vhost.responseHeadersToRemove, vhost.responseHeadersToAdd)
        self.callbacks.encodeHeaders(response, endStream)

    def upstreamData(self, data, endStream):
        if self._idle:
            self._lastActive = self._clock.seconds()
        self.callbacks.encodeData(data, endStream)

    def upstreamTrailers(self, trailers):
        if self._idle:
            self._lastActive = self._clock.seconds()
        if self._reported is None:
            self._reportGRPC(trailers)
        self.callbacks.encodeTrailers(trailers)

    def upstreamComplete(self, reusable):
        """The upstream response ended; the connection goes back to the pool if it can carry another request."""
        conn = self.connection
        self.connection = None
        if self._reported is None:  # a gRPC response that ended without trailers
            self._reported = False
            self._report(Outcome.EXT_ORIGIN_FAILURE)
        self._finishUpstream()
        self._clusterStats.rq_completed.value += 1
        if conn is not None:
            if reusable and self._requestDone:
                self.pool.release(conn)
            else:
                self.pool.discard(conn)

    def upstreamFailed(self, exc):
        """The upstream connection failed mid-exchange (reset, bad framing); it is not reused."""
        conn = self.connection
        self.connection = None
        if conn is not None:
            self.pool.discard(conn)
        if self._done:
            return
        self._reportError(exc)
        self._fail(exc)

    def upstreamWritePaused(self):
        self.callbacks.pauseDecoding()

    def upstreamWriteResumed(self):
        self.callbacks.resumeDecoding()

    def onAboveWriteBufferHighWatermark(self):
        self._downstreamPaused = True
        if self.connection is not None:
            self.connection.pauseReading()

    def onBelowWriteBufferLowWatermark(self):
        self._downstreamPaused = False
        if self.connection is not None:
            self.connection.resumeReading()

    # -- ends --------------------------------------------------------------------------------------------------

    def _timedOut(self, exc):
        """A time bound passed (``exc``: an L{errors.UpstreamTimeout}): give up on the upstream and reply."""
        if self._clusterStats is not None:
            self._clusterStats.rq_timeout.value += 1
        self._reportError(exc)
        self._abandonUpstream()
        self._fail(exc)

    def _fail(self, exc):
        """Turn a typed upstream error into a local reply (or a reset, once the response has started)."""
        cb = self.callbacks
        self._finishUpstream()
        cb.sendLocalReply(exc.status, exc.cause.encode("ascii") + b"\n", (), exc.cause, exc.flag)

    def _abandonUpstream(self):
        """Give up on the upstream exchange (timeout, downstream gone): the connection cannot be reused."""
        self._finishUpstream()
        if self._connecting is not None:
            d, self._connecting = self._connecting, None
            d.cancel()
        conn = self.connection
        self.connection = None
        if conn is not None:
            conn.abandon()
            self.pool.discard(conn)

    def _finishUpstream(self):
        if self._done:
            return
        self._done = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.host is not None:
            self.host.activeRequests -= 1

    def onStreamReset(self, reason):
        self._abandonUpstream()

    def onStreamComplete(self):
        if self._shadows is not None:  # request mirroring (issue 11 part 9): a request cut short is not mirrored
            for shadow in self._shadows:
                shadow.abandon()
        # the response reached downstream; if the upstream side is still open (e.g. a local reply was sent
        # while the request was in flight), drop it
        if self.connection is not None or self._connecting is not None:
            self._abandonUpstream()


@implementer(IFilterFactory, IPlugin)
class RouterFactory:
    """The ``router`` filter: terminal, no config."""

    name = "router"
    kind = "stream"
    protocols = frozenset({"http", "grpc", "dubbo"})
    terminal = True

    def buildConfig(self, raw, context):
        if raw:
            raise context.error("the router takes no config (routes live in the listener's route_config)")
        return None

    def createFilters(self, config, callbacks, runtime):
        callbacks.addStreamDecoderFilter(Router(runtime))
