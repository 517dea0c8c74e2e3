"""
Trace context and spans (issue 16 part 2), in memory: the W3C and B3 codecs on valid and malformed input, the
``tracing`` block's errors, and the tracing filter on HTTP/1.1, gRPC and Dubbo listeners (StringTransports, a
Clock, spans in an InMemorySpanExporter): the context the upstream call carries, the span's parent, ids and
attributes, sampling.  The same against a real OTLP receiver and real peers is tests/test_integration_tracing.py.
"""

import os

import pytest
from h2.config import H2Configuration
from h2.connection import H2Connection
from opentelemetry.trace import SpanKind, StatusCode
from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock, StringTransport
from zope.interface.verify import verifyObject

from txmesh.config import loads
from txmesh.errors import ConfigError
from txmesh.filters.access_log_format import LogRecord, TextFormat
from txmesh.interfaces import ITracer
from txmesh.protocols.dubbo import codec as dc
from txmesh.protocols.dubbo.client import DubboClientProtocol
from txmesh.stream import HeaderMap
from txmesh.testing import InMemoryMesh
from txmesh.trace_context import (B3_MULTI, B3_SINGLE, TRACECONTEXT, TraceContext, extract, formatB3Single,
                                  formatTraceparent, inject, parseB3Multi, parseB3Single, parseTraceparent,
                                  parseTracestate)
from txmesh.tracer import Tracer

TRACE = 0x0AF7651916CD43DD8448EB211C80319C
SPAN = 0xB7AD6B7169203331
TP = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


# -- W3C traceparent / tracestate --------------------------------------------------------------------------------------


def test_traceparent_valid():
    assert parseTraceparent(TP) == (TRACE, SPAN, True)
    assert parseTraceparent(TP[:-1] + b"0") == (TRACE, SPAN, False)
    assert parseTraceparent(b" " + TP + b" ") == (TRACE, SPAN, True)  # optional whitespace
    assert parseTraceparent(TP[:-2] + b"03") == (TRACE, SPAN, True)  # other flags ignored, sampled bit read
    # a later version: its first four fields are read, what follows a dash is its own
    assert parseTraceparent(b"cc" + TP[2:] + b"-what-the-future-holds") == (TRACE, SPAN, True)
    assert formatTraceparent(TRACE, SPAN, True) == TP
    assert formatTraceparent(1, 2, False) == b"00-00000000000000000000000000000001-0000000000000002-00"


@pytest.mark.parametrize("value", [
    b"", b"garbage", TP[:-1], TP + b"0", TP + b"-extra",  # version 00 is exactly 55 characters
    b"ff" + TP[2:],  # version ff is invalid
    b"cc" + TP[2:] + b"x",  # a later version's extra fields start with a dash
    TP.upper(), TP.replace(b"-", b"_"),  # lower-case hex, dashes
    b"00-00000000000000000000000000000000-b7ad6b7169203331-01",  # all-zero trace id
    b"00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",  # all-zero parent id
    b"00-0af7651916cd43dd8448eb211c80319-cb7ad6b7169203331-01",  # misplaced dash
    b"0-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", b"\xff" * 55,
])
def test_traceparent_invalid(value):
    assert parseTraceparent(value) is None


def test_tracestate():
    assert parseTracestate([b"congo=t61rcWkgMzE, rojo=00f067aa0ba902b7"]) == [("congo", "t61rcWkgMzE"),
                                                                              ("rojo", "00f067aa0ba902b7")]
    # several fields are one list; empty members are skipped; multi-tenant keys
    assert parseTracestate([b"a=1,,", b" t@vendor=x y"]) == [("a", "1"), ("t@vendor", "x y")]
    assert parseTracestate([b""]) == []
    for bad in ([b"a=1,a=2"], [b"A=1"], [b"a"], [b"a=1=2"], [b"a= "], [b"a=\x7f"], [b"1a=x"],
                [b",".join(b"k%d=v" % i for i in range(33))], [b"k=" + b"v" * 9000]):
        assert parseTracestate(bad) is None, bad
    assert len(parseTracestate([b",".join(b"k%d=v" % i for i in range(32))])) == 32


# -- B3 ------------------------------------------------------------------------------------------------------------------


