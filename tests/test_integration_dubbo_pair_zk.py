"""
The Dubbo sidecar pair registered in ZooKeeper, end to end (issue 12; docs/discovery.md, "A Dubbo sidecar pair
registered in ZooKeeper"): a real ZooKeeper (Debian's, tests/registry_servers.py), a real provider and a real
consumer (sofa-rpc-node 2.10 + dubbo-remoting, tests/dubbo_peers), and two txmesh processes under twistd running the
doc's two configs (only ports, the ZooKeeper address and the root changed):

  consumer --> A (outbound, dubbo_registry route) --> B (inbound, registered in ZooKeeper) --> provider

The provider stopped, restarted, and B SIGTERMed, each step bounded (<= 10 s).
"""

import json
import os
import re
import signal
import subprocess
import time
from importlib import resources

import jsonschema
import pytest
import yaml
from kazoo.client import KazooClient

from tests import support
from tests.test_integration_dubbo import NODE, PEERS, Raw, request
from tests.test_zookeeper_discovery import needsPeers
from txmesh.config import loads
from txmesh.protocols.dubbo import codec as dc
from txmesh.protocols.dubbo import url as dubbo_url

DOC = os.path.join(support.ROOT, "docs", "discovery.md")
IFACE = "org.txmesh.peers.EchoService"
ROOT = "/d6-pair"
CLUSTER = "dubbo:zk:%s:SOFA:1.0.0" % (IFACE,)


def docConfigs():
    """The doc's two YAML blocks: (B, the provider's sidecar; A, the consumer's sidecar)."""
    text = open(DOC, encoding="utf-8").read()
    section = text[text.index("## A Dubbo sidecar pair registered in ZooKeeper"):text.index("## When a registry")]
    b, a = re.findall(r"```yaml\n(.*?)```", section, re.S)
    return b, a


def _port(address):
    """tcp:15008:interface=127.0.0.1 -> 15008."""
    return int(address.split(":")[1])


def rewrite(text, ports, zkHosts):
    """
    One of the doc's configs for this machine: ``ports`` maps each port the doc uses to a free one; the registry
    points at the test's ZooKeeper under its own root.  Nothing else changes.
    """
    cfg = yaml.safe_load(text)
    cfg["admin"]["address"] = cfg["admin"]["address"].replace(":%d:" % _port(cfg["admin"]["address"]),
                                                              ":%d:" % ports[_port(cfg["admin"]["address"])])
    for listener in cfg["listeners"]:
        old = _port(listener["address"])
        listener["address"] = listener["address"].replace(":%d:" % old, ":%d:" % ports[old])
    for cluster in cfg["clusters"]:
        for e in cluster.get("endpoints", ()):
            host, port = e["address"].rsplit(":", 1)
            e["address"] = "%s:%d" % (host, ports[int(port)])
    for registry in cfg["registries"]:
        registry["hosts"], registry["root"] = zkHosts, ROOT
    return yaml.safe_dump(cfg, sort_keys=False)


def test_doc_configs_load_validate_and_fit_together():
    bText, aText = docConfigs()
    b, a = loads(bText, "b.yaml"), loads(aText, "a.yaml")
    schema = json.loads(resources.files("txmesh").joinpath("mesh.schema.json").read_text())
    validator = jsonschema.Draft202012Validator(schema)
    validator.validate(yaml.safe_load(bText))
    validator.validate(yaml.safe_load(aText))
    [service] = b.registration.publish[0].services
    assert (b.registration.listener, b.registration.healthCheck.type) == ("dubbo_in", "dubbo")
    assert (service.interface, service.group, service.version) == (IFACE, "SOFA", "1.0.0")  # the peers' service
    [route] = a.listeners[0].routeConfig.virtualHosts[0].routes
    assert route.action.registry == "zk"
    assert a.registries["zk"].hosts == b.registries["zk"].hosts and a.registries["zk"].root == b.registries["zk"].root
    assert a.clusters[0].endpoints == ()  # A names no provider: it learns B from ZooKeeper


class Consumer:
    """tests/dubbo_peers/line_consumer.js: one connection to A for the whole test; ``call`` is one echo(), bounded."""

    def __init__(self, port):
        self.popen = subprocess.Popen([NODE, os.path.join(PEERS, "line_consumer.js"), "127.0.0.1:%d" % port, "5000"],
                                      cwd=PEERS, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=subprocess.DEVNULL)
        self.lines = support.JsonLines(self.popen)

    def call(self, text, timeout=10.0):
        self.popen.stdin.write(text.encode() + b"\n")
        self.popen.stdin.flush()
        return self.lines.next(timeout)

    def stop(self):
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(5)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)


def waitUntil(predicate, what, timeout=10.0):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("not within %.0fs: %s" % (timeout, what))
        time.sleep(0.05)


