"""
Building a listener's route table from mesh.yaml's ``route_config``: validation and pre-encoding, done once at load.

``buildRouteConfig`` is called by txmesh.config with its typed reader (``r``: check/mapping/list/get/integer/name/
duration/error, raising ConfigErrors that name file, line and key path); the objects it builds, and the per-request
matching, are in txmesh.routing.
"""

import dataclasses
import re

from txmesh.config_reader import parseFraction
from txmesh.protocols.http1.wire import validAuthority
from txmesh.tunnel_config import CONNECT, allowedUpgrades, buildUpgradeConfigs
from txmesh.routing import (DUBBO_RETRY_ON, GRPC_RETRY_ON, HTTP_RETRY_ON, ClusterAction, DirectResponseAction,
                            DubboMatch, HashPolicy, HeaderMatcher, HeaderValueOption, MirrorPolicy, RedirectAction,
                            RegexRewrite, RetryPolicy, Route, RouteConfig, RouteMatch, VirtualHost, WeightedClusterAction, encodeHost,
                            DubboRegistryAction, PeerMatch, StringMatch)

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*\Z")
_REDIRECT_CODES = (301, 302, 303, 307, 308)
# what a rewritten path may not hold: it goes into an HTTP/1.1 request line (or :path) as is
_NOT_IN_PATH = re.compile(rb"[\x00-\x20\x7f#]")

_HEADER_KEYS = ("request_headers_to_add", "request_headers_to_remove", "response_headers_to_add",
                "response_headers_to_remove")


def _join(path, key):
    return path + "." + key if path else key


def buildRouteConfig(r, raw, path, clusterNames, defaultCluster=None, defaultTimeout=15.0, upgrades=()):
    """
    Validate a ``route_config`` mapping (None = no routes) into a RouteConfig; requests no route matches go to
    ``defaultCluster`` when one is named (the listener's ``default_cluster``).  ``defaultTimeout``: a route's
    ``timeout`` when it names none (0 on gRPC listeners).  ``upgrades``: the listener's ``upgrade_configs``
    (L{txmesh.tunnel_config.buildUpgradeConfigs}), which routes may override.
    """
    defaultRoute = None
    if defaultCluster is not None:
        vhost = VirtualHost("default_cluster", ("*",))
        defaultRoute = Route("default_cluster", vhost, RouteMatch(prefix=b"/"),
                             ClusterAction(defaultCluster, timeout=defaultTimeout, upgrades=allowedUpgrades(upgrades)))
    if raw is None:
        return RouteConfig((), defaultRoute)
    r.mapping(raw, path, optional=("virtual_hosts",))
    vhosts, names, owners = [], {}, {}
    for i, v in enumerate(r.list(raw, path, "virtual_hosts")):
        vPath = "%s.virtual_hosts[%d]" % (path, i)
        r.mapping(v, vPath, required=("name", "domains"),
                  optional=("routes",) + _HEADER_KEYS + ("retry_policy", "include_request_attempt_count"))
        name = r.name(v, vPath)
        if name in names:
            raise r.error("duplicate virtual host name '%s' (also %s)" % (name, names[name]), _join(vPath, "name"))
        names[name] = vPath
        domains = _domains(r, v, vPath, name, owners)
        routes = tuple(_buildRoute(r, rt, "%s.routes[%d]" % (vPath, j), clusterNames, defaultTimeout, upgrades)
                       for j, rt in enumerate(r.list(v, vPath, "routes")))
        vhostRetry = _buildRetryPolicy(r, v, vPath, r.get(v, vPath, "include_request_attempt_count", bool, False))
        if vhostRetry is not None:
            _inheritRetryPolicy(routes, vhostRetry)
        vhost = VirtualHost(name, domains, routes, *_headerMutations(r, v, vPath))
        for route in routes:
            object.__setattr__(route, "virtualHost", vhost)
        vhosts.append(vhost)
    return RouteConfig(tuple(vhosts), defaultRoute)


def _domains(r, v, vPath, name, owners):
    domains = r.list(v, vPath, "domains")
    if not domains:
        raise r.error("must list at least one domain", _join(vPath, "domains"))
    out = []
    for k, d in enumerate(domains):
        dPath = "%s.domains[%d]" % (vPath, k)
        d = r.check(d, dPath, str).lower()
        if not d or (d != "*" and ("*" in d[1:-1] or (d.startswith("*") and d.endswith("*")))):
            raise r.error("invalid domain '%s' (use name, *.suffix, prefix.* or *)" % (d,), dPath)
        _host(r, d.replace("*", "x"), dPath)
        if d in owners:
            raise r.error("domain '%s' is already in virtual host '%s'" % (d, owners[d]), dPath)
        owners[d] = name
        out.append(d)
    return tuple(out)


