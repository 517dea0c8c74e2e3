"""
A sans-IO splitter for a byte stream of concatenated JSON objects: what etcd v3's HTTP/JSON gateway answers on a
streamed call (``/v3/watch``: one ``{"result": ...}`` object per watch response, as long as the stream lives), and
on a unary one (a single object).  ``feed(bytes)`` returns the objects completed by those bytes (an empty list:
need more); chunks may split an object anywhere, down to single bytes.  Malformed input raises
L{JSONStreamError}; an object past ``maxSize`` bytes too (bounded memory whatever the peer sends).

The scan keeps its state between feeds (nesting depth, inside a string or not), so every byte is looked at once:
regular expressions skip string contents and the text between braces at C speed; each completed object is decoded
with the standard json module.
"""

import json
import re

from txmesh.errors import CodecError

# the largest object accepted: a range answer for a prefix of ~100,000 keys with small JSON values
MAX_OBJECT_SIZE = 64 * 1024 * 1024

_STRUCTURE = re.compile(rb'[{}"]')
# the rest of a string's contents: anything but a quote or backslash, or an escaped byte (stops before the closing
# quote, or at the end of the buffer, leaving a lone trailing backslash for the next feed)
_STRING_BODY = re.compile(rb'[^"\\]*(?:\\.[^"\\]*)*', re.S)
_SPACE = re.compile(rb'[ \t\r\n]*')


class JSONStreamError(CodecError):
    """The stream is not a sequence of JSON objects, or one is larger than allowed."""


class JSONStreamDecoder:
    """
    @param maxSize: the largest object, in bytes.
    """

    def __init__(self, maxSize=MAX_OBJECT_SIZE):
        self.maxSize = maxSize
        self._buf = bytearray()
        self._pos = 0  # next byte to scan
        self._depth = 0  # 0: between objects
        self._inString = False
        self._start = 0  # where the current object starts

    def feed(self, data):
        """@return: the list of objects (dicts) the bytes complete.  @raise JSONStreamError: on malformed input."""
        buf = self._buf
        buf += data
        out = []
        end = len(buf)
        pos = self._pos
        while pos < end:
            if self._depth == 0:
                pos = _SPACE.match(buf, pos).end()
                if pos == end:
                    break
                if buf[pos] != 0x7B:  # '{'
                    raise JSONStreamError("expected a JSON object, got %r" % (bytes(buf[pos:pos + 20]),))
                self._start = pos
                self._depth = 1
                pos += 1
            elif self._inString:
                pos = _STRING_BODY.match(buf, pos).end()
                if pos == end or buf[pos] == 0x5C:  # cut inside the string, maybe after a backslash
                    break
                self._inString = False  # buf[pos] is the closing quote
                pos += 1
            else:
                m = _STRUCTURE.search(buf, pos)
                if m is None:
                    pos = end
                    break
                pos = m.end()
                c = buf[pos - 1]
                if c == 0x22:  # '"'
                    self._inString = True
                elif c == 0x7B:
                    self._depth += 1
                else:  # '}'
                    self._depth -= 1
                    if self._depth == 0:
                        if pos - self._start > self.maxSize:
                            raise JSONStreamError("a JSON object over %d bytes" % (self.maxSize,))
                        out.append(self._decode(bytes(buf[self._start:pos])))
        # drop what is done with: everything before the pending object, or all that was scanned
        done = self._start if self._depth else pos
        if done:
            del buf[:done]
            pos -= done
            self._start = 0
        self._pos = pos
        if self._depth and len(buf) > self.maxSize:
            raise JSONStreamError("a JSON object over %d bytes" % (self.maxSize,))
        return out

    @staticmethod
    def _decode(raw):
        try:
            value = json.loads(raw)
        except ValueError as e:  # JSONDecodeError, or UnicodeDecodeError on bytes that are not UTF-8
            raise JSONStreamError("malformed JSON object: %s" % (e,)) from None
        if not isinstance(value, dict):
            raise JSONStreamError("expected a JSON object")
        return value

    def pending(self):
        """True while part of an object has been fed but not completed (a stream that ends now was cut)."""
        return self._depth > 0
