"""
The running state one loaded config gives: clock, clusters, stats, randomness.  Filters get it in
``IFilterFactory.createFilters``; a reload builds a new one and swaps it whole.
"""

import random as _random


class RouterStats:
    """Per-cluster counters the router keeps (the pool keeps the connection ones)."""

    __slots__ = ("rq_total", "rq_timeout", "rq_completed")

    def __init__(self, stats, cluster):
        scope = stats.scope(cluster=cluster)
        self.rq_total = scope.counter("cluster_upstream_rq", help="Requests routed to the cluster")
        self.rq_timeout = scope.counter("cluster_upstream_rq_timeout", help="Requests that hit the route timeout")
        self.rq_completed = scope.counter("cluster_upstream_rq_completed", help="Requests answered by the upstream")


class Runtime:
    """
    @ivar clock: the IReactorTime every timer uses.
    @ivar clusters: the ClusterManager (get(name) -> Cluster or None).
    @ivar stats: the StatsStore.
    @ivar random: a random.Random (seeded in tests).
    @ivar config: the MeshConfig this runtime was built from.
    """

    def __init__(self, clock, clusters, stats, random=None, config=None, reactor=None):
        self.clock = clock
        self.clusters = clusters
        self.stats = stats
        self.random = random if random is not None else _random.Random()
        self.config = config
        self.reactor = reactor
        self._routerStats = {}

    def routerStats(self, cluster):
        rs = self._routerStats.get(cluster)
        if rs is None:
            rs = self._routerStats[cluster] = RouterStats(self.stats, cluster)
        return rs
