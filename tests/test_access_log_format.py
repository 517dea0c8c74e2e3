"""
The access log's Envoy command operators (txmesh.filters.access_log_format): every operator field by field, in a
format string and in json_format, truncation, escaping, config errors; then lines of real streams over HTTP/1.1,
gRPC and Dubbo through the in-memory mesh (txmesh.testing.InMemoryMesh).
"""

import json
import socket

import pytest

from txmesh.config import loads
from txmesh.errors import ConfigError
from txmesh.filters.access_log import AccessLogFactory
from txmesh.filters.access_log_format import OPERATORS, JsonFormat, LogRecord, TextFormat
from txmesh.stream import HeaderMap, RequestHead, ResponseHead, StreamInfo
from txmesh.testing import FakeConfigContext
from txmesh.tls.material import PeerIdentity
from txmesh.tls.server import DownstreamTLS

T0 = 1795255200.123  # 2026-11-21T10:00:00.123Z


def finished():
    """A finished HTTP/1.1 stream that went upstream once, with every StreamInfo fact set."""
    info = StreamInfo(T0, "http/1.1", "ingress", "10.0.0.1:5555")
    info.downstreamLocal = "127.0.0.1:8000"
    info.routeName, info.clusterName, info.upstreamHost = "api", "backend", "127.0.0.1:8080"
    info.responseFlags = {"UT", "DI"}
    info.bytesReceived, info.bytesSent, info.responseCode = 10, 1234, 200
    info.requestId = b"rid-1"
    info.requestEndTime = T0 + 0.002
    info.upstreamStartTime = T0 + 0.003
    info.upstreamFirstByteTime = T0 + 0.010
    info.upstreamEndTime = T0 + 0.014
    info.endTime = T0 + 0.015
    info.attemptCount = 2
    info.peerIdentity = PeerIdentity(uriSans=("spiffe://td/sa/a", "urn:x"), dnsSans=("a.svc",), subject="CN=a",
                                     serial="1f", fingerprint="ab" * 32)
    info.downstreamTls = DownstreamTLS(version="TLSv1.3", cipher="TLS_AES_128_GCM_SHA256", serverName="api.svc",
                                       peer=info.peerIdentity)
    request = RequestHead(b"GET", b"/p?q=1", b"example.com",
                          HeaderMap.fromPairs([("user-agent", "curl/8.5.0"), ("x-a", "1"), ("x-b", "2")]))
    response = ResponseHead(200, HeaderMap.fromPairs([("content-type", "text/plain"), ("server", "up")]))
    trailers = HeaderMap.fromPairs([("grpc-status", "0"), ("x-t", "tv")])
    return LogRecord(info, request, info.endTime, None, response, trailers)


HOST = socket.gethostname()

