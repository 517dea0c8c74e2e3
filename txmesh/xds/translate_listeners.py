"""
LDS: Envoy's v3 Listener (one filter chain, the http_connection_manager, its HTTP filters and a DownstreamTlsContext)
into mesh.yaml's ``listeners[]`` entry.  Part of the translation txmesh.xds.translate describes: every set field is
mapped, known to have no effect, or refused naming its field path.
"""

from dataclasses import dataclass

from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2

from txmesh.xds.translate_common import (ENVOY_IDLE_TIMEOUT, Refused, check, commonHttpOptions, dataFile, duration,
                                         naming, tlsParams, unpack)
from txmesh.xds.translate_filters import HTTP_FILTERS
from txmesh.xds.translate_routes import TranslatedRoutes, translateRouteConfigurationBody

HCM_TYPE = "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER_TYPE = "envoy.extensions.filters.http.router.v3.Router"


@dataclass(frozen=True, slots=True)
class TranslatedListener:
    """
    @ivar raw: the ``listeners[]`` entry; an RDS listener's has no ``route_config`` yet.
    @ivar rdsName: the RouteConfiguration an RDS listener waits for (``rds.route_config_name``), or None when
        its routes are inline.
    @ivar routes: the inline routes' L{TranslatedRoutes} (``raw["route_config"]`` is its ``raw``), or None.
    """

    raw: dict
    rdsName: str | None = None
    routes: TranslatedRoutes | None = None


_LISTENER_FIELDS = ("name", "address", "filter_chains", "traffic_direction", "per_connection_buffer_limit_bytes")
_LISTENER_IGNORED = ("stat_prefix", "metadata")
_CODECS = {hcm_pb2.HttpConnectionManager.AUTO: "http1", hcm_pb2.HttpConnectionManager.HTTP1: "http1",
           hcm_pb2.HttpConnectionManager.HTTP2: "http2"}
_HCM_FIELDS = ("codec_type", "rds", "route_config", "http_filters", "stream_idle_timeout", "request_headers_timeout",
               "common_http_protocol_options", "max_request_headers_kb", "use_remote_address", "xff_num_trusted_hops",
               "internal_address_config", "normalize_path", "merge_slashes", "path_with_escaped_slashes_action",
               "http2_protocol_options")
_HCM_IGNORED = ("stat_prefix",)
_ESCAPED_SLASHES = {0: "keep_unchanged", 1: "keep_unchanged", 2: "reject_request", 3: "unescape_and_redirect",
                    4: "unescape_and_forward"}


def translateListener(listener):
    """A Listener as a L{TranslatedListener}.  @raise XdsResourceError: what txmesh cannot apply."""
    return naming("listener", listener.name, _listener, listener)


def _listener(lst):
    check(lst, "", _LISTENER_FIELDS, _LISTENER_IGNORED)
    raw = {"name": lst.name, "address": _address(lst.address)}
    if lst.traffic_direction:
        raw["traffic_direction"] = {1: "inbound", 2: "outbound"}[lst.traffic_direction]
    limits = {"idle_timeout": ENVOY_IDLE_TIMEOUT}
    if lst.HasField("per_connection_buffer_limit_bytes"):
        limits["buffer_limit"] = lst.per_connection_buffer_limit_bytes.value
    if len(lst.filter_chains) != 1:
        raise Refused("filter_chains: txmesh serves one filter chain per listener, got %d" % (
            len(lst.filter_chains),))
    chain = lst.filter_chains[0]
    check(chain, "filter_chains[0]", ("filters", "filter_chain_match", "transport_socket"), ("name", "metadata"))
    if chain.HasField("transport_socket"):
        raw["tls"] = _downstreamTLS(chain.transport_socket, "filter_chains[0].transport_socket")
    if chain.HasField("filter_chain_match") and chain.filter_chain_match.ListFields():
        raise Refused("filter_chains[0].filter_chain_match: txmesh does not choose chains by connection")
    if len(chain.filters) != 1:
        raise Refused("filter_chains[0].filters: txmesh needs exactly one network filter, "
                      "envoy.filters.network.http_connection_manager (got %d)" % (len(chain.filters),))
    f = chain.filters[0]
    fPath = "filter_chains[0].filters[0]"
    check(f, fPath, ("name", "typed_config"))
    typeName = f.typed_config.type_url.rpartition("/")[2]
    if typeName != HCM_TYPE:
        raise Refused("%s: network filter '%s' (%s): txmesh has no such filter (only the http_connection_manager)"
                      % (fPath, f.name, typeName or "no typed_config"))
    hcm = unpack(f.typed_config, hcm_pb2.HttpConnectionManager, fPath + ".typed_config")
    rdsName, routes = _httpConnectionManager(hcm, fPath + ".typed_config", raw, limits)
    raw["limits"] = limits
    return TranslatedListener(raw, rdsName, routes)


