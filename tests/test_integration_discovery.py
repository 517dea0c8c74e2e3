"""
Host sets changing under load (issue 12, parts 4 and 5), over loopback with real processes: txmesh under twistd
with a file-discovered cluster in front of three real upstreams (tests/upstream_server.py); keep-alive clients
in parallel while the endpoints file moves the set among them (zero failed requests, traffic follows the set); a
slow response in flight on a host that is removed completes.  And in process, on the real reactor: listeners accept
only once the discovered cluster is warm.
"""

import http.client
import json
import os
import sys
import tempfile
import threading
import time

import pytest

from tests import support
from tests.reactor_thread import onReactor, waitFor

pytestmark = pytest.mark.timeout(60)

CONFIG = """
admin:
  address: tcp:{admin}:interface=127.0.0.1
listeners:
  - name: outbound
    protocol: http
    address: tcp:{listen}:interface=127.0.0.1
    default_cluster: web
clusters:
  - name: web
    lb_policy: {policy}
    discovery:
      type: file
      path: {path}
      refresh_interval: 2s
      initial_fetch_timeout: {fetch}
"""


def writeEndpoints(path, ports, version):
    """As a careful writer does: a temporary file renamed over the watched one."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"version": str(version), "endpoints": [{"address": "127.0.0.1:%d" % p} for p in ports]}, f)
    os.rename(tmp, path)


@pytest.fixture(scope="module")
def upstreams():
    procs, ports = [], []
    try:
        for _ in range(3):
            proc, port, _raw = support.startUpstream()
            procs.append(proc)
            ports.append(port)
        yield ports
    finally:
        for p in procs:
            p.stop()


def clusterInfo(admin):
    _, body = support.adminGet(admin, "/clusters")
    [web] = [c for c in json.loads(body) if c["name"] == "web"]
    return web


def waitForVersion(admin, version, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        web = clusterInfo(admin)
        if web["discovery"]["version"] == str(version):
            return web
        time.sleep(0.02)
    raise AssertionError("version %s not applied within %.0fs: %r" % (version, timeout, clusterInfo(admin)))


def startMesh(ports, policy):
    """txmesh under twistd, its cluster ``web`` discovered from a file listing ``ports`` (version 0)."""
    path = os.path.join(tempfile.mkdtemp(prefix="txmesh-eds-"), "web.json")
    writeEndpoints(path, ports, 0)
    admin, listen = support.freePort(), support.freePort()
    mesh = support.startTxmesh(CONFIG.format(admin=admin, listen=listen, path=path, policy=policy, fetch="5s"),
                               admin)
    try:
        support.waitForPort(listen)
        waitForVersion(admin, 0)
    except Exception:
        mesh.stop()
        raise
    return mesh, path, admin, listen


class Client(threading.Thread):
    """One keep-alive HTTP/1.1 client sending GET /echo until told to stop (each request bounded by 10 s)."""

    def __init__(self, port, stop):
        super().__init__(daemon=True)
        self.port, self.stop = port, stop
        self.ok = 0
        self.failures = []
        self.upstreams = []  # (time, upstream port)

    def run(self):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            while not self.stop.is_set():
                try:
                    conn.request("GET", "/echo")
                    response = conn.getresponse()
                    response.read()
                except (OSError, http.client.HTTPException) as e:
                    self.failures.append(repr(e))
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                    continue
                if response.status != 200:
                    self.failures.append((response.status, response.getheader("x-txmesh-error")))
                else:
                    self.ok += 1
                    self.upstreams.append((time.monotonic(), int(response.getheader("x-upstream-port"))))
        finally:
            conn.close()


def test_host_set_moves_under_load_without_a_failed_request(upstreams):
    a, b, c = upstreams
    mesh, path, admin, listen = startMesh([a, b], "least_request")
    try:
        stop = threading.Event()
        clients = [Client(listen, stop) for _ in range(4)]
        for client in clients:
            client.start()
        sets = [[b, c], [c], [a, c], [a], [a, b, c], [b], [a, b], [c]]
        try:
            for version, ports in enumerate(sets, 1):
                time.sleep(0.25)
                writeEndpoints(path, ports, version)
                waitForVersion(admin, version)
            changed = time.monotonic()
            time.sleep(0.3)
        finally:
            stop.set()
            for client in clients:
                client.join(15)
        failures = [f for client in clients for f in client.failures]
        total = sum(client.ok for client in clients)
        assert failures == [], failures
        assert total > 100, total
        # after the last change, every request went to the one host left
        late = {port for client in clients for t, port in client.upstreams if t > changed + 0.05}
        assert late == {c}, late
        web = clusterInfo(admin)
        stats, disc = web["stats"], web["discovery"]
        assert disc["state"] == "ok" and disc["source"]["watch"] == "inotify" and disc["staleness_seconds"] == 0
        assert [h["address"] for h in web["hosts"]] == ["127.0.0.1:%d" % c]
        assert stats["membership_change"] == 1 + len(sets)
    finally:
        mesh.stop()


def test_slow_response_on_a_removed_host_completes(upstreams):
    a, b, _ = upstreams
    mesh, path, admin, listen = startMesh([a], "round_robin")
    try:
        result = {}

        def slow():
            conn = http.client.HTTPConnection("127.0.0.1", listen, timeout=10)
            try:
                conn.request("GET", "/slow/1500")
                response = conn.getresponse()
                result["answer"] = (response.status, response.read())
            finally:
                conn.close()

        thread = threading.Thread(target=slow, daemon=True)
        thread.start()
        deadline = time.monotonic() + 5
        while clusterInfo(admin)["stats"]["upstream_cx_active"] < 1 and time.monotonic() < deadline:
            time.sleep(0.02)  # the slow request is on its way to a
        writeEndpoints(path, [b], 1)  # a leaves while its answer is pending
        web = waitForVersion(admin, 1)
        assert [h["address"] for h in web["hosts"]] == ["127.0.0.1:%d" % b]
        conn = http.client.HTTPConnection("127.0.0.1", listen, timeout=10)
        conn.request("GET", "/echo")
        response = conn.getresponse()
        assert int(response.getheader("x-upstream-port")) == b and response.read()
        conn.close()
        thread.join(10)
        assert result["answer"] == (200, b"slow done\n")
        deadline = time.monotonic() + 5
        while clusterInfo(admin)["stats"]["upstream_cx_active"] > 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert clusterInfo(admin)["stats"]["upstream_cx_active"] <= 1  # a's pool closed its connection
    finally:
        mesh.stop()


def test_listeners_accept_once_the_cluster_is_warm(upstreams, tmp_path):
    """In process on the real reactor: until the first host set, the listener's port takes no connection."""
    from twisted.internet import reactor, tcp

    from txmesh.config import loads
    from txmesh.service import MeshService

    path = str(tmp_path / "web.json")
    admin, listen = support.freePort(), support.freePort()
    config = loads(CONFIG.format(admin=admin, listen=listen, path=path, policy="round_robin", fetch="30s"))
    service = MeshService(config, reactor, installSignal=lambda *a: None)

    def listening():
        return [r for r in reactor.getReaders() if isinstance(r, tcp.Port) and r.getHost().port == listen]

    onReactor(service.startService)
    try:
        assert not onReactor(lambda: service.serving)
        assert onReactor(listening) == []  # bound, not accepting
        with pytest.raises(Exception) as e:
            support.adminGet(admin, "/ready")
        assert "503" in str(e.value)
        writeEndpoints(path, [upstreams[0]], 1)
        waitFor(lambda: service.serving, timeout=5)
        assert len(onReactor(listening)) == 1
        conn = http.client.HTTPConnection("127.0.0.1", listen, timeout=10)
        conn.request("GET", "/echo")
        response = conn.getresponse()
        assert response.status == 200 and int(response.getheader("x-upstream-port")) == upstreams[0]
        response.read()
        conn.close()
        assert support.adminGet(admin, "/ready") == (200, b"LIVE\n")
    finally:
        onReactor(service.stopService, timeout=20)
