"""
Retries, budgets, hedging and per-try timeouts (issue 11 parts 5 and 10): the router against RecordingPools on a
Clock, with the real route table and clusters from a mesh.yaml (as tests/test_router.py).
"""

import random

import pytest
from twisted.python.failure import Failure

from txmesh import errors
from txmesh.config_reader import Reader
from txmesh.errors import ConfigError
from txmesh.routing import RetryPolicy
from txmesh.routing_config import _buildRetryPolicy
from txmesh.stream import HeaderMap, RequestHead, ResponseHead
from txmesh.testing import InMemoryMesh, RecordingPool, RecordingUpstreamStream
from txmesh.upstream.retry import NO_RETRY, backoff, budgetAllows, parsePushback, parseRetryAfter
from txmesh.upstream.resources import ClusterResources

MESH = """
listeners:
- name: ingress
  protocol: http
  address: tcp:0
  route_config:
    virtual_hosts:
    - name: app
      domains: ["*"]
      retry_policy: {retry_on: "5xx", num_retries: 1}
      routes:
      - match: {prefix: /gw}
        route:
          cluster: backend
          timeout: 10s
          retry_policy:
            retry_on: [gateway-error, retriable-4xx]
            num_retries: 2
            include_request_attempt_count: true
      - match: {prefix: /cf}
        route: {cluster: backend, retry_policy: {retry_on: connect-failure, num_retries: 3}}
      - match: {prefix: /grpc}
        route:
          cluster: backend
          retry_policy: {retry_on: "unavailable,resource-exhausted", num_retries: 1}
      - match: {prefix: /codes}
        route:
          cluster: backend
          retry_policy: {retry_on: retriable-status-codes, retriable_status_codes: [418]}
      - match: {prefix: /pertry}
        route: {cluster: backend, timeout: 10s, retry_policy: {retry_on: reset, per_try_timeout: 1s, num_retries: 1}}
      - match: {prefix: /hedge}
        route:
          cluster: backend
          timeout: 10s
          retry_policy: {retry_on: reset, per_try_timeout: 1s, hedge_on_per_try_timeout: true}
      - match: {prefix: /budget}
        route:
          cluster: backend
          retry_policy: {retry_on: 5xx, num_retries: 5, retry_budget: {budget_percent: 50, min_retry_concurrency: 1}}
      - match: {prefix: /small}
        route: {cluster: backend, retry_policy: {retry_on: 5xx, per_request_buffer_limit: 4}}
      - match: {prefix: /post}
        route: {cluster: backend, retry_policy: {retry_on: 5xx, retry_non_idempotent: true}}
      - match: {prefix: /short}
        route: {cluster: backend, timeout: 0.05s, retry_policy: {retry_on: 5xx, retry_back_off: {base_interval: 1s}}}
      - match: {prefix: /}
        route: {cluster: backend, timeout: 5s}
clusters:
- name: backend
  endpoints: [{address: "10.0.0.1:80"}, {address: "10.0.0.2:80"}, {address: "10.0.0.3:80"}]
"""


class Harness:
    """A mesh whose pools are RecordingPools, one per host (``pools``: address -> pool)."""

    def __init__(self, text=MESH, protocol="http1"):
        self.pools = {}
        self.all = []  # every handle offered
        self.mark = 0

        def makePool(clock, host, *args):
            pool = self.pools[host.address] = RecordingPool(clock, host, *args)
            return pool

        self.mesh = InMemoryMesh(text, poolClasses={protocol: makePool})
        self.cluster = self.mesh.clusters.get("backend")
        self.clock = self.mesh.clock

    def start(self, path=b"/gw", method=b"GET", endStream=True, protocol="http1", headers=(), idle=True,
              contentLength=None, metadata=None):
        """Open a stream; with ``idle``, every host's pool has a handle ready (recorded in ``handles``)."""
        stream, downstream = self.mesh.openStream()
        if idle:
            for host in self.cluster.hosts:
                handle = RecordingUpstreamStream()
                self.cluster.poolFor(host).idle.append(handle)
                self.all.append(handle)
        request = RequestHead(method, path, b"app", HeaderMap(list(headers)), protocol=protocol,
                              contentLength=contentLength, metadata=metadata)
        self.request = request
        self.mark = _order[0]
        stream.decodeHeaders(request, endStream)
        return stream, downstream

    def sent(self):
        """The handles a request was sent on since the last start(), in order."""
        return sorted((h for h in self.all if h.calls and h.order > self.mark), key=lambda h: h.order)

    def stat(self, name):
        return self.mesh.stats.value(name, cluster="backend")


