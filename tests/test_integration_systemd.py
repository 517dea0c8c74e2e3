"""
txmesh under twistd talks to a real AF_UNIX datagram socket passed in ``$NOTIFY_SOCKET``, as systemd would run
it: READY=1 only once the ports accept, STATUS= lines that follow the traffic, WATCHDOG=1 at half of a short
``$WATCHDOG_USEC``, STOPPING=1 on SIGTERM.  Counts are loose (a busy machine delays timers); nothing is timed.
"""

import http.client
import os
import signal
import socket
import sys
import time

import pytest

from tests import support

pytestmark = pytest.mark.timeout(40)

CONFIG = """
drain_timeout: 2s
admin:
  address: tcp:{admin}:interface=127.0.0.1
listeners:
  - name: web
    protocol: http
    address: tcp:{listen}:interface=127.0.0.1
    filters:
      - name: router
    route_config:
      virtual_hosts:
        - name: all
          domains: ["*"]
          routes:
            - match: {{prefix: /}}
              direct_response: {{status: 200, body: "ok\\n"}}
"""


class NotifySocket:
    """The service manager's end: a bound datagram socket; ``next(timeout)`` -> {key: value} of one datagram."""

    def __init__(self, path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.received = []

    def next(self, timeout):
        self.sock.settimeout(timeout)
        data = self.sock.recv(65536).decode("utf-8")
        fields = dict(line.split("=", 1) for line in data.splitlines())
        self.received.append(fields)
        return fields

    def until(self, predicate, timeout=15.0):
        """Datagrams until one satisfies ``predicate`` (bounded by ``timeout``); returns that one."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("no such notification in %.0fs; got %r" % (timeout, self.received))
            try:
                fields = self.next(left)
            except socket.timeout:
                continue
            if predicate(fields):
                return fields

    def close(self):
        self.sock.close()


def test_ready_status_watchdog_stopping(tmp_path):
    admin, listen = support.freePort(), support.freePort()
    path = tmp_path / "mesh.yaml"
    path.write_text(CONFIG.format(admin=admin, listen=listen))
    notify = NotifySocket(str(tmp_path / "notify"))
    env = dict(os.environ, PYTHONPATH=support.ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               NOTIFY_SOCKET=notify.path, WATCHDOG_USEC="400000")
    env.pop("WATCHDOG_PID", None)
    proc = support.Proc([sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=",
                         "txmesh", "--config", str(path), "--status-interval", "0.3"], env=env)
    try:
        first = notify.next(20)
        # the first thing systemd hears is READY=1, and by then both ports accept at once
        assert first.get("READY") == "1", first
        for port in (listen, admin):
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
        assert "2 listeners (web tcp:%d:interface=127.0.0.1, admin tcp:%d" % (listen, admin) in first["STATUS"]
        assert "config %s version " % (path,) in first["STATUS"]

        # traffic shows in a later STATUS= (connections open, a non-zero request rate)
        conn = http.client.HTTPConnection("127.0.0.1", listen, timeout=5)
        for _ in range(20):
            conn.request("GET", "/")
            assert conn.getresponse().read() == b"ok\n"
        busy = notify.until(lambda f: "STATUS" in f and "1 connections open" in f["STATUS"]
                            and " 0.0 req/s" not in f["STATUS"])
        assert "req/s over" in busy["STATUS"]
        conn.close()

        # the watchdog pings every 0.2s from the reactor: count loosely over the next datagrams
        seen = len(notify.received)
        notify.until(lambda f: sum("WATCHDOG" in g for g in notify.received[seen:]) >= 5)
        assert all(g == {"WATCHDOG": "1"} for g in notify.received[seen:] if "WATCHDOG" in g)

        proc.signal(signal.SIGTERM)
        stopping = notify.until(lambda f: "STOPPING" in f)
        assert stopping["STOPPING"] == "1" and stopping["STATUS"].startswith("draining: ")
        # twistd ends by re-raising SIGTERM after a clean shutdown; systemd counts that as success
        assert proc.popen.wait(15) in (0, -signal.SIGTERM), proc.output()
        assert "Server Shut Down." in proc.output()
        assert not any("READY" in g for g in notify.received[1:])
    finally:
        proc.stop()
        notify.close()
