"""
The ``rbac`` filter's policies (txmesh.filters.rbac): Envoy's RBAC permissions and principals, compiled once at
config load into closures ``match(request, streamInfo) -> bool``, and the rule set that evaluates them in order.

Nothing here does I/O or keeps per-request state: a ``Rules`` object is shared by every stream of its listener.
Every build function takes the raw mapping, a FilterConfigContext-like ``context`` (``error(reason, subpath)``)
and the key path of the value, and raises ``context.error`` naming the offending key.

What each matcher reads:
  - request fields (bytes): ``path`` (the normalised path without its query: listeners normalise before the first
    filter), ``authority``, ``method``, headers (txmesh.routing.HeaderMatcher, so pseudo-headers work as in routes);
  - gRPC (``request.protocol == "grpc"``): the service and method of ``/pkg.Service/Method``;
  - Dubbo (``request.protocol == "dubbo"``): ``request.metadata`` interface, method, version, group; attachments
    (the listener shows them as lower-case headers);
  - the stream: ``streamInfo.downstreamPeer`` (the direct peer, 'host:port'), ``streamInfo.downstreamLocal``
    (the listener address, for the destination port) and ``streamInfo.peerIdentity`` (IPeerIdentity, or None on a
    plain-text connection or without a client certificate: then only address, header and ``any`` principals can
    match, and ``not_id`` of an identity matcher matches).
"""

import ipaddress
import re

from zope.interface import implementer

from txmesh.config_reader import joinPath as _join
from txmesh.interfaces import IAuthorizationRules
from txmesh.routing import HeaderMatcher

ALLOW, DENY = "allow", "deny"
DEFAULT_POLICY = "_default"  # the ``policy`` label of a decision no policy made
_MAX_CACHED_ADDRESSES = 4096

PERMISSION_KEYS = ("any", "header", "path", "url_path", "authority", "host", "method", "grpc_service",
                   "grpc_method", "dubbo_interface", "dubbo_method", "dubbo_version", "dubbo_group",
                   "dubbo_attachment", "destination_port", "destination_port_range", "not_rule", "and_rules",
                   "or_rules")
PRINCIPAL_KEYS = ("any", "authenticated", "principal", "spiffe_id", "uri_san", "dns_san", "subject", "source_ip",
                  "remote_ip", "direct_remote_ip", "header", "not_id", "and_ids", "or_ids")
_STRING_KINDS = ("exact", "prefix", "suffix", "contains", "regex", "safe_regex")
_HEADER_KEYS = ("name", "exact", "prefix", "suffix", "contains", "regex", "safe_regex", "present", "invert",
                "ignore_case", "string_match", "present_match", "invert_match")
# permissions that can only match requests of some listener protocols: key -> the protocols they can match on
_PROTOCOL_ONLY = {"grpc_service": ("grpc", "http2"), "grpc_method": ("grpc", "http2")}
_PROTOCOL_ONLY.update((k, ("dubbo",)) for k in ("dubbo_interface", "dubbo_method", "dubbo_version", "dubbo_group",
                                                "dubbo_attachment"))


# -- strings -----------------------------------------------------------------------------------------------------


