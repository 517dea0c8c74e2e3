"""
One connection-pool base for every upstream protocol, after Envoy's ``conn_pool_base.h`` (ConnPoolImplBase and
ActiveClient).

The base owns what every pool does the same way: connecting, the connect timeout, an optional exponential connect
backoff, the pending queue of cancellable Deferreds, overflow (``maxPendingRequests``), the connection limit, the
idle timeout, max streams per connection, drain, connection-lost bookkeeping, and every shared counter.  A protocol's
pool (``txmesh/protocols/<p>/pool.py``) is a small subclass that supplies:

  - ``capacity(client)``: how many streams a connection takes at once (1 for HTTP/1.1, N for Dubbo, the peer's
    MAX_CONCURRENT_STREAMS bounded by config for HTTP/2; 0 once it takes no more).  A protocol whose capacity
    changes calls ``capacityChanged(client)``;
  - ``makeStream(client)``: the IUpstreamStream handed out for one request on ``client``, and
    ``streamClient(stream)``: the ActiveClient a handed-out stream belongs to, or None if it already ended;
  - ``resetStream(client, stream)``: end one stream that was discarded (multiplexed protocols);
  - ``watch(client)``: wire the client protocol's connection-lost notification to ``connectionLost`` (the default
    sets ``proto.onConnectionLost``), and ``clientReady``/``clientClosed`` for per-connection timers (heartbeats).

With a backoff (``BACKOFF``), a request that arrives while it is in force waits in the queue for the connect that
starts when it ends, bounded by its own timeout, rather than failing at once (after a peer restarts, the next
attempt usually succeeds); if that connect fails, it fails the waiters.

Two connect policies: a *ping-pong* pool (``PER_REQUEST_CONNECTS``) makes one connect per request that found no idle
connection, owned by that request (its failure fails that request only, cancelling the request cancels the
connect); a multiplexed pool queues requests and runs one connect at a time, which serves every waiter it has room
for; if it fails while no connection is open, every waiter fails.
"""

from collections import deque

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from txmesh.errors import ConnectFailure, ConnectTimeout, Overflow, PoolClosed
from txmesh.interfaces import IConnectionPool
from txmesh.upstream.resources import ClusterResources


class ActiveClient:
    """
    The pool's record of one connection, from its connect to its close (Envoy's ActiveClient).

    ``active``: streams handed out and not yet released; ``capacity``: streams it may carry at once; ``served``:
    streams it ever carried; ``draining``: it takes no new stream and closes once ``active`` is 0.
    """

    __slots__ = ("pool", "proto", "active", "capacity", "served", "draining", "closed", "ready", "owner",
                 "connecting", "connectTimer", "timedOut", "cancelled", "idleSince", "idleTimer")

    def __init__(self, pool):
        self.pool = pool
        self.proto = None
        self.active = 0
        self.capacity = 0
        self.served = 0
        self.draining = False
        self.closed = False
        self.ready = False  # in the pool's list of connections with room
        self.owner = None  # ping-pong: the acquire() Deferred this connect is for
        self.connecting = None  # the connect Deferred, while connecting
        self.connectTimer = None
        self.timedOut = False
        self.cancelled = False
        self.idleSince = 0.0
        self.idleTimer = None

    def describe(self):
        return {"active": self.active, "capacity": self.capacity, "served": self.served, "draining": self.draining}


