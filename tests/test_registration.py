"""
Registration of the local app (txmesh/discovery/registration.py, the ``registration`` keys of
txmesh/discovery_config.py) on a Clock with scripted health checks and recording registrars: the health gate
(thresholds, flapping, fail fast), idempotence, retries, the drain order and grace; Dubbo's provider and consumer
URLs and their ZooKeeper paths; the etcd entry's key and value; config errors with file, line and key path.
The real ZooKeeper and a real Dubbo consumer are in tests/test_integration_registration.py.
"""

import dataclasses
import json
import os
import random
import re
import sys
import types
from importlib import resources

import jsonschema
import pytest
import yaml
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import Logger
from zope.interface import implementer
from zope.interface.verify import verifyObject

from tests.test_admin import request
from tests.test_health import NETWORK, REFUSED, ScriptedChecker
from txmesh.admin import makeAdminSite
from txmesh.config import NodeConfig, loads
from txmesh.discovery.registration import (
    RegistrationManager,
    ZooKeeperRegistrar,
    advertisedHost,
    etcdKeyValue,
    firstNonLoopbackIPv4,
    makeRegistration,
)
from txmesh.errors import ConfigError
from txmesh.interfaces import IRegistrar
from txmesh.protocols.dubbo import url as dubbo_url
from txmesh.stats import StatsStore
from txmesh.testing import RecordingRegistrar
from txmesh.upstream.health import PASSED

IFACE = "org.apache.dubbo.demo.DemoService"

BASE = """\
node: {id: n1, cluster: demo-app}
listeners:
  - name: dubbo_in
    protocol: dubbo
    traffic_direction: inbound
    address: tcp:20880:interface=0.0.0.0
    default_cluster: local
  - name: http_in
    address: tcp:8080:interface=127.0.0.1
  - name: out
    protocol: dubbo
    traffic_direction: outbound
    address: tcp:20990:interface=127.0.0.1
  - name: sock
    protocol: dubbo
    address: unix:/tmp/txmesh-test.sock
clusters:
  - name: local
    protocol: dubbo
    endpoints: [{address: "127.0.0.1:20881"}]
registries:
  - {name: zk, type: zookeeper, hosts: "127.0.0.1:2181"}
  - {name: etcd1, type: etcd, endpoints: ["http://127.0.0.1:2379"]}
"""

REGISTRATION = """\
registration:
  listener: dubbo_in
  health_check: {interval: 1s, healthy_threshold: 2, unhealthy_threshold: 2}
  publish:
    - registry: zk
      services:
        - interface: org.apache.dubbo.demo.DemoService
          methods: [sayHello, sayHelloAsync]
          version: 1.0.0
          group: g1
          parameters: {timeout: 3000, retries: 0}
      subscribe: [org.apache.dubbo.demo.Other, {interface: org.apache.dubbo.demo.Third, version: 2.0.0}]
    - registry: etcd1
      key: /services/demo/{address}
      ttl: 15s
      metadata: {zone: a}
"""


def load(registration=REGISTRATION):
    return loads(BASE + registration, "mesh.yaml")


# -- config ----------------------------------------------------------------------------------------------------------


def test_config_defaults_and_entries():
    r = load().registration
    assert (r.listener, r.listenerPort, r.listenerInterface, r.advertiseAddress) == ("dubbo_in", 20880, "0.0.0.0",
                                                                                     None)
    assert r.drainGrace == 5.0  # default
    # the local app: the single endpoint of the listener's default_cluster, checked by a TCP connect by default
    assert (r.appHost, r.appPort, r.healthCheck.type, r.healthCheck.healthyThreshold) == ("127.0.0.1", 20881, "tcp",
                                                                                          2)
    zk, etcd = r.publish
    [service] = zk.services
    assert (service.interface, service.methods, service.version, service.group) == (
        IFACE, ("sayHello", "sayHelloAsync"), "1.0.0", "g1")
    assert service.parameters == (("retries", "0"), ("timeout", "3000"))
    assert [(s.interface, s.version) for s in zk.subscribe] == [("org.apache.dubbo.demo.Other", ""),
                                                                ("org.apache.dubbo.demo.Third", "2.0.0")]
    assert (etcd.key, etcd.value, etcd.ttl, etcd.metadata) == ("/services/demo/{address}", None, 15, (("zone", "a"),))


