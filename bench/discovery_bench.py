"""
Discovery benchmarks (issue 12, part 5).  Usage: python bench/discovery_bench.py [CHANGES]   (default 1000; about a minute)
                                                 python bench/discovery_bench.py --instructions [POLICY ...]  (valgrind)

(a) CHANGES endpoint changes applied end to end, one after the other:
    - sink: ``ClusterDiscovery.hostsUpdated`` of a 10-host set with one endpoint replaced -> ``Cluster.updateHosts``
      (balancer rebuilt, the removed host's pool drained) -> the next picks reach the new host;
    - file: in process on the real reactor (epoll + inotify): the endpoints file written and renamed over the
      watched one -> inotify -> read and parsed -> sink -> cluster -> a pick returns the new host; timed from
      just after the rename to that pick.
(b) a 10,000-host cluster: ``Cluster.chooseHost`` per lb policy with 10 and 10,000 hosts, A/B alternating in the
    same run; and the cost of one update of the 10,000-host set (one endpoint replaced) per policy, and of an
    update that changes nothing (``update_no_rebuild``).
"""

import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # txmesh and bench from this tree

from twisted.internet.task import Clock
from twisted.plugin import getPlugins

import txmesh.plugins
from txmesh.config import ClusterConfig, EndpointConfig
from txmesh.discovery.base import ClusterDiscovery
from txmesh.discovery.files import FileSourceConfig, FileSourceFactory
from txmesh.discovery_config import DiscoveryConfig
from txmesh.interfaces import ILoadBalancerFactory
from txmesh.protocols.http1.protocol import HTTP1
from txmesh.stats import StatsStore
from txmesh.upstream.cluster import Cluster
from txmesh.upstream.lb import LBContext, findLoadBalancerFactory

POLICIES = ("round_robin", "least_request", "random", "ring_hash", "maglev")


class NullPool:
    def __init__(self, host):
        self.host = host

    def drain(self, serveQueued=False):
        from twisted.internet import defer
        return defer.succeed(None)


def endpoint(i):
    return EndpointConfig("10.%d.%d.%d" % (i >> 16 & 255, i >> 8 & 255, i & 255), 8080)


def makeCluster(policy, clock, discovery=None):
    lbFactory = findLoadBalancerFactory(policy, getPlugins(ILoadBalancerFactory, txmesh.plugins))
    config = ClusterConfig("c", lbPolicy=policy, descriptor=HTTP1, discovery=discovery)
    store = StatsStore()
    return Cluster("c", config, (), lbFactory, NullPool, random.Random(1), store.scope(cluster="c"), clock=clock), store


def picksNew(cluster, address, context=None):
    """A pick reaches ``address`` within as many picks as there are hosts (round robin visits each once)."""
    for _ in range(len(cluster.hosts)):
        if cluster.chooseHost(context).address == address:
            return True
    return False


# -- (a) ----------------------------------------------------------------------------------------------------------


def sinkChanges(n):
    clock = Clock()
    dconfig = DiscoveryConfig(type="bench", factory=None)
    cluster, store = makeCluster("round_robin", clock, dconfig)
    sink = ClusterDiscovery(cluster, dconfig, clock, store.scope(cluster="c"))
    current = [endpoint(i) for i in range(10)]
    sink.hostsUpdated(current, "0")
    times = []
    for i in range(n):
        current = current[1:] + [endpoint(100 + i)]
        start = time.perf_counter()
        sink.hostsUpdated(current, str(i))
        ok = picksNew(cluster, current[-1].host + ":8080")
        times.append(time.perf_counter() - start)
        assert ok
    return times


def fileChanges(n):
    from twisted.internet import reactor

    d = tempfile.mkdtemp(prefix="txmesh-bench-eds-")
    path = os.path.join(d, "eps.json")
    dconfig = DiscoveryConfig(type="file", factory=FileSourceFactory(),
                              sourceConfig=FileSourceConfig(path, 60.0), initialFetchTimeout=0)
    cluster, store = makeCluster("round_robin", reactor, dconfig)
    times = []
    state = {"i": 0, "ports": list(range(10))}

    def write():
        i = state["i"]
        state["ports"] = state["ports"][1:] + [1000 + i]
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"version": str(i), "endpoints": [{"address": "127.0.0.1:%d" % p} for p in state["ports"]]}, f)
        os.rename(tmp, path)
        state["renamed"] = time.perf_counter()

    class TimingSink(ClusterDiscovery):
        def hostsUpdated(self, endpoints, version):
            ClusterDiscovery.hostsUpdated(self, endpoints, version)
            if version != str(state["i"]):
                return  # the first read, or a change already seen
            if not picksNew(cluster, "127.0.0.1:%d" % state["ports"][-1]):
                return
            times.append(time.perf_counter() - state["renamed"])
            state["i"] += 1
            if state["i"] < n:
                write()
            else:
                reactor.stop()

    sink = TimingSink(cluster, dconfig, reactor, store.scope(cluster="c"))

    def begin():
        with open(path, "w") as f:
            json.dump({"version": "start", "endpoints": []}, f)
        sink.start()
        assert sink.source.describe()["watch"] == "inotify", sink.source.describe()
        write()

    reactor.callWhenRunning(begin)
    reactor.callLater(60, reactor.stop)  # bound
    started = time.perf_counter()
    reactor.run(installSignalHandlers=False)
    wall = time.perf_counter() - started
    sink.stop()
    shutil.rmtree(d, ignore_errors=True)
    return times, wall


