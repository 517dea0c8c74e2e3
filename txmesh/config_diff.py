"""
What changed between the running configuration and a new one (issue 13 part 1): the plan a reload applies.

Both sides are validated, frozen L{txmesh.config.MeshConfig} trees, compared part by part with the dataclasses'
own equality (``compare=False`` fields, such as a protocol's descriptor, play no part).  Each listener and cluster
is matched by name:

- a listener is *unchanged*, changed in its *routes* (only what its filter-chain template is made of: the stream
  filters, the route table, path normalisation: new streams take the new template, connections stay), changed in
  its *connections* (protocol, limits, HTTP/2 settings, forwarding, network filters: a new protocol factory for new
  connections on the same port, the old connections drain), moved to another *address* (the new address is bound
  first, then the old one drains), *added* or *removed*;
- a cluster is unchanged, changed (its pools are kept when every setting a pool is built from is unchanged,
  L{POOL_FIELDS}), added or removed.

A few parts cannot change while txmesh runs (L{FIXED_KEYS}: the admin address, the node, plugin paths, overload
bounds, registries and the registration): a new config that changes one is refused whole, with a
``file: key: reason`` L{txmesh.errors.ConfigError} that says to restart.
"""

import dataclasses
from dataclasses import dataclass

from txmesh.errors import ConfigError
from txmesh.interfaces import IFilterConfigResources

# ListenerConfig fields a listener's FilterChainTemplate is built from: a change in these alone keeps the
# listener's protocol factory and its connections (their next streams take the new template)
TEMPLATE_FIELDS = frozenset({"filters", "routeConfig", "defaultCluster", "respectExpectedTimeout",
                             "pathNormalization"})
# every other compared field but these is read by the protocol factory or its connections
_LISTENER_KEYS = frozenset({"name", "address"})

# ClusterConfig fields a connection pool is built from (or its circuit breakers): a change in any of them gives the
# cluster new pools and drains the old ones; changes elsewhere (balancer, hosts, health checks, outlier detection,
# discovery) keep the pools of the hosts that remain
POOL_FIELDS = frozenset({"protocol", "connectTimeout", "idleTimeout", "maxConnections", "maxPendingRequests",
                         "maxRequestsPerConnection", "connectionsPerHost", "maxConcurrentStreams",
                         "heartbeatInterval", "circuitBreakers"})

# top-level mesh.yaml keys a reload cannot change (the running objects are made once, at start)
FIXED_KEYS = ("admin", "node", "plugin_paths", "overload", "registries", "registration", "hot_restart", "tracing",
              "dynamic_resources", "workers")

UNCHANGED, ROUTES, CONNECTIONS, ADDRESS = "unchanged", "routes", "connections", "address"


@dataclass(frozen=True)
class ListenerChange:
    """One listener in both configs: ``kind`` is ROUTES, CONNECTIONS or ADDRESS (the widest change wins)."""

    old: object
    new: object
    kind: str


@dataclass(frozen=True)
class ClusterChange:
    """One cluster in both configs, changed; ``keepPools``: no setting of L{POOL_FIELDS} changed."""

    old: object
    new: object
    keepPools: bool


@dataclass(frozen=True)
class ConfigDiff:
    """The plan of one reload.  Tuples of ListenerConfig / ClusterConfig, of changes, and of unchanged names."""

    listenersAdded: tuple = ()
    listenersRemoved: tuple = ()
    listenersChanged: tuple = ()
    listenersUnchanged: tuple = ()
    clustersAdded: tuple = ()
    clustersRemoved: tuple = ()
    clustersChanged: tuple = ()
    clustersUnchanged: tuple = ()
    drainTimeoutChanged: bool = False

    @property
    def empty(self):
        """Nothing to apply: the new config runs as the old one does."""
        return not (self.listenersAdded or self.listenersRemoved or self.listenersChanged or self.clustersAdded
                    or self.clustersRemoved or self.clustersChanged or self.drainTimeoutChanged)

    def describe(self):
        """A JSON-able summary: {"listeners": {kind: [names]}, "clusters": {kind: [names]}}."""
        listeners = {"added": [lc.name for lc in self.listenersAdded],
                     "removed": [lc.name for lc in self.listenersRemoved]}
        for kind in (ROUTES, CONNECTIONS, ADDRESS):
            listeners[kind] = [c.new.name for c in self.listenersChanged if c.kind == kind]
        listeners["unchanged"] = list(self.listenersUnchanged)
        return {
            "listeners": listeners,
            "clusters": {"added": [c.name for c in self.clustersAdded],
                         "removed": [c.name for c in self.clustersRemoved],
                         "changed": [c.new.name for c in self.clustersChanged if c.keepPools],
                         "changed_new_pools": [c.new.name for c in self.clustersChanged if not c.keepPools],
                         "unchanged": list(self.clustersUnchanged)},
        }


