"""Counters of HTTP/2 and gRPC listeners and upstream connections, made once per listener or cluster."""

from txmesh.protocols.listener import HTTPListenerStats
from txmesh.stats import LabelledCounter


def grpcStatusLabel(code):
    """The ``code`` label of a grpc-status field's bytes (``none`` when absent or empty)."""
    return code.decode("ascii", "replace") if code else "none"


class H2ListenerStats(HTTPListenerStats):
    """
    The HTTP listener series plus streams, GOAWAYs, floods, gRPC statuses and messages.  ``flood(kind)`` counts a
    connection closed for a flood; ``grpcStatus(code)`` a grpc-status returned (the field's bytes).
    """

    def __init__(self, stats, listener):
        HTTPListenerStats.__init__(self, stats, listener)
        s = self._scope
        self.streams_opened = s.counter("downstream_h2_streams", help="HTTP/2 streams opened by clients")
        self.streams_refused = s.counter("downstream_h2_streams_refused",
                                         help="HTTP/2 streams refused past SETTINGS_MAX_CONCURRENT_STREAMS")
        self.streams_reset_by_peer = s.counter("downstream_h2_rx_reset", help="RST_STREAM received from clients")
        self.streams_reset_sent = s.counter("downstream_h2_tx_reset", help="RST_STREAM sent to clients")
        self.goaway_sent = s.counter("downstream_h2_goaway_sent", help="GOAWAY frames sent")
        self.goaway_received = s.counter("downstream_h2_goaway_received", help="GOAWAY frames received")
        self.messages_in = s.counter("downstream_grpc_messages_in", help="gRPC request messages received")
        self.messages_out = s.counter("downstream_grpc_messages_out", help="gRPC response messages sent")
        self.flood = LabelledCounter(s, "downstream_h2_flood_close",
                                     "Connections closed for a frame flood or rapid reset", "kind").inc
        self.grpcStatus = LabelledCounter(s, "downstream_grpc_status", "gRPC statuses returned", "code",
                                          grpcStatusLabel).inc


class H2UpstreamStats:
    """
    Per-cluster HTTP/2 series (on the cluster's scope); the client protocol counts in them.  ``grpcStatus(code)``
    counts a grpc-status an upstream returned (the field's bytes).
    """

    def __init__(self, scope):
        c = scope.counter
        self.streams_opened = c("upstream_h2_streams", help="HTTP/2 streams opened upstream")
        self.streams_reset_sent = c("upstream_h2_tx_reset", help="RST_STREAM sent upstream")
        self.streams_reset_by_peer = c("upstream_h2_rx_reset", help="RST_STREAM received from upstream")
        self.goaway_received = c("upstream_h2_goaway_received", help="GOAWAY frames received from upstream")
        self.goaway_retried = c("upstream_h2_goaway_retried",
                                help="Streams above a GOAWAY's last-stream-id retried on another connection")
        self.ping_timeout = c("upstream_h2_ping_timeout", help="Connections closed as their PING went unanswered")
        self.pings_sent = c("upstream_h2_keepalive_ping", help="Keepalive PINGs sent upstream")
        self.keepalive_backoff = c("upstream_h2_keepalive_backoff",
                                   help="Keepalive intervals doubled after GOAWAY too_many_pings")
        self.grpcStatus = LabelledCounter(scope, "upstream_grpc_status", "gRPC statuses from upstream", "code",
                                          grpcStatusLabel).inc
