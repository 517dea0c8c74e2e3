"""
What the HTTP/2 listener and the HTTP/2 upstream client share: the connection's settings, outbound flow
control (DATA beyond the peer's window waits in a per-stream backlog; a backlog above the high watermark pauses
the producer of that stream), header translation between HTTP/2 and txmesh's HeaderMap, and the streaming
producer that tells a protocol its transport's write buffer is full.
"""

from collections import deque

from txmesh.protocols.h2.codec import H2Connection

# Connection-specific fields (RFC 9113 8.2.2) that must not cross into HTTP/2; ``te`` is kept only as "trailers".
HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade",
                        b"host", b"te", b"http2-settings"})

DEFAULT_STREAM_WINDOW = 1 << 20
DEFAULT_CONNECTION_WINDOW = 16 << 20
HIGH_WATERMARK = 1 << 20


def makeConnection(clientSide, maxConcurrentStreams=100, maxHeaderListSize=65536):
    """
    An HTTP/2 connection (L{txmesh.protocols.h2.codec}) with txmesh's windows: 1 MiB per stream, 16 MiB for
    the connection.  It does not validate header fields: txmesh builds the lists it sends itself (lower-case
    names, hop-by-hop fields dropped) and the listener checks requests in the pass that reads them
    (L{txmesh.protocols.h2.defences.readRequest}).
    """
    return H2Connection(clientSide, maxConcurrentStreams, maxHeaderListSize, DEFAULT_STREAM_WINDOW,
                        DEFAULT_CONNECTION_WINDOW)


def regularFields(headers, fromHTTP2):
    """The regular fields of a HeaderMap to send on HTTP/2; connection-specific ones dropped if they came from 1.1."""
    items = headers.items()
    if fromHTTP2:
        return items
    return [(k, v) for k, v in items if k not in HOP_BY_HOP]


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
    so the peer's window closes; resuming acknowledges what was held (``proto.acknowledge`` sends the WINDOW_UPDATE).
    """

    __slots__ = ()

    def pauseReading(self):
        self.paused = True

    def resumeReading(self):
        if self.paused:
            self.paused = False
            if self.unacked:
                n, self.unacked = self.unacked, 0
                self.proto.acknowledge(self.sid, n)


class FlowControlledSender:
    """
    Mixin for a Protocol with ``self.conn`` (an H2Connection) and ``self.transport``: sends DATA within the peer's
    flow-control windows, keeping the rest per stream.  ``_backlogFull(sid)`` / ``_backlogDrained(sid)`` are
    called when a stream's backlog passes the high watermark and when it falls back below half of it.
    ``_flush`` writes what the connection queued through ``self.out`` (a L{Writer}); while a read is being
    dispatched (its L{WriteScope} entered) it waits for the end of it, so a response read upstream (HEADERS,
    DATA, trailers) leaves downstream in one ``send()``, and the frames queued on the reading connection (acks,
    WINDOW_UPDATEs) go with them.
    """

    _backlogs = None
    _dirty = False
    out = None  # the connection's Writer, made in connectionMade

    def _flush(self):
        scope = self.out.scope
        if scope is not None and scope.depth:
            if not self._dirty:
                self._dirty = True
                scope.dirty.append(self)
            return
        self._flushNow()

    def flush(self):
        """The WriteScope's end-of-read call: send what the connection queued meanwhile."""
        self._flushNow()

    def _flushNow(self):
        self._dirty = False
        data = self.conn.dataToSend()
        if data:
            self.out.write(data)

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
        window = conn.localFlowControlWindow(sid)
        if n <= window:
            frameSize = conn.maxOutboundFrameSize
            if n <= frameSize:
                conn.sendData(sid, data, endStream)
                return
            sent = self._sendChunks(sid, data, n, frameSize)
        else:
            sent = self._sendChunks(sid, data, window, conn.maxOutboundFrameSize) if window > 0 else 0
        if sent == n and window >= 0:
            if endStream:
                conn.endStream(sid)
            return
        # the rest waits for WINDOW_UPDATE; so does an empty end of stream while the window is negative (the peer
        # lowered INITIAL_WINDOW_SIZE, RFC 9113 6.9.2: no DATA until the window is positive again)
        b = backlogs[sid] = _Backlog()
        if n > sent:
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
            conn.sendData(sid, view[sent:sent + size].tobytes())
            sent += size
        return sent

    def _sendTrailers(self, sid, fields):
        b = self._backlogs.get(sid)
        if b is not None:
            b.trailers = fields
            b.end = True
            return
        self.conn.sendHeaders(sid, fields, True)

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
                window = conn.localFlowControlWindow(s)
            except Exception:
                # the stream is gone (reset); its backlog goes with it
                del self._backlogs[s]
                continue
            frameSize = conn.maxOutboundFrameSize
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
            if not chunks and window >= 0:
                del self._backlogs[s]
                if b.trailers is not None:
                    conn.sendHeaders(s, b.trailers, True)
                elif b.end:
                    conn.endStream(s)
            if b.paused and b.size <= HIGH_WATERMARK // 2:
                b.paused = False
                self._backlogDrained(s)
            if sid == 0 and conn.sendWindow <= 0:
                break

    def _backlogFull(self, sid):
        pass

    def _backlogDrained(self, sid):
        pass
