"""
Robustness of the HTTP/2 and gRPC listeners under generated frame sequences (seeded, so every run is the same):
HEADERS with random header lists, DATA, RST_STREAM, WINDOW_UPDATE, SETTINGS, PING, PRIORITY, GOAWAY,
CONTINUATION, unknown frame types and bad lengths, fed in random splits through the real filter chain and router
to an in-memory HTTP/1.1 upstream that answers every request (tests/test_robustness_http1's Upstream).

After every feed: nothing escaped ``dataReceived``.  At the end every stream the listener accepted has ended on
the wire (END_STREAM, RST_STREAM or GOAWAY), or is still open waiting for the rest of its request on an open
connection; after ``connectionLost`` no stream is left and the gauges are back to 0.
"""

import random

import pytest
from hpack import Encoder
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    PriorityFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from tests.test_h2_defences import PREFACE, rawFrames
from tests.test_robustness_http1 import InMemoryListener, splits

CONFIG = """
listeners:
  - name: l
    protocol: %s
    address: tcp:0
    route_config:
      virtual_hosts: [{name: all, domains: ["*"], routes: [{match: {prefix: /}, route: {cluster: c}}]}]
clusters: [{name: c, endpoints: [{address: "127.0.0.1:1"}]}]
"""
CASES = 150


class Mesh(InMemoryListener):
    """One HTTP/2 (or gRPC) listener connection wired to an answering HTTP/1.1 upstream, all in memory."""

    def __init__(self, rng, protocol):
        InMemoryListener.__init__(self, rng, CONFIG % protocol)

    @property
    def accepted(self):
        """The stream ids the listener made a stream for."""
        return [s.downstream.sid for s in self.mesh.streams]


# -- frame generation -------------------------------------------------------------------------------------------

_NAMES = [b":method", b":path", b":scheme", b":authority", b":status", b"content-type", b"te", b"grpc-timeout",
          b"content-length", b"connection", b"x-a", b"X-Upper", b"", b"host", b"cookie"]
_VALUES = [b"POST", b"GET", b"/", b"/svc/M", b"http", b"a.svc", b"application/grpc", b"trailers", b"1S", b"5",
           b"x", b"", b"bad\r\nvalue", b"\x00", b"keep-alive", b"99999999999999999999"]


def requestFields(rng, grpc):
    fields = [(b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"a.svc"),
              (b":path", b"/svc/M%d" % rng.randint(0, 9))]
    if grpc or rng.random() < 0.3:
        fields += [(b"content-type", b"application/grpc"), (b"te", b"trailers")]
    if rng.random() < 0.3:
        # a random header list: valid, misordered, duplicated or malformed fields
        fields = list(fields)
        for _ in range(rng.randint(1, 4)):
            op = rng.random()
            if op < 0.5:
                fields.insert(rng.randint(0, len(fields)), (rng.choice(_NAMES), rng.choice(_VALUES)))
            elif op < 0.8 and fields:
                del fields[rng.randrange(len(fields))]
            else:
                rng.shuffle(fields)
    return fields


def grpcMessage(rng):
    payload = bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 20)))
    return b"\x00" + len(payload).to_bytes(4, "big") + payload


def onStream(frame, sid):
    """``frame`` serialized with stream id ``sid`` (hyperframe refuses to build some frames on stream 0)."""
    data = bytearray(frame.serialize())
    data[5:9] = sid.to_bytes(4, "big")
    return bytes(data)


