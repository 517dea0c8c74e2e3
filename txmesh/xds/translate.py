"""
Envoy's v3 resources into the mesh.yaml shape (plain dicts and lists, as ``parseYAML`` gives them), so that the one
builder of the file (``txmesh.config.buildFromRaw``) validates them: one set of rules for the file and the control
plane.  docs/operations.md ("xDS", "What is translated") has the table.

Each ``translate*`` function takes one unpacked message and gives its mesh.yaml fragment, or raises
L{XdsResourceError} naming the resource and what txmesh cannot apply ("cluster foo: lb_policy MAGLEV: ...").  A
field is either mapped, listed as without effect on what txmesh does (``_IGNORED``), or refused: every set field of
every message is looked at (``ListFields``), so nothing that changes behaviour is dropped silently.  The route
configuration's messages are in L{txmesh.xds.translate_routes}, the listener's in L{txmesh.xds.translate_listeners}
(its HTTP filters in L{txmesh.xds.translate_filters}); this module has the clusters and endpoints, and the names
the rest of txmesh imports.
"""

from dataclasses import dataclass

from envoy.config.cluster.v3 import cluster_pb2
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2

from txmesh.xds.translate_common import (ENVOY_IDLE_TIMEOUT, Refused, XdsResourceError, check, commonHttpOptions,
                                         dataFile, duration, enumName, naming, tlsParams, unpack, wrapped)
from txmesh.xds.translate_listeners import TranslatedListener, translateListener
from txmesh.xds.translate_routes import TranslatedRoutes, translateRouteConfiguration

CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ENDPOINT = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
ROUTE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
# Envoy's order of application (CDS, EDS, LDS, RDS)
TYPE_URLS = (CLUSTER, ENDPOINT, LISTENER, ROUTE)

__all__ = ["CLUSTER", "ENDPOINT", "LISTENER", "ROUTE", "TYPE_URLS", "XdsResourceError", "TranslatedCluster",
           "TranslatedEndpoints", "TranslatedListener", "TranslatedRoutes", "translateCluster", "translateEndpoints",
           "translateListener", "translateRouteConfiguration", "resourceName"]

HTTP_PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
UPSTREAM_TLS_TYPE = "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"

# Envoy's defaults where txmesh's differ: set explicitly so a resource means what it means to Envoy
ENVOY_CONNECT_TIMEOUT = 5.0


def resourceName(typeUrl, message):
    """The name a resource is known by: ``name``, or a ClusterLoadAssignment's ``cluster_name``."""
    return message.cluster_name if typeUrl == ENDPOINT else message.name


# ---------------------------------------------------------------------------------------------------------------
# CDS
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TranslatedCluster:
    """
    @ivar raw: the ``clusters[]`` entry (without endpoints for an EDS cluster).
    @ivar edsName: the ClusterLoadAssignment an EDS cluster takes its endpoints from (``eds_cluster_config``'s
        ``service_name``, else the cluster's name); None for other types.
    """

    raw: dict
    edsName: str | None = None


_LB_POLICIES = {cluster_pb2.Cluster.ROUND_ROBIN: "weighted_round_robin",  # Envoy's round robin honours weights
                cluster_pb2.Cluster.LEAST_REQUEST: "least_request",
                cluster_pb2.Cluster.RANDOM: "random",
                cluster_pb2.Cluster.RING_HASH: "ring_hash",
                cluster_pb2.Cluster.MAGLEV: "maglev"}
_CLUSTER_FIELDS = ("name", "type", "eds_cluster_config", "connect_timeout", "lb_policy", "load_assignment",
                   "health_checks", "max_requests_per_connection", "circuit_breakers", "http2_protocol_options",
                   "http_protocol_options", "typed_extension_protocol_options", "outlier_detection",
                   "common_lb_config", "ring_hash_lb_config", "maglev_lb_config", "least_request_lb_config",
                   "round_robin_lb_config", "transport_socket", "dns_refresh_rate", "respect_dns_ttl",
                   "dns_lookup_family", "dns_failure_refresh_rate")
# no effect on what txmesh does: statistics names, metadata nothing reads, timers of Envoy's own bookkeeping
_CLUSTER_IGNORED = ("alt_stat_name", "metadata", "track_cluster_stats", "cleanup_interval", "wait_for_warm_on_init",
                    "per_connection_buffer_limit_bytes")
