"""
mesh.yaml's discovery and registration keys (issue 12), validated at load like the rest of txmesh.config:

- ``registries``: named registry connections (ZooKeeper, etcd), each one session shared by every discovery source,
  Dubbo registry route and registration that names it;
- ``clusters[].discovery``: where a cluster's hosts come from at run time (an IDiscoverySourceFactory plugin:
  static, dns, file, zookeeper, etcd) instead of a fixed ``endpoints`` list;
- ``registration``: the local app published in registries while it is healthy.

See docs/discovery.md and docs/configuration.md ("Discovery keys").
"""

from dataclasses import dataclass, field

from twisted.plugin import getPlugins

import txmesh.plugins
from txmesh.config_reader import joinPath
from txmesh.interfaces import IDiscoverySourceFactory

REGISTRY_TYPES = ("zookeeper", "etcd")


@dataclass(frozen=True, slots=True)
class ZooKeeperRegistryConfig:
    """``registries[]`` of ``type: zookeeper``: one kazoo session (times in seconds)."""

    name: str
    hosts: str  # kazoo's connection string: "host:port,host:port"
    root: str = "/dubbo"  # Dubbo 2's registry root (``dubbo.registry.group``)
    sessionTimeout: float = 10.0
    connectTimeout: float = 5.0
    type: str = "zookeeper"


@dataclass(frozen=True, slots=True)
class EtcdRegistryConfig:
    """``registries[]`` of ``type: etcd``: etcd v3's HTTP/JSON gateway (times in seconds)."""

    name: str
    endpoints: tuple  # ("http://127.0.0.1:2379", ...): tried in turn
    timeout: float = 5.0
    type: str = "etcd"


@dataclass(frozen=True, slots=True)
class DiscoveryConfig:
    """
    ``clusters[].discovery``: the source's own config, built by its IDiscoverySourceFactory (``factory``), and the
    keys every source shares.
    """

    type: str
    factory: object = field(compare=False, repr=False)
    sourceConfig: object = None
    registry: str = None  # the ``registries`` entry it uses, or None
    # a source that fails keeps serving the last known host set (False: the cluster empties)
    keepLastKnown: bool = True
    # at start, how long the service waits for the first host set before serving with an empty cluster
    initialFetchTimeout: float = 5.0


@dataclass(frozen=True, slots=True)
class DiscoveryConfigContext:
    """What an IDiscoverySourceFactory.buildConfig may know about where its keys sit, and how to report errors."""

    filename: str
    keyPath: str
    clusterName: str
    clusterProtocol: str
    lineOf: object
    registry: object = None  # the RegistryConfig the entry names, or None
    reader: object = None  # the txmesh.config_reader.Reader of the file (typed accessors with the same errors)

    def error(self, reason, subpath=""):
        from txmesh.errors import ConfigError
        path = joinPath(self.keyPath, subpath) if subpath else self.keyPath
        return ConfigError(reason, path, self.filename, self.lineOf(path))


_DISCOVERY_KEYS = ("type", "registry", "keep_last_known", "initial_fetch_timeout")


def _plugins(interface):
    found = {}
    for plugin in getPlugins(interface, txmesh.plugins):
        found.setdefault(plugin.name, plugin)
    return found


