"""
The ``access_log`` stream filter: one line per request, Envoy-like text or JSON, written when the stream completes.

Lines are buffered by an L{AccessLogWriter} (one per config build, so one open file) and written out by a clock
timer at most a second after the first buffered line, when the buffer holds ``maxBufferedLines``, and at
shutdown (the service calls ``config.writer.close()``).  The built-in ``text`` and ``json`` lines log a fixed
set of fields (no header value other than the authority, the user agent and the request id); a ``format`` string
or a ``json_format`` mapping of Envoy's command operators (txmesh.filters.access_log_format) is compiled once, at
load, and logs what the operator chose.

A file log is reopened (flush, close, open the same path again for appending) when the service asks, on
SIGUSR1 or an admin ``POST /reopen_logs``, so logrotate can rename it without ``copytruncate``: the config
registers its writer with the runtime's reopenable-files registry (L{AccessLogConfig.registerFiles}).  stdout
is never reopened.
"""

import json
import os
import sys

import attrs
from twisted.logger import Logger
from twisted.plugin import IPlugin
from zope.interface import implementer

from txmesh.filters.access_log_format import (
    UNSAFE,
    FormatError,
    JsonFormat,
    LogRecord,
    TextFormat,
    _secondPrefix,
    escapeBytes as _text,
    grpcCode,
    isoTime,
    protocolName,
)
from txmesh.interfaces import (
    FilterStatus,
    IFilterConfigResources,
    IFilterFactory,
    IStreamDecoderFilter,
    IStreamEncoderFilter,
    IStreamFilterEvents,
    StreamEvents,
)
from txmesh.protocols.h2 import grpc

__all__ = ["AccessLogFactory", "formatText", "formatJson", "isoTime", "protocolName"]

_USER_AGENT = b"user-agent"
_search = UNSAFE.search
_PROTOCOLS = {p: protocolName(p) for p in ("http/1.1", "http/1.0", "h2", "grpc", "dubbo")}
_encode = json.JSONEncoder(separators=(",", ":")).encode  # one encoder: json.dumps with options makes one a call


def formatText(info, request, clock, responseCode=None, record=None):
    """
    One Envoy-like text line: start time, "method path protocol", status, flags, bytes received, bytes sent,
    duration ms, "peer", "authority", "upstream host", "request id", "user agent", "route", "cluster", upstream
    time ms, e.g. C{[2026-11-21T10:00:00.123Z] "GET /p HTTP/1.1" 200 - 0 1234 5 "10.0.0.1:5555" "a.com"
    "127.0.0.1:8080" "r1" "curl/8.5.0" "api" "backend" 4}.
    ``responseCode`` overrides the StreamInfo's (a gRPC stream logs its grpc-status).
    """
    # _fields and the escapes inlined: this runs once per request with the default config
    end = info.endTime
    if end is None:
        end = clock.seconds()
    requestId = info.requestId
    if request is not None:
        method, path, authority = request.method, request.path, request.authority
        headers = request.headers
        if not requestId:
            requestId = headers.get(b"x-request-id")
        agent = headers.get(_USER_AGENT)
    else:
        method = path = authority = agent = None
    if isinstance(requestId, str):
        requestId = requestId.encode("latin-1")
    flags = info.responseFlags
    up, upEnd = info.upstreamStartTime, info.upstreamEndTime
    names = _NAMES
    unsafe = _search
    start = info.startTime
    second, ms = divmod(int(round(start * 1000)), 1000)
    return '[%s.%03dZ] "%s %s %s" %d %s %d %d %d "%s" "%s" "%s" "%s" "%s" "%s" "%s" %s\n' % (
        _secondPrefix(second), ms,
        method.decode("ascii") if method and unsafe(method) is None else _text(method),
        path.decode("ascii") if path and unsafe(path) is None else _text(path),
        _PROTOCOLS.get(info.protocol) or protocolName(info.protocol),
        responseCode if responseCode is not None else info.responseCode or 0,
        ",".join(sorted(flags)) if flags else "-", info.bytesReceived, info.bytesSent,
        int(round((end - start) * 1000)) if end > start else 0,
        info.downstreamPeer or "-",
        authority.decode("ascii") if authority and unsafe(authority) is None else _text(authority),
        info.upstreamHost or "-",
        requestId.decode("ascii") if requestId and unsafe(requestId) is None else _text(requestId),
        agent.decode("ascii") if agent and unsafe(agent) is None else _text(agent),
        names.get(info.routeName) or _name(info.routeName), names.get(info.clusterName) or _name(info.clusterName),
        int((upEnd - up) * 1000 + 0.5) if up is not None and upEnd is not None and upEnd >= up else "-")


_NAMES = {None: "-"}  # route and cluster name -> as a text line shows it (a few, from the config and registries)


