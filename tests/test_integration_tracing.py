"""
One trace across HTTP -> gRPC -> Dubbo through three txmesh sidecars (twistd), each exporting its spans to a real
OTLP receiver in this test: the OpenTelemetry protocol's published protobufs (``opentelemetry-proto``) behind an
HTTP server (``/v1/traces``, sidecars 1 and 3, ``otlp_http``) and a grpcio server (TraceService, sidecar 2,
``otlp_grpc``).

    python client --HTTP--> sidecar 1 --> HTTP app --gRPC (grpcio)--> sidecar 2 --> gRPC app
        --Dubbo (sofa-rpc-node consumer)--> sidecar 3 --> sofa-rpc-node provider

The apps pass the context they received on, as instrumented apps do; sidecar 2 also records the CLIENT span of its
upstream call (``spawn_upstream_span``).  The test checks that the ids every app saw
(headers, gRPC metadata, Dubbo attachments in the keys Brave's and OpenTelemetry's Dubbo filters read) are those of
the spans the receivers got, each sidecar's span the child of its caller's.  Skipped without node or the peers.
"""

import http.client
import http.server
import json
import os
import shutil
import subprocess
import threading
import time
from concurrent import futures

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from tests import support

PEERS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dubbo_peers")
NODE = shutil.which("node")

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(NODE is None, reason="node is not installed"),
    pytest.mark.skipif(not os.path.isdir(os.path.join(PEERS, "node_modules", "sofa-rpc-node")),
                       reason="Dubbo peers not installed (run `npm ci` in tests/dubbo_peers)"),
]

CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"


class Receiver:
    """The spans the OTLP receivers decoded: [(service.name, span protobuf)]."""

    def __init__(self):
        self.spans = []
        self.lock = threading.Lock()
        self.requests = {"http": 0, "grpc": 0}

    def take(self, request, kind):
        with self.lock:
            self.requests[kind] += 1
            for rs in request.resource_spans:
                service = {a.key: a.value.string_value for a in rs.resource.attributes}.get("service.name")
                for ss in rs.scope_spans:
                    for span in ss.spans:
                        self.spans.append((service, span))

    def of(self, service):
        with self.lock:
            return [s for name, s in self.spans if name == service]


def startHttpReceiver(receiver):
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            ok = self.path == "/v1/traces" and self.headers["Content-Type"] == "application/x-protobuf"
            if ok:
                request = trace_service_pb2.ExportTraceServiceRequest()
                request.ParseFromString(body)
                receiver.take(request, "http")
            reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
            self.send_response(200 if ok else 404)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


class GrpcReceiver(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, receiver):
        self.receiver = receiver

    def Export(self, request, context):
        self.receiver.take(request, "grpc")
        return trace_service_pb2.ExportTraceServiceResponse()


SIDECAR = """
admin:
  address: tcp:{admin}:interface=127.0.0.1
tracing:
  exporter: {exporter}
  endpoint: {endpoint}
  service_name: {name}
  schedule_delay: 100ms
  propagation: {propagation}
  spawn_upstream_span: {spawn}
listeners:
  - name: in
    protocol: {protocol}
    address: tcp:{listen}:interface=127.0.0.1
    route_config:
      virtual_hosts:
        - name: all
          domains: ["*"]
          routes: [{{match: {match}, route: {{cluster: app, timeout: 10s}}}}]
clusters:
  - name: app
    protocol: {cluster}
    endpoints: [{{address: "127.0.0.1:{app}"}}]
"""


def sidecar(name, protocol, cluster, match, app, exporter, endpoint, propagation="[tracecontext]", spawn=False):
    admin, listen = support.freePort(), support.freePort()
    proc = support.startTxmesh(SIDECAR.format(admin=admin, listen=listen, name=name, protocol=protocol,
                                              cluster=cluster, match=match, app=app, exporter=exporter,
                                              endpoint=endpoint, propagation=propagation,
                                              spawn="true" if spawn else "false"), admin)
    support.waitForPort(listen, proc=proc.popen)
    proc.admin = admin
    return proc, listen


def grpcApp(port, dubboSidecar, seen):
    """The gRPC app: records its metadata, calls the Dubbo service with the context it got (a real consumer)."""

    def call(request, context):
        metadata = dict(context.invocation_metadata())
        seen["grpc"] = metadata
        attachments = {"traceparent": metadata["traceparent"]}
        out = subprocess.run([NODE, os.path.join(PEERS, "traced_consumer.js"), "127.0.0.1:%d" % dubboSidecar,
                              json.dumps(attachments)], cwd=PEERS, capture_output=True, timeout=20, text=True)
        return out.stdout.strip().splitlines()[-1].encode()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "test.App", {"Call": grpc.unary_unary_rpc_method_handler(call)}),))
    server.add_insecure_port("127.0.0.1:%d" % port)
    server.start()
    return server


