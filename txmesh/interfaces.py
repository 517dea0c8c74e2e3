"""
Every extension point of txmesh, as zope.interface interfaces.

Implementations say ``@implementer(...)`` and tests check them with ``verifyObject``; the documentation lives here.
The layering is Envoy's: a listener's connection runs *network* (connection-level, bytes) read/write filters
before the protocol's codec; the codec turns bytes into *streams* (one request/response exchange) that run
through *stream* filters in decode order, ending in the terminal router, and back through them in encode order.
The router gets an upstream stream from a host's connection pool and is the responder of the upstream client.

Extensions are found with ``twisted.plugin.getPlugins(I..., txmesh.plugins)``: filter factories
(IFilterFactory), load-balancer factories (ILoadBalancerFactory) and protocols (IProtocol).  A third-party package
ships a module in its own ``txmesh/plugins/`` drop-in directory, or in a directory named by ``plugin_paths``.
"""

from enum import Enum, IntFlag

from zope.interface import Attribute, Interface


class FilterStatus(Enum):
    """
    What a filter tells the chain after each callback, as Envoy's FilterHeadersStatus/FilterDataStatus.

    CONTINUE: pass the event on to the next filter now.
    STOP: hold the event; the filter resumes the chain later through its callbacks (``continueDecoding`` /
    ``continueEncoding`` / ``continueReading``), or ends the stream with a local reply.  Data that arrives for
    a stopped stream is buffered by the chain (bounded by the listener's buffer limit) and delivered on resume.
    """

    CONTINUE = "continue"
    STOP = "stop"


# ---------------------------------------------------------------------------------------------------------------
# Connection-level (network) filters
# ---------------------------------------------------------------------------------------------------------------


class IConnectionInfo(Interface):
    """What a network filter may know and do about its downstream connection."""

    peer = Attribute("The peer address (an IAddress).")
    host = Attribute("The local address (an IAddress).")
    listenerName = Attribute("The name of the listener that accepted the connection (str).")
    peerIdentity = Attribute(
        "The downstream peer's IPeerIdentity once a TLS handshake verified its client certificate, else None.")

    def write(data):
        """Write bytes to the connection, through the write filters."""

    def close(abort=False):
        """Close the connection (after pending writes unless abort)."""


class IReadFilterCallbacks(Interface):
    """What one read filter may do to the chain it is in (Envoy's ReadFilterCallbacks)."""

    connection = Attribute("The IConnectionInfo of the connection.")

    def continueReading():
        """
        Resume the chain this filter stopped (its ``connectionMade`` or ``dataReceived`` returned STOP): the
        connection is offered to the filters after it (and then the protocol), or the bytes it held go to the
        next filter, followed by the bytes that arrived meanwhile (from the first filter).  Call it after
        returning STOP, never from inside the call that returns it.
        """

    def injectReadData(data):
        """
        Pass ``data`` to the filters after this one and then the protocol, now, as if it had been read (for a
        filter that keeps bytes itself and releases them later).  Only once the connection was accepted by every
        filter's ``connectionMade``.
        """


class IReadFilter(Interface):
    """
    A connection-level filter that sees bytes read from the downstream peer, in configuration order.
    """

    def initializeReadFilterCallbacks(callbacks):
        """Called once, before any other method, with an IReadFilterCallbacks."""

    def connectionMade():
        """
        A new connection was accepted.  Filters see it in configuration order; the protocol sees it only once every
        filter answered CONTINUE.

        @return: FilterStatus.CONTINUE, or STOP to hold the connection (reading stops; later filters and the
            protocol do not see it yet): the filter then either closes it (``connection.close()``: refused) or
            lets it through with ``continueReading()``.
        """

    def dataReceived(data):
        """
        Bytes arrived from the peer.

        @return: FilterStatus.CONTINUE (pass them on), STOP (hold them: the chain buffers them, and what arrives
            later, bounded by the listener's buffer limit past which reading pauses, until continueReading()), or
            bytes to pass on instead (b"" passes nothing on: the filter consumed them).
        """

    def connectionLost(reason):
        """The connection ended; a Failure says why.  Called on every read filter, whatever it answered before."""


class IWriteFilter(Interface):
    """A connection-level filter that sees bytes written to the downstream peer, in reverse configuration order."""

    def writeData(data):
        """
        Bytes are about to be written to the peer (by the protocol, or by a filter through ``connection.write``).

        @return: FilterStatus.CONTINUE (pass them on towards the peer), STOP (they are not written: the filter took
            them, and may write something later with ``connection.write``, which passes every write filter again),
            or bytes to pass on instead (b"" writes nothing).
        """


# ---------------------------------------------------------------------------------------------------------------
# Stream-level filters
# ---------------------------------------------------------------------------------------------------------------


class IStreamInfo(Interface):
    """Facts gathered about one stream, read by the access log and the stats."""

    startTime = Attribute("reactor.seconds() when the request head was decoded.")
    protocol = Attribute("'http/1.1', 'http/1.0', 'h2', 'grpc', 'dubbo'.")
    listenerName = Attribute("The listener's name.")
    downstreamPeer = Attribute("The downstream peer address, as 'host:port' (str).")
    routeName = Attribute("The name of the matched route, or None.")
    clusterName = Attribute("The cluster the router chose, or None.")
    upstreamHost = Attribute("The upstream host 'ip:port' the request went to, or None.")
    responseFlags = Attribute("A set of Envoy-style response flags (str), e.g. {'UF'} for an upstream connect failure.")
    bytesReceived = Attribute("Request body bytes received from downstream.")
    bytesSent = Attribute("Response body bytes sent downstream.")
    responseCode = Attribute("The response status (HTTP status, grpc-status or Dubbo status), or None.")
    metadata = Attribute("A dict filters may use to pass facts along (e.g. Dubbo service/method, trace ids).")
    endTime = Attribute("reactor.seconds() when the stream completed or was reset, or None while it runs.")
    requestId = Attribute("The request's x-request-id (bytes; Dubbo: the x-request-id attachment), or None.")
    downstreamLocal = Attribute("The listener's local address the request came in on, 'host:port' (str), or None.")
    requestEndTime = Attribute("reactor.seconds() when the last byte of the request was received, or None.")
    upstreamStartTime = Attribute("When the (last) attempt's request went to its upstream connection, or None.")
    upstreamFirstByteTime = Attribute("When the upstream response head arrived (the answer kept), or None.")
    upstreamEndTime = Attribute("When the upstream response ended, or None.")
    attemptCount = Attribute("Upstream attempts started (1 without retries; 0 if none was).")
    responseCodeDetails = Attribute(
        "Why the response is what it is: a local reply's cause (x-txmesh-error value), a reset's reason, or None "
        "(the access log says 'via_upstream' when an upstream answered).")
    upstreamFailureReason = Attribute("Why the upstream connection could not be made (str), or None.")
    peerIdentity = Attribute(
        "The downstream peer's IPeerIdentity (mutual TLS: its verified client certificate), or None.")
    grpcStatus = Attribute(
        "The grpc-status field a gRPC listener sent (bytes, e.g. b'14'), or None (not gRPC, or no status was sent: "
        "the client went away first).")
    downstreamTls = Attribute(
        "The downstream connection's IDownstreamTLS (a TLS listener), or None (plain text).")
    upstreamTLS = Attribute(
        "The upstream host's ``tlsPeer`` when the request's upstream connection was made (a TLS cluster), or None.")


class IStreamDecoderFilterCallbacks(Interface):
    """What a stream decoder filter may do to the stream it filters."""

    streamInfo = Attribute("The stream's IStreamInfo.")
    request = Attribute("The txmesh.stream.RequestHead being decoded (mutable until the router sends it).")
    clock = Attribute("The IReactorTime to use for timers.")

    def continueDecoding():
        """Resume the decode chain after this filter returned STOP."""

    def sendLocalReply(status, body=b"", headers=(), cause=None):
        """
        End the stream with a reply the proxy itself decides (a status of the stream's protocol: an HTTP status
        for HTTP, translated to grpc-status or a Dubbo status by the listener's codec); cause names the
        response flag / x-txmesh-error value.  A filter that must choose the protocol-native status itself lists
        ``grpc-status`` (gRPC listeners) or ``dubbo-status`` (Dubbo listeners,
        txmesh.protocols.dubbo.codec.LOCAL_REPLY_STATUS) among ``headers``; the codec answers with it.
        """

    def route():
        """The route entry matched for the current request (a txmesh.routing.Route), or None; cached."""

    def clearRouteCache():
        """Forget the cached route (after changing headers that routing looks at)."""

    def addDecodedData(data):
        """Inject request body bytes as if they came from downstream (for filters that rewrite bodies)."""

    def encodeHeaders(response, endStream):
        """Start the response (used by the terminal router and by filters that answer themselves)."""

    def encodeData(data, endStream):
        """Send response body bytes downstream through the encode chain."""

    def encodeTrailers(trailers):
        """End the response with trailers."""

    def pauseDecoding():
        """Backpressure: stop reading request body from downstream (the router calls it when the upstream is full)."""

    def resumeDecoding():
        """Backpressure: resume reading request body from downstream."""


class IStreamEncoderFilterCallbacks(Interface):
    streamInfo = Attribute("The stream's IStreamInfo.")
    response = Attribute("The txmesh.stream.ResponseHead being encoded.")

    def continueEncoding():
        """Resume the encode chain after this filter returned STOP."""


