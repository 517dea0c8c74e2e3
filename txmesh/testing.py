"""
Test doubles for people who write txmesh filters and for txmesh's own tests (as treq ships treq.testing).

A filter's config and per-stream instances, without a running mesh::

    from txmesh.testing import FakeConfigContext, FakeRuntime, RecordingInstaller

    config = MyFilterFactory().buildConfig({"keys": ["s3cret"]}, FakeConfigContext())
    installer = RecordingInstaller()
    MyFilterFactory().createFilters(config, installer, FakeRuntime())
    [f] = installer.decoders

A network filter is tested the same way, with L{FakeReadFilterCallbacks} around a L{FakeConnection}:

    MyNetworkFilterFactory().createFilters(config, installer, FakeRuntime())
    [f] = installer.readFilters
    callbacks = FakeReadFilterCallbacks(FakeConnection(peer=IPv4Address("TCP", "10.0.0.1", 5555)))
    f.initializeReadFilterCallbacks(callbacks)
    assert f.connectionMade() is FilterStatus.CONTINUE

A whole listener in memory (L{InMemoryMesh}): the mesh.yaml goes through C{txmesh.config.loads}, so filters, routes
and clusters are the real ones; time is a C{MemoryReactorClock}; every connection is a L{MemoryTransport} (a
StringTransport); each upstream host is a scriptable fake HTTP/1.1 server (L{FakeHTTPUpstream})::

    mesh = InMemoryMesh(MESH_YAML)                      # a listener whose chain holds your filter, then the router
    backend = mesh.upstream("backend")                  # the cluster's host, as the test scripts it
    client = mesh.connect()
    client.send(b"GET /a HTTP/1.1\\r\\nHost: app\\r\\nx-api-key: k\\r\\n\\r\\n")
    [request] = backend.requests
    assert request.head.headers.get(b"x-api-key") is None  # what your filter did to the request
    request.respond(200, body=b"hi")
    [response] = client.responses()
    assert (response.status, response.body) == (200, b"hi")
    assert mesh.value("downstream_rq_xx", code_class="2xx") == 1

Nothing here sleeps: advance time with C{mesh.advance(seconds)}.  A peer's close reaches its protocol on the next
reactor turn, as with a real reactor; every harness call runs the turns that are due.

And for people who write connection pools: a connect function that records its attempts (L{FakeConnector}) and
the client protocol it connects (L{FakeClientProtocol}); for registration, a registrar that records its calls
(L{RecordingRegistrar}).
"""

import dataclasses
import random as _random
from http import HTTPStatus

import attrs
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionAborted, ConnectionDone, ConnectionRefusedError
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from zope.interface import implementer

from txmesh import config as _config
from txmesh.errors import ConfigError
from txmesh.filters.access_log import formatText
from txmesh.filters.chain import FilterChainTemplate
from txmesh.interfaces import (
    IConnectionInfo,
    IConnectionPool,
    IDownstreamStream,
    IFilterChainFactoryCallbacks,
    IReadFilterCallbacks,
    IRegistrar,
    IUpstreamStream,
)
from txmesh.protocols.descriptor import findProtocols
from txmesh.protocols.http1.codec import (
    BodyData,
    HTTPCodecError,
    MessageComplete,
    RequestDecoder,
    RequestStarted,
    ResponseDecoder,
    ResponseStarted,
)
from txmesh.overload import Overload
from txmesh.path_normalization import pathNormalizerFor
from txmesh.runtime import Runtime
from txmesh.stats import StatsStore
from txmesh.stream import HeaderMap, ResponseHead, StreamInfo
from txmesh.upstream.cluster import ClusterManager


# -- filter unit tests -------------------------------------------------------------------------------------------

class FakeConfigContext:
    """The ``context`` of IFilterFactory.buildConfig: errors name the sub-path only (no file, no line)."""

    listenerProtocol = "http1"

    def error(self, reason, subpath=""):
        return ConfigError(reason, path=subpath)


def buildConfigError(factory, raw):
    """The ConfigError ``factory.buildConfig(raw, FakeConfigContext())`` raises (AssertionError if it builds)."""
    try:
        factory.buildConfig(raw, FakeConfigContext())
    except ConfigError as e:
        return e
    raise AssertionError("%r built a config from %r" % (factory, raw))


