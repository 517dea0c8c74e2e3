"""
Local rate limits (issue 11 part 7): token-bucket arithmetic on a Clock, descriptor keys and their cap, the
``local_rate_limit`` filter through an in-memory listener (429 at once, the upstream never sees it, x-ratelimit
headers, counters), and the protocol-native statuses for gRPC and Dubbo.
"""

import pytest
from h2 import events as h2events
from h2.config import H2Configuration
from h2.connection import H2Connection
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from zope.interface.verify import verifyObject

from tests.test_dubbo_listener import ECHO

from txmesh.config import FilterConfigContext
from txmesh.errors import ConfigError
from txmesh.filters.descriptors import CappedMap
from txmesh.filters.local_rate_limit import LocalRateLimitFactory
from txmesh.filters.token_bucket import TokenBucket, TokenBucketConfig
from txmesh.interfaces import FilterStatus, IFilterFactory, ITokenBucket
from txmesh.protocols.dubbo import codec as dc
from txmesh.protocols.dubbo.client import DubboClientProtocol
from txmesh.protocols.dubbo.replies import dubboStatusFor
from txmesh.protocols.h2 import grpc
from txmesh.stats import StatsStore
from txmesh.stream import RequestHead, StreamInfo
from txmesh.testing import FakeDecoderCallbacks, InMemoryMesh

MESH = """\
clusters:
  - name: backend
    endpoints:
      - {{address: "10.0.0.1:80"}}
listeners:
  - name: web
    address: tcp:15001
    filters:
      - name: local_rate_limit
        config: {config}
    route_config:
      virtual_hosts:
        - name: all
          domains: ["*"]
          routes:
            - name: api
              match: {{prefix: /api}}
              route: {{cluster: backend}}
            - match: {{prefix: /}}
              route: {{cluster: backend}}
"""


def context():
    return FilterConfigContext("mesh.yaml", "listeners[0].filters[0].config", "http1", frozenset(), lambda p: 7)


# -- the bucket ----------------------------------------------------------------------------------------------------

def test_bucket_burst_then_refills_per_interval_without_timers():
    b = TokenBucket(TokenBucketConfig(3, 2, 1.0), now=100.0)
    verifyObject(ITokenBucket, b)
    assert [b.consume(100.0) for _ in range(4)] == [True, True, True, False]  # the burst, then empty
    assert b.secondsToNextFill(100.25) == 0.75
    assert not b.consume(100.99)
    assert b.remaining(101.0) == 2  # one fill: tokens_per_fill
    assert b.remaining(105.5) == 3  # never above max_tokens
    assert b.secondsToNextFill(105.5) == 0.5  # fills stay on the boundaries counted from creation


def test_bucket_partial_intervals_do_not_add_up_to_extra_tokens():
    b = TokenBucket(TokenBucketConfig(1, 1, 1.0), now=0.0)
    allowed = 0
    t = 0.0
    while t < 10.0:  # asked every 0.3 s for 10 s: one per interval, plus the initial burst
        allowed += b.consume(t)
        t += 0.3
    assert allowed == 10


def test_capped_map_shares_the_other_key_past_the_cap():
    m = CappedMap(2)
    for k in ("a", "b"):
        assert m.lookup(k) == (k, None)
        m.add(k, k.upper())
    assert m.lookup("a") == ("a", "A")
    assert m.lookup("c") == ("_other", None)
    m.add("_other", "O")
    assert m.lookup("d") == ("_other", "O") and len(m) == 3



def test_capped_map_get_is_lookup_without_the_overflow():
    """The per-request get finds what lookup finds for a key already made; a new key is left to lookup and add."""
    m = CappedMap(1)
    assert m.get("a") is None
    m.add(*m.lookup("a")[:1], "A")
    assert m.get("a") == "A" == m.lookup("a")[1]
    assert m.get("b") is None and m.lookup("b") == ("_other", None)


