"""
txmesh.request_stats: every stream counted at its end, whatever its protocol, into histograms and counters per
listener, route and cluster; read back the way Prometheus does (prometheus_client's text parser on /metrics).

In memory: an HTTP/1.1 listener (txmesh.testing.InMemoryMesh, the real chain and router) for what a user sees, and
StreamInfos as the gRPC and Dubbo listeners leave them for the labels of their statuses.  Real gRPC and Dubbo
clients and servers: tests/test_integration_metrics.py.
"""

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.task import Clock
from zope.interface.verify import verifyObject

from tests.test_admin import request
from txmesh.admin import makeAdminSite
from txmesh.interfaces import IRequestStats
from txmesh.request_stats import RequestStats
from txmesh.stats import DURATION_BUCKETS, StatsStore
from txmesh.stream import StreamInfo
from txmesh.testing import InMemoryMesh

MESH = """
listeners:
  - name: ingress
    protocol: http
    address: tcp:0
    route_config:
      virtual_hosts:
        - name: all
          domains: ["*"]
          routes:
            - match: {prefix: /direct}
              direct_response: {status: 200, body: "direct"}
            - match: {prefix: /}
              name: api
              route: {cluster: backend, timeout: 5s}
clusters: [{name: backend, endpoints: [{address: "10.0.0.1:80"}]}]
"""


def metrics(stats):
    """{family name: family} as Prometheus would read the admin's /metrics."""
    site = makeAdminSite(stats, None, dict, lambda: True, reactor=Clock())
    body = request(site, b"/metrics").body.decode()
    return {f.name: f for f in text_string_to_metric_families(body)}


def histogram(families, name, **labels):
    """{le: cumulative count, "sum": s, "count": n} of one series of a histogram family."""
    out = {}
    for s in families[name].samples:
        if labels.items() <= s.labels.items():
            if s.name.endswith("_bucket"):
                out[s.labels["le"]] = s.value
            else:
                out[s.name.rpartition("_")[2]] = s.value
    return out


def counter(families, name, **labels):
    return sum(s.value for s in families[name].samples
               if s.name.endswith("_total") and labels.items() <= s.labels.items())


def test_it_provides_the_interface():
    assert verifyObject(IRequestStats, RequestStats(StatsStore()))


def test_an_http_request_moves_the_histograms_bytes_and_status_class_of_its_listener_route_and_cluster():
    mesh = InMemoryMesh(MESH)
    backend = mesh.upstream("backend")
    client = mesh.connect()
    client.request(b"POST", b"/a", body=b"12345")
    mesh.advance(0.003)
    [req] = backend.requests
    req.respond(200, body=b"x" * 100)
    assert client.response().status == 200
    families = metrics(mesh.stats)
    labels = {"listener": "ingress", "route": "api", "cluster": "backend"}
    total = histogram(families, "txmesh_request_duration_seconds", **labels)
    assert total["count"] == 1 and total["0.0025"] == 0 and total["0.005"] == 1 and total["+Inf"] == 1
    assert abs(total["sum"] - 0.003) < 1e-9
    for name in ("txmesh_upstream_request_duration_seconds", "txmesh_upstream_first_byte_seconds"):
        h = histogram(families, name, **labels)
        assert h["count"] == 1 and h["0.005"] == 1, name
    assert counter(families, "txmesh_request_body_bytes", **labels) == 5
    assert counter(families, "txmesh_response_body_bytes", **labels) == 100
    assert counter(families, "txmesh_responses", code_class="2xx", **labels) == 1
    # the buckets a sidecar needs: half a millisecond to thirty seconds, as Prometheus writes them
    assert [le for le in total if le not in ("sum", "count", "created")] == [
        "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1.0", "2.5", "5.0",
        "10.0", "30.0", "+Inf"]


def test_a_local_reply_without_an_upstream_is_counted_without_upstream_time():
    mesh = InMemoryMesh(MESH)
    client = mesh.connect()
    client.request(path=b"/direct")
    assert client.response().body == b"direct"
    families = metrics(mesh.stats)
    labels = {"listener": "ingress", "route": "", "cluster": ""}
    assert histogram(families, "txmesh_request_duration_seconds", **labels)["count"] == 1
    assert histogram(families, "txmesh_upstream_request_duration_seconds", **labels)["count"] == 0
    assert counter(families, "txmesh_responses", code_class="2xx", **labels) == 1


def test_upstream_failures_and_resets_are_counted_by_class():
    mesh = InMemoryMesh(MESH)
    backend = mesh.upstream("backend")
    client = mesh.connect()
    client.request(path=b"/fail")
    [req] = backend.requests
    req.respond(503, body=b"busy")
    assert client.response().status == 503
    other = mesh.connect()
    other.request(path=b"/gone")
    mesh.runTurns()
    other.disconnect()  # the client goes away before any response: no status, class "none"
    mesh.runTurns()
    labels = {"listener": "ingress", "route": "api", "cluster": "backend"}
    families = metrics(mesh.stats)
    assert counter(families, "txmesh_responses", code_class="5xx", **labels) == 1
    assert counter(families, "txmesh_responses", code_class="none", **labels) == 1
    assert histogram(families, "txmesh_request_duration_seconds", **labels)["count"] == 2
    totals = mesh.runtime.requestStats.clusterTotals()["backend"]
    assert (totals.requests, totals.failures) == (2, 2)


def info(protocol, listener="in", route="r", cluster="c", start=10.0, end=10.2, code=None, grpcStatus=None):
    i = StreamInfo(start, protocol, listener)
    i.routeName, i.clusterName, i.endTime, i.responseCode, i.grpcStatus = route, cluster, end, code, grpcStatus
    return i


