"""The stream filter chain: order, STOP/resume, queuing, local replies, completion, declared events."""

import ast
import inspect
import itertools
import textwrap

import pytest
from twisted.internet.task import Clock
from zope.interface import classImplements, implementer
from zope.interface.verify import verifyObject

from txmesh.filters.access_log import AccessLogFilter, GrpcAccessLogFilter
from txmesh.filters.chain import FilterChainTemplate
from txmesh.filters.error_rate_breaker import ErrorRateBreakerFilter
from txmesh.filters.fault import FaultFilter
from txmesh.filters.header_mutation import HeaderMutationFilter
from txmesh.filters.local_rate_limit import LocalRateLimitFilter
from txmesh.filters.router import Router
from txmesh.interfaces import (
    FilterStatus,
    IStreamDecoderFilter,
    IStreamDecoderFilterCallbacks,
    IStreamEncoderFilter,
    IStreamEncoderFilterCallbacks,
    IStreamFilterEvents,
    StreamEvents,
)
from txmesh.stream import HeaderMap, RequestHead, ResponseHead, StreamInfo
from txmesh.testing import RecordingDownstream as FakeDownstream

CONTINUE, STOP = FilterStatus.CONTINUE, FilterStatus.STOP


@implementer(IStreamDecoderFilter, IStreamEncoderFilter)
class Recorder:
    """Records every event; answers with the statuses it is told to."""

    def __init__(self, name, log, statuses=None):
        self.name = name
        self.log = log
        self.statuses = statuses or {}
        self.dcb = self.ecb = None
        self.completed = False
        self.resetReason = None

    def setDecoderFilterCallbacks(self, cb):
        self.dcb = cb

    def setEncoderFilterCallbacks(self, cb):
        self.ecb = cb

    def _ev(self, kind, *args):
        self.log.append((self.name, kind) + args)
        return self.statuses.pop(kind, CONTINUE)

    def decodeHeaders(self, request, endStream):
        return self._ev("decodeHeaders", endStream)

    def decodeData(self, data, endStream):
        return self._ev("decodeData", data, endStream)

    def decodeTrailers(self, trailers):
        return self._ev("decodeTrailers")

    def encodeHeaders(self, response, endStream):
        return self._ev("encodeHeaders", response.status, endStream)

    def encodeData(self, data, endStream):
        return self._ev("encodeData", data, endStream)

    def encodeTrailers(self, trailers):
        return self._ev("encodeTrailers")

    def onStreamComplete(self):
        self.completed = True

    def onStreamReset(self, reason):
        self.resetReason = reason


class Terminal(Recorder):
    """Stands in for the router: takes every request event and answers once the request ended."""

    def _ev(self, kind, *args):
        self.log.append((self.name, kind) + args)
        if kind.startswith("decode") and (kind == "decodeTrailers" or args[-1] is True):
            self.dcb.encodeHeaders(ResponseHead(200), False)
            self.dcb.encodeData(b"hello", True)
        return STOP if kind.startswith("decode") else CONTINUE


class Factory:
    def __init__(self, make):
        self.make = make

    def createFilters(self, config, callbacks, runtime):
        callbacks.addStreamFilter(self.make())


class Entry:
    def __init__(self, factory):
        self.factory = factory
        self.config = None


class Runtime:
    def __init__(self):
        self.clock = Clock()


def makeStream(filters, bufferLimit=100):
    template = FilterChainTemplate([Entry(Factory(lambda f=f: f)) for f in filters], Runtime(), None,
                                   bufferLimit=bufferLimit)
    down = FakeDownstream()
    stream = template.createStream(down, StreamInfo(0, "http/1.1", "l"))
    return stream, down


def request():
    return RequestHead(b"GET", b"/", b"h")


def test_decode_in_order_encode_in_reverse():
    log = []
    a, b, t = Recorder("a", log), Recorder("b", log), Terminal("t", log)
    stream, down = makeStream([a, b, t])
    stream.decodeHeaders(request(), True)
    assert log == [("a", "decodeHeaders", True), ("b", "decodeHeaders", True), ("t", "decodeHeaders", True),
                   ("t", "encodeHeaders", 200, False), ("b", "encodeHeaders", 200, False),
                   ("a", "encodeHeaders", 200, False), ("t", "encodeData", b"hello", True),
                   ("b", "encodeData", b"hello", True), ("a", "encodeData", b"hello", True)]
    assert down.written == [("headers", 200, False), ("data", b"hello", True)]
    assert stream.complete and down.completed == [stream]
    assert a.completed and b.completed and t.completed
    assert stream.streamInfo.responseCode == 200 and stream.streamInfo.bytesSent == 5


