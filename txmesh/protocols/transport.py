"""
Coalescing the writes one event makes, per connection.

The transport sends: txmesh's own TCP transport (L{txmesh.tcp}, used by the txmesh reactor) writes at once when
nothing is buffered, so a write costs one ``send()`` and no reactor round trip.  Sending at once would turn a
response head and its body, written by two calls while handling one upstream read, into two segments.  So writes
made while a L{WriteScope} is entered (a protocol enters it around each ``dataReceived``) are held per connection
and written, one ``transport.write`` each, later.  The scope is shared by every protocol of one service (the
service makes it), because a read on one connection writes to another.

"Later" is the end of the reactor turn (a ``callLater(0)``, run before the next poll), not the end of each read:
measured on a 2-core VM, sending inside each read woke the peers once per message, and the wake-ups cost more CPU
than they saved; sending once per turn keeps Twisted's batching (docs/performance.md, issue 10, measured again on
txmesh's transport).  Without a clock (unit tests) the outermost exit sends at once.
"""

from twisted.internet import tcp
from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer



class WriteScope:
    """
    Holds the writes made while it is entered; after the outermost ``exit`` they are sent at the end of the reactor
    turn (``clock.callLater(0)``), or at once without a clock.
    """

    __slots__ = ("depth", "dirty", "_clock", "_call")

    def __init__(self, clock=None):
        self.depth = 0
        self.dirty = []
        self._clock = clock
        self._call = None

    def enter(self):
        self.depth += 1

    def exit(self):
        self.depth -= 1
        if not self.depth and self.dirty:
            self.outermostExit()

    def outermostExit(self):
        clock = self._clock
        if clock is None:
            self.flush()
        elif self._call is None:
            self._call = clock.callLater(0, self._turnEnded)

    def _turnEnded(self):
        self._call = None
        self.flush()

    def flush(self):
        dirty = self.dirty
        while dirty:
            self.dirty = []
            for writer in dirty:
                writer.flush()
            dirty = self.dirty


def callInScope(scope, f, arg):
    """``f(arg)`` with ``scope`` entered (a protocol's ``dataReceived`` body); ``scope`` may be None."""
    if scope is None:
        return f(arg)
    scope.depth += 1
    try:
        return f(arg)
    finally:
        scope.depth -= 1
        if not scope.depth and scope.dirty:
            scope.outermostExit()


class Writer:
    """
    The write side of one connection.  All of a protocol's writes go through it (never a mix with
    ``transport.write``, which would reorder them).  ``flush`` hands what is held to ``transport.write`` in one
    call; the transport decides when the bytes leave (at once on L{txmesh.tcp}'s, on the next turn on Twisted's).
    """

    __slots__ = ("transport", "scope", "_pending")

    def __init__(self, transport, scope=None):
        self.transport = transport
        self.scope = scope
        self._pending = []
        if isinstance(transport, tcp.Connection):
            try:
                # as Envoy and nginx: a proxy's small writes (a trailer, a WINDOW_UPDATE) must not wait for the
                # peer's delayed ACK (Nagle's algorithm), which stalled 64 KiB gRPC calls ~40 ms each
                transport.setTcpNoDelay(True)
            except OSError:
                pass  # not TCP (a UNIX socket)

    def write(self, data):
        scope = self.scope
        if scope is not None and scope.depth:
            if not self._pending:
                scope.dirty.append(self)
            self._pending.append(data)
        elif self._pending:
            self._pending.append(data)
            self.flush()
        else:
            self.transport.write(data)

    def flush(self):
        pending = self._pending
        if pending:
            self._pending = []
            self.transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def discard(self):
        """Forget what is held (the connection is being aborted)."""
        self._pending = []


class TransportReadPausing:
    """
    ``pauseReading``/``resumeReading`` of a client protocol (IUpstreamStream) on its whole transport, once each way:
    the class keeps ``_readPaused`` (False at first) and has a ``transport``.
    """

    _readPaused = False

    def pauseReading(self):
        if not self._readPaused:
            self._readPaused = True
            self.transport.pauseProducing()

    def resumeReading(self):
        if self._readPaused:
            self._readPaused = False
            self.transport.resumeProducing()


@implementer(IPushProducer)
class WriteWatcher:
    """Registered on a transport as a streaming producer: the transport says when its write buffer is full."""

    __slots__ = ("onPause", "onResume")

    def __init__(self, onPause, onResume):
        self.onPause = onPause
        self.onResume = onResume

    def pauseProducing(self):
        self.onPause()

    def resumeProducing(self):
        self.onResume()

    def stopProducing(self):
        pass
