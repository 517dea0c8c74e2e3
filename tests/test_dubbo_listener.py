"""
The Dubbo listener, router, multiplexed pool and Dubbo client protocol together, in memory: downstream and upstream
connections are StringTransports, time is a Clock, frames are real captured ones (tests/fixtures/dubbo-frames).
"""

import os

import pytest
from twisted.internet import defer
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from txmesh.protocols.dubbo import codec as dc
from txmesh.protocols.dubbo.client import DubboClientProtocol
from txmesh.testing import InMemoryMesh

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "dubbo-frames")


def load(name):
    with open(os.path.join(FIXTURES, name)) as f:
        return bytes.fromhex(f.read())


SOFA = "sofa-consumer__sofa-provider/"
ECHO = load(SOFA + "c0-c2s-000-req-echo.hex")
ECHO_RESP = load(SOFA + "c0-s2c-000-resp-echo-status20.hex")
ADD = load(SOFA + "c0-c2s-001-req-add.hex")
ADD_RESP = load(SOFA + "c0-s2c-001-resp-add-status20.hex")
ATTACH = load(SOFA + "c0-c2s-003-req-attachments.hex")
FAIL_RESP = load(SOFA + "c0-s2c-004-resp-fail-status20.hex")
HEARTBEAT = load(SOFA + "c1-c2s-000-heartbeat.hex")
# Dubbo's READONLY event as Apache Dubbo's HeaderExchangeServer sends it (id 7): request | event | hessian2, one-way
READONLY_CAPTURE = bytes.fromhex("dabba2000000000000000007000000020152")
PY_ECHO = load("dubbopy-consumer__sofa-provider/c0-c2s-000-req-echo.hex")  # no attachments, version 1.0.0
ONEWAY = [load("dubbopy-consumer__sofa-provider/" + n) for n in sorted(os.listdir(FIXTURES + "/dubbopy-consumer__sofa-provider"))
          if n.endswith(".hex") and "c2s" in n and load("dubbopy-consumer__sofa-provider/" + n)[2] == 0x82]



def withRequestId(frame, rid="rid-1"):
    """``frame`` as a caller's sidecar forwards it: with an x-request-id attachment (forwarded untouched here)."""
    f = dc.DubboDecoder().feed(frame)[0]
    inv = f.invocation
    return dc.encodeRequestWithAttachments(f, inv, dict(inv.attachments, **{"x-request-id": rid}))


ECHO_RID, ADD_RID, PY_ECHO_RID = withRequestId(ECHO), withRequestId(ADD), withRequestId(PY_ECHO)
ONEWAY_RID = withRequestId(ONEWAY[0]) if ONEWAY else None

MESH = """
listeners:
- name: dubbo_in
  protocol: dubbo
  address: tcp:0
  %(default)s
  route_config:
    virtual_hosts:
    - name: all
      domains: ["*"]
      routes:
      - match: {dubbo: {interface: "org.txmesh.peers.*", group: SOFA, attachments: [{name: x-txmesh-test, exact: att-value-1}]}}
        route: {cluster: tagged}
        request_headers_to_add: [{name: x-routed, value: tagged}]
      - match: {dubbo: {interface: org.txmesh.peers.EchoService, version: "1.0.0", group: SOFA}}
        route: {cluster: provider, timeout: 5s}
clusters:
- name: provider
  protocol: dubbo
  %(heartbeat)s
  max_pending_requests: %(pending)d
  max_concurrent_streams: %(concurrent)d
  endpoints: [{address: "10.0.0.1:20880"}]
- name: tagged
  protocol: dubbo
  endpoints: [{address: "10.0.0.2:20880"}]
- name: fallback
  protocol: dubbo
  endpoints: [{address: "10.0.0.3:20880"}]
"""


def header(frame):
    return frame[:4], int.from_bytes(frame[4:12], "big"), frame[12:]


def frames(data):
    return dc.DubboDecoder().feed(data)


