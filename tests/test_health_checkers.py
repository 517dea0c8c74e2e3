"""
The built-in active health checkers on a MemoryReactorClock (each check's own connection recorded by the reactor,
played with a StringTransport): tcp send/expect, refusal, timeouts closing the connection; grpc Health/Check over
txmesh's HTTP/2 client against a raw HTTP/2 peer, its messages against grpcio's own protobuf; dubbo heartbeat and
invocation frames; and the health_checks config errors.
"""

import pytest
from grpc_health.v1 import health_pb2
from hyperframe.frame import DataFrame, HeadersFrame, SettingsFrame
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionRefusedError, TimeoutError
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from zope.interface.verify import verifyObject

from tests.h2wire import PREFACE, WireEnd
from txmesh import config
from txmesh.errors import ConfigError
from txmesh.interfaces import IHealthChecker, IHealthCheckerFactory
from txmesh.plugins import txmesh_health
from txmesh.protocols.dubbo import codec as dc
from txmesh.protocols.dubbo.health import DubboCheckConfig, encodeCheckRequest, judgeResponse
from txmesh.protocols.dubbo.replies import encodeValueResponse
from txmesh.protocols.h2.health import decodeCheckResponse, encodeCheckRequest as grpcRequest
from txmesh.upstream.health import CheckOutcome
from txmesh.upstream.host import Host

FACTORIES = [txmesh_health.tcp, txmesh_health.http, txmesh_health.grpc, txmesh_health.dubbo]


def buildChecker(factory, raw, protocol="http1"):
    context = config.HealthCheckConfigContext("<test>", "clusters[0].health_checks[0]", "backend", protocol,
                                              lambda path: 1)
    reactor = MemoryReactorClock()
    host = Host("127.0.0.1", 8080)
    return factory.makeChecker(factory.buildConfig(raw, context), host, reactor), reactor


class Run:
    """One check: its Deferred's result, and the connection attempt the reactor recorded."""

    def __init__(self, checker, reactor):
        self.results = []
        self.reactor = reactor
        self.d = checker.check()
        self.d.addBoth(self.results.append)
        host, port, self.factory, _, _ = reactor.tcpClients[-1]
        assert (host, port) == ("127.0.0.1", 8080)

    def refuse(self):
        self.factory.clientConnectionFailed(self.reactor.connectors[-1], Failure(ConnectionRefusedError()))

    def connect(self):
        self.proto = self.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 8080))
        self.transport = StringTransport()
        self.proto.makeConnection(self.transport)
        return self.proto

    @property
    def result(self):
        [r] = self.results
        return r


@pytest.mark.parametrize("factory", FACTORIES, ids=lambda f: f.name)
def test_every_builtin_provides_the_interfaces(factory):
    verifyObject(IHealthCheckerFactory, factory)
    protocol = sorted(factory.protocols)[0] if factory.protocols else "http1"
    checker, _ = buildChecker(factory, {}, protocol)
    verifyObject(IHealthChecker, checker)


def test_tcp_connect_only_passes_on_connect_and_closes():
    run = Run(*buildChecker(txmesh_health.tcp, {}))
    run.connect()
    assert run.result.passed
    assert run.transport.disconnecting  # the check's connection is closed after it


def test_tcp_refused_is_refused():
    run = Run(*buildChecker(txmesh_health.tcp, {}))
    run.refuse()
    assert run.result.outcome is CheckOutcome.REFUSED


def test_tcp_connect_timeout_is_a_network_failure():
    run = Run(*buildChecker(txmesh_health.tcp, {}))
    run.factory.clientConnectionFailed(run.reactor.connectors[-1], Failure(TimeoutError()))
    assert run.result.outcome is CheckOutcome.NETWORK


def test_tcp_send_hex_and_expect_text():
    run = Run(*buildChecker(txmesh_health.tcp, {"send": {"hex": "50494e470d0a"}, "expect": "PONG"}))
    proto = run.connect()
    assert run.transport.value() == b"PING\r\n"
    proto.dataReceived(b"+PO")
    assert not run.results
    proto.dataReceived(b"NG\r\n")
    assert run.result.passed


def test_tcp_close_before_the_expected_bytes_is_a_network_failure():
    run = Run(*buildChecker(txmesh_health.tcp, {"send": "PING", "expect": "PONG"}))
    proto = run.connect()
    proto.dataReceived(b"-ERR")
    proto.connectionLost(Failure(ConnectionRefusedError()))
    assert run.result.outcome is CheckOutcome.NETWORK


