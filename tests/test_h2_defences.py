"""
HTTP/2 defences of the listener, driven in memory: raw frames crafted with hyperframe / an h2 client connection
go into H2ServerProtocol over a StringTransport; assertions are on the frames that come back and the counters.
"""

from h2.errors import ErrorCodes
from hpack import Decoder, Encoder
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    PriorityFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)
import pytest
from twisted.internet.testing import StringTransport

from tests.h2wire import PREFACE, ListenerConfig, Runtime, Template
from txmesh.config import H2Limits
from txmesh.protocols.h2.server import GRPCListenerFactory, H2ListenerFactory


def serve(factoryClass=H2ListenerFactory, h2Limits=None, runtime=None):
    runtime = runtime or Runtime()
    template = Template()
    factory = factoryClass(ListenerConfig(), template, runtime, h2Limits=h2Limits)
    proto = factory.buildProtocol(None)
    transport = StringTransport()
    proto.makeConnection(transport)
    proto.dataReceived(PREFACE + SettingsFrame(0).serialize())
    return proto, transport, template, runtime.stats


def rawFrames(transport):
    """The frames the server wrote so far, HEADERS decoded into ``.fields``."""
    data = transport.value()
    decoder = Decoder()
    out = []
    while len(data) >= 9:
        frame, length = Frame.parse_frame_header(memoryview(data[:9]))
        frame.parse_body(memoryview(data[9:9 + length]))
        data = data[9 + length:]
        if isinstance(frame, HeadersFrame):
            frame.fields = decoder.decode(frame.data, raw=True)
        out.append(frame)
    return out


def goaway(transport):
    for f in rawFrames(transport):
        if isinstance(f, GoAwayFrame):
            return f.error_code
    return None


def resets(transport):
    return [(f.stream_id, f.error_code) for f in rawFrames(transport) if isinstance(f, RstStreamFrame)]


def responses(transport):
    return [f for f in rawFrames(transport) if isinstance(f, HeadersFrame)]




def headersFrame(sid, fields, end=True, endHeaders=True, encoder=None):
    f = HeadersFrame(sid)
    f.data = (encoder or Encoder()).encode(fields)
    flags = set()
    if end:
        flags.add("END_STREAM")
    if endHeaders:
        flags.add("END_HEADERS")
    f.flags = flags
    return f.serialize()


def request(authority=b"a.svc", path=b"/x"):
    return [(b":method", b"POST"), (b":scheme", b"http"), (b":authority", authority), (b":path", path)]


def test_settings_advertise_finite_max_concurrent_streams():
    _, transport, _, _ = serve()
    settings = [f for f in rawFrames(transport) if isinstance(f, SettingsFrame) and f.settings][0]
    assert settings.settings[SettingsFrame.MAX_CONCURRENT_STREAMS] == 100


def test_streams_past_max_concurrent_are_refused():
    proto, transport, template, stats = serve()
    enc = Encoder()
    data = b"".join(headersFrame(1 + 2 * i, request(), end=False, encoder=enc) for i in range(101))
    proto.dataReceived(data)
    assert resets(transport) == [(201, ErrorCodes.REFUSED_STREAM)]
    assert len(template.streams) == 100
    assert not transport.disconnecting
    assert stats.total("downstream_h2_streams_refused") == 1
    # the connection still works: HPACK stayed in step
    proto.dataReceived(RstStreamFrame(1, error_code=8).serialize() + headersFrame(203, request(), encoder=enc))
    assert template.log[-1][0] == "headers" and template.log[-1][1].path == b"/x"


def test_rapid_reset_ends_connection_with_goaway():
    proto, transport, template, stats = serve()
    enc = Encoder()
    for i in range(150):
        sid = 1 + 2 * i
        proto.dataReceived(headersFrame(sid, request(), end=False, encoder=enc)
                           + RstStreamFrame(sid, error_code=8).serialize())
        if transport.disconnecting:
            break
    assert transport.disconnecting
    assert goaway(transport) == ErrorCodes.ENHANCE_YOUR_CALM
    assert stats.total("downstream_h2_flood_close", kind="rapid_reset") == 1
    assert stats.total("downstream_h2_goaway_sent") == 1
    assert 100 < len(template.streams) <= 102


