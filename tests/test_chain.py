"""The stream filter chain: order, STOP/resume, queuing, local replies, completion."""

from twisted.internet.task import Clock
from zope.interface import implementer

from txmesh.filters.chain import FilterChainTemplate
from txmesh.interfaces import FilterStatus, IStreamDecoderFilter, IStreamEncoderFilter
from txmesh.stream import RequestHead, ResponseHead, StreamInfo
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