class Mesh:
    """One Dubbo listener (txmesh.testing.InMemoryMesh) wired to clusters whose connects are answered by the test."""

    def __init__(self, default=None, pending=100, concurrent=0, autoConnect=True, heartbeat=None, grace=None):
        text = MESH % {"default": ("default_cluster: %s" % default) if default else "", "pending": pending,
                       "concurrent": concurrent,
                       "heartbeat": ("heartbeat_interval: %s" % heartbeat) if heartbeat else ""}
        if grace is not None:
            text = text.replace("  route_config:", "  limits: {drain_grace: %s}\n  route_config:" % grace, 1)
        self.autoConnect = autoConnect
        self.upstreams = {}  # host address -> [DubboClientProtocol]
        self.connects = []  # (address, Deferred) not answered yet

        def connect(host, clusterConfig):
            if self.autoConnect:
                return defer.succeed(self.makeUpstream(host.address))
            d = defer.Deferred()
            self.connects.append((host.address, d))
            return d

        mesh = InMemoryMesh(text, connect=connect)
        self.clock, self.stats, self.clusters, self.factory = mesh.clock, mesh.stats, mesh.clusters, mesh.factory

    def makeUpstream(self, address):
        proto = DubboClientProtocol()
        proto.makeConnection(StringTransport())
        self.upstreams.setdefault(address, []).append(proto)
        return proto

    def client(self):
        proto = self.factory.buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        return proto, transport

    def upstream(self, address="10.0.0.1:20880", i=0):
        return self.upstreams[address][i]

    def value(self, name, **labels):
        return self.stats.total(name, **labels)


def sent(proto):
    """Frames the client protocol wrote upstream (and clears them)."""
    data = proto.transport.value()
    proto.transport.clear()
    return frames(data)


def answer(upstream, request, response):
    """Feed ``response`` (a captured frame) to the upstream protocol as the reply to ``request`` (a DubboFrame)."""
    upstream.dataReceived(dc.withRequestId(response, request.requestId) + response[16:])


def replies(transport):
    data = transport.value()
    transport.clear()
    return frames(data)


def test_echo_forwarded_untouched_and_answered_with_the_downstream_id():
    mesh = Mesh()
    proto, t = mesh.client()
    proto.dataReceived(ECHO_RID)
    up = mesh.upstream()
    [req] = sent(up)
    assert req.header[:4] == ECHO_RID[:4] and req.body == ECHO_RID[16:]
    answer(up, req, ECHO_RESP)
    [resp] = replies(t)
    assert resp.toBytes() == ECHO_RESP  # the same id (1) as the downstream request, body untouched
    assert mesh.value("dubbo_requests", service="org.txmesh.peers.EchoService", method="echo", kind="two_way") == 1
    assert mesh.value("dubbo_responses", method="echo", status="20") == 1
    assert mesh.value("downstream_rq_active") == 0
    assert mesh.clusters.get("provider").poolFor(mesh.clusters.get("provider").hosts[0]).activeStreams == 0


def test_byte_by_byte_input_gives_the_same_result():
    mesh = Mesh()
    proto, t = mesh.client()
    for i in range(len(ECHO_RID + ADD_RID)):
        proto.dataReceived((ECHO_RID + ADD_RID)[i:i + 1])
    up = mesh.upstream()
    reqs = sent(up)
    assert [r.body for r in reqs] == [ECHO_RID[16:], ADD_RID[16:]]


def test_ids_of_two_clients_are_remapped_and_answers_go_back_out_of_order():
    mesh = Mesh()
    (p1, t1), (p2, t2) = mesh.client(), mesh.client()
    p1.dataReceived(ECHO)  # id 1
    p2.dataReceived(ECHO)  # id 1 too
    p2.dataReceived(dc.withRequestId(ADD, 7) + ADD[16:])
    up = mesh.upstream()
    assert len(mesh.upstreams["10.0.0.1:20880"]) == 1  # one shared connection
    r1, r2, r3 = sent(up)
    assert len({r1.requestId, r2.requestId, r3.requestId}) == 3
    answer(up, r3, ADD_RESP)
    answer(up, r2, ECHO_RESP)
    answer(up, r1, ECHO_RESP)
    assert [(f.requestId, f.body) for f in replies(t2)] == [(7, ADD_RESP[16:]), (1, ECHO_RESP[16:])]
    assert [(f.requestId, f.body) for f in replies(t1)] == [(1, ECHO_RESP[16:])]


