"""
The service tree: one child service per listener, the admin listener, the local app's registration (started once
the listeners are bound), and the shutdown sequence (withdraw the registration and wait its ``drain_grace``, stop
accepting, drain in-flight requests up to the drain timeout, then close the rest and the upstream pools).  While
running, SIGUSR1 reopens the log files (as Envoy does, for logrotate's postrotate) and SIGHUP re-reads the config
file and applies it (txmesh/reload.py; ``POST /reload`` does the same).  The listeners are built by
txmesh/listeners.py, the same way at start and on reload.
"""

import random
import signal

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService
from twisted.internet import defer
from twisted.internet.interfaces import IPushProducer, IStreamServerEndpoint
from twisted.internet.protocol import Factory
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger
from zope.interface import implementer

from txmesh.admin import makeAdminSite
from txmesh.admin_security import BearerTokenFile, removeStaleUnixSocket
from txmesh.control import MeshControl
from txmesh.discovery.registration import makeRegistration
from txmesh.discovery.registries import RegistryClients
from txmesh.hot_restart import NoHotRestart
from txmesh.interfaces import IFilterConfigResources
from txmesh.listeners import ListenerBuilder
from txmesh.overload import Overload, StatmReader
from txmesh.protocols.tunnel import TunnelConnectors
from txmesh.protocols.transport import WriteScope
from txmesh.reload import ConfigApplier, FileConfigSource, Reloader
from txmesh.runtime import Runtime
from txmesh.stats import StatsStore
from txmesh.systemd import MeshStatus, NullNotifier
from txmesh.tls.client import UpstreamTLS
from txmesh.twisted_private import raiseBindErrorsSynchronously
from txmesh.upstream.cluster import ClusterManager
from txmesh.upstream.health import clientEndpoint
from txmesh.xds.client import makeXdsClient


class _QuietFactory(Factory):
    """One client protocol per connect, without a log line for each (connectProtocol's factory is noisy)."""

    noisy = False

    def __init__(self, descriptor, writeScope=None):
        self.descriptor = descriptor
        self.writeScope = writeScope

    def buildProtocol(self, addr):
        p = self.descriptor.buildClientProtocol()
        p.writeScope = self.writeScope
        return p


def connectFactoryFor(reactor, writeScope=None, stats=None):
    """
    ``connectFactory(clusterConfig) -> connect(host) -> Deferred[client protocol]`` for the cluster manager; the
    client protocols share ``writeScope`` (L{txmesh.protocols.transport.WriteScope}) with the listeners.  A cluster
    with a ``tls`` block connects through its L{txmesh.tls.client.UpstreamTLS} (counted on ``stats``, a
    StatsStore): the Deferred fires once the handshake and the upstream's identity check passed.
    """

    def connectFactory(clusterConfig):
        descriptor = clusterConfig.descriptor
        timeout = max(1, int(clusterConfig.connectTimeout + 0.999))

        tls = None
        if clusterConfig.tls is not None:
            tls = UpstreamTLS(clusterConfig.tls, (stats or StatsStore()).scope(cluster=clusterConfig.name), reactor)

        def connect(host, protocolFactory=None):
            # protocolFactory: another client protocol than the cluster's (a tunnel's, txmesh.protocols.tunnel)
            ep = clientEndpoint(reactor, host.hostname, host.port, timeout)
            factory = _QuietFactory(descriptor, writeScope) if protocolFactory is None else protocolFactory
            return ep.connect(factory) if tls is None else tls.connect(ep, factory, host)

        return connect

    return connectFactory


class AcceptGate:
    """
    Holds the listeners' accepts until the service serves (Envoy's cluster warming: listeners take connections once
    discovered clusters have their first host set or their ``initial_fetch_timeout`` passed).  Ports are bound at
    start as before, so a taken port still fails the start; until ``open()`` their accepts are paused
    (``IPushProducer.pauseProducing``) and clients wait in the kernel's backlog.
    """

    def __init__(self):
        self.isOpen = False
        self._ports = []

    def endpoint(self, endpoint):
        """An IStreamServerEndpoint listening like ``endpoint``, its port held until ``open()``."""
        return _GatedEndpoint(endpoint, self)

    def portListening(self, port):
        if not self.isOpen and IPushProducer.providedBy(port):
            port.pauseProducing()
            self._ports.append(port)
        return port

    def open(self):
        self.isOpen = True
        ports, self._ports = self._ports, []
        for port in ports:
            port.resumeProducing()


