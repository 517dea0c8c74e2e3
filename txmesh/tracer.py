"""
Spans over the OpenTelemetry SDK (docs/tracing.md): one TracerProvider per running mesh (never the process-wide
global one), its sampler, and a BatchSpanProcessor feeding an OTLP exporter (HTTP/protobuf or gRPC) to the
collector the ``tracing`` block names.

The SDK's batch processor exports from a thread of its own, so the reactor only hands it finished spans (an append
to a deque).  ``stop`` flushes what is queued and joins that thread from another daemon thread, and the service
waits for it at most the export timeout and a second: a collector that is down cannot hold the shutdown.  The SDK
is imported here only, when a ``tracing`` block exists (``txmesh[tracing]``).
"""

import threading

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult, TraceIdRatioBased

import txmesh
from txmesh.interfaces import ITracer

_SAMPLED = trace.TraceFlags(trace.TraceFlags.SAMPLED)
_NOT_SAMPLED = trace.TraceFlags(trace.TraceFlags.DEFAULT)


class MeshSampler(Sampler):
    """
    The caller's decision when it made one (W3C's sampled flag, B3's sampling state, even without ids), else
    ``TraceIdRatioBased(ratio)`` on the trace id (a new trace, or B3 ids that left the decision to us).  The
    decision for the span being started is handed over in ``forced`` just before ``start_span`` (the reactor
    thread is the only one starting spans).
    """

    def __init__(self, ratio):
        self.ratio = TraceIdRatioBased(ratio)
        self.forced = None

    def should_sample(self, parent_context, trace_id, name, kind=None, attributes=None, links=None,
                      trace_state=None):
        forced = self.forced
        if forced is None:
            return self.ratio.should_sample(parent_context, trace_id, name, kind, attributes, links)
        state = trace.get_current_span(parent_context).get_span_context().trace_state
        return SamplingResult(Decision.RECORD_AND_SAMPLE if forced else Decision.DROP, attributes, state)

    def get_description(self):
        return "MeshSampler{%s}" % (self.ratio.get_description(),)


class MeshIdGenerator(RandomIdGenerator):
    """The SDK's random ids, except a span id chosen before the span (``forced``, set just before ``start_span``)."""

    def __init__(self):
        self.forced = None

    def generate_span_id(self):
        forced = self.forced
        if forced is not None:
            self.forced = None
            return forced
        return RandomIdGenerator.generate_span_id(self)


class CountingExporter(SpanExporter):
    """
    The OTLP exporter, counting what became of each batch (``tracing_spans_exported``, ``tracing_export_errors``,
    ``tracing_spans_lost``).  Runs in the batch processor's thread, the only one writing these counters.
    """

    def __init__(self, exporter, stats):
        self.exporter = exporter
        self.exported = stats.counter("tracing_spans_exported", (), "Spans the collector took")
        self.errors = stats.counter("tracing_export_errors", (),
                                    "Exports that failed (collector down, refused, timed out): their spans are lost")
        self.lost = stats.counter("tracing_spans_lost", (), "Spans of failed exports")

    def export(self, spans):
        try:
            result = self.exporter.export(spans)
        except Exception:
            result = SpanExportResult.FAILURE
        if result is SpanExportResult.SUCCESS:
            self.exported.value += len(spans)
        else:
            self.errors.value += 1
            self.lost.value += len(spans)
        return result

    def shutdown(self):
        self.exporter.shutdown()

    def force_flush(self, timeout_millis=30000):
        return self.exporter.force_flush(timeout_millis)


def makeExporter(config):
    """The OTLP span exporter the config names (its module imported only now)."""
    if config.exporter == "otlp_grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        insecure = config.endpoint.startswith("http://")
        return OTLPSpanExporter(endpoint=config.endpoint.split("://", 1)[1], insecure=insecure,
                                timeout=config.exportTimeout)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    return OTLPSpanExporter(endpoint=config.endpoint, timeout=config.exportTimeout)


