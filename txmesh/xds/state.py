"""
The resources an xDS control plane gave, last accepted per type, and the one MeshConfig they make with the
bootstrap's static parts (IXdsResourceHandler; docs/operations.md "xDS").

An update is translated (txmesh.xds.translate), merged with the other types' accepted resources and the bootstrap's
static ``listeners`` and ``clusters``, validated by the file's builder (``txmesh.config.buildFromRaw``) and applied
through the one IConfigApplier.  Anything that fails (a resource txmesh cannot apply, a name taken by a static part,
a builder error, a rejected apply) NACKs the whole update, naming each resource and why; the last accepted
resources keep serving.

Envoy's semantics kept here:
  - LDS and CDS responses are the whole set (an absent listener or cluster is removed); RDS and EDS responses
    update the resources they hold and keep the others (a route configuration or assignment goes when no listener or
    cluster names it any more);
  - warming: a listener whose RDS route configuration has not arrived is not applied until it has, and an EDS
    cluster waits for its ClusterLoadAssignment, each at most ``initial_fetch_timeout``; then the listener serves
    without routes (404) and the cluster without hosts (503), until the resource comes;
  - an assignment that comes before its cluster is kept and used when the cluster comes;
  - a route to a cluster that is not there answers ``cluster_not_found_response_code`` (503) unless the route
    configuration says ``validate_clusters`` (the default for inline routes), which rejects it.
"""

import copy
import dataclasses

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from txmesh.config import buildFromRaw
from txmesh.errors import ConfigError
from txmesh.interfaces import IConfigSource, IXdsResourceHandler
from txmesh.xds.config import XdsConfig
from txmesh.xds.translate import (CLUSTER, ENDPOINT, LISTENER, ROUTE, TYPE_URLS, XdsResourceError,
                                  resourceName, translateCluster, translateEndpoints, translateListener,
                                  translateRouteConfiguration)

_TRANSLATE = {CLUSTER: translateCluster, ENDPOINT: translateEndpoints, LISTENER: translateListener,
              ROUTE: translateRouteConfiguration}
_KIND = {CLUSTER: "cluster", ENDPOINT: "cluster_load_assignment", LISTENER: "listener", ROUTE: "route_configuration"}


@implementer(IConfigSource)
class XdsConfigSource:
    """
    The control plane as a source of configuration (``/config_dump`` shows ``source: xds`` and its ``location``):
    ``read`` gives the configuration last built from its resources.
    """

    name = "xds"

    def __init__(self, location):
        self.location = location
        self.config = None  # the MeshConfig last applied from it

    def read(self):
        if self.config is None:
            raise ConfigError("no configuration from the control plane %s yet" % (self.location,))
        return self.config


@implementer(IConfigSource)
class XdsFileSource:
    """
    The bootstrap file under xDS (SIGHUP, ``POST /reload``): the file read by ``fileSource`` (an IConfigSource,
    the service's ``FileConfigSource``), its static parts merged with the resources ``state`` (an L{XdsState})
    accepted, so a file reload keeps what the control plane gave.
    """

    name = "file"

    def __init__(self, fileSource, state):
        self.fileSource = fileSource
        self.state = state
        self.location = fileSource.location

    def read(self):
        return self.state.withStatic(self.fileSource.read())


class _Accepted:
    """One accepted resource: its message, its translation and the version_info that last changed it."""

    __slots__ = ("message", "translated", "version")

    def __init__(self, message, translated, version):
        self.message, self.translated, self.version = message, translated, version


