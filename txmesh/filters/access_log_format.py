"""
Envoy's access-log command operators (``%START_TIME%``, ``%REQ(X?Y):Z%``, ``%RESPONSE_FLAGS%`` ...) for the
``access_log`` filter's ``format`` strings and ``json_format`` mappings.

A format is compiled once, at config load, into pieces: literal text and getters (one per operator, its arguments
and truncation already bound), so a line costs one call per operator and a join, never a parse.  A getter reads
one L{LogRecord} (the finished stream's StreamInfo, request head, response head and trailers) and returns a typed
value: an int, a str, bytes (request-derived, escaped on output) or None (missing: ``-`` in text, ``null`` in JSON).

Text lines escape every request- or peer-derived value as the built-in line does (``"``, ``\\``, control and
non-ASCII bytes become ``\\xNN``), so a client cannot forge fields or lines; literal text is the operator's own.
"""

import functools
import json
import re
import socket
import time

import attrs

from txmesh.protocols.h2 import grpc

# Bytes a text line shows as-is: printable ASCII except '"' and '\' (so a client cannot forge fields or lines).
UNSAFE = re.compile(rb'[^\x20\x21\x23-\x5b\x5d-\x7e]')
_UNSAFE_STR = re.compile(r'[^\x20\x21\x23-\x5b\x5d-\x7e]')
ESCAPES = tuple(chr(c) if not UNSAFE.match(bytes([c])) else "\\x%02x" % c for c in range(256))

_encode = json.JSONEncoder(separators=(",", ":")).encode  # one encoder: json.dumps with options makes one a call

_PROTOCOL_NAMES = {
    "http/1.1": "HTTP/1.1",
    "http/1.0": "HTTP/1.0",
    "h2": "HTTP/2",
    "grpc": "HTTP/2",
    "dubbo": "DUBBO",
}


def protocolName(protocol):
    """Envoy's %PROTOCOL% spelling of a StreamInfo.protocol ('http/1.1' -> 'HTTP/1.1')."""
    name = _PROTOCOL_NAMES.get(protocol)
    if name is None:
        name = str(protocol).upper() if protocol else "-"
    return name


def escapeBytes(value):
    """A request-derived bytes value for a text line: escaped, '-' when empty or missing."""
    if not value:
        return "-"
    if UNSAFE.search(value) is None:
        return value.decode("ascii")
    return "".join([ESCAPES[c] for c in value])


def escapeText(value):
    """A str, bytes, int or None for a text line: numbers as digits, text escaped, '-' when empty or missing."""
    if value is None:
        return "-"
    cls = type(value)
    if cls is int:
        return str(value)
    if cls is bytes:
        return escapeBytes(value)
    if not value:
        return "-"
    if _UNSAFE_STR.search(value) is None:
        return value
    return escapeBytes(value.encode("utf-8", "surrogatepass"))


def jsonValue(value):
    """A getter's value for a JSON line: bytes decoded (bad UTF-8 as \\xNN), empty as None."""
    if type(value) is bytes:
        return value.decode("utf-8", "backslashreplace") if value else None
    if value == "":
        return None
    return value


@attrs.define(slots=True)
class LogRecord:
    """
    What one line is made of.  ``code``: the response code the line logs when it is not the StreamInfo's (a gRPC
    listener's grpc-status); ``grpcStatus``: the call's grpc-status (int) on a gRPC listener, else None; ``end``:
    when the stream ended.
    """

    info: object
    request: object
    end: float
    code: object = None
    response: object = None
    trailers: object = None
    grpcStatus: object = None


class FormatError(ValueError):
    """
    A format string or json_format entry is not valid; ``str()`` says why, ``where`` the key path inside a
    json_format mapping ("" for a format string); the config adds its own key path.
    """

    def __init__(self, reason, where=""):
        ValueError.__init__(self, reason)
        self.where = where


# -- the operators -----------------------------------------------------------------------------------------------

def _ms(a, b):
    if a is None or b is None:
        return None
    return max(0, int(round((b - a) * 1000)))


def _duration(rec):
    return _ms(rec.info.startTime, rec.end)


