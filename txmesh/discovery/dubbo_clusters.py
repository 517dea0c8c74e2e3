"""
Dubbo without a cluster per interface (issue 12, part 2): the clusters a ``dubbo_registry`` route makes on demand.

The first call for an (interface, group, version) adds a cluster named ``dubbo:{registry}:{interface}:{group}:
{version}`` to the ClusterManager, copied from the route's template (lb policy, timeouts, outlier detection, circuit
breakers, health checks), fed by a ZooKeeper source (txmesh.discovery.zookeeper) on the registry's shared session
that reports to the cluster's ClusterDiscovery (txmesh.discovery.base), as a configured cluster's does: the same
last known set, staleness, counters and ``discovery`` object in ``/clusters``.
That call, and any other for the same service meanwhile, waits for the first providers list, at most
``initial_fetch_timeout``; then the cluster serves from what it has (none: the router answers Dubbo's
SERVICE_NOT_FOUND, as for any cluster without a healthy host).  Later calls find the cluster at once.

Bounded: at most ``max_clusters`` per registry (past it a new service's call is refused, SERVICE_NOT_FOUND, and
counted); a cluster no call used for ``idle_timeout`` (checked every half of it, so removed between 1 and 1.5 times
it after its last call) and with no request in flight is removed: its source stops watching, its pools drain.
"""

import dataclasses
import re

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from txmesh import errors
from txmesh.discovery.base import FAILING
from txmesh.discovery.zookeeper import ZooKeeperDiscoveryFactory, ZooKeeperSourceConfig
from txmesh.discovery_config import DiscoveryConfig
from txmesh.interfaces import IHostSetSink, IRegistryClusters

# a Dubbo interface as it may appear in a ZooKeeper path: a Java class name (letters, digits, _ $ - and dots)
_INTERFACE = re.compile(r"[A-Za-z_$][\w$-]*(\.[A-Za-z_$][\w$-]*)*\Z", re.ASCII)

# what makes each on-demand cluster's source: the zookeeper discovery type's own factory (a stateless plugin object)
_ZOOKEEPER = ZooKeeperDiscoveryFactory()


class _OnDemandCluster:
    """
    One cluster made for one service: its ClusterDiscovery (the sink its ZooKeeper source reports to, made by the
    ClusterManager as for a configured cluster: last known set, staleness, counters, ``/clusters``) and the calls
    waiting for its first providers list.
    """

    def __init__(self, name, cluster, discovery):
        self.name = name
        self.cluster = cluster
        self.discovery = discovery
        self.ready = False
        self.stopped = False
        self.waiters = []
        self.used = True  # a call came since the last idle check
        self.idleChecks = 0

    def start(self, session, stats):
        """Start the source; once the first set came or initial_fetch_timeout passed, answer the waiting calls."""

        def warm(_):
            if self.stopped:
                return
            if self.discovery.lastUpdate is None:  # warm without a set: initial_fetch_timeout passed
                stats.initialFetchTimeouts.value += 1
            self.ready = True
            waiters, self.waiters = self.waiters, []
            for d in waiters:
                d.callback(self.cluster)

        self.discovery.start(session).addCallback(warm)

    def wait(self):
        d = defer.Deferred(lambda d: self.waiters.remove(d) if d in self.waiters else None)
        self.waiters.append(d)
        return d

    def stop(self):
        """The service stops: the source stops, the waiting calls are cancelled.  @return: a Deferred."""
        self.stopped = True
        waiters, self.waiters = self.waiters, []
        for d in waiters:
            d.cancel()
        return self.discovery.stop()

    def describe(self):
        d = self.discovery
        return {"cluster": self.name, "ready": self.ready, "hosts": len(self.cluster.hosts), "version": d.version,
                "last_update": d.lastUpdate, "failing": d.state == FAILING,
                "source": d.source.describe() if d.source is not None else None}


@implementer(IHostSetSink)
class _RegistryCounts:
    """Told of every report of a registry's on-demand clusters (after the cluster handled it): the registry's counts."""

    def __init__(self, stats):
        self.stats = stats

    def hostsUpdated(self, endpoints, version):
        self.stats.updates.value += 1

    def sourceFailed(self, reason):
        self.stats.sourceFailures.value += 1


class _Stats:
    def __init__(self, scope):
        self.active = scope.gauge("dubbo_registry_clusters", help="Clusters made on demand by dubbo_registry routes.")
        self.created = scope.counter("dubbo_registry_clusters_created", help="On-demand clusters made.")
        self.removed = scope.counter("dubbo_registry_clusters_removed", help="On-demand clusters removed as idle.")
        self.overflow = scope.counter(
            "dubbo_registry_clusters_overflow", help="Calls refused because max_clusters on-demand clusters exist.")
        self.initialFetchTimeouts = scope.counter(
            "dubbo_registry_initial_fetch_timeouts",
            help="On-demand clusters that had no providers list within initial_fetch_timeout.")
        self.updates = scope.counter("dubbo_registry_updates", help="Host sets applied to on-demand clusters.")
        self.sourceFailures = scope.counter(
            "dubbo_registry_source_failures",
            help="Registry failures reported to on-demand clusters (their last known hosts kept).")


