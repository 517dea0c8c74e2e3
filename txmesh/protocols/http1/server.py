"""
The HTTP/1.1 listener: one server protocol per downstream connection, and its factory.

It only dispatches: bytes go to the sans-IO codec in L{txmesh.protocols.http1.codec}; its events go to the stream
filter chain.  Pipelined requests are served one at a time, so responses leave in request order.

Tunnels: when the router relays a 101 to a request that offered an upgrade (the route allowed it), or a 2xx to a
CONNECT, the head is written with its ``Upgrade``/``Connection: upgrade`` fields (CONNECT's 200 with no framing
field), the codec turns to opaque bytes (``startTunnel``) and the connection carries the stream's body both ways
until the stream ends: the client's bytes are request body, the upstream's response body.  The client's FIN
(half-close, on plain TCP) ends the request body; the end of the response closes the connection.
"""

from collections import deque

from twisted.internet.interfaces import IHalfCloseableProtocol
from zope.interface import alsoProvides, implementer

from twisted.logger import Logger

from txmesh.interfaces import IDownstreamStream
from txmesh.protocols.listener import Deadline, HTTPListenerStats, ListenerFactory, ListenerProtocol
from txmesh.protocols.transport import callInScope
from txmesh.protocols.http1.codec import (
    BodyData,
    HTTPCodecError,
    MessageComplete,
    RequestDecoder,
    RequestStarted,
    TunnelData,
    encodeBody,
    encodeResponseHead,
    encodeTrailers,
)
from txmesh.stream import HeaderMap, ResponseHead

_NO_BODY_STATUS = frozenset({204, 304})

_MAX_QUEUED_EVENTS = 64
_HEADERS = "headers"
_IDLE = "idle"
# the first request's head, on a connection that has sent nothing yet (same timeout as _HEADERS)
_FIRST = "first"
# a drain's grace for a connection that had sent nothing when the drain began (drain())
_GRACE = "grace"


