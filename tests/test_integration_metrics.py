"""
The request metrics (issue 16 part 1) end to end, for each protocol: txmesh under twistd with an HTTP/1.1, a gRPC and
a Dubbo listener in front of real servers (tests/upstream_server.py, the grpcio echo server, a sofa-rpc-node Dubbo
provider), real clients (http.client, grpcio, Dubbo frames on a socket), and /metrics read with prometheus_client's
text parser, as Prometheus reads it: the duration histograms move per listener, route and cluster, and the
responses are counted by HTTP class, grpc-status and Dubbo status.  The Dubbo part is skipped without node or the
peers (tests/dubbo_peers).
"""

import http.client
import os
import sys

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests import support
from tests.test_integration_dubbo import NODE, PEERS, Raw, request, startProvider
from txmesh.speedups import describe as describeSpeedups

pytestmark = pytest.mark.timeout(60)

HAVE_DUBBO = NODE is not None and os.path.isdir(os.path.join(PEERS, "node_modules", "sofa-rpc-node"))

CONFIG = """
admin:
  address: tcp:{admin}:interface=127.0.0.1
listeners:
  - name: web
    protocol: http
    address: tcp:{http}:interface=127.0.0.1
    route_config:
      virtual_hosts:
        - name: all
          domains: ["*"]
          routes: [{{match: {{prefix: /}}, name: web_all, route: {{cluster: web_backend}}}}]
  - name: rpc
    protocol: grpc
    address: tcp:{grpc}:interface=127.0.0.1
    route_config:
      virtual_hosts:
        - name: all
          domains: ["*"]
          routes: [{{match: {{grpc: {{service: test.Echo}}}}, name: echo, route: {{cluster: grpc_backend}}}}]
{dubbo_listener}
clusters:
  - name: web_backend
    endpoints: [{{address: "127.0.0.1:{upstream}"}}]
  - name: grpc_backend
    protocol: h2
    endpoints: [{{address: "127.0.0.1:{echo}"}}]
{dubbo_cluster}
"""

DUBBO_LISTENER = """  - name: dubbo_in
    protocol: dubbo
    address: tcp:{dubbo}:interface=127.0.0.1
    route_config:
      virtual_hosts:
        - name: all
          domains: ["*"]
          routes:
            - match: {{dubbo: {{interface: "org.txmesh.peers.*", version: "1.0.0"}}}}
              name: peers
              route: {{cluster: provider}}"""

DUBBO_CLUSTER = """  - name: provider
    protocol: dubbo
    endpoints: [{{address: "127.0.0.1:{provider}"}}]"""


@pytest.fixture(scope="module")
def mesh():
    stops = []
    try:
        upstream, upstreamPort, _ = support.startUpstream()
        stops.append(upstream)
        echoPort = support.freePort()
        echo = support.Proc([sys.executable, os.path.join(support.ROOT, "tests", "grpc_peers", "echo_server.py"),
                             str(echoPort)])
        stops.append(echo)
        support.waitForPort(echoPort, proc=echo.popen)
        ports = {"admin": support.freePort(), "http": support.freePort(), "grpc": support.freePort(),
                 "dubbo": support.freePort(), "upstream": upstreamPort, "echo": echoPort, "provider": 0}
        dubboListener = dubboCluster = ""
        if HAVE_DUBBO:
            provider, ports["provider"] = startProvider()
            stops.append(provider)
            dubboListener, dubboCluster = DUBBO_LISTENER.format(**ports), DUBBO_CLUSTER.format(**ports)
        proc = support.startTxmesh(CONFIG.format(dubbo_listener=dubboListener, dubbo_cluster=dubboCluster,
                                                 **ports), ports["admin"])
        stops.append(proc)
        for name in ("http", "grpc") + (("dubbo",) if HAVE_DUBBO else ()):
            support.waitForPort(ports[name], proc=proc.popen)
        yield ports
    finally:
        for p in reversed(stops):
            p.stop()


def families(ports):
    status, body = support.adminGet(ports["admin"], "/metrics")
    assert status == 200
    return {f.name: f for f in text_string_to_metric_families(body.decode())}


