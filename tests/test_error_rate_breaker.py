"""
The error_rate_breaker filter (issue 11 part 4): the rolling window, opening at the volume and percentage
thresholds, fail-fast while open, half-open probes after the sleep window, closing on their success; the outcome
of HTTP, gRPC and Dubbo responses by the shared table; keys and their cap; through an in-memory listener.
"""

import pytest
from h2 import events as h2events
from h2.config import H2Configuration
from h2.connection import H2Connection
from twisted.internet import defer
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from zope.interface.verify import verifyObject

from txmesh.config import FilterConfigContext
from txmesh.errors import ConfigError
from txmesh.filters.error_rate_breaker import (CLOSED, HALF_OPEN, OPEN, BreakerSettings, ErrorRateBreaker,
                                               ErrorRateBreakerFactory, ErrorRateBreakerFilter,
                                               HTTPErrorRateBreakerFilter)
from txmesh.interfaces import (FilterStatus, IErrorRateBreaker, IFilterFactory, IStreamDecoderFilter,
                               IStreamEncoderFilter, IStreamFilterEvents, StreamEvents)
from txmesh.stats import StatsStore
from txmesh.stream import HeaderMap, RequestHead, ResponseHead, StreamInfo
from txmesh.testing import FakeDecoderCallbacks, InMemoryMesh

SETTINGS = BreakerSettings(requestVolumeThreshold=4, errorThresholdPercentage=50, window=10.0, windowBuckets=10,
                           sleepWindow=5.0, halfOpenRequests=2)


def context():
    return FilterConfigContext("mesh.yaml", "listeners[0].filters[0].config", "http1", frozenset(), lambda p: 3)


# -- the breaker ---------------------------------------------------------------------------------------------------

def test_opens_only_past_both_the_volume_and_the_percentage():
    b = ErrorRateBreaker(SETTINGS)
    verifyObject(IErrorRateBreaker, b)
    for failed in (True, True, True):  # 100% failures but only 3 requests
        assert b.allow(0.0)
        b.record(failed, 0.0)
    assert b.state is CLOSED
    b.record(False, 1.0)  # 4 requests, 75% failed: the next failure check opens it
    assert b.state is CLOSED
    b.record(True, 1.0)
    assert b.state is OPEN and not b.allow(1.0)


def test_below_the_percentage_stays_closed():
    b = ErrorRateBreaker(SETTINGS)
    for i in range(20):
        b.record(i % 3 == 2, float(i) / 10)  # a third fail
    assert b.state is CLOSED and b.counts(2.0) == (20, 6)


def test_old_buckets_roll_out_of_the_window():
    b = ErrorRateBreaker(SETTINGS)
    for t in (0.0, 0.5, 1.0):
        b.record(True, t)
    assert b.counts(1.0) == (3, 3)
    assert b.counts(10.5) == (1, 1)  # buckets 0 (0.0, 0.5) are out; 1.0 is still in
    b.record(True, 12.0)
    assert b.state is CLOSED  # only 2 in the window
    assert b.counts(25.0) == (0, 0)


def test_half_open_after_the_sleep_window_probes_then_closes_on_their_success():
    b = ErrorRateBreaker(SETTINGS)
    for _ in range(4):
        b.record(True, 0.0)
    assert b.state is OPEN
    assert not b.allow(4.99)
    assert b.allow(5.0) and b.state is HALF_OPEN
    assert b.allow(5.0)
    assert not b.allow(5.0)  # two probes in flight at most
    b.record(False, 5.1, probe=True)
    assert b.state is HALF_OPEN and b.allow(5.1)
    b.record(False, 5.2, probe=True)  # as many successes as half_open_requests
    assert b.state is CLOSED and b.counts(5.3) == (0, 0) and b.allow(5.3)


def test_a_failed_probe_opens_it_again_for_another_sleep_window():
    b = ErrorRateBreaker(SETTINGS)
    for _ in range(4):
        b.record(True, 0.0)
    assert b.allow(6.0)
    b.record(True, 6.0, probe=True)
    assert b.state is OPEN and not b.allow(10.9) and b.allow(11.0)


def test_an_abandoned_probe_frees_its_slot():
    b = ErrorRateBreaker(BreakerSettings(requestVolumeThreshold=1, halfOpenRequests=1))
    b.record(True, 0.0)
    assert b.allow(5.0) and not b.allow(5.0)
    b.abandon(probe=True)
    assert b.allow(5.0)


# -- the filter on each protocol's responses -----------------------------------------------------------------------

def build(raw):
    return ErrorRateBreakerFactory().buildConfig(raw, context())


