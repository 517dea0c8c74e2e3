"""
The ``static`` discovery source (issue 12, part 1): a fixed endpoint list under ``discovery``, validated like a
cluster's ``endpoints`` (txmesh.config.buildEndpoints), delivered once at start.  It is what a cluster's plain
``endpoints`` are, through the discovery path (``/clusters`` shows its version and state like any source's).
"""

from dataclasses import dataclass

from zope.interface import implementer

from txmesh.config import buildEndpoints
from txmesh.config_reader import joinPath
from txmesh.interfaces import IDiscoverySource, IDiscoverySourceFactory


@dataclass(frozen=True, slots=True)
class StaticSourceConfig:
    endpoints: tuple  # EndpointConfig


@implementer(IDiscoverySourceFactory)
class StaticSourceFactory:
    name = "static"
    keys = ("endpoints",)
    registryType = None

    def buildConfig(self, raw, context):
        r = context.reader
        if raw.get("endpoints") is None:
            raise context.error("missing required key 'endpoints' (a list of {address, weight, priority, "
                                "locality, metadata})")
        path = joinPath(context.keyPath, "endpoints")
        return StaticSourceConfig(buildEndpoints(r, r.check(raw["endpoints"], path, list), path))

    def makeSource(self, config, context, sink):
        return StaticSource(config, sink)


@implementer(IDiscoverySource)
class StaticSource:
    def __init__(self, config, sink):
        self.config = config
        self.sink = sink

    def start(self):
        self.sink.hostsUpdated(self.config.endpoints, "static")

    def stop(self):
        return None

    def describe(self):
        return {"endpoints": len(self.config.endpoints)}
