"""
The HTTP/2 listener (cleartext prior knowledge now; it never assumes cleartext, so TLS/ALPN can wrap it) on
txmesh's HTTP/2 connection (L{txmesh.protocols.h2.codec}).  Each HTTP/2 stream is one ActiveStream of the
listener's filter chain, so HTTP/2 requests route like HTTP/1.1 ones.  A ``grpc`` listener adds gRPC behaviour:
``grpc-timeout`` bounds the call, local replies are trailers-only responses with a grpc-status, an HTTP error from
upstream without grpc-status is mapped to one, and messages are counted (and their size bounded) from the 5-byte
prefixes.  An upstream failure after the response started ends a gRPC stream with a grpc-status, an HTTP/2 one
with RST_STREAM.  Defences (L{txmesh.protocols.h2.defences}: malformed requests, floods, rapid reset) use the
listener's H2Limits; a finite SETTINGS_MAX_CONCURRENT_STREAMS refuses streams past it; the connection bounds
header lists and CONTINUATION frames.

Tunnels (issue 15 part 2): when some route allows ``websocket`` the listener sends SETTINGS_ENABLE_CONNECT_PROTOCOL
and takes RFC 8441's extended CONNECT (``:protocol``), which the chain sees as an upgrade (``GET`` with
``RequestHead.upgrade``, and a ``sec-websocket-key`` made up for the HTTP/1.1 upstream, RFC 8441 5); the upstream's
101 goes back as ``:status 200`` (without ``sec-websocket-accept``).  When some route tunnels CONNECT, a plain
CONNECT (RFC 9113 8.5) is routed (else 501).  Then DATA frames are the tunnel's bytes both ways, with HTTP/2 flow
control as the backpressure; END_STREAM is the FIN each way, an upstream reset is RST_STREAM(CONNECT_ERROR).
"""
import base64
import os

from twisted.logger import Logger

from txmesh.config import H2Limits
from txmesh.protocols.h2 import grpc
from txmesh.protocols.h2.defences import (
    FloodGuard,
    MalformedMessage,
    MalformedRequest,
    UnsupportedRequest,
    checkTrailers,
    readRequest,
)
from txmesh.protocols.h2 import events as ev
from txmesh.protocols.h2.downstream import H2DownstreamStream
from txmesh.protocols.h2.events import ProtocolError, StreamClosedError
from txmesh.protocols.h2.frames import ErrorCodes, codeName
from txmesh.tunnel_config import CONNECT as TUNNEL_CONNECT
from txmesh.protocols.h2.flow import (
    FlowControlledSender,
    makeConnection,
    regularFields,
)
from txmesh.protocols.h2.stats import H2ListenerStats
from txmesh.protocols.listener import Deadline, ListenerFactory, ListenerProtocol
from txmesh.protocols.transport import callInScope
from txmesh.stream import HeaderMap, RequestHead, ResponseHead

_STATUS = {s: b"%d" % s for s in range(100, 600)}


