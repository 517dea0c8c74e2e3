"""
gRPC end to end: a real grpcio client and server (tests/grpc_peers/echo_server.py) with txmesh between them,
under twistd.  Every call has a deadline, so nothing here can hang.
"""

import os
import sys
import threading
import time

import grpc
import pytest

from tests import support

pytestmark = pytest.mark.timeout(120)

CONFIG = """
drain_timeout: 1s
admin:
  address: tcp:{admin}:interface=127.0.0.1
listeners:
  - name: grpc_in
    protocol: grpc
    address: tcp:{listen}:interface=127.0.0.1
    route_config:
      virtual_hosts:
        - name: svc
          domains: ["*"]
          routes:
            - match: {{grpc: {{service: test.Echo, method: Unary}}, headers: [{{name: x-route, exact: short}}]}}
              route: {{cluster: echo, timeout: 300ms}}
            - match: {{grpc: {{service: test.Echo, method: Unary}}, headers: [{{name: x-route, exact: keepalive}}]}}
              route: {{cluster: echo_keepalive}}
            - match: {{grpc: {{service: test.Echo}}}}
              route: {{cluster: echo, timeout: 20s}}
            - match: {{prefix: /test.Dead/}}
              route: {{cluster: dead}}
clusters:
  - name: echo
    protocol: h2
    endpoints: [{{address: "127.0.0.1:{upstream}"}}]
  - name: echo_keepalive
    protocol: grpc
    heartbeat_interval: 1s
    endpoints: [{{address: "127.0.0.1:{upstream}"}}]
  - name: dead
    protocol: h2
    connect_timeout: 1s
    endpoints: [{{address: "127.0.0.1:{dead}"}}]
"""

OPTIONS = [("grpc.max_receive_message_length", 16 << 20), ("grpc.max_send_message_length", 16 << 20)]
PEER = os.path.join(support.ROOT, "tests", "grpc_peers", "echo_server.py")


def startPeer():
    port = support.freePort()
    proc = support.Proc([sys.executable, PEER, str(port)])
    support.waitForPort(port, proc=proc.popen)
    return proc, port


@pytest.fixture(scope="module")
def mesh():
    peer, upstream = startPeer()
    admin, listen = support.freePort(), support.freePort()
    text = CONFIG.format(admin=admin, listen=listen, upstream=upstream, dead=support.freePort())
    proc = support.startTxmesh(text, admin)
    channel = grpc.insecure_channel("127.0.0.1:%d" % (listen,), options=OPTIONS)
    try:
        yield {"proc": proc, "listen": listen, "admin": admin, "channel": channel, "peer": peer}
    finally:
        channel.close()
        proc.stop()
        peer.stop()


def call(channel, method, kind="unary_unary"):
    return getattr(channel, kind)("/test.Echo/" + method, request_serializer=None, response_deserializer=None)


def stat(mesh, name, **labels):
    import json
    _, body = support.adminGet(mesh["admin"], "/stats")
    data = json.loads(body)
    return sum(s["value"] for s in data.get(name, []) if labels.items() <= s["labels"].items())


def test_unary(mesh):
    reply, c = call(mesh["channel"], "Unary").with_call(b"hello", timeout=5)
    assert reply == b"hello"
    assert c.code() == grpc.StatusCode.OK


def test_unary_large_messages(mesh):
    payload = os.urandom(4 << 20)
    assert call(mesh["channel"], "Unary")(payload, timeout=20) == payload


def test_server_streaming(mesh):
    replies = list(call(mesh["channel"], "ServerStream", "unary_stream")(b"50:1000", timeout=10))
    assert len(replies) == 50
    assert replies[1] == b"B" * 1000


def test_client_streaming(mesh):
    reqs = iter([b"x" * 100] * 20 + [os.urandom(4 << 20)])
    assert call(mesh["channel"], "ClientStream", "stream_unary")(reqs, timeout=20) == b"21:%d" % (2000 + (4 << 20),)


def test_bidi_streaming_interleaves(mesh):
    """Each reply arrives before the next request is sent: messages are forwarded as they come."""
    q = []
    ev = threading.Event()
    sent = []

    def requests():
        for i in range(10):
            sent.append(i)
            yield b"msg%d" % i
            if not ev.wait(5):
                return
            ev.clear()

    for r in call(mesh["channel"], "Bidi", "stream_stream")(requests(), timeout=10):
        q.append(r)
        assert len(sent) == len(q)
        ev.set()
    assert q == [b"msg%d" % i for i in range(10)]


def test_many_concurrent_streams(mesh):
    stub = call(mesh["channel"], "Unary")
    futures = [stub.future(b"req%d" % i, timeout=20) for i in range(300)]
    assert [f.result() for f in futures] == [b"req%d" % i for i in range(300)]


def test_metadata_and_trailers_round_trip(mesh):
    md = (("x-echo-text", "hello"), ("x-echo-bin", b"\x00\x01\xff"))
    reply, c = call(mesh["channel"], "Unary").with_call(b"m", metadata=md, timeout=5)
    assert dict(c.initial_metadata())["x-echo-text"] == "hello"
    trailing = dict(c.trailing_metadata())
    assert trailing["x-echo-text"] == "hello"
    assert trailing["x-echo-bin"] == b"\x00\x01\xff"


