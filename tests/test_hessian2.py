"""
Tests for txmesh.protocols.dubbo.hessian2: the spec's own examples (hessian-serialization, Hessian 2.0), writer
round trips, and bounded skipping of hostile structures.
"""

import time

import pytest

from txmesh.errors import CodecError
from txmesh.protocols.dubbo.hessian2 import Hessian2Reader, Hessian2Writer, HessianError, RawValue


def reader(data, **kw):
    return Hessian2Reader(data, **kw)


def readAll(method, data):
    r = reader(data)
    value = getattr(r, method)()
    assert r.atEnd(), "trailing bytes after %r" % (data,)
    return value


def skips(data):
    """skipValue consumes exactly the value."""
    r = reader(data + b"\x91")
    r.skipValue()
    assert r.readInt() == 1 and r.atEnd()


# -- scalars (the spec's examples) ----------------------------------------------------------------------

@pytest.mark.parametrize("data,value", [
    (b"\x90", 0), (b"\x80", -16), (b"\xbf", 47),
    (b"\xc8\x00", 0), (b"\xc0\x00", -2048), (b"\xc7\x00", -256), (b"\xcf\xff", 2047),
    (b"\xd4\x00\x00", 0), (b"\xd0\x00\x00", -262144), (b"\xd7\xff\xff", 262143),
    (b"I\x00\x00\x00\x00", 0), (b"I\x00\x00\x01\x2c", 300), (b"I\x80\x00\x00\x00", -2 ** 31),
])
def test_int(data, value):
    assert readAll("readInt", data) == value
    skips(data)


@pytest.mark.parametrize("data,value", [
    (b"\xe0", 0), (b"\xd8", -8), (b"\xef", 15),
    (b"\xf8\x00", 0), (b"\xf0\x00", -2048), (b"\xf7\x00", -256), (b"\xff\xff", 2047),
    (b"\x3c\x00\x00", 0), (b"\x38\x00\x00", -262144), (b"\x3f\xff\xff", 262143),
    (b"\x59\x00\x00\x00\x00", 0), (b"\x59\x00\x00\x01\x2c", 300),
    (b"L\x00\x00\x00\x00\x00\x00\x01\x2c", 300), (b"L\x80" + b"\x00" * 7, -2 ** 63),
])
def test_long(data, value):
    assert readAll("readLong", data) == value
    skips(data)


@pytest.mark.parametrize("data,value", [
    (b"\x5b", 0.0), (b"\x5c", 1.0), (b"\x5d\x00", 0.0), (b"\x5d\x80", -128.0), (b"\x5d\x7f", 127.0),
    (b"\x5e\x00\x00", 0.0), (b"\x5e\x80\x00", -32768.0), (b"\x5e\x7f\xff", 32767.0),
    (b"D\x40\x28\x80\x00\x00\x00\x00\x00", 12.25),
    (b"\x5f\x00\x00\x30\x39", 12.345),  # Java's "double mill": int / 1000
])
def test_double(data, value):
    assert readAll("readDouble", data) == pytest.approx(value)
    skips(data)


@pytest.mark.parametrize("data,value", [
    (b"\x4a\x00\x00\x00\xd0\x4b\x92\x84\xb8", 894621091000),
    (b"\x4b\x00\xe3\x83\x8f", 894621060000),
])
def test_date(data, value):
    assert readAll("readDate", data) == value
    skips(data)


def test_boolAndNull():
    assert readAll("readBool", b"T") is True
    assert readAll("readBool", b"F") is False
    assert readAll("readNull", b"N") is None
    for data in (b"T", b"F", b"N"):
        skips(data)
    with pytest.raises(HessianError):
        reader(b"N").readBool()


@pytest.mark.parametrize("data,value", [
    (b"\x20", b""), (b"\x23\x01\x02\x03", b"\x01\x02\x03"),
    (b"\x34\x10" + b"x" * 16, b"x" * 16),
    (b"B\x00\x03abc", b"abc"),
    (b"A\x00\x02abB\x00\x01c", b"abc"),
    (b"A\x00\x02ab\x21c", b"abc"),
])
def test_binary(data, value):
    assert readAll("readBinary", data) == value
    skips(data)


