"""
mesh.yaml keys of protocol detection (txmesh.detect_config): ``protocol: auto`` listeners with a ``detect`` map
naming ``address: internal`` listeners; every error names file, line and key path.
"""

import pytest

from txmesh.config import loads
from txmesh.detect_config import INTERNAL, DetectConfig
from txmesh.errors import ConfigError

GOOD = """\
listeners:
  - name: edge
    protocol: auto
    address: tcp:0:interface=127.0.0.1
    detect:
      http1: web
      http2: rpc
      dubbo: dub
  - name: web
    address: internal
    default_cluster: app
  - name: rpc
    protocol: grpc
    address: internal
    default_cluster: app
  - name: dub
    protocol: dubbo
    address: internal
    default_cluster: app
clusters:
  - name: app
    endpoints: [{address: "127.0.0.1:1"}]
"""


def errorOf(text):
    with pytest.raises(ConfigError) as info:
        loads(text, filename="mesh.yaml")
    return str(info.value)


def test_good_config_and_defaults():
    config = loads(GOOD, filename="mesh.yaml")
    edge, web, rpc, dub = config.listeners
    assert edge.protocol == "auto" and edge.descriptor.name == "auto"
    assert edge.detect == DetectConfig((("http1", "web"), ("http2", "rpc"), ("dubbo", "dub")), 5.0, 64)
    assert edge.limits.maxConnections == 0 and edge.filters == () and edge.networkFilters == ()
    assert web.address == rpc.address == dub.address == INTERNAL
    assert web.detect is None and web.defaultCluster == "app"


def test_timeout_bytes_and_limit():
    text = GOOD.replace("      dubbo: dub\n", "      dubbo: dub\n    detection_timeout: 250ms\n"
                        "    detection_max_bytes: 128\n    limits: {max_connections: 10}\n")
    edge = loads(text).listeners[0]
    assert edge.detect.timeout == 0.25 and edge.detect.maxBytes == 128 and edge.limits.maxConnections == 10


def test_a_subset_of_targets():
    text = GOOD.replace("      http2: rpc\n      dubbo: dub\n", "").split("  - name: rpc")[0] + \
        GOOD.split("clusters:")[1].join(["clusters:", ""])
    edge = loads(text).listeners[0]
    assert edge.detect.targets == (("http1", "web"),)


def edit(*pairs):
    text = GOOD
    for old, new in pairs:
        assert old in text, old
        text = text.replace(old, new, 1)
    return text


ERRORS = [
    ("routes on auto", edit(("      dubbo: dub\n", "      dubbo: dub\n    route_config: {}\n")),
     "mesh.yaml:9: listeners[0].route_config: an auto listener takes only name, address, protocol, detect, "
     "detection_timeout, detection_max_bytes, limits, tls; 'route_config' belongs on the listeners its detect map names"),
    ("no detect", edit(("    detect:\n      http1: web\n      http2: rpc\n      dubbo: dub\n", "")),
     "mesh.yaml:2: listeners[0]: missing required key 'detect' (protocol: listener name, for http1, http2, dubbo)"),
    ("empty detect", edit(("    detect:\n      http1: web\n      http2: rpc\n      dubbo: dub\n",
                           "    detect: {}\n")),
     "mesh.yaml:5: listeners[0].detect: must name at least one listener (keys: http1, http2, dubbo)"),
    ("grpc key", edit(("      http2: rpc\n", "      grpc: rpc\n")),
     "mesh.yaml:7: listeners[0].detect.grpc: unknown key 'grpc' (allowed: http1, http2, dubbo)"),
    ("unknown target", edit(("      http1: web\n", "      http1: webb\n")),
     "mesh.yaml:6: listeners[0].detect.http1: unknown listener 'webb' (listeners: dub, edge, rpc, web)"),
    ("bound target", edit(("    address: internal\n    default_cluster: app\n  - name: rpc",
                           "    address: tcp:0\n    default_cluster: app\n  - name: rpc")),
     "mesh.yaml:6: listeners[0].detect.http1: listener 'web' must be declared with address: internal to be "
     "handed connections"),
    ("wrong protocol", edit(("      http1: web\n", "      http1: dub\n")),
     "mesh.yaml:6: listeners[0].detect.http1: listener 'dub' speaks dubbo; http1 connections need a listener of "
     "protocol http1"),
    ("h2 to http1", edit(("      http2: rpc\n", "      http2: web\n"), ("      http1: web\n", "")),
     "mesh.yaml:6: listeners[0].detect.http2: listener 'web' speaks http1; http2 connections need a listener of "
     "protocol http2 or grpc"),
    ("orphan internal", edit(("      dubbo: dub\n", "")),
     "mesh.yaml:17: listeners[3].address: listener 'dub' is internal but no auto listener's detect map names it"),
    ("auto internal", edit(("    address: tcp:0:interface=127.0.0.1\n", "    address: internal\n")),
     "mesh.yaml:4: listeners[0].address: an auto listener must listen on an address of its own"),
    ("timeout 0", edit(("      dubbo: dub\n", "      dubbo: dub\n    detection_timeout: 0s\n")),
     "mesh.yaml:9: listeners[0].detection_timeout: must be above 0 and at most 1h"),
    ("few bytes", edit(("      dubbo: dub\n", "      dubbo: dub\n    detection_max_bytes: 10\n")),
     "mesh.yaml:9: listeners[0].detection_max_bytes: must be between 24 and 65536, got 10"),
    ("auto limits", edit(("      dubbo: dub\n", "      dubbo: dub\n    limits: {idle_timeout: 1s}\n")),
     "mesh.yaml:9: listeners[0].limits.idle_timeout: unknown key 'idle_timeout' (allowed: max_connections)"),
    ("auto cluster", edit(("    protocol: dubbo\n    address: internal",
                           "    protocol: dubbo\n    address: internal")).replace(
        "clusters:\n  - name: app\n", "clusters:\n  - name: app\n    protocol: auto\n"),
     "mesh.yaml:22: clusters[0].protocol: unknown cluster protocol 'auto' (known: dubbo, grpc, http1, http2)"),
]


@pytest.mark.parametrize("text, expected", [c[1:] for c in ERRORS], ids=[c[0] for c in ERRORS])
def test_errors(text, expected):
    assert errorOf(text) == expected


def test_a_registration_cannot_name_an_internal_listener():
    text = GOOD + """registries:
  - {name: zk, type: zookeeper, hosts: "127.0.0.1:2181"}
registration:
  listener: dub
  publish: [{registry: zk, services: [{interface: a.B}]}]
"""
    assert "registration.listener: listener 'dub' is internal: name the auto listener callers connect to" \
        in errorOf(text)


def test_schema_takes_the_auto_listener_and_refuses_a_typo():
    import json
    from importlib import resources

    import jsonschema
    import yaml

    schema = json.loads(resources.files("txmesh").joinpath("mesh.schema.json").read_text())
    validator = jsonschema.Draft202012Validator(schema)
    raw = yaml.safe_load(GOOD.replace("      dubbo: dub\n", "      dubbo: dub\n    detection_timeout: 2s\n"
                                      "    detection_max_bytes: 32\n"))
    validator.validate(raw)
    raw["listeners"][0]["detect"]["grpc"] = "rpc"
    with pytest.raises(jsonschema.ValidationError):
        validator.validate(raw)
