"""
RDS: Envoy's v3 RouteConfiguration (and a listener's inline ``route_config``) into mesh.yaml's ``route_config``
(txmesh.routing_config validates it).  Part of the translation txmesh.xds.translate describes: every set field is
mapped, known to have no effect, or refused naming its field path.
"""

from dataclasses import dataclass, field

from txmesh.xds.translate_common import Refused, check, duration, enumName, naming

# RouteAction.cluster_not_found_response_code -> the status of a route whose cluster is not there
NOT_FOUND_STATUS = {0: 503, 1: 404, 2: 500}
_REDIRECT_CODES = {0: 301, 1: 302, 2: 303, 3: 307, 4: 308}
_DENOMINATORS = {0: "HUNDRED", 1: "TEN_THOUSAND", 2: "MILLION"}


@dataclass(frozen=True, slots=True)
class TranslatedRoutes:
    """
    @ivar raw: the ``route_config`` mapping.
    @ivar validateClusters: whether a route naming a cluster that is not there rejects the configuration (Envoy's
        ``validate_clusters``: false by default for RDS) rather than answering ``notFound``'s status.
    @ivar notFound: {(virtual host index, route index): status} of the routes whose
        ``cluster_not_found_response_code`` is not 503.
    """

    raw: dict
    validateClusters: bool = False
    notFound: dict = field(default_factory=dict)


def translateRouteConfiguration(config):
    """A RouteConfiguration as L{TranslatedRoutes}.  @raise XdsResourceError: what txmesh cannot apply."""
    return naming("route_configuration", config.name, _routeConfiguration, config, "", True)


def translateRouteConfigurationBody(config, path):
    """A listener's inline ``route_config`` (at field path ``path``): L{TranslatedRoutes}.  @raise Refused."""
    return _routeConfiguration(config, path, rds=False)


def _join(path, key):
    return path + "." + key if path else key


def _routeConfiguration(config, path, rds):
    check(config, path, ("name", "virtual_hosts", "validate_clusters"), ("metadata",))
    validate = config.validate_clusters.value if config.HasField("validate_clusters") else not rds
    vhosts, notFound = [], {}
    for i, v in enumerate(config.virtual_hosts):
        vhosts.append(_virtualHost(v, _join(path, "virtual_hosts[%d]" % (i,)), i, notFound))
    return TranslatedRoutes({"virtual_hosts": vhosts}, validate, notFound)


def _virtualHost(v, path, index, notFound):
    check(v, path, ("name", "domains", "routes", "request_headers_to_add", "request_headers_to_remove",
                    "response_headers_to_add", "response_headers_to_remove", "retry_policy",
                    "include_request_attempt_count"), ("metadata",))
    out = {"name": v.name, "domains": list(v.domains)}
    routes = []
    for j, route in enumerate(v.routes):
        raw, status = _route(route, "%s.routes[%d]" % (path, j))
        routes.append(raw)
        if status != 503:
            notFound[(index, j)] = status
    if routes:
        out["routes"] = routes
    _headerMutations(v, path, out)
    if v.HasField("retry_policy"):
        out["retry_policy"] = _retryPolicy(v.retry_policy, _join(path, "retry_policy"))
    if v.include_request_attempt_count:
        out["include_request_attempt_count"] = True
    return out


def _headerMutations(m, path, out):
    for key in ("request_headers_to_add", "response_headers_to_add"):
        items = []
        for i, o in enumerate(getattr(m, key)):
            oPath = "%s.%s[%d]" % (path, key, i)
            check(o, oPath, ("header", "append", "append_action"))
            check(o.header, oPath + ".header", ("key", "value"))
            append = o.append.value if o.HasField("append") else True
            if o.append_action == 2:  # OVERWRITE_IF_EXISTS_OR_ADD
                append = False
            elif o.append_action != 0:
                raise Refused("%s.append_action %s: txmesh appends or overwrites" % (oPath, enumName(o, "append_action")))
            items.append({"name": o.header.key, "value": o.header.value, "append": append})
        if items:
            out[key] = items
    for key in ("request_headers_to_remove", "response_headers_to_remove"):
        if getattr(m, key):
            out[key] = list(getattr(m, key))


def _route(route, path):
    check(route, path, ("name", "match", "route", "redirect", "direct_response", "request_headers_to_add",
                        "request_headers_to_remove", "response_headers_to_add", "response_headers_to_remove"),
          ("metadata", "decorator"))
    out = {"match": _match(route.match, _join(path, "match"))}
    if route.name:
        out["name"] = route.name
    status = 503
    kind = route.WhichOneof("action")
    if kind == "route":
        out["route"], status = _routeAction(route.route, _join(path, "route"))
    elif kind == "redirect":
        out["redirect"] = _redirect(route.redirect, _join(path, "redirect"))
    elif kind == "direct_response":
        d = route.direct_response
        dPath = _join(path, "direct_response")
        check(d, dPath, ("status", "body"))
        out["direct_response"] = {"status": d.status}
        if d.HasField("body"):
            check(d.body, dPath + ".body", ("inline_string", "inline_bytes"))
            kind = d.body.WhichOneof("specifier")
            try:
                body = d.body.inline_string if kind == "inline_string" else d.body.inline_bytes.decode("utf-8")
            except UnicodeDecodeError:
                raise Refused("%s.body.inline_bytes: txmesh answers UTF-8 bodies" % (dPath,)) from None
            out["direct_response"]["body"] = body
    else:
        raise Refused("%s: txmesh routes with route, redirect or direct_response, not %s" % (path, kind))
    _headerMutations(route, path, out)
    return out, status