def checkFixed(old, new):
    """
    @raise ConfigError: ``new`` changes a part that only a restart changes (L{FIXED_KEYS}), naming its key.
    """
    for key in FIXED_KEYS:
        if old.raw.get(key) != new.raw.get(key):
            raise ConfigError("cannot change while txmesh runs (reload rejected; restart txmesh to change it)", key,
                              new.filename)
    if new.workers > 1:
        # the workers took their ports as kernel-balanced or handed over at start (txmesh/workers_balance.py)
        before = {lc.name: lc.connectionBalance for lc in old.listeners}
        for i, lc in enumerate(new.listeners):
            if before.get(lc.name, lc.connectionBalance) != lc.connectionBalance:
                raise ConfigError("cannot change while txmesh runs with workers (reload rejected; restart txmesh to "
                                  "change it)", "listeners[%d].connection_balance" % (i,), new.filename)
    if new.registration is not None:
        # the registration publishes its listener's port: that listener cannot move while it is published
        name = new.registration.listener
        before = {lc.name: lc.address for lc in old.listeners}
        for i, lc in enumerate(new.listeners):
            if lc.name == name and before.get(name) != lc.address:
                raise ConfigError("the listener 'registration' publishes cannot move while txmesh runs (reload "
                                  "rejected; restart txmesh to change it)", "listeners[%d].address" % (i,),
                                  new.filename)


def sameEntry(old, new):
    """
    Whether two filter entries (txmesh.config.FilterEntry) do the same: equal configs, or, for configs that hold
    resources (an open access-log file: each load opens its own, so they never compare equal), the same factory
    built from the same raw ``config`` mapping.
    """
    if old.name != new.name or old.factory is not new.factory:
        return False
    if old.config == new.config:
        return True
    return (IFilterConfigResources.providedBy(old.config) and IFilterConfigResources.providedBy(new.config)
            and old.raw is not None and old.raw == new.raw)


def adoptEntries(old, new):
    """
    ``new`` (a ListenerConfig) with each filter entry that does what one of ``old``'s does replaced by ``old``'s
    (L{sameEntry}): the running filter configs, and the files they hold open, carry over.
    """
    def adopt(oldEntries, newEntries):
        out = []
        for entry in newEntries:
            out.append(next((o for o in oldEntries if sameEntry(o, entry)), entry))
        return tuple(out)

    filters = adopt(old.filters, new.filters)
    networkFilters = adopt(old.networkFilters, new.networkFilters)
    if all(a is b for a, b in zip(filters + networkFilters, new.filters + new.networkFilters)):
        return new
    return dataclasses.replace(new, filters=filters, networkFilters=networkFilters)


def listenerChange(old, new):
    """UNCHANGED, ROUTES, CONNECTIONS or ADDRESS for two configs of one listener."""
    if old.address != new.address:
        return ADDRESS
    if old == new and old.descriptor is new.descriptor:
        return UNCHANGED
    for f in dataclasses.fields(old):
        if not f.compare or f.name in _LISTENER_KEYS or f.name in TEMPLATE_FIELDS:
            continue
        if getattr(old, f.name) != getattr(new, f.name):
            return CONNECTIONS
    if old.descriptor is not new.descriptor:
        return CONNECTIONS
    return ROUTES


def keepsPools(old, new):
    """Whether ``new`` (a ClusterConfig) builds its pools as ``old`` did (L{POOL_FIELDS})."""
    return old.descriptor is new.descriptor and all(
        getattr(old, name) == getattr(new, name) for name in POOL_FIELDS)


def diffConfigs(old, new):
    """
    The L{ConfigDiff} from ``old`` to ``new`` (MeshConfig trees; ``new``'s listeners should have gone through
    L{adoptEntries} first).  @raise ConfigError: ``new`` changes a part only a restart changes (L{checkFixed}).
    """
    checkFixed(old, new)
    oldListeners = {lc.name: lc for lc in old.listeners}
    newNames = {lc.name for lc in new.listeners}
    added, changed, unchanged = [], [], []
    for lc in new.listeners:
        previous = oldListeners.get(lc.name)
        if previous is None:
            added.append(lc)
            continue
        kind = listenerChange(previous, lc)
        if kind == UNCHANGED:
            unchanged.append(lc.name)
        else:
            changed.append(ListenerChange(previous, lc, kind))
    removed = [lc for lc in old.listeners if lc.name not in newNames]

    oldClusters = {c.name: c for c in old.clusters}
    newClusters = {c.name for c in new.clusters}
    cAdded, cChanged, cUnchanged = [], [], []
    for c in new.clusters:
        previous = oldClusters.get(c.name)
        if previous is None:
            cAdded.append(c)
        elif previous == c and previous.descriptor is c.descriptor:
            cUnchanged.append(c.name)
        else:
            cChanged.append(ClusterChange(previous, c, keepsPools(previous, c)))
    cRemoved = [c for c in old.clusters if c.name not in newClusters]
    return ConfigDiff(tuple(added), tuple(removed), tuple(changed), tuple(unchanged), tuple(cAdded),
                      tuple(cRemoved), tuple(cChanged), tuple(cUnchanged), old.drainTimeout != new.drainTimeout)
