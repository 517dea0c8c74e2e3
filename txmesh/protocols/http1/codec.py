"""
The sans-IO HTTP/1.1 codec: request and response decoders on llhttp (through httptools); the events they report are
in L{txmesh.protocols.http1.events}, the field rules and serialisers in L{txmesh.protocols.http1.wire} (both
re-exported here, so protocols import one module).

How the work is split, and why:
  - llhttp parses each *head* (request/status line and fields) in strict mode.  It refuses obs-fold, bare CR or
    LF, NUL and other controls, bad tokens, space before the colon, an empty name, bad methods, CL together
    with TE, duplicate / empty / signed / list Content-Length.  We feed it the head bytes as they arrive, so it
    fails early, and nothing past the head's final CRLF CRLF.
  - We frame bodies ourselves (Content-Length slices, chunked, read-until-close): httptools offers no way to
    say "this response answers a HEAD", and the chunk-size rules we want (at most 16 hex digits and 63 bits,
    refused as soon as they arrive) are stricter than llhttp's.  A parser that was left waiting for a body is
    dropped and a fresh one made for the next head (~0.3 us); after bodiless messages, the common case, the
    same parser is reused.
  - Limits are counted on the bytes we feed it: the request line (414), the header block size and field
    count (431) are checked on every feed, before the block ends.
  - On top of llhttp we refuse: Transfer-Encoding other than exactly ``chunked`` between optional whitespace (OWS
    is SP or HTAB, RFC 9110 5.6.3: ``\tchunked`` and ``chunked `` are chunked; ``gzip, chunked``, repeated TE
    fields: 400, never 501; llhttp's own TE check, which refuses a trailing HTAB, is relaxed for this), TE in
    HTTP/1.0, missing Host in HTTP/1.1, several Host fields, a Host or target authority that is not
    ``uri-host [":" port]``, a request-target whose form does not fit the method (authority-form only and always
    for CONNECT, asterisk-form only for OPTIONS, no fragment), HTTP versions other than 1.0 and 1.1.
  - Chunked bodies are decoded a run of complete chunks at a time (one BodyData per run), the chunk-by-chunk
    state machine taking over at the edges of a feed and for anything unusual, so both refuse the same bytes.

Decoded heads hold no Host (it becomes C{authority}), no hop-by-hop field and no field named in Connection;
``te: trailers`` survives as the one allowed TE value (gRPC needs it end to end).  Expect stays in the headers.
Bodies carry the same object identity as the input when a whole feed is body (no copy).
"""

import re
from collections import deque

from httptools import HttpParserError, HttpParserUpgrade, HttpRequestParser, HttpResponseParser
from zope.interface import implementer

from txmesh.errors import HTTPCodecError
from txmesh.interfaces import ICodec
from txmesh.protocols.http1.events import (
    BodyData, InterimResponse, MessageComplete, RequestStarted, ResponseStarted, TunnelData)
from txmesh.protocols.http1.wire import (
    CHUNK_LINE, CHUNK_PARTIAL, HOP_BY_HOP, LAST_CHUNK, MAX_CHUNK_LINE, MAX_CHUNK_SIZE, PLAIN_AUTHORITY,
    TRAILER_FORBIDDEN, checkChunked, classifyFields, encodeBody, encodeChunk, encodeRequestHead, encodeResponseHead,
    encodeTrailers, validAuthority)
from txmesh.stream import HeaderMap, RequestHead, ResponseHead

__all__ = ["RequestDecoder", "ResponseDecoder", "RequestStarted", "ResponseStarted", "InterimResponse", "BodyData",
           "TunnelData", "MessageComplete", "HOP_BY_HOP", "LAST_CHUNK", "encodeBody", "encodeChunk",
           "encodeRequestHead", "encodeResponseHead", "encodeTrailers"]


# decoder states
_HEAD, _LENGTH, _CHUNKED, _UNTIL_CLOSE, _TUNNEL, _HOLD, _CLOSED = range(7)
# chunked sub-states
_C_SIZE, _C_DATA, _C_CRLF, _C_TRAILERS = range(4)

