"""
What the HTTP/2 listener and the HTTP/2 upstream client share: the ``h2`` connection settings, outbound flow
control (DATA beyond the peer's window waits in a per-stream backlog; a backlog above the high watermark pauses
the producer of that stream), header translation between HTTP/2 and txmesh's HeaderMap, and the streaming
producer that tells a protocol its transport's write buffer is full.
"""

from collections import deque

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.exceptions import StreamClosedError, StreamIDTooLowError, TooManyStreamsError
from h2.frame_buffer import CONTINUATION_BACKLOG  # noqa: F401  (h2 bounds CONTINUATION frames per header block)
from h2.settings import SettingCodes, Settings
from h2.stream import StreamClosedBy
from hyperframe.frame import RstStreamFrame
from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

from txmesh.protocols.hpack_codec import MemoDecoder, StatelessEncoder
from txmesh.stream import HeaderMap

# Connection-specific fields (RFC 9113 8.2.2) that must not cross into HTTP/2; ``te`` is kept only as "trailers".
HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade",
                        b"host", b"te", b"http2-settings"})

DEFAULT_STREAM_WINDOW = 1 << 20
DEFAULT_CONNECTION_WINDOW = 16 << 20
HIGH_WATERMARK = 1 << 20


class _FrameReceiver(H2Connection):
    """
    h2 4.x's ``_receive_frame`` without its first line, which formats ``repr(frame)`` for the trace logger on every
    received frame even when the logger does nothing (~3 µs a frame, ~5% of a proxied gRPC call).  The rest is
    h2's code as is; tests/test_h2_translation.py fails if h2's method changes, so this copy is re-checked then.
    """

    def _receive_frame(self, frame):
        try:
            frames, events = self._frame_dispatch_table[frame.__class__](frame)
        except StreamClosedError as e:
            if self._stream_is_closed_by_reset(e.stream_id):
                f = RstStreamFrame(e.stream_id)
                f.error_code = e.error_code
                self._prepare_for_sending([f])
                events = e._events
            else:
                raise
        except StreamIDTooLowError as e:
            if self._stream_is_closed_by_reset(e.stream_id):
                f = RstStreamFrame(e.stream_id)
                f.error_code = ErrorCodes.STREAM_CLOSED
                self._prepare_for_sending([f])
                events = []
            elif self._stream_is_closed_by_end(e.stream_id):
                raise StreamClosedError(e.stream_id) from e
            else:
                raise
        else:
            self._prepare_for_sending(frames)
        return events

    def _receive_goaway_frame(self, frame):
        """
        A graceful GOAWAY (NO_ERROR) leaves the connection open for the streams already under way, which h2 would
        refuse to finish (it closes its state machine at once); the protocol closes when they end.
        """
        before = self.state_machine.state
        frames, events = super()._receive_goaway_frame(frame)
        if frame.error_code == ErrorCodes.NO_ERROR:
            self.state_machine.state = before
        return frames, events


class RefusingH2Connection(_FrameReceiver):
    """
    An H2Connection that answers a stream past SETTINGS_MAX_CONCURRENT_STREAMS with RST_STREAM(REFUSED_STREAM), so
    the client may retry it, instead of the library's connection-wide PROTOCOL_ERROR.
    """

    refusedStreams = 0

    def _receive_headers_frame(self, frame):
        try:
            return super()._receive_headers_frame(frame)
        except TooManyStreamsError:
            # keep the HPACK decoder in step: the block must be decoded even though the stream is refused
            self.decoder.decode(frame.data, raw=True)
            sid = frame.stream_id
            if sid > self.highest_inbound_stream_id:
                self.highest_inbound_stream_id = sid
            self._closed_streams[sid] = StreamClosedBy.SEND_RST_STREAM
            self.refusedStreams += 1
            f = RstStreamFrame(sid)
            f.error_code = ErrorCodes.REFUSED_STREAM
            return [f], []


