"""
The per-request side of a route's retry policy (txmesh.routing.RetryPolicy; Envoy's ``RetryStateImpl``): which
failures and answers are retried, the back-off, the retry budget and the ``max_retries`` breaker, and the request
buffered for replay.  The router (txmesh.filters.router) makes one RetryState for a request whose route has a policy
and whose request may be retried at all (L{retryState}), when it first needs one: the first body piece (kept for
replay from there) or the first answer or failure that a retry_on condition might take.  A request whose head is
answered by its first attempt (the usual case) never makes one and costs nothing here.

The rules, as Envoy's where the issue is silent:

- ``connect-failure``: the connect was refused or timed out; ``refused-stream``: HTTP/2 REFUSED_STREAM; ``reset``:
  the connection or stream was reset, the answer could not be decoded, or the per-try timeout passed; ``5xx`` and
  ``gateway-error`` include all of these (as Envoy's), and retry HTTP answers >= 500 or 502/503/504.
- gRPC codes by name, read from the response's grpc-status (trailers-only, or trailers that came before any
  response body); Dubbo statuses by name.
- Non-idempotent HTTP methods (POST, PATCH, CONNECT, LOCK...; RFC 9110 9.2.2) are retried only after a
  connect failure or a refused stream (the application never saw the request), unless ``retry_non_idempotent``.
  Envoy retries them regardless; txmesh is stricter.  gRPC calls and Dubbo two-way calls count as idempotent (as
  gRPC's and Dubbo's own retries do); a Dubbo one-way call is never retried.
- Back-off: full jitter, ``random() * min(max_interval, base_interval * 2**(n-1))`` for the n-th retry; a
  ``Retry-After`` (seconds or an HTTP date) or ``grpc-retry-pushback-ms`` answer replaces it; a negative or
  malformed pushback means no retry (as gRPC).
- Concurrency: with a ``retry_budget``, retries in flight on the cluster stay below ``budget_percent`` of the
  cluster's active and pending requests, and at least ``min_retry_concurrency`` are allowed; without one, the
  cluster's ``max_retries`` breaker (``resources.retries``) bounds them.  Either way ``resources.retries`` counts
  every retry from its decision until its attempt ends.
"""

import email.utils

from txmesh import errors
from txmesh.upstream.lb import LBContext

IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})

RETRY_AFTER = b"retry-after"
GRPC_PUSHBACK = b"grpc-retry-pushback-ms"
NO_RETRY = -1.0  # a pushback that forbids retrying


def parseRetryAfter(value, now):
    """
    ``Retry-After`` (bytes: delay-seconds or an HTTP date, RFC 9110 10.2.3) in seconds from ``now`` (epoch
    seconds), or None if malformed.
    """
    if value.isdigit():
        return float(int(value[:12]))
    try:
        when = email.utils.parsedate_to_datetime(value.decode("latin-1"))
    except (TypeError, ValueError, IndexError):
        return None
    if when is None or when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - now)


def parsePushback(value):
    """``grpc-retry-pushback-ms`` (bytes) in seconds, or NO_RETRY when negative or malformed (gRPC's rule)."""
    if value.isdigit() and len(value) <= 12:
        return int(value) / 1000.0
    return NO_RETRY


def backoff(policy, retry, random):
    """The full-jitter delay before the ``retry``-th retry (1-based)."""
    ceiling = policy.baseInterval * (1 << min(retry - 1, 30))
    if ceiling > policy.maxInterval:
        ceiling = policy.maxInterval
    return random.random() * ceiling


def budgetAllows(policy, resources):
    """
    Whether one more retry may start on a cluster with ``resources`` (txmesh.upstream.resources
    ClusterResources): the retry budget when the policy has one, else the ``max_retries`` breaker.
    """
    retries = resources.retries
    percent = policy.budgetPercent
    if percent is None:
        return retries.canCreate()
    active = resources.requests.count + resources.pendingRequests.count
    return retries.count < max(policy.minRetryConcurrency, int(active * percent / 100.0))


def retryState(policy, request, bufferLimit=None):
    """
    A RetryState for ``request`` (a txmesh.stream.RequestHead) under ``policy``, or None when nothing about it
    can be retried: no retries configured, a Dubbo one-way call, or a request body declared larger than the
    buffer.
    """
    if not policy.numRetries:
        return None
    protocol = request.protocol
    if protocol == "dubbo":
        if request.metadata.get("one_way"):
            return None
        safe = True
    elif protocol == "grpc":
        safe = True
    else:
        safe = policy.retryNonIdempotent or request.method in IDEMPOTENT
    length = request.contentLength
    if length is not None and length > policy.bufferLimit:
        return None
    return RetryState(policy, request, safe)


class RetryState:
    """
    One request's retries: what may be retried, how many were, the hosts tried, and the request events buffered
    for replay (``buffer`` None once the request outgrew ``per_request_buffer_limit``: no retry after that).
    ``live``: the attempts in flight (more than one only while hedging).
    """

    __slots__ = ("policy", "safe", "buffer", "bufferBytes", "retries", "attempted", "timer", "live", "held",
                 "hashKey")

    def __init__(self, policy, request, safe):
        self.policy = policy
        self.safe = safe  # idempotent (or allowed): retried on any retry_on condition, not only before the app
        self.buffer = []
        self.bufferBytes = 0
        self.retries = 0  # retries decided so far
        self.attempted = []  # hosts tried
        self.timer = None  # the back-off's DelayedCall
        self.live = []
        self.held = 0  # retries counted in resources.retries whose attempt has not started
        self.hashKey = None  # the route's hash key for the request, so a retry is placed by it too

    def buffered(self, event, size):
        """Keep a request event for replay; False (and no more buffering) once past the limit."""
        buf = self.buffer
        if buf is None:
            return False
        self.bufferBytes += size
        if self.bufferBytes > self.policy.bufferLimit:
            self.buffer = None
            return False
        buf.append(event)
        return True

    def errorRetriable(self, exc):
        """Whether a failure before any answer (a txmesh.errors.UpstreamError) is retried."""
        p = self.policy
        if isinstance(exc, errors.ConnectFailure):
            return p.onConnectFailure or p.onReset or p.on5xx or p.onGatewayError
        if isinstance(exc, errors.UpstreamRefusedStream):
            return p.onRefusedStream or p.onReset or p.on5xx or p.onGatewayError
        if not self.safe:
            return False
        if isinstance(exc, (errors.StreamIdleTimeout, errors.MaxStreamDuration)):
            return False
        if isinstance(exc, (errors.UpstreamReset, errors.BadUpstreamResponse, errors.UpstreamTimeout)):
            return p.onReset or p.on5xx or p.onGatewayError
        return False

    def statusRetriable(self, status, dubbo):
        """Whether an answer with ``status`` (HTTP, or a Dubbo response status when ``dubbo``) is retried."""
        if not self.safe:
            return False
        p = self.policy
        if dubbo:
            return status in p.dubboStatuses
        if status >= 500:
            if p.on5xx or (p.onGatewayError and status in (502, 503, 504)):
                return True
        return status in p.retriableStatusCodes

    def grpcRetriable(self, code):
        return self.safe and code in self.policy.grpcCodes

    def context(self):
        """
        The LBContext for picking the next host (previous hosts avoided while another healthy one exists), with
        the request's hash key (``hashKey``, set by the router when the route has hash policies).
        """
        if self.policy.previousHosts and self.attempted:
            return LBContext(hashKey=self.hashKey, attempted=frozenset(self.attempted))
        if self.hashKey is not None:
            return LBContext(hashKey=self.hashKey)
        return None
