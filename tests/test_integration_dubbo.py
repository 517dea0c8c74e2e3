"""
Smoke tests, end to end over loopback: txmesh under twistd between a real third-party Dubbo 2 consumer and provider
(sofa-rpc-node + dubbo-remoting, hessian2; tests/dubbo_peers, installed by `npm ci` there), plus a raw-frame client.
Skipped when node or the peers are not installed.  Timeouts, heartbeats, a lost provider and bad frames are
tested in memory against the clock in tests/test_dubbo_listener.py.
"""

import json
import os
import shutil
import socket
import subprocess
import time

import pytest

from tests import support
from txmesh.protocols.dubbo import codec as dc
from txmesh.protocols.dubbo.hessian2 import Hessian2Writer

PEERS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dubbo_peers")
NODE = shutil.which("node")

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(NODE is None, reason="node is not installed"),
    pytest.mark.skipif(not os.path.isdir(os.path.join(PEERS, "node_modules", "sofa-rpc-node")),
                       reason="Dubbo peers not installed (run `npm ci` in tests/dubbo_peers)"),
]

IFACE = "org.txmesh.peers.EchoService"

CONFIG = """
admin:
  address: tcp:{admin}:interface=127.0.0.1
listeners:
  - name: dubbo_in
    protocol: dubbo
    address: tcp:{listen}:interface=127.0.0.1
    route_config:
      virtual_hosts:
        - name: all
          domains: ["*"]
          routes:
            - match: {{dubbo: {{interface: "org.txmesh.peers.*", version: "1.0.0"}}}}
              route: {{cluster: provider}}
clusters:
  - name: provider
    protocol: dubbo
    endpoints: [{{address: "127.0.0.1:{provider}"}}]
"""


def request(requestId, method, desc, args, attachments=None, interface=IFACE, twoWay=True):
    """A hessian2 Dubbo request frame built from strings and ints."""
    w = Hessian2Writer()
    for s in ("2.0.2", interface, "1.0.0", method, desc):
        w.writeString(s)
    for a in args:
        w.writeString(a) if isinstance(a, str) else w.writeInt(a)
    w.writeSimpleMap(dict({"path": interface, "interface": interface, "version": "1.0.0", "group": "SOFA"},
                          **(attachments or {})))
    body = w.getvalue()
    flag = dc.FLAG_REQUEST | dc.HESSIAN2 | (dc.FLAG_TWOWAY if twoWay else 0)
    return dc.encodeHeader(flag, 0, requestId, len(body)) + body


class Raw:
    """A raw Dubbo client socket."""

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.decoder = dc.DubboDecoder()
        self.frames = []

    def send(self, data):
        self.sock.sendall(data)

    def read(self, n=1, timeout=5.0):
        deadline = time.monotonic() + timeout
        while len(self.frames) < n:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                break
            if not data:
                break
            self.frames += self.decoder.feed(data)
        got, self.frames = self.frames[:n], self.frames[n:]
        return got

    def close(self):
        self.sock.close()


def startProvider():
    port = support.freePort()
    proc = support.Proc([NODE, os.path.join(PEERS, "provider.js"), str(port)], cwd=PEERS)
    support.waitForPort(port, proc=proc.popen)
    return proc, port


def consume(port, scenario, n=100):
    out = subprocess.run([NODE, os.path.join(PEERS, "consumer.js"), "127.0.0.1:%d" % port, scenario, str(n)],
                         cwd=PEERS, capture_output=True, timeout=60, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture
def mesh():
    provider, providerPort = startProvider()
    admin, listen = support.freePort(), support.freePort()
    proc = support.startTxmesh(CONFIG.format(admin=admin, listen=listen, provider=providerPort), admin)
    support.waitForPort(listen, proc=proc.popen)
    env = type("Mesh", (), {})()
    env.provider, env.providerPort, env.admin, env.port, env.proc = provider, providerPort, admin, listen, proc
    env.stats = lambda: json.loads(support.adminGet(admin, "/stats")[1])
    yield env
    proc.stop()
    provider.stop()


def total(stats, name, **labels):
    return sum(s["value"] for s in stats.get(name, []) if labels.items() <= s["labels"].items())


def test_real_consumer_through_txmesh_matches_direct(mesh):
    direct = consume(mesh.providerPort, "basic")
    proxied = consume(mesh.port, "basic")
    assert proxied == direct
    assert proxied["echo"] == {"ok": "héllo"} and proxied["add"] == {"ok": 42}
    assert proxied["size"] == {"ok": 3} and proxied["count"] == {"ok": 2}
    assert proxied["fail"]["message"] == "boom"  # the provider's exception, relayed
    stats = mesh.stats()
    assert total(stats, "dubbo_requests", service=IFACE, method="echo", kind="two_way") == 1
    assert total(stats, "dubbo_responses", method="echo", status="20") == 1


def test_many_concurrent_calls_share_one_upstream_connection(mesh):
    assert consume(mesh.port, "concurrent", 300) == {"correct": 300}
    assert total(mesh.stats(), "upstream_cx_total", cluster="provider") == 1


def test_raw_calls_attachments_one_way_and_heartbeat(mesh):
    raw = Raw(mesh.port)
    raw.send(request(7, "echo", "Ljava/lang/String;", ["hi"], {"traceid": "t-1"}))
    raw.send(request(8, "add", "II", [20, 22]))
    raw.send(dc.encodeHeartbeat(99))
    got = {f.requestId: f for f in raw.read(3)}
    assert got[99].event and got[99].status == dc.OK
    assert got[7].status == dc.OK and b"hi" in got[7].body
    assert got[8].status == dc.OK
    raw.send(request(9, "echo", "Ljava/lang/String;", ["one-way"], twoWay=False))
    raw.send(request(10, "echo", "Ljava/lang/String;", ["after"]))
    [after] = raw.read(1)
    assert after.requestId == 10 and b"after" in after.body
    stats = mesh.stats()
    assert total(stats, "dubbo_requests", kind="one_way") == 1
    assert total(stats, "dubbo_heartbeats") == 1
    raw.close()
