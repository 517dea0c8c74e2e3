"""
RFC 9113 conformance of the HTTP/2 upstream client, in the spirit of h2spec, at the wire only: H2ClientProtocol
over a StringTransport, its requests made through stream handles (as the router does) with a recording responder,
the upstream server played with raw frames (hyperframe, hpack, or bytes by hand).  The assertions are on the frames
the client writes and on what the responder sees; nothing looks inside the protocol's HTTP/2 machinery.

Where RFC 9113 lets an endpoint choose (a stream error or a connection error), both are accepted; where the client
deviates from it today, the test states the RFC's behaviour and is a strict xfail.
"""

import struct

import pytest
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    PushPromiseFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from tests.h2wire import (CANCEL, COMPRESSION_ERROR, CONTINUATION, DATA, END_HEADERS, END_STREAM, FLOW_CONTROL_ERROR,
                          FRAME_SIZE_ERROR, HEADERS, INTERNAL_ERROR, MAX_WINDOW, PING, PREFACE, PROTOCOL_ERROR,
                          RST_STREAM, SETTINGS, STREAM_CLOSED, WINDOW_UPDATE, Responder, WireEnd, assertGoaway,
                          assertStreamOrGoaway, dataBytes, rawFrame)
from txmesh import errors
from txmesh.protocols.h2.client import H2ClientProtocol
from txmesh.stream import HeaderMap, RequestHead


class Server(WireEnd):
    """
    The upstream server end of one client connection, played with raw frames.  ``read()`` gives the frames the
    client wrote since the last read, header blocks decoded into ``.fields`` of the HEADERS frame, and checks
    that every DATA frame fits the windows this server granted (RFC 9113 6.9) and its SETTINGS_MAX_FRAME_SIZE.
    """

    other = "client"

    def __init__(self, settings=None, handshake=True):
        super().__init__(H2ClientProtocol(), len(PREFACE))
        assert self.transport.value().startswith(PREFACE)
        # what this server lets the client send: its own (announced) settings and WINDOW_UPDATEs
        self.settings = dict(settings or {})
        self.grantedInitial = 65535
        self.granted = {0: 65535}
        self.clientPreface = self.read()
        if handshake:
            self.sendSettings(self.settings)

    def sendSettings(self, settings):
        """SETTINGS from the server; the client applies them on receipt (its ACK follows)."""
        if SettingsFrame.INITIAL_WINDOW_SIZE in settings:
            delta = settings[SettingsFrame.INITIAL_WINDOW_SIZE] - self.grantedInitial
            self.grantedInitial = settings[SettingsFrame.INITIAL_WINDOW_SIZE]
            for sid in self.granted:
                if sid:
                    self.granted[sid] += delta
        self.settings.update(settings)
        self.send(SettingsFrame(0, settings=settings))

    def grant(self, sid, increment):
        """WINDOW_UPDATE from the server."""
        self.granted[sid] = self.granted.get(sid, self.grantedInitial) + increment
        self.send(WindowUpdateFrame(sid, window_increment=increment))

    def maxFrameSize(self):
        return self.settings.get(SettingsFrame.MAX_FRAME_SIZE, 16384)

    def dataRead(self, frame):
        n = frame.flow_controlled_length
        sid = frame.stream_id
        self.granted[sid] = self.granted.get(sid, self.grantedInitial) - n
        self.granted[0] -= n
        assert self.granted[sid] >= 0 and self.granted[0] >= 0, "DATA beyond the windows granted"

    def request(self, end=True, headers=(), version=(2, 0)):
        """A request through a new stream handle, as the router makes one; returns (handle, responder)."""
        h = self.proto.newStream()
        r = Responder()
        h.sendRequest(RequestHead(b"POST", b"/x", b"svc", HeaderMap(list(headers)), version=version), end, r)
        return h, r

    def headers(self, sid, fields, end=False, endHeaders=True, **kwargs):
        return super().headers(sid, fields, end, endHeaders, **kwargs)

    def sendData(self, frame):
        """Send DATA if the client's windows allow it (charging them); False if they are shut."""
        if frame.flow_controlled_length > self.sendWindow(frame.stream_id):
            return False
        super().sendData(frame)
        return True