def test_error_status_with_details(mesh):
    with pytest.raises(grpc.RpcError) as info:
        call(mesh["channel"], "Unary")(b"status:PERMISSION_DENIED:not for you", timeout=5)
    e = info.value
    assert e.code() == grpc.StatusCode.PERMISSION_DENIED
    assert e.details() == "not for you"
    trailing = dict(e.trailing_metadata())
    assert trailing["grpc-status-details-bin"] == b"\x08\x05details"
    assert trailing["x-detail"] == "yes"


def test_no_route_is_unimplemented(mesh):
    with pytest.raises(grpc.RpcError) as info:
        mesh["channel"].unary_unary("/other.Svc/M")(b"x", timeout=5)
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_connect_failure_is_unavailable(mesh):
    with pytest.raises(grpc.RpcError) as info:
        mesh["channel"].unary_unary("/test.Dead/M")(b"x", timeout=5)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_route_timeout_is_deadline_exceeded(mesh):
    with pytest.raises(grpc.RpcError) as info:
        call(mesh["channel"], "Unary")(b"sleep:2", metadata=(("x-route", "short"),), timeout=10)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert stat(mesh, "downstream_grpc_status", code="4") >= 1


def test_grpc_timeout_bounds_the_call(mesh):
    """
    The client's deadline travels as grpc-timeout, less 10 ms: the upstream gives up first and answers
    DEADLINE_EXCEEDED itself; should its answer come late, txmesh ends the call and resets the upstream stream.
    """
    # an upstream connection already open, so the call surely reaches the upstream before the deadline even on a
    # loaded machine (a call still waiting for a connection has no upstream stream to reset)
    call(mesh["channel"], "Unary")(b"warm", timeout=10)
    before = stat(mesh, "upstream_h2_tx_reset") + stat(mesh, "upstream_grpc_status", code="4")
    with pytest.raises(grpc.RpcError) as info:
        call(mesh["channel"], "Unary")(b"sleep:3", timeout=1.0)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    import time
    deadline = time.monotonic() + 5
    while (stat(mesh, "upstream_h2_tx_reset") + stat(mesh, "upstream_grpc_status", code="4") == before
           and time.monotonic() < deadline):
        time.sleep(0.05)
    assert stat(mesh, "upstream_h2_tx_reset") + stat(mesh, "upstream_grpc_status", code="4") > before


def test_client_cancellation_resets_upstream(mesh):
    before = stat(mesh, "upstream_h2_tx_reset")
    it = call(mesh["channel"], "ServerStream", "unary_stream")(b"1:10:hang", timeout=20)
    assert next(it) == b"A" * 10
    it.cancel()
    import time
    deadline = time.monotonic() + 5
    while stat(mesh, "upstream_h2_tx_reset") == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert stat(mesh, "upstream_h2_tx_reset") > before


def test_keepalive_every_second_is_never_refused_by_a_default_grpcio_server(mesh):
    """
    With PINGs every second whatever the traffic (txmesh before), grpcio answered the 4th PING during a silent
    call with GOAWAY ENHANCE_YOUR_CALM "too_many_pings" and the call failed (UNAVAILABLE).  Now PINGs go only after
    a quiet second with a call open, at most two until the server sends data.  About 12 s.
    """
    unary = call(mesh["channel"], "Unary")
    md = [("x-route", "keepalive")]
    for _ in range(4):  # calls spread over a few seconds
        assert unary(b"sleep:0.3", timeout=5, metadata=md) == b"slept"
        time.sleep(0.5)
    assert unary(b"sleep:5", timeout=10, metadata=md) == b"slept"  # 5 s without a frame from the server
    time.sleep(3)  # then idle
    assert unary(b"sleep:1.5", timeout=5, metadata=md) == b"slept"
    assert stat(mesh, "upstream_h2_keepalive_ping", cluster="echo_keepalive") >= 2  # it did ping
    assert stat(mesh, "upstream_h2_goaway_received", cluster="echo_keepalive") == 0
    assert stat(mesh, "upstream_h2_keepalive_backoff", cluster="echo_keepalive") == 0


def test_the_upstream_call_gets_the_time_left(mesh):
    unary = call(mesh["channel"], "Unary")
    left = float(unary(b"deadline", timeout=8))  # the client's deadline, the route's 20 s being further
    assert 6 < left <= 8.1  # grpcio rounds its deadline up a little
    left = float(unary(b"deadline", timeout=8, metadata=[("x-route", "short")]))  # the 300 ms route timeout
    assert 0.1 < left <= 0.3



def test_counters(mesh):
    call(mesh["channel"], "Unary")(b"count", timeout=5)
    assert stat(mesh, "downstream_h2_streams", listener="grpc_in") >= 1
    assert stat(mesh, "downstream_grpc_messages_in", listener="grpc_in") >= 1
    assert stat(mesh, "downstream_grpc_messages_out", listener="grpc_in") >= 1
    assert stat(mesh, "downstream_grpc_status", listener="grpc_in", code="0") >= 1


def test_upstream_killed_mid_stream_is_not_ok(mesh):
    """Last: it kills the shared upstream.  The client sees a non-OK status, never OK."""
    it = call(mesh["channel"], "ServerStream", "unary_stream")(b"3:10:die", timeout=10)
    got = []
    with pytest.raises(grpc.RpcError) as info:
        for r in it:
            got.append(r)
    assert len(got) == 3
    # the response had started: txmesh ends the stream with trailers naming the cause, not a bare RST_STREAM
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "UC" in info.value.details(), info.value.details()

