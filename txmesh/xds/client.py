"""
The xDS client of a running mesh (``dynamic_resources`` in mesh.yaml): the resource state
(L{txmesh.xds.state.XdsState}, applying through the mesh's IConfigApplier) and the transport the block asks for
(ADS over gRPC, L{txmesh.xds.ads.AdsClient}; REST-JSON polling, L{txmesh.xds.rest.RestPoller}), started and
stopped with the MeshService.

The service serves its static parts at once; what the control plane sends appears as it is applied.  When a
subscribed type has nothing accepted ``initial_fetch_timeout`` after the start, that is logged and counted
(``xds_init_fetch_timeout``): the mesh keeps serving what it has, as Envoy does once the timeout passes.
"""

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from txmesh.interfaces import IXdsTransport
from txmesh.xds.discovery import SHORT_NAMES, WILDCARD_TYPES, XdsStats


@implementer(IXdsTransport)
class XdsClient:
    """
    The transport ``config`` names, with the initial-fetch timer; ``describe`` is what the admin API shows.

    @param config: the mesh's XdsConfig.
    @param node: the txmesh.config.NodeConfig.
    @param handler: the IXdsResourceHandler.
    @param cluster: the control plane's ICluster.
    @param reactor: IReactorTime and IReactorTCP.
    @param random: a random.Random (reconnect jitter).
    @param stats: the mesh's StatsStore.
    @param agent: REST only: the IAgent treq uses (default: its own pool).
    @param stopHandler: called when the client stops (the resource state's warming timers), or None.
    @param describeHandler: ``describeHandler()`` -> the resource state's JSON-able view, shown under
        ``resources`` by ``describe``, or None.
    """

    log = Logger()

    def __init__(self, config, node, handler, cluster, reactor, random, stats, agent=None, stopHandler=None,
                 describeHandler=None):
        self.config = config
        self._stopHandler = stopHandler
        self._describeHandler = describeHandler
        self.handler = handler
        self.clock = reactor
        self.stats = XdsStats(stats, handler.typeUrls())
        if config.apiType == "GRPC":
            from txmesh.xds.ads import AdsClient
            self.transport = AdsClient(config, node, handler, cluster, reactor, random, self.stats)
        else:
            from txmesh.xds.rest import RestPoller
            self.transport = RestPoller(config, node, handler, cluster, reactor, self.stats, agent=agent)
        self.state = self.transport.state
        self.startedAt = None
        self._initTimer = None

    def start(self):
        self.startedAt = self.clock.seconds()
        self.transport.start()
        if self.config.initialFetchTimeout:
            self._initTimer = self.clock.callLater(self.config.initialFetchTimeout, self._initialFetchTimedOut)

    def _initialFetchTimedOut(self):
        self._initTimer = None
        types = self.state.types
        for typeUrl, state in types.items():
            # a named type with no names (no EDS cluster, no RDS route configuration) waits for nothing
            if state.accepted == 0 and (typeUrl in WILDCARD_TYPES or state.names):
                self.stats.initFetchTimeout.value += 1
                self.log.warn("xDS: nothing accepted for {type} within initial_fetch_timeout ({timeout}s); serving "
                              "what is configured", type=SHORT_NAMES[typeUrl], timeout=self.config.initialFetchTimeout)

    def stop(self):
        """@return: a Deferred firing once the transport stopped."""
        if self._initTimer is not None and self._initTimer.active():
            self._initTimer.cancel()
        self._initTimer = None
        d = defer.maybeDeferred(self.transport.stop)
        if self._stopHandler is not None:
            self._stopHandler()
        return d

    def describe(self):
        """``/server_info`` and ``/config_dump``'s ``xds``: the transport's state (connected, versions, errors)."""
        out = self.transport.describe()
        out["started_at"] = self.startedAt
        if self._describeHandler is not None:
            out["resources"] = self._describeHandler()
        return out


def makeXdsClient(config, applier, reactor, clusters, stats, random, agent=None):
    """
    The XdsClient of a mesh whose ``config`` (a MeshConfig) has ``dynamic_resources``: an XdsState over its static
    parts applying through ``applier`` (the IConfigApplier: a MeshService's, or a ``workers: N`` parent's, which
    hands every configuration to its workers), and the transport reaching the control plane through the block's
    static cluster, taken from ``clusters`` (the ClusterManager).
    """
    from txmesh.xds.state import XdsState

    xds = config.dynamicResources
    endpoints = ",".join("%s:%d" % (e.host, e.port) for e in config.cluster(xds.cluster).endpoints)
    location = "%s %s (cluster %s)" % ("ADS" if xds.apiType == "GRPC" else "REST", endpoints, xds.cluster)
    handler = XdsState(config, applier, reactor, location, xds)
    return XdsClient(xds, config.node, handler, clusters.get(xds.cluster), reactor, random, stats,
                     agent=agent, stopHandler=handler.stop, describeHandler=handler.describe)
