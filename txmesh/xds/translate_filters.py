"""
The HTTP filters of an http_connection_manager into mesh.yaml ``filters`` entries (txmesh.xds.translate): the fault,
local_ratelimit, rbac and header_mutation filters, whose txmesh counterparts take Envoy's meaning; any other filter
is refused by name and type.  Each function gives the entry (``{name, config}``), None when the filter has no
effect as configured (a local rate limit not enabled), or raises Refused naming the field path.
"""

from google.protobuf import json_format

from envoy.extensions.filters.http.fault.v3 import fault_pb2
from envoy.extensions.filters.http.header_mutation.v3 import header_mutation_pb2
from envoy.extensions.filters.http.local_ratelimit.v3 import local_rate_limit_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2

from txmesh.xds.translate_common import Refused, check, duration, enumName, unpack
from txmesh.xds.translate_routes import headerMatcher

_PREFIX = "envoy.extensions.filters.http."
_DENOMINATORS = {0: "HUNDRED", 1: "TEN_THOUSAND", 2: "MILLION"}
# the runtime keys' names: without a runtime, Envoy uses the configured values (txmesh has no runtime)
_FAULT_RUNTIME = ("delay_percent_runtime", "abort_percent_runtime", "delay_duration_runtime",
                  "abort_http_status_runtime", "max_active_faults_runtime", "abort_grpc_status_runtime")


def _fraction(percentage):
    """A FractionalPercent as txmesh's ``{numerator, denominator}`` (absent: 0 of 100, as Envoy reads it)."""
    return {"numerator": percentage.numerator, "denominator": _DENOMINATORS[percentage.denominator]}


def fault(anyConfig, path):
    """envoy.filters.http.fault (HTTPFault) as txmesh's ``fault``."""
    f = unpack(anyConfig, fault_pb2.HTTPFault, path)
    check(f, path, ("delay", "abort", "upstream_cluster", "headers", "downstream_nodes", "max_active_faults"),
          _FAULT_RUNTIME + ("disable_downstream_cluster_stats",))
    config = {}
    if f.HasField("delay"):
        d = f.delay
        dPath = path + ".delay"
        check(d, dPath, ("fixed_delay", "header_delay", "percentage"))
        config["delay"] = {"percentage": _fraction(d.percentage)}
        if d.HasField("header_delay"):
            config["delay"]["header_delay"] = True
        else:
            config["delay"]["fixed_delay"] = duration(d.fixed_delay)
    if f.HasField("abort"):
        a = f.abort
        aPath = path + ".abort"
        check(a, aPath, ("http_status", "grpc_status", "header_abort", "percentage"))
        config["abort"] = {"percentage": _fraction(a.percentage)}
        kind = a.WhichOneof("error_type")
        config["abort"][kind] = True if kind == "header_abort" else getattr(a, kind)
    if f.upstream_cluster:
        config["upstream_cluster"] = f.upstream_cluster
    if f.headers:
        config["headers"] = [headerMatcher(h, "%s.headers[%d]" % (path, i)) for i, h in enumerate(f.headers)]
    if f.downstream_nodes:
        config["downstream_nodes"] = list(f.downstream_nodes)
    if f.HasField("max_active_faults"):
        config["max_active_faults"] = f.max_active_faults.value
    if "delay" not in config and "abort" not in config:
        return None  # neither a delay nor an abort: Envoy injects nothing
    return {"name": "fault", "config": config}