@implementer(IDownstreamStream)
class HTTP1ServerProtocol(ListenerProtocol):
    """One downstream HTTP/1.1 connection.  It is also the ``downstream`` side of its active stream."""

    log = Logger()
    watchWrites = True

    def __init__(self, factory):
        ListenerProtocol.__init__(self, factory)
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
        self._tunnel = False  # the connection is a tunnel (after a 101, or a 2xx to CONNECT)
        # one lazily re-armed timer per connection serves both the request-headers and the idle timeouts: the hot
        # path only moves the deadline (no DelayedCall created or cancelled per request)
        self._deadline = Deadline(factory.clock, factory.timerPeriod, self._timedOut)

    # -- connection events ---------------------------------------------------------------------------------

    def connectionMade(self):
        ListenerProtocol.connectionMade(self)
        f = self.factory
        limits = f.limits
        # holdUpgrades: what follows an upgrade request waits for the answer (a 101 makes it the tunnel's)
        self.decoder = RequestDecoder(limits.maxRequestLine, limits.maxHeaderBytes, limits.maxHeaders,
                                      f.scheme, holdUpgrades=True)
        self._deadline.set(limits.requestHeadersTimeout, _FIRST)

    def dataReceived(self, data):
        if not self._closing:
            callInScope(self.out.scope, self._received, data)

    def _received(self, data):
        if self._tunnel:
            for ev in self.decoder.feed(data):
                self._tunnelData(ev)
            return
        deadline = self._deadline
        kind = deadline.kind
        idle = kind is _IDLE or kind is _GRACE
        if kind is _FIRST:
            deadline.kind = _HEADERS  # the first bytes: a head is coming (the timer still counts from the accept)
        head = self._head
        try:
            events = self.decoder.feed(data)
        except HTTPCodecError as e:
            if idle:
                self._armHeaderTimer()
            self._dispatch(e)
            return
        self._handleEvents(events)
        if idle and self._head is head and deadline.kind is kind and data:
            # these bytes started no request: a head is coming, the header timer counts from its first bytes.
            # Armed after the feed, not before: a request that arrives whole (the usual case) would clear it at once
            self._armHeaderTimer()

    def _handleEvents(self, events):
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

    def readConnectionLost(self):
        """The client half-closed a tunnel (IHalfCloseableProtocol, provided once the tunnel opens)."""
        stream = self.stream
        if stream is not None and not stream.complete:
            stream.decodeData(b"", True)

    def writeConnectionLost(self):
        pass

    def connectionLost(self, reason):
        self._deadline.release()
        if self._tunnel:
            self._tunnel = False
            self.factory.stats.cx_upgrades_active.value -= 1
        stream = self.stream
        if stream is not None and not stream.complete:
            self.stream = None
            self.factory.stats.rq_active.value -= 1
            stream.resetStream("downstream_disconnect")
        self._queue.clear()
        self.decoder.dropParser()
        ListenerProtocol.connectionLost(self, reason)

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
        self._deadline.clear()
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
        info = self.prepareRequest(headers, f.scheme, "http/1.1" if head.version == (1, 1) else "http/1.0")
        self.stream = stream = f.template.createStream(self, info)
        if self.writeBlocked:
            # a pipelined request starting while the client is still not reading: its upstream must start paused
            stream.downstreamWritePaused()
        stream.decodeHeaders(head, endStream)
        if ev.expectContinue and not stream.responseStarted and not stream.complete:
            self.out.write(b"HTTP/1.1 100 Continue\r\n\r\n")

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
                                               (b"x-txmesh-error", b"downstream_protocol_error"), f.nodeField]),
                            contentLength=len(body))
        self.out.write(encodeResponseHead(head, False, False) + body)
        self._closeAfterWrite()

    # -- the downstream side of the active stream (called by ActiveStream) --------------------------------------

    def writeHeaders(self, response, endStream):
        status = response.status
        f = self.factory
        f.stats.rq_class[status // 100 if status < 600 else 5].value += 1
        if not endStream and (status == 101 and self._head.upgrade is not None
                              or self._method == b"CONNECT" and 200 <= status < 300):
            self._startTunnel(response)
            return
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
        self.out.write(encodeResponseHead(response, chunked, keepAlive))

    def writeData(self, data, endStream):
        if self._tunnel:
            if data:
                self.out.write(data)
            return  # the end of the tunnel's upstream half: the stream completes, streamComplete closes
        if self._noBody:
            return
        if not self._chunked:
            if data:
                self.out.write(data)
        else:
            out = encodeBody(data, True, endStream)
            if out:
                self.out.write(out)

    def writeTrailers(self, trailers):
        if self._chunked and not self._noBody:
            self.out.write(encodeTrailers(trailers))

    def makeLocalReply(self, status, body=b"", headers=(), cause=None):
        fields = [(b"content-type", b"text/plain")]
        if cause:
            fields.append((b"x-txmesh-error", cause.encode("ascii") if isinstance(cause, str) else cause))
            self.factory.stats.error(cause if isinstance(cause, str) else cause.decode("ascii"))
        fields.append(self.factory.nodeField)  # which sidecar answered: this hop, not the app or another sidecar
        fields.extend(headers)
        if isinstance(body, str):
            body = body.encode("utf-8")
        if not self._requestComplete:
            # the rest of the request body will not be read: the connection cannot carry another request
            self._keepAlive = False
        return ResponseHead(status, HeaderMap(fields), contentLength=len(body)), body

    def reset(self, reason):
        self._closing = True
        self.out.discard()
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
        if self._tunnel:
            self._closeAfterWrite()
            return
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
        if self.stream is None and not queue and not self._closing and self.decoder.holding:
            # an upgrade that was not taken: what the client sent after it is HTTP again
            try:
                events = self.decoder.release()
            except HTTPCodecError as e:
                self._dispatch(e)
                return
            self._handleEvents(events)
        if self._readPaused and len(queue) <= _MAX_QUEUED_EVENTS and self.stream is None:
            self.resumeReading()
        if self.stream is None and not self._closing:
            self._deadline.set(self.factory.limits.idleTimeout, _IDLE)  # idle until the next request

    # -- tunnels -------------------------------------------------------------------------------------------------

    def _startTunnel(self, response):
        """Write the 101 (or CONNECT's 200) and make the connection a tunnel for the active stream."""
        f = self.factory
        if self._method == b"CONNECT":
            head = b"HTTP/1.1 %d %s\r\n\r\n" % (response.status, response.reason or b"Connection Established")
            if b"\r" in head[:-4] or b"\n" in head[:-4]:
                head = b"HTTP/1.1 200 Connection Established\r\n\r\n"
            self.out.write(head)
        else:
            upgrade = response.headers.get(b"upgrade") or self._head.upgrade
            response.contentLength = None
            self.out.write(encodeResponseHead(response, False, True, upgrade=upgrade))
        self._tunnel = True
        self._keepAlive = False
        self._noBody = False
        self._chunked = False
        self._deadline.cancel()
        f.stats.cx_upgrades_total.value += 1
        f.stats.cx_upgrades_active.value += 1
        alsoProvides(self, IHalfCloseableProtocol)  # the client's FIN ends the request half, not the connection
        for ev in self.decoder.startTunnel():
            self._tunnelData(ev)

    def _tunnelData(self, ev):
        stream = self.stream
        if type(ev) is TunnelData and stream is not None and not stream.complete:
            stream.decodeData(ev.data, False)

    # -- backpressure ------------------------------------------------------------------------------------------

    def writeBufferFull(self):
        if self.stream is not None:
            self.stream.downstreamWritePaused()

    def writeBufferDrained(self):
        if self.stream is not None:
            self.stream.downstreamWriteResumed()

    # -- timers and closing --------------------------------------------------------------------------------------

    def _armHeaderTimer(self):
        self._deadline.set(self.factory.limits.requestHeadersTimeout, _HEADERS)

    def _timedOut(self, kind):
        """The request head came too slowly (408), or the connection was idle too long."""
        if self._closing or self.stream is not None:
            return
        if kind is _GRACE:
            self._closeAfterWrite()  # drained: the client sent nothing within the grace
        elif kind is _HEADERS or kind is _FIRST:
            self.factory.stats.rq_timeout.value += 1
            self._protocolError(HTTPCodecError("request headers timeout", 408))
        else:
            self.factory.stats.cx_idle_timeout.value += 1
            self._closeAfterWrite()

    def _closeAfterWrite(self):
        self._closing = True
        self._deadline.cancel()
        self._queue.clear()
        self.transport.unregisterProducer()
        if self._readPaused:
            self.transport.resumeProducing()
        self.out.flush()
        self.transport.loseConnection()

    def isIdle(self):
        """Between two requests: the last response written, no byte of the next request read yet."""
        return self.stream is None and not self._queue and not self._closing and self._deadline.kind is _IDLE

    def drain(self):
        """
        Graceful drain (the factory is draining: every response from now on says ``Connection: close`` and ends its
        connection).  A connection idle between two requests closes now.  One whose request head has begun is
        answered first, bounded by the request-headers timeout.  One accepted but that has sent nothing yet gets
        the listener's ``drain_grace`` to send its first request (a request racing the drain, its bytes not read
        yet, is served rather than reset), then closes; without a grace it closes now.
        """
        if self.stream is not None or self._closing:
            return
        kind = self._deadline.kind
        if kind is _FIRST:
            grace = self.factory.limits.drainGrace
            if grace:
                self._deadline.setSoon(grace, _GRACE)
                return
        elif kind is _HEADERS or kind is _GRACE:
            return
        self._closeAfterWrite()


class HTTP1ListenerFactory(ListenerFactory):
    """Makes the server protocol of one HTTP/1.1 listener."""

    protocol = HTTP1ServerProtocol

    def __init__(self, listenerConfig, template, runtime, stats=None, scheme=b"http"):
        ListenerFactory.__init__(self, listenerConfig, template, runtime,
                                 stats if stats is not None else HTTPListenerStats(runtime.stats, listenerConfig.name))
        limits = self.limits
        self.timerPeriod = min(t for t in (limits.requestHeadersTimeout, limits.idleTimeout, 3600.0) if t)
        self.scheme = scheme
