#!/usr/bin/env python3
"""
Idle-then-busy gRPC through a sidecar pair, to a grpcio server with its default keepalive policy: does the pair's
HTTP/2 keepalive ever earn a ``GOAWAY ENHANCE_YOUR_CALM "too_many_pings"``, and does any call fail?

grpcio client → outbound txmesh (grpc listener) → inbound txmesh (grpc listener) → grpcio echo server
(tests/grpc_peers/echo_server.py, default server options).  The run alternates phases for ``--minutes`` (default
10): idle (no call for ``--idle`` seconds), then busy (``--busy`` seconds of unary calls back to back on one
channel, plus a server-streaming call).  Each sidecar's keepalive interval is ``--keepalive`` (default 30s, the
shipped default).  At the end it reads both sidecars' /stats: upstream GOAWAYs received and PING timeouts must be
0, and every call OK; it prints a summary and exits 1 otherwise.

    .venv/bin/python bench/pair_keepalive.py                   # 10 minutes
    .venv/bin/python bench/pair_keepalive.py --minutes 1 --idle 20 --busy 5 --keepalive 2s

Every process it starts is stopped by PID at the end, also on Ctrl-C or SIGTERM.
"""

import argparse
import json
import os
import signal
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(1, REPO)

from benchlib import Processes, freePort  # noqa: E402

PEER = os.path.join(REPO, "tests", "grpc_peers", "echo_server.py")
TWISTD = "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"

SIDECAR = """\
admin:
  address: "tcp:{admin}:interface=127.0.0.1"
listeners:
  - name: {name}
    protocol: grpc
    address: "tcp:{port}:interface=127.0.0.1"
    route_config:
      virtual_hosts:
        - name: all
          domains: ["*"]
          routes:
            - match: {{prefix: "/"}}
              route: {{cluster: next}}
clusters:
  - name: next
    protocol: grpc
    connect_timeout: 1s
    heartbeat_interval: {keepalive}
    endpoints:
      - address: "127.0.0.1:{upstream}"
"""


def startSidecar(procs, workdir, name, upstream, keepalive):
    port, admin = freePort(), freePort()
    conf = os.path.join(workdir, name + ".yaml")
    with open(conf, "w") as f:
        f.write(SIDECAR.format(name=name, admin=admin, port=port, upstream=upstream, keepalive=keepalive))
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    procs.start(name, [sys.executable, "-c", TWISTD, "-n", "--pidfile=", "txmesh", "--config", conf], port,
                env=env, cwd=REPO)
    return port, admin


def stats(admin):
    with urllib.request.urlopen("http://127.0.0.1:%d/stats" % (admin,), timeout=5) as r:
        return json.load(r)


def total(snapshot, name):
    """The sum of the series ``name`` over all its labels, in a /stats JSON snapshot ({name: [{labels, value}]})."""
    return sum(entry["value"] for entry in snapshot.get(name, ()))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--idle", type=float, default=90.0, help="seconds without calls per cycle (default 90)")
    p.add_argument("--busy", type=float, default=20.0, help="seconds of calls per cycle (default 20)")
    p.add_argument("--keepalive", default="30s", help="the sidecars' cluster heartbeat_interval (default 30s)")
    args = p.parse_args(argv)

    import grpc

    signal.signal(signal.SIGTERM, lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
    workdir = tempfile.mkdtemp(prefix="txmesh-pair-keepalive-")
    procs = Processes(workdir)
    calls = failures = 0
    errors = []
    try:
        upstream = freePort()
        procs.start("grpc-upstream", [sys.executable, PEER, str(upstream)], upstream)
        inbound, inboundAdmin = startSidecar(procs, workdir, "inbound", upstream, args.keepalive)
        outbound, outboundAdmin = startSidecar(procs, workdir, "outbound", inbound, args.keepalive)
        channel = grpc.insecure_channel("127.0.0.1:%d" % (outbound,))
        unary = channel.unary_unary("/test.Echo/Unary", request_serializer=None, response_deserializer=None)
        stream = channel.unary_stream("/test.Echo/ServerStream", request_serializer=None,
                                      response_deserializer=None)
        end = time.monotonic() + args.minutes * 60
        cycle = 0
        while time.monotonic() < end:
            cycle += 1
            busyUntil = min(end, time.monotonic() + args.busy)
            while time.monotonic() < busyUntil:
                try:
                    assert unary(b"ping", timeout=5) == b"ping"
                    assert len(list(stream(b"3:16", timeout=5))) == 3
                except (grpc.RpcError, AssertionError) as e:
                    failures += 1
                    errors.append(repr(e)[:200])
                calls += 2
            print("cycle %d: %d calls, %d failed so far; idle %.0fs" % (cycle, calls, failures, args.idle),
                  file=sys.stderr)
            time.sleep(max(0.0, min(args.idle, end - time.monotonic())))
        report = {}
        for name, admin in (("outbound", outboundAdmin), ("inbound", inboundAdmin)):
            s = stats(admin)
            report[name] = {key: total(s, key) for key in (
                "upstream_h2_goaway_received", "upstream_h2_ping_timeout", "upstream_cx_total",
                "upstream_rq_total")}
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 1
    finally:
        procs.stopAll()
    ok = failures == 0 and all(r["upstream_h2_goaway_received"] == 0 and r["upstream_h2_ping_timeout"] == 0
                               for r in report.values())
    print("%.1f minutes, idle %.0fs / busy %.0fs cycles, keepalive %s: %d calls, %d failed" % (
        args.minutes, args.idle, args.busy, args.keepalive, calls, failures))
    for name, r in report.items():
        print("  %-8s %s" % (name, ", ".join("%s=%d" % kv for kv in r.items())))
    for e in errors[:5]:
        print("  error: " + e)
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
