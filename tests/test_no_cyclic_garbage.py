"""
A proxied request leaves no cyclic garbage: everything it made (the ActiveStream, its filters and callbacks, the
router's attempt, the listener's per-stream object) is freed by reference counting as the stream ends.  Each
stream used to leave ~26 objects in reference cycles (ActiveStream <-> the downstream's stream object, the stream
-> its filters -> their callbacks -> the stream, the router <-> its UpstreamRequest); the collector then ran every
~25 requests and its pauses (0.25-1 ms each under load, measured with gc.callbacks in bench/pair_latency.py's
sidecars) were a large part of the added p99.

The drivers are bench/cores_ab.py's (the same in-memory calls its instruction counts are taken on): HTTP/1.1,
gRPC unary and a Dubbo two-way call, each through the listener, the filter chain, the router and the real
upstream client protocol.
"""

import gc
import os

import pytest

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench")


def _cyclicGarbageOf(make, times=20):
    """Objects ``make()`` leaves in reference cycles once it returns (and drops what it made)."""
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        for _ in range(times):
            make()
        gc.collect()
        return [type(o).__qualname__ for o in gc.garbage]
    finally:
        gc.set_debug(0)
        del gc.garbage[:]


@pytest.fixture
def builders(monkeypatch):
    monkeypatch.syspath_prepend(BENCH)  # the builders import their neighbours (inproc, grpc_bench) when called
    import cores_ab
    return cores_ab


@pytest.mark.parametrize("workload", ["http1", "grpc", "dubbo"])
def test_a_proxied_call_leaves_no_reference_cycles(builders, workload):
    one = builders.BUILDERS[workload](builders.direct)
    for _ in range(20):  # warm: caches, the pooled upstream connection
        one()
    garbage = _cyclicGarbageOf(one, 200)
    assert len(garbage) < 20, "%d objects in cycles after 200 calls: %s" % (len(garbage), sorted(set(garbage))[:20])


def test_a_closed_connection_leaves_no_reference_cycles_in_what_it_held():
    """
    Per connection: the HTTP/2 connection's frame handlers (once bound methods of the connection), the llhttp
    parser (holding its decoder's methods, let go of by ``dropParser`` when the connection is lost) and the idle
    Deadline (holding the connection's method, let go of by ``release``).  Over real sockets the transport and
    protocol let go of each other too (Twisted's connectionLost), so a closed connection is freed by reference
    counting (measured: no cyclic garbage after 100 curl and 20 h2load connections).
    """
    from twisted.internet.task import Clock

    from txmesh.protocols.h2 import frames as F
    from txmesh.protocols.h2.codec import H2Connection
    from txmesh.protocols.http1.codec import RequestDecoder
    from txmesh.protocols.listener import Deadline

    def h2():
        conn = H2Connection(False)
        conn.initiateConnection()
        conn.receiveData(F.PREFACE + F.settingsFrame({}) + F.pingFrame(b"12345678"))
        conn.dataToSend()

    def http1():
        decoder = RequestDecoder()
        decoder.feed(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /next HTTP/1.1\r\nHo")
        decoder.dropParser()

    class Watched:
        def __init__(self, clock):
            self.deadline = Deadline(clock, 1.0, self.expired)

        def expired(self, kind):
            pass

    clock = Clock()

    def deadline():
        w = Watched(clock)
        w.deadline.set(5.0)
        w.deadline.release()

    assert _cyclicGarbageOf(h2) == []
    assert _cyclicGarbageOf(http1) == []
    assert _cyclicGarbageOf(deadline) == []
    w = Watched(clock)
    w.deadline.set(5.0)
    w.deadline.release()
    clock.advance(10)  # a released deadline never calls the connection
    assert not clock.getDelayedCalls()
