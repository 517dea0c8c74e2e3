"""
The workers' supervisor (txmesh/workers.py) on a Clock with a fake launcher and StringTransport channels: spawn,
restart with backoff (counted), requests and their timeouts, stop (SIGTERM, SIGKILL after the timeout); the merge
of the workers' figures (txmesh/worker_stats.py); the ``workers`` key (txmesh/workers_config.py).
"""

import os

import pytest
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.task import Clock
from twisted.internet.interfaces import IPushProducer
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from zope.interface import implementer
from zope.interface.verify import verifyObject

from txmesh import config
from txmesh.errors import ConfigError
from txmesh.hot_restart_wire import MessageDecoder, encode
from txmesh.interfaces import IHotRestart, IMeshControl, IWorkerLauncher
from txmesh.stats import StatsStore
from txmesh.worker_stats import MergedStats, Retired, mergeClusters, mergeStats
from txmesh.workers import ProcessLauncher, WorkerError, WorkerRefused, WorkerSupervisor
from txmesh.workers_config import buildWorkers


class FakeProcess:
    def __init__(self, pid):
        self.pid = pid
        self.signals = []

    def signalProcess(self, name):
        self.signals.append(name)


class UNIXTransport(StringTransport):
    def __init__(self):
        super().__init__()
        self.fds = []

    def sendFileDescriptor(self, fd):
        self.fds.append(fd)


@implementer(IWorkerLauncher)
class FakeLauncher:
    def __init__(self):
        self.launched = []  # (message, fds, process protocol, channel protocol, process, transport)
        self.nextPid = 100

    def launch(self, message, fds, process, channel, handoff=None):
        self.nextPid += 1
        transport = UNIXTransport()
        channel.makeConnection(transport)
        proc = FakeProcess(self.nextPid)
        self.launched.append((message, fds, process, channel, proc, transport))
        return proc


def make(count=2, **kw):
    clock, launcher, stats = Clock(), FakeLauncher(), StatsStore()
    served, ended = [], []
    sup = WorkerSupervisor(clock, launcher, count, lambda i: ({"type": "sockets", "worker": {"index": i}}, [7]),
                           stats, serving=served.append, ended=ended.append, **kw)
    return sup, clock, launcher, stats, served, ended


def say(channel, message):
    channel.dataReceived(encode(message))


def sent(transport):
    """The messages written on ``transport`` (a UNIXTransport), each with the descriptors it declared."""
    return [m for m, _ in MessageDecoder().feed(transport.value(), transport.fds)]


def test_launcher_interface():
    verifyObject(IWorkerLauncher, FakeLauncher())
    verifyObject(IWorkerLauncher, ProcessLauncher(Clock(), ["--config", "x"], {}))


def test_start_launches_each_worker_with_its_sockets_and_serving_is_reported():
    sup, clock, launcher, stats, served, _ = make()
    sup.start()
    assert [m["worker"]["index"] for m, *_ in launcher.launched] == [0, 1]
    assert all(fds == [7] for _, fds, *_ in launcher.launched)
    assert [w.state for w in sup.workers] == ["starting", "starting"]
    say(launcher.launched[1][3], {"type": "serving"})
    assert served == [sup.workers[1]] and sup.serving == [sup.workers[1]]


def test_a_dead_worker_is_restarted_with_backoff_and_counted():
    sup, clock, launcher, stats, _, ended = make(backoff=(0.1, 1.0), stableAfter=10.0)
    sup.start()
    worker = sup.workers[0]
    delays = []
    for _ in range(5):
        launcher.launched[-2 if len(launcher.launched) == 2 else -1][2].processEnded(
            Failure(ProcessTerminated(signal=9)))
        assert worker.state == "ended" and worker.channel is None
        before = len(launcher.launched)
        waited = 0.0
        while len(launcher.launched) == before:
            clock.advance(0.05)
            waited += 0.05
        delays.append(round(waited, 2))
        clock.advance(0.01)
    # 0.1, 0.2, 0.4, 0.8, then the longest delay (1 s)
    assert delays == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0], abs=0.051)
    assert worker.restarts == 5 and stats.value("server_worker_restarts", worker="0") == 5
    assert stats.value("server_worker_restarts", worker="1") == 0
    assert ended == [worker] * 5
    # a worker that lived past stableAfter starts over from the first delay
    clock.advance(20)
    launcher.launched[-1][2].processEnded(Failure(ProcessTerminated(exitCode=1)))
    before = len(launcher.launched)
    clock.advance(0.1)
    assert len(launcher.launched) == before + 1


