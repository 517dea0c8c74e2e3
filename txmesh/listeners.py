"""
The running listeners of a mesh: one L{RunningListener} per listener of the config, made the same way at start
and by a reload (L{ListenerBuilder}).

A listener's port holds a L{SwitchableFactory}, never its protocol factory directly, so that a reload can give new
connections a new protocol factory without closing the port (no rebind, no refused connection) while the
connections of the old factory drain.  Its streams come from a filter-chain template the protocol factory reads
per stream (L{txmesh.interfaces.IStreamFactorySwitch}): a change of routes or stream filters alone swaps that, and
keeps the connections.  The port itself is bound by a L{ListenerService}, which a reload can bind before it
commits, so that a port that cannot be bound rejects the reload before anything changed.
"""

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.protocol import Factory
from twisted.logger import Logger

from txmesh.filters.chain import FilterChainTemplate
from txmesh.filters.network import FilteringFactory
from txmesh.interfaces import IStreamFactorySwitch
from txmesh.overload import AcceptBackoff
from txmesh.path_normalization import pathNormalizerFor
from txmesh.detect_config import INTERNAL
from txmesh.protocols.alpn import negotiatingFactory
from txmesh.protocols.auto.server import AutoListenerFactory
from txmesh.protocols.transport import Writer
from txmesh.tls.server import serverTLSFor


class SwitchableFactory(Factory):
    """
    The factory a listener's port holds: each accepted connection goes to ``current`` (the protocol factory, or the
    network filters' factory around it), which a reload may replace.
    """

    noisy = False

    def __init__(self, current):
        self.current = current

    def buildProtocol(self, addr):
        return self.current.buildProtocol(addr)


class ListenerService(Service):
    """
    Listens on one endpoint with one factory.  ``bind()`` may run before the service starts (a reload binds the
    new ports first and commits once every one is bound); starting binds unless that happened.  A port that cannot
    be bound at start raises from ``privilegedStartService`` (txmesh must not start with a listener missing).

    @ivar port: the IListeningPort once bound, else None.
    """

    log = Logger()

    def __init__(self, endpoint, factory, tls=None):
        self.endpoint = endpoint
        self.factory = factory
        self.tls = tls  # the listener's IServerTLS: its certificate files are watched while the service runs
        self.port = None
        self._listening = None

    def bind(self):
        """
        Listen now.  @return: a Deferred firing with the port, or failing (CannotListenError...); later calls
        return the same Deferred (whose result the first caller took).
        """
        if self._listening is None:
            if self.endpoint is None:  # ``address: internal``: an auto listener hands it connections
                self._listening = defer.succeed(None)
            else:
                self._listening = self.endpoint.listen(self.factory).addCallback(self._bound)
        return self._listening

    def _bound(self, port):
        self.port = port
        return port

    def _bindNow(self):
        failed = []
        self.bind().addErrback(failed.append)
        if failed:
            failed[0].raiseException()

    def privilegedStartService(self):
        Service.privilegedStartService(self)
        self._bindNow()

    def startService(self):
        Service.startService(self)
        if self._listening is None:
            self._bindNow()
        if self.tls is not None:
            self.tls.start()  # certificate rotation

    def useTLS(self, tls):
        """The listener's TLS is now ``tls`` (a reload changed it): watch its files instead of the old one's."""
        if self.running and self.tls is not None:
            self.tls.stop()
        self.tls = tls
        if self.running and tls is not None:
            tls.start()

    def stopService(self):
        """Stop listening (open connections stay); a Deferred fires once the port is closed."""
        Service.stopService(self)
        if self.tls is not None:
            self.tls.stop()
        listening, self._listening = self._listening, None
        if listening is None:
            return defer.succeed(None)
        listening.addErrback(lambda f: None)  # a bind still pending is cancelled: nothing to report
        listening.cancel()
        port, self.port = self.port, None
        if port is None:
            return defer.succeed(None)
        return defer.maybeDeferred(port.stopListening)


class RunningListener:
    """
    One listener of the running config.

    @ivar config: its ListenerConfig.
    @ivar template: the FilterChainTemplate its new streams are made with.
    @ivar factory: the protocol factory (IListenerFactory) of its new connections.
    @ivar switch: the L{SwitchableFactory} its port holds.
    @ivar backoff: its L{txmesh.overload.AcceptBackoff} (``ports``: the ports it watches).
    @ivar service: the L{ListenerService} that binds its port, named ``listener:<name>``.
    """

    def __init__(self, config, template, factory, served, backoff, service):
        self.config = config
        self.template = template
        self.factory = factory
        self.switch = SwitchableFactory(served)
        self.backoff = backoff
        self.service = service

    @property
    def name(self):
        return self.config.name

    def useTemplate(self, config, template):
        """
        New streams are made with ``template`` from now on, on every open connection too (the config changed only
        in its routes or stream filters).  @return: False if the protocol factory cannot swap its template.
        """
        if not IStreamFactorySwitch.providedBy(self.factory):
            return False
        self.factory.template = template
        self.config, self.template = config, template
        return True

    @property
    def tls(self):
        """The listener's L{txmesh.interfaces.IServerTLS}, or None (plain text)."""
        return self.service.tls

    def useFactory(self, config, template, factory, served, tls=None):
        """
        New connections are served by ``factory`` (``served``: it or the network filters' factory around it) from
        now on; the old factory's open connections make their next streams with ``template`` too if the protocol
        is the same, and are the caller's to drain.  @return: the old protocol factory.
        """
        old = self.factory
        if config.descriptor is self.config.descriptor and IStreamFactorySwitch.providedBy(old):
            old.template = template
        self.config, self.template, self.factory = config, template, factory
        self.switch.current = served
        self.service.useTLS(tls)
        return old


