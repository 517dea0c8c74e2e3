"""
The etcd discovery source (txmesh.discovery.etcd_source, plugin ``etcd``): the value formats (unit), its config
keys and their errors (file:line: key path), and the source on a real etcd (tests/registry_servers.py) fed by the
real etcdctl and by txmesh's own EtcdRegistrar, delivering host sets to a recording IHostSetSink; etcd killed:
``sourceFailed``, restarted: the set again.  The end-to-end test through a txmesh under twistd (curl through an
etcd-discovered cluster).
"""

import json
import os
import shutil
import subprocess
import textwrap

import pytest
from twisted.plugin import getPlugins
from zope.interface import implementer
from zope.interface.verify import verifyObject

import txmesh.plugins
from tests import support
from tests.reactor_thread import onReactor, reactor, waitFor
from tests.test_etcd import client, delete, put
from txmesh.config import ConfigError, EndpointConfig, loads
from txmesh.discovery.base import SourceContext
from txmesh.discovery.etcd import EtcdRegistrar
from txmesh.discovery.etcd_source import EtcdSource, EtcdSourceConfig, parseEntry
from txmesh.interfaces import IDiscoverySource, IDiscoverySourceFactory, IHostSetSink
from txmesh.stats import StatsStore

pytestmark = pytest.mark.timeout(40)
ETCDCTL = shutil.which("etcdctl")


# -- the value formats --

def test_json_value():
    e = parseEntry("/svc/orders/a", json.dumps({
        "address": "10.0.0.5:8080", "weight": 3, "priority": 1, "locality": "eu-1",
        "metadata": {"version": "1.2", "canary": True, "shard": 4}, "other": "ignored"}).encode())
    assert e == EndpointConfig("10.0.0.5", 8080, 3, 1, "eu-1", (("canary", "true"), ("shard", "4"), ("version", "1.2")))


def test_json_value_without_address_takes_the_key():
    assert parseEntry("/svc/orders/[::1]:9000", b'{"weight": 2}') == EndpointConfig("::1", 9000, 2)


def test_plain_value_then_the_key():
    assert parseEntry("/svc/orders/a", b"127.0.0.1:8080\n") == EndpointConfig("127.0.0.1", 8080)
    assert parseEntry("/svc/orders/host.example:81", b"") == EndpointConfig("host.example", 81)
    assert parseEntry("/svc/orders/host.example:81", b"up") == EndpointConfig("host.example", 81)


@pytest.mark.parametrize("key, value, why", [
    ("/svc/a", b"", "neither the value nor the key's last segment"),
    ("/svc/a", b"not an address", "neither"),
    ("/svc/a", b"10.0.0.1:0", "neither"),
    ("/svc/a", b'{"address": "10.0.0.1"}', "invalid address"),
    ("/svc/a", b'{"address": 5}', "address must be a string"),
    ("/svc/a", b'{"address": "10.0.0.1:80", "weight": 0}', "weight must be an integer from 1 to 128"),
    ("/svc/a", b'{"address": "10.0.0.1:80", "priority": "1"}', "priority must be"),
    ("/svc/a", b'{"address": "10.0.0.1:80", "metadata": {"a": {}}}', "metadata must be"),
    ("/svc/a", b'{"address": "10.0.0.1:80", "locality": 1}', "locality must be"),
    ("/svc/a", b'{"address": ', "not valid JSON"),
])
def test_invalid_entries(key, value, why):
    with pytest.raises(ValueError, match=why):
        parseEntry(key, value)


# -- config --

CONFIG = """\
listeners:
  - name: in
    address: tcp:0
    protocol: http1
    default_cluster: orders
registries:
  - name: reg
    type: etcd
    endpoints: [http://127.0.0.1:2379]
clusters:
  - name: orders
    protocol: http1
    discovery:
%s
"""


def load(discovery):
    return loads(CONFIG % (textwrap.indent(discovery, "      "),), "mesh.yaml")


def test_config():
    factory = [p for p in getPlugins(IDiscoverySourceFactory, txmesh.plugins) if p.name == "etcd"][0]
    verifyObject(IDiscoverySourceFactory, factory)
    c = load("type: etcd\nprefix: /services/orders/")
    d = c.clusters[0].discovery
    assert (d.type, d.registry, d.sourceConfig) == ("etcd", "reg", EtcdSourceConfig(prefix="/services/orders/"))