def test_config_explicit_address_and_checker_keys():
    r = load("""\
registration:
  listener: http_in
  advertise_address: 10.1.2.3
  drain_grace: 250ms
  health_check: {address: "127.0.0.1:9000", type: http, path: /healthz}
  publish: [{registry: etcd1, key: /k, value: "{host}:{port}"}]
""").registration
    assert (r.advertiseAddress, r.drainGrace, r.appHost, r.appPort) == ("10.1.2.3", 0.25, "127.0.0.1", 9000)
    assert (r.healthCheck.type, r.healthCheck.checkerConfig.path) == ("http", "/healthz")


ERRORS = [
    ("registration: {listener: nope, publish: [{registry: zk, subscribe: [a.B]}]}",
     "registration.listener", "unknown listener 'nope'"),
    ("registration: {listener: out, publish: [{registry: zk, subscribe: [a.B]}]}",
     "registration.listener", "is outbound"),
    ("registration: {listener: sock, publish: [{registry: zk, subscribe: [a.B]}]}",
     "registration.listener", "needs a TCP address"),
    ("registration: {listener: dubbo_in, publish: []}", "registration.publish", "at least one registry"),
    ("registration: {listener: dubbo_in, publish: [{registry: consul}]}",
     "registration.publish[0].registry", "unknown registry 'consul'"),
    ("registration: {listener: dubbo_in, publish: [{registry: zk, subscribe: [a.B]}, "
     "{registry: zk, subscribe: [a.C]}]}",
     "registration.publish[1].registry", "already published in"),
    ("registration: {listener: dubbo_in, publish: [{registry: zk}]}", "registration.publish[0]",
     "publishes 'services'"),
    ("registration: {listener: http_in, health_check: {address: '127.0.0.1:1'}, "
     "publish: [{registry: zk, services: [{interface: a.B}]}]}",
     "registration.publish[0].services", "listener 'http_in' speaks http1, not dubbo"),
    ("registration: {listener: dubbo_in, publish: [{registry: zk, services: [{interface: 'a/B'}]}]}",
     "registration.publish[0].services[0].interface", "Dubbo interface name"),
    ("registration: {listener: dubbo_in, publish: [{registry: zk, services: [{interface: a.B, methods: ['x,y']}]}]}",
     "registration.publish[0].services[0].methods[0]", "method name"),
    ("registration: {listener: dubbo_in, publish: [{registry: zk, services: [{interface: a.B, weight: 3}]}]}",
     "registration.publish[0].services[0].weight", "unknown key 'weight'"),
    ("registration: {listener: http_in, publish: [{registry: etcd1, key: /k}]}",
     "registration.health_check", "name the local app's address"),
    ("registration: {listener: dubbo_in, advertise_address: 0.0.0.0, publish: [{registry: etcd1, key: /k}]}",
     "registration.advertise_address", "callers can dial"),
    ("registration: {listener: dubbo_in, advertise_address: my.host, publish: [{registry: etcd1, key: /k}]}",
     "registration.advertise_address", "must be an IP address"),
    ("registration: {listener: dubbo_in, publish: [{registry: etcd1, key: /k, ttl: 1.5s}]}",
     "registration.publish[0].ttl", "whole number of seconds"),
    ("registration: {listener: dubbo_in, publish: [{registry: etcd1, key: '/k/{ip}'}]}",
     "registration.publish[0].key", "unknown placeholder '{ip}'"),
    ("registration: {listener: dubbo_in, publish: [{registry: etcd1, key: /k, value: v, metadata: {a: b}}]}",
     "registration.publish[0].metadata", "default value only"),
    ("registration: {listener: dubbo_in, health_check: {type: tcp, path: /x}, publish: [{registry: etcd1, key: /k}]}",
     "registration.health_check.path", "unknown key 'path'"),
    ("registration: {listener: dubbo_in, health_check: {address: 'nohost'}, publish: [{registry: etcd1, key: /k}]}",
     "registration.health_check.address", "invalid address"),
    ("registration: {listener: dubbo_in, health_check: {no_traffic_interval: 60s}, "
     "publish: [{registry: etcd1, key: /k}]}",
     "registration.health_check.no_traffic_interval", "not counted"),
    ("registration: {listener: dubbo_in, drain_grace: soon, publish: [{registry: etcd1, key: /k}]}",
     "registration.drain_grace", "invalid duration"),
]


