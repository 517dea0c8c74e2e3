"""
The HPACK encoder decodes (with hpack's own decoder) to exactly what was given; the memoising decoder decodes
every block exactly as hpack's own decoder does, whatever the dynamic table went through in between.
"""

from hpack import Decoder
from hpack.table import HeaderTable

from hpack import Encoder

from txmesh.protocols.h2.hpack import MemoDecoder, StatelessEncoder, encodeField

FIELDS = [
    (b":status", b"200"),  # static pair
    (b":method", b"POST"),
    (b":path", b"/helloworld.Greeter/SayHello"),  # static name, literal value
    (b"content-type", b"application/grpc"),
    (b"grpc-status", b"0"),  # new name
    (b"grpc-message", b""),  # empty value
    (b"x-long", b"v" * 300),  # multi-byte length
    (b"x-" + b"n" * 200, b"1"),  # multi-byte name length
    (b"authorization", b"Bearer secret"),  # never indexed
    (b"cookie", b"a=b"),
    (b"grpc-status-details-bin", bytes(range(256))),  # any octets
]


def test_round_trip_leaves_the_peers_table_empty():
    enc, dec = StatelessEncoder(), Decoder()
    for _ in range(3):  # second and third blocks come from the memo
        block = enc.encode(FIELDS)
        assert dec.decode(block, raw=True) == FIELDS
        assert len(dec.header_table.dynamic_entries) == 0


def test_representations():
    assert encodeField(b":status", b"200") == b"\x88"  # indexed, static 8
    assert encodeField(b":path", b"/x") == b"\x04\x02/x"  # literal without indexing, name index 4
    assert encodeField(b"x-a", b"b") == b"\x00\x03x-a\x01b"
    assert encodeField(b"authorization", b"t")[:1] == b"\x1f"  # never indexed, name index 23 (15 + 8)
    # a credential is never sent as a static pair even when it matches one
    assert encodeField(b"cookie", b"")[0] & 0xf0 == 0x10
    assert HeaderTable.STATIC_TABLE[7] == (b":status", b"200")


def test_memo_is_bounded():
    enc = StatelessEncoder()
    for i in range(10000):
        enc.encode([(b"x-request-id", b"%d" % i)])
    assert len(enc._cache) <= 4096


def test_header_table_size_setting_starts_the_next_block_with_a_size_update():
    """RFC 7541 4.2: after the peer's SETTINGS_HEADER_TABLE_SIZE, the next block opens with an update (to 0)."""
    enc = StatelessEncoder()
    enc.tableSizeChanged()
    first = enc.encode([(b"a", b"b")])
    assert first[:1] == b"\x20"
    dec = Decoder()
    dec.max_allowed_table_size = 0
    assert dec.decode(first, raw=True) == [(b"a", b"b")]
    assert enc.encode([(b"a", b"b")])[:1] != b"\x20"


def _pairs(headers):
    return [(bytes(n), bytes(v)) for n, v in headers]


def test_memo_decoder_agrees_with_hpack_through_table_changes():
    """A peer encoder that indexes: the same block bytes mean different fields after the table moved."""
    import random
    rng = random.Random(7)
    peer = Encoder()
    ours, reference = MemoDecoder(), Decoder()
    names = [b"x-a", b"x-b", b"x-c", b"user-agent", b"content-type"]
    for i in range(3000):
        n = rng.randint(1, 4)
        headers = [(rng.choice(names), b"v%d" % rng.randint(0, 12)) for _ in range(n)]
        if i % 97 == 0:
            peer.header_table_size = rng.choice([0, 256, 4096])  # size updates, table evictions
        block = peer.encode(headers)
        assert _pairs(ours.decode(block, raw=True)) == _pairs(reference.decode(block, raw=True)) == headers
    assert ours._memo  # it did remember some blocks
    assert ours.hits > 20  # and gave them again (correctly: checked against hpack above)


def test_memo_decoder_same_bytes_after_table_change_is_decoded_again():
    peer = Encoder()
    ours = MemoDecoder()
    first = peer.encode([(b"x-a", b"1")])  # literal with incremental indexing: changes the table
    again = peer.encode([(b"x-a", b"1")])  # one indexed reference: \xbe (62)
    assert ours.decode(first, raw=True) == [(b"x-a", b"1")]
    assert ours.decode(again, raw=True) == [(b"x-a", b"1")]
    assert again in ours._memo
    # a block that inserts x-b: index 62 now means x-b, and the remembered bytes must be decoded afresh
    ours.decode(Encoder().encode([(b"x-b", b"2")]), raw=True)
    assert _pairs(ours.decode(again, raw=True)) == [(b"x-b", b"2")]


def test_memo_decoder_keeps_the_header_list_limit():
    from hpack.exceptions import OversizedHeaderListError
    import pytest
    ours = MemoDecoder(max_header_list_size=100)
    block = Encoder().encode([(b"x-a", b"v" * 20)])
    ours.decode(block, raw=True)
    ours.max_header_list_size = 10
    with pytest.raises(OversizedHeaderListError):
        ours.decode(block, raw=True)
