"""The built-in static and file discovery sources, as Twisted plugins providing IDiscoverySourceFactory."""

from twisted.plugin import IPlugin
from zope.interface import alsoProvides

from txmesh.discovery.files import FileSourceFactory
from txmesh.discovery.static import StaticSourceFactory

staticSource = StaticSourceFactory()
fileSource = FileSourceFactory()

for _factory in (staticSource, fileSource):
    alsoProvides(_factory, IPlugin)
del _factory
