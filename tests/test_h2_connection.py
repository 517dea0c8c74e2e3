"""
Codec-level tests of txmesh's own HTTP/2 connection (L{txmesh.protocols.h2.codec}), sans-IO.

  - Captured real bytes (tests/fixtures/h2, made by capture.py there: grpcio, curl and h2load clients; grpcio and
    h2 servers) are fed whole, byte by byte and in seeded random splits: the events must not depend on the split,
    and must be what the ``h2`` library reports for the same bytes.
  - Interop in memory against ``h2`` (both roles): many streams, 5 MiB each way through flow control, trailers,
    RST_STREAM, PING, GOAWAY, INITIAL_WINDOW_SIZE changes mid-stream, CONTINUATION, padding.
  - What this connection writes is parsed with hyperframe (frame sizes, CONTINUATION layout) and accepted by h2.
  - A seeded property test: random client action sequences from h2's client, fed to this connection in random
    splits and to h2's server whole, give the same request-level events.

The protocol-level behaviour (what the listener and upstream client make of these events) is in
tests/test_h2_conformance_{server,client}.py.
"""

import os
import random
import time

import h2.config
import h2.connection
import h2.events
import pytest
from h2.settings import SettingCodes
from hpack import Encoder
from hyperframe.frame import ContinuationFrame, DataFrame, Frame, HeadersFrame, PingFrame, SettingsFrame

from txmesh.protocols.h2 import events as E
from txmesh.protocols.h2 import frames as F
from txmesh.protocols.h2.codec import H2Connection
from txmesh.protocols.h2.events import StreamClosedError
from txmesh.protocols.h2.frames import ErrorCodes

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "h2")
SCENARIOS = ["grpcio-unary", "grpcio-client-stream", "curl-get", "curl-post", "h2load", "nghttp-table-size-0"]
RESPONSE_SCENARIOS = SCENARIOS[:5]  # nghttp opened stream 13 first, which a client of ours cannot replay
SPLITS = ["whole", "bytewise", "random-1", "random-2", "random-3", "random-4"]
GRPC = b"application/grpc"


def capture(name, direction):
    """One direction (``c2s`` or ``s2c``) of a captured connection."""
    with open(os.path.join(FIXTURES, "%s.%s.bin" % (name, direction)), "rb") as f:
        return f.read()


