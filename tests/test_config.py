"""
Tests for txmesh.config: every validation error names file:line, the key path and the reason; the objects carry
the documented defaults; plugins are found through plugin_paths.

The filter and load-balancer plugins used here are fakes written to a temporary plugin directory (which also
proves third-party plugins load).  Fakes named like the built-ins (router, access_log, round_robin ...) only
stand in while the built-ins do not exist: the built-in plugin directory comes first and wins.
"""

import os
import textwrap
import uuid

import pytest
from twisted.plugin import getPlugins

import txmesh.plugins
from txmesh import config
from txmesh.config import (AdminConfig, ClusterConfig, ConfigError, EndpointConfig, H2Limits, ListenerLimits,
                           MeshConfig, load, loads)
from txmesh.interfaces import IFilterFactory, ILoadBalancerFactory

FAKE_PLUGINS = '''
from zope.interface import implementer
from twisted.plugin import IPlugin
from txmesh.errors import ConfigError
from txmesh.interfaces import IFilterFactory, ILoadBalancerFactory


@implementer(IPlugin, IFilterFactory)
class FakeFilterFactory:
    def __init__(self, name, kind="stream", protocols=("http",), terminal=False, bare=False):
        self.name = name
        self.kind = kind
        self.protocols = frozenset(protocols)
        self.terminal = terminal
        self.bare = bare

    def buildConfig(self, raw, context):
        if self.bare and raw:
            raise ConfigError("bare error", "deep.key")
        if "path" in raw and not isinstance(raw["path"], str):
            raise context.error("must be a string", "path")
        return (self.name, tuple(sorted(raw.items())), context.keyPath, context.clusterNames)

    def createFilters(self, config, callbacks, runtime):
        pass


@implementer(IPlugin, ILoadBalancerFactory)
class FakeLoadBalancerFactory:
    def __init__(self, name):
        self.name = name

    def create(self, hosts, random):
        return None


router = FakeFilterFactory("router", terminal=True)
accessLog = FakeFilterFactory("access_log")
headerMutation = FakeFilterFactory("header_mutation")
fakeLog = FakeFilterFactory("fake_log")
fakeBare = FakeFilterFactory("fake_bare", bare=True)
fakeNet = FakeFilterFactory("fake_net", kind="network")
fakeDubbo = FakeFilterFactory("fake_dubbo", protocols=("dubbo", "grpc"))
fakeTerminal = FakeFilterFactory("fake_terminal", terminal=True)
roundRobin = FakeLoadBalancerFactory("round_robin")
weighted = FakeLoadBalancerFactory("weighted_round_robin")
rand = FakeLoadBalancerFactory("random")
leastRequest = FakeLoadBalancerFactory("least_request")
fakeLB = FakeLoadBalancerFactory("fake_lb")
'''


def writePluginDir(parent, source=FAKE_PLUGINS):
    """A plugin directory holding ``source`` as a module with a unique name (modules are cached by name)."""
    d = parent / ("plugins_" + uuid.uuid4().hex[:8])
    d.mkdir()
    (d / ("txmesh_fake_%s.py" % (uuid.uuid4().hex[:12],))).write_text(source)
    return d


@pytest.fixture(scope="session")
def fakePluginDir(tmp_path_factory):
    return writePluginDir(tmp_path_factory.mktemp("fakeplugins"))


@pytest.fixture(autouse=True)
def fakePlugins(fakePluginDir):
    """Put the fake plugins on txmesh.plugins.__path__ for one test, and restore the path afterwards."""
    saved = list(txmesh.plugins.__path__)
    txmesh.plugins.__path__.append(str(fakePluginDir))
    yield fakePluginDir
    txmesh.plugins.__path__[:] = saved


def knownFilters():
    return ", ".join(sorted({p.name for p in getPlugins(IFilterFactory, txmesh.plugins)}))


def knownPolicies():
    return ", ".join(sorted({p.name for p in getPlugins(ILoadBalancerFactory, txmesh.plugins)}))


BASE = """\
clusters:
  - name: backend
    endpoints:
      - {address: "127.0.0.1:8080"}
listeners:
  - name: outbound
    address: tcp:15001:interface=127.0.0.1
    route_config:
      virtual_hosts:
        - name: all
          domains: ["*"]
          routes:
            - match: {prefix: /}
              route: {cluster: backend}
"""

ROUTES = "listeners[0].route_config.virtual_hosts[0].routes[0]"


def edit(*pairs, base=BASE):
    """BASE with each (old, new) replaced once (old must be present)."""
    text = base
    for old, new in pairs:
        assert old in text, old
        text = text.replace(old, new, 1)
    return text


def addToListener(line):
    """BASE with a line added to the listener after its address (line 8)."""
    return edit(("    address: tcp:15001:interface=127.0.0.1\n",
                 "    address: tcp:15001:interface=127.0.0.1\n" + line + "\n"))


def errorOf(text):
    with pytest.raises(ConfigError) as info:
        loads(text, filename="mesh.yaml")
    return str(info.value)


