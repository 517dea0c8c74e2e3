"""
Exact connection balancing for ``workers: N`` (issue 10 part 4; a listener's ``connection_balance: exact``, Envoy's
``connection_balance_config: exact_balance``; docs/operations.md "Workers").

By default every worker accepts from the shared listening socket and the kernel decides which worker takes a
connection (``kernel``).  With ``exact`` the **parent** accepts: it reads a duplicate of the listening descriptor
(L{ExactBalancer}) and hands each accepted connection to the serving worker with the fewest open connections on
that listener, over the worker's hand-off socket (a UNIX ``SOCK_SEQPACKET`` pair made per worker at its start, the
worker's descriptor 4): one record per connection, ``b"h" + listener name`` with the descriptor by SCM_RIGHTS.  The
worker adopts it into the listener's factory as if its own port had accepted it (L{HandedPort}: the worker's port on
the shared socket never accepts), and sends ``b"c" + listener name`` back when the connection closes, so the
parent's counts are the workers' open connections.  The cost is one more system call pair per connection (accept
and sendmsg in the parent, recvmsg in the worker): for long-lived gRPC and Dubbo connections, where the kernel's
choice sticks for the connection's life.
"""

import errno
import os
import socket

from twisted.internet import defer, main
from twisted.internet.interfaces import IListeningPort, IPushProducer, IReadDescriptor
from twisted.logger import Logger
from zope.interface import implementer

from txmesh import tcp
from txmesh.twisted_private import adoptTCPConnection

log = Logger(namespace="txmesh.workers")

HANDOFF_FD = 4  # the worker's end of its hand-off socket
HANDOFF = b"h"
CLOSED = b"c"
ACCEPTS_PER_WAKEUP = 64
# accept(2) failing for lack of descriptors or memory: the balancer stops reading for this long (doubling to 1 s)
ACCEPT_BACKOFF = (0.05, 1.0)
_RESOURCE_ERRORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


def handoffPair():
    """(parent's end, worker's end) of a new hand-off socket pair; the parent's is non-blocking."""
    parentEnd, workerEnd = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    parentEnd.setblocking(False)
    return parentEnd, workerEnd


@implementer(IReadDescriptor)
class _Reader:
    """A non-blocking socket read on the reactor (IReadDescriptor), closed with its ``stop``."""

    def __init__(self, reactor, sock):
        self.reactor = reactor
        self.sock = sock
        self.reading = False

    def fileno(self):
        return self.sock.fileno()  # -1 once closed

    def logPrefix(self):
        return type(self).__name__

    def start(self):
        if not self.reading and self.sock.fileno() >= 0:
            self.reading = True
            self.reactor.addReader(self)

    def pause(self):
        if self.reading:
            self.reading = False
            self.reactor.removeReader(self)

    def stop(self):
        self.pause()
        self.sock.close()

    def connectionLost(self, reason):
        self.reading = False
        self.sock.close()


class ParentHandoff(_Reader):
    """
    The parent's end of one worker's hand-off socket: ``send`` a connection, hear its close (``closed(worker,
    listener name)``).
    """

    def __init__(self, reactor, sock, worker, closed):
        super().__init__(reactor, sock)
        self.worker = worker
        self._closed = closed

    def send(self, name, fd):
        """Hand connection ``fd`` of listener ``name`` over; False when the worker's socket is full or gone."""
        try:
            socket.send_fds(self.sock, [HANDOFF + name.encode()], [fd])
        except OSError:
            return False
        return True

    def doRead(self):
        while True:
            try:
                data = self.sock.recv(1024)
            except (BlockingIOError, InterruptedError):
                return None
            except OSError:
                return main.CONNECTION_LOST
            if not data:
                return main.CONNECTION_DONE
            if data[:1] == CLOSED:
                self._closed(self.worker, data[1:].decode("utf-8", "replace"))


