"""
The router against recording pools and upstream handles (txmesh.testing.RecordingPool, RecordingUpstreamStream):
routes, clusters and the filter chain are the real ones from a mesh.yaml; the downstream is a RecordingDownstream.
"""

import pytest
from twisted.python.failure import Failure
from zope.interface.verify import verifyObject

from txmesh import errors
from txmesh.interfaces import (
    IConnectionPool,
    IDownstreamStream,
    IDownstreamWatermarkCallbacks,
    IUpstreamResponder,
    IUpstreamStream,
)
from txmesh.stream import HeaderMap, RequestHead, ResponseHead
from txmesh.testing import InMemoryMesh, RecordingDownstream, RecordingPool, RecordingUpstreamStream

MESH = """
listeners:
- name: ingress
  protocol: http
  address: tcp:0
  limits: {max_request_body: 100}
  route_config:
    virtual_hosts:
    - name: app
      domains: ["*"]
      routes:
      - match: {prefix: /small}
        route: {cluster: backend, max_request_body: 10}
      - match: {prefix: /untimed}
        route: {cluster: backend, timeout: 0s}
      - match: {prefix: /msd}
        route: {cluster: backend, timeout: 0s, max_stream_duration: 3s}
      - match: {prefix: /}
        route: {cluster: backend, timeout: 5s}
        response_headers_to_add: [{name: x-route, value: r1}]
clusters:
- name: backend
  endpoints: [{address: "10.0.0.1:80"}]
"""


class Harness:
    """A mesh whose pools are RecordingPools; ``pool`` is the backend host's, made on the first request."""

    def __init__(self, text=MESH):
        self.pools = []

        def makePool(*args):
            self.pools.append(RecordingPool(*args))
            return self.pools[-1]

        self.mesh = InMemoryMesh(text, poolClasses={"http1": makePool})
        self.host = self.mesh.clusters.get("backend").hosts[0]

    @property
    def pool(self):
        [pool] = self.pools
        return pool

    def start(self, path=b"/", endStream=True, contentLength=None, timeout=None, idle=None, protocol="http1",
              headers=()):
        """Open a stream and decode a request head; with ``idle``, the pool has that handle ready."""
        stream, downstream = self.mesh.openStream()
        if idle is not None:
            pool = self.mesh.clusters.get("backend").poolFor(self.host)
            pool.idle.append(idle)
        request = RequestHead(b"POST" if not endStream else b"GET", path, b"app", HeaderMap(list(headers)),
                              contentLength=contentLength, protocol=protocol)
        request.timeout = timeout
        stream.decodeHeaders(request, endStream)
        return stream, downstream

    def connect(self, i=0):
        """Answer the pool's i-th waiting acquire with a new handle."""
        handle = RecordingUpstreamStream()
        self.pool.waiting[i].callback(handle)
        return handle


def status(downstream):
    """The status the downstream was sent, and its x-txmesh-error."""
    [(kind, code, _)] = [w for w in downstream.written if w[0] == "headers"]
    return code, downstream.lastResponse.headers.get(b"x-txmesh-error")


@pytest.fixture
def h():
    return Harness()


def test_doubles_provide_their_interfaces():
    assert verifyObject(IConnectionPool, RecordingPool())
    assert verifyObject(IUpstreamStream, RecordingUpstreamStream())
    assert verifyObject(IDownstreamStream, RecordingDownstream())


def test_each_attempt_is_the_responder_and_the_router_takes_the_watermarks(h):
    handle = RecordingUpstreamStream()
    stream, _ = h.start(idle=handle)
    router = stream.decoders[-1]
    assert verifyObject(IUpstreamResponder, handle.responder)  # the attempt (Envoy's UpstreamRequest)
    assert handle.responder is not router
    assert verifyObject(IDownstreamWatermarkCallbacks, router)


# -- getting a connection ------------------------------------------------------------------------------------------

def test_an_idle_handle_is_used_at_once_without_acquire(h):
    handle = RecordingUpstreamStream()
    stream, _ = h.start(idle=handle)
    assert [c[0] for c in handle.calls] == ["sendRequest"]
    assert h.pool.waiting == []
    assert h.host.activeRequests == 1


def test_acquire_when_no_handle_is_idle_and_queued_body_follows_in_order(h):
    stream, _ = h.start(endStream=False, contentLength=None)
    assert len(h.pool.waiting) == 1
    stream.decodeData(b"abc", False)
    stream.decodeTrailers(HeaderMap([(b"x-t", b"1")]))
    handle = h.connect()
    assert [c[0] for c in handle.calls] == ["sendRequest", "writeBody", "writeTrailers"]
    assert handle.calls[1] == ("writeBody", b"abc", False)