ERRORS = [
    # YAML, file structure
    ("syntax", "listeners: [a\nclusters: []\n",
     "mesh.yaml:2: invalid YAML: expected ',' or ']', but got ':'"),
    ("tab", "listeners:\n\t- a\n",
     "mesh.yaml:2: invalid YAML: found character '\\t' that cannot start any token"),
    ("empty", "", "mesh.yaml:1: the configuration is empty"),
    ("comment only", "# nothing\n", "mesh.yaml:1: the configuration is empty"),
    ("not a mapping", "- a\n", "mesh.yaml:1: must be a mapping, not a list"),
    ("duplicate key", edit(("    address: tcp:15001:interface=127.0.0.1\n",
                            "    address: tcp:15001:interface=127.0.0.1\n    name: again\n")),
     "mesh.yaml:8: listeners[0].name: duplicate key 'name'"),
    ("unknown top key", "bogus: 1\n" + BASE,
     "mesh.yaml:1: bogus: unknown key 'bogus' (allowed: node, plugin_paths, drain_timeout, admin, listeners, clusters, overload, registries, registration, workers, hot_restart, tracing, dynamic_resources)"),
    ("missing listeners", "clusters: []\n", "mesh.yaml:1: missing required key 'listeners'"),
    ("no listeners", "listeners: []\n", "mesh.yaml:1: listeners: must list at least one listener"),
    ("listeners not a list", "listeners: {a: 1}\n", "mesh.yaml:1: listeners: must be a list, not a mapping"),
    ("plugin_paths not a dir", "plugin_paths: [/nonexistent/dir]\n" + BASE,
     "mesh.yaml:1: plugin_paths[0]: not a directory: /nonexistent/dir"),
    ("drain_timeout", "drain_timeout: soon\n" + BASE,
     "mesh.yaml:1: drain_timeout: invalid duration 'soon' (use e.g. 250ms, 1.5s, 2m, 1h)"),
    ("admin unknown key", "admin: {adress: 'tcp:1'}\n" + BASE,
     "mesh.yaml:1: admin.adress: unknown key 'adress' (allowed: address, mode, auth)"),
    # listeners
    ("listener unknown key", addToListener("    use_remote_adress: true"),
     "mesh.yaml:8: listeners[0].use_remote_adress: unknown key 'use_remote_adress' (allowed: name, address, protocol,"
     " default_cluster, traffic_direction, use_remote_address, xff_num_trusted_hops, internal_address_config,"
     " limits, http2, network_filters, filters, route_config, respect_expected_rq_timeout, upgrade_configs,"
     " connection_balance, normalize_path,"
     " merge_slashes, path_with_escaped_slashes_action, path_parameters, tls, forward_client_cert_details,"
     " set_current_client_cert_details)"),
    ("listener missing address", edit(("    address: tcp:15001:interface=127.0.0.1\n", "")),
     "mesh.yaml:6: listeners[0]: missing required key 'address'"),
    ("listener name type", edit(("name: outbound", "name: [outbound]")),
     "mesh.yaml:6: listeners[0].name: must be a string, not a list"),
    ("listener name chars", edit(("name: outbound", "name: out bound")),
     "mesh.yaml:6: listeners[0].name: invalid name 'out bound' (use letters, digits, '_', '.', '-')"),
    ("use_remote_address type", addToListener("    use_remote_address: 'yes'"),
     "mesh.yaml:8: listeners[0].use_remote_address: must be a boolean, not a string"),
    ("protocol", addToListener("    protocol: smtp"),
     "mesh.yaml:8: listeners[0].protocol: unknown listener protocol 'smtp' (known: auto, dubbo, grpc, http1, http2)"),
    ("default_cluster", addToListener("    default_cluster: nope"),
     "mesh.yaml:8: listeners[0].default_cluster: unknown cluster 'nope' (known: backend)"),
    ("invalid endpoint type", edit(("tcp:15001:interface=127.0.0.1", "bogus:1")),
     "mesh.yaml:7: listeners[0].address: invalid endpoint 'bogus:1': Unknown endpoint type: 'bogus'"),
    ("invalid endpoint port", edit(("tcp:15001:interface=127.0.0.1", "tcp:99999")),
     "mesh.yaml:7: listeners[0].address: invalid endpoint 'tcp:99999': port must be between 0 and 65535"),
    ("invalid endpoint int", edit(("tcp:15001:interface=127.0.0.1", "tcp:http")),
     "mesh.yaml:7: listeners[0].address: invalid endpoint 'tcp:http': invalid literal for int() with base 10:"
     " 'http'"),
    ("invalid endpoint arg", edit(("tcp:15001:interface=127.0.0.1", "tcp:80:iface=x")),
     "mesh.yaml:7: listeners[0].address: invalid endpoint 'tcp:80:iface=x': _parseTCP() got an unexpected keyword"
     " argument 'iface'"),
    ("same address", BASE + "  - {name: second, address: 'tcp:15001:interface=127.0.0.1'}\n",
     "mesh.yaml:15: listeners[1].address: address 'tcp:15001:interface=127.0.0.1' conflicts with"
     " listeners[0].address ('tcp:15001:interface=127.0.0.1')"),
    ("wildcard address", BASE + "  - {name: second, address: 'tcp:port=15001'}\n",
     "mesh.yaml:15: listeners[1].address: address 'tcp:port=15001' conflicts with listeners[0].address"
     " ('tcp:15001:interface=127.0.0.1')"),
    ("admin address", "admin: {address: 'tcp:15001:interface=127.0.0.1'}\n" + BASE,
     "mesh.yaml:8: listeners[0].address: address 'tcp:15001:interface=127.0.0.1' conflicts with admin.address"
     " ('tcp:15001:interface=127.0.0.1')"),
    ("duplicate listener", BASE + "  - {name: outbound, address: 'tcp:15002'}\n",
     "mesh.yaml:15: listeners[1].name: duplicate listener name 'outbound' (also listeners[0])"),
    ("limits type", addToListener("    limits: {max_headers: 0}"),
     "mesh.yaml:8: listeners[0].limits.max_headers: must be >= 1, got 0"),
    ("limits unknown", addToListener("    limits: {max_body: 1}"),
     "mesh.yaml:8: listeners[0].limits.max_body: unknown key 'max_body' (allowed: max_request_line,"
     " max_header_bytes, max_headers, max_request_body, request_headers_timeout, idle_timeout, buffer_limit,"
     " stream_idle_timeout, max_connections, write_timeout, drain_grace)"),
    ("limits duration", addToListener("    limits:\n      idle_timeout: -5s"),
     "mesh.yaml:9: listeners[0].limits.idle_timeout: must be a duration >= 0, got -5s"),
    # http2 block
    ("http2 on http listener", addToListener("    http2: {max_concurrent_streams: 10}"),
     "mesh.yaml:8: listeners[0].http2: only listeners of protocol grpc or http2 take an http2 block (this one is"
     " 'http1')"),
    ("http2 unknown key", addToListener("    protocol: http2\n    http2: {max_streams: 10}"),
     "mesh.yaml:9: listeners[0].http2.max_streams: unknown key 'max_streams' (allowed: max_concurrent_streams,"
     " max_header_list_size, max_outbound_control_frames, max_consecutive_inbound_frames_with_empty_payload,"
     " max_inbound_priority_frames_per_stream, max_inbound_control_frames_per_second,"
     " max_inbound_window_update_frames_per_data_frame_sent, max_premature_resets, premature_reset_ratio, max_message_size)"),
    ("http2 not a mapping", addToListener("    protocol: grpc\n    http2: 10"),
     "mesh.yaml:9: listeners[0].http2: must be a mapping, not an integer"),
    ("http2 streams zero", addToListener("    protocol: grpc\n    http2:\n      max_concurrent_streams: 0"),
     "mesh.yaml:10: listeners[0].http2.max_concurrent_streams: must be between 1 and 2147483647, got 0"),
    ("http2 streams type", addToListener("    protocol: grpc\n    http2:\n      max_concurrent_streams: '5'"),
     "mesh.yaml:10: listeners[0].http2.max_concurrent_streams: must be an integer, not a string"),
    ("http2 header list", addToListener("    protocol: http2\n    http2: {max_header_list_size: 100}"),
     "mesh.yaml:9: listeners[0].http2.max_header_list_size: must be between 1024 and 8388608, got 100"),
    ("http2 ratio", addToListener("    protocol: http2\n    http2:\n      premature_reset_ratio: 1.5"),
     "mesh.yaml:10: listeners[0].http2.premature_reset_ratio: must be between 0 and 1, got 1.5"),
    ("http2 ratio type", addToListener("    protocol: http2\n    http2:\n      premature_reset_ratio: true"),
     "mesh.yaml:10: listeners[0].http2.premature_reset_ratio: must be a number, not a boolean"),
    ("http2 control frame rate", addToListener("    protocol: grpc\n    http2:\n"
                                               "      max_inbound_control_frames_per_second: 0"),
     "mesh.yaml:10: listeners[0].http2.max_inbound_control_frames_per_second: must be >= 1, got 0"),
    ("http2 control frame rate type", addToListener("    protocol: http2\n    http2:\n"
                                                    "      max_inbound_control_frames_per_second: 1.5"),
     "mesh.yaml:10: listeners[0].http2.max_inbound_control_frames_per_second: must be an integer, not a number"),
    ("http2 control frames", addToListener("    protocol: http2\n    http2: {max_outbound_control_frames: -1}"),
     "mesh.yaml:9: listeners[0].http2.max_outbound_control_frames: must be >= 1, got -1"),
    ("http2 message size on http2", addToListener("    protocol: http2\n    http2:\n      max_message_size: 10"),
     "mesh.yaml:10: listeners[0].http2.max_message_size: max_message_size bounds gRPC messages: only for protocol"
     " grpc"),
    ("grpc message size too big", addToListener("    protocol: grpc\n    http2: {max_message_size: 4294967296}"),
     "mesh.yaml:9: listeners[0].http2.max_message_size: must be between 0 and 4294967295, got 4294967296"),
    ("limits duration type", addToListener("    limits:\n      idle_timeout: [1]"),
     "mesh.yaml:9: listeners[0].limits.idle_timeout: must be a duration like 250ms, 1.5s, 2m, 1h, not a list"),
    # filters
    ("filter not a mapping", addToListener("    filters: [access_log]"),
     "mesh.yaml:8: listeners[0].filters[0]: must be a mapping, not a string"),
    ("filter missing name", addToListener("    filters: [{config: {}}]"),
     "mesh.yaml:8: listeners[0].filters[0]: missing required key 'name'"),
    ("filter unknown key", addToListener("    filters: [{name: fake_log, conf: {}}]"),
     "mesh.yaml:8: listeners[0].filters[0].conf: unknown key 'conf' (allowed: name, config)"),
    ("filter config type", addToListener("    filters:\n      - name: fake_log\n        config: [1]"),
     "mesh.yaml:10: listeners[0].filters[0].config: must be a mapping, not a list"),
    ("filter protocol", addToListener("    filters: [{name: fake_dubbo}]"),
     "mesh.yaml:8: listeners[0].filters[0].name: filter 'fake_dubbo' does not support protocol 'http1'"
     " (supports: dubbo, grpc)"),
    ("network filter in filters", addToListener("    filters: [{name: fake_net}]"),
     "mesh.yaml:8: listeners[0].filters[0].name: 'fake_net' is a network filter; list it under network_filters"),
    ("stream filter in network_filters", addToListener("    network_filters: [{name: fake_log}]"),
     "mesh.yaml:8: listeners[0].network_filters[0].name: 'fake_log' is a stream filter; list it under filters"),
    ("router not last", addToListener("    filters:\n      - name: router\n      - name: fake_log"),
     "mesh.yaml:9: listeners[0].filters[0].name: terminal filter 'router' must be the last filter"),
    ("filter config error", addToListener("    filters:\n      - name: fake_log\n        config:\n"
                                          "          path: 5"),
     "mesh.yaml:11: listeners[0].filters[0].config.path: must be a string"),
    ("bare filter config error", addToListener("    filters:\n      - name: fake_bare\n        config:\n"
                                               "          deep: {key: 1}"),
     "mesh.yaml:11: listeners[0].filters[0].config.deep.key: bare error"),
    # clusters
    ("cluster missing name", "clusters: [{}]\nlisteners: [{name: a, address: 'tcp:1'}]\n",
     "mesh.yaml:1: clusters[0]: missing required key 'name'"),
    ("duplicate cluster", edit(("clusters:\n", "clusters:\n  - name: backend\n")),
     "mesh.yaml:3: clusters[1].name: duplicate cluster name 'backend' (also clusters[0])"),
    ("cluster protocol", edit(("    endpoints:\n", "    protocol: h3\n    endpoints:\n")),
     "mesh.yaml:3: clusters[0].protocol: unknown cluster protocol 'h3' (known: dubbo, grpc, http1, http2)"),
    ("connect_timeout", edit(("    endpoints:\n", "    connect_timeout: 1sec\n    endpoints:\n")),
     "mesh.yaml:3: clusters[0].connect_timeout: invalid duration '1sec' (use e.g. 250ms, 1.5s, 2m, 1h)"),
    ("bool duration", edit(("    endpoints:\n", "    idle_timeout: true\n    endpoints:\n")),
     "mesh.yaml:3: clusters[0].idle_timeout: must be a duration like 250ms, 1.5s, 2m, 1h, not a boolean"),
    ("max_connections", edit(("    endpoints:\n", "    max_connections: 0\n    endpoints:\n")),
     "mesh.yaml:3: clusters[0].max_connections: must be >= 1, got 0"),
    ("int as bool", edit(("    endpoints:\n", "    max_pending_requests: yes\n    endpoints:\n")),
     "mesh.yaml:3: clusters[0].max_pending_requests: must be an integer, not a boolean"),
    ("endpoint port 0", edit(("127.0.0.1:8080", "127.0.0.1:0")),
     "mesh.yaml:4: clusters[0].endpoints[0].address: invalid port in '127.0.0.1:0' (must be 1..65535)"),
    ("endpoint port big", edit(("127.0.0.1:8080", "127.0.0.1:65536")),
     "mesh.yaml:4: clusters[0].endpoints[0].address: invalid port in '127.0.0.1:65536' (must be 1..65535)"),
    ("endpoint no port", edit(("127.0.0.1:8080", "127.0.0.1")),
     "mesh.yaml:4: clusters[0].endpoints[0].address: invalid address '127.0.0.1' (use host:port or [v6]:port)"),
    ("endpoint bare v6", edit(("127.0.0.1:8080", "::1:80")),
     "mesh.yaml:4: clusters[0].endpoints[0].address: invalid address '::1:80' (use host:port or [v6]:port)"),
    ("endpoint weight", edit(('"127.0.0.1:8080"}', '"127.0.0.1:8080", weight: 129}')),
     "mesh.yaml:4: clusters[0].endpoints[0].weight: must be between 1 and 128, got 129"),
    ("duplicate endpoint", edit(('      - {address: "127.0.0.1:8080"}\n',
                                 '      - {address: "127.0.0.1:8080"}\n      - {address: "127.0.0.1:8080"}\n')),
     "mesh.yaml:5: clusters[0].endpoints[1].address: duplicate endpoint '127.0.0.1:8080'"
     " (also clusters[0].endpoints[0])"),
    # routes
    ("unknown cluster", edit(("{cluster: backend}", "{cluster: backnd}")),
     "mesh.yaml:14: %s.route.cluster: unknown cluster 'backnd' (known: backend)" % (ROUTES,)),
    ("unknown weighted cluster", edit(("{cluster: backend}",
                                       "{weighted_clusters: [{name: backend, weight: 1}, {name: x, weight: 1}]}")),
     "mesh.yaml:14: %s.route.weighted_clusters[1].name: unknown cluster 'x' (known: backend)" % (ROUTES,)),
    ("zero weights", edit(("{cluster: backend}", "{weighted_clusters: [{name: backend, weight: 0}]}")),
     "mesh.yaml:14: %s.route.weighted_clusters: the weights must add up to more than 0" % (ROUTES,)),
    ("cluster and weighted", edit(("{cluster: backend}", "{cluster: backend, weighted_clusters: []}")),
     "mesh.yaml:14: %s.route: exactly one of cluster, weighted_clusters, dubbo_registry is required (got cluster,"
     " weighted_clusters)" % (ROUTES,)),
    ("no action", edit(("              route: {cluster: backend}\n", "")),
     "mesh.yaml:13: %s: exactly one of route, direct_response, redirect is required" % (ROUTES,)),
    ("two actions", edit(("{cluster: backend}", "{cluster: backend}\n              direct_response: {status: 200}")),
     "mesh.yaml:13: %s: exactly one of route, direct_response, redirect is required (got route,"
     " direct_response)" % (ROUTES,)),
    ("no match kind", edit(("{prefix: /}", "{methods: [GET]}")),
     "mesh.yaml:13: %s.match: exactly one of prefix, path, regex, connect_matcher is required" % (ROUTES,)),
    ("bad regex", edit(("{prefix: /}", "{regex: '/(a'}")),
     "mesh.yaml:13: %s.match.regex: invalid regex '/(a': missing ), unterminated subpattern at position 1"
     % (ROUTES,)),
    ("bad header regex", edit(("{prefix: /}", "{prefix: /, headers: [{name: x, regex: '['}]}")),
     "mesh.yaml:13: %s.match.headers[0].regex: invalid regex '[': unterminated character set at position 0"
     % (ROUTES,)),
    ("header match kinds", edit(("{prefix: /}", "{prefix: /, headers: [{name: x, exact: a, prefix: b}]}")),
     "mesh.yaml:13: %s.match.headers[0]: exactly one of exact, prefix, regex, present is required (got exact,"
     " prefix)" % (ROUTES,)),
    ("bad header name", edit(("{prefix: /}", "{prefix: /, headers: [{name: 'x y', present: true}]}")),
     "mesh.yaml:13: %s.match.headers[0].name: invalid header name 'x y'" % (ROUTES,)),
    ("bad regex_rewrite", edit(("{cluster: backend}", "{cluster: backend, regex_rewrite: {pattern: '*',"
                                                      " substitution: /}}")),
     "mesh.yaml:14: %s.route.regex_rewrite.pattern: invalid regex '*': nothing to repeat at position 0"
     % (ROUTES,)),
    ("prefix_rewrite with a space", edit(("{cluster: backend}", "{cluster: backend, prefix_rewrite: '/a b'}")),
     "mesh.yaml:14: %s.route.prefix_rewrite: invalid path part '/a b': no spaces, control characters or '#'"
     % (ROUTES,)),
    ("regex substitution with a fragment", edit(("{cluster: backend}", "{cluster: backend, regex_rewrite: {pattern:"
                                                                        " x, substitution: '/y#z'}}")),
     "mesh.yaml:14: %s.route.regex_rewrite.substitution: invalid path part '/y#z': no spaces, control characters"
     " or '#'" % (ROUTES,)),
    ("host_rewrite not an authority", edit(("{cluster: backend}", "{cluster: backend, host_rewrite: 'a b'}")),
     "mesh.yaml:14: %s.route.host_rewrite: invalid host_rewrite 'a b': not host[:port]" % (ROUTES,)),
    ("prefix_rewrite without prefix", edit(("{prefix: /}", "{path: /a}"),
                                           ("{cluster: backend}", "{cluster: backend, prefix_rewrite: /b}")),
     "mesh.yaml:14: %s.route.prefix_rewrite: prefix_rewrite needs match.prefix" % (ROUTES,)),
    ("route timeout", edit(("{cluster: backend}", "{cluster: backend, timeout: 1d}")),
     "mesh.yaml:14: %s.route.timeout: invalid duration '1d' (use e.g. 250ms, 1.5s, 2m, 1h)" % (ROUTES,)),
    ("route max_stream_duration", edit(("{cluster: backend}", "{cluster: backend, max_stream_duration: -1s}")),
     "mesh.yaml:14: %s.route.max_stream_duration: must be a duration >= 0, got -1s" % (ROUTES,)),
    ("stream idle timeout", addToListener("    limits:\n      stream_idle_timeout: forever"),
     "mesh.yaml:9: listeners[0].limits.stream_idle_timeout: invalid duration 'forever' (use e.g. 250ms, 1.5s, 2m,"
     " 1h)"),
    ("respect expected timeout", addToListener("    respect_expected_rq_timeout: 1"),
     "mesh.yaml:8: listeners[0].respect_expected_rq_timeout: must be a boolean, not an integer"),
    ("direct status", edit(("route: {cluster: backend}", "direct_response: {status: 99}")),
     "mesh.yaml:14: %s.direct_response.status: must be between 200 and 599, got 99" % (ROUTES,)),
    ("redirect code", edit(("route: {cluster: backend}", "redirect: {response_code: 300}")),
     "mesh.yaml:14: %s.redirect.response_code: must be one of 301, 302, 303, 307, 308, got 300" % (ROUTES,)),
    ("redirect port", edit(("route: {cluster: backend}", "redirect: {port_redirect: 0}")),
     "mesh.yaml:14: %s.redirect.port_redirect: must be between 1 and 65535, got 0" % (ROUTES,)),
    ("header value CRLF", edit(("{cluster: backend}", "{cluster: backend}\n              request_headers_to_add:"
                                                      " [{name: x, value: \"a\\r\\nb\"}]")),
     "mesh.yaml:15: %s.request_headers_to_add[0].value: header value must not contain CR, LF or NUL" % (ROUTES,)),
    ("duplicate domain", BASE + '        - {name: other, domains: [a, "*"]}\n',
     "mesh.yaml:15: listeners[0].route_config.virtual_hosts[1].domains[1]: domain '*' is already in virtual host"
     " 'all'"),
    ("duplicate vhost", BASE + '        - {name: all, domains: [a]}\n',
     "mesh.yaml:15: listeners[0].route_config.virtual_hosts[1].name: duplicate virtual host name 'all'"
     " (also listeners[0].route_config.virtual_hosts[0])"),
    ("bad domain", edit(('["*"]', '["a.*.b"]')),
     "mesh.yaml:11: listeners[0].route_config.virtual_hosts[0].domains[0]: invalid domain 'a.*.b'"
     " (use name, *.suffix, prefix.* or *)"),
    ("vhost unknown key", edit(("          routes:\n", "          route:\n")),
     "mesh.yaml:12: listeners[0].route_config.virtual_hosts[0].route: unknown key 'route' (allowed: name, domains,"
     " routes, request_headers_to_add, request_headers_to_remove, response_headers_to_add,"
     " response_headers_to_remove, retry_policy, include_request_attempt_count)"),
]


