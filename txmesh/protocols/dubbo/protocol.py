"""The Dubbo 2 protocol descriptor (L{txmesh.interfaces.IProtocol})."""

from txmesh.protocols.descriptor import ProtocolDescriptor
from txmesh.protocols.dubbo.client import DubboClientProtocol
from txmesh.protocols.dubbo.pool import MultiplexConnectionPool
from txmesh.protocols.dubbo.replies import dubboStatusFor
from txmesh.protocols.dubbo.server import DubboListenerFactory

DUBBO = ProtocolDescriptor(
    "dubbo", aliases=(), filterFamily="dubbo", listenerFactory=DubboListenerFactory,
    clientProtocol=DubboClientProtocol, pool=MultiplexConnectionPool, replyStatus=dubboStatusFor)
