"""
A worker process's side of ``workers: N`` (issue 10 part 4; docs/operations.md "Workers"; the parent is
txmesh/workers.py).

The parent starts each worker as ``twistd -n --pidfile= txmesh --config PATH --worker-fd 3``: descriptor 3 is one
end of a UNIX socket pair, the worker's private channel to the parent.  Before its service is built the worker
reads the start message there (``receiveStart``, blocking and bounded): the listening sockets by SCM_RIGHTS, named
as a hot restart names them (``listener:<name>``), and the configuration text the parent validated, its version
and the worker's index (the hot-restart control protocol's messages, txmesh/hot_restart_wire.py).  The worker then
builds an ordinary MeshService whose L{WorkerLink} (its IHotRestart) adopts those sockets with the reactor's
``adoptStreamPort`` (never binding a listener itself) and puts its admin API on a UNIX socket in the parent's
private directory.  Over the channel, the parent asks (one JSON message each way, with an ``id``):

- ``apply``: a new configuration text (and the sockets of listeners it adds or moves): applied through the mesh's
  IConfigApplier, answered with its outcome;
- ``dump``: the counters (``StatsStore.export``), ``/clusters``, ``/server_info`` and ``/listeners`` of this worker;
- ``control``: the admin switches (healthcheck fail/ok, drain listeners, log level).

The worker tells the parent ``serving`` once its listeners accept.  When the channel closes (the parent is gone)
the worker stops as on SIGTERM; SIGHUP at a worker reloads nothing (the parent owns the configuration).
"""

import dataclasses
import os
import socket

from twisted.internet import defer
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IFileDescriptorReceiver, IStreamServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from zope.interface import implementer

from txmesh import config as _config
from txmesh import tcp
from txmesh.control import MeshControl
from txmesh.errors import ConfigError
from txmesh.hot_restart import InheritingEndpoint, listenInherited
from txmesh.hot_restart_takeover import receiveSockets
from txmesh.hot_restart_wire import HandoverError, MessageDecoder, closeAll, encode
from txmesh.interfaces import IConfigSource, IHotRestart
from txmesh.twisted_private import capAcceptsPerWakeup, shareListeningPort
from txmesh.workers_balance import HandedPort, WorkerHandoff

# the channel carries stats dumps and configuration texts: larger than a hand-over's messages
MAX_MESSAGE = 32 * 1024 * 1024
START_TIMEOUT = 30.0
# connections a worker accepts per readable event on a shared socket (Twisted's default grows to hundreds)
ACCEPTS_PER_WAKEUP = 1

log = Logger(namespace="txmesh.worker")


def receiveStart(fd, timeout=START_TIMEOUT):
    """
    Read the parent's start message on the inherited control socket ``fd`` (blocking, before the reactor runs).
    @return: an L{txmesh.hot_restart_takeover.Inheritance}: the listening sockets, and in ``message["worker"]``
        ``index``, ``config`` (the text), ``filename``, ``version`` and ``admin`` (the worker's admin socket path).
    @raise HandoverError: nothing came in time, or something broken.
    """
    sock = socket.socket(fileno=fd)
    sock.settimeout(timeout)
    try:
        inheritance = receiveSockets(sock, MessageDecoder(MAX_MESSAGE), keepLater=True)
    except (OSError, socket.timeout) as e:
        sock.close()
        raise HandoverError("no start message from the parent: %s" % (e,)) from None
    sock.settimeout(None)
    start = inheritance.message.get("worker")
    if not isinstance(start, dict) or not isinstance(start.get("config"), str) or type(start.get("index")) is not int:
        inheritance.closeUnused()
        sock.close()
        raise HandoverError("the start message lacks the worker's index and configuration")
    return inheritance


def loadStart(inheritance):
    """
    The MeshConfig of the start message (validated as at any start), its admin API on the worker's own UNIX socket
    (a stale one, left by the worker this one replaces, is removed first).  @raise ConfigError.
    """
    start = inheritance.message["worker"]
    config = ParentConfig(start["config"], start.get("filename") or "<parent>", origins=start.get("origins")).read()
    if start["index"] != 0 and config.registration is not None:
        # the local app is registered once, by worker 0: N workers would publish the same node N times
        config = dataclasses.replace(config, registration=None)
    path = start.get("admin")
    if not path:
        return config
    admin = dataclasses.replace(config.admin, address=adminAddress(path), unixPath=path)
    return dataclasses.replace(config, admin=admin)


def adminAddress(path):
    """The endpoint string of a worker's admin socket at ``path`` (mode 0600)."""
    return "unix:%s:mode=600" % (path.replace(":", "\\:"),)


