"""
The request's hash key for ring_hash and maglev, from the route's hash policies (txmesh.routing.HashPolicy).

Each policy that finds its value gives a 64-bit hash; they combine as in Envoy (``key = rotl(key, 1) ^ hash``, so
two equal rules do not cancel out), and a ``terminal`` policy that found a value ends the list.  No policy finding
a value gives None: the balancer then picks at random.

Where each kind looks:
- ``header``: the request's header fields (gRPC metadata are header fields; so are Dubbo's string attachments); a
  header repeated hashes all its values, sorted, so the order they came in does not matter.
- ``cookie``: the first ``cookie`` field pair with that name; the value as sent (not URL-decoded).
- ``source_ip``: the downstream connection's peer IP (``streamInfo.downstreamPeer`` without the port; not an
  address from ``x-forwarded-for``).
- ``query_parameter``: the first parameter of that name in the request target's query, as sent (not decoded);
  a parameter without ``=`` has the empty value.
- ``dubbo_attachment``: the string attachment of that name (Dubbo requests only; attachments are the request's
  header fields there, names lower-cased).
"""

from txmesh.upstream.lb_hash import hash64

_MASK64 = (1 << 64) - 1
_COOKIE = b"cookie"


def requestHash(policies, request, streamInfo):
    """The 64-bit hash key of ``request`` (a RequestHead) under ``policies`` (HashPolicy tuple), or None."""
    key = None
    for policy in policies:
        value = _HASHERS[policy.kind](policy.name, request, streamInfo)
        if value is not None:
            key = value if key is None else (((key << 1) | (key >> 63)) & _MASK64) ^ value
            if policy.terminal:
                break
    return key


def _header(name, request, streamInfo):
    values = request.headers.getAll(name)
    if not values:
        return None
    if len(values) == 1:
        return hash64(values[0])
    return hash64(b"\x00".join(sorted(values)))


def _cookie(name, request, streamInfo):
    for field in request.headers.getAll(_COOKIE):
        for pair in field.split(b";"):
            k, eq, v = pair.strip().partition(b"=")
            if eq and k == name:
                return hash64(v)
    return None


def _sourceIP(name, request, streamInfo):
    peer = streamInfo.downstreamPeer if streamInfo is not None else ""
    if not peer:
        return None
    ip, colon, _ = peer.rpartition(":")  # the listener writes "host:port" (IPv6 hosts without brackets)
    return hash64((ip if colon else peer).encode("ascii", "replace"))


def _queryParameter(name, request, streamInfo):
    path = request.path
    q = path.find(b"?")
    if q < 0:
        return None
    end = path.find(b"#", q)
    query = path[q + 1:] if end < 0 else path[q + 1:end]
    for pair in query.split(b"&"):
        k, _, v = pair.partition(b"=")
        if k == name:
            return hash64(v)
    return None


def _dubboAttachment(name, request, streamInfo):
    if request.protocol != "dubbo":
        return None
    return _header(name, request, streamInfo)


_HASHERS = {
    "header": _header,
    "cookie": _cookie,
    "source_ip": _sourceIP,
    "query_parameter": _queryParameter,
    "dubbo_attachment": _dubboAttachment,
}
