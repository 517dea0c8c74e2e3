"""
The admin API's ``/explain``: for a request described in a query string, which virtual host, route, cluster and
host the listener would choose, and for each route tried before, the matcher that failed.

The decision is the real one: the request is built as the listener's codec would build it (a
L{txmesh.stream.RequestHead}; a Dubbo call's interface, method, version and group as metadata and its attachments
as headers) and given to L{txmesh.routing.RouteConfig.explain}, which walks the same matchers as ``match``.  What
the listener adds before routing (``x-request-id``, ``x-forwarded-for``, ...) is not added here: a route that matches
on those headers needs them in the query.  The host is asked of the cluster's load balancer (``chooseHost``), which
for round robin, least request, random and peak EWMA moves the balancer on by one pick (said in the answer as
``lb_state_changed``); ring hash and maglev pick by the route's hash policies without state.
"""

from txmesh.routing import (ClusterAction, DirectResponseAction, DubboRegistryAction, RedirectAction,
                            WeightedClusterAction)
from txmesh.stream import HeaderMap, RequestHead, StreamInfo
from txmesh.upstream.hashing import requestHash
from txmesh.upstream.lb import LBContext

# balancers whose pick depends on the request's hash only: asking them changes nothing
STATELESS_POLICIES = frozenset(["ring_hash", "maglev"])
MAX_VALUES = 64  # header=/attachment= values accepted in one query


class ExplainError(ValueError):
    """The query does not describe a request (the admin API answers 400 with this message)."""


def _one(args, name, default=None):
    values = args.get(name)
    return values[0] if values else default


def _pairs(args, name):
    """``name=k:v`` values as (k, v) pairs.  @raise ExplainError: a value without ``:``, or too many."""
    values = args.get(name, [])
    if len(values) > MAX_VALUES:
        raise ExplainError("at most %d %s= values" % (MAX_VALUES, name))
    pairs = []
    for value in values:
        key, colon, rest = value.partition(":")
        if not colon or not key:
            raise ExplainError("%s=%s: expected %s=name:value" % (name, value, name))
        pairs.append((key.strip(), rest.strip()))
    return pairs


def _bytes(text):
    return text.encode("utf-8", "surrogateescape")


def requestFor(protocol, args):
    """
    The RequestHead a listener of ``protocol`` would route for the query ``args`` ({name: [str]}).
    @raise ExplainError: a required argument is missing or malformed.
    """
    if protocol == "dubbo":
        interface = _one(args, "interface")
        if not interface:
            raise ExplainError("a dubbo listener needs interface=")
        method = _one(args, "method", "")
        attachments = _pairs(args, "attachment")
        metadata = {"interface": interface, "method": method, "version": _one(args, "version", ""),
                    "group": _one(args, "group", "")}
        headers = HeaderMap.fromPairs([(k.lower(), v) for k, v in attachments])
        return RequestHead(_bytes(method), b"/%s/%s" % (_bytes(interface), _bytes(method)), _bytes(interface),
                           headers, scheme=b"dubbo", protocol="dubbo", metadata=metadata)
    path = _one(args, "path", "/")
    if not path.startswith("/"):
        raise ExplainError("path= must start with /")
    headers = HeaderMap.fromPairs([(_bytes(k), _bytes(v)) for k, v in _pairs(args, "header")])
    if protocol == "grpc":
        method = _one(args, "method", "POST")
        if headers.get(b"content-type") is None:
            headers.add(b"content-type", b"application/grpc")
        version = (2, 0)
    else:
        method = _one(args, "method", "GET")
        version = (2, 0) if protocol == "http2" else (1, 1)
    return RequestHead(_bytes(method.upper()), _bytes(path), _bytes(_one(args, "authority", "")), headers,
                       scheme=_bytes(_one(args, "scheme", "http")), version=version, protocol=protocol)


def _requestDict(request):
    out = {"method": request.method.decode("utf-8", "replace"), "protocol": request.protocol}
    if request.protocol == "dubbo":
        out.update({k: request.metadata.get(k, "") for k in ("interface", "version", "group")})
        out["attachments"] = {k.decode("utf-8", "replace"): v.decode("utf-8", "replace") for k, v in request.headers}
    else:
        out["authority"] = request.authority.decode("utf-8", "replace")
        out["path"] = request.path.decode("utf-8", "replace")
        out["headers"] = [[k.decode("utf-8", "replace"), v.decode("utf-8", "replace")] for k, v in request.headers]
    return out