@implementer(ITracer)
class Tracer:
    """
    See L{ITracer}.

    @param config: the txmesh.tracing_config.TracingConfig.
    @param reactor: the IReactorTime and IReactorThreads the stop's bound is timed on and its end reported to.
    @param node: the NodeConfig (its id is the ``service.instance.id`` resource attribute).
    @param processor: an SDK SpanProcessor instead of the batch processor over the configured exporter (tests).
    @param stats: the StatsStore the export counters go to (L{CountingExporter}), or None.
    """

    log = Logger()

    def __init__(self, config, reactor, node=None, processor=None, stats=None):
        self.config = config
        self.stats = stats
        self.reactor = reactor
        self.propagation = config.propagation
        self.sampler = MeshSampler(config.samplingRatio)
        self.ids = MeshIdGenerator()
        attributes = {"service.name": config.serviceName, "service.version": txmesh.__version__}
        if node is not None:
            attributes["service.instance.id"] = node.id
        self._resource = Resource.create(attributes)
        self._processor = processor
        self._provider = None
        self._tracer = None

    def start(self):
        if self._provider is not None:
            return
        config = self.config
        processor = self._processor
        if processor is None:
            exporter = makeExporter(config)
            if self.stats is not None:
                exporter = CountingExporter(exporter, self.stats)
            processor = self._processor = BatchSpanProcessor(
                exporter, max_queue_size=config.maxQueueSize,
                schedule_delay_millis=config.scheduleDelay * 1000, max_export_batch_size=config.maxExportBatchSize,
                export_timeout_millis=config.exportTimeout * 1000)
        # shutdown_on_exit=False: stop() flushes, bounded; an atexit flush could wait on a dead collector
        self._provider = TracerProvider(sampler=self.sampler, resource=self._resource, shutdown_on_exit=False,
                                        id_generator=self.ids)
        self._provider.add_span_processor(processor)
        self._tracer = self._provider.get_tracer("txmesh", txmesh.__version__)

    def startSpan(self, name, parent, startTime, attributes):
        context = None
        sampled = None
        if parent is not None:
            sampled = parent.sampled
            if parent.traceId is not None:
                if sampled is None:  # B3 ids without a decision: ours, by the ratio on the caller's trace id
                    sampled = self.sampler.ratio.should_sample(None, parent.traceId, name).decision.is_sampled()
                state = trace.TraceState(parent.traceState) if parent.traceState else None
                remote = trace.SpanContext(parent.traceId, parent.spanId, True, _SAMPLED if sampled else _NOT_SAMPLED,
                                           state)
                context = trace.set_span_in_context(trace.NonRecordingSpan(remote))
        sampler = self.sampler
        sampler.forced = sampled
        try:
            return self._tracer.start_span(name, context, trace.SpanKind.SERVER, attributes,
                                           start_time=int(startTime * 1e9))
        finally:
            sampler.forced = None

    def newSpanId(self):
        return RandomIdGenerator.generate_span_id(self.ids)

    def startUpstreamSpan(self, name, server, spanId, startTime, attributes):
        context = trace.set_span_in_context(server)
        sampler = self.sampler
        sampler.forced = True  # the SERVER span records: so does its child
        self.ids.forced = spanId
        try:
            return self._tracer.start_span(name, context, trace.SpanKind.CLIENT, attributes,
                                           start_time=int(startTime * 1e9))
        finally:
            sampler.forced = None
            self.ids.forced = None

    def stop(self):
        provider, self._provider = self._provider, None
        if provider is None:
            return defer.succeed(None)
        d = defer.Deferred()
        reactor = self.reactor

        def flush():
            try:
                provider.shutdown()
            except Exception:
                self.log.failure("tracing: flushing spans failed")
            reactor.callFromThread(fired)

        def fired():
            if not d.called:
                d.callback(None)

        def late():
            if not d.called:
                self.log.warn("tracing: the collector did not take the last spans within {t}s; not waiting longer",
                              t=bound)
                d.callback(None)

        bound = self.config.exportTimeout + 1.0
        timer = reactor.callLater(bound, late)
        d.addBoth(lambda r: timer.cancel() if timer.active() else None)
        threading.Thread(target=flush, name="txmesh-tracing-stop", daemon=True).start()
        return d
