"""
What the live status page shows (issue 16 part 5): ``/status.json``, polled every second by the page at the admin
root (``txmesh/status_page/``, served by txmesh/admin.py).

Listeners and the server's state come from the IMeshControl, clusters and hosts with their health from the cluster
manager, and per cluster the requests per second, the failure rate and the latency percentiles from the request
metrics' histograms (L{txmesh.interfaces.IRequestStats.clusterTotals}).  Rates and percentiles are over a sliding
window (10 s by default): each call keeps a reading of the totals (at most one per ``minInterval``), and the figures
are the difference between now and the oldest reading inside the window, so several browsers polling share the
readings and an idle page costs nothing.  Until a second reading exists the rates are null.
"""

import collections

from zope.interface import implementer

from txmesh.interfaces import IStatusView
from txmesh.stats import quantile

QUANTILES = (("p50", 0.5), ("p90", 0.9), ("p99", 0.99))

# host fields the page shows (the rest of /clusters' host dict stays there)
_HOST_FIELDS = ("address", "healthy", "health_flags", "weight", "priority", "active_requests")


def _hostView(host):
    return {k: host[k] for k in _HOST_FIELDS if k in host}


@implementer(IStatusView)
class StatusView:
    """
    L{IStatusView} over the running mesh's parts, each optional (a missing one shows as empty).

    @param clock: an IReactorTime: the readings' times.
    @param clusterManager: has ``describe() -> [cluster dict]`` (txmesh.upstream.cluster.ClusterManager), or None.
    @param requestStats: an L{txmesh.interfaces.IRequestStats}, or None.
    @param control: an L{txmesh.interfaces.IMeshControl} (server info, listeners), or None.
    @param window: seconds the rates and percentiles are computed over.
    @param minInterval: readings closer than this to the last kept one are not kept.
    """

    def __init__(self, clock, clusterManager=None, requestStats=None, control=None, window=10.0, minInterval=0.5):
        self._clock = clock
        self._clusterManager = clusterManager
        self._requestStats = requestStats
        self._control = control
        self._window = window
        self._minInterval = minInterval
        self._readings = collections.deque()  # (time, {cluster: ClusterTotals}), oldest first

    def _remember(self, now, totals):
        """Keep this reading (spaced by minInterval); forget those the window no longer needs; return the base."""
        readings = self._readings
        while readings and readings[0][0] < now - self._window:
            readings.popleft()
        base = readings[0] if readings and readings[0][0] < now else None
        if not readings or now - readings[-1][0] >= self._minInterval:
            readings.append((now, totals))
        return base

    def status(self):
        now = self._clock.seconds()
        totals = self._requestStats.clusterTotals() if self._requestStats is not None else {}
        base = self._remember(now, totals)
        elapsed = now - base[0] if base is not None else None
        described = self._clusterManager.describe() if self._clusterManager is not None else []
        clusters = []
        for c in described:
            hosts = [_hostView(h) for h in c.get("hosts", ())]
            row = {"name": c["name"], "protocol": c.get("protocol"), "lb_policy": c.get("lb_policy"),
                   "hosts": hosts, "healthy_hosts": sum(1 for h in hosts if h.get("healthy")),
                   "total_hosts": len(hosts)}
            row.update(self._figures(c["name"], totals, base, elapsed))
            clusters.append(row)
        out = {
            "time": now,
            "window_seconds": round(elapsed, 3) if elapsed is not None else None,
            "server": self._control.serverInfo() if self._control is not None else {},
            "listeners": self._control.describeListeners() if self._control is not None else [],
            "clusters": clusters,
        }
        if "" in totals:
            # streams no cluster took (no route, a local reply, a direct response)
            out["no_cluster"] = self._figures("", totals, base, elapsed)
        return out

    def _figures(self, name, totals, base, elapsed):
        now = totals.get(name)
        if now is None:
            return {"requests_total": 0, "failures_total": 0, "requests_per_second": 0.0 if elapsed else None,
                    "failure_rate": None, "latency_seconds": {k: None for k, _ in QUANTILES}}
        figures = {"requests_total": now.requests, "failures_total": now.failures, "requests_per_second": None,
                   "failure_rate": None, "latency_seconds": {k: None for k, _ in QUANTILES}}
        if not elapsed:
            return figures
        then = base[1].get(name)
        requests, failures, counts = now.requests, now.failures, now.counts
        if then is not None:
            requests -= then.requests
            failures -= then.failures
            counts = [a - b for a, b in zip(counts, then.counts)]
        figures["requests_per_second"] = round(requests / elapsed, 3)
        if requests > 0:
            figures["failure_rate"] = round(failures / requests, 4)
            figures["latency_seconds"] = {k: quantile(now.bounds, counts, q) for k, q in QUANTILES}
        return figures
