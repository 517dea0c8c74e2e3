"""
The ``dubbo`` active health check, on a connection of its own (never the data-path pool), with txmesh's Dubbo
codec: by default a heartbeat (an event request frame with a null body) that the provider must answer with an OK
event response, as Dubbo's own HeaderExchangeHandler does; with ``interface`` set, an invocation of ``method``
(default ``$echo``, which Java providers answer through their EchoFilter) with one String argument, which must
come back OK and not an exception.
"""

import dataclasses

from zope.interface import implementer

from txmesh.interfaces import IHealthChecker, IHealthCheckerFactory
from txmesh.protocols.dubbo import codec as dc
from txmesh.protocols.dubbo.hessian2 import Hessian2Writer
from txmesh.upstream.health import PASSED, CheckOutcome, CheckResult, ProbeChecker, ProbeProtocol, failed

DUBBO_VERSION = "2.0.2"
_CHECK_ID = 1
_EXCEPTION_FLAGS = (dc.RESPONSE_WITH_EXCEPTION, dc.RESPONSE_WITH_EXCEPTION_WITH_ATTACHMENTS)


@dataclasses.dataclass(frozen=True, slots=True)
class DubboCheckConfig:
    interface: str = ""  # "" = heartbeat
    method: str = "$echo"
    version: str = "0.0.0"
    group: str = ""
    argument: str = "txmesh-health-check"


def encodeCheckRequest(config, requestId=_CHECK_ID):
    """The frame of one check: a heartbeat, or the invocation the config describes."""
    if not config.interface:
        return dc.encodeHeartbeat(requestId)
    w = Hessian2Writer()
    for s in (DUBBO_VERSION, config.interface, config.version, config.method, "Ljava/lang/String;",
              config.argument):
        w.writeString(s)
    attachments = {"path": config.interface, "interface": config.interface, "version": config.version}
    if config.group:
        attachments["group"] = config.group
    w.writeSimpleMap(attachments)
    body = w.getvalue()
    return dc.encodeHeader(dc.FLAG_REQUEST | dc.FLAG_TWOWAY | dc.HESSIAN2, 0, requestId, len(body)) + body


def judgeResponse(config, frame):
    """The CheckResult of the provider's response frame to the check."""
    if frame.status != dc.OK:
        message = dc.decodeErrorMessage(frame) if not frame.event else None
        return failed("dubbo status %d%s" % (frame.status, ": " + message if message else ""))
    if not config.interface:
        return PASSED if frame.event else failed("answered the heartbeat with a non-event response")
    if frame.event:
        return failed("answered the invocation with an event")
    try:
        flag = dc.decodeResultFlag(frame)
    except dc.DubboCodecError as e:
        return failed(e.reason)
    if flag in _EXCEPTION_FLAGS:
        return failed("%s.%s threw an exception" % (config.interface, config.method))
    return PASSED


class _DubboProbe(ProbeProtocol):
    """Sends the check's frame, answers the provider's heartbeats, fires ``finished`` at the response."""

    lostReason = "connection closed before the response"

    def __init__(self, config, request):
        super().__init__()
        self.config = config
        self.request = request
        self.decoder = dc.DubboDecoder()

    def connectionMade(self):
        self.transport.write(self.request)

    def dataReceived(self, data):
        try:
            frames = self.decoder.feed(data)
        except dc.DubboCodecError as e:
            self.finish(CheckResult(CheckOutcome.NETWORK, "bad dubbo framing: " + e.reason))
            return
        for frame in frames:
            if frame.isRequest:
                if frame.event and frame.twoWay:  # the provider's own heartbeat
                    self.transport.write(dc.encodeHeartbeatResponse(frame.requestId, frame.serializationId))
            elif frame.requestId == _CHECK_ID:
                self.finish(judgeResponse(self.config, frame))


@implementer(IHealthChecker)
class DubboChecker(ProbeChecker):
    """A heartbeat or an invocation per check, on a Dubbo connection of its own."""

    def __init__(self, config, host, reactor):
        super().__init__(config, host, reactor)
        self.request = encodeCheckRequest(config)

    def makeProtocol(self):
        return _DubboProbe(self.config, self.request)


@implementer(IHealthCheckerFactory)
class DubboCheckerFactory:
    name = "dubbo"
    protocols = frozenset({"dubbo"})
    keys = ("interface", "method", "version", "group", "argument")

    def buildConfig(self, raw, context):
        values = {}
        for key in self.keys:
            value = raw.get(key)
            if value is None:
                continue
            if not isinstance(value, str) or not value.isprintable() or (key != "argument" and not value):
                raise context.error("must be a printable string, not empty", key)
            values[key] = value
        if "interface" not in values and len(values):
            raise context.error("%s needs interface (without it the check is a heartbeat)" % (
                ", ".join(sorted(values)),), sorted(values)[0])
        return DubboCheckConfig(**values)

    def makeChecker(self, config, host, reactor):
        return DubboChecker(config, host, reactor)
