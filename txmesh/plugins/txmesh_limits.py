"""
The built-in limits (issue 11 parts 4 and 7), found by getPlugins: the ``local_rate_limit`` and
``error_rate_breaker`` stream filters and the ``connection_rate_limit`` network filter.
"""

from txmesh.filters.connection_rate_limit import ConnectionRateLimitFactory
from txmesh.filters.error_rate_breaker import ErrorRateBreakerFactory
from txmesh.filters.local_rate_limit import LocalRateLimitFactory

localRateLimit = LocalRateLimitFactory()
connectionRateLimit = ConnectionRateLimitFactory()
errorRateBreaker = ErrorRateBreakerFactory()