def _match(m, path):
    check(m, path, ("prefix", "path", "safe_regex", "case_sensitive", "headers", "grpc"))
    kind = m.WhichOneof("path_specifier")
    out = {}
    if kind == "safe_regex":
        check(m.safe_regex, _join(path, "safe_regex"), ("regex", "google_re2"))
        out["regex"] = m.safe_regex.regex
    elif kind in ("prefix", "path"):
        out[kind] = getattr(m, kind)
    else:
        raise Refused("%s: txmesh matches prefix, path or safe_regex" % (path,))
    if m.HasField("case_sensitive"):
        out["case_sensitive"] = m.case_sensitive.value
    headers = [headerMatcher(h, "%s.headers[%d]" % (path, i)) for i, h in enumerate(m.headers)]
    if m.HasField("grpc"):
        check(m.grpc, _join(path, "grpc"), ())
        headers.append({"name": "content-type", "prefix": "application/grpc"})  # what Envoy's grpc match tests
    if headers:
        out["headers"] = headers
    return out


def headerMatcher(h, path):
    """An Envoy HeaderMatcher as mesh.yaml's ``{name, exact|prefix|regex|present, invert}`` (routes, fault)."""
    check(h, path, ("name", "exact_match", "safe_regex_match", "present_match", "prefix_match", "string_match",
                    "invert_match"))
    out = {"name": h.name}
    kind = h.WhichOneof("header_match_specifier")
    if kind == "exact_match":
        out["exact"] = h.exact_match
    elif kind == "prefix_match":
        out["prefix"] = h.prefix_match
    elif kind == "safe_regex_match":
        check(h.safe_regex_match, _join(path, "safe_regex_match"), ("regex", "google_re2"))
        out["regex"] = h.safe_regex_match.regex
    elif kind == "present_match":
        out["present"] = h.present_match
    elif kind == "string_match":
        s = h.string_match
        sPath = _join(path, "string_match")
        check(s, sPath, ("exact", "prefix", "safe_regex"))
        which = s.WhichOneof("match_pattern")
        if which == "safe_regex":
            check(s.safe_regex, _join(sPath, "safe_regex"), ("regex", "google_re2"))
            out["regex"] = s.safe_regex.regex
        else:
            out[which] = getattr(s, which)
    else:
        out["present"] = True  # no specifier: Envoy matches a header that is there
    if h.invert_match:
        out["invert"] = True
    return out


_ACTION_FIELDS = ("cluster", "weighted_clusters", "timeout", "prefix_rewrite", "regex_rewrite", "host_rewrite_literal",
                  "retry_policy", "hash_policy", "request_mirror_policies", "max_stream_duration",
                  "cluster_not_found_response_code")


def _routeAction(a, path):
    check(a, path, _ACTION_FIELDS)
    out = {"timeout": duration(a.timeout) if a.HasField("timeout") else 15.0}
    kind = a.WhichOneof("cluster_specifier")
    if kind == "cluster":
        out["cluster"] = a.cluster
    elif kind == "weighted_clusters":
        w = a.weighted_clusters
        wPath = _join(path, "weighted_clusters")
        check(w, wPath, ("clusters", "total_weight"))
        entries = []
        for i, c in enumerate(w.clusters):
            check(c, "%s.clusters[%d]" % (wPath, i), ("name", "weight"))
            entries.append({"name": c.name, "weight": c.weight.value})
        total = sum(e["weight"] for e in entries)
        if w.HasField("total_weight") and w.total_weight.value != total:
            raise Refused("%s.total_weight %d: the weights add up to %d" % (wPath, w.total_weight.value, total))
        out["weighted_clusters"] = entries
    else:
        raise Refused("%s: txmesh routes to cluster or weighted_clusters, not %s" % (path, kind))
    if a.prefix_rewrite:
        out["prefix_rewrite"] = a.prefix_rewrite
    if a.HasField("regex_rewrite"):
        rr = a.regex_rewrite
        check(rr, _join(path, "regex_rewrite"), ("pattern", "substitution"))
        out["regex_rewrite"] = {"pattern": rr.pattern.regex, "substitution": rr.substitution}
    if a.host_rewrite_literal:
        out["host_rewrite"] = a.host_rewrite_literal
    if a.HasField("retry_policy"):
        out["retry_policy"] = _retryPolicy(a.retry_policy, _join(path, "retry_policy"))
    if a.hash_policy:
        out["hash_policy"] = [_hashPolicy(h, "%s.hash_policy[%d]" % (path, i)) for i, h in enumerate(a.hash_policy)]
    if a.request_mirror_policies:
        out["request_mirror_policies"] = [_mirror(m, "%s.request_mirror_policies[%d]" % (path, i))
                                          for i, m in enumerate(a.request_mirror_policies)]
    if a.HasField("max_stream_duration"):
        msd = a.max_stream_duration
        check(msd, _join(path, "max_stream_duration"), ("max_stream_duration",))
        out["max_stream_duration"] = duration(msd.max_stream_duration)
    return out, NOT_FOUND_STATUS.get(a.cluster_not_found_response_code, 503)


