"""
The logs an operator reads, from txmesh under twistd (a subprocess): the startup summary for HTTP/1.1, gRPC and
Dubbo listeners and clusters without Twisted's factory lines, a port in use and an unreadable config in one line
with a non-zero exit, the drain timeout's lines with counts and no traceback, journald priorities, JSON lines.
In process: the summary, the listener a bind error names, and the observer handed to twistd's application.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest
from twisted.application.service import Application
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import ILogObserver, formatEvent, globalLogPublisher

from tests import support
from txmesh import config as _config
from txmesh.logs import OperatorLogObserver, levelOf
from txmesh.service import MeshService
from txmesh.startup import RunningMesh, settleHeap, whoListensOn

pytestmark = pytest.mark.timeout(60)

TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile="]

CONFIG = """
drain_timeout: {drain}
admin:
  address: tcp:{admin}:interface=127.0.0.1
listeners:
  - name: web
    protocol: http1
    address: tcp:{web}:interface=127.0.0.1
    route_config:
      virtual_hosts:
        - name: all
          domains: ["*"]
          routes:
            - match: {{prefix: /}}
              route: {{cluster: silent, timeout: 30s}}
  - name: rpc
    protocol: grpc
    address: tcp:{rpc}:interface=127.0.0.1
    route_config:
      virtual_hosts:
        - name: all
          domains: ["*"]
          routes:
            - match: {{prefix: /}}
              route: {{cluster: grpc_app}}
  - name: dubbo_in
    protocol: dubbo
    address: tcp:{dubbo}:interface=127.0.0.1
    default_cluster: provider
clusters:
  - name: silent
    protocol: http1
    lb_policy: least_request
    endpoints: [{{address: "127.0.0.1:{silent}"}}]
  - name: grpc_app
    protocol: grpc
    endpoints: [{{address: "127.0.0.1:{silent}"}}, {{address: "127.0.0.1:{silent2}"}}]
  - name: provider
    protocol: dubbo
    endpoints: [{{address: "127.0.0.1:{silent}"}}]
