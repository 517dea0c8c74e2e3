"""
Envoy v3 resources into mesh.yaml (txmesh/xds/translate.py, translate_routes.py): every mapping, checked through the
file's builder where it matters, and every refusal with its message.  Resources come as a control plane sends them
(JSON parsed with ``json_format``) or built field by field.
"""

import pytest
from google.protobuf import any_pb2, json_format
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2, base_pb2, health_check_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.http.cors.v3 import cors_pb2  # noqa: F401 (json_format finds the type by its URL)
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2  # noqa: F401
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2, tls_pb2

from txmesh import config as _config
from txmesh.xds.translate import (CLUSTER, ENDPOINT, LISTENER, ROUTE, TYPE_URLS, XdsResourceError, resourceName,
                                  translateCluster, translateEndpoints, translateListener,
                                  translateRouteConfiguration)

from tests.certs import certs  # noqa: F401 (the fixture)
from tests.xds_resources import ROUTER, assignment, cluster, endpoint, listener, routeConfig, staticCluster

HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def refused(translate, message):
    with pytest.raises(XdsResourceError) as info:
        translate(message)
    return str(info.value)


def build(clusters=(), listeners=()):
    """The MeshConfig the file's builder makes of translated parts (a listener needs no cluster here)."""
    return _config.buildFromRaw({"clusters": list(clusters), "listeners": list(listeners)}, "<xds>")


def protocolOptions(explicit=None, common=None, **fields):
    doc = {"@type": "type.googleapis.com/" + HTTP_OPTIONS}
    if explicit is not None:
        doc["explicit_http_config"] = explicit
    if common is not None:
        doc["common_http_protocol_options"] = common
    doc.update(fields)
    return {HTTP_OPTIONS: doc}


# --- names and type URLs -----------------------------------------------------------------------------------------


def test_type_urls_in_envoys_order_and_resource_names():
    assert TYPE_URLS == (CLUSTER, ENDPOINT, LISTENER, ROUTE)
    assert CLUSTER == "type.googleapis.com/" + cluster_pb2.Cluster.DESCRIPTOR.full_name
    assert resourceName(ENDPOINT, assignment("a")) == "a" and resourceName(CLUSTER, cluster("c")) == "c"


# --- CDS ---------------------------------------------------------------------------------------------------------


def test_static_cluster_with_envoys_defaults():
    t = translateCluster(staticCluster("app", "10.0.0.1:80", "[::1]:81"))
    assert t.edsName is None
    assert t.raw == {"name": "app", "connect_timeout": 5.0, "idle_timeout": 3600.0, "lb_policy": "weighted_round_robin",
                     "protocol": "http1", "endpoints": [{"address": "10.0.0.1:80"}, {"address": "[::1]:81"}]}
    c = build([t.raw]).cluster("app")
    assert (c.connectTimeout, c.lbPolicy, c.protocol) == (5.0, "weighted_round_robin", "http1")
    assert [(e.host, e.port) for e in c.endpoints] == [("10.0.0.1", 80), ("::1", 81)]


def test_eds_cluster_names_its_assignment():
    assert translateCluster(cluster("app")).edsName == "app"
    t = translateCluster(cluster("app", eds_cluster_config={"service_name": "svc", "eds_config": {"ads": {}}}))
    assert t.edsName == "svc" and "endpoints" not in t.raw


@pytest.mark.parametrize("policy, name", [("ROUND_ROBIN", "weighted_round_robin"), ("LEAST_REQUEST", "least_request"),
                                          ("RANDOM", "random"), ("RING_HASH", "ring_hash"), ("MAGLEV", "maglev")])
def test_lb_policies(policy, name):
    raw = translateCluster(cluster(lb_policy=policy)).raw
    assert raw["lb_policy"] == name
    assert build([raw]).cluster("app").lbPolicy == name


def test_lb_policy_configs():
    raw = translateCluster(cluster(lb_policy="RING_HASH", ring_hash_lb_config={
        "minimum_ring_size": 64, "maximum_ring_size": 4096})).raw
    assert raw["lb_config"] == {"minimum_ring_size": 64, "maximum_ring_size": 4096}
    assert build([raw]).cluster("app").lbConfig.minimumRingSize == 64
    raw = translateCluster(cluster(lb_policy="MAGLEV", maglev_lb_config={"table_size": 5003})).raw
    assert build([raw]).cluster("app").lbConfig.tableSize == 5003
    raw = translateCluster(cluster(lb_policy="LEAST_REQUEST", least_request_lb_config={
        "choice_count": 3, "active_request_bias": {"default_value": 0.5, "runtime_key": ""},
        "slow_start_config": {"slow_start_window": "30s", "aggression": {"default_value": 2.0, "runtime_key": ""},
                              "min_weight_percent": {"value": 20}}})).raw
    lb = build([raw]).cluster("app").lbConfig
    assert (lb.choiceCount, lb.activeRequestBias) == (3, 0.5)
    assert (lb.slowStart.window, lb.slowStart.aggression, lb.slowStart.minWeightPercent) == (30.0, 2.0, 20.0)
    raw = translateCluster(cluster(round_robin_lb_config={"slow_start_config": {"slow_start_window": "5s"}})).raw
    assert raw["lb_config"] == {"slow_start": {"window": 5.0}}


def test_lb_refusals():
    assert refused(translateCluster, cluster(lb_policy="CLUSTER_PROVIDED")) == (
        "cluster app: lb_policy CLUSTER_PROVIDED: txmesh balances with ROUND_ROBIN, LEAST_REQUEST, RANDOM, RING_HASH "
        "or MAGLEV")
    assert refused(translateCluster, cluster(lb_policy="RING_HASH", ring_hash_lb_config={
        "hash_function": "MURMUR_HASH_2"})) == (
        "cluster app: ring_hash_lb_config.hash_function: txmesh hashes with XX_HASH only")
    assert refused(translateCluster, cluster(maglev_lb_config={"table_size": 5003})) == (
        "cluster app: maglev_lb_config: only for lb_policy MAGLEV")
    assert refused(translateCluster, cluster(lb_subset_config={"fallback_policy": "ANY_ENDPOINT"})).startswith(
        "cluster app: lb_subset_config: not supported by txmesh (it maps name, type, ")


