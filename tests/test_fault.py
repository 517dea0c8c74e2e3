"""
The ``fault`` filter (txmesh.filters.fault) through the listeners in memory: HTTP/1.1 (InMemoryMesh), Dubbo (the
Dubbo listener with captured frames) and gRPC's local-reply fields; time is a Clock, randomness seeded.
"""

import h2.config
import h2.connection
import h2.events
import pytest
from twisted.internet import defer
from twisted.internet.testing import StringTransport
from zope.interface.verify import verifyObject

from txmesh.config import loads
from txmesh.config_reader import parseFraction
from txmesh.errors import ConfigError
from txmesh.filters.fault import FaultFactory, FaultFilter
from txmesh.interfaces import IFilterFactory, IStreamDecoderFilter
from txmesh.protocols.dubbo import codec as dc
from txmesh.protocols.dubbo.client import DubboClientProtocol
from txmesh.protocols.dubbo.replies import dubboStatusFor
from txmesh.protocols.h2 import grpc
from txmesh.testing import InMemoryMesh, buildConfigError

from tests.test_dubbo_listener import ECHO, ECHO_RESP, answer, frames, sent

HTTP = """
listeners:
- name: ingress
  protocol: http
  address: tcp:0
  filters:
  - name: fault
    config:
%(fault)s
  route_config:
    virtual_hosts:
    - name: app
      domains: ["*"]
      routes:
      - name: other
        match: {prefix: /other}
        route: {cluster: other}
      - name: main
        match: {prefix: /}
        route: {cluster: backend}
clusters:
- name: backend
  endpoints: [{address: "10.0.0.1:80"}]
- name: other
  endpoints: [{address: "10.0.0.2:80"}]
"""


def httpMesh(fault, seed=0):
    text = HTTP % {"fault": "\n".join("      " + line for line in fault.strip().splitlines())}
    return InMemoryMesh(text, seed=seed)


def get(client, path=b"/", headers=()):
    client.send(b"GET %s HTTP/1.1\r\nHost: app\r\n%s\r\n" % (path, b"".join(b"%s: %s\r\n" % h for h in headers)))


def test_interfaces():
    verifyObject(IFilterFactory, FaultFactory())
    config = FaultFactory().buildConfig({"abort": {"http_status": 503, "percentage": 100}}, None)
    verifyObject(IStreamDecoderFilter, FaultFilter(config, None))


def test_abort_answers_with_the_configured_status_and_flag():
    mesh = httpMesh("abort: {http_status: 418, percentage: 100}")
    backend = mesh.upstream("backend")
    client = mesh.connect()
    get(client)
    r = client.response()
    assert (r.status, r.body, r.header("x-txmesh-error")) == (418, b"fault filter abort", b"fault_abort")
    assert backend.requests == [] and backend.connections == []
    assert mesh.responseFlags() == [{"FI"}]
    assert mesh.value("fault_aborts_injected", listener="ingress") == 1
    assert mesh.value("fault_active_faults", listener="ingress") == 0


def test_delay_holds_the_request_on_the_clock_then_passes_it_on():
    mesh = httpMesh("delay: {fixed_delay: 2s, percentage: {numerator: 100}}")
    backend = mesh.upstream("backend")
    client = mesh.connect()
    get(client)
    assert backend.requests == []
    assert mesh.value("fault_active_faults", listener="ingress") == 1
    mesh.advance(1.9)
    assert backend.requests == []
    mesh.advance(0.1)
    [req] = backend.requests
    req.respond(200, body=b"late")
    assert client.response().body == b"late"
    assert mesh.responseFlags() == [{"DI"}]
    assert mesh.value("fault_delays_injected", listener="ingress") == 1
    assert mesh.value("fault_active_faults", listener="ingress") == 0


def test_delay_then_abort():
    mesh = httpMesh("delay: {fixed_delay: 1s, percentage: 100}\nabort: {http_status: 503, percentage: 100}")
    client = mesh.connect()
    get(client)
    assert client.received() == b""
    mesh.advance(1)
    assert client.response().status == 503
    assert mesh.responseFlags() == [{"DI", "FI"}]


def test_downstream_reset_during_a_delay_cancels_it():
    mesh = httpMesh("delay: {fixed_delay: 5s, percentage: 100}")
    backend = mesh.upstream("backend")
    client = mesh.connect()
    get(client)
    client.disconnect()
    assert mesh.value("fault_active_faults", listener="ingress") == 0
    assert [c for c in mesh.clock.getDelayedCalls() if c.getTime() == 5] == []  # the delay's timer is gone
    mesh.advance(10)
    assert backend.requests == []