def ok(status=b"200", extra=()):
    return [(b":status", status)] + list(extra)


def assertConnectionError(server, code, *responders):
    """The client sent GOAWAY with ``code``, dropped the connection and failed every open stream."""
    assertGoaway(server, code)
    for r in responders:
        assert r.failed() == [errors.BadUpstreamResponse], r.events


def assertStreamOrConnectionError(server, sid, code, responder):
    """RFC 9113 5.4: a stream error (RST_STREAM) or a connection error (GOAWAY); the stream's responder fails."""
    kind = assertStreamOrGoaway(server, sid, code)
    assert len(responder.failed()) == 1 and issubclass(responder.failed()[0], errors.UpstreamError)
    assert ("complete",) not in responder.events
    return kind


# -- 3.4 preface, 6.5 SETTINGS, 6.7 PING ---------------------------------------------------------------------------


def test_client_preface_then_settings():
    """3.4: the client sends the magic, then SETTINGS (push disabled: 8.4, 6.5.2), before anything else."""
    s = Server(handshake=False)
    first = s.clientPreface[0]
    assert isinstance(first, SettingsFrame) and "ACK" not in first.flags
    assert first.settings[SettingsFrame.ENABLE_PUSH] == 0
    assert first.settings[SettingsFrame.INITIAL_WINDOW_SIZE] == 1 << 20
    assert first.settings[SettingsFrame.MAX_HEADER_LIST_SIZE] == 65536
    assert {type(f) for f in s.clientPreface[1:]} <= {WindowUpdateFrame}


def test_server_preface_must_start_with_settings():
    """3.4: the server's preface is a SETTINGS frame; any other first frame is a connection PROTOCOL_ERROR."""
    s = Server(handshake=False)
    h, r = s.request()
    s.send(PingFrame(0, opaque_data=b"12345678"))
    assertConnectionError(s, PROTOCOL_ERROR, r)
    assert not [f for f in s.received if isinstance(f, PingFrame)]


def test_server_settings_are_acknowledged():
    """6.5.3: each SETTINGS from the server gets one empty SETTINGS ACK; unknown settings are ignored (6.5.2)."""
    s = Server(handshake=False)
    s.send(SettingsFrame(0, settings={SettingsFrame.MAX_CONCURRENT_STREAMS: 7}))
    s.send(SettingsFrame(0, settings={0x99: 1}), SettingsFrame(0))
    acks = [f for f in s.read() if isinstance(f, SettingsFrame)]
    assert [(f.flags, f.settings) for f in acks] == [({"ACK"}, {})] * 3
    assert not s.transport.disconnecting


def test_ping_is_answered_and_ping_ack_is_not():
    """6.7: PING is answered by PING with ACK and the same 8 octets; a PING ACK gets nothing back."""
    s = Server()
    s.read()
    s.send(PingFrame(0, opaque_data=b"abcdefgh"), PingFrame(0, opaque_data=b"12345678", flags={"ACK"}))
    pings = [f for f in s.read() if isinstance(f, PingFrame)]
    assert [(f.opaque_data, f.flags) for f in pings] == [(b"abcdefgh", {"ACK"})]


class Callbacks:
    """Stands in for the pool's record of the connection (IHTTP2ClientCallbacks)."""

    stats = None

    def __init__(self):
        self.events = []

    def capacityChanged(self):
        self.events.append("capacity")

    def goawayReceived(self, unprocessed):
        self.events.append(("goaway", [h.sid for h in unprocessed]))

    def connectionLost(self):
        self.events.append("lost")


