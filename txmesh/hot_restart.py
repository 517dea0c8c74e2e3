"""
Hot restart (issue 13 part 5; HAProxy's ``-x`` and Envoy's hot restart in spirit): a new txmesh process takes the
listening sockets over from the running one, which then drains, and no connection is refused on the way.

The running process listens on a UNIX control socket (``hot_restart.socket``, mode 0600, peers of another user
refused).  A process started with ``--hot-restart``:

1. before its service is built (``takeOver``, from tap.py; blocking, bounded by ``hot_restart.timeout``) connects,
   asks for the sockets and receives every listener's and the admin's listening socket by SCM_RIGHTS, with their
   names (``listener:<name>``, ``admin``); nobody there (no file, connection refused): it starts as usual;
2. listens on the inherited socket of each listener whose name (or else address) fits its own config, through the
   reactor's ``adoptStreamPort`` (the txmesh reactor makes its own TCP port and transport there too), binds only
   what the old process did not have, closes the rest;
3. once it serves (every listener accepts, discovered clusters are warm) tells systemd ``MAINPID=`` and
   ``READY=1``, then tells the old process to drain, naming the sockets it adopted;
4. once the old process answered (its control socket is closed by then), listens on the control socket itself.

The old process, told to drain, stops reading the sockets the new one adopted *without* ``shutdown(2)`` (the new
process accepts what waits in their backlog; nothing is reset), closes its control socket, answers, and stops as on
SIGTERM: registrations withdrawn first, in-flight requests finished up to ``drain_timeout``, then it exits.  Its
listeners the new process did not adopt close as on any stop.  Until it is told to drain it serves as before: a
new process that fails before it serves (a bad config, a port it cannot bind, a crash, ``hot_restart.timeout``
passing) changes nothing there.
"""

import os
import socket
import struct

from twisted.internet import defer
from twisted.internet.address import UNIXAddress
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IFileDescriptor, IPushProducer, ISystemHandle, IStreamServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from zope.interface import implementer

from txmesh.hot_restart_wire import HandoverError, MessageDecoder, closeAll, encode
from txmesh.interfaces import IHotRestart
from txmesh.twisted_private import shareListeningPort

log = Logger(namespace="txmesh.hot_restart")


class _ControlProtocol(Protocol):
    """One control connection, either end: messages in (``HotRestart.messageReceived``), messages and fds out."""

    def __init__(self, owner):
        self.owner = owner
        self.decoder = MessageDecoder()

    def connectionMade(self):
        self.owner.controlConnected(self)

    def send(self, message, fds=()):
        for fd in fds:
            self.transport.sendFileDescriptor(fd)
        self.transport.write(encode(message))

    def refuse(self, reason):
        self.transport.write(encode({"type": "error", "reason": reason}))
        self.transport.loseConnection()

    def dataReceived(self, data):
        try:
            messages = self.decoder.feed(data)
        except HandoverError as e:
            log.warn("hot restart: control connection: {reason}", reason=e.reason)
            self.transport.loseConnection()
            return
        for message, fds in messages:
            closeAll(fds)  # nobody sends the control server descriptors
            self.owner.messageReceived(self, message)

    def connectionLost(self, reason):
        self.decoder.close()
        self.owner.controlLost(self)


class _ControlFactory(Factory):
    noisy = False

    def __init__(self, owner):
        self.owner = owner

    def buildProtocol(self, addr):
        return _ControlProtocol(self.owner)


def peerUID(transport):
    """The uid of the process at the other end of a UNIX transport (SO_PEERCRED), None if unknown."""
    if not ISystemHandle.providedBy(transport):
        return None
    ucred = struct.Struct("3i")  # pid, uid, gid
    return ucred.unpack(transport.getHandle().getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, ucred.size))[1]