class Runtime:
    def __init__(self):
        self.clock = Clock()
        self.stats = StatsStore()


def stream(config, runtime, request):
    f = ErrorRateBreakerFactory()
    installed = []

    class Installer:
        def addStreamFilter(self, filt):
            installed.append(filt)

    f.createFilters(config, Installer(), runtime)
    [filt] = installed
    cb = FakeDecoderCallbacks(StreamInfo(0.0, request.protocol, "in", "10.0.0.1:5"), request, runtime.clock)
    filt.setDecoderFilterCallbacks(cb)
    filt.setEncoderFilterCallbacks(None)
    return filt, cb


def grpcRequest(method=b"/pkg.Greeter/Hello"):
    return RequestHead(b"POST", method, b"svc", HeaderMap([(b"content-type", b"application/grpc")]),
                       version=(2, 0), protocol="grpc")


def dubboRequest(interface="com.acme.Hello", method="sayHello"):
    return RequestHead(b"POST", ("/%s/%s" % (interface, method)).encode(), protocol="dubbo",
                       metadata={"interface": interface, "method": method})


def test_grpc_statuses_by_the_outcome_table_per_method():
    config = build({"scope": "method", "request_volume_threshold": 2, "error_threshold_percentage": 100})
    runtime = Runtime()
    for status in (b"14", b"13"):  # UNAVAILABLE in trailers, INTERNAL trailers-only
        f, cb = stream(config, runtime, grpcRequest())
        assert f.decodeHeaders(cb.request, True) is FilterStatus.CONTINUE
        if status == b"14":
            f.encodeHeaders(ResponseHead(200, HeaderMap([(b"content-type", b"application/grpc")])), False)
            f.encodeTrailers(HeaderMap([(b"grpc-status", status)]))
        else:
            f.encodeHeaders(ResponseHead(200, HeaderMap([(b"grpc-status", status)])), True)
        f.onStreamComplete()
    f, cb = stream(config, runtime, grpcRequest())
    assert f.decodeHeaders(cb.request, True) is FilterStatus.STOP
    assert cb.localReplies == [(503, b"circuit_open", "circuit_open")]
    # another method of the same service has its own breaker; NOT_FOUND is the caller's error, not a failure
    for _ in range(3):
        f, cb = stream(config, runtime, grpcRequest(b"/pkg.Greeter/Other"))
        assert f.decodeHeaders(cb.request, True) is FilterStatus.CONTINUE
        f.encodeHeaders(ResponseHead(200, HeaderMap([(b"grpc-status", b"5")])), True)
    stats = runtime.stats
    assert stats.total("error_rate_breaker_state", key="pkg.Greeter/Hello") == 1
    assert stats.total("error_rate_breaker_rq_rejected", key="pkg.Greeter/Hello") == 1
    assert stats.total("error_rate_breaker_rq_success", key="pkg.Greeter/Other") == 3
    assert stats.total("error_rate_breaker_opened", breaker="error_rate_breaker") == 1


def test_dubbo_statuses_per_interface_and_business_exceptions_are_successes():
    config = build({"scope": "service", "request_volume_threshold": 2})
    runtime = Runtime()
    for status in (20, 20, 20):  # OK (a business exception travels as OK too)
        f, cb = stream(config, runtime, dubboRequest())
        f.decodeHeaders(cb.request, True)
        f.encodeHeaders(ResponseHead(status), False)
    for status in (100, 80, 60):
        f, cb = stream(config, runtime, dubboRequest())
        f.decodeHeaders(cb.request, True)
        f.encodeHeaders(ResponseHead(status), False)
    f, cb = stream(config, runtime, dubboRequest(method="other"))
    assert f.decodeHeaders(cb.request, True) is FilterStatus.STOP  # the whole interface is open
    assert runtime.stats.total("error_rate_breaker_rq_failure", key="com.acme.Hello") == 3


def test_breakers_are_capped():
    config = build({"scope": "method", "max_breakers": 2, "request_volume_threshold": 1})
    runtime = Runtime()
    for m in (b"/a.S/A", b"/a.S/B", b"/a.S/C", b"/a.S/D"):
        f, cb = stream(config, runtime, grpcRequest(m))
        f.decodeHeaders(cb.request, True)
        f.encodeHeaders(ResponseHead(200, HeaderMap([(b"grpc-status", b"0")])), True)
    assert runtime.stats.total("error_rate_breaker_rq_success", key="_other") == 2
    assert len(config.breakers._breakers) == 3