def _headerName(r, value, path, pseudo=False):
    value = r.check(value, path, str)
    bare = value[1:] if pseudo and value.startswith(":") else value
    if not _TOKEN.match(bare):
        raise r.error("invalid header name '%s'" % (value,), path)
    return value.lower().encode("ascii")


def _headerValue(r, value, path):
    value = r.check(value, path, str)
    if "\r" in value or "\n" in value or "\0" in value:
        raise r.error("header value must not contain CR, LF or NUL", path)
    return value.encode("utf-8")


def _headerMutations(r, m, path):
    """(requestHeadersToAdd, requestHeadersToRemove, responseHeadersToAdd, responseHeadersToRemove)."""
    out = []
    for key in _HEADER_KEYS:
        items = r.list(m, path, key)
        kPath = _join(path, key)
        if key.endswith("_add"):
            options = []
            for i, h in enumerate(items):
                hPath = "%s[%d]" % (kPath, i)
                r.mapping(h, hPath, required=("name", "value"), optional=("append",))
                options.append(HeaderValueOption(_headerName(r, h["name"], _join(hPath, "name")),
                                                 _headerValue(r, h["value"], _join(hPath, "value")),
                                                 r.get(h, hPath, "append", bool, True)))
            out.append(tuple(options))
        else:
            out.append(tuple(_headerName(r, h, "%s[%d]" % (kPath, i)) for i, h in enumerate(items)))
    return out


def _host(r, value, path):
    try:
        return encodeHost(value)
    except UnicodeError as e:
        raise r.error("invalid host '%s': %s" % (value, e), path) from e


def _regex(r, pattern, path, flags=0):
    try:
        return re.compile(pattern.encode("utf-8"), flags)
    except re.error as e:
        raise r.error("invalid regex '%s': %s" % (pattern, e), path) from e


def _exactlyOne(r, m, path, keys):
    present = [k for k in keys if m.get(k) is not None]
    if len(present) != 1:
        raise r.error("exactly one of %s is required%s" % (", ".join(keys), " (got %s)" % (
            ", ".join(present),) if present else ""), path)
    return present[0]


def _buildRoute(r, m, path, clusterNames, defaultTimeout=15.0, upgrades=()):
    r.mapping(m, path, required=("match",), optional=("name", "route", "direct_response", "redirect")
              + _HEADER_KEYS)
    name = r.get(m, path, "name", str, None)
    match = _buildMatch(r, m["match"], _join(path, "match"))
    kind = _exactlyOne(r, m, path, ("route", "direct_response", "redirect"))
    aPath = _join(path, kind)
    if kind == "route":
        action = _buildClusterAction(r, m[kind], aPath, match, clusterNames, defaultTimeout, upgrades)
        if match.connect and CONNECT not in action.upgrades:
            raise r.error("a connect_matcher route tunnels CONNECT: enable upgrade_type CONNECT in the listener's "
                          "or this route's upgrade_configs", _join(path, "match.connect_matcher"))
    elif kind == "direct_response":
        d = r.mapping(m[kind], aPath, required=("status",), optional=("body",))
        action = DirectResponseAction(r.integer(d, aPath, "status", None, 200, 599),
                                      r.get(d, aPath, "body", str, "").encode("utf-8"))
    else:
        action = _buildRedirect(r, m[kind], aPath, match)
    return Route(name, None, match, action, *_headerMutations(r, m, path))