def buildStringMatcher(raw, context, path, asBytes):
    """
    A function ``value -> bool`` from Envoy's StringMatcher: a plain string (exact), or a mapping with one of
    ``exact``, ``prefix``, ``suffix``, ``contains``, ``regex`` (or Envoy's ``safe_regex: {regex: ...}``; a full
    match, Python's ``re``) and optional ``ignore_case``.  ``asBytes``: the values matched are bytes (request
    fields) rather than str (identities, Dubbo metadata).  A None value never matches.
    """
    if isinstance(raw, str):
        raw = {"exact": raw}
    if not isinstance(raw, dict):
        raise context.error("must be a string or a mapping with one of: %s" % (", ".join(_STRING_KINDS),), path)
    for key in raw:
        if key not in _STRING_KINDS + ("ignore_case",):
            raise context.error("unknown key (expected one of: %s, ignore_case)" % (", ".join(_STRING_KINDS),),
                                _join(path, str(key)))
    kinds = [k for k in _STRING_KINDS if raw.get(k) is not None]
    if len(kinds) != 1:
        raise context.error("needs exactly one of: %s" % (", ".join(_STRING_KINDS),), path)
    kind = kinds[0]
    ignoreCase = raw.get("ignore_case", False)
    if not isinstance(ignoreCase, bool):
        raise context.error("must be true or false", _join(path, "ignore_case"))
    value = raw[kind]
    if kind == "safe_regex":
        if not isinstance(value, dict) or list(value) != ["regex"]:
            raise context.error("must be {regex: <pattern>}", _join(path, kind))
        value, kind = value["regex"], "regex"
    if not isinstance(value, str):
        raise context.error("must be a string", _join(path, kind))
    if kind == "regex":
        pattern = compileRegex(value, context, _join(path, kind), ignoreCase, asBytes)
        full = pattern.fullmatch
        return lambda s: s is not None and full(s) is not None
    if kind != "exact" and not value:
        raise context.error("must not be empty", _join(path, kind))
    want = value.encode("utf-8") if asBytes else value
    if ignoreCase:
        want = want.lower()
        if kind == "exact":
            return lambda s: s is not None and s.lower() == want
        if kind == "prefix":
            return lambda s: s is not None and s.lower().startswith(want)
        if kind == "suffix":
            return lambda s: s is not None and s.lower().endswith(want)
        return lambda s: s is not None and want in s.lower()
    if kind == "exact":
        return lambda s: s == want
    if kind == "prefix":
        return lambda s: s is not None and s.startswith(want)
    if kind == "suffix":
        return lambda s: s is not None and s.endswith(want)
    return lambda s: s is not None and want in s


def compileRegex(pattern, context, path, ignoreCase=False, asBytes=True):
    try:
        return re.compile(pattern.encode("utf-8") if asBytes else pattern, re.IGNORECASE if ignoreCase else 0)
    except re.error as e:
        raise context.error("invalid regex: %s" % (e,), path) from e


def buildHeaderMatcher(raw, context, path):
    """
    A txmesh.routing.HeaderMatcher (what route ``match.headers`` use) from an RBAC ``header`` entry: ``name`` and
    one of ``exact``, ``prefix``, ``regex``, ``present`` (route spelling), ``suffix``, ``contains``,
    ``safe_regex``, ``string_match: {...}`` (Envoy's) with ``ignore_case``; ``invert`` / ``invert_match``.
    Forms the route matcher has no field for (suffix, contains, ignore_case) become a compiled full-match regex.
    """
    if not isinstance(raw, dict):
        raise context.error("must be a mapping with a name and a match", path)
    for key in raw:
        if key not in _HEADER_KEYS:
            raise context.error("unknown key (expected one of: %s)" % (", ".join(_HEADER_KEYS),),
                                _join(path, str(key)))
    name = raw.get("name")
    if not isinstance(name, str) or not name or any(c in name[1:] for c in " :\t") or not name.isascii():
        raise context.error("must be a header name", _join(path, "name"))
    invert = raw.get("invert", raw.get("invert_match", False))
    if not isinstance(invert, bool):
        raise context.error("must be true or false", _join(path, "invert"))
    spec = dict(raw.get("string_match") or {})
    if raw.get("string_match") is not None and not isinstance(raw["string_match"], dict):
        raise context.error("must be a mapping", _join(path, "string_match"))
    for key in _STRING_KINDS + ("ignore_case",):
        if raw.get(key) is not None:
            spec[key] = raw[key]
    present = raw.get("present", raw.get("present_match"))
    bname = name.lower().encode("ascii")
    if present is not None:
        if spec:
            raise context.error("present and a value match are exclusive", path)
        if not isinstance(present, bool):
            raise context.error("must be true or false", _join(path, "present"))
        return HeaderMatcher(bname, present=present, invert=invert)
    if not spec:
        raise context.error("needs one of: exact, prefix, suffix, contains, regex, present, string_match", path)
    sub = _join(path, "string_match") if raw.get("string_match") is not None else path
    buildStringMatcher(spec, context, sub, True)  # validates it, and names what is wrong
    kind = next(k for k in _STRING_KINDS if spec.get(k) is not None)
    value = spec[kind]["regex"] if kind == "safe_regex" else spec[kind]
    ignoreCase = spec.get("ignore_case", False)
    if kind in ("exact", "prefix") and not ignoreCase:
        if "\r" in value or "\n" in value or "\0" in value:
            raise context.error("must not contain CR, LF or NUL", _join(sub, kind))
        return HeaderMatcher(bname, invert=invert, **{kind: value.encode("utf-8")})
    if kind in ("regex", "safe_regex"):
        pattern = value
    else:
        escaped = re.escape(value)
        pattern = {"exact": escaped, "prefix": escaped + ".*", "suffix": ".*" + escaped,
                   "contains": ".*" + escaped + ".*"}[kind]
        pattern = "(?s)" + pattern
    return HeaderMatcher(bname, regex=compileRegex(pattern, context, _join(sub, kind), ignoreCase), invert=invert)