def test_requests_are_answered_by_id_and_time_out():
    sup, clock, launcher, *_ = make(count=1, requestTimeout=2.0)
    sup.start()
    worker = sup.workers[0]
    channel, transport = launcher.launched[0][3], launcher.launched[0][5]
    results = []
    sup.request(worker, {"type": "dump"}).addBoth(results.append)
    (request,) = sent(transport)
    assert request["type"] == "dump"
    say(channel, {"type": "answer", "id": request["id"], "result": {"stats": []}})
    assert results == [{"stats": []}]
    sup.request(worker, {"type": "control", "action": "explain"}).addBoth(results.append)
    say(channel, {"type": "answer", "id": sent(transport)[-1]["id"], "error": "no such listener", "refused": True})
    assert results[-1].check(WorkerRefused) and isinstance(results[-1].value, ValueError)
    sup.request(worker, {"type": "dump"}).addBoth(results.append)
    clock.advance(2.0)
    assert results[-1].check(WorkerError) and "within 2s" in results[-1].getErrorMessage()


def test_pending_requests_fail_when_the_worker_ends():
    sup, clock, launcher, *_ = make(count=1)
    sup.start()
    results = []
    sup.request(sup.workers[0], {"type": "dump"}).addBoth(results.append)
    launcher.launched[0][3].connectionLost(Failure(ProcessDone(0)))
    assert results[0].check(WorkerError)
    assert sup.request(sup.workers[0], {"type": "dump"}).addErrback(lambda f: f.check(WorkerError)).result


def test_stop_terminates_every_worker_then_kills_the_late_ones_and_never_restarts():
    sup, clock, launcher, *_ = make()
    sup.start()
    done = []
    sup.stop(15.0).addCallback(done.append)
    procs = [entry[4] for entry in launcher.launched]
    assert [p.signals for p in procs] == [["TERM"], ["TERM"]]
    launcher.launched[0][2].processEnded(Failure(ProcessDone(0)))
    assert done == []
    clock.advance(15.0)
    assert procs[1].signals == ["TERM", "KILL"] and procs[0].signals == ["TERM"]
    launcher.launched[1][2].processEnded(Failure(ProcessTerminated(signal=9)))
    assert done == [None]
    clock.advance(60)
    assert len(launcher.launched) == 2


def test_a_restart_asked_is_not_a_failure():
    sup, clock, launcher, stats, *_ = make(count=1)
    sup.start()
    sup.restart(sup.workers[0])
    assert launcher.launched[0][4].signals == ["TERM"]
    launcher.launched[0][2].processEnded(Failure(ProcessDone(0)))
    clock.advance(0)
    assert len(launcher.launched) == 2 and stats.value("server_worker_restarts", worker="0") == 0


def rows(**values):
    store = StatsStore()
    for name, v in values.items():
        store.counter(name, (("listener", "web"),), "help").value = v
    return store


def test_merge_sums_counters_histograms_and_gauges_and_keeps_per_worker_gauges_apart():
    a, b = rows(downstream_rq=3), rows(downstream_rq=4)
    for store, active, version in ((a, 2, 1), (b, 5, 2)):
        store.gauge("downstream_cx_active", (("listener", "web"),)).value = active
        store.gauge("config_version").value = version
        store.histogram("downstream_rq_time", (("listener", "web"),)).observe(0.003 * version)
    merged = mergeStats([(0, a.export()), (1, b.export())])
    assert merged.value("downstream_rq", listener="web") == 7
    assert merged.value("downstream_cx_active", listener="web") == 7
    assert merged.value("config_version", worker="0") == 1 and merged.value("config_version", worker="1") == 2
    (labels, h), = merged.series("downstream_rq_time")
    assert h.value == 2 and h.sum == pytest.approx(0.009)
    # prometheus exposition works on the merge (consistent label names per family)
    from prometheus_client import CollectorRegistry, generate_latest
    registry = CollectorRegistry()
    registry.register(merged)
    text = generate_latest(registry).decode()
    assert 'txmesh_config_version{worker="1"} 2.0' in text


