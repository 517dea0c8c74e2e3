"""
The HTTP/2 upstream client: one H2ClientProtocol per connection, shared by many requests; each request gets an
H2UpstreamStream (a *stream handle*) from the multiplexed pool (txmesh.protocols.h2.pool).  The router uses a
handle exactly as it uses an HTTP/1.1 connection: ``sendRequest``, ``writeBody``, ``writeTrailers``,
``abandon``, ``pauseReading``/``resumeReading``; it hands it back with ``pool.release``/``pool.discard``.

The responder (the router) gets ``upstreamHeaders``, ``upstreamData``, ``upstreamTrailers``, then
``upstreamComplete(reusable)`` (called before the last event, as the HTTP/1.1 client does); or
``upstreamFailed(exc)`` with L{errors.UpstreamReset} (RST_STREAM, connection lost, GOAWAY without retry).
"""

from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from zope.interface import implementer

from txmesh import errors
from txmesh.interfaces import IHTTP2ClientConnection, IUpstreamStream
from txmesh.protocols.h2 import events as ev
from txmesh.protocols.h2.flow import (
    FlowControlledSender,
    ReadPausing,
    makeConnection,
    regularFields,
)
from txmesh.protocols.h2.defences import MalformedMessage, checkTrailers, readResponse
from txmesh.protocols.h2.events import ProtocolError, StreamClosedError
from txmesh.protocols.h2.frames import ErrorCodes, codeName
from txmesh.protocols.transport import WriteWatcher, Writer, callInScope
from txmesh.stream import HeaderMap, ResponseHead

_REPLAY_LIMIT = 64 * 1024  # request bytes kept to retry a stream refused by GOAWAY

# PINGs sent without a HEADERS or DATA frame received in between (gRPC core's max_pings_without_data).  gRPC
# servers (grpc-go, grpc-java, gRPC core) count a PING that comes sooner than their minimum interval (5 min by
# default) since the last one as a strike unless they sent HEADERS or DATA in between, and close the connection
# with GOAWAY ENHANCE_YOUR_CALM "too_many_pings" at the third strike; the first PING is never a strike, so two
# never reach it.
MAX_PINGS_WITHOUT_DATA = 2


@implementer(IUpstreamStream)
class H2UpstreamStream(ReadPausing):
    """One request's stream on a shared upstream HTTP/2 connection (what the pool's ``acquire`` gives)."""

    __slots__ = ("proto", "sid", "responder", "head", "replay", "replaySize", "responseStarted", "done",
                 "paused", "unacked", "requestEnded")

    def __init__(self, proto):
        self.proto = proto
        self.sid = None
        self.responder = None
        self.head = None
        self.replay = []
        self.replaySize = 0
        self.responseStarted = False
        self.done = False
        self.paused = False
        self.unacked = 0
        self.requestEnded = False

    def sendRequest(self, head, endStream, responder):
        self.responder = responder
        self.head = head
        self.requestEnded = endStream
        self.proto._startStream(self, endStream)

    def writeBody(self, data, endStream):
        if self.done:
            return
        self._record((1, data, endStream), len(data))
        self.requestEnded = endStream
        self.proto._streamData(self, data, endStream)

    def writeTrailers(self, trailers):
        if self.done:
            return
        self._record((2, trailers, True), 0)
        self.requestEnded = True
        self.proto._streamTrailers(self, trailers)

    def _record(self, item, size):
        if self.replay is not None:
            self.replaySize += size
            if self.replaySize > _REPLAY_LIMIT:
                self.replay = None
            else:
                self.replay.append(item)

    def abandon(self):
        """The request is given up (timeout, downstream gone): reset the stream (CANCEL)."""
        self.responder = None
        if not self.done:
            self.done = True
            self.proto._cancel(self, ErrorCodes.CANCEL)


