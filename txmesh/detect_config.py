"""
The keys of protocol detection (``protocol: auto``) in mesh.yaml: the auto listener's ``detect`` map,
``detection_timeout`` and ``detection_max_bytes``, and the ``address: internal`` listeners it hands connections
to (docs/configuration.md "Protocol detection").

An auto listener has no routes or filters of its own: it names, per detected protocol, a listener declared with
``address: internal`` (not bound), whose every key (routes, filters, network filters, limits, http2) applies to
the connections handed to it, exactly as if they had come to a port of its own.  This is Envoy's listener with
several filter chains chosen by ``filter_chain_match`` (``transport_protocol``, ``application_protocols``) after
the tls_inspector and http_inspector listener filters, with each filter chain written as a listener.
"""

from dataclasses import dataclass

from txmesh.config_reader import joinPath
from txmesh.protocols.descriptor import ProtocolDescriptor

AUTO = "auto"
INTERNAL = "internal"

# the keys of ``detect``: the protocols detection tells apart, and the listener protocols each may hand to
# (gRPC starts with the HTTP/2 preface like any HTTP/2 connection: one target for both, of protocol http2 or grpc)
DETECT_TARGETS = {"http1": ("http1",), "http2": ("http2", "grpc"), "dubbo": ("dubbo",)}

AUTO_KEYS = ("name", "address", "protocol", "detect", "detection_timeout", "detection_max_bytes", "limits", "tls")

DEFAULT_TIMEOUT = 5.0
DEFAULT_MAX_BYTES = 64
_MIN_BYTES = 24  # the HTTP/2 preface (txmesh.protocols.auto.codec.MIN_BYTES)

# what ``lc.descriptor.name`` says of an auto listener (the admin API, the startup summary); it builds no factory
# through IProtocol: the service gives the auto factory its targets' factories (txmesh.protocols.auto.server)
AUTO_DESCRIPTOR = ProtocolDescriptor(AUTO, aliases=(), filterFamily=None)


@dataclass(frozen=True, slots=True)
class DetectConfig:
    """
    An auto listener's detection: ``targets`` ((protocol, listener name) pairs, protocol one of
    L{DETECT_TARGETS}), the time a connection has to be recognised (seconds, TLS handshake included) and the bytes
    read at most before a verdict.
    """

    targets: tuple
    timeout: float = DEFAULT_TIMEOUT
    maxBytes: int = DEFAULT_MAX_BYTES


def buildDetect(r, m, path):
    """
    The DetectConfig and ``limits.max_connections`` of the auto listener mapping ``m`` (names are checked
    against the other listeners by L{checkDetectTargets}).
    """
    for key in m:
        if key not in AUTO_KEYS:
            raise r.error("an auto listener takes only %s; '%s' belongs on the listeners its detect map names"
                          % (", ".join(AUTO_KEYS), key), joinPath(path, str(key)))
    dPath = joinPath(path, "detect")
    if m.get("detect") is None:
        raise r.error("missing required key 'detect' (protocol: listener name, for %s)"
                      % (", ".join(DETECT_TARGETS),), path)
    dm = r.mapping(m.get("detect"), dPath, optional=tuple(DETECT_TARGETS))
    targets = tuple((key, r.get(dm, dPath, key, str)) for key in DETECT_TARGETS if dm.get(key) is not None)
    if not targets:
        raise r.error("must name at least one listener (keys: %s)" % (", ".join(DETECT_TARGETS),), dPath)
    timeout = r.duration(m, path, "detection_timeout", DEFAULT_TIMEOUT)
    if not 0 < timeout <= 3600:
        raise r.error("must be above 0 and at most 1h", joinPath(path, "detection_timeout"))
    maxBytes = r.integer(m, path, "detection_max_bytes", DEFAULT_MAX_BYTES, _MIN_BYTES, 65536)
    lPath = joinPath(path, "limits")
    lm = r.mapping(m.get("limits"), lPath, optional=("max_connections",))
    return DetectConfig(targets, timeout, maxBytes), r.integer(lm, lPath, "max_connections", 0, 0)


def checkDetectTargets(r, listeners):
    """
    Every auto listener's targets exist, are internal and speak the protocol they are named for; every internal
    listener is some auto listener's target.  ``listeners``: the ListenerConfigs in file order.
    """
    byName = {lc.name: (i, lc) for i, lc in enumerate(listeners)}
    reached = set()
    for i, lc in enumerate(listeners):
        if lc.detect is None:
            continue
        for key, name in lc.detect.targets:
            where = "listeners[%d].detect.%s" % (i, key)
            found = byName.get(name)
            if found is None:
                raise r.error("unknown listener '%s' (listeners: %s)" % (name, ", ".join(sorted(byName))), where)
            target = found[1]
            if target.address != INTERNAL:
                raise r.error("listener '%s' must be declared with address: internal to be handed connections"
                              % (name,), where)
            if target.protocol not in DETECT_TARGETS[key]:
                raise r.error("listener '%s' speaks %s; %s connections need a listener of protocol %s"
                              % (name, target.protocol, key, " or ".join(DETECT_TARGETS[key])), where)
            reached.add(name)
    for i, lc in enumerate(listeners):
        if lc.address == INTERNAL and lc.name not in reached:
            raise r.error("listener '%s' is internal but no auto listener's detect map names it" % (lc.name,),
                          "listeners[%d].address" % (i,))
