"""
The ``header_mutation`` stream filter: add and remove request and response headers, as Envoy's
``request_headers_to_add`` / ``request_headers_to_remove`` / ``response_headers_to_*``.

Values may use a few Envoy variables: ``%DOWNSTREAM_REMOTE_ADDRESS%``, ``%START_TIME%``, ``%PROTOCOL%``,
``%UPSTREAM_HOST%`` (response side only), ``%REQ(name)%``; ``%%`` is a literal percent sign.  Values are compiled
once, at load: a plain value is stored as bytes and costs nothing per request, a templated one is a tuple of parts.
A templated value that renders empty is not added (as Envoy does); removals run before additions.
"""

import re

import attrs
from twisted.plugin import IPlugin
from zope.interface import implementer

from txmesh.filters.access_log import isoTime, protocolName
from txmesh.interfaces import (FilterStatus, IFilterFactory, IStreamDecoderFilter, IStreamEncoderFilter,
                               IStreamFilterEvents, StreamEvents)

# Names a filter must not touch: pseudo-headers live on RequestHead attributes, hop-by-hop fields belong to the
# codecs (the authority is RequestHead.authority).
FORBIDDEN = frozenset({b"host", b"connection", b"transfer-encoding", b"content-length", b"te", b"upgrade",
                       b"keep-alive"})

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_VARIABLE = re.compile(r"%([A-Z_]+)(?:\(([^()%]*)\))?%")
_KEYS = ("request_headers_to_add", "request_headers_to_remove", "response_headers_to_add",
         "response_headers_to_remove")
_ENTRY_KEYS = frozenset({"name", "value", "append"})


def _downstreamAddress(info, request):
    return (info.downstreamPeer or "").encode("ascii", "replace")


def _startTime(info, request):
    return isoTime(info.startTime).encode("ascii")


def _protocol(info, request):
    return protocolName(info.protocol).encode("ascii")


def _upstreamHost(info, request):
    return (info.upstreamHost or "").encode("ascii", "replace")


_SIMPLE_VARIABLES = {
    "DOWNSTREAM_REMOTE_ADDRESS": _downstreamAddress,
    "START_TIME": _startTime,
    "PROTOCOL": _protocol,
    "UPSTREAM_HOST": _upstreamHost,
}
_REQUEST_PSEUDO = {
    ":authority": lambda info, request: request.authority,
    "host": lambda info, request: request.authority,
    ":path": lambda info, request: request.path,
    ":method": lambda info, request: request.method,
}


def _requestHeader(name):
    def render(info, request):
        if request is None:
            return b""
        return request.headers.get(name, b"")
    return render


def compileValue(value, responseSide):
    """
    Compile a configured value: bytes when it has no variable, else a tuple of parts (bytes, or callables
    ``(streamInfo, request) -> bytes``).
    @raise ValueError: naming the bad variable.
    """
    if "%" not in value:
        return value.encode("utf-8")
    parts = []
    literal = ""
    i = 0
    n = len(value)
    while i < n:
        j = value.find("%", i)
        if j < 0:
            literal += value[i:]
            break
        literal += value[i:j]
        if value.startswith("%%", j):
            literal += "%"
            i = j + 2
            continue
        m = _VARIABLE.match(value, j)
        if m is None:
            raise ValueError("bad variable at %r (a literal percent sign is written %%%%)" % (value[j:],))
        var, arg = m.group(1), m.group(2)
        if var == "REQ" and arg:
            arg = arg.strip().lower()
            render = _REQUEST_PSEUDO.get(arg)
            if render is None:
                if not _TOKEN.match(arg):
                    raise ValueError("bad header name in %%REQ(%s)%%" % (arg,))
                render = _requestHeader(arg.encode("ascii"))
        elif arg is None and var in _SIMPLE_VARIABLES:
            if var == "UPSTREAM_HOST" and not responseSide:
                raise ValueError("%UPSTREAM_HOST% is only known on the response side")
            render = _SIMPLE_VARIABLES[var]
        else:
            raise ValueError("unknown variable %s (known: %%DOWNSTREAM_REMOTE_ADDRESS%%, %%START_TIME%%, "
                             "%%PROTOCOL%%, %%UPSTREAM_HOST%%, %%REQ(name)%%)" % (m.group(0),))
        if literal:
            parts.append(literal.encode("utf-8"))
            literal = ""
        parts.append(render)
        i = m.end()
    if literal:
        parts.append(literal.encode("utf-8"))
    if all(isinstance(p, bytes) for p in parts):
        return b"".join(parts)
    return tuple(parts)


def render(parts, info, request):
    """Render a compiled template (a tuple from compileValue)."""
    return b"".join([p if p.__class__ is bytes else p(info, request) for p in parts])


def _usesRequest(adds):
    """Whether any templated value reads the request (so the response side needs the decoder callbacks)."""
    for _, value, _ in adds:
        if value.__class__ is tuple:
            for p in value:
                if p.__class__ is not bytes and p not in _SIMPLE_VARIABLES.values():
                    return True
    return False


@attrs.frozen
class HeaderMutationConfig:
    """
    Compiled mutations: ``*Remove`` frozensets of lower-case bytes names; ``*Add`` tuples of
    ``(name, value, append)`` where value is bytes (plain) or a tuple of parts (templated).
    """

    requestRemove: frozenset
    requestAdd: tuple
    responseRemove: frozenset
    responseAdd: tuple
    responseNeedsRequest: bool


def _apply(headers, remove, adds, info, request):
    if remove:
        headers.removeMany(remove)
    for name, value, append in adds:
        if value.__class__ is not bytes:
            value = render(value, info, request)
            if not value:
                continue
        if append:
            headers.add(name, value)
        else:
            headers.set(name, value)