_order = [0]
_sendRequest = RecordingUpstreamStream.sendRequest
RecordingUpstreamStream.answered = False


def _recordOrder(self, head, endStream, responder):
    _order[0] += 1
    self.order = _order[0]
    _sendRequest(self, head, endStream, responder)


@pytest.fixture(autouse=True)
def ordered(monkeypatch):
    monkeypatch.setattr(RecordingUpstreamStream, "sendRequest", _recordOrder)


@pytest.fixture
def h():
    return Harness()


def answer(handle, status=200, headers=(), endStream=True):
    handle.answered = True
    r = handle.responder
    if endStream:
        r.upstreamComplete(True)
    r.upstreamHeaders(ResponseHead(status, HeaderMap(list(headers))), endStream)


def statuses(downstream):
    return [w[1] for w in downstream.written if w[0] == "headers"]


def backoffPassed(h):
    h.mesh.advance(0.3)  # past the longest back-off with the default base (25ms, at most 250ms)


# -- config ---------------------------------------------------------------------------------------------------------

def policyOf(raw):
    return _buildRetryPolicy(Reader("mesh.yaml", {}), {"retry_policy": raw}, "r")


def test_policy_defaults_and_names():
    p = policyOf({"retry_on": "5xx,connect-failure,unavailable,timeout,service-not-found"})
    assert p.numRetries == 1 and p.baseInterval == 0.025 and p.maxInterval == 0.25 and p.bufferLimit == 16384
    assert p.on5xx and p.onConnectFailure and not p.onReset and p.previousHosts
    assert p.grpcCodes == {14} and p.dubboStatuses == {30, 31, 60}
    assert p.budgetPercent is None
    p = policyOf({"retry_on": ["retriable-4xx"], "retry_budget": {}, "retry_back_off": {"base_interval": "100ms"}})
    assert p.retriableStatusCodes == {409} and p.budgetPercent == 20.0 and p.minRetryConcurrency == 3
    assert p.maxInterval == pytest.approx(1.0)


@pytest.mark.parametrize("raw,message", [
    ({"retry_on": "5xx,teapot"}, "r.retry_policy.retry_on: unknown retry_on condition 'teapot'"),
    ({"retry_on": ""}, "r.retry_policy.retry_on: must name at least one condition"),
    ({"retry_on": "5xx", "num_retries": -1}, "r.retry_policy.num_retries: must be between 0 and 100"),
    ({"retry_on": "retriable-status-codes"}, "r.retry_policy.retry_on: 'retriable-status-codes' needs"),
    ({"retry_on": "5xx", "retriable_status_codes": [503]}, "r.retry_policy.retriable_status_codes: "),
    ({"retry_on": "5xx", "retry_back_off": {"base_interval": "1s", "max_interval": "10ms"}},
     "r.retry_policy.retry_back_off.max_interval: must be >= base_interval"),
    ({"retry_on": "5xx", "retry_host_predicate": ["canary"]}, "r.retry_policy.retry_host_predicate[0]: unknown"),
    ({"retry_on": "5xx", "retry_budget": {"budget_percent": 120}}, "r.retry_policy.retry_budget.budget_percent"),
    ({"num_retries": 2}, "r.retry_policy: missing required key 'retry_on'"),
])
def test_policy_errors(raw, message):
    with pytest.raises(ConfigError) as e:
        policyOf(raw)
    assert message in str(e.value)


def test_the_virtual_host_policy_applies_where_the_route_has_none(h):
    routes = h.mesh.listenerConfig.routeConfig.virtualHosts[0].routes
    assert routes[-1].action.retryPolicy == RetryPolicy(on5xx=True)
    assert routes[0].action.retryPolicy.onGatewayError


# -- the rules ------------------------------------------------------------------------------------------------------

