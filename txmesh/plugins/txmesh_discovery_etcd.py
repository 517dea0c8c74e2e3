"""The etcd discovery source (``clusters[].discovery.type: etcd``), as a Twisted plugin providing IDiscoverySourceFactory."""

from twisted.plugin import IPlugin
from zope.interface import alsoProvides

from txmesh.discovery.etcd_source import EtcdSourceFactory

etcd = EtcdSourceFactory()
alsoProvides(etcd, IPlugin)
