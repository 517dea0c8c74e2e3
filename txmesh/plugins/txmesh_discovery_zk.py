"""The ZooKeeper discovery source (Dubbo 2's registry layout), as a Twisted plugin providing IDiscoverySourceFactory."""

from twisted.plugin import IPlugin
from zope.interface import alsoProvides

from txmesh.discovery.zookeeper import ZooKeeperDiscoveryFactory

zookeeper = ZooKeeperDiscoveryFactory()
alsoProvides(zookeeper, IPlugin)
