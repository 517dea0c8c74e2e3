"""
The connection pool of one upstream host for multiplexed protocols without a peer stream limit (Dubbo): a few
long-lived connections, each carrying many requests at once (MOSN's multiplex pool mode).

Everything but the protocol's part is L{txmesh.upstream.conn_pool.ConnectionPoolBase}.  Here: a connection's
capacity is ``maxConcurrentStreams``; a request goes to the least loaded connection; ``acquire()`` hands out a
L{StreamHandle} bound to one connection, and ``release``/``discard`` end that stream only, never the shared
connection; failed connects back off exponentially (calls arriving meanwhile wait for the next attempt);
connections without calls are pinged (heartbeats) and closed after the cluster's ``idle_timeout`` (heartbeats are
not calls).

The client protocol provides L{txmesh.interfaces.IMultiplexClient}; the pool sets its ``onConnectionLost``, which
it calls with itself from ``connectionLost``, *after* failing every in-flight stream with L{UpstreamReset}, and its
``onReadOnly``, called when the provider sent Dubbo's READONLY event: the connection then takes no new call (its
capacity is 0), is closed once its calls are answered, and a new connection is made if calls wait.
"""

from twisted.logger import Logger
from zope.interface import implementer

from txmesh.interfaces import IUpstreamStream
from txmesh.upstream.conn_pool import ActiveClient, ConnectionPoolBase

DEFAULT_MAX_CONCURRENT = 1000
MISSED_PINGS_LIMIT = 3
BACKOFF_BASE = 0.1
BACKOFF_MAX = 5.0


class _DubboClient(ActiveClient):
    """A connection and its heartbeat state."""

    __slots__ = ("seenFrames", "pingOutstanding", "missed", "pingTimer")

    def __init__(self, pool):
        ActiveClient.__init__(self, pool)
        self.seenFrames = 0
        self.pingOutstanding = False
        self.missed = 0
        self.pingTimer = None


@implementer(IUpstreamStream)
class StreamHandle:
    """
    One request on a shared connection: what ``acquire()`` gives the router.  Its methods forward to the client
    protocol under the stream's key; pausing is a no-op, since pausing a shared connection would stall every other
    stream on it (a multiplexed response is one bounded frame).
    """

    __slots__ = ("conn", "key", "done")

    def __init__(self, conn):
        self.conn = conn
        self.key = None
        self.done = False

    def sendRequest(self, head, endStream, responder):
        self.key = self.conn.proto.startStream(head, endStream, responder)

    def writeBody(self, data, endStream):
        if self.key is not None:
            self.conn.proto.writeBody(self.key, data, endStream)

    def writeTrailers(self, trailers):
        if self.key is not None:
            self.conn.proto.writeTrailers(self.key, trailers)

    def abandon(self):
        if self.key is not None:
            self.conn.proto.cancelStream(self.key)

    def pauseReading(self):
        pass

    def resumeReading(self):
        pass


class MultiplexConnectionPool(ConnectionPoolBase):
    """
    Up to ``connectionsPerHost`` connections to one host, up to ``maxConcurrentStreams`` streams each; past that,
    requests wait (up to ``maxPendingRequests``, then fail at once with Overflow).  Idle connections are pinged every
    ``heartbeatInterval`` and closed after 3 pings without any frame back.  After failed connects, new connects wait
    an exponential backoff (0.1 s doubling to 5 s); requests arriving meanwhile with no usable connection wait for
    the connect that ends it (bounded by their timeout) and fail with ConnectFailure only if it fails too.

    @param clock: an IReactorTime.
    @param host: the IHost.
    @param clusterConfig: connectTimeout, maxPendingRequests and (optional) connectionsPerHost,
        maxConcurrentStreams, heartbeatInterval (seconds; 0 = none).
    @param connect: ``connect(host) -> Deferred`` firing with a connected client protocol (IMultiplexClient).
    @param stats: the cluster's txmesh.stats.Scope.
    @param resources: the cluster's ClusterResources (see ConnectionPoolBase).
    """

    log = Logger()
    clientClass = _DubboClient
    BACKOFF = (BACKOFF_BASE, BACKOFF_MAX)
    # a connection its provider made read-only finishes its calls beside a new one (with one connection per host,
    # new calls would otherwise wait for the old one to close)
    DRAINING_COUNTS = False

    def __init__(self, clock, host, clusterConfig, connect, stats, resources=None):
        ConnectionPoolBase.__init__(self, clock, host, clusterConfig, connect, stats, resources)
        self.maxConnections = max(1, clusterConfig.connectionsPerHost or 1)
        self.maxConcurrentStreams = clusterConfig.maxConcurrentStreams or DEFAULT_MAX_CONCURRENT
        self.heartbeatInterval = clusterConfig.heartbeatInterval or 0
        self._cxReadOnly = stats.counter("upstream_cx_readonly",
                                         help="Upstream Dubbo connections the provider marked read-only (READONLY "
                                              "event): no new call, closed once idle.")
        self._cxHeartbeatFail = stats.counter("upstream_cx_heartbeat_fail",
                                              help="Upstream connections closed after 3 heartbeats without a reply.")

    @property
    def connectionsPerHost(self):
        return self.maxConnections

    # -- the protocol's part ------------------------------------------------------------------------------------

    def capacity(self, client):
        # a connection the provider marked read-only (READONLY event) takes no new call, and closes once idle
        return 0 if client.proto.readOnly else self.maxConcurrentStreams

    def watch(self, client):
        ConnectionPoolBase.watch(self, client)
        client.proto.onReadOnly = self._readOnly

    def _readOnly(self, proto):
        client = self._clients.get(proto)
        if client is not None:
            self._cxReadOnly.value += 1
            self.capacityChanged(client)  # retired (closed now if idle); waiting calls get a new connection

    def pick(self):
        """The least loaded connection with room."""
        best = None
        for client in self._ready:
            if best is None or client.active < best.active:
                best = client
        return best

    def makeStream(self, client):
        return StreamHandle(client)

    def streamClient(self, handle):
        if handle.done:
            return None
        handle.done = True
        return handle.conn

    def resetStream(self, client, handle):
        if handle.key is not None:
            client.proto.cancelStream(handle.key)

    def clientReady(self, client):
        if self.heartbeatInterval:
            client.pingTimer = self.clock.callLater(self.heartbeatInterval, self._heartbeat, client)

    def clientClosed(self, client):
        if client.pingTimer is not None and client.pingTimer.active():
            client.pingTimer.cancel()
        client.pingTimer = None

    def _heartbeat(self, client):
        """Every heartbeatInterval: a connection that read nothing since the last tick gets a ping."""
        client.pingTimer = None
        if client.closed:
            return
        frames = client.proto.framesReceived
        if frames != client.seenFrames:
            # it read something since the last tick: alive, no ping needed
            client.seenFrames = frames
            client.missed = 0
            client.pingOutstanding = False
        else:
            if client.pingOutstanding:
                client.missed += 1
                if client.missed >= MISSED_PINGS_LIMIT:
                    self.log.warn("{host}: {n} heartbeats unanswered; closing the connection",
                                  host=self.host.address, n=client.missed)
                    self._cxHeartbeatFail.value += 1
                    self.close(client, abort=True)
                    return
            client.pingOutstanding = True
            client.proto.sendPing()
        client.pingTimer = self.clock.callLater(self.heartbeatInterval, self._heartbeat, client)