def test_retired_workers_keep_their_counters_in_the_sum():
    own = StatsStore()
    own.counter("server_worker_restarts", (("worker", "0"),)).value = 1
    own.gauge("config_version").value = 3
    retired = Retired()
    dead = rows(downstream_rq=10)
    dead.gauge("downstream_cx_active", (("listener", "web"),)).value = 4
    retired.add(dead.export())
    view = MergedStats(own)
    view.update([(None, retired.rows()), (0, rows(downstream_rq=2).export())])
    assert view.total("downstream_rq") == 12
    assert view.total("downstream_cx_active") == 0  # a dead worker's connections are gone
    assert view.value("config_version", worker="parent") == 3
    assert view.value("server_worker_restarts", worker="0") == 1


def test_merge_clusters_sums_counters_and_health_needs_every_worker():
    def view(rq, healthy, active):
        return [{"name": "up", "stats": {"upstream_rq": rq}, "hosts": [
            {"address": "10.0.0.1:80", "healthy": healthy, "active_requests": active, "stats": {"rq_total": rq}}]}]

    (cluster,) = mergeClusters([view(3, True, 1), view(4, False, 2)])
    assert cluster["stats"]["upstream_rq"] == 7 and cluster["workers"] == 2
    (host,) = cluster["hosts"]
    assert host["healthy"] is False and host["active_requests"] == 3 and host["stats"]["rq_total"] == 7
    assert mergeClusters([]) == []


LISTENER = """
listeners:
  - name: web
    protocol: http
    address: {address}
    route_config:
      virtual_hosts: [{{name: a, domains: ["*"], routes: [{{match: {{prefix: /}}, direct_response: {{status: 200}}}}]}}]
"""


@pytest.mark.parametrize("value, error", [
    ("0", "workers: must be between 1 and 64, or auto"),
    ("65", "workers: must be between 1 and 64, or auto"),
    ("two", "workers: must be a number of processes or auto, not 'two'"),
    ("1.5", "workers: must be a number of processes or auto, not 1.5"),
])
def test_bad_worker_counts_name_the_key(value, error):
    with pytest.raises(ConfigError) as e:
        config.loads("workers: %s\n" % value + LISTENER.format(address="tcp:0"), "mesh.yaml")
    assert str(e.value) == "mesh.yaml:1: " + error


def test_auto_is_the_cores_and_listeners_must_be_shareable():
    assert config.loads(LISTENER.format(address="tcp:0")).workers == 1
    assert config.loads("workers: 3\n" + LISTENER.format(address="tcp:0")).workers == 3

    class R:
        def error(self, reason, path):
            return ConfigError(reason, path)

    assert buildWorkers(R(), {"workers": "auto"}, [], affinity=lambda pid: {0, 1, 2}) == 3

    class Listener:
        address = "ssl:0:privateKey=k.pem"

    with pytest.raises(ConfigError) as e:
        buildWorkers(R(), {"workers": 2}, [Listener()])
    assert str(e.value).startswith("listeners[0].address: with workers: 2, a listener's address must be one of "
                                   "tcp, tcp6, unix, systemd")
    assert buildWorkers(R(), {"workers": 2}, [Listener()] * 0) == 2


def test_workers_cannot_change_by_reload():
    from txmesh.config_diff import diffConfigs
    old = config.loads(LISTENER.format(address="tcp:0"), "mesh.yaml")
    new = config.loads("workers: 2\n" + LISTENER.format(address="tcp:0"), "mesh.yaml")
    with pytest.raises(ConfigError) as e:
        diffConfigs(old, new)
    assert "workers" in str(e.value) and "restart" in str(e.value)


def test_the_worker_side_and_the_parent_control_provide_their_interfaces(tmp_path):
    import socket

    from txmesh.hot_restart_takeover import Inheritance
    from txmesh.worker import WorkerLink
    from txmesh.workers_control import ParentControl

    a, b = socket.socketpair()
    try:
        link = WorkerLink(Clock(), Inheritance(1, [], {}, a, {"worker": {"index": 0, "config": ""}}), lambda: None)
        verifyObject(IHotRestart, link)
    finally:
        a.close()
        b.close()
    verifyObject(IMeshControl, ParentControl(object(), Clock()))


# -- the parent: reload in every worker, or in none --

