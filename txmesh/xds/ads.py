"""
The aggregated discovery stream (ADS, state of the world): one long gRPC call,
``/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources``, on txmesh's own HTTP/2 client:
a stream from the pool of the control plane's static cluster (its connect timeout, TLS and PING keepalive apply),
chosen by the cluster's load balancer.

The protocol is L{txmesh.xds.discovery.DiscoveryState} (sans-IO); this module only drives it: it opens the stream
and sends the opening requests, splits the response body into messages (L{txmesh.protocols.h2.grpc.MessageReader}),
hands each response to the IXdsResourceHandler one at a time in the order they came, and sends the ACK or NACK
when the handler's Deferred fires.  When the stream ends (trailers, a reset, a lost connection, a failed connect)
it opens a new one after a delay with full jitter: uniform in [0, min(max_interval, base_interval * 2^n)], n the
failures in a row since a response was last received.
"""

from collections import deque

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from txmesh.interfaces import IUpstreamResponder, IXdsTransport
from txmesh.protocols.h2 import grpc
from txmesh.stream import HeaderMap, RequestHead
from txmesh.xds.discovery import SHORT_NAMES, DiscoveryState

ADS_PATH = b"/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"
MAX_RESPONSE_MESSAGE = 64 << 20  # a control plane's snapshot of a large fleet can be tens of MB


def backoffDelay(random, base, top, failures):
    """Full jitter (AWS' "exponential backoff and jitter"): uniform in [0, min(top, base * 2^(failures - 1))]."""
    return random.uniform(0, min(top, base * (2 ** min(max(failures - 1, 0), 30))))


@implementer(IUpstreamResponder)
class _StreamResponder:
    """The responses of one ADS stream, to its client (a stale stream's events are dropped by generation)."""

    def __init__(self, client, generation):
        self.client = client
        self.generation = generation
        self.reader = grpc.MessageReader(MAX_RESPONSE_MESSAGE)
        self.status = None

    def upstreamHeaders(self, response, endStream):
        self.status = response.status
        if response.status != 200:
            self.client._streamEnded(self.generation, "HTTP status %d" % (response.status,), endStream)
        elif endStream:
            self._trailers(response.headers)

    def upstreamData(self, data, endStream):
        try:
            messages = self.reader.feed(data)
        except grpc.MalformedMessage as e:
            self.client._streamEnded(self.generation, str(e), False)
            return
        for message in messages:
            self.client._messageReceived(self.generation, message)
        if endStream:
            self.client._streamEnded(self.generation, "the stream ended without trailers", True)

    def upstreamTrailers(self, trailers):
        self._trailers(trailers)

    def _trailers(self, fields):
        code = fields.get(b"grpc-status", b"?").decode("ascii", "replace")
        message = fields.get(b"grpc-message", b"").decode("utf-8", "replace")
        self.client._streamEnded(self.generation, "grpc-status %s%s" % (code, ": " + message if message else ""),
                                 True)

    def upstreamComplete(self, reusable):
        pass

    def upstreamFailed(self, exc):
        self.client._streamEnded(self.generation, str(exc) or type(exc).__name__, False)

    def upstreamWritePaused(self):
        pass  # requests are small and few; the connection's backlog holds them

    def upstreamWriteResumed(self):
        pass


