"""
mesh.yaml's discovery and registration keys (issue 12), validated at load like the rest of txmesh.config:

- ``registries``: named registry connections (ZooKeeper, etcd), each one session shared by every discovery source,
  Dubbo registry route and registration that names it;
- ``clusters[].discovery``: where a cluster's hosts come from at run time (an IDiscoverySourceFactory plugin:
  static, dns, file, zookeeper, etcd) instead of a fixed ``endpoints`` list;
- ``registration``: the local app published in registries while it is healthy.

See docs/discovery.md and docs/configuration.md ("Discovery keys").
"""

import ipaddress
import string
from dataclasses import dataclass, field

from twisted.plugin import getPlugins

import txmesh.plugins
from txmesh.config_reader import hostPort, joinPath
from txmesh.detect_config import INTERNAL
from txmesh.interfaces import IDiscoverySourceFactory
from txmesh.twisted_private import parseServerEndpoint

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


# -- registration (part 3) ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DubboServiceConfig:
    """One Dubbo service the local app provides, published as a provider URL (``registration.publish[].services``)."""

    interface: str
    methods: tuple = ()  # method names, the URL's ``methods``
    version: str = ""
    group: str = ""
    application: str = None  # None: the entry's, else the node's cluster, else its id
    parameters: tuple = ()  # ((key, value), ...) str pairs added to the URL


@dataclass(frozen=True, slots=True)
class DubboSubscriptionConfig:
    """One interface the local app consumes, published as a consumer node (``registration.publish[].subscribe``)."""

    interface: str
    version: str = ""
    group: str = ""


@dataclass(frozen=True, slots=True)
class ZooKeeperPublishConfig:
    """A ``registration.publish`` entry naming a zookeeper registry: Dubbo provider URLs and consumer nodes."""

    registry: str
    services: tuple = ()  # DubboServiceConfig
    subscribe: tuple = ()  # DubboSubscriptionConfig
    application: str = None
    type: str = "zookeeper"


@dataclass(frozen=True, slots=True)
class EtcdPublishConfig:
    """
    A ``registration.publish`` entry naming an etcd registry: one key under a lease.  ``key`` and ``value`` may hold
    ``{address}``, ``{host}``, ``{port}`` (the advertised address, known at run time); ``value`` None is the JSON
    ``{"address": "host:port"}`` (plus ``metadata``) the etcd discovery source reads.
    """

    registry: str
    key: str
    value: str = None
    ttl: int = 10
    metadata: tuple = ()  # ((key, value), ...): the default value's "metadata" object
    type: str = "etcd"


@dataclass(frozen=True, slots=True)
class RegistrationConfig:
    """
    ``registration``: the local app published under the address of an inbound listener while it passes its health
    check (txmesh.discovery.registration).
    """

    listener: str  # the listener callers must use
    listenerPort: int  # its address's port (0: the port it was bound to, known once listening)
    listenerInterface: str  # its address's interface ("" or "0.0.0.0"/"::": all)
    advertiseAddress: str  # the host published; None: derived from the interface (docs/discovery.md)
    drainGrace: float  # seconds between deregistering and closing the listeners on drain
    appHost: str  # the local app, which the health check probes
    appPort: int
    healthCheck: object  # a txmesh.config.HealthCheckConfig
    publish: tuple  # ZooKeeperPublishConfig, EtcdPublishConfig


_REGISTRATION_KEYS = ("listener", "advertise_address", "drain_grace", "health_check", "publish")


