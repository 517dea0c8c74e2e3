"""
The Dubbo 2 listener: many calls in flight per connection, each one stream through the listener's filter chain
and the generic router.

The protocol only dispatches: bytes go to L{DubboDecoder}; heartbeats are answered here with the same id; every
other request becomes a L{RequestHead} (protocol 'dubbo', method = the method name, authority = the interface,
path ``/<interface>/<method>``, metadata interface/method/version/group, the string attachments as header fields,
timeout from the ``timeout`` attachment, payload = the frame) decoded with endStream; an ``x-request-id``
attachment is added when the call has none (kept from a trusted peer), so one id names the call at every hop.
Responses come back as a ResponseHead whose status is the Dubbo status and the response frame as data; they are
written with the downstream request id.  Errors the proxy decides (no route, timeout, overflow...) become Dubbo error responses
carrying the request's id (L{DubboCall.makeLocalReply}).  The upstream side is L{txmesh.protocols.dubbo.client}.
"""

from twisted.logger import Logger
from zope.interface import implementer

from txmesh.interfaces import IDownstreamStream
from txmesh.protocols.listener import Deadline, ListenerFactory, ListenerProtocol
from txmesh.protocols.transport import callInScope
from txmesh.protocols.dubbo import codec as dc
from txmesh.protocols.dubbo.client import attachmentHeaders
from txmesh.protocols.dubbo.replies import dubboStatusFor, encodeValueResponse
from txmesh.protocols.dubbo.stats import DEFAULT_MAX_SERVICE_METHODS, DubboListenerStats
from txmesh.stream import HeaderMap, RequestHead, ResponseHead, newRequestId

# -- request heads --------------------------------------------------------------------------------------------------


def _serviceKey(path):
    """(group, interface, version) of a URL-style service path "group/interface:version" (parts may be absent)."""
    group, _, rest = path.rpartition("/")
    interface, _, version = rest.partition(":")
    return group, interface, version


def requestHead(frame, inv):
    """The RequestHead filters and the router see for a Dubbo request (``inv`` None: header-level only)."""
    if inv is None:
        head = RequestHead(b"", b"/", b"", scheme=b"dubbo", protocol="dubbo",
                           metadata={"serialization": str(frame.serializationId)}, contentLength=len(frame.body))
        head.payload = frame
        return head
    attachments = inv.attachments
    pathGroup, pathInterface, pathVersion = _serviceKey(inv.serviceName)
    interface = attachments.get("interface")
    if type(interface) is not str or not interface:
        interface = pathInterface
    group = attachments.get("group")
    if type(group) is not str:
        group = pathGroup
    version = inv.serviceVersion or attachments.get("version")
    if type(version) is not str:
        version = pathVersion
    method = inv.methodName
    bInterface = interface.encode("utf-8", "surrogatepass")
    bMethod = method.encode("utf-8", "surrogatepass")
    head = RequestHead(bMethod, b"/" + bInterface + b"/" + bMethod, bInterface,
                       HeaderMap(attachmentHeaders(attachments)), scheme=b"dubbo", protocol="dubbo",
                       metadata={"interface": interface, "method": method, "version": version or "",
                                 "group": group or "", "dubbo_version": inv.dubboVersion or "",
                                 "path": inv.serviceName, "parameter_types": inv.parameterTypes},
                       contentLength=len(frame.body))
    timeout = attachments.get("timeout")
    try:
        timeout = int(timeout) if timeout is not None and not isinstance(timeout, bool) else None
    except (TypeError, ValueError):
        timeout = None
    if timeout is not None and timeout > 0:
        head.timeout = timeout / 1000.0
    head.payload = frame
    return head


# -- the downstream side of one call ----------------------------------------------------------------------------------