def test_max_streams_follows_the_servers_setting():
    """5.1.2, 6.5.2: the client reports the server's SETTINGS_MAX_CONCURRENT_STREAMS, and notices changes."""
    s = Server(settings={SettingsFrame.MAX_CONCURRENT_STREAMS: 7})
    assert s.proto.maxStreams() == 7
    callbacks = Callbacks()
    s.proto.setCallbacks(callbacks)
    s.sendSettings({SettingsFrame.MAX_CONCURRENT_STREAMS: 2})
    assert s.proto.maxStreams() == 2
    assert callbacks.events == ["capacity"]


@pytest.mark.parametrize("setting,value,code", [
    (SettingsFrame.ENABLE_PUSH, 1, PROTOCOL_ERROR),
    (SettingsFrame.INITIAL_WINDOW_SIZE, 2 ** 31, FLOW_CONTROL_ERROR),
    (SettingsFrame.MAX_FRAME_SIZE, 16383, PROTOCOL_ERROR),
], ids=["enable_push-1", "initial_window-2^31", "max_frame-16383"])
def test_invalid_server_settings(setting, value, code):
    """6.5.2: a server may not send ENABLE_PUSH other than 0; INITIAL_WINDOW_SIZE and MAX_FRAME_SIZE bounds."""
    s = Server()
    h, r = s.request()
    s.send(SettingsFrame(0, settings={setting: value}))
    assertConnectionError(s, code, r)


# -- requests on the wire ------------------------------------------------------------------------------------------


def test_request_headers_on_the_wire():
    """8.3.1, 5.1.1, 8.2.2: pseudo-headers first, odd rising stream ids, no connection-specific fields."""
    s = Server()
    s.request()
    s.request(end=False, headers=[(b"content-type", b"application/grpc"), (b"connection", b"keep-alive"),
                                  (b"transfer-encoding", b"chunked"), (b"te", b"trailers, deflate")],
              version=(1, 1))
    s.request()
    frames = [f for f in s.read() if isinstance(f, HeadersFrame)]
    assert [f.stream_id for f in frames] == [1, 3, 5]
    assert ["END_STREAM" in f.flags for f in frames] == [True, False, True]
    assert frames[0].fields == [(b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"svc"),
                                (b":path", b"/x")]
    fields = frames[1].fields
    names = [k for k, v in fields]
    assert names[:4] == [b":method", b":scheme", b":authority", b":path"]
    assert not {b"connection", b"transfer-encoding", b"keep-alive", b"upgrade", b"host"} & set(names)
    assert [v for k, v in fields if k == b"te"] == [b"trailers"]


# -- 6.9 flow control of the request body --------------------------------------------------------------------------


def test_request_body_waits_for_the_servers_windows():
    """6.9.1, 4.2: a 200 KiB body goes out only as the server opens the stream and connection windows, in frames
    within SETTINGS_MAX_FRAME_SIZE (Server.read checks both on every DATA frame)."""
    s = Server(settings={SettingsFrame.INITIAL_WINDOW_SIZE: 1000})
    h, r = s.request(end=False)
    h.writeBody(b"b" * (200 << 10), True)
    assert dataBytes(s.read()) == 1000
    s.grant(1, 100000)  # the connection window (65535) is the limit now
    assert dataBytes(s.read()) == 64535
    s.grant(0, 1 << 20)
    assert dataBytes(s.read()) == 101000 - 65535
    s.grant(1, 1 << 20)
    frames = s.read()
    assert dataBytes(s.received) == 200 << 10
    assert "END_STREAM" in [f for f in frames if isinstance(f, DataFrame)][-1].flags
    assert r.events == []


def test_larger_max_frame_size_is_never_exceeded():
    """4.2: with the server's SETTINGS_MAX_FRAME_SIZE at 32768, DATA frames may grow up to it, never past it."""
    s = Server(settings={SettingsFrame.MAX_FRAME_SIZE: 32768, SettingsFrame.INITIAL_WINDOW_SIZE: 1 << 20})
    s.grant(0, 1 << 20)
    h, r = s.request(end=False)
    h.writeBody(b"b" * 100000, True)
    frames = [f for f in s.read() if isinstance(f, DataFrame)]
    assert dataBytes(frames) == 100000
    assert max(len(f.data) for f in frames) <= 32768


