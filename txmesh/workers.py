"""
The parent's side of ``workers: N`` (issue 10 part 4; docs/operations.md "Workers"): start N worker processes,
talk to each over its private channel, restart one that dies (with backoff when it keeps dying), and stop them all.
The worker's side is txmesh/worker.py; the parent's service (sockets, admin API, reload) is txmesh/workers_parent.py.

The channel is a UNIX socket pair, one end inherited by the worker as descriptor 3; its messages are the hot-restart
control protocol's (txmesh/hot_restart_wire.py: a length, a JSON object, SCM_RIGHTS descriptors), so the listening
sockets travel to a worker exactly as they travel to a new process in a hot restart.  Requests carry an ``id``;
the worker answers ``{"type": "answer", "id": ..., "result": ..., "error": ...}`` and says ``{"type": "serving"}``
once its listeners accept.
"""

import os
import socket
import sys

from twisted.internet import defer
from twisted.internet.error import ProcessDone
from twisted.internet.interfaces import IFileDescriptorReceiver
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol
from twisted.logger import Logger
from zope.interface import implementer

from txmesh.hot_restart_wire import HandoverError, MessageDecoder, closeAll, encode
from txmesh.interfaces import IWorkerLauncher
from txmesh.worker import MAX_MESSAGE, START_TIMEOUT
from txmesh.workers_balance import HANDOFF_FD, ParentHandoff, handoffPair

log = Logger(namespace="txmesh.workers")

# the command a worker runs: twistd's own entry point, as tap.py's users run txmesh
TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


class WorkerError(Exception):
    """A worker did not answer a request (it ended, its channel closed, the request timed out), or failed it."""


class WorkerRefused(WorkerError, ValueError):
    """A worker refused a request as invalid (a bad ``/explain`` query): the admin API answers 400."""


class Worker:
    """
    One worker slot: its index (stable across restarts), the running process, its state (``starting``,
    ``serving``, ``ended``) and what the parent knows of it.
    """

    def __init__(self, index):
        self.index = index
        self.process = None
        self.channel = None
        self.pid = None
        self.state = "ended"
        self.restarts = 0
        self.failures = 0  # deaths in a row, each soon after a start
        self.startedAt = None
        self.servedOnce = False
        self.lastDump = None  # the worker's last answer to ``dump``
        self.admin = None  # the path of its admin API's UNIX socket
        self.restartTimer = None
        self.handoff = None  # the parent's end of its hand-off socket (txmesh/workers_balance.py), while it runs
        self.restartAsked = False  # the parent stopped it to start it again (not a failure)
        self.ended = defer.Deferred()  # fires when the current process ends

    def describe(self, clock):
        dump = self.lastDump or {}
        server = dump.get("server") or {}
        return {"index": self.index, "pid": self.pid, "state": self.state, "restarts": self.restarts,
                "uptime_seconds": round(clock.seconds() - self.startedAt, 3) if self.startedAt is not None else None,
                "config_version": server.get("config_version"), "config_digest": server.get("config_digest"),
                "admin": self.admin}