class GracefulGoawayH2Connection(_FrameReceiver):
    """
    An H2Connection (client side) that keeps receiving after a graceful GOAWAY (NO_ERROR): the streams at or
    below its last-stream-id may still finish, which the library would otherwise refuse (it closes at once).
    """


def makeConnection(clientSide, maxConcurrentStreams=100, maxHeaderListSize=65536):
    """
    An h2 connection with txmesh's settings.  The library's header validation and normalisation are off both
    ways: txmesh builds the header lists it sends itself (lower-case names, hop-by-hop fields dropped) and the
    listener checks requests in the one pass that also reads them (h2_defences.readRequest); h2 still checks
    content-length against DATA.  Header blocks go through L{txmesh.protocols.hpack_codec} (memoised both ways).
    """
    config = H2Configuration(client_side=clientSide, header_encoding=None, validate_outbound_headers=False,
                             normalize_outbound_headers=False, split_outbound_cookies=False,
                             validate_inbound_headers=False, normalize_inbound_headers=False)
    conn = (GracefulGoawayH2Connection if clientSide else RefusingH2Connection)(config=config)
    # initial values, not assignments: assigned settings stay pending and initiate_connection would not send them
    values = {SettingCodes.INITIAL_WINDOW_SIZE: DEFAULT_STREAM_WINDOW,
              SettingCodes.MAX_HEADER_LIST_SIZE: maxHeaderListSize}
    if clientSide:
        values[SettingCodes.ENABLE_PUSH] = 0
    else:
        values[SettingCodes.MAX_CONCURRENT_STREAMS] = maxConcurrentStreams
    conn.local_settings = Settings(client=clientSide, initial_values=values)
    conn.encoder = StatelessEncoder()
    conn.decoder = MemoDecoder(maxHeaderListSize)
    return conn


def toHeaderMap(pairs):
    """A HeaderMap of the regular fields of an h2 header list (pseudo-headers dropped)."""
    return HeaderMap([(k, v) for k, v in pairs if k[:1] != b":"])


def regularFields(headers, fromHTTP2):
    """The regular fields of a HeaderMap to send on HTTP/2; connection-specific ones dropped if they came from 1.1."""
    items = headers.items()
    if fromHTTP2:
        return items
    return [(k, v) for k, v in items if k not in HOP_BY_HOP]


@implementer(IPushProducer)
class WriteWatcher:
    """Registered on a transport as a streaming producer: the transport says when its write buffer is full."""

    __slots__ = ("onPause", "onResume")

    def __init__(self, onPause, onResume):
        self.onPause = onPause
        self.onResume = onResume

    def pauseProducing(self):
        self.onPause()

    def resumeProducing(self):
        self.onResume()

    def stopProducing(self):
        pass


class _Backlog:
    __slots__ = ("chunks", "size", "end", "trailers", "paused")

    def __init__(self):
        self.chunks = deque()
        self.size = 0
        self.end = False
        self.trailers = None
        self.paused = False


class ReadPausing:
    """
    Pausing one stream's reading (both stream handle classes): while paused, received DATA is not acknowledged,
    so the peer's window closes; resuming acknowledges what was held (``proto._ack`` sends the WINDOW_UPDATE).
    """

    __slots__ = ()

    def pauseReading(self):
        self.paused = True

    def resumeReading(self):
        if self.paused:
            self.paused = False
            if self.unacked:
                n, self.unacked = self.unacked, 0
                self.proto._ack(self.sid, n)


