"""
Clusters: a named set of upstream hosts with a load balancer and a connection pool per host; and the
ClusterManager that builds every configured cluster for a running config.
"""

import dataclasses
import types

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from txmesh.discovery.base import ClusterDiscovery
from txmesh.interfaces import ICluster, IHost
from txmesh.tls.client import UpstreamTLS
from txmesh.upstream.health import ClusterHealthChecker
from txmesh.upstream.host import HealthFlag, Host, hostScope
from txmesh.upstream.lb import LBContext, LoadBalancerOptions
from txmesh.upstream.outlier import OutlierDetector
from txmesh.upstream.resources import ClusterResources

# Cluster-level series: (name, kind, help).  The pool makes the upstream_cx_* / upstream_rq_pending_* ones on the
# same scope, so these are the same series.
CLUSTER_STATS = (
    ("upstream_rq_total", "counter", "Requests sent (or queued) upstream."),
    ("upstream_rq_pending_overflow", "counter", "Requests failed at once because the pending queue was full."),
    ("upstream_rq_pending_active", "gauge", "Requests waiting for a connection."),
    ("upstream_cx_total", "counter", "Upstream connections opened."),
    ("upstream_cx_overflow", "counter",
     "Connects not made because the cluster's circuit_breakers.max_connections was reached."),
    ("upstream_cx_active", "gauge", "Open upstream connections."),
    ("upstream_cx_connect_fail", "counter", "Upstream connects that failed (timeouts included)."),
    ("upstream_cx_connect_timeout", "counter", "Upstream connects that timed out."),
    ("upstream_cx_idle_timeout", "counter", "Upstream connections closed as idle too long."),
    ("upstream_cx_destroy", "counter", "Upstream connections closed."),
    ("upstream_cx_none_healthy", "counter", "Host choices that found no healthy host."),
    ("membership_change", "counter", "Host-set changes."),
    ("membership_total", "gauge", "Hosts in the cluster."),
    ("membership_healthy", "gauge", "Healthy hosts in the cluster."),
    ("lb_healthy_panic", "counter", "Host choices made in panic mode (balanced over all hosts of a priority level, "
                                    "healthy or not)."),
)

# Envoy's defaults (common_lb_config.healthy_panic_threshold, the ClusterLoadAssignment overprovisioning_factor)
DEFAULT_PANIC_THRESHOLD = 50.0
DEFAULT_OVERPROVISIONING_FACTOR = 140
_IGNORE_HEALTH = LBContext(ignoreHealth=True)


