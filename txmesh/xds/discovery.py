"""
The xDS discovery protocol, state of the world, sans-IO: what both transports (the ADS stream, txmesh/xds/ads.py;
REST-JSON polling, txmesh/xds/rest.py) send and how they read what comes back.  No I/O and no clock here: a
transport feeds DiscoveryResponses in and sends the DiscoveryRequests it is handed.

Per resource type (Envoy's v3 type URLs) it keeps what Envoy keeps: the last accepted ``version_info``, the last
``nonce`` received, the subscribed resource names, the last error.  A response becomes an L{Update} (its resources
unpacked from their ``Any``), the transport hands it to the IXdsResourceHandler, and L{DiscoveryState.applied}
makes the request that answers it: an ACK (the response's version and nonce) or a NACK (the previous accepted
version, the nonce, and ``error_detail``, a google.rpc.Status with code INVALID_ARGUMENT and the handler's reason).
A new stream starts with one request per subscribed type carrying the last accepted version and names (Envoy's
behaviour on reconnect), in the handler's order (CDS, EDS, LDS, RDS).

The messages are the ``xds-protos`` package's (imported here only, when an xDS client is made).
"""

from dataclasses import dataclass

import txmesh

CDS = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
EDS = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
LDS = "type.googleapis.com/envoy.config.listener.v3.Listener"
RDS = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
# the short names used in counters' labels, /server_info and logs
SHORT_NAMES = {CDS: "cds", EDS: "eds", LDS: "lds", RDS: "rds"}
# wildcard types: an empty name set asks for every resource; for the others it asks for none
WILDCARD_TYPES = frozenset({CDS, LDS})
# REST-JSON (Envoy's api_type REST): the path each type is POSTed to
REST_PATHS = {CDS: "/v3/discovery:clusters", EDS: "/v3/discovery:endpoints", LDS: "/v3/discovery:listeners",
              RDS: "/v3/discovery:routes"}
INVALID_ARGUMENT = 3  # google.rpc.Code of a NACK's error_detail, as Envoy sends


def messages():
    """
    The protobuf modules, imported on first use (a sidecar without ``dynamic_resources`` never loads them): a
    namespace with ``discovery`` (DiscoveryRequest/Response), ``base`` (Node) and ``classes`` ({type URL: message
    class}).  Importing the resource types also registers the ``Any`` types they embed (the HTTP connection
    manager, the router filter), which JSON parsing of REST responses needs.
    """
    from envoy.config.cluster.v3 import cluster_pb2
    from envoy.config.core.v3 import base_pb2
    from envoy.config.endpoint.v3 import endpoint_pb2
    from envoy.config.listener.v3 import listener_pb2
    from envoy.config.route.v3 import route_pb2
    from envoy.extensions.filters.http.router.v3 import router_pb2  # noqa: F401 (registers the Any type)
    from envoy.extensions.filters.network.http_connection_manager.v3 import (  # noqa: F401 (registers the Any type)
        http_connection_manager_pb2,
    )
    from envoy.service.discovery.v3 import discovery_pb2

    return _Messages(discovery_pb2, base_pb2, {CDS: cluster_pb2.Cluster, EDS: endpoint_pb2.ClusterLoadAssignment,
                                               LDS: listener_pb2.Listener, RDS: route_pb2.RouteConfiguration})


@dataclass(frozen=True)
class _Messages:
    discovery: object
    base: object
    classes: dict


def nodeMessage(node, base=None):
    """The v3 ``Node`` of ``node`` (a txmesh.config.NodeConfig): id, cluster, metadata, txmesh as the user agent."""
    base = base or messages().base
    msg = base.Node(id=node.id, cluster=node.cluster, user_agent_name="txmesh",
                    user_agent_version=txmesh.__version__)
    if node.metadata:
        msg.metadata.update(node.metadata)
    return msg


@dataclass
class TypeState:
    """
    What is known of one resource type.

    @ivar version: the last accepted ``version_info`` ("" before any).
    @ivar nonce: the nonce of the last response received on the current stream ("" on a new stream).
    @ivar names: the subscribed resource names (a frozenset; empty for a wildcard type).
    @ivar requested: a request for this type was sent on the current stream.
    @ivar lastError: the ``error_detail`` of the last NACK, or None once a later response was accepted.
    @ivar rejectedVersion: the ``version_info`` the last NACK refused.
    @ivar accepted, rejected: responses accepted and refused since the start.
    """

    typeUrl: str
    version: str = ""
    nonce: str = ""
    names: frozenset = frozenset()
    requested: bool = False
    lastError: object = None
    rejectedVersion: str = ""
    accepted: int = 0
    rejected: int = 0

    def describe(self):
        return {"version_info": self.version, "nonce": self.nonce, "resource_names": sorted(self.names),
                "accepted": self.accepted, "rejected": self.rejected, "last_error": self.lastError,
                "rejected_version": self.rejectedVersion or None}


@dataclass(frozen=True)
class Update:
    """
    One response to hand to the handler: ``resources`` unpacked, or ``error`` (str) when they could not be (a
    resource of another type, bytes that do not parse): then it is NACKed without reaching the handler.
    """

    typeUrl: str
    version: str
    nonce: str
    resources: tuple = ()
    error: object = None