@pytest.mark.parametrize("text, path, reason", ERRORS, ids=[e[1] + ":" + e[2][:20] for e in ERRORS])
def test_config_errors_name_file_line_and_path(text, path, reason):
    with pytest.raises(ConfigError) as info:
        load(text + "\n")
    e = info.value
    assert (e.filename, e.line, e.path) == ("mesh.yaml", BASE.count("\n") + 1, path), str(e)
    assert reason in e.reason


def test_no_registration():
    assert loads(BASE).registration is None


# -- Dubbo URLs and nodes ----------------------------------------------------------------------------------------------


class FakeSession:
    """The IZooKeeperSession calls a registrar makes, recorded; the ephemeral nodes kept in ``nodes``."""

    def __init__(self, root="/dubbo"):
        self.config = types.SimpleNamespace(name="zk", root=root)
        self.connected = True
        self.nodes = {}

    def ensureEphemeral(self, path, data=b""):
        self.nodes[path] = data
        return defer.succeed(None)

    def removeEphemeral(self, path):
        self.nodes.pop(path, None)
        return defer.succeed(None)


class FakeRegistries:
    def __init__(self, clients):
        self.clients = clients

    def get(self, name):
        return self.clients[name]


def _zookeeperManager(root="/dubbo", text=REGISTRATION):
    config = load(text).registration
    zkOnly = dataclasses.replace(config, publish=config.publish[:1])
    session = FakeSession(root)
    clock = Clock()
    clock.advance(1700000000.5)
    manager = makeRegistration(zkOnly, clock, FakeRegistries({"zk": session}), StatsStore(), 20880, NodeConfig(
        id="n1", cluster="demo-app"), nodeAddress=lambda: "10.0.0.5", pid=4242)
    return manager, session


def test_zookeeper_provider_and_consumer_nodes_in_dubbos_format():
    manager, session = _zookeeperManager()
    [(_, registrar)] = [(e.name, e.registrar) for e in manager.entries]
    verifyObject(IRegistrar, registrar)
    registrar.register()
    providers = [p for p in session.nodes if "/providers/" in p]
    consumers = sorted(p for p in session.nodes if "/consumers/" in p)
    [provider] = providers
    prefix = "/dubbo/%s/providers/" % (IFACE,)
    assert provider.startswith(prefix) and "/" not in provider[len(prefix):]  # the whole URL encoded in one name
    url = dubbo_url.decode(provider[len(prefix):])
    assert (url.protocol, url.host, url.port, url.path) == ("dubbo", "10.0.0.5", 20880, IFACE)
    assert url.parameters == {
        "anyhost": "true", "application": "demo-app", "deprecated": "false", "dubbo": "2.0.2", "dynamic": "true",
        "generic": "false", "group": "g1", "interface": IFACE, "methods": "sayHello,sayHelloAsync", "pid": "4242",
        "register": "true", "retries": "0", "side": "provider", "timeout": "3000", "timestamp": "1700000000500",
        "version": "1.0.0"}
    assert len(consumers) == 2
    other = dubbo_url.decode(consumers[0].rpartition("/")[2])
    assert consumers[0].startswith("/dubbo/org.apache.dubbo.demo.Other/consumers/")
    assert (other.protocol, other.host, other.port) == ("consumer", "10.0.0.5", 0)
    assert other.format().startswith("consumer://10.0.0.5/org.apache.dubbo.demo.Other?")
    assert (other.get("category"), other.get("side"), other.get("check")) == ("consumers", "consumer", "false")
    assert dubbo_url.decode(consumers[1].rpartition("/")[2]).get("version") == "2.0.0"
    assert registrar.describe()["urls"][0] == url.format()
    registrar.deregister()
    assert session.nodes == {}