def test_cancel_aborts_the_connect_or_the_connection():
    run = Run(*buildChecker(txmesh_health.tcp, {"expect": "x"}))
    run.connect()
    run.d.cancel()
    assert run.transport.disconnecting  # StringTransport.abortConnection
    run2 = Run(*buildChecker(txmesh_health.tcp, {}))
    run2.d.cancel()
    assert run2.reactor.connectors[-1].stoppedConnecting


# -- http ---------------------------------------------------------------------------------------------------------


def httpRun(raw):
    checker, reactor = buildChecker(txmesh_health.http, raw)
    results = []
    d = checker.check()
    d.addBoth(results.append)
    reactor.advance(0)  # the Agent resolves (an IP literal) then connects
    host, port, factory, _, _ = reactor.tcpClients[-1]
    assert (host, port) == ("127.0.0.1", 8080)
    proto = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 8080))
    transport = StringTransport()
    proto.makeConnection(transport)
    return d, results, proto, transport


def test_http_sends_envoys_request_and_passes_on_an_expected_status():
    d, results, proto, transport = httpRun({"path": "/healthz?full=1", "method": "HEAD",
                                            "request_headers": {"x-probe": "1"}})
    head = transport.value().split(b"\r\n\r\n")[0].split(b"\r\n")
    assert head[0] == b"HEAD /healthz?full=1 HTTP/1.1"
    fields = {k.lower(): v for k, v in (line.split(b": ", 1) for line in head[1:])}
    assert fields[b"host"] == b"backend"  # Envoy's default: the cluster's name
    assert fields[b"user-agent"] == b"txmesh/HC" and fields[b"x-probe"] == b"1"
    assert fields[b"connection"] == b"close"  # a connection of the check's own, never kept
    proto.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert results[0].passed


@pytest.mark.parametrize("statuses, status, passed", [
    (None, 204, False),  # Envoy's default: 200 only
    (None, 200, True),
    ([{"start": 200, "end": 300}], 204, True),
    ([{"start": 200, "end": 300}], 300, False),  # end excluded
    ([503], 503, True),
])
def test_http_expected_statuses(statuses, status, passed):
    raw = {} if statuses is None else {"expected_statuses": statuses}
    d, results, proto, transport = httpRun(raw)
    proto.dataReceived(b"HTTP/1.1 %d X\r\nContent-Length: 2\r\n\r\nok" % (status,))
    [result] = results
    assert result.passed is passed
    if not passed:
        assert (result.outcome, result.reason) == (CheckOutcome.FAILED, "status %d" % (status,))


def test_http_connection_lost_before_the_response_is_a_network_failure():
    d, results, proto, transport = httpRun({})
    proto.connectionLost(Failure(ConnectionRefusedError()))
    assert results[0].outcome is CheckOutcome.NETWORK


def test_http_cancel_closes_the_connection():
    d, results, proto, transport = httpRun({})
    d.cancel()
    assert transport.disconnecting or transport.disconnected


# -- grpc ---------------------------------------------------------------------------------------------------------


def test_grpc_messages_match_grpcio_protobuf():
    request = health_pb2.HealthCheckRequest(service="pkg.Svc").SerializeToString()
    assert grpcRequest("pkg.Svc") == b"\x00" + len(request).to_bytes(4, "big") + request
    assert grpcRequest("") == b"\x00\x00\x00\x00\x00"
    for status in (0, 1, 2, 3):
        message = health_pb2.HealthCheckResponse(status=status).SerializeToString()
        assert decodeCheckResponse(b"\x00" + len(message).to_bytes(4, "big") + message) == status


@pytest.mark.parametrize("body", [b"", b"\x01\x00\x00\x00\x00", b"\x00\x00\x00\x00\x05\x08", b"\x00\x00\x00\x00\x01\x08"])
def test_grpc_bad_response_bodies_are_refused(body):
    with pytest.raises(ValueError):
        decodeCheckResponse(body)


def grpcExchange(service, status=None, trailers=None, http=b"200"):
    run = Run(*buildChecker(txmesh_health.grpc, {"service_name": service}, "grpc"))
    peer = WireEnd(run.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 8080)), offset=len(PREFACE))
    peer.send(SettingsFrame(0))
    frames = peer.read()
    [headers] = [f for f in frames if isinstance(f, HeadersFrame)]
    fields = dict(headers.fields)
    assert fields[b":path"] == b"/grpc.health.v1.Health/Check"
    assert fields[b":authority"] == b"backend"  # Envoy's default: the cluster's name
    assert fields[b"content-type"] == b"application/grpc" and fields[b"te"] == b"trailers"
    [data] = [f for f in frames if isinstance(f, DataFrame)]
    assert data.data == grpcRequest(service)
    sid = headers.stream_id
    if status is None:  # trailers-only
        peer.send(peer.headers(sid, [(b":status", http), (b"content-type", b"application/grpc")] + trailers, True))
    else:
        message = health_pb2.HealthCheckResponse(status=status).SerializeToString()
        peer.send(peer.headers(sid, [(b":status", http), (b"content-type", b"application/grpc")], False),
                  DataFrame(sid, data=b"\x00" + len(message).to_bytes(4, "big") + message),
                  peer.headers(sid, trailers or [(b"grpc-status", b"0")], True))
    return run


