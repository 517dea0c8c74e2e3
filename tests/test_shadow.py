"""
Request mirroring (txmesh.upstream.shadow and the router's tee) in memory: an HTTP/1.1 listener whose routes
mirror to a shadow cluster of fake upstreams; time is a Clock, sampling seeded.
"""

import h2.config
import h2.connection
import h2.events
import pytest
from zope.interface.verify import verifyObject

from txmesh.config import loads
from txmesh.errors import ConfigError
from txmesh.interfaces import IShadowRequest, IShadowWriter, IUpstreamResponder
from txmesh.protocols.dubbo import codec as dc
from txmesh.routing import MirrorPolicy
from txmesh.stream import HeaderMap, RequestHead
from txmesh.testing import InMemoryMesh
from txmesh.upstream.shadow import ShadowRequest, ShadowWriter, shadowAuthority, traceSampled

from tests.test_dubbo_listener import ECHO, ECHO_RESP, ONEWAY, answer, frames, sent
from tests.test_fault import dubboMesh, grpcCall

MESH = """
listeners:
- name: ingress
  protocol: http
  address: tcp:0
  route_config:
    virtual_hosts:
    - name: app
      domains: ["*"]
      routes:
      - match: {prefix: /half}
        route:
          cluster: primary
          request_mirror_policies: [{cluster: shadow, fraction: 50}]
      - match: {prefix: /traced}
        route:
          cluster: primary
          request_mirror_policies: [{cluster: shadow, trace_sampled: true}]
      - match: {prefix: /}
        route:
          cluster: primary
          timeout: 5s
          request_mirror_policies:
          - {cluster: shadow, timeout: 1s, max_in_flight: 2, max_buffered_bytes: 10}
clusters:
- name: primary
  endpoints: [{address: "10.0.0.1:80"}]
- name: shadow
  connect_timeout: 3s
  endpoints: [{address: "10.0.0.2:80"}]
"""


@pytest.fixture
def mesh():
    return InMemoryMesh(MESH, seed=3)


def get(client, path=b"/", headers=b""):
    client.send(b"GET %s HTTP/1.1\r\nHost: app.svc:8080\r\n%s\r\n" % (path, headers))


def test_interfaces(mesh):
    writer = mesh.runtime.shadows
    verifyObject(IShadowWriter, writer)
    shadow = ShadowRequest(writer, MirrorPolicy("shadow"), writer.statsFor("shadow"))
    verifyObject(IShadowRequest, shadow)
    verifyObject(IUpstreamResponder, shadow)


def test_shadow_authority():
    assert shadowAuthority(b"app") == b"app-shadow"
    assert shadowAuthority(b"app.svc:8080") == b"app.svc-shadow:8080"
    assert shadowAuthority(b"[::1]:80") == b"[::1]-shadow:80"


def test_trace_sampled():
    assert traceSampled(HeaderMap([(b"traceparent", b"00-" + b"a" * 32 + b"-" + b"b" * 16 + b"-01")]))
    assert not traceSampled(HeaderMap([(b"traceparent", b"00-" + b"a" * 32 + b"-" + b"b" * 16 + b"-00")]))
    assert not traceSampled(HeaderMap([(b"traceparent", b"junk")]))
    assert traceSampled(HeaderMap([(b"x-b3-sampled", b"1")]))
    assert traceSampled(HeaderMap([(b"b3", b"a-b-1")]))
    assert not traceSampled(HeaderMap())


def test_request_is_mirrored_with_the_shadow_authority_and_the_response_thrown_away(mesh):
    primary, shadow = mesh.upstream("primary"), mesh.upstream("shadow")
    client = mesh.connect()
    get(client, headers=b"X-Request-Id: r1\r\n")
    [p], [s] = primary.requests, shadow.requests
    assert p.head.authority == b"app.svc:8080" and s.head.authority == b"app.svc-shadow:8080"
    assert s.head.headers.get(b"x-request-id") == b"r1" and s.head.path == b"/"
    # the primary's head is stamped with its time left; the shadow's copy is its own
    assert p.head.headers is not s.head.headers
    s.respond(500, body=b"shadow says no")
    p.respond(200, body=b"primary")
    r = client.response()
    assert (r.status, r.body) == (200, b"primary")
    assert mesh.value("shadow_rq_total", cluster="shadow") == 1
    assert mesh.value("shadow_rq_failed", cluster="shadow") == 1
    assert mesh.value("shadow_rq_active", cluster="shadow") == 0


def test_success_is_counted(mesh):
    mesh.upstream("shadow").respondWith(204)
    mesh.upstream("primary").respondWith(200)
    client = mesh.connect()
    get(client)
    assert client.response().status == 200
    assert mesh.value("shadow_rq_success", cluster="shadow") == 1


def test_fraction_samples(mesh):
    mesh.upstream("primary").respondWith(200)
    mesh.upstream("shadow").respondWith(200)
    for _ in range(400):
        client = mesh.connect()
        get(client, b"/half")
        assert client.response().status == 200
    mirrored = len(mesh.upstream("shadow").requests)
    assert 160 <= mirrored <= 240 and mesh.value("shadow_rq_total", cluster="shadow") == mirrored