class WorkerSupervisor:
    """
    Starts ``count`` workers through ``launcher`` (an IWorkerLauncher) and keeps them running.

    @param clock: IReactorTime (the restart backoff, request timeouts, the stop's deadline).
    @param startMessage: ``startMessage(index) -> (message, fds)``: what a worker is started with (the
        configuration the parent runs now, the listening sockets).
    @param stats: the parent's StatsStore: ``server_worker_restarts{worker}``.
    @param serving: ``serving(worker)``, called each time a worker says it serves.
    @param ended: ``ended(worker)``, called when a worker process ended (before any restart).
    @param backoff: (first delay, longest delay) in seconds between a death and the restart; the delay doubles
        with each death that comes less than ``stableAfter`` seconds after a start, and starts over otherwise.
    @param fdset: an IReactorFDSet: each worker then gets a hand-off socket for the connections the parent accepts
        (``connection_balance: exact``), its closes reported to ``connectionClosed(worker, listener name)``.
    """

    def __init__(self, clock, launcher, count, startMessage, stats, serving=None, ended=None, backoff=(0.1, 30.0),
                 stableAfter=10.0, requestTimeout=10.0, fdset=None, connectionClosed=None):
        self.clock = clock
        self.launcher = launcher
        self.startMessage = startMessage
        self.stats = stats
        self.workers = [Worker(i) for i in range(count)]
        self._serving = serving or (lambda worker: None)
        self._ended = ended or (lambda worker: None)
        self.backoff = backoff
        self.stableAfter = stableAfter
        self.requestTimeout = requestTimeout
        self.stopping = False
        self.fdset = fdset
        self._connectionClosed = connectionClosed or (lambda worker, name: None)
        self._ids = 0
        self._restartCounters = {w.index: stats.counter(
            "server_worker_restarts", (("worker", str(w.index)),),
            "Worker processes started again after one ended without being asked to") for w in self.workers}

    def start(self):
        for worker in self.workers:
            self._launch(worker)

    def _launch(self, worker):
        worker.restartTimer = None
        if self.stopping:
            return
        worker.state = "starting"
        worker.startedAt = self.clock.seconds()
        worker.ended = defer.Deferred()
        message, fds = self.startMessage(worker.index)
        worker.admin = (message.get("worker") or {}).get("admin")
        parentEnd = workerEnd = None
        if self.fdset is not None:
            parentEnd, workerEnd = handoffPair()
        try:
            worker.process = self.launcher.launch(message, fds, _WorkerProcess(self, worker),
                                                  _ParentChannel(self, worker), handoff=workerEnd)
        except Exception:
            log.failure("worker {index}: cannot start", index=worker.index)
            worker.process = None
            if parentEnd is not None:
                parentEnd.close()
            self._processEnded(worker, None)
            return
        finally:
            if workerEnd is not None:
                workerEnd.close()  # the worker has its own
        if parentEnd is not None:
            worker.handoff = ParentHandoff(self.fdset, parentEnd, worker, self._connectionClosed)
            worker.handoff.start()
        worker.pid = worker.process.pid
        log.info("worker {index} started: pid {pid}", index=worker.index, pid=worker.pid)

    # -- events --

    def _channelMade(self, worker, channel):
        worker.channel = channel

    def _workerServing(self, worker):
        if worker.state == "starting":
            worker.state = "serving"
            if worker.servedOnce:
                log.info("worker {index} (pid {pid}) serves again", index=worker.index, pid=worker.pid)
            worker.servedOnce = True
            self._serving(worker)

    def _processEnded(self, worker, status):
        lived = self.clock.seconds() - (worker.startedAt or self.clock.seconds())
        worker.state = "ended"
        worker.process = None
        if worker.handoff is not None:
            worker.handoff.stop()
            worker.handoff = None
        if worker.channel is not None:
            worker.channel.transport.loseConnection()
        worker.channel = None
        self._ended(worker)
        ended, worker.ended = worker.ended, defer.Deferred()
        ended.callback(status)
        if self.stopping:
            log.info("worker {index} (pid {pid}) ended: {status}", index=worker.index, pid=worker.pid,
                     status=status)
            return
        if worker.restartAsked:
            worker.restartAsked = False
            log.info("worker {index} (pid {pid}) ended as asked ({status}); starting it again", index=worker.index,
                     pid=worker.pid, status=status)
            worker.restartTimer = self.clock.callLater(0, self._launch, worker)
            return
        worker.failures = worker.failures + 1 if lived < self.stableAfter else 1
        first, longest = self.backoff
        delay = min(longest, first * 2 ** (worker.failures - 1))
        worker.restarts += 1
        self._restartCounters[worker.index].value += 1
        log.error("worker {index} (pid {pid}) ended unexpectedly ({status}) after {lived:.1f}s; starting it again "
                  "in {delay:g}s (restart {restarts})", index=worker.index, pid=worker.pid, status=status,
                  lived=lived, delay=delay, restarts=worker.restarts)
        worker.restartTimer = self.clock.callLater(delay, self._launch, worker)

    # -- requests --

    @property
    def live(self):
        """The workers whose channel is open (started; serving or not yet)."""
        return [w for w in self.workers if w.channel is not None]

    @property
    def serving(self):
        return [w for w in self.workers if w.state == "serving"]

    def request(self, worker, message, fds=(), timeout=None):
        """
        Send ``message`` (a dict; ``id`` is added) with descriptors ``fds`` to ``worker``.
        @return: a Deferred firing with the answer's ``result``; failing with L{WorkerError} when the worker
            refuses, ends or does not answer within ``timeout`` (default ``requestTimeout``).
        """
        if worker.channel is None:
            return defer.fail(WorkerError("worker %d is not running" % (worker.index,)))
        self._ids += 1
        return defer.maybeDeferred(worker.channel.request, dict(message, id=self._ids), fds,
                                   timeout if timeout is not None else self.requestTimeout)

    def requestAll(self, message, workers=None, timeout=None):
        """``request`` to each worker of ``workers`` (default: every live one).  @return: a Deferred firing with
        [(worker, result or a Failure)]."""
        workers = self.live if workers is None else workers
        return settle([self.request(w, message, timeout=timeout) for w in workers]).addCallback(
            lambda results: list(zip(workers, results)))

    def restart(self, worker):
        """Stop ``worker`` (SIGTERM: it drains) and start it again once it ended; not counted as a failure."""
        if worker.process is not None:
            worker.restartAsked = True
            _signal(worker, "TERM")

    # -- stop --

    def stop(self, timeout, signal="TERM"):
        """
        Stop every worker: ``signal`` to each (SIGTERM: each drains as on its own stop, up to its
        ``drain_timeout``), SIGKILL to those still running ``timeout`` seconds later.  No restart from now on.
        @return: a Deferred firing once every worker ended.
        """
        self.stopping = True
        ended = []
        for worker in self.workers:
            if worker.restartTimer is not None and worker.restartTimer.active():
                worker.restartTimer.cancel()
                worker.restartTimer = None
            if worker.process is not None:
                ended.append(worker.ended)
                _signal(worker, signal)
        if not ended:
            return defer.succeed(None)
        timer = self.clock.callLater(timeout, self._kill)
        done = defer.gatherResults(ended)

        def cancel(result):
            if timer.active():
                timer.cancel()
            return None

        return done.addBoth(cancel)

    def _kill(self):
        for worker in self.workers:
            if worker.process is not None:
                log.warn("worker {index} (pid {pid}) still runs after the stop timeout: SIGKILL", index=worker.index,
                         pid=worker.pid)
                _signal(worker, "KILL")