_DNS_FAMILIES = {cluster_pb2.Cluster.AUTO: "auto", cluster_pb2.Cluster.V4_ONLY: "v4_only",
                 cluster_pb2.Cluster.V6_ONLY: "v6_only", cluster_pb2.Cluster.V4_PREFERRED: "v4_preferred",
                 cluster_pb2.Cluster.ALL: "all"}


def translateCluster(cluster):
    """A Cluster as a L{TranslatedCluster}.  @raise XdsResourceError: what txmesh cannot apply."""
    return naming("cluster", cluster.name, _cluster, cluster)


def _cluster(c):
    check(c, "", _CLUSTER_FIELDS, _CLUSTER_IGNORED)
    raw = {"name": c.name, "connect_timeout": duration(c.connect_timeout) if c.HasField("connect_timeout")
           else ENVOY_CONNECT_TIMEOUT, "idle_timeout": ENVOY_IDLE_TIMEOUT}
    if c.lb_policy not in _LB_POLICIES:
        raise Refused("lb_policy %s: txmesh balances with ROUND_ROBIN, LEAST_REQUEST, RANDOM, RING_HASH or MAGLEV"
                      % (cluster_pb2.Cluster.LbPolicy.Name(c.lb_policy),))
    raw["lb_policy"] = _LB_POLICIES[c.lb_policy]
    lbConfig = _lbConfig(c)
    if lbConfig:
        raw["lb_config"] = lbConfig
    if c.HasField("max_requests_per_connection"):
        raw["max_requests_per_connection"] = c.max_requests_per_connection.value
    raw["protocol"] = _upstreamProtocol(c, raw)
    if c.HasField("circuit_breakers"):
        raw["circuit_breakers"] = _circuitBreakers(c.circuit_breakers)
    if c.HasField("outlier_detection"):
        raw["outlier_detection"] = _outlierDetection(c.outlier_detection)
    if c.HasField("common_lb_config"):
        check(c.common_lb_config, "common_lb_config", ("healthy_panic_threshold",))
        if c.common_lb_config.HasField("healthy_panic_threshold"):
            raw["common_lb_config"] = {"healthy_panic_threshold": c.common_lb_config.healthy_panic_threshold.value}
    if c.health_checks:
        raw["health_checks"] = [_healthCheck(h, "health_checks[%d]" % (i,), raw["protocol"])
                                for i, h in enumerate(c.health_checks)]
    if c.HasField("transport_socket"):
        raw["tls"] = _upstreamTLS(c.transport_socket)
    kind = cluster_pb2.Cluster.DiscoveryType.Name(c.type)
    edsName = None
    dnsKeys = ("dns_refresh_rate", "respect_dns_ttl", "dns_lookup_family", "dns_failure_refresh_rate")
    if c.type not in (cluster_pb2.Cluster.STRICT_DNS, cluster_pb2.Cluster.LOGICAL_DNS):
        for key in dnsKeys:
            if c.HasField(key) if key != "dns_lookup_family" and key != "respect_dns_ttl" else getattr(c, key):
                raise Refused("%s: only for STRICT_DNS and LOGICAL_DNS clusters" % (key,))
    if c.type == cluster_pb2.Cluster.EDS:
        if c.HasField("load_assignment"):
            raise Refused("type EDS takes its endpoints from EDS, not load_assignment")
        check(c.eds_cluster_config, "eds_cluster_config", ("service_name", "eds_config"))
        edsName = c.eds_cluster_config.service_name or c.name
    elif c.HasField("eds_cluster_config"):
        raise Refused("eds_cluster_config: only for type EDS (this cluster is %s)" % (kind,))
    elif c.type == cluster_pb2.Cluster.STATIC:
        raw["endpoints"] = _endpoints(c.load_assignment, "load_assignment") if c.HasField("load_assignment") else []
    elif c.type in (cluster_pb2.Cluster.STRICT_DNS, cluster_pb2.Cluster.LOGICAL_DNS):
        raw["discovery"] = _dnsDiscovery(c)
    else:
        raise Refused("type %s: txmesh has STATIC, STRICT_DNS, LOGICAL_DNS and EDS clusters" % (kind,))
    return TranslatedCluster(raw, edsName)