# -- addresses ---------------------------------------------------------------------------------------------------


def _parseCidr(raw, context, path):
    """An ip_network from "10.0.0.0/8", "::1", or Envoy's CidrRange ``{address_prefix, prefix_len}``."""
    if isinstance(raw, dict):
        for key in raw:
            if key not in ("address_prefix", "prefix_len"):
                raise context.error("unknown key (expected address_prefix, prefix_len)", _join(path, str(key)))
        prefix, length = raw.get("address_prefix"), raw.get("prefix_len")
        if not isinstance(prefix, str):
            raise context.error("must be an IP address", _join(path, "address_prefix"))
        if length is not None and (type(length) is not int or length < 0):
            raise context.error("must be an integer >= 0", _join(path, "prefix_len"))
        raw = prefix if length is None else "%s/%d" % (prefix, length)
    if not isinstance(raw, str):
        raise context.error("must be a CIDR range (10.0.0.0/8) or {address_prefix, prefix_len}", path)
    try:
        return ipaddress.ip_network(raw, strict=False)
    except ValueError as e:
        raise context.error("not a CIDR range: %s" % (e,), path) from e


class AddressCache:
    """
    'host:port' (a StreamInfo's downstreamPeer or downstreamLocal) -> (IP version, the address as an int, the
    port), or None when it is not an IP address (a UNIX socket); bounded, since the streams of one connection share
    their peer the parse is made once per connection at most.
    """

    __slots__ = ("_items",)

    def __init__(self):
        self._items = {}

    def get(self, hostPort):
        items = self._items
        try:
            return items[hostPort]
        except KeyError:
            pass
        host, _, port = hostPort.rpartition(":")
        try:
            address = ipaddress.ip_address(host.strip("[]").partition("%")[0])
        except ValueError:
            value = None
        else:
            if address.version == 6 and address.ipv4_mapped is not None:
                address = address.ipv4_mapped
            value = (address.version, int(address), int(port) if port.isdigit() else None)
        if len(items) >= _MAX_CACHED_ADDRESSES:
            items.clear()
        items[hostPort] = value
        return value


def _cidrMatcher(networks, cache, field):
    ranges = tuple((n.version, int(n.network_address), int(n.netmask)) for n in networks)

    def match(request, info):
        hostPort = getattr(info, field)
        if not hostPort:
            return False
        parsed = cache.get(hostPort)
        if parsed is None:
            return False
        version, value = parsed[0], parsed[1]
        for v, net, mask in ranges:
            if v == version and value & mask == net:
                return True
        return False
    return match


# -- permissions -------------------------------------------------------------------------------------------------


def _requestField(read, test):
    return lambda request, info: test(read(request))


def _always(request, info):
    return True


def _grpcParts(request):
    if request.protocol != "grpc":
        return None, None
    service, _, method = request.pathOnly()[1:].partition(b"/")
    return (service.decode("latin-1"), method.decode("latin-1")) if service and method else (None, None)


def _dubboField(key):
    def read(request):
        return request.metadata.get(key) if request.protocol == "dubbo" else None
    return read


