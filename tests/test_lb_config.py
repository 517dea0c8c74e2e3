"""lb_config and hash_policy in mesh.yaml: the built objects, the defaults, and one-line errors for bad values."""

import pytest

from txmesh.config import ConfigError, LbConfig, SlowStartConfig, loads
from txmesh.routing import HashPolicy

MESH = """\
listeners:
  - name: l
    address: tcp:0
    route_config:
      virtual_hosts:
        - name: all
          domains: ["*"]
          routes:
            - match: {prefix: /}
              route:
                cluster: backend
%(route)s
clusters:
  - name: backend
    lb_policy: %(policy)s
    endpoints: [{address: "127.0.0.1:8080"}]
%(cluster)s
"""


def load(policy="round_robin", cluster="", route=""):
    return loads(MESH % {"policy": policy, "cluster": cluster, "route": route})


def errorOf(**kw):
    with pytest.raises(ConfigError) as info:
        load(**kw)
    return str(info.value)


def test_no_lb_config_is_none():
    assert load().clusters[0].lbConfig is None


def test_options_of_each_policy():
    c = load("ring_hash", "    lb_config: {minimum_ring_size: 64, maximum_ring_size: 4096}").clusters[0]
    assert c.lbConfig == LbConfig(minimumRingSize=64, maximumRingSize=4096)
    c = load("maglev", "    lb_config: {table_size: 5003}").clusters[0]
    assert c.lbConfig.tableSize == 5003
    c = load("least_request", "    lb_config:\n      choice_count: 3\n      active_request_bias: 0.5\n"
                              "      slow_start: {window: 30s, aggression: 2, min_weight_percent: 20}").clusters[0]
    assert c.lbConfig == LbConfig(choiceCount=3, activeRequestBias=0.5,
                                  slowStart=SlowStartConfig(30.0, 2.0, 20.0))
    c = load("peak_ewma", "    lb_config: {decay_time: 5s, default_rtt: 100ms}").clusters[0]
    assert (c.lbConfig.decayTime, c.lbConfig.defaultRtt, c.lbConfig.choiceCount) == (5.0, 0.1, 2)
    for policy in ("round_robin", "weighted_round_robin"):
        c = load(policy, "    lb_config: {slow_start: {window: 1m}}").clusters[0]
        assert c.lbConfig.slowStart == SlowStartConfig(60.0)


@pytest.mark.parametrize("policy, cluster, message", [
    ("ring_hash", "    lb_config: {table_size: 7}",
     "clusters[0].lb_config.table_size: not an option of lb_policy ring_hash (its options: minimum_ring_size, "
     "maximum_ring_size)"),
    ("random", "    lb_config: {slow_start: {window: 1s}}",
     "clusters[0].lb_config.slow_start: not an option of lb_policy random (its options: none)"),
    ("ring_hash", "    lb_config: {minimum_ring_size: 0}",
     "clusters[0].lb_config.minimum_ring_size: must be between 1 and 8388608, got 0"),
    ("ring_hash", "    lb_config: {minimum_ring_size: 2048, maximum_ring_size: 1024}",
     "clusters[0].lb_config.minimum_ring_size: minimum_ring_size 2048 is above maximum_ring_size 1024"),
    ("maglev", "    lb_config: {table_size: 65536}",
     "clusters[0].lb_config.table_size: must be a prime (e.g. 65537, 5000011), got 65536"),
    ("least_request", "    lb_config: {choice_count: 1}",
     "clusters[0].lb_config.choice_count: must be between 2 and 100, got 1"),
    ("least_request", "    lb_config: {active_request_bias: -1}",
     "clusters[0].lb_config.active_request_bias: must be between 0 and 100, got -1"),
    ("least_request", "    lb_config: {slow_start: {aggression: 2}}",
     "clusters[0].lb_config.slow_start: missing required key 'window'"),
    ("least_request", "    lb_config: {slow_start: {window: 0s}}",
     "clusters[0].lb_config.slow_start.window: must be above 0"),
    ("least_request", "    lb_config: {slow_start: {window: 1s, aggression: 0}}",
     "clusters[0].lb_config.slow_start.aggression: must be above 0"),
    ("least_request", "    lb_config: {slow_start: {window: 1s, min_weight_percent: 101}}",
     "clusters[0].lb_config.slow_start.min_weight_percent: must be between 0 and 100, got 101"),
    ("peak_ewma", "    lb_config: {decay_time: 0s}", "clusters[0].lb_config.decay_time: must be above 0"),
    ("peak_ewma", "    lb_config: [1]", "clusters[0].lb_config: must be a mapping, not a list"),
])
def test_lb_config_errors(policy, cluster, message):
    error = errorOf(policy=policy, cluster=cluster)
    assert error == "<string>:17: " + message or error.startswith("<string>:17: " + message + " ")


