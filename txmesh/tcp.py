"""
txmesh's TCP transport: Twisted's, except that ``write`` sends at once when nothing is buffered.

Twisted's ``FileDescriptor.write`` only appends to a buffer and asks the reactor to watch the socket for
writability (twisted#5303): every write costs two ``epoll_ctl`` calls and one more reactor turn whose write event
is dispatched through Python, which for a proxy that writes on every request in both directions costs more than the
HTTP work (issue 10: Twisted's bare relay 33 µs per request, 16-17 µs once writes go out at once).  These
transports do what asyncio's do: when their buffer is empty, ``send()`` now and buffer only what the kernel did not
take (``EAGAIN``, a partial send); the reactor is asked to watch the socket only while something is buffered.

Everything else is Twisted's contract, kept on purpose:
  - write order: once anything is buffered, later writes queue behind it until ``doWrite`` drains it;
  - producers: a streaming producer is paused when the buffer passes ``bufferSize`` and resumed once it drains; a
    pull producer is asked for more (``resumeProducing``) after each drain, as Twisted does;
  - ``loseConnection`` flushes the buffer, then closes; ``loseWriteConnection`` flushes, then shuts the write side
    (``IHalfCloseableProtocol.writeConnectionLost``); ``abortConnection`` drops the buffer and closes at once;
  - errors: a send that fails with anything but ``EAGAIN``/``ENOBUFS`` leaves the bytes buffered, so the reactor's
    next ``doWrite`` meets the error and the connection is lost with Twisted's own ``ConnectionLost`` reason;
  - ``startTLS`` hands anything buffered to Twisted's buffer and from then on the TLS layer uses Twisted's write
    path unchanged.

The state is this class's own (``held``, ``writeClosing``, ``writeClosed``, ``aborting``): it reads none of
Twisted's private buffer fields.  L{Port} and L{Connector} make these transports; L{txmesh.reactor} uses them for
``listenTCP``, ``connectTCP`` and ``adoptStreamPort``, so every ``tcp:``/``systemd:`` listener and every upstream
connection of a txmesh started by ``twistd`` gets them.
"""

from errno import ENOBUFS

from twisted.internet import abstract, main, tcp
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.python import failure, log

from txmesh.twisted_private import ClientClassConnector

_CONNECTION_DONE = failure.Failure(main.CONNECTION_DONE)


class DirectWriteMixin:
    """
    The write side of L{Server} and L{Client} (mixed in before L{twisted.internet.tcp.Connection}).

    @ivar held: the bytes not yet sent (a list of bytes/memoryview chunks, in order); empty when writes go straight
        to the socket.
    @ivar heldLen: their total length (compared with ``bufferSize`` for a streaming producer).
    """

    held = ()
    heldLen = 0
    writeClosing = False
    writeClosed = False
    aborting = False

    def write(self, data):
        if not isinstance(data, bytes):
            raise TypeError("Data must be bytes")
        if self.TLS:
            return super().write(data)
        if not self.connected or self.writeClosed or self.aborting or not data:
            return
        if self.held:
            self._hold(data)
            return
        try:
            sent = self.socket.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as e:
            # ENOBUFS: retry later as Twisted does; anything else: doWrite meets it again and reports the loss
            sent = 0
            if e.errno != ENOBUFS:
                self._hold(data)
                return
        if sent < len(data):
            self._hold(memoryview(data)[sent:] if sent else data)
        elif self.producer is not None and not self.streamingProducer:
            # a pull producer is asked for more after each flush: let doWrite (nothing to send) ask it
            self.startWriting()

    def writeSequence(self, iovec):
        if self.TLS:
            return super().writeSequence(iovec)
        self.write(b"".join(iovec))

    def _hold(self, data):
        if not self.held:
            self.held = []
            self.startWriting()
        self.held.append(data)
        self.heldLen += len(data)
        producer = self.producer
        if producer is not None and self.streamingProducer and self.heldLen > self.bufferSize:
            self.producerPaused = True
            producer.pauseProducing()

    def doWrite(self):
        """Send what is held; once all is sent, stop watching and do what the drain was waiting for."""
        if self.TLS:
            return super().doWrite()
        held = self.held
        if held:
            data = held[0]
            if len(held) > 1 and len(data) < self.SEND_LIMIT:
                # small pieces go out in one send; a big head is sent alone (no copy of a large buffer per event)
                data = b"".join(held)
                held[:] = [data]
            sent = self.writeSomeData(data)
            if isinstance(sent, Exception):
                return sent
            self.heldLen -= sent
            if sent < len(data):
                held[0] = memoryview(data)[sent:]
                return None
            del held[0]
            if held:
                return None
            self.held = ()
        self.stopWriting()
        # the same order as Twisted's FileDescriptor.doWrite
        if self.producer is not None and ((not self.streamingProducer) or self.producerPaused):
            self.producerPaused = False
            self.producer.resumeProducing()
        elif self.disconnecting:
            return main.CONNECTION_DONE
        elif self.writeClosing and not self.writeClosed:
            self.writeClosed = True
            return self.closeWriteSide()
        return None

    def closeWriteSide(self):
        """Shut the socket's write side and tell an L{IHalfCloseableProtocol} (as Twisted's TCP connection does)."""
        try:
            self.socket.shutdown(1)
        except OSError:
            pass
        p = IHalfCloseableProtocol(self.protocol, None)
        if p:
            try:
                p.writeConnectionLost()
            except BaseException:
                f = failure.Failure()
                log.err()
                self.connectionLost(f)

    def loseConnection(self):
        if self.TLS:
            return super().loseConnection()
        if self.connected and not self.disconnecting:
            if self.writeClosed:
                # doWrite will not close it any more
                self.stopReading()
                self.stopWriting()
                self.connectionLost(_CONNECTION_DONE)
            else:
                self.stopReading()
                self.startWriting()
                self.disconnecting = 1

    def loseWriteConnection(self):
        if self.TLS:
            return super().loseWriteConnection()
        self.writeClosing = True
        self.startWriting()

    def abortConnection(self):
        if not self.disconnected and not self.aborting:
            self.aborting = True
            self.held = ()
            self.heldLen = 0
        super().abortConnection()

    def startTLS(self, ctx, normal=True):
        if self.held:
            # keep the order: what is held goes first, through Twisted's buffer, which the TLS layer writes to
            abstract.FileDescriptor.write(self, b"".join(self.held))
            self.held = ()
            self.heldLen = 0
        super().startTLS(ctx, normal)

    def connectionLost(self, reason):
        self.held = ()
        self.heldLen = 0
        super().connectionLost(reason)


class Server(DirectWriteMixin, tcp.Server):
    """An accepted TCP connection that writes at once (L{DirectWriteMixin})."""


class Client(DirectWriteMixin, tcp.Client):
    """An outgoing TCP connection that writes at once (L{DirectWriteMixin})."""


class Port(tcp.Port):
    """A listening TCP port whose accepted connections are L{Server}s."""

    transport = Server


class Connector(ClientClassConnector):
    """``connectTCP``'s connector, making L{Client}s."""

    clientClass = Client


def listenTCP(reactor, port, factory, backlog=50, interface=""):
    """L{twisted.internet.interfaces.IReactorTCP.listenTCP} with a L{Port}."""
    p = Port(port, factory, backlog, interface, reactor)
    p.startListening()
    return p


def connectTCP(reactor, host, port, factory, timeout=30, bindAddress=None):
    """L{twisted.internet.interfaces.IReactorTCP.connectTCP} with a L{Connector}."""
    c = Connector(host, port, factory, timeout, bindAddress, reactor)
    c.connect()
    return c