def test_circuit_breakers_default_priority_only():
    raw = translateCluster(cluster(circuit_breakers={"thresholds": [
        {"max_connections": 7, "max_pending_requests": 8, "max_requests": 9, "max_retries": 2},
        {"priority": "HIGH", "max_connections": 1000}]})).raw
    assert raw["circuit_breakers"] == {"max_connections": 7, "max_pending_requests": 8, "max_requests": 9,
                                       "max_retries": 2}
    cb = build([raw]).cluster("app").circuitBreakers
    assert (cb.maxConnections, cb.maxRequests) == (7, 9)
    assert refused(translateCluster, cluster(circuit_breakers={"thresholds": [{"track_remaining": True}]})).startswith(
        "cluster app: circuit_breakers.thresholds[0].track_remaining: not supported by txmesh")


def test_outlier_detection():
    raw = translateCluster(cluster(outlier_detection={
        "consecutive_5xx": 3, "interval": "2s", "base_ejection_time": "10s", "max_ejection_percent": 50,
        "enforcing_success_rate": 0, "split_external_local_origin_errors": True,
        "consecutive_local_origin_failure": 2, "max_ejection_time": "60s"})).raw
    od = build([raw]).cluster("app").outlierDetection
    assert (od.consecutive5xx, od.interval, od.baseEjectionTime, od.maxEjectionPercent) == (3, 2.0, 10.0, 50)
    assert (od.enforcingSuccessRate, od.splitExternalLocalOriginErrors, od.maxEjectionTime) == (0, True, 60.0)
    assert build([translateCluster(cluster(outlier_detection={})).raw]).cluster("app").outlierDetection.consecutive5xx \
        == 5
    assert refused(translateCluster, cluster(outlier_detection={
        "successful_active_health_check_uneject_host": False})).startswith(
        "cluster app: outlier_detection.successful_active_health_check_uneject_host false")


def test_health_checks_http_tcp_grpc():
    raw = translateCluster(cluster(health_checks=[{
        "timeout": "1s", "interval": "3s", "unhealthy_threshold": 3, "healthy_threshold": 1,
        "interval_jitter": "0.5s", "no_traffic_interval": "30s",
        "http_health_check": {"path": "/healthz", "host": "app.local", "method": "HEAD",
                              "expected_statuses": [{"start": 200, "end": 300}],
                              "request_headers_to_add": [{"header": {"key": "x-check", "value": "1"}}]}}])).raw
    h = build([raw]).cluster("app").healthChecks[0]
    assert (h.type, h.timeout, h.interval, h.unhealthyThreshold, h.healthyThreshold) == ("http", 1.0, 3.0, 3, 1)
    assert (h.intervalJitter, h.noTrafficInterval) == (0.5, 30.0)
    assert (h.checkerConfig.path, h.checkerConfig.host, h.checkerConfig.method) == ("/healthz", "app.local", "HEAD")
    assert h.checkerConfig.expectedStatuses == ((200, 300),) and h.checkerConfig.headers == (("x-check", "1"),)
    raw = translateCluster(cluster(health_checks=[{"timeout": "1s", "interval": "3s", "unhealthy_threshold": 1,
                                                   "healthy_threshold": 1, "tcp_health_check": {
                                                       "send": {"text": "50494e47"}, "receive": [{"text": "504f4e47"}]}}])).raw
    h = build([raw]).cluster("app").healthChecks[0]
    assert (h.type, h.checkerConfig.send, h.checkerConfig.expect) == ("tcp", b"PING", b"PONG")
    raw = translateCluster(cluster(
        health_checks=[{"timeout": "1s", "interval": "3s", "unhealthy_threshold": 1, "healthy_threshold": 1,
                        "grpc_health_check": {"service_name": "pkg.Svc"}}],
        typed_extension_protocol_options=protocolOptions({"http2_protocol_options": {}}))).raw
    c = build([raw]).cluster("app")
    assert (c.protocol, c.healthChecks[0].type) == ("grpc", "grpc")


def test_health_check_refusals():
    base = {"timeout": "1s", "interval": "3s", "unhealthy_threshold": 1, "healthy_threshold": 1}
    assert refused(translateCluster, cluster(health_checks=[dict(base, custom_health_check={"name": "x"})])).startswith(
        "cluster app: health_checks[0].custom_health_check: not supported by txmesh (it maps timeout, ")
    assert refused(translateCluster, cluster(health_checks=[dict(base, event_log_path="/tmp/x", tcp_health_check={})])
                   ).startswith("cluster app: health_checks[0].event_log_path: not supported by txmesh")
    assert refused(translateCluster, cluster(health_checks=[dict(base, tcp_health_check={
        "receive": [{"text": "00"}, {"text": "01"}]})])) == (
        "cluster app: health_checks[0].tcp_health_check.receive: txmesh expects one payload")


def test_common_lb_config_panic_threshold():
    raw = translateCluster(cluster(common_lb_config={"healthy_panic_threshold": {"value": 25}})).raw
    assert build([raw]).cluster("app").commonLbConfig.healthyPanicThreshold == 25.0
    assert refused(translateCluster, cluster(common_lb_config={"locality_weighted_lb_config": {}})).startswith(
        "cluster app: common_lb_config.locality_weighted_lb_config: not supported by txmesh")


def test_upstream_protocol_from_http_protocol_options():
    raw = translateCluster(cluster(typed_extension_protocol_options=protocolOptions(
        {"http2_protocol_options": {"max_concurrent_streams": 50}},
        {"idle_timeout": "30s", "max_requests_per_connection": 1000}))).raw
    c = build([raw]).cluster("app")
    assert (c.protocol, c.maxConcurrentStreams, c.idleTimeout, c.maxRequestsPerConnection) == (
        "http2", 50, 30.0, 1000)
    raw = translateCluster(cluster(typed_extension_protocol_options=protocolOptions(
        {"http_protocol_options": {}}))).raw
    assert raw["protocol"] == "http1"
    assert translateCluster(cluster(http2_protocol_options={})).raw["protocol"] == "http2"  # the deprecated field
    assert refused(translateCluster, cluster(typed_extension_protocol_options=protocolOptions(
        auto_config={"http2_protocol_options": {}}))).startswith(
        "cluster app: typed_extension_protocol_options[%s].auto_config: not supported by txmesh" % (HTTP_OPTIONS,))
    assert refused(translateCluster, cluster(typed_extension_protocol_options=protocolOptions(
        use_downstream_protocol_config={}))).startswith(
        "cluster app: typed_extension_protocol_options[%s].use_downstream_protocol_config" % (HTTP_OPTIONS,))
    assert refused(translateCluster, cluster(typed_extension_protocol_options=protocolOptions(
        common={"max_connection_duration": "60s"}, explicit={"http_protocol_options": {}}))).startswith(
        "cluster app: typed_extension_protocol_options[%s].common_http_protocol_options.max_connection_duration"
        % (HTTP_OPTIONS,))