@pytest.mark.parametrize("text, expected", [c[1:] for c in ERRORS], ids=[c[0] for c in ERRORS])
def test_errors(text, expected):
    assert errorOf(text) == expected


def test_unknownFilter():
    text = addToListener("    filters:\n      - name: fake_log\n      - name: acces_log")
    assert errorOf(text) == ("mesh.yaml:10: listeners[0].filters[1].name: unknown filter 'acces_log' (known: %s)"
                             % (knownFilters(),))
    assert "access_log" in knownFilters() and "router" in knownFilters()


def test_unknownLbPolicy():
    text = edit(("    endpoints:\n", "    lb_policy: round_robbin\n    endpoints:\n"))
    assert errorOf(text) == ("mesh.yaml:3: clusters[0].lb_policy: unknown lb_policy 'round_robbin' (known: %s)"
                             % (knownPolicies(),))


def test_routerPluginMissing(monkeypatch):
    real = config._plugins
    monkeypatch.setattr(config, "_plugins", lambda i: {k: v for k, v in real(i).items() if k != "router"})
    assert errorOf(BASE) == "mesh.yaml:6: listeners[0].filters: no 'router' filter plugin found to end the filter chain"


def test_errorFields():
    """The ConfigError carries its parts separately, for tools."""
    with pytest.raises(ConfigError) as info:
        loads(edit(("{cluster: backend}", "{cluster: nope}")), filename="x.yaml")
    e = info.value
    assert (e.filename, e.line, e.path) == ("x.yaml", 14, ROUTES + ".route.cluster")
    assert e.reason == "unknown cluster 'nope' (known: backend)"