@pytest.mark.parametrize("percentage,expected", [(0, 0), (25, 250), ({"numerator": 2500, "denominator":
                                                                     "TEN_THOUSAND"}, 250), (100, 1000)])
def test_percentage_is_sampled(percentage, expected):
    mesh = httpMesh("abort: {http_status: 503, percentage: %s}" % (percentage,), seed=7)
    mesh.upstream("backend").respondWith(200)
    statuses = []
    for _ in range(1000):
        client = mesh.connect()
        get(client)
        statuses.append(client.response().status)
    aborted = statuses.count(503)
    assert abs(aborted - expected) <= 40  # seeded: the same every run; 25% of 1000 within a few sigma
    assert mesh.value("fault_aborts_injected", listener="ingress") == aborted


def test_routes_headers_and_upstream_cluster_limit_the_fault():
    mesh = httpMesh("abort: {http_status: 503, percentage: 100}\nroutes: [main]\n"
                    "headers: [{name: x-canary, exact: 'yes'}]")
    mesh.upstream("backend").respondWith(200)
    mesh.upstream("other").respondWith(200)
    results = []
    for path, headers in ((b"/", ()), (b"/", ((b"x-canary", b"yes"),)), (b"/other", ((b"x-canary", b"yes"),))):
        client = mesh.connect()
        get(client, path, headers)
        results.append(client.response().status)
    assert results == [200, 503, 200]
    mesh = httpMesh("abort: {http_status: 503, percentage: 100}\nupstream_cluster: other")
    mesh.upstream("backend").respondWith(200)
    results = []
    for path in (b"/", b"/other"):
        client = mesh.connect()
        get(client, path)
        results.append(client.response().status)
    assert results == [200, 503]


def test_downstream_nodes():
    mesh = httpMesh("abort: {http_status: 503, percentage: 100}\ndownstream_nodes: [canary]")
    mesh.upstream("backend").respondWith(200)
    results = []
    for node in (None, b"canary", b"prod"):
        client = mesh.connect()
        get(client, headers=((b"x-txmesh-downstream-service-node", node),) if node else ())
        results.append(client.response().status)
    assert results == [200, 503, 200]


def test_fault_headers_are_ignored_unless_the_config_enables_them():
    mesh = httpMesh("delay: {fixed_delay: 0s, percentage: 0}\nabort: {http_status: 503, percentage: 0}")
    mesh.upstream("backend").respondWith(200)
    client = mesh.connect()
    get(client, headers=((b"x-txmesh-fault-abort-request", b"500"), (b"x-txmesh-fault-delay-request", b"100"),
                         (b"x-txmesh-fault-abort-request-percentage", b"100")))
    assert client.response().status == 200
    assert mesh.value("fault_aborts_injected", listener="ingress") == 0


def test_header_control_when_enabled():
    mesh = httpMesh("delay: {header_delay: {}, percentage: 100}\nabort: {header_abort: {}, percentage: 50}")
    backend = mesh.upstream("backend")
    backend.respondWith(200)
    client = mesh.connect()
    get(client)  # no fault headers: no fault
    assert client.response().status == 200
    client = mesh.connect()
    get(client, headers=((b"x-txmesh-fault-delay-request", b"300"),))
    mesh.advance(0.299)
    assert client.received() == b""
    mesh.advance(0.001)
    assert client.response().status == 200
    # the percentage header asks for more than the configured 50%: bounded by it
    statuses = []
    for _ in range(200):
        client = mesh.connect()
        get(client, headers=((b"x-txmesh-fault-abort-request", b"429"),
                             (b"x-txmesh-fault-abort-request-percentage", b"100")))
        statuses.append(client.response().status)
    assert set(statuses) == {200, 429} and 70 <= statuses.count(429) <= 130
    client = mesh.connect()
    get(client, headers=((b"x-txmesh-fault-abort-request", b"429"),
                         (b"x-txmesh-fault-abort-request-percentage", b"0")))
    assert client.response().status == 200


def test_max_active_faults_bounds_injection_and_counts_overflow():
    mesh = httpMesh("delay: {fixed_delay: 10s, percentage: 100}\nmax_active_faults: 2")
    backend = mesh.upstream("backend")
    clients = [mesh.connect() for _ in range(3)]
    for c in clients:
        get(c)
    assert len(backend.requests) == 1  # the third went on undelayed
    assert mesh.value("fault_active_faults", listener="ingress") == 2
    assert mesh.value("fault_faults_overflow", listener="ingress") == 1
    mesh.advance(10)
    assert len(backend.requests) == 3


