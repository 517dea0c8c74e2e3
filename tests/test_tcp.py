"""
txmesh's TCP transport (txmesh/tcp.py) on real loopback sockets, driven without a reactor loop: a MemoryReactorClock
records whether the transport asked to be watched for writability, and the tests call ``doWrite`` as the reactor
would.  The peer socket is non-blocking; every loop is bounded.
"""

import select
import socket

import pytest
from twisted.internet import error, main
from twisted.internet.interfaces import IHalfCloseableProtocol, IPullProducer, IPushProducer
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.python import failure
from zope.interface import implementer

from txmesh import tcp


class Recorder(Protocol):
    def __init__(self):
        self.received = []
        self.lost = []

    def dataReceived(self, data):
        self.received.append(data)

    def connectionLost(self, reason):
        self.lost.append(reason)


@implementer(IHalfCloseableProtocol)
class HalfCloseRecorder(Recorder):
    def __init__(self):
        Recorder.__init__(self)
        self.writeLost = 0

    def readConnectionLost(self):
        pass

    def writeConnectionLost(self):
        self.writeLost += 1


class Pair:
    """A txmesh Server transport on one end of a loopback TCP connection; ``peer`` is the other end."""

    def __init__(self, proto=None, sndbuf=None):
        with socket.create_server(("127.0.0.1", 0)) as listening:
            self.peer = socket.create_connection(listening.getsockname(), timeout=5)
            ours, _ = listening.accept()
        if sndbuf:
            ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        ours.setblocking(False)
        self.peer.setblocking(False)
        self.reactor = MemoryReactorClock()
        self.proto = proto if proto is not None else Recorder()
        self.conn = tcp.Server(ours, self.proto, ("127.0.0.1", 1), None, 1, self.reactor)
        self.proto.makeConnection(self.conn)
        self.sock = ours

    @property
    def watched(self):
        """Whether the transport asked the reactor for write events (Twisted's write path always does)."""
        return self.conn in self.reactor.getWriters()

    def read(self):
        """Everything the peer can read now (non-blocking); (bytes, True) once it read the end of the stream."""
        out = []
        while True:
            try:
                chunk = self.peer.recv(1 << 20)
            except BlockingIOError:
                break
            if not chunk:
                out.append(None)
                break
            out.append(chunk)
        eof = out and out[-1] is None
        data = b"".join(c for c in out if c is not None)
        return (data, True) if eof else data

    def drain(self, rounds=10000):
        """
        Play the reactor: while watched, wait (bounded) for the socket to be writable and call doWrite, the peer
        reading everything; returns (bytes read, doWrite's reason).
        """
        got = []

        def joined():
            return b"".join(g if isinstance(g, bytes) else g[0] for g in got)

        for _ in range(rounds):
            got.append(self.read())
            if not self.watched:
                return joined(), None
            select.select([], [self.sock], [], 2)  # the peer's window update may follow a delayed ACK
            why = self.conn.doWrite()
            if why:
                got.append(self.read())
                return joined(), why
        raise AssertionError("did not drain in %d rounds" % rounds)

    def close(self):
        self.sock.close()
        self.peer.close()


@pytest.fixture
def pair():
    p = Pair()
    yield p
    p.close()


@pytest.fixture
def small():
    """Small kernel buffers, so a few hundred KiB cannot be sent at once."""
    p = Pair(sndbuf=4096)
    yield p
    p.close()


def test_write_sends_at_once_without_asking_the_reactor(pair):
    pair.conn.write(b"hello")
    pair.conn.writeSequence([b" ", b"world"])
    assert pair.read() == b"hello world"
    assert not pair.watched


def test_partial_send_buffers_the_rest_and_later_writes_queue_behind(small):
    big = bytes(range(256)) * 4096  # 1 MiB: the kernel takes part of it
    small.conn.write(big)
    assert small.watched
    assert small.conn.heldLen > 0
    small.conn.write(b"tail")  # must not overtake what is held
    got, why = small.drain()
    assert why is None
    assert got == big + b"tail"
    assert not small.watched
    small.conn.write(b"again")  # empty buffer again: at once
    assert small.read() == b"again" and not small.watched


def test_would_block_holds_everything(small):
    sent = 0
    chunk = b"x" * 65536
    while not small.conn.held:  # fill the kernel buffers until a send would block
        small.conn.write(chunk)
        sent += len(chunk)
        assert sent < 1 << 26
    small.conn.write(b"y")
    got, _ = small.drain()
    assert got == b"x" * sent + b"y"


@implementer(IPushProducer)
class PushProducer:
    def __init__(self):
        self.events = []

    def pauseProducing(self):
        self.events.append("pause")

    def resumeProducing(self):
        self.events.append("resume")

    def stopProducing(self):
        self.events.append("stop")


