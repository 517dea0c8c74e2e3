"""
Typed exceptions.  Failures travel as these on Deferreds; the router maps them to a status and a response flag
(Envoy's response flags, e.g. UF = upstream connect failure), and the listener's codec turns the status into a
protocol-native reply.
"""


class TxmeshError(Exception):
    """Base of txmesh's own errors."""


class ConfigError(TxmeshError):
    """
    A configuration file is invalid.  ``str()`` is one line: ``file:line: key.path: reason``.
    """

    def __init__(self, reason, path="", filename=None, line=None):
        self.reason = reason
        self.path = path
        self.filename = filename
        self.line = line
        super().__init__(str(self))

    def __str__(self):
        where = ""
        if self.filename:
            where = self.filename + (":%d" % self.line if self.line else "") + ": "
        elif self.line:
            where = "line %d: " % self.line
        return "%s%s%s" % (where, (self.path + ": ") if self.path else "", self.reason)


class CodecError(TxmeshError):
    """Malformed input on the wire.  ``status`` is the protocol-native status to reply with, if any."""

    status = None

    def __init__(self, reason, status=None):
        self.reason = reason
        if status is not None:
            self.status = status
        super().__init__(reason)


class HTTPCodecError(CodecError):
    """Malformed or over-limit HTTP/1.1 message; status is the HTTP status to answer (400, 413, 414, 431...)."""

    status = 400


class UpstreamError(TxmeshError):
    """
    Base for a failure reaching or talking to an upstream.  ``flag`` is the Envoy-style response flag,
    ``status`` the HTTP status the router answers with, ``cause`` the x-txmesh-error header value.
    """

    flag = "UF"
    status = 503
    cause = "upstream_error"


class NoRoute(UpstreamError):
    flag = "NR"
    status = 404
    cause = "no_route"


class NoClusterFound(UpstreamError):
    flag = "NC"
    status = 503
    cause = "no_cluster"


class NoHealthyUpstream(UpstreamError):
    flag = "UH"
    status = 503
    cause = "no_healthy_upstream"


class ConnectFailure(UpstreamError):
    flag = "UF"
    status = 503
    cause = "upstream_connect_failure"


class ConnectTimeout(ConnectFailure):
    cause = "upstream_connect_timeout"


class UpstreamTLSHandshakeError(ConnectFailure):
    """
    A cluster's TLS handshake with the upstream failed (no common version or cipher, a plain-text peer, the peer
    closed or refused our client certificate): a connect failure, nothing was sent (issue 14, txmesh.tls.client).
    """

    cause = "upstream_tls_handshake_failed"


class UpstreamTLSVerifyError(UpstreamTLSHandshakeError):
    """
    The upstream's certificate failed verification: its chain (untrusted CA, expired, not yet valid) or its identity
    (no SAN the cluster's ``match_subject_alt_names`` accepts, checked with service_identity).
    """

    cause = "upstream_tls_verify_failed"


class Overflow(UpstreamError):
    """The pool's pending queue (or a circuit-breaker limit) is full."""

    flag = "UO"
    status = 503
    cause = "upstream_overflow"


class UpstreamReset(UpstreamError):
    """The upstream connection ended before a complete response."""

    flag = "UC"
    status = 503
    cause = "upstream_reset_before_response"


class UpstreamRemoteReset(UpstreamReset):
    """The upstream reset the stream (HTTP/2 RST_STREAM) while the connection stays up."""

    flag = "UR"


class UpstreamRefusedStream(UpstreamRemoteReset):
    """The upstream refused the stream (HTTP/2 REFUSED_STREAM): it did no work on it, so a retry is safe."""


class RequestsOverflow(Overflow):
    """The cluster's ``max_requests`` circuit breaker is at its limit (Envoy answers 503 with flag UO)."""

    cause = "upstream_rq_overflow"


class BadUpstreamResponse(UpstreamError):
    """The upstream's response was malformed (bad framing); its connection is not reused."""

    flag = "UPE"
    status = 502
    cause = "upstream_protocol_error"


class UpstreamTimeout(UpstreamError):
    """
    The route timeout passed before the whole response arrived (it counts from the end of the request, as
    Envoy's), or the client's deadline did (``grpc-timeout``, Dubbo's ``timeout`` attachment, a trusted
    ``x-txmesh-expected-rq-timeout-ms``; counted from the request's arrival).  Before the response head this is a
    local reply; after it, the stream is cut (gRPC: trailers with DEADLINE_EXCEEDED).
    """

    flag = "UT"
    status = 504
    cause = "upstream_request_timeout"


class UpstreamPerTryTimeout(UpstreamTimeout):
    """One attempt's ``per_try_timeout`` passed before its response head, and no retry followed."""

    cause = "upstream_per_try_timeout"


class MaxStreamDuration(UpstreamTimeout):
    """The route's ``max_stream_duration`` passed since the request arrived (Envoy's UMSDR)."""

    flag = "UMSDR"
    cause = "max_stream_duration_reached"


class StreamIdleTimeout(UpstreamTimeout):
    """Nothing moved on the stream, either way, for the listener's ``stream_idle_timeout`` (Envoy's SI)."""

    flag = "SI"
    status = 408
    cause = "stream_idle_timeout"


class PoolClosed(UpstreamError):
    """The pool was drained: its host left the cluster, or txmesh is shutting down."""

    flag = "UF"
    status = 503
    cause = "upstream_pool_closed"


class DownstreamReset(TxmeshError):
    """The downstream peer went away before the stream completed."""


class DetectionFailed(CodecError):
    """
    The first bytes of a connection on a ``protocol: auto`` listener fit no protocol it hands connections to
    (``why``: ``unknown``, ``too_many_bytes``); the connection is closed and counted by ``why``.
    """

    def __init__(self, why, reason):
        self.why = why
        super().__init__(reason)