# operator -> (text, JSON value) on the finished() stream
FIELDS = [
    ("%START_TIME%", "2026-11-21T10:00:00.123Z", "2026-11-21T10:00:00.123Z"),
    ("%START_TIME(%Y/%m/%d %H:%M:%S.%3f)%", "2026/11/21 10:00:00.123", "2026/11/21 10:00:00.123"),
    ("%START_TIME(%s.%6f)%", "1795255200.123000", "1795255200.123000"),
    ("%START_TIME(%9f|%f|%1f)%", "123000000|123000000|1", "123000000|123000000|1"),
    ("%TRACE_ID%", "-", None),  # no tracing block: no trace (tests/test_tracing.py has one)
    ("%REQ(:METHOD)%", "GET", "GET"),
    ("%REQ(:PATH)%", "/p?q=1", "/p?q=1"),
    ("%REQ(:AUTHORITY)%", "example.com", "example.com"),
    ("%REQ(HOST)%", "example.com", "example.com"),
    ("%REQ(:SCHEME)%", "http", "http"),
    ("%REQ(USER-AGENT)%", "curl/8.5.0", "curl/8.5.0"),
    ("%REQ(X-MISSING?X-B)%", "2", "2"),
    ("%REQ(X-A?X-B)%", "1", "1"),
    ("%REQ(X-MISSING)%", "-", None),
    ("%RESP(SERVER)%", "up", "up"),
    ("%RESP(:STATUS)%", "200", 200),
    ("%RESP(X-NONE?CONTENT-TYPE)%", "text/plain", "text/plain"),
    ("%TRAILER(X-T)%", "tv", "tv"),
    ("%TRAILER(GRPC-STATUS)%", "0", "0"),
    ("%DURATION%", "15", 15),
    ("%REQUEST_DURATION%", "2", 2),
    ("%RESPONSE_DURATION%", "10", 10),
    ("%RESPONSE_TX_DURATION%", "5", 5),
    ("%COMMON_DURATION(US_TX_BEG:US_RX_END:ms)%", "11", 11),
    ("%COMMON_DURATION(DS_RX_BEG:DS_RX_END:us)%", "2000", 2000),
    ("%RESPONSE_CODE%", "200", 200),
    ("%RESPONSE_CODE_DETAILS%", "via_upstream", "via_upstream"),
    ("%RESPONSE_FLAGS%", "DI,UT", "DI,UT"),
    ("%BYTES_RECEIVED%", "10", 10),
    ("%BYTES_SENT%", "1234", 1234),
    ("%PROTOCOL%", "HTTP/1.1", "HTTP/1.1"),
    ("%UPSTREAM_HOST%", "127.0.0.1:8080", "127.0.0.1:8080"),
    ("%UPSTREAM_CLUSTER%", "backend", "backend"),
    ("%UPSTREAM_TRANSPORT_FAILURE_REASON%", "-", None),
    ("%UPSTREAM_PEER_URI_SAN%", "-", None),  # a plain-text cluster; a TLS one: test_upstream_tls_operators
    ("%UPSTREAM_PEER_DNS_SAN%", "-", None),
    ("%UPSTREAM_PEER_SUBJECT%", "-", None),
    ("%UPSTREAM_TLS_VERSION%", "-", None),
    ("%UPSTREAM_REQUEST_ATTEMPT_COUNT%", "2", 2),
    ("%DOWNSTREAM_REMOTE_ADDRESS%", "10.0.0.1:5555", "10.0.0.1:5555"),
    ("%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%", "10.0.0.1", "10.0.0.1"),
    ("%DOWNSTREAM_LOCAL_ADDRESS%", "127.0.0.1:8000", "127.0.0.1:8000"),
    ("%DOWNSTREAM_PEER_URI_SAN%", "spiffe://td/sa/a,urn:x", "spiffe://td/sa/a,urn:x"),
    ("%DOWNSTREAM_PEER_DNS_SAN%", "a.svc", "a.svc"),
    ("%DOWNSTREAM_PEER_SUBJECT%", "CN=a", "CN=a"),
    ("%DOWNSTREAM_PEER_SERIAL%", "1f", "1f"),
    ("%DOWNSTREAM_PEER_FINGERPRINT_256%", "ab" * 32, "ab" * 32),
    ("%DOWNSTREAM_TLS_VERSION%", "TLSv1.3", "TLSv1.3"),
    ("%DOWNSTREAM_TLS_CIPHER%", "TLS_AES_128_GCM_SHA256", "TLS_AES_128_GCM_SHA256"),
    ("%REQUESTED_SERVER_NAME%", "api.svc", "api.svc"),
    ("%DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT%", "127.0.0.1", "127.0.0.1"),
    ("%ROUTE_NAME%", "api", "api"),
    ("%GRPC_STATUS%", "-", None),  # not a gRPC listener
    ("%GRPC_STATUS_NUMBER%", "-", None),
    ("%HOSTNAME%", HOST, HOST),
    ("%REQUEST_ID%", "rid-1", "rid-1"),
    ("%LISTENER_NAME%", "ingress", "ingress"),
    ("%DUBBO_INTERFACE%", "-", None),  # not a Dubbo stream
    ("%DUBBO_STATUS%", "-", None),
    ("%%", "%", "%"),
]


