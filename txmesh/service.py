"""
The service tree: one child service per listener, the admin listener, the local app's registration (started once
the listeners are bound), and the shutdown sequence (withdraw the registration and wait its ``drain_grace``, stop
accepting, drain in-flight requests up to the drain timeout, then close the rest and the upstream pools).  While
running, SIGUSR1 reopens the log files (as Envoy does, for logrotate's postrotate).
"""

import random
import signal

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService, Service
from twisted.internet import defer
from twisted.internet.interfaces import IPushProducer, IStreamServerEndpoint
from twisted.internet.protocol import Factory
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger
from zope.interface import implementer

from txmesh.admin import makeAdminSite
from txmesh.control import MeshControl
from txmesh.detect_config import INTERNAL
from txmesh.discovery.registration import makeRegistration
from txmesh.discovery.registries import RegistryClients
from txmesh.filters.chain import FilterChainTemplate
from txmesh.filters.network import FilteringFactory
from txmesh.interfaces import IFilterConfigResources
from txmesh.overload import AcceptBackoff, Overload, StatmReader
from txmesh.path_normalization import pathNormalizerFor
from txmesh.protocols.auto.server import AutoListenerFactory
from txmesh.protocols.transport import WriteScope, Writer
from txmesh.runtime import Runtime
from txmesh.stats import StatsStore
from txmesh.systemd import MeshStatus, NullNotifier
from txmesh.twisted_private import raiseBindErrorsSynchronously
from txmesh.upstream.cluster import ClusterManager
from txmesh.upstream.health import clientEndpoint


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