def test_heartbeat_is_answered_locally_with_its_id():
    mesh = Mesh()
    proto, t = mesh.client()
    proto.dataReceived(HEARTBEAT)
    [reply] = replies(t)
    assert reply.event and not reply.isRequest and reply.status == dc.OK
    assert reply.requestId == dc.DubboDecoder().feed(HEARTBEAT)[0].requestId
    assert mesh.upstreams == {}
    assert mesh.value("dubbo_heartbeats", listener="dubbo_in") == 1


def test_one_way_call_is_forwarded_and_leaves_nothing_pending():
    assert ONEWAY, "the fixtures hold a one-way request"
    mesh = Mesh(default="provider")
    proto, t = mesh.client()
    proto.dataReceived(ONEWAY_RID)
    up = mesh.upstream()
    [req] = sent(up)
    assert not req.twoWay and req.body == ONEWAY_RID[16:]
    assert t.value() == b""
    assert proto.calls == {} and not proto.oneWay and up.activeStreams == 0
    assert mesh.value("dubbo_requests", kind="one_way") == 1
    assert mesh.value("downstream_rq_active") == 0


def test_no_route_is_service_not_found_with_the_id():
    mesh = Mesh()
    proto, t = mesh.client()
    proto.dataReceived(dc.withRequestId(PY_ECHO, 42) + PY_ECHO[16:])  # no group: no route matches
    [reply] = replies(t)
    assert (reply.requestId, reply.status) == (42, dc.SERVICE_NOT_FOUND)
    assert "no_route" in dc.decodeErrorMessage(reply)
    assert mesh.value("downstream_rq_error", cause="no_route") == 1


def test_default_cluster_takes_unrouted_calls():
    mesh = Mesh(default="fallback")
    proto, t = mesh.client()
    proto.dataReceived(PY_ECHO_RID)
    [req] = sent(mesh.upstream("10.0.0.3:20880"))
    assert req.body == PY_ECHO_RID[16:]


def test_attachment_route_and_added_attachment_reencodes_the_body():
    mesh = Mesh()
    proto, t = mesh.client()
    proto.dataReceived(ATTACH)
    [req] = sent(mesh.upstream("10.0.0.2:20880"))
    att = req.invocation.attachments
    assert att["x-routed"] == "tagged" and att["traceid"] == "abc123" and att["x-txmesh-test"] == "att-value-1"
    original = dc.DubboDecoder().feed(ATTACH)[0].invocation
    assert req.body[:original.attachmentsOffset] == ATTACH[16:16 + original.attachmentsOffset]  # args untouched


def test_timeout_attachment_bounds_the_call_and_a_late_answer_is_dropped():
    mesh = Mesh()
    frame = dc.DubboDecoder().feed(ECHO)[0]
    inv = frame.invocation
    data = dc.encodeRequestWithAttachments(frame, inv, dict(inv.attachments, timeout="250"))
    proto, t = mesh.client()
    proto.dataReceived(data)
    up = mesh.upstream()
    [req] = sent(up)
    assert req.invocation.attachments["timeout"] == "240"  # the provider is told the time left, less 10 ms
    mesh.clock.advance(0.2)
    assert t.value() == b""
    mesh.clock.advance(0.06)
    [reply] = replies(t)
    assert (reply.requestId, reply.status) == (1, dc.CLIENT_TIMEOUT)
    answer(up, req, ECHO_RESP)
    assert t.value() == b"" and up.lateResponses == 1
    assert mesh.value("dubbo_timeouts", method="echo") == 1


def test_a_timeout_attachment_beyond_the_route_timeout_is_forwarded_as_the_route_timeout():
    mesh = Mesh()
    frame = dc.DubboDecoder().feed(ECHO)[0]
    data = dc.encodeRequestWithAttachments(frame, frame.invocation, dict(frame.invocation.attachments, timeout="8000"))
    proto, t = mesh.client()
    proto.dataReceived(data)
    [req] = sent(mesh.upstream())
    assert req.invocation.attachments["timeout"] == "4990"  # the route's 5 s, less 10 ms


