"""
What every discovery source shares (issue 12, part 1): the context a source is made with.  The per-cluster sink
(IHostSetSink: last known set, staleness, counters, ``/clusters`` fields) lives here too (part 1 builds it).
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class SourceContext:
    """What IDiscoverySourceFactory.makeSource gets besides its config and sink."""

    reactor: object  # IReactorTime, IReactorTCP, IReactorThreads ...
    clusterName: str
    clusterProtocol: str
    stats: object  # the cluster's txmesh.stats.Scope
    registry: object = None  # the running registry client (IZooKeeperSession, IEtcdClient) or None
