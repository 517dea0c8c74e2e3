"""
ZooKeeper discovery in Dubbo 2's registry layout (issue 12, part 1): a cluster's hosts are the providers of one
interface, watched under ``{root}/{interface}/providers`` through the registry's shared IZooKeeperSession (kazoo;
never touched here), with the operator's overrides of ``{root}/{interface}/configurators`` applied.

Each provider is a child node whose name is its percent-encoded Dubbo URL (txmesh.protocols.dubbo.url); a node is
a host when, as Dubbo 2.7's ``UrlUtils.isMatch`` decides for a consumer:

- its protocol is the configured one (``dubbo``; ``rest://``, ``hessian://`` ... are ignored), its ``interface``
  (else its path, else none) is the watched one and its ``category`` (if any) is ``providers``;
- its group and version match the consumer's: ``*`` matches anything, a consumer group may list several
  (``a,b``), and an empty (absent) group or version matches only providers without one (Dubbo reads an empty
  parameter as absent, and ``default.group``/``default.version`` when the plain key is absent);
- after the overrides, it is not ``enabled=false`` nor ``disabled=true``.

Its weight is Dubbo's ``weight`` (default 100).  Dubbo sends a provider of weight 0 traffic only when every provider
weighs 0: such a provider becomes a host of priority 1 (weight 1), which txmesh's priority levels use only when no
host of priority 0 is left.  A node that is not a URL, or has no port or a non-numeric weight, is skipped and
counted; the rest of the set is still delivered.

Overrides (``override://`` and ``absent://`` URLs, Dubbo 2.7's ``AbstractConfigurator``, the pre-2.7 "deprecated"
form Dubbo admin writes, and the 2.7 ``configVersion`` form): ``empty://`` clears them; an override with only
``anyhost`` is none; one with ``enabled=false`` is off; its group/version must match the consumer's as providers'
do.  It applies to every provider when its host is ``0.0.0.0`` and its port 0, to the provider at ``host:port``
when it names a port (host ``0.0.0.0`` for any host on that port); ``providers=`` limits it to those addresses;
``application`` (or the URL's user) limits it to that provider application; ``~key=value`` and ``side`` are further
conditions.  The other parameters are set on the provider's URL (``absent://``: only those it lacks), in Dubbo's
order (by host, then ``priority``, later wins).  Not done: Dubbo 2.7's config-center rules (YAML under
``/dubbo/config``), tag and condition routers (``routers/``), a provider's ``warmup``.
"""

from dataclasses import dataclass, field
from urllib.parse import unquote

from twisted.logger import Logger
from zope.interface import implementer

from txmesh.config import EndpointConfig
from txmesh.interfaces import IDiscoverySource, IDiscoverySourceFactory
from txmesh.protocols.dubbo.url import DubboURLError, decode

DEFAULT_WEIGHT = 100  # Dubbo's Constants.DEFAULT_WEIGHT
ANY = "*"
ANYHOST = "0.0.0.0"
# provider URL parameters kept as host metadata (shown in /clusters); ``token`` and the like are not
METADATA_KEYS = ("application", "appName", "version", "group", "methods", "side", "dubbo", "release", "timestamp",
                 "startTime", "pid", "revision", "serialization", "dynamic", "anyhost", "deprecated", "language",
                 "interface", "weight")
# the parameters of an override that are conditions, never copied onto a provider (AbstractConfigurator)
_CONDITION_KEYS = frozenset(("category", "check", "dynamic", "enabled", "group", "version", "application", "side",
                             "configVersion", "compatible_config", "interfaces", "anyhost", "providers", "priority"))
_MAX_LOGGED = 256  # malformed node names remembered, so each is logged once


def param(parameters, key):
    """Dubbo's ``URL.getParameter``: an empty value reads as absent, then ``default.<key>`` is tried; None if none."""
    value = parameters.get(key)
    if not value:
        value = parameters.get("default." + key)
    return value or None


