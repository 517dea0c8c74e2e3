"""
The ``rbac`` filter (issue 14 part 5; txmesh/filters/rbac.py, rbac_policy.py): table tests of every permission and
principal matcher, rule order and default actions in both config shapes, config errors with file:line:key, then
the filter through in-memory listeners: HTTP/1.1 (403 ``RBAC: access denied``), HTTP/2 and gRPC
(PERMISSION_DENIED), Dubbo (BAD_REQUEST with the caller's id), shadow mode, per-route overrides, principal matching
from a peer certificate on a (fake) TLS connection over the three protocols, and issue 14 part 6's encoded and
dotted paths against a deny on the ``/admin`` prefix.
"""

import pytest
from h2 import events as h2events
from h2.config import H2Configuration
from h2.connection import H2Connection
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.testing import StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from zope.interface import implementer
from zope.interface.verify import verifyObject

from tests.certs import certs  # noqa: F401 (a fixture)
from tests.test_chain import test_the_built_in_filters_declare_every_call_that_does_something as declaresItsCalls
from tests.test_dubbo_listener import ECHO, ADD
from tests import test_path_normalization as pn
from txmesh.config import FilterConfigContext, loads
from txmesh.errors import ConfigError
from txmesh.filters.rbac import RbacFactory, RbacFilter
from txmesh.filters.rbac_policy import AddressCache, Rules, buildPermission, buildPrincipal
from txmesh.interfaces import IAuthorizationRules, IFilterFactory
from txmesh.protocols.dubbo import codec as dc
from txmesh.protocols.dubbo.client import DubboClientProtocol
from txmesh.stream import HeaderMap, RequestHead, StreamInfo
from txmesh.testing import InMemoryMesh, MemoryTransport
from txmesh.tls.material import PeerIdentity, peerIdentityOf, toOpenSSLCertificate


def context(protocol="http1"):
    return FilterConfigContext("mesh.yaml", "listeners[0].filters[0].config", protocol, frozenset(), lambda p: 9)


SPIFFE = "spiffe://mesh.local/ns/default/sa/frontend"
IDENTITY = PeerIdentity(uriSans=(SPIFFE, "https://other.example/x"), dnsSans=("frontend.default.svc",),
                        subject="CN=frontend,O=mesh")


def request(path=b"/api/x?q=1", method=b"GET", authority=b"app.svc:8080", headers=(), protocol="http1",
            metadata=None):
    return RequestHead(method, path, authority, HeaderMap.fromPairs(list(headers)), protocol=protocol,
                       metadata=metadata)


def info(peer="10.1.2.3:5555", local="127.0.0.1:15001", identity=None):
    i = StreamInfo(0.0, "http/1.1", "web", peer)
    i.downstreamLocal = local
    i.peerIdentity = identity
    return i


GRPC = dict(path=b"/pkg.v1.Greeter/SayHello", method=b"POST", protocol="grpc")
DUBBO = dict(path=b"/org.txmesh.peers.EchoService/add", method=b"add", protocol="dubbo",
             headers=[(b"x-tenant", b"blue")],
             metadata={"interface": "org.txmesh.peers.EchoService", "method": "add", "version": "1.0.0",
                       "group": "SOFA"})