def test_route_timeout_applies_without_attachment():
    mesh = Mesh()
    proto, t = mesh.client()
    proto.dataReceived(dc.withRequestId(PY_ECHO, 1) + PY_ECHO[16:])  # no group: no route, answered at once
    [reply] = replies(t)
    assert (reply.requestId, reply.status) == (1, dc.SERVICE_NOT_FOUND)
    proto.dataReceived(dc.withRequestId(ECHO, 2) + ECHO[16:])  # the route's timeout is 5s
    mesh.clock.advance(4.99)
    assert t.value() == b""
    mesh.clock.advance(0.02)
    [reply] = replies(t)
    assert (reply.requestId, reply.status) == (2, dc.CLIENT_TIMEOUT)
    assert mesh.value("dubbo_timeouts", method="echo") == 1


def test_answered_heartbeats_keep_the_idle_upstream_connection():
    mesh = Mesh(heartbeat="200ms")
    proto, t = mesh.client()
    proto.dataReceived(ECHO)
    up = mesh.upstream()
    [req] = sent(up)
    answer(up, req, ECHO_RESP)
    replies(t)
    pings = 0
    for _ in range(6):  # six intervals idle, each heartbeat answered by the provider
        mesh.clock.advance(0.2)
        for f in sent(up):
            assert f.event and f.isRequest
            up.dataReceived(dc.encodeHeartbeatResponse(f.requestId))
            pings += 1
    assert pings >= 3
    proto.dataReceived(dc.withRequestId(ECHO, 2) + ECHO[16:])
    [req] = sent(up)
    answer(up, req, ECHO_RESP)
    [reply] = replies(t)
    assert (reply.requestId, reply.status) == (2, dc.OK)
    assert len(mesh.upstreams["10.0.0.1:20880"]) == 1 and not up.transport.disconnecting
    assert mesh.value("upstream_cx_total", cluster="provider") == 1
    assert mesh.value("upstream_cx_heartbeat_fail", cluster="provider") == 0


def test_provider_killed_with_calls_in_flight_then_gone():
    mesh = Mesh()
    proto, t = mesh.client()
    for i in range(1, 7):  # answered at once
        proto.dataReceived(dc.withRequestId(ECHO, i) + ECHO[16:])
    up = mesh.upstream()
    for req in sent(up):
        answer(up, req, ECHO_RESP)
    assert sorted(f.requestId for f in replies(t)) == [1, 2, 3, 4, 5, 6]
    for i in range(10, 15):  # held by the provider
        proto.dataReceived(dc.withRequestId(ECHO, i) + ECHO[16:])
    assert len(sent(up)) == 5
    mesh.autoConnect = False  # the provider is gone: the next connect is refused
    up.connectionLost(Failure(ConnectionDone()))
    got = replies(t)
    assert sorted(f.requestId for f in got) == [10, 11, 12, 13, 14]
    assert {f.status for f in got} == {dc.SERVER_ERROR}  # at once, not after the route timeout
    proto.dataReceived(dc.withRequestId(ECHO, 20) + ECHO[16:])
    [(address, d)] = mesh.connects
    d.errback(Failure(ConnectionRefusedError()))
    [reply] = replies(t)
    assert (reply.requestId, reply.status) == (20, dc.SERVICE_NOT_FOUND)


def test_upstream_lost_with_calls_in_flight_answers_every_one():
    mesh = Mesh()
    proto, t = mesh.client()
    for i in range(1, 6):
        proto.dataReceived(dc.withRequestId(ECHO, i) + ECHO[16:])
    up = mesh.upstream()
    assert len(sent(up)) == 5
    up.connectionLost(Failure(ConnectionDone()))
    got = replies(t)
    assert sorted(f.requestId for f in got) == [1, 2, 3, 4, 5]
    assert {f.status for f in got} == {dc.SERVER_ERROR}
    assert proto.calls == {}
    # the next call reconnects
    proto.dataReceived(ECHO)
    assert len(mesh.upstreams["10.0.0.1:20880"]) == 2


def test_connect_failure_is_service_not_found():
    mesh = Mesh(autoConnect=False)
    proto, t = mesh.client()
    proto.dataReceived(ECHO)
    proto.dataReceived(dc.withRequestId(ECHO, 2) + ECHO[16:])
    [(address, d)] = mesh.connects
    d.errback(Failure(ConnectionRefusedError()))
    got = replies(t)
    assert sorted((f.requestId, f.status) for f in got) == [(1, dc.SERVICE_NOT_FOUND), (2, dc.SERVICE_NOT_FOUND)]


