"""
The stream filter chain: Envoy's filter manager, for one request/response exchange.

A listener's codec makes one L{ActiveStream} per request.  The stream passes request events (headers, data,
trailers) through the decoder filters in configuration order, ending at the terminal router, and response events
back through the encoder filters in reverse order to the downstream codec.

Events are serialised: an event enters filter 0 only after the previous one has left the last filter.  A filter
that answers STOP holds its event; later events queue behind it (bounded: past the listener's buffer limit the
downstream is paused) until the filter calls ``continueDecoding`` / ``continueEncoding``.
"""

from collections import deque

from twisted.logger import Logger
from zope.interface import implementer

from txmesh.interfaces import (
    FilterStatus,
    IDownstreamWatermarkCallbacks,
    IFilterChainFactoryCallbacks,
    IStream,
    IStreamDecoderFilterCallbacks,
    IStreamEncoderFilterCallbacks,
    IStreamFactory,
)

CONTINUE = FilterStatus.CONTINUE
STOP = FilterStatus.STOP

_HEADERS, _DATA, _TRAILERS = 0, 1, 2


@implementer(IStreamFactory)
class FilterChainTemplate:
    """
    The immutable recipe of a listener's stream filters: (factory, config) pairs, built once at load.
    ``createStream`` makes the per-stream instances.  ``paths``, an IPathNormalizer or None, normalises each
    request's path before routing and before the first filter.
    """

    def __init__(self, entries, runtime, routeConfig, bufferLimit=1 << 20, maxRequestBody=0,
                 streamIdleTimeout=0, respectExpectedTimeout=False, paths=None):
        self.entries = tuple((e.factory, e.config) for e in entries)
        self.paths = paths
        self.runtime = runtime
        self.routeConfig = routeConfig
        self.bufferLimit = bufferLimit
        self.maxRequestBody = maxRequestBody
        # what the router reads at each stream's start, in one tuple: its clock and the listener's time settings
        self.timeBounds = (runtime.clock if runtime is not None else None, streamIdleTimeout, respectExpectedTimeout)

    def createStream(self, downstream, streamInfo):
        stream = ActiveStream(self, downstream, streamInfo)
        installer = _Installer(stream)
        runtime = self.runtime
        for factory, config in self.entries:
            factory.createFilters(config, installer, runtime)
        stream.finishSetup()
        return stream


@implementer(IFilterChainFactoryCallbacks)
class _Installer:
    __slots__ = ("stream",)

    def __init__(self, stream):
        self.stream = stream

    def addStreamDecoderFilter(self, f):
        self.stream.decoders.append(f)

    def addStreamEncoderFilter(self, f):
        self.stream.encoders.append(f)

    def addStreamFilter(self, f):
        self.stream.decoders.append(f)
        self.stream.encoders.append(f)

    def addReadFilter(self, f):
        # network filters run per connection, in txmesh.filters.network's chain
        raise TypeError("a network filter cannot be installed in a stream filter chain (list it under "
                        "network_filters)")

    addWriteFilter = addReadFilter


@implementer(IStreamDecoderFilterCallbacks)
class _DecoderCallbacks:
    """What one decoder filter gets: resuming continues from the filter after it."""

    __slots__ = ("stream", "index")

    def __init__(self, stream, index):
        self.stream = stream
        self.index = index

    @property
    def streamInfo(self):
        return self.stream.streamInfo

    @property
    def request(self):
        return self.stream.request

    @property
    def clock(self):
        return self.stream.template.runtime.clock

    @property
    def runtime(self):
        return self.stream.template.runtime

    @property
    def maxRequestBody(self):
        return self.stream.template.maxRequestBody

    @property
    def bufferLimit(self):
        return self.stream.template.bufferLimit

    @property
    def timeBounds(self):
        """(clock, the listener's stream_idle_timeout, whether it trusts x-txmesh-expected-rq-timeout-ms)."""
        return self.stream.template.timeBounds

    def continueDecoding(self):
        self.stream._resumeDecoding(self.index)

    def sendLocalReply(self, status, body=b"", headers=(), cause=None, flag=None):
        self.stream.sendLocalReply(status, body, headers, cause, flag)

    def route(self):
        return self.stream.route()

    def clearRouteCache(self):
        self.stream._routeCached = False

    def addDecodedData(self, data):
        self.stream._decodeEvent(self.index + 1, _DATA, data, False)

    def encodeHeaders(self, response, endStream):
        self.stream.encodeHeaders(response, endStream)

    def encodeData(self, data, endStream):
        self.stream.encodeData(data, endStream)

    def encodeTrailers(self, trailers):
        self.stream.encodeTrailers(trailers)

    def pauseDecoding(self):
        self.stream.downstream.pauseReading()

    def resumeDecoding(self):
        self.stream.downstream.resumeReading()

    def resetStream(self, reason):
        """End the stream abruptly (the response cannot be completed): the downstream connection is reset."""
        self.stream.resetStream(reason, fromFilter=True)

    @property
    def responseStarted(self):
        return self.stream.responseStarted


