"""
The admin API's hold on the workers' parent (L{txmesh.interfaces.IMeshControl}; docs/operations.md "Workers"):
what the parent shows comes from the workers' last figures (gathered before each admin GET), what it changes is
changed in every worker.
"""

import platform

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.reflect import qual
from zope.interface import implementer

import twisted
import txmesh
from txmesh.control import configDigest
from txmesh.speedups import describe as describeSpeedups
from txmesh.interfaces import IMeshControl
from txmesh.logs import LEVELS, parseLevel


def _perWorker(answers):
    """{worker index: its answer, or the reason it gave none}."""
    return {str(w.index): ({"error": a.getErrorMessage()} if isinstance(a, Failure) else a) for w, a in answers}


@implementer(IMeshControl)
class ParentControl:
    """
    IMeshControl over a L{txmesh.workers_parent.WorkersParent}.  The switches answer once every live worker was
    told (a Deferred: the admin API waits for it), with each worker's answer under ``workers``.
    """

    log = Logger()

    def __init__(self, parent, reactor):
        self.parent = parent
        self.reactor = reactor

    def state(self):
        parent = self.parent
        if parent.draining or parent.listenersDrained:
            return "draining"
        return "live" if parent.serving else "starting"

    def serverInfo(self):
        parent = self.parent
        config = parent.config
        speedups = describeSpeedups()
        return {
            "version": txmesh.__version__,
            "python": platform.python_version(),
            "python_implementation": platform.python_implementation(),
            "twisted": twisted.__version__,
            "reactor": qual(type(self.reactor)),
            "hot_path_mode": speedups["mode"],
            "compiled_modules": speedups["compiled"],
            "workers": len(parent.supervisor.workers),
            "worker_processes": [w.describe(self.reactor) for w in parent.supervisor.workers],
            "uptime_seconds": round(self.reactor.seconds() - parent.startedAt, 3),
            "state": self.state(),
            "healthcheck_failed": parent.healthcheckFailed,
            "config_file": config.filename,
            "config_digest": configDigest(config.raw),
            "config_version": parent.version.version,
            "config_source": parent.version.source,
            "xds": parent.xds.describe() if parent.xds is not None else None,
            "node": {"id": config.node.id, "cluster": config.node.cluster},
            "listeners": len(config.listeners),
            "clusters": len(config.clusters),
        }

    def describeListeners(self):
        """The first worker's view of each listener, its connections summed over the workers."""
        dumps = [dump.get("listeners") or [] for _, dump in self.parent.dumps()]
        if not dumps:
            return []
        merged = [dict(listener, connections=0, accepting_workers=0) for listener in dumps[0]]
        byName = {listener["name"]: listener for listener in merged}
        for listeners in dumps:
            for listener in listeners:
                mine = byName.get(listener.get("name"))
                if mine is not None:
                    mine["connections"] += listener.get("connections") or 0
                    mine["accepting_workers"] += 1 if listener.get("accepting") else 0
        return merged

    def _tell(self, action, **fields):
        d = self.parent.supervisor.requestAll(dict(fields, type="control", action=action))
        return d.addCallback(_perWorker)

    def failHealthcheck(self):
        if not self.parent.healthcheckFailed:
            self.log.warn("admin: healthcheck failed by the operator: /ready answers 503 until POST /healthcheck/ok")
        self.parent.healthcheckFailed = True
        return self._tell("fail_healthcheck").addCallback(
            lambda workers: {"healthcheck_failed": True, "workers": workers})

    def okHealthcheck(self):
        if self.parent.healthcheckFailed:
            self.log.info("admin: healthcheck ok again (operator)")
        self.parent.healthcheckFailed = False
        return self._tell("ok_healthcheck").addCallback(
            lambda workers: {"healthcheck_failed": False, "workers": workers})

    def drainListeners(self, graceful):
        self.parent.listenersDrained = True
        return self._tell("drain_listeners", graceful=bool(graceful)).addCallback(
            lambda workers: {"graceful": bool(graceful), "workers": workers})

    def logLevel(self):
        observer = self.parent.logObserver
        if observer is None:
            return {"level": None, "observer": "twistd", "levels": [level.name for level in LEVELS],
                    "note": "twistd's own observer is in use (--logger or --syslog): its level is not changed here"}
        return {"level": observer.level.name, "observer": "txmesh", "format": observer.format,
                "levels": [level.name for level in LEVELS]}

    def setLogLevel(self, name):
        level = parseLevel(name)  # ValueError: 400, nothing changed anywhere
        observer = self.parent.logObserver
        if observer is None:
            raise LookupError("twistd's own observer is in use (--logger or --syslog): txmesh cannot change its "
                              "level; restart with txmesh's observer and --log-level")
        previous, observer.level = observer.level, level
        self.log.warn("admin: log level {previous} -> {new}", previous=previous.name, new=level.name)
        return self._tell("set_log_level", level=level.name).addCallback(
            lambda workers: dict(self.logLevel(), workers=workers))

    def reload(self):
        return self.parent.reload("POST /reload")

    def explain(self, args):
        """Asked of one serving worker (every worker runs the same configuration)."""
        serving = self.parent.supervisor.serving
        if not serving:
            return defer.fail(ValueError("no worker serves yet"))
        return self.parent.supervisor.request(serving[0], {"type": "control", "action": "explain", "args": args})
