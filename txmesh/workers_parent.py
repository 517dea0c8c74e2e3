"""
The parent process of ``workers: N`` (issue 10 part 4, issue 13 part 6; docs/operations.md "Workers"): the process
twistd (and systemd) knows.  It binds every listener (or takes systemd's sockets, or a hot restart's) and never
accepts on them, starts the workers (txmesh/workers.py) that serve them, serves the admin API with the workers'
figures merged (txmesh/worker_stats.py), and owns the configuration: SIGHUP and ``POST /reload`` validate the file
once here, then every worker applies it.

- ``/stats``, ``/metrics``, ``/clusters``, ``/server_info``, ``/listeners`` and ``/status.json`` ask every worker
  first (one ``dump`` each, 2 s at most; a worker that does not answer is shown as last seen); the admin's
  switches (``/healthcheck/fail`` and ``/ok``, ``/drain_listeners``, ``/logging``, ``/reopen_logs``) reach every
  worker; ``/explain`` asks one.
- A reload is applied by every worker or by none: when one refuses (or does not answer), those that applied it are
  given the running configuration again (a worker that cannot take it back is restarted, with the running
  configuration), the reload is reported rejected and the version stays.  A reload waits for no worker that is
  starting: it is refused until every worker serves.
- SIGTERM: the parent closes its copies of the listening sockets (no ``shutdown(2)``: the socket stops listening
  once every worker closed its own), tells every worker to stop (SIGTERM: each drains as a single txmesh does,
  up to ``drain_timeout``) and exits once all ended (SIGKILL for those still running 10 s after their drain
  timeout).
"""

import os
import random
import signal
import tempfile

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService
from twisted.internet import defer
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Factory
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource, getChildForRequest
from twisted.web.server import NOT_DONE_YET

from txmesh import config as _config
from txmesh.admin import makeAdminSite
from txmesh.admin_security import BearerTokenFile, removeStaleUnixSocket
from txmesh.config_diff import ADDRESS, diffConfigs
from txmesh.control import configDigest
from txmesh.detect_config import INTERNAL
from txmesh.errors import ConfigError
from txmesh.hot_restart import NoHotRestart
from txmesh.logs import describeAddress
from txmesh.reload import ConfigVersion
from txmesh.reuse_port import ReusePortEndpoint
from txmesh.stats import StatsStore
from txmesh.systemd import MeshStatus, NullNotifier
from txmesh.twisted_private import raiseBindErrorsSynchronously, shareListeningPort
from txmesh.worker_stats import MergedStats, Retired, mergeClusters
from txmesh.workers import WorkerSupervisor, settle
from txmesh.workers_balance import ExactBalancer
from txmesh.workers_control import ParentControl
from txmesh.workers_xds import ParentXds, workerText

# how long the admin API waits for a worker's figures before it shows the last ones it has
GATHER_TIMEOUT = 2.0
# how long after its drain timeout a stopping worker gets before SIGKILL
STOP_GRACE = 10.0
# how long an xDS update waits for a starting (or restarting) worker to serve before it is NACKed
XDS_WAIT_FOR_WORKERS = 30.0


def readConfig(path):
    """(text, MeshConfig) of the file at ``path``: the text the workers get is the text validated here."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError("cannot read configuration: %s" % (e,), filename=path) from e
    return text, _config.loads(text, filename=path)


def balancedSockets(config, balance):
    """The socket names (``listener:<name>``) of ``config``'s ``connection_balance: <balance>`` listeners."""
    return sorted("listener:" + lc.name for lc in config.listeners
                  if lc.connectionBalance == balance and lc.address != INTERNAL)


def exactSockets(config):
    """The socket names of ``config``'s ``connection_balance: exact`` listeners (the parent accepts for them)."""
    return balancedSockets(config, "exact")


class _NeverAccepts(Factory):
    """The parent's listening ports are paused at once: nothing is ever accepted here."""

    noisy = False

    def buildProtocol(self, addr):
        return None