# -- the end of an exchange -----------------------------------------------------------------------------------------

def respond(handle, reusable=True, status=200):
    r = handle.responder
    r.upstreamHeaders(ResponseHead(status), False)
    r.upstreamComplete(reusable)
    r.upstreamData(b"body", True)


def test_complete_and_reusable_releases_the_handle(h):
    handle = RecordingUpstreamStream()
    stream, downstream = h.start(idle=handle)
    respond(handle)
    assert h.pool.released == [handle] and h.pool.discarded == []
    assert downstream.written == [("headers", 200, False), ("data", b"body", True)]
    assert downstream.lastResponse.headers.get(b"x-route") == b"r1"
    assert h.host.activeRequests == 0
    assert h.mesh.value("cluster_upstream_rq_completed", cluster="backend") == 1


def test_complete_but_not_reusable_discards_the_handle(h):
    handle = RecordingUpstreamStream()
    h.start(idle=handle)
    respond(handle, reusable=False)
    assert h.pool.released == [] and h.pool.discarded == [handle]


def test_complete_before_the_request_ended_discards_the_handle(h):
    handle = RecordingUpstreamStream()
    stream, downstream = h.start(endStream=False, idle=handle)
    respond(handle, reusable=True, status=400)  # an early answer: the rest of the body was never sent
    assert h.pool.released == [] and h.pool.discarded == [handle]
    assert downstream.written[0] == ("headers", 400, False)


# -- timeouts -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("path,requestTimeout,fires", [
    (b"/", None, 5.0),  # the route's
    (b"/", 2.0, 2.0),  # the request's, smaller
    (b"/", 10.0, 5.0),  # the route's, smaller
    (b"/untimed", 3.0, 3.0),  # no route timeout: the request's
])
def test_timeout_is_the_smaller_of_route_and_request(h, path, requestTimeout, fires):
    handle = RecordingUpstreamStream()
    stream, downstream = h.start(path=path, timeout=requestTimeout, idle=handle)
    h.mesh.clock.advance(fires - 0.001)
    assert downstream.written == []
    h.mesh.clock.advance(0.002)
    assert status(downstream) == (504, b"upstream_request_timeout")
    assert "abandon" in handle.calls and h.pool.discarded == [handle]
    assert stream.streamInfo.responseFlags == {"UT"}
    assert h.mesh.value("cluster_upstream_rq_timeout", cluster="backend") == 1
    assert h.host.activeRequests == 0


def test_without_a_route_timeout_only_the_stream_idle_timeout_ends_a_silent_stream(h):
    stream, downstream = h.start(path=b"/untimed", idle=RecordingUpstreamStream())
    h.mesh.clock.advance(299.9)
    assert downstream.written == []
    h.mesh.clock.advance(0.1)  # the listener's stream_idle_timeout, 5 min by default
    assert status(downstream) == (408, b"stream_idle_timeout")
    assert stream.streamInfo.responseFlags == {"SI"}


def test_timeout_while_acquiring_cancels_the_acquire(h):
    stream, downstream = h.start()
    h.mesh.clock.advance(5.0)
    assert status(downstream) == (504, b"upstream_request_timeout")
    assert h.pool.cancelled == 1


def test_a_response_cancels_the_timer(h):
    handle = RecordingUpstreamStream()
    stream, downstream = h.start(idle=handle)
    respond(handle)
    h.mesh.clock.advance(10)
    assert [w[0] for w in downstream.written] == ["headers", "data"]
    assert h.mesh.clock.getDelayedCalls() == []


# -- request body limits ----------------------------------------------------------------------------------------------

def test_413_by_content_length_before_any_acquire(h):
    stream, downstream = h.start(path=b"/small", endStream=False, contentLength=11)
    assert status(downstream) == (413, b"request_body_too_large")
    assert h.pools == [] or h.pool.waiting == []


def test_413_by_streamed_body_on_a_connected_handle(h):
    handle = RecordingUpstreamStream()
    stream, downstream = h.start(path=b"/small", endStream=False, idle=handle)
    stream.decodeData(b"12345", False)
    stream.decodeData(b"678901", False)
    assert status(downstream) == (413, b"request_body_too_large")
    assert "abandon" in handle.calls and h.pool.discarded == [handle]
    assert ("writeBody", b"678901", False) not in handle.calls