def test_overflow_is_threadpool_exhausted():
    mesh = Mesh(pending=1, concurrent=1)
    proto, t = mesh.client()
    for i in (1, 2, 3):  # 1 in flight, 2 waits, 3 overflows
        proto.dataReceived(dc.withRequestId(ECHO, i) + ECHO[16:])
    [reply] = replies(t)
    assert (reply.requestId, reply.status) == (3, dc.SERVER_THREADPOOL_EXHAUSTED_ERROR)
    up = mesh.upstream()
    [req] = sent(up)
    answer(up, req, ECHO_RESP)  # frees the stream: 2 goes
    assert [f.requestId for f in replies(t)] == [1]
    assert len(sent(up)) == 1


def test_business_exception_is_counted_and_relayed():
    mesh = Mesh()
    proto, t = mesh.client()
    proto.dataReceived(ECHO)
    up = mesh.upstream()
    [req] = sent(up)
    answer(up, req, FAIL_RESP)
    [reply] = replies(t)
    assert reply.body == FAIL_RESP[16:]
    assert mesh.value("dubbo_business_exceptions", method="echo") == 1


def test_bad_magic_closes_without_reply():
    mesh = Mesh()
    proto, t = mesh.client()
    proto.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert t.value() == b"" and t.disconnecting
    assert mesh.value("dubbo_decode_errors") == 1


def test_oversize_length_is_refused_from_the_header():
    mesh = Mesh()
    proto, t = mesh.client()
    proto.dataReceived(ECHO[:12] + (9 * 1024 * 1024).to_bytes(4, "big") + b"x" * 10)
    [reply] = replies(t)
    assert (reply.requestId, reply.status) == (1, dc.BAD_REQUEST)
    assert t.disconnecting and mesh.upstreams == {}
    assert mesh.value("dubbo_decode_errors") == 1


def test_truncated_frame_waits_and_malformed_body_keeps_the_connection():
    mesh = Mesh()
    proto, t = mesh.client()
    proto.dataReceived(ECHO[:-5])
    assert t.value() == b"" and not t.disconnecting and mesh.upstreams == {}
    proto.dataReceived(ECHO[-5:])
    assert len(sent(mesh.upstream())) == 1
    bad = dc.encodeHeader(0xc2, 0, 9, 4) + b"\x05\x01\x02\x03"  # a string claiming 5 chars, 3 bytes left
    proto.dataReceived(bad)
    [reply] = replies(t)
    assert (reply.requestId, reply.status) == (9, dc.BAD_REQUEST) and not t.disconnecting
    assert mesh.value("dubbo_decode_errors") == 1
    proto.dataReceived(dc.withRequestId(ECHO, 10) + ECHO[16:])
    assert len(sent(mesh.upstream())) == 1


def test_downstream_disconnect_cancels_its_calls():
    mesh = Mesh()
    proto, t = mesh.client()
    proto.dataReceived(ECHO)
    up = mesh.upstream()
    [req] = sent(up)
    proto.connectionLost(Failure(ConnectionDone()))
    assert up.activeStreams == 0
    answer(up, req, ECHO_RESP)
    assert up.lateResponses == 1


def test_service_method_series_are_capped():
    mesh = Mesh(default="fallback")
    mesh.factory.stats.maxServiceMethods = 3
    proto, t = mesh.client()
    frame = dc.DubboDecoder().feed(PY_ECHO)[0]
    for i in range(10):
        inv = frame.invocation
        data = dc.encodeRequestWithAttachments(frame, inv, {"interface": "svc.N%d" % i})
        proto.dataReceived(dc.withRequestId(data, i) + data[16:])
    series = mesh.stats.snapshot()["dubbo_requests"]
    assert len({e["labels"]["service"] for e in series}) == 4
    assert mesh.value("dubbo_requests", service="_other", method="_other") == 7


