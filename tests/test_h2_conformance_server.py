"""
RFC 9113 conformance of the HTTP/2 listener, in the spirit of h2spec, at the wire only: a client played with raw
frames (hyperframe, hpack, or bytes by hand) talks to H2ServerProtocol over a StringTransport; the assertions are
on the frames that come back, on what the listener forwards to its filter chain, and on the public counters.
Nothing here looks inside the protocol's HTTP/2 machinery, so the suite survives a change of frame layer.

Where RFC 9113 lets an endpoint choose (a stream error or a connection error), both are accepted; where the
listener deviates from it today, the test states the RFC's behaviour and is a strict xfail.
"""

import struct

import pytest
from hpack import Encoder
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    PriorityFrame,
    PushPromiseFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)
from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure

from tests.h2wire import (ACK, CANCEL, COMPRESSION_ERROR, CONTINUATION, DATA, END_HEADERS, END_STREAM,
                          FLOW_CONTROL_ERROR, FRAME_SIZE_ERROR, GOAWAY, HEADERS, INTERNAL_ERROR, MAX_WINDOW, NO_ERROR,
                          PADDED, PING, PREFACE, PRIORITY, PROTOCOL_ERROR, REFUSED_STREAM, RST_STREAM, SETTINGS,
                          STREAM_CLOSED, WINDOW_UPDATE, ListenerConfig, Runtime, Template, WireEnd, assertGoaway,
                          assertStreamOrGoaway, dataBytes, dataFrames, rawFrame)
from txmesh.protocols.h2.server import GRPCListenerFactory, H2ListenerFactory
from txmesh.stream import HeaderMap, ResponseHead


def request(path=b"/x", extra=()):
    return [(b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"a.svc"), (b":path", path)] + list(extra)


class Client(WireEnd):
    """
    The client end of one connection to the listener, played with raw frames.  ``read()`` gives the frames the
    server wrote since the last read, header blocks (HEADERS + CONTINUATION) decoded into ``.fields`` of the
    HEADERS frame; ``received`` keeps all of them.
    """

    other = "server"

    def __init__(self, factoryClass=H2ListenerFactory, settings=None, preface=True):
        self.runtime = Runtime()
        self.stats = self.runtime.stats
        self.template = Template()
        self.factory = factoryClass(ListenerConfig(), self.template, self.runtime)
        super().__init__(self.factory.buildProtocol(None))
        self.serverPreface = []
        if preface:
            self.send(PREFACE, SettingsFrame(0, settings=settings or {}))
            self.serverPreface = self.read()

    def headers(self, sid, fields=None, end=True, endHeaders=True, **kwargs):
        return super().headers(sid, fields or request(), end, endHeaders, **kwargs)

    def forwarded(self):
        """What the chain saw, simply: ("headers", path, end), ("data", bytes, end), ("trailers", [...]), ..."""
        out = []
        for e in self.template.log:
            if e[0] == "headers":
                out.append(("headers", e[1].path, e[2]))
            elif e[0] == "trailers":
                out.append(("trailers", list(e[1].items())))
            else:
                out.append(e)
        return out

    def body(self):
        return b"".join(e[1] for e in self.template.log if e[0] == "data")

    def respond(self, index=0, body=None, headers=(), complete=True):
        """The chain answers stream ``index`` (in arrival order) with a 200 and ``body``."""
        s = self.template.streams[index]
        s.downstream.writeHeaders(ResponseHead(200, HeaderMap(list(headers)), version=(2, 0)), body is None)
        if body is not None:
            s.downstream.writeData(body, True)
        if complete:
            s.downstream.streamComplete(s)

    def lose(self):
        self.proto.connectionLost(Failure(ConnectionDone()))


def assertConnectionError(client, code):
    """The server sent GOAWAY with ``code`` and is closing; it forwarded no new request meanwhile."""
    return assertGoaway(client, code)


def assertStreamOrConnectionError(client, sid, code):
    """RFC 9113 5.4: a stream error (RST_STREAM) or, as any endpoint may choose, a connection error (GOAWAY)."""
    kind = assertStreamOrGoaway(client, sid, code)
    if kind == "stream":
        assert not client.transport.disconnecting
    return kind


def upload(client, frames):
    """
    Send DATA frames within the windows the server advertised, crediting its WINDOW_UPDATEs as they arrive, as a
    conforming client does.  Returns how many frames were left unsent because the windows stayed shut (a stall).
    """
    frames = list(frames)
    for i, f in enumerate(frames):
        if f.flow_controlled_length > client.sendWindow(f.stream_id):
            return len(frames) - i
        client.sendData(f)
    return 0


# -- 3.4 the connection preface ------------------------------------------------------------------------------------


def test_invalid_preface_closes_connection():
    """3.4: an invalid preface is a connection error (PROTOCOL_ERROR); the GOAWAY MAY be omitted."""
    c = Client(preface=False)
    c.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert c.transport.disconnecting
    g = c.goaway()
    assert g is None or g.error_code == PROTOCOL_ERROR
    assert c.template.streams == []
    assert c.stats.total("downstream_cx_protocol_error") == 1


def test_first_frame_not_settings_is_protocol_error():
    """3.4: the client preface is the magic followed by a SETTINGS frame; anything else is a PROTOCOL_ERROR."""
    c = Client(preface=False)
    c.read()
    c.send(PREFACE, PingFrame(0, opaque_data=b"12345678"))
    assertConnectionError(c, PROTOCOL_ERROR)
    assert not [f for f in c.received if isinstance(f, PingFrame)]


@pytest.mark.parametrize("factoryClass", [H2ListenerFactory, GRPCListenerFactory], ids=["http2", "grpc"])
def test_server_preface_is_settings_with_its_limits(factoryClass):
    """3.4, 6.5.2: the server's first frame is a non-ACK SETTINGS advertising its stream, window and header limits."""
    c = Client(factoryClass, preface=False)
    first = c.read()[0]
    assert isinstance(first, SettingsFrame) and "ACK" not in first.flags
    settings = first.settings
    assert settings[SettingsFrame.MAX_CONCURRENT_STREAMS] == 100
    assert settings[SettingsFrame.INITIAL_WINDOW_SIZE] == 1 << 20
    assert settings[SettingsFrame.MAX_HEADER_LIST_SIZE] == 65536
    # a server MUST NOT send SETTINGS_ENABLE_PUSH other than 0 (6.5.2)
    assert settings.get(SettingsFrame.ENABLE_PUSH, 0) == 0
    assert 16384 <= settings.get(SettingsFrame.MAX_FRAME_SIZE, 16384) <= 2 ** 24 - 1


