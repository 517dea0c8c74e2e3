"""
What txmesh's HTTP/2 side refuses, apart from its Protocols (sans-IO): malformed requests, responses and trailers
(RFC 9113 8.1-8.3: an intermediary must not forward them) and, on the listener, frame floods (CVE-2023-44487
rapid reset, PING/SETTINGS, PRIORITY, WINDOW_UPDATE and empty DATA floods), counted against the listener's
L{txmesh.config.H2Limits}.
"""

import re


class MalformedMessage(Exception):
    """An HTTP/2 message that RFC 9113 8.1-8.3 calls malformed: its stream is reset with PROTOCOL_ERROR."""


class MalformedRequest(MalformedMessage):
    """A malformed request (the listener answers RST_STREAM(PROTOCOL_ERROR) and forwards nothing)."""


_PSEUDO = frozenset({b":method", b":path", b":authority", b":scheme"})
_CONNECTION_SPECIFIC = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding",
                                  b"upgrade"})
_BAD_NAME = re.compile(rb"[^a-z0-9!#$%&'*+\-.^_`|~]")
_BAD_VALUE = re.compile(rb"[\r\n\x00]")


def readRequest(headers):
    """
    (method, path, authority, scheme, regular fields) of a request's header list, checked as RFC 9113 asks:
    pseudo-headers first, known, once each; lower-case token names; no connection-specific fields; ``te`` only
    "trailers"; no CR/LF/NUL in values.  ``:authority`` wins over ``host`` (which is dropped).

    @raise MalformedRequest: the request must not be forwarded.
    """
    pseudo = {}
    fields = []
    host = None
    for k, v in headers:
        if k[:1] == b":":
            if fields or host is not None:
                raise MalformedRequest("pseudo-header %r after a regular field" % (k,))
            if k not in _PSEUDO or k in pseudo:
                raise MalformedRequest("unknown or repeated pseudo-header %r" % (k,))
            pseudo[k] = v
            continue
        if not k or _BAD_NAME.search(k) is not None:
            raise MalformedRequest("invalid field name %r" % (k,))
        if k in _CONNECTION_SPECIFIC or (k == b"te" and v != b"trailers"):
            raise MalformedRequest("connection-specific field %r" % (k,))
        if _BAD_VALUE.search(v) is not None:
            raise MalformedRequest("invalid value of %r" % (k,))
        if k == b"host":
            host = v
        else:
            fields.append((k, v))
    method = pseudo.get(b":method")
    path = pseudo.get(b":path")
    if method is None or method == b"CONNECT" or not path or b":scheme" not in pseudo:
        raise MalformedRequest("missing or unsupported :method, :path or :scheme")
    authority = pseudo.get(b":authority")
    if authority is None:
        authority = host or b""
    return method, path, authority, pseudo[b":scheme"], fields


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
        _checkField(k, v)
        fields.append((k, v))
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
        _checkField(k, v)


class FloodGuard:
    """
    The flood bookkeeping of one downstream connection.  Each ``*Received`` method accounts for one inbound event
    and returns the flood kind (the ``kind`` label of downstream_h2_flood_close) once a bound is passed, else None;
    the connection then closes with GOAWAY(ENHANCE_YOUR_CALM), as Envoy does.
    """

    __slots__ = ("limits", "streamsOpened", "dataFramesSent", "pendingControl", "prematureResets",
                 "priorityFrames", "windowUpdates", "emptyData")

    def __init__(self, limits):
        self.limits = limits
        self.streamsOpened = 0
        self.dataFramesSent = 0  # useful work the peer may answer with WINDOW_UPDATEs
        self.pendingControl = 0  # PING/SETTINGS acks queued since the transport's write buffer filled
        self.prematureResets = 0
        self.priorityFrames = 0
        self.windowUpdates = 0
        self.emptyData = 0

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

    def controlAnswered(self, writePaused):
        """h2 queued an ACK (PING, SETTINGS); past the bound while the peer does not read us, it is a flood."""
        if writePaused:
            self.pendingControl += 1
            if self.pendingControl > self.limits.maxPendingControlFrames:
                return "control_frames"
        return None

    def prematureResetReceived(self):
        """The client reset a stream before its response ended: rapid reset past both bounds."""
        self.prematureResets += 1
        limits = self.limits
        if (self.prematureResets > limits.maxPrematureResets
                and self.prematureResets >= self.streamsOpened * limits.prematureResetRatio):
            return "rapid_reset"
        return None