@pytest.mark.parametrize("raw, key", [
    ({"scope": "header"}, "scope"),
    ({"scope": "nope"}, "scope"),
    ({"request_volume_threshold": 0}, "request_volume_threshold"),
    ({"error_threshold_percentage": 0}, "error_threshold_percentage"),
    ({"error_threshold_percentage": 101}, "error_threshold_percentage"),
    ({"sleep_window": "soon"}, "sleep_window"),
    ({"window": 0}, "window"),
    ({"half_open_requests": 0}, "half_open_requests"),
    ({"max_breakers": 0}, "max_breakers"),
    ({"threshold": 1}, "threshold"),
])
def test_config_errors_name_file_line_and_key(raw, key):
    verifyObject(IFilterFactory, ErrorRateBreakerFactory())
    with pytest.raises(ConfigError) as e:
        build(raw)
    assert str(e.value).startswith("mesh.yaml:3: listeners[0].filters[0].config.%s: " % (key,))


# -- through the HTTP listener ---------------------------------------------------------------------------------

MESH = """\
clusters:
  - name: backend
    endpoints:
      - {address: "10.0.0.1:80"}
listeners:
  - name: web
    address: tcp:15001
    filters:
      - name: error_rate_breaker
        config: {scope: route, request_volume_threshold: 3, error_threshold_percentage: 50, sleep_window: 2s}
    route_config:
      virtual_hosts:
        - name: all
          domains: ["*"]
          routes:
            - name: api
              match: {prefix: /}
              route: {cluster: backend}
"""


def test_http_opens_on_5xx_fails_fast_and_closes_after_a_good_probe():
    m = InMemoryMesh(MESH)
    upstream = m.upstream("backend")
    upstream.respondWith(500)

    def get():
        client = m.connect()
        client.request()
        return client.response()

    assert [get().status for _ in range(3)] == [500, 500, 500]
    r = get()
    assert (r.status, r.header("x-txmesh-error")) == (503, b"circuit_open")
    assert len(upstream.requests) == 3 and "UO" in m.responseFlags()[-1]
    upstream.respondWith(200)
    m.advance(1.9)
    assert get().status == 503
    m.advance(0.1)
    assert get().status == 200  # the probe
    assert [get().status for _ in range(3)] == [200, 200, 200]
    assert m.value("error_rate_breaker_state", listener="web", key="api") == 0


GRPC_MESH = """\
clusters:
  - name: backend
    protocol: grpc
    endpoints:
      - {address: "10.0.0.1:50051"}
listeners:
  - name: rpc
    protocol: grpc
    address: tcp:15001
    filters:
      - name: error_rate_breaker
        config: {scope: service, request_volume_threshold: 2, error_threshold_percentage: 100}
    route_config:
      virtual_hosts:
        - name: all
          domains: ["*"]
          routes:
            - match: {prefix: /}
              route: {cluster: backend}
"""


def test_grpc_listener_connect_failures_open_the_breaker_then_unavailable_at_once():
    connects = []

    def connect(host, clusterConfig):
        connects.append(host)
        return defer.fail(ConnectionRefusedError())

    m = InMemoryMesh(GRPC_MESH, connect=connect)
    client = m.connect()
    h2 = H2Connection(H2Configuration(client_side=True, header_encoding=None))
    h2.initiate_connection()
    answers = {}
    for sid in (1, 3, 5):
        h2.send_headers(sid, [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/pkg.Greeter/Hello"),
                              (b":authority", b"svc"), (b"content-type", b"application/grpc"), (b"te", b"trailers")],
                        end_stream=True)
        client.send(h2.data_to_send())
        m.runTurns()
        for e in h2.receive_data(client.received()):
            if isinstance(e, h2events.ResponseReceived):
                answers[e.stream_id] = dict(e.headers)
        client.transport.clear()
    assert [answers[s][b"grpc-status"] for s in (1, 3, 5)] == [b"14", b"14", b"14"]
    assert answers[5][b"x-txmesh-error"] == b"circuit_open"
    assert len(connects) == 2  # the third call never reached the pool
    assert m.value("error_rate_breaker_rq_failure", key="pkg.Greeter") == 2
    assert m.value("error_rate_breaker_state", key="pkg.Greeter") == 1