class H2ServerProtocol(FlowControlledSender, ListenerProtocol):
    """One downstream HTTP/2 connection."""

    log = Logger()
    watchWrites = True

    def __init__(self, factory):
        ListenerProtocol.__init__(self, factory)
        self.conn = None
        self.streams = {}
        self._backlogs = {}
        self._closing = False
        self._draining = False  # our graceful GOAWAY was sent: close once the open streams end
        self._peerGoaway = False  # the client sent a graceful GOAWAY: close once its streams end
        self.guard = FloodGuard(factory.h2Limits, factory.clock)
        self._idle = Deadline(factory.clock, factory.limits.idleTimeout or 3600.0, self._idleTimedOut)

    # -- connection events -----------------------------------------------------------------------------------

    def connectionMade(self):
        f = self.factory
        limits = f.h2Limits
        tunnels = f.template.routeConfig.upgradeTypes if not f.grpc else frozenset()
        self._extendedConnect = b"websocket" in tunnels  # fixed for the connection: the SETTINGS said so
        self._connect = TUNNEL_CONNECT in tunnels
        self.conn = conn = makeConnection(False, limits.maxConcurrentStreams, limits.maxHeaderListSize)
        conn.initiateConnection(self._extendedConnect)
        ListenerProtocol.connectionMade(self)
        self._flush()
        self._idle.set(self.factory.limits.idleTimeout)

    def dataReceived(self, data):
        callInScope(self.out.scope, self._dispatch, data)

    def _dispatch(self, data):
        if self._closing:
            return
        try:
            events = self.conn.receiveData(data)
        except ProtocolError as e:
            self._protocolError(e)
            return
        for event in events:
            t = type(event)
            if t is ev.DataReceived:
                self._dataReceived(event)
            elif t is ev.RequestReceived:
                self._requestReceived(event)
            elif t is ev.TrailersReceived:
                s = self.streams.get(event.stream_id)
                if s is not None and not s.requestEnded:
                    s.requestEnded = True
                    try:
                        checkTrailers(event.headers)
                    except MalformedMessage as e:
                        self.resetStream(s, ErrorCodes.PROTOCOL_ERROR)
                        self._malformed(s, e)
                    else:
                        s.active.decodeTrailers(HeaderMap(list(event.headers)))
            elif t is ev.StreamReset:
                self._streamReset(event)
            elif t is ev.WindowUpdated:
                flood = self.guard.windowUpdateReceived()
                if flood:
                    self._flood(flood)
                    return
                self._windowOpened(event.stream_id)
            elif t is ev.RemoteSettingsChanged:
                if self._controlReceived():
                    return
                self._windowOpened(0)
            elif t is ev.PingReceived:
                if self._controlReceived():
                    return
            elif t is ev.PingAckReceived:
                if self._controlReceived(False):  # we send no PING: each ACK is unasked for
                    return
            elif t is ev.PriorityUpdated:
                flood = self.guard.priorityReceived()
                if flood:
                    self._flood(flood)
                    return
            elif t is ev.ConnectionTerminated:
                self.factory.stats.goaway_received.value += 1
                if event.error_code != ErrorCodes.NO_ERROR or not self.streams:
                    self._closeNow()
                    return
                # a client's graceful GOAWAY: the streams it opened still get their responses, then we close
                self._peerGoaway = True
            if self._closing:
                return
        refused = self.conn.refusedStreams
        if refused:
            self.factory.stats.streams_refused.value += refused
            self.conn.refusedStreams = 0
        self._flush()

    def connectionLost(self, reason):
        f = self.factory
        self._idle.release()
        streams, self.streams = self.streams, {}
        for s in streams.values():
            f.stats.rq_active.value -= 1
            s.active.resetStream("downstream_disconnect")
        ListenerProtocol.connectionLost(self, reason)

    # -- requests ---------------------------------------------------------------------------------------------

    def _requestReceived(self, event):
        f = self.factory
        sid = event.stream_id
        try:
            method, path, authority, scheme, fields, protocol = readRequest(event.headers, self._extendedConnect,
                                                                            self._connect)
        except MalformedRequest as e:
            f.stats.error("malformed_request")
            self.log.debug("stream {sid}: malformed request: {e}", sid=sid, e=e)
            self.resetStream(None, ErrorCodes.PROTOCOL_ERROR, sid)
            return
        except UnsupportedRequest as e:
            self._refuse(sid, e, event.stream_ended)
            return
        self.conn.streamAccepted(sid)
        self.guard.streamsOpened += 1
        f.stats.rq_total.value += 1
        f.stats.rq_active.value += 1
        f.stats.streams_opened.value += 1
        headers = HeaderMap(fields)
        tunnel = None
        if method == b"CONNECT":
            tunnel = method
            if protocol is not None:
                # RFC 8441: the chain sees an upgrade, as an HTTP/1.1 client would send it
                tunnel = protocol
                method = b"GET"
                if protocol.lower() == b"websocket" and b"sec-websocket-key" not in headers:
                    headers.add(b"sec-websocket-key", base64.b64encode(os.urandom(16)))
            else:
                scheme = f.scheme
        head = RequestHead(method, path, authority, headers, scheme, (2, 0), f.protocolName)
        if tunnel is not None and protocol is not None:
            head.upgrade = protocol
        cl = headers.get(b"content-length")
        if cl is not None and cl.isdigit():
            head.contentLength = int(cl)
        info = self.prepareRequest(headers, scheme, f.streamProtocol)
        s = H2DownstreamStream(self, sid, info)
        s.tunnel = tunnel
        if f.grpc:
            timeout = headers.get(b"grpc-timeout")
            if timeout is not None:
                head.timeout = grpc.parseTimeout(timeout)
            s.requestMessages = grpc.MessageCounter(f.h2Limits.maxMessageSize)
            s.responseMessages = grpc.MessageCounter()
        self.streams[sid] = s
        s.active = f.template.createStream(s, info)
        if self.writeBlocked:
            s.active.downstreamWritePaused()  # the connection is not being read by the client now
        endStream = event.stream_ended
        s.requestEnded = endStream
        s.active.decodeHeaders(head, endStream)

    def _refuse(self, sid, exc, ended):
        """
        A well-formed request this listener does not serve (CONNECT) is answered here, never forwarded: its status
        with END_STREAM, then RST_STREAM(NO_ERROR) if the client is still sending (RFC 9113 8.1).
        """
        f = self.factory
        f.stats.error("connect_not_supported")
        f.stats.rq_class[exc.status // 100].value += 1
        self.log.debug("stream {sid}: {e}", sid=sid, e=exc)
        fields = [(b":status", _STATUS[exc.status]), (b"x-txmesh-error", b"connect_not_supported"), f.nodeField]
        try:
            self.conn.sendHeaders(sid, fields, True)
            if not ended:
                self.conn.resetStream(sid, ErrorCodes.NO_ERROR)
        except (StreamClosedError, ProtocolError):
            pass
        self._flush()

    def _dataReceived(self, event):
        sid = event.stream_id
        s = self.streams.get(sid)
        data = event.data
        n = event.flow_controlled_length
        endStream = event.stream_ended
        flood = self.guard.dataReceived(not data, endStream)
        if flood:
            self._flood(flood)
            return
        if s is None or s.requestEnded:
            self.acknowledge(sid, n)
            return
        if s.requestMessages is not None and data:
            try:
                started = s.requestMessages.feed(data)
            except grpc.MessageLimitExceeded as e:
                self.acknowledge(sid, n)
                s.active.sendLocalReply(413, str(e).encode("ascii"), cause="grpc_message_too_large")
                return
            if started:
                self.factory.stats.messages_in.value += started
        if s.paused:
            s.unacked += n
        else:
            self.acknowledge(sid, n)
        if endStream:
            s.requestEnded = True
        s.active.decodeData(data, endStream)

    def acknowledge(self, sid, n):
        if n:
            self.conn.acknowledge(n, sid)
            self._flush()

    def _streamReset(self, event):
        s = self.streams.pop(event.stream_id, None)
        self._dropBacklog(event.stream_id)
        f = self.factory
        if not event.remote_reset:
            # the connection found a stream error (a body longer or shorter than its content-length, ...)
            f.stats.streams_reset_sent.value += 1
            if s is not None:
                s.responseEnded = True
                self._malformed(s, "stream error %s" % (codeName(event.error_code),))
            return
        f.stats.streams_reset_by_peer.value += 1
        if s is None:
            return
        f.stats.rq_active.value -= 1
        s.responseEnded = True
        if s.premature:
            flood = self.guard.prematureResetReceived()
            if flood:
                s.active.resetStream("downstream_reset")
                self._flood(flood)
                return
        s.active.resetStream("downstream_reset")
        self._maybeIdle()

    def _malformed(self, s, why):
        """A stream already reset for a malformed request: the chain is told, the stream forgotten."""
        f = self.factory
        self.streams.pop(s.sid, None)
        f.stats.error("malformed_request")
        f.stats.rq_active.value -= 1
        self.log.debug("stream {sid}: malformed request: {why}", sid=s.sid, why=why)
        s.active.resetStream("downstream_protocol_error")
        self._maybeIdle()

    # -- responses (called through H2DownstreamStream by the ActiveStream) ---------------------------------------

    def writeStreamHeaders(self, s, response, endStream):
        if s.responseEnded:
            return
        f = self.factory
        status = response.status
        f.stats.rq_class[status // 100 if status < 600 else 5].value += 1
        headers = response.headers
        if f.grpc:
            code = headers.get(b"grpc-status")
            if code is None and status != 200:
                # an HTTP error without grpc-status: the standard mapping, as a trailers-only response
                fields = grpc.httpErrorFields(status)
                code = fields[2][1]
                s.swallow = True
                endStream = True
            else:
                fields = [(b":status", _STATUS.get(status) or b"%d" % status)]
                fields.extend(regularFields(headers, response.version == (2, 0)))
            if endStream:
                s.info.grpcStatus = code = code if code is not None else b""
                f.stats.grpcStatus(code)
        elif s.tunnel is not None and not endStream and (
                status == 101 or s.tunnel == b"CONNECT" and 200 <= status < 300):
            # the tunnel opens: RFC 8441 5 and RFC 9113 8.5 both say 200, and no Sec-WebSocket-Accept
            fields = [(b":status", b"200")]
            fields.extend((k, v) for k, v in regularFields(headers, response.version == (2, 0))
                          if k != b"sec-websocket-accept" and k != b"content-length")
            s.tunnelOpen = True
            f.stats.cx_upgrades_total.value += 1
            f.stats.cx_upgrades_active.value += 1
        else:
            fields = [(b":status", _STATUS.get(status) or b"%d" % status)]
            fields.extend(regularFields(headers, response.version == (2, 0)))
        if endStream:
            s.responseEnded = True
        s.headersSent = True
        try:
            self.conn.sendHeaders(s.sid, fields, endStream)
        except (StreamClosedError, ProtocolError):
            s.responseEnded = True
        self._flush()

    def writeStreamData(self, s, data, endStream):
        if s.responseEnded or s.swallow:
            return
        if s.responseMessages is not None and data:
            started = s.responseMessages.feed(data)
            if started:
                self.factory.stats.messages_out.value += started
        if endStream:
            s.responseEnded = True
        self.guard.dataFramesSent += 1
        try:
            self._sendData(s.sid, data, endStream)
        except (StreamClosedError, ProtocolError):
            s.responseEnded = True
        self._flush()

    def writeStreamTrailers(self, s, trailers):
        if s.responseEnded or s.swallow:
            return
        s.responseEnded = True
        if self.factory.grpc:
            s.info.grpcStatus = code = trailers.get(b"grpc-status", b"")
            self.factory.stats.grpcStatus(code)
        try:
            self._sendTrailers(s.sid, list(trailers.items()))
        except (StreamClosedError, ProtocolError):
            pass
        self._flush()

    def makeLocalReply(self, status, body, headers, cause):
        f = self.factory
        if cause:
            f.stats.error(cause if isinstance(cause, str) else cause.decode("ascii"))
        if not f.grpc:
            fields = [(b"content-type", b"text/plain")]
            if cause:
                fields.append((b"x-txmesh-error", cause.encode("ascii") if isinstance(cause, str) else cause))
            fields.append(f.nodeField)
            fields.extend(headers)
            if isinstance(body, str):
                body = body.encode("utf-8")
            return ResponseHead(status, HeaderMap(fields), version=(2, 0), contentLength=len(body)), body
        code, headers = grpc.localReplyCode(headers) if headers else (None, headers)
        fields = grpc.localReplyFields(status, body, cause.decode("ascii") if isinstance(cause, bytes) else cause,
                                       f.nodeId, code)
        fields.extend(headers)
        return ResponseHead(200, HeaderMap(fields), version=(2, 0)), b""

    def endStreamWithStatus(self, s, reason):
        """
        End a gRPC stream the proxy gave up on (upstream reset or timed out mid-response) with a grpc-status, in
        trailers (or trailers-only before any headers), so the client sees why rather than a bare RST_STREAM.
        """
        if isinstance(reason, bytes):
            reason = reason.decode("ascii", "replace")
        fields = grpc.abortFields(reason, s.info.responseFlags, not s.headersSent, self.factory.nodeId)
        s.responseEnded = True
        self.factory.stats.error(reason)
        s.info.grpcStatus = fields[-2][1]
        self.factory.stats.grpcStatus(fields[-2][1])
        try:
            if s.headersSent:
                self._sendTrailers(s.sid, fields)
            else:
                s.headersSent = True
                self.conn.sendHeaders(s.sid, fields, True)
        except (StreamClosedError, ProtocolError):
            pass
        self._flush()

    def resetStream(self, s, code, sid=None):
        if s is not None:
            sid = s.sid
            if s.responseEnded and s.requestEnded:
                return
            s.responseEnded = True
        self._dropBacklog(sid)
        self.factory.stats.streams_reset_sent.value += 1
        try:
            self.conn.resetStream(sid, code)
        except (StreamClosedError, ProtocolError):
            pass
        self._flush()

    def streamEnded(self, s):
        if s.tunnelOpen:
            s.tunnelOpen = False
            self.factory.stats.cx_upgrades_active.value -= 1
        if self.streams.pop(s.sid, None) is None:
            return
        s.premature = False
        self.factory.stats.rq_active.value -= 1
        if not s.responseEnded:
            # the chain ended without a full response (reset by a filter or the router): say so to the client
            self.resetStream(s, ErrorCodes.INTERNAL_ERROR)
        elif not s.requestEnded:
            # the response is complete but the client is still sending: stop it (RFC 9113 8.1)
            self.resetStream(s, ErrorCodes.NO_ERROR)
            self.factory.stats.streams_reset_sent.value -= 1
        if self._draining or self._peerGoaway:
            self._maybeClose()
        self._maybeIdle()

    # -- backpressure -------------------------------------------------------------------------------------------

    def _backlogFull(self, sid):
        s = self.streams.get(sid)
        if s is not None:
            s.active.downstreamWritePaused()

    def _backlogDrained(self, sid):
        s = self.streams.get(sid)
        if s is not None and not self.writeBlocked:
            s.active.downstreamWriteResumed()

    def writeBufferFull(self):
        for s in list(self.streams.values()):
            s.active.downstreamWritePaused()

    def writeBufferDrained(self):
        self.guard.pendingControl = 0
        for s in list(self.streams.values()):
            if self._backlogs.get(s.sid) is None or not self._backlogs[s.sid].paused:
                s.active.downstreamWriteResumed()

    def _controlReceived(self, answered=True):
        """A PING or SETTINGS (``answered``: acknowledged) came; True if that was one too many (closed)."""
        flood = self.guard.controlReceived(self.writeBlocked, answered)
        if flood:
            self._flood(flood)
            return True
        return False

    # -- ends ---------------------------------------------------------------------------------------------------

    def _protocolError(self, exc):
        f = self.factory
        f.stats.cx_protocol_error.value += 1
        f.stats.goaway_sent.value += 1
        self._flushNow()  # the connection queued a GOAWAY
        self._closeNow()

    def _flood(self, kind):
        """Close the connection with GOAWAY(ENHANCE_YOUR_CALM), as Envoy does for floods and rapid reset."""
        f = self.factory
        f.stats.flood(kind)
        f.stats.goaway_sent.value += 1
        self.conn.closeConnection(ErrorCodes.ENHANCE_YOUR_CALM)
        self._flushNow()
        self._closeNow()

    def _closeNow(self):
        self._closing = True
        self._idle.cancel()
        self.transport.unregisterProducer()
        self.out.flush()
        self.transport.loseConnection()

    def _maybeClose(self):
        if not self.streams and not self._closing:
            self._closing = True
            self.transport.unregisterProducer()
            self.out.flush()
            self.transport.loseConnection()

    def _maybeIdle(self):
        if not self.streams and not self._closing:
            self._idle.set(self.factory.limits.idleTimeout)

    def _idleTimedOut(self, kind):
        """
        The idle deadline passed.  It is moved (not re-armed) each time the last stream ends, and not cleared when
        one opens: a connection with streams open is not idle, and the deadline is set again when they end.
        """
        if self.streams or self._closing:
            return
        self.factory.stats.cx_idle_timeout.value += 1
        self.drain()

    def isIdle(self):
        """No stream open, and not closing already."""
        return not self.streams and not self._closing and not self._draining

    def drain(self):
        """Graceful drain: GOAWAY now; close when the open streams end."""
        if self._closing or self._draining:
            return
        self._draining = True
        self.conn.goAway()
        self._flushNow()
        self.factory.stats.goaway_sent.value += 1
        self._maybeClose()


class H2ListenerFactory(ListenerFactory):
    """Makes the server protocol of one HTTP/2 listener (``protocol: http2``, or ``grpc`` with gRPC behaviour)."""

    protocol = H2ServerProtocol
    grpc = False
    protocolName = "http2"  # RequestHead.protocol
    streamProtocol = "h2"  # StreamInfo.protocol

    def __init__(self, listenerConfig, template, runtime, stats=None, scheme=b"http", h2Limits=None):
        ListenerFactory.__init__(self, listenerConfig, template, runtime,
                                 stats if stats is not None else H2ListenerStats(runtime.stats, listenerConfig.name))
        if h2Limits is None:
            h2Limits = listenerConfig.http2 if listenerConfig.http2 is not None else H2Limits()
        self.h2Limits = h2Limits
        self.scheme = scheme


class GRPCListenerFactory(H2ListenerFactory):
    """``protocol: grpc``: an HTTP/2 listener with gRPC semantics."""

    grpc = True
    protocolName = "grpc"
    streamProtocol = "grpc"
