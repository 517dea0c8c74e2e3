"""
The Dubbo listener's counters: per listener, and per service and method (capped, see L{DubboListenerStats}).
"""

from txmesh.protocols.listener import ListenerStats
from txmesh.stats import LabelledCounter

DEFAULT_MAX_SERVICE_METHODS = 200
_OVERFLOW_KEY = ("_other", "_other")


class _MethodStats:
    """One service/method's counters; ``response(status)`` counts a response by its Dubbo status byte."""

    __slots__ = ("twoWay", "oneWay", "businessExceptions", "timeouts", "response")

    def __init__(self, scope):
        self.twoWay = scope.counter("dubbo_requests", help="Dubbo requests by service, method and kind",
                                    kind="two_way")
        self.oneWay = scope.counter("dubbo_requests", help="Dubbo requests by service, method and kind",
                                    kind="one_way")
        self.businessExceptions = scope.counter("dubbo_business_exceptions",
                                                help="OK responses whose result is an exception")
        self.timeouts = scope.counter("dubbo_timeouts", help="Calls answered with a timeout by the proxy")
        self.response = LabelledCounter(scope, "dubbo_responses", "Dubbo responses by status", "status").inc


class DubboListenerStats(ListenerStats):
    """
    Per-listener Dubbo counters.  Per service/method series are capped at ``maxServiceMethods`` distinct pairs per
    listener; later pairs share one series labelled ``_other`` so a noisy client cannot blow up the metrics.
    ``error(cause)`` counts a local error reply.
    """

    def __init__(self, stats, listener, maxServiceMethods=DEFAULT_MAX_SERVICE_METHODS):
        ListenerStats.__init__(self, stats, listener)
        s = self._scope
        self.maxServiceMethods = maxServiceMethods
        self.heartbeats = s.counter("dubbo_heartbeats", help="Heartbeat requests answered by the listener")
        self.readonly_sent = s.counter("dubbo_readonly_sent",
                                       help="READONLY events sent to consumers when a drain started")
        self.decode_errors = s.counter("dubbo_decode_errors", help="Frames refused as malformed")
        self._methods = {}

    def method(self, service, method):
        key = (service, method)
        m = self._methods.get(key)
        if m is None:
            if len(self._methods) >= self.maxServiceMethods:
                key = _OVERFLOW_KEY
                m = self._methods.get(key)
            if m is None:
                m = self._methods[key] = _MethodStats(self._scope.store.scope(
                    **dict(self._scope.labels), service=key[0], method=key[1]))
        return m
