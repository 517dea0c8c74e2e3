"""
The file discovery source (issue 12, part 1): endpoints files in txmesh's shape and Envoy's, refused with
file:line:key-path errors, watched by a stat poll (Clock) and by inotify (the real reactor, in its thread).
"""

import json
import os
import random

import pytest
from twisted.internet.task import Clock
from twisted.logger import Logger
from zope.interface.verify import verifyObject

from tests.reactor_thread import onReactor, waitFor
from tests.test_cluster import FakePool, lbFactory
from txmesh.config import ClusterConfig, EndpointConfig
from txmesh.discovery.base import ClusterDiscovery
from txmesh.discovery.files import FileSource, FileSourceConfig, FileSourceFactory, parseEndpointsFile
from txmesh.discovery_config import DiscoveryConfig
from txmesh.errors import ConfigError
from txmesh.interfaces import IDiscoverySource
from txmesh.protocols.http1.protocol import HTTP1
from txmesh.stats import StatsStore
from txmesh.upstream.cluster import Cluster

YAML_FILE = b"""\
version: "7"
endpoints:
  - address: 10.0.0.1:80
    weight: 2
  - {address: "[::1]:81", priority: 1, locality: eu/a, metadata: {version: "1.2"}}
"""

ENVOY_CLA = {
    "cluster_name": "web",
    "endpoints": [
        {"locality": {"region": "eu", "zone": "a"},
         "lb_endpoints": [
             {"endpoint": {"address": {"socket_address": {"address": "10.0.0.1", "port_value": 80}}},
              "load_balancing_weight": 3},
             {"endpoint": {"address": {"socket_address": {"address": "10.0.0.2", "port_value": 80}}},
              "health_status": "DRAINING"}]},
        {"priority": 1,
         "lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "::1", "port_value": 90}}}}]},
    ],
}


def test_yaml_file():
    endpoints, version = parseEndpointsFile(YAML_FILE, "eps.yaml")
    assert version == "7"
    assert endpoints == (EndpointConfig("10.0.0.1", 80, 2),
                         EndpointConfig("::1", 81, 1, 1, "eu/a", (("version", "1.2"),)))


def test_json_file_and_content_version():
    data = json.dumps({"endpoints": [{"address": "10.0.0.1:80"}]}).encode()
    endpoints, version = parseEndpointsFile(data, "eps.json")
    assert endpoints == (EndpointConfig("10.0.0.1", 80),)
    assert version.startswith("sha256:") and len(version) == 19
    assert parseEndpointsFile(data, "eps.json")[1] == version
    assert parseEndpointsFile(data + b" ", "eps.json")[1] != version


def test_envoy_cluster_load_assignment():
    endpoints, _ = parseEndpointsFile(json.dumps(ENVOY_CLA).encode(), "cla.json")
    assert endpoints == (EndpointConfig("10.0.0.1", 80, 3, 0, "eu/a"), EndpointConfig("::1", 90, 1, 1, ""))
    response = {"version_info": "12", "resources": [dict(ENVOY_CLA, **{
        "@type": "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"})]}
    endpoints2, version = parseEndpointsFile(json.dumps(response).encode(), "eds.json")
    assert (endpoints2, version) == (endpoints, "12")


@pytest.mark.parametrize("data, message", [
    (b'{"endpoints": [\n  {"address": "10.0.0.1:80"},\n  {"address": "10.0.0.1"}\n]}',
     "eps:3: endpoints[1].address: invalid address '10.0.0.1' (use host:port or [v6]:port)"),
    (b"endpoints:\n  - address: 10.0.0.1:80\n    wieght: 2\n",
     "eps:3: endpoints[0].wieght: unknown key 'wieght'"),
    (b"endpoints:\n  - {address: 'a:1'}\n  - {address: 'a:1'}\n",
     "eps:3: endpoints[1].address: duplicate endpoint 'a:1' (also endpoints[0])"),
    (b"version: 1\n", "eps:1: missing required key 'endpoints'"),
    (b"endpoints: [\n  {address: 'a:1'\n", "eps:3: invalid YAML"),
    (b"- a\n- b\n", "eps:1: must be a mapping, not a list"),
    (b"   \n", "eps:1: the endpoints file is empty"),
    (b"\xff\xfe", "eps: not UTF-8 text"),
    (json.dumps({"resources": []}).encode(), "eps:1: resources: must hold exactly one ClusterLoadAssignment, got 0"),
    (b'{"endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "h"}}}}]}]}',
     "eps:1: endpoints[0].lb_endpoints[0].endpoint.address.socket_address: missing required key 'port_value'"),
])
def test_bad_files_name_file_line_and_key(data, message):
    with pytest.raises(ConfigError) as e:
        parseEndpointsFile(data, "eps")
    assert str(e.value).startswith(message), str(e.value)


class Harness:
    def __init__(self, tmp_path, reactor=None, interval=5.0, name="eps.yaml"):
        self.clock = reactor if reactor is not None else Clock()
        self.path = str(tmp_path / name)
        self.store = StatsStore()
        dconfig = DiscoveryConfig(type="file", factory=FileSourceFactory(),
                                  sourceConfig=FileSourceConfig(self.path, interval), initialFetchTimeout=1.0)
        config = ClusterConfig("web", descriptor=HTTP1, discovery=dconfig)
        self.cluster = Cluster("web", config, (), lbFactory("round_robin"), FakePool, random.Random(1),
                               self.store.scope(cluster="web"), clock=self.clock)
        self.sink = ClusterDiscovery(self.cluster, dconfig, self.clock, self.store.scope(cluster="web"))
        self.events = []
        self.sink.log = Logger(observer=self.events.append)

    def write(self, text):
        """As a careful writer does: a temporary file renamed over the watched one."""
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.rename(tmp, self.path)

    def addresses(self):
        return sorted(h.address for h in self.cluster.hosts)

    def value(self, name):
        return self.store.value(name, cluster="web")


def eps(*ports):
    return "endpoints:\n" + "".join("  - address: 127.0.0.1:%d\n" % p for p in ports)


def test_poll_sees_changes_and_keeps_the_last_set_on_a_bad_file(tmp_path):
    h = Harness(tmp_path)
    h.write(eps(1, 2))
    warm = h.sink.start()
    assert warm.called and h.addresses() == ["127.0.0.1:1", "127.0.0.1:2"]
    assert h.sink.describe()["source"]["watch"] == "poll"  # a Clock has no file descriptors to watch
    assert verifyObject(IDiscoverySource, h.sink.source)
    h.write(eps(2, 3))
    h.clock.advance(5)
    assert h.addresses() == ["127.0.0.1:2", "127.0.0.1:3"]
    h.clock.advance(5)  # unchanged: not read again
    assert h.sink.describe()["source"]["reads"] == 2
    h.write("endpoints:\n  - address: nope\n")
    for _ in range(3):
        h.clock.advance(5)
    assert h.addresses() == ["127.0.0.1:2", "127.0.0.1:3"]  # the last good set serves
    assert h.value("update_rejected") == 1  # each version of a file is read once
    d = h.sink.describe()
    assert d["state"] == "failing" and d["last_failure"] == (
        "%s:2: endpoints[0].address: invalid address 'nope' (use host:port or [v6]:port)" % (h.path,))
    assert d["staleness_seconds"] == 10.0
    assert sum("failing" in e["log_format"] for e in h.events) == 1
    h.write(eps(4))
    h.clock.advance(5)
    assert h.addresses() == ["127.0.0.1:4"] and h.sink.describe()["state"] == "ok"
    h.sink.stop()
    assert h.clock.getDelayedCalls() == []


def test_missing_file_fails_once_then_recovers(tmp_path):
    h = Harness(tmp_path)
    warm = h.sink.start()
    assert not warm.called and h.value("update_failure") == 1
    h.clock.advance(0.5)
    h.clock.advance(0.5)  # initial_fetch_timeout 1s: serving, empty
    assert warm.called and h.value("init_fetch_timeout") == 1
    h.clock.advance(5)
    assert h.value("update_failure") == 1  # still missing: not counted again
    h.write(eps(1))
    h.clock.advance(5)
    assert h.addresses() == ["127.0.0.1:1"]
    os.unlink(h.path)
    h.clock.advance(5)
    assert h.addresses() == ["127.0.0.1:1"] and h.value("update_failure") == 2  # deleted: the last set kept
    h.sink.stop()


def test_inotify_sees_an_atomic_rename_at_once(tmp_path):
    """The real reactor: a rename is seen through inotify, long before the 60 s poll."""
    from twisted.internet import reactor
    h = Harness(tmp_path, reactor=reactor, interval=60.0, name="eps.json")
    h.write(json.dumps({"version": "1", "endpoints": [{"address": "127.0.0.1:1"}]}))
    onReactor(h.sink.start)
    try:
        assert onReactor(lambda: h.sink.describe()["source"]["watch"]) == "inotify"
        for i in range(2, 6):
            h.write(json.dumps({"version": str(i), "endpoints": [{"address": "127.0.0.1:%d" % i}]}))
            waitFor(lambda: h.sink.version == str(i), timeout=5)
            assert onReactor(h.addresses) == ["127.0.0.1:%d" % i]
        with open(h.path, "w") as f:  # an in-place write is seen too (IN_CLOSE_WRITE)
            f.write(eps(9))
        waitFor(lambda: h.addresses() == ["127.0.0.1:9"], timeout=5)
    finally:
        onReactor(h.sink.stop)
