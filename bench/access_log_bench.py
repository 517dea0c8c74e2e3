"""
Per-line cost of the access log's formats: the built-in text and JSON lines, an Envoy-style ``format`` string and
a ``json_format`` mapping, formatted from a finished stream's StreamInfo and request (what ``onStreamComplete``
pays; the buffered write is the same for all and left out).

Usage: python bench/access_log_bench.py [--against OLD_ACCESS_LOG_PY] [LINES]
(default 200000 lines; best of 5 runs, CPU microseconds per line)

``--against`` loads another checkout's txmesh/filters/access_log.py (e.g. ``git show main:txmesh/filters/
access_log.py > /tmp/old.py``) and times its built-in text and JSON lines interleaved with this one's, run by run,
so a busy machine's noise hits both sides alike.
"""

import importlib.util

import sys
import time

from twisted.internet.task import Clock

from txmesh.filters.access_log import AccessLogFactory
from txmesh.stream import HeaderMap, RequestHead, StreamInfo
from txmesh.testing import FakeConfigContext

T0 = 1795255200.123

CUSTOM = ('[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH):256% %PROTOCOL%" %RESPONSE_CODE% '
          '%RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESPONSE_DURATION% '
          '"%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" "%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" '
          '"%UPSTREAM_HOST%" %ROUTE_NAME% %UPSTREAM_CLUSTER%')
JSON_FORMAT = {"start_time": "%START_TIME%", "method": "%REQ(:METHOD)%", "path": "%REQ(:PATH)%",
               "protocol": "%PROTOCOL%", "response_code": "%RESPONSE_CODE%", "response_flags": "%RESPONSE_FLAGS%",
               "bytes_received": "%BYTES_RECEIVED%", "bytes_sent": "%BYTES_SENT%", "duration": "%DURATION%",
               "upstream_host": "%UPSTREAM_HOST%", "user_agent": "%REQ(USER-AGENT)%",
               "request_id": "%REQ(X-REQUEST-ID)%", "route_name": "%ROUTE_NAME%"}


def stream():
    info = StreamInfo(T0, "http/1.1", "ingress", "10.0.0.1:5555")
    info.routeName, info.clusterName, info.upstreamHost = "api", "backend", "127.0.0.1:8080"
    info.responseCode, info.bytesSent, info.endTime = 200, 1234, T0 + 0.005
    info.requestId = b"6f1d2c3e-0d2b-4c5a-9a3e-3f1f0b9c2d11"
    for name in ("upstreamStartTime", "upstreamFirstByteTime", "upstreamEndTime"):
        if hasattr(info, name):  # older checkouts (the A side) lack them
            setattr(info, name, T0 + 0.004)
    request = RequestHead(b"GET", b"/api/v1/orders/12345?expand=items", b"shop.example.com",
                          HeaderMap.fromPairs([("user-agent", "curl/8.5.0"), ("accept", "*/*"),
                                               ("x-forwarded-for", "10.0.0.1"),
                                               ("x-request-id", "6f1d2c3e-0d2b-4c5a-9a3e-3f1f0b9c2d11")]))
    return info, request


def measure(formatLine, lines):
    info, request = stream()
    clock = Clock()
    best = None
    for _ in range(5):
        start = time.process_time()
        for _ in range(lines):
            formatLine(info, request, clock)
        took = time.process_time() - start
        best = took if best is None else min(best, took)
    return best / lines * 1e6


def interleaved(old, new, lines, rounds=7):
    """Best-of-``rounds`` us/line of two formatLine functions, timed alternately."""
    info, request = stream()
    clock = Clock()
    best = [None, None]
    for _ in range(rounds):
        for i, formatLine in enumerate((old, new)):
            start = time.process_time()
            for _ in range(lines):
                formatLine(info, request, clock)
            took = (time.process_time() - start) / lines * 1e6
            best[i] = took if best[i] is None else min(best[i], took)
    return best


def main(argv):
    argv = list(argv)
    against = None
    if len(argv) > 2 and argv[1] == "--against":
        against = argv[2]
        del argv[1:3]
    lines = int(argv[1]) if len(argv) > 1 else 200000
    if against is not None:
        spec = importlib.util.spec_from_file_location("old_access_log", against)
        old = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(old)
        from txmesh.filters import access_log as new
        print("%-16s %10s %10s %8s" % ("format", "old us", "new us", "change"))
        for name in ("formatText", "formatJson"):
            a, b = interleaved(getattr(old, name), getattr(new, name), lines)
            print("%-16s %10.2f %10.2f %+7.1f%%" % (name, a, b, (b - a) / a * 100))
        return
    factory = AccessLogFactory(stdout=sys.stdout)
    rows = [("text (default)", {"format": "text"}), ("json", {"format": "json"}),
            ("format string", {"format": CUSTOM}), ("json_format", {"json_format": JSON_FORMAT})]
    print("%-16s %10s" % ("format", "us/line"))
    for name, raw in rows:
        try:
            config = factory.buildConfig(raw, FakeConfigContext())
        except Exception as e:  # an older checkout without operators
            print("%-16s %10s  (%s)" % (name, "-", str(e).splitlines()[0][:60]))
            continue
        print("%-16s %10.2f" % (name, measure(config.formatLine, lines)))


if __name__ == "__main__":
    main(sys.argv)
