"""
What every listener shares, whatever its protocol.

- L{DrainingFactory}: knows its open connections so SIGTERM can drain them.  A protocol it builds adds itself to
  ``factory.connections`` when connected, removes itself and calls ``factory.connectionEnded(self)`` when its
  connection is lost, and has a ``drain()`` method that closes it now if idle, else after its in-flight work.
- L{ListenerFactory}: what the built-in listener factories read from the listener's config and the runtime, and
  the overload check every new connection passes (``buildProtocol`` returns None past the listener's
  ``limits.max_connections``, the global ``overload.max_connections`` or under memory pressure: Twisted closes it).
- L{ListenerProtocol}: one downstream connection's accounting, peer address, writer and write-buffer watcher (and
  ``limits.write_timeout``: a client that leaves its write buffer full that long is dropped), and
  L{ListenerProtocol.prepareRequest} (forwarding headers, request id, StreamInfo) for every request it decodes.
- L{Deadline}: one lazily re-armed timer per connection for the idle and request-head timeouts.
- L{ListenerStats}: the per-listener counters every protocol has.
"""

import ipaddress

from twisted.internet import defer
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from zope.interface import implementer

from txmesh.interfaces import IListenerConnection, IListenerFactory, IStreamFactorySwitch
from txmesh.overload import GLOBAL_LIMIT, LISTENER_LIMIT
from txmesh.protocols.transport import WriteWatcher, Writer
from txmesh.stream import StreamInfo, newRequestId
from txmesh.tls.server import downstreamTLSOf
from txmesh.tls.server_config import ForwardClientCert
from txmesh.tls.xfcc import applyForwardClientCert, xfccElement

from txmesh.stats import LabelledCounter


@implementer(IListenerFactory)
class DrainingFactory(Factory):
    """Base of the listener factories: connection tracking and a graceful drain."""

    listenerName = None

    def __init__(self):
        self.connections = set()
        self.draining = False
        self._drained = []

    def drain(self):
        """Stop keeping connections alive; fires (a Deferred) when every connection has closed."""
        self.draining = True
        for p in list(self.connections):
            p.drain()
        if not self.connections:
            return defer.succeed(None)
        d = defer.Deferred()
        self._drained.append(d)
        return d

    def abortAll(self):
        """Drop every connection at once (after the drain timeout)."""
        for p in list(self.connections):
            p.transport.abortConnection()

    def closeIdleConnections(self):
        """The protocols of this base cannot say whether they are idle: none is closed."""
        return 0

    def connectionEnded(self, proto):
        if self.draining and not self.connections:
            waiting, self._drained = self._drained, []
            for d in waiting:
                d.callback(None)


@implementer(IStreamFactorySwitch)
class ListenerFactory(DrainingFactory):
    """
    Base of the built-in listener factories: one ``protocol(factory)`` per connection.

    @ivar stats: the listener's counters (a L{ListenerStats} or a protocol's richer kind).
    """

    protocol = None
    log = Logger()

    def __init__(self, listenerConfig, template, runtime, stats):
        DrainingFactory.__init__(self)
        self.listenerName = listenerConfig.name
        self.limits = listenerConfig.limits
        forwarding = listenerConfig.forwarding
        self.useRemoteAddress = forwarding.useRemoteAddress
        self.trustedHops = forwarding.trustedHops
        self.internalRanges = forwarding.internalRanges
        # gRPC carries the scheme in :scheme and has no use for x-forwarded-proto (see docs/configuration.md)
        self.forwardedProto = listenerConfig.protocol != "grpc"
        # x-forwarded-client-cert (issue 14): sanitised by default, from every peer that is not mutual TLS
        self.forwardClientCert = listenerConfig.forwardClientCert or ForwardClientCert()
        node = runtime.node
        self.nodeId = node.id
        self.nodeField = (b"x-txmesh-node", node.id.encode("ascii"))
        self.template = template
        self.runtime = runtime
        self.clock = runtime.clock
        self.writeScope = runtime.writeScope
        self.stats = stats
        self.overload = runtime.overload
        self.maxConnections = self.limits.maxConnections

    def buildProtocol(self, addr):
        """A server protocol, or None (Twisted closes the connection) when the overload bounds refuse it."""
        why = self.overload.refusal(len(self.connections), self.maxConnections)
        if why is None:
            return self.protocol(self)
        stats = self.stats
        if why is LISTENER_LIMIT:
            stats.cx_overflow.value += 1
        elif why is GLOBAL_LIMIT:
            stats.cx_global_overflow.value += 1
        else:
            stats.cx_overload_reject.value += 1
        self.overload.logOnce.warn(("refused", self.listenerName, why),
                                   "listener {l}: refusing connections ({why}); {n} in the last {interval}s",
                                   l=self.listenerName, why=why)
        return None

    def connectionOpened(self, proto):
        """Put a new connection on the listener's books: its counters, its connection set, the overload count."""
        stats = self.stats
        stats.cx_total.value += 1
        stats.cx_active.value += 1
        self.connections.add(proto)
        self.overload.connectionOpened()

    def connectionClosed(self, proto):
        """Take a connection off the books (it closed, or protocol detection handed it to another listener)."""
        self.stats.cx_active.value -= 1
        self.connections.discard(proto)
        self.overload.connectionClosed()
        self.connectionEnded(proto)

    def closeIdleConnections(self):
        """Close every idle connection (L{IListenerConnection.closeIfIdle}).  @return: how many."""
        return sum(1 for p in list(self.connections) if p.closeIfIdle())