def test_initial_window_size_change_adjusts_a_blocked_body():
    """6.9.2: a new SETTINGS_INITIAL_WINDOW_SIZE from the server changes the open streams' windows by the
    difference, down to negative ones."""
    s = Server(settings={SettingsFrame.INITIAL_WINDOW_SIZE: 1000})
    h, r = s.request(end=False)
    h.writeBody(b"b" * 5000, True)
    assert dataBytes(s.read()) == 1000
    s.sendSettings({SettingsFrame.INITIAL_WINDOW_SIZE: 3000})
    frames = s.read()
    assert dataBytes(frames) == 2000
    assert [f for f in frames if isinstance(f, SettingsFrame) and "ACK" in f.flags]
    s.sendSettings({SettingsFrame.INITIAL_WINDOW_SIZE: 100})  # the window goes negative (-2900): nothing moves
    assert dataBytes(s.read()) == 0
    s.grant(1, 4900)
    assert dataBytes(s.read()) == 2000
    assert dataBytes(s.received) == 5000


# -- responses -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [b"100", b"103"])
def test_informational_response_is_not_the_response(status):
    """8.1: 1xx HEADERS come before the final response; the responder sees only the final one."""
    s = Server()
    h, r = s.request()
    s.send(s.headers(1, ok(status)), s.headers(1, ok(b"200", [(b"x-a", b"1")])),
           DataFrame(1, b"body", flags={"END_STREAM"}))
    assert [e for e in r.events if e[0] != "complete"] == [("headers", 200, False), ("data", b"body", True)]
    assert r.heads[0].headers.get(b"x-a") == b"1"


def test_informational_response_ending_the_stream():
    """8.1: a 1xx response cannot carry END_STREAM; it makes the response malformed (PROTOCOL_ERROR)."""
    s = Server()
    h, r = s.request()
    s.send(s.headers(1, ok(b"100"), end=True))
    assertStreamOrConnectionError(s, 1, PROTOCOL_ERROR, r)


def test_data_before_the_response_head():
    """8.1: a response starts with a HEADERS frame; DATA first makes it malformed (a stream PROTOCOL_ERROR)."""
    s = Server()
    h, r = s.request()
    s.send(DataFrame(1, b"body"))
    assertStreamOrConnectionError(s, 1, PROTOCOL_ERROR, r)
    assert r.body() == b""


def test_response_split_byte_by_byte():
    """4.1: frames may arrive in any split; a response fed one byte at a time is delivered exactly once."""
    s = Server()
    h, r = s.request()
    data = b"".join(f.serialize() for f in (
        s.headers(1, ok(extra=[(b"x-a", b"1")])), DataFrame(1, b"body", flags={"PADDED"}, pad_length=3),
        s.headers(1, [(b"grpc-status", b"0")], end=True)))
    for i in range(len(data)):
        s.send(data[i:i + 1])
    assert r.events == [("headers", 200, False), ("data", b"body", False), ("complete",),
                        ("trailers", [(b"grpc-status", b"0")])]


def test_response_with_continuation_frames():
    """6.10: a response header block in HEADERS + CONTINUATION frames is one response head."""
    s = Server()
    h, r = s.request()
    block = s.encoder.encode(ok(extra=[(b"x-long", b"v" * 300)]))
    s.send(HeadersFrame(1, data=block[:10]), ContinuationFrame(1, data=block[10:100]),
           ContinuationFrame(1, data=block[100:], flags={"END_HEADERS"}), DataFrame(1, b"z", flags={"END_STREAM"}))
    assert [e for e in r.events if e[0] != "complete"] == [("headers", 200, False), ("data", b"z", True)]
    assert r.heads[0].headers.get(b"x-long") == b"v" * 300


