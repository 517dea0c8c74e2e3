"""
What every listener Factory shares: knowing its open connections so SIGTERM can drain them.

A protocol built by a L{DrainingFactory} adds itself to ``factory.connections`` when connected, removes itself and
calls ``factory.connectionEnded(self)`` when its connection is lost, and has a ``drain()`` method that closes it
now if idle, else after its in-flight work.
"""

from twisted.internet import defer
from twisted.internet.protocol import Factory

from txmesh.stats import LabelledCounter


class DrainingFactory(Factory):
    """Base of the listener factories: connection tracking and a graceful drain."""

    def __init__(self):
        self.connections = set()
        self.draining = False
        self._drained = []

    def drain(self):
        """Stop keeping connections alive; fires (a Deferred) when every connection has closed."""
        self.draining = True
        for p in list(self.connections):
            p.drain()
        if not self.connections:
            return defer.succeed(None)
        d = defer.Deferred()
        self._drained.append(d)
        return d

    def abortAll(self):
        """Drop every connection at once (after the drain timeout)."""
        for p in list(self.connections):
            p.transport.abortConnection()

    def connectionEnded(self, proto):
        if self.draining and not self.connections:
            waiting, self._drained = self._drained, []
            for d in waiting:
                d.callback(None)


class ListenerStats:
    """Per-listener counters, made once per listener.  ``error(cause)`` counts a local error reply."""

    def __init__(self, stats, listener):
        s = stats.scope(listener=listener)
        self.cx_total = s.counter("downstream_cx", help="Connections accepted")
        self.cx_active = s.gauge("downstream_cx_active", help="Connections open")
        self.cx_protocol_error = s.counter("downstream_cx_protocol_error", help="Connections closed on bad input")
        self.cx_idle_timeout = s.counter("downstream_cx_idle_timeout", help="Idle connections closed")
        self.rq_total = s.counter("downstream_rq", help="Requests received")
        self.rq_active = s.gauge("downstream_rq_active", help="Requests in flight")
        self.rq_timeout = s.counter("downstream_rq_header_timeout", help="Requests whose head came too slowly (408)")
        # indexed by status // 100 (1..5)
        self.rq_class = [None] + [s.counter("downstream_rq_xx", help="Responses by status class",
                                            code_class="%dxx" % c) for c in range(1, 6)]
        self.error = LabelledCounter(s, "downstream_rq_error", "Local error replies by cause", "cause").inc
        self._scope = s