@pytest.mark.parametrize("fmt, text, value", FIELDS)
def test_each_operator_in_text_and_json(fmt, text, value):
    rec = finished()
    if fmt == "%%":
        assert TextFormat("100%% %DURATION%").format(rec) == "100% 15\n"
        assert json.loads(JsonFormat({"f": "100%% %DURATION%"}).format(rec)) == {"f": "100% 15"}
        return
    assert TextFormat("<" + fmt + ">").format(rec) == "<" + text + ">\n"
    assert TextFormat(fmt).format(rec) == text + "\n"
    assert json.loads(JsonFormat({"f": fmt}).format(rec)) == {"f": value}


def test_every_operator_has_a_field_test():
    tested = {f.split("(")[0].split("%")[1] for f, _, _ in FIELDS if f != "%%"}
    others = {"GRPC_STATUS", "DUBBO_METHOD", "DUBBO_VERSION", "DUBBO_GROUP"}  # tested on real streams below
    assert set(OPERATORS) <= tested | others


def test_upstream_tls_operators():
    from txmesh.tls.client import UpstreamPeer
    from txmesh.tls.material import PeerIdentity
    rec = finished()
    rec.info.upstreamTLS = UpstreamPeer(PeerIdentity(uriSans=("spiffe://td/ns/a/sa/b", "urn:x"),
                                                     dnsSans=("backend.mesh",), subject="CN=backend"), "TLSv1.3", "h2")
    fmt = "%UPSTREAM_PEER_URI_SAN% %UPSTREAM_PEER_DNS_SAN% %UPSTREAM_PEER_SUBJECT% %UPSTREAM_TLS_VERSION%"
    assert TextFormat(fmt).format(rec) == "spiffe://td/ns/a/sa/b,urn:x backend.mesh CN=backend TLSv1.3\n"
    assert json.loads(JsonFormat({"san": "%UPSTREAM_PEER_URI_SAN%", "v": "%UPSTREAM_TLS_VERSION%"}).format(rec)) == {
        "san": "spiffe://td/ns/a/sa/b,urn:x", "v": "TLSv1.3"}


def test_missing_stream_facts_are_dashes_and_nulls():
    info = StreamInfo(T0, "h2", "l", "")
    rec = LogRecord(info, None, T0)
    fmt = "%REQUEST_DURATION% %RESPONSE_DURATION% %RESPONSE_TX_DURATION% %UPSTREAM_HOST% %ROUTE_NAME% " \
          "%RESPONSE_CODE% %RESPONSE_FLAGS% %REQ(:PATH)% %RESP(SERVER)% %TRAILER(X)% %RESPONSE_CODE_DETAILS% " \
          "%DOWNSTREAM_REMOTE_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %UPSTREAM_REQUEST_ATTEMPT_COUNT% " \
          "%DOWNSTREAM_PEER_URI_SAN% %DOWNSTREAM_TLS_VERSION% %REQUESTED_SERVER_NAME%"
    assert TextFormat(fmt).format(rec) == "- - - - - 0 - - - - - - - 0 - - -\n"
    record = json.loads(JsonFormat({"a": "%RESPONSE_DURATION%", "b": "%REQ(:PATH)%", "c": "x %ROUTE_NAME% y"})
                        .format(rec))
    assert record == {"a": None, "b": None, "c": "x - y"}


def test_truncation_of_text_values():
    rec = finished()
    assert TextFormat("%REQ(USER-AGENT):4%|%UPSTREAM_CLUSTER:3%|%REQ(:PATH):100%").format(rec) == \
        "curl|bac|/p?q=1\n"
    assert json.loads(JsonFormat({"ua": "%REQ(USER-AGENT):1%"}).format(rec)) == {"ua": "c"}