class FlowControlledSender:
    """
    Mixin for a Protocol with ``self.conn`` (H2Connection) and ``self.transport``: sends DATA within the peer's
    flow-control windows, keeping the rest per stream.  ``_backlogFull(sid)`` / ``_backlogDrained(sid)`` are
    called when a stream's backlog passes the high watermark and when it falls back below half of it.
    ``_flush`` writes what h2 queued through ``self._out`` (a L{Writer}); while a read is being dispatched (its
    L{WriteScope} entered) it waits for the end of it, so a response read upstream (HEADERS, DATA, trailers)
    leaves downstream in one ``send()``, and the frames h2 queued on the reading connection (acks, WINDOW_UPDATEs)
    go with them.
    """

    _backlogs = None
    _dirty = False
    _out = None  # the connection's Writer, made in connectionMade

    def _flush(self):
        scope = self._out.scope
        if scope is not None and scope.depth:
            if not self._dirty:
                self._dirty = True
                scope.dirty.append(self)
            return
        self._flushNow()

    def flush(self):
        """The WriteScope's end-of-read call: send what h2 queued meanwhile."""
        self._flushNow()

    def _flushNow(self):
        self._dirty = False
        data = self.conn.data_to_send()
        if data:
            self._out.write(data)

    def _sendData(self, sid, data, endStream):
        backlogs = self._backlogs
        b = backlogs.get(sid)
        if b is not None:
            if data:
                b.chunks.append(data)
                b.size += len(data)
            b.end = b.end or endStream
            if b.size > HIGH_WATERMARK and not b.paused:
                b.paused = True
                self._backlogFull(sid)
            return
        conn = self.conn
        n = len(data)
        window = conn.local_flow_control_window(sid)
        if n <= window:
            frameSize = conn.max_outbound_frame_size
            if n <= frameSize:
                conn.send_data(sid, data, end_stream=endStream)
                return
            sent = self._sendChunks(sid, data, n, frameSize)
        else:
            sent = self._sendChunks(sid, data, window, conn.max_outbound_frame_size) if window > 0 else 0
        if sent == n:
            if endStream:
                conn.end_stream(sid)
            return
        b = backlogs[sid] = _Backlog()
        b.chunks.append(data[sent:] if sent else data)
        b.size = n - sent
        b.end = endStream
        if b.size > HIGH_WATERMARK:
            b.paused = True
            self._backlogFull(sid)

    def _sendChunks(self, sid, data, limit, frameSize):
        conn = self.conn
        view = memoryview(data)
        sent = 0
        while sent < limit:
            size = min(frameSize, limit - sent)
            conn.send_data(sid, view[sent:sent + size].tobytes())
            sent += size
        return sent

    def _sendTrailers(self, sid, fields):
        b = self._backlogs.get(sid)
        if b is not None:
            b.trailers = fields
            b.end = True
            return
        self.conn.send_headers(sid, fields, end_stream=True)

    def _dropBacklog(self, sid):
        self._backlogs.pop(sid, None)

    def _windowOpened(self, sid):
        """A WINDOW_UPDATE (or SETTINGS) arrived: send what waits, for one stream or (sid 0) for all."""
        if not self._backlogs:
            return
        sids = list(self._backlogs) if sid == 0 else ([sid] if sid in self._backlogs else [])
        conn = self.conn
        for s in sids:
            b = self._backlogs[s]
            try:
                window = conn.local_flow_control_window(s)
            except Exception:
                # the stream is gone (reset); its backlog goes with it
                del self._backlogs[s]
                continue
            frameSize = conn.max_outbound_frame_size
            chunks = b.chunks
            while chunks and window > 0:
                chunk = chunks[0]
                if len(chunk) <= window:
                    chunks.popleft()
                    self._sendChunks(s, chunk, len(chunk), frameSize)
                    window -= len(chunk)
                    b.size -= len(chunk)
                else:
                    self._sendChunks(s, chunk, window, frameSize)
                    chunks[0] = chunk[window:]
                    b.size -= window
                    window = 0
            if not chunks:
                del self._backlogs[s]
                if b.trailers is not None:
                    conn.send_headers(s, b.trailers, end_stream=True)
                elif b.end:
                    conn.end_stream(s)
            if b.paused and b.size <= HIGH_WATERMARK // 2:
                b.paused = False
                self._backlogDrained(s)
            if sid == 0 and conn.outbound_flow_control_window <= 0:
                break

    def _backlogFull(self, sid):
        pass

    def _backlogDrained(self, sid):
        pass