def test_stop_holds_later_events_until_resume():
    log = []
    a = Recorder("a", log, {"decodeHeaders": STOP})
    t = Terminal("t", log)
    stream, down = makeStream([a, t])
    stream.decodeHeaders(request(), False)
    stream.decodeData(b"x" * 10, False)
    stream.decodeData(b"y", True)
    # nothing passed a yet, and the data waits behind the held headers
    assert log == [("a", "decodeHeaders", False)]
    assert down.written == []
    a.dcb.continueDecoding()
    assert log[1:] == [("t", "decodeHeaders", False), ("a", "decodeData", b"x" * 10, False),
                       ("t", "decodeData", b"x" * 10, False), ("a", "decodeData", b"y", True),
                       ("t", "decodeData", b"y", True)] + log[6:]
    assert down.written[-1] == ("data", b"hello", True)


def test_queued_bytes_past_the_buffer_limit_pause_downstream():
    log = []
    a = Recorder("a", log, {"decodeHeaders": STOP})
    stream, down = makeStream([a, Terminal("t", log)], bufferLimit=100)
    stream.decodeHeaders(request(), False)
    stream.decodeData(b"x" * 60, False)
    assert down.paused == 0
    stream.decodeData(b"x" * 60, False)
    assert down.paused == 1
    a.dcb.continueDecoding()
    assert down.resumed == 1


def test_local_reply_from_a_filter_skips_the_rest():
    log = []

    class Deny(Recorder):
        def decodeHeaders(self, request, endStream):
            self.log.append(("deny", "decodeHeaders"))
            self.dcb.sendLocalReply(401, b"no\n", cause="unauthorized", flag="UAEX")
            return STOP

    d, t = Deny("deny", log), Terminal("t", log)
    stream, down = makeStream([d, t])
    stream.decodeHeaders(request(), True)
    assert ("t", "decodeHeaders", True) not in log
    assert down.written == [("headers", 401, False), ("data", b"no\n", True)]
    assert stream.streamInfo.responseFlags == {"UAEX"}
    assert stream.complete


def test_local_reply_after_response_started_resets():
    log = []
    t = Recorder("t", log, {"decodeHeaders": STOP})
    stream, down = makeStream([t])
    stream.decodeHeaders(request(), True)
    t.dcb.encodeHeaders(ResponseHead(200), False)
    t.dcb.sendLocalReply(504, b"late", cause="upstream_request_timeout")
    assert down.resets == ["upstream_request_timeout"]
    assert stream.complete and t.resetReason == "upstream_request_timeout"


def test_encoder_stop_and_resume():
    log = []
    a = Recorder("a", log, {"encodeHeaders": STOP})
    t = Terminal("t", log)
    stream, down = makeStream([a, t])
    stream.decodeHeaders(request(), True)
    assert down.written == []
    a.ecb.continueEncoding()
    assert down.written == [("headers", 200, False), ("data", b"hello", True)]
    assert stream.complete


def test_downstream_reset_reaches_filters_once():
    log = []
    t = Recorder("t", log, {"decodeHeaders": STOP})
    stream, down = makeStream([t])
    stream.decodeHeaders(request(), False)
    stream.resetStream("downstream_disconnect")
    stream.resetStream("again")
    assert t.resetReason == "downstream_disconnect" and t.completed
    assert down.completed == [stream] and down.resets == []


# -- declared events (IStreamFilterEvents): what the chain skips, and that skipping changes nothing else ----------

E = StreamEvents
_EVENT_OF = {"decodeHeaders": E.DECODE_HEADERS, "decodeData": E.DECODE_DATA, "decodeTrailers": E.DECODE_TRAILERS,
             "encodeHeaders": E.ENCODE_HEADERS, "encodeData": E.ENCODE_DATA, "encodeTrailers": E.ENCODE_TRAILERS,
             "complete": E.STREAM_COMPLETE, "reset": E.STREAM_RESET, "setDecoderFilterCallbacks": E.DECODER_CALLBACKS,
             "setEncoderFilterCallbacks": E.ENCODER_CALLBACKS}