def test_escaping_request_derived_values():
    rec = finished()
    rec.request = RequestHead(b"GET", b'/a"b\\c\n[x] \xc3\xa9', b"ex\x00.com",
                              HeaderMap([(b"user-agent", b'ua" "forged\r\n[2026] "GET / HTTP/1.1" 200'),
                                         (b"x-tab", b"a\tb\x7f")]))
    line = TextFormat('"%REQ(:PATH)%" "%REQ(:AUTHORITY)%" "%REQ(USER-AGENT)%" %REQ(X-TAB)%').format(rec)
    assert line == ('"/a\\x22b\\x5cc\\x0a[x] \\xc3\\xa9" "ex\\x00.com" '
                    '"ua\\x22 \\x22forged\\x0d\\x0a[2026] \\x22GET / HTTP/1.1\\x22 200" a\\x09b\\x7f\n')
    assert line.count("\n") == 1 and line.count('"') == 6
    # a truncated value is cut before it is escaped: its escapes stay whole
    assert TextFormat("%REQ(:PATH):3%").format(rec) == '/a\\x22\n'
    # JSON: json.dumps escapes; invalid UTF-8 shows as \xNN text, one line
    out = JsonFormat({"ua": "%REQ(USER-AGENT)%", "bad": "%REQ(:AUTHORITY)%", "mixed": "[%REQ(X-TAB)%]"}).format(rec)
    assert out.count("\n") == 1
    assert json.loads(out) == {"ua": 'ua" "forged\r\n[2026] "GET / HTTP/1.1" 200', "bad": "ex\x00.com",
                               "mixed": "[a\tb\x7f]"}
    rec.request = RequestHead(b"GET", b"/\xff\xfe", b"")
    assert json.loads(JsonFormat({"p": "%REQ(:PATH)%"}).format(rec)) == {"p": "/\\xff\\xfe"}


def test_dubbo_metadata_is_escaped_too():
    info = StreamInfo(T0, "dubbo", "d", "10.0.0.1:1")
    info.metadata = {"interface": 'org.x"\nY', "method": "m", "version": "", "group": "g"}
    info.responseCode = 20
    line = TextFormat("%DUBBO_INTERFACE% %DUBBO_METHOD% %DUBBO_VERSION% %DUBBO_GROUP% %DUBBO_STATUS%").format(
        LogRecord(info, None, T0))
    assert line == "org.x\\x22\\x0aY m - g 20\n"


def test_json_format_nesting_constants_and_types():
    rec = finished()
    fmt = JsonFormat({"time": "%START_TIME%", "http": {"status": "%RESPONSE_CODE%", "ua": "%REQ(USER-AGENT)%",
                                                         "deep": {"bytes": "%BYTES_SENT%"}},
                      "service": "shop", "version": 3, "on": True, "none": None,
                      "summary": "%REQ(:METHOD)% %RESPONSE_CODE% in %DURATION%ms"})
    out = fmt.format(rec)
    assert out == ('{"time":"2026-11-21T10:00:00.123Z","http":{"status":200,"ua":"curl/8.5.0","deep":{"bytes":1234}},'
                   '"service":"shop","version":3,"on":true,"none":null,"summary":"GET 200 in 15ms"}\n')


@pytest.mark.parametrize("raw, path, reason", [
    ({"format": "%NOPE%"}, "format", "unknown command operator %NOPE%"),
    ({"format": "%START_TIME% %REQ(USER-AGENT"}, "format", "column 14: '%' starts no command operator"),
    ({"format": "50% off %DURATION%"}, "format", "column 3: '%' starts no command operator"),
    ({"format": "%REQ%"}, "format", "%REQ%: needs a header name"),
    ({"format": "%REQ(a?b?c)%"}, "format", "one header name, or two as X?Y"),
    ({"format": "%DURATION(x)%"}, "format", "%DURATION%: takes no argument"),
    ({"format": "%DURATION:3%"}, "format", "a number cannot be truncated"),
    ({"format": "%REQ(x):0%"}, "format", "a truncation must be at least 1"),
    ({"format": "%GRPC_STATUS(LOUD)%"}, "format", "takes CAMEL_STRING, SNAKE_STRING or NUMBER"),
    ({"format": "%COMMON_DURATION(A:B:ms)%"}, "format", "points one of DS_RX_BEG"),
    ({"format": "%UPSTREAM_LOCAL_ADDRESS%"}, "format", "not supported: the upstream connection's local address"),
    ({"format": "plain text"}, "format", "no %OPERATOR% in it"),
    ({"format": ""}, "format", "must be 'text', 'json' or a format string"),
    ({"json_format": {"a": {"b": "%NOPE%"}}}, "json_format.a.b", "unknown command operator %NOPE%"),
    ({"json_format": {"a": ["%DURATION%"]}}, "json_format.a", "must be a format string or a mapping, not list"),
    ({"json_format": "%DURATION%"}, "json_format", "must be a mapping"),
    ({"json_format": {}}, "json_format", "must be a mapping"),
    ({"json_format": {"a": "%DURATION%"}, "format": "json"}, "json_format", "not both"),
])
def test_config_errors_name_the_key_path(raw, path, reason):
    with pytest.raises(ConfigError) as e:
        AccessLogFactory().buildConfig(raw, FakeConfigContext())
    assert e.value.path == path
    assert reason in e.value.reason


