"""
The ``error_rate_breaker`` stream filter: ServiceComb mesher's (Hystrix's) error-rate circuit breaker, for HTTP,
gRPC and Dubbo listeners.  One breaker per key (per route, per service or per method): it *opens* when, in a
rolling window, at least ``request_volume_threshold`` requests ended and at least ``error_threshold_percentage``
of them failed; while open every request of that key is answered at once by the proxy (HTTP 503, gRPC UNAVAILABLE
(14), Dubbo SERVICE_NOT_FOUND (60); cause ``circuit_open``, flag ``UO``) and never reaches the router; after
``sleep_window`` it goes *half-open* and lets ``half_open_requests`` probes through: the first failed probe opens it
again, as many successful probes close it (with an empty window).

A failure is what the shared outcome table says (txmesh.upstream.outcome), read from the response this filter sees
on the encode path: the HTTP status, the grpc-status (headers of a trailers-only answer, else trailers), the Dubbo
status.  So an upstream 5xx, UNAVAILABLE or SERVER_ERROR fails, and so do the router's own 503/504 answers (connect
failure, timeout, overflow); a gRPC NOT_FOUND or a Dubbo business exception does not.  A request that ends without
an answer (downstream gone) counts neither way.

config:
  - ``scope`` (default ``service``): ``route`` (the route's name), ``service`` (the gRPC service, the Dubbo
    interface, else the route's cluster), ``method`` (the gRPC or Dubbo method, else cluster + path), ``cluster``
    or ``listener`` (one breaker for the filter);
  - ``request_volume_threshold`` (default 20), ``error_threshold_percentage`` (default 50), ``window`` (default
    10s) split into ``window_buckets`` (default 10), ``sleep_window`` (default 5s), ``half_open_requests``
    (default 1): Hystrix's and mesher's defaults;
  - ``max_breakers`` (default 1000): the cardinality cap; past it new keys share the ``_other`` breaker;
  - ``stat_prefix`` (default ``error_rate_breaker``): the ``breaker`` label of the stats.

Stats, labelled listener, breaker and key: ``error_rate_breaker_rq_success``, ``_rq_failure``, ``_rq_rejected``
(answered while open), ``_opened`` (times it opened) and the gauge ``error_rate_breaker_state`` (0 closed, 1 open,
2 half-open).
"""

from dataclasses import dataclass, field

from twisted.plugin import IPlugin
from zope.interface import implementer

from txmesh.config_reader import checkFilterKeys, parseDuration
from txmesh.filters.descriptors import UNNAMED_ROUTE, CappedMap, buildDescriptor
from txmesh.interfaces import (FilterStatus, IErrorRateBreaker, IFilterFactory, IStreamDecoderFilter,
                               IStreamEncoderFilter, IStreamFilterEvents, StreamEvents)
from txmesh.upstream.outcome import DUBBO_SUCCESS_STATUSES, GRPC_FAILURE_CODES, HTTP_FAILURE_MIN

CAUSE = "circuit_open"
FLAG = "UO"
CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
_STATE_VALUE = {CLOSED: 0, OPEN: 1, HALF_OPEN: 2}
SCOPES = ("route", "service", "method", "cluster", "listener")
_KEYS = ("scope", "request_volume_threshold", "error_threshold_percentage", "window", "window_buckets",
         "sleep_window", "half_open_requests", "max_breakers", "stat_prefix")
_GRPC_STATUS = b"grpc-status"
CONTINUE, STOP = FilterStatus.CONTINUE, FilterStatus.STOP


@dataclass(frozen=True, slots=True)
class BreakerSettings:
    requestVolumeThreshold: int = 20
    errorThresholdPercentage: float = 50.0
    window: float = 10.0
    windowBuckets: int = 10
    sleepWindow: float = 5.0
    halfOpenRequests: int = 1


class _Stats:
    __slots__ = ("success", "failure", "rejected", "opened", "state")

    def __init__(self, stats, labels):
        self.success = stats.counter("error_rate_breaker_rq_success", labels,
                                     "Requests an error_rate_breaker saw succeed")
        self.failure = stats.counter("error_rate_breaker_rq_failure", labels,
                                     "Requests an error_rate_breaker saw fail (the outcome table)")
        self.rejected = stats.counter("error_rate_breaker_rq_rejected", labels,
                                      "Requests answered at once because the breaker was open")
        self.opened = stats.counter("error_rate_breaker_opened", labels, "Times the breaker opened")
        self.state = stats.gauge("error_rate_breaker_state", labels, "0 closed, 1 open, 2 half-open")


