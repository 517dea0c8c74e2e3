"""
A partial Hessian 2.0 reader and writer: only as much as a Dubbo proxy needs.

The reader decodes scalars (strings, ints, longs, doubles, booleans, null, binary, dates) and *skips* any other
value structurally: lists, maps, class definitions, objects and refs are walked without building anything, so
argument values of a Dubbo call are never materialised (Dubbo's deserialization CVEs live in building them).
Nesting is bounded by C{maxDepth} and every length is checked against the bytes left, so hostile input costs
at most linear time and no memory beyond the input.

The writer encodes strings, ints/longs, booleans, null and flat maps for re-encoding Dubbo attachments.
"""

import struct

from txmesh.errors import CodecError

_unpackInt = struct.Struct(">i").unpack_from
_unpackLong = struct.Struct(">q").unpack_from
_unpackDouble = struct.Struct(">d").unpack_from
_unpackShort = struct.Struct(">h").unpack_from
_unpackU16 = struct.Struct(">H").unpack_from

DEFAULT_MAX_DEPTH = 64


class HessianError(CodecError):
    """Malformed, truncated or over-limit Hessian 2 input."""


class RawValue:
    """
    A value the reader did not decode (list, map, object, binary in an attachments map...), kept as its exact
    encoded bytes so a re-encoded map writes it back unchanged.  Its bytes are never shown by repr.
    """

    __slots__ = ("data",)

    def __init__(self, data):
        self.data = bytes(data)

    def __eq__(self, other):
        return isinstance(other, RawValue) and other.data == self.data

    def __hash__(self):
        return hash((RawValue, self.data))

    def __repr__(self):
        return "<RawValue %d bytes>" % (len(self.data),)