def _buildMatch(r, m, path):
    r.mapping(m, path, optional=("prefix", "path", "regex", "methods", "headers", "case_sensitive", "dubbo", "grpc",
                                 "peer", "connect_matcher"))
    if m.get("grpc") is not None:
        m = _grpcMatch(r, m, _join(path, "grpc"))
    if m.get("dubbo") is not None and all(m.get(k) is None for k in ("prefix", "path", "regex")):
        m = dict(m, prefix="/")  # a Dubbo route needs no path match
    kind = _exactlyOne(r, m, path, ("prefix", "path", "regex", "connect_matcher"))
    caseSensitive = r.get(m, path, "case_sensitive", bool, True)
    kw = {}
    if kind == "connect_matcher":
        r.mapping(m[kind], _join(path, kind))  # Envoy's ConnectMatcher: no fields
        kw["connect"] = True
    elif kind == "regex":
        value = r.get(m, path, kind, str)
        kw["regex"] = _regex(r, value, _join(path, kind), 0 if caseSensitive else re.IGNORECASE)
    else:
        value = r.get(m, path, kind, str)
        kw[kind] = (value if caseSensitive else value.lower()).encode("utf-8")
    methods = None
    if m.get("methods") is not None:
        methods = frozenset(_headerName(r, x, "%s.methods[%d]" % (path, i)).upper()
                            for i, x in enumerate(r.list(m, path, "methods")))
    headers = []
    for i, h in enumerate(r.list(m, path, "headers")):
        hPath = "%s.headers[%d]" % (path, i)
        r.mapping(h, hPath, required=("name",), optional=("exact", "prefix", "regex", "present", "invert"))
        which = _exactlyOne(r, h, hPath, ("exact", "prefix", "regex", "present"))
        hkw = {}
        if which == "present":
            hkw["present"] = r.get(h, hPath, which, bool)
        elif which == "regex":
            hkw["regex"] = _regex(r, r.get(h, hPath, which, str), _join(hPath, which))
        else:
            hkw[which] = _headerValue(r, h[which], _join(hPath, which))
        headers.append(HeaderMatcher(_headerName(r, h["name"], _join(hPath, "name"), pseudo=True),
                                     invert=r.get(h, hPath, "invert", bool, False), **hkw))
    return RouteMatch(caseSensitive=caseSensitive, methods=methods, headers=tuple(headers),
                      dubbo=_buildDubboMatch(r, m.get("dubbo"), _join(path, "dubbo")),
                      peer=_buildPeerMatch(r, m.get("peer"), _join(path, "peer")), **kw)


def _buildPeerMatch(r, m, path):
    """``match.peer: {principal, uri_san, dns_san}``, each a string (exact) or ``{exact: ..}`` / ``{prefix: ..}``."""
    if m is None:
        return None
    r.mapping(m, path, optional=("principal", "uri_san", "dns_san"))
    if not m:
        raise r.error("must name principal, uri_san or dns_san", path)
    out = {}
    for key, field in (("principal", "principal"), ("uri_san", "uriSan"), ("dns_san", "dnsSan")):
        value = m.get(key)
        if value is None:
            continue
        kPath = _join(path, key)
        if isinstance(value, str):
            out[field] = StringMatch(exact=value)
            continue
        r.mapping(value, kPath, optional=("exact", "prefix"))
        which = _exactlyOne(r, value, kPath, ("exact", "prefix"))
        out[field] = StringMatch(**{which: r.get(value, kPath, which, str)})
    return PeerMatch(**out)


def _grpcMatch(r, m, path):
    """``match.grpc: {service: pkg.Svc, method: M}`` is the path ``/pkg.Svc/M`` (or the prefix ``/pkg.Svc/``)."""
    g = r.mapping(m["grpc"], path, required=("service",), optional=("method",))
    if any(m.get(k) is not None for k in ("prefix", "path", "regex")):
        raise r.error("grpc and prefix/path/regex are exclusive", path)
    service = r.get(g, path, "service", str)
    method = r.get(g, path, "method", str, None)
    for key, value in (("service", service), ("method", method)):
        if value is not None and (not value or "/" in value or any(c.isspace() for c in value)):
            raise r.error("invalid gRPC %s name '%s'" % (key, value), _join(path, key))
    m = dict(m)
    del m["grpc"]
    if method is None:
        m["prefix"] = "/%s/" % (service,)
    else:
        m["path"] = "/%s/%s" % (service, method)
    return m


