"""
The network (connection-level) filter chain: Envoy's network FilterManager, for one downstream connection.

A listener with ``network_filters`` serves a L{FilteringFactory} around its own factory (the way TLS wraps one):
each accepted connection gets a L{FilteringProtocol}, which is the real transport's protocol and the listener
protocol's transport.  So the read filters see the bytes before the protocol's codec, and every byte the protocol
writes (through its Writer, which uses ``transport.write`` on anything but a plain TCP transport) passes the
write filters.  Listeners without network filters are served unwrapped and pay nothing.

- On a new connection each read filter's ``connectionMade`` runs in order; the listener protocol is built and
  connected only once all answered CONTINUE.  A STOP holds the connection (reading paused) until the filter
  closes it (refused) or calls ``continueReading``.
- Bytes read pass the read filters in order, then go to the protocol.  A STOP holds them; what arrives later
  queues behind them (past the listener's buffer limit reading pauses) until ``continueReading``.  A filter may
  return replacement bytes, inject bytes (``injectReadData``), write (``connection.write``) or close.
- Bytes written pass the write filters in reverse order, then leave through the writer the service injects
  (L{txmesh.protocols.transport.Writer}: a direct ``send()`` on plain TCP and TCP_NODELAY, as the protocols have
  unwrapped; this layer does not import the protocols), or ``transport.write`` without one.
- ``connectionLost`` reaches the protocol (if it was connected) and every read filter.

Reading pauses asked by the protocol (its backpressure) and by the chain are kept apart, so neither resumes the
other's pause.  Producers the protocol registers go to the real transport unchanged.
"""

from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from zope.interface import directlyProvides, implementer, providedBy

from txmesh.interfaces import (FilterStatus, IConnectionInfo, IFilterChainFactoryCallbacks, IReadFilter,
                               IReadFilterCallbacks)
from txmesh.tls.material import peerIdentityOf

CONTINUE = FilterStatus.CONTINUE
STOP = FilterStatus.STOP

# who asked the real transport to stop reading
_BY_CHAIN = 1
_BY_PROTOCOL = 2


class FilteringFactory(WrappingFactory):
    """
    Serves a listener factory through its network filters.

    @param wrappedFactory: the listener's own factory (an IListenerFactory); it is built a protocol only for
        connections every filter accepted.
    @param entries: the listener's ``networkFilters`` (txmesh.config.FilterEntry), in configuration order.
    @param runtime: what ``createFilters`` gets (clock, stats).
    @param listenerName: the listener's name, as filters see it (IConnectionInfo.listenerName).
    @param bufferLimit: bytes held for stopped read filters past which the connection's reading pauses.
    @param newWriter: C{newWriter(transport)} -> an object whose ``write`` sends to the real transport (the
        service gives L{txmesh.protocols.transport.Writer}); None writes with ``transport.write``.
    """

    noisy = False

    def __init__(self, wrappedFactory, entries, runtime, listenerName, bufferLimit=1 << 20, newWriter=None):
        WrappingFactory.__init__(self, wrappedFactory)
        self.entries = tuple((e.factory, e.config) for e in entries)
        self.runtime = runtime
        self.listenerName = listenerName
        self.bufferLimit = bufferLimit
        self.newWriter = newWriter

    def buildProtocol(self, addr):
        return FilteringProtocol(self, addr)


@implementer(IFilterChainFactoryCallbacks)
class _NetworkInstaller:
    """Collects the read and write filters ``createFilters`` installs on one connection."""

    __slots__ = ("readFilters", "writeFilters")

    def __init__(self):
        self.readFilters = []
        self.writeFilters = []

    def addReadFilter(self, f):
        self.readFilters.append(f)

    def addWriteFilter(self, f):
        self.writeFilters.append(f)

    def addStreamDecoderFilter(self, f):
        raise TypeError("a stream filter cannot be installed in a network filter chain (list it under filters)")

    addStreamEncoderFilter = addStreamFilter = addStreamDecoderFilter