@implementer(IHTTP2ClientConnection)
class H2ClientProtocol(FlowControlledSender, Protocol):
    """One upstream HTTP/2 connection; see the module docstring.  Its pool gives it callbacks (setCallbacks)."""

    log = Logger()
    writeScope = None  # set by the connecting factory: the service's WriteScope
    stats = None
    _callbacks = None

    def __init__(self):
        self.conn = makeConnection(True)
        self.streams = {}
        self._backlogs = {}
        self.connected = False
        self.goingAway = False
        self.lastStreamId = None
        self._clock = None
        self._pingTimer = None
        self._pingTimeoutTimer = None
        self._keepalive = (0, 0)
        self._lastRead = 0.0
        self._pingsWithoutData = 0
        self._pingedEvery = 0  # the interval of the last PING sent: what a "too_many_pings" refuses

    def connectionMade(self):
        self.connected = True
        conn = self.conn
        conn.initiateConnection()
        self.out = Writer(self.transport, self.writeScope)
        self.transport.registerProducer(WriteWatcher(self._transportFull, self._transportDrained), True)
        self._flush()

    # -- IHTTP2ClientConnection ------------------------------------------------------------------------------

    def setCallbacks(self, callbacks):
        self._callbacks = callbacks
        self.stats = callbacks.stats

    def newStream(self):
        return H2UpstreamStream(self)

    def maxStreams(self):
        return 0 if self.goingAway else self.conn.remoteMaxConcurrentStreams

    def resetStream(self, h):
        h.responder = None
        h.done = True
        self._cancel(h, ErrorCodes.CANCEL)

    def failStream(self, h, exc):
        h.done = True
        responder, h.responder = h.responder, None
        if responder is not None:
            responder.upstreamFailed(exc)

    def canReplay(self, h):
        return h.replay is not None and not h.responseStarted

    def replayStream(self, h):
        h.proto = self
        h.sid = None
        h.done = False
        replay = h.replay
        h.replay = []
        h.replaySize = 0
        self._startStream(h, not replay and h.requestEnded)
        for kind, payload, endStream in replay:
            if kind == 1:
                h.writeBody(payload, endStream)
            else:
                h.writeTrailers(payload)

    # -- keepalive ------------------------------------------------------------------------------------------------

    def startKeepalive(self, clock, interval, timeout):
        """
        PING when ``interval`` seconds passed with nothing received while streams are open (gRPC's A8 client
        keepalive, without pings on an idle connection); at most MAX_PINGS_WITHOUT_DATA in a row until the peer
        sends HEADERS or DATA.  No ACK within ``timeout`` closes the connection (its streams fail).
        """
        self._clock = clock
        self._keepalive = (interval, timeout)
        self._pingedEvery = interval
        self._lastRead = clock.seconds()
        if interval and self.connected:
            self._pingTimer = clock.callLater(interval, self._keepaliveDue)

    def setKeepaliveInterval(self, interval):
        """The pool changed the PING interval (the peer refused pings as too many); it applies from the next PING."""
        self._keepalive = (interval, self._keepalive[1])

    def _keepaliveDue(self):
        self._pingTimer = None
        interval = self._keepalive[0]
        if not self.connected or not interval:
            return
        clock = self._clock
        quiet = clock.seconds() - self._lastRead
        if quiet < interval:
            # something came since; look again when the connection will have been quiet for the interval
            self._pingTimer = clock.callLater(interval - quiet, self._keepaliveDue)
            return
        if not self.streams or self._pingsWithoutData >= MAX_PINGS_WITHOUT_DATA:
            # nothing to keep alive, or more pings would count as strikes: wait
            self._pingTimer = clock.callLater(interval, self._keepaliveDue)
            return
        self._pingsWithoutData += 1
        self._pingedEvery = interval
        if self.stats is not None:
            self.stats.pings_sent.value += 1
        self.conn.ping(b"txmeshka")
        self._flush()
        self._pingTimeoutTimer = clock.callLater(self._keepalive[1], self._pingTimedOut)

    def _pingTimedOut(self):
        self._pingTimeoutTimer = None
        if self.stats is not None:
            self.stats.ping_timeout.value += 1
        self._failAll(errors.UpstreamReset("upstream did not answer PING within %gs" % (self._keepalive[1],)))
        self.transport.abortConnection()

    def _stopTimers(self):
        for name in ("_pingTimer", "_pingTimeoutTimer"):
            t = getattr(self, name)
            if t is not None:
                if t.active():
                    t.cancel()
                setattr(self, name, None)

    # -- requests -------------------------------------------------------------------------------------------------

    def _startStream(self, h, endStream):
        conn = self.conn
        head = h.head
        sid = conn.nextStreamId()
        h.sid = sid
        self.streams[sid] = h
        fields = [(b":method", head.method), (b":scheme", head.scheme or b"http"), (b":authority", head.authority),
                  (b":path", head.path)]
        headers = head.headers
        fields.extend(regularFields(headers, head.version == (2, 0)))
        if head.version != (2, 0):
            te = headers.get(b"te")
            ct = headers.get(b"content-type", b"")
            if (te is not None and b"trailers" in te.lower()) or ct.startswith(b"application/grpc"):
                fields.append((b"te", b"trailers"))
        if self.stats is not None:
            self.stats.streams_opened.value += 1
        conn.sendHeaders(sid, fields, endStream)
        self._flush()
        if conn.streamIdsExhausted() and not self.goingAway:
            # 2^30 streams on one connection (about a day at 10k calls/s): retire it as if GOAWAY came; the pool
            # opens a new one and this one closes when its streams end
            self.goingAway = True
            if self._callbacks is not None:
                self._callbacks.capacityChanged()

    def _streamData(self, h, data, endStream):
        if h.sid not in self.streams:
            return
        try:
            self._sendData(h.sid, data, endStream)
        except (StreamClosedError, ProtocolError):
            return
        self._flush()

    def _streamTrailers(self, h, trailers):
        if h.sid not in self.streams:
            return
        try:
            self._sendTrailers(h.sid, list(trailers.items()))
        except (StreamClosedError, ProtocolError):
            return
        self._flush()

    def _cancel(self, h, code):
        sid = h.sid
        if sid is None or not self.connected:
            return
        self.streams.pop(sid, None)
        self._dropBacklog(sid)
        if sid not in self.conn.streams:
            return
        if self.stats is not None:
            self.stats.streams_reset_sent.value += 1
        self.conn.resetStream(sid, code)
        self._flush()

    def acknowledge(self, sid, n):
        if n and self.connected:
            self.conn.acknowledge(n, sid)
            self._flush()

    # -- responses ------------------------------------------------------------------------------------------------

    def dataReceived(self, data):
        if self._clock is not None:
            self._lastRead = self._clock.seconds()
        callInScope(self.writeScope, self._dispatch, data)

    def _dispatch(self, data):
        try:
            events = self.conn.receiveData(data)
        except ProtocolError as e:
            self._flushNow()
            self._failAll(errors.BadUpstreamResponse("upstream HTTP/2 protocol error: %s" % (e,)))
            self.transport.abortConnection()
            return
        streams = self.streams
        for event in events:
            t = type(event)
            if t is ev.DataReceived:
                self._pingsWithoutData = 0
                h = streams.get(event.stream_id)
                n = event.flow_controlled_length
                if h is None or h.responder is None:
                    self.conn.acknowledge(n, event.stream_id)
                    continue
                if h.paused:
                    h.unacked += n
                elif n:
                    self.conn.acknowledge(n, event.stream_id)
                if event.stream_ended:
                    responder = self._complete(h)
                    responder.upstreamData(event.data, True)
                else:
                    h.responder.upstreamData(event.data, False)
            elif t is ev.ResponseReceived:
                self._pingsWithoutData = 0
                h = streams.get(event.stream_id)
                if h is None or h.responder is None:
                    continue
                try:
                    status, fields = readResponse(event.headers)
                except MalformedMessage as e:
                    self._malformed(h, e)
                    continue
                head = ResponseHead(status, HeaderMap(fields), version=(2, 0))
                h.responseStarted = True
                if event.stream_ended:
                    if self.stats is not None:
                        self.stats.grpcStatus(head.headers.get(b"grpc-status", b""))
                    responder = self._complete(h)
                    responder.upstreamHeaders(head, True)
                else:
                    h.responder.upstreamHeaders(head, False)
            elif t is ev.TrailersReceived:
                self._pingsWithoutData = 0
                h = streams.get(event.stream_id)
                if h is None or h.responder is None:
                    continue
                try:
                    checkTrailers(event.headers)
                except MalformedMessage as e:
                    self._malformed(h, e)
                    continue
                trailers = HeaderMap(list(event.headers))
                if self.stats is not None:
                    self.stats.grpcStatus(trailers.get(b"grpc-status", b""))
                responder = self._complete(h)
                responder.upstreamTrailers(trailers)
            elif t is ev.StreamReset:
                h = streams.pop(event.stream_id, None)
                self._dropBacklog(event.stream_id)
                if self.stats is not None:
                    if event.remote_reset:
                        self.stats.streams_reset_by_peer.value += 1
                    else:
                        self.stats.streams_reset_sent.value += 1
                if h is not None and h.responder is not None and not h.done:
                    h.done = True
                    responder, h.responder = h.responder, None
                    if event.remote_reset:
                        refused = event.error_code == ErrorCodes.REFUSED_STREAM
                        exc = (errors.UpstreamRefusedStream if refused else errors.UpstreamRemoteReset)(
                            "upstream reset the stream (%s)" % (codeName(event.error_code),))
                    else:
                        exc = errors.BadUpstreamResponse(
                            "malformed upstream HTTP/2 response (%s)" % (codeName(event.error_code),))
                    responder.upstreamFailed(exc)
            elif t is ev.WindowUpdated:
                self._windowOpened(event.stream_id)
            elif t is ev.RemoteSettingsChanged:
                self._windowOpened(0)
                if self._callbacks is not None:
                    self._callbacks.capacityChanged()
            elif t is ev.PingAckReceived:
                if self._pingTimeoutTimer is not None:
                    self._pingTimeoutTimer.cancel()
                    self._pingTimeoutTimer = None
                    if self._keepalive[0] and self._pingTimer is None:
                        self._pingTimer = self._clock.callLater(self._keepalive[0], self._keepaliveDue)
            elif t is ev.ConnectionTerminated:
                self._goaway(event)
        self._flush()

    def _complete(self, h):
        """The response ended: the stream leaves the connection; returns the responder for the last event."""
        h.done = True
        self.streams.pop(h.sid, None)
        responder, h.responder = h.responder, None
        responder.upstreamComplete(True)
        return responder

    def _malformed(self, h, why):
        """A response (or its trailers) RFC 9113 calls malformed: reset the stream, never forward it (502)."""
        responder, h.responder = h.responder, None
        h.done = True
        self.streams.pop(h.sid, None)
        self._dropBacklog(h.sid)
        if self.stats is not None:
            self.stats.streams_reset_sent.value += 1
        self.conn.rejectMessage(h.sid)
        self._flush()
        responder.upstreamFailed(errors.BadUpstreamResponse("malformed upstream HTTP/2 response: %s" % (why,)))

    def _goaway(self, event):
        """GOAWAY: no new streams here; streams above last-stream-id were not processed and may be retried."""
        self.goingAway = True
        last = event.last_stream_id
        self.lastStreamId = last
        if self.stats is not None:
            self.stats.goaway_received.value += 1
        if (event.error_code == ErrorCodes.ENHANCE_YOUR_CALM and event.additional_data == b"too_many_pings"
                and self._callbacks is not None):
            self._callbacks.pingsRefused(self._pingedEvery)
        unprocessed = [h for sid, h in self.streams.items() if last is not None and sid > last]
        for h in unprocessed:
            self.streams.pop(h.sid, None)
            self._dropBacklog(h.sid)
        if self._callbacks is not None:
            self._callbacks.goawayReceived(unprocessed)
        else:
            for h in unprocessed:
                self.failStream(h, errors.UpstreamReset("upstream sent GOAWAY"))
        if not self.streams:
            self.out.flush()
            self.transport.loseConnection()

    def _failAll(self, exc):
        streams, self.streams = self.streams, {}
        for h in streams.values():
            if not h.done:
                self.failStream(h, exc)

    def connectionLost(self, reason):
        self.connected = False
        self._stopTimers()
        self._failAll(errors.UpstreamReset("upstream connection closed: %s" % (reason.getErrorMessage(),)))
        if self._callbacks is not None:
            self._callbacks.connectionLost()

    # -- backpressure -----------------------------------------------------------------------------------------------

    def _backlogFull(self, sid):
        h = self.streams.get(sid)
        if h is not None and h.responder is not None:
            h.responder.upstreamWritePaused()

    def _backlogDrained(self, sid):
        h = self.streams.get(sid)
        if h is not None and h.responder is not None:
            h.responder.upstreamWriteResumed()

    def _transportFull(self):
        for h in list(self.streams.values()):
            if h.responder is not None:
                h.responder.upstreamWritePaused()

    def _transportDrained(self):
        for h in list(self.streams.values()):
            b = self._backlogs.get(h.sid)
            if h.responder is not None and (b is None or not b.paused):
                h.responder.upstreamWriteResumed()