def _oneKey(raw, context, path, keys, what):
    if not isinstance(raw, dict) or len(raw) != 1:
        raise context.error("must be a mapping with exactly one %s key (%s)" % (what, ", ".join(keys)), path)
    [key] = raw
    if key not in keys:
        raise context.error("unknown %s (expected one of: %s)" % (what, ", ".join(keys)), _join(path, str(key)))
    return key, raw[key]


def _list(raw, context, path, innerKey):
    """``[...]`` or Envoy's ``{rules: [...]}`` / ``{ids: [...]}``: a non-empty list."""
    if isinstance(raw, dict) and list(raw) == [innerKey]:
        raw, path = raw[innerKey], _join(path, innerKey)
    if not isinstance(raw, list) or not raw:
        raise context.error("must be a non-empty list (or {%s: [...]})" % (innerKey,), path)
    return raw, path


def _true(value, context, path):
    if value is not True:
        raise context.error("must be true", path)


def buildPermission(raw, context, path, protocol, cache):
    """One permission: a closure ``(request, streamInfo) -> bool``.  ``protocol``: the listener's, or None."""
    key, value = _oneKey(raw, context, path, PERMISSION_KEYS, "permission")
    sub = _join(path, key)
    allowed = _PROTOCOL_ONLY.get(key)
    if allowed is not None and protocol is not None and protocol not in allowed:
        raise context.error("never matches on a %s listener" % (protocol,), sub)
    if key == "any":
        _true(value, context, sub)
        return _always
    if key == "header":
        return _header(buildHeaderMatcher(value, context, sub))
    if key in ("path", "url_path"):
        if key == "url_path":
            if not isinstance(value, dict) or list(value) != ["path"]:
                raise context.error("must be {path: <string matcher>}", sub)
            value, sub = value["path"], _join(sub, "path")
        return _requestField(_pathOf, buildStringMatcher(value, context, sub, True))
    if key in ("authority", "host"):
        return _requestField(_authorityOf, buildStringMatcher(value, context, sub, True))
    if key == "method":
        if isinstance(value, list):
            if not value or not all(isinstance(m, str) and m for m in value):
                raise context.error("must be a method, a list of methods or a string matcher", sub)
            methods = frozenset(m.encode("ascii", "replace") for m in value)
            return lambda request, info: request.method in methods
        return _requestField(_methodOf, buildStringMatcher(value, context, sub, True))
    if key == "grpc_service":
        test = buildStringMatcher(value, context, sub, False)
        return lambda request, info: test(_grpcParts(request)[0])
    if key == "grpc_method":
        test = buildStringMatcher(value, context, sub, False)
        return lambda request, info: test(_grpcParts(request)[1])
    if key in ("dubbo_interface", "dubbo_method", "dubbo_version", "dubbo_group"):
        return _requestField(_dubboField(key[6:]), buildStringMatcher(value, context, sub, False))
    if key == "dubbo_attachment":
        matcher = buildHeaderMatcher(value, context, sub)
        return lambda request, info: request.protocol == "dubbo" and matcher.matches(request)
    if key == "destination_port":
        if type(value) is not int or not 0 < value < 65536:
            raise context.error("must be a port (1-65535)", sub)
        return _portMatcher(value, value + 1, cache)
    if key == "destination_port_range":
        if not isinstance(value, dict) or sorted(value) != ["end", "start"] or \
                not all(type(value[k]) is int for k in value) or not 0 <= value["start"] < value["end"] <= 65536:
            raise context.error("must be {start, end}: ports, start included, end excluded, start < end", sub)
        return _portMatcher(value["start"], value["end"], cache)
    if key == "not_rule":
        inner = buildPermission(value, context, sub, protocol, cache)
        return lambda request, info: not inner(request, info)
    items, sub = _list(value, context, sub, "rules")
    inner = tuple(buildPermission(p, context, "%s[%d]" % (sub, i), protocol, cache) for i, p in enumerate(items))
    return _and(inner) if key == "and_rules" else _or(inner)


def _header(matcher):
    test = matcher.matches
    return lambda request, info: test(request)


def _pathOf(request):
    return request.pathOnly()


def _authorityOf(request):
    return request.authority


def _methodOf(request):
    return request.method


def _portMatcher(start, end, cache):
    def match(request, info):
        local = info.downstreamLocal
        parsed = cache.get(local) if local else None
        return parsed is not None and parsed[2] is not None and start <= parsed[2] < end
    return match