def test_b3_single():
    assert parseB3Single(b"80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90") == TraceContext(
        0x80F198EE56343BA864FE8B2A57D3EFF7, 0xE457B5A2E4D86BD1, True)
    assert parseB3Single(b"64fe8b2a57d3eff7-e457b5a2e4d86bd1") == TraceContext(
        0x64FE8B2A57D3EFF7, 0xE457B5A2E4D86BD1, None, shortTraceId=True)  # no decision: ours
    assert parseB3Single(b"64fe8b2a57d3eff7-e457b5a2e4d86bd1-d") == TraceContext(
        0x64FE8B2A57D3EFF7, 0xE457B5A2E4D86BD1, True, True, shortTraceId=True)
    assert parseB3Single(b"0") == TraceContext(None, None, False)  # a decision alone
    assert parseB3Single(b"d") == TraceContext(None, None, True, True)
    assert formatB3Single(TRACE, SPAN, True) == b"0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-1"
    assert formatB3Single(0x64FE8B2A57D3EFF7, SPAN, False, short=True) == b"64fe8b2a57d3eff7-b7ad6b7169203331-0"


@pytest.mark.parametrize("value", [
    b"", b"2", b"true", b"64fe8b2a57d3eff7", b"64fe8b2a57d3eff7-e457b5a2e4d86bd1-2",
    b"64FE8B2A57D3EFF7-e457b5a2e4d86bd1-1", b"64fe8b2a57d3eff-e457b5a2e4d86bd1-1",
    b"64fe8b2a57d3eff7-e457b5a2e4d86bd-1", b"64fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b9",
    b"64fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90-x", b"0000000000000000-e457b5a2e4d86bd1-1",
    b"64fe8b2a57d3eff7-0000000000000000-1", b"\x00\xff-\x80",
])
def test_b3_single_invalid(value):
    assert parseB3Single(value) is None


def test_b3_multi():
    f = {b"x-b3-traceid": b"463ac35c9f6413ad48485a3953bb6124", b"x-b3-spanid": b"0020000000000001",
         b"x-b3-parentspanid": b"0010000000000001", b"x-b3-sampled": b"1"}
    assert parseB3Multi(f) == TraceContext(0x463AC35C9F6413AD48485A3953BB6124, 0x20000000000001, True)
    assert parseB3Multi({**f, b"x-b3-sampled": b"false"}).sampled is False  # old clients
    assert parseB3Multi({**f, b"x-b3-flags": b"1"}).debug is True
    assert parseB3Multi({b"x-b3-sampled": b"0"}) == TraceContext(None, None, False)
    for bad in ({b"x-b3-sampled": b"yes"}, {**f, b"x-b3-sampled": b"2"}, {**f, b"x-b3-spanid": b"1"},
                {b"x-b3-traceid": f[b"x-b3-traceid"]}, {**f, b"x-b3-parentspanid": b"zz"},
                {**f, b"x-b3-traceid": b"0" * 32}, {b"x-b3-flags": b"0"}, {}):
        assert parseB3Multi(bad) is None, bad


# -- a request's context ------------------------------------------------------------------------------------------------


def headers(*pairs):
    return HeaderMap([(k, v) for k, v in pairs])


def test_extract_prefers_a_valid_traceparent_and_keeps_its_tracestate():
    h = headers((b"traceparent", TP), (b"tracestate", b"congo=1"), (b"b3", b"64fe8b2a57d3eff7-e457b5a2e4d86bd1-0"))
    context, present = extract(h)
    assert (context.traceId, context.spanId, context.sampled, context.traceState) == (TRACE, SPAN, True,
                                                                                      [("congo", "1")])
    assert present == TRACECONTEXT | B3_SINGLE
    # an invalid traceparent: the next format; its tracestate is not kept
    context, present = extract(headers((b"traceparent", b"00-bad"), (b"tracestate", b"congo=1"),
                                       (b"x-b3-traceid", b"64fe8b2a57d3eff7"), (b"x-b3-spanid", b"e457b5a2e4d86bd1")))
    assert (context.traceId, context.sampled, context.traceState, present) == (0x64FE8B2A57D3EFF7, None, [],
                                                                               TRACECONTEXT | B3_MULTI)
    assert extract(headers((b"traceparent", b"junk"), (b"b3", b"junk"))) == (None, TRACECONTEXT | B3_SINGLE)
    assert extract(headers((b"host", b"x"))) == (None, 0)
    # an invalid tracestate is dropped, the traceparent kept
    context, _ = extract(headers((b"traceparent", TP), (b"tracestate", b"BAD")))
    assert (context.traceId, context.traceState) == (TRACE, [])


