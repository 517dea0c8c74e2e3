"""
``workers: 2``: how the three ``connection_balance`` modes spread HTTP/1.1 load over the workers (issue 10 part 4,
docs/performance.md "Workers: 1 vs 2"), in one run against one nginx upstream:

- ``kernel``: both workers accept on the one shared socket (each takes one connection per wakeup);
- ``reuse_port``: a ``SO_REUSEPORT`` socket per worker, the kernel hashes each connection to one (Envoy's
  ``enable_reuse_port``);
- ``exact``: the parent accepts and hands each connection to the worker with the fewest (Envoy's exact_balance).

For each mode and connection count: wrk's requests/s, CPU µs per request of the parent and both workers (/proc),
and the share of the requests each worker served (its own admin socket's ``downstream_rq``).  Rounds alternate the
modes, so a slow minute on this shared machine hits all of them.

    python bench/balance.py [--duration 5] [--conns 4,16,64] [--rounds 2]
"""

import argparse
import http.client
import json
import os
import socket
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from benchlib import BenchError, Processes, freePort, measure, probe, render  # noqa: E402
from run import BODIES, REPO, TWISTD, startUpstream  # noqa: E402

MODES = ("kernel", "reuse_port", "exact")


def startWorkers(procs, workdir, upstreamPort, balance):
    port, adminPort = freePort(), freePort()
    conf = render("mesh.yaml.in", os.path.join(workdir, balance + "-mesh.yaml"), PORT=port, ADMIN_PORT=adminPort,
                  UPSTREAM_PORT=upstreamPort)
    with open(conf) as f:
        text = f.read()
    marker = "    protocol: http\n"
    assert marker in text
    with open(conf, "w") as f:
        f.write("workers: 2\n" + text.replace(marker, marker + "    connection_balance: %s\n" % (balance,), 1))
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    argv = [sys.executable, "-c", TWISTD, "-n", "--pidfile=", "txmesh", "--config", conf]
    proc = procs.start(balance, argv, port, env=env, cwd=REPO)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            ws = workers(adminPort)
        except OSError:
            ws = []  # the admin API is not up yet
        if ws and all(w["state"] == "serving" for w in ws):
            return port, adminPort, proc
        time.sleep(0.2)
    raise BenchError("%s: the workers did not serve within 20 s" % (balance,))


def _get(connection, path):
    connection.request("GET", path)
    response = connection.getresponse()
    return json.loads(response.read())


def workers(adminPort):
    c = http.client.HTTPConnection("127.0.0.1", adminPort, timeout=10)
    try:
        return _get(c, "/server_info").get("worker_processes") or []
    finally:
        c.close()


class _Unix(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("localhost", timeout=10)
        self.path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(self.path)


def servedPerWorker(adminPort):
    out = []
    for w in workers(adminPort):
        c = _Unix(w["admin"])
        try:
            stats = _get(c, "/stats")
        finally:
            c.close()
        out.append(sum(s["value"] for s in stats.get("downstream_rq", []) if s["labels"].get("listener") == "bench"))
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--conns", default="4,16,64")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    conns = [int(c) for c in args.conns.split(",")]
    workdir = tempfile.mkdtemp(prefix="txmesh-balance-")
    os.chmod(workdir, 0o755)
    procs = Processes(workdir)
    results = {}
    try:
        upstreamPort, _ = startUpstream(procs, workdir)
        probe(upstreamPort, "/small", BODIES["small"])
        for rnd in range(args.rounds):
            for mode in MODES:
                port, adminPort, proc = startWorkers(procs, workdir, upstreamPort, mode)
                try:
                    probe(port, "/small", BODIES["small"])
                    for n in conns:
                        before = servedPerWorker(adminPort)
                        r = measure(port, proc.pid, "/small", n, args.duration, args.threads, args.warmup)
                        served = [b - a for a, b in zip(before, servedPerWorker(adminPort))]
                        share = max(served) / sum(served) if sum(served) else float("nan")
                        results.setdefault((mode, n), []).append((r["rps"], r["cpuUs"], share))
                        print("round %d %-10s c=%-3d %8.0f rps %7.1f CPU µs/req  busiest worker %.0f%% (%s)"
                              % (rnd + 1, mode, n, r["rps"], r["cpuUs"], 100 * share,
                                 "/".join(map(str, served))), file=sys.stderr)
                finally:
                    procs.stop(mode)
    finally:
        procs.stopAll()
    print("| connection_balance | conns | rps (per round) | CPU µs/req (per round) | busiest worker's share |")
    print("|---|---:|---|---|---|")
    for n in conns:
        for mode in MODES:
            rows = results.get((mode, n), [])
            print("| %s | %d | %s | %s | %s |" % (
                mode, n, ", ".join("%.0f" % r[0] for r in rows), ", ".join("%.1f" % r[1] for r in rows),
                ", ".join("%.0f%%" % (100 * r[2]) for r in rows)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