# (permission, request keywords, expected)
PERMISSIONS = [
    ({"any": True}, {}, True),
    ({"path": "/api/x"}, {}, True),  # the path without its query
    ({"path": "/api/x?q=1"}, {}, False),
    ({"path": {"prefix": "/api/"}}, {}, True),
    ({"path": {"prefix": "/admin"}}, {}, False),
    ({"path": {"suffix": "/x"}}, {}, True),
    ({"path": {"contains": "pi/"}}, {}, True),
    ({"path": {"regex": "/api/[a-z]+"}}, {}, True),
    ({"path": {"regex": "/api"}}, {}, False),  # a full match
    ({"path": {"safe_regex": {"regex": "/API/.*"}}}, {}, False),
    ({"path": {"prefix": "/API/", "ignore_case": True}}, {}, True),
    ({"url_path": {"path": {"exact": "/api/x"}}}, {}, True),  # Envoy's spelling
    ({"authority": "app.svc:8080"}, {}, True),
    ({"host": {"prefix": "app."}}, {}, True),
    ({"authority": {"exact": "APP.SVC:8080", "ignore_case": True}}, {}, True),
    ({"method": "GET"}, {}, True),
    ({"method": ["POST", "PUT"]}, {}, False),
    ({"header": {"name": "x-role", "exact": "ops"}}, {"headers": [(b"x-role", b"ops")]}, True),
    ({"header": {"name": "x-role", "exact": "ops"}}, {}, False),
    ({"header": {"name": "x-role", "present": True}}, {"headers": [(b"x-role", b"")]}, True),
    ({"header": {"name": "x-role", "present": True, "invert": True}}, {}, True),
    ({"header": {"name": "x-role", "suffix": "-admin"}}, {"headers": [(b"x-role", b"team-admin")]}, True),
    ({"header": {"name": "X-Role", "string_match": {"contains": "ADM", "ignore_case": True}}},
     {"headers": [(b"x-role", b"team-admin")]}, True),
    ({"header": {"name": "x-role", "regex": "t.*n", "invert_match": True}},
     {"headers": [(b"x-role", b"team-admin")]}, False),
    ({"header": {"name": ":method", "exact": "GET"}}, {}, True),  # pseudo-headers, as in routes
    ({"grpc_service": "pkg.v1.Greeter"}, GRPC, True),
    ({"grpc_service": {"prefix": "pkg.v1."}}, GRPC, True),
    ({"grpc_method": "SayHello"}, GRPC, True),
    ({"grpc_method": "SayHello"}, {"path": b"/pkg.v1.Greeter/SayHello"}, False),  # not a gRPC request
    ({"and_rules": {"rules": [{"grpc_service": "pkg.v1.Greeter"}, {"grpc_method": "Other"}]}}, GRPC, False),
    ({"dubbo_interface": "org.txmesh.peers.EchoService"}, DUBBO, True),
    ({"dubbo_interface": {"prefix": "org.txmesh."}}, DUBBO, True),
    ({"dubbo_method": "add"}, DUBBO, True),
    ({"dubbo_method": "echo"}, DUBBO, False),
    ({"dubbo_version": "1.0.0"}, DUBBO, True),
    ({"dubbo_group": "SOFA"}, DUBBO, True),
    ({"dubbo_group": "OTHER"}, DUBBO, False),
    ({"dubbo_attachment": {"name": "x-tenant", "exact": "blue"}}, DUBBO, True),
    ({"dubbo_attachment": {"name": "x-tenant", "exact": "blue"}}, {"headers": [(b"x-tenant", b"blue")]}, False),
    ({"dubbo_interface": "org.txmesh.peers.EchoService"}, {}, False),  # not a Dubbo call
    ({"destination_port": 15001}, {}, True),
    ({"destination_port": 15002}, {}, False),
    ({"destination_port_range": {"start": 15000, "end": 15002}}, {}, True),
    ({"not_rule": {"path": {"prefix": "/api"}}}, {}, False),
    ({"and_rules": [{"method": "GET"}, {"path": {"prefix": "/api"}}]}, {}, True),
    ({"and_rules": [{"method": "GET"}, {"path": {"prefix": "/admin"}}]}, {}, False),
    ({"or_rules": [{"method": "POST"}, {"path": {"prefix": "/api"}}]}, {}, True),
    ({"or_rules": {"rules": [{"method": "POST"}, {"path": {"prefix": "/admin"}}]}}, {}, False),
]


@pytest.mark.parametrize("raw, kw, expected", PERMISSIONS, ids=lambda v: repr(v)[:60])
def test_permissions(raw, kw, expected):
    match = buildPermission(raw, context(), "p", None, AddressCache())
    assert match(request(**kw), info()) is expected


