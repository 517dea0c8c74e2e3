"""
Request mirroring (Envoy's ``request_mirror_policies``): a copy of a sampled request goes to a shadow cluster,
fire and forget.

The router hands the request head to L{ShadowWriter.start} once the route's mutations are applied and before the
primary request goes upstream, then tees the body and trailers to each L{ShadowRequest} it got back.  A shadow
never touches the primary: it has its own copy of the head (the primary's is stamped with timeouts and owned by
its connection), its own connection from the shadow cluster's pool, its own timeout, and a responder that throws
the response away.  It never pauses the downstream: body the shadow cannot send yet (its connection is still
being acquired, or the upstream pushed back) is held up to the policy's ``maxBufferedBytes``; past that the shadow
is abandoned.  At most ``maxInFlight`` shadows go to one cluster at once; past that a sampled request is not
mirrored.

HTTP authorities get Envoy's ``-shadow`` suffix on the host (``svc:8080`` -> ``svc-shadow:8080``), gRPC included;
Dubbo calls keep their interface and are re-encoded by the Dubbo client with its own request id (one-way calls
are mirrored as one-way calls).

Counters per shadow cluster: ``shadow_rq_total`` (mirrored), ``shadow_rq_success`` (a response that is not a
failure: below 500, gRPC and Dubbo by the outcome table), ``shadow_rq_failed`` (no host, connect failure, reset,
a failure response), ``shadow_rq_timeout``, ``shadow_rq_overflow`` (in-flight bound at the start, or the buffer
bound later).  Shadows are not reported to hosts' monitors and do not count in hosts' active requests.
"""

from twisted.logger import Logger
from zope.interface import implementer

from txmesh import errors
from txmesh.interfaces import IShadowRequest, IShadowWriter, IUpstreamResponder
from txmesh.stream import HELD_DATA, HELD_HEADERS, HELD_TRAILERS, RequestHead, sendHeld
from txmesh.upstream.outcome import classifyDubbo, classifyGRPC, classifyHTTP, Outcome

_HEADERS, _DATA, _TRAILERS = HELD_HEADERS, HELD_DATA, HELD_TRAILERS
_GRPC_STATUS = b"grpc-status"
_CONTENT_TYPE = b"content-type"


def _grpcOutcome(fields):
    """The outcome a grpc-status field says (malformed: UNKNOWN, a failure), or None without one."""
    value = fields.get(_GRPC_STATUS)
    if value is None:
        return None
    return classifyGRPC(int(value) if value.isdigit() and len(value) < 4 else 2)


def shadowAuthority(authority):
    """Envoy's shadow host: ``-shadow`` after the host name, before any port (``a:80`` -> ``a-shadow:80``)."""
    if authority.startswith(b"["):  # an IPv6 literal: the suffix goes after it, before the port
        end = authority.find(b"]") + 1
        return authority[:end] + b"-shadow" + authority[end:]
    colon = authority.rfind(b":")
    if colon < 0:
        return authority + b"-shadow"
    return authority[:colon] + b"-shadow" + authority[colon:]


def traceSampled(headers):
    """Whether the request's trace is sampled: W3C ``traceparent`` flags, B3 ``x-b3-sampled`` or ``b3``."""
    value = headers.get(b"traceparent")
    if value is not None:
        parts = value.split(b"-")
        try:
            return len(parts) == 4 and len(parts[3]) == 2 and int(parts[3], 16) & 1 == 1
        except ValueError:
            return False
    value = headers.get(b"x-b3-sampled")
    if value is not None:
        return value in (b"1", b"true")
    value = headers.get(b"b3")
    if value is not None:
        parts = value.split(b"-")
        return value == b"1" or value == b"d" or (len(parts) >= 3 and parts[2] in (b"1", b"d"))
    return False


def copyHead(request):
    """The shadow's own copy of the request head (headers, metadata), with the shadow authority for HTTP."""
    head = RequestHead(request.method, request.path, request.authority, request.headers.copy(), request.scheme,
                       request.version, request.protocol, dict(request.metadata), request.contentLength)
    head.timeout = request.timeout
    head.payload = request.payload  # the decoded Dubbo frame: read only; the client re-encodes from the headers
    if request.protocol != "dubbo" and head.authority:
        head.authority = shadowAuthority(head.authority)
    return head