def _buildDubboMatch(r, m, path):
    if m is None:
        return None
    r.mapping(m, path, optional=("interface", "method", "version", "group", "attachments"))
    interface = r.get(m, path, "interface", str, None)
    prefix = None
    if interface is not None and interface.endswith("*"):
        if "*" in interface[:-1]:
            raise r.error("invalid interface '%s' (use a name, prefix.* or *)" % (interface,),
                          _join(path, "interface"))
        interface, prefix = None, interface[:-1]
    elif interface is not None and "*" in interface:
        raise r.error("invalid interface '%s' (use a name, prefix.* or *)" % (interface,), _join(path, "interface"))
    attachments = []
    for i, a in enumerate(r.list(m, path, "attachments")):
        aPath = "%s.attachments[%d]" % (path, i)
        r.mapping(a, aPath, required=("name",), optional=("exact", "prefix", "regex", "present", "invert"))
        which = _exactlyOne(r, a, aPath, ("exact", "prefix", "regex", "present"))
        akw = {}
        if which == "present":
            akw["present"] = r.get(a, aPath, which, bool)
        elif which == "regex":
            akw["regex"] = _regex(r, r.get(a, aPath, which, str), _join(aPath, which))
        else:
            akw[which] = r.get(a, aPath, which, str).encode("utf-8")
        name = r.get(a, aPath, "name", str).lower().encode("utf-8")
        attachments.append(HeaderMatcher(name, invert=r.get(a, aPath, "invert", bool, False), **akw))
    return DubboMatch(interface, prefix or None, r.get(m, path, "method", str, None),
                      r.get(m, path, "version", str, None), r.get(m, path, "group", str, None), tuple(attachments))


def _pathPart(r, value, path):
    """A rewrite's replacement text, as bytes: nothing a request line cannot carry (spaces, controls, ``#``)."""
    encoded = value.encode("utf-8")
    if _NOT_IN_PATH.search(encoded) is not None:
        raise r.error("invalid path part %r: no spaces, control characters or '#'" % (value,), path)
    return encoded


def _prefixRewrite(r, m, path, match):
    value = r.get(m, path, "prefix_rewrite", str, None)
    if value is not None and match.prefix is None:
        raise r.error("prefix_rewrite needs match.prefix", _join(path, "prefix_rewrite"))
    return None if value is None else _pathPart(r, value, _join(path, "prefix_rewrite"))


def _buildClusterAction(r, m, path, match, clusterNames, defaultTimeout=15.0, upgrades=()):
    r.mapping(m, path, optional=("cluster", "weighted_clusters", "timeout", "prefix_rewrite", "regex_rewrite",
                                 "host_rewrite", "max_request_body", "max_stream_duration", "retry_policy",
                                 "hash_policy", "request_mirror_policies", "dubbo_registry", "upgrade_configs"))
    kind = _exactlyOne(r, m, path, ("cluster", "weighted_clusters", "dubbo_registry"))
    prefixRewrite = _prefixRewrite(r, m, path, match)
    regexRewrite = None
    if m.get("regex_rewrite") is not None:
        rrPath = _join(path, "regex_rewrite")
        if prefixRewrite is not None:
            raise r.error("prefix_rewrite and regex_rewrite are exclusive", rrPath)
        rr = r.mapping(m["regex_rewrite"], rrPath, required=("pattern", "substitution"))
        regexRewrite = RegexRewrite(_regex(r, r.get(rr, rrPath, "pattern", str), _join(rrPath, "pattern")),
                                    _pathPart(r, r.get(rr, rrPath, "substitution", str),
                                              _join(rrPath, "substitution")))
    hostRewrite = r.get(m, path, "host_rewrite", str, None)
    if hostRewrite is not None:
        hrPath = _join(path, "host_rewrite")
        hostRewrite = _host(r, hostRewrite, hrPath)
        if not validAuthority(hostRewrite, requireHost=True):
            raise r.error("invalid host_rewrite %r: not host[:port]" % (hostRewrite.decode("ascii", "replace"),),
                          hrPath)
    common = dict(timeout=r.duration(m, path, "timeout", defaultTimeout),
                  maxStreamDuration=r.duration(m, path, "max_stream_duration", 0.0), prefixRewrite=prefixRewrite,
                  regexRewrite=regexRewrite, hostRewrite=hostRewrite,
                  maxRequestBody=r.integer(m, path, "max_request_body", None, 0), matchPrefix=match.prefix,
                  retryPolicy=_buildRetryPolicy(r, m, path),
                  hashPolicies=_buildHashPolicies(r, m, path),
                  mirrorPolicies=_buildMirrorPolicies(r, m, path, clusterNames))
    if kind == "dubbo_registry":
        if m.get("upgrade_configs") is not None:
            raise r.error("a dubbo_registry route does not tunnel", _join(path, "upgrade_configs"))
        return _buildDubboRegistry(r, m, path, clusterNames, common)
    common["upgrades"] = allowedUpgrades(upgrades, buildUpgradeConfigs(r, m, path))
    if kind == "cluster":
        name = r.get(m, path, "cluster", str)
        _checkCluster(r, name, _join(path, "cluster"), clusterNames)
        return ClusterAction(name, **common)
    wPath = _join(path, "weighted_clusters")
    clusters = []
    for i, w in enumerate(r.list(m, path, "weighted_clusters")):
        cPath = "%s[%d]" % (wPath, i)
        r.mapping(w, cPath, required=("name", "weight"))
        name = r.get(w, cPath, "name", str)
        _checkCluster(r, name, _join(cPath, "name"), clusterNames)
        clusters.append((name, r.integer(w, cPath, "weight", None, 0)))
    if sum(weight for _, weight in clusters) <= 0:
        raise r.error("the weights must add up to more than 0", wPath)
    return WeightedClusterAction(tuple(clusters), **common)


