"""
gRPC over HTTP/2, the parts a proxy needs (sans-IO): status codes, the ``grpc-timeout`` header, the mapping of
proxy causes and HTTP statuses to gRPC codes, and a message-prefix counter that counts length-prefixed messages
and enforces a maximum message size without buffering them.
"""

OK = 0
CANCELLED = 1
UNKNOWN = 2
DEADLINE_EXCEEDED = 4
PERMISSION_DENIED = 7
RESOURCE_EXHAUSTED = 8
UNIMPLEMENTED = 12
INTERNAL = 13
UNAVAILABLE = 14
UNAUTHENTICATED = 16

CONTENT_TYPE = b"application/grpc"
STATUS_BYTES = {c: b"%d" % c for c in range(17)}  # code -> its grpc-status value

# txmesh error cause (errors.py) -> the gRPC code a client expects
_CAUSE_CODES = {
    "no_route": UNIMPLEMENTED,
    "no_cluster": UNAVAILABLE,
    "no_healthy_upstream": UNAVAILABLE,
    "upstream_connect_failure": UNAVAILABLE,
    "upstream_connect_timeout": UNAVAILABLE,
    "upstream_tls_handshake_failed": UNAVAILABLE,  # a cluster's TLS (issue 14): connect failures
    "upstream_tls_verify_failed": UNAVAILABLE,
    "upstream_reset_before_response": UNAVAILABLE,
    "upstream_pool_closed": UNAVAILABLE,
    "upstream_error": UNAVAILABLE,
    "upstream_overflow": UNAVAILABLE,  # a circuit breaker (Envoy's UO 503 -> UNAVAILABLE): another host may serve
    "circuit_open": UNAVAILABLE,
    "local_rate_limited": RESOURCE_EXHAUSTED,
    "upstream_rq_overflow": UNAVAILABLE,
    "upstream_per_try_timeout": DEADLINE_EXCEEDED,
    "upstream_request_timeout": DEADLINE_EXCEEDED,
    "max_stream_duration_reached": DEADLINE_EXCEEDED,
    "stream_idle_timeout": DEADLINE_EXCEEDED,
    "upstream_protocol_error": INTERNAL,
    "request_body_too_large": RESOURCE_EXHAUSTED,
    "grpc_message_too_large": RESOURCE_EXHAUSTED,
}

# https://github.com/grpc/grpc/blob/master/doc/http-grpc-status-mapping.md
_HTTP_CODES = {400: INTERNAL, 401: UNAUTHENTICATED, 403: PERMISSION_DENIED, 404: UNIMPLEMENTED,
               429: UNAVAILABLE, 502: UNAVAILABLE, 503: UNAVAILABLE, 504: UNAVAILABLE}

_TIMEOUT_UNITS = {0x48: 3600.0, 0x4D: 60.0, 0x53: 1.0, 0x6D: 1e-3, 0x75: 1e-6, 0x6E: 1e-9}  # H M S m u n


def statusForCause(cause, httpStatus):
    """The gRPC code of a local reply: by its cause when known, else by its HTTP status."""
    code = _CAUSE_CODES.get(cause)
    if code is None:
        code = statusForHTTP(httpStatus)
    return code


def statusForHTTP(httpStatus):
    """The standard HTTP-to-gRPC mapping for a response without grpc-status."""
    return _HTTP_CODES.get(httpStatus, UNKNOWN)


def httpErrorFields(httpStatus):
    """The trailers-only header list standing for an upstream HTTP error that has no grpc-status."""
    return [(b":status", b"200"), (b"content-type", CONTENT_TYPE),
            (b"grpc-status", STATUS_BYTES[statusForHTTP(httpStatus)]),
            (b"grpc-message", b"upstream answered HTTP %d" % (httpStatus,))]


def localReplyFields(httpStatus, body, cause, node=None, code=None):
    """
    The fields of a trailers-only local reply: grpc-status ``code`` when given (a filter chose it: see
    L{localReplyCode}), else by ``cause`` (str or None) or else by ``httpStatus`` (OK below 300), the stripped
    ``body`` as grpc-message, the cause as x-txmesh-error.  ``node`` (str), the id of the sidecar making the reply,
    goes in x-txmesh-node and prefixes an error's grpc-message ("txmesh <node>: ..."), so a caller sees which hop
    failed.
    """
    if code is None:
        code = statusForCause(cause, httpStatus) if httpStatus >= 300 else OK
    message = body.strip() if isinstance(body, bytes) else (body or "").encode("utf-8").strip()
    if node and code != OK:
        message = b"txmesh %s: %s" % (node.encode("ascii"), message or (cause or "error").encode("ascii"))
    fields = [(b"content-type", CONTENT_TYPE), (b"grpc-status", STATUS_BYTES[code])]
    if message:
        fields.append((b"grpc-message", encodeMessage(message)))
    if cause:
        fields.append((b"x-txmesh-error", cause.encode("ascii")))
    if node:
        fields.append((b"x-txmesh-node", node.encode("ascii")))
    return fields


def localReplyCode(headers):
    """
    The grpc-status a filter chose for its local reply by naming ``grpc-status`` among the reply's ``headers``
    ((name, value) pairs; the fault filter's configured code), as (code or None, the other headers).
    """
    code, rest = None, []
    for name, value in headers:
        if name == b"grpc-status" and value.isdigit() and int(value) in STATUS_BYTES:
            code = int(value)
        else:
            rest.append((name, value))
    return code, rest