def test_inject_replaces_every_trace_field_in_each_format():
    parent = TraceContext(0x64FE8B2A57D3EFF7, SPAN, True, traceState=[("congo", "1")], shortTraceId=True)
    h = headers((b"b3", b"old"), (b"x-b3-spanid", b"old"), (b"x-b3-sampled", b"1"), (b"other", b"kept"),
                (b"tracestate", b"old=1"))
    inject(h, 0x64FE8B2A57D3EFF7, 0x1111, True, parent, TRACECONTEXT | B3_SINGLE | B3_MULTI)
    assert list(h) == [
        (b"other", b"kept"),
        (b"traceparent", b"00-000000000000000064fe8b2a57d3eff7-0000000000001111-01"),
        (b"tracestate", b"congo=1"),
        (b"b3", b"64fe8b2a57d3eff7-0000000000001111-1"),
        (b"x-b3-traceid", b"64fe8b2a57d3eff7"),  # B3's 64-bit id stays 64-bit
        (b"x-b3-spanid", b"0000000000001111"),
        (b"x-b3-parentspanid", b"b7ad6b7169203331"),  # the caller's span is our span's parent
        (b"x-b3-sampled", b"1"),
    ]
    h = headers()
    inject(h, TRACE, 0x2222, False, TraceContext(None, None, False, True), B3_MULTI)
    assert list(h) == [(b"x-b3-traceid", b"%032x" % TRACE), (b"x-b3-spanid", b"0000000000002222"),
                       (b"x-b3-flags", b"1")]


# -- the tracing block ---------------------------------------------------------------------------------------------------

LISTENER = """
listeners:
- name: ingress
  protocol: %(protocol)s
  address: tcp:0
  route_config:
    virtual_hosts: [{name: all, domains: ["*"], routes: [{match: %(match)s, route: {cluster: backend}}]}]
clusters: [{name: backend, protocol: %(cluster)s, endpoints: [{address: "10.0.0.1:80"}]}]
"""


def mesh(tracing, protocol="http", cluster="http1", match="{prefix: /}"):
    return ("tracing:\n%s\n" % (tracing,) if tracing else "") + LISTENER % {
        "protocol": protocol, "cluster": cluster, "match": match}


@pytest.mark.parametrize("tracing, path, reason", [
    ("  endpoint: http://c:4318", "tracing", "missing required key 'exporter'"),
    ("  exporter: zipkin", "tracing.exporter", "unknown exporter 'zipkin'"),
    ("  exporter: otlp_http\n  endpoint: c:4318", "tracing.endpoint", "must be an http:// or https:// URL"),
    ("  exporter: otlp_http\n  endpoint: http://c:99999/", "tracing.endpoint", "must be an http:// or https:// URL"),
    ("  exporter: otlp_grpc\n  endpoint: http://c:4317/v1/traces", "tracing.endpoint", "without a path"),
    ("  exporter: otlp_http\n  sampling_ratio: 1.5", "tracing.sampling_ratio", "must be between 0 and 1"),
    ("  exporter: otlp_http\n  propagation: [jaeger]", "tracing.propagation[0]", "unknown format 'jaeger'"),
    ("  exporter: otlp_http\n  export_timeout: 0s", "tracing.export_timeout", "between 100ms and 60s"),
    ("  exporter: otlp_http\n  max_queue_size: 10\n  max_export_batch_size: 20", "tracing.max_export_batch_size",
     "must not exceed max_queue_size"),
    ("  exporter: otlp_http\n  colour: red", "tracing.colour", "unknown key 'colour'"),
    ("  exporter: otlp_http\n  service_name: ''", "tracing.service_name", "must not be empty"),
])
def test_config_errors_name_file_line_and_key(tracing, path, reason):
    with pytest.raises(ConfigError) as e:
        loads(mesh(tracing), "mesh.yaml")
    assert e.value.path == path and reason in str(e.value)
    assert str(e.value).startswith("mesh.yaml:")