@implementer(IListenerConnection)
class ListenerProtocol(Protocol):
    """
    Base of the listener protocols.  Subclasses call ``ListenerProtocol.connectionMade`` first and
    ``ListenerProtocol.connectionLost`` last, and say when they are idle (``isIdle``) and how they drain
    (``drain``).  A subclass that sets ``watchWrites`` gets ``writeBufferFull`` / ``writeBufferDrained`` calls when
    the transport's write buffer crosses its watermarks.  With ``limits.write_timeout``, a connection whose write
    buffer stays full that long (the client reads nothing) is aborted and counted (``downstream_cx_write_timeout``).

    @ivar peer: the peer address as 'host:port' (str), for StreamInfo and logs.
    @ivar peerHost: the peer's host (bytes), for x-forwarded-for.
    @ivar peerTrusted: whether the peer's x-request-id and x-forwarded-proto are kept: the listener does not use
        the remote address, trusts at least one hop (``xff_num_trusted_hops``), or the peer's address is internal.
    @ivar out: the connection's L{Writer}.
    @ivar writeBlocked: (with ``watchWrites``) the transport's write buffer is above its high watermark now; a
        stream that starts meanwhile must be told at once (``ActiveStream.downstreamWritePaused``).
    """

    watchWrites = False

    def __init__(self, factory):
        self.factory = factory
        self.peer = ""
        self.peerHost = b""
        self.local = None  # the listener's address this connection came in on, 'host:port' (the access log's)
        self.peerTrusted = True
        self.out = None
        self.writeBlocked = False
        self._writeTimer = None
        self.downstreamTls = None  # IDownstreamTLS on a TLS listener (its handshake is done before connectionMade)
        self.peerIdentity = None
        self._xfcc = None

    def connectionMade(self):
        f = self.factory
        f.connectionOpened(self)
        peer = self.transport.getPeer()
        host = getattr(peer, "host", None)  # an IAddress: UNIX addresses have no host or port
        if host is None:
            self.peer = str(peer)
        else:
            self.peer = "%s:%s" % (host, peer.port)
            self.peerHost = host.encode("ascii", "replace")
        local = self.transport.getHost()
        if getattr(local, "port", None) is not None:  # an IAddress: UNIX addresses have no host or port
            self.local = "%s:%s" % (local.host, local.port)
        if f.useRemoteAddress and not f.trustedHops:
            self.peerTrusted = isInternal(host, f.internalRanges)
        self.out = Writer(self.transport, f.writeScope)
        tls = self.downstreamTls = downstreamTLSOf(self.transport)
        if tls is not None:
            self.peerIdentity = tls.peer
        if self.watchWrites or f.limits.writeTimeout:
            self.transport.registerProducer(WriteWatcher(self._bufferFull, self._bufferDrained), True)

    def connectionLost(self, reason):
        f = self.factory
        self._cancelWriteTimer()
        f.connectionClosed(self)

    def _bufferFull(self):
        self.writeBlocked = True
        timeout = self.factory.limits.writeTimeout
        if timeout and self._writeTimer is None:
            self._writeTimer = self.factory.clock.callLater(timeout, self._writeTimedOut)
        if self.watchWrites:
            self.writeBufferFull()

    def _bufferDrained(self):
        self.writeBlocked = False
        self._cancelWriteTimer()
        if self.watchWrites:
            self.writeBufferDrained()

    def _cancelWriteTimer(self):
        timer, self._writeTimer = self._writeTimer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _writeTimedOut(self):
        """The client read nothing that let the write buffer drain for ``limits.write_timeout``: drop it."""
        self._writeTimer = None
        f = self.factory
        f.stats.cx_write_timeout.value += 1
        f.overload.logOnce.warn(("write_timeout", f.listenerName),
                                "listener {l}: closed a connection whose client did not read for {t}s ({peer}); "
                                "{n} in the last {interval}s", l=f.listenerName, t=f.limits.writeTimeout,
                                peer=self.peer)
        self.out.discard()
        self.transport.abortConnection()

    def isIdle(self):
        """Whether the connection carries nothing now (L{IListenerConnection.isIdle}); each protocol says."""
        raise NotImplementedError

    def drain(self):
        """Close now if idle, else after the in-flight work (L{IListenerConnection.drain}); each protocol says."""
        raise NotImplementedError

    def closeIfIdle(self):
        if self.isIdle():
            self.drain()
            return True
        return False

    def writeBufferFull(self):
        """The transport's write buffer is full (only with ``watchWrites``)."""

    def writeBufferDrained(self):
        """The transport's write buffer drained (only with ``watchWrites``)."""

    def prepareRequest(self, headers, scheme, protocol):
        """
        Make a decoded request's header fields ready for the filters, and its StreamInfo (Envoy's trust model):
        with ``use_remote_address``, append the peer to x-forwarded-for; set x-forwarded-proto (replacing the
        peer's unless it is trusted; not on gRPC listeners); keep a trusted peer's x-request-id, else make one;
        x-forwarded-client-cert as ``forward_client_cert_details`` says (txmesh.tls.xfcc).

        @param headers: the request's HeaderMap (changed in place).
        @param scheme: the request's scheme (bytes), for x-forwarded-proto.
        @param protocol: the StreamInfo protocol ('http/1.1', 'h2', 'grpc', ...).
        @return: the stream's StreamInfo.
        """
        f = self.factory
        if f.useRemoteAddress:
            xff = headers.get(b"x-forwarded-for")
            if xff is None:
                headers.add(b"x-forwarded-for", self.peerHost)  # add: no search for fields to replace
            else:
                headers.set(b"x-forwarded-for", xff + b", " + self.peerHost)
        if f.forwardedProto:
            if f.useRemoteAddress and not f.trustedHops:  # an edge: the scheme is ours to say
                headers.set(b"x-forwarded-proto", scheme)
            elif headers.get(b"x-forwarded-proto") is None:
                headers.add(b"x-forwarded-proto", scheme)
        applyForwardClientCert(headers, f.forwardClientCert, self.downstreamTls, self._xfccElement)
        rid = headers.get(b"x-request-id")
        if rid is None:
            rid = newRequestId()
            headers.add(b"x-request-id", rid)
        elif not self.peerTrusted:
            rid = newRequestId()
            headers.set(b"x-request-id", rid)
        info = StreamInfo(f.clock.seconds(), protocol, f.listenerName, self.peer)
        info.requestId = rid
        info.downstreamLocal = self.local
        info.peerIdentity = self.peerIdentity
        info.downstreamTls = self.downstreamTls
        return info

    def _xfccElement(self):
        if self._xfcc is None:
            self._xfcc = xfccElement(self.downstreamTls, self.factory.forwardClientCert.details)
        return self._xfcc

    def streamInfo(self, protocol):
        """A StreamInfo for a request of a protocol without forwarding headers (Dubbo)."""
        f = self.factory
        info = StreamInfo(f.clock.seconds(), protocol, f.listenerName, self.peer)
        info.downstreamLocal = self.local
        info.peerIdentity = self.peerIdentity
        info.downstreamTls = self.downstreamTls
        return info


