"""
The cyclic collector's work in every Python process started with this directory first on ``PYTHONPATH``
(docs/performance.md "Collector pauses"): per generation, collections, mean and max pause, objects collected; and
the objects alive and frozen (``gc.freeze``).  Written every 50 collections to $TXMESH_GC_TRACE_DIR/trace-PID.txt
(default /tmp), headed by the process's last argument (a sidecar's mesh.yaml in bench/pair_latency.py).

    PYTHONPATH=bench/gc_trace TXMESH_GC_TRACE_DIR=/tmp/gc python bench/pair_latency.py --rate 1000

A diagnostic: the counting runs inside the collector, and each write lists every object once.
"""

import gc
import os
import sys
import time

_DIR = os.environ.get("TXMESH_GC_TRACE_DIR", "/tmp")
_stats = {0: [0, 0.0, 0.0, 0], 1: [0, 0.0, 0.0, 0], 2: [0, 0.0, 0.0, 0]}  # collections, seconds, max, collected
_state = [0.0, 0]  # the running collection's start, collections so far


def _write():
    os.makedirs(_DIR, exist_ok=True)
    with open(os.path.join(_DIR, "trace-%d.txt" % os.getpid()), "w") as f:
        f.write("%s objects=%d frozen=%d\n" % (" ".join(sys.argv[-1:]), len(gc.get_objects()), gc.get_freeze_count()))
        for generation, (n, total, longest, collected) in _stats.items():
            if n:
                f.write("gen%d n=%d mean=%.1fus max=%.1fus total=%.1fms collected=%d\n"
                        % (generation, n, total / n * 1e6, longest * 1e6, total * 1e3, collected))


def _observe(phase, info):
    if phase == "start":
        _state[0] = time.perf_counter()
        return
    took = time.perf_counter() - _state[0]
    s = _stats[info["generation"]]
    s[0] += 1
    s[1] += took
    s[2] = max(s[2], took)
    s[3] += info["collected"]
    _state[1] += 1
    if _state[1] % 50 == 0:
        _write()


gc.callbacks.append(_observe)
