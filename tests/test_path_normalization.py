"""
Path normalisation before routing and the filters (issue 14 part 6; txmesh/path_normalization.py, docs/security.md
"Path normalisation").  The issue's table: encoded and dotted variants of a denied prefix (a ``direct_response: 403``
route on ``/admin``) against an allowed default route, over HTTP/1.1 (raw bytes through the listener, in memory)
and HTTP/2 (frames from the ``h2`` library), checking the route each meets and the path the upstream gets; then
each setting, gRPC, the counters, config errors, and one run with curl (``--path-as-is``) through txmesh under
twistd.
"""

import itertools
import json
import shutil
import subprocess
from importlib import resources

import jsonschema
import pytest
import yaml
from h2 import events as h2events
from h2.config import H2Configuration
from h2.connection import H2Connection
from zope.interface.verify import verifyObject

from tests import support
from tests.test_chain import Entry, Factory, Recorder
from txmesh.config import loads
from txmesh.errors import ConfigError
from txmesh.filters.chain import FilterChainTemplate
from txmesh.interfaces import FilterStatus, IPathNormalizer
from txmesh.path_normalization import (
    PLAIN,
    PathNormalization,
    PathNormalizer,
    PathRefused,
    normalizeTarget,
    removeDotSegments,
)
from txmesh.stats import StatsStore
from txmesh.stream import HeaderMap, RequestHead, StreamInfo
from txmesh.testing import InMemoryMesh, RecordingDownstream

MESH = """
listeners:
- name: edge
  protocol: %(protocol)s
  address: tcp:0
%(keys)s  route_config:
    virtual_hosts:
    - name: app
      domains: ["*"]
      routes:
      - match: {prefix: /admin}
        direct_response: {status: 403, body: "denied\\n"}
      - match: {prefix: /}
        route: {cluster: backend}
clusters:
- name: backend
  endpoints: [{address: "10.0.0.1:80"}]
"""


def meshText(protocol="http1", **keys):
    lines = "".join("  %s: %s\n" % (k, json.dumps(v)) for k, v in keys.items())
    return MESH % {"protocol": protocol, "keys": lines}


# -- the table --------------------------------------------------------------------------------------------
# (request target, what the listener does with the defaults): ("denied",) met the 403 route; ("forwarded", path)
# met the default route and the upstream got ``path``; ("redirect", location) 307; ("refused",) 400.
DENIED = ("denied",)
TABLE = [
    (b"/admin", DENIED),
    (b"/public/%2e%2e/admin", DENIED),  # a dot segment spelled with unreserved escapes
    (b"/public/%2E%2E/admin", DENIED),
    (b"/public/.%2e/admin", DENIED),
    (b"//admin", DENIED),  # merge_slashes
    (b"///admin//x", DENIED),
    (b"/admin;x", DENIED),  # path_parameters: strip
    (b"/..;x/admin", DENIED),  # a dot segment with a parameter (Envoy's own bypass, fixed there in 2026)
    (b"/%61dmin", DENIED),  # an unreserved character escaped
    (b"/%61%64%6D%69%6E", DENIED),
    (b"/admin/", DENIED),
    (b"/./admin", DENIED),
    (b"/public/../admin", DENIED),
    (b"/public/..\\admin", DENIED),  # a raw backslash is a slash (as Envoy's canonicaliser)
    (b"/public/x/../../admin?q=1", DENIED),
    (b"/public/..%2fadmin", ("redirect", b"/admin")),  # escaped slashes: unescape_and_redirect
    (b"/public/..%5cadmin", ("redirect", b"/admin")),
    (b"/public/..%2Fadmin?next=%2F", ("redirect", b"/admin?next=%2F")),  # the query as it came
    (b"/%2fadmin", ("redirect", b"/admin")),
    (b"/%zz/admin", ("refused",)),  # not a percent-escape
    (b"/admin%00", ("refused",)),
    (b"/ADMIN", ("forwarded", b"/ADMIN")),  # case stays: routes say case_sensitive: false to match it
    (b"/administrator/../public", ("forwarded", b"/public")),
    (b"/public/%7e%3a%2e%2e", ("forwarded", b"/public/~%3A..")),  # '..' inside a segment is no dot segment
    (b"/public/a;b=c/d?x=/../admin//;", ("forwarded", b"/public/a/d?x=/../admin//;")),
    (b"/public/.well-known//x/.", ("forwarded", b"/public/.well-known/x/")),
    (b"/public/plain", ("forwarded", b"/public/plain")),
    # mixed: every trick at once
    (b"/./public//%2E./%2e%2E/.%2e/;p/%61%44min;x?k=%2e", ("forwarded", b"/aDmin?k=%2e")),
    (b"//public/.//..;y/%2e/%41dmin/", ("forwarded", b"/Admin/")),
    (b"/public//..//%61dmin/./x", DENIED),
]


