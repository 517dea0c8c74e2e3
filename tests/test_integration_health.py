"""
Active health checks end to end over loopback: txmesh under twistd checking real peers: nginx (http and tcp checks,
the issue's user story: one of two hosts dead, then restarted), grpcio's own grpc.health.v1 servicer (NOT_SERVING
then SERVING flips the host) and the real Dubbo provider in tests/dubbo_peers (heartbeat and invocation checks).
Every wait is bounded.
"""

import json
import os
import shutil
import time
import urllib.request
from concurrent import futures

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from tests import support

pytestmark = pytest.mark.timeout(90)

PEERS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dubbo_peers")
NODE = shutil.which("node")

NGINX_SERVER = "server { listen 127.0.0.1:%d; location / { return 200 'ok from %d'; } }"


def clusters(admin):
    return {c["name"]: c for c in json.loads(support.adminGet(admin, "/clusters")[1])}


def hostsOf(admin, cluster):
    return {h["address"]: h for h in clusters(admin)[cluster]["hosts"]}


def waitFor(predicate, timeout=15.0, what="condition"):
    """Poll ``predicate()`` (truthy: done) every 50 ms up to ``timeout`` seconds; return its value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("no %s after %.0fs" % (what, timeout))


def stat(admin, name, **labels):
    stats = json.loads(support.adminGet(admin, "/stats")[1])
    return sum(s["value"] for s in stats.get(name, []) if labels.items() <= s["labels"].items())


HTTP_CONFIG = """
admin:
  address: tcp:{admin}:interface=127.0.0.1
listeners:
  - name: http_in
    address: tcp:{listen}:interface=127.0.0.1
    default_cluster: backend
clusters:
  - name: backend
    lb_policy: round_robin
    endpoints: [{{address: "127.0.0.1:{alive}"}}, {{address: "127.0.0.1:{dead}"}}]
    common_lb_config: {{healthy_panic_threshold: 0}}  # no panic: a cluster without a healthy host answers 503
    health_checks:
      - type: {kind}
        interval: 200ms
        unhealthy_interval: 200ms
        timeout: 1s
        healthy_threshold: 3
        unhealthy_threshold: 2
{extra}
"""


@pytest.mark.skipif(support.NGINX is None, reason="nginx is not installed")
@pytest.mark.parametrize("kind, extra", [
    ("http", "        path: /healthz\n        expected_statuses: [{start: 200, end: 300}]"),
    ("tcp", ""),
])
def test_one_of_two_hosts_dead_all_requests_succeed_and_the_host_comes_back(kind, extra):
    alive, dead = support.freePort(), support.freePort()
    procs = []
    try:
        ng, _ = support.startNginx(NGINX_SERVER % (alive, alive))
        procs.append(ng)
        support.waitForPort(alive, proc=ng.popen)
        admin, listen = support.freePort(), support.freePort()
        tx = support.startTxmesh(HTTP_CONFIG.format(admin=admin, listen=listen, alive=alive, dead=dead, kind=kind,
                                                    extra=extra), admin)
        procs.append(tx)
        support.waitForPort(listen, proc=tx.popen)
        deadAddress, aliveAddress = "127.0.0.1:%d" % dead, "127.0.0.1:%d" % alive
        # the first check round
        waitFor(lambda: all(h["health_check"]["last_check"] for h in hostsOf(admin, "backend").values()),
                what="first check round")
        statuses = []
        for _ in range(10):
            with urllib.request.urlopen("http://127.0.0.1:%d/" % listen, timeout=5) as r:
                statuses.append((r.status, r.read()))
        assert statuses == [(200, b"ok from %d" % alive)] * 10
        hosts = hostsOf(admin, "backend")
        assert hosts[aliveAddress]["healthy"] is True
        assert hosts[deadAddress]["healthy"] is False
        assert hosts[deadAddress]["health_flags"] == ["failed_active_hc"]
        last = hosts[deadAddress]["health_check"]["last_check"]
        assert (last["result"], last["reason"]) == ("refused", "connection refused")
        assert last["time"] > 0
        assert stat(admin, "health_check_healthy", cluster="backend") == 1
        assert stat(admin, "health_check_network_failure", cluster="backend") >= 1
        # the dead host restarted: back after healthy_threshold (3) passes in a row
        ng2, _ = support.startNginx(NGINX_SERVER % (dead, dead))
        procs.append(ng2)
        support.waitForPort(dead, proc=ng2.popen)
        back = waitFor(lambda: hostsOf(admin, "backend")[deadAddress]["healthy"] and hostsOf(admin, "backend"),
                       what="recovery")
        assert back[deadAddress]["health_check"]["consecutive_passes"] >= 3
        assert back[deadAddress]["health_check"]["last_check"]["result"] == "passed"
        bodies = set()
        for _ in range(4):
            with urllib.request.urlopen("http://127.0.0.1:%d/" % listen, timeout=5) as r:
                bodies.add(r.read())
        assert bodies == {b"ok from %d" % alive, b"ok from %d" % dead}
        assert stat(admin, "health_check_healthy", cluster="backend") == 2
    finally:
        for p in reversed(procs):
            p.stop()


@pytest.mark.skipif(support.NGINX is None, reason="nginx is not installed")
def test_http_check_fails_a_host_answering_an_unexpected_status_at_once():
    port = support.freePort()
    procs = []
    try:
        ng, _ = support.startNginx("server { listen 127.0.0.1:%d; location /healthz { return 503; } }" % port)
        procs.append(ng)
        support.waitForPort(port, proc=ng.popen)
        admin, listen = support.freePort(), support.freePort()
        cfg = HTTP_CONFIG.format(admin=admin, listen=listen, alive=port, dead=support.freePort(), kind="http",
                                 extra="        path: /healthz")
        tx = support.startTxmesh(cfg, admin)
        procs.append(tx)
        last = waitFor(lambda: hostsOf(admin, "backend")["127.0.0.1:%d" % port]["health_check"]["last_check"],
                       what="a check")
        assert (last["result"], last["reason"]) == ("failed", "status 503")
        # no healthy host: the request gets the proxy's own 503
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen("http://127.0.0.1:%d/" % listen, timeout=5)
        assert e.value.code == 503
    finally:
        for p in reversed(procs):
            p.stop()


GRPC_CONFIG = """
admin:
  address: tcp:{admin}:interface=127.0.0.1
