"""
Tests for txmesh.routing: virtual-host precedence, every match kind, rewrites, redirects, weighted picks.
Route tables are built from mesh.yaml text, as users write them.
"""

import random
import textwrap

import pytest

from tests.test_config import fakePluginDir, fakePlugins  # noqa: F401 (fixtures)
from txmesh.config import loads
from txmesh.routing import (ClusterAction, DirectResponseAction, HeaderValueOption, RedirectAction,
                            WeightedClusterAction)
from txmesh.stream import HeaderMap, RequestHead

CLUSTERS = """\
clusters:
  - {name: a, endpoints: [{address: "127.0.0.1:1"}]}
  - {name: b, endpoints: [{address: "127.0.0.1:2"}]}
  - {name: c, endpoints: [{address: "127.0.0.1:3"}]}
listeners:
  - name: l
    address: tcp:0
    route_config:
      virtual_hosts:
"""


def table(vhosts):
    """The RouteConfig of a listener whose virtual_hosts are the YAML list ``vhosts``."""
    return loads(CLUSTERS + textwrap.indent(textwrap.dedent(vhosts), " " * 8)).listeners[0].routeConfig


def routes(routesYaml):
    """The RouteConfig of one catch-all virtual host with the YAML list ``routesYaml`` as its routes."""
    return table("- name: all\n  domains: ['*']\n  routes:\n" + textwrap.indent(textwrap.dedent(routesYaml), "    "))


def request(path=b"/", authority=b"host", method=b"GET", headers=(), scheme=b"http"):
    return RequestHead(method, path, authority, HeaderMap.fromPairs(headers), scheme=scheme)


@pytest.fixture
def domains():
    return table("""\
        - {name: exact, domains: [api.example.com, "[::1]"]}
        - {name: wildLong, domains: ["*.svc.example.com"]}
        - {name: wildShort, domains: ["*.example.com"]}
        - {name: wildDash, domains: ["*-canary.example.com"]}
        - {name: prefixLong, domains: ["api.example.*"]}
        - {name: prefixShort, domains: ["API.*"]}
        - {name: default, domains: ["*"]}
    """)


@pytest.mark.parametrize("authority, vhost", [
    (b"api.example.com", "exact"),
    (b"API.Example.COM:8080", "exact"),
    (b"[::1]:8080", "exact"),
    (b"x.svc.example.com", "wildLong"),
    (b"svc.example.com", "wildShort"),
    (b"x.example.com", "wildShort"),
    (b"foo-canary.example.com", "wildDash"),
    (b"api.example.org", "prefixLong"),
    (b"api.foo:80", "prefixShort"),
    (b"example.com", "default"),
    (b"", "default"),
    (b"[::2]", "default"),
])
def test_domainPrecedence(domains, authority, vhost):
    assert domains.virtualHostFor(authority).name == vhost
    assert domains.virtualHostFor(authority).name == vhost  # and again, from the cache


def test_noDefaultHost():
    t = table("- {name: only, domains: [a.svc], routes: [{match: {prefix: /}, route: {cluster: a}}]}")
    assert t.match(request(authority=b"b.svc")) is None
    assert t.match(request(authority=b"a.svc:80")).action.cluster == "a"


@pytest.fixture
def matches():
    return routes("""\
        - {name: exactPath, match: {path: /exact}, direct_response: {status: 200}}
        - {name: regex, match: {regex: '/r/[0-9]+'}, direct_response: {status: 200}}
        - {name: nocase, match: {prefix: /NoCase, case_sensitive: false}, direct_response: {status: 200}}
        - {name: nocaseRegex, match: {regex: '/RX', case_sensitive: false}, direct_response: {status: 200}}
        - {name: post, match: {prefix: /m, methods: [POST, put]}, direct_response: {status: 200}}
        - name: headers
          match:
            prefix: /h
            headers:
              - {name: X-Exact, exact: "1"}
              - {name: x-prefix, prefix: ab}
              - {name: x-regex, regex: 'v[0-9]'}
              - {name: x-present, present: true}
              - {name: x-absent, present: false}
              - {name: x-not, exact: "no", invert: true}
          direct_response: {status: 200}
        - {name: authority, match: {prefix: /h, headers: [{name: ":authority", prefix: admin.}]},
           direct_response: {status: 200}}
        - {name: catchall, match: {prefix: /}, direct_response: {status: 404}}
    """)


