"""
Path normalisation before routing and before any filter: Envoy's HttpConnectionManager ``normalize_path``,
``merge_slashes`` and ``path_with_escaped_slashes_action``, plus ``path_parameters`` (``;`` parameters), per HTTP
listener.  docs/security.md ("Path normalisation") has the table of what becomes of what, and why the defaults.

Sans-IO: L{normalizeTarget} takes a request target and gives the target to route and forward, or says to redirect,
or refuses it (L{PathRefused}).  L{PathNormalizer} is a listener's: it applies that to each request's head, counts
the outcomes, and tells the stream which local reply to send (400 or 307), if any.

The steps, on the path only (the query is left exactly as it came), in this order:

 1. escaped slashes, ``%2F`` and ``%5C`` in either case (``path_with_escaped_slashes_action``): kept as they are,
    refused (400), or unescaped to ``/`` and ``\\`` and then forwarded or answered with a redirect (307) to the
    normalised path;
 2. ``normalize_path``: a backslash is a slash (as Envoy's URL canonicaliser, Chromium's, treats it); every
    percent-escape is checked (a ``%`` without two hex digits, or ``%00``, is refused: 400), those of unreserved
    characters (RFC 3986 2.3) are decoded (``%61`` is ``a``, ``%2E`` is ``.``) and the hex of the others is
    upper-cased (RFC 3986 6.2.2.1);
 3. ``path_parameters``: the ``;`` parameters of each segment (``/admin;x``, ``/..;x/``) kept, stripped, or
    refused (400);
 4. ``merge_slashes``: each run of ``/`` becomes one;
 5. ``normalize_path``: dot segments are removed (RFC 3986 5.2.4): ``/a/./b``, ``/a/../b``, also where they came
    from ``%2E``; ``..`` above the root stays at the root.

Case is kept (``/ADMIN`` is not ``/admin``; a route says ``case_sensitive: false`` for that), as in Envoy.
"""

import re
from dataclasses import dataclass

from zope.interface import implementer

from txmesh.config_reader import joinPath
from txmesh.interfaces import IPathNormalizer

KEEP_UNCHANGED = "keep_unchanged"
REJECT_REQUEST = "reject_request"
UNESCAPE_AND_REDIRECT = "unescape_and_redirect"
UNESCAPE_AND_FORWARD = "unescape_and_forward"
ESCAPED_SLASH_ACTIONS = (KEEP_UNCHANGED, REJECT_REQUEST, UNESCAPE_AND_REDIRECT, UNESCAPE_AND_FORWARD)

KEEP, STRIP, REJECT = "keep", "strip", "reject"
PARAMETER_ACTIONS = (KEEP, STRIP, REJECT)

# the listener keys, Envoy's names where Envoy has the knob
KEYS = ("normalize_path", "merge_slashes", "path_with_escaped_slashes_action", "path_parameters")

# the filter families whose requests have a path to normalise (HTTP/1.1, HTTP/2 and gRPC listeners)
_FAMILIES = frozenset({"http", "grpc"})

# The fast path: a target whose path has no '%', '\', ';', '/.' or '//' needs nothing (the common case, one C call:
# a full match of the segments; the query after '?' may hold anything).  Some paths it sends the slow way come out
# unchanged ('/.well-known'); none it lets through could change.  A full match costs about half of a search for the
# same characters (callgrind: ~6,000 against ~9,700 machine instructions on a six-segment path).
PLAIN = re.compile(rb"(?:/[^/.%\\;?][^/%\\;?]*)*/?(?:\?.*)?", re.S).fullmatch
_ESCAPED_SLASH = re.compile(rb"%(?:2[fF]|5[cC])")
_BAD_ESCAPE = re.compile(rb"%(?![0-9A-Fa-f]{2})|%00").search
_ESCAPE = re.compile(rb"%([0-9A-Fa-f]{2})")
_PARAMETERS = re.compile(rb";[^/]*")
_SLASHES = re.compile(rb"//+")

_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def _escapeTable():
    """{two hex digits as sent (any case): what they become}: the unreserved byte, else ``%XX`` upper-cased."""
    table = {}
    for value in range(256):
        upper = b"%02X" % value
        out = bytes([value]) if value in _UNRESERVED else b"%" + upper
        for hi in {upper[:1], upper[:1].lower()}:
            for lo in {upper[1:], upper[1:].lower()}:
                table[hi + lo] = out
    return table


_ESCAPES = _escapeTable()


def _normalEscape(match):
    return _ESCAPES[match.group(1)]


def _unescapeSlash(match):
    return b"/" if match.group(0)[1] == 0x32 else b"\\"  # %2F -> '/', %5C -> '\'


class PathRefused(ValueError):
    """A request target normalisation refuses (400); ``str()`` says why, for the reply's body."""


@dataclass(frozen=True, slots=True)
class PathNormalization:
    """
    A listener's normalisation settings (see the module docstring).  The defaults are the safe ones:
    docs/security.md says why.
    """

    normalizePath: bool = True
    mergeSlashes: bool = True
    escapedSlashes: str = UNESCAPE_AND_REDIRECT
    pathParameters: str = STRIP

    @property
    def changesNothing(self):
        """True when every step is off: the listener needs no normaliser at all."""
        return (not self.normalizePath and not self.mergeSlashes and self.escapedSlashes == KEEP_UNCHANGED
                and self.pathParameters == KEEP)


