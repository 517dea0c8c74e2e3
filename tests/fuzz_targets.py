"""
The fuzz targets of bench/fuzz.py (atheris, coverage-guided) and tests/test_fuzz.py (a bounded, seeded run of the
same targets in the suite): one function per codec or parser, taking any bytes.

A target returns normally or raises AssertionError when a property fails; any other exception that escapes is a
crash.  Properties checked, beyond "no crash":
  - only the codec's typed errors escape it (CodecError subclasses; ConfigError for mesh.yaml; the gRPC counter's
    MessageLimitExceeded);
  - split input decodes like whole input: the same bytes fed whole and in 2-3 splits (chosen from the bytes
    themselves, so a failing input reproduces) give the same events and the same error;
  - decode of encode is identity where there is an encoder (HPACK, Dubbo headers/heartbeats/error responses,
    hessian2 writer -> reader);
  - the HTTP/2 connection agrees with the ``h2`` library on whether the bytes are a connection error.
"""

import os
import pickle
import random
import struct
import tempfile
import zlib

import h2.config
import h2.connection
import h2.exceptions
from hpack import Decoder
from hpack.exceptions import HPACKError

import twisted.plugin

import txmesh.plugins
from txmesh import config, discovery_config
from txmesh.errors import ConfigError
from txmesh.protocols.dubbo import codec as dubbo
from txmesh.protocols import descriptor
from txmesh.protocols.dubbo.hessian2 import Hessian2Reader, Hessian2Writer, HessianError, RawValue
from txmesh.protocols.h2 import events as E
from txmesh.protocols.h2.frames import PREFACE
from txmesh.protocols.h2 import grpc
from txmesh.protocols.h2.codec import H2Connection
from txmesh.protocols.h2.hpack import MemoDecoder, StatelessEncoder
from txmesh.protocols.http1.codec import (
    BodyData,
    HTTPCodecError,
    InterimResponse,
    MessageComplete,
    RequestDecoder,
    RequestStarted,
    ResponseDecoder,
    ResponseStarted,
    TunnelData,
)

# -- helpers --------------------------------------------------------------------------------------------------------


def rngFor(data):
    """A random generator seeded by the input itself: a failing input reproduces with the same splits."""
    return random.Random(zlib.crc32(data) ^ len(data))


def splits(data, rng):
    """``data`` in 2 or 3 pieces at random places (an empty piece possible)."""
    cuts = sorted(rng.randint(0, len(data)) for _ in range(rng.randint(1, 2)))
    return [data[a:b] for a, b in zip([0] + cuts, cuts + [len(data)])]


_SNAPSHOTS = {}


def prepared(key, build):
    """
    A fresh copy of the object ``build()`` returns, unpickled from a snapshot taken on first use: the same state
    without redoing the setup on every input (the h2-client target's connections had sent three requests, encoding
    them each time was a third of its run).
    """
    blob = _SNAPSHOTS.get(key)
    if blob is None:
        blob = _SNAPSHOTS[key] = pickle.dumps(build(), pickle.HIGHEST_PROTOCOL)
    return pickle.loads(blob)


# -- HTTP/1.1 -------------------------------------------------------------------------------------------------------

def _httpEvents(events):
    """Events as comparable tuples; consecutive BodyData (or TunnelData) pieces merged, as splits cut bodies."""
    out = []
    for e in events:
        t = type(e)
        if t is BodyData or t is TunnelData:
            if out and out[-1][0] == t.__name__:
                out[-1] = (t.__name__, out[-1][1] + bytes(e.data))
            else:
                out.append((t.__name__, bytes(e.data)))
        elif t is RequestStarted:
            h = e.head
            out.append(("request", h.method, h.path, h.authority, list(h.headers.items()), h.version,
                        h.contentLength, e.keepAlive, e.expectContinue, e.chunked, e.upgrade))
        elif t is ResponseStarted:
            h = e.head
            out.append(("response", h.status, list(h.headers.items()), h.reason, h.version, h.contentLength,
                        e.keepAlive, e.chunked, e.upgrade))
        elif t is InterimResponse:
            out.append(("interim", e.status, list(e.headers.items())))
        elif t is MessageComplete:
            out.append(("complete", None if e.trailers is None else list(e.trailers.items())))
        elif isinstance(e, HTTPCodecError):
            out.append(("error",))
        else:
            raise AssertionError("unexpected event %r" % (e,))
    return out


