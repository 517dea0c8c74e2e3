"""
Tests for txmesh.protocols.dubbo.codec, on frames captured between real third-party Dubbo consumers and
providers (tests/fixtures/dubbo-frames, see its README.md).
"""

import json
import os

import pytest

from txmesh.errors import CodecError
from txmesh.protocols.dubbo import codec as dc
from txmesh.protocols.dubbo.codec import (
    DubboCodecError, DubboDecoder, decodeErrorMessage, decodeInvocation, decodeResultFlag,
    encodeHeartbeat, encodeHeartbeatResponse, encodeRequestWithAttachments, encodeResponse, withRequestId)
from txmesh.protocols.dubbo.hessian2 import Hessian2Writer, RawValue

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "dubbo-frames")

with open(os.path.join(FIXTURES, "index.json")) as _f:
    INDEX = json.load(_f)

ALL_FRAMES = [entry for scenario in INDEX.values() for entry in scenario["frames"]]
REQUESTS = [entry for entry in ALL_FRAMES if "method" in entry]


def load(name):
    with open(os.path.join(FIXTURES, name)) as f:
        return bytes.fromhex(f.read())


def scenarioStream(scenario, direction):
    """All frames of one direction of connection 0 of a scenario, concatenated as on the wire."""
    entries = [e for e in INDEX[scenario]["frames"] if e["direction"] == direction and e["connection"] == 0]
    return entries, b"".join(load(e["file"]) for e in entries)


def decodeOne(data, **kw):
    frames = DubboDecoder(**kw).feed(data)
    assert len(frames) == 1
    return frames[0]


def frameKey(frame):
    return (frame.header, frame.body, frame.isRequest, frame.twoWay, frame.event, frame.serializationId,
            frame.status, frame.requestId)


def requestBytes(body, requestId=7, flag=0xC2):
    return dc.encodeHeader(flag, 0, requestId, len(body)) + body


def hessianBody(*parts):
    w = Hessian2Writer()
    for p in parts:
        w.writeSimpleValue(p)
    return w.getvalue()


# -- fixtures -------------------------------------------------------------------------------------------

def test_fixtureCount():
    """Every scenario listed in the README is present, every frame file is indexed."""
    assert len(INDEX) == 6
    files = sum(len([n for n in os.listdir(os.path.join(FIXTURES, s)) if n.endswith(".hex")]) for s in INDEX)
    assert files == len(ALL_FRAMES) == 168


@pytest.mark.parametrize("entry", ALL_FRAMES, ids=lambda e: e["file"])
def test_fixtureHeader(entry):
    """Header fields of every captured frame decode as recorded in index.json."""
    data = load(entry["file"])
    frame = decodeOne(data)
    assert (frame.isRequest, frame.twoWay, frame.event, frame.serializationId, frame.status,
            frame.requestId, len(frame.body)) == (
        entry["request"], entry["twoway"], entry["event"], entry["serialization_id"], entry["status"],
        entry["id"], entry["body_length"])
    assert frame.header + frame.body == data == frame.toBytes()


@pytest.mark.parametrize("entry", REQUESTS, ids=lambda e: e["file"])
def test_fixtureInvocation(entry):
    """The invocation head of every captured request decodes as recorded; the attachments end the body."""
    frame = decodeOne(load(entry["file"]))
    inv = frame.invocation
    assert (inv.dubboVersion, inv.serviceName, inv.serviceVersion, inv.methodName, inv.parameterTypes) == (
        entry["dubbo_version"], entry["service"], entry["service_version"], entry["method"], entry["arg_desc"])
    assert inv.attachmentsEnd == len(frame.body)
    assert inv.argsOffset <= inv.attachmentsOffset
    assert inv.interface == entry["service"]


@pytest.mark.parametrize("entry", [e for e in ALL_FRAMES if "result_flag" in e], ids=lambda e: e["file"])
def test_fixtureResultFlag(entry):
    assert decodeResultFlag(decodeOne(load(entry["file"]))) == entry["result_flag"]