class Watcher(Recorder):
    """A Recorder that also logs its callbacks, completion and reset, in the one log."""

    def setDecoderFilterCallbacks(self, cb):
        self.log.append((self.name, "setDecoderFilterCallbacks"))
        self.dcb = cb

    def setEncoderFilterCallbacks(self, cb):
        self.log.append((self.name, "setEncoderFilterCallbacks"))
        self.ecb = cb

    def onStreamComplete(self):
        self.log.append((self.name, "complete"))
        self.completed = True

    def onStreamReset(self, reason):
        self.log.append((self.name, "reset", reason))
        self.resetReason = reason


def declaring(cls, events):
    """A subclass of ``cls`` that declares ``events`` (a fresh class: the chain reads a declaration per class)."""
    sub = type(cls.__name__ + "Declared", (cls,), {"streamEvents": events})
    classImplements(sub, IStreamFilterEvents)
    return sub


class Answering(Watcher):
    """The terminal: answers head, two body pieces and trailers once the request ended (the whole encode path)."""

    def _ev(self, kind, *args):
        Watcher._ev(self, kind, *args)
        if kind.startswith("decode") and (kind == "decodeTrailers" or args[-1] is True):
            self.dcb.encodeHeaders(ResponseHead(200), False)
            self.dcb.encodeData(b"he", False)
            self.dcb.encodeData(b"llo", False)
            self.dcb.encodeTrailers(HeaderMap([(b"grpc-status", b"0")]))
        return STOP if kind.startswith("decode") else CONTINUE


# the terminal on the decoder side only, as the router: with no encoder wanting an event it goes straight downstream
AnsweringDeclared = declaring(Answering, E.DECODE | E.DECODER_CALLBACKS | E.STREAM_COMPLETE | E.STREAM_RESET)


def _getWithBody(stream):
    stream.decodeHeaders(request(), False)
    stream.decodeData(b"ab", False)
    stream.decodeData(b"c", False)
    stream.decodeTrailers(HeaderMap([(b"x-t", b"1")]))


def _getAlone(stream):
    stream.decodeHeaders(request(), True)


def _resetMidway(stream):
    stream.decodeHeaders(request(), False)
    stream.decodeData(b"ab", False)
    stream.resetStream("downstream_disconnect")


SCENARIOS = [_getWithBody, _getAlone, _resetMidway]
WATCHED = [E.DECODE_HEADERS, E.DECODE_DATA, E.DECODE_TRAILERS, E.ENCODE_HEADERS, E.ENCODE_DATA, E.ENCODE_TRAILERS,
           E.STREAM_COMPLETE, E.STREAM_RESET, E.DECODER_CALLBACKS, E.ENCODER_CALLBACKS]


def _run(scenario, watcherClass, holder=None):
    """[holder (STOPs the request head and the response head, resumes both at once)], the watcher, the terminal."""
    log = []
    filters = []
    if holder is not None:
        filters.append(holder("h", log, {"decodeHeaders": STOP, "encodeHeaders": STOP}))
    w = watcherClass("w", log)
    filters += [w, AnsweringDeclared("t", log)]
    stream, down = makeStream(filters, bufferLimit=1)
    scenario(stream)
    if holder is not None:
        h = filters[0]
        if not stream.complete:
            h.dcb.continueDecoding()
        if not stream.complete:
            h.ecb.continueEncoding()
    return log, down, stream


@pytest.mark.parametrize("scenario", SCENARIOS)
@pytest.mark.parametrize("holder", [None, "undeclared", "declared"])
def test_a_declared_filter_sees_what_it_declared_and_the_rest_runs_as_if_it_had_not(scenario, holder):
    """
    Every combination of declared events, for a filter between one that holds events (STOP then resume, both
    ways) and the terminal: the stream behaves as with the filter undeclared (the same bytes downstream, paused and
    resumed alike, the same calls to the others, completion), and the filter gets exactly the calls it declared.
    """
    holderClass = {None: None, "undeclared": Watcher,
                   "declared": declaring(Watcher, E.DECODE_HEADERS | E.ENCODE_HEADERS | E.DECODER_CALLBACKS
                                         | E.ENCODER_CALLBACKS | E.RESUMES_DECODING | E.RESUMES_ENCODING)}[holder]
    slowLog, slowDown, slowStream = _run(scenario, Watcher, holderClass)
    for n in range(len(WATCHED) + 1):
        for chosen in itertools.combinations(WATCHED, n):
            events = E(0)
            for e in chosen:
                events |= e
            log, down, stream = _run(scenario, declaring(Watcher, events), holderClass)
            assert down.written == slowDown.written
            assert (down.paused, down.resumed, down.resets) == (slowDown.paused, slowDown.resumed, slowDown.resets)
            assert down.completed == [stream] and stream.complete
            assert stream.streamInfo.bytesSent == slowStream.streamInfo.bytesSent
            expected = [e for e in slowLog if e[0] != "w" or _EVENT_OF[e[1]] & events]
            assert log == expected, events


