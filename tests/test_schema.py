"""
Tests for txmesh/mesh.schema.json (the editors' JSON Schema): it is a valid draft 2020-12 schema shipped with the
package, the example etc/mesh.yaml validates against it and loads, and it rejects what the loader rejects where
a schema can tell.
"""

import json
import os
from importlib import resources

import jsonschema
import pytest
import yaml

from tests.test_config import BASE, CLUSTER_OPTIONS, fakePluginDir, fakePlugins  # noqa: F401 (fixtures)
from txmesh.config import load, loads
from txmesh.errors import ConfigError

EXAMPLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "etc", "mesh.yaml")
PAIR = [os.path.join(os.path.dirname(EXAMPLE), name) for name in ("outbound.yaml", "inbound.yaml")]


@pytest.fixture(scope="module")
def validator():
    schema = json.loads(resources.files("txmesh").joinpath("mesh.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_exampleValidates(validator):
    with open(EXAMPLE) as f:
        validator.validate(yaml.safe_load(f))


@pytest.mark.parametrize("path", PAIR, ids=os.path.basename)
def test_pairExamplesValidateAndLoad(validator, path):
    """etc/outbound.yaml and etc/inbound.yaml (the sidecar pair): one listener per protocol each."""
    with open(path) as f:
        validator.validate(yaml.safe_load(f))
    assert sorted(l.protocol for l in load(path).listeners) == ["dubbo", "grpc", "http1"]


def test_exampleLoads():
    mesh = load(EXAMPLE)
    assert [(l.name, l.protocol) for l in mesh.listeners] == [
        ("outbound", "http1"), ("inbound", "http1"), ("grpc", "grpc"), ("dubbo", "dubbo")]
    outbound, inbound, grpcListener, dubboListener = mesh.listeners
    assert grpcListener.address == "tcp:15002:interface=127.0.0.1"
    assert dubboListener.address == "tcp:15003:interface=127.0.0.1"
    assert [(c.name, c.protocol) for c in mesh.clusters if c.name in ("grpc_echo", "dubbo_provider")] == [
        ("grpc_echo", "grpc"), ("dubbo_provider", "dubbo")]
    assert outbound.address == "tcp:15001:interface=127.0.0.1"
    assert inbound.address == "tcp:15006:interface=127.0.0.1"
    assert mesh.admin.address == "tcp:9901:interface=127.0.0.1"
    assert [f.name for f in outbound.filters] == ["access_log", "router"]
    assert [f.name for f in inbound.filters] == ["access_log", "router"]
    assert [(e.host, e.port) for e in mesh.cluster("demo").endpoints] == [("127.0.0.1", 18081), ("127.0.0.1", 18082)]
    assert [(e.host, e.port) for e in mesh.cluster("local_app").endpoints] == [("127.0.0.1", 18080)]
    assert outbound.routeConfig.virtualHostFor(b"demo.svc:15001").name == "demo"
    assert inbound.routeConfig.virtualHostFor(b"anything").name == "local_app"


@pytest.mark.parametrize("text", [BASE, CLUSTER_OPTIONS])
def test_testConfigsValidate(validator, text):
    validator.validate(yaml.safe_load(text))


@pytest.mark.parametrize("old, new", [
    ("    address: tcp:15001", "    adress: tcp:15001"),
    ("{prefix: /}", "{prefix: /, path: /a}"),
    ("{prefix: /}", "{methods: [GET]}"),
    ("route: {cluster: backend}", "route: {cluster: backend, timeout: 1d}"),
    ("route: {cluster: backend}", "redirect: {response_code: 300}"),
    ('"127.0.0.1:8080"}', '"127.0.0.1:8080", weight: 0}'),
    ('"127.0.0.1:8080"', '"127.0.0.1"'),
    ('domains: ["*"]', 'domains: ["a.*.b"]'),
    ("name: outbound", "name: out bound"),
])
def test_schemaRejects(validator, old, new):
    assert old in BASE
    with pytest.raises(jsonschema.ValidationError):
        validator.validate(yaml.safe_load(BASE.replace(old, new, 1)))


def _listener(extra):
    return BASE.replace("    address: tcp:15001:interface=127.0.0.1\n",
                        "    address: tcp:15001:interface=127.0.0.1\n" + extra, 1)


@pytest.mark.parametrize("extra", [
    "    respect_expected_rq_timeout: false\n    limits: {stream_idle_timeout: 30s}\n",
    "    limits: {stream_idle_timeout: 0}\n",
])
def test_timeBoundsValidate(validator, extra):
    validator.validate(yaml.safe_load(_listener(extra)))
    loads(_listener(extra))


def test_routeMaxStreamDuration(validator):
    text = BASE.replace("route: {cluster: backend}", "route: {cluster: backend, max_stream_duration: 1h}", 1)
    validator.validate(yaml.safe_load(text))
    assert loads(text).listeners[0].routeConfig.virtualHosts[0].routes[0].action.maxStreamDuration == 3600.0
    bad = BASE.replace("route: {cluster: backend}", "route: {cluster: backend, max_stream_duration: forever}", 1)
    with pytest.raises(jsonschema.ValidationError):
        validator.validate(yaml.safe_load(bad))


@pytest.mark.parametrize("extra", [
    "    protocol: grpc\n    http2: {max_concurrent_streams: 10, premature_reset_ratio: 0.25, max_message_size: 0}\n",
    "    protocol: http2\n    http2: {max_header_list_size: 2048}\n",
])
def test_http2BlockValidates(validator, extra):
    validator.validate(yaml.safe_load(_listener(extra)))
    assert loads(_listener(extra)).listeners[0].http2 is not None


@pytest.mark.parametrize("extra", [
    "    http2: {max_concurrent_streams: 10}\n",  # an http listener
    "    protocol: dubbo\n    http2: {}\n",
    "    protocol: http2\n    http2: {max_message_size: 10}\n",  # grpc only
    "    protocol: grpc\n    http2: {max_concurrent_streams: 0}\n",
    "    protocol: grpc\n    http2: {max_streams: 10}\n",
    "    protocol: grpc\n    http2: {premature_reset_ratio: 2}\n",
])
def test_http2BlockRejected(validator, extra):
    with pytest.raises(jsonschema.ValidationError):
        validator.validate(yaml.safe_load(_listener(extra)))


@pytest.mark.parametrize("extra", [
    "    network_filters:\n      - {name: connection_limit, config: {max_connections: 10, delay: 100ms}}\n",
    "    network_filters:\n      - {name: source_ip, config: {allow: [10.0.0.0/8, '::1'], deny: ['2001:db8::/32']}}\n",
    "    network_filters:\n      - {name: source_ip, config: {deny: [192.0.2.1]}}\n      - {name: third_party}\n",
])
def test_networkFiltersValidate(validator, extra):
    validator.validate(yaml.safe_load(_listener(extra)))


@pytest.mark.parametrize("extra", [
    "    network_filters:\n      - {name: connection_limit}\n",
    "    network_filters:\n      - {name: connection_limit, config: {max_connections: 0}}\n",
    "    network_filters:\n      - {name: connection_limit, config: {max_connections: 1, delay: soon}}\n",
    "    network_filters:\n      - {name: connection_limit, config: {max_connections: 1, burst: 2}}\n",
    "    network_filters:\n      - {name: source_ip, config: {}}\n",
    "    network_filters:\n      - {name: source_ip, config: {allow: []}}\n",
    "    network_filters:\n      - {name: source_ip, config: {allow: [not-an-ip]}}\n",
    "    network_filters:\n      - {name: source_ip, config: {allow: [10.0.0.0/8], permit: []}}\n",
    "    respect_expected_rq_timeout: maybe\n",
    "    limits: {stream_idle_timeout: -1s}\n",
    "    limits: {stream_idle_timeout: soon}\n",
])
def test_listenerKeysRejected(validator, extra):
    assertBothReject(validator, _listener(extra))


def assertBothReject(validator, text):
    """Both the schema and the loader refuse ``text``."""
    with pytest.raises(jsonschema.ValidationError):
        validator.validate(yaml.safe_load(text))
    with pytest.raises(ConfigError):
        loads(text)


@pytest.mark.parametrize("extra", [
    "    traffic_direction: inbound\n",
    "    traffic_direction: outbound\n    use_remote_address: true\n    xff_num_trusted_hops: 2\n",
    "    internal_address_config: {cidr_ranges: [10.0.0.0/8, 'fd00::/8']}\n",
])
def test_forwardingKeysValidate(validator, extra):
    validator.validate(yaml.safe_load(_listener(extra)))
    loads(_listener(extra))


@pytest.mark.parametrize("extra", [
    "    traffic_direction: sideways\n",
    "    xff_num_trusted_hops: -1\n",
    "    internal_address_config: {cidr_ranges: [not-an-ip]}\n",
    "    internal_address_config: {ranges: []}\n",
])
def test_forwardingKeysRejected(validator, extra):
    assertBothReject(validator, _listener(extra))


def test_nodeValidates(validator):
    text = "node: {id: sidecar-a, cluster: shop}\n" + BASE
    validator.validate(yaml.safe_load(text))
    assert loads(text).node.id == "sidecar-a"
    assertBothReject(validator, "node: {id: ''}\n" + BASE)


@pytest.mark.parametrize("text", [
    "overload: {max_connections: 1000, memory_high_watermark: 2000000000, memory_check_interval: 500ms}\n" + BASE,
    "overload:\n  memory_high_watermark: 2000\n  memory_low_watermark: 1000\n" + BASE,
    _listener("    limits: {max_connections: 100, write_timeout: 30s}\n"),
])
def test_overloadKeysValidate(validator, text):
    validator.validate(yaml.safe_load(text))
    loads(text)


@pytest.mark.parametrize("text", [
    "overload: {max_connections: -1}\n" + BASE,
    "overload: {memory_high_watermark: lots}\n" + BASE,
    "overload: {memory_check_interval: soon}\n" + BASE,
    "overload: {max_conns: 1}\n" + BASE,
    _listener("    limits: {max_connections: -1}\n"),
    _listener("    limits: {write_timeout: -1s}\n"),
])
def test_overloadKeysRejected(validator, text):
    assertBothReject(validator, text)