def test_frame_inside_a_response_header_block():
    """4.3, 6.10: any frame between HEADERS and its last CONTINUATION is a connection PROTOCOL_ERROR."""
    s = Server()
    h, r = s.request()
    block = s.encoder.encode(ok())
    s.send(HeadersFrame(1, data=block[:1]), PingFrame(0, opaque_data=b"12345678"),
           ContinuationFrame(1, data=block[1:], flags={"END_HEADERS"}))
    assertConnectionError(s, PROTOCOL_ERROR, r)


def test_padded_response():
    """6.1, 6.2: padding of HEADERS and DATA is stripped before the responder sees them."""
    s = Server()
    h, r = s.request()
    s.send(s.headers(1, ok(extra=[(b"x-a", b"1")]), flags={"PADDED"}, pad_length=30),
           DataFrame(1, b"body", flags={"PADDED"}, pad_length=100),
           DataFrame(1, b"", flags={"PADDED", "END_STREAM"}, pad_length=5))
    assert r.body() == b"body"
    assert r.heads[0].headers.get(b"x-a") == b"1"
    assert r.events[-1] == ("data", b"", True)


def test_trailers_are_delivered():
    """8.1: HEADERS with END_STREAM after DATA is the trailer section; it completes the response."""
    s = Server()
    h, r = s.request()
    s.send(s.headers(1, ok()), DataFrame(1, b"msg"), s.headers(1, [(b"grpc-status", b"0")], end=True))
    assert r.events == [("headers", 200, False), ("data", b"msg", False), ("complete",),
                        ("trailers", [(b"grpc-status", b"0")])]


def test_trailers_without_end_stream():
    """8.1: a HEADERS block after the final response without END_STREAM makes the response malformed."""
    s = Server()
    h, r = s.request()
    s.send(s.headers(1, ok()), DataFrame(1, b"msg"), s.headers(1, [(b"x-t", b"1")], end=False))
    assertStreamOrConnectionError(s, 1, PROTOCOL_ERROR, r)
    assert not [e for e in r.events if e[0] == "trailers"]


def test_response_without_status():
    """8.3.2: :status is mandatory in a response; one without it is malformed (a stream PROTOCOL_ERROR)."""
    s = Server()
    h, r = s.request()
    s.send(s.headers(1, [(b"x-a", b"1")], end=True))
    assertStreamOrConnectionError(s, 1, PROTOCOL_ERROR, r)


@pytest.mark.parametrize("length,chunks", [(b"10", [b"abc"]), (b"3", [b"abc", b"d"])], ids=["short", "long"])
def test_content_length_disagreeing_with_data(length, chunks):
    """8.1.1: a response whose DATA does not add up to content-length is malformed: it never completes."""
    s = Server()
    h, r = s.request()
    s.send(s.headers(1, ok(extra=[(b"content-length", length)])))
    for i, chunk in enumerate(chunks):
        s.send(DataFrame(1, chunk, flags={"END_STREAM"} if i == len(chunks) - 1 else set()))
    assertStreamOrConnectionError(s, 1, PROTOCOL_ERROR, r)
    assert not [e for e in r.events if e[0] == "data" and e[2]]


# -- 5.1 stream states, 6.4 RST_STREAM, 6.8 GOAWAY -----------------------------------------------------------------


def test_reset_from_the_server_fails_that_stream_only():
    """6.4: RST_STREAM ends one stream: its responder fails (remote reset), other streams go on."""
    s = Server()
    h1, r1 = s.request()
    h3, r3 = s.request()
    s.send(RstStreamFrame(1, error_code=INTERNAL_ERROR))
    assert r1.failed() == [errors.UpstreamRemoteReset]
    s.send(s.headers(3, ok(), end=True))
    assert r3.events == [("complete",), ("headers", 200, True)]
    assert s.goaway() is None and s.resets() == []