def test_client_settings_are_acknowledged_once_each():
    """6.5.3: each SETTINGS from the peer is acknowledged by an empty SETTINGS with ACK."""
    c = Client(preface=False)
    c.read()
    c.send(PREFACE, SettingsFrame(0, settings={SettingsFrame.HEADER_TABLE_SIZE: 4096}))
    acks = [f for f in c.read() if isinstance(f, SettingsFrame) and "ACK" in f.flags]
    assert len(acks) == 1 and acks[0].settings == {}
    # an empty SETTINGS, and unknown identifiers (ignored, 6.5.2), are acknowledged all the same
    c.send(SettingsFrame(0, settings={0x99: 5, 0xFFFF: 1}), SettingsFrame(0))
    acks = [f for f in c.read() if isinstance(f, SettingsFrame) and "ACK" in f.flags]
    assert len(acks) == 2
    c.send(c.headers(1))
    assert c.forwarded() == [("headers", b"/x", True)]
    assert not c.transport.disconnecting


def test_preface_and_request_split_byte_by_byte():
    """4.1: frames may arrive in any split; a request fed one byte at a time is read exactly once."""
    c = Client(preface=False)
    data = PREFACE + SettingsFrame(0).serialize() + c.headers(1, end=False).serialize()
    data += DataFrame(1, b"hello", flags={"END_STREAM"}).serialize()
    for i in range(len(data)):
        c.send(data[i:i + 1])
    assert c.forwarded() == [("headers", b"/x", False), ("data", b"hello", True)]
    assert not c.transport.disconnecting


# -- 4.2 frame size ------------------------------------------------------------------------------------------------


def test_data_longer_than_max_frame_size():
    """4.2: a frame over SETTINGS_MAX_FRAME_SIZE (16384 here) is a FRAME_SIZE_ERROR; nothing of it is forwarded."""
    c = Client()
    c.send(c.headers(1, end=False))
    c.send(DataFrame(1, b"a" * 16385))
    assertStreamOrConnectionError(c, 1, FRAME_SIZE_ERROR)
    assert ("data", b"a" * 16385, False) not in c.forwarded()


def test_headers_longer_than_max_frame_size_is_connection_error():
    """4.2: an oversized frame that could change connection state (a header block) is a connection error."""
    c = Client()
    c.send(rawFrame(HEADERS, END_STREAM | END_HEADERS, 1, c.encoder.encode(request()) + b"\x00" * 16400))
    assertConnectionError(c, FRAME_SIZE_ERROR)
    assert c.template.streams == []


@pytest.mark.parametrize("frame", [
    rawFrame(PING, 0, 0, b"1234567"),
    rawFrame(PING, 0, 0, b"123456789"),
    rawFrame(RST_STREAM, 0, 1, b"\x00\x00\x08"),
    rawFrame(WINDOW_UPDATE, 0, 0, b"\x00\x00\x01"),
    rawFrame(WINDOW_UPDATE, 0, 0, b"\x00\x00\x00\x01\x00"),
    rawFrame(SETTINGS, 0, 0, b"\x00\x04\x00\x00\x01"),
], ids=["ping-7", "ping-9", "rst_stream-3", "window_update-3", "window_update-5", "settings-5"])
def test_control_frame_of_wrong_length(frame):
    """6.4, 6.5, 6.7, 6.9: PING (8 octets), RST_STREAM (4), WINDOW_UPDATE (4), SETTINGS (6n) of another length:
    a connection FRAME_SIZE_ERROR."""
    c = Client()
    c.send(frame)
    assertConnectionError(c, FRAME_SIZE_ERROR)
    assert c.stats.total("downstream_cx_protocol_error") == 1


def test_settings_ack_with_payload_is_frame_size_error():
    """6.5: a SETTINGS frame with ACK and a non-empty payload is a connection error of type FRAME_SIZE_ERROR."""
    c = Client()
    c.send(rawFrame(SETTINGS, ACK, 0, b"\x00\x04\x00\x00\x00\x01"))
    assertConnectionError(c, FRAME_SIZE_ERROR)


@pytest.mark.parametrize("payload", [b"\x00\x00\x00\x00", b"\x00\x00\x00\x00\x10\x00"], ids=["4", "6"])
def test_priority_of_wrong_length(payload):
    """6.3: a PRIORITY frame other than 5 octets is a (stream) FRAME_SIZE_ERROR."""
    c = Client()
    c.send(rawFrame(PRIORITY, 0, 1, payload))
    assertStreamOrConnectionError(c, 1, FRAME_SIZE_ERROR)


# -- 5.1.1 stream identifiers, 5.1 idle streams, 5.3.1 dependencies ------------------------------------------------


@pytest.mark.parametrize("kind,flags,payload", [
    (DATA, 0, b"x"),
    (HEADERS, END_HEADERS | END_STREAM, b"\x82"),
    (PRIORITY, 0, b"\x00\x00\x00\x00\x10"),
    (RST_STREAM, 0, b"\x00\x00\x00\x08"),
    (CONTINUATION, END_HEADERS, b"\x82"),
], ids=["data", "headers", "priority", "rst_stream", "continuation"])
def test_stream_frame_on_stream_zero(kind, flags, payload):
    """6.1-6.4, 6.10: frames that belong to a stream, on stream 0, are a connection PROTOCOL_ERROR."""
    c = Client()
    c.send(rawFrame(kind, flags, 0, payload))
    assertConnectionError(c, PROTOCOL_ERROR)
    assert c.template.streams == []


@pytest.mark.parametrize("kind,payload", [
    (SETTINGS, b""),
    (PING, b"abcdefgh"),
    (GOAWAY, b"\x00" * 8),
], ids=["settings", "ping", "goaway"])
def test_connection_frame_on_a_stream(kind, payload):
    """6.5, 6.7, 6.8: SETTINGS, PING and GOAWAY on a non-zero stream are a connection PROTOCOL_ERROR."""
    c = Client()
    c.send(rawFrame(kind, 0, 1, payload))
    assertConnectionError(c, PROTOCOL_ERROR)


def test_even_stream_id_from_client():
    """5.1.1: streams a client opens are odd; HEADERS on an even id is a connection PROTOCOL_ERROR."""
    c = Client()
    c.send(c.headers(2))
    assertConnectionError(c, PROTOCOL_ERROR)
    assert c.template.streams == []


def test_stream_id_lower_than_a_previous_one():
    """5.1.1: a new stream's id must exceed every id the client opened before; else connection PROTOCOL_ERROR."""
    c = Client()
    c.send(c.headers(5))
    c.send(c.headers(3))
    g = assertConnectionError(c, PROTOCOL_ERROR)
    assert g.last_stream_id == 5
    assert c.forwarded() == [("headers", b"/x", True)]


def test_reopening_a_closed_stream():
    """5.1, 5.1.1: HEADERS on a stream that was used and closed is STREAM_CLOSED (or PROTOCOL_ERROR); not forwarded."""
    c = Client()
    c.send(c.headers(1))
    c.respond()
    c.read()
    c.send(c.headers(1))
    g = c.goaway()
    if g is not None:
        assert g.error_code in (STREAM_CLOSED, PROTOCOL_ERROR)
    else:
        assert c.resets()[-1] in ((1, STREAM_CLOSED), (1, PROTOCOL_ERROR))
    assert len(c.template.streams) == 1