@implementer(IConnectionPool)
class ConnectionPoolBase:
    """
    Connections to one host; see the module docstring for what subclasses supply.

    @param clock: an IReactorTime for the connect, idle and backoff timers.
    @param host: the IHost.
    @param clusterConfig: connectTimeout, idleTimeout (seconds; 0 = none) and maxPendingRequests; subclasses read
        their own limits.
    @param connect: ``connect(host) -> Deferred`` firing with a connected client protocol.
    @param stats: the cluster's txmesh.stats.Scope; the upstream_cx_* and upstream_rq_* series are made there (the
        same series the Cluster reads).
    @param resources: the cluster's txmesh.upstream.resources.ClusterResources, shared by all its pools (its
        circuit breakers): a new connection takes one of ``connections`` (as Envoy, a pool with no connection at
        all may always make one, so no request waits on a pool that cannot connect; otherwise the connect is not
        made, counted in upstream_cx_overflow, and the request waits as pending), a queued request one of
        ``pendingRequests`` (none left: Overflow at once, upstream_rq_pending_overflow).  None: the pool's own,
        with Envoy's defaults.
    """

    log = Logger()
    clientClass = ActiveClient
    PER_REQUEST_CONNECTS = False
    BACKOFF = None  # (base, max) seconds of the exponential connect backoff, or None
    MORE_DEMAND = False  # True if demand() counts more than the pending queue
    DRAINING_COUNTS = True  # False: a draining connection leaves room for a new one under maxConnections

    # set by subclasses from their config
    maxConnections = 1
    maxRequestsPerConnection = 0

    def __init__(self, clock, host, clusterConfig, connect, stats, resources=None):
        self.clock = clock
        self.host = host
        self._connect = connect
        self.connectTimeout = clusterConfig.connectTimeout or 0
        self.maxPendingRequests = clusterConfig.maxPendingRequests
        # every protocol's connections close after idle_timeout without a stream (0 = never); heartbeats and
        # PINGs are not streams
        self.idleTimeout = clusterConfig.idleTimeout or 0

        self._clients = {}  # proto -> ActiveClient, every open connection
        self._ready = []  # ActiveClients with room for a stream, most recently freed last
        self._connectingClients = []
        self._closing = set()  # protos we closed whose connectionLost has not come yet
        self._pending = deque()  # acquire() Deferreds waiting, oldest first
        self._failures = 0  # consecutive failed connects (for the backoff)
        self._retryAt = 0.0
        self._retryTimer = None  # starts the next connect when the backoff ends, while requests wait
        self._closed = False
        self._serveQueued = False  # closed to new requests, but still serving the queued ones (drain(True))
        self._drained = []
        if resources is None:
            resources = ClusterResources()
        self._cxLimit = resources.connections
        self._pendingLimit = resources.pendingRequests

        c = stats.counter
        self._rqTotal = c("upstream_rq_total", help="Requests sent (or queued) upstream.")
        self._rqActive = stats.gauge("upstream_rq_active", help="Requests in flight upstream.")
        self._cxTotal = c("upstream_cx_total", help="Upstream connections opened.")
        self._cxActive = stats.gauge("upstream_cx_active", help="Open upstream connections.")
        self._cxConnectFail = c("upstream_cx_connect_fail", help="Upstream connects that failed (timeouts included).")
        self._cxConnectTimeout = c("upstream_cx_connect_timeout", help="Upstream connects that timed out.")
        self._cxIdleTimeout = c("upstream_cx_idle_timeout", help="Upstream connections closed as idle too long.")
        self._cxDestroy = c("upstream_cx_destroy", help="Upstream connections closed.")
        self._rqPendingOverflow = c("upstream_rq_pending_overflow",
                                    help="Requests failed at once because the pending queue was full.")
        self._rqPendingActive = stats.gauge("upstream_rq_pending_active", help="Requests waiting for a connection.")
        self._cxOverflow = c("upstream_cx_overflow",
                             help="Connects not made because the cluster's circuit_breakers.max_connections was reached.")

    # -- what subclasses supply ---------------------------------------------------------------------------------

    def capacity(self, client):
        """How many streams ``client`` may carry at once now."""
        return 1

    def makeStream(self, client):
        """The IUpstreamStream for one request on ``client``."""
        return client.proto

    def streamClient(self, stream):
        """The ActiveClient of a handed-out ``stream`` that has not ended yet (then it has), else None."""
        client = self._clients.get(stream)
        if client is None or client.active == 0:
            return None
        return client

    def resetStream(self, client, stream):
        """``stream`` on ``client`` was discarded: end it on the wire if it is still open."""

    def watch(self, client):
        """Have ``client.proto`` report its loss to ``connectionLost``."""
        client.proto.onConnectionLost = self.connectionLost

    def clientReady(self, client):
        """``client`` is connected (start its timers)."""

    def clientClosed(self, client):
        """``client`` is closed or lost (stop its timers)."""

    def pick(self):
        """The connection with room a new stream goes to: the most recently freed one."""
        ready = self._ready
        return ready[-1] if ready else None

    def demand(self):
        """Requests waiting for a stream."""
        return len(self._pending)

    # -- IConnectionPool ----------------------------------------------------------------------------------------

    def acquire(self):
        """
        A stream on a connection with room, else on a new connection (below the connection limit), else after
        queueing (below maxPendingRequests).  Cancel the Deferred if the request goes away meanwhile.

        @return: a Deferred firing with an IUpstreamStream, or failing with Overflow (queue full, at once),
            ConnectTimeout, ConnectFailure (the cause chained) or PoolClosed.
        """
        stream = self.acquireIdle()
        if stream is not None:
            return defer.succeed(stream)
        self._rqTotal.value += 1
        self.host.stats.rq_total.value += 1
        if self._closed:
            return defer.fail(PoolClosed("pool for %s is closed" % (self.host.address,)))
        if self.PER_REQUEST_CONNECTS and self._roomToConnect() and not self._backingOff():
            d = defer.Deferred(self._cancelWaiter)
            self._startConnect(d)
            return d
        if len(self._pending) >= self.maxPendingRequests:
            self._rqPendingOverflow.value += 1
            return defer.fail(Overflow("pending queue of %s is full (%d)" % (self.host.address,
                                                                             self.maxPendingRequests)))
        pendingLimit = self._pendingLimit
        if not pendingLimit.canCreate():
            self._rqPendingOverflow.value += 1
            return defer.fail(Overflow("the cluster's pending requests are at circuit_breakers.max_pending_requests "
                                       "(%d)" % (pendingLimit.max,)))
        d = defer.Deferred(self._cancelWaiter)
        self._pending.append(d)
        pendingLimit.inc()
        self._rqPendingActive.value += 1
        self._connectIfNeeded()
        if self._clusterBlocks():
            self._cxOverflow.value += 1
        return d

    def acquireIdle(self):
        """
        The synchronous fast path of acquire(): a stream on a connection with room now (counted like acquire()),
        or None when acquire() must be used.
        """
        if self._closed:
            return None
        client = self.pick()
        if client is None:
            return None
        self._rqTotal.value += 1
        self.host.stats.rq_total.value += 1
        # take(client), inline: this is the per-request path under load
        client.active += 1
        client.served += 1
        self._rqActive.value += 1
        if client.active >= client.capacity:
            self._unfile(client)
        if self.maxRequestsPerConnection and client.served >= self.maxRequestsPerConnection:
            self._retire(client)
        return self.makeStream(client)

    def release(self, stream):
        """The exchange on ``stream`` ended normally; its connection may carry another."""
        client = self.streamClient(stream)
        if client is not None:
            self._streamEnded(client)

    def discard(self, stream):
        """The exchange on ``stream`` ended abnormally: only that stream ends (reset if still open)."""
        client = self.streamClient(stream)
        if client is not None:
            self.resetStream(client, stream)
            self._streamEnded(client)

    def drain(self, serveQueued=False):
        """
        Refuse new requests (PoolClosed), fail queued ones with PoolClosed, stop connects nobody waits for, close
        idle connections now and busy ones when their streams end.

        @param serveQueued: let the queued requests keep their place and be served (connecting for them as
            needed) before all that: the pool of a host removed from its cluster (Envoy's drain for deletion), so
            no admitted request fails for the host set's change.
        @return: a Deferred firing with None once every connection is closed.
        """
        if serveQueued and self._pending and not self._closed:
            self._closed = self._serveQueued = True
            d = defer.Deferred()
            self._drained.append(d)
            self._connectIfNeeded()
            self._checkDrained()
            return d
        self._closed = True
        self._serveQueued = False
        if self._retryTimer is not None:
            self._retryTimer.cancel()
            self._retryTimer = None
        self.failPending(lambda: PoolClosed("pool for %s was drained" % (self.host.address,)))
        for client in list(self._connectingClients):
            if client.owner is None:
                client.cancelled = True
                client.connecting.cancel()
        for client in list(self._clients.values()):
            if client.active == 0:
                self._close(client, abort=False)
            else:
                self._retire(client)
        d = defer.Deferred()
        self._drained.append(d)
        self._checkDrained()
        return d

    def describe(self):
        """A JSON-able dict of the pool's state, for the admin API."""
        return {
            "host": self.host.address,
            "closed": self._closed,
            "connections": len(self._clients),
            "connecting": len(self._connectingClients),
            "closing": len(self._closing),
            "ready": len(self._ready),
            "pending": len(self._pending),
            "active_streams": sum(c.active for c in self._clients.values()),
            "clients": [c.describe() for c in self._clients.values()],
        }

    # -- state, for tests -----------------------------------------------------------------------------------------

    @property
    def connectionCount(self):
        return len(self._clients)

    @property
    def pendingCount(self):
        return len(self._pending)

    @property
    def activeStreams(self):
        return sum(c.active for c in self._clients.values())

    # -- for subclasses -----------------------------------------------------------------------------------------

    def capacityChanged(self, client):
        """``capacity(client)`` may have changed (SETTINGS, GOAWAY): file it again, serve waiters."""
        if client.closed:
            return
        client.capacity = self.capacity(client)
        if client.capacity == 0:
            self._retire(client)
            if client.active == 0:
                self._close(client, abort=False)
        else:
            self._file(client)
        self.servePending()

    def connectionLost(self, proto):
        """The connection of ``proto`` ended, by our close or not (its protocol failed its streams already)."""
        if proto in self._closing:
            self._closing.discard(proto)
            self._checkDrained()
            return
        client = self._clients.get(proto)
        if client is None:
            return
        self._forget(client)
        self._connectIfNeeded()
        self._checkDrained()

    def close(self, client, abort=False):
        """Close ``client`` now; its in-flight streams are failed by its protocol on connectionLost."""
        self._close(client, abort)
        self._connectIfNeeded()
        self._checkDrained()

    def servePending(self):
        """Give waiting requests streams on connections with room; connect if some still wait."""
        pending = self._pending
        while pending:
            client = self.pick()
            if client is None:
                break
            d = pending.popleft()
            self._rqPendingActive.value -= 1
            self._pendingLimit.dec()
            d.callback(self._open(client))
        if self.demand():
            self._connectIfNeeded()
        self._checkDrained()

    def failPending(self, make):
        """Fail every waiting request with ``make()``."""
        pending, self._pending = self._pending, deque()
        self._rqPendingActive.value -= len(pending)
        for d in pending:
            self._pendingLimit.dec()
            d.errback(Failure(make()))

    # -- internals ----------------------------------------------------------------------------------------------

    def _open(self, client):
        self.take(client)
        return self.makeStream(client)

    def take(self, client):
        """Count one more stream on ``client`` (``makeStream`` makes it, or a subclass moves one there)."""
        client.active += 1
        client.served += 1
        self._rqActive.value += 1
        if client.active >= client.capacity:
            self._unfile(client)
        if self.maxRequestsPerConnection and client.served >= self.maxRequestsPerConnection:
            self._retire(client)

    def untake(self, client):
        """One stream leaves ``client`` without ending (moved elsewhere): uncount it."""
        client.active -= 1
        self._rqActive.value -= 1
        self._file(client)

    def _streamEnded(self, client):
        if client.closed:
            return
        client.active -= 1
        self._rqActive.value -= 1
        if client.draining:
            if client.active == 0:
                self._close(client, abort=False)
                self._connectIfNeeded()
                self._checkDrained()
            return
        if not client.ready and client.active < client.capacity:
            client.ready = True
            self._ready.append(client)
        if self._pending or (self.MORE_DEMAND and self.demand()):
            self.servePending()
        if client.active == 0 and self.idleTimeout and not client.closed:
            client.idleSince = self.clock.seconds()
            if client.idleTimer is None:
                client.idleTimer = self.clock.callLater(self.idleTimeout, self._idleTimerFired, client)

    def _file(self, client):
        """Put an open client in the ready list if it has room, else take it out."""
        if client.draining or client.closed:
            return
        if client.active < client.capacity:
            if not client.ready:
                client.ready = True
                self._ready.append(client)
        else:
            self._unfile(client)

    def _unfile(self, client):
        if client.ready:
            client.ready = False
            ready = self._ready
            if ready[-1] is client:
                del ready[-1]
            else:
                ready.remove(client)

    def _retire(self, client):
        """``client`` takes no new stream; it closes when its streams end."""
        client.draining = True
        self._unfile(client)

    def _cancelWaiter(self, d):
        """The requester went away: leave the queue, or stop the connect made for it."""
        try:
            self._pending.remove(d)
        except ValueError:
            for client in self._connectingClients:
                if client.owner is d:
                    # _connectFailed sees the cancel, frees the slot and lets a queued request connect
                    client.cancelled = True
                    client.connecting.cancel()
                    return
            return
        self._rqPendingActive.value -= 1
        self._pendingLimit.dec()
        self._checkDrained()

    def _counted(self):
        """
        Connections toward the pool's own limit: connecting and open ones; with DRAINING_COUNTS False, not those
        draining (retired: they take no new stream); the cluster's ``max_connections`` counts every one.
        """
        if self.DRAINING_COUNTS:
            return len(self._connectingClients) + len(self._clients)
        return len(self._connectingClients) + sum(1 for c in self._clients.values() if not c.draining)

    def _roomToConnect(self):
        """Room for one more connect: below the pool's own limit, and the cluster's (see the class docstring)."""
        count = self._counted()
        if count >= self.maxConnections:
            return False
        return not count or self._cxLimit.canCreate()

    def _clusterBlocks(self):
        """A connect this pool would make now is refused by the cluster's limit alone."""
        count = self._counted()
        return (0 < count < self.maxConnections and not self._cxLimit.canCreate()
                and (self.PER_REQUEST_CONNECTS or not self._connectingClients))

    def _backingOff(self):
        """
        True while the connect backoff is in force: then requests wait in the queue for the connect that starts
        when it ends (bounded by their own timeout, which cancels them), rather than failing at once, since a
        fresh attempt may well succeed (the peer restarted).
        """
        if not self._failures:
            return False
        wait = self._retryAt - self.clock.seconds()
        if wait <= 0:
            return False
        if self._retryTimer is None:
            self._retryTimer = self.clock.callLater(wait, self._retryTimerFired)
        return True

    def _retryTimerFired(self):
        self._retryTimer = None
        self._connectIfNeeded()

    def _connectIfNeeded(self):
        """Connect for waiting requests while there is room; during a backoff, when it ends."""
        if self._closed and not self._serveQueued:
            return
        if self.PER_REQUEST_CONNECTS:
            if self._pending and self._backingOff():
                return
            pending = self._pending
            while pending and self._roomToConnect():
                d = pending.popleft()
                self._rqPendingActive.value -= 1
                self._pendingLimit.dec()
                self._startConnect(d)
            return
        # one connect at a time serves every waiter it has room for; the next starts when it ends
        if self._connectingClients or not self.demand() or not self._roomToConnect():
            return
        if self._backingOff():
            return
        self._startConnect(None)

    def _startConnect(self, owner):
        client = self.clientClass(self)
        client.owner = owner
        self._connectingClients.append(client)
        self._cxLimit.inc()
        self._cxTotal.value += 1
        self.host.stats.cx_total.value += 1
        try:
            d = self._connect(self.host)
        except Exception:
            d = defer.fail()
        client.connecting = d
        if self.connectTimeout and not d.called:
            client.connectTimer = self.clock.callLater(self.connectTimeout, self._connectTimedOut, client)
        d.addCallbacks(self._connected, self._connectFailed, callbackArgs=(client,), errbackArgs=(client,))

    def _connectTimedOut(self, client):
        client.connectTimer = None
        client.timedOut = True
        client.connecting.cancel()

    def _connectDone(self, client):
        self._connectingClients.remove(client)
        client.connecting = None
        if client.connectTimer is not None:
            client.connectTimer.cancel()
            client.connectTimer = None

    def _connected(self, proto, client):
        self._connectDone(client)
        self._failures = 0
        client.proto = proto
        self._clients[proto] = client
        self._cxActive.value += 1
        self.watch(client)
        client.capacity = self.capacity(client)
        self.clientReady(client)
        owner, client.owner = client.owner, None
        if owner is not None and not owner.called:
            # a ping-pong connect is its requester's, even after drain (the request was admitted before)
            stream = self._open(client)
            if self._closed:
                self._retire(client)
            owner.callback(stream)
            return None
        if self._closed and not self._serveQueued:
            self._close(client, abort=False)
            self._checkDrained()
            return None
        # the requester went away meanwhile, or a multiplexed connect: the connection serves whoever waits
        self._file(client)
        self.servePending()
        if client.active == 0 and self.idleTimeout and not client.closed and client.idleTimer is None:
            client.idleSince = self.clock.seconds()
            client.idleTimer = self.clock.callLater(self.idleTimeout, self._idleTimerFired, client)
        return None

    def _connectFailed(self, failure, client):
        self._connectDone(client)
        self._cxLimit.dec()
        if client.cancelled:
            # the requester went away or the pool drained; its Deferred is already failed
            self._connectIfNeeded()
            self._checkDrained()
            return None
        self._cxConnectFail.value += 1
        self.host.stats.cx_connect_fail.value += 1
        if self.BACKOFF is not None:
            base, most = self.BACKOFF
            self._failures += 1
            self._retryAt = self.clock.seconds() + min(most, base * 2 ** (self._failures - 1))
        if client.timedOut:
            self._cxConnectTimeout.value += 1
            message = "connect to %s timed out after %gs" % (self.host.address, self.connectTimeout)
            make = lambda: ConnectTimeout(message)
        else:
            message = "connect to %s failed: %s" % (self.host.address, failure.getErrorMessage())
            # a typed connect failure (a TLS handshake or verification, txmesh.tls.client) keeps its type: its cause
            kind = type(failure.value) if isinstance(failure.value, ConnectFailure) else ConnectFailure

            def make():
                error = kind(message)
                error.__cause__ = failure.value
                return error

        if client.owner is not None:
            # the failure belongs to this request only; a queued one gets a fresh attempt
            client.owner.errback(Failure(make()))
            self._connectIfNeeded()
        elif not self._clients:
            # nobody can serve the waiting requests: they had their attempt
            self.failPending(make)
        self._checkDrained()
        return None

    def _idleTimerFired(self, client):
        client.idleTimer = None
        if client.active or client.closed:
            # reused since the timer was set (acquire does not cancel timers, to stay cheap); release re-arms it
            return
        remaining = client.idleSince + self.idleTimeout - self.clock.seconds()
        if remaining > 1e-6:
            client.idleTimer = self.clock.callLater(remaining, self._idleTimerFired, client)
            return
        self._cxIdleTimeout.value += 1
        self.close(client)

    def _forget(self, client):
        """``client`` leaves the pool: off every list, timers stopped, counted closed, its streams forgotten."""
        client.closed = True
        self._unfile(client)
        self._clients.pop(client.proto, None)
        if client.idleTimer is not None:
            if client.idleTimer.active():
                client.idleTimer.cancel()
            client.idleTimer = None
        self._rqActive.value -= client.active
        self._cxActive.value -= 1
        self._cxLimit.dec()
        self._cxDestroy.value += 1
        self.clientClosed(client)

    def _close(self, client, abort):
        """Close a connection; drain waits for its connectionLost."""
        if client.closed:
            return
        self._forget(client)
        proto = client.proto
        transport = getattr(proto, "transport", None)
        if transport is None:
            return
        self._closing.add(proto)
        if abort and hasattr(transport, "abortConnection"):
            transport.abortConnection()
        else:
            transport.loseConnection()

    def _checkDrained(self):
        if self._serveQueued and not self._pending:
            # drain(serveQueued=True): the last queued request was served (or failed, or went away): drain as usual
            self._serveQueued = False
            self._closed = False
            self.drain()  # the Deferred drain(True) returned waits in self._drained with this one's
            return
        if (self._drained and self._closed and not self._clients and not self._connectingClients
                and not self._closing):
            drained, self._drained = self._drained, []
            for d in drained:
                d.callback(None)