def _feedHTTP(decoder, pieces, eof=False):
    """Events for ``pieces`` (an error as a final ("error",)); then the decoder's eof() if asked."""
    events = []
    try:
        for p in pieces:
            events += decoder.feed(p)
            if events and isinstance(events[-1], HTTPCodecError):
                break
        if eof:
            events += decoder.eof()
    except HTTPCodecError as e:
        assert e.status in (400, 413, 414, 431, 502), e.status
        events.append(e)
    return _httpEvents(events)


def http1Request(data):
    """RequestDecoder (small limits, to reach the 414/431 paths): whole and split give the same requests."""
    def decoder():
        return RequestDecoder(maxRequestLine=200, maxHeaderBytes=600, maxHeaders=12)
    whole = _feedHTTP(decoder(), [data])
    split = _feedHTTP(decoder(), splits(data, rngFor(data)))
    assert whole == split, (whole, split)


_METHODS = [b"GET", b"HEAD", b"POST", b"CONNECT"]


def http1Response(data):
    """
    ResponseDecoder: the first byte says which requests were sent (2 bits each: GET, HEAD, POST, CONNECT; the top bit
    of each pair's sum offers an upgrade), the rest is what the upstream answered, then it closes.
    """
    if not data:
        return
    plan = data[0]
    data = data[1:]

    def decoder():
        d = ResponseDecoder(maxStatusLine=200, maxHeaderBytes=600, maxHeaders=12)
        for i in range(4):
            d.expect(_METHODS[(plan >> (2 * i)) & 3], upgrade=bool(plan & 0x80) and i == 0)
        return d
    whole = _feedHTTP(decoder(), [data], eof=True)
    split = _feedHTTP(decoder(), splits(data, rngFor(data)), eof=True)
    assert whole == split, (whole, split)


# -- HTTP/2 ---------------------------------------------------------------------------------------------------------

def _norm(v):
    if isinstance(v, (bytes, bytearray, memoryview)):
        return bytes(v)
    if isinstance(v, list):
        return [(bytes(a), bytes(b)) for a, b in v]
    if isinstance(v, dict):
        return dict(v)
    return v


def _h2Event(e):
    names = []
    for k in type(e).__mro__:
        names += getattr(k, "__slots__", ())
    return (type(e).__name__,) + tuple(_norm(getattr(e, n)) for n in names)


def _listenerConnection(clientSide):
    """Our connection as the listener (or client protocol, having sent 3 requests) sets it up, its output taken."""
    conn = H2Connection(clientSide, maxConcurrentStreams=8, maxHeaderListSize=4096, streamWindow=65535,
                        connectionWindow=65535)
    conn.initiateConnection()
    if clientSide:
        conn.sendHeaders(1, [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"a"), (b":path", b"/")],
                         True)
        conn.sendHeaders(3, [(b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"a"), (b":path", b"/")])
        conn.sendHeaders(5, [(b":method", b"HEAD"), (b":scheme", b"http"), (b":authority", b"a"), (b":path", b"/")],
                         True)
    conn.dataToSend()
    return conn


def _fresh(clientSide, build):
    """``build(clientSide)``: the client side (3 requests encoded) copied from a snapshot, the server side built."""
    return prepared((build, clientSide), lambda: build(clientSide)) if clientSide else build(clientSide)


def _runH2(clientSide, pieces):
    """Our connection as the listener (or client protocol) drives it: events, the bytes written, the error code."""
    conn = _fresh(clientSide, _listenerConnection)
    events = []
    error = None
    try:
        for p in pieces:
            for e in conn.receiveData(p):
                events.append(_h2Event(e))
                if isinstance(e, E.RequestReceived) and not isinstance(e, E.ResponseReceived):
                    conn.streamAccepted(e.stream_id)
                elif isinstance(e, E.DataReceived):
                    conn.acknowledge(e.flow_controlled_length, e.stream_id)
    except E.ProtocolError as e:
        assert conn.closed
        error = e.error_code
    return events, conn.dataToSend(), error