@pytest.mark.parametrize("frame", [
    DataFrame(1, b"x"),
    RstStreamFrame(1, error_code=CANCEL),
    WindowUpdateFrame(1, window_increment=10),
    ContinuationFrame(1, data=b"\x82", flags={"END_HEADERS"}),
], ids=lambda f: type(f).__name__)
def test_frame_on_idle_stream(frame):
    """5.1: on an idle stream only HEADERS and PRIORITY may arrive; anything else is a connection PROTOCOL_ERROR."""
    c = Client()
    c.send(frame)
    assertConnectionError(c, PROTOCOL_ERROR)
    assert c.template.streams == []


def test_priority_on_idle_stream_is_allowed():
    """5.1: PRIORITY may arrive on an idle stream; the stream then opens normally."""
    c = Client()
    c.send(PriorityFrame(3, depends_on=0, stream_weight=16))
    c.send(c.headers(3))
    assert c.forwarded() == [("headers", b"/x", True)]
    assert c.goaway() is None and c.resets() == []


@pytest.mark.parametrize("frame", [
    PriorityFrame(1, depends_on=1, stream_weight=16),
    HeadersFrame(1, data=Encoder().encode(request()), depends_on=1, stream_weight=16,
                 flags={"END_HEADERS", "END_STREAM", "PRIORITY"}),
], ids=["priority", "headers"])
def test_stream_depending_on_itself(frame):
    """5.3.1: a stream cannot depend on itself: a (stream) PROTOCOL_ERROR; the request is not forwarded."""
    c = Client()
    c.send(frame)
    assertStreamOrConnectionError(c, 1, PROTOCOL_ERROR)
    assert c.template.streams == []


# -- 4.3, 6.2, 6.10 header blocks ----------------------------------------------------------------------------------


@pytest.mark.parametrize("factoryClass", [H2ListenerFactory, GRPCListenerFactory], ids=["http2", "grpc"])
def test_headers_with_continuation_frames_make_one_request(factoryClass):
    """6.10: HEADERS without END_HEADERS, then CONTINUATIONs up to END_HEADERS, are one header block, one request."""
    c = Client(factoryClass)
    block = c.encoder.encode(request(extra=[(b"x-long", b"v" * 100)]))
    c.send(HeadersFrame(1, data=block[:5], flags={"END_STREAM"}),
           ContinuationFrame(1, data=block[5:40]),
           ContinuationFrame(1, data=block[40:], flags={"END_HEADERS"}))
    assert c.forwarded() == [("headers", b"/x", True)]
    assert c.template.log[0][1].headers.get(b"x-long") == b"v" * 100
    assert c.goaway() is None and c.resets() == []


@pytest.mark.parametrize("interloper", [
    PingFrame(0, opaque_data=b"12345678"),
    PriorityFrame(1, depends_on=0, stream_weight=16),
    DataFrame(1, b"x"),
    HeadersFrame(3, data=b"\x82", flags={"END_HEADERS"}),
    ContinuationFrame(3, data=b"\x82", flags={"END_HEADERS"}),
    rawFrame(0x77, 0, 1, b"ext"),
], ids=["ping", "priority", "data", "headers-other-stream", "continuation-other-stream", "extension"])
def test_frame_inside_a_header_block(interloper):
    """4.3, 5.5: a header block is contiguous: any other frame (even an extension one) before END_HEADERS is a
    connection PROTOCOL_ERROR."""
    c = Client()
    block = c.encoder.encode(request())
    c.send(HeadersFrame(1, data=block[:3], flags={"END_STREAM"}), interloper,
           ContinuationFrame(1, data=block[3:], flags={"END_HEADERS"}))
    assertConnectionError(c, PROTOCOL_ERROR)
    assert c.template.streams == []


@pytest.mark.parametrize("endStream", [False, True], ids=["open", "half-closed"])
def test_continuation_without_headers(endStream):
    """6.10: a CONTINUATION after a complete header block (END_HEADERS seen) is a connection PROTOCOL_ERROR, whether
    the stream is open or half-closed (remote) (5.1)."""
    c = Client()
    c.send(c.headers(1, end=endStream))
    c.send(ContinuationFrame(1, data=c.encoder.encode([(b"x-a", b"1")]), flags={"END_HEADERS"}))
    assertConnectionError(c, PROTOCOL_ERROR)
    assert c.forwarded() == [("headers", b"/x", endStream)]


_BAD_BLOCKS = {
    "index-out-of-range": b"\xbf",  # indexed field 63: no such entry in an empty dynamic table
    "table-size-over-setting": b"\x3f\xe2\x1f" + Encoder().encode(request()),  # size update to 4099 > 4096
    "table-size-update-at-end": Encoder().encode(request()) + b"\x20",  # RFC 7541 4.2: only at the start
    "bad-huffman": b"\x82\x86\x84\x41\x83\xff\xff\xff",  # EOS inside a Huffman string
}


@pytest.mark.parametrize("block", list(_BAD_BLOCKS.values()), ids=list(_BAD_BLOCKS))
def test_undecodable_header_block_is_compression_error(block):
    """4.3: a header block that cannot be decompressed leaves HPACK state unknown: a connection error of type
    COMPRESSION_ERROR, nothing forwarded."""
    c = Client()
    c.send(rawFrame(HEADERS, END_STREAM | END_HEADERS, 1, block))
    assertConnectionError(c, COMPRESSION_ERROR)
    assert c.template.streams == []


def test_table_size_update_within_the_setting_is_accepted():
    """RFC 7541 4.2, 6.3: a dynamic table size update at the start of a block, within the setting, is fine."""
    c = Client()
    c.send(rawFrame(HEADERS, END_STREAM | END_HEADERS, 1, b"\x20" + Encoder().encode(request())))
    assert c.forwarded() == [("headers", b"/x", True)]
    assert c.goaway() is None


def test_padded_headers():
    """6.2: PADDED HEADERS: the pad length octet and the padding are not part of the header block."""
    c = Client()
    c.send(c.headers(1, request(extra=[(b"x-a", b"1")]), flags={"PADDED"}, pad_length=40))
    assert c.forwarded() == [("headers", b"/x", True)]
    assert c.template.log[0][1].headers.get(b"x-a") == b"1"


def test_headers_with_priority_flag():
    """6.2: with PRIORITY the block follows 5 octets of priority, which are not header fields; PADDED may join in."""
    c = Client()
    c.send(c.headers(1, request(extra=[(b"x-a", b"1")]), flags={"PRIORITY", "PADDED"}, pad_length=3,
                     depends_on=0, stream_weight=200, exclusive=True))
    assert c.forwarded() == [("headers", b"/x", True)]
    assert c.template.log[0][1].headers.get(b"x-a") == b"1"
    assert c.goaway() is None