def priorityLoads(levels, overprovisioningFactor, panicThreshold):
    """
    Envoy's priority load and panic state (``LoadBalancerBase::recalculatePerPriorityState``).

    @param levels: [(hosts, healthy)] counts per priority level, highest priority first.
    @return: ([load percent per level], [panic per level]); the loads add up to 100.

    A level's health is min(100, overprovisioningFactor x healthy / hosts) (integer percent); loads go to the
    levels in order, each taking its health scaled by the total health when that is under 100.  Panic applies
    only when the total health is under 100: then a level whose healthy share is under the threshold balances
    over all its hosts, and when every level is in panic the load follows the host counts.
    """
    n = len(levels)
    health = [min(100, overprovisioningFactor * healthy // hosts) if hosts else 0 for hosts, healthy in levels]
    total = min(100, sum(health))
    loads = [0] * n
    if total == 0 and panicThreshold == 0:
        loads[0] = 100  # everything is down and panic is off: P0 gets the load and finds no host
        return loads, [False] * n
    if total:
        left = 100
        first = None
        for i, h in enumerate(health):
            if first is None and h > 0:
                first = i
            loads[i] = min(left, h * 100 // total)
            left -= loads[i]
        loads[first] += left  # the rounding
    if total == 100:
        return loads, [False] * n
    panic = [100.0 * healthy / hosts < panicThreshold if hosts else True for hosts, healthy in levels]
    if all(panic):
        allHosts = sum(hosts for hosts, _ in levels)
        if allHosts:
            loads = [100 * hosts // allHosts for hosts, _ in levels]
            loads[next(i for i, (hosts, _) in enumerate(levels) if hosts)] += 100 - sum(loads)
        else:
            loads = [100] + [0] * (n - 1)
    return loads, panic


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
    @param outlierDetector: the cluster's IOutlierDetector, or None without outlier detection.

    Hosts are grouped by priority, one balancer per level; the level of each pick follows Envoy's priority load
    and panic rules (priorityLoads), recomputed when a host's health or the host set changes.  With one level not
    in panic, a pick costs what the level's balancer costs.

    @param clock: the IReactorTime of the balancers (slow start, latency estimates), or None.
    @param resources: the cluster's ClusterResources (circuit breakers) its pools share; default: built from
        ``clusterConfig.circuitBreakers``.
    @param healthChecker: the cluster's txmesh.upstream.health.ClusterHealthChecker, or None: it follows the host
        set (and marks new hosts pending their first check).
    """

    log = Logger()

    def __init__(self, name, clusterConfig, hosts, lbFactory, poolFactory, random, stats, outlierDetector=None,
                 clock=None, resources=None, healthChecker=None):
        self.name = name
        self.config = clusterConfig
        self._lbFactory = lbFactory
        self._poolFactory = poolFactory
        self._random = random
        self._scope = stats
        self.stats = ClusterStats(stats)
        # the circuit breakers: the limits come from the cluster's config (circuit_breakers), Envoy's defaults else
        if resources is None:
            resources = ClusterResources.fromConfig(clusterConfig.circuitBreakers, stats)
        self.resources = resources
        self.hosts = ()
        self._byAddress = {}
        self._pools = {}  # address -> pool
        self._draining = set()  # Deferreds of pools of removed hosts still closing
        self.tunnels = None  # ITunnelConnectors: the tunnels' own connections (set by the ClusterManager), or None
        self.outlierDetector = outlierDetector
        common = clusterConfig.commonLbConfig
        self._panicThreshold = common.healthyPanicThreshold if common is not None else DEFAULT_PANIC_THRESHOLD
        self._overprovisioning = (common.overprovisioningFactor if common is not None
                                  else DEFAULT_OVERPROVISIONING_FACTOR)
        self._levels = ()  # ((priority, hosts, balancer), ...), highest priority first
        self._loads = ()  # (load percent, panic) per level, as of the last health change
        self._lb = None  # the one balancer when one level takes all the load without panic, else None
        self._table = ()  # ((cumulative load, balancer, panic), ...) for the levels with load
        self._started = False
        # one options object for every balancer of the cluster: state in it outlives host-set changes
        self._lbOptions = LoadBalancerOptions(clock, clusterConfig.lbConfig, stats)
        self.healthChecker = healthChecker
        self._setHosts(hosts)
        self._started = True  # hosts added from now on ramp up (slow start)

    def makeHost(self, hostname, port, weight=1, priority=0, locality="", metadata=None):
        """A new Host of this cluster, its counters on the cluster's scope labelled host='ip:port'."""
        address = "%s:%d" % (hostname, int(port))
        return Host(hostname, port, weight, stats=hostScope(self._scope, address), priority=priority,
                    locality=locality, metadata=metadata)

    def updateHosts(self, hosts):
        """
        Replace the host set.  A host whose address is already known keeps its Host object (its counters, load
        and pool), taking the new weight; the load balancer is rebuilt; the pools of removed hosts are drained.

        @param hosts: IHost objects or endpoint objects (txmesh.config.EndpointConfig: host, port, weight,
            priority, locality, metadata, healthy).
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
                if self._started and self._lbOptions.clock is not None:
                    host.addedAt = self._lbOptions.clock.seconds()
            else:
                host.weight = max(1, int(weight))
                if not IHost.providedBy(h):
                    host.priority = h.priority
                    host.locality = h.locality
                    if h.metadata or host.metadata:  # discovery may change a kept host's metadata
                        host.metadata = types.MappingProxyType(dict(h.metadata))
            if not IHost.providedBy(h):  # the source's word on health (EDS health_status): FAILED_EDS_HEALTH
                if h.healthy:
                    host.clearHealthFlag(HealthFlag.FAILED_EDS_HEALTH)
                else:
                    host.setHealthFlag(HealthFlag.FAILED_EDS_HEALTH)
            byAddress[address] = host
            new.append(host)
        removed = [a for a in self._byAddress if a not in byAddress]
        added = [h for h in new if h.address not in self._byAddress]
        removedHosts = [self._byAddress[a] for a in removed]
        self.hosts = tuple(new)
        self._byAddress = byAddress
        for host in removedHosts:
            host.removeHealthWatcher(self._hostHealthChanged)
        for host in added:
            host.addHealthWatcher(self._hostHealthChanged)
        if self.outlierDetector is not None:
            self.outlierDetector.hostsChanged(added, removedHosts)
        byPriority = {}
        for host in self.hosts:
            byPriority.setdefault(host.priority, []).append(host)
        self._levels = tuple((p, tuple(byPriority[p]), self._makeBalancer(byPriority[p]))
                             for p in sorted(byPriority)) or ((0, (), self._makeBalancer(())),)
        if self.healthChecker is not None:
            self.healthChecker.setHosts(self.hosts)  # new hosts pending their first check (flags after levels)
        self.stats.membership_total.value = len(self.hosts)
        self._recomputeLoads()
        for address in removed:
            pool = self._pools.pop(address, None)
            if pool is not None:
                d = pool.drain(serveQueued=True)  # requests already queued there are still served
                self._draining.add(d)
                d.addBoth(self._poolDrained, d)

    def reconfigure(self, clusterConfig, poolFactory, resources, healthChecker, outlierDetector, keepPools):
        """
        Take a changed config in place (a reload, issue 13 part 1): requests in flight keep their pools and
        connections, new ones are balanced by the new config at once.

        @param poolFactory: makes the pools of hosts without one from now on.
        @param resources: the circuit breakers new pools take from (the running ones when ``keepPools``).
        @param healthChecker: the cluster's checker from now on (the running one when its config is unchanged);
            a replaced one stops, and without a checker the hosts lose its flags.
        @param outlierDetector: likewise for outlier detection; a replaced one stops and lifts its ejections.
        @param keepPools: keep the pools of the hosts that remain (nothing a pool is built from changed); else every
            pool drains, serving what it has queued, and new ones are made on first use.

        Hosts follow ``clusterConfig.endpoints``, unless the cluster is discovered: then they stay until its source
        reports.  A kept address keeps its Host (counters, health, load), as with L{updateHosts}.
        """
        self.config = clusterConfig
        self._lbFactory = clusterConfig.lbFactory
        self._poolFactory = poolFactory
        self.resources = resources
        if not keepPools:
            pools, self._pools = list(self._pools.values()), {}
            for pool in pools:
                d = pool.drain(serveQueued=True)
                self._draining.add(d)
                d.addBoth(self._poolDrained, d)
        if outlierDetector is not self.outlierDetector:
            if self.outlierDetector is not None:
                self.outlierDetector.stop()
                self.outlierDetector.hostsChanged((), self.hosts)
            if outlierDetector is not None:
                outlierDetector.hostsChanged(self.hosts, ())
            self.outlierDetector = outlierDetector
        if healthChecker is not self.healthChecker:
            if self.healthChecker is not None:
                self.healthChecker.stop()
                self.healthChecker.setHosts(())
                for host in self.hosts:
                    host.clearHealthFlag(HealthFlag.FAILED_ACTIVE_HC | HealthFlag.PENDING_ACTIVE_HC)
            self.healthChecker = healthChecker  # _setHosts gives it the hosts
        common = clusterConfig.commonLbConfig
        self._panicThreshold = common.healthyPanicThreshold if common is not None else DEFAULT_PANIC_THRESHOLD
        self._overprovisioning = (common.overprovisioningFactor if common is not None
                                  else DEFAULT_OVERPROVISIONING_FACTOR)
        if self._lbOptions.config != clusterConfig.lbConfig:
            self._lbOptions = LoadBalancerOptions(self._lbOptions.clock, clusterConfig.lbConfig, self._scope)
        self._setHosts(clusterConfig.endpoints if clusterConfig.discovery is None else self.hosts)

    def _makeBalancer(self, hosts):
        """The ILoadBalancer of one priority level (every balancer of the cluster is made here)."""
        return self._lbFactory.create(tuple(hosts), self._random, self._lbOptions)

    def _hostHealthChanged(self, host):
        self._recomputeLoads()

    def _recomputeLoads(self):
        """Priority loads and panic from the hosts' health: on host-set and health changes, never per pick."""
        levels = self._levels
        counts = [(len(hosts), sum(1 for h in hosts if h.healthy)) for _, hosts, _ in levels]
        self.stats.membership_healthy.value = sum(healthy for _, healthy in counts)
        loads, panic = priorityLoads(counts, self._overprovisioning, self._panicThreshold)
        self._loads = tuple(zip(loads, panic))
        if len(levels) == 1 and not panic[0]:
            self._lb = levels[0][2]
            self._table = ()
            return
        self._lb = None
        table = []
        cumulative = 0
        for (_, _, balancer), load, inPanic in zip(levels, loads, panic):
            if load:
                cumulative += load
                table.append((cumulative, balancer, inPanic))
        self._table = tuple(table)

    def _poolDrained(self, result, d):
        self._draining.discard(d)
        return result

    def chooseHost(self, context=None):
        """The load balancer's choice for one request (a txmesh.upstream.lb.LBContext or None), or None."""
        lb = self._lb
        host = lb.chooseHost(context) if lb is not None else self._chooseByPriority(context)
        if host is None:
            self.stats.upstream_cx_none_healthy.value += 1
        return host

    def _chooseByPriority(self, context):
        table = self._table
        if len(table) == 1:
            _, balancer, panic = table[0]
        else:
            x = self._random.random() * 100
            for bound, balancer, panic in table:
                if x < bound:
                    break
        if panic:
            self.stats.lb_healthy_panic.value += 1
            context = _IGNORE_HEALTH if context is None else dataclasses.replace(context, ignoreHealth=True)
        return balancer.chooseHost(context)

    def poolFor(self, host):
        """The connection pool of ``host``, made on first use."""
        pool = self._pools.get(host.address)
        if pool is None:
            pool = self._pools[host.address] = self._poolFactory(host)
        return pool

    def drain(self):
        """Drain every pool (config reload, shutdown); fires when all their connections are closed."""
        if self.outlierDetector is not None:
            self.outlierDetector.stop()
        pools, self._pools = list(self._pools.values()), {}
        ds = [p.drain() for p in pools] + list(self._draining)
        return defer.gatherResults(ds, consumeErrors=True).addCallback(lambda _: None)

    def describe(self):
        """A JSON-able dict for the admin API's /clusters."""
        self.stats.membership_healthy.value = sum(1 for h in self.hosts if h.healthy)
        hosts = [h.describe() if hasattr(h, "describe") else _describeHost(h) for h in self.hosts]
        if self.outlierDetector is not None:
            for h, d in zip(self.hosts, hosts):
                d["outlier"] = self.outlierDetector.describeHost(h)
        if self.healthChecker is not None:
            for h, d in zip(self.hosts, hosts):
                d["health_check"] = self.healthChecker.describeHost(h)
        return {
            "name": self.name,
            "protocol": self.config.protocol,
            "lb_policy": self.config.lbPolicy,
            "stats": self.stats.asDict(),
            "circuit_breakers": self.resources.describe(),
            "priorities": [{"priority": p, "hosts": len(hs), "healthy": sum(1 for h in hs if h.healthy),
                            "load": load, "panic": panic}
                           for (p, hs, _), (load, panic) in zip(self._levels, self._loads)],
            "hosts": hosts,
        }


def _describeHost(h):
    return {"address": h.address, "weight": h.weight, "healthy": h.healthy, "active_requests": h.activeRequests,
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

    A cluster with ``discovery`` gets a txmesh.discovery.base.ClusterDiscovery (its host-set sink), whose source
    ``startDiscovery`` makes and starts, with the running client of the registry it names from ``registries`` (a
    txmesh.discovery.registries.RegistryClients).
    """

    def __init__(self, clock, clusterConfigs, connectFactory, stats, random, registries=None, tunnelFactory=None):
        self.clock = clock
        self._connectFactory = connectFactory
        # tunnelFactory(connect, scope) -> ITunnelConnectors (txmesh.protocols.tunnel), made by the service
        self._tunnelFactory = tunnelFactory
        self._stats = stats
        self._random = random
        self._healthChecking = False
        self._discovering = False
        self._clusters = {}
        self._discoveries = {}  # cluster name -> ClusterDiscovery
        self._registries = registries
        for config in clusterConfigs:
            cluster = self._clusters[config.name] = self._build(config)
            if config.discovery is not None:
                self._discoveries[config.name] = ClusterDiscovery(cluster, config.discovery, clock,
                                                                  stats.scope(cluster=config.name))

    def _build(self, config):
        lbFactory = config.lbFactory  # config found it among the plugins (txmesh.config)
        if lbFactory is None:
            raise ValueError("cluster %r: unknown lb policy %r" % (config.name, config.lbPolicy))
        scope = self._stats.scope(cluster=config.name)
        # every pool of the cluster takes its connections and pending requests from these (circuit_breakers)
        resources = ClusterResources.fromConfig(config.circuitBreakers, scope)
        cluster = Cluster(config.name, config, config.endpoints, lbFactory, self._poolFactory(config, scope, resources),
                          self._random, scope, outlierDetector=self._outlierDetector(config, scope), clock=self.clock,
                          resources=resources, healthChecker=self._healthChecker(config, scope))
        cluster.tunnels = self._tunnels(config, scope)
        return cluster

    def _tunnels(self, config, scope):
        """The ITunnelConnectors of a cluster: tunnels connect like its pools (its TLS too), on connections of their own."""
        if self._tunnelFactory is None:
            return None
        return self._tunnelFactory(self._connectFactory(config), scope)

    def _poolFactory(self, config, scope, resources):
        """``poolFactory(host) -> IConnectionPool`` of the cluster ``config`` describes."""
        clock, buildPool, connect = self.clock, config.descriptor.buildPool, self._connectFactory(config)

        def poolFactory(host):
            return buildPool(clock, host, config, connect, scope, resources)

        return poolFactory

    def _healthChecker(self, config, scope):
        if not config.healthChecks:
            return None
        # a TLS cluster's checks connect over its TLS (issue 14): a context of their own, on the same counters
        upstreamTLS = UpstreamTLS(config.tls, scope, self.clock) if config.tls is not None else None
        return ClusterHealthChecker(config.healthChecks[0], self.clock, self._random, scope, upstreamTLS)

    def _outlierDetector(self, config, scope):
        if config.outlierDetection is None:
            return None
        return OutlierDetector(config.outlierDetection, self.clock, self._random, scope)

    def addCluster(self, config, observer=None):
        """
        Build and add a cluster at run time (a Dubbo registry route's per-interface cluster, issue 12 part 2); its
        health checks start if the others have.  A config with ``discovery`` gets its ClusterDiscovery
        (``discovery(name)``, shown in ``describe``), which the caller starts; ``observer`` (an IHostSetSink or
        None) is told of its source's reports.  @return: the Cluster.  @raise KeyError: the name is taken.
        """
        if config.name in self._clusters:
            raise KeyError(config.name)
        cluster = self._clusters[config.name] = self._build(config)
        if config.discovery is not None:
            self._discoveries[config.name] = ClusterDiscovery(cluster, config.discovery, self.clock,
                                                              self._stats.scope(cluster=config.name), observer)
        if self._healthChecking and cluster.healthChecker is not None:
            cluster.healthChecker.start()
        return cluster

    def updateCluster(self, config, keepPools):
        """
        Apply a changed config to the running cluster of its name (a reload: L{Cluster.reconfigure}): its health
        checker, outlier detector and discovery source are kept when their configs are unchanged, else replaced
        (a new source starts if discovery runs, and the cluster keeps its hosts until it reports).
        """
        cluster = self._clusters[config.name]
        old = cluster.config
        scope = self._stats.scope(cluster=config.name)
        resources = cluster.resources if keepPools else ClusterResources.fromConfig(config.circuitBreakers, scope)
        healthChecker = cluster.healthChecker
        if config.healthChecks != old.healthChecks:
            healthChecker = self._healthChecker(config, scope)
        detector = cluster.outlierDetector
        if config.outlierDetection != old.outlierDetection:
            detector = self._outlierDetector(config, scope)
        cluster.reconfigure(config, self._poolFactory(config, scope, resources), resources, healthChecker, detector,
                            keepPools)
        cluster.tunnels = self._tunnels(config, scope)
        if self._healthChecking and healthChecker is not None and not healthChecker.running:
            healthChecker.start()
        if config.discovery != old.discovery:
            self._stopDiscoveryOf(config.name)
            if config.discovery is not None:
                discovery = self._discoveries[config.name] = ClusterDiscovery(cluster, config.discovery, self.clock,
                                                                              scope)
                if self._discovering:
                    self._startDiscoveryOf(discovery)
        return cluster

    def startClusterDiscovery(self, name):
        """Start the discovery source of a cluster added at run time, if discovery runs.  @return: a Deferred."""
        discovery = self._discoveries.get(name)
        if discovery is None or not self._discovering:
            return defer.succeed(None)
        return self._startDiscoveryOf(discovery)

    def _startDiscoveryOf(self, discovery):
        name = discovery.config.registry
        registry = self._registries.get(name) if name is not None and self._registries is not None else None
        return discovery.start(registry)

    def _stopDiscoveryOf(self, name):
        discovery = self._discoveries.pop(name, None)
        if discovery is not None:
            discovery.stop().addErrback(lambda f: discovery.log.failure(
                "cluster {cluster}: stopping its discovery source", f, cluster=name))

    def removeCluster(self, name):
        """
        Remove a cluster added at run time: its discovery source and health checks stop, its pools drain.
        @return: a Deferred.
        """
        cluster = self._clusters.pop(name)
        self._stopDiscoveryOf(name)
        if cluster.healthChecker is not None:
            cluster.healthChecker.stop()
        return cluster.drain()

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
        self._healthChecking = True
        for c in self._clusters.values():
            if c.healthChecker is not None:
                c.healthChecker.start()

    def stopHealthChecks(self):
        """Stop every active health check, cancelling checks in flight (drain, shutdown)."""
        self._healthChecking = False
        for c in self._clusters.values():
            if c.healthChecker is not None:
                c.healthChecker.stop()

    def discovery(self, name):
        """The ClusterDiscovery of cluster ``name``, or None (fixed endpoints, or no such cluster)."""
        return self._discoveries.get(name)

    def startDiscovery(self):
        """
        Start every cluster's discovery source.  @return: a Deferred fired once each discovered cluster has its first
        host set or its ``initial_fetch_timeout`` passed (Envoy's cluster warming); at once without discovery.
        """
        self._discovering = True
        ds = [self._startDiscoveryOf(d) for d in self._discoveries.values()]
        return defer.gatherResults(ds, consumeErrors=True).addCallback(lambda _: None)

    def stopDiscovery(self):
        """Stop every discovery source (drain, shutdown): host sets stay as they are.  @return: a Deferred."""
        self._discovering = False
        ds = [d.stop() for d in self._discoveries.values()]
        return defer.gatherResults(ds, consumeErrors=True).addCallback(lambda _: None)

    def drain(self):
        """Drain every cluster's pools; fires when all upstream connections are closed."""
        ds = [c.drain() for c in self._clusters.values()]
        return defer.gatherResults(ds, consumeErrors=True).addCallback(lambda _: None)

    def describe(self):
        """[cluster dict], for the admin API's /clusters (with ``discovery`` for discovered clusters)."""
        out = []
        for c in self._clusters.values():
            d = c.describe()
            discovery = self._discoveries.get(c.name)
            if discovery is not None:
                d["discovery"] = discovery.describe()
            out.append(d)
        return out