def test_data_after_the_response_ended():
    """5.1: DATA on a stream the server already ended is STREAM_CLOSED (stream or connection error)."""
    s = Server()
    h, r = s.request()
    s.send(s.headers(1, ok(), end=True))
    s.send(DataFrame(1, b"late"))
    g = s.goaway()
    if g is not None:
        assert g.error_code == STREAM_CLOSED
    else:
        assert s.resets() == [(1, STREAM_CLOSED)]
    assert r.events == [("complete",), ("headers", 200, True)]


@pytest.mark.parametrize("hook", [True, False], ids=["onGoaway", "no-hook"])
def test_goaway_reports_streams_above_last_stream_id(hook):
    """6.8: streams above GOAWAY's last-stream-id were not processed: reported for a retry (onGoaway) or failed;
    the ones at or below it carry on and finish."""
    s = Server()
    reported = []
    if hook:
        callbacks = Callbacks()
        callbacks.goawayReceived = lambda unprocessed: reported.extend(h.sid for h in unprocessed)
        s.proto.setCallbacks(callbacks)
    h1, r1 = s.request()
    h3, r3 = s.request()
    s.send(GoAwayFrame(0, last_stream_id=1))
    if hook:
        assert reported == [3] and r3.events == []
    else:
        assert r3.failed() == [errors.UpstreamReset]
    s.send(s.headers(1, ok(), end=True))
    assert r1.events == [("complete",), ("headers", 200, True)]


def test_graceful_goaway_lets_open_streams_finish():
    """6.8: GOAWAY(NO_ERROR) covering the open streams lets them complete on this connection."""
    s = Server()
    h1, r1 = s.request()
    h3, r3 = s.request()
    s.send(GoAwayFrame(0, last_stream_id=3))
    assert r1.events == [] and r3.events == []
    assert not s.transport.disconnecting
    s.send(s.headers(1, ok()), DataFrame(1, b"a", flags={"END_STREAM"}), s.headers(3, ok(), end=True))
    assert r1.body() == b"a" and r1.events[-1] == ("data", b"a", True)
    assert r3.events[-1] == ("headers", 200, True)
    assert s.goaway() is None


def test_push_promise_from_the_server():
    """8.4, 6.6: push was disabled in the client's SETTINGS; PUSH_PROMISE is a connection PROTOCOL_ERROR."""
    s = Server()
    h, r = s.request()
    s.send(PushPromiseFrame(1, promised_stream_id=2, flags={"END_HEADERS"}, data=s.encoder.encode(
        [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"svc"), (b":path", b"/p")])))
    assertConnectionError(s, PROTOCOL_ERROR, r)


_BAD_FRAMES = {
    "data-on-stream-0": (rawFrame(DATA, 0, 0, b"abc"), PROTOCOL_ERROR),
    "headers-on-stream-0": (rawFrame(HEADERS, END_HEADERS, 0, b"\x88"), PROTOCOL_ERROR),
    "oversized-data": (rawFrame(DATA, 0, 1, b"x" * 16385), FRAME_SIZE_ERROR),
    "ping-length-7": (rawFrame(PING, 0, 0, b"1234567"), FRAME_SIZE_ERROR),
    "settings-on-stream": (rawFrame(SETTINGS, 0, 1), PROTOCOL_ERROR),
    "window-update-0-on-connection": (rawFrame(WINDOW_UPDATE, 0, 0, b"\x00\x00\x00\x00"), PROTOCOL_ERROR),
    "connection-window-overflow": (rawFrame(WINDOW_UPDATE, 0, 0, struct.pack(">I", MAX_WINDOW)), FLOW_CONTROL_ERROR),
    "continuation-without-headers": (rawFrame(CONTINUATION, END_HEADERS, 1, b"\x88"), PROTOCOL_ERROR),
    "headers-on-even-stream": (rawFrame(HEADERS, END_HEADERS | END_STREAM, 2, b"\x88"), PROTOCOL_ERROR),
    "headers-on-idle-stream": (rawFrame(HEADERS, END_HEADERS | END_STREAM, 5, b"\x88"), PROTOCOL_ERROR),
    "rst-stream-on-idle-stream": (rawFrame(RST_STREAM, 0, 5, b"\x00\x00\x00\x08"), PROTOCOL_ERROR),
}


