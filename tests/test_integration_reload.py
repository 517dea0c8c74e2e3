"""
100 reloads in a row under load (issue 13's check), over loopback: txmesh under twistd with a keep-alive HTTP/1.1
client, a grpcio client and the real sofa-rpc-node Dubbo consumer running at once against two gRPC servers and two
Dubbo providers.  SIGHUP alternates two valid configs (the HTTP route's answer, and which host the gRPC and Dubbo
clusters send to); an invalid file in the middle changes nothing; a listener is added, used and removed by reload
while the clients stay connected to the others.  Zero failed requests, counted by the clients.
"""

import http.client
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.request

import grpc
import pytest

from tests import support

PEERS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dubbo_peers")
NODE = shutil.which("node")
GRPC_PEER = os.path.join(support.ROOT, "tests", "grpc_peers", "echo_server.py")

pytestmark = [
    pytest.mark.timeout(90),
    pytest.mark.skipif(NODE is None, reason="node is not installed"),
    pytest.mark.skipif(not os.path.isdir(os.path.join(PEERS, "node_modules", "sofa-rpc-node")),
                       reason="Dubbo peers not installed (run `npm ci` in tests/dubbo_peers)"),
]

RELOADS = 100

CONFIG = """
drain_timeout: 5s
admin:
  address: tcp:{admin}:interface=127.0.0.1
listeners:
  - name: http
    address: tcp:{http}:interface=127.0.0.1
    route_config:
      virtual_hosts:
        - name: all
          domains: ["*"]
          routes:
            - match: {{prefix: /}}
              direct_response: {{status: 200, body: "{body}"}}
  - name: grpc
    protocol: grpc
    address: tcp:{grpc}:interface=127.0.0.1
    route_config:
      virtual_hosts:
        - name: all
          domains: ["*"]
          routes:
            - match: {{grpc: {{service: test.Echo}}}}
              route: {{cluster: echo, timeout: 10s}}
  - name: dubbo
    protocol: dubbo
    address: tcp:{dubbo}:interface=127.0.0.1
    route_config:
      virtual_hosts:
        - name: all
          domains: ["*"]
          routes:
            - match: {{dubbo: {{interface: "org.txmesh.peers.*", version: "1.0.0"}}}}
              route: {{cluster: provider}}
{extra}
clusters:
  - name: echo
    protocol: grpc
    endpoints: [{{address: "127.0.0.1:{echo}"}}]
  - name: provider
    protocol: dubbo
    endpoints: [{{address: "127.0.0.1:{provider}"}}]
"""

EXTRA = """  - name: extra
    address: tcp:{port}:interface=127.0.0.1
    route_config:
      virtual_hosts:
        - name: all
          domains: ["*"]
          routes:
            - match: {{prefix: /}}
              direct_response: {{status: 200, body: "extra"}}
"""


class Counts:
    def __init__(self):
        self.ok = 0
        self.failed = []
        self.seen = set()