def cuts(kind, n):
    """Where ``kind`` splits ``n`` bytes: nowhere, everywhere, or at seeded random places (empty chunks too)."""
    if kind == "whole":
        return []
    if kind == "bytewise":
        return list(range(1, n))
    rng = random.Random(kind)
    return sorted(rng.choices(range(0, n + 1), k=rng.randint(1, max(1, n // 8))))


def feed(conn, data, kind="whole"):
    """Our connection's events for ``data`` delivered in the chunks ``kind`` makes."""
    events, prev = [], 0
    for c in cuts(kind, len(data)) + [len(data)]:
        events += conn.receiveData(data[prev:c])
        prev = c
    return events


def fields(headers):
    return [(bytes(k), bytes(v)) for k, v in headers]


def common(events):
    """
    Events of either library as comparable tuples in one vocabulary; a stream's end is its own ``("end", sid)`` as
    h2 reports it.  h2's SettingsAcknowledged and 1xx responses have no counterpart here and are left out.
    """
    out = []
    for e in events:
        if isinstance(e, (E.RequestReceived, h2.events.RequestReceived, h2.events.ResponseReceived)):
            out.append(("headers", e.stream_id, fields(e.headers)))
        elif isinstance(e, (E.TrailersReceived, h2.events.TrailersReceived)):
            out.append(("trailers", e.stream_id, fields(e.headers)))
        elif isinstance(e, (E.DataReceived, h2.events.DataReceived)):
            out.append(("data", e.stream_id, bytes(e.data), e.flow_controlled_length))
        elif isinstance(e, (E.StreamReset, h2.events.StreamReset)):
            out.append(("reset", e.stream_id, int(e.error_code), e.remote_reset))
        elif isinstance(e, (E.WindowUpdated, h2.events.WindowUpdated)):
            out.append(("window", e.stream_id, e.delta))
        elif isinstance(e, E.RemoteSettingsChanged):
            out.append(("settings", dict(e.changed)))
        elif isinstance(e, h2.events.RemoteSettingsChanged):
            out.append(("settings", {int(k): v.new_value for k, v in e.changed_settings.items()}))
        elif isinstance(e, E.PingAckReceived):
            out.append(("pingack", bytes(e.data)))
        elif isinstance(e, E.PingReceived):
            out.append(("ping", bytes(e.data)))
        elif isinstance(e, h2.events.PingAckReceived):
            out.append(("pingack", e.ping_data))
        elif isinstance(e, h2.events.PingReceived):
            out.append(("ping", e.ping_data))
        elif isinstance(e, (E.PriorityUpdated, h2.events.PriorityUpdated)):
            out.append(("priority", e.stream_id))
        elif isinstance(e, E.ConnectionTerminated):
            out.append(("goaway", int(e.error_code), e.last_stream_id, bytes(e.additional_data)))
        elif isinstance(e, h2.events.ConnectionTerminated):
            out.append(("goaway", int(e.error_code), e.last_stream_id, e.additional_data or b""))
        elif isinstance(e, h2.events.StreamEnded):
            out.append(("end", e.stream_id))
        elif isinstance(e, (h2.events.SettingsAcknowledged, h2.events.InformationalResponseReceived)):
            continue
        else:
            raise AssertionError("unexpected event %r" % (e,))
        if getattr(e, "stream_ended", False) is True and isinstance(e, (E.RequestReceived, E.DataReceived)):
            out.append(("end", e.stream_id))
        elif isinstance(e, E.TrailersReceived):
            out.append(("end", e.stream_id))
    return out


def messages(events):
    """Per stream, the message the common ``events`` carry: headers, body, trailers and whether it ended."""
    out = {}
    for e in events:
        if e[0] == "headers":
            out[e[1]] = {"headers": e[2], "body": bytearray(), "trailers": None, "ended": False}
        elif e[0] == "data":
            out[e[1]]["body"] += e[2]
        elif e[0] == "trailers":
            out[e[1]]["trailers"] = e[2]
        elif e[0] == "end":
            out[e[1]]["ended"] = True
    return out


def frames(wire):
    """hyperframe's parse of the bytes one side wrote (the client preface skipped); every frame must be whole."""
    data = memoryview(bytes(wire))
    if bytes(data[:24]) == F.PREFACE:
        data = data[24:]
    out, pos = [], 0
    while pos < len(data):
        f, n = Frame.parse_frame_header(data[pos:pos + 9])
        assert pos + 9 + n <= len(data), "a truncated frame"
        f.parse_body(data[pos + 9:pos + 9 + n])
        out.append(f)
        pos += 9 + n
    return out


def request(method=b"POST", path=b"/", extra=()):
    return [(b":method", method), (b":scheme", b"http"), (b":authority", b"svc.local"), (b":path", path)] + list(extra)


# -- the two implementations behind one face -------------------------------------------------------------------------

class Ours:
    """
    txmesh's connection; every byte it writes is kept in ``wire``; data is acknowledged as it arrives, and the
    peer's requests are accepted (``streamAccepted``) as the listener does with well-formed ones.
    """

    def __init__(self, clientSide, autoAck=True, **kwargs):
        self.conn = H2Connection(clientSide, **kwargs)
        self.conn.initiateConnection()
        self.autoAck = autoAck
        self.wire = bytearray()

    def out(self):
        data = self.conn.dataToSend()
        self.wire += data
        return data

    def feed(self, data):
        events = self.conn.receiveData(data)
        for e in events:
            if isinstance(e, E.RequestReceived):
                self.conn.streamAccepted(e.stream_id)
            elif self.autoAck and isinstance(e, E.DataReceived):
                self.conn.acknowledge(e.flow_controlled_length, e.stream_id)
        return common(events)

    def window(self, sid):
        return self.conn.localFlowControlWindow(sid)

    @property
    def frameSize(self):
        return self.conn.maxOutboundFrameSize

    def open(self, headers, end=False):
        sid = self.conn.nextStreamId()
        self.conn.sendHeaders(sid, headers, end)
        return sid

    def headers(self, sid, headers, end=False):
        self.conn.sendHeaders(sid, headers, end)

    def send(self, sid, data, end=False):
        self.conn.sendData(sid, data, end)

    def reset(self, sid, code):
        self.conn.resetStream(sid, code)

    def ping(self, data):
        self.conn.ping(data)


class Theirs(Ours):
    """The ``h2`` library's connection, the same way."""

    def __init__(self, clientSide, autoAck=True):
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=clientSide, header_encoding=None))
        self.conn.initiate_connection()
        self.autoAck = autoAck
        self.wire = bytearray()

    def out(self):
        data = self.conn.data_to_send()
        self.wire += data
        return data

    def feed(self, data):
        events = self.conn.receive_data(data)
        if self.autoAck:
            for e in events:
                if isinstance(e, h2.events.DataReceived) and e.flow_controlled_length:
                    self.conn.acknowledge_received_data(e.flow_controlled_length, e.stream_id)
        return common(events)

    def window(self, sid):
        return self.conn.local_flow_control_window(sid)

    @property
    def frameSize(self):
        return self.conn.max_outbound_frame_size

    def open(self, headers, end=False):
        sid = self.conn.get_next_available_stream_id()
        self.conn.send_headers(sid, headers, end)
        return sid

    def headers(self, sid, headers, end=False):
        self.conn.send_headers(sid, headers, end)

    def send(self, sid, data, end=False):
        self.conn.send_data(sid, data, end)

    def reset(self, sid, code):
        self.conn.reset_stream(sid, code)

    def ping(self, data):
        self.conn.ping(data)


def pump(a, b, rounds=1000):
    """Moves bytes both ways until neither side has anything to send; the common events each side saw."""
    seenA, seenB = [], []
    for _ in range(rounds):
        ab, ba = a.out(), b.out()
        if not ab and not ba:
            return seenA, seenB
        if ab:
            seenB += b.feed(ab)
        if ba:
            seenA += a.feed(ba)
    raise AssertionError("still talking after %d rounds" % (rounds,))


def drive(a, b, sends, rounds=100000):
    """
    Sends ``sends`` ({endpoint: {sid: body}}) as flow control allows, in frames of at most the peer's size, moving
    bytes between ``a`` and ``b`` after each pass, until all is sent and both are quiet.  A pass that neither sends
    nor moves anything is a stall and fails.  Returns the common events each side saw.
    """
    seen = {a: [], b: []}
    pos = {(ep, sid): 0 for ep in sends for sid in sends[ep]}
    for _ in range(rounds):
        progressed = False
        for ep, bodies in sends.items():
            for sid, body in bodies.items():
                p = pos[ep, sid]
                while p < len(body):
                    n = min(ep.window(sid), ep.frameSize, len(body) - p)
                    if n <= 0:
                        break
                    ep.send(sid, body[p:p + n])
                    p += n
                    progressed = True
                pos[ep, sid] = p
        ab, ba = a.out(), b.out()
        if ab:
            seen[b] += b.feed(ab)
        if ba:
            seen[a] += a.feed(ba)
        done = all(pos[ep, sid] == len(body) for ep in sends for sid, body in sends[ep].items())
        if done and not ab and not ba:
            return seen[a], seen[b]
        assert progressed or ab or ba, "stalled with %r still to send" % (
            {k: len(sends[k[0]][k[1]]) - v for k, v in pos.items() if v < len(sends[k[0]][k[1]])},)
    raise AssertionError("not done after %d rounds" % (rounds,))


ROLES = {"txmesh-client": (Ours, Theirs), "txmesh-server": (Theirs, Ours)}


@pytest.fixture(params=sorted(ROLES))
def pair(request):
    """A client and a server, one of them txmesh's, past the preface and SETTINGS exchange."""
    clientType, serverType = ROLES[request.param]
    client, server = clientType(True), serverType(False)
    pump(client, server)
    return client, server


def ours(pair):
    return pair[0] if isinstance(pair[0].conn, H2Connection) else pair[1]


# -- captured client bytes, server side ------------------------------------------------------------------------------

def decodeRequests(name, kind="whole"):
    conn = H2Connection(clientSide=False)
    conn.initiateConnection()
    conn.dataToSend()
    events = feed(conn, capture(name, "c2s"), kind)
    return conn, events


@pytest.mark.parametrize("name", SCENARIOS)
def test_capturedRequestsDecodeTheSameWhateverTheSplit(name):
    """Whole, byte by byte or in random chunks (empty ones too): the same events, and the same answers written."""
    reference = None
    for kind in SPLITS:
        conn, events = decodeRequests(name, kind)
        got = (common(events), conn.dataToSend())
        if reference is None:
            reference = got
        assert got == reference, kind
        assert not conn.closed
    # what it answered (SETTINGS and PING ACKs) is well-formed
    assert {type(f) for f in frames(reference[1])} <= {SettingsFrame, PingFrame}


@pytest.mark.parametrize("name", SCENARIOS)
def test_capturedRequestsDecodeAsH2DecodesThem(name):
    """The same bytes fed to h2's server connection give the same events (HPACK dynamic table included)."""
    theirs = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
    theirs.initiate_connection()
    raw = theirs.receive_data(capture(name, "c2s"))
    # h2 also reports a HEADERS frame's priority as an event of its own; txmesh does not prioritise
    attached = {id(e.priority_updated) for e in raw if getattr(e, "priority_updated", None) is not None}
    expected = common([e for e in raw if id(e) not in attached])
    assert common(decodeRequests(name)[1]) == expected


def test_grpcioUnaryRequests():
    """Two unary calls; the second's header block refers to the first's through HPACK's dynamic table."""
    events = common(decodeRequests("grpcio-unary")[1])
    reqs = messages(events)
    assert sorted(reqs) == [1, 3]
    for sid, payload in ((1, b"hello"), (3, b"again")):
        head = dict(reqs[sid]["headers"])
        assert (head[b":method"], head[b":path"], head[b":scheme"]) == (b"POST", b"/test.Echo/Unary", b"http")
        assert (head[b"content-type"], head[b"te"]) == (GRPC, b"trailers")
        assert head[b"user-agent"].startswith(b"grpc-python/")
        assert reqs[sid]["body"] == b"\x00" + len(payload).to_bytes(4, "big") + payload
        assert reqs[sid]["ended"] and reqs[sid]["trailers"] is None
    assert dict(reqs[3]["headers"])[b"x-echo-a"] == b"1"
    assert b"x-echo-a" not in dict(reqs[1]["headers"])
    assert [e for e in events if e[0] == "ping"]  # grpcio's BDP ping


def test_grpcioClientStreamingRequest():
    """Three length-prefixed messages in three DATA frames, then an empty DATA frame with END_STREAM."""
    events = common(decodeRequests("grpcio-client-stream")[1])
    reqs = messages(events)
    assert dict(reqs[1]["headers"])[b":path"] == b"/test.Echo/ClientStream"
    body = b"".join(b"\x00" + len(m).to_bytes(4, "big") + m for m in (b"one", b"two", b"three" * 100))
    assert reqs[1]["body"] == body and reqs[1]["ended"]
    assert [e for e in events if e[0] == "data"][-1] == ("data", 1, b"", 0)


def test_curlRequests():
    """curl's GET (END_STREAM on HEADERS) and its POST with a 1029-byte JSON body and a content-length."""
    get = messages(common(decodeRequests("curl-get")[1]))[1]
    assert get["headers"][:4] == [(b":method", b"GET"), (b":path", b"/hello?x=1"), (b":scheme", b"http"),
                                  (b":authority", get["headers"][3][1])]
    assert dict(get["headers"])[b"user-agent"].startswith(b"curl/")
    assert get["ended"] and get["body"] == b""
    post = messages(common(decodeRequests("curl-post")[1]))[1]
    head = dict(post["headers"])
    assert (head[b":method"], head[b":path"], head[b"content-type"]) == (b"POST", b"/submit", b"application/json")
    assert int(head[b"content-length"]) == len(post["body"]) == 1029
    assert post["body"].startswith(b'{"name": "txmesh"') and post["ended"]


def test_h2loadRequestsAndGoaway():
    """Three GETs on streams 1, 3, 5 (two at a time), then h2load's GOAWAY(NO_ERROR)."""
    conn, events = decodeRequests("h2load")
    events = common(events)
    reqs = messages(events)
    assert sorted(reqs) == [1, 3, 5]
    for r in reqs.values():
        assert dict(r["headers"])[b":path"] == b"/bench" and r["ended"]
    assert events[-1] == ("goaway", ErrorCodes.NO_ERROR, 0, b"")
    assert conn.goawayReceived and not conn.closed


def rawFrames(data):
    """The frames of a captured client stream, each as its bytes (the preface skipped)."""
    data = data[24:]
    out = []
    while data:
        n = int.from_bytes(data[:3], "big") + 9
        out.append(data[:n])
        data = data[n:]
    return out


@pytest.mark.parametrize("name", ["grpcio-unary", "curl-post"])
def test_unknownFrameTypesBetweenCapturedFramesAreIgnored(name):
    """Extension frames (RFC 9113 5.5) of unknown types, after the first SETTINGS, change nothing."""
    rng = random.Random(name)
    clean = rawFrames(capture(name, "c2s"))
    noisy = [clean[0]]
    for f in clean[1:]:
        noisy.append(F.frame(rng.choice([0xA, 0xC, 0x10, 0xFA]), rng.randint(0, 255), rng.choice([0, 1, 3, 99]),
                             rng.randbytes(rng.randint(0, 40))))
        noisy.append(f)
    _, expected = decodeRequests(name)
    for kind in ("whole", "random-7"):
        conn = H2Connection(clientSide=False)
        assert common(feed(conn, F.PREFACE + b"".join(noisy), kind)) == common(expected), kind


def test_nghttpPriorityTreeAndSmallTable():
    """
    nghttp2 builds its priority tree with PRIORITY frames on idle streams 3-11 (which opens none of them), then
    requests on stream 13; it announced SETTINGS_HEADER_TABLE_SIZE 0, and h2's answer begins with a dynamic table
    size update to 0 (RFC 7541 4.2).
    """
    conn, events = decodeRequests("nghttp-table-size-0")
    events = common(events)
    assert [e for e in events if e[0] == "priority"] == [("priority", sid) for sid in (3, 5, 7, 9, 11)]
    reqs = messages(events)
    assert list(reqs) == [13] and dict(reqs[13]["headers"])[b":path"] == b"/small-table" and reqs[13]["ended"]
    assert ("settings", {F.MAX_CONCURRENT_STREAMS: 100, F.INITIAL_WINDOW_SIZE: 65535, F.HEADER_TABLE_SIZE: 0}) \
        in events
    assert conn.highestInbound == 13 and list(conn.streams) == [13]
    answer = [f for f in frames(capture("nghttp-table-size-0", "s2c")) if isinstance(f, HeadersFrame)]
    assert answer[0].data[:1] == b"\x20"


def test_headerBlockAfterThePeerShrinksItsTableStartsWithASizeUpdate():
    conn, _ = decodeRequests("nghttp-table-size-0")
    conn.dataToSend()
    conn.sendHeaders(13, [(b":status", b"200"), (b"content-type", b"text/plain")], True)
    (headers,) = frames(conn.dataToSend())
    assert headers.data[:1] == b"\x20"  # a size update to 0, as h2 answered in the capture


# -- captured server bytes, client side ------------------------------------------------------------------------------

def replayRequests(name):
    """
    A client connection that sent, on the captured stream ids, the requests of the capture's other direction; the
    bytes it wrote are checked with h2's server, which must see the same requests.
    """
    reqs = messages(common(decodeRequests(name)[1]))
    client = Ours(True, autoAck=False)
    for sid in sorted(reqs):
        r = reqs[sid]
        assert client.conn.nextStreamId() == sid
        client.headers(sid, r["headers"], end=not r["body"])
        if r["body"]:
            client.send(sid, r["body"], end=True)
    server = Theirs(False)
    assert messages(server.feed(client.out())) == reqs
    return client.conn


def decodeResponses(name, kind="whole"):
    conn = replayRequests(name)
    return conn, feed(conn, capture(name, "s2c"), kind)


@pytest.mark.parametrize("name", RESPONSE_SCENARIOS)
def test_capturedResponsesDecodeTheSameWhateverTheSplit(name):
    """A client of ours that sent the captured requests reads the captured answers the same way in any chunks."""
    reference = None
    for kind in SPLITS:
        conn, events = decodeResponses(name, kind)
        got = (common(events), conn.dataToSend())
        if reference is None:
            reference = got
        assert got == reference, kind
        assert not conn.closed
    frames(reference[1])


@pytest.mark.parametrize("name", RESPONSE_SCENARIOS)
def test_capturedResponsesDecodeAsH2DecodesThem(name):
    """h2's client, having sent the same requests, reports the same events for the captured answers."""
    theirs = Theirs(True, autoAck=False)
    # h2's client sends the same requests on the same ids, then gets the captured answers
    for sid, r in sorted(messages(common(decodeRequests(name)[1])).items()):
        theirs.headers(sid, r["headers"], end=not r["body"])
        if r["body"]:
            theirs.send(sid, r["body"], end=True)
    expected = theirs.feed(capture(name, "s2c"))
    assert common(decodeResponses(name)[1]) == expected


def test_grpcioResponsesWithTrailers():
    """Headers, one message, then trailers with grpc-status; the second call's blocks use the dynamic table."""
    conn, events = decodeResponses("grpcio-unary")
    events = common(events)
    resps = messages(events)
    for sid, payload in ((1, b"hello"), (3, b"again")):
        head = dict(resps[sid]["headers"])
        assert (head[b":status"], head[b"content-type"]) == (b"200", GRPC)
        assert resps[sid]["body"] == b"\x00" + len(payload).to_bytes(4, "big") + payload
        assert dict(resps[sid]["trailers"])[b"grpc-status"] == b"0" and resps[sid]["ended"]
    assert dict(resps[3]["headers"])[b"x-echo-a"] == b"1" and dict(resps[3]["trailers"])[b"x-echo-a"] == b"1"
    # the server's PING was answered with its own payload; streams are forgotten once both sides ended
    pings = [e[1] for e in events if e[0] == "ping"]
    acks = [f.opaque_data for f in frames(conn.dataToSend()) if f.type == 0x6 and "ACK" in f.flags]
    assert pings and acks == pings
    assert conn.streams == {}


def test_grpcioClientStreamingResponse():
    """The server's one message (``COUNT:BYTES`` of what it got) and its trailers."""
    resps = messages(common(decodeResponses("grpcio-client-stream")[1]))
    assert resps[1]["body"] == b"\x00\x00\x00\x00\x053:506"
    assert resps[1]["trailers"] == [(b"grpc-status", b"0"), (b"grpc-message", b"")]


def test_h2ServerResponsesToCurlAndH2load():
    """h2's answers: the body names the request it answers, its length is the content-length."""
    for name, bodies in (("curl-get", {1: b"GET /hello?x=1 0\n"}), ("curl-post", {1: b"POST /submit 1029\n"}),
                         ("h2load", {sid: b"GET /bench 0\n" for sid in (1, 3, 5)})):
        resps = messages(common(decodeResponses(name)[1]))
        assert {sid: r["body"] for sid, r in resps.items()} == bodies, name
        for r in resps.values():
            assert dict(r["headers"])[b":status"] == b"200" and r["ended"]
            assert int(dict(r["headers"])[b"content-length"]) == len(r["body"])


# -- interop with h2, in memory --------------------------------------------------------------------------------------

def test_manyStreamsWithBodiesAndTrailers(pair):
    """40 streams, bodies around the frame and window sizes each way, trailers both ways."""
    client, server = pair
    rng = random.Random(40)
    sizes = [0, 1, 100, 16383, 16384, 16385, 65535, 70000]
    bodies = {}
    for i in range(40):
        sid = client.open(request(path=b"/s/%d" % i, extra=[(b"content-type", GRPC), (b"te", b"trailers")]))
        bodies[sid] = rng.randbytes(rng.choice(sizes))
    _, seenServer = drive(client, server, {client: bodies})
    for sid in bodies:
        client.headers(sid, [(b"x-request-trailer", b"%d" % sid)], end=True)
    seenServer += pump(client, server)[1]
    reqs = messages(seenServer)
    assert sorted(reqs) == sorted(bodies)
    for sid, body in bodies.items():
        assert reqs[sid]["body"] == body
        assert reqs[sid]["trailers"] == [(b"x-request-trailer", b"%d" % sid)] and reqs[sid]["ended"]
    replies = {sid: body[::-1] + b"!" for sid, body in bodies.items()}
    for sid in replies:
        server.headers(sid, [(b":status", b"200"), (b"content-type", GRPC)])
    seenClient, _ = drive(client, server, {server: replies})
    for sid in replies:
        server.headers(sid, [(b"grpc-status", b"0"), (b"grpc-message", b"ok")], end=True)
    seenClient += pump(client, server)[0]
    resps = messages(seenClient)
    for sid, body in replies.items():
        assert resps[sid]["body"] == body and dict(resps[sid]["trailers"])[b"grpc-status"] == b"0"
        assert resps[sid]["ended"]
    side = ours(pair)
    assert side.conn.streams == {}
    assert all(len(f.data) <= 16384 for f in frames(side.wire) if isinstance(f, (DataFrame, HeadersFrame)))


def test_fiveMiBEachWayThroughFlowControl(pair):
    """5 MiB up and 5 MiB down on one stream, at the same time: WINDOW_UPDATEs flow both ways and nothing stalls."""
    client, server = pair
    up, down = random.Random(1).randbytes(5 << 20), random.Random(2).randbytes(5 << 20)
    sid = client.open(request(path=b"/big"))
    seenServer = pump(client, server)[1]
    server.headers(sid, [(b":status", b"200")])
    seenClient = []
    for c, s in (drive(client, server, {client: {sid: up}, server: {sid: down}}), pump(client, server)):
        seenClient += c
        seenServer += s
    client.headers(sid, [(b"x-done", b"up")], end=True)
    server.headers(sid, [(b"x-done", b"down")], end=True)
    c, s = pump(client, server)
    seenClient += c
    seenServer += s
    assert messages(seenServer)[sid]["body"] == up and messages(seenClient)[sid]["body"] == down
    assert messages(seenServer)[sid]["ended"] and messages(seenClient)[sid]["ended"]
    for seen in (seenClient, seenServer):
        updates = [e for e in seen if e[0] == "window"]
        assert sum(e[2] for e in updates if e[1] == sid) >= (5 << 20) - 65535
    # h2 keeps the connection's window at 64 KiB, so it is reopened too (ours is 16 MiB: no need within 5 MiB)
    seenOurs = seenClient if client is ours(pair) else seenServer
    assert sum(e[2] for e in seenOurs if e[:2] == ("window", 0)) >= (5 << 20) - 65535
    side = ours(pair)
    sent = frames(side.wire)
    assert any(f.type == 0x8 and f.stream_id == sid for f in sent)  # we opened the peer's window on the stream
    assert max(len(f.data) for f in sent if isinstance(f, DataFrame)) == 16384


def test_resetStreamsBothWays(pair):
    """Each side resets one stream; the peer sees it as a remote reset and the third stream is untouched."""
    client, server = pair
    a, b, c = (client.open(request(path=p)) for p in (b"/a", b"/b", b"/c"))
    client.send(a, b"x" * 100)
    pump(client, server)
    server.headers(b, [(b":status", b"200")])
    client.reset(a, ErrorCodes.CANCEL)
    server.reset(b, ErrorCodes.INTERNAL_ERROR)
    seenClient, seenServer = pump(client, server)
    assert ("reset", a, ErrorCodes.CANCEL, True) in seenServer
    assert ("reset", b, ErrorCodes.INTERNAL_ERROR, True) in seenClient
    client.send(c, b"still here", end=True)
    server.headers(c, [(b":status", b"204")], end=True)
    seenClient, seenServer = pump(client, server)
    assert ("data", c, b"still here", 10) in seenServer and ("end", c) in seenServer
    assert ("headers", c, [(b":status", b"204")]) in seenClient and ("end", c) in seenClient


def test_dataOnStreamsThatAreGoneStillReopensTheConnectionWindow():
    """
    DATA that crossed our RST_STREAM is dropped without an event (and without a STREAM_CLOSED reset back), and
    data acknowledged after the peer reset its stream is credited: either way the connection's window reopens and
    the next stream's body gets through (a 64 KiB connection window here, so a missed credit would stall it).
    """
    client, server = Theirs(True, autoAck=False), Ours(False, autoAck=False, connectionWindow=65535)
    pump(client, server)
    a, b, c = (client.open(request(path=p)) for p in (b"/a", b"/b", b"/c"))
    pump(client, server)
    client.send(a, b"a" * 16384)
    client.send(a, b"a" * 16384)  # in flight when we reset a
    server.reset(a, ErrorCodes.CANCEL)
    seenClient, seenServer = pump(client, server)
    assert seenServer == [] and ("reset", a, ErrorCodes.CANCEL, True) in seenClient
    for _ in range(2):
        client.send(b, b"b" * 16000)
    seenClient, seenServer = pump(client, server)
    client.reset(b, ErrorCodes.CANCEL)
    seenServer += pump(client, server)[1]
    assert seenServer[-1] == ("reset", b, ErrorCodes.CANCEL, True)
    for e in seenServer:
        if e[0] == "data":
            server.conn.acknowledge(e[3], b)  # consumed after the reset: the connection's share still counts
    server.autoAck = client.autoAck = True
    body = random.Random(5).randbytes(200000)
    _, seenServer = drive(client, server, {client: {c: body}})
    assert b"".join(e[2] for e in seenServer if e[0] == "data") == body
    assert not [f for f in frames(server.wire) if f.type == 0x3 and f.error_code == ErrorCodes.STREAM_CLOSED]


def test_pingBothWays(pair):
    """Each side's PING is reported to the other and answered with an ACK carrying the same 8 bytes."""
    client, server = pair
    client.ping(b"client!!")
    server.ping(b"server!!")
    seenClient, seenServer = pump(client, server)
    assert sorted(seenServer) == [("ping", b"client!!"), ("pingack", b"server!!")]
    assert sorted(seenClient) == [("ping", b"server!!"), ("pingack", b"client!!")]


def test_gracefulGoawayRefusesLaterStreams():
    """
    Our graceful GOAWAY names the last stream accepted; a stream that crossed it on the wire is refused
    (REFUSED_STREAM, safe to retry) and not reported; the streams before it still finish.  (Checked on the frames:
    h2's connection takes any GOAWAY as the end and rejects the RST_STREAM that follows it.)
    """
    client, server = Theirs(True), Ours(False)
    pump(client, server)
    first = client.open(request(), end=True)
    pump(client, server)
    server.conn.goAway()
    later = client.open(request(), end=True)
    assert server.feed(client.out()) == []
    goaway, rst = frames(server.out())
    assert (goaway.type, goaway.last_stream_id, goaway.error_code) == (0x7, first, ErrorCodes.NO_ERROR)
    assert (rst.type, rst.stream_id, rst.error_code) == (0x3, later, ErrorCodes.REFUSED_STREAM)
    assert server.conn.refusedStreams == 1
    server.headers(first, [(b":status", b"200")], end=True)
    assert [(f.type, f.stream_id, sorted(f.flags)) for f in frames(server.out())] == \
        [(0x1, first, ["END_HEADERS", "END_STREAM"])]


def test_goawayWithAnErrorFromH2EndsOurConnection():
    """GOAWAY with an error code, its debug data reported; the connection then reads and writes nothing more."""
    client, server = Ours(True), Theirs(False)
    pump(client, server)
    sid = client.open(request(), end=True)
    pump(client, server)
    server.conn.close_connection(ErrorCodes.ENHANCE_YOUR_CALM, additional_data=b"calm down")
    seenClient, _ = pump(client, server)
    assert seenClient == [("goaway", ErrorCodes.ENHANCE_YOUR_CALM, sid, b"calm down")]
    assert client.conn.closed and client.conn.goawayReceived
    assert client.conn.receiveData(F.pingFrame(b"12345678")) == []  # nothing more is read ...
    client.headers(sid + 2, request())  # ... or written
    assert client.out() == b""


def test_ourErrorGoawayReachesH2():
    """closeConnection's GOAWAY names the last stream accepted, the code and the debug data."""
    client, server = Theirs(True), Ours(False)
    pump(client, server)
    sid = client.open(request(), end=True)
    pump(client, server)
    server.conn.closeConnection(ErrorCodes.PROTOCOL_ERROR, b"bye")
    seenClient, _ = pump(client, server)
    assert seenClient == [("goaway", ErrorCodes.PROTOCOL_ERROR, sid, b"bye")]


def openStreamFromOurSide(pair):
    """A stream on which our side sends a body: our request, or our response to the peer's request."""
    client, server = pair
    if client is ours(pair):
        sid = client.open(request())
        pump(client, server)
    else:
        sid = client.open(request(), end=True)
        pump(client, server)
        server.headers(sid, [(b":status", b"200")])
    return sid


def test_initialWindowSizeChangeMidStreamMovesOurWindowByTheDelta(pair):
    """
    The peer's SETTINGS_INITIAL_WINDOW_SIZE moves an open stream's window by the difference (RFC 9113 6.9.2), to
    below zero too: no DATA goes out until it is positive again, then the body completes.
    """
    side = ours(pair)
    peer = pair[1] if side is pair[0] else pair[0]
    peer.autoAck = False
    sid = openStreamFromOurSide(pair)
    body = random.Random(3).randbytes(200000)
    for off in range(0, 60000, 15000):
        side.send(sid, body[off:off + 15000])
    pump(*pair)
    assert side.window(sid) == 65535 - 60000
    peer.conn.update_settings({SettingCodes.INITIAL_WINDOW_SIZE: 1000})
    pump(*pair)
    assert side.window(sid) == 1000 - 60000
    with pytest.raises(ValueError):
        side.send(sid, b"x")
    peer.conn.update_settings({SettingCodes.INITIAL_WINDOW_SIZE: 200000})
    peer.conn.increment_flow_control_window(1 << 20)
    pump(*pair)
    assert side.window(sid) == 200000 - 60000
    peer.autoAck = True
    seen = drive(*pair, {side: {sid: body[60000:]}})
    seenByPeer = seen[1] if peer is pair[1] else seen[0]
    assert b"".join(e[2] for e in seenByPeer if e[0] == "data") == body[60000:]


def test_endStreamIsRefusedWhileOurWindowIsNegative():
    """
    RFC 9113 6.9.2: with a negative window no DATA frame is sent, an empty END_STREAM one included (h2 as a receiver
    rejects it as a flow-control error), so sendData raises ValueError and leaves the stream as it was.
    """
    client, server = Ours(True), Theirs(False, autoAck=False)
    pump(client, server)
    sid = client.open(request())
    for _ in range(4):
        client.send(sid, b"x" * 15000)
    pump(client, server)
    server.conn.update_settings({SettingCodes.INITIAL_WINDOW_SIZE: 0})
    pump(client, server)
    with pytest.raises(ValueError):
        client.conn.endStream(sid)
    assert client.out() == b"" and client.window(sid) == -60000
    server.conn.increment_flow_control_window(70000, sid)
    pump(client, server)
    client.conn.endStream(sid)
    assert ("end", sid) in pump(client, server)[1]


def test_headerBlockPastSixteenKiBFromH2ArrivesThroughContinuation(pair):
    """h2 splits a header block past 16 KiB into HEADERS + CONTINUATION; we reassemble it, fed byte by byte."""
    client, server = pair
    rng = random.Random(16)
    big = [(b"x-big-%d" % i, rng.randbytes(5000).hex().encode()) for i in range(4)]  # ~25 KiB even Huffman-coded
    if client is ours(pair):
        sid = client.open(request(), end=True)
        pump(client, server)
        server.headers(sid, [(b":status", b"200")] + big, end=True)
        wire = server.out()
        side = client
    else:
        sid = client.open(request(extra=big), end=True)
        wire = client.out()
        side = server
    sent = frames(wire)
    assert len(sent) >= 2 and [type(f) for f in sent] == [HeadersFrame] + [ContinuationFrame] * (len(sent) - 1)
    got = common(feed(side.conn, wire, "bytewise"))
    assert got[0][0] == "headers" and got[0][2][-4:] == big and got[-1] == ("end", sid)


@pytest.mark.parametrize("maxFrameSize", [16384, 20000, 65536])
def test_ourHeaderBlocksHonourThePeersMaxFrameSize(maxFrameSize):
    """
    HEADERS then CONTINUATIONs of at most the peer's SETTINGS_MAX_FRAME_SIZE (blocks around it), END_HEADERS on the
    last only, END_STREAM on the first, the block exactly as encoded; h2 accepts and decodes it.
    """
    client, server = Ours(True), Theirs(False)
    server.conn.update_settings({SettingCodes.MAX_FRAME_SIZE: maxFrameSize, SettingCodes.MAX_HEADER_LIST_SIZE: 1 << 18})
    pump(client, server)
    assert client.frameSize == maxFrameSize
    for blockSize in (100, maxFrameSize, maxFrameSize + 1, 2 * maxFrameSize, 50000):
        pad = blockSize
        for _ in range(4):  # the literal's length prefix grows with it
            head = request() + [(b"x-pad", b"p" * pad)]
            block = client.conn.encoder.encode(head)
            pad -= len(block) - blockSize
        assert len(block) == blockSize
        sid = client.open(head, end=True)
        wire = client.out()
        sent = frames(wire)
        assert all(len(f.data) <= maxFrameSize for f in sent)
        assert b"".join(f.data for f in sent) == block
        assert [type(f) for f in sent] == [HeadersFrame] + [ContinuationFrame] * (len(sent) - 1)
        assert len(sent) == -(-blockSize // maxFrameSize)
        assert [("END_HEADERS" in f.flags) for f in sent] == [False] * (len(sent) - 1) + [True]
        assert "END_STREAM" in sent[0].flags
        assert server.feed(wire) == [("headers", sid, head), ("end", sid)], blockSize


def test_ourDataHonoursTheFrameSizeAndWindowsOrRaises():
    """sendData's contract: past the frame size, the stream's window or the connection's, ValueError, nothing sent."""
    client, server = Ours(True), Theirs(False, autoAck=False)
    server.conn.update_settings({SettingCodes.MAX_FRAME_SIZE: 32768})
    pump(client, server)
    a = client.open(request())
    with pytest.raises(ValueError):
        client.send(a, b"x" * 32769)
    client.send(a, b"x" * 32768)
    client.send(a, b"x" * 32767)
    assert client.window(a) == 0
    with pytest.raises(ValueError):
        client.send(a, b"x")  # the stream's window
    b = client.open(request())
    with pytest.raises(ValueError):
        client.send(b, b"x")  # the connection's window (the stream's is whole)
    assert client.conn.streams[b].sendWindow == 65535
    client.send(b, b"")  # an empty frame costs nothing
    seen = server.feed(client.out())
    assert [len(e[2]) for e in seen if e[0] == "data"] == [32768, 32767, 0]
    with pytest.raises(StreamClosedError):
        client.send(b + 2, b"x")  # not open


def test_paddedDataFromH2(pair):
    """Padding (and its length byte) is stripped from the data but counted in flow control, as the peer counts it."""
    client, server = pair
    side = ours(pair)
    peer = server if side is client else client
    sid = client.open(request())
    pump(client, server)
    if peer is server:
        server.headers(sid, [(b":status", b"200")])
    peer.conn.send_data(sid, b"padded body", pad_length=200)
    peer.conn.send_data(sid, b"", pad_length=0, end_stream=True)
    events = side.conn.receiveData(peer.out())
    data = [e for e in events if isinstance(e, E.DataReceived)]
    assert [(e.data, e.flow_controlled_length, e.stream_ended) for e in data] == \
        [(b"padded body", 212, False), (b"", 1, True)]
    assert peer.window(sid) == (1 << 20) - 213  # our stream window, as the peer sees it


def test_paddedHeadersWithPriorityAndContinuationCraftedWithHyperframe():
    """A HEADERS frame with padding and priority, its block finished by a CONTINUATION: one request."""
    head = request(method=b"GET", path=b"/padded") + [(b"x-long", b"v" * 300)]
    block = Encoder().encode(head)
    hf = HeadersFrame(1, data=block[:50], flags=["PADDED", "PRIORITY", "END_STREAM"], pad_length=17,
                      depends_on=0, stream_weight=200)
    cf = ContinuationFrame(1, data=block[50:], flags=["END_HEADERS"])
    wire = F.PREFACE + F.settingsFrame({}) + hf.serialize() + cf.serialize()
    for kind in ("whole", "bytewise", "random-5"):
        conn = H2Connection(clientSide=False)
        assert common(feed(conn, wire, kind)) == [("settings", {}), ("headers", 1, head), ("end", 1)], kind


def test_completedStreamsAreForgottenWhenTheResponseEndsInItsHeaders():
    """
    A response that ends in its HEADERS frame (a 204, or a trailers-only gRPC error) after the request ended closes
    the stream, as an END_STREAM on DATA or trailers does: the stream leaves ``streams`` and a late RST_STREAM from
    the server is not reported.
    """
    client, server = Ours(True), Theirs(False)
    pump(client, server)
    sid = client.open(request(method=b"GET"), end=True)
    pump(client, server)
    server.headers(sid, [(b":status", b"200"), (b"content-type", GRPC), (b"grpc-status", b"14")], end=True)
    seen, _ = pump(client, server)
    assert seen == [("headers", sid, [(b":status", b"200"), (b"content-type", GRPC), (b"grpc-status", b"14")]),
                    ("end", sid)]
    leaked = sid in client.conn.streams
    late = client.conn.receiveData(F.rstStreamFrame(sid, ErrorCodes.NO_ERROR))
    assert (leaked, common(late)) == (False, [])


# -- property: random client behaviour, our server side against h2's -------------------------------------------------

class _Script:
    """Random valid client actions through h2's client connection, with the stream states they need."""

    def __init__(self, rng, client):
        self.rng = rng
        self.client = client
        self.sending = set()  # streams whose client side is open
        self.alive = set()  # streams not reset
        self.opened = 0

    def step(self):
        rng, conn = self.rng, self.client.conn
        choice = rng.random()
        if choice < 0.2 and self.opened < 16 and len(self.alive) < 10:
            extra = [(b"x-h%d" % i, rng.randbytes(rng.randint(0, 12)).hex().encode()) for i in range(rng.randint(0, 4))]
            if rng.random() < 0.1:
                extra.append((b"x-huge", rng.randbytes(rng.randint(12000, 14000)).hex().encode()))  # CONTINUATION
            end = rng.random() < 0.3
            sid = self.client.open(request(rng.choice([b"GET", b"POST"]), b"/p/%d" % self.opened, extra), end)
            self.opened += 1
            self.alive.add(sid)
            if not end:
                self.sending.add(sid)
        elif choice < 0.55 and self.sending:
            sid = rng.choice(sorted(self.sending))
            room = min(conn.local_flow_control_window(sid), conn.max_outbound_frame_size)
            n = rng.randint(0, min(room, 40000))
            end = rng.random() < 0.2
            pad = rng.choice([None, None, None, rng.randint(0, 255)])
            if pad is not None and n + pad + 1 > room:
                pad = None
            conn.send_data(sid, rng.randbytes(n), end_stream=end, pad_length=pad)
            if end:
                self.sending.discard(sid)
        elif choice < 0.62 and self.sending:
            sid = rng.choice(sorted(self.sending))
            conn.send_headers(sid, [(b"x-trailer", b"%d" % sid)], end_stream=True)
            self.sending.discard(sid)
        elif choice < 0.68 and self.alive:
            sid = rng.choice(sorted(self.alive))
            conn.reset_stream(sid, rng.choice([ErrorCodes.CANCEL, ErrorCodes.INTERNAL_ERROR, ErrorCodes.NO_ERROR]))
            self.alive.discard(sid)
            self.sending.discard(sid)
        elif choice < 0.75:
            conn.ping(rng.randbytes(8))
        elif choice < 0.83 and self.alive:
            sid = rng.choice(sorted(self.alive) + [None])
            conn.increment_flow_control_window(rng.randint(1, 65535), sid)
        elif choice < 0.9:
            setting = rng.choice([SettingCodes.INITIAL_WINDOW_SIZE, SettingCodes.MAX_FRAME_SIZE,
                                  SettingCodes.HEADER_TABLE_SIZE, SettingCodes.MAX_CONCURRENT_STREAMS])
            value = {SettingCodes.INITIAL_WINDOW_SIZE: rng.randint(0, 1 << 20),
                     SettingCodes.MAX_FRAME_SIZE: rng.randint(16384, 1 << 16),
                     SettingCodes.HEADER_TABLE_SIZE: rng.choice([0, 256, 4096]),
                     SettingCodes.MAX_CONCURRENT_STREAMS: rng.randint(1, 200)}[setting]
            conn.update_settings({setting: value})
        elif self.alive:
            conn.prioritize(rng.choice(sorted(self.alive)), weight=rng.randint(1, 256), depends_on=0)


def test_randomClientBehaviourGivesTheEventsH2ServerReports():
    """
    For 40 seeds, ~40 random client actions each: h2's client talks to h2's server (which answers SETTINGS and
    PINGs and acknowledges data); the same client bytes, fed to our server side in random chunks, give the same
    events as h2's server reported, and never a ProtocolError.
    """
    started = time.monotonic()
    for seed in range(40):
        rng = random.Random(seed)
        client, reference = Theirs(True), Theirs(False)
        # windows no smaller than h2's server gives, so that only what the client sends decides the events
        shadow = H2Connection(clientSide=False, streamWindow=F.MAX_WINDOW, connectionWindow=F.MAX_WINDOW)
        shadow.initiateConnection()
        script = _Script(rng, client)
        expected, got = [], []
        for _ in range(40):
            script.step()
            data = client.out()
            if data:
                expected += reference.feed(data)
                cut = sorted(rng.choices(range(len(data) + 1), k=rng.randint(0, 6)))
                for lo, hi in zip([0] + cut, cut + [len(data)]):
                    for e in shadow.receiveData(data[lo:hi]):
                        got += common([e])
                        if isinstance(e, E.DataReceived):
                            shadow.acknowledge(e.flow_controlled_length, e.stream_id)
            shadow.dataToSend()
            answer = reference.out()
            if answer:
                client.feed(answer)
        assert got == expected, "seed %d" % (seed,)
        assert not shadow.closed
    assert time.monotonic() - started < 10