def _libraryConnection(clientSide):
    """The ``h2`` library's connection on the same side (the client having sent the same 3 requests)."""
    conn = h2.connection.H2Connection(h2.config.H2Configuration(
        client_side=clientSide, header_encoding=None, validate_inbound_headers=False,
        normalize_inbound_headers=False, validate_outbound_headers=False))
    conn.initiate_connection()
    if clientSide:
        for sid, method, end in ((1, b"GET", True), (3, b"POST", False), (5, b"HEAD", True)):
            conn.send_headers(sid, [(b":method", method), (b":scheme", b"http"), (b":authority", b"a"),
                                    (b":path", b"/")], end_stream=end)
    return conn


def _h2Library(clientSide, data):
    """The connection error the ``h2`` library finds (on the same side, the same requests sent), or None."""
    conn = _fresh(clientSide, _libraryConnection)
    try:
        conn.receive_data(data)
    except h2.exceptions.ProtocolError as e:
        return "%s: %s" % (type(e).__name__, e)
    return None


def _h2(clientSide, data):
    whole = _runH2(clientSide, [data])
    split = _runH2(clientSide, splits(data, rngFor(data)))
    if whole[2] is None:
        assert whole == split, (whole, split)
    else:
        # a connection error drops the events of the feed it was found in: only the error must agree
        assert whole[2] == split[2], (whole[2], split[2])
    ours, theirs = h2Agreement(clientSide, data)
    assert (ours is None) == (theirs is None), ("txmesh", ours, "h2", theirs)


def h2Server(data):
    """H2Connection, server side, fed a client's bytes (preface included)."""
    _h2(False, data)


def h2Client(data):
    """H2Connection, client side, having sent requests on streams 1, 3 and 5, fed a server's bytes."""
    _h2(True, data)


def _frames(data, clientSide):
    """(type, stream id, payload) of the whole frames of ``data`` (the server's preface skipped)."""
    pos = 0 if clientSide else 24
    while pos + 9 <= len(data):
        n = int.from_bytes(data[pos:pos + 3], "big")
        sid = int.from_bytes(data[pos + 5:pos + 9], "big") & 0x7FFFFFFF
        yield data[pos + 3], sid, data[pos + 9:pos + 9 + n]
        pos += 9 + n


def _badPriorityOrAltsvc(data, clientSide):
    return any((t == 2 and len(p) != 5) or t == 0x0A for t, _, p in _frames(data, clientSide))


def _repeatedSetting(data, clientSide):
    for t, _, p in _frames(data, clientSide):
        ids = [p[i:i + 2] for i in range(0, len(p) - len(p) % 6, 6)] if t == 4 else []
        if len(set(ids)) < len(ids):
            return True
    return False


def _windowUpdateOnAStream(data, clientSide):
    """WINDOW_UPDATE with the reserved bit set, or of 0 on a stream: hyperframe refuses either frame outright."""
    return any(t == 8 and (p[:1] >= b"\x80" or (sid and p == b"\0\0\0\0")) for t, sid, p in _frames(data, clientSide))


def _goawayReceived(data, clientSide):
    return any(t == 7 for t, _, _ in _frames(data, clientSide))


def _errorGoawayReceived(data, clientSide):
    return any(t == 7 and p[4:8] != b"\0\0\0\0" for t, _, p in _frames(data, clientSide))


def _paddingLeavesNothing(data, clientSide):
    """A padded DATA or HEADERS frame whose padding takes all the room after the pad length (and priority)."""
    pos = 0 if clientSide else 24
    while pos + 9 <= len(data):
        n = int.from_bytes(data[pos:pos + 3], "big")
        t, flags, p = data[pos + 3], data[pos + 4], data[pos + 9:pos + 9 + n]
        if t in (0, 1) and flags & 0x8 and p and n - 1 - p[0] - (5 if t == 1 and flags & 0x20 else 0) == 0:
            return True
        pos += 9 + n
    return False