@implementer(IDownstreamStream)
class DubboCall:
    """One downstream call: the ``downstream`` object of its ActiveStream (see txmesh.filters.chain)."""

    __slots__ = ("proto", "requestId", "twoWay", "serializationId", "methodStats", "written", "stream", "label")

    def __init__(self, proto, frame, methodStats, label):
        self.proto = proto
        self.requestId = frame.requestId
        self.twoWay = frame.twoWay
        self.serializationId = frame.serializationId
        self.methodStats = methodStats
        self.written = False
        self.stream = None
        self.label = label

    def writeHeaders(self, response, endStream):
        if not self.twoWay:
            return
        self.methodStats.response(response.status)
        if endStream:
            # a response without a frame (a filter's empty reply): still answer the id
            if response.status == dc.OK:
                body = b"\x92"  # result flag: null value
                self._write(dc.encodeHeader(self.serializationId, dc.OK, self.requestId, 1) + body)
            else:
                self._write(dc.encodeResponse(self.requestId, response.status,
                                              self.proto.factory.errorPrefix + "empty response", self.serializationId))

    def writeData(self, data, endStream):
        if not self.twoWay or not data or self.written:
            return
        if data[3] == dc.OK and len(data) > 16 and data[16] in (0x90, 0x93):
            self.methodStats.businessExceptions.value += 1
        self._write(dc.withRequestId(data[:16], self.requestId) + data[16:])

    def writeTrailers(self, trailers):
        pass

    def _write(self, data):
        self.written = True
        if self.proto.transport is not None and not self.proto.closed:
            self.proto.out.write(data)

    def makeLocalReply(self, status, body=b"", headers=(), cause=None):
        if isinstance(cause, bytes):
            cause = cause.decode("ascii", "replace")
        if cause:
            self.proto.factory.stats.error(cause)
        if cause == "upstream_request_timeout":
            self.methodStats.timeouts.value += 1
        dubboStatus = dubboStatusFor(status, cause, headers)
        text = body.decode("utf-8", "replace").strip() if isinstance(body, bytes) else str(body)
        if dubboStatus == dc.OK:
            return ResponseHead(dc.OK), encodeValueResponse(self.requestId, text)
        message = "%s%s (%s)" % (self.proto.factory.errorPrefix, text or cause or "error", self.label)
        return ResponseHead(dubboStatus), dc.encodeResponse(self.requestId, dubboStatus, message)

    def reset(self, reason):
        """A filter gave up after the response started; a Dubbo response is one frame, so answer if none went."""
        if self.twoWay and not self.written:
            self._write(dc.encodeResponse(self.requestId, dc.SERVER_ERROR,
                                          "%s%s" % (self.proto.factory.errorPrefix, reason)))

    def pauseReading(self):
        self.proto.pauseReading()

    def resumeReading(self):
        self.proto.resumeReading()

    def streamComplete(self, stream):
        self.proto.callEnded(self)
        self.stream = None  # the ActiveStream refers back to this call: no cycle left for the collector


# -- the listener ---------------------------------------------------------------------------------------------------


