"""
txmesh's HTTP/2 connection (RFC 9113), sans-IO: ``receiveData(bytes)`` gives events, the ``send*`` calls queue
frames, ``dataToSend()`` gives the bytes to write.  One class plays either side (``clientSide``).

Why not the ``h2`` library (which the tests still use as the peer): profiled on a proxied small gRPC call, h2 and
hyperframe were 56% of txmesh's CPU, mostly in per-frame objects, flag sets, enum lookups and a general stream state
machine (docs/performance.md).  A proxy needs less of it: frames are parsed in place from one ``struct`` call per
header, a stream is five numbers and two flags, and what the peer got wrong is answered as RFC 9113 says (connection
errors with GOAWAY, stream errors with RST_STREAM).  HPACK stays hpack's (through
L{txmesh.protocols.h2.hpack}).

What it checks: the preface and a first SETTINGS; frame sizes; stream-id order and parity; frames on idle, half-
closed and closed streams (a stream this side reset may still get frames, which are ignored); CONTINUATION
sequencing and count; padding; SETTINGS values; both flow-control windows, inbound and outbound; content-length
against DATA (a malformed message is a stream error); MAX_CONCURRENT_STREAMS (streams past it are refused with
REFUSED_STREAM, their header block still decoded so HPACK stays in step).  Header *fields* of requests are checked
by the listener (L{txmesh.protocols.h2.defences.readRequest}) in the pass that reads them; it tells the connection
which streams it accepted (``streamAccepted``), and a GOAWAY names the last of them (not a refused or malformed one).
"""

from hpack.exceptions import HPACKError, OversizedHeaderListError

from txmesh.protocols.h2 import events as E
from txmesh.protocols.h2 import frames as F
from txmesh.protocols.h2.events import ProtocolError, StreamClosedError
from txmesh.protocols.h2.frames import ErrorCodes
from txmesh.protocols.h2.hpack import MemoDecoder, StatelessEncoder

CONTINUATION_LIMIT = 64  # CONTINUATION frames per header block (as h2)
_REMEMBERED = 512  # closed streams remembered per generation (two generations)
_SELF_DEPENDENT = 0x100  # internal flag: a HEADERS frame's priority names its own stream

_unpackHeader = F.HEADER.unpack_from
_unpackU32 = F._U32.unpack_from
_unpackPair = F._PAIR.unpack_from
_unpackGoaway = F._GOAWAY.unpack_from
_packHeader = F.HEADER.pack


class _ConnectionError(Exception):
    def __init__(self, code, message):
        Exception.__init__(self, message)
        self.code = code


class _Stream:
    """One open stream: its windows and which sides have ended."""

    __slots__ = ("sendWindow", "recvWindow", "unacked", "localEnded", "remoteEnded", "started", "expected", "head")

    def __init__(self, sendWindow, recvWindow):
        self.sendWindow = sendWindow
        self.recvWindow = recvWindow
        self.unacked = 0
        self.localEnded = False
        self.remoteEnded = False
        self.started = False  # request (server) or final response (client) headers received
        self.expected = -1  # content-length still to come, -1 if none was given
        self.head = False  # a HEAD request (client): its response's content-length describes no body