def test_config_defaults():
    t = loads(mesh("  exporter: otlp_grpc\n  propagation: [b3, tracecontext]")).tracing
    assert (t.endpoint, t.serviceName, t.samplingRatio, t.propagation) == ("http://127.0.0.1:4317", "txmesh", 1.0,
                                                                           TRACECONTEXT | B3_SINGLE)
    assert loads(mesh(None)).tracing is None


# -- the filter, per protocol --------------------------------------------------------------------------------------------

HTTP_TRACED = mesh("  exporter: otlp_http\n  service_name: edge")


def spans(m):
    return m.spanExporter.get_finished_spans()


def test_tracer_provides_itracer():
    tracer = Tracer(loads(HTTP_TRACED).tracing, MemoryReactorClock())
    assert verifyObject(ITracer, tracer)


def test_http1_caller_context_continues_upstream_with_our_span_as_parent():
    m = InMemoryMesh(HTTP_TRACED)
    m.clock.advance(1000)
    c = m.connect()
    c.send(b"GET /a/b?q=secret HTTP/1.1\r\nHost: app:8080\r\nUser-Agent: t/1\r\ntraceparent: " + TP
           + b"\r\ntracestate: congo=t61rcWkgMzE\r\n\r\n")
    [r] = m.upstream("backend").requests
    context, _ = extract(r.head.headers)
    m.clock.advance(0.25)
    r.respond(503, body=b"no")
    assert c.response().status == 503
    [span] = spans(m)
    assert (span.kind, span.name, span.context.trace_id, span.parent.span_id) == (SpanKind.SERVER, "GET", TRACE, SPAN)
    assert (context.traceId, context.spanId, context.sampled) == (TRACE, span.context.span_id, True)
    assert context.traceState == [("congo", "t61rcWkgMzE")] and r.head.headers.get(b"b3") is None
    a = span.attributes
    assert (a["http.request.method"], a["url.path"], a["server.address"], a["server.port"], a["client.address"],
            a["user_agent.original"], a["http.response.status_code"], a["txmesh.cluster"]) == (
        "GET", "/a/b", "app", 8080, "10.1.2.3", "t/1", 503, "backend")
    assert span.status.status_code is StatusCode.ERROR and span.resource.attributes["service.name"] == "edge"
    assert (span.start_time, span.end_time) == (1000 * 10**9, 1000.25 * 10**9)
    # the access log's %TRACE_ID%
    assert m.streams[0].streamInfo.metadata["trace_id"] == "%032x" % TRACE


def test_http1_without_context_starts_a_trace_and_writes_the_configured_formats():
    m = InMemoryMesh(mesh("  exporter: otlp_http\n  propagation: [tracecontext, b3, b3multi]"))
    c = m.connect()
    c.send(b"GET / HTTP/1.1\r\nHost: app\r\ntraceparent: 00-nonsense\r\ntracestate: a=1\r\n\r\n")
    [r] = m.upstream("backend").requests
    r.respond(200)
    [span] = spans(m)
    h = r.head.headers
    assert span.parent is None and span.status.status_code is StatusCode.UNSET
    assert h.get(b"traceparent") == formatTraceparent(span.context.trace_id, span.context.span_id, True)
    assert h.get(b"tracestate") is None  # it belonged to the invalid traceparent
    assert h.get(b"b3") == formatB3Single(span.context.trace_id, span.context.span_id, True)
    assert h.get(b"x-b3-spanid") == b"%016x" % span.context.span_id and h.get(b"x-b3-parentspanid") is None
    assert m.value("tracing_context_invalid", listener="ingress") == 1  # the nonsense traceparent


