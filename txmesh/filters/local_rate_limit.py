"""
The ``local_rate_limit`` stream filter (Envoy's envoy.filters.http.local_ratelimit), for HTTP, gRPC and Dubbo
listeners: token buckets that *reject*, never queue.  A request that finds its bucket empty is answered at once by
the proxy: HTTP 429 (``status`` may change it), gRPC RESOURCE_EXHAUSTED (8), Dubbo SERVER_THREADPOOL_EXHAUSTED_ERROR
(100), with the cause ``local_rate_limited`` (x-txmesh-error) and the response flag ``RL``; it never reaches the
router, so the upstream never sees it.

config:
  - ``token_bucket`` (required): ``max_tokens`` (the burst), ``tokens_per_fill`` (default 1), ``fill_interval``
    (>= 50ms);
  - ``descriptor`` (default ``listener``: one bucket, the filter's own): what the buckets are keyed by, one bucket
    per distinct value: ``route``, ``cluster``, ``{header: name}``, ``source_address``, ``authority``,
    ``grpc_service``, ``grpc_method``, ``dubbo_interface``, ``dubbo_method``, ``service``, ``method`` (see
    txmesh.filters.descriptors); a request without the descriptor (no such header, not gRPC ...) is not limited;
  - ``max_buckets`` (default 1000): the cardinality cap; past it new values share the ``_other`` bucket;
  - ``routes`` (route names) and ``path_prefix``: limit only requests of those routes / paths (default all);
  - ``enable_x_ratelimit_headers`` (default false): HTTP and gRPC responses carry ``x-ratelimit-limit`` (the burst),
    ``x-ratelimit-remaining`` and ``x-ratelimit-reset`` (whole seconds to the next fill), Envoy's DRAFT_VERSION_03;
  - ``status`` (default 429): the HTTP status of the rejection;
  - ``stat_prefix`` (default ``local_rate_limit``): the ``limiter`` label of the counters.

Counters, labelled listener, limiter and descriptor (the key, ``_other`` past the cap): ``ratelimit_ok`` and
``ratelimit_rate_limited`` (Envoy's names).  Buckets refill lazily from the clock (txmesh.filters.token_bucket); a
reload builds new, full buckets.
"""

import math
from dataclasses import dataclass, field

from twisted.plugin import IPlugin
from zope.interface import implementer

from txmesh.config_reader import checkFilterKeys
from txmesh.filters.descriptors import PEER_KINDS, CappedMap, buildDescriptor
from txmesh.filters.token_bucket import TokenBucket, buildTokenBucketConfig
from txmesh.interfaces import (FilterStatus, IFilterFactory, IStreamDecoderFilter, IStreamEncoderFilter,
                               IStreamFilterEvents, StreamEvents)

CAUSE = "local_rate_limited"
FLAG = "RL"
DEFAULT_MAX_BUCKETS = 1000
_KEYS = ("token_bucket", "descriptor", "max_buckets", "routes", "path_prefix", "enable_x_ratelimit_headers",
         "status", "stat_prefix")
_LIMIT, _REMAINING, _RESET = b"x-ratelimit-limit", b"x-ratelimit-remaining", b"x-ratelimit-reset"
CONTINUE, STOP = FilterStatus.CONTINUE, FilterStatus.STOP


class _Descriptor:
    """One descriptor value's bucket and counters."""

    __slots__ = ("bucket", "ok", "limited")

    def __init__(self, bucket, ok, limited):
        self.bucket = bucket
        self.ok = ok
        self.limited = limited


