"""
Request metrics per listener, route and cluster (issue 16 part 1): what users alert on.

Every stream, whatever its protocol, is counted once when it ends (L{RequestStats.streamEnded}, called by the
stream filter chain) from its L{txmesh.interfaces.IStreamInfo}:

- three duration histograms (L{txmesh.stats.DURATION_BUCKETS}, 0.5 ms to 30 s): the downstream total
  (``request_duration_seconds``: request head decoded to stream end), the upstream time
  (``upstream_request_duration_seconds``: the last attempt's request sent to its response ended) and the time to
  the first upstream byte (``upstream_first_byte_seconds``: request sent to response head), the upstream ones only
  for streams that reached an upstream;
- request and response body bytes, as counters (a rate is what a dashboard draws; a size histogram would cost
  another observation per stream for a figure few alert on);
- responses by status: the HTTP status class (``code_class``: 1xx..5xx, ``none`` for a stream reset before any
  response) on HTTP/1.1, HTTP/2 and gRPC listeners, the grpc-status sent on gRPC listeners (``grpc_status``: the
  number, ``none`` when the client went away first) and the Dubbo status on Dubbo listeners (``dubbo_status``: the
  status byte, ``none`` for a one-way call or a reset).

Labels: ``listener``, ``route`` (the route's name, "" when unnamed or unrouted) and ``cluster`` ("" when no cluster
took the stream: no route, a local reply, a direct response).  The series of one listener/route/cluster are made
once, on its first stream, and kept in a dict; past ``maxSeries`` combinations (the store's cap) new ones share an
``_other`` set, as the store's own cap does.  The cost per stream is a dict lookup, three ``bisect`` calls into
preallocated counts and a few additions (docs/performance.md has the instruction counts).
"""

from bisect import bisect_left

import attrs
from zope.interface import implementer

from txmesh.interfaces import IRequestStats
from txmesh.stats import DURATION_BUCKETS, LabelledCounter
from txmesh.upstream.outcome import DUBBO_SUCCESS_STATUSES, GRPC_FAILURE_CODES, HTTP_FAILURE_MIN

# what a listener's streams are counted by: the HTTP status class (also on gRPC listeners), gRPC and Dubbo statuses
_HTTP, _GRPC, _DUBBO = 0, 1, 2
_KINDS = {"http/1.1": _HTTP, "http/1.0": _HTTP, "h2": _HTTP, "grpc": _GRPC, "dubbo": _DUBBO}
_OTHER = ("_other", "_other", "_other")
_NONE = "none"


def _classLabel(index):
    return "%dxx" % (index,) if index else _NONE


def _statusLabel(value):
    """A grpc-status field's bytes or a Dubbo status byte as a label; ``none`` when there was none."""
    if value is None:
        return _NONE
    if isinstance(value, bytes):
        return value.decode("ascii", "replace") or _NONE
    return str(value)


@attrs.frozen
class ClusterTotals:
    """
    One cluster's streams since start (L{RequestStats.clusterTotals}): ``requests`` ended, ``failures`` among them
    (HTTP: 5xx or reset before a response; gRPC: the grpc-statuses txmesh.upstream.outcome counts as failures;
    Dubbo: a status other than OK, BAD_REQUEST or CLIENT_ERROR), ``counts`` of the downstream duration histogram
    (per bucket of ``bounds``, +Inf last) and its ``sum`` in seconds.
    """

    requests: int
    failures: int
    counts: tuple
    sum: float
    bounds: tuple = DURATION_BUCKETS


