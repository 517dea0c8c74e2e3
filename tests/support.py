"""
Helpers for integration tests: free loopback ports, processes started and stopped by PID, a txmesh under twistd,
the scriptable upstream and nginx.  Every wait is bounded.
"""

import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)


_given = set()


def freePort():
    """
    A loopback port nothing listens on now, and never one this process was given before: the kernel may hand the
    same ephemeral port to two binds in a row, and a test that asks for several ports at once needs them distinct.
    """
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _given:
            _given.add(port)
            return port
    raise RuntimeError("no fresh loopback port after 100 tries")


def waitForPort(port, timeout=15.0, proc=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError("process exited with %s before listening on %d" % (proc.returncode, port))
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("nothing listens on port %d after %.0fs" % (port, timeout))


def accepts(port):
    """Whether something accepts a TCP connection on loopback ``port`` now (within 0.5 s)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class JsonLines:
    """A subprocess's stdout read as one JSON document a line, each wait bounded."""

    def __init__(self, popen):
        self.popen = popen
        self.buffer = b""

    def next(self, timeout):
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([self.popen.stdout], [], [], remaining)[0]:
                raise AssertionError("no line from the subprocess within %.0fs" % (timeout,))
            chunk = os.read(self.popen.stdout.fileno(), 65536)
            if not chunk:
                raise AssertionError("the subprocess exited: %r" % (self.buffer,))
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return json.loads(line)

    def until(self, predicate, timeout=15.0):
        deadline = time.monotonic() + timeout
        while True:
            event = self.next(max(0.1, deadline - time.monotonic()))
            if predicate(event):
                return event


class Proc:
    """A subprocess we started; stop() ends it by PID (TERM, then KILL)."""

    def __init__(self, args, cwd=ROOT, env=None):
        self.logfile = tempfile.NamedTemporaryFile(prefix="txmesh-test-", suffix=".log", delete=False)
        self.popen = subprocess.Popen(args, cwd=cwd, stdout=self.logfile, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, env=env)

    @property
    def pid(self):
        return self.popen.pid

    def output(self):
        with open(self.logfile.name, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def signal(self, sig):
        if self.popen.poll() is None:
            os.kill(self.popen.pid, sig)

    def stop(self, timeout=10):
        if self.popen.poll() is None:
            os.kill(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.popen.pid, signal.SIGKILL)
                self.popen.wait(5)
        return self.popen.returncode


def startUpstream():
    """The scriptable upstream (tests/upstream_server.py); returns (proc, http_port, raw_port)."""
    http, raw = freePort(), freePort()
    proc = Proc([sys.executable, os.path.join(ROOT, "tests", "upstream_server.py"), str(http), str(raw)])
    waitForPort(http, proc=proc.popen)
    waitForPort(raw, proc=proc.popen)
    return proc, http, raw


def startTxmesh(configText, adminPort, extraEnv=None, twistdArgs=(), pluginArgs=()):
    """
    Write configText to a temp mesh.yaml and run `twistd -n txmesh --config` on it; ``twistdArgs`` go before
    ``txmesh`` (``("-r", "epoll")``: Twisted's reactor instead of txmesh's), ``pluginArgs`` after the config
    (``("--log-format", "json")``).
    """
    d = tempfile.mkdtemp(prefix="txmesh-cfg-")
    path = os.path.join(d, "mesh.yaml")
    with open(path, "w") as f:
        f.write(configText)
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extraEnv or {})
    proc = Proc([sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=",
                 *twistdArgs, "txmesh", "--config", path, *pluginArgs], env=env)
    try:
        waitForPort(adminPort, proc=proc.popen)
    except RuntimeError:
        proc.stop()
        raise RuntimeError("txmesh did not start:\n" + proc.output())
    proc.configPath = path
    return proc


def startNginx(conf):
    """Run nginx (not daemonised) with the given http{} body; returns (proc, prefix dir)."""
    prefix = tempfile.mkdtemp(prefix="txmesh-nginx-")
    os.makedirs(os.path.join(prefix, "logs"))
    with open(os.path.join(prefix, "nginx.conf"), "w") as f:
        f.write(("user root;\n" if os.geteuid() == 0 else "") + "daemon off;\nworker_processes 1;\npid %s/nginx.pid;\nerror_log %s/logs/error.log warn;\n"
                "events { worker_connections 1024; }\nhttp {\naccess_log off;\n"
                "client_body_temp_path %s/tmp;\nproxy_temp_path %s/tmp;\n%s\n}\n"
                % (prefix, prefix, prefix, prefix, conf))
    proc = Proc([NGINX, "-p", prefix, "-c", os.path.join(prefix, "nginx.conf"), "-e",
                 os.path.join(prefix, "logs", "error.log")])
    return proc, prefix


def adminGet(port, path):
    with urllib.request.urlopen("http://127.0.0.1:%d%s" % (port, path), timeout=5) as r:
        return r.status, r.read()
