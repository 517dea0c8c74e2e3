"""
The upstream side of Dubbo: one client connection multiplexing many calls, for L{MultiplexConnectionPool}.

Each call gets a fresh request id on this connection (ids from different downstream clients never collide); the
response is matched back by that id and handed to the call's responder (the router) as a ResponseHead whose status
is the Dubbo status byte, then the response frame's bytes as data (the listener rewrites the id back).  Request
bodies are forwarded untouched unless a filter changed the attachments (exposed as request headers, see
L{attachmentHeaders}).
"""

from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from zope.interface import implementer

from txmesh import errors
from txmesh.interfaces import IMultiplexClient
from txmesh.protocols.dubbo.codec import (
    OK,
    DubboCodecError,
    DubboDecoder,
    encodeHeartbeat,
    encodeHeartbeatResponse,
    encodeRequestWithAttachments,
    withRequestId,
)
from txmesh.protocols.transport import Writer, callInScope
from txmesh.trace_context import ATTACHMENT_NAMES
from txmesh.stream import ResponseHead

_MAX_ID = (1 << 63) - 1


def attachmentHeaders(attachments):
    """
    The string-valued attachments as header fields (lower-case name bytes, value bytes), in order: how the
    listener shows them to filters and route header matchers, and how the client tells whether a filter changed
    them.
    """
    out = []
    for k, v in attachments.items():
        if type(k) is str and type(v) is str:
            out.append((k.lower().encode("utf-8", "surrogatepass"), v.encode("utf-8", "surrogatepass")))
    return out


def _newAttachments(attachments, headers):
    """The attachments map after filters edited its header view: kept keys keep their case and position."""
    wanted = {}
    for name, value in headers:
        wanted.setdefault(name.decode("utf-8", "surrogatepass"), value.decode("utf-8", "surrogatepass"))
    out = {}
    for k, v in attachments.items():
        if type(k) is str and type(v) is str:
            lower = k.lower()
            if lower in wanted:
                out[k] = wanted.pop(lower)
        else:
            out[k] = v
    for name, value in wanted.items():
        # a new key (no string attachment's lower-case name is ``name``: it would have been taken above): as
        # Dubbo's tracing integrations read it (X-B3-TraceId), else as the header names it
        out[ATTACHMENT_NAMES.get(name, name)] = value
    return out


def requestBytes(head):
    """The bytes to forward for a Dubbo request head: as received, or re-encoded if its attachments changed."""
    frame = head.payload
    inv = frame.invocation  # decoded (and cached) by the listener; None: not hessian2
    if inv is not None:
        fields = list(head.headers.items())
        attachments = inv.attachments
        # the view has a field per string attachment at most: more fields (the x-request-id the listener adds to
        # every call) differ without building the view again
        if len(fields) > len(attachments) or fields != attachmentHeaders(attachments):
            try:
                return encodeRequestWithAttachments(frame, inv, _newAttachments(attachments, fields))
            except TypeError:
                pass  # an attachment value the writer cannot encode: forward the original
    return frame.header + frame.body


@implementer(IMultiplexClient)
class DubboClientProtocol(Protocol):
    """One upstream Dubbo connection.  See the module docstring and L{IMultiplexClient}."""

    log = Logger()
    onConnectionLost = None
    onReadOnly = None
    writeScope = None  # set by the connecting factory: the service's WriteScope

    def __init__(self, maxBodyBytes=None):
        self.decoder = DubboDecoder() if maxBodyBytes is None else DubboDecoder(maxBodyBytes)
        self.framesReceived = 0
        self.lateResponses = 0
        self._calls = {}  # upstream request id -> responder
        self._nextId = 0
        self.connected = False
        self.readOnly = False

    def connectionMade(self):
        self.connected = True
        self._out = Writer(self.transport, self.writeScope)

    def _allocateId(self):
        self._nextId = self._nextId + 1 if self._nextId < _MAX_ID else 1
        return self._nextId

    # -- IMultiplexClient ---------------------------------------------------------------------------------------

    def startStream(self, head, endStream, responder):
        frame = head.payload
        data = requestBytes(head)
        requestId = self._allocateId()
        if not self.connected:
            responder.upstreamFailed(errors.UpstreamReset("upstream connection already closed"))
            return requestId
        self._out.write(withRequestId(data[:16], requestId) + data[16:])
        if frame.twoWay:
            self._calls[requestId] = responder
        else:
            # a one-way call has no response: it is complete once written, with nothing left pending
            responder.upstreamComplete(True)
            responder.upstreamHeaders(ResponseHead(OK), True)
        return requestId

    def writeBody(self, key, data, endStream):
        pass  # a Dubbo request is one frame, sent whole by startStream

    def writeTrailers(self, key, trailers):
        pass

    def cancelStream(self, key):
        self._calls.pop(key, None)

    def sendPing(self):
        if self.connected:
            self._out.write(encodeHeartbeat(self._allocateId()))

    @property
    def activeStreams(self):
        return len(self._calls)

    # -- events -------------------------------------------------------------------------------------------------

    def dataReceived(self, data):
        callInScope(self.writeScope, self._received, data)

    def _received(self, data):
        try:
            frames = self.decoder.feed(data)
        except DubboCodecError as e:
            for frame in e.frames:
                self._frameReceived(frame)
            self._failAll(errors.BadUpstreamResponse("bad dubbo response framing: " + e.reason))
            self._out.discard()
            self.transport.abortConnection()
            return
        for frame in frames:
            self._frameReceived(frame)

    def _frameReceived(self, frame):
        self.framesReceived += 1
        if frame.event:
            if frame.isReadOnlyEvent:
                # the provider is closing (a drain, a restart): no new call here; the calls in flight finish
                if not self.readOnly:
                    self.readOnly = True
                    if self.onReadOnly is not None:
                        self.onReadOnly(self)
            elif frame.isRequest and frame.twoWay:
                # the provider's own heartbeat
                self._out.write(encodeHeartbeatResponse(frame.requestId, frame.serializationId))
            return
        if frame.isRequest:
            return  # a provider does not call its consumer; ignore
        responder = self._calls.pop(frame.requestId, None)
        if responder is None:
            self.lateResponses += 1  # timed out or cancelled already
            return
        responder.upstreamComplete(True)
        responder.upstreamHeaders(ResponseHead(frame.status), False)
        responder.upstreamData(frame.toBytes(), True)

    def _failAll(self, exc):
        calls, self._calls = self._calls, {}
        for responder in calls.values():
            try:
                responder.upstreamFailed(exc)
            except Exception:
                self.log.failure("responder failed in upstreamFailed")

    def connectionLost(self, reason):
        self.connected = False
        self._failAll(errors.UpstreamReset("upstream connection closed: %s" % (reason.getErrorMessage(),)))
        if self.onConnectionLost is not None:
            self.onConnectionLost(self)
