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
    IStreamFilterEvents,
    StreamEvents,
)

CONTINUE = FilterStatus.CONTINUE
STOP = FilterStatus.STOP

_HEADERS, _DATA, _TRAILERS = 0, 1, 2
_NO_EVENTS = (False, False, False)

_OWN, _SHARED = "own", "shared"  # how a filter gets its callbacks of a side (None: not at all)


class _Plan:
    """
    What the chain does with the filters of one class, from the StreamEvents it declared (L{IStreamFilterEvents}):
    made once per class, read per stream and event.  Booleans and tuples of them, not the flags: testing a bool
    is cheaper than ``&`` on an int in CPython.
    """

    __slots__ = ("decode", "encode", "completes", "resets", "decoderCallbacks", "encoderCallbacks", "decoder",
                 "encoder")

    def __init__(self, events):
        E = StreamEvents
        self.decode = (bool(events & E.DECODE_HEADERS), bool(events & E.DECODE_DATA),
                       bool(events & E.DECODE_TRAILERS))  # indexed by _HEADERS, _DATA, _TRAILERS
        self.encode = (bool(events & E.ENCODE_HEADERS), bool(events & E.ENCODE_DATA),
                       bool(events & E.ENCODE_TRAILERS))
        self.completes = bool(events & E.STREAM_COMPLETE)
        self.resets = bool(events & E.STREAM_RESET)
        self.decoderCallbacks = (_OWN if events & E.RESUMES_DECODING else
                                 _SHARED if events & E.DECODER_CALLBACKS else None)
        self.encoderCallbacks = (_OWN if events & E.RESUMES_ENCODING else
                                 _SHARED if events & E.ENCODER_CALLBACKS else None)
        # a filter is on a side (in ``decoders`` / ``encoders``) only if it wants one of that side's calls
        self.decoder = any(self.decode) or self.resets or self.decoderCallbacks is not None
        self.encoder = any(self.encode) or self.encoderCallbacks is not None


_EVERYTHING = _Plan(StreamEvents.ALL)  # what a filter that declares nothing gets


@implementer(IStreamFactory)
class FilterChainTemplate:
    """
    The immutable recipe of a listener's stream filters: (factory, config) pairs, built once at load.
    ``createStream`` makes the per-stream instances.  ``paths``, an IPathNormalizer or None, normalises each
    request's path before routing and before the first filter.  ``requestStats``, an IRequestStats or None, counts
    every stream when it ends (after the filters were told).
    """

    def __init__(self, entries, runtime, routeConfig, bufferLimit=1 << 20, maxRequestBody=0,
                 streamIdleTimeout=0, respectExpectedTimeout=False, paths=None, requestStats=None):
        self.entries = tuple((e.factory, e.config) for e in entries)
        self.paths = paths
        # an IRequestStats told of every stream's end (the request metrics), or None
        self.streamEnded = requestStats.streamEnded if requestStats is not None else None
        self.runtime = runtime
        self.routeConfig = routeConfig
        self.bufferLimit = bufferLimit
        self.maxRequestBody = maxRequestBody
        # what the router reads at each stream's start, in one tuple: its clock and the listener's time settings
        self.timeBounds = (runtime.clock if runtime is not None else None, streamIdleTimeout, respectExpectedTimeout)
        # filter class -> its _Plan, made on the class's first stream
        self.filterPlans = {}

    def createStream(self, downstream, streamInfo):
        stream = ActiveStream(self, downstream, streamInfo)
        runtime = self.runtime
        for factory, config in self.entries:
            factory.createFilters(config, stream, runtime)
        stream.finishSetup()
        return stream

    def planOf(self, f):
        """
        The L{_Plan} of filter ``f``: from its class's ``streamEvents`` if the class provides IStreamFilterEvents,
        else every call.  Read once per class.

        @raise TypeError: if ``streamEvents`` is not StreamEvents flags.
        """
        cls = type(f)
        plan = self.filterPlans.get(cls)
        if plan is None:
            plan = _EVERYTHING
            if IStreamFilterEvents.providedBy(f):
                declared = f.streamEvents
                if not isinstance(declared, StreamEvents):
                    raise TypeError("%s.streamEvents must be txmesh.interfaces.StreamEvents flags, not %r"
                                    % (cls.__qualname__, declared))
                plan = _Plan(declared)
            self.filterPlans[cls] = plan
        return plan


