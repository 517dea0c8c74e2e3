"""
What txmesh's HTTP/2 side refuses, apart from its Protocols (sans-IO): malformed requests, responses and trailers
(RFC 9113 8.1-8.3: an intermediary must not forward them) and, on the listener, frame floods (CVE-2023-44487
rapid reset, PING/SETTINGS (queued answers and a rate), PRIORITY, WINDOW_UPDATE and empty DATA floods), counted against the listener's
L{txmesh.config.H2Limits}.
"""

import re


class MalformedMessage(Exception):
    """An HTTP/2 message that RFC 9113 8.1-8.3 calls malformed: its stream is reset with PROTOCOL_ERROR."""


class MalformedRequest(MalformedMessage):
    """A malformed request (the listener answers RST_STREAM(PROTOCOL_ERROR) and forwards nothing)."""


class UnsupportedRequest(Exception):
    """
    A well-formed request the HTTP/2 listener does not serve (CONNECT where no route tunnels it): answered with an
    HTTP ``status`` by the listener itself, never forwarded.
    """

    status = 501


_PSEUDO = frozenset({b":method", b":path", b":authority", b":scheme"})
_PSEUDO_EXTENDED = _PSEUDO | {b":protocol"}  # RFC 8441 4, once the listener sent SETTINGS_ENABLE_CONNECT_PROTOCOL
_CONNECTION_SPECIFIC = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding",
                                  b"upgrade"})
_BAD_NAME = re.compile(rb"[^a-z0-9!#$%&'*+\-.^_`|~]")
_BAD_VALUE = re.compile(rb"[\r\n\x00]")
_WHITESPACE = b" \t"  # a value must not start or end with one (RFC 9113 8.2.1)
# what becomes the HTTP/1.1 request line upstream, the route's match and x-forwarded-proto
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # :method (RFC 9110 5.6.2)
_SCHEME = re.compile(rb"[A-Za-z][A-Za-z0-9+\-.]*")  # :scheme (RFC 3986 3.1)
_BAD_PATH = re.compile(rb"[\x00-\x20\x7f]")  # :path: no CTL, no space
# :authority: RFC 3986 uri-host [":" port], an IP literal or a reg-name; no userinfo (RFC 9113 8.3.1)
_HOST = rb"(?:\[[0-9A-Fa-f:.]+\]|(?:[A-Za-z0-9\-._~!$&'()*+,;=]|%[0-9A-Fa-f]{2})+)"
_AUTHORITY = re.compile(_HOST + rb"(?::[0-9]*)?")
_CONNECT_AUTHORITY = re.compile(_HOST + rb":[0-9]+")  # CONNECT: host and port both (RFC 9113 8.5)
_COMMON_METHODS = frozenset({b"GET", b"POST", b"PUT", b"DELETE", b"HEAD", b"OPTIONS", b"PATCH"})
_COMMON_SCHEMES = frozenset({b"http", b"https"})
# authorities already found well-formed (a few per deployment: the regex runs once each), short ones only, and
# forgotten all at once when full, so a client sending many cannot make it big
_goodAuthorities = set()
_GOOD_AUTHORITIES_MAX = 4096
_GOOD_AUTHORITY_LENGTH = 255
# regular fields ((name, value) pairs, short ones only) already found well-formed, the same way: a peer sends the same
# few again and again, and each took two regex searches.  A request's checks are stricter (te, whitespace) than a
# response's or trailers', so each has its own set
_goodRequestFields = set()
_goodFields = set()
_GOOD_FIELDS_MAX = 4096
_GOOD_FIELD_LENGTH = 255


def _remember(good, pair):
    """Keep ``pair``, found well-formed, in ``good`` (if short; forgotten all at once when full)."""
    if len(pair[1]) <= _GOOD_FIELD_LENGTH and len(pair[0]) <= _GOOD_FIELD_LENGTH:
        if len(good) >= _GOOD_FIELDS_MAX:
            good.clear()
        good.add(pair)


