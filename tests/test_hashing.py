"""
Hash policies: the key each kind extracts (header, gRPC metadata, cookie, source ip, query parameter, Dubbo
attachment), how keys combine, and the router sending each key to one host (HTTP and Dubbo, in memory).
"""

import os

from twisted.internet import defer
from twisted.internet.testing import StringTransport

from txmesh.protocols.dubbo import codec as dc
from txmesh.protocols.dubbo.client import DubboClientProtocol
from txmesh.protocols.dubbo.server import requestHead as dubboRequestHead
from txmesh.routing import HashPolicy
from txmesh.stream import HeaderMap, RequestHead, StreamInfo
from txmesh.testing import InMemoryMesh
from txmesh.upstream.hashing import requestHash
from txmesh.upstream.lb_hash import hash64

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "dubbo-frames")
MASK = (1 << 64) - 1


def request(path=b"/", headers=(), protocol="http1"):
    return RequestHead(b"GET", path, b"app", HeaderMap.fromPairs(headers), protocol=protocol)


def info(peer="10.1.2.3:5555"):
    return StreamInfo(0.0, "http/1.1", "l", peer)


def key(policies, req, streamInfo=None):
    return requestHash(policies, req, streamInfo or info())


def test_header():
    p = (HashPolicy("header", b"x-user"),)
    assert key(p, request(headers=[("X-User", "alice")])) == hash64(b"alice")
    assert key(p, request(headers=[("x-other", "alice")])) is None
    # a repeated header: all values, in any order, give one key
    a = key(p, request(headers=[("x-user", "b"), ("x-user", "a")]))
    assert a == key(p, request(headers=[("x-user", "a"), ("x-user", "b")])) and a != hash64(b"a")


def test_grpc_metadata_is_headers():
    req = RequestHead(b"POST", b"/pkg.Svc/Call", b"app", HeaderMap.fromPairs([("tenant-id", "t1")]),
                      version=(2, 0), protocol="grpc")
    assert key((HashPolicy("header", b"tenant-id"),), req) == hash64(b"t1")


def test_cookie():
    p = (HashPolicy("cookie", b"session"),)
    assert key(p, request(headers=[("cookie", "a=1; session=xyz; b=2")])) == hash64(b"xyz")
    assert key(p, request(headers=[("cookie", "a=1"), ("cookie", "session=s2")])) == hash64(b"s2")
    assert key(p, request(headers=[("cookie", "sessionx=1; session")])) is None
    assert key(p, request()) is None


def test_source_ip_without_the_port():
    p = (HashPolicy("source_ip"),)
    assert key(p, request(), info("10.9.8.7:1234")) == key(p, request(), info("10.9.8.7:999")) == hash64(b"10.9.8.7")
    assert key(p, request(), info("::1:1234")) == hash64(b"::1")
    assert key(p, request(), info("")) is None
    assert requestHash(p, request(), None) is None


def test_query_parameter():
    p = (HashPolicy("query_parameter", b"user"),)
    assert key(p, request(b"/a?x=1&user=bob&user=eve")) == hash64(b"bob")
    assert key(p, request(b"/a?user")) == hash64(b"")
    assert key(p, request(b"/a?username=bob")) is None
    assert key(p, request(b"/user=bob")) is None
    assert key(p, request(b"/a?user=bob#frag")) == hash64(b"bob")


def load(name):
    with open(os.path.join(FIXTURES, name)) as f:
        return bytes.fromhex(f.read())


ECHO = load("sofa-consumer__sofa-provider/c0-c2s-000-req-echo.hex")


def withAttachments(frame, **extra):
    f = dc.DubboDecoder().feed(frame)[0]
    return dc.encodeRequestWithAttachments(f, f.invocation, dict(f.invocation.attachments, **extra))


def test_dubbo_attachment():
    [frame] = dc.DubboDecoder().feed(withAttachments(ECHO, Tenant="acme"))
    head = dubboRequestHead(frame, frame.invocation)
    p = (HashPolicy("dubbo_attachment", b"tenant"),)
    assert key(p, head) == hash64(b"acme")
    assert key((HashPolicy("dubbo_attachment", b"absent"),), head) is None
    # an HTTP request's header of that name is not an attachment
    assert key(p, request(headers=[("tenant", "acme")])) is None


