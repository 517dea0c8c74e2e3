"""
Writing to a connection without a reactor round trip, and coalescing the writes one event makes.

Twisted's ``transport.write`` only appends to a buffer and asks the reactor to watch the socket for writability;
the bytes leave on the next reactor iteration, after two ``epoll_ctl`` calls and a write event dispatched through
Python.  A proxy writes on every request in both directions, so that round trip costs more than the HTTP work
(see docs/performance.md).  asyncio's transports do what L{Writer} does: when nothing is buffered, ``send()`` at
once and hand Twisted only what the kernel did not take, so ordering, backpressure (the transport's producer
pausing) and error handling stay Twisted's.

Sending at once would turn a response head and its body, written by two calls while handling one upstream read,
into two segments.  So writes made while a L{WriteScope} is entered (a protocol enters it around each
``dataReceived``) are held per connection and sent, one ``send()`` each, later.  The scope is shared by every
protocol of one service (the service makes it), because a read on one connection writes to another.

"Later" is the end of the reactor turn (a ``callLater(0)``, run before the next poll), not the end of each read:
measured on a 2-core VM, sending inside each read woke the peers once per message, and the wake-ups cost more CPU
than the ``epoll_ctl`` calls saved; sending once per turn keeps Twisted's batching and drops its round trip.
Without a clock (unit tests) the outermost exit sends at once.
"""

from twisted.internet import tcp
from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

from txmesh.twisted_private import tcpTransportIdle


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
    ``transport.write``, which would reorder them).

    On a plain TCP transport with an empty buffer, ``flush`` sends with the socket at once; on anything else
    (TLS, an in-memory test transport, a transport already holding data or closing) it uses ``transport.write``.
    """

    __slots__ = ("transport", "scope", "_pending", "_socket")

    def __init__(self, transport, scope=None, socket=None):
        self.transport = transport
        self.scope = scope
        self._pending = []
        if socket is None and isinstance(transport, tcp.Connection):
            socket = transport.socket
            try:
                # as Envoy and nginx: a proxy's small writes (a trailer, a WINDOW_UPDATE) must not wait for the
                # peer's delayed ACK (Nagle's algorithm), which stalled 64 KiB gRPC calls ~40 ms each
                transport.setTcpNoDelay(True)
            except OSError:
                pass  # not TCP (a UNIX socket)
        self._socket = socket

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
            self._send(data)

    def flush(self):
        pending = self._pending
        if pending:
            self._pending = []
            self._send(pending[0] if len(pending) == 1 else b"".join(pending))

    def discard(self):
        """Forget what is held (the connection is being aborted)."""
        self._pending = []

    def _send(self, data):
        t = self.transport
        sock = self._socket
        if sock is None or not tcpTransportIdle(t):
            t.write(data)
            return
        try:
            sent = sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            # let Twisted meet the error on its own write and report the connection lost the usual way
            t.write(data)
            return
        if sent < len(data):
            t.write(data[sent:])


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
