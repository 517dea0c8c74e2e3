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

An HTTP CONNECT that no ``connect_matcher`` route takes gets 501 Not Implemented (``x-txmesh-error:
connect_not_supported``), and no upstream is chosen or connected (RFC 9110 9.3.6 leaves the answer to a proxy that
does not tunnel; 501, not 405, since no target resource on this listener would allow it).

Tunnels (txmesh.tunnel_config, txmesh.protocols.tunnel): a CONNECT a route takes, and an upgrade (``request.upgrade``)
whose type the route allows towards an HTTP/1.1 cluster, go on a connection of their own (the cluster's
``tunnels``, never its pool), without retries, mirroring or body limit; once the upstream's 101 (or CONNECT's 200)
went downstream the route timeout and ``max_stream_duration`` no longer apply and the stream lives until either
side ends or ``stream_idle_timeout`` passes without a byte either way.  An upgrade the route does not allow is
dropped (``request.upgrade`` set to None): the request goes on as a plain one.

The upstream request carries the time left when it is sent, less DEADLINE_MARGIN (``grpc-timeout``, the
``timeout`` attachment, or ``x-txmesh-expected-rq-timeout-ms``), so the next hop gives up first and the hop nearest
the cause answers.

Attempts (Envoy's split of Router::Filter and UpstreamRequest): each try upstream is an L{UpstreamRequest} holding
its host, its pool connection (or the wait for one), when its per-try timeout passes (watched by the stream's one
timer: no DelayedCall per attempt) and its outcome report to the host's monitor; it is the IUpstreamResponder the
client protocol calls.  A route's ``retry_policy`` (txmesh.upstream.retry) keeps the request's events for replay and, while nothing went downstream, drops a
retriable answer or failure and starts another attempt after a back-off, on a host not tried yet; the stream's
timer (route timeout, ``max_stream_duration``, the client's deadline, idleness) spans all attempts, and each
attempt tells the next hop min(per-try timeout, time left).  Every attempt takes one of the cluster's
``resources.requests`` (over the limit: 503 ``UO`` at once) and every retry one of its ``resources.retries``.
Without a retry policy the only cost is the attempt object; with one, the RetryState (the request kept for replay,
the attempts in flight and the hosts tried) is made only when a body piece or a first answer or failure needs it
(L{Router._retryState}): a request answered by its first attempt never makes one.
"""

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer
from twisted.plugin import IPlugin

from txmesh import errors
from txmesh.interfaces import (
    FilterStatus,
    IDownstreamWatermarkCallbacks,
    IFilterFactory,
    IStreamDecoderFilter,
    IStreamFilterEvents,
    IUpstreamResponder,
    StreamEvents,
)
from txmesh.protocols.h2.grpc import encodeTimeout
from txmesh.routing import DirectResponseAction, DubboRegistryAction, RedirectAction
from txmesh.stream import HELD_DATA, HELD_HEADERS, HELD_TRAILERS, sendHeld
from txmesh.tunnel_config import CONNECT_TUNNEL, UPGRADE_TUNNEL, upgradeToken
from txmesh.upstream.hashing import requestHash
from txmesh.upstream.host import NULL_MONITOR
from txmesh.upstream.lb import LBContext
from txmesh.upstream.outcome import (HTTP_FAILURE_MIN, classifyDubbo, classifyError, classifyGRPC, classifyHTTP,
                                     Outcome)
from txmesh.upstream.retry import (GRPC_PUSHBACK, RETRY_AFTER, backoff, budgetAllows, parsePushback,
                                   parseRetryAfter, retryState)

STOP = FilterStatus.STOP

_HEADERS, _DATA, _TRAILERS = HELD_HEADERS, HELD_DATA, HELD_TRAILERS

EXPECTED_TIMEOUT = b"x-txmesh-expected-rq-timeout-ms"
DEADLINE_MARGIN = 0.01  # seconds the next hop is told less than this hop has left (at most a tenth of it)
CONNECT_NOT_SUPPORTED = "connect_not_supported"  # the x-txmesh-error of the 501 that answers CONNECT
UPGRADE_FAILED = "upgrade_failed"  # the 403 that answers an HTTP/2 extended CONNECT the route does not tunnel
_GRPC_TIMEOUT = b"grpc-timeout"
_GRPC_STATUS = b"grpc-status"
_CONTENT_TYPE = b"content-type"
_DUBBO_TIMEOUT = b"timeout"
ATTEMPT_COUNT = b"x-txmesh-attempt-count"  # Envoy's x-envoy-attempt-count, with include_request_attempt_count
# Router._retry of a request that may be retried but needed no RetryState yet (Router._retryState)
RETRYABLE = object()


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
    ms = _toldMs.get(left)  # toldMs, its cache inline
    if ms is None:
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


@implementer(IStreamDecoderFilter, IDownstreamWatermarkCallbacks, IStreamFilterEvents)
class Router:
    """One per stream (Envoy's Router::Filter); each try upstream is an L{UpstreamRequest}.  See the module
    docstring."""

    log = Logger()
    # the whole request, its end and reset; it never holds an event to let it go on (it is the last filter)
    streamEvents = (StreamEvents.DECODE | StreamEvents.DECODER_CALLBACKS | StreamEvents.STREAM_COMPLETE
                    | StreamEvents.STREAM_RESET)

    __slots__ = ("callbacks", "runtime", "route", "action", "cluster", "request", "attempt", "_retry", "_attempts",
                 "_timer", "_requestDone", "_done", "_bodyLimit", "_bodySeen", "_clusterStats", "_downstreamPaused",
                 "_clock", "_deadline", "_deadlineKind", "_routeTimeout", "_idle", "_lastActive", "_sendBy",
                 "_perTry", "_shadows", "_waiting", "info", "_tunnel", "_hashKey")

    def __init__(self, runtime):
        self.runtime = runtime
        self.callbacks = None
        self.route = None
        self.action = None
        self.cluster = None
        self.request = None
        self.attempt = None  # the latest UpstreamRequest; once the response started, the one that answered
        # while the request may still be retried: RETRYABLE until a retry decision needs the state (see
        # _retryState), then the RetryState (txmesh.upstream.retry); None when it may not (any more)
        self._retry = None
        self._hashKey = None  # the route's hash key for the request (a retry is placed by it too)
        self._attempts = 0  # attempts started
        self._timer = None
        self._requestDone = False
        self._done = False
        self._bodyLimit = 0
        self._bodySeen = 0
        self._clusterStats = None
        self._downstreamPaused = False
        # set by _startTimers: _clock; _deadlineKind (the UpstreamTimeout subclass the deadline ends with) with
        # _deadline; _lastActive (when something last moved) with _idle
        self._deadline = None  # when the stream must end (seconds since the epoch), or None
        self._routeTimeout = 0  # the route timeout, until the request ends and starts it
        self._idle = 0  # the listener's stream_idle_timeout
        self._sendBy = None  # the deadline told to the next hop, or None
        self._perTry = 0.0  # the retry policy's per_try_timeout (0: none)
        self._shadows = None  # request mirroring (issue 11 part 9): the shadows the body and trailers are teed to
        self._waiting = None  # the wait for a dubbo_registry route's on-demand cluster (issue 12 part 2)
        self.info = None  # the stream's StreamInfo, once forwarding starts (upstream timing, attempts)
        self._tunnel = None  # a tunnel's connector (an IConnectionPool of txmesh.protocols.tunnel), or None

    def setDecoderFilterCallbacks(self, callbacks):
        self.callbacks = callbacks

    # -- request side ----------------------------------------------------------------------------------------

    def decodeHeaders(self, request, endStream):
        cb = self.callbacks
        route = cb.route()
        if route is None and request.method == b"CONNECT" and request.protocol != "dubbo":
            # a Dubbo method may be named so.  No connect_matcher route takes it: refused before any upstream
            cb.sendLocalReply(501, b"connect_not_supported\n", (), CONNECT_NOT_SUPPORTED)
            return STOP
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
        if isinstance(action, DubboRegistryAction):  # issue 12 part 2: the call's service's on-demand cluster
            cluster = self.runtime.registryClusters.clusterFor(action, request)
            if cluster is None:
                self._awaitCluster(action, request, endStream)
                return STOP
            return self._forward(request, endStream, cluster, cluster.name)
        clusterName = action.pickCluster(self.runtime.random)
        cluster = self.runtime.clusters.get(clusterName)
        if cluster is None:
            cb.streamInfo.clusterName = clusterName
            self._fail(errors.NoClusterFound("cluster %r is not configured" % (clusterName,)))
            return STOP
        return self._forward(request, endStream, cluster, clusterName)

    def _awaitCluster(self, action, request, endStream):
        """
        The service's cluster waits for its first providers list (bounded by the action's initial_fetch_timeout):
        route the call once it is there.  A Dubbo call arrives whole (headers with endStream), so nothing else comes
        meanwhile.
        """
        d = self._waiting = self.runtime.registryClusters.waitForCluster(action, request)

        def ready(cluster):
            self._waiting = None
            if not self._done:
                self._forward(request, endStream, cluster, cluster.name)

        def failed(failure):
            self._waiting = None
            if failure.check(errors.UpstreamError):
                if not self._done:
                    self.callbacks.streamInfo.clusterName = None
                    self._fail(failure.value)
            elif not failure.check(defer.CancelledError):
                self.log.failure("on-demand cluster failed", failure)
                if not self._done:
                    self._fail(errors.NoClusterFound("on-demand cluster failed"))

        d.addCallbacks(ready, failed)

    def _forward(self, request, endStream, cluster, clusterName):
        """Forward the request to ``cluster``: rewrites, a host, timers, the first attempt."""
        cb = self.callbacks
        action = self.action
        route = self.route
        self.info = info = cb.streamInfo
        info.clusterName = clusterName
        self.cluster = cluster
        self._clusterStats = self.runtime.routerStats(clusterName)
        self._clusterStats.rq_total.value += 1

        tunnelKind = None
        if request.method == b"CONNECT" and request.protocol != "dubbo":
            tunnelKind = CONNECT_TUNNEL  # the route is a connect_matcher one (RouteConfig.match)
        elif request.upgrade is not None:
            if (upgradeToken(request.upgrade) in action.upgrades and cluster.config.protocol == "http1"
                    and cluster.tunnels is not None and (endStream or request.version == (2, 0))
                    and not request.contentLength):
                tunnelKind = UPGRADE_TUNNEL
            elif request.version == (2, 0):
                # RFC 8441's extended CONNECT cannot go on as a plain request: refused, as Envoy does
                cb.sendLocalReply(403, b"upgrade_failed\n", (), UPGRADE_FAILED)
                return STOP
            else:
                request.upgrade = None  # not allowed here: the offer is dropped, the request goes on as a plain one
        if tunnelKind is CONNECT_TUNNEL and cluster.tunnels is None:
            cb.sendLocalReply(501, b"connect_not_supported\n", (), CONNECT_NOT_SUPPORTED)
            return STOP

        limit = action.maxRequestBody
        if limit is None:
            limit = cb.maxRequestBody
        if tunnelKind is not None:
            limit = 0  # the tunnel's bytes are no body
        self._bodyLimit = limit or 0
        if limit and request.contentLength is not None and request.contentLength > limit:
            cb.sendLocalReply(413, b"request body too large\n", cause="request_body_too_large")
            return STOP

        # rewrite the request for the upstream
        vhost = route.virtualHost
        headers = request.headers
        if vhost.requestHeadersToRemove or vhost.requestHeadersToAdd:  # mostly neither: no call
            applyHeaderMutations(headers, vhost.requestHeadersToRemove, vhost.requestHeadersToAdd)
        if route.requestHeadersToRemove or route.requestHeadersToAdd:
            applyHeaderMutations(headers, route.requestHeadersToRemove, route.requestHeadersToAdd)
        if action.prefixRewrite is not None or action.regexRewrite is not None:
            action.rewritePath(request)
        if action.hostRewrite is not None:
            request.authority = action.hostRewrite
        if action.mirrorPolicies and tunnelKind is None:  # request mirroring (issue 11 part 9): before the primary stamps its timeouts
            self._shadows = self.runtime.shadows.start(request, action.mirrorPolicies, endStream)

        policies = action.hashPolicies
        hashKey = requestHash(policies, request, info) if policies else None
        host = cluster.chooseHost(LBContext(hashKey=hashKey) if policies else None)
        if host is None:
            self._fail(errors.NoHealthyUpstream("no healthy host in cluster %r" % (clusterName,)))
            return STOP
        info.upstreamHost = host.address
        self.request = request
        policy = action.retryPolicy
        if tunnelKind is not None:
            self._tunnel = cluster.tunnels.connectorFor(host, tunnelKind)
            policy = None  # a tunnel is never replayed
        if policy is not None:
            self._perTry = policy.perTryTimeout
            if policy.numRetries:
                # the RetryState is made when a retry decision or a body event needs it (_retryState): the usual
                # request, a head answered by its first attempt, never makes one
                self._retry = RETRYABLE
                self._hashKey = hashKey

        self._startTimers(cb, info.startTime, request, action, endStream)
        self._requestDone = endStream
        self._startAttempt(host, [(_HEADERS, request, endStream)], False, endStream)
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
        delay = deadline
        if idle:
            self._idle = idle
            self._lastActive = now
            if deadline is None or idle < deadline:
                delay = idle
        perTry = self._perTry
        if perTry and endStream and (delay is None or perTry < delay):
            # the first attempt's per-try timeout starts now: the one timer fires for it first (no timer of its own)
            delay = perTry
        if delay is not None:
            self._timer = clock.callLater(delay, self._timerFired)
        if left:
            self._sendBy = now + left
        if perTry and (not left or perTry < left):
            left = perTry  # each attempt tells the next hop at most its per-try timeout
        if left:
            stampTimeout(request, left, hadExpected)
        elif hadExpected and not trusted:
            request.headers.remove(EXPECTED_TIMEOUT)  # never pass on an untrusted deadline

    def _requestEnded(self):
        """
        The request ended: the route timeout and the per-try timeouts of the attempts in flight start (and the
        timer moves nearer if it must, once).
        """
        self._requestDone = True
        now = self._clock.seconds()
        fireBy = None
        perTry = self._perTry
        if perTry:
            for attempt in self._live():
                end = attempt.armPerTry(perTry, now)
                if end is not None and (fireBy is None or end < fireBy):
                    fireBy = end
        route = self._routeTimeout
        if route:
            self._routeTimeout = 0
            deadline = now + route
            if self._deadline is None or deadline < self._deadline:
                self._deadline = deadline
                self._deadlineKind = errors.UpstreamTimeout
                if route <= self._idle:
                    self._idle = 0  # as in _startTimers
                if fireBy is None or deadline < fireBy:
                    fireBy = deadline
        if fireBy is not None:
            self._fireBy(fireBy, now)

    def _fireBy(self, when, now):
        """Have the stream's timer fire at ``when`` (seconds since the epoch) at the latest."""
        timer = self._timer
        if timer is None:
            self._timer = self._clock.callLater(max(0.0, when - now), self._timerFired)
        elif timer.getTime() > when:
            timer.reset(max(0.0, when - now))

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
        if self._perTry:
            # the attempts' per-try timeouts share this timer (one DelayedCall per stream, not per attempt)
            for attempt in self._live():
                end = attempt.perTryEnd
                if end is None or attempt.state:
                    continue
                if end <= now:
                    attempt.perTryEnd = None
                    self._perTryTimedOut(attempt)
                    if self._done:
                        return
                elif deadline is None or end < deadline:
                    deadline = end
        if deadline is not None:
            self._fireBy(deadline, now)  # a retry started meanwhile may have armed it already

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
        state = self._retry
        if state is RETRYABLE:
            state = self._retryState(False)  # the first body piece: the request is kept for replay from here
        if state is None:
            self.attempt.writeBody(data, endStream)
        else:
            self._buffer(state, (_DATA, data, endStream), len(data))
            for attempt in state.live:
                attempt.writeBody(data, endStream)
        return STOP

    def decodeTrailers(self, trailers):
        if self._done:
            return STOP
        self._requestEnded()
        if self._shadows is not None:  # request mirroring (issue 11 part 9)
            for shadow in self._shadows:
                shadow.writeTrailers(trailers)
        state = self._retry
        if state is RETRYABLE:
            state = self._retryState(False)
        if state is None:
            self.attempt.writeTrailers(trailers)
        else:
            self._buffer(state, (_TRAILERS, trailers, True), 0)
            for attempt in state.live:
                attempt.writeTrailers(trailers)
        return STOP

    def _retryState(self, headEnded):
        """
        The request's RetryState, made now that a retry decision or the request's body needs it: until then
        (``_retry`` RETRYABLE) the request has had one attempt, ``self.attempt``, and only its head, which ended it
        if ``headEnded``.  None (and ``_retry`` None) if this request may not be retried after all
        (txmesh.upstream.retry.retryState: a Dubbo one-way call, a body declared over the buffer limit).
        """
        request = self.request
        state = self._retry = retryState(self.action.retryPolicy, request)
        if state is not None:
            state.buffer.append((_HEADERS, request, headEnded))
            state.hashKey = self._hashKey
            attempt = self.attempt
            state.attempted.append(attempt.host)
            if not attempt.state:
                state.live.append(attempt)
        return state

    def _buffer(self, state, event, size):
        """Keep a request event for replay; past per_request_buffer_limit the request is no longer retried."""
        if state.buffer is not None and not state.buffered(event, size):
            self._clusterStats.retry_abandoned.value += 1
            if state.timer is not None:  # a retry waits in its back-off: it can no longer replay the request
                self._fail(errors.UpstreamReset("retry abandoned: the request outgrew per_request_buffer_limit"))

    # -- attempts ----------------------------------------------------------------------------------------------

    def _startAttempt(self, host, pending, isRetry, timerArmed=False):
        """
        Send the request (``pending``: its events so far) to ``host`` as a new attempt, if the cluster's
        ``max_requests`` breaker allows (else the stream fails at once with 503 UO).  ``timerArmed``: the first
        attempt of a request that ended with its head, whose per-try timeout _startTimers already put on the
        stream's timer.
        """
        cluster = self.cluster
        requests = cluster.resources.requests
        if requests.count >= requests.max:  # canCreate(), inlined: once per attempt
            if isRetry:
                cluster.resources.retries.dec()
            self._clusterStats.rq_overflow.value += 1
            self._fail(errors.RequestsOverflow("max_requests reached on cluster %r" % (cluster.config.name,)))
            return
        requests.inc()
        self._attempts = n = self._attempts + 1
        self.info.attemptCount = n
        attempt = UpstreamRequest(self, host, cluster.poolFor(host) if self._tunnel is None else self._tunnel, n,
                                  isRetry)
        self.attempt = attempt
        state = self._retry
        if state is not None and state is not RETRYABLE:  # RETRYABLE: the first attempt, see _retryState
            state.live.append(attempt)
            state.attempted.append(host)
        now = None
        policy = self.action.retryPolicy if self._tunnel is None else None
        if policy is not None:
            request = self.request
            if policy.includeAttemptCount:
                request.headers.set(ATTEMPT_COUNT, b"%d" % (n,))
            if n > 1:
                left = attempt.tellBy(self._clock.seconds()) if (self._sendBy or self._perTry) else None
                if left is not None and left > 0:
                    stampTimeout(request, left, True)
            perTry = self._perTry
            if perTry and self._requestDone:
                # armPerTry, inline: a new attempt's per-try timeout always starts here
                attempt.startedAt = now = self._clock.seconds()
                attempt.perTryEnd = end = now + perTry
                if not timerArmed:
                    self._fireBy(end, now)
        # start it (inlined: once per request)
        attempt.pending = pending
        pool = attempt.pool
        conn = pool.acquireIdle()
        if conn is not None:
            # the common case under load: a pooled keep-alive connection, no Deferred needed; handed over in this
            # same call, so the per-try's start (when read) is when it was sent too
            attempt._connected(conn, now)
            return
        d = pool.acquire()
        attempt.connecting = d
        d.addCallbacks(attempt._connectedLater, attempt._connectFailed)

    def _live(self):
        """The attempts in flight."""
        state = self._retry
        if state is not None and state is not RETRYABLE:
            return list(state.live)
        attempt = self.attempt
        return [attempt] if attempt is not None and not attempt.state else []

    def _attemptFailed(self, attempt, exc):
        """``attempt`` failed before its answer was kept: retry if the policy says so, else fail the stream."""
        state = self._retry
        if state is RETRYABLE:
            state = self._retryState(self._requestDone)
        if state is not None:
            if state.live:
                return  # another attempt (a hedge) is still in flight and may yet answer
            if state.errorRetriable(exc) and self._maybeRetry(attempt):
                return
        self._fail(exc)

    def _retryAnswer(self, attempt, status, fields, dubbo, grpc):
        """
        ``attempt`` answered with ``status`` (HTTP or Dubbo; with ``grpc``, a grpc-status code): True if it is
        dropped for a retry (or for a hedge still in flight), False if the answer is kept (and the request
        committed to ``attempt``).
        """
        state = self._retry
        if state is RETRYABLE:
            state = self._retryState(self._requestDone)
            if state is None:  # not retried after all
                self._commit(attempt)
                return False
        retriable = state.grpcRetriable(status) if grpc else state.statusRetriable(status, dubbo)
        if retriable:
            if len(state.live) > (0 if attempt.state else 1):
                attempt.held = DROPPED
                attempt.abandon()  # a hedge may yet answer better
                return True
            delay = None
            if fields is not None:
                value = fields.get(GRPC_PUSHBACK) if grpc else fields.get(RETRY_AFTER)
                if value is not None:
                    delay = parsePushback(value) if grpc else parseRetryAfter(value, self._clock.seconds())
            if self._maybeRetry(attempt, delay):
                attempt.held = DROPPED  # the rest of its answer (a completed one's body) is ignored
                if not attempt.state:
                    attempt.abandon()
                return True
        self._commit(attempt, retriable)
        return False

    def _maybeRetry(self, attempt, delay=None):
        """
        Schedule a retry after ``attempt`` failed or answered retriably, if the policy's limits allow (``delay``:
        what Retry-After or a pushback asked for, NO_RETRY, or None for the back-off).  True if scheduled.
        """
        state = self._retry
        if state.buffer is None or state.timer is not None:
            return False
        policy = state.policy
        stats = self._clusterStats
        if state.retries >= policy.numRetries:
            stats.retry_limit_exceeded.value += 1
            return False
        if delay is not None and delay < 0:
            return False  # a pushback that forbids retrying
        resources = self.cluster.resources
        if not budgetAllows(policy, resources):
            stats.retry_overflow.value += 1
            if policy.budgetPercent is not None:
                stats.retry_budget_exhausted.value += 1
            return False
        if delay is None:
            delay = backoff(policy, state.retries + 1, self.runtime.random)
            ratelimited = False
        else:
            ratelimited = True
        deadline = self._deadline
        if deadline is not None and self._clock.seconds() + delay >= deadline:
            return False  # the retry could not start before the stream's deadline
        if ratelimited:
            stats.retry_backoff_ratelimited.value += 1
        else:
            stats.retry_backoff_exponential.value += 1
        state.retries += 1
        state.held += 1
        resources.retries.inc()
        stats.retry.value += 1
        state.timer = self._clock.callLater(delay, self._retryNow)
        return True

    def _retryNow(self):
        """The back-off ended: start the retry on a host not tried yet where one is healthy."""
        state = self._retry
        state.timer = None
        state.held -= 1
        cluster = self.cluster
        context = state.context()
        host = cluster.chooseHost(context)
        tries = state.policy.hostSelectionAttempts
        while tries > 1 and host is not None and context is not None and host in context.attempted:
            host = cluster.chooseHost(context)
            tries -= 1
        if host is None:
            cluster.resources.retries.dec()
            self._fail(errors.NoHealthyUpstream("no healthy host in cluster %r" % (cluster.config.name,)))
            return
        self.callbacks.streamInfo.upstreamHost = host.address
        self._startAttempt(host, list(state.buffer), True)

    def _perTryTimedOut(self, attempt):
        """``attempt`` had no answer within the per-try timeout: hedge, retry or fail (504 UT)."""
        self._clusterStats.per_try_timeout.value += 1
        exc = errors.UpstreamPerTryTimeout("upstream per-try timeout")
        attempt.reportError(exc)
        state = self._retry
        if state is RETRYABLE:
            state = self._retryState(self._requestDone)
        if state is not None and state.policy.hedgeOnPerTryTimeout:
            if state.errorRetriable(exc):
                self._maybeRetry(attempt)  # the first attempt goes on; the first good answer wins
            return
        attempt.abandon()
        self._attemptFailed(attempt, exc)

    def _commit(self, attempt, retriable=False):
        """The request stays with ``attempt``'s answer: other attempts are cancelled, no more retries."""
        state = self._retry
        self._retry = None
        self.attempt = attempt
        if state is not None and state is not RETRYABLE:  # RETRYABLE: the first attempt alone, nothing pending
            if state.timer is not None or state.held:
                self._releaseRetries(state)
            for other in state.live:
                if other is not attempt:
                    other.abandon()
        if attempt.number > 1 and not retriable:
            self._clusterStats.retry_success.value += 1
        if attempt.state == _COMPLETED:
            self._finishUpstream()
            self._clusterStats.rq_completed.value += 1

    def _releaseRetries(self, state):
        """No more retries for this request: a pending back-off is cancelled and its breaker count given back."""
        if state.timer is not None:
            state.timer.cancel()
            state.timer = None
        if state.held:
            retries = self.cluster.resources.retries
            for _ in range(state.held):
                retries.dec()
            state.held = 0

    def _forwardHeaders(self, response, endStream):
        """The kept answer's head goes downstream."""
        route = self.route
        vhost = route.virtualHost
        headers = response.headers
        if route.responseHeadersToRemove or route.responseHeadersToAdd:  # mostly neither: no call
            applyHeaderMutations(headers, route.responseHeadersToRemove, route.responseHeadersToAdd)
        if vhost.responseHeadersToRemove or vhost.responseHeadersToAdd:
            applyHeaderMutations(headers, vhost.responseHeadersToRemove, vhost.responseHeadersToAdd)
        if self._tunnel is not None and (response.status == 101 or (
                self._tunnel.kind == CONNECT_TUNNEL and 200 <= response.status < 300)):
            self._tunnelOpened()
        self.callbacks.encodeHeaders(response, endStream)

    def _tunnelOpened(self):
        """
        The tunnel opens: from now on only the listener's ``stream_idle_timeout`` bounds the stream (the route
        timeout and ``max_stream_duration`` bounded the wait for the upstream's answer).
        """
        self._deadline = None
        self._routeTimeout = 0
        _, idle, _ = self.callbacks.timeBounds
        self._idle = idle
        if idle:
            now = self._lastActive = self._clock.seconds()
            self._fireBy(now + idle, now)

    # -- downstream watermarks -----------------------------------------------------------------------------------

    def onAboveWriteBufferHighWatermark(self):
        self._downstreamPaused = True
        for attempt in self._live():
            if attempt.connection is not None:
                attempt.connection.pauseReading()

    def onBelowWriteBufferLowWatermark(self):
        self._downstreamPaused = False
        for attempt in self._live():
            if attempt.connection is not None:
                attempt.connection.resumeReading()

    # -- ends --------------------------------------------------------------------------------------------------

    def _timedOut(self, exc):
        """A time bound passed (``exc``: an L{errors.UpstreamTimeout}): give up on the upstream and reply."""
        if self._clusterStats is not None:
            self._clusterStats.rq_timeout.value += 1
        for attempt in self._live():
            attempt.reportError(exc)
        self._fail(exc)

    def _fail(self, exc):
        """Turn a typed upstream error into a local reply (or a reset, once the response has started)."""
        cb = self.callbacks
        self._abandonUpstream()
        cb.sendLocalReply(exc.status, exc.cause.encode("ascii") + b"\n", (), exc.cause, exc.flag)

    def _abandonUpstream(self):
        """Give up on the upstream exchange (timeout, downstream gone): attempts in flight are abandoned."""
        live = self._live()
        self._finishUpstream()
        for attempt in live:
            attempt.abandon()

    def _finishUpstream(self):
        if self._done:
            return
        self._done = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        state = self._retry
        if state is not None:
            self._retry = None
            if state is not RETRYABLE:  # RETRYABLE: nothing pending; _abandonUpstream abandons the attempt
                self._releaseRetries(state)
                for attempt in state.live:
                    attempt.abandon()

    def onStreamReset(self, reason):
        if self._waiting is not None:
            self._waiting.cancel()
        self._abandonUpstream()

    def onStreamComplete(self):
        if self._shadows is not None:  # request mirroring (issue 11 part 9): a request cut short is not mirrored
            for shadow in self._shadows:
                shadow.abandon()
        # the response reached downstream; if the upstream side is still open (e.g. a local reply was sent
        # while the request was in flight), drop it
        if not self._done or self._retry is not None:
            self._abandonUpstream()
            return
        attempt = self.attempt
        if attempt is not None:
            if not attempt.state:
                attempt.abandon()
            self.attempt = None  # the attempt refers back to this router: no cycle left for the collector


_LIVE, _COMPLETED, _ENDED = 0, 1, 2  # UpstreamRequest.state
DROPPED = object()  # UpstreamRequest.held of an attempt whose answer was dropped for a retry
_SUCCESS = Outcome.SUCCESS


@implementer(IUpstreamResponder)
class UpstreamRequest:
    """
    One attempt of a request on one host (Envoy's UpstreamRequest): the pool's connection or the wait for it, the
    per-try timeout (on the stream's one timer), the attempt's outcome for the host's monitor (outlier detection,
    latency-aware balancing), and the responder the upstream client protocol calls.  Its router decides what the
    answer is worth.
    """

    log = Logger()

    __slots__ = ("router", "host", "pool", "number", "isRetry", "connection", "connecting", "pending", "state",
                 "sentAt", "reported", "perTryEnd", "startedAt", "held")

    def __init__(self, router, host, pool, number, isRetry):
        self.router = router
        self.host = host
        self.pool = pool
        self.number = number  # 1 for the first attempt
        self.isRetry = isRetry  # holds one of the cluster's resources.retries
        self.connection = None
        self.connecting = None
        self.pending = None  # request events waiting for the connection
        self.state = _LIVE
        self.sentAt = None  # when the request went to the upstream connection (for putResponseTime)
        self.reported = False  # the outcome went to host.monitor (or waits for gRPC trailers: None)
        self.perTryEnd = None  # when the per-try timeout passes (the router's one timer watches it), or None
        self.startedAt = None  # when the per-try timeout started
        self.held = None  # a gRPC response head kept back until its grpc-status says whether to retry, or DROPPED
        host.activeRequests += 1

    def tellBy(self, now):
        """The time (seconds) the next hop may take for this attempt: min(per-try timeout, the time left)."""
        router = self.router
        sendBy = router._sendBy
        perTry = router._perTry
        if perTry:
            end = (self.startedAt if self.startedAt is not None else now) + perTry
            if sendBy is None or end < sendBy:
                sendBy = end
        return None if sendBy is None else sendBy - now

    def armPerTry(self, perTry, now):
        """
        Start the per-try timeout (``perTry`` seconds from ``now``) unless it runs already or the attempt
        ended or was answered; returns when it passes (the router's timer must fire by then), or None.
        """
        if self.perTryEnd is None and self.startedAt is None and not self.state and self.reported is False:
            self.startedAt = now
            self.perTryEnd = end = now + perTry
            return end
        return None

    def _connectedLater(self, conn):
        """The pool gave a connection after a wait: the time the next hop is told shrinks by the wait."""
        router = self.router
        if not self.state and self.pending and (router._sendBy is not None or router._perTry):
            left = self.tellBy(router._clock.seconds())
            if left is not None and left > 0:
                stampTimeout(self.pending[0][1], left, True)
        self._connected(conn)

    def _connected(self, conn, now=None):
        """The pool gave ``conn`` (``now``: the clock's seconds() if the caller read them just now, else None)."""
        self.connecting = None
        if self.state:
            # the attempt ended while we waited; hand the connection back untouched
            self.pool.release(conn)
            return
        self.connection = conn
        router = self.router
        if now is None:
            now = router._clock.seconds()
        router.info.upstreamStartTime = now
        router.info.upstreamTLS = self.host.tlsPeer  # a TLS cluster's verified upstream, for the access log
        if self.host.timesResponses:  # a monitor reads response times (not outlier detection's)
            self.sentAt = now
        pending = self.pending
        self.pending = None
        if len(pending) == 1:  # the request head alone, the usual case: sendHeld's loop for one part, inline
            _, head, endStream = pending[0]
            conn.sendRequest(head, endStream, self)
            if self.state:
                return
        elif not sendHeld(conn, pending, self, self._ended):
            return
        if router._downstreamPaused:
            conn.pauseReading()

    def _ended(self):
        return bool(self.state)

    def _connectFailed(self, failure):
        self.connecting = None
        if self.state:
            return None
        exc = failure.value
        if not isinstance(exc, errors.UpstreamError):
            self.log.failure("unexpected connection failure", failure)
            exc = errors.ConnectFailure(str(exc))
        self._end(_ENDED)
        self.reportError(exc)
        self.router.info.upstreamFailureReason = str(exc) or exc.cause
        self.router._attemptFailed(self, exc)
        return None

    def writeBody(self, data, endStream):
        conn = self.connection
        if conn is not None:
            conn.writeBody(data, endStream)
        elif not self.state:
            self.pending.append((_DATA, data, endStream))

    def writeTrailers(self, trailers):
        conn = self.connection
        if conn is not None:
            conn.writeTrailers(trailers)
        elif not self.state:
            self.pending.append((_TRAILERS, trailers, True))

    def abandon(self):
        """The router gives this attempt up (timeout, a retry or hedge won, downstream gone)."""
        if not self._end(_ENDED):
            return
        if self.connecting is not None:
            d, self.connecting = self.connecting, None
            d.cancel()
        conn = self.connection
        self.connection = None
        if conn is not None:
            conn.abandon()
            self.pool.discard(conn)

    def _end(self, state):
        """The attempt ends (once): its host, breaker and retry counts are given back.  False if it had."""
        if self.state:
            return False
        self.state = state
        self.perTryEnd = None
        self.host.activeRequests -= 1
        router = self.router
        if self.isRetry:
            router.cluster.resources.retries.dec()
        router.cluster.resources.requests.dec()
        retry = router._retry
        if retry is not None and retry is not RETRYABLE and self in retry.live:
            retry.live.remove(self)
        return True

    # -- what the attempt came to, for the host's monitor (outlier detection, latency-aware balancing) ---------

    def _report(self, outcome):
        if not self.reported:
            self.reported = True
            self.host.monitor.putResult(outcome)

    def reportError(self, exc):
        if not self.reported:
            outcome = classifyError(exc)
            if outcome is not None:
                self._report(outcome)

    def _reportGRPC(self, fields):
        self.reported = False
        self._report(classifyGRPC(grpcStatus(fields)))

    # -- response side (called by the upstream client protocol) ------------------------------------------------

    def upstreamHeaders(self, response, endStream):
        router = self.router
        router.info.upstreamFirstByteTime = now = router._clock.seconds()
        if router._idle:
            router._lastActive = now
        self.perTryEnd = None  # the answer started: the per-try timeout no longer applies (Envoy's rule)
        dubbo = router.cluster.config.protocol == "dubbo"
        if not self.reported:
            monitor = self.host.monitor
            if monitor is NULL_MONITOR:
                self.reported = True  # nobody watches this host's outcomes: nothing to classify
            else:
                # the response head's outcome by the cluster's protocol (gRPC waits for its grpc-status); inline:
                # once per request on a watched host
                if self.sentAt is not None:
                    monitor.putResponseTime(now - self.sentAt)
                status = response.status
                if dubbo:
                    self._report(classifyDubbo(status))
                else:
                    ctype = response.headers.get(_CONTENT_TYPE) if status == 200 else None
                    if ctype is not None and ctype.startswith(b"application/grpc"):
                        if endStream:  # trailers-only
                            self._reportGRPC(response.headers)
                        else:
                            self.reported = None  # decided by the trailers
                    else:  # _report and classifyHTTP, inline
                        self.reported = True
                        monitor.putResult(_SUCCESS if status < HTTP_FAILURE_MIN else classifyHTTP(status))
        state = router._retry
        if state is not None:
            status = response.status
            policy = router.action.retryPolicy
            if not dubbo and status == 200 and policy.grpcCodes:
                ctype = response.headers.get(_CONTENT_TYPE)
                if ctype is not None and ctype.startswith(b"application/grpc"):
                    if state is RETRYABLE:
                        state = router._retryState(router._requestDone)
                    if state is not None:
                        if not endStream:
                            self.held = response  # whether to retry is in the trailers, if no body comes first
                            return
                        if router._retryAnswer(self, grpcStatus(response.headers), response.headers, False, True):
                            return
                    router._forwardHeaders(response, endStream)
                    return
            if not dubbo and status < 500 and status not in policy.retriableStatusCodes:
                # the usual answer: no retry_on condition can take it (see statusRetriable)
                if state is RETRYABLE and not self.state:
                    router._retry = None  # _commit's whole work for the first attempt, still in flight
                else:
                    router._commit(self)
            elif router._retryAnswer(self, status, response.headers, dubbo, False):
                return
        router._forwardHeaders(response, endStream)

    def _release(self):
        """A held gRPC head goes downstream after all: the request stays with this attempt."""
        held, self.held = self.held, None
        router = self.router
        router._commit(self)
        router._forwardHeaders(held, False)

    def upstreamData(self, data, endStream):
        router = self.router
        if router._idle:
            router._lastActive = router._clock.seconds()
        if self.held is not None:
            if self.held is DROPPED:
                return
            self._release()
        router.callbacks.encodeData(data, endStream)

    def upstreamTrailers(self, trailers):
        router = self.router
        if router._idle:
            router._lastActive = router._clock.seconds()
        if self.reported is None:
            self._reportGRPC(trailers)
        if self.held is not None:
            if self.held is DROPPED:
                return
            if router._retry is not None and router._retry.grpcRetriable(grpcStatus(trailers)):
                held, self.held = self.held, None
                if router._retryAnswer(self, grpcStatus(trailers), trailers, False, True):
                    return
                router._forwardHeaders(held, False)
            else:
                self._release()
        router.callbacks.encodeTrailers(trailers)

    def upstreamComplete(self, reusable):
        """The upstream response ended; the connection goes back to the pool if it can carry another request."""
        conn = self.connection
        self.connection = None
        if self.reported is None and self.held is None:  # a gRPC response that ended without trailers
            self.reported = False
            self._report(Outcome.EXT_ORIGIN_FAILURE)
        router = self.router
        router.info.upstreamEndTime = router._clock.seconds()
        self._end(_COMPLETED)
        if router._retry is None:
            router._finishUpstream()
            router._clusterStats.rq_completed.value += 1
        if conn is not None:
            if reusable and router._requestDone:
                self.pool.release(conn)
            else:
                self.pool.discard(conn)

    def upstreamFailed(self, exc):
        """The upstream connection failed mid-exchange (reset, bad framing); it is not reused."""
        conn = self.connection
        self.connection = None
        if conn is not None:
            self.pool.discard(conn)
        if not self._end(_ENDED) or self.router._done:
            return
        self.held = None
        self.reportError(exc)
        self.router._attemptFailed(self, exc)

    def upstreamWritePaused(self):
        self.router.callbacks.pauseDecoding()

    def upstreamWriteResumed(self):
        self.router.callbacks.resumeDecoding()


def grpcStatus(fields):
    """The grpc-status of response headers or trailers (an int; none or malformed: UNKNOWN, 2)."""
    value = fields.get(_GRPC_STATUS)
    return int(value) if value is not None and value.isdigit() and len(value) < 4 else 2


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
