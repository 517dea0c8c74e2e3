"""
The Dubbo 2 wire codec, sans-IO.

A frame is a 16-byte header (magic 0xdabb, flag byte = request/two-way/event bits plus the serialization id,
status, 8-byte request id, 4-byte body length) and a body.  L{DubboDecoder} only frames bytes; the hessian2 body
of a request is decoded lazily (L{DubboFrame.invocation}) and only as far as routing needs: the invocation head
and the attachments, skipping argument values without building them.  Bodies are forwarded untouched unless a
filter changes the attachments (L{encodeRequestWithAttachments}).
"""

import struct

from zope.interface import implementer

from txmesh.errors import CodecError
from txmesh.interfaces import ICodec
from txmesh.protocols.dubbo.hessian2 import Hessian2Reader, Hessian2Writer, HessianError

MAGIC = b"\xda\xbb"
HEADER_LENGTH = 16
DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024

FLAG_REQUEST = 0x80
FLAG_TWOWAY = 0x40
FLAG_EVENT = 0x20
SERIALIZATION_MASK = 0x1F
HESSIAN2 = 2

# Response status byte (org.apache.dubbo.remoting.exchange.Response).
OK = 20
CLIENT_TIMEOUT = 30
SERVER_TIMEOUT = 31
BAD_REQUEST = 40
BAD_RESPONSE = 50
SERVICE_NOT_FOUND = 60
SERVICE_ERROR = 70
SERVER_ERROR = 80
CLIENT_ERROR = 90
SERVER_THREADPOOL_EXHAUSTED_ERROR = 100
STATUSES = frozenset({OK, CLIENT_TIMEOUT, SERVER_TIMEOUT, BAD_REQUEST, BAD_RESPONSE, SERVICE_NOT_FOUND, SERVICE_ERROR,
                      SERVER_ERROR, CLIENT_ERROR, SERVER_THREADPOOL_EXHAUSTED_ERROR})
# a local reply's headers may name the Dubbo status a filter chose (the fault filter's dubbo_status): the listener
# answers with it instead of the one mapped from the HTTP-like status and cause
LOCAL_REPLY_STATUS = b"dubbo-status"

# Result flag, the first value of an OK response body (org.apache.dubbo.rpc.protocol.dubbo.DubboCodec).
RESPONSE_WITH_EXCEPTION = 0
RESPONSE_VALUE = 1
RESPONSE_NULL_VALUE = 2
RESPONSE_WITH_EXCEPTION_WITH_ATTACHMENTS = 3
RESPONSE_VALUE_WITH_ATTACHMENTS = 4
RESPONSE_NULL_VALUE_WITH_ATTACHMENTS = 5

HESSIAN_NULL = b"N"
# Dubbo's READONLY event (CommonConstants.READONLY_EVENT = "R"): a one-way event request whose data is the string "R",
# which a provider sends each consumer before closing (HeaderExchangeServer.sendChannelReadOnlyEvent); the consumer
# marks the channel read-only and sends it no new call.  The body is that string in hessian2: length 1, then "R".
READONLY_EVENT_BODY = b"\x01R"

_header = struct.Struct(">2sBBQI")
_unpackHeader = _header.unpack_from
_packId = struct.Struct(">Q").pack
_ID_MASK = (1 << 64) - 1


class DubboCodecError(CodecError):
    """
    Bad Dubbo input.  C{fatal}: framing is lost and the connection must be closed (after answering C{status}
    for C{requestId} when the header was readable).  Not fatal: only this frame's body is bad; answer
    BAD_REQUEST for C{requestId} and keep the connection.  C{frames}: complete frames decoded before the error
    in the same C{feed} call, which the caller should still handle.
    """

    def __init__(self, reason, fatal, requestId=None, status=BAD_REQUEST, twoWay=True):
        super().__init__(reason, status)
        self.fatal = fatal
        self.requestId = requestId
        self.twoWay = twoWay
        self.frames = []