def test_protocol_options_of_another_type_are_refused():
    c = cluster()
    any_ = any_pb2.Any()
    any_.Pack(health_check_pb2.HealthCheck())
    c.typed_extension_protocol_options[HTTP_OPTIONS].CopyFrom(any_)
    assert refused(translateCluster, c) == (
        "cluster app: typed_extension_protocol_options[%s]: expected a %s, got type.googleapis.com/"
        "envoy.config.core.v3.HealthCheck" % (HTTP_OPTIONS, HTTP_OPTIONS))
    c = cluster()
    c.typed_extension_protocol_options["envoy.extensions.upstreams.tcp.v3.TcpProtocolOptions"].CopyFrom(any_)
    assert refused(translateCluster, c).startswith("cluster app: typed_extension_protocol_options[envoy.extensions."
                                                   "upstreams.tcp.v3.TcpProtocolOptions]: txmesh knows ")


def upstreamTLS(**context):
    ctx = tls_pb2.UpstreamTlsContext(**context)
    socket = cluster().transport_socket
    socket.name = "envoy.transport_sockets.tls"
    socket.typed_config.Pack(ctx)
    return socket


def test_upstream_tls_from_files(tmp_path):
    c = cluster()
    c.transport_socket.CopyFrom(upstreamTLS(sni="backend.mesh.local", common_tls_context=tls_pb2.CommonTlsContext(
        tls_certificates=[common_pb2.TlsCertificate(certificate_chain=base_pb2.DataSource(filename="/c/cert.pem"),
                                                 private_key=base_pb2.DataSource(filename="/c/key.pem"))],
        validation_context=common_pb2.CertificateValidationContext(
            trusted_ca=base_pb2.DataSource(filename="/c/ca.pem"),
            match_typed_subject_alt_names=[common_pb2.SubjectAltNameMatcher(
                san_type=common_pb2.SubjectAltNameMatcher.URI,
                matcher={"prefix": "spiffe://mesh.local/"})]),
        alpn_protocols=["h2"],
        tls_params=common_pb2.TlsParameters(tls_minimum_protocol_version=common_pb2.TlsParameters.TLSv1_3))))
    assert translateCluster(c).raw["tls"] == {
        "sni": "backend.mesh.local", "cert_chain": "/c/cert.pem", "private_key": "/c/key.pem", "ca": "/c/ca.pem",
        "match_subject_alt_names": [{"uri": {"prefix": "spiffe://mesh.local/"}}], "alpn": ["h2"],
        "min_version": "TLSv1_3"}


def test_upstream_tls_refusals():
    c = cluster()
    c.transport_socket.CopyFrom(upstreamTLS(common_tls_context=tls_pb2.CommonTlsContext()))
    assert refused(translateCluster, c).startswith("cluster app: transport_socket.typed_config.common_tls_context: "
                                                   "no validation_context: Envoy would not verify")
    c.transport_socket.CopyFrom(upstreamTLS(common_tls_context=tls_pb2.CommonTlsContext(
        validation_context=common_pb2.CertificateValidationContext(
            trusted_ca=base_pb2.DataSource(inline_string="-----BEGIN CERTIFICATE-----")))))
    assert refused(translateCluster, c).startswith(
        "cluster app: transport_socket.typed_config.common_tls_context.validation_context.trusted_ca."
        "inline_string: not supported by txmesh")
    c.transport_socket.CopyFrom(upstreamTLS(common_tls_context=tls_pb2.CommonTlsContext(
        tls_certificate_sds_secret_configs=[secret_pb2.SdsSecretConfig(name="cert")])))
    assert refused(translateCluster, c).startswith(
        "cluster app: transport_socket.typed_config.common_tls_context.tls_certificate_sds_secret_configs: not "
        "supported by txmesh")


def test_dns_clusters():
    c = staticCluster("app", "backend.local:8080", type="STRICT_DNS", dns_refresh_rate="10s",
                      dns_lookup_family="V4_ONLY", respect_dns_ttl=True)
    raw = translateCluster(c).raw
    assert raw["discovery"] == {"type": "dns", "mode": "strict", "hosts": ["backend.local:8080"],
                                "lookup_family": "v4_only", "refresh_rate": 10.0, "respect_dns_ttl": True}
    d = build([raw]).cluster("app").discovery
    assert (d.type, d.sourceConfig.mode, d.sourceConfig.refreshRate) == ("dns", "strict", 10.0)
    raw = translateCluster(staticCluster("app", "backend.local:80", type="LOGICAL_DNS")).raw
    assert raw["discovery"]["mode"] == "logical"
    assert refused(translateCluster, staticCluster("app", "10.0.0.1:80", dns_refresh_rate="5s")) == (
        "cluster app: dns_refresh_rate: only for STRICT_DNS and LOGICAL_DNS clusters")


def test_cluster_type_refusals():
    assert refused(translateCluster, staticCluster("app", "10.0.0.1:80", type="ORIGINAL_DST")) == (
        "cluster app: type ORIGINAL_DST: txmesh has STATIC, STRICT_DNS, LOGICAL_DNS and EDS clusters")
    aggregate = cluster()
    aggregate.cluster_type.name = "envoy.clusters.aggregate"  # the oneof: no ``type`` any more
    assert refused(translateCluster, aggregate).startswith(
        "cluster app: cluster_type: not supported by txmesh")
    assert refused(translateCluster, staticCluster("app", "10.0.0.1:80", type="EDS")) == (
        "cluster app: type EDS takes its endpoints from EDS, not load_assignment")
    assert refused(translateCluster, staticCluster("app", "10.0.0.1:80",
                                                   upstream_connection_options={"tcp_keepalive": {}})).startswith(
        "cluster app: upstream_connection_options: not supported by txmesh")


