"""
The HTTP/2 upstream pool and client protocol in memory: H2ClientProtocol over StringTransports, answered by h2
server-side connections; time by a Clock.
"""

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2 import events as h2events
from h2.settings import SettingCodes, Settings
from hyperframe.frame import GoAwayFrame
from twisted.internet import defer
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from tests import h2wire
from txmesh import errors
from txmesh.config import ClusterConfig
from txmesh.protocols.h2.client import H2ClientProtocol
from txmesh.stats import StatsStore
from txmesh.stream import HeaderMap, RequestHead
from txmesh.protocols.h2.pool import H2ConnectionPool
from txmesh.upstream.host import Host


class Peer:
    """An upstream HTTP/2 server on the other side of one client connection."""

    def __init__(self, proto, maxStreams):
        self.proto = proto
        self.conn = H2Connection(H2Configuration(client_side=False, header_encoding=None))
        self.conn.local_settings = Settings(client=False, initial_values={
            SettingCodes.MAX_CONCURRENT_STREAMS: maxStreams})
        self.conn.initiate_connection()
        self.requests = []
        self.pings = 0

    def pump(self):
        """Deliver what the client wrote to the server and back."""
        data = self.proto.transport.value()
        self.proto.transport.clear()
        if data:
            for e in self.conn.receive_data(data):
                if isinstance(e, h2events.RequestReceived):
                    self.requests.append(e.stream_id)
                elif isinstance(e, h2events.PingReceived):
                    self.pings += 1
        out = self.conn.data_to_send()
        if out:
            self.proto.dataReceived(out)

    def respond(self, sid, body=b"ok"):
        self.conn.send_headers(sid, [(b":status", b"200"), (b"content-type", b"application/grpc")])
        self.conn.send_data(sid, body)
        self.conn.send_headers(sid, [(b"grpc-status", b"0")], end_stream=True)
        self.pump()


class Responder(h2wire.Responder):
    """Records a head by its status only and trailers by their grpc-status."""

    def upstreamHeaders(self, head, endStream):
        self.events.append(("headers", head.status))

    def upstreamTrailers(self, trailers):
        self.events.append(("trailers", trailers.get(b"grpc-status")))


def makePool(maxStreams=2, **config):
    clock = Clock()
    peers = []

    def connect(host):
        proto = H2ClientProtocol()
        proto.makeConnection(StringTransport())
        peer = Peer(proto, maxStreams)
        peers.append(peer)
        peer.pump()
        return defer.succeed(proto)

    stats = StatsStore()
    host = Host("127.0.0.1", 1, 1, stats=stats.scope(host="h"))
    pool = H2ConnectionPool(clock, host, ClusterConfig("c", protocol="h2", **config), connect, stats.scope(cluster="c"))
    return pool, peers, clock, stats


def head():
    return RequestHead(b"POST", b"/pkg.Svc/M", b"svc", HeaderMap([(b"content-type", b"application/grpc")]),
                       version=(2, 0), protocol="grpc")


def start(pool):
    handles = []
    pool.acquire().addCallback(handles.append)
    r = Responder()
    handles[0].sendRequest(head(), True, r)
    return handles[0], r


def test_streams_share_a_connection_up_to_peer_limit():
    pool, peers, _, _ = makePool(maxStreams=2)
    a, ra = start(pool)
    b, rb = start(pool)
    assert len(peers) == 1
    c, rc = start(pool)  # the peer allows 2: a second connection opens
    assert len(peers) == 2
    for p in peers:
        p.pump()
    assert peers[0].requests == [1, 3] and peers[1].requests == [1]
    peers[0].respond(1, b"A")
    assert ra.events == [("headers", 200), ("data", b"A", False), ("complete",), ("trailers", b"0")]
    pool.release(a)
    d, rd = start(pool)  # the freed slot on the first connection is reused
    assert len(peers) == 2 and d.proto is peers[0].proto