def test_trace_sampled_policy(mesh):
    mesh.upstream("primary").respondWith(200)
    for headers in (b"", b"X-B3-Sampled: 0\r\n", b"X-B3-Sampled: 1\r\n"):
        client = mesh.connect()
        get(client, b"/traced", headers)
    assert len(mesh.upstream("shadow").requests) == 1


def test_body_is_teed_while_the_shadow_connects(mesh):
    shadow = mesh.upstream("shadow")
    shadow.holdConnections()
    primary = mesh.upstream("primary")
    client = mesh.connect()
    client.send(b"POST / HTTP/1.1\r\nHost: app\r\nContent-Length: 8\r\n\r\nabcd")
    client.send(b"efgh")
    [p] = primary.requests
    assert p.body == b"abcdefgh"
    shadow.acceptHeldConnect()
    [s] = shadow.requests
    assert s.body == b"abcdefgh" and s.complete


def test_buffer_bound_abandons_the_shadow_not_the_primary(mesh):
    shadow = mesh.upstream("shadow")
    shadow.holdConnections()
    primary = mesh.upstream("primary")
    client = mesh.connect()
    client.send(b"POST / HTTP/1.1\r\nHost: app\r\nContent-Length: 20\r\n\r\n" + b"x" * 20)
    [p] = primary.requests
    assert p.body == b"x" * 20 and p.complete
    assert mesh.value("shadow_rq_overflow", cluster="shadow") == 1
    assert mesh.value("shadow_rq_active", cluster="shadow") == 0
    assert not client.readingPaused
    p.respond(200)
    assert client.response().status == 200


def test_in_flight_bound(mesh):
    shadow = mesh.upstream("shadow")  # never answers
    mesh.upstream("primary").respondWith(200)
    for _ in range(3):
        client = mesh.connect()
        get(client)
        assert client.response().status == 200
    assert len(shadow.requests) == 2
    assert mesh.value("shadow_rq_overflow", cluster="shadow") == 1
    assert mesh.value("shadow_rq_total", cluster="shadow") == 2


def test_slow_shadow_does_not_delay_the_primary_and_times_out(mesh):
    shadow = mesh.upstream("shadow")
    primary = mesh.upstream("primary")
    primary.respondWith(200, body=b"fast", after=0.1)
    client = mesh.connect()
    get(client)
    mesh.advance(0.1)
    assert client.response().body == b"fast"  # at 0.1s, whatever the shadow does
    assert len(shadow.requests) == 1 and mesh.value("shadow_rq_active", cluster="shadow") == 1
    mesh.advance(0.9)
    assert mesh.value("shadow_rq_timeout", cluster="shadow") == 1
    assert mesh.value("shadow_rq_active", cluster="shadow") == 0
    assert shadow.connections[0].closed


def test_shadow_down_leaves_the_primary_alone(mesh):
    mesh.upstream("shadow").refuseConnections()
    mesh.upstream("primary").respondWith(200, body=b"ok")
    client = mesh.connect()
    get(client)
    assert client.response().body == b"ok"
    assert mesh.value("shadow_rq_failed", cluster="shadow") == 1
    assert mesh.value("upstream_rq_total", cluster="primary") == 1


def test_downstream_reset_abandons_an_unfinished_shadow(mesh):
    shadow = mesh.upstream("shadow")
    client = mesh.connect()
    client.send(b"POST / HTTP/1.1\r\nHost: app\r\nContent-Length: 8\r\n\r\nabcd")
    [s] = shadow.requests
    client.disconnect()
    assert mesh.value("shadow_rq_failed", cluster="shadow") == 1
    assert shadow.connections[0].closed and not s.complete


@pytest.mark.parametrize("policy,path,reason", [
    ("{cluster: nope}", "cluster", "unknown cluster 'nope'"),
    ("{cluster: shadow, fraction: 120}", "fraction", "between 0 and 100"),
    ("{cluster: shadow, runtime_fraction: {default_value: {numerator: 1, denominator: TEN}}}",
     "runtime_fraction.default_value", "denominator"),
    ("{cluster: shadow, runtime_fraction: {default_value: 1, runtime_key: k}}", "runtime_fraction.runtime_key",
     "unknown key"),
    ("{cluster: shadow, fraction: 1, runtime_fraction: {default_value: 1}}", "", "exclusive"),
    ("{cluster: shadow, timeout: 0s}", "timeout", "> 0"),
    ("{cluster: shadow, max_in_flight: 0}", "max_in_flight", ">= 1"),
    ("{cluster: shadow, shadow: 1}", "shadow", "unknown key"),
])
def test_config_errors(policy, path, reason):
    text = MESH.replace("[{cluster: shadow, fraction: 50}]", "[%s]" % (policy,))
    with pytest.raises(ConfigError) as e:
        loads(text, "mesh.yaml")
    key = "listeners[0].route_config.virtual_hosts[0].routes[0].route.request_mirror_policies[0]"
    assert str(e.value).startswith("mesh.yaml:")
    assert ("%s.%s: " % (key, path) if path else key + ": ") in str(e.value) and reason in str(e.value)


