"""
Trace context on the wire, sans-IO: W3C Trace Context (``traceparent``, ``tracestate``) and Zipkin's B3 (the single
``b3`` field and the ``x-b3-*`` fields) read from and written to a request's HeaderMap, which is where HTTP/1.1 and
HTTP/2 header fields, gRPC metadata and Dubbo attachments all are (docs/tracing.md).

Reading never raises: a malformed context is no context, and the sidecar starts a new trace (W3C Trace Context
section 4.3: an invalid ``traceparent`` restarts the trace and its ``tracestate`` is dropped; B3: Brave's
extractor returns an empty context for malformed fields).  The rules are the specs': lower-case hex only, no
all-zero ids, version ``ff`` invalid, a version-00 ``traceparent`` exactly 55 characters, later versions read by
their first four fields; ``tracestate`` at most 32 list members with the spec's key and value grammar and no
duplicate keys; B3 trace ids of 16 or 32 hex digits, sampling ``0``/``1``/``d`` (``true``/``false`` accepted
in ``x-b3-sampled``, as Brave does), ``x-b3-flags: 1`` for debug.

The OpenTelemetry propagators are not used here: they read ``str`` carriers into contextvars Contexts, and log a
warning for every malformed ``tracestate`` member, which a client could turn into a log flood.
"""

import re

TRACEPARENT = b"traceparent"
TRACESTATE = b"tracestate"
B3 = b"b3"
B3_TRACE_ID = b"x-b3-traceid"
B3_SPAN_ID = b"x-b3-spanid"
B3_PARENT_SPAN_ID = b"x-b3-parentspanid"
B3_SAMPLED = b"x-b3-sampled"
B3_FLAGS = b"x-b3-flags"

# Every field this module reads or writes: removed before the sidecar writes its own context.
FIELDS = frozenset({TRACEPARENT, TRACESTATE, B3, B3_TRACE_ID, B3_SPAN_ID, B3_PARENT_SPAN_ID, B3_SAMPLED, B3_FLAGS})

# How Dubbo's tracing integrations spell these keys in attachments (a Java map: case matters).  Brave's Dubbo
# TracingFilter reads ``invocation.getAttachment("X-B3-TraceId")`` (brave.propagation.B3Propagation's names);
# OpenTelemetry's Dubbo instrumentation and Dubbo's own tracing (Micrometer) use the W3C names, lower case.
ATTACHMENT_NAMES = {
    "x-b3-traceid": "X-B3-TraceId",
    "x-b3-spanid": "X-B3-SpanId",
    "x-b3-parentspanid": "X-B3-ParentSpanId",
    "x-b3-sampled": "X-B3-Sampled",
    "x-b3-flags": "X-B3-Flags",
}

# Formats (bit flags), named as OTEL_PROPAGATORS names them
TRACECONTEXT, B3_SINGLE, B3_MULTI = 1, 2, 4
FORMAT_NAMES = {"tracecontext": TRACECONTEXT, "b3": B3_SINGLE, "b3multi": B3_MULTI}

