"""
HPACK for txmesh's HTTP/2 connections: an encoder without a dynamic table, and a decoder that remembers blocks.

Encoding: the static table and literals, no dynamic table.
hpack's own Encoder searches its dynamic table linearly for every field and logs each step; on the forwarding
path that was a fifth of the CPU of a proxied gRPC call.  Without a dynamic table the encoding of a field is a pure
function of its name and value, so it is memoised: a header block is a few dict lookups and one join.

The cost is bytes on the wire (a repeated field is a literal each time, not a one-byte index; values are not
Huffman-coded), which matters little between a sidecar and its local service.  The peer's dynamic table is never
touched: fields are sent "without indexing" (RFC 7541 6.2.2), or "never indexed" (6.2.3) for credentials, as
Envoy/nghttp2 do, so no table-size update is needed whatever SETTINGS_HEADER_TABLE_SIZE the peer announces.

Decoding: a peer sends the same request or response head again and again, and once its encoder has indexed the
fields, the block is the same bytes each time.  L{MemoDecoder} is hpack's Decoder that keeps the result of a
block whose decoding left the dynamic table as it was, and gives it again for the same bytes while the table is
still in that state; anything else is decoded by hpack as usual.
"""

from hpack import Decoder
from hpack.table import HeaderTable

_STATIC = HeaderTable.STATIC_TABLE_MAPPING  # name -> (index of the name, {value: index of the pair})

# credentials never enter an intermediary's compression context
_NEVER_INDEXED = frozenset([b"authorization", b"proxy-authorization", b"cookie", b"set-cookie"])

_CACHE_LIMIT = 4096


def _integer(value, prefixBits, first):
    """RFC 7541 5.1: ``value`` with an N-bit prefix, ``first`` holding the representation's leading bits."""
    limit = (1 << prefixBits) - 1
    if value < limit:
        return bytes([first | value])
    out = bytearray([first | limit])
    value -= limit
    while value >= 128:
        out.append((value & 127) | 128)
        value >>= 7
    out.append(value)
    return bytes(out)


def _string(s):
    """A raw (not Huffman-coded) string literal."""
    return _integer(len(s), 7, 0) + s


def encodeField(name, value):
    """One field's representation: a static-table index, or a literal that leaves the peer's table alone."""
    entry = _STATIC.get(name)
    never = name in _NEVER_INDEXED
    if entry is not None:
        if not never:
            index = entry[1].get(value)
            if index is not None:
                return _integer(index, 7, 0x80)
        return _integer(entry[0], 4, 0x10 if never else 0x00) + _string(value)
    return (b"\x10" if never else b"\x00") + _string(name) + _string(value)


class StatelessEncoder:
    """
    The HPACK encoder of txmesh's HTTP/2 connections (``encode(fields) -> bytes``).  It never indexes, yet when the
    peer announces SETTINGS_HEADER_TABLE_SIZE the next block must start with a dynamic table size update (RFC 7541
    4.2): nghttp2 (curl, nginx, Envoy) rejects a block without it after lowering the size.  The update is to 0, the
    size this encoder uses, which no setting can be below.
    """

    def __init__(self):
        self._cache = {}
        self._sizeUpdate = False

    def tableSizeChanged(self):
        """The peer sent SETTINGS_HEADER_TABLE_SIZE: start the next block with a size update to 0."""
        self._sizeUpdate = True

    def encode(self, headers):
        cache = self._cache
        out = []
        if self._sizeUpdate:
            self._sizeUpdate = False
            out.append(b"\x20")
        for key in headers:
            b = cache.get(key)
            if b is None:
                key = (bytes(key[0]), bytes(key[1]))
                b = encodeField(key[0], key[1])
                if len(cache) >= _CACHE_LIMIT:
                    cache.clear()
                cache[key] = b
            out.append(b)
        return b"".join(out)


_MEMO_LIMIT = 128  # blocks per connection
_MEMO_BLOCK = 1024  # bytes: larger blocks are not remembered (bounds the memo at 128 KiB)


class MemoDecoder(Decoder):
    """
    hpack's Decoder with a memo of blocks that did not change the dynamic table.

    The table's state is its first entry (a new tuple on every insertion, kept alive by the memo so its identity
    cannot be reused), its length and size limit, and the decoder's limits: equal state and equal bytes give an
    equal result, including the same limit checks.
    """

    hits = 0

    def __init__(self, *args, **kwargs):
        Decoder.__init__(self, *args, **kwargs)
        self._memo = {}

    def _state(self):
        table = self.header_table
        entries = table.dynamic_entries
        return (entries[0] if entries else None, len(entries), table.maxsize, self.max_header_list_size,
                self.max_allowed_table_size)

    def decode(self, data, raw=False):
        if not raw or len(data) > _MEMO_BLOCK:
            return Decoder.decode(self, data, raw)
        key = data if type(data) is bytes else bytes(data)
        state = self._state()
        hit = self._memo.get(key)
        if hit is not None and hit[0] is state[0] and hit[1:5] == state[1:]:
            self.hits += 1
            return list(hit[5])
        headers = Decoder.decode(self, data, raw)
        after = self._state()
        if after[0] is state[0] and after[1:] == state[1:]:
            memo = self._memo
            if len(memo) >= _MEMO_LIMIT:
                memo.clear()
            memo[key] = state + (tuple(headers),)
        return headers
