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
        self._update()

    def canCreate(self):
        return self.count < self.max

    def inc(self):
        self.count += 1
        self._update()

    def dec(self):
        if self.count > 0:
            self.count -= 1
        self._update()

    def _update(self):
        if self._remaining is not None:
            self._remaining.value = max(0, self.max - self.count)
        if self._open is not None:
            self._open.value = 1 if self.count >= self.max else 0

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