def _framesOnAStreamWeReset(data, clientSide):
    """
    h2's error is STREAM_CLOSED for a stream txmesh had itself reset (a stream error on a malformed message, which
    h2, not validating headers, took as a message and then closed normally).
    """
    theirs = _h2Library(clientSide, data) or ""
    if not theirs.startswith("StreamClosedError: "):
        return False
    sid = int(theirs.split(": ", 1)[1])
    conn = _fresh(clientSide, _defaultConnection)
    try:
        for e in conn.receiveData(data):
            if isinstance(e, E.StreamReset) and not e.remote_reset and e.stream_id == sid:
                return True
    except E.ProtocolError:
        pass
    return False


def _paddingIntoPriority(data, clientSide):
    """A HEADERS frame with PADDED and PRIORITY whose padding exceeds the room left after the priority fields."""
    pos = 0 if clientSide else 24
    while pos + 9 <= len(data):
        n = int.from_bytes(data[pos:pos + 3], "big")
        t, flags, p = data[pos + 3], data[pos + 4], data[pos + 9:pos + 9 + n]
        if t == 1 and flags & 0x28 == 0x28 and n >= 6 and p[0] > n - 6:
            return True
        pos += 9 + n
    return False


def _headerBlocks(data, clientSide):
    """(stream id, header block) of each HEADERS frame and its CONTINUATIONs, padding and priority taken off."""
    pos = 0 if clientSide else 24
    sid, block = None, b""
    while pos + 9 <= len(data):
        n = int.from_bytes(data[pos:pos + 3], "big")
        t, flags, p = data[pos + 3], data[pos + 4], data[pos + 9:pos + 9 + n]
        s = int.from_bytes(data[pos + 5:pos + 9], "big") & 0x7FFFFFFF
        pos += 9 + n
        if t == 1:
            skip = 1 if flags & 0x8 else 0
            pad = p[0] if skip and p else 0
            skip += 5 if flags & 0x20 else 0
            sid, block = s, p[skip:len(p) - pad]
        elif t == 9 and s == sid:
            block += p
        else:
            continue
        if flags & 0x4:
            yield sid, block
            sid, block = None, b""


def repeatedContentLength(data, clientSide):
    """
    A message carrying content-length more than once on a stream txmesh reset itself (a malformed message, RFC 9113
    8.1.1, RFC 9110 8.6); h2 calls differing values a connection error.
    """
    decoder = Decoder()
    repeated = set()
    try:
        for sid, block in _headerBlocks(data, clientSide):
            if sum(k.lower() == b"content-length" for k, _ in decoder.decode(block, raw=True)) > 1:
                repeated.add(sid)
    except HPACKError:
        pass
    if not repeated:
        return False
    conn = _fresh(clientSide, _defaultConnection)
    try:
        for e in conn.receiveData(data):
            if isinstance(e, E.StreamReset) and not e.remote_reset and e.stream_id in repeated:
                return True
    except E.ProtocolError:
        pass
    return False