class Limiter:
    """
    The buckets of one configured filter, shared by all its streams (Envoy keeps them in the filter config too).
    Counters are made on a value's first request, with the listener name it came on.

    @ivar lastPeer: with a descriptor that the downstream peer alone decides (``source_address``, ``listener``):
        the peer (StreamInfo.downstreamPeer, the connection's one string) of the last request that looked its
        descriptor up, and ``lastDescriptor`` what it found (a _Descriptor, or None: not limited).  The next
        stream of the same connection reuses it without the key's call and lookup (a key's descriptor, once made,
        never changes: the CappedMap only grows).
    """

    def __init__(self, bucketConfig, maxBuckets, statPrefix):
        self.bucketConfig = bucketConfig
        self.statPrefix = statPrefix
        self._descriptors = CappedMap(maxBuckets)
        self.find = self._descriptors.get  # the per-request path: key -> its _Descriptor once made, else None
        self.lastPeer = self.lastDescriptor = None

    def descriptor(self, key, now, stats, listenerName):
        """The _Descriptor of ``key`` (or the shared ``_other`` one past the cap), made full on first use."""
        key, d = self._descriptors.lookup(key)
        if d is not None:
            return d
        labels = (("listener", listenerName), ("limiter", self.statPrefix), ("descriptor", key))
        return self._descriptors.add(key, _Descriptor(
            TokenBucket(self.bucketConfig, now),
            stats.counter("ratelimit_ok", labels, "Requests a local_rate_limit filter let through"),
            stats.counter("ratelimit_rate_limited", labels,
                          "Requests a local_rate_limit filter answered as over the limit")))

    def __len__(self):
        return len(self._descriptors)


@dataclass(frozen=True, slots=True)
class LocalRateLimitConfig:
    descriptorKind: str
    key: object  # (request, callbacks) -> str or None
    routes: frozenset | None
    pathPrefix: bytes | None
    xHeaders: bool
    status: int
    limiter: Limiter = field(compare=False, repr=False)
    byPeer: bool = False  # the descriptor is one the downstream peer alone decides (see Limiter.lastPeer)
    scoped: bool = False  # routes or pathPrefix is set


@implementer(IStreamDecoderFilter, IStreamEncoderFilter, IStreamFilterEvents)
class LocalRateLimitFilter:
    """
    Per stream: takes a token on the request head, or answers it as over the limit.  Made by
    L{LocalRateLimitFactory.createFilters}, which sets its fields (no ``__init__``: see there).
    """

    # the heads only (the response's for x-ratelimit headers); STOP only with a local reply
    streamEvents = StreamEvents.DECODE_HEADERS | StreamEvents.ENCODE_HEADERS | StreamEvents.DECODER_CALLBACKS

    __slots__ = ("config", "runtime", "decoderCallbacks", "_descriptor")

    def setDecoderFilterCallbacks(self, callbacks):
        self.decoderCallbacks = callbacks

    def setEncoderFilterCallbacks(self, callbacks):
        pass

    def decodeHeaders(self, request, endStream):
        config = self.config
        cb = self.decoderCallbacks
        if config.scoped:  # routes or path_prefix
            if config.pathPrefix is not None and not request.path.startswith(config.pathPrefix):
                return CONTINUE
            if config.routes is not None:
                route = cb.route()
                if route is None or route.name not in config.routes:
                    return CONTINUE
        limiter = config.limiter
        if cb.streamInfo.downstreamPeer is limiter.lastPeer:  # (lastPeer stays None unless config.byPeer)
            d = limiter.lastDescriptor  # this connection's previous stream found it
            if d is None:
                return CONTINUE
            now = self.runtime.clock.seconds()
        else:
            key = config.key(request, cb)
            if key is None:
                if config.byPeer:
                    limiter.lastPeer, limiter.lastDescriptor = cb.streamInfo.downstreamPeer, None
                return CONTINUE
            runtime = self.runtime
            now = runtime.clock.seconds()
            d = limiter.find(key)
            if d is None:
                d = limiter.descriptor(key, now, runtime.stats, cb.streamInfo.listenerName)
            if config.byPeer:
                limiter.lastPeer, limiter.lastDescriptor = cb.streamInfo.downstreamPeer, d
        bucket = d.bucket
        if bucket.tokens > 0 and now - bucket.lastFill < bucket.fillInterval:
            bucket.tokens -= 1  # TokenBucket.consume's first branch, inline (once per request): no fill is due
        elif not bucket.consume(now):
            d.limited.value += 1
            headers = self._headers(d, now) if config.xHeaders and request.protocol != "dubbo" else ()
            cb.sendLocalReply(config.status, b"local_rate_limited", headers, CAUSE, FLAG)
            return STOP
        d.ok.value += 1
        if config.xHeaders:
            self._descriptor = d
        return CONTINUE

    def _headers(self, d, now):
        bucket = d.bucket
        return [(_LIMIT, b"%d" % (bucket.maxTokens,)), (_REMAINING, b"%d" % (bucket.remaining(now),)),
                (_RESET, b"%d" % (math.ceil(bucket.secondsToNextFill(now)),))]

    def decodeData(self, data, endStream):
        return CONTINUE

    def decodeTrailers(self, trailers):
        return CONTINUE

    def encodeHeaders(self, response, endStream):
        d = self._descriptor
        if d is not None and self.decoderCallbacks.request.protocol != "dubbo":
            headers = response.headers
            for name, value in self._headers(d, self.runtime.clock.seconds()):
                headers.set(name, value)
        return CONTINUE

    def encodeData(self, data, endStream):
        return CONTINUE

    def encodeTrailers(self, trailers):
        return CONTINUE

    def onStreamComplete(self):
        pass

    def onStreamReset(self, reason):
        pass