def test_a_503_is_retried_on_another_host_and_the_attempt_count_is_told(h):
    stream, down = h.start()
    [first] = h.sent()
    assert first.calls[0][1].headers.get(b"x-txmesh-attempt-count") == b"1"
    answer(first, 503)
    assert statuses(down) == []  # nothing went downstream
    backoffPassed(h)
    first2, second = h.sent()
    assert second.responder.host is not first.responder.host
    assert second.calls[0][1].headers.get(b"x-txmesh-attempt-count") == b"2"
    answer(second, 200)
    assert statuses(down) == [200]
    assert h.stat("upstream_rq_retry") == 1 and h.stat("upstream_rq_retry_success") == 1
    assert h.stat("upstream_rq_retry_backoff_exponential") == 1
    assert h.cluster.resources.retries.count == 0 and h.cluster.resources.requests.count == 0
    assert all(host.activeRequests == 0 for host in h.cluster.hosts)


def test_retries_stop_at_num_retries_and_the_last_answer_goes_down(h):
    stream, down = h.start()
    for _ in range(3):
        answer(h.sent()[-1], 502)
        backoffPassed(h)
    assert statuses(down) == [502] and len(h.sent()) == 3
    assert h.stat("upstream_rq_retry") == 2 and h.stat("upstream_rq_retry_limit_exceeded") == 1
    assert h.stat("upstream_rq_retry_success") == 0


def test_retriable_4xx_and_status_codes_and_what_is_not_retried(h):
    stream, down = h.start(b"/gw")
    answer(h.sent()[0], 409)
    backoffPassed(h)
    assert len(h.sent()) == 2
    stream, down = h.start(b"/gw")
    answer(h.sent()[0], 500)  # gateway-error: 502, 503, 504 only
    assert statuses(down) == [500]
    stream, down = h.start(b"/codes")
    answer(h.sent()[0], 418)
    backoffPassed(h)
    answer(h.sent()[1], 200)
    assert statuses(down) == [200]
    resources = h.cluster.resources
    before = (resources.retries.count, resources.requests.count)
    stream, down = h.start(b"/codes")
    answer(h.sent()[0], 404)  # a 4xx not listed: kept at once (the router's fast path), as statusRetriable says
    backoffPassed(h)
    assert statuses(down) == [404] and len(h.sent()) == 1
    assert (resources.retries.count, resources.requests.count) == before  # all given back


def test_connect_failure_is_retried_and_reset_is_not_under_connect_failure(h):
    stream, down = h.start(b"/cf", idle=False)
    [pool] = [p for p in h.pools.values() if p.waiting]
    pool.waiting[0].errback(Failure(errors.ConnectFailure("refused")))
    backoffPassed(h)
    [pool2] = [p for p in h.pools.values() if p.waiting and p is not pool]
    handle = RecordingUpstreamStream()
    pool2.waiting[0].callback(handle)
    handle.responder.upstreamFailed(errors.UpstreamReset("closed"))
    assert statuses(down) == [503] and down.lastResponse.headers.get(b"x-txmesh-error") == \
        b"upstream_reset_before_response"


def test_a_reset_is_retried_under_5xx(h):
    stream, down = h.start(b"/")
    h.sent()[0].responder.upstreamFailed(errors.UpstreamRemoteReset("rst"))
    backoffPassed(h)
    answer(h.sent()[1], 200)
    assert statuses(down) == [200]


@pytest.mark.parametrize("code,retried", [(b"14", True), (b"8", True), (b"13", False), (b"0", False)])
def test_grpc_statuses_by_name_trailers_only(h, code, retried):
    grpcHeaders = [(b"content-type", b"application/grpc"), (b"grpc-status", code)]
    stream, down = h.start(b"/grpc", method=b"POST", protocol="grpc")
    answer(h.sent()[0], 200, grpcHeaders)
    backoffPassed(h)
    assert len(h.sent()) == (2 if retried else 1)


def test_grpc_status_in_trailers_before_any_body_is_retried_after_it_is_not(h):
    ct = [(b"content-type", b"application/grpc")]
    stream, down = h.start(b"/grpc", method=b"POST", protocol="grpc")
    r = h.sent()[0].responder
    r.upstreamHeaders(ResponseHead(200, HeaderMap(ct)), False)
    assert statuses(down) == []  # held until the grpc-status is known
    r.upstreamComplete(True)
    r.upstreamTrailers(HeaderMap([(b"grpc-status", b"14")]))
    backoffPassed(h)
    r = h.sent()[1].responder
    r.upstreamHeaders(ResponseHead(200, HeaderMap(ct)), False)
    r.upstreamData(b"\0\0\0\0\0", False)  # a message went downstream: no retry after this
    r.upstreamComplete(True)
    r.upstreamTrailers(HeaderMap([(b"grpc-status", b"14")]))
    assert statuses(down) == [200] and [w[0] for w in down.written] == ["headers", "data", "trailers"]


