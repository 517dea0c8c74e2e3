"""
Robustness of the Dubbo listener under mutated captured frames (seeded, so every run is the same): requests and
heartbeats from tests/fixtures/dubbo-frames with fresh ids, bytes flipped, inserted, deleted or cut, fed in random
splits through the real filter chain, router and multiplexed pool to upstreams that answer (or drop) every request.

After every feed nothing escaped ``dataReceived``; no id is answered twice or answered unasked; on a connection
still open every two-way request id has exactly one response (OK from upstream or a Dubbo error status), and a
connection the listener closed answered every request read before the bad bytes first.
"""

import os
import random
from collections import Counter

import pytest
from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure

from tests.test_dubbo_listener import FIXTURES, Mesh, answer, load
from tests.test_robustness_http1 import splits
from txmesh.protocols.dubbo import codec as dc

REQUESTS = [load(d + "/" + n) for d in sorted(os.listdir(FIXTURES)) if os.path.isdir(os.path.join(FIXTURES, d))
            for n in sorted(os.listdir(os.path.join(FIXTURES, d))) if n.endswith(".hex") and "-c2s-" in n]
ECHO_RESP = load("sofa-consumer__sofa-provider/c0-s2c-000-resp-echo-status20.hex")
CASES = 600


def pumpUpstreams(mesh, rng):
    """Each upstream answers the requests it was sent (now, in random order), or sometimes drops its connection."""
    for protos in list(mesh.upstreams.values()):
        for up in protos:
            if up.transport.disconnecting:
                if not getattr(up, "_lostByTest", False):
                    up._lostByTest = True
                    up.connectionLost(Failure(ConnectionDone()))
                continue
            data = up.transport.value()
            up.transport.clear()
            if not data:
                continue
            sent = dc.DubboDecoder().feed(data)
            rng.shuffle(sent)
            for req in sent:
                if rng.random() < 0.03:
                    up._lostByTest = True
                    up.connectionLost(Failure(ConnectionDone()))
                    break
                if req.twoWay and not req.event:
                    answer(up, req, ECHO_RESP)


def mutate(rng, data):
    data = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        op = rng.random()
        pos = rng.randrange(len(data) + 1)
        if op < 0.25 and data:
            del data[pos:pos + rng.randint(1, 4)]
        elif op < 0.45:
            data[pos:pos] = bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 3)))
        elif op < 0.85 and pos < len(data):
            # flips in the header (magic, flags, status, length) are the interesting ones
            if rng.random() < 0.5:
                pos = min(len(data) - 1, pos - pos % 16 + rng.randrange(16))
            data[pos] ^= 1 << rng.randrange(8)
        else:
            del data[pos:]
    return bytes(data)


def reference(data, maxBody):
    """
    The two-way request ids a correct listener reads from ``data`` before any fatal error, and the id of the bad
    frame when its header could be read (answered with an error status).
    """
    try:
        frames, errorId = dc.DubboDecoder(maxBody).feed(data), None
    except dc.DubboCodecError as e:
        frames, errorId = list(e.frames), (e.requestId if e.twoWay else None)
    return [f.requestId for f in frames if f.isRequest and f.twoWay], errorId


def run(seed, mutateIt):
    rng = random.Random(seed)
    frames = [dc.withRequestId(f, i + 1) + f[16:] for i, f in
              enumerate(rng.choice(REQUESTS) for _ in range(rng.randint(1, 5)))]
    data = b"".join(frames)
    if mutateIt:
        data = mutate(rng, data)
    mesh = Mesh()
    proto, transport = mesh.client()
    for part in splits(rng, data, (1, 5, 16, 100)):
        proto.dataReceived(part)  # an exception here would be logged by Twisted and drop the connection
        pumpUpstreams(mesh, rng)
        mesh.clock.advance(rng.choice([0, 0, 1]))
        pumpUpstreams(mesh, rng)
    for _ in range(4):
        mesh.clock.advance(10)
        pumpUpstreams(mesh, rng)
    context = "seed %d input %r" % (seed, data)
    twoWay, errorId = reference(data, mesh.factory.maxBodyBytes)
    answered = [f.requestId for f in dc.DubboDecoder().feed(transport.value())]
    # a request reusing an id still in flight gets its own (error) answer: count answers per request, not per id
    asked = Counter(twoWay) + Counter([errorId] if errorId is not None else [])
    extra = Counter(answered) - asked
    assert not extra, "ids answered more often than asked %r: %s" % (dict(extra), context)
    if not transport.disconnecting:
        assert Counter(answered) == asked, context
    else:
        # the listener may close only after answering what it read before the bad bytes
        assert set(answered) >= set(twoWay), "closed with requests unanswered: " + context
    proto.connectionLost(Failure(ConnectionDone()))
    pumpUpstreams(mesh, rng)
    mesh.clock.advance(60)
    assert mesh.value("downstream_cx_active") == 0, context
    assert mesh.value("downstream_rq_active") == 0, context


@pytest.mark.parametrize("block", range(2))
def test_captured_requests_in_random_splits_are_each_answered_once(block):
    for seed in range(block * CASES // 4, (block + 1) * CASES // 4):
        run(seed, False)


@pytest.mark.parametrize("block", range(3))
def test_mutated_frames_get_one_answer_per_id_or_a_clean_close(block):
    for seed in range(10000 + block * CASES // 3, 10000 + (block + 1) * CASES // 3):
        run(seed, True)


def test_requests_before_bad_framing_are_answered_before_the_close():
    """Regression: bad magic after a good request closed the connection at once, and the good request's answer,
    arriving from upstream a moment later, was lost."""
    mesh = Mesh()
    proto, transport = mesh.client()
    echo = load("sofa-consumer__sofa-provider/c0-c2s-000-req-echo.hex")
    proto.dataReceived(echo + b"\x00\x01garbage-not-dubbo")
    assert not transport.disconnecting  # still owes the echo its answer
    [up] = mesh.upstreams["10.0.0.1:20880"]
    [req] = dc.DubboDecoder().feed(up.transport.value())
    answer(up, req, ECHO_RESP)
    [resp] = dc.DubboDecoder().feed(transport.value())
    assert (resp.requestId, resp.status) == (1, dc.OK)
    assert transport.disconnecting
    assert mesh.value("downstream_cx_protocol_error") == 1