# (principal, stream keywords, expected)
PRINCIPALS = [
    ({"any": True}, {}, True),
    ({"source_ip": "10.0.0.0/8"}, {}, True),
    ({"source_ip": "10.1.2.3"}, {}, True),  # a single address
    ({"source_ip": "192.168.0.0/16"}, {}, False),
    ({"direct_remote_ip": {"address_prefix": "10.1.0.0", "prefix_len": 16}}, {}, True),
    ({"remote_ip": ["192.168.0.0/16", "10.1.2.0/24"]}, {}, True),
    ({"source_ip": "::1/128"}, {"peer": "::1:4444"}, True),
    ({"source_ip": "10.0.0.0/8"}, {"peer": "::ffff:10.9.9.9:4444"}, True),  # IPv4-mapped
    ({"source_ip": "10.0.0.0/8"}, {"peer": "2001:db8::1:4444"}, False),
    ({"source_ip": "10.0.0.0/8"}, {"peer": "/run/app.sock"}, False),  # a UNIX peer has no address
    ({"authenticated": True}, {"identity": IDENTITY}, True),
    ({"authenticated": {}}, {}, False),
    ({"authenticated": {"principal_name": {"exact": SPIFFE}}}, {"identity": IDENTITY}, True),
    ({"authenticated": {"principal_name": {"suffix": ".svc"}}}, {"identity": IDENTITY}, True),  # a DNS SAN
    ({"authenticated": {"principal_name": {"exact": "CN=frontend,O=mesh"}}}, {"identity": IDENTITY}, True),
    ({"principal": SPIFFE}, {"identity": IDENTITY}, True),
    ({"principal": SPIFFE}, {}, False),  # no identity: identity matchers never match
    ({"spiffe_id": {"prefix": "spiffe://mesh.local/ns/default/"}}, {"identity": IDENTITY}, True),
    ({"spiffe_id": {"prefix": "spiffe://mesh.local/ns/prod/"}}, {"identity": IDENTITY}, False),
    ({"uri_san": "https://other.example/x"}, {"identity": IDENTITY}, True),  # any of them
    ({"dns_san": {"suffix": ".default.svc"}}, {"identity": IDENTITY}, True),
    ({"dns_san": {"regex": "[a-z]+\\.prod\\.svc"}}, {"identity": IDENTITY}, False),
    ({"subject": {"contains": "O=mesh"}}, {"identity": IDENTITY}, True),
    ({"header": {"name": "x-caller", "exact": "ci"}}, {}, False),
    ({"not_id": {"authenticated": True}}, {}, True),  # Envoy's "anyone unauthenticated"
    ({"not_id": {"principal": SPIFFE}}, {"identity": IDENTITY}, False),
    ({"and_ids": {"ids": [{"source_ip": "10.0.0.0/8"}, {"principal": SPIFFE}]}}, {"identity": IDENTITY}, True),
    ({"and_ids": [{"source_ip": "10.0.0.0/8"}, {"principal": SPIFFE}]}, {}, False),
    ({"or_ids": [{"source_ip": "192.168.0.0/16"}, {"principal": SPIFFE}]}, {"identity": IDENTITY}, True),
]


@pytest.mark.parametrize("raw, kw, expected", PRINCIPALS, ids=lambda v: repr(v)[:60])
def test_principals(raw, kw, expected):
    match = buildPrincipal(raw, context(), "p", AddressCache())
    assert match(request(), info(**kw)) is expected


def rules(raw, protocol="http1"):
    return RbacFactory().buildConfig(raw, context(protocol)).rules


def decide(raw, req=None, **kw):
    return rules(raw).enforced.evaluate(req or request(), info(**kw))


ORDERED = {"default_action": "allow", "policies": [
    {"name": "ops-admin", "action": "allow", "permissions": [{"path": {"prefix": "/admin"}}],
     "principals": [{"source_ip": "10.0.0.0/8"}]},
    {"name": "no-admin", "action": "deny", "permissions": [{"path": {"prefix": "/admin"}}],
     "principals": [{"any": True}]},
]}


def test_the_first_matching_policy_decides_then_the_default():
    assert decide(ORDERED, request(b"/admin/x")) == (True, "ops-admin")
    assert decide(ORDERED, request(b"/admin/x"), peer="192.168.1.1:1") == (False, "no-admin")
    assert decide(ORDERED, request(b"/public")) == (True, None)


def test_default_actions_follow_envoy_when_the_policies_share_one():
    allowList = {"action": "allow", "policies": [{"name": "p", "permissions": [{"path": "/a"}],
                                                "principals": [{"any": True}]}]}
    assert decide(allowList, request(b"/a")) == (True, "p")
    assert decide(allowList, request(b"/b")) == (False, None)  # ALLOW: what no policy allows is denied
    envoy = {"rules": {"action": "DENY", "policies": {
        "z-last": {"permissions": [{"any": True}], "principals": [{"source_ip": "10.0.0.0/8"}]},
        "a-first": {"permissions": [{"path": {"prefix": "/a"}}], "principals": [{"any": True}]}}}}
    assert decide(envoy, request(b"/a")) == (False, "a-first")  # Envoy tries its policies by name
    assert decide(envoy, request(b"/b"), peer="192.168.0.1:1") == (True, None)  # DENY: the rest is allowed
    assert decide({"rules": {"action": "ALLOW"}}) == (False, None)  # Envoy: ALLOW and no policy denies all


