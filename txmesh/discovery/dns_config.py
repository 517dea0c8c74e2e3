"""
The ``dns`` discovery source's keys (``clusters[].discovery`` of ``type: dns``), validated at load into a frozen
L{DNSConfig} (docs/configuration.md, ``#### dns``).  The source itself is txmesh.discovery.dns.
"""

import ipaddress
from dataclasses import dataclass

from txmesh.config import EndpointConfig
from txmesh.config_reader import Reader, hostPort, joinPath

MODES = ("strict", "logical")
# Envoy's DnsLookupFamily, lowercased: auto asks AAAA first and falls back to A, v4_preferred the other way round
LOOKUP_FAMILIES = ("v4_only", "v6_only", "v4_preferred", "auto", "all")
KEYS = ("mode", "hosts", "lookup_family", "refresh_rate", "respect_dns_ttl", "min_ttl", "max_ttl",
        "failure_refresh_rate", "timeout", "resolvers", "resolv_conf", "hosts_file")
# Twisted's own retransmission schedule (client.Resolver's default), cut to fit a source's ``timeout``
_RETRANSMITS = (1.0, 3.0, 11.0, 45.0)


@dataclass(frozen=True, slots=True)
class DNSConfig:
    """``clusters[].discovery`` of ``type: dns`` (times in seconds); see docs/configuration.md, ``#### dns``."""

    # the ``hosts`` entries as txmesh.config.EndpointConfig templates: ``host`` is the name to resolve (lowercased,
    # without a trailing dot) or an address literal; each address found becomes a copy with that address as host
    targets: tuple
    mode: str = "strict"
    lookupFamily: str = "v4_preferred"
    refreshRate: float = 5.0
    respectDnsTtl: bool = True
    minTtl: float = 5.0
    maxTtl: float = 300.0
    failureBaseInterval: float = 5.0
    failureMaxInterval: float = 50.0
    timeout: float = 5.0
    resolvers: tuple = ()  # ((ip, port), ...): overrides resolv.conf's nameservers
    resolvConf: str = "/etc/resolv.conf"
    hostsFile: str = "/etc/hosts"  # "" consults no hosts file

    def retransmits(self):
        """The per-try timeouts handed to client.Resolver: Twisted's schedule, summing to ``timeout``."""
        out, left = [], self.timeout
        for t in _RETRANSMITS:
            if left <= 0:
                break
            out.append(min(t, left))
            left -= t
        return tuple(out)


class _ContextReader(Reader):
    """The Reader API over a discovery entry's keys: errors name the file, the line and the full key path."""

    def __init__(self, context):
        super().__init__(context.filename, {})
        self.context = context

    def lineOf(self, path):
        return self.context.lineOf(path)


def _literal(name):
    try:
        return str(ipaddress.ip_address(name))
    except ValueError:
        return None


def _checkName(r, name, path):
    labels = name.rstrip(".").split(".")
    if len(name) > 253 or not all(0 < len(label) <= 63 and label.isascii() and all(
            c.isalnum() or c in "-_" for c in label) for label in labels):
        raise r.error("invalid DNS name '%s' (letters, digits, '-', '_' in dot-separated labels)" % (name,), path)


def _target(r, raw, path):
    if isinstance(raw, dict):
        r.mapping(raw, path, required=("address",), optional=("weight", "priority", "locality"))
        aPath = joinPath(path, "address")
        name, port = hostPort(r, r.get(raw, path, "address", str), aPath)
        weight = r.integer(raw, path, "weight", 1, 1, 128)
        priority = r.integer(raw, path, "priority", 0, 0, 127)
        locality = r.get(raw, path, "locality", str, "")
    else:
        aPath = path
        name, port = hostPort(r, r.check(raw, path, str), path)
        weight, priority, locality = 1, 0, ""
    literal = _literal(name)
    if literal is None:
        _checkName(r, name, aPath)
    return EndpointConfig(literal or name.rstrip(".").lower(), port, weight, priority, locality)