class _Series:
    """The series of one listener/route/cluster."""

    __slots__ = ("kind", "duration", "upstream", "firstByte", "received", "sent", "classes", "grpc", "dubbo",
                 "_scope")

    def __init__(self, store, key, kind):
        listener, route, cluster = key
        scope = self._scope = store.scope(listener=listener, route=route, cluster=cluster)
        self.kind = kind
        self.duration = scope.histogram(
            "request_duration_seconds",
            help="Streams by their duration: request head decoded to the stream's end (whole response sent or reset)")
        self.upstream = scope.histogram(
            "upstream_request_duration_seconds",
            help="Upstream time: the (last) attempt's request sent to its response's end")
        self.firstByte = scope.histogram(
            "upstream_first_byte_seconds",
            help="Time to the first upstream byte: the (last) attempt's request sent to its response head")
        self.received = scope.counter("request_body_bytes", help="Request body bytes received from downstream")
        self.sent = scope.counter("response_body_bytes", help="Response body bytes sent downstream")
        # classes[status // 100] (1..5), classes[0] for no response: made on first use
        self.classes = [None] * 6
        self.grpc = self.dubbo = None
        if kind == _GRPC:
            self.grpc = LabelledCounter(scope, "grpc_responses", "gRPC responses by the grpc-status sent",
                                        "grpc_status", _statusLabel)
        elif kind == _DUBBO:
            self.dubbo = LabelledCounter(scope, "dubbo_status_responses", "Dubbo responses by status",
                                         "dubbo_status", _statusLabel)

    def codeClass(self, index):
        c = self.classes[index] = self._scope.counter("responses", help="Responses by HTTP status class",
                                                      code_class=_classLabel(index))
        return c

    def failures(self):
        """Streams counted as failures (see L{ClusterTotals})."""
        if self.kind == _HTTP:
            return sum(c.value for i, c in enumerate(self.classes) if c is not None and (i == 0 or i == 5))
        if self.kind == _GRPC:
            return sum(c.value for code, c in self.grpc.items()
                       if code is not None and code.isdigit() and int(code) in GRPC_FAILURE_CODES)
        return sum(c.value for status, c in self.dubbo.items()
                   if status is not None and status not in DUBBO_SUCCESS_STATUSES)


@implementer(IRequestStats)
class RequestStats:
    """
    L{IRequestStats} on a L{txmesh.stats.StatsStore}: see the module docstring.

    @param maxSeries: the listener/route/cluster combinations kept apart (default: the store's per-metric cap).
    """

    def __init__(self, store, maxSeries=None):
        self._store = store
        self._maxSeries = maxSeries if maxSeries is not None else store.maxSeriesPerMetric
        self._series = {}

    def _make(self, key, protocol):
        if len(self._series) >= self._maxSeries:
            key = _OTHER
            s = self._series.get(key)
            if s is not None:
                return s
        labels = tuple("" if v is None else v for v in key)
        s = self._series[key] = _Series(self._store, labels, _KINDS.get(protocol, _HTTP))
        return s

    def streamEnded(self, info):
        key = (info.listenerName, info.routeName, info.clusterName)
        s = self._series.get(key)
        if s is None:
            s = self._make(key, info.protocol)
        # the histograms' observe, inlined: this runs for every stream
        d = info.endTime - info.startTime
        if d < 0:  # the wall clock stepped back
            d = 0.0
        h = s.duration
        h.counts[bisect_left(DURATION_BUCKETS, d)] += 1
        h.sum += d
        sent = info.upstreamStartTime
        if sent is not None:
            t = info.upstreamFirstByteTime
            if t is not None and t >= sent:
                d = t - sent
                h = s.firstByte
                h.counts[bisect_left(DURATION_BUCKETS, d)] += 1
                h.sum += d
            t = info.upstreamEndTime
            if t is not None and t >= sent:
                d = t - sent
                h = s.upstream
                h.counts[bisect_left(DURATION_BUCKETS, d)] += 1
                h.sum += d
        s.received.value += info.bytesReceived
        s.sent.value += info.bytesSent
        code = info.responseCode
        kind = s.kind
        if kind == _DUBBO:
            s.dubbo.inc(code)
            return
        index = (code // 100 if code < 600 else 5) if code is not None else 0
        c = s.classes[index]
        if c is None:
            c = s.codeClass(index)
        c.value += 1
        if kind == _GRPC:
            s.grpc.inc(info.grpcStatus)

    def clusterTotals(self):
        out = {}
        for (_, _, cluster), s in self._series.items():
            cluster = cluster or ""
            h = s.duration
            requests, failures, counts, total = h.value, s.failures(), h.counts, h.sum
            seen = out.get(cluster)
            if seen is not None:
                requests += seen.requests
                failures += seen.failures
                counts = [a + b for a, b in zip(seen.counts, counts)]
                total += seen.sum
            out[cluster] = ClusterTotals(requests, failures, tuple(counts), total)
        return out