@implementer(IStreamDecoderFilterCallbacks)
class _DecoderCallbacks:
    """What one decoder filter gets: resuming continues from the filter after it."""

    # maxRequestBody and timeBounds, which the router reads for every request, are plain attributes: a property
    # is a call that CPython 3.11 does not inline
    __slots__ = ("stream", "index", "streamInfo", "maxRequestBody", "timeBounds")

    def __init__(self, stream, index):
        self.stream = stream
        self.index = index
        self.streamInfo = stream.streamInfo
        template = stream.template
        self.maxRequestBody = template.maxRequestBody
        # (clock, the listener's stream_idle_timeout, whether it trusts x-txmesh-expected-rq-timeout-ms)
        self.timeBounds = template.timeBounds

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
    def bufferLimit(self):
        return self.stream.template.bufferLimit

    def continueDecoding(self):
        self.stream._resumeDecoding(self.index)

    def sendLocalReply(self, status, body=b"", headers=(), cause=None, flag=None):
        self.stream.sendLocalReply(status, body, headers, cause, flag)

    def route(self):
        stream = self.stream
        if not stream._routeCached:  # matched once, on the first filter's asking; cached on the stream
            stream._route = route = stream.template.routeConfig.match(stream.request, self.streamInfo.peerIdentity)
            stream._routeCached = True
            self.streamInfo.routeName = route.name if route is not None else None
        return stream._route

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


class _SharedDecoderCallbacks(_DecoderCallbacks):
    """
    The one decoder callbacks object of a stream's filters that declared they never resume decoding (no
    StreamEvents.RESUMES_DECODING): all the calls but those that need to know which filter is calling.
    """

    __slots__ = ()

    def continueDecoding(self):
        raise TypeError("continueDecoding from a filter whose streamEvents do not declare RESUMES_DECODING")

    def addDecodedData(self, data):
        raise TypeError("addDecodedData from a filter whose streamEvents do not declare RESUMES_DECODING")


@implementer(IStreamEncoderFilterCallbacks)
class _EncoderCallbacks:
    __slots__ = ("stream", "index", "streamInfo")

    def __init__(self, stream, index):
        self.stream = stream
        self.index = index
        self.streamInfo = stream.streamInfo

    @property
    def response(self):
        return self.stream.response

    def continueEncoding(self):
        self.stream._resumeEncoding(self.index)


class _SharedEncoderCallbacks(_EncoderCallbacks):
    """The encoder-side counterpart of L{_SharedDecoderCallbacks} (no StreamEvents.RESUMES_ENCODING)."""

    __slots__ = ()

    def continueEncoding(self):
        raise TypeError("continueEncoding from a filter whose streamEvents do not declare RESUMES_ENCODING")