class IStreamDecoderFilter(Interface):
    """A stream filter that sees the request, in configuration order."""

    def setDecoderFilterCallbacks(callbacks):
        """Called once with IStreamDecoderFilterCallbacks before any decode event."""

    def decodeHeaders(request, endStream):
        """The request head (txmesh.stream.RequestHead); endStream if there is no body. Returns FilterStatus."""

    def decodeData(data, endStream):
        """A piece of request body. Returns FilterStatus."""

    def decodeTrailers(trailers):
        """Request trailers (a txmesh.stream.HeaderMap); ends the request. Returns FilterStatus."""

    def onStreamComplete():
        """The stream ended (response sent or stream reset); final StreamInfo is available. Returns nothing."""

    def onStreamReset(reason):
        """The stream was reset before completion (downstream went away, upstream reset); reason is a str."""


class IStreamEncoderFilter(Interface):
    """A stream filter that sees the response, in reverse configuration order."""

    def setEncoderFilterCallbacks(callbacks):
        """Called once with IStreamEncoderFilterCallbacks before any encode event."""

    def encodeHeaders(response, endStream):
        """The response head (txmesh.stream.ResponseHead). Returns FilterStatus."""

    def encodeData(data, endStream):
        """A piece of response body. Returns FilterStatus."""

    def encodeTrailers(trailers):
        """Response trailers. Returns FilterStatus."""

    def onStreamComplete():
        """
        The stream ended (response sent or stream reset); final StreamInfo is available.  Called once per filter,
        also for a filter installed as both decoder and encoder.  Returns nothing.
        """


class StreamEvents(IntFlag):
    """
    The calls a stream filter wants from the chain, declared with L{IStreamFilterEvents}: the chain makes only
    these (the others are the do-nothing kind: ``return CONTINUE``, ``pass``), and a filter that declares no
    call of a side is not on that side at all.  A filter that declares nothing gets every call (``ALL``).

    The events: ``DECODE_HEADERS``, ``DECODE_DATA``, ``DECODE_TRAILERS`` (``decode*``), ``ENCODE_HEADERS``,
    ``ENCODE_DATA``, ``ENCODE_TRAILERS`` (``encode*``), ``STREAM_COMPLETE`` (``onStreamComplete``), ``STREAM_RESET``
    (``onStreamReset``); ``DECODER_CALLBACKS`` and ``ENCODER_CALLBACKS`` (``setDecoderFilterCallbacks`` /
    ``setEncoderFilterCallbacks``).

    ``RESUMES_DECODING``: the filter calls ``continueDecoding`` or ``addDecodedData`` (it holds events and lets
    them go on); ``RESUMES_ENCODING``: it calls ``continueEncoding``.  Such a filter gets callbacks of its own;
    the others on the stream share one callbacks object per side, on which those calls raise TypeError (a filter
    that returns STOP only after ``sendLocalReply`` needs neither).
    """

    DECODE_HEADERS = 1 << 0
    DECODE_DATA = 1 << 1
    DECODE_TRAILERS = 1 << 2
    ENCODE_HEADERS = 1 << 3
    ENCODE_DATA = 1 << 4
    ENCODE_TRAILERS = 1 << 5
    STREAM_COMPLETE = 1 << 6
    STREAM_RESET = 1 << 7
    DECODER_CALLBACKS = 1 << 8
    ENCODER_CALLBACKS = 1 << 9
    RESUMES_DECODING = 1 << 10
    RESUMES_ENCODING = 1 << 11
    DECODE = DECODE_HEADERS | DECODE_DATA | DECODE_TRAILERS
    ENCODE = ENCODE_HEADERS | ENCODE_DATA | ENCODE_TRAILERS
    ALL = (1 << 12) - 1


class IStreamFilterEvents(Interface):
    """
    Optional, beside IStreamDecoderFilter / IStreamEncoderFilter: the filter says which calls it wants, so the
    chain skips the rest (a filter that only reads the request head costs no call per response body piece).
    Without it a filter gets every call, as always.

    ``streamEvents`` must be a class attribute: the chain reads it once per filter class (per listener) and
    applies it to every instance.  It only ever removes calls the filter would answer with CONTINUE or ignore;
    the order of the calls made, STOP and resume, local replies and resets are unchanged.
    """

    streamEvents = Attribute("The StreamEvents flags of the calls the filter wants (a class attribute).")


class IFilterChainFactoryCallbacks(Interface):
    """Given to IFilterFactory.createFilters to install the filters of one connection or stream."""

    def addStreamDecoderFilter(f):
        pass

    def addStreamEncoderFilter(f):
        pass

    def addStreamFilter(f):
        """A filter providing both IStreamDecoderFilter and IStreamEncoderFilter."""

    def addReadFilter(f):
        pass

    def addWriteFilter(f):
        pass


class IFilterConfigResources(Interface):
    """
    A filter config (what IFilterFactory.buildConfig returned) that holds resources the service manages: log files
    reopened on SIGUSR1, things closed when the config stops.  Optional: the service looks for it with
    ``providedBy``.
    """

    def registerFiles(files):
        """Register reopenable files with ``files`` (a txmesh.runtime.ReopenableFiles)."""

    def close():
        """Flush and close what the config holds (the service is stopping)."""


class IFilterFactory(Interface):
    """
    A named filter kind, found as a Twisted plugin.  The factory validates the filter's ``config`` mapping once, at
    load (``buildConfig``), into an immutable object shared by every instance; ``createFilters`` then makes cheap
    per-connection (network) or per-stream (stream) instances.
    """

    name = Attribute("The name mesh.yaml uses for this filter (str).")
    kind = Attribute("'stream' or 'network'.")
    protocols = Attribute("The listener protocols it works with: a frozenset of 'http', 'grpc', 'dubbo'.")
    terminal = Attribute("True for a filter that must be last (the router).")

    def buildConfig(raw, context):
        """
        Validate the raw ``config`` mapping of one filter entry.

        @param raw: the mapping from YAML (may be empty).
        @param context: a txmesh.config.FilterConfigContext (cluster names, listener protocol, key path) used to
            report errors.
        @return: an immutable config object.
        @raise txmesh.errors.ConfigError: naming the key path within ``raw`` and the reason.
        """

    def createFilters(config, callbacks, runtime):
        """
        Install filter instances for one stream (kind 'stream') or one connection (kind 'network').

        @param config: what buildConfig returned.
        @param callbacks: IFilterChainFactoryCallbacks.
        @param runtime: the txmesh.runtime.Runtime (clock, cluster manager, stats) of the running config.
        """


# ---------------------------------------------------------------------------------------------------------------
# Upstream
# ---------------------------------------------------------------------------------------------------------------


class IHost(Interface):
    """One upstream endpoint of a cluster."""

    address = Attribute("'ip:port' (str).")
    hostname = Attribute("The host part, used for TCP connects.")
    port = Attribute("The port (int).")
    weight = Attribute("The load-balancing weight (int >= 1).")
    healthy = Attribute("Whether the host may receive traffic.")
    activeRequests = Attribute("Requests in flight to this host (for least-request balancing).")
    stats = Attribute("Per-host counters.")
    healthFlags = Attribute(
        "An int of txmesh.upstream.host.HealthFlag bits (failed active health check, ejected by outlier detection, "
        "...); ``healthy`` is ``not healthFlags`` and is kept in step by setHealthFlag/clearHealthFlag.")
    priority = Attribute("The endpoint's priority (0 = highest), for priority-level balancing.")
    locality = Attribute("The endpoint's locality (str, '' when unset).")
    metadata = Attribute("A read-only mapping of str -> str (e.g. Dubbo version/group) from config or discovery.")
    monitor = Attribute("The IHostMonitor the router reports each attempt's outcome to (set by addMonitor and "
                        "removeMonitor, never directly: timesResponses follows them).")
    timesResponses = Attribute(
        "Whether ``monitor`` reads response times (kept by addMonitor/removeMonitor, see IHostMonitorEvents): "
        "when False the router does not time the attempts to this host.")
    addedAt = Attribute(
        "When the host joined its cluster after the cluster started (the cluster clock's seconds), or None for the "
        "hosts it started with: slow start ramps the former up.")
    tlsPeer = Attribute(
        "A TLS cluster's host: what its latest verified handshake showed (txmesh.tls.client.UpstreamPeer: identity, "
        "TLS version, ALPN), or None (plain text, or no handshake yet).")

    def setHealthFlag(flag):
        """Set a HealthFlag bit; the host's health watchers are told if ``healthy`` changed."""

    def clearHealthFlag(flag):
        """Clear a HealthFlag bit; the host's health watchers are told if ``healthy`` changed."""

    def addHealthWatcher(watcher):
        """Call ``watcher(host)`` whenever ``healthy`` changes."""

    def removeHealthWatcher(watcher):
        """Stop calling ``watcher``."""

    def addMonitor(monitor):
        """Have an IHostMonitor told about every attempt to this host as well (``monitor`` fans out)."""

    def removeMonitor(monitor):
        """Stop telling ``monitor``."""


