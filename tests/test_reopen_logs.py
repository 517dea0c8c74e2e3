"""
Access-log files survive logrotate: SIGUSR1 and ``POST /reopen_logs`` reopen them.  In process on a memory reactor
(the signal handler is captured, the HTTP bytes go over StringTransport), then for real under twistd.
"""

import os
import signal
import time
import urllib.error
import urllib.request

import pytest
from twisted.internet.testing import MemoryReactorClock, StringTransport

from tests import support
from txmesh import config as _config
from txmesh.service import MeshService

pytestmark = pytest.mark.timeout(60)

CONFIG = """
drain_timeout: 1s
admin:
  address: tcp:{admin}:interface=127.0.0.1
listeners:
  - name: web
    protocol: http
    address: tcp:{listen}:interface=127.0.0.1
    filters:
      - name: access_log
        config: {{path: "{log}"}}
      - name: access_log
        config: {{path: "-"}}
      - name: router
    route_config:
      virtual_hosts:
        - name: all
          domains: ["*"]
          routes:
            - match: {{prefix: /}}
              direct_response: {{status: 200, body: "ok\\n"}}
"""


class Reactor(MemoryReactorClock):
    """A memory reactor whose callFromThread queues the call until the test runs the loop (runQueued)."""

    def __init__(self):
        MemoryReactorClock.__init__(self)
        self.fromThread = []

    def callFromThread(self, f, *args, **kw):
        self.fromThread.append((f, args, kw))

    def runQueued(self):
        queued, self.fromThread = self.fromThread, []
        for f, args, kw in queued:
            f(*args, **kw)


class Signals:
    """Records signal.signal calls; the handler installed last per signal is what the process would run."""

    def __init__(self):
        self.handlers = {signal.SIGUSR1: signal.SIG_DFL}
        self.calls = []

    def __call__(self, signum, handler):
        self.calls.append((signum, handler))
        previous, self.handlers[signum] = self.handlers.get(signum), handler
        return previous


def send(factory, raw):
    transport = StringTransport()
    protocol = factory.buildProtocol(None)
    protocol.makeConnection(transport)
    protocol.dataReceived(raw)
    return transport.value()


@pytest.fixture
def mesh(tmp_path):
    logDir = tmp_path / "logs"
    logDir.mkdir()
    log = logDir / "access.log"
    cfg = _config.loads(CONFIG.format(admin=9901, listen=15001, log=log))
    reactor, signals = Reactor(), Signals()
    service = MeshService(cfg, reactor, installSignal=signals)
    service.startService()
    [(_, listener, _, _), (_, admin, _, _)] = reactor.tcpServers

    def get(path):
        transport = StringTransport()
        protocol = listener.buildProtocol(None)
        protocol.makeConnection(transport)
        protocol.dataReceived(b"GET " + path + b" HTTP/1.1\r\nHost: a\r\n\r\n")
        reactor.advance(0)  # writes made in a read leave at the end of the reactor turn
        assert transport.value().startswith(b"HTTP/1.1 200 ")
        reactor.advance(1)  # the access log's flush timer

    yield service, reactor, signals, get, admin, tmp_path
    if service.running:
        d = service.stopService()
        reactor.advance(1)
        assert d.result is None


def test_sigusr1_reopens_after_rename_and_stop_restores_the_handler(mesh):
    service, reactor, signals, get, admin, tmp = mesh
    log = tmp / "logs" / "access.log"
    handler = signals.handlers[signal.SIGUSR1]
    assert handler is not signal.SIG_DFL
    get(b"/before")
    os.rename(log, tmp / "logs" / "access.log.1")
    handler(signal.SIGUSR1, None)
    assert not log.exists()  # nothing done in the signal handler itself
    reactor.runQueued()
    get(b"/after")
    assert '"GET /before ' in (tmp / "logs" / "access.log.1").read_text()
    assert "/after" not in (tmp / "logs" / "access.log.1").read_text()
    assert '"GET /after ' in log.read_text()
    assert service.stats.value("log_reopens", path=str(log)) == 1
    assert len(service.runtime.files) == 1  # stdout is not reopened
    d = service.stopService()
    reactor.advance(1)  # drain_timeout: the test's connections never close
    assert d.called and d.result is None
    assert signals.handlers[signal.SIGUSR1] is signal.SIG_DFL