def test_resets_after_responses_are_not_rapid_reset():
    proto, transport, template, stats = serve()
    enc = Encoder()
    for i in range(150):
        sid = 1 + 2 * i
        proto.dataReceived(headersFrame(sid, request(), end=True, encoder=enc))
        s = template.streams[-1]
        from txmesh.stream import ResponseHead
        s.downstream.writeHeaders(ResponseHead(200, version=(2, 0)), True)
        s.downstream.streamComplete(s)
    assert not transport.disconnecting


def _floodWhileNotReading(frame, count):
    # the rate bound out of the way: this is the bound on answers queued for a peer that does not read them
    proto, transport, _, stats = serve(h2Limits=H2Limits(maxInboundControlFramesPerSecond=10 ** 6))
    transport.producer.pauseProducing()  # the peer does not read: our write buffer is full
    proto.dataReceived(frame * count)
    return transport, stats


def test_ping_flood_closes_connection():
    transport, stats = _floodWhileNotReading(PingFrame(0, opaque_data=b"12345678").serialize(), 1100)
    assert transport.disconnecting
    assert goaway(transport) == ErrorCodes.ENHANCE_YOUR_CALM
    assert stats.total("downstream_h2_flood_close", kind="control_frames") == 1


def test_settings_flood_closes_connection():
    transport, stats = _floodWhileNotReading(SettingsFrame(0).serialize(), 1100)
    assert transport.disconnecting
    assert stats.total("downstream_h2_flood_close", kind="control_frames") == 1


def pingAcks(transport):
    return [f for f in rawFrames(transport) if isinstance(f, PingFrame) and "ACK" in f.flags]


@pytest.mark.parametrize("frame", [PingFrame(0, opaque_data=b"12345678"), SettingsFrame(0),
                                   PingFrame(0, opaque_data=b"12345678", flags={"ACK"})],
                         ids=["ping", "settings", "unasked-ping-ack"])
def test_control_flood_from_a_reading_peer_closes_connection(frame):
    """A client that reads our ACKs is bounded too: more than 100 PING/SETTINGS frames in a second of the
    listener's clock (its first SETTINGS is one of them) is a flood, whole or frame by frame."""
    proto, transport, _, stats = serve()
    for _ in range(99):
        proto.dataReceived(frame.serialize())
    assert not transport.disconnecting
    proto.dataReceived(frame.serialize())
    assert transport.disconnecting
    assert goaway(transport) == ErrorCodes.ENHANCE_YOUR_CALM
    assert stats.total("downstream_h2_flood_close", kind="control_frame_rate") == 1
    assert stats.total("downstream_h2_goaway_sent") == 1
    assert isinstance(rawFrames(transport)[-1], GoAwayFrame)  # nothing after the GOAWAY


def test_control_frames_at_the_rate_for_a_long_time_are_fine():
    runtime = Runtime()
    proto, transport, _, stats = serve(runtime=runtime)
    ping = PingFrame(0, opaque_data=b"12345678").serialize()
    for second in range(30):
        runtime.clock.advance(1)
        proto.dataReceived(ping * 99 + SettingsFrame(0).serialize())
    assert not transport.disconnecting
    assert len(pingAcks(transport)) == 30 * 99
    assert stats.total("downstream_h2_flood_close", kind="control_frame_rate") == 0


def test_configured_control_frame_rate():
    proto, transport, _, stats = serve(h2Limits=H2Limits(maxInboundControlFramesPerSecond=5))
    proto.dataReceived(PingFrame(0, opaque_data=b"12345678").serialize() * 5)  # 4 + the preface's SETTINGS
    assert transport.disconnecting
    assert stats.total("downstream_h2_flood_close", kind="control_frame_rate") == 1


def test_pings_that_follow_our_data_are_not_a_flood():
    """gRPC's BDP probe sends a PING as our DATA arrives: each DATA frame sent allows one more in its second."""
    proto, transport, template, stats = serve()
    proto.dataReceived(headersFrame(1, request()))
    s = template.streams[0]
    from txmesh.stream import ResponseHead
    s.downstream.writeHeaders(ResponseHead(200, version=(2, 0)), False)
    ping = PingFrame(0, opaque_data=b"12345678").serialize()
    for _ in range(300):
        s.downstream.writeData(b"x" * 10, False)
        proto.dataReceived(ping)
    assert not transport.disconnecting
    proto.dataReceived(ping * 100)
    assert transport.disconnecting
    assert stats.total("downstream_h2_flood_close", kind="control_frame_rate") == 1


