"""
twistd glue: ``twistd -n txmesh --config mesh.yaml [--log-level info] [--log-format text|json]``.  The only module
that touches the global reactor.
"""

import os
import sys
import time

from twisted.internet import error
from twisted.logger import LogLevel
from twisted.python import usage

from txmesh import config as _config
from txmesh.errors import ConfigError
from txmesh.logs import FORMATS, OperatorLogObserver, isJournalStream, parseLevel


class Options(usage.Options):
    synopsis = "--config PATH [--check] [--log-level LEVEL] [--log-format text|json] [--status-interval S]"
    longdesc = "Run the txmesh sidecar described by a mesh.yaml file."
    optParameters = [["config", "c", None, "Path to the mesh.yaml configuration (required)."],
                     ["status-interval", None, 10.0,
                      "Seconds between two STATUS= lines to systemd (with $NOTIFY_SOCKET; 0: none).", float],
                     ["log-level", None, "info", "Log events at this level and above: debug, info, warn, error, "
                                                 "critical."],
                     ["log-format", None, "text", "text (one line per event) or json (one JSON object per line)."]]
    optFlags = [["check", None, "Validate the configuration and exit 0 (valid) or 1 (invalid); binds nothing."]]

    def postOptions(self):
        if not self["config"]:
            raise usage.UsageError("--config is required")
        try:
            self["log-level"] = parseLevel(self["log-level"])
        except ValueError as e:
            raise usage.UsageError("--log-level: %s" % (e,))
        if self["log-format"] not in FORMATS:
            raise usage.UsageError("--log-format: %r is not one of %s" % (self["log-format"], ", ".join(FORMATS)))


def installDefaultReactor():
    """
    Install the txmesh reactor (L{txmesh.reactor}) unless one is installed already: ``twistd -r NAME`` installs
    NAME while parsing its options, before it asks this plugin for the service.
    @return: True if the txmesh reactor was installed here.
    """
    from txmesh import reactor as txreactor

    try:
        txreactor.install()
    except error.ReactorAlreadyInstalledError:
        return False
    return True


def makeObserver(options, stdout=None):
    """
    txmesh's log observer for twistd's options (L{txmesh.logs.OperatorLogObserver}), or None when twistd was told
    to log elsewhere (``--logger``, ``--syslog``) and keeps its own.  Without ``-n`` or with ``--logfile`` it
    writes to that file as twistd would (``twistd.log`` by default).
    """
    twistdOptions = options.parent or {}
    if twistdOptions.get("logger") or twistdOptions.get("syslog"):
        return None
    logfile = twistdOptions.get("logfile")
    if stdout is None:
        stdout = sys.stdout
    if (twistdOptions.get("nodaemon", True) and not logfile) or logfile == "-":
        stream, journald = stdout, isJournalStream(stdout)
    else:
        from twisted.python.logfile import LogFile

        stream, journald = LogFile.fromFullPath(logfile or "twistd.log"), False
    return OperatorLogObserver(stream, options["log-level"], options["log-format"], journald)


def reportConfigError(options, error, stderr=None):
    """Write the config error in one line to stderr, in the log format chosen (logging has not begun yet)."""
    stderr = stderr if stderr is not None else sys.stderr
    observer = OperatorLogObserver(stderr, LogLevel.error, options["log-format"], isJournalStream(stderr))
    observer({"log_level": LogLevel.error, "log_namespace": "txmesh", "log_time": time.time(),
              "log_format": "txmesh: invalid configuration: {error}", "error": str(error)})


def makeService(options):
    try:
        cfg = _config.load(options["config"])
    except ConfigError as e:
        if options["check"]:
            sys.stderr.write("txmesh: invalid configuration: %s\n" % (e,))
        else:
            reportConfigError(options, e)
        sys.exit(1)
    if options["check"]:
        sys.stdout.write("txmesh: %s is valid\n" % (options["config"],))
        sys.exit(0)
    installDefaultReactor()
    from twisted.internet import reactor

    from txmesh import systemd
    from txmesh.service import MeshService
    from txmesh.startup import RunningMesh

    # $NOTIFY_SOCKET and the watchdog variables are read and removed here, before anything starts a process
    notifier = systemd.fromEnvironment(os.environ, reactor, statusInterval=options["status-interval"])
    return RunningMesh(MeshService(cfg, reactor, notifier=notifier), makeObserver(options), reactor, options["config"])