@implementer(IErrorRateBreaker)
class ErrorRateBreaker:
    """
    One breaker: a rolling window of ``windowBuckets`` buckets on the clock (each ``window / windowBuckets``
    seconds: its index, requests and failures), and the closed/open/half-open state.

    @param settings: a BreakerSettings.
    @param stats: a _Stats, or None.
    """

    def __init__(self, settings, stats=None):
        self.settings = settings
        self.state = CLOSED
        self._width = settings.window / settings.windowBuckets
        self._buckets = n = settings.windowBuckets
        self._index = [None] * n
        self._total = [0] * n
        self._failed = [0] * n
        self._openedAt = 0.0
        self._probes = 0  # probes in flight while half-open
        self._probeSuccesses = 0
        self._stats = stats

    def _setState(self, state):
        self.state = state
        if self._stats is not None:
            self._stats.state.value = _STATE_VALUE[state]

    def _open(self, now):
        self._setState(OPEN)
        self._openedAt = now
        if self._stats is not None:
            self._stats.opened.value += 1

    def counts(self, now):
        """(requests, failures) in the window ending ``now``."""
        current = int(now // self._width)
        oldest = current - self.settings.windowBuckets
        total = failed = 0
        for i, index in enumerate(self._index):
            if index is not None and index > oldest:
                total += self._total[i]
                failed += self._failed[i]
        return total, failed

    def allow(self, now):
        state = self.state
        if state is CLOSED:
            return True
        if state is OPEN:
            if now - self._openedAt < self.settings.sleepWindow:
                return False
            self._setState(HALF_OPEN)
            self._probes = self._probeSuccesses = 0
        if self._probes < self.settings.halfOpenRequests:
            self._probes += 1
            return True
        return False

    def record(self, failed, now, probe=False):
        if probe:
            self._probes = max(0, self._probes - 1)
            if self.state is not HALF_OPEN:
                return
            if failed:
                self._open(now)
                return
            self._probeSuccesses += 1
            if self._probeSuccesses >= self.settings.halfOpenRequests:
                self._reset()
                self._setState(CLOSED)
            return
        if self.state is not CLOSED:
            return  # an answer to a request let through before the breaker opened
        index = int(now // self._width)
        slot = index % self.settings.windowBuckets
        if self._index[slot] != index:
            self._index[slot] = index
            self._total[slot] = self._failed[slot] = 0
        self._total[slot] += 1
        if failed:
            self._failed[slot] += 1
            total, failures = self.counts(now)
            s = self.settings
            if total >= s.requestVolumeThreshold and failures * 100.0 >= s.errorThresholdPercentage * total:
                self._open(now)

    def abandon(self, probe=False):
        if probe:
            self._probes = max(0, self._probes - 1)

    def _reset(self):
        n = self.settings.windowBuckets
        self._index = [None] * n
        self._total = [0] * n
        self._failed = [0] * n


class Breakers:
    """The breakers of one configured filter (shared by its streams), capped at ``maxBreakers`` keys."""

    def __init__(self, settings, maxBreakers, statPrefix):
        self.settings = settings
        self.statPrefix = statPrefix
        self._breakers = CappedMap(maxBreakers)
        self.find = self._breakers.get  # the per-request path: key -> (its breaker, its _Stats) once made, else None

    def get(self, key, stats, listenerName):
        """The (key, ErrorRateBreaker, its _Stats) of ``key``, ``_other`` past the cap."""
        key, entry = self._breakers.lookup(key)
        if entry is None:
            s = _Stats(stats, (("listener", listenerName), ("breaker", self.statPrefix), ("key", key)))
            entry = self._breakers.add(key, (ErrorRateBreaker(self.settings, s), s))
        return entry


@dataclass(frozen=True, slots=True)
class ErrorRateBreakerConfig:
    scope: str
    key: object  # (request, callbacks) -> str or None
    breakers: Breakers = field(compare=False, repr=False)
    http: bool = False  # on an HTTP/1.1 or HTTP/2 listener (see HTTPErrorRateBreakerFilter)
    byRoute: bool = False  # scope route: the filter reads the route's name itself (what ``key`` would say)


@implementer(IStreamDecoderFilter, IStreamEncoderFilter, IStreamFilterEvents)
class ErrorRateBreakerFilter:
    """
    Per stream: asks the key's breaker on the request head, records the response's outcome.  Made by
    L{ErrorRateBreakerFactory.createFilters}, which sets its fields (no ``__init__``: see there).
    """

    # the heads and the trailers (a gRPC status); the end (a reset is followed by it); STOP only with a local reply
    streamEvents = (StreamEvents.DECODE_HEADERS | StreamEvents.ENCODE_HEADERS | StreamEvents.ENCODE_TRAILERS
                    | StreamEvents.STREAM_COMPLETE | StreamEvents.DECODER_CALLBACKS)

    __slots__ = ("config", "runtime", "decoderCallbacks", "_breaker", "_stats", "_probe", "_protocol")

    def setDecoderFilterCallbacks(self, callbacks):
        self.decoderCallbacks = callbacks

    def setEncoderFilterCallbacks(self, callbacks):
        pass

    def decodeHeaders(self, request, endStream):
        cb = self.decoderCallbacks
        config = self.config
        if config.byRoute:
            # descriptors' route key, inline (once per request): the route's name
            route = cb.route()
            if route is None:
                return CONTINUE
            key = route.name or UNNAMED_ROUTE
        else:
            key = config.key(request, cb)
            if key is None:
                return CONTINUE
        breakers = config.breakers
        entry = breakers.find(key)
        if entry is None:
            entry = breakers.get(key, self.runtime.stats, cb.streamInfo.listenerName)
        breaker, stats = entry
        if breaker.state is not CLOSED:  # closed (the usual state): allow() would say yes; one comparison
            if not breaker.allow(self.runtime.clock.seconds()):
                stats.rejected.value += 1
                cb.sendLocalReply(503, b"circuit_open", (), CAUSE, FLAG)
                return STOP
            self._probe = breaker.state is HALF_OPEN
        self._breaker, self._stats = breaker, stats
        self._protocol = request.protocol
        return CONTINUE

    def decodeData(self, data, endStream):
        return CONTINUE

    def decodeTrailers(self, trailers):
        return CONTINUE

    def _record(self, failed):
        """The admitted request's outcome (the shared outcome table's verdict: txmesh.upstream.outcome)."""
        breaker, self._breaker = self._breaker, None
        (self._stats.failure if failed else self._stats.success).value += 1
        breaker.record(failed, self.runtime.clock.seconds(), self._probe)

    def encodeHeaders(self, response, endStream):
        breaker = self._breaker
        if breaker is None:
            return CONTINUE
        protocol = self._protocol
        if protocol == "dubbo":
            failed = response.status not in DUBBO_SUCCESS_STATUSES
        elif protocol == "grpc" and response.status == 200:
            value = response.headers.get(_GRPC_STATUS)
            if value is not None:  # trailers-only
                failed = (int(value) if value.isdigit() else 2) in GRPC_FAILURE_CODES
            elif endStream:
                failed = 2 in GRPC_FAILURE_CODES  # no grpc-status at all: UNKNOWN
            else:
                return CONTINUE  # the grpc-status comes in the trailers
        else:
            failed = response.status >= HTTP_FAILURE_MIN
        if failed or breaker.state is not CLOSED or self._probe:
            self._record(failed)
            return CONTINUE
        # _record and record()'s closed-breaker success, inline (once per request): one more in the current
        # bucket, unless the bucket is a new one (record starts it)
        self._breaker = None
        self._stats.success.value += 1
        now = self.runtime.clock.seconds()
        index = int(now // breaker._width)
        slot = index % breaker._buckets
        if breaker._index[slot] == index:
            breaker._total[slot] += 1
        else:
            breaker.record(False, now)
        return CONTINUE

    def encodeData(self, data, endStream):
        return CONTINUE

    def encodeTrailers(self, trailers):
        if self._breaker is not None:
            value = trailers.get(_GRPC_STATUS)
            self._record((int(value) if value is not None and value.isdigit() else 2) in GRPC_FAILURE_CODES)
        return CONTINUE

    def onStreamComplete(self):
        if self._breaker is not None:
            breaker, self._breaker = self._breaker, None
            breaker.abandon(self._probe)

    def onStreamReset(self, reason):
        self.onStreamComplete()


class HTTPErrorRateBreakerFilter(ErrorRateBreakerFilter):
    """
    The filter on HTTP/1.1 and HTTP/2 listeners, told of resets instead of every stream's end.  There every
    request is plain HTTP (no gRPC answer waiting for its trailers, no Dubbo one-way call), and a stream ends
    normally only after its response head came through encodeHeaders, which records the outcome: only a reset
    can leave an admitted request (a half-open probe) without one.  One call fewer per request, the same verdicts.
    """

    streamEvents = (StreamEvents.DECODE_HEADERS | StreamEvents.ENCODE_HEADERS | StreamEvents.ENCODE_TRAILERS
                    | StreamEvents.STREAM_RESET | StreamEvents.DECODER_CALLBACKS)

    __slots__ = ()


def _positiveInt(raw, context, key, default, high=None):
    value = raw.get(key, default)
    if type(value) is not int or value < 1 or (high is not None and value > high):
        raise context.error("must be an integer >= 1" + ("" if high is None else " and <= %d" % (high,)), key)
    return value


def _duration(raw, context, key, default):
    value = raw.get(key)
    if value is None:
        return default
    try:
        seconds = parseDuration(value)
    except ValueError as e:
        raise context.error(str(e), key) from None
    if seconds <= 0:
        raise context.error("must be more than 0", key)
    return seconds


@implementer(IFilterFactory, IPlugin)
class ErrorRateBreakerFactory:
    """The ``error_rate_breaker`` stream filter kind; see the module docstring."""

    name = "error_rate_breaker"
    kind = "stream"
    protocols = frozenset({"http", "grpc", "dubbo"})
    terminal = False

    def buildConfig(self, raw, context):
        """@raise txmesh.errors.ConfigError: for an unknown key or a bad value, naming it."""
        checkFilterKeys(raw, _KEYS, context)
        scope, key = buildDescriptor({"scope": raw.get("scope", "service")}, context, "scope", SCOPES)
        percentage = raw.get("error_threshold_percentage", 50)
        if isinstance(percentage, bool) or not isinstance(percentage, (int, float)) or not 0 < percentage <= 100:
            raise context.error("must be a number above 0 and at most 100", "error_threshold_percentage")
        settings = BreakerSettings(
            requestVolumeThreshold=_positiveInt(raw, context, "request_volume_threshold", 20),
            errorThresholdPercentage=float(percentage),
            window=_duration(raw, context, "window", 10.0),
            windowBuckets=_positiveInt(raw, context, "window_buckets", 10, 1000),
            sleepWindow=_duration(raw, context, "sleep_window", 5.0),
            halfOpenRequests=_positiveInt(raw, context, "half_open_requests", 1))
        maxBreakers = _positiveInt(raw, context, "max_breakers", 1000, 100000)
        statPrefix = raw.get("stat_prefix", self.name)
        if not isinstance(statPrefix, str) or not statPrefix:
            raise context.error("must be a non-empty string", "stat_prefix")
        return ErrorRateBreakerConfig(scope, key, Breakers(settings, maxBreakers, statPrefix),
                                      http=context.listenerProtocol in ("http1", "http2"), byRoute=scope == "route")

    def createFilters(self, config, callbacks, runtime):
        # the filter's fields set here: it has no __init__ (an object made per request costs CPython about half as
        # much without the call to one: docs/performance.md, "Resilience within 10 %"); the chain gives it its
        # decoderCallbacks before any event, and _stats and _protocol are set with _breaker
        f = HTTPErrorRateBreakerFilter() if config.http else ErrorRateBreakerFilter()
        f.config = config
        f.runtime = runtime
        f._breaker = None  # set while an admitted request waits for its outcome
        f._probe = False
        callbacks.addStreamFilter(f)
