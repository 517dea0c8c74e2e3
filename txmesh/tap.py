"""
twistd glue: ``twistd -n txmesh --config mesh.yaml [--log-level info] [--log-format text|json] [--hot-restart]``.
The only module that touches the global reactor.
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
    synopsis = ("--config PATH [--check] [--log-level LEVEL] [--log-format text|json] [--status-interval S] "
                "[--hot-restart]")
    longdesc = "Run the txmesh sidecar described by a mesh.yaml file."
    optParameters = [["config", "c", None, "Path to the mesh.yaml configuration (required)."],
                     ["status-interval", None, 10.0,
                      "Seconds between two STATUS= lines to systemd (with $NOTIFY_SOCKET; 0: none).", float],
                     ["log-level", None, "info", "Log events at this level and above: debug, info, warn, error, "
                                                 "critical."],
                     ["log-format", None, "text", "text (one line per event) or json (one JSON object per line)."],
                     ["worker-fd", None, None, "(internal) run as a worker of a 'workers: N' parent, its channel on "
                                               "this descriptor.", int]]
    optFlags = [["check", None, "Validate the configuration and exit 0 (valid) or 1 (invalid); binds nothing."],
                ["hot-restart", None, "Take the listening sockets over from the txmesh listening on hot_restart.socket "
                                      "(then tell it to drain); start as usual when none listens there."]]

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


def reportConfigError(options, error, stderr=None, what="invalid configuration"):
    """Write the config error in one line to stderr, in the log format chosen (logging has not begun yet)."""
    stderr = stderr if stderr is not None else sys.stderr
    observer = OperatorLogObserver(stderr, LogLevel.error, options["log-format"], isJournalStream(stderr))
    observer({"log_level": LogLevel.error, "log_namespace": "txmesh", "log_time": time.time(),
              "log_format": "txmesh: %s: {error}" % (what,), "error": str(error)})


def takeOver(options, cfg, environ):
    """
    With ``--hot-restart``: the L{txmesh.hot_restart_takeover.Inheritance} from the txmesh at ``hot_restart.socket`` (None
    when none listens there), its service manager's variables added to ``environ`` where missing.  A refusal or a
    broken hand-over ends this process (exit 1): the old one keeps serving.
    """
    from txmesh import hot_restart_takeover as takeover
    from txmesh.hot_restart_wire import HandoverError

    if not options["hot-restart"]:
        return None
    if cfg.hotRestart is None:
        reportConfigError(options, "%s has no hot_restart block" % (options["config"],), what="--hot-restart")
        sys.exit(1)
    try:
        inheritance = takeover.takeOver(cfg.hotRestart.socket, cfg.hotRestart.timeout)
    except HandoverError as e:
        reportConfigError(options, e, what="hot restart failed")
        sys.exit(1)
    if inheritance is None:
        takeover.log.info("hot restart: no txmesh listens on {path}; starting as usual", path=cfg.hotRestart.socket)
        return None
    for name, value in inheritance.environment.items():
        environ.setdefault(name, value)
    return inheritance


def makeWorker(options):
    """A worker of a ``workers: N`` parent (txmesh/worker.py): the configuration and the sockets come from it."""
    from txmesh import worker
    from txmesh.hot_restart_wire import HandoverError

    try:
        inheritance = worker.receiveStart(options["worker-fd"])
    except HandoverError as e:
        reportConfigError(options, e, what="worker start failed")
        sys.exit(1)
    try:
        cfg = worker.loadStart(inheritance)
    except ConfigError as e:
        reportConfigError(options, e)
        sys.exit(1)
    installDefaultReactor()
    from twisted.internet import reactor

    from txmesh.service import MeshService
    from txmesh.startup import RunningMesh

    link = worker.WorkerLink(reactor, inheritance, reactor.stop)
    mesh = MeshService(cfg, reactor, hotRestart=link, runXds=False)  # the parent is the xDS client
    link.attach(mesh)
    observer = makeObserver(options)
    if observer is not None:
        observer.worker = link.index
    return RunningMesh(mesh, observer, reactor, options["config"])


def makeParent(options, cfg, notifier, hot, reactor):
    """The parent of ``workers: N`` (txmesh/workers_parent.py): binds, supervises the workers, serves the admin."""
    from txmesh.workers import ProcessLauncher
    from txmesh.workers_parent import WorkersParent, readConfig

    try:
        text, cfg = readConfig(options["config"])  # the text the workers get is the one validated here
    except ConfigError as e:
        reportConfigError(options, e)
        sys.exit(1)
    args = ["--config", options["config"], "--log-level", options["log-level"].name, "--log-format",
            options["log-format"]]
    # os.environ has lost $NOTIFY_SOCKET and the watchdog's variables by now: only the parent talks to systemd
    launcher = ProcessLauncher(reactor, args, os.environ)
    return WorkersParent(cfg, text, reactor, launcher, notifier=notifier, hotRestart=hot)


def makeService(options):
    if options["worker-fd"] is not None:
        return makeWorker(options)
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
    inheritance = takeOver(options, cfg, os.environ)
    installDefaultReactor()
    from twisted.internet import reactor

    from txmesh import hot_restart, hot_restart_takeover, systemd
    from txmesh.service import MeshService
    from txmesh.startup import RunningMesh

    serviceManager = {name: os.environ[name] for name in hot_restart_takeover.INHERITED_ENVIRONMENT
                      if name in os.environ}
    # $NOTIFY_SOCKET and the watchdog variables are read and removed here, before anything starts a process
    notifier = systemd.fromEnvironment(os.environ, reactor, statusInterval=options["status-interval"])
    hot = None
    if cfg.hotRestart is not None:
        # a new process tells systemd it is the main process now (the unit needs NotifyAccess=all for that)
        announce = (lambda pid: notifier.notify(("MAINPID", pid), ("READY", 1))) \
            if isinstance(notifier, systemd.SystemdNotifier) else None
        hot = hot_restart.HotRestart(reactor, cfg.hotRestart, reactor.stop, inheritance, announce, serviceManager)
    if cfg.workers > 1:
        mesh = makeParent(options, cfg, notifier, hot, reactor)
    else:
        mesh = MeshService(cfg, reactor, notifier=notifier, hotRestart=hot)
    return RunningMesh(mesh, makeObserver(options), reactor, options["config"])