_VERSIONS = {"1.1": (1, 1), "1.0": (1, 0)}
_LEADING_BLANK = re.compile(rb"[\r\n]*")
_ABSOLUTE = re.compile(rb"[Hh][Tt][Tt][Pp][Ss]?://([^/?#]*)([/?][^#]*)?", re.DOTALL)
_TRAILER_PRIMER = b"GET / HTTP/1.1\r\n"
# chunk-size lines without extensions or leading zeros, up to 0x3ff, and their values: the bulk decoder's fast path
_SMALL_SIZES = {}
for _i in range(1, 0x400):
    _SMALL_SIZES[b"%x" % _i] = _SMALL_SIZES[b"%X" % _i] = _i
del _i


def _requestParser(callbacks):
    """
    An llhttp request parser, strict but for Transfer-Encoding: llhttp refuses ``chunked<HTAB>`` (legal OWS), and
    wire.checkChunked checks the raw TE lines itself (exactly one, ``chunked`` between OWS, no Content-Length).
    """
    parser = HttpRequestParser(callbacks)
    parser.set_dangerous_leniencies(lenient_transfer_encoding=True)
    return parser


class _MessageDecoder:
    """The machinery both decoders share: head reading with limits, body framing, chunked decoding."""

    _parserType = None
    _lineStatus = 414
    _headStatus = 431
    _badStatus = 400

    def __init__(self, maxLine, maxHeaderBytes, maxHeaders):
        self.maxLine = maxLine
        self.maxHeaderBytes = maxHeaderBytes
        self.maxHeaders = maxHeaders
        self.bodyLimit = None
        self._parser = None
        self._state = _HEAD
        self._chunkState = _C_SIZE
        self._remaining = 0
        self._received = 0
        self._line = b""
        self._keepAlive = True
        self._resetHead()


    def feed(self, data):
        """
        Decode ``data``: heads through llhttp (``_headParser``), bodies ourselves.

        @return: the events, in order; an HTTPCodecError after events already decoded from this data is the last
            event (so a message that was whole before the bad bytes is still delivered), else it is raised.
        """
        events = []
        pos = 0
        n = len(data)
        try:
            while pos < n:
                if self._state == _HEAD:
                    if self._headBytes == 0:
                        if self._skipsBlankLines and data[pos] in b"\r\n":
                            pos = _LEADING_BLANK.match(data, pos).end()
                            if pos == n:
                                break
                        if self._parser is None:
                            self._parser = self._headParser(self)
                    end = self._readHead(data, pos)
                    if end < 0:
                        break
                    pos = end
                    self._startMessage(events)
                elif self._state == _CLOSED:
                    break
                else:
                    pos = self._feedBody(data, pos, events)
        except HTTPCodecError as e:
            self._state = _CLOSED
            self._parser = None
            if not events:
                raise
            events.append(e)
        return events
    def _resetHead(self, tail=b"", lines=0, lineLen=-1):
        self._headBytes = 0
        self._lineLen = lineLen
        self._lines = lines
        self._tail = tail
        self._chunks = []
        self._fields = []
        self._url = b""
        self._reason = b""
        self._headDone = False
        self._llDone = False

    # -- httptools callbacks (names fixed by httptools) ----------------------------------------------------------

    def on_url(self, url):
        self._url += url

    def on_status(self, reason):
        self._reason += reason

    def on_header(self, name, value):
        # llhttp strips leading OWS only
        self._fields.append((name.lower(), value.rstrip(b" \t")))

    def on_headers_complete(self):
        self._headDone = True

    def on_message_complete(self):
        self._llDone = True

    # -- heads ---------------------------------------------------------------------------------------------------

    def _fail(self, reason, status=None):
        raise HTTPCodecError(reason, status or self._badStatus)

    def _readHead(self, data, pos):
        """
        Feed the head bytes in data[pos:] to llhttp, never past the head's final CRLF CRLF.

        @return: the offset just past the head, or -1 when all of data[pos:] was head and more is needed.
        """
        n = len(data)
        tail = self._tail
        end = -1
        if tail:
            j = (tail + data[pos:pos + 3]).find(b"\r\n\r\n")
            if j >= 0:
                end = pos + j + 4 - len(tail)
        if end < 0:
            j = data.find(b"\r\n\r\n", pos)
            if j >= 0:
                end = j + 4
        stop = n if end < 0 else end
        chunk = data if (pos == 0 and stop == n) else data[pos:stop]
        size = stop - pos
        total = self._headBytes = self._headBytes + size
        lineLen = self._lineLen
        if lineLen < 0:
            i = chunk.find(b"\n")
            if i < 0:
                if total > self.maxLine + 2:
                    self._fail("request line too long" if self._lineStatus == 414 else "status line too long",
                               self._lineStatus)
            else:
                lineLen = self._lineLen = total - size + i + 1
                if lineLen > self.maxLine + 2:
                    self._fail("request line too long" if self._lineStatus == 414 else "status line too long",
                               self._lineStatus)
        if lineLen >= 0:
            if total - lineLen > self.maxHeaderBytes:
                self._fail("header block too large", self._headStatus)
            lines = self._lines = self._lines + chunk.count(b"\n")
            if lines - 1 - (end >= 0) > self.maxHeaders:
                self._fail("too many header fields", self._headStatus)
        self._chunks.append(chunk)
        try:
            self._parser.feed_data(chunk)
        except HttpParserUpgrade:
            self._llDone = False  # llhttp stopped at the upgrade; do not reuse it
        except HttpParserError as e:
            self._fail("malformed head: %s" % (e,))
        if end < 0:
            if self._headDone:
                # llhttp ended the head where there is no CRLF CRLF (a version-less HTTP/0.9 line, e.g.
                # "CONNECT h\n\r\n"): refused now, not at whichever later byte the split of the input brings
                self._fail("malformed head")
            self._tail = chunk[-3:] if size >= 3 else (tail + chunk)[-3:]
            return -1
        if not self._headDone:
            self._fail("malformed head")
        return end

    def _parserReusable(self):
        return self._llDone and self._parser.should_keep_alive()

    def dropParser(self):
        """
        The connection is gone: let go of the llhttp parser, which holds this decoder's methods (a reference cycle
        the collector would otherwise have to find).  A later ``feed`` makes a new one.
        """
        self._parser = None

    # -- bodies --------------------------------------------------------------------------------------------------

    def _startBody(self, chunked, length):
        """Enter the body state for a message that has one."""
        self._received = 0
        if not self._parserReusable():
            self._parser = None
        if chunked:
            self._state = _CHUNKED
            self._chunkState = _C_SIZE
            self._line = b""
        elif length is None:
            self._state = _UNTIL_CLOSE
        else:
            self._state = _LENGTH
            self._remaining = length

    def _endMessage(self, events, trailers):
        events.append(MessageComplete(trailers))
        if self._parser is not None and not self._parserReusable():
            self._parser = None
        self._resetHead()
        self._state = _HEAD if self._keepAlive else _CLOSED

    def _countBody(self, n):
        self._received += n
        limit = self.bodyLimit
        if limit is not None and self._received > limit:
            self._fail("body larger than %d bytes" % (limit,), 413)

    def _readChunked(self, data, pos, events):
        n = len(data)
        while pos < n:
            cs = self._chunkState
            if cs == _C_DATA:
                rem = self._remaining
                take = n - pos
                if take > rem:
                    take = rem
                piece = data if (pos == 0 and take == n) else data[pos:pos + take]
                pos += take
                self._remaining = rem - take
                self._countBody(take)
                events.append(BodyData(piece))
                if rem == take:
                    self._chunkState = _C_CRLF
            elif cs == _C_SIZE:
                if not self._line:
                    end = self._readChunkRun(data, pos, events)
                    if end != pos:
                        pos = end
                        continue
                i = data.find(b"\n", pos)
                if i < 0:
                    line = self._line + data[pos:]
                    if len(line) > MAX_CHUNK_LINE or CHUNK_PARTIAL.fullmatch(line) is None:
                        self._fail("invalid chunk size line")
                    self._line = line
                    return n
                line = self._line + data[pos:i + 1]
                self._line = b""
                pos = i + 1
                m = CHUNK_LINE.fullmatch(line)
                if m is None or len(line) > MAX_CHUNK_LINE:
                    self._fail("invalid chunk size line")
                size = int(m.group(1), 16)
                if size > MAX_CHUNK_SIZE:
                    self._fail("chunk size too large")
                if size:
                    self._remaining = size
                    self._chunkState = _C_DATA
                else:
                    self._chunkState = _C_TRAILERS
                    self._resetHead(tail=b"\r\n", lines=1, lineLen=0)
            elif cs == _C_CRLF:
                line = self._line
                got = data[pos:pos + 2 - len(line)]
                pos += len(got)
                line += got
                if line != b"\r\n"[:len(line)]:
                    self._fail("chunk data not followed by CRLF")
                if len(line) == 2:
                    self._line = b""
                    self._chunkState = _C_SIZE
                else:
                    self._line = line
            else:
                if self._parser is None:
                    if data.startswith(b"\r\n", pos):
                        self._endMessage(events, None)  # no trailers: the common case needs no parser
                        return pos + 2
                    self._parser = self._parserType(self)
                    self._parser.feed_data(self._primer)
                    self._fields = []
                end = self._readHead(data, pos)
                if end < 0:
                    return n
                fields = [f for f in self._fields if f[0] not in TRAILER_FORBIDDEN]
                self._parser = None
                self._endMessage(events, HeaderMap(fields) if fields else None)
                return end
        return pos

    def _readChunkRun(self, data, pos, events):
        """
        Decode the complete chunks at data[pos:] in one loop, as one BodyData; stop before anything else (a chunk
        cut by the end of the feed, the last chunk, an oversized or malformed line, missing CRLF, the body limit),
        which the chunk-by-chunk path in L{_readChunked} then takes, with its errors.  A body of many tiny chunks
        thus costs one dict lookup or regex match per chunk, not a pass through the state machine.

        @return: the offset after the last chunk decoded (``pos`` when there was none).
        """
        n = len(data)
        find = data.find
        sizes = _SMALL_SIZES
        line = CHUNK_LINE.fullmatch
        limit = self.bodyLimit
        room = MAX_CHUNK_SIZE if limit is None else limit - self._received
        pieces = []
        total = 0
        while True:
            i = find(b"\r\n", pos, pos + MAX_CHUNK_LINE)
            if i < 0:
                break
            size = sizes.get(data[pos:i])
            if size is None:
                m = line(data, pos, i + 2)
                if m is None:
                    break
                size = int(m.group(1), 16)
                if size == 0 or size > MAX_CHUNK_SIZE:
                    break
            start = i + 2
            end = start + size
            if end + 2 > n or data[end] != 13 or data[end + 1] != 10 or total + size > room:
                break
            pieces.append(data[start:end])
            total += size
            pos = end + 2
        if pieces:
            self._received += total
            events.append(BodyData(pieces[0] if len(pieces) == 1 else b"".join(pieces)))
        return pos

    def _feedBody(self, data, pos, events):
        """One step in a body or tunnel state; returns the new offset."""
        n = len(data)
        state = self._state
        if state == _LENGTH:
            rem = self._remaining
            take = n - pos
            if take > rem:
                take = rem
            piece = data if (pos == 0 and take == n) else data[pos:pos + take]
            self._remaining = rem - take
            self._countBody(take)
            events.append(BodyData(piece))
            if rem == take:
                self._endMessage(events, None)
            return pos + take
        if state == _CHUNKED:
            return self._readChunked(data, pos, events)
        piece = data if pos == 0 else data[pos:]
        if state == _UNTIL_CLOSE:
            self._countBody(len(piece))
            events.append(BodyData(piece))
        elif state == _TUNNEL:
            events.append(TunnelData(piece))
        elif state == _HOLD:
            self._held.append(piece)
            self._heldBytes += len(piece)
            if self._heldBytes > self.maxHeaderBytes:
                self._fail("too much data before the tunnel was accepted", self._headStatus)
        return n