def test_nonOkResponses():
    """Non-OK responses have no result flag; their body is the error message string."""
    frame = decodeOne(load("dubbopy-consumer__dubbopy-provider/c0-s2c-003-resp-fail-status70.hex"))
    assert frame.status == dc.SERVICE_ERROR
    assert decodeResultFlag(frame) is None
    assert decodeErrorMessage(frame) == "boom-123"
    frame = decodeOne(load("sofa-consumer__sofa-provider/c0-s2c-006-resp-noSuchMethod-status80.hex"))
    assert decodeErrorMessage(frame).startswith("Can not find method")


def test_attachmentsAndGroup():
    """Attachments from dubbo-js carry group, timeout (an int) and application."""
    inv = decodeOne(load("dubbojs-consumer__sofa-provider/c0-c2s-002-req-mixed.hex")).invocation
    assert inv.group == "txmesh-group"
    assert inv.attachments["timeout"] == 4000
    assert inv.attachments["application"] == "dubbo-js"
    assert inv.parameterCount == 4
    sofa = decodeOne(load("sofa-consumer__sofa-provider/c0-c2s-003-req-attachments.hex")).invocation
    assert sofa.group == "SOFA"
    assert sofa.attachments["traceid"] == "abc123"


def test_heartbeats():
    """Heartbeats are event frames with a null body; they have no invocation."""
    req = decodeOne(load("dubbo-python-consumer__sofa-provider/c0-c2s-007-heartbeat.hex"))
    assert req.header[2] == 0xE2 and req.isHeartbeat and req.invocation is None
    resp = decodeOne(load("dubbo-python-consumer__sofa-provider/c0-s2c-007-heartbeat-status20.hex"))
    assert resp.isHeartbeat and resp.status == dc.OK
    assert encodeHeartbeatResponse(req.requestId) == resp.toBytes()
    assert encodeHeartbeat(req.requestId, isRequest=False) == resp.toBytes()
    assert encodeHeartbeat(req.requestId) == req.toBytes()
    quirk = decodeOne(load("dubbopy-consumer__dubbopy-provider/c0-s2c-007-heartbeat-status0.hex"))
    assert quirk.isHeartbeat and quirk.status == 0


# -- framing --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("scenario", sorted(INDEX))
@pytest.mark.parametrize("direction", ["c2s", "s2c"])
def test_splitsDecodeIdentically(scenario, direction):
    """Coalesced, byte-by-byte and odd-sized splits give the same frames, in order."""
    entries, stream = scenarioStream(scenario, direction)
    whole = DubboDecoder().feed(stream)
    assert [f.requestId for f in whole] == [e["id"] for e in entries]
    for size in (1, 7, 16, 17, 333):
        decoder = DubboDecoder()
        frames = []
        for i in range(0, len(stream), size):
            frames.extend(decoder.feed(stream[i:i + size]))
        assert [frameKey(f) for f in frames] == [frameKey(f) for f in whole]


def test_outOfOrderReplies():
    """40 replies on one connection arrive in reverse id order and all decode."""
    entries, stream = scenarioStream("sofa-consumer__sofa-provider__out-of-order", "s2c")
    frames = DubboDecoder().feed(stream)
    assert [f.requestId for f in frames] == list(range(40, 0, -1))


def test_truncatedBodyWaits():
    data = load("sofa-consumer__sofa-provider/c0-c2s-000-req-echo.hex")
    decoder = DubboDecoder()
    assert decoder.feed(data[:10]) == []
    assert decoder.feed(data[10:-1]) == []
    [frame] = decoder.feed(data[-1:])
    assert frame.toBytes() == data


