"""
The ``tracing`` stream filter (issue 16 part 2; docs/tracing.md): the SERVER span of each request and the trace
context its upstream call carries.

The service puts it first on every listener when mesh.yaml has a ``tracing`` block (L{withTracing}); without one
it is not installed and no request pays anything.  On the request head it reads the caller's context (W3C
``traceparent``/``tracestate``, B3 single or multi: header fields, gRPC metadata, Dubbo attachments alike,
txmesh.trace_context), starts the span (the caller's span its parent; a new trace when there is no valid context)
and writes the span's context in the caller's formats and the configured ones, so the sidecar's span is the
parent of the upstream call.  The trace and span ids go to ``streamInfo.metadata`` (``trace_id``, ``span_id``:
the access log's ``%TRACE_ID%``).  When the stream ends, a sampled span gets the outcome's attributes (OpenTelemetry
semantic conventions: ``http.response.status_code``, ``rpc.grpc.status_code`` ...) and ends at the stream's end
time; the SDK's batch processor exports it from its own thread.
"""

from opentelemetry.trace import Status, StatusCode
from twisted.plugin import IPlugin
from zope.interface import implementer

from txmesh.config import FilterEntry
from txmesh.interfaces import (FilterStatus, IFilterFactory, IStreamDecoderFilter, IStreamEncoderFilter,
                               IStreamFilterEvents, StreamEvents)
from txmesh.protocols.h2 import grpc
from txmesh.trace_context import extract, inject

CONTINUE = FilterStatus.CONTINUE

# gRPC codes a server span reports as an error (the semantic conventions' list for SERVER spans)
_GRPC_SERVER_ERRORS = frozenset({grpc.UNKNOWN, grpc.DEADLINE_EXCEEDED, grpc.UNIMPLEMENTED, grpc.INTERNAL,
                                 grpc.UNAVAILABLE, 15})  # 15: DATA_LOSS
_DUBBO_OK = 20
_VERSIONS = {(1, 1): "1.1", (1, 0): "1.0", (2, 0): "2"}
_ERROR = StatusCode.ERROR


class TracingConfig:
    """
    What the filters of one listener share: the tracer, whether the listener speaks gRPC, whether each request
    gets a CLIENT span for its upstream exchange (``spawn_upstream_span``), the listener's tracing counters.
    """

    __slots__ = ("tracer", "grpc", "spawnUpstream", "sampled", "notSampled", "invalid")

    def __init__(self, tracer, grpc, spawnUpstream, scope):
        self.tracer = tracer
        self.grpc = grpc
        self.spawnUpstream = spawnUpstream
        self.sampled = scope.counter("tracing_requests_sampled", help="Requests whose span was recorded")
        self.notSampled = scope.counter("tracing_requests_not_sampled",
                                        help="Requests traced but not sampled (context passed on, nothing recorded)")
        self.invalid = scope.counter("tracing_context_invalid",
                                     help="Requests with trace fields but no valid context: a new trace was started")


def _hostPort(authority):
    host, sep, port = authority.rpartition(b":")
    if sep and port.isdigit() and not host.endswith(b"]") and b":" in host:
        return authority, None  # a bare IPv6 address
    if sep and port.isdigit():
        return host.strip(b"[]"), int(port)
    return authority, None


def spanName(request):
    """The span's name: ``interface/method`` (Dubbo), ``package.Service/Method`` (gRPC), the method (HTTP)."""
    protocol = request.protocol
    if protocol == "dubbo":
        meta = request.metadata
        return "%s/%s" % (meta.get("interface", ""), meta.get("method", ""))
    if protocol == "grpc":
        return request.pathOnly().decode("latin-1").lstrip("/")
    return request.method.decode("latin-1")


def rpcAttributes(request):
    """``rpc.*`` attributes of a gRPC or Dubbo request; None for HTTP."""
    protocol = request.protocol
    if protocol == "dubbo":
        meta = request.metadata
        attributes = {"rpc.system": "apache_dubbo", "rpc.system.name": "dubbo",
                      "rpc.service": meta.get("interface", ""), "rpc.method": meta.get("method", "")}
        if meta.get("version"):
            attributes["txmesh.dubbo.version"] = meta["version"]
        return attributes
    if protocol == "grpc":
        service, _, method = request.pathOnly().decode("latin-1").lstrip("/").partition("/")
        return {"rpc.system": "grpc", "rpc.system.name": "grpc", "rpc.service": service, "rpc.method": method}
    return None


