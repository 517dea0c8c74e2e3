"""The Writer: one transport.write per connection per scope exit, in order, held writes flushed or discarded."""

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from txmesh.protocols.transport import Writer, WriteScope, callInScope


class RecordingTransport(StringTransport):
    """Records each transport.write call (the transport sends each at once)."""

    def __init__(self, onWrite=None):
        StringTransport.__init__(self)
        self.writes = []
        self.onWrite = onWrite

    def write(self, data):
        if self.onWrite is not None:
            self.onWrite()
        self.writes.append(data)
        StringTransport.write(self, data)


def make(scope=None, onWrite=None):
    t = RecordingTransport(onWrite)
    return Writer(t, scope), t


def test_outside_a_scope_each_write_goes_to_the_transport_at_once():
    w, t = make()
    w.write(b"abc")
    w.write(b"def")
    assert t.writes == [b"abc", b"def"]


def test_scope_coalesces_writes_into_one_write_per_connection():
    scope = WriteScope()
    a, ta = make(scope)
    b, tb = make(scope)
    scope.enter()
    a.write(b"HTTP/1.1 200 OK\r\n\r\n")
    b.write(b"GET / HTTP/1.1\r\n\r\n")
    a.write(b"body")
    scope.enter()
    a.write(b"!")
    scope.exit()
    assert ta.writes == [] and tb.writes == []  # inner exit does not flush
    scope.exit()
    assert ta.writes == [b"HTTP/1.1 200 OK\r\n\r\nbody!"]
    assert tb.writes == [b"GET / HTTP/1.1\r\n\r\n"]
    a.write(b"next")  # outside the scope: at once
    assert ta.writes[-1] == b"next"


def test_flush_and_discard():
    scope = WriteScope()
    w, t = make(scope)
    scope.enter()
    w.write(b"a")
    w.flush()  # before a loseConnection
    assert t.writes == [b"a"]
    w.write(b"b")
    w.discard()  # before an abortConnection
    scope.exit()
    assert t.writes == [b"a"]


def test_writer_flushed_by_another_writers_flush_is_sent_too():
    """A flush that writes to another connection (a callback during a write) is sent in the same exit."""
    scope = WriteScope()
    b, tb = make(scope)

    def chain():
        scope.depth += 1
        b.write(b"chained")
        scope.depth -= 1

    a, ta = make(scope, onWrite=chain)
    scope.enter()
    a.write(b"x")
    scope.exit()
    assert ta.writes == [b"x"]
    assert tb.writes == [b"chained"]


def test_held_write_keeps_order_when_written_outside_the_scope():
    scope = WriteScope()
    w, t = make(scope)
    scope.enter()
    w.write(b"first ")
    scope.depth -= 1  # a write from outside any read while something is still held
    w.write(b"second")
    scope.depth += 1
    scope.exit()
    assert t.value() == b"first second"


def test_with_a_clock_the_scope_sends_at_the_end_of_the_reactor_turn():
    """Several reads in one turn: their writes leave together, once, before the next poll (callLater(0))."""
    clock = Clock()
    scope = WriteScope(clock)
    a, ta = make(scope)
    callInScope(scope, a.write, b"first ")
    callInScope(scope, a.write, b"second")
    assert ta.writes == []
    assert len(clock.getDelayedCalls()) == 1  # one call per turn, not per read
    clock.advance(0)
    assert ta.writes == [b"first second"]
    assert clock.getDelayedCalls() == []
    a.write(b"!")  # outside a read (a timer): at once
    assert ta.writes[-1] == b"!"