def test_zookeeper_root_slash():
    manager, session = _zookeeperManager(root="/")
    manager.entries[0].registrar.register()
    assert sorted(p.rpartition("/")[0] for p in session.nodes) == [
        "/%s/providers" % (IFACE,), "/org.apache.dubbo.demo.Other/consumers", "/org.apache.dubbo.demo.Third/consumers"]


def test_advertised_host_rules():
    r = load().registration
    assert advertisedHost(r, lambda: "10.9.8.7") == "10.9.8.7"  # bound to all: the node's address
    assert advertisedHost(r, lambda: None) == "127.0.0.1"  # a node without one
    loopback = dataclasses.replace(r, listenerInterface="127.0.0.1")
    assert advertisedHost(loopback, lambda: "10.9.8.7") == "127.0.0.1"
    assert advertisedHost(dataclasses.replace(r, advertiseAddress="192.0.2.1"), lambda: "10.9.8.7") == "192.0.2.1"
    found = firstNonLoopbackIPv4()
    assert found is None or not found.startswith("127.")


def test_etcd_entry_builds_an_etcd_registrar(monkeypatch):
    made = []

    @implementer(IRegistrar)
    class EtcdRegistrar(RecordingRegistrar):
        def __init__(self, client, key, value, ttl):
            super().__init__("etcd1")
            made.append((client, key, value, ttl))

    import txmesh.discovery.registration
    monkeypatch.setattr(txmesh.discovery.registration, "EtcdRegistrar", EtcdRegistrar)
    config = load().registration
    etcdOnly = dataclasses.replace(config, publish=config.publish[1:])
    client = object()
    manager = makeRegistration(etcdOnly, Clock(), FakeRegistries({"etcd1": client}), StatsStore(), 20880,
                               NodeConfig(id="n1"), nodeAddress=lambda: "10.0.0.5")
    [(c, key, value, ttl)] = made
    assert (c, key, ttl) == (client, "/services/demo/10.0.0.5:20880", 15)
    assert json.loads(value) == {"address": "10.0.0.5:20880", "metadata": {"zone": "a"}}
    assert manager.address == "10.0.0.5:20880"


def test_etcd_value_template():
    entry = loads(BASE + "registration: {listener: dubbo_in, publish: [{registry: etcd1, key: '/s/{host}', "
                  "value: '{{\"addr\": \"{address}\", \"port\": {port}}}'}]}\n").registration.publish[0]
    assert etcdKeyValue(entry, "::1", 80) == ("/s/::1", b'{"addr": "[::1]:80", "port": 80}')


# -- the health gate ---------------------------------------------------------------------------------------------------


class World:
    def __init__(self, registrars=None, drainGrace=2.0, healthyThreshold=2, unhealthyThreshold=2):
        config = load().registration
        config = dataclasses.replace(config, drainGrace=drainGrace, healthCheck=dataclasses.replace(
            config.healthCheck, healthyThreshold=healthyThreshold, unhealthyThreshold=unhealthyThreshold))
        self.clock = Clock()
        self.checker = ScriptedChecker()
        self.stats = StatsStore()
        self.registrars = registrars or [RecordingRegistrar("zk"), RecordingRegistrar("etcd1")]
        self.manager = RegistrationManager(config, self.clock, [(r.name, r) for r in self.registrars], self.stats,
                                           "10.0.0.5:20880", random.Random(1), checker=self.checker)
        self.events = []
        self.manager.log = Logger(observer=self.events.append)
        self.manager.start()

    def check(self, result):
        """Answer the check in flight, then let the next one start."""
        self.clock.advance(0)
        self.checker.answer(result)
        self.clock.advance(1.0)

    def calls(self):
        return [r.calls for r in self.registrars]

    def logged(self):
        return [e["log_format"].split(";")[0] for e in self.events]