@implementer(ICodec)
class RequestDecoder(_MessageDecoder):
    """
    Decode the requests of one downstream connection, pipelined ones included.

    C{feed(data)} returns RequestStarted, BodyData, MessageComplete events.  Malformed or over-limit input raises
    L{HTTPCodecError} (status 400, 413, 414 or 431), or, when the same feed already produced events for earlier
    (pipelined) requests, ends the returned list with the exception instead, so those can be answered first.
    Either way the decoder then ignores further input: the server answers ``status`` and closes.

    After a request that does not keep the connection (HTTP/1.0 without keep-alive, ``Connection: close``), and
    after a CONNECT, further bytes are not parsed: they are ignored, or, for CONNECT, held until the server
    calls L{startTunnel}.  Upgrade requests (Upgrade and Connection: upgrade, reported in ``upgrade``) stay HTTP
    until the server calls L{startTunnel} after sending a 101; with ``holdUpgrades`` the bytes after a bodiless
    upgrade request are held like CONNECT's, until L{startTunnel} (they are the tunnel's) or L{release} (the
    upgrade was not taken: they are HTTP again), so none is read as HTTP before the server knows which.

    @ivar bodyLimit: None, or the most body bytes a request may carry; more raises HTTPCodecError(413) at once.
        It holds for every later request on the connection.  A Content-Length over it is the server's to check
        on C{head.contentLength}.
    """

    _parserType = HttpRequestParser
    _primer = _TRAILER_PRIMER
    _skipsBlankLines = True  # RFC 9112 2.2: empty lines before a request line are ignored
    _headParser = staticmethod(_requestParser)

    def __init__(self, maxRequestLine=8192, maxHeaderBytes=65536, maxHeaders=100, scheme=b"http",
                 holdUpgrades=False):
        super().__init__(maxRequestLine, maxHeaderBytes, maxHeaders)
        self.scheme = scheme
        self.holdUpgrades = holdUpgrades
        self._held = []
        self._heldBytes = 0

    @property
    def holding(self):
        """Bytes are held after a CONNECT or (``holdUpgrades``) an upgrade request, for startTunnel or release."""
        return self._state == _HOLD

    def release(self):
        """
        The upgrade was not taken: the bytes held since the request are decoded as HTTP.

        @return: their events, as L{feed} returns them (and raises).
        """
        if self._state != _HOLD:
            return []
        held = b"".join(self._held)
        self._held = []
        self._heldBytes = 0
        self._state = _HEAD
        return self.feed(held) if held else []

    def startTunnel(self):
        """
        The server accepted an upgrade or a CONNECT: from now on every byte is opaque TunnelData.

        @return: events for the bytes held since the CONNECT.
        """
        held = b"".join(self._held)
        self._held = []
        self._state = _TUNNEL
        self._parser = None
        return [TunnelData(held)] if held else []

    def _startMessage(self, events):
        parser = self._parser
        version = _VERSIONS.get(parser.get_http_version())
        if version is None:
            self._fail("unsupported HTTP version")
        # llhttp also reads RTSP/1.0 and ICE/1.0 request lines, as HTTP/1.0
        first = self._chunks[0]
        end = first.find(b"\r\n")
        line = first[:end] if end >= 0 else b"".join(self._chunks).partition(b"\r\n")[0]
        if line[-9:-3] != b" HTTP/":
            self._fail("unsupported protocol")
        method = parser.get_method()
        f = classifyFields(self._fields, self._badStatus)
        if f.hosts == 0:
            if version == (1, 1):
                self._fail("missing Host")
            authority = b""
        elif f.hosts > 1:
            self._fail("more than one Host")
        else:
            authority = f.host
            if PLAIN_AUTHORITY(authority) is None and not validAuthority(authority):
                self._fail("invalid Host")
        url = self._url
        upgrade = f.upgrade
        # the request-target's form follows the method (RFC 9112 3.2): authority-form only for CONNECT, and CONNECT
        # only with it; asterisk-form only for OPTIONS; else origin-form or absolute-form.  No fragment in any.
        if method == b"CONNECT":
            if not validAuthority(url, True, True):
                self._fail("invalid CONNECT target")
            path = b""
            authority = url
            upgrade = b"connect"
        elif url[:1] == b"/":
            if b"#" in url:
                self._fail("fragment in request target")
            path = url
        elif url == b"*" and method == b"OPTIONS":
            path = url
        else:
            m = _ABSOLUTE.fullmatch(url)
            if m is None or not validAuthority(m.group(1), True):
                self._fail("invalid request target")
            authority = m.group(1)
            path = m.group(2)
            if not path or path[:1] == b"?":
                # RFC 9112 3.2.4: OPTIONS for the server itself is forwarded in asterisk-form
                path = (b"*" if method == b"OPTIONS" else b"/") if not path else b"/" + path
        if version == (1, 1):
            keepAlive = not f.close
        else:
            keepAlive = f.keepAlive and not f.close
        chunked = False
        if f.te is not None:
            checkChunked(f, version, b"".join(self._chunks), self._badStatus)
            chunked = True
        length = f.contentLength
        if method == b"CONNECT":
            keepAlive = False
        self._keepAlive = keepAlive
        head = RequestHead(method, path, authority, HeaderMap(f.headers), self.scheme, version,
                           contentLength=length)
        if upgrade is not None and method != b"CONNECT" and version == (1, 1):
            # the router tunnels it if the route allows, else drops it; HTTP/1.0 has no 101 (RFC 9110 7.8)
            head.upgrade = upgrade
        events.append(RequestStarted(head, keepAlive, f.expectContinue, chunked, upgrade))
        if chunked or length:
            self._startBody(chunked, length)
        else:
            self._endMessage(events, None)
            if method == b"CONNECT" or upgrade is not None and self.holdUpgrades and self._state == _HEAD:
                self._state = _HOLD


