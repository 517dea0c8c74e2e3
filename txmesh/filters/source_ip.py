"""
The ``source_ip`` network filter: allow or deny connections by the peer's address (Envoy does this with an
RBAC network filter on ``direct_remote_ip``).

config: ``allow`` and ``deny``, lists of CIDR ranges (``10.0.0.0/8``, ``2001:db8::/32``; a bare address is a
range of one), at least one of them non-empty.  A peer in a ``deny`` range is refused; otherwise, when ``allow`` is
given, a peer outside every ``allow`` range is refused.  Deny wins.  An IPv4-mapped IPv6 peer (``::ffff:10.0.0.1``
on a dual-stack listener) is matched as its IPv4 address; a peer without an IP address (a UNIX socket) matches no
range.  A refused connection is closed at once, before the protocol sees it.  Counters, labelled ``listener``:
``source_ip_allowed``, ``source_ip_denied``.
"""

import ipaddress
from dataclasses import dataclass

from twisted.plugin import IPlugin
from zope.interface import implementer

from txmesh.config_reader import checkFilterKeys
from txmesh.filters.network import AdmissionFilter
from txmesh.interfaces import IFilterFactory

_KEYS = ("allow", "deny")


@dataclass(frozen=True, slots=True)
class SourceIPConfig:
    """``allow``/``deny``: tuples of ipaddress networks; ``allow`` empty means every peer not denied."""

    allow: tuple
    deny: tuple

    def permits(self, host):
        """Whether a peer with address ``host`` (str, or None when it has none) may connect."""
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return not self.allow
        if ip.version == 6 and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        for net in self.deny:
            if ip in net:
                return False
        if not self.allow:
            return True
        for net in self.allow:
            if ip in net:
                return True
        return False


class SourceIPFilter(AdmissionFilter):
    """One connection's instance: lets it through or closes it at once."""

    __slots__ = ()

    admitted = ("source_ip_allowed", "Connections source_ip let through")
    refused = ("source_ip_denied", "Connections source_ip refused")

    def admit(self, connection):
        return self.config.permits(getattr(connection.peer, "host", None))


@implementer(IFilterFactory, IPlugin)
class SourceIPFactory:
    """The ``source_ip`` network filter kind; see the module docstring."""

    name = "source_ip"
    kind = "network"
    protocols = frozenset({"http", "grpc", "dubbo"})
    terminal = False

    def buildConfig(self, raw, context):
        """@raise txmesh.errors.ConfigError: for an unknown key, a range that does not parse, or no range at all."""
        checkFilterKeys(raw, _KEYS, context)
        allow = self._ranges(raw, "allow", context)
        deny = self._ranges(raw, "deny", context)
        if not allow and not deny:
            raise context.error("needs a non-empty allow or deny list")
        return SourceIPConfig(allow, deny)

    @staticmethod
    def _ranges(raw, key, context):
        items = raw.get(key)
        if items is None:
            return ()
        if not isinstance(items, list):
            raise context.error("must be a list of CIDR ranges", key)
        nets = []
        for i, item in enumerate(items):
            where = "%s[%d]" % (key, i)
            if not isinstance(item, str):
                raise context.error("must be a CIDR range like 10.0.0.0/8 or 2001:db8::/32", where)
            try:
                nets.append(ipaddress.ip_network(item.strip()))
            except ValueError as e:
                raise context.error("not a CIDR range: %s" % (e,), where) from None
        return tuple(nets)

    def createFilters(self, config, callbacks, runtime):
        callbacks.addReadFilter(SourceIPFilter(config, runtime))
