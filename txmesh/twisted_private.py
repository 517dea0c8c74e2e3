"""
Every use txmesh makes of a private Twisted name, in one place (STYLE.md habit 14).

Twisted gives no public way to do these things; each function names the Twisted source it reads and why
txmesh needs it.  ``tests/test_twisted_private.py`` checks every name on real Twisted objects and fails naming the
missing attribute and the installed Twisted version; ``setup.cfg`` bounds Twisted to the releases that test
passed on.  Nothing else in txmesh may import a ``_``-name from Twisted or read one off a Twisted object.
"""

import errno
import functools

from twisted.internet import tcp, unix
from twisted.internet.endpoints import _parseServer
from twisted.internet.epollreactor import EPollReactor
from twisted.protocols.policies import ProtocolWrapper
from twisted.python import failure, log

# (owner, attribute) of every private Twisted name used below; the test module checks each on real objects
PRIVATE_NAMES = (
    ("twisted.internet.endpoints", "_parseServer"),
    # LeanEPollReactor.doPoll: the loop's state and its slow path
    ("twisted.internet.epollreactor.EPollReactor", "_poller"),
    ("twisted.internet.epollreactor.EPollReactor", "_selectables"),
    ("twisted.internet.epollreactor.EPollReactor", "_doReadOrWrite"),
    ("twisted.internet.epollreactor.EPollReactor", "_disconnectSelectable"),
    ("twisted.internet.epollreactor.EPollReactor", "_POLL_DISCONNECTED"),
    ("twisted.internet.epollreactor.EPollReactor", "_POLL_IN"),
    ("twisted.internet.epollreactor.EPollReactor", "_POLL_OUT"),
    # adoptTCPPort; ClientClassConnector overrides _makeTransport, the hook BaseConnector.connect calls
    ("twisted.internet.tcp.Port", "_fromListeningDescriptor"),
    # adoptTCPConnection (txmesh/workers_balance.py: a connection the parent of workers: N handed over)
    ("twisted.internet.tcp.Server", "_fromConnectedSocket"),
    ("twisted.internet.tcp.Connector", "_makeTransport"),
    ("twisted.application.internet.StreamServerEndpointService", "_raiseSynchronously"),
    # shareListeningPort: a port that closes its socket without shutdown(2) (and, for UNIX, without unlink)
    ("twisted.internet.tcp._SocketCloser", "_shouldShutdown"),
    # not ``_``-names, but undocumented internals of the listening port that watchAcceptErrors relies on
    ("twisted.internet.tcp.Port", "doRead"),
)


def parseServerEndpoint(description):
    """
    Parse a server endpoint string (the syntax of L{twisted.internet.endpoints.serverFromString}) without making an
    endpoint, so config can be checked before anything binds.

    @return: ``(prefix, args, kwargs)``: ``prefix`` the lowercase endpoint type (``"tcp"``, ``"unix"``, ``"ssl"``,
        or a plugin's prefix such as ``"tcp6"``); for the built-in types ``args``/``kwargs`` are already converted
        by Twisted's parser (``tcp``: ``args[0]`` the port as an int, ``kwargs["interface"]``; ``unix``:
        ``args[0]`` the path); for plugins they are the raw strings.
    @raise ValueError: (and TypeError, KeyError, OSError for ssl key files) as Twisted's parsers raise them.

    Relies on C{twisted/internet/endpoints.py}'s ``_parseServer(description, factory)``, which
    ``serverFromString`` itself calls.  The public ``serverFromString`` builds endpoint objects whose port,
    interface and path are private attributes (``TCP4ServerEndpoint._port``, ``._interface``), so it would trade
    one private name for several; txmesh needs the port and interface to find two listeners on one address.
    """
    kind, args, kwargs = _parseServer(description, None)
    prefix = kind.lower() if isinstance(kind, str) else kind.prefix.lower()
    return prefix, args, kwargs


def raiseBindErrorsSynchronously(service):
    """
    Make a L{twisted.application.internet.StreamServerEndpointService} raise from ``privilegedStartService``
    when its endpoint fails to listen at once (a taken port), instead of only logging the failure: txmesh must
    not start with a listener missing.  ``twistd`` and ``strports.service`` do the same.

    Relies on C{twisted/application/internet.py}'s ``StreamServerEndpointService._raiseSynchronously``
    (documented there as an ``@ivar`` since 10.2, never made public); the service resets it after starting.
    """
    service._raiseSynchronously = True