def histogramCount(fams, name, **labels):
    family = fams.get(name)  # none before the first stream
    return sum(s.value for s in family.samples
               if s.name == name + "_count" and labels.items() <= s.labels.items()) if family else 0


def counted(fams, name, **labels):
    return sum(s.value for s in fams[name].samples
               if s.name.endswith("_total") and labels.items() <= s.labels.items())


def test_http_requests_move_the_histograms_and_status_classes(mesh):
    labels = {"listener": "web", "route": "web_all", "cluster": "web_backend"}
    before = families(mesh)
    conn = http.client.HTTPConnection("127.0.0.1", mesh["http"], timeout=5)
    for path, status in (("/echo/a", 200), ("/bytes/300", 200), ("/status/503", 503)):
        conn.request("GET", path)
        r = conn.getresponse()
        r.read()
        assert r.status == status
    conn.close()
    after = families(mesh)
    for name in ("txmesh_request_duration_seconds", "txmesh_upstream_request_duration_seconds",
                 "txmesh_upstream_first_byte_seconds"):
        assert histogramCount(after, name, **labels) - histogramCount(before, name, **labels) == 3, name
    assert counted(after, "txmesh_responses", code_class="2xx", **labels) == 2
    assert counted(after, "txmesh_responses", code_class="5xx", **labels) == 1
    assert counted(after, "txmesh_response_body_bytes", **labels) >= 300
    # the process and the build are there too
    assert after["txmesh_build_info"].samples[0].labels["mode"] == describeSpeedups()["mode"]  # the child runs in this env
    assert after["process_resident_memory_bytes"].samples[0].value > 0


def test_grpc_calls_move_the_histograms_and_count_grpc_statuses(mesh):
    labels = {"listener": "rpc", "route": "echo", "cluster": "grpc_backend"}
    with grpc.insecure_channel("127.0.0.1:%d" % (mesh["grpc"],)) as channel:
        unary = channel.unary_unary("/test.Echo/Unary", request_serializer=None, response_deserializer=None)
        assert unary(b"hello", timeout=5) == b"hello"
        assert unary(b"again", timeout=5) == b"again"
        with pytest.raises(grpc.RpcError) as failed:
            unary(b"status:UNAVAILABLE:down", timeout=5)
        assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
    fams = families(mesh)
    assert histogramCount(fams, "txmesh_request_duration_seconds", **labels) == 3
    assert histogramCount(fams, "txmesh_upstream_first_byte_seconds", **labels) == 3
    assert counted(fams, "txmesh_grpc_responses", grpc_status="0", **labels) == 2
    assert counted(fams, "txmesh_grpc_responses", grpc_status="14", **labels) == 1
    assert counted(fams, "txmesh_responses", code_class="2xx", **labels) == 3


@pytest.mark.skipif(not HAVE_DUBBO, reason="node or the Dubbo peers (tests/dubbo_peers) are not installed")
def test_dubbo_calls_move_the_histograms_and_count_dubbo_statuses(mesh):
    labels = {"listener": "dubbo_in", "route": "peers", "cluster": "provider"}
    raw = Raw(mesh["dubbo"])
    try:
        raw.send(request(1, "echo", "Ljava/lang/String;", ["hi"]))
        raw.send(request(2, "add", "II", [20, 22]))
        raw.send(request(3, "echo", "Ljava/lang/String;", ["x"], interface="org.other.Missing"))
        got = {f.requestId: f for f in raw.read(3)}
    finally:
        raw.close()
    assert got[1].status == got[2].status == 20 and got[3].status != 20
    fams = families(mesh)
    assert histogramCount(fams, "txmesh_request_duration_seconds", **labels) == 2
    assert histogramCount(fams, "txmesh_upstream_request_duration_seconds", **labels) == 2
    assert counted(fams, "txmesh_dubbo_responses", dubbo_status="20", **labels) == 2
    # no route for that interface: answered by txmesh, counted on the listener without a cluster
    unrouted = {"listener": "dubbo_in", "cluster": ""}
    assert counted(fams, "txmesh_dubbo_responses", dubbo_status=str(got[3].status), **unrouted) == 1
    assert histogramCount(fams, "txmesh_upstream_request_duration_seconds", **unrouted) == 0