def buildRegistration(r, raw, registries, listeners, clusters=()):
    """
    ``registration``: the local app published in registries while healthy (part 3; txmesh.discovery.registration).
    @return: a RegistrationConfig, or None when the key is absent.
    """
    m = raw.get("registration")
    if m is None:
        return None
    path = "registration"
    r.mapping(m, path, required=("listener", "publish"), optional=_REGISTRATION_KEYS)
    listenerName = r.get(m, path, "listener", str)
    byName = {l.name: l for l in listeners}
    listener = byName.get(listenerName)
    if listener is None:
        raise r.error("unknown listener '%s' (listeners: %s)" % (listenerName, ", ".join(sorted(byName))),
                      joinPath(path, "listener"))
    if listener.trafficDirection == "outbound":
        raise r.error("listener '%s' is outbound: callers must reach the app through an inbound listener"
                      % (listenerName,), joinPath(path, "listener"))
    if listener.address == INTERNAL:  # reached through an auto listener (issue 14 part 4)
        raise r.error("listener '%s' is internal: name the auto listener callers connect to" % (listenerName,),
                      joinPath(path, "listener"))
    kind, args, kwargs = parseServerEndpoint(listener.address)
    if kind not in ("tcp", "tcp6"):
        raise r.error("listener '%s' listens on '%s': a registration needs a TCP address (host:port)"
                      % (listenerName, listener.address), joinPath(path, "listener"))
    interface = kwargs.get("interface", "")
    advertise = r.get(m, path, "advertise_address", str, None)
    if advertise is not None:
        advertise = _advertiseAddress(r, advertise, joinPath(path, "advertise_address"))
    publish = _buildPublish(r, m, path, registries, listener)
    drainGrace = r.duration(m, path, "drain_grace", 5.0)
    appHost, appPort, healthCheck = _buildLocalCheck(r, m, path, listener, clusters)
    return RegistrationConfig(listener=listenerName, listenerPort=int(args[0]), listenerInterface=interface,
                              advertiseAddress=advertise, drainGrace=drainGrace, appHost=appHost, appPort=appPort,
                              healthCheck=healthCheck, publish=publish)


def _advertiseAddress(r, value, path):
    try:
        ip = ipaddress.ip_address(value)
    except ValueError:
        raise r.error("must be an IP address, not '%s' (callers dial it)" % (value,), path) from None
    if ip.is_unspecified:
        raise r.error("must be an address callers can dial, not '%s'" % (value,), path)
    return str(ip)


def _buildLocalCheck(r, m, path, listener, clusters):
    """``registration.health_check``: the local app's address and its check (default: a TCP connect)."""
    from txmesh.config import buildHealthCheck  # config.py imports this module
    hPath = joinPath(path, "health_check")
    h = m.get("health_check")
    h = {} if h is None else r.check(h, hPath, dict)
    address = r.get(h, hPath, "address", str, None)
    if address is not None:
        host, port = hostPort(r, address, joinPath(hPath, "address"))
    else:
        cluster = next((c for c in clusters if c.name == listener.defaultCluster), None)
        if cluster is None or len(cluster.endpoints) != 1:
            raise r.error("name the local app's address (health_check.address: host:port): the default_cluster of "
                          "listener '%s' has not exactly one endpoint" % (listener.name,), hPath)
        host, port = cluster.endpoints[0].host, cluster.endpoints[0].port
    if h.get("type") is None:
        h = dict(h, type="tcp")  # a connect check unless the config names another
    check = buildHealthCheck(r, h, hPath, listener.name, listener.protocol, extraKeys=("address",))
    if check.noTrafficInterval:
        raise r.error("the local app's traffic is not counted: use interval", joinPath(hPath, "no_traffic_interval"))
    return host, port, check


def _buildPublish(r, m, path, registries, listener):
    entries = r.list(m, path, "publish")
    if not entries:
        raise r.error("must list at least one registry to publish in", joinPath(path, "publish"))
    out = []
    seen = {}
    for i, e in enumerate(entries):
        ePath = "%s.publish[%d]" % (path, i)
        r.check(e, ePath, dict)
        name = r.get(e, ePath, "registry", str)
        registry = registries.get(name)
        if registry is None:
            raise r.error("unknown registry '%s' (registries: %s)" % (name, ", ".join(sorted(registries)) or "none"),
                          joinPath(ePath, "registry"))
        if name in seen:
            raise r.error("registry '%s' is already published in by %s" % (name, seen[name]),
                          joinPath(ePath, "registry"))
        seen[name] = ePath
        if registry.type == "zookeeper":
            out.append(_buildZooKeeperPublish(r, e, ePath, name, listener))
        else:
            out.append(_buildEtcdPublish(r, e, ePath, name))
    return tuple(out)


def _parameters(r, raw, path):
    if raw is None:
        return ()
    r.check(raw, path, dict)
    out = []
    for k, v in raw.items():
        if not isinstance(k, str) or not k or isinstance(v, (dict, list)) or v is None:
            raise r.error("must map names to strings or numbers", joinPath(path, str(k)))
        out.append((k, str(v).lower() if isinstance(v, bool) else str(v)))
    return tuple(sorted(out))