class ExactBalancer(_Reader):
    """
    The parent's accept loop of one ``connection_balance: exact`` listener (see the module docstring).

    @param port: the parent's listening port of the listener (paused: only this reads its socket, on a duplicate).
    @param workers: ``workers()`` -> the serving workers (L{txmesh.workers.Worker}, with their ``handoff``).
    @param stats: the parent's StatsStore: ``downstream_cx_handed`` and ``downstream_cx_handoff_failed``.
    """

    def __init__(self, reactor, name, port, workers, stats):
        sock = socket.socket(fileno=os.dup(port.fileno()))
        sock.setblocking(False)
        super().__init__(reactor, sock)
        self.name = name
        self.workers = workers
        self.counts = {}  # worker index -> connections handed there and not closed yet
        labels = (("listener", name),)
        self.handed = stats.counter("downstream_cx_handed", labels,
                                    "Connections the parent accepted and handed to a worker (connection_balance: exact)")
        self.failed = stats.counter("downstream_cx_handoff_failed", labels,
                                    "Connections the parent accepted and closed: no worker could take them, or accept "
                                    "failed for lack of descriptors or memory (connection_balance: exact)")
        self._delay = ACCEPT_BACKOFF[0]
        self._resume = None

    def logPrefix(self):
        return "exact-balance %s" % (self.name,)

    def doRead(self):
        for _ in range(ACCEPTS_PER_WAKEUP):
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return None
            except OSError as e:
                if e.errno in _RESOURCE_ERRORS:
                    self._backOff(e)
                    return None
                continue  # ECONNABORTED and friends: that connection is gone, the next may not be
            try:
                self.handOver(conn)
            finally:
                conn.close()  # the worker holds its own descriptor now
        self._delay = ACCEPT_BACKOFF[0]
        return None

    def handOver(self, conn):
        """Give ``conn`` to the serving worker with the fewest open connections here; close it if none takes it."""
        for worker in sorted(self.workers(), key=lambda w: (self.counts.get(w.index, 0), w.index)):
            if worker.handoff is not None and worker.handoff.send(self.name, conn.fileno()):
                self.counts[worker.index] = self.counts.get(worker.index, 0) + 1
                self.handed.value += 1
                return True
        self.failed.value += 1
        log.warn("listener {name}: no worker could take a connection (connection_balance: exact); closed it",
                 name=self.name)
        return False

    def closed(self, worker):
        """A connection ``worker`` had from here closed."""
        count = self.counts.get(worker.index, 0)
        if count > 0:
            self.counts[worker.index] = count - 1

    def workerEnded(self, worker):
        """``worker`` ended: its connections are gone with it."""
        self.counts.pop(worker.index, None)

    def _backOff(self, error):
        self.failed.value += 1
        delay, self._delay = self._delay, min(self._delay * 2, ACCEPT_BACKOFF[1])
        log.warn("listener {name}: cannot accept ({error}); not accepting for {delay}s", name=self.name,
                 error=errno.errorcode.get(error.errno, error.errno), delay=delay)
        self.pause()
        self._resume = self.reactor.callLater(delay, self._resumed)

    def _resumed(self):
        self._resume = None
        self.start()

    def stop(self):
        if self._resume is not None and self._resume.active():
            self._resume.cancel()
        self._resume = None
        super().stop()


class _HandedServer(tcp.Server):
    """A connection the parent handed over: its end is reported back (``lost``)."""

    lost = None

    def connectionLost(self, reason):
        try:
            super().connectionLost(reason)
        finally:
            lost, self.lost = self.lost, None
            if lost is not None:
                lost()


@implementer(IListeningPort, IPushProducer)
class HandedPort:
    """
    A worker's ``connection_balance: exact`` listener: the adopted port on the shared socket stays paused (the parent
    accepts), and connections come by ``adopt``.  Pausing (the accept gate, a drain) makes ``adopt`` refuse;
    ``stopListening`` closes this process's descriptor of the socket.
    """

    def __init__(self, reactor, port, factory):
        self.reactor = reactor
        self.port = port
        self.factory = factory
        self.accepting = True
        self.listening = True
        IPushProducer(port).pauseProducing()

    def adopt(self, fd, lost):
        """
        Serve connection ``fd`` (this call takes it) as if this listener had accepted it; ``lost()`` is called when
        it closes.  @return: whether it was taken (a refused one is closed, and ``lost`` is not called).
        """
        try:
            if not (self.accepting and self.listening):
                return False
            os.set_blocking(fd, False)  # accept(2) in the parent made it blocking
            probe = socket.socket(fileno=fd)  # reads the descriptor's family; detached, so fd stays open
            family = probe.family
            probe.detach()
            server = adoptTCPConnection(_HandedServer, self.reactor, fd, family, self.factory)
            if server is None:
                return False  # the factory refused it (overload): closed already
            server.lost = lost
            return True
        finally:
            os.close(fd)

    def pauseProducing(self):
        self.accepting = False

    def resumeProducing(self):
        self.accepting = True

    def stopProducing(self):
        self.stopListening()

    def startListening(self):
        pass

    def stopListening(self):
        self.listening = False
        return defer.maybeDeferred(self.port.stopListening)

    def getHost(self):
        return self.port.getHost()


class WorkerHandoff(_Reader):
    """
    A worker's end of its hand-off socket: each record is a connection for a listener of ``ports`` ({listener name:
    L{HandedPort}}, kept by the worker's link); the close of each is reported back.
    """

    def __init__(self, reactor, fd, ports):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET, fileno=fd)
        sock.setblocking(False)
        super().__init__(reactor, sock)
        self.ports = ports
        self.refused = 0

    def doRead(self):
        while True:
            try:
                data, fds, _, _ = socket.recv_fds(self.sock, 1024, 8, socket.MSG_CMSG_CLOEXEC)
            except (BlockingIOError, InterruptedError):
                return None
            except OSError:
                return main.CONNECTION_LOST
            if not data and not fds:
                return main.CONNECTION_DONE
            name = data[1:].decode("utf-8", "replace") if data[:1] == HANDOFF else None
            for fd in fds:
                port = self.ports.get(name)
                if port is None or not port.adopt(fd, lambda name=name: self.closed(name)):
                    if port is None:
                        os.close(fd)
                    self.refused += 1
                    self.closed(name or "")

    def closed(self, name):
        """Tell the parent a connection of listener ``name`` closed (best effort: a full socket drops the count)."""
        try:
            self.sock.send(CLOSED + name.encode())
        except OSError:
            pass
