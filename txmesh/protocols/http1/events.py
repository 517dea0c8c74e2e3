"""
What the HTTP/1.1 decoders (L{txmesh.protocols.http1.codec}) report, in the order the bytes came.
"""


class RequestStarted:
    """A request head.  ``upgrade`` is the Upgrade value when Connection names upgrade (CONNECT: b"connect")."""

    __slots__ = ("head", "keepAlive", "expectContinue", "chunked", "upgrade")

    def __init__(self, head, keepAlive, expectContinue=False, chunked=False, upgrade=None):
        self.head = head
        self.keepAlive = keepAlive
        self.expectContinue = expectContinue
        self.chunked = chunked
        self.upgrade = upgrade

    def __repr__(self):
        return "<RequestStarted %r keepAlive=%r>" % (self.head, self.keepAlive)


class ResponseStarted:
    """A final response head.  ``upgrade`` is the Upgrade value of a 101."""

    __slots__ = ("head", "keepAlive", "chunked", "upgrade")

    def __init__(self, head, keepAlive, chunked=False, upgrade=None):
        self.head = head
        self.keepAlive = keepAlive
        self.chunked = chunked
        self.upgrade = upgrade

    def __repr__(self):
        return "<ResponseStarted %r keepAlive=%r>" % (self.head, self.keepAlive)


class InterimResponse:
    """A 1xx response other than 101 (100 Continue, 103 Early Hints); the final response is still to come."""

    __slots__ = ("status", "headers")

    def __init__(self, status, headers):
        self.status = status
        self.headers = headers

    def __eq__(self, other):
        return type(other) is InterimResponse and (self.status, self.headers) == (other.status, other.headers)

    def __repr__(self):
        return "InterimResponse(%r, %r)" % (self.status, self.headers)


class _Bytes:
    __slots__ = ("data",)

    def __init__(self, data):
        self.data = data

    def __eq__(self, other):
        return type(other) is type(self) and self.data == other.data

    def __repr__(self):
        return "%s(%r)" % (type(self).__name__, self.data)


class BodyData(_Bytes):
    """Body bytes of the current message (chunk framing removed)."""


class TunnelData(_Bytes):
    """Opaque bytes after a 101 or an accepted CONNECT."""


class MessageComplete:
    """The current message ended; ``trailers`` is a HeaderMap, or None when there were none."""

    __slots__ = ("trailers",)

    def __init__(self, trailers=None):
        self.trailers = trailers

    def __eq__(self, other):
        return type(other) is MessageComplete and self.trailers == other.trailers

    def __repr__(self):
        return "MessageComplete(%r)" % (self.trailers,)