class IHostMonitor(Interface):
    """
    Where the router reports what happened on each attempt to a host (Envoy's outlier DetectorHostMonitor).  The
    outlier detector and latency-aware balancers read it; the default monitor does nothing.
    """

    def putResult(outcome):
        """One attempt ended: ``outcome`` is a txmesh.upstream.outcome.Outcome (see outcome.classify*)."""

    def putResponseTime(seconds):
        """The time from sending an attempt to its response head (or its failure), in seconds."""


class IHostMonitorEvents(Interface):
    """
    Optional, beside IHostMonitor: what the monitor reads, so the router can skip the work for what it does not
    (as IStreamFilterEvents does for stream filters).  A monitor that does not provide this interface is told
    everything.
    """

    readsResponseTimes = Attribute(
        "False if putResponseTime does nothing for this monitor (outlier detection: it reads outcomes only); the "
        "host's attempts are then timed only for its other monitors that read them.  Read when the monitor is "
        "added to a host.")


class IResourceLimit(Interface):
    """One circuit-breaker resource of a cluster (connections, pending requests, requests, retries)."""

    max = Attribute("The limit (int).")
    count = Attribute("How many are in use (int).")

    def canCreate():
        """True if one more may be taken."""

    def inc():
        """Take one (callers check canCreate first)."""

    def dec():
        """Give one back."""


class ILoadBalancer(Interface):
    """Chooses a host of a cluster for each request; made by an ILoadBalancerFactory for one host set."""

    def chooseHost(context):
        """
        @param context: a txmesh.upstream.lb.LBContext (hash key, attempted hosts) or None.
        @return: an IHost, or None when no healthy host is left.
        """


class ILoadBalancerFactory(Interface):
    """A named load-balancing policy, found as a Twisted plugin."""

    name = Attribute("The lb_policy name in mesh.yaml.")

    def create(hosts, random, options=None):
        """
        Make an ILoadBalancer over the list of IHost (called again whenever the host set changes, never per
        request: rings and tables are built here).

        @param random: a random.Random.
        @param options: the cluster's ILoadBalancerOptions (the same object for every host set of the cluster), or
            None for defaults without a clock.  Callers pass it; a factory must accept it.
        """


class IUpstreamResponder(Interface):
    """
    What an upstream client protocol calls as the response to one request arrives: the router's UpstreamRequest
    (one per attempt) implements it.

    Order: ``upstreamHeaders`` once, then ``upstreamData`` any number of times, then optionally ``upstreamTrailers``;
    the last of these carries the end of the stream (``endStream`` true, or trailers).  **``upstreamComplete`` comes
    before that last event**, so the router can hand the connection (or stream) back to its pool before the last
    event goes downstream: a pipelined or queued request that the delivery starts can then reuse it.  Instead of
    any of these, ``upstreamFailed`` may come once, at any point, and then nothing else does.  No method is called
    after ``upstreamFailed``, after the event that ended the stream, or after the handle was abandoned.
    """

    def upstreamHeaders(response, endStream):
        """The response head (a txmesh.stream.ResponseHead); endStream if it has no body."""

    def upstreamData(data, endStream):
        """A piece of response body (possibly empty when it only ends the stream)."""

    def upstreamTrailers(trailers):
        """Response trailers (a txmesh.stream.HeaderMap); they end the stream."""

    def upstreamComplete(reusable):
        """
        The response is complete (its last event follows at once).  ``reusable``: the connection may carry another
        request (a ping-pong connection); multiplexing clients always say True.
        """

    def upstreamFailed(exc):
        """
        The exchange failed: a txmesh.errors.UpstreamError (UpstreamReset, UpstreamRemoteReset, BadUpstreamResponse,
        UpstreamTimeout).  The handle is not to be used again; the router discards it.
        """

    def upstreamWritePaused():
        """The upstream cannot take more request body now: stop reading it from downstream."""

    def upstreamWriteResumed():
        """The upstream can take request body again."""


class IUpstreamStream(Interface):
    """
    One request's way to the upstream, as a pool hands it out: a whole ping-pong connection (HTTP/1.1) or a stream
    on a shared connection (HTTP/2, Dubbo).  The router uses it the same way for every protocol, and gives it back
    with IConnectionPool.release or discard.
    """

    def sendRequest(head, endStream, responder):
        """Send the request head (a txmesh.stream.RequestHead); ``responder`` (IUpstreamResponder) gets the response."""

    def writeBody(data, endStream):
        """More request body."""

    def writeTrailers(trailers):
        """Request trailers; they end the request."""

    def abandon():
        """
        The router gives the exchange up (timeout, downstream gone): stop delivering to the responder; the pool's
        ``discard`` follows.
        """

    def pauseReading():
        """Backpressure: the downstream is full; stop reading this stream's response (a no-op where it cannot)."""

    def resumeReading():
        """Resume reading the response."""


class IConnectionPool(Interface):
    """
    Connections to one upstream host, for one protocol (Envoy's ConnectionPool::Instance); the built-in pools are
    subclasses of txmesh.upstream.conn_pool.ConnectionPoolBase.  Every pool counts on the cluster's stats scope:
    upstream_rq_total, upstream_rq_active, upstream_rq_pending_active/overflow, upstream_cx_total/active/
    connect_fail/connect_timeout/idle_timeout/destroy.
    """

    def acquire():
        """
        An IUpstreamStream for one request: on an existing connection with room, on a new one, or after waiting.
        Cancelling the Deferred withdraws the request (it leaves the queue, or the connect made for it stops).

        @return: a Deferred firing with an IUpstreamStream, or failing with txmesh.errors.Overflow (the pending
            queue is full: at once), ConnectFailure (the cause chained), ConnectTimeout, or PoolClosed (drained).
        """

    def acquireIdle():
        """
        The synchronous fast path of acquire(): an IUpstreamStream on a connection that has room now (counted as
        acquire() counts), or None when acquire() must be used.
        """

    def release(stream):
        """The exchange on ``stream`` ended normally; its connection may be reused."""

    def discard(stream):
        """
        The exchange on ``stream`` ended abnormally: a ping-pong connection is closed; on a multiplexed connection
        only that stream ends (reset if it is still open).
        """

    def drain(serveQueued=False):
        """
        Refuse new requests (PoolClosed), fail queued ones with PoolClosed, close idle connections now and busy
        ones when their exchanges end.  With ``serveQueued`` (a host removed from its cluster), queued requests are
        served first, connecting for them as needed, and only then is the pool drained.

        @return: a Deferred firing with None once every connection is closed.
        """

    def describe():
        """A JSON-able dict of the pool's state (connections, streams, pending) for the admin API."""


class ITunnelConnectors(Interface):
    """
    A cluster's tunnels (issue 15 part 2, txmesh.protocols.tunnel): connections of their own for an allowed HTTP
    upgrade or a CONNECT, never taken from or given back to the cluster's pools.
    """

    def connectorFor(host, kind):
        """
        An IConnectionPool for one tunnel of ``kind`` (``"upgrade"``: HTTP/1.1 with a 101 expected; ``"connect"``:
        raw TCP) to the IHost ``host``: each ``acquire`` connects anew, ``release``/``discard`` close.
        """


class IPooledConnection(Interface):
    """
    What the connection-pool base (txmesh.upstream.conn_pool) needs of a client protocol it connected, unless the
    protocol's pool wires the loss otherwise (HTTP/2: L{IHTTP2ClientCallbacks}).
    """

    transport = Attribute("The connection's ITransport: the pool closes it (loseConnection, abortConnection).")
    onConnectionLost = Attribute(
        "Set by the pool: called with the protocol from connectionLost, after the protocol failed what was in "
        "flight on it.")


class IMultiplexClient(IPooledConnection):
    """
    A client protocol that carries many requests on one connection (Dubbo; MOSN's multiplex pool mode).  It picks
    its own stream/request id per connection, so ids of different downstream clients never collide.
    """

    framesReceived = Attribute("Frames read so far (int): the pool watches it to tell an idle connection from a "
                               "dead one.")
    readOnly = Attribute("True once the peer said it takes no new request on this connection (Dubbo's READONLY "
                         "event, before it closes); requests in flight still complete.")
    onReadOnly = Attribute("Set by the pool: called with the client when ``readOnly`` becomes True (or None).")

    def startStream(head, endStream, responder):
        """Send a request; ``responder`` is an IUpstreamResponder.  @return: a key for the other calls."""

    def writeBody(key, data, endStream):
        """More request body for stream ``key``."""

    def writeTrailers(key, trailers):
        """Request trailers for stream ``key``."""

    def cancelStream(key):
        """Forget stream ``key``: its responder is never called again (a late response is dropped)."""

    def sendPing():
        """Send a protocol keep-alive (a Dubbo heartbeat); its reply counts in framesReceived."""


