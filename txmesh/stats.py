"""
Counters and gauges.

The hot path increments plain attributes (``counter.value += 1`` costs tens of nanoseconds); nothing is
formatted until someone asks.  ``/stats`` renders a JSON snapshot, ``/metrics`` exports the same values through a
prometheus_client collector at scrape time, so the exposition format is prometheus_client's, not ours.

A series is named by a metric name and a tuple of label pairs.  ``Scope`` objects fix a prefix of labels (a
listener, a cluster) so components create their series once, at construction, and keep references; a
L{LabelledCounter} does the same for a label whose values only come at run time (an error cause, a status).

A L{Histogram} is kept the same way: a list of counts per bucket, found by ``bisect`` at each observation, exported
as a histogram family (cumulative buckets, ``_sum``, ``_count``) at scrape time.  That costs about a seventh of
prometheus_client's ``Histogram.observe`` (no lock, no Python loop over the bounds; see docs/metrics.md).

The /stats names are Envoy's style (``downstream_rq``); /metrics renames them by Prometheus' conventions
(``txmesh_downstream_requests_total``) through L{txmesh.metric_names}, whose table docs/metrics.md shows.
"""

from bisect import bisect_left

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString

from txmesh.metric_names import prometheusName

# Request durations of a sidecar: from half a millisecond (a hop on loopback) to 30 s (a slow call or a stream's
# deadline); the bounds are inclusive, as Prometheus' ``le`` says.
DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Counter:
    __slots__ = ("value",)

    def __init__(self):
        self.value = 0

    def inc(self, n=1):
        self.value += n


class Gauge:
    __slots__ = ("value",)

    def __init__(self):
        self.value = 0

    def inc(self, n=1):
        self.value += n

    def dec(self, n=1):
        self.value -= n

    def set(self, v):
        self.value = v


class ComputedGauge:
    """A gauge whose value is ``read()`` when someone looks (a snapshot, a scrape): an age or a staleness, kept
    without a ticking timer."""

    __slots__ = ("read",)

    def __init__(self, read):
        self.read = read

    @property
    def value(self):
        return self.read()


class Histogram:
    """
    Observations counted per bucket: ``counts[i]`` holds those ``<= bounds[i]`` and above ``bounds[i - 1]``, the last
    count those above every bound (+Inf).  ``observe(v)`` is ``counts[bisect_left(bounds, v)] += 1; sum += v``; the hot
    path may inline it.  ``value`` is the number of observations.
    """

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds=DURATION_BUCKETS):
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, v):
        self.counts[bisect_left(self.bounds, v)] += 1
        self.sum += v

    @property
    def value(self):
        return sum(self.counts)

    def cumulative(self):
        """[(upper bound as Prometheus writes it, observations at or below it)], +Inf last."""
        out = []
        n = 0
        for bound, count in zip(self.bounds + (float("inf"),), self.counts):
            n += count
            out.append((floatToGoString(bound), n))
        return out

    def quantile(self, q):
        """The ``q`` quantile (0..1) of the observations (L{quantile}); None without observations."""
        return quantile(self.bounds, self.counts, q)

    def snapshot(self):
        """What /stats shows: the count, the sum, a few quantiles and the cumulative buckets."""
        return {"count": self.value, "sum": self.sum, "p50": self.quantile(0.5), "p90": self.quantile(0.9),
                "p99": self.quantile(0.99), "buckets": self.cumulative()}


def quantile(bounds, counts, q):
    """
    The ``q`` quantile (0..1) of a histogram's ``counts`` per bucket of ``bounds`` (+Inf last), estimated as
    Prometheus' ``histogram_quantile`` does: linear within the bucket the rank falls in (the first bucket from 0),
    the highest finite bound when it falls in +Inf; None without observations.  ``counts`` may be the difference of
    two readings (the observations of a window).
    """
    total = sum(counts)
    if total <= 0:
        return None
    rank = q * total
    seen = 0
    last = len(bounds)
    for i, count in enumerate(counts):
        if count > 0 and seen + count >= rank:
            if i == last:
                return bounds[-1]
            low = bounds[i - 1] if i else 0.0
            return low + (bounds[i] - low) * ((rank - seen) / count)
        seen += count
    return bounds[-1]