def _resolver(r, raw, path):
    """A DNS server: ``ip``, ``ip:port``, ``[v6]:port`` or a bare IPv6 address (port 53 when none is given)."""
    if _literal(raw) is not None:
        return _literal(raw), 53
    host, port = hostPort(r, raw, path)
    if _literal(host) is None:
        raise r.error("must be an IP address, optionally with :port (a DNS server, not a name to resolve)", path)
    return _literal(host), port


def buildDNSConfig(raw, context):
    """The ``dns`` source's keys, validated.  @raise txmesh.errors.ConfigError: naming file, line and key path."""
    r, path = _ContextReader(context), context.keyPath
    mode = r.get(raw, path, "mode", str, "strict")
    if mode not in MODES:
        raise r.error("unknown mode '%s' (known: %s)" % (mode, ", ".join(MODES)), joinPath(path, "mode"))
    family = r.get(raw, path, "lookup_family", str, "v4_preferred")
    if family not in LOOKUP_FAMILIES:
        raise r.error("unknown lookup_family '%s' (known: %s)" % (family, ", ".join(LOOKUP_FAMILIES)),
                      joinPath(path, "lookup_family"))
    hostsList = r.list(raw, path, "hosts")
    if not hostsList:
        raise r.error("must list at least one name:port to resolve", joinPath(path, "hosts"))
    targets, seen = [], {}
    for i, item in enumerate(hostsList):
        iPath = "%s.hosts[%d]" % (path, i)
        target = _target(r, item, iPath)
        if (target.host, target.port) in seen:
            raise r.error("duplicate host '%s:%d' (also %s)" % (target.host, target.port, seen[(
                target.host, target.port)]), iPath)
        seen[(target.host, target.port)] = iPath
        targets.append(target)
    refresh = r.duration(raw, path, "refresh_rate", 5.0)
    minTtl = r.duration(raw, path, "min_ttl", 5.0)
    maxTtl = r.duration(raw, path, "max_ttl", 300.0)
    timeout = r.duration(raw, path, "timeout", 5.0)
    for key, value in (("refresh_rate", refresh), ("min_ttl", minTtl), ("timeout", timeout)):
        if value < 0.01:
            raise r.error("must be at least 10ms", joinPath(path, key))
    if maxTtl < minTtl:
        raise r.error("must be >= min_ttl (%gs)" % (minTtl,), joinPath(path, "max_ttl"))
    base, maximum = _failureRefreshRate(r, raw, path, refresh)
    resolvers = tuple(_resolver(r, r.check(s, "%s.resolvers[%d]" % (path, i), str), "%s.resolvers[%d]" % (path, i))
                      for i, s in enumerate(r.list(raw, path, "resolvers")))
    return DNSConfig(
        targets=tuple(targets), mode=mode, lookupFamily=family, refreshRate=refresh,
        respectDnsTtl=r.get(raw, path, "respect_dns_ttl", bool, True), minTtl=minTtl, maxTtl=maxTtl,
        failureBaseInterval=base, failureMaxInterval=maximum, timeout=timeout, resolvers=resolvers,
        resolvConf=r.get(raw, path, "resolv_conf", str, "/etc/resolv.conf"),
        hostsFile=r.get(raw, path, "hosts_file", str, "/etc/hosts"))


def _failureRefreshRate(r, raw, path, refresh):
    """Envoy's ``dns_failure_refresh_rate``: {base_interval, max_interval (default 10 x base)}, or a duration."""
    fPath = joinPath(path, "failure_refresh_rate")
    value = raw.get("failure_refresh_rate")
    if value is None:
        return refresh, refresh * 10
    if isinstance(value, dict):
        r.mapping(value, fPath, required=("base_interval",), optional=("max_interval",))
        base = r.duration(value, fPath, "base_interval", refresh)
        maximum = r.duration(value, fPath, "max_interval", base * 10)
    else:
        base = r.duration(raw, path, "failure_refresh_rate", refresh)
        maximum = base * 10
    if base < 0.01:
        raise r.error("base_interval must be at least 10ms", fPath)
    if maximum < base:
        raise r.error("max_interval must be >= base_interval (%gs)" % (base,), fPath)
    return base, maximum