def report(name, times):
    ms = sorted(t * 1e3 for t in times)
    print("  %-6s %4d changes: total %7.1f ms, per change mean %.3f ms, median %.3f ms, p99 %.3f ms, max %.3f ms"
          % (name, len(ms), sum(ms), statistics.mean(ms), ms[len(ms) // 2], ms[int(len(ms) * 0.99) - 1], ms[-1]))


# -- (b) ----------------------------------------------------------------------------------------------------------


def pickCost(cluster, contexts, n=100000):
    choose = cluster.chooseHost
    k = len(contexts) - 1
    start = time.perf_counter()
    for i in range(n):
        choose(contexts[i & k])
    return (time.perf_counter() - start) / n * 1e9


def picks():
    rng = random.Random(3)
    contexts = [LBContext(hashKey=rng.getrandbits(64)) for _ in range(1024)]
    nones = [None] * 1024
    print("(b) Cluster.chooseHost, ns per pick (A/B alternating, best of 5 rounds of 100,000 picks)")
    print("  %-14s %10s %10s %8s" % ("policy", "10 hosts", "10k hosts", "ratio"))
    for policy in POLICIES:
        clusters = {}
        for size in (10, 10000):
            cluster, _ = makeCluster(policy, Clock())
            cluster.updateHosts([endpoint(i) for i in range(size)])
            clusters[size] = cluster
        ctx = contexts if policy in ("ring_hash", "maglev") else nones
        best = {10: float("inf"), 10000: float("inf")}
        for _ in range(5):
            for size in (10, 10000):
                best[size] = min(best[size], pickCost(clusters[size], ctx))
        print("  %-14s %10.0f %10.0f %8.2f" % (policy, best[10], best[10000], best[10000] / best[10]))


def wholeRequests(rounds=5, n=20000, policy="round_robin", meshesOnly=False):
    """
    bench/inproc.py's proxied HTTP/1.1 request (in-memory transports, the real listener, router, pool and client)
    against a round_robin cluster of 10 and of 10,000 hosts, A/B alternating; every host has its upstream connection
    open before timing (the warm-up visits each), so the difference is the pick and the per-host pool lookups.
    With ``policy="ring_hash"`` every request hashes the same Host header, so it goes to one host whatever the
    cluster's size: the control that separates the cluster's size from spreading requests over 10,000 connections.
    Timers go to the real reactor (not run): 10,000 idle connections keep 10,000 idle timers, and
    twisted.internet.task.Clock re-sorts its whole list on every callLater, which the reactor's heap does not.
    """
    from twisted.internet import reactor
    from twisted.internet import defer
    from twisted.internet.testing import StringTransport

    from bench.inproc import CONFIG, REQUEST, RESPONSE
    from txmesh import config as _config
    from txmesh.filters.chain import FilterChainTemplate
    from txmesh.protocols.http1.client import HTTP1ClientProtocol
    from txmesh.protocols.http1.server import HTTP1ListenerFactory
    from txmesh.protocols.transport import WriteScope
    from txmesh.runtime import Runtime
    from txmesh.upstream.cluster import ClusterManager

    last = [None]

    class Upstream(StringTransport):
        def write(self, data):
            StringTransport.write(self, data)
            last[0] = self

    def build(size):
        endpoints = ", ".join('{address: "%s:8080"}' % endpoint(i).host for i in range(size))
        text = CONFIG.replace('endpoints: [{address: "127.0.0.1:1"}]', "lb_policy: %s, endpoints: [%s]" % (
            policy, endpoints))
        if policy == "ring_hash":
            text = text.replace("route: {cluster: c}", "route: {cluster: c, hash_policy: [{header: {header_name: host}}]}")
        cfg = _config.loads(text)
        scope = WriteScope()

        def connectFactory(clusterConfig):
            def connect(host):
                p = HTTP1ClientProtocol()
                p.writeScope = scope
                t = Upstream()
                t.proto = p
                p.makeConnection(t)
                return defer.succeed(p)
            return connect

        stats = StatsStore()
        clusters = ClusterManager(reactor, cfg.clusters, connectFactory, stats, random.Random(1))
        runtime = Runtime(reactor, clusters, stats, random.Random(1), cfg, writeScope=scope)
        lc = cfg.listeners[0]
        template = FilterChainTemplate(lc.filters, runtime, lc.routeConfig, lc.limits.bufferLimit,
                                       lc.limits.maxRequestBody)
        server = HTTP1ListenerFactory(lc, template, runtime).buildProtocol(None)
        st = StringTransport()
        server.makeConnection(st)
        return server, st

    def run(server, st, count):
        for _ in range(count):
            server.dataReceived(REQUEST)
            ut = last[0]
            ut.clear()
            ut.proto.dataReceived(RESPONSE)
            st.clear()

    meshes = {size: build(size) for size in (10, 10000)}
    for size, (server, st) in meshes.items():
        run(server, st, 2 * size)  # every host's connection opened, then idle
    if meshesOnly:
        return meshes, run
    best = {10: float("inf"), 10000: float("inf")}
    for _ in range(rounds):
        for size, (server, st) in meshes.items():
            start = time.perf_counter()
            run(server, st, n)
            best[size] = min(best[size], (time.perf_counter() - start) / n * 1e6)
    print("(b) whole proxied HTTP/1.1 request (bench/inproc.py's), %s, best of %d rounds of %d:" % (policy, rounds, n))
    print("  10 hosts %.2f us, 10,000 hosts %.2f us (ratio %.3f)" % (best[10], best[10000], best[10000] / best[10]))


def updates():
    print("(c) one update of a 10,000-host set (one endpoint replaced), ms: Cluster.updateHosts through the sink")
    for policy in POLICIES:
        clock = Clock()
        dconfig = DiscoveryConfig(type="bench", factory=None)
        cluster, store = makeCluster(policy, clock, dconfig)
        sink = ClusterDiscovery(cluster, dconfig, clock, store.scope(cluster="c"))
        current = [endpoint(i) for i in range(10000)]
        sink.hostsUpdated(current, "0")
        times = []
        for i in range(5):
            current = current[1:] + [endpoint(20000 + i)]
            start = time.perf_counter()
            sink.hostsUpdated(current, str(i))
            times.append(time.perf_counter() - start)
        start = time.perf_counter()
        sink.hostsUpdated(list(current), "same")
        same = time.perf_counter() - start
        print("  %-14s changed: median %7.1f ms (min %7.1f)   unchanged (no rebuild): %5.1f ms"
              % (policy, statistics.median(times) * 1e3, min(times) * 1e3, same * 1e3))


def instructionsChild(policy, n1, n2):
    """Under callgrind (see L{instructions}): each size's requests run inside itertools.starmap's C starmap_next,
    the one function callgrind counts and dumps after."""
    import itertools
    meshes, run = wholeRequests(policy=policy, meshesOnly=True)
    for size in (10, 10000):
        server, st = meshes[size]
        for count in (n1, n2):
            next(itertools.starmap(run, ((server, st, count),)))


def instructions(policy="round_robin", n1=200, n2=1200):
    """
    (b') machine instructions per whole request with 10 and with 10,000 hosts, under valgrind's callgrind (the
    same method as bench/limits_ab.py --instructions): deterministic, so not at the mercy of a busy machine; time
    differences that remain are cache and memory effects of 10,000 open connections, not work done per request.
    """
    import re
    import subprocess
    env = dict(os.environ, PYTHONHASHSEED="0")
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["valgrind", "--tool=callgrind", "--collect-atstart=no", "--toggle-collect=starmap_next",
                        "--dump-after=starmap_next", "--callgrind-out-file=" + os.path.join(tmp, "cg.out"),
                        sys.executable, os.path.abspath(__file__), "--callgrind-child", policy, str(n1), str(n2)],
                       env=env, check=True, capture_output=True)
        dumps = sorted((int(f.rpartition(".")[2]), f) for f in os.listdir(tmp) if f.startswith("cg.out."))
        counts = []
        for _, f in dumps:
            with open(os.path.join(tmp, f)) as dump:
                counts.append(int(re.search(r"^summary: (\d+)", dump.read(), re.M).group(1)))
    small, large = (counts[1] - counts[0]) / (n2 - n1), (counts[3] - counts[2]) / (n2 - n1)
    print("(b') instructions per whole request (callgrind), %s: 10 hosts %.0f, 10,000 hosts %.0f (%+.2f%%)"
          % (policy, small, large, (large / small - 1) * 100))


if __name__ == "__main__" and sys.argv[1:2] == ["--callgrind-child"]:
    instructionsChild(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    sys.exit(0)

if __name__ == "__main__" and sys.argv[1:2] == ["--instructions"]:
    for policy in sys.argv[2:] or ["round_robin", "least_request", "ring_hash"]:
        instructions(policy)
    sys.exit(0)

if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    print("(a) %d endpoint changes, each applied and picked before the next" % (n,))
    sinkChanges(50)
    report("sink", sinkChanges(n))
    times, wall = fileChanges(n)
    report("file", times)
    print("         file: %d changes in %.1f ms wall (write + rename + inotify + parse + apply + pick, in turn)"
          % (len(times), wall * 1e3))
    picks()
    wholeRequests()
    wholeRequests(policy="ring_hash")
    updates()
