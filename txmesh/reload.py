"""
One way to change the running configuration (issue 13 parts 1 and 2).

- L{ConfigApplier} (IConfigApplier): a new validated MeshConfig is diffed against the running one
  (L{txmesh.config_diff}) and applied on the reactor in one synchronous step, after everything that can fail is done:
  the ports of added and moved listeners are bound first (a port that cannot be bound rejects the whole reload,
  nothing applied).  Then, at once: clusters are added and changed in place (kept hosts keep their pools unless a
  pool setting changed), listeners whose routes changed give their connections the new filter-chain template,
  listeners whose connection settings changed give new connections a new protocol factory on the same port while
  the old connections drain, moved listeners start accepting on the new address and stop on the old one, removed
  listeners stop accepting and drain (``drain_timeout``), removed clusters drain.  Streams in flight finish on the
  template, cluster and connection they started with.
- L{FileConfigSource} (IConfigSource): the config file the service was started with, read and validated as
  ``txmesh check`` does.
- L{Reloader}: SIGHUP and ``POST /reload``: RELOADING=1 to systemd, read the source, apply, count
  (``config_reload_success``, ``config_reload_failed``), log, READY=1.  An invalid file is rejected with its one-line
  ``file:line: key.path: reason`` and the old config keeps serving.
"""

import dataclasses

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from txmesh import config as _config
from txmesh.config_diff import ADDRESS, CONNECTIONS, ROUTES, adoptEntries, diffConfigs
from txmesh.control import configDigest
from txmesh.errors import ConfigError
from txmesh.interfaces import IConfigApplier, IConfigSource, IFilterConfigResources, IStreamFactorySwitch
from txmesh.listeners import drainFactory
from txmesh.runtime import ReopenableFiles


@implementer(IConfigSource)
class FileConfigSource:
    """The mesh.yaml file at ``location``, loaded by ``load`` (txmesh.config.load)."""

    name = "file"

    def __init__(self, location, load=_config.load):
        self.location = location
        self._load = load

    def read(self):
        return self._load(self.location)


class ConfigVersion:
    """
    The running config's version: a counter (1 at start, one more for each applied reload that changed the file's
    content), the digest of its content, its source, and for each listener and cluster the version that last
    changed it.
    """

    def __init__(self, config, sourceName, appliedAt):
        self.version = 1
        self.digest = configDigest(config.raw)
        self.source = sourceName
        self.location = config.filename
        self.appliedAt = appliedAt
        self.listeners = {lc.name: 1 for lc in config.listeners}
        self.clusters = {c.name: 1 for c in config.clusters}
        self.origins = config.origins  # the xDS parts' resource names and version_info (txmesh.xds.state)

    def advance(self, config, diff, sourceName, appliedAt, location=None):
        """
        A reload applied ``config`` (a MeshConfig) through ``diff`` (a ConfigDiff), from ``location`` (the source's:
        the file, or the xDS control plane; default the config's file).
        """
        self.version += 1
        self.digest = configDigest(config.raw)
        self.source, self.location, self.appliedAt = sourceName, location or config.filename, appliedAt
        self.origins = config.origins
        changedListeners = [lc.name for lc in diff.listenersAdded] + [c.new.name for c in diff.listenersChanged]
        changedClusters = [c.name for c in diff.clustersAdded] + [c.new.name for c in diff.clustersChanged]
        self.listeners = {lc.name: self.listeners.get(lc.name, self.version) for lc in config.listeners}
        self.clusters = {c.name: self.clusters.get(c.name, self.version) for c in config.clusters}
        for name in changedListeners:
            self.listeners[name] = self.version
        for name in changedClusters:
            self.clusters[name] = self.version

    def renumber(self, version):
        """Take the number ``version`` (a worker takes its parent's, so that every process shows one)."""
        for parts in (self.listeners, self.clusters):
            for name, v in parts.items():
                if v == self.version:
                    parts[name] = version
        self.version = version

    def describe(self):
        """JSON-able, for ``/config_dump`` (``version_info``) and ``/server_info``."""
        def parts(versions, kind):
            # a part from xDS says so, with its resource name and version_info; the others are the file's
            origins = self.origins.get(kind, {})
            return {name: {"version": v, "source": self.source, "location": self.location, **origins.get(name, {})}
                    for name, v in versions.items()}

        return {"version": self.version, "digest": self.digest, "source": self.source, "location": self.location,
                "applied_at": self.appliedAt, "listeners": parts(self.listeners, "listeners"),
                "clusters": parts(self.clusters, "clusters")}