def test_streaming_producer_paused_over_the_high_water_mark_and_resumed_once_drained(small):
    producer = PushProducer()
    small.conn.registerProducer(producer, True)
    small.conn.write(b"a" * (small.conn.bufferSize // 2))
    assert producer.events == []  # under the high-water mark, held or not
    small.conn.write(b"b" * (4 * small.conn.bufferSize))
    assert producer.events and producer.events[-1] == "pause"
    got, _ = small.drain()
    assert len(got) == small.conn.bufferSize // 2 + 4 * small.conn.bufferSize
    assert producer.events[-1] == "resume"
    small.conn.unregisterProducer()


def test_streaming_producer_not_paused_when_the_kernel_takes_it_all(pair):
    producer = PushProducer()
    pair.conn.registerProducer(producer, True)
    pair.conn.write(b"a" * 1000)
    assert producer.events == []
    pair.conn.unregisterProducer()


@implementer(IPullProducer)
class PullProducer:
    def __init__(self, consumer, chunks):
        self.consumer = consumer
        self.chunks = list(chunks)
        self.resumed = 0

    def resumeProducing(self):
        self.resumed += 1
        if self.chunks:
            self.consumer.write(self.chunks.pop(0))
        else:
            self.consumer.unregisterProducer()

    def stopProducing(self):
        pass


@pytest.mark.parametrize("size", [10, 300000])
def test_pull_producer_is_asked_again_after_each_flush(small, size):
    chunks = [bytes([65 + i]) * size for i in range(5)]
    producer = PullProducer(small.conn, chunks)
    small.conn.registerProducer(producer, False)  # asks for the first chunk at once
    got, _ = small.drain()
    assert got == b"".join(chunks)
    assert producer.resumed == 6  # five chunks, then the one that unregisters
    assert small.conn.producer is None


def test_lose_connection_flushes_what_is_held_then_closes(small):
    big = b"z" * 500000
    small.conn.write(big)
    assert small.conn.held
    small.conn.loseConnection()
    small.conn.write(b"!")  # still accepted before the close, as Twisted's
    got, why = small.drain()
    assert got == big + b"!"
    assert why is main.CONNECTION_DONE  # the reactor then calls connectionLost with it


def test_lose_connection_with_nothing_held_closes_on_the_next_write_event(pair):
    pair.conn.write(b"bye")
    pair.conn.loseConnection()
    assert pair.watched
    got, why = pair.drain()
    assert (got, why) == (b"bye", main.CONNECTION_DONE)


def test_abort_drops_what_is_held_and_closes_on_the_next_turn(small):
    small.conn.write(b"q" * 500000)
    assert small.conn.held
    small.conn.abortConnection()
    small.conn.write(b"dropped")
    assert not small.conn.held and not small.watched
    small.reactor.advance(0)
    assert small.proto.lost[0].check(error.ConnectionAborted)
    with pytest.raises(ConnectionResetError):  # an abort resets the connection: the peer never gets it all
        small.read()


def test_half_close_flushes_then_shuts_the_write_side():
    p = Pair(proto=HalfCloseRecorder(), sndbuf=4096)
    try:
        big = b"h" * 300000
        p.conn.write(big)
        p.conn.loseWriteConnection()
        got, why = p.drain()
        assert why is None and got == big
        assert p.proto.writeLost == 1
        assert p.read() == (b"", True)  # the peer reads EOF
        p.conn.write(b"after")  # dropped, as Twisted's
        p.peer.send(b"still reading")  # the read side stays open
        p.conn.doRead()
        assert p.proto.received == [b"still reading"]
        assert not p.proto.lost
        p.conn.loseConnection()  # nothing will call doWrite again: closes now
        assert p.proto.lost[0].check(error.ConnectionDone)
    finally:
        p.close()


def test_send_error_is_reported_by_doWrite_as_twisted_does(pair):
    pair.peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    pair.peer.close()  # an RST
    for _ in range(100):  # the first send after the RST may still succeed; the next fails
        pair.conn.write(b"x" * 1000)
        if pair.conn.held:
            break
    assert pair.conn.held
    why = pair.conn.doWrite()
    assert isinstance(why, error.ConnectionLost)


def test_write_rejects_text(pair):
    with pytest.raises(TypeError):
        pair.conn.write("text")


def test_write_after_connection_lost_is_ignored(pair):
    pair.conn.connectionLost(failure.Failure(main.CONNECTION_DONE))
    pair.conn.write(b"late")  # no exception, nothing sent


def test_port_and_connector_make_txmesh_transports():
    assert tcp.Port.transport is tcp.Server
    assert tcp.Connector.clientClass is tcp.Client