def test_413_by_streamed_body_while_acquiring_cancels_the_acquire(h):
    stream, downstream = h.start(path=b"/small", endStream=False)
    stream.decodeData(b"x" * 11, False)
    assert status(downstream) == (413, b"request_body_too_large")
    assert h.pool.cancelled == 1


def test_413_by_the_listener_limit(h):
    stream, downstream = h.start(endStream=False, contentLength=101)
    assert status(downstream) == (413, b"request_body_too_large")


# -- backpressure ---------------------------------------------------------------------------------------------------

def test_full_upstream_pauses_the_downstream_and_resumes_it(h):
    handle = RecordingUpstreamStream()
    stream, downstream = h.start(endStream=False, idle=handle)
    handle.responder.upstreamWritePaused()
    assert (downstream.paused, downstream.resumed) == (1, 0)
    handle.responder.upstreamWriteResumed()
    assert (downstream.paused, downstream.resumed) == (1, 1)


def test_full_downstream_pauses_reading_the_upstream_and_resumes_it(h):
    handle = RecordingUpstreamStream()
    stream, _ = h.start(idle=handle)
    stream.downstreamWritePaused()
    stream.downstreamWriteResumed()
    assert handle.calls[1:] == ["pauseReading", "resumeReading"]


def test_a_pause_before_the_connection_is_applied_when_it_comes(h):
    stream, _ = h.start()
    stream.downstreamWritePaused()
    handle = h.connect()
    assert [c if isinstance(c, str) else c[0] for c in handle.calls] == ["sendRequest", "pauseReading"]


def test_a_pause_and_resume_before_the_connection_leave_it_reading(h):
    stream, _ = h.start()
    stream.downstreamWritePaused()
    stream.downstreamWriteResumed()
    handle = h.connect()
    assert [c if isinstance(c, str) else c[0] for c in handle.calls] == ["sendRequest"]


# -- failures -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("exc,code,cause,flag", [
    (errors.ConnectFailure("refused"), 503, b"upstream_connect_failure", "UF"),
    (errors.ConnectTimeout("slow"), 503, b"upstream_connect_timeout", "UF"),
    (errors.Overflow("full"), 503, b"upstream_overflow", "UO"),
    (errors.PoolClosed("drained"), 503, b"upstream_pool_closed", "UF"),
    (RuntimeError("a bug"), 503, b"upstream_connect_failure", "UF"),  # unexpected: logged, still answered
])
def test_acquire_failures_become_local_replies(h, exc, code, cause, flag):
    stream, downstream = h.start()
    h.pool.waiting[0].errback(Failure(exc))
    assert status(downstream) == (code, cause)
    assert stream.streamInfo.responseFlags == {flag}
    assert h.host.activeRequests == 0


@pytest.mark.parametrize("exc,code,cause,flag", [
    (errors.UpstreamReset("closed"), 503, b"upstream_reset_before_response", "UC"),
    (errors.UpstreamRemoteReset("rst"), 503, b"upstream_reset_before_response", "UR"),
    (errors.BadUpstreamResponse("framing"), 502, b"upstream_protocol_error", "UPE"),
])
def test_upstream_failures_before_the_response_become_local_replies(h, exc, code, cause, flag):
    handle = RecordingUpstreamStream()
    stream, downstream = h.start(idle=handle)
    handle.responder.upstreamFailed(exc)
    assert status(downstream) == (code, cause)
    assert stream.streamInfo.responseFlags == {flag}
    assert h.pool.discarded == [handle]


def test_upstream_failure_after_the_response_started_resets_the_downstream(h):
    handle = RecordingUpstreamStream()
    stream, downstream = h.start(idle=handle)
    handle.responder.upstreamHeaders(ResponseHead(200), False)
    handle.responder.upstreamData(b"part", False)
    handle.responder.upstreamFailed(errors.UpstreamReset("closed"))
    assert downstream.resets == ["upstream_reset_before_response"]
    assert downstream.written == [("headers", 200, False), ("data", b"part", False)]
    assert h.pool.discarded == [handle]


def test_no_healthy_host(h):
    h.mesh.clusters.get("backend").updateHosts([])
    stream, downstream = h.start()
    assert status(downstream) == (503, b"no_healthy_upstream")
    assert stream.streamInfo.responseFlags == {"UH"}