class IHTTP2ClientConnection(Interface):
    """
    An upstream HTTP/2 connection, as its pool (txmesh.protocols.h2.pool) uses it: the pool hands out its streams
    and keeps its own books; the connection tells the pool what changed through an L{IHTTP2ClientCallbacks}.
    """

    connected = Attribute("True from connectionMade to connectionLost.")

    def setCallbacks(callbacks):
        """Report to ``callbacks`` (an L{IHTTP2ClientCallbacks}) from now on; count in its ``stats``."""

    def newStream():
        """A new stream handle (an IUpstreamStream) on this connection, not yet sent."""

    def maxStreams():
        """
        How many concurrent streams this connection may carry now: the peer's SETTINGS_MAX_CONCURRENT_STREAMS, or 0
        once it takes no new stream (GOAWAY received, stream ids used up).
        """

    def startKeepalive(clock, interval, timeout):
        """
        PING once ``interval`` seconds passed with nothing received while streams are open; no ACK within
        ``timeout`` fails every stream and aborts the connection.
        """

    def setKeepaliveInterval(interval):
        """Use ``interval`` (seconds) between PINGs from now on."""

    def resetStream(stream):
        """The pool discards ``stream``: deliver nothing more for it and reset it (CANCEL) if it is still open."""

    def failStream(stream, exc):
        """Fail ``stream``'s responder with ``exc`` (an UpstreamError); nothing more is delivered for it."""

    def canReplay(stream):
        """Whether ``stream`` (refused by a GOAWAY) kept its whole request and has seen no response yet."""

    def replayStream(stream):
        """Send ``stream``'s request again, on this connection, from what it kept; it belongs to this one now."""


class IHTTP2ClientCallbacks(Interface):
    """What an L{IHTTP2ClientConnection} tells its pool (Envoy's CodecClientCallbacks)."""

    stats = Attribute("The cluster's txmesh.protocols.h2.pool.H2UpstreamStats, or None.")

    def capacityChanged():
        """maxStreams() may have changed (SETTINGS received, stream ids used up)."""

    def goawayReceived(unprocessed):
        """
        GOAWAY: the connection takes no new stream.  ``unprocessed``: the streams above its last-stream-id, which
        the peer did not process and the connection forgot; the pool replays or fails each of them.
        """

    def connectionLost():
        """The connection is gone; it failed its open streams with UpstreamReset first."""

    def pingsRefused(interval):
        """
        The peer closed the connection with GOAWAY ENHANCE_YOUR_CALM "too_many_pings" while it pinged every
        ``interval`` seconds (gRPC A8: the client doubles its keepalive interval).
        """


class IDownstreamStream(Interface):
    """
    The listener's side of one stream, as the filter chain's ActiveStream sees it: where the encoded response goes.
    Each listener protocol provides one per request (the HTTP/1.1 server protocol is its own, serving one request
    at a time).
    """

    def writeHeaders(response, endStream):
        """Frame and write the response head (a txmesh.stream.ResponseHead) in the protocol's own form."""

    def writeData(data, endStream):
        """Write response body bytes."""

    def writeTrailers(trailers):
        """Write response trailers; they end the response."""

    def makeLocalReply(status, body, headers, cause):
        """
        A reply the proxy decides, in the protocol's own form: HTTP status and body, trailers-only gRPC with
        grpc-status/grpc-message, or a Dubbo error frame with the request's id.

        @param status: an HTTP status (the protocol maps it, and ``cause``, to its own).
        @return: (ResponseHead, body bytes) to send through the encoder filters.
        """

    def reset(reason):
        """End the stream abruptly (the response cannot be completed): RST_STREAM, or close the connection."""

    def pauseReading():
        """Backpressure: stop reading this stream's request body."""

    def resumeReading():
        """Resume reading the request body."""

    def streamComplete(stream):
        """The ActiveStream ``stream`` has ended (response written or reset); the listener forgets it."""


class IStream(Interface):
    """
    One request/response exchange running through a listener's stream filters (Envoy's filter manager), as the
    listener's codec drives it.  Request events go in through the ``decode*`` calls, in order; the response comes
    back to the listener's IDownstreamStream.
    """

    streamInfo = Attribute("The stream's IStreamInfo.")
    request = Attribute("The txmesh.stream.RequestHead once decodeHeaders was called, else None.")
    responseStarted = Attribute("True once the response head went to the downstream.")
    complete = Attribute("True once the stream ended (response complete, or reset).")

    def decodeHeaders(request, endStream):
        """The request head (a txmesh.stream.RequestHead); endStream if it has no body."""

    def decodeData(data, endStream):
        """A piece of request body."""

    def decodeTrailers(trailers):
        """Request trailers (a txmesh.stream.HeaderMap); they end the request."""

    def sendLocalReply(status, body=b"", headers=(), cause=None, flag=None):
        """Answer with a reply the proxy decides (see IStreamDecoderFilterCallbacks.sendLocalReply)."""

    def resetStream(reason):
        """The downstream went away (or broke the stream): end it without a response; filters are told."""

    def downstreamWritePaused():
        """The downstream's write buffer is full: filters that produce response bytes pause."""

    def downstreamWriteResumed():
        """The downstream drained."""


class IStreamFactory(Interface):
    """A listener's filter-chain template: makes the IStream of each request (one filter instance each)."""

    routeConfig = Attribute(
        "The route table (txmesh.routing.RouteConfig) its streams route with; listeners read its ``upgradeTypes`` "
        "(which tunnels some route allows: the HTTP/2 listener's SETTINGS_ENABLE_CONNECT_PROTOCOL).")

    def createStream(downstream, streamInfo):
        """
        @param downstream: the listener's IDownstreamStream for this request.
        @param streamInfo: its IStreamInfo.
        @return: an IStream, ready for decodeHeaders.
        """


class IDownstreamWatermarkCallbacks(Interface):
    """
    A stream decoder filter that produces response bytes (the router) and wants to know when the downstream's
    write buffer crosses its watermarks (Envoy's DownstreamWatermarkCallbacks).
    """

    def onAboveWriteBufferHighWatermark():
        """The downstream cannot take more response bytes now: stop reading the upstream."""

    def onBelowWriteBufferLowWatermark():
        """The downstream drained: resume reading the upstream."""


class IListenerFactory(Interface):
    """A listener's Twisted protocol factory: builds one server protocol per accepted connection."""

    listenerName = Attribute("The listener's name (str).")
    connections = Attribute("The set of open server protocols.")

    def buildProtocol(addr):
        """A server protocol for a connection from ``addr``."""

    def drain():
        """Stop keeping connections alive; a Deferred fires once every connection has closed."""

    def abortAll():
        """Drop every connection at once (after the drain timeout)."""

    def closeIdleConnections():
        """
        Close the connections that carry no request now (memory pressure: L{txmesh.overload.Overload}); those of
        protocols that cannot tell are left open.  @return: how many were closed.
        """


class IListenerConnection(Interface):
    """
    One downstream connection of a built-in listener (the server protocol): what its factory, the drain and the
    overload monitor ask of it, whatever its protocol.
    """

    def drain():
        """Stop keeping the connection alive: close it now if idle, else once its in-flight work is done."""

    def isIdle():
        """
        Whether the connection carries nothing now, so closing it loses no request: an HTTP/1.1 keep-alive connection
        between requests (no request in flight, no byte of the next one read), an HTTP/2 one without streams, a
        Dubbo one without calls in flight.
        """

    def closeIfIdle():
        """Close the connection (gracefully: HTTP/2 sends GOAWAY) if it is idle.  @return: True if it was."""


class IProtocol(Interface):
    """
    One protocol txmesh speaks, described once (MOSN's xprotocol capabilities): what config, the service and the
    clusters read instead of string tables.  Built-in descriptors live in each ``txmesh/protocols/<name>/protocol.py``
    and are found as Twisted plugins (``getPlugins(IProtocol, txmesh.plugins)``), so a third-party protocol is added
    the same way as a filter.
    """

    name = Attribute("The canonical name used in mesh.yaml, /config_dump and logs: 'http1', 'http2', 'grpc', 'dubbo'.")
    aliases = Attribute("A frozenset of other spellings accepted in mesh.yaml (older names: 'http', 'h2').")
    filterFamily = Attribute(
        "What filters declare support for (IFilterFactory.protocols): 'http' for HTTP semantics over HTTP/1.1 or "
        "HTTP/2, 'grpc', 'dubbo'.")
    listens = Attribute("True if a listener may speak it.")
    upstream = Attribute("True if a cluster may speak it.")

    def buildListenerFactory(listenerConfig, template, runtime):
        """An IListenerFactory for one listener of this protocol."""

    def buildClientProtocol():
        """A new client protocol instance for one upstream connection (its factory sets ``writeScope``)."""

    def buildPool(clock, host, clusterConfig, connect, stats, resources=None):
        """
        An IConnectionPool for one host of a cluster of this protocol.

        @param connect: ``connect(host) -> Deferred`` firing with a connected client protocol.
        @param stats: the cluster's txmesh.stats.Scope.
        @param resources: the cluster's txmesh.upstream.resources.ClusterResources: every pool of the cluster
            takes its connections and pending requests from them (circuit breakers); None: the pool's own.
        """

    def localReplyStatus(httpStatus, cause):
        """
        The protocol-native status a local reply of ``httpStatus`` for ``cause`` (a txmesh.errors cause string, or
        None) is sent with: the HTTP status itself, a grpc-status, or a Dubbo status.
        """


class ICodec(Interface):
    """A sans-IO codec: bytes in, frames/events out; never touches a transport."""

    def feed(data):
        """
        @return: a list of decoded events (empty means "need more bytes").
        @raise txmesh.errors.CodecError: on malformed input.
        """