def _requestDuration(rec):
    return _ms(rec.info.startTime, rec.info.requestEndTime)


def _responseDuration(rec):
    return _ms(rec.info.startTime, rec.info.upstreamFirstByteTime)


def _responseTxDuration(rec):
    return _ms(rec.info.upstreamFirstByteTime, rec.end if rec.info.upstreamFirstByteTime is not None else None)


def upstreamTime(rec):
    """Milliseconds from the (last) attempt's request going upstream to the end of its response, or None."""
    info = rec.info
    return _ms(info.upstreamStartTime, info.upstreamEndTime)


def responseCode(rec):
    code = rec.code
    return code if code is not None else (rec.info.responseCode or 0)


def responseFlags(rec):
    flags = rec.info.responseFlags
    return ",".join(sorted(flags)) if flags else None


def _details(rec):
    info = rec.info
    details = info.responseCodeDetails
    if details is None and info.upstreamFirstByteTime is not None:
        return "via_upstream"
    return details


def requestId(rec):
    """The stream's request id: the StreamInfo's (Dubbo's attachment, the listener's), else x-request-id."""
    rid = rec.info.requestId
    if rid is None and rec.request is not None:
        rid = rec.request.headers.get(b"x-request-id")
    return rid


def _peerWithoutPort(address):
    if not address:
        return None
    host, sep, port = address.rpartition(":")
    return host if sep and port.isdigit() else address


def _dubbo(key):
    def get(rec):
        return rec.info.metadata.get(key) if rec.info.protocol == "dubbo" else None
    return get


def _dubboStatus(rec):
    return rec.info.responseCode if rec.info.protocol == "dubbo" else None


# gRPC status names: Envoy's CAMEL_STRING (the default) and SNAKE_STRING spellings
_GRPC_CAMEL = ("OK", "Canceled", "Unknown", "InvalidArgument", "DeadlineExceeded", "NotFound", "AlreadyExists",
               "PermissionDenied", "ResourceExhausted", "FailedPrecondition", "Aborted", "OutOfRange",
               "Unimplemented", "Internal", "Unavailable", "DataLoss", "Unauthenticated")
_GRPC_SNAKE = ("OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",
               "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE",
               "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED")


def _grpcStatus(names):
    def get(rec):
        code = rec.grpcStatus
        if code is None or names is None:
            return code
        return names[code] if 0 <= code < len(names) else code
    return get


def _startTime(rec):
    return isoTime(rec.info.startTime)


def isoTime(t):
    """A POSIX time as UTC ISO 8601 with milliseconds: '2026-11-21T10:00:00.123Z' (the second part is cached)."""
    second, ms = divmod(int(round(t * 1000)), 1000)
    return "%s.%03dZ" % (_secondPrefix(second), ms)


@functools.lru_cache(maxsize=8)
def _secondPrefix(second):
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))


_FRACTION = re.compile(r"%([1-9]?)f|%s|%%")


def _strftimeGetter(fmt):
    """
    %START_TIME(fmt)%: strftime in UTC with Envoy's extensions: ``%s`` (seconds since the epoch), ``%Nf`` (N
    digits of the second's fraction, 1-9) and ``%f`` (9 digits).  The strftime part is cached per second.
    """
    parts = []  # str (a strftime pattern) or int (fraction digits) or None (%s)
    pos = 0
    for m in _FRACTION.finditer(fmt):
        if m.group(0) == "%%":
            continue
        if m.start() > pos:
            parts.append(fmt[pos:m.start()])
        parts.append(None if m.group(0) == "%s" else int(m.group(1) or 9))
        pos = m.end()
    if pos < len(fmt):
        parts.append(fmt[pos:])
    try:
        time.strftime(fmt.replace("%s", "").replace("%f", ""), time.gmtime(0))
    except ValueError as e:
        raise FormatError("bad strftime format %r: %s" % (fmt, e))
    cache = {}

    def get(rec):
        t = rec.info.startTime
        second = int(t)
        out = []
        for part in parts:
            if part is None:
                out.append(str(second))
            elif type(part) is int:
                # a float epoch time holds microseconds at best: round there, so .123 is not .122999
                out.append(("%06d000" % min(999999, int(round((t - second) * 1e6))))[:part])
            else:
                key = (second, part)
                text = cache.get(key)
                if text is None:
                    if len(cache) > 64:
                        cache.clear()
                    text = cache[key] = time.strftime(part, time.gmtime(second))
                out.append(text)
        return "".join(out)
    return get