class Invocation:
    """
    The routing-relevant part of a hessian2 request body.  C{argsOffset}, C{attachmentsOffset} and
    C{attachmentsEnd} are offsets into the body: the argument bytes lie in [argsOffset, attachmentsOffset).
    """

    __slots__ = ("dubboVersion", "serviceName", "serviceVersion", "methodName", "parameterTypes",
                 "parameterCount", "attachments", "argsOffset", "attachmentsOffset", "attachmentsEnd")

    def __init__(self, dubboVersion, serviceName, serviceVersion, methodName, parameterTypes, parameterCount,
                 attachments, argsOffset, attachmentsOffset, attachmentsEnd):
        self.dubboVersion = dubboVersion
        self.serviceName = serviceName
        self.serviceVersion = serviceVersion
        self.methodName = methodName
        self.parameterTypes = parameterTypes
        self.parameterCount = parameterCount
        self.attachments = attachments
        self.argsOffset = argsOffset
        self.attachmentsOffset = attachmentsOffset
        self.attachmentsEnd = attachmentsEnd

    @property
    def group(self):
        return self.attachments.get("group")

    @property
    def interface(self):
        return self.attachments.get("interface") or self.serviceName

    def __repr__(self):
        # Never shows argument values; attachment values could be secrets too, so only their keys.
        return "<Invocation %s:%s %s(%s) attachments=%r>" % (
            self.serviceName, self.serviceVersion, self.methodName, self.parameterTypes,
            sorted(str(k) for k in self.attachments))


class DubboFrame:
    """One decoded frame.  C{header} and C{body} are the exact bytes received."""

    __slots__ = ("header", "body", "isRequest", "twoWay", "event", "serializationId", "status", "requestId",
                 "_invocation")

    def __init__(self, header, body):
        magic, flag, status, requestId, _ = _unpackHeader(header)
        self.header = bytes(header)
        self.body = body
        self.isRequest = bool(flag & FLAG_REQUEST)
        self.twoWay = bool(flag & FLAG_TWOWAY)
        self.event = bool(flag & FLAG_EVENT)
        self.serializationId = flag & SERIALIZATION_MASK
        self.status = status
        self.requestId = requestId - (1 << 64) if requestId >> 63 else requestId  # a Java long
        self._invocation = None

    @property
    def isHeartbeat(self):
        """An event frame with a null body (other events, e.g. Dubbo's read-only event, carry data)."""
        return self.event and (self.body == HESSIAN_NULL or self.serializationId != HESSIAN2)

    @property
    def isReadOnlyEvent(self):
        """Dubbo's READONLY event (an event request carrying "R"): the peer takes no new call on this connection."""
        return self.event and self.isRequest and self.body == READONLY_EVENT_BODY and self.serializationId == HESSIAN2

    @property
    def invocation(self):
        """
        The decoded invocation of a hessian2, non-event request, else None.  Decoded once, on first use.

        @raise DubboCodecError: (not fatal) if the body is malformed.
        """
        if self._invocation is None:
            if not self.isRequest or self.event or self.serializationId != HESSIAN2:
                return None
            self._invocation = decodeInvocation(self)
        return self._invocation

    def toBytes(self):
        return self.header + self.body

    def __repr__(self):
        return "<DubboFrame %s id=%d flag=0x%02x status=%d body=%d bytes>" % (
            "request" if self.isRequest else "response", self.requestId, self.header[2], self.status,
            len(self.body))