def startAttributes(request, info):
    """The SERVER span's attributes known from the request head (OpenTelemetry semantic conventions)."""
    attributes = {"txmesh.listener": info.listenerName}
    peer = info.downstreamPeer
    if peer:
        attributes["client.address"] = peer.rpartition(":")[0].strip("[]") or peer
    rpc = rpcAttributes(request)
    if request.protocol != "dubbo" and request.authority:
        host, port = _hostPort(request.authority)
        attributes["server.address"] = host.decode("latin-1")
        if port is not None:
            attributes["server.port"] = port
    if rpc is not None:
        attributes.update(rpc)
        return attributes
    attributes.update({"http.request.method": request.method.decode("latin-1"),
                       "url.path": request.pathOnly().decode("latin-1"),
                       "url.scheme": request.scheme.decode("latin-1"),
                       "network.protocol.version": _VERSIONS.get(request.version, "1.1")})
    agent = request.headers.get(b"user-agent")
    if agent is not None:
        attributes["user_agent.original"] = agent.decode("latin-1")
    return attributes


def upstreamAttributes(request, upstreamHost):
    """A CLIENT span's attributes from the request (as forwarded) and the upstream host ('ip:port')."""
    attributes = rpcAttributes(request) or {"http.request.method": request.method.decode("latin-1")}
    if upstreamHost:
        host, _, port = upstreamHost.rpartition(":")
        attributes["server.address"] = host.strip("[]")
        if port.isdigit():
            attributes["server.port"] = int(port)
    return attributes


@implementer(IStreamDecoderFilter, IStreamFilterEvents)
class TracingFilter:
    """Per stream: see the module docstring.  First in the chain; it never holds an event."""

    streamEvents = (StreamEvents.DECODE_HEADERS | StreamEvents.DECODER_CALLBACKS | StreamEvents.STREAM_COMPLETE
                    | StreamEvents.STREAM_RESET)

    __slots__ = ("config", "callbacks", "span", "reset", "upstreamSpanId")

    def __init__(self, config):
        self.config = config
        self.callbacks = None
        self.span = None
        self.reset = None
        self.upstreamSpanId = None  # with spawn_upstream_span: the CLIENT span's id, sent upstream

    def setDecoderFilterCallbacks(self, callbacks):
        self.callbacks = callbacks

    def decodeHeaders(self, request, endStream):
        info = self.callbacks.streamInfo
        tracer = self.config.tracer
        parent, present = extract(request.headers)
        span = self.span = tracer.startSpan(spanName(request), parent, info.startTime, None)
        context = span.get_span_context()
        sent = context.span_id
        config = self.config
        if parent is None and present:
            config.invalid.value += 1
        if span.is_recording():  # an unsampled request pays for no attributes (and gets no CLIENT span)
            config.sampled.value += 1
            span.set_attributes(startAttributes(request, info))
            if config.spawnUpstream:
                sent = self.upstreamSpanId = tracer.newSpanId()
        else:
            config.notSampled.value += 1
        inject(request.headers, context.trace_id, sent, context.trace_flags.sampled, parent,
               present | tracer.propagation)
        metadata = info.metadata
        metadata["trace_id"] = "%032x" % (context.trace_id,)
        metadata["span_id"] = "%016x" % (context.span_id,)
        return CONTINUE

    def decodeData(self, data, endStream):
        return CONTINUE

    def decodeTrailers(self, trailers):
        return CONTINUE

    def onStreamReset(self, reason):
        self.reset = reason if isinstance(reason, str) else str(reason)

    def grpcStatus(self):
        """The call's grpc-status (gRPC listeners only: L{GrpcTracingFilter})."""
        return None

    def outcome(self, request, info, client):
        """
        The response's status attributes and the error it is for a SERVER (``client`` false) or CLIENT span (the
        semantic conventions: a server's HTTP error is >= 500, a client's >= 400; gRPC servers list their codes,
        every code but OK fails a client), or None.
        """
        code = info.responseCode
        attributes = {}
        error = None
        protocol = request.protocol
        if protocol == "grpc":
            status = self.grpcStatus()
            if status is not None:
                attributes["rpc.grpc.status_code"] = status
                if status in _GRPC_SERVER_ERRORS or (client and status != grpc.OK):
                    error = str(status)
        elif protocol == "dubbo":
            if code is not None:
                attributes["rpc.response.status_code"] = str(code)
                if code != _DUBBO_OK:
                    error = str(code)
        elif code is not None:
            attributes["http.response.status_code"] = code
            if code >= (400 if client else 500):
                error = str(code)
        return attributes, error

    def onStreamComplete(self):
        span = self.span
        if span is None or not span.is_recording():
            return
        cb = self.callbacks
        info = cb.streamInfo
        request = cb.request
        attributes, error = self.outcome(request, info, False)
        if info.routeName:
            attributes["txmesh.route"] = info.routeName
        if info.clusterName:
            attributes["txmesh.cluster"] = info.clusterName
        if info.upstreamHost:
            attributes["txmesh.upstream.host"] = info.upstreamHost
        if info.responseFlags:
            attributes["txmesh.response_flags"] = ",".join(sorted(info.responseFlags))
        if info.attemptCount > 1:
            attributes["txmesh.upstream.attempts"] = info.attemptCount
        details = info.responseCodeDetails
        if self.reset is not None and error is None:
            error = self.reset
        if error is not None:
            attributes["error.type"] = details or error
            span.set_status(Status(_ERROR, details or error))
        span.set_attributes(attributes)
        end = info.endTime
        if self.upstreamSpanId is not None and info.attemptCount:
            self.endUpstreamSpan(request, info, end)
        span.end(end_time=int(end * 1e9) if end is not None else None)

    def endUpstreamSpan(self, request, info, end):
        """
        The CLIENT span of the upstream exchange (``spawn_upstream_span``): from when the (last) attempt's request
        was written upstream (its arrival, if no connection was had) to the end of the upstream response.
        """
        answered = info.upstreamFirstByteTime is not None
        attributes, error = self.outcome(request, info, True) if answered else ({}, None)
        attributes.update(upstreamAttributes(request, info.upstreamHost))
        if info.attemptCount > 1:
            if "http.request.method" in attributes:
                attributes["http.request.resend_count"] = info.attemptCount - 1
            else:
                attributes["txmesh.upstream.attempts"] = info.attemptCount
        if not answered:
            error = info.upstreamFailureReason or info.responseCodeDetails or self.reset or "no_response"
        start = info.upstreamStartTime if info.upstreamStartTime is not None else info.startTime
        client = self.config.tracer.startUpstreamSpan(spanName(request), self.span, self.upstreamSpanId, start,
                                                      attributes)
        if error is not None:
            client.set_attribute("error.type", error)
            client.set_status(Status(_ERROR, error))
        if info.upstreamEndTime is not None:
            end = info.upstreamEndTime
        client.end(end_time=int(end * 1e9) if end is not None else None)