def _lbConfig(c):
    out = {}
    if c.HasField("ring_hash_lb_config"):
        rh = c.ring_hash_lb_config
        check(rh, "ring_hash_lb_config", ("minimum_ring_size", "maximum_ring_size", "hash_function"))
        if rh.hash_function != cluster_pb2.Cluster.RingHashLbConfig.XX_HASH:
            raise Refused("ring_hash_lb_config.hash_function: txmesh hashes with XX_HASH only")
        out.update(wrapped(rh, ("minimum_ring_size", "maximum_ring_size")))
        _policyOnly(c, "ring_hash_lb_config", cluster_pb2.Cluster.RING_HASH)
    if c.HasField("maglev_lb_config"):
        check(c.maglev_lb_config, "maglev_lb_config", ("table_size",))
        out.update(wrapped(c.maglev_lb_config, ("table_size",)))
        _policyOnly(c, "maglev_lb_config", cluster_pb2.Cluster.MAGLEV)
    if c.HasField("least_request_lb_config"):
        lr = c.least_request_lb_config
        check(lr, "least_request_lb_config", ("choice_count", "active_request_bias", "slow_start_config"))
        out.update(wrapped(lr, ("choice_count",)))
        if lr.HasField("active_request_bias"):
            check(lr.active_request_bias, "least_request_lb_config.active_request_bias", ("default_value",))
            out["active_request_bias"] = lr.active_request_bias.default_value
        if lr.HasField("slow_start_config"):
            out["slow_start"] = _slowStart(lr.slow_start_config, "least_request_lb_config.slow_start_config")
        _policyOnly(c, "least_request_lb_config", cluster_pb2.Cluster.LEAST_REQUEST)
    if c.HasField("round_robin_lb_config"):
        rr = c.round_robin_lb_config
        check(rr, "round_robin_lb_config", ("slow_start_config",))
        if rr.HasField("slow_start_config"):
            out["slow_start"] = _slowStart(rr.slow_start_config, "round_robin_lb_config.slow_start_config")
        _policyOnly(c, "round_robin_lb_config", cluster_pb2.Cluster.ROUND_ROBIN)
    return out


def _policyOnly(c, key, policy):
    if c.lb_policy != policy:
        raise Refused("%s: only for lb_policy %s" % (key, cluster_pb2.Cluster.LbPolicy.Name(policy)))


def _slowStart(s, path):
    check(s, path, ("slow_start_window", "aggression", "min_weight_percent"))
    out = {"window": duration(s.slow_start_window)}
    if s.HasField("aggression"):
        check(s.aggression, path + ".aggression", ("default_value",))
        out["aggression"] = s.aggression.default_value
    if s.HasField("min_weight_percent"):
        out["min_weight_percent"] = s.min_weight_percent.value
    return out


def _upstreamProtocol(c, raw):
    """
    http1 or http2 from ``typed_extension_protocol_options`` (HttpProtocolOptions' explicit_http_config) or the
    deprecated ``http2_protocol_options``/``http_protocol_options``; its common options set the pool's keys.
    """
    protocol = "http1"
    if c.HasField("http2_protocol_options"):
        protocol = "http2"
        _http2Options(c.http2_protocol_options, "http2_protocol_options", raw)
    if c.HasField("http_protocol_options"):
        check(c.http_protocol_options, "http_protocol_options", ())
    for key, anyMessage in c.typed_extension_protocol_options.items():
        path = "typed_extension_protocol_options[%s]" % (key,)
        if key != HTTP_PROTOCOL_OPTIONS:
            raise Refused("%s: txmesh knows %s only" % (path, HTTP_PROTOCOL_OPTIONS))
        options = unpack(anyMessage, http_protocol_options_pb2.HttpProtocolOptions, path)
        check(options, path, ("explicit_http_config", "common_http_protocol_options"))
        if not options.HasField("explicit_http_config"):
            raise Refused("%s: txmesh needs explicit_http_config (it does not choose the protocol per request)"
                          % (path,))
        explicit = options.explicit_http_config
        check(explicit, path + ".explicit_http_config", ("http_protocol_options", "http2_protocol_options"))
        if explicit.HasField("http2_protocol_options"):
            protocol = "http2"
            _http2Options(explicit.http2_protocol_options, path + ".explicit_http_config.http2_protocol_options",
                          raw)
        else:
            protocol = "http1"
            check(explicit.http_protocol_options, path + ".explicit_http_config.http_protocol_options", ())
        if options.HasField("common_http_protocol_options"):
            commonHttpOptions(options.common_http_protocol_options, path + ".common_http_protocol_options", raw,
                               {"idle_timeout": "idle_timeout",
                                "max_requests_per_connection": "max_requests_per_connection"})
    if protocol == "http2" and any(h.HasField("grpc_health_check") for h in c.health_checks):
        protocol = "grpc"  # the same HTTP/2 client; a gRPC health check needs a gRPC cluster
    return protocol


