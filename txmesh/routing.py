"""
The route table of an HTTP listener, in the spirit of Envoy's RouteConfiguration.

Immutable objects built once from ``route_config`` (by txmesh.routing_config.buildRouteConfig); the per-request
work is ``RouteConfig.match``: a dict lookup (cached) for the virtual host, then the first route whose match fits.
Everything is pre-encoded to bytes and regexes are precompiled, so matching does no parsing.
"""

import re
from bisect import bisect_right
from dataclasses import dataclass, field

_DEFAULT_PORTS = {b"http": b"80", b"https": b"443"}
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
    peer: object = None  # a PeerMatch: the client certificate's identity (TLS listeners, issue 14)
    connect: bool = False  # connect_matcher: only CONNECT requests, with no path match (txmesh.tunnel_config)

    def matches(self, request, path, peer=None):
        """Whether ``request`` (a txmesh.stream.RequestHead) with query-less ``path`` fits."""
        return self.mismatch(request, path, peer) is None

    def mismatch(self, request, path, peer=None):
        """
        None when ``request`` with query-less ``path`` fits, else the first matcher that failed, as the admin
        API's ``/explain`` names it: ``prefix``, ``path``, ``regex``, ``method``, ``header <name>`` or a Dubbo
        matcher's (L{DubboMatch.mismatch}).  ``matches`` is this, so the two cannot disagree.
        """
        if not self.caseSensitive and self.regex is None:
            path = path.lower()
        if self.prefix is not None:
            if not path.startswith(self.prefix):
                return "prefix"
        elif self.path is not None:
            if path != self.path:
                return "path"
        elif self.regex is not None:
            if self.regex.fullmatch(path) is None:
                return "regex"
        elif request.method != b"CONNECT":
            return "connect_matcher"
        if self.methods is not None and request.method not in self.methods:
            return "method"
        for h in self.headers:
            if not h.matches(request):
                return "header " + h.name.decode("latin-1")
        if self.peer is not None and not self.peer.matches(peer):
            return "peer"
        if self.dubbo is not None:
            return self.dubbo.mismatch(request)
        return None


@dataclass(frozen=True, slots=True)
class StringMatch:
    """An exact or prefix match on a str (one of the two is set)."""

    exact: str | None = None
    prefix: str | None = None

    def matches(self, value):
        if self.exact is not None:
            return value == self.exact
        return value.startswith(self.prefix)


@dataclass(frozen=True, slots=True)
class PeerMatch:
    """
    ``match.peer``: the downstream's IPeerIdentity (its verified client certificate) must exist and fit every
    matcher given: ``principal`` (SPIFFE ID, else first URI SAN, else first DNS SAN, else the subject), any of its
    URI SANs (``uriSan``), any of its DNS SANs (``dnsSan``).
    """

    principal: StringMatch | None = None
    uriSan: StringMatch | None = None
    dnsSan: StringMatch | None = None

    def matches(self, peer):
        if peer is None:
            return False
        if self.principal is not None and not self.principal.matches(peer.principal):
            return False
        if self.uriSan is not None and not any(self.uriSan.matches(u) for u in peer.uriSans):
            return False
        if self.dnsSan is not None and not any(self.dnsSan.matches(d) for d in peer.dnsSans):
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
        return self.mismatch(request) is None

    def mismatch(self, request):
        """None when ``request`` fits, else the matcher that failed: ``dubbo interface``, ``dubbo method``,
        ``dubbo version``, ``dubbo group`` or ``dubbo attachment <name>``."""
        md = request.metadata
        if self.interface is not None and md.get("interface") != self.interface:
            return "dubbo interface"
        if self.interfacePrefix is not None and not md.get("interface", "").startswith(self.interfacePrefix):
            return "dubbo interface"
        for want, key in ((self.method, "method"), (self.version, "version"), (self.group, "group")):
            if want is not None and md.get(key, "") != want:
                return "dubbo " + key
        for a in self.attachments:
            if not a.matches(request):
                return "dubbo attachment " + a.name.decode("latin-1")
        return None


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
class HashPolicy:
    """
    One entry of a route's ``hash_policy`` (Envoy's RouteAction.HashPolicy): where the request's hash key comes
    from (txmesh.upstream.hashing.requestHash combines them).

    kind: ``header`` (gRPC metadata included), ``cookie``, ``source_ip``, ``query_parameter`` or
        ``dubbo_attachment``.
    name: the header, cookie, query parameter or attachment name (bytes; header and attachment names lower-case),
        None for ``source_ip``.
    terminal: when this entry yields a key, the later entries are not looked at.
    """

    kind: str
    name: bytes | None = None
    terminal: bool = False


