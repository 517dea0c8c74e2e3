"""
Envoy v3 resources for the xDS tests, built as a control plane sends them: JSON (proto3's mapping) parsed into the
``xds-protos`` messages with ``json_format``, and a few built field by field.
"""

from google.protobuf import json_format
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2

HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER = {"name": "envoy.filters.http.router",
          "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}


def cluster(name="app", **fields):
    doc = {"name": name, "type": "EDS", "connect_timeout": "0.25s", "eds_cluster_config": {"eds_config": {"ads": {}}}}
    doc.update(fields)
    return json_format.ParseDict(doc, cluster_pb2.Cluster())


def staticCluster(name, *addresses, **fields):
    doc = {"name": name, "type": "STATIC", "load_assignment": {"cluster_name": name, "endpoints": [
        {"lb_endpoints": [endpoint(a) for a in addresses]}]}}
    doc.update(fields)
    return json_format.ParseDict(doc, cluster_pb2.Cluster())


def endpoint(address, **fields):
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    doc = {"endpoint": {"address": {"socket_address": {"address": host, "port_value": int(port)}}}}
    doc.update(fields)
    return doc


def assignment(name, *addresses, groups=None, **fields):
    doc = {"cluster_name": name, "endpoints": groups if groups is not None else [
        {"lb_endpoints": [endpoint(a) for a in addresses]}]}
    doc.update(fields)
    return json_format.ParseDict(doc, endpoint_pb2.ClusterLoadAssignment())


def hcm(rds=None, routeConfig=None, filters=None, **fields):
    doc = {"@type": HCM, "stat_prefix": "ingress", "http_filters": filters if filters is not None else [ROUTER]}
    if rds is not None:
        doc["rds"] = {"route_config_name": rds, "config_source": {"ads": {}}}
    if routeConfig is not None:
        doc["route_config"] = routeConfig
    doc.update(fields)
    return doc


def listener(name="web", port=10000, rds="routes", routeConfig=None, hcmFields=None, **fields):
    doc = {"name": name, "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
           "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                           "typed_config": hcm(rds if routeConfig is None else None, routeConfig,
                                                               **(hcmFields or {}))}]}]}
    doc.update(fields)
    return json_format.ParseDict(doc, listener_pb2.Listener())


def routeConfigDoc(name="routes", cluster="app", routes=None, **fields):
    doc = {"name": name, "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": routes if routes is not None
                                            else [{"match": {"prefix": "/"}, "route": {"cluster": cluster}}]}]}
    doc.update(fields)
    return doc


def routeConfig(name="routes", cluster="app", routes=None, **fields):
    return json_format.ParseDict(routeConfigDoc(name, cluster, routes, **fields), route_pb2.RouteConfiguration())
