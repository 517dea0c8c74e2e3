"""
The ``fault`` stream filter: Envoy's HTTP fault filter for HTTP, gRPC and Dubbo alike.

A request the filter applies to (its route, upstream cluster, header matchers and downstream nodes all fit) may be
*delayed* (held for a fixed time on the runtime's clock, then passed on; response flag ``DI``) and/or *aborted*
(answered at once by the proxy with the configured status; response flag ``FI``, cause ``fault_abort``).  The delay
comes first; the abort is decided when it ends, as in Envoy.  Each is sampled with its own percentage.

The abort status is protocol-native: ``http_status`` for HTTP/1.1 and HTTP/2, ``grpc_status`` for gRPC (else
``http_status`` through gRPC's HTTP mapping), ``dubbo_status`` for Dubbo (else ``http_status`` through the Dubbo
listener's mapping).  A request whose protocol has no status to use is not aborted.

Header control (Envoy's ``header_delay`` / ``header_abort``), only when the config asks for it: the delay in ms
from ``x-txmesh-fault-delay-request``, the abort status from ``x-txmesh-fault-abort-request`` (HTTP),
``x-txmesh-fault-abort-grpc-request`` (gRPC) or ``x-txmesh-fault-abort-dubbo-request`` (Dubbo), and the
percentages from ``x-txmesh-fault-delay-request-percentage`` / ``x-txmesh-fault-abort-request-percentage``
(numerators over the configured denominator, never above the configured numerator).  Dubbo calls carry the same
keys as attachments.  ``downstream_nodes`` matches ``x-txmesh-downstream-service-node`` (Envoy's
``x-envoy-downstream-service-node``).

At most ``max_active_faults`` faulted requests are in progress at once (default: no bound); past it no fault is
injected and ``fault_faults_overflow`` counts one.  Counters per listener: ``fault_delays_injected``,
``fault_aborts_injected``, ``fault_faults_overflow`` and the gauge ``fault_active_faults``.
"""

import re
from dataclasses import dataclass

from twisted.plugin import IPlugin
from zope.interface import implementer

from txmesh.config_reader import checkFilterKeys, parseDuration, parseFraction
from txmesh.interfaces import FilterStatus, IFilterFactory, IStreamDecoderFilter, IStreamFilterEvents, StreamEvents
from txmesh.protocols.dubbo import codec as dc
from txmesh.routing import ClusterAction, HeaderMatcher, WeightedClusterAction

CONTINUE = FilterStatus.CONTINUE
STOP = FilterStatus.STOP

FAULT_ABORT = "fault_abort"  # the cause (x-txmesh-error) of an injected abort
DELAY_INJECTED = "DI"  # Envoy's response flags
FAULT_INJECTED = "FI"

DELAY_HEADER = b"x-txmesh-fault-delay-request"
DELAY_PERCENTAGE_HEADER = b"x-txmesh-fault-delay-request-percentage"
ABORT_HEADER = b"x-txmesh-fault-abort-request"
ABORT_GRPC_HEADER = b"x-txmesh-fault-abort-grpc-request"
ABORT_DUBBO_HEADER = b"x-txmesh-fault-abort-dubbo-request"
ABORT_PERCENTAGE_HEADER = b"x-txmesh-fault-abort-request-percentage"
DOWNSTREAM_NODE_HEADER = b"x-txmesh-downstream-service-node"

_KEYS = ("delay", "abort", "routes", "upstream_cluster", "headers", "downstream_nodes", "max_active_faults")
_DELAY_KEYS = ("fixed_delay", "header_delay", "percentage")
_ABORT_KEYS = ("http_status", "grpc_status", "dubbo_status", "header_abort", "percentage")
_MATCHER_KEYS = ("name", "exact", "prefix", "regex", "present", "invert")
_BODY = b"fault filter abort"


@dataclass(frozen=True, slots=True)
class FaultDelay:
    """A delay: ``fixed`` seconds, or (``fromHeader``) the request's header; sampled numerator/denominator."""

    fixed: float | None
    fromHeader: bool
    numerator: int
    denominator: int


@dataclass(frozen=True, slots=True)
class FaultAbort:
    """An abort: the statuses per protocol (None: not set), or (``fromHeader``) the request's header's."""

    httpStatus: int | None
    grpcStatus: int | None
    dubboStatus: int | None
    fromHeader: bool
    numerator: int
    denominator: int


