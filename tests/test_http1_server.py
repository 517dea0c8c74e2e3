"""
The HTTP/1.1 listener with the real filter chain, router, pools and client protocol, in memory
(L{txmesh.testing.InMemoryMesh}): time is a clock the tests advance, the client and the upstreams are
StringTransports.  Each test asserts what a user sees: the status and bytes on the wire, the x-txmesh-error
header, the access log's response flags, the counters.
"""

import pytest
from twisted.internet.task import Clock

from txmesh.protocols.listener import Deadline
from txmesh.testing import InMemoryMesh

MESH = """
listeners:
- name: ingress
  protocol: http
  address: tcp:0
  limits:
    max_request_line: 2048
    max_header_bytes: 4096
    max_headers: 30
    request_headers_timeout: 1s
    idle_timeout: 2s
    max_request_body: 1000
  route_config:
    virtual_hosts:
    - name: app
      domains: ["app.svc"]
      response_headers_to_add: [{name: x-vhost, value: app}]
      routes:
      - match: {prefix: /direct}
        direct_response: {status: 200, body: "direct\\n"}
      - match: {prefix: /old}
        redirect: {path_redirect: /new, response_code: 301}
      - match: {prefix: /v1/}
        route: {cluster: backend, prefix_rewrite: /echo/}
      - match: {prefix: /small}
        route: {cluster: backend, max_request_body: 10}
      - match: {prefix: /slow}
        route: {cluster: backend, timeout: 500ms}
      - match: {prefix: /refused}
        route: {cluster: refused}
      - match: {prefix: /empty}
        route: {cluster: empty}
      - match: {prefix: /tight}
        route: {cluster: tight}
      - match: {prefix: /gone}
        route: {cluster: gone}
      - match: {prefix: /}
        route: {cluster: backend}
        request_headers_to_add: [{name: x-added, value: "yes"}]
        request_headers_to_remove: [x-secret]
clusters:
- name: backend
  endpoints: [{address: "10.0.0.1:80"}]
- name: refused
  connect_timeout: 1s
  endpoints: [{address: "10.0.0.2:80"}]
- name: empty
  endpoints: []
- name: tight
  max_connections: 1
  max_pending_requests: 0
  endpoints: [{address: "10.0.0.3:80"}]
- name: gone
  endpoints: [{address: "10.0.0.4:80"}]
"""

GET = b"GET %s HTTP/1.1\r\nHost: app.svc\r\n\r\n"


@pytest.fixture
def mesh():
    return InMemoryMesh(MESH, missingClusters=("gone",))


def get(path):
    return GET % path


def proxied(mesh, path):
    """A new client that sent GET ``path``, and the backend it goes to: (backend, client)."""
    backend = mesh.upstream("backend")
    client = mesh.connect()
    client.send(get(path))
    return backend, client


# -- proxying -----------------------------------------------------------------------------------------------------

def test_request_is_proxied_with_forwarding_headers_and_mutations(mesh):
    backend = mesh.upstream("backend")
    client = mesh.connect()
    client.send(b"GET /hello?x=1 HTTP/1.1\r\nHost: app.svc\r\nX-Secret: s\r\nConnection: keep-alive, x-hop\r\n"
                b"X-Hop: 1\r\nX-Request-Id: abc-123\r\n\r\n")
    [req] = backend.requests
    h = req.head.headers
    assert req.head.path == b"/hello?x=1" and req.head.authority == b"app.svc"
    assert h.get(b"x-forwarded-for") == b"10.1.2.3" and h.get(b"x-forwarded-proto") == b"http"
    assert h.get(b"x-request-id") == b"abc-123" and h.get(b"x-added") == b"yes"
    assert b"x-secret" not in h and b"x-hop" not in h
    req.respond(200, body=b"hello")
    r = client.response()
    assert (r.status, r.body, r.header("x-vhost")) == (200, b"hello", b"app")
    assert mesh.value("downstream_rq_xx", listener="ingress", code_class="2xx") == 1
    assert mesh.value("cluster_upstream_rq_completed", cluster="backend") == 1
    [line] = mesh.accessLog()
    assert '"GET /hello?x=1 HTTP/1.1" 200 - 0 5 0 "10.1.2.3:' in line and '"10.0.0.1:80" "abc-123"' in line