def outcome(status, location, forwarded):
    """What the client saw, as the table spells it."""
    if status == 403:
        return DENIED
    if status == 307:
        return ("redirect", location)
    if status == 400:
        return ("refused",)
    assert status == 200, status
    return ("forwarded", forwarded)


def http1(mesh, target):
    backend = mesh.upstream("backend")
    backend.respondWith(200, body=b"ok")
    before = len(backend.requests)
    client = mesh.connect()
    client.send(b"GET " + target + b" HTTP/1.1\r\nHost: app.svc\r\n\r\n")
    r = client.response()
    forwarded = backend.requests[before].head.path if len(backend.requests) > before else None
    return r.status, r.header("location"), forwarded


def h2(mesh, target, protocol=b"http", extra=()):
    backend = mesh.upstream("backend")
    backend.respondWith(200, body=b"ok")
    before = len(backend.requests)
    client = mesh.connect()
    conn = H2Connection(H2Configuration(client_side=True, header_encoding=None))
    conn.initiate_connection()
    conn.send_headers(1, [(b":method", b"GET"), (b":scheme", protocol), (b":path", target),
                          (b":authority", b"app.svc"), *extra], end_stream=True)
    client.send(conn.data_to_send())
    [headers] = [dict(e.headers) for e in conn.receive_data(client.received())
                 if isinstance(e, h2events.ResponseReceived)]
    forwarded = backend.requests[before].head.path if len(backend.requests) > before else None
    return int(headers[b":status"]), headers.get(b"location"), forwarded, headers


@pytest.fixture(scope="module")
def http1Mesh():
    return InMemoryMesh(meshText("http1"))


@pytest.fixture(scope="module")
def h2Mesh():
    return InMemoryMesh(meshText("http2"))


@pytest.mark.parametrize("target, expected", TABLE, ids=[t.decode("latin-1") for t, _ in TABLE])
def test_table_over_http1(http1Mesh, target, expected):
    status, location, forwarded = http1(http1Mesh, target)
    assert outcome(status, location, forwarded) == expected


@pytest.mark.parametrize("target, expected", TABLE, ids=[t.decode("latin-1") for t, _ in TABLE])
def test_table_over_h2(h2Mesh, target, expected):
    status, location, forwarded, _ = h2(h2Mesh, target)
    assert outcome(status, location, forwarded) == expected


