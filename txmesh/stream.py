"""
The protocol-neutral model of one stream: header maps, request and response heads, stream info.

Everything that comes off the wire stays ``bytes`` (as in twisted.web): header names are lower-case bytes, values
bytes.  Codecs fill these in; filters read and change them; the upstream codec serialises them.
"""

import random
from binascii import hexlify

from zope.interface import implementer

from txmesh.interfaces import IStreamInfo

_ids = random.Random(random.SystemRandom().getrandbits(64))
_UUID_MASK = ~((0xF << 76) | (0x3 << 62))  # the version nibble and the variant bits
_UUID_V4 = (0x4 << 76) | (0x2 << 62)  # version 4, variant 10 (RFC 9562)


def newRequestId():
    """
    A random (version 4) UUID for ``x-request-id``, from a per-process PRNG seeded from the OS: ids need
    uniqueness, not secrecy, and a ``getrandom`` call per request showed in the syscall profile.
    """
    h = hexlify((_ids.getrandbits(128) & _UUID_MASK | _UUID_V4).to_bytes(16, "big"))
    return b"-".join((h[:8], h[8:12], h[12:16], h[16:20], h[20:]))


class HeaderMap:
    """
    An ordered multi-map of header fields, names lower-case ``bytes``.

    Kept as a plain list of ``[name, value]`` pairs: the common operations (iterate to serialise, look one up among
    a dozen) are fastest on a list, and order and repeats survive a round trip.
    """

    __slots__ = ("_fields",)

    def __init__(self, fields=None):
        self._fields = fields if fields is not None else []

    @classmethod
    def fromPairs(cls, pairs):
        """Build from (name, value) pairs of bytes or str; names are lower-cased."""
        out = []
        for k, v in pairs:
            if isinstance(k, str):
                k = k.encode("latin-1")
            if isinstance(v, str):
                v = v.encode("latin-1")
            out.append((k.lower(), v))
        return cls(out)

    def get(self, name, default=None):
        """The first value of ``name`` (lower-case bytes), or default."""
        for k, v in self._fields:
            if k == name:
                return v
        return default

    def getAll(self, name):
        return [v for k, v in self._fields if k == name]

    def __contains__(self, name):
        for k, _ in self._fields:
            if k == name:
                return True
        return False

    def add(self, name, value):
        """Append a field (keeps existing ones)."""
        self._fields.append((name, value))

    def set(self, name, value):
        """Replace every field called ``name`` with one."""
        fields = self._fields
        for k, _ in fields:
            if k == name:
                fields = self._fields = [f for f in fields if f[0] != name]
                break
        fields.append((name, value))

    def remove(self, name):
        """Remove every field called ``name``; return how many were removed."""
        fields = self._fields
        n = len(fields)
        self._fields = [f for f in fields if f[0] != name]
        return n - len(self._fields)

    def removeMany(self, names):
        """Remove every field whose name is in the set ``names``."""
        self._fields = [f for f in self._fields if f[0] not in names]

    def items(self):
        """The (name, value) pairs, in order (a live list: do not mutate while iterating)."""
        return self._fields

    def copy(self):
        return HeaderMap(list(self._fields))

    def __len__(self):
        return len(self._fields)

    def __iter__(self):
        return iter(self._fields)

    def __eq__(self, other):
        return isinstance(other, HeaderMap) and self._fields == other._fields

    def __repr__(self):
        return "HeaderMap(%r)" % (self._fields,)


