"""
The route table of an HTTP listener, in the spirit of Envoy's RouteConfiguration.

Immutable objects built once from ``route_config`` (``buildRouteConfig``, called by txmesh.config); the per-request
work is ``RouteConfig.match``: a dict lookup (cached) for the virtual host, then the first route whose match fits.
Everything is pre-encoded to bytes and regexes are precompiled, so matching does no parsing.
"""

import re
from bisect import bisect_right
from dataclasses import dataclass, field

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*\Z")
_DEFAULT_PORTS = {b"http": b"80", b"https": b"443"}
_REDIRECT_CODES = (301, 302, 303, 307, 308)
_CACHE_SIZE = 4096


# ---------------------------------------------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HeaderValueOption:
    """A header to add; ``append`` False replaces any existing field of that name."""

    name: bytes
    value: bytes
    append: bool = True


@dataclass(frozen=True, slots=True)
class HeaderMatcher:
    """
    One ``match.headers`` entry.  Exactly one of exact/prefix/regex/present is set.  The pseudo-header names
    ``:authority`` (or ``host``), ``:method``, ``:path`` and ``:scheme`` match the request head's fields.
    Repeated fields are matched as their values joined with ``,``.
    """

    name: bytes
    exact: bytes | None = None
    prefix: bytes | None = None
    regex: re.Pattern | None = None
    present: bool | None = None
    invert: bool = False

    def matches(self, request):
        name = self.name
        if name == b":authority" or name == b"host":
            value = request.authority or None
        elif name == b":method":
            value = request.method
        elif name == b":path":
            value = request.path
        elif name == b":scheme":
            value = request.scheme
        else:
            values = request.headers.getAll(name)
            value = (values[0] if len(values) == 1 else b",".join(values)) if values else None
        if self.present is not None:
            result = (value is not None) == self.present
        elif value is None:
            result = False
        elif self.exact is not None:
            result = value == self.exact
        elif self.prefix is not None:
            result = value.startswith(self.prefix)
        else:
            result = self.regex.fullmatch(value) is not None
        return result != self.invert


@dataclass(frozen=True, slots=True)
class RouteMatch:
    """
    What a route matches: exactly one of ``prefix`` / ``path`` (bytes, lower-cased when not case sensitive) /
    ``regex`` (a compiled bytes pattern, full match) on the path without its query; then ``methods`` (a frozenset
    of bytes, or None for any) and every HeaderMatcher of ``headers``.
    """

    prefix: bytes | None = None
    path: bytes | None = None
    regex: re.Pattern | None = None
    caseSensitive: bool = True
    methods: frozenset | None = None
    headers: tuple = ()
    dubbo: object = None  # a DubboMatch, for Dubbo listeners

    def matches(self, request, path):
        """Whether ``request`` (a txmesh.stream.RequestHead) with query-less ``path`` fits."""
        if not self.caseSensitive and self.regex is None:
            path = path.lower()
        if self.prefix is not None:
            if not path.startswith(self.prefix):
                return False
        elif self.path is not None:
            if path != self.path:
                return False
        elif self.regex.fullmatch(path) is None:
            return False
        if self.methods is not None and request.method not in self.methods:
            return False
        for h in self.headers:
            if not h.matches(request):
                return False
        if self.dubbo is not None and not self.dubbo.matches(request):
            return False
        return True


@dataclass(frozen=True, slots=True)
class DubboMatch:
    """
    ``match.dubbo``: interface (exact, ``prefix.*`` or ``*``), method, version, group (exact; "" matches absent) and
    attachment matchers (HeaderMatchers over the attachments, which a Dubbo listener exposes as request headers).
    """

    interface: str | None = None
    interfacePrefix: str | None = None
    method: str | None = None
    version: str | None = None
    group: str | None = None
    attachments: tuple = ()

    def matches(self, request):
        md = request.metadata
        if self.interface is not None and md.get("interface") != self.interface:
            return False
        if self.interfacePrefix is not None and not md.get("interface", "").startswith(self.interfacePrefix):
            return False
        for want, key in ((self.method, "method"), (self.version, "version"), (self.group, "group")):
            if want is not None and md.get(key, "") != want:
                return False
        for a in self.attachments:
            if not a.matches(request):
                return False
        return True


@dataclass(frozen=True, slots=True)
class RegexRewrite:
    """Replace every match of ``pattern`` in the path (not the query) with ``substitution`` (``\\1`` groups)."""

    pattern: re.Pattern
    substitution: bytes


