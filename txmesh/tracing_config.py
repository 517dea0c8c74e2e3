"""
The top-level ``tracing`` block of mesh.yaml (docs/tracing.md, docs/configuration.md): where spans go (OTLP over
HTTP or gRPC to a collector), what share of new traces is sampled, which trace-context formats every upstream
request carries.  Without the block nothing is traced and no request pays for it.
"""

import importlib.util
from dataclasses import dataclass
from urllib.parse import urlsplit

from txmesh.trace_context import FORMAT_NAMES, TRACECONTEXT

EXPORTERS = {
    # exporter -> (the module it needs, the collector's default endpoint)
    "otlp_http": ("opentelemetry.exporter.otlp.proto.http.trace_exporter", "http://127.0.0.1:4318/v1/traces"),
    "otlp_grpc": ("opentelemetry.exporter.otlp.proto.grpc.trace_exporter", "http://127.0.0.1:4317"),
}
KEYS = ("exporter", "endpoint", "service_name", "sampling_ratio", "propagation", "export_timeout", "schedule_delay",
        "max_queue_size", "max_export_batch_size", "spawn_upstream_span")


@dataclass(frozen=True, slots=True)
class TracingConfig:
    """
    @ivar exporter: ``otlp_http`` or ``otlp_grpc``.
    @ivar endpoint: the collector: an http(s) URL (``otlp_http``: the whole URL, path included; ``otlp_grpc``:
        scheme, host and port, ``http`` meaning without TLS).
    @ivar serviceName: the ``service.name`` resource attribute of every span.
    @ivar samplingRatio: the share of new traces sampled (0 to 1); a caller's decision is always kept.
    @ivar propagation: the formats (txmesh.trace_context flags) written on every upstream request, beside those
        the request came with.
    @ivar exportTimeout: seconds one export may take (also bounds the flush when the sidecar stops).
    @ivar scheduleDelay: seconds between two exports of the batch processor.
    @ivar maxQueueSize: spans kept waiting for export; past it new spans are dropped (and counted by the SDK).
    @ivar maxExportBatchSize: spans per export request.
    @ivar spawnUpstreamSpan: also a CLIENT span for the upstream exchange, child of the SERVER span and parent of
        the upstream call (Envoy's ``spawn_upstream_span``).
    """

    exporter: str = "otlp_http"
    endpoint: str = EXPORTERS["otlp_http"][1]
    serviceName: str = "txmesh"
    samplingRatio: float = 1.0
    propagation: int = TRACECONTEXT
    exportTimeout: float = 5.0
    scheduleDelay: float = 1.0
    maxQueueSize: int = 2048
    maxExportBatchSize: int = 512
    spawnUpstreamSpan: bool = False


def buildTracing(r, raw):
    """The ``tracing`` block as a TracingConfig, or None when absent.  @raise ConfigError: file, line, key path."""
    if raw.get("tracing") is None:
        return None
    m = r.mapping(raw.get("tracing"), "tracing", required=("exporter",), optional=KEYS[1:])
    exporter = r.get(m, "tracing", "exporter", str)
    if exporter not in EXPORTERS:
        raise r.error("unknown exporter '%s' (known: %s)" % (exporter, ", ".join(sorted(EXPORTERS))),
                      "tracing.exporter")
    module, defaultEndpoint = EXPORTERS[exporter]
    if importlib.util.find_spec("opentelemetry") is None or importlib.util.find_spec(module) is None:
        raise r.error("needs the OpenTelemetry SDK and OTLP exporters: pip install 'txmesh[tracing]'",
                      "tracing.exporter")
    endpoint = r.get(m, "tracing", "endpoint", str, defaultEndpoint)
    url = urlsplit(endpoint)
    try:
        port = url.port
    except ValueError:
        port = -1
    if url.scheme not in ("http", "https") or not url.hostname or port == -1:
        raise r.error("must be an http:// or https:// URL with a host (got '%s')" % (endpoint,), "tracing.endpoint")
    if exporter == "otlp_grpc" and url.path not in ("", "/"):
        raise r.error("an otlp_grpc endpoint is scheme://host:port, without a path (got '%s')" % (endpoint,),
                      "tracing.endpoint")
    serviceName = r.get(m, "tracing", "service_name", str, "txmesh")
    if not serviceName:
        raise r.error("must not be empty", "tracing.service_name")
    propagation = TRACECONTEXT
    names = r.list(m, "tracing", "propagation")
    if names:
        propagation = 0
        for i, name in enumerate(names):
            path = "tracing.propagation[%d]" % (i,)
            if not isinstance(name, str) or name not in FORMAT_NAMES:
                raise r.error("unknown format %r (known: %s)" % (name, ", ".join(FORMAT_NAMES)), path)
            propagation |= FORMAT_NAMES[name]
    exportTimeout = r.duration(m, "tracing", "export_timeout", 5.0)
    if not 0.1 <= exportTimeout <= 60:
        raise r.error("must be between 100ms and 60s", "tracing.export_timeout")
    scheduleDelay = r.duration(m, "tracing", "schedule_delay", 1.0)
    if not 0.01 <= scheduleDelay <= 60:
        raise r.error("must be between 10ms and 60s", "tracing.schedule_delay")
    maxQueueSize = r.integer(m, "tracing", "max_queue_size", 2048, 1, 1 << 20)
    batch = r.integer(m, "tracing", "max_export_batch_size", min(512, maxQueueSize), 1, 1 << 20)
    if batch > maxQueueSize:
        raise r.error("must not exceed max_queue_size (%d), got %d" % (maxQueueSize, batch),
                      "tracing.max_export_batch_size")
    return TracingConfig(exporter=exporter, endpoint=endpoint, serviceName=serviceName,
                         samplingRatio=r.number(m, "tracing", "sampling_ratio", 1.0, 0.0, 1.0),
                         propagation=propagation, exportTimeout=exportTimeout, scheduleDelay=scheduleDelay,
                         maxQueueSize=maxQueueSize, maxExportBatchSize=batch,
                         spawnUpstreamSpan=r.get(m, "tracing", "spawn_upstream_span", bool, False))
