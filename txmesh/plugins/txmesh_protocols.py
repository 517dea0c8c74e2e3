"""The built-in protocols, as Twisted plugins providing IProtocol (see txmesh.protocols.descriptor)."""

from txmesh.protocols.dubbo.protocol import DUBBO
from txmesh.protocols.h2.protocol import GRPC, HTTP2
from txmesh.protocols.http1.protocol import HTTP1

__all__ = ["HTTP1", "HTTP2", "GRPC", "DUBBO"]
