"""
``workers: 2`` end to end (issue 10 part 4, issue 13 part 6): txmesh under twistd as a parent and two worker
processes.  Requests from many connections land on both workers (each worker's own admin socket shows its
counters), the parent's merged /stats is their sum, a SIGHUP reload reaches both (one version everywhere) and the listener it adds is served by both, a worker
killed with SIGKILL is started again and counted, and SIGTERM drains both (a request in flight is answered) before
every process exits.
"""

import http.client
import json
import os
import signal
import socket
import sys
import threading
import time

import pytest

from tests import support

pytestmark = pytest.mark.timeout(60)

CONFIG = """
workers: 2
drain_timeout: 5s
admin:
  address: tcp:{admin}:interface=127.0.0.1
listeners:
  - name: web
    protocol: http
    address: tcp:{web}:interface=127.0.0.1
    route_config:
      virtual_hosts:
        - name: all
          domains: ["*"]
          routes:
            - match: {{prefix: /slow}}
              route: {{cluster: up}}
            - match: {{prefix: /}}
              direct_response: {{status: 200, body: "{body}"}}
{extra}clusters:
  - name: up
    endpoints: [{{address: "127.0.0.1:{upstream}"}}]
"""

# a listener a reload adds: its socket is bound by the parent and handed to every worker with the apply request
EXTRA = """\
  - name: extra
    protocol: http
    address: tcp:{port}:interface=127.0.0.1
    route_config:
      virtual_hosts: [{{name: all, domains: ["*"], routes: [{{match: {{prefix: /}}, direct_response: {{status: 200, body: "extra"}}}}]}}]
"""


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("localhost", timeout=5)
        self.path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(5)
        self.sock.connect(self.path)


def unixGet(path, target):
    c = UnixHTTPConnection(path)
    try:
        c.request("GET", target)
        return json.loads(c.getresponse().read())
    finally:
        c.close()


def get(port, path):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def adminJSON(port, path):
    status, body = support.adminGet(port, path)
    assert status == 200
    return json.loads(body)