def _http2Options(options, path, raw):
    check(options, path, ("max_concurrent_streams",))
    if options.HasField("max_concurrent_streams"):
        raw["max_concurrent_streams"] = options.max_concurrent_streams.value


_THRESHOLD_KEYS = ("max_connections", "max_pending_requests", "max_requests", "max_retries")


def _circuitBreakers(cb):
    check(cb, "circuit_breakers", ("thresholds",))
    out = {}
    for i, t in enumerate(cb.thresholds):
        path = "circuit_breakers.thresholds[%d]" % (i,)
        check(t, path, ("priority",) + _THRESHOLD_KEYS)
        if t.priority != 0:  # HIGH: only routes of priority HIGH use them, and txmesh refuses those routes
            continue
        out.update(wrapped(t, _THRESHOLD_KEYS))
    return out


_OUTLIER_KEYS = (
    "consecutive_5xx", "max_ejection_percent", "enforcing_consecutive_5xx", "enforcing_success_rate",
    "success_rate_minimum_hosts", "success_rate_request_volume", "success_rate_stdev_factor",
    "consecutive_gateway_failure", "enforcing_consecutive_gateway_failure", "consecutive_local_origin_failure",
    "enforcing_consecutive_local_origin_failure", "enforcing_local_origin_success_rate",
    "failure_percentage_threshold", "enforcing_failure_percentage", "enforcing_failure_percentage_local_origin",
    "failure_percentage_minimum_hosts", "failure_percentage_request_volume", "always_eject_one_host")
_OUTLIER_DURATIONS = ("interval", "base_ejection_time", "max_ejection_time", "max_ejection_time_jitter")


def _outlierDetection(od):
    check(od, "outlier_detection", _OUTLIER_KEYS + _OUTLIER_DURATIONS + (
        "split_external_local_origin_errors", "successful_active_health_check_uneject_host"))
    if od.HasField("successful_active_health_check_uneject_host") and \
            not od.successful_active_health_check_uneject_host.value:
        raise Refused("outlier_detection.successful_active_health_check_uneject_host false: txmesh always "
                      "un-ejects a host that passes its active health check")
    out = wrapped(od, _OUTLIER_KEYS)
    for key in _OUTLIER_DURATIONS:
        if od.HasField(key):
            out[key] = duration(getattr(od, key))
    if od.split_external_local_origin_errors:
        out["split_external_local_origin_errors"] = True
    return out


_HEALTH_KEYS = ("timeout", "interval", "initial_jitter", "interval_jitter", "interval_jitter_percent",
                "unhealthy_threshold", "healthy_threshold", "no_traffic_interval", "unhealthy_interval",
                "http_health_check", "tcp_health_check", "grpc_health_check")
_HEALTH_DURATIONS = ("timeout", "interval", "initial_jitter", "interval_jitter", "no_traffic_interval",
                     "unhealthy_interval")


