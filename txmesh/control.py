"""
The admin API's hold on the running mesh (L{txmesh.interfaces.IMeshControl}): server info, listeners, the
operator's readiness switch (Envoy's ``/healthcheck/fail`` and ``/ok``), ``/drain_listeners``, the log level and
``/explain``.  Read at request time from the L{txmesh.service.MeshService}, so it costs nothing on the data path.
"""

import hashlib
import json
import platform

from twisted.logger import Logger
from twisted.python.reflect import qual
from zope.interface import implementer

import twisted
import txmesh
from txmesh.explain import explain
from txmesh.interfaces import IMeshControl
from txmesh.logs import LEVELS, describeAddress, parseLevel
from txmesh.speedups import describe as describeSpeedups


def configDigest(raw):
    """``sha256:<hex>`` of the loaded configuration (canonical JSON): equal digests, equal configs."""
    text = json.dumps(raw, sort_keys=True, separators=(",", ":"), default=str)
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


@implementer(IMeshControl)
class MeshControl:
    """
    IMeshControl over a MeshService: reads its public state (config, running listeners, registration, clusters,
    config version) and changes its ``healthcheckFailed`` and ``listenersDrained`` flags, which its
    readiness reads.

    @param mesh: the L{txmesh.service.MeshService}.
    @param reactor: its IReactorTime (uptime) ; the reactor's class is shown in ``serverInfo``.
    """

    log = Logger()

    def __init__(self, mesh, reactor):
        self.mesh = mesh
        self.reactor = reactor

    def state(self):
        mesh = self.mesh
        if mesh.draining or mesh.listenersDrained:
            return "draining"
        return "live" if mesh.serving else "starting"

    def serverInfo(self):
        mesh = self.mesh
        config = mesh.config
        speedups = describeSpeedups()
        return {
            "version": txmesh.__version__,
            "python": platform.python_version(),
            "python_implementation": platform.python_implementation(),
            "twisted": twisted.__version__,
            "reactor": qual(type(self.reactor)),
            # compiled cores (txmesh/speedups.py): compiled, partly-compiled or pure-python, and which modules
            "hot_path_mode": speedups["mode"],
            "compiled_modules": speedups["compiled"],
            "workers": 1,
            "uptime_seconds": round(self.reactor.seconds() - mesh.startedAt, 3),
            "state": self.state(),
            "healthcheck_failed": mesh.healthcheckFailed,
            "config_file": config.filename,
            "config_digest": configDigest(config.raw),
            # issue 13: the running config's version and where it came from (txmesh.reload.ConfigVersion)
            "config_version": mesh.applier.version.version,
            "config_source": mesh.applier.version.source,
            "node": {"id": config.node.id, "cluster": config.node.cluster},
            "listeners": len(config.listeners),
            "clusters": len(mesh.clusters),
            # issue 13 part 3: the xDS client's stream, versions and last errors (None without dynamic_resources)
            "xds": mesh.xds.describe() if mesh.xds is not None else None,
        }

    def describeListeners(self):
        mesh = self.mesh
        out = []
        for listener in mesh.listeners.values():
            lc, factory, service = listener.config, listener.factory, listener.service
            out.append({
                "name": lc.name,
                "protocol": lc.descriptor.name,
                "address": lc.address,
                "bound": [describeAddress(service.port.getHost())] if service.running and service.port else [],
                "accepting": bool(service.running) and mesh.acceptGate.isOpen and not mesh.draining,
                "connections": len(factory.connections),
                "draining": factory.draining or not service.running,
            })
        return out

    def failHealthcheck(self):
        if not self.mesh.healthcheckFailed:
            self.log.warn("admin: healthcheck failed by the operator: /ready answers 503 until POST /healthcheck/ok")
        self.mesh.healthcheckFailed = True
        self._holdRegistration()
        return {"healthcheck_failed": True, "registration": self._registrationState()}

    def okHealthcheck(self):
        if self.mesh.healthcheckFailed:
            self.log.info("admin: healthcheck ok again (operator)")
        self.mesh.healthcheckFailed = False
        self._holdRegistration()
        return {"healthcheck_failed": False, "registration": self._registrationState()}

    def _holdRegistration(self):
        registration = self.mesh.registration
        if registration is not None:
            registration.hold(self.mesh.healthcheckFailed or self.mesh.listenersDrained)

    def _registrationState(self):
        registration = self.mesh.registration
        if registration is None:
            return "not configured" if self.mesh.config.registration is None else "not started"
        return "withdrawn" if registration.held else "published while the local app is healthy"

    def drainListeners(self, graceful):
        mesh = self.mesh
        first = not mesh.listenersDrained
        mesh.listenersDrained = True
        self._holdRegistration()
        stopped = 0
        for listener in mesh.listeners.values():
            service = listener.service
            if service.running:
                service.stopService()
                stopped += 1
        if graceful:
            for factory in mesh.listenerFactories:
                factory.drain()
        connections = sum(len(f.connections) for f in mesh.listenerFactories)
        if first or stopped:
            self.log.info("admin: drain_listeners{graceful}: {stopped} listener(s) stopped accepting, {connections} "
                          "connection(s) open", graceful=" (graceful)" if graceful else "", stopped=stopped,
                          connections=connections)
        return {"stopped": stopped, "graceful": graceful, "connections": connections,
                "registration": self._registrationState()}

    def logLevel(self):
        observer = self.mesh.logObserver
        if observer is None:
            return {"level": None, "observer": "twistd", "levels": [level.name for level in LEVELS],
                    "note": "twistd's own observer is in use (--logger or --syslog): its level is not changed here"}
        return {"level": observer.level.name, "observer": "txmesh", "format": observer.format,
                "levels": [level.name for level in LEVELS]}

    def setLogLevel(self, name):
        level = parseLevel(name)
        observer = self.mesh.logObserver
        if observer is None:
            raise LookupError("twistd's own observer is in use (--logger or --syslog): txmesh cannot change its "
                              "level; restart with txmesh's observer and --log-level")
        previous = observer.level
        observer.level = level
        # logged after the change, at warn so that it shows whatever the new level is
        self.log.warn("admin: log level {previous} -> {new}", previous=previous.name, new=level.name)
        return self.logLevel()

    def reload(self):
        return self.mesh.reload("POST /reload")

    def explain(self, args):
        return explain(self.mesh.config, self.mesh.clusters, args)  # ExplainError is a ValueError