def _splitPath(path):
    i = path.find(b"?")
    return (path, b"") if i < 0 else (path[:i], path[i:])


def _rewrite(action, request):
    if action.prefixRewrite is None and action.regexRewrite is None:
        return
    path, query = _splitPath(request.path)
    if action.prefixRewrite is not None:
        path = action.prefixRewrite + path[len(action.matchPrefix):]
    else:
        path = action.regexRewrite.pattern.sub(action.regexRewrite.substitution, path)
    request.path = path + query


@dataclass(frozen=True, slots=True)
class ClusterAction:
    """
    Forward to one cluster.  ``timeout`` in seconds (0 = none); ``hostRewrite`` replaces the authority;
    ``maxRequestBody`` (bytes) overrides the listener's limit when not None.
    """

    cluster: str
    timeout: float = 15.0
    prefixRewrite: bytes | None = None
    regexRewrite: RegexRewrite | None = None
    hostRewrite: bytes | None = None
    maxRequestBody: int | None = None
    matchPrefix: bytes | None = None  # the route's match.prefix, which prefixRewrite replaces

    def pickCluster(self, random):
        return self.cluster

    def rewritePath(self, request):
        """Apply prefix_rewrite / regex_rewrite to request.path in place, keeping the query."""
        _rewrite(self, request)


@dataclass(frozen=True, slots=True)
class WeightedClusterAction:
    """Forward to one of several clusters, chosen per request in proportion to the (name, weight) pairs."""

    clusters: tuple
    timeout: float = 15.0
    prefixRewrite: bytes | None = None
    regexRewrite: RegexRewrite | None = None
    hostRewrite: bytes | None = None
    maxRequestBody: int | None = None
    matchPrefix: bytes | None = None
    _cumulative: tuple = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        total, cumulative = 0, []
        for _, weight in self.clusters:
            total += weight
            cumulative.append(total)
        object.__setattr__(self, "_cumulative", tuple(cumulative))

    def pickCluster(self, random):
        """A cluster name, drawn with ``random`` (a random.Random) by weight."""
        return self.clusters[bisect_right(self._cumulative, random.randrange(self._cumulative[-1]))][0]

    def rewritePath(self, request):
        _rewrite(self, request)


@dataclass(frozen=True, slots=True)
class DirectResponseAction:
    """Answer from the proxy itself."""

    status: int
    body: bytes = b""


@dataclass(frozen=True, slots=True)
class RedirectAction:
    """Answer with a redirect; ``location(request)`` builds the Location value from the request and the options."""

    schemeRedirect: bytes | None = None
    hostRedirect: bytes | None = None
    portRedirect: int | None = None
    pathRedirect: bytes | None = None
    prefixRewrite: bytes | None = None
    responseCode: int = 301
    stripQuery: bool = False
    matchPrefix: bytes | None = None

    def location(self, request):
        path, query = _splitPath(request.path)
        if self.pathRedirect is not None:
            path, newQuery = _splitPath(self.pathRedirect)
            if newQuery:
                query = newQuery
        elif self.prefixRewrite is not None:
            path = self.prefixRewrite + path[len(self.matchPrefix):]
        if self.stripQuery:
            query = b""
        oldScheme = request.scheme or b"http"
        scheme = self.schemeRedirect or oldScheme
        host, port = splitAuthority(request.authority)
        if self.hostRedirect is not None:
            host = self.hostRedirect
        if self.portRedirect is not None:
            port = b"%d" % (self.portRedirect,)
        elif scheme != oldScheme:
            port = None  # the old port served the old scheme
        if port is not None and _DEFAULT_PORTS.get(scheme) != port:
            host = host + b":" + port
        return scheme + b"://" + host + path + query


@dataclass(frozen=True, slots=True)
class Route:
    """One route of a virtual host: a match, an action, and header mutations applied when it is chosen."""

    name: str | None
    virtualHost: object = field(repr=False, compare=False)  # the VirtualHost, set once it is built
    match: RouteMatch = None
    action: object = None
    requestHeadersToAdd: tuple = ()
    requestHeadersToRemove: tuple = ()
    responseHeadersToAdd: tuple = ()
    responseHeadersToRemove: tuple = ()