def _healthCheck(h, path, protocol):
    check(h, path, _HEALTH_KEYS)
    out = {key: duration(getattr(h, key)) for key in _HEALTH_DURATIONS if h.HasField(key)}
    if h.interval_jitter_percent:
        out["interval_jitter_percent"] = h.interval_jitter_percent
    out.update(wrapped(h, ("unhealthy_threshold", "healthy_threshold")))
    kind = h.WhichOneof("health_checker")
    if kind == "http_health_check":
        http = h.http_health_check
        hPath = path + ".http_health_check"
        check(http, hPath, ("host", "path", "request_headers_to_add", "expected_statuses", "method"))
        out["type"] = "http"
        if http.host:
            out["host"] = http.host
        if http.path:
            out["path"] = http.path
        if http.method:
            out["method"] = enumName(http, "method")
        if http.expected_statuses:
            out["expected_statuses"] = [{"start": r.start, "end": r.end} for r in http.expected_statuses]
        if http.request_headers_to_add:
            out["request_headers"] = _healthHeaders(http.request_headers_to_add, hPath + ".request_headers_to_add")
    elif kind == "tcp_health_check":
        tcp = h.tcp_health_check
        tPath = path + ".tcp_health_check"
        check(tcp, tPath, ("send", "receive"))
        out["type"] = "tcp"
        if tcp.HasField("send"):
            out["send"] = _payload(tcp.send, tPath + ".send")
        if len(tcp.receive) > 1:
            raise Refused("%s.receive: txmesh expects one payload" % (tPath,))
        if tcp.receive:
            out["expect"] = _payload(tcp.receive[0], tPath + ".receive[0]")
    elif kind == "grpc_health_check":
        grpc = h.grpc_health_check
        check(grpc, path + ".grpc_health_check", ("service_name", "authority"))
        out["type"] = "grpc"
        if grpc.service_name:
            out["service_name"] = grpc.service_name
        if grpc.authority:
            out["authority"] = grpc.authority
    else:
        raise Refused("%s: txmesh checks with http_health_check, tcp_health_check or grpc_health_check" % (path,))
    return out


def _healthHeaders(options, path):
    out = {}
    for i, o in enumerate(options):
        check(o, "%s[%d]" % (path, i), ("header",))
        out[o.header.key] = o.header.value
    return out


def _payload(p, path):
    check(p, path, ("text",))
    return {"hex": p.text}


def _upstreamTLS(socket):
    path = "transport_socket"
    check(socket, path, ("name", "typed_config"))
    if not socket.HasField("typed_config"):
        raise Refused("%s: needs typed_config (an UpstreamTlsContext)" % (path,))
    ctx = unpack(socket.typed_config, tls_pb2.UpstreamTlsContext, path + ".typed_config")
    path += ".typed_config"
    check(ctx, path, ("sni", "common_tls_context"))
    out = {}
    if ctx.sni:
        out["sni"] = ctx.sni
    common = ctx.common_tls_context
    cPath = path + ".common_tls_context"
    check(common, cPath, ("tls_params", "tls_certificates", "validation_context", "alpn_protocols"))
    out.update(tlsParams(common, cPath, "_"))
    if len(common.tls_certificates) > 1:
        raise Refused("%s.tls_certificates: txmesh presents one certificate" % (cPath,))
    for cert in common.tls_certificates:
        tPath = cPath + ".tls_certificates[0]"
        check(cert, tPath, ("certificate_chain", "private_key"))
        out["cert_chain"] = dataFile(cert.certificate_chain, tPath + ".certificate_chain")
        out["private_key"] = dataFile(cert.private_key, tPath + ".private_key")
    if not common.HasField("validation_context"):
        raise Refused("%s: no validation_context: Envoy would not verify the server's certificate, txmesh always "
                      "does; give validation_context.trusted_ca" % (cPath,))
    v = common.validation_context
    vPath = cPath + ".validation_context"
    check(v, vPath, ("trusted_ca", "match_typed_subject_alt_names"))
    if not v.HasField("trusted_ca"):
        raise Refused("%s.trusted_ca: required (Envoy verifies nothing without it, txmesh always verifies)" % (vPath,))
    out["ca"] = dataFile(v.trusted_ca, vPath + ".trusted_ca")
    sans = []
    for i, m in enumerate(v.match_typed_subject_alt_names):
        sPath = "%s.match_typed_subject_alt_names[%d]" % (vPath, i)
        check(m, sPath, ("san_type", "matcher"))
        kind = {"DNS": "dns", "URI": "uri"}.get(enumName(m, "san_type"))
        if kind is None:
            raise Refused("%s.san_type: txmesh matches DNS and URI names" % (sPath,))
        sans.append({kind: _stringMatch(m.matcher, sPath + ".matcher", ("exact", "prefix", "suffix"))})
    if sans:
        out["match_subject_alt_names"] = sans
    if common.alpn_protocols:
        out["alpn"] = list(common.alpn_protocols)
    return out


def _stringMatch(m, path, kinds):
    check(m, path, kinds)
    kind = m.WhichOneof("match_pattern")
    if kind not in kinds:
        raise Refused("%s: txmesh matches %s" % (path, ", ".join(kinds)))
    value = getattr(m, kind)
    return value if kind == "exact" else {kind: value}


