"""
An HTTP listener over TLS that serves HTTP/2 to the clients that agreed ``h2`` by ALPN and HTTP/1.1 to the rest
(curl --http2 and curl --http1.1 on one port), as Envoy's HTTP connection manager with ``codec_type: AUTO`` does.

L{ALPNListenerFactory} holds the HTTP/1.1 and the HTTP/2 listener factories of one listener, built from the same
listener config and the same filter-chain template (the same routes and filters), and is the listener's one
IListenerFactory (connections, drain, overload) toward the service.  The TLS layer (txmesh.tls.server) asks it for
a protocol once the handshake said which (L{txmesh.interfaces.INegotiatedProtocolFactory}).
"""

from twisted.internet import defer
from twisted.internet.protocol import Factory
from zope.interface import implementer

from txmesh.interfaces import IListenerFactory, INegotiatedProtocolFactory
from txmesh.protocols.h2.protocol import HTTP2

H2 = b"h2"


@implementer(IListenerFactory, INegotiatedProtocolFactory)
class ALPNListenerFactory(Factory):
    """
    @param listeners: {ALPN name (bytes): the listener factory (IListenerFactory) serving it}.
    @param served: {ALPN name: what to build the protocol from (the listener factory, or its network-filter
        wrapper)}; the same keys as ``listeners``.
    @param default: the ALPN name for clients that agreed none.
    """

    noisy = False

    def __init__(self, listeners, served, default):
        self.listeners = listeners
        self.served = served
        self.default = default
        self.listenerName = listeners[default].listenerName

    @property
    def connections(self):
        out = set()
        for f in self.listeners.values():
            out |= f.connections
        return out

    @property
    def draining(self):
        return self.listeners[self.default].draining

    def buildProtocol(self, addr):
        return self.served[self.default].buildProtocol(addr)

    def buildNegotiatedProtocol(self, addr, negotiated):
        served = self.served.get(negotiated)
        if served is None:
            served = self.served[self.default]
        return served.buildProtocol(addr)

    def drain(self):
        """Fires once both factories drained; cancelled (the drain timeout), it fails with CancelledError."""
        drains = [f.drain() for f in self.listeners.values()]
        cancelled = []

        def cancel(_):
            cancelled.append(True)  # Deferred.cancel then fails ``done`` with CancelledError
            for each in drains:
                each.cancel()

        def drained(_):
            if not cancelled:
                done.callback(None)

        done = defer.Deferred(cancel)
        defer.DeferredList(drains, consumeErrors=True).addCallback(drained)
        return done

    def abortAll(self):
        for f in self.listeners.values():
            f.abortAll()

    def closeIdleConnections(self):
        return sum(f.closeIdleConnections() for f in self.listeners.values())


def negotiatingFactory(listenerConfig, template, runtime, factory, serve):
    """
    A TLS listener's factory pair: (its IListenerFactory, what the TLS layer builds protocols from).  An
    ``http1`` listener whose ``tls.alpn`` offers ``h2`` gets an L{ALPNListenerFactory} over ``factory`` and an
    HTTP/2 factory made like it; any other listener keeps ``factory``.  Both serve ``https`` as their scheme.

    @param factory: the listener's own factory (its descriptor's).
    @param serve: ``serve(listenerFactory)`` -> what protocols are built from (the network filters' wrapper).
    """
    if listenerConfig.descriptor.filterFamily != "dubbo":
        factory.scheme = b"https"  # x-forwarded-proto and the request's scheme
    if listenerConfig.protocol != "http1" or "h2" not in listenerConfig.tls.alpn:
        return factory, serve(factory)
    h2 = HTTP2.buildListenerFactory(listenerConfig, template, runtime)
    h2.scheme = b"https"
    listeners = {b"http/1.1": factory, H2: h2}
    combined = ALPNListenerFactory(listeners, {name: serve(f) for name, f in listeners.items()}, b"http/1.1")
    return combined, combined