class FakeRuntime:
    """
    The ``runtime`` given to createFilters: a fake clock (advance it in tests), a fresh stats store and the node
    ``test-node``.
    """

    def __init__(self, clock=None, stats=None):
        self.clock = clock if clock is not None else Clock()
        self.stats = stats if stats is not None else StatsStore()
        self.node = _config.NodeConfig(id="test-node")


@implementer(IFilterChainFactoryCallbacks)
class RecordingInstaller:
    """Records the filters a factory installs, in decode and encode order as the chain would hold them."""

    def __init__(self):
        self.decoders = []
        self.encoders = []
        self.readFilters = []
        self.writeFilters = []

    def addStreamDecoderFilter(self, f):
        self.decoders.append(f)

    def addStreamEncoderFilter(self, f):
        self.encoders.append(f)

    def addStreamFilter(self, f):
        self.decoders.append(f)
        self.encoders.append(f)

    def addReadFilter(self, f):
        self.readFilters.append(f)

    def addWriteFilter(self, f):
        self.writeFilters.append(f)


@implementer(IConnectionInfo)
class FakeConnection:
    """
    The ``connection`` a network filter sees: records what it writes and how it closes.

    @ivar written: the bytes written, one item per call.
    @ivar closed: None while open, then "close" or "abort".
    """

    def __init__(self, peer=None, host=None, listenerName="test", peerIdentity=None):
        self.peer = peer if peer is not None else IPv4Address("TCP", "127.0.0.1", 40000)
        self.peerIdentity = peerIdentity
        self.host = host if host is not None else IPv4Address("TCP", "127.0.0.1", 15001)
        self.listenerName = listenerName
        self.written = []
        self.closed = None

    def write(self, data):
        self.written.append(data)

    def close(self, abort=False):
        if self.closed is None:
            self.closed = "abort" if abort else "close"


@implementer(IReadFilterCallbacks)
class FakeReadFilterCallbacks:
    """What a read filter is given: counts ``continueReading`` calls and records injected bytes."""

    def __init__(self, connection=None):
        self.connection = connection if connection is not None else FakeConnection()
        self.continued = 0
        self.injected = []

    def continueReading(self):
        self.continued += 1

    def injectReadData(self, data):
        self.injected.append(data)


class FakeDecoderCallbacks:
    """
    The decoder callbacks of one filter alone (a subset of IStreamDecoderFilterCallbacks): records route-cache
    clears, continues and local replies (status, body, cause).
    """

    def __init__(self, streamInfo, request, clock):
        self.streamInfo = streamInfo
        self.request = request
        self.clock = clock
        self.routeCleared = 0
        self.continued = 0
        self.localReplies = []

    def clearRouteCache(self):
        self.routeCleared += 1

    def continueDecoding(self):
        self.continued += 1

    def sendLocalReply(self, status, body=b"", headers=(), cause=None, flag=None):
        self.localReplies.append((status, body, cause))


@implementer(IDownstreamStream)
class RecordingDownstream:
    """
    The listener's side of a stream (IDownstreamStream) for chain and router tests: ``written`` holds
    ("headers", status, endStream), ("data", bytes, endStream) and ("trailers", pairs) in order.
    """

    def __init__(self):
        self.written = []
        self.paused = 0
        self.resumed = 0
        self.completed = []
        self.resets = []

    def writeHeaders(self, response, endStream):
        self.written.append(("headers", response.status, endStream))
        self.lastResponse = response

    def writeData(self, data, endStream):
        self.written.append(("data", data, endStream))

    def writeTrailers(self, trailers):
        self.written.append(("trailers", trailers.items()))

    def makeLocalReply(self, status, body=b"", headers=(), cause=None):
        h = HeaderMap(list(headers))
        if cause:
            h.add(b"x-txmesh-error", cause.encode() if isinstance(cause, str) else cause)
        return ResponseHead(status, h, contentLength=len(body)), body

    def reset(self, reason):
        self.resets.append(reason)

    def pauseReading(self):
        self.paused += 1

    def resumeReading(self):
        self.resumed += 1

    def streamComplete(self, stream):
        self.completed.append(stream)


# -- upstream doubles for pool and router tests ----------------------------------------------------------------

class FakeClientProtocol(Protocol):
    """Stands in for an upstream client protocol: reports its loss to the pool (``onConnectionLost``)."""

    onConnectionLost = None

    def connectionLost(self, reason=Failure(ConnectionDone())):
        if self.onConnectionLost is not None:
            self.onConnectionLost(self)