_TRACEPARENT = re.compile(rb"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_HEX16 = re.compile(rb"[0-9a-f]{16}\Z")
_HEX16_OR_32 = re.compile(rb"(?:[0-9a-f]{16}|[0-9a-f]{32})\Z")
# W3C Trace Context 3.3.1.3: key = simple-key / multi-tenant-key; value = 0*255(chr) nblk-chr
_TRACESTATE_MEMBER = re.compile(
    rb"([a-z][_0-9a-z*/-]{0,255}|[a-z0-9][_0-9a-z*/-]{0,240}@[a-z][_0-9a-z*/-]{0,13})"
    rb"=([\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e])\Z")
MAX_TRACESTATE_MEMBERS = 32
MAX_TRACESTATE_BYTES = 8192  # a bound on the work one request can ask for; the spec's 512 is a floor


class TraceContext:
    """
    The context a request came with.

    @ivar traceId: the 128-bit trace id (int), or None for B3's sampling decision without ids.
    @ivar spanId: the caller's span id (int, 64 bits), or None with traceId.
    @ivar sampled: True, False, or None when the caller left the decision to us (B3 without a sampling field).
    @ivar debug: B3's debug flag (``d``, ``x-b3-flags: 1``); implies sampled.
    @ivar traceState: the W3C ``tracestate`` list members as [(key, value)] (str), validated; [] if none.
    @ivar shortTraceId: the trace id came as 16 hex digits (B3's 64-bit ids): B3 fields are written back so.
    """

    __slots__ = ("traceId", "spanId", "sampled", "debug", "traceState", "shortTraceId")

    def __init__(self, traceId, spanId, sampled, debug=False, traceState=(), shortTraceId=False):
        self.traceId = traceId
        self.spanId = spanId
        self.sampled = sampled
        self.debug = debug
        self.traceState = list(traceState)
        self.shortTraceId = shortTraceId

    def __eq__(self, other):
        return isinstance(other, TraceContext) and all(
            getattr(self, k) == getattr(other, k) for k in self.__slots__)

    def __repr__(self):
        return "<TraceContext trace=%s span=%s sampled=%r%s>" % (
            "-" if self.traceId is None else "%032x" % self.traceId,
            "-" if self.spanId is None else "%016x" % self.spanId, self.sampled, " debug" if self.debug else "")


# -- W3C ------------------------------------------------------------------------------------------------------------


def parseTraceparent(value):
    """
    ``traceparent`` (bytes) as (traceId, spanId, sampled), or None if it is not a valid one.
    """
    value = value.strip(b" \t")
    m = _TRACEPARENT.match(value)
    if m is None:
        return None
    version, traceHex, spanHex, flags = m.groups()
    if version == b"ff":
        return None
    if version == b"00" and len(value) != 55:
        return None
    if len(value) > 55 and value[55:56] != b"-":  # a later version: its own fields follow after a dash
        return None
    traceId = int(traceHex, 16)
    spanId = int(spanHex, 16)
    if not traceId or not spanId:
        return None
    return traceId, spanId, bool(int(flags, 16) & 1)


def formatTraceparent(traceId, spanId, sampled):
    """A version-00 ``traceparent`` value (bytes)."""
    return b"00-%032x-%016x-%s" % (traceId, spanId, b"01" if sampled else b"00")


def parseTracestate(values):
    """
    The ``tracestate`` fields (a list of bytes: several fields are one list, joined by commas) as [(key, value)]
    (str), or None if it is invalid (then it is dropped whole, as OpenTelemetry does).  Empty members are skipped.
    """
    members = []
    seen = set()
    total = 0
    for value in values:
        total += len(value)
        if total > MAX_TRACESTATE_BYTES:
            return None
        for member in value.split(b","):
            member = member.strip(b" \t")
            if not member:
                continue
            m = _TRACESTATE_MEMBER.match(member)
            if m is None:
                return None
            key = m.group(1)
            if key in seen:
                return None
            seen.add(key)
            members.append((key.decode("ascii"), m.group(2).decode("ascii")))
            if len(members) > MAX_TRACESTATE_MEMBERS:
                return None
    return members


def formatTracestate(members):
    """[(key, value)] as a ``tracestate`` value (bytes)."""
    return ",".join("%s=%s" % kv for kv in members).encode("ascii")


# -- B3 -------------------------------------------------------------------------------------------------------------


def _b3Sampling(value):
    """B3's SamplingState in the single field: (sampled, debug), or None if malformed."""
    if value == b"1":
        return True, False
    if value == b"0":
        return False, False
    if value == b"d":
        return True, True
    return None


def parseB3Single(value):
    """
    The single ``b3`` field (bytes) as a TraceContext, or None if malformed.  ``{TraceId}-{SpanId}`` with an
    optional ``-{SamplingState}`` and ``-{ParentSpanId}``, or a sampling decision alone (``0``, ``1``, ``d``).
    """
    value = value.strip(b" \t")
    parts = value.split(b"-")
    if len(parts) == 1:
        sampling = _b3Sampling(value)
        return None if sampling is None else TraceContext(None, None, sampling[0], sampling[1])
    if len(parts) > 4 or not _HEX16_OR_32.match(parts[0]) or not _HEX16.match(parts[1]):
        return None
    sampled, debug = None, False
    if len(parts) >= 3:
        sampling = _b3Sampling(parts[2])
        if sampling is None:
            return None
        sampled, debug = sampling
    if len(parts) == 4 and not _HEX16.match(parts[3]):
        return None
    traceId, spanId = int(parts[0], 16), int(parts[1], 16)
    if not traceId or not spanId:
        return None
    return TraceContext(traceId, spanId, sampled, debug, shortTraceId=len(parts[0]) == 16)


def formatB3Single(traceId, spanId, sampled, debug=False, short=False):
    """A ``b3`` value (bytes): ``{TraceId}-{SpanId}-{SamplingState}`` (no parent: Brave's SINGLE_NO_PARENT)."""
    tid = b"%016x" % traceId if short and traceId >> 64 == 0 else b"%032x" % traceId
    return b"%s-%016x-%s" % (tid, spanId, b"d" if debug else b"1" if sampled else b"0")


def parseB3Multi(fields):
    """
    The ``x-b3-*`` fields ({name: bytes}) as a TraceContext, or None if they are absent or malformed (Brave's
    B3Extractor: a bad ``x-b3-sampled`` restarts the trace; no trace id with a sampling decision is that decision).
    """
    sampledValue = fields.get(B3_SAMPLED)
    sampled = None
    if sampledValue is not None:
        sampledValue = sampledValue.strip(b" \t")
        lowered = sampledValue.lower()
        if sampledValue == b"1" or lowered == b"true":
            sampled = True
        elif sampledValue == b"0" or lowered == b"false":
            sampled = False
        else:
            return None
    debug = fields.get(B3_FLAGS, b"").strip(b" \t") == b"1"
    traceHex = fields.get(B3_TRACE_ID)
    if traceHex is None:
        if sampled is None and not debug:
            return None
        return TraceContext(None, None, True if debug else sampled, debug)
    traceHex = traceHex.strip(b" \t")
    spanHex = fields.get(B3_SPAN_ID, b"").strip(b" \t")
    parentHex = fields.get(B3_PARENT_SPAN_ID)
    if not _HEX16_OR_32.match(traceHex) or not _HEX16.match(spanHex):
        return None
    if parentHex is not None and not _HEX16.match(parentHex.strip(b" \t")):
        return None
    traceId, spanId = int(traceHex, 16), int(spanHex, 16)
    if not traceId or not spanId:
        return None
    return TraceContext(traceId, spanId, True if debug else sampled, debug, shortTraceId=len(traceHex) == 16)


# -- a request's context ----------------------------------------------------------------------------------------------

_READ = {TRACEPARENT: 0, TRACESTATE: 1, B3: 2, B3_TRACE_ID: 3, B3_SPAN_ID: 3, B3_PARENT_SPAN_ID: 3, B3_SAMPLED: 3,
         B3_FLAGS: 3}


def extract(headers):
    """
    The trace context of a request's ``headers`` (a HeaderMap, or any iterable of (name, value) pairs, names
    lower case): (TraceContext or None, the formats present as TRACECONTEXT | B3_SINGLE | B3_MULTI flags, valid
    or not).  A valid ``traceparent`` wins, then ``b3``, then the ``x-b3-*`` fields; ``tracestate`` is kept only
    with a valid ``traceparent``.
    """
    traceparent = b3 = None
    tracestate = []
    multi = None
    for name, value in headers:
        kind = _READ.get(name)
        if kind is None:
            continue
        if kind == 0:
            if traceparent is None:
                traceparent = value
        elif kind == 1:
            tracestate.append(value)
        elif kind == 2:
            if b3 is None:
                b3 = value
        else:
            if multi is None:
                multi = {}
            multi.setdefault(name, value)
    present = ((TRACECONTEXT if traceparent is not None else 0) | (B3_SINGLE if b3 is not None else 0)
               | (B3_MULTI if multi is not None and (B3_TRACE_ID in multi or B3_SAMPLED in multi) else 0))
    if traceparent is not None:
        parsed = parseTraceparent(traceparent)
        if parsed is not None:
            state = parseTracestate(tracestate) if tracestate else []
            return TraceContext(parsed[0], parsed[1], parsed[2], traceState=state or ()), present
    if b3 is not None:
        context = parseB3Single(b3)
        if context is not None:
            return context, present
    if multi is not None:
        return parseB3Multi(multi), present
    return None, present


def inject(headers, traceId, spanId, sampled, parent, formats):
    """
    Write the context the upstream call continues (our span ``spanId`` of trace ``traceId``) into ``headers`` (a
    HeaderMap), replacing whatever trace fields the request had, in each of ``formats`` (flags).  ``parent``: the
    TraceContext the request came with, or None: its ``tracestate`` is passed on, its span is B3's parent span,
    its debug flag and id width are kept.
    """
    headers.removeMany(FIELDS)
    debug = parent is not None and parent.debug
    if formats & TRACECONTEXT:
        headers.add(TRACEPARENT, formatTraceparent(traceId, spanId, sampled))
        if parent is not None and parent.traceState:
            headers.add(TRACESTATE, formatTracestate(parent.traceState))
    short = parent is not None and parent.shortTraceId
    if formats & B3_SINGLE:
        headers.add(B3, formatB3Single(traceId, spanId, sampled, debug, short))
    if formats & B3_MULTI:
        headers.add(B3_TRACE_ID, b"%016x" % traceId if short and traceId >> 64 == 0 else b"%032x" % traceId)
        headers.add(B3_SPAN_ID, b"%016x" % spanId)
        if parent is not None and parent.spanId is not None:
            headers.add(B3_PARENT_SPAN_ID, b"%016x" % parent.spanId)
        if debug:
            headers.add(B3_FLAGS, b"1")
        else:
            headers.add(B3_SAMPLED, b"1" if sampled else b"0")