def test_sampling_respects_the_callers_decision_and_the_ratio():
    m = InMemoryMesh(mesh("  exporter: otlp_http\n  sampling_ratio: 0"))
    c = m.connect()
    # a sampled caller is sampled whatever the ratio; an unsampled one never is (but still gets new span ids)
    for value, kind in ((TP, b"traceparent"), (TP[:-1] + b"0", b"traceparent"), (b"0", b"b3"), (b"d", b"b3"),
                        (None, None)):
        extra = kind + b": " + value + b"\r\n" if value else b""
        c.send(b"GET / HTTP/1.1\r\nHost: app\r\n" + extra + b"\r\n")
        r = m.upstream("backend").requests[-1]
        r.respond(200)
        context, _ = extract(r.head.headers)
        assert context.spanId != SPAN
    sampled = spans(m)
    assert len(sampled) == 2 and sampled[0].context.trace_id == TRACE and sampled[1].parent is None
    assert (m.value("tracing_requests_sampled", listener="ingress"),
            m.value("tracing_requests_not_sampled", listener="ingress"),
            m.value("tracing_context_invalid", listener="ingress")) == (2, 3, 0)
    assert [extract(r.head.headers)[0].sampled for r in m.upstream("backend").requests] == [
        True, False, False, True, False]


GRPC_TRACED = mesh("  exporter: otlp_grpc\n  propagation: [b3multi]", protocol="grpc")


def test_grpc_metadata_carries_the_context_and_the_span_has_rpc_attributes():
    m = InMemoryMesh(GRPC_TRACED)
    client = H2Connection(H2Configuration(client_side=True))
    client.initiate_connection()
    client.send_headers(1, [(":method", "POST"), (":scheme", "http"), (":path", "/pkg.Greeter/Hello"),
                            (":authority", "greeter"), ("content-type", "application/grpc"), ("te", "trailers"),
                            ("b3", "64fe8b2a57d3eff7-e457b5a2e4d86bd1-1")], end_stream=True)
    proto = m.factory.buildProtocol(None)
    proto.makeConnection(StringTransport())
    proto.dataReceived(client.data_to_send())
    m.clock.advance(0)
    [r] = m.upstream("backend").requests
    r.respond(200, [(b"content-type", b"application/grpc"), (b"grpc-status", b"14")])
    [span] = spans(m)
    h = r.head.headers
    assert (span.name, span.context.trace_id, span.parent.span_id) == ("pkg.Greeter/Hello", 0x64FE8B2A57D3EFF7,
                                                                       0xE457B5A2E4D86BD1)
    assert h.get(b"b3") == b"64fe8b2a57d3eff7-%016x-1" % span.context.span_id  # the caller's format, updated
    assert (h.get(b"x-b3-traceid"), h.get(b"x-b3-parentspanid")) == (b"64fe8b2a57d3eff7", b"e457b5a2e4d86bd1")
    assert h.get(b"traceparent") is None  # not configured, not received
    a = span.attributes
    assert (a["rpc.system"], a["rpc.service"], a["rpc.method"], a["rpc.grpc.status_code"]) == (
        "grpc", "pkg.Greeter", "Hello", 14)
    assert span.status.status_code is StatusCode.ERROR


FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "dubbo-frames")


def _frame(name):
    with open(os.path.join(FIXTURES, name)) as f:
        return bytes.fromhex(f.read())


DUBBO_TRACED = mesh("  exporter: otlp_http\n  propagation: [tracecontext, b3multi]", protocol="dubbo",
                    cluster="dubbo", match="{dubbo: {interface: org.txmesh.peers.EchoService}}")