@implementer(IXdsTransport)
class AdsClient:
    """
    One ADS client.

    @param config: the XdsConfig (reconnect intervals, the cluster's name as the authority).
    @param node: the txmesh.config.NodeConfig.
    @param handler: the IXdsResourceHandler.
    @param cluster: the control plane's ICluster (its hosts, load balancer and pools).
    @param clock: IReactorTime (reconnect timers).
    @param random: a random.Random (jitter).
    @param stats: an L{txmesh.xds.discovery.XdsStats}.
    """

    log = Logger()

    def __init__(self, config, node, handler, cluster, clock, random, stats):
        self.config = config
        self.handler = handler
        self.cluster = cluster
        self.clock = clock
        self.random = random
        self.stats = stats
        self.state = DiscoveryState(node, handler.typeUrls(), handler.subscriptions)
        self.connected = False
        self.server = None  # "host:port" of the stream's control plane
        self.lastStreamError = None
        self.failures = 0  # stream failures in a row, for the backoff
        self._generation = 0
        self._handle = None
        self._pool = None
        self._acquiring = None
        self._timer = None
        self._queue = deque()  # (generation, DiscoveryResponse) waiting for the handler
        self._busy = False
        self._stopped = True
        handler.watchSubscriptions(self._subscriptionsChanged)

    def start(self):
        self._stopped = False
        self._open()

    def stop(self):
        """Close the stream (RST_STREAM CANCEL) and stop reconnecting; an update being applied finishes."""
        self._stopped = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self._close()
        self._queue.clear()

    # -- the stream ---------------------------------------------------------------------------------------------

    def _open(self):
        self._timer = None
        if self._stopped:
            return
        self._generation += 1
        generation = self._generation
        host = self.cluster.chooseHost(None)
        if host is None:
            self._streamEnded(generation, "cluster '%s' has no healthy host" % (self.config.cluster,), False)
            return
        self.server = host.address
        self._pool = pool = self.cluster.poolFor(host)
        self._acquiring = d = pool.acquire()
        d.addCallbacks(self._acquired, self._acquireFailed, callbackArgs=(generation, pool),
                       errbackArgs=(generation,))

    def _acquireFailed(self, failure, generation):
        self._acquiring = None
        if not failure.check(defer.CancelledError):
            self._streamEnded(generation, failure.getErrorMessage() or failure.type.__name__, False)

    def _acquired(self, handle, generation, pool):
        self._acquiring = None
        if self._stopped or generation != self._generation:
            pool.release(handle)
            return
        self._handle = handle
        head = RequestHead(b"POST", ADS_PATH, authority=self.config.cluster.encode("ascii"),
                           headers=HeaderMap([(b"content-type", grpc.CONTENT_TYPE), (b"user-agent", b"txmesh/xds")]),
                           protocol="grpc")  # HTTP/1.1-shaped: the client adds "te: trailers" for gRPC
        handle.sendRequest(head, False, _StreamResponder(self, generation))
        if self._handle is not handle:
            return  # failed at once
        self.connected = True
        self.stats.connected.set(1)
        self.log.info("xDS: ADS stream to {server} open", server=self.server)
        for request in self.state.streamStarted():
            self._send(request)

    def _send(self, request):
        if self._handle is not None:
            self._handle.writeBody(grpc.frameMessage(request.SerializeToString()), False)

    def _close(self):
        handle, self._handle = self._handle, None
        if self._acquiring is not None:
            d, self._acquiring = self._acquiring, None
            d.cancel()
        if handle is not None:
            handle.abandon()
            self._pool.discard(handle)
        if self.connected:
            self.connected = False
            self.stats.connected.set(0)

    def _streamEnded(self, generation, why, cleanly):
        """The stream of ``generation`` ended (or never opened): count, log, and open a new one after the backoff."""
        if generation != self._generation or self._stopped:
            return
        handle, self._handle = self._handle, None
        if handle is not None:
            if cleanly:
                self._pool.release(handle)
            else:
                self._pool.discard(handle)
        self._generation += 1  # late events of the ended stream are dropped
        if self.connected:
            self.connected = False
            self.stats.connected.set(0)
        self.stats.failure.value += 1
        self.lastStreamError = why
        self.failures += 1
        delay = backoffDelay(self.random, self.config.reconnectBase, self.config.reconnectMax, self.failures)
        self.log.warn("xDS: ADS stream to {server} ended ({why}); reconnecting in {delay:.3f}s",
                      server=self.server, why=why, delay=delay)
        self._timer = self.clock.callLater(delay, self._open)

    # -- responses ----------------------------------------------------------------------------------------------

    def _messageReceived(self, generation, message):
        if generation != self._generation:
            return
        response = self.state.msgs.discovery.DiscoveryResponse()
        try:
            response.ParseFromString(message)
        except Exception as e:  # protobuf's DecodeError: the control plane sent something else
            self._close()
            self._streamEnded(generation, "a DiscoveryResponse that does not parse: %s" % (e,), False)
            return
        self.failures = 0  # the control plane answers: the next failure starts the backoff again
        self._queue.append((generation, response))
        self._pump()

    def _pump(self):
        """Hand the next response to the handler once the previous one was applied (Envoy applies them in order)."""
        while self._queue and not self._busy:
            generation, response = self._queue.popleft()
            update = self.state.received(response)
            if update is None:
                self.log.warn("xDS: ignoring a response of {type}, not subscribed", type=response.type_url)
                continue
            self.stats.count(update.typeUrl, "xds_update_attempt")
            if update.error is not None:
                self._answer(None, generation, update, update.error)
                continue
            self._busy = True
            d = defer.maybeDeferred(self.handler.update, update.typeUrl, update.version, list(update.resources))
            d.addErrback(self._handlerFailed)
            d.addCallback(self._answer, generation, update)

    def _handlerFailed(self, failure):
        # the handler promises never to fail; if it does, it is a bug: NACK rather than stall the stream
        self.log.failure("xDS: the resource handler failed", failure)
        return "internal error: %s" % (failure.getErrorMessage(),)

    def _answer(self, result, generation, update, error=None):
        self._busy = False
        error = result if error is None else error
        name = SHORT_NAMES.get(update.typeUrl, update.typeUrl)
        request = self.state.applied(update, error)
        if error is None:
            self.stats.count(update.typeUrl, "xds_update_success")
            self.log.info("xDS: {type} version {version} applied ({n} resource(s))", type=name,
                          version=update.version, n=len(update.resources))
        else:
            self.stats.count(update.typeUrl, "xds_update_rejected")
            self.log.warn("xDS: {type} version {version} rejected: {error}", type=name, version=update.version,
                          error=error)
        if generation == self._generation:
            self._send(request)  # a new stream's opening requests carry the accepted version already
        self._pump()

    def _subscriptionsChanged(self, typeUrl):
        request = self.state.subscriptionsChanged(typeUrl)
        if request is not None and self._handle is not None:
            self._send(request)

    def describe(self):
        return {"api_type": "GRPC", "cluster": self.config.cluster, "server": self.server,
                "connected": self.connected, "last_stream_error": self.lastStreamError,
                "types": self.state.describe()}