def test_rules_provide_the_interface_and_the_filter_declares_its_calls():
    r = rules(ORDERED).enforced
    assert isinstance(r, Rules) and verifyObject(IAuthorizationRules, r)
    assert r.policyNames == ("ops-admin", "no-admin") and r.defaultAction == "allow"
    verifyObject(IFilterFactory, RbacFactory())
    declaresItsCalls(RbacFilter)


CONFIG_ERRORS = [
    ("{}", "listeners[0].filters[0].config: needs policies, rules or shadow_rules"),
    ("{policies: [{name: a, action: allow, permissions: [{any: true}], principals: [{any: true}]},"
     " {name: b, action: deny, permissions: [{any: true}], principals: [{any: true}]}]}",
     "listeners[0].filters[0].config.policies: default_action is needed: the policies mix allow and deny"),
    ("{policies: [{name: a, permissions: [{any: true}], principals: [{any: true}]}]}",
     "listeners[0].filters[0].config.policies[0]: missing action (allow or deny), here or for the whole list"),
    ("{action: allow, policies: [{name: a, permissions: [{pth: /x}], principals: [{any: true}]}]}",
     "listeners[0].filters[0].config.policies[0].permissions[0].pth: unknown permission (expected one of:"),
    ("{action: allow, policies: [{name: a, permissions: [{path: {prefix: /a, exact: /b}}], principals: [{any: true}]}]}",
     "listeners[0].filters[0].config.policies[0].permissions[0].path: needs exactly one of:"),
    ("{action: allow, policies: [{name: a, permissions: [{path: {regex: '('}}], principals: [{any: true}]}]}",
     "listeners[0].filters[0].config.policies[0].permissions[0].path.regex: invalid regex:"),
    ("{action: allow, policies: [{name: a, permissions: [{any: true}], principals: [{source_ip: 10.0.0.300/8}]}]}",
     "listeners[0].filters[0].config.policies[0].principals[0].source_ip: not a CIDR range:"),
    ("{action: allow, policies: [{name: a, permissions: [{dubbo_method: add}], principals: [{any: true}]}]}",
     "listeners[0].filters[0].config.policies[0].permissions[0].dubbo_method: never matches on a http1 listener"),
    ("{action: allow, policies: [{name: a, permissions: [], principals: [{any: true}]}]}",
     "listeners[0].filters[0].config.policies[0].permissions: must be a non-empty list of permissions"),
    ("{action: maybe, policies: []}", "listeners[0].filters[0].config.action: must be allow or deny"),
    ("{rules: {action: LOG, policies: {}}}", "listeners[0].filters[0].config.rules.action: must be allow or deny"),
    ("{rules: {action: ALLOW}, default_action: deny}",
     "listeners[0].filters[0].config.default_action: goes with policies, not rules"),
    ("{rules: {action: ALLOW}, mode: shadow, shadow_rules: {action: DENY}}",
     "listeners[0].filters[0].config.mode: mode: shadow runs the rules as shadow rules"),
    ("{rules: {action: ALLOW}, per_route: {health: {disabled: false}}}",
     "listeners[0].filters[0].config.per_route.health.disabled: must be true, alone"),
    ("{rules: {action: ALLOW}, dubbo_status: 20}",
     "listeners[0].filters[0].config.dubbo_status: must be a Dubbo error status"),
    ("{rules: {action: ALLOW, policies: {p: {permissions: [{any: true}], principals: [{any: true}],"
     " condition: x}}}}", "listeners[0].filters[0].config.rules.policies.p.condition: unknown key"),
]


@pytest.mark.parametrize("config, message", CONFIG_ERRORS, ids=[m.split(": ", 1)[1][:40] for _, m in CONFIG_ERRORS])
def test_config_errors_name_file_line_and_key(config, message):
    text = ("clusters: [{name: b, endpoints: [{address: '10.0.0.1:80'}]}]\nlisteners:\n- name: web\n"
            "  address: tcp:0\n  default_cluster: b\n  filters:\n  - name: rbac\n    config: %s\n" % (config,))
    with pytest.raises(ConfigError) as e:
        loads(text, "mesh.yaml")
    assert str(e.value).startswith("mesh.yaml:8: " + message), str(e.value)


# -- through the listeners ---------------------------------------------------------------------------------------