# Where txmesh and h2 judge the same whole frames differently, and why: (a substring of txmesh's error, of h2's,
# a condition on the input or None).  A disagreement matching none of these fails the target.
DIVERGENCES = [
    # RFC 9113 3.4: the first frame must be SETTINGS; h2 does not check it
    ("the first frame is not SETTINGS", None, None),
    # RFC 9113 6.8: the sender of a GOAWAY may go on sending on its streams (txmesh reads them after a graceful
    # GOAWAY and stops reading after one with an error); h2 refuses any frame once it has received a GOAWAY
    (None, "in state ConnectionState.CLOSED", _goawayReceived),
    # after the peer's GOAWAY with an error txmesh reads nothing more; h2 goes on judging the frames that follow
    (None, "", _errorGoawayReceived),
    # RFC 9113 6.1/6.2: padding is an error only when it *exceeds* the room left; hyperframe also refuses padding that
    # leaves an empty payload or header block fragment
    (None, "invalid padding", _paddingLeavesNothing),
    # RFC 9113 5.1: frames on a stream closed by the peer's RST_STREAM MAY be a connection error (STREAM_CLOSED),
    # which txmesh makes them; h2 makes them a stream error
    ("on closed stream", None, None),
    # RFC 9113 8.1.1: a request carrying :status is malformed, a stream error (the listener's readRequest resets it);
    # h2 reads it as a 1xx response with END_STREAM and makes it a connection error
    (None, "Cannot set END_STREAM on informational responses", None),
    # the same without END_STREAM (a :status starting with "1", e.g. "127.0.0.1:52923", on a request's HEADERS)
    (None, "Invalid input StreamInputs.RECV_INFORMATIONAL_HEADERS in state 0", None),
    # RFC 9113 5.1: after sending RST_STREAM an endpoint MUST ignore the frames it still receives on that stream;
    # txmesh resets a stream carrying a malformed message (e.g. a response with :method and no :status, 8.1.1),
    # h2 (headers not validated) takes the message, closes the stream normally, and then makes the next frame on
    # it a connection error (STREAM_CLOSED)
    (None, "StreamClosedError", _framesOnAStreamWeReset),
    # RFC 9113 6.2: with PADDED and PRIORITY, padding that exceeds the room left after the priority is a
    # PROTOCOL_ERROR; hyperframe checks the padding against the payload without the priority and takes the frame
    ("padding as long as the frame", None, _paddingIntoPriority),
    # RFC 9113 8.4: a server must treat a client's PUSH_PROMISE as a connection error; h2 does not
    ("PUSH_PROMISE", None, None),
    # RFC 9113 5.1: frames other than HEADERS/PRIORITY on an idle stream are a connection error; h2 lets some pass
    ("idle stream", None, None),
    # RFC 9113 6.5.3: SETTINGS values are processed in order; hyperframe keeps only the last of a repeated one
    ("ENABLE_PUSH", None, _repeatedSetting),
    ("INITIAL_WINDOW_SIZE", None, _repeatedSetting),
    ("MAX_FRAME_SIZE", None, _repeatedSetting),
    ("window overflows", None, _repeatedSetting),
    (None, "InvalidSettingsValueError", _repeatedSetting),
    (None, "FlowControlError", _repeatedSetting),
    # RFC 9113 8.1.1: a malformed message (content-length against DATA, DATA before HEADERS, trailers without
    # END_STREAM) is a *stream* error, which txmesh answers with RST_STREAM; h2 makes it a connection error
    (None, "InvalidBodyLengthError", None),
    (None, "Invalid content-length", None),
    # the same for content-length given twice (txmesh refuses a repeated one even when the values agree, as RFC 9110
    # 8.6 allows): a stream error to txmesh, a connection error to h2 when the values differ
    (None, "Conflicting content-length headers", repeatedContentLength),
    (None, "cannot receive data before headers", None),
    (None, "Trailers must have END_STREAM set", None),
    # RFC 9113 5.3.1 (RFC 7540): a stream depending on itself is a stream error; h2 makes it a connection error
    (None, "may not depend on itself", None),
    # SETTINGS_ENABLE_CONNECT_PROTOCOL (8, RFC 8441) other than 0/1: txmesh offers no extended CONNECT, so for it the
    # setting is unsupported and ignored (RFC 9113 6.5.2); h2 implements RFC 8441 and refuses the value
    (None, "Setting 8 has invalid value", None),
    # RFC 9113 6.3: PRIORITY of a length other than 5 is a stream error; RFC 7838 4: a malformed ALTSVC (type 0xa,
    # an extension frame to txmesh, which ignores it, RFC 9113 5.5) is ignored; hyperframe refuses both outright
    (None, "FrameDataMissingError", _badPriorityOrAltsvc),
    # RFC 9113 6.9: WINDOW_UPDATE's reserved bit is ignored on receipt, and an increment of 0 on a stream is a stream
    # error (ignored on a stream already closed); hyperframe refuses both frames outright
    (None, "non-compliant data", _windowUpdateOnAStream),
]