@dataclass(frozen=True, slots=True)
class VirtualHost:
    name: str
    domains: tuple
    routes: tuple = ()
    requestHeadersToAdd: tuple = ()
    requestHeadersToRemove: tuple = ()
    responseHeadersToAdd: tuple = ()
    responseHeadersToRemove: tuple = ()


def _encodeHost(host):
    """A host name as it appears on the wire: ASCII as is, IDNA for international names."""
    return host.encode("ascii") if host.isascii() else host.encode("idna")


def splitAuthority(authority):
    """(host, port or None) of an authority, bytes; "[v6]:port" keeps the brackets on the host."""
    i = authority.rfind(b":")
    if i < 0 or authority.find(b"]", i) >= 0 or (authority[:1] != b"[" and authority.find(b":") != i):
        return authority, None
    return authority[:i], authority[i + 1:]


@dataclass(frozen=True, slots=True)
class RouteConfig:
    """
    The virtual hosts of a listener.  A host is chosen by the request authority (port stripped, case-insensitive):
    an exact domain, then the longest "*.suffix" (or "*suffix") wildcard, then the longest "prefix.*", then "*".
    """

    virtualHosts: tuple = ()
    _exact: dict = field(init=False, repr=False, compare=False)
    _suffixes: tuple = field(init=False, repr=False, compare=False)
    _prefixes: tuple = field(init=False, repr=False, compare=False)
    _default: object = field(init=False, repr=False, compare=False)
    _cache: dict = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        exact, suffixes, prefixes, default = {}, [], [], None
        for vhost in self.virtualHosts:
            for domain in vhost.domains:
                d = _encodeHost(domain.lower())
                if d == b"*":
                    default = vhost
                elif d.startswith(b"*"):
                    suffixes.append((d[1:], vhost))
                elif d.endswith(b"*"):
                    prefixes.append((d[:-1], vhost))
                else:
                    exact[d] = vhost
        suffixes.sort(key=lambda e: -len(e[0]))
        prefixes.sort(key=lambda e: -len(e[0]))
        object.__setattr__(self, "_exact", exact)
        object.__setattr__(self, "_suffixes", tuple(suffixes))
        object.__setattr__(self, "_prefixes", tuple(prefixes))
        object.__setattr__(self, "_default", default)
        object.__setattr__(self, "_cache", {})

    def virtualHostFor(self, authority):
        """The VirtualHost for an authority (bytes), or None."""
        cache = self._cache
        try:
            return cache[authority]
        except KeyError:
            pass
        host = splitAuthority(authority)[0].lower()
        vhost = self._exact.get(host)
        if vhost is None:
            n = len(host)
            for suffix, candidate in self._suffixes:
                if n > len(suffix) and host.endswith(suffix):
                    vhost = candidate
                    break
            else:
                for prefix, candidate in self._prefixes:
                    if n > len(prefix) and host.startswith(prefix):
                        vhost = candidate
                        break
                else:
                    vhost = self._default
        if len(cache) >= _CACHE_SIZE:  # bounded: a flood of made-up Host values must not grow memory
            cache.clear()
        cache[authority] = vhost
        return vhost

    def match(self, request):
        """The first Route of the request's virtual host that fits, or None."""
        vhost = self.virtualHostFor(request.authority)
        if vhost is None:
            return None
        path = request.pathOnly()
        for route in vhost.routes:
            if route.match.matches(request, path):
                return route
        return None


# ---------------------------------------------------------------------------------------------------------------
# Building from mesh.yaml (``reader`` is txmesh.config's typed accessor, which raises ConfigErrors)
# ---------------------------------------------------------------------------------------------------------------

_HEADER_KEYS = ("request_headers_to_add", "request_headers_to_remove", "response_headers_to_add",
                "response_headers_to_remove")


def _join(path, key):
    return path + "." + key if path else key


