"""
txmesh.discovery.zookeeper: Dubbo 2's provider URLs and overrides into host sets (pure functions, on real node names
as Dubbo and sofa-rpc-node write them), the source against an in-memory session, the config keys and their errors,
and against a real ZooKeeper with a real third-party provider (sofa-rpc-node's ZooKeeper registry) registering
itself.
"""

import os
import shutil
import subprocess
from urllib.parse import quote

import pytest
from kazoo.client import KazooClient
from zope.interface import implementer
from zope.interface.verify import verifyObject

from tests import support
from tests.reactor_thread import onReactor, reactor, waitFor
from txmesh.config import ConfigError, loads
from txmesh.discovery.zookeeper import (ZooKeeperDiscoveryFactory, ZooKeeperSource, ZooKeeperSourceConfig,
                                        parseConfigurators, providerEndpoints)
from txmesh.discovery.zookeeper_session import ZooKeeperSession
from txmesh.discovery_config import ZooKeeperRegistryConfig
from txmesh.interfaces import IDiscoverySource, IDiscoverySourceFactory, IHostSetSink
from txmesh.stats import StatsStore

IFACE = "org.apache.dubbo.demo.DemoService"
PEERS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dubbo_peers")
NODE = shutil.which("node")


def node(url):
    """A provider node name as Dubbo writes it: the whole URL percent-encoded (URL.encode)."""
    return quote(url, safe="")


def provider(host="10.0.0.5", port=20880, **params):
    base = {"anyhost": "true", "application": "demo-provider", "dubbo": "2.0.2", "interface": IFACE,
            "methods": "sayHello,sayHelloAsync", "release": "2.7.23", "side": "provider", "timestamp": "1700000000"}
    base.update(params)
    query = "&".join("%s=%s" % kv for kv in base.items() if kv[1] is not None)
    return node("dubbo://%s:%d/%s?%s" % (host, port, IFACE, query))


def override(address="0.0.0.0", **params):
    query = "&".join("%s=%s" % kv for kv in dict({"category": "configurators", "dynamic": "false"}, **params).items())
    return node("override://%s/%s?%s" % (address, IFACE, query))


def hosts(children, configurators=(), **config):
    cfg = ZooKeeperSourceConfig(IFACE, **config)
    found, malformed, ignored = providerEndpoints(children, cfg, parseConfigurators(configurators, cfg)[0])
    return {"%s:%d" % (e.host, e.port): (e.weight, e.priority) for e in found}, len(malformed), ignored


# -- provider URLs ---------------------------------------------------------------------------------------------


def test_a_dubbo_provider_node_becomes_a_host_with_its_metadata():
    cfg = ZooKeeperSourceConfig(IFACE, version="1.0.0")
    [endpoint], malformed, ignored = providerEndpoints([provider(version="1.0.0", weight="50", token="secret")], cfg)
    assert (endpoint.host, endpoint.port, endpoint.weight, endpoint.priority) == ("10.0.0.5", 20880, 50, 0)
    md = dict(endpoint.metadata)
    assert md["version"] == "1.0.0" and md["application"] == "demo-provider" and md["side"] == "provider"
    assert md["methods"] == "sayHello,sayHelloAsync" and md["release"] == "2.7.23" and md["protocol"] == "dubbo"
    assert "token" not in md  # never shown in /clusters
    assert (malformed, ignored) == ([], 0)


def test_sofa_rpc_node_url_without_a_path():
    # what sofa-rpc-node 2.10's ZooKeeper registry writes (read back from a real registration, see below)
    url = ("dubbo://127.0.0.1:23456?startTime=1796456856464&pid=2366&uniqueId=&dynamic=true&appName=txmesh-peer"
           "&timeout=3000&serialization=hessian2&weight=100&accepts=100000&language=nodejs&rpcVer=50400"
           "&protocol=dubbo&interface=org.txmesh.peers.EchoService&version=1.0.0&group=SOFA")
    cfg = ZooKeeperSourceConfig("org.txmesh.peers.EchoService", group="SOFA", version="1.0.0")
    [endpoint], _, _ = providerEndpoints([node(url)], cfg)
    assert (endpoint.host, endpoint.port, endpoint.weight) == ("127.0.0.1", 23456, 100)
    assert dict(endpoint.metadata)["appName"] == "txmesh-peer"