def test_registered_after_the_healthy_threshold_only():
    w = World()
    assert w.calls() == [[], []]
    w.check(PASSED)
    assert w.calls() == [[], []]  # one pass is not enough at start (healthy_threshold 2)
    w.check(PASSED)
    assert w.calls() == [["register"], ["register"]]
    assert w.stats.value("registration_published", registry="zk") == 1
    assert w.stats.value("registration_registered", registry="etcd1") == 1
    assert w.stats.value("registration_health_check_healthy") == 1
    assert w.stats.value("registration_health_check_success") == 2
    w.check(PASSED)
    assert w.calls() == [["register"], ["register"]]  # idempotent: no call without a change


def test_withdrawn_on_failure_and_back_after_threshold():
    w = World()
    w.check(PASSED)
    w.check(PASSED)
    w.check(NETWORK)
    assert w.calls()[0] == ["register"]  # one network failure of unhealthy_threshold 2
    w.check(NETWORK)
    assert w.calls()[0] == ["register", "deregister"]
    assert w.stats.value("registration_published", registry="zk") == 0
    w.check(PASSED)
    assert w.calls()[0] == ["register", "deregister"]
    w.check(PASSED)
    assert w.calls()[0] == ["register", "deregister", "register"]
    assert w.manager.describe()["registries"][0]["state"] == "registered"


def test_refused_withdraws_at_once_and_flapping_is_gated():
    w = World()
    for result in (PASSED, PASSED, REFUSED, PASSED, REFUSED, PASSED, NETWORK, PASSED, PASSED):
        w.check(result)
    # registered after 2 passes, withdrawn at the refusal, and only registered again after 2 passes in a row
    assert w.calls()[0] == ["register", "deregister", "register"]
    # logged once per change: start, healthy, unhealthy, healthy
    assert w.logged() == [
        "registration: publishing {address} (listener {listener}) once the local app {app} passes its {type} check",
        "registration: the local app {app} is healthy",
        "registration: the local app {app} fails its health check ({reason})",
        "registration: the local app {app} is healthy"]


def test_failed_register_is_retried_and_logged_once():
    zk = RecordingRegistrar("zk", manual=True)
    w = World([zk])
    w.check(PASSED)
    w.check(PASSED)
    zk.pending.pop(0).errback(RuntimeError("no quorum"))
    assert w.stats.value("registration_errors", registry="zk") == 1
    described = w.manager.describe()["registries"][0]
    assert (described["state"], described["last_error"]) == ("failed", "no quorum")
    w.clock.advance(w.manager.retryDelay)
    assert zk.calls == ["register", "register"]
    zk.pending.pop(0).errback(RuntimeError("no quorum"))
    w.clock.advance(w.manager.retryDelay)
    zk.pending.pop(0).callback(None)
    assert w.manager.describe()["registries"][0]["state"] == "registered"
    errors = [e for e in w.events if e["log_level"].name == "error"]
    assert len(errors) == 1  # logged once, not at every retry


def test_withdraw_overtakes_a_register_in_flight():
    zk = RecordingRegistrar("zk", manual=True)
    w = World([zk], unhealthyThreshold=1)
    w.check(PASSED)
    w.check(PASSED)
    w.check(NETWORK)
    assert zk.calls == ["register", "deregister"]
    zk.pending.pop(0).callback(None)  # the register lands after the withdrawal was asked for
    assert w.manager.describe()["registries"][0]["state"] == "withdrawing"
    zk.pending.pop(0).callback(None)
    assert w.manager.describe()["registries"][0]["state"] == "withdrawn"
    assert w.stats.value("registration_published", registry="zk") == 0


def test_drain_withdraws_first_then_waits_the_grace():
    w = World(drainGrace=2.0)
    w.check(PASSED)
    w.check(PASSED)
    done = w.manager.drain()
    assert w.calls() == [["register", "deregister"], ["register", "deregister"]]  # at once
    assert not done.called
    w.clock.advance(1.9)
    assert not done.called  # callers' registries are still noticing: the listeners keep serving
    w.clock.advance(0.1)
    assert done.called
    assert w.clock.getDelayedCalls() == []  # the local app's check stopped
    assert w.manager.describe()["draining"] is True


def test_drain_without_registration_does_not_wait():
    w = World(drainGrace=5.0)
    w.check(PASSED)  # not yet healthy
    done = w.manager.drain()
    assert done.called and w.calls() == [[], []]


