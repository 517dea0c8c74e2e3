"""
The multiplexed pool of one HTTP/2 upstream host.  Streams share a connection up to the peer's
SETTINGS_MAX_CONCURRENT_STREAMS (and ``maxStreamsPerConnection``); a new connection opens when every one is
saturated.  ``acquire()`` gives a per-request stream handle (the connection's ``newStream()``);
``release``/``discard`` end that stream only.  Connections are kept alive with PING (closed if unanswered within
the timeout); after a GOAWAY a connection takes no new streams, streams above its last-stream-id are replayed on
another connection when their request is small enough to have been kept, and the others finish.

Everything but that is L{txmesh.upstream.conn_pool.ConnectionPoolBase}.  The connection is an
L{IHTTP2ClientConnection}; what it reports (SETTINGS, GOAWAY, loss) comes to the pool through its connection record,
an L{IHTTP2ClientCallbacks}.
"""

from collections import deque

from twisted.logger import Logger
from zope.interface import implementer

from txmesh.errors import UpstreamReset
from txmesh.interfaces import IHTTP2ClientCallbacks
from txmesh.protocols.h2.stats import H2UpstreamStats
from txmesh.upstream.conn_pool import ActiveClient, ConnectionPoolBase

KEEPALIVE_INTERVAL = 30.0
KEEPALIVE_TIMEOUT = 10.0
KEEPALIVE_INTERVAL_MAX = 7200.0  # doubling after too_many_pings stops here (gRPC servers' bound without calls)
MAX_STREAMS_PER_CONNECTION = 1000


@implementer(IHTTP2ClientCallbacks)
class _H2Client(ActiveClient):
    """One HTTP/2 connection's record; the connection reports to it."""

    __slots__ = ()

    @property
    def stats(self):
        return self.pool.h2stats

    def capacityChanged(self):
        self.pool.capacityChanged(self)

    def goawayReceived(self, unprocessed):
        self.pool.goawayReceived(self, unprocessed)

    def connectionLost(self):
        self.pool.connectionLost(self.proto)

    def pingsRefused(self, interval):
        self.pool.pingsRefused(interval)


class H2ConnectionPool(ConnectionPoolBase):
    """
    @param clock: IReactorTime for connect timeouts and keepalive.
    @param host: the IHost.
    @param clusterConfig: connectTimeout, maxConnections, maxPendingRequests, maxConcurrentStreams (0: 1000, and
        never above the peer's limit), heartbeatInterval (the PING interval; 0: 30 s).
    @param connect: ``connect(host) -> Deferred`` firing with a connected H2ClientProtocol.
    @param stats: the cluster's Scope.
    @param resources: the cluster's ClusterResources (see ConnectionPoolBase).
    """

    log = Logger()
    clientClass = _H2Client
    MORE_DEMAND = True  # GOAWAY replays wait too

    def __init__(self, clock, host, clusterConfig, connect, stats, resources=None):
        ConnectionPoolBase.__init__(self, clock, host, clusterConfig, connect, stats, resources)
        self.maxConnections = clusterConfig.maxConnections
        self.keepaliveInterval = clusterConfig.heartbeatInterval or KEEPALIVE_INTERVAL
        self.keepaliveTimeout = KEEPALIVE_TIMEOUT
        self.maxStreamsPerConnection = clusterConfig.maxConcurrentStreams or MAX_STREAMS_PER_CONNECTION
        self.h2stats = H2UpstreamStats(stats)
        self._streams = {}  # handle -> _H2Client, every stream handed out and not yet released
        self._retry = deque()  # handles refused by GOAWAY, waiting for a stream

    # -- the protocol's part ------------------------------------------------------------------------------------

    def capacity(self, client):
        return min(client.proto.maxStreams(), self.maxStreamsPerConnection)

    def makeStream(self, client):
        handle = client.proto.newStream()
        self._streams[handle] = client
        return handle

    def streamClient(self, handle):
        client = self._streams.pop(handle, None)
        if client is None and self._retry and handle in self._retry:
            self._retry.remove(handle)  # given up while waiting to be replayed
        return client

    def resetStream(self, client, handle):
        client.proto.resetStream(handle)

    def watch(self, client):
        client.proto.setCallbacks(client)

    def clientReady(self, client):
        client.proto.startKeepalive(self.clock, self.keepaliveInterval, self.keepaliveTimeout)

    def demand(self):
        return len(self._pending) + len(self._retry)

    def servePending(self):
        retry = self._retry
        while retry:
            client = self.pick()
            if client is None:
                break
            handle = retry.popleft()
            self.take(client)
            self._streams[handle] = client
            client.proto.replayStream(handle)
        ConnectionPoolBase.servePending(self)

    def failPending(self, make):
        ConnectionPoolBase.failPending(self, make)
        retry, self._retry = self._retry, deque()
        for handle in retry:
            handle.proto.failStream(handle, make())

    # -- what connections report ----------------------------------------------------------------------------------

    def pingsRefused(self, interval):
        """
        A connection pinging every ``interval`` seconds got GOAWAY "too_many_pings": double the interval for every
        connection of this pool (gRPC A8), up to KEEPALIVE_INTERVAL_MAX.  A connection still on an interval the
        pool already doubled changes nothing (several may report the same refusal).
        """
        if interval < self.keepaliveInterval or self.keepaliveInterval >= KEEPALIVE_INTERVAL_MAX:
            return
        new = self.keepaliveInterval = min(interval * 2, KEEPALIVE_INTERVAL_MAX)
        self.h2stats.keepalive_backoff.value += 1
        self.log.warn("upstream {host} refused PINGs every {old}s as too many (GOAWAY too_many_pings); the "
                      "keepalive interval of its connections is now {new}s", host=self.host.address, old=interval,
                      new=new)
        for client in list(self._clients.values()):
            client.proto.setKeepaliveInterval(new)

    def goawayReceived(self, client, unprocessed):
        """No new streams on ``client``; replay the streams it did not process where they were kept, else fail them."""
        client.capacity = 0
        self._retire(client)
        proto = client.proto
        for handle in unprocessed:
            if self._closed or handle not in self._streams or not proto.canReplay(handle):
                # the router discards the handle when told
                proto.failStream(handle, UpstreamReset("upstream sent GOAWAY before processing the stream"))
                continue
            del self._streams[handle]
            if not client.closed:  # a closed connection's streams were uncounted already
                self.untake(client)
            self.h2stats.goaway_retried.value += 1
            self._retry.append(handle)
        if client.active == 0:
            self._close(client, abort=False)
        self.servePending()