# -- the settings -----------------------------------------------------------------------------------------------
# (listener keys, target, expected outcome): each knob against the defaults' answer above
SETTINGS = [
    ({"path_with_escaped_slashes_action": "reject_request"}, b"/public/..%2fadmin", ("refused",)),
    ({"path_with_escaped_slashes_action": "reject_request"}, b"/a%5Cb", ("refused",)),
    ({"path_with_escaped_slashes_action": "reject_request"}, b"/public/%2e%2e/admin", DENIED),
    ({"path_with_escaped_slashes_action": "unescape_and_forward"}, b"/public/..%2fadmin", DENIED),
    ({"path_with_escaped_slashes_action": "unescape_and_forward"}, b"/files/a%2Fb", ("forwarded", b"/files/a/b")),
    ({"path_with_escaped_slashes_action": "unescape_and_forward"}, b"/files/a%5cb", ("forwarded", b"/files/a/b")),
    # keep_unchanged: an escaped slash is data, not a separator (the upstream must agree: docs/security.md)
    ({"path_with_escaped_slashes_action": "keep_unchanged"}, b"/public/..%2fadmin",
     ("forwarded", b"/public/..%2Fadmin")),
    ({"path_with_escaped_slashes_action": "keep_unchanged"}, b"/files/a%2fb%5c", ("forwarded", b"/files/a%2Fb%5C")),
    ({"path_parameters": "reject"}, b"/admin;x", ("refused",)),
    ({"path_parameters": "reject"}, b"/public?a=;b", ("forwarded", b"/public?a=;b")),  # the query is not the path
    ({"path_parameters": "keep"}, b"/admin;x", DENIED),  # still the /admin prefix
    ({"path_parameters": "keep"}, b"/public/x;jsessionid=1", ("forwarded", b"/public/x;jsessionid=1")),
    ({"merge_slashes": False}, b"//admin", ("forwarded", b"//admin")),
    ({"merge_slashes": False}, b"/public//../admin", ("forwarded", b"/public/admin")),  # RFC 3986 5.2.4 exactly
    ({"normalize_path": False}, b"/public/../admin", ("forwarded", b"/public/../admin")),
    ({"normalize_path": False}, b"/%61dmin", ("forwarded", b"/%61dmin")),
    ({"normalize_path": False, "merge_slashes": False, "path_with_escaped_slashes_action": "keep_unchanged",
      "path_parameters": "keep"}, b"//public/./%2e%2e;x/%2F", ("forwarded", b"//public/./%2e%2e;x/%2F")),
]


@pytest.mark.parametrize("keys, target, expected", SETTINGS, ids=["%s %s" % (sorted(k.items()), t.decode())
                                                                   for k, t, _ in SETTINGS])
def test_each_setting_over_http1(keys, target, expected):
    mesh = InMemoryMesh(meshText("http1", **keys))
    status, location, forwarded = http1(mesh, target)
    assert outcome(status, location, forwarded) == expected


def test_every_step_off_installs_no_normaliser():
    mesh = InMemoryMesh(meshText("http1", normalize_path=False, merge_slashes=False, path_parameters="keep",
                                 path_with_escaped_slashes_action="keep_unchanged"))
    assert mesh.template.paths is None


def test_dubbo_listener_has_no_normaliser():
    text = """
listeners:
- {name: d, protocol: dubbo, address: "tcp:0", default_cluster: b}
clusters:
- {name: b, protocol: dubbo, endpoints: [{address: "10.0.0.1:20880"}]}
"""
    mesh = InMemoryMesh(text)
    assert mesh.listenerConfig.pathNormalization is None and mesh.template.paths is None


# -- what a client and an operator see ----------------------------------------------------------------------------

def test_refusal_is_a_400_with_the_cause_and_the_connection_stays_open():
    mesh = InMemoryMesh(meshText("http1"))
    client = mesh.connect()
    backend = mesh.upstream("backend")
    backend.respondWith(200, body=b"ok")
    client.request(path=b"/a%2")
    client.request(path=b"/fine")
    first, second = client.responses()
    assert (first.status, first.header("x-txmesh-error")) == (400, b"path_normalization_failed")
    assert first.body == b"invalid path: malformed percent-escape or %00 in the path\n"
    assert second.status == 200 and not client.closed
    assert [r.head.path for r in backend.requests] == [b"/fine"]
    assert mesh.value("downstream_rq_failed_path_normalization", listener="edge") == 1
    assert mesh.value("downstream_rq_error", listener="edge", cause="path_normalization_failed") == 1


def test_redirect_is_a_307_to_the_normalised_path_and_the_followed_request_meets_the_policy():
    mesh = InMemoryMesh(meshText("http1"))
    client = mesh.connect()
    client.request(path=b"/public/..%2Fadmin?x=1")
    [r] = client.responses()
    assert (r.status, r.header("location"), r.body, r.header("x-txmesh-error")) == (307, b"/admin?x=1", b"", None)
    client.request(path=r.header("location"))
    assert client.responses()[1].status == 403
    assert mesh.value("downstream_rq_redirected_with_normalized_path", listener="edge") == 1


