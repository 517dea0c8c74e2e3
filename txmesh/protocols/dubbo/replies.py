"""
Dubbo's local replies: the router's failure causes (and the HTTP-like statuses filters choose) as Dubbo response
statuses, and the response frames the listener writes itself.
"""

from txmesh.protocols.dubbo import codec as dc
from txmesh.protocols.dubbo.hessian2 import Hessian2Writer

# the router's failure causes -> Dubbo response status
_CAUSE_STATUS = {
    "no_route": dc.SERVICE_NOT_FOUND,
    "no_cluster": dc.SERVICE_NOT_FOUND,
    "no_healthy_upstream": dc.SERVICE_NOT_FOUND,
    "upstream_connect_failure": dc.SERVICE_NOT_FOUND,
    "upstream_connect_timeout": dc.SERVICE_NOT_FOUND,
    "upstream_tls_handshake_failed": dc.SERVICE_NOT_FOUND,  # a cluster's TLS (issue 14): connect failures,
    "upstream_tls_verify_failed": dc.SERVICE_NOT_FOUND,  # another provider may serve (docs/security.md)
    "upstream_pool_closed": dc.SERVICE_NOT_FOUND,
    "upstream_overflow": dc.SERVER_THREADPOOL_EXHAUSTED_ERROR,
    "local_rate_limited": dc.SERVER_THREADPOOL_EXHAUSTED_ERROR,
    "circuit_open": dc.SERVICE_NOT_FOUND,
    "upstream_rq_overflow": dc.SERVER_THREADPOOL_EXHAUSTED_ERROR,
    "upstream_per_try_timeout": dc.CLIENT_TIMEOUT,
    "upstream_request_timeout": dc.CLIENT_TIMEOUT,
    "upstream_reset_before_response": dc.SERVER_ERROR,
    "upstream_protocol_error": dc.BAD_RESPONSE,
    "request_body_too_large": dc.BAD_REQUEST,
    "downstream_protocol_error": dc.BAD_REQUEST,
}


def dubboStatusFor(httpStatus, cause=None, headers=()):
    """
    The Dubbo status for a local reply: the one a filter named in its ``headers`` (``dc.LOCAL_REPLY_STATUS``), else
    by the router's cause, else by the HTTP-like status a filter chose.
    """
    for name, value in headers:
        if name == dc.LOCAL_REPLY_STATUS and value.isdigit() and int(value) in dc.STATUSES:
            return int(value)
    if cause is not None:
        status = _CAUSE_STATUS.get(cause)
        if status is not None:
            return status
    if 200 <= httpStatus < 300:
        return dc.OK
    if httpStatus in (400, 413, 431):
        return dc.BAD_REQUEST
    if httpStatus in (408, 504):
        return dc.CLIENT_TIMEOUT
    if httpStatus == 429:
        return dc.SERVER_THREADPOOL_EXHAUSTED_ERROR
    if httpStatus in (403, 404, 503):
        return dc.SERVICE_NOT_FOUND
    return dc.SERVER_ERROR


def encodeValueResponse(requestId, value, serializationId=dc.HESSIAN2):
    """An OK response whose result is a string value (a route's direct_response body)."""
    writer = Hessian2Writer()
    writer.writeInt(dc.RESPONSE_VALUE)
    writer.writeString(value)
    body = writer.getvalue()
    return dc.encodeHeader(serializationId, dc.OK, requestId, len(body)) + body