class FakeConnector:
    """
    A pool's ``connect(host)``: records each attempt (``attempts``, Deferreds in order); the test completes one with
    ``succeed(i)`` (a new ``makeProtocol()`` connected to ``makeTransport(proto)``) or fails it.  ``cancelled``
    counts the attempts the pool withdrew.
    """

    def __init__(self, makeProtocol=FakeClientProtocol, makeTransport=lambda proto: StringTransport()):
        self.attempts = []
        self.cancelled = 0
        self._makeProtocol = makeProtocol
        self._newTransport = makeTransport

    def __call__(self, host):
        d = defer.Deferred(self._cancelled)
        self.attempts.append(d)
        return d

    def _cancelled(self, d):
        self.cancelled += 1

    def succeed(self, i=-1):
        proto = self._makeProtocol()
        proto.makeConnection(self._newTransport(proto))
        self.attempts[i].callback(proto)
        return proto


@implementer(IUpstreamStream)
class RecordingUpstreamStream:
    """
    An IUpstreamStream that records what the router does with it (``calls``: ("sendRequest", head, endStream),
    ("writeBody", data, endStream), ("writeTrailers", trailers), "abandon", "pauseReading", "resumeReading").
    ``responder`` is the IUpstreamResponder given to sendRequest: the test plays the upstream through it.
    """

    def __init__(self):
        self.calls = []
        self.responder = None

    def sendRequest(self, head, endStream, responder):
        self.responder = responder
        self.calls.append(("sendRequest", head, endStream))

    def writeBody(self, data, endStream):
        self.calls.append(("writeBody", data, endStream))

    def writeTrailers(self, trailers):
        self.calls.append(("writeTrailers", trailers))

    def abandon(self):
        self.calls.append("abandon")

    def pauseReading(self):
        self.calls.append("pauseReading")

    def resumeReading(self):
        self.calls.append("resumeReading")


@implementer(IConnectionPool)
class RecordingPool:
    """
    An IConnectionPool the test answers by hand: ``idle`` streams are handed out by acquireIdle (LIFO);
    acquire() returns a Deferred kept in ``waiting`` (``cancelled`` counts the ones withdrawn).  ``released`` and
    ``discarded`` record how exchanges ended.  ``lateHandle``: a cancelled acquire fires with it instead (a pool
    whose connection was made as the request went away).  ClusterManager makes it as ``RecordingPool(clock, host,
    clusterConfig, connect, stats)``.
    """

    lateHandle = None

    def __init__(self, clock=None, host=None, clusterConfig=None, connect=None, stats=None):
        self.host = host
        self.idle = []
        self.waiting = []
        self.cancelled = 0
        self.released = []
        self.discarded = []

    def acquire(self):
        d = defer.Deferred(self._cancelled)
        self.waiting.append(d)
        return d

    def _cancelled(self, d):
        self.cancelled += 1
        if self.lateHandle is not None:
            d.callback(self.lateHandle)

    def acquireIdle(self):
        return self.idle.pop() if self.idle else None

    def release(self, stream):
        self.released.append(stream)

    def discard(self, stream):
        self.discarded.append(stream)

    def drain(self, serveQueued=False):
        return defer.succeed(None)

    def describe(self):
        return {"idle": len(self.idle), "waiting": len(self.waiting)}


# -- transports ----------------------------------------------------------------------------------------------------

class MemoryTransport(StringTransport):
    """
    A StringTransport whose close reaches its protocol as a reactor's would: loseConnection and abortConnection
    deliver ``connectionLost`` on the next turn of ``clock`` (``clock.advance(0)``).  ``aborted`` tells an abort
    from a clean close; ``lost`` says connectionLost was delivered.  Set ``protocol`` before connecting it.
    """

    protocol = None

    def __init__(self, clock, peer=None, onWrite=None):
        StringTransport.__init__(self, peerAddress=peer)
        self.clock = clock
        self.aborted = False
        self.lost = False
        self._onWrite = onWrite
        self._closeScheduled = False

    def write(self, data):
        StringTransport.write(self, data)
        if self._onWrite is not None:
            self._onWrite()

    def writeSequence(self, seq):
        self.write(b"".join(seq))

    def loseConnection(self):
        self.disconnecting = True
        self._scheduleLost(ConnectionDone)

    def abortConnection(self):
        self.aborted = True
        self.disconnecting = True
        self._scheduleLost(ConnectionAborted)

    def _scheduleLost(self, excType):
        if not self._closeScheduled and not self.lost:
            self._closeScheduled = True
            self.clock.callLater(0, self.closeFromPeer, Failure(excType()))

    def closeFromPeer(self, reason=None):
        """The connection ends (the peer closed, or our own close took effect): the protocol's connectionLost."""
        if self.lost:
            return
        self.lost = True
        self.disconnecting = True
        self.protocol.connectionLost(reason if reason is not None else Failure(ConnectionDone()))