@dataclass(frozen=True, slots=True)
class MirrorPolicy:
    """
    One ``request_mirror_policies`` entry: a copy of a sampled request (``numerator`` out of ``denominator``; with
    ``traceSampled``, only requests whose trace is sampled) goes to ``cluster``, fire and forget
    (txmesh.upstream.shadow).  Bounds: ``timeout`` seconds, ``maxInFlight`` shadows to the cluster at once,
    ``maxBufferedBytes`` of request body held per shadow while it waits for its connection.
    """

    cluster: str
    numerator: int = 100
    denominator: int = 100
    traceSampled: bool = False
    timeout: float = 15.0
    maxInFlight: int = 64
    maxBufferedBytes: int = 1 << 16


@dataclass(frozen=True, slots=True)
class ClusterAction:
    """
    Forward to one cluster.  ``timeout`` in seconds (0 = none) bounds the whole response from the end of the
    request; ``maxStreamDuration`` (0 = none) bounds the stream from its start; ``hostRewrite`` replaces the authority;
    ``maxRequestBody`` (bytes) overrides the listener's limit when not None.
    """

    cluster: str
    timeout: float = 15.0
    prefixRewrite: bytes | None = None
    regexRewrite: RegexRewrite | None = None
    hostRewrite: bytes | None = None
    maxRequestBody: int | None = None
    matchPrefix: bytes | None = None  # the route's match.prefix, which prefixRewrite replaces
    maxStreamDuration: float = 0.0
    retryPolicy: object = None  # the route's (or its virtual host's) retry policy, or None (issue 11)
    hashPolicies: tuple = ()  # hash_policy entries for ring_hash/maglev clusters (issue 11)
    mirrorPolicies: tuple = ()  # request_mirror_policies: MirrorPolicy entries (issue 11)
    upgrades: frozenset = frozenset()  # the Upgrade types (and b"connect") tunnelled (txmesh.tunnel_config)

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
    maxStreamDuration: float = 0.0
    retryPolicy: object = None  # the route's (or its virtual host's) retry policy, or None (issue 11)
    hashPolicies: tuple = ()  # hash_policy entries for ring_hash/maglev clusters (issue 11)
    mirrorPolicies: tuple = ()  # request_mirror_policies: MirrorPolicy entries (issue 11)
    upgrades: frozenset = frozenset()  # the Upgrade types (and b"connect") tunnelled (txmesh.tunnel_config)
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
class DubboRegistryAction:
    """
    ``route: {dubbo_registry: {...}}`` on a Dubbo listener (issue 12 part 2): each call goes to the providers of its
    own interface, group and version in a ZooKeeper registry, through a cluster made on demand (named
    ``clusterName(request)``) by txmesh.discovery.dubbo_clusters from ``template`` (a ClusterConfig: lb policy,
    timeouts, outlier detection, circuit breakers; set once config resolved it).  The route's timeout, retry,
    hash and mirror policies apply as for a ``cluster`` route.
    """

    registry: str
    templateName: str | None = None  # the clusters[] entry copied, or None for Dubbo's cluster defaults
    maxClusters: int = 256
    idleTimeout: float = 600.0
    initialFetchTimeout: float = 3.0
    protocol: str = "dubbo"  # the provider URLs' protocol
    configurators: bool = True
    timeout: float = 15.0
    maxRequestBody: int | None = None
    maxStreamDuration: float = 0.0
    retryPolicy: object = None
    hashPolicies: tuple = ()
    mirrorPolicies: tuple = ()
    prefixRewrite = None  # what the router reads of every forwarding action; a Dubbo call has no path to rewrite
    regexRewrite = None
    hostRewrite = None
    template: object = field(default=None, compare=False)
    path: str = field(default="", compare=False)  # the key path in mesh.yaml, for errors found after the listeners

    def service(self, request):
        """(interface, group, version) of a Dubbo call; version 0.0.0 is Dubbo's "none"."""
        md = request.metadata
        version = md.get("version", "")
        return md.get("interface", ""), md.get("group", ""), "" if version == "0.0.0" else version


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