def test_inert_fields_are_accepted():
    raw = translateCluster(cluster(alt_stat_name="x", metadata={"filter_metadata": {"a": {"b": 1}}},
                                   per_connection_buffer_limit_bytes=32768)).raw
    assert "alt_stat_name" not in raw and "metadata" not in raw


# --- EDS ---------------------------------------------------------------------------------------------------------


def test_assignment_priorities_localities_weights_health():
    t = translateEndpoints(assignment("app", groups=[
        {"locality": {"region": "eu", "zone": "eu-1", "sub_zone": "a"}, "lb_endpoints": [
            endpoint("10.0.0.1:80", load_balancing_weight=3),
            endpoint("10.0.0.2:80", health_status="HEALTHY"),
            endpoint("10.0.0.3:80", health_status="UNHEALTHY"),
            endpoint("10.0.0.4:80", health_status="DRAINING"),
            endpoint("10.0.0.5:80", health_status="TIMEOUT"),
            endpoint("10.0.0.6:80", health_status="UNKNOWN")]},
        {"priority": 2, "lb_endpoints": [endpoint("10.0.1.1:80")]}],
        policy={"overprovisioning_factor": 200}))
    assert t.overprovisioningFactor == 200
    assert [(e["address"], e.get("weight"), e.get("healthy", True)) for e in t.endpoints] == [
        ("10.0.0.1:80", 3, True), ("10.0.0.2:80", None, True), ("10.0.0.3:80", None, False),
        ("10.0.0.4:80", None, False), ("10.0.0.5:80", None, False), ("10.0.0.6:80", None, True),
        ("10.0.1.1:80", None, True)]
    assert t.endpoints[0]["locality"] == "eu/eu-1/a" and t.endpoints[-1]["priority"] == 2
    c = build([{"name": "app", "endpoints": t.endpoints}]).cluster("app")
    assert [e.healthy for e in c.endpoints] == [True, True, False, False, False, True, True]


def test_assignment_refusals():
    assert refused(translateEndpoints, assignment("app", groups=[{"lb_endpoints": [
        endpoint("10.0.0.1:80", health_status="DEGRADED")]}])) == (
        "cluster_load_assignment app: endpoints[0].lb_endpoints[0].health_status DEGRADED: txmesh does not balance "
        "over degraded hosts")
    assert refused(translateEndpoints, assignment("app", policy={"drop_overloads": [{"category": "x"}]})).startswith(
        "cluster_load_assignment app: policy.drop_overloads: not supported by txmesh")
    assert refused(translateEndpoints, assignment("app", groups=[{"lb_endpoints": [endpoint(
        "10.0.0.1:80", endpoint={"address": {"socket_address": {"address": "10.0.0.1", "port_value": 80}},
                                  "health_check_config": {"port_value": 81}})]}])).startswith(
        "cluster_load_assignment app: endpoints[0].lb_endpoints[0].endpoint.health_check_config: not supported")
    assert refused(translateEndpoints, assignment("app", groups=[{"lb_endpoints": [{"endpoint": {"address": {
        "pipe": {"path": "/tmp/s"}}}}]}])).startswith(
        "cluster_load_assignment app: endpoints[0].lb_endpoints[0].endpoint.address.pipe: not supported")


# --- LDS ---------------------------------------------------------------------------------------------------------


def test_listener_with_rds():
    t = translateListener(listener("web", 10000, rds="routes", traffic_direction="OUTBOUND",
                                   per_connection_buffer_limit_bytes=65536))
    assert t.rdsName == "routes" and t.routes is None
    assert t.raw == {"name": "web", "address": "tcp:10000:interface=127.0.0.1", "traffic_direction": "outbound",
                     "protocol": "http1", "use_remote_address": False, "xff_num_trusted_hops": 0,
                     "normalize_path": False, "merge_slashes": False,
                     "path_with_escaped_slashes_action": "keep_unchanged", "path_parameters": "keep", "filters": [],
                     "limits": {"idle_timeout": 3600.0, "buffer_limit": 65536}}
    lc = build(listeners=[t.raw]).listeners[0]
    assert (lc.protocol, lc.trafficDirection, lc.limits.bufferLimit, lc.forwarding.useRemoteAddress) == (
        "http1", "outbound", 65536, False)
    assert lc.pathNormalization.changesNothing
    assert [f.name for f in lc.filters] == ["router"]


def test_listener_hcm_settings():
    t = translateListener(listener("grpc_in", 10001, rds="r", hcmFields={
        "codec_type": "HTTP2", "use_remote_address": True, "xff_num_trusted_hops": 1,
        "internal_address_config": {"cidr_ranges": [{"address_prefix": "10.0.0.0", "prefix_len": 8}]},
        "stream_idle_timeout": "60s", "request_headers_timeout": "5s", "max_request_headers_kb": 32,
        "common_http_protocol_options": {"idle_timeout": "120s", "max_headers_count": 50},
        "normalize_path": True, "merge_slashes": True, "path_with_escaped_slashes_action": "REJECT_REQUEST",
        "http2_protocol_options": {"max_concurrent_streams": 64}}))
    lc = build(listeners=[t.raw]).listeners[0]
    assert (lc.protocol, lc.http2.maxConcurrentStreams) == ("http2", 64)
    assert (lc.forwarding.useRemoteAddress, lc.forwarding.trustedHops) == (True, 1)
    assert [str(n) for n in lc.forwarding.internalRanges] == ["10.0.0.0/8"]
    assert (lc.limits.streamIdleTimeout, lc.limits.requestHeadersTimeout, lc.limits.maxHeaderBytes) == (
        60.0, 5.0, 32768)
    assert (lc.limits.idleTimeout, lc.limits.maxHeaders) == (120.0, 50)
    n = lc.pathNormalization
    assert (n.normalizePath, n.mergeSlashes, n.escapedSlashes) == (True, True, "reject_request")


def test_listener_addresses():
    lst = listener("v6")
    lst.address.CopyFrom(address_pb2.Address(socket_address=address_pb2.SocketAddress(address="::1", port_value=9)))
    assert translateListener(lst).raw["address"] == "tcp6:9:interface=\\:\\:1"
    lst.address.CopyFrom(address_pb2.Address(pipe=address_pb2.Pipe(path="/run/web.sock")))
    assert translateListener(lst).raw["address"] == "unix:/run/web.sock"
    lst.address.CopyFrom(address_pb2.Address(socket_address=address_pb2.SocketAddress(
        address="127.0.0.1", port_value=9, protocol=address_pb2.SocketAddress.UDP)))
    assert refused(translateListener, lst) == "listener v6: address.socket_address.protocol: txmesh listens on TCP"