@implementer(IXdsResourceHandler)
class XdsState:
    """
    @param bootstrap: the MeshConfig the service started with: its ``raw`` static ``listeners`` and ``clusters``
        stay in every configuration built here (Envoy's static_resources).
    @param applier: the IConfigApplier every configuration goes through.
    @param clock: IReactorTime for the warming bounds.
    @param location: where the control plane is (``XdsConfigSource.location``, shown by ``/config_dump``).
    @param xdsConfig: the bootstrap's L{txmesh.xds.config.XdsConfig} (``lds``/``cds``: which types come from the
        control plane; ``initialFetchTimeout``: the warming bound), or None for its defaults.
    """

    log = Logger()

    def __init__(self, bootstrap, applier, clock, location, xdsConfig=None):
        self.applier = applier
        self.clock = clock
        self.source = XdsConfigSource(location)
        self.xdsConfig = xdsConfig if xdsConfig is not None else XdsConfig()
        self._setStatic(bootstrap)
        self._accepted = {typeUrl: {} for typeUrl in TYPE_URLS}
        self.versions = {}  # typeUrl -> the version_info last accepted
        self._watchers = []
        self._lock = defer.DeferredLock()
        self._waiting = {}  # (typeUrl, name) -> the DelayedCall ending its warming
        self._expired = set()  # (typeUrl, name) whose warming ended without it

    # -- IXdsResourceHandler ------------------------------------------------------------------------------------

    def typeUrls(self):
        config = self.xdsConfig
        return tuple(t for t in TYPE_URLS if (config.cds if t in (CLUSTER, ENDPOINT) else config.lds))

    def subscriptions(self, typeUrl):
        return self._subscriptions(self._accepted, typeUrl)

    def watchSubscriptions(self, callback):
        self._watchers.append(callback)

    def update(self, typeUrl, versionInfo, resources):
        return self._lock.run(self._update, typeUrl, versionInfo, list(resources)).addErrback(self._failed)

    # -- the rest -----------------------------------------------------------------------------------------------

    def withStatic(self, bootstrap):
        """
        The configuration of ``bootstrap`` (a MeshConfig read from the file again) with the accepted resources; its
        static parts are those of every later update.  (A reload the applier then rejects leaves them in place: the
        file was valid, and the next update applies them too.)
        @raise ConfigError: the file's names collide with the dynamic ones, or the merge is invalid (the reason
            names the resource).
        """
        old = (self._static, self._filename, self._staticListeners, self._staticClusters)
        self._setStatic(bootstrap)
        try:
            collisions = [line for t in (CLUSTER, LISTENER) for line in self._collisions(t, self._accepted[t])]
            if collisions:
                raise ConfigError("; ".join(collisions), filename=bootstrap.filename)
            raw, owners, origins = self._merge(self._accepted)
            try:
                config = buildFromRaw(raw, self._filename)
            except ConfigError as e:
                raise ConfigError(_owner(owners, e), filename=bootstrap.filename) from e
        except XdsResourceError as e:
            (self._static, self._filename, self._staticListeners, self._staticClusters) = old
            raise ConfigError(str(e), filename=bootstrap.filename) from e
        except ConfigError:
            (self._static, self._filename, self._staticListeners, self._staticClusters) = old
            raise
        return _withOrigins(config, origins)

    def _setStatic(self, bootstrap):
        self._static = bootstrap.raw
        self._filename = bootstrap.filename
        self._staticListeners = [lc.get("name") for lc in bootstrap.raw.get("listeners") or ()]
        self._staticClusters = [c.get("name") for c in bootstrap.raw.get("clusters") or ()]

    def stop(self):
        """Cancel the warming timers (the service stops)."""
        waiting, self._waiting = self._waiting, {}
        for call in waiting.values():
            if call.active():
                call.cancel()

    def describe(self):
        """JSON-able: per type, the version_info accepted and the resources with theirs (for the admin API)."""
        return {_KIND[t]: {"version_info": self.versions.get(t),
                           "resources": {name: a.version for name, a in sorted(self._accepted[t].items())}}
                for t in TYPE_URLS}

    def _failed(self, failure):
        # a bug, not a bad resource: logged with its traceback, NACKed so the last good keeps serving
        self.log.failure("xds: applying an update failed", failure)
        return "internal error: %s" % (failure.getErrorMessage(),)

    @staticmethod
    def _subscriptions(accepted, typeUrl):
        if typeUrl == ENDPOINT:
            return frozenset(a.translated.edsName for a in accepted[CLUSTER].values()
                             if a.translated.edsName is not None)
        if typeUrl == ROUTE:
            return frozenset(a.translated.rdsName for a in accepted[LISTENER].values()
                             if a.translated.rdsName is not None)
        return frozenset()

    @defer.inlineCallbacks
    def _update(self, typeUrl, versionInfo, resources):
        if typeUrl not in _TRANSLATE:
            return "txmesh does not apply resources of type %s" % (typeUrl,)
        errors, new = [], {}
        for message in resources:
            name = resourceName(typeUrl, message)
            if name in new:
                errors.append("%s %s: listed twice" % (_KIND[typeUrl], name))
                continue
            try:
                translated = _TRANSLATE[typeUrl](message)
            except XdsResourceError as e:
                errors.append(str(e))
                continue
            old = self._accepted[typeUrl].get(name)
            version = old.version if old is not None and old.message == message else versionInfo
            new[name] = _Accepted(message, translated, version)
        errors.extend(self._collisions(typeUrl, new))
        if errors:
            return self._nack(typeUrl, versionInfo, "; ".join(errors))
        candidate = dict(self._accepted)
        if typeUrl in (ENDPOINT, ROUTE):
            candidate[typeUrl] = {**self._accepted[typeUrl], **new}  # the others stay (Envoy's RDS and EDS)
        else:
            candidate[typeUrl] = new
            dependent = ENDPOINT if typeUrl == CLUSTER else ROUTE
            wanted = self._subscriptions(candidate, dependent)
            gone = self._subscriptions(self._accepted, dependent) - wanted
            candidate[dependent] = {n: a for n, a in self._accepted[dependent].items() if n not in gone}
        error = yield self._apply(candidate)
        if error is not None:
            return self._nack(typeUrl, versionInfo, error)
        before = {t: self.subscriptions(t) for t in (ENDPOINT, ROUTE)}
        self._accepted = candidate
        self.versions[typeUrl] = versionInfo
        for key in [k for k in self._waiting if k[0] == typeUrl and k[1] in new]:
            call = self._waiting.pop(key)
            if call.active():
                call.cancel()
        self._expired -= {(typeUrl, name) for name in new}  # a later need of it waits again
        self._warm()
        for t, names in before.items():
            if self.subscriptions(t) != names:
                for callback in list(self._watchers):
                    try:
                        callback(t)
                    except Exception:
                        # the update is applied: a transport's failure to ask for the new names is its own
                        self.log.failure("xds: a subscription watcher failed for {kind}", kind=_KIND[t])
        return None

    def _nack(self, typeUrl, versionInfo, detail):
        self.log.warn("xds: {kind} version {version} rejected: {detail}; the last accepted keeps serving",
                      kind=_KIND[typeUrl], version=versionInfo, detail=detail)
        return detail

    def _collisions(self, typeUrl, new):
        static = {CLUSTER: self._staticClusters, LISTENER: self._staticListeners}.get(typeUrl, ())
        return ["%s %s: the bootstrap has a static %s of that name" % (_KIND[typeUrl], name, _KIND[typeUrl])
                for name in new if name in static]

    def _warm(self):
        """Start the warming bound of every route configuration and assignment waited for and not there."""
        for typeUrl in (ENDPOINT, ROUTE):
            for name in self.subscriptions(typeUrl) - set(self._accepted[typeUrl]):
                key = (typeUrl, name)
                if key not in self._waiting and key not in self._expired:
                    self._waiting[key] = self.clock.callLater(self.xdsConfig.initialFetchTimeout, self._warmed, key)

    def _warmed(self, key):
        """The warming bound passed: apply what waited for ``key`` without it (Envoy's initial_fetch_timeout)."""
        self._waiting.pop(key, None)
        self._expired.add(key)
        self.log.warn("xds: {kind} {name} did not come within {timeout}s: serving without it",
                      kind=_KIND[key[0]], name=key[1], timeout=self.xdsConfig.initialFetchTimeout)

        def applied(error):
            if error is not None:
                self.log.error("xds: applying after {kind} {name}'s warming failed: {error}", kind=_KIND[key[0]],
                               name=key[1], error=error)

        # the accepted resources as they are when the lock is ours (an update may be applying now)
        self._lock.run(lambda: self._apply(self._accepted)).addCallback(applied).addErrback(self._failed)

    @defer.inlineCallbacks
    def _apply(self, accepted):
        """
        Build the configuration of ``accepted`` and apply it.  @return: a Deferred firing with None (applied or
        unchanged) or the reason it was not, naming the resources.
        """
        try:
            raw, owners, origins = self._merge(accepted)
        except XdsResourceError as e:
            return str(e)
        try:
            config = buildFromRaw(raw, self._filename)
        except ConfigError as e:
            return _owner(owners, e)
        config = _withOrigins(config, origins)
        result = yield self.applier.apply(config, self.source)
        if result["outcome"] == "rejected":
            return "the configuration was not applied: %s" % (result["error"],)
        self.source.config = config
        return None

    def _merge(self, accepted):
        """
        The mesh.yaml document of ``accepted`` with the static parts: (raw, {key path: "kind name"} of the dynamic
        parts, origins for MeshConfig.origins).  @raise XdsResourceError: a route to a missing cluster where
        validate_clusters is on.
        """
        static = self._static
        raw = dict(static)
        listeners = list(static.get("listeners") or ())
        clusters = list(static.get("clusters") or ())
        fileOrigin = {"source": "file", "location": self._filename}
        origins = {"listeners": {n: dict(fileOrigin) for n in self._staticListeners},
                   "clusters": {n: dict(fileOrigin) for n in self._staticClusters}}
        owners = {}
        location = self.source.location
        for name, a in accepted[CLUSTER].items():
            entry = copy.deepcopy(a.translated.raw)
            origin = {"source": "xds", "location": location, "resource": name, "version_info": a.version}
            eds = a.translated.edsName
            if eds is not None:
                assignment = accepted[ENDPOINT].get(eds)
                if assignment is None and (ENDPOINT, eds) not in self._expired:
                    continue  # warming: waits for its assignment
                entry["endpoints"] = copy.deepcopy(assignment.translated.endpoints) if assignment else []
                if assignment is not None:
                    origin["endpoints"] = {"resource": eds, "version_info": assignment.version}
                    factor = assignment.translated.overprovisioningFactor
                    if factor is not None:
                        entry.setdefault("common_lb_config", {})["overprovisioning_factor"] = factor
                    owners["clusters[%d].endpoints" % (len(clusters),)] = "cluster_load_assignment %s" % (eds,)
            owners["clusters[%d]" % (len(clusters),)] = "cluster %s" % (name,)
            origins["clusters"][name] = origin
            clusters.append(entry)
        clusterNames = {c.get("name") for c in clusters}
        for name, a in accepted[LISTENER].items():
            t = a.translated
            entry = copy.deepcopy(t.raw)
            origin = {"source": "xds", "location": location, "resource": name, "version_info": a.version}
            routes, owner = t.routes, "listener %s" % (name,)
            if t.rdsName is not None:
                rc = accepted[ROUTE].get(t.rdsName)
                if rc is None and (ROUTE, t.rdsName) not in self._expired:
                    continue  # warming: waits for its route configuration
                routes, owner = (rc.translated, "route_configuration %s" % (t.rdsName,)) if rc else (None, owner)
                if rc is not None:
                    entry["route_config"] = copy.deepcopy(rc.translated.raw)
                    origin["route_config"] = {"resource": t.rdsName, "version_info": rc.version}
            path = "listeners[%d]" % (len(listeners),)
            if routes is not None:
                _missingClusters(entry["route_config"], routes, clusterNames, owner)
                owners[path + ".route_config"] = owner
            owners[path] = "listener %s" % (name,)
            origins["listeners"][name] = origin
            listeners.append(entry)
        raw["listeners"] = listeners
        raw["clusters"] = clusters
        return raw, owners, origins