def test_defaults():
    """A minimal file gives the documented defaults."""
    mesh = loads(BASE)
    assert isinstance(mesh, MeshConfig)
    assert mesh.filename == "<string>"
    assert mesh.admin == AdminConfig("tcp:9901:interface=127.0.0.1")
    assert mesh.drainTimeout == 15.0
    assert mesh.pluginPaths == ()
    (listener,) = mesh.listeners
    assert (listener.name, listener.protocol, listener.address) == ("outbound", "http1",
                                                                      "tcp:15001:interface=127.0.0.1")
    assert listener.useRemoteAddress is True
    assert listener.defaultCluster is None
    assert listener.limits == ListenerLimits(8192, 65536, 100, 0, 10.0, 300.0, 1048576)
    assert listener.networkFilters == ()
    assert [f.name for f in listener.filters] == ["router"]
    assert listener.filters[0].factory.terminal
    cluster = mesh.cluster("backend")
    assert cluster == ClusterConfig("backend", "http1", "round_robin", cluster.lbFactory, 1.0, 60.0, 1024, 1024, 0,
                                    (EndpointConfig("127.0.0.1", 8080, 1),))
    assert cluster.lbFactory.name == "round_robin"
    assert mesh.raw["clusters"][0]["name"] == "backend"
    with pytest.raises(KeyError):
        mesh.cluster("nope")


