"""
The bootstrap's ``dynamic_resources`` block (Envoy's bootstrap ``dynamic_resources`` with ``ads_config``): where the
control plane is and which resource types come from it.  Static ``listeners`` and ``clusters`` in mesh.yaml stay
(Envoy's static_resources); the control plane's cluster is one of the static clusters.
"""

import importlib.util
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


KEYS = ("api_type", "lds", "cds", "refresh_delay", "request_timeout", "initial_fetch_timeout", "reconnect")
# the protocol the control plane's static cluster must speak, by api_type
CLUSTER_PROTOCOLS = {"GRPC": "grpc", "REST": "http1"}


def buildDynamicResources(r, raw, clusters=()):
    """
    The ``dynamic_resources`` block as an XdsConfig, or None when absent.  ``clusters`` are the static clusters
    (ClusterConfig) the block's ``cluster`` must name: ``protocol: grpc`` for GRPC, ``http1`` for REST, with fixed
    ``endpoints`` (the control plane cannot be found through itself).
    @raise ConfigError: file, line and key path.
    """
    if raw.get("dynamic_resources") is None:
        return None
    path = "dynamic_resources"
    m = r.mapping(raw.get(path), path, required=("cluster",), optional=KEYS)  # KEYS: the optional ones
    apiType = r.get(m, path, "api_type", str, "GRPC")
    if apiType not in API_TYPES:
        raise r.error("must be GRPC (ADS, state of the world) or REST (REST-JSON polling), not '%s'" % (apiType,),
                      path + ".api_type")
    if importlib.util.find_spec("envoy") is None or importlib.util.find_spec("envoy.service.discovery.v3") is None:
        raise r.error("needs Envoy's v3 API messages: pip install 'txmesh[xds]'", path)
    clusterName = r.get(m, path, "cluster", str)
    byName = {c.name: c for c in clusters}
    cluster = byName.get(clusterName)
    if cluster is None:
        raise r.error("no static cluster named '%s' (the control plane is reached through one of mesh.yaml's "
                      "clusters)" % (clusterName,), path + ".cluster")
    want = CLUSTER_PROTOCOLS[apiType]
    if cluster.protocol != want:
        raise r.error("cluster '%s' has protocol %s; api_type %s needs protocol %s" % (
            clusterName, cluster.protocol, apiType, want), path + ".cluster")
    if cluster.discovery is not None or not cluster.endpoints:
        raise r.error("cluster '%s' must list its endpoints (the control plane is not discovered)" % (clusterName,),
                      path + ".cluster")
    lds = r.get(m, path, "lds", bool, True)
    cds = r.get(m, path, "cds", bool, True)
    if not (lds or cds):
        raise r.error("asks for nothing: set lds, cds or both", path)
    durations = {}
    for key, default, low in (("refresh_delay", 1.0, 0.01), ("request_timeout", 5.0, 0.01),
                              ("initial_fetch_timeout", 15.0, 0.0)):
        durations[key] = value = r.duration(m, path, key, default)
        if value < low or value > 3600:
            raise r.error("must be between %gs and 1h" % (low,), "%s.%s" % (path, key))
    rPath = path + ".reconnect"
    rm = r.mapping(m.get("reconnect"), rPath, optional=("base_interval", "max_interval"))
    base = r.duration(rm, rPath, "base_interval", 0.5)
    top = r.duration(rm, rPath, "max_interval", 30.0)
    if not 0.001 <= base <= 3600:
        raise r.error("must be between 1ms and 1h", rPath + ".base_interval")
    if not base <= top <= 3600:
        raise r.error("must be between base_interval (%gs) and 1h" % (base,), rPath + ".max_interval")
    return XdsConfig(apiType=apiType, cluster=clusterName, lds=lds, cds=cds, refreshDelay=durations["refresh_delay"],
                     requestTimeout=durations["request_timeout"],
                     initialFetchTimeout=durations["initial_fetch_timeout"], reconnectBase=base, reconnectMax=top)