@dataclass(frozen=True, slots=True)
class FaultConfig:
    """The validated ``fault`` filter config (see the module docstring); None fields do not restrict."""

    delay: FaultDelay | None
    abort: FaultAbort | None
    routes: frozenset | None
    upstreamCluster: str | None
    headers: tuple
    downstreamNodes: frozenset | None
    maxActiveFaults: int | None


class FaultStats:
    """The counters of one listener's fault filter."""

    __slots__ = ("delays", "aborts", "active", "overflow")

    def __init__(self, stats, listener):
        labels = (("listener", listener),)
        self.delays = stats.counter("fault_delays_injected", labels, "Requests the fault filter delayed")
        self.aborts = stats.counter("fault_aborts_injected", labels, "Requests the fault filter aborted")
        self.active = stats.gauge("fault_active_faults", labels, "Faulted requests in progress")
        self.overflow = stats.counter("fault_faults_overflow", labels,
                                      "Faults not injected because max_active_faults was reached")


def _headerFraction(request, name, numerator, denominator):
    """The sampling numerator a percentage header asks for (bounded by the configured one), or the configured."""
    value = request.headers.get(name)
    if value is not None and value.isdigit() and len(value) <= 10:
        return min(int(value), numerator), denominator
    return numerator, denominator


def _headerInt(request, name, low, high):
    value = request.headers.get(name)
    if value is not None and value.isdigit() and len(value) <= 10:
        n = int(value)
        if low <= n <= high:
            return n
    return None


@implementer(IStreamDecoderFilter, IStreamFilterEvents)
class FaultFilter:
    """Per stream: decides, delays, aborts (see the module docstring)."""

    # the request head, held for a delay and let go on (continueDecoding); its end or reset cancel the delay
    streamEvents = (StreamEvents.DECODE_HEADERS | StreamEvents.DECODER_CALLBACKS | StreamEvents.RESUMES_DECODING
                    | StreamEvents.STREAM_COMPLETE | StreamEvents.STREAM_RESET)

    __slots__ = ("config", "runtime", "callbacks", "_timer", "_stats", "_request")

    def __init__(self, config, runtime):
        self.config = config
        self.runtime = runtime
        self.callbacks = None
        self._timer = None
        self._stats = None  # set while this stream counts as an active fault
        self._request = None

    def setDecoderFilterCallbacks(self, callbacks):
        self.callbacks = callbacks

    def _applies(self, request):
        config = self.config
        if config.routes is not None or config.upstreamCluster is not None:
            route = self.callbacks.route()
            if route is None:
                return False
            if config.routes is not None and route.name not in config.routes:
                return False
            if config.upstreamCluster is not None:
                action = route.action
                if isinstance(action, ClusterAction):
                    if action.cluster != config.upstreamCluster:
                        return False
                elif isinstance(action, WeightedClusterAction):
                    if all(name != config.upstreamCluster for name, _ in action.clusters):
                        return False
                else:
                    return False
        for matcher in config.headers:
            if not matcher.matches(request):
                return False
        if config.downstreamNodes is not None:
            node = request.headers.get(DOWNSTREAM_NODE_HEADER)
            if node is None or node not in config.downstreamNodes:
                return False
        return True

    def _sampled(self, numerator, denominator):
        return numerator > 0 and self.runtime.random.randrange(denominator) < numerator

    def _start(self):
        """Count this stream as an active fault; False (counted as overflow) when max_active_faults is reached."""
        if self._stats is not None:
            return True
        stats = FaultStats(self.runtime.stats, self.callbacks.streamInfo.listenerName)
        limit = self.config.maxActiveFaults
        if limit is not None and stats.active.value >= limit:
            stats.overflow.value += 1
            return False
        stats.active.value += 1
        self._stats = stats
        return True

    def _end(self):
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._stats is not None:
            self._stats.active.value -= 1
            self._stats = None

    # -- decode --------------------------------------------------------------------------------------------------

    def decodeHeaders(self, request, endStream):
        if not self._applies(request):
            return CONTINUE
        delay = self.config.delay
        if delay is not None:
            seconds = self._delayFor(request, delay)
            if seconds is not None and self._start():
                self._stats.delays.value += 1
                self.callbacks.streamInfo.responseFlags.add(DELAY_INJECTED)
                self._request = request
                self._timer = self.runtime.clock.callLater(seconds, self._delayEnded)
                return STOP
        return CONTINUE if not self._abort(request) else STOP

    def _delayFor(self, request, delay):
        if delay.fromHeader:
            ms = _headerInt(request, DELAY_HEADER, 0, 86400000)
            if ms is None:
                return None
            seconds = ms / 1000.0
            numerator, denominator = _headerFraction(request, DELAY_PERCENTAGE_HEADER, delay.numerator,
                                                     delay.denominator)
        else:
            seconds, numerator, denominator = delay.fixed, delay.numerator, delay.denominator
        return seconds if self._sampled(numerator, denominator) else None

    def _delayEnded(self):
        self._timer = None
        request, self._request = self._request, None
        if not self._abort(request):
            self.callbacks.continueDecoding()

    def _abort(self, request):
        """Abort ``request`` if the config says so (and it is sampled); True when it was answered."""
        abort = self.config.abort
        if abort is None:
            return False
        status, headers = self._abortStatus(request, abort)
        if status is None:
            return False
        if abort.fromHeader:
            numerator, denominator = _headerFraction(request, ABORT_PERCENTAGE_HEADER, abort.numerator,
                                                     abort.denominator)
        else:
            numerator, denominator = abort.numerator, abort.denominator
        if not self._sampled(numerator, denominator) or not self._start():
            return False
        self._stats.aborts.value += 1
        self.callbacks.sendLocalReply(status, _BODY, headers, FAULT_ABORT, FAULT_INJECTED)
        return True

    def _abortStatus(self, request, abort):
        """(the HTTP-like status, the local reply's headers) to abort ``request`` with, or (None, ()) for none."""
        protocol = request.protocol
        httpStatus = abort.httpStatus
        if abort.fromHeader:
            httpStatus = _headerInt(request, ABORT_HEADER, 200, 599)
        if protocol == "grpc":
            code = _headerInt(request, ABORT_GRPC_HEADER, 0, 16) if abort.fromHeader else abort.grpcStatus
            if code is not None:
                return 503, ((b"grpc-status", b"%d" % (code,)),)
        elif protocol == "dubbo":
            if abort.fromHeader:
                code = _headerInt(request, ABORT_DUBBO_HEADER, 0, 255)
                code = code if code in dc.STATUSES and code != dc.OK else None
            else:
                code = abort.dubboStatus
            if code is not None:
                return 503, ((dc.LOCAL_REPLY_STATUS, b"%d" % (code,)),)
        return httpStatus, ()

    def decodeData(self, data, endStream):
        return CONTINUE

    def decodeTrailers(self, trailers):
        return CONTINUE

    def onStreamReset(self, reason):
        self._request = None
        self._end()  # a delay in progress is cancelled: nothing goes upstream

    def onStreamComplete(self):
        self._end()


