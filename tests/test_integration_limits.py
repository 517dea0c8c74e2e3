"""
Local rate limits end to end (issue 11 part 7): txmesh under twistd in front of the scriptable upstream; a burst
of parallel curl requests is partly answered 429 by the proxy within milliseconds, and the upstream sees only the
allowed ones (txmesh's upstream counters and the upstream's own access are the same count).  Bounded in time.
"""

import json
import subprocess

import pytest

from tests import support

pytestmark = pytest.mark.timeout(90)

CONFIG = """
admin: {address: "tcp:%(admin)d:interface=127.0.0.1"}
listeners:
  - name: web
    address: tcp:%(listen)d:interface=127.0.0.1
    filters:
      - name: local_rate_limit
        config:
          token_bucket: {max_tokens: 5, tokens_per_fill: 1, fill_interval: 1h}
          enable_x_ratelimit_headers: true
    route_config:
      virtual_hosts: [{name: all, domains: ["*"], routes: [{match: {prefix: /}, route: {cluster: echo}}]}]
clusters: [{name: echo, endpoints: [{address: "127.0.0.1:%(echo)d"}]}]
"""


def stats(admin):
    _, body = support.adminGet(admin, "/stats")
    return json.loads(body)


def total(snapshot, name, **labels):
    return sum(s["value"] for s in snapshot.get(name, [])
               if all(s["labels"].get(k) == v for k, v in labels.items()))


def test_a_burst_is_partly_answered_429_at_once_and_the_upstream_sees_only_the_allowed():
    up, echo, _ = support.startUpstream()
    admin, listen = support.freePort(), support.freePort()
    mesh = None
    try:
        mesh = support.startTxmesh(CONFIG % {"admin": admin, "listen": listen, "echo": echo}, admin)
        support.waitForPort(listen, proc=mesh.popen)
        n = 30
        url = "http://127.0.0.1:%d/status/200" % (listen,)
        out = subprocess.run(
            ["curl", "-s", "--parallel", "--parallel-max", "15", "-w", "%{http_code} %{time_total}\\n"]
            + [url, "-o", "/dev/null"] * n,
            capture_output=True, timeout=30, check=True).stdout.decode().split("\n")
        results = [line.split() for line in out if line.strip()]
        codes = [int(c) for c, _ in results]
        assert len(codes) == n
        assert codes.count(200) == 5 and codes.count(429) == n - 5, codes
        limitedTimes = sorted(float(t) for c, t in results if c == "429")
        assert limitedTimes[len(limitedTimes) // 2] < 0.5  # answered at once, not queued (median, loaded CI)
        snap = stats(admin)
        assert total(snap, "upstream_rq_total", cluster="echo") == 5
        assert total(snap, "ratelimit_ok", listener="web") == 5
        assert total(snap, "ratelimit_rate_limited", listener="web") == n - 5
        head = subprocess.run(["curl", "-s", "-D", "-", "-o", "/dev/null", url], capture_output=True, timeout=10,
                              check=True).stdout.decode().lower()
        assert " 429" in head.split("\r\n")[0] and "x-ratelimit-remaining: 0" in head
        assert "x-txmesh-error: local_rate_limited" in head
    finally:
        if mesh is not None:
            mesh.stop()
        up.stop()
