"""
Dubbo bench: calls/s and p50/p99 of a real consumer (sofa-rpc-node, 32 calls in flight on one connection) to a
real provider, directly and through txmesh, in one run; plus txmesh's CPU microseconds per call from /proc.

It also gives the consumer's and the provider's CPU per call on each path (the consumer from the children's rusage,
the provider from /proc), and what those sums allow: on a machine of C cores all three processes share, a path
cannot exceed C / (CPU seconds per call summed over its processes) calls/s, whatever the proxy's latency.  Rounds
alternate the paths.

usage: python bench/dubbo_bench.py [calls] [rounds]   (needs `npm ci` in tests/dubbo_peers)
"""

import json
import os
import resource
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests import support  # noqa: E402
from tests.test_integration_dubbo import CONFIG, NODE, PEERS, startProvider  # noqa: E402


def cpuSeconds(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(port, calls):
    out = subprocess.run([NODE, os.path.join(PEERS, "consumer.js"), "127.0.0.1:%d" % port, "bench", str(calls)],
                         cwd=PEERS, capture_output=True, text=True, timeout=600)
    return json.loads(out.stdout.strip().splitlines()[-1])


def childrenCpu():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def measured(port, calls, pids):
    """One run of ``calls``: the consumer's result, with the CPU seconds per call of the consumer and of ``pids``."""
    before = [cpuSeconds(p) for p in pids]
    consumer = childrenCpu()
    r = run(port, calls)
    r["consumerUs"] = (childrenCpu() - consumer) * 1e6 / r["calls"]
    r["pidsUs"] = [(cpuSeconds(p) - b) * 1e6 / r["calls"] for p, b in zip(pids, before)]
    return r


def main():
    calls = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    provider, providerPort = startProvider()
    admin, listen = support.freePort(), support.freePort()
    mesh = support.startTxmesh(CONFIG.format(admin=admin, listen=listen, provider=providerPort), admin)
    rows = []
    try:
        support.waitForPort(listen, proc=mesh.popen)
        run(providerPort, 1000)  # warm up both paths
        run(listen, 1000)
        for _ in range(rounds):
            rows.append(("direct", measured(providerPort, calls, [provider.pid, mesh.pid])))
            rows.append(("via txmesh", measured(listen, calls, [provider.pid, mesh.pid])))
    finally:
        mesh.stop()
        provider.stop()
    cores = len(os.sched_getaffinity(0))
    print("| path | calls | calls/s | p50 µs | p99 µs | errors | consumer CPU µs/call | provider | txmesh | sum | "
          "ceiling on %d cores, calls/s |" % (cores,))
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, r in rows:
        provider, proxy = r["pidsUs"]
        total = r["consumerUs"] + provider + proxy
        print("| %s | %d | %.0f | %.0f | %.0f | %d | %.1f | %.1f | %.1f | %.1f | %.0f |" % (
            name, r["calls"], r["calls"] / r["seconds"], r["p50"], r["p99"], r.get("errors", 0), r["consumerUs"],
            provider, proxy, total, cores * 1e6 / total))
    via = [r for name, r in rows if name != "direct"]
    direct = [r for name, r in rows if name == "direct"]
    print("\ntxmesh CPU: %s µs/call; via / direct calls/s: %s" % (
        ", ".join("%.1f" % r["pidsUs"][1] for r in via),
        ", ".join("%.0f%%" % (100 * (v["calls"] / v["seconds"]) / (d["calls"] / d["seconds"]))
                  for v, d in zip(via, direct))))


if __name__ == "__main__":
    main()