def test_grpc_pushback_delays_and_a_negative_one_forbids(h):
    stream, down = h.start(b"/grpc", method=b"POST", protocol="grpc")
    answer(h.sent()[0], 200, [(b"content-type", b"application/grpc"), (b"grpc-status", b"14"),
                              (b"grpc-retry-pushback-ms", b"2000")])
    h.mesh.advance(1.9)
    assert len(h.sent()) == 1
    h.mesh.advance(0.2)
    assert len(h.sent()) == 2
    assert h.stat("upstream_rq_retry_backoff_ratelimited") == 1
    stream, down = h.start(b"/grpc", method=b"POST", protocol="grpc")
    answer(h.sent()[0], 200, [(b"content-type", b"application/grpc"), (b"grpc-status", b"14"),
                              (b"grpc-retry-pushback-ms", b"-1")])
    assert statuses(down) == [200] and len(h.sent()) == 1


def test_retry_after_seconds_and_a_deadline_it_would_pass(h):
    stream, down = h.start(b"/gw")
    answer(h.sent()[0], 503, [(b"retry-after", b"2")])
    h.mesh.advance(1.9)
    assert len(h.sent()) == 1
    h.mesh.advance(0.2)
    assert len(h.sent()) == 2
    stream, down = h.start(b"/gw")  # the route timeout is 10s: a Retry-After of 20s is not waited for
    answer(h.sent()[0], 503, [(b"retry-after", b"20")])
    assert statuses(down) == [503]


class FixedRandom(random.Random):
    def __init__(self, value):
        super().__init__(0)
        self.value = value

    def random(self):
        return self.value


def test_no_retry_when_the_back_off_would_pass_the_deadline(h):
    h.mesh.runtime.random = FixedRandom(0.5)  # back-off: 0.5 x 1s, the route timeout 50ms
    stream, down = h.start(b"/short")
    answer(h.sent()[0], 503)
    assert statuses(down) == [503] and h.stat("upstream_rq_retry") == 0
    h.mesh.runtime.random = FixedRandom(0.01)  # 10ms fits
    stream, down = h.start(b"/short")
    answer(h.sent()[0], 503)
    assert statuses(down) == [] and h.stat("upstream_rq_retry") == 1
    h.mesh.advance(0.011)
    answer(h.sent()[1], 200)
    assert statuses(down) == [200]


def test_non_idempotent_methods_only_before_the_app_saw_them(h):
    stream, down = h.start(b"/", method=b"POST")
    answer(h.sent()[0], 503)
    assert statuses(down) == [503]
    h = Harness()
    stream, down = h.start(b"/", method=b"POST", idle=False)
    [pool] = [p for p in h.pools.values() if p.waiting]
    pool.waiting[0].errback(Failure(errors.ConnectFailure("refused")))
    backoffPassed(h)
    assert sum(len(p.waiting) for p in h.pools.values()) == 2  # retried: the request never reached the app
    h = Harness()
    stream, down = h.start(b"/post", method=b"POST")
    answer(h.sent()[0], 503)
    backoffPassed(h)
    assert len(h.sent()) == 2


def test_refused_stream_is_retried_even_for_post(h):
    stream, down = h.start(b"/", method=b"POST")
    h.sent()[0].responder.upstreamFailed(errors.UpstreamRefusedStream("refused"))
    backoffPassed(h)
    assert len(h.sent()) == 2


def test_dubbo_one_way_calls_are_never_retried(h):
    stream, down = h.start(b"/", protocol="dubbo", metadata={"one_way": "true"})
    h.sent()[0].responder.upstreamFailed(errors.UpstreamReset("closed"))
    backoffPassed(h)
    assert len(h.sent()) == 1 and statuses(down) == [503]