MESH = """
clusters:
- {name: backend, protocol: %(cluster)s, endpoints: [{address: "10.0.0.1:%(port)d"}]}
listeners:
- name: edge
  protocol: %(protocol)s
  address: tcp:15001
  filters:
  - name: rbac
    config: %(config)s
  - name: router
  route_config:
    virtual_hosts:
    - name: all
      domains: ["*"]
      routes:
      - {name: health, match: {prefix: /healthz}, route: {cluster: backend}}
      - {name: rest, match: {prefix: /}, route: {cluster: backend}}
"""


def httpMesh(config, protocol="http1"):
    return InMemoryMesh(MESH % {"cluster": "http1", "port": 80, "protocol": protocol, "config": config})


HTTP_POLICY = ("{default_action: allow, policies: ["
               "{name: ops, action: allow, permissions: [{path: {prefix: /admin}}],"
               " principals: [{and_ids: [{source_ip: 10.9.0.0/16}, {header: {name: x-role, exact: ops}}]}]},"
               "{name: no-admin, action: deny, permissions: [{path: {prefix: /admin}}], principals: [{any: true}]},"
               "{name: read-only, action: deny, permissions: [{not_rule: {method: [GET, HEAD]}}],"
               " principals: [{any: true}]}]}")


def get(mesh, path, peer="10.1.2.3", method=b"GET", headers=()):
    mesh.upstream("backend").respondWith(200, body=b"ok")
    client = mesh.connect(peer=(peer, None))
    lines = [method + b" " + path + b" HTTP/1.1", b"Host: app", b"Content-Length: 0"] + list(headers)
    client.send(b"\r\n".join(lines) + b"\r\n\r\n")
    return client.response()


def test_http1_denied_is_403_with_envoys_body_and_never_reaches_the_upstream():
    mesh = httpMesh(HTTP_POLICY)
    r = get(mesh, b"/admin/users")
    assert (r.status, r.body, r.header("x-txmesh-error")) == (403, b"RBAC: access denied", b"rbac_access_denied")
    assert mesh.upstream("backend").requests == []
    assert get(mesh, b"/admin/users", peer="10.9.1.1", headers=[b"x-role: ops"]).status == 200
    assert get(mesh, b"/admin/users", peer="10.9.1.1").status == 403  # both principals of and_ids
    assert get(mesh, b"/api", method=b"DELETE").status == 403
    assert get(mesh, b"/api").status == 200
    assert len(mesh.upstream("backend").requests) == 2
    assert mesh.value("rbac_denied", listener="edge", rbac="rbac", policy="no-admin") == 2
    assert mesh.value("rbac_denied", policy="read-only") == 1
    assert mesh.value("rbac_allowed", policy="ops") == 1 and mesh.value("rbac_allowed", policy="_default") == 1
    assert mesh.value("downstream_rq_error", cause="rbac_access_denied") == 3
    assert mesh.streams[0].streamInfo.responseCodeDetails == "rbac_access_denied"


def test_shadow_mode_counts_and_logs_but_lets_everything_through():
    mesh = httpMesh("{mode: shadow, policies: [{name: no-admin, action: deny, permissions: [{path: {prefix: /admin}}],"
                    " principals: [{any: true}]}]}")
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        assert get(mesh, b"/admin").status == 200
        assert get(mesh, b"/admin/2").status == 200  # within 10 s of the first: counted, not logged again
    finally:
        globalLogPublisher.removeObserver(events.append)
    lines = [formatEvent(e) for e in events if e.get("log_namespace", "").startswith("txmesh.filters.rbac")]
    assert lines == ["rbac (shadow) on listener edge: would deny GET /admin from 10.1.2.3:50001 (policy no-admin); "
                     "1 in the last 10.0s"]
    assert get(mesh, b"/api").status == 200
    assert mesh.value("rbac_shadow_denied", policy="no-admin") == 2
    assert mesh.value("rbac_shadow_allowed", policy="_default") == 1
    assert mesh.value("rbac_denied") == mesh.value("rbac_allowed") == 0


def test_shadow_rules_run_beside_the_enforced_ones():
    mesh = httpMesh("{rules: {action: DENY, policies: {no-admin: {permissions: [{path: {prefix: /admin}}],"
                    " principals: [{any: true}]}}}, shadow_rules: {action: ALLOW, policies: {"
                    "internal: {permissions: [{any: true}], principals: [{source_ip: 10.0.0.0/8}]}}}}")
    assert get(mesh, b"/api", peer="192.0.2.1").status == 200
    assert get(mesh, b"/admin", peer="10.0.0.5").status == 403
    assert mesh.value("rbac_shadow_denied", policy="_default") == 1  # 192.0.2.1 would be refused
    assert mesh.value("rbac_shadow_allowed", policy="internal") == 1
    assert mesh.value("rbac_denied", policy="no-admin") == 1 and mesh.value("rbac_allowed") == 1