@pytest.mark.parametrize("frame,code", list(_BAD_FRAMES.values()), ids=list(_BAD_FRAMES))
def test_bad_frame_from_the_server_fails_every_stream(frame, code):
    """5.4.1: a connection error from the server: GOAWAY with its code, every open stream fails, connection dropped."""
    s = Server()
    h1, r1 = s.request()
    h3, r3 = s.request()
    s.send(s.headers(1, ok()))
    s.send(frame)
    assertConnectionError(s, code, r1, r3)


_BAD_BLOCKS = {
    "index-out-of-range": b"\xbf",
    "bad-huffman": b"\x88\x41\x83\xff\xff\xff",
}


@pytest.mark.parametrize("block", list(_BAD_BLOCKS.values()), ids=list(_BAD_BLOCKS))
def test_undecodable_response_header_block(block):
    """4.3: a header block that cannot be decompressed is a connection error of type COMPRESSION_ERROR; every open
    stream fails."""
    s = Server()
    h1, r1 = s.request()
    h3, r3 = s.request()
    s.send(rawFrame(HEADERS, END_HEADERS, 1, block))
    assertConnectionError(s, COMPRESSION_ERROR, r1, r3)


@pytest.mark.parametrize("fields", [
    [(b":status", b"2x0")],
    [(b":status", b"200"), (b":status", b"204")],
    [(b":status", b"200"), (b":path", b"/")],
    [(b"x-a", b"1"), (b":status", b"200")],
    [(b":status", b"200"), (b"X-Upper", b"1")],
    [(b":status", b"200"), (b"connection", b"close")],
    [(b":status", b"200"), (b"x-a", b"a\r\nx-b: 1")],
], ids=["bad-status", "two-statuses", "request-pseudo-header", "pseudo-after-regular", "uppercase-name",
        "connection-specific", "crlf-in-value"])
def test_malformed_response_head(fields):
    """8.1.1, 8.2.1, 8.2.2, 8.3, 8.3.2: an intermediary must not forward a malformed response (one :status of 3
    digits, pseudo-headers first and only response ones, lower-case names, no connection-specific fields, no
    CR/LF/NUL in values): a stream PROTOCOL_ERROR, the responder fails."""
    s = Server()
    h, r = s.request()
    s.send(s.headers(1, fields, end=True))
    assertStreamOrConnectionError(s, 1, PROTOCOL_ERROR, r)
    assert r.heads == []


def test_unknown_frames_are_ignored():
    """5.5: frames of unknown type, on any stream, are ignored; so are unknown flags (4.1)."""
    s = Server()
    h, r = s.request()
    s.send(rawFrame(0x55, 0xFF, 0, b"x"), rawFrame(0x55, 0, 1, b"yy"),
           rawFrame(HEADERS, END_STREAM | END_HEADERS | 0xC0, 1, s.encoder.encode(ok(b"204"))))
    assert r.events == [("complete",), ("headers", 204, True)]
    assert s.goaway() is None and s.resets() == []


# -- 6.9 flow control of the response ------------------------------------------------------------------------------


@pytest.mark.parametrize("increment,code", [(0, PROTOCOL_ERROR), (MAX_WINDOW, FLOW_CONTROL_ERROR)],
                         ids=["zero", "overflow"])
def test_bad_window_update_on_a_stream(increment, code):
    """6.9, 6.9.1: an increment of 0 is a PROTOCOL_ERROR, a window past 2^31-1 a FLOW_CONTROL_ERROR (stream or
    connection errors); the stream fails."""
    s = Server()
    h, r = s.request(end=False)
    s.send(WindowUpdateFrame(1, window_increment=increment))
    assertStreamOrConnectionError(s, 1, code, r)