def test_the_body_is_replayed_and_not_past_the_buffer_limit(h):
    stream, down = h.start(b"/post", method=b"POST", endStream=False)
    stream.decodeData(b"abc", False)
    stream.decodeData(b"def", True)
    answer(h.sent()[0], 503)
    backoffPassed(h)
    second = h.sent()[1]
    assert [c[1] for c in second.calls[1:]] == [b"abc", b"def"]
    stream, down = h.start(b"/small", method=b"PUT", endStream=False)
    stream.decodeData(b"abcdef", True)  # over its 4-byte buffer
    answer(h.sent()[0], 503)
    assert statuses(down) == [503] and h.stat("retry_or_shadow_abandoned") == 1
    stream, down = h.start(b"/small", method=b"PUT", contentLength=10)  # declared too large: not even buffered
    answer(h.sent()[0], 503)
    assert statuses(down) == [503]


def test_no_retry_after_response_bytes_went_downstream(h):
    stream, down = h.start(b"/")
    r = h.sent()[0].responder
    r.upstreamHeaders(ResponseHead(200), False)
    r.upstreamData(b"partial", False)
    r.upstreamFailed(errors.UpstreamReset("closed"))
    backoffPassed(h)
    assert len(h.sent()) == 1 and statuses(down) == [200]


def test_per_try_timeout_retries_and_tells_the_next_hop(h):
    stream, down = h.start(b"/pertry")
    first = h.sent()[0]
    assert first.calls[0][1].headers.get(b"x-txmesh-expected-rq-timeout-ms") == b"990"
    h.mesh.advance(1.0)
    assert "abandon" in first.calls and h.stat("upstream_rq_per_try_timeout") == 1
    backoffPassed(h)
    answer(h.sent()[1], 200)
    assert statuses(down) == [200]
    # a per-try timeout with no retry left: 504
    stream, down = h.start(b"/pertry")
    h.mesh.advance(1.0)
    backoffPassed(h)
    h.mesh.advance(1.0)
    assert statuses(down) == [504]
    assert down.lastResponse.headers.get(b"x-txmesh-error") == b"upstream_per_try_timeout"


def test_per_try_timeouts_ride_on_the_streams_one_timer(h):
    """The per-try timeout costs no DelayedCall of its own: the stream's timer fires for it first."""
    start = h.clock.seconds()
    stream, down = h.start(b"/pertry")
    [timer] = h.clock.getDelayedCalls()
    assert timer.getTime() == start + 1.0  # the per-try timeout, before the route's 10s
    h.sent()[0].responder.upstreamHeaders(ResponseHead(200), False)  # the answer started: no per-try any more
    h.mesh.advance(1.0)
    assert h.stat("upstream_rq_per_try_timeout") == 0 and statuses(down) == [200]
    [timer] = h.clock.getDelayedCalls()
    assert timer.getTime() == start + 10.0  # fired early, re-armed for the route timeout
    h.mesh.advance(9.0)
    assert h.stat("cluster_upstream_rq_timeout") == 1  # the route timeout still bounds the response
    assert h.clock.getDelayedCalls() == []


def test_the_per_try_timeout_counts_from_the_attempt_not_from_the_streams_start(h):
    """A request held before the router (a filter's delay) gets its whole per-try timeout, and the next hop is
    told what is left of it when the connection comes late."""
    stream, down = h.mesh.openStream()
    h.mesh.advance(5.0)  # e.g. a fault filter's delay: the stream started 5s before the router sees the request
    request = RequestHead(b"GET", b"/pertry", b"app", HeaderMap([]))
    stream.decodeHeaders(request, True)
    [pool] = [p for p in h.pools.values() if p.waiting]
    h.mesh.advance(0.5)
    handle = RecordingUpstreamStream()
    pool.waiting[0].callback(handle)  # connected after 0.5s: 0.5s of the per-try left, less the margin
    assert handle.calls[0][1].headers.get(b"x-txmesh-expected-rq-timeout-ms") == b"490"
    h.mesh.advance(0.4)
    assert h.stat("upstream_rq_per_try_timeout") == 0
    h.mesh.advance(0.1)
    assert h.stat("upstream_rq_per_try_timeout") == 1


