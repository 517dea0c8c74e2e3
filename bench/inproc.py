"""
The Python cost of one proxied HTTP/1.1 request, without sockets: a listener connection and an upstream
connection on in-memory transports, the upstream's answer fed back by hand.  What remains after this is the
reactor and the kernel.  Usage: python bench/inproc.py [N] [--profile] [--path TARGET]

``--path`` sends TARGET instead of /index.html (e.g. ``/a/./b/%2e%2e/c``: the path normalisation's slow way).
"""

import cProfile
import os
import pstats
import random
import sys
import time

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from txmesh import config as _config
from txmesh.filters.chain import FilterChainTemplate
from txmesh.path_normalization import pathNormalizerFor
from txmesh.protocols.http1.client import HTTP1ClientProtocol
from txmesh.protocols.http1.server import HTTP1ListenerFactory
from txmesh.protocols.transport import WriteScope
from txmesh.runtime import Runtime
from txmesh.stats import StatsStore
from txmesh.upstream.cluster import ClusterManager

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import requestStatsOf  # noqa: E402 (the module next to this one)

CONFIG = """
listeners:
  - name: l
    protocol: http
    address: tcp:0
    route_config:
      virtual_hosts: [{name: all, domains: ["*"], routes: [{match: {prefix: /}, route: {cluster: c}}]}]
clusters: [{name: c, endpoints: [{address: "127.0.0.1:1"}]}]
"""
REQUEST = (b"GET /index.html HTTP/1.1\r\nHost: app.svc\r\nUser-Agent: wrk\r\nAccept: */*\r\n\r\n")
RESPONSE = (b"HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Sat, 21 Nov 2026 10:00:00 GMT\r\n"
            b"Content-Type: text/plain\r\nContent-Length: 100\r\nConnection: keep-alive\r\n\r\n" + b"x" * 100)


def build():
    cfg = _config.loads(CONFIG)
    clock = Clock()
    upstreams = []
    scope = WriteScope()

    def connectFactory(clusterConfig):
        def connect(host):
            p = HTTP1ClientProtocol()
            p.writeScope = scope
            t = StringTransport()
            p.makeConnection(t)
            upstreams.append((p, t))
            return defer.succeed(p)
        return connect

    stats = StatsStore()
    clusters = ClusterManager(clock, cfg.clusters, connectFactory, stats, random.Random(1))
    runtime = Runtime(clock, clusters, stats, random.Random(1), cfg, writeScope=scope)
    lc = cfg.listeners[0]
    template = FilterChainTemplate(lc.filters, runtime, lc.routeConfig, lc.limits.bufferLimit, lc.limits.maxRequestBody,
                                   paths=pathNormalizerFor(lc, stats),  # the default path normalisation, as served
                                   **requestStatsOf(runtime))
    factory = HTTP1ListenerFactory(lc, template, runtime)
    server = factory.buildProtocol(None)
    st = StringTransport()
    server.makeConnection(st)
    return server, st, upstreams


def run(n, request=REQUEST):
    server, st, upstreams = build()
    for i in range(n):
        server.dataReceived(request)
        up, ut = upstreams[0]
        ut.clear()
        up.dataReceived(RESPONSE)
        st.clear()


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 and sys.argv[1].isdigit() else 20000
    if "--path" in sys.argv:
        REQUEST = REQUEST.replace(b"/index.html", sys.argv[sys.argv.index("--path") + 1].encode("latin-1"), 1)
    run(1000, REQUEST)
    t = time.perf_counter()
    run(n, REQUEST)
    el = time.perf_counter() - t
    print("%.2f µs per proxied request (Python only, no sockets)" % (el / n * 1e6))
    if "--profile" in sys.argv:
        cProfile.run("run(%d, REQUEST)" % n, "/tmp/inproc.prof")
        pstats.Stats("/tmp/inproc.prof").sort_stats("tottime").print_stats(25)