GOOD_HEADERS = [("x-exact", "1"), ("x-prefix", "abc"), ("x-regex", "v2"), ("x-present", "")]


@pytest.mark.parametrize("req, name", [
    (request(b"/exact"), "exactPath"),
    (request(b"/exact?q=1"), "exactPath"),
    (request(b"/exact/"), "catchall"),
    (request(b"/r/123"), "regex"),
    (request(b"/r/123x"), "catchall"),  # regexes match the whole path
    (request(b"/r/1?x=y"), "regex"),
    (request(b"/nocase/x"), "nocase"),
    (request(b"/NOCASE"), "nocase"),
    (request(b"/rx"), "nocaseRegex"),
    (request(b"/m", method=b"POST"), "post"),
    (request(b"/m", method=b"PUT"), "post"),
    (request(b"/m", method=b"GET"), "catchall"),
    (request(b"/h", headers=GOOD_HEADERS), "headers"),
    (request(b"/h", headers=GOOD_HEADERS + [("x-not", "yes")]), "headers"),
    (request(b"/h", headers=GOOD_HEADERS + [("x-not", "no")]), "catchall"),
    (request(b"/h", headers=GOOD_HEADERS + [("x-absent", "1")]), "catchall"),
    (request(b"/h", headers=GOOD_HEADERS[1:]), "catchall"),
    (request(b"/h", headers=[("x-exact", "2")] + GOOD_HEADERS[1:]), "catchall"),
    (request(b"/h", headers=[("x-prefix", "xab")] + GOOD_HEADERS[:1] + GOOD_HEADERS[2:]), "catchall"),
    (request(b"/h", headers=[("x-regex", "v22")] + GOOD_HEADERS[:2] + GOOD_HEADERS[3:]), "catchall"),
    (request(b"/h", headers=GOOD_HEADERS[:3]), "catchall"),
    (request(b"/h", authority=b"admin.svc"), "authority"),
    (request(b"/other"), "catchall"),
])
def test_matchKinds(matches, req, name):
    assert matches.match(req).name == name


def test_repeatedHeaderJoined():
    t = routes("- {match: {prefix: /, headers: [{name: x, exact: 'a,b'}]}, direct_response: {status: 200}}")
    assert t.match(request(headers=[("x", "a"), ("x", "b")])) is not None
    assert t.match(request(headers=[("x", "a")])) is None


def test_routeObjects():
    t = table("""\
        - name: svc
          domains: [svc]
          request_headers_to_add: [{name: X-A, value: b}, {name: x-c, value: d, append: false}]
          request_headers_to_remove: [X-B]
          response_headers_to_remove: [server]
          routes:
            - name: r1
              match: {prefix: /api}
              route: {cluster: a, timeout: 2.5s, host_rewrite: Backend.Internal, max_request_body: 10}
              response_headers_to_add: [{name: x-route, value: r1}]
            - match: {prefix: /}
              route: {cluster: b}
    """)
    route = t.match(request(b"/api/x", b"svc"))
    vhost = route.virtualHost
    assert vhost.name == "svc" and vhost.domains == ("svc",) and vhost.routes[0] is route
    assert vhost.requestHeadersToAdd == (HeaderValueOption(b"x-a", b"b", True), HeaderValueOption(b"x-c", b"d", False))
    assert vhost.requestHeadersToRemove == (b"x-b",)
    assert vhost.responseHeadersToRemove == (b"server",)
    assert route.name == "r1"
    assert route.responseHeadersToAdd == (HeaderValueOption(b"x-route", b"r1", True),)
    assert isinstance(route.action, ClusterAction)
    assert (route.action.cluster, route.action.timeout, route.action.hostRewrite, route.action.maxRequestBody) == (
        "a", 2.5, b"Backend.Internal", 10)
    default = t.match(request(b"/", b"svc"))
    assert default.name is None
    assert (default.action.timeout, default.action.hostRewrite, default.action.maxRequestBody) == (15.0, None, None)
    assert default.action.pickCluster(random.Random(0)) == "b"