# -- the stream ends first ------------------------------------------------------------------------------------------

def test_stream_reset_abandons_the_connected_handle(h):
    handle = RecordingUpstreamStream()
    stream, downstream = h.start(idle=handle)
    stream.resetStream("downstream_disconnect")
    assert handle.calls[-1] == "abandon" and h.pool.discarded == [handle]
    assert h.host.activeRequests == 0
    assert downstream.written == []


def test_stream_reset_cancels_a_pending_acquire(h):
    stream, downstream = h.start()
    stream.resetStream("downstream_disconnect")
    assert h.pool.cancelled == 1
    assert h.host.activeRequests == 0


def test_a_handle_that_comes_after_the_stream_ended_goes_back_untouched(h):
    """A pool whose cancel cannot withdraw the acquire (its connection was made meanwhile) fires it anyway."""
    stream, downstream = h.start()
    late = RecordingUpstreamStream()
    h.pool.lateHandle = late
    stream.resetStream("downstream_disconnect")
    assert h.pool.cancelled == 1
    assert h.pool.released == [late] and late.calls == []
    assert downstream.written == []


# -- time bounds and the time told to the next hop --------------------------------------------------------------------

def sentHeader(handle, name):
    [(_, head, _)] = [c for c in handle.calls if c[0] == "sendRequest"]
    return head.headers.get(name)


@pytest.mark.parametrize("protocol, incoming, name, sent", [
    ("http1", (), b"x-txmesh-expected-rq-timeout-ms", b"4990"),
    ("http2", ((b"x-txmesh-expected-rq-timeout-ms", b"9000"),), b"x-txmesh-expected-rq-timeout-ms", b"4990"),
    ("grpc", (), b"grpc-timeout", b"4990m"),
    ("grpc", ((b"grpc-timeout", b"1H"),), b"grpc-timeout", b"4990m"),
    ("dubbo", ((b"timeout", b"8000"),), b"timeout", b"4990"),
    ("dubbo", (), b"timeout", None),  # a call without the attachment is not re-encoded to add one
])
def test_the_upstream_request_carries_the_route_timeout(h, protocol, incoming, name, sent):
    handle = RecordingUpstreamStream()
    h.start(idle=handle, protocol=protocol, headers=incoming)
    assert sentHeader(handle, name) == sent


@pytest.mark.parametrize("deadline, sent", [
    (2.0, b"1990m"),  # less 10 ms for the way there and back
    (0.05, b"45m"),  # at most a tenth of the time left
    (0.0005, b"1m"),  # never 0
])
def test_the_upstream_request_carries_the_clients_deadline_when_nearer(h, deadline, sent):
    handle = RecordingUpstreamStream()
    h.start(idle=handle, protocol="grpc", timeout=deadline)
    assert sentHeader(handle, b"grpc-timeout") == sent


def test_the_time_told_shrinks_by_the_wait_for_a_connection(h):
    stream, downstream = h.start(protocol="grpc", timeout=2.0)
    h.mesh.clock.advance(1.25)
    handle = h.connect()
    assert sentHeader(handle, b"grpc-timeout") == b"740m"


def test_a_trusted_expected_timeout_bounds_the_call_and_is_passed_on(h):
    handle = RecordingUpstreamStream()
    stream, downstream = h.start(path=b"/untimed", idle=handle,
                                 headers=[(b"x-txmesh-expected-rq-timeout-ms", b"1500")])
    assert sentHeader(handle, b"x-txmesh-expected-rq-timeout-ms") == b"1490"
    h.mesh.clock.advance(1.4)
    assert downstream.written == []
    h.mesh.clock.advance(0.1)
    assert status(downstream) == (504, b"upstream_request_timeout")


@pytest.mark.parametrize("value", [b"", b"abc", b"-5", b"0", b"1e3"])
def test_a_malformed_expected_timeout_is_ignored(h, value):
    stream, downstream = h.start(path=b"/untimed", idle=RecordingUpstreamStream(),
                                 headers=[(b"x-txmesh-expected-rq-timeout-ms", value)])
    h.mesh.clock.advance(299)
    assert downstream.written == []


UNTRUSTING = MESH.replace("  limits: {max_request_body: 100}", "  respect_expected_rq_timeout: false\n"
                                                                 "  limits: {max_request_body: 100}")