def buildRegistries(r, raw):
    """``registries``: a list of named registry connections; @return: {name: RegistryConfig}."""
    out = {}
    for i, m in enumerate(r.list(raw, "", "registries")):
        path = "registries[%d]" % (i,)
        r.check(m, path, dict)
        kind = r.get(m, path, "type", str)
        if kind == "zookeeper":
            r.mapping(m, path, required=("name", "type", "hosts"),
                      optional=("root", "session_timeout", "connect_timeout"))
            root = r.get(m, path, "root", str, "/dubbo")
            if not root.startswith("/") or (len(root) > 1 and root.endswith("/")):
                raise r.error("must be an absolute ZooKeeper path without a trailing '/' (e.g. /dubbo)",
                              joinPath(path, "root"))
            config = ZooKeeperRegistryConfig(
                name=r.name(m, path), hosts=r.get(m, path, "hosts", str), root=root,
                sessionTimeout=r.duration(m, path, "session_timeout", 10.0),
                connectTimeout=r.duration(m, path, "connect_timeout", 5.0))
        elif kind == "etcd":
            r.mapping(m, path, required=("name", "type", "endpoints"), optional=("timeout",))
            endpoints = r.list(m, path, "endpoints")
            if not endpoints:
                raise r.error("must list at least one etcd endpoint (http://host:port)", joinPath(path, "endpoints"))
            for j, e in enumerate(endpoints):
                ePath = "%s.endpoints[%d]" % (path, j)
                r.check(e, ePath, str)
                if not (e.startswith("http://") or e.startswith("https://")):
                    raise r.error("must be an http:// or https:// URL of etcd's gateway", ePath)
            config = EtcdRegistryConfig(name=r.name(m, path), endpoints=tuple(e.rstrip("/") for e in endpoints),
                                        timeout=r.duration(m, path, "timeout", 5.0))
        else:
            raise r.error("unknown registry type '%s' (known: %s)" % (kind, ", ".join(REGISTRY_TYPES)),
                          joinPath(path, "type"))
        if config.name in out:
            raise r.error("duplicate registry name '%s'" % (config.name,), joinPath(path, "name"))
        out[config.name] = config
    return out


def buildDiscovery(r, m, path, clusterName, protocol, registries):
    """
    ``clusters[].discovery``: ``type`` names an IDiscoverySourceFactory plugin, which builds its own keys;
    ``registry`` names a ``registries`` entry of the type the plugin needs.  @return: a DiscoveryConfig or None.
    """
    raw = m.get("discovery")
    if raw is None:
        return None
    dPath = joinPath(path, "discovery")
    r.check(raw, dPath, dict)
    factories = _plugins(IDiscoverySourceFactory)
    kind = r.get(raw, dPath, "type", str)
    factory = factories.get(kind)
    if factory is None:
        raise r.error("unknown discovery type '%s' (known: %s)" % (kind, ", ".join(sorted(factories))),
                      joinPath(dPath, "type"))
    r.mapping(raw, dPath, optional=_DISCOVERY_KEYS + tuple(factory.keys))
    registry = None
    registryName = r.get(raw, dPath, "registry", str, None)
    if factory.registryType is not None:
        if registryName is None:
            candidates = [c for c in registries.values() if c.type == factory.registryType]
            if len(candidates) != 1:
                raise r.error("name the %s registry to use ('registry': one of the registries of type %s)" % (
                    factory.registryType, factory.registryType), joinPath(dPath, "registry"))
            registry = candidates[0]
        else:
            registry = registries.get(registryName)
            if registry is None:
                raise r.error("unknown registry '%s' (registries: %s)" % (
                    registryName, ", ".join(sorted(registries)) or "none"), joinPath(dPath, "registry"))
            if registry.type != factory.registryType:
                raise r.error("registry '%s' is %s; discovery '%s' needs %s" % (
                    registryName, registry.type, kind, factory.registryType), joinPath(dPath, "registry"))
    elif registryName is not None:
        raise r.error("discovery '%s' uses no registry" % (kind,), joinPath(dPath, "registry"))
    context = DiscoveryConfigContext(r.filename, dPath, clusterName, protocol, r.lineOf, registry, reader=r)
    own = {k: v for k, v in raw.items() if k in factory.keys}
    return DiscoveryConfig(
        type=kind, factory=factory, sourceConfig=factory.buildConfig(own, context),
        registry=registry.name if registry is not None else None,
        keepLastKnown=r.get(raw, dPath, "keep_last_known", bool, True),
        initialFetchTimeout=r.duration(raw, dPath, "initial_fetch_timeout", 5.0))


def buildRegistration(r, raw, registries, listeners):
    """
    ``registration``: the local app published in registries while healthy (part 3; txmesh.discovery.registration).
    @return: a RegistrationConfig, or None when the key is absent.
    """
    if raw.get("registration") is None:
        return None
    raise r.error("registration is not built yet", "registration")  # part 3 replaces this