def settle(ds):
    """A Deferred firing with the results of ``ds`` in order, a Failure in place of each that failed."""
    return defer.DeferredList(ds, consumeErrors=True).addCallback(lambda results: [r for _, r in results])


def _signal(worker, name):
    try:
        worker.process.signalProcess(name)
    except (OSError, Exception) as e:  # ProcessExitedAlready: its end is on the way
        log.debug("worker {index}: signal {name}: {e}", index=worker.index, name=name, e=e)


class _WorkerProcess(ProcessProtocol):
    def __init__(self, supervisor, worker):
        self.supervisor = supervisor
        self.worker = worker

    def processEnded(self, reason):
        status = "exit 0" if reason.check(ProcessDone) else reason.getErrorMessage()
        self.supervisor._processEnded(self.worker, status)


@implementer(IFileDescriptorReceiver)
class _ParentChannel(Protocol):
    """The parent's end of one worker's channel: requests out, answers matched by ``id``."""

    def __init__(self, supervisor, worker):
        self.supervisor = supervisor
        self.worker = worker
        self.decoder = MessageDecoder(MAX_MESSAGE)
        self.pending = {}  # id -> (Deferred, timeout DelayedCall)

    def connectionMade(self):
        self.supervisor._channelMade(self.worker, self)

    def request(self, message, fds, timeout):
        d = defer.Deferred()
        timer = self.supervisor.clock.callLater(timeout, self._timedOut, message["id"], message["type"], timeout)
        self.pending[message["id"]] = (d, timer)
        if fds:
            # the channel's decoder hands a message the descriptors it declares (without the count, a reload's new
            # listening sockets stayed in the worker's decoder and it refused the reload)
            message = dict(message, fds=len(fds))
        for fd in fds:
            self.transport.sendFileDescriptor(fd)
        self.transport.write(encode(message, MAX_MESSAGE))
        return d

    def _timedOut(self, id, kind, timeout):
        d, _ = self.pending.pop(id, (None, None))
        if d is not None:
            d.errback(WorkerError("worker %d did not answer '%s' within %gs" % (self.worker.index, kind, timeout)))

    def fileDescriptorReceived(self, fd):
        os.close(fd)  # a worker sends none

    def dataReceived(self, data):
        try:
            messages = self.decoder.feed(data)
        except HandoverError as e:
            log.error("worker {index}: broken channel: {reason}", index=self.worker.index, reason=e.reason)
            self.transport.loseConnection()
            return
        for message, fds in messages:
            closeAll(fds)
            if message["type"] == "serving":
                self.supervisor._workerServing(self.worker)
            elif message["type"] == "answer":
                d, timer = self.pending.pop(message.get("id"), (None, None))
                if d is None:
                    continue  # answered after its timeout
                timer.cancel()
                if message.get("error") is not None:
                    kind = WorkerRefused if message.get("refused") else WorkerError
                    d.errback(kind("worker %d: %s" % (self.worker.index, message["error"])))
                else:
                    d.callback(message.get("result"))

    def connectionLost(self, reason):
        self.decoder.close()
        pending, self.pending = self.pending, {}
        for d, timer in pending.values():
            timer.cancel()
            d.errback(WorkerError("worker %d: its channel closed" % (self.worker.index,)))
        if self.worker.channel is self:
            self.worker.channel = None