class Hessian2Reader:
    """
    A cursor over a buffer.  C{offset} is the next byte to read; every method advances it.  Class definitions
    seen so far are remembered (as field counts), since an object instance refers to them by index.

    @raise HessianError: from every read/skip method on malformed or truncated input.
    """

    def __init__(self, data, offset=0, end=None, maxDepth=DEFAULT_MAX_DEPTH):
        self.buf = memoryview(data)
        self.offset = offset
        self.end = len(self.buf) if end is None else end
        self.maxDepth = maxDepth
        self.classFieldCounts = []

    # -- low level ---------------------------------------------------------------------------------------

    def atEnd(self):
        return self.offset >= self.end

    def _take(self, n):
        start = self.offset
        stop = start + n
        if n < 0 or stop > self.end:
            raise HessianError("truncated hessian value at offset %d" % (start,))
        self.offset = stop
        return start

    def _byte(self):
        off = self.offset
        if off >= self.end:
            raise HessianError("truncated hessian value at offset %d" % (off,))
        self.offset = off + 1
        return self.buf[off]

    def peek(self):
        if self.offset >= self.end:
            raise HessianError("truncated hessian value at offset %d" % (self.offset,))
        return self.buf[self.offset]

    def _checkCount(self, count):
        # Every value takes at least one byte: a count beyond the bytes left is a lie.
        if count < 0 or count > self.end - self.offset:
            raise HessianError("hessian length %d exceeds the input" % (count,))
        return count

    # -- scalars -----------------------------------------------------------------------------------------

    def readNull(self):
        if self._byte() != 0x4E:
            self.offset -= 1
            raise HessianError("expected hessian null at offset %d" % (self.offset,))
        return None

    def readBool(self):
        code = self._byte()
        if code == 0x54:
            return True
        if code == 0x46:
            return False
        self.offset -= 1
        raise HessianError("expected hessian boolean at offset %d" % (self.offset,))

    def readInt(self):
        """Read a hessian int (any of its four encodings)."""
        code = self._byte()
        return self._intAfter(code)

    def _intAfter(self, code):
        buf = self.buf
        if 0x80 <= code <= 0xBF:
            return code - 0x90
        if 0xC0 <= code <= 0xCF:
            off = self._take(1)
            return ((code - 0xC8) << 8) + buf[off]
        if 0xD0 <= code <= 0xD7:
            off = self._take(2)
            return ((code - 0xD4) << 16) + (buf[off] << 8) + buf[off + 1]
        if code == 0x49:
            return _unpackInt(buf, self._take(4))[0]
        self.offset -= 1
        raise HessianError("expected hessian int at offset %d" % (self.offset,))

    def readLong(self):
        """Read a hessian long; a hessian int is accepted too, as Java's readLong does."""
        code = self._byte()
        buf = self.buf
        if 0xD8 <= code <= 0xEF:
            return code - 0xE0
        if 0xF0 <= code <= 0xFF:
            off = self._take(1)
            return ((code - 0xF8) << 8) + buf[off]
        if 0x38 <= code <= 0x3F:
            off = self._take(2)
            return ((code - 0x3C) << 16) + (buf[off] << 8) + buf[off + 1]
        if code == 0x59:
            return _unpackInt(buf, self._take(4))[0]
        if code == 0x4C:
            return _unpackLong(buf, self._take(8))[0]
        return self._intAfter(code)

    def readDouble(self):
        code = self._byte()
        buf = self.buf
        if code == 0x5B:
            return 0.0
        if code == 0x5C:
            return 1.0
        if code == 0x5D:
            b = buf[self._take(1)]
            return float(b - 256 if b > 127 else b)
        if code == 0x5E:
            return float(_unpackShort(buf, self._take(2))[0])
        if code == 0x5F:
            # The spec says "32-bit float"; Java Hessian (and Dubbo's hessian-lite) write and read milliunits.
            return _unpackInt(buf, self._take(4))[0] * 0.001
        if code == 0x44:
            return _unpackDouble(buf, self._take(8))[0]
        self.offset -= 1
        raise HessianError("expected hessian double at offset %d" % (self.offset,))

    def readDate(self):
        """Read a date as milliseconds since the epoch (UTC)."""
        code = self._byte()
        if code == 0x4A:
            return _unpackLong(self.buf, self._take(8))[0]
        if code == 0x4B:
            return _unpackInt(self.buf, self._take(4))[0] * 60000
        self.offset -= 1
        raise HessianError("expected hessian date at offset %d" % (self.offset,))

    def readBinary(self):
        code = self._byte()
        buf = self.buf
        parts = []
        while True:
            if 0x20 <= code <= 0x2F:
                n, final = code - 0x20, True
            elif 0x34 <= code <= 0x37:
                n, final = ((code - 0x34) << 8) + buf[self._take(1)], True
            elif code in (0x41, 0x42):
                n, final = _unpackU16(buf, self._take(2))[0], code == 0x42
            else:
                self.offset -= 1
                raise HessianError("expected hessian binary at offset %d" % (self.offset,))
            off = self._take(n)
            parts.append(bytes(buf[off:off + n]))
            if final:
                return b"".join(parts)
            code = self._byte()

    def readString(self):
        """Read a string in any encoding (short, medium, 'S', chunked 'R'...'S')."""
        code = self._byte()
        parts = []
        while True:
            if code <= 0x1F:
                n, final = code, True
            elif 0x30 <= code <= 0x33:
                n, final = ((code - 0x30) << 8) + self.buf[self._take(1)], True
            elif code in (0x52, 0x53):
                n, final = _unpackU16(self.buf, self._take(2))[0], code == 0x53
            else:
                self.offset -= 1
                raise HessianError("expected hessian string at offset %d" % (self.offset,))
            parts.append(self._utf8Chars(n))
            if final:
                break
            code = self._byte()
        raw = b"".join(parts)
        try:
            # Java writes supplementary characters as two 3-byte surrogates (CESU-8); re-pair them.
            text = raw.decode("utf-8", "surrogatepass")
            if any(0xD800 <= ord(c) <= 0xDFFF for c in text):
                text = text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "surrogatepass")
            return text
        except UnicodeDecodeError:
            raise HessianError("invalid UTF-8 in hessian string")

    def _utf8Chars(self, n):
        """Consume C{n} UTF-16 code units of (Java-flavoured) UTF-8 and return their bytes."""
        buf = self.buf
        start = self.offset
        stop = start + n
        if stop <= self.end and bytes(buf[start:stop]).isascii():
            self.offset = stop
            return bytes(buf[start:stop])
        self._checkCount(n)
        off = start
        end = self.end
        units = 0
        while units < n:
            if off >= end:
                raise HessianError("truncated hessian string at offset %d" % (start,))
            b = buf[off]
            if b < 0x80:
                off += 1
                units += 1
            elif b < 0xE0:
                off += 2
                units += 1
            elif b < 0xF0:
                off += 3
                units += 1
            else:
                off += 4  # a 4-byte sequence is one supplementary char: two UTF-16 units
                units += 2
        if off > end:
            raise HessianError("truncated hessian string at offset %d" % (start,))
        self.offset = off
        return bytes(buf[start:off])

    def readType(self):
        """A type is a string (a new type name) or an int (a reference to an earlier one)."""
        code = self.peek()
        if code <= 0x1F or 0x30 <= code <= 0x33 or code in (0x52, 0x53):
            return self.readString()
        return self.readInt()

    # -- skipping ----------------------------------------------------------------------------------------

    def skipValue(self, depth=0):
        """Move past one value of any kind without building it."""
        if depth > self.maxDepth:
            raise HessianError("hessian nesting deeper than %d" % (self.maxDepth,))
        code = self._byte()
        while code == 0x43:  # class definitions precede the value that first uses them
            self._readClassDef()
            code = self._byte()
        if code <= 0x1F or 0x30 <= code <= 0x33 or code in (0x52, 0x53):
            self.offset -= 1
            self._skipString()
        elif code >= 0x80:
            self.offset -= 1
            if code <= 0xD7:
                self.readInt()
            else:
                self.readLong()
        elif code in (0x4E, 0x54, 0x46, 0x5B, 0x5C):  # N T F 0.0 1.0
            pass
        elif 0x38 <= code <= 0x3F or code in (0x59, 0x4C, 0x49):
            self.offset -= 1
            self.readLong()
        elif 0x5D <= code <= 0x5F or code == 0x44:
            self.offset -= 1
            self.readDouble()
        elif code in (0x4A, 0x4B):
            self._take(8 if code == 0x4A else 4)
        elif 0x20 <= code <= 0x2F or 0x34 <= code <= 0x37 or code in (0x41, 0x42):
            self.offset -= 1
            self.readBinary()
        elif code == 0x51:  # Q ref
            self.readInt()
        elif code == 0x4F or 0x60 <= code <= 0x6F:  # O object instance
            ref = self.readInt() if code == 0x4F else code - 0x60
            if not 0 <= ref < len(self.classFieldCounts):
                raise HessianError("hessian object refers to unknown class definition %d" % (ref,))
            for _ in range(self.classFieldCounts[ref]):
                self.skipValue(depth + 1)
        elif code in (0x48, 0x4D):  # H untyped map, M typed map
            if code == 0x4D:
                self.readType()
            while self.peek() != 0x5A:
                self.skipValue(depth + 1)
                self.skipValue(depth + 1)
            self.offset += 1
        elif code in (0x55, 0x57):  # U typed / W untyped variable-length list
            if code == 0x55:
                self.readType()
            while self.peek() != 0x5A:
                self.skipValue(depth + 1)
            self.offset += 1
        elif code in (0x56, 0x58) or 0x70 <= code <= 0x7F:  # fixed-length lists
            if code == 0x56 or 0x70 <= code <= 0x77:
                self.readType()
            if code in (0x56, 0x58):
                count = self._checkCount(self.readInt())
            else:
                count = (code - 0x70) & 0x07
            for _ in range(count):
                self.skipValue(depth + 1)
        else:
            self.offset -= 1
            raise HessianError("unexpected hessian code 0x%02x at offset %d" % (code, self.offset))

    def _skipString(self):
        code = self._byte()
        while True:
            if code <= 0x1F:
                n, final = code, True
            elif 0x30 <= code <= 0x33:
                n, final = ((code - 0x30) << 8) + self.buf[self._take(1)], True
            else:
                n, final = _unpackU16(self.buf, self._take(2))[0], code == 0x53
            self._utf8Chars(n)
            if final:
                return
            code = self._byte()
            if code not in (0x52, 0x53) and not (code <= 0x1F or 0x30 <= code <= 0x33):
                self.offset -= 1
                raise HessianError("bad hessian string chunk at offset %d" % (self.offset,))

    def _readClassDef(self):
        self.readString()  # class name, never looked up
        count = self._checkCount(self.readInt())
        for _ in range(count):
            self._skipString()
        self.classFieldCounts.append(count)

    # -- attachments -------------------------------------------------------------------------------------

    def readSimpleValue(self):
        """A string, int, long, bool or null is decoded; anything else is skipped and kept as a RawValue."""
        code = self.peek()
        if code <= 0x1F or 0x30 <= code <= 0x33 or code in (0x52, 0x53):
            return self.readString()
        if 0x80 <= code <= 0xD7 or code == 0x49:
            return self.readInt()
        if code >= 0xD8 or 0x38 <= code <= 0x3F or code in (0x59, 0x4C):
            return self.readLong()
        if code == 0x4E:
            self.offset += 1
            return None
        if code in (0x54, 0x46):
            return self.readBool()
        start = self.offset
        self.skipValue(1)
        return RawValue(self.buf[start:self.offset])

    def readSimpleMap(self):
        """
        Read a map ('H' or typed 'M') of simple values, e.g. Dubbo attachments; null reads as {}.
        Keys that are not strings are kept as RawValue too.
        """
        code = self._byte()
        if code == 0x4E:
            return {}
        if code == 0x4D:
            self.readType()
        elif code != 0x48:
            self.offset -= 1
            raise HessianError("expected hessian map at offset %d" % (self.offset,))
        result = {}
        while self.peek() != 0x5A:
            key = self.readSimpleValue()
            result[key] = self.readSimpleValue()
        self.offset += 1
        return result