"""

NOISE = ("Starting factory", "Stopping factory", "starting on", "Port", "twistd 2", "reactor class:",
         "Main loop terminated")


@pytest.fixture
def silentUpstream():
    """A port that accepts connections (the kernel's backlog) and never answers: requests stay in flight."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    yield s.getsockname()[1]
    s.close()


def configText(drain="500ms", **ports):
    """The test mesh.yaml and its ports (free ones unless given)."""
    for name in ("admin", "web", "rpc", "dubbo", "silent", "silent2"):
        ports.setdefault(name, support.freePort())
    return CONFIG.format(drain=drain, **ports), ports


def writeConfig(tmp_path, **ports):
    """configText() written to tmp_path/mesh.yaml: (path, ports)."""
    text, ports = configText(**ports)
    path = tmp_path / "mesh.yaml"
    path.write_text(text)
    return str(path), ports


def twistdEnv():
    env = dict(os.environ)
    env["PYTHONPATH"] = support.ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("JOURNAL_STREAM", None)
    return env


def waitForLine(proc, text, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in proc.output():
            return
        time.sleep(0.05)
    raise AssertionError("no %r in:\n%s" % (text, proc.output()))


def inFlight(adminPort):
    """Whether the web listener has a request in flight (its downstream_rq_active gauge)."""
    return b'downstream_rq_active{listener="web"} 1' in support.adminGet(adminPort, "/stats?format=text")[1]


def test_startup_summary_and_drain_timeout(tmp_path, silentUpstream):
    text, ports = configText(silent=silentUpstream)
    proc = support.startTxmesh(text, ports["admin"])
    path = proc.configPath
    try:
        waitForLine(proc, "started: 3 listener(s), 3 cluster(s)")
        # a request that the silent upstream never answers is in flight when the drain starts
        client = socket.create_connection(("127.0.0.1", ports["web"]), timeout=5)
        client.sendall(b"GET /hang HTTP/1.1\r\nHost: x\r\n\r\n")
        deadline = time.monotonic() + 10
        while not inFlight(ports["admin"]):
            assert time.monotonic() < deadline, "the request never reached txmesh"
            time.sleep(0.05)
        proc.signal(signal.SIGTERM)
        proc.popen.wait(15)
        client.close()
    finally:
        proc.stop()
    out = proc.output()
    assert proc.popen.returncode in (0, -signal.SIGTERM), out  # twistd ends by the signal it stopped on
    lines = out.splitlines()
    assert re.search(r"info \[\S+\] txmesh \d+\.\d+\.\d+\S*, Python 3\.\d+\.\d+, Twisted \d+\.\d+\.\d+, reactor "
                     r"txmesh\.reactor\.TxmeshReactor, config %s$" % re.escape(path), lines[0]), lines[0]
    for expected in ("listener web: http1 on 127.0.0.1:%d" % ports["web"],
                     "listener rpc: grpc on 127.0.0.1:%d" % ports["rpc"],
                     "listener dubbo_in: dubbo on 127.0.0.1:%d" % ports["dubbo"],
                     "cluster silent: http1, least_request, 1 host (127.0.0.1:%d)" % silentUpstream,
                     "cluster grpc_app: grpc, round_robin, 2 hosts (127.0.0.1:%d, 127.0.0.1:%d)"
                     % (silentUpstream, ports["silent2"]),
                     "cluster provider: dubbo, round_robin, 1 host (127.0.0.1:%d)" % silentUpstream,
                     "admin API on 127.0.0.1:%d" % ports["admin"],
                     "info [txmesh.service.MeshService] draining: 1 connection(s) open, 1 request(s) in flight, "
                     "for up to 0.5s",
                     "warn [txmesh.service.MeshService] drain timeout (0.5s) passed: cut 1 connection(s) with 1 "
                     "request(s) in flight"):
        assert any(line.endswith(expected) for line in lines), (expected, out)
    for noise in NOISE:
        assert noise not in out, (noise, out)
    assert "Traceback" not in out and "CancelledError" not in out and "critical" not in out, out


def test_port_in_use_is_one_line_with_journald_priorities(tmp_path):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    try:
        path, ports = writeConfig(tmp_path, dubbo=taken.getsockname()[1])
        with tempfile.TemporaryFile() as out:
            st = os.fstat(out.fileno())
            env = dict(twistdEnv(), JOURNAL_STREAM="%d:%d" % (st.st_dev, st.st_ino))
            rc = subprocess.run(TWISTD + ["txmesh", "--config", path], stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env, cwd=support.ROOT, timeout=30).returncode
            out.seek(0)
            text = out.read().decode()
    finally:
        taken.close()
    assert rc == 1, text
    lines = text.splitlines()
    assert len(lines) == 2, text
    assert lines[0].startswith("<6>info [") and "txmesh " in lines[0], text  # journald stamps the time itself
    assert lines[1] == ("<3>error [txmesh.startup.RunningMesh] listener 'dubbo_in' (dubbo) cannot listen on "
                        "127.0.0.1:%d: address already in use" % ports["dubbo"]), text


def test_unreadable_config_is_one_line(tmp_path):
    missing = str(tmp_path / "missing.yaml")
    out = subprocess.run(TWISTD + ["txmesh", "--config", missing], capture_output=True, text=True,
                         env=twistdEnv(), cwd=support.ROOT, timeout=30)
    assert out.returncode == 1
    assert out.stdout == ""
    lines = out.stderr.splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].endswith("error [txmesh] txmesh: invalid configuration: %s: cannot read configuration: "
                             "[Errno 2] No such file or directory: '%s'" % (missing, missing)), lines


def test_json_lines_at_debug_level(tmp_path):
    text, ports = configText(drain="1s")
    proc = support.startTxmesh(text, ports["admin"], pluginArgs=("--log-format", "json", "--log-level", "debug"))
    try:
        waitForLine(proc, "started: 3 listener(s)")
        proc.signal(signal.SIGTERM)
        proc.popen.wait(15)
    finally:
        proc.stop()
    out = proc.output()
    assert proc.popen.returncode in (0, -signal.SIGTERM), out  # twistd ends by the signal it stopped on
    records = [json.loads(line) for line in out.splitlines()]  # every line is one JSON object
    assert all({"time", "level", "namespace", "message"} <= set(r) for r in records)
    web = [r for r in records if r.get("listener") == "web"]
    assert web[0]["message"] == "listener web: http1 on 127.0.0.1:%d" % ports["web"]
    assert (web[0]["protocol"], web[0]["address"], web[0]["level"]) == ("http1", "127.0.0.1:%d" % ports["web"], "info")
    # Twisted's factory lines are there at debug, not above
    factory = [r for r in records if r["message"].startswith("Starting factory")]
    assert factory and {r["level"] for r in factory} == {"debug"}
    drained = [r for r in records if r["message"].startswith("drained in")]
    assert len(drained) == 1 and drained[0]["level"] == "info" and drained[0]["elapsed"] < 1.0, records


def test_summary_and_observer_in_process(tmp_path):
    path, ports = writeConfig(tmp_path, web=0)
    cfg = _config.load(path)
    reactor = MemoryReactorClock()
    observer = OperatorLogObserver(open(os.devnull, "w"))
    running = RunningMesh(MeshService(cfg, reactor), observer, reactor, path)
    application = Application("txmesh")
    running.setServiceParent(application)
    assert application.getComponent(ILogObserver) is observer
    lines = [(fmt.format(**fields), fields) for fmt, fields in running.summary()]
    # the memory reactor's ports are not TCP ports: the configured address stands in for the bound one
    assert lines[0] == ("listener web: http1 on 127.0.0.1:0",
                        {"listener": "web", "protocol": "http1", "address": "127.0.0.1:0"})
    assert lines[3][0] == "cluster silent: http1, least_request, 1 host (127.0.0.1:%d)" % ports["silent"]
    assert lines[-2][0] == "admin API on 127.0.0.1:%d" % ports["admin"]
    observer.stream.close()


def test_who_listens_on(tmp_path):
    path, ports = writeConfig(tmp_path)
    cfg = _config.load(path)
    assert whoListensOn(cfg, "127.0.0.1", ports["rpc"]) == "listener 'rpc' (grpc)"
    assert whoListensOn(cfg, "127.0.0.1", ports["admin"]) == "the admin API"
    assert whoListensOn(cfg, "127.0.0.2", ports["rpc"]) == "a listener"


def drainEvents(tmp_path, drain, request):
    """Start a MeshService on a memory reactor, leave ``request`` in flight on its web listener, stop it."""
    path, ports = writeConfig(tmp_path, drain=drain)
    reactor = MemoryReactorClock()
    service = MeshService(_config.load(path), reactor, installSignal=lambda signum, handler: None)
    service.startService()
    web = reactor.tcpServers[0][1]
    protocol = web.buildProtocol(None)
    protocol.makeConnection(StringTransport())
    protocol.dataReceived(request)
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        d = service.stopService()
        reactor.advance(0.5)
        if not d.called:  # without a time limit the drain waits: the connection ends 0.5s in
            protocol.connectionLost(None)
            reactor.advance(0)
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert d.called
    return [(levelOf(e).name, formatEvent(e)) for e in events if e.get("log_namespace") == "txmesh.service.MeshService"]


def test_drain_lines_in_process(tmp_path):
    # a request the silent upstream never answers is cut at the drain timeout
    assert drainEvents(tmp_path, "500ms", b"GET /hang HTTP/1.1\r\nHost: x\r\n\r\n") == [
        ("info", "draining: 1 connection(s) open, 1 request(s) in flight, for up to 0.5s"),
        ("warn", "drain timeout (0.5s) passed: cut 1 connection(s) with 1 request(s) in flight")]
    # drain_timeout 0 means no limit: the drain waits for the last connection
    lines = drainEvents(tmp_path, "0s", b"")
    assert lines == [("info", "draining: 1 connection(s) open, 0 request(s) in flight, without a time limit"),
                     ("info", "drained in 0.500s: every connection closed by itself")]


def test_settle_heap_moves_what_starting_made_out_of_the_collectors_sight():
    """After start every live object is frozen (gc.freeze): a full collection while serving walks only new ones."""
    import gc

    class Cyclic:
        pass

    c = Cyclic()
    c.me = c
    del c
    gc.unfreeze()
    try:
        settleHeap()
        frozen = gc.get_freeze_count()
        assert frozen > 1000
        assert not [o for o in gc.get_objects() if type(o) is Cyclic]  # collected first, not frozen
        assert gc.get_count()[0] < 10
    finally:
        gc.unfreeze()
