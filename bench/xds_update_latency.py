"""
xDS update latency (issue 13 part 3, docs/operations.md "xDS"): txmesh under twistd driven over ADS by the tests'
control plane (tests/xds_control_plane.py, in this process); times a snapshot change to its ACK and to the first
request served by it.  Run from the repository root: ``python bench/xds_update_latency.py``.
"""

import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests import support, xds_resources as R  # noqa: E402
from tests.test_integration_xds import BOOTSTRAP, Upstream, get, waitUntil  # noqa: E402
from tests.xds_control_plane import ControlPlane  # noqa: E402
from txmesh.xds.discovery import CDS, EDS, LDS, RDS, messages  # noqa: E402


def summary(xs):
    return "median %.1f ms, max %.1f ms" % (statistics.median(xs) * 1e3, max(xs) * 1e3)


def main():
    messages()
    ups = [Upstream(n) for n in "AB"]
    cp = ControlPlane().start()
    listen, admin = support.freePort(), support.freePort()
    cp.setSnapshot(CDS, "c1", [R.cluster("app")])
    cp.setSnapshot(EDS, "e0", [R.assignment("app", ups[0].address)])
    cp.setSnapshot(LDS, "l1", [R.listener("web", listen)])
    cp.setSnapshot(RDS, "r1", [R.routeConfig("routes", "app")])
    started = time.monotonic()
    proc = support.startTxmesh(BOOTSTRAP.format(node="bench", admin=admin, cp=cp.grpcPort, api="GRPC",
                                                protocol="grpc"), admin)
    try:
        waitUntil(lambda: get(listen, "/") == (200, "A"), "the xDS listener to serve", 15)
        print("twistd start -> first request served: %.2f s" % (time.monotonic() - started))
        acked, served = [], []
        for i in range(1, 41):
            t = time.monotonic()
            cp.setSnapshot(EDS, "e%d" % i, [R.assignment("app", ups[i % 2].address)])
            cp.waitAck("bench", EDS, "e%d" % i)
            acked.append(time.monotonic() - t)
            waitUntil(lambda: get(listen, "/")[1] == "AB"[i % 2], "the moved endpoint to answer")
            served.append(time.monotonic() - t)
        print("EDS snapshot -> ACK (40):", summary(acked))
        print("EDS snapshot -> served by the new endpoint (40):", summary(served))
        acked = []
        for i in range(2, 22):
            t = time.monotonic()
            cp.setSnapshot(RDS, "r%d" % i, [R.routeConfig("routes", routes=[
                {"match": {"prefix": "/p%d" % i}, "route": {"cluster": "app"}},
                {"match": {"prefix": "/"}, "route": {"cluster": "app"}}])])
            cp.waitAck("bench", RDS, "r%d" % i)
            acked.append(time.monotonic() - t)
        print("RDS snapshot -> ACK (20):", summary(acked))
    finally:
        proc.stop()
        cp.stop()
        for u in ups:
            u.stop()


if __name__ == "__main__":
    main()