def test_a_per_try_timeout_starts_when_the_request_ends(h):
    stream, down = h.start(b"/pertry", method=b"PUT", endStream=False)
    [idle] = h.clock.getDelayedCalls()  # the stream_idle_timeout's: neither the route's nor the per-try's yet
    assert idle.getTime() > 10.0
    h.mesh.advance(5.0)
    stream.decodeData(b"body", True)
    [timer] = h.clock.getDelayedCalls()  # still one timer, now due at the per-try timeout
    assert timer.getTime() == h.clock.seconds() + 1.0
    h.mesh.advance(1.0)
    assert h.stat("upstream_rq_per_try_timeout") == 1 and "abandon" in h.sent()[0].calls
    backoffPassed(h)
    second = h.sent()[1]
    assert [c[0] for c in second.calls] == ["sendRequest", "writeBody"]  # the body replayed
    h.mesh.advance(1.0)
    assert statuses(down) == [504] and h.stat("upstream_rq_per_try_timeout") == 2


def test_hedging_keeps_the_first_attempt_and_the_first_answer_wins(h):
    stream, down = h.start(b"/hedge")
    first = h.sent()[0]
    h.mesh.advance(1.0)
    backoffPassed(h)
    assert "abandon" not in first.calls
    second = h.sent()[1]
    answer(first, 200)  # the first attempt answers after all: the hedge is cancelled
    assert statuses(down) == [200] and "abandon" in second.calls
    assert h.cluster.resources.retries.count == 0 and h.cluster.resources.requests.count == 0


def test_the_max_retries_breaker_counts_overflow(h):
    h.cluster.resources.retries.max = 1
    a, downA = h.start(b"/gw")
    answer(h.sent()[0], 503)  # one retry scheduled: the breaker is full
    b, downB = h.start(b"/gw")
    answer(h.sent()[0], 503)
    assert statuses(downB) == [503] and h.stat("upstream_rq_retry_overflow") == 1
    backoffPassed(h)
    answer(h.sent()[-1], 200)
    assert statuses(downA) == [200] and h.cluster.resources.retries.count == 0


def test_the_max_requests_breaker_fails_at_once(h):
    h.cluster.resources.requests.max = 1
    a, downA = h.start(b"/")
    b, downB = h.start(b"/")
    assert statuses(downB) == [503] and downB.lastResponse.headers.get(b"x-txmesh-error") == b"upstream_rq_overflow"
    assert h.stat("upstream_rq_pending_overflow") == 1


def test_budget_arithmetic():
    policy = RetryPolicy(budgetPercent=20.0, minRetryConcurrency=3)
    res = ClusterResources()
    for _ in range(3):
        assert budgetAllows(policy, res)
        res.retries.inc()
    assert not budgetAllows(policy, res)  # the floor: 3 with few requests active
    for _ in range(20):
        res.requests.inc()
    assert budgetAllows(policy, res)  # 20% of 20 = 4
    res.retries.inc()
    assert not budgetAllows(policy, res)
    assert budgetAllows(RetryPolicy(), ClusterResources(maxRetries=1))
    assert not budgetAllows(RetryPolicy(), ClusterResources(maxRetries=0))


def test_a_budget_stops_a_retry_storm(h):
    downs = [h.start(b"/budget")[1] for _ in range(4)]
    h.mark = 0
    firsts = h.sent()
    assert len(firsts) == 4
    for handle in firsts:  # every host fails: 50% of the active requests (floor 1) may retry at once
        answer(handle, 503)
    assert h.stat("upstream_rq_retry") == 1 and h.stat("upstream_rq_retry_budget_exhausted") == 3
    assert h.stat("upstream_rq_retry_overflow") == 3
    assert sum(statuses(d) == [503] for d in downs) == 3
    for _ in range(6):
        backoffPassed(h)
        for handle in h.sent():
            if handle.responder is not None and not handle.answered:
                answer(handle, 503)
    assert all(statuses(d) == [503] for d in downs)
    assert len(h.sent()) == 4 + 5  # one request retried num_retries times, the others not at all
    assert h.cluster.resources.retries.count == 0


def test_backoff_bounds_with_a_seeded_random():
    policy = RetryPolicy(baseInterval=0.1, maxInterval=0.5)
    rng = random.Random(7)
    for n, ceiling in [(1, 0.1), (2, 0.2), (3, 0.4), (4, 0.5), (10, 0.5)]:
        delays = [backoff(policy, n, rng) for _ in range(200)]
        assert all(0 <= d < ceiling for d in delays)
        assert max(delays) > ceiling * 0.8  # full jitter spreads over the whole range