@implementer(IHotRestart)
class HotRestart:
    """
    Both ends of a hot restart for one process (see the module docstring).

    @param reactor: IReactorUNIX (the control socket), IReactorSocket (``adoptStreamPort``, and the drain request
        on the inherited connection), IReactorTime (``hot_restart.timeout``).
    @param config: the L{txmesh.hot_restart_config.HotRestartConfig}.
    @param drain: called with no argument once a new process took over: stop this one as on SIGTERM (tap.py:
        ``reactor.stop``).
    @param inheritance: what ``takeOver`` got (a process started with ``--hot-restart``), or None.
    @param announce: ``announce(pid)``: tell the service manager this process is its main process now and ready
        (systemd: ``MAINPID=``, ``READY=1``); None: nobody to tell.
    @param environment: the service manager's variables this process was started with (``INHERITED_ENVIRONMENT``),
        handed on to the next process.
    @param allowedUIDs: the users whose processes may take the sockets (default: ours and root).
    @ivar state: ``starting``, ``taking over`` (told the old process to drain), ``serving``, ``handing over`` (sent
        the sockets, waiting for the new process to serve), ``draining`` (handed over), ``stopped``.
    """

    def __init__(self, reactor, config, drain, inheritance=None, announce=None, environment=None, pid=None,
                 allowedUIDs=None):
        self.reactor = reactor
        self.config = config
        self.drain = drain
        self.inheritance = inheritance
        self.announce = announce
        self.environment = dict(environment or {})
        self.pid = os.getpid() if pid is None else pid
        self.allowedUIDs = allowedUIDs if allowedUIDs is not None else {os.getuid(), 0}
        self.state = "starting"
        self.ports = {}  # name -> the listening port (adopted or bound), to hand over
        self.controlPort = None
        self._peer = None  # the control connection of the hand-over under way (either end)
        self._timer = None

    # -- the service's side (IHotRestart) --

    def endpoint(self, name, address, endpoint):
        return InheritingEndpoint(self, name, address, endpoint)

    def listen(self, name, address, endpoint, factory):
        """``endpoint.listen(factory)``, or a port on the inherited socket of ``name``; the port is kept."""
        d = listenInherited(self.reactor, self.inheritance, name, address, endpoint, factory)

        def keep(port):
            self.ports[name] = port
            return port

        return d.addCallback(keep)

    def serving(self):
        if self.state != "starting":
            return
        if self.inheritance is None:
            self._listenControl()
            return
        unused = self.inheritance.closeUnused()
        if unused:
            log.info("hot restart: not in this config, left to the old process to drain: {names}",
                     names=", ".join(unused))
        if self.announce is not None:
            self.announce(self.pid)
        self.state = "taking over"
        connection = self.inheritance.connection
        try:
            self.reactor.adoptStreamConnection(connection.fileno(), socket.AF_UNIX, _ControlFactory(self))
        except Exception:
            log.failure("hot restart: cannot send the drain request; stop the old process (pid {pid}) with SIGTERM",
                        pid=self.inheritance.pid)
            self._listenControl()
        finally:
            connection.close()

    def stop(self):
        self.state = "stopped"
        self._cancelTimer()
        if self._peer is not None:
            self._peer.transport.loseConnection()
        return self._closeControl()

    # -- the control connections --

    def controlConnected(self, protocol):
        if self.state == "taking over":
            # our end of the inherited connection, adopted once this process serves
            self._peer = protocol
            protocol.send({"type": "drain", "adopted": list(self.inheritance.adopted), "pid": self.pid})
            self._startTimer(self._oldProcessSilent)
            return
        uid = peerUID(protocol.transport)
        if uid is not None and uid not in self.allowedUIDs:
            log.warn("hot restart: refused a control connection from uid {uid}", uid=uid)
            protocol.transport.loseConnection()

    def messageReceived(self, protocol, message):
        kind = message["type"]
        if kind == "get_sockets":
            self._handOver(protocol, message)
        elif kind == "drain":
            self._drainRequested(protocol, message)
        elif kind == "draining" and protocol is self._peer and self.state == "taking over":
            log.info("hot restart: took over from pid {pid}, which drains now", pid=self.inheritance.pid)
            self._handOverEnded()
            protocol.transport.loseConnection()
            self._listenControl()
        else:
            protocol.refuse("unexpected '%s' message while %s" % (kind, self.state))

    def controlLost(self, protocol):
        if protocol is not self._peer:
            return
        self._handOverEnded()
        if self.state == "handing over":
            self.state = "serving"
            log.warn("hot restart: the new process went away before it served; this one keeps serving")
        elif self.state == "taking over":
            log.error("hot restart: the old process (pid {pid}) closed the control connection without answering "
                      "the drain request; stop it with SIGTERM", pid=self.inheritance.pid)
            self._listenControl()

    # -- the old process --

    def _handOver(self, protocol, message):
        if self.state != "serving":
            protocol.refuse("cannot hand over while %s" % (self.state,))
            return
        names, fds = [], []
        for name, port in sorted(self.ports.items()):
            fd = port.fileno() if IFileDescriptor.providedBy(port) else -1
            if fd >= 0:  # a listener stopped by POST /drain_listeners has no socket any more
                names.append({"name": name, "address": _describe(port)})
                fds.append(fd)
        self.state = "handing over"
        self._peer = protocol
        self._startTimer(self._newProcessSilent)
        log.info("hot restart: handing {n} socket(s) to pid {pid}", n=len(fds), pid=message.get("pid"))
        protocol.send({"type": "sockets", "pid": self.pid, "sockets": names, "fds": len(fds),
                       "environment": self.environment}, fds)

    def _drainRequested(self, protocol, message):
        adopted = message.get("adopted")
        if protocol is not self._peer or self.state != "handing over":
            protocol.refuse("no hand-over under way")
            return
        if not isinstance(adopted, list) or not all(isinstance(n, str) for n in adopted):
            protocol.refuse("'adopted' must list socket names")
            return
        self.state = "draining"
        self._cancelTimer()
        for name in adopted:
            port = self.ports.get(name)
            if port is not None:
                # the new process listens on it now: never shut it down, only stop accepting here
                shareListeningPort(port)
                IPushProducer(port).pauseProducing()
        log.info("hot restart: pid {pid} took over {names}; draining", pid=message.get("pid"),
                 names=", ".join(adopted) or "no socket")

        def answer(_):
            self._handOverEnded()
            protocol.send({"type": "draining", "pid": self.pid})
            protocol.transport.loseConnection()
            self.drain()

        self._closeControl().addCallback(answer)

    def _newProcessSilent(self):
        log.warn("hot restart: the new process did not serve within {t}s; this one keeps serving",
                 t=self.config.timeout)
        self._peer.transport.loseConnection()

    # -- the new process --

    def _oldProcessSilent(self):
        log.error("hot restart: the old process (pid {pid}) did not answer the drain request within {t}s; stop it "
                  "with SIGTERM", pid=self.inheritance.pid, t=self.config.timeout)
        self._peer.transport.loseConnection()

    # -- the control socket --

    def _listenControl(self):
        self.state = "serving"
        path = self.config.socket
        if os.path.exists(path):
            if _answers(path):
                log.error("hot restart: another process listens on {path}; this one cannot be hot-restarted",
                          path=path)
                return
            os.unlink(path)  # left by a process that did not stop cleanly
        try:
            self.controlPort = self.reactor.listenUNIX(path, _ControlFactory(self), mode=0o600)
        except CannotListenError as e:
            log.error("hot restart: cannot listen on {path}: {e}; this process cannot be hot-restarted", path=path,
                      e=e.socketError)

    def _closeControl(self):
        port, self.controlPort = self.controlPort, None
        if port is None:
            return defer.succeed(None)
        return defer.maybeDeferred(port.stopListening)

    def _startTimer(self, call):
        self._cancelTimer()
        self._timer = self.reactor.callLater(self.config.timeout, call)

    def _cancelTimer(self):
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _handOverEnded(self):
        self._cancelTimer()
        self._peer = None


