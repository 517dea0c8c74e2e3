"""
The HTTP/1.1 upstream client protocol: one connection, one request at a time (the pool guarantees it).

It only dispatches: the request is serialised and the response parsed by the sans-IO codec in
L{txmesh.protocols.http1.codec}; the response's events go to the router's responder.
"""

from twisted.internet.protocol import Protocol
from zope.interface import implementer

from txmesh import errors
from txmesh.interfaces import IPooledConnection, IUpstreamStream
from txmesh.protocols.transport import TransportReadPausing, WriteWatcher, Writer, callInScope
from txmesh.protocols.http1.codec import (
    BodyData,
    HTTPCodecError,
    InterimResponse,
    MessageComplete,
    ResponseDecoder,
    ResponseStarted,
    encodeBody,
    encodeRequestHead,
    encodeTrailers,
)

_BODY_METHODS = frozenset({b"POST", b"PUT", b"PATCH"})


@implementer(IUpstreamStream, IPooledConnection)
class HTTP1ClientProtocol(TransportReadPausing, Protocol):
    """
    One upstream HTTP/1.1 connection, used by one request at a time (the pool guarantees it): the pool hands it
    out as the request's IUpstreamStream.

    The ``responder`` given to ``sendRequest`` (the router) gets ``upstreamHeaders``, ``upstreamData``,
    ``upstreamTrailers``, then ``upstreamComplete(reusable)``; or ``upstreamFailed(exc)`` with
    L{errors.UpstreamReset} or L{errors.BadUpstreamResponse}.
    """

    onConnectionLost = None
    writeScope = None  # set by the connecting factory: the service's WriteScope

    def __init__(self):
        self.decoder = ResponseDecoder()
        self.responder = None
        self._chunked = False
        self._requestDone = True
        self._reusable = True
        self._readPaused = False
        self.connected = False

    def connectionMade(self):
        self.connected = True
        self._out = Writer(self.transport, self.writeScope)
        self.transport.registerProducer(WriteWatcher(self._upstreamFull, self._upstreamDrained), True)

    def sendRequest(self, head, endStream, responder):
        if self._readPaused:
            # a previous exchange left the connection paused (slow downstream); this one starts afresh
            self._readPaused = False
            self.transport.resumeProducing()
        self.responder = responder
        self.decoder.expect(head.method)
        chunked = False
        if head.contentLength is None:
            if endStream:
                if head.method in _BODY_METHODS:
                    head.contentLength = 0
            else:
                chunked = True
        self._chunked = chunked
        self._requestDone = endStream
        self._out.write(encodeRequestHead(head, chunked))

    def writeBody(self, data, endStream):
        if not self._chunked:
            if data:
                self._out.write(data)
        else:
            out = encodeBody(data, True, endStream)
            if out:
                self._out.write(out)
        if endStream:
            self._requestDone = True

    def writeTrailers(self, trailers):
        if self._chunked:
            self._out.write(encodeTrailers(trailers))
        self._requestDone = True

    def abandon(self):
        """The exchange is given up (timeout, downstream gone); the pool will discard this connection."""
        self.responder = None
        self._reusable = False

    def dataReceived(self, data):
        callInScope(self.writeScope, self._received, data)

    def _received(self, data):
        try:
            events = self.decoder.feed(data)
        except HTTPCodecError as e:
            self._fail(errors.BadUpstreamResponse(e.reason))
            return
        error = None
        if events and isinstance(events[-1], HTTPCodecError):
            # what came before the bad bytes is delivered; the connection is not reused
            error = events.pop()
            self._reusable = False
        n = len(events)
        i = 0
        while i < n:
            ev = events[i]
            i += 1
            responder = self.responder
            if responder is None:
                # a response nobody asked for: the connection is out of step
                self._reusable = False
                self.transport.abortConnection()
                return
            t = type(ev)
            if t is BodyData or t is ResponseStarted:
                if t is ResponseStarted and not ev.keepAlive:
                    self._reusable = False
                # a head or body piece the response's end follows at once (no trailers): one event with endStream,
                # delivered after the connection went back to the pool (as the h2 client delivers DATA with
                # END_STREAM), not the piece then an empty end
                last = i < n and type(events[i]) is MessageComplete and events[i].trailers is None
                if last:
                    i += 1
                    self._complete()
                if t is BodyData:
                    responder.upstreamData(ev.data, last)
                else:
                    responder.upstreamHeaders(ev.head, last)
            elif t is MessageComplete:
                self._complete()
                if ev.trailers is not None:
                    responder.upstreamTrailers(ev.trailers)
                else:
                    responder.upstreamData(b"", True)
            elif t is InterimResponse:
                pass  # 100 Continue was already answered to the downstream by the listener
        if error is not None:
            self._fail(errors.BadUpstreamResponse(error.reason))

    def _complete(self):
        """
        The response is complete: the connection goes back to the pool *before* the last event is delivered, so
        a pipelined request that the delivery starts can reuse it.
        """
        responder = self.responder
        self.responder = None
        responder.upstreamComplete(self._reusable and self._requestDone and self.connected)

    def _fail(self, exc):
        self._reusable = False
        responder = self.responder
        self.responder = None
        self._out.discard()
        self.transport.abortConnection()
        if responder is not None:
            responder.upstreamFailed(exc)

    def connectionLost(self, reason):
        self.connected = False
        self._reusable = False
        if self.responder is not None:
            try:
                events = self.decoder.eof()
            except HTTPCodecError:
                events = None
            if events:
                for ev in events:
                    if self.responder is None:
                        break
                    if type(ev) is BodyData:
                        self.responder.upstreamData(ev.data, False)
                    elif type(ev) is MessageComplete:
                        responder = self.responder
                        self._complete()
                        responder.upstreamData(b"", True)
            if self.responder is not None:
                responder = self.responder
                self.responder = None
                responder.upstreamFailed(errors.UpstreamReset("upstream connection closed: %s"
                                                              % (reason.getErrorMessage(),)))
        self.decoder.dropParser()
        if self.onConnectionLost is not None:
            self.onConnectionLost(self)

    def _upstreamFull(self):
        if self.responder is not None:
            self.responder.upstreamWritePaused()

    def _upstreamDrained(self):
        if self.responder is not None:
            self.responder.upstreamWriteResumed()