@implementer(IStreamServerEndpoint)
class _GatedEndpoint:
    def __init__(self, endpoint, gate):
        self._endpoint = endpoint
        self._gate = gate

    def listen(self, factory):
        return self._endpoint.listen(factory).addCallback(self._gate.portListening)


class MeshService(MultiService):
    """
    Everything one mesh.yaml describes, running on ``reactor``.

    @param installSignal: C{signal.signal} (tests inject a recorder): used to install the SIGUSR1 (reopen the
        logs) and SIGHUP (reload) handlers on start and to put the previous ones back on stop.
    @param readRSS: ``readRSS() -> bytes``, the process RSS for the overload memory marks (default: a
        L{StatmReader} of /proc/self/statm).
    @param notifier: the L{txmesh.interfaces.IServiceNotifier} told READY once everything is bound, RELOADING and
        READY around a reload, and STOPPING when the drain starts (default: one that does nothing; tap.py makes
        systemd's from the environment).
    @param hotRestart: the L{txmesh.interfaces.IHotRestart} the listeners' and the admin's ports come from, told
        when the service serves and when it stops (default: none, every port is bound as configured).
    @param runXds: run the xDS client of ``dynamic_resources`` (a worker of ``workers: N`` does not: its parent
        runs the one client and hands every update to it, txmesh/workers_xds.py).
    @ivar overload: the L{Overload} every listener asks (global connection count, memory pressure).
    @ivar listeners: {name: L{txmesh.listeners.RunningListener}} of the running config, in its order.
    @ivar retiring: protocol factories a reload replaced or removed, draining their connections.
    @ivar filterResources: the filter configs holding resources (IFilterConfigResources: access-log files) of the
        running config and of the streams a reload left on an older one; closed at stop.
    @ivar applier: the L{txmesh.reload.ConfigApplier} every configuration change goes through.
    """

    log = Logger()
    reopenSignal = signal.SIGUSR1
    reloadSignal = signal.SIGHUP

    def __init__(self, config, reactor, rng=None, installSignal=signal.signal, readRSS=None, notifier=None,
                 hotRestart=None, runXds=True):
        MultiService.__init__(self)
        self.hotRestart = hotRestart if hotRestart is not None else NoHotRestart()
        self.notifier = notifier if notifier is not None else NullNotifier()
        self.config = config
        self.reactor = reactor
        self.stats = StatsStore()
        self.draining = False
        # the admin API's switches (txmesh.control): POST /healthcheck/fail, POST /drain_listeners
        self.healthcheckFailed = False
        self.listenersDrained = False
        self.logObserver = None  # the OperatorLogObserver twistd logs to (set by txmesh.startup), for /logging
        self.startedAt = reactor.seconds()
        # timers scheduled on the reactor, read at each /stats or /metrics look (bench/soak.py checks they do not grow)
        self.stats.computedGauge("reactor_pending_calls", lambda: len(reactor.getDelayedCalls()),
                                 help="Timers pending on the reactor (IReactorTime.getDelayedCalls)")
        self._installSignal = installSignal
        self._previousHandlers = {}  # signal -> the handler ours replaced
        rng = rng if rng is not None else random.Random()
        writeScope = WriteScope(reactor)
        # one session per ``registries`` entry, shared by discovery, Dubbo registry routes and registration
        self.registries = RegistryClients(reactor, config.registries)
        self.clusters = ClusterManager(reactor, config.clusters, connectFactoryFor(reactor, writeScope, self.stats),
                                       self.stats, rng, registries=self.registries, tunnelFactory=TunnelConnectors)
        # listeners accept once discovered clusters are warm (startService)
        self.serving = False
        self.acceptGate = AcceptGate()
        self._statm = None
        if readRSS is None and config.overload.memoryHighWatermark:
            readRSS = self._statm = StatmReader()
        self.overload = Overload(config.overload, reactor, self.stats, readRSS)
        self.runtime = Runtime(reactor, self.clusters, self.stats, rng, config, reactor=reactor, writeScope=writeScope,
                               overload=self.overload, registries=self.registries)
        self.filterResources = set()
        for entry in _filterEntries(config):
            if IFilterConfigResources.providedBy(entry.config):
                entry.config.registerFiles(self.runtime.files)
                self.filterResources.add(entry.config)
        # tracing (issue 16 part 2): the OpenTelemetry SDK is imported only when mesh.yaml has a ``tracing`` block
        self.tracer = None
        withTracing = None
        if config.tracing is not None:
            from txmesh.filters.tracing import withTracing
            from txmesh.tracer import Tracer
            self.tracer = Tracer(config.tracing, reactor, config.node, stats=self.stats)
        self.listenerBuilder = ListenerBuilder(self.runtime, self.stats, self.overload, self._listenerEndpoint,
                                               withTracing=withTracing, tracer=self.tracer,
                                               switchOf=lambda name: self.listeners[name].switch,
                                               tlsFor=self.serverTLSFor)
        self.listeners = {}
        self.retiring = set()
        # auto listeners after the listeners they hand connections to (issue 14 part 4)
        for lc in sorted(config.listeners, key=lambda lc: lc.detect is not None):
            self.addListener(self.listenerBuilder.build(lc))
        self.listeners = {lc.name: self.listeners[lc.name] for lc in config.listeners}  # the config's order
        # the local app's registration (issue 12 part 3): made once the listeners serve (_startServing)
        self.registration = None
        # every configuration change goes through the applier; SIGHUP and POST /reload re-read the file (issue 13)
        self.applier = ConfigApplier(self, reactor)
        self.reloader = Reloader(FileConfigSource(config.filename), self.applier, self.notifier, self.stats,
                                 lambda: self.meshStatus.describe(), reactor)
        site = makeAdminSite(self.stats, self.clusters, self.configDump, self._isReady,
                             isDraining=lambda: self.draining or self.listenersDrained, reactor=reactor,
                             reopenLogs=self.reopenLogs,
                             registrations=self._describeRegistration if config.registration else None,
                             control=MeshControl(self, reactor), healthcheckFailed=lambda: self.healthcheckFailed,
                             requestStats=self.runtime.requestStats,
                             certificates=self._certificates,
                             authenticator=BearerTokenFile(config.admin.auth.bearerTokenFile)
                             if config.admin.auth is not None else None)
        if config.admin.unixPath is not None and removeStaleUnixSocket(config.admin.unixPath):
            self.log.warn("removed the stale admin socket {path}", path=config.admin.unixPath)
        admin = StreamServerEndpointService(self.hotRestart.endpoint(
            "admin", config.admin.address, serverFromString(reactor, config.admin.address)), site)
        raiseBindErrorsSynchronously(admin)
        admin.setName("admin")
        admin.setServiceParent(self)
        # STATUS= for systemctl status (issue 13 part 4)
        self.meshStatus = self.makeStatus()
        # the xDS client (issue 13 part 3, ``dynamic_resources``): started once the static parts serve
        # (a worker of ``workers: N`` runs none: its parent is the one xDS client and hands it every update)
        self.xds = makeXdsClient(config, self.applier, reactor, self.clusters, self.stats, rng) \
            if config.dynamicResources is not None and runXds else None
        if self.xds is not None:
            # the xDS modules need the xds extra (Envoy's protos): imported only when mesh.yaml asks for xDS
            from txmesh.xds.state import XdsFileSource

            # a file reload (SIGHUP, POST /reload) under xDS merges the file's static parts with what the control
            # plane gave, rather than dropping the dynamic listeners and clusters
            self.reloader.source = XdsFileSource(self.reloader.source, self.xds.handler)

    def _listenerEndpoint(self, lc, backoff):
        """Where listener ``lc`` listens: its address, its ports backing off on accept errors, gated until serving."""
        # hot restart (issue 13 part 5): the socket inherited from the old process, else a new bind
        source = self.hotRestart.endpoint("listener:" + lc.name, lc.address, serverFromString(self.reactor, lc.address))
        return self.acceptGate.endpoint(backoff.endpoint(source))

    def serverTLSFor(self, lc):
        """The IServerTLS of listener ``lc``'s ``tls`` block (TLS termination, issue 14 part 1), or None."""
        return self.listenerBuilder.serverTLS(lc)

    def _certificates(self):
        """``/certs``: the TLS material of every listener with a ``tls`` block."""
        return [listener.tls.describe() for listener in self.listeners.values() if listener.tls is not None]

    def addListener(self, listener):
        """Run ``listener`` (a L{txmesh.listeners.RunningListener}): its port is bound now if the mesh runs."""
        self.listeners[listener.name] = listener
        listener.service.setServiceParent(self)

    def makeStatus(self):
        """The STATUS= line's L{MeshStatus} of the running config (made again by a reload)."""
        return MeshStatus(self.stats, self.config, [(lc.name, lc.address) for lc in self.config.listeners]
                          + [("admin", self.config.admin.address)], self.reactor)

    @property
    def listenerFactories(self):
        """The protocol factories of the running listeners, in the config's order."""
        return [listener.factory for listener in self.listeners.values()]

    @property
    def acceptBackoffs(self):
        return [listener.backoff for listener in self.listeners.values()]

    def configDump(self):
        """``/config_dump``: the running mesh.yaml as parsed, and ``version_info`` (version, digest, source)."""
        dump = dict(self.config.raw)
        dump["version_info"] = self.applier.version.describe()
        if self.xds is not None:
            dump["xds"] = self.xds.describe()
        return dump

    def reload(self, trigger="admin"):
        """
        Re-read the config file and apply it (SIGHUP, ``POST /reload``): L{txmesh.reload.Reloader.reload}.
        @return: a Deferred firing with the outcome dict.
        """
        if self.draining:
            return defer.succeed({"outcome": "rejected", "error": "txmesh is stopping",
                                  "version": self.applier.version.version})
        return self.reloader.reload(trigger)

    def _isReady(self):
        return self.serving and not self.draining and not self.listenersDrained and not self.healthcheckFailed

    def reopenLogs(self):
        """
        Reopen every log file (SIGUSR1, ``POST /reopen_logs``); failures are counted and logged, never raised.
        @return: (number reopened, [(path, reason) for each failure]).
        """
        reopened, failures = self.runtime.files.reopenAll()
        self.log.info("reopened {n} log file(s), {f} failed", n=reopened, f=len(failures))
        return reopened, failures

    def _signalReceived(self, signum, frame):
        # Runs between two bytecodes of whatever the main thread was doing: hand the work to the reactor loop.
        if signum == self.reloadSignal:
            self.reactor.callFromThread(self.reload, "SIGHUP")
        else:
            self.reactor.callFromThread(self.reopenLogs)
        # Chain to the handler we replaced: twistd --logfile rotates its own log on SIGUSR1.
        previous = self._previousHandlers.get(signum)
        if callable(previous):
            previous(signum, frame)

    def startService(self):
        """
        Install the SIGUSR1 (reopen the logs) and SIGHUP (reload) handlers, bind the listeners and the admin API,
        start discovery, and let the listeners accept once every discovered cluster is warm (then ``serving`` is true).
        """
        for signum, instead in ((self.reopenSignal, "POST /reopen_logs"), (self.reloadSignal, "POST /reload")):
            try:
                self._previousHandlers[signum] = self._installSignal(signum, self._signalReceived)
            except ValueError as e:  # not the main thread: the admin API still works
                self.log.warn("cannot handle {signal} ({e}); use {instead}", signal=signal.Signals(signum).name,
                              e=e, instead=instead)
        self.startedAt = self.reactor.seconds()
        if self.tracer is not None:
            self.tracer.start()
        MultiService.startService(self)
        # every listener and the admin are bound (bind errors raise above): READY=1, then watchdog and STATUS=
        self.notifier.ready(self.meshStatus.describe())
        self.notifier.start(lambda: self.meshStatus.describe())  # a reload makes a new MeshStatus
        self.overload.start()
        self.clusters.startHealthChecks()
        self.clusters.startDiscovery().addCallback(self._startServing)

    def _startServing(self, _=None):
        if self.draining:
            return
        self.serving = True
        self.acceptGate.open()
        self.hotRestart.serving()  # a process that took over tells the old one to drain now
        if self.xds is not None:
            self.xds.start()
        if self.config.registration is not None:
            # registered once callers can be served: listeners bound and accepting, discovered clusters warm
            registration = self.config.registration
            self.registration = makeRegistration(registration, self.reactor, self.registries, self.stats,
                                                 self._boundPort(registration), self.config.node)
            self.registration.hold(self.healthcheckFailed or self.listenersDrained)  # POST /healthcheck/fail
            self.registration.start()

    def _boundPort(self, registration):
        """The port the registration's listener listens on (its configured one, or the one port 0 was given)."""
        if registration.listenerPort:
            return registration.listenerPort
        return self.listeners[registration.listener].backoff.ports[0].getHost().port

    def _describeRegistration(self):
        return self.registration.describe() if self.registration is not None else {"started": False}

    def _restoreSignal(self, result=None):
        previous, self._previousHandlers = self._previousHandlers, {}
        for signum, handler in previous.items():
            # None: the previous handler was not set from Python; the default action is the best guess
            self._installSignal(signum, handler if handler is not None else signal.SIG_DFL)
        return result

    def stopService(self):
        """
        Stop accepting, let in-flight requests finish up to drain_timeout, then close what is left; SIGUSR1 keeps
        reopening the logs until the files are closed (SIGHUP reloads nothing once stopping), then the previous
        handlers are back.
        """
        return self._stop().addBoth(self._restoreSignal)

    @defer.inlineCallbacks
    def _stop(self):
        self.draining = True
        self.notifier.stopping("draining: " + self.meshStatus.describe())
        xdsStopped = self.xds.stop() if self.xds is not None else None  # no update applies while draining
        self.hotRestart.stop()
        if self.registration is not None:
            # withdraw the local app first and let callers' registries notice, while the listeners still serve
            yield self.registration.drain()
            self.registration.stop()
        self.serving = False
        self.overload.stop()
        self.clusters.stopHealthChecks()
        # host sets stay as they are while draining
        discoveryStopped = self.clusters.stopDiscovery().addErrback(
            lambda f: self.log.failure("stopping discovery", f))
        if self._statm is not None:
            self._statm.close()
        for backoff in self.acceptBackoffs:
            backoff.stop()
        # those POST /drain_listeners stopped already are not stopped twice
        listeners = [listener.service for listener in self.listeners.values() if listener.service.running]
        yield defer.gatherResults([defer.maybeDeferred(s.stopService) for s in listeners])
        timeout = self.config.drainTimeout
        started = self.reactor.seconds()
        self.log.info("draining: {connections} connection(s) open, {requests} request(s) in flight, "
                      + ("for up to {timeout}s" if timeout else "without a time limit"), timeout=timeout,
                      **self._openCounts())
        # the factories a reload retired are draining already: drained (or cut) with the others
        factories = self.listenerFactories + list(self.retiring)
        # consumeErrors: the drains the timeout cancels fail with CancelledError, an expected end, not a log line
        drains = defer.gatherResults([f.drain() for f in factories], consumeErrors=True)
        cut = None
        if timeout:
            timer = self.reactor.callLater(timeout, drains.cancel)
            try:
                yield drains
            except (defer.CancelledError, defer.FirstError) as e:
                # gatherResults reports its cancellation as FirstError(CancelledError)
                if isinstance(e, defer.FirstError) and not e.subFailure.check(defer.CancelledError):
                    raise
                cut = self._openCounts()
                for f in factories:
                    f.abortAll()
            finally:
                if timer.active():
                    timer.cancel()
        else:
            yield drains
        elapsed = self.reactor.seconds() - started
        if cut is None:
            self.log.info("drained in {elapsed:.3f}s: every connection closed by itself", elapsed=elapsed)
        else:
            self.log.warn("drain timeout ({timeout}s) passed: cut {connections} connection(s) with {requests} "
                          "request(s) in flight", timeout=timeout, elapsed=elapsed, **cut)
        for f in factories:
            f.abortAll()
        self.runtime.registryClusters.stop()  # dubbo_registry routes' sources (issue 12 part 2)
        yield self.clusters.drain()
        yield discoveryStopped
        yield xdsStopped
        yield self.registries.stop()
        self.applier.stop()
        for resource in self.filterResources:
            resource.close()
        if self.tracer is not None:
            yield self.tracer.stop()  # the last spans, bounded by the export timeout
        self.notifier.stop()
        yield MultiService.stopService(self)

    def _openCounts(self):
        """The drain's figures: connections open on the listeners, requests in flight (every protocol's)."""
        return dict(connections=sum(len(f.connections) for f in self.listenerFactories + list(self.retiring)),
                    requests=self.stats.total("downstream_rq_active"))


def _filterEntries(config):
    for lc in config.listeners:
        yield from lc.filters
        yield from lc.networkFilters
