"""
The etcd discovery path, measured (issue 12): how long a change takes from an etcd write to the host set a cluster
gets, through the real etcd (Debian's, started like the tests start it) and txmesh's EtcdClient + etcd source; and
what a change costs the source for a prefix of 10,000 hosts.

    .venv/bin/python bench/etcd_discovery.py [--changes 1000] [--hosts 10000]

Prints: the median and 99th percentile of write -> hostsUpdated for single puts (one at a time); the time for
``--changes`` puts written back to back (8 writers) to all reach the sink; the time to read a prefix of ``--hosts``
keys (range + parse + first host set); the source's cost for one change in that set.
"""

import argparse
import base64
import json
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.reactor_thread import onReactor, reactor, waitFor  # noqa: E402
from tests.registry_servers import EtcdServer  # noqa: E402
from txmesh.discovery.base import SourceContext  # noqa: E402
from txmesh.discovery.etcd import EtcdClient  # noqa: E402
from txmesh.discovery.etcd_source import EtcdSource, EtcdSourceConfig  # noqa: E402
from txmesh.discovery_config import EtcdRegistryConfig  # noqa: E402
from txmesh.stats import StatsStore  # noqa: E402


def b64(text):
    return base64.b64encode(text.encode()).decode()


class Sink:
    def __init__(self):
        self.count = 0
        self.last = None
        self.lastAt = None
        self.event = threading.Event()

    def hostsUpdated(self, endpoints, version):
        self.count += 1
        self.last = endpoints
        self.lastAt = time.perf_counter()
        self.event.set()

    def sourceFailed(self, reason):
        pass


def source(url, prefix):
    client = EtcdClient(EtcdRegistryConfig(name="bench", endpoints=(url,)), reactor())
    sink = Sink()
    context = SourceContext(reactor(), "bench", "http1", StatsStore().scope(cluster="bench"), client)
    return client, EtcdSource(EtcdSourceConfig(prefix=prefix), context, sink), sink


def burst(server, sink, prefix, changes, expected):
    """``changes`` new keys written in transactions of 100 puts; the time until the sink has them all."""
    n = sink.count
    start = time.perf_counter()
    for first in range(0, changes, 100):
        ops = [{"request_put": {"key": b64("%s%05d" % (prefix, i)), "value": b64("127.1.%d.%d:80" % (i >> 8, i & 255))}}
               for i in range(first, min(changes, first + 100))]
        server.call("/v3/kv/txn", {"success": ops})
    written = time.perf_counter()
    waitFor(lambda: len(sink.last) == expected, timeout=60)
    print("%d changes in a %d-host set: written in %.3f s, all in the host set %.3f s after the first write "
          "(%d sets delivered)" % (changes, expected, written - start, sink.lastAt - start, sink.count - n))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--changes", type=int, default=1000)
    parser.add_argument("--hosts", type=int, default=10000)
    args = parser.parse_args()
    server = EtcdServer().start()
    try:
        put = lambda k, v: server.call("/v3/kv/put", {"key": b64(k), "value": b64(v)})  # noqa: E731

        # 1. latency of one change, one at a time
        client, src, sink = source(server.url, "/lat/")
        onReactor(src.start)
        waitFor(lambda: sink.count >= 1)
        samples = []
        for i in range(200):
            sink.event.clear()
            t0 = time.perf_counter()
            put("/lat/h%d" % (i,), "127.0.0.1:%d" % (10000 + i,))
            sink.event.wait(5)
            samples.append(sink.lastAt - t0)
        samples.sort()
        print("single put -> host set: median %.2f ms, p99 %.2f ms (200 puts)" % (
            samples[100] * 1000, samples[197] * 1000))

        # 2. a burst of changes
        burst(server, sink, "/lat/b", args.changes, 200 + args.changes)
        onReactor(src.stop)
        onReactor(client.stop)

        # 3. a large prefix
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda i: put("/big/h%05d" % (i,), json.dumps({"address": "10.%d.%d.%d:8080" % (
                i >> 16, (i >> 8) & 255, i & 255), "weight": 1 + i % 5})), range(args.hosts)))
        client, src, sink = source(server.url, "/big/")
        t0 = time.perf_counter()
        onReactor(src.start)
        waitFor(lambda: sink.count >= 1, timeout=60)
        print("%d-key prefix: read, parsed and delivered in %.3f s" % (args.hosts, sink.lastAt - t0))
        samples = []
        for i in range(20):
            n = sink.count
            t0 = time.perf_counter()
            put("/big/h%05d" % (i,), "10.255.0.%d:9090" % (i,))
            waitFor(lambda: sink.count > n)
            samples.append(sink.lastAt - t0)
        samples.sort()
        print("one change in a %d-host set: median %.1f ms write -> host set (20 changes)" % (
            args.hosts, samples[10] * 1000))
        burst(server, sink, "/big/new", args.changes, args.hosts + args.changes)
        onReactor(src.stop)
        onReactor(client.stop)
    finally:
        server.cleanup()


if __name__ == "__main__":
    main()
