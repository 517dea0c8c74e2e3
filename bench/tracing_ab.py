"""
What tracing costs when it is on (issue 16 part 2), on bench/inproc.py's in-memory HTTP/1.1 path: the same run,
configs without a ``tracing`` block, with one sampling nothing (``sampling_ratio: 0``: context read and written,
span ids made, nothing recorded) and with one sampling every request (a span recorded, ended and handed to the
SDK's BatchSpanProcessor, whose thread exports to an exporter that drops it: the OTLP encoding and the network
are not in the figure, the batch thread's CPU is, as CPU time of the process).

    python bench/tracing_ab.py [N] [ROUNDS]

Tracing off is the path without a tracing block: the tracing filter is not installed (bench/limits_ab.py
``--instructions`` against the previous commit shows that path unchanged; docs/performance.md).
"""

import statistics
import sys
import os
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import inproc  # noqa: E402 (the bench next to this one)

from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult  # noqa: E402
from twisted.internet.task import Clock  # noqa: E402

from txmesh.filters import chain  # noqa: E402
from txmesh.filters.tracing import withTracing  # noqa: E402
from txmesh.tracer import Tracer  # noqa: E402


class Dropped(SpanExporter):
    def export(self, spans):
        return SpanExportResult.SUCCESS

    def shutdown(self):
        pass


def traced(ratio, spawn=False):
    return ("tracing: {exporter: otlp_http, sampling_ratio: %s, spawn_upstream_span: %s}\n"
            % (ratio, "true" if spawn else "false")) + inproc.BASE_CONFIG


inproc.BASE_CONFIG = inproc.CONFIG
CASES = [("tracing off", inproc.CONFIG), ("tracing, ratio 0", traced(0)), ("tracing, ratio 1", traced(1)),
         ("ratio 1 + upstream", traced(1, True))]


def perRequest(config, n):
    inproc.CONFIG = config
    processors = []
    original = inproc.FilterChainTemplate

    def template(filters, runtime, *args, **kwargs):
        cfg = runtime.config
        if cfg.tracing is not None:
            processor = BatchSpanProcessor(Dropped(), schedule_delay_millis=200)
            processors.append(processor)
            tracer = Tracer(cfg.tracing, Clock(), processor=processor)
            tracer.start()
            filters = withTracing(cfg.listeners[0], tracer, runtime.stats)
        return chain.FilterChainTemplate(filters, runtime, *args, **kwargs)

    inproc.FilterChainTemplate = template
    try:
        inproc.run(1000)
        t = time.process_time()  # the whole process: the batch processor's thread is billed too
        inproc.run(n)
        return (time.process_time() - t) / n * 1e6
    finally:
        inproc.FilterChainTemplate = original
        for processor in processors:
            processor.shutdown()


def main(argv):
    n = int(argv[0]) if argv else 20000
    rounds = int(argv[1]) if len(argv) > 1 else 5
    results = {name: [] for name, _ in CASES}
    for _ in range(rounds):
        for name, config in CASES:
            results[name].append(perRequest(config, n))
    base = statistics.median(results["tracing off"])
    print("CPU µs per request, median [min-max] of %d rounds, %d requests each" % (rounds, n))
    for name, _ in CASES:
        values = results[name]
        m = statistics.median(values)
        print("  %-18s %7.1f [%.1f-%.1f]  %+6.1f%%" % (name, m, min(values), max(values), (m / base - 1) * 100))


if __name__ == "__main__":
    main(sys.argv[1:])
