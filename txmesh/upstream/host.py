"""
Upstream hosts: one endpoint of a cluster, with its health, load and per-host counters.

A ``Host`` is shared by the cluster's load balancer (which reads ``healthy``, ``weight`` and ``activeRequests``)
and the host's connection pool (which keeps ``activeRequests`` and the connection counters up to date), so the
same object must survive host-set updates: ``Cluster.updateHosts`` keeps the existing ``Host`` of an address.
"""

from zope.interface import implementer

from txmesh.interfaces import IHost
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

    def __init__(self, hostname, port, weight=1, stats=None, healthy=True):
        self.hostname = hostname
        self.port = int(port)
        self.weight = max(1, int(weight))
        self.address = "%s:%d" % (hostname, self.port)
        self.healthy = healthy
        self.activeRequests = 0
        if stats is None:
            stats = StatsStore().scope(host=self.address)
        self.stats = HostStats(stats)

    def __repr__(self):
        return "<Host %s weight=%d%s>" % (self.address, self.weight, "" if self.healthy else " unhealthy")

    def describe(self):
        """A JSON-able dict of the host, for the admin API's /clusters."""
        return {
            "address": self.address,
            "weight": self.weight,
            "healthy": self.healthy,
            "activeRequests": self.activeRequests,
            "stats": self.stats.asDict(),
        }


def hostScope(clusterScope, address):
    """A Scope for one host's series: the cluster scope's labels plus host=address."""
    return Scope(clusterScope.store, clusterScope.labels + (("host", address),))