def test_config_error_names_file_line_and_key_path():
    text = """\
listeners:
  - name: web
    protocol: http
    address: tcp:0
    filters:
      - name: access_log
        config:
          json_format:
            ok: "%DURATION%"
            http:
              code: "%RESPONSE_KODE%"
      - name: router
    route_config:
      virtual_hosts: [{name: all, domains: ["*"], routes: [{match: {prefix: /}, direct_response: {status: 200}}]}]
"""
    with pytest.raises(ConfigError) as e:
        loads(text, "mesh.yaml")
    assert str(e.value).startswith(
        "mesh.yaml:11: listeners[0].filters[0].config.json_format.http.code: unknown command operator "
        "%RESPONSE_KODE%")


# -- real streams through the in-memory mesh ---------------------------------------------------------------------

HTTP = """
listeners:
- name: web
  protocol: http
  address: tcp:0
  filters:
  - name: access_log
    config:
      path: "%(log)s"
      format: '%(fmt)s'
  - name: router
  route_config:
    virtual_hosts:
    - name: all
      domains: ["*"]
      routes:
      - match: {prefix: /}
        name: everything
        route: {cluster: backend, retry_policy: {retry_on: "5xx", num_retries: 1, retry_back_off: {base_interval: 0.01s}}}
clusters:
- name: backend
  endpoints: [{address: "10.0.0.1:8080"}]
"""


def meshWith(tmp_path, fmt, text=HTTP, **kw):
    from txmesh.testing import InMemoryMesh
    log = tmp_path / "access.log"
    mesh = InMemoryMesh(text % {"log": log, "fmt": fmt}, **kw)
    mesh.advance(1000)  # a start time that is not 0
    return mesh, log


def lines(mesh, log):
    mesh.advance(1.5)  # the writer's flush timer
    return log.read_text().splitlines()


def test_http1_line_field_by_field(tmp_path):
    mesh, log = meshWith(tmp_path, "%RESPONSE_CODE% %RESPONSE_FLAGS% %ROUTE_NAME% %UPSTREAM_CLUSTER% %UPSTREAM_HOST% "
                                   "%UPSTREAM_REQUEST_ATTEMPT_COUNT% %DURATION% %REQUEST_DURATION% "
                                   "%RESPONSE_DURATION% %COMMON_DURATION(US_TX_BEG:US_RX_END:ms)% "
                                   "%RESPONSE_CODE_DETAILS% \"%REQ(USER-AGENT)%\" %RESP(X-UP)% %BYTES_RECEIVED% "
                                   "%BYTES_SENT% %DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT% %PROTOCOL%")
    up = mesh.upstream("backend")
    client = mesh.connect()
    client.request(b"PUT", b"/orders", headers=[(b"User-Agent", b"app/1")], body=b"hello")  # idempotent: retried
    mesh.advance(0.02)
    [first] = up.requests
    first.respond(503, body=b"busy")  # retried once (5xx)
    mesh.advance(0.02)
    second = up.requests[1]
    mesh.advance(0.005)
    second.respondRaw(b"HTTP/1.1 200 OK\r\nX-Up: yes\r\nContent-Length: 2\r\n\r\n")
    mesh.advance(0.003)
    second.respondRaw(b"ok")
    assert client.response().status == 200
    [line] = lines(mesh, log)
    assert line == '200 - everything backend 10.0.0.1:8080 2 48 0 45 8 via_upstream "app/1" yes 5 2 10.1.2.3 HTTP/1.1'


