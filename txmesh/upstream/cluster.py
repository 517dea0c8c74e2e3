"""
Clusters: a named set of upstream hosts with a load balancer and a connection pool per host; and the
ClusterManager that builds every configured cluster for a running config.
"""

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from txmesh.interfaces import ICluster, IHost
from txmesh.upstream.health import ClusterHealthChecker
from txmesh.upstream.host import Host, hostScope
from txmesh.upstream.resources import ClusterResources

# Cluster-level series: (name, kind, help).  The pool makes the upstream_cx_* / upstream_rq_pending_* ones on the
# same scope, so these are the same series.
CLUSTER_STATS = (
    ("upstream_rq_total", "counter", "Requests sent (or queued) upstream."),
    ("upstream_rq_pending_overflow", "counter", "Requests failed at once because the pending queue was full."),
    ("upstream_rq_pending_active", "gauge", "Requests waiting for a connection."),
    ("upstream_cx_total", "counter", "Upstream connections opened."),
    ("upstream_cx_active", "gauge", "Open upstream connections."),
    ("upstream_cx_connect_fail", "counter", "Upstream connects that failed (timeouts included)."),
    ("upstream_cx_connect_timeout", "counter", "Upstream connects that timed out."),
    ("upstream_cx_idle_timeout", "counter", "Upstream connections closed as idle too long."),
    ("upstream_cx_destroy", "counter", "Upstream connections closed."),
    ("upstream_cx_none_healthy", "counter", "Host choices that found no healthy host."),
    ("membership_change", "counter", "Host-set changes."),
    ("membership_total", "gauge", "Hosts in the cluster."),
    ("membership_healthy", "gauge", "Healthy hosts in the cluster (as of the last describe or host-set change)."),
)


class ClusterStats:
    """
    The cluster's series, made once; attributes are named as the metrics (``stats.upstream_rq_total.value``).
    ``scope`` (labelled cluster=name) is there for components that add their own series (the router's
    upstream_rq_<status> counters, retries, timeouts).
    """

    def __init__(self, scope):
        self.scope = scope
        for name, kind, help in CLUSTER_STATS:
            make = scope.counter if kind == "counter" else scope.gauge
            setattr(self, name, make(name, help=help))

    def asDict(self):
        return {name: getattr(self, name).value for name, _, _ in CLUSTER_STATS}


@implementer(ICluster)
class Cluster:
    """
    One upstream cluster.

    @param name: the cluster name.
    @param clusterConfig: the ClusterConfig (lbPolicy is shown by describe()).
    @param hosts: the initial IHost objects, or endpoint objects with host, port and weight attributes.
    @param lbFactory: the ILoadBalancerFactory of the cluster's policy.
    @param poolFactory: ``poolFactory(host) -> IConnectionPool``, called once per host on first use.
    @param random: a random.Random for the load balancers.
    @param stats: a txmesh.stats.Scope labelled cluster=name.
    @param healthChecker: the cluster's txmesh.upstream.health.ClusterHealthChecker, or None: it follows the host
        set (and marks new hosts pending their first check).
    """

    log = Logger()

    def __init__(self, name, clusterConfig, hosts, lbFactory, poolFactory, random, stats, healthChecker=None):
        self.name = name
        self.config = clusterConfig
        self._lbFactory = lbFactory
        self._poolFactory = poolFactory
        self._random = random
        self._scope = stats
        self.stats = ClusterStats(stats)
        # the circuit breakers; the limits come from the cluster's config (circuit_breakers) where it has them
        self.resources = ClusterResources(scope=stats)
        self.hosts = ()
        self._byAddress = {}
        self._pools = {}  # address -> pool
        self._draining = set()  # Deferreds of pools of removed hosts still closing
        self._lb = lbFactory.create((), random)
        self.healthChecker = healthChecker
        self._setHosts(hosts)

    def makeHost(self, hostname, port, weight=1, priority=0, locality="", metadata=None):
        """A new Host of this cluster, its counters on the cluster's scope labelled host='ip:port'."""
        address = "%s:%d" % (hostname, int(port))
        return Host(hostname, port, weight, stats=hostScope(self._scope, address), priority=priority,
                    locality=locality, metadata=metadata)

    def updateHosts(self, hosts):
        """
        Replace the host set.  A host whose address is already known keeps its Host object (its counters, load
        and pool), taking the new weight; the load balancer is rebuilt; the pools of removed hosts are drained.

        @param hosts: IHost objects or endpoint objects (host, port, weight).
        """
        self.stats.membership_change.value += 1
        self._setHosts(hosts)

    def _setHosts(self, hosts):
        new = []
        byAddress = {}
        for h in hosts:
            if IHost.providedBy(h):
                address, weight = h.address, h.weight
            else:
                address, weight = "%s:%d" % (h.host, int(h.port)), h.weight
            if address in byAddress:
                continue
            host = self._byAddress.get(address)
            if host is None:
                host = h if IHost.providedBy(h) else self.makeHost(h.host, h.port, weight, h.priority, h.locality,
                                                                    dict(h.metadata))
            else:
                host.weight = max(1, int(weight))
                if not IHost.providedBy(h):
                    host.priority = h.priority
                    host.locality = h.locality
            byAddress[address] = host
            new.append(host)
        removed = [a for a in self._byAddress if a not in byAddress]
        self.hosts = tuple(new)
        self._byAddress = byAddress
        if self.healthChecker is not None:
            self.healthChecker.setHosts(self.hosts)
        self._lb = self._lbFactory.create(self.hosts, self._random)
        self.stats.membership_total.value = len(self.hosts)
        self.stats.membership_healthy.value = sum(1 for h in self.hosts if h.healthy)
        for address in removed:
            pool = self._pools.pop(address, None)
            if pool is not None:
                d = pool.drain()
                self._draining.add(d)
                d.addBoth(self._poolDrained, d)

    def _poolDrained(self, result, d):
        self._draining.discard(d)
        return result

    def chooseHost(self, context=None):
        """The load balancer's choice for one request (a txmesh.upstream.lb.LBContext or None), or None."""
        host = self._lb.chooseHost(context)
        if host is None:
            self.stats.upstream_cx_none_healthy.value += 1
        return host

    def poolFor(self, host):
        """The connection pool of ``host``, made on first use."""
        pool = self._pools.get(host.address)
        if pool is None:
            pool = self._pools[host.address] = self._poolFactory(host)
        return pool

    def drain(self):
        """Drain every pool (config reload, shutdown); fires when all their connections are closed."""
        pools, self._pools = list(self._pools.values()), {}
        ds = [p.drain() for p in pools] + list(self._draining)
        return defer.gatherResults(ds, consumeErrors=True).addCallback(lambda _: None)

    def describe(self):
        """A JSON-able dict for the admin API's /clusters."""
        self.stats.membership_healthy.value = sum(1 for h in self.hosts if h.healthy)
        hosts = [h.describe() if hasattr(h, "describe") else _describeHost(h) for h in self.hosts]
        if self.healthChecker is not None:
            for h, d in zip(self.hosts, hosts):
                d["healthCheck"] = self.healthChecker.describeHost(h)
        return {
            "name": self.name,
            "protocol": self.config.protocol,
            "lbPolicy": self.config.lbPolicy,
            "stats": self.stats.asDict(),
            "hosts": hosts,
        }