def test_hash_policies_built():
    route = """\
                hash_policy:
                  - header: {header_name: X-User}
                    terminal: true
                  - cookie: {name: session}
                  - connection_properties: {source_ip: true}
                  - query_parameter: {name: u}
                  - dubbo_attachment: {name: Tenant}"""
    action = load("ring_hash", route=route).listeners[0].routeConfig.virtualHosts[0].routes[0].action
    assert action.hashPolicies == (
        HashPolicy("header", b"x-user", True), HashPolicy("cookie", b"session"), HashPolicy("source_ip"),
        HashPolicy("query_parameter", b"u"), HashPolicy("dubbo_attachment", b"tenant"))
    assert load().listeners[0].routeConfig.virtualHosts[0].routes[0].action.hashPolicies == ()


P = "listeners[0].route_config.virtual_hosts[0].routes[0].route.hash_policy[0]"


@pytest.mark.parametrize("entry, message", [
    ("{}", P + ": exactly one of header, cookie, connection_properties, query_parameter, dubbo_attachment is "
           "required"),
    ("{header: {header_name: a}, cookie: {name: b}}", P + ": exactly one of"),
    ("{header: {name: a}}", P + ".header.name: unknown key 'name' (allowed: header_name)"),
    ("{header: {header_name: ''}}", P + ".header.header_name: must not be empty"),
    ("{cookie: {name: s, ttl: 10s}}", P + ".cookie.ttl: generating the cookie (ttl) is not supported"),
    ("{connection_properties: {source_ip: false}}", P + ".connection_properties.source_ip: must be true"),
    ("{query_parameter: {name: 3}}", P + ".query_parameter.name: must be a string"),
    ("{header: {header_name: a}, terminal: yes please}", P + ".terminal: must be a boolean"),
    ("{filter_state: {key: a}}", P + ".filter_state: unknown key 'filter_state'"),
])
def test_hash_policy_errors(entry, message):
    error = errorOf(route="                hash_policy: [%s]" % (entry,))
    assert error.startswith("<string>:12: " + message), error


def test_the_editors_schema_knows_the_keys():
    import json
    from importlib import resources

    import jsonschema
    import yaml

    schema = json.loads(resources.files("txmesh").joinpath("mesh.schema.json").read_text())
    validator = jsonschema.Draft202012Validator(schema)
    good = MESH % {"policy": "least_request", "cluster": "    lb_config: {choice_count: 3, slow_start: {window: 10s}}",
                   "route": "                hash_policy: [{header: {header_name: x-u}, terminal: true}, "
                            "{connection_properties: {source_ip: true}}, {dubbo_attachment: {name: t}}]"}
    load("least_request", "    lb_config: {choice_count: 3, slow_start: {window: 10s}}")  # and the loader agrees
    validator.validate(yaml.safe_load(good))
    bad = MESH % {"policy": "maglev", "cluster": "    lb_config: {tablesize: 7}", "route": ""}
    assert not validator.is_valid(yaml.safe_load(bad))