class _Bound:
    """The bound port of one listener, as txmesh.startup's summary reads ``acceptBackoffs``."""

    def __init__(self, ports):
        self.ports = ports


class GatherFirst(Resource):
    """
    The admin API's root in the parent: a GET or HEAD asks the workers for their figures (``gather()``) before the
    page renders from them; other methods render at once.
    """

    isLeaf = True

    def __init__(self, root, gather):
        super().__init__()
        self.root = root
        self.gather = gather

    def render(self, request):
        if request.method not in (b"GET", b"HEAD"):
            return self._render(request)
        finished = []
        request.notifyFinish().addBoth(finished.append)

        def render(_):
            body = self._render(request)
            if body is not NOT_DONE_YET and not finished:
                request.setHeader(b"content-length", b"%d" % len(body))
                request.write(body)
                request.finish()

        self.gather().addBoth(render)
        return NOT_DONE_YET

    def _render(self, request):
        return getChildForRequest(self.root, request).render(request)


class WorkersParent(MultiService):
    """
    The parent of ``config.workers`` workers (see the module docstring).

    @param text: the configuration file's text ``config`` was loaded from (the workers get it).
    @param launcher: the IWorkerLauncher (txmesh.workers.ProcessLauncher).
    @param notifier: the IServiceNotifier: READY once every worker serves, RELOADING/READY around a reload,
        STOPPING at the drain.
    @param hotRestart: the IHotRestart the listening sockets and the admin's come from (and are handed over by).
    @param runtimeDir: the private directory of the workers' admin sockets (default: a new one, mode 0700).
    @param rng: a random.Random (the xDS client's balancer and reconnect jitter).
    @ivar xds: the L{txmesh.workers_xds.ParentXds} of ``dynamic_resources``, or None.
    """

    log = Logger()
    reopenSignal = signal.SIGUSR1
    reloadSignal = signal.SIGHUP

    def __init__(self, config, text, reactor, launcher, notifier=None, hotRestart=None, installSignal=signal.signal,
                 runtimeDir=None, gatherInterval=5.0, backoff=(0.1, 30.0), rng=None):
        MultiService.__init__(self)
        self.config = config
        self.text = text
        self.reactor = reactor
        self.notifier = notifier if notifier is not None else NullNotifier()
        self.hotRestart = hotRestart if hotRestart is not None else NoHotRestart()
        self.stats = StatsStore()
        self.merged = MergedStats(self.stats)
        self.retired = Retired()
        self.version = ConfigVersion(config, "file", reactor.seconds())
        self.reloadSuccess = self.stats.counter("config_reload_success",
                                                help="Reloads applied (or with nothing to change)")
        self.reloadFailed = self.stats.counter("config_reload_failed",
                                               help="Reloads rejected (invalid file, a part only a restart changes, "
                                                    "a port that cannot be bound): the old config keeps serving")
        self.versionGauge = self.stats.gauge("config_version", help="The running config's version (1 at start)")
        self.versionGauge.value = 1
        self.ports = {}  # "listener:<name>" -> the parent's (paused) listening port
        # connection_balance: reuse_port listeners (txmesh/reuse_port.py): "listener:<name>" -> the SO_REUSEPORT
        # sockets of workers 1..N-1 (worker 0's is in ports)
        self.siblings = {}
        self.runtimeDir = runtimeDir or tempfile.mkdtemp(prefix="txmesh-workers-")
        self.supervisor = WorkerSupervisor(reactor, launcher, config.workers, self.startMessage, self.stats,
                                           serving=self._workerServing, ended=self._workerEnded, backoff=backoff,
                                           fdset=reactor, connectionClosed=self._connectionClosed)
        # connection_balance: exact listeners: socket name -> the parent's accept loop (txmesh/workers_balance.py)
        self.balancers = {}
        self.serving = False
        self.draining = False
        self.healthcheckFailed = False
        self.listenersDrained = False
        self.logObserver = None  # set by txmesh.startup.RunningMesh
        self.startedAt = reactor.seconds()
        self._installSignal = installSignal
        self._previousHandlers = {}
        self._reloads = defer.DeferredLock()
        self._servingWaiters = []  # Deferreds fired when every worker serves (an xDS update waiting for a restart)
        self._gathering = None
        self._gatherLoop = LoopingCall(self.gather)
        self._gatherLoop.clock = reactor
        self.gatherInterval = gatherInterval
        self.control = ParentControl(self, reactor)
        site = makeAdminSite(self.merged, self, self.configDump, self._isReady,
                             isDraining=lambda: self.draining or self.listenersDrained, reactor=reactor,
                             reopenLogs=self.reopenLogs, control=self.control,
                             healthcheckFailed=lambda: self.healthcheckFailed,
                             authenticator=BearerTokenFile(config.admin.auth.bearerTokenFile)
                             if config.admin.auth is not None else None)
        site.resource = GatherFirst(site.resource, self.gather)
        if config.admin.unixPath is not None and removeStaleUnixSocket(config.admin.unixPath):
            self.log.warn("removed the stale admin socket {path}", path=config.admin.unixPath)
        admin = StreamServerEndpointService(self.hotRestart.endpoint(
            "admin", config.admin.address, serverFromString(reactor, config.admin.address)), site)
        raiseBindErrorsSynchronously(admin)
        admin.setName("admin")
        admin.setServiceParent(self)
        self.meshStatus = self.makeStatus()
        # the one xDS client of the sidecar (issue 13 part 6): started once every worker serves
        self.xds = ParentXds(self, rng if rng is not None else random.Random()) \
            if config.dynamicResources is not None else None

    # -- what txmesh.startup reads --

    @property
    def acceptBackoffs(self):
        return [_Bound([self.ports[n]] if n in self.ports else [])
                for n in ("listener:" + lc.name for lc in self.config.listeners)]

    def makeStatus(self):
        return MeshStatus(self.merged, self.config, [(lc.name, lc.address) for lc in self.config.listeners]
                          + [("admin", self.config.admin.address)], self.reactor)

    # -- the listening sockets --

    def _bind(self, lc, siblings):
        """
        Bind (or take over) listener ``lc``'s socket, paused for good here; for ``connection_balance: reuse_port``
        one socket per worker, those of workers 1..N-1 put in ``siblings[name]``.  @raise CannotListenError.
        """
        name = "listener:" + lc.name
        if lc.connectionBalance != "reuse_port" or self.config.workers < 2:
            return self._listen(name, lc.address, serverFromString(self.reactor, lc.address))
        first = self._listen(name, lc.address, ReusePortEndpoint.fromAddress(self.reactor, lc.address))
        bound = []
        try:
            for i in range(1, self.config.workers):
                bound.append(self._listen("%s#%d" % (name, i), lc.address,
                                          ReusePortEndpoint.fromAddress(self.reactor, lc.address,
                                                                        first.getHost().port)))
        except Exception:
            for port in [first] + bound:
                self._close(port)  # never shut down: a hot restart's old process may still serve on these
            raise
        siblings[name] = bound
        return first

    def _listen(self, name, address, endpoint):
        """Listen on ``endpoint`` (or take socket ``name`` over), paused.  @raise CannotListenError."""
        endpoint = self.hotRestart.endpoint(name, address, endpoint)
        result = []
        endpoint.listen(_NeverAccepts()).addBoth(result.append)
        if not result:
            raise RuntimeError("%s: the endpoint did not listen at once" % (address,))
        if isinstance(result[0], Failure):
            result[0].raiseException()
        port = result[0]
        IPushProducer(port).pauseProducing()
        return port

    def _close(self, port):
        """Close the parent's copy of a listening socket: the workers' copies keep it listening until they close."""
        shareListeningPort(port)
        return defer.maybeDeferred(port.stopListening)

    def _closeListeners(self, names, ports, siblings):
        """Close the sockets ``names`` of ``ports`` and their ``siblings`` (removed from both dicts)."""
        closing = []
        for name in names:
            if name in ports:
                for port in [ports.pop(name)] + siblings.pop(name, []):
                    closing.append(self._close(port))
        return defer.gatherResults(closing)

    @staticmethod
    def _socketOf(name, index, ports, siblings):
        """Worker ``index``'s copy of socket ``name``: its own for a ``connection_balance: reuse_port`` listener."""
        own = siblings.get(name)
        return ports[name] if not own or index == 0 else own[index - 1]

    def startMessage(self, index):
        """What worker ``index`` is started with: the sockets, the configuration text and version, its admin path."""
        names = sorted(self.ports)
        message = {"type": "sockets", "pid": os.getpid(), "fds": len(names), "environment": {},
                   "sockets": [{"name": n, "address": describeAddress(self.ports[n].getHost())} for n in names],
                   "worker": {"index": index, "config": self.text, "filename": self.config.filename,
                              "version": self.version.version, "origins": self.config.origins,
                              "exact": exactSockets(self.config),
                              "reuse_port": balancedSockets(self.config, "reuse_port"),
                              "admin": os.path.join(self.runtimeDir, "worker-%d.sock" % (index,))}}
        return message, [self._socketOf(n, index, self.ports, self.siblings).fileno() for n in names]

    # -- start and stop --

    def privilegedStartService(self):
        for lc in self.config.listeners:
            if lc.address != INTERNAL:
                self.ports["listener:" + lc.name] = self._bind(lc, self.siblings)
        MultiService.privilegedStartService(self)

    def _balance(self, names):
        """Start the parent's accept loop of each ``connection_balance: exact`` socket of ``names`` (once serving)."""
        for name in names:
            if name in exactSockets(self.config) and name not in self.balancers and name in self.ports:
                balancer = self.balancers[name] = ExactBalancer(self.reactor, name.split(":", 1)[1], self.ports[name],
                                                                lambda: self.supervisor.serving, self.stats)
                balancer.start()

    def _unbalance(self, names):
        for name in names:
            balancer = self.balancers.pop(name, None)
            if balancer is not None:
                balancer.stop()

    def _connectionClosed(self, worker, listener):
        balancer = self.balancers.get("listener:" + listener)
        if balancer is not None:
            balancer.closed(worker)

    def startService(self):
        for signum in (self.reopenSignal, self.reloadSignal):
            try:
                self._previousHandlers[signum] = self._installSignal(signum, self._signalReceived)
            except ValueError as e:
                self.log.warn("cannot handle {signal} ({e})", signal=signal.Signals(signum).name, e=e)
        self.startedAt = self.reactor.seconds()
        MultiService.startService(self)
        self.supervisor.start()
        if self.gatherInterval:
            self._gatherLoop.start(self.gatherInterval, now=False)

    def _signalReceived(self, signum, frame):
        if signum == self.reloadSignal:
            self.reactor.callFromThread(self.reload, "SIGHUP")
        else:
            self.reactor.callFromThread(self.reopenLogs)
        previous = self._previousHandlers.get(signum)
        if callable(previous):
            previous(signum, frame)

    def _workerServing(self, worker):
        if all(w.state == "serving" for w in self.supervisor.workers):
            waiters, self._servingWaiters = self._servingWaiters, []
            for d in waiters:
                d.callback(None)
        if self.serving or self.draining or not all(w.servedOnce for w in self.supervisor.workers):
            return
        self.serving = True
        self.log.info("every worker serves: {pids}", pids=", ".join(str(w.pid) for w in self.supervisor.workers))
        self.notifier.ready(self.meshStatus.describe())
        self.notifier.start(lambda: self.meshStatus.describe())
        self.hotRestart.serving()
        self._balance(list(self.ports))  # the parent accepts for exact listeners from now on
        if self.xds is not None:
            self.xds.start()

    def _workerEnded(self, worker):
        for balancer in self.balancers.values():
            balancer.workerEnded(worker)
        if worker.lastDump is not None:
            self.retired.add(worker.lastDump.get("stats") or [])  # its counters stay in the sums
        worker.lastDump = None

    def _isReady(self):
        return self.serving and bool(self.supervisor.serving) and not self.draining and not self.listenersDrained \
            and not self.healthcheckFailed

    def stopService(self):
        return self._stop().addBoth(self._restoreSignals)

    @defer.inlineCallbacks
    def _stop(self):
        self.draining = True
        self.notifier.stopping("draining: " + self.meshStatus.describe())
        xdsStopped = self.xds.stop() if self.xds is not None else None  # no update applies while draining
        if self._gatherLoop.running:
            self._gatherLoop.stop()
        yield self.hotRestart.stop()
        self._unbalance(list(self.balancers))
        yield self._closeListeners(list(self.ports), self.ports, self.siblings)
        self.log.info("stopping {n} worker(s): each drains for up to {timeout}s",
                      n=len(self.supervisor.live), timeout=self.config.drainTimeout)
        yield self.supervisor.stop(self.config.drainTimeout + STOP_GRACE)
        yield xdsStopped
        self.notifier.stop()
        yield MultiService.stopService(self)

    def _restoreSignals(self, result):
        previous, self._previousHandlers = self._previousHandlers, {}
        for signum, handler in previous.items():
            self._installSignal(signum, handler if handler is not None else signal.SIG_DFL)
        return result

    # -- the workers' figures --

    def gather(self):
        """Ask every live worker for its figures (``dump``) and merge them.  @return: a Deferred (never fails)."""
        if self._gathering is None:
            self._gathering = self.supervisor.requestAll({"type": "dump"}, timeout=GATHER_TIMEOUT).addCallback(
                self._merge)
            self._gathering.addErrback(lambda f: self.log.failure("workers: gathering their figures", f))

            def done(_):
                self._gathering = None

            self._gathering.addBoth(done)
        waiter = defer.Deferred()
        self._gathering.addBoth(lambda _: waiter.callback(None))
        return waiter

    def _merge(self, answers):
        for worker, answer in answers:
            if not isinstance(answer, Failure):
                worker.lastDump = answer
        parts = [(None, self.retired.rows())]
        parts += [(w.index, w.lastDump.get("stats") or []) for w in self.supervisor.workers
                  if w.lastDump is not None]
        self.merged.update(parts)

    def dumps(self):
        """[(worker, its last dump)] of the workers that answered once since they started."""
        return [(w, w.lastDump) for w in self.supervisor.workers if w.lastDump is not None]

    def describe(self):
        """``/clusters``: the workers' cluster views as one (txmesh.worker_stats.mergeClusters)."""
        return mergeClusters([dump.get("clusters") or [] for _, dump in self.dumps()])

    def configDump(self):
        dump = dict(self.config.raw)
        dump["version_info"] = self.version.describe()
        if self.xds is not None:
            dump["xds"] = self.xds.describe()
        return dump

    def reopenLogs(self):
        """Every worker reopens its log files.  @return: a Deferred of (number reopened, [(path, reason)])."""
        def summed(answers):
            reopened, failures = 0, []
            for worker, answer in answers:
                if isinstance(answer, Failure):
                    failures.append(("worker %d" % (worker.index,), answer.getErrorMessage()))
                else:
                    reopened += answer[0]
                    failures.extend(tuple(f) for f in answer[1])
            self.log.info("reopened {n} log file(s) in the workers, {f} failed", n=reopened, f=len(failures))
            return reopened, failures

        return self.supervisor.requestAll({"type": "control", "action": "reopen_logs"}).addCallback(summed)

    # -- reload --

    def reload(self, trigger="admin"):
        """
        Validate the file once here, then have every worker apply it (see the module docstring).
        @return: a Deferred firing with the outcome dict (as a single txmesh's, with ``workers``).
        """
        if self.draining:
            return defer.succeed({"outcome": "rejected", "error": "txmesh is stopping",
                                  "version": self.version.version})
        return self._reloads.run(self._reload, trigger)

    @defer.inlineCallbacks
    def _reload(self, trigger):
        self.notifier.reloading()
        started = self.reactor.seconds()
        try:
            result = yield self._apply()
        finally:
            self.notifier.ready(self.meshStatus.describe())
        result.setdefault("version", self.version.version)
        result.setdefault("digest", self.version.digest)
        result["seconds"] = round(self.reactor.seconds() - started, 6)
        self.versionGauge.value = self.version.version
        if result["outcome"] == "rejected":
            self.reloadFailed.value += 1
            self.log.error("reload ({trigger}) rejected: {error}; version {version} keeps serving in every worker",
                           trigger=trigger, error=result["error"], version=self.version.version)
        else:
            self.reloadSuccess.value += 1
            self.log.info("reload ({trigger}): {outcome}, version {version} in {n} worker(s)", trigger=trigger,
                          outcome=result["outcome"], version=self.version.version, n=len(self.supervisor.workers))
        return result

    @defer.inlineCallbacks
    def _apply(self):
        try:
            text, new = readConfig(self.config.filename)
            if self.xds is not None:
                # the file's static parts with what the control plane gave (XdsFileSource in a single process)
                new = self.xds.withStatic(new)
                text = workerText(new)
        except ConfigError as e:
            return {"outcome": "rejected", "error": str(e), "changes": None}
        result = yield self._distribute(new, text, "file", None)
        return result

    def distribute(self, config, text, sourceName, location=None):
        """
        Have every worker apply ``config`` (a MeshConfig, validated) from ``text`` (what the workers load), or none
        (the IConfigApplier of the xDS client, txmesh/workers_xds.py; reloads take the same path).  A worker that is
        starting is waited for (``XDS_WAIT_FOR_WORKERS`` at most): an update is not refused for a restart.
        @return: a Deferred firing with the outcome dict (``outcome``, ``error``, ``version``, ``digest``,
            ``changes``, ``workers``).
        """
        if self.draining:
            return defer.succeed({"outcome": "rejected", "error": "txmesh is stopping", "changes": None,
                                  "version": self.version.version, "digest": self.version.digest})

        def done(result):
            result.setdefault("version", self.version.version)
            result.setdefault("digest", self.version.digest)
            self.versionGauge.value = self.version.version
            if result["outcome"] == "applied":
                self.log.info("{source} update: version {version} in {n} worker(s)", source=sourceName,
                              version=self.version.version, n=len(self.supervisor.workers))
            return result

        return self._reloads.run(self._distribute, config, text, sourceName, location, True).addCallback(done)

    def _workersServing(self, timeout):
        """A Deferred firing once every worker serves, or after ``timeout`` seconds (never failing)."""
        waiter = defer.Deferred()
        self._servingWaiters.append(waiter)

        def timedOut(result, timeout):
            if waiter in self._servingWaiters:
                self._servingWaiters.remove(waiter)

        waiter.addTimeout(timeout, self.reactor, onTimeoutCancel=timedOut)
        return waiter

    @defer.inlineCallbacks
    def _distribute(self, new, text, sourceName, location, wait=False):
        try:
            diff = diffConfigs(self.config, new)
        except ConfigError as e:
            return {"outcome": "rejected", "error": str(e), "changes": None}
        if diff.empty and configDigest(new.raw) == self.version.digest:
            return {"outcome": "unchanged", "error": None, "changes": diff.describe()}
        if wait and any(w.state != "serving" for w in self.supervisor.workers):
            yield self._workersServing(XDS_WAIT_FOR_WORKERS)  # a restarting worker: not a reason to refuse
        starting = [w.index for w in self.supervisor.workers if w.state != "serving"]
        if starting:
            return {"outcome": "rejected", "changes": None,
                    "error": "worker(s) %s not serving yet: reload once every worker serves"
                             % (", ".join(map(str, starting)),)}
        bind = [c.new for c in diff.listenersChanged if c.kind == ADDRESS] + list(diff.listenersAdded)
        fresh, freshSiblings = {}, {}
        try:
            for lc in bind:
                if lc.address != INTERNAL:
                    fresh["listener:" + lc.name] = self._bind(lc, freshSiblings)
        except Exception as e:
            yield self._closeListeners(list(fresh), fresh, freshSiblings)
            return {"outcome": "rejected", "changes": None,
                    "error": "listener '%s' cannot listen on %s: %s" % (lc.name, lc.address, e)}
        version = self.version.version + 1
        names = sorted(fresh)
        workers = self.supervisor.serving
        answers = yield settle([
            self.supervisor.request(w, self._applyMessage(text, new, version, sourceName, location, names),
                                    [self._socketOf(n, w.index, fresh, freshSiblings).fileno() for n in names])
            for w in workers])
        answers = list(zip(workers, answers))
        refused = [(w, a) for w, a in answers if isinstance(a, Failure) or a.get("outcome") == "rejected"]
        if refused:
            yield self._closeListeners(list(fresh), fresh, freshSiblings)
            yield self._putBack([w for w, a in answers if (w, a) not in refused], refused)
            reasons = "; ".join("worker %d: %s" % (w, a.getErrorMessage() if isinstance(a, Failure) else a["error"])
                                for w, a in ((w.index, a) for w, a in refused))
            return {"outcome": "rejected", "changes": None, "error": reasons,
                    "workers": {str(w.index): "refused" for w, _ in refused}}
        # every worker applied it: the parent follows
        gone = ["listener:" + lc.name for lc in diff.listenersRemoved] + \
               ["listener:" + c.new.name for c in diff.listenersChanged if c.kind == ADDRESS]
        self._unbalance(gone)
        closing = self._closeListeners(gone, self.ports, self.siblings)
        self.ports.update(fresh)
        self.siblings.update(freshSiblings)
        yield closing
        self.config, self.text = new, text
        if self.serving:
            self._balance(list(fresh))
        self.version.advance(new, diff, sourceName, self.reactor.seconds(), location)
        if self.xds is not None:
            self.xds.clustersChanged(diff)
        self.meshStatus = self.makeStatus()
        return {"outcome": "applied", "error": None, "changes": diff.describe(),
                "workers": {str(w.index): a["outcome"] for w, a in answers}}

    @staticmethod
    def _applyMessage(text, config, version, sourceName, location, sockets):
        """The ``apply`` request of ``config``: its text, version, source and its parts' xDS origins."""
        return {"type": "apply", "config": text, "filename": config.filename, "version": version,
                "sockets": sockets, "source": sourceName, "location": location, "origins": config.origins,
                "exact": exactSockets(config), "reuse_port": balancedSockets(config, "reuse_port")}

    @defer.inlineCallbacks
    def _putBack(self, applied, refused):
        """
        After a refused reload: the workers that applied it get the running configuration again; one that cannot
        (and one that did not answer at all) is restarted, with the running configuration.
        """
        answers = yield settle([
            self.supervisor.request(w, self._applyMessage(self.text, self.config, self.version.version,
                                                          self.version.source, self.version.location, []))
            for w in applied])
        again = [w for w, a in zip(applied, answers) if isinstance(a, Failure) or a.get("outcome") == "rejected"]
        again += [w for w, a in refused if isinstance(a, Failure)]
        for worker in again:
            self.log.warn("reload: worker {index} restarts with version {version}", index=worker.index,
                          version=self.version.version)
            self.supervisor.restart(worker)
