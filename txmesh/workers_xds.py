"""
xDS under ``workers: N`` (issue 13 part 6; docs/operations.md "Workers"): the parent is the sidecar's one xDS
client (one stream, one node, one ACK or NACK per response), as Envoy's main thread is for its worker threads; the
workers run none (``MeshService(runXds=False)``).

What the control plane gives is merged with the bootstrap's static parts and validated once in the parent
(txmesh.xds.state.XdsState, as in a single process), then handed to every worker through the path a file reload
takes (L{txmesh.workers_parent.WorkersParent.distribute}): applied by every worker or by none.  An update one worker
refuses is put back in the others and NACKed, so the control plane never sees a sidecar half on the new resources.
A file reload (SIGHUP, ``POST /reload``) merges the file's static parts with the resources accepted, as
``XdsFileSource`` does in a single process.

The workers get the merged configuration as text: JSON, which their loader reads as the YAML document it is, with
the parts' xDS origins (resource names, version_info) beside it for ``/config_dump``.  The parent runs one cluster,
the control plane's (its pools, health checks and discovery), kept in step with the file by reloads.
"""

import json

from twisted.internet import defer
from zope.interface import implementer

from txmesh.interfaces import IConfigApplier


def workerText(config):
    """The text a worker loads for ``config`` (a MeshConfig whose ``raw`` was merged from xDS resources)."""
    return json.dumps(config.raw, indent=1)


@implementer(IConfigApplier)
class WorkersApplier:
    """The parent's IConfigApplier: a configuration is applied when every worker applied it (``distribute``)."""

    def __init__(self, parent):
        self.parent = parent

    @property
    def version(self):
        return self.parent.version

    def apply(self, config, source):
        return self.parent.distribute(config, workerText(config), source.name, source.location)


class ParentXds:
    """
    The parent's xDS client: the control plane's cluster, the resource state applying through a L{WorkersApplier},
    the transport.  Started once every worker serves (as a single txmesh starts it once its listeners serve).

    @param parent: the L{txmesh.workers_parent.WorkersParent} (its config, reactor, stats and ``distribute``).
    @param random: a random.Random (the balancer, reconnect jitter).
    """

    def __init__(self, parent, random):
        from txmesh.discovery.registries import RegistryClients
        from txmesh.protocols.transport import WriteScope
        from txmesh.protocols.tunnel import TunnelConnectors
        from txmesh.service import connectFactoryFor
        from txmesh.upstream.cluster import ClusterManager
        from txmesh.xds.client import makeXdsClient

        config, reactor, stats = parent.config, parent.reactor, parent.stats
        self.name = config.dynamicResources.cluster
        self.registries = RegistryClients(reactor, config.registries)
        self.clusters = ClusterManager(reactor, [config.cluster(self.name)],
                                       connectFactoryFor(reactor, WriteScope(reactor), stats), stats, random,
                                       registries=self.registries, tunnelFactory=TunnelConnectors)
        self.applier = WorkersApplier(parent)
        self.client = makeXdsClient(config, self.applier, reactor, self.clusters, stats, random)
        self.started = False

    @property
    def state(self):
        """The L{txmesh.xds.state.XdsState}."""
        return self.client.handler

    def withStatic(self, config):
        """A file reload's ``config`` merged with the resources accepted.  @raise ConfigError."""
        return self.state.withStatic(config)

    def start(self):
        """The control plane's cluster's checks and discovery, then the stream (once discovery is warm)."""
        if self.started:
            return
        self.started = True
        self.clusters.startHealthChecks()
        self.clusters.startDiscovery().addCallback(lambda _: self.client.start())

    def clustersChanged(self, diff):
        """An applied configuration changed the control plane's cluster (its endpoints, TLS ...): follow it."""
        for change in diff.clustersChanged:
            if change.new.name == self.name:
                self.clusters.updateCluster(change.new, change.keepPools)

    @defer.inlineCallbacks
    def stop(self):
        """The stream first (no update applies while draining), then the cluster's pools and registry clients."""
        yield self.client.stop()
        self.clusters.stopHealthChecks()
        yield self.clusters.stopDiscovery()
        yield self.clusters.drain()
        yield self.registries.stop()

    def describe(self):
        return self.client.describe()