@implementer(IStreamServerEndpoint)
class _NotHandedOver:
    """A listener the parent sent no socket for: a worker never binds one itself (its siblings could not)."""

    def __init__(self, name, address):
        self.name = name
        self.address = address

    def listen(self, factory):
        return defer.fail(CannotListenError(None, self.address, "the parent handed over no socket for %s"
                                            % (self.name,)))


@implementer(IConfigSource)
class ParentConfig:
    """
    The configuration text the parent sent (already validated there), as an IConfigSource: ``name`` and
    ``location`` are those of the parent's source (``file`` and mesh.yaml, or ``xds`` and the control plane when the
    parent built the text from xDS resources, txmesh/workers_xds.py), ``origins`` the parts' xDS origins
    (MeshConfig.origins, for ``/config_dump``).
    """

    def __init__(self, text, filename, name="file", origins=None, location=None):
        self.text = text
        self.filename = filename
        self.location = location or filename
        self.name = name
        self.origins = origins if isinstance(origins, dict) else {}

    def read(self):
        config = _config.loads(self.text, filename=self.filename)
        return dataclasses.replace(config, origins=self.origins) if self.origins else config


class _ParentReloads:
    """A worker's SIGHUP and ``POST /reload``: refused, the parent owns the configuration."""

    def __init__(self, link):
        self.link = link

    def reload(self, trigger):
        log.warn("reload ({trigger}) ignored: worker {index} takes its configuration from its parent (pid {ppid}); "
                 "reload the parent", trigger=trigger, index=self.link.index, ppid=os.getppid())
        return defer.succeed({"outcome": "rejected", "error": "a worker reloads with its parent: reload pid %d"
                              % (os.getppid(),), "version": self.link.mesh.applier.version.version})


