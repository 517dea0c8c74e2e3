"""
Protocol detection, sans-IO: which protocol a connection speaks, from its first bytes (MOSN's auto protocol,
Envoy's tls_inspector and http_inspector).

L{ProtocolSniffer} is fed the bytes as they arrive and compares them with every protocol it may choose, byte by
byte: it answers as soon as one protocol's signature is complete, and refuses as soon as a byte disagrees with
every one of them (or the bytes pass its bound first).  The signatures:

- TLS: a TLS record header for a handshake, ``0x16 0x03 0x01..0x04`` (what a ClientHello's record starts with,
  from SSL 3.0's successors to TLS 1.3, which keeps 0x0301/0x0303 in the record layer);
- HTTP/2: the whole client connection preface, ``PRI * HTTP/2.0\\r\\n\\r\\nSM\\r\\n\\r\\n`` (24 bytes; RFC 9113
  section 3.4), which is also how gRPC starts;
- Dubbo: the magic ``0xda 0xbb`` of a Dubbo 2 frame header;
- HTTP/1.x: a request line's method, a token (RFC 9110 section 5.6.2) followed by a space; ``PRI`` is HTTP/2's
  and never an HTTP/1.x method (RFC 9113 section 3.4).

The first bytes of these never overlap except ``P`` (HTTP/2 and methods such as ``POST``), which both stay
candidates until the fourth byte.  The sniffer consumes nothing: the caller replays every byte it was fed
(``data``) to the protocol chosen.
"""

from txmesh.errors import DetectionFailed

TLS = "tls"
HTTP1 = "http1"
HTTP2 = "http2"
DUBBO = "dubbo"
PROTOCOLS = (TLS, HTTP1, HTTP2, DUBBO)

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DUBBO_MAGIC = b"\xda\xbb"
TLS_HANDSHAKE = 0x16
TLS_VERSIONS = frozenset(range(0x01, 0x05))  # minor versions after the 0x03 major: TLS 1.0 .. 1.3 (and 0x04)

# RFC 9110 tchar: the bytes of a method token
_TCHAR = frozenset(b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")

# the shortest bound that still lets the HTTP/2 preface complete
MIN_BYTES = len(H2_PREFACE)


def _tlsByte(i, b):
    """Whether byte ``b`` at offset ``i`` fits a TLS handshake record header; True once complete (3 bytes)."""
    if i == 0:
        return b == TLS_HANDSHAKE
    if i == 1:
        return b == 0x03
    return b in TLS_VERSIONS


class ProtocolSniffer:
    """
    Detects the protocol of one connection from its first bytes.

    @param protocols: the protocols it may answer (a subset of L{PROTOCOLS}); bytes that fit only others are
        refused as ``unknown``.
    @param maxBytes: refuse (``too_many_bytes``) once this many bytes came without an answer; at least
        L{MIN_BYTES}.
    @ivar data: every byte fed so far (bytes), to be replayed to the protocol chosen.
    """

    __slots__ = ("protocols", "maxBytes", "_chunks", "_seen", "_alive", "_token", "decided")

    def __init__(self, protocols, maxBytes=64):
        unknown = set(protocols) - set(PROTOCOLS)
        if unknown:
            raise ValueError("unknown protocols %s" % (sorted(unknown),))
        if maxBytes < MIN_BYTES:
            raise ValueError("maxBytes must be at least %d (the HTTP/2 preface)" % (MIN_BYTES,))
        self.protocols = frozenset(protocols)
        self.maxBytes = maxBytes
        self._chunks = []
        self._seen = 0
        self._alive = set(self.protocols)
        self._token = bytearray()  # the HTTP/1.x method read so far
        self.decided = None

    @property
    def data(self):
        return b"".join(self._chunks)

    def feed(self, data):
        """
        Take the next bytes.  @return: the protocol (one of L{PROTOCOLS}) once decided, else None (need more).
        @raise DetectionFailed: ``unknown`` (a byte fits none of ``protocols``) or ``too_many_bytes``.
        """
        if self.decided is not None:
            raise RuntimeError("already decided: %s" % (self.decided,))
        if not data:
            return None
        self._chunks.append(data)
        alive = self._alive
        i = self._seen
        for b in data[:self.maxBytes - i]:
            if TLS in alive and not _tlsByte(i, b):
                alive.discard(TLS)
            if DUBBO in alive and b != DUBBO_MAGIC[i]:
                alive.discard(DUBBO)
            if HTTP2 in alive and b != H2_PREFACE[i]:
                alive.discard(HTTP2)
            if HTTP1 in alive:
                if b == 0x20 and self._token and self._token != b"PRI":
                    return self._decide(HTTP1)
                if b in _TCHAR:
                    self._token.append(b)
                else:
                    alive.discard(HTTP1)
            i += 1
            if not alive:
                self._seen = i
                raise DetectionFailed("unknown", "the first %d byte(s) fit no protocol of %s" % (
                    i, ", ".join(sorted(self.protocols))))
            if TLS in alive and i == 3:
                return self._decide(TLS)
            if DUBBO in alive and i == len(DUBBO_MAGIC):
                return self._decide(DUBBO)
            if HTTP2 in alive and i == len(H2_PREFACE):
                return self._decide(HTTP2)
        self._seen = i
        if i >= self.maxBytes:
            raise DetectionFailed("too_many_bytes", "no protocol recognised in the first %d bytes" % (i,))
        return None

    def _decide(self, protocol):
        self.decided = protocol
        return protocol