def groupMatches(wanted, offered):
    """Dubbo's group match: ``*``, equal (absent = absent), or one of a comma-separated consumer list."""
    if wanted == ANY or wanted == offered:
        return True
    return wanted is not None and offered is not None and offered in (g.strip() for g in wanted.split(","))


def versionMatches(wanted, offered):
    return wanted == ANY or wanted == offered


@dataclass(frozen=True, slots=True)
class ZooKeeperSourceConfig:
    """``discovery`` of ``type: zookeeper``: the consumer side of one Dubbo interface."""

    interface: str
    group: str = ""  # "" = providers without a group; "*" = any; "a,b" = any of those
    version: str = ""  # "" = providers without a version; "*" = any
    protocol: str = "dubbo"
    configurators: bool = True
    root: str = "/dubbo"

    @property
    def providersPath(self):
        return "%s/%s/providers" % (self.root.rstrip("/"), self.interface)

    @property
    def configuratorsPath(self):
        return "%s/%s/configurators" % (self.root.rstrip("/"), self.interface)

    def wants(self, parameters):
        """Whether a provider's (or an override's) group and version match this consumer's."""
        return (groupMatches(self.group or None, param(parameters, "group"))
                and versionMatches(self.version or None, param(parameters, "version")))


@dataclass(frozen=True, slots=True)
class Configurator:
    """One override URL of ``configurators/``, parsed once."""

    kind: str  # "override" or "absent"
    host: str
    port: int
    parameters: dict = field(default_factory=dict)
    user: str = ""

    def sortKey(self):
        return (self.host, _int(self.parameters.get("priority"), 0))

    def configure(self, url, parameters):
        """The provider parameters after this override (``parameters``: the provider's so far, a dict)."""
        mine = self.parameters
        if mine.get("enabled", "true") == "false" or not self.host:
            return parameters
        if param(mine, "configVersion"):
            # 2.7: a provider-side rule for the provider on this port
            if not (mine.get("side") == "provider" == parameters.get("side", "provider") and url.port == self.port):
                return parameters
        elif self.port:
            if url.port != self.port:
                return parameters
        elif self.host != ANYHOST:
            return parameters  # a consumer's address: a rule for that consumer, not for providers
        if self.host != ANYHOST and self.host != url.host:
            return parameters
        providers = param(mine, "providers")
        if providers and url.address not in providers and ANYHOST not in providers:
            return parameters
        application = param(mine, "application") or self.user or None
        current = param(parameters, "application") or None
        if application is not None and application != ANY and application != current:
            return parameters
        for key, value in mine.items():
            if key.startswith("~") or key == "side":
                want = parameters.get(key[1:] if key.startswith("~") else key)
                if value and value != ANY and value != want:
                    return parameters
        out = dict(parameters)
        for key, value in mine.items():
            if key in _CONDITION_KEYS or key.startswith("~"):
                continue
            if self.kind == "override" or key not in out:
                out[key] = value
        return out


def parseConfigurators(children, config):
    """
    The overrides that apply to ``config``'s consumer, in Dubbo's order, from the ``configurators`` node names;
    @return: (configurators, malformed count).
    """
    out, malformed = [], 0
    for name in children:
        try:
            url = decode(name)
        except (DubboURLError, UnicodeDecodeError):
            malformed += 1
            continue
        if url.protocol == "empty":
            out = []
            break
        if url.protocol not in ("override", "absent"):
            malformed += 1
            continue
        parameters = dict(url.parameters)
        if not (set(parameters) - {"anyhost"}):
            out = []  # Dubbo: an override with nothing in it clears those before it
            continue
        if parameters.get("category", "configurators") != "configurators" or not config.wants(parameters):
            continue
        out.append(Configurator(url.protocol, url.host, url.port, parameters, _user(name)))
    out.sort(key=Configurator.sortKey)
    return out, malformed


def _user(name):
    text = unquote(name)
    rest = text.partition("://")[2].partition("/")[0]
    return rest.rpartition("@")[0].partition(":")[0] if "@" in rest else ""


