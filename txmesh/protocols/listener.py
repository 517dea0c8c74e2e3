"""
What every listener Factory shares: knowing its open connections so SIGTERM can drain them.

A protocol built by a L{DrainingFactory} adds itself to ``factory.connections`` when connected, removes itself and
calls ``factory.connectionEnded(self)`` when its connection is lost, and has a ``drain()`` method that closes it
now if idle, else after its in-flight work.
"""

from twisted.internet import defer
from twisted.internet.protocol import Factory


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