def _and(inner):
    def match(request, info):
        for m in inner:
            if not m(request, info):
                return False
        return True
    return match


def _or(inner):
    def match(request, info):
        for m in inner:
            if m(request, info):
                return True
        return False
    return match


# -- principals --------------------------------------------------------------------------------------------------


def _identityField(read, test):
    def match(request, info):
        identity = info.peerIdentity
        return identity is not None and test(read(identity))
    return match


def _anyOf(read, test):
    """A matcher over a tuple field (the URI or DNS SANs): true if one of them matches."""
    def match(request, info):
        identity = info.peerIdentity
        if identity is None:
            return False
        for value in read(identity):
            if test(value):
                return True
        return False
    return match


def _authenticated(value, context, sub):
    if value is True or value == {} or value is None:
        return lambda request, info: info.peerIdentity is not None
    if not isinstance(value, dict) or list(value) != ["principal_name"]:
        raise context.error("must be true, {} or {principal_name: <string matcher>}", sub)
    test = buildStringMatcher(value["principal_name"], context, _join(sub, "principal_name"), False)

    def match(request, info):  # Envoy: a URI SAN, else a DNS SAN, else the subject
        identity = info.peerIdentity
        if identity is None:
            return False
        for value in identity.uriSans:
            if test(value):
                return True
        for value in identity.dnsSans:
            if test(value):
                return True
        return test(identity.subject)
    return match


_IDENTITY_FIELDS = {
    "principal": lambda identity: identity.principal,
    "spiffe_id": lambda identity: identity.spiffeId,
    "subject": lambda identity: identity.subject,
}


def buildPrincipal(raw, context, path, cache):
    """One principal: a closure ``(request, streamInfo) -> bool``."""
    key, value = _oneKey(raw, context, path, PRINCIPAL_KEYS, "principal")
    sub = _join(path, key)
    if key == "any":
        _true(value, context, sub)
        return _always
    if key == "authenticated":
        return _authenticated(value, context, sub)
    if key in _IDENTITY_FIELDS:
        return _identityField(_IDENTITY_FIELDS[key], buildStringMatcher(value, context, sub, False))
    if key == "uri_san":
        return _anyOf(lambda identity: identity.uriSans, buildStringMatcher(value, context, sub, False))
    if key == "dns_san":
        return _anyOf(lambda identity: identity.dnsSans, buildStringMatcher(value, context, sub, False))
    if key in ("source_ip", "remote_ip", "direct_remote_ip"):
        values = value if isinstance(value, list) and value else [value]
        networks = [_parseCidr(v, context, sub if values is not value else "%s[%d]" % (sub, i))
                    for i, v in enumerate(values)]
        return _cidrMatcher(networks, cache, "downstreamPeer")
    if key == "header":
        return _header(buildHeaderMatcher(value, context, sub))
    if key == "not_id":
        inner = buildPrincipal(value, context, sub, cache)
        return lambda request, info: not inner(request, info)
    items, sub = _list(value, context, sub, "ids")
    inner = tuple(buildPrincipal(p, context, "%s[%d]" % (sub, i), cache) for i, p in enumerate(items))
    return _and(inner) if key == "and_ids" else _or(inner)


# -- policies and rule sets --------------------------------------------------------------------------------------


class Policy:
    """One named policy: it matches when one of its permissions and one of its principals match."""

    __slots__ = ("name", "action", "permissions", "principals")

    def __init__(self, name, action, permissions, principals):
        self.name = name
        self.action = action
        self.permissions = permissions
        self.principals = principals

    def matches(self, request, info):
        for p in self.permissions:
            if p(request, info):
                break
        else:
            return False
        for p in self.principals:
            if p(request, info):
                return True
        return False


@implementer(IAuthorizationRules)
class Rules:
    """An ordered list of policies and a default action; see IAuthorizationRules."""

    def __init__(self, policies, defaultAction):
        self.policies = tuple(policies)
        self.defaultAction = defaultAction
        self.policyNames = tuple(p.name for p in self.policies)

    def evaluate(self, request, streamInfo):
        for policy in self.policies:
            if policy.matches(request, streamInfo):
                return policy.action == ALLOW, policy.name
        return self.defaultAction == ALLOW, None


