"""
mesh.yaml -> validated, frozen configuration objects.

Everything is checked once, at load, before any port is bound: a bad file raises ConfigError naming the file, the
line (from the YAML node marks) and the key path (``listeners[0].filters[2].name``).  Filter and load-balancer
kinds are Twisted plugins found with ``getPlugins(..., txmesh.plugins)``; each filter factory validates its own
``config`` mapping through a FilterConfigContext so its errors are just as precise.  See docs/configuration.md.
"""

import ipaddress
import math
import os
import re
import socket
from dataclasses import dataclass, field

from twisted.plugin import getPlugins

import txmesh.plugins
from txmesh.discovery_config import buildDiscovery, buildRegistration, buildRegistries
from txmesh.config_reader import Reader, endpointString, hostPort, joinPath, parseYAML
from txmesh.detect_config import AUTO, AUTO_DESCRIPTOR, INTERNAL, buildDetect, checkDetectTargets
from txmesh.errors import ConfigError
from txmesh.hot_restart_config import buildHotRestart
from txmesh.workers_config import buildWorkers
from txmesh.interfaces import IFilterFactory, IHealthCheckerFactory, ILoadBalancerFactory
from txmesh.path_normalization import KEYS as PATH_KEYS, PathNormalization, buildPathNormalization
from txmesh.protocols.descriptor import findProtocols
from txmesh.routing import RouteConfig
from txmesh.tunnel_config import UPGRADE_LISTENER_PROTOCOLS, buildUpgradeConfigs
from txmesh.routing_config import buildRouteConfig, resolveDubboRegistryActions
from txmesh.tracing_config import buildTracing
from txmesh.tls.server_config import KEYS as TLS_KEYS, buildForwardClientCert, buildServerTLS, refuseSSLEndpoint
from txmesh.reuse_port import REUSE_PORT_KINDS
from txmesh.twisted_private import parseServerEndpoint
from txmesh.xds.config import buildDynamicResources
from txmesh.tls.upstream_config import buildUpstreamTLS

# listeners whose connections are HTTP/2 (canonical protocol names): they take an ``http2`` block
H2_PROTOCOLS = frozenset({"grpc", "http2"})
DEFAULT_ADMIN_ADDRESS = "tcp:9901:interface=127.0.0.1"

_WILDCARD_INTERFACES = frozenset({"", "0.0.0.0", "::"})


# ---------------------------------------------------------------------------------------------------------------
# The configuration objects
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NodeConfig:
    """
    Who this sidecar is (Envoy's bootstrap ``node``): ``id`` names it in every local reply it makes (the
    ``x-txmesh-node`` field, the grpc-message, the Dubbo error text), so a caller can tell which hop failed.
    """

    id: str = field(default_factory=socket.gethostname)
    cluster: str = ""
    # JSON-able mapping sent to an xDS control plane as the DiscoveryRequest's node.metadata (a Struct)
    metadata: dict = field(default_factory=dict, hash=False)


