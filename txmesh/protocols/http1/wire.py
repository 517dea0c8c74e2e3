"""
HTTP/1.1 on the wire: the field rules the decoders share, and serialisation (the decoders are in
L{txmesh.protocols.http1.codec}, which re-exports the public names).

Every head is built as a list and joined once: one ``bytes`` per head, ready for one ``transport.write``.
Fields that carry framing or connection semantics (``HOP_BY_HOP``, Content-Length, Host) are never copied from
``head.headers``: they are written from the head's own attributes, so a filter cannot smuggle a second framing
header onto the wire.  A CR or LF inside a name or value (response splitting) raises L{HTTPCodecError} (500).
"""

import ipaddress
import re
from http import HTTPStatus

from txmesh.errors import HTTPCodecError

# RFC 9110 7.6.1 names Connection, Proxy-Connection, Keep-Alive, TE, Transfer-Encoding and Upgrade; Trailer
# announces fields of this hop's chunked body.  Proxy-Authenticate/-Authorization were hop-by-hop in RFC 2616
# only; RFC 9110 dropped them and Envoy forwards them, so do we.
HOP_BY_HOP = frozenset([b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"te",
                        b"trailer", b"upgrade"])

LAST_CHUNK = b"0\r\n\r\n"

# Never copied from head.headers when serialising: framing comes from head.contentLength / ``chunked``.
_NOT_COPIED = HOP_BY_HOP | frozenset([b"content-length", b"host"])

# Fields dropped from received trailers: hop-by-hop, framing and routing (RFC 9110 6.5.1).
TRAILER_FORBIDDEN = _NOT_COPIED

_STATUS_LINES = {}
for _s in HTTPStatus:
    _STATUS_LINES[_s.value] = b"HTTP/1.1 %d %s\r\n" % (_s.value, _s.phrase.encode("ascii"))
del _s

# A complete chunk-size line (RFC 9112 7.1.1): 1-16 hex digits, then chunk extensions, each
# ``BWS ";" BWS token [BWS "=" BWS (token / quoted-string)]``, then CRLF.  The value is further limited to 63 bits.
_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_QUOTED = rb'"(?:[\t\x20\x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t\x20-\x7e\x80-\xff])*"'
CHUNK_EXT = rb"(?:[ \t]*;[ \t]*" + _TOKEN + rb"(?:[ \t]*=[ \t]*(?:" + _TOKEN + rb"|" + _QUOTED + rb"))?)*"
CHUNK_LINE = re.compile(rb"([0-9A-Fa-f]{1,16})(" + CHUNK_EXT + rb")\r\n")
# A chunk-size line still arriving: what cannot grow into CHUNK_LINE by its characters alone (a seventeenth digit,
# a control, a bare CR or LF, a space with no ";" after it yet is let through) is refused at once; the grammar of
# the extensions is checked when the line is complete.
CHUNK_PARTIAL = re.compile(rb"[0-9A-Fa-f]{0,16}(?:(?<=[0-9A-Fa-f])[ \t;][\t\x20-\x7e\x80-\xff]*)?\r?")
MAX_CHUNK_LINE = 4096
MAX_CHUNK_SIZE = (1 << 63) - 1

# The raw Transfer-Encoding lines of a head: the only accepted value is "chunked", with optional whitespace (OWS:
# SP or HTAB, RFC 9110 5.6.3) on either side.
TE_LINE = re.compile(rb"\ntransfer-encoding:([^\r\n]*)\r", re.IGNORECASE)
TE_CHUNKED = re.compile(rb"[ \t]*chunked[ \t]*\Z", re.IGNORECASE)

# Host and the authority of a request target (RFC 9110 7.2, RFC 3986 3.2.2): uri-host [":" port], where uri-host
# is a reg-name (an IPv4 address is one) or an IP-literal in brackets; no userinfo.  Ports are at most 5 digits.
_PORT = rb"(?::[0-9]{0,5})?"
_REG_NAME = rb"(?:[-A-Za-z0-9._~!$&'()*+,;=]|%[0-9A-Fa-f]{2})*"
_AUTHORITY = re.compile(_REG_NAME + _PORT)
# the common case (a reg-name without pct-encoding, an optional port) matched without alternation: ~140 ns
PLAIN_AUTHORITY = re.compile(rb"[-A-Za-z0-9._~!$&'()*+,;=]*(?::[0-9]{0,5})?").fullmatch
_IP_LITERAL = re.compile(rb"\[(?:([0-9A-Fa-f:.]+)|[vV][0-9A-Fa-f]+\.[-A-Za-z0-9._~!$&'()*+,;=:]+)\]" + _PORT)


