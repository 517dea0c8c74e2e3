"""
The running state one loaded config gives: clock, clusters, stats, randomness, the shared WriteScope and the log
files.  Filters get it in ``IFilterFactory.createFilters``; the service builds it once, at start.
"""

import random as _random

from twisted.logger import Logger

from txmesh.config import NodeConfig
from txmesh.discovery.dubbo_clusters import RegistryClusters
from txmesh.overload import Overload
from txmesh.request_stats import RequestStats
from txmesh.upstream.shadow import ShadowWriter


class RouterStats:
    """Per-cluster counters the router keeps (the pool keeps the connection ones)."""

    __slots__ = ("rq_total", "rq_timeout", "rq_completed", "rq_overflow", "retry", "retry_success",
                 "retry_overflow", "retry_budget_exhausted", "retry_limit_exceeded", "per_try_timeout",
                 "retry_backoff_exponential", "retry_backoff_ratelimited", "retry_abandoned")

    def __init__(self, stats, cluster):
        scope = stats.scope(cluster=cluster)
        c = scope.counter
        self.rq_total = c("cluster_upstream_rq", help="Requests routed to the cluster")
        self.rq_timeout = c("cluster_upstream_rq_timeout", help="Requests that hit the route timeout")
        self.rq_completed = c("cluster_upstream_rq_completed", help="Requests answered by the upstream")
        # retries and the request breaker (issue 11 parts 4, 5 and 10; Envoy's names)
        self.rq_overflow = c("upstream_rq_pending_overflow",
                             help="Requests failed at once by the pool's queue or the max_requests breaker.")
        self.retry = c("upstream_rq_retry", help="Retries started (or scheduled).")
        self.retry_success = c("upstream_rq_retry_success", help="Retried requests whose last answer was kept.")
        self.retry_overflow = c("upstream_rq_retry_overflow",
                                help="Retries not made: the retry budget or the max_retries breaker was full.")
        self.retry_budget_exhausted = c("upstream_rq_retry_budget_exhausted",
                                        help="Retries not made because of the retry budget.")
        self.retry_limit_exceeded = c("upstream_rq_retry_limit_exceeded",
                                      help="Retriable failures past num_retries.")
        self.per_try_timeout = c("upstream_rq_per_try_timeout", help="Attempts that hit the per-try timeout.")
        self.retry_backoff_exponential = c("upstream_rq_retry_backoff_exponential",
                                           help="Retries delayed by the jittered exponential back-off.")
        self.retry_backoff_ratelimited = c("upstream_rq_retry_backoff_ratelimited",
                                           help="Retries delayed by Retry-After or grpc-retry-pushback-ms.")
        self.retry_abandoned = c("retry_or_shadow_abandoned",
                                 help="Requests whose body outgrew per_request_buffer_limit: no more retries.")


class ReopenableFiles:
    """
    The log files one config opened, reopened together on SIGUSR1 or ``POST /reopen_logs`` (for logrotate).

    A registered file has a ``path`` and ``reopen()``, which raises OSError when the path cannot be opened and
    then keeps writing to its old file.  Outcomes are counted per path (``log_reopens``, ``log_reopen_errors``)
    and a failure is logged, never raised: the next reopen tries again.
    """

    log = Logger()

    def __init__(self, stats):
        self._stats = stats
        self._files = []

    def register(self, f):
        self._files.append(f)

    def __len__(self):
        return len(self._files)

    def reopenAll(self):
        """
        Reopen every registered file.
        @return: (number reopened, [(path, reason) for each failure]).
        """
        reopened, failures = 0, []
        for f in self._files:
            labels = (("path", f.path),)
            try:
                if f.reopen():
                    reopened += 1
                    self._stats.counter("log_reopens", labels, "Log files reopened (SIGUSR1, /reopen_logs)").inc()
            except OSError as e:
                reason = e.strerror or str(e)
                failures.append((f.path, reason))
                self._stats.counter("log_reopen_errors", labels,
                                    "Failed log reopens (lines keep going to the old file)").inc()
                self.log.error("cannot reopen log {path}: {reason}; still writing to the old file",
                               path=f.path, reason=reason)
        return reopened, failures


class Runtime:
    """
    @ivar clock: the IReactorTime every timer uses.
    @ivar clusters: the ClusterManager (get(name) -> Cluster or None).
    @ivar stats: the StatsStore.
    @ivar files: the L{ReopenableFiles} the config's log files registered with.
    @ivar random: a random.Random (seeded in tests).
    @ivar config: the MeshConfig this runtime was built from.
    @ivar node: the NodeConfig naming this sidecar (the config's, else the host name).
    @ivar writeScope: the L{txmesh.protocols.transport.WriteScope} the service's protocols share, or None.
    @ivar overload: the L{txmesh.overload.Overload} every listener asks before taking a connection (default: the
        config's bounds, without a memory reader).
    @ivar registryClusters: the L{txmesh.discovery.dubbo_clusters.RegistryClusters} of ``dubbo_registry`` routes.
    @ivar shadows: the L{txmesh.upstream.shadow.ShadowWriter} the router mirrors requests with.
    @ivar requestStats: the L{txmesh.request_stats.RequestStats} (an IRequestStats) the listeners' filter chains
        report each stream's end to, and the admin's status page reads.
    """

    def __init__(self, clock, clusters, stats, random=None, config=None, reactor=None, writeScope=None,
                 overload=None, registries=None):
        self.clock = clock
        self.clusters = clusters
        self.stats = stats
        self.random = random if random is not None else _random.Random()
        self.config = config
        self.node = config.node if config is not None else NodeConfig()
        self.reactor = reactor
        self.writeScope = writeScope
        if overload is None:
            overload = Overload(config.overload if config is not None else None, clock, stats)
        self.overload = overload
        # the running registry clients (txmesh.discovery.registries.RegistryClients), or None
        self.registries = registries
        self.files = ReopenableFiles(stats)
        self.shadows = ShadowWriter(clock, clusters, stats, self.random)
        # dubbo_registry routes' clusters, made on demand (issue 12 part 2)
        self.registryClusters = RegistryClusters(clock, clusters, registries, stats)
        self._routerStats = {}
        # request metrics per listener, route and cluster (issue 16 part 1): the listeners' chains report to it
        self.requestStats = RequestStats(stats)

    def routerStats(self, cluster):
        rs = self._routerStats.get(cluster)
        if rs is None:
            rs = self._routerStats[cluster] = RouterStats(self.stats, cluster)
        return rs