def test_source_address_keys_are_the_peer_host_whatever_the_port():
    from txmesh.filters.descriptors import _SIMPLE

    key = _SIMPLE["source_address"]

    class Callbacks:
        def __init__(self, peer):
            self.streamInfo = type("Info", (), {"downstreamPeer": peer})()

    peers = ["10.0.0.5:1234", "10.0.0.5:1235", "[::1]:8080", "[::1]:8080", "unix", ""]
    assert [key(None, Callbacks(p)) for p in peers] == ["10.0.0.5", "10.0.0.5", "::1", "::1", "unix", None]
    for i in range(5000):  # past the memo's bound: still right
        assert key(None, Callbacks("10.1.%d.%d:80" % (i // 256, i % 256))) == "10.1.%d.%d" % (i // 256, i % 256)
    assert key(None, Callbacks("10.0.0.5:99")) == "10.0.0.5"


# -- config ----------------------------------------------------------------------------------------------------

def test_factory_is_a_plugin():
    verifyObject(IFilterFactory, LocalRateLimitFactory())
    from twisted.plugin import getPlugins
    import txmesh.plugins
    assert "local_rate_limit" in {f.name for f in getPlugins(IFilterFactory, txmesh.plugins)}


@pytest.mark.parametrize("raw, key, reason", [
    ({}, "token_bucket", "must be a mapping"),
    ({"token_bucket": {"max_tokens": 0, "fill_interval": "1s"}}, "token_bucket.max_tokens", ">= 1"),
    ({"token_bucket": {"max_tokens": 1}}, "token_bucket", "fill_interval"),
    ({"token_bucket": {"max_tokens": 1, "fill_interval": "10ms"}}, "token_bucket.fill_interval", "50ms"),
    ({"token_bucket": {"max_tokens": 1, "fill_interval": "1s", "x": 1}}, "token_bucket.x", "unknown key"),
    ({"token_bucket": {"max_tokens": 1, "fill_interval": "1s"}, "descriptor": "ip"}, "descriptor", "one of"),
    ({"token_bucket": {"max_tokens": 1, "fill_interval": "1s"}, "descriptor": {"header": "a b"}},
     "descriptor.header", "not a header"),
    ({"token_bucket": {"max_tokens": 1, "fill_interval": "1s"}, "max_buckets": 0}, "max_buckets", "between"),
    ({"token_bucket": {"max_tokens": 1, "fill_interval": "1s"}, "status": 200}, "status", "between 400"),
    ({"token_bucket": {"max_tokens": 1, "fill_interval": "1s"}, "routes": []}, "routes", "non-empty"),
    ({"token_bucket": {"max_tokens": 1, "fill_interval": "1s"}, "path_prefix": "api"}, "path_prefix", "/"),
    ({"token_bucket": {"max_tokens": 1, "fill_interval": "1s"}, "burst": 1}, "burst", "unknown key"),
])
def test_config_errors_name_file_line_and_key(raw, key, reason):
    with pytest.raises(ConfigError) as e:
        LocalRateLimitFactory().buildConfig(raw, context())
    text = str(e.value)
    assert text.startswith("mesh.yaml:7: listeners[0].filters[0].config.%s: " % (key,)) and reason in text


# -- through the listener ----------------------------------------------------------------------------------------

def mesh(config):
    m = InMemoryMesh(MESH.format(config=config))
    m.upstream("backend").respondWith(200, body=b"hello")
    return m


def get(m, path=b"/", headers=(), peer="10.1.2.3"):
    client = m.connect((peer, None))
    client.request(path=path, headers=headers)
    return client.response()


def test_over_the_limit_is_429_at_once_and_never_reaches_the_upstream():
    m = mesh("{token_bucket: {max_tokens: 2, tokens_per_fill: 1, fill_interval: 1s}}")
    answers = [get(m) for _ in range(4)]
    assert [a.status for a in answers] == [200, 200, 429, 429]
    assert len(m.upstream("backend").requests) == 2
    # without enable_x_ratelimit_headers the filter stays off the response path: the answers carry none
    assert [a.header("x-ratelimit-limit") for a in answers] == [None] * 4 and answers[0].body == b"hello"
    r = get(m)
    assert r.header("x-txmesh-error") == b"local_rate_limited" and r.body == b"local_rate_limited"
    assert "RL" in m.responseFlags()[-1]
    assert m.value("ratelimit_ok", listener="web", descriptor="*") == 2
    assert m.value("ratelimit_rate_limited", listener="web", limiter="local_rate_limit") == 3
    m.advance(1.0)
    assert get(m).status == 200  # refilled by one


def test_x_ratelimit_headers_on_allowed_and_limited_answers():
    m = mesh("{token_bucket: {max_tokens: 2, fill_interval: 10s}, enable_x_ratelimit_headers: true}")
    first = get(m)
    assert (first.header("x-ratelimit-limit"), first.header("x-ratelimit-remaining"),
            first.header("x-ratelimit-reset")) == (b"2", b"1", b"10")
    m.advance(4.0)
    get(m)
    limited = get(m)
    assert limited.status == 429
    assert (limited.header("x-ratelimit-remaining"), limited.header("x-ratelimit-reset")) == (b"0", b"6")


def test_per_header_buckets_with_a_cap_and_requests_without_the_header_pass():
    m = mesh("{token_bucket: {max_tokens: 1, fill_interval: 1m}, descriptor: {header: x-user}, max_buckets: 2}")
    assert [get(m, headers=[(b"x-user", b"a")]).status for _ in range(2)] == [200, 429]
    assert get(m, headers=[(b"x-user", b"b")]).status == 200  # its own bucket
    assert get(m).status == 200 and get(m).status == 200  # no descriptor: not limited
    # past the cap, new values share the _other bucket
    assert get(m, headers=[(b"x-user", b"c")]).status == 200
    assert get(m, headers=[(b"x-user", b"d")]).status == 429
    assert m.value("ratelimit_rate_limited", descriptor="_other") == 1
    assert m.value("ratelimit_rate_limited", descriptor="a") == 1


def test_per_source_address_and_only_the_named_routes():
    m = mesh("{token_bucket: {max_tokens: 1, fill_interval: 1m}, descriptor: source_address, routes: [api]}")
    assert get(m, b"/api/x", peer="10.0.0.5").status == 200
    assert get(m, b"/api/x", peer="10.0.0.5").status == 429
    assert get(m, b"/api/x", peer="10.0.0.6").status == 200
    assert get(m, b"/other", peer="10.0.0.5").status == 200  # another route: not limited
    assert m.value("ratelimit_ok", descriptor="10.0.0.6") == 1


def test_per_route_buckets():
    m = mesh("{token_bucket: {max_tokens: 1, fill_interval: 1m}, descriptor: route, status: 503}")
    assert [get(m, b"/api").status, get(m, b"/api").status, get(m, b"/x").status] == [200, 503, 200]
    assert m.value("ratelimit_rate_limited", descriptor="api") == 1
    assert m.value("ratelimit_ok", descriptor="_unnamed") == 1


def test_protocol_native_statuses():
    assert grpc.statusForCause("local_rate_limited", 429) == grpc.RESOURCE_EXHAUSTED == 8
    assert dubboStatusFor(429, "local_rate_limited") == dc.SERVER_THREADPOOL_EXHAUSTED_ERROR
    assert grpc.statusForCause("circuit_open", 503) == grpc.UNAVAILABLE
    assert dubboStatusFor(503, "circuit_open") == dc.SERVICE_NOT_FOUND


# -- through the gRPC and Dubbo listeners ------------------------------------------------------------------------

LISTENER = """\
clusters:
  - name: backend
    protocol: %(cluster)s
    endpoints:
      - {address: "10.0.0.1:%(port)d"}
listeners:
  - name: rpc
    protocol: %(protocol)s
    address: tcp:15001
    default_cluster: backend
    filters:
      - name: local_rate_limit
        config: {token_bucket: {max_tokens: 1, fill_interval: 1m}, descriptor: %(descriptor)s}
    route_config:
      virtual_hosts:
        - name: all
          domains: ["*"]
          routes:
            - match: {prefix: /}
              route: {cluster: backend}
"""


def test_grpc_over_the_limit_is_resource_exhausted_at_once():

    connects = []

    def connect(host, clusterConfig):
        connects.append(host)
        return defer.Deferred()  # never connects: the allowed call just waits

    m = InMemoryMesh(LISTENER % {"cluster": "grpc", "port": 50051, "protocol": "grpc",
                                 "descriptor": "grpc_method"}, connect=connect)
    client = m.connect()
    h2 = H2Connection(H2Configuration(client_side=True, header_encoding=None))
    h2.initiate_connection()
    for sid in (1, 3):
        h2.send_headers(sid, [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/pkg.Greeter/Hello"),
                              (b":authority", b"svc"), (b"content-type", b"application/grpc"), (b"te", b"trailers")],
                        end_stream=True)
    client.send(h2.data_to_send())
    answered = {e.stream_id: dict(e.headers) for e in h2.receive_data(client.received())
                if isinstance(e, h2events.ResponseReceived)}
    assert list(answered) == [3]  # the first waits for its upstream; the second is refused at once
    assert answered[3][b"grpc-status"] == b"8" and answered[3][b":status"] == b"200"
    assert len(connects) == 1
    assert m.value("ratelimit_rate_limited", descriptor="pkg.Greeter/Hello") == 1


def test_dubbo_over_the_limit_is_threadpool_exhausted_with_the_callers_id():

    upstreams = []

    def connect(host, clusterConfig):
        proto = DubboClientProtocol()
        proto.makeConnection(StringTransport())
        upstreams.append(proto)
        return defer.succeed(proto)

    m = InMemoryMesh(LISTENER % {"cluster": "dubbo", "port": 20880, "protocol": "dubbo",
                                 "descriptor": "dubbo_method"}, connect=connect)
    proto = m.factory.buildProtocol(None)
    transport = StringTransport()
    proto.makeConnection(transport)
    for rid in (1, 2):
        proto.dataReceived(dc.withRequestId(ECHO, rid) + ECHO[16:])
    [reply] = dc.DubboDecoder().feed(transport.value())
    assert (reply.requestId, reply.status) == (2, dc.SERVER_THREADPOOL_EXHAUSTED_ERROR)
    assert len(dc.DubboDecoder().feed(upstreams[0].transport.value())) == 1  # only the allowed call went up
    assert m.value("ratelimit_ok", limiter="local_rate_limit") == 1


# -- the per-request fast paths (docs/performance.md, "Resilience within 10 % (3)") ---------------------------------

def _onOneConnection(m, n, peer="10.0.0.5"):
    """``n`` requests on one downstream connection, one after the other: their statuses."""
    client = m.connect((peer, None))
    for _ in range(n):
        client.request()
    return [r.status for r in client.responses()]


@pytest.mark.parametrize("descriptor", ["source_address", "listener"])
def test_a_connections_later_streams_reuse_its_descriptor_and_decide_as_a_lookup_would(descriptor):
    """
    With a descriptor the peer alone decides, the streams after a connection's first reuse the descriptor it
    found (Limiter.lastPeer); their verdicts and counters are the ones a fresh lookup gives (fresh connections,
    whose first stream always looks up), whatever the order of connections and peers.
    """
    config = "{token_bucket: {max_tokens: 3, fill_interval: 1m}, descriptor: %s}" % (descriptor,)
    reused, fresh = mesh(config), mesh(config)
    got = _onOneConnection(reused, 2) + _onOneConnection(reused, 2, "10.0.0.6") + _onOneConnection(reused, 2)
    want = [get(fresh, peer=p).status for p in ["10.0.0.5"] * 2 + ["10.0.0.6"] * 2 + ["10.0.0.5"] * 2]
    assert got == want
    assert want == ([200, 200, 200, 200, 200, 429] if descriptor == "source_address" else
                    [200, 200, 200, 429, 429, 429])
    for name in ("ratelimit_ok", "ratelimit_rate_limited"):
        for key in ("10.0.0.5", "10.0.0.6", "*"):
            assert reused.value(name, descriptor=key) == fresh.value(name, descriptor=key)


def test_a_connection_whose_peer_gives_no_descriptor_stays_unlimited_on_every_stream():
    from txmesh.filters.local_rate_limit import Limiter, LocalRateLimitFilter

    config = LocalRateLimitFactory().buildConfig(
        {"token_bucket": {"max_tokens": 1, "fill_interval": "1m"}, "descriptor": "source_address"}, context())
    assert config.byPeer and not config.scoped and isinstance(config.limiter, Limiter)

    class Runtime:
        clock = Clock()
        stats = StatsStore()

    info = StreamInfo(0.0, "http/1.1", "web", "")  # no peer (an in-process client)
    for _ in range(3):
        f = LocalRateLimitFilter()
        f.config, f.runtime, f._descriptor = config, Runtime(), None
        cb = FakeDecoderCallbacks(info, RequestHead(b"GET", b"/"), Runtime.clock)
        f.setDecoderFilterCallbacks(cb)
        assert f.decodeHeaders(cb.request, True) is FilterStatus.CONTINUE and cb.localReplies == []
    assert len(config.limiter) == 0


def test_the_filters_inline_take_agrees_with_the_buckets_own_on_a_clock():
    """
    Requests at uneven times, across fills, with the bucket full, partly and wholly empty: the filter's verdicts
    (its inline take when no fill is due, TokenBucket.consume otherwise) are a reference bucket's, request by
    request.
    """
    m = mesh("{token_bucket: {max_tokens: 3, tokens_per_fill: 2, fill_interval: 1s}}")
    reference = TokenBucket(TokenBucketConfig(3, 2, 1.0), m.clock.seconds())
    client = m.connect()
    got, want = [], []
    for step in [0.0, 0.0, 0.1, 0.2, 0.3, 0.5, 0.0, 0.0, 0.0, 2.7, 0.0, 0.0, 0.0, 0.0, 0.99, 0.02, 0.0, 0.0]:
        m.advance(step)
        want.append(200 if reference.consume(m.clock.seconds()) else 429)
        client.request()
        got.append(client.responses()[-1].status)
    assert got == want and 429 in got and got.count(200) > 3