def test_fullListener():
    text = addToListener(textwrap.indent(textwrap.dedent("""\
        protocol: http
        default_cluster: backend
        use_remote_address: false
        limits: {max_request_line: 1, max_header_bytes: 2, max_headers: 3, max_request_body: 4,
                 request_headers_timeout: 5ms, idle_timeout: 6m, buffer_limit: 7}
        network_filters: [{name: fake_net, config: {a: 1}}]
        filters:
          - name: fake_log
            config: {path: "-"}
          - name: router"""), "    "))
    listener = loads(text).listeners[0]
    assert listener.defaultCluster == "backend"
    assert listener.useRemoteAddress is False
    assert listener.limits == ListenerLimits(1, 2, 3, 4, 0.005, 360.0, 7)
    assert [f.name for f in listener.networkFilters] == ["fake_net"]
    assert [f.name for f in listener.filters] == ["fake_log", "router"]
    assert listener.filters[0].config == ("fake_log", (("path", "-"),), "listeners[0].filters[0].config",
                                          frozenset({"backend"}))


def test_http2Defaults():
    """http2/grpc listeners get the default H2Limits; other listeners none."""
    assert loads(BASE).listeners[0].http2 is None
    for protocol in ("http2", "grpc"):
        listener = loads(addToListener("    protocol: %s" % (protocol,))).listeners[0]
        assert listener.http2 == H2Limits()
        assert (listener.http2.maxConcurrentStreams, listener.http2.maxHeaderListSize) == (100, 65536)