@pytest.mark.parametrize("raw,path,reason", [
    ({}, "", "needs delay, abort or both"),
    ({"abort": {"http_status": 503}}, "abort", "percentage"),
    ({"abort": {"http_status": 99, "percentage": 1}}, "abort.http_status", "between 200 and 599"),
    ({"abort": {"grpc_status": 17, "percentage": 1}}, "abort.grpc_status", "between 0 and 16"),
    ({"abort": {"dubbo_status": 20, "percentage": 1}}, "abort.dubbo_status", "other than OK"),
    ({"abort": {"percentage": 1}}, "abort", "needs http_status"),
    ({"abort": {"header_abort": {}, "http_status": 503, "percentage": 1}}, "abort", "header_abort"),
    ({"abort": {"http_status": 503, "percentage": 101}}, "abort.percentage", "between 0 and 100"),
    ({"abort": {"http_status": 503, "percentage": {"numerator": 1, "denominator": "THOUSAND"}}},
     "abort.percentage", "denominator"),
    ({"delay": {"percentage": 1}}, "delay", "exactly one of fixed_delay, header_delay"),
    ({"delay": {"fixed_delay": "soon", "percentage": 1}}, "delay.fixed_delay", "invalid duration"),
    ({"delay": {"fixed_delay": 1, "percentage": 1, "jitter": 1}}, "delay.jitter", "unknown key"),
    ({"abort": {"http_status": 503, "percentage": 1}, "max_active_faults": -1}, "max_active_faults", ">= 0"),
    ({"abort": {"http_status": 503, "percentage": 1}, "headers": [{"name": "x", "exact": "a", "prefix": "b"}]},
     "headers[0]", "exactly one"),
    ({"abort": {"http_status": 503, "percentage": 1}, "routes": "main"}, "routes", "list of names"),
])
def test_config_errors(raw, path, reason):
    e = buildConfigError(FaultFactory(), raw)
    assert e.path == path and reason in e.reason


def test_config_error_names_file_line_and_key():
    text = HTTP % {"fault": "      abort: {http_status: 503, percentage: 100}\n      upstream_cluster: nope"}
    with pytest.raises(ConfigError) as e:
        loads(text, "mesh.yaml")
    assert str(e.value).startswith("mesh.yaml:")
    assert "listeners[0].filters[0].config.upstream_cluster: unknown cluster 'nope'" in str(e.value)


# -- gRPC and Dubbo: the configured status is what the client sees --------------------------------------------------

def test_grpc_local_reply_takes_the_status_a_filter_names():
    code, rest = grpc.localReplyCode([(b"grpc-status", b"8"), (b"x-other", b"1")])
    assert (code, rest) == (8, [(b"x-other", b"1")])
    fields = dict(grpc.localReplyFields(503, b"fault filter abort", "fault_abort", "n1", code))
    assert fields[b"grpc-status"] == b"8" and fields[b"x-txmesh-error"] == b"fault_abort"
    # without one: the HTTP status's mapping
    assert dict(grpc.localReplyFields(503, b"", "fault_abort"))[b"grpc-status"] == b"14"


def test_dubbo_status_named_by_a_filter():
    assert dubboStatusFor(503, "fault_abort", [(dc.LOCAL_REPLY_STATUS, b"70")]) == dc.SERVICE_ERROR
    assert dubboStatusFor(503, "fault_abort") == dc.SERVICE_NOT_FOUND


DUBBO = """
listeners:
- name: dubbo_in
  protocol: dubbo
  address: tcp:0
  filters:
  - name: fault
    config:
      abort: {%s, percentage: 100}
  route_config:
    virtual_hosts:
    - name: all
      domains: ["*"]
      routes:
      - match: {dubbo: {interface: "*"}}
        route: {cluster: provider}
clusters:
- name: provider
  protocol: dubbo
  endpoints: [{address: "10.0.0.1:20880"}]
"""


def dubboMesh(text):
    """An InMemoryMesh of a Dubbo listener whose upstream connects make DubboClientProtocols on StringTransports:
    (mesh, {host address: client protocol}, a downstream connection's protocol, its transport)."""
    upstreams = {}

    def connect(host, clusterConfig):
        proto = DubboClientProtocol()
        proto.makeConnection(StringTransport())
        upstreams[host.address] = proto
        return defer.succeed(proto)

    mesh = InMemoryMesh(text, connect=connect)
    proto = mesh.factory.buildProtocol(None)
    transport = StringTransport()
    proto.makeConnection(transport)
    return mesh, upstreams, proto, transport