class Rejected(Exception):
    """A reload that cannot be applied; nothing changed.  ``str()`` is the one-line reason."""


def _resources(config):
    """The filter configs of ``config``'s listeners that hold resources (IFilterConfigResources)."""
    return {e.config for lc in config.listeners for e in lc.filters + lc.networkFilters
            if IFilterConfigResources.providedBy(e.config)}


@implementer(IConfigApplier)
class ConfigApplier:
    """
    Applies new configs to ``mesh`` (a L{txmesh.service.MeshService}: its ``config``, ``listeners``,
    ``listenerBuilder``, ``clusters``, ``runtime``, ``retiring`` and ``filterResources``), one at a time, on
    ``clock`` (the reactor).  The filter configs a reload leaves behind (an access log whose listener changed) are
    closed ``drain_timeout`` after it, once the streams that started on them had that long to finish.
    """

    log = Logger()

    def __init__(self, mesh, clock, sourceName="file"):
        self.mesh = mesh
        self.clock = clock
        self.version = ConfigVersion(mesh.config, sourceName, clock.seconds())
        self._lock = defer.DeferredLock()
        self._closing = {}  # resource -> DelayedCall closing it

    def apply(self, config, source):
        started = self.clock.seconds()
        return self._lock.run(self._apply, config, source).addErrback(self._failed, started)

    def _failed(self, failure, started):
        # a bug, not a bad config: logged with its traceback, reported as a rejection
        self.log.failure("reload: applying the new configuration failed", failure)
        return self._result("rejected", started, "internal error: %s" % (failure.getErrorMessage(),))

    def stop(self):
        """The mesh stops: resources waiting to be closed are closed by it (they are in its filterResources)."""
        closing, self._closing = self._closing, {}
        for timer in closing.values():
            if timer.active():
                timer.cancel()

    def _result(self, outcome, started, error=None, changes=None):
        return {"outcome": outcome, "error": error, "version": self.version.version, "digest": self.version.digest,
                "changes": changes, "seconds": round(self.clock.seconds() - started, 6)}

    @defer.inlineCallbacks
    def _apply(self, new, source):
        mesh = self.mesh
        started = self.clock.seconds()
        loaded = _resources(new) - mesh.filterResources  # what loading ``new`` opened
        try:
            if mesh.draining or mesh.listenersDrained:
                raise Rejected("the listeners are draining (stopping, or POST /drain_listeners): restart txmesh")
            if mesh.running and not mesh.serving:
                # the listeners' accepts are held until discovered clusters are warm (AcceptGate): no port is swapped
                raise Rejected("txmesh is starting (waiting for discovered clusters): reload once it serves")
            new = self._adopt(mesh.config, new)
            try:
                diff = diffConfigs(mesh.config, new)
            except ConfigError as e:
                raise Rejected(str(e)) from e
            prepared = yield self._prepare(diff)
        except Rejected as e:
            for resource in loaded:
                resource.close()
            return self._result("rejected", started, str(e))
        digest = configDigest(new.raw)
        if diff.empty and digest == self.version.digest:
            for resource in loaded:
                resource.close()
            return self._result("unchanged", started, changes=diff.describe())
        self._commit(new, diff, prepared, loaded, source)
        return self._result("applied", started, changes=diff.describe())

    def _adopt(self, old, new):
        """``new`` with the running filter configs in place of those that do the same (config_diff.adoptEntries)."""
        running = {lc.name: lc for lc in old.listeners}
        listeners = tuple(adoptEntries(running[lc.name], lc) if lc.name in running else lc for lc in new.listeners)
        return dataclasses.replace(new, listeners=listeners)

    @defer.inlineCallbacks
    def _prepare(self, diff):
        """
        Everything that can fail, before anything changes: templates, protocol factories, and the ports of added
        and moved listeners, bound now.  @return: (templates by name, factories by name, new RunningListeners by
        name).  @raise Rejected: something could not be made or bound (what was made is undone).
        """
        mesh = self.mesh
        builder = mesh.listenerBuilder
        templates, factories, fresh = {}, {}, {}
        try:
            for change in diff.listenersChanged:
                lc = change.new
                templates[lc.name] = builder.template(lc)
                if change.kind == CONNECTIONS or (
                        change.kind == ROUTES and not IStreamFactorySwitch.providedBy(mesh.listeners[lc.name].factory)):
                    factories[lc.name] = builder.factory(lc, templates[lc.name])
            bind = [c.new for c in diff.listenersChanged if c.kind == ADDRESS] + list(diff.listenersAdded)
            # auto listeners after the listeners they hand connections to, which may be new in this reload
            for lc in sorted(bind, key=lambda lc: lc.detect is not None):
                fresh[lc.name] = builder.pending[lc.name] = listener = builder.build(lc, templates.get(lc.name))
                if mesh.running:
                    try:
                        yield listener.service.bind()
                    except Exception as e:
                        raise Rejected("listener '%s' cannot listen on %s: %s" % (lc.name, lc.address, e)) from e
        except Exception as e:
            for factory, _, _ in factories.values():
                builder.release(factory)
            for listener in fresh.values():
                builder.release(listener.factory)
                yield listener.service.stopService()
            if isinstance(e, Rejected):
                raise
            self.log.failure("reload: building the new listeners failed")
            raise Rejected("building the new listeners failed: %s" % (e,)) from e
        finally:
            builder.pending.clear()
        return templates, factories, fresh

    def _commit(self, new, diff, prepared, loaded, source):
        """Apply ``diff`` at once (no yield: nothing else runs on the reactor meanwhile)."""
        mesh = self.mesh
        templates, factories, fresh = prepared
        clusters = mesh.clusters
        for c in diff.clustersAdded:
            clusters.addCluster(c)
            clusters.startClusterDiscovery(c.name).addErrback(
                lambda f, name=c.name: self.log.failure("cluster {cluster}: discovery", f, cluster=name))
        for change in diff.clustersChanged:
            clusters.updateCluster(change.new, change.keepPools)
        mesh.config = mesh.runtime.config = new
        listeners = mesh.listeners
        for change in diff.listenersChanged:
            name = change.new.name
            running = listeners[name]
            if change.kind == ADDRESS:
                if change.new.descriptor is change.old.descriptor and IStreamFactorySwitch.providedBy(running.factory):
                    running.factory.template = templates[name]
                self._retireListener(listeners.pop(name))
                mesh.addListener(fresh[name])
            elif name in factories:
                factory, served, tls = factories[name]
                self._retire(running.useFactory(change.new, templates[name], factory, served, tls))
            else:
                running.useTemplate(change.new, templates[name])
        for lc in diff.listenersAdded:
            mesh.addListener(fresh[lc.name])
        for lc in diff.listenersRemoved:
            self._retireListener(listeners.pop(lc.name))
        mesh.listeners = {lc.name: listeners[lc.name] for lc in new.listeners}
        for c in diff.clustersRemoved:
            clusters.removeCluster(c.name).addErrback(
                lambda f, name=c.name: self.log.failure("cluster {cluster}: draining", f, cluster=name))
        self._swapResources(new, loaded)
        self.version.advance(new, diff, source.name, self.clock.seconds(), source.location)
        mesh.meshStatus = mesh.makeStatus()

    def _retireListener(self, listener):
        """Stop accepting on ``listener``'s port (open connections stay) and drain its connections."""
        listener.backoff.stop()
        listener.service.disownServiceParent()
        self._retire(listener.factory)

    def _retire(self, factory):
        """Drain a protocol factory that takes no new connection, cutting what is left after ``drain_timeout``."""
        mesh = self.mesh
        mesh.retiring.add(factory)
        mesh.listenerBuilder.release(factory)
        timeout = mesh.config.drainTimeout

        def drained(cut):
            mesh.retiring.discard(factory)
            if cut:
                self.log.warn("reload: listener {listener}'s old connections: drain timeout ({timeout}s) passed, cut "
                              "{cut} connection(s)", listener=factory.listenerName, timeout=timeout, cut=cut)

        drainFactory(self.clock, factory, timeout).addCallback(drained)

    def _swapResources(self, new, loaded):
        """
        Close what loading ``new`` opened for nothing (the running ones were adopted instead); the running resources
        ``new`` no longer uses are closed ``drain_timeout`` later.  SIGUSR1 reopens those in use.
        """
        mesh = self.mesh
        used = _resources(new)
        for resource in loaded - used:
            resource.close()
        timeout = mesh.config.drainTimeout
        for resource in mesh.filterResources - used:
            if resource not in self._closing and timeout:
                self._closing[resource] = self.clock.callLater(timeout, self._close, resource)
        mesh.filterResources = used | set(self._closing)
        files = ReopenableFiles(mesh.stats)
        for resource in mesh.filterResources:
            resource.registerFiles(files)
        mesh.runtime.files = files

    def _close(self, resource):
        del self._closing[resource]
        self.mesh.filterResources.discard(resource)
        resource.close()