@implementer(IHotRestart)
class WorkerLink:
    """
    The worker's end of the parent's channel, and the IHotRestart its MeshService takes its ports from.

    @param reactor: IReactorSocket (``adoptStreamPort``, ``adoptStreamConnection``), IReactorUNIX (the admin).
    @param inheritance: what L{receiveStart} returned.
    @param stopProcess: called with no argument when the parent is gone (tap.py: ``reactor.stop``).
    """

    def __init__(self, reactor, inheritance, stopProcess):
        self.reactor = reactor
        self.inheritance = inheritance
        self._stopProcess = stopProcess
        start = inheritance.message["worker"]
        self.index = start["index"]
        self.version = start.get("version", 1)
        self.adminPath = start.get("admin")
        self.mesh = None
        self.control = None
        self.channel = None
        # connection_balance: exact (txmesh/workers_balance.py): the sockets whose connections the parent accepts and
        # hands over on descriptor ``handoff_fd``, and this worker's ports for them by listener name
        self.exact = set(start.get("exact") or ())
        # connection_balance: reuse_port (txmesh/reuse_port.py): sockets that are this worker's own
        self.reusePort = set(start.get("reuse_port") or ())
        self.handed = {}
        self.handoff = None
        self._handoffFd = start.get("handoff_fd")

    def attach(self, mesh):
        """Serve ``mesh`` (its MeshService) to the parent: its version takes the parent's number, SIGHUP is the
        parent's, and the channel is read from now on."""
        self.mesh = mesh
        self.control = MeshControl(mesh, self.reactor)
        mesh.reloader = _ParentReloads(self)
        self._renumber(self.version)
        if type(self._handoffFd) is int:
            self.handoff = WorkerHandoff(self.reactor, self._handoffFd, self.handed)
            self.handoff.start()
        connection = self.inheritance.connection
        try:
            self.reactor.adoptStreamConnection(connection.fileno(), socket.AF_UNIX, _ChannelFactory(self))
        finally:
            connection.close()
        # requests the parent sent before this process read its channel (the admin polled while it started)
        early, self.inheritance.early = self.inheritance.early, []
        for message, fds in early:
            self.messageReceived(message, fds)

    # -- IHotRestart --

    def endpoint(self, name, address, endpoint):
        if name == "admin":
            if self.adminPath is None:
                return _NotHandedOver(name, address)
            return serverFromString(self.reactor, adminAddress(self.adminPath))
        return InheritingEndpoint(self, name, address, endpoint)

    def listen(self, name, address, endpoint, factory):
        d = listenInherited(self.reactor, self.inheritance, name, address, _NotHandedOver(name, address), factory)

        def share(port):
            shareListeningPort(port)  # the parent and the siblings hold the socket too: never shut it down here
            if name in self.exact and self.handoff is not None:
                # the parent accepts and hands connections over: this port never accepts
                handed = self.handed[name.split(":", 1)[1]] = HandedPort(self.reactor, port, factory)
                return handed
            if isinstance(port, tcp.Port) and name not in self.reusePort:
                capAcceptsPerWakeup(port, ACCEPTS_PER_WAKEUP)  # leave the rest of a burst to the siblings
            return port

        return d.addCallback(share)

    def serving(self):
        self.send({"type": "serving", "pid": os.getpid()})

    def stop(self):
        return defer.succeed(None)

    # -- the channel --

    def send(self, message):
        if self.channel is not None:
            self.channel.transport.write(encode(message, MAX_MESSAGE))

    def channelLost(self):
        self.channel = None
        if self.mesh is None or self.mesh.draining:
            return  # stopping already: the reactor closes the channel on its way out
        log.warn("worker {index}: the parent is gone; stopping", index=self.index)
        self._stopProcess()

    def messageReceived(self, message, fds):
        kind = message["type"]
        handler = {"apply": self._apply, "dump": self._dump, "control": self._control}.get(kind)
        if handler is None:
            closeAll(fds)
            self._answer(message, error="unknown request '%s'" % (kind,))
            return
        defer.maybeDeferred(handler, message, fds).addCallbacks(
            lambda result: self._answer(message, result=result),
            lambda f: self._answer(message, error=f.getErrorMessage(), refused=True)
            if f.check(ValueError, LookupError) else self._failed(message, f))

    def _failed(self, message, failure):
        log.failure("worker {index}: the parent's '{kind}' request failed", failure, index=self.index,
                    kind=message["type"])
        self._answer(message, error="internal error: %s" % (failure.getErrorMessage(),))

    def _answer(self, message, result=None, error=None, refused=False):
        self.send({"type": "answer", "id": message.get("id"), "result": result, "error": error, "refused": refused})

    @defer.inlineCallbacks
    def _apply(self, message, fds):
        names = message.get("sockets") or []
        if not isinstance(names, list) or len(names) != len(fds):
            closeAll(fds)
            raise ValueError("'sockets' must name each descriptor")
        for name, fd in zip(names, fds):
            self.inheritance.add(name, socket.socket(fileno=fd))
        self.exact = set(message.get("exact") or ())
        self.reusePort = set(message.get("reuse_port") or ())
        source = ParentConfig(message.get("config"), message.get("filename") or self.mesh.config.filename,
                              name=message.get("source") or "file", origins=message.get("origins"),
                              location=message.get("location"))
        try:
            config = source.read()
        except ConfigError as e:
            applier = self.mesh.applier
            return {"outcome": "rejected", "error": str(e), "version": applier.version.version,
                    "digest": applier.version.digest, "changes": None}
        result = yield self.mesh.applier.apply(config, source)
        if result["outcome"] == "applied":
            self._renumber(message.get("version", result["version"]))
            result["version"] = self.mesh.applier.version.version
        return result

    def _renumber(self, version):
        self.mesh.applier.version.renumber(version)
        self.mesh.stats.gauge("config_version").value = version

    def _dump(self, message, fds):
        closeAll(fds)
        control = self.control
        return {"stats": self.mesh.stats.export(), "clusters": self.mesh.clusters.describe(),
                "server": control.serverInfo(), "listeners": control.describeListeners(), "pid": os.getpid()}

    def _control(self, message, fds):
        closeAll(fds)
        control = self.control
        actions = {"fail_healthcheck": lambda: control.failHealthcheck(),
                   "ok_healthcheck": lambda: control.okHealthcheck(),
                   "drain_listeners": lambda: control.drainListeners(bool(message.get("graceful"))),
                   "set_log_level": lambda: control.setLogLevel(str(message.get("level"))),
                   "reopen_logs": lambda: self.mesh.reopenLogs(),
                   "explain": lambda: control.explain(message.get("args") or {})}
        action = actions.get(message.get("action"))
        if action is None:
            raise ValueError("unknown action %r" % (message.get("action"),))
        return action()


@implementer(IFileDescriptorReceiver)
class _Channel(Protocol):
    """The worker's end of the parent's channel: messages in (with descriptors), ``link.messageReceived``."""

    def __init__(self, link):
        self.link = link
        # the start message's decoder goes on: it may hold the start of a request sent right after it
        self.decoder = link.inheritance.decoder or MessageDecoder(MAX_MESSAGE)

    def connectionMade(self):
        self.link.channel = self

    def fileDescriptorReceived(self, fd):
        self.decoder.feed(b"", [fd])

    def dataReceived(self, data):
        try:
            messages = self.decoder.feed(data)
        except HandoverError as e:
            log.error("worker: the parent's channel broke: {reason}", reason=e.reason)
            self.transport.loseConnection()
            return
        for message, fds in messages:
            self.link.messageReceived(message, fds)

    def connectionLost(self, reason):
        self.decoder.close()
        self.link.channelLost()


class _ChannelFactory(Factory):
    noisy = False

    def __init__(self, link):
        self.link = link

    def buildProtocol(self, addr):
        return _Channel(self.link)
