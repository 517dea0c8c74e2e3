"""
Which upgrades and tunnels a listener and its routes allow (Envoy's ``upgrade_configs``), read once at load.

A listener's ``upgrade_configs`` (``[{upgrade_type: websocket, enabled: true}]``) says which ``Upgrade`` values its
routes forward as tunnels; a route's ``route.upgrade_configs`` overrides it per type (``enabled: false`` refuses a
type the listener allows; ``enabled: true`` allows one the listener does not name), as Envoy's
``createUpgradeFilterChain`` decides.  ``upgrade_type: CONNECT`` is HTTP CONNECT: it needs a route whose match is
``connect_matcher: {}``.  Each route's ClusterAction keeps the resulting set (``upgrades``: lower-case bytes,
``b"connect"`` for CONNECT), so the router needs one set lookup per upgrade request.
"""

import re

CONNECT = b"connect"
# the two kinds of tunnel (txmesh.protocols.tunnel): an HTTP/1.1 upgrade answered by 101, and CONNECT's TCP tunnel
UPGRADE_TUNNEL, CONNECT_TUNNEL = "upgrade", "connect"
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
UPGRADE_LISTENER_PROTOCOLS = frozenset({"http1", "http2"})


def buildUpgradeConfigs(r, m, path, key="upgrade_configs"):
    """
    ``upgrade_configs`` of a listener or a route action: a tuple of (upgrade type as lower-case bytes, enabled),
    in order, each type once.
    """
    out = []
    seen = {}
    kPath = "%s.%s" % (path, key) if path else key
    for i, u in enumerate(r.list(m, path, key)):
        uPath = "%s[%d]" % (kPath, i)
        r.mapping(u, uPath, required=("upgrade_type",), optional=("enabled",))
        value = r.get(u, uPath, "upgrade_type", str)
        if not _TOKEN.match(value):
            raise r.error("invalid upgrade_type %r: an HTTP token such as websocket or CONNECT" % (value,),
                          uPath + ".upgrade_type")
        kind = value.lower().encode("ascii")
        if kind in seen:
            raise r.error("upgrade_type '%s' is already in %s" % (value, seen[kind]), uPath + ".upgrade_type")
        seen[kind] = uPath
        out.append((kind, r.get(u, uPath, "enabled", bool, True)))
    return tuple(out)


def allowedUpgrades(listenerUpgrades, routeUpgrades=()):
    """
    The upgrade types a route forwards: the listener's enabled ones, then the route's entries override per type.
    @return: a frozenset of lower-case bytes.
    """
    allowed = {kind for kind, enabled in listenerUpgrades if enabled}
    for kind, enabled in routeUpgrades:
        if enabled:
            allowed.add(kind)
        else:
            allowed.discard(kind)
    return frozenset(allowed)


def upgradeToken(value):
    """The upgrade type an ``Upgrade`` field value asks for, as the allowed sets hold them (lower case, trimmed)."""
    return value.strip(b" \t").lower()