@pytest.mark.parametrize("wanted, offered, match", [
    ({}, {}, True),  # no group/version on either side
    ({}, {"group": ""}, True),  # empty reads as absent (Dubbo's getParameter)
    ({}, {"version": "1.0.0"}, False),  # a consumer without version does not get versioned providers
    ({"version": "1.0.0"}, {}, False),
    ({"version": "1.0.0"}, {"version": "1.0.0"}, True),
    ({"version": "*"}, {"version": "2.0"}, True),
    ({"version": "*"}, {}, True),
    ({"group": "a"}, {"group": "b"}, False),
    ({"group": "a,b"}, {"group": "b"}, True),  # a consumer's group list
    ({"group": "*"}, {"group": "b"}, True),
    ({"group": "a"}, {"default.group": "a"}, True),  # Dubbo 2.6's default.group
])
def test_group_and_version_match_as_dubbo(wanted, offered, match):
    found, _, ignored = hosts([provider(**offered)], **wanted)
    assert bool(found) == match and ignored == (0 if match else 1)


def test_disabled_other_protocols_interfaces_and_categories_are_ignored():
    children = [provider(port=1, enabled="false"), provider(port=2, disabled="true"),
                node("rest://10.0.0.5:3/%s?interface=%s" % (IFACE, IFACE)),
                provider(port=4, interface="org.other.Service"), provider(port=5, category="routers"),
                provider(port=6)]
    assert hosts(children) == ({"10.0.0.5:6": (100, 0)}, 0, 5)


def test_malformed_nodes_are_skipped_and_counted_never_failing_the_set():
    children = ["not-a-url", node("dubbo://10.0.0.5:99999/x"), provider(port=7, weight="heavy"),
                node("dubbo://10.0.0.5/%s" % IFACE), provider(port=8), "%ff%fe"]
    assert hosts(children) == ({"10.0.0.5:8": (100, 0)}, 5, 0)


def test_weight_zero_is_a_last_resort_priority():
    assert hosts([provider(port=1, weight="0"), provider(port=2)]) == ({"10.0.0.5:1": (1, 1), "10.0.0.5:2": (100, 0)},
                                                                      0, 0)


# -- overrides (configurators) ---------------------------------------------------------------------------------


def test_override_for_all_sets_the_weight():
    assert hosts([provider(port=1)], [override(weight="200")])[0] == {"10.0.0.5:1": (200, 0)}


def test_override_for_one_provider_disables_it():
    children = [provider(port=1), provider(port=2)]
    assert hosts(children, [override("10.0.0.5:2", disabled="true")])[0] == {"10.0.0.5:1": (100, 0)}
    # on that port, any host (0.0.0.0:port); another port: no effect
    assert hosts(children, [override("0.0.0.0:1", disabled="true")])[0] == {"10.0.0.5:2": (100, 0)}
    assert len(hosts(children, [override("10.0.0.6:1", disabled="true")])[0]) == 2


def test_override_scoping():
    children = [provider(port=1)]
    assert hosts(children, [override(weight="7", enabled="false")])[0] == {"10.0.0.5:1": (100, 0)}  # off
    assert hosts(children, [override(weight="7", application="other")])[0] == {"10.0.0.5:1": (100, 0)}
    assert hosts(children, [override(weight="7", application="demo-provider")])[0] == {"10.0.0.5:1": (7, 0)}
    assert hosts(children, [override(weight="7", providers="10.0.0.9:1")])[0] == {"10.0.0.5:1": (100, 0)}
    assert hosts(children, [override(weight="7", version="2.0")])[0] == {"10.0.0.5:1": (100, 0)}  # not our version
    assert hosts(children, [override("10.0.0.5", weight="7")])[0] == {"10.0.0.5:1": (100, 0)}  # a consumer's rule
    assert hosts(children, [override(**{"weight": "7", "~release": "2.6.0"})])[0] == {"10.0.0.5:1": (100, 0)}
    assert hosts(children, [override(**{"weight": "7", "~release": "2.7.23"})])[0] == {"10.0.0.5:1": (7, 0)}


def test_override_order_empty_and_absent():
    children = [provider(port=1)]
    # by host, so the provider's own rule comes after the one for all and wins
    assert hosts(children, [override("10.0.0.5:1", weight="3"), override(weight="9")])[0] == {"10.0.0.5:1": (3, 0)}
    assert hosts(children, [override(weight="9"), node("empty://0.0.0.0/%s?category=configurators" % IFACE)]) \
        [0] == {"10.0.0.5:1": (100, 0)}
    absent = node("absent://0.0.0.0/%s?category=configurators&weight=5" % IFACE)
    assert hosts([provider(port=1, weight=None)], [absent])[0] == {"10.0.0.5:1": (5, 0)}
    assert hosts([provider(port=1, weight="60")], [absent])[0] == {"10.0.0.5:1": (60, 0)}
    assert parseConfigurators(["junk"], ZooKeeperSourceConfig(IFACE))[1] == 1


# -- the source, against an in-memory session ------------------------------------------------------------------