def _address(address):
    check(address, "address", ("socket_address", "pipe"))
    if address.HasField("pipe"):
        check(address.pipe, "address.pipe", ("path",))
        return "unix:%s" % (address.pipe.path.replace(":", "\\:"),)
    sa = address.socket_address
    check(sa, "address.socket_address", ("address", "port_value", "protocol", "ipv4_compat"))
    if sa.protocol != 0:
        raise Refused("address.socket_address.protocol: txmesh listens on TCP")
    if ":" in sa.address:
        return "tcp6:%d:interface=%s" % (sa.port_value, sa.address.replace(":", "\\:"))
    return "tcp:%d:interface=%s" % (sa.port_value, sa.address)


def _httpConnectionManager(hcm, path, raw, limits):
    check(hcm, path, _HCM_FIELDS, _HCM_IGNORED)
    if hcm.codec_type not in _CODECS:
        raise Refused("%s.codec_type %s: txmesh serves AUTO (as HTTP/1.1), HTTP1 and HTTP2" % (
            path, hcm_pb2.HttpConnectionManager.CodecType.Name(hcm.codec_type)))
    raw["protocol"] = _CODECS[hcm.codec_type]
    if hcm.HasField("http2_protocol_options"):
        h2 = hcm.http2_protocol_options
        check(h2, path + ".http2_protocol_options", ("max_concurrent_streams",))
        if raw["protocol"] != "http2":
            raise Refused("%s.http2_protocol_options: only with codec_type HTTP2" % (path,))
        if h2.HasField("max_concurrent_streams"):
            raw["http2"] = {"max_concurrent_streams": h2.max_concurrent_streams.value}
    raw["use_remote_address"] = hcm.use_remote_address.value
    raw["xff_num_trusted_hops"] = hcm.xff_num_trusted_hops
    if hcm.HasField("internal_address_config"):
        check(hcm.internal_address_config, path + ".internal_address_config", ("cidr_ranges",))
        raw["internal_address_config"] = {"cidr_ranges": [
            "%s/%d" % (c.address_prefix, c.prefix_len.value) for c in hcm.internal_address_config.cidr_ranges]}
    # Envoy's path defaults (none of it on) where txmesh's are on
    raw["normalize_path"] = hcm.normalize_path.value
    raw["merge_slashes"] = hcm.merge_slashes
    raw["path_with_escaped_slashes_action"] = _ESCAPED_SLASHES[hcm.path_with_escaped_slashes_action]
    raw["path_parameters"] = "keep"
    if hcm.HasField("stream_idle_timeout"):
        limits["stream_idle_timeout"] = duration(hcm.stream_idle_timeout)
    if hcm.HasField("request_headers_timeout"):
        limits["request_headers_timeout"] = duration(hcm.request_headers_timeout)
    if hcm.HasField("max_request_headers_kb"):
        limits["max_header_bytes"] = hcm.max_request_headers_kb.value * 1024
    if hcm.HasField("common_http_protocol_options"):
        commonHttpOptions(hcm.common_http_protocol_options, path + ".common_http_protocol_options", limits,
                           {"idle_timeout": "idle_timeout", "max_headers_count": "max_headers"})
    raw["filters"] = _httpFilters(hcm.http_filters, path + ".http_filters")
    if hcm.HasField("rds"):
        check(hcm.rds, path + ".rds", ("route_config_name", "config_source"))
        if not hcm.rds.route_config_name:
            raise Refused("%s.rds.route_config_name: required" % (path,))
        return hcm.rds.route_config_name, None
    if not hcm.HasField("route_config"):
        raise Refused("%s: needs rds or route_config" % (path,))
    routes = translateRouteConfigurationBody(hcm.route_config, path + ".route_config")
    raw["route_config"] = routes.raw
    return None, routes


