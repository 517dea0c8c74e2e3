"""
What a request is keyed by, for the filters that keep state per key (``local_rate_limit``'s buckets,
``error_rate_breaker``'s breakers): one ``descriptor`` kind per entry, compiled once at config load into a function
``key(request, callbacks) -> str or None`` (None: the request has no such descriptor and is not counted).

Kinds:
  - ``listener``: one key for every request (the filter's own bucket or breaker);
  - ``route``: the matched route's name (a route without a name is keyed ``_unnamed``; no route: None);
  - ``cluster``: the cluster of the matched route (weighted routes: their clusters joined with ``,``);
  - ``header`` (with ``header_name``): the header's value (absent: None);
  - ``source_address``: the downstream peer's address without the port;
  - ``authority``: the Host / :authority;
  - ``grpc_service`` / ``grpc_method``: ``pkg.Service`` / ``pkg.Service/Method`` of a gRPC request (else None);
  - ``dubbo_interface`` / ``dubbo_method``: ``interface`` / ``interface/method`` of a Dubbo call (else None);
  - ``service`` / ``method``: mesher's breaker scopes across protocols: the gRPC service or Dubbo interface, else
    the cluster; the gRPC or Dubbo method, else the cluster and the path without its query.
"""

from txmesh.routing import ClusterAction, WeightedClusterAction

KINDS = ("listener", "route", "cluster", "header", "source_address", "authority", "grpc_service", "grpc_method",
         "dubbo_interface", "dubbo_method", "service", "method")
# the kinds whose key the downstream peer alone decides (the same for every stream of a connection)
PEER_KINDS = frozenset({"listener", "source_address"})
UNNAMED_ROUTE = "_unnamed"


def _listener(request, callbacks):
    return "*"


def _route(request, callbacks):
    route = callbacks.route()
    if route is None:
        return None
    return route.name if route.name else UNNAMED_ROUTE


def _cluster(request, callbacks):
    route = callbacks.route()
    if route is None:
        return None
    action = route.action
    if isinstance(action, ClusterAction):
        return action.cluster
    if isinstance(action, WeightedClusterAction):
        return ",".join(name for name, _ in action.clusters)
    return None


_sourceKeys = {}  # downstream peer ("host:port") -> its source_address key, for the peers seen last (bounded)


def _sourceAddress(request, callbacks):
    peer = callbacks.streamInfo.downstreamPeer
    if not peer:
        return None
    key = _sourceKeys.get(peer)  # the streams of one connection share the peer: made once
    if key is None:
        key = (peer.rpartition(":")[0] or peer).strip("[]")
        if len(_sourceKeys) >= 4096:
            _sourceKeys.clear()
        _sourceKeys[peer] = key
    return key


def _authority(request, callbacks):
    return request.authority.decode("latin-1")


def _grpcParts(request):
    """(service, method) of a gRPC request's path, or None."""
    if request.protocol != "grpc":
        return None
    path = request.pathOnly().decode("latin-1")
    service, _, method = path.lstrip("/").partition("/")
    if not service or not method:
        return None
    return service, method


def _grpcService(request, callbacks):
    parts = _grpcParts(request)
    return parts[0] if parts else None


def _grpcMethod(request, callbacks):
    parts = _grpcParts(request)
    return "%s/%s" % parts if parts else None


def _dubboInterface(request, callbacks):
    if request.protocol != "dubbo":
        return None
    return request.metadata.get("interface") or None


def _dubboMethod(request, callbacks):
    if request.protocol != "dubbo":
        return None
    interface = request.metadata.get("interface")
    return "%s/%s" % (interface, request.metadata.get("method", "")) if interface else None


def _service(request, callbacks):
    if request.protocol == "grpc":
        return _grpcService(request, callbacks)
    if request.protocol == "dubbo":
        return _dubboInterface(request, callbacks)
    return _cluster(request, callbacks)


def _method(request, callbacks):
    if request.protocol == "grpc":
        return _grpcMethod(request, callbacks)
    if request.protocol == "dubbo":
        return _dubboMethod(request, callbacks)
    cluster = _cluster(request, callbacks)
    if cluster is None:
        return None
    return "%s%s" % (cluster, request.pathOnly().decode("latin-1"))


_SIMPLE = {
    "listener": _listener,
    "route": _route,
    "cluster": _cluster,
    "source_address": _sourceAddress,
    "authority": _authority,
    "grpc_service": _grpcService,
    "grpc_method": _grpcMethod,
    "dubbo_interface": _dubboInterface,
    "dubbo_method": _dubboMethod,
    "service": _service,
    "method": _method,
}


def _headerKey(name):
    def key(request, callbacks):
        value = request.headers.get(name)
        return None if value is None else value.decode("latin-1")
    return key


def buildDescriptor(raw, context, key="descriptor", kinds=KINDS):
    """
    The key function of ``raw[key]`` (a kind name, or a mapping ``{header: name}`` for ``header``), and its kind.

    @raise txmesh.errors.ConfigError: made by ``context.error`` for an unknown kind or a bad header name.
    """
    value = raw.get(key, "listener")
    if isinstance(value, dict):
        if list(value) != ["header"] or not isinstance(value["header"], str) or not value["header"].strip():
            raise context.error("a mapping here must be {header: <name>}", key)
        if "header" not in kinds:
            raise context.error("must be one of: %s" % (", ".join(kinds),), key)
        name = value["header"].strip().lower()
        if not name.isascii() or any(c in name for c in " :\t"):
            raise context.error("not a header name: %r" % (value["header"],), key + ".header")
        return "header", _headerKey(name.encode("ascii"))
    if not isinstance(value, str) or value not in _SIMPLE or value not in kinds:
        raise context.error("must be one of: %s, or {header: <name>}" % (
            ", ".join(k for k in kinds if k != "header"),), key)
    return value, _SIMPLE[value]


OVERFLOW_KEY = "_other"


class CappedMap:
    """
    Per-key state, at most ``maxKeys`` keys: past the cap, new keys share the state of the key ``_other`` (as the
    stats cap their labels), so a client sending ever new values can neither blow up memory nor escape a limit.
    """

    __slots__ = ("maxKeys", "_items", "get")

    def __init__(self, maxKeys):
        self.maxKeys = maxKeys
        self._items = {}
        # the per-request path: the state of a key already made, or None (then lookup and add); a dict's own get
        self.get = self._items.get

    def lookup(self, key):
        """(the key to keep state under: ``key``, or ``_other`` past the cap; its state, or None if not made yet)."""
        items = self._items
        item = items.get(key)
        if item is None and len(items) >= self.maxKeys:
            key = OVERFLOW_KEY
            item = items.get(key)
        return key, item

    def add(self, key, item):
        """Keep ``item`` as the state of ``key`` (a key lookup returned); returns it."""
        self._items[key] = item
        return item

    def items(self):
        return list(self._items.items())

    def __len__(self):
        return len(self._items)