class RequestHead:
    """
    A request as filters and the router see it.

    @ivar method: bytes, e.g. b"GET".
    @ivar scheme: b"http" / b"https".
    @ivar authority: the Host / :authority (bytes, without userinfo), b"" if absent.
    @ivar path: the origin-form target including the query (bytes).
    @ivar headers: HeaderMap of the regular fields (no Host, no hop-by-hop).
    @ivar version: (1, 1), (1, 0) or (2, 0).
    @ivar protocol: the canonical name of the listener's protocol ('http1', 'http2', 'grpc', 'dubbo').
    @ivar metadata: protocol fields that are not headers (Dubbo service/method/version/group), str -> str.
    @ivar contentLength: declared body length, or None (chunked / unknown / none).
    @ivar timeout: a deadline the client asked for, in seconds from the request's arrival (grpc-timeout, Dubbo's
        timeout attachment), or None; the router bounds the stream by it and tells the next hop the time left.
    @ivar payload: protocol-specific data the upstream codec needs to forward the request as it came (e.g. the
        decoded Dubbo frame), or None.
    @ivar upgrade: the ``Upgrade`` value the client offered (HTTP/1.1 with ``Connection: upgrade``; RFC 8441's
        ``:protocol`` over HTTP/2), or None.  The router forwards it as a tunnel when the route allows it
        (txmesh.tunnel_config), else sets it to None: the request goes on as a plain one.
    """

    __slots__ = ("method", "scheme", "authority", "path", "headers", "version", "protocol", "metadata",
                 "contentLength", "timeout", "payload", "upgrade")

    def __init__(self, method, path, authority=b"", headers=None, scheme=b"http", version=(1, 1),
                 protocol="http1", metadata=None, contentLength=None):
        self.method = method
        self.path = path
        self.authority = authority
        self.headers = headers if headers is not None else HeaderMap()
        self.scheme = scheme
        self.version = version
        self.protocol = protocol
        self.metadata = metadata if metadata is not None else {}
        self.contentLength = contentLength
        self.timeout = None
        self.payload = None
        self.upgrade = None

    def pathOnly(self):
        """The path without the query string."""
        p = self.path
        i = p.find(b"?")
        return p if i < 0 else p[:i]

    def __repr__(self):
        return "<RequestHead %r %r %r>" % (self.method, self.authority, self.path)


class ResponseHead:
    """
    A response as filters see it.

    @ivar status: int.
    @ivar reason: bytes (HTTP/1.1 only; b"" means the standard phrase).
    @ivar headers: HeaderMap (no hop-by-hop).
    @ivar contentLength: declared body length, or None.
    """

    __slots__ = ("status", "reason", "headers", "version", "contentLength")

    def __init__(self, status, headers=None, reason=b"", version=(1, 1), contentLength=None):
        self.status = status
        self.headers = headers if headers is not None else HeaderMap()
        self.reason = reason
        self.version = version
        self.contentLength = contentLength

    def __repr__(self):
        return "<ResponseHead %d>" % (self.status,)


@implementer(IStreamInfo)
class StreamInfo:
    """Facts about one stream; see IStreamInfo."""

    __slots__ = ("startTime", "protocol", "listenerName", "downstreamPeer", "routeName", "clusterName",
                 "upstreamHost", "responseFlags", "bytesReceived", "bytesSent", "responseCode", "metadata",
                 "endTime", "requestId", "downstreamLocal", "requestEndTime", "upstreamStartTime",
                 "upstreamFirstByteTime", "upstreamEndTime", "attemptCount", "responseCodeDetails",
                 "upstreamFailureReason", "peerIdentity", "grpcStatus", "downstreamTls", "upstreamTLS")

    def __init__(self, startTime, protocol, listenerName, downstreamPeer=""):
        self.startTime = startTime
        self.protocol = protocol
        self.listenerName = listenerName
        self.downstreamPeer = downstreamPeer
        self.routeName = None
        self.clusterName = None
        self.upstreamHost = None
        self.responseFlags = set()
        self.bytesReceived = 0
        self.bytesSent = 0
        self.responseCode = None
        self.metadata = {}
        self.endTime = None
        self.requestId = None
        # the access log's facts (issue 16 part 3); see IStreamInfo
        self.downstreamLocal = None
        self.requestEndTime = None
        self.upstreamStartTime = None
        self.upstreamFirstByteTime = None
        self.upstreamEndTime = None
        self.attemptCount = 0
        self.responseCodeDetails = None
        self.upstreamFailureReason = None
        self.peerIdentity = None  # issue 14: set by the listener when the connection's TLS verified a client cert
        self.grpcStatus = None  # what a gRPC listener answered (issue 16 part 1's per-cluster counts)
        self.downstreamTls = None  # issue 14: the connection's IDownstreamTLS on a TLS listener
        self.upstreamTLS = None  # issue 14: the upstream host's tlsPeer once connected (a TLS cluster)


# The parts of a request held while its upstream connection is being made (the router's attempts, mirroring's
# shadows): (kind, payload, endStream) with kind one of these.
HELD_HEADERS, HELD_DATA, HELD_TRAILERS = 0, 1, 2


def sendHeld(conn, held, responder, stopped):
    """
    Send the held parts of a request, in order, on ``conn`` (an IUpstreamStream) with ``responder`` as the
    request's IUpstreamResponder; stop early once ``stopped()`` is true (sending can end the exchange).
    @return: True if every part was sent.
    """
    for kind, payload, endStream in held:
        if kind == HELD_HEADERS:
            conn.sendRequest(payload, endStream, responder)
        elif kind == HELD_DATA:
            conn.writeBody(payload, endStream)
        else:
            conn.writeTrailers(payload)
        if stopped():
            return False
    return True
