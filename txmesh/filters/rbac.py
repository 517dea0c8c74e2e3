"""
The ``rbac`` stream filter (Envoy's envoy.filters.http.rbac in spirit), for HTTP, gRPC and Dubbo listeners: it
authorises each request on its head, before the router, by ordered policies of permissions (what is asked: path,
authority, method, headers, gRPC service/method, Dubbo interface/method/version/group/attachments, destination
port) and principals (who asks: the peer's certificate identity, its address, headers).  The first policy that
matches decides; none matching, the default action does.  A denied request never reaches the router: HTTP 403
``RBAC: access denied`` (Envoy's body), gRPC PERMISSION_DENIED (7), Dubbo BAD_REQUEST (40, ``dubbo_status``), each
with ``x-txmesh-error: rbac_access_denied`` where the protocol has headers.

config (docs/filters.md and docs/configuration.md have the tables):
  - txmesh's shape: ``policies`` (a list of ``{name, action, permissions, principals}``, tried in order),
    ``action`` (for the policies that name none), ``default_action`` (allow or deny; needed when the policies mix
    actions, else the opposite of theirs);
  - or Envoy's: ``rules: {action: ALLOW|DENY, policies: {name: {permissions, principals}}}``;
  - ``shadow_rules`` (either shape): evaluated too, never enforced, only counted and logged; or ``mode: shadow``
    to run the rules themselves that way;
  - ``per_route``: ``{route name: {disabled: true}}`` or ``{route name: {<rules, as above>}}``, replacing the
    filter's rules for requests of that route (Envoy's RBACPerRoute; the filter framework has no per-route filter
    config, so the filter reads the route itself);
  - ``stat_prefix`` (default ``rbac``), ``dubbo_status`` (default 40).

Counters, labelled listener, rbac (the stat prefix) and policy (the policy that decided, ``_default`` for the
default action): ``rbac_allowed``, ``rbac_denied``, ``rbac_shadow_allowed``, ``rbac_shadow_denied``.  Denials,
enforced or shadow, are logged as warnings at most once per 10 s per listener and policy, with the count since.
"""

from dataclasses import dataclass

from twisted.logger import Logger
from twisted.plugin import IPlugin
from zope.interface import implementer

from txmesh.config_reader import checkFilterKeys, joinPath
from txmesh.filters.rbac_policy import (DEFAULT_POLICY, AddressCache, buildEnvoyRules, buildPolicyList)
from txmesh.interfaces import (FilterStatus, IFilterFactory, IStreamDecoderFilter, IStreamFilterEvents,
                               StreamEvents)
from txmesh.overload import LogOncePer
from txmesh.protocols.dubbo import codec as dc

CAUSE = "rbac_access_denied"
BODY = b"RBAC: access denied"  # Envoy's local reply body
GRPC_PERMISSION_DENIED = 7
_RULE_KEYS = ("action", "default_action", "policies", "rules", "shadow_rules", "mode")
_KEYS = _RULE_KEYS + ("stat_prefix", "dubbo_status", "per_route")
CONTINUE, STOP = FilterStatus.CONTINUE, FilterStatus.STOP


@dataclass(frozen=True, slots=True)
class RuleSets:
    """What one request is checked against: the enforced rules and the shadow rules (IAuthorizationRules or None)."""

    enforced: object = None
    shadow: object = None


class _Sub:
    """A context whose errors sit under ``prefix`` (for per_route entries)."""

    def __init__(self, context, prefix):
        self.context = context
        self.prefix = prefix

    def error(self, reason, subpath=""):
        return self.context.error(reason, joinPath(self.prefix, subpath))


def _ruleSet(raw, context, path, protocol, cache):
    """A rule set in either shape: Envoy's (``policies`` a mapping) or txmesh's (a list)."""
    if isinstance(raw, dict) and isinstance(raw.get("policies"), list):
        for key in raw:
            if key not in ("action", "default_action", "policies"):
                raise context.error("unknown key (expected action, default_action, policies)", joinPath(path, str(key)))
        return buildPolicyList(raw["policies"], context, path + ".policies", protocol, cache,
                               _optAction(raw, context, path, "action"), _optAction(raw, context, path,
                                                                                    "default_action"))
    return buildEnvoyRules(raw, context, path, protocol, cache)