PARENT_CONFIG = """
workers: 2
admin:
  address: tcp:9901:interface=127.0.0.1
listeners:
  - name: web
    protocol: http
    address: tcp:{port}:interface=127.0.0.1
    route_config:
      virtual_hosts: [{{name: a, domains: ["*"], routes: [{{match: {{prefix: /}}, direct_response: {{status: {status}}}}}]}}]
"""


@implementer(IPushProducer)
class FakePort:
    def __init__(self, port):
        self.port = port
        self.paused = False
        self.stopped = False

    def getHost(self):
        return IPv4Address("TCP", "127.0.0.1", self.port)

    def fileno(self):
        return 40 + self.port % 10

    def pauseProducing(self):
        self.paused = True

    def resumeProducing(self):
        self.paused = False

    def stopProducing(self):
        pass

    def stopListening(self):
        self.stopped = True


@implementer(IHotRestart)
class FakeHot:
    """Every listener's port is a FakePort; the admin listens on the memory reactor."""

    def __init__(self):
        self.ports = {}

    def endpoint(self, name, address, endpoint):
        if name == "admin":
            return endpoint
        hot = self

        class Endpoint:
            def listen(self, factory):
                port = hot.ports[name] = FakePort(int(address.split(":")[1]))
                return defer.succeed(port)

        return Endpoint()

    def serving(self):
        pass

    def stop(self):
        return defer.succeed(None)


def startParent(tmp_path):
    from txmesh.workers_parent import WorkersParent, readConfig

    path = tmp_path / "mesh.yaml"
    path.write_text(PARENT_CONFIG.format(port=15001, status=200))
    text, cfg = readConfig(str(path))
    launcher, hot = FakeLauncher(), FakeHot()
    parent = WorkersParent(cfg, text, MemoryReactorClock(), launcher, hotRestart=hot,
                           installSignal=lambda *a: None, runtimeDir=str(tmp_path), gatherInterval=0)
    parent.privilegedStartService()
    parent.startService()
    for entry in launcher.launched:
        say(entry[3], {"type": "serving"})
    return parent, path, launcher, hot


def answerApply(launcher, outcomes):
    """Answer each worker's last 'apply' with its outcome; @return the requests."""
    requests = []
    for (message, fds, process, channel, proc, transport), outcome in zip(launcher.launched, outcomes):
        request = [m for m in sent(transport) if m["type"] == "apply"][-1]
        requests.append(request)
        if outcome is not None:
            say(channel, {"type": "answer", "id": request["id"],
                          "result": {"outcome": outcome, "error": "bad" if outcome == "rejected" else None,
                                     "version": request["version"]}})
        transport.clear()
        transport.fds = []
    return requests


def test_the_parent_starts_workers_with_its_sockets_and_text(tmp_path):
    parent, path, launcher, hot = startParent(tmp_path)
    assert parent.serving and parent._isReady()
    message, fds, *_ = launcher.launched[0]
    assert message["sockets"] == [{"name": "listener:web", "address": "127.0.0.1:15001"}] and fds == [41]
    assert message["worker"]["config"] == path.read_text() and message["worker"]["version"] == 1
    assert message["worker"]["admin"] == str(tmp_path / "worker-0.sock")
    assert hot.ports["listener:web"].paused


def test_a_reload_one_worker_refuses_is_put_back_everywhere(tmp_path):
    parent, path, launcher, hot = startParent(tmp_path)
    old = path.read_text()
    path.write_text(PARENT_CONFIG.format(port=15001, status=404))
    results = []
    parent.reload("SIGHUP").addCallback(results.append)
    first = answerApply(launcher, ["applied", "rejected"])
    assert [r["version"] for r in first] == [2, 2] and first[0]["config"] == path.read_text()
    # worker 0 applied it: it gets the running text back, with the running version
    (back,) = answerApply(launcher, ["applied"])[:1]
    assert back["config"] == old and back["version"] == 1
    (result,) = results
    assert result["outcome"] == "rejected" and result["version"] == 1 and "worker 1: bad" in result["error"]
    assert parent.text == old and parent.reloadFailed.value == 1
    assert [p.signals for p in (e[4] for e in launcher.launched)] == [[], []]