def test_forwarded_path_is_counted_logged_normalised_and_the_original_kept():
    mesh = InMemoryMesh(meshText("http1").replace("  route_config:", "  filters: [{name: access_log}, {name: router}]\n"
                                                                     "  route_config:"))
    status, _, forwarded = http1(mesh, b"/public/./x/../%79?q=%2e")
    assert (status, forwarded) == (200, b"/public/y?q=%2e")
    [stream] = mesh.streams
    assert stream.streamInfo.metadata["original_path"] == b"/public/./x/../%79?q=%2e"
    assert stream.request.path == b"/public/y?q=%2e"
    [line] = mesh.accessLog()
    assert '"GET /public/y?q=%2e HTTP/1.1" 200' in line
    assert mesh.value("downstream_rq_path_normalized", listener="edge") == 1
    http1(mesh, b"/plain")  # the fast path: nothing counted, nothing kept
    assert mesh.value("downstream_rq_path_normalized", listener="edge") == 1
    assert "original_path" not in mesh.streams[1].streamInfo.metadata


class PathRecorder(Recorder):
    """A filter first in the chain (where an authorization filter goes): records the path it is shown, answers 200."""

    def __init__(self):
        Recorder.__init__(self, "first", [])
        self.seen = []

    def decodeHeaders(self, request, endStream):
        self.seen.append(request.path)
        self.dcb.sendLocalReply(200, b"seen")
        return FilterStatus.STOP


@pytest.mark.parametrize("target, seen, status", [
    (b"//public/%2e%2e/admin;x?q=..", [b"/admin?q=.."], 200),
    (b"/public/..%2Fadmin", [], 307),  # answered before any filter: the filter sees only the reply
    (b"/%", [], 400),
])
def test_the_first_filter_sees_only_the_normalised_path(target, seen, status):
    mesh = InMemoryMesh(meshText("http1"))
    recorder = PathRecorder()
    template = FilterChainTemplate([Entry(Factory(lambda: recorder))], mesh.runtime, None,
                                   paths=mesh.template.paths)
    downstream = RecordingDownstream()
    stream = template.createStream(downstream, StreamInfo(0, "http/1.1", "edge"))
    stream.decodeHeaders(RequestHead(b"GET", target, b"app"), True)
    assert recorder.seen == seen
    assert [e[2] for e in recorder.log if e[1] == "encodeHeaders"] == [status]
    assert recorder.completed and stream.complete and downstream.written[0][:2] == ("headers", status)


# -- gRPC ---------------------------------------------------------------------------------------------------------

def test_grpc_paths_pass_unchanged_and_escaped_slashes_are_internal():
    mesh = InMemoryMesh(meshText("grpc"))
    grpcFields = [(b"content-type", b"application/grpc"), (b"te", b"trailers")]
    status, _, forwarded, _ = h2(mesh, b"/pkg.v1.Greeter/SayHello", extra=grpcFields)
    assert (status, forwarded) == (200, b"/pkg.v1.Greeter/SayHello")
    assert mesh.value("downstream_rq_path_normalized", listener="edge") == 0
    # a gRPC client cannot follow a redirect: as Envoy, the call fails with INTERNAL
    status, _, forwarded, headers = h2(mesh, b"/pkg.v1.Greeter%2FSayHello", extra=grpcFields)
    assert (status, headers[b"grpc-status"], forwarded) == (200, b"13", None)
    assert headers[b"x-txmesh-error"] == b"path_normalization_failed"
    assert mesh.value("downstream_rq_failed_path_normalization", listener="edge") == 1


def test_grpc_content_type_on_an_http2_listener_is_refused_not_redirected():
    mesh = InMemoryMesh(meshText("http2"))
    status, location, forwarded, _ = h2(mesh, b"/pkg.S%2fM", extra=[(b"content-type", b"application/grpc+proto")])
    assert (status, location, forwarded) == (400, None, None)