@implementer(IStream, IFilterChainFactoryCallbacks)
class ActiveStream:
    """
    One request/response exchange running through the filters.

    The ``downstream`` object is the listener's side of the stream (an L{IDownstreamStream}).  The stream is also
    what the filter factories install their filters with (as Envoy's FilterManager is their
    FilterChainFactoryCallbacks).

    Each filter is on the sides (``decoders``, ``encoders``) it wants calls of, with its class's L{_Plan} beside it
    (``_decoderPlans``, ``_encoderPlans``); an event skips the filters that do not want it, and an encode event no
    encoder wants goes straight to the downstream.  ``_completers`` lists, once each, the filters told of the
    stream's end.
    """

    log = Logger()

    def __init__(self, template, downstream, streamInfo):
        self.template = template
        self.downstream = downstream
        self.streamInfo = streamInfo
        self.decoders = []
        self.encoders = []
        self._decoderPlans = []
        self._encoderPlans = []
        self._encodes = _NO_EVENTS  # (headers, data, trailers): whether any encoder wants that event
        self._completers = []
        self._encoderOnlyCompleters = None  # installed by addStreamEncoderFilter, placed at finishSetup
        self.request = None
        self.response = None
        self.responseStarted = False
        self.complete = False
        self._routeCached = False
        self._route = None
        # decode state: index of the filter holding the current event (-1: none) and events queued behind it
        self._decStopped = -1
        self._decPending = None
        self._decQueue = None  # a deque, made when the first event must wait
        self._decQueued = 0
        self._decPaused = False
        self._encStopped = -1
        self._encPending = None
        self._encQueue = None

    # -- installing the filters (IFilterChainFactoryCallbacks, for the factories) -------------------------------

    def addStreamDecoderFilter(self, f):
        plan = self.template.filterPlans.get(type(f)) or self.template.planOf(f)
        if plan.decoder:
            self.decoders.append(f)
            self._decoderPlans.append(plan)
        if plan.completes:
            self._completers.append(f)

    def addStreamEncoderFilter(self, f):
        plan = self.template.filterPlans.get(type(f)) or self.template.planOf(f)
        if plan.encoder:
            self.encoders.append(f)
            self._encoderPlans.append(plan)
        if plan.completes:
            if self._encoderOnlyCompleters is None:
                self._encoderOnlyCompleters = []
            self._encoderOnlyCompleters.append(f)

    def addStreamFilter(self, f):
        plan = self.template.filterPlans.get(type(f)) or self.template.planOf(f)
        if plan.decoder:
            self.decoders.append(f)
            self._decoderPlans.append(plan)
        if plan.encoder:
            self.encoders.append(f)
            self._encoderPlans.append(plan)
        if plan.completes:
            self._completers.append(f)

    def addReadFilter(self, f):
        # network filters run per connection, in txmesh.filters.network's chain
        raise TypeError("a network filter cannot be installed in a stream filter chain (list it under "
                        "network_filters)")

    addWriteFilter = addReadFilter

    def finishSetup(self):
        """
        Once every filter is installed: give each its callbacks (decoders in order, then encoders in encode order),
        and place the encoder-only filters' completion after the others', in encode order.
        """
        shared = None
        plans = self._decoderPlans
        for i, f in enumerate(self.decoders):
            how = plans[i].decoderCallbacks
            if how is _SHARED:
                if shared is None:
                    shared = _SharedDecoderCallbacks(self, None)
                f.setDecoderFilterCallbacks(shared)
            elif how is _OWN:
                f.setDecoderFilterCallbacks(_DecoderCallbacks(self, i))
        if self.encoders:
            encoders = self.encoders
            plans = self._encoderPlans
            if len(encoders) == 1:  # the usual case when there is an encoder: in encode order already
                plan = plans[0]
                self._encodes = plan.encode
                how = plan.encoderCallbacks
                if how is not None:
                    encoders[0].setEncoderFilterCallbacks(_SharedEncoderCallbacks(self, None) if how is _SHARED
                                                          else _EncoderCallbacks(self, 0))
            else:
                encoders.reverse()
                plans.reverse()
                shared = None
                for i, f in enumerate(encoders):
                    how = plans[i].encoderCallbacks
                    if how is _SHARED:
                        if shared is None:
                            shared = _SharedEncoderCallbacks(self, None)
                        f.setEncoderFilterCallbacks(shared)
                    elif how is _OWN:
                        f.setEncoderFilterCallbacks(_EncoderCallbacks(self, i))
                self._encodes = tuple(any(wanted) for wanted in zip(*(plan.encode for plan in plans)))
        late = self._encoderOnlyCompleters
        if late is not None:
            completers = self._completers
            for f in reversed(late):
                # a filter also installed on the decoder side is told once, in its decoder place
                if not any(g is f for g in completers):
                    completers.append(f)

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
        if self._decQueue is None:
            self._decQueue = deque()
        self._decQueue.append((kind, payload, endStream))
        if kind == _DATA:
            self._decQueued += len(payload)
            if self._decQueued > self.template.bufferLimit and not self._decPaused:
                self._decPaused = True
                self.downstream.pauseReading()

    def _decodeEvent(self, start, kind, payload, endStream):
        decoders = self.decoders
        plans = self._decoderPlans
        last = len(decoders) - 1
        for i in range(start, last + 1):
            if self.complete:
                return
            if plans[i].decode[kind]:
                f = decoders[i]
                if kind == _HEADERS:
                    status = f.decodeHeaders(payload, endStream)
                elif kind == _DATA:
                    status = f.decodeData(payload, endStream)
                else:
                    status = f.decodeTrailers(payload)
                if status is STOP:
                    if i == last:
                        # the terminal filter has taken the event; it needs no resume
                        return
                    self._decStopped = i
                    self._decPending = (kind, payload, endStream)
                    return

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
        if self._encodes[_HEADERS]:
            encoders = self.encoders
            if len(encoders) > 1:
                self._encodeEvent(0, _HEADERS, response, endStream)
                return
            # one encoder, which wants the head (the usual case when there is one): _encodeEvent's walk, inline
            if encoders[0].encodeHeaders(response, endStream) is STOP:
                self._encStopped = 0
                self._encPending = (_HEADERS, response, endStream)
                self._encQueue = deque()  # the head is the first encode event: nothing was queued before it
                return
            if self.complete:
                return
        # no encoder wants the head (and none can hold it: the head is the first encode event), or it went through
        self.downstream.writeHeaders(response, endStream)
        if endStream:
            self._finish()

    def encodeData(self, data, endStream):
        if self.complete:
            return
        if self._encStopped >= 0 or self._encQueue:
            self._encQueue.append((_DATA, data, endStream))
            return
        if self._encodes[_DATA]:
            self._encodeEvent(0, _DATA, data, endStream)
            return
        # no encoder wants body pieces: _encodeEvent's end, without its walk
        self.streamInfo.bytesSent += len(data)
        self.downstream.writeData(data, endStream)
        if endStream:
            self._finish()

    def encodeTrailers(self, trailers):
        if self.complete:
            return
        if self._encStopped >= 0 or self._encQueue:
            self._encQueue.append((_TRAILERS, trailers, True))
            return
        self._encodeEvent(0, _TRAILERS, trailers, True)

    def _encodeEvent(self, start, kind, payload, endStream):
        encoders = self.encoders
        plans = self._encoderPlans
        n = len(encoders)
        i = start
        while i < n:
            if plans[i].encode[kind]:
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
                    if self._encQueue is None:
                        self._encQueue = deque()
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
        self._decQueue = None
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
        plans = self._decoderPlans
        for i, f in enumerate(self.decoders):
            if plans[i].resets:
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
        for f in self._completers:
            try:
                f.onStreamComplete()
            except Exception:
                self.log.failure("filter {f!r} failed in onStreamComplete", f=f)
        streamEnded = self.template.streamEnded
        if streamEnded is not None:
            try:
                streamEnded(self.streamInfo)
            except Exception:  # the metrics never keep a stream from ending
                self.log.failure("counting the end of stream {info!r} failed", info=self.streamInfo)
        self.downstream.streamComplete(self)
        # the filters are done with: let go of them, so that the stream and its filters (which hold their
        # callbacks, and through them this stream) are freed by reference counting as the stream ends, not left
        # as cyclic garbage for the collector (26 objects a request, and a collection every ~25 requests)
        self.decoders = self.encoders = self._decoderPlans = self._encoderPlans = self._completers = ()

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