def waitFor(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("not within %gs: %s" % (timeout, what))


def requests2xx(stats):
    return sum(s["value"] for s in stats.get("downstream_rq_xx", []) if s["labels"].get("code_class") == "2xx")


def workersInfo(admin):
    return adminJSON(admin, "/server_info")["worker_processes"]


def acceptedPerWorker(admin, listener):
    """The connections each worker accepted on ``listener`` (from its own admin socket)."""
    return [sum(s["value"] for s in unixGet(w["admin"], "/stats").get("downstream_cx", [])
                if s["labels"].get("listener") == listener) for w in workersInfo(admin)]


@pytest.fixture
def upstream():
    proc, port, _ = support.startUpstream()
    yield port
    proc.stop()


def test_two_workers_share_the_listener_reload_restart_and_drain(upstream):
    admin, web, extra = support.freePort(), support.freePort(), support.freePort()
    proc = support.startTxmesh(CONFIG.format(admin=admin, web=web, upstream=upstream, body="one", extra=""), admin)
    try:
        waitFor(lambda: all(w["state"] == "serving" for w in workersInfo(admin)), 15, "both workers serve")
        assert support.adminGet(admin, "/ready")[0] == 200
        workers = workersInfo(admin)
        assert len({w["pid"] for w in workers}) == 2 and proc.pid not in {w["pid"] for w in workers}

        # many connections, from parallel clients: the kernel spreads them over both workers
        def perWorker():
            return [requests2xx(unixGet(w["admin"], "/stats")) for w in workers]

        def load():
            failures = []

            def client():
                for _ in range(25):
                    status, body = get(web, "/")
                    if (status, body) != (200, b"one"):
                        failures.append((status, body))

            threads = [threading.Thread(target=client) for _ in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(20)
            assert failures == []
            return all(n > 0 for n in perWorker())

        waitFor(load, 20, "requests served by both workers")
        counts = perWorker()
        merged = requests2xx(adminJSON(admin, "/stats"))
        assert merged == sum(counts), (merged, counts)
        metrics = support.adminGet(admin, "/metrics")[1].decode()
        assert 'txmesh_config_version{worker="0"} 1.0' in metrics
        clusters = adminJSON(admin, "/clusters")
        assert [c["name"] for c in clusters] == ["up"] and clusters[0]["workers"] == 2

        # SIGHUP at the parent: every worker applies the new file, the admin shows one version
        with open(proc.configPath, "w") as f:
            f.write(CONFIG.format(admin=admin, web=web, upstream=upstream, body="two", extra=EXTRA.format(port=extra)))
        proc.signal(signal.SIGHUP)
        info = waitFor(lambda: (lambda i: i if i["config_version"] == 2 and all(
            w["config_version"] == 2 for w in i["worker_processes"]) else None)(adminJSON(admin, "/server_info")),
            10, "version 2 in the parent and both workers")
        assert len({w["config_digest"] for w in info["worker_processes"]} | {info["config_digest"]}) == 1
        assert {get(web, "/")[1] for _ in range(20)} == {b"two"}
        # the listener the reload added is served by both workers (each refused the reload before its descriptor was
        # declared: the socket stayed in the worker's channel decoder)
        def extraOnBoth():
            assert {get(extra, "/") for _ in range(20)} == {(200, b"extra")}
            return all(n > 0 for n in (sum(s["value"] for s in unixGet(w["admin"], "/stats").get(
                "downstream_rq", []) if s["labels"].get("listener") == "extra") for w in info["worker_processes"]))

        waitFor(extraOnBoth, 20, "the added listener served by both workers")

        # a worker killed is started again (same index, new pid, the running version) and counted
        victim = info["worker_processes"][0]
        os.kill(victim["pid"], signal.SIGKILL)
        again = waitFor(lambda: (lambda w: w if w["pid"] != victim["pid"] and w["state"] == "serving" else None)(
            workersInfo(admin)[0]), 15, "worker 0 serving again")
        assert again["restarts"] == 1 and again["config_version"] == 2
        metrics = support.adminGet(admin, "/metrics")[1].decode()
        assert 'txmesh_server_worker_restarts_total{worker="0"} 1.0' in metrics
        assert 'txmesh_server_worker_restarts_total{worker="1"} 0.0' in metrics
        # the counters of the worker that died stay in the sums
        assert requests2xx(adminJSON(admin, "/stats")) >= merged

        # SIGTERM at the parent: requests in flight are answered, every process ends
        pids = [w["pid"] for w in workersInfo(admin)]
        answers = []
        slow = [threading.Thread(target=lambda: answers.append(get(web, "/slow/1500"))) for _ in range(4)]
        for t in slow:
            t.start()
        time.sleep(0.5)
        proc.signal(signal.SIGTERM)
        for t in slow:
            t.join(15)
        assert [status for status, _ in answers] == [200] * 4
        proc.popen.wait(15)
        for pid in pids:
            waitFor(lambda: not os.path.exists("/proc/%d" % pid) or _zombie(pid), 5, "worker %d ended" % pid)
        assert not support.accepts(web)
    finally:
        proc.stop()
    out = proc.output()
    assert "[worker 0]" in out and "[worker 1]" in out
    assert "worker 0 (pid %d) ended unexpectedly" % (victim["pid"],) in out


def _zombie(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True


BALANCED = """
workers: 2
admin:
  address: tcp:{admin}:interface=127.0.0.1
listeners:
  - name: web
    protocol: http
    address: tcp:{web}:interface=127.0.0.1
    connection_balance: {balance}
    route_config:
      virtual_hosts: [{{name: all, domains: ["*"], routes: [{{match: {{prefix: /}}, direct_response: {{status: 200, body: "ok"}}}}]}}]
{extra}"""


def test_exact_balance_hands_each_connection_to_the_worker_with_the_fewest():
    """
    ``connection_balance: exact`` (issue 10 part 4, Envoy's exact_balance): the parent accepts and hands each
    connection to the worker with the fewest open ones, so six long-lived connections opened one by one split 3/3
    (the kernel's choice gives any split, often 6/0 with an idle worker asleep); closing one worker's three sends
    the next three there.
    """
    admin, web = support.freePort(), support.freePort()
    proc = support.startTxmesh(BALANCED.format(admin=admin, web=web, balance="exact", extra=""), admin)
    conns = []
    try:
        waitFor(lambda: all(w["state"] == "serving" for w in workersInfo(admin)), 15, "both workers serve")
        workers = workersInfo(admin)

        def active():
            return [sum(s["value"] for s in unixGet(w["admin"], "/stats").get("downstream_cx_active", [])
                        if s["labels"].get("listener") == "web") for w in workers]

        def served(c):
            c.request("GET", "/")
            r = c.getresponse()
            assert (r.status, r.read()) == (200, b"ok")
            return c

        for _ in range(6):
            conns.append(served(http.client.HTTPConnection("127.0.0.1", web, timeout=10)))
        assert waitFor(lambda: active() == [3, 3] or None, 5, "3 connections on each worker")
        # ties go to the lower index: connection i went to worker i % 2; close worker 0's three
        for c in conns[0::2]:
            c.close()
        conns = conns[1::2]
        assert waitFor(lambda: active() == [0, 3] or None, 5, "worker 0's connections closed")
        # the next three all go to worker 0, the one with the fewest
        for n in (1, 2, 3):
            conns.append(served(http.client.HTTPConnection("127.0.0.1", web, timeout=10)))
            assert waitFor(lambda: active() == [n, 3] or None, 5, "new connection %d on worker 0" % (n,))
        stats = adminJSON(admin, "/stats")
        handed = sum(s["value"] for s in stats.get("downstream_cx_handed", []) if s["labels"].get("listener") == "web")
        assert handed == 9 and not any(s["value"] for s in stats.get("downstream_cx_handoff_failed", []))
    finally:
        for c in conns:
            c.close()
        proc.stop()


# a listener a reload adds, with its own SO_REUSEPORT socket per worker
EXTRA_REUSE_PORT = EXTRA.replace("    route_config:", "    connection_balance: reuse_port\n    route_config:", 1)


def test_reuse_port_gives_each_worker_its_own_socket_kept_across_its_restart():
    """
    ``connection_balance: reuse_port`` (issue 10 part 4, Envoy's enable_reuse_port): each worker accepts on its own
    SO_REUSEPORT socket, so the kernel hashes connections over both (40 connections all on one: odds 2^-39).  The
    parent keeps every socket: connections made while worker 0 is dead wait in its socket's backlog and are
    answered once it is back, none reset.  A listener a reload adds is bound the same way.
    """
    admin, web, extra = support.freePort(), support.freePort(), support.freePort()
    proc = support.startTxmesh(BALANCED.format(admin=admin, web=web, balance="reuse_port", extra=""), admin)
    conns = []
    try:
        waitFor(lambda: all(w["state"] == "serving" for w in workersInfo(admin)), 15, "both workers serve")
        workers = workersInfo(admin)

        for _ in range(40):
            assert get(web, "/") == (200, b"ok")
        counts = acceptedPerWorker(admin, "web")
        assert sum(counts) == 40 and all(counts), counts

        os.kill(workers[0]["pid"], signal.SIGKILL)
        waitFor(lambda: workersInfo(admin)[0]["pid"] != workers[0]["pid"], 10, "worker 0's death seen")
        answers = []
        clients = [threading.Thread(target=lambda: answers.append(get(web, "/"))) for _ in range(20)]
        for t in clients:
            t.start()
        for t in clients:
            t.join(15)
        assert answers == [(200, b"ok")] * 20
        waitFor(lambda: workersInfo(admin)[0]["state"] == "serving", 15, "worker 0 serving again")

        with open(proc.configPath, "w") as f:
            f.write(BALANCED.format(admin=admin, web=web, balance="reuse_port",
                                  extra=EXTRA_REUSE_PORT.format(port=extra)))
        proc.signal(signal.SIGHUP)
        waitFor(lambda: adminJSON(admin, "/server_info")["config_version"] == 2, 10, "the reload applied")
        for _ in range(40):
            assert get(extra, "/") == (200, b"extra")
        counts = acceptedPerWorker(admin, "extra")
        assert sum(counts) == 40 and all(counts), counts
    finally:
        for c in conns:
            c.close()
        proc.stop()


def test_a_hot_restart_takes_every_reuse_port_socket_over(tmp_path):
    """
    A hot restart of ``workers: 2`` with a ``reuse_port`` listener: the new parent takes both SO_REUSEPORT sockets
    over by name (``listener:web`` and ``listener:web#1``), the old one drains and exits, and the new workers serve
    on both sockets (nothing bound afresh, so a client that connects throughout is never refused).
    """
    admin, web = support.freePort(), support.freePort()
    text = ("hot_restart:\n  socket: %s\n  timeout: 10s\ndrain_timeout: 2s\n" % (tmp_path / "hot.sock",)
            + BALANCED.format(admin=admin, web=web, balance="reuse_port", extra=""))
    old = support.startTxmesh(text, admin)
    new = None
    try:
        waitFor(lambda: all(w["state"] == "serving" for w in workersInfo(admin)), 15, "both workers serve")
        waitFor(lambda: os.path.exists(tmp_path / "hot.sock"), 10, "the hot restart socket")
        env = dict(os.environ, PYTHONPATH=support.ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        new = support.Proc([sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n",
                            "--pidfile=", "txmesh", "--config", old.configPath, "--hot-restart"], env=env)
        answered = 0
        deadline = time.monotonic() + 30
        while old.popen.poll() is None:
            assert time.monotonic() < deadline, old.output()
            assert get(web, "/") == (200, b"ok")
            answered += 1
        assert old.popen.returncode == 0 and answered
        assert "took over listener:web, listener:web#1, admin" in old.output()
        waitFor(lambda: all(w["state"] == "serving" for w in workersInfo(admin)), 15, "the new workers serve")

        before = acceptedPerWorker(admin, "web")
        for _ in range(40):
            assert get(web, "/") == (200, b"ok")
        counts = [b - a for a, b in zip(before, acceptedPerWorker(admin, "web"))]
        assert sum(counts) == 40 and all(counts), counts
    finally:
        if new is not None:
            new.stop()
        old.stop()