def test_a_reload_every_worker_applies_advances_the_one_version(tmp_path):
    parent, path, launcher, hot = startParent(tmp_path)
    path.write_text(PARENT_CONFIG.format(port=15002, status=200))  # the listener moves: a new socket
    results = []
    parent.reload("POST /reload").addCallback(results.append)
    assert launcher.launched[0][5].fds == [42]  # the new socket goes with the request
    requests = answerApply(launcher, ["applied", "applied"])
    assert requests[0]["sockets"] == ["listener:web"] and requests[0]["fds"] == 1  # the channel hands it over
    (result,) = results
    assert result["outcome"] == "applied" and result["version"] == 2
    assert result["workers"] == {"0": "applied", "1": "applied"}
    assert parent.version.version == 2 and parent.versionGauge.value == 2
    assert parent.ports["listener:web"].port == 15002
    # the old socket's parent copy is closed; a worker starting now gets the new text, version and socket
    message, fds = parent.startMessage(0)
    assert message["worker"]["version"] == 2 and message["sockets"][0]["address"] == "127.0.0.1:15002"


def test_a_worker_that_does_not_answer_a_reload_is_restarted(tmp_path):
    parent, path, launcher, hot = startParent(tmp_path)
    path.write_text(PARENT_CONFIG.format(port=15001, status=503))
    results = []
    parent.reload("SIGHUP").addCallback(results.append)
    answerApply(launcher, ["rejected", None])
    parent.reactor.advance(parent.supervisor.requestTimeout)
    assert results[0]["outcome"] == "rejected"
    assert launcher.launched[1][4].signals == ["TERM"]  # restarted, with the running configuration


def test_an_invalid_file_is_rejected_before_any_worker_is_asked(tmp_path):
    parent, path, launcher, hot = startParent(tmp_path)
    path.write_text("workers: 2\nlisteners: []\n")
    results = []
    parent.reload("SIGHUP").addCallback(results.append)
    assert results[0]["outcome"] == "rejected" and "must list at least one listener" in results[0]["error"]
    assert all(not [m for m in sent(e[5]) if m["type"] == "apply"] for e in launcher.launched)


def test_a_workers_log_lines_name_it():
    import io
    import json as _json

    from twisted.logger import LogLevel

    from txmesh.logs import OperatorLogObserver

    event = {"log_level": LogLevel.info, "log_namespace": "txmesh.x", "log_format": "hello {n}", "n": 1,
             "log_time": 0.0}
    text, js = io.StringIO(), io.StringIO()
    OperatorLogObserver(text, worker=1)(dict(event))
    OperatorLogObserver(js, format="json", worker=1)(dict(event))
    assert " info [worker 1] [txmesh.x] hello 1\n" in text.getvalue()
    record = _json.loads(js.getvalue())
    assert record["worker"] == 1 and record["message"] == "hello 1"
    plain = io.StringIO()
    OperatorLogObserver(plain)(dict(event))
    assert "[worker" not in plain.getvalue()


def test_workers_and_dynamic_resources_go_together():
    """The parent is the xDS client (txmesh/workers_xds.py, tests/test_workers_xds.py): no refusal at load."""
    from txmesh.config_reader import Reader

    r = Reader("mesh.yaml", {})
    assert buildWorkers(r, {"workers": 2, "dynamic_resources": {"cluster": "xds"}}, []) == 2


def test_a_request_sent_right_after_the_start_message_is_kept_for_the_channel():
    """The admin polled while a worker started: its ``dump`` came in the same read as the start message (the worker
    exited with "more than one answer" and was restarted, again and again under a tight poll)."""
    import socket

    from txmesh.worker import receiveStart

    parentEnd, childEnd = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        start = {"type": "sockets", "pid": 1, "fds": 0, "environment": {}, "sockets": [],
                 "worker": {"index": 0, "config": "listeners: []"}}
        dump = encode({"type": "dump", "id": 7})
        parentEnd.sendall(encode(start) + dump + dump[:5])  # and the start of one more
        inheritance = receiveStart(os.dup(childEnd.fileno()), timeout=5)
        assert [m["type"] for m, _ in inheritance.early] == ["dump"] and inheritance.early[0][0]["id"] == 7
        assert [m["id"] for m, _ in inheritance.decoder.feed(dump[5:])] == [7]  # the partial one completes
        inheritance.connection.close()
    finally:
        parentEnd.close()
        childEnd.close()