def httpApp(grpcSidecar, seen):
    """The HTTP app: records its headers, calls the gRPC app through its sidecar with the context it got."""
    channel = grpc.insecure_channel("127.0.0.1:%d" % grpcSidecar)
    stub = channel.unary_unary("/test.App/Call")

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            seen["http"] = {k.lower(): v for k, v in self.headers.items()}
            answer = stub(b"go", metadata=(("traceparent", self.headers["traceparent"]),), timeout=15)
            self.send_response(200)
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, channel


def parse(traceparent):
    version, trace, span, flags = traceparent.split("-")
    return trace, span, flags


def test_one_trace_across_http_grpc_and_dubbo_sidecars_reaches_otlp_receivers():
    receiver = Receiver()
    otlpHttp = startHttpReceiver(receiver)
    otlpGrpc = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(GrpcReceiver(receiver), otlpGrpc)
    grpcReceiverPort = otlpGrpc.add_insecure_port("127.0.0.1:0")
    otlpGrpc.start()
    httpEndpoint = "http://127.0.0.1:%d/v1/traces" % otlpHttp.server_address[1]
    seen = {}
    procs = []
    started = time.monotonic()
    providerPort = support.freePort()
    provider = support.Proc([NODE, os.path.join(PEERS, "traced_provider.js"), str(providerPort)], cwd=PEERS)
    procs.append(provider)
    grpcServer = httpServer = channel = None
    try:
        support.waitForPort(providerPort, proc=provider.popen)
        s3, dubboPort = sidecar("sidecar-dubbo", "dubbo", "dubbo", "{dubbo: {interface: org.txmesh.peers.*}}",
                                providerPort, "otlp_http", httpEndpoint, "[tracecontext, b3multi]")
        procs.append(s3)
        grpcAppPort = support.freePort()
        grpcServer = grpcApp(grpcAppPort, dubboPort, seen)
        s2, grpcPort = sidecar("sidecar-grpc", "grpc", "grpc", "{prefix: /}", grpcAppPort, "otlp_grpc",
                               "http://127.0.0.1:%d" % grpcReceiverPort, spawn=True)
        procs.append(s2)
        httpServer, channel = httpApp(grpcPort, seen)
        s1, httpPort = sidecar("sidecar-http", "http", "http1", "{prefix: /}", httpServer.server_address[1],
                               "otlp_http", httpEndpoint)
        procs.append(s1)

        conn = http.client.HTTPConnection("127.0.0.1", httpPort, timeout=20)
        conn.request("GET", "/checkout", headers={"traceparent": "00-%s-%s-01" % (CLIENT_TRACE, CLIENT_SPAN),
                                                  "tracestate": "vendor=opaque"})
        response = conn.getresponse()
        body = response.read()
        assert response.status == 200, body
        attachments = json.loads(json.loads(body)["ok"])

        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not all(
                receiver.of(s) for s in ("sidecar-http", "sidecar-grpc", "sidecar-dubbo")):
            time.sleep(0.05)
        [a] = receiver.of("sidecar-http")
        # sidecar 2 has spawn_upstream_span: its SERVER span and the CLIENT span of its upstream call
        b, bc = sorted(receiver.of("sidecar-grpc"), key=lambda span: span.kind)
        [c] = receiver.of("sidecar-dubbo")
        assert receiver.requests["http"] >= 2 and receiver.requests["grpc"] >= 1  # both exporters were used
        stats = json.loads(support.adminGet(s2.admin, "/stats")[1])
        assert sum(x["value"] for x in stats["tracing_spans_exported"]) == 2
        assert sum(x["value"] for x in stats["tracing_requests_sampled"]) == 1

        # one trace, started by the client: every span and every app saw its id
        for span in (a, b, c):
            assert span.trace_id.hex() == CLIENT_TRACE and span.kind == span.SPAN_KIND_SERVER
        bca = {kv.key: kv.value for kv in bc.attributes}
        assert (bca["server.address"].string_value, bca["server.port"].int_value,
                bca["rpc.grpc.status_code"].int_value) == ("127.0.0.1", grpcAppPort, 0)
        httpSeen, grpcSeen, dubboSeen = (parse(seen["http"]["traceparent"]), parse(seen["grpc"]["traceparent"]),
                                         parse(attachments["traceparent"]))
        assert {httpSeen[0], grpcSeen[0], dubboSeen[0]} == {CLIENT_TRACE}
        # each sidecar's span is the parent of the call it forwarded, and the child of its caller's span
        assert a.parent_span_id.hex() == CLIENT_SPAN and httpSeen[1] == a.span_id.hex()
        assert b.parent_span_id.hex() == a.span_id.hex() and bc.parent_span_id.hex() == b.span_id.hex()
        assert (b.kind, bc.kind, bc.trace_id.hex()) == (b.SPAN_KIND_SERVER, b.SPAN_KIND_CLIENT, CLIENT_TRACE)
        assert grpcSeen[1] == bc.span_id.hex()
        assert c.parent_span_id.hex() == bc.span_id.hex() and dubboSeen[1] == c.span_id.hex()
        assert (httpSeen[2], grpcSeen[2], dubboSeen[2]) == ("01", "01", "01")
        assert seen["http"]["tracestate"] == "vendor=opaque" and a.trace_state == "vendor=opaque"
        # Brave's Dubbo filter reads these keys, case-sensitively
        assert (attachments["X-B3-TraceId"], attachments["X-B3-SpanId"], attachments["X-B3-ParentSpanId"],
                attachments["X-B3-Sampled"]) == (CLIENT_TRACE, c.span_id.hex(), bc.span_id.hex(), "1")

        def attrs(span):
            return {kv.key: kv.value for kv in span.attributes}
        aa, ba, ca = attrs(a), attrs(b), attrs(c)
        assert (aa["http.request.method"].string_value, aa["url.path"].string_value,
                aa["http.response.status_code"].int_value) == ("GET", "/checkout", 200)
        assert (ba["rpc.system"].string_value, ba["rpc.service"].string_value, ba["rpc.method"].string_value,
                ba["rpc.grpc.status_code"].int_value) == ("grpc", "test.App", "Call", 0)
        assert (ca["rpc.system"].string_value, ca["rpc.service"].string_value, ca["rpc.method"].string_value,
                ca["rpc.response.status_code"].string_value) == ("apache_dubbo", "org.txmesh.peers.EchoService",
                                                                 "attachments", "20")
        # nested in time: each caller's span covers its callee's
        assert a.start_time_unix_nano <= b.start_time_unix_nano <= c.start_time_unix_nano
        assert c.end_time_unix_nano <= b.end_time_unix_nano <= a.end_time_unix_nano
        assert b.start_time_unix_nano <= bc.start_time_unix_nano <= c.start_time_unix_nano
        assert c.end_time_unix_nano <= bc.end_time_unix_nano <= b.end_time_unix_nano
        assert time.monotonic() - started < 20
    finally:
        for p in reversed(procs):
            p.stop()
        if channel is not None:
            channel.close()
        if httpServer is not None:
            httpServer.shutdown()
        if grpcServer is not None:
            grpcServer.stop(0)
        otlpGrpc.stop(0)
        otlpHttp.shutdown()