def test_inline_route_config():
    t = translateListener(listener("web", routeConfig={"name": "inline", "virtual_hosts": [
        {"name": "all", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "direct_response": {"status": 204}}]}]}))
    assert t.rdsName is None and t.routes.validateClusters
    assert t.raw["route_config"] == {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
        {"match": {"prefix": "/"}, "direct_response": {"status": 204}}]}]}
    assert build(listeners=[t.raw]).listeners[0].routeConfig.virtualHosts[0].routes[0].action.status == 204


def test_listener_refusals():
    assert refused(translateListener, listener(listener_filters=[{"name": "envoy.filters.listener.tls_inspector"}])
                   ).startswith("listener web: listener_filters: not supported by txmesh")
    two = listener()
    two.filter_chains.add().CopyFrom(two.filter_chains[0])
    assert refused(translateListener, two) == "listener web: filter_chains: txmesh serves one filter chain per " \
                                              "listener, got 2"
    matched = listener()
    matched.filter_chains[0].filter_chain_match.server_names.append("a.example")
    assert refused(translateListener, matched) == (
        "listener web: filter_chains[0].filter_chain_match: txmesh does not choose chains by connection")
    tcp = json_format.ParseDict({"name": "tcp", "address": {"socket_address": {"address": "0.0.0.0", "port_value": 1}},
                                 "filter_chains": [{"filters": [{"name": "envoy.filters.network.tcp_proxy",
                                                                 "typed_config": {
                                                                     "@type": "type.googleapis.com/envoy.extensions."
                                                                              "filters.network.tcp_proxy.v3.TcpProxy",
                                                                     "stat_prefix": "t", "cluster": "c"}}]}]},
                                listener_pb2.Listener())
    assert refused(translateListener, tcp) == (
        "listener tcp: filter_chains[0].filters[0]: network filter 'envoy.filters.network.tcp_proxy' (envoy.extensions"
        ".filters.network.tcp_proxy.v3.TcpProxy): txmesh has no such filter (only the http_connection_manager)")