def _int(text, default):
    try:
        return int(text) if text not in (None, "") else default
    except ValueError:
        return default


def providerEndpoints(children, config, configurators=()):
    """
    The hosts of ``config``'s consumer among the ``providers`` node names, with ``configurators`` applied.
    @return: (endpoints, malformed names, ignored count); ignored: other protocols, interfaces, groups, versions,
        categories, disabled providers.
    """
    endpoints, malformed, ignored = [], [], 0
    seen = set()
    for name in children:
        try:
            url = decode(name)
        except (DubboURLError, UnicodeDecodeError):
            malformed.append(name)
            continue
        if url.protocol != config.protocol or (url.interface or config.interface) != config.interface:
            ignored += 1
            continue
        parameters = url.parameters
        if parameters.get("category", "providers") != "providers" or not config.wants(parameters):
            ignored += 1
            continue
        for c in configurators:
            parameters = c.configure(url, parameters)
        if parameters.get("disabled") == "true" or parameters.get("enabled", "true") == "false":
            ignored += 1
            continue
        weightText = param(parameters, "weight")
        try:
            weight = int(weightText) if weightText is not None else DEFAULT_WEIGHT
        except ValueError:
            malformed.append(name)
            continue
        if not url.port or url.host == ANYHOST:
            malformed.append(name)
            continue
        if (url.host, url.port) in seen:
            continue  # two registrations of one address (a restart's old node not yet expired): one host
        seen.add((url.host, url.port))
        metadata = tuple(sorted((k, parameters[k]) for k in METADATA_KEYS if parameters.get(k)))
        metadata += (("protocol", url.protocol),)
        priority = 0 if weight > 0 else 1
        endpoints.append(EndpointConfig(url.host, url.port, max(1, weight), priority, "", metadata))
    return endpoints, malformed, ignored