@implementer(IFilterFactory, IPlugin)
class LocalRateLimitFactory:
    """The ``local_rate_limit`` stream filter kind; see the module docstring."""

    name = "local_rate_limit"
    kind = "stream"
    protocols = frozenset({"http", "grpc", "dubbo"})
    terminal = False

    def buildConfig(self, raw, context):
        """@raise txmesh.errors.ConfigError: for an unknown key or a bad value, naming it."""
        checkFilterKeys(raw, _KEYS, context)
        bucketConfig = buildTokenBucketConfig(raw, context)
        kind, key = buildDescriptor(raw, context)
        maxBuckets = raw.get("max_buckets", DEFAULT_MAX_BUCKETS)
        if type(maxBuckets) is not int or not 1 <= maxBuckets <= 100000:
            raise context.error("must be an integer between 1 and 100000", "max_buckets")
        routes = raw.get("routes")
        if routes is not None:
            if not isinstance(routes, list) or not routes or not all(isinstance(r, str) and r for r in routes):
                raise context.error("must be a non-empty list of route names", "routes")
            routes = frozenset(routes)
        prefix = raw.get("path_prefix")
        if prefix is not None:
            if not isinstance(prefix, str) or not prefix.startswith("/"):
                raise context.error("must be a path starting with /", "path_prefix")
            prefix = prefix.encode("utf-8")
        xHeaders = raw.get("enable_x_ratelimit_headers", False)
        if not isinstance(xHeaders, bool):
            raise context.error("must be true or false", "enable_x_ratelimit_headers")
        status = raw.get("status", 429)
        if type(status) is not int or not 400 <= status <= 599:
            raise context.error("must be an HTTP status between 400 and 599", "status")
        statPrefix = raw.get("stat_prefix", self.name)
        if not isinstance(statPrefix, str) or not statPrefix:
            raise context.error("must be a non-empty string", "stat_prefix")
        return LocalRateLimitConfig(kind, key, routes, prefix, xHeaders, status,
                                    Limiter(bucketConfig, maxBuckets, statPrefix), byPeer=kind in PEER_KINDS,
                                    scoped=routes is not None or prefix is not None)

    def createFilters(self, config, callbacks, runtime):
        # the filter's fields set here: it has no __init__ (an object made per request costs CPython about half as
        # much without the call to one: docs/performance.md, "Resilience within 10 %"); the chain gives it its
        # decoderCallbacks before any event
        f = LocalRateLimitFilter()
        f.config = config
        f.runtime = runtime
        f._descriptor = None  # set when the request was counted and x-ratelimit headers are on
        if config.xHeaders:
            callbacks.addStreamFilter(f)
        else:
            # without x-ratelimit headers the response is none of its business: not on the encode path at all
            callbacks.addStreamDecoderFilter(f)