class ICluster(Interface):
    name = Attribute("The cluster name.")
    hosts = Attribute("The current tuple of IHost.")
    stats = Attribute("Per-cluster counters.")

    def updateHosts(hosts):
        """Replace the host set (from discovery); load balancers are rebuilt, pools of removed hosts drained."""

    def chooseHost(context):
        """The load balancer's choice, or None."""

    def poolFor(host):
        """The IConnectionPool for an IHost of this cluster."""

    resources = Attribute("The cluster's txmesh.upstream.resources.ClusterResources (its circuit breakers).")
    tunnels = Attribute("The cluster's ITunnelConnectors, or None when it makes no tunnels (test doubles).")


# ---------------------------------------------------------------------------------------------------------------
# Resilience (issue 11): each part's contracts go under its own heading
# ---------------------------------------------------------------------------------------------------------------

# -- active health checks (part 1) --


class IHealthChecker(Interface):
    """
    Checks one host, on connections of its own (never the data-path pool or its limits): made per host by an
    L{IHealthCheckerFactory}; the cluster's health-check scheduler (txmesh.upstream.health) calls ``check`` every
    interval and bounds it by the configured timeout.
    """

    def check():
        """
        Run one check now.

        @return: a Deferred firing with a txmesh.upstream.health.CheckResult (PASSED, or FAILED: the host answered
            wrongly; REFUSED: the connection was refused; NETWORK: any other connect or transport failure); it never
            errbacks except with CancelledError after ``cancel()``.  Cancelling it (the scheduler's timeout) closes
            the check's connection.
        """


class IHealthCheckerFactory(Interface):
    """
    A kind of active health check (``health_checks[].type`` in mesh.yaml), found as a Twisted plugin with
    ``getPlugins(IHealthCheckerFactory, txmesh.plugins)``.  Like a filter factory it validates its own keys once, at
    load, into an immutable config, then makes a cheap checker per host.
    """

    name = Attribute("The ``type`` in mesh.yaml: 'tcp', 'http', 'grpc', 'dubbo'.")
    protocols = Attribute(
        "A frozenset of the cluster protocols (canonical names) it can check, or None for any protocol.")
    keys = Attribute("A tuple of the mesh.yaml keys of its own, beside the common ones (interval, timeout ...).")

    def buildConfig(raw, context):
        """
        Validate the checker's own keys.

        @param raw: a dict of the entry's keys that are among ``keys``.
        @param context: a txmesh.config.HealthCheckConfigContext (file, key path, cluster name and protocol,
            ``error(reason, subpath)``).
        @return: an immutable config object for ``makeChecker``.
        @raise txmesh.errors.ConfigError: made by ``context.error``.
        """

    def makeChecker(config, host, reactor):
        """
        An L{IHealthChecker} for one IHost.

        @param reactor: an IReactorTCP and IReactorTime: the checker connects with it and bounds its connect by it.
        """

# -- outlier detection, priorities and panic (parts 2, 3) --


class IOutlierDetector(Interface):
    """
    A cluster's outlier detector (Envoy's Outlier::Detector): it installs an IHostMonitor on each host of the
    cluster, ejects hosts (HealthFlag.FAILED_OUTLIER_CHECK) on what their monitors see, and brings them back on
    time, on its injected clock.
    """

    def hostsChanged(added, removed):
        """The cluster's host set changed: monitor the ``added`` IHosts, forget the ``removed`` ones."""

    def describeHost(host):
        """A JSON-able dict of ``host``'s outlier state (ejected, until when, times ejected, last success rate),
        or None for a host the detector does not know."""

    def stop():
        """Stop the interval timer (the cluster is drained); ejected hosts stay as they are."""

# -- circuit breakers and local rate limits (parts 4, 7) --

class ITokenBucket(Interface):
    """
    A token bucket the rate-limit filters take from (txmesh.filters.token_bucket): refilled lazily from the time
    each call is given, never by a timer.
    """

    maxTokens = Attribute("The burst: tokens when full (int).")

    def consume(now):
        """Take one token if there is one; True if taken.  ``now``: the clock's seconds()."""

    def remaining(now):
        """Tokens left now (int)."""

    def secondsToNextFill(now):
        """Seconds until the next fill adds tokens (float)."""


class IErrorRateBreaker(Interface):
    """
    One error-rate circuit breaker (txmesh.filters.error_rate_breaker): closed, open (fail fast) or half-open
    (letting probes through), decided by the failures in a rolling window.
    """

    state = Attribute("'closed', 'open' or 'half_open'.")

    def allow(now):
        """
        May a request go through now?  Closed: yes; open: no, until ``sleep_window`` passed, then half-open;
        half-open: yes for up to the configured number of probes in flight.
        """

    def record(failed, now, probe=False):
        """
        An allowed request ended: ``failed`` (bool) by the outcome table (txmesh.upstream.outcome); ``probe``: it was
        let through while half-open (the state just after its ``allow``).
        """

    def abandon(probe=False):
        """An allowed request ended without an answer that says anything about the upstream (a probe's slot is
        freed)."""

# -- retries, timeouts and mirroring (parts 5, 9, 10) --


class IShadowWriter(Interface):
    """
    Request mirroring (txmesh.upstream.shadow): copies of sampled requests to shadow clusters, fire and forget.
    The router calls it; nothing it does can fail, delay or pause the primary request.
    """

    def start(request, policies, endStream):
        """
        Sample each of ``policies`` (txmesh.routing.MirrorPolicy) for ``request`` (a txmesh.stream.RequestHead as
        it goes upstream; the writer copies what it needs) and start a shadow for each sampled one.

        @param endStream: the request has no body.
        @return: a list of the IShadowRequest still wanting the body and trailers, or None when there is none.
        """


class IShadowRequest(Interface):
    """One mirrored request in flight: the router tees the rest of the request to it."""

    def writeBody(data, endStream):
        """More request body (the shadow holds it, bounded, until it can be sent)."""

    def writeTrailers(trailers):
        """Request trailers; they end the request."""

    def abandon():
        """The primary request will not complete (the downstream went away): a shadow still sending it stops."""

# -- load balancing (part 6) --


class ILoadBalancerOptions(Interface):
    """
    What a cluster gives its ILoadBalancerFactory with each host set (txmesh.upstream.lb.LoadBalancerOptions).
    """

    clock = Attribute("The cluster's IReactorTime (slow start, latency estimates), or None.")
    config = Attribute("The cluster's lb_config (txmesh.config.LbConfig), or None for the defaults.")
    stats = Attribute("The cluster's txmesh.stats.Scope for the balancer's gauges, or None.")
    hostState = Attribute(
        "A weakref.WeakKeyDictionary, IHost -> the balancer's state for that host (e.g. its latency estimate), "
        "kept across host-set changes of one cluster.")

# -- fault injection and the error-rate breaker (parts 8, 4) --


# ---------------------------------------------------------------------------------------------------------------
# Discovery and registration (issue 12): each part's contracts go under its own heading
# ---------------------------------------------------------------------------------------------------------------

# -- discovery sources (part 1) --


class IHostSetSink(Interface):
    """
    Where an L{IDiscoverySource} delivers what it finds: one per discovered cluster (txmesh.discovery.base), which
    applies host sets to the cluster (``ICluster.updateHosts``), keeps the last known set when the source fails, and
    records version, last update and staleness for ``/clusters`` and the counters.  Called on the reactor thread only.
    """

    def hostsUpdated(endpoints, version):
        """
        A complete new host set (never a delta).

        @param endpoints: a sequence of txmesh.config.EndpointConfig (host, port, weight, priority, locality,
            metadata); may be empty (the registry says there are no hosts).
        @param version: a str naming this set in the source's own terms (a ZooKeeper zxid, an etcd revision, a
            file's mtime and size, a DNS answer's expiry), shown in ``/clusters``.
        """

    def sourceFailed(reason):
        """
        The source could not fetch or lost its registry (a str or a twisted Failure).  The host set is not changed
        (the last known one keeps serving unless the config says otherwise); the sink counts and logs it once per
        change of state.
        """


class IDiscoverySource(Interface):
    """One cluster's running discovery (made by an L{IDiscoverySourceFactory}); it owns its timers and watches."""

    def start():
        """Begin discovering: deliver every host set to the sink, from now on, until ``stop``."""

    def stop():
        """Stop watching and cancel every timer and call in flight.  @return: None or a Deferred."""

    def describe():
        """A JSON-able dict of the source's own state for ``/clusters`` (names resolved, path watched, revision)."""


class IDiscoverySourceFactory(Interface):
    """
    A kind of discovery (``clusters[].discovery.type`` in mesh.yaml: 'static', 'dns', 'file', 'zookeeper', 'etcd'),
    found as a Twisted plugin with ``getPlugins(IDiscoverySourceFactory, txmesh.plugins)``.  Like a health checker
    factory it validates its own keys once, at load, into an immutable config.
    """

    name = Attribute("The ``type`` in mesh.yaml.")
    keys = Attribute("A tuple of the mesh.yaml keys of its own, beside the common ones (type, registry, ...).")
    registryType = Attribute(
        "The ``registries[].type`` a source of this kind needs ('zookeeper', 'etcd'), or None for none.")

    def buildConfig(raw, context):
        """
        Validate the source's own keys.

        @param raw: a dict of the entry's keys that are among ``keys``.
        @param context: a txmesh.config.DiscoveryConfigContext (file, key path, cluster name and protocol,
            ``error(reason, subpath)``).
        @return: an immutable config object for ``makeSource``.
        @raise txmesh.errors.ConfigError: made by ``context.error``.
        """

    def makeSource(config, context, sink):
        """
        An L{IDiscoverySource} for one cluster.

        @param context: a txmesh.discovery.base.SourceContext: ``reactor`` (IReactorTime, IReactorTCP ...),
            ``clusterName``, ``clusterProtocol``, ``stats`` (the cluster's txmesh.stats.Scope), ``registry`` (the
            running registry client of the entry's ``registry``, or None).
        @param sink: the cluster's L{IHostSetSink}.
        """

