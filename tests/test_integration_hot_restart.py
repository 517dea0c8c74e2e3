"""
Hot restart end to end (issue 13 part 5): txmesh under twistd serves HTTP/1.1 (new connections and keep-alive
ones, through a real upstream) and gRPC (grpcio, through the echo peer) to client threads; a second twistd started
with ``--hot-restart`` takes the sockets over, the first drains and exits, and the clients count every refused
connection and every failed request: none.  New processes that fail (a bad config; a port they cannot bind after
they got the sockets) leave the old one serving, and a later hot restart still works.

Like curl and browsers, the keep-alive client sends a request again on a new connection when a *reused* connection
turns out closed before any byte of the answer (RFC 9112 9.3.1; the drain closes idle keep-alive connections);
those are counted apart and reported, never hidden among the successes.
"""

import http.client
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import grpc
import pytest

from tests import support

pytestmark = pytest.mark.timeout(60)

CONFIG = """
drain_timeout: 5s
hot_restart:
  socket: {sock}
  timeout: 10s
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
            - match: {{prefix: /direct}}
              direct_response: {{status: 200, body: "ok"}}
            - match: {{prefix: /}}
              route: {{cluster: up}}
  - name: grpc
    protocol: grpc
    address: tcp:{grpc}:interface=127.0.0.1
    route_config:
      virtual_hosts:
        - name: svc
          domains: ["*"]
          routes:
            - match: {{prefix: /}}
              route: {{cluster: echo, timeout: 5s}}
clusters:
  - name: up
    endpoints: [{{address: "127.0.0.1:{upstream}"}}]
  - name: echo
    protocol: grpc
    endpoints: [{{address: "127.0.0.1:{echo}"}}]
"""

TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=", "txmesh"]
RETRYABLE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)


class Load:
    """Client threads against the web and grpc listeners, counting outcomes until ``stop()``."""

    def __init__(self, web, grpcPort):
        self.web = web
        self.grpcPort = grpcPort
        self.lock = threading.Lock()
        self.counts = {"ok": 0, "refused": 0, "failed": 0, "retried": 0, "grpc_ok": 0}
        self.errors = []
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=t, daemon=True) for t in
                        (self.newConnections, self.newConnections, self.keepAlive, self.keepAlive, self.grpcCalls)]

    def count(self, key, error=None):
        with self.lock:
            self.counts[key] += 1
            if error is not None and len(self.errors) < 20:
                self.errors.append(repr(error))

    def start(self):
        for t in self.threads:
            t.start()

    def stop(self):
        self.stopping.set()
        for t in self.threads:
            t.join(15)

    def snapshot(self):
        with self.lock:
            return dict(self.counts)

    def waitFor(self, key, more, timeout=15.0):
        """Until ``counts[key]`` grew by ``more`` (bounded)."""
        start = self.snapshot()[key]
        deadline = time.monotonic() + timeout
        while self.snapshot()[key] < start + more:
            assert time.monotonic() < deadline, "load stalled: %r %r" % (self.snapshot(), self.errors)
            time.sleep(0.02)

    def _get(self, conn, path):
        conn.request("GET", path)
        r = conn.getresponse()
        body = r.read()
        return r, body

    def _check(self, r, body, expected):
        if r.status == 200 and body == expected:
            self.count("ok")
        else:
            self.count("failed", (r.status, body[:100]))

    def newConnections(self):
        while not self.stopping.is_set():
            conn = http.client.HTTPConnection("127.0.0.1", self.web, timeout=10)
            try:
                r, body = self._get(conn, "/bytes/64")
                self._check(r, body, b"x" * 64)
            except ConnectionRefusedError as e:
                self.count("refused", e)
            except Exception as e:
                self.count("failed", e)
            finally:
                conn.close()

    def keepAlive(self):
        conn, reused = None, False
        while not self.stopping.is_set():
            if conn is None:
                conn, reused = http.client.HTTPConnection("127.0.0.1", self.web, timeout=10), False
            try:
                try:
                    r, body = self._get(conn, "/direct")
                except RETRYABLE:
                    if not reused:
                        raise
                    # closed by the server while idle: send it again on a new connection, as curl does
                    self.count("retried")
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", self.web, timeout=10)
                    r, body = self._get(conn, "/direct")
                self._check(r, body, b"ok")
                reused = True
                if r.will_close:
                    conn.close()
                    conn = None
            except ConnectionRefusedError as e:
                self.count("refused", e)
                conn.close()
                conn = None
            except Exception as e:
                self.count("failed", e)
                conn.close()
                conn = None
        if conn is not None:
            conn.close()

    def grpcCalls(self):
        channel = grpc.insecure_channel("127.0.0.1:%d" % (self.grpcPort,))
        unary = channel.unary_unary("/test.Echo/Unary", request_serializer=None, response_deserializer=None)
        try:
            while not self.stopping.is_set():
                try:
                    if unary(b"ping", timeout=10) == b"ping":
                        self.count("grpc_ok")
                    else:
                        self.count("failed", "grpc: wrong answer")
                except grpc.RpcError as e:
                    self.count("failed", (e.code(), e.details()))
        finally:
            channel.close()


@pytest.fixture
def mesh(tmp_path):
    upstream, http, _ = support.startUpstream()
    echoPort = support.freePort()
    echo = support.Proc([sys.executable, os.path.join(support.ROOT, "tests", "grpc_peers", "echo_server.py"),
                         str(echoPort)])
    support.waitForPort(echoPort, proc=echo.popen)
    ports = dict(admin=support.freePort(), web=support.freePort(), grpc=support.freePort())
    text = CONFIG.format(sock=tmp_path / "hot.sock", upstream=http, echo=echoPort, **ports)
    old = support.startTxmesh(text, ports["admin"])
    procs = [old, echo, upstream]
    env = dict(os.environ, PYTHONPATH=support.ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))

    def restart(configPath=None):
        proc = support.Proc(TWISTD + ["--config", configPath or old.configPath, "--hot-restart"], env=env)
        procs.append(proc)
        return proc

    load = Load(ports["web"], ports["grpc"])
    try:
        yield dict(old=old, restart=restart, load=load, ports=ports, text=text, tmp=tmp_path)
    finally:
        load.stop()
        for proc in reversed(procs):
            proc.stop()