def _name(value):
    """A route or cluster name (config-, or for a Dubbo registry cluster registry-derived) for a text line."""
    shown = _text(value.encode("utf-8", "surrogatepass")) if value else "-"
    if len(_NAMES) < 4096:
        _NAMES[value] = shown
    return shown


def formatJson(info, request, clock, responseCode=None, record=None):
    """The same fields as formatText, as one JSON object per line (missing values are null), with grpc_status."""
    end = info.endTime
    if end is None:
        end = clock.seconds()
    requestId = info.requestId
    if request is not None:
        method, path, authority = request.method, request.path, request.authority
        headers = request.headers
        if not requestId:
            requestId = headers.get(b"x-request-id")
        agent = headers.get(_USER_AGENT)
    else:
        method = path = authority = agent = None
    if isinstance(requestId, str):
        requestId = requestId.encode("latin-1")
    if responseCode is None:
        responseCode = info.responseCode or 0
    flags = info.responseFlags
    start = info.startTime
    second, ms = divmod(int(round(start * 1000)), 1000)
    up, upEnd = info.upstreamStartTime, info.upstreamEndTime
    return _encode({
        "start_time": "%s.%03dZ" % (_secondPrefix(second), ms),
        "method": method.decode("utf-8", "backslashreplace") if method else None,
        "path": path.decode("utf-8", "backslashreplace") if path else None,
        "protocol": _PROTOCOLS.get(info.protocol) or protocolName(info.protocol),
        "response_code": responseCode,
        "response_flags": ",".join(sorted(flags)) if flags else None,
        "bytes_received": info.bytesReceived,
        "bytes_sent": info.bytesSent,
        "duration": int(round((end - start) * 1000)) if end > start else 0,
        "downstream_remote_address": info.downstreamPeer or None,
        "authority": authority.decode("utf-8", "backslashreplace") if authority else None,
        "upstream_host": info.upstreamHost or None,
        "request_id": requestId.decode("utf-8", "backslashreplace") if requestId else None,
        "user_agent": agent.decode("utf-8", "backslashreplace") if agent else None,
        "route_name": info.routeName or None,
        "upstream_cluster": info.clusterName or None,
        "upstream_service_time": int((upEnd - up) * 1000 + 0.5)
        if up is not None and upEnd is not None and upEnd >= up else None,
        "grpc_status": record.grpcStatus if record is not None else None,
    }) + "\n"


def compiledFormatter(compiled):
    """
    A formatLine for a compiled TextFormat or JsonFormat.  ``responseCode`` is not used: as in Envoy,
    %RESPONSE_CODE% is the HTTP status (200 for every gRPC response) and %GRPC_STATUS% the call's status.
    """
    fmt = compiled.format

    def formatLine(info, request, clock, responseCode=None, record=None):
        if record is None:
            record = LogRecord(info, request, info.endTime if info.endTime is not None else clock.seconds())
        return fmt(record)
    return formatLine


class AccessLogWriter:
    """
    Buffers log lines and writes them to a text stream in batches, so the hot path never blocks on the disk.

    Bound once (L{bind}) to the running config's clock and stats.  A failed write drops the batch, counts
    ``access_log_write_errors`` and is logged; the proxy keeps serving.

    @ivar opener: how L{reopen} opens ``path`` again (the builtin open); None for a stream it does not own.
    """

    log = Logger()

    def __init__(self, stream, path, ownsStream, flushInterval=1.0, maxBufferedLines=1024, opener=None):
        self.stream = stream
        self.path = path
        self.ownsStream = ownsStream
        self.opener = opener
        self.flushInterval = flushInterval
        self.maxBufferedLines = maxBufferedLines
        self.closed = False
        self._buffer = []
        self._timer = None
        self._clock = None
        self._lines = None
        self._errors = None

    def bind(self, clock, stats):
        """Attach the clock for the flush timer and the stats store for the counters (first call wins)."""
        if self._clock is None:
            self._clock = clock
            self._lines = stats.counter("access_log_lines", (("path", self.path),),
                                        "Access log lines produced")
            self._errors = stats.counter("access_log_write_errors", (("path", self.path),),
                                         "Failed access log writes (each drops a batch of lines)")

    def write(self, line):
        """Queue one line (ending in a newline); written within flushInterval seconds."""
        if self._lines is not None:
            self._lines.value += 1
        if self.closed:
            self._countError("access log {path} is closed; line dropped")
            return
        buf = self._buffer
        buf.append(line)
        if len(buf) >= self.maxBufferedLines or self._clock is None:
            self.flush()
        elif self._timer is None:
            self._timer = self._clock.callLater(self.flushInterval, self._timerFired)

    def _timerFired(self):
        self._timer = None
        self.flush()

    def flush(self):
        """Write out buffered lines now."""
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None
        if not self._buffer:
            return
        data = "".join(self._buffer)
        self._buffer = []
        try:
            self.stream.write(data)
            self.stream.flush()
        except (OSError, ValueError) as e:
            # ValueError: the stream was closed under us
            self._countError("cannot write access log {path}: {error}", error=e)

    def _countError(self, fmt, **kw):
        if self._errors is not None:
            self._errors.value += 1
        self.log.error(fmt, path=self.path, **kw)

    def reopen(self):
        """
        Flush to the current file, then open ``path`` again for appending and close the old file (after a
        logrotate rename, lines go to the new file).  No-op for stdout or once closed.

        @return: True if a new file was opened.
        @raise OSError: the path cannot be opened; the old file stays in use, so no line is lost.
        """
        if self.closed or not self.ownsStream or self.opener is None:
            return False
        self.flush()
        new = self.opener(self.path, "a", encoding="utf-8", newline="")
        old, self.stream = self.stream, new
        try:
            old.close()
        except OSError as e:
            self._countError("cannot close access log {path}: {error}", error=e)
        return True

    def close(self):
        """Flush and, for a file, close it.  Called by the service when the config stops; idempotent."""
        if self.closed:
            return
        self.flush()
        self.closed = True
        if self.ownsStream:
            try:
                self.stream.close()
            except OSError as e:
                self._countError("cannot close access log {path}: {error}", error=e)