class _Watch:
    def __init__(self, session, path, callback):
        self.session, self.path, self.callback = session, path, callback

    def cancel(self):
        self.session.watches.remove(self)


class SessionDouble:
    """An in-memory IZooKeeperSession's watching half: ``set(path, children)`` as ZooKeeper would tell."""

    def __init__(self, name="zk", root="/dubbo"):
        self.config = ZooKeeperRegistryConfig(name=name, hosts="127.0.0.1:1", root=root)
        self.connected = True
        self.watches = []
        self.listeners = []
        self.zxid = 10

    def addStateListener(self, callback):
        self.listeners.append(callback)

    def removeStateListener(self, callback):
        self.listeners.remove(callback)

    def watchChildren(self, path, callback):
        w = _Watch(self, path, callback)
        self.watches.append(w)
        return w

    def set(self, path, children):
        self.zxid += 1
        for w in list(self.watches):
            if w.path == path:
                w.callback(sorted(children), str(self.zxid))

    def state(self, state):
        self.connected = state == "connected"
        for listener in list(self.listeners):
            listener(state)


@implementer(IHostSetSink)
class RecordingSink:
    def __init__(self):
        self.sets = []
        self.failures = []

    def hostsUpdated(self, endpoints, version):
        self.sets.append((sorted("%s:%d" % (e.host, e.port) for e in endpoints), version))

    def sourceFailed(self, reason):
        self.failures.append(reason)


PROVIDERS = "/dubbo/%s/providers" % (IFACE,)
CONFIGURATORS = "/dubbo/%s/configurators" % (IFACE,)


def test_source_waits_for_both_watches_then_follows_changes():
    session, sink, stats = SessionDouble(), RecordingSink(), StatsStore()
    source = ZooKeeperSource(ZooKeeperSourceConfig(IFACE), session, sink, stats.scope(cluster="c"), "c")
    verifyObject(IDiscoverySource, source)
    verifyObject(IHostSetSink, sink)
    source.start()
    session.set(PROVIDERS, [provider(port=1), provider(port=2), "junk"])
    assert sink.sets == []  # the overrides are not known yet: a disabled provider must not get traffic meanwhile
    session.set(CONFIGURATORS, [override("10.0.0.5:2", disabled="true")])
    assert sink.sets == [(["10.0.0.5:1"], "11/12")]
    session.set(CONFIGURATORS, [])
    session.set(PROVIDERS, [provider(port=2)])
    assert sink.sets[-2:] == [(["10.0.0.5:1", "10.0.0.5:2"], "11/13"), (["10.0.0.5:2"], "14/13")]
    d = source.describe()
    assert (d["path"], d["zxid"], d["hosts"], d["providers"]) == (PROVIDERS, "14/13", 1, 1)
    assert stats.scope(cluster="c").gauge("zookeeper_providers_malformed").value == 0
    session.set(PROVIDERS, [])
    assert sink.sets[-1] == ([], "15/13")  # the registry says none: an empty set, not a failure


def test_source_reports_session_loss_once_and_stops_cleanly():
    session, sink = SessionDouble(), RecordingSink()
    source = ZooKeeperSource(ZooKeeperSourceConfig(IFACE, configurators=False), session, sink)
    source.start()
    session.set(PROVIDERS, [provider(port=1), "junk"])
    assert sink.sets == [(["10.0.0.5:1"], "11")] and source.malformed == 1
    session.state("suspended")
    session.state("lost")
    assert len(sink.failures) == 1 and "suspended" in sink.failures[0]
    session.state("connected")
    session.set(PROVIDERS, [provider(port=1)])  # what the session's refetch on reconnect delivers
    assert sink.sets[-1] == (["10.0.0.5:1"], "12")
    session.state("suspended")
    assert len(sink.failures) == 2
    source.stop()
    assert session.watches == [] and session.listeners == []
    session.set(PROVIDERS, [])
    assert len(sink.sets) == 2


# -- config ----------------------------------------------------------------------------------------------------

MESH = """
registries:
  - {name: zk, type: zookeeper, hosts: "127.0.0.1:2181", root: /dubbo}
listeners:
  - {name: l, protocol: dubbo, address: "tcp:0", default_cluster: demo}
clusters:
  - name: demo
    protocol: dubbo
    discovery:
      type: zookeeper
%s
"""


def test_config_keys():
    factory = ZooKeeperDiscoveryFactory()
    verifyObject(IDiscoverySourceFactory, factory)
    c = loads(MESH % "      interface: org.Demo\n      group: g\n      version: '1.0'\n      configurators: false")
    d = c.cluster("demo").discovery
    assert (d.type, d.registry) == ("zookeeper", "zk")
    assert d.sourceConfig == ZooKeeperSourceConfig("org.Demo", "g", "1.0", "dubbo", False, "/dubbo")
    assert d.sourceConfig.providersPath == "/dubbo/org.Demo/providers"