def test_http1_local_reply_and_downstream_reset(tmp_path):
    mesh, log = meshWith(tmp_path, "%RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% "
                                   "%UPSTREAM_TRANSPORT_FAILURE_REASON:40% %UPSTREAM_REQUEST_ATTEMPT_COUNT%")
    up = mesh.upstream("backend")
    up.refuseConnections()
    client = mesh.connect()
    client.request(b"GET", b"/a")
    mesh.advance(1)
    assert client.response().status == 503
    up.acceptConnections()
    client2 = mesh.connect()
    client2.request(b"GET", b"/b")
    mesh.advance(0.01)
    client2.disconnect()  # the client goes away while the upstream works
    got = lines(mesh, log)
    assert got[0].startswith("503 UF upstream_connect_failure ")
    assert got[0].endswith(" 2") and "connect to 10.0.0.1:8080 failed" in got[0]
    assert got[1] == "0 DC downstream_disconnect - 1"


GRPC = """
listeners:
- name: grpc_in
  protocol: grpc
  address: tcp:0
  filters:
  - name: access_log
    config:
      path: "%(log)s"
      format: '%(fmt)s'
  - name: router
  route_config:
    virtual_hosts:
    - name: svc
      domains: ["*"]
      routes:
      - match: {grpc: {service: test.Echo}}
        name: echo
        route: {cluster: echo}
clusters:
- name: echo
  protocol: h2
  endpoints: [{address: "10.0.0.1:50051"}]
"""

GRPC_FORMAT = ("%RESPONSE_CODE% %GRPC_STATUS% %GRPC_STATUS(SNAKE_STRING)% %GRPC_STATUS(NUMBER)% "
               "%GRPC_STATUS_NUMBER% %RESPONSE_FLAGS% %TRAILER(GRPC-MESSAGE)% %RESP(GRPC-STATUS)% %ROUTE_NAME% "
               "%REQ(:PATH)% %PROTOCOL%")


def grpcClient(mesh):
    import h2.config
    import h2.connection
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    client.initiate_connection()
    conn = mesh.connect()
    conn.send(client.data_to_send())
    client.send_headers(1, [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/test.Echo/Unary"),
                            (b":authority", b"svc"), (b"content-type", b"application/grpc"), (b"te", b"trailers")])
    client.send_data(1, b"\x00\x00\x00\x00\x02hi", end_stream=True)
    conn.send(client.data_to_send())
    return client, conn


def test_grpc_trailers_only_error(tmp_path):
    mesh, log = meshWith(tmp_path, GRPC_FORMAT, GRPC)
    mesh.upstream("echo").refuseConnections()
    grpcClient(mesh)
    mesh.advance(1)
    [line] = lines(mesh, log)
    assert line == ("200 Unavailable UNAVAILABLE 14 14 UF - 14 echo /test.Echo/Unary HTTP/2")


def test_grpc_status_in_trailers(tmp_path):
    import h2.config
    import h2.connection
    import h2.events
    mesh, log = meshWith(tmp_path, GRPC_FORMAT, GRPC)
    grpcClient(mesh)
    mesh.advance(0.01)
    [conn] = mesh.upstream("echo").connections
    server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
    server.initiate_connection()
    events = server.receive_data(conn.transport.value())
    conn.transport.clear()
    [sid] = {e.stream_id for e in events if isinstance(e, h2.events.RequestReceived)}
    server.send_headers(sid, [(b":status", b"200"), (b"content-type", b"application/grpc")])
    server.send_data(sid, b"\x00\x00\x00\x00\x02hi")
    server.send_headers(sid, [(b"grpc-status", b"5"), (b"grpc-message", b"no such thing")], end_stream=True)
    conn.deliver(server.data_to_send())
    mesh.advance(0.01)
    [line] = lines(mesh, log)
    assert line == "200 NotFound NOT_FOUND 5 5 - no such thing - echo /test.Echo/Unary HTTP/2"