def readRequest(headers, extendedConnect=False, connect=False):
    """
    (method, path, authority, scheme, regular fields, protocol) of a request's header list, checked as RFC 9113 asks:
    pseudo-headers first, known, once each; ``:method`` a token; ``:scheme`` a URI scheme; ``:path`` origin-form
    (or ``*`` for OPTIONS) without CTL or space; ``:authority`` (or ``host`` without it) a host and an optional
    port, no userinfo; lower-case token names; no connection-specific fields; ``te`` only "trailers"; no CR/LF/NUL
    in values, nor whitespace at their ends.  ``:authority`` wins over ``host`` (which is dropped); ``cookie``
    fields are joined into one with "; " (RFC 9113 8.2.3).

    ``extendedConnect``: the listener advertised SETTINGS_ENABLE_CONNECT_PROTOCOL, so ``:protocol`` (a token) is
    accepted on a CONNECT that has ``:scheme``, ``:path`` and ``:authority`` (RFC 8441 4); ``protocol`` is its value,
    else None (without the setting ``:protocol`` is an unknown pseudo-header: malformed).  ``connect``: some route
    tunnels CONNECT, so a well-formed one (only ``:method`` and ``:authority``, RFC 9113 8.5) is returned with path
    and scheme b"".

    @raise MalformedRequest: the request must not be forwarded.
    @raise UnsupportedRequest: a well-formed CONNECT, when not ``connect``.
    """
    known = _PSEUDO_EXTENDED if extendedConnect else _PSEUDO
    pseudo = {}
    fields = []
    host = None
    cookie = cookieAt = None
    for k, v in headers:
        if k[:1] == b":":
            if fields or host is not None:
                raise MalformedRequest("pseudo-header %r after a regular field" % (k,))
            if k not in known or k in pseudo:
                raise MalformedRequest("unknown or repeated pseudo-header %r" % (k,))
            pseudo[k] = v
            continue
        pair = (k, v)
        if pair in _goodRequestFields:  # neither host nor cookie: those are never remembered
            fields.append(pair)
            continue
        if not k or _BAD_NAME.search(k) is not None:
            raise MalformedRequest("invalid field name %r" % (k,))
        if k in _CONNECTION_SPECIFIC or (k == b"te" and v != b"trailers"):
            raise MalformedRequest("connection-specific field %r" % (k,))
        if _BAD_VALUE.search(v) is not None or v.strip(_WHITESPACE) != v:
            raise MalformedRequest("invalid value of %r" % (k,))
        if k == b"host":
            host = v
        elif k == b"cookie":
            if cookie is None:
                cookie = [v]
                cookieAt = len(fields)
                fields.append((k, v))
            else:
                cookie.append(v)
        else:
            fields.append(pair)
            _remember(_goodRequestFields, pair)
    if cookie is not None and len(cookie) > 1:
        # crumbs split across fields (8.2.3) are one field again, as an HTTP/1.1 upstream must get them
        fields[cookieAt] = (b"cookie", b"; ".join(cookie))
    method = pseudo.get(b":method")
    if method is None or (method not in _COMMON_METHODS and _TOKEN.fullmatch(method) is None):
        raise MalformedRequest("missing or invalid :method %r" % (method,))
    authority = pseudo.get(b":authority")
    protocol = pseudo.get(b":protocol")
    if protocol is not None:
        if method != b"CONNECT" or _TOKEN.fullmatch(protocol) is None:
            raise MalformedRequest(":protocol %r on a %r request" % (protocol, method))
        if authority is None or _AUTHORITY.fullmatch(authority) is None:
            raise MalformedRequest("extended CONNECT without a valid :authority")
    elif method == b"CONNECT":
        if len(pseudo) != 2 or authority is None or _CONNECT_AUTHORITY.fullmatch(authority) is None:
            raise MalformedRequest("CONNECT takes :authority host:port and neither :scheme nor :path")
        if not connect:
            raise UnsupportedRequest("CONNECT to %r: no route of this listener tunnels it" % (authority,))
        return method, b"", authority, b"", fields, None
    scheme = pseudo.get(b":scheme")
    if scheme is None or (scheme not in _COMMON_SCHEMES and _SCHEME.fullmatch(scheme) is None):
        raise MalformedRequest("missing or invalid :scheme %r" % (scheme,))
    path = pseudo.get(b":path")
    if (not path or (path[0] != 0x2F and (path != b"*" or method != b"OPTIONS"))
            or _BAD_PATH.search(path) is not None):
        raise MalformedRequest("missing or invalid :path %r" % (path,))
    if authority is None:
        authority = host
        if authority is None:
            return method, path, b"", scheme, fields, None
    if authority not in _goodAuthorities:
        if _AUTHORITY.fullmatch(authority) is None:
            raise MalformedRequest("invalid :authority %r" % (authority,))
        if len(authority) <= _GOOD_AUTHORITY_LENGTH:
            if len(_goodAuthorities) >= _GOOD_AUTHORITIES_MAX:
                _goodAuthorities.clear()
            _goodAuthorities.add(authority)
    return method, path, authority, scheme, fields, protocol


def _checkField(k, v):
    if not k or _BAD_NAME.search(k) is not None:
        raise MalformedMessage("invalid field name %r" % (k,))
    if k in _CONNECTION_SPECIFIC:
        raise MalformedMessage("connection-specific field %r" % (k,))
    if _BAD_VALUE.search(v) is not None:
        raise MalformedMessage("invalid value of %r" % (k,))


