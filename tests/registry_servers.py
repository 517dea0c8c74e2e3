"""
Real registry servers for the discovery and registration tests, from Debian's packages (``.ci/run`` installs
``zookeeper``, ``default-jre-headless`` and ``etcd-server``): each started on free loopback ports with its own data
dir in a temporary directory, waited for (bounded), and stopped by PID.  A server can be killed and started again
on the same ports and data (ZooKeeper restarted mid-load).

Without the packages the tests that need them are skipped, except under CI (``CI`` set), where they fail.
"""

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request

import pytest

from tests.support import freePort, waitForPort

ZOOKEEPER_JAR = "/usr/share/java/zookeeper.jar"
ZOOKEEPER_CONF = "/etc/zookeeper/conf"
JAVA = shutil.which("java")
ETCD = shutil.which("etcd") or ("/usr/bin/etcd" if os.path.exists("/usr/bin/etcd") else None)


def _require(ok, what):
    if not ok:
        if os.environ.get("CI"):
            pytest.fail("%s is not installed (.ci/run installs it)" % (what,))
        pytest.skip("%s is not installed (apt-get install it, as .ci/run does)" % (what,))


class _Server:
    """A server process we started; ``stop()`` ends it by PID, ``start()`` starts it again on the same ports."""

    name = "server"

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="txmesh-%s-" % (self.name,))
        self.proc = None
        self.logPath = os.path.join(self.dir, "server.log")

    def args(self):
        raise NotImplementedError

    def ready(self, deadline):
        raise NotImplementedError

    def start(self, timeout=30.0):
        with open(self.logPath, "ab") as log:
            self.proc = subprocess.Popen(self.args(), cwd=self.dir, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            self.ready(time.monotonic() + timeout)
        except Exception:
            self.stop()
            raise RuntimeError("%s did not start:\n%s" % (self.name, self.log()[-3000:]))
        return self

    def kill(self):
        """End the server at once (SIGKILL), as a crash would."""
        self._end(signal.SIGKILL)

    def stop(self):
        self._end(signal.SIGTERM)

    def _end(self, sig):
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        os.kill(proc.pid, sig)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)

    def cleanup(self):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def log(self):
        try:
            with open(self.logPath, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""


class ZooKeeperServer(_Server):
    """A standalone ZooKeeper (Debian's 3.8) on a free loopback port: ``hosts`` is the kazoo connection string."""

    name = "zookeeper"

    def __init__(self):
        _require(JAVA and os.path.exists(ZOOKEEPER_JAR), "ZooKeeper (Debian's zookeeper and a JRE)")
        super().__init__()
        self.port = freePort()
        self.hosts = "127.0.0.1:%d" % (self.port,)
        cfg = os.path.join(self.dir, "zoo.cfg")
        # maxClientCnxns=0: no per-IP cap, since every client of the run comes from 127.0.0.1 (ZooKeeper's default
        # of 60 connections per IP was reached by the whole suite on the session-wide server)
        with open(cfg, "w") as f:
            f.write("tickTime=500\ninitLimit=10\nsyncLimit=5\ndataDir=%s\nclientPort=%d\n"
                    "clientPortAddress=127.0.0.1\nmaxSessionTimeout=60000\nminSessionTimeout=1000\nmaxClientCnxns=0\n"
                    "admin.enableServer=false\n4lw.commands.whitelist=ruok,srvr\n"
                    % (os.path.join(self.dir, "data"), self.port))
        self.cfg = cfg

    def args(self):
        return [JAVA, "-Xmx256m", "-XX:+UseSerialGC", "-Dzookeeper.admin.enableServer=false",
                "-cp", "%s:%s" % (ZOOKEEPER_CONF, ZOOKEEPER_JAR),
                "org.apache.zookeeper.server.quorum.QuorumPeerMain", self.cfg]

    def ready(self, deadline):
        waitForPort(self.port, max(0.1, deadline - time.monotonic()), proc=self.proc)
        import socket
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.sendall(b"ruok")
                    if s.recv(4) == b"imok":
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError("zookeeper not ready")


class EtcdServer(_Server):
    """A single-member etcd (Debian's 3.4) on free loopback ports: ``url`` is its HTTP/JSON gateway."""

    name = "etcd"

    def __init__(self):
        _require(ETCD, "etcd (Debian's etcd-server)")
        super().__init__()
        self.port = freePort()
        self.peerPort = freePort()
        self.url = "http://127.0.0.1:%d" % (self.port,)

    def args(self):
        return [ETCD, "--name", "txmesh-test", "--data-dir", os.path.join(self.dir, "data"),
                "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
                "--listen-peer-urls", "http://127.0.0.1:%d" % (self.peerPort,),
                "--initial-advertise-peer-urls", "http://127.0.0.1:%d" % (self.peerPort,),
                "--initial-cluster", "txmesh-test=http://127.0.0.1:%d" % (self.peerPort,),
                "--log-level", "warn"]

    def ready(self, deadline):
        waitForPort(self.port, max(0.1, deadline - time.monotonic()), proc=self.proc)
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=1) as r:
                    if json.loads(r.read()).get("health") == "true":
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError("etcd not healthy")

    def call(self, path, body):
        """POST ``body`` (a dict) to the gateway's ``/v3/...`` path; the decoded JSON answer."""
        req = urllib.request.Request(self.url + path, data=json.dumps(body).encode(), method="POST")
        with urllib.request.urlopen(req, timeout=5) as r:
            return json.loads(r.read())


@pytest.fixture(scope="session")
def zookeeper():
    """One ZooKeeper for the whole run (tests use paths of their own); never kill it: use ``zookeeper_server``."""
    server = ZooKeeperServer().start()
    yield server
    server.cleanup()


@pytest.fixture
def zookeeper_server():
    """A ZooKeeper of the test's own, which it may kill and start again."""
    server = ZooKeeperServer().start()
    yield server
    server.cleanup()


@pytest.fixture(scope="session")
def etcd():
    """One etcd for the whole run (tests use key prefixes of their own)."""
    server = EtcdServer().start()
    yield server
    server.cleanup()


@pytest.fixture
def etcd_server():
    """An etcd of the test's own, which it may kill, start again or compact."""
    server = EtcdServer().start()
    yield server
    server.cleanup()
