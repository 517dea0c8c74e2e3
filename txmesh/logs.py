"""
Logs an operator can read: txmesh's log observer for twistd (text or JSON lines, a minimum level, journald
priority prefixes), the demotion of Twisted's per-port and per-factory chatter to ``debug``, and the startup
summary (the versions, one line per listener and per cluster).

The observer writes one line per event (a failure's traceback follows on indented lines, each with the same
priority).  When the output stream is the journal (``$JOURNAL_STREAM`` names its device and inode, systemd.exec(5)),
each line starts with sd-daemon's ``<N>`` priority prefix (``SyslogLevelPrefix=`` is on by default), so
``journalctl -p err`` shows errors, and the timestamp is left to journald.
"""

import json
import os
import platform
import re
import time

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.logger import ILogObserver, LogLevel, formatEvent
from zope.interface import implementer

import twisted
import txmesh

# lowest first; a level shows the events of its own rank and above
LEVELS = (LogLevel.debug, LogLevel.info, LogLevel.warn, LogLevel.error, LogLevel.critical)
LEVEL_NAMES = {level.name: level for level in LEVELS}
LEVEL_NAMES["warning"] = LogLevel.warn
FORMATS = ("text", "json")

# syslog priorities (sd-daemon(3)): SD_CRIT 2, SD_ERR 3, SD_WARNING 4, SD_INFO 6, SD_DEBUG 7
PRIORITIES = {LogLevel.critical: 2, LogLevel.error: 3, LogLevel.warn: 4, LogLevel.info: 6, LogLevel.debug: 7}

# Twisted's own lines that say nothing an operator needs at the default level: every Factory's doStart/doStop
# (treq's and the health checks' client factories too), each port's "<Factory> starting on N" and "(TCP Port N
# Closed)" (the startup summary names the listeners instead), twistd's banner (the version line replaces it)
_NOISE_FORMATS = frozenset([
    "Starting factory {factory!r}",
    "Stopping factory {factory!r}",
    "twistd {version} ({exe} {pyVersion}) starting up.",
    "reactor class: {reactor}.",
    "Main loop terminated.",
])
_NOISE_LEGACY = re.compile(r"^(\S+ starting on \S+|\((TCP |UDP |UNIX )?Port \S+ Closed\))$")

# legacy (twisted.python.log) keys that are not fields of the event
_LEGACY_KEYS = frozenset(["message", "format", "isError", "system", "time", "why", "failure", "printed"])


def parseLevel(name):
    """``debug``, ``info``, ``warn`` (or ``warning``), ``error``, ``critical`` -> LogLevel.  @raise ValueError."""
    try:
        return LEVEL_NAMES[name.lower()]
    except KeyError:
        raise ValueError("unknown log level %r (known: %s)" % (name, ", ".join(level.name for level in LEVELS)))


def isNoise(event):
    """Whether ``event`` is one of Twisted's lines demoted to ``debug`` (see ``_NOISE_FORMATS``)."""
    fmt = event.get("log_format")
    if fmt in _NOISE_FORMATS:
        return True
    if event.get("log_namespace") == "log_legacy":
        text = event.get("log_text")
        if text is None and event.get("message"):
            text = " ".join(str(m) for m in event["message"])
        return bool(text) and _NOISE_LEGACY.match(text) is not None
    return False


def levelOf(event):
    """The level ``event`` is shown at: its own, or ``debug`` for Twisted's noise."""
    if isNoise(event):
        return LogLevel.debug
    level = event.get("log_level", LogLevel.info)
    return level if level in PRIORITIES else LogLevel.info


def _message(event):
    text = formatEvent(event)
    failure = event.get("log_failure")
    if failure is not None:
        traceback = failure.getTraceback().rstrip("\n")
        text = text + "\n" + traceback if text else traceback
    return text


def _source(event):
    namespace = event.get("log_namespace", "-")
    if namespace == "log_legacy":
        return event.get("log_system", "-")
    return namespace


def formatText(event, level, timestamp=True, worker=None):
    """
    ``2026-12-05T08:00:00.123+0000 warn [txmesh.service.MeshService] drain timeout ...``; a traceback follows on
    lines indented by a tab.  A worker's lines name it: ``info [worker 1] [txmesh...] ...``.
    """
    lines = _message(event).split("\n")
    head = "%s [%s] %s" % (level.name, _source(event), lines[0])
    if worker is not None:
        head = "%s [worker %s] [%s] %s" % (level.name, worker, _source(event), lines[0])
    if timestamp:
        head = _isoTime(event.get("log_time"), local=True) + " " + head
    return "\n".join([head] + ["\t" + line for line in lines[1:]])