# -- the function itself -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("path, expected", [
    (b"/", b"/"), (b"/.", b"/"), (b"/..", b"/"), (b"/../..", b"/"), (b"/a/.", b"/a/"), (b"/a/..", b"/"),
    (b"/a/b/..", b"/a/"), (b"/a/b/c/./../../g", b"/a/g"),  # RFC 3986 5.2.4's example
    (b"/a//../b", b"/a/b"), (b"/a/.b/..c/...", b"/a/.b/..c/..."), (b"/../a/b", b"/a/b"),
])
def test_remove_dot_segments(path, expected):
    assert removeDotSegments(path) == expected


def test_escapes_are_upper_cased_and_only_unreserved_ones_decoded():
    unreserved = b"".join(b"%%%02x" % c for c in b"azAZ09-._~")
    out, _ = normalizeTarget(b"/" + unreserved + b"%2a%e2%82%ac%25%3b%3f%23", PathNormalization())
    assert out == b"/azAZ09-._~%2A%E2%82%AC%25%3B%3F%23"


@pytest.mark.parametrize("target", [b"/%", b"/%a", b"/%g0", b"/a%0", b"/%00", b"/x/%%41", b"/%2f%"])
def test_malformed_escapes_are_refused(target):
    with pytest.raises(PathRefused):
        normalizeTarget(target, PathNormalization(escapedSlashes="unescape_and_forward"))


def corpus():
    """Every target of up to five characters after '/' over the characters that matter (59,049 of them)."""
    return (b"/" + bytes(t) for t in itertools.product(b"/.a;%2F\\?", repeat=5))


SETTINGS_TO_CHECK = [PathNormalization(), PathNormalization(escapedSlashes="unescape_and_forward"),
                     PathNormalization(False, False, "keep_unchanged", "keep"),
                     PathNormalization(True, False, "keep_unchanged", "reject")]


def test_the_fast_path_lets_through_only_what_no_setting_would_change():
    plain = 0
    for target in corpus():
        if PLAIN(target):
            plain += 1
            for settings in SETTINGS_TO_CHECK:
                assert normalizeTarget(target, settings) == (target, False), (target, settings)
    assert plain > 1000


def test_normalisation_is_idempotent():
    settings = PathNormalization(escapedSlashes="unescape_and_forward")
    for target in corpus():
        try:
            once, _ = normalizeTarget(target, settings)
        except PathRefused:
            continue
        assert normalizeTarget(once, settings) == (once, False), (target, once)


def test_targets_that_are_not_paths_are_left_alone():
    n = PathNormalizer(PathNormalization(), StatsStore(), "l")
    for target in (b"*", b""):
        head = RequestHead(b"OPTIONS", target, b"a", HeaderMap([]))
        assert n.normalize(head, StreamInfo(0, "http/1.1", "l")) is None and head.path == target


def test_normalizer_provides_its_interface():
    assert verifyObject(IPathNormalizer, PathNormalizer(PathNormalization(), StatsStore(), "l"))
    assert verifyObject(IPathNormalizer, InMemoryMesh(meshText("http2")).template.paths)


# -- config ---------------------------------------------------------------------------------------------------------

def configError(text):
    with pytest.raises(ConfigError) as info:
        loads(text, filename="mesh.yaml")
    return str(info.value)


@pytest.mark.parametrize("key, value, reason", [
    ("path_with_escaped_slashes_action", '"UNESCAPE_AND_REDIRECT"',
     "must be one of keep_unchanged, reject_request, unescape_and_redirect, unescape_and_forward, "
     "not 'UNESCAPE_AND_REDIRECT'"),
    ("path_with_escaped_slashes_action", "1", "must be a string, not an integer"),
    ("path_parameters", "drop", "must be one of keep, strip, reject, not 'drop'"),
    ("normalize_path", "yes please", "must be a boolean, not a string"),
    ("merge_slashes", "1", "must be a boolean, not an integer"),
])
def test_config_errors_name_file_line_and_key(key, value, reason):
    text = MESH % {"protocol": "http1", "keys": "  %s: %s\n" % (key, value)}
    assert configError(text) == "mesh.yaml:6: listeners[0].%s: %s" % (key, reason)