def test_dubbo_attachments_carry_the_context_in_the_names_dubbo_tracing_reads():
    upstreams = []

    def connect(host, clusterConfig):
        proto = DubboClientProtocol()
        proto.makeConnection(StringTransport())
        upstreams.append(proto)
        return defer.succeed(proto)

    m = InMemoryMesh(DUBBO_TRACED, connect=connect)
    echo = dc.DubboDecoder().feed(_frame("sofa-consumer__sofa-provider/c0-c2s-000-req-echo.hex"))[0]
    call = dc.encodeRequestWithAttachments(echo, echo.invocation, dict(echo.invocation.attachments, traceparent=TP.decode()))
    proto = m.factory.buildProtocol(None)
    downstream = StringTransport()
    proto.makeConnection(downstream)
    proto.dataReceived(call)
    [up] = upstreams
    [sent] = dc.DubboDecoder().feed(up.transport.value())
    att = sent.invocation.attachments
    response = _frame("sofa-consumer__sofa-provider/c0-s2c-000-resp-echo-status20.hex")
    up.dataReceived(dc.withRequestId(response, sent.requestId) + response[16:])
    [span] = spans(m)
    ours = span.context.span_id
    assert att["traceparent"] == formatTraceparent(TRACE, ours, True).decode()
    # Brave's Dubbo filter reads these keys case-sensitively
    assert (att["X-B3-TraceId"], att["X-B3-SpanId"], att["X-B3-ParentSpanId"], att["X-B3-Sampled"]) == (
        "%032x" % TRACE, "%016x" % ours, "%016x" % SPAN, "1")
    original = dc.DubboDecoder().feed(call)[0].invocation
    assert sent.body[:original.attachmentsOffset] == call[16:16 + original.attachmentsOffset]  # arguments untouched
    a = span.attributes
    assert (span.name, a["rpc.system"], a["rpc.service"], a["rpc.method"], a["rpc.response.status_code"]) == (
        "org.txmesh.peers.EchoService/echo", "apache_dubbo", "org.txmesh.peers.EchoService", "echo", "20")
    assert span.parent.span_id == SPAN and span.status.status_code is StatusCode.UNSET
    assert dc.DubboDecoder().feed(downstream.value())[0].status == dc.OK


def test_without_a_tracing_block_nothing_is_added():
    m = InMemoryMesh(mesh(None))
    c = m.connect()
    c.send(b"GET / HTTP/1.1\r\nHost: app\r\ntraceparent: " + TP + b"\r\n\r\n")
    [r] = m.upstream("backend").requests
    assert r.head.headers.get(b"traceparent") == TP and m.tracer is None
    assert [type(f).__name__ for f in m.streams[0].decoders] == ["Router"]


class _StopReactor(MemoryReactorClock):
    def callFromThread(self, f, *args):
        self.fromThread = (f, args)


def test_stop_is_bounded_when_the_collector_does_not_answer():
    """The flush runs in a thread; the service waits for it at most the export timeout and a second."""
    import threading
    gate = threading.Event()

    class Stuck:
        def on_start(self, span, parent_context=None):
            pass

        def on_end(self, span):
            pass

        def shutdown(self):
            gate.wait(5)

        def force_flush(self, timeout_millis=30000):
            return True

    reactor = _StopReactor()
    tracer = Tracer(loads(mesh("  exporter: otlp_http\n  export_timeout: 2s")).tracing, reactor, processor=Stuck())
    tracer.start()
    d = tracer.stop()
    assert not d.called
    reactor.advance(3)
    assert d.called and tracer.stop().called  # a second stop has nothing to do
    gate.set()


def test_schema_takes_the_tracing_block_and_the_access_log_shows_the_trace_id():
    import json
    from importlib import resources

    import jsonschema
    import yaml
    schema = json.loads(resources.files("txmesh").joinpath("mesh.schema.json").read_text())
    text = mesh("  exporter: otlp_grpc\n  endpoint: http://collector:4317\n  sampling_ratio: 0.25\n"
                "  propagation: [tracecontext, b3multi]\n  export_timeout: 2s\n  max_queue_size: 100")
    jsonschema.Draft202012Validator(schema).validate(yaml.safe_load(text))
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(schema).validate(yaml.safe_load(mesh("  exporter: zipkin")))
    m = InMemoryMesh(text)
    c = m.connect()
    c.send(b"GET / HTTP/1.1\r\nHost: app\r\ntraceparent: " + TP + b"\r\n\r\n")
    m.upstream("backend").requests[0].respond(200)
    [stream] = m.streams
    record = LogRecord(stream.streamInfo, stream.request, stream.streamInfo.endTime, None)
    line = TextFormat("%TRACE_ID% %REQ(TRACEPARENT)%").format(record)
    assert line.split() == ["%032x" % TRACE, "00-%032x-%016x-01" % (TRACE, spans(m)[0].context.span_id)]