def test_padded_data_is_stripped():
    """6.1: PADDED DATA: only the data between the pad length octet and the padding is forwarded."""
    c = Client()
    c.send(c.headers(1, end=False))
    c.send(DataFrame(1, b"hello", flags={"PADDED"}, pad_length=200),
           DataFrame(1, b"", flags={"PADDED", "END_STREAM"}, pad_length=7))
    assert c.body() == b"hello"
    assert c.forwarded()[-1][2] is True
    assert c.goaway() is None and c.resets() == []


def test_padding_counts_in_flow_control_and_is_given_back():
    """6.1, 6.9.1: padding counts against the windows, and the server credits it back; a padded upload never stalls."""
    c = Client()
    c.send(c.headers(1, end=False))
    # 100 data bytes in 356-byte payloads: a server crediting only the data would shut the 1 MiB window by ~1.5 MiB
    frames = [DataFrame(1, b"p" * 100, flags={"PADDED"}, pad_length=255) for _ in range(6000)]
    assert upload(c, frames) == 0
    assert len(c.body()) == 600000
    assert c.goaway() is None and c.resets() == []


@pytest.mark.parametrize("kind,payload", [
    (HEADERS, b"\x0a\x82\x86"),  # pad length 10 in a 3-octet payload
    (DATA, b"\x04abc"),  # pad length 4 == payload length
], ids=["headers", "data"])
def test_pad_length_not_less_than_payload(kind, payload):
    """6.1, 6.2: padding as long as the payload or longer is a connection PROTOCOL_ERROR."""
    c = Client()
    if kind == DATA:
        c.send(c.headers(1, end=False))
    c.send(rawFrame(kind, PADDED | (END_HEADERS if kind == HEADERS else 0), 1, payload))
    assertConnectionError(c, PROTOCOL_ERROR)
    assert not [e for e in c.template.log if e[0] == "data"]


@pytest.mark.parametrize("payload,code", [
    (b"\x01\x00\x00\x00\x00\x10", PROTOCOL_ERROR),  # pad length 1, the priority, no room for the padding
    (b"\x03\x00\x00\x00\x00\x10\x82\x86", PROTOCOL_ERROR),  # padding (3) exceeds the 2 octets left
    (b"\x00\x00\x00\x00", FRAME_SIZE_ERROR),  # shorter than the pad length and priority fields
], ids=["padding-into-priority", "padding-past-fragment", "too-short"])
def test_padded_headers_with_priority(payload, code):
    """
    6.2: with PADDED and PRIORITY, padding that exceeds the room left after the priority is a PROTOCOL_ERROR; a
    frame too short for the two fields is a FRAME_SIZE_ERROR (4.2).  Found by the h2-server fuzzer: hyperframe
    takes the first two shapes.
    """
    c = Client()
    c.send(rawFrame(HEADERS, PADDED | 0x20 | END_HEADERS, 1, payload))  # 0x20: the PRIORITY flag
    assertConnectionError(c, code)


def test_padded_headers_with_priority_and_an_empty_fragment_are_legal():
    """6.2: padding may leave the field block fragment empty when CONTINUATION brings it."""
    c = Client()
    c.send(rawFrame(HEADERS, PADDED | 0x20, 1, b"\x01\x00\x00\x00\x00\x10\x00"))
    assert c.goaway() is None


# -- 5.1, 8.1 stream states ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["headers", "data"])
def test_data_after_end_stream(how):
    """5.1: half-closed (remote): DATA is a STREAM_CLOSED error; today a stream error, and the chain sees a reset."""
    c = Client()
    if how == "headers":
        c.send(c.headers(1, end=True))
    else:
        c.send(c.headers(1, end=False), DataFrame(1, b"abc", flags={"END_STREAM"}))
    c.send(DataFrame(1, b"more"))
    kind = assertStreamOrConnectionError(c, 1, STREAM_CLOSED)
    assert kind == "stream"  # what the listener does today: RST_STREAM(STREAM_CLOSED)
    assert c.template.log[-1][0] == "reset"
    assert b"more" not in c.body()


def test_second_non_trailer_headers_after_end_stream():
    """5.1: half-closed (remote): HEADERS again is STREAM_CLOSED."""
    c = Client()
    c.send(c.headers(1, end=True))
    c.send(c.headers(1, [(b"x-a", b"1")], end=True))
    assertStreamOrConnectionError(c, 1, STREAM_CLOSED)
    assert not [e for e in c.template.log if e[0] == "trailers"]


@pytest.mark.parametrize("factoryClass", [H2ListenerFactory, GRPCListenerFactory], ids=["http2", "grpc"])
def test_trailers_are_forwarded_as_trailers(factoryClass):
    """8.1: HEADERS with END_STREAM after DATA is the trailer section; it ends the request."""
    c = Client(factoryClass)
    c.send(c.headers(1, end=False), DataFrame(1, b"\x00\x00\x00\x00\x01z"))
    c.send(c.headers(1, [(b"x-checksum", b"abc")], end=True))
    assert c.forwarded() == [("headers", b"/x", False), ("data", b"\x00\x00\x00\x00\x01z", False),
                             ("trailers", [(b"x-checksum", b"abc")])]
    assert c.goaway() is None and c.resets() == []


def test_trailers_without_end_stream_are_refused():
    """8.1: a second HEADERS without END_STREAM (trailers must end the stream) makes the request malformed."""
    c = Client()
    c.send(c.headers(1, end=False))
    c.send(DataFrame(1, b"abc"))
    c.send(c.headers(1, [(b"x-t", b"1")], end=False))
    assertStreamOrConnectionError(c, 1, PROTOCOL_ERROR)
    c.lose()
    assert not [e for e in c.template.log if e[0] == "trailers"]
    assert not [e for e in c.template.log if e[0] == "data" and e[2]]
    assert c.template.log[-1][0] == "reset"


def test_trailers_with_a_pseudo_header_are_refused():
    """8.1: trailers MUST NOT include pseudo-header fields; such a request is malformed (PROTOCOL_ERROR)."""
    c = Client()
    c.send(c.headers(1, end=False), DataFrame(1, b"abc"))
    c.send(c.headers(1, [(b":path", b"/other")], end=True))
    assertStreamOrConnectionError(c, 1, PROTOCOL_ERROR)
    assert not [e for e in c.template.log if e[0] == "trailers"]