# -- registry clients (parts 1, 2, 3): one session per ``registries`` entry, shared by sources and registration --


class IZooKeeperSession(Interface):
    """
    One ZooKeeper session (txmesh.discovery.zookeeper_session.ZooKeeperSession, over kazoo), shared by every discovery
    source, Dubbo registry router and registration of one ``registries`` entry.  Every callback runs on the reactor
    thread (brought there with ``callFromThread``); kazoo's threads never touch txmesh state.
    """

    config = Attribute("Its txmesh.discovery_config.ZooKeeperRegistryConfig.")
    connected = Attribute("True while the session is connected.")

    def start():
        """Begin connecting (retrying forever with backoff).  @return: a Deferred fired once first connected."""

    def stop():
        """Close the session (its ephemeral nodes go with it).  @return: a Deferred."""

    def addStateListener(callback):
        """``callback(state)`` on the reactor on each change: 'connected', 'suspended', 'lost' (session expired)."""

    def removeStateListener(callback):
        """Stop calling ``callback`` (a source that stops: a Dubbo registry route's idle cluster removed)."""

    def watchChildren(path, callback):
        """
        Watch the children of ``path`` (which may not exist yet): ``callback(children, version)`` on the reactor with
        the list of child names (str) now and after every change, and again after a reconnect; ``version`` is the
        parent's pzxid as a str.  @return: an object with ``cancel()``.
        """

    def getChildrenData(path):
        """@return: a Deferred firing with {child name: bytes data} of ``path``'s children ({} if none)."""

    def ensureEphemeral(path, data=b""):
        """
        Create ``path`` (and its missing parents, persistent) as an ephemeral node holding ``data`` and keep it: it
        is created again whenever a new session is established after the old one expired.
        @return: a Deferred fired once it exists.
        """

    def removeEphemeral(path):
        """Stop keeping ``path`` and delete it.  @return: a Deferred fired once deleted (or already gone)."""


class IEtcdClient(Interface):
    """
    One etcd v3 cluster through its HTTP/JSON gateway (txmesh.discovery.etcd.EtcdClient, on treq), shared by every
    discovery source and registration of one ``registries`` entry.
    """

    config = Attribute("Its txmesh.discovery_config.EtcdRegistryConfig.")
    connected = Attribute("True while the last call to etcd succeeded (a watch stream is open, a put went through).")

    def watchPrefix(prefix, callback, failed=None):
        """
        Keep a view of every key under ``prefix`` (str or bytes): ``callback(items, revision)`` on the reactor with
        {key (str): value (bytes)} and the etcd revision (a str) now and after each change, through a streamed
        watch that resumes at the next revision after a broken stream and re-reads the whole prefix after a
        compaction; ``failed(reason)`` (a str) each time the read or the stream fails, after which the view is
        delivered again once the watch is back.  @return: an object with ``cancel()`` and ``describe()`` (a
        JSON-able dict: revision, watching, and how often it read the prefix, resumed, met a compaction).
        """

    def putWithLease(key, value, ttl):
        """
        Keep ``key`` = ``value`` under a lease of ``ttl`` seconds kept alive (re-granted and re-put when it was
        lost).  ``key`` and ``value`` are str or bytes.  @return: a Deferred fired once first written (however long
        etcd takes to answer); failing with CancelledError if ``deleteKey`` or ``stop`` comes first.
        """

    def deleteKey(key):
        """Stop keeping ``key``, revoke its lease, delete it.  @return: a Deferred."""

    def describeKey(key):
        """
        What ``putWithLease`` keeps for ``key``: a JSON-able dict (``written``: the key is in etcd as far as the
        client knows, ``lease``, ``ttl``, ``grants``: leases granted so far, ``keepAlives``), or None if the key is
        not kept.
        """

    def stop():
        """Cancel every watch and keep-alive.  @return: a Deferred."""

# -- Dubbo without a cluster per interface (part 2) --


class IRegistryClusters(Interface):
    """
    The clusters ``dubbo_registry`` routes make on demand, one per (registry, interface, group, version) of the
    calls (txmesh.discovery.dubbo_clusters.RegistryClusters, ``runtime.registryClusters``): the router asks it
    instead of the ClusterManager for a route whose action is a txmesh.routing.DubboRegistryAction.
    """

    def clusterFor(action, request):
        """
        The ready ICluster of the call's service (``request``: a txmesh.stream.RequestHead of a Dubbo call), or None
        when it does not exist yet or waits for its first providers list (then ``waitForCluster``).  Cheap: on
        every call.
        """

    def waitForCluster(action, request):
        """
        Make the call's cluster if needed and wait for its first providers list, at most the action's
        ``initialFetchTimeout``.  @return: a Deferred firing with the ICluster (maybe without hosts), or failing
        with txmesh.errors.NoClusterFound (no usable interface, ``max_clusters`` reached); cancellable.
        """

    def describe():
        """A JSON-able dict {registry: [each on-demand cluster's state]} for the admin API."""

    def stop():
        """Stop every source and timer (the service stops), cancelling calls still waiting."""


# -- registration of the local app (part 3) --


class IRegistrar(Interface):
    """
    Publishes the local app in one registry (made per ``registration`` entry): the registration manager
    (txmesh.discovery.registration) calls ``register`` while the local app passes its health check and
    ``deregister`` when it fails and first on drain.
    """

    def register():
        """Publish (idempotent).  @return: a Deferred fired once published."""

    def deregister():
        """Withdraw (idempotent).  @return: a Deferred fired once withdrawn."""

    def describe():
        """A JSON-able dict: what is published where, and whether it is now."""


# ---------------------------------------------------------------------------------------------------------------
# Configuration that changes while serving (issue 13): each part's contracts go under its own heading
# ---------------------------------------------------------------------------------------------------------------

# -- the service manager's notifications (part 4: systemd) --


class IServiceNotifier(Interface):
    """
    Tells the service manager what the service is doing (systemd's sd_notify protocol: READY, RELOADING,
    STOPPING, STATUS, WATCHDOG).  ``txmesh/systemd.py`` has the implementation that writes to ``$NOTIFY_SOCKET``
    and the one that does nothing (no ``$NOTIFY_SOCKET``).  No method raises: a service manager that cannot be
    told is logged, never a reason to stop serving.
    """

    def ready(status):
        """Every listener and the admin are bound (or a reload is complete): READY=1 with ``status`` as STATUS=."""

    def reloading():
        """A reload starts: RELOADING=1 with MONOTONIC_USEC= (the clock systemd compares); ``ready`` ends it."""

    def stopping(status):
        """The drain starts: STOPPING=1 with ``status`` as STATUS=."""

    def status(text):
        """A one-line STATUS= an operator reads in ``systemctl status``."""

    def start(describe):
        """
        Start the timers: the watchdog pings (WATCHDOG=1 at half of ``$WATCHDOG_USEC``, from the reactor, so a
        stuck reactor misses them) and STATUS= refreshed from ``describe() -> str``.
        """

    def stop():
        """Stop the timers (the process is about to exit) and close the socket."""


# -- one way to change configuration, and file reload (parts 1 and 2) --


class IStreamFactorySwitch(Interface):
    """
    A listener's protocol factory whose connections make each stream with the factory's current ``template``, read
    per stream: a reload that changes only a listener's routes or stream filters replaces it, and the open
    connections' next streams take the new one while streams in flight finish on theirs (txmesh/listeners.py).
    """

    template = Attribute("The IStreamFactory (filter-chain template) new streams are made with; may be replaced.")


class IConfigSource(Interface):
    """
    Where a running mesh's configuration comes from: the file it was started with (txmesh/reload.py), later an
    xDS client.  What it gives goes through the one IConfigApplier.
    """

    name = Attribute("What ``/config_dump`` and ``/server_info`` show as the source: ``file`` (str).")
    location = Attribute("Where it reads from: the file's path (str).")

    def read():
        """
        The new configuration, validated.  @return: a txmesh.config.MeshConfig.
        @raise txmesh.errors.ConfigError: the one-line ``file:line: key.path: reason`` of ``txmesh check``.
        """


class IConfigApplier(Interface):
    """
    Applies a new validated MeshConfig to the running mesh, atomically on the reactor (txmesh/reload.py): new
    streams see the new route tables and filter chains at once, streams in flight finish on theirs; unchanged
    listeners keep their ports and connections; unchanged clusters, and kept hosts' pools, stay.  Reloads run one at
    a time, in the order asked.
    """

    version = Attribute("The running config's L{txmesh.reload.ConfigVersion}.")

    def apply(config, source):
        """
        Apply ``config`` (from ``source``, an IConfigSource) or reject it whole, leaving the old one serving.
        @return: a Deferred firing with a JSON-able dict: ``outcome`` (``applied``, ``unchanged`` or ``rejected``),
            ``error`` (the reason of a rejection, else None), ``version``, ``digest`` and the ``changes``.  It never
            fails.
        """