def test_request_id_is_made_when_absent(mesh):
    backend = mesh.upstream("backend")
    mesh.connect().send(get(b"/"))
    assert len(backend.requests[0].head.headers.get(b"x-request-id")) == 36


def test_prefix_rewrite(mesh):
    backend = mesh.upstream("backend")
    mesh.connect().send(get(b"/v1/thing?q=2"))
    assert backend.requests[0].head.path == b"/echo/thing?q=2"


def test_content_length_and_chunked_bodies_reach_the_upstream(mesh):
    backend = mesh.upstream("backend")
    client = mesh.connect()
    client.send(b"POST /up HTTP/1.1\r\nHost: app.svc\r\nContent-Length: 5\r\n\r\nhello")
    backend.requests[0].respond(200)
    client.send(b"PUT /up HTTP/1.1\r\nHost: app.svc\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
    client.send(b"2\r\nde\r\n0\r\n\r\n")
    first, second = backend.requests
    assert (first.body, first.complete) == (b"hello", True)
    assert (second.body, second.complete) == (b"abcde", True)
    assert len(backend.connections) == 1  # the keep-alive connection was reused


def test_chunked_response_and_trailers_are_relayed(mesh):
    backend, client = proxied(mesh, b"/chunked")
    backend.requests[0].respondRaw(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                                   + b"3e8\r\n" + b"y" * 1000 + b"\r\n" + b"0\r\nx-checksum: abc\r\n\r\n")
    r = client.response()
    assert r.status == 200 and r.body == b"y" * 1000 and r.trailers.get(b"x-checksum") == b"abc"


def test_head_and_http10(mesh):
    backend = mesh.upstream("backend")
    client = mesh.connect()
    client.request(b"HEAD", b"/bytes/1234", host=b"app.svc")
    backend.requests[0].respondRaw(b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n")
    r = client.response()
    assert r.status == 200 and r.body == b"" and client.received().endswith(b"content-length: 1234\r\n\r\n")
    old = mesh.connect()
    old.send(b"GET /bytes/10 HTTP/1.0\r\nHost: app.svc\r\n\r\n")
    backend.requests[1].respond(200, body=b"x" * 10)
    assert old.received().startswith(b"HTTP/1.1 200 ") and old.received().endswith(b"x" * 10)
    assert old.closed  # an HTTP/1.0 client without keep-alive


def test_pipelined_requests_are_answered_in_order_one_at_a_time(mesh):
    backend = mesh.upstream("backend")
    client = mesh.connect()
    client.send(b"".join(get(b"/p%d" % i) for i in range(3))
                + b"GET /direct HTTP/1.1\r\nHost: app.svc\r\nConnection: close\r\n\r\n")
    # one at a time: the second request goes upstream only after the first was answered
    assert [r.head.path for r in backend.requests] == [b"/p0"]
    backend.requests[0].respond(200, body=b"/p0")
    assert [r.head.path for r in backend.requests] == [b"/p0", b"/p1"]
    backend.requests[1].respond(200, body=b"/p1")
    backend.requests[2].respond(200, body=b"/p2")
    got = client.responses()
    assert [r.body for r in got] == [b"/p0", b"/p1", b"/p2", b"direct\n"]
    assert client.closed and len(backend.connections) == 1
    assert mesh.value("downstream_rq", listener="ingress") == 4


def test_expect_100_continue_is_answered_before_the_body(mesh):
    backend = mesh.upstream("backend")
    client = mesh.connect()
    client.send(b"POST /up HTTP/1.1\r\nHost: app.svc\r\nExpect: 100-continue\r\nContent-Length: 500\r\n\r\n")
    assert client.received() == b"HTTP/1.1 100 Continue\r\n\r\n"
    [req] = backend.requests
    assert b"expect" not in req.head.headers  # the proxy answered it; the upstream does not see it
    client.send(b"x" * 500)
    assert req.body == b"x" * 500 and req.complete
    req.respond(200, body=b"500")
    assert client.response().body == b"500"


# -- timeouts -------------------------------------------------------------------------------------------------------

def test_slow_request_head_gets_408_and_close(mesh):
    client = mesh.connect()
    client.send(b"GET / HTTP/1.1\r\nHost: app")
    mesh.advance(0.9)
    assert client.received() == b"" and not client.closed
    mesh.advance(0.2)
    r = client.response()
    assert r.status == 408 and r.header("x-txmesh-error") == b"downstream_protocol_error"
    assert client.received().startswith(b"HTTP/1.1 408 ") and client.closed
    assert mesh.value("downstream_rq_header_timeout", listener="ingress") == 1
    assert mesh.value("downstream_rq_xx", code_class="4xx") == 1
    assert mesh.value("downstream_cx_active") == 0


def test_idle_keepalive_connection_is_closed_after_idle_timeout(mesh):
    client = mesh.connect()
    client.send(get(b"/direct"))
    assert client.response().status == 200
    wire = client.received()
    mesh.advance(1.9)
    assert not client.closed
    mesh.advance(0.2)
    assert client.closed and not client.aborted and client.received() == wire  # closed without a word
    assert mesh.value("downstream_cx_idle_timeout", listener="ingress") == 1
    assert mesh.value("downstream_cx_active") == 0


def test_a_request_in_flight_is_not_cut_by_the_idle_or_head_timeouts(mesh):
    backend, client = proxied(mesh, b"/long")
    mesh.advance(10)  # past both; the route's default timeout is 15s
    backend.requests[0].respond(200, body=b"late but fine")
    assert client.response().body == b"late but fine" and not client.closed


def test_route_timeout_is_504_and_the_late_answer_is_dropped(mesh):
    backend, client = proxied(mesh, b"/slow/3000")
    [req] = backend.requests
    mesh.advance(0.49)
    assert client.received() == b""
    mesh.advance(0.02)
    r = client.response()
    assert r.status == 504 and r.header("x-txmesh-error") == b"upstream_request_timeout"
    assert r.body == b"upstream_request_timeout\n"
    assert mesh.responseFlags() == [{"UT"}]
    assert mesh.value("cluster_upstream_rq_timeout", cluster="backend") == 1
    assert mesh.value("downstream_rq_error", cause="upstream_request_timeout") == 1
    assert req.connection.closed  # the upstream connection was given up, not reused
    assert not client.closed  # the downstream connection stays usable
    # an answer within the timeout is relayed
    client.send(get(b"/slow/10"))
    mesh.advance(0.4)
    backend.requests[1].respond(200, body=b"slow done\n")
    assert client.responses()[1].body == b"slow done\n"
    assert len(backend.connections) == 2


def test_connect_timeout_is_503(mesh):
    refused = mesh.upstream("refused")
    refused.holdConnections()
    client = mesh.connect()
    client.send(get(b"/refused"))
    mesh.advance(1.01)
    r = client.response()
    assert r.status == 503 and r.header("x-txmesh-error") == b"upstream_connect_timeout"
    assert mesh.responseFlags() == [{"UF"}]
    assert mesh.value("upstream_cx_connect_timeout", cluster="refused") == 1


# -- local replies --------------------------------------------------------------------------------------------------

def test_no_route_is_404_nr(mesh):
    client = mesh.connect()
    client.send(b"GET / HTTP/1.1\r\nHost: unknown.example\r\n\r\n")
    r = client.response()
    assert (r.status, r.header("x-txmesh-error"), r.body) == (404, b"no_route", b"no_route\n")
    assert mesh.responseFlags() == [{"NR"}]
    assert mesh.value("downstream_rq_error", listener="ingress", cause="no_route") == 1
    assert " 404 NR " in mesh.accessLog()[0]
    assert not client.closed


def test_route_to_a_cluster_not_running_is_503_nc(mesh):
    client = mesh.connect()
    client.send(get(b"/gone"))
    r = client.response()
    assert (r.status, r.header("x-txmesh-error")) == (503, b"no_cluster")
    assert mesh.responseFlags() == [{"NC"}]


def test_no_healthy_host_is_503_uh(mesh):
    client = mesh.connect()
    client.send(get(b"/empty"))
    r = client.response()
    assert (r.status, r.header("x-txmesh-error")) == (503, b"no_healthy_upstream")
    assert mesh.responseFlags() == [{"UH"}]
    assert mesh.value("upstream_cx_none_healthy", cluster="empty") == 1


def test_connect_refused_is_503_uf(mesh):
    mesh.upstream("refused").refuseConnections()
    client = mesh.connect()
    client.send(get(b"/refused"))
    r = client.response()
    assert (r.status, r.header("x-txmesh-error")) == (503, b"upstream_connect_failure")
    assert mesh.responseFlags() == [{"UF"}]
    assert mesh.value("upstream_cx_connect_fail", cluster="refused") == 1
    assert " 503 UF " in mesh.accessLog()[0]


def test_pending_overflow_is_503_uo(mesh):
    tight = mesh.upstream("tight")
    first, second = mesh.connect(), mesh.connect()
    first.send(get(b"/tight/1"))
    second.send(get(b"/tight/2"))
    r = second.response()
    assert (r.status, r.header("x-txmesh-error")) == (503, b"upstream_overflow")
    assert mesh.responseFlags() == [set(), {"UO"}]
    assert mesh.value("upstream_rq_pending_overflow", cluster="tight") == 1
    tight.requests[0].respond(200)
    assert first.response().status == 200


def test_upstream_reset_before_response_is_503_uc(mesh):
    backend, client = proxied(mesh, b"/raw/reset")
    backend.requests[0].reset()
    r = client.response()
    assert (r.status, r.header("x-txmesh-error")) == (503, b"upstream_reset_before_response")
    assert mesh.responseFlags() == [{"UC"}]
    assert not client.closed


@pytest.mark.parametrize("raw", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"SSH-2.0-OpenSSH_9.2\r\n\r\n",
], ids=["bad-framing", "garbage"])
def test_bad_upstream_framing_is_502_upe(mesh, raw):
    backend, client = proxied(mesh, b"/raw")
    backend.requests[0].respondRaw(raw)
    r = client.response()
    assert (r.status, r.header("x-txmesh-error")) == (502, b"upstream_protocol_error")
    assert mesh.responseFlags() == [{"UPE"}]
    assert backend.connections[0].closed


def test_upstream_closing_inside_the_body_resets_the_downstream(mesh):
    backend, client = proxied(mesh, b"/raw/truncated")
    backend.requests[0].respondRaw(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
    backend.requests[0].reset()
    assert client.aborted
    [r] = client.responses()
    assert r.status == 200 and not r.complete and r.body == b"0123456789"


def test_body_over_the_route_limit_is_413_by_content_length_and_by_chunks(mesh):
    backend = mesh.upstream("backend")
    client = mesh.connect()
    client.send(b"POST /small HTTP/1.1\r\nHost: app.svc\r\nContent-Length: 11\r\n\r\n")
    r = client.response()
    assert (r.status, r.header("x-txmesh-error")) == (413, b"request_body_too_large")
    assert client.closed  # the body was not read: the connection cannot carry another request
    assert backend.requests == []
    chunked = mesh.connect()
    chunked.send(b"POST /small HTTP/1.1\r\nHost: app.svc\r\nTransfer-Encoding: chunked\r\n\r\n"
                 b"5\r\nhello\r\n5\r\nworld\r\n5\r\nagain\r\n0\r\n\r\n")
    assert chunked.received().startswith(b"HTTP/1.1 413 ")
    assert mesh.value("downstream_rq_error", cause="request_body_too_large") == 2


def test_body_over_the_listener_limit_is_413(mesh):
    client = mesh.connect()
    client.send(b"POST /up HTTP/1.1\r\nHost: app.svc\r\nContent-Length: 1001\r\n\r\n")
    assert client.response().status == 413


def test_direct_response_and_redirect(mesh):
    client = mesh.connect()
    client.send(get(b"/direct"))
    client.send(get(b"/old/x"))
    direct, redirect = client.responses()
    assert (direct.status, direct.body) == (200, b"direct\n")
    assert redirect.status == 301 and redirect.header("location").endswith(b"/new")
    assert mesh.upstream("backend").requests == []


SMUGGLING = [
    (b"POST / HTTP/1.1\r\nHost: app.svc\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: app.svc\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello", 400),
    (b"POST / HTTP/1.1\r\nHost: app.svc\r\nContent-Length: +5\r\n\r\nhello", 400),
    (b"POST / HTTP/1.1\r\nHost: app.svc\r\nContent-Length: 5, 5\r\n\r\nhello", 400),
    (b"POST / HTTP/1.1\r\nHost: app.svc\r\nContent-Length: \r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: app.svc\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: app.svc\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: app.svc\r\nX-Folded: a\r\n b\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: app.svc\nX-A: b\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: app.svc\r\nX-A: b\x00c\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: app.svc\r\n: empty\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: app.svc\r\nX-A : b\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nX-A: b\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: app.svc\r\nHost: other\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: app.svc\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffffff\r\n", 400),
    (b"GET /" + b"a" * 3000 + b" HTTP/1.1\r\nHost: app.svc\r\n\r\n", 414),
    (b"GET / HTTP/1.1\r\nHost: app.svc\r\nX-Big: " + b"b" * 5000 + b"\r\n\r\n", 431),
    (b"GET / HTTP/1.1\r\nHost: app.svc\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(40)) + b"\r\n", 431),
]


@pytest.mark.parametrize("data,status", SMUGGLING, ids=range(len(SMUGGLING)))
def test_defences_answer_once_and_close(mesh, data, status):
    client = mesh.connect()
    client.send(data)
    assert client.received().startswith(b"HTTP/1.1 %d " % status), client.received()[:200]
    assert client.received().count(b"HTTP/1.1 ") == 1 and client.closed
    assert client.response().header("x-txmesh-error") == b"downstream_protocol_error"
    assert mesh.value("downstream_cx_protocol_error", listener="ingress") == 1


# -- drain, disconnects, backpressure --------------------------------------------------------------------------------

def test_graceful_drain_closes_idle_at_once_and_busy_after_its_response(mesh):
    backend = mesh.upstream("backend")
    idle, busy = mesh.connect(), mesh.connect()
    idle.send(get(b"/direct"))
    busy.send(get(b"/slow/1000"))
    drained = []
    mesh.drain().addCallback(drained.append)
    assert idle.closed and not busy.closed and drained == []
    mesh.advance(0.3)
    backend.requests[0].respond(200, body=b"slow done\n")
    r = busy.response()
    assert (r.status, r.body, r.keepAlive) == (200, b"slow done\n", False)  # says Connection: close
    assert busy.closed and not busy.aborted
    assert drained == [None]
    assert mesh.value("downstream_cx_active") == 0


def _graceMesh(grace):
    """The listener with a drain grace shorter than its timer period (request headers 5 s, idle 10 s)."""
    return InMemoryMesh(MESH.replace("request_headers_timeout: 1s", "request_headers_timeout: 5s\n    drain_grace: %s"
                                     % (grace,)).replace("idle_timeout: 2s", "idle_timeout: 10s"),
                        missingClusters=("gone",))


def test_a_drain_gives_a_connection_that_sent_nothing_yet_the_grace_to_send_its_request():
    """
    A request racing the drain (accepted, its bytes not read yet when the drain begins) is served, with
    ``Connection: close``, not reset; a connection that sends nothing within ``drain_grace`` closes quietly (no 408)
    at the grace, not at the timer's period.
    """
    mesh = _graceMesh("200ms")
    late, silent, started = mesh.connect(), mesh.connect(), mesh.connect()
    started.send(b"GET /direct HTTP/1.1\r\nHo")  # a head begun before the drain
    drained = []
    mesh.drain().addCallback(drained.append)
    assert not late.closed and not silent.closed and not started.closed
    mesh.advance(0.1)
    late.send(get(b"/direct"))
    r = late.response()
    assert (r.status, r.body, r.keepAlive) == (200, b"direct\n", False) and late.closed
    mesh.advance(0.15)
    assert silent.closed and not silent.aborted and silent.received() == b""
    assert not started.closed  # its head goes on, bounded by the request-headers timeout
    started.send(b"st: app.svc\r\n\r\n")
    r = started.response()
    assert (r.status, r.keepAlive) == (200, False) and started.closed
    assert drained == [None]
    assert mesh.value("downstream_rq_timeout", listener="ingress") == 0


def test_without_a_drain_grace_a_connection_that_sent_nothing_closes_at_once():
    mesh = _graceMesh("0s")
    fresh, started = mesh.connect(), mesh.connect()
    started.send(b"GET /direct HTTP/1.1\r\n")
    mesh.drain()
    assert fresh.closed and not started.closed
    started.send(b"Host: app.svc\r\n\r\n")
    assert started.response().status == 200 and started.closed


def test_a_head_begun_at_the_drain_still_times_out_as_any_head():
    mesh = _graceMesh("200ms")
    started = mesh.connect()
    started.send(b"GET /direct HTTP/1.1\r\n")
    drained = []
    mesh.drain().addCallback(drained.append)
    mesh.advance(4.9)
    assert not started.closed
    mesh.advance(0.2)
    assert started.response().status == 408 and started.closed and drained == [None]


def test_downstream_disconnect_abandons_the_upstream_exchange(mesh):
    backend, client = proxied(mesh, b"/long")
    client.disconnect()
    assert backend.connections[0].closed  # not reusable: its response would be out of step
    assert mesh.value("downstream_rq_active") == 0 and mesh.value("downstream_cx_active") == 0


def test_full_downstream_pauses_the_upstream_and_a_drained_one_resumes_it(mesh):
    backend, client = proxied(mesh, b"/big")
    up = backend.connections[0].transport
    client.fillWriteBuffer()
    assert up.producerState == "paused"
    client.drainWriteBuffer()
    assert up.producerState == "producing"


def test_full_upstream_pauses_reading_the_downstream(mesh):
    backend = mesh.upstream("backend")
    client = mesh.connect()
    client.send(b"POST /up HTTP/1.1\r\nHost: app.svc\r\nContent-Length: 100\r\n\r\n")
    up = backend.connections[0].transport
    up.producer.pauseProducing()
    assert client.readingPaused
    up.producer.resumeProducing()
    assert not client.readingPaused


def test_a_pipelined_exchange_started_while_the_downstream_is_full_reads_its_upstream_paused(mesh):
    backend = mesh.upstream("backend")
    client = mesh.connect()
    client.send(get(b"/a") + get(b"/b"))
    client.fillWriteBuffer()
    up = backend.connections[0].transport
    assert up.producerState == "paused"
    backend.requests[0].respond(200, body=b"a")  # /b starts on the same connection; the client still reads nothing
    assert [r.head.path for r in backend.requests] == [b"/a", b"/b"]
    assert up.producerState == "paused"


def test_a_long_pipeline_pauses_reading_and_resumes_as_it_is_served(mesh):
    backend = mesh.upstream("backend")
    client = mesh.connect()
    client.send(get(b"/x") * 100)
    assert client.readingPaused  # past the queue bound the listener stops reading
    for i in range(100):
        backend.requests[i].respond(200, body=b"%d" % i)
    assert not client.readingPaused
    assert [r.body for r in client.responses()] == [b"%d" % i for i in range(100)]
    assert len(backend.connections) == 1


def test_the_route_timeout_bounds_the_whole_response_not_only_its_head(mesh):
    # Envoy's model (docs/configuration.md, route timeout): the head came in time, the body did not; the response
    # has started, so the downstream connection is reset and the stream is flagged UT
    backend, client = proxied(mesh, b"/slow/body")
    mesh.advance(0.1)
    [req] = backend.requests
    req.respondRaw(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n01234")  # the head within the 500ms
    mesh.advance(0.5)
    req.respondRaw(b"56789")
    assert client.aborted
    r = client.response()
    assert (r.status, r.body, r.complete) == (200, b"01234", False)
    assert mesh.responseFlags() == [{"UT"}]
    assert mesh.value("cluster_upstream_rq_timeout", cluster="backend") == 1


def test_the_route_timeout_counts_from_the_end_of_the_request(mesh):
    # a request body that takes longer than the route timeout to arrive is not cut by it (Envoy's model)
    backend = mesh.upstream("backend")
    client = mesh.connect()
    client.send(b"POST /slow/body HTTP/1.1\r\nHost: app.svc\r\nContent-Length: 4\r\n\r\nab")
    mesh.advance(0.9)  # past the 500ms route timeout, the request not yet whole
    client.send(b"cd")
    mesh.advance(0.4)
    [req] = backend.requests
    req.respond(200, body=b"ok")
    r = client.response()
    assert (r.status, r.body) == (200, b"ok") and not client.aborted


# -- strict on the wire: edges, tunnels ---------------------------------------------------------------------------

def assertNoUpstreamWork(mesh, backend):
    """No request went to the backend's pool, and no connection to it was opened."""
    assert backend.connections == [] and backend.requests == []
    assert mesh.value("upstream_rq_total", cluster="backend") == 0
    assert mesh.value("upstream_cx_total", cluster="backend") == 0


def test_transfer_encoding_after_a_tab_is_chunked_end_to_end(mesh):
    backend = mesh.upstream("backend")
    client = mesh.connect()
    client.send(b"POST /up HTTP/1.1\r\nHost:\tapp.svc\t\r\nTransfer-Encoding:\tchunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
    [req] = backend.requests
    assert (req.head.authority, req.body, req.complete) == (b"app.svc", b"abc", True)
    req.respond(200, body=b"ok")
    assert client.response().status == 200 and not client.closed


@pytest.mark.parametrize("data", [
    b"GET / HTTP/1.1\r\nHost: app.svc evil\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: app.svc/x\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: app.svc:8o\r\n\r\n",
    b"GET http://app.svc:x/ HTTP/1.1\r\nHost: app.svc\r\n\r\n",
    b"GET http://u@app.svc/ HTTP/1.1\r\nHost: app.svc\r\n\r\n",
    b"GET /a#b HTTP/1.1\r\nHost: app.svc\r\n\r\n",
    b"GET * HTTP/1.1\r\nHost: app.svc\r\n\r\n",
    b"CONNECT /x HTTP/1.1\r\nHost: app.svc\r\n\r\n",
    b"CONNECT app.svc HTTP/1.1\r\nHost: app.svc\r\n\r\n",
], ids=["host_space", "host_slash", "host_port", "absolute_port", "absolute_userinfo", "fragment", "asterisk_get",
        "connect_origin_form", "connect_no_port"])
def test_bad_host_or_target_is_400_before_any_upstream(mesh, data):
    backend = mesh.upstream("backend")
    client = mesh.connect()
    client.send(data)
    r = client.response()
    assert (r.status, r.header("x-txmesh-error")) == (400, b"downstream_protocol_error") and client.closed
    assertNoUpstreamWork(mesh, backend)


def test_connect_is_501_and_never_reaches_an_upstream(mesh):
    """No listener tunnels yet: CONNECT is refused before routing; no pool is asked, no connection opened."""
    backend = mesh.upstream("backend")
    client = mesh.connect()
    client.send(b"CONNECT app.svc:443 HTTP/1.1\r\nHost: app.svc:443\r\n\r\n\x16\x03\x01early tls bytes")
    r = client.response()
    assert (r.status, r.header("x-txmesh-error")) == (501, b"connect_not_supported")
    assert client.closed and client.received().count(b"HTTP/1.1 ") == 1
    assertNoUpstreamWork(mesh, backend)
    assert mesh.value("downstream_rq_error", listener="ingress", cause="connect_not_supported") == 1


def test_websocket_upgrade_is_forwarded_as_a_plain_request(mesh):
    """
    No tunnel support yet: an Upgrade offer is ignored (RFC 9110 7.8 lets a server ignore it), so the upstream gets
    a plain GET without Upgrade or Connection, its answer goes back as HTTP and the connection stays HTTP.
    """
    backend = mesh.upstream("backend")
    client = mesh.connect()
    client.send(b"GET /ws HTTP/1.1\r\nHost: app.svc\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    [req] = backend.requests
    assert b"upgrade" not in req.head.headers and b"connection" not in req.head.headers
    assert b"upgrade" not in req.connection.transport.value().lower()
    req.respond(426, headers=[(b"Upgrade", b"websocket")], body=b"upgrade required")
    r = client.response()
    assert (r.status, r.body) == (426, b"upgrade required") and not client.closed
    client.send(get(b"/next"))
    assert [q.head.path for q in backend.requests] == [b"/ws", b"/next"]


def test_a_101_from_the_upstream_is_never_relayed(mesh):
    """The proxy offered no upgrade upstream: a 101 there is bad framing (502), not a tunnel to the client."""
    backend = mesh.upstream("backend")
    client = mesh.connect()
    client.send(b"GET /ws HTTP/1.1\r\nHost: app.svc\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
    [req] = backend.requests
    req.respondRaw(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\x81\x00")
    r = client.response()
    assert (r.status, r.header("x-txmesh-error")) == (502, b"upstream_protocol_error")
    assert b" 101 " not in client.received() and b"\x81\x00" not in client.received()


def test_a_stalled_upload_is_ended_by_the_stream_idle_timeout_not_the_route_timeout(mesh):
    """The route timeout starts once the request is whole; a body that stops arriving is stream_idle_timeout's."""
    backend = mesh.upstream("backend")
    client = mesh.connect()
    client.send(b"POST /slow/up HTTP/1.1\r\nHost: app.svc\r\nContent-Length: 10\r\n\r\nab")
    mesh.advance(299.9)  # far past the 500ms route timeout; the default stream_idle_timeout is 5 minutes
    assert client.received() == b"" and backend.requests[0].body == b"ab"
    mesh.advance(0.2)
    r = client.response()
    assert (r.status, r.header("x-txmesh-error")) == (408, b"stream_idle_timeout") and client.closed


def test_a_deadline_set_soon_fires_before_its_period():
    """Deadline.setSoon moves the timer nearer; set() alone would sleep out the period (the hot path's contract)."""
    for soon, expected in ((True, [("grace", 0.2)]), (False, [("grace", 5.0)])):
        clock, fired = Clock(), []
        d = Deadline(clock, 5.0, lambda kind: fired.append((kind, clock.seconds())))
        d.set(5.0, "first")
        (d.setSoon if soon else d.set)(0.2, "grace")
        clock.advance(0.2)
        clock.advance(4.8)
        assert fired == expected and not clock.getDelayedCalls()