@pytest.mark.parametrize("discovery, message", [
    ("type: etcd", "mesh.yaml:13: clusters[0].discovery: missing required key 'prefix'"),
    ("type: etcd\nprefix: ''", "mesh.yaml:15: clusters[0].discovery.prefix: must be a non-empty key prefix"),
    ("type: etcd\nprefix: [a]", "mesh.yaml:15: clusters[0].discovery.prefix: must be a non-empty key prefix"),
    ("type: etcd\nprefix: /a/\npath: /b", "mesh.yaml:16: clusters[0].discovery.path: unknown key 'path'"),
])
def test_config_errors(discovery, message):
    with pytest.raises(ConfigError) as e:
        load(discovery)
    assert str(e.value).startswith(message), str(e.value)


def test_schema():
    import jsonschema
    import yaml
    from importlib import resources
    schema = json.loads(resources.files("txmesh").joinpath("mesh.schema.json").read_text())
    validator = jsonschema.Draft202012Validator(schema)
    validator.validate(yaml.safe_load(CONFIG % ("      type: etcd\n      prefix: /services/orders/",)))
    with pytest.raises(jsonschema.ValidationError):
        validator.validate(yaml.safe_load(CONFIG % ("      type: etcd\n      prefix: ''",)))


# -- the source on a real etcd --

@implementer(IHostSetSink)
class RecordingSink:
    def __init__(self):
        self.sets = []
        self.failures = []

    def hostsUpdated(self, endpoints, version):
        self.sets.append((endpoints, version))

    def sourceFailed(self, reason):
        self.failures.append(reason)

    def addresses(self):
        return sorted("%s:%d" % (e.host, e.port) for e in self.sets[-1][0]) if self.sets else None


def makeSource(etcdClient, prefix):
    store = StatsStore()
    sink = RecordingSink()
    context = SourceContext(reactor=reactor(), clusterName="orders", clusterProtocol="http1",
                            stats=store.scope(cluster="orders"), registry=etcdClient)
    source = EtcdSource(EtcdSourceConfig(prefix=prefix), context, sink)
    return source, sink, store


def etcdctl(server, *args):
    if not ETCDCTL:
        if os.environ.get("CI"):
            pytest.fail("etcdctl is not installed (.ci/run installs etcd-client)")
        pytest.skip("etcdctl is not installed (apt-get install etcd-client, as .ci/run does)")
    env = dict(os.environ, ETCDCTL_API="3")
    return subprocess.run([ETCDCTL, "--endpoints", server.url] + list(args), env=env, check=True, timeout=10,
                          capture_output=True).stdout


def test_source_reads_what_etcdctl_and_the_registrar_write(etcd):
    c = client(etcd.url)
    source, sink, store = makeSource(c, "/t-src/orders/")
    verifyObject(IDiscoverySource, source)
    etcdctl(etcd, "put", "/t-src/orders/a", "127.0.0.1:8001")
    etcdctl(etcd, "put", "/t-src/orders/127.0.0.1:8002", "")
    etcdctl(etcd, "put", "/t-src/orders-v2/x", "127.0.0.1:9999")  # a sibling prefix: not ours
    registrar = EtcdRegistrar(c, "/t-src/orders/me", json.dumps({"address": "127.0.0.1:8003", "weight": 5}), 5)
    try:
        onReactor(source.start)
        waitFor(lambda: sink.addresses() == ["127.0.0.1:8001", "127.0.0.1:8002"])
        onReactor(registrar.register)
        waitFor(lambda: sink.addresses() == ["127.0.0.1:8001", "127.0.0.1:8002", "127.0.0.1:8003"])
        assert [e.weight for e in sink.sets[-1][0] if e.port == 8003] == [5]
        etcdctl(etcd, "put", "/t-src/orders/bad", "nowhere")
        etcdctl(etcd, "put", "/t-src/orders/dup", "127.0.0.1:8001")
        rev = put(etcd, "/t-src/orders/b", '{"address": "127.0.0.1:8004", "metadata": {"zone": "z1"}}')
        waitFor(lambda: sink.sets[-1][1] == str(rev))
        assert sink.addresses() == ["127.0.0.1:8001", "127.0.0.1:8002", "127.0.0.1:8003", "127.0.0.1:8004"]
        assert store.value("discovery_etcd_invalid_entries", cluster="orders") == 1
        d = onReactor(source.describe)
        assert (d["prefix"], d["revision"], d["keys"], d["hosts"], d["registry"]) == (
            "/t-src/orders/", str(rev), 6, 4, "etcd")
        assert list(d["invalid"]) == ["/t-src/orders/bad"]
        assert d["watch"] == {"revision": rev, "watching": True, "lists": 1, "resumes": 0,
                              "compactions": 0}
        etcdctl(etcd, "del", "/t-src/orders/a")
        onReactor(registrar.deregister)
        waitFor(lambda: sink.addresses() == ["127.0.0.1:8001", "127.0.0.1:8002", "127.0.0.1:8004"])  # dup now wins
        etcdctl(etcd, "del", "--prefix", "/t-src/orders/")
        waitFor(lambda: sink.addresses() == [])
        assert sink.failures == []
    finally:
        onReactor(source.stop)
        onReactor(c.stop)


