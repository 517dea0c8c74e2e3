"""
The sd_notify notifier (txmesh/systemd.py) with a Clock and a recording sender, plus one real abstract-namespace
datagram socket; and MeshService telling it READY once bound and STOPPING when the drain starts.
"""

import os
import socket

import pytest
from twisted.internet.task import Clock
from zope.interface.verify import verifyObject

from txmesh import config as _config
from txmesh.interfaces import IServiceNotifier
from txmesh.stats import StatsStore
from txmesh.systemd import (DatagramSender, MeshStatus, NullNotifier, SystemdNotifier, configVersion,
                            fromEnvironment, socketAddress, watchdogInterval)

pytestmark = pytest.mark.timeout(15)


class Recorder(list):
    """send(bytes): keeps each datagram as a list of (key, value)."""

    def __call__(self, data):
        self.append([tuple(line.split("=", 1)) for line in data.decode("utf-8").splitlines()])
        return True

    def keys(self):
        return [d[0][0] + "=" + d[0][1] for d in self]


def test_both_notifiers_provide_the_interface():
    verifyObject(IServiceNotifier, SystemdNotifier(Recorder(), Clock()))
    verifyObject(IServiceNotifier, NullNotifier())


def test_socket_addresses_path_abstract_and_junk():
    assert socketAddress("/run/systemd/notify") == "/run/systemd/notify"
    assert socketAddress("@/org/freedesktop/systemd1/notify/123") == "\0/org/freedesktop/systemd1/notify/123"
    assert socketAddress("relative/path") is None
    assert socketAddress("") is None
    assert socketAddress(None) is None


def test_no_notify_socket_does_nothing_and_unsets_the_watchdog_variables():
    env = {"WATCHDOG_USEC": "400000", "WATCHDOG_PID": "1", "PATH": "/bin"}
    sent = Recorder()
    n = fromEnvironment(env, Clock(), send=sent)
    assert isinstance(n, NullNotifier)
    assert env == {"PATH": "/bin"}
    n.ready("x")
    n.start(lambda: "x")
    n.stop()
    assert sent == []


def test_variables_are_removed_so_children_do_not_inherit_them():
    env = {"NOTIFY_SOCKET": "@n", "WATCHDOG_USEC": "400000", "WATCHDOG_PID": "42", "HOME": "/root"}
    n = fromEnvironment(env, Clock(), pid=42, send=Recorder())
    assert env == {"HOME": "/root"}
    assert isinstance(n, SystemdNotifier)
    assert n.watchdogInterval == pytest.approx(0.2)


def test_watchdog_only_for_our_pid():
    assert watchdogInterval("400000", None, 7) == pytest.approx(0.2)
    assert watchdogInterval("400000", "7", 7) == pytest.approx(0.2)
    assert watchdogInterval("400000", "8", 7) is None  # another process's watchdog
    assert watchdogInterval("400000", "x", 7) is None
    assert watchdogInterval(None, None, 7) is None
    assert watchdogInterval("0", None, 7) is None
    assert watchdogInterval("soon", None, 7) is None
    env = {"NOTIFY_SOCKET": "/run/n", "WATCHDOG_USEC": "400000", "WATCHDOG_PID": "8"}
    sent, clock = Recorder(), Clock()
    n = fromEnvironment(env, clock, pid=7, send=sent)
    n.start(lambda: "s")
    clock.advance(5)
    assert "WATCHDOG=1" not in sent.keys()


def test_ready_watchdog_period_status_and_stop():
    sent, clock = Recorder(), Clock()
    n = SystemdNotifier(sent, clock, watchdogInterval=0.2, statusInterval=1.0)
    n.ready("2 listeners")
    ticks = iter(range(1, 100))
    n.start(lambda: "status %d" % next(ticks))
    assert sent[0] == [("READY", "1"), ("STATUS", "2 listeners")]
    assert sent.keys() == ["READY=1", "WATCHDOG=1"]  # the first ping at once
    for _ in range(11):
        clock.advance(0.2)
    assert sent.keys().count("WATCHDOG=1") == 12
    assert [d for d in sent if d[0][0] == "STATUS"] == [[("STATUS", "status 1")], [("STATUS", "status 2")]]
    n.stopping("draining")
    assert sent[-1] == [("STOPPING", "1"), ("STATUS", "draining")]
    for _ in range(6):  # the status timer stopped with STOPPING; the watchdog runs on through the drain
        clock.advance(0.2)
    assert sent.keys()[-7:] == ["STOPPING=1"] + ["WATCHDOG=1"] * 6
    n.stop()
    count = len(sent)
    clock.advance(10)
    assert len(sent) == count
    assert clock.getDelayedCalls() == []