_PSEUDO_REQUEST = {
    b":method": lambda r: r.method,
    b":path": lambda r: r.path,
    b":authority": lambda r: r.authority,
    b"host": lambda r: r.authority,
    b":scheme": lambda r: r.scheme,
}


def _headerGetter(which, arg):
    """%REQ(X?Y)%, %RESP(X?Y)%, %TRAILER(X?Y)%: the first field X, else Y (pseudo-headers as Envoy names them)."""
    if not arg:
        raise FormatError("needs a header name: %%%s(name)%%" % (which,))
    names = [n.strip().lower().encode("ascii", "replace") for n in arg.split("?")]
    if len(names) > 2 or not all(names):
        raise FormatError("(%s): one header name, or two as X?Y" % (arg,))

    def one(name):
        if which == "REQ":
            pseudo = _PSEUDO_REQUEST.get(name)
            if pseudo is not None:
                return lambda rec: pseudo(rec.request) if rec.request is not None else None
            return lambda rec: rec.request.headers.get(name) if rec.request is not None else None
        if which == "RESP":
            if name == b":status":
                return lambda rec: rec.response.status if rec.response is not None else None
            return lambda rec: rec.response.headers.get(name) if rec.response is not None else None
        return lambda rec: rec.trailers.get(name) if rec.trailers is not None else None

    getters = [one(n) for n in names]
    if len(getters) == 1:
        return getters[0]
    first, second = getters

    def either(rec):
        value = first(rec)
        return value if value is not None else second(rec)
    return either


# COMMON_DURATION's time points (Envoy's names) -> how to read them
_POINTS = {
    "DS_RX_BEG": lambda i, end: i.startTime,
    "DS_RX_END": lambda i, end: i.requestEndTime,
    "US_TX_BEG": lambda i, end: i.upstreamStartTime,
    "US_RX_BEG": lambda i, end: i.upstreamFirstByteTime,
    "US_RX_END": lambda i, end: i.upstreamEndTime,
    "DS_TX_END": lambda i, end: end,
}
_PRECISION = {"ms": 1e3, "us": 1e6, "ns": 1e9}


def _commonDuration(arg):
    parts = (arg or "").split(":")
    if len(parts) != 3 or parts[0] not in _POINTS or parts[1] not in _POINTS or parts[2] not in _PRECISION:
        raise FormatError("(START:END:PRECISION): points one of %s, precision ms, us or ns"
                          % (", ".join(_POINTS),))
    start, stop, scale = _POINTS[parts[0]], _POINTS[parts[1]], _PRECISION[parts[2]]

    def get(rec):
        a, b = start(rec.info, rec.end), stop(rec.info, rec.end)
        if a is None or b is None:
            return None
        return max(0, int(round((b - a) * scale)))
    return get


def _plain(getter):
    def make(arg):
        if arg is not None:
            raise FormatError("takes no argument")
        return getter
    return make


_HOSTNAME = socket.gethostname()


def _peer(field):
    """A getter of the stream's IPeerIdentity ``field`` (None: no client certificate)."""
    def get(rec):
        peer = rec.info.peerIdentity
        return None if peer is None else field(peer)
    return get


def _tls(field):
    """A getter of the stream's IDownstreamTLS ``field`` (None: plain text)."""
    def get(rec):
        tls = rec.info.downstreamTls
        return None if tls is None else field(tls)
    return get


def _upstreamPeer(get):
    """A getter of the request's verified upstream (txmesh.tls.client.UpstreamPeer) ``get(peer)``, None without."""
    def getter(rec):
        peer = rec.info.upstreamTLS
        return None if peer is None else get(peer)
    return getter