@implementer(ICodec)
class DubboDecoder:
    """
    Splits a byte stream into L{DubboFrame}s.  A frame whose first bytes are not the magic is refused at the first
    byte that disagrees; a body longer than C{maxBodyBytes} as soon as its header is in, before any of it is
    buffered.  After a fatal error the decoder refuses all further input.
    """

    def __init__(self, maxBodyBytes=DEFAULT_MAX_BODY_BYTES):
        self.maxBodyBytes = maxBodyBytes
        self._buffer = bytearray()
        self._pendingHeader = None  # a validated header whose body is not complete yet
        self._failed = None

    def feed(self, data):
        """
        @return: the complete frames in order (empty: need more bytes).
        @raise DubboCodecError: fatal, on bad magic or an over-limit or negative body length.
        """
        if self._failed is not None:
            raise DubboCodecError("decoder already failed: " + self._failed.reason, fatal=True)
        buf = self._buffer
        buf += data
        frames = []
        pos = 0
        try:
            while True:
                header = self._pendingHeader
                if header is None:
                    have = len(buf) - pos
                    if have < HEADER_LENGTH:
                        # refuse non-Dubbo bytes (an HTTP request, a telnet command) at the first byte that
                        # disagrees with the magic, not after 16 bytes that may never come
                        if have and (buf[pos] != 0xDA or (have > 1 and buf[pos + 1] != 0xBB)):
                            raise DubboCodecError("bad dubbo magic 0x%s" % (bytes(buf[pos:pos + 2]).hex(),),
                                                  fatal=True)
                        break
                    header = bytes(buf[pos:pos + HEADER_LENGTH])
                    self._checkHeader(header)
                    self._pendingHeader = header
                bodyLength = int.from_bytes(header[12:16], "big")
                end = pos + HEADER_LENGTH + bodyLength
                if len(buf) < end:
                    break
                frames.append(DubboFrame(header, bytes(buf[pos + HEADER_LENGTH:end])))
                self._pendingHeader = None
                pos = end
        except DubboCodecError as e:
            self._failed = e
            self._buffer = bytearray()
            e.frames = frames
            raise
        if pos:
            del buf[:pos]
        return frames

    def _checkHeader(self, header):
        if header[:2] != MAGIC:
            raise DubboCodecError("bad dubbo magic 0x%s" % (header[:2].hex(),), fatal=True, requestId=None)
        _, flag, _, requestId, bodyLength = _unpackHeader(header)
        if bodyLength > self.maxBodyBytes:
            isRequest = bool(flag & FLAG_REQUEST)
            if requestId >> 63:
                requestId -= 1 << 64
            raise DubboCodecError(
                "dubbo body of %d bytes exceeds the %d byte limit" % (bodyLength, self.maxBodyBytes),
                fatal=True, requestId=requestId, status=BAD_REQUEST if isRequest else BAD_RESPONSE,
                twoWay=bool(flag & FLAG_TWOWAY) or not isRequest)


def _countParameters(desc):
    """Count the parameters of a JVM method descriptor's parameter list ("Ljava/lang/String;I[J")."""
    count = 0
    i = 0
    n = len(desc)
    while i < n:
        c = desc[i]
        while c == "[":
            i += 1
            if i >= n:
                raise HessianError("bad parameter descriptor")
            c = desc[i]
        if c == "L":
            j = desc.find(";", i)
            if j < 0:
                raise HessianError("bad parameter descriptor")
            i = j + 1
        elif c in "ZBCDFIJS":
            i += 1
        else:
            raise HessianError("bad parameter descriptor")
        count += 1
    return count


def decodeInvocation(frame):
    """
    Read a hessian2 request body: dubbo version, path, version, method, parameter descriptor, then skip one
    value per parameter, then read the attachments map (absent at the end of the body: empty).

    @raise DubboCodecError: (not fatal, with the frame's id) on malformed hessian.
    """
    reader = Hessian2Reader(frame.body)
    try:
        dubboVersion = reader.readString()
        serviceName = reader.readString()
        serviceVersion = _readOptionalString(reader)
        methodName = reader.readString()
        parameterTypes = reader.readString()
        parameterCount = _countParameters(parameterTypes)
        argsOffset = reader.offset
        for _ in range(parameterCount):
            reader.skipValue()
        attachmentsOffset = reader.offset
        attachments = {} if reader.atEnd() else reader.readSimpleMap()
        attachmentsEnd = reader.offset
    except HessianError as e:
        raise DubboCodecError("malformed dubbo request body: " + e.reason, fatal=False,
                              requestId=frame.requestId, twoWay=frame.twoWay) from None
    return Invocation(dubboVersion, serviceName, serviceVersion, methodName, parameterTypes, parameterCount,
                      attachments, argsOffset, attachmentsOffset, attachmentsEnd)