def validAuthority(value, requireHost=False, requirePort=False):
    """
    Whether ``value`` (bytes) is ``uri-host [":" port]``.  ``requireHost``: the host may not be empty (an absolute
    or authority-form target, RFC 9110 4.2.1); ``requirePort``: a port must follow (CONNECT's authority-form).
    """
    if _AUTHORITY.fullmatch(value) is not None:
        if not (requireHost or requirePort):
            return True
        host, _, port = value.partition(b":")  # a reg-name has no colon
    else:
        m = _IP_LITERAL.fullmatch(value)
        if m is None:
            return False
        if m.group(1) is not None:
            try:
                ipaddress.IPv6Address(m.group(1).decode("ascii"))
            except ValueError:
                return False
        host = value[:m.end(1) + 1] if m.group(1) is not None else b"[v]"
        port = value[value.rindex(b"]") + 2:]
    return not (requireHost and not host or requirePort and not port)


# Fields that steer framing or the connection; every other field goes to the head as is.
_HOST, _CL, _TE, _CONN, _UPGRADE, _TE_HDR, _EXPECT, _DROP = range(8)
_SPECIAL = {b"host": _HOST, b"content-length": _CL, b"transfer-encoding": _TE, b"connection": _CONN,
            b"upgrade": _UPGRADE, b"te": _TE_HDR, b"expect": _EXPECT, b"keep-alive": _DROP,
            b"proxy-connection": _DROP, b"trailer": _DROP}
_CONN_OWN = frozenset([b"close", b"keep-alive", b"upgrade", b""])


class _Framing:
    """What the fields of one head say about framing and the connection."""

    __slots__ = ("headers", "hosts", "host", "contentLength", "te", "teCount", "close", "keepAlive", "upgrade",
                 "expectContinue")



def classifyFields(fields, badStatus):
    """Split the fields of a head into the regular ones and what they say about framing."""
    f = _Framing()
    headers = []
    hosts = 0
    host = cl = te = conn = upgrade = None
    teCount = 0
    expectContinue = False
    special = _SPECIAL
    for field in fields:
        kind = special.get(field[0])
        if kind is None:
            headers.append(field)
            continue
        value = field[1]
        if kind == _HOST:
            hosts += 1
            host = value
        elif kind == _CL:
            if cl is not None or not value.isdigit() or len(value) > 18:
                raise HTTPCodecError("invalid Content-Length", badStatus)
            cl = int(value)
        elif kind == _TE:
            teCount += 1
            te = value
        elif kind == _CONN:
            conn = value if conn is None else conn + b"," + value
        elif kind == _UPGRADE:
            upgrade = value
        elif kind == _TE_HDR:
            if b"trailers" in [t.strip(b" \t") for t in value.lower().split(b",")]:
                headers.append((b"te", b"trailers"))
        elif kind == _EXPECT:
            headers.append(field)
            expectContinue = value.lower() == b"100-continue"
    close = keepAlive = False
    if conn is not None:
        tokens = {t.strip(b" \t") for t in conn.lower().split(b",")}
        close = b"close" in tokens
        keepAlive = b"keep-alive" in tokens
        if b"upgrade" not in tokens:
            upgrade = None
        nominated = tokens - _CONN_OWN
        if nominated:
            headers = [h for h in headers if h[0] not in nominated]
    else:
        upgrade = None
    f.headers = headers
    f.hosts = hosts
    f.host = host
    f.contentLength = cl
    f.te = te
    f.teCount = teCount
    f.close = close
    f.keepAlive = keepAlive
    f.upgrade = upgrade
    f.expectContinue = expectContinue
    return f


def checkChunked(f, version, rawHead, badStatus):
    """Transfer-Encoding must be exactly one field saying ``chunked``, in HTTP/1.1, without Content-Length."""
    if f.contentLength is not None:
        raise HTTPCodecError("Content-Length with Transfer-Encoding", badStatus)
    if f.teCount != 1 or version != (1, 1):
        raise HTTPCodecError("invalid Transfer-Encoding", badStatus)
    raw = TE_LINE.findall(rawHead)
    if len(raw) != 1 or TE_CHUNKED.match(raw[0]) is None:
        raise HTTPCodecError("invalid Transfer-Encoding", badStatus)