def test_goaway_retries_unprocessed_streams_and_lets_the_rest_finish():
    pool, peers, _, stats = makePool(maxStreams=10)
    a, ra = start(pool)
    b, rb = start(pool)
    peers[0].pump()
    # GOAWAY written raw: the h2 server state machine would refuse to answer stream 1 after it
    peers[0].proto.dataReceived(GoAwayFrame(0, last_stream_id=1).serialize())
    # stream 3 was not processed: it was sent again on a new connection
    assert len(peers) == 2
    peers[1].pump()
    assert peers[1].requests == [1]
    assert stats.total("upstream_h2_goaway_received") == 1
    assert stats.total("upstream_h2_goaway_retried") == 1
    peers[1].respond(1, b"B")
    assert ("data", b"B", False) in rb.events
    # stream 1 finishes on the old connection
    peers[0].respond(1, b"A")
    assert ("data", b"A", False) in ra.events
    # no new stream goes to the old connection
    c, _ = start(pool)
    assert c.proto is peers[1].proto


def test_reset_from_upstream_fails_the_stream():
    pool, peers, _, _ = makePool()
    a, ra = start(pool)
    peers[0].pump()
    peers[0].conn.reset_stream(1, 2)
    peers[0].pump()
    # Envoy's UR (upstream remote reset), not UC: the connection itself stays up
    assert ra.events == [("failed", errors.UpstreamRemoteReset)]
    assert errors.UpstreamRemoteReset.flag == "UR"


def test_discard_resets_the_stream_only():
    pool, peers, _, _ = makePool()
    a, ra = start(pool)
    b, rb = start(pool)
    peers[0].pump()
    a.abandon()
    pool.discard(a)
    resets = [e for e in peers[0].conn.receive_data(a.proto.transport.value()) if isinstance(e, h2events.StreamReset)]
    assert [e.stream_id for e in resets] == [1]
    assert not a.proto.transport.disconnecting


def test_unanswered_ping_closes_connection():
    pool, peers, clock, stats = makePool()
    a, ra = start(pool)
    clock.advance(30)  # keepalive PING sent
    clock.advance(10)  # not answered
    assert ra.events == [("failed", errors.UpstreamReset)]
    assert a.proto.transport.disconnecting
    assert stats.total("upstream_h2_ping_timeout") == 1


def test_answered_ping_keeps_connection():
    pool, peers, clock, _ = makePool()
    a, ra = start(pool)
    clock.advance(30)
    peers[0].pump()
    clock.advance(10)
    assert ra.events == []
    assert not a.proto.transport.disconnecting


def test_no_ping_while_frames_arrive():
    """gRPC A8: a PING only after the interval passed with nothing received."""
    pool, peers, clock, stats = makePool()
    a, ra = start(pool)
    peer = peers[0]
    peer.pump()
    peer.conn.send_headers(1, [(b":status", b"200"), (b"content-type", b"application/grpc")])
    for _ in range(10):
        clock.advance(20)
        peer.conn.send_data(1, b"x")  # a message every 20 s: never 30 s quiet
        peer.pump()
    assert peer.pings == 0 and stats.total("upstream_h2_keepalive_ping") == 0
    clock.advance(30)  # now quiet for the interval
    peer.pump()
    assert peer.pings == 1


def test_no_ping_on_a_connection_without_streams():
    pool, peers, clock, _ = makePool()
    a, ra = start(pool)
    peers[0].pump()
    peers[0].respond(1, b"A")
    pool.release(a)
    clock.advance(600)
    peers[0].pump()
    assert peers[0].pings == 0


def test_at_most_two_pings_without_data_then_quiet_until_the_peer_sends_data():
    """A gRPC server strikes a PING that follows another without its sending data; the third strike is a GOAWAY."""
    pool, peers, clock, _ = makePool()
    a, ra = start(pool)
    peer = peers[0]
    for _ in range(10):
        clock.advance(30)
        peer.pump()  # PINGs acknowledged: the connection is alive, the stream just silent
    assert peer.pings == 2
    peer.conn.send_headers(1, [(b":status", b"200"), (b"content-type", b"application/grpc")])
    peer.pump()
    clock.advance(30)
    peer.pump()
    assert peer.pings == 3


TOO_MANY_PINGS = GoAwayFrame(0, last_stream_id=1, error_code=0xB, additional_data=b"too_many_pings").serialize()