@pytest.mark.parametrize("fields", [
    [(b"X-Checksum", b"1")],
    [(b"connection", b"close")],
    [(b"x-checksum", b"a\r\nx-b: 1")],
], ids=["uppercase-name", "connection-specific", "crlf-in-value"])
def test_malformed_trailers_are_refused(fields):
    """8.1.1, 8.2.1, 8.2.2: trailers are field lines like any others: lower-case names, no connection-specific
    fields, no CR/LF/NUL in values; an intermediary must not forward them (a stream PROTOCOL_ERROR)."""
    c = Client()
    c.send(c.headers(1, end=False), DataFrame(1, b"abc"))
    c.send(c.headers(1, fields, end=True))
    assertStreamOrConnectionError(c, 1, PROTOCOL_ERROR)
    assert not [e for e in c.template.log if e[0] == "trailers"]


def test_client_reset_reaches_the_chain():
    """6.4: RST_STREAM from the client ends the stream at once; the chain sees a reset, the counter counts it."""
    c = Client()
    c.send(c.headers(1, end=False), DataFrame(1, b"abc"))
    c.send(RstStreamFrame(1, error_code=CANCEL))
    assert c.template.log[-1] == ("reset", "downstream_reset")
    assert c.stats.total("downstream_h2_rx_reset") == 1
    # the chain's late answer does not reach the wire
    c.respond(body=b"late")
    assert not [f for f in c.read() if f.stream_id == 1]


@pytest.mark.parametrize("frame", [
    DataFrame(1, b"late"),
    HeadersFrame(1, data=Encoder().encode([(b"x-t", b"1")]), flags={"END_HEADERS", "END_STREAM"}),
], ids=["data", "headers"])
def test_frames_after_clients_reset_are_stream_closed(frame):
    """5.1: after receiving RST_STREAM, any frame but PRIORITY is a STREAM_CLOSED error; nothing reaches the chain."""
    c = Client()
    c.send(c.headers(1, end=False), RstStreamFrame(1, error_code=CANCEL))
    before = list(c.template.log)
    c.send(frame)
    assertStreamOrConnectionError(c, 1, STREAM_CLOSED)
    assert c.template.log == before


@pytest.mark.parametrize("frame", [
    PriorityFrame(1, depends_on=0, stream_weight=16),
    RstStreamFrame(1, error_code=CANCEL),
    WindowUpdateFrame(1, window_increment=100),
], ids=["priority", "rst_stream", "window_update"])
def test_control_frames_after_clients_reset(frame):
    """5.1, 5.4.2: PRIORITY after RST_STREAM is fine, RST_STREAM is never answered with RST_STREAM; the
    connection carries on."""
    c = Client()
    c.send(c.headers(1, end=False), RstStreamFrame(1, error_code=CANCEL))
    c.read()
    c.send(frame)
    if isinstance(frame, WindowUpdateFrame):
        # ignored today; the RFC's reading also allows a STREAM_CLOSED stream error
        assert c.resets() in ([], [(1, STREAM_CLOSED)])
    else:
        assert c.resets() == []
    assert c.goaway() is None
    c.send(c.headers(3))
    assert c.forwarded()[-1] == ("headers", b"/x", True)


@pytest.mark.parametrize("frame", [
    WindowUpdateFrame(1, window_increment=100),
    RstStreamFrame(1, error_code=CANCEL),
    PriorityFrame(1, depends_on=0, stream_weight=16),
], ids=["window_update", "rst_stream", "priority"])
def test_late_control_frames_on_a_closed_stream_are_ignored(frame):
    """5.1, 6.9: WINDOW_UPDATE/RST_STREAM may cross the END_STREAM that closed a stream; they are not errors."""
    c = Client()
    c.send(c.headers(1))
    c.respond()
    c.read()
    c.send(frame)
    assert c.read() == []
    assert not c.transport.disconnecting
    c.send(c.headers(3))
    assert c.forwarded()[-1] == ("headers", b"/x", True)


def test_data_on_a_closed_stream():
    """5.1: DATA on a stream closed both ways is STREAM_CLOSED (stream or connection error)."""
    c = Client()
    c.send(c.headers(1))
    c.respond()
    c.read()
    c.send(DataFrame(1, b"x"))
    assertStreamOrConnectionError(c, 1, STREAM_CLOSED)
    assert len(c.template.streams) == 1