def _missingClusters(routeConfig, routes, clusterNames, owner):
    """
    Routes of ``routeConfig`` (mesh.yaml, changed in place) to a cluster not in ``clusterNames`` answer their
    cluster_not_found_response_code (Envoy without validate_clusters).  @raise XdsResourceError: validate_clusters
    is on, or a weighted or mirrored cluster is missing (txmesh cannot answer a share of the requests with a 503).
    """
    kind, _, name = owner.partition(" ")
    for i, vhost in enumerate(routeConfig.get("virtual_hosts", ())):
        for j, route in enumerate(vhost.get("routes", ())):
            action = route.get("route")
            if action is None:
                continue
            where = "virtual_hosts[%d].routes[%d].route" % (i, j)
            named = [action["cluster"]] if "cluster" in action else [w["name"] for w in action["weighted_clusters"]]
            named += [m["cluster"] for m in action.get("request_mirror_policies", ())]
            missing = [c for c in named if c not in clusterNames]
            if not missing:
                continue
            if routes.validateClusters or "cluster" not in action or len(named) > 1:
                raise XdsResourceError(kind, name, "%s: unknown cluster %s%s" % (
                    where, ", ".join(sorted(set(missing))),
                    "" if "cluster" in action and len(named) == 1 else " (weighted or mirrored: txmesh needs every "
                                                                        "cluster there)"))
            del route["route"]
            route["direct_response"] = {"status": routes.notFound.get((i, j), 503)}


def _owner(owners, error):
    """The NACK line of a builder error: the resource owning its key path, the path and the reason."""
    path = error.path or ""
    best = max((p for p in owners if path == p or path.startswith(p + ".") or path.startswith(p + "[")),
               key=len, default=None)
    if best is None:
        return "the merged configuration: %s" % (error,)
    return "%s: %s: %s" % (owners[best], path, error.reason)


def _withOrigins(config, origins):
    return dataclasses.replace(config, origins=origins)