def test_retry_after_and_pushback_parsing():
    assert parseRetryAfter(b"120", 0) == 120.0
    assert parseRetryAfter(b"Wed, 21 Oct 2015 07:28:00 GMT", 1445412480 - 30) == pytest.approx(30)
    assert parseRetryAfter(b"soon", 0) is None
    assert parsePushback(b"250") == 0.25
    assert parsePushback(b"-5") == NO_RETRY and parsePushback(b"x") == NO_RETRY


DUBBO_MESH = """
listeners:
- name: dubbo_in
  protocol: dubbo
  address: tcp:0
  route_config:
    virtual_hosts:
    - name: all
      domains: ["*"]
      routes:
      - match: {dubbo: {interface: "org.example.*"}}
        route: {cluster: backend, retry_policy: {retry_on: "service-not-found,timeout", num_retries: 1}}
clusters:
- name: backend
  protocol: dubbo
  endpoints: [{address: "10.0.0.1:20880"}, {address: "10.0.0.2:20880"}]
"""


def dubboAnswer(handle, status, body=b"frame"):
    """As the Dubbo client delivers an answer: complete, then the head, then the whole frame as data."""
    handle.answered = True
    r = handle.responder
    r.upstreamComplete(True)
    r.upstreamHeaders(ResponseHead(status), False)
    r.upstreamData(body, True)


@pytest.mark.parametrize("status,retried", [(60, True), (31, True), (80, False), (20, False)])
def test_dubbo_statuses_by_name_and_the_dropped_answer_never_goes_down(status, retried):
    h = Harness(DUBBO_MESH, protocol="dubbo")
    stream, down = h.start(b"/org.example.Echo/echo", method=b"echo", protocol="dubbo",
                           metadata={"interface": "org.example.Echo", "method": "echo"})
    dubboAnswer(h.sent()[0], status, b"first")
    backoffPassed(h)
    assert len(h.sent()) == (2 if retried else 1)
    if retried:
        assert down.written == []  # neither the head nor the body of the dropped answer
        dubboAnswer(h.sent()[1], 20, b"second")
    assert [w for w in down.written if w[0] == "data"][0][1] == (b"second" if retried else b"first")


def test_the_hedge_that_answers_first_wins_and_the_slow_attempt_is_reset(h):
    stream, down = h.start(b"/hedge")
    first = h.sent()[0]
    h.mesh.advance(1.0)
    backoffPassed(h)
    second = h.sent()[1]
    answer(second, 200)
    assert statuses(down) == [200] and "abandon" in first.calls
    assert h.stat("upstream_rq_retry_success") == 1
    assert all(host.activeRequests == 0 for host in h.cluster.hosts)


def test_each_retry_tells_the_next_hop_the_callers_time_left(h):
    stream, down = h.mesh.openStream()
    for host in h.cluster.hosts:
        handle = RecordingUpstreamStream()
        h.cluster.poolFor(host).idle.append(handle)
        h.all.append(handle)
    request = RequestHead(b"POST", b"/pertry", b"app", HeaderMap(), protocol="grpc")
    request.timeout = 1.5  # the caller's grpc-timeout
    h.mark = _order[0]
    stream.decodeHeaders(request, True)
    assert h.sent()[0].calls[0][1].headers.get(b"grpc-timeout") == b"990m"  # min(per-try 1s, 1.5s) less 10ms
    h.mesh.advance(1.0)  # per-try timeout: retried
    backoffPassed(h)
    told = int(h.sent()[1].calls[0][1].headers.get(b"grpc-timeout")[:-1])
    assert 0 < told < 500  # what is left of the caller's 1.5s
    h.mesh.advance(0.5)
    assert statuses(down) == [504]  # the caller's deadline ends it, retries included


def test_max_stream_duration_spans_the_retries():
    h = Harness(MESH.replace("route: {cluster: backend, timeout: 10s, retry_policy: {retry_on: reset, per_try_timeout",
                             "route: {cluster: backend, timeout: 10s, max_stream_duration: 1.5s, "
                             "retry_policy: {retry_on: reset, per_try_timeout"))
    stream, down = h.start(b"/pertry")
    h.mesh.advance(1.0)
    backoffPassed(h)
    assert len(h.sent()) == 2
    h.mesh.advance(0.5)
    assert statuses(down) == [504]
    assert down.lastResponse.headers.get(b"x-txmesh-error") == b"max_stream_duration_reached"