class _LinkedTransport(MemoryTransport):
    """One end of an in-memory connection between two meshes: writes reach ``other``'s protocol next turn."""

    other = None
    _pumping = False

    def write(self, data):
        StringTransport.write(self, data)
        if not self._pumping:
            self._pumping = True
            self.clock.callLater(0, self._pump)

    def _pump(self):
        self._pumping = False
        data = self.value()
        self.clear()
        if data and not self.other.lost:
            self.other.protocol.dataReceived(data)

    def closeFromPeer(self, reason=None):
        if self.lost:
            return
        MemoryTransport.closeFromPeer(self, reason)
        self.other._scheduleLost(ConnectionDone)


# -- the downstream client -----------------------------------------------------------------------------------------

@attrs.frozen
class HTTPResponse:
    """One response as a client read it off the wire."""

    status: int
    headers: HeaderMap
    body: bytes
    trailers: object  # HeaderMap or None
    keepAlive: bool
    complete: bool  # False: the connection ended inside it

    def header(self, name):
        """The first value of header ``name`` (str or bytes, any case), or None."""
        return self.headers.get(name.lower().encode("latin-1") if isinstance(name, str) else name.lower())


def parseResponses(data, methods=(), closed=False):
    """
    The final responses in ``data`` (interim 1xx ones are skipped), read as answers to requests with ``methods``
    (then GET).  ``closed``: the connection ended after ``data``.  Bad framing ends the list.
    """
    decoder = ResponseDecoder()
    for m in methods:
        decoder.expect(m, True)
    for _ in range(data.count(b"HTTP/1.")):  # enough for every response the bytes may hold (a 101 too)
        decoder.expect(b"GET", True)
    events = []
    try:
        events += decoder.feed(data)
        if closed:
            events += decoder.eof()
    except HTTPCodecError:
        pass  # what was read before the bad bytes (or the cut) still counts
    out = []
    current = None
    for ev in events:
        t = type(ev)
        if t is ResponseStarted:
            current = [ev.head, ev.keepAlive, []]
        elif t is BodyData and current is not None:
            current[2].append(ev.data)
        elif t is MessageComplete and current is not None:
            out.append(HTTPResponse(current[0].status, current[0].headers, b"".join(current[2]), ev.trailers,
                                    current[1], True))
            current = None
    if current is not None:
        out.append(HTTPResponse(current[0].status, current[0].headers, b"".join(current[2]), None, current[1],
                                False))
    return out


