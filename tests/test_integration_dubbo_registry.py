"""
End to end over loopback (issue 12 parts 1 and 2): real third-party Dubbo providers (sofa-rpc-node 2.10 with
dubbo-remoting, tests/dubbo_peers/registered_provider.js) register themselves in a real ZooKeeper (Debian's,
tests/registry_servers.py) in Dubbo's layout with sofa-rpc-node's own ZooKeeper registry; txmesh runs under twistd
with a Dubbo listener whose route names the registry (``dubbo_registry``: no cluster per interface); a real consumer
(tests/dubbo_peers/consumer.js) calls through it.  A provider removed under load, and ZooKeeper killed and started
again under load, cost no call.
"""

import json
import os
import subprocess
import time

import pytest
from kazoo.client import KazooClient

from tests import support
from tests.test_integration_dubbo import NODE, PEERS, consume, total
from tests.test_zookeeper_discovery import needsPeers, startRegisteredProvider

pytestmark = [pytest.mark.timeout(60), needsPeers]

IFACE = "org.txmesh.peers.EchoService"

CONFIG = """
admin:
  address: tcp:{admin}:interface=127.0.0.1
registries:
  - {{name: zk, type: zookeeper, hosts: "{zk}", root: {root}, session_timeout: 10s}}
listeners:
  - name: dubbo_out
    protocol: dubbo
    address: tcp:{listen}:interface=127.0.0.1
    route_config:
      virtual_hosts:
        - name: all
          domains: ["*"]
          routes:
            - match: {{dubbo: {{interface: "*"}}}}
              route:
                timeout: 3s
                dubbo_registry: {{registry: zk, initial_fetch_timeout: 5s, idle_timeout: 10m}}
"""


class Env:
    def __init__(self, zookeeper, root):
        self.zookeeper, self.root = zookeeper, root
        self.providers = {}
        self.admin, self.port = support.freePort(), support.freePort()
        self.proc = None

    def provider(self, tag):
        self.providers[tag] = startRegisteredProvider(self.zookeeper.hosts, tag, self.root)
        return self.providers[tag]

    def start(self, config=CONFIG):
        self.proc = support.startTxmesh(config.format(admin=self.admin, listen=self.port, zk=self.zookeeper.hosts,
                                                      root=self.root), self.admin)
        support.waitForPort(self.port, proc=self.proc.popen)

    def load(self, ms):
        """The consumer's 'load' scenario (who() for ``ms``, 8 in flight), started in the background."""
        return subprocess.Popen([NODE, os.path.join(PEERS, "consumer.js"), "127.0.0.1:%d" % self.port, "load",
                                 str(ms)], cwd=PEERS, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)

    def clusters(self):
        return [c for c in json.loads(support.adminGet(self.admin, "/clusters")[1])
                if c["name"].startswith("dubbo:zk:")]

    def stop(self):
        if self.proc is not None:
            self.proc.stop()
        for proc, _ in self.providers.values():
            proc.stop()


def result(proc, timeout=30):
    out, _ = proc.communicate(timeout=timeout)
    return json.loads(out.strip().splitlines()[-1])


@pytest.fixture
def env(zookeeper, request):
    e = Env(zookeeper, "/d2e-%s" % (request.node.name[:40].replace("[", "-").replace("]", ""),))
    yield e
    e.stop()


def waitUntil(predicate, timeout=15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError("not within %.0fs" % (timeout,))


def test_real_consumer_reaches_registered_providers_with_no_cluster_configured(env):
    env.provider("A")
    env.provider("B")
    env.start()
    assert env.clusters() == []  # nothing until the first call
    assert consume(env.port, "concurrent", 50) == {"correct": 50}  # echo through the registry route
    out = result(env.load(1500))
    assert out["errors"] == [] and set(out["tags"]) == {"A", "B"}
    [cluster] = env.clusters()
    assert cluster["name"] == "dubbo:zk:%s:SOFA:1.0.0" % (IFACE,)
    assert sorted(h["address"] for h in cluster["hosts"]) == sorted(
        "127.0.0.1:%d" % port for _, port in env.providers.values())


def test_provider_removed_under_load_costs_no_call(env):
    env.provider("A")
    proc, _ = env.provider("B")
    env.start()
    load = env.load(4000)
    time.sleep(1.5)
    proc.signal(15)  # B deregisters (sofa-rpc-node's unPublish), finishes what it has in flight, exits
    out = result(load)
    assert out["errors"] == []
    assert out["tags"].get("A", 0) > 0 and out["tags"].get("B", 0) > 0
    waitUntil(lambda: len(env.clusters()[0]["hosts"]) == 1)
    after = result(env.load(500))
    assert after["errors"] == [] and set(after["tags"]) == {"A"}


def test_zookeeper_killed_and_restarted_under_load(zookeeper_server, request):
    env = Env(zookeeper_server, "/dubbo")
    try:
        env.provider("A")
        env.provider("B")
        env.start()
        assert consume(env.port, "concurrent", 10) == {"correct": 10}
        load = env.load(3500)
        time.sleep(0.8)
        zookeeper_server.kill()
        time.sleep(1.5)  # calls go on to the last known providers meanwhile
        zookeeper_server.start()
        out = result(load)
        assert out["errors"] == [] and set(out["tags"]) == {"A", "B"}
        stats = json.loads(support.adminGet(env.admin, "/stats")[1])
        assert total(stats, "dubbo_registry_source_failures", registry="zk") >= 1  # txmesh saw the session go
        # the providers' registrations come back (sofa-rpc-node re-registers on reconnect) and txmesh sees them
        k = KazooClient(hosts=zookeeper_server.hosts)
        k.start(15)
        try:
            waitUntil(lambda: len(k.get_children("/dubbo/%s/providers" % (IFACE,))) == 2)
        finally:
            k.stop()
        waitUntil(lambda: len(env.clusters()[0]["hosts"]) == 2)
        after = result(env.load(500))
        assert after["errors"] == [] and set(after["tags"]) == {"A", "B"}
    finally:
        env.stop()


CLUSTER_CONFIG = """
admin:
  address: tcp:{admin}:interface=127.0.0.1
registries:
  - {{name: zk, type: zookeeper, hosts: "{zk}", root: {root}}}
listeners:
  - name: dubbo_out
    protocol: dubbo
    address: tcp:{listen}:interface=127.0.0.1
    default_cluster: echo
clusters:
  - name: echo
    protocol: dubbo
    discovery: {{type: zookeeper, interface: org.txmesh.peers.EchoService, group: SOFA, version: 1.0.0}}
"""


def test_cluster_with_zookeeper_discovery_reaches_registered_providers(env):
    env.provider("A")
    env.provider("B")
    env.start(CLUSTER_CONFIG)
    waitUntil(lambda: len(json.loads(support.adminGet(env.admin, "/clusters")[1])[0]["hosts"]) == 2)
    out = result(env.load(1500))
    assert out["errors"] == [] and set(out["tags"]) == {"A", "B"}
