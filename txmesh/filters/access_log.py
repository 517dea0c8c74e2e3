"""
The ``access_log`` stream filter: one line per request, Envoy-like text or JSON, written when the stream completes.

Lines are buffered by an L{AccessLogWriter} (one per config build, so one open file) and written out by a clock
timer at most a second after the first buffered line, when the buffer holds ``maxBufferedLines``, and at
shutdown (the service calls ``config.writer.close()``).  Only a fixed set of fields is logged; no header value
other than the authority and the request id ever reaches the log.

A file log is reopened (flush, close, open the same path again for appending) when the service asks, on
SIGUSR1 or an admin ``POST /reopen_logs``, so logrotate can rename it without ``copytruncate``: the config
registers its writer with the runtime's reopenable-files registry (L{AccessLogConfig.registerFiles}).  stdout
is never reopened.
"""

import functools
import json
import os
import re
import sys
import time

import attrs
from twisted.logger import Logger
from twisted.plugin import IPlugin
from zope.interface import implementer

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

_PROTOCOL_NAMES = {
    "http/1.1": "HTTP/1.1",
    "http/1.0": "HTTP/1.0",
    "h2": "HTTP/2",
    "grpc": "HTTP/2",
    "dubbo": "DUBBO",
}


def protocolName(protocol):
    """Envoy's %PROTOCOL% spelling of a StreamInfo.protocol ('http/1.1' -> 'HTTP/1.1')."""
    name = _PROTOCOL_NAMES.get(protocol)
    if name is None:
        name = str(protocol).upper() if protocol else "-"
    return name


@functools.lru_cache(maxsize=8)
def _secondPrefix(second):
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))


def isoTime(t):
    """A POSIX time as UTC ISO 8601 with milliseconds: '2026-11-21T10:00:00.123Z' (the second part is cached)."""
    second, ms = divmod(int(round(t * 1000)), 1000)
    return "%s.%03dZ" % (_secondPrefix(second), ms)


# Bytes a text line shows as-is: printable ASCII except '"' and '\' (so a client cannot forge fields or lines).
_UNSAFE = re.compile(rb'[^\x20\x21\x23-\x5b\x5d-\x7e]')
_ESCAPES = tuple(chr(c) if not _UNSAFE.match(bytes([c])) else "\\x%02x" % c for c in range(256))


def _text(value):
    """A request-derived bytes value for a text line: escaped, '-' when empty or missing."""
    if not value:
        return "-"
    if _UNSAFE.search(value) is None:
        return value.decode("ascii")
    return "".join([_ESCAPES[c] for c in value])


def _json(value):
    """A request-derived bytes value for a JSON line (json.dumps escapes it), None when empty or missing."""
    if not value:
        return None
    return value.decode("utf-8", "backslashreplace")


def _fields(info, request, clock):
    """The raw facts of one finished stream, shared by both formats."""
    end = info.endTime if info.endTime is not None else clock.seconds()
    if request is not None:
        method, path, authority = request.method, request.path, request.authority
        requestId = info.requestId or request.headers.get(b"x-request-id")
    else:
        method = path = authority = None
        requestId = info.requestId
    if isinstance(requestId, str):
        requestId = requestId.encode("latin-1")
    flags = ",".join(sorted(info.responseFlags)) if info.responseFlags else None
    duration = max(0, int(round((end - info.startTime) * 1000)))
    return method, path, authority, requestId, flags, duration


def formatText(info, request, clock, responseCode=None):
    """
    One Envoy-like text line: start time, "method path protocol", status, flags, bytes received, bytes sent,
    duration ms, "peer", "authority", "upstream host", "request id", e.g.
    C{[2026-11-21T10:00:00.123Z] "GET /p HTTP/1.1" 200 - 0 1234 5 "10.0.0.1:5555" "a.com" "127.0.0.1:8080" "r1"}.
    ``responseCode`` overrides the StreamInfo's (a gRPC stream logs its grpc-status).
    """
    method, path, authority, requestId, flags, duration = _fields(info, request, clock)
    return '[%s] "%s %s %s" %d %s %d %d %d "%s" "%s" "%s" "%s"\n' % (
        isoTime(info.startTime), _text(method), _text(path), protocolName(info.protocol),
        responseCode if responseCode is not None else info.responseCode or 0, flags or "-", info.bytesReceived,
        info.bytesSent, duration,
        info.downstreamPeer or "-", _text(authority), info.upstreamHost or "-", _text(requestId))


