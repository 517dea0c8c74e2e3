"""
The connection pool of one upstream host for ping-pong protocols (HTTP/1.1): one request per connection at a
time, as twisted.web.client.HTTPConnectionPool and MOSN's ping-pong pool mode.

Everything but the protocol's part is L{txmesh.upstream.conn_pool.ConnectionPoolBase}: a connection's capacity is 1,
the stream handed out is the client protocol itself (L{HTTP1ClientProtocol} provides IUpstreamStream), each request
that finds no idle connection makes its own connect, idle connections are reused most recently released first and
closed after ``idleTimeout``, and a connection closes after ``maxRequestsPerConnection`` requests.  ``discard``
aborts the connection (its response was not read to the end, or it said Connection: close).

``host.activeRequests`` (read by the least-request balancer) is kept by the router, for the whole life of the
request; the pool counts requests (upstream_rq_total, host rq_total) and connections.
"""

from txmesh.upstream.conn_pool import ConnectionPoolBase


class HTTP1ConnectionPool(ConnectionPoolBase):
    """
    Connections to one host, one request at a time each.

    @param clock: an IReactorTime for the connect and idle timers.
    @param host: the IHost.
    @param clusterConfig: connectTimeout, idleTimeout (seconds; 0 = none), maxConnections, maxPendingRequests,
        maxRequestsPerConnection (0 = unlimited).
    @param connect: ``connect(host) -> Deferred`` firing with a connected client protocol; the pool sets its
        ``onConnectionLost``, which the protocol calls (with itself) from ``connectionLost``.
    @param stats: the cluster's txmesh.stats.Scope.
    @param resources: the cluster's ClusterResources (see ConnectionPoolBase).
    """

    PER_REQUEST_CONNECTS = True

    def __init__(self, clock, host, clusterConfig, connect, stats, resources=None):
        ConnectionPoolBase.__init__(self, clock, host, clusterConfig, connect, stats, resources)
        self.maxConnections = clusterConfig.maxConnections
        self.maxRequestsPerConnection = clusterConfig.maxRequestsPerConnection or 0

    def discard(self, proto):
        """``proto`` must not be reused (bad framing, unfinished response, Connection: close): abort it."""
        client = self._clients.get(proto)
        if client is not None:
            self.close(client, abort=True)

    @property
    def idleCount(self):
        return len(self._ready)

    @property
    def busyCount(self):
        return len(self._clients) - len(self._ready)