def test_per_route_disable_and_override():
    mesh = httpMesh("{action: allow, policies: [{name: internal, permissions: [{any: true}],"
                    " principals: [{source_ip: 10.0.0.0/8}]}], per_route: {health: {disabled: true},"
                    " rest: {action: allow, policies: [{name: ci, permissions: [{any: true}],"
                    " principals: [{header: {name: x-caller, exact: ci}}]}]}}}")
    assert get(mesh, b"/healthz", peer="192.0.2.1").status == 200  # disabled on the health route
    assert get(mesh, b"/api", peer="10.1.1.1").status == 403  # the rest route's own rules
    assert get(mesh, b"/api", peer="192.0.2.1", headers=[b"x-caller: ci"]).status == 200
    assert mesh.value("rbac_allowed", policy="ci") == 1


def h2Request(mesh, path, extra=(), grpc=False):
    client = mesh.connect()
    conn = H2Connection(H2Configuration(client_side=True, header_encoding=None))
    conn.initiate_connection()
    fields = [(b":method", b"POST" if grpc else b"GET"), (b":scheme", b"http"), (b":path", path),
              (b":authority", b"svc")]
    if grpc:
        fields += [(b"content-type", b"application/grpc"), (b"te", b"trailers")]
    conn.send_headers(1, fields + list(extra), end_stream=True)
    client.send(conn.data_to_send())
    answered = [dict(e.headers) for e in conn.receive_data(client.received())
                if isinstance(e, h2events.ResponseReceived)]
    return answered[0] if answered else None


def grpcMesh(config, connects):
    def connect(host, clusterConfig):
        connects.append(host)
        return defer.Deferred()  # an allowed call just waits for its upstream
    return InMemoryMesh(MESH % {"cluster": "grpc", "port": 50051, "protocol": "grpc", "config": config},
                        connect=connect)


GRPC_POLICY = ("{action: allow, policies: [{name: greeter, permissions: [{and_rules: [{grpc_service: pkg.Greeter},"
               " {grpc_method: {prefix: Say}}]}], principals: [{source_ip: 10.0.0.0/8}]}]}")


def test_grpc_denied_is_permission_denied_and_never_reaches_the_upstream():
    connects = []
    mesh = grpcMesh(GRPC_POLICY, connects)
    headers = h2Request(mesh, b"/pkg.Greeter/Delete", grpc=True)
    assert (headers[b":status"], headers[b"grpc-status"]) == (b"200", b"7")
    assert headers[b"grpc-message"].endswith(b"RBAC: access denied")
    assert headers[b"x-txmesh-error"] == b"rbac_access_denied"
    assert connects == []
    assert h2Request(mesh, b"/pkg.Greeter/SayHello", grpc=True) is None  # allowed: waits for its upstream
    assert len(connects) == 1
    assert mesh.value("rbac_denied", policy="_default") == 1 and mesh.value("rbac_allowed", policy="greeter") == 1


def test_http2_denied_is_403():
    mesh = httpMesh(HTTP_POLICY, protocol="http2")
    headers = h2Request(mesh, b"/admin")
    assert (headers[b":status"], headers[b"x-txmesh-error"]) == (b"403", b"rbac_access_denied")
    assert mesh.upstream("backend").requests == []


def dubboMesh(config):
    upstreams = []

    def connect(host, clusterConfig):
        proto = DubboClientProtocol()
        proto.makeConnection(StringTransport())
        upstreams.append(proto)
        return defer.succeed(proto)

    text = MESH % {"cluster": "dubbo", "port": 20880, "protocol": "dubbo", "config": config}
    text = text.replace("{name: health, match: {prefix: /healthz}, route: {cluster: backend}}",
                        "{name: echo, match: {dubbo: {interface: org.txmesh.peers.EchoService}},"
                        " route: {cluster: backend}}")
    return InMemoryMesh(text, connect=connect), upstreams


DUBBO_POLICY = ("{action: deny, policies: [{name: no-add, permissions: [{and_rules: ["
                "{dubbo_interface: org.txmesh.peers.EchoService}, {dubbo_method: add}, {dubbo_group: SOFA},"
                " {dubbo_version: {prefix: '1.'}}]}], principals: [{any: true}]}]}")