def test_an_encode_event_no_encoder_wants_goes_straight_downstream():
    """The fast path (no encoder wants the event) writes what the walk writes: the same order, counts and end."""
    log = []
    quiet = declaring(Watcher, E.DECODE_HEADERS | E.DECODE_DATA | E.DECODE_TRAILERS)
    stream, down = makeStream([quiet("q", log), AnsweringDeclared("t", log)])
    assert stream.encoders == []
    _getWithBody(stream)
    assert down.written == [("headers", 200, False), ("data", b"he", False), ("data", b"llo", False),
                            ("trailers", [(b"grpc-status", b"0")])]
    assert stream.streamInfo.bytesSent == 5 and stream.streamInfo.responseCode == 200
    assert stream.complete and down.completed == [stream]
    # a head that ends the stream ends it on the fast path too, and nothing is written after
    log = []
    t = declaring(Watcher, E.DECODE_HEADERS | E.DECODER_CALLBACKS)("t", log)
    stream, down = makeStream([t])
    stream.decodeHeaders(request(), True)
    t.dcb.encodeHeaders(ResponseHead(204), True)
    t.dcb.encodeData(b"late", True)
    assert down.written == [("headers", 204, True)] and stream.complete and down.completed == [stream]


def test_a_filter_is_only_on_the_sides_it_declared_calls_of():
    log = []
    requestOnly = declaring(Watcher, E.DECODE_HEADERS)("r", log)
    responseOnly = declaring(Watcher, E.ENCODE_DATA | E.STREAM_COMPLETE)("s", log)
    t = Terminal("t", log)
    stream, down = makeStream([requestOnly, responseOnly, t])
    assert stream.decoders == [requestOnly, t] and stream.encoders == [t, responseOnly]  # encoders: encode order
    # no callbacks asked for, none given
    assert requestOnly.dcb is requestOnly.ecb is responseOnly.dcb is responseOnly.ecb is None
    stream.decodeHeaders(request(), True)
    assert ("r", "decodeHeaders", True) in log and ("s", "encodeData", b"hello", True) in log
    assert not requestOnly.completed and responseOnly.completed


def test_filters_that_never_resume_share_one_callbacks_object_per_side():
    log = []
    plain = declaring(Watcher, E.DECODE_HEADERS | E.ENCODE_HEADERS | E.DECODER_CALLBACKS | E.ENCODER_CALLBACKS)
    resuming = declaring(Watcher, E.DECODE_HEADERS | E.DECODER_CALLBACKS | E.RESUMES_DECODING
                         | E.ENCODER_CALLBACKS | E.RESUMES_ENCODING)
    a, b, c, t = plain("a", log), plain("b", log), resuming("c", log), Terminal("t", log)

    class Routes:
        matched = 0

        def match(self, request, peer=None):
            self.matched += 1
            return Route()

    class Route:
        name = "r"

    routes = Routes()
    template = FilterChainTemplate([Entry(Factory(lambda f=f: f)) for f in (a, b, c, t)], Runtime(), routes)
    down = FakeDownstream()
    stream = template.createStream(down, StreamInfo(0, "http/1.1", "l"))
    assert a.dcb is b.dcb and a.ecb is b.ecb
    assert c.dcb is not a.dcb and c.ecb is not a.ecb and t.dcb is not a.dcb  # the undeclared terminal: its own
    for cb in (a.dcb, c.dcb):
        assert verifyObject(IStreamDecoderFilterCallbacks, cb)
    for cb in (a.ecb, c.ecb):
        assert verifyObject(IStreamEncoderFilterCallbacks, cb)
    # what a shared object does is the stream's; only what needs to know the caller refuses
    stream.request = request()
    assert a.dcb.streamInfo is stream.streamInfo and a.dcb.request is stream.request
    route = a.dcb.route()
    assert route.name == "r" and b.dcb.route() is route and c.dcb.route() is route and routes.matched == 1
    assert stream.streamInfo.routeName == "r"
    a.dcb.clearRouteCache()
    assert a.dcb.route() is not route and routes.matched == 2
    with pytest.raises(TypeError, match="RESUMES_DECODING"):
        a.dcb.continueDecoding()
    with pytest.raises(TypeError, match="RESUMES_DECODING"):
        a.dcb.addDecodedData(b"x")
    with pytest.raises(TypeError, match="RESUMES_ENCODING"):
        a.ecb.continueEncoding()
    stream.decodeHeaders(request(), True)
    assert down.written == [("headers", 200, False), ("data", b"hello", True)]
    # a local reply through the shared object
    log = []
    d = plain("d", log)
    stream, down = makeStream([d, Terminal("t", log)])
    stream.request = request()
    d.dcb.sendLocalReply(429, b"slow down", cause="local_rate_limited", flag="RL")
    assert down.written == [("headers", 429, False), ("data", b"slow down", True)]
    assert stream.streamInfo.responseFlags == {"RL"} and stream.complete