def encodeHost(host):
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
    A request no route matches goes to ``defaultRoute`` (the listener's ``default_cluster``), if there is one.
    """

    virtualHosts: tuple = ()
    defaultRoute: object = None
    _exact: dict = field(init=False, repr=False, compare=False)
    _suffixes: tuple = field(init=False, repr=False, compare=False)
    _prefixes: tuple = field(init=False, repr=False, compare=False)
    _default: object = field(init=False, repr=False, compare=False)
    _cache: dict = field(init=False, repr=False, compare=False)
    _upgradeTypes: frozenset = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        types = set()
        routes = [r for vhost in self.virtualHosts for r in vhost.routes]
        if self.defaultRoute is not None:
            routes.append(self.defaultRoute)
        for route in routes:
            if isinstance(route.action, (ClusterAction, WeightedClusterAction)):
                types.update(route.action.upgrades)
        object.__setattr__(self, "_upgradeTypes", frozenset(types))
        exact, suffixes, prefixes, default = {}, [], [], None
        for vhost in self.virtualHosts:
            for domain in vhost.domains:
                d = encodeHost(domain.lower())
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

    def match(self, request, peer=None):
        """
        The first Route of the request's virtual host that fits, else the default route, else None.  ``peer``: the
        downstream's IPeerIdentity (for ``match.peer``), or None.  A CONNECT request is matched only by
        ``connect_matcher`` routes (never the default route), and only CONNECT requests by them.
        """
        vhost = self.virtualHostFor(request.authority)
        if request.method == b"CONNECT" and request.protocol != "dubbo":
            return self._matchConnect(vhost, request, peer)
        if vhost is None:
            return self.defaultRoute
        path = request.pathOnly()
        for route in vhost.routes:
            if route.match.mismatch(request, path, peer) is None:  # one call per route: matches() would add one
                return route
        return self.defaultRoute

    def _matchConnect(self, vhost, request, peer):
        if vhost is not None:
            for route in vhost.routes:
                if route.match.connect and route.match.mismatch(request, b"", peer) is None:
                    return route
        return None

    @property
    def upgradeTypes(self):
        """The Upgrade types (lower-case bytes, b"connect" for CONNECT) some route of this table tunnels."""
        return self._upgradeTypes

    def explain(self, request):
        """
        How ``match`` decides for ``request`` (the admin API's ``/explain``): (the VirtualHost or None,
        [(route, the matcher that failed)] for the routes tried before the chosen one, the chosen Route or None).
        The same lookups as ``match``; the chosen route is the default route when no route fits.
        """
        vhost = self.virtualHostFor(request.authority)
        if vhost is None:
            return None, [], self.defaultRoute
        path = request.pathOnly()
        failed = []
        for route in vhost.routes:
            why = route.match.mismatch(request, path)
            if why is None:
                return vhost, failed, route
            failed.append((route, why))
        return vhost, failed, self.defaultRoute


# ---------------------------------------------------------------------------------------------------------------
# Retries (issue 11 parts 5 and 10)
# ---------------------------------------------------------------------------------------------------------------

# retry_on names -> the grpc-status codes and Dubbo response statuses they retry
GRPC_RETRY_ON = {"cancelled": 1, "deadline-exceeded": 4, "resource-exhausted": 8, "internal": 13, "unavailable": 14}
DUBBO_RETRY_ON = {"timeout": (30, 31), "service-not-found": (60,), "server-error": (80,), "service-error": (70,),
                  "threadpool-exhausted": (100,), "bad-response": (50,)}
HTTP_RETRY_ON = ("5xx", "gateway-error", "reset", "connect-failure", "refused-stream", "retriable-4xx",
                 "retriable-status-codes")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """
    A route's (or its virtual host's) ``retry_policy``, validated (txmesh.routing_config).  The per-request
    decisions are in txmesh.upstream.retry; what each field means is in docs/configuration.md.

    ``onConnectFailure``/``onRefusedStream``/``onReset``: the failures before any answer that are retried;
    ``on5xx``/``onGatewayError``: HTTP status classes; ``retriableStatusCodes``: HTTP statuses retried besides
    (retriable-4xx adds 409); ``grpcCodes``/``dubboStatuses``: the answers retried by name.  ``budgetPercent``
    None: no budget, the cluster's ``max_retries`` breaker alone bounds concurrent retries.
    """

    numRetries: int = 1
    onConnectFailure: bool = False
    onRefusedStream: bool = False
    onReset: bool = False
    on5xx: bool = False
    onGatewayError: bool = False
    retriableStatusCodes: frozenset = frozenset()
    grpcCodes: frozenset = frozenset()
    dubboStatuses: frozenset = frozenset()
    perTryTimeout: float = 0.0
    baseInterval: float = 0.025
    maxInterval: float = 0.25
    previousHosts: bool = True
    hostSelectionAttempts: int = 1
    retryNonIdempotent: bool = False
    bufferLimit: int = 16384
    budgetPercent: float | None = None
    minRetryConcurrency: int = 3
    hedgeOnPerTryTimeout: bool = False
    includeAttemptCount: bool = False
