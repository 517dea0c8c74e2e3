"""
Tunnels upstream: the connection an allowed HTTP upgrade (WebSocket, ...) or a CONNECT is forwarded on.

The router forwards a tunnelled request like any other (its filters, its timers, its access log), but on a
connection of its own, never taken from or given back to the cluster's pool (L{TunnelConnector}, one per host: it
provides IConnectionPool so the router's attempt uses it as it uses a pool).  On that connection a
L{TunnelClientProtocol}:

  - for an upgrade (``kind`` ``upgrade``), writes the request head with its ``Upgrade``/``Connection: upgrade``
    fields and reads the answer with the HTTP/1.1 response decoder; a 101 is relayed (its ``Upgrade`` value kept in
    the head's fields for the listener) and from then on every byte either way is opaque; any other answer is
    relayed as a normal response and the connection closed;
  - for CONNECT (``kind`` ``connect``), reports a ``200`` head as soon as the TCP (or the cluster's TLS) connection
    is up, then relays bytes (a failed connect is the router's 503 ``UF``).

Request bytes that come before the tunnel opened are held and written after the 101 (an HTTP/2 client must wait
for the 200, RFC 8441 section 5, so there are none from a well-behaved one).  A FIN from the downstream side
(``writeBody(b"", True)``) half-closes the upstream connection; a FIN from the upstream ends the response
(``upstreamComplete`` then the end of the body) and with it the tunnel.  Backpressure is the router's usual
coupling: this protocol's write buffer pauses the downstream's reading (``upstreamWritePaused``), and a full
downstream pauses this connection's reading (``pauseReading``).
"""

from twisted.internet import defer
from twisted.internet.error import ConnectionDone, TimeoutError as TCPTimeoutError
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from zope.interface import implementer

from txmesh import errors
from txmesh.interfaces import IConnectionPool, ITunnelConnectors, IUpstreamStream
from txmesh.protocols.http1.codec import (BodyData, HTTPCodecError, InterimResponse, MessageComplete,
                                          ResponseDecoder, ResponseStarted, TunnelData, encodeRequestHead)
from txmesh.protocols.transport import TransportReadPausing, WriteWatcher, Writer
from txmesh.stream import ResponseHead
from txmesh.tunnel_config import CONNECT_TUNNEL as CONNECT, UPGRADE_TUNNEL as UPGRADE


@implementer(IUpstreamStream, IHalfCloseableProtocol)
class TunnelClientProtocol(TransportReadPausing, Protocol):
    """One upstream connection carrying one tunnel (see the module docstring)."""

    log = Logger()

    def __init__(self, kind):
        self.kind = kind
        self.responder = None
        self.decoder = ResponseDecoder() if kind == UPGRADE else None
        self.tunnelling = False
        self.connected = False
        self._held = []  # request bytes written before the tunnel opened
        self._endHeld = False
        self._readPaused = False
        self._aborting = False

    # -- connection events ------------------------------------------------------------------------------------

    def connectionMade(self):
        self.connected = True
        self._out = Writer(self.transport)  # direct writes, TCP_NODELAY: a tunnel's small messages must not wait
        self.transport.registerProducer(WriteWatcher(self._full, self._drained), True)

    def dataReceived(self, data):
        if self.tunnelling:
            if self.responder is not None:
                self.responder.upstreamData(data, False)
            return
        if self.decoder is None:
            return
        try:
            events = self.decoder.feed(data)
        except HTTPCodecError as e:
            self._fail(errors.BadUpstreamResponse(e.reason))
            return
        error = None
        if events and isinstance(events[-1], HTTPCodecError):
            error = events.pop()
        for ev in events:
            if self.responder is None:
                return
            self._responseEvent(ev)
        if error is not None:
            self._fail(errors.BadUpstreamResponse(error.reason))

    def _responseEvent(self, ev):
        t = type(ev)
        responder = self.responder
        if t is ResponseStarted:
            if ev.upgrade is not None:
                # 101 Switching Protocols: relayed, then bytes; the listener writes the Upgrade value it names
                self.tunnelling = True
                ev.head.headers.add(b"upgrade", ev.upgrade)
                responder.upstreamHeaders(ev.head, False)
                self._openTunnel()
            else:
                responder.upstreamHeaders(ev.head, False)
        elif t is TunnelData:
            responder.upstreamData(ev.data, False)
        elif t is BodyData:
            responder.upstreamData(ev.data, False)
        elif t is MessageComplete:
            if self.tunnelling:
                return  # the 101's own (empty) message
            # an answer other than 101: a normal response, and the end of this connection
            self.responder = None
            responder.upstreamComplete(False)
            if ev.trailers is not None:
                responder.upstreamTrailers(ev.trailers)
            else:
                responder.upstreamData(b"", True)
        elif t is InterimResponse:
            pass

    def _openTunnel(self):
        """The tunnel is open: the request bytes held meanwhile go upstream."""
        held, self._held = self._held, []
        if held:
            self._out.write(b"".join(held))
        if self._endHeld:
            self._halfClose()

    def readConnectionLost(self):
        """The upstream sent FIN: the response (the tunnel's upstream half) ends; so does the tunnel."""
        self._ended(None)
        self.transport.loseConnection()

    def writeConnectionLost(self):
        pass

    def connectionLost(self, reason):
        self.connected = False
        self._ended(reason)

    def _ended(self, reason):
        """The upstream's bytes ended: cleanly (``reason`` None or ConnectionDone) or not."""
        responder = self.responder
        if responder is None:
            return
        clean = reason is None or reason.check(ConnectionDone) is not None
        if not self.tunnelling and self.decoder is not None:
            try:
                events = self.decoder.eof()
            except HTTPCodecError as e:
                self.responder = None
                responder.upstreamFailed(errors.BadUpstreamResponse(e.reason))
                return
            for ev in events:
                if self.responder is None:
                    return
                self._responseEvent(ev)
            if self.responder is None:
                return
            self.responder = None
            responder.upstreamFailed(errors.UpstreamReset("upstream closed before answering the upgrade"))
            return
        self.responder = None
        if clean:
            responder.upstreamComplete(False)
            responder.upstreamData(b"", True)
        else:
            responder.upstreamFailed(errors.UpstreamReset("tunnel upstream reset: %s" % (reason.getErrorMessage(),)))

    def _fail(self, exc):
        responder = self.responder
        self.responder = None
        self.transport.abortConnection()
        if responder is not None:
            responder.upstreamFailed(exc)

    # -- IUpstreamStream (called by the router's attempt) --------------------------------------------------------

    def sendRequest(self, head, endStream, responder):
        """
        Start the exchange.  ``endStream`` only says the request had no body: a tunnel's end is the
        ``writeBody(b"", True)`` that the downstream's FIN or END_STREAM brings.
        """
        self.responder = responder
        if self.kind == CONNECT:
            self.tunnelling = True
            responder.upstreamHeaders(ResponseHead(200, reason=b"Connection Established"), False)
            return
        self.decoder.expect(head.method, upgrade=True)
        head.contentLength = None
        self._out.write(encodeRequestHead(head, False, head.upgrade))

    def writeBody(self, data, endStream):
        if not self.tunnelling:
            if data:
                self._held.append(data)
            self._endHeld = self._endHeld or endStream
            return
        if data:
            self._out.write(data)
        if endStream:
            self._halfClose()

    def writeTrailers(self, trailers):
        self.writeBody(b"", True)

    def _halfClose(self):
        """The downstream ended its half: FIN upstream, keep reading the upstream's answer."""
        try:
            self.transport.loseWriteConnection()
        except (AttributeError, NotImplementedError):  # a transport without half-close (TLS): close both ways
            self.transport.loseConnection()

    def abandon(self):
        self.responder = None
        self._aborting = True

    def close(self):
        """The router is done with this connection: closed gracefully, or aborted after ``abandon``."""
        if self.transport is None:
            return
        self.transport.unregisterProducer()
        if self._readPaused:
            self._readPaused = False
            self.transport.resumeProducing()
        if self._aborting:
            self.transport.abortConnection()
        else:
            self.transport.loseConnection()

    def _full(self):
        if self.responder is not None:
            self.responder.upstreamWritePaused()

    def _drained(self):
        if self.responder is not None:
            self.responder.upstreamWriteResumed()