_DUBBO_REGISTRY_KEYS = ("registry", "cluster_template", "max_clusters", "idle_timeout", "initial_fetch_timeout",
                        "protocol", "configurators")


def _buildDubboRegistry(r, m, path, clusterNames, common):
    """
    ``route.dubbo_registry`` (issue 12 part 2): the route's calls go to clusters made on demand per interface,
    group and version from a ZooKeeper registry.  The registry, the template's protocol and the listener's are
    checked once every listener is built (L{resolveDubboRegistryActions}).
    """
    dPath = _join(path, "dubbo_registry")
    d = r.mapping(m["dubbo_registry"], dPath, required=("registry",), optional=_DUBBO_REGISTRY_KEYS[1:])
    for key in ("prefix_rewrite", "regex_rewrite", "host_rewrite"):
        if m.get(key) is not None:
            raise r.error("a dubbo_registry route does not rewrite calls", _join(path, key))
    template = r.get(d, dPath, "cluster_template", str, None)
    if template is not None:
        _checkCluster(r, template, _join(dPath, "cluster_template"), clusterNames)
    idle = r.duration(d, dPath, "idle_timeout", 600.0)
    if idle <= 0:
        raise r.error("must be a duration > 0 (idle clusters are always removed)", _join(dPath, "idle_timeout"))
    initial = r.duration(d, dPath, "initial_fetch_timeout", 3.0)
    if not 0 < initial <= 60:
        raise r.error("must be a duration between 0 and 60s (a call waits that long at most)",
                      _join(dPath, "initial_fetch_timeout"))
    protocol = r.get(d, dPath, "protocol", str, "dubbo")
    if not protocol or not protocol.isascii() or not protocol.isalnum():
        raise r.error("must be a URL scheme such as dubbo", _join(dPath, "protocol"))
    del common["prefixRewrite"], common["regexRewrite"], common["hostRewrite"], common["matchPrefix"]
    return DubboRegistryAction(
        registry=r.get(d, dPath, "registry", str), templateName=template,
        maxClusters=r.integer(d, dPath, "max_clusters", 256, 1, 100000), idleTimeout=idle,
        initialFetchTimeout=initial, protocol=protocol, configurators=r.get(d, dPath, "configurators", bool, True),
        path=dPath, **common)


def resolveDubboRegistryActions(r, listeners, clusters, registries, defaultTemplate):
    """
    Once listeners and clusters are built: every ``dubbo_registry`` route is on a Dubbo listener, names a ZooKeeper
    registry and a template cluster of protocol dubbo with neither endpoints nor discovery; routes naming one
    registry agree (they share its clusters).  Sets each action's ``template`` (``defaultTemplate()`` when it
    names none: Dubbo's cluster defaults).
    """
    first = {}
    for listener in listeners:
        for vhost in listener.routeConfig.virtualHosts:
            for route in vhost.routes:
                action = route.action
                if not isinstance(action, DubboRegistryAction):
                    continue
                if listener.protocol != "dubbo":
                    raise r.error("dubbo_registry routes only Dubbo calls (this listener is '%s')"
                                  % (listener.protocol,), action.path)
                registry = registries.get(action.registry)
                if registry is None or registry.type != "zookeeper":
                    raise r.error("'%s' is not a zookeeper registry (registries: %s)" % (
                        action.registry, ", ".join(sorted(registries)) or "none"), _join(action.path, "registry"))
                if action.templateName is None:
                    template = defaultTemplate()
                else:
                    template = clusters[action.templateName]
                    tPath = _join(action.path, "cluster_template")
                    if template.protocol != "dubbo":
                        raise r.error("cluster '%s' is %s; the template must be a dubbo cluster"
                                      % (template.name, template.protocol), tPath)
                    if template.endpoints or template.discovery is not None:
                        raise r.error("cluster '%s' has endpoints or discovery; a template has neither"
                                      % (template.name,), tPath)
                object.__setattr__(action, "template", template)
                shared = (action.templateName, action.maxClusters, action.idleTimeout, action.initialFetchTimeout,
                          action.protocol, action.configurators)
                other = first.setdefault(action.registry, (shared, action.path))
                if other[0] != shared:
                    raise r.error("routes to registry '%s' share its clusters: their dubbo_registry settings must be "
                                  "the same as %s's" % (action.registry, other[1]), action.path)