def _dnsDiscovery(c):
    d = {"mode": "strict" if c.type == cluster_pb2.Cluster.STRICT_DNS else "logical",
         "hosts": [e["address"] for e in _endpoints(c.load_assignment, "load_assignment", dns=True)],
         "lookup_family": _DNS_FAMILIES[c.dns_lookup_family],
         "refresh_rate": duration(c.dns_refresh_rate) if c.HasField("dns_refresh_rate") else 5.0,
         "respect_dns_ttl": c.respect_dns_ttl}
    if c.HasField("dns_failure_refresh_rate"):
        f = c.dns_failure_refresh_rate
        check(f, "dns_failure_refresh_rate", ("base_interval", "max_interval"))
        d["failure_refresh_rate"] = {"base_interval": duration(f.base_interval)}
        if f.HasField("max_interval"):
            d["failure_refresh_rate"]["max_interval"] = duration(f.max_interval)
    return {"type": "dns", **d}


# ---------------------------------------------------------------------------------------------------------------
# EDS
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TranslatedEndpoints:
    """
    @ivar endpoints: the ``endpoints`` list of the clusters that name this assignment.
    @ivar overprovisioningFactor: the assignment's ``policy.overprovisioning_factor`` (the cluster's
        ``common_lb_config.overprovisioning_factor``), or None.
    """

    endpoints: list
    overprovisioningFactor: int | None = None


# health_status -> healthy (UNKNOWN is healthy, as in Envoy; DEGRADED is refused: txmesh does not balance on it)
_HEALTHY = {0: True, 1: True, 2: False, 3: False, 4: False}


def translateEndpoints(assignment):
    """A ClusterLoadAssignment as L{TranslatedEndpoints}.  @raise XdsResourceError: what txmesh cannot apply."""
    return naming("cluster_load_assignment", assignment.cluster_name, _assignment, assignment)


def _assignment(assignment):
    check(assignment, "", ("cluster_name", "endpoints", "policy"))
    factor = None
    if assignment.HasField("policy"):
        check(assignment.policy, "policy", ("overprovisioning_factor",))
        if assignment.policy.HasField("overprovisioning_factor"):
            factor = assignment.policy.overprovisioning_factor.value
    return TranslatedEndpoints(_endpoints(assignment, ""), factor)


def _endpoints(assignment, path, dns=False):
    """The mesh.yaml ``endpoints`` of a ClusterLoadAssignment (``dns``: names to resolve, one per locality)."""
    out = []
    for i, group in enumerate(assignment.endpoints):
        gPath = _join(path, "endpoints[%d]" % (i,))
        # load_balancing_weight of a locality: Envoy uses it only with locality_weighted_lb_config, refused above
        check(group, gPath, ("locality", "lb_endpoints", "priority", "load_balancing_weight"), ("metadata",))
        locality = "/".join(p for p in (group.locality.region, group.locality.zone, group.locality.sub_zone) if p)
        for j, lb in enumerate(group.lb_endpoints):
            ePath = "%s.lb_endpoints[%d]" % (gPath, j)
            check(lb, ePath, ("endpoint", "health_status", "load_balancing_weight"), ("metadata",))
            check(lb.endpoint, ePath + ".endpoint", ("address",), ("hostname",))
            address = lb.endpoint.address
            check(address, ePath + ".endpoint.address", ("socket_address",))
            sa = address.socket_address
            check(sa, ePath + ".endpoint.address.socket_address", ("address", "port_value", "protocol"))
            if sa.protocol != 0:
                raise Refused("%s.endpoint.address.socket_address.protocol: txmesh connects over TCP" % (ePath,))
            host = "[%s]" % (sa.address,) if ":" in sa.address else sa.address
            entry = {"address": "%s:%d" % (host, sa.port_value)}
            if dns:
                out.append(entry)
                continue
            if lb.HasField("load_balancing_weight"):
                entry["weight"] = lb.load_balancing_weight.value
            if group.priority:
                entry["priority"] = group.priority
            if locality:
                entry["locality"] = locality
            if lb.health_status not in _HEALTHY:
                raise Refused("%s.health_status %s: txmesh does not balance over degraded hosts" % (
                    ePath, enumName(lb, "health_status")))
            if not _HEALTHY[lb.health_status]:
                entry["healthy"] = False
            out.append(entry)
    return out


def _join(path, key):
    return path + "." + key if path else key