class _RegistryClusters:
    """The on-demand clusters of one registry (every dubbo_registry route naming it agrees on the settings)."""

    log = Logger()

    def __init__(self, owner, action):
        self.owner = owner
        self.clock = owner.clock
        self.registry = action.registry
        self.action = action  # the settings: template, bounds, protocol, configurators
        self.stats = _Stats(owner.stats.scope(registry=action.registry))
        self.counts = _RegistryCounts(self.stats)
        self.entries = {}  # (interface, group, version) -> _OnDemandCluster
        self.sweeper = None

    def make(self, service):
        action = self.action
        interface, group, version = service
        if len(interface) > 512 or _INTERFACE.match(interface) is None:
            raise errors.NoClusterFound("the call names no usable interface (%r)" % (interface[:100],))
        if len(self.entries) >= action.maxClusters:
            self.stats.overflow.value += 1
            raise errors.NoClusterFound("max_clusters (%d) on-demand clusters of registry %r exist" % (
                action.maxClusters, self.registry))
        registries = self.owner.registries
        if registries is None:
            raise errors.NoClusterFound("no registry clients on this runtime")
        session = registries.get(self.registry)
        name = "dubbo:%s:%s:%s:%s" % (self.registry, interface, group, version)
        discovery = DiscoveryConfig(
            type=_ZOOKEEPER.name, factory=_ZOOKEEPER, registry=self.registry,
            sourceConfig=ZooKeeperSourceConfig(interface, group, version, action.protocol, action.configurators,
                                               session.config.root),
            keepLastKnown=True, initialFetchTimeout=action.initialFetchTimeout)
        try:
            cluster = self.owner.clusters.addCluster(
                dataclasses.replace(action.template, name=name, endpoints=(), discovery=discovery), self.counts)
        except KeyError:
            raise errors.NoClusterFound("a configured cluster is named %r" % (name,)) from None
        entry = self.entries[service] = _OnDemandCluster(name, cluster, self.owner.clusters.discovery(name))
        self.stats.created.value += 1
        self.stats.active.value = len(self.entries)
        entry.start(session, self.stats)
        if self.sweeper is None:
            self.sweeper = self.clock.callLater(action.idleTimeout / 2, self.sweep)
        return entry

    def sweep(self):
        """Remove the clusters idle for two checks in a row with nothing in flight."""
        self.sweeper = None
        for service, entry in list(self.entries.items()):
            if entry.used or entry.waiters or entry.cluster.resources.requests.count:
                entry.used = False
                entry.idleChecks = 0
                continue
            entry.idleChecks += 1
            if entry.idleChecks >= 2:
                self.remove(service)
        if self.entries:
            self.sweeper = self.clock.callLater(self.action.idleTimeout / 2, self.sweep)

    def remove(self, service):
        entry = self.entries.pop(service)
        entry.stopped = True
        self.stats.removed.value += 1
        self.stats.active.value = len(self.entries)
        self.owner.clusters.removeCluster(entry.name).addErrback(  # stops its source, drains its pools
            lambda f: self.log.failure("draining {name} failed", f, name=entry.name))

    def stop(self):
        if self.sweeper is not None:
            self.sweeper.cancel()
            self.sweeper = None
        for entry in self.entries.values():
            entry.stop().addErrback(lambda f, name=entry.name: self.log.failure(
                "stopping the source of {name}", f, name=name))


@implementer(IRegistryClusters)
class RegistryClusters:
    """
    Every dubbo_registry route's on-demand clusters (see the module docstring), one set per registry.

    @param clock: the IReactorTime of the initial-fetch and idle timers.
    @param clusters: the ClusterManager (``addCluster``, ``removeCluster``).
    @param registries: the running registry clients (txmesh.discovery.registries.RegistryClients: ``get(name)``).
    @param stats: the StatsStore; the counters are labelled registry=name.
    """

    def __init__(self, clock, clusters, registries, stats):
        self.clock = clock
        self.clusters = clusters
        self.registries = registries
        self.stats = stats
        self._sets = {}

    def _set(self, action):
        s = self._sets.get(action.registry)
        if s is None:
            s = self._sets[action.registry] = _RegistryClusters(self, action)
        return s

    def clusterFor(self, action, request):
        s = self._sets.get(action.registry)
        if s is None:
            return None
        entry = s.entries.get(action.service(request))
        if entry is None or not entry.ready:
            return None
        entry.used = True
        return entry.cluster

    def waitForCluster(self, action, request):
        s = self._set(action)
        service = action.service(request)
        entry = s.entries.get(service)
        if entry is None:
            try:
                entry = s.make(service)
            except errors.NoClusterFound as e:
                return defer.fail(e)
        entry.used = True
        if entry.ready:
            return defer.succeed(entry.cluster)
        return entry.wait()

    def describe(self):
        return {registry: [e.describe() for e in s.entries.values()] for registry, s in self._sets.items()}

    def stop(self):
        for s in self._sets.values():
            s.stop()