@pytest.mark.parametrize("keys, message", [
    ("      group: g", "clusters[0].discovery: missing required key 'interface'"),
    ("      interface: 'a/b'", "clusters[0].discovery.interface: must be a Dubbo interface name"),
    ("      interface: org.Demo\n      version: 1.0", "clusters[0].discovery.version: must be a string"),
    ("      interface: org.Demo\n      configurators: 'yes'", "clusters[0].discovery.configurators: must be true"),
    ("      interface: org.Demo\n      protocol: 'a b'", "clusters[0].discovery.protocol: must be a URL scheme"),
    ("      interface: org.Demo\n      weight: 3", "mesh.yaml:12: clusters[0].discovery.weight: unknown key 'weight'"),
])
def test_config_errors_name_the_line_and_key(keys, message):
    with pytest.raises(ConfigError) as e:
        loads(MESH % keys, "mesh.yaml")
    assert message in str(e.value)
    assert str(e.value).startswith("mesh.yaml:")


# -- a real ZooKeeper and a real third-party provider registering itself ---------------------------------------


def startRegisteredProvider(zookeeperHosts, tag, root="/dubbo"):
    """sofa-rpc-node's RpcServer with its ZookeeperRegistry (tests/dubbo_peers/registered_provider.js)."""
    port = support.freePort()
    proc = support.Proc([NODE, os.path.join(PEERS, "registered_provider.js"), str(port), zookeeperHosts + root, tag],
                        cwd=PEERS)
    support.waitForPort(port, proc=proc.popen)
    return proc, port


needsPeers = pytest.mark.skipif(NODE is None or not os.path.isdir(os.path.join(PEERS, "node_modules", "sofa-rpc-node")),
                                reason="node or the Dubbo peers are not installed (npm ci in tests/dubbo_peers)")


@needsPeers
def test_real_provider_registered_by_sofa_rpc_node_is_discovered(zookeeper):
    session = ZooKeeperSession(ZooKeeperRegistryConfig(name="zk", hosts=zookeeper.hosts, root="/d2-real",
                                                       sessionTimeout=4.0), reactor())
    sink = RecordingSink()
    config = ZooKeeperSourceConfig("org.txmesh.peers.EchoService", group="SOFA", version="1.0.0", root="/d2-real")
    source = ZooKeeperSource(config, session, sink)
    onReactor(session.start)
    onReactor(source.start)
    a, portA = startRegisteredProvider(zookeeper.hosts, "A", "/d2-real")
    b, portB = startRegisteredProvider(zookeeper.hosts, "B", "/d2-real")
    try:
        waitFor(lambda: sink.sets and sink.sets[-1][0] == sorted(["127.0.0.1:%d" % portA, "127.0.0.1:%d" % portB]))
        # an operator disables B with an override, as Dubbo admin writes it
        k = KazooClient(hosts=zookeeper.hosts)
        k.start(30)
        try:
            k.create("/d2-real/org.txmesh.peers.EchoService/configurators/" + quote(
                "override://127.0.0.1:%d/org.txmesh.peers.EchoService?category=configurators&dynamic=false"
                "&group=SOFA&version=1.0.0&disabled=true" % (portB,), safe=""), makepath=True)
            waitFor(lambda: sink.sets[-1][0] == ["127.0.0.1:%d" % portA])
        finally:
            k.stop()
        a.signal(15)  # deregisters (sofa-rpc-node's unPublish), then exits
        waitFor(lambda: sink.sets[-1][0] == [])
        assert sink.failures == []
    finally:
        a.stop()
        b.stop()
        onReactor(source.stop)
        onReactor(session.stop)


def test_factory_makes_a_source_from_the_source_context():
    from twisted.internet.task import Clock

    from txmesh.discovery.base import SourceContext
    c = loads(MESH % "      interface: %s" % (IFACE,))
    d = c.cluster("demo").discovery
    session, sink, stats = SessionDouble(), RecordingSink(), StatsStore()
    context = SourceContext(Clock(), "demo", "dubbo", stats.scope(cluster="demo"), session)
    source = d.factory.makeSource(d.sourceConfig, context, sink)
    verifyObject(IDiscoverySource, source)
    source.start()
    session.set(CONFIGURATORS, [])
    session.set(PROVIDERS, [provider(port=1)])
    assert sink.sets == [(["10.0.0.5:1"], "12/11")]
    assert stats.total("zookeeper_updates", cluster="demo") == 1
    assert source.describe()["registry"] == "zk"