def _httpFilters(filters, path):
    """
    The HCM's http_filters: those txmesh has (txmesh.xds.translate_filters), the router last (txmesh's chain ends
    with its own); any other refused by name and type.
    """
    if not filters:
        raise Refused("%s: the router filter is required (last)" % (path,))
    out = []
    for i, f in enumerate(filters):
        fPath = "%s[%d]" % (path, i)
        check(f, fPath, ("name", "typed_config"))
        typeName = f.typed_config.type_url.rpartition("/")[2]
        if typeName == ROUTER_TYPE:
            if i != len(filters) - 1:
                raise Refused("%s: the router must be the last http filter" % (fPath,))
            router = unpack(f.typed_config, router_pb2.Router, fPath + ".typed_config")
            check(router, fPath + ".typed_config", (), ("dynamic_stats",))
            continue
        if typeName in HTTP_FILTERS:
            entry = HTTP_FILTERS[typeName](f.typed_config, fPath + ".typed_config")
            if entry is not None:
                out.append(entry)
            continue
        raise Refused("%s: http filter '%s' (%s) is not supported by txmesh over xDS" % (
            fPath, f.name, typeName or "no typed_config"))
    if filters[-1].typed_config.type_url.rpartition("/")[2] != ROUTER_TYPE:
        raise Refused("%s: the last http filter must be the router (%s)" % (path, ROUTER_TYPE))
    return out


def _downstreamTLS(socket, path):
    """A filter chain's DownstreamTlsContext as the listener's ``tls`` block (files; one certificate)."""
    check(socket, path, ("name", "typed_config"))
    ctx = unpack(socket.typed_config, tls_pb2.DownstreamTlsContext, path + ".typed_config")
    path += ".typed_config"
    check(ctx, path, ("common_tls_context", "require_client_certificate"))
    common = ctx.common_tls_context
    cPath = path + ".common_tls_context"
    check(common, cPath, ("tls_params", "tls_certificates", "validation_context", "alpn_protocols"))
    if len(common.tls_certificates) != 1:
        raise Refused("%s.tls_certificates: txmesh serves one certificate per listener, got %d" % (
            cPath, len(common.tls_certificates)))
    cert = common.tls_certificates[0]
    tPath = cPath + ".tls_certificates[0]"
    check(cert, tPath, ("certificate_chain", "private_key"))
    out = {"certificates": [{"cert_chain": dataFile(cert.certificate_chain, tPath + ".certificate_chain"),
                             "private_key": dataFile(cert.private_key, tPath + ".private_key")}],
           "alpn": list(common.alpn_protocols)}  # none: Envoy offers no ALPN
    out.update(tlsParams(common, cPath, "."))
    required = ctx.require_client_certificate.value
    if common.HasField("validation_context"):
        v = common.validation_context
        vPath = cPath + ".validation_context"
        check(v, vPath, ("trusted_ca",))
        out["ca"] = dataFile(v.trusted_ca, vPath + ".trusted_ca")
        out["client_certificate"] = "required" if required else "optional"
    elif required:
        raise Refused("%s.require_client_certificate: needs validation_context.trusted_ca" % (path,))
    return out
