"""
HTTP/2 frames (RFC 9113 section 4 and 6) for txmesh's own connection layer (L{txmesh.protocols.h2.codec}):
the frame and flag numbers, error codes, the events a connection reports, its typed errors, and the serialisers
of the frames it sends.  Frames are parsed in place by the connection (a 9-byte header read with one ``struct``
call, the payload sliced), so there is no frame object per frame.
"""

import enum
import struct

# frame types (RFC 9113 6)
DATA = 0x0
HEADERS = 0x1
PRIORITY = 0x2
RST_STREAM = 0x3
SETTINGS = 0x4
PUSH_PROMISE = 0x5
PING = 0x6
GOAWAY = 0x7
WINDOW_UPDATE = 0x8
CONTINUATION = 0x9

# flags
END_STREAM = 0x1
ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY_FLAG = 0x20

# settings (RFC 9113 6.5.2)
HEADER_TABLE_SIZE = 0x1
ENABLE_PUSH = 0x2
MAX_CONCURRENT_STREAMS = 0x3
INITIAL_WINDOW_SIZE = 0x4
MAX_FRAME_SIZE = 0x5
MAX_HEADER_LIST_SIZE = 0x6
ENABLE_CONNECT_PROTOCOL = 0x8  # RFC 8441 section 3: extended CONNECT (WebSocket over HTTP/2)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DEFAULT_WINDOW = 65535
DEFAULT_MAX_FRAME_SIZE = 16384
MAX_WINDOW = (1 << 31) - 1
MAX_STREAM_ID = (1 << 31) - 1

HEADER = struct.Struct(">BHBBL")  # length (24 bits, as 8 + 16), type, flags, stream id (R bit masked by reader)
_U32 = struct.Struct(">L")
_PAIR = struct.Struct(">HL")
_GOAWAY = struct.Struct(">LL")


class ErrorCodes(enum.IntEnum):
    """RFC 9113 section 7."""

    NO_ERROR = 0x0
    PROTOCOL_ERROR = 0x1
    INTERNAL_ERROR = 0x2
    FLOW_CONTROL_ERROR = 0x3
    SETTINGS_TIMEOUT = 0x4
    STREAM_CLOSED = 0x5
    FRAME_SIZE_ERROR = 0x6
    REFUSED_STREAM = 0x7
    CANCEL = 0x8
    COMPRESSION_ERROR = 0x9
    CONNECT_ERROR = 0xA
    ENHANCE_YOUR_CALM = 0xB
    INADEQUATE_SECURITY = 0xC
    HTTP_1_1_REQUIRED = 0xD


def codeName(code):
    """An error code's name, or its number if RFC 9113 does not name it."""
    try:
        return ErrorCodes(code).name
    except ValueError:
        return str(code)


# -- frames to send --------------------------------------------------------------------------------------------------

def frame(ftype, flags, sid, payload=b""):
    """One frame's bytes."""
    n = len(payload)
    return HEADER.pack(n >> 16, n & 0xFFFF, ftype, flags, sid) + payload


def settingsFrame(values):
    """SETTINGS with ``values`` ({code: value}, sent in code order)."""
    return frame(SETTINGS, 0, 0, b"".join(_PAIR.pack(k, v) for k, v in sorted(values.items())))


SETTINGS_ACK = frame(SETTINGS, ACK, 0)


def windowUpdateFrame(sid, increment):
    return frame(WINDOW_UPDATE, 0, sid, _U32.pack(increment))


def rstStreamFrame(sid, code):
    return frame(RST_STREAM, 0, sid, _U32.pack(code))


def goawayFrame(lastStreamId, code, debug=b""):
    return frame(GOAWAY, 0, 0, _GOAWAY.pack(lastStreamId, code) + debug)


def pingFrame(data, ack=False):
    return frame(PING, ACK if ack else 0, 0, data)


def headerFrames(sid, block, endStream, maxFrameSize):
    """HEADERS (and CONTINUATION frames past ``maxFrameSize``) carrying one encoded header block."""
    flags = END_STREAM if endStream else 0
    n = len(block)
    if n <= maxFrameSize:
        return HEADER.pack(n >> 16, n & 0xFFFF, HEADERS, flags | END_HEADERS, sid) + block
    out = [frame(HEADERS, flags, sid, block[:maxFrameSize])]
    pos = maxFrameSize
    while pos < n:
        chunk = block[pos:pos + maxFrameSize]
        pos += maxFrameSize
        out.append(frame(CONTINUATION, END_HEADERS if pos >= n else 0, sid, chunk))
    return b"".join(out)
