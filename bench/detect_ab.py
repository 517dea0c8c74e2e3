"""
Protocol detection (``protocol: auto``, issue 14 part 4) against a port of its own: one txmesh under twistd with an
auto listener handing HTTP/1.1 to an ``address: internal`` listener and a plain http1 listener with the same
direct_response route (no upstream, so only txmesh's work is measured).  For each, in alternating rounds: wrk
keep-alive requests (the data path after detection) and h2load ``connection: close`` requests (a new connection,
and so a detection, per request), with the txmesh process's CPU seconds (/proc/PID/stat) per request.

    python bench/detect_ab.py [ROUNDS]

Needs wrk and h2load (nghttp2-client).  A shared machine is noisy: compare the rounds, not one figure.
"""

import os
import re
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests import support  # noqa: E402

ROUTES = """
    route_config:
      virtual_hosts: [{name: all, domains: ["*"], routes: [{match: {prefix: /}, direct_response: {status: 200}}]}]"""


def main(rounds=2):
    admin, auto, direct = support.freePort(), support.freePort(), support.freePort()
    config = """
admin: {address: "tcp:%d:interface=127.0.0.1"}
listeners:
  - name: edge
    protocol: auto
    address: tcp:%d:interface=127.0.0.1
    detect: {http1: web}
  - name: web
    address: internal%s
  - name: plain
    address: tcp:%d:interface=127.0.0.1%s
""" % (admin, auto, ROUTES, direct, ROUTES)
    proc = support.startTxmesh(config, admin)

    def cpu():
        fields = open("/proc/%d/stat" % proc.pid).read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    try:
        support.waitForPort(auto)
        support.waitForPort(direct)
        for _ in range(rounds):
            for name, port in (("auto", auto), ("direct", direct)):
                url = "http://127.0.0.1:%d/" % port
                c0 = cpu()
                out = subprocess.run(["wrk", "-t1", "-c10", "-d4s", url], capture_output=True, text=True).stdout
                n = int(re.search(r"(\d+) requests in", out).group(1))
                print("keep-alive      %-6s %7d requests  %5.1f us CPU/request" % (name, n, (cpu() - c0) / n * 1e6))
                c0 = cpu()
                out = subprocess.run(["h2load", "--h1", "-n", "3000", "-c", "10", "-H", "connection: close", url],
                                     capture_output=True, text=True).stdout
                ok = int(re.search(r"(\d+) succeeded", out).group(1))
                print("new connections %-6s %7d requests  %5.1f us CPU/request" % (name, ok, (cpu() - c0) / ok * 1e6))
    finally:
        proc.stop()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 2)