def test_empty_data_flood_closes_connection():
    proto, transport, _, stats = serve()
    proto.dataReceived(headersFrame(1, request(), end=False) + DataFrame(1, b"").serialize() * 3)
    assert transport.disconnecting
    assert stats.total("downstream_h2_flood_close", kind="empty_data") == 1


def test_priority_flood_closes_connection():
    proto, transport, _, stats = serve()
    proto.dataReceived(PriorityFrame(1, depends_on=0, stream_weight=16).serialize() * 200)
    assert transport.disconnecting
    assert stats.total("downstream_h2_flood_close", kind="priority") == 1


def test_window_update_flood_closes_connection():
    proto, transport, _, stats = serve()
    proto.dataReceived(WindowUpdateFrame(0, window_increment=1).serialize() * 200)
    assert transport.disconnecting
    assert stats.total("downstream_h2_flood_close", kind="window_update") == 1


def test_oversized_header_list_is_refused():
    proto, transport, template, _ = serve()
    proto.dataReceived(headersFrame(1, request() + [(b"x-big", b"a" * 70000)]))
    assert transport.disconnecting
    assert goaway(transport) is not None
    assert template.streams == []


def test_continuation_flood_is_bounded():
    proto, transport, template, _ = serve()
    block = Encoder().encode(request())
    data = headersFrame(1, [], end=True, endHeaders=False)
    data = HeadersFrame(1, data=block[:1], flags={"END_STREAM"}).serialize()
    for _ in range(100):
        data += ContinuationFrame(1, data=b"").serialize()
    proto.dataReceived(data)
    assert transport.disconnecting
    assert goaway(transport) == ErrorCodes.PROTOCOL_ERROR
    assert template.streams == []


def _malformed(fields, extra=b""):
    proto, transport, template, stats = serve()
    proto.dataReceived(headersFrame(1, fields, end=not extra) + extra)
    return transport, template, stats


def test_uppercase_header_name_is_rejected():
    transport, template, _ = _malformed(request() + [(b"X-Upper", b"1")])
    assert template.streams == []
    assert resets(transport) == [(1, ErrorCodes.PROTOCOL_ERROR)]


def test_connection_specific_header_is_rejected():
    transport, template, _ = _malformed(request() + [(b"connection", b"keep-alive")])
    assert template.streams == []
    assert resets(transport) == [(1, ErrorCodes.PROTOCOL_ERROR)]


def test_pseudo_header_after_regular_is_rejected():
    fields = request()
    transport, template, stats = _malformed(fields[:2] + [(b"x-a", b"1")] + fields[2:])
    assert template.streams == []
    assert resets(transport) == [(1, ErrorCodes.PROTOCOL_ERROR)]
    assert stats.total("downstream_rq_error", cause="malformed_request") == 1


def test_te_other_than_trailers_is_rejected():
    transport, template, _ = _malformed(request() + [(b"te", b"gzip")])
    assert template.streams == []
    assert resets(transport) == [(1, ErrorCodes.PROTOCOL_ERROR)]


def test_content_length_disagreeing_with_data_is_never_forwarded_complete():
    """RFC 9113 8.1.1: a malformed message is a stream error (PROTOCOL_ERROR); the connection stays up."""
    data = DataFrame(1, b"0123456789", flags={"END_STREAM"}).serialize()
    proto, transport, template, stats = serve()
    proto.dataReceived(headersFrame(1, request() + [(b"content-length", b"4")], end=False))
    proto.dataReceived(data)
    assert resets(transport) == [(1, ErrorCodes.PROTOCOL_ERROR)]
    assert goaway(transport) is None and not transport.disconnecting
    assert not any(e[0] == "data" for e in template.log)
    assert template.log[-1] == ("reset", "downstream_protocol_error")
    assert stats.total("downstream_rq_error", cause="malformed_request") == 1