def _optAction(raw, context, path, key):
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or value.lower() not in ("allow", "deny"):
        raise context.error("must be allow or deny", joinPath(path, key))
    return value.lower()


def buildRuleSets(raw, context, protocol, cache):
    """The RuleSets of a config mapping (the filter's, or a per_route entry's)."""
    if raw.get("rules") is not None and raw.get("policies") is not None:
        raise context.error("rules (Envoy's shape) and policies (a list) are exclusive", "policies")
    enforced = shadow = None
    if raw.get("rules") is not None:
        for key in ("action", "default_action"):
            if raw.get(key) is not None:
                raise context.error("goes with policies, not rules (rules carry their own action)", key)
        enforced = _ruleSet(raw["rules"], context, "rules", protocol, cache)
    elif raw.get("policies") is not None:
        enforced = buildPolicyList(raw["policies"], context, "policies", protocol, cache,
                                   _optAction(raw, context, "", "action"),
                                   _optAction(raw, context, "", "default_action"))
    if raw.get("shadow_rules") is not None:
        shadow = _ruleSet(raw["shadow_rules"], context, "shadow_rules", protocol, cache)
    mode = raw.get("mode", "enforce")
    if mode not in ("enforce", "shadow"):
        raise context.error("must be enforce or shadow", "mode")
    if mode == "shadow":
        if shadow is not None:
            raise context.error("mode: shadow runs the rules as shadow rules; drop shadow_rules", "mode")
        enforced, shadow = None, enforced
    if enforced is None and shadow is None:
        raise context.error("needs policies, rules or shadow_rules")
    return RuleSets(enforced, shadow)


class _Counters:
    """The filter's counters, made on first use per (listener, shadow, allowed, policy); policy names are the
    config's, so their number is bounded by it (and the stats store's cap)."""

    __slots__ = ("stats", "statPrefix", "_counters")

    def __init__(self, stats, statPrefix):
        self.stats = stats
        self.statPrefix = statPrefix
        self._counters = {}

    def get(self, listener, shadow, allowed, policy):
        key = (listener, shadow, allowed, policy)
        c = self._counters.get(key)
        if c is None:
            name = "rbac_%s%s" % ("shadow_" if shadow else "", "allowed" if allowed else "denied")
            c = self._counters[key] = self.stats.counter(
                name, (("listener", listener), ("rbac", self.statPrefix), ("policy", policy or DEFAULT_POLICY)),
                "Requests the rbac filter %s%s" % ("would have " if shadow else "",
                                                   "allowed" if allowed else "denied"))
        return c


@dataclass(frozen=True, slots=True)
class RbacConfig:
    rules: RuleSets
    perRoute: dict  # route name -> RuleSets, or None (disabled there)
    statPrefix: str
    dubboStatus: int
    shared: dict  # {"counters": _Counters, "log": LogOncePer}: made on the first stream (they need the runtime)