def test_drain_bounds_a_withdrawal_that_hangs():
    zk = RecordingRegistrar("zk", manual=True)
    w = World([zk], drainGrace=1.0)
    w.check(PASSED)
    w.check(PASSED)
    zk.pending.pop(0).callback(None)
    done = w.manager.drain()
    assert zk.calls == ["register", "deregister"]
    w.clock.advance(w.manager.withdrawTimeout)
    assert not done.called
    w.clock.advance(1.0)
    assert done.called


def test_health_changes_during_drain_change_nothing():
    w = World(drainGrace=1.0)
    w.check(PASSED)
    w.check(PASSED)
    w.manager.drain()
    w.clock.advance(5)
    assert w.calls()[0] == ["register", "deregister"]


def test_admin_healthcheck_fail_holds_the_registrations_withdrawn():
    """POST /healthcheck/fail (RegistrationManager.hold): withdrawn whatever the app's health, back on ok."""
    w = World()
    w.check(PASSED)
    w.check(PASSED)
    assert w.calls() == [["register"], ["register"]]
    w.manager.hold(True)
    assert w.calls() == [["register", "deregister"]] * 2
    assert w.manager.describe()["held"] is True
    w.check(PASSED)
    w.check(PASSED)
    assert w.calls() == [["register", "deregister"]] * 2  # a passing app stays withdrawn while held
    w.manager.hold(False)
    assert w.calls() == [["register", "deregister", "register"]] * 2
    assert w.stats.value("registration_published", registry="zk") == 1


def test_admin_healthcheck_ok_does_not_register_an_unhealthy_app():
    w = World()
    w.manager.hold(True)
    w.check(PASSED)
    w.check(PASSED)
    assert w.calls() == [[], []]
    w.check(NETWORK)
    w.check(NETWORK)
    w.manager.hold(False)
    assert w.calls() == [[], []]
    w.check(PASSED)
    w.check(PASSED)
    assert w.calls() == [["register"], ["register"]]


def test_registrations_admin_page():
    w = World()
    w.check(PASSED)
    w.check(PASSED)
    site = makeAdminSite(StatsStore(), None, lambda: {}, lambda: True, reactor=Clock(),
                         registrations=w.manager.describe)
    body = request(site, b"/registrations").json()
    assert body["address"] == "10.0.0.5:20880" and body["local_app"]["healthy"] is True
    assert body["local_app"]["address"] == "127.0.0.1:20881"
    assert [(r["name"], r["state"], r["published"]) for r in body["registries"]] == [
        ("zk", "registered", True), ("etcd1", "registered", True)]
    assert body["local_app"]["check"]["consecutive_passes"] == 2
    assert request(makeAdminSite(StatsStore(), None, lambda: {}, lambda: True, reactor=Clock()),
                   b"/registrations").code == 404


def test_recording_registrar_is_a_registrar():
    verifyObject(IRegistrar, RecordingRegistrar())
    verifyObject(IRegistrar, ZooKeeperRegistrar(FakeSession(), []))


# -- docs and schema -------------------------------------------------------------------------------------------------

DOC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "discovery.md")


def test_worked_example_loads_and_validates():
    text = open(DOC, encoding="utf-8").read()
    section = text[text.index("## A Dubbo sidecar pair registered in ZooKeeper"):text.index("## When a registry")]
    example = re.findall(r"```yaml\n(.*?)```", section, re.S)[0]  # the provider's sidecar (B)
    mesh = loads(example)
    r = mesh.registration
    assert (r.listener, r.listenerInterface, r.healthCheck.type, r.appPort) == ("dubbo_in", "127.0.0.1", "dubbo",
                                                                                 20880)
    schema = json.loads(resources.files("txmesh").joinpath("mesh.schema.json").read_text())
    validator = jsonschema.Draft202012Validator(schema)
    validator.validate(yaml.safe_load(example))
    validator.validate(yaml.safe_load(BASE + REGISTRATION))
    with pytest.raises(jsonschema.ValidationError):
        validator.validate(yaml.safe_load(BASE + "registration: {listener: dubbo_in, publish: [], extra: 1}\n"))