def buildRouteConfig(r, raw, path, clusterNames):
    """Validate a ``route_config`` mapping (None = no routes) into a RouteConfig."""
    if raw is None:
        return RouteConfig(())
    r.mapping(raw, path, optional=("virtual_hosts",))
    vhosts, names, owners = [], {}, {}
    for i, v in enumerate(r.list(raw, path, "virtual_hosts")):
        vPath = "%s.virtual_hosts[%d]" % (path, i)
        r.mapping(v, vPath, required=("name", "domains"), optional=("routes",) + _HEADER_KEYS)
        name = r.name(v, vPath)
        if name in names:
            raise r.error("duplicate virtual host name '%s' (also %s)" % (name, names[name]), _join(vPath, "name"))
        names[name] = vPath
        domains = _domains(r, v, vPath, name, owners)
        routes = tuple(_buildRoute(r, rt, "%s.routes[%d]" % (vPath, j), clusterNames)
                       for j, rt in enumerate(r.list(v, vPath, "routes")))
        vhost = VirtualHost(name, domains, routes, *_headerMutations(r, v, vPath))
        for route in routes:
            object.__setattr__(route, "virtualHost", vhost)
        vhosts.append(vhost)
    return RouteConfig(tuple(vhosts))


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
        return _encodeHost(value)
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


def _buildRoute(r, m, path, clusterNames):
    r.mapping(m, path, required=("match",), optional=("name", "route", "direct_response", "redirect")
              + _HEADER_KEYS)
    name = r.get(m, path, "name", str, None)
    match = _buildMatch(r, m["match"], _join(path, "match"))
    kind = _exactlyOne(r, m, path, ("route", "direct_response", "redirect"))
    aPath = _join(path, kind)
    if kind == "route":
        action = _buildClusterAction(r, m[kind], aPath, match, clusterNames)
    elif kind == "direct_response":
        d = r.mapping(m[kind], aPath, required=("status",), optional=("body",))
        action = DirectResponseAction(r.integer(d, aPath, "status", None, 200, 599),
                                      r.get(d, aPath, "body", str, "").encode("utf-8"))
    else:
        action = _buildRedirect(r, m[kind], aPath, match)
    return Route(name, None, match, action, *_headerMutations(r, m, path))


def _buildMatch(r, m, path):
    r.mapping(m, path, optional=("prefix", "path", "regex", "methods", "headers", "case_sensitive", "dubbo", "grpc"))
    if m.get("grpc") is not None:
        m = _grpcMatch(r, m, _join(path, "grpc"))
    if m.get("dubbo") is not None and all(m.get(k) is None for k in ("prefix", "path", "regex")):
        m = dict(m, prefix="/")  # a Dubbo route needs no path match
    kind = _exactlyOne(r, m, path, ("prefix", "path", "regex"))
    caseSensitive = r.get(m, path, "case_sensitive", bool, True)
    value = r.get(m, path, kind, str)
    kw = {}
    if kind == "regex":
        kw["regex"] = _regex(r, value, _join(path, kind), 0 if caseSensitive else re.IGNORECASE)
    else:
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
                      dubbo=_buildDubboMatch(r, m.get("dubbo"), _join(path, "dubbo")), **kw)


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


def _prefixRewrite(r, m, path, match):
    value = r.get(m, path, "prefix_rewrite", str, None)
    if value is not None and match.prefix is None:
        raise r.error("prefix_rewrite needs match.prefix", _join(path, "prefix_rewrite"))
    return None if value is None else value.encode("utf-8")


def _buildClusterAction(r, m, path, match, clusterNames):
    r.mapping(m, path, optional=("cluster", "weighted_clusters", "timeout", "prefix_rewrite", "regex_rewrite",
                                 "host_rewrite", "max_request_body"))
    kind = _exactlyOne(r, m, path, ("cluster", "weighted_clusters"))
    prefixRewrite = _prefixRewrite(r, m, path, match)
    regexRewrite = None
    if m.get("regex_rewrite") is not None:
        rrPath = _join(path, "regex_rewrite")
        if prefixRewrite is not None:
            raise r.error("prefix_rewrite and regex_rewrite are exclusive", rrPath)
        rr = r.mapping(m["regex_rewrite"], rrPath, required=("pattern", "substitution"))
        regexRewrite = RegexRewrite(_regex(r, r.get(rr, rrPath, "pattern", str), _join(rrPath, "pattern")),
                                    r.get(rr, rrPath, "substitution", str).encode("utf-8"))
    hostRewrite = r.get(m, path, "host_rewrite", str, None)
    if hostRewrite is not None:
        hostRewrite = _host(r, hostRewrite, _join(path, "host_rewrite"))
    common = dict(timeout=r.duration(m, path, "timeout", 15.0), prefixRewrite=prefixRewrite,
                  regexRewrite=regexRewrite, hostRewrite=hostRewrite,
                  maxRequestBody=r.integer(m, path, "max_request_body", None, 0), matchPrefix=match.prefix)
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