def isInternal(host, ranges):
    """
    Whether the address ``host`` (str) is in one of ``ranges`` (ip_network); an IPv4-mapped IPv6 as IPv4.  None (a
    UNIX socket's peer: a process on this host, reached through a file the operator's mode guards) counts as
    internal, as loopback does.
    """
    if host is None:
        return True
    try:
        address = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return False
    if address.version == 6 and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in r for r in ranges)


class Deadline:
    """
    One timer per connection that is re-armed lazily: moving the deadline (``set``/``clear``) on the hot path creates
    and cancels no DelayedCall.  When the timer fires before the deadline it sleeps the rest, never longer than
    ``period`` (the shortest timeout it is ever given), so a later, nearer deadline is never overslept.

    @param clock: an IReactorTime.
    @param expired: called with the deadline's ``kind`` once it passes.
    """

    __slots__ = ("clock", "period", "expired", "deadline", "kind", "_timer")

    def __init__(self, clock, period, expired):
        self.clock = clock
        self.period = period
        self.expired = expired
        self.deadline = None
        self.kind = None
        self._timer = None

    def set(self, timeout, kind=None):
        """Expire ``timeout`` seconds from now (0 or None: never)."""
        if not timeout:
            self.deadline = self.kind = None
            return
        self.deadline = self.clock.seconds() + timeout
        self.kind = kind
        if self._timer is None:
            self._timer = self.clock.callLater(min(timeout, self.period), self._fired)

    def setSoon(self, timeout, kind=None):
        """L{set}, for a timeout that may be shorter than ``period`` (off the hot path: the timer is moved nearer)."""
        self.set(timeout, kind)
        timer = self._timer
        if timer is not None and self.deadline is not None and timer.getTime() > self.deadline:
            timer.reset(timeout)

    def clear(self):
        """No deadline for now (the timer, if any, lapses when it fires)."""
        self.deadline = self.kind = None

    def cancel(self):
        """No deadline, and no timer left behind (the connection is gone)."""
        self.deadline = self.kind = None
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None

    def release(self):
        """The connection is lost: cancel, and let go of ``expired`` (its method: a reference cycle)."""
        self.cancel()
        self.expired = _noLongerWatched

    def _fired(self):
        self._timer = None
        deadline = self.deadline
        if deadline is None:
            return
        remaining = deadline - self.clock.seconds()
        if remaining > 0:
            self._timer = self.clock.callLater(min(remaining, self.period), self._fired)
            return
        kind = self.kind
        self.deadline = self.kind = None
        self.expired(kind)


