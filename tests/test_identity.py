"""
Identity across hops, on a sidecar pair in memory (two L{txmesh.testing.InMemoryMesh} linked with ``connector``):
the caller's outbound listener, the callee's inbound listener, the callee's app a scripted upstream.  What a user
sees: which sidecar made a local reply, the forwarding header fields each app gets, one request id in both access
logs, and Dubbo calls across a restart of the inbound.
"""

import socket

import pytest

from txmesh.config import DEFAULT_INTERNAL_RANGES, loads
from txmesh.errors import ConfigError
from tests.test_dubbo_listener import ECHO, ECHO_RESP  # captured frames
from txmesh.protocols.dubbo import codec as dc
from txmesh.protocols.h2 import grpc
from txmesh.protocols.listener import isInternal
from txmesh.testing import InMemoryMesh

OUTBOUND = """
node: {id: caller-1, cluster: caller}
listeners:
- name: outbound
  address: tcp:15001:interface=127.0.0.1
  traffic_direction: outbound
  route_config:
    virtual_hosts:
    - name: callee
      domains: ["*"]
      routes: [{match: {prefix: /}, route: {cluster: callee}}]
clusters:
- name: callee
  endpoints: [{address: "10.0.0.2:15006"}]
"""

INBOUND = """
node: {id: callee-1, cluster: callee}
listeners:
- name: inbound
  address: tcp:15006
  traffic_direction: inbound
  route_config:
    virtual_hosts:
    - name: app
      domains: ["*"]
      routes: [{match: {prefix: /}, route: {cluster: app}}]
clusters:
- name: app
  endpoints: [{address: "127.0.0.1:8080"}]
"""

GET = b"GET /hello HTTP/1.1\r\nHost: callee.svc\r\n%s\r\n"


def pair(outbound=OUTBOUND, inbound=INBOUND):
    """(caller's outbound mesh, callee's inbound mesh); the caller's node address is 10.0.0.9."""
    callee = InMemoryMesh(inbound)
    caller = InMemoryMesh(outbound, connect=callee.connector("10.0.0.9"), clock=callee.clock)
    return caller, callee


def call(caller, extra=b""):
    client = caller.connect(("127.0.0.1", None))  # the caller's app, on loopback
    client.send(GET % (extra,))
    caller.runTurns()
    return client


# -- which hop failed ---------------------------------------------------------------------------------------------

def test_callee_app_down_is_named_by_the_callee_sidecar():
    caller, callee = pair()
    callee.upstream("app").refuseConnections()
    r = call(caller).response()
    assert r.status == 503 and r.header("x-txmesh-error") == b"upstream_connect_failure"
    assert r.header("x-txmesh-node") == b"callee-1"  # the reply came through the caller's sidecar untouched


def test_callee_sidecar_down_is_named_by_the_caller_sidecar():
    caller, callee = pair()
    callee.listening = False
    r = call(caller).response()
    assert r.status == 503 and r.header("x-txmesh-error") == b"upstream_connect_failure"
    assert r.header("x-txmesh-node") == b"caller-1"


def test_node_id_defaults_to_the_host_name_and_is_checked():
    assert loads(INBOUND.replace("node: {id: callee-1, cluster: callee}\n", "")).node.id == socket.gethostname()
    for bad, reason in (("{id: ''}", "node.id: must be printable ASCII"), ("{idd: x}", "node.idd: unknown key")):
        with pytest.raises(ConfigError) as e:
            loads(INBOUND.replace("{id: callee-1, cluster: callee}", bad), filename="mesh.yaml")
        assert str(e.value).startswith("mesh.yaml:2: " + reason)


def test_grpc_local_reply_names_the_node_in_message_and_field():
    fields = dict(grpc.localReplyFields(503, b"", "upstream_connect_failure", "callee-1"))
    assert fields[b"grpc-status"] == b"14"
    assert fields[b"grpc-message"] == b"txmesh callee-1: upstream_connect_failure"
    assert fields[b"x-txmesh-node"] == b"callee-1"
    ok = dict(grpc.localReplyFields(200, b"hi", None, "callee-1"))
    assert ok[b"grpc-message"] == b"hi" and ok[b"x-txmesh-node"] == b"callee-1"


# -- forwarding header fields across the pair -----------------------------------------------------------------------

def test_app_sees_the_real_caller_and_one_request_id_crosses_both_hops():
    caller, callee = pair()
    app = callee.upstream("app")
    client = call(caller)
    [req] = app.requests
    h = req.head.headers
    # the outbound did not append the caller app's loopback address; the inbound appended the caller's node
    assert h.getAll(b"x-forwarded-for") == [b"10.0.0.9"]
    assert h.get(b"x-forwarded-proto") == b"http"
    rid = h.get(b"x-request-id")
    req.respond(200, body=b"hi")
    caller.runTurns()
    assert client.response().status == 200
    [outLine], [inLine] = caller.accessLog(), callee.accessLog()
    field = ' "%s" ' % rid.decode()  # the request id field (the user agent, route, cluster follow it)
    assert rid and field in outLine and field in inLine


