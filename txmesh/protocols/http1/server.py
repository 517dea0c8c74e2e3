"""
The HTTP/1.1 listener: one server protocol per downstream connection, and its factory.

It only dispatches: bytes go to the sans-IO codec in L{txmesh.protocols.http1.codec}; its events go to the stream
filter chain.  Pipelined requests are served one at a time, so responses leave in request order.
"""

from collections import deque

from twisted.internet.protocol import Protocol
from twisted.logger import Logger

from txmesh.protocols.listener import DrainingFactory, ListenerStats
from txmesh.protocols.transport import WriteWatcher, Writer, callInScope
from txmesh.protocols.http1.codec import (
    LAST_CHUNK,
    BodyData,
    HTTPCodecError,
    MessageComplete,
    RequestDecoder,
    RequestStarted,
    encodeChunk,
    encodeResponseHead,
    encodeTrailers,
)
from txmesh.stream import HeaderMap, ResponseHead, StreamInfo, newRequestId

_NO_BODY_STATUS = frozenset({204, 304})

_MAX_QUEUED_EVENTS = 64
_HEADERS = "headers"
_IDLE = "idle"


class HTTP1ServerProtocol(Protocol):
    """One downstream HTTP/1.1 connection.  It is also the ``downstream`` side of its active stream."""

    log = Logger()

    def __init__(self, factory):
        self.factory = factory
        self.decoder = None
        self.stream = None
        self._queue = deque()
        self._requestComplete = False
        self._keepAlive = True
        self._head = None  # the active request's RequestHead
        self._method = b""
        self._chunked = False
        self._noBody = False
        self._closing = False
        self._readPaused = False
        # one lazily re-armed timer per connection serves both the request-headers and the idle timeouts: the hot
        # path only moves ``_deadline`` (no DelayedCall created or cancelled per request)
        self._timer = None
        self._deadline = None
        self._deadlineKind = None
        self._peer = ""

    # -- connection events ---------------------------------------------------------------------------------

    def connectionMade(self):
        f = self.factory
        limits = f.limits
        self.decoder = RequestDecoder(limits.maxRequestLine, limits.maxHeaderBytes, limits.maxHeaders,
                                      f.scheme)
        f.stats.cx_total.value += 1
        f.stats.cx_active.value += 1
        f.connections.add(self)
        peer = self.transport.getPeer()
        self._peer = "%s:%s" % (getattr(peer, "host", peer), getattr(peer, "port", ""))
        self._peerHost = getattr(peer, "host", "").encode("ascii", "replace")
        self._out = Writer(self.transport, f.writeScope)
        self.transport.registerProducer(WriteWatcher(self._downstreamFull, self._downstreamDrained), True)
        self._armHeaderTimer()

    def dataReceived(self, data):
        if not self._closing:
            callInScope(self._out.scope, self._received, data)

    def _received(self, data):
        if self._deadlineKind is _IDLE:
            self._armHeaderTimer()
        try:
            events = self.decoder.feed(data)
        except HTTPCodecError as e:
            self._dispatch(e)
            return
        n = len(events)
        i = 0
        while i < n:
            ev = events[i]
            i += 1
            if (type(ev) is RequestStarted and i < n and type(events[i]) is MessageComplete
                    and events[i].trailers is None and not self._queue and self.stream is None):
                # a request without a body: one event for the chain
                i += 1
                self._startRequest(ev, True)
                continue
            self._dispatch(ev)
            if self._closing:
                return

    def connectionLost(self, reason):
        f = self.factory
        f.stats.cx_active.value -= 1
        f.connections.discard(self)
        self._cancelTimers()
        stream = self.stream
        if stream is not None and not stream.complete:
            self.stream = None
            f.stats.rq_active.value -= 1
            stream.resetStream("downstream_disconnect")
        self._queue.clear()
        f.connectionEnded(self)

    # -- dispatch ------------------------------------------------------------------------------------------------

    def _dispatch(self, ev):
        if self._queue or (self.stream is not None and self._requestComplete):
            # belongs to a pipelined request behind the active one
            self._queue.append(ev)
            if len(self._queue) > _MAX_QUEUED_EVENTS and not self._readPaused:
                self._readPaused = True
                self.transport.pauseProducing()
            return
        self._handle(ev)

    def _drainQueue(self):
        """Serve queued pipelined events until one request is in flight again."""
        queue = self._queue
        while queue and not self._closing and (self.stream is None or not self._requestComplete):
            ev = queue.popleft()
            if (type(ev) is RequestStarted and queue and type(queue[0]) is MessageComplete
                    and queue[0].trailers is None):
                queue.popleft()
                self._startRequest(ev, True)
            else:
                self._handle(ev)

    def _handle(self, ev):
        t = type(ev)
        if t is BodyData:
            if self.stream is not None:
                self.stream.decodeData(ev.data, False)
        elif t is RequestStarted:
            self._startRequest(ev, False)
        elif t is MessageComplete:
            self._requestComplete = True
            if self.stream is not None:
                if ev.trailers is not None:
                    self.stream.decodeTrailers(ev.trailers)
                else:
                    self.stream.decodeData(b"", True)
        elif isinstance(ev, HTTPCodecError):
            self._protocolError(ev)

    def _startRequest(self, ev, endStream):
        f = self.factory
        self._deadline = self._deadlineKind = None
        head = ev.head
        self._head = head
        self._method = head.method
        self._keepAlive = ev.keepAlive
        self._requestComplete = endStream
        f.stats.rq_total.value += 1
        f.stats.rq_active.value += 1
        headers = head.headers
        if ev.expectContinue:
            headers.remove(b"expect")
        if f.useRemoteAddress:
            xff = headers.get(b"x-forwarded-for")
            if xff is None:
                headers.add(b"x-forwarded-for", self._peerHost)
            else:
                headers.set(b"x-forwarded-for", xff + b", " + self._peerHost)
            headers.set(b"x-forwarded-proto", f.scheme)
        rid = headers.get(b"x-request-id")
        if rid is None:
            rid = newRequestId()
            headers.add(b"x-request-id", rid)
        info = StreamInfo(f.clock.seconds(), "http/1.1" if head.version == (1, 1) else "http/1.0",
                          f.listenerName, self._peer)
        info.requestId = rid
        self.stream = stream = f.template.createStream(self, info)
        stream.decodeHeaders(head, endStream)
        if ev.expectContinue and not stream.responseStarted and not stream.complete:
            self._out.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def _protocolError(self, exc):
        f = self.factory
        f.stats.cx_protocol_error.value += 1
        stream = self.stream
        if stream is not None:
            # bad bytes inside the active request's body: that request is over too (its upstream exchange is
            # cancelled), and only one response may follow it on the wire
            self.stream = None
            f.stats.rq_active.value -= 1
            started = stream.responseStarted
            stream.resetStream("downstream_protocol_error")
            if started:
                self.reset("downstream_protocol_error")
                return
        status = exc.status or 400
        f.stats.error("bad_request" if status == 400 else "http_%d" % status)
        f.stats.rq_class[status // 100].value += 1
        body = (exc.reason if isinstance(exc.reason, str) else "bad request").encode("ascii", "replace") + b"\n"
        head = ResponseHead(status, HeaderMap([(b"content-type", b"text/plain"),
                                               (b"x-txmesh-error", b"downstream_protocol_error")]),
                            contentLength=len(body))
        self._out.write(encodeResponseHead(head, False, False) + body)
        self._closeAfterWrite()

    # -- the downstream side of the active stream (called by ActiveStream) --------------------------------------

    def writeHeaders(self, response, endStream):
        status = response.status
        f = self.factory
        f.stats.rq_class[status // 100 if status < 600 else 5].value += 1
        keepAlive = self._keepAlive and not self._closing and not f.draining
        noBody = self._method == b"HEAD" or status in _NO_BODY_STATUS or status < 200
        chunked = False
        if not noBody:
            if response.contentLength is None:
                if endStream:
                    response.contentLength = 0
                elif self._head.version >= (1, 1):
                    chunked = True
                else:
                    keepAlive = False  # HTTP/1.0 peer: the body ends at close
        if status == 204:
            response.contentLength = None  # a 204 has no Content-Length; HEAD and 304 keep the upstream's
        self._chunked = chunked
        self._noBody = noBody
        if not keepAlive:
            self._keepAlive = False
        self._out.write(encodeResponseHead(response, chunked, keepAlive))

    def writeData(self, data, endStream):
        if self._noBody:
            return
        if self._chunked:
            if data:
                self._out.write(encodeChunk(data) + LAST_CHUNK if endStream else encodeChunk(data))
            elif endStream:
                self._out.write(LAST_CHUNK)
        elif data:
            self._out.write(data)

    def writeTrailers(self, trailers):
        if self._chunked and not self._noBody:
            self._out.write(encodeTrailers(trailers))

    def makeLocalReply(self, status, body=b"", headers=(), cause=None):
        fields = [(b"content-type", b"text/plain")]
        if cause:
            fields.append((b"x-txmesh-error", cause.encode("ascii") if isinstance(cause, str) else cause))
            self.factory.stats.error(cause if isinstance(cause, str) else cause.decode("ascii"))
        fields.extend(headers)
        if isinstance(body, str):
            body = body.encode("utf-8")
        if not self._requestComplete:
            # the rest of the request body will not be read: the connection cannot carry another request
            self._keepAlive = False
        return ResponseHead(status, HeaderMap(fields), contentLength=len(body)), body

    def reset(self, reason):
        self._closing = True
        self._out.discard()
        self.transport.abortConnection()

    def pauseReading(self):
        if not self._readPaused:
            self._readPaused = True
            self.transport.pauseProducing()

    def resumeReading(self):
        if self._readPaused and len(self._queue) <= _MAX_QUEUED_EVENTS:
            self._readPaused = False
            self.transport.resumeProducing()

    def streamComplete(self, stream):
        if stream is not self.stream:
            return
        self.stream = None
        self.factory.stats.rq_active.value -= 1
        if not stream.responseStarted:
            # reset before any response: nothing more can be said on this connection
            self._closeAfterWrite()
            return
        if not self._keepAlive or not self._requestComplete or self.factory.draining:
            self._closeAfterWrite()
            return
        # serve the next pipelined request, if any
        queue = self._queue
        self._drainQueue()
        if self._readPaused and len(queue) <= _MAX_QUEUED_EVENTS and self.stream is None:
            self.resumeReading()
        if self.stream is None and not self._closing:
            self._armIdleTimer()

    # -- backpressure ------------------------------------------------------------------------------------------

    def _downstreamFull(self):
        if self.stream is not None:
            self.stream.downstreamWritePaused()

    def _downstreamDrained(self):
        if self.stream is not None:
            self.stream.downstreamWriteResumed()

    # -- timers and closing --------------------------------------------------------------------------------------

    def _armHeaderTimer(self):
        self._setDeadline(_HEADERS, self.factory.limits.requestHeadersTimeout)

    def _armIdleTimer(self):
        self._setDeadline(_IDLE, self.factory.limits.idleTimeout)

    def _setDeadline(self, kind, timeout):
        if not timeout:
            self._deadline = self._deadlineKind = None
            return
        f = self.factory
        self._deadline = f.clock.seconds() + timeout
        self._deadlineKind = kind
        if self._timer is None:
            self._timer = f.clock.callLater(min(timeout, f.timerPeriod), self._timerFired)

    def _timerFired(self):
        """
        The connection's timer: act if the deadline passed, else re-arm.  It never sleeps longer than the shortest
        configured timeout, so a deadline set later (always at least that far ahead) is never overslept.
        """
        self._timer = None
        deadline = self._deadline
        if deadline is None or self._closing:
            return
        clock = self.factory.clock
        remaining = deadline - clock.seconds()
        if remaining > 0:
            self._timer = clock.callLater(min(remaining, self.factory.timerPeriod), self._timerFired)
            return
        kind = self._deadlineKind
        self._deadline = self._deadlineKind = None
        if self.stream is not None:
            return
        if kind is _HEADERS:
            self.factory.stats.rq_timeout.value += 1
            self._protocolError(HTTPCodecError("request headers timeout", 408))
        else:
            self.factory.stats.cx_idle_timeout.value += 1
            self._closeAfterWrite()

    def _cancelTimers(self):
        self._deadline = self._deadlineKind = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _closeAfterWrite(self):
        self._closing = True
        self._cancelTimers()
        self._queue.clear()
        self.transport.unregisterProducer()
        if self._readPaused:
            self.transport.resumeProducing()
        self._out.flush()
        self.transport.loseConnection()

    def drain(self):
        """Graceful drain: close now if idle, else after the current response."""
        if self.stream is None:
            self._closeAfterWrite()


class HTTP1ListenerFactory(DrainingFactory):
    """Makes the server protocol of one HTTP listener; knows its connections for a graceful drain."""

    protocol = HTTP1ServerProtocol

    def __init__(self, listenerConfig, template, runtime, stats=None, scheme=b"http"):
        DrainingFactory.__init__(self)
        self.listenerName = listenerConfig.name
        self.limits = listenerConfig.limits
        self.timerPeriod = min(t for t in (self.limits.requestHeadersTimeout, self.limits.idleTimeout, 3600.0) if t)
        self.useRemoteAddress = listenerConfig.useRemoteAddress
        self.writeScope = getattr(runtime, "writeScope", None)
        self.template = template
        self.runtime = runtime
        self.clock = runtime.clock
        self.scheme = scheme
        self.stats = stats if stats is not None else ListenerStats(runtime.stats, listenerConfig.name)

    def buildProtocol(self, addr):
        return HTTP1ServerProtocol(self)