# name -> (make(arg) -> getter, kind): "int" values are numbers (typed in JSON), "safe" ones need no escaping
OPERATORS = {
    "START_TIME": (lambda arg: _startTime if arg is None else _strftimeGetter(arg), "safe"),
    "REQ": (lambda arg: _headerGetter("REQ", arg), "text"),
    "RESP": (lambda arg: _headerGetter("RESP", arg), "text"),
    "TRAILER": (lambda arg: _headerGetter("TRAILER", arg), "text"),
    "DURATION": (_plain(_duration), "int"),
    "REQUEST_DURATION": (_plain(_requestDuration), "int"),
    "RESPONSE_DURATION": (_plain(_responseDuration), "int"),
    "RESPONSE_TX_DURATION": (_plain(_responseTxDuration), "int"),
    "COMMON_DURATION": (_commonDuration, "int"),
    "RESPONSE_CODE": (_plain(responseCode), "int"),
    "RESPONSE_CODE_DETAILS": (_plain(_details), "text"),
    "RESPONSE_FLAGS": (_plain(responseFlags), "safe"),
    "BYTES_RECEIVED": (_plain(lambda rec: rec.info.bytesReceived), "int"),
    "BYTES_SENT": (_plain(lambda rec: rec.info.bytesSent), "int"),
    "PROTOCOL": (_plain(lambda rec: protocolName(rec.info.protocol)), "safe"),
    "UPSTREAM_HOST": (_plain(lambda rec: rec.info.upstreamHost), "text"),
    "UPSTREAM_CLUSTER": (_plain(lambda rec: rec.info.clusterName), "text"),
    "UPSTREAM_TRANSPORT_FAILURE_REASON": (_plain(lambda rec: rec.info.upstreamFailureReason), "text"),
    "UPSTREAM_REQUEST_ATTEMPT_COUNT": (_plain(lambda rec: rec.info.attemptCount), "int"),
    "DOWNSTREAM_REMOTE_ADDRESS": (_plain(lambda rec: rec.info.downstreamPeer or None), "text"),
    "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT": (_plain(lambda rec: _peerWithoutPort(rec.info.downstreamPeer)),
                                               "text"),
    "DOWNSTREAM_LOCAL_ADDRESS": (_plain(lambda rec: rec.info.downstreamLocal), "text"),
    "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT": (_plain(lambda rec: _peerWithoutPort(rec.info.downstreamLocal)),
                                              "text"),
    "ROUTE_NAME": (_plain(lambda rec: rec.info.routeName), "text"),
    "GRPC_STATUS": (lambda arg: _grpcStatus({None: _GRPC_CAMEL, "CAMEL_STRING": _GRPC_CAMEL,
                                             "SNAKE_STRING": _GRPC_SNAKE}[arg] if arg != "NUMBER" else None), "text"),
    "GRPC_STATUS_NUMBER": (_plain(_grpcStatus(None)), "int"),
    "HOSTNAME": (_plain(lambda rec: _HOSTNAME), "text"),
    "REQUEST_ID": (_plain(requestId), "text"),
    # the stream's trace id (lower-case hex) when tracing is configured (docs/tracing.md), else '-'
    "TRACE_ID": (_plain(lambda rec: rec.info.metadata.get("trace_id")), "safe"),
    "LISTENER_NAME": (_plain(lambda rec: rec.info.listenerName), "text"),
    "DUBBO_INTERFACE": (_plain(_dubbo("interface")), "text"),
    "DUBBO_METHOD": (_plain(_dubbo("method")), "text"),
    "DUBBO_VERSION": (_plain(_dubbo("version")), "text"),
    "DUBBO_GROUP": (_plain(_dubbo("group")), "text"),
    "DUBBO_STATUS": (_plain(_dubboStatus), "int"),
    # a TLS listener's connection (issue 14); "-" on plain text or without a client certificate
    "DOWNSTREAM_PEER_URI_SAN": (_plain(_peer(lambda p: ",".join(p.uriSans) or None)), "text"),
    "DOWNSTREAM_PEER_DNS_SAN": (_plain(_peer(lambda p: ",".join(p.dnsSans) or None)), "text"),
    "DOWNSTREAM_PEER_SUBJECT": (_plain(_peer(lambda p: p.subject or None)), "text"),
    "DOWNSTREAM_PEER_SERIAL": (_plain(_peer(lambda p: p.serial)), "text"),
    "DOWNSTREAM_PEER_FINGERPRINT_256": (_plain(_peer(lambda p: p.fingerprint)), "text"),
    "DOWNSTREAM_TLS_VERSION": (_plain(_tls(lambda t: t.version)), "text"),
    "DOWNSTREAM_TLS_CIPHER": (_plain(_tls(lambda t: t.cipher)), "text"),
    "REQUESTED_SERVER_NAME": (_plain(_tls(lambda t: t.serverName)), "text"),
    # a TLS cluster's upstream (issue 14): the identity and version its latest verified handshake showed
    "UPSTREAM_PEER_URI_SAN": (_plain(_upstreamPeer(lambda peer: ",".join(peer.identity.uriSans))), "text"),
    "UPSTREAM_PEER_DNS_SAN": (_plain(_upstreamPeer(lambda peer: ",".join(peer.identity.dnsSans))), "text"),
    "UPSTREAM_PEER_SUBJECT": (_plain(_upstreamPeer(lambda peer: peer.identity.subject)), "text"),
    "UPSTREAM_TLS_VERSION": (_plain(_upstreamPeer(lambda peer: peer.version)), "text"),
}