@implementer(IDiscoverySource)
class ZooKeeperSource:
    """
    One cluster's providers (see the module docstring), delivered to ``sink`` as complete host sets on the reactor
    thread: after the first answer of both watches (providers, and configurators when on), then on every change.
    While the session is suspended or lost the sink hears ``sourceFailed`` (it keeps the last known set); the
    session refetches every watch on reconnect, which delivers the set again.

    @param config: a L{ZooKeeperSourceConfig}.
    @param session: the registry's IZooKeeperSession.
    @param sink: the cluster's IHostSetSink.
    @param stats: a txmesh.stats.Scope (the cluster's), or None.
    """

    log = Logger()

    def __init__(self, config, session, sink, stats=None, clusterName=""):
        self.config = config
        self.session = session
        self.sink = sink
        self.clusterName = clusterName
        self.providers = None  # the last children of providers/, None before the first answer
        self.providersVersion = None
        self.configurators = () if not config.configurators else None
        self.configuratorsVersion = None
        self.version = None  # of the last set delivered
        self.hosts = 0
        self.malformed = 0
        self.configuratorsMalformed = 0
        self.ignored = 0
        self.failed = False
        self._watches = []
        self._logged = set()
        self._stopped = False
        self._stats = None
        if stats is not None:
            self._stats = (
                stats.gauge("zookeeper_providers", help="Provider nodes under the watched providers path."),
                stats.gauge("zookeeper_providers_malformed",
                            help="Provider or override nodes skipped as malformed (not a Dubbo URL, no port, a "
                                 "non-numeric weight)."),
                stats.gauge("zookeeper_providers_ignored",
                            help="Provider nodes of another protocol, interface, group, version or category, or "
                                 "disabled."),
                stats.counter("zookeeper_updates", help="Host sets delivered from ZooKeeper."))

    def start(self):
        session = self.session
        session.addStateListener(self._stateChanged)
        self._watches.append(session.watchChildren(self.config.providersPath, self._providersChanged))
        if self.config.configurators:
            self._watches.append(session.watchChildren(self.config.configuratorsPath, self._configuratorsChanged))

    def stop(self):
        self._stopped = True
        watches, self._watches = self._watches, []
        for w in watches:
            w.cancel()
        self.session.removeStateListener(self._stateChanged)

    def describe(self):
        return {"type": "zookeeper", "registry": self.session.config.name, "path": self.config.providersPath,
                "interface": self.config.interface, "group": self.config.group, "version": self.config.version,
                "zxid": self.version, "providers": len(self.providers or ()), "hosts": self.hosts,
                "malformed": self.malformed, "ignored": self.ignored,
                "configurators": len(self.configurators or ()) if self.config.configurators else None,
                "connected": self.session.connected}

    def _providersChanged(self, children, version):
        if self._stopped:
            return
        self.providers, self.providersVersion = children, version
        self._deliver()

    def _configuratorsChanged(self, children, version):
        if self._stopped:
            return
        configurators, malformed = parseConfigurators(children, self.config)
        self.configurators, self.configuratorsVersion = configurators, version
        self.configuratorsMalformed = malformed
        self._deliver()

    def _deliver(self):
        if self.providers is None or self.configurators is None:
            return  # the first set waits for both answers: a disabled provider must not get traffic meanwhile
        endpoints, malformed, ignored = providerEndpoints(self.providers, self.config, self.configurators)
        for name in malformed:
            if name not in self._logged and len(self._logged) < _MAX_LOGGED:
                self._logged.add(name)
                self.log.warn("zookeeper discovery {cluster}: skipped malformed provider node {name!r}",
                              cluster=self.clusterName, name=name[:300])
        self.hosts = len(endpoints)
        self.malformed = len(malformed) + self.configuratorsMalformed
        self.ignored = ignored
        version = self.providersVersion
        if self.config.configurators:
            version = "%s/%s" % (version, self.configuratorsVersion)
        self.version = version
        self.failed = False
        if self._stats is not None:
            providers, malformedGauge, ignoredGauge, updates = self._stats
            providers.value = len(self.providers)
            malformedGauge.value = self.malformed
            ignoredGauge.value = ignored
            updates.value += 1
        self.sink.hostsUpdated(tuple(endpoints), version)

    def _stateChanged(self, state):
        if self._stopped or state == "connected":
            return  # connected: the session refetches every watch, which delivers the set
        if not self.failed:
            self.failed = True
            self.sink.sourceFailed("zookeeper registry %s: session %s" % (self.session.config.name, state))


@implementer(IDiscoverySourceFactory)
class ZooKeeperDiscoveryFactory:
    """``discovery: {type: zookeeper, interface: ..., group, version, protocol, configurators}``."""

    name = "zookeeper"
    keys = ("interface", "group", "version", "protocol", "configurators")
    registryType = "zookeeper"

    def buildConfig(self, raw, context):
        interface = raw.get("interface")
        if interface is None:
            raise context.error("missing required key 'interface' (the Dubbo interface whose providers to watch)")
        values = {}
        for key, default in (("interface", None), ("group", ""), ("version", ""), ("protocol", "dubbo")):
            value = raw.get(key, default)
            if not isinstance(value, str):
                raise context.error("must be a string", key)
            values[key] = value
        if not interface or "/" in interface or interface == ANY or any(c.isspace() for c in interface):
            raise context.error("must be a Dubbo interface name (no '/', spaces or '*')", "interface")
        if not values["protocol"] or not values["protocol"].isascii() or not values["protocol"].isalnum():
            raise context.error("must be a URL scheme such as dubbo", "protocol")
        configurators = raw.get("configurators", True)
        if not isinstance(configurators, bool):
            raise context.error("must be true or false", "configurators")
        if context.clusterProtocol != "dubbo" and values["protocol"] == "dubbo":
            raise context.error("Dubbo providers need a cluster of protocol dubbo (this one is '%s')"
                                % (context.clusterProtocol,), "protocol")
        return ZooKeeperSourceConfig(root=context.registry.root, configurators=configurators, **values)

    def makeSource(self, config, context, sink):
        return ZooKeeperSource(config, context.registry, sink, context.stats, context.clusterName)