def test_long_response_keeps_flowing():
    """6.9: the client's WINDOW_UPDATEs keep a 4 MiB response in 16 KiB frames going; every byte is delivered."""
    s = Server()
    h, r = s.request()
    s.send(s.headers(1, ok()))
    chunks = [b"%03d" % i * 5461 + b"r" for i in range(256)]
    for i, chunk in enumerate(chunks):
        assert s.sendData(DataFrame(1, chunk, flags={"END_STREAM"} if i == 255 else set())), "stalled at %d" % i
    assert r.body() == b"".join(chunks) and len(r.body()) == 4 << 20
    assert r.events[-1][2] is True
    assert s.goaway() is None and s.resets() == []


def test_response_padding_is_credited_back():
    """6.1, 6.9.1: padding counts against the client's windows and is given back; a padded response never stalls."""
    s = Server()
    h, r = s.request()
    s.send(s.headers(1, ok()))
    # 100 data bytes in 356-byte payloads: crediting only the data would shut the 1 MiB window by ~1.5 MiB
    for i in range(6000):
        assert s.sendData(DataFrame(1, b"p" * 100, flags={"PADDED"}, pad_length=255)), "stalled at %d" % i
    assert len(r.body()) == 600000


def test_data_beyond_the_clients_window():
    """6.9.1: a server sending more than the client's window is a FLOW_CONTROL_ERROR; the stream fails."""
    s = Server()
    h, r = s.request()
    s.send(s.headers(1, ok()))
    h.pauseReading()  # the router reads no further: the client's stream window shuts
    n = 0
    while s.sendData(DataFrame(1, b"w" * 16384)):
        n += 1
    assert n == (1 << 20) // 16384
    s.send(DataFrame(1, b"!"))
    assertStreamOrConnectionError(s, 1, FLOW_CONTROL_ERROR, r)


def test_paused_reading_holds_window_updates_until_resumed():
    """5.2.2: the client's window is the router's backpressure: held while paused, reopened when it resumes."""
    s = Server()
    h, r = s.request()
    s.send(s.headers(1, ok()))
    h.pauseReading()
    while s.sendData(DataFrame(1, b"w" * 16384)):
        pass
    assert not s.sendData(DataFrame(1, b"w"))
    h.resumeReading()
    assert s.sendData(DataFrame(1, b"w", flags={"END_STREAM"}))
    assert len(r.body()) == (1 << 20) + 1


def test_frames_in_flight_on_abandoned_streams_still_count():
    """5.1 (closed): after the client's RST_STREAM(CANCEL), frames the server had in flight are discarded, but DATA
    still counts toward the connection window (credited back) and header blocks still update HPACK state."""
    s = Server()
    count = s.windows[0] // s.initialWindow + 1  # their stream windows together exceed the connection window
    handles = [s.request() for _ in range(count)]
    for i, (h, r) in enumerate(handles):
        s.send(s.headers(1 + 2 * i, ok()))
        h.abandon()
    assert s.resets() == [(1 + 2 * i, CANCEL) for i in range(count)]
    # each stream's window of DATA, sent before the server saw the resets
    for i in range(count):
        for n in range(s.initialWindow // 16384):
            assert s.sendData(DataFrame(1 + 2 * i, b"d" * 16384)), "the connection window stayed shut"
    assert not s.transport.disconnecting and s.goaway() is None
    assert all(r.events == [("headers", 200, False)] for h, r in handles)
    # an abandoned stream's trailers add x-fresh to the HPACK table; the next response refers to it by index
    h, r = s.request()
    s.send(s.headers(1, [(b"x-fresh", b"1")], end=True))
    s.send(s.headers(1 + 2 * count, ok(extra=[(b"x-fresh", b"1")]), end=True))
    assert r.heads[0].headers.get(b"x-fresh") == b"1"
    assert s.goaway() is None