class _ChannelFactory(Factory):
    noisy = False

    def __init__(self, protocol):
        self.protocol = protocol

    def buildProtocol(self, addr):
        return self.protocol


@implementer(IWorkerLauncher)
class ProcessLauncher:
    """
    Starts a worker as ``TWISTD -n --pidfile= txmesh --config PATH --worker-fd 3 ...`` with the reactor's
    ``spawnProcess``: the worker inherits the parent's standard output and error (its log lines name it) and one
    end of a new socket pair as descriptor 3, on which the start message and the sockets go at once.

    @param reactor: IReactorProcess and IReactorSocket (``adoptStreamConnection``).
    @param args: the txmesh options after ``txmesh`` (``--config``, ``--log-level``, ``--log-format``).
    @param environ: the workers' environment (the parent's, without ``$NOTIFY_SOCKET``: only the parent talks to
        systemd).
    """

    def __init__(self, reactor, args, environ, twistd=TWISTD):
        self.reactor = reactor
        self.argv = list(twistd) + ["-n", "--pidfile=", "txmesh"] + list(args) + ["--worker-fd", "3"]
        self.environ = dict(environ)

    def launch(self, message, fds, process, channel, handoff=None):
        parentEnd, childEnd = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        devnull = os.open(os.devnull, os.O_RDONLY)
        childFDs = {0: devnull, 1: 1, 2: 2, 3: childEnd.fileno()}
        if handoff is not None:
            childFDs[HANDOFF_FD] = handoff.fileno()
            message = dict(message, worker=dict(message["worker"], handoff_fd=HANDOFF_FD))
        try:
            transport = self.reactor.spawnProcess(process, self.argv[0], self.argv, env=self.environ,
                                                  childFDs=childFDs)
        except Exception:
            parentEnd.close()
            raise
        finally:
            os.close(devnull)
            childEnd.close()
        try:
            # the worker reads it before its reactor runs; a message larger than the socket's buffer waits for it
            parentEnd.settimeout(START_TIMEOUT)
            data = encode(message, MAX_MESSAGE)
            sent = socket.send_fds(parentEnd, [data], list(fds)) if fds else parentEnd.send(data)
            parentEnd.sendall(data[sent:])
            self.reactor.adoptStreamConnection(parentEnd.fileno(), socket.AF_UNIX, _ChannelFactory(channel))
        except (OSError, HandoverError):
            log.failure("worker: cannot hand over its start message; stopping pid {pid}", pid=transport.pid)
            transport.signalProcess("KILL")
        finally:
            parentEnd.close()
        return transport