@implementer(IStreamDecoderFilter, IStreamEncoderFilter, IStreamFilterEvents)
class GrpcTracingFilter(TracingFilter):
    """On a ``grpc`` listener: also reads the call's grpc-status (trailers, or a trailers-only response's head)."""

    streamEvents = TracingFilter.streamEvents | StreamEvents.ENCODE_HEADERS | StreamEvents.ENCODE_TRAILERS

    __slots__ = ("status",)

    def __init__(self, config):
        TracingFilter.__init__(self, config)
        self.status = None

    def setEncoderFilterCallbacks(self, callbacks):
        pass

    def encodeHeaders(self, response, endStream):
        value = response.headers.get(b"grpc-status")
        if value is not None:
            self.status = value
        elif response.status != 200:
            self.status = b"%d" % (grpc.statusForHTTP(response.status),)
        return CONTINUE

    def encodeData(self, data, endStream):
        return CONTINUE

    def encodeTrailers(self, trailers):
        value = trailers.get(b"grpc-status")
        if value is not None:
            self.status = value
        return CONTINUE

    def grpcStatus(self):
        value = self.status
        if value is None:
            return grpc.CANCELLED if self.reset is not None and self.reset.startswith("downstream") else None
        return int(value) if value.isdigit() and len(value) <= 2 else grpc.UNKNOWN


@implementer(IFilterFactory, IPlugin)
class TracingFactory:
    """
    The ``tracing`` filter kind.  Not listed in mesh.yaml: the service installs it on every listener when the
    ``tracing`` block exists (L{withTracing}); its config is a L{TracingConfig}.
    """

    name = "tracing"
    kind = "stream"
    protocols = frozenset({"http", "grpc", "dubbo"})
    terminal = False

    def buildConfig(self, raw, context):
        raise context.error("tracing is configured by the top-level 'tracing' block, not as a listener filter")

    def createFilters(self, config, callbacks, runtime):
        if config.grpc:
            callbacks.addStreamFilter(GrpcTracingFilter(config))
        else:
            callbacks.addStreamDecoderFilter(TracingFilter(config))


def withTracing(listenerConfig, tracer, stats):
    """
    A listener's filter entries, with the tracing filter first when ``tracer`` (an ITracer) is not None; its
    counters go to ``stats`` (a StatsStore), labelled with the listener.
    """
    if tracer is None:
        return listenerConfig.filters
    config = TracingConfig(tracer, listenerConfig.protocol == "grpc", tracer.config.spawnUpstreamSpan,
                           stats.scope(listener=listenerConfig.name))
    return (FilterEntry("tracing", TracingFactory(), config),) + tuple(listenerConfig.filters)