def _action(value, context, path):
    if not isinstance(value, str) or value.lower() not in (ALLOW, DENY):
        raise context.error("must be allow or deny (ALLOW or DENY)", path)
    return value.lower()


def _policy(raw, name, action, context, path, protocol, cache):
    if not isinstance(raw, dict):
        raise context.error("must be a mapping with permissions and principals", path)
    for key in raw:
        if key not in ("name", "action", "permissions", "principals"):
            raise context.error("unknown key (expected one of: name, action, permissions, principals)",
                                _join(path, str(key)))
    perms = raw.get("permissions")
    if not isinstance(perms, list) or not perms:
        raise context.error("must be a non-empty list of permissions", _join(path, "permissions"))
    principals = raw.get("principals")
    if not isinstance(principals, list) or not principals:
        raise context.error("must be a non-empty list of principals", _join(path, "principals"))
    return Policy(name, action,
                  tuple(buildPermission(p, context, "%s.permissions[%d]" % (path, i), protocol, cache)
                        for i, p in enumerate(perms)),
                  tuple(buildPrincipal(p, context, "%s.principals[%d]" % (path, i), cache)
                        for i, p in enumerate(principals)))


def buildEnvoyRules(raw, context, path, protocol, cache):
    """
    Envoy's RBAC ``rules``: ``{action: ALLOW|DENY, policies: {name: {permissions, principals}}}``.  With ALLOW a
    request that no policy matches is denied, with DENY it is allowed (Envoy's meaning).  The policies are tried in
    the order of their names, as Envoy's engine does, so the policy a decision names is the one Envoy would name.
    """
    if not isinstance(raw, dict):
        raise context.error("must be a mapping {action, policies}", path)
    for key in raw:
        if key not in ("action", "policies"):
            raise context.error("unknown key (expected action, policies; Envoy's LOG action and audit are not "
                                "supported)", _join(path, str(key)))
    action = _action(raw.get("action", "ALLOW"), context, _join(path, "action"))
    policies = raw.get("policies") or {}
    if not isinstance(policies, dict):
        raise context.error("must be a mapping of policy name to policy", _join(path, "policies"))
    built = [_policy(policies[name], str(name), action, context, _join(path, "policies.%s" % (name,)), protocol,
                     cache) for name in sorted(policies, key=str)]
    return Rules(built, DENY if action == ALLOW else ALLOW)


def buildPolicyList(raw, context, path, protocol, cache, action=None, defaultAction=None):
    """
    txmesh's shape: a list of ``{name, action, permissions, principals}`` tried in order, the first that matches
    decides; ``action`` (the list's) applies to policies that name none; ``defaultAction`` decides when none
    matches (when absent: the opposite of the policies' action if they all share one, else an error).
    """
    if not isinstance(raw, list):
        raise context.error("must be a list of policies", path)
    policies, names = [], set()
    for i, p in enumerate(raw):
        pPath = "%s[%d]" % (path, i)
        if not isinstance(p, dict):
            raise context.error("must be a mapping {name, action, permissions, principals}", pPath)
        name = p.get("name")
        if not isinstance(name, str) or not name:
            raise context.error("must be a non-empty string", _join(pPath, "name"))
        if name in names or name == DEFAULT_POLICY:
            raise context.error("duplicate policy name '%s'" % (name,), _join(pPath, "name"))
        names.add(name)
        if p.get("action") is None and action is None:
            raise context.error("missing action (allow or deny), here or for the whole list", pPath)
        policyAction = _action(p["action"], context, _join(pPath, "action")) if p.get("action") is not None \
            else action
        policies.append(_policy(p, name, policyAction, context, pPath, protocol, cache))
    if defaultAction is None:
        actions = {p.action for p in policies}
        if len(actions) != 1:
            raise context.error("default_action is needed: the policies %s" % (
                "mix allow and deny" if actions else "are empty"), path)
        defaultAction = DENY if actions == {ALLOW} else ALLOW
    return Rules(policies, defaultAction)