class _TunnelFactory(Factory):
    noisy = False

    def __init__(self, kind):
        self.kind = kind

    def buildProtocol(self, addr):
        return TunnelClientProtocol(self.kind)


@implementer(IConnectionPool)
class TunnelConnector:
    """
    The tunnels to one host: each ``acquire`` makes a new connection with ``connect(host, protocolFactory)`` (the
    cluster's, so a TLS cluster's tunnels are TLS), never reused.  ``counters``: the cluster's
    ``upstream_cx_tunnel_total``, ``upstream_cx_tunnel_active`` and ``upstream_cx_tunnel_connect_fail``.
    """

    def __init__(self, host, connect, kind, counters):
        self.host = host
        self._connect = connect
        self.kind = kind
        self._open = set()
        self._closed = False
        self._total, self._active, self._failed = counters

    def acquire(self):
        if self._closed:
            return defer.fail(errors.PoolClosed("the cluster's tunnels are closed"))
        d = self._connect(self.host, _TunnelFactory(self.kind))

        def connected(proto):
            self._total.value += 1
            self._active.value += 1
            self._open.add(proto)
            return proto

        def failed(failure):
            self._failed.value += 1
            if failure.check(errors.UpstreamError, defer.CancelledError):
                return failure
            if failure.check(TCPTimeoutError):
                raise errors.ConnectTimeout("tunnel connect to %s timed out" % (self.host.address,))
            raise errors.ConnectFailure("tunnel connect to %s failed: %s" % (self.host.address,
                                                                            failure.getErrorMessage()))

        return d.addCallbacks(connected, failed)

    def acquireIdle(self):
        return None  # never pooled

    def _forget(self, proto):
        if proto in self._open:
            self._open.discard(proto)
            self._active.value -= 1
        proto.close()

    release = discard = _forget

    def drain(self, serveQueued=False):
        self._closed = True
        for proto in list(self._open):
            self._forget(proto)
        return defer.succeed(None)

    def describe(self):
        return {"tunnels": len(self._open)}


@implementer(ITunnelConnectors)
class TunnelConnectors:
    """
    A cluster's tunnels (the ClusterManager's ``tunnelFactory``): ``connect(host, protocolFactory)`` is the cluster's
    connect (L{txmesh.service.connectFactoryFor}), ``stats`` its scope.
    """

    def __init__(self, connect, stats):
        self._connect = connect
        self._counters = (stats.counter("upstream_cx_tunnel_total", help="Tunnel connections made upstream"),
                          stats.gauge("upstream_cx_tunnel_active", help="Tunnel connections open upstream"),
                          stats.counter("upstream_cx_tunnel_connect_fail", help="Tunnel connects that failed"))

    def connectorFor(self, host, kind):
        return TunnelConnector(host, self._connect, kind, self._counters)
