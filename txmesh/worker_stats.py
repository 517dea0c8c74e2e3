"""
The workers' counters as one (issue 10 part 4; docs/operations.md "Workers"): the parent merges the rows each
worker exports (L{txmesh.stats.StatsStore.export}) into one StatsStore that ``/stats`` and ``/metrics`` show.

- counters and histograms are summed (histograms bucket by bucket, when the bounds agree);
- gauges are summed too (connections and requests active, hosts ejected: the sidecar's total), except those whose
  sum would lie (L{PER_WORKER_GAUGES}: a version, an age, a certificate's expiry, a memory figure, a balancer's
  table size): those keep one series per process, with a ``worker`` label (``parent`` for the parent's own).

A worker that ended leaves its last counters and histograms behind (L{Retired}), so a restart never makes a sum go
down; what it counted after the parent's last look at it is lost.
"""

import copy

from txmesh.stats import StatsStore

# gauges whose sum over the workers means nothing: one series per worker (exact names, then prefixes)
PER_WORKER_GAUGES = frozenset({
    "config_version", "discovery_staleness_seconds", "tls_certificate_expiry_seconds",
    "upstream_tls_certificate_expiry_seconds", "error_rate_breaker_state", "overload_memory_pressure",
    "overload_memory_rss_bytes", "registration_published", "dubbo_registry_clusters",
})
PER_WORKER_PREFIXES = ("circuit_breakers_remaining_", "maglev_lb_", "ring_hash_lb_", "zookeeper_providers")


def perWorker(name, kind):
    """Whether the series ``name`` of ``kind`` is shown per worker rather than summed."""
    return kind == "gauge" and (name in PER_WORKER_GAUGES or name.startswith(PER_WORKER_PREFIXES))


def addRows(store, rows, worker=None):
    """
    Add exported ``rows`` into ``store`` (a StatsStore).  @param worker: the ``worker`` label of the per-worker
    gauges (None: such gauges are left out, as for a retired worker).
    """
    for name, kind, help, labels, value in rows:
        labels = tuple((str(k), str(v)) for k, v in labels)
        if kind == "counter":
            store.counter(name, labels, help).value += value
        elif kind == "gauge":
            if perWorker(name, kind):
                if worker is None:
                    continue
                labels += (("worker", str(worker)),)
            store.gauge(name, labels, help).value += value
        elif kind == "histogram":
            bounds = tuple(value["bounds"])
            h = store.histogram(name, labels, help, bounds)
            if h.bounds != bounds or len(value["counts"]) != len(h.counts):
                continue  # another bucket layout (not made by this txmesh): not mergeable
            for i, n in enumerate(value["counts"]):
                h.counts[i] += n
            h.sum += value["sum"]


def mergeStats(parts, maxSeriesPerMetric=1000):
    """
    One StatsStore from ``parts``: ``[(worker label or None, rows)]`` (the parent's own rows, the retired workers',
    each live worker's).
    """
    store = StatsStore(maxSeriesPerMetric=maxSeriesPerMetric)
    for worker, rows in parts:
        addRows(store, rows, worker)
    return store


class Retired:
    """The counters and histograms of the workers that ended (their last export), kept for the sums."""

    def __init__(self):
        self.store = StatsStore()

    def add(self, rows):
        addRows(self.store, [row for row in rows if row[1] != "gauge"])

    def rows(self):
        return self.store.export()


class MergedStats:
    """
    What the parent's ``/stats`` and ``/metrics`` read (``snapshot()``, ``collect()``, ``total()``): the merge made
    by the last ``update(parts)``, which the admin API calls before each request.
    """

    def __init__(self, own):
        self.own = own  # the parent's StatsStore
        self.store = mergeStats([("parent", own.export())])

    def update(self, parts):
        self.store = mergeStats([("parent", self.own.export())] + list(parts))

    def snapshot(self):
        return self.store.snapshot()

    def collect(self):
        return self.store.collect()

    def total(self, name, **labels):
        return self.store.total(name, **labels)

    def value(self, name, **labels):
        return self.store.value(name, **labels)


def _sumInto(into, other):
    """Add ``other``'s numbers into ``into`` (dicts of counters, nested one level at most); other values kept."""
    for key, value in other.items():
        mine = into.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or isinstance(mine, bool):
            if isinstance(value, dict) and isinstance(mine, dict):
                _sumInto(mine, value)
            continue
        if isinstance(mine, (int, float)):
            into[key] = mine + value


def mergeClusters(described):
    """
    ``/clusters`` of the workers as one: ``described`` is [each worker's cluster list].  The first worker's view is
    the frame; each cluster's and each host's counters (``stats``, ``active_requests``) are summed over the workers,
    and a host is ``healthy`` only where every worker finds it healthy (each worker checks and ejects on its own).
    """
    if not described:
        return []
    merged = copy.deepcopy(described[0])
    byName = {c["name"]: c for c in merged}
    for clusters in described[1:]:
        for cluster in clusters:
            mine = byName.get(cluster.get("name"))
            if mine is None:
                continue
            _sumInto(mine.get("stats", {}), cluster.get("stats", {}))
            hosts = {h.get("address"): h for h in mine.get("hosts", [])}
            for host in cluster.get("hosts", []):
                h = hosts.get(host.get("address"))
                if h is None:
                    continue
                h["healthy"] = bool(h.get("healthy")) and bool(host.get("healthy"))
                if isinstance(h.get("active_requests"), (int, float)):
                    h["active_requests"] += host.get("active_requests") or 0
                _sumInto(h.get("stats", {}), host.get("stats", {}))
    for cluster in merged:
        cluster["workers"] = len(described)
    return merged
