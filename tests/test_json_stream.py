"""
txmesh.discovery.json_stream: the splitter of etcd's streamed JSON answers, fed captured watch responses whole,
split at every point and byte by byte; malformed and oversized input raises JSONStreamError.
"""

import json

import pytest

from txmesh.discovery.json_stream import JSONStreamDecoder, JSONStreamError
from txmesh.errors import CodecError

# what etcd 3.4's gateway streamed for a watch on /svc/ (created, a put, a delete), then a compaction cancel
CAPTURED = (
    b'{"result":{"header":{"cluster_id":"15118495548433857066","member_id":"13668033151171901709","revision":"2",'
    b'"raft_term":"2"},"created":true}}\n'
    b'{"result":{"header":{"cluster_id":"15118495548433857066","member_id":"13668033151171901709","revision":"3",'
    b'"raft_term":"2"},"events":[{"kv":{"key":"L3N2Yy9i","create_revision":"3","mod_revision":"3","version":"1"}}]}}\n'
    b'{"result":{"header":{"cluster_id":"15118495548433857066","member_id":"13668033151171901709","revision":"4",'
    b'"raft_term":"2"},"events":[{"type":"DELETE","kv":{"key":"L3N2Yy9i","mod_revision":"4"}}]}}\n'
    b'{"result":{"header":{"cluster_id":"15118495548433857066","member_id":"13668033151171901709",'
    b'"raft_term":"2"},"canceled":true,"compact_revision":"2"}}\n')
EXPECTED = [json.loads(line) for line in CAPTURED.splitlines()]

# strings holding braces, quotes and backslashes, nested objects and arrays, no newline between objects
TRICKY = [{"a": "}{", "b": "\"{\\", "c": [{"d": {}}, "]", "\\\\\""], "e": "\u00e9\u2028"}, {"x": 1}, {}]
TRICKY_BYTES = b"".join(json.dumps(o, ensure_ascii=False).encode("utf-8") for o in TRICKY)


def feedAll(chunks):
    d = JSONStreamDecoder()
    out = []
    for c in chunks:
        out.extend(d.feed(c))
    return out, d


def test_whole():
    out, d = feedAll([CAPTURED])
    assert out == EXPECTED
    assert not d.pending()


def test_byte_by_byte():
    for data, expected in ((CAPTURED, EXPECTED), (TRICKY_BYTES, TRICKY)):
        out, d = feedAll([data[i:i + 1] for i in range(len(data))])
        assert out == expected
        assert not d.pending()


def test_split_at_every_point():
    for data, expected in ((CAPTURED, EXPECTED), (TRICKY_BYTES, TRICKY)):
        for i in range(len(data) + 1):
            out, d = feedAll([data[:i], data[i:]])
            assert out == expected, i


def test_objects_come_out_as_soon_as_complete():
    d = JSONStreamDecoder()
    first = CAPTURED.index(b"\n") + 1
    assert d.feed(CAPTURED[:first - 2]) == []
    assert d.pending()
    assert d.feed(CAPTURED[first - 2:first + 5]) == [EXPECTED[0]]
    assert d.pending()  # the second object has started


def test_whitespace_between_and_around():
    out, _ = feedAll([b"  \r\n{\"a\": 1}\n\n\t {\"b\" :\n 2}  \n"])
    assert out == [{"a": 1}, {"b": 2}]


@pytest.mark.parametrize("data", [
    b"[1, 2]",  # not an object
    b'{"a": 1} x',  # garbage between objects
    b'{"a": }',  # balanced braces, bad JSON
    b'{"a": "\xff\xfe"}',  # not UTF-8
    b'{"a": 1}}',  # a stray closing brace
])
def test_malformed(data):
    d = JSONStreamDecoder()
    with pytest.raises(JSONStreamError):
        for i in range(len(data)):
            d.feed(data[i:i + 1])
    assert issubclass(JSONStreamError, CodecError)


def test_oversized_object_is_refused_while_it_arrives():
    d = JSONStreamDecoder(maxSize=100)
    d.feed(b'{"a": "' + b"x" * 50)
    with pytest.raises(JSONStreamError, match="over 100 bytes"):
        d.feed(b"x" * 60)
    # a complete object over the bound, in one piece, too
    with pytest.raises(JSONStreamError):
        JSONStreamDecoder(maxSize=100).feed(b'{"a": "' + b"x" * 200 + b'"}')


def test_large_answer_is_linear():
    # a range answer for 20,000 keys in 1,400-byte chunks (a TCP segment each)
    kvs = [{"key": "L3N2Yy9h%05d" % i, "value": "eyJhZGRyZXNzIjoiMTI3LjAuMC4xOjgwIn0=", "mod_revision": str(i)}
           for i in range(20000)]
    data = json.dumps({"header": {"revision": "5"}, "kvs": kvs}).encode()
    out, _ = feedAll([data[i:i + 1400] for i in range(0, len(data), 1400)])
    assert out[0]["kvs"][-1]["key"] == "L3N2Yy9h19999"