def test_grpc_serving_passes():
    assert grpcExchange("pkg.Svc", status=1).result.passed


@pytest.mark.parametrize("kw, reason", [
    ({"status": 2}, "NOT_SERVING"),
    ({"status": 3}, "SERVICE_UNKNOWN"),
    ({"status": None, "trailers": [(b"grpc-status", b"5"), (b"grpc-message", b"unknown service")]},
     "grpc-status 5: unknown service"),
    ({"status": 1, "http": b"503"}, "HTTP status 503"),
])
def test_grpc_anything_else_fails(kw, reason):
    result = grpcExchange("pkg.Svc", **kw).result
    assert (result.outcome, result.reason) == (CheckOutcome.FAILED, reason)


def test_grpc_connection_lost_is_a_network_failure():
    run = Run(*buildChecker(txmesh_health.grpc, {}, "grpc"))
    proto = run.connect()
    proto.connectionLost(Failure(ConnectionRefusedError()))
    assert run.result.outcome is CheckOutcome.NETWORK


# -- dubbo --------------------------------------------------------------------------------------------------------


def test_dubbo_heartbeat_passes_on_an_ok_event_reply():
    run = Run(*buildChecker(txmesh_health.dubbo, {}, "dubbo"))
    proto = run.connect()
    [frame] = dc.DubboDecoder().feed(run.transport.value())
    assert frame.isHeartbeat and frame.isRequest and frame.twoWay
    # the provider's own heartbeat first: answered, not taken for the reply
    proto.dataReceived(dc.encodeHeartbeat(99))
    assert not run.results
    [answer] = dc.DubboDecoder().feed(run.transport.value()[len(frame.toBytes()):])
    assert answer.event and not answer.isRequest and answer.requestId == 99
    proto.dataReceived(dc.encodeHeartbeatResponse(frame.requestId))
    assert run.result.passed


def test_dubbo_invocation_frame_decodes_as_the_configured_call():
    cfg = DubboCheckConfig(interface="org.Echo", method="echo", version="1.0.0", group="g", argument="hi")
    [frame] = dc.DubboDecoder().feed(encodeCheckRequest(cfg))
    inv = frame.invocation
    assert (inv.serviceName, inv.serviceVersion, inv.methodName, inv.parameterTypes) == (
        "org.Echo", "1.0.0", "echo", "Ljava/lang/String;")
    assert inv.attachments == {"path": "org.Echo", "interface": "org.Echo", "version": "1.0.0", "group": "g"}


def test_dubbo_replies_judged():
    cfg = DubboCheckConfig(interface="org.Echo")
    [ok] = dc.DubboDecoder().feed(encodeValueResponse(1, "txmesh-health-check"))
    assert judgeResponse(cfg, ok).passed
    [err] = dc.DubboDecoder().feed(dc.encodeResponse(1, dc.SERVICE_NOT_FOUND, "no such service"))
    assert judgeResponse(cfg, err).reason == "dubbo status 60: no such service"
    [hb] = dc.DubboDecoder().feed(dc.encodeHeartbeatResponse(1))
    assert judgeResponse(DubboCheckConfig(), hb).passed
    assert not judgeResponse(cfg, hb).passed


# -- config -------------------------------------------------------------------------------------------------------

MESH = """
listeners: [{name: l, address: "tcp:0", default_cluster: c}]
clusters:
  - name: c
    protocol: %s
    endpoints: [{address: "127.0.0.1:1"}]
    health_checks:
%s
"""


def load(checks, protocol="http1"):
    return config.loads(MESH % (protocol, checks), "mesh.yaml").clusters[0].healthChecks


def test_defaults_by_protocol():
    assert [load("      - {}", p)[0].type for p in ("http1", "http2", "grpc", "dubbo")] == [
        "http", "tcp", "grpc", "dubbo"]
    [hc] = load("      - {interval: 3s}")
    assert (hc.interval, hc.timeout, hc.unhealthyInterval, hc.unhealthyThreshold, hc.healthyThreshold) == (
        3.0, 1.0, 3.0, 2, 2)
    assert hc.checkerConfig.expectedStatuses == ((200, 201),) and hc.checkerConfig.host == "c"


