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
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        for _ in range(200):
            one()
        gc.collect()
        garbage = list(gc.garbage)
    finally:
        gc.set_debug(0)
        del gc.garbage[:]
    kinds = sorted({type(o).__qualname__ for o in garbage})
    assert len(garbage) < 20, "%d objects in cycles after 200 calls: %s" % (len(garbage), kinds[:20])
