"""The HTTP/1.1 protocol descriptor (L{txmesh.interfaces.IProtocol})."""

from txmesh.protocols.descriptor import ProtocolDescriptor
from txmesh.protocols.http1.client import HTTP1ClientProtocol
from txmesh.protocols.http1.pool import HTTP1ConnectionPool
from txmesh.protocols.http1.server import HTTP1ListenerFactory

HTTP1 = ProtocolDescriptor(
    "http1", aliases=("http",), filterFamily="http", listenerFactory=HTTP1ListenerFactory,
    clientProtocol=HTTP1ClientProtocol, pool=HTTP1ConnectionPool)