# -- xDS (part 3): resources from a control plane (txmesh/xds/) --


class IXdsResourceHandler(Interface):
    """
    What an xDS transport (the ADS stream, the REST poller: txmesh/xds/ads.py, rest.py) hands the resources it
    receives to (txmesh/xds/state.py).  Type URLs are Envoy's v3 ones
    (``type.googleapis.com/envoy.config.cluster.v3.Cluster`` …); resources are protobuf messages of the
    ``xds-protos`` package, already unpacked from their ``Any``.  The handler keeps the last accepted resources of
    each type, translates and validates them together with the bootstrap's static parts and applies the result
    through the one IConfigApplier.
    """

    def typeUrls():
        """The type URLs to subscribe to, in the order Envoy applies them (CDS, EDS, LDS, RDS): a tuple of str."""

    def subscriptions(typeUrl):
        """
        The resource names to ask for of ``typeUrl``: an empty frozenset for a wildcard subscription (LDS, CDS);
        for EDS the clusters of type EDS that the accepted clusters name, for RDS the route configurations that the
        accepted listeners name.
        """

    def watchSubscriptions(callback):
        """
        Call ``callback(typeUrl)`` whenever ``subscriptions(typeUrl)`` changes (after a CDS or LDS update was
        applied), so the transport asks for the new names.
        """

    def update(typeUrl, versionInfo, resources):
        """
        A state-of-the-world response: ``resources`` (a list of messages of ``typeUrl``) replace every resource of
        that type (LDS, CDS; for RDS and EDS, as Envoy, they replace the resources of their names and the others
        stay while subscribed).  @return: a Deferred firing with None when the update was applied or changed nothing (ACK), or
            with the ``error_detail`` message (str) naming each resource that cannot be applied and why (NACK: the
            last accepted resources keep serving).  It never fails.
        """


class IXdsTransport(Interface):
    """
    One xDS client transport (txmesh/xds/ads.py's ``AdsClient``, txmesh/xds/rest.py's ``RestPoller``): it asks the
    control plane for the IXdsResourceHandler's subscriptions, hands each state-of-the-world response to it and
    ACKs or NACKs it by the handler's answer.
    """

    state = Attribute("Its L{txmesh.xds.discovery.DiscoveryState}: per type the accepted version, nonce, names.")

    def start():
        """Open the stream (ADS) or start polling (REST); failures are retried with backoff, never raised."""

    def stop():
        """Close the stream or stop polling; nothing is asked for afterwards.  @return: None or a Deferred."""

    def describe():
        """
        A JSON-able dict: ``api_type``, ``cluster``, ``server`` (host:port last used), ``connected``,
        ``last_stream_error``, and per type (``cds`` ...) the accepted version, nonce, names, counts, last error.
        """


# -- hot restart (part 5): a new process takes the listening sockets over from the running one --


class IHotRestart(Interface):
    """
    The service's side of hot restart (``txmesh/hot_restart.py``; docs/operations.md "Hot restart"): where the
    listeners' ports come from, and the moment the service serves.  A process started to take over got the old
    process's listening sockets before the service was built; its listeners listen on those, it binds only what
    the old process did not have, and once it serves it tells the old process to drain.  Every process then
    listens on the control socket, to hand its own sockets to the next one.  No method raises for a hand-over
    that fails: the old process keeps serving, the new one logs why.
    """

    def endpoint(name, address, endpoint):
        """
        An C{IStreamServerEndpoint} for the listener (or admin) ``name`` configured at ``address`` (an endpoint
        string): it listens on the socket inherited under that name when its address fits ``address`` (adopted
        with the reactor's ``adoptStreamPort``, so txmesh's own TCP transport serves it), else as ``endpoint``
        does.  Either way the port is kept under ``name`` to hand it to a later process.
        """

    def serving():
        """
        The service accepts on every listener: a process that took over tells the service manager its new main
        pid and the old process to drain; then this process listens on the control socket.
        """

    def stop():
        """The service stops: close the control socket; a hand-over under way ends (the new process keeps what
        it has)."""


# ---------------------------------------------------------------------------------------------------------------
# Observability (issue 16): each part's contracts go under its own heading
# ---------------------------------------------------------------------------------------------------------------

# -- the admin API's view of and hold on the running mesh (part 4) --


class IMeshControl(Interface):
    """
    What the admin API (txmesh/admin.py) reads of the running mesh and the few things it may change, each by
    POST: the sidecar's own readiness (Envoy's ``/healthcheck/fail`` and ``/ok``), the listeners (Envoy's
    ``/drain_listeners``) and the log level.  ``txmesh/control.py`` implements it over the MeshService.  Every
    ``describe``-like method returns a JSON-able dict or list with snake_case keys.
    """

    def serverInfo():
        """
        Versions, reactor, uptime, state (``starting``, ``live``, ``draining``), config file, digest, version and
        source, node; ``hot_path_mode`` and ``compiled_modules`` (txmesh/speedups.py: which modules run compiled).
        """

    def describeListeners():
        """[dict] per listener: name, protocol, configured and bound addresses, open connections, draining."""

    def failHealthcheck():
        """Answer 503 on ``/ready`` and withdraw the local app's registrations (if configured) until ``okHealthcheck``."""

    def okHealthcheck():
        """Undo ``failHealthcheck``: ``/ready`` follows the mesh's state again; registrations resume if healthy."""

    def drainListeners(graceful):
        """
        Stop accepting on every listener (open connections finish); with ``graceful``, also ask each open connection
        to close once its in-flight requests are done.  Readiness goes to DRAINING.  @return: a JSON-able dict.
        """

    def logLevel():
        """{"level": name or None, "observer": "txmesh" or "twistd", ...}: the operator log's level."""

    def setLogLevel(name):
        """
        Change the operator log's level at run time.  @raise ValueError: an unknown level name.
        @raise LookupError: twistd's own observer is in use (``--logger``/``--syslog``): no level to change here.
        """

    def reload():
        """
        Re-read the config file the mesh was started with and apply it (issue 13 part 2, as SIGHUP does).
        @return: a Deferred firing with the outcome (IConfigApplier.apply's dict); it never fails.
        """

    def explain(args):
        """
        The route decision for the request the query ``args`` ({name: [str]}) describes (txmesh/explain.py).
        @raise ValueError: the query does not describe a request.
        """


# -- request metrics per listener, route and cluster, and the status page's view of them (parts 1, 5) --


class IRequestStats(Interface):
    """
    What every stream reports when it ends, whatever its protocol (txmesh/request_stats.py): the duration
    histograms, bytes and responses per listener, route and cluster that /metrics exports and the status page
    reads.  The stream filter chain calls ``streamEnded`` once per stream, after its filters were told.
    """

    def streamEnded(info):
        """
        Count one finished stream: ``info`` is its L{IStreamInfo} with ``endTime`` set.  Cheap (no formatting, no
        allocation once the stream's listener/route/cluster was seen) and never raises for a stream's facts.
        """

    def clusterTotals():
        """
        {cluster name: L{txmesh.request_stats.ClusterTotals}}: the requests, failures and the duration histogram's
        counts summed over every listener and route that sent streams to the cluster, since start ("" is the
        streams no cluster took: no route, a local reply).
        """


class IStatusView(Interface):
    """
    What the admin's live status page polls (``/status.json``; txmesh/status.py): a JSON-able dict, snake_case keys.
    """

    def status():
        """
        {"time", "window_seconds", "server": IMeshControl.serverInfo(), "listeners": IMeshControl.describeListeners(),
        "clusters": [per cluster: name, protocol, lb_policy, hosts (address, healthy, health_flags, ...),
        healthy_hosts, total_hosts, requests_total, failures_total, requests_per_second, failure_rate,
        latency_seconds {p50, p90, p99}], "no_cluster": the same figures for streams no cluster took (if any)}.
        Rates and percentiles are over the recent window (null until two readings exist, or without requests).
        """


# -- trace context and spans (part 2) --


class ITracer(Interface):
    """
    The spans of one running mesh (``txmesh/tracer.py``, over the OpenTelemetry SDK; docs/tracing.md): made by
    the service when mesh.yaml has a ``tracing`` block, used by the ``tracing`` stream filter
    (``txmesh/filters/tracing.py``) that the service puts first on every listener.  Spans are exported in batches
    by the SDK's own thread, never on the reactor's.
    """

    propagation = Attribute("The trace-context formats (txmesh.trace_context flags) every upstream request gets.")

    def start():
        """Start exporting (the batch processor's thread).  Spans started before are not recorded."""

    def startSpan(name, parent, startTime, attributes):
        """
        Start the SERVER span of one downstream request.

        @param name: the span name (str).
        @param parent: the txmesh.trace_context.TraceContext the request came with, or None.
        @param startTime: when the request arrived (seconds, the service clock's).
        @param attributes: {str: str | int} OpenTelemetry attributes.
        @return: an opentelemetry.trace.Span: its context's ids are the ones to send upstream; it records
            (``is_recording()``) only when sampled -- the caller's sampled flag, else the sampling ratio.
        """

    def newSpanId():
        """A random span id (int, 64 bits, not 0) for a span started later (L{startUpstreamSpan})."""

    def startUpstreamSpan(name, server, spanId, startTime, attributes):
        """
        Start the CLIENT span of a request's upstream exchange, child of its SERVER span ``server`` (a recording
        span from L{startSpan}), with the span id ``spanId`` chosen before (the one the upstream call was sent
        with).  @return: a recording opentelemetry.trace.Span.
        """

    def stop():
        """
        Export what is queued and stop the thread, bounded by the export timeout (and a second).
        @return: a Deferred that fires (never fails) when done or when the bound passed.
        """


