"""
Per-pick cost of each load-balancing policy, and the build cost of the hash policies' ring and table.

Usage: python bench/lb_pick.py [HOSTS ...]   (default 10 100 1000)

Picks run on a healthy host set (the common case: the first pick is taken); ring_hash and maglev are measured with
a fresh 64-bit key per pick (as the router passes it) and with the route's header hash policy computed too; the
slow-start rows are round_robin and least_request while a new host ramps (EDF schedule).  Build times are for a
host-set change of 1,000 and 10,000 hosts (what ``Cluster.updateHosts`` pays, off the request path).
"""

import random
import sys
import time

from twisted.internet.task import Clock

from txmesh.config import LbConfig, SlowStartConfig
from txmesh.routing import HashPolicy
from txmesh.stream import HeaderMap, RequestHead, StreamInfo
from txmesh.upstream.hashing import requestHash
from txmesh.upstream.host import Host
from txmesh.upstream.lb import (LBContext, LeastRequestLoadBalancer, LoadBalancerOptions, RandomLoadBalancer,
                                RoundRobinLoadBalancer, WeightedRoundRobinLoadBalancer)
from txmesh.upstream.lb_ewma import PeakEwmaLoadBalancer
from txmesh.upstream.lb_hash import MaglevLoadBalancer, RingHashLoadBalancer

PICKS = 200000


def hosts(n, weighted=False):
    return [Host("10.%d.%d.%d" % (i >> 16 & 255, i >> 8 & 255, i & 255), 8080, 1 + i % 3 if weighted else 1)
            for i in range(n)]


def perPick(fn, n=PICKS):
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n * 1e6


def picks(n):
    clock = Clock()
    options = LoadBalancerOptions(clock=clock)
    rows = []
    rng = random.Random(1)
    for name, cls, weighted in (("round_robin", RoundRobinLoadBalancer, False),
                                ("weighted_round_robin", WeightedRoundRobinLoadBalancer, True),
                                ("random", RandomLoadBalancer, True),
                                ("least_request (equal weights)", LeastRequestLoadBalancer, False),
                                ("least_request (weighted, EDF)", LeastRequestLoadBalancer, True),
                                ("peak_ewma", PeakEwmaLoadBalancer, False)):
        lb = cls(hosts(n, weighted), rng, options)
        rows.append((name, perPick(lambda: lb.chooseHost(None))))
    keys = [LBContext(hashKey=rng.getrandbits(64)) for _ in range(1024)]
    for name, cls in (("ring_hash", RingHashLoadBalancer), ("maglev", MaglevLoadBalancer)):
        lb = cls(hosts(n), rng, options)
        it = iter(range(1 << 62))
        rows.append((name + " (key given)", perPick(lambda: lb.chooseHost(keys[next(it) & 1023]))))
        policies = (HashPolicy("header", b"x-user"),)
        request = RequestHead(b"GET", b"/", b"app", HeaderMap.fromPairs([("accept", "*/*"), ("x-user", "u-42")]))
        info = StreamInfo(0.0, "http1", "l", "10.0.0.1:1234")
        rows.append((name + " + header hash policy",
                     perPick(lambda: lb.chooseHost(LBContext(hashKey=requestHash(policies, request, info))))))
        rows.append((name + " (no key: random)", perPick(lambda: lb.chooseHost(None))))
    ramping = hosts(n)
    clock.advance(100)
    ramping[-1].addedAt = clock.seconds()
    ssOptions = LoadBalancerOptions(clock=clock, config=LbConfig(slowStart=SlowStartConfig(window=1e9)))
    for name, cls in (("round_robin, slow start ramping", RoundRobinLoadBalancer),
                      ("least_request, slow start ramping", LeastRequestLoadBalancer)):
        lb = cls(ramping, rng, ssOptions)
        rows.append((name, perPick(lambda: lb.chooseHost(None))))
    return rows


def builds():
    rows = []
    rng = random.Random(2)
    for n in (1000, 10000):
        for weighted in (False, True):
            hs = hosts(n, weighted)
            for name, cls in (("ring_hash", RingHashLoadBalancer), ("maglev", MaglevLoadBalancer)):
                start = time.perf_counter()
                cls(hs, rng)
                rows.append(("%s build, %d hosts%s" % (name, n, ", weights 1-3" if weighted else ""),
                             (time.perf_counter() - start) * 1e3))
    return rows


def main(argv):
    sizes = [int(a) for a in argv] or [10, 100, 1000]
    print("%-40s %s" % ("policy (µs per pick)", "  ".join("%8d hosts" % n for n in sizes)))
    results = [picks(n) for n in sizes]
    for i, (name, _) in enumerate(results[0]):
        print("%-40s %s" % (name, "  ".join("%14.2f" % r[i][1] for r in results)))
    print()
    for name, ms in builds():
        print("%-40s %8.1f ms" % (name, ms))


if __name__ == "__main__":
    main(sys.argv[1:])
