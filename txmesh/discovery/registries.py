"""
The running registry clients of one config: one per ``registries`` entry, made on first use and shared by every
discovery source, Dubbo registry route and registration that names it (one ZooKeeper session, one etcd client).
"""

from twisted.internet import defer


class RegistryClients:
    """
    @param reactor: the reactor the clients run on.
    @param configs: {name: registry config} (txmesh.config.MeshConfig.registries).
    """

    def __init__(self, reactor, configs):
        self.reactor = reactor
        self.configs = dict(configs)
        self._clients = {}

    def get(self, name):
        """The started client of registry ``name`` (IZooKeeperSession or IEtcdClient); KeyError if unknown."""
        client = self._clients.get(name)
        if client is None:
            config = self.configs[name]
            if config.type == "zookeeper":
                from txmesh.discovery.zookeeper_session import ZooKeeperSession
                client = ZooKeeperSession(config, self.reactor)
                client.start()
            elif config.type == "etcd":
                from txmesh.discovery.etcd import EtcdClient  # part 1 (etcd) builds it
                client = EtcdClient(config, self.reactor)
            else:
                raise KeyError(name)
            self._clients[name] = client
        return client

    def describe(self):
        """{name: {type, state}} for the admin API."""
        return {name: {"type": c.config.type, "connected": c.connected}
                for name, c in self._clients.items()}

    def stop(self):
        """Stop every client made (after deregistration, at shutdown).  @return: a Deferred."""
        clients, self._clients = list(self._clients.values()), {}
        return defer.gatherResults([defer.maybeDeferred(c.stop) for c in clients], consumeErrors=True)