def _describeHost(h):
    return {"address": h.address, "weight": h.weight, "healthy": h.healthy, "activeRequests": h.activeRequests,
            "stats": {}}


class ClusterManager:
    """
    Every cluster of a running config.

    @param clock: the IReactorTime given to the pools.
    @param clusterConfigs: ClusterConfig objects.
    @param connectFactory: ``connectFactory(clusterConfig) -> connect(host) -> Deferred[proto]``.
    @param stats: the txmesh.stats.StatsStore; each cluster gets a scope labelled cluster=name.
    @param random: a random.Random shared by the load balancers.

    Each cluster's pools are made by its protocol's descriptor (``clusterConfig.descriptor.buildPool``).  A cluster
    with ``health_checks`` gets a ClusterHealthChecker on ``clock`` (then also an IReactorTCP: checks connect with
    it), started by ``startHealthChecks``.
    """

    def __init__(self, clock, clusterConfigs, connectFactory, stats, random):
        self.clock = clock
        self._clusters = {}
        for config in clusterConfigs:
            lbFactory = config.lbFactory  # config found it among the plugins (txmesh.config)
            if lbFactory is None:
                raise ValueError("cluster %r: unknown lb policy %r" % (config.name, config.lbPolicy))
            buildPool = config.descriptor.buildPool
            scope = stats.scope(cluster=config.name)
            connect = connectFactory(config)

            def poolFactory(host, config=config, connect=connect, scope=scope, buildPool=buildPool):
                return buildPool(clock, host, config, connect, scope)

            healthChecker = None
            if config.healthChecks:
                healthChecker = ClusterHealthChecker(config.healthChecks[0], clock, random, scope)
            self._clusters[config.name] = Cluster(config.name, config, config.endpoints, lbFactory, poolFactory,
                                                  random, scope, healthChecker)

    def get(self, name):
        """The Cluster called ``name``, or None."""
        return self._clusters.get(name)

    def __iter__(self):
        return iter(list(self._clusters.values()))

    def __len__(self):
        return len(self._clusters)

    def __contains__(self, name):
        return name in self._clusters

    def startHealthChecks(self):
        """Start the active health checks of every cluster that has them (the service starts)."""
        for c in self._clusters.values():
            if c.healthChecker is not None:
                c.healthChecker.start()

    def stopHealthChecks(self):
        """Stop every active health check, cancelling checks in flight (drain, shutdown)."""
        for c in self._clusters.values():
            if c.healthChecker is not None:
                c.healthChecker.stop()

    def drain(self):
        """Drain every cluster's pools; fires when all upstream connections are closed."""
        ds = [c.drain() for c in self._clusters.values()]
        return defer.gatherResults(ds, consumeErrors=True).addCallback(lambda _: None)

    def describe(self):
        """[cluster dict], for the admin API's /clusters."""
        return [c.describe() for c in self._clusters.values()]