def _routeName(vhost, route):
    if route.name:
        return route.name
    if vhost is not None and route in vhost.routes:
        return "#%d" % (vhost.routes.index(route),)
    return None


def _hostChoice(cluster, action, request, listenerName):
    """What the cluster's balancer picks for ``request`` now (and whether asking it changed its state)."""
    if cluster is None:
        return {"error": "cluster is not configured", "host": None}
    policies = action.hashPolicies
    info = StreamInfo(0.0, request.protocol, listenerName)
    hashKey = requestHash(policies, request, info) if policies else None
    host = cluster.chooseHost(LBContext(hashKey=hashKey) if policies else None)
    policy = cluster.config.lbPolicy
    return {
        "lb_policy": policy,
        "lb_state_changed": policy not in STATELESS_POLICIES,
        "hash_key": hashKey,
        "host": None if host is None else {"address": host.address, "healthy": host.healthy,
                                           "priority": host.priority, "weight": host.weight},
        "hosts": len(cluster.hosts),
        "healthy_hosts": sum(1 for h in cluster.hosts if h.healthy),
    }


def explainAction(action, request, clusters, listenerName):
    """The ``action`` part of the answer: what the chosen route does, and which cluster and host it would use."""
    if isinstance(action, DirectResponseAction):
        return {"type": "direct_response", "status": action.status}
    if isinstance(action, RedirectAction):
        return {"type": "redirect", "status": action.responseCode,
                "location": action.location(request).decode("utf-8", "replace")}
    if isinstance(action, DubboRegistryAction):
        interface, group, version = action.service(request)
        return {"type": "dubbo_registry", "registry": action.registry,
                "service": {"interface": interface, "group": group, "version": version},
                "host": None, "note": "the providers come from the registry on the first call; see /clusters"}
    if isinstance(action, WeightedClusterAction):
        total = sum(weight for _, weight in action.clusters)
        candidates = []
        for name, weight in action.clusters:
            choice = _hostChoice(clusters.get(name), action, request, listenerName) if weight else {"host": None}
            candidates.append(dict(choice, cluster=name, weight=weight,
                                   share=round(weight / total, 4) if total else 0.0))
        return {"type": "weighted_clusters", "cluster": None, "candidates": candidates,
                "note": "one candidate is drawn per request in proportion to its weight"}
    if isinstance(action, ClusterAction):
        return dict(_hostChoice(clusters.get(action.cluster), action, request, listenerName), type="cluster",
                    cluster=action.cluster)
    return {"type": type(action).__name__}


def explain(config, clusters, args):
    """
    The answer of ``/explain`` for the query ``args`` ({name: [str]}), a JSON-able dict.

    @param config: the txmesh.config.MeshConfig (listeners and their route tables).
    @param clusters: the ClusterManager (``get(name)`` -> ICluster or None).
    @raise ExplainError: the query names no listener (with several), an unknown one, or a malformed request.
    """
    listeners = {lc.name: lc for lc in config.listeners}
    name = _one(args, "listener")
    if name is None:
        if len(listeners) != 1:
            raise ExplainError("listener= is required (one of: %s)" % (", ".join(listeners) or "none",))
        name = next(iter(listeners))
    lc = listeners.get(name)
    if lc is None:
        raise ExplainError("no listener %r (one of: %s)" % (name, ", ".join(listeners)))
    if lc.detect is not None:  # protocol: auto has no routes: its targets do (issue 14 part 4)
        raise ExplainError("listener %r detects protocols and has no routes: ask the listener it hands to (%s)" % (
            name, ", ".join("%s: %s" % pair for pair in lc.detect.targets)))
    protocol = lc.descriptor.name
    request = requestFor(protocol, args)
    table = lc.routeConfig
    answer = {"listener": name, "protocol": protocol, "request": _requestDict(request)}
    if table is None:
        answer.update(virtual_host=None, routes_tried=[], route=None, action=None)
        return answer
    vhost, failed, route = table.explain(request)
    answer["virtual_host"] = vhost.name if vhost is not None else None
    answer["routes_tried"] = [{"route": _routeName(vhost, r), "failed": why} for r, why in failed]
    if route is None:
        answer["route"] = None
        answer["action"] = None
        answer["result"] = "no route: the listener answers with its protocol's not-found reply"
        return answer
    isDefault = vhost is None or route not in vhost.routes
    answer["route"] = {"name": _routeName(vhost, route), "default_route": isDefault}
    answer["action"] = explainAction(route.action, request, clusters, name)
    return answer