# Envoy's internal_address_config defaults: RFC 1918, loopback and unique-local IPv6 are internal
DEFAULT_INTERNAL_RANGES = tuple(ipaddress.ip_network(n) for n in (
    "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "127.0.0.0/8", "::1/128", "fc00::/7"))

# traffic_direction -> (use_remote_address, xff_num_trusted_hops) defaults
_DIRECTION_DEFAULTS = {"unspecified": (True, 0), "inbound": (True, 1), "outbound": (False, 0)}


@dataclass(frozen=True, slots=True)
class ForwardingConfig:
    """
    How a listener treats the forwarding header fields (x-forwarded-for/-proto, x-request-id): Envoy's
    ``use_remote_address``, ``xff_num_trusted_hops`` and ``internal_address_config``, with defaults by the
    listener's ``traffic_direction``; see docs/configuration.md.
    """

    useRemoteAddress: bool = True
    trustedHops: int = 0
    internalRanges: tuple = DEFAULT_INTERNAL_RANGES


@dataclass(frozen=True, slots=True)
class AdminAuthConfig:
    """``admin.auth`` (issue 14 part 7): the file holding the bearer token every admin request must carry."""

    bearerTokenFile: str


@dataclass(frozen=True, slots=True)
class AdminConfig:
    address: str = DEFAULT_ADMIN_ADDRESS
    auth: AdminAuthConfig | None = None  # issue 14 part 7: who may use it (required beyond loopback)
    unixPath: str | None = None  # the socket file of a ``unix:`` address (a stale one is removed before binding)


@dataclass(frozen=True, slots=True)
class ListenerLimits:
    """Per-connection and per-stream bounds of a listener; sizes in bytes, durations in seconds."""

    maxRequestLine: int = 8192
    maxHeaderBytes: int = 65536
    maxHeaders: int = 100
    maxRequestBody: int = 0
    requestHeadersTimeout: float = 10.0
    idleTimeout: float = 300.0
    bufferLimit: int = 1048576
    streamIdleTimeout: float = 300.0  # a stream on which nothing moved this long ends (0 = never)
    maxConnections: int = 0  # open connections on this listener; one more is refused (0 = no limit)
    writeTimeout: float = 300.0  # a client whose write buffer stays full this long is closed (0 = never)
    drainGrace: float = 1.0  # on drain: Dubbo, kept open after READONLY; HTTP/1.1, a silent new connection


@dataclass(frozen=True, slots=True)
class OverloadConfig:
    """
    The process-wide overload bounds (the top-level ``overload`` block; Envoy's overload manager in spirit): a global
    connection limit across every listener, and a memory high-water mark on the process RSS above which new
    connections are refused and idle ones closed, until it falls below the low mark.  0 disables a bound.
    """

    maxConnections: int = 0
    memoryHighWatermark: int = 0  # bytes of RSS
    memoryLowWatermark: int = 0  # bytes of RSS; below it the pressure ends (the loader defaults it to 90% of high)
    memoryCheckInterval: float = 1.0


@dataclass(frozen=True, slots=True)
class H2Limits:
    """
    HTTP/2 defence bounds of an ``http2`` or ``grpc`` listener (its ``http2`` block; Envoy's defaults where Envoy
    has one).  The flood bounds are per connection.
    """

    maxConcurrentStreams: int = 100
    maxPrematureResets: int = 100  # streams reset by the client before their response ended...
    prematureResetRatio: float = 0.5  # ...once they are at least this share of the streams opened
    maxPendingControlFrames: int = 1000  # PING/SETTINGS acks queued while the write buffer is full
    maxInboundControlFramesPerSecond: int = 100  # PING/SETTINGS received per second, + 1 per DATA frame sent
    maxInboundPriorityPerStream: int = 100
    maxInboundWindowUpdatePerData: int = 10
    maxConsecutiveEmptyData: int = 1
    maxHeaderListSize: int = 65536
    maxMessageSize: int = 4 << 20 | 1024  # gRPC message bound (0 = none); the default admits 4 MiB messages


@dataclass(frozen=True, slots=True)
class FilterEntry:
    """One configured filter: its plugin factory and the immutable config the factory built."""

    name: str
    factory: object
    config: object
    # the entry's ``config`` mapping as written, which a reload compares (txmesh.config_diff.sameEntry)
    raw: object = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class FilterConfigContext:
    """What an IFilterFactory.buildConfig may know about where its config sits, and how to report errors there."""

    filename: str
    keyPath: str
    listenerProtocol: str
    clusterNames: frozenset
    lineOf: object

    def error(self, reason, subpath=""):
        """A ConfigError for ``keyPath`` + ``subpath`` (e.g. "path" or "[0].name"), with its line."""
        path = joinPath(self.keyPath, subpath)
        return ConfigError(reason, path, self.filename, self.lineOf(path))


def buildPluginConfig(factory, raw, context):
    """
    ``factory.buildConfig(raw, context)``, its errors placed at ``context``'s key path: a bare ConfigError("reason",
    "sub.path") or a ValueError becomes ``context.error``.
    """
    try:
        return factory.buildConfig(raw, context)
    except ConfigError as e:
        if e.filename is not None:
            raise
        raise context.error(e.reason, e.path) from e
    except ValueError as e:
        raise context.error(str(e)) from e


@dataclass(frozen=True, slots=True)
class ListenerConfig:
    """One listener.  ``protocol`` is the canonical name; ``descriptor`` the IProtocol that builds its factory."""

    name: str
    protocol: str
    address: str
    useRemoteAddress: bool
    defaultCluster: str | None
    limits: ListenerLimits
    networkFilters: tuple
    filters: tuple
    routeConfig: RouteConfig
    http2: H2Limits | None = None  # http2 and grpc listeners only
    respectExpectedTimeout: bool = True  # honour x-txmesh-expected-rq-timeout-ms from the client
    descriptor: object = field(default=None, compare=False, repr=False)
    trafficDirection: str = "unspecified"
    forwarding: ForwardingConfig = ForwardingConfig()
    pathNormalization: PathNormalization | None = None  # HTTP listeners: txmesh.path_normalization
    tls: object = None  # issue 14: the listener's ``tls`` block (TLS termination), or None for plain text
    forwardClientCert: object = None  # issue 14: x-forwarded-client-cert (HTTP, gRPC): txmesh.tls.server_config
    detect: object = None  # protocol: auto: its DetectConfig (txmesh.detect_config), None for other listeners
    # with workers: N, who spreads accepted connections over the workers: "kernel" (each worker accepts from the
    # shared socket) or "exact" (the parent accepts and hands each to the worker with the fewest; txmesh/workers_balance.py)
    connectionBalance: str = "kernel"


@dataclass(frozen=True, slots=True)
class EndpointConfig:
    host: str
    port: int
    weight: int = 1
    priority: int = 0
    locality: str = ""
    metadata: tuple = ()  # ((key, value), ...) str pairs
    healthy: bool = True  # False: its source says it is not (EDS health_status): the host's FAILED_EDS_HEALTH


@dataclass(frozen=True, slots=True)
class OutlierDetectionConfig:
    """``outlier_detection`` (Envoy's OutlierDetection; times in seconds, percentages 0..100)."""

    consecutive5xx: int = 5
    consecutiveGatewayFailure: int = 5
    consecutiveLocalOriginFailure: int = 5
    splitExternalLocalOriginErrors: bool = False
    interval: float = 10.0
    baseEjectionTime: float = 30.0
    maxEjectionTime: float = 300.0
    maxEjectionTimeJitter: float = 0.0
    maxEjectionPercent: int = 10
    alwaysEjectOneHost: bool = False
    enforcingConsecutive5xx: int = 100
    enforcingConsecutiveGatewayFailure: int = 0
    enforcingConsecutiveLocalOriginFailure: int = 100
    enforcingSuccessRate: int = 100
    enforcingLocalOriginSuccessRate: int = 100
    successRateMinimumHosts: int = 5
    successRateRequestVolume: int = 100
    successRateStdevFactor: int = 1900
    failurePercentageThreshold: int = 85
    enforcingFailurePercentage: int = 0
    enforcingFailurePercentageLocalOrigin: int = 0
    failurePercentageMinimumHosts: int = 5
    failurePercentageRequestVolume: int = 50


@dataclass(frozen=True, slots=True)
class CommonLbConfig:
    """``common_lb_config``: the panic threshold and priority overprovisioning (slow start joins here)."""

    healthyPanicThreshold: float = 50.0  # percent of healthy hosts under which a priority level balances over all
    overprovisioningFactor: int = 140  # percent: a level's health is its healthy share times this, capped at 100


@dataclass(frozen=True, slots=True)
class SlowStartConfig:
    """``lb_config.slow_start`` (Envoy's SlowStartConfig)."""

    window: float
    aggression: float = 1.0
    minWeightPercent: float = 10.0


@dataclass(frozen=True, slots=True)
class LbConfig:
    """
    ``lb_config``: the options of the cluster's lb_policy (only the policy's own keys may be set; the defaults
    are Envoy's, and Linkerd's for peak_ewma).
    """

    minimumRingSize: int = 1024  # ring_hash
    maximumRingSize: int = 8 * 1024 * 1024  # ring_hash
    tableSize: int = 65537  # maglev, a prime
    choiceCount: int = 2  # least_request, peak_ewma
    activeRequestBias: float = 1.0  # least_request
    decayTime: float = 10.0  # peak_ewma
    defaultRtt: float = 0.03  # peak_ewma
    slowStart: SlowStartConfig | None = None  # round_robin, weighted_round_robin, least_request


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    name: str
    protocol: str = "http1"
    lbPolicy: str = "round_robin"
    lbFactory: object = None
    connectTimeout: float = 1.0
    idleTimeout: float = 60.0
    maxConnections: int = 1024
    maxPendingRequests: int = 1024
    maxRequestsPerConnection: int = 0
    endpoints: tuple = ()
    # multiplexed protocols (dubbo): connections per host, concurrent requests per connection (0 = the pool's
    # default), keep-alive ping interval in seconds (0 = none)
    connectionsPerHost: int = 1
    maxConcurrentStreams: int = 0
    heartbeatInterval: float = 0.0
    # resilience (issue 11)
    healthChecks: tuple = ()  # health_checks: the checkers' built configs
    outlierDetection: object = None  # outlier_detection, or None when off
    commonLbConfig: object = None  # common_lb_config: panic threshold, priorities, slow start
    circuitBreakers: object = None  # circuit_breakers: cluster-wide limits
    lbConfig: object = None  # the lb_policy's own options (ring_hash, maglev, least_request, ewma)
    # discovery (issue 12): where the hosts come from at run time (txmesh.discovery_config.DiscoveryConfig), or None
    # for the fixed ``endpoints``
    discovery: object = None
    tls: object = None  # issue 14: the cluster's ``tls`` block (TLS origination), or None for plain text
    # the IProtocol of ``protocol``: builds the cluster's client protocols and pools
    descriptor: object = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class MeshConfig:
    filename: str
    admin: AdminConfig
    listeners: tuple
    clusters: tuple
    drainTimeout: float = 15.0
    pluginPaths: tuple = ()
    node: NodeConfig = field(default_factory=NodeConfig)
    overload: OverloadConfig = OverloadConfig()
    # discovery and registration (issue 12): {name: registry config}, the registration config or None
    registries: dict = field(default_factory=dict, compare=False)
    registration: object = None
    hotRestart: object = None  # a HotRestartConfig (issue 13 part 5) or None
    # the top-level ``tracing`` block (issue 16 part 2): a txmesh.tracing_config.TracingConfig, or None
    tracing: object = None
    # the ``dynamic_resources`` block (issue 13 part 3): a txmesh.xds.config.XdsConfig, or None without xDS
    dynamicResources: object = None
    # the parts an xDS control plane gave (txmesh.xds.state): {"listeners"|"clusters": {name: {"source": "xds",
    # "resource": ..., "version_info": ...}}}, shown by /config_dump; empty for a file's parts
    origins: dict = field(default_factory=dict, compare=False, hash=False, repr=False)
    workers: int = 1  # processes serving the listeners (issue 10 part 4; txmesh.workers_config)
    raw: dict = field(default_factory=dict, compare=False, hash=False, repr=False)
    _clustersByName: dict = field(init=False, compare=False, hash=False, repr=False)

    def __post_init__(self):
        object.__setattr__(self, "_clustersByName", {c.name: c for c in self.clusters})

    def cluster(self, name):
        """The ClusterConfig called ``name``; KeyError if there is none."""
        return self._clustersByName[name]


# ---------------------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------------------


def load(path):
    """Read and validate a mesh.yaml file.  @raise ConfigError: the file cannot be read or is invalid."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError("cannot read configuration: %s" % (e,), filename=path) from e
    return loads(text, filename=path)


def loads(text, filename="<string>"):
    """Validate mesh.yaml text.  @raise ConfigError: naming filename, line, key path and reason."""
    raw, lines = parseYAML(text, filename)
    reader = Reader(filename, lines)
    return _buildMesh(reader, raw)


def buildFromRaw(raw, filename, lines=None):
    """
    Validate an already parsed mesh.yaml document (plain dicts and lists, as ``parseYAML`` gives): the xDS
    translation's (txmesh.xds.state) merged with the bootstrap's static parts, where no listener may be there yet
    (Envoy's LDS comes after CDS).  ``lines``: {key path: line}, where known.  @raise ConfigError: naming the key path and reason (and the line, where ``lines`` has it).
    """
    return _buildMesh(Reader(filename, lines or {}), raw, listenersRequired=False)


# ---------------------------------------------------------------------------------------------------------------
# Building
# ---------------------------------------------------------------------------------------------------------------


def _buildMesh(r, raw, listenersRequired=True):
    r.mapping(raw, "", optional=("node", "plugin_paths", "drain_timeout", "admin", "listeners", "clusters",
                                 "overload", "registries", "registration", "workers",
                                 "hot_restart", "tracing", "dynamic_resources"))
    # with listeners from a control plane (LDS), mesh.yaml may have no listener of its own (Envoy's bootstrap)
    lds = isinstance(raw.get("dynamic_resources"), dict) and raw["dynamic_resources"].get("lds") in (None, True)
    listenersRequired = listenersRequired and not lds
    if raw.get("listeners") is None and listenersRequired:
        raise r.error("missing required key 'listeners'", "")
    pluginPaths = _pluginPaths(r, raw)
    filterFactories = _plugins(IFilterFactory)
    lbFactories = _plugins(ILoadBalancerFactory)
    protocols = findProtocols()

    registries = buildRegistries(r, raw)
    clusters = []
    for i, c in enumerate(r.list(raw, "", "clusters")):
        clusters.append(_buildCluster(r, c, "clusters[%d]" % (i,), lbFactories, protocols, registries))
    _checkUnique(r, [(c.name, "clusters[%d]" % (i,)) for i, c in enumerate(clusters)], "cluster name", "name")
    clusterNames = frozenset(c.name for c in clusters)

    admin = _buildAdmin(r, r.mapping(raw.get("admin"), "admin", optional=("address", "mode", "auth")))

    listenersRaw = r.list(raw, "", "listeners")
    if not listenersRaw and listenersRequired:
        raise r.error("must list at least one listener", "listeners")
    listeners = tuple(_buildListener(r, l, "listeners[%d]" % (i,), clusterNames, filterFactories, protocols)
                      for i, l in enumerate(listenersRaw))
    _checkUnique(r, [(l.name, "listeners[%d]" % (i,)) for i, l in enumerate(listeners)], "listener name", "name")
    checkDetectTargets(r, listeners)  # protocol: auto and address: internal (issue 14 part 4)
    _checkAddresses(r, admin, listeners)
    resolveDubboRegistryActions(r, listeners, {c.name: c for c in clusters}, registries, lambda: _buildCluster(
        r, {"name": "dubbo_registry", "protocol": "dubbo"}, "", lbFactories, protocols))  # issue 12 part 2
    return MeshConfig(filename=r.filename, admin=admin, listeners=listeners, clusters=tuple(clusters),
                      drainTimeout=r.duration(raw, "", "drain_timeout", 15.0), pluginPaths=pluginPaths, raw=raw,
                      node=_buildNode(r, raw), overload=_buildOverload(r, raw), registries=registries,
                      registration=buildRegistration(r, raw, registries, listeners, clusters),
                      hotRestart=buildHotRestart(r, raw, [admin.address] + [lc.address for lc in listeners]),
                      tracing=buildTracing(r, raw), dynamicResources=buildDynamicResources(r, raw, clusters),
                      workers=buildWorkers(r, raw, listeners))


_OCTAL_MODE = re.compile(r"0?[0-7]{3}\Z")
DEFAULT_ADMIN_SOCKET_MODE = "600"


def readBearerTokenFile(path):
    """
    The bearer token in a file (its content, surrounding whitespace stripped), as bytes.
    @raise ValueError: the file cannot be read, is empty, or holds more than one line or a non-printable byte.
    """
    try:
        with open(path, "rb") as f:
            token = f.read(4097).strip()
    except OSError as e:
        raise ValueError("cannot read %s: %s" % (path, e.strerror or e)) from e
    if not token:
        raise ValueError("%s is empty" % (path,))
    if len(token) > 4096 or any(b < 0x21 or b > 0x7e for b in token):
        raise ValueError("%s must hold one token of printable ASCII, at most 4096 bytes" % (path,))
    return token


def _isLoopback(kind, kwargs):
    """Whether a parsed server endpoint only takes connections from this host: a unix socket, or TCP on loopback."""
    if kind == "unix":
        return True
    if kind not in ("tcp", "tcp6"):
        return False  # ssl:, systemd: and plugins: where they listen cannot be told from the string
    interface = kwargs.get("interface") or ""
    if interface == "localhost":
        return True
    try:
        return ipaddress.ip_address(interface.strip("[]")).is_loopback
    except ValueError:
        return False


def _buildAdmin(r, m):
    """
    The ``admin`` block (issue 14 part 7): a unix: address gets the file ``mode`` (default 0600, where Twisted's is
    0666); ``auth.bearer_token_file`` is read once here to check it; an address beyond loopback needs ``auth``.
    """
    address = endpointString(r, m, "admin", DEFAULT_ADMIN_ADDRESS)
    kind, args, kwargs = parseServerEndpoint(address)
    unixPath = None
    mode = m.get("mode")
    if mode is not None:
        if not isinstance(mode, str) or not _OCTAL_MODE.match(mode):
            raise r.error("must be an octal file mode as a quoted string, e.g. '0600'", "admin.mode")
        if kind != "unix":
            raise r.error("only for a unix: address", "admin.mode")
    if kind == "unix":
        unixPath = os.path.abspath(args[0])
        if ":mode=" in address:
            if mode is not None:
                raise r.error("the address already says mode=; keep one", "admin.mode")
        else:
            address += ":mode=" + (mode or DEFAULT_ADMIN_SOCKET_MODE).lstrip("0").rjust(3, "0")
        if not os.path.isdir(os.path.dirname(unixPath)):
            raise r.error("no directory %s for the socket" % (os.path.dirname(unixPath),), "admin.address")
    auth = None
    if m.get("auth") is not None:
        a = r.mapping(m["auth"], "admin.auth", required=("bearer_token_file",))
        path = r.get(a, "admin.auth", "bearer_token_file", str)
        if not os.path.isabs(path) and not r.filename.startswith("<"):
            path = os.path.join(os.path.dirname(os.path.abspath(r.filename)), path)
        try:
            readBearerTokenFile(path)
        except ValueError as e:
            raise r.error(str(e), "admin.auth.bearer_token_file") from None
        auth = AdminAuthConfig(path)
    if auth is None and not _isLoopback(kind, kwargs):
        raise r.error("'%s' listens beyond loopback: the admin API can drain and reconfigure this proxy, so set "
                      "admin.auth.bearer_token_file, or bind it to 127.0.0.1, ::1 or a unix: socket" % (address,),
                      "admin.address")
    return AdminConfig(address, auth, unixPath)


def _buildOverload(r, raw):
    """The ``overload`` block: the global connection limit and the memory high/low marks."""
    m = r.mapping(raw.get("overload"), "overload", optional=(
        "max_connections", "memory_high_watermark", "memory_low_watermark", "memory_check_interval"))
    high = r.integer(m, "overload", "memory_high_watermark", 0, 0)
    low = r.integer(m, "overload", "memory_low_watermark", None, 1)
    if low is not None and not high:
        raise r.error("needs memory_high_watermark", "overload.memory_low_watermark")
    if low is not None and low >= high:
        raise r.error("must be below memory_high_watermark (%d), got %d" % (high, low),
                      "overload.memory_low_watermark")
    interval = r.duration(m, "overload", "memory_check_interval", 1.0)
    if not 0.01 <= interval <= 3600:
        raise r.error("must be between 10ms and 1h", "overload.memory_check_interval")
    return OverloadConfig(maxConnections=r.integer(m, "overload", "max_connections", 0, 0),
                          memoryHighWatermark=high,
                          memoryLowWatermark=low if low is not None else high * 9 // 10,
                          memoryCheckInterval=interval)


def _buildNode(r, raw):
    """The ``node`` block: ``id`` (default: the host name) and ``cluster``."""
    m = r.mapping(raw.get("node"), "node", optional=("id", "cluster", "metadata"))
    default = NodeConfig()
    nodeId = r.get(m, "node", "id", str, default.id)
    if not nodeId or not nodeId.isprintable() or not nodeId.isascii():
        raise r.error("must be printable ASCII, not empty", "node.id")
    metadata = r.get(m, "node", "metadata", dict, {})
    _checkJSON(r, metadata, "node.metadata")
    return NodeConfig(id=nodeId, cluster=r.get(m, "node", "cluster", str, ""), metadata=metadata)


def _checkJSON(r, value, path):
    """``value`` holds only what JSON (and a protobuf Struct) can: mappings with string keys, lists, scalars."""
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise r.error("keys must be strings, not %r" % (key,), path)
            _checkJSON(r, item, joinPath(path, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _checkJSON(r, item, "%s[%d]" % (path, i))
    elif value is not None and not isinstance(value, (str, int, float, bool)):
        raise r.error("must be a string, number, boolean, list or mapping, not %s" % (type(value).__name__,), path)


def _buildForwarding(r, m, path):
    """traffic_direction, and the ForwardingConfig its defaults and the listener's own keys give."""
    direction = r.get(m, path, "traffic_direction", str, "unspecified")
    if direction not in _DIRECTION_DEFAULTS:
        raise r.error("must be inbound, outbound or unspecified, not '%s'" % (direction,),
                      joinPath(path, "traffic_direction"))
    useRemote, hops = _DIRECTION_DEFAULTS[direction]
    iPath = joinPath(path, "internal_address_config")
    im = r.mapping(m.get("internal_address_config"), iPath, optional=("cidr_ranges",))
    ranges = DEFAULT_INTERNAL_RANGES
    if im.get("cidr_ranges") is not None:
        ranges = []
        for i, cidr in enumerate(r.list(im, iPath, "cidr_ranges")):
            where = "%s.cidr_ranges[%d]" % (iPath, i)
            try:
                ranges.append(ipaddress.ip_network(r.check(cidr, where, str)))
            except ValueError as e:
                raise r.error("not a CIDR range: %s" % (e,), where) from e
        ranges = tuple(ranges)
    return direction, ForwardingConfig(
        useRemoteAddress=r.get(m, path, "use_remote_address", bool, useRemote),
        trustedHops=r.integer(m, path, "xff_num_trusted_hops", hops, 0, 16),
        internalRanges=ranges)


def _pluginPaths(r, raw):
    """Resolve plugin_paths (relative to the config file) and add them, once each, to txmesh.plugins.__path__."""
    base = os.path.dirname(os.path.abspath(r.filename)) if not r.filename.startswith("<") else os.getcwd()
    paths = []
    for i, p in enumerate(r.list(raw, "", "plugin_paths")):
        where = "plugin_paths[%d]" % (i,)
        p = os.path.normpath(os.path.join(base, r.check(p, where, str)))
        if not os.path.isdir(p):
            raise r.error("not a directory: %s" % (p,), where)
        paths.append(p)
    searched = txmesh.plugins.__path__
    for p in paths:
        if p not in searched:
            searched.append(p)
    return tuple(paths)


def _plugins(interface):
    """{name: provider} of the plugins of ``interface``; the first found wins, so built-ins take precedence."""
    found = {}
    for plugin in getPlugins(interface, txmesh.plugins):
        found.setdefault(plugin.name, plugin)
    return found


def _checkUnique(r, names, what, key):
    seen = {}
    for name, path in names:
        if name in seen:
            raise r.error("duplicate %s '%s' (also %s)" % (what, name, seen[name]), joinPath(path, key))
        seen[name] = path


def _addressKey(address):
    """A normalised form of an endpoint string, to find two listeners on one address."""
    kind, args, kwargs = parseServerEndpoint(address)
    if kind in ("tcp", "tcp6"):
        return ("tcp", int(args[0]), kwargs.get("interface", ""))
    if kind == "unix":
        return ("unix", os.path.abspath(args[0]), None)
    return ("other", address, None)


def _conflicts(a, b):
    if a[0] != b[0]:
        return False
    if a[0] != "tcp":
        return a == b
    return a[1] == b[1] != 0 and (a[2] == b[2] or a[2] in _WILDCARD_INTERFACES or b[2] in _WILDCARD_INTERFACES)


def _checkAddresses(r, admin, listeners):
    taken = [(_addressKey(admin.address), "admin.address", admin.address)]
    for i, listener in enumerate(listeners):
        if listener.address == INTERNAL:
            continue  # not bound: reached through an auto listener
        key = _addressKey(listener.address)
        path = "listeners[%d].address" % (i,)
        for otherKey, otherPath, otherAddress in taken:
            if _conflicts(key, otherKey):
                raise r.error("address '%s' conflicts with %s ('%s')" % (listener.address, otherPath, otherAddress),
                              path)
        taken.append((key, path, listener.address))


def _protocol(r, m, path, protocols, default, role):
    """
    The IProtocol named by ``protocol`` (a canonical name or an older spelling); ``role`` is "listens" or
    "upstream", what the protocol must be able to do here.
    """
    name = r.get(m, path, "protocol", str, default)
    descriptor = protocols.get(name)
    usable = sorted({p.name for p in protocols.values() if getattr(p, role)})
    if descriptor is None or not getattr(descriptor, role):
        what = "listener" if role == "listens" else "cluster"
        if role == "listens":
            usable = sorted(usable + [AUTO])
        raise r.error("unknown %s protocol '%s' (known: %s)" % (what, name, ", ".join(usable)),
                      joinPath(path, "protocol"))
    return descriptor


def _buildCluster(r, m, path, lbFactories, protocols, registries=None):
    r.mapping(m, path, required=("name",), optional=(
        "protocol", "lb_policy", "connect_timeout", "idle_timeout", "max_connections", "max_pending_requests",
        "max_requests_per_connection", "endpoints", "connections_per_host", "max_concurrent_streams",
        "heartbeat_interval", "health_checks", "outlier_detection", "common_lb_config", "circuit_breakers",
        "lb_config", "discovery", "tls"))
    descriptor = _protocol(r, m, path, protocols, "http1", "upstream")
    protocol = descriptor.name
    lbPolicy = r.get(m, path, "lb_policy", str, "round_robin")
    if lbPolicy not in lbFactories:
        raise r.error("unknown lb_policy '%s' (known: %s)" % (lbPolicy, ", ".join(sorted(lbFactories))),
                      joinPath(path, "lb_policy"))
    endpoints = buildEndpoints(r, r.list(m, path, "endpoints"), joinPath(path, "endpoints"))
    return ClusterConfig(
        name=r.name(m, path), protocol=protocol, lbPolicy=lbPolicy, lbFactory=lbFactories[lbPolicy],
        connectTimeout=r.duration(m, path, "connect_timeout", 1.0),
        idleTimeout=r.duration(m, path, "idle_timeout", 60.0),
        maxConnections=r.integer(m, path, "max_connections", 1024, 1),
        maxPendingRequests=r.integer(m, path, "max_pending_requests", 1024, 0),
        maxRequestsPerConnection=r.integer(m, path, "max_requests_per_connection", 0, 0),
        endpoints=endpoints,
        connectionsPerHost=r.integer(m, path, "connections_per_host", 1, 1, 64),
        maxConcurrentStreams=r.integer(m, path, "max_concurrent_streams", 0, 0),
        heartbeatInterval=r.duration(m, path, "heartbeat_interval", 30.0 if protocol == "dubbo" else 0.0),
        healthChecks=_buildHealthChecks(r, m, path, protocol),
        outlierDetection=_buildOutlierDetection(r, m, path),
        commonLbConfig=_buildCommonLbConfig(r, m, path),
        circuitBreakers=_buildCircuitBreakers(r, m, path),
        lbConfig=_buildLbConfig(r, m, path, lbPolicy),
        discovery=_buildClusterDiscovery(r, m, path, protocol, registries or {}),
        tls=buildUpstreamTLS(r, m, path, protocol),
        descriptor=descriptor)


def buildEndpoints(r, items, listPath):
    """
    A list of endpoints (``{address, weight, priority, locality, metadata}``) as a tuple of EndpointConfig: a
    cluster's ``endpoints``, the static discovery source's, a watched endpoints file's; errors name
    ``listPath[i].key``.
    """
    endpoints = []
    seen = {}
    for i, e in enumerate(items):
        ePath = "%s[%d]" % (listPath, i)
        r.mapping(e, ePath, required=("address",), optional=("weight", "priority", "locality", "metadata", "healthy"))
        host, port = hostPort(r, r.get(e, ePath, "address", str), joinPath(ePath, "address"))
        if (host, port) in seen:
            raise r.error("duplicate endpoint '%s' (also %s)" % (e["address"], seen[(host, port)]),
                          joinPath(ePath, "address"))
        seen[(host, port)] = ePath
        endpoints.append(EndpointConfig(host, port, r.integer(e, ePath, "weight", 1, 1, 128),
                                        r.integer(e, ePath, "priority", 0, 0, 127),
                                        r.get(e, ePath, "locality", str, ""), _endpointMetadata(r, e, ePath),
                                        r.get(e, ePath, "healthy", bool, True)))
    return tuple(endpoints)


def _buildClusterDiscovery(r, m, path, protocol, registries):
    """``discovery`` (txmesh.discovery_config): a cluster has either fixed ``endpoints`` or a ``discovery``."""
    if m.get("discovery") is not None and m.get("endpoints"):
        raise r.error("a cluster has either 'endpoints' or 'discovery', not both", joinPath(path, "discovery"))
    return buildDiscovery(r, m, path, m.get("name"), protocol, registries)


def _endpointMetadata(r, e, ePath):
    raw = e.get("metadata")
    if raw is None:
        return ()
    mPath = joinPath(ePath, "metadata")
    if not isinstance(raw, dict):
        raise r.error("must be a mapping of names to strings", mPath)
    out = []
    for key, value in raw.items():
        if not isinstance(key, str) or not isinstance(value, (str, int, float, bool)):
            raise r.error("metadata keys are names and values strings", joinPath(mPath, str(key)))
        out.append((key, str(value)))
    return tuple(sorted(out))


# the health check a cluster gets when its ``health_checks`` entry names no ``type``
DEFAULT_HEALTH_CHECK_TYPE = {"http1": "http", "http2": "tcp", "grpc": "grpc", "dubbo": "dubbo"}
_HEALTH_CHECK_KEYS = ("type", "interval", "timeout", "interval_jitter", "interval_jitter_percent", "initial_jitter",
                      "unhealthy_threshold", "healthy_threshold", "unhealthy_interval", "no_traffic_interval")


@dataclass(frozen=True, slots=True)
class HealthCheckConfig:
    """
    One cluster's active health check (``health_checks[0]``): the scheduler's keys, in seconds, and the checker's
    own config built by its IHealthCheckerFactory (``factory``).  See docs/configuration.md.
    """

    type: str
    factory: object = field(compare=False, repr=False)
    checkerConfig: object = None
    interval: float = 5.0
    timeout: float = 1.0
    intervalJitter: float = 0.0
    intervalJitterPercent: int = 0
    initialJitter: float = 0.0
    unhealthyThreshold: int = 2
    healthyThreshold: int = 2
    unhealthyInterval: float = 5.0  # the loader defaults it to ``interval``
    noTrafficInterval: float = 0.0  # 0: hosts without traffic are checked every ``interval`` too


@dataclass(frozen=True, slots=True)
class HealthCheckConfigContext:
    """What an IHealthCheckerFactory.buildConfig may know about where its keys sit, and how to report errors."""

    filename: str
    keyPath: str
    clusterName: str
    clusterProtocol: str
    lineOf: object

    error = FilterConfigContext.error  # ConfigError for keyPath + subpath, with its line


def _buildHealthChecks(r, m, path, protocol):
    """
    ``health_checks``: a list of at most one entry (as Envoy, which refuses more), whose ``type`` names an
    IHealthCheckerFactory plugin (default by the cluster's protocol, DEFAULT_HEALTH_CHECK_TYPE); the plugin builds
    its own keys.
    """
    entries = r.list(m, path, "health_checks")
    if not entries:
        return ()
    listPath = joinPath(path, "health_checks")
    if len(entries) > 1:
        raise r.error("one health check per cluster (as Envoy), got %d" % (len(entries),), listPath + "[1]")
    return (buildHealthCheck(r, entries[0], listPath + "[0]", m.get("name", ""), protocol),)


def buildHealthCheck(r, h, hPath, name, protocol, extraKeys=()):
    """
    One health check entry at ``hPath``: the scheduler's keys and its IHealthCheckerFactory plugin's own (a
    cluster's ``health_checks[0]``; the local app's ``registration.health_check``, which adds ``extraKeys``, left
    for its caller).  @return: a HealthCheckConfig.
    """
    h = r.check(h, hPath, dict)
    factories = _plugins(IHealthCheckerFactory)
    kind = r.get(h, hPath, "type", str, DEFAULT_HEALTH_CHECK_TYPE.get(protocol, "tcp"))
    factory = factories.get(kind)
    if factory is None:
        raise r.error("unknown health check type '%s' (known: %s)" % (kind, ", ".join(sorted(factories))),
                      joinPath(hPath, "type"))
    if factory.protocols is not None and protocol not in factory.protocols:
        raise r.error("health check '%s' does not check %s clusters (only %s)" % (
            kind, protocol, ", ".join(sorted(factory.protocols))), joinPath(hPath, "type"))
    r.mapping(h, hPath, optional=_HEALTH_CHECK_KEYS + tuple(factory.keys) + tuple(extraKeys))

    def positive(key, default):
        value = r.duration(h, hPath, key, default)
        if value <= 0:
            raise r.error("must be more than 0", joinPath(hPath, key))
        return value

    interval = positive("interval", 5.0)
    context = HealthCheckConfigContext(r.filename, hPath, name, protocol, r.lineOf)
    checkerConfig = buildPluginConfig(factory, {k: v for k, v in h.items() if k in factory.keys}, context)
    return HealthCheckConfig(
        type=kind, factory=factory, checkerConfig=checkerConfig, interval=interval,
        timeout=positive("timeout", 1.0),
        intervalJitter=r.duration(h, hPath, "interval_jitter", 0.0),
        intervalJitterPercent=r.integer(h, hPath, "interval_jitter_percent", 0, 0, 100),
        initialJitter=r.duration(h, hPath, "initial_jitter", 0.0),
        unhealthyThreshold=r.integer(h, hPath, "unhealthy_threshold", 2, 1, 1000),
        healthyThreshold=r.integer(h, hPath, "healthy_threshold", 2, 1, 1000),
        unhealthyInterval=positive("unhealthy_interval", interval),
        noTrafficInterval=r.duration(h, hPath, "no_traffic_interval", 0.0))


_OUTLIER_PERCENTS = (
    ("max_ejection_percent", "maxEjectionPercent"),
    ("enforcing_consecutive_5xx", "enforcingConsecutive5xx"),
    ("enforcing_consecutive_gateway_failure", "enforcingConsecutiveGatewayFailure"),
    ("enforcing_consecutive_local_origin_failure", "enforcingConsecutiveLocalOriginFailure"),
    ("enforcing_success_rate", "enforcingSuccessRate"),
    ("enforcing_local_origin_success_rate", "enforcingLocalOriginSuccessRate"),
    ("failure_percentage_threshold", "failurePercentageThreshold"),
    ("enforcing_failure_percentage", "enforcingFailurePercentage"),
    ("enforcing_failure_percentage_local_origin", "enforcingFailurePercentageLocalOrigin"),
)
_OUTLIER_COUNTS = (
    ("consecutive_5xx", "consecutive5xx"),
    ("consecutive_gateway_failure", "consecutiveGatewayFailure"),
    ("consecutive_local_origin_failure", "consecutiveLocalOriginFailure"),
    ("success_rate_minimum_hosts", "successRateMinimumHosts"),
    ("success_rate_request_volume", "successRateRequestVolume"),
    ("success_rate_stdev_factor", "successRateStdevFactor"),
    ("failure_percentage_minimum_hosts", "failurePercentageMinimumHosts"),
    ("failure_percentage_request_volume", "failurePercentageRequestVolume"),
)
_OUTLIER_BOOLS = (
    ("split_external_local_origin_errors", "splitExternalLocalOriginErrors"),
    ("always_eject_one_host", "alwaysEjectOneHost"),
)


def _buildOutlierDetection(r, m, path):
    """``outlier_detection`` (issue 11 part 2): None when absent; ``{}`` turns it on with Envoy's defaults."""
    if m.get("outlier_detection") is None:
        return None
    path = joinPath(path, "outlier_detection")
    od = r.mapping(m["outlier_detection"], path, optional=tuple(k for k, _ in _OUTLIER_PERCENTS + _OUTLIER_COUNTS
                                                                  + _OUTLIER_BOOLS) + (
        "interval", "base_ejection_time", "max_ejection_time", "max_ejection_time_jitter"))
    defaults = OutlierDetectionConfig()
    values = {}
    for key, name in _OUTLIER_PERCENTS:
        values[name] = r.integer(od, path, key, getattr(defaults, name), 0, 100)
    for key, name in _OUTLIER_COUNTS:
        values[name] = r.integer(od, path, key, getattr(defaults, name), 0)
    for key, name in _OUTLIER_BOOLS:
        values[name] = r.get(od, path, key, bool, getattr(defaults, name))
    values["interval"] = r.duration(od, path, "interval", defaults.interval)
    if values["interval"] <= 0:
        raise r.error("must be a duration > 0", joinPath(path, "interval"))
    base = values["baseEjectionTime"] = r.duration(od, path, "base_ejection_time", defaults.baseEjectionTime)
    # Envoy: max_ejection_time defaults to 300s or base_ejection_time, whichever is larger
    values["maxEjectionTime"] = r.duration(od, path, "max_ejection_time", max(defaults.maxEjectionTime, base))
    if values["maxEjectionTime"] < base:
        raise r.error("must be >= base_ejection_time (%gs)" % (base,), joinPath(path, "max_ejection_time"))
    values["maxEjectionTimeJitter"] = r.duration(od, path, "max_ejection_time_jitter", 0.0)
    return OutlierDetectionConfig(**values)


def _buildCommonLbConfig(r, m, path):
    """``common_lb_config`` (issue 11 part 3): None when absent (the defaults apply)."""
    if m.get("common_lb_config") is None:
        return None
    path = joinPath(path, "common_lb_config")
    c = r.mapping(m["common_lb_config"], path, optional=("healthy_panic_threshold", "overprovisioning_factor"))
    return CommonLbConfig(
        healthyPanicThreshold=r.number(c, path, "healthy_panic_threshold", 50.0, 0.0, 100.0),
        overprovisioningFactor=r.integer(c, path, "overprovisioning_factor", 140, 1))


@dataclass(frozen=True, slots=True)
class CircuitBreakersConfig:
    """A cluster's ``circuit_breakers``: cluster-wide limits (Envoy's default-priority thresholds and defaults)."""

    maxConnections: int = 1024
    maxPendingRequests: int = 1024
    maxRequests: int = 1024
    maxRetries: int = 3


def _buildCircuitBreakers(r, m, path):
    """``circuit_breakers`` (issue 11 part 4): the cluster-wide limits, or None (Envoy's defaults) when absent."""
    raw = m.get("circuit_breakers")
    if raw is None:
        return None
    cPath = joinPath(path, "circuit_breakers")
    r.mapping(raw, cPath, optional=("max_connections", "max_pending_requests", "max_requests", "max_retries"))
    return CircuitBreakersConfig(
        maxConnections=r.integer(raw, cPath, "max_connections", 1024, 1),
        maxPendingRequests=r.integer(raw, cPath, "max_pending_requests", 1024, 0),
        maxRequests=r.integer(raw, cPath, "max_requests", 1024, 1),
        maxRetries=r.integer(raw, cPath, "max_retries", 3, 0))


# lb_config keys each built-in policy takes (a third-party policy takes none)
_LB_CONFIG_KEYS = {
    "ring_hash": ("minimum_ring_size", "maximum_ring_size"),
    "maglev": ("table_size",),
    "least_request": ("choice_count", "active_request_bias", "slow_start"),
    "peak_ewma": ("choice_count", "decay_time", "default_rtt"),
    "round_robin": ("slow_start",),
    "weighted_round_robin": ("slow_start",),
    "random": (),
}
MAX_RING_SIZE = 8 * 1024 * 1024


def _buildLbConfig(r, m, path, lbPolicy):
    """``lb_config``: the lb_policy's options (LbConfig), or None when absent."""
    raw = m.get("lb_config")
    if raw is None:
        return None
    lPath = joinPath(path, "lb_config")
    keys = _LB_CONFIG_KEYS.get(lbPolicy, ())
    r.check(raw, lPath, dict)
    for key in raw:
        if key not in keys:
            raise r.error("not an option of lb_policy %s (its options: %s)" % (lbPolicy, ", ".join(keys) or "none"),
                          joinPath(lPath, str(key)))
    minRing = r.integer(raw, lPath, "minimum_ring_size", 1024, 1, MAX_RING_SIZE)
    maxRing = r.integer(raw, lPath, "maximum_ring_size", MAX_RING_SIZE, 1, MAX_RING_SIZE)
    if minRing > maxRing:
        raise r.error("minimum_ring_size %d is above maximum_ring_size %d" % (minRing, maxRing),
                      joinPath(lPath, "minimum_ring_size"))
    tableSize = r.integer(raw, lPath, "table_size", 65537, 2, 5000011)
    if not _isPrime(tableSize):
        raise r.error("must be a prime (e.g. 65537, 5000011), got %d" % (tableSize,), joinPath(lPath, "table_size"))
    decayTime = r.duration(raw, lPath, "decay_time", 10.0)
    if decayTime <= 0:
        raise r.error("must be above 0", joinPath(lPath, "decay_time"))
    defaultRtt = r.duration(raw, lPath, "default_rtt", 0.03)
    slowStart = None
    if raw.get("slow_start") is not None:
        sPath = joinPath(lPath, "slow_start")
        sm = r.mapping(raw["slow_start"], sPath, required=("window",), optional=("aggression", "min_weight_percent"))
        window = r.duration(sm, sPath, "window", 0.0)
        if window <= 0:
            raise r.error("must be above 0", joinPath(sPath, "window"))
        aggression = r.number(sm, sPath, "aggression", 1.0, 0.0, 1000.0)
        if aggression <= 0:
            raise r.error("must be above 0", joinPath(sPath, "aggression"))
        slowStart = SlowStartConfig(window, aggression, r.number(sm, sPath, "min_weight_percent", 10.0, 0.0, 100.0))
    return LbConfig(
        minimumRingSize=minRing, maximumRingSize=maxRing, tableSize=tableSize,
        choiceCount=r.integer(raw, lPath, "choice_count", 2, 2, 100),
        activeRequestBias=r.number(raw, lPath, "active_request_bias", 1.0, 0.0, 100.0),
        decayTime=decayTime, defaultRtt=defaultRtt, slowStart=slowStart)


def _isPrime(n):
    if n < 2:
        return False
    for d in range(2, math.isqrt(n) + 1):
        if n % d == 0:
            return False
    return True


def _buildListener(r, m, path, clusterNames, filterFactories, protocols):
    if isinstance(m, dict) and m.get("protocol") == AUTO:
        return _buildAutoListener(r, m, path)
    r.mapping(m, path, required=("name", "address"), optional=(
        "protocol", "default_cluster", "traffic_direction", "use_remote_address", "xff_num_trusted_hops",
        "internal_address_config", "limits", "http2", "network_filters", "filters", "route_config",
        "respect_expected_rq_timeout", "upgrade_configs", "connection_balance", *PATH_KEYS, *TLS_KEYS))
    name = r.name(m, path)
    descriptor = _protocol(r, m, path, protocols, "http1", "listens")
    protocol = descriptor.name
    refuseSSLEndpoint(r, m, path)
    address = INTERNAL if m.get("address") == INTERNAL else endpointString(r, m, path)
    defaultCluster = r.get(m, path, "default_cluster", str, None)
    if defaultCluster is not None and defaultCluster not in clusterNames:
        raise r.error(_unknownCluster(defaultCluster, clusterNames), joinPath(path, "default_cluster"))
    lPath = joinPath(path, "limits")
    lm = r.mapping(m.get("limits"), lPath, optional=(
        "max_request_line", "max_header_bytes", "max_headers", "max_request_body", "request_headers_timeout",
        "idle_timeout", "buffer_limit", "stream_idle_timeout", "max_connections", "write_timeout",
        "drain_grace"))
    limits = ListenerLimits(
        maxRequestLine=r.integer(lm, lPath, "max_request_line", 8192, 1),
        maxHeaderBytes=r.integer(lm, lPath, "max_header_bytes", 65536, 1),
        maxHeaders=r.integer(lm, lPath, "max_headers", 100, 1),
        maxRequestBody=r.integer(lm, lPath, "max_request_body", 0, 0),
        requestHeadersTimeout=r.duration(lm, lPath, "request_headers_timeout", 10.0),
        idleTimeout=r.duration(lm, lPath, "idle_timeout", 300.0),
        bufferLimit=r.integer(lm, lPath, "buffer_limit", 1048576, 1),
        streamIdleTimeout=r.duration(lm, lPath, "stream_idle_timeout", 300.0),
        maxConnections=r.integer(lm, lPath, "max_connections", 0, 0),
        writeTimeout=r.duration(lm, lPath, "write_timeout", 300.0),
        drainGrace=r.duration(lm, lPath, "drain_grace", 1.0))
    http2 = _buildHttp2(r, m, path, protocol)
    chain = _FilterChainBuilder(r, path, descriptor, clusterNames, filterFactories)
    networkFilters = chain.build("network_filters", m, "network")
    filters = chain.build("filters", m, "stream")
    # gRPC routes default to no route timeout: streams live on grpc-timeout and stream_idle_timeout (Envoy's advice)
    if m.get("upgrade_configs") is not None and protocol not in UPGRADE_LISTENER_PROTOCOLS:
        raise r.error("only http1 and http2 listeners tunnel upgrades (this one is '%s')" % (protocol,),
                      joinPath(path, "upgrade_configs"))
    routeConfig = buildRouteConfig(r, m.get("route_config"), joinPath(path, "route_config"), clusterNames,
                                   defaultCluster, 0.0 if protocol == "grpc" else 15.0,
                                   buildUpgradeConfigs(r, m, path))
    direction, forwarding = _buildForwarding(r, m, path)
    pathNormalization = buildPathNormalization(r, m, path, descriptor)
    return ListenerConfig(name=name, protocol=protocol, address=address,
                          useRemoteAddress=forwarding.useRemoteAddress,
                          defaultCluster=defaultCluster, limits=limits, networkFilters=networkFilters,
                          filters=filters, routeConfig=routeConfig, http2=http2, descriptor=descriptor,
                          trafficDirection=direction, forwarding=forwarding,
                          respectExpectedTimeout=r.get(m, path, "respect_expected_rq_timeout", bool, True),
                          pathNormalization=pathNormalization,
                          tls=buildServerTLS(r, m, path, protocol),
                          forwardClientCert=buildForwardClientCert(r, m, path, descriptor.filterFamily),
                          connectionBalance=_connectionBalance(r, m, path, address))


CONNECTION_BALANCE = ("kernel", "exact", "reuse_port")


def _connectionBalance(r, m, path, address):
    """
    ``connection_balance``: ``kernel`` (the default), ``exact`` (Envoy's exact_balance) or ``reuse_port`` (a
    ``SO_REUSEPORT`` socket per worker, Envoy's enable_reuse_port: txmesh/reuse_port.py), for ``workers: N``.
    """
    value = r.get(m, path, "connection_balance", str, "kernel")
    if value not in CONNECTION_BALANCE:
        raise r.error("must be kernel, exact or reuse_port, not %r" % (value,), joinPath(path, "connection_balance"))
    if value != "kernel" and address == INTERNAL:
        raise r.error("an internal listener accepts no connections to balance", joinPath(path, "connection_balance"))
    if value == "reuse_port" and parseServerEndpoint(address)[0] not in REUSE_PORT_KINDS:
        raise r.error("reuse_port binds a socket per worker: the address must be %s: (systemd's and UNIX sockets are "
                      "one socket each)" % (": or ".join(REUSE_PORT_KINDS),), joinPath(path, "connection_balance"))
    return value


def _buildAutoListener(r, m, path):
    """A ``protocol: auto`` listener: detection hands its connections to the listeners its ``detect`` map names."""
    name = r.name(m, path)
    if m.get("address") == INTERNAL:
        raise r.error("an auto listener must listen on an address of its own", joinPath(path, "address"))
    address = endpointString(r, m, path)
    detect, maxConnections = buildDetect(r, m, path)
    return ListenerConfig(name=name, protocol=AUTO, address=address, useRemoteAddress=True, defaultCluster=None,
                          limits=ListenerLimits(maxConnections=maxConnections), networkFilters=(), filters=(),
                          routeConfig=RouteConfig(), descriptor=AUTO_DESCRIPTOR, detect=detect,
                          tls=buildServerTLS(r, m, path, AUTO))


_MAX_STREAMS = 2 ** 31 - 1  # the largest SETTINGS_MAX_CONCURRENT_STREAMS


def _buildHttp2(r, m, path, protocol):
    """The H2Limits of an http2/grpc listener from its ``http2`` block; None for other protocols."""
    hPath = joinPath(path, "http2")
    if protocol not in H2_PROTOCOLS:
        if m.get("http2") is not None:
            raise r.error("only listeners of protocol %s take an http2 block (this one is '%s')" % (
                " or ".join(sorted(H2_PROTOCOLS)), protocol), hPath)
        return None
    h = r.mapping(m.get("http2"), hPath, optional=(
        "max_concurrent_streams", "max_header_list_size", "max_outbound_control_frames",
        "max_consecutive_inbound_frames_with_empty_payload", "max_inbound_priority_frames_per_stream",
        "max_inbound_control_frames_per_second",
        "max_inbound_window_update_frames_per_data_frame_sent", "max_premature_resets", "premature_reset_ratio",
        "max_message_size"))
    d = H2Limits()
    if protocol != "grpc" and h.get("max_message_size") is not None:
        raise r.error("max_message_size bounds gRPC messages: only for protocol grpc", joinPath(hPath,
                                                                                              "max_message_size"))
    return H2Limits(
        maxConcurrentStreams=r.integer(h, hPath, "max_concurrent_streams", d.maxConcurrentStreams, 1, _MAX_STREAMS),
        maxPrematureResets=r.integer(h, hPath, "max_premature_resets", d.maxPrematureResets, 1),
        prematureResetRatio=r.number(h, hPath, "premature_reset_ratio", d.prematureResetRatio, 0.0, 1.0),
        maxPendingControlFrames=r.integer(h, hPath, "max_outbound_control_frames", d.maxPendingControlFrames, 1),
        maxInboundControlFramesPerSecond=r.integer(h, hPath, "max_inbound_control_frames_per_second",
                                                   d.maxInboundControlFramesPerSecond, 1),
        maxInboundPriorityPerStream=r.integer(h, hPath, "max_inbound_priority_frames_per_stream",
                                              d.maxInboundPriorityPerStream, 0),
        maxInboundWindowUpdatePerData=r.integer(h, hPath, "max_inbound_window_update_frames_per_data_frame_sent",
                                                d.maxInboundWindowUpdatePerData, 1),
        maxConsecutiveEmptyData=r.integer(h, hPath, "max_consecutive_inbound_frames_with_empty_payload",
                                          d.maxConsecutiveEmptyData, 0),
        maxHeaderListSize=r.integer(h, hPath, "max_header_list_size", d.maxHeaderListSize, 1024, 8 << 20),
        maxMessageSize=r.integer(h, hPath, "max_message_size", d.maxMessageSize, 0, 2 ** 32 - 1))


def _unknownCluster(name, clusterNames):
    return "unknown cluster '%s' (known: %s)" % (name, ", ".join(sorted(clusterNames)) or "none")


class _FilterChainBuilder:
    """Looks filters up by name, checks kind and protocol fit and the terminal router, and builds their configs."""

    def __init__(self, reader, listenerPath, descriptor, clusterNames, factories):
        self.r = reader
        self.listenerPath = listenerPath
        self.protocol = descriptor.name
        self.family = descriptor.filterFamily
        self.clusterNames = clusterNames
        self.factories = factories

    def build(self, key, m, kind):
        r = self.r
        chainPath = joinPath(self.listenerPath, key)
        entries = []
        items = r.list(m, self.listenerPath, key)
        for i, item in enumerate(items):
            path = "%s[%d]" % (chainPath, i)
            r.mapping(item, path, required=("name",), optional=("config",))
            name = r.get(item, path, "name", str)
            factory = self._lookup(name, joinPath(path, "name"), kind)
            if kind == "stream" and factory.terminal and i != len(items) - 1:
                raise r.error("terminal filter '%s' must be the last filter" % (name,), joinPath(path, "name"))
            entries.append(FilterEntry(name, factory, self._buildConfig(factory, item.get("config"), path),
                                       item.get("config")))
        if kind == "stream" and not (entries and entries[-1].factory.terminal):
            router = self.factories.get("router")
            if router is None:
                raise r.error("no 'router' filter plugin found to end the filter chain", chainPath)
            entries.append(FilterEntry("router", router, self._buildConfig(router, None, "%s[%d]" % (
                chainPath, len(entries)))))
        return tuple(entries)

    def _lookup(self, name, path, kind):
        factory = self.factories.get(name)
        if factory is None:
            raise self.r.error("unknown filter '%s' (known: %s)" % (name, ", ".join(sorted(self.factories))), path)
        if factory.kind != kind:
            where = "network_filters" if factory.kind == "network" else "filters"
            raise self.r.error("'%s' is a %s filter; list it under %s" % (name, factory.kind, where), path)
        if self.family not in factory.protocols:
            raise self.r.error("filter '%s' does not support protocol '%s' (supports: %s)" % (
                name, self.protocol, ", ".join(sorted(factory.protocols))), path)
        return factory

    def _buildConfig(self, factory, raw, path):
        configPath = joinPath(path, "config")
        if raw is None:
            raw = {}
        self.r.check(raw, configPath, dict)
        context = FilterConfigContext(self.r.filename, configPath, self.protocol, self.clusterNames, self.r.lineOf)
        return buildPluginConfig(factory, raw, context)