def test_a_listener_that_does_not_trust_the_expected_timeout_ignores_and_drops_it():
    h = Harness(UNTRUSTING)
    handle = RecordingUpstreamStream()
    stream, downstream = h.start(path=b"/untimed", idle=handle,
                                 headers=[(b"x-txmesh-expected-rq-timeout-ms", b"1000")])
    assert sentHeader(handle, b"x-txmesh-expected-rq-timeout-ms") is None  # not passed on to a trusting hop
    h.mesh.clock.advance(10)
    assert downstream.written == []
    other = RecordingUpstreamStream()
    h.start(idle=other, headers=[(b"x-txmesh-expected-rq-timeout-ms", b"1000")])
    assert sentHeader(other, b"x-txmesh-expected-rq-timeout-ms") == b"4990"  # this hop's own bound


def test_the_route_timeout_starts_when_the_request_ends(h):
    handle = RecordingUpstreamStream()
    stream, downstream = h.start(endStream=False, idle=handle)
    for _ in range(4):
        h.mesh.clock.advance(5)  # 20 s of request body, the route timeout being 5 s
        stream.decodeData(b"x", False)
    stream.decodeData(b"x", True)
    h.mesh.clock.advance(4.9)
    assert downstream.written == []
    h.mesh.clock.advance(0.1)
    assert status(downstream) == (504, b"upstream_request_timeout")


def test_the_route_timeout_bounds_the_whole_response(h):
    handle = RecordingUpstreamStream()
    stream, downstream = h.start(idle=handle)
    handle.responder.upstreamHeaders(ResponseHead(200), False)
    h.mesh.clock.advance(4)
    handle.responder.upstreamData(b"a", False)
    h.mesh.clock.advance(1)  # 5 s: the body is not done
    assert downstream.written == [("headers", 200, False), ("data", b"a", False)]
    assert downstream.resets == ["upstream_request_timeout"]
    assert stream.streamInfo.responseFlags == {"UT"}
    assert "abandon" in handle.calls


def test_max_stream_duration_ends_a_busy_stream(h):
    handle = RecordingUpstreamStream()
    stream, downstream = h.start(path=b"/msd", endStream=False, idle=handle)
    handle.responder.upstreamHeaders(ResponseHead(200), False)
    for _ in range(29):
        h.mesh.clock.advance(0.1)
        handle.responder.upstreamData(b"a", False)
    assert downstream.resets == []
    h.mesh.clock.advance(0.1)
    assert downstream.resets == ["max_stream_duration_reached"]
    assert stream.streamInfo.responseFlags == {"UMSDR"}


def test_max_stream_duration_before_the_response_is_504(h):
    stream, downstream = h.start(path=b"/msd", idle=RecordingUpstreamStream())
    h.mesh.clock.advance(3)
    assert status(downstream) == (504, b"max_stream_duration_reached")


def test_a_stream_that_keeps_moving_outlives_the_stream_idle_timeout(h):
    handle = RecordingUpstreamStream()
    stream, downstream = h.start(path=b"/untimed", endStream=False, idle=handle)
    handle.responder.upstreamHeaders(ResponseHead(200), False)
    for i in range(20):  # 40 minutes, something every 2 min either way
        h.mesh.clock.advance(120)
        if i % 2:
            stream.decodeData(b"q", False)
        else:
            handle.responder.upstreamData(b"a", False)
    assert downstream.resets == []
    h.mesh.clock.advance(299)
    assert downstream.resets == []
    h.mesh.clock.advance(1)
    assert downstream.resets == ["stream_idle_timeout"]
    assert stream.streamInfo.responseFlags == {"SI"}
    assert h.mesh.value("cluster_upstream_rq_timeout", cluster="backend") == 1


GRPC_MESH = """
listeners:
- name: ingress
  protocol: grpc
  address: tcp:0
  limits: {stream_idle_timeout: 60s}
  route_config:
    virtual_hosts:
    - name: app
      domains: ["*"]
      routes:
      - match: {prefix: /}
        route: {cluster: backend}
clusters:
- name: backend
  endpoints: [{address: "10.0.0.1:80"}]
"""