def test_every_key():
    [hc] = load("""      - type: http
        interval: 2s
        timeout: 500ms
        interval_jitter: 100ms
        interval_jitter_percent: 10
        initial_jitter: 1s
        unhealthy_threshold: 3
        healthy_threshold: 4
        unhealthy_interval: 1s
        no_traffic_interval: 60s
        path: /healthz
        method: head
        host: app.local
        expected_statuses: [204, {start: 200, end: 300}]
        request_headers: {x-probe: "1"}""")
    assert (hc.interval, hc.timeout, hc.intervalJitter, hc.intervalJitterPercent, hc.initialJitter) == (
        2.0, 0.5, 0.1, 10, 1.0)
    assert (hc.unhealthyThreshold, hc.healthyThreshold, hc.unhealthyInterval, hc.noTrafficInterval) == (
        3, 4, 1.0, 60.0)
    c = hc.checkerConfig
    assert (c.path, c.method, c.host, c.expectedStatuses, c.headers) == (
        "/healthz", "HEAD", "app.local", ((204, 205), (200, 300)), (("x-probe", "1"),))


@pytest.mark.parametrize("checks, protocol, path, reason", [
    ("      - {type: icmp}", "http1", "health_checks[0].type", "unknown health check type 'icmp'"),
    ("      - {type: grpc}", "http1", "health_checks[0].type", "does not check http1 clusters"),
    ("      - {type: dubbo}", "grpc", "health_checks[0].type", "does not check grpc clusters"),
    ("      - {}\n      - {}", "http1", "health_checks[1]", "one health check per cluster"),
    ("      - {interval: 0}", "http1", "health_checks[0].interval", "must be more than 0"),
    ("      - {timeout: 0s}", "http1", "health_checks[0].timeout", "must be more than 0"),
    ("      - {unhealthy_threshold: 0}", "http1", "health_checks[0].unhealthy_threshold", "between 1 and 1000"),
    ("      - {interval_jitter_percent: 101}", "http1", "health_checks[0].interval_jitter_percent",
     "between 0 and 100"),
    ("      - {send: x}", "http1", "health_checks[0].send", "unknown key 'send'"),
    ("      - {path: healthz}", "http1", "health_checks[0].path", "absolute path"),
    ("      - {method: CONNECT}", "http1", "health_checks[0].method", "must be one of"),
    ("      - {expected_statuses: [{start: 300, end: 200}]}", "http1", "health_checks[0].expected_statuses[0]",
     "start < end"),
    ("      - {expected_statuses: [abc]}", "http1", "health_checks[0].expected_statuses[0]", "must be a status"),
    ("      - {request_headers: {host: x}}", "http1", "health_checks[0].request_headers.host", "host key"),
    ("      - {type: tcp, send: {hex: zz}}", "http1", "health_checks[0].send", "not hex digits"),
    ("      - {type: tcp, expect: 5}", "http1", "health_checks[0].expect", "must be a string"),
    ("      - {service_name: 5}", "grpc", "health_checks[0].service_name", "must be a service name"),
    ("      - {method: echo}", "dubbo", "health_checks[0].method", "needs interface"),
    ("      - {interface: ''}", "dubbo", "health_checks[0].interface", "not empty"),
])
def test_config_errors_name_the_line_and_key(checks, protocol, path, reason):
    with pytest.raises(ConfigError) as e:
        load(checks, protocol)
    assert e.value.path == "clusters[0]." + path
    assert reason in e.value.reason
    assert e.value.filename == "mesh.yaml" and e.value.line >= 7


def test_the_schema_knows_health_checks():
    import json
    from importlib import resources

    import jsonschema
    import yaml

    schema = json.loads(resources.files("txmesh").joinpath("mesh.schema.json").read_text())
    validator = jsonschema.Draft202012Validator(schema)
    text = MESH % ("http1", """      - {type: http, path: /healthz, interval: 2s, timeout: 500ms, unhealthy_threshold: 3,
         healthy_threshold: 1, expected_statuses: [{start: 200, end: 300}], request_headers: {x-a: b}}""")
    validator.validate(yaml.safe_load(text))
    load(text.split("health_checks:\n")[1])  # and the loader agrees
    two = yaml.safe_load(MESH % ("http1", "      - {}\n      - {}"))
    assert not validator.is_valid(two)
    bad = yaml.safe_load(MESH % ("http1", "      - {healthy_threshold: 0}"))
    assert not validator.is_valid(bad)