def formatJson(info, request, clock, responseCode=None):
    """The same fields as formatText, as one JSON object per line (missing values are null)."""
    method, path, authority, requestId, flags, duration = _fields(info, request, clock)
    if responseCode is None:
        responseCode = info.responseCode or 0
    return json.dumps({
        "start_time": isoTime(info.startTime),
        "method": _json(method),
        "path": _json(path),
        "protocol": protocolName(info.protocol),
        "response_code": responseCode,
        "response_flags": flags,
        "bytes_received": info.bytesReceived,
        "bytes_sent": info.bytesSent,
        "duration": duration,
        "downstream_remote_address": info.downstreamPeer or None,
        "authority": _json(authority),
        "upstream_host": info.upstreamHost or None,
        "request_id": _json(requestId),
    }, separators=(",", ":")) + "\n"


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
class GrpcAccessLogFilter(AccessLogFilter):
    """
    On a ``grpc`` listener: the line's response code is the call's grpc-status (from the trailers, or the
    headers of a trailers-only response), not the HTTP 200 every gRPC response has; a call that ended without one
    logs what the client was told: an HTTP error's mapped status, CANCELLED when the client went away, else the
    status the listener ends an aborted call with (by its cause).
    """

    streamEvents = (StreamEvents.DECODER_CALLBACKS | StreamEvents.ENCODE_HEADERS | StreamEvents.ENCODE_TRAILERS
                    | StreamEvents.STREAM_COMPLETE | StreamEvents.STREAM_RESET)

    __slots__ = ("grpcStatus",)

    def __init__(self, config, clock):
        AccessLogFilter.__init__(self, config, clock)
        self.grpcStatus = None

    def setEncoderFilterCallbacks(self, callbacks):
        pass

    def encodeHeaders(self, response, endStream):
        value = response.headers.get(b"grpc-status")
        if value is not None:
            self.grpcStatus = value
        elif response.status != 200:
            self.grpcStatus = b"%d" % (grpc.statusForHTTP(response.status),)
        return FilterStatus.CONTINUE

    def encodeData(self, data, endStream):
        return FilterStatus.CONTINUE

    def encodeTrailers(self, trailers):
        value = trailers.get(b"grpc-status")
        if value is not None:
            self.grpcStatus = value
        return FilterStatus.CONTINUE

    def onStreamReset(self, reason):
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
        value = self.grpcStatus
        code = int(value) if value is not None and value.isdigit() and len(value) <= 10 else grpc.UNKNOWN
        config.writer.write(config.formatLine(cb.streamInfo, cb.request, self.clock, code))


_KEYS = frozenset({"path", "format"})
_FORMATS = {"text": formatText, "json": formatJson}


@implementer(IFilterFactory, IPlugin)
class AccessLogFactory:
    """
    The ``access_log`` filter kind.  ``config``: ``path`` ("-" for stdout, the default, or a file opened for
    appending; a relative path is relative to the config file) and ``format`` ("text", the default, or "json").

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
                raise context.error("unknown key (expected one of: format, path)", str(key))
        fmt = raw.get("format", "text")
        if not isinstance(fmt, str) or fmt not in _FORMATS:
            raise context.error("must be 'text' or 'json', not %r" % (fmt,), "format")
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
        return AccessLogConfig(path=path, format=fmt, writer=writer, formatLine=_FORMATS[fmt],
                               grpc=context.listenerProtocol == "grpc")

    def createFilters(self, config, callbacks, runtime):
        config.writer.bind(runtime.clock, runtime.stats)
        if config.grpc:
            callbacks.addStreamFilter(GrpcAccessLogFilter(config, runtime.clock))
        else:
            callbacks.addStreamDecoderFilter(AccessLogFilter(config, runtime.clock))
