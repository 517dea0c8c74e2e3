"""
The /metrics name of each /stats series.

/stats keeps Envoy's short names (``downstream_rq``, ``upstream_cx_active``: what Envoy users grep for); /metrics
follows Prometheus' conventions: full words, base units, ``_total`` on counters (prometheus_client adds it), no
``_total`` on a gauge.  The translation is a rule (``rq`` is ``requests``, ``cx`` is ``connections``, ``rx_reset`` and
``tx_reset`` are ``resets_received`` and ``resets_sent``) plus the names the rule does not make read well
(L{RENAMED}).  docs/metrics.md shows the result for every series in one table; tests/test_metric_names.py checks
that table against this module and against the names the code registers.
"""

# /stats name -> /metrics name (without the ``txmesh_`` prefix; a counter's ``_total`` is added at exposition)
RENAMED = {
    "downstream_rq_xx": "downstream_responses",
    "downstream_rq_error": "downstream_local_replies",
    "downstream_grpc_status": "downstream_grpc_responses",
    "upstream_grpc_status": "upstream_grpc_responses",
    "dubbo_responses": "dubbo_method_responses",
    # per listener, route and cluster (txmesh.request_stats): its /stats name could not be dubbo_responses
    "dubbo_status_responses": "dubbo_responses",
    "dubbo_requests": "dubbo_method_requests",
    "dubbo_business_exceptions": "dubbo_method_business_exceptions",
    "dubbo_timeouts": "dubbo_method_timeouts",
    "membership_total": "membership_hosts",
    "membership_healthy": "membership_healthy_hosts",
    "downstream_grpc_messages_in": "downstream_grpc_messages_received",
    "downstream_grpc_messages_out": "downstream_grpc_messages_sent",
    "ratelimit_ok": "rate_limit_allowed",
    "ratelimit_rate_limited": "rate_limit_limited",
    "upstream_h2_keepalive_ping": "upstream_h2_keepalive_pings",
    "upstream_cx_none_healthy": "upstream_no_healthy_host",
}

# one word for one short token
_WORDS = {"rq": "requests", "cx": "connections"}
# two tokens read as two other words
_PAIRS = {("rx", "reset"): ("resets", "received"), ("tx", "reset"): ("resets", "sent")}


def prometheusName(name):
    """The /metrics family name of the /stats series ``name``, without the ``txmesh_`` prefix."""
    renamed = RENAMED.get(name)
    if renamed is not None:
        return renamed
    tokens = name.split("_")
    out = []
    i = 0
    while i < len(tokens):
        pair = _PAIRS.get(tuple(tokens[i:i + 2]))
        if pair is not None:
            out.extend(pair)
            i += 2
            continue
        out.append(_WORDS.get(tokens[i], tokens[i]))
        i += 1
    return "_".join(out)