def test_on_http_listeners_the_filter_is_told_of_resets_not_of_every_end_and_a_reset_probe_frees_its_slot():
    m = InMemoryMesh(MESH)
    upstream = m.upstream("backend")
    upstream.respondWith(500)

    def get():
        client = m.connect()
        client.request()
        return client

    assert [get().response().status for _ in range(3)] == [500, 500, 500]
    assert get().response().status == 503  # open
    upstream.respondWith(200, after=30)  # the probe's answer is slow
    m.advance(2.0)
    probe = get()
    assert len(upstream.requests) == 4 and probe.responses() == []
    # the filters of the stream in flight (a stream that ended has let go of its filters)
    filters = [f for s in m.template.streams for f in s.decoders if isinstance(f, ErrorRateBreakerFilter)]
    assert len(filters) == 1 and type(filters[0]) is HTTPErrorRateBreakerFilter
    assert not HTTPErrorRateBreakerFilter.streamEvents & StreamEvents.STREAM_COMPLETE
    verifyObject(IStreamDecoderFilter, filters[0])
    verifyObject(IStreamEncoderFilter, filters[0])
    verifyObject(IStreamFilterEvents, filters[0])
    assert get().response().status == 503  # the one probe slot is taken
    probe.disconnect()  # the probe is reset before its answer: its slot is free again
    m.advance(31)
    upstream.respondWith(200)
    second = get()
    assert second.response().status == 200  # the next request is the probe, and closes the breaker
    assert m.value("error_rate_breaker_state", listener="web", key="api") == 0


def test_elsewhere_the_filter_is_told_of_every_end_a_grpc_probe_without_trailers_frees_its_slot():
    grpcContext = FilterConfigContext("mesh.yaml", "listeners[0].filters[0].config", "grpc", frozenset(),
                                      lambda p: 3)
    config = ErrorRateBreakerFactory().buildConfig(
        {"scope": "listener", "request_volume_threshold": 1, "half_open_requests": 1}, grpcContext)
    runtime = Runtime()
    f, cb = stream(config, runtime, grpcRequest())
    assert type(f) is ErrorRateBreakerFilter and f.streamEvents & StreamEvents.STREAM_COMPLETE
    f.decodeHeaders(cb.request, True)
    f.encodeHeaders(ResponseHead(503), True)  # fails: opens
    runtime.clock.advance(5)
    probe, pcb = stream(config, runtime, grpcRequest())
    assert probe.decodeHeaders(pcb.request, True) is FilterStatus.CONTINUE
    other, ocb = stream(config, runtime, grpcRequest())
    assert other.decodeHeaders(ocb.request, True) is FilterStatus.STOP  # the slot is taken
    probe.encodeHeaders(ResponseHead(200, HeaderMap([(b"content-type", b"application/grpc")])), False)
    probe.onStreamComplete()  # the answer ended without trailers: no verdict, the slot is given back
    again, acb = stream(config, runtime, grpcRequest())
    assert again.decodeHeaders(acb.request, True) is FilterStatus.CONTINUE


def test_scope_route_reads_the_routes_name_as_the_descriptor_would_and_a_closed_success_fills_the_window():
    """
    scope route's key, read inline from the route (docs/performance.md, "Resilience within 10 % (3)"): a named
    route, an unnamed one (``_unnamed``) and no route (not counted) are keyed as txmesh.filters.descriptors'
    route key says; successes on a closed breaker, inline, count in the window as record() would: they keep a
    later burst of failures under the percentage until they roll out of the window.
    """
    from txmesh.filters.descriptors import _SIMPLE

    config = build({"scope": "route", "request_volume_threshold": 4, "error_threshold_percentage": 50})
    assert config.byRoute
    runtime = Runtime()

    class Route:
        def __init__(self, name):
            self.name = name

    def once(route, status):
        f, cb = stream(config, runtime, RequestHead(b"GET", b"/"))
        cb.route = lambda: route
        assert config.key(cb.request, cb) == _SIMPLE["route"](cb.request, cb)
        verdict = f.decodeHeaders(cb.request, True)
        if verdict is FilterStatus.CONTINUE:
            f.encodeHeaders(ResponseHead(status), True)
        return verdict

    assert once(None, 500) is FilterStatus.CONTINUE and len(config.breakers._breakers) == 0
    for _ in range(3):
        once(Route("api"), 200)
        once(Route(None), 200)
        runtime.clock.advance(1.0)
    # 3 successes in the window: the third failure opens it (3 of 6, 50 %), where alone it would be under the volume
    assert [once(Route("api"), 503) for _ in range(3)] == [FilterStatus.CONTINUE] * 3
    assert once(Route("api"), 200) is FilterStatus.STOP
    stats = runtime.stats
    assert stats.total("error_rate_breaker_rq_success", key="api") == 3
    assert stats.total("error_rate_breaker_rq_success", key="_unnamed") == 3
    assert stats.total("error_rate_breaker_rq_failure", key="api") == 3
    # successes past the window (10s) are gone: four failures are needed (the volume), the fourth opens it
    runtime.clock.advance(11.0)
    assert [once(Route(None), 503) for _ in range(4)] == [FilterStatus.CONTINUE] * 4
    assert once(Route(None), 200) is FilterStatus.STOP