@pytest.mark.parametrize("match, action, path, rewritten", [
    ("{prefix: /api/}", "prefix_rewrite: /v2/", b"/api/x?q=/api/", b"/v2/x?q=/api/"),
    ("{prefix: /api}", "prefix_rewrite: /", b"/api", b"/"),
    ("{prefix: /API, case_sensitive: false}", "prefix_rewrite: /b", b"/api/x", b"/b/x"),
    ("{prefix: /}", "regex_rewrite: {pattern: '^/x/(.*)$', substitution: '/\\1/y'}", b"/x/abc?k=v", b"/abc/y?k=v"),
    ("{prefix: /}", "regex_rewrite: {pattern: 'o', substitution: '0'}", b"/foo/bo?o=o", b"/f00/b0?o=o"),
    ("{prefix: /}", "timeout: 0", b"/a?b", b"/a?b"),
])
def test_rewrites(match, action, path, rewritten):
    t = routes("- match: %s\n  route: {cluster: a, %s}" % (match, action))
    req = request(path)
    route = t.match(req)
    route.action.rewritePath(req)
    assert req.path == rewritten


@pytest.mark.parametrize("options, req, location", [
    ("scheme_redirect: https", request(b"/a?b=c", b"svc:80"), b"https://svc/a?b=c"),
    ("scheme_redirect: https", request(b"/a", b"svc:8080"), b"https://svc/a"),
    ("scheme_redirect: https, port_redirect: 8443", request(b"/a", b"svc"), b"https://svc:8443/a"),
    ("port_redirect: 443, scheme_redirect: https", request(b"/a", b"svc"), b"https://svc/a"),
    ("host_redirect: Other.svc", request(b"/a", b"svc:8080"), b"http://other.svc:8080/a"),
    ("port_redirect: 80", request(b"/a", b"svc:8080"), b"http://svc/a"),
    ("path_redirect: /new", request(b"/old/x?q=1", b"svc"), b"http://svc/new?q=1"),
    ('path_redirect: "/new?r=2"', request(b"/old/x?q=1", b"svc"), b"http://svc/new?r=2"),
    ("path_redirect: /new, strip_query: true", request(b"/old/x?q=1", b"svc"), b"http://svc/new"),
    ("prefix_rewrite: /new/", request(b"/old/x?q=1", b"svc"), b"http://svc/new/x?q=1"),
    ("{}", request(b"/old/x", b"[::1]:8080", scheme=b"https"), b"https://[::1]:8080/old/x"),
])
def test_redirects(options, req, location):
    if not options.startswith("{"):
        options = "{%s}" % (options,)
    prefix = "/old/" if "prefix_rewrite" in options else "/"
    route = routes("- match: {prefix: %s}\n  redirect: %s" % (prefix, options)).match(req)
    assert isinstance(route.action, RedirectAction)
    assert route.action.location(req) == location
    assert route.action.responseCode == 301


def test_redirectCode():
    route = routes("- {match: {prefix: /}, redirect: {response_code: 308}}").match(request())
    assert route.action.responseCode == 308


def test_directResponse():
    route = routes("- {match: {prefix: /}, direct_response: {status: 503, body: \"down\\n\"}}").match(request())
    assert route.action == DirectResponseAction(503, b"down\n")
    route = routes("- {match: {prefix: /}, direct_response: {status: 204}}").match(request())
    assert route.action == DirectResponseAction(204, b"")


def test_weightedPick():
    t = routes("""\
        - match: {prefix: /}
          route:
            weighted_clusters: [{name: a, weight: 90}, {name: b, weight: 0}, {name: c, weight: 10}]
            prefix_rewrite: /x/
    """)
    action = t.match(request()).action
    assert isinstance(action, WeightedClusterAction)
    assert action.clusters == (("a", 90), ("b", 0), ("c", 10))
    rng = random.Random(1234)
    counts = {"a": 0, "b": 0, "c": 0}
    for _ in range(10000):
        counts[action.pickCluster(rng)] += 1
    assert counts["b"] == 0
    assert 8800 <= counts["a"] <= 9200
    assert counts["a"] + counts["c"] == 10000
    req = request(b"/y")
    action.rewritePath(req)
    assert req.path == b"/x/y"


def test_weightedPickIsDeterministic():
    action = routes("- {match: {prefix: /}, route: {weighted_clusters: [{name: a, weight: 1}, {name: b, weight: 1}]}}"
                    ).match(request()).action
    first = [action.pickCluster(random.Random(7)) for _ in range(5)]
    assert len(set(first)) == 1
    rng = random.Random(7)
    picks = {action.pickCluster(rng) for _ in range(100)}
    assert picks == {"a", "b"}