def test_spawn_upstream_span_makes_the_client_span_the_parent_of_the_upstream_call():
    m = InMemoryMesh(mesh("  exporter: otlp_http\n  spawn_upstream_span: true"))
    m.clock.advance(10)
    c = m.connect()
    c.send(b"GET /a HTTP/1.1\r\nHost: app\r\ntraceparent: " + TP + b"\r\n\r\n")
    [r] = m.upstream("backend").requests
    m.clock.advance(0.5)
    r.respond(404)
    assert c.response().status == 404
    client, server = spans(m)
    sent, _ = extract(r.head.headers)
    assert (server.kind, server.parent.span_id, server.status.status_code) == (SpanKind.SERVER, SPAN, StatusCode.UNSET)
    assert (client.kind, client.parent.span_id, client.context.span_id) == (SpanKind.CLIENT, server.context.span_id,
                                                                            sent.spanId)
    a = client.attributes
    assert (a["http.request.method"], a["server.address"], a["server.port"], a["http.response.status_code"]) == (
        "GET", "10.0.0.1", 80, 404)
    assert client.status.status_code is StatusCode.ERROR  # a client's 4xx is an error, a server's is not
    assert (client.start_time, client.end_time) == (10 * 10**9, 10.5 * 10**9)
    assert m.streams[0].streamInfo.metadata["span_id"] == "%016x" % server.context.span_id


def test_an_upstream_span_without_an_answer_says_why_and_unsampled_requests_get_none():
    m = InMemoryMesh(mesh("  exporter: otlp_http\n  spawn_upstream_span: true"))
    m.upstream("backend").refuseConnections()
    c = m.connect()
    c.send(b"GET /a HTTP/1.1\r\nHost: app\r\n\r\n")
    assert c.response().status == 503
    client, server = spans(m)
    assert client.status.status_code is StatusCode.ERROR and "http.response.status_code" not in client.attributes
    assert client.attributes["error.type"] and server.attributes["http.response.status_code"] == 503
    m.upstream("backend").acceptConnections()
    c.send(b"GET /a HTTP/1.1\r\nHost: app\r\ntraceparent: " + TP[:-1] + b"0\r\n\r\n")
    [r] = m.upstream("backend").requests
    r.respond(200)
    assert len(spans(m)) == 2  # nothing recorded for the unsampled request
    assert extract(r.head.headers)[0].sampled is False


def test_spawn_upstream_span_must_be_a_boolean():
    with pytest.raises(ConfigError) as e:
        loads(mesh("  exporter: otlp_http\n  spawn_upstream_span: yes please"), "mesh.yaml")
    assert e.value.path == "tracing.spawn_upstream_span"


def test_export_outcomes_are_counted():
    from opentelemetry.sdk.trace.export import SpanExportResult

    from txmesh.stats import StatsStore
    from txmesh.tracer import CountingExporter

    class Collector:
        def __init__(self):
            self.answers = [SpanExportResult.SUCCESS, SpanExportResult.FAILURE, RuntimeError("down")]
            self.shut = False

        def export(self, spans):
            answer = self.answers.pop(0)
            if isinstance(answer, Exception):
                raise answer
            return answer

        def shutdown(self):
            self.shut = True

    stats = StatsStore()
    inner = Collector()
    exporter = CountingExporter(inner, stats)
    assert exporter.export([1, 2, 3]) is SpanExportResult.SUCCESS
    assert exporter.export([1]) is SpanExportResult.FAILURE
    assert exporter.export([1, 2]) is SpanExportResult.FAILURE  # an exporter that raises is a failed export
    exporter.shutdown()
    assert (stats.value("tracing_spans_exported"), stats.value("tracing_export_errors"),
            stats.value("tracing_spans_lost"), inner.shut) == (3, 2, 3, True)


def test_a_tracing_block_without_the_extra_installed_says_what_to_install(monkeypatch):
    import importlib.util

    from txmesh import tracing_config
    real = importlib.util.find_spec
    monkeypatch.setattr(tracing_config.importlib.util, "find_spec",
                        lambda name, *a: None if name.startswith("opentelemetry") else real(name, *a))
    with pytest.raises(ConfigError) as e:
        loads(mesh("  exporter: otlp_grpc"), "mesh.yaml")
    assert e.value.path == "tracing.exporter" and "pip install 'txmesh[tracing]'" in str(e.value)
    assert loads(mesh(None)).tracing is None  # no block: nothing is looked for
