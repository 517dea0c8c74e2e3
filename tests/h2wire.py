"""
The wire-level harness the HTTP/2 test modules share: RFC 9113 constants, raw frames built and parsed by hand or
with hyperframe, doubles for what the listener talks to (ActiveStream, filter-chain template, listener config,
runtime) and a recording responder for the upstream client.  A plain module, not a test file.
"""

import struct

from hpack import Decoder, Encoder
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from txmesh.config import ForwardingConfig, ListenerLimits, NodeConfig
from txmesh.overload import Overload
from txmesh.stats import StatsStore
from txmesh.routing import RouteConfig

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# error codes (RFC 9113 7), spelled here so the suites do not depend on any HTTP/2 library's enums
NO_ERROR = 0x0
PROTOCOL_ERROR = 0x1
INTERNAL_ERROR = 0x2
FLOW_CONTROL_ERROR = 0x3
STREAM_CLOSED = 0x5
FRAME_SIZE_ERROR = 0x6
REFUSED_STREAM = 0x7
CANCEL = 0x8
COMPRESSION_ERROR = 0x9

# frame types and flags (RFC 9113 6)
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
END_STREAM, ACK, END_HEADERS, PADDED = 0x1, 0x1, 0x4, 0x8

MAX_WINDOW = 2 ** 31 - 1


def rawFrame(kind, flags, sid, payload=b""):
    """A frame built byte by byte (RFC 9113 4.1), for the malformed ones hyperframe will not serialize."""
    return struct.pack(">I", len(payload))[1:] + struct.pack(">BBI", kind, flags, sid) + payload


def dataFrames(frames, sid=None):
    """The DATA frames among ``frames``, on stream ``sid`` if given."""
    return [f for f in frames if isinstance(f, DataFrame) and (sid is None or f.stream_id == sid)]


def dataBytes(frames, sid=None):
    """How many DATA octets ``frames`` carry (padding aside), on stream ``sid`` if given."""
    return sum(len(f.data) for f in dataFrames(frames, sid))


# -- the listener's collaborators ----------------------------------------------------------------------------------


class Recorder:
    """Stands for the ActiveStream: records what the listener forwards."""

    def __init__(self, downstream, info, log):
        self.downstream = downstream
        self.info = info
        self.log = log
        self.complete = False

    def decodeHeaders(self, head, endStream):
        self.log.append(("headers", head, endStream))

    def decodeData(self, data, endStream):
        self.log.append(("data", data, endStream))

    def decodeTrailers(self, trailers):
        self.log.append(("trailers", trailers))

    def resetStream(self, reason, fromFilter=False):
        self.complete = True
        self.log.append(("reset", reason))

    def downstreamWritePaused(self):
        pass

    def downstreamWriteResumed(self):
        pass


class Template:
    """Stands for the filter-chain template: a Recorder per stream, all writing to one ``log``."""

    def __init__(self, routeConfig=None):
        self.log = []
        self.streams = []
        self.routeConfig = routeConfig if routeConfig is not None else RouteConfig()

    def createStream(self, downstream, info):
        s = Recorder(downstream, info, self.log)
        self.streams.append(s)
        return s


class ListenerConfig:
    """A listener config with default limits and no ``http2`` block."""

    name = "l"
    limits = ListenerLimits()
    useRemoteAddress = False
    forwarding = ForwardingConfig(useRemoteAddress=False)
    forwardClientCert = None  # sanitize (issue 14)
    protocol = "http2"
    http2 = None


class Runtime:
    """The runtime the listener needs: a Clock, a StatsStore and an Overload without bounds (no shared WriteScope)."""

    writeScope = None

    node = NodeConfig(id="node-t")

    def __init__(self):
        self.clock = Clock()
        self.stats = StatsStore()
        self.overload = Overload(None, self.clock, self.stats)


# -- the upstream client's collaborator ----------------------------------------------------------------------------


class Responder:
    """Stands for the router: records what the upstream client delivers for one request."""

    def __init__(self):
        self.events = []
        self.heads = []

    def upstreamHeaders(self, head, endStream):
        self.heads.append(head)
        self.events.append(("headers", head.status, endStream))

    def upstreamData(self, data, endStream):
        self.events.append(("data", data, endStream))

    def upstreamTrailers(self, trailers):
        self.events.append(("trailers", list(trailers.items())))

    def upstreamComplete(self, reusable):
        self.events.append(("complete",))

    def upstreamFailed(self, exc):
        self.events.append(("failed", type(exc)))

    def upstreamWritePaused(self):
        pass

    def upstreamWriteResumed(self):
        pass

    def body(self):
        return b"".join(e[1] for e in self.events if e[0] == "data")

    def failed(self):
        return [e[1] for e in self.events if e[0] == "failed"]


# -- one end of a connection, played with raw frames ---------------------------------------------------------------