def switchProtocol(transport, old, new):
    """
    Make ``new`` the protocol ``transport`` delivers its events to instead of ``old`` (protocol detection hands a
    connection on: txmesh.protocols.auto.server).  @return: True if switched, False when ``transport`` is of a
    kind this cannot switch (the caller then forwards the events itself).

    Twisted's TCP and UNIX connections (and txmesh's, their subclasses) deliver to their ``protocol`` attribute,
    read on every event (``_dataReceived``, ``readConnectionLost``, ``connectionLost``): Twisted itself replaces it
    in ``twisted.internet._newtls.startTLS``.  A L{ProtocolWrapper} (the TLS layer, the network filters) delivers
    to its public ``wrappedProtocol``.
    """
    if isinstance(transport, tcp.Connection):
        if transport.protocol is not old:
            return False
        transport.protocol = new
        return True
    if isinstance(transport, ProtocolWrapper):
        if transport.wrappedProtocol is not old:
            return False
        transport.wrappedProtocol = new
        return True
    return False

class _AcceptWatchingSocket:
    """A listening socket that reports the accept() errors it is asked to watch, then raises them as before."""

    __slots__ = ("_socket", "_errors", "_failed")

    def __init__(self, sock, errors, failed):
        self._socket = sock
        self._errors = errors
        self._failed = failed

    def accept(self):
        try:
            return self._socket.accept()
        except OSError as e:
            if e.errno in self._errors:
                self._failed(e.errno)
            raise

    def __getattr__(self, name):
        return getattr(self._socket, name)


def watchAcceptErrors(port, errors, failed):
    """
    Call ``failed(errno)`` each time the listening ``port`` (a L{twisted.internet.tcp.Port}: TCP, UNIX, SSL and
    systemd-adopted ports are all of this kind) fails to accept a connection with an errno in ``errors``, then let
    Twisted handle the error as it does.  Other ports are left alone.

    Relies on C{twisted/internet/tcp.py}: ``Port.doRead`` accepts through ``self.socket.accept()`` (in
    ``_accept``) up to ``numberAccepts`` times per read event, and on ``EMFILE``, ``ENFILE``, ``ENOBUFS`` and
    ``ENOMEM`` logs "Could not accept new connection" and returns, leaving the connection in the backlog, so a
    level-triggered reactor calls ``doRead`` again at once, in a tight loop, while the process is out of
    descriptors.  Twisted says nothing to the factory about it, hence the socket stand-in: ``port.socket`` is an
    attribute of every connected port, but not part of any interface.

    @return: True if the port is watched.
    """
    if not isinstance(port, tcp.Port) or getattr(port, "socket", None) is None:
        return False
    port.socket = _AcceptWatchingSocket(port.socket, frozenset(errors), failed)
    return True


def adoptTCPPort(portClass, reactor, fileDescriptor, addressFamily, factory):
    """
    L{twisted.internet.interfaces.IReactorSocket.adoptStreamPort} for a TCP listening descriptor (``systemd:``
    endpoints), making a ``portClass`` (a L{twisted.internet.tcp.Port} subclass) and starting it.

    Relies on C{twisted/internet/tcp.py}'s classmethod ``Port._fromListeningDescriptor(reactor, fd, addressFamily,
    factory)``, which ``PosixReactorBase.adoptStreamPort`` calls: the only way to build a port on a descriptor
    already listening.
    """
    p = portClass._fromListeningDescriptor(reactor, fileDescriptor, addressFamily, factory)
    p.startListening()
    return p


def adoptTCPConnection(serverClass, reactor, fileDescriptor, addressFamily, factory):
    """
    L{twisted.internet.interfaces.IReactorSocket.adoptStreamConnection} for a connected TCP descriptor, making a
    ``serverClass`` (a L{twisted.internet.tcp.Server} subclass: txmesh's own transport) with ``factory``'s protocol.
    The caller keeps ``fileDescriptor`` (the transport has its own duplicate).  @return: the transport, or None when
    the factory built no protocol (the connection is closed).

    Relies on C{twisted/internet/tcp.py}'s classmethod ``Server._fromConnectedSocket(fd, addressFamily, factory,
    reactor)``, which ``PosixReactorBase.adoptStreamConnection`` calls for TCP (always with Twisted's own Server).
    """
    return serverClass._fromConnectedSocket(fileDescriptor, addressFamily, factory, reactor)


