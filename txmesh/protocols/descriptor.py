"""
What every protocol descriptor shares (L{txmesh.interfaces.IProtocol}), and finding them.

A descriptor names a protocol once: the names mesh.yaml accepts, the filter family, and how to build its listener
factory, client protocol and connection pool.  Config, the service and the clusters read descriptors instead of
string tables; the built-in ones are found, like every extension, as Twisted plugins in ``txmesh.plugins``.
"""

from twisted.plugin import IPlugin, getPlugins
from zope.interface import implementer

from txmesh.interfaces import IProtocol


@implementer(IProtocol, IPlugin)
class ProtocolDescriptor:
    """
    A protocol built from its parts (classes are called with the arguments IProtocol documents).

    @param listenerFactory: ``(listenerConfig, template, runtime) -> IListenerFactory``, or None if it cannot listen.
    @param clientProtocol: ``() -> client protocol``, or None if no cluster can speak it.
    @param pool: ``(clock, host, clusterConfig, connect, stats, resources) -> IConnectionPool``.
    @param replyStatus: ``(httpStatus, cause) -> protocol-native status``; None: the HTTP status itself.
    """

    def __init__(self, name, aliases, filterFamily, listenerFactory=None, clientProtocol=None, pool=None,
                 replyStatus=None):
        self.name = name
        self.aliases = frozenset(aliases)
        self.filterFamily = filterFamily
        self.listens = listenerFactory is not None
        self.upstream = clientProtocol is not None and pool is not None
        self._listenerFactory = listenerFactory
        self._clientProtocol = clientProtocol
        self._pool = pool
        self._replyStatus = replyStatus

    def buildListenerFactory(self, listenerConfig, template, runtime):
        return self._listenerFactory(listenerConfig, template, runtime)

    def buildClientProtocol(self):
        return self._clientProtocol()

    def buildPool(self, clock, host, clusterConfig, connect, stats, resources=None):
        return self._pool(clock, host, clusterConfig, connect, stats, resources)

    def localReplyStatus(self, httpStatus, cause):
        if self._replyStatus is None:
            return httpStatus
        return self._replyStatus(httpStatus, cause)

    def __repr__(self):
        return "<protocol %s>" % (self.name,)


def findProtocols(package=None):
    """
    {name or alias: IProtocol} of every protocol plugin in ``package`` (default ``txmesh.plugins``, which also
    searches the ``plugin_paths`` mesh.yaml added).  A name is taken by the first plugin that claims it, so the
    built-ins keep theirs.
    """
    if package is None:
        import txmesh.plugins as package
    found = {}
    for proto in getPlugins(IProtocol, package):
        for name in (proto.name, *sorted(proto.aliases)):
            found.setdefault(name, proto)
    return found