@implementer(IFilterConfigResources)
@attrs.frozen
class AccessLogConfig:
    """The validated config of one access_log entry; ``writer`` is what the service flushes/closes on stop."""

    path: str
    format: str
    writer: AccessLogWriter
    formatLine: object
    grpc: bool = False  # a grpc listener's: lines log the grpc-status
    usesResponse: bool = False  # the format reads response headers or trailers (%RESP(..)%, %TRAILER(..)%)

    def registerFiles(self, files):
        """
        Register a file log's writer with ``files`` (the runtime's L{txmesh.runtime.ReopenableFiles}) so that
        SIGUSR1 and ``POST /reopen_logs`` reopen it; stdout is not registered.
        """
        if self.writer.ownsStream:
            files.register(self.writer)

    def close(self):
        """Flush and close the log (the service calls it when the config stops)."""
        self.writer.close()


@implementer(IStreamDecoderFilter, IStreamFilterEvents)
class AccessLogFilter:
    """Per-stream: formats the line when the stream completes (it only reads the final StreamInfo)."""

    streamEvents = StreamEvents.DECODER_CALLBACKS | StreamEvents.STREAM_COMPLETE

    __slots__ = ("config", "clock", "callbacks")

    def __init__(self, config, clock):
        self.config = config
        self.clock = clock
        self.callbacks = None

    def setDecoderFilterCallbacks(self, callbacks):
        self.callbacks = callbacks

    def decodeHeaders(self, request, endStream):
        return FilterStatus.CONTINUE

    def decodeData(self, data, endStream):
        return FilterStatus.CONTINUE

    def decodeTrailers(self, trailers):
        return FilterStatus.CONTINUE

    def onStreamReset(self, reason):
        pass

    def onStreamComplete(self):
        cb = self.callbacks
        config = self.config
        config.writer.write(config.formatLine(cb.streamInfo, cb.request, self.clock))


@implementer(IStreamDecoderFilter, IStreamEncoderFilter, IStreamFilterEvents)
class ResponseAccessLogFilter(AccessLogFilter):
    """
    Also sees the response: keeps its head and trailers for %RESP(..)% and %TRAILER(..)%, and on a ``grpc``
    listener the call's grpc-status, which the line logs as its response code instead of the HTTP 200 every gRPC
    response has (from the trailers, or the headers of a trailers-only response); a call that ended without one
    logs what the client was told: an HTTP error's mapped status, CANCELLED when the client went away, else the
    status the listener ends an aborted call with (by its cause).
    """

    streamEvents = (StreamEvents.DECODER_CALLBACKS | StreamEvents.ENCODE_HEADERS | StreamEvents.ENCODE_TRAILERS
                    | StreamEvents.STREAM_COMPLETE | StreamEvents.STREAM_RESET)

    __slots__ = ("grpcStatus", "response", "trailers")

    def __init__(self, config, clock):
        AccessLogFilter.__init__(self, config, clock)
        self.grpcStatus = None
        self.response = None
        self.trailers = None

    def setEncoderFilterCallbacks(self, callbacks):
        pass

    def encodeHeaders(self, response, endStream):
        self.response = response
        if self.config.grpc:
            value = response.headers.get(b"grpc-status")
            if value is not None:
                self.grpcStatus = value
            elif response.status != 200:
                self.grpcStatus = b"%d" % (grpc.statusForHTTP(response.status),)
        return FilterStatus.CONTINUE

    def encodeData(self, data, endStream):
        return FilterStatus.CONTINUE

    def encodeTrailers(self, trailers):
        self.trailers = trailers
        if self.config.grpc:
            value = trailers.get(b"grpc-status")
            if value is not None:
                self.grpcStatus = value
        return FilterStatus.CONTINUE

    def onStreamReset(self, reason):
        if not self.config.grpc:
            return
        if isinstance(reason, bytes):
            reason = reason.decode("ascii", "replace")
        reason = str(reason)
        if reason.startswith("downstream"):
            self.grpcStatus = b"%d" % (grpc.CANCELLED,)
        else:
            self.grpcStatus = b"%d" % (grpc.statusForCause(reason, 503),)

    def onStreamComplete(self):
        cb = self.callbacks
        config = self.config
        info = cb.streamInfo
        record = LogRecord(info, cb.request, info.endTime if info.endTime is not None else self.clock.seconds(),
                           None, self.response, self.trailers)
        code = None
        if config.grpc:
            code = record.grpcStatus = grpcCode(self.grpcStatus)
        config.writer.write(config.formatLine(info, cb.request, self.clock, code, record))