def test_the_callers_own_forwarding_fields_pass_the_outbound_and_the_trusted_inbound_keeps_them():
    caller, callee = pair()
    app = callee.upstream("app")
    call(caller, b"X-Forwarded-For: 203.0.113.7\r\nX-Forwarded-Proto: https\r\nX-Request-Id: edge-1\r\n")
    [req] = app.requests
    h = req.head.headers
    assert h.get(b"x-forwarded-for") == b"203.0.113.7, 10.0.0.9"
    assert h.get(b"x-forwarded-proto") == b"https"  # the inbound trusts one hop: the caller's sidecar
    assert h.get(b"x-request-id") == b"edge-1"


EDGE = INBOUND.replace("  traffic_direction: inbound\n", "%s")


def edgeRequest(extra, listener="", peer="203.0.113.50"):
    mesh = InMemoryMesh(EDGE % listener)
    app = mesh.upstream("app")
    mesh.connect((peer, None)).send(GET % (extra,))
    [req] = app.requests
    return req.head.headers


def test_an_edge_listener_replaces_an_external_peers_request_id_and_scheme():
    h = edgeRequest(b"X-Request-Id: forged\r\nX-Forwarded-Proto: https\r\n")
    assert h.get(b"x-request-id") not in (None, b"forged")
    assert h.get(b"x-forwarded-proto") == b"http" and h.get(b"x-forwarded-for") == b"203.0.113.50"


def test_an_internal_peer_or_a_trusted_hop_keeps_its_request_id():
    assert edgeRequest(b"X-Request-Id: r1\r\n", peer="10.4.4.4").get(b"x-request-id") == b"r1"
    h = edgeRequest(b"X-Request-Id: r1\r\n", "  xff_num_trusted_hops: 1\n")
    assert h.get(b"x-request-id") == b"r1"


def test_internal_address_config_replaces_the_default_ranges():
    listener = "  internal_address_config: {cidr_ranges: [203.0.113.0/24]}\n"
    assert edgeRequest(b"X-Request-Id: r1\r\n", listener).get(b"x-request-id") == b"r1"
    assert edgeRequest(b"X-Request-Id: r1\r\n", listener, peer="10.4.4.4").get(b"x-request-id") != b"r1"


def test_use_remote_address_false_appends_nothing():
    h = edgeRequest(b"X-Forwarded-For: 1.2.3.4\r\n", "  use_remote_address: false\n")
    assert h.get(b"x-forwarded-for") == b"1.2.3.4" and h.get(b"x-forwarded-proto") == b"http"


def test_forwarding_keys_are_validated_with_their_path():
    for listener, reason in (
            ("  traffic_direction: sideways\n", "listeners[0].traffic_direction: must be inbound, outbound"),
            ("  xff_num_trusted_hops: -1\n", "listeners[0].xff_num_trusted_hops: must be between 0 and 16"),
            ("  internal_address_config: {cidr_ranges: [10.0.0.1/8]}\n",
             "listeners[0].internal_address_config.cidr_ranges[0]: not a CIDR range")):
        with pytest.raises(ConfigError) as e:
            loads(EDGE % listener, filename="mesh.yaml")
        assert str(e.value).startswith("mesh.yaml:") and reason in str(e.value)


def test_directions_defaults():
    def fwd(direction):
        lc = loads(EDGE % ("  traffic_direction: %s\n" % direction)).listeners[0]
        return lc.trafficDirection, lc.forwarding.useRemoteAddress, lc.forwarding.trustedHops
    assert fwd("inbound") == ("inbound", True, 1)
    assert fwd("outbound") == ("outbound", False, 0)
    assert fwd("unspecified") == ("unspecified", True, 0)


def test_internal_addresses():
    assert isInternal("127.0.0.1", DEFAULT_INTERNAL_RANGES) and isInternal("172.20.1.1", DEFAULT_INTERNAL_RANGES)
    assert isInternal("::ffff:10.0.0.1", DEFAULT_INTERNAL_RANGES) and isInternal("fd00::1", DEFAULT_INTERNAL_RANGES)
    assert not isInternal("8.8.8.8", DEFAULT_INTERNAL_RANGES) and not isInternal("nonsense", DEFAULT_INTERNAL_RANGES)


# -- Dubbo across the pair ----------------------------------------------------------------------------------------


DUBBO_OUT = """
node: {id: caller-1}
listeners:
- name: dubbo_out
  protocol: dubbo
  address: tcp:20881:interface=127.0.0.1
  traffic_direction: outbound
  default_cluster: callee
clusters:
- name: callee
  protocol: dubbo
  endpoints: [{address: "10.0.0.2:20882"}]
"""

DUBBO_IN = """
node: {id: callee-1}
listeners:
- name: dubbo_in
  protocol: dubbo
  address: tcp:20882
  traffic_direction: inbound
  default_cluster: app
clusters:
- name: app
  protocol: dubbo
  endpoints: [{address: "127.0.0.1:20880"}]
"""


def dubboPair():
    return pair(DUBBO_OUT, DUBBO_IN)


def appCalls(callee):
    """The frames the callee's app received (and clears them), over all its connections."""
    out = []
    for conn in callee.upstream("app").connections:
        out += dc.DubboDecoder().feed(conn.transport.value())
        conn.transport.clear()
    return out