def test_source_failure_keeps_reporting_then_recovers(etcd_server):
    c = client(etcd_server.url, timeout=1.0)
    source, sink, _ = makeSource(c, "/t-fail/")
    put(etcd_server, "/t-fail/a", "127.0.0.1:8001")
    try:
        onReactor(source.start)
        waitFor(lambda: sink.addresses() == ["127.0.0.1:8001"])
        n = len(sink.sets)
        etcd_server.kill()
        waitFor(lambda: sink.failures, timeout=10)
        assert len(sink.sets) == n  # a failure delivers no set: the sink keeps the last one
        assert onReactor(source.describe)["error"] == sink.failures[-1]
        etcd_server.start()
        delete(etcd_server, "/t-fail/a")
        put(etcd_server, "/t-fail/b", "127.0.0.1:8002")
        waitFor(lambda: sink.addresses() == ["127.0.0.1:8002"], timeout=20)
        assert onReactor(source.describe)["error"] is None
    finally:
        onReactor(source.stop)
        onReactor(c.stop)


# -- end to end: a txmesh under twistd, its cluster's hosts in etcd --

E2E_CONFIG = """
admin:
  address: tcp:{admin}:interface=127.0.0.1
listeners:
  - name: http_in
    address: tcp:{listen}:interface=127.0.0.1
    protocol: http1
    default_cluster: backend
registries:
  - name: reg
    type: etcd
    endpoints: [{etcd}]
clusters:
  - name: backend
    protocol: http1
    discovery:
      type: etcd
      prefix: /t-e2e/backend/
"""

NGINX_SERVER = "server { listen 127.0.0.1:%d; location / { return 200 'ok from %d'; } }"


@pytest.mark.skipif(not support.NGINX or not shutil.which("curl"), reason="needs nginx and curl")
@pytest.mark.timeout(60)
def test_end_to_end_through_txmesh(etcd):
    ports = [support.freePort(), support.freePort()]
    nginx, _ = support.startNginx("\n".join(NGINX_SERVER % (p, p) for p in ports))
    admin, listen = support.freePort(), support.freePort()
    put(etcd, "/t-e2e/backend/a", "127.0.0.1:%d" % (ports[0],))
    mesh = support.startTxmesh(E2E_CONFIG.format(admin=admin, listen=listen, etcd=etcd.url), admin)

    def curl():
        out = subprocess.run(["curl", "-s", "--max-time", "3", "http://127.0.0.1:%d/" % (listen,)],
                             capture_output=True, timeout=10)
        return out.stdout.decode()

    def until(predicate, timeout=15.0):
        import time
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(0.05)
        raise AssertionError("not within %.0fs\n%s" % (timeout, mesh.output()[-3000:]))

    try:
        until(lambda: curl() == "ok from %d" % (ports[0],))
        put(etcd, "/t-e2e/backend/b", json.dumps({"address": "127.0.0.1:%d" % (ports[1],)}))
        delete(etcd, "/t-e2e/backend/a")
        until(lambda: curl() == "ok from %d" % (ports[1],))
        clusters = json.loads(support.adminGet(admin, "/clusters")[1])
        backend = [c for c in clusters if c["name"] == "backend"][0]
        assert [h["address"] for h in backend["hosts"]] == ["127.0.0.1:%d" % (ports[1],)]
    finally:
        mesh.stop()
        nginx.stop()