def test_http2Block():
    text = addToListener(textwrap.indent(textwrap.dedent("""\
        protocol: grpc
        http2:
          max_concurrent_streams: 7
          max_header_list_size: 2048
          max_outbound_control_frames: 50
          max_consecutive_inbound_frames_with_empty_payload: 0
          max_inbound_priority_frames_per_stream: 3
          max_inbound_window_update_frames_per_data_frame_sent: 4
          max_premature_resets: 5
          premature_reset_ratio: 1
          max_message_size: 0"""), "    "))
    assert loads(text).listeners[0].http2 == H2Limits(
        maxConcurrentStreams=7, maxPrematureResets=5, prematureResetRatio=1.0, maxPendingControlFrames=50,
        maxInboundPriorityPerStream=3, maxInboundWindowUpdatePerData=4, maxConsecutiveEmptyData=0,
        maxHeaderListSize=2048, maxMessageSize=0)


def test_customTerminalNotFollowedByRouter():
    listener = loads(addToListener("    filters: [{name: fake_terminal}]")).listeners[0]
    assert [f.name for f in listener.filters] == ["fake_terminal"]


def test_routerAppendedAfterFilters():
    listener = loads(addToListener("    filters: [{name: fake_log}]")).listeners[0]
    assert [f.name for f in listener.filters] == ["fake_log", "router"]