def wholeFrames(data, clientSide):
    """``data`` up to the end of its last complete frame (the preface kept): what both libraries must judge alike."""
    pos = 0 if clientSide else 24
    if not clientSide and not data.startswith(PREFACE):
        return data if len(data) >= 24 else b""
    while pos + 9 <= len(data):
        end = pos + 9 + int.from_bytes(data[pos:pos + 3], "big")
        if end > len(data):
            break
        pos = end
    return data[:pos]


def _defaultConnection(clientSide):
    """Our connection with its default settings (the client having sent the same 3 requests as h2's)."""
    conn = H2Connection(clientSide)
    conn.initiateConnection()
    if clientSide:
        for sid, method, end in ((1, b"GET", True), (3, b"POST", False), (5, b"HEAD", True)):
            conn.sendHeaders(sid, [(b":method", method), (b":scheme", b"http"), (b":authority", b"a"),
                                   (b":path", b"/")], end)
    return conn


def h2Agreement(clientSide, data):
    """
    (txmesh's connection error or None, the h2 library's or None) for the whole frames of ``data``, the
    disagreements RFC 9113 explains left out (see DIVERGENCES).
    """
    data = wholeFrames(data, clientSide)
    conn = _fresh(clientSide, _defaultConnection)
    ours = None
    try:
        for e in conn.receiveData(data):
            if isinstance(e, E.DataReceived):
                conn.acknowledge(e.flow_controlled_length, e.stream_id)
    except E.ProtocolError as e:
        ours = str(e)
    theirs = _h2Library(clientSide, data)
    if (ours is None) != (theirs is None):
        for mine, h2s, condition in DIVERGENCES:
            if ((mine is not None and ours is not None and mine in ours)
                    or (h2s is not None and theirs is not None and h2s in theirs)):
                if condition is None or condition(data, clientSide):
                    return None, None
    return ours, theirs


# -- HPACK ----------------------------------------------------------------------------------------------------------

def _decodeAll(decoder, blocks):
    out = []
    for b in blocks:
        try:
            out.append(decoder.decode(b, raw=True))
        except HPACKError as e:
            out.append(type(e).__name__)
            break
    return out


def hpackDecode(data):
    """
    MemoDecoder (a header list bound of 1 KiB) on the blocks in ``data`` (cut at 0xff 0xff; each decoded twice, so
    the memo is used) gives what hpack's own Decoder gives; fields built from ``data`` encode and decode back.
    """
    blocks = [b for b in data.split(b"\xff\xff") for _ in range(2)]
    memo = _decodeAll(MemoDecoder(max_header_list_size=1024), blocks)
    plain = _decodeAll(Decoder(max_header_list_size=1024), blocks)
    assert memo == plain, (memo, plain)
    # encode -> decode: fields from the bytes (name NUL value NUL ...); names lower case, as HTTP/2 sends them
    parts = data.split(b"\x00")
    fields = [(parts[i].lower(), parts[i + 1]) for i in range(0, len(parts) - 1, 2)]
    encoder = StatelessEncoder()
    if data[:1] == b"\x01":
        encoder.tableSizeChanged()
    decoded = Decoder().decode(encoder.encode(fields), raw=True)
    assert decoded == fields, (decoded, fields)


# -- gRPC -----------------------------------------------------------------------------------------------------------

def _countMessages(limit, pieces):
    counter = grpc.MessageCounter(limit)
    started = 0
    try:
        for p in pieces:
            n = counter.feed(p)
            assert n >= 0
            started += n
    except grpc.MessageLimitExceeded as e:
        return ("exceeded", e.length, e.limit)
    return ("ok", started, counter.messages)