@pytest.mark.parametrize("data,value", [
    (b"\x00", ""), (b"\x05hello", "hello"), (b"\x01\xc3\x83", "\u00c3"),
    (b"S\x00\x05hello", "hello"),
    (b"\x30\x20" + b"a" * 32, "a" * 32),
    (b"R\x00\x02heS\x00\x03llo", "hello"),
    (b"R\x00\x02he\x03llo", "hello"),
    (b"\x02\xe2\x82\xac\xc3\xa9", "\u20ac\u00e9"),
    # A supplementary char is two UTF-16 units; Java writes each surrogate as 3 bytes (CESU-8).
    (b"\x02\xed\xa0\xbd\xed\xb8\x80", "\U0001F600"),
    (b"\x02\xf0\x9f\x98\x80", "\U0001F600"),
])
def test_string(data, value):
    assert readAll("readString", data) == value
    skips(data)


@pytest.mark.parametrize("value", [
    "", "a", "x" * 31, "x" * 32, "x" * 1023, "x" * 1024, "y" * 0x8000, "z" * 70000,
    "\u00e9" * 40, "\U0001F600 smile", "\U0001F600" * 20000,
])
def test_stringRoundTrip(value):
    w = Hessian2Writer()
    w.writeString(value)
    assert readAll("readString", w.getvalue()) == value
    skips(w.getvalue())


def test_stringEncodingsLikeJava():
    """The writer picks the shortest form, as Java's Hessian2Output does."""
    def enc(s):
        w = Hessian2Writer()
        w.writeString(s)
        return w.getvalue()
    assert enc("hello") == b"\x05hello"
    assert enc("a" * 32) == b"\x30\x20" + b"a" * 32
    assert enc("a" * 1024) == b"S\x04\x00" + b"a" * 1024
    assert enc("\U0001F600") == b"\x02\xed\xa0\xbd\xed\xb8\x80"
    big = enc("a" * 0x8001)
    assert big[:3] == b"R\x80\x00" and big[3 + 0x8000:3 + 0x8001] == b"\x01"


@pytest.mark.parametrize("value", [
    0, -16, 47, 48, -17, 2047, -2048, 2048, 262143, -262144, 262144, 2 ** 31 - 1, -2 ** 31, 2 ** 31,
    -2 ** 31 - 1, 2 ** 63 - 1, -2 ** 63,
])
def test_intRoundTrip(value):
    w = Hessian2Writer()
    w.writeInt(value)
    assert readAll("readLong", w.getvalue()) == value
    if -2 ** 31 <= value < 2 ** 31:
        assert readAll("readInt", w.getvalue()) == value
    w = Hessian2Writer()
    w.writeLong(value)
    assert readAll("readLong", w.getvalue()) == value


@pytest.mark.parametrize("data", [b"", b"I\x00\x00", b"\xc8", b"\xd4\x00", b"\x05hell", b"S\x00", b"D\x00",
                                  b"\x02\xc3", b"R\x00\x01a", b"R\x00\x01aT"])
def test_truncatedOrWrong(data):
    r = reader(data)
    with pytest.raises(HessianError) as e:
        r.skipValue()
        r.readString()
    assert isinstance(e.value, CodecError)


# -- skipping composites --------------------------------------------------------------------------------

CAR_DEF = b"C\x0bexample.Car\x92\x05color\x05model"


