#!/usr/bin/env python3
"""
A/B of the reactor and TCP transport (issue 10 parts 1-2): the same proxy under Twisted's epoll reactor and
transports (``twistd -r epoll``) and under txmesh's (the default of ``twistd txmesh``, ``-r txmesh-epoll``), in one
run, alternating A, B, A, B ... for ``--rounds`` rounds, each proxy started fresh per round against one nginx
upstream.  Prints CPU µs per request (proxy process tree, from /proc) and requests/s for each variant: the median
and the spread (min-max) over the rounds, with nginx as a proxy in the same run for reference.

Variants (``--variants``, comma-separated, in the order they alternate):
  txmesh          twistd txmesh, default reactor (txmesh's loop and transport)
  txmesh-stock    twistd -r epoll txmesh (Twisted's loop and transport)
  portforward     twistd -r epoll portforward: Twisted's bare TCP relay, stock
  portforward-tx  twistd -r txmesh-epoll portforward: the same relay on txmesh's loop and transport
  nginx           nginx as the reference proxy
  tree:NAME=DIR   twistd txmesh from another source tree DIR (default reactor), e.g. a write-path variant

    .venv/bin/python bench/reactor_ab.py --rounds 5 --duration 5
    .venv/bin/python bench/reactor_ab.py --variants portforward,portforward-tx --rounds 5
Every process it starts is stopped by PID at the end, also on Ctrl-C.
"""

import argparse
import os
import shutil
import statistics
import sys
import tempfile

from benchlib import BenchError, Processes, freePort, measure, probe, render
from run import BODIES, REPO, TWISTD, machine, pySpy, startNginx, startUpstream, topFunctions


def twistdEnv(tree):
    env = dict(os.environ)
    env["PYTHONPATH"] = tree + os.pathsep + env.get("PYTHONPATH", "")
    return env


def startTwistdTxmesh(procs, workdir, upstreamPort, name, reactorArgs, tree=REPO):
    port, adminPort = freePort(), freePort()
    conf = render("mesh.yaml.in", os.path.join(workdir, name + "-mesh.yaml"), PORT=port, ADMIN_PORT=adminPort,
                  UPSTREAM_PORT=upstreamPort)
    argv = [sys.executable, "-c", TWISTD, "-n", "--pidfile="] + reactorArgs + ["txmesh", "--config", conf]
    return port, procs.start(name, argv, port, env=twistdEnv(tree), cwd=tree)


def startTwistdPortforward(procs, workdir, upstreamPort, name, reactorArgs):
    port = freePort()
    argv = [sys.executable, "-c", TWISTD, "-n", "--pidfile="] + reactorArgs + [
        "portforward", "-p", "tcp:%d:interface=127.0.0.1" % port, "-h", "127.0.0.1", "-d", str(upstreamPort)]
    return port, procs.start(name, argv, port, env=twistdEnv(REPO), cwd=REPO)


def starter(variant):
    if variant == "txmesh":
        return lambda procs, w, up: startTwistdTxmesh(procs, w, up, variant, [])
    if variant == "txmesh-stock":
        return lambda procs, w, up: startTwistdTxmesh(procs, w, up, variant, ["-r", "epoll"])
    if variant == "portforward":
        return lambda procs, w, up: startTwistdPortforward(procs, w, up, variant, ["-r", "epoll"])
    if variant == "portforward-tx":
        return lambda procs, w, up: startTwistdPortforward(procs, w, up, variant, ["-r", "txmesh-epoll"])
    if variant == "nginx":
        return startNginx
    if variant.startswith("tree:") and "=" in variant:
        name, tree = variant[5:].split("=", 1)
        tree = os.path.abspath(tree)
        return lambda procs, w, up: startTwistdTxmesh(procs, w, up, name, [], tree)
    raise SystemExit("unknown variant %r" % variant)


def label(variant):
    return variant[5:].split("=", 1)[0] if variant.startswith("tree:") else variant


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variants", default="nginx,txmesh-stock,txmesh,portforward,portforward-tx")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--body", default="small", choices=sorted(BODIES))
    p.add_argument("--conns", type=int, default=16)
    p.add_argument("--threads", type=int, default=1, help="wrk threads (default 1, as in the issue's figures)")
    p.add_argument("--py-spy", metavar="DIR",
                   help="after the rounds, profile each Python variant with py-spy during one more small/16 run "
                        "(not in the table): collapsed stacks to DIR/<variant>.collapsed, top functions printed")
    args = p.parse_args(argv)
    variants = [v for v in args.variants.split(",") if v]
    workdir = tempfile.mkdtemp(prefix="txmesh-ab-")
    os.chmod(workdir, 0o755)
    procs = Processes(workdir)
    results = {label(v): [] for v in variants}
    profiles = []
    try:
        upstreamPort, _ = startUpstream(procs, workdir)
        for r in range(args.rounds):
            for v in variants:
                name = label(v)
                port, proc = starter(v)(procs, workdir, upstreamPort)
                try:
                    probe(port, "/" + args.body, BODIES[args.body])
                    m = measure(port, proc.pid, "/" + args.body, args.conns, args.duration, args.threads,
                                args.warmup)
                finally:
                    procs.stop(name if v != "nginx" else "nginx")
                if m["errors"]:
                    raise BenchError("%s: %d errors" % (name, m["errors"]))
                results[name].append(m)
                print("round %d %-16s %8.0f rps %7.1f CPU µs/req" % (r + 1, name, m["rps"], m["cpuUs"]),
                      file=sys.stderr)
        if args.py_spy:
            os.makedirs(args.py_spy, exist_ok=True)
            for v in variants:
                if v == "nginx":
                    continue
                name = label(v)
                port, proc = starter(v)(procs, workdir, upstreamPort)
                try:
                    path = os.path.join(args.py_spy, name + ".collapsed")
                    if pySpy(path, proc.pid, port, args.duration, args.threads, "raw"):
                        selfRows, inclusiveRows, total = topFunctions(path, 12)
                        profiles.append("%s (%d samples), self time:" % (name, total))
                        profiles += selfRows
                finally:
                    procs.stop(name)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
    finally:
        procs.stopAll()
        shutil.rmtree(workdir, ignore_errors=True)
    out = machine() + ["- %s body, wrk -t%d -c%d, %d s per run after %d s warm-up, %d rounds alternating %s"
                       % (args.body, args.threads, args.conns, args.duration, args.warmup, args.rounds,
                          ", ".join(label(v) for v in variants)), "",
                       "| variant | CPU µs/req median | min-max | rps median | min-max |", "|---|---:|---:|---:|---:|"]
    for name, ms in results.items():
        if not ms:
            continue
        cpu = [m["cpuUs"] for m in ms]
        rps = [m["rps"] for m in ms]
        out.append("| %s | %.1f | %.1f-%.1f | %.0f | %.0f-%.0f |" % (
            name, statistics.median(cpu), min(cpu), max(cpu), statistics.median(rps), min(rps), max(rps)))
    print("\n".join(out + [""] + profiles))
    return 0


if __name__ == "__main__":
    sys.exit(main())