def test_frames_in_flight_on_streams_the_server_reset_still_count():
    """8.1: a server that answered before the request ended may stop it with RST_STREAM(NO_ERROR).  5.1 (closed):
    DATA and HEADERS that crossed that RST_STREAM are discarded, but DATA still counts toward the connection
    window (credited back) and header blocks still update HPACK state."""
    c = Client()
    stream, connection = c.initialWindow, c.windows[0]
    count = connection // stream + 1  # their stream windows together exceed the connection window
    for i in range(count):
        c.send(c.headers(1 + 2 * i, end=False))
        c.respond(i)
        frames = c.read()
        assert "END_STREAM" in [f for f in frames if isinstance(f, HeadersFrame)][0].flags
        assert [(f.stream_id, f.error_code) for f in frames if isinstance(f, RstStreamFrame)] == [(1 + 2 * i, NO_ERROR)]
    # each stream's window of DATA was in flight; a server that does not credit it shuts the connection window
    for i in range(count):
        assert upload(c, [DataFrame(1 + 2 * i, b"d" * 16384) for _ in range(stream // 16384)]) == 0
    # trailers in flight add to the HPACK dynamic table, which the next request refers to
    c.send(c.headers(1, [(b"x-fresh", b"1")], end=True))
    c.send(c.headers(1 + 2 * count, request(extra=[(b"x-fresh", b"1")])))
    assert c.template.log[-1][1].headers.get(b"x-fresh") == b"1"
    assert c.goaway() is None
    assert not [e for e in c.template.log if e[0] == "data"]


# -- 5.2, 6.9 flow control -----------------------------------------------------------------------------------------


def test_window_update_zero_on_a_stream():
    """6.9: an increment of 0 on a stream is a (stream) PROTOCOL_ERROR."""
    c = Client()
    c.send(c.headers(1, end=False))
    c.send(WindowUpdateFrame(1, window_increment=0))
    assertStreamOrConnectionError(c, 1, PROTOCOL_ERROR)


def test_window_update_zero_on_the_connection():
    """6.9: an increment of 0 on stream 0 is a connection PROTOCOL_ERROR."""
    c = Client()
    c.send(WindowUpdateFrame(0, window_increment=0))
    assertConnectionError(c, PROTOCOL_ERROR)


def test_stream_window_overflow():
    """6.9.1: a stream window past 2^31-1 is a FLOW_CONTROL_ERROR (stream or connection error)."""
    c = Client()
    c.send(c.headers(1, end=False))
    c.send(WindowUpdateFrame(1, window_increment=MAX_WINDOW))
    assertStreamOrConnectionError(c, 1, FLOW_CONTROL_ERROR)


def test_connection_window_overflow():
    """6.9.1: the connection window past 2^31-1 is a connection FLOW_CONTROL_ERROR."""
    c = Client()
    c.send(WindowUpdateFrame(0, window_increment=MAX_WINDOW))
    assertConnectionError(c, FLOW_CONTROL_ERROR)


def test_data_beyond_the_advertised_stream_window():
    """6.9.1: a client sending more than the server's window is a FLOW_CONTROL_ERROR (stream or connection)."""
    c = Client()
    stream = c.initialWindow
    c.send(c.headers(1, end=False))
    c.template.streams[0].downstream.pauseReading()  # the chain reads no further: no WINDOW_UPDATE for stream 1
    for _ in range(stream // 16384):
        c.send(DataFrame(1, b"w" * 16384))
    c.send(DataFrame(1, b"w" * (stream % 16384)))
    assert c.goaway() is None and c.resets() == []
    assert not [f for f in c.received if isinstance(f, WindowUpdateFrame) and f.stream_id == 1]
    c.send(DataFrame(1, b"!"))
    assertStreamOrConnectionError(c, 1, FLOW_CONTROL_ERROR)
    assert not c.body().endswith(b"!")


def test_paused_reading_holds_window_updates_until_resumed():
    """5.2.2: the receiver's window is its backpressure: held while the chain pauses, reopened when it resumes."""
    c = Client()
    stream = c.initialWindow
    c.send(c.headers(1, end=False))
    s = c.template.streams[0]
    s.downstream.pauseReading()
    frames = [DataFrame(1, b"w" * 16384) for _ in range(stream // 16384)]
    assert upload(c, frames) == 0
    assert upload(c, [DataFrame(1, b"w")]) == 1  # the stream window is shut
    s.downstream.resumeReading()
    assert upload(c, [DataFrame(1, b"w", flags={"END_STREAM"})]) == 0
    assert len(c.body()) == stream + 1


def test_long_upload_keeps_flowing():
    """6.9: the server's WINDOW_UPDATEs keep a 4 MiB upload in 16 KiB frames going; every byte is forwarded."""
    c = Client()
    c.send(c.headers(1, end=False))
    frames = [DataFrame(1, b"%03d" % i * 5461 + b"u") for i in range(255)]
    frames.append(DataFrame(1, b"e" * 16384, flags={"END_STREAM"}))
    assert upload(c, frames) == 0
    assert c.body() == b"".join(f.data for f in frames)
    assert len(c.body()) == 4 << 20
    assert c.forwarded()[-1][2] is True
    assert c.goaway() is None and c.resets() == []


def test_response_respects_the_clients_stream_window():
    """6.9.1: with the client's INITIAL_WINDOW_SIZE 100, a 1000-byte body arrives only as the client opens windows."""
    c = Client(settings={SettingsFrame.INITIAL_WINDOW_SIZE: 100})
    c.send(c.headers(1))
    c.respond(body=b"r" * 1000)
    frames = c.read()
    assert [f for f in frames if isinstance(f, HeadersFrame)][0].fields == [(b":status", b"200")]
    assert dataBytes(frames) == 100
    c.send(WindowUpdateFrame(1, window_increment=300))
    assert dataBytes(c.read()) == 300
    c.send(WindowUpdateFrame(1, window_increment=1000))
    frames = dataFrames(c.read())
    assert sum(len(f.data) for f in frames) == 600
    assert "END_STREAM" in frames[-1].flags
    assert dataBytes(c.received) == 1000


def test_response_respects_the_clients_connection_window():
    """6.9.1: whatever the stream windows, DATA never exceeds the connection window (65535 until a WINDOW_UPDATE)."""
    c = Client(settings={SettingsFrame.INITIAL_WINDOW_SIZE: 1 << 20})
    c.send(c.headers(1), c.headers(3))
    c.respond(0, body=b"a" * 50000)
    c.respond(1, body=b"b" * 50000)
    assert dataBytes(c.read()) == 65535
    c.send(WindowUpdateFrame(0, window_increment=100000))
    c.read()
    assert dataBytes(c.received, 1) == 50000 and dataBytes(c.received, 3) == 50000


def test_initial_window_size_change_adjusts_open_streams():
    """6.9.2: a new SETTINGS_INITIAL_WINDOW_SIZE changes the windows of open streams by the difference."""
    c = Client(settings={SettingsFrame.INITIAL_WINDOW_SIZE: 100})
    c.send(c.headers(1))
    c.respond(body=b"r" * 1000)
    assert dataBytes(c.read()) == 100
    c.send(SettingsFrame(0, settings={SettingsFrame.INITIAL_WINDOW_SIZE: 600}))
    frames = c.read()
    assert [f for f in frames if isinstance(f, SettingsFrame) and "ACK" in f.flags]
    assert dataBytes(frames) == 500


def test_initial_window_size_decrease_can_make_a_window_negative():
    """6.9.2: a smaller SETTINGS_INITIAL_WINDOW_SIZE can make a window negative; nothing is sent till it is positive."""
    c = Client()
    c.send(c.headers(1))
    s = c.template.streams[0]
    s.downstream.writeHeaders(ResponseHead(200, version=(2, 0)), False)
    s.downstream.writeData(b"a" * 1000, False)
    assert dataBytes(c.read()) == 1000
    c.send(SettingsFrame(0, settings={SettingsFrame.INITIAL_WINDOW_SIZE: 500}))  # window: 500 - 1000 = -500
    s.downstream.writeData(b"b" * 1000, True)
    assert dataBytes(c.read()) == 0
    c.send(WindowUpdateFrame(1, window_increment=600))  # -500 + 600 = 100
    assert dataBytes(c.read()) == 100
    c.send(WindowUpdateFrame(1, window_increment=900))
    frames = dataFrames(c.read())
    assert sum(len(f.data) for f in frames) == 900 and "END_STREAM" in frames[-1].flags


def test_initial_window_size_change_overflowing_a_window():
    """6.9.2: a SETTINGS_INITIAL_WINDOW_SIZE change that takes a stream window past 2^31-1 is a connection
    FLOW_CONTROL_ERROR."""
    c = Client()
    c.send(c.headers(1, end=False))
    c.send(WindowUpdateFrame(1, window_increment=MAX_WINDOW - 65535))  # stream 1's window: exactly 2^31-1
    assert c.goaway() is None and c.resets() == []
    c.send(SettingsFrame(0, settings={SettingsFrame.INITIAL_WINDOW_SIZE: 65536}))
    assertConnectionError(c, FLOW_CONTROL_ERROR)


def test_last_of_repeated_settings_wins():
    """6.5.3: values in one SETTINGS are processed in order; of two INITIAL_WINDOW_SIZE values the last wins."""
    c = Client(preface=False)
    c.read()
    c.send(PREFACE, rawFrame(SETTINGS, 0, 0, struct.pack(">HIHI", 4, 100, 4, 1)))
    c.send(c.headers(1))
    c.respond(body=b"r" * 10)
    assert dataBytes(c.read()) == 1


# -- 6.5 SETTINGS --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("setting,value,code", [
    (SettingsFrame.ENABLE_PUSH, 2, PROTOCOL_ERROR),
    (SettingsFrame.INITIAL_WINDOW_SIZE, 2 ** 31, FLOW_CONTROL_ERROR),
    (SettingsFrame.MAX_FRAME_SIZE, 16383, PROTOCOL_ERROR),
    (SettingsFrame.MAX_FRAME_SIZE, 2 ** 24, PROTOCOL_ERROR),
], ids=["enable_push-2", "initial_window-2^31", "max_frame-16383", "max_frame-2^24"])
def test_invalid_setting_value(setting, value, code):
    """6.5.2: ENABLE_PUSH not 0/1, INITIAL_WINDOW_SIZE over 2^31-1, MAX_FRAME_SIZE outside 2^14..2^24-1."""
    c = Client()
    c.send(SettingsFrame(0, settings={setting: value}))
    assert not [f for f in c.read() if isinstance(f, SettingsFrame)]  # not acknowledged
    assertConnectionError(c, code)


def test_frames_never_exceed_the_clients_max_frame_size():
    """4.2, 6.5.2: DATA stays within the client's SETTINGS_MAX_FRAME_SIZE, default or raised."""
    for maxFrameSize in (16384, 32768):
        c = Client(settings={SettingsFrame.MAX_FRAME_SIZE: maxFrameSize})
        c.send(c.headers(1))
        c.respond(body=b"m" * 60000)
        frames = dataFrames(c.read())
        assert sum(len(f.data) for f in frames) == 60000
        assert max(len(f.data) for f in frames) <= maxFrameSize


def test_large_response_header_block_is_split_within_max_frame_size():
    """4.2, 6.10: a header block over the frame size goes out as HEADERS + CONTINUATION, each within it."""
    c = Client()
    c.send(c.headers(1))
    c.respond(headers=[(b"x-big", b"v" * 40000)])
    frames = c.read()
    kinds = [type(f) for f in frames]
    assert kinds[0] is HeadersFrame and set(kinds[1:]) == {ContinuationFrame}
    assert all(len(f.data) <= 16384 for f in frames)
    assert "END_HEADERS" in frames[-1].flags
    assert dict(frames[0].fields)[b"x-big"] == b"v" * 40000


def test_header_table_size_zero_is_honoured():
    """6.5.2: with the client's HEADER_TABLE_SIZE 0, response blocks decode without any dynamic table."""
    c = Client(settings={SettingsFrame.HEADER_TABLE_SIZE: 0})
    c.decoder.header_table_size = 0
    c.send(c.headers(1), c.headers(3))
    c.respond(0, headers=[(b"x-custom", b"same")])
    c.respond(1, headers=[(b"x-custom", b"same")])
    responses = [f for f in c.read() if isinstance(f, HeadersFrame)]
    assert [dict(f.fields)[b"x-custom"] for f in responses] == [b"same", b"same"]


# -- 6.7 PING ------------------------------------------------------------------------------------------------------


def test_ping_is_answered_with_the_same_data():
    """6.7: PING is answered by a PING with ACK and the same 8 octets (flags it does not know ignored, 4.1); a
    PING with ACK gets no answer."""
    c = Client()
    c.send(PingFrame(0, opaque_data=b"abcdefgh"), rawFrame(PING, 0xF0, 0, b"ABCDEFGH"),
           PingFrame(0, opaque_data=b"12345678", flags={"ACK"}))
    pongs = [f for f in c.read() if isinstance(f, PingFrame)]
    assert [(f.opaque_data, f.flags) for f in pongs] == [(b"abcdefgh", {"ACK"}), (b"ABCDEFGH", {"ACK"})]
    assert not c.transport.disconnecting


# -- 6.8 GOAWAY ----------------------------------------------------------------------------------------------------


def test_client_goaway_without_streams_closes():
    """6.8: after the client's GOAWAY with nothing open there is nothing left to do: the server closes."""
    c = Client()
    c.send(GoAwayFrame(0, last_stream_id=0))
    assert c.transport.disconnecting
    assert c.goaway() is None or c.goaway().error_code == NO_ERROR
    assert c.stats.total("downstream_h2_goaway_received") == 1


def test_client_graceful_goaway_lets_open_streams_finish():
    """6.8: the client's GOAWAY(NO_ERROR) says it opens no more streams; the open one still gets its response."""
    c = Client()
    c.send(c.headers(1), GoAwayFrame(0, last_stream_id=0))
    assert not c.transport.disconnecting
    c.respond()
    assert [f.stream_id for f in c.read() if isinstance(f, HeadersFrame)] == [1]
    assert c.transport.disconnecting


def test_client_goaway_with_error_closes_and_resets_streams():
    """6.8, 5.4.1: a GOAWAY with an error code ends the connection; the chain's open streams are reset."""
    c = Client()
    c.send(c.headers(1, end=False), GoAwayFrame(0, last_stream_id=0, error_code=INTERNAL_ERROR))
    assert c.transport.disconnecting
    c.lose()
    assert c.template.log[-1] == ("reset", "downstream_disconnect")


def test_drain_sends_goaway_and_lets_open_streams_finish():
    """6.8: a graceful shutdown is GOAWAY(NO_ERROR) naming the last stream processed; the connection ends after it."""
    c = Client()
    c.send(c.headers(1, end=False))
    c.factory.drain()
    g = c.goaway()
    assert (g.error_code, g.last_stream_id) == (NO_ERROR, 1)
    assert not c.transport.disconnecting
    c.send(DataFrame(1, b"end", flags={"END_STREAM"}))
    c.respond()
    assert c.transport.disconnecting
    assert c.forwarded() == [("headers", b"/x", False), ("data", b"end", True)]


def test_idle_timeout_drain_closes_once_open_streams_end():
    """6.8: a connection drained on its own (not by the listener: the idle timeout's path) also closes after the
    streams it let finish."""
    c = Client()
    c.send(c.headers(1, end=False))
    c.proto.drain()
    assert c.goaway().error_code == NO_ERROR and not c.transport.disconnecting
    c.send(DataFrame(1, b"end", flags={"END_STREAM"}))
    c.respond()
    assert c.transport.disconnecting


def test_streams_above_goaway_last_stream_id_are_not_processed():
    """6.8: streams above the GOAWAY's last-stream-id were declared unprocessed (the client may retry them
    elsewhere), so one that crossed the GOAWAY must not reach the chain (ignored or REFUSED_STREAM)."""
    c = Client()
    c.send(c.headers(1, end=False))
    c.factory.drain()
    c.send(c.headers(3))
    assert len(c.template.streams) == 1
    assert c.resets() in ([], [(3, REFUSED_STREAM)])


def test_graceful_goaway_names_the_last_stream_accepted_not_refused_or_malformed():
    """6.8: the last-stream-id is the last stream the server may act on.  Streams it refused (REFUSED_STREAM past
    MAX_CONCURRENT_STREAMS) or reset as malformed were not processed: the client may retry them elsewhere, so they
    must not raise it."""
    c = Client()
    for i in range(100):
        c.send(c.headers(1 + 2 * i, end=False))
    c.send(c.headers(201, end=False))  # past MAX_CONCURRENT_STREAMS
    assert c.resets() == [(201, REFUSED_STREAM)]
    c.factory.drain()
    g = c.goaway()
    assert (g.error_code, g.last_stream_id) == (NO_ERROR, 199)
    assert len(c.template.streams) == 100


@pytest.mark.parametrize("fields", [request(path=b"no-slash"), request(extra=[(b"content-length", b"3")])],
                         ids=["listener", "connection"])
def test_graceful_goaway_does_not_name_a_malformed_stream(fields):
    """Whether the listener (its fields) or the connection (content-length without a body) found it malformed."""
    c = Client()
    c.send(c.headers(1, end=False), c.headers(3, fields))
    assert c.resets() == [(3, PROTOCOL_ERROR)]
    c.factory.drain()
    g = c.goaway()
    assert (g.error_code, g.last_stream_id) == (NO_ERROR, 1)


def test_graceful_goaway_with_no_stream_accepted_names_zero():
    c = Client()
    c.send(c.headers(1, request(extra=[(b"connection", b"close")])))
    c.factory.drain()
    g = c.goaway()
    assert (g.error_code, g.last_stream_id) == (NO_ERROR, 0)
    assert c.transport.disconnecting


def test_error_goaway_names_the_last_stream_accepted():
    """6.8, 5.4.1: the GOAWAY of a connection error also names the last stream accepted, not the highest seen."""
    c = Client()
    c.send(c.headers(1, end=False), c.headers(3, request(path=b"")), c.headers(5, [(b":method", b"CONNECT"),
                                                                                    (b":authority", b"a:1")]))
    c.send(rawFrame(WINDOW_UPDATE, 0, 0, struct.pack(">I", 0)))  # a connection error
    g = assertConnectionError(c, PROTOCOL_ERROR)
    assert g.last_stream_id == 1


def test_flood_goaway_names_the_last_stream_accepted():
    c = Client()
    c.send(c.headers(1, end=False), c.headers(3, request(extra=[(b"te", b"gzip")])))
    c.send(PingFrame(0, opaque_data=b"12345678").serialize() * 100)
    g = assertConnectionError(c, 0xB)  # ENHANCE_YOUR_CALM
    assert g.last_stream_id == 1


# -- 5.5 extensions, 8.4 server push -------------------------------------------------------------------------------


def test_unknown_frame_types_are_ignored():
    """5.5, 4.1: frames of unknown type (any flags, any stream) are ignored; so are unknown flags and the R bit."""
    c = Client()
    c.send(rawFrame(0x77, 0xFF, 0, b"whatever"), rawFrame(0x0B, 0, 1, b"x" * 100))
    c.send(rawFrame(HEADERS, END_STREAM | END_HEADERS | 0xC0, 0x80000001, c.encoder.encode(request())))
    assert c.forwarded() == [("headers", b"/x", True)]
    c.respond()
    assert [f.stream_id for f in c.read() if isinstance(f, HeadersFrame)] == [1]
    assert c.goaway() is None and c.resets() == []


def test_unknown_frame_between_requests():
    """5.5: an extension frame between two requests (and inside a stream's body) changes nothing."""
    c = Client()
    c.send(c.headers(1, end=False), rawFrame(0x77, 0, 1, b"abc"), DataFrame(1, b"z", flags={"END_STREAM"}))
    c.respond()
    c.send(rawFrame(0x0B, 0, 0, b"q" * 10), c.headers(3))
    assert c.forwarded() == [("headers", b"/x", False), ("data", b"z", True), ("headers", b"/x", True)]
    assert c.goaway() is None


def test_push_promise_from_a_client():
    """8.4: a client cannot push; PUSH_PROMISE from it is a connection PROTOCOL_ERROR."""
    c = Client()
    c.send(c.headers(1, end=False))
    c.send(PushPromiseFrame(1, promised_stream_id=2, data=c.encoder.encode(request()), flags={"END_HEADERS"}))
    assertConnectionError(c, PROTOCOL_ERROR)
    assert len(c.template.streams) == 1


# -- 8.1.1 content-length ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("length,chunks", [(b"10", [b"abc"]), (b"3", [b"abc", b"d"])], ids=["short", "long"])
def test_content_length_disagreeing_with_data(length, chunks):
    """8.1.1: DATA that does not add up to content-length makes the request malformed: it never completes."""
    c = Client()
    c.send(c.headers(1, request(extra=[(b"content-length", length)]), end=False))
    for i, chunk in enumerate(chunks):
        c.send(DataFrame(1, chunk, flags={"END_STREAM"} if i == len(chunks) - 1 else set()))
    if assertStreamOrConnectionError(c, 1, PROTOCOL_ERROR) == "stream":
        c.respond()  # the chain's late answer (it was reset) stays off the wire
        assert not [f for f in c.read() if f.stream_id == 1]
    c.lose()
    assert not [e for e in c.template.log if e[0] == "data" and e[2]]
    assert c.template.log[-1][0] == "reset"


def test_content_length_with_no_body():
    """8.1.1: HEADERS with END_STREAM and a non-zero content-length is malformed, not a complete request."""
    c = Client()
    c.send(c.headers(1, request(extra=[(b"content-length", b"3")]), end=True))
    assertStreamOrConnectionError(c, 1, PROTOCOL_ERROR)
    assert not [e for e in c.template.log if e[0] == "headers" and e[2]]


# -- 5.1.2 concurrency ---------------------------------------------------------------------------------------------


def test_streams_past_max_concurrent_are_refused_and_hpack_stays_in_step():
    """5.1.2: a stream past SETTINGS_MAX_CONCURRENT_STREAMS gets RST_STREAM(REFUSED_STREAM); its header block
    still updates the HPACK table (4.3), so a later request referring to that entry decodes right."""
    c = Client()
    for i in range(100):
        c.send(c.headers(1 + 2 * i, end=False))
    # the refused block inserts x-fresh into the dynamic table; the next block refers to it by index
    c.send(c.headers(201, request(extra=[(b"x-fresh", b"v1")]), end=False))
    assert c.resets() == [(201, REFUSED_STREAM)]
    assert len(c.template.streams) == 100
    assert c.stats.total("downstream_h2_streams_refused") == 1
    c.send(RstStreamFrame(1, error_code=CANCEL))
    c.send(c.headers(203, request(extra=[(b"x-fresh", b"v1")])))
    assert len(c.template.streams) == 101
    assert c.template.log[-1][1].headers.get(b"x-fresh") == b"v1"
    assert c.goaway() is None