def test_body_shorter_than_content_length_is_reset():
    proto, transport, template, _ = serve()
    proto.dataReceived(headersFrame(1, request() + [(b"content-length", b"40")], end=False)
                       + DataFrame(1, b"0123456789", flags={"END_STREAM"}).serialize())
    assert resets(transport) == [(1, ErrorCodes.PROTOCOL_ERROR)]
    assert [e[0] for e in template.log] == ["headers", "reset"]


def test_authority_wins_over_host():
    transport, template, _ = _malformed(request(authority=b"right.svc") + [(b"host", b"wrong.svc")])
    head = template.log[0][1]
    assert head.authority == b"right.svc"
    assert b"host" not in head.headers
    assert head.version == (2, 0)


def test_grpc_local_reply_is_trailers_only():
    proto, transport, template, stats = serve(GRPCListenerFactory)
    proto.dataReceived(headersFrame(1, request(path=b"/pkg.Svc/M") + [(b"content-type", b"application/grpc"),
                                                                        (b"grpc-timeout", b"250m")]))
    s = template.streams[0]
    assert template.log[0][1].timeout == 0.25
    assert template.log[0][1].protocol == "grpc"
    head, body = s.downstream.makeLocalReply(404, b"no_route\n", (), "no_route")
    s.downstream.writeHeaders(head, True)
    resp = responses(transport)[0]
    fields = dict(resp.fields)
    assert fields[b":status"] == b"200"
    assert fields[b"grpc-status"] == b"12"
    assert fields[b"grpc-message"] == b"txmesh node-t: no_route"
    assert fields[b"x-txmesh-node"] == b"node-t"  # the sidecar that answered
    assert "END_STREAM" in resp.flags
    assert body == b""
    assert stats.total("downstream_grpc_status", code="12") == 1


def test_grpc_http_error_from_upstream_is_mapped():
    from txmesh.stream import HeaderMap, ResponseHead
    proto, transport, template, _ = serve(GRPCListenerFactory)
    proto.dataReceived(headersFrame(1, request(path=b"/pkg.Svc/M")))
    s = template.streams[0]
    s.downstream.writeHeaders(ResponseHead(503, HeaderMap([(b"content-type", b"text/html")])), False)
    s.downstream.writeData(b"<html>busy</html>", True)
    resp = responses(transport)[0]
    assert dict(resp.fields)[b"grpc-status"] == b"14"
    assert "END_STREAM" in resp.flags
    assert not [f for f in rawFrames(transport) if isinstance(f, DataFrame)]


# -- pseudo-headers and the values that become the upstream request line or a routing decision ----------------------


def _with(name, value):
    """request() with pseudo-header ``name`` set to ``value`` (None: left out)."""
    fields = [(k, value if k == name else v) for k, v in request()]
    return [(k, v) for k, v in fields if v is not None]


# bad values of each pseudo-header (None: left out)
BAD_PSEUDO = {
    b":method": [b"GET /evil HTTP/1.1", b"GET\r\nx-a: 1", b"G\x00T", b"", b"G(T", b"G\xc3\x89T", None],
    b":scheme": [b"", b"1http", b"ht tp", b"http\r\nx-a: 1", b"h_ttp", b"http:", None],
    b":path": [b"", None, b"x", b"http://b.svc/x", b"*", b"/x HTTP/1.1", b"/a\tb", b"/a\x7f",
               b"/x HTTP/1.1\r\nhost: evil\r\n\r\nGET /y", b"/x\x00"],
    b":authority": [b"", b"user@a.svc", b"a.svc:80@evil.svc", b"a svc", b"a.svc\r\nx-a: 1", b"a.svc/x",
                    b"a.svc:8o", b"a.svc:80:80", b"[::1", b"a%zz.svc"],
}

