"""
The mesh as twistd runs it: L{RunningMesh} wraps the L{txmesh.service.MeshService}, hands twistd txmesh's log
observer (the application's ``ILogObserver`` component, the hook twistd reads for .tac files), reports a port it
cannot bind in one line naming the listener and the address (exit status 1, no traceback), and logs the startup
summary: the versions and config file, then one line per listener (the address actually bound), per cluster and
for the admin API.
"""

import gc

from twisted.application.service import MultiService
from twisted.internet.error import CannotListenError
from twisted.logger import ILogObserver, Logger
from twisted.python.components import Componentized
from twisted.python.reflect import qual

from txmesh.logs import describeAddress, describeCluster, versions
from txmesh.twisted_private import parseServerEndpoint


def _endpointAddress(description):
    """(host, port) of a tcp/tcp6 server endpoint string, (path, None) of a unix one, else (description, None)."""
    try:
        kind, args, kwargs = parseServerEndpoint(description)
    except (ValueError, TypeError, KeyError, OSError):
        return description, None
    if kind in ("tcp", "tcp6"):
        return kwargs.get("interface", ""), args[0]
    if kind == "unix":
        return args[0], None
    return description, None


def _showAddress(host, port):
    if port is None:
        return host
    host = host or "0.0.0.0"
    return "[%s]:%d" % (host, port) if ":" in host else "%s:%d" % (host, port)


def whoListensOn(config, interface, port):
    """
    What of ``config`` listens on the address a CannotListenError names: ``listener 'web' (http1)``, ``the admin
    API``, or ``a listener`` when nothing matches (config already refuses two listeners on one address).
    """
    candidates = [("listener '%s' (%s)" % (lc.name, lc.descriptor.name), lc.address) for lc in config.listeners]
    candidates.append(("the admin API", config.admin.address))
    for what, description in candidates:
        host, bound = _endpointAddress(description)
        if bound is None:
            if host == port:  # unix sockets: the path is the "port"
                return what
        elif bound == port and (host or "") == (interface or ""):
            return what
    return "a listener"


class RunningMesh(MultiService):
    """
    The service twistd runs: ``mesh`` (its only child) plus the operator's log lines around its start.

    @param observer: the ILogObserver twistd should log to (L{txmesh.logs.OperatorLogObserver}), or None to leave
        twistd's own (``--logger``, ``--syslog``).
    @param configPath: the mesh.yaml path as given, for the version line.
    """

    log = Logger(namespace="txmesh")

    def __init__(self, mesh, observer, reactor, configPath):
        MultiService.__init__(self)
        self.mesh = mesh
        self.observer = observer
        self.reactor = reactor
        self.configPath = configPath
        mesh.logObserver = observer  # the admin API's /logging changes its level
        mesh.setServiceParent(self)

    def setServiceParent(self, parent):
        # twistd parents the service to its Application (a Componentized) before it starts logging, and logs to
        # the application's ILogObserver component when there is one
        if self.observer is not None and isinstance(parent, Componentized):
            parent.setComponent(ILogObserver, self.observer)
        MultiService.setServiceParent(self, parent)

    def privilegedStartService(self):
        """Bind every port; one that cannot be bound is logged in one line and the process exits with status 1."""
        found = versions(qual(type(self.reactor)))
        self.log.info("{versions}, config {config}", versions=", ".join("%s %s" % v for v in found),
                      config=self.configPath, **{name.lower(): version for name, version in found})
        try:
            MultiService.privilegedStartService(self)
        except CannotListenError as e:
            reason = e.socketError
            reason = reason.strerror if isinstance(reason, OSError) and reason.strerror else str(reason)
            self.log.error("{what} cannot listen on {address}: {reason}",
                           what=whoListensOn(self.mesh.config, e.interface, e.port),
                           address=_showAddress(e.interface, e.port) if isinstance(e.port, int) else e.port,
                           reason=reason[:1].lower() + reason[1:])
            raise SystemExit(1)

    def startService(self):
        MultiService.startService(self)
        for line in self.summary():
            self.log.info(line[0], **line[1])
        # on the loop's first turn: startService runs before the reactor installs its signal handlers, and a
        # SIGTERM during the collection would find the default action
        self.reactor.callLater(0, settleHeap)

    def summary(self):
        """``[(format, fields)]``: one line per listener, per cluster, and the admin API's."""
        config = self.mesh.config
        lines = []
        for lc, backoff in zip(config.listeners, self.mesh.acceptBackoffs):
            if backoff.ports:
                address = ", ".join(describeAddress(p.getHost()) for p in backoff.ports)
            else:
                address = _showAddress(*_endpointAddress(lc.address))
            lines.append(("listener {listener}: {protocol} on {address}",
                          dict(listener=lc.name, protocol=lc.descriptor.name, address=address)))
        for cluster in config.clusters:
            lines.append(("cluster {cluster}: {description}",
                          dict(cluster=cluster.name, description=describeCluster(cluster))))
        lines.append(("admin API on {address}", dict(address=_showAddress(*_endpointAddress(config.admin.address)))))
        lines.append(("started: {listeners} listener(s), {clusters} cluster(s)",
                      dict(listeners=len(config.listeners), clusters=len(config.clusters))))
        return lines


def settleHeap():
    """
    Once started: collect what starting left in cycles, then move every object alive now (modules, the plugins,
    the configuration, the listeners) out of the collector's sight (``gc.freeze``), so that a full collection
    while serving walks only what was made since, not the ~60,000 objects starting made (a full collection of them
    took 13-47 ms under load; docs/performance.md "Collector pauses").  Objects frozen here that later become
    cyclic garbage (the first configuration's, after a reload) are not collected: one configuration's worth, once.
    """
    gc.collect()
    gc.freeze()