def _retryPolicy(p, path):
    check(p, path, ("retry_on", "num_retries", "per_try_timeout", "retry_host_predicate",
                    "host_selection_retry_max_attempts", "retriable_status_codes", "retry_back_off"))
    # no retry_on: this policy retries nothing (and still replaces the virtual host's, as in Envoy)
    out = {"retry_on": p.retry_on or "5xx",
           "num_retries": p.num_retries.value if p.HasField("num_retries") and p.retry_on else 1 if p.retry_on else 0,
           "retry_host_predicate": []}  # Envoy's default: none (txmesh's own default is previous_hosts)
    if p.HasField("per_try_timeout"):
        out["per_try_timeout"] = duration(p.per_try_timeout)
    for i, predicate in enumerate(p.retry_host_predicate):
        pPath = "%s.retry_host_predicate[%d]" % (path, i)
        check(predicate, pPath, ("name", "typed_config"))
        if predicate.name != "envoy.retry_host_predicates.previous_hosts":
            raise Refused("%s: txmesh has envoy.retry_host_predicates.previous_hosts only, not %s" % (
                pPath, predicate.name))
        out["retry_host_predicate"] = ["previous_hosts"]
    if p.host_selection_retry_max_attempts:
        out["host_selection_retry_max_attempts"] = p.host_selection_retry_max_attempts
    if p.retriable_status_codes:
        out["retriable_status_codes"] = list(p.retriable_status_codes)
    if p.HasField("retry_back_off"):
        b = p.retry_back_off
        check(b, _join(path, "retry_back_off"), ("base_interval", "max_interval"))
        out["retry_back_off"] = {"base_interval": duration(b.base_interval)}
        if b.HasField("max_interval"):
            out["retry_back_off"]["max_interval"] = duration(b.max_interval)
    return out


def _hashPolicy(h, path):
    check(h, path, ("header", "cookie", "connection_properties", "query_parameter", "terminal"))
    kind = h.WhichOneof("policy_specifier")
    out = {}
    if kind == "header":
        check(h.header, _join(path, "header"), ("header_name",))
        out["header"] = {"header_name": h.header.header_name}
    elif kind == "cookie":
        check(h.cookie, _join(path, "cookie"), ("name", "path"))
        out["cookie"] = {"name": h.cookie.name, **({"path": h.cookie.path} if h.cookie.path else {})}
    elif kind == "connection_properties":
        check(h.connection_properties, _join(path, "connection_properties"), ("source_ip",))
        out["connection_properties"] = {"source_ip": h.connection_properties.source_ip}
    elif kind == "query_parameter":
        check(h.query_parameter, _join(path, "query_parameter"), ("name",))
        out["query_parameter"] = {"name": h.query_parameter.name}
    else:
        raise Refused("%s: txmesh hashes on header, cookie, connection_properties or query_parameter" % (path,))
    if h.terminal:
        out["terminal"] = True
    return out


def _mirror(m, path):
    check(m, path, ("cluster", "runtime_fraction", "trace_sampled"))
    out = {"cluster": m.cluster}
    if m.HasField("runtime_fraction"):
        rf = m.runtime_fraction
        check(rf, _join(path, "runtime_fraction"), ("default_value",))
        out["runtime_fraction"] = {"default_value": {"numerator": rf.default_value.numerator,
                                                     "denominator": _DENOMINATORS[rf.default_value.denominator]}}
    if m.HasField("trace_sampled"):
        out["trace_sampled"] = m.trace_sampled.value
    return out


def _redirect(r, path):
    check(r, path, ("https_redirect", "scheme_redirect", "host_redirect", "port_redirect", "path_redirect",
                    "prefix_rewrite", "response_code", "strip_query"))
    out = {"response_code": _REDIRECT_CODES[r.response_code]}
    if r.https_redirect:
        out["scheme_redirect"] = "https"
    elif r.scheme_redirect:
        out["scheme_redirect"] = r.scheme_redirect
    for key in ("host_redirect", "path_redirect", "prefix_rewrite"):
        if getattr(r, key):
            out[key] = getattr(r, key)
    if r.port_redirect:
        out["port_redirect"] = r.port_redirect
    if r.strip_query:
        out["strip_query"] = True
    return out


__all__ = ["TranslatedRoutes", "translateRouteConfiguration", "translateRouteConfigurationBody", "NOT_FOUND_STATUS"]