MALFORMED = [("%s=%r" % (name.decode(), value), _with(name, value))
             for name, values in BAD_PSEUDO.items() for value in values] + [
    ("host-userinfo-without-authority", _with(b":authority", None) + [(b"host", b"user@a.svc")]),
    ("host-space-without-authority", _with(b":authority", None) + [(b"host", b"a svc")]),
    ("unknown-pseudo", request() + [(b":protocol", b"websocket")]),
    ("status-in-request", request() + [(b":status", b"200")]),
    ("repeated-path", request() + [(b":path", b"/y")]),
    ("connect-with-scheme-and-path", [(b":method", b"CONNECT")] + request()[1:]),
    ("connect-without-authority", [(b":method", b"CONNECT")]),
    ("connect-without-port", [(b":method", b"CONNECT"), (b":authority", b"a.svc")]),
    ("connect-userinfo", [(b":method", b"CONNECT"), (b":authority", b"u@a.svc:443")]),
    ("connect-with-path", [(b":method", b"CONNECT"), (b":authority", b"a.svc:443"), (b":path", b"/")]),
    ("value-leading-space", request() + [(b"x-a", b" v")]),
    ("value-trailing-tab", request() + [(b"x-a", b"v\t")]),
    ("value-lf", request() + [(b"x-a", b"v\nx-b: 1")]),
] + [("connection-specific-" + name.decode(), request() + [(name, value)]) for name, value in [
    (b"connection", b"close"), (b"keep-alive", b"timeout=5"), (b"proxy-connection", b"keep-alive"),
    (b"transfer-encoding", b"chunked"), (b"upgrade", b"h2c")]] + [
    ("te-gzip", request() + [(b"te", b"gzip")]),
    ("te-trailers-and-more", request() + [(b"te", b"trailers, deflate")]),
]


@pytest.mark.parametrize("fields", [c[1] for c in MALFORMED], ids=[c[0] for c in MALFORMED])
def test_malformed_request_is_reset_and_never_forwarded(fields):
    """RFC 9113 8.2-8.5: RST_STREAM(PROTOCOL_ERROR) on that stream, nothing reaches the chain (so nothing goes
    upstream), the connection serves the next request."""
    proto, transport, template, stats = serve()
    enc = Encoder()
    proto.dataReceived(headersFrame(1, fields, encoder=enc))
    assert resets(transport) == [(1, ErrorCodes.PROTOCOL_ERROR)]
    assert template.streams == [] and template.log == []
    assert stats.total("downstream_rq_error", cause="malformed_request") == 1
    assert not transport.disconnecting and goaway(transport) is None
    proto.dataReceived(headersFrame(3, request(), encoder=enc))
    assert [e[1].path for e in template.log if e[0] == "headers"] == [b"/x"]


ACCEPTED = [
    ("options-asterisk", [(b":method", b"OPTIONS"), (b":scheme", b"http"), (b":authority", b"a.svc"),
                          (b":path", b"*")], (b"OPTIONS", b"*", b"a.svc", b"http")),
    ("extension-method", _with(b":method", b"PROPFIND"), (b"PROPFIND", b"/x", b"a.svc", b"http")),
    ("https", _with(b":scheme", b"https"), (b"POST", b"/x", b"a.svc", b"https")),
    ("scheme-with-plus", _with(b":scheme", b"svn+ssh"), (b"POST", b"/x", b"a.svc", b"svn+ssh")),
    ("query-and-percent", _with(b":path", b"/x?a=b&c=%20#"), (b"POST", b"/x?a=b&c=%20#", b"a.svc", b"http")),
    ("utf8-path", _with(b":path", b"/caf\xc3\xa9"), (b"POST", b"/caf\xc3\xa9", b"a.svc", b"http")),
    ("authority-port", _with(b":authority", b"a.svc:8080"), (b"POST", b"/x", b"a.svc:8080", b"http")),
    ("authority-ipv6", _with(b":authority", b"[::1]:80"), (b"POST", b"/x", b"[::1]:80", b"http")),
    ("authority-ipv4", _with(b":authority", b"127.0.0.1"), (b"POST", b"/x", b"127.0.0.1", b"http")),
    ("host-without-authority", _with(b":authority", None) + [(b"host", b"h.svc:81")],
     (b"POST", b"/x", b"h.svc:81", b"http")),
    ("no-authority-at-all", _with(b":authority", None), (b"POST", b"/x", b"", b"http")),
    ("te-trailers", request() + [(b"te", b"trailers")], (b"POST", b"/x", b"a.svc", b"http")),
]


