"""
The ``grpc`` active health check: ``grpc.health.v1.Health/Check`` over txmesh's own HTTP/2 client (one connection
per check, never the data-path pool), as Envoy's gRPC health checker.  SERVING passes; any other serving status,
a grpc-status other than OK or an HTTP status other than 200 fails the host; a reset or lost connection is a
network failure.

The two messages have one field each (``HealthCheckRequest.service = 1``, ``HealthCheckResponse.status = 1``), so
they are encoded and decoded here in a few lines rather than with protobuf.
"""

import dataclasses

from twisted.internet.defer import Deferred
from zope.interface import implementer

from txmesh.interfaces import IHealthChecker, IHealthCheckerFactory, IUpstreamResponder
from txmesh.protocols.h2 import grpc
from txmesh.protocols.h2.client import H2ClientProtocol
from txmesh.stream import HeaderMap, RequestHead
from txmesh.upstream.health import PASSED, CheckOutcome, CheckResult, ProbeChecker, failed

CHECK_PATH = b"/grpc.health.v1.Health/Check"
# HealthCheckResponse.ServingStatus
SERVING_STATUS_NAMES = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}
SERVING = 1
_MAX_RESPONSE = 64 * 1024


def _varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _readVarint(data, pos):
    shift = result = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("truncated varint")
        b = data[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def encodeCheckRequest(service):
    """The gRPC message (5-byte prefix + HealthCheckRequest) asking about ``service`` (str; "" = the server)."""
    name = service.encode("utf-8")
    message = b"\x0a" + _varint(len(name)) + name if name else b""
    return b"\x00" + len(message).to_bytes(4, "big") + message


def decodeCheckResponse(body):
    """
    The ServingStatus (int) of one length-prefixed HealthCheckResponse message.
    @raise ValueError: the body is not one uncompressed message, or the protobuf is malformed.
    """
    if len(body) < 5 or body[0] != 0:
        raise ValueError("not an uncompressed gRPC message")
    length = int.from_bytes(body[1:5], "big")
    message = body[5:]
    if len(message) != length:
        raise ValueError("gRPC message of %d bytes, %d declared" % (len(message), length))
    status = 0  # proto3: an absent field is its default, UNKNOWN
    pos = 0
    while pos < len(message):
        key, pos = _readVarint(message, pos)
        field, wireType = key >> 3, key & 7
        if wireType == 0:
            value, pos = _readVarint(message, pos)
            if field == 1:
                status = value
        elif wireType == 2:
            size, pos = _readVarint(message, pos)
            pos += size
        elif wireType in (1, 5):
            pos += 8 if wireType == 1 else 4
        else:
            raise ValueError("unsupported protobuf wire type %d" % (wireType,))
        if pos > len(message):
            raise ValueError("truncated protobuf field")
    return status


@implementer(IUpstreamResponder)
class _CheckResponder:
    """Collects the Check response from the HTTP/2 client and fires ``done`` with a CheckResult."""

    framesReceived = 0

    def __init__(self, done):
        self.done = done
        self.status = None
        self.headers = None
        self.body = b""

    def upstreamHeaders(self, response, endStream):
        self.status = response.status
        self.headers = response.headers
        if endStream:
            self._finish(response.headers)  # trailers-only: the grpc-status is in the head

    def upstreamData(self, data, endStream):
        self.body += data
        if len(self.body) > _MAX_RESPONSE:
            self._fire(failed("response larger than %d bytes" % (_MAX_RESPONSE,)))
        elif endStream:
            self._finish(HeaderMap())

    def upstreamTrailers(self, trailers):
        self._finish(trailers)

    def upstreamComplete(self, reusable):
        pass

    def upstreamFailed(self, exc):
        self._fire(CheckResult(CheckOutcome.NETWORK, str(exc)))

    def upstreamWritePaused(self):
        pass

    def upstreamWriteResumed(self):
        pass

    def _finish(self, trailers):
        if self.status != 200:
            return self._fire(failed("HTTP status %d" % (self.status,)))
        code = trailers.get(b"grpc-status")
        if code is None:
            return self._fire(failed("no grpc-status"))
        if code != b"0":
            message = trailers.get(b"grpc-message", b"").decode("utf-8", "replace")
            return self._fire(failed("grpc-status %s%s" % (code.decode("ascii", "replace"),
                                                           ": " + message if message else "")))
        try:
            status = decodeCheckResponse(self.body)
        except ValueError as e:
            return self._fire(failed("bad HealthCheckResponse: %s" % (e,)))
        if status != SERVING:
            return self._fire(failed(SERVING_STATUS_NAMES.get(status, "status %d" % (status,))))
        self._fire(PASSED)

    def _fire(self, result):
        if not self.done.called:
            self.done.callback(result)


@dataclasses.dataclass(frozen=True, slots=True)
class GRPCCheckConfig:
    serviceName: str = ""
    authority: str = ""  # the loader defaults it to the cluster's name (as Envoy)


@implementer(IHealthChecker)
class GRPCChecker(ProbeChecker):
    """One Health/Check call per check, on an HTTP/2 connection of its own."""

    def __init__(self, config, host, reactor):
        super().__init__(config, host, reactor)
        self.request = encodeCheckRequest(config.serviceName)

    def makeProtocol(self):
        return H2ClientProtocol()

    def exchange(self, proto):
        done = Deferred()
        head = RequestHead(b"POST", CHECK_PATH, authority=self.config.authority.encode("ascii"),
                           headers=HeaderMap([(b"content-type", grpc.CONTENT_TYPE),
                                              (b"user-agent", b"txmesh/HC")]),
                           protocol="grpc")
        stream = proto.newStream()
        stream.sendRequest(head, False, _CheckResponder(done))
        stream.writeBody(self.request, True)
        return done


@implementer(IHealthCheckerFactory)
class GRPCCheckerFactory:
    name = "grpc"
    protocols = frozenset({"grpc", "http2"})
    keys = ("service_name", "authority")

    def buildConfig(self, raw, context):
        service = raw.get("service_name", "")
        if not isinstance(service, str) or not service.isprintable():
            raise context.error("must be a service name like grpc.health.v1.Health ('' = the whole server)",
                                "service_name")
        authority = raw.get("authority", context.clusterName)
        if not isinstance(authority, str) or not authority or not authority.isascii() or not authority.isprintable():
            raise context.error("must be printable ASCII, not empty", "authority")
        return GRPCCheckConfig(service, authority)

    def makeChecker(self, config, host, reactor):
        return GRPCChecker(config, host, reactor)
