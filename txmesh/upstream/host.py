"""
Upstream hosts: one endpoint of a cluster, with its health, load and per-host counters.

A ``Host`` is shared by the cluster's load balancer (which reads ``healthy``, ``weight`` and ``activeRequests``)
and the host's connection pool (which keeps ``activeRequests`` and the connection counters up to date), so the
same object must survive host-set updates: ``Cluster.updateHosts`` keeps the existing ``Host`` of an address.
"""

import enum
import types

from zope.interface import implementer

from txmesh.interfaces import IHost, IHostMonitor, IHostMonitorEvents
from txmesh.stats import Scope, StatsStore

# The per-host counters: the short name (used in HostStats attributes and the admin API) and the help text.  The
# series are named ``upstream_host_<short name>`` so they never share a metric name with the cluster's series.
HOST_COUNTERS = (
    ("cx_total", "Connections opened to the host."),
    ("cx_connect_fail", "Connection attempts to the host that failed or timed out."),
    ("rq_total", "Requests sent (or queued) to the host."),
    ("rq_error", "Requests to the host that ended in an upstream error (reset, bad response, timeout)."),
)


class HostStats:
    """The per-host counters, created once on a Scope labelled with the cluster and the host address."""

    __slots__ = tuple(name for name, _ in HOST_COUNTERS)

    def __init__(self, scope):
        for name, help in HOST_COUNTERS:
            setattr(self, name, scope.counter("upstream_host_" + name, help=help))

    def asDict(self):
        """{short name: value}, for the admin API."""
        return {name: getattr(self, name).value for name, _ in HOST_COUNTERS}


class HealthFlag(enum.IntFlag):
    """Why a host is not healthy (Envoy's Host::HealthFlag); a host with no flag set is healthy."""

    FAILED_ACTIVE_HC = 0x01  # failed its active health check (or has not passed one yet, when so configured)
    FAILED_OUTLIER_CHECK = 0x02  # ejected by outlier detection
    FAILED_EDS_HEALTH = 0x04  # its discovery source says it is unhealthy (or disabled)
    PENDING_ACTIVE_HC = 0x08  # new, waiting for its first active health check
    DEGRADED_ACTIVE_HC = 0x10  # reserved: degraded (Envoy's x-envoy-degraded); not used for balancing yet


@implementer(IHostMonitor, IHostMonitorEvents)
class NullHostMonitor:
    """The monitor of a cluster without outlier detection or latency-aware balancing: it does nothing."""

    __slots__ = ()
    readsResponseTimes = False

    def putResult(self, outcome):
        pass

    def putResponseTime(self, seconds):
        pass


NULL_MONITOR = NullHostMonitor()


def readsResponseTimes(monitor):
    """Whether the IHostMonitor ``monitor`` reads putResponseTime (yes unless its IHostMonitorEvents say not)."""
    return not IHostMonitorEvents.providedBy(monitor) or bool(monitor.readsResponseTimes)


@implementer(IHostMonitor)
class FanOutHostMonitor:
    """Tells several monitors (e.g. outlier detection and a latency-aware balancer) about each attempt."""

    __slots__ = ("monitors",)

    def __init__(self, monitors):
        self.monitors = tuple(monitors)

    def putResult(self, outcome):
        for m in self.monitors:
            m.putResult(outcome)

    def putResponseTime(self, seconds):
        for m in self.monitors:
            m.putResponseTime(seconds)
_NO_METADATA = types.MappingProxyType({})


@implementer(IHost)
class Host:
    """
    One upstream endpoint.

    @param hostname: the IP (or name) to connect to.
    @param port: the TCP port.
    @param weight: the load-balancing weight (>= 1).
    @param stats: a txmesh.stats.Scope for this host's series (labelled cluster= and host=); without one the
        counters live in a private store (handy in tests and for throwaway hosts).
    """

    def __init__(self, hostname, port, weight=1, stats=None, healthy=True, priority=0, locality="",
                 metadata=None):
        self.hostname = hostname
        self.port = int(port)
        self.weight = max(1, int(weight))
        self.address = "%s:%d" % (hostname, self.port)
        self.healthFlags = 0 if healthy else HealthFlag.FAILED_EDS_HEALTH
        self.healthy = healthy  # == not healthFlags, kept as a plain attribute: the balancers read it per pick
        self.priority = priority
        self.locality = locality
        self.metadata = types.MappingProxyType(dict(metadata)) if metadata else _NO_METADATA
        self.monitor = NULL_MONITOR
        self.timesResponses = False  # whether a monitor reads response times (see addMonitor)
        self.addedAt = None  # when the host joined a running cluster (its clock's seconds), for slow start
        self.tlsPeer = None  # a TLS cluster's: the UpstreamPeer of the host's latest verified handshake (issue 14)
        self.activeRequests = 0
        self._healthWatchers = []
        if stats is None:
            stats = StatsStore().scope(host=self.address)
        self.stats = HostStats(stats)

    def setHealthFlag(self, flag):
        self._setFlags(self.healthFlags | flag)

    def clearHealthFlag(self, flag):
        self._setFlags(self.healthFlags & ~flag)

    def _setFlags(self, flags):
        was = self.healthy
        self.healthFlags = flags
        self.healthy = not flags
        if self.healthy != was:
            for watcher in list(self._healthWatchers):
                watcher(self)

    def addMonitor(self, monitor):
        """Have ``monitor`` (an IHostMonitor) told about every attempt too; the host's ``monitor`` fans out."""
        current = self.monitor
        if current is NULL_MONITOR:
            self.monitor = monitor
        elif isinstance(current, FanOutHostMonitor):
            self.monitor = FanOutHostMonitor(current.monitors + (monitor,))
        else:
            self.monitor = FanOutHostMonitor((current, monitor))
        self.timesResponses = self.timesResponses or readsResponseTimes(monitor)

    def removeMonitor(self, monitor):
        """Stop telling ``monitor``."""
        current = self.monitor
        if current is monitor:
            self.monitor = NULL_MONITOR
        elif isinstance(current, FanOutHostMonitor):
            rest = tuple(m for m in current.monitors if m is not monitor)
            self.monitor = rest[0] if len(rest) == 1 else FanOutHostMonitor(rest) if rest else NULL_MONITOR
        else:
            return
        current = self.monitor
        self.timesResponses = (any(readsResponseTimes(m) for m in current.monitors)
                               if isinstance(current, FanOutHostMonitor) else readsResponseTimes(current))

    def addHealthWatcher(self, watcher):
        """Call ``watcher(host)`` whenever ``healthy`` changes (the cluster recomputes its healthy share)."""
        self._healthWatchers.append(watcher)

    def removeHealthWatcher(self, watcher):
        if watcher in self._healthWatchers:
            self._healthWatchers.remove(watcher)

    def __repr__(self):
        return "<Host %s weight=%d%s>" % (self.address, self.weight, "" if self.healthy else " unhealthy")

    def describe(self):
        """A JSON-able dict of the host, for the admin API's /clusters."""
        return {
            "address": self.address,
            "weight": self.weight,
            "healthy": self.healthy,
            "health_flags": [f.name.lower() for f in HealthFlag if self.healthFlags & f],
            "priority": self.priority,
            "active_requests": self.activeRequests,
            "stats": self.stats.asDict(),
        }


def hostScope(clusterScope, address):
    """A Scope for one host's series: the cluster scope's labels plus host=address."""
    return Scope(clusterScope.store, clusterScope.labels + (("host", address),))
