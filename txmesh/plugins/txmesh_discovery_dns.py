"""The DNS discovery source (``discovery: {type: dns}``), as a Twisted plugin providing IDiscoverySourceFactory."""

from twisted.plugin import IPlugin
from zope.interface import alsoProvides

from txmesh.discovery.dns import DNSSourceFactory

dns = DNSSourceFactory()
alsoProvides(dns, IPlugin)