def test_dubbo_denied_is_bad_request_with_the_callers_id_and_a_message():
    mesh, upstreams = dubboMesh(DUBBO_POLICY)
    proto = mesh.factory.buildProtocol(None)
    transport = StringTransport()
    proto.makeConnection(transport)
    proto.dataReceived(dc.withRequestId(ADD, 7) + ADD[16:])
    proto.dataReceived(dc.withRequestId(ECHO, 8) + ECHO[16:])
    [reply] = dc.DubboDecoder().feed(transport.value())
    assert (reply.requestId, reply.status) == (7, dc.BAD_REQUEST)
    assert "RBAC: access denied" in dc.decodeErrorMessage(reply)
    [forwarded] = dc.DubboDecoder().feed(upstreams[0].transport.value())  # only echo went up
    assert forwarded.invocation.methodName == "echo"
    assert mesh.value("rbac_denied", policy="no-add") == 1 and mesh.value("rbac_allowed", policy="_default") == 1


def test_dubbo_status_is_configurable():
    mesh, _ = dubboMesh(DUBBO_POLICY[:-1] + ", dubbo_status: 70}")
    proto = mesh.factory.buildProtocol(None)
    transport = StringTransport()
    proto.makeConnection(transport)
    proto.dataReceived(dc.withRequestId(ADD, 3) + ADD[16:])
    [reply] = dc.DubboDecoder().feed(transport.value())
    assert reply.status == dc.SERVICE_ERROR


# -- principals from a peer certificate, over a fake TLS connection ----------------------------------------------


@implementer(ISSLTransport)
class TLSMemoryTransport(MemoryTransport):
    """A MemoryTransport whose handshake is done: the peer sent ``cert`` (a pyOpenSSL X509)."""

    def __init__(self, clock, peer, cert):
        MemoryTransport.__init__(self, clock, peer)
        self.cert = cert

    def getPeerCertificate(self):
        return self.cert


def identityMesh(mesh):
    """
    Connections to ``mesh`` over TLSMemoryTransports; each stream's StreamInfo gets the peer identity of its
    connection's transport (``peerIdentityOf``), as the TLS listener will set it (issue 14 part 1's plumbing).
    """
    transports = {}
    createStream = mesh.template.createStream

    def streamWithIdentity(downstream, streamInfo):
        streamInfo.peerIdentity = peerIdentityOf(transports[streamInfo.downstreamPeer])
        return createStream(downstream, streamInfo)
    mesh.template.createStream = streamWithIdentity

    def connect(cert, port):
        transport = TLSMemoryTransport(mesh.clock, IPv4Address("TCP", "10.1.2.3", port), cert)
        transports["10.1.2.3:%d" % (port,)] = transport
        transport.protocol = protocol = mesh.factory.buildProtocol(transport.getPeer())
        protocol.makeConnection(transport)
        mesh.runTurns()
        return transport
    return connect


PRINCIPAL_POLICY = ("{action: allow, policies: [{name: frontend, permissions: [{any: true}], principals: ["
                    "{spiffe_id: 'spiffe://mesh.local/ns/default/sa/frontend'}]}]}")


