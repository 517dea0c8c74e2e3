"""
bench/soak.py (issue 15 part 5): its verdict on made-up samples (growth, unexplained errors, a dead sidecar, a
failed misbehaviour check), how it tells errors the misbehaviour explains from the others, a short real run of the
pair under load and misbehaviour with a leak injected into its sampler, and the ``reactor_pending_calls`` gauge it
reads from the admin.
"""

import importlib.util
import json
import os
import shutil

import pytest
from twisted.internet.testing import MemoryReactorClock

from tests import support
from txmesh.config import loads
from txmesh.service import MeshService

_spec = importlib.util.spec_from_file_location("soak", os.path.join(support.ROOT, "bench", "soak.py"))
soak = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(soak)


# ---------------------------------------------------------------------------------------------------- the gauge


MESH = """\
listeners:
  - {name: web, address: "tcp:0", route_config: {virtual_hosts: [{name: a, domains: ["*"]}]}}
"""


def test_reactor_pending_calls_counts_the_reactors_timers():
    reactor = MemoryReactorClock()
    svc = MeshService(loads(MESH), reactor, installSignal=lambda *a: None)

    def pending():
        return svc.stats.snapshot()["reactor_pending_calls"][0]["value"]

    base = pending()
    assert base == len(reactor.getDelayedCalls())
    first = reactor.callLater(5, lambda: None)
    reactor.callLater(10, lambda: None)
    assert pending() == base + 2
    first.cancel()
    assert pending() == base + 1
    reactor.advance(10)
    assert pending() == base


# ---------------------------------------------------------------------------------------------------- the verdict


def samples(n=10, interval=30, rss=65000, fds=24, timers=15, grow=None):
    """``n`` samples of both sides; ``grow(i) -> {field: extra}`` adds to the outbound's figures."""
    out = []
    for i in range(n):
        sides = {}
        for side in ("outbound", "inbound"):
            s = {"alive": True, "rss_kib": rss, "fds": fds, "reactor_pending_calls": timers,
                 "downstream_cx_active": 3, "downstream_rq_active": 0, "upstream_cx_active": 2,
                 "upstream_rq_active": 0}
            if grow and side == "outbound":
                for key, extra in grow(i).items():
                    s[key] += extra
            sides[side] = s
        out.append({"t": (i + 1) * interval, "sides": sides})
    return out


CLEAN = {k: {"ok": 100, "explained": 3, "unexplained": 0} for k in soak.KINDS}


def verdict(smp, calls=CLEAN, events=()):
    return soak.evaluate(smp, warmup=60, window=3, calls=calls, events=list(events))[0]


def test_a_steady_run_passes():
    # noise within the bounds, an early spike (before the warm-up) and one late spike in the last window
    def noise(i):
        return {"rss_kib": [9000, 0, 200, 0, 900, 300, 0, 500, 40000, 700][i], "fds": i % 3,
                "reactor_pending_calls": [30, 0, 2, 1, 0, 3, 1, 2, 40, 0][i]}
    assert verdict(samples(grow=noise)) == []


@pytest.mark.parametrize("grow, message", [
    (lambda i: {"rss_kib": 2048 * i}, "outbound RSS grew: 67048 KiB after the warm-up, 81384 KiB at the end "
                                      "(bound 75240)"),
    (lambda i: {"fds": 2 * i}, "outbound open fds grew: 26 -> 40 (bound 36)"),
    (lambda i: {"reactor_pending_calls": 3 * i}, "outbound pending timers grew: 18 -> 39 (bound 28)"),
])
def test_growth_fails(grow, message):
    # the baseline is the sample at 60 s (i = 1), the end the median of the last three (i = 8)
    assert verdict(samples(grow=grow)) == [message]


def test_rss_bound_is_ten_percent_of_a_large_process():
    assert verdict(samples(rss=200000, grow=lambda i: {"rss_kib": 2000 * max(0, i - 1)})) == []  # +14 MB of 200
    assert verdict(samples(rss=200000, grow=lambda i: {"rss_kib": 3000 * max(0, i - 1)})) == [
        "outbound RSS grew: 200000 KiB after the warm-up, 221000 KiB at the end (bound 220000)"]


def test_unexplained_errors_fail_and_explained_ones_do_not():
    calls = dict(CLEAN, dubbo={"ok": 100, "explained": 50, "unexplained": 1},
                 grpc_stream={"ok": 0, "explained": 4, "unexplained": 0})
    assert verdict(samples(), calls) == ["dubbo: 1 unexplained errors", "grpc_stream: no successful call"]