class Reloader:
    """
    A reload from ``source`` (an IConfigSource) through ``applier`` (an IConfigApplier): SIGHUP and ``POST /reload``.

    @param notifier: the IServiceNotifier told RELOADING before and READY (with ``status()``) after.
    @param stats: the StatsStore: ``config_reload_success``, ``config_reload_failed`` and the ``config_version``
        gauge.
    @param status: ``status() -> str``, the STATUS= line sent with READY.
    @param clock: an IReactorTime: ``seconds`` in the outcome is the whole reload's, reading the file included.
    """

    log = Logger()

    def __init__(self, source, applier, notifier, stats, status, clock):
        self.clock = clock
        self.source = source
        self.applier = applier
        self.notifier = notifier
        self.status = status
        self.success = stats.counter("config_reload_success", help="Reloads applied (or with nothing to change)")
        self.failed = stats.counter("config_reload_failed",
                                    help="Reloads rejected (invalid file, a part only a restart changes, a port "
                                         "that cannot be bound): the old config keeps serving")
        self.versionGauge = stats.gauge("config_version", help="The running config's version (1 at start)")
        self.versionGauge.value = applier.version.version

    @defer.inlineCallbacks
    def reload(self, trigger):
        """
        Re-read the source and apply it.  @param trigger: what asked ("SIGHUP", "POST /reload"), for the log.
        @return: a Deferred firing with the applier's outcome dict (``outcome``, ``error``, ``version``, ...).
        """
        self.notifier.reloading()
        started = self.clock.seconds()
        try:
            try:
                config = self.source.read()
            except ConfigError as e:
                result = {"outcome": "rejected", "error": str(e), "version": self.applier.version.version,
                          "digest": self.applier.version.digest, "changes": None}
            else:
                result = yield self.applier.apply(config, self.source)
        finally:
            self.notifier.ready(self.status())
        result["seconds"] = round(self.clock.seconds() - started, 6)
        self.versionGauge.value = result["version"]
        if result["outcome"] == "rejected":
            self.failed.value += 1
            self.log.error("reload ({trigger}) rejected: {error}; version {version} keeps serving", trigger=trigger,
                           error=result["error"], version=result["version"])
        else:
            self.success.value += 1
            self.log.info("reload ({trigger}): {outcome} in {ms:.1f} ms, version {version} ({digest}) from {source} "
                          "{location}{changes}", trigger=trigger, outcome=result["outcome"],
                          ms=result["seconds"] * 1000, version=result["version"], digest=result["digest"][7:19],
                          source=self.source.name, location=self.source.location,
                          changes=_summary(result["changes"]))
        return result


def _summary(changes):
    """``: listeners routes=[web] added=[x]; clusters changed=[a]`` for the log line ('' when nothing changed)."""
    if not changes:
        return ""
    parts = []
    for what in ("listeners", "clusters"):
        kinds = ["%s=[%s]" % (kind, ",".join(names)) for kind, names in changes[what].items()
                 if names and kind != "unchanged"]
        if kinds:
            parts.append("%s %s" % (what, " ".join(kinds)))
    return (": " + "; ".join(parts)) if parts else ""