# Envoy operators txmesh does not (yet) provide: named in the config error, so an operator knows it is not a typo
UNSUPPORTED = {
    "UPSTREAM_LOCAL_ADDRESS": "the upstream connection's local address is not recorded",
    "UPSTREAM_LOCAL_ADDRESS_WITHOUT_PORT": "the upstream connection's local address is not recorded",
    "DYNAMIC_METADATA": "txmesh has no dynamic metadata",
    "FILTER_STATE": "txmesh has no filter state",
    "CONNECTION_ID": "connections have no ids",
    "UPSTREAM_WIRE_BYTES_SENT": "wire bytes are not counted",
    "UPSTREAM_WIRE_BYTES_RECEIVED": "wire bytes are not counted",
}


def _grpcArgCheck(arg):
    if arg not in (None, "CAMEL_STRING", "SNAKE_STRING", "NUMBER"):
        raise FormatError("%GRPC_STATUS%: takes CAMEL_STRING, SNAKE_STRING or NUMBER")


_OPERATOR = re.compile(r"%([A-Z][A-Z0-9_]*)(?:\(([^)]*)\))?(?::([0-9]+))?%")


def _truncating(getter, limit):
    def get(rec):
        value = getter(rec)
        if type(value) is bytes or type(value) is str:
            return value[:limit]
        return value
    return get


def compileOperator(name, arg, limit):
    """One operator's getter and kind ('int', 'text', 'safe'); raises FormatError for an unknown one."""
    entry = OPERATORS.get(name)
    if entry is None:
        if name in UNSUPPORTED:
            raise FormatError("%%%s%% is not supported: %s" % (name, UNSUPPORTED[name]))
        raise FormatError("unknown command operator %%%s%% (known: %s)" % (name, ", ".join(sorted(OPERATORS))))
    make, kind = entry
    if name == "GRPC_STATUS":
        _grpcArgCheck(arg)
        if arg == "NUMBER":
            kind = "int"
    try:
        getter = make(arg)
    except FormatError as e:
        raise FormatError("%%%s%%: %s" % (name, e))
    if limit is not None:
        if kind == "int":
            raise FormatError("%%%s%%: a number cannot be truncated" % (name,))
        getter = _truncating(getter, limit)
    return getter, kind