def shareListeningPort(port):
    """
    From now on, stopping the listening ``port`` (a L{twisted.internet.tcp.Port} or L{twisted.internet.unix.Port})
    only closes this process's descriptor of its socket, which another process also holds (a hot restart handed
    it over): the socket keeps listening there, and the connections waiting in its backlog are accepted there.

    Twisted's ``Port.connectionLost`` calls ``shutdown(2)`` on a socket it bound itself before closing it; on a
    listening socket that resets every connection in the backlog and stops the socket listening in every process
    that holds it.  A UNIX port also unlinks its path, the address the other process now listens on.

    Relies on C{twisted/internet/tcp.py}'s ``_SocketCloser._shouldShutdown``, which Twisted itself clears for a
    port made on an adopted descriptor ("Avoid shutting it down at the end"), and on C{twisted/internet/unix.py}'s
    ``Port.connectionLost`` doing nothing but the unlink and the release of its lock file (``unix:...:lockfile=1``,
    a symlink to this pid) before ``tcp.Port.connectionLost``: the port's own ``connectionLost`` becomes that one,
    and the lock is released now (left behind, a later process would take it for a stale one and remove the path).
    """
    port._shouldShutdown = False
    if isinstance(port, unix.Port):
        port.connectionLost = functools.partial(tcp.Port.connectionLost, port)
        if port.lockFile is not None:
            port.lockFile.unlock()
            port.lockFile = None


class ClientClassConnector(tcp.Connector):
    """
    A L{twisted.internet.tcp.Connector} whose transport is a ``clientClass`` (a L{twisted.internet.tcp.Client}
    subclass) instead of Twisted's.

    Relies on C{twisted/internet/base.py}'s ``BaseConnector.connect``, which builds the transport by calling
    ``self._makeTransport()``, the hook ``tcp.Connector`` overrides; Twisted has no public way to choose the
    transport class of ``connectTCP``.
    """

    clientClass = tcp.Client

    def _makeTransport(self):
        return self.clientClass(self.host, self.port, self.bindAddress, self, self.reactor)


class LeanEPollReactor(EPollReactor):
    """
    Twisted's epoll reactor whose loop calls ``doRead``/``doWrite`` directly.

    Twisted's ``EPollReactor.doPoll`` wraps every event in ``log.callWithLogger(selectable, ...)``, which asks the
    selectable for its ``logPrefix()`` and runs the handler in a new ``twisted.python.context`` frame, so that a
    legacy ``log.msg``/``log.err`` made inside carries ``system=<logPrefix>``; issue 10 measured 4-6 µs of a bare
    relay's 16 µs per request there.  This loop takes that path only where something is to be reported: a handler
    that raised (the failure is logged with ``log.err`` inside the same ``callWithLogger`` context, so the event is
    Twisted's: ``isError``, ``failure``, ``system``), one that returned a reason to disconnect (the disconnect and
    ``connectionLost`` run in the context), a hang-up or error event and a lost descriptor (Twisted's own
    ``_doReadOrWrite``, in the context).  What differs: a legacy ``log.msg`` made by a handler that then returns
    normally is logged with ``system='-'``; txmesh logs with ``twisted.logger.Logger``, which never read that
    context.

    Relies on C{twisted/internet/epollreactor.py} (``_poller``, ``_selectables``, the ``_POLL_*`` masks) and
    C{twisted/internet/posixbase.py} (``_PollLikeMixin._doReadOrWrite``, ``_DisconnectSelectableMixin
    ._disconnectSelectable``): ``doPoll`` below is Twisted's with the wrapper moved to the slow paths.
    """

    def doPoll(self, timeout):
        if timeout is None:
            timeout = -1
        try:
            events = self._poller.poll(timeout, len(self._selectables))
        except OSError as err:
            if err.errno == errno.EINTR:
                return
            raise
        selectables = self._selectables
        slow = self._POLL_DISCONNECTED
        pollIn = self._POLL_IN
        pollOut = self._POLL_OUT
        callWithLogger = log.callWithLogger
        for fd, event in events:
            selectable = selectables.get(fd)
            if selectable is None:
                continue
            if (event & slow and not event & pollIn) or selectable.fileno() == -1:
                callWithLogger(selectable, self._doReadOrWrite, selectable, fd, event)
                continue
            why = None
            inRead = False
            try:
                if event & pollIn:
                    why = selectable.doRead()
                    inRead = True
                if not why and event & pollOut:
                    why = selectable.doWrite()
                    inRead = False
            except BaseException:
                f = failure.Failure()
                why = f.value
                callWithLogger(selectable, log.err, f)
            if why:
                callWithLogger(selectable, self._disconnectSelectable, selectable, why, inRead)

    doIteration = doPoll


def capAcceptsPerWakeup(port, n):
    """
    At most ``n`` connections accepted by the listening ``port`` per readable event: a worker of ``workers: N``
    sets 1 on the socket it shares with its siblings, so that the worker woken first does not take a whole burst
    of new connections (docs/operations.md "Workers").  Relies on C{twisted/internet/tcp.py}'s ``Port.doRead``
    accepting up to ``numberAccepts`` connections per call and growing it by 20 when it took them all.
    """
    doRead = port.doRead

    def cappedDoRead():
        port.numberAccepts = min(port.numberAccepts, n)
        return doRead()

    port.doRead = cappedDoRead