class DownstreamClient:
    """
    The test's end of one downstream connection to the listener: ``send`` bytes, read what the listener wrote
    (``received``, ``responses``), see it close (``closed``, ``aborted``) or go away yourself (``disconnect``).
    ``protocol`` is the listener's server protocol, ``transport`` its MemoryTransport.
    """

    def __init__(self, mesh, protocol, transport):
        self.mesh = mesh
        self.protocol = protocol
        self.transport = transport
        self.methods = []

    def send(self, data):
        self.protocol.dataReceived(data)
        self.mesh.runTurns()

    def request(self, method=b"GET", path=b"/", host=b"app", headers=(), body=None):
        """Send one HTTP/1.1 request (Content-Length framed when ``body`` is given)."""
        lines = [b"%s %s HTTP/1.1" % (method, path), b"Host: " + host]
        lines += [b"%s: %s" % (k, v) for k, v in headers]
        if body is not None:
            lines.append(b"Content-Length: %d" % len(body))
        self.methods.append(method)
        self.send(b"\r\n".join(lines) + b"\r\n\r\n" + (body or b""))

    def received(self):
        """Every byte the listener wrote so far."""
        return self.transport.value()

    def responses(self, methods=None):
        """The responses written so far (for HEAD requests, pass the methods in order, or use ``request``)."""
        return parseResponses(self.received(), self.methods if methods is None else methods, self.closed)

    def response(self):
        """The one response written so far."""
        [r] = self.responses()
        return r

    @property
    def closed(self):
        """The listener closed (or aborted) the connection."""
        return self.transport.disconnecting

    @property
    def aborted(self):
        """The listener aborted the connection (a reset, not a clean close)."""
        return self.transport.aborted

    @property
    def readingPaused(self):
        """The listener stopped reading this connection (backpressure)."""
        return self.transport.producerState == "paused"

    def disconnect(self):
        """The client goes away."""
        self.transport.closeFromPeer(Failure(ConnectionDone()))
        self.mesh.runTurns()

    def fillWriteBuffer(self):
        """The client stops reading: the listener's transport says it is full (its producer is paused)."""
        self.transport.producer.pauseProducing()
        self.mesh.runTurns()

    def drainWriteBuffer(self):
        """The client reads again: the listener's transport says it has room (its producer is resumed)."""
        self.transport.producer.resumeProducing()
        self.mesh.runTurns()


# -- fake upstream hosts --------------------------------------------------------------------------------------------

class UpstreamRequest:
    """
    One request as a fake upstream read it: ``head`` (a RequestHead), ``body``, ``trailers``, ``complete``.  The
    test answers it with ``respond`` / ``respondRaw`` or closes its connection with ``reset``.
    """

    def __init__(self, connection, head):
        self.connection = connection
        self.head = head
        self.body = b""
        self.trailers = None
        self.complete = False
        self.answered = False

    def respond(self, status=200, headers=(), body=b"", chunked=False):
        """A whole response, Content-Length or chunked framed."""
        self.respondRaw(encodeResponse(status, headers, body, chunked))

    def respondRaw(self, data):
        """Bytes as they are (for bad framing, partial responses, interim responses)."""
        self.answered = True
        self.connection.deliver(data)

    def reset(self):
        """The upstream closes the connection (before or inside the response)."""
        self.answered = True
        self.connection.close()


def encodeResponse(status, headers=(), body=b"", chunked=False):
    """An HTTP/1.1 response's bytes."""
    lines = [b"HTTP/1.1 %d %s" % (status, _reason(status))] + [b"%s: %s" % (k, v) for k, v in headers]
    if chunked:
        lines.append(b"Transfer-Encoding: chunked")
        framed = (b"%x\r\n%s\r\n" % (len(body), body) if body else b"") + b"0\r\n\r\n"
    else:
        lines.append(b"Content-Length: %d" % len(body))
        framed = body
    return b"\r\n".join(lines) + b"\r\n\r\n" + framed


def _reason(status):
    try:
        return HTTPStatus(status).phrase.encode("ascii")
    except ValueError:
        return b"Unknown"


class FakeUpstreamConnection:
    """One connection a fake upstream accepted: the proxy's client ``protocol`` on a MemoryTransport."""

    def __init__(self, upstream, protocol, transport):
        self.upstream = upstream
        self.protocol = protocol
        self.transport = transport
        self.decoder = RequestDecoder()
        self.current = None
        self.requests = []
        self._readScheduled = False

    def written(self):
        """The proxy wrote to this connection; read it on the next turn (a real peer cannot answer sooner)."""
        if not self._readScheduled:
            self._readScheduled = True
            self.upstream.clock.callLater(0, self._read)

    def _read(self):
        self._readScheduled = False
        if self.upstream.protocol != "http1":
            return  # other protocols' bytes stay in transport.value() for the test to read
        data = self.transport.value()
        self.transport.clear()
        for ev in self.decoder.feed(data):
            t = type(ev)
            if t is RequestStarted:
                self.current = UpstreamRequest(self, ev.head)
                self.requests.append(self.current)
                self.upstream.requests.append(self.current)
            elif t is BodyData:
                self.current.body += ev.data
            elif t is MessageComplete:
                self.current.trailers = ev.trailers
                self.current.complete = True
                self.upstream.requestCompleted(self.current)

    def deliver(self, data):
        """Bytes from the upstream to the proxy."""
        self.protocol.dataReceived(data)
        self.upstream.clock.advance(0)

    def close(self):
        self.transport.closeFromPeer(Failure(ConnectionDone()))
        self.upstream.clock.advance(0)

    @property
    def closed(self):
        """The proxy closed or aborted this connection."""
        return self.transport.disconnecting