_RETRY_KEYS = ("retry_on", "retriable_status_codes", "num_retries", "per_try_timeout", "retry_back_off",
               "retry_host_predicate", "host_selection_retry_max_attempts", "retry_non_idempotent",
               "per_request_buffer_limit", "retry_budget", "hedge_on_per_try_timeout",
               "include_request_attempt_count")


def _buildRetryPolicy(r, m, path, includeAttemptCount=False):
    """
    The ``retry_policy`` of a route (``m`` its ``route`` mapping) or a virtual host (issue 11 parts 5 and 10), or
    None when it has none.  ``includeAttemptCount``: the virtual host's ``include_request_attempt_count``.
    """
    raw = m.get("retry_policy")
    if raw is None:
        return RetryPolicy(numRetries=0, includeAttemptCount=True) if includeAttemptCount else None
    path = _join(path, "retry_policy")
    r.mapping(raw, path, required=("retry_on",), optional=_RETRY_KEYS)
    retryOn = raw["retry_on"]
    onPath = _join(path, "retry_on")
    if isinstance(retryOn, str):
        names = [n.strip() for n in retryOn.split(",") if n.strip()]
    else:
        names = [r.check(n, "%s[%d]" % (onPath, i), str).strip() for i, n in enumerate(r.list(raw, path, "retry_on"))]
    known = HTTP_RETRY_ON + tuple(GRPC_RETRY_ON) + tuple(DUBBO_RETRY_ON)
    grpcCodes, dubboStatuses = set(), set()
    for name in names:
        if name not in known:
            raise r.error("unknown retry_on condition '%s' (known: %s)" % (name, ", ".join(known)), onPath)
        if name in GRPC_RETRY_ON:
            grpcCodes.add(GRPC_RETRY_ON[name])
        if name in DUBBO_RETRY_ON:
            dubboStatuses.update(DUBBO_RETRY_ON[name])
    if not names:
        raise r.error("must name at least one condition", onPath)
    codes = set()
    for i, code in enumerate(r.list(raw, path, "retriable_status_codes")):
        code = r.check(code, "%s.retriable_status_codes[%d]" % (path, i), int)
        if not 100 <= code <= 599:
            raise r.error("must be an HTTP status between 100 and 599, got %d" % (code,),
                          "%s.retriable_status_codes[%d]" % (path, i))
        codes.add(code)
    if codes and "retriable-status-codes" not in names:
        raise r.error("retriable_status_codes needs 'retriable-status-codes' in retry_on",
                      _join(path, "retriable_status_codes"))
    if "retriable-status-codes" in names and not codes:
        raise r.error("'retriable-status-codes' needs retriable_status_codes", onPath)
    if "retriable-4xx" in names:
        codes.add(409)
    backOff = r.mapping(raw.get("retry_back_off"), _join(path, "retry_back_off"),
                        optional=("base_interval", "max_interval"))
    bPath = _join(path, "retry_back_off")
    base = r.duration(backOff, bPath, "base_interval", 0.025)
    if base <= 0:
        raise r.error("must be > 0", _join(bPath, "base_interval"))
    maxInterval = r.duration(backOff, bPath, "max_interval", base * 10)
    if maxInterval < base:
        raise r.error("must be >= base_interval (%gs)" % (base,), _join(bPath, "max_interval"))
    predicates = [r.check(p, "%s.retry_host_predicate[%d]" % (path, i), str)
                  for i, p in enumerate(r.list(raw, path, "retry_host_predicate"))] \
        if raw.get("retry_host_predicate") is not None else ["previous_hosts"]
    for i, p in enumerate(predicates):
        if p != "previous_hosts":
            raise r.error("unknown retry host predicate '%s' (known: previous_hosts)" % (p,),
                          "%s.retry_host_predicate[%d]" % (path, i))
    budgetPercent, minConcurrency = None, 3
    if raw.get("retry_budget") is not None:
        budget = r.mapping(raw["retry_budget"], _join(path, "retry_budget"),
                           optional=("budget_percent", "min_retry_concurrency"))
        bPath = _join(path, "retry_budget")
        budgetPercent = r.number(budget, bPath, "budget_percent", 20.0, 0.0, 100.0)
        minConcurrency = r.integer(budget, bPath, "min_retry_concurrency", 3, 0)
    return RetryPolicy(
        numRetries=r.integer(raw, path, "num_retries", 1, 0, 100),
        onConnectFailure="connect-failure" in names, onRefusedStream="refused-stream" in names,
        onReset="reset" in names, on5xx="5xx" in names, onGatewayError="gateway-error" in names,
        retriableStatusCodes=frozenset(codes), grpcCodes=frozenset(grpcCodes),
        dubboStatuses=frozenset(dubboStatuses),
        perTryTimeout=r.duration(raw, path, "per_try_timeout", 0.0),
        baseInterval=base, maxInterval=maxInterval, previousHosts=bool(predicates),
        hostSelectionAttempts=r.integer(raw, path, "host_selection_retry_max_attempts", 1, 1, 100),
        retryNonIdempotent=r.get(raw, path, "retry_non_idempotent", bool, False),
        bufferLimit=r.integer(raw, path, "per_request_buffer_limit", 16384, 0),
        budgetPercent=budgetPercent, minRetryConcurrency=minConcurrency,
        hedgeOnPerTryTimeout=r.get(raw, path, "hedge_on_per_try_timeout", bool, False),
        includeAttemptCount=r.get(raw, path, "include_request_attempt_count", bool, includeAttemptCount))


