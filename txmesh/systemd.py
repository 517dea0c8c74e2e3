"""
systemd's service notification protocol (sd_notify(3)) by hand: one datagram of ``KEY=VALUE`` lines to the
AF_UNIX socket named by ``$NOTIFY_SOCKET`` (a path, or ``@name`` in the abstract namespace).  No dependency is
needed for that, and nothing at all happens without ``$NOTIFY_SOCKET``.

- READY=1 once every listener and the admin are bound (``Type=notify`` units wait for it);
- STOPPING=1 when the drain starts;
- STATUS= lines for ``systemctl status`` (listeners, open connections, requests/s over the last interval, the
  config file and version), refreshed on a timer of the injected reactor;
- WATCHDOG=1 from the reactor at half of ``$WATCHDOG_USEC`` (when ``$WATCHDOG_PID`` is unset or ours), so a
  reactor that stops turning misses its pings and systemd restarts the service (``WatchdogSec=``);
- RELOADING=1 with MONOTONIC_USEC=, then READY=1, around a reload (systemd 253's ``Type=notify-reload``
  protocol; older systemd ignores the fields it does not know).

The variables are removed from the environment once read, as ``sd_notify(unset_environment=1)`` does, so that
processes txmesh starts do not talk to systemd in its name.
"""

import hashlib
import json
import os
import socket
import time

from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import implementer

from txmesh.interfaces import IServiceNotifier

ENVIRONMENT = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


def socketAddress(value):
    """
    The address ``$NOTIFY_SOCKET`` names: an absolute path, or ``@name`` for the abstract namespace (a leading
    NUL for the kernel).  None for anything else (sd_notify ignores those too).
    """
    if not value:
        return None
    if value.startswith("@"):
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    return None


def watchdogInterval(usec, watchdogPid, pid):
    """
    Seconds between two WATCHDOG=1 pings: half of ``$WATCHDOG_USEC`` (systemd's advice), or None when there is
    no watchdog for this process (unset or invalid ``usec``, or ``$WATCHDOG_PID`` naming another process).
    """
    try:
        usec = int(usec or "0")
    except ValueError:
        return None
    if usec <= 0:
        return None
    if watchdogPid:
        try:
            if int(watchdogPid) != pid:
                return None
        except ValueError:
            return None
    return usec / 2e6


class DatagramSender:
    """
    ``send(bytes)`` to one AF_UNIX datagram address, on a non-blocking socket opened at the first send.  A
    failure (systemd gone, its queue full) is logged once per kind and never raised: the service keeps serving.
    """

    log = Logger()

    def __init__(self, address):
        self.address = address
        self._socket = None
        self._logged = set()

    def __call__(self, data):
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._socket.setblocking(False)
            self._socket.sendto(data, self.address)
        except OSError as e:
            if e.errno not in self._logged:
                self._logged.add(e.errno)
                self.log.warn("cannot notify systemd at {address!r}: {e}", address=self.address, e=e)
            return False
        return True

    def close(self):
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def _format(fields):
    return "".join("%s=%s\n" % (k, str(v).replace("\n", " ")) for k, v in fields).encode("utf-8")