class H2Connection:
    """
    One HTTP/2 connection's state.  ``maxConcurrentStreams`` bounds the streams the peer may open (advertised by a
    server); ``streamWindow`` / ``connectionWindow`` are the inbound windows this side gives.
    """

    def __init__(self, clientSide, maxConcurrentStreams=100, maxHeaderListSize=65536, streamWindow=1 << 20,
                 connectionWindow=16 << 20):
        self.clientSide = clientSide
        self.encoder = StatelessEncoder()
        self.decoder = MemoDecoder(maxHeaderListSize)
        self.maxConcurrentStreams = maxConcurrentStreams
        self.maxHeaderListSize = maxHeaderListSize
        self.streams = {}
        self.highestInbound = 0  # the highest stream id the peer opened
        self.lastAccepted = 0  # the highest one the protocol accepted (streamAccepted): GOAWAY's last-stream-id
        self._nextId = 1 if clientSide else 2
        self.refusedStreams = 0  # streams refused past maxConcurrentStreams, for the protocol's counters
        self.closed = False  # a connection error was found, or GOAWAY with an error sent or received
        self.goawayReceived = False
        self._lastStreamSent = None  # the last-stream-id of a graceful GOAWAY this side sent
        # the peer's settings
        self.remoteMaxConcurrentStreams = 1 << 31
        self.remoteMaxHeaderListSize = None
        self.maxOutboundFrameSize = F.DEFAULT_MAX_FRAME_SIZE
        self._peerInitialWindow = F.DEFAULT_WINDOW
        self.sendWindow = F.DEFAULT_WINDOW  # the connection's outbound window
        # this side's inbound windows
        self._localInitialWindow = streamWindow
        self._recvMax = connectionWindow
        self.recvWindow = F.DEFAULT_WINDOW
        self._recvUnacked = 0
        self._out = []
        self._buf = b""
        self._prefaceNeeded = not clientSide
        self._settingsSeen = False
        self._headerBlock = None  # [sid, flags, fragments, CONTINUATION count] while a block is incomplete
        self._closedNew = {}
        self._closedOld = {}

    # -- output ------------------------------------------------------------------------------------------------------

    def initiateConnection(self, enableConnectProtocol=False):
        """
        Queue this side's preface: (client) the magic, then SETTINGS and the connection's WINDOW_UPDATE.
        ``enableConnectProtocol``: a server's SETTINGS_ENABLE_CONNECT_PROTOCOL=1 (RFC 8441).
        """
        values = {F.INITIAL_WINDOW_SIZE: self._localInitialWindow, F.MAX_HEADER_LIST_SIZE: self.maxHeaderListSize}
        if enableConnectProtocol:
            values[F.ENABLE_CONNECT_PROTOCOL] = 1
        if self.clientSide:
            values[F.ENABLE_PUSH] = 0
            self._out.append(F.PREFACE)
        else:
            values[F.MAX_CONCURRENT_STREAMS] = self.maxConcurrentStreams
        self._out.append(F.settingsFrame(values))
        if self._recvMax > F.DEFAULT_WINDOW:
            self._out.append(F.windowUpdateFrame(0, self._recvMax - F.DEFAULT_WINDOW))
            self.recvWindow = self._recvMax

    def dataToSend(self):
        out = self._out
        if not out:
            return b""
        self._out = []
        return out[0] if len(out) == 1 else b"".join(out)

    def nextStreamId(self):
        """The id the next stream this side opens (``sendHeaders`` on it) will have."""
        if self._nextId > F.MAX_STREAM_ID:
            raise StreamClosedError("stream ids exhausted on this connection")
        return self._nextId

    def streamIdsExhausted(self):
        """This side cannot open another stream (its ids reached 2^31-1): the connection must be replaced."""
        return self._nextId > F.MAX_STREAM_ID

    def sendHeaders(self, sid, fields, endStream=False):
        """A header block (request, response or trailers) on ``sid``; a client's first one opens the stream."""
        if self.closed:
            return
        s = self.streams.get(sid)
        if s is None:
            if not self.clientSide or sid != self._nextId:
                raise StreamClosedError(sid)
            s = self.streams[sid] = _Stream(self._peerInitialWindow, self._localInitialWindow)
            s.head = fields[0][1] == b"HEAD"
            self._nextId = sid + 2
        elif s.localEnded:
            raise StreamClosedError(sid)
        self._out.append(F.headerFrames(sid, self.encoder.encode(fields), endStream, self.maxOutboundFrameSize))
        if endStream:
            self._endLocal(sid, s)

    def sendData(self, sid, data, endStream=False):
        """One DATA frame: the caller keeps it within ``localFlowControlWindow`` and ``maxOutboundFrameSize``."""
        if self.closed:
            return
        s = self.streams.get(sid)
        if s is None or s.localEnded:
            raise StreamClosedError(sid)
        n = len(data)
        if n > s.sendWindow or n > self.sendWindow or n > self.maxOutboundFrameSize:
            raise ValueError("DATA of %d bytes exceeds the window or frame size of stream %d" % (n, sid))
        s.sendWindow -= n
        self.sendWindow -= n
        self._out.append(_packHeader(n >> 16, n & 0xFFFF, F.DATA, F.END_STREAM if endStream else 0, sid))
        if n:
            self._out.append(data)
        if endStream:
            self._endLocal(sid, s)

    def endStream(self, sid):
        self.sendData(sid, b"", True)

    def resetStream(self, sid, code=ErrorCodes.CANCEL):
        if self.closed:
            return
        if self.streams.pop(sid, None) is None:
            raise StreamClosedError(sid)
        self._remember(sid, True)
        self._out.append(F.rstStreamFrame(sid, code))

    def rejectMessage(self, sid, code=ErrorCodes.PROTOCOL_ERROR):
        """
        A stream error the protocol found in a message this connection already delivered (malformed fields): the
        stream is reset even if the message ended it, as RFC 9113 8.1.1 asks of a malformed message.
        """
        if not self.closed:
            self.streams.pop(sid, None)
            self._remember(sid, True)
            self._out.append(F.rstStreamFrame(sid, code))

    def localFlowControlWindow(self, sid):
        """How many bytes of DATA may be sent on ``sid`` now (the smaller of its window and the connection's)."""
        s = self.streams.get(sid)
        if s is None or s.localEnded:
            raise StreamClosedError(sid)
        return s.sendWindow if s.sendWindow < self.sendWindow else self.sendWindow

    def acknowledge(self, n, sid):
        """
        ``n`` flow-controlled bytes of ``sid`` were consumed: WINDOW_UPDATEs go out once half a window is due (the
        connection's is credited even when the stream has ended).
        """
        if self.closed or not n:
            return
        s = self.streams.get(sid)
        if s is not None and not s.remoteEnded:
            s.unacked += n
            if s.unacked >= self._localInitialWindow >> 1:
                self._out.append(F.windowUpdateFrame(sid, s.unacked))
                s.recvWindow += s.unacked
                s.unacked = 0
        self._consumed(n)

    def _consumed(self, n):
        self._recvUnacked += n
        if self._recvUnacked >= self._recvMax >> 1:
            self._out.append(F.windowUpdateFrame(0, self._recvUnacked))
            self.recvWindow += self._recvUnacked
            self._recvUnacked = 0

    def ping(self, data):
        self._out.append(F.pingFrame(data))

    def streamAccepted(self, sid):
        """
        The protocol took the peer's stream ``sid`` on (it was not refused nor malformed): a GOAWAY's last-stream-id
        names the highest such stream, as streams refused or reset unprocessed may be retried elsewhere (6.8).
        """
        if sid > self.lastAccepted:
            self.lastAccepted = sid

    def closeConnection(self, code, debug=b""):
        """GOAWAY with an error: nothing more is sent or received."""
        if not self.closed:
            self.closed = True
            self._out.append(F.goawayFrame(self.lastAccepted, code, debug))

    def goAway(self):
        """
        A graceful GOAWAY (NO_ERROR): the streams the peer opened so far finish; later ones are refused
        (REFUSED_STREAM, safe to retry elsewhere).
        """
        if not self.closed and self._lastStreamSent is None:
            # streams above it are refused, so the peer's newer streams (past highestInbound) as well
            self._lastStreamSent = self.highestInbound
            self._out.append(F.goawayFrame(self.lastAccepted, ErrorCodes.NO_ERROR))

    # -- input -------------------------------------------------------------------------------------------------------

    def receiveData(self, data):
        """
        Events for the frames in ``data`` (and what was buffered before), in order.

        @raise ProtocolError: a connection error; GOAWAY is queued and the connection is closed.
        """
        if self.closed:
            return []
        buf = self._buf + data if self._buf else data
        events = []
        try:
            if self._prefaceNeeded:
                n = len(buf)
                if buf[:24] != F.PREFACE[:n if n < 24 else 24]:
                    raise _ConnectionError(ErrorCodes.PROTOCOL_ERROR, "invalid connection preface")
                if n < 24:
                    self._buf = buf
                    return events
                self._prefaceNeeded = False
                buf = buf[24:]
            pos = 0
            end = len(buf)
            handlers = _HANDLERS  # functions, not this connection's bound methods: no reference cycle
            while end - pos >= 9:
                hi, lo, ftype, flags, sid = _unpackHeader(buf, pos)
                length = hi << 16 | lo
                if length > F.DEFAULT_MAX_FRAME_SIZE:
                    raise _ConnectionError(ErrorCodes.FRAME_SIZE_ERROR, "frame of %d bytes" % (length,))
                stop = pos + 9 + length
                if stop > end:
                    break
                payload = buf[pos + 9:stop]
                pos = stop
                if self._headerBlock is not None and ftype != F.CONTINUATION:
                    raise _ConnectionError(ErrorCodes.PROTOCOL_ERROR, "frame inside a header block")
                if not self._settingsSeen and (ftype != F.SETTINGS or flags & F.ACK):
                    raise _ConnectionError(ErrorCodes.PROTOCOL_ERROR, "the first frame is not SETTINGS")
                if ftype < 10:
                    handlers[ftype](self, sid & F.MAX_STREAM_ID, flags, payload, events)
                    if self.closed:
                        self._buf = b""
                        return events
            self._buf = buf[pos:] if pos < end else b""
        except _ConnectionError as e:
            self._buf = b""
            self.closeConnection(e.code, str(e).encode("ascii", "replace")[:200])
            raise ProtocolError(str(e), e.code)
        return events

    def _data(self, sid, flags, payload, events):
        n = len(payload)
        if not sid:
            raise _ConnectionError(ErrorCodes.PROTOCOL_ERROR, "DATA on stream 0")
        data = _unpad(payload, flags) if flags & F.PADDED else payload
        self.recvWindow -= n
        if self.recvWindow < 0:
            raise _ConnectionError(ErrorCodes.FLOW_CONTROL_ERROR, "DATA beyond the connection's window")
        s = self.streams.get(sid)
        if s is None or s.remoteEnded or not s.started:
            if n:
                self._consumed(n)  # nobody will acknowledge these bytes
            if s is None:
                if not self._closedStream(sid):  # reset by this side: ignored
                    self._out.append(F.rstStreamFrame(sid, ErrorCodes.STREAM_CLOSED))
            else:
                self._streamError(sid, ErrorCodes.STREAM_CLOSED if s.remoteEnded else ErrorCodes.PROTOCOL_ERROR,
                                  events)
            return
        s.recvWindow -= n
        if s.recvWindow < 0:
            raise _ConnectionError(ErrorCodes.FLOW_CONTROL_ERROR, "DATA beyond the window of stream %d" % (sid,))
        ended = flags & F.END_STREAM
        if s.expected >= 0:
            s.expected -= len(data)
            if s.expected < 0 or (ended and s.expected):
                self._consumed(n)
                self._streamError(sid, ErrorCodes.PROTOCOL_ERROR, events)  # malformed: content-length (8.1.1)
                return
        if ended:
            s.remoteEnded = True
            if s.localEnded:
                self._close(sid)
        events.append(E.DataReceived(sid, data, n, bool(ended)))

    def _headers(self, sid, flags, payload, events):
        if not sid:
            raise _ConnectionError(ErrorCodes.PROTOCOL_ERROR, "HEADERS on stream 0")
        if flags & F.PADDED:
            if flags & F.PRIORITY_FLAG:
                # RFC 9113 6.2: too short for the pad length and priority fields is a frame size error (4.2);
                # padding that reaches into the priority exceeds the room left, a PROTOCOL_ERROR
                if len(payload) < 6:
                    raise _ConnectionError(ErrorCodes.FRAME_SIZE_ERROR, "HEADERS too short for its priority")
                payload = _unpad(payload, flags, 5)
            else:
                payload = _unpad(payload, flags)
        if flags & F.PRIORITY_FLAG:
            if len(payload) < 5:
                raise _ConnectionError(ErrorCodes.FRAME_SIZE_ERROR, "HEADERS too short for its priority")
            if _unpackU32(payload)[0] & F.MAX_STREAM_ID == sid:
                flags |= _SELF_DEPENDENT
            payload = payload[5:]
        if flags & F.END_HEADERS:
            self._headerBlockReceived(sid, flags, payload, events)
        else:
            self._headerBlock = [sid, flags, [payload], 0]

    def _continuation(self, sid, flags, payload, events):
        block = self._headerBlock
        if block is None or block[0] != sid:
            raise _ConnectionError(ErrorCodes.PROTOCOL_ERROR, "CONTINUATION without its HEADERS")
        block[2].append(payload)
        block[3] += 1
        if block[3] > CONTINUATION_LIMIT:
            raise _ConnectionError(ErrorCodes.PROTOCOL_ERROR, "too many CONTINUATION frames")
        if flags & F.END_HEADERS:
            self._headerBlock = None
            self._headerBlockReceived(sid, block[1], b"".join(block[2]), events)

    def _headerBlockReceived(self, sid, flags, block, events):
        try:
            headers = self.decoder.decode(block, raw=True)
        except OversizedHeaderListError as e:
            raise _ConnectionError(ErrorCodes.ENHANCE_YOUR_CALM, "header list too large: %s" % (e,))
        except (HPACKError, IndexError, TypeError, ValueError) as e:
            raise _ConnectionError(ErrorCodes.COMPRESSION_ERROR, "bad header block: %s" % (e,))
        ended = bool(flags & F.END_STREAM)
        s = self.streams.get(sid)
        if s is None:
            if self.clientSide or not sid & 1 or sid <= self.highestInbound:
                if self._closedStream(sid, True):
                    return
                raise _ConnectionError(ErrorCodes.STREAM_CLOSED, "HEADERS on closed stream %d" % (sid,))
            self.highestInbound = sid
            if (len(self.streams) >= self.maxConcurrentStreams
                    or (self._lastStreamSent is not None and sid > self._lastStreamSent)):
                self.refusedStreams += 1
                self._remember(sid, True)
                self._out.append(F.rstStreamFrame(sid, ErrorCodes.REFUSED_STREAM))
                return
            s = self.streams[sid] = _Stream(self._peerInitialWindow, self._localInitialWindow)
            if flags & _SELF_DEPENDENT or not self._started(s, headers, ended):
                self._streamError(sid, ErrorCodes.PROTOCOL_ERROR, events)
                return
            events.append(E.RequestReceived(sid, headers, ended))
            return
        if s.remoteEnded:
            self._streamError(sid, ErrorCodes.STREAM_CLOSED, events)
            return
        if flags & _SELF_DEPENDENT:
            self._streamError(sid, ErrorCodes.PROTOCOL_ERROR, events)
            return
        if s.started:
            # trailers: they end the stream, carry no pseudo-header, and come after the whole content-length
            malformed = not ended or s.expected > 0
            if not malformed:
                for k, _ in headers:  # a loop, not any() over a generator: once per gRPC response
                    if k[:1] == b":":
                        malformed = True
                        break
            if malformed:
                self._streamError(sid, ErrorCodes.PROTOCOL_ERROR, events)
                return
            s.remoteEnded = True
            if s.localEnded:
                self._close(sid)
            events.append(E.TrailersReceived(sid, headers))
            return
        # a client's response
        status = None
        for k, v in headers:
            if k == b":status":
                status = v
                break
        if status is None or len(status) != 3 or not status.isdigit():
            self._streamError(sid, ErrorCodes.PROTOCOL_ERROR, events)
            return
        if status[:1] == b"1":
            if ended:
                self._streamError(sid, ErrorCodes.PROTOCOL_ERROR, events)
            return  # informational: the final response follows
        # a HEAD response's or a 304's content-length describes a body that is not sent (RFC 9110 8.6)
        if not self._started(s, headers, ended, not (s.head or status == b"304" or status == b"204")):
            self._streamError(sid, ErrorCodes.PROTOCOL_ERROR, events)
            return
        if ended and s.localEnded:
            self._close(sid)
        events.append(E.ResponseReceived(sid, headers, ended))

    def _started(self, s, headers, ended, withLength=True):
        """Mark a stream's (request or response) headers received; False if the message is malformed."""
        s.started = True
        for k, v in headers:
            if k == b"content-length" and withLength:
                if not v.isdigit() or len(v) > 18 or s.expected >= 0:  # as HTTP/1.1's (wire.classifyFields)
                    return False
                s.expected = int(v)
        if ended:
            if s.expected > 0:
                return False
            s.remoteEnded = True
        return True

    def _priority(self, sid, flags, payload, events):
        if not sid:
            raise _ConnectionError(ErrorCodes.PROTOCOL_ERROR, "PRIORITY on stream 0")
        if len(payload) != 5:
            self._streamError(sid, ErrorCodes.FRAME_SIZE_ERROR, events)
            return
        if _unpackU32(payload)[0] & F.MAX_STREAM_ID == sid:
            self._streamError(sid, ErrorCodes.PROTOCOL_ERROR, events)
            return
        events.append(E.PriorityUpdated(sid))

    def _rstStream(self, sid, flags, payload, events):
        if not sid:
            raise _ConnectionError(ErrorCodes.PROTOCOL_ERROR, "RST_STREAM on stream 0")
        if len(payload) != 4:
            raise _ConnectionError(ErrorCodes.FRAME_SIZE_ERROR, "RST_STREAM of %d bytes" % (len(payload),))
        if self.streams.pop(sid, None) is None:
            if self._isIdle(sid):
                raise _ConnectionError(ErrorCodes.PROTOCOL_ERROR, "RST_STREAM on idle stream %d" % (sid,))
            return
        self._remember(sid, False)
        events.append(E.StreamReset(sid, _unpackU32(payload)[0]))

    def _settings(self, sid, flags, payload, events):
        if sid:
            raise _ConnectionError(ErrorCodes.PROTOCOL_ERROR, "SETTINGS on stream %d" % (sid,))
        if flags & F.ACK:
            if payload:
                raise _ConnectionError(ErrorCodes.FRAME_SIZE_ERROR, "SETTINGS ACK with a payload")
            return
        if len(payload) % 6:
            raise _ConnectionError(ErrorCodes.FRAME_SIZE_ERROR, "SETTINGS of %d bytes" % (len(payload),))
        changed = {}
        for off in range(0, len(payload), 6):
            code, value = _unpackPair(payload, off)
            if code == F.INITIAL_WINDOW_SIZE:
                if value > F.MAX_WINDOW:
                    raise _ConnectionError(ErrorCodes.FLOW_CONTROL_ERROR, "INITIAL_WINDOW_SIZE %d" % (value,))
                delta = value - self._peerInitialWindow
                self._peerInitialWindow = value
                for s in self.streams.values():
                    s.sendWindow += delta
                    if s.sendWindow > F.MAX_WINDOW:
                        raise _ConnectionError(ErrorCodes.FLOW_CONTROL_ERROR, "a stream's window overflows")
            elif code == F.MAX_FRAME_SIZE:
                if not F.DEFAULT_MAX_FRAME_SIZE <= value <= 0xFFFFFF:
                    raise _ConnectionError(ErrorCodes.PROTOCOL_ERROR, "MAX_FRAME_SIZE %d" % (value,))
                self.maxOutboundFrameSize = value
            elif code == F.MAX_CONCURRENT_STREAMS:
                self.remoteMaxConcurrentStreams = value
            elif code == F.ENABLE_PUSH:
                if value > 1 or (value and self.clientSide):  # a server must not offer push (6.5.2)
                    raise _ConnectionError(ErrorCodes.PROTOCOL_ERROR, "ENABLE_PUSH %d" % (value,))
            elif code == F.MAX_HEADER_LIST_SIZE:
                self.remoteMaxHeaderListSize = value
            elif code == F.HEADER_TABLE_SIZE:
                self.encoder.tableSizeChanged()
            changed[code] = value
        self._settingsSeen = True
        self._out.append(F.SETTINGS_ACK)
        events.append(E.RemoteSettingsChanged(changed))

    def _pushPromise(self, sid, flags, payload, events):
        raise _ConnectionError(ErrorCodes.PROTOCOL_ERROR, "PUSH_PROMISE (push is disabled)")

    def _ping(self, sid, flags, payload, events):
        if sid:
            raise _ConnectionError(ErrorCodes.PROTOCOL_ERROR, "PING on stream %d" % (sid,))
        if len(payload) != 8:
            raise _ConnectionError(ErrorCodes.FRAME_SIZE_ERROR, "PING of %d bytes" % (len(payload),))
        if flags & F.ACK:
            events.append(E.PingAckReceived(payload))
        else:
            self._out.append(F.pingFrame(payload, True))
            events.append(E.PingReceived(payload))

    def _goaway(self, sid, flags, payload, events):
        if sid:
            raise _ConnectionError(ErrorCodes.PROTOCOL_ERROR, "GOAWAY on stream %d" % (sid,))
        if len(payload) < 8:
            raise _ConnectionError(ErrorCodes.FRAME_SIZE_ERROR, "GOAWAY of %d bytes" % (len(payload),))
        last, code = _unpackGoaway(payload)
        self.goawayReceived = True
        events.append(E.ConnectionTerminated(code, last & F.MAX_STREAM_ID, payload[8:]))
        if code != ErrorCodes.NO_ERROR:
            self.closed = True

    def _windowUpdate(self, sid, flags, payload, events):
        if len(payload) != 4:
            raise _ConnectionError(ErrorCodes.FRAME_SIZE_ERROR, "WINDOW_UPDATE of %d bytes" % (len(payload),))
        inc = _unpackU32(payload)[0] & F.MAX_WINDOW
        if not sid:
            if not inc:
                raise _ConnectionError(ErrorCodes.PROTOCOL_ERROR, "WINDOW_UPDATE of 0 on the connection")
            self.sendWindow += inc
            if self.sendWindow > F.MAX_WINDOW:
                raise _ConnectionError(ErrorCodes.FLOW_CONTROL_ERROR, "the connection's window overflows")
            events.append(E.WindowUpdated(0, inc))
            return
        s = self.streams.get(sid)
        if s is None:
            if self._isIdle(sid):
                raise _ConnectionError(ErrorCodes.PROTOCOL_ERROR, "WINDOW_UPDATE on idle stream %d" % (sid,))
            return
        if not inc:
            self._streamError(sid, ErrorCodes.PROTOCOL_ERROR, events)
            return
        s.sendWindow += inc
        if s.sendWindow > F.MAX_WINDOW:
            self._streamError(sid, ErrorCodes.FLOW_CONTROL_ERROR, events)
            return
        events.append(E.WindowUpdated(sid, inc))

    # -- streams -----------------------------------------------------------------------------------------------------

    def _streamError(self, sid, code, events):
        """RST_STREAM for a stream error this side found; an open stream is reported as reset (not by the peer)."""
        self._out.append(F.rstStreamFrame(sid, code))
        if self.streams.pop(sid, None) is not None:
            events.append(E.StreamReset(sid, code, False))
        self._remember(sid, True)

    def _endLocal(self, sid, s):
        s.localEnded = True
        if s.remoteEnded:
            self._close(sid)

    def _close(self, sid):
        del self.streams[sid]
        self._remember(sid, False)

    def _remember(self, sid, resetHere):
        new = self._closedNew
        new[sid] = resetHere
        if len(new) > _REMEMBERED:
            self._closedOld = new
            self._closedNew = {}

    def _isIdle(self, sid):
        """Not opened yet: by the peer (its parity, above the highest it opened) or by this side."""
        if (sid & 1) == (0 if self.clientSide else 1):
            return sid > self.highestInbound
        return sid >= self._nextId

    def _closedStream(self, sid, headers=False):
        """
        A frame came on a stream that is not open: True if this side reset it (the frame is ignored, RFC 9113
        5.1), else False (closed); an idle stream, or (``headers``) a new stream below one already opened, is a
        connection error.
        """
        if self._isIdle(sid):
            raise _ConnectionError(ErrorCodes.PROTOCOL_ERROR, "frame on idle stream %d" % (sid,))
        resetHere = self._closedNew.get(sid)
        if resetHere is None:
            resetHere = self._closedOld.get(sid)
            if resetHere is None and headers:
                raise _ConnectionError(ErrorCodes.PROTOCOL_ERROR, "stream %d is below one already open" % (sid,))
        return bool(resetHere)


# the frame handlers by frame type (0-9)
_HANDLERS = (H2Connection._data, H2Connection._headers, H2Connection._priority, H2Connection._rstStream,
             H2Connection._settings, H2Connection._pushPromise, H2Connection._ping, H2Connection._goaway,
             H2Connection._windowUpdate, H2Connection._continuation)


def _unpad(payload, flags, fixed=0):
    """The payload without its pad length and padding; ``fixed``: bytes of fields after the pad length."""
    n = len(payload)
    if not n or payload[0] >= n - fixed:
        raise _ConnectionError(ErrorCodes.PROTOCOL_ERROR, "padding as long as the frame")
    return payload[1:n - payload[0]]