def dubboCall(abort):
    mesh, upstreams, proto, transport = dubboMesh(DUBBO % (abort,))
    proto.dataReceived(ECHO)
    return mesh, list(upstreams.values()), frames(transport.value())


def test_dubbo_abort_with_the_configured_dubbo_status():
    mesh, upstreams, [reply] = dubboCall("dubbo_status: 100")
    assert reply.status == dc.SERVER_THREADPOOL_EXHAUSTED_ERROR and reply.requestId == frames(ECHO)[0].requestId
    assert upstreams == []
    assert mesh.value("fault_aborts_injected", listener="dubbo_in") == 1


def test_dubbo_abort_by_http_status_when_no_dubbo_status():
    _, _, [reply] = dubboCall("http_status: 504")
    assert reply.status == dc.CLIENT_TIMEOUT


def test_dubbo_abort_by_attachment_when_enabled():
    mesh, upstreams, replies = dubboCall("header_abort: {}")
    [up] = upstreams  # ECHO carries no fault attachment: forwarded
    [req] = sent(up)
    answer(up, req, ECHO_RESP)
    f = dc.DubboDecoder().feed(ECHO)[0]
    inv = f.invocation
    faulted = dc.encodeRequestWithAttachments(f, inv, dict(inv.attachments, **{
        "x-txmesh-fault-abort-dubbo-request": "60"}))
    proto = mesh.factory.buildProtocol(None)
    transport = StringTransport()
    proto.makeConnection(transport)
    proto.dataReceived(faulted)
    [reply] = frames(transport.value())
    assert reply.status == dc.SERVICE_NOT_FOUND
    assert sent(up) == []


GRPC = """
listeners:
- name: grpc_in
  protocol: grpc
  address: tcp:0
  filters:
  - name: fault
    config:
      abort: {grpc_status: 8, percentage: 100}
  route_config:
    virtual_hosts:
    - name: svc
      domains: ["*"]
      routes:
      - match: {grpc: {service: test.Echo}}
        route: {cluster: echo}
clusters:
- name: echo
  protocol: h2
  endpoints: [{address: "10.0.0.1:50051"}]
"""


def grpcCall(mesh, headers=(), body=b"\x00\x00\x00\x00\x02hi"):
    """One gRPC call (an h2 client on an in-memory connection): the response's header and trailer fields."""
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    client.initiate_connection()
    conn = mesh.connect()
    conn.send(client.data_to_send())
    client.send_headers(1, [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/test.Echo/Unary"),
                            (b":authority", b"svc"), (b"content-type", b"application/grpc"), (b"te", b"trailers")]
                        + list(headers))
    client.send_data(1, body, end_stream=True)
    conn.send(client.data_to_send())
    fields = []
    for event in client.receive_data(conn.received()):
        if isinstance(event, (h2.events.ResponseReceived, h2.events.TrailersReceived)):
            fields += event.headers
    return dict(fields)


def test_grpc_abort_with_the_configured_grpc_status():
    mesh = InMemoryMesh(GRPC)
    fields = grpcCall(mesh)
    assert fields[b":status"] == b"200" and fields[b"grpc-status"] == b"8"  # RESOURCE_EXHAUSTED as configured
    assert b"fault filter abort" in fields[b"grpc-message"] and fields[b"x-txmesh-error"] == b"fault_abort"
    assert mesh.upstream("echo").connections == []
    assert mesh.responseFlags() == [{"FI"}]


def test_grpc_abort_by_header_when_enabled():
    mesh = InMemoryMesh(GRPC.replace("abort: {grpc_status: 8, percentage: 100}",
                                     "abort: {header_abort: {}, percentage: 100}"))
    fields = grpcCall(mesh, [(b"x-txmesh-fault-abort-grpc-request", b"14")])
    assert fields[b"grpc-status"] == b"14"


@pytest.mark.parametrize("raw,expected", [
    (25, (25, 100)), (12.5, (125000, 1000000)), (100.0, (100, 100)), ({"numerator": 3}, (3, 100)),
    ({"numerator": 7, "denominator": "MILLION"}, (7, 1000000)), ({"numerator": 200}, (100, 100)),
])
def test_fractions(raw, expected):
    assert parseFraction(raw) == expected


@pytest.mark.parametrize("raw", [True, -1, 100.5, "10%", {"numerator": -1}, {"numerator": 1.5}, {"n": 1},
                                 {"numerator": 1, "denominator": 100}])
def test_bad_fractions(raw):
    with pytest.raises(ValueError):
        parseFraction(raw)