def abortFields(cause, flags, trailersOnly, node=None):
    """
    The trailers (or, before any response headers, the trailers-only response) of a stream the proxy gave up on
    after it started: grpc-status by ``cause`` (UNAVAILABLE when unknown), a grpc-message naming the cause and
    the response flags (e.g. "UC"), and the sidecar (``node``) that gave up.
    """
    flags = ",".join(sorted(flags))
    message = "response aborted: %s (%s)" % (cause, flags) if flags else "response aborted: %s" % (cause,)
    if node:
        message = "txmesh %s: %s" % (node, message)
    fields = [(b"grpc-status", STATUS_BYTES[statusForCause(cause, 503)]), (b"grpc-message", encodeMessage(message))]
    if node:
        fields.insert(0, (b"x-txmesh-node", node.encode("ascii")))  # grpc-status stays second to last
    if trailersOnly:
        fields[:0] = [(b":status", b"200"), (b"content-type", CONTENT_TYPE)]
    return fields


def parseTimeout(value):
    """
    ``grpc-timeout`` (bytes, 1-8 digits and a unit H/M/S/m/u/n) in seconds, or None if malformed (gRPC says a
    malformed value is ignored by intermediaries rather than failing the call).
    """
    if not 2 <= len(value) <= 9:
        return None
    unit = _TIMEOUT_UNITS.get(value[-1])
    digits = value[:-1]
    if unit is None or not digits.isdigit():
        return None
    return int(digits) * unit


def encodeTimeout(ms):
    """A ``grpc-timeout`` value for ``ms`` milliseconds (int > 0): ms while it fits in 8 digits, else seconds."""
    if ms < 100000000:
        return b"%dm" % (ms,)
    return b"%dS" % (min(ms // 1000, 99999999),)


def encodeMessage(text):
    """``grpc-message`` percent-encoding (spec: encode outside 0x20-0x7E and '%')."""
    if isinstance(text, str):
        text = text.encode("utf-8")
    out = bytearray()
    for b in text:
        if 0x20 <= b <= 0x7E and b != 0x25:
            out.append(b)
        else:
            out += b"%%%02X" % b
    return bytes(out)


class MessageLimitExceeded(Exception):
    """A length-prefixed message declared a length above the configured maximum."""

    def __init__(self, length, limit):
        self.length = length
        self.limit = limit
        super().__init__("gRPC message of %d bytes exceeds the limit of %d" % (length, limit))


class MessageCounter:
    """
    Follows the 5-byte message prefixes (compressed flag, 4-byte big-endian length) through a stream of DATA
    payloads, counting messages; it never keeps message bytes.  ``feed`` raises MessageLimitExceeded when a
    message declares more than ``maxMessageSize`` bytes (0 = unlimited).
    """

    __slots__ = ("maxMessageSize", "messages", "_skip", "_prefix")

    def __init__(self, maxMessageSize=0):
        self.maxMessageSize = maxMessageSize
        self.messages = 0
        self._skip = 0  # body bytes of the current message still to pass
        self._prefix = b""  # a partial prefix carried over

    def feed(self, data):
        """Account for ``data``; returns how many messages started in it."""
        n = len(data)
        i = 0
        started = 0
        skip = self._skip
        while i < n:
            if skip:
                take = min(skip, n - i)
                skip -= take
                i += take
                continue
            need = 5 - len(self._prefix)
            if n - i < need:
                self._prefix += data[i:]
                break
            prefix = self._prefix + data[i:i + need]
            self._prefix = b""
            i += need
            length = int.from_bytes(prefix[1:5], "big")
            started += 1
            if self.maxMessageSize and length > self.maxMessageSize:
                self._skip = 0
                raise MessageLimitExceeded(length, self.maxMessageSize)
            skip = length
        self._skip = skip
        self.messages += started
        return started


def frameMessage(message):
    """One uncompressed length-prefixed gRPC message carrying ``message`` (bytes: a serialised protobuf)."""
    return b"\x00" + len(message).to_bytes(4, "big") + message


class MalformedMessage(ValueError):
    """A length-prefixed message that cannot be read: compressed without negotiation, or above the size limit."""


class MessageReader:
    """
    Splits a stream of DATA payloads into whole gRPC messages (sans-IO, for a client that reads them: the xDS
    stream).  ``feed(data)`` returns the messages (bytes) completed by ``data``; an empty list means "need more".
    @raise MalformedMessage: a compressed message (no compression is negotiated) or one declared above
        ``maxMessageSize`` bytes.
    """

    def __init__(self, maxMessageSize):
        self.maxMessageSize = maxMessageSize
        self._buffer = bytearray()

    def feed(self, data):
        buffer = self._buffer
        buffer += data
        out = []
        while len(buffer) >= 5:
            if buffer[0] != 0:
                raise MalformedMessage("a compressed gRPC message (flag %d) where none was negotiated" % (buffer[0],))
            length = int.from_bytes(buffer[1:5], "big")
            if length > self.maxMessageSize:
                raise MalformedMessage("gRPC message of %d bytes exceeds the limit of %d" % (length,
                                                                                           self.maxMessageSize))
            if len(buffer) < 5 + length:
                break
            out.append(bytes(buffer[5:5 + length]))
            del buffer[:5 + length]
        return out

    def pending(self):
        """Bytes of an unfinished message held (a stream that ends with some is truncated)."""
        return len(self._buffer)