def localRateLimit(anyConfig, path):
    """
    envoy.filters.http.local_ratelimit as txmesh's ``local_rate_limit``: enabled and enforced for every request, or
    not enabled at all (then it does nothing and is left out).
    """
    rl = unpack(anyConfig, local_rate_limit_pb2.LocalRateLimit, path)
    check(rl, path, ("stat_prefix", "status", "token_bucket", "filter_enabled", "filter_enforced",
                     "enable_x_ratelimit_headers"))
    enabled = _share(rl, "filter_enabled", path)
    if enabled == 0:
        return None  # Envoy: without filter_enabled the filter limits nothing
    if enabled != 1 or _share(rl, "filter_enforced", path) != 1:
        raise Refused("%s: txmesh enforces a local rate limit on every request or none: filter_enabled and "
                      "filter_enforced must be 100%% (or filter_enabled absent)" % (path,))
    if not rl.HasField("token_bucket"):
        raise Refused("%s.token_bucket: required (txmesh has no descriptors)" % (path,))
    tb = rl.token_bucket
    check(tb, path + ".token_bucket", ("max_tokens", "tokens_per_fill", "fill_interval"))
    bucket = {"max_tokens": tb.max_tokens, "fill_interval": duration(tb.fill_interval)}
    if tb.HasField("tokens_per_fill"):
        bucket["tokens_per_fill"] = tb.tokens_per_fill.value
    config = {"token_bucket": bucket, "stat_prefix": rl.stat_prefix or "local_rate_limit"}
    if rl.HasField("status"):
        config["status"] = rl.status.code
    if rl.enable_x_ratelimit_headers:
        config["enable_x_ratelimit_headers"] = True
    return {"name": "local_rate_limit", "config": config}


def _share(rl, key, path):
    """A RuntimeFractionalPercent's default value as a share (0..1); absent is 0."""
    if not rl.HasField(key):
        return 0
    value = getattr(rl, key)
    check(value, "%s.%s" % (path, key), ("default_value", "runtime_key"))
    d = value.default_value
    return d.numerator / {0: 100, 1: 10000, 2: 1000000}[d.denominator]


def rbac(anyConfig, path):
    """
    envoy.filters.http.rbac as txmesh's ``rbac`` in Envoy's shape (``rules``, ``shadow_rules``): the policies as the
    control plane wrote them (proto field names), for txmesh's RBAC builder to validate.
    """
    r = unpack(anyConfig, rbac_pb2.RBAC, path)
    check(r, path, ("rules", "shadow_rules"), ("rules_stat_prefix", "shadow_rules_stat_prefix"))
    config = {}
    for key in ("rules", "shadow_rules"):
        if r.HasField(key):
            rules = getattr(r, key)
            check(rules, "%s.%s" % (path, key), ("action", "policies"))
            doc = json_format.MessageToDict(rules, preserving_proto_field_name=True)
            doc["action"] = enumName(rules, "action")
            doc.setdefault("policies", {})
            config[key] = doc
    if "rules" not in config:
        return None  # Envoy: no rules, nothing enforced (shadow rules alone only count)
    return {"name": "rbac", "config": config}


def headerMutation(anyConfig, path):
    """envoy.filters.http.header_mutation as txmesh's ``header_mutation`` (removals before additions)."""
    h = unpack(anyConfig, header_mutation_pb2.HeaderMutation, path)
    check(h, path, ("mutations",))
    m = h.mutations
    mPath = path + ".mutations"
    check(m, mPath, ("request_mutations", "response_mutations"))
    config = {}
    for side in ("request", "response"):
        added, removed = [], []
        for i, mutation in enumerate(getattr(m, side + "_mutations")):
            where = "%s.%s_mutations[%d]" % (mPath, side, i)
            check(mutation, where, ("append", "remove"))
            if mutation.HasField("append"):
                o = mutation.append
                check(o, where + ".append", ("header", "append_action"))
                check(o.header, where + ".append.header", ("key", "value"))
                if o.append_action not in (0, 2):
                    raise Refused("%s.append.append_action %s: txmesh appends or overwrites" % (
                        where, enumName(o, "append_action")))
                added.append({"name": o.header.key, "value": o.header.value, "append": o.append_action == 0})
            else:
                if any(a["name"].lower() == mutation.remove.lower() for a in added):
                    raise Refused("%s.remove: txmesh removes before it adds: removing %s after adding it is not "
                                  "supported" % (where, mutation.remove))
                removed.append(mutation.remove)
        if added:
            config[side + "_headers_to_add"] = added
        if removed:
            config[side + "_headers_to_remove"] = removed
    return {"name": "header_mutation", "config": config}


# the typed_config type of each filter txmesh maps -> its translation
HTTP_FILTERS = {
    _PREFIX + "fault.v3.HTTPFault": fault,
    _PREFIX + "local_ratelimit.v3.LocalRateLimit": localRateLimit,
    _PREFIX + "rbac.v3.RBAC": rbac,
    _PREFIX + "header_mutation.v3.HeaderMutation": headerMutation,
}