def test_policies_are_built():
    config = loads(MESH, "mesh.yaml")
    routes = config.listeners[0].routeConfig.virtualHosts[0].routes
    assert routes[0].action.mirrorPolicies == (MirrorPolicy("shadow", 50, 100, False, 15.0),)
    assert routes[2].action.mirrorPolicies == (MirrorPolicy("shadow", 100, 100, False, 1.0, 2, 10),)


# -- Dubbo: re-encoded with the client's own id; one-way calls mirrored as one-way --------------------------------

DUBBO = """
listeners:
- name: dubbo_in
  protocol: dubbo
  address: tcp:0
  route_config:
    virtual_hosts:
    - name: all
      domains: ["*"]
      routes:
      - match: {dubbo: {interface: "*"}}
        route:
          cluster: provider
          request_mirror_policies: [{cluster: shadow}]
clusters:
- name: provider
  protocol: dubbo
  endpoints: [{address: "10.0.0.1:20880"}]
- name: shadow
  protocol: dubbo
  endpoints: [{address: "10.0.0.2:20880"}]
"""


def test_dubbo_call_is_mirrored():
    mesh, upstreams, proto, transport = dubboMesh(DUBBO)
    proto.dataReceived(ECHO)
    primary, shadow = upstreams["10.0.0.1:20880"], upstreams["10.0.0.2:20880"]
    [p], [s] = sent(primary), sent(shadow)
    assert (s.invocation.serviceName, s.invocation.methodName) == (p.invocation.serviceName, "echo")
    assert s.requestId == 1 and s.twoWay
    answer(shadow, s, ECHO_RESP)
    answer(primary, p, ECHO_RESP)
    [reply] = frames(transport.value())
    assert reply.status == dc.OK and reply.requestId == frames(ECHO)[0].requestId
    assert mesh.value("shadow_rq_success", cluster="shadow") == 1


@pytest.mark.skipif(not ONEWAY, reason="no one-way capture")
def test_dubbo_one_way_call_is_mirrored_one_way():
    mesh, upstreams, proto, transport = dubboMesh(DUBBO)
    proto.dataReceived(ONEWAY[0])
    [s] = sent(upstreams["10.0.0.2:20880"])
    assert not s.twoWay
    assert mesh.value("shadow_rq_success", cluster="shadow") == 1
    assert mesh.value("shadow_rq_active", cluster="shadow") == 0


def test_writer_without_a_cluster_counts_a_failure():
    from txmesh.stats import StatsStore
    from twisted.internet.task import Clock
    import random

    class NoClusters:
        def get(self, name):
            return None

    stats = StatsStore()
    writer = ShadowWriter(Clock(), NoClusters(), stats, random.Random(0))
    assert writer.start(RequestHead(b"GET", b"/"), (MirrorPolicy("gone"),), True) is None
    assert stats.total("shadow_rq_failed", cluster="gone") == 1


GRPC = """
listeners:
- name: grpc_in
  protocol: grpc
  address: tcp:0
  route_config:
    virtual_hosts:
    - name: svc
      domains: ["*"]
      routes:
      - match: {grpc: {service: test.Echo}}
        route:
          cluster: echo
          request_mirror_policies: [{cluster: echo_shadow}]
clusters:
- name: echo
  protocol: h2
  endpoints: [{address: "10.0.0.1:50051"}]
- name: echo_shadow
  protocol: h2
  endpoints: [{address: "10.0.0.2:50051"}]
"""


def upstreamRequests(upstream):
    """What an HTTP/2 fake upstream was sent: [(header fields dict, body)] read by an h2 server connection."""
    server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
    out = {}
    for event in server.receive_data(upstream.connections[0].transport.value()):
        if isinstance(event, h2.events.RequestReceived):
            out[event.stream_id] = [dict(event.headers), b""]
        elif isinstance(event, h2.events.DataReceived):
            out[event.stream_id][1] += event.data
    return [tuple(v) for v in out.values()]


def test_grpc_call_is_mirrored_over_h2():
    mesh = InMemoryMesh(GRPC)
    message = b"\x00\x00\x00\x00\x02hi"
    grpcCall(mesh, body=message)
    [(primary, primaryBody)] = upstreamRequests(mesh.upstream("echo"))
    [(shadow, shadowBody)] = upstreamRequests(mesh.upstream("echo_shadow"))
    assert primary[b":authority"] == b"svc" and shadow[b":authority"] == b"svc-shadow"
    assert shadow[b":path"] == b"/test.Echo/Unary" and shadow[b"content-type"] == b"application/grpc"
    assert primaryBody == shadowBody == message
    assert mesh.value("shadow_rq_total", cluster="echo_shadow") == 1
