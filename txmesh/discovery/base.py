"""
What every discovery source shares (issue 12, part 1): the context a source is made with, and the per-cluster sink
(``ClusterDiscovery``, an IHostSetSink) that applies host sets to the cluster, keeps the last known set when the
source fails, and keeps the version, last update, staleness and counters ``/clusters``, ``/stats`` and ``/metrics``
show.
"""

from dataclasses import dataclass

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from txmesh.errors import ConfigError
from txmesh.interfaces import IHostSetSink


@dataclass(frozen=True)
class SourceContext:
    """What IDiscoverySourceFactory.makeSource gets besides its config and sink."""

    reactor: object  # IReactorTime, IReactorTCP, IReactorThreads ...
    clusterName: str
    clusterProtocol: str
    stats: object  # the cluster's txmesh.stats.Scope
    registry: object = None  # the running registry client (IZooKeeperSession, IEtcdClient) or None


WAITING = "waiting"  # started, no host set yet
OK = "ok"  # the last report was a host set
FAILING = "failing"  # the last report was a failure: the last known set (or none) serves

# Per-cluster counters, Envoy's names (its cluster manager's and xDS subscriptions' stats)
DISCOVERY_STATS = (
    ("update_attempt", "Reports from the cluster's discovery source: host sets and failures."),
    ("update_success", "Host sets received from the discovery source (changed or not)."),
    ("update_failure", "Discovery source failures (registry unreachable, file missing); the last known set kept "
                       "unless keep_last_known is false."),
    ("update_rejected", "Host sets refused as invalid (a file that does not parse or validate)."),
    ("update_empty", "Host sets received with no host at all."),
    ("update_no_rebuild", "Host sets equal to the one applied: nothing rebuilt."),
    ("init_fetch_timeout", "Starts at which no host set came within initial_fetch_timeout."),
)


def _reasonText(reason):
    if isinstance(reason, Failure):
        return reason.getErrorMessage() or reason.type.__name__
    return str(reason)


def _rejected(reason):
    """A report that the source's data was invalid (a ConfigError) rather than out of reach."""
    if isinstance(reason, Failure):
        return reason.check(ConfigError) is not None
    return isinstance(reason, ConfigError)