def connectFactoryFor(reactor, writeScope=None):
    """
    ``connectFactory(clusterConfig) -> connect(host) -> Deferred[client protocol]`` for the cluster manager; the
    client protocols share ``writeScope`` (L{txmesh.protocols.transport.WriteScope}) with the listeners.
    """

    def connectFactory(clusterConfig):
        descriptor = clusterConfig.descriptor
        timeout = max(1, int(clusterConfig.connectTimeout + 0.999))

        def connect(host):
            ep = clientEndpoint(reactor, host.hostname, host.port, timeout)
            return ep.connect(_QuietFactory(descriptor, writeScope))

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

    @param installSignal: C{signal.signal} (tests inject a recorder): used to install the SIGUSR1 handler on
        start and to put the previous one back on stop.
    @param readRSS: ``readRSS() -> bytes``, the process RSS for the overload memory marks (default: a
        L{StatmReader} of /proc/self/statm).
    @param notifier: the L{txmesh.interfaces.IServiceNotifier} told READY once everything is bound and STOPPING
        when the drain starts (default: one that does nothing; tap.py makes systemd's from the environment).
    @ivar overload: the L{Overload} every listener asks (global connection count, memory pressure).
    """

    log = Logger()
    reopenSignal = signal.SIGUSR1

    def __init__(self, config, reactor, rng=None, installSignal=signal.signal, readRSS=None, notifier=None):
        MultiService.__init__(self)
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
        self._installSignal = installSignal
        self._signalInstalled = False
        self._previousHandler = None
        rng = rng if rng is not None else random.Random()
        writeScope = WriteScope(reactor)
        # one session per ``registries`` entry, shared by discovery, Dubbo registry routes and registration
        self.registries = RegistryClients(reactor, config.registries)
        self.clusters = ClusterManager(reactor, config.clusters, connectFactoryFor(reactor, writeScope), self.stats,
                                       rng, registries=self.registries)
        # listeners accept once discovered clusters are warm (startService)
        self.serving = False
        self.acceptGate = AcceptGate()
        self._statm = None
        if readRSS is None and config.overload.memoryHighWatermark:
            readRSS = self._statm = StatmReader()
        self.overload = Overload(config.overload, reactor, self.stats, readRSS)
        self.runtime = Runtime(reactor, self.clusters, self.stats, rng, config, reactor=reactor, writeScope=writeScope,
                               overload=self.overload, registries=self.registries)
        for entry in self._filterEntries():
            if IFilterConfigResources.providedBy(entry.config):
                entry.config.registerFiles(self.runtime.files)
        self.listenerFactories = []
        self.acceptBackoffs = []
        # auto listeners after the listeners they hand connections to (issue 14 part 4)
        built = {}
        for lc in sorted(config.listeners, key=lambda lc: lc.detect is not None):
            built[lc.name] = self._buildListenerFactory(lc, built)
        for lc in config.listeners:
            factory, served = built[lc.name]
            self.listenerFactories.append(factory)
            self.overload.watch(factory)
            backoff = AcceptBackoff(reactor, lc.name, self.stats, self.overload.logOnce)
            self.acceptBackoffs.append(backoff)
            if lc.address == INTERNAL:
                svc = Service()  # not bound: its auto listener hands it connections
            else:
                svc = StreamServerEndpointService(
                    self.acceptGate.endpoint(backoff.endpoint(serverFromString(reactor, lc.address))), served)
                raiseBindErrorsSynchronously(svc)
            svc.setName("listener:" + lc.name)
            svc.setServiceParent(self)
        # the local app's registration (issue 12 part 3): made once the listeners serve (_startServing)
        self.registration = None
        site = makeAdminSite(self.stats, self.clusters, lambda: config.raw, self._isReady,
                             isDraining=lambda: self.draining or self.listenersDrained, reactor=reactor,
                             reopenLogs=self.reopenLogs,
                             registrations=self._describeRegistration if config.registration else None,
                             control=MeshControl(self, reactor), healthcheckFailed=lambda: self.healthcheckFailed)
        admin = StreamServerEndpointService(serverFromString(reactor, config.admin.address), site)
        raiseBindErrorsSynchronously(admin)
        admin.setName("admin")
        admin.setServiceParent(self)
        # STATUS= for systemctl status (issue 13 part 4)
        self.meshStatus = MeshStatus(self.stats, config, [(lc.name, lc.address) for lc in config.listeners]
                                     + [("admin", config.admin.address)], reactor)

    def _buildListenerFactory(self, lc, built):
        """
        (the listener's factory, what its port serves: the factory or its network-filter wrapper); an auto listener's
        targets are taken from ``built`` ({name: (factory, served)}).
        """
        if lc.detect is not None:
            targets = {protocol: built[name][1] for protocol, name in lc.detect.targets}
            factory = AutoListenerFactory(lc, self.runtime, targets, self.serverTLSFor(lc))
            return factory, factory
        template = FilterChainTemplate(lc.filters, self.runtime, lc.routeConfig, lc.limits.bufferLimit,
                                       lc.limits.maxRequestBody, lc.limits.streamIdleTimeout,
                                       lc.respectExpectedTimeout, pathNormalizerFor(lc, self.stats))
        factory = lc.descriptor.buildListenerFactory(lc, template, self.runtime)
        served = factory
        if lc.networkFilters:
            served = FilteringFactory(factory, lc.networkFilters, self.runtime, lc.name, lc.limits.bufferLimit,
                                      newWriter=Writer)
        return factory, served

    def serverTLSFor(self, lc):
        """The IServerTLS of an auto listener's ``tls`` block (TLS termination, issue 14 part 1), or None."""
        return None

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
        self.reactor.callFromThread(self.reopenLogs)
        # Chain to the handler we replaced: twistd --logfile rotates its own log on SIGUSR1.
        if callable(self._previousHandler):
            self._previousHandler(signum, frame)

    def startService(self):
        """
        Install the SIGUSR1 handler (reopen the logs), bind the listeners and the admin API, start discovery, and
        let the listeners accept once every discovered cluster is warm (then ``serving`` is true).
        """
        try:
            self._previousHandler = self._installSignal(self.reopenSignal, self._signalReceived)
            self._signalInstalled = True
        except ValueError as e:  # not the main thread: POST /reopen_logs still works
            self.log.warn("cannot handle SIGUSR1 ({e}); reopen logs with POST /reopen_logs", e=e)
        self.startedAt = self.reactor.seconds()
        MultiService.startService(self)
        # every listener and the admin are bound (bind errors raise above): READY=1, then watchdog and STATUS=
        self.notifier.ready(self.meshStatus.describe())
        self.notifier.start(self.meshStatus.describe)
        self.overload.start()
        self.clusters.startHealthChecks()
        self.clusters.startDiscovery().addCallback(self._startServing)

    def _startServing(self, _=None):
        if self.draining:
            return
        self.serving = True
        self.acceptGate.open()
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
        names = [lc.name for lc in self.config.listeners]
        ports = self.acceptBackoffs[names.index(registration.listener)].ports
        return ports[0].getHost().port

    def _describeRegistration(self):
        return self.registration.describe() if self.registration is not None else {"started": False}

    def _restoreSignal(self, result=None):
        if self._signalInstalled:
            # None: the previous handler was not set from Python; the default action is the best guess
            previous = self._previousHandler if self._previousHandler is not None else signal.SIG_DFL
            self._installSignal(self.reopenSignal, previous)
            self._signalInstalled = False
            self._previousHandler = None
        return result

    def stopService(self):
        """
        Stop accepting, let in-flight requests finish up to drain_timeout, then close what is left; SIGUSR1 keeps
        reopening the logs until the files are closed, then the previous handler is back.
        """
        return self._stop().addBoth(self._restoreSignal)

    @defer.inlineCallbacks
    def _stop(self):
        self.draining = True
        self.notifier.stopping("draining: " + self.meshStatus.describe())
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
        listeners = [s for s in self if s.name and s.name.startswith("listener:") and s.running]
        yield defer.gatherResults([defer.maybeDeferred(s.stopService) for s in listeners])
        timeout = self.config.drainTimeout
        started = self.reactor.seconds()
        self.log.info("draining: {connections} connection(s) open, {requests} request(s) in flight, "
                      + ("for up to {timeout}s" if timeout else "without a time limit"), timeout=timeout,
                      **self._openCounts())
        # consumeErrors: the drains the timeout cancels fail with CancelledError, an expected end, not a log line
        drains = defer.gatherResults([f.drain() for f in self.listenerFactories], consumeErrors=True)
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
                for f in self.listenerFactories:
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
        for f in self.listenerFactories:
            f.abortAll()
        self.runtime.registryClusters.stop()  # dubbo_registry routes' sources (issue 12 part 2)
        yield self.clusters.drain()
        yield discoveryStopped
        yield self.registries.stop()
        for entry in self._filterEntries():
            if IFilterConfigResources.providedBy(entry.config):
                entry.config.close()
        self.notifier.stop()
        yield MultiService.stopService(self)

    def _openCounts(self):
        """The drain's figures: connections open on the listeners, requests in flight (every protocol's)."""
        return dict(connections=sum(len(f.connections) for f in self.listenerFactories),
                    requests=self.stats.total("downstream_rq_active"))

    def _filterEntries(self):
        for lc in self.config.listeners:
            yield from lc.filters
            yield from lc.networkFilters