def frameSequence(rng, grpc):
    """Frames (bytes), the stream ids the client itself reset, and whether it sent GOAWAY."""
    enc = Encoder()
    out = []
    resets = set()
    goaway = False
    sids = []
    nextSid = 1
    for _ in range(rng.randint(1, 12)):
        roll = rng.random()
        sid = rng.choice(sids) if sids and rng.random() < 0.8 else rng.choice([0, 1, 2, 3, 5, 99, nextSid])
        if roll < 0.3:
            sid = nextSid
            nextSid += 2
            sids.append(sid)
            block = enc.encode(requestFields(rng, grpc))
            end = rng.random() < 0.4
            if rng.random() < 0.15 and len(block) > 1:
                cut = rng.randint(1, len(block) - 1)
                f = HeadersFrame(sid, data=block[:cut], flags=["END_STREAM"] if end else [])
                c = ContinuationFrame(sid, data=block[cut:], flags=["END_HEADERS"])
                out += [f.serialize(), c.serialize()]
                continue
            flags = ["END_HEADERS"] + (["END_STREAM"] if end else [])
            out.append(HeadersFrame(sid, data=block, flags=flags).serialize())
        elif roll < 0.55:
            data = grpcMessage(rng) if grpc else bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 30)))
            if rng.random() < 0.2:
                data = data[:rng.randint(0, len(data))]
            out.append(onStream(DataFrame(1, data=data, flags=["END_STREAM"] if rng.random() < 0.6 else []), sid))
        elif roll < 0.62:
            out.append(onStream(RstStreamFrame(1, error_code=rng.choice([0, 1, 8])), sid))
            resets.add(sid)
        elif roll < 0.68:
            out.append(WindowUpdateFrame(rng.choice([0, sid]), window_increment=rng.choice([1, 1000, 2 ** 31 - 1]))
                       .serialize())
        elif roll < 0.73:
            settings = {rng.choice([1, 2, 3, 4, 5, 6, 0x99]): rng.choice([0, 1, 100, 16384, 2 ** 24])}
            flags = ["ACK"] if rng.random() < 0.2 else []
            out.append(SettingsFrame(0, settings={} if flags else settings, flags=flags).serialize())
        elif roll < 0.78:
            out.append(PingFrame(0, opaque_data=b"12345678", flags=["ACK"] if rng.random() < 0.2 else []).serialize())
        elif roll < 0.83:
            out.append(onStream(PriorityFrame(1, depends_on=rng.choice([0, sid, 7]), stream_weight=rng.randint(0, 255)),
                                sid))
        elif roll < 0.85:
            out.append(GoAwayFrame(0, last_stream_id=max(sids or [0]), error_code=rng.choice([0, 2])).serialize())
            goaway = True
        elif roll < 0.88:
            out.append(onStream(ContinuationFrame(1, data=enc.encode([(b"x-a", b"1")]), flags=["END_HEADERS"]), sid))
        elif roll < 0.93:
            # an unknown frame type: must be ignored
            body = b"zz"
            out.append(len(body).to_bytes(3, "big") + bytes([0x42, 0]) + sid.to_bytes(4, "big") + body)
        else:
            # a frame whose length field lies, or raw garbage
            f = bytearray(rng.choice([PingFrame(0, opaque_data=b"abcdefgh"), RstStreamFrame(sid or 1),
                                      WindowUpdateFrame(0, window_increment=5)]).serialize())
            f[2] = (f[2] + rng.choice([-1, 1, 3])) % 256
            out.append(bytes(f))
    return out, resets, goaway


def ended(frames):
    """Stream ids that ended on the wire, and whether a GOAWAY was sent."""
    done = set()
    goaway = False
    for f in frames:
        if isinstance(f, GoAwayFrame):
            goaway = True
        elif isinstance(f, RstStreamFrame) or ("END_STREAM" in f.flags and isinstance(f, (HeadersFrame, DataFrame))):
            done.add(f.stream_id)
    return done, goaway


def run(seed, protocol):
    rng = random.Random(seed)
    grpc = protocol == "grpc"
    frames, clientResets, clientGoaway = frameSequence(rng, grpc)
    data = PREFACE + SettingsFrame(0).serialize() + b"".join(frames)
    mesh = Mesh(rng, protocol)
    for part in splits(rng, data, (1, 9, 13, 64)):
        mesh.server.dataReceived(part)  # an exception here would be logged by Twisted and drop the connection
        mesh.pump()
        mesh.clock.advance(rng.choice([0, 0, 0.5]))
        mesh.pump()
    for _ in range(5):
        mesh.clock.advance(20)
        mesh.pump()
    context = "seed %d %s input %r" % (seed, protocol, data)
    done, goaway = ended(rawFrames(mesh.transport))
    closed = mesh.transport.disconnecting
    for sid in mesh.accepted:
        s = mesh.server.streams.get(sid)
        waiting = s is not None and not s.requestEnded and not closed
        assert sid in done or sid in clientResets or goaway or clientGoaway or waiting, \
            "stream %d never ended: %s" % (sid, context)
    if closed:
        assert goaway or clientGoaway, "closed without GOAWAY: " + context
    mesh.close()
    assert mesh.server.streams == {}, context
    for name in ("downstream_rq_active", "downstream_cx_active"):
        assert mesh.stats.total(name) == 0, "%s: %s" % (name, context)


@pytest.mark.parametrize("protocol", ["http2", "grpc"])
@pytest.mark.parametrize("block", range(2))
def test_random_frame_sequences_end_every_accepted_stream(protocol, block):
    for seed in range(block * CASES, (block + 1) * CASES):
        run(seed, protocol)


def test_streams_open_before_a_clients_graceful_goaway_still_get_their_responses():
    mesh = Mesh(random.Random(0), "http2")
    block = Encoder().encode([(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"a.svc"),
                              (b":path", b"/x")])
    mesh.server.dataReceived(PREFACE + SettingsFrame(0).serialize()
                             + HeadersFrame(1, data=block, flags=["END_HEADERS", "END_STREAM"]).serialize()
                             + GoAwayFrame(0, last_stream_id=0).serialize())
    mesh.pump()
    done, _ = ended(rawFrames(mesh.transport))
    assert 1 in done
    assert mesh.transport.disconnecting  # and then the connection closes