class StatsStore:
    """
    All series of one process.  ``maxSeriesPerMetric`` caps label cardinality: past it, new label sets of that
    metric share one overflow series whose labels are all ``"_other"``, so a noisy client cannot blow up memory
    or the scrape.
    """

    def __init__(self, prefix="txmesh", maxSeriesPerMetric=1000):
        self.prefix = prefix
        self.maxSeriesPerMetric = maxSeriesPerMetric
        # name -> (kind, help, {labels: series})
        self._metrics = {}

    def _series(self, kind, cls, name, labels, help):
        entry = self._metrics.get(name)
        if entry is None:
            entry = self._metrics[name] = (kind, help or name, {})
        elif entry[0] != kind:
            raise ValueError("metric %r is a %s, not a %s" % (name, entry[0], kind))
        series = entry[2]
        s = series.get(labels)
        if s is None:
            if len(series) >= self.maxSeriesPerMetric:
                labels = tuple((k, "_other") for k, _ in labels)
                s = series.get(labels)
                if s is not None:
                    return s
            s = series[labels] = cls()
        return s

    def counter(self, name, labels=(), help=""):
        """The Counter for ``name`` and label pairs ``labels`` (a tuple of (str, str)); created once."""
        return self._series("counter", Counter, name, tuple(labels), help)

    def gauge(self, name, labels=(), help=""):
        return self._series("gauge", Gauge, name, tuple(labels), help)

    def histogram(self, name, labels=(), help="", bounds=DURATION_BUCKETS):
        """The L{Histogram} for ``name`` and ``labels``; created once (with ``bounds``, default L{DURATION_BUCKETS})."""
        return self._series("histogram", lambda: Histogram(bounds), name, tuple(labels), help)

    def computedGauge(self, name, read, labels=(), help=""):
        """
        A L{ComputedGauge} for ``name`` and ``labels`` reading ``read()`` at each snapshot or scrape.  Asked again for
        the same series (a cluster made again under its old name), it reads the newest ``read``.
        """
        gauge = self._series("gauge", lambda: ComputedGauge(read), name, tuple(labels), help)
        gauge.read = read
        return gauge

    def scope(self, **labels):
        return Scope(self, tuple(labels.items()))

    def snapshot(self):
        """
        {metric name: [{"labels": {...}, "value": n}, ...]} for /stats; a histogram's value is a dict (count, sum,
        p50, p90, p99, buckets: L{Histogram.snapshot}).
        """
        out = {}
        for name, (kind, _, series) in sorted(self._metrics.items()):
            if kind == "histogram":
                out[name] = [{"labels": dict(labels), "value": s.snapshot()} for labels, s in series.items()]
            else:
                out[name] = [{"labels": dict(labels), "value": s.value} for labels, s in series.items()]
        return out

    def export(self):
        """
        Every series as JSON-able rows ``[name, kind, help, [[label, value], ...], value]`` (a histogram's value is
        ``{"bounds": [...], "counts": [...], "sum": s}``): what a worker sends its parent to merge
        (txmesh.worker_stats).
        """
        rows = []
        for name, (kind, help, series) in sorted(self._metrics.items()):
            for labels, s in series.items():
                value = {"bounds": list(s.bounds), "counts": list(s.counts), "sum": s.sum} \
                    if kind == "histogram" else s.value
                rows.append([name, kind, help, [list(pair) for pair in labels], value])
        return rows

    def series(self, name):
        """[(labels dict, series object)] of ``name`` (its Counters, Gauges or Histograms), for tests and tools."""
        entry = self._metrics.get(name)
        return [] if entry is None else [(dict(labels), s) for labels, s in entry[2].items()]

    def value(self, name, **labels):
        """The current value of one series (0 if it does not exist); for tests and the admin API."""
        entry = self._metrics.get(name)
        if entry is None:
            return 0
        s = entry[2].get(tuple(labels.items()))
        return 0 if s is None else s.value

    def total(self, name, **labels):
        """Sum of every series of ``name`` whose labels include ``labels``."""
        entry = self._metrics.get(name)
        if entry is None:
            return 0
        want = labels.items()
        return sum(s.value for lbl, s in entry[2].items() if want <= dict(lbl).items())

    def collect(self):
        """
        The prometheus_client collector protocol: yield metric families built from the current values, named by
        L{txmesh.metric_names.prometheusName} (counters get ``_total`` from prometheus_client).
        """
        for name, (kind, help, series) in sorted(self._metrics.items()):
            full = "%s_%s" % (self.prefix, prometheusName(name))
            labelNames = None
            for labels in series:
                labelNames = [k for k, _ in labels]
                break
            labelNames = labelNames or []
            if kind == "histogram":
                fam = HistogramMetricFamily(full, help, labels=labelNames)
                for labels, s in series.items():
                    fam.add_metric([v for _, v in labels], s.cumulative(), s.sum)
                yield fam
                continue
            if kind == "counter":
                fam = CounterMetricFamily(full, help, labels=labelNames)
            else:
                fam = GaugeMetricFamily(full, help, labels=labelNames)
            for labels, s in series.items():
                fam.add_metric([v for _, v in labels], s.value)
            yield fam


class Scope:
    """A StatsStore view that prepends fixed labels (e.g. listener="outbound")."""

    def __init__(self, store, labels):
        self.store = store
        self.labels = labels

    def counter(self, name, help="", **labels):
        return self.store.counter(name, self.labels + tuple(labels.items()), help)

    def gauge(self, name, help="", **labels):
        return self.store.gauge(name, self.labels + tuple(labels.items()), help)

    def computedGauge(self, name, read, help="", **labels):
        return self.store.computedGauge(name, read, self.labels + tuple(labels.items()), help)

    def histogram(self, name, help="", **labels):
        return self.store.histogram(name, self.labels + tuple(labels.items()), help)


class LabelledCounter:
    """
    One counter metric split by a label whose values come at run time (an error cause, a status code): the Counter
    for a value is made on first use, in ``scope`` plus ``labelName=label(value)``, and kept, so counting costs
    one dict lookup.  The store's per-metric cap still applies (past it values share the ``_other`` series).

    ``counters[value]`` is the Counter; ``counters.inc(value)`` counts one.

    @param scope: a L{Scope} (its labels come first).
    @param label: turns a value into the label's string (default C{str}); called once per value.
    """

    __slots__ = ("_scope", "_name", "_help", "_labelName", "_label", "_counters")

    def __init__(self, scope, name, help, labelName, label=str):
        self._scope = scope
        self._name = name
        self._help = help
        self._labelName = labelName
        self._label = label
        self._counters = {}

    def __getitem__(self, value):
        c = self._counters.get(value)
        if c is None:
            c = self._counters[value] = self._scope.counter(self._name, help=self._help,
                                                            **{self._labelName: self._label(value)})
        return c

    def inc(self, value, n=1):
        c = self._counters.get(value)
        if c is None:
            c = self[value]
        c.value += n

    def items(self):
        """[(value, Counter)] for every value counted so far (several values may share the ``_other`` Counter)."""
        return list(self._counters.items())