def parsePieces(fmt):
    """
    Split a format string into literals (str) and (getter, kind) operators.
    @raise FormatError: an unknown operator, a bad argument or a lone '%' (write '%%' for a literal '%').
    """
    pieces = []
    literal = []
    i, n = 0, len(fmt)
    while i < n:
        j = fmt.find("%", i)
        if j < 0:
            literal.append(fmt[i:])
            break
        literal.append(fmt[i:j])
        if fmt.startswith("%%", j):
            literal.append("%")
            i = j + 2
            continue
        m = _OPERATOR.match(fmt, j)
        if m is None:
            raise FormatError("column %d: '%%' starts no command operator (like %%REQ(user-agent)%%; a literal "
                              "'%%' is written '%%%%')" % (j + 1,))
        name, arg, limit = m.group(1), m.group(2), m.group(3)
        if limit is not None and int(limit) == 0:
            raise FormatError("column %d: a truncation must be at least 1" % (j + 1,))
        text = "".join(literal)
        if text:
            pieces.append(text)
        literal = []
        pieces.append(compileOperator(name, arg, int(limit) if limit is not None else None))
        i = m.end()
    if literal and "".join(literal):
        pieces.append("".join(literal))
    return pieces


class TextFormat:
    """A compiled ``format`` string: L{format} makes one line (a newline is added when the format has none)."""

    def __init__(self, fmt):
        pieces = parsePieces(fmt)
        if all(type(p) is str for p in pieces):
            raise FormatError("not 'text' or 'json', and no %OPERATOR% in it (e.g. '%START_TIME% %REQ(:PATH)%')")
        if not fmt.endswith("\n"):
            pieces.append("\n")
        self.source = fmt
        # (getter or None, literal after it): a leading literal rides on a None getter
        steps = []
        lead = ""
        for piece in pieces:
            if type(piece) is str:
                if steps:
                    getter, kind, lit = steps[-1]
                    steps[-1] = (getter, kind, lit + piece)
                else:
                    lead += piece
            else:
                steps.append((piece[0], piece[1], ""))
        self.lead = lead
        self.steps = tuple((g, kind == "safe", lit) for g, kind, lit in steps)
        self.usesResponse = _usesResponse(fmt)

    def format(self, rec):
        out = [self.lead]
        for getter, safe, lit in self.steps:
            value = getter(rec)
            if safe:
                out.append(value if value is not None else "-")
            else:
                out.append(escapeText(value))
            out.append(lit)
        return "".join(out)


def _usesResponse(fmt):
    return "%RESP(" in fmt or "%TRAILER(" in fmt


class JsonFormat:
    """
    A compiled ``json_format`` mapping: each value a format string (one operator alone gives a typed value: a
    number for a number, null when missing; with other text, a string), a nested mapping, or a constant.
    """

    def __init__(self, mapping):
        self.usesResponse = False
        self.template = self._compile(mapping, ())

    def _compile(self, mapping, path):
        out = []
        for key, value in mapping.items():
            where = path + (str(key),)
            if isinstance(value, dict):
                out.append((str(key), 0, self._compile(value, where)))
            elif isinstance(value, str):
                try:
                    pieces = parsePieces(value)
                except FormatError as e:
                    raise FormatError(str(e), ".".join(where))
                self.usesResponse = self.usesResponse or _usesResponse(value)
                if len(pieces) == 1 and type(pieces[0]) is tuple:
                    out.append((str(key), 1, pieces[0][0]))
                elif all(type(p) is str for p in pieces):
                    out.append((str(key), 2, "".join(pieces)))
                else:
                    out.append((str(key), 3, tuple(pieces)))
            elif value is None or isinstance(value, (bool, int, float)):
                out.append((str(key), 2, value))
            else:
                raise FormatError("must be a format string or a mapping, not %s" % (type(value).__name__,),
                                  ".".join(where))
        return tuple(out)

    def _fill(self, template, rec):
        obj = {}
        for key, how, what in template:
            if how == 1:
                obj[key] = jsonValue(what(rec))
            elif how == 0:
                obj[key] = self._fill(what, rec)
            elif how == 2:
                obj[key] = what
            else:
                parts = []
                for p in what:
                    if type(p) is str:
                        parts.append(p)
                    else:
                        value = jsonValue(p[0](rec))
                        parts.append("-" if value is None else str(value))
                obj[key] = "".join(parts)
        return obj

    def format(self, rec):
        return _encode(self._fill(self.template, rec)) + "\n"


def grpcCode(value):
    """A grpc-status field value (bytes) as an int; malformed or absurdly long: UNKNOWN."""
    return int(value) if value is not None and value.isdigit() and len(value) <= 10 else grpc.UNKNOWN