class ShadowStats:
    """One shadow cluster's counters and its in-flight count."""

    __slots__ = ("total", "success", "failed", "timeout", "overflow", "inFlight")

    def __init__(self, stats, cluster):
        scope = stats.scope(cluster=cluster)
        self.total = scope.counter("shadow_rq_total", help="Requests mirrored to the cluster")
        self.success = scope.counter("shadow_rq_success", help="Mirrored requests answered without failure")
        self.failed = scope.counter("shadow_rq_failed", help="Mirrored requests that failed (no host, connect, "
                                                               "reset, failure response)")
        self.timeout = scope.counter("shadow_rq_timeout", help="Mirrored requests given up at their timeout")
        self.overflow = scope.counter("shadow_rq_overflow", help="Requests not mirrored, or shadows abandoned, "
                                                                 "past max_in_flight or max_buffered_bytes")
        self.inFlight = scope.gauge("shadow_rq_active", help="Mirrored requests in flight")


@implementer(IShadowWriter)
class ShadowWriter:
    """
    Starts the shadows of a runtime's requests (see the module docstring).

    @param clock: the IReactorTime shadow timeouts run on.
    @param clusters: what ``get(name)`` gives an ICluster (or None) of.
    @param stats: the StatsStore.
    @param random: a random.Random for sampling.
    """

    def __init__(self, clock, clusters, stats, random):
        self.clock = clock
        self.clusters = clusters
        self.stats = stats
        self.random = random
        self._stats = {}

    def statsFor(self, cluster):
        s = self._stats.get(cluster)
        if s is None:
            s = self._stats[cluster] = ShadowStats(self.stats, cluster)
        return s

    def start(self, request, policies, endStream):
        shadows = None
        for policy in policies:
            if policy.numerator < policy.denominator and self.random.randrange(policy.denominator) >= policy.numerator:
                continue
            if policy.traceSampled and not traceSampled(request.headers):
                continue
            stats = self.statsFor(policy.cluster)
            if stats.inFlight.value >= policy.maxInFlight:
                stats.overflow.value += 1
                continue
            shadow = ShadowRequest(self, policy, stats)
            shadow.begin(copyHead(request), endStream)
            if not shadow.finished:
                if shadows is None:
                    shadows = []
                shadows.append(shadow)
        return shadows