def test_badMagicIsFatal():
    data = bytearray(load("sofa-consumer__sofa-provider/c0-c2s-000-req-echo.hex"))
    data[0] = ord("G")
    decoder = DubboDecoder()
    with pytest.raises(DubboCodecError) as e:
        decoder.feed(bytes(data))
    assert e.value.fatal and isinstance(e.value, CodecError)
    with pytest.raises(DubboCodecError):
        decoder.feed(b"")  # the decoder stays failed: the connection is to be closed


def test_badMagicAfterGoodFrames():
    """Frames complete before a bad header in the same feed are handed over on the error."""
    good = load("sofa-consumer__sofa-provider/c0-c2s-000-req-echo.hex")
    with pytest.raises(DubboCodecError) as e:
        DubboDecoder().feed(good + b"GET / HTTP/1.1\r\n\r\n")
    assert e.value.fatal and [f.requestId for f in e.value.frames] == [1]


def test_telnetIsNotAccepted():
    """Dubbo's telnet fallback is never offered: any non-magic first bytes are fatal."""
    with pytest.raises(DubboCodecError) as e:
        DubboDecoder().feed(b"ls\r\n" + b"x" * 12)
    assert e.value.fatal and e.value.requestId is None


@pytest.mark.parametrize("data", [b"GET / HTTP/1.1\r\n", b"ls\r\n", b"\xdaX", b"\xda\xbc", b"\xbb\xda", b"\x00"],
                         ids=["http", "telnet", "second-byte", "second-byte-near", "swapped", "nul"])
def test_badMagicRefusedAtTheFirstByteThatDisagrees(data):
    """Non-Dubbo bytes are refused byte by byte: the first byte unless it is 0xda, else the second; no waiting
    for a 16-byte header that may never come."""
    decoder = DubboDecoder()
    wrong = 0 if data[0] != 0xDA else 1
    for i in range(wrong):
        assert decoder.feed(data[i:i + 1]) == []
    with pytest.raises(DubboCodecError) as e:
        decoder.feed(data[wrong:wrong + 1])
    assert e.value.fatal and e.value.requestId is None


def test_badMagicOfALaterFrameRefusedAtItsFirstByte():
    good = load("sofa-consumer__sofa-provider/c0-c2s-000-req-echo.hex")
    decoder = DubboDecoder()
    assert [f.requestId for f in decoder.feed(good + b"\xda")] == [1]
    with pytest.raises(DubboCodecError) as e:
        decoder.feed(b"G")
    assert e.value.fatal and e.value.frames == []


def test_magicAloneWaitsForTheRestOfTheHeader():
    decoder = DubboDecoder()
    assert decoder.feed(b"\xda") == [] and decoder.feed(b"\xbb") == [] and decoder.feed(b"\xc2\x00") == []


def test_oversizeRefusedFromHeaderAlone():
    """A body length over the limit fails with the id and BAD_REQUEST from the 16 header bytes alone."""
    header = dc.encodeHeader(0xC2, 0, 99, 8 * 1024 * 1024 + 1)
    decoder = DubboDecoder()
    assert decoder.feed(header[:15]) == []
    with pytest.raises(DubboCodecError) as e:
        decoder.feed(header[15:])
    assert e.value.fatal and e.value.requestId == 99 and e.value.status == dc.BAD_REQUEST
    assert e.value.twoWay


def test_oversizeLimitConfigurable():
    data = load("sofa-consumer__sofa-provider/c0-c2s-000-req-echo.hex")  # body 220
    assert len(DubboDecoder(maxBodyBytes=220).feed(data)) == 1
    with pytest.raises(DubboCodecError) as e:
        DubboDecoder(maxBodyBytes=219).feed(data[:16])
    assert e.value.requestId == 1


def test_oversizeResponseIsBadResponse():
    with pytest.raises(DubboCodecError) as e:
        DubboDecoder(maxBodyBytes=10).feed(dc.encodeHeader(0x02, 20, 5, 11))
    assert e.value.status == dc.BAD_RESPONSE and e.value.requestId == 5