def test_too_many_pings_doubles_the_interval_of_every_connection_once():
    pool, peers, clock, stats = makePool(maxStreams=1)
    a, ra = start(pool)
    b, rb = start(pool)
    assert len(peers) == 2
    for p in peers:
        p.pump()
    peers[0].proto.dataReceived(TOO_MANY_PINGS)
    assert pool.keepaliveInterval == 60
    assert stats.total("upstream_h2_keepalive_backoff") == 1
    # the other connection, pinging every 30 s too, is refused as well: the pool doubled already
    peers[1].proto.dataReceived(TOO_MANY_PINGS)
    assert pool.keepaliveInterval == 60 and stats.total("upstream_h2_keepalive_backoff") == 1
    # a new connection pings after 60 quiet seconds, not 30
    c, rc = start(pool)
    peer = peers[2]
    peer.pump()
    clock.advance(59)
    peer.pump()
    assert peer.pings == 0
    clock.advance(1)
    peer.pump()
    assert peer.pings == 1


def test_the_doubled_interval_is_capped():
    pool, peers, clock, stats = makePool(heartbeatInterval=5000.0)
    a, ra = start(pool)
    peers[0].proto.dataReceived(TOO_MANY_PINGS)
    assert pool.keepaliveInterval == 7200.0


def test_another_enhance_your_calm_leaves_the_interval():
    pool, peers, clock, stats = makePool()
    a, ra = start(pool)
    peers[0].proto.dataReceived(GoAwayFrame(0, last_stream_id=1, error_code=0xB, additional_data=b"flood").serialize())
    assert pool.keepaliveInterval == 30 and stats.total("upstream_h2_keepalive_backoff") == 0


def test_connection_out_of_stream_ids_is_replaced():
    """RFC 9113 5.1.1: stream ids cannot be reused; a connection that used its last id takes no new stream, its
    open streams finish, and it closes when they are released."""
    pool, peers, _, _ = makePool(maxStreams=10)
    a, ra = start(pool)
    first = peers[0].proto
    first.conn._nextId = (1 << 31) - 1  # the last client stream id comes next
    b, rb = start(pool)
    assert b.sid == (1 << 31) - 1 and b.proto is first
    c, rc = start(pool)
    assert c.proto is not first and len(peers) == 2
    for p in peers:
        p.pump()
    peers[0].respond(1, b"A")
    peers[0].respond((1 << 31) - 1, b"B")
    assert ("data", b"B", False) in rb.events
    pool.release(a)
    assert not first.transport.disconnecting
    pool.release(b)
    assert first.transport.disconnecting


def test_lowered_stream_limit_sends_new_streams_to_another_connection():
    """A SETTINGS that lowers MAX_CONCURRENT_STREAMS below the streams in use leaves the connection no room."""
    pool, peers, _, _ = makePool(maxStreams=10)
    a, _ = start(pool)
    peers[0].conn.update_settings({SettingCodes.MAX_CONCURRENT_STREAMS: 1})
    peers[0].pump()
    b, _ = start(pool)
    assert len(peers) == 2 and b.proto is peers[1].proto
    pool.release(a)
    c, _ = start(pool)  # room again on the first
    assert c.proto is peers[0].proto


def test_stream_given_up_while_waiting_for_replay_is_not_replayed():
    pool, peers, _, stats = makePool(maxStreams=10, maxConnections=1)
    a, ra = start(pool)
    b, rb = start(pool)
    peers[0].pump()
    peers[0].proto.dataReceived(GoAwayFrame(0, last_stream_id=1).serialize())
    assert len(peers) == 1  # no room for a second connection: stream 3 waits
    b.abandon()
    pool.discard(b)
    peers[0].respond(1, b"A")
    pool.release(a)
    assert peers[0].proto.transport.disconnecting
    peers[0].proto.connectionLost(Failure(ConnectionDone()))
    assert len(peers) == 1 and rb.events == []
    assert stats.total("upstream_rq_active") == 0 and stats.total("upstream_cx_active") == 0


def test_cluster_idle_timeout_closes_an_unused_connection():
    pool, peers, clock, stats = makePool(idleTimeout=45.0)
    a, ra = start(pool)
    peers[0].pump()
    peers[0].respond(1, b"A")
    pool.release(a)
    clock.advance(30)  # a keepalive PING, answered: still not a stream
    peers[0].pump()
    assert not a.proto.transport.disconnecting
    clock.advance(15)
    assert a.proto.transport.disconnecting
    assert stats.value("upstream_cx_idle_timeout", cluster="c") == 1