def readResponse(headers):
    """
    (status, regular fields) of a final response's header list: one 3-digit ``:status`` first and no other
    pseudo-header, and regular fields as ``readRequest`` checks them.

    @raise MalformedMessage: the response must not be forwarded.
    """
    status = None
    fields = []
    for k, v in headers:
        if k[:1] == b":":
            if k != b":status" or status is not None or fields:
                raise MalformedMessage("unexpected pseudo-header %r" % (k,))
            if len(v) != 3 or not v.isdigit():
                raise MalformedMessage("invalid :status %r" % (v,))
            status = int(v)
            continue
        pair = (k, v)
        if pair not in _goodFields:
            _checkField(k, v)
            _remember(_goodFields, pair)
        fields.append(pair)
    if status is None:
        raise MalformedMessage("no :status")
    return status, fields


def checkTrailers(headers):
    """
    Trailers are field lines like the head's, without pseudo-headers (8.1).

    @raise MalformedMessage: they must not be forwarded.
    """
    for k, v in headers:
        if k[:1] == b":":
            raise MalformedMessage("pseudo-header %r in trailers" % (k,))
        pair = (k, v)
        if pair not in _goodFields:
            _checkField(k, v)
            _remember(_goodFields, pair)


class FloodGuard:
    """
    The flood bookkeeping of one downstream connection.  Each ``*Received`` method accounts for one inbound event
    and returns the flood kind (the ``kind`` label of downstream_h2_flood_close) once a bound is passed, else None;
    the connection then closes with GOAWAY(ENHANCE_YOUR_CALM), as Envoy does.
    """

    __slots__ = ("limits", "clock", "streamsOpened", "dataFramesSent", "pendingControl", "prematureResets",
                 "priorityFrames", "windowUpdates", "emptyData", "controlWindowStart", "controlInWindow",
                 "dataAtWindowStart")

    def __init__(self, limits, clock):
        self.limits = limits
        self.clock = clock
        self.streamsOpened = 0
        self.dataFramesSent = 0  # useful work the peer may answer with WINDOW_UPDATEs
        self.pendingControl = 0  # PING/SETTINGS acks queued since the transport's write buffer filled
        self.prematureResets = 0
        self.priorityFrames = 0
        self.windowUpdates = 0
        self.emptyData = 0
        self.controlWindowStart = clock.seconds()  # the one-second window inbound PING/SETTINGS are counted in
        self.controlInWindow = 0
        self.dataAtWindowStart = 0  # dataFramesSent when the window began

    def windowUpdateReceived(self):
        self.windowUpdates += 1
        if self.windowUpdates > self.limits.maxInboundWindowUpdatePerData * (1 + self.dataFramesSent) + 100:
            return "window_update"
        return None

    def priorityReceived(self):
        self.priorityFrames += 1
        if self.priorityFrames > self.limits.maxInboundPriorityPerStream * (1 + 2 * self.streamsOpened):
            return "priority"
        return None

    def dataReceived(self, empty, endStream):
        """A DATA frame; only a run of empty ones that do not end their stream counts."""
        if not empty:
            self.emptyData = 0
            return None
        self.emptyData += 1
        if not endStream and self.emptyData > self.limits.maxConsecutiveEmptyData:
            return "empty_data"
        return None

    def controlReceived(self, writePaused, answered=True):
        """
        A PING or SETTINGS frame came (``answered``: an ACK of it was queued).  Two bounds: the ACKs queued while
        the peer does not read us (``control_frames``), and the frames received per second of the clock, plus one
        per DATA frame sent in that second (``control_frame_rate``), so a peer that reads its ACKs cannot make
        us answer without limit while clients' BDP pings, sent as our DATA arrives, still fit.
        """
        if writePaused and answered:
            self.pendingControl += 1
            if self.pendingControl > self.limits.maxPendingControlFrames:
                return "control_frames"
        now = self.clock.seconds()
        if now - self.controlWindowStart >= 1.0:
            self.controlWindowStart = now
            self.controlInWindow = 0
            self.dataAtWindowStart = self.dataFramesSent
        self.controlInWindow += 1
        if (self.controlInWindow > self.limits.maxInboundControlFramesPerSecond
                + self.dataFramesSent - self.dataAtWindowStart):
            return "control_frame_rate"
        return None

    def prematureResetReceived(self):
        """The client reset a stream before its response ended: rapid reset past both bounds."""
        self.prematureResets += 1
        limits = self.limits
        if (self.prematureResets > limits.maxPrematureResets
                and self.prematureResets >= self.streamsOpened * limits.prematureResetRatio):
            return "rapid_reset"
        return None