def _inheritRetryPolicy(routes, policy):
    """
    Routes that forward without a retry_policy of their own take their virtual host's (``policy``); the virtual
    host's include_request_attempt_count applies to the routes' own policies too.
    """
    for route in routes:
        action = route.action
        if not isinstance(action, (ClusterAction, WeightedClusterAction, DubboRegistryAction)):
            continue
        own = action.retryPolicy
        if own is None:
            object.__setattr__(route, "action", dataclasses.replace(action, retryPolicy=policy))
        elif policy.includeAttemptCount and not own.includeAttemptCount:
            object.__setattr__(route, "action", dataclasses.replace(
                action, retryPolicy=dataclasses.replace(own, includeAttemptCount=True)))


# hash_policy kinds: (the key holding the kind's mapping, the name key inside it)
_HASH_KINDS = {
    "header": "header_name",
    "cookie": "name",
    "connection_properties": "source_ip",
    "query_parameter": "name",
    "dubbo_attachment": "name",
}


def _buildHashPolicies(r, m, path):
    """The route's ``hash_policy`` list (Envoy's RouteAction.HashPolicy) as HashPolicy objects."""
    out = []
    for i, e in enumerate(r.list(m, path, "hash_policy")):
        ePath = "%s.hash_policy[%d]" % (path, i)
        r.mapping(e, ePath, optional=tuple(_HASH_KINDS) + ("terminal",))
        kind = _exactlyOne(r, e, ePath, tuple(_HASH_KINDS))
        kPath = _join(ePath, kind)
        inner = _HASH_KINDS[kind]
        if kind == "cookie" and isinstance(e[kind], dict) and e[kind].get("ttl") is not None:
            raise r.error("generating the cookie (ttl) is not supported: txmesh hashes a cookie the client sends",
                          _join(kPath, "ttl"))
        km = r.mapping(e[kind], kPath, required=(inner,), optional=("path",) if kind == "cookie" else ())
        terminal = r.get(e, ePath, "terminal", bool, False)
        if kind == "connection_properties":
            if not r.get(km, kPath, "source_ip", bool):
                raise r.error("must be true (the only connection property)", _join(kPath, "source_ip"))
            out.append(HashPolicy("source_ip", None, terminal))
            continue
        name = r.get(km, kPath, inner, str)
        if not name:
            raise r.error("must not be empty", _join(kPath, inner))
        if kind in ("header", "dubbo_attachment"):
            name = name.lower()
        out.append(HashPolicy(kind, name.encode("utf-8"), terminal))
    return tuple(out)