def _noLongerWatched(kind):
    """A cancelled Deadline's ``expired``: the connection it watched is gone."""


class ConnectionStats:
    """The connection counters every listener has (a protocol detection listener has only these)."""

    def __init__(self, stats, listener):
        s = stats.scope(listener=listener)
        self._scope = s
        self.cx_total = s.counter("downstream_cx", help="Connections accepted")
        self.cx_active = s.gauge("downstream_cx_active", help="Connections open")
        self.cx_overflow = s.counter("downstream_cx_overflow",
                                     help="Connections refused at the listener's limits.max_connections")
        self.cx_global_overflow = s.counter("downstream_global_cx_overflow",
                                            help="Connections refused at the global overload.max_connections")
        self.cx_overload_reject = s.counter("downstream_cx_overload_reject",
                                            help="Connections refused under memory pressure")


class ListenerStats(ConnectionStats):
    """
    The counters every listener has, made once per listener: connections and requests.  ``error(cause)`` counts a
    local error reply.  Protocols add theirs in subclasses (L{HTTPListenerStats}, the Dubbo and HTTP/2 ones).
    """

    def __init__(self, stats, listener):
        ConnectionStats.__init__(self, stats, listener)
        s = self._scope
        self.cx_protocol_error = s.counter("downstream_cx_protocol_error", help="Connections closed on bad input")
        self.cx_idle_timeout = s.counter("downstream_cx_idle_timeout", help="Idle connections closed")
        self.cx_write_timeout = s.counter("downstream_cx_write_timeout",
                                          help="Connections closed because the client did not read (write_timeout)")
        self.rq_total = s.counter("downstream_rq", help="Requests received")
        self.rq_active = s.gauge("downstream_rq_active", help="Requests in flight")
        self.error = LabelledCounter(s, "downstream_rq_error", "Local error replies by cause", "cause").inc


class HTTPListenerStats(ListenerStats):
    """The counters of HTTP listeners (HTTP/1.1 and HTTP/2): the request-head timeout and responses by class."""

    def __init__(self, stats, listener):
        ListenerStats.__init__(self, stats, listener)
        s = self._scope
        self.rq_timeout = s.counter("downstream_rq_header_timeout", help="Requests whose head came too slowly (408)")
        # indexed by status // 100 (1..5)
        self.rq_class = [None] + [s.counter("downstream_rq_xx", help="Responses by status class",
                                            code_class="%dxx" % c) for c in range(1, 6)]
        # tunnels (txmesh.protocols.tunnel): upgrades after a 101, CONNECT after its 200, RFC 8441 streams
        self.cx_upgrades_total = s.counter("downstream_cx_upgrades_total", help="Tunnels opened (upgrades, CONNECT)")
        self.cx_upgrades_active = s.gauge("downstream_cx_upgrades_active", help="Tunnels open now")