def test_keys_combine_as_envoy_and_terminal_stops():
    req = request(b"/?q=1", headers=[("x-a", "1"), ("x-b", "2")])

    a, b = hash64(b"1"), hash64(b"2")
    both = (HashPolicy("header", b"x-a"), HashPolicy("header", b"x-b"))
    assert key(both, req) == ((a << 1 | a >> 63) & MASK) ^ b
    # the same rule twice does not cancel out
    twice = (HashPolicy("header", b"x-a"), HashPolicy("header", b"x-a"))
    assert key(twice, req) == ((a << 1 | a >> 63) & MASK) ^ a != 0
    # a terminal rule that found its value ends the list; one that did not lets the next decide
    assert key((HashPolicy("header", b"x-a", terminal=True), HashPolicy("header", b"x-b")), req) == a
    assert key((HashPolicy("header", b"x-none", terminal=True), HashPolicy("header", b"x-b")), req) == b
    assert key((HashPolicy("header", b"x-none"),), req) is None


MESH = """
listeners:
- name: l
  protocol: http
  address: tcp:0
  route_config:
    virtual_hosts:
    - name: all
      domains: ["*"]
      routes:
      - match: {prefix: /hashed}
        route:
          cluster: %(policy)s
          hash_policy:
          - header: {header_name: x-user}
            terminal: true
          - connection_properties: {source_ip: true}
      - match: {prefix: /}
        route: {cluster: %(policy)s}
clusters:
- name: %(policy)s
  lb_policy: %(policy)s
  endpoints: [{address: "10.0.0.1:80"}, {address: "10.0.0.2:80"}, {address: "10.0.0.3:80"}, {address: "10.0.0.4:80"}]
"""
HOSTS = ["10.0.0.%d:80" % i for i in range(1, 5)]


def served(mesh, path, user=None, peer="10.1.2.3"):
    """The host that served one request."""
    before = {a: len(mesh.upstream(a).requests) for a in HOSTS}
    client = mesh.connect((peer, None))
    client.request(path=path, headers=[(b"x-user", user.encode())] if user else ())
    mesh.runTurns()
    assert client.response().status == 200
    [host] = [a for a in HOSTS if len(mesh.upstream(a).requests) > before[a]]
    return host


def test_router_sends_each_key_to_one_host():
    for policy in ("ring_hash", "maglev"):
        mesh = InMemoryMesh(MESH % {"policy": policy})
        for a in HOSTS:
            mesh.upstream(a).respondWith(200, body=b"ok")
        byUser = {}
        for round in range(3):
            for i in range(20):
                host = served(mesh, b"/hashed", "user-%d" % i, peer="10.1.2.%d" % (round + 10))
                assert byUser.setdefault(i, host) == host  # header is terminal: the source ip does not matter
        assert len(set(byUser.values())) >= 3
        # without the header the source address decides
        bySource = {served(mesh, b"/hashed", peer="10.7.7.7") for _ in range(10)}
        assert len(bySource) == 1
        # a route without hash policies: random picks spread over the hosts
        assert len({served(mesh, b"/other", "user-1") for _ in range(40)}) >= 3


DUBBO_MESH = """
listeners:
- name: d
  protocol: dubbo
  address: tcp:0
  route_config:
    virtual_hosts:
    - name: all
      domains: ["*"]
      routes:
      - match: {dubbo: {interface: "org.txmesh.peers.*"}}
        route:
          cluster: provider
          hash_policy: [{dubbo_attachment: {name: tenant}}]
clusters:
- name: provider
  protocol: dubbo
  lb_policy: maglev
  endpoints: [{address: "10.0.0.1:20880"}, {address: "10.0.0.2:20880"}, {address: "10.0.0.3:20880"}]
"""


def test_router_sends_each_dubbo_attachment_value_to_one_host():
    upstreams = {}

    def connect(host, clusterConfig):
        proto = DubboClientProtocol()
        proto.makeConnection(StringTransport())
        upstreams[host.address] = proto
        return defer.succeed(proto)

    mesh = InMemoryMesh(DUBBO_MESH, connect=connect)
    proto = mesh.factory.buildProtocol(None)
    proto.makeConnection(StringTransport())

    ids = iter(range(100, 1000))

    def hostOf(tenant):
        frame = withAttachments(ECHO, tenant=tenant)
        proto.dataReceived(dc.withRequestId(frame, next(ids)) + frame[16:])  # calls in flight need their own ids
        mesh.runTurns()
        got = [a for a, up in upstreams.items() if up.transport.value()]
        for up in upstreams.values():
            up.transport.clear()
        [address] = got
        return address

    byTenant = {t: hostOf(t) for t in ("t%d" % i for i in range(12))}
    assert len(set(byTenant.values())) >= 2
    for t, address in byTenant.items():
        assert hostOf(t) == address