@implementer(IStreamDecoderFilter, IStreamEncoderFilter, IStreamFilterEvents)
class HeaderMutationFilter:
    """Per-stream: applies the request mutations on decodeHeaders and the response ones on encodeHeaders."""

    streamEvents = (StreamEvents.DECODE_HEADERS | StreamEvents.ENCODE_HEADERS | StreamEvents.DECODER_CALLBACKS
                    | StreamEvents.ENCODER_CALLBACKS)

    __slots__ = ("config", "decoderCallbacks", "encoderCallbacks")

    def __init__(self, config):
        self.config = config
        self.decoderCallbacks = None
        self.encoderCallbacks = None

    def setDecoderFilterCallbacks(self, callbacks):
        self.decoderCallbacks = callbacks

    def setEncoderFilterCallbacks(self, callbacks):
        self.encoderCallbacks = callbacks

    def decodeHeaders(self, request, endStream):
        config = self.config
        if config.requestRemove or config.requestAdd:
            cb = self.decoderCallbacks
            _apply(request.headers, config.requestRemove, config.requestAdd, cb.streamInfo, request)
            # routing may look at the headers just changed
            cb.clearRouteCache()
        return FilterStatus.CONTINUE

    def decodeData(self, data, endStream):
        return FilterStatus.CONTINUE

    def decodeTrailers(self, trailers):
        return FilterStatus.CONTINUE

    def encodeHeaders(self, response, endStream):
        config = self.config
        if config.responseRemove or config.responseAdd:
            dcb = self.decoderCallbacks
            request = dcb.request if dcb is not None else None
            _apply(response.headers, config.responseRemove, config.responseAdd,
                   self.encoderCallbacks.streamInfo, request)
        return FilterStatus.CONTINUE

    def encodeData(self, data, endStream):
        return FilterStatus.CONTINUE

    def encodeTrailers(self, trailers):
        return FilterStatus.CONTINUE

    def onStreamReset(self, reason):
        pass

    def onStreamComplete(self):
        pass


@implementer(IFilterFactory, IPlugin)
class HeaderMutationFactory:
    """The ``header_mutation`` filter kind; see the module docstring for its config."""

    name = "header_mutation"
    kind = "stream"
    protocols = frozenset({"http", "grpc"})
    terminal = False

    def buildConfig(self, raw, context):
        """
        Validate and compile ``raw``.
        @raise txmesh.errors.ConfigError: naming the key path, e.g. ``request_headers_to_add[0].name``.
        """
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise context.error("header_mutation config must be a mapping")
        for key in raw:
            if key not in _KEYS:
                raise context.error("unknown key (expected one of: %s)" % ", ".join(_KEYS), str(key))
        requestAdd = self._adds(raw, "request_headers_to_add", False, context)
        responseAdd = self._adds(raw, "response_headers_to_add", True, context)
        return HeaderMutationConfig(
            requestRemove=self._removes(raw, "request_headers_to_remove", context),
            requestAdd=requestAdd,
            responseRemove=self._removes(raw, "response_headers_to_remove", context),
            responseAdd=responseAdd,
            responseNeedsRequest=_usesRequest(responseAdd),
        )

    @staticmethod
    def _name(name, path, context):
        if not isinstance(name, str) or not name:
            raise context.error("must be a header name", path)
        if name.startswith(":"):
            raise context.error("pseudo-header %r cannot be changed by header_mutation" % (name,), path)
        if not _TOKEN.match(name):
            raise context.error("%r is not a valid header name" % (name,), path)
        lowered = name.lower().encode("ascii")
        if lowered in FORBIDDEN:
            raise context.error("%r is a connection-level header the proxy manages; it cannot be changed"
                                % (name,), path)
        return lowered

    def _removes(self, raw, key, context):
        names = raw.get(key) or []
        if not isinstance(names, list):
            raise context.error("must be a list of header names", key)
        return frozenset(self._name(n, "%s[%d]" % (key, i), context) for i, n in enumerate(names))

    def _adds(self, raw, key, responseSide, context):
        entries = raw.get(key) or []
        if not isinstance(entries, list):
            raise context.error("must be a list of {name, value, append} entries", key)
        out = []
        for i, entry in enumerate(entries):
            where = "%s[%d]" % (key, i)
            if not isinstance(entry, dict):
                raise context.error("must be a mapping with name and value", where)
            for k in entry:
                if k not in _ENTRY_KEYS:
                    raise context.error("unknown key (expected name, value, append)", "%s.%s" % (where, k))
            name = self._name(entry.get("name"), where + ".name", context)
            value = entry.get("value")
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                value = str(value)
            if not isinstance(value, str):
                raise context.error("must be a string", where + ".value")
            if "\r" in value or "\n" in value or "\0" in value:
                raise context.error("must not contain CR, LF or NUL", where + ".value")
            append = entry.get("append", True)
            if not isinstance(append, bool):
                raise context.error("must be true or false", where + ".append")
            try:
                compiled = compileValue(value, responseSide)
            except ValueError as e:
                raise context.error(str(e), where + ".value")
            out.append((name, compiled, append))
        return tuple(out)

    def createFilters(self, config, callbacks, runtime):
        onRequest = bool(config.requestRemove or config.requestAdd)
        onResponse = bool(config.responseRemove or config.responseAdd)
        if onResponse and (onRequest or config.responseNeedsRequest):
            callbacks.addStreamFilter(HeaderMutationFilter(config))
        elif onRequest:
            callbacks.addStreamDecoderFilter(HeaderMutationFilter(config))
        elif onResponse:
            callbacks.addStreamEncoderFilter(HeaderMutationFilter(config))