@pytest.mark.parametrize("data", [
    b"V\x04[int\x92\x90\x91",                  # fixed typed list
    b"\x57\x90\x91Z",                          # variable untyped list
    b"\x55\x04[int\x90\x91Z",                  # variable typed list
    b"\x58\x92\x90\x91",                       # fixed untyped list
    b"\x72\x04[int\x90\x91",                   # compact fixed typed list
    b"\x72\x90\x90\x91",                       # ... with a type reference
    b"\x7a\x90\x91",                           # compact fixed untyped list
    b"\x78",                                   # empty list
    b"H\x91\x03feeZ",                          # untyped map
    b"H\x91\x03fee\xa0\x03fie\xc9\x00\x03foeZ",
    b"M\x13com.caucho.test.Car\x05color\x03redZ",  # typed map
    b"M\x90\x05color\x03redZ",                # typed map with a type reference
    CAR_DEF + b"O\x90\x03red\x08corvette",      # object with a class definition
    CAR_DEF + b"\x60\x03red\x08corvette",       # compact object
    b"C\x0aLinkedList\x92\x04head\x04tail\x60\x91\x51\x90",  # object whose field is a ref to itself
    b"H\x01aH\x01b\x57\x01c\x72\x04[int\x90\x91ZZZ",  # nested
    b"C\x01A\x90C\x01B\x91\x01x\x61\x60",      # two class definitions before one value
])
def test_skipComposite(data):
    skips(data)


def test_classDefinitionsPersistAcrossValues():
    """A class defined in one value is usable by later values of the same stream (Dubbo args, attachments)."""
    r = reader(CAR_DEF + b"\x60\x03red\x08corvette" + b"\x60\x04blue\x04golf" + b"\x91")
    r.skipValue()
    r.skipValue()
    assert r.readInt() == 1
    with pytest.raises(HessianError):
        reader(b"\x60\x03red\x08corvette").skipValue()


def test_readSimpleMap():
    w = Hessian2Writer()
    w.writeSimpleMap({"a": "1", "t": 4000, "big": 2 ** 40, "yes": True, "no": False, "nil": None})
    r = reader(w.getvalue())
    assert r.readSimpleMap() == {"a": "1", "t": 4000, "big": 2 ** 40, "yes": True, "no": False, "nil": None}
    assert r.atEnd()
    typed = b"M\x11java.util.HashMap\x01k\x01vZ"
    assert reader(typed).readSimpleMap() == {"k": "v"}
    assert reader(b"N").readSimpleMap() == {}
    opaque = reader(b"H\x01k" + CAR_DEF + b"\x60\x03red\x01x\x93\x01vZ").readSimpleMap()
    assert opaque == {"k": RawValue(CAR_DEF + b"\x60\x03red\x01x"), 3: "v"}
    assert "red" not in repr(opaque)
    with pytest.raises(TypeError):
        Hessian2Writer().writeSimpleValue(1.5)


# -- hostile input --------------------------------------------------------------------------------------

def test_deepNestingIsBounded():
    """Deeply nested lists fail cleanly at the depth bound instead of exhausting the stack."""
    data = b"\x79" * 100000 + b"N"
    with pytest.raises(HessianError):
        reader(data).skipValue()
    skips(b"\x79" * 60 + b"N")
    with pytest.raises(HessianError):
        reader(b"\x79" * 10 + b"N", maxDepth=5).skipValue()
    with pytest.raises(HessianError):
        reader(b"H\x90" * 100000).skipValue()


def test_hugeCountsFailFast():
    """Counts larger than the bytes left are refused before any loop runs."""
    for data in (b"\x58I\x7f\xff\xff\xff", b"V\x04[intI\x7f\xff\xff\xff\x90",
                 b"C\x01AI\x7f\xff\xff\xff", b"S\xff\xff", b"\x58\x80\x90", b"B\xff\xff"):
        with pytest.raises(HessianError):
            reader(data).skipValue()


def test_manyClassDefinitionsDoNotRecurse():
    """A long run of class definitions before a value is walked iteratively."""
    data = b"C\x01A\x90" * 50000 + b"N"
    skips(data)


def test_hostileInputIsLinear():
    """A megabyte of adversarial structure is skipped or refused quickly."""
    bodies = [
        b"\x57" + b"\x90" * 1000000 + b"Z",
        b"R\x00\x00" * 300000 + b"\x00",
        b"\x57C\x01A\x9f" + b"\x01f" * 15 + (b"\x60" + b"N" * 15) * 60000 + b"Z",
        b"\x57" + b"\x51\x90" * 500000 + b"Z",
    ]
    for data in bodies:
        start = time.process_time()
        skips(data)
        assert time.process_time() - start < 5