def test_failed_reopen_is_counted_and_post_reopen_logs_retries(mesh):
    service, reactor, signals, get, admin, tmp = mesh
    os.rename(tmp / "logs", tmp / "rotated")
    signals.handlers[signal.SIGUSR1](signal.SIGUSR1, None)
    reactor.runQueued()
    log = str(tmp / "logs" / "access.log")
    assert service.stats.value("log_reopen_errors", path=log) == 1
    get(b"/still-old-file")
    assert '"GET /still-old-file ' in (tmp / "rotated" / "access.log").read_text()
    reply = send(admin, b"POST /reopen_logs HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 500 ")
    assert reply.endswith(b"reopened 0 log file(s); 1 failed:\n%s: No such file or directory\n" % log.encode())
    assert service.stats.value("log_reopen_errors", path=log) == 2
    (tmp / "logs").mkdir()
    reply = send(admin, b"POST /reopen_logs HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 200 ") and reply.endswith(b"\r\n\r\nOK\n")
    get(b"/new-file")
    assert '"GET /new-file ' in (tmp / "logs" / "access.log").read_text()
    assert service.stats.value("log_reopens", path=log) == 1


def test_sigusr1_chains_to_the_previous_handler(tmp_path):
    rotated = []
    signals = Signals()
    signals.handlers[signal.SIGUSR1] = lambda signum, frame: rotated.append(signum)  # e.g. twistd --logfile
    cfg = _config.loads(CONFIG.format(admin=9901, listen=15001, log=tmp_path / "access.log"))
    reactor = Reactor()
    service = MeshService(cfg, reactor, installSignal=signals)
    service.startService()
    signals.handlers[signal.SIGUSR1](signal.SIGUSR1, None)
    assert rotated == [signal.SIGUSR1]
    reactor.runQueued()
    assert service.stats.value("log_reopens", path=str(tmp_path / "access.log")) == 1
    d = service.stopService()
    reactor.advance(1)
    assert d.result is None
    signals.handlers[signal.SIGUSR1](signal.SIGUSR1, None)  # the previous handler is back
    assert rotated == [signal.SIGUSR1, signal.SIGUSR1]


# --- under twistd ----------------------------------------------------------------------------------------------


def waitFor(predicate, what, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("timed out waiting for " + what)


def contains(path, text):
    try:
        with open(path) as f:
            return text in f.read()
    except FileNotFoundError:
        return False


@pytest.fixture
def twistd(tmp_path):
    admin, listen = support.freePort(), support.freePort()
    log = str(tmp_path / "access.log")
    proc = support.startTxmesh(CONFIG.format(admin=admin, listen=listen, log=log), admin)
    support.waitForPort(listen, proc=proc.popen)

    def get(path):
        with urllib.request.urlopen("http://127.0.0.1:%d%s" % (listen, path), timeout=5) as r:
            assert r.status == 200

    try:
        yield proc, admin, get, log
    finally:
        proc.stop()


def rotateAndCheck(proc, get, log, reopen):
    get("/before")
    waitFor(lambda: contains(log, '"GET /before '), "the first line")
    os.rename(log, log + ".1")
    reopen()
    waitFor(lambda: os.path.exists(log), "the reopened file")
    get("/after")
    waitFor(lambda: contains(log, '"GET /after '), "a line in the new file")
    assert not contains(log + ".1", "/after")
    assert proc.popen.poll() is None, proc.output()


def test_twistd_reopens_on_sigusr1(twistd):
    proc, admin, get, log = twistd
    rotateAndCheck(proc, get, log, lambda: proc.signal(signal.SIGUSR1))
    assert support.adminGet(admin, "/stats?format=text&filter=log_reopens")[1] == (
        b'log_reopens{path="%s"} 1\n' % log.encode())


def test_twistd_reopens_on_post_reopen_logs(twistd):
    proc, admin, get, log = twistd

    def post():
        req = urllib.request.Request("http://127.0.0.1:%d/reopen_logs" % admin, data=b"", method="POST")
        with urllib.request.urlopen(req, timeout=5) as r:
            assert (r.status, r.read()) == (200, b"OK\n")

    rotateAndCheck(proc, get, log, post)
    with pytest.raises(urllib.error.HTTPError) as e:
        support.adminGet(admin, "/reopen_logs")
    assert e.value.code == 405
    get("/last")
    assert proc.stop() in (0, -signal.SIGTERM)  # twistd re-raises the signal it stopped on
    assert contains(log, '"GET /last ')  # flushed to the new file at shutdown
    assert "Traceback" not in proc.output()