@pytest.mark.parametrize("value, seconds", [
    ("250ms", 0.25), ("1.5s", 1.5), ("2m", 120.0), ("1h", 3600.0), ("3", 3.0), ("0", 0.0), (".5s", 0.5),
    ("7", 7.0), ("0.25", 0.25), ("'10'", 10.0), ("0ms", 0.0)])
def test_durations(value, seconds):
    mesh = loads("drain_timeout: %s\n" % (value,) + edit(("    endpoints:\n", "    connect_timeout: %s\n"
                                                                                "    endpoints:\n" % (value,))))
    assert mesh.drainTimeout == seconds
    assert mesh.clusters[0].connectTimeout == seconds


CLUSTER_OPTIONS = """\
clusters:
  - name: backend
    protocol: http1
    lb_policy: fake_lb
    connect_timeout: 2s
    idle_timeout: 30s
    max_connections: 10
    max_pending_requests: 0
    max_requests_per_connection: 100
    endpoints:
      - {address: "[::1]:8081", weight: 128}
      - {address: "backend.local:80"}
listeners: [{name: a, address: "tcp:0"}]
"""


def test_clusterOptions():
    c = loads(CLUSTER_OPTIONS).clusters[0]
    assert (c.lbPolicy, c.lbFactory.name, c.connectTimeout, c.idleTimeout) == ("fake_lb", "fake_lb", 2.0, 30.0)
    assert (c.maxConnections, c.maxPendingRequests, c.maxRequestsPerConnection) == (10, 0, 100)
    assert c.endpoints == (EndpointConfig("::1", 8081, 128), EndpointConfig("backend.local", 80, 1))