class FakeHTTPUpstream:
    """
    One upstream host as the test scripts it.  Connects are accepted (default), refused (``refuseConnections``)
    or held until the test answers them (``holdConnections``, then ``acceptHeldConnect`` / ``refuseHeldConnect``,
    or the pool's connect timeout).  Requests are recorded in ``requests`` and stay unanswered (a slow or silent
    upstream) unless ``respondWith`` set an automatic answer, optionally after a delay.

    Each accepted connection (``connections``) runs the proxy's real client protocol for the cluster's
    ``protocol``; for clusters other than http1 the requests are not parsed: the proxy's bytes stay in the
    connection's ``transport.value()`` and the test answers with ``connection.deliver(bytes)``.
    """

    def __init__(self, clock, address, protocol="http1"):
        self.clock = clock
        self.address = address
        self.protocol = protocol
        self.connections = []
        self.requests = []
        self.heldConnects = []
        self._mode = "accept"
        self._auto = None

    # connects
    def refuseConnections(self):
        self._mode = "refuse"

    def holdConnections(self):
        self._mode = "hold"

    def acceptConnections(self):
        self._mode = "accept"

    def connect(self):
        """The pool's connect(host): a Deferred firing with a connected client protocol."""
        if self._mode == "refuse":
            return defer.fail(ConnectionRefusedError("refused by the test"))
        if self._mode == "hold":
            d = defer.Deferred()
            self.heldConnects.append(d)
            return d
        return defer.succeed(self._accept())

    def acceptHeldConnect(self):
        d = self.heldConnects.pop(0)
        if not d.called:
            d.callback(self._accept())
        self.clock.advance(0)

    def refuseHeldConnect(self):
        d = self.heldConnects.pop(0)
        if not d.called:
            d.errback(ConnectionRefusedError("refused by the test"))
        self.clock.advance(0)

    def _accept(self):
        proto = findProtocols()[self.protocol].buildClientProtocol()
        transport = MemoryTransport(self.clock, IPv4Address("TCP", "127.0.0.1", 40000 + len(self.connections)))
        conn = FakeUpstreamConnection(self, proto, transport)
        transport._onWrite = conn.written
        transport.protocol = proto
        proto.makeConnection(transport)
        self.connections.append(conn)
        return proto

    # answers
    def respondWith(self, status=200, headers=(), body=b"", after=0):
        """Answer every complete request from now on, ``after`` seconds after it arrived."""
        self._auto = (status, tuple(headers), body, after)
        for r in self.requests:
            if r.complete and not r.answered:
                self.requestCompleted(r)

    def requestCompleted(self, request):
        if self._auto is None:
            return
        status, headers, body, after = self._auto
        request.answered = True

        def answer():
            if not request.connection.transport.lost:
                request.connection.deliver(encodeResponse(status, headers, body))
        self.clock.callLater(after, answer)

    @property
    def unanswered(self):
        return [r for r in self.requests if not r.answered]


# -- the in-memory mesh --------------------------------------------------------------------------------------------

# listener protocol -> factory class, made as Factory(listenerConfig, template, runtime) as the service does
class _RecordingTemplate(FilterChainTemplate):
    """A FilterChainTemplate that keeps each stream it makes in ``streams`` (for access-log lines and flags)."""

    streams = ()

    def createStream(self, downstream, streamInfo):
        stream = FilterChainTemplate.createStream(self, downstream, streamInfo)
        self.streams.append(stream)
        return stream


class _PoolOverride:
    """A protocol descriptor whose clusters get ``poolClass`` pools instead of the protocol's own."""

    def __init__(self, descriptor, poolClass):
        self._descriptor = descriptor
        self._poolClass = poolClass

    def buildPool(self, clock, host, clusterConfig, connect, stats, resources=None):
        return self._poolClass(clock, host, clusterConfig, connect, stats)  # test pools keep no cluster limits

    def buildClientProtocol(self):
        return self._descriptor.buildClientProtocol()