def test_dubbo_listener_refuses_the_keys():
    text = """listeners:
- name: d
  protocol: dubbo
  address: "tcp:0"
  default_cluster: b
  merge_slashes: true
clusters:
- {name: b, protocol: dubbo, endpoints: [{address: "10.0.0.1:20880"}]}
"""
    assert configError(text) == ("mesh.yaml:6: listeners[0].merge_slashes: only HTTP listeners (http1, http2, grpc) "
                                 "normalise paths (this one is 'dubbo')")


def test_defaults_are_the_safe_ones():
    [lc] = loads(meshText("http1")).listeners
    assert lc.pathNormalization == PathNormalization(True, True, "unescape_and_redirect", "strip")


@pytest.mark.parametrize("keys, valid", [
    ("  normalize_path: false\n  merge_slashes: false\n  path_with_escaped_slashes_action: keep_unchanged\n"
     "  path_parameters: keep\n", True),
    ("  path_with_escaped_slashes_action: reject_request\n  path_parameters: reject\n", True),
    ("  path_with_escaped_slashes_action: REJECT_REQUEST\n", False),
    ("  path_parameters: drop\n", False),
    ("  merge_slashes: 1\n", False),
])
def test_schema_knows_the_keys(keys, valid):
    schema = json.loads(resources.files("txmesh").joinpath("mesh.schema.json").read_text())
    raw = yaml.safe_load(MESH % {"protocol": "http1", "keys": keys})
    errors = list(jsonschema.Draft202012Validator(schema).iter_errors(raw))
    assert (errors == []) == valid
    if valid:
        loads(MESH % {"protocol": "http1", "keys": keys})


# -- curl through txmesh under twistd -------------------------------------------------------------------------------

CONFIG = """
admin:
  address: tcp:{admin}:interface=127.0.0.1
listeners:
  - name: edge
    protocol: http1
    address: tcp:{listen}:interface=127.0.0.1
    route_config:
      virtual_hosts:
        - name: app
          domains: ["*"]
          routes:
            - match: {{prefix: /admin}}
              direct_response: {{status: 403, body: "denied\\n"}}
            - match: {{prefix: /}}
              route: {{cluster: echo, timeout: 10s}}
clusters:
  - name: echo
    endpoints: [{{address: "127.0.0.1:{echo}"}}]
"""


@pytest.mark.timeout(60)
def test_curl_path_as_is_through_txmesh():
    if not shutil.which("curl"):
        pytest.skip("curl not installed")
    up, echo, _ = support.startUpstream()
    try:
        admin, listen = support.freePort(), support.freePort()
        proc = support.startTxmesh(CONFIG.format(admin=admin, listen=listen, echo=echo), admin)
        try:
            support.waitForPort(listen, proc=proc.popen)

            def curl(target, *args):
                out = subprocess.run(["curl", "-sS", "--path-as-is", "--max-time", "10", "-o", "-", "-w",
                                      "\n%{http_code} %{redirect_url}", *args,
                                      "http://127.0.0.1:%d%s" % (listen, target)], capture_output=True, timeout=20)
                body, _, tail = out.stdout.rpartition(b"\n")
                code, _, location = tail.decode().partition(" ")
                return int(code), body, location

            for target in ("/public/%2e%2e/admin", "//admin", "/admin;x", "/%61dmin", "/./admin",
                           "/public/..\\admin", "/public/%2E%2E/admin"):
                assert curl(target)[:2] == (403, b"denied\n"), target
            for target in ("/public/..%2fadmin", "/public/..%5cadmin", "/%2fadmin"):
                code, _, location = curl(target)
                assert (code, location) == (307, "http://127.0.0.1:%d/admin" % listen), target
                assert curl(target, "-L")[:2] == (403, b"denied\n"), target  # the redirect followed
            code, body, _ = curl("/echo/a/./b/../c;v=1//d?q=%2e%2e/x")
            assert code == 200 and json.loads(body)["path"] == "/echo/a/c/d?q=%2e%2e/x"
            assert curl("/%zz")[0] == 400
        finally:
            proc.stop()
    finally:
        up.stop()