GrpcAccessLogFilter = ResponseAccessLogFilter  # the name earlier releases had


_KEYS = frozenset({"path", "format", "json_format"})
_FORMATS = {"text": formatText, "json": formatJson}


@implementer(IFilterFactory, IPlugin)
class AccessLogFactory:
    """
    The ``access_log`` filter kind.  ``config``: ``path`` ("-" for stdout, the default, or a file opened for
    appending; a relative path is relative to the config file), ``format`` ("text", the default, "json", or a
    format string of Envoy command operators) or ``json_format`` (a mapping of field name to format string).

    @ivar stdout: the text stream "-" means; None looks up sys.stdout at build time (tests inject one).
    @ivar opener: how files are opened (the builtin open).
    """

    name = "access_log"
    kind = "stream"
    protocols = frozenset({"http", "grpc", "dubbo"})
    terminal = False

    def __init__(self, stdout=None, opener=open):
        self.stdout = stdout
        self.opener = opener

    def buildConfig(self, raw, context):
        """
        Validate ``raw`` and open the log.
        @raise txmesh.errors.ConfigError: for an unknown key, a bad ``format`` or a ``path`` that cannot be opened.
        """
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise context.error("access_log config must be a mapping")
        for key in raw:
            if key not in _KEYS:
                raise context.error("unknown key (expected one of: format, json_format, path)", str(key))
        fmt = raw.get("format", "text")
        jsonFormat = raw.get("json_format")
        usesResponse = False
        if jsonFormat is not None:
            if "format" in raw:
                raise context.error("give format or json_format, not both", "json_format")
            if not isinstance(jsonFormat, dict) or not jsonFormat:
                raise context.error("must be a mapping of field name to format string", "json_format")
            try:
                compiled = JsonFormat(jsonFormat)
            except FormatError as e:
                raise context.error(str(e), "json_format." + e.where if e.where else "json_format")
            fmt, formatLine, usesResponse = "json_format", compiledFormatter(compiled), compiled.usesResponse
        elif not isinstance(fmt, str) or not fmt:
            raise context.error("must be 'text', 'json' or a format string with %%OPERATORS%%, not %r" % (fmt,),
                                "format")
        elif fmt in _FORMATS:
            formatLine = _FORMATS[fmt]
        else:
            try:
                compiled = TextFormat(fmt)
            except FormatError as e:
                raise context.error(str(e), "format")
            formatLine, usesResponse = compiledFormatter(compiled), compiled.usesResponse
        path = raw.get("path", "-")
        if not isinstance(path, str) or not path:
            raise context.error("must be '-' (stdout) or a file path", "path")
        if path == "-":
            writer = AccessLogWriter(self.stdout if self.stdout is not None else sys.stdout, path, False)
        else:
            filename = getattr(context, "filename", None)
            if filename and not filename.startswith("<"):
                path = os.path.join(os.path.dirname(os.path.abspath(filename)), path)
            try:
                f = self.opener(path, "a", encoding="utf-8", newline="")
            except OSError as e:
                raise context.error("cannot open %r for appending: %s" % (path, e.strerror or e), "path")
            writer = AccessLogWriter(f, path, True, opener=self.opener)
        return AccessLogConfig(path=path, format=fmt, writer=writer, formatLine=formatLine,
                               grpc=context.listenerProtocol == "grpc", usesResponse=usesResponse)

    def createFilters(self, config, callbacks, runtime):
        config.writer.bind(runtime.clock, runtime.stats)
        if config.grpc or config.usesResponse:
            callbacks.addStreamFilter(ResponseAccessLogFilter(config, runtime.clock))
        else:
            callbacks.addStreamDecoderFilter(AccessLogFilter(config, runtime.clock))