def test_grpc_streams_count_the_grpc_status_sent_and_the_http_class():
    store = StatsStore()
    rs = RequestStats(store)
    for status in (b"0", b"0", b"14", b"5"):
        rs.streamEnded(info("grpc", code=200, grpcStatus=status))
    rs.streamEnded(info("grpc", code=200, grpcStatus=None))  # the client went away first
    families = metrics(store)
    labels = {"listener": "in", "route": "r", "cluster": "c"}
    assert {s.labels["grpc_status"]: s.value for s in families["txmesh_grpc_responses"].samples
            if s.name.endswith("_total")} == {"0": 2.0, "14": 1.0, "5": 1.0, "none": 1.0}
    assert counter(families, "txmesh_responses", code_class="2xx", **labels) == 5
    # UNAVAILABLE is a failure of the transport, NOT_FOUND the caller's: one failure in five
    totals = rs.clusterTotals()["c"]
    assert (totals.requests, totals.failures) == (5, 1)


def test_dubbo_streams_count_the_dubbo_status():
    store = StatsStore()
    rs = RequestStats(store)
    for status in (20, 20, 31, 40, None):
        rs.streamEnded(info("dubbo", code=status))
    families = metrics(store)
    assert {s.labels["dubbo_status"]: s.value for s in families["txmesh_dubbo_responses"].samples
            if s.name.endswith("_total")} == {"20": 2.0, "31": 1.0, "40": 1.0, "none": 1.0}
    assert "txmesh_responses" not in families  # a Dubbo status has no HTTP class
    totals = rs.clusterTotals()["c"]
    assert (totals.requests, totals.failures) == (5, 1)  # SERVER_TIMEOUT; BAD_REQUEST is the caller's


def test_the_cluster_totals_sum_listeners_and_routes():
    rs = RequestStats(StatsStore())
    rs.streamEnded(info("http/1.1", listener="a", route="r1", code=200, end=10.0004))
    rs.streamEnded(info("h2", listener="b", route="r2", code=502, end=11.0))
    rs.streamEnded(info("http/1.1", listener="a", route=None, cluster=None, code=404))
    totals = rs.clusterTotals()
    c = totals["c"]
    assert (c.requests, c.failures) == (2, 1)
    assert c.counts[0] == 1 and c.counts[DURATION_BUCKETS.index(1.0)] == 1 and sum(c.counts) == 2
    assert abs(c.sum - 1.0004) < 1e-9
    assert (totals[""].requests, totals[""].failures) == (1, 0)


def test_a_clock_stepping_back_counts_zero_and_missing_upstream_times_are_skipped():
    store = StatsStore()
    rs = RequestStats(store)
    i = info("http/1.1", start=10.0, end=9.0, code=200)
    i.upstreamStartTime, i.upstreamFirstByteTime, i.upstreamEndTime = 9.5, 9.4, None
    rs.streamEnded(i)
    labels = (("listener", "in"), ("route", "r"), ("cluster", "c"))
    assert store.histogram("request_duration_seconds", labels).counts[0] == 1
    assert store.histogram("upstream_first_byte_seconds", labels).value == 0
    assert store.histogram("upstream_request_duration_seconds", labels).value == 0


def test_combinations_past_the_cap_share_one_other_series():
    store = StatsStore(maxSeriesPerMetric=2)
    rs = RequestStats(store)
    for n in range(5):
        rs.streamEnded(info("http/1.1", route="r%d" % n, code=200))
    series = store.series("request_duration_seconds")
    assert len(series) == 3
    other = [h for labels, h in series if labels["route"] == "_other"]
    assert len(other) == 1 and other[0].value == 3


def test_stats_shows_the_histograms_count_sum_and_percentiles():
    store = StatsStore()
    rs = RequestStats(store)
    rs.streamEnded(info("http/1.1", code=200, start=10.0, end=10.004))
    site = makeAdminSite(store, None, dict, lambda: True, reactor=Clock())
    [series] = request(site, b"/stats?filter=^request_duration").json()["request_duration_seconds"]
    assert series["labels"] == {"listener": "in", "route": "r", "cluster": "c"}
    assert series["value"]["count"] == 1 and 0.0025 < series["value"]["p99"] <= 0.005
    [line] = request(site, b"/stats?format=text&filter=^request_duration").body.decode().splitlines()
    assert line.startswith('request_duration_seconds{listener="in",route="r",cluster="c"} {"buckets":')
    assert '"count":1' in line


def test_a_failure_to_count_is_logged_and_the_stream_still_ends():
    """Should counting ever raise, the connection must not hang: the listener is told the stream ended."""
    from twisted.logger import globalLogPublisher

    mesh = InMemoryMesh(MESH)

    class Broken:
        def streamEnded(self, info):
            raise RuntimeError("boom")

    mesh.template.streamEnded = Broken().streamEnded
    logged = []
    globalLogPublisher.addObserver(logged.append)
    try:
        client = mesh.connect()
        client.request(path=b"/direct")
        client.request(path=b"/direct")  # the connection serves the next request
        assert [r.body for r in client.responses()] == [b"direct", b"direct"]
    finally:
        globalLogPublisher.removeObserver(logged.append)
    failures = [e for e in logged if "log_failure" in e]
    assert len(failures) == 2 and failures[0]["log_failure"].check(RuntimeError)
    for f in failures:
        f["log_failure"].cleanFailure()
