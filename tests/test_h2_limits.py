"""
The HTTP/2 listener with limits from a mesh.yaml ``http2`` block, and how a gRPC listener ends a stream whose
upstream failed after the response started.  Raw frames in, frames out, over a StringTransport.
"""

from h2.errors import ErrorCodes
from hpack import Encoder
from hyperframe.frame import DataFrame, HeadersFrame, RstStreamFrame, SettingsFrame, WindowUpdateFrame
from twisted.internet.testing import StringTransport

from tests.h2wire import PREFACE, Runtime, Template
from tests.test_h2_defences import goaway, headersFrame, rawFrames, request, resets, responses
from txmesh.config import loads
from txmesh.protocols.h2.server import GRPCListenerFactory, H2ListenerFactory
from txmesh.stream import HeaderMap, ResponseHead

MESH = """\
clusters: [{name: backend, protocol: h2, endpoints: [{address: "127.0.0.1:8080"}]}]
listeners:
  - name: l
    protocol: %s
    address: tcp:0
    http2: %s
"""


def serve(protocol="http2", http2="{}"):
    """An H2 listener built from a loaded mesh.yaml, connected over a StringTransport, prefaces exchanged."""
    listenerConfig = loads(MESH % (protocol, http2)).listeners[0]
    runtime = Runtime()
    template = Template()
    factoryClass = GRPCListenerFactory if protocol == "grpc" else H2ListenerFactory
    proto = factoryClass(listenerConfig, template, runtime).buildProtocol(None)
    transport = StringTransport()
    proto.makeConnection(transport)
    proto.dataReceived(PREFACE + SettingsFrame(0).serialize())
    return proto, transport, template, runtime.stats


def advertised(transport):
    return [f for f in rawFrames(transport) if isinstance(f, SettingsFrame) and f.settings][0].settings


def test_configured_max_concurrent_streams_is_advertised_and_enforced():
    proto, transport, template, stats = serve(http2="{max_concurrent_streams: 3}")
    assert advertised(transport)[SettingsFrame.MAX_CONCURRENT_STREAMS] == 3
    enc = Encoder()
    proto.dataReceived(b"".join(headersFrame(1 + 2 * i, request(), end=False, encoder=enc) for i in range(4)))
    assert resets(transport) == [(7, ErrorCodes.REFUSED_STREAM)]
    assert len(template.streams) == 3
    assert stats.total("downstream_h2_streams_refused") == 1
    assert not transport.disconnecting
    # a stream closes: room for one more
    proto.dataReceived(RstStreamFrame(1, error_code=ErrorCodes.CANCEL).serialize()
                       + headersFrame(9, request(), end=False, encoder=enc))
    assert len(template.streams) == 4
    assert resets(transport) == [(7, ErrorCodes.REFUSED_STREAM)]


def test_configured_header_list_size_is_advertised_and_enforced():
    proto, transport, template, _ = serve(http2="{max_header_list_size: 2048}")
    assert advertised(transport)[SettingsFrame.MAX_HEADER_LIST_SIZE] == 2048
    proto.dataReceived(headersFrame(1, request() + [(b"x-big", b"a" * 1500)]))
    assert len(template.streams) == 1  # under the bound
    proto.dataReceived(headersFrame(3, request() + [(b"x-big", b"a" * 3000)]))
    assert transport.disconnecting
    assert goaway(transport) is not None
    assert len(template.streams) == 1


def test_configured_rapid_reset_bound():
    proto, transport, template, stats = serve(http2="{max_premature_resets: 5}")
    enc = Encoder()
    for i in range(10):
        sid = 1 + 2 * i
        proto.dataReceived(headersFrame(sid, request(), end=False, encoder=enc)
                           + RstStreamFrame(sid, error_code=ErrorCodes.CANCEL).serialize())
        if transport.disconnecting:
            break
    assert len(template.streams) == 6
    assert goaway(transport) == ErrorCodes.ENHANCE_YOUR_CALM
    assert stats.total("downstream_h2_flood_close", kind="rapid_reset") == 1


def test_configured_empty_data_bound():
    proto, transport, _, stats = serve(http2="{max_consecutive_inbound_frames_with_empty_payload: 3}")
    proto.dataReceived(headersFrame(1, request(), end=False) + DataFrame(1, b"").serialize() * 3)
    assert not transport.disconnecting
    proto.dataReceived(DataFrame(1, b"").serialize())
    assert stats.total("downstream_h2_flood_close", kind="empty_data") == 1


def test_configured_control_frame_rate():
    """max_inbound_control_frames_per_second bounds PING/SETTINGS from a client that reads its ACKs, per second
    of the listener's clock."""
    from hyperframe.frame import PingFrame
    proto, transport, _, stats = serve(http2="{max_inbound_control_frames_per_second: 10}")
    ping = PingFrame(0, opaque_data=b"abcdefgh").serialize()
    proto.dataReceived(ping * 9)  # with the preface's SETTINGS: 10 this second
    assert not transport.disconnecting
    proto.factory.clock.advance(1)
    proto.dataReceived(ping * 10)
    assert not transport.disconnecting
    proto.dataReceived(ping)
    assert transport.disconnecting and goaway(transport) == ErrorCodes.ENHANCE_YOUR_CALM
    assert stats.total("downstream_h2_flood_close", kind="control_frame_rate") == 1