def test_completion_order_and_once_per_filter_as_before():
    """Decoder-side filters in configuration order, then encoder-only ones in encode order; each once."""
    log = []
    both, dec, enc1, enc2, t = (Watcher(n, log) for n in ("both", "dec", "enc1", "enc2", "t"))
    split = Watcher("split", log)  # installed with a decoder call and an encoder call: told once

    class Install:
        def createFilters(self, config, callbacks, runtime):
            callbacks.addStreamFilter(both)
            callbacks.addStreamEncoderFilter(split)
            callbacks.addStreamDecoderFilter(dec)
            callbacks.addStreamEncoderFilter(enc1)
            callbacks.addStreamDecoderFilter(split)
            callbacks.addStreamEncoderFilter(enc2)
            callbacks.addStreamDecoderFilter(t)

    template = FilterChainTemplate([Entry(Install())], Runtime(), None)
    stream = template.createStream(FakeDownstream(), StreamInfo(0, "http/1.1", "l"))
    stream.resetStream("downstream_disconnect")
    assert [e[0] for e in log if e[1] == "complete"] == ["both", "dec", "split", "t", "enc2", "enc1"]
    assert [e[0] for e in log if e[1] == "reset"] == ["both", "dec", "split", "t"]


def test_reset_reaches_only_the_filters_that_declared_it_then_completion():
    log = []
    noReset = declaring(Watcher, E.DECODE_HEADERS | E.STREAM_COMPLETE)("n", log)
    t = Watcher("t", log, {"decodeHeaders": STOP})
    stream, down = makeStream([noReset, t])
    stream.decodeHeaders(request(), False)
    stream.resetStream("downstream_disconnect")
    assert log[-3:] == [("t", "reset", "downstream_disconnect"), ("n", "complete"), ("t", "complete")]
    assert noReset.resetReason is None


def test_a_declaration_is_read_once_per_class_and_must_be_stream_events():
    log = []
    bad = declaring(Watcher, 3)
    with pytest.raises(TypeError, match=r"WatcherDeclared.streamEvents must be txmesh.interfaces.StreamEvents"):
        makeStream([bad("b", log), Terminal("t", log)])
    good = declaring(Watcher, E.DECODE_HEADERS)
    template = FilterChainTemplate([Entry(Factory(lambda: good("g", log))), Entry(Factory(lambda: Terminal("t", log)))],
                                   Runtime(), None)
    first = template.createStream(FakeDownstream(), StreamInfo(0, "http/1.1", "l"))
    good.streamEvents = E.ALL  # too late: the class was read on its first stream
    second = template.createStream(FakeDownstream(), StreamInfo(0, "http/1.1", "l"))
    assert len(first.encoders) == len(second.encoders) == 1  # the terminal alone


# The built-in filters' declarations leave out only calls whose method does nothing: ``return CONTINUE``, ``pass``,
# or (for onStreamReset) hand over to onStreamComplete, which is declared and always follows a reset.
BUILT_IN = [Router, ErrorRateBreakerFilter, LocalRateLimitFilter, HeaderMutationFilter, FaultFilter, AccessLogFilter,
            GrpcAccessLogFilter]