def formatJSON(event, level, worker=None):
    """
    One JSON object: ``time`` (ISO 8601, UTC), ``level``, ``namespace``, ``message``, ``worker`` (a worker's lines:
    its index), then the event's own scalar fields (``listener``, ``connections``, ...), and ``traceback`` for a
    failure.
    """
    record = {"time": _isoTime(event.get("log_time"), local=False), "level": level.name,
              "namespace": _source(event), "message": formatEvent(event)}
    if worker is not None:
        record["worker"] = worker
    for key, value in event.items():
        if key.startswith("log_") or key in _LEGACY_KEYS or key in record:
            continue
        if value is None or isinstance(value, (str, int, float, bool)):
            record[key] = value
    failure = event.get("log_failure")
    if failure is not None:
        record["traceback"] = failure.getTraceback()
    return json.dumps(record, ensure_ascii=False)


def _isoTime(when, local):
    when = time.time() if when is None else when
    millis = int((when % 1) * 1000)
    if local:
        t = time.localtime(when)
        return "%s.%03d%s" % (time.strftime("%Y-%m-%dT%H:%M:%S", t), millis, time.strftime("%z", t))
    return "%s.%03dZ" % (time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(when)), millis)


def isJournalStream(stream, environ=os.environ):
    """
    Whether ``stream`` (a file object or descriptor) is connected to the journal: ``$JOURNAL_STREAM`` holds
    ``<device>:<inode>`` of the stream systemd connected stdout/stderr to (systemd.exec(5)); a process whose output
    was redirected elsewhere keeps the variable but not the stream, hence the comparison.
    """
    value = environ.get("JOURNAL_STREAM")
    if not value:
        return False
    try:
        device, inode = (int(part) for part in value.split(":"))
        st = os.fstat(stream if isinstance(stream, int) else stream.fileno())
    except (ValueError, OSError):  # io.UnsupportedOperation (no descriptor) is both
        return False
    return (st.st_dev, st.st_ino) == (device, inode)


@implementer(ILogObserver)
class OperatorLogObserver:
    """
    Writes events at ``level`` and above to ``stream`` as text or JSON lines, with ``<N>`` priority prefixes when
    ``journald``.

    @ivar level: the minimum L{LogLevel} shown; may be changed while running.
    """

    def __init__(self, stream, level=LogLevel.info, format="text", journald=False, worker=None):
        if format not in FORMATS:
            raise ValueError("unknown log format %r (known: %s)" % (format, ", ".join(FORMATS)))
        self.worker = worker  # a worker process's index (txmesh/worker.py), named on each line
        self.stream = stream
        self.level = level
        self.format = format
        self.journald = journald

    def __call__(self, event):
        level = levelOf(event)
        if LEVELS.index(level) < LEVELS.index(self.level):
            return
        self.stream.write(self.render(event, level) + "\n")
        self.stream.flush()

    def render(self, event, level):
        """The line(s) ``event`` is written as, at ``level``, without the final newline."""
        if self.format == "json":
            text = formatJSON(event, level, self.worker)
        else:
            text = formatText(event, level, timestamp=not self.journald, worker=self.worker)
        if self.journald:
            prefix = "<%d>" % (PRIORITIES[level],)
            text = "\n".join(prefix + line for line in text.split("\n"))
        return text


def versions(reactorName=None):
    """``[(name, version)]``: txmesh, Python, Twisted and, if given, the reactor."""
    found = [("txmesh", txmesh.__version__), ("Python", platform.python_version()), ("Twisted", twisted.__version__)]
    if reactorName:
        found.append(("reactor", reactorName))
    return found


def _hostPort(address):
    host = address.host
    return "[%s]:%d" % (host, address.port) if ":" in host else "%s:%d" % (host, address.port)


def describeAddress(address):
    """An IAddress as an operator writes it: ``127.0.0.1:15001``, ``[::1]:15001``, or a unix socket's path."""
    if isinstance(address, (IPv4Address, IPv6Address)):
        return _hostPort(address)
    if isinstance(address, UNIXAddress) and address.name:
        return address.name.decode("utf-8", "replace") if isinstance(address.name, bytes) else address.name
    return str(address)


def describeCluster(cluster):
    """``http1, round_robin, 2 hosts (127.0.0.1:18081, 127.0.0.1:18082)`` or ``..., discovery dns``."""
    parts = [cluster.descriptor.name if cluster.descriptor is not None else cluster.protocol, cluster.lbPolicy]
    if cluster.discovery is not None:
        parts.append("discovery %s" % (cluster.discovery.type,))
    else:
        hosts = ["%s:%d" % (e.host, e.port) for e in cluster.endpoints]
        shown = ", ".join(hosts[:5]) + (", ..." if len(hosts) > 5 else "")
        parts.append("%d host%s (%s)" % (len(hosts), "" if len(hosts) == 1 else "s", shown))
    return ", ".join(parts)