def _readOptionalString(reader):
    if reader.peek() == 0x4E:
        reader.offset += 1
        return None
    return reader.readString()


def decodeResultFlag(frame):
    """
    The result flag of an OK hessian2 response (RESPONSE_*), or None for events and non-OK responses.

    @raise DubboCodecError: (not fatal) if the body does not start with a valid flag.
    """
    if frame.isRequest or frame.event or frame.status != OK:
        return None
    try:
        flag = Hessian2Reader(frame.body).readInt()
    except HessianError as e:
        flag = e
    if not isinstance(flag, int) or not RESPONSE_WITH_EXCEPTION <= flag <= RESPONSE_NULL_VALUE_WITH_ATTACHMENTS:
        raise DubboCodecError("bad dubbo result flag", fatal=False, requestId=frame.requestId,
                              status=BAD_RESPONSE)
    return flag


def decodeErrorMessage(frame):
    """The error message string of a non-OK hessian2 response, or None if it has none or is not a string."""
    try:
        return Hessian2Reader(frame.body).readString()
    except HessianError:
        return None


def encodeRequestWithAttachments(frame, invocation, newAttachments):
    """
    The request re-encoded with a new attachments map: same header flags and id, same head and argument
    bytes, any bytes after the old map kept, body length fixed.
    """
    writer = Hessian2Writer()
    writer.writeSimpleMap(newAttachments)
    body = frame.body
    newBody = b"".join((body[:invocation.attachmentsOffset], writer.getvalue(),
                        body[invocation.attachmentsEnd:]))
    return frame.header[:12] + len(newBody).to_bytes(4, "big") + newBody


def encodeHeader(flag, status, requestId, bodyLength):
    return _header.pack(MAGIC, flag, status, requestId & _ID_MASK, bodyLength)


def encodeResponse(requestId, status, errorMessage, serializationId=HESSIAN2, event=False):
    """
    A response frame as Java Dubbo writes it for a non-OK status: the status byte, a hessian2 string body.
    With C{event}, an event response with a null body (a heartbeat reply).
    """
    if event:
        body = HESSIAN_NULL
    elif status == OK:
        raise ValueError("an OK response needs a result, not an error message")
    else:
        writer = Hessian2Writer()
        writer.writeString(errorMessage)
        body = writer.getvalue()
    flag = serializationId | (FLAG_EVENT if event else 0)
    return encodeHeader(flag, status, requestId, len(body)) + body


def encodeHeartbeat(requestId, isRequest=True, twoWay=True, serializationId=HESSIAN2):
    """A heartbeat (event frame, null body); a reply (C{isRequest=False}) has status OK and the request's id."""
    if isRequest:
        flag = FLAG_REQUEST | FLAG_EVENT | serializationId | (FLAG_TWOWAY if twoWay else 0)
        return encodeHeader(flag, 0, requestId, 1) + HESSIAN_NULL
    return encodeHeartbeatResponse(requestId, serializationId)


def encodeReadOnlyEvent(requestId):
    """Dubbo's READONLY event as a provider sends it: a one-way event request, hessian2, data "R"."""
    flag = FLAG_REQUEST | FLAG_EVENT | HESSIAN2
    return encodeHeader(flag, 0, requestId, len(READONLY_EVENT_BODY)) + READONLY_EVENT_BODY


def encodeHeartbeatResponse(requestId, serializationId=HESSIAN2):
    return encodeHeader(FLAG_EVENT | serializationId, OK, requestId, 1) + HESSIAN_NULL


def withRequestId(frameBytesOrHeader, newId):
    """A new 16-byte header with C{newId}; accepts a header, a whole frame's bytes or a L{DubboFrame}."""
    header = frameBytesOrHeader.header if isinstance(frameBytesOrHeader, DubboFrame) else frameBytesOrHeader
    return bytes(header[:4]) + _packId(newId & _ID_MASK) + bytes(header[12:16])