def test_a_bidi_grpc_stream_outlives_the_old_30s_limit():
    """A gRPC listener's routes have no route timeout by default: a stream lives on its messages."""
    h = Harness(GRPC_MESH)
    handle = RecordingUpstreamStream()
    stream, downstream = h.start(endStream=False, idle=handle, protocol="grpc")
    assert sentHeader(handle, b"grpc-timeout") is None  # no deadline to pass on
    handle.responder.upstreamHeaders(ResponseHead(200), False)
    handle.responder.upstreamData(b"first reply", False)  # at t=0
    for _ in range(60):  # an hour, a message each way every minute
        h.mesh.clock.advance(59)
        stream.decodeData(b"q", False)
        handle.responder.upstreamData(b"a", False)
    assert downstream.resets == [] and [c for c in handle.calls if c == "abandon"] == []
    stream.decodeData(b"", True)
    handle.responder.upstreamComplete(True)
    handle.responder.upstreamTrailers(HeaderMap([(b"grpc-status", b"0")]))
    assert downstream.written[-1][0] == "trailers"
    h.mesh.clock.advance(3600)
    assert downstream.resets == []


# -- across two hops: the hop nearest the cause answers -------------------------------------------------------------

EDGE = """
listeners:
- name: edge
  protocol: http
  address: tcp:0
  route_config:
    virtual_hosts:
    - {name: app, domains: ["*"], routes: [{match: {prefix: /}, route: {cluster: inner, timeout: 2s}}]}
clusters:
- name: inner
  endpoints: [{address: "10.0.0.2:80"}]
"""

INNER = """
listeners:
- name: inner
  protocol: http
  address: tcp:0
  route_config:
    virtual_hosts:
    - {name: app, domains: ["*"], routes: [{match: {prefix: /}, route: {cluster: backend}}]}
clusters:
- name: backend
  endpoints: [{address: "10.0.0.3:80"}]
"""


def twoHops():
    """An edge mesh whose cluster ``inner`` is a second in-memory mesh's listener, over memory transports."""
    from twisted.internet import defer
    from txmesh.protocols.descriptor import findProtocols
    from txmesh.testing import MemoryTransport

    inner = InMemoryMesh(INNER)

    def connect(host, clusterConfig):
        client = findProtocols()["http1"].buildClientProtocol()
        down = inner.connect()
        there = MemoryTransport(edge.clock)
        there.protocol = client

        def forward(src, deliver):
            data = src.value()
            src.clear()
            deliver(data)

        there._onWrite = lambda: forward(there, down.send)
        down.transport._onWrite = lambda: forward(down.transport, client.dataReceived)
        client.makeConnection(there)
        return defer.succeed(client)

    edge = InMemoryMesh(EDGE, connect=connect)
    return edge, inner


def test_in_a_pair_the_inner_hop_times_out_first_and_its_answer_comes_back():
    edge, inner = twoHops()
    client = edge.connect()
    client.request(path=b"/slow")
    [req] = inner.upstream("backend").requests
    assert req.head.headers.get(b"x-txmesh-expected-rq-timeout-ms") == b"1980"  # 2 s less 10 ms, less 10 ms
    for mesh in (edge, inner):
        mesh.advance(1.99)
    r = client.response()
    assert r.status == 504 and r.header("x-txmesh-error") == b"upstream_request_timeout"
    assert inner.responseFlags() == [{"UT"}]  # the inner hop, nearest the silent backend, answered
    assert edge.responseFlags() == [set()]  # the edge relayed it
    assert edge.value("cluster_upstream_rq_timeout", cluster="inner") == 0


@pytest.mark.parametrize("protocol", ["http1", "http2", "grpc"])
def test_connect_is_501_before_any_route_or_pool(h, protocol):
    """No listener tunnels yet: an HTTP CONNECT (any HTTP version) never reaches a pool."""
    stream, downstream = h.mesh.openStream()
    stream.decodeHeaders(RequestHead(b"CONNECT", b"", b"db:5432", HeaderMap([]), protocol=protocol), True)
    assert status(downstream) == (501, b"connect_not_supported")
    assert h.pools == [] and h.host.activeRequests == 0
    assert h.mesh.value("upstream_rq_total", cluster="backend") == 0


def test_a_dubbo_method_named_connect_is_routed():
    """In a Dubbo call the method is the service method's name: ``CONNECT`` there is no tunnel request."""
    pools = []
    mesh = InMemoryMesh(MESH.replace("protocol: http", "protocol: dubbo"), poolClasses={
        "http1": lambda *a: pools.append(RecordingPool(*a)) or pools[-1]})
    stream, downstream = mesh.openStream()
    stream.decodeHeaders(RequestHead(b"CONNECT", b"/com.example.Db/CONNECT", b"com.example.Db", HeaderMap([]),
                                     protocol="dubbo"), True)
    assert downstream.written == [] and len(pools) == 1 and len(pools[0].waiting) == 1