def _startProvider(port):
    proc = support.Proc([NODE, os.path.join(PEERS, "provider.js"), str(port)], cwd=PEERS)
    support.waitForPort(port, proc=proc.popen)
    return proc


@needsPeers
@pytest.mark.timeout(60)
def test_consumer_to_a_to_b_to_provider_through_zookeeper(zookeeper):
    bText, aText = docConfigs()
    ports = {p: support.freePort() for p in (9901, 9902, 15003, 15008, 20880)}
    aAdmin, bAdmin, aOut, bIn, app = (ports[p] for p in (9901, 9902, 15003, 15008, 20880))
    providersPath = "%s/%s/providers" % (ROOT, IFACE)
    k = KazooClient(hosts=zookeeper.hosts)
    k.start(30)
    provider = _startProvider(app)
    a = b = consumer = None

    def registered():
        return [dubbo_url.decode(c) for c in (k.get_children(providersPath) if k.exists(providersPath) else [])]

    def aCluster():
        found = [c for c in json.loads(support.adminGet(aAdmin, "/clusters")[1]) if c["name"] == CLUSTER]
        return found[0] if found else None

    def aHosts():
        c = aCluster()
        return None if c is None else sorted(h["address"] for h in c["hosts"])

    try:
        b = support.startTxmesh(rewrite(bText, ports, zookeeper.hosts), bAdmin)
        [url] = waitUntil(registered, "B registers the provider in ZooKeeper")
        assert (url.host, url.port, url.path) == ("127.0.0.1", bIn, IFACE)  # B's inbound listener, not the app
        assert (url.get("group"), url.get("version"), url.get("application")) == ("SOFA", "1.0.0", "echo-provider")
        a = support.startTxmesh(rewrite(aText, ports, zookeeper.hosts), aAdmin)
        support.waitForPort(aOut, proc=a.popen)
        assert aCluster() is None  # nothing until the first call

        consumer = Consumer(aOut)
        assert consumer.call("héllo pair")["ok"] == "héllo pair"  # consumer -> A -> B -> provider
        cluster = aCluster()
        assert sorted(h["address"] for h in cluster["hosts"]) == ["127.0.0.1:%d" % bIn]
        d = cluster["discovery"]
        assert (d["type"], d["registry"], d["state"], d["staleness_seconds"]) == ("zookeeper", "zk", "ok", 0.0)
        assert (d["source"]["path"], d["source"]["hosts"]) == (providersPath, 1)
        bStats = json.loads(support.adminGet(bAdmin, "/stats")[1])
        assert sum(s["value"] for s in bStats["upstream_rq_total"]
                   if s["labels"].get("cluster") == "local_app") >= 1  # B handed it to the app

        # the provider stops: B withdraws, A's cluster empties, calls get Dubbo's no-provider status at once
        provider.stop()
        waitUntil(lambda: registered() == [], "B withdraws the provider")
        waitUntil(lambda: aHosts() == [], "A's cluster empties")
        out = consumer.call("nobody")
        assert "ok" not in out and out["ms"] < 3000, out
        assert "no_healthy_upstream" in out["message"] and "echo-outbound" in out["message"], out  # from A
        raw = Raw(aOut)  # the status byte itself: SERVICE_NOT_FOUND (60), with the request's id
        try:
            raw.send(request(77, "echo", "Ljava/lang/String;", ["nobody"]))
            [reply] = raw.read(timeout=5)
        finally:
            raw.close()
        assert (reply.status, reply.requestId) == (dc.SERVICE_NOT_FOUND, 77)
        aStats = json.loads(support.adminGet(aAdmin, "/stats")[1])
        assert sum(s["value"] for s in aStats["update_success"] if s["labels"].get("cluster") == CLUSTER) >= 2

        # the provider is back: B registers again, A has B again, calls succeed on the same consumer connection
        provider = _startProvider(app)
        waitUntil(lambda: aHosts() == ["127.0.0.1:%d" % bIn], "A sees B again")
        assert consumer.call("back")["ok"] == "back"

        # B SIGTERMed: its registration goes first, while its listener still accepts; then the listener closes
        b.signal(signal.SIGTERM)
        waitUntil(lambda: registered() == [], "B withdraws on SIGTERM")
        assert support.accepts(bIn), "B stopped accepting before its registration was withdrawn"
        waitUntil(lambda: aHosts() == [], "A drops B")
        waitUntil(lambda: not support.accepts(bIn), "B's listener closes after drain_grace")
        assert b.popen.wait(10) in (0, -signal.SIGTERM)
        assert "registration: draining; withdrawing 127.0.0.1:%d" % (bIn,) in b.output()
    finally:
        if consumer is not None:
            consumer.stop()
        for proc in (a, b, provider):
            if proc is not None:
                proc.stop()
        k.stop()