EDGE = """
admin:
  address: tcp:{admin}:interface=127.0.0.1
drain_timeout: 2s
tracing:
  exporter: otlp_http
  endpoint: {endpoint}
  service_name: edge
  schedule_delay: 60s
  export_timeout: 1s
listeners:
  - name: in
    protocol: http
    address: tcp:{listen}:interface=127.0.0.1
    route_config:
      virtual_hosts:
        - {{name: all, domains: ["*"], routes: [{{match: {{prefix: /}}, route: {{cluster: app}}}}]}}
clusters:
  - name: app
    endpoints: [{{address: "127.0.0.1:{app}"}}]
"""


def plainApp():
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def edgeCall(endpoint, app):
    """A sidecar exporting to ``endpoint`` once a minute; one request through it.  @return: the sidecar."""
    admin, listen = support.freePort(), support.freePort()
    proc = support.startTxmesh(EDGE.format(admin=admin, listen=listen, endpoint=endpoint, app=app), admin)
    support.waitForPort(listen, proc=proc.popen)
    conn = http.client.HTTPConnection("127.0.0.1", listen, timeout=10)
    conn.request("GET", "/x")
    assert conn.getresponse().status == 204
    conn.close()
    return proc


def stopTimed(proc):
    started = time.monotonic()
    assert proc.stop(timeout=15) in (0, -15), proc.output()  # twistd ends with the signal that stopped it
    return time.monotonic() - started


def test_spans_still_queued_are_exported_when_the_sidecar_stops():
    receiver = Receiver()
    otlp = startHttpReceiver(receiver)
    app = plainApp()
    proc = None
    try:
        proc = edgeCall("http://127.0.0.1:%d/v1/traces" % otlp.server_address[1], app.server_address[1])
        time.sleep(0.3)
        assert receiver.of("edge") == []  # the next export is a minute away
        assert stopTimed(proc) < 5
        [span] = receiver.of("edge")
        assert span.name == "GET" and span.kind == span.SPAN_KIND_SERVER
    finally:
        if proc is not None:
            proc.stop()
        app.shutdown()
        otlp.shutdown()


def test_a_collector_that_never_answers_does_not_hold_the_shutdown():
    import socket
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # connections are accepted by the kernel, never answered
    app = plainApp()
    proc = None
    try:
        proc = edgeCall("http://127.0.0.1:%d/v1/traces" % silent.getsockname()[1], app.server_address[1])
        # export_timeout 1s: the flush is given at most 2s
        assert stopTimed(proc) < 6
    finally:
        if proc is not None:
            proc.stop()
        app.shutdown()
        silent.close()