def test_a_dubbo_retry_carries_the_time_left_in_its_timeout_attachment():
    h = Harness(DUBBO_MESH, protocol="dubbo")
    stream, down = h.mesh.openStream()
    for host in h.cluster.hosts:
        handle = RecordingUpstreamStream()
        h.cluster.poolFor(host).idle.append(handle)
        h.all.append(handle)
    request = RequestHead(b"echo", b"/org.example.Echo/echo", b"org.example.Echo", HeaderMap([(b"timeout", b"3000")]),
                          protocol="dubbo", metadata={"interface": "org.example.Echo", "method": "echo"})
    request.timeout = 3.0  # the consumer's timeout attachment
    h.mark = _order[0]
    stream.decodeHeaders(request, True)
    first = h.sent()[0]
    assert first.calls[0][1].headers.get(b"timeout") == b"2990"
    h.mesh.advance(0.5)
    dubboAnswer(first, 60)
    backoffPassed(h)
    told = int(h.sent()[1].calls[0][1].headers.get(b"timeout"))
    assert told == 2190  # 3s less the 0.5s before the answer and the 0.3s step the back-off ran in, less 10ms


# -- the RetryState is made on first need: every path as before it was ---------------------------------------------

def test_a_first_failure_after_the_head_alone_replays_the_head_and_counts_retries_and_budget(h):
    stream, down = h.start(b"/budget")  # a head that ended the request: no state until the 503
    [first] = h.sent()
    answer(first, 503)
    assert h.cluster.resources.retries.count == 1  # the retry holds its breaker count through the back-off
    backoffPassed(h)
    second = h.sent()[1]
    assert second.calls == [("sendRequest", h.request, True)] and second.responder.host is not first.responder.host
    answer(second, 200)
    assert statuses(down) == [200] and h.stat("upstream_rq_retry") == 1
    assert h.stat("upstream_rq_retry_success") == 1 and h.stat("cluster_upstream_rq_completed") == 1
    assert h.cluster.resources.retries.count == 0 and h.cluster.resources.requests.count == 0


@pytest.mark.parametrize("completeFirst", [True, False])
def test_the_first_answer_kept_finishes_the_stream_in_either_order(h, completeFirst):
    stream, down = h.start(b"/gw")
    r = h.sent()[0].responder
    if completeFirst:  # the client protocol may end the attempt before the router looks at the head
        r.upstreamComplete(True)
        r.upstreamHeaders(ResponseHead(200), True)
    else:
        r.upstreamHeaders(ResponseHead(200), False)
        r.upstreamData(b"ok", True)
        r.upstreamComplete(True)
    r.upstreamFailed(errors.UpstreamReset("late"))  # ignored: the attempt ended
    backoffPassed(h)
    assert statuses(down) == [200] and len(h.sent()) == 1 and h.stat("cluster_upstream_rq_completed") == 1
    assert h.stat("upstream_rq_retry") == 0
    assert h.cluster.resources.requests.count == 0 and h.mesh.clock.getDelayedCalls() == []


def test_a_body_arriving_later_is_kept_from_its_first_piece_and_replayed_whole(h):
    stream, down = h.start(b"/post", method=b"POST", endStream=False)
    first = h.sent()[0]
    stream.decodeData(b"one", False)
    stream.decodeTrailers(HeaderMap([(b"x-sum", b"1")]))
    assert [c[0] for c in first.calls] == ["sendRequest", "writeBody", "writeTrailers"]
    first.responder.upstreamFailed(errors.UpstreamRemoteReset("rst"))
    backoffPassed(h)
    second = h.sent()[1]
    assert second.calls == [("sendRequest", h.request, False), ("writeBody", b"one", False),
                            ("writeTrailers", first.calls[2][1])]
    answer(second, 200)
    assert statuses(down) == [200]


def test_an_unretriable_request_found_so_on_its_first_failure_fails_as_before(h):
    h.start(b"/small", method=b"PUT", contentLength=10)  # declared over its 4-byte buffer
    stream, down = h.start(b"/small", method=b"PUT", contentLength=10)
    h.sent()[0].responder.upstreamFailed(errors.UpstreamRemoteReset("rst"))
    backoffPassed(h)
    assert statuses(down) == [503] and len(h.sent()) == 1 and h.stat("upstream_rq_retry") == 0
    assert h.cluster.resources.requests.count == 1  # the first stream's attempt, still in flight
