"""
The bootstrap's ``dynamic_resources`` block (Envoy's bootstrap ``dynamic_resources`` with ``ads_config``): where the
control plane is and which resource types come from it.  Static ``listeners`` and ``clusters`` in mesh.yaml stay
(Envoy's static_resources); the control plane's cluster is one of the static clusters.
"""

from dataclasses import dataclass

API_TYPES = ("GRPC", "REST")


@dataclass(frozen=True, slots=True)
class XdsConfig:
    """
    @ivar apiType: ``GRPC`` (one aggregated stream, ADS, state of the world) or ``REST`` (REST-JSON polling).
    @ivar cluster: the static cluster the control plane is reached through (its hosts, TLS, connect timeout).
    @ivar lds: listeners come from the control plane (besides the static ones).
    @ivar cds: clusters come from the control plane (besides the static ones).
    @ivar refreshDelay: REST: the poll interval (seconds).
    @ivar requestTimeout: REST: one poll's bound (seconds).
    @ivar initialFetchTimeout: how long the first resources of a type are waited for before serving what is there.
    @ivar reconnectBase: the first reconnect delay after a stream ends (seconds; full jitter, doubling).
    @ivar reconnectMax: the largest reconnect delay (seconds).
    """

    apiType: str = "GRPC"
    cluster: str = ""
    lds: bool = True
    cds: bool = True
    refreshDelay: float = 1.0
    requestTimeout: float = 5.0
    initialFetchTimeout: float = 15.0
    reconnectBase: float = 0.5
    reconnectMax: float = 30.0