def test_configured_grpc_message_size():
    proto, transport, template, stats = serve("grpc", "{max_message_size: 100}")
    replies = []
    proto.dataReceived(headersFrame(1, request(path=b"/pkg.Svc/M"), end=False))
    s = template.streams[0]
    s.sendLocalReply = lambda status, body, cause=None: replies.append((status, cause))
    proto.dataReceived(DataFrame(1, b"\x00\x00\x00\x00\x64" + b"x" * 100).serialize())
    assert replies == []
    proto.dataReceived(DataFrame(1, b"\x00\x00\x00\x00\x65" + b"x" * 101).serialize())
    assert replies == [(413, "grpc_message_too_large")]


# -- the upstream fails after the response started --------------------------------------------------------------


def _responseStarted(protocol):
    proto, transport, template, stats = serve(protocol)
    proto.dataReceived(headersFrame(1, request(path=b"/pkg.Svc/M") + [(b"content-type", b"application/grpc")]))
    s = template.streams[0]
    s.downstream.writeHeaders(ResponseHead(200, HeaderMap([(b"content-type", b"application/grpc")]), (2, 0)),
                              False)
    s.downstream.writeData(b"\x00\x00\x00\x00\x02hi", False)
    return s, transport, stats


def _abort(s, reason, flag):
    # what the chain does on a local reply after the response started: flag, reset, complete
    s.info.responseFlags.add(flag)
    s.downstream.reset(reason)
    s.downstream.streamComplete(s)


def test_grpc_upstream_reset_mid_stream_ends_with_unavailable_trailers():
    s, transport, stats = _responseStarted("grpc")
    _abort(s, "upstream_reset_before_response", "UC")
    trailers = responses(transport)[-1]
    fields = dict(trailers.fields)
    assert "END_STREAM" in trailers.flags
    assert b":status" not in fields
    assert fields[b"grpc-status"] == b"14"
    assert fields[b"grpc-message"] == b"txmesh node-t: response aborted: upstream_reset_before_response (UC)"
    assert resets(transport) == []
    assert [f.data for f in rawFrames(transport) if isinstance(f, DataFrame)] == [b"\x00\x00\x00\x00\x02hi"]
    assert stats.total("downstream_grpc_status", code="14") == 1
    assert stats.total("downstream_h2_tx_reset") == 0


def test_grpc_upstream_timeout_mid_stream_is_deadline_exceeded():
    s, transport, stats = _responseStarted("grpc")
    _abort(s, "upstream_request_timeout", "UT")
    fields = dict(responses(transport)[-1].fields)
    assert fields[b"grpc-status"] == b"4"
    assert b"UT" in fields[b"grpc-message"]


def test_grpc_abort_trailers_wait_behind_flow_controlled_data():
    """Trailers never overtake DATA still waiting for the client's window."""
    proto, transport, template, _ = serve("grpc")
    proto.dataReceived(headersFrame(1, request(path=b"/pkg.Svc/M")))
    s = template.streams[0]
    s.downstream.writeHeaders(ResponseHead(200, HeaderMap([(b"content-type", b"application/grpc")]), (2, 0)),
                              False)
    body = b"\x00" + (70000).to_bytes(4, "big") + b"x" * 70000  # above the default 65535 stream window
    s.downstream.writeData(body, False)
    _abort(s, "upstream_reset_before_response", "UC")
    assert len(responses(transport)) == 1  # trailers wait
    proto.dataReceived(WindowUpdateFrame(0, window_increment=1 << 20).serialize()
                       + WindowUpdateFrame(1, window_increment=1 << 20).serialize())
    frames = rawFrames(transport)
    assert sum(len(f.data) for f in frames if isinstance(f, DataFrame)) == len(body)
    assert isinstance(frames[-1], HeadersFrame) and dict(frames[-1].fields)[b"grpc-status"] == b"14"


def test_grpc_abort_before_headers_is_trailers_only():
    proto, transport, template, _ = serve("grpc")
    proto.dataReceived(headersFrame(1, request(path=b"/pkg.Svc/M")))
    s = template.streams[0]
    s.downstream.reset("some_filter_gave_up")
    resp = responses(transport)[0]
    fields = dict(resp.fields)
    assert (fields[b":status"], fields[b"grpc-status"]) == (b"200", b"14")
    assert fields[b"grpc-message"] == b"txmesh node-t: response aborted: some_filter_gave_up"
    assert "END_STREAM" in resp.flags


def test_http2_upstream_reset_mid_stream_is_rst_stream():
    s, transport, stats = _responseStarted("http2")
    _abort(s, "upstream_reset_before_response", "UC")
    assert resets(transport) == [(1, ErrorCodes.INTERNAL_ERROR)]
    assert len(responses(transport)) == 1
    assert stats.total("downstream_h2_tx_reset") == 1
