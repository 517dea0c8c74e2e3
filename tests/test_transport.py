"""The write path: direct send() on an idle TCP transport, Twisted's buffer otherwise, coalescing in a scope."""

import errno

import pytest
from twisted.internet.testing import StringTransport

from txmesh.protocols.transport import Writer, WriteScope


class FakeSocket:
    def __init__(self, accept=None, error=None):
        self.sent = []
        self.accept = accept  # bytes taken per send (None: all)
        self.error = error

    def send(self, data):
        if self.error is not None:
            raise self.error
        n = len(data) if self.accept is None else min(self.accept, len(data))
        self.sent.append(bytes(data[:n]))
        return n


class FakeTCPTransport(StringTransport):
    """The attributes of twisted.internet.tcp.Connection the writer reads; write() is Twisted's buffered path."""

    def __init__(self):
        StringTransport.__init__(self)
        self._tempDataLen = 0
        self.dataBuffer = b""
        self.connected = True
        self.disconnecting = False
        self._writeDisconnected = False
        self.TLS = False
        self._aborting = False

    def write(self, data):
        StringTransport.write(self, data)
        self._tempDataLen += len(data)


def make(accept=None, error=None, scope=None):
    t = FakeTCPTransport()
    sock = FakeSocket(accept, error)
    return Writer(t, scope, socket=sock), t, sock


def test_idle_transport_sends_at_once():
    w, t, sock = make()
    w.write(b"abc")
    assert sock.sent == [b"abc"]
    assert t.value() == b""


def test_kernel_takes_part_twisted_buffers_the_rest_and_order_holds():
    w, t, sock = make(accept=2)
    w.write(b"hello")
    assert sock.sent == [b"he"]
    assert t.value() == b"llo"
    # Twisted now holds bytes: later writes queue behind them, never jump ahead
    w.write(b"world")
    assert sock.sent == [b"he"]
    assert t.value() == b"lloworld"


@pytest.mark.parametrize("exc", [BlockingIOError(), InterruptedError()])
def test_would_block_goes_to_twisted_buffer(exc):
    w, t, sock = make(error=exc)
    w.write(b"abc")
    assert t.value() == b"abc"


def test_socket_error_is_left_to_twisted():
    w, t, sock = make(error=OSError(errno.ECONNRESET, "reset"))
    w.write(b"abc")
    assert t.value() == b"abc"  # Twisted's doWrite meets the error and reports connectionLost


@pytest.mark.parametrize("attr,value", [("disconnecting", True), ("connected", False), ("TLS", True),
                                        ("_writeDisconnected", True), ("dataBuffer", b"x"),
                                        ("_aborting", True)])
def test_non_idle_or_closing_transport_uses_twisted(attr, value):
    w, t, sock = make()
    setattr(t, attr, value)
    w.write(b"abc")
    assert sock.sent == []
    assert t.value() == b"abc"


def test_scope_coalesces_writes_into_one_send_per_connection():
    scope = WriteScope()
    a, ta, sa = make(scope=scope)
    b, tb, sb = make(scope=scope)
    scope.enter()
    a.write(b"HTTP/1.1 200 OK\r\n\r\n")
    b.write(b"GET / HTTP/1.1\r\n\r\n")
    a.write(b"body")
    scope.enter()
    a.write(b"!")
    scope.exit()
    assert sa.sent == [] and sb.sent == []  # inner exit does not flush
    scope.exit()
    assert sa.sent == [b"HTTP/1.1 200 OK\r\n\r\nbody!"]
    assert sb.sent == [b"GET / HTTP/1.1\r\n\r\n"]
    a.write(b"next")  # outside the scope: at once
    assert sa.sent[-1] == b"next"


def test_flush_and_discard():
    scope = WriteScope()
    w, t, sock = make(scope=scope)
    scope.enter()
    w.write(b"a")
    w.flush()  # before a loseConnection
    assert sock.sent == [b"a"]
    w.write(b"b")
    w.discard()  # before an abortConnection
    scope.exit()
    assert sock.sent == [b"a"]


def test_writer_flushed_by_another_writers_flush_is_sent_too():
    """A flush that writes to another connection (a callback during send) is sent in the same exit."""
    scope = WriteScope()
    a, ta, sa = make(scope=scope)
    b, tb, sb = make(scope=scope)

    class Chaining(FakeSocket):
        def send(self, data):
            scope.depth += 1
            b.write(b"chained")
            scope.depth -= 1
            return FakeSocket.send(self, data)

    a._socket = Chaining()
    scope.enter()
    a.write(b"x")
    scope.exit()
    assert sb.sent == [b"chained"]


def test_in_memory_transport_uses_write():
    t = StringTransport()
    w = Writer(t, None)
    w.write(b"abc")
    assert t.value() == b"abc"


def test_with_a_clock_the_scope_sends_at_the_end_of_the_reactor_turn():
    """Several reads in one turn: their writes leave together, once, before the next poll (callLater(0))."""
    from twisted.internet.task import Clock
    clock = Clock()
    scope = WriteScope(clock)
    a, ta, sa = make(scope=scope)
    from txmesh.protocols.transport import callInScope
    callInScope(scope, a.write, b"first ")
    callInScope(scope, a.write, b"second")
    assert sa.sent == []
    assert len(clock.getDelayedCalls()) == 1  # one call per turn, not per read
    clock.advance(0)
    assert sa.sent == [b"first second"]
    assert clock.getDelayedCalls() == []
    a.write(b"!")  # outside a read (a timer): at once
    assert sa.sent[-1] == b"!"