@implementer(IStreamEncoderFilterCallbacks)
class _EncoderCallbacks:
    __slots__ = ("stream", "index")

    def __init__(self, stream, index):
        self.stream = stream
        self.index = index

    @property
    def streamInfo(self):
        return self.stream.streamInfo

    @property
    def response(self):
        return self.stream.response

    def continueEncoding(self):
        self.stream._resumeEncoding(self.index)


@implementer(IStream)
class ActiveStream:
    """
    One request/response exchange running through the filters.

    The ``downstream`` object is the listener's side of the stream (an L{IDownstreamStream}).
    """

    log = Logger()

    def __init__(self, template, downstream, streamInfo):
        self.template = template
        self.downstream = downstream
        self.streamInfo = streamInfo
        self.decoders = []
        self.encoders = []
        self.request = None
        self.response = None
        self.responseStarted = False
        self.complete = False
        self._routeCached = False
        self._route = None
        # decode state: index of the filter holding the current event (-1: none) and events queued behind it
        self._decStopped = -1
        self._decPending = None
        self._decQueue = deque()
        self._decQueued = 0
        self._decPaused = False
        self._encStopped = -1
        self._encPending = None
        self._encQueue = deque()

    def finishSetup(self):
        for i, f in enumerate(self.decoders):
            f.setDecoderFilterCallbacks(_DecoderCallbacks(self, i))
        self.encoders.reverse()
        for i, f in enumerate(self.encoders):
            f.setEncoderFilterCallbacks(_EncoderCallbacks(self, i))

    # -- routing --------------------------------------------------------------------------------------------

    def route(self):
        if not self._routeCached:
            self._route = self.template.routeConfig.match(self.request)
            self._routeCached = True
            self.streamInfo.routeName = self._route.name if self._route is not None else None
        return self._route

    # -- decode path (called by the downstream codec) -------------------------------------------------------

    def decodeHeaders(self, request, endStream):
        self.request = request
        paths = self.template.paths
        if paths is not None and not paths.plain(request.path):
            reply = paths.normalize(request, self.streamInfo)
            if reply is not None:
                # refused (400) or redirected (307) before any filter or route saw it
                self.sendLocalReply(*reply)
                return
        if endStream:  # a request without a body ended when it began
            info = self.streamInfo
            info.requestEndTime = info.startTime
        self._decodeEvent(0, _HEADERS, request, endStream)

    def decodeData(self, data, endStream):
        self.streamInfo.bytesReceived += len(data)
        if endStream:
            self.streamInfo.requestEndTime = self.template.runtime.clock.seconds()
        if self._decStopped >= 0 or self._decQueue:
            self._enqueueDecode(_DATA, data, endStream)
            return
        self._decodeEvent(0, _DATA, data, endStream)

    def decodeTrailers(self, trailers):
        self.streamInfo.requestEndTime = self.template.runtime.clock.seconds()
        if self._decStopped >= 0 or self._decQueue:
            self._enqueueDecode(_TRAILERS, trailers, True)
            return
        self._decodeEvent(0, _TRAILERS, trailers, True)

    def _enqueueDecode(self, kind, payload, endStream):
        self._decQueue.append((kind, payload, endStream))
        if kind == _DATA:
            self._decQueued += len(payload)
            if self._decQueued > self.template.bufferLimit and not self._decPaused:
                self._decPaused = True
                self.downstream.pauseReading()

    def _decodeEvent(self, start, kind, payload, endStream):
        decoders = self.decoders
        n = len(decoders)
        i = start
        while i < n:
            if self.complete:
                return
            f = decoders[i]
            if kind == _HEADERS:
                status = f.decodeHeaders(payload, endStream)
            elif kind == _DATA:
                status = f.decodeData(payload, endStream)
            else:
                status = f.decodeTrailers(payload)
            if status is STOP:
                if i == n - 1:
                    # the terminal filter has taken the event; it needs no resume
                    return
                self._decStopped = i
                self._decPending = (kind, payload, endStream)
                return
            i += 1

    def _resumeDecoding(self, index):
        if self._decStopped != index or self.complete:
            return
        kind, payload, endStream = self._decPending
        self._decStopped = -1
        self._decPending = None
        self._decodeEvent(index + 1, kind, payload, endStream)
        while self._decStopped < 0 and self._decQueue and not self.complete:
            kind, payload, endStream = self._decQueue.popleft()
            if kind == _DATA:
                self._decQueued -= len(payload)
            self._decodeEvent(0, kind, payload, endStream)
        if self._decPaused and self._decQueued <= self.template.bufferLimit // 2:
            self._decPaused = False
            self.downstream.resumeReading()

    # -- encode path (called by the router or a filter) ----------------------------------------------------

    def encodeHeaders(self, response, endStream):
        if self.responseStarted or self.complete:
            return
        self.responseStarted = True
        self.response = response
        self.streamInfo.responseCode = response.status
        self._encodeEvent(0, _HEADERS, response, endStream)

    def encodeData(self, data, endStream):
        if self.complete:
            return
        if self._encStopped >= 0 or self._encQueue:
            self._encQueue.append((_DATA, data, endStream))
            return
        self._encodeEvent(0, _DATA, data, endStream)

    def encodeTrailers(self, trailers):
        if self.complete:
            return
        if self._encStopped >= 0 or self._encQueue:
            self._encQueue.append((_TRAILERS, trailers, True))
            return
        self._encodeEvent(0, _TRAILERS, trailers, True)

    def _encodeEvent(self, start, kind, payload, endStream):
        encoders = self.encoders
        n = len(encoders)
        i = start
        while i < n:
            f = encoders[i]
            if kind == _HEADERS:
                status = f.encodeHeaders(payload, endStream)
            elif kind == _DATA:
                status = f.encodeData(payload, endStream)
            else:
                status = f.encodeTrailers(payload)
            if status is STOP:
                self._encStopped = i
                self._encPending = (kind, payload, endStream)
                return
            if self.complete:
                return
            i += 1
        downstream = self.downstream
        if kind == _HEADERS:
            downstream.writeHeaders(payload, endStream)
        elif kind == _DATA:
            self.streamInfo.bytesSent += len(payload)
            downstream.writeData(payload, endStream)
        else:
            downstream.writeTrailers(payload)
        if endStream:
            self._finish()

    def _resumeEncoding(self, index):
        if self._encStopped != index or self.complete:
            return
        kind, payload, endStream = self._encPending
        self._encStopped = -1
        self._encPending = None
        self._encodeEvent(index + 1, kind, payload, endStream)
        while self._encStopped < 0 and self._encQueue and not self.complete:
            kind, payload, endStream = self._encQueue.popleft()
            self._encodeEvent(0, kind, payload, endStream)

    # -- local replies and ends ----------------------------------------------------------------------------

    def sendLocalReply(self, status, body=b"", headers=(), cause=None, flag=None):
        """
        Answer with a reply the proxy decides.  Before the response started it is encoded through the filters as
        a protocol-native reply; after, the stream can only be reset.
        """
        if self.complete:
            return
        if flag:
            self.streamInfo.responseFlags.add(flag)
        self.streamInfo.responseCodeDetails = cause or "local_reply"
        if self.responseStarted:
            self.resetStream(cause or "local_reply_after_response_started", fromFilter=True)
            return
        # events still queued on the decode side are moot now
        self._decQueue.clear()
        self._decStopped = -1
        response, body = self.downstream.makeLocalReply(status, body, headers, cause)
        self.encodeHeaders(response, not body)
        if body and not self.complete:
            self.encodeData(body, True)

    def resetStream(self, reason, fromFilter=False):
        """
        The stream ends without a complete response: downstream went away (fromFilter False, called by the codec)
        or a filter gave up after the response started (fromFilter True: the codec resets the downstream).
        """
        if self.complete:
            return
        self.complete = True
        info = self.streamInfo
        info.endTime = self.template.runtime.clock.seconds()
        if not fromFilter:  # the downstream went away or broke the protocol: Envoy's DC / DPE response flags
            info.responseFlags.add("DPE" if reason == "downstream_protocol_error" else "DC")
        if info.responseCodeDetails is None:
            info.responseCodeDetails = reason if isinstance(reason, str) else str(reason)
        for f in self.decoders:
            try:
                f.onStreamReset(reason)
            except Exception:
                self.log.failure("filter {f!r} failed in onStreamReset", f=f)
        if fromFilter:
            self.downstream.reset(reason)
        self._notifyComplete()

    def _finish(self):
        self.complete = True
        self.streamInfo.endTime = self.template.runtime.clock.seconds()
        self._notifyComplete()

    def _notifyComplete(self):
        seen = set()
        for f in self.decoders + self.encoders:
            if id(f) in seen:
                continue
            seen.add(id(f))
            try:
                f.onStreamComplete()
            except Exception:
                self.log.failure("filter {f!r} failed in onStreamComplete", f=f)
        self.downstream.streamComplete(self)

    # -- backpressure from the downstream side ---------------------------------------------------------------

    def downstreamWritePaused(self):
        """
        The downstream cannot take more response bytes: tell the filters that produce them (the router: those
        providing IDownstreamWatermarkCallbacks).  Rare, so they are looked up here, not at every stream's setup.
        """
        for f in self.decoders:
            if IDownstreamWatermarkCallbacks.providedBy(f):
                f.onAboveWriteBufferHighWatermark()

    def downstreamWriteResumed(self):
        """The downstream drained: the filters told of the pause may produce again."""
        for f in self.decoders:
            if IDownstreamWatermarkCallbacks.providedBy(f):
                f.onBelowWriteBufferLowWatermark()