@implementer(IServiceNotifier)
class SystemdNotifier:
    """
    Notifications to systemd through ``send(bytes)`` (a L{DatagramSender}); timers on ``clock``.

    @param watchdogInterval: seconds between WATCHDOG=1 pings, or None for no watchdog.
    @param statusInterval: seconds between STATUS= refreshes (0: only at ready and stopping).
    @param monotonic: ``monotonic() -> seconds`` on CLOCK_MONOTONIC, the clock of MONOTONIC_USEC=.
    """

    log = Logger()

    def __init__(self, send, clock, watchdogInterval=None, statusInterval=10.0, monotonic=time.monotonic):
        self._send = send
        self.clock = clock
        self.watchdogInterval = watchdogInterval
        self.statusInterval = statusInterval
        self._monotonic = monotonic
        self._watchdog = None
        self._statusCall = None

    def notify(self, *fields):
        """Send ``(key, value)`` pairs in one datagram."""
        return self._send(_format(fields))

    def ready(self, status):
        self.notify(("READY", 1), ("STATUS", status))

    def reloading(self):
        self.notify(("RELOADING", 1), ("MONOTONIC_USEC", int(self._monotonic() * 1e6)))

    def stopping(self, status):
        if self._statusCall is not None and self._statusCall.running:
            self._statusCall.stop()
        self.notify(("STOPPING", 1), ("STATUS", status))

    def status(self, text):
        self.notify(("STATUS", text))

    def watchdog(self):
        self.notify(("WATCHDOG", 1))

    def start(self, describe):
        if self.watchdogInterval:
            self._watchdog = LoopingCall(self.watchdog)
            self._watchdog.clock = self.clock
            self._watchdog.start(self.watchdogInterval, now=True)
        if self.statusInterval:
            self._statusCall = LoopingCall(lambda: self.status(describe()))
            self._statusCall.clock = self.clock
            self._statusCall.start(self.statusInterval, now=False).addErrback(
                lambda f: self.log.failure("STATUS= refresh failed; no more refreshes", f))

    def stop(self):
        for call in (self._watchdog, self._statusCall):
            if call is not None and call.running:
                call.stop()
        if isinstance(self._send, DatagramSender):
            self._send.close()


@implementer(IServiceNotifier)
class NullNotifier:
    """No ``$NOTIFY_SOCKET``: not started by systemd (or not as ``Type=notify``); every call does nothing."""

    def ready(self, status):
        pass

    def reloading(self):
        pass

    def stopping(self, status):
        pass

    def status(self, text):
        pass

    def start(self, describe):
        pass

    def stop(self):
        pass


def fromEnvironment(environ, clock, pid=None, statusInterval=10.0, send=None):
    """
    The notifier ``environ`` asks for, and those variables removed from ``environ`` (pass ``os.environ``: child
    processes do not inherit them).  A L{NullNotifier} without a usable ``$NOTIFY_SOCKET``.

    @param send: ``send(bytes)`` (tests); default a L{DatagramSender} to ``$NOTIFY_SOCKET``.
    """
    values = {name: environ.pop(name, None) for name in ENVIRONMENT}
    address = socketAddress(values["NOTIFY_SOCKET"])
    if address is None:
        return NullNotifier()
    interval = watchdogInterval(values["WATCHDOG_USEC"], values["WATCHDOG_PID"],
                                os.getpid() if pid is None else pid)
    return SystemdNotifier(send if send is not None else DatagramSender(address), clock, interval, statusInterval)


class MeshStatus:
    """
    The STATUS= line of one running mesh: ``describe()`` -> "2 listeners (http 127.0.0.1:15001, ...); 3
    connections open; 12.5 req/s over 10s; config /etc/txmesh/mesh.yaml version 1a2b3c4d".  The request rate is
    over the time since the previous ``describe()`` (the status timer's interval).

    @param listeners: [(name, address)] of the listeners, with the admin last.
    """

    def __init__(self, stats, config, listeners, clock):
        self.stats = stats
        self.clock = clock
        self.listeners = listeners
        self.configFile = config.filename
        self.version = configVersion(config.raw)
        self._lastTime = clock.seconds()
        self._lastRequests = stats.total("downstream_rq")

    def describe(self):
        now, requests = self.clock.seconds(), self.stats.total("downstream_rq")
        elapsed = now - self._lastTime
        rate = (requests - self._lastRequests) / elapsed if elapsed > 0 else 0.0
        self._lastTime, self._lastRequests = now, requests
        return "%d listeners (%s); %d connections open; %.1f req/s over %.0fs; config %s version %s" % (
            len(self.listeners), ", ".join("%s %s" % pair for pair in self.listeners),
            self.stats.total("downstream_cx_active"), rate, elapsed, self.configFile, self.version)


def configVersion(raw):
    """A short, stable digest of a parsed mesh.yaml: the same file content gives the same version."""
    text = json.dumps(raw, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:8]