def test_dubbo_fields(tmp_path):
    from tests.test_dubbo_listener import ADD, ADD_RESP, MESH, answer, sent
    from twisted.internet import defer
    from twisted.internet.testing import StringTransport
    from txmesh.protocols.dubbo.client import DubboClientProtocol
    from txmesh.protocols.dubbo import codec as dc
    from txmesh.testing import InMemoryMesh
    log = tmp_path / "dubbo.log"
    fmt = ("%DUBBO_INTERFACE% %DUBBO_METHOD% %DUBBO_VERSION% %DUBBO_GROUP% %DUBBO_STATUS% %RESPONSE_CODE% "
           "%PROTOCOL% %UPSTREAM_CLUSTER% %REQ(X-REQUEST-ID)% %REQUEST_ID% %REQ(:PATH)% %GRPC_STATUS%")
    text = (MESH % {"default": "", "pending": 10, "concurrent": 0, "heartbeat": ""}).replace(
        "  route_config:", "  filters:\n  - name: access_log\n    config: {path: '%s', format: '%s'}\n"
        "  - name: router\n  route_config:" % (log, fmt), 1)
    ups = []

    def connect(host, clusterConfig):
        proto = DubboClientProtocol()
        proto.makeConnection(StringTransport())
        ups.append(proto)
        return defer.succeed(proto)

    mesh = InMemoryMesh(text, connect=connect)
    proto = mesh.factory.buildProtocol(None)
    transport = StringTransport()
    proto.makeConnection(transport)
    proto.dataReceived(ADD)
    [request] = sent(ups[0])
    answer(ups[0], request, ADD_RESP)
    [reply] = dc.DubboDecoder().feed(transport.value())
    assert reply.status == dc.OK
    mesh.advance(1.5)
    [line] = log.read_text().splitlines()
    iface, method, version, group, status, code, proto_, cluster, rid, rid2, path, grpcStatus = line.split(" ")
    assert (iface, version, group, status, code, proto_, cluster, grpcStatus) == (
        "org.txmesh.peers.EchoService", "1.0.0", "SOFA", "20", "20", "DUBBO", "provider", "-")
    assert path == "/%s/%s" % (iface, method) and method != "-"
    assert rid == rid2 and len(rid) == 36  # the x-request-id attachment the listener added


# -- the reference in docs/access-log.md stays true ---------------------------------------------------------------

def docTable(heading):
    import os
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "access-log.md")
    with open(path) as f:
        text = f.read()
    section = text.split("## " + heading, 1)[1].split("\n## ", 1)[0]
    return [[c.strip() for c in line.strip().strip("|").split("|")] for line in section.splitlines()
            if line.startswith("|") and not line.startswith("|---")][1:]


def test_doc_reference_of_flags_and_causes_matches_the_code():
    from txmesh import errors
    from txmesh.protocols.dubbo.replies import dubboStatusFor
    from txmesh.protocols.h2 import grpc

    def walk(cls):
        yield cls
        for sub in cls.__subclasses__():
            yield from walk(sub)

    rows = {(r[0], r[1]): r for r in docTable("Response flags and `x-txmesh-error` causes")}
    for cls in walk(errors.UpstreamError):
        row = rows.get((cls.flag, cls.cause))
        assert row is not None, "%s (%s %s) is not in docs/access-log.md" % (cls.__name__, cls.flag, cls.cause)
        assert row[3] == str(cls.status), row
        assert row[4].split()[0] == str(grpc.statusForCause(cls.cause, cls.status)), row
        assert row[5].split()[0] == str(dubboStatusFor(cls.status, cls.cause)), row
    for cause, status in (("request_body_too_large", 413), ("grpc_message_too_large", 413),
                          ("circuit_open", 503), ("local_rate_limited", 429)):
        [row] = [r for r in rows.values() if r[1] == cause]
        assert row[3].split()[0] == str(status), row
        assert row[4].split()[0] == str(grpc.statusForCause(cause, status)), row
        assert row[5].split()[0] == str(dubboStatusFor(status, cause)), row


def test_doc_operator_table_names_every_operator():
    documented = " ".join(r[0] for r in docTable("Operators"))
    for name in OPERATORS:
        assert "%" + name in documented or "..._WITHOUT_PORT" in documented and name.endswith("_WITHOUT_PORT"), name
