"""
What one attempt to an upstream host came to, in the terms outlier detection, retries and error-rate breakers
share (Envoy's ``Upstream::Outlier::Result``), and the table that maps each protocol's status onto them.

Two origins (Envoy's ``split_external_local_origin_errors``): *local-origin* outcomes are what txmesh itself saw on
the connection (a refused or timed-out connect, a TLS cluster's failed handshake or upstream verification, a reset,
no answer in time); *external-origin* outcomes are what the
upstream answered.  An answer is a failure of the *transport* only when the upstream says it could not serve:

| protocol | success | gateway failure | other failure |
|---|---|---|---|
| HTTP | < 500 | 502, 503, 504 | other 5xx |
| gRPC (grpc-status) | everything else (OK, and the caller's errors: CANCELLED, INVALID_ARGUMENT, NOT_FOUND, ALREADY_EXISTS, PERMISSION_DENIED, RESOURCE_EXHAUSTED, FAILED_PRECONDITION, ABORTED, OUT_OF_RANGE, UNAUTHENTICATED) | DEADLINE_EXCEEDED (4), UNAVAILABLE (14) | UNKNOWN (2), UNIMPLEMENTED (12), INTERNAL (13), DATA_LOSS (15) |

A grpc-status counts as the HTTP status Envoy maps it to for outlier detection (``Grpc::Utility::grpcToHttpStatus``:
DEADLINE_EXCEEDED 504, UNAVAILABLE 503, UNIMPLEMENTED 501, UNKNOWN/INTERNAL/DATA_LOSS 500, RESOURCE_EXHAUSTED 429).
| Dubbo (response status) | OK (20) — a business exception travels as OK with an exception result, and is a success of the transport; BAD_REQUEST (40), CLIENT_ERROR (90) | SERVICE_NOT_FOUND (60), SERVER_THREADPOOL_EXHAUSTED_ERROR (100) | CLIENT_TIMEOUT (30), SERVER_TIMEOUT (31), BAD_RESPONSE (50), SERVICE_ERROR (70), SERVER_ERROR (80) |
"""

import enum


class Outcome(enum.IntEnum):
    SUCCESS = 0  # the upstream answered and the answer is not a transport failure
    EXT_ORIGIN_FAILURE = 1  # the upstream answered with a failure that is not a gateway failure (500, INTERNAL, SERVER_ERROR)
    GATEWAY_FAILURE = 2  # the upstream answered that it could not serve (502/503/504, UNAVAILABLE, DEADLINE_EXCEEDED, SERVICE_NOT_FOUND)
    LOCAL_ORIGIN_CONNECT_FAILED = 3  # connect refused or timed out
    LOCAL_ORIGIN_TIMEOUT = 4  # no (whole) answer within the time bound
    LOCAL_ORIGIN_RESET = 5  # the connection or stream was reset, or the answer could not be decoded
    LOCAL_ORIGIN_CONNECT_SUCCESS = 6  # a connection was made (clears consecutive local-origin failures)

    @property
    def isFailure(self):
        return self not in (Outcome.SUCCESS, Outcome.LOCAL_ORIGIN_CONNECT_SUCCESS)

    @property
    def isLocalOrigin(self):
        return self >= Outcome.LOCAL_ORIGIN_CONNECT_FAILED

    @property
    def isGateway(self):
        """Counts toward consecutive gateway failures (Envoy counts local-origin failures as gateway ones too
        when origins are not split)."""
        return self is Outcome.GATEWAY_FAILURE


_SUCCESS = Outcome.SUCCESS
_EXT = Outcome.EXT_ORIGIN_FAILURE
_GW = Outcome.GATEWAY_FAILURE


HTTP_FAILURE_MIN = 500  # an HTTP status from this one up is a failure of the transport, below it a success


def classifyHTTP(status):
    """The outcome of an HTTP response status (int)."""
    if status < HTTP_FAILURE_MIN:
        return _SUCCESS
    if status in (502, 503, 504):
        return _GW
    return _EXT


# grpc-status code -> outcome; codes absent here are successes of the transport
_GRPC = {2: _EXT, 4: _GW, 12: _EXT, 13: _EXT, 15: _EXT, 14: _GW}


def classifyGRPC(code):
    """The outcome of a grpc-status (int)."""
    return _GRPC.get(code, _SUCCESS)


# Dubbo response status -> outcome (txmesh.protocols.dubbo.codec's constants, spelled as numbers: this layer does
# not import the protocol packages)
_DUBBO = {20: _SUCCESS, 40: _SUCCESS, 90: _SUCCESS, 60: _GW, 100: _GW,
          30: _EXT, 31: _EXT, 50: _EXT, 70: _EXT, 80: _EXT}


# The tables as sets, for a per-request "did it fail?" with no Outcome made (``classifyGRPC(code).isFailure`` is
# ``code in GRPC_FAILURE_CODES``, ``classifyDubbo(status).isFailure`` is ``status not in DUBBO_SUCCESS_STATUSES``,
# ``classifyHTTP(status).isFailure`` is ``status >= HTTP_FAILURE_MIN``)
GRPC_FAILURE_CODES = frozenset(code for code, outcome in _GRPC.items() if outcome.isFailure)
DUBBO_SUCCESS_STATUSES = frozenset(status for status, outcome in _DUBBO.items() if not outcome.isFailure)


def classifyDubbo(status):
    """The outcome of a Dubbo response status (int); an unknown status is a failure."""
    return _DUBBO.get(status, _EXT)


def classifyError(exc):
    """
    The outcome of an upstream failure the router saw (a txmesh.errors.UpstreamError), or None when the failure
    says nothing about the host (an overflow, a drained pool, a missing route or cluster).
    """
    from txmesh import errors  # the bottom layer: imported here only to keep this module's import cheap

    if isinstance(exc, errors.ConnectFailure):  # a TLS cluster's handshake or verification failure too
        return Outcome.LOCAL_ORIGIN_CONNECT_FAILED
    if isinstance(exc, (errors.StreamIdleTimeout, errors.MaxStreamDuration)):
        return None  # the stream's own bounds, not the host's slowness
    if isinstance(exc, errors.UpstreamTimeout):
        return Outcome.LOCAL_ORIGIN_TIMEOUT
    if isinstance(exc, (errors.UpstreamReset, errors.BadUpstreamResponse)):
        return Outcome.LOCAL_ORIGIN_RESET
    return None
