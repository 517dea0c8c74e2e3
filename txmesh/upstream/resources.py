"""
A cluster's circuit-breaker resources (Envoy's ``ResourceManager``): connections, pending requests, requests and
retries, each a count against a limit with a gauge of what remains.  Taking one over the limit is the caller's
overflow (Envoy's ``UO`` flag).
"""

from zope.interface import implementer

from txmesh.interfaces import IResourceLimit


@implementer(IResourceLimit)
class ResourceLimit:
    """
    One resource: ``count`` in use of ``max``.

    @param remaining: a gauge (txmesh.stats) kept at ``max - count``, or None.
    @param open: a gauge kept at 1 while the limit is reached (Envoy's ``circuit_breakers.*.cx_open`` family), or
        None.
    """

    __slots__ = ("max", "count", "_remaining", "_open")

    def __init__(self, max, remaining=None, open=None):
        self.max = max
        self.count = 0
        self._remaining = remaining
        self._open = open
        if remaining is not None:
            remaining.value = max if max > 0 else 0
        if open is not None:
            open.value = 1 if max <= 0 else 0

    def canCreate(self):
        return self.count < self.max

    def inc(self, step=1):
        """Take one (``step`` -1: give one back, never below 0).  Once or twice per request: the gauges are
        updated here, without another call or max()."""
        count = self.count + step
        if count < 0:
            count = 0
        self.count = count
        remaining = self._remaining
        if remaining is not None:
            left = self.max - count
            remaining.value = left if left > 0 else 0
        if self._open is not None:
            self._open.value = 1 if count >= self.max else 0

    def dec(self):
        """Give one back (never below 0); inc(-1), inline: once per request."""
        count = self.count - 1 if self.count > 0 else 0
        self.count = count
        if self._remaining is not None:
            self._remaining.value = self.max - count if self.max > count else 0
        if self._open is not None:
            self._open.value = 1 if count >= self.max else 0

    def __repr__(self):
        return "<ResourceLimit %d/%d>" % (self.count, self.max)


class ClusterResources:
    """The four resources of one cluster (defaults as Envoy's: 1024, 1024, 1024, 3)."""

    __slots__ = ("connections", "pendingRequests", "requests", "retries")

    def __init__(self, maxConnections=1024, maxPendingRequests=1024, maxRequests=1024, maxRetries=3, scope=None):
        def limit(name, maximum):
            if scope is None:
                return ResourceLimit(maximum)
            return ResourceLimit(
                maximum,
                scope.gauge("circuit_breakers_remaining_" + name, help="What the %s breaker still allows." % name),
                scope.gauge("circuit_breakers_open_" + name, help="1 while the %s breaker is at its limit." % name))

        self.connections = limit("cx", maxConnections)
        self.pendingRequests = limit("rq_pending", maxPendingRequests)
        self.requests = limit("rq", maxRequests)
        self.retries = limit("rq_retry", maxRetries)

    @classmethod
    def fromConfig(cls, config, scope=None):
        """
        The resources of a cluster whose ``circuit_breakers`` built ``config`` (a
        txmesh.config.CircuitBreakersConfig), or Envoy's defaults when it is None.
        """
        if config is None:
            return cls(scope=scope)
        return cls(config.maxConnections, config.maxPendingRequests, config.maxRequests, config.maxRetries, scope)

    def describe(self):
        return {key: {"max": getattr(self, name).max, "count": getattr(self, name).count}
                for key, name in (("connections", "connections"), ("pending_requests", "pendingRequests"),
                                  ("requests", "requests"), ("retries", "retries"))}