@pytest.mark.parametrize("fields,expected", [c[1:] for c in ACCEPTED], ids=[c[0] for c in ACCEPTED])
def test_well_formed_request_is_forwarded(fields, expected):
    proto, transport, template, stats = serve()
    proto.dataReceived(headersFrame(1, fields))
    assert resets(transport) == []
    head = template.log[0][1]
    assert (head.method, head.path, head.authority, head.scheme) == expected


def test_scheme_reaches_x_forwarded_proto_only_when_valid():
    """:scheme is what an edge listener writes into x-forwarded-proto; a non-scheme never gets that far."""
    from txmesh.config import ForwardingConfig

    class Edge(ListenerConfig):
        forwarding = ForwardingConfig(useRemoteAddress=True)

    runtime = Runtime()
    template = Template()
    proto = H2ListenerFactory(Edge(), template, runtime).buildProtocol(None)
    transport = StringTransport()
    proto.makeConnection(transport)
    enc = Encoder()
    proto.dataReceived(PREFACE + SettingsFrame(0).serialize() + headersFrame(1, _with(b":scheme", b"https"),
                                                                             encoder=enc))
    proto.dataReceived(headersFrame(3, _with(b":scheme", b"https\r\nx-evil: 1"), encoder=enc))
    [head] = [e[1] for e in template.log if e[0] == "headers"]
    assert head.headers.get(b"x-forwarded-proto") == b"https"
    assert resets(transport) == [(3, ErrorCodes.PROTOCOL_ERROR)]


@pytest.mark.parametrize("end", [True, False], ids=["ended", "open"])
def test_well_formed_connect_is_answered_501_and_never_forwarded(end):
    """RFC 9113 8.5: CONNECT with only :method and :authority is well-formed; the listener does not tunnel, so it
    answers 501 itself (and stops a client still sending with RST_STREAM(NO_ERROR))."""
    proto, transport, template, stats = serve()
    proto.dataReceived(headersFrame(1, [(b":method", b"CONNECT"), (b":authority", b"a.svc:443")], end=end))
    assert template.streams == []
    [resp] = responses(transport)
    fields = dict(resp.fields)
    assert fields[b":status"] == b"501" and fields[b"x-txmesh-error"] == b"connect_not_supported"
    assert "END_STREAM" in resp.flags
    assert resets(transport) == ([] if end else [(1, ErrorCodes.NO_ERROR)])
    assert stats.total("downstream_rq_error", cause="connect_not_supported") == 1
    assert not transport.disconnecting
    proto.dataReceived(DataFrame(1, b"tunnel bytes").serialize())  # in flight: ignored, never forwarded
    assert template.log == [] and not transport.disconnecting


@pytest.mark.parametrize("name", ["grpcio-unary", "grpcio-client-stream", "curl-get", "curl-post", "h2load",
                                  "nghttp-table-size-0"])
def test_real_clients_requests_pass_every_check(name):
    """What grpcio, curl (nghttp2), h2load and nghttp sent (tests/fixtures/h2 captures), whole: their requests
    are well-formed and their PING/SETTINGS within the rate, so nothing is reset and nothing closes."""
    from tests.test_h2_connection import capture
    runtime = Runtime()
    template = Template()
    factoryClass = GRPCListenerFactory if name.startswith("grpcio") else H2ListenerFactory
    proto = factoryClass(ListenerConfig(), template, runtime).buildProtocol(None)
    transport = StringTransport()
    proto.makeConnection(transport)
    proto.dataReceived(capture(name, "c2s"))
    assert resets(transport) == [] and goaway(transport) is None and not transport.disconnecting
    assert [e[0] for e in template.log if e[0] == "headers"]
    assert runtime.stats.total("downstream_rq_error", cause="malformed_request") == 0


def test_split_cookie_fields_are_joined_for_the_upstream():
    """RFC 9113 8.2.3: cookie crumbs in separate fields become one field ("; ") before an HTTP/1.1 hop sees them."""
    transport, template, _ = _malformed(request() + [(b"cookie", b"a=1"), (b"x-a", b"1"), (b"cookie", b"b=2"),
                                                     (b"cookie", b"c=3")])
    head = template.log[0][1]
    assert list(head.headers.items())[:2] == [(b"cookie", b"a=1; b=2; c=3"), (b"x-a", b"1")]
    assert head.headers.getAll(b"cookie") == [b"a=1; b=2; c=3"]
