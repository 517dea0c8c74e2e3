"""
The HTTP/2 and gRPC protocol descriptors (L{txmesh.interfaces.IProtocol}): one connection layer, client and pool;
a ``grpc`` listener adds gRPC's semantics (grpc-timeout, trailers-only local replies with grpc-status).
"""

from txmesh.protocols.descriptor import ProtocolDescriptor
from txmesh.protocols.h2 import grpc
from txmesh.protocols.h2.client import H2ClientProtocol
from txmesh.protocols.h2.pool import H2ConnectionPool
from txmesh.protocols.h2.server import GRPCListenerFactory, H2ListenerFactory

HTTP2 = ProtocolDescriptor(
    "http2", aliases=("h2",), filterFamily="http", listenerFactory=H2ListenerFactory,
    clientProtocol=H2ClientProtocol, pool=H2ConnectionPool)

GRPC = ProtocolDescriptor(
    "grpc", aliases=(), filterFamily="grpc", listenerFactory=GRPCListenerFactory,
    clientProtocol=H2ClientProtocol, pool=H2ConnectionPool,
    replyStatus=lambda httpStatus, cause: grpc.statusForCause(cause, httpStatus))