def httpClient(port, stop, counts):
    """One keep-alive connection for the whole run: every request on it, none allowed to fail."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    while not stop.is_set():
        try:
            conn.request("GET", "/")
            r = conn.getresponse()
            body = r.read()
            if r.status == 200:
                counts.ok += 1
                counts.seen.add(body)
            else:
                counts.failed.append(r.status)
        except Exception as e:  # noqa: BLE001 - every failure is counted and reported
            counts.failed.append(repr(e))
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.close()


def grpcClient(port, stop, counts):
    channel = grpc.insecure_channel("127.0.0.1:%d" % (port,))
    whoami = channel.unary_unary("/test.Echo/Unary", request_serializer=None, response_deserializer=None)
    while not stop.is_set():
        try:
            counts.seen.add(whoami(b"whoami", timeout=5))
            counts.ok += 1
        except grpc.RpcError as e:
            counts.failed.append("%s %s" % (e.code(), e.details()))
    channel.close()


def waitFor(predicate, what, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.005)
    raise AssertionError("timed out waiting for " + what)


def serverInfo(admin):
    return json.loads(support.adminGet(admin, "/server_info")[1])


def statValue(admin, name):
    text = support.adminGet(admin, "/stats?format=text&filter=^%s$" % (name,))[1].decode()
    return int(float(text.split()[-1])) if text else 0


def test_100_reloads_under_http_grpc_and_dubbo_load(tmp_path):
    procs = []
    try:
        echoA, echoB = support.freePort(), support.freePort()
        for port, name in ((echoA, "A"), (echoB, "B")):
            procs.append(support.Proc([sys.executable, GRPC_PEER, str(port), name]))
            support.waitForPort(port, proc=procs[-1].popen)
        providers = [support.freePort(), support.freePort()]
        for port in providers:
            procs.append(support.Proc([NODE, os.path.join(PEERS, "provider.js"), str(port)], cwd=PEERS))
            support.waitForPort(port, proc=procs[-1].popen)
        ports = {name: support.freePort() for name in ("admin", "http", "grpc", "dubbo", "extra_port")}

        def text(i, extra=False):
            """Config i % 2: the HTTP answer, the gRPC server and the Dubbo provider all change."""
            extraText = EXTRA.format(port=ports["extra_port"]) if extra else ""
            return CONFIG.format(body="config%d" % (i % 2), echo=(echoA, echoB)[i % 2], provider=providers[i % 2],
                                 extra=extraText, **ports)

        proc = support.startTxmesh(text(0), ports["admin"])
        procs.append(proc)
        for name in ("http", "grpc", "dubbo"):
            support.waitForPort(ports[name], proc=proc.popen)
        path = proc.configPath

        probes = _listenerStat(ports["admin"], "downstream_cx", "http")  # waitForPort's connections
        stop = threading.Event()
        httpCounts, grpcCounts = Counts(), Counts()
        threads = [threading.Thread(target=httpClient, args=(ports["http"], stop, httpCounts)),
                   threading.Thread(target=grpcClient, args=(ports["grpc"], stop, grpcCounts))]
        for t in threads:
            t.start()
        dubbo = subprocess.Popen([NODE, os.path.join(PEERS, "consumer.js"), "127.0.0.1:%d" % ports["dubbo"],
                                  "echoload", "60000"], cwd=PEERS, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 text=True)
        waitFor(lambda: httpCounts.ok and grpcCounts.ok and _dubboStarted(ports["admin"]), "traffic on every listener")

        def reload(configText):
            """Write the file, SIGHUP, and wait until txmesh reports the reload (its version or its failure)."""
            before = (serverInfo(ports["admin"])["config_version"], statValue(ports["admin"], "config_reload_failed"))
            with open(path, "w") as f:
                f.write(configText)
            started = time.monotonic()
            proc.signal(signal.SIGHUP)
            waitFor(lambda: (serverInfo(ports["admin"])["config_version"],
                             statValue(ports["admin"], "config_reload_failed")) != before, "the reload")
            return time.monotonic() - started

        seen = []
        began = time.monotonic()
        for i in range(1, RELOADS + 1):
            if i == 50:  # an invalid file in the middle: rejected, nothing changes
                seen.append(reload(text(i - 1).replace("domains:", "domain:", 1)))
                assert serverInfo(ports["admin"])["config_version"] == i
                assert statValue(ports["admin"], "config_reload_failed") == 1
            seen.append(reload(text(i, extra=(i == 30))))
            if i == 30:  # a listener added: it serves, the others keep their connections
                extra = http.client.HTTPConnection("127.0.0.1", ports["extra_port"], timeout=5)
                extra.request("GET", "/")
                assert extra.getresponse().read() == b"extra"
                extra.close()
            if i == 31:  # ...and removed
                waitFor(lambda: not support.accepts(ports["extra_port"]), "the removed listener's port closed")
        elapsed = time.monotonic() - began
        time.sleep(0.2)  # the clients' last requests, on the last config
        stop.set()
        for t in threads:
            t.join(10)
        out, _ = dubbo.communicate("", timeout=20)
        dubboResult = json.loads(out.strip().splitlines()[-1])

        # POST /reload of the file as it is: nothing to change, answered in JSON
        req = urllib.request.Request("http://127.0.0.1:%d/reload" % ports["admin"], data=b"", method="POST")
        with urllib.request.urlopen(req, timeout=10) as r:
            assert (r.status, json.loads(r.read())["outcome"]) == (200, "unchanged")
        info = serverInfo(ports["admin"])
        applied = [float(ms) for ms in re.findall(r"reload \(SIGHUP\): applied in ([0-9.]+) ms", proc.output())]
        report = {"reloads": len(seen), "seconds": round(elapsed, 2),
                  "round_trip_ms": {"median": round(statistics.median(seen) * 1000, 1),
                                    "max": round(max(seen) * 1000, 1)},
                  "apply_ms": {"median": round(statistics.median(applied), 1), "max": round(max(applied), 1)},
                  "http": httpCounts.ok, "grpc": grpcCounts.ok, "dubbo": dubboResult["ok"]}
        print("reload figures:", json.dumps(report))
        assert httpCounts.failed == [] and grpcCounts.failed == [] and dubboResult["errors"] == [], report
        assert httpCounts.ok and grpcCounts.ok and dubboResult["ok"], report
        assert httpCounts.seen == {b"config0", b"config1"} and grpcCounts.seen == {b"A", b"B"}
        assert info["config_version"] == RELOADS + 1 and len(applied) == RELOADS
        assert statValue(ports["admin"], "config_reload_success") == RELOADS + 1  # and the POST /reload
        assert statValue(ports["admin"], "config_reload_failed") == 1
        # the Dubbo calls went to both providers, over connections kept while their host stayed
        for port in providers:
            assert _hostStat(ports["admin"], "upstream_host_rq_total", "provider", port) > 0
        # the HTTP client kept its one connection through every reload
        assert _listenerStat(ports["admin"], "downstream_cx", "http") == probes + 1
        assert proc.popen.poll() is None and "Traceback" not in proc.output()
    finally:
        for p in reversed(procs):
            p.stop()


def _dubboStarted(admin):
    return _listenerStat(admin, "downstream_rq", "dubbo") > 0


def _listenerStat(admin, name, listener):
    text = support.adminGet(admin, '/stats?format=text&filter=^%s\\{listener="%s"\\}' % (name, listener))[1]
    return int(float(text.split()[-1])) if text else 0


def _hostStat(admin, name, cluster, port):
    text = support.adminGet(admin, '/stats?format=text&filter=^%s\\{cluster="%s",host="127.0.0.1:%d"\\}'
                            % (name, cluster, port))[1]
    return int(float(text.split()[-1])) if text else 0


def test_sighup_notifies_systemd_and_an_invalid_file_keeps_serving(tmp_path):
    """RELOADING=1 with MONOTONIC_USEC, then READY=1, on a real $NOTIFY_SOCKET; SIGHUP no longer ends txmesh."""
    from tests.test_integration_systemd import CONFIG as SYSTEMD_CONFIG, NotifySocket

    admin, listen = support.freePort(), support.freePort()
    path = tmp_path / "mesh.yaml"
    path.write_text(SYSTEMD_CONFIG.format(admin=admin, listen=listen))
    notify = NotifySocket(str(tmp_path / "notify"))
    env = dict(os.environ, PYTHONPATH=support.ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               NOTIFY_SOCKET=notify.path)
    env.pop("WATCHDOG_USEC", None)
    proc = support.Proc([sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=",
                         "txmesh", "--config", str(path), "--status-interval", "0"], env=env)
    try:
        assert notify.next(20).get("READY") == "1"
        path.write_text(SYSTEMD_CONFIG.format(admin=admin, listen=listen).replace('"ok\\n"', '"two\\n"'))
        before = time.monotonic()
        proc.signal(signal.SIGHUP)
        reloading = notify.until(lambda f: "RELOADING" in f)
        assert reloading["RELOADING"] == "1"
        assert before * 1e6 <= int(reloading["MONOTONIC_USEC"]) <= time.monotonic() * 1e6
        ready = notify.until(lambda f: "READY" in f)
        assert "version" in ready["STATUS"]
        conn = http.client.HTTPConnection("127.0.0.1", listen, timeout=5)
        conn.request("GET", "/")
        assert conn.getresponse().read() == b"two\n"
        path.write_text("listeners: [{name: web}]\n")  # invalid: no address
        proc.signal(signal.SIGHUP)
        notify.until(lambda f: "RELOADING" in f)
        notify.until(lambda f: "READY" in f)
        conn.request("GET", "/")
        assert conn.getresponse().read() == b"two\n"  # the old config keeps serving, on the same connection
        conn.close()
        assert "reload (SIGHUP) rejected: %s:1: listeners[0]: missing required key 'address'" % (path,) in \
            proc.output()
        assert proc.popen.poll() is None
    finally:
        proc.stop()
        notify.close()
