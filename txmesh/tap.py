"""
twistd glue: ``twistd -n txmesh --config mesh.yaml``.  The only module that touches the global reactor.
"""

import os
import sys

from twisted.internet import error
from twisted.python import usage

from txmesh import config as _config
from txmesh.errors import ConfigError


class Options(usage.Options):
    synopsis = "--config PATH [--check]"
    longdesc = "Run the txmesh sidecar described by a mesh.yaml file."
    optParameters = [["config", "c", None, "Path to the mesh.yaml configuration (required)."],
                     ["status-interval", None, 10.0,
                      "Seconds between two STATUS= lines to systemd (with $NOTIFY_SOCKET; 0: none).", float]]
    optFlags = [["check", None, "Validate the configuration and exit 0 (valid) or 1 (invalid); binds nothing."]]

    def postOptions(self):
        if not self["config"]:
            raise usage.UsageError("--config is required")


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


def makeService(options):
    try:
        cfg = _config.load(options["config"])
    except ConfigError as e:
        sys.stderr.write("txmesh: invalid configuration: %s\n" % (e,))
        sys.exit(1)
    if options["check"]:
        sys.stdout.write("txmesh: %s is valid\n" % (options["config"],))
        sys.exit(0)
    installDefaultReactor()
    from twisted.internet import reactor

    from txmesh import systemd
    from txmesh.service import MeshService

    # $NOTIFY_SOCKET and the watchdog variables are read and removed here, before anything starts a process
    notifier = systemd.fromEnvironment(os.environ, reactor, statusInterval=options["status-interval"])
    return MeshService(cfg, reactor, notifier=notifier)
