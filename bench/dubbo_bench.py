"""
Dubbo bench: calls/s and p50/p99 of a real consumer (sofa-rpc-node, 32 calls in flight on one connection) to a
real provider, directly and through txmesh, in one run; plus txmesh's CPU microseconds per call from /proc.

usage: python bench/dubbo_bench.py [calls]   (needs `npm ci` in tests/dubbo_peers)
"""

import json
import os
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


def main():
    calls = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
    provider, providerPort = startProvider()
    admin, listen = support.freePort(), support.freePort()
    mesh = support.startTxmesh(CONFIG.format(admin=admin, listen=listen, provider=providerPort), admin)
    try:
        support.waitForPort(listen, proc=mesh.popen)
        run(providerPort, 1000)  # warm up both paths
        run(listen, 1000)
        direct = run(providerPort, calls)
        before = cpuSeconds(mesh.pid)
        proxied = run(listen, calls)
        cpu = cpuSeconds(mesh.pid) - before
    finally:
        mesh.stop()
        provider.stop()
    print("| path | calls | calls/s | p50 µs | p99 µs | errors |")
    print("|---|---|---|---|---|---|")
    for name, r in (("direct", direct), ("via txmesh", proxied)):
        print("| %s | %d | %.0f | %.0f | %.0f | %d |" % (name, r["calls"], r["calls"] / r["seconds"], r["p50"],
                                                        r["p99"], r.get("errors", 0)))
    print("\ntxmesh CPU: %.1f µs/call (%.2f s for %d calls)" % (cpu * 1e6 / proxied["calls"], cpu,
                                                                proxied["calls"]))


if __name__ == "__main__":
    main()