def test_a_dead_sidecar_and_a_failed_check_fail():
    smp = samples()
    smp[-1]["sides"]["inbound"]["alive"] = False
    events = [{"action": "malformed", "target": "outbound", "result": "http: b'' , grpc: no answer", "ok": False}]
    assert verdict(smp, events=events) == [
        "inbound died during the run",
        "misbehaviour check failed: malformed outbound: http: b'' , grpc: no answer"]


def test_too_few_samples_after_the_warm_up():
    assert verdict(samples(n=2)) == ["too few samples after the warm-up (1): run longer or sample more often"]


def test_errors_are_explained_by_their_own_apps_outage_only():
    outages = soak.Outages(grace=5)
    calls = soak.Calls(outages)
    outages.begin("http", 100.0)
    calls.record("http_keepalive", 101.0, 101.1, "503")          # while nginx is down
    calls.record("grpc_unary", 101.0, 101.1, "UNAVAILABLE")      # gRPC's app was up: unexplained
    assert calls.snapshot()["http_keepalive"] == {"ok": 0, "explained": 1, "unexplained": 0}
    outages.end("http", 106.0)
    calls.record("http_newconn", 95.0, 100.5, "reset")           # in flight when it was killed
    calls.record("http_newconn", 110.0, 110.5, "503")            # within the grace after the restart
    calls.record("http_newconn", 112.0, 112.1, "503")            # after it
    calls.record("http_newconn", 112.0, 112.1)
    got = calls.snapshot()
    assert got["http_newconn"] == {"ok": 1, "explained": 2, "unexplained": 1}
    assert got["grpc_unary"] == {"ok": 0, "explained": 0, "unexplained": 1}
    assert [(e["kind"], e["error"]) for e in calls.unexplained()] == [("grpc_unary", "UNAVAILABLE"),
                                                                       ("http_newconn", "503")]


# ---------------------------------------------------------------------------------------------------- a real run


class LeakySampler:
    """The real sampler, plus 4 MiB more outbound RSS at every sample: the growth check must fire on it alone."""

    def __init__(self):
        self.real = soak.ProcSampler()
        self.n = 0

    def sample(self, name, side):
        got = self.real.sample(name, side)
        if name == "outbound":
            self.n += 1
            got["rss_kib"] += 4096 * self.n
        return got


needsPeers = pytest.mark.skipif(
    support.NGINX is None or shutil.which("node") is None
    or not os.path.isdir(os.path.join(soak.DUBBO_PEERS, "node_modules", "sofa-rpc-node")),
    reason="nginx, node and the Dubbo peers (npm ci in tests/dubbo_peers) are needed")


@needsPeers
@pytest.mark.timeout(90)
def test_a_short_soak_runs_the_pair_and_catches_an_injected_leak(tmp_path):
    report = tmp_path / "report.json"
    sampler = LeakySampler()
    status = soak.main(["--duration", "0.4", "--sample-interval", "3", "--warmup", "5", "--chaos-interval", "0.5",
                        "--down", "1", "--hold", "1", "--settle", "0.5", "--grace", "5", "--report", str(report)],
                       sampler=sampler)
    got = json.loads(report.read_text())
    assert status == 1 and got["verdict"] == "FAILED"
    assert len(got["failures"]) == 1 and got["failures"][0].startswith("outbound RSS grew"), got["failures"]
    # the pair itself passed: every client kind was served, nothing unexplained, every misbehaviour check held
    for kind, c in got["calls"].items():
        assert c["ok"] > 0 and c["unexplained"] == 0, (kind, c, got["unexplained"])
    assert {o[0] for o in got["outages"]} == {"http", "grpc", "dubbo"}
    assert {e["action"] for e in got["events"]} >= {"kill", "slowloris", "malformed", "stop_reading", "disconnect"}
    assert all(e["ok"] for e in got["events"]), got["events"]
    # the same run without the injected leak passes the growth check
    real = [dict(s, sides={name: dict(v, rss_kib=v["rss_kib"] - (4096 * (i + 1) if name == "outbound" else 0))
                           for name, v in s["sides"].items()}) for i, s in enumerate(got["samples"])]
    assert soak.evaluate(real, 5, 3, got["calls"], got["events"])[0] == []
    for s in got["samples"]:
        for side in s["sides"].values():
            assert side["alive"] and side["fds"] > 0 and side["reactor_pending_calls"] > 0