class WireEnd:
    """
    The peer of an HTTP/2 protocol over a StringTransport, played with raw frames.  ``read()`` gives the frames
    the protocol wrote since the last read, header blocks (HEADERS + CONTINUATION) decoded into ``.fields`` of the
    HEADERS frame; ``received`` keeps all of them.  ``windows`` tracks what the protocol lets this end send.
    """

    other = "peer"  # who writes what read() parses, for its assertion messages

    def __init__(self, proto, offset=0):
        self.proto = proto
        self.transport = StringTransport()
        proto.makeConnection(self.transport)
        self.encoder = Encoder()
        self.decoder = Decoder()
        self.received = []
        self._offset = offset
        self._block = None
        self.initialWindow = 65535  # what the protocol lets this end send (RFC 9113 6.9.2), kept up to date
        self.windows = {0: 65535}

    def send(self, *parts):
        self.proto.dataReceived(b"".join(p if isinstance(p, bytes) else p.serialize() for p in parts))

    def maxFrameSize(self):
        """The largest frame read() accepts from the protocol; None: any."""
        return None

    def dataRead(self, frame):
        """Called by read() for each DATA frame from the protocol."""

    def read(self):
        data = self.transport.value()
        maxFrameSize = self.maxFrameSize()
        out = []
        while len(data) - self._offset >= 9:
            frame, length = Frame.parse_frame_header(memoryview(data[self._offset:self._offset + 9]))
            end = self._offset + 9 + length
            assert end <= len(data), "a partial frame on the wire"
            if maxFrameSize is not None:
                assert length <= maxFrameSize, "%r exceeds SETTINGS_MAX_FRAME_SIZE %d" % (frame, maxFrameSize)
            frame.parse_body(memoryview(data[self._offset + 9:end]))
            self._offset = end
            if isinstance(frame, HeadersFrame):
                self._block = [frame, frame.data]
            elif isinstance(frame, ContinuationFrame):
                assert self._block is not None, "CONTINUATION without HEADERS from the %s" % self.other
                self._block[1] += frame.data
            if isinstance(frame, (HeadersFrame, ContinuationFrame)) and "END_HEADERS" in frame.flags:
                headers, block = self._block
                headers.fields = self.decoder.decode(block, raw=True)
                self._block = None
            elif isinstance(frame, DataFrame):
                self.dataRead(frame)
            elif isinstance(frame, WindowUpdateFrame):
                sid = frame.stream_id
                self.windows[sid] = self.windows.get(sid, self.initialWindow) + frame.window_increment
            elif isinstance(frame, SettingsFrame) and "ACK" not in frame.flags:
                self.initialWindow = frame.settings.get(SettingsFrame.INITIAL_WINDOW_SIZE, self.initialWindow)
            out.append(frame)
        self.received.extend(out)
        return out

    def headers(self, sid, fields, end, endHeaders=True, **kwargs):
        """A HEADERS frame of ``fields`` encoded with this end's HPACK state; ``flags`` adds to END_*."""
        flags = set(kwargs.pop("flags", ()))
        if end:
            flags.add("END_STREAM")
        if endHeaders:
            flags.add("END_HEADERS")
        return HeadersFrame(sid, data=self.encoder.encode(fields), flags=flags, **kwargs)

    def sendWindow(self, sid):
        """How much DATA the protocol's windows let this end send on ``sid`` now (RFC 9113 6.9)."""
        self.read()
        return min(self.windows.get(sid, self.initialWindow), self.windows[0])

    def sendData(self, frame):
        """Send a DATA frame, charging both windows for it; returns its flow-controlled length."""
        n = frame.flow_controlled_length
        self.windows[frame.stream_id] = self.windows.get(frame.stream_id, self.initialWindow) - n
        self.windows[0] -= n
        self.send(frame)
        return n

    def goaway(self):
        self.read()
        frames = [f for f in self.received if isinstance(f, GoAwayFrame)]
        return frames[-1] if frames else None

    def resets(self):
        self.read()
        return [(f.stream_id, f.error_code) for f in self.received if isinstance(f, RstStreamFrame)]


def assertGoaway(end, code):
    """The protocol sent GOAWAY with ``code`` to ``end`` (a WireEnd) and is closing; returns the GOAWAY."""
    g = end.goaway()
    assert g is not None, "no GOAWAY: %r" % (end.received,)
    assert g.error_code == code, g
    assert end.transport.disconnecting
    return g


def assertStreamOrGoaway(end, sid, code):
    """RFC 9113 5.4: a stream error (RST_STREAM) or a connection error (GOAWAY); returns "stream" or "connection"."""
    g = end.goaway()
    if g is not None:
        assert g.error_code == code, g
        assert end.transport.disconnecting
        return "connection"
    assert (sid, code) in end.resets(), end.received
    return "stream"
