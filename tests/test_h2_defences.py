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
from twisted.internet.testing import StringTransport

from tests.h2wire import PREFACE, ListenerConfig, Runtime, Template
from txmesh.protocols.h2.server import GRPCListenerFactory, H2ListenerFactory


def serve(factoryClass=H2ListenerFactory):
    runtime = Runtime()
    template = Template()
    factory = factoryClass(ListenerConfig(), template, runtime)
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
    proto, transport, _, stats = serve()
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


def test_pings_from_a_reading_peer_are_fine():
    proto, transport, _, _ = serve()
    proto.dataReceived(PingFrame(0, opaque_data=b"12345678").serialize() * 1100)
    assert not transport.disconnecting


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