listeners:
  - name: grpc_in
    protocol: grpc
    address: tcp:{listen}:interface=127.0.0.1
    default_cluster: svc
clusters:
  - name: svc
    protocol: grpc
    endpoints: [{{address: "127.0.0.1:{upstream}"}}]
    common_lb_config: {{healthy_panic_threshold: 0}}  # no panic: a cluster without a healthy host answers UNAVAILABLE
    health_checks:
      - service_name: {service}
        interval: 200ms
        timeout: 1s
        healthy_threshold: 2
"""


def test_grpc_check_against_grpcio_health_servicer():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    upstream = support.freePort()
    server.add_insecure_port("127.0.0.1:%d" % upstream)
    servicer.set("pkg.Svc", health_pb2.HealthCheckResponse.NOT_SERVING)
    server.start()
    procs = []
    try:
        admin, listen = support.freePort(), support.freePort()
        tx = support.startTxmesh(GRPC_CONFIG.format(admin=admin, listen=listen, upstream=upstream,
                                                    service="pkg.Svc"), admin)
        procs.append(tx)
        address = "127.0.0.1:%d" % upstream

        def host():
            return hostsOf(admin, "svc")[address]

        last = waitFor(lambda: host()["health_check"]["last_check"], what="a check")
        assert (last["result"], last["reason"]) == ("failed", "NOT_SERVING")
        assert host()["healthy"] is False
        # a call through txmesh now finds no healthy host: UNAVAILABLE
        with grpc.insecure_channel("127.0.0.1:%d" % listen) as channel:
            with pytest.raises(grpc.RpcError) as e:
                health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="pkg.Svc"),
                                                          timeout=5)
            assert e.value.code() == grpc.StatusCode.UNAVAILABLE
            servicer.set("pkg.Svc", health_pb2.HealthCheckResponse.SERVING)
            waitFor(lambda: host()["healthy"], what="SERVING to flip the host")
            assert host()["health_check"]["consecutive_passes"] >= 2
            # and the same call now goes through to the servicer
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="pkg.Svc"),
                                                              timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        servicer.set("pkg.Svc", health_pb2.HealthCheckResponse.NOT_SERVING)
        waitFor(lambda: not host()["healthy"], what="NOT_SERVING to fail the host")
        assert stat(admin, "health_check_failure", cluster="svc") >= 2
    finally:
        for p in procs:
            p.stop()
        server.stop(0)


def test_grpc_check_of_an_unknown_service_fails_with_its_grpc_status():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    upstream = support.freePort()
    server.add_insecure_port("127.0.0.1:%d" % upstream)
    server.start()
    tx = None
    try:
        admin, listen = support.freePort(), support.freePort()
        tx = support.startTxmesh(GRPC_CONFIG.format(admin=admin, listen=listen, upstream=upstream,
                                                    service="no.Such"), admin)
        last = waitFor(lambda: hostsOf(admin, "svc")["127.0.0.1:%d" % upstream]["health_check"]["last_check"],
                       what="a check")
        assert last["result"] == "failed" and last["reason"].startswith("grpc-status 5")  # NOT_FOUND
    finally:
        if tx is not None:
            tx.stop()
        server.stop(0)


DUBBO_CONFIG = """
admin:
  address: tcp:{admin}:interface=127.0.0.1