class DubboServerProtocol(ListenerProtocol):
    """One downstream Dubbo connection; see the module docstring."""

    log = Logger()

    def __init__(self, factory):
        ListenerProtocol.__init__(self, factory)
        self.decoder = None
        self.calls = {}  # downstream id -> DubboCall (two-way)
        self.oneWay = set()  # DubboCall of one-way requests still in the chain
        self.closed = False
        self.broken = False  # framing lost: no more reading, close once the calls in flight are answered
        self._pauses = 0
        self.readOnly = False  # READONLY sent (a drain began): close once the grace is over and no call is in flight
        self._grace = None  # the drain grace's timer, while it runs
        # idle: no bytes read for the listener's idle_timeout, and no call in flight
        self._idle = Deadline(factory.clock, factory.limits.idleTimeout or 3600.0, self._idleTimedOut)

    def connectionMade(self):
        ListenerProtocol.connectionMade(self)
        f = self.factory
        self.decoder = dc.DubboDecoder(f.maxBodyBytes)
        self._idle.set(f.limits.idleTimeout)

    def dataReceived(self, data):
        if not self.closed and not self.broken:
            callInScope(self.out.scope, self._received, data)

    def _received(self, data):
        self._idle.set(self.factory.limits.idleTimeout)
        try:
            frames = self.decoder.feed(data)
        except dc.DubboCodecError as e:
            for frame in e.frames:
                self._frameReceived(frame)
            self._fatal(e)
            return
        for frame in frames:
            self._frameReceived(frame)
            if self.closed:
                return

    def _frameReceived(self, frame):
        f = self.factory
        if not frame.isRequest:
            return  # a reply to nothing we asked (we send no heartbeats downstream): ignore
        if frame.event:
            if frame.twoWay:
                f.stats.heartbeats.value += 1
                self.out.write(dc.encodeHeartbeatResponse(frame.requestId, frame.serializationId))
            return
        f.stats.rq_total.value += 1
        try:
            inv = frame.invocation
        except dc.DubboCodecError as e:
            f.stats.decode_errors.value += 1
            if frame.twoWay:
                self.out.write(dc.encodeResponse(frame.requestId, dc.BAD_REQUEST, f.errorPrefix + e.reason,
                                                 frame.serializationId))
            return
        if inv is None:
            service, method = "_unknown", "_unknown"
        else:
            service, method = inv.interface, inv.methodName
        methodStats = f.stats.method(service, method)
        if frame.twoWay:
            methodStats.twoWay.value += 1
            if frame.requestId in self.calls:
                f.stats.decode_errors.value += 1
                self.out.write(dc.encodeResponse(frame.requestId, dc.BAD_REQUEST,
                                                 f.errorPrefix + "request id already in flight",
                                                 frame.serializationId))
                return
        else:
            methodStats.oneWay.value += 1
        head = requestHead(frame, inv)
        if not frame.twoWay:
            head.metadata["one_way"] = "true"  # no answer expected: the router never retries it
        call = DubboCall(self, frame, methodStats, "%s.%s" % (service, method))
        if frame.twoWay:
            self.calls[frame.requestId] = call
        else:
            self.oneWay.add(call)
        f.stats.rq_active.value += 1
        info = self.streamInfo("dubbo")
        # one id across hops (the frame's id is per connection): the x-request-id attachment, kept from a trusted
        # peer, else made here and added (the call is then re-encoded with it: once, on the first hop)
        rid = head.headers.get(b"x-request-id")
        if rid is None or not self.peerTrusted:
            rid = newRequestId()
            if inv is not None:
                head.headers.set(b"x-request-id", rid)
        info.requestId = rid
        info.bytesReceived = len(frame.header) + len(frame.body)
        info.metadata = head.metadata
        call.stream = stream = f.template.createStream(call, info)
        stream.decodeHeaders(head, True)

    def callEnded(self, call):
        if call.twoWay:
            if self.calls.get(call.requestId) is not call:
                return
            del self.calls[call.requestId]
        else:
            if call not in self.oneWay:
                return
            self.oneWay.discard(call)
        self.factory.stats.rq_active.value -= 1
        closing = self.broken or ((self.factory.draining or self.readOnly) and self._grace is None)
        if closing and not self.calls and not self.oneWay:
            self._close()

    def _fatal(self, exc):
        """Framing is lost: answer the id if the header was readable, then close."""
        f = self.factory
        f.stats.decode_errors.value += 1
        f.stats.cx_protocol_error.value += 1
        if exc.requestId is not None and exc.twoWay:
            self.out.write(dc.encodeResponse(exc.requestId, exc.status, f.errorPrefix + exc.reason))
        # stop reading; the calls read before the bad bytes are answered first (their route timeout bounds them)
        self.broken = True
        if not self.calls and not self.oneWay:
            self._close()

    # -- flow control, idle, close ---------------------------------------------------------------------------------

    def pauseReading(self):
        self._pauses += 1
        if self._pauses == 1 and not self.closed:
            self.transport.pauseProducing()

    def resumeReading(self):
        if self._pauses:
            self._pauses -= 1
            if self._pauses == 0 and not self.closed:
                self.transport.resumeProducing()

    def _idleTimedOut(self, kind):
        f = self.factory
        if self.closed:
            return
        if self.calls or self.oneWay:
            # calls in flight: not idle; look again a whole timeout later
            self._idle.set(f.limits.idleTimeout)
            return
        f.stats.cx_idle_timeout.value += 1
        self._close()

    def _close(self):
        if self.closed:
            return
        self.closed = True
        if self._pauses:
            self._pauses = 0
            self.transport.resumeProducing()
        self.out.flush()
        self.transport.loseConnection()

    def isIdle(self):
        """
        No call in flight (a request frame still arriving is not seen: the codec does not say what it holds; its
        caller sees the connection close before any response, as at an idle timeout).
        """
        return not self.calls and not self.oneWay and not self.closed and not self.broken

    def drain(self):
        """
        Dubbo's graceful close, as a Dubbo 2.7+/3 provider's (HeaderExchangeServer.close): send the READONLY event,
        so that the consumer sends no new call here; go on reading and answering for the listener's
        ``limits.drain_grace`` (calls it sent meanwhile are served, not lost to the close); then close once no
        call is in flight.  Without a grace: close now if idle, else once the calls in flight are answered.
        """
        if self.closed:
            return
        f = self.factory
        grace = f.limits.drainGrace
        if not self.readOnly and not self.broken:
            self.readOnly = True
            f.stats.readonly_sent.value += 1
            self.out.write(dc.encodeReadOnlyEvent(f.nextEventId()))
            if grace:
                self.out.flush()
                self._grace = f.clock.callLater(grace, self._graceEnded)
                return
        if self._grace is None and not self.calls and not self.oneWay:
            self._close()

    def closeIfIdle(self):
        """Under memory pressure an idle connection closes at once (no READONLY grace: that is for drains)."""
        if self.isIdle():
            self._close()
            return True
        return False

    def _graceEnded(self):
        self._grace = None
        if not self.calls and not self.oneWay:
            self._close()

    def connectionLost(self, reason):
        self.closed = True
        self._idle.release()
        grace, self._grace = self._grace, None
        if grace is not None and grace.active():
            grace.cancel()
        for call in list(self.calls.values()) + list(self.oneWay):
            if call.twoWay:
                # a one-way call already sent upstream may still complete; a two-way one has no one to answer
                call.stream.resetStream("downstream_disconnect")
        ListenerProtocol.connectionLost(self, reason)


class DubboListenerFactory(ListenerFactory):
    """
    Makes the server protocol of one Dubbo listener.  The payload limit is the listener's
    ``limits.max_request_body`` (default 8 MiB, as Dubbo's); requests no route matches go to ``default_cluster``
    (the route table carries it).
    """

    protocol = DubboServerProtocol

    def __init__(self, listenerConfig, template, runtime, stats=None,
                 maxServiceMethods=DEFAULT_MAX_SERVICE_METHODS):
        ListenerFactory.__init__(self, listenerConfig, template, runtime,
                                 stats if stats is not None else DubboListenerStats(runtime.stats,
                                                                                    listenerConfig.name,
                                                                                    maxServiceMethods))
        self.maxBodyBytes = self.limits.maxRequestBody or dc.DEFAULT_MAX_BODY_BYTES
        # every error text this listener writes names the sidecar, so a caller can tell which hop failed
        self.errorPrefix = "txmesh %s: " % (self.nodeId,)
        self._eventIds = 0

    def nextEventId(self):
        """The request id of an event this listener sends (READONLY): one counter per listener, as Dubbo's."""
        self._eventIds += 1
        return self._eventIds