def _waitForLine(proc, text, timeout=20.0):
    deadline = time.monotonic() + timeout
    while text not in proc.output():
        assert proc.popen.poll() is None or text in proc.output(), proc.output()
        assert time.monotonic() < deadline, "no %r in:\n%s" % (text, proc.output())
        time.sleep(0.05)


def test_hot_restart_under_load(mesh):
    load, old = mesh["load"], mesh["old"]
    load.start()
    load.waitFor("ok", 100)
    load.waitFor("grpc_ok", 20)
    new = mesh["restart"]()
    started = time.monotonic()
    assert old.popen.wait(30) == 0, old.output()
    handover = time.monotonic() - started
    _waitForLine(new, "took over from pid %d" % (old.pid,))
    # the new process serves on its own now
    load.waitFor("ok", 200)
    load.waitFor("grpc_ok", 20)
    load.stop()
    counts = load.snapshot()
    print("hot restart under load: %r; old exited %.2fs after the new one started" % (counts, handover))
    assert counts["refused"] == 0 and counts["failed"] == 0, (counts, load.errors)
    assert "pid %d took over listener:web, listener:grpc, admin; draining" % (new.pid,) in old.output()
    assert new.popen.poll() is None
    status, _ = support.adminGet(mesh["ports"]["admin"], "/ready")
    assert status == 200
    # the new process hands over in turn: its control socket is there, mode 0600
    assert oct(os.stat(mesh["tmp"] / "hot.sock").st_mode & 0o777) == "0o600"


def test_failed_new_processes_leave_the_old_one_serving(mesh):
    load, old = mesh["load"], mesh["old"]
    load.start()
    load.waitFor("ok", 50)

    # a config that does not load: refused before anything is asked of the old process
    bad = mesh["tmp"] / "bad.yaml"
    bad.write_text(mesh["text"] + "bogus: 1\n")
    failed = mesh["restart"](str(bad))
    assert failed.popen.wait(20) == 1
    assert "unknown key 'bogus'" in failed.output()

    # a config with a listener whose port is taken: it got the sockets, cannot bind, exits before it serves
    taken = socket.create_server(("127.0.0.1", 0))
    extra = mesh["tmp"] / "extra.yaml"
    extra.write_text(mesh["text"].replace("listeners:\n", "listeners:\n  - name: extra\n    protocol: http\n"
                                          "    address: tcp:%d:interface=127.0.0.1\n"
                                          "    route_config: {virtual_hosts: [{name: x, domains: ['*'], routes: "
                                          "[{match: {prefix: /}, direct_response: {status: 200}}]}]}\n"
                                          % taken.getsockname()[1], 1))
    failed = mesh["restart"](str(extra))
    assert failed.popen.wait(20) == 1, failed.output()
    assert "listener 'extra' (http1) cannot listen" in failed.output()
    taken.close()
    assert "the new process went away before it served; this one keeps serving" in _until(old, "keeps serving")

    load.waitFor("ok", 50)
    assert old.popen.poll() is None
    # and a good one still takes over
    new = mesh["restart"]()
    assert old.popen.wait(30) == 0, old.output()
    _waitForLine(new, "took over from pid %d" % (old.pid,))
    load.waitFor("ok", 50)
    load.stop()
    counts = load.snapshot()
    print("failed restarts under load: %r" % (counts,))
    assert counts["refused"] == 0 and counts["failed"] == 0, (counts, load.errors)


def _until(proc, text):
    _waitForLine(proc, text)
    return proc.output()


def test_without_a_running_process_it_starts_as_usual(tmp_path):
    ports = dict(admin=support.freePort(), web=support.freePort(), grpc=support.freePort())
    path = tmp_path / "mesh.yaml"
    path.write_text(CONFIG.format(sock=tmp_path / "hot.sock", upstream=support.freePort(), echo=support.freePort(),
                                  **ports))
    env = dict(os.environ, PYTHONPATH=support.ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = support.Proc(TWISTD + ["--config", str(path), "--hot-restart"], env=env)
    try:
        support.waitForPort(ports["admin"], proc=proc.popen)
        _waitForLine(proc, "no txmesh listens on %s; starting as usual" % (tmp_path / "hot.sock",))
        proc.signal(signal.SIGTERM)
        assert proc.popen.wait(15) in (0, -signal.SIGTERM)
        assert not os.path.exists(tmp_path / "hot.sock"), (proc.popen.returncode, proc.output()[-3000:])
    finally:
        proc.stop()


def test_hot_restart_needs_the_block(tmp_path):
    path = tmp_path / "mesh.yaml"
    path.write_text(CONFIG.format(sock=tmp_path / "hot.sock", upstream=1, echo=2, admin=3, web=4, grpc=5)
                    .replace("hot_restart:\n  socket: %s\n  timeout: 10s\n" % (tmp_path / "hot.sock",), ""))
    env = dict(os.environ, PYTHONPATH=support.ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run(TWISTD + ["--config", str(path), "--hot-restart"], capture_output=True, text=True,
                         timeout=30, env=env)
    assert out.returncode == 1
    assert "txmesh: --hot-restart: %s has no hot_restart block" % (path,) in out.stderr