class InMemoryMesh:
    """
    One listener of a mesh.yaml, in memory (see the module docstring).

    @param text: mesh.yaml text, loaded with C{txmesh.config.loads}.
    @param listener: the name of the listener to build (default: the first).
    @param poolClasses: {cluster protocol name: pool class} (e.g. L{RecordingPool}) used instead of the protocol's
        own pool; default the real pools, connected to L{FakeHTTPUpstream} hosts.
    @param missingClusters: names of configured clusters the running set lacks (as after a reload that dropped
        them while a route still names them).
    @param connect: ``connect(host, clusterConfig) -> Deferred`` firing with a connected client protocol, for
        upstreams of your own; default: the host's L{FakeHTTPUpstream}.  Another mesh's L{connector} makes a
        sidecar pair: this mesh's upstream connects reach that mesh's listener.
    @param clock: the MemoryReactorClock to run on (share the peer's in a pair); default a new one.
    @param spanProcessor: with a ``tracing`` block, the OpenTelemetry SpanProcessor the spans go to; default a
        SimpleSpanProcessor over ``spanExporter``, an InMemorySpanExporter (``get_finished_spans()``).
    @ivar clock: the MemoryReactorClock every timer runs on (starts at 0).
    @ivar stats: the StatsStore; ``value(name, **labels)`` sums a series.
    @ivar streams: every ActiveStream the listener made, in order (``streamInfo``, ``request``).
    """

    def __init__(self, text, listener=None, poolClasses=None, missingClusters=(), connect=None, seed=0, clock=None,
                 readRSS=None, spanProcessor=None):
        self.config = _config.loads(text)
        self.clock = clock if clock is not None else MemoryReactorClock()
        self.listening = True
        self.stats = StatsStore()
        self.streams = []
        self._upstreams = {}
        self._connect = connect
        self._ports = 50000
        rng = _random.Random(seed)
        clusterConfigs = [c for c in self.config.clusters if c.name not in missingClusters]
        if poolClasses:
            clusterConfigs = [dataclasses.replace(c, descriptor=_PoolOverride(c.descriptor, poolClasses[c.protocol]))
                              if c.protocol in poolClasses else c for c in clusterConfigs]
        self.clusters = ClusterManager(self.clock, clusterConfigs, self._connectFactory, self.stats, rng)
        self.overload = Overload(self.config.overload, self.clock, self.stats, readRSS)
        self.runtime = Runtime(self.clock, self.clusters, self.stats, rng, self.config, reactor=self.clock,
                               overload=self.overload)
        lcs = [lc for lc in self.config.listeners if listener is None or lc.name == listener]
        lc = self.listenerConfig = lcs[0]
        filters = lc.filters
        self.tracer = self.spanExporter = None
        if self.config.tracing is not None:  # spans go to ``spanExporter`` (or ``spanProcessor``), at once
            from opentelemetry.sdk.trace.export import SimpleSpanProcessor
            from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
            from txmesh.filters.tracing import withTracing
            from txmesh.tracer import Tracer
            if spanProcessor is None:
                self.spanExporter = InMemorySpanExporter()
                spanProcessor = SimpleSpanProcessor(self.spanExporter)
            self.tracer = Tracer(self.config.tracing, self.clock, self.config.node, processor=spanProcessor,
                                 stats=self.stats)
            self.tracer.start()
            filters = withTracing(lc, self.tracer, self.stats)
        self.template = _RecordingTemplate(filters, self.runtime, lc.routeConfig, lc.limits.bufferLimit,
                                           lc.limits.maxRequestBody, lc.limits.streamIdleTimeout,
                                           lc.respectExpectedTimeout, pathNormalizerFor(lc, self.stats),
                                           requestStats=self.runtime.requestStats)
        self.template.streams = self.streams
        self.factory = lc.descriptor.buildListenerFactory(lc, self.template, self.runtime)
        self.overload.watch(self.factory)

    def _connectFactory(self, clusterConfig):
        def connect(host):
            if self._connect is not None:
                return self._connect(host, clusterConfig)
            return self.upstream(host.address, clusterConfig.protocol).connect()
        return connect

    def upstream(self, name, protocol=None):
        """
        The L{FakeHTTPUpstream} of a host: ``name`` is its 'ip:port' or the name of a cluster with one host.
        Script it before the request that uses it.
        """
        cluster = self.clusters.get(name)
        if cluster is not None:
            [host] = cluster.hosts
            name, protocol = host.address, cluster.config.protocol
        u = self._upstreams.get(name)
        if u is None:
            u = self._upstreams[name] = FakeHTTPUpstream(self.clock, name, protocol or "http1")
        return u

    def connect(self, peer=("10.1.2.3", None)):
        """
        A new downstream connection to the listener (a L{DownstreamClient}).  A connection the listener refuses
        (``buildProtocol`` gave None: overload bounds) is closed at once, as Twisted's port does: its client's
        ``protocol`` is None and ``closed`` is true.
        """
        self._ports += 1
        transport = MemoryTransport(self.clock, IPv4Address("TCP", peer[0], peer[1] or self._ports))
        protocol = transport.protocol = self.factory.buildProtocol(transport.getPeer())
        if protocol is None:
            transport.disconnecting = transport.lost = True
            return DownstreamClient(self, None, transport)
        protocol.makeConnection(transport)
        self.runTurns()
        return DownstreamClient(self, protocol, transport)

    def connector(self, peer="10.0.0.9"):
        """
        A ``connect`` for another InMemoryMesh whose upstream connects reach this mesh's listener (a sidecar
        pair: the other is the caller's outbound, this the callee's inbound), from the address ``peer``.  Connects
        are refused while ``listening`` is False (this sidecar is down); bytes cross on the next reactor turn, and
        so do closes.
        """
        def connect(host, clusterConfig):
            if not self.listening:
                return defer.fail(ConnectionRefusedError("%s is down" % (host.address,)))
            client = clusterConfig.descriptor.buildClientProtocol()
            self._ports += 1
            there = _LinkedTransport(self.clock, IPv4Address("TCP", host.hostname, host.port))
            here = _LinkedTransport(self.clock, IPv4Address("TCP", peer, self._ports))
            there.protocol, here.protocol = client, self.factory.buildProtocol(here.getPeer())
            there.other, here.other = here, there
            here.protocol.makeConnection(here)
            client.makeConnection(there)
            return defer.succeed(client)
        return connect

    def openStream(self, downstream=None):
        """
        A stream of the listener's filter chain (an ActiveStream) whose downstream is ``downstream`` (default a new
        L{RecordingDownstream}), for tests that drive filters and the router without the codec:
        ``stream.decodeHeaders(RequestHead(...), endStream)``.  @return: (stream, downstream).
        """
        downstream = downstream if downstream is not None else RecordingDownstream()
        info = StreamInfo(self.clock.seconds(), "http/1.1", self.listenerConfig.name, "10.1.2.3:5555")
        stream = self.template.createStream(downstream, info)
        return stream, downstream

    def runTurns(self):
        """Run what is due now (closes and upstream reads that a real reactor does on its next turns)."""
        self.clock.advance(0)

    def advance(self, seconds):
        """Let ``seconds`` pass, then run what became due."""
        self.clock.advance(seconds)
        self.clock.advance(0)

    def drain(self):
        """The listener's graceful drain (SIGTERM); returns its Deferred."""
        d = self.factory.drain()
        self.runTurns()
        return d

    def value(self, name, **labels):
        """The sum of the series ``name`` whose labels include ``labels``."""
        return self.stats.total(name, **labels)

    def accessLog(self):
        """The access_log text line of every finished stream, in order."""
        return [formatText(s.streamInfo, s.request, self.clock) for s in self.streams if s.complete]

    def responseFlags(self):
        """The response flags of every stream, in order (as the access log shows them)."""
        return [set(s.streamInfo.responseFlags) for s in self.streams]


@implementer(IRegistrar)
class RecordingRegistrar:
    """
    An IRegistrar for tests of registration (txmesh.discovery.registration): it records each call in ``calls``
    ("register"/"deregister") and answers at once, or, with ``manual=True``, with a Deferred the test fires from
    ``pending`` (or fails: ``pending.pop(0).errback(...)``).
    """

    def __init__(self, name="fake", manual=False):
        self.name = name
        self.manual = manual
        self.calls = []
        self.pending = []
        self.published = False

    def _call(self, what, published):
        self.calls.append(what)
        self.published = published
        if not self.manual:
            return defer.succeed(None)
        d = defer.Deferred()
        self.pending.append(d)
        return d

    def register(self):
        return self._call("register", True)

    def deregister(self):
        return self._call("deregister", False)

    def describe(self):
        return {"type": "fake", "registry": self.name, "published": self.published}