def grpcFraming(data):
    """
    MessageCounter (the limit from the first two bytes) counts the same messages whole and split;
    parseTimeout on the input never raises and gives None or a non-negative number; encodeTimeout parses back.
    """
    if len(data) < 2:
        return
    limit = int.from_bytes(data[:2], "big")
    body = data[2:]
    whole = _countMessages(limit, [body])
    split = _countMessages(limit, splits(body, rngFor(body)))
    assert whole == split, (whole, split)
    for value in (data, data[:9], data[2:11]):
        t = grpc.parseTimeout(value)
        assert t is None or t >= 0, t
    ms = int.from_bytes(data[:8].ljust(8, b"\0"), "big") % (1 << 40) + 1
    t = grpc.parseTimeout(grpc.encodeTimeout(ms))
    expected = ms / 1000.0 if ms < 100000000 else min(ms // 1000, 99999999)
    assert t is not None and abs(t - expected) <= 1e-9 * expected, (ms, t)


# -- Dubbo and hessian2 ---------------------------------------------------------------------------------------------

def _frameTuple(f):
    return (f.header, f.body, f.isRequest, f.twoWay, f.event, f.serializationId, f.status, f.requestId)


def _decodeDubbo(pieces):
    decoder = dubbo.DubboDecoder(maxBodyBytes=4096)
    frames = []
    try:
        for p in pieces:
            frames += decoder.feed(p)
    except dubbo.DubboCodecError as e:
        assert e.fatal
        frames += e.frames
        return [_frameTuple(f) for f in frames], ("error", e.requestId, e.status, e.twoWay), frames
    return [_frameTuple(f) for f in frames], None, frames


def _checkFrame(frame):
    """Everything the listener and client protocols ask of a frame: typed errors only, re-encoding is faithful."""
    frame.isHeartbeat
    repr(frame)
    try:
        inv = frame.invocation
    except dubbo.DubboCodecError as e:
        assert not e.fatal and e.requestId == frame.requestId
        inv = None
    if inv is not None:
        repr(inv)
        inv.group, inv.interface
        again = dubbo.DubboDecoder(1 << 30).feed(dubbo.encodeRequestWithAttachments(frame, inv, inv.attachments))
        assert len(again) == 1, again
        inv2 = again[0].invocation
        assert (inv2.serviceName, inv2.methodName, inv2.parameterTypes, inv2.attachments) == \
            (inv.serviceName, inv.methodName, inv.parameterTypes, inv.attachments)
    try:
        dubbo.decodeResultFlag(frame)
    except dubbo.DubboCodecError as e:
        assert not e.fatal
    dubbo.decodeErrorMessage(frame)


def dubboDecode(data):
    """DubboDecoder (4 KiB body limit) whole and split; each frame's invocation, result flag and error message."""
    whole, wholeError, frames = _decodeDubbo([data])
    split, splitError, _ = _decodeDubbo(splits(data, rngFor(data)))
    assert (whole, wholeError) == (split, splitError), ((whole, wholeError), (split, splitError))
    for f in frames:
        _checkFrame(f)
    # encode -> decode of the frames txmesh writes itself, with an id, status and text from the input
    rid = int.from_bytes(data[:8].ljust(8, b"\0"), "big", signed=True)
    status = data[8] if len(data) > 8 else dubbo.SERVER_ERROR
    text = data[9:80].decode("utf-8", "replace")
    for wire, isRequest, event, st in (
            (dubbo.encodeHeartbeat(rid), True, True, 0),
            (dubbo.encodeHeartbeat(rid, isRequest=False), False, True, dubbo.OK),
            (dubbo.encodeResponse(rid, status, None, event=True), False, True, status),
            (dubbo.encodeResponse(rid, dubbo.SERVER_ERROR if status == dubbo.OK else status, text), False, False,
             dubbo.SERVER_ERROR if status == dubbo.OK else status)):
        [f] = dubbo.DubboDecoder().feed(wire)
        assert (f.requestId, f.isRequest, f.event, f.status) == (rid, isRequest, event, st), (f, rid)
        if event:
            assert f.isHeartbeat
        else:
            assert dubbo.decodeErrorMessage(f) == text, (dubbo.decodeErrorMessage(f), text)
    assert dubbo.withRequestId(wire, rid ^ 1)[4:12] == struct.pack(">q", rid ^ 1)


def _valuesFrom(data):
    """Simple values (str, int, bool, None) built from the bytes, for the writer -> reader round trip."""
    values = []
    pos = 0
    while pos < len(data):
        kind = data[pos] % 6
        n = data[pos + 1] if pos + 1 < len(data) else 0
        chunk = data[pos + 2:pos + 2 + n % 40]
        pos += 2 + n % 40
        if kind == 0:
            values.append(chunk.decode("utf-8", "replace"))
        elif kind == 1:
            values.append(chunk.decode("utf-16-le", "replace"))  # BMP and beyond, no lone surrogates
        elif kind == 2:
            values.append(int.from_bytes(chunk[:8], "big", signed=True))
        elif kind == 3:
            values.append(int.from_bytes(chunk[:4], "big", signed=True))
        elif kind == 4:
            values.append(bool(n & 1))
        else:
            values.append(None)
    return values


# values of the writer -> reader round trip, from the start of the input: the writer keeps no state between simple
# values, so more of them add time (they were over half of a run on long inputs), not paths
_ROUND_TRIP_VALUES = 16


def hessianRead(data):
    """
    Hessian2Reader over ``data``: skipping every value, reading a simple map and each kind of scalar raise only
    HessianError; values written by Hessian2Writer read back equal, and skip to exactly their end.
    """
    r = Hessian2Reader(data)
    try:
        while not r.atEnd():
            start = r.offset
            r.skipValue()
            assert r.offset > start
    except HessianError:
        pass
    for method in ("readSimpleMap", "readString", "readInt", "readLong", "readDouble", "readDate", "readBinary",
                   "readBool", "readNull", "readType", "readSimpleValue"):
        r = Hessian2Reader(data, maxDepth=8)
        try:
            getattr(r, method)()
            assert r.offset <= len(data)
        except HessianError:
            pass
    values = _valuesFrom(data)[:_ROUND_TRIP_VALUES]
    w = Hessian2Writer()
    for v in values:
        w.writeSimpleValue(v)
    attachments = {str(i): v for i, v in enumerate(values)}
    w.writeSimpleMap(attachments)
    encoded = w.getvalue()
    r = Hessian2Reader(encoded)
    got = [r.readSimpleValue() for _ in values]
    assert got == values and [type(v) for v in got] == [type(v) for v in values], (got, values)
    assert r.readSimpleMap() == attachments
    assert r.atEnd()
    r = Hessian2Reader(encoded)
    for _ in range(len(values) + 1):
        r.skipValue()
    assert r.atEnd()
    w = Hessian2Writer()
    w.writeSimpleValue(RawValue(data))
    assert w.getvalue() == data


# -- mesh.yaml ------------------------------------------------------------------------------------------------------

_EMPTY_DIR = tempfile.mkdtemp(prefix="txmesh-fuzz-")


_PLUGINS = {}
_PLUGIN_USERS = (config, discovery_config, descriptor)


def _samePlugins(interface, package):
    """twisted.plugin.getPlugins, once per interface and search path: the files do not change while the target runs
    (Twisted's scan of the plugin directories was a sixth of a run)."""
    key = (interface, package.__name__, tuple(package.__path__))
    found = _PLUGINS.get(key)
    if found is None:
        found = _PLUGINS[key] = list(twisted.plugin.getPlugins(interface, package))
    return iter(found)


def configLoads(data):
    """config.loads on the text (UTF-8, undecodable bytes replaced): a MeshConfig or a ConfigError, nothing else."""
    text = data.decode("utf-8", "replace")
    saved = list(txmesh.plugins.__path__)
    cwd = os.getcwd()
    os.chdir(_EMPTY_DIR)  # relative plugin_paths resolve here: nothing to import, no dropin.cache written in the tree
    for m in _PLUGIN_USERS:
        m.getPlugins = _samePlugins
    try:
        config.loads(text)
    except ConfigError as e:
        str(e)
    finally:
        for m in _PLUGIN_USERS:
            m.getPlugins = twisted.plugin.getPlugins
        os.chdir(cwd)
        txmesh.plugins.__path__[:] = saved


TARGETS = {
    "http1-request": http1Request,
    "http1-response": http1Response,
    "h2-server": h2Server,
    "h2-client": h2Client,
    "hpack": hpackDecode,
    "grpc": grpcFraming,
    "dubbo": dubboDecode,
    "hessian2": hessianRead,
    "config": configLoads,
}
