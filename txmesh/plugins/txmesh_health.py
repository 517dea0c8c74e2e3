"""The built-in active health checks, as Twisted plugins providing IHealthCheckerFactory."""

from twisted.plugin import IPlugin
from zope.interface import alsoProvides

from txmesh.protocols.dubbo.health import DubboCheckerFactory
from txmesh.protocols.h2.health import GRPCCheckerFactory
from txmesh.upstream.health_checkers import HTTPCheckerFactory, TCPCheckerFactory

tcp = TCPCheckerFactory()
http = HTTPCheckerFactory()
grpc = GRPCCheckerFactory()
dubbo = DubboCheckerFactory()

for _factory in (tcp, http, grpc, dubbo):
    alsoProvides(_factory, IPlugin)
del _factory