@pytest.mark.parametrize("address", ["tcp:15001:interface=127.0.0.2", "tcp:15002", "tcp:0", "unix:/tmp/a.sock",
                                     "tcp6:15001:interface=\\:\\:1"])
def test_distinctAddresses(address):
    text = BASE + "  - {name: second, address: '%s'}\n" % (address,)
    assert loads(text).listeners[1].address == address


def test_twoEphemeralPorts():
    text = edit(("tcp:15001:interface=127.0.0.1", "tcp:0")) + "  - {name: second, address: 'tcp:0'}\n"
    assert len(loads(text).listeners) == 2


def test_sameUnixSocket():
    text = edit(("tcp:15001:interface=127.0.0.1", "unix:/tmp/a.sock")) + "  - {name: b, address: 'unix:/tmp/a.sock'}\n"
    assert errorOf(text) == ("mesh.yaml:15: listeners[1].address: address 'unix:/tmp/a.sock' conflicts with"
                             " listeners[0].address ('unix:/tmp/a.sock')")


def test_pluginFromPluginPaths(tmp_path):
    """A third-party filter in a plugin_paths directory is found, and its buildConfig errors name the key path."""
    source = FAKE_PLUGINS.split("router = ")[0] + "thirdParty = FakeFilterFactory('third_party')\n"
    pluginDir = writePluginDir(tmp_path, source)
    before = list(txmesh.plugins.__path__)
    header = "plugin_paths: ['%s']\n" % (pluginDir,)
    text = header + addToListener("    filters:\n      - name: third_party\n        config: {path: [1]}")
    assert errorOf(text) == "mesh.yaml:11: listeners[0].filters[0].config.path: must be a string"
    mesh = loads(text.replace("{path: [1]}", "{path: /x}"))
    assert [f.name for f in mesh.listeners[0].filters] == ["third_party", "router"]
    assert mesh.pluginPaths == (str(pluginDir),)
    # Loading again does not add the directory twice.
    loads(text.replace("{path: [1]}", "{path: /x}"))
    assert txmesh.plugins.__path__ == before + [str(pluginDir)]


def test_relativePluginPath(tmp_path):
    """Relative plugin_paths are relative to the configuration file."""
    pluginDir = writePluginDir(tmp_path)
    path = tmp_path / "mesh.yaml"
    path.write_text("plugin_paths: [%s]\n" % (pluginDir.name,) + BASE)
    mesh = load(path)
    assert mesh.pluginPaths == (str(pluginDir),)
    assert mesh.filename == str(path)


def test_loadMissingFile(tmp_path):
    path = str(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError) as info:
        load(path)
    assert str(info.value) == "%s: cannot read configuration: [Errno 2] No such file or directory: '%s'" % (path, path)


def test_filterContextError():
    """FilterConfigContext.error names the sub-path and its line."""
    ctx = config.FilterConfigContext("m.yaml", "listeners[0].filters[1].config", "http", frozenset(),
                                     {"listeners[0].filters[1].config.path": 7}.get)
    assert str(ctx.error("must be a string", "path")) == ("m.yaml:7: listeners[0].filters[1].config.path:"
                                                         " must be a string")
    assert ctx.error("bad").path == "listeners[0].filters[1].config"


def test_anchorsAndMergeKeys():
    text = edit(("    endpoints:\n", "    connect_timeout: &t 3s\n    idle_timeout: *t\n    endpoints:\n"))
    c = loads(text).clusters[0]
    assert (c.connectTimeout, c.idleTimeout) == (3.0, 3.0)
    merged = loads("clusters:\n  - &c {name: a, connect_timeout: 3s}\n  - {<<: *c, name: b}\n"
                   "listeners: [{name: l, address: 'tcp:0'}]\n")
    assert [(c.name, c.connectTimeout) for c in merged.clusters] == [("a", 3.0), ("b", 3.0)]


@pytest.mark.parametrize("protocol, timeout", [("http1", 15.0), ("http2", 15.0), ("grpc", 0.0)])
def test_route_timeout_defaults_to_none_on_grpc_listeners(protocol, timeout):
    """gRPC streams live on grpc-timeout and stream_idle_timeout (Envoy's advice); docs/configuration.md."""
    mesh = loads(addToListener("    protocol: %s" % (protocol,)))
    [listener] = mesh.listeners
    assert listener.routeConfig.virtualHosts[0].routes[0].action.timeout == timeout
    assert listener.limits.streamIdleTimeout == 300.0 and listener.respectExpectedTimeout is True