# ---------------------------------------------------------------------------------------------------------------
# Security (issue 14): each part's contracts go under its own heading
# ---------------------------------------------------------------------------------------------------------------

# -- path normalisation before routing and the filters (part 6) --


class IPathNormalizer(Interface):
    """
    One HTTP listener's path normalisation (``txmesh/path_normalization.py``; docs/security.md), applied by the
    stream (``ActiveStream.decodeHeaders``) to each request head once, before routing and before any filter, so the
    route, every filter (authorization included) and the upstream see the same, normalised path.
    """

    plain = Attribute(
        "``plain(target)``: a true value when the request target (bytes) certainly needs nothing, else None (then "
        "call ``normalize``).  One C call, so the common, plain request pays no Python call for normalisation.")

    def normalize(request, streamInfo):
        """
        Normalise ``request.path`` (a txmesh.stream.RequestHead; the query is left as it came) in place.  When the
        path changed, the target as received is kept in ``streamInfo.metadata["original_path"]`` (bytes).

        @return: None to go on with the request, or the local reply to end it with instead, as the arguments of
            ``sendLocalReply``: (status, body, headers, cause) -- 400 for a path refused, 307 with ``location``
            for one redirected to its form without escaped slashes.
        """


# ---------------------------------------------------------------------------------------------------------------
# TLS and peer identity (issue 14)
# ---------------------------------------------------------------------------------------------------------------


class IPeerIdentity(Interface):
    """
    Who a TLS peer is, from its verified leaf certificate (L{txmesh.tls.material.PeerIdentity}): what filters, route
    matches, the access log, ``x-forwarded-client-cert`` and the authorization filter read.  A plain-text connection,
    or a TLS one whose client sent no certificate, has no identity (None where an identity is asked for).
    """

    uriSans = Attribute("The URI subject alternative names (tuple of str), e.g. ('spiffe://td/ns/x/sa/y',).")
    dnsSans = Attribute("The DNS subject alternative names (tuple of str).")
    subject = Attribute("The subject distinguished name, RFC 4514 (str).")
    serial = Attribute("The certificate serial number, hex (str).")
    fingerprint = Attribute("The certificate's SHA-256 fingerprint, hex (str).")
    notAfter = Attribute("The certificate's expiry, POSIX seconds (float).")
    spiffeId = Attribute("The first URI SAN that is a SPIFFE ID ('spiffe://...'), or None.")
    principal = Attribute(
        "The one name policies match by default: the SPIFFE ID, else the first URI SAN, else the first DNS SAN, "
        "else the subject.")


class IServerTLS(Interface):
    """
    A listener's TLS termination (its ``tls`` block), built once per listener and kept current when its files
    rotate.  The listener wraps its factory with it; protocol detection (``protocol: auto``) uses
    ``serverCreator`` to start TLS on a connection it has already read the first bytes of.
    """

    serverCreator = Attribute(
        "The IOpenSSLServerConnectionCreator for new handshakes (current certificates, SNI, ALPN, client "
        "certificate policy); Twisted's TLSMemoryBIOFactory takes it.")

    def wrapFactory(factory):
        """A protocol factory terminating TLS in front of ``factory`` (whose protocols see the plain text)."""

    def start():
        """Watch the block's certificate, key and CA files (rotation) while the listener runs."""

    def stop():
        """Stop watching them (the listener stopped, or a reload replaced its TLS)."""

    def describe():
        """What ``/certs`` shows of this listener's TLS material (a JSON-able dict; never a key)."""


class IDownstreamTLS(Interface):
    """
    What one downstream TLS connection negotiated (L{txmesh.tls.server.DownstreamTLS}), read once after its
    handshake: the access log's ``%DOWNSTREAM_TLS_VERSION%``, ``%DOWNSTREAM_TLS_CIPHER%``,
    ``%REQUESTED_SERVER_NAME%`` and the ``By``/``Hash`` of ``x-forwarded-client-cert``.
    """

    version = Attribute("The protocol version, OpenSSL's name ('TLSv1.3').")
    cipher = Attribute("The cipher suite, OpenSSL's name ('TLS_AES_256_GCM_SHA384').")
    serverName = Attribute("The SNI name the client asked for (str), or None.")
    alpn = Attribute("The ALPN protocol agreed (str, 'h2'), or None.")
    peer = Attribute("The client's IPeerIdentity (a verified client certificate), or None.")
    peerCertificatePem = Attribute("The client's leaf certificate, PEM (bytes), or None (for XFCC's Cert).")
    localUriSan = Attribute("The first URI SAN of the certificate this side presented (XFCC's By), or None.")


class INegotiatedProtocolFactory(Interface):
    """
    A listener factory that serves more than one application protocol over TLS (an HTTP listener: HTTP/2 to
    clients that agreed ``h2`` by ALPN, HTTP/1.1 to the rest): the TLS layer asks it for a protocol once the
    handshake says which.
    """

    def buildNegotiatedProtocol(addr, negotiated):
        """A server protocol for the connection from ``addr`` whose handshake agreed ALPN ``negotiated`` (bytes or
        None), or None to close it (the listener's overload bounds refused it)."""


class IUpstreamTLS(Interface):
    """A cluster's TLS origination (its ``tls`` block): one client connection creator per upstream host."""

    def clientCreator(host):
        """
        The IOpenSSLClientConnectionCreator for a connection to ``host`` (an IHost): SNI, CA bundle, client
        certificate, ALPN, and the expected peer names checked with service_identity after the handshake.
        """

    def connect(endpoint, factory, host):
        """
        Connect ``factory``'s protocol to ``host`` over TLS through ``endpoint`` (an IStreamClientEndpoint to it).
        @return: a Deferred firing with the protocol only once the handshake and the identity check passed (no
            byte of it is sent before), or failing with txmesh.errors.UpstreamTLSHandshakeError /
            UpstreamTLSVerifyError (counted on the cluster) or the endpoint's own error; cancelling it aborts.
        """

    def reactorFor(reactor, host):
        """
        ``reactor`` with its ``connectTCP`` turned into verified TLS connects to ``host`` (IReactorTCP,
        IReactorTime, IReactorPluggableNameResolver): what the cluster's active health checks connect with.
        """


# ---------------------------------------------------------------------------------------------------------------
# Authorization and the admin API's exposure (issue 14 parts 5 and 7)
# ---------------------------------------------------------------------------------------------------------------


class IAuthorizationRules(Interface):
    """
    An ordered list of authorization policies and a default action (the ``rbac`` filter's rules or shadow rules,
    L{txmesh.filters.rbac_policy.Rules}): built once at config load, shared by every stream of the listener.
    """

    policyNames = Attribute("The names of the policies, in the order they are tried (tuple of str).")
    defaultAction = Attribute("'allow' or 'deny': the decision when no policy matches.")

    def evaluate(request, streamInfo):
        """
        Try the policies in order on ``request`` (a txmesh.stream.RequestHead, its path already normalised) and
        ``streamInfo`` (IStreamInfo: the direct peer, the listener address, the peer's IPeerIdentity): the first
        policy whose permissions and principals both match decides.
        @return: (allowed: bool, the name of the policy that decided, or None for the default action).
        """


class IAdminAuthenticator(Interface):
    """Who may use the admin API (``admin.auth``): asked for every admin request before any page runs."""

    scheme = Attribute("The HTTP authentication scheme challenged with on a 401 (bytes, e.g. b'Bearer').")

    def authenticate(authorization):
        """
        Whether the request's ``Authorization`` header value (bytes, or None when absent) is acceptable.
        Comparisons of secrets take constant time.  @return: True or False; never raises.
        """


# ---------------------------------------------------------------------------------------------------------------
# Performance (issue 10): one worker per core (part 4)
# ---------------------------------------------------------------------------------------------------------------


class IWorkerLauncher(Interface):
    """
    How the parent of ``workers: N`` starts one worker process (txmesh/workers.py; ``ProcessLauncher`` spawns
    ``twistd txmesh --worker-fd 3`` with the reactor, tests use a fake).
    """

    def launch(message, fds, process, channel, handoff=None):
        """
        Start a worker and hand it ``message`` (the start message, a dict of the hot-restart wire format) with the
        listening sockets ``fds`` (descriptors, sent by SCM_RIGHTS; the caller keeps its own) on a private channel.
        ``handoff``, when given, is the worker's end of its hand-off socket (txmesh/workers_balance.py): the worker
        inherits it (the start message says where: ``worker.handoff_fd``); the caller closes its copy.

        @param process: the C{IProcessProtocol} told when the worker ends.
        @param channel: the C{IProtocol} connected to the parent's end of the channel.
        @return: the worker's C{IProcessTransport} (``pid``, ``signalProcess``).
        @raise OSError: the worker could not be started (no descriptor left, the executable missing).
        """