def test_principals_match_the_peer_certificate_over_http1_grpc_and_dubbo(certs):
    frontend = toOpenSSLCertificate(certs.issue("frontend", uris=[SPIFFE], client=True).cert)
    other = toOpenSSLCertificate(certs.issue("batch", uris=["spiffe://mesh.local/ns/default/sa/batch"],
                                             client=True).cert)
    outcomes = {}
    for protocol in ("http1", "grpc", "dubbo"):
        if protocol == "dubbo":
            mesh, _ = dubboMesh(PRINCIPAL_POLICY)
        elif protocol == "grpc":
            mesh = grpcMesh(PRINCIPAL_POLICY, [])
        else:
            mesh = httpMesh(PRINCIPAL_POLICY)
            mesh.upstream("backend").respondWith(200, body=b"ok")
        connect = identityMesh(mesh)
        for name, cert, port in (("frontend", frontend, 40001), ("batch", other, 40002), ("none", None, 40003)):
            t = connect(cert, port)
            if protocol == "http1":
                t.protocol.dataReceived(b"GET / HTTP/1.1\r\nHost: app\r\n\r\n")
                mesh.runTurns()
                outcomes[protocol, name] = t.value().split(b" ")[1]
            elif protocol == "grpc":
                conn = H2Connection(H2Configuration(client_side=True, header_encoding=None))
                conn.initiate_connection()
                conn.send_headers(1, [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/pkg.G/M"),
                                      (b":authority", b"svc"), (b"content-type", b"application/grpc"),
                                      (b"te", b"trailers")], end_stream=True)
                t.protocol.dataReceived(conn.data_to_send())
                mesh.runTurns()
                got = [dict(e.headers).get(b"grpc-status") for e in conn.receive_data(t.value())
                       if isinstance(e, h2events.ResponseReceived)]
                outcomes[protocol, name] = got[0] if got else b"waiting"
            else:
                t.protocol.dataReceived(dc.withRequestId(ECHO, 5) + ECHO[16:])
                mesh.runTurns()
                replies = dc.DubboDecoder().feed(t.value())
                outcomes[protocol, name] = replies[0].status if replies else "forwarded"
        assert mesh.value("rbac_allowed", policy="frontend") == 1
        assert mesh.value("rbac_denied", policy="_default") == 2
    assert outcomes == {
        ("http1", "frontend"): b"200", ("http1", "batch"): b"403", ("http1", "none"): b"403",
        ("grpc", "frontend"): b"waiting", ("grpc", "batch"): b"7", ("grpc", "none"): b"7",
        ("dubbo", "frontend"): "forwarded", ("dubbo", "batch"): dc.BAD_REQUEST, ("dubbo", "none"): dc.BAD_REQUEST,
    }


# -- issue 14 part 6's paths against a policy --------------------------------------------------------------------

ADMIN_DENY = ("{action: deny, policies: [{name: no-admin, permissions: [{path: {prefix: /admin}}],"
              " principals: [{any: true}]}]}")


def policyMesh(protocol):
    """The path normalisation tests' mesh, with the /admin 403 coming from rbac instead of a route."""
    text = pn.meshText(protocol).replace(
        "      - match: {prefix: /admin}\n        direct_response: {status: 403, body: \"denied\\n\"}\n", "")
    text = text.replace("  route_config:", "  filters:\n  - {name: rbac, config: %s}\n  - {name: router}\n"
                        "  route_config:" % (ADMIN_DENY,))
    assert "direct_response" not in text and "rbac" in text
    return InMemoryMesh(text)


@pytest.mark.parametrize("target, expected", pn.TABLE, ids=[t.decode("latin-1") for t, _ in pn.TABLE])
def test_normalised_paths_meet_the_policy_over_http1(target, expected):
    mesh = policyMesh("http1")
    assert pn.outcome(*pn.http1(mesh, target)) == expected
    if expected == pn.DENIED:
        assert mesh.value("rbac_denied", policy="no-admin") == 1


@pytest.mark.parametrize("target, expected", pn.TABLE, ids=[t.decode("latin-1") for t, _ in pn.TABLE])
def test_normalised_paths_meet_the_policy_over_h2(target, expected):
    mesh = policyMesh("http2")
    status, location, forwarded, _ = pn.h2(mesh, target)
    assert pn.outcome(status, location, forwarded) == expected


# -- the editors' schema -----------------------------------------------------------------------------------------


def schemaErrors(config):
    import json
    from importlib import resources

    import jsonschema
    import yaml
    schema = json.loads(resources.files("txmesh").joinpath("mesh.schema.json").read_text())
    doc = yaml.safe_load(MESH % {"cluster": "http1", "port": 80, "protocol": "http1", "config": config})
    return [e.message for e in jsonschema.Draft202012Validator(schema).iter_errors(doc)]


@pytest.mark.parametrize("config", [HTTP_POLICY, GRPC_POLICY, DUBBO_POLICY, ADMIN_DENY, PRINCIPAL_POLICY,
                                    "{rules: {action: DENY, policies: {a: {permissions: [{any: true}],"
                                    " principals: [{any: true}]}}}, shadow_rules: {action: ALLOW}, mode: enforce,"
                                    " per_route: {health: {disabled: true}, rest: {mode: shadow}}}"])
def test_the_schema_takes_what_the_loader_takes(config):
    assert schemaErrors(config) == []


@pytest.mark.parametrize("config", ["{mode: loud}", "{polices: []}", "{action: maybe}", "{dubbo_status: 20}",
                                    "{policies: [{name: a, permissions: [], principals: [{any: true}]}]}",
                                    "{per_route: {health: {disabled: false}}}"])
def test_the_schema_refuses_what_the_loader_refuses(config):
    assert schemaErrors(config) != []