def listenInherited(reactor, inheritance, name, address, endpoint, factory):
    """
    A Deferred port for ``factory``: on the socket ``inheritance`` (an L{Inheritance}, or None) holds for ``name``
    at ``address``, adopted with ``reactor.adoptStreamPort`` (txmesh's own TCP port), else ``endpoint.listen``.
    """
    sock = inheritance.take(name, address) if inheritance is not None else None
    if sock is None:
        return endpoint.listen(factory)
    try:
        port = reactor.adoptStreamPort(sock.fileno(), sock.family, factory)
    except Exception:
        return defer.fail()
    finally:
        sock.close()  # the port has its own duplicate
    log.info("{name}: listening on the socket inherited from pid {pid} ({address})", name=name,
             pid=inheritance.pid, address=address)
    return defer.succeed(port)


def _answers(path):
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except OSError:
        return False
    finally:
        probe.close()
    return True


def _describe(port):
    host = port.getHost()
    if isinstance(host, UNIXAddress):
        return os.fsdecode(host.name)
    return "%s:%d" % (host.host, host.port)


@implementer(IStreamServerEndpoint)
class InheritingEndpoint:
    """An endpoint whose ``listen`` is its ``owner``'s ``listen(name, address, endpoint, factory)``."""

    def __init__(self, owner, name, address, endpoint):
        self.owner = owner
        self.name = name
        self.address = address
        self.endpoint = endpoint

    def listen(self, factory):
        return self.owner.listen(self.name, self.address, self.endpoint, factory)


@implementer(IHotRestart)
class NoHotRestart:
    """No ``hot_restart`` block: listeners bind as configured, no control socket."""

    def endpoint(self, name, address, endpoint):
        return endpoint

    def serving(self):
        pass

    def stop(self):
        return defer.succeed(None)