def test_negativeIdRoundTrips():
    header = dc.encodeHeader(0xC2, 0, -2, 0)
    assert decodeOne(header).requestId == -2
    assert withRequestId(header, -2) == header


# -- malformed bodies -----------------------------------------------------------------------------------

@pytest.mark.parametrize("body", [
    b"",                                   # empty
    b"\x052.0.2",                          # truncated head
    b"\x052.0.2\x01a\x051.0.0\x01m\x01I",  # descriptor promises an int, none follows
    b"\x052.0.2\x01a\x051.0.0\x01m\x01Q\xc8",  # bad descriptor
    b"\x052.0.2\x01a\x051.0.0\x01m\x00\x91",   # attachments not a map
    b"\x052.0.2\x01a\x051.0.0\x01m\x01I\x90H\x01k",  # unterminated attachments
    b"\x052.0.2\x01a\x051.0.0\x01m\x11Ljava/lang/Object;\x6f",  # object of an undefined class
    b"\x052.0.2\x01a\x051.0.0\x01m\x11Ljava/lang/Object;\xff",  # truncated long
])
def test_malformedBodyIsNotFatal(body):
    """Bad hessian is a non-fatal error carrying the id; the decoder keeps working."""
    decoder = DubboDecoder()
    [frame] = decoder.feed(requestBytes(body, requestId=12))
    with pytest.raises(DubboCodecError) as e:
        frame.invocation
    assert not e.value.fatal and e.value.requestId == 12 and e.value.status == dc.BAD_REQUEST
    good = load("sofa-consumer__sofa-provider/c0-c2s-000-req-echo.hex")
    assert decoder.feed(good)[0].invocation.methodName == "echo"


def test_badResultFlag():
    frame = decodeOne(dc.encodeHeader(0x02, 20, 3, 1) + b"\x99")
    with pytest.raises(DubboCodecError) as e:
        decodeResultFlag(frame)
    assert not e.value.fatal and e.value.requestId == 3


def test_nonHessianRequestHasNoInvocation():
    """Other serializations are framed and forwarded, never decoded."""
    frame = decodeOne(requestBytes(b"{not hessian", flag=0xC6))
    assert frame.serializationId == 6 and frame.invocation is None


def test_argumentsNeverBuilt():
    """A hostile argument (a gadget class) is skipped structurally; its bytes stay opaque."""
    w = Hessian2Writer()
    for s in ("2.0.2", "svc", "1.0.0", "m", "Ljava/lang/Object;"):
        w.writeString(s)
    w.out += b"C" + hessianBody("com.sun.rowset.JdbcRowSetImpl", 1, "dataSourceName")
    w.out += b"\x60" + hessianBody("ldap://evil/x")
    w.writeSimpleMap({"path": "svc"})
    inv = decodeOne(requestBytes(w.getvalue())).invocation
    assert inv.attachments == {"path": "svc"}
    assert "evil" not in repr(inv)


# -- re-encoding ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("entry", REQUESTS[:7] + REQUESTS[47:], ids=lambda e: e["file"])
def test_attachmentsRoundTrip(entry):
    """Adding an attachment re-encodes only the map: header flags/id and head+argument bytes are kept."""
    frame = decodeOne(load(entry["file"]))
    inv = frame.invocation
    newAttachments = dict(inv.attachments, **{"x-trace-id": "t-1\u00e9\U0001F600"})
    out = encodeRequestWithAttachments(frame, inv, newAttachments)
    again = decodeOne(out)
    assert again.header[:12] == frame.header[:12]
    assert again.body[:inv.attachmentsOffset] == frame.body[:inv.attachmentsOffset]
    assert again.invocation.attachments == newAttachments
    assert again.invocation.methodName == inv.methodName
    # Unchanged attachments re-encode to an equal map (same decoded content).
    same = decodeOne(encodeRequestWithAttachments(frame, inv, inv.attachments))
    assert same.invocation.attachments == inv.attachments