@implementer(ICodec)
class ResponseDecoder(_MessageDecoder):
    """
    Decode the responses of one upstream connection, in the order of the requests announced with L{expect}.

    C{feed(data)} returns ResponseStarted, BodyData, MessageComplete and InterimResponse events; bad framing
    raises L{HTTPCodecError} (502) and the connection must not be reused.  When the same feed already produced
    events (a whole response before the bad bytes), the list ends with the exception instead, so that response is
    delivered whatever the split of the bytes.  A response to HEAD, a 204 or a 304
    has no body; one without Content-Length or chunked ends at close (L{eof}).  After a 101 (only to a request
    that offered an upgrade), or a 2xx to CONNECT, the bytes that follow are TunnelData.
    """

    _parserType = HttpResponseParser
    _primer = b"HTTP/1.1 204 No Content\r\n"
    _skipsBlankLines = False
    _headParser = HttpResponseParser
    _lineStatus = _headStatus = _badStatus = 502

    def __init__(self, maxStatusLine=8192, maxHeaderBytes=65536, maxHeaders=100):
        super().__init__(maxStatusLine, maxHeaderBytes, maxHeaders)
        self._expected = deque()
        self._held = []
        self._heldBytes = 0

    def expect(self, method, upgrade=False):
        """
        A request with ``method`` was sent: its response comes after those already expected.  ``upgrade``: the
        request offered an Upgrade, so a 101 may answer it; a 101 to any other request is bad framing (502).
        """
        self._expected.append((method,) if upgrade else method)  # a bare method in the common case: no tuple

    def eof(self):
        """
        The upstream closed.  Completes a read-until-close body; [] when between responses (an outstanding
        request then gets no response: the caller's reset, not a framing error).

        @raise HTTPCodecError: the close cut a head or a framed body short.
        """
        state = self._state
        self._state = _CLOSED
        self._parser = None
        if state == _UNTIL_CLOSE:
            return [MessageComplete(None)]
        if state == _HEAD and self._headBytes:
            raise HTTPCodecError("connection closed inside a response head", 502)
        if state in (_LENGTH, _CHUNKED):
            raise HTTPCodecError("connection closed inside a response body", 502)
        return []

    def _startMessage(self, events):
        parser = self._parser
        version = _VERSIONS.get(parser.get_http_version())
        if version is None:
            self._fail("unsupported HTTP version")
        if self._chunks[0][:5] != b"HTTP/" and b"".join(self._chunks).lstrip(b"\r\n")[:5] != b"HTTP/":
            self._fail("unsupported protocol")  # llhttp also reads RTSP/1.0 status lines
        status = parser.get_status_code()
        if status < 100:
            self._fail("invalid status code")
        if not self._expected:
            self._fail("response without a request")
        f = classifyFields(self._fields, self._badStatus)
        head = ResponseHead(status, HeaderMap(f.headers), self._reason, version, f.contentLength)
        if status < 200 and status != 101:
            events.append(InterimResponse(status, head.headers))
            if not self._parserReusable():
                self._parser = None
            self._resetHead()
            return
        method = self._expected.popleft()
        if type(method) is tuple:
            method = method[0]
        elif status == 101:
            self._fail("101 Switching Protocols to a request that offered no upgrade")
        keepAlive = (not f.close) if version == (1, 1) else (f.keepAlive and not f.close)
        if status == 101 or (method == b"CONNECT" and 200 <= status < 300):
            events.append(ResponseStarted(head, False, False, f.upgrade if status == 101 else b"connect"))
            self._keepAlive = True
            self._endMessage(events, None)
            self._state = _TUNNEL
            self._parser = None
            return
        chunked = False
        if method == b"HEAD" or status == 204 or status == 304:
            length = 0
        elif f.te is not None:
            checkChunked(f, version, b"".join(self._chunks), self._badStatus)
            chunked = True
            length = None
        else:
            length = f.contentLength
            if length is None:
                keepAlive = False
        self._keepAlive = keepAlive
        events.append(ResponseStarted(head, keepAlive, chunked))
        if chunked or length is None or length:
            self._startBody(chunked, length)
        else:
            self._endMessage(events, None)