@implementer(IReadFilterCallbacks)
class _ReadFilterCallbacks:
    """What one read filter gets: resuming or injecting continues from the filter after it."""

    __slots__ = ("connection", "index")

    def __init__(self, connection, index):
        self.connection = connection
        self.index = index

    def continueReading(self):
        self.connection._continueReading(self.index)

    def injectReadData(self, data):
        self.connection._injectReadData(self.index, data)


@implementer(IConnectionInfo, IPushProducer)
class FilteringProtocol(ProtocolWrapper):
    """
    One downstream connection running through network filters; the listener protocol's transport.

    @ivar readFilters: the IReadFilter instances, in configuration order.
    @ivar writeFilters: the IWriteFilter instances, in the order writes pass them (reverse configuration order).
    """

    log = Logger()

    def __init__(self, factory, addr):
        ProtocolWrapper.__init__(self, factory, None)
        self.addr = addr
        self.readFilters = []
        self.writeFilters = []
        self._out = None
        self._closed = False
        self._accepting = True  # connectionMade has not passed every filter yet
        self._stopped = -1  # the read filter holding the connection or _held, or -1
        self._held = None
        self._queue = []
        self._queued = 0
        self._paused = 0  # who paused reading: _BY_CHAIN | _BY_PROTOCOL
        self._peerIdentity = None  # IPeerIdentity, once TLS verified the peer's certificate (issue 14)

    # -- IConnectionInfo --------------------------------------------------------------------------------------

    @property
    def peer(self):
        return self.transport.getPeer()

    @property
    def host(self):
        return self.transport.getHost()

    @property
    def listenerName(self):
        return self.factory.listenerName

    @property
    def peerIdentity(self):
        if self._peerIdentity is None and self.transport is not None:
            self._peerIdentity = peerIdentityOf(self.transport)
        return self._peerIdentity

    def close(self, abort=False):
        """Close the connection; no more bytes reach the filters or the protocol."""
        self._closed = True
        if abort:
            self.abortConnection()
        else:
            self.loseConnection()

    # -- from the real transport -----------------------------------------------------------------------------

    def makeConnection(self, transport):
        directlyProvides(self, providedBy(transport))
        self.connected = 1
        self.transport = transport
        newWriter = self.factory.newWriter
        self._out = transport if newWriter is None else newWriter(transport)
        self.factory.registerProtocol(self)
        installer = _NetworkInstaller()
        runtime = self.factory.runtime
        for factory, config in self.factory.entries:
            factory.createFilters(config, installer, runtime)
        self.readFilters = installer.readFilters
        installer.writeFilters.reverse()
        self.writeFilters = installer.writeFilters
        for i, f in enumerate(self.readFilters):
            f.initializeReadFilterCallbacks(_ReadFilterCallbacks(self, i))
        self._accept(0)

    def dataReceived(self, data):
        if self._closed:
            return
        if self._stopped >= 0 or self._queue:
            self._enqueue(data)
            return
        self._read(0, data)

    def connectionLost(self, reason):
        self._closed = True
        self.connected = 0
        self.factory.unregisterProtocol(self)
        protocol, self.wrappedProtocol = self.wrappedProtocol, None
        try:
            if protocol is not None:
                protocol.connectionLost(reason)
        finally:
            for f in self.readFilters:
                try:
                    f.connectionLost(reason)
                except Exception:
                    self.log.failure("network filter {f!r} failed in connectionLost", f=f)

    # -- the read chain --------------------------------------------------------------------------------------

    def _accept(self, start):
        filters = self.readFilters
        for i in range(start, len(filters)):
            status = filters[i].connectionMade()
            if self._closed:
                return
            if status is STOP:
                self._stopped = i
                self._pause(_BY_CHAIN)
                return
        self._accepting = False
        protocol = self.factory.wrappedFactory.buildProtocol(self.addr)
        if protocol is None:
            self.close()
            return
        self.wrappedProtocol = protocol
        protocol.makeConnection(self)

    def _read(self, start, data):
        filters = self.readFilters
        for i in range(start, len(filters)):
            status = filters[i].dataReceived(data)
            if self._closed:
                return
            if status is CONTINUE:
                continue
            if status is STOP:
                self._stopped = i
                self._held = data
                return
            data = status  # replacement bytes
            if not data:
                return
        self.wrappedProtocol.dataReceived(data)

    def _enqueue(self, data):
        self._queue.append(data)
        self._queued += len(data)
        if self._queued > self.factory.bufferLimit:
            self._pause(_BY_CHAIN)

    def _continueReading(self, index):
        if self._stopped != index or self._closed:
            return
        self._stopped = -1
        if self._accepting:
            self._accept(index + 1)
        else:
            held, self._held = self._held, None
            self._read(index + 1, held)
        while self._stopped < 0 and self._queue and not self._closed:
            data = b"".join(self._queue)
            self._queue = []
            self._queued = 0
            self._read(0, data)
        if self._stopped < 0 and self._queued <= self.factory.bufferLimit:
            self._resume(_BY_CHAIN)

    def _injectReadData(self, index, data):
        if self._closed:
            return
        if self._accepting:
            raise RuntimeError("injectReadData before every read filter accepted the connection")
        self._read(index + 1, data)

    # -- reading pauses: the chain's and the protocol's, kept apart -------------------------------------------

    def _pause(self, who):
        if not self._paused:
            self.transport.pauseProducing()
        self._paused |= who

    def _resume(self, who):
        if self._paused & who:
            self._paused &= ~who
            if not self._paused:
                self.transport.resumeProducing()

    def pauseProducing(self):
        """The protocol's backpressure: stop reading (until it resumes, whatever the filters do)."""
        self._pause(_BY_PROTOCOL)

    def resumeProducing(self):
        self._resume(_BY_PROTOCOL)

    def stopProducing(self):
        self.transport.stopProducing()

    # -- the write chain (the protocol's transport) -----------------------------------------------------------

    def write(self, data):
        """Write towards the peer through the write filters (IConnectionInfo.write, ITransport.write)."""
        for f in self.writeFilters:
            status = f.writeData(data)
            if status is CONTINUE:
                continue
            if status is STOP:
                return
            data = status  # replacement bytes
            if not data:
                return
        self._out.write(data)

    def writeSequence(self, data):
        self.write(b"".join(data))

    def loseConnection(self):
        self.disconnecting = 1
        self.transport.loseConnection()

    def abortConnection(self):
        self.disconnecting = 1
        self.transport.abortConnection()


@implementer(IReadFilter)
class AdmissionFilter:
    """
    The shape of a network filter that decides once, when the connection is made, whether to let it through
    (``source_ip``, ``connection_rate_limit``): ``admit(connection)`` says; each answer is counted per listener
    (``admitted`` and ``refused``: (series name, help) pairs) and a refused connection is closed at once.
    """

    __slots__ = ("config", "runtime", "callbacks")

    admitted = refused = None  # (name, help), set by each subclass

    def __init__(self, config, runtime):
        self.config = config
        self.runtime = runtime
        self.callbacks = None

    def admit(self, connection):
        raise NotImplementedError

    def initializeReadFilterCallbacks(self, callbacks):
        self.callbacks = callbacks

    def connectionMade(self):
        connection = self.callbacks.connection
        labels = (("listener", connection.listenerName),)
        if self.admit(connection):
            name, help = self.admitted
            self.runtime.stats.counter(name, labels, help).inc()
            return FilterStatus.CONTINUE
        name, help = self.refused
        self.runtime.stats.counter(name, labels, help).inc()
        connection.close()
        return FilterStatus.STOP

    def dataReceived(self, data):
        return FilterStatus.CONTINUE

    def connectionLost(self, reason):
        pass