def _checkSplitting(out, lines):
    """Refuse a head whose names or values smuggled a CR or LF (``lines`` is the number of CRLFs expected)."""
    if out.count(b"\n") != lines or out.count(b"\r") != lines:
        raise HTTPCodecError("CR or LF inside a header field", 500)


def encodeRequestHead(head, chunked, upgrade=None):
    """
    Serialise a request head in origin-form, always as HTTP/1.1, Host from C{head.authority}.

    @param chunked: write ``Transfer-Encoding: chunked``; otherwise Content-Length from C{head.contentLength}
        (none when it is None).
    @param upgrade: an Upgrade value to offer (adds ``Connection: upgrade``), or None.
    """
    path = head.path or b"/"
    parts = [head.method, b" ", path, b" HTTP/1.1\r\nhost: ", head.authority, b"\r\n"]
    lines = 3
    app = parts.append
    for name, value in head.headers._fields:
        if name in _NOT_COPIED:
            if name != b"te" or value != b"trailers":
                continue
        app(name)
        app(b": ")
        app(value)
        app(b"\r\n")
        lines += 1
    if chunked:
        app(b"transfer-encoding: chunked\r\n")
        lines += 1
    elif head.contentLength is not None:
        app(b"content-length: %d\r\n" % head.contentLength)
        lines += 1
    if upgrade is not None:
        app(b"connection: upgrade\r\nupgrade: ")
        app(upgrade)
        app(b"\r\n")
        lines += 2
    app(b"\r\n")
    out = b"".join(parts)
    _checkSplitting(out, lines)
    return out


def encodeResponseHead(head, chunked, keepAlive, version=(1, 1), upgrade=None):
    """
    Serialise a response head.  The reason phrase is C{head.reason}, or the standard one when empty.

    1xx and 204 get no framing field; 304 keeps a given Content-Length but is never chunked.  ``Connection:
    close`` is written when not ``keepAlive``; ``Connection: keep-alive`` when an HTTP/1.0 peer may keep the
    connection.  ``upgrade`` (for a 101) adds ``Connection: upgrade`` and ``Upgrade``.
    """
    status = head.status
    if head.reason:
        line = b"HTTP/1.1 %d %s\r\n" % (status, head.reason)
    else:
        line = _STATUS_LINES.get(status)
        if line is None:
            line = b"HTTP/1.1 %d Unknown\r\n" % (status,)
    parts = [line]
    lines = 2
    app = parts.append
    for name, value in head.headers._fields:
        if name in _NOT_COPIED:
            continue
        app(name)
        app(b": ")
        app(value)
        app(b"\r\n")
        lines += 1
    if status >= 200 and status != 204:
        if chunked and status != 304:
            app(b"transfer-encoding: chunked\r\n")
            lines += 1
        elif head.contentLength is not None:
            app(b"content-length: %d\r\n" % head.contentLength)
            lines += 1
    if upgrade is not None:
        app(b"connection: upgrade\r\nupgrade: ")
        app(upgrade)
        app(b"\r\n")
        lines += 2
    elif not keepAlive:
        app(b"connection: close\r\n")
        lines += 1
    elif version < (1, 1):
        app(b"connection: keep-alive\r\n")
        lines += 1
    app(b"\r\n")
    out = b"".join(parts)
    _checkSplitting(out, lines)
    return out


def encodeChunk(data):
    """One chunk of a chunked body; empty data gives b"" (a zero-size chunk would end the body)."""
    if not data:
        return b""
    return b"%x\r\n%s\r\n" % (len(data), data)


def encodeBody(data, chunked, endStream):
    """
    The bytes that carry a piece of a message body: as is, or as a chunk (with the last chunk when ``endStream``).
    b"" when there is nothing to write.
    """
    if not chunked:
        return data
    if data:
        return encodeChunk(data) + LAST_CHUNK if endStream else encodeChunk(data)
    return LAST_CHUNK if endStream else b""


def encodeTrailers(trailers):
    """
    The end of a chunked body with trailers: the last chunk, the trailer fields, the final CRLF (just
    ``LAST_CHUNK`` when there are none).  Framing and hop-by-hop fields are left out.
    """
    parts = [b"0\r\n"]
    lines = 2
    if trailers is not None:
        for name, value in trailers:
            if name in TRAILER_FORBIDDEN:
                continue
            parts.append(b"%s: %s\r\n" % (name, value))
            lines += 1
    parts.append(b"\r\n")
    out = b"".join(parts)
    _checkSplitting(out, lines)
    return out