def buildPathNormalization(r, m, path, descriptor):
    """
    The PathNormalization of the listener mapping ``m`` at ``path`` (its keys are validated here), or None for a
    listener whose protocol has no paths (Dubbo), where any of the keys is an error.
    """
    if descriptor.filterFamily not in _FAMILIES:
        for key in KEYS:
            if key in m:
                raise r.error("only HTTP listeners (http1, http2, grpc) normalise paths (this one is '%s')"
                              % (descriptor.name,), joinPath(path, key))
        return None
    d = PathNormalization()
    action = r.get(m, path, "path_with_escaped_slashes_action", str, d.escapedSlashes)
    if action not in ESCAPED_SLASH_ACTIONS:
        raise r.error("must be one of %s, not '%s'" % (", ".join(ESCAPED_SLASH_ACTIONS), action),
                      joinPath(path, "path_with_escaped_slashes_action"))
    parameters = r.get(m, path, "path_parameters", str, d.pathParameters)
    if parameters not in PARAMETER_ACTIONS:
        raise r.error("must be one of %s, not '%s'" % (", ".join(PARAMETER_ACTIONS), parameters),
                      joinPath(path, "path_parameters"))
    return PathNormalization(normalizePath=r.get(m, path, "normalize_path", bool, d.normalizePath),
                             mergeSlashes=r.get(m, path, "merge_slashes", bool, d.mergeSlashes),
                             escapedSlashes=action, pathParameters=parameters)


def normalizeTarget(target, settings):
    """
    Normalise the origin-form request target ``target`` (bytes, starting with ``/``; the query, from the first
    ``?``, is kept as it is) as ``settings`` (a L{PathNormalization}) say.

    @return: (the target to route and forward, whether escaped slashes were unescaped): with
        ``unescape_and_redirect``, a true second item means "answer with a redirect to this target".
    @raise PathRefused: the target is refused (400).
    """
    q = target.find(b"?")
    if q < 0:
        path, query = target, b""
    else:
        path, query = target[:q], target[q:]
    if PLAIN(path) is not None:
        return target, False
    unescaped = False
    action = settings.escapedSlashes
    if action != KEEP_UNCHANGED and _ESCAPED_SLASH.search(path) is not None:
        if action == REJECT_REQUEST:
            raise PathRefused("escaped slash (%2F or %5C) in the path")
        path = _ESCAPED_SLASH.sub(_unescapeSlash, path)
        unescaped = True
    if settings.normalizePath:
        if b"\\" in path:
            path = path.replace(b"\\", b"/")
        if b"%" in path:
            if _BAD_ESCAPE(path) is not None:
                raise PathRefused("malformed percent-escape or %00 in the path")
            path = _ESCAPE.sub(_normalEscape, path)
    if b";" in path and settings.pathParameters != KEEP:
        if settings.pathParameters == REJECT:
            raise PathRefused("';' parameters in the path")
        path = _PARAMETERS.sub(b"", path)
    if settings.mergeSlashes and b"//" in path:
        path = _SLASHES.sub(b"/", path)
    if settings.normalizePath and b"/." in path:
        path = removeDotSegments(path)
    return path + query, unescaped


def removeDotSegments(path):
    """
    RFC 3986 5.2.4 on an absolute path (bytes starting with ``/``): ``.`` segments go, ``..`` takes the segment
    before it (none above the root); a path ending in a dot segment ends with ``/``.
    """
    out = []
    segments = path.split(b"/")
    last = len(segments) - 1
    for i in range(1, last + 1):
        s = segments[i]
        if s == b"..":
            if out:
                out.pop()
        elif s != b".":
            out.append(s)
            continue
        if i == last:
            out.append(b"")
    return b"/" + b"/".join(out)


def _isGrpc(request):
    if request.protocol == "grpc":
        return True
    ct = request.headers.get(b"content-type")
    return ct is not None and ct.startswith(b"application/grpc")


@implementer(IPathNormalizer)
class PathNormalizer:
    """
    One listener's path normalisation (L{IPathNormalizer}): the settings, and the listener's counters
    ``downstream_rq_path_normalized`` (forwarded with a changed path), ``downstream_rq_redirected_with_normalized_path``
    and ``downstream_rq_failed_path_normalization`` (refused; Envoy's names for the last two).
    """

    def __init__(self, settings, stats, listener):
        self.settings = settings
        s = stats.scope(listener=listener)
        self.normalized = s.counter("downstream_rq_path_normalized",
                                    help="Requests forwarded with the path normalisation changed")
        self.redirected = s.counter("downstream_rq_redirected_with_normalized_path",
                                    help="Requests answered 307 to the path without escaped slashes")
        self.failed = s.counter("downstream_rq_failed_path_normalization",
                                help="Requests refused (400) for their path")

    plain = staticmethod(PLAIN)

    def normalize(self, request, streamInfo):
        target = request.path
        if target[:1] != b"/" or PLAIN(target) is not None:
            return None
        try:
            new, unescaped = normalizeTarget(target, self.settings)
            if unescaped and self.settings.escapedSlashes == UNESCAPE_AND_REDIRECT and _isGrpc(request):
                raise PathRefused("escaped slash (%2F or %5C) in the path of a gRPC call, which cannot be redirected")
        except PathRefused as e:
            self.failed.inc()
            return 400, ("invalid path: %s\n" % (e,)).encode("ascii"), (), "path_normalization_failed"
        if unescaped and self.settings.escapedSlashes == UNESCAPE_AND_REDIRECT:
            self.redirected.inc()
            return 307, b"", ((b"location", new),), None
        if new != target:
            self.normalized.inc()
            streamInfo.metadata["original_path"] = target
            request.path = new
        return None


def pathNormalizerFor(listenerConfig, stats):
    """The L{PathNormalizer} of a listener, or None when it normalises nothing (Dubbo, or every step off)."""
    settings = listenerConfig.pathNormalization
    if settings is None or settings.changesNothing:
        return None
    return PathNormalizer(settings, stats, listenerConfig.name)