def _interface(r, e, path):
    value = r.get(e, path, "interface", str)
    if not value or any(c in value for c in "/?&=:% ") or not value.isprintable():
        raise r.error("must be a Dubbo interface name like org.example.DemoService, not '%s'" % (value,),
                      joinPath(path, "interface"))
    return value


def _buildZooKeeperPublish(r, e, ePath, name, listener):
    r.mapping(e, ePath, required=("registry",), optional=("services", "subscribe", "application"))
    application = r.get(e, ePath, "application", str, None)
    services = []
    for j, s in enumerate(r.list(e, ePath, "services")):
        sPath = "%s.services[%d]" % (ePath, j)
        r.check(s, sPath, dict)
        r.mapping(s, sPath, required=("interface",),
                  optional=("methods", "version", "group", "application", "parameters"))
        methods = r.list(s, sPath, "methods")
        for k, method in enumerate(methods):
            mPath = "%s.methods[%d]" % (sPath, k)
            r.check(method, mPath, str)
            if not method or any(c in method for c in ",/?&= "):
                raise r.error("must be a method name, not '%s'" % (method,), mPath)
        services.append(DubboServiceConfig(
            interface=_interface(r, s, sPath), methods=tuple(methods), version=_text(r, s, sPath, "version"),
            group=_text(r, s, sPath, "group"), application=r.get(s, sPath, "application", str, None),
            parameters=_parameters(r, s.get("parameters"), joinPath(sPath, "parameters"))))
    if services and listener.protocol != "dubbo":
        raise r.error("Dubbo services are published as dubbo:// provider URLs: listener '%s' speaks %s, not dubbo"
                      % (listener.name, listener.protocol), joinPath(ePath, "services"))
    subscribe = []
    for j, s in enumerate(r.list(e, ePath, "subscribe")):
        sPath = "%s.subscribe[%d]" % (ePath, j)
        if isinstance(s, str):
            s = {"interface": s}
        r.check(s, sPath, dict)
        r.mapping(s, sPath, required=("interface",), optional=("version", "group"))
        subscribe.append(DubboSubscriptionConfig(interface=_interface(r, s, sPath),
                                                 version=_text(r, s, sPath, "version"),
                                                 group=_text(r, s, sPath, "group")))
    if not services and not subscribe:
        raise r.error("a zookeeper entry publishes 'services' (provider URLs) or 'subscribe' (consumer nodes)", ePath)
    return ZooKeeperPublishConfig(registry=name, services=tuple(services), subscribe=tuple(subscribe),
                                  application=application)


def _text(r, m, path, key):
    value = m.get(key)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)  # version: 1.0 written unquoted
    return r.get(m, path, key, str, "")


_PLACEHOLDERS = ("address", "host", "port")


def _template(r, value, path):
    """Check ``value`` formats with only {address}, {host}, {port}."""
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(value) if f is not None]
    except ValueError as e:
        raise r.error("invalid template: %s ('{{' for a literal brace)" % (e,), path) from None
    for f in fields:
        if f not in _PLACEHOLDERS:
            raise r.error("unknown placeholder '{%s}' (known: {address}, {host}, {port})" % (f,), path)
    return value


def _buildEtcdPublish(r, e, ePath, name):
    r.mapping(e, ePath, required=("registry", "key"), optional=("value", "ttl", "metadata"))
    key = _template(r, r.get(e, ePath, "key", str), joinPath(ePath, "key"))
    if not key:
        raise r.error("must not be empty", joinPath(ePath, "key"))
    value = r.get(e, ePath, "value", str, None)
    if value is not None:
        value = _template(r, value, joinPath(ePath, "value"))
        if e.get("metadata") is not None:
            raise r.error("metadata goes into the default value only; write it into 'value'",
                          joinPath(ePath, "metadata"))
    ttl = r.duration(e, ePath, "ttl", 10.0)
    if ttl < 1 or ttl != int(ttl):
        raise r.error("must be a whole number of seconds, at least 1 (an etcd lease's TTL)", joinPath(ePath, "ttl"))
    return EtcdPublishConfig(registry=name, key=key, value=value, ttl=int(ttl),
                             metadata=_parameters(r, e.get("metadata"), joinPath(ePath, "metadata")))