def answerApp(callee, request):
    conn = callee.upstream("app").connections[-1]
    conn.deliver(dc.withRequestId(ECHO_RESP, request.requestId) + ECHO_RESP[16:])
    callee.runTurns()


def replies(client):
    data = client.received()
    client.transport.clear()
    return dc.DubboDecoder().feed(data)


def test_dubbo_request_id_is_set_on_the_first_hop_kept_on_the_next_and_bytes_are_counted():
    caller, callee = dubboPair()
    client = caller.connect(("127.0.0.1", None))
    client.send(ECHO)
    [req] = appCalls(callee)
    rid = req.invocation.attachments["x-request-id"]
    answerApp(callee, req)
    [reply] = replies(client)
    assert reply.status == dc.OK and reply.body == ECHO_RESP[16:]
    [outInfo], [inInfo] = [s.streamInfo for s in caller.streams], [s.streamInfo for s in callee.streams]
    assert outInfo.requestId == inInfo.requestId == rid.encode()
    assert ' "%s" ' % rid in caller.accessLog()[0] and ' "%s" ' % rid in callee.accessLog()[0]
    # the outbound re-encoded the call once, with the id; the inbound forwarded what it received
    assert inInfo.bytesReceived > len(ECHO) == outInfo.bytesReceived
    assert outInfo.bytesSent == inInfo.bytesSent == len(ECHO_RESP)


def test_dubbo_errors_name_the_sidecar_that_failed():
    caller, callee = dubboPair()
    callee.upstream("app").refuseConnections()
    client = caller.connect(("127.0.0.1", None))
    client.send(ECHO)
    [reply] = replies(client)
    assert reply.status == dc.SERVICE_NOT_FOUND
    assert dc.decodeErrorMessage(reply).startswith("txmesh callee-1: ")
    caller2, callee2 = dubboPair()
    callee2.listening = False
    client2 = caller2.connect(("127.0.0.1", None))
    client2.send(ECHO)
    [reply2] = replies(client2)
    assert dc.decodeErrorMessage(reply2).startswith("txmesh caller-1: ")


def test_calls_during_the_reconnect_backoff_wait_for_the_restarted_inbound():
    caller, callee = dubboPair()
    client = caller.connect(("127.0.0.1", None))
    client.send(ECHO)
    [req] = appCalls(callee)
    answerApp(callee, req)
    assert [r.status for r in replies(client)] == [dc.OK]
    # the inbound restarts: its connections close and, for a while, connects are refused
    callee.listening = False
    for conn in list(callee.factory.connections):
        conn.transport.loseConnection()
    caller.runTurns()
    client.send(dc.withRequestId(ECHO, 2) + ECHO[16:])
    assert [r.status for r in replies(client)] == [dc.SERVICE_NOT_FOUND]  # the one connect made failed
    callee.listening = True
    # a call arriving during the backoff waits for the next attempt rather than failing at once
    client.send(dc.withRequestId(ECHO, 3) + ECHO[16:])
    assert replies(client) == []
    caller.advance(0.1)
    [req] = appCalls(callee)
    answerApp(callee, req)
    [reply] = replies(client)
    assert (reply.requestId, reply.status) == (3, dc.OK)
    assert caller.value("upstream_cx_connect_fail", cluster="callee") == 1


def test_dubbo_heartbeat_and_idle_defaults_are_coherent_across_the_pair():
    outbound, inbound = loads(DUBBO_OUT), loads(DUBBO_IN)
    heartbeat = outbound.cluster("callee").heartbeatInterval
    assert 0 < heartbeat < inbound.listeners[0].limits.idleTimeout  # the peer's heartbeats keep it open
    assert heartbeat < outbound.cluster("callee").idleTimeout


def test_a_unix_socket_peer_counts_as_internal():
    # a UNIX socket has no peer IP: a process on this host, like loopback (an HTTP listener on unix: crashed on it)
    assert isInternal(None, DEFAULT_INTERNAL_RANGES)


def test_an_http_listener_on_a_unix_socket_serves(tmp_path):
    import socket

    from tests.reactor_thread import onReactor, reactor
    from txmesh.config import loads
    from txmesh.service import MeshService

    path = str(tmp_path / "web.sock")
    config = loads("""
admin: {address: "tcp:0:interface=127.0.0.1"}
listeners:
  - name: web
    address: "unix:%s"
    route_config:
      virtual_hosts: [{name: all, domains: ["*"], routes: [{match: {prefix: /}, direct_response: {status: 204}}]}]
clusters: []
""" % (path,))
    r = reactor()

    def start():
        s = MeshService(config, r, installSignal=lambda *a: None)
        s.startService()
        return s

    svc = onReactor(start)
    try:
        with socket.socket(socket.AF_UNIX) as c:
            c.settimeout(5)
            c.connect(path)
            c.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            data = b""
            while True:
                chunk = c.recv(4096)
                if not chunk:
                    break
                data += chunk
        assert data.startswith(b"HTTP/1.1 204 ")
    finally:
        onReactor(svc.stopService, timeout=30)