_MIRROR_KEYS = ("cluster", "runtime_fraction", "fraction", "trace_sampled", "timeout", "max_in_flight",
                "max_buffered_bytes")


def _buildMirrorPolicies(r, m, path, clusterNames):
    """
    The route's ``request_mirror_policies`` (issue 11 part 9): MirrorPolicy entries.  The share is Envoy's
    ``runtime_fraction: {default_value: {numerator, denominator}}`` (txmesh has no runtime keys, so
    ``runtime_key`` is refused) or ``fraction`` (the same FractionalPercent, or a plain percentage); default all.
    A shadow's ``timeout`` defaults to the route's (15s when the route has none).
    """
    entries = r.list(m, path, "request_mirror_policies")
    if not entries:
        return ()
    routeTimeout = r.duration(m, path, "timeout", 0.0) or 15.0
    out = []
    for i, e in enumerate(entries):
        ePath = "%s.request_mirror_policies[%d]" % (path, i)
        r.mapping(e, ePath, required=("cluster",), optional=_MIRROR_KEYS[1:])
        cluster = r.get(e, ePath, "cluster", str)
        _checkCluster(r, cluster, _join(ePath, "cluster"), clusterNames)
        numerator, denominator = 100, 100
        if e.get("runtime_fraction") is not None and e.get("fraction") is not None:
            raise r.error("runtime_fraction and fraction are exclusive", ePath)
        fPath, raw = _join(ePath, "fraction"), e.get("fraction")
        if e.get("runtime_fraction") is not None:
            rfPath = _join(ePath, "runtime_fraction")
            rf = r.mapping(e["runtime_fraction"], rfPath, required=("default_value",))
            fPath, raw = _join(rfPath, "default_value"), rf["default_value"]
        if raw is not None:
            try:
                numerator, denominator = parseFraction(raw)
            except ValueError as exc:
                raise r.error(str(exc), fPath) from None
        out.append(MirrorPolicy(cluster, numerator, denominator,
                                traceSampled=r.get(e, ePath, "trace_sampled", bool, False),
                                timeout=r.duration(e, ePath, "timeout", routeTimeout),
                                maxInFlight=r.integer(e, ePath, "max_in_flight", 64, 1),
                                maxBufferedBytes=r.integer(e, ePath, "max_buffered_bytes", 1 << 16, 0)))
        if out[-1].timeout <= 0:
            raise r.error("must be a duration > 0 (a shadow is always bounded)", _join(ePath, "timeout"))
    return tuple(out)


def _checkCluster(r, name, path, clusterNames):
    if name not in clusterNames:
        raise r.error("unknown cluster '%s' (known: %s)" % (name, ", ".join(sorted(clusterNames)) or "none"), path)


def _buildRedirect(r, m, path, match):
    r.mapping(m, path, optional=("scheme_redirect", "host_redirect", "port_redirect", "path_redirect",
                                 "prefix_rewrite", "response_code", "strip_query"))
    scheme = r.get(m, path, "scheme_redirect", str, None)
    if scheme is not None and not _SCHEME.match(scheme):
        raise r.error("invalid scheme '%s'" % (scheme,), _join(path, "scheme_redirect"))
    host = r.get(m, path, "host_redirect", str, None)
    pathRedirect = r.get(m, path, "path_redirect", str, None)
    prefixRewrite = _prefixRewrite(r, m, path, match)
    if pathRedirect is not None and prefixRewrite is not None:
        raise r.error("path_redirect and prefix_rewrite are exclusive", _join(path, "prefix_rewrite"))
    if pathRedirect is not None and not pathRedirect.startswith("/"):
        raise r.error("must start with '/'", _join(path, "path_redirect"))
    code = r.get(m, path, "response_code", int, 301)
    if code not in _REDIRECT_CODES:
        raise r.error("must be one of %s, got %d" % (", ".join(map(str, _REDIRECT_CODES)), code),
                      _join(path, "response_code"))
    return RedirectAction(
        schemeRedirect=None if scheme is None else scheme.lower().encode("ascii"),
        hostRedirect=None if host is None else _host(r, host.lower(), _join(path, "host_redirect")),
        portRedirect=r.integer(m, path, "port_redirect", None, 1, 65535),
        pathRedirect=None if pathRedirect is None else pathRedirect.encode("utf-8"),
        prefixRewrite=prefixRewrite, responseCode=code, stripQuery=r.get(m, path, "strip_query", bool, False),
        matchPrefix=match.prefix)