class Hessian2Writer:
    """Appends hessian 2 encodings to a bytearray; C{getvalue()} returns the bytes."""

    def __init__(self):
        self.out = bytearray()

    def getvalue(self):
        return bytes(self.out)

    def writeNull(self):
        self.out.append(0x4E)

    def writeBool(self, value):
        self.out.append(0x54 if value else 0x46)

    def writeInt(self, value):
        out = self.out
        if -0x10 <= value <= 0x2F:
            out.append(value + 0x90)
        elif -0x800 <= value <= 0x7FF:
            out += bytes(((value >> 8) + 0xC8, value & 0xFF))
        elif -0x40000 <= value <= 0x3FFFF:
            out += bytes(((value >> 16) + 0xD4, (value >> 8) & 0xFF, value & 0xFF))
        elif -0x80000000 <= value <= 0x7FFFFFFF:
            out.append(0x49)
            out += struct.pack(">i", value)
        else:
            self.writeLong(value)

    def writeLong(self, value):
        out = self.out
        if -0x08 <= value <= 0x0F:
            out.append(value + 0xE0)
        elif -0x800 <= value <= 0x7FF:
            out += bytes(((value >> 8) + 0xF8, value & 0xFF))
        elif -0x40000 <= value <= 0x3FFFF:
            out += bytes(((value >> 16) + 0x3C, (value >> 8) & 0xFF, value & 0xFF))
        elif -0x80000000 <= value <= 0x7FFFFFFF:
            out.append(0x59)
            out += struct.pack(">i", value)
        else:
            out.append(0x4C)
            out += struct.pack(">q", value)

    def writeString(self, value):
        """Write a string with Java's length unit (UTF-16 code units) and encoding (CESU-8), chunked at 32k."""
        units = value.encode("utf-16-le", "surrogatepass")
        total = len(units) // 2
        out = self.out
        if total <= 0x1F and value.isascii():
            out.append(total)
            out += value.encode("ascii")
            return
        pos = 0
        while True:
            n = min(total - pos, 0x8000)
            chunk = units[pos * 2:(pos + n) * 2]
            # Don't split a surrogate pair across chunks.
            if n and pos + n < total and 0xD800 <= int.from_bytes(chunk[-2:], "little") <= 0xDBFF:
                n -= 1
                chunk = chunk[:-2]
            data = chunk.decode("utf-16-le", "surrogatepass")
            data = "".join(_cesu(c) for c in data) if not data.isascii() else data
            data = data.encode("utf-8", "surrogatepass")
            pos += n
            final = pos >= total
            if final and n <= 0x1F:
                out.append(n)
            elif final and n <= 0x3FF:
                out += bytes((0x30 + (n >> 8), n & 0xFF))
            else:
                out += bytes((0x53 if final else 0x52, n >> 8, n & 0xFF))
            out += data
            if final:
                return

    def writeSimpleValue(self, value):
        """Write a str, bool, int, None or RawValue (written back verbatim)."""
        if isinstance(value, str):
            self.writeString(value)
        elif value is None:
            self.writeNull()
        elif isinstance(value, bool):
            self.writeBool(value)
        elif isinstance(value, int):
            self.writeInt(value)
        elif isinstance(value, RawValue):
            self.out += value.data
        else:
            raise TypeError("cannot hessian-encode a %s" % (type(value).__name__,))

    def writeSimpleMap(self, mapping):
        """Write an untyped map ('H' ... 'Z') of simple keys and values, in the dict's order."""
        self.out.append(0x48)
        for key, value in mapping.items():
            self.writeSimpleValue(key)
            self.writeSimpleValue(value)
        self.out.append(0x5A)


def _cesu(char):
    """A supplementary character as two surrogates (so UTF-8 encoding yields Java's 3+3 bytes)."""
    code = ord(char)
    if code <= 0xFFFF:
        return char
    code -= 0x10000
    return chr(0xD800 + (code >> 10)) + chr(0xDC00 + (code & 0x3FF))