@implementer(IShadowRequest, IUpstreamResponder)
class ShadowRequest:
    """One mirrored request: its connection, the body held until it can be sent, its timeout."""

    log = Logger()

    __slots__ = ("writer", "policy", "stats", "finished", "pool", "connection", "_connecting", "_pending",
                 "_buffered", "_paused", "_timer", "_requestDone", "_outcome", "_dubbo")

    def __init__(self, writer, policy, stats):
        self.writer = writer
        self.policy = policy
        self.stats = stats
        self.finished = False
        self.pool = None
        self.connection = None
        self._connecting = None
        self._pending = None
        self._buffered = 0
        self._paused = False
        self._timer = None
        self._requestDone = False
        self._outcome = None  # the Outcome the response came to, when known
        self._dubbo = False

    def begin(self, head, endStream):
        stats = self.stats
        stats.total.value += 1
        stats.inFlight.value += 1
        self._requestDone = endStream
        cluster = self.writer.clusters.get(self.policy.cluster)
        host = cluster.chooseHost(None) if cluster is not None else None
        if host is None:
            self._finish(stats.failed)
            return
        self._dubbo = cluster.config.protocol == "dubbo"
        self._timer = self.writer.clock.callLater(self.policy.timeout, self._timedOut)
        self._pending = [(_HEADERS, head, endStream)]
        self.pool = pool = cluster.poolFor(host)
        conn = pool.acquireIdle()
        if conn is not None:
            self._connected(conn)
            return
        d = self._connecting = pool.acquire()
        d.addCallbacks(self._connected, self._connectFailed)

    # -- the tee (IShadowRequest) -----------------------------------------------------------------------------------

    def writeBody(self, data, endStream):
        if self.finished:
            return
        if endStream:
            self._requestDone = True
        if self.connection is None or self._paused:
            if self._hold(len(data)):
                if self.connection is None:
                    self._pending.append((_DATA, data, endStream))
                else:
                    self.connection.writeBody(data, endStream)
            return
        self.connection.writeBody(data, endStream)

    def writeTrailers(self, trailers):
        if self.finished:
            return
        self._requestDone = True
        if self.connection is None:
            self._pending.append((_TRAILERS, trailers, True))
        else:
            self.connection.writeTrailers(trailers)

    def abandon(self):
        """The primary request will not complete (downstream reset): a shadow still sending it is given up."""
        if not self.finished and not self._requestDone:
            self._giveUp(self.stats.failed)

    def _hold(self, n):
        """Count ``n`` more bytes held for the upstream; False (the shadow abandoned) past the bound."""
        self._buffered += n
        if self._buffered > self.policy.maxBufferedBytes:
            self._giveUp(self.stats.overflow)
            return False
        return True

    # -- the connection -------------------------------------------------------------------------------------------

    def _connected(self, conn):
        self._connecting = None
        if self.finished:
            self.pool.release(conn)
            return
        self.connection = conn
        pending, self._pending = self._pending, None
        self._buffered = 0
        sendHeld(conn, pending, self, lambda: self.finished)

    def _connectFailed(self, failure):
        self._connecting = None
        if not self.finished:
            if not isinstance(failure.value, errors.UpstreamError):
                self.log.failure("unexpected shadow connection failure", failure)
            self._finish(self.stats.failed)
        return None

    def _timedOut(self):
        self._timer = None
        self._giveUp(self.stats.timeout)

    def _giveUp(self, counter):
        """Abandon the exchange (its connection cannot be reused) and count ``counter``."""
        if self._connecting is not None:
            d, self._connecting = self._connecting, None
            self._finish(counter)
            d.cancel()
            return
        conn, self.connection = self.connection, None
        self._finish(counter)
        if conn is not None:
            conn.abandon()
            self.pool.discard(conn)

    def _finish(self, counter):
        if self.finished:
            return
        self.finished = True
        self._pending = None
        counter.value += 1
        self.stats.inFlight.value -= 1
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # -- the response, thrown away (IUpstreamResponder) -----------------------------------------------------------

    def upstreamHeaders(self, response, endStream):
        status = response.status
        if self._dubbo:
            self._outcome = classifyDubbo(status)
        else:
            ctype = response.headers.get(_CONTENT_TYPE)
            if status == 200 and ctype is not None and ctype.startswith(b"application/grpc"):
                self._outcome = _grpcOutcome(response.headers)  # trailers-only, or None: the trailers decide
            else:
                self._outcome = classifyHTTP(status)
        if endStream:
            self._ended()

    def upstreamData(self, data, endStream):
        if endStream:
            self._ended()

    def upstreamTrailers(self, trailers):
        outcome = _grpcOutcome(trailers)
        if outcome is not None:
            self._outcome = outcome
        self._ended()

    def _ended(self):
        """The response's last event: count what it came to (a gRPC answer without grpc-status is a failure)."""
        outcome = self._outcome
        self._finish(self.stats.success if outcome is Outcome.SUCCESS else self.stats.failed)

    def upstreamComplete(self, reusable):
        """The response is complete (its last event follows): the connection goes back, the count comes then."""
        conn, self.connection = self.connection, None
        if conn is not None:
            if reusable and self._requestDone:
                self.pool.release(conn)
            else:
                self.pool.discard(conn)

    def upstreamFailed(self, exc):
        conn, self.connection = self.connection, None
        if conn is not None:
            self.pool.discard(conn)
        self._finish(self.stats.failed)

    def upstreamWritePaused(self):
        self._paused = True  # never the downstream's problem: hold, bounded, instead

    def upstreamWriteResumed(self):
        self._paused = False
        self._buffered = 0