def test_attachmentsKeepOpaqueValues():
    """An attachment value that is not a scalar is kept as raw bytes and written back verbatim."""
    w = Hessian2Writer()
    for s in ("2.0.2", "svc", "1.0.0", "m", ""):
        w.writeString(s)
    w.out += b"H" + hessianBody("k") + b"\x79\x91" + hessianBody("n") + b"NZ"
    frame = decodeOne(requestBytes(w.getvalue()))
    inv = frame.invocation
    assert inv.attachments == {"k": RawValue(b"\x79\x91"), "n": None}
    out = encodeRequestWithAttachments(frame, inv, dict(inv.attachments, added="1"))
    assert b"\x79\x91" in out and decodeOne(out).invocation.attachments["added"] == "1"


def test_missingAttachmentsMap():
    """A body that ends after the arguments has no attachments; one can still be added."""
    w = Hessian2Writer()
    for s in ("2.0.2", "svc", "1.0.0", "m", "I"):
        w.writeString(s)
    w.writeInt(5)
    frame = decodeOne(requestBytes(w.getvalue()))
    assert frame.invocation.attachments == {}
    out = encodeRequestWithAttachments(frame, frame.invocation, {"group": "g"})
    assert decodeOne(out).invocation.group == "g"


# -- encoders -------------------------------------------------------------------------------------------

def test_errorResponseLikeJava():
    """The captured dubbo-py SERVICE_ERROR reply is byte-identical to what encodeResponse writes."""
    captured = load("dubbopy-consumer__dubbopy-provider/c0-s2c-003-resp-fail-status70.hex")
    assert encodeResponse(4, dc.SERVICE_ERROR, "boom-123") == captured


def test_errorResponseDecodes():
    data = encodeResponse(2 ** 40, dc.SERVICE_NOT_FOUND, "no route for svc.Foo:1.0#bar")
    frame = decodeOne(data)
    assert (frame.isRequest, frame.event, frame.status, frame.requestId) == (False, False, 60, 2 ** 40)
    assert decodeErrorMessage(frame) == "no route for svc.Foo:1.0#bar"
    with pytest.raises(ValueError):
        encodeResponse(1, dc.OK, "")


def test_withRequestId():
    data = load("sofa-consumer__sofa-provider/c0-c2s-001-req-add.hex")
    frame = decodeOne(data)
    header = withRequestId(data, 123456789)
    assert len(header) == 16 and withRequestId(frame, 123456789) == header
    remapped = decodeOne(header + frame.body)
    assert remapped.requestId == 123456789
    assert remapped.header[:4] == data[:4] and remapped.header[12:] == data[12:16]
    assert remapped.invocation.methodName == "add"


READONLY = bytes.fromhex("dabba2000000000000000007000000020152")  # Dubbo's READONLY event, hessian2 "R", id 7


@pytest.mark.parametrize("split", ["whole", "split", "bytes"])
def test_readonlyEvent(split):
    """Dubbo's READONLY event (whole, split in the header, byte by byte, between two heartbeats) is told apart."""
    heartbeat = dc.encodeHeartbeat(6)
    data = heartbeat + READONLY + heartbeat
    chunks = {"whole": [data], "split": [data[:len(heartbeat) + 5], data[len(heartbeat) + 5:]],
              "bytes": [data[i:i + 1] for i in range(len(data))]}[split]
    decoder = dc.DubboDecoder()
    got = [f for c in chunks for f in decoder.feed(c)]
    assert [(f.isHeartbeat, f.isReadOnlyEvent) for f in got] == [(True, False), (False, True), (True, False)]
    event = got[1]
    assert (event.isRequest, event.twoWay, event.event, event.requestId, event.body) == (True, False, True, 7, b"\x01R")
    assert event.invocation is None
    assert dc.encodeReadOnlyEvent(7) == READONLY