class DiscoveryState:
    """
    The per-type state of one xDS client (see the module docstring).

    @param node: the txmesh.config.NodeConfig sent in every request.
    @param typeUrls: the types subscribed to, in the order they are applied (the handler's ``typeUrls()``).
    @param subscriptions: ``subscriptions(typeUrl) -> frozenset`` of names (the handler's).
    """

    def __init__(self, node, typeUrls, subscriptions):
        self.msgs = messages()
        self.node = nodeMessage(node, self.msgs.base)
        self.typeUrls = tuple(typeUrls)
        self._subscriptions = subscriptions
        self.types = {t: TypeState(t, names=frozenset(subscriptions(t))) for t in self.typeUrls}

    def _request(self, state, errorDetail=None):
        req = self.msgs.discovery.DiscoveryRequest(
            version_info=state.version, node=self.node, resource_names=sorted(state.names), type_url=state.typeUrl,
            response_nonce=state.nonce)
        if errorDetail is not None:
            req.error_detail.code = INVALID_ARGUMENT
            req.error_detail.message = errorDetail
        state.requested = True
        return req

    def _wanted(self, state):
        """A wildcard type is always asked for; a named type once it has names, or to drop the ones it had."""
        return state.typeUrl in WILDCARD_TYPES or bool(state.names) or state.requested

    def streamStarted(self):
        """
        A new stream (or the first one): the requests that open it, one per type that has something to ask for,
        with the last accepted versions and the current names; nonces are of the old stream and are dropped.
        """
        out = []
        for t in self.typeUrls:
            state = self.types[t]
            state.nonce = ""
            state.requested = False
            state.names = frozenset(self._subscriptions(t))
            if self._wanted(state):
                out.append(self._request(state))
        return out

    def request(self, typeUrl):
        """
        The request that asks for ``typeUrl`` now (a REST poll): last accepted version, names, the last nonce, and
        while the last response was refused its ``error_detail`` (as Envoy's REST subscription, until one is
        accepted).
        """
        state = self.types[typeUrl]
        state.names = frozenset(self._subscriptions(typeUrl))
        return self._request(state, state.lastError) if self._wanted(state) else None

    def subscriptionsChanged(self, typeUrl):
        """
        The handler's names for ``typeUrl`` changed: the request that says so (on a stream that is up), or None
        when they did not change, the type is not subscribed, or there is nothing to ask for yet.
        """
        state = self.types.get(typeUrl)
        if state is None:
            return None
        names = frozenset(self._subscriptions(typeUrl))
        if names == state.names and state.requested:
            return None
        state.names = names
        return self._request(state) if self._wanted(state) else None

    def received(self, response):
        """
        A DiscoveryResponse: an L{Update} to apply, or None for a type not subscribed to (ignored, as Envoy does).
        """
        typeUrl = response.type_url
        state = self.types.get(typeUrl)
        if state is None:
            return None
        state.nonce = response.nonce
        cls = self.msgs.classes[typeUrl]
        resources = []
        for i, item in enumerate(response.resources):
            if item.type_url != typeUrl:
                return Update(typeUrl, response.version_info, response.nonce,
                              error="resource %d is a %s, not a %s" % (i, item.type_url, typeUrl))
            message = cls()
            try:
                if not item.Unpack(message):
                    raise ValueError("type mismatch")
            except Exception as e:  # protobuf's DecodeError and friends: the bytes are not a message of the type
                return Update(typeUrl, response.version_info, response.nonce,
                              error="resource %d does not parse as %s: %s" % (i, typeUrl, e))
            resources.append(message)
        return Update(typeUrl, response.version_info, response.nonce, tuple(resources))

    def applied(self, update, error):
        """
        The handler's answer to ``update``: None (ACK) or the reason (NACK).  @return: the DiscoveryRequest to send.
        """
        state = self.types[update.typeUrl]
        state.names = frozenset(self._subscriptions(update.typeUrl))
        if error is None:
            state.version = update.version
            state.lastError = None
            state.accepted += 1
            return self._request(state)
        state.lastError = error
        state.rejectedVersion = update.version
        state.rejected += 1
        return self._request(state, error)

    def describe(self):
        """Per type (short names): version, nonce, names, counts, last error."""
        return {SHORT_NAMES.get(t, t): self.types[t].describe() for t in self.typeUrls}


# (name, kind, help): the xDS client's series, labelled type=cds|eds|lds|rds where per type
XDS_STATS = (
    ("xds_update_attempt", "counter", "xDS responses received (state of the world), per resource type."),
    ("xds_update_success", "counter", "xDS responses applied and ACKed, per resource type."),
    ("xds_update_rejected", "counter", "xDS responses NACKed (the last accepted resources keep serving), per type."),
)


class XdsStats:
    """The xDS client's series on a StatsStore: per-type update counts, the stream's state, its failures."""

    def __init__(self, stats, typeUrls):
        self.perType = {}
        for t in typeUrls:
            scope = stats.scope(type=SHORT_NAMES.get(t, t))
            self.perType[t] = {name: scope.counter(name, help=help) for name, _, help in XDS_STATS}
        self.connected = stats.gauge("xds_stream_connected",
                                     help="1 while the xDS stream is up (REST: while the last poll answered), else 0.")
        self.failure = stats.counter("xds_stream_failure",
                                     help="xDS streams that ended or failed to open, and REST polls that failed.")
        self.initFetchTimeout = stats.counter(
            "xds_init_fetch_timeout", help="Resource types with nothing accepted by initial_fetch_timeout.")

    def count(self, typeUrl, name):
        self.perType[typeUrl][name].value += 1