class ListenerBuilder:
    """
    Makes the parts of a listener from its config, at start and on reload.

    @param runtime: the service's L{txmesh.runtime.Runtime}.
    @param stats: its StatsStore.
    @param overload: its L{txmesh.overload.Overload} (each protocol factory is watched: idle connections closed
        under memory pressure).
    @param endpointFor: ``endpointFor(listenerConfig, backoff) -> IStreamServerEndpoint``: where the listener's
        port is bound (the service's: the accept gate and backoff around the configured address).
    @param withTracing: ``withTracing(lc, tracer, stats) -> filters``: ``lc``'s filters with the tracing filter first
        (txmesh.filters.tracing), or None when mesh.yaml has no ``tracing`` block.
    @param tracer: the service's L{txmesh.interfaces.ITracer}, or None.
    @param switchOf: ``switchOf(name)`` -> the running listener ``name``'s L{SwitchableFactory}: what an auto
        listener (``protocol: auto``) hands a detected connection to, so a reload of a target reaches it.
    @param tlsFor: ``tlsFor(listenerConfig)`` -> its L{txmesh.interfaces.IServerTLS} or None (default:
        L{serverTLS}, from its ``tls`` block).
    """

    def __init__(self, runtime, stats, overload, endpointFor, withTracing=None, tracer=None, switchOf=None,
                 tlsFor=None):
        self.runtime = runtime
        self.tlsFor = tlsFor if tlsFor is not None else self.serverTLS
        self.switchOf = switchOf
        self.pending = {}  # listeners a reload is building: an auto listener may name one as its target
        self.withTracing = withTracing
        self.tracer = tracer
        self.stats = stats
        self.overload = overload
        self.endpointFor = endpointFor

    def template(self, lc):
        """The FilterChainTemplate of ``lc`` (a ListenerConfig)."""
        filters = lc.filters if self.withTracing is None else self.withTracing(lc, self.tracer, self.stats)
        return FilterChainTemplate(filters, self.runtime, lc.routeConfig, lc.limits.bufferLimit,
                                   lc.limits.maxRequestBody, lc.limits.streamIdleTimeout, lc.respectExpectedTimeout,
                                   pathNormalizerFor(lc, self.stats), requestStats=self.runtime.requestStats)

    def factory(self, lc, template):
        """
        ``(protocol factory, served factory, server TLS)``: the second wraps the first in ``lc``'s network filters
        and, for a listener with a ``tls`` block, in TLS outside them (the filters see plain text and the peer's
        identity; an HTTP listener offering ``h2`` picks its codec by ALPN); the third is that listener's
        L{txmesh.interfaces.IServerTLS} (its files watched while the listener's service runs), else None.
        """
        if lc.detect is not None:  # protocol detection: TLS, when configured, is started by the detector itself
            tls = self.tlsFor(lc)
            targets = {protocol: self._target(name) for protocol, name in lc.detect.targets}
            factory = AutoListenerFactory(lc, self.runtime, targets, tls)
            self.overload.watch(factory)
            return factory, factory, tls
        tls = self.tlsFor(lc) if lc.tls is not None else None
        factory = lc.descriptor.buildListenerFactory(lc, template, self.runtime)

        def serve(factory):
            if not lc.networkFilters:
                return factory
            return FilteringFactory(factory, lc.networkFilters, self.runtime, lc.name, lc.limits.bufferLimit,
                                    newWriter=Writer)

        if tls is None:
            served = serve(factory)
        else:
            factory, served = negotiatingFactory(lc, template, self.runtime, factory, serve)
            served = tls.wrapFactory(served)
        self.overload.watch(factory)
        return factory, served, tls

    def serverTLS(self, lc):
        """The L{txmesh.interfaces.IServerTLS} of ``lc``'s ``tls`` block, or None (plain text)."""
        reactor = self.runtime.reactor if self.runtime.reactor is not None else self.runtime.clock
        return serverTLSFor(lc.tls, lc.name, reactor, self.stats)

    def _target(self, name):
        listener = self.pending.get(name)
        return listener.switch if listener is not None else self.switchOf(name)

    def build(self, lc, template=None):
        """A L{RunningListener} for ``lc``, its port not bound yet."""
        if template is None:
            template = self.template(lc)
        factory, served, tls = self.factory(lc, template)
        backoff = AcceptBackoff(self.runtime.clock, lc.name, self.stats, self.overload.logOnce)
        listener = RunningListener(lc, template, factory, served, backoff, None)
        endpoint = None if lc.address == INTERNAL else self.endpointFor(lc, backoff)
        listener.service = ListenerService(endpoint, listener.switch, tls)
        listener.service.setName("listener:" + lc.name)
        return listener

    def release(self, factory):
        """A protocol factory that serves no more connections: no longer watched."""
        self.overload.unwatch(factory)


def drainFactory(clock, factory, timeout):
    """
    Drain ``factory`` (IListenerFactory): its connections close once idle; those still open after ``timeout``
    seconds (0: no limit) are cut.  @return: a Deferred firing with the number cut.
    """
    d = factory.drain()
    if not timeout:
        return d.addCallback(lambda _: 0)
    result = defer.Deferred()
    timer = clock.callLater(timeout, lambda: result.called or _cut(factory, result))

    def drained(_):
        if timer.active():
            timer.cancel()
        if not result.called:
            result.callback(0)

    d.addBoth(drained)
    return result


def _cut(factory, result):
    n = len(factory.connections)
    factory.abortAll()
    result.callback(n)
