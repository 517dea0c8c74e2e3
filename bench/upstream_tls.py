#!/usr/bin/env python3
"""
What a cluster's TLS costs txmesh (issue 14 part 2): wrk → txmesh (HTTP/1.1 listener) → nginx, the same 13-byte
body over a plain-text cluster and over a TLS cluster (a CA bundle, the SAN checked), with keep-alive upstream
connections and with a new upstream connection (so a full TLS handshake) per request
(``max_requests_per_connection: 1``).  It prints txmesh's CPU µs per request and the request rate for each.

    .venv/bin/python bench/upstream_tls.py                # 5 s per case, 8 connections
    .venv/bin/python bench/upstream_tls.py --duration 10 --conns 16

Every process it starts is stopped by PID at the end.
"""

import argparse
import os
import shutil
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(1, REPO)

from benchlib import Processes, freePort, measure  # noqa: E402

from tests.certs import CertAuthority  # noqa: E402

TWISTD = "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"

NGINX = """\
daemon off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    server {{ listen 127.0.0.1:{plain}; location / {{ return 200 "hello, world\\n"; }} }}
    server {{ listen 127.0.0.1:{tls} ssl; ssl_certificate {cert}; ssl_certificate_key {key};
             location / {{ return 200 "hello, world\\n"; }} }}
}}
"""

MESH = """\
admin:
  address: "tcp:{admin}:interface=127.0.0.1"
listeners:
  - name: in
    protocol: http1
    address: "tcp:{listen}:interface=127.0.0.1"
    route_config:
      virtual_hosts:
        - name: all
          domains: ["*"]
          routes:
            - {{match: {{prefix: /plain-new}}, route: {{cluster: plain_new}}}}
            - {{match: {{prefix: /plain}}, route: {{cluster: plain}}}}
            - {{match: {{prefix: /tls-new}}, route: {{cluster: tls_new}}}}
            - {{match: {{prefix: /tls}}, route: {{cluster: tls}}}}
clusters:
  - {{name: plain, endpoints: [{{address: "127.0.0.1:{plain}"}}]}}
  - {{name: plain_new, max_requests_per_connection: 1, endpoints: [{{address: "127.0.0.1:{plain}"}}]}}
  - name: tls
    endpoints: [{{address: "127.0.0.1:{tls}"}}]
    tls: {{sni: localhost, ca: {ca}, match_subject_alt_names: [{{dns: localhost}}]}}
  - name: tls_new
    max_requests_per_connection: 1
    endpoints: [{{address: "127.0.0.1:{tls}"}}]
    tls: {{sni: localhost, ca: {ca}, match_subject_alt_names: [{{dns: localhost}}]}}
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--conns", type=int, default=8)
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="txmesh-bench-tls-")
    ca = CertAuthority(os.path.join(work, "ca"), "bench-ca")
    server = ca.issue("server", dns=["localhost"])
    plain, tls, admin, listen = (freePort() for _ in range(4))
    with open(os.path.join(work, "nginx.conf"), "w") as f:
        f.write(NGINX.format(dir=work, plain=plain, tls=tls, cert=server.chainPath, key=server.keyPath))
    with open(os.path.join(work, "mesh.yaml"), "w") as f:
        f.write(MESH.format(admin=admin, listen=listen, plain=plain, tls=tls, ca=ca.certPath))
    procs = Processes(work)
    try:
        procs.start("nginx", [shutil.which("nginx") or "/usr/sbin/nginx", "-p", work, "-c",
                              os.path.join(work, "nginx.conf"), "-e", os.path.join(work, "nginx-error.log")], tls)
        env = dict(os.environ, PYTHONPATH=REPO)
        tx = procs.start("txmesh", [sys.executable, "-c", TWISTD, "-n", "--pidfile=", "txmesh", "--config",
                                    os.path.join(work, "mesh.yaml")], listen, env=env)
        print("case        req/s    txmesh CPU µs/req   p99 ms   errors")
        for path in ("/plain", "/tls", "/plain-new", "/tls-new"):
            r = measure(listen, tx.pid, path, args.conns, args.duration, 1, 1)
            print("%-10s %7.0f   %10.1f          %6.2f   %d" % (path, r["rps"], r["cpuUs"], r["p99"], r["errors"]))
    finally:
        procs.stopAll()


if __name__ == "__main__":
    main()