def test_reloading_sends_monotonic_usec_then_ready_ends_it():
    # not called by txmesh yet: file reload (issue 13 part 2) will call reloading() then ready()
    sent = Recorder()
    n = SystemdNotifier(sent, Clock(), monotonic=lambda: 1234.5678)
    n.reloading()
    n.ready("reloaded")
    assert sent == [[("RELOADING", "1"), ("MONOTONIC_USEC", "1234567800")], [("READY", "1"), ("STATUS", "reloaded")]]


def test_a_status_line_stays_one_line():
    sent = Recorder()
    SystemdNotifier(sent, Clock()).status("a\nWATCHDOG=1")
    assert sent == [[("STATUS", "a WATCHDOG=1")]]


def test_real_abstract_socket_receives_the_datagram():
    name = "txmesh-test-%d" % os.getpid()
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind("\0" + name)
        server.settimeout(5)
        n = fromEnvironment({"NOTIFY_SOCKET": "@" + name}, Clock())
        n.ready("up")
        assert server.recv(4096) == b"READY=1\nSTATUS=up\n"
        n.stop()


def test_a_missing_socket_is_logged_not_raised():
    send = DatagramSender("\0txmesh-nobody-listens-%d" % os.getpid())
    assert send(b"READY=1\n") is False
    assert send(b"READY=1\n") is False
    send.close()


def test_mesh_status_line():
    stats, clock = StatsStore(), Clock()
    cfg = _config.loads("listeners:\n  - name: http\n    protocol: http\n    address: tcp:15001\n    filters:\n"
                        "      - name: router\n", filename="/etc/m.yaml")
    status = MeshStatus(stats, cfg, [("http", "tcp:15001"), ("admin", "tcp:9901")], clock)
    stats.scope(listener="http").gauge("downstream_cx_active").set(3)
    stats.scope(listener="http").counter("downstream_rq").inc(50)
    clock.advance(10)
    line = status.describe()
    assert line == ("2 listeners (http tcp:15001, admin tcp:9901); 3 connections open; 5.0 req/s over 10s; "
                    "config /etc/m.yaml version %s" % configVersion(cfg.raw))
    clock.advance(5)
    assert "0.0 req/s over 5s" in status.describe()


def test_config_version_follows_the_content():
    assert configVersion({"a": 1, "b": [2]}) == configVersion({"b": [2], "a": 1})
    assert configVersion({"a": 1}) != configVersion({"a": 2})
    assert len(configVersion({})) == 8



def test_mesh_service_says_ready_once_bound_and_stopping_on_drain():
    from twisted.internet.testing import MemoryReactorClock, StringTransport

    from txmesh.service import MeshService

    from tests.test_integration_systemd import CONFIG

    cfg = _config.loads(CONFIG.format(admin=9901, listen=15001), filename="/etc/txmesh/mesh.yaml")
    reactor, sent = MemoryReactorClock(), Recorder()
    notifier = SystemdNotifier(sent, reactor, watchdogInterval=0.5, statusInterval=2.0)
    service = MeshService(cfg, reactor, installSignal=lambda *a: None, notifier=notifier)
    verifyObject(IServiceNotifier, MeshService(cfg, reactor, installSignal=lambda *a: None).notifier)
    assert sent == []  # nothing before the ports are bound
    service.startService()
    assert [port for port, *_ in reactor.tcpServers] == [15001, 9901]
    assert sent.keys()[:2] == ["READY=1", "WATCHDOG=1"]
    assert sent[0][1][1].startswith("2 listeners (web tcp:15001:interface=127.0.0.1, admin tcp:9901")
    listener = reactor.tcpServers[0][1]
    transport = StringTransport()
    protocol = listener.buildProtocol(None)
    protocol.makeConnection(transport)
    for _ in range(4):
        protocol.dataReceived(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    reactor.advance(0)
    assert transport.value().count(b"HTTP/1.1 200 ") == 4
    for _ in range(4):
        reactor.advance(0.5)
    [status] = [d for d in sent if d[0][0] == "STATUS"]
    assert "; 1 connections open; 2.0 req/s over 2s; config /etc/txmesh/mesh.yaml version " in status[0][1]
    d = service.stopService()
    assert sent[-1][0] == ("STOPPING", "1") and sent[-1][1][1].startswith("draining: 2 listeners")
    reactor.advance(2)  # drain_timeout: the test's connection never closes
    assert d.called
    pings = sent.keys().count("WATCHDOG=1")
    reactor.advance(5)
    assert sent.keys().count("WATCHDOG=1") == pings  # stopped with the service