# -- config ------------------------------------------------------------------------------------------------------

def _fraction(raw, path, context):
    if raw.get("percentage") is None:
        raise context.error("missing required key 'percentage' (a number from 0 to 100, or {numerator, "
                            "denominator})", path)
    try:
        return parseFraction(raw["percentage"])
    except ValueError as e:
        raise context.error(str(e), path + ".percentage")


def _flag(raw, key, path, context):
    """Envoy's ``header_delay: {}`` / ``header_abort: {}`` (true is accepted too)."""
    value = raw.get(key)
    if value is None or value is False:
        return False
    if value is True or value == {}:
        return True
    raise context.error("must be {} or true", "%s.%s" % (path, key))


def _int(raw, key, path, context, low, high, allowed=None):
    value = raw.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise context.error("must be an integer between %d and %d" % (low, high), "%s.%s" % (path, key))
    if allowed is not None and value not in allowed:
        raise context.error("must be a Dubbo status other than OK (%s)" % (", ".join(map(str, sorted(allowed))),),
                            "%s.%s" % (path, key))
    return value


def _section(raw, name, keys, headerKey, context):
    """Check the shape of the ``delay`` or ``abort`` mapping; whether it asks for header control."""
    if not isinstance(raw, dict):
        raise context.error("must be a mapping", name)
    checkFilterKeys(raw, keys, _Sub(context, name))
    return _flag(raw, headerKey, name, context)


def _buildDelay(raw, context):
    if raw is None:
        return None
    fromHeader = _section(raw, "delay", _DELAY_KEYS, "header_delay", context)
    fixed = None
    if raw.get("fixed_delay") is not None:
        try:
            fixed = parseDuration(raw["fixed_delay"])
        except ValueError as e:
            raise context.error(str(e), "delay.fixed_delay")
    if (fixed is None) == (not fromHeader):
        raise context.error("needs exactly one of fixed_delay, header_delay", "delay")
    return FaultDelay(fixed, fromHeader, *_fraction(raw, "delay", context))