_METHOD_OF = {E.DECODE_HEADERS: "decodeHeaders", E.DECODE_DATA: "decodeData", E.DECODE_TRAILERS: "decodeTrailers",
              E.ENCODE_HEADERS: "encodeHeaders", E.ENCODE_DATA: "encodeData", E.ENCODE_TRAILERS: "encodeTrailers",
              E.STREAM_COMPLETE: "onStreamComplete", E.STREAM_RESET: "onStreamReset",
              E.DECODER_CALLBACKS: "setDecoderFilterCallbacks", E.ENCODER_CALLBACKS: "setEncoderFilterCallbacks"}


def _doesNothing(method, events):
    tree = ast.parse(textwrap.dedent(inspect.getsource(method)))
    body = tree.body[0].body
    if isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]  # the docstring
    if len(body) != 1:
        return False
    [statement] = body
    if isinstance(statement, ast.Pass):
        return True
    if isinstance(statement, ast.Return):
        return ast.unparse(statement.value) in ("CONTINUE", "FilterStatus.CONTINUE")
    return (method.__name__ == "onStreamReset" and bool(events & E.STREAM_COMPLETE)
            and ast.unparse(statement) == "self.onStreamComplete()")


@pytest.mark.parametrize("cls", BUILT_IN, ids=lambda c: c.__name__)
def test_the_built_in_filters_declare_every_call_that_does_something(cls):
    assert IStreamFilterEvents.implementedBy(cls) and isinstance(cls.streamEvents, StreamEvents)
    events = cls.streamEvents
    for flag, name in _METHOD_OF.items():
        method = getattr(cls, name, None)
        if method is None or flag & events:
            continue
        assert _doesNothing(method, events), "%s.%s does something but is not declared" % (cls.__name__, name)
    # a filter holding an event it lets go on later must say so (its callbacks are then its own)
    source = inspect.getsource(cls)
    for call, flag in ((".continueDecoding()", E.RESUMES_DECODING), (".addDecodedData(", E.RESUMES_DECODING),
                       (".continueEncoding()", E.RESUMES_ENCODING)):
        assert call not in source or events & flag, "%s calls %s but does not declare %s" % (cls.__name__, call,
                                                                                             flag.name)
    verifyObject(IStreamFilterEvents, cls.__new__(cls))


# -- one encoder: the head goes to it without the walk (docs/performance.md, "Resilience within 10 % (3)") ----------

@pytest.mark.parametrize("second", [False, True])
def test_one_encoder_holding_the_head_then_resuming_behaves_as_with_a_second_encoder_beside_it(second):
    """
    The response head given straight to a stream's only encoder (no walk) and, for comparison, the same with a
    second, pass-through encoder (the walk): held by STOP, the body queued behind it, resumed, then the same bytes
    downstream in the same order and one completion.
    """
    log = []
    holder = declaring(Recorder, E.ENCODE | E.ENCODER_CALLBACKS | E.RESUMES_ENCODING)("h", log,
                                                                                    {"encodeHeaders": STOP})
    filters = [holder]
    if second:
        filters.append(declaring(Recorder, E.ENCODE)("p", log))
    filters.append(AnsweringDeclared("t", log))
    stream, down = makeStream(filters)
    assert len(stream.encoders) == len(filters) - 1
    stream.decodeHeaders(request(), True)
    assert down.written == [] and not stream.complete
    holder.ecb.continueEncoding()
    assert down.written == [("headers", 200, False), ("data", b"he", False), ("data", b"llo", False),
                            ("trailers", [(b"grpc-status", b"0")])]
    assert down.completed == [stream]
    assert [e[:2] for e in log if e[0] == "h"] == [("h", "encodeHeaders"), ("h", "encodeData"), ("h", "encodeData"),
                                                  ("h", "encodeTrailers")]


def test_one_encoder_that_ends_the_stream_from_the_head_writes_nothing_more():
    class Resetting(Recorder):
        streamEvents = E.ENCODE_HEADERS | E.DECODER_CALLBACKS

        def encodeHeaders(self, response, endStream):
            self.dcb.resetStream("enough")
            return CONTINUE

    classImplements(Resetting, IStreamFilterEvents)
    log = []
    f = Resetting("r", log)
    stream, down = makeStream([f, AnsweringDeclared("t", log)])
    stream.decodeHeaders(request(), True)
    assert stream.complete and down.written == [] and down.resets == ["enough"]