def test_hcm_refusals():
    assert refused(translateListener, listener(hcmFields={"codec_type": "HTTP3"})) == (
        "listener web: filter_chains[0].filters[0].typed_config.codec_type HTTP3: txmesh serves AUTO (as HTTP/1.1), "
        "HTTP1 and HTTP2")
    assert refused(translateListener, listener(hcmFields={"tracing": {}})).startswith(
        "listener web: filter_chains[0].filters[0].typed_config.tracing: not supported by txmesh")
    assert refused(translateListener, listener(hcmFields={"http_filters": []})) == (
        "listener web: filter_chains[0].filters[0].typed_config.http_filters: the router filter is required (last)")
    cors = {"name": "envoy.filters.http.cors",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors"}}
    assert refused(translateListener, listener(hcmFields={"http_filters": [cors, ROUTER]})) == (
        "listener web: filter_chains[0].filters[0].typed_config.http_filters[0]: http filter "
        "'envoy.filters.http.cors' (envoy.extensions.filters.http.cors.v3.Cors) is not supported by txmesh over xDS")
    assert refused(translateListener, listener(hcmFields={"http_filters": [ROUTER, cors]})) == (
        "listener web: filter_chains[0].filters[0].typed_config.http_filters[0]: the router must be the last http "
        "filter")
    assert refused(translateListener, listener(hcmFields={"http_filters": [dict(ROUTER, typed_config=dict(
        ROUTER["typed_config"], suppress_envoy_headers=True))]})).startswith(
        "listener web: filter_chains[0].filters[0].typed_config.http_filters[0].typed_config.suppress_envoy_headers: "
        "not supported by txmesh")
    assert refused(translateListener, listener(rds=None, hcmFields={"scoped_routes": {"name": "s"}})).startswith(
        "listener web: filter_chains[0].filters[0].typed_config.scoped_routes: not supported by txmesh")


# --- RDS ---------------------------------------------------------------------------------------------------------


def routes(*routeList, **vhost):
    doc = {"name": "all", "domains": ["*"], "routes": list(routeList)}
    doc.update(vhost)
    return translateRouteConfiguration(routeConfig(routes=None, virtual_hosts=[doc]))


def buildRoutes(t, clusters=("app", "b")):
    raw = {"clusters": [{"name": c, "endpoints": []} for c in clusters],
           "listeners": [{"name": "web", "address": "tcp:0", "route_config": t.raw}]}
    return _config.buildFromRaw(raw, "<xds>").listeners[0].routeConfig.virtualHosts[0]


def test_route_matches():
    t = routes({"match": {"prefix": "/api", "case_sensitive": False,
                          "headers": [{"name": "x-a", "exact_match": "1"}, {"name": "x-b", "prefix_match": "p"},
                                      {"name": "x-c", "safe_regex_match": {"regex": "v[0-9]"}},
                                      {"name": "x-d", "present_match": True, "invert_match": True},
                                      {"name": "x-e", "string_match": {"exact": "e"}},
                                      {"name": "x-f"}]},
                "route": {"cluster": "app"}},
               {"match": {"path": "/exact"}, "route": {"cluster": "app"}},
               {"match": {"safe_regex": {"regex": "/v[0-9]+/.*"}}, "route": {"cluster": "app"}},
               {"match": {"prefix": "/", "grpc": {}}, "route": {"cluster": "b"}})
    assert t.raw["virtual_hosts"][0]["routes"][0]["match"]["headers"] == [
        {"name": "x-a", "exact": "1"}, {"name": "x-b", "prefix": "p"}, {"name": "x-c", "regex": "v[0-9]"},
        {"name": "x-d", "present": True, "invert": True}, {"name": "x-e", "exact": "e"},
        {"name": "x-f", "present": True}]
    vhost = buildRoutes(t)
    m = [r.match for r in vhost.routes]
    assert (m[0].prefix, m[0].caseSensitive, len(m[0].headers)) == (b"/api", False, 6)
    assert m[1].path == b"/exact" and m[2].regex.pattern == b"/v[0-9]+/.*"
    assert m[3].headers[0].name == b"content-type" and m[3].headers[0].prefix == b"application/grpc"


def test_route_actions():
    t = routes({"name": "main", "match": {"prefix": "/a/"}, "route": {
        "cluster": "app", "timeout": "3s", "prefix_rewrite": "/", "host_rewrite_literal": "app.local",
        "max_stream_duration": {"max_stream_duration": "60s"},
        "retry_policy": {"retry_on": "5xx,connect-failure,retriable-status-codes", "num_retries": 3, "per_try_timeout": "1s",
                         "retry_back_off": {"base_interval": "0.1s", "max_interval": "1s"},
                         "retry_host_predicate": [{"name": "envoy.retry_host_predicates.previous_hosts"}],
                         "host_selection_retry_max_attempts": 3,
                         "retriable_status_codes": [409]},
        "hash_policy": [{"header": {"header_name": "x-user"}}, {"connection_properties": {"source_ip": True},
                                                                 "terminal": True}],
        "request_mirror_policies": [{"cluster": "b", "runtime_fraction": {"default_value": {
            "numerator": 5, "denominator": "TEN_THOUSAND"}}}]}},
        {"match": {"prefix": "/w"}, "route": {"weighted_clusters": {"clusters": [
            {"name": "app", "weight": 90}, {"name": "b", "weight": 10}]}, "regex_rewrite": {
            "pattern": {"regex": "^/w/(.*)"}, "substitution": "/\\1"}}},
        {"match": {"prefix": "/old"}, "redirect": {"https_redirect": True, "host_redirect": "new.example",
                                                    "response_code": "PERMANENT_REDIRECT", "strip_query": True}},
        {"match": {"prefix": "/"}, "direct_response": {"status": 418, "body": {"inline_string": "teapot"}}})
    vhost = buildRoutes(t)
    a = vhost.routes[0].action
    assert (a.cluster, a.timeout, a.prefixRewrite, a.hostRewrite, a.maxStreamDuration) == (
        "app", 3.0, b"/", b"app.local", 60.0)
    p = a.retryPolicy
    assert (p.numRetries, p.on5xx, p.onConnectFailure, p.perTryTimeout, p.baseInterval, p.maxInterval) == (
        3, True, True, 1.0, 0.1, 1.0)
    assert p.previousHosts and p.hostSelectionAttempts == 3 and 409 in p.retriableStatusCodes
    assert [(h.kind, h.terminal) for h in a.hashPolicies] == [("header", False), ("source_ip", True)]
    assert (a.mirrorPolicies[0].cluster, a.mirrorPolicies[0].numerator, a.mirrorPolicies[0].denominator) == (
        "b", 5, 10000)
    w = vhost.routes[1].action
    assert w.clusters == (("app", 90), ("b", 10)) and w.timeout == 15.0 and w.regexRewrite.substitution == b"/\\1"
    r = vhost.routes[2].action
    assert (r.schemeRedirect, r.hostRedirect, r.responseCode, r.stripQuery) == (b"https", b"new.example", 308, True)
    d = vhost.routes[3].action
    assert (d.status, d.body) == (418, b"teapot")


def test_retry_policy_defaults_are_envoys():
    vhost = buildRoutes(routes({"match": {"prefix": "/"}, "route": {"cluster": "app", "retry_policy": {
        "retry_on": "reset"}}}))
    p = vhost.routes[0].action.retryPolicy
    assert (p.numRetries, p.previousHosts) == (1, False)  # txmesh's own default would remember previous hosts
    vhost = buildRoutes(routes({"match": {"prefix": "/"}, "route": {"cluster": "app", "retry_policy": {}}},
                               retry_policy={"retry_on": "5xx", "num_retries": 4}))
    assert vhost.routes[0].action.retryPolicy.numRetries == 0  # the route's empty policy replaces the host's


def test_virtual_host_settings():
    t = routes({"match": {"prefix": "/"}, "route": {"cluster": "app"},
                "request_headers_to_add": [{"header": {"key": "x-r", "value": "1"},
                                            "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}],
                "response_headers_to_remove": ["server"]},
               request_headers_to_add=[{"header": {"key": "x-v", "value": "2"}}],
               response_headers_to_add=[{"header": {"key": "x-w", "value": "3"}, "append": False}],
               retry_policy={"retry_on": "gateway-error", "num_retries": 2},
               include_request_attempt_count=True)
    vhost = buildRoutes(t)
    assert [(h.name, h.value, h.append) for h in vhost.requestHeadersToAdd] == [(b"x-v", b"2", True)]
    assert [(h.name, h.append) for h in vhost.responseHeadersToAdd] == [(b"x-w", False)]
    route = vhost.routes[0]
    assert [(h.name, h.append) for h in route.requestHeadersToAdd] == [(b"x-r", False)]
    assert route.responseHeadersToRemove == (b"server",)
    p = route.action.retryPolicy
    assert (p.numRetries, p.onGatewayError, p.includeAttemptCount) == (2, True, True)


def test_cluster_not_found_codes_and_validate_clusters():
    t = routes({"match": {"prefix": "/a"}, "route": {"cluster": "x", "cluster_not_found_response_code": "NOT_FOUND"}},
               {"match": {"prefix": "/"}, "route": {"cluster": "y"}})
    assert t.notFound == {(0, 0): 404} and not t.validateClusters
    assert translateRouteConfiguration(routeConfig(validate_clusters=True)).validateClusters


def test_route_refusals():
    def routeRefused(route, **vhost):
        return refused(translateRouteConfiguration, routeConfig(routes=None, virtual_hosts=[
            dict({"name": "all", "domains": ["*"], "routes": [route]}, **vhost)]))

    assert routeRefused({"match": {"prefix": "/", "query_parameters": [{"name": "q"}]},
                         "route": {"cluster": "app"}}).startswith(
        "route_configuration routes: virtual_hosts[0].routes[0].match.query_parameters: not supported by txmesh")
    assert routeRefused({"match": {"prefix": "/"}, "route": {"cluster": "app", "idle_timeout": "5s"}}).startswith(
        "route_configuration routes: virtual_hosts[0].routes[0].route.idle_timeout: not supported by txmesh")
    assert routeRefused({"match": {"prefix": "/"}, "route": {"cluster_header": "x-cluster"}}).startswith(
        "route_configuration routes: virtual_hosts[0].routes[0].route.cluster_header: not supported by txmesh")
    assert routeRefused({"match": {"prefix": "/"}, "route": {"cluster": "app", "retry_policy": {
        "retry_host_predicate": [{"name": "envoy.retry_host_predicates.omit_canary_hosts"}]}}}) == (
        "route_configuration routes: virtual_hosts[0].routes[0].route.retry_policy.retry_host_predicate[0]: txmesh "
        "has envoy.retry_host_predicates.previous_hosts only, not envoy.retry_host_predicates.omit_canary_hosts")
    assert routeRefused({"match": {"prefix": "/"}, "route": {"cluster": "app"}},
                        cors={"allow_methods": "GET"}).startswith(
        "route_configuration routes: virtual_hosts[0].cors: not supported by txmesh")
    assert routeRefused({"match": {"prefix": "/"}, "route": {"cluster": "app"}, "request_headers_to_add": [
        {"header": {"key": "a", "value": "b"}, "append_action": "ADD_IF_ABSENT"}]}) == (
        "route_configuration routes: virtual_hosts[0].routes[0].request_headers_to_add[0].append_action "
        "ADD_IF_ABSENT: txmesh appends or overwrites")
    assert routeRefused({"match": {"prefix": "/", "headers": [{"name": "a", "string_match": {
        "suffix": "x"}}]}, "route": {"cluster": "app"}}).startswith(
        "route_configuration routes: virtual_hosts[0].routes[0].match.headers[0].string_match.suffix: not supported")
    assert routeRefused({"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {
        "filename": "/etc/passwd"}}}).startswith(
        "route_configuration routes: virtual_hosts[0].routes[0].direct_response.body.filename: not supported")
    assert routeRefused({"match": {"prefix": "/"}, "route": {"weighted_clusters": {"clusters": [
        {"name": "a", "weight": 1}], "total_weight": 100}}}) == (
        "route_configuration routes: virtual_hosts[0].routes[0].route.weighted_clusters.total_weight 100: the weights "
        "add up to 1")
    rc = routeConfig()
    rc.request_headers_to_add.add().header.key = "x"
    assert refused(translateRouteConfiguration, rc).startswith(
        "route_configuration routes: request_headers_to_add: not supported by txmesh")


# --- HTTP filters --------------------------------------------------------------------------------------------------


def typed(kind, **fields):
    return {"name": "envoy.filters.http." + kind.split(".")[0],
            "typed_config": dict({"@type": "type.googleapis.com/envoy.extensions.filters.http." + kind}, **fields)}


FAULT = "fault.v3.HTTPFault"
RATE = "local_ratelimit.v3.LocalRateLimit"
RBAC = "rbac.v3.RBAC"
MUTATION = "header_mutation.v3.HeaderMutation"


def filtered(*filters):
    t = translateListener(listener(hcmFields={"http_filters": list(filters) + [ROUTER]}))
    return t.raw["filters"], build([{"name": "app", "endpoints": []}], [t.raw]).listeners[0].filters


def test_fault_filter():
    raw, built = filtered(typed(FAULT, delay={"fixed_delay": "2s", "percentage": {"numerator": 50}},
                                abort={"http_status": 503, "percentage": {"numerator": 1, "denominator": "MILLION"}},
                                upstream_cluster="app", headers=[{"name": "x-test", "present_match": True}],
                                downstream_nodes=["a"], max_active_faults=10,
                                delay_percent_runtime="fault.http.delay.fixed_delay_percent"))
    assert raw == [{"name": "fault", "config": {
        "delay": {"percentage": {"numerator": 50, "denominator": "HUNDRED"}, "fixed_delay": 2.0},
        "abort": {"percentage": {"numerator": 1, "denominator": "MILLION"}, "http_status": 503},
        "upstream_cluster": "app", "headers": [{"name": "x-test", "present": True}], "downstream_nodes": ["a"],
        "max_active_faults": 10}}]
    assert [f.name for f in built] == ["fault", "router"]
    raw, _ = filtered(typed(FAULT, abort={"grpc_status": 14}), typed(FAULT, delay={"header_delay": {}}))
    assert raw[0]["config"]["abort"] == {"percentage": {"numerator": 0, "denominator": "HUNDRED"}, "grpc_status": 14}
    assert raw[1]["config"]["delay"]["header_delay"] is True
    assert filtered(typed(FAULT))[0] == []  # neither delay nor abort: nothing to inject
    assert refused(translateListener, listener(hcmFields={"http_filters": [
        typed(FAULT, response_rate_limit={"fixed_limit": {"limit_kbps": 1}}), ROUTER]})).startswith(
        "listener web: filter_chains[0].filters[0].typed_config.http_filters[0].typed_config.response_rate_limit: "
        "not supported by txmesh")


def rateLimit(**fields):
    base = {"stat_prefix": "rl", "token_bucket": {"max_tokens": 10, "tokens_per_fill": 5, "fill_interval": "1s"}}
    return typed(RATE, **dict(base, **fields))


HUNDRED = {"default_value": {"numerator": 100}, "runtime_key": "rl_enabled"}


def test_local_rate_limit_filter():
    raw, built = filtered(rateLimit(filter_enabled=HUNDRED, filter_enforced=HUNDRED, status={"code": 503},
                                    enable_x_ratelimit_headers="DRAFT_VERSION_03"))
    assert raw == [{"name": "local_rate_limit", "config": {
        "token_bucket": {"max_tokens": 10, "fill_interval": 1.0, "tokens_per_fill": 5}, "stat_prefix": "rl",
        "status": 503, "enable_x_ratelimit_headers": True}}]
    assert built[0].name == "local_rate_limit" and built[0].config.status == 503
    assert filtered(rateLimit())[0] == []  # not enabled: Envoy limits nothing
    half = {"default_value": {"numerator": 50}}
    assert refused(translateListener, listener(hcmFields={"http_filters": [
        rateLimit(filter_enabled=HUNDRED, filter_enforced=half), ROUTER]})).endswith(
        "txmesh enforces a local rate limit on every request or none: filter_enabled and filter_enforced must be "
        "100% (or filter_enabled absent)")
    assert refused(translateListener, listener(hcmFields={"http_filters": [
        rateLimit(filter_enabled=HUNDRED, filter_enforced=HUNDRED, descriptors=[{"entries": [
            {"key": "k", "value": "v"}], "token_bucket": {"max_tokens": 1, "fill_interval": "1s"}}]), ROUTER]})
                   ).startswith("listener web: filter_chains[0].filters[0].typed_config.http_filters[0].typed_config."
                                "descriptors: not supported by txmesh")


def test_rbac_filter_in_envoys_shape():
    rules = {"action": "DENY", "policies": {"no-admin": {
        "permissions": [{"url_path": {"path": {"prefix": "/admin"}}}],
        "principals": [{"direct_remote_ip": {"address_prefix": "10.0.0.0", "prefix_len": 8}}]}}}
    raw, built = filtered(typed(RBAC, rules=rules, shadow_rules={"policies": {"all": {
        "permissions": [{"any": True}], "principals": [{"any": True}]}}}))
    assert raw[0]["config"]["rules"] == rules
    assert raw[0]["config"]["shadow_rules"]["action"] == "ALLOW"  # the default Envoy leaves out
    assert built[0].name == "rbac"
    assert filtered(typed(RBAC))[0] == []  # no rules: Envoy enforces nothing
    assert refused(translateListener, listener(hcmFields={"http_filters": [typed(RBAC, matcher={}), ROUTER]})
                   ).startswith("listener web: filter_chains[0].filters[0].typed_config.http_filters[0].typed_config."
                                "matcher: not supported by txmesh")


def test_header_mutation_filter():
    raw, built = filtered(typed(MUTATION, mutations={
        "request_mutations": [{"remove": "x-internal"}, {"append": {"header": {"key": "x-via", "value": "txmesh"}}}],
        "response_mutations": [{"append": {"header": {"key": "x-served", "value": "1"},
                                           "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}}]}))
    assert raw == [{"name": "header_mutation", "config": {
        "request_headers_to_add": [{"name": "x-via", "value": "txmesh", "append": True}],
        "request_headers_to_remove": ["x-internal"],
        "response_headers_to_add": [{"name": "x-served", "value": "1", "append": False}]}}]
    assert built[0].name == "header_mutation"
    assert refused(translateListener, listener(hcmFields={"http_filters": [typed(MUTATION, mutations={
        "request_mutations": [{"append": {"header": {"key": "a", "value": "1"}}}, {"remove": "A"}]}), ROUTER]})
                   ).endswith("request_mutations[1].remove: txmesh removes before it adds: removing A after adding "
                              "it is not supported")


# --- TLS through the builder (real certificate files) ---------------------------------------------------------------


def downstreamTLS(**context):
    lst = listener()
    socket = lst.filter_chains[0].transport_socket
    socket.name = "envoy.transport_sockets.tls"
    socket.typed_config.Pack(tls_pb2.DownstreamTlsContext(**context))
    return lst


def certificate(issued):
    return common_pb2.TlsCertificate(certificate_chain=base_pb2.DataSource(filename=issued.chainPath),
                                     private_key=base_pb2.DataSource(filename=issued.keyPath))


def test_downstream_tls_terminates_on_the_listener(certs):
    server = certs.issue("server", dns=["localhost"])
    lst = downstreamTLS(require_client_certificate={"value": True}, common_tls_context=tls_pb2.CommonTlsContext(
        tls_certificates=[certificate(server)], alpn_protocols=["h2", "http/1.1"],
        validation_context=common_pb2.CertificateValidationContext(
            trusted_ca=base_pb2.DataSource(filename=certs.certPath)),
        tls_params=common_pb2.TlsParameters(tls_minimum_protocol_version=common_pb2.TlsParameters.TLSv1_3,
                                            cipher_suites=["ECDHE-ECDSA-AES128-GCM-SHA256"])))
    raw = translateListener(lst).raw
    assert raw["tls"] == {"certificates": [{"cert_chain": server.chainPath, "private_key": server.keyPath}],
                          "alpn": ["h2", "http/1.1"], "min_version": "TLSv1.3",
                          "cipher_suites": "ECDHE-ECDSA-AES128-GCM-SHA256", "ca": certs.certPath,
                          "client_certificate": "required"}
    tls = build(listeners=[raw]).listeners[0].tls
    assert (tls.clientCertificate, tls.minVersion, tls.alpn) == ("required", "TLSv1.3", ("h2", "http/1.1"))
    plain = downstreamTLS(common_tls_context=tls_pb2.CommonTlsContext(tls_certificates=[certificate(server)]))
    tls = build(listeners=[translateListener(plain).raw]).listeners[0].tls
    assert (tls.clientCertificate, tls.alpn) == ("none", ())  # Envoy offers no ALPN unless told


def test_downstream_tls_refusals(certs):
    server = certs.issue("server", dns=["localhost"])
    assert refused(translateListener, downstreamTLS(common_tls_context=tls_pb2.CommonTlsContext(
        tls_certificates=[certificate(server), certificate(server)]))) == (
        "listener web: filter_chains[0].transport_socket.typed_config.common_tls_context.tls_certificates: txmesh "
        "serves one certificate per listener, got 2")
    assert refused(translateListener, downstreamTLS(require_client_certificate={"value": True},
                                                    common_tls_context=tls_pb2.CommonTlsContext(
                                                        tls_certificates=[certificate(server)]))) == (
        "listener web: filter_chains[0].transport_socket.typed_config.require_client_certificate: needs "
        "validation_context.trusted_ca")
    assert refused(translateListener, downstreamTLS(session_timeout={"seconds": 10}, common_tls_context=tls_pb2.CommonTlsContext(
        tls_certificates=[certificate(server)]))).startswith(
        "listener web: filter_chains[0].transport_socket.typed_config.session_timeout: not supported by txmesh")


def test_upstream_tls_through_the_builder(certs):
    client = certs.issue("client", uris=["spiffe://mesh.local/ns/default/sa/frontend"], client=True)
    c = cluster()
    c.transport_socket.CopyFrom(upstreamTLS(sni="backend", common_tls_context=tls_pb2.CommonTlsContext(
        tls_certificates=[certificate(client)],
        validation_context=common_pb2.CertificateValidationContext(
            trusted_ca=base_pb2.DataSource(filename=certs.certPath)),
        tls_params=common_pb2.TlsParameters(tls_minimum_protocol_version=common_pb2.TlsParameters.TLSv1_2))))
    tls = build([translateCluster(c).raw]).cluster("app").tls
    assert (tls.sni, tls.ca, tls.certChain, tls.minVersion) == ("backend", certs.certPath, client.chainPath,
                                                                "TLSv1.2")