@implementer(IHostSetSink)
class ClusterDiscovery:
    """
    One discovered cluster: its source (made and started by ``start``) reports here, and host sets go to
    ``cluster.updateHosts``.

    @param cluster: the ICluster whose hosts change.
    @param config: its txmesh.discovery_config.DiscoveryConfig (``factory``, ``sourceConfig``, ``keepLastKnown``,
        ``initialFetchTimeout``).
    @param clock: the reactor (IReactorTime, and whatever the source needs: IReactorTCP, IReactorFDSet ...).
    @param stats: the cluster's txmesh.stats.Scope: the counters of L{DISCOVERY_STATS} and the
        ``discovery_staleness_seconds`` gauge, read at scrape time.
    @param observer: an IHostSetSink told of every report once the cluster has handled it (a ``dubbo_registry``
        route counts its on-demand clusters' reports per registry, txmesh.discovery.dubbo_clusters), or None.

    A host set equal to the one applied is counted (``update_no_rebuild``) and not applied, so a source may
    re-deliver its whole view as often as it likes.  A failure keeps the set that serves (``keep_last_known``,
    the default) or empties the cluster; the state goes ``waiting`` -> ``ok`` <-> ``failing`` and each change of
    state is logged once, never each retry.  Staleness is how long the cluster has served a set its source could
    not vouch for: 0 while ``ok``, the seconds since the first failure after the last good set while ``failing``,
    the seconds since start while ``waiting``; 0 once stopped (a removed cluster's series stays in /stats and must
    not look stale).
    """

    log = Logger()

    def __init__(self, cluster, config, clock, stats, observer=None):
        self.cluster = cluster
        self.observer = observer
        self.config = config
        self.clock = clock
        self._scope = stats
        for name, help in DISCOVERY_STATS:
            setattr(self, name, stats.counter(name, help=help))
        stats.computedGauge("discovery_staleness_seconds", self.stalenessSeconds,
                            help="Seconds the cluster has served a host set its discovery source could not vouch "
                                 "for (0 while the source is ok).")
        self.state = WAITING
        self.version = None
        self.lastUpdate = None  # clock time of the last host set received
        self.lastFailure = None  # the text of the last failure
        self.source = None
        self._since = clock.seconds()  # when the state began
        self._applied = None  # frozenset of the endpoints applied, None before the first set
        self._warmed = False
        self._waiters = []
        self._timer = None
        self._stopped = False

    # -- running ------------------------------------------------------------------------------------------------

    def start(self, registry=None):
        """
        Make the source and start it.  @param registry: the running registry client the discovery names, or None.
        @return: ``whenWarm()``.
        """
        config = self.config
        self._since = self.clock.seconds()
        context = SourceContext(self.clock, self.cluster.name, self.cluster.config.protocol, self._scope, registry)
        self.source = config.factory.makeSource(config.sourceConfig, context, self)
        if config.initialFetchTimeout > 0:
            self._timer = self.clock.callLater(config.initialFetchTimeout, self._initialFetchTimedOut)
        else:
            self._warm()
        try:
            self.source.start()
        except Exception:  # a source's bug: reported like any failure; the cluster waits, then serves empty
            failure = Failure()
            self.log.failure("cluster {cluster}: starting its {kind} source", failure, cluster=self.cluster.name,
                             kind=config.type)
            self.sourceFailed(failure)
        return self.whenWarm()

    def stop(self):
        """Stop the source (drain, shutdown); whoever waits for the first set stops waiting.  @return: a Deferred."""
        self._stopped = True
        self._warm()
        source, self.source = self.source, None
        if source is None:
            return defer.succeed(None)
        return defer.maybeDeferred(source.stop)

    def whenWarm(self):
        """A Deferred fired (with None) once the first host set came, or ``initial_fetch_timeout`` passed."""
        if self._warmed:
            return defer.succeed(None)
        d = defer.Deferred()
        self._waiters.append(d)
        return d

    def _initialFetchTimedOut(self):
        self._timer = None
        self.init_fetch_timeout.value += 1
        self.log.warn("cluster {cluster}: no host set from its {kind} source within {t}s; serving without hosts "
                      "until one comes", cluster=self.cluster.name, kind=self.config.type,
                      t=self.config.initialFetchTimeout)
        self._warm()

    def _warm(self):
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None
        if self._warmed:
            return
        self._warmed = True
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(None)

    # -- IHostSetSink -------------------------------------------------------------------------------------------

    def hostsUpdated(self, endpoints, version):
        self.update_attempt.value += 1
        self.update_success.value += 1
        endpoints = tuple(endpoints)
        if not endpoints:
            self.update_empty.value += 1
        key = frozenset(endpoints)
        if key == self._applied:
            self.update_no_rebuild.value += 1
        else:
            self.cluster.updateHosts(endpoints)
            self._applied = key
        now = self.clock.seconds()
        self.version = str(version)
        self.lastUpdate = now
        if self.state != OK:
            if self.state == FAILING:
                self.log.info("cluster {cluster}: discovery recovered after {s:.1f}s: {n} host(s), version {v}",
                              cluster=self.cluster.name, s=now - self._since, n=len(key), v=self.version)
            else:
                self.log.info("cluster {cluster}: first host set from its {kind} source: {n} host(s), version {v}",
                              cluster=self.cluster.name, kind=self.config.type, n=len(key), v=self.version)
            self.state = OK
            self._since = now
        self._warm()
        if self.observer is not None:
            self.observer.hostsUpdated(endpoints, version)

    def sourceFailed(self, reason):
        self.update_attempt.value += 1
        text = _reasonText(reason)
        if _rejected(reason):
            self.update_rejected.value += 1
        else:
            self.update_failure.value += 1
        self.lastFailure = text
        keep = self.config.keepLastKnown
        if self.state != FAILING:
            if self.state == OK:
                self._since = self.clock.seconds()
            self.state = FAILING
            if keep:
                what = ("keeping the last known %d host(s)" % (len(self._applied),) if self._applied is not None
                        else "no host set yet")
            else:
                what = "emptying the cluster (keep_last_known: false)"
            self.log.warn("cluster {cluster}: discovery failing: {reason}; {what}", cluster=self.cluster.name,
                          reason=text, what=what)
        if not keep and self._applied:
            self.cluster.updateHosts(())
            self._applied = frozenset()
        if self.observer is not None:
            self.observer.sourceFailed(reason)

    # -- reporting ----------------------------------------------------------------------------------------------

    def stalenessSeconds(self):
        if self.state == OK or self._stopped:
            return 0.0
        return max(0.0, self.clock.seconds() - self._since)

    def describe(self):
        """The ``discovery`` dict of the cluster in ``/clusters``."""
        return {
            "type": self.config.type,
            "registry": self.config.registry,
            "state": self.state,
            "version": self.version,
            "last_update": self.lastUpdate,
            "staleness_seconds": round(self.stalenessSeconds(), 3),
            "last_failure": self.lastFailure,
            "keep_last_known": self.config.keepLastKnown,
            "source": self.source.describe() if self.source is not None else None,
        }