listeners:
  - name: dubbo_in
    protocol: dubbo
    address: tcp:{listen}:interface=127.0.0.1
    default_cluster: heartbeat
clusters:
  - name: heartbeat
    protocol: dubbo
    endpoints: [{{address: "127.0.0.1:{provider}"}}]
    health_checks: [{{interval: 200ms, unhealthy_interval: 200ms}}]
  - name: invoke
    protocol: dubbo
    endpoints: [{{address: "127.0.0.1:{provider}"}}]
    health_checks:
      - {{interval: 200ms, interface: org.txmesh.peers.EchoService, version: 1.0.0, group: SOFA, method: echo}}
  - name: echo
    protocol: dubbo
    endpoints: [{{address: "127.0.0.1:{provider}"}}]
    health_checks:
      - {{interval: 200ms, interface: org.txmesh.peers.EchoService, version: 1.0.0, group: SOFA}}
"""


@pytest.mark.skipif(NODE is None or not os.path.isdir(os.path.join(PEERS, "node_modules", "sofa-rpc-node")),
                    reason="node or the Dubbo peers are not installed")
def test_dubbo_heartbeat_and_invocation_checks_against_the_real_provider():
    provider = support.freePort()
    prov = support.Proc([NODE, os.path.join(PEERS, "provider.js"), str(provider)], cwd=PEERS)
    procs = [prov]
    try:
        support.waitForPort(provider, proc=prov.popen)
        admin, listen = support.freePort(), support.freePort()
        tx = support.startTxmesh(DUBBO_CONFIG.format(admin=admin, listen=listen, provider=provider), admin)
        procs.append(tx)
        address = "127.0.0.1:%d" % provider

        def last(cluster):
            return hostsOf(admin, cluster)[address]["health_check"]["last_check"]

        waitFor(lambda: all(last(c) for c in ("heartbeat", "invoke", "echo")), what="first checks")
        assert hostsOf(admin, "heartbeat")[address]["healthy"] is True
        assert hostsOf(admin, "invoke")[address]["healthy"] is True
        # sofa-rpc-node has no EchoFilter: $echo is an unknown method there, and the check says so
        echo = last("echo")
        assert echo["result"] == "failed" and hostsOf(admin, "echo")[address]["healthy"] is False
        assert echo["reason"].startswith("dubbo status 80: Can not find method")
        prov.stop()
        waitFor(lambda: not hostsOf(admin, "heartbeat")[address]["healthy"], what="the stopped provider to fail")
        assert last("heartbeat")["result"] == "refused"
    finally:
        for p in reversed(procs):
            p.stop()