@pytest.mark.parametrize("data", [b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", b"ls\r\n", b"\xda\x00"],
                         ids=["http", "telnet", "second-byte"])
def test_non_dubbo_bytes_close_the_connection_at_the_first_wrong_byte(data):
    """The listener does not wait for 16 bytes: the first byte that disagrees with the magic closes the
    connection (nothing in flight to answer), counted as a decode error and a protocol error."""
    mesh = Mesh()
    proto, t = mesh.client()
    wrong = 0 if data[0] != 0xDA else 1
    for i in range(wrong):
        proto.dataReceived(data[i:i + 1])
        assert not t.disconnecting
    proto.dataReceived(data[wrong:wrong + 1])
    assert t.disconnecting and t.value() == b""
    assert mesh.value("dubbo_decode_errors") == 1
    assert mesh.value("downstream_cx_protocol_error") == 1
    proto.dataReceived(data[wrong + 1:])  # the rest, already in flight: ignored
    assert mesh.value("dubbo_decode_errors") == 1
    assert mesh.upstreams == {}


# -- drain: Dubbo's READONLY event, both ways ---------------------------------------------------------------------------


def test_drain_sends_readonly_answers_during_the_grace_then_closes():
    """
    As a Dubbo 2.7+/3 provider closing: READONLY to the consumer, calls it still sends are served for the grace
    (limits.drain_grace, 1 s by default), the connection closes once the grace is over and nothing is in flight.
    """
    mesh = Mesh()
    proto, t = mesh.client()
    drained = []
    mesh.factory.drain().addCallback(drained.append)
    [event] = replies(t)
    assert event.isReadOnlyEvent and event.isRequest and not event.twoWay and not event.isHeartbeat
    assert event.toBytes() == READONLY_CAPTURE[:4] + event.header[4:12] + READONLY_CAPTURE[12:]
    assert mesh.value("dubbo_readonly_sent", listener="dubbo_in") == 1
    proto.dataReceived(ECHO)  # the consumer had sent it before it read the event
    up = mesh.upstream()
    [req] = sent(up)
    mesh.clock.advance(0.5)
    answer(up, req, ECHO_RESP)
    [resp] = replies(t)
    assert resp.requestId == 1 and resp.status == dc.OK and not t.disconnecting  # still in the grace
    proto.dataReceived(dc.withRequestId(ECHO, 2) + ECHO[16:])  # in flight when the grace ends
    [req] = sent(up)
    mesh.clock.advance(0.5)
    assert not t.disconnecting and not drained
    answer(up, req, ECHO_RESP)
    [resp] = replies(t)
    assert resp.requestId == 2 and t.disconnecting  # closed with its last answer
    proto.connectionLost(Failure(ConnectionDone()))
    assert drained == [None]


def test_an_idle_connection_closes_when_the_grace_ends_and_without_grace_at_once():
    mesh = Mesh(grace="2s")
    proto, t = mesh.client()
    mesh.factory.drain()
    assert replies(t)[0].isReadOnlyEvent
    mesh.clock.advance(1.9)
    assert not t.disconnecting
    mesh.clock.advance(0.1)
    assert t.disconnecting
    mesh = Mesh(grace="0s")
    proto, t = mesh.client()
    mesh.factory.drain()
    assert replies(t)[0].isReadOnlyEvent and t.disconnecting  # READONLY, then closed (the old behaviour's timing)


def test_a_provider_readonly_event_takes_its_connection_out_of_the_pool():
    """
    The provider (a Dubbo 2.7+/3 one closing, or a txmesh inbound draining) sends READONLY: the call in flight on
    that connection is answered there, new calls go to a new connection, and the old one closes once idle.
    """
    mesh = Mesh()
    proto, t = mesh.client()
    proto.dataReceived(ECHO)
    old = mesh.upstream()
    [inFlight] = sent(old)
    old.dataReceived(READONLY_CAPTURE)
    assert old.readOnly and mesh.value("upstream_cx_readonly", cluster="provider") == 1
    assert not old.transport.disconnecting  # a call is still in flight on it
    proto.dataReceived(dc.withRequestId(ECHO, 2) + ECHO[16:])
    assert sent(old) == []
    new = mesh.upstream(i=1)
    [req] = sent(new)
    answer(new, req, ECHO_RESP)
    answer(old, inFlight, ECHO_RESP)
    assert sorted((f.requestId, f.status) for f in replies(t)) == [(1, dc.OK), (2, dc.OK)]
    assert old.transport.disconnecting and not new.transport.disconnecting
    assert old.transport.value() == b""  # the event is one-way: not answered