def _buildAbort(raw, context):
    if raw is None:
        return None
    fromHeader = _section(raw, "abort", _ABORT_KEYS, "header_abort", context)
    http = _int(raw, "http_status", "abort", context, 200, 599)
    grpc = _int(raw, "grpc_status", "abort", context, 0, 16)
    dubbo = _int(raw, "dubbo_status", "abort", context, 0, 255, dc.STATUSES - {dc.OK})
    if fromHeader and (http, grpc, dubbo) != (None, None, None):
        raise context.error("header_abort takes the status from the request: no http_status, grpc_status or "
                            "dubbo_status with it", "abort")
    if not fromHeader and (http, grpc, dubbo) == (None, None, None):
        raise context.error("needs http_status, grpc_status, dubbo_status or header_abort", "abort")
    return FaultAbort(http, grpc, dubbo, fromHeader, *_fraction(raw, "abort", context))


def _buildHeaders(raw, context):
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise context.error("must be a list of header matchers", "headers")
    out = []
    for i, h in enumerate(raw):
        path = "headers[%d]" % (i,)
        if not isinstance(h, dict):
            raise context.error("must be a mapping", path)
        checkFilterKeys(h, _MATCHER_KEYS, _Sub(context, path))
        name = h.get("name")
        if not isinstance(name, str) or not name:
            raise context.error("must be a header name", path + ".name")
        kinds = [k for k in ("exact", "prefix", "regex", "present") if h.get(k) is not None]
        if len(kinds) != 1:
            raise context.error("needs exactly one of exact, prefix, regex, present", path)
        kind = kinds[0]
        value = h[kind]
        if kind == "present":
            if not isinstance(value, bool):
                raise context.error("must be true or false", path + ".present")
        elif not isinstance(value, str):
            raise context.error("must be a string", "%s.%s" % (path, kind))
        elif kind == "regex":
            try:
                value = re.compile(value.encode("utf-8"))
            except re.error as e:
                raise context.error("invalid regex: %s" % (e,), path + ".regex")
        else:
            value = value.encode("utf-8")
        invert = h.get("invert", False)
        if not isinstance(invert, bool):
            raise context.error("must be true or false", path + ".invert")
        out.append(HeaderMatcher(name.lower().encode("utf-8"), invert=invert, **{kind: value}))
    return tuple(out)


def _names(raw, key, context):
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise context.error("must be a list of names", key)
    return frozenset(value)


class _Sub:
    """A context whose errors are placed under ``prefix`` (for checkFilterKeys on a nested mapping)."""

    def __init__(self, context, prefix):
        self.context = context
        self.prefix = prefix

    def error(self, reason, subpath=""):
        return self.context.error(reason, "%s.%s" % (self.prefix, subpath) if subpath else self.prefix)


@implementer(IFilterFactory, IPlugin)
class FaultFactory:
    """The ``fault`` filter kind; see the module docstring for its config."""

    name = "fault"
    kind = "stream"
    protocols = frozenset({"http", "grpc", "dubbo"})
    terminal = False

    def buildConfig(self, raw, context):
        """
        Validate ``raw``.
        @raise txmesh.errors.ConfigError: naming the key path, e.g. ``abort.http_status``.
        """
        if raw is None:
            raw = {}
        checkFilterKeys(raw, _KEYS, context)
        delay = _buildDelay(raw.get("delay"), context)
        abort = _buildAbort(raw.get("abort"), context)
        if delay is None and abort is None:
            raise context.error("needs delay, abort or both")
        upstreamCluster = raw.get("upstream_cluster")
        if upstreamCluster is not None:
            if not isinstance(upstreamCluster, str):
                raise context.error("must be a cluster name", "upstream_cluster")
            if upstreamCluster not in context.clusterNames:
                raise context.error("unknown cluster '%s'" % (upstreamCluster,), "upstream_cluster")
        nodes = _names(raw, "downstream_nodes", context)
        maxActive = raw.get("max_active_faults")
        if maxActive is not None and (isinstance(maxActive, bool) or not isinstance(maxActive, int)
                                      or maxActive < 0):
            raise context.error("must be an integer >= 0", "max_active_faults")
        return FaultConfig(delay, abort, _names(raw, "routes", context), upstreamCluster,
                           _buildHeaders(raw.get("headers"), context),
                           None if nodes is None else frozenset(n.encode("utf-8") for n in nodes), maxActive)

    def createFilters(self, config, callbacks, runtime):
        callbacks.addStreamDecoderFilter(FaultFilter(config, runtime))