@implementer(IStreamDecoderFilter, IStreamFilterEvents)
class RbacFilter:
    """Per stream: decides on the request head; STOP only with a local reply."""

    streamEvents = StreamEvents.DECODE_HEADERS | StreamEvents.DECODER_CALLBACKS
    log = Logger()

    __slots__ = ("config", "counters", "logOnce", "callbacks")

    def __init__(self, config, counters, logOnce):
        self.config = config
        self.counters = counters
        self.logOnce = logOnce
        self.callbacks = None

    def setDecoderFilterCallbacks(self, callbacks):
        self.callbacks = callbacks

    def decodeHeaders(self, request, endStream):
        config = self.config
        cb = self.callbacks
        rules = config.rules
        if config.perRoute:
            route = cb.route()
            if route is not None and route.name in config.perRoute:
                rules = config.perRoute[route.name]
                if rules is None:
                    return CONTINUE
        info = cb.streamInfo
        if rules.shadow is not None:
            allowed, policy = rules.shadow.evaluate(request, info)
            self.counters.get(info.listenerName, True, allowed, policy).value += 1
            if not allowed:
                self._logDenied(request, info, policy, True)
        if rules.enforced is None:
            return CONTINUE
        allowed, policy = rules.enforced.evaluate(request, info)
        self.counters.get(info.listenerName, False, allowed, policy).value += 1
        if allowed:
            return CONTINUE
        self._logDenied(request, info, policy, False)
        protocol = request.protocol
        if protocol == "grpc":
            headers = ((b"grpc-status", b"%d" % (GRPC_PERMISSION_DENIED,)),)
        elif protocol == "dubbo":
            headers = ((dc.LOCAL_REPLY_STATUS, b"%d" % (config.dubboStatus,)),)
        else:
            headers = ()
        cb.sendLocalReply(403, BODY, headers, CAUSE)
        return STOP

    def _logDenied(self, request, info, policy, shadow):
        self.logOnce.warn(("rbac", info.listenerName, policy, shadow),
                          "rbac{shadow} on listener {listener}: {verb} {method} {path} from {peer} ({policy}); "
                          "{n} in the last {interval}s", shadow=" (shadow)" if shadow else "",
                          listener=info.listenerName, verb="would deny" if shadow else "denied",
                          method=request.method.decode("latin-1"), path=request.pathOnly().decode("latin-1"),
                          peer=info.downstreamPeer,
                          policy="policy " + policy if policy else "the default action")

    def decodeData(self, data, endStream):
        return CONTINUE

    def decodeTrailers(self, trailers):
        return CONTINUE

    def onStreamReset(self, reason):
        pass

    def onStreamComplete(self):
        pass


@implementer(IFilterFactory, IPlugin)
class RbacFactory:
    """The ``rbac`` stream filter kind; see the module docstring."""

    name = "rbac"
    kind = "stream"
    protocols = frozenset({"http", "grpc", "dubbo"})
    terminal = False

    def buildConfig(self, raw, context):
        """@raise txmesh.errors.ConfigError: for an unknown key or a bad value, naming it."""
        checkFilterKeys(raw, _KEYS, context)
        protocol = context.listenerProtocol
        cache = AddressCache()
        rules = buildRuleSets(raw, context, protocol, cache)
        perRoute = {}
        routes = raw.get("per_route") or {}
        if not isinstance(routes, dict):
            raise context.error("must be a mapping of route name to {disabled: true} or rules", "per_route")
        for name, entry in routes.items():
            sub = _Sub(context, "per_route.%s" % (name,))
            if not isinstance(entry, dict) or not entry:
                raise sub.error("must be {disabled: true} or rules")
            if "disabled" in entry:
                if entry != {"disabled": True}:
                    raise sub.error("must be true, alone", "disabled")
                perRoute[str(name)] = None
                continue
            checkFilterKeys(entry, _RULE_KEYS, sub)
            perRoute[str(name)] = buildRuleSets(entry, sub, protocol, cache)
        statPrefix = raw.get("stat_prefix", self.name)
        if not isinstance(statPrefix, str) or not statPrefix:
            raise context.error("must be a non-empty string", "stat_prefix")
        dubboStatus = raw.get("dubbo_status", dc.BAD_REQUEST)
        if type(dubboStatus) is not int or dubboStatus not in dc.STATUSES or dubboStatus == dc.OK:
            raise context.error("must be a Dubbo error status (%s)" % (
                ", ".join(str(s) for s in sorted(dc.STATUSES - {dc.OK})),), "dubbo_status")
        return RbacConfig(rules, perRoute, statPrefix, dubboStatus, {})

    def createFilters(self, config, callbacks, runtime):
        shared = config.shared
        counters = shared.get("counters")
        if counters is None:
            counters = shared["counters"] = _Counters(runtime.stats, config.statPrefix)
            shared["log"] = LogOncePer(runtime.clock, RbacFilter.log)
        callbacks.addStreamDecoderFilter(RbacFilter(config, counters, shared["log"]))
