"""
txmesh.protocols.auto.codec: the sans-IO protocol sniffer, on real first bytes (curl, grpcio, the sofa-rpc-node
Dubbo consumer, curl's TLS ClientHello) fed whole, split at every offset and byte by byte, and on bytes it must
refuse as soon as they fit nothing.
"""

import os

import pytest

from txmesh.errors import DetectionFailed
from txmesh.protocols.auto.codec import (DUBBO, H2_PREFACE, HTTP1, HTTP2, MIN_BYTES, PROTOCOLS, TLS,
                                         ProtocolSniffer)

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")


def load(*path):
    full = os.path.join(FIXTURES, *path)
    with open(full, "rb") as f:
        data = f.read()
    return bytes.fromhex(data.decode("ascii").replace("\n", "")) if full.endswith(".hex") else data


CAPTURES = {
    "curl-http1": (load("detect", "curl-http1.c2s.bin"), HTTP1),
    "curl-h2-prior-knowledge": (load("h2", "curl-get.c2s.bin"), HTTP2),
    "grpcio-unary": (load("h2", "grpcio-unary.c2s.bin"), HTTP2),
    "sofa-dubbo-request": (load("dubbo-frames", "sofa-consumer__sofa-provider", "c0-c2s-000-req-echo.hex"), DUBBO),
    "dubbojs-request": (load("dubbo-frames", "dubbojs-consumer__sofa-provider", "c0-c2s-002-req-mixed.hex"), DUBBO),
    "curl-tls-clienthello": (load("detect", "curl-tls-h2.c2s.bin"), TLS),
}


def feedAll(sniffer, chunks):
    """Feed chunks until a verdict; @return: (verdict, chunks fed)."""
    for n, chunk in enumerate(chunks, 1):
        verdict = sniffer.feed(chunk)
        if verdict is not None:
            return verdict, n
    return None, len(chunks)


@pytest.mark.parametrize("name", sorted(CAPTURES))
def test_captures_whole(name):
    data, expected = CAPTURES[name]
    s = ProtocolSniffer(PROTOCOLS)
    assert s.feed(data) == expected
    assert s.data == data  # every byte kept for the replay, also those after the verdict


@pytest.mark.parametrize("name", sorted(CAPTURES))
def test_captures_byte_by_byte_decide_at_the_signatures_end(name):
    data, expected = CAPTURES[name]
    s = ProtocolSniffer(PROTOCOLS)
    verdict, n = feedAll(s, [data[i:i + 1] for i in range(len(data))])
    assert verdict == expected
    # the byte that completes the signature, never later
    ends = {TLS: 3, DUBBO: 2, HTTP2: len(H2_PREFACE)}
    assert n == (ends[expected] if expected in ends else data.index(b" ") + 1)
    assert s.data == data[:n]


@pytest.mark.parametrize("name", sorted(CAPTURES))
def test_captures_split_at_every_offset(name):
    data, expected = CAPTURES[name]
    for cut in range(1, 40):
        s = ProtocolSniffer(PROTOCOLS)
        verdict, n = feedAll(s, [data[:cut], data[cut:]])
        assert verdict == expected, cut
        assert data.startswith(s.data)


@pytest.mark.parametrize("method", [b"GET", b"POST", b"PUT", b"PATCH", b"DELETE", b"HEAD", b"OPTIONS",
                                    b"CONNECT", b"TRACE", b"PROPFIND", b"PR", b"P"])
def test_any_method_token_then_a_space_is_http1(method):
    assert ProtocolSniffer(PROTOCOLS).feed(method + b" /x HTTP/1.1\r\n") == HTTP1


def test_pri_waits_for_the_whole_preface_and_is_never_http1():
    s = ProtocolSniffer(PROTOCOLS)
    for b in H2_PREFACE[:-1]:
        assert s.feed(bytes([b])) is None
    assert s.feed(H2_PREFACE[-1:]) == HTTP2


def test_pri_request_line_of_http1_is_refused_where_it_leaves_the_preface():
    s = ProtocolSniffer(PROTOCOLS)
    data = b"PRI * HTTP/1.1\r\n\r\n"
    for i, b in enumerate(data):
        try:
            assert s.feed(bytes([b])) is None
        except DetectionFailed as e:
            assert e.why == "unknown"
            assert i == H2_PREFACE.index(b"2")  # the first byte that disagrees with every candidate
            return
    pytest.fail("not refused")


@pytest.mark.parametrize("data, at", [
    (b"\x00\x01\x02", 0),
    (b"\r\nGET / HTTP/1.1\r\n", 0),  # no empty line before a request line (see docs/configuration.md)
    (b"GET\t/", 3),
    (b"\x16\x02\x01", 1),  # not a TLS record version
    (b"\x16\x03\x05", 2),
    (b"\x16\x03\x00", 2),  # SSL 3.0
    (b"\xda\xbc", 1),
    (b"SSH-2.0-OpenSSH_9.2\r\n", 19),  # a token up to CR, never a space: refused at the CR
])
def test_garbage_is_refused_at_the_first_byte_that_fits_nothing(data, at):
    s = ProtocolSniffer(PROTOCOLS)
    with pytest.raises(DetectionFailed) as e:
        for i in range(len(data)):
            s.feed(data[i:i + 1])
    assert e.value.why == "unknown"
    assert len(s.data) == at + 1


def test_a_protocol_the_listener_does_not_hand_on_is_unknown_at_once():
    s = ProtocolSniffer({HTTP1, HTTP2})
    with pytest.raises(DetectionFailed) as e:
        s.feed(b"\xda")
    assert e.value.why == "unknown"
    with pytest.raises(DetectionFailed):
        ProtocolSniffer({DUBBO, HTTP2}).feed(b"GET ")
    with pytest.raises(DetectionFailed):
        ProtocolSniffer({HTTP1, HTTP2, DUBBO}).feed(b"\x16\x03\x01")  # after TLS: no TLS inside TLS
    assert ProtocolSniffer({HTTP2}).feed(H2_PREFACE) == HTTP2
    with pytest.raises(DetectionFailed):
        ProtocolSniffer({HTTP2}).feed(b"POST")  # 'O' leaves the preface


def test_a_token_longer_than_the_bound_is_too_many_bytes():
    s = ProtocolSniffer(PROTOCOLS, maxBytes=MIN_BYTES)
    assert s.feed(b"A" * (MIN_BYTES - 1)) is None
    with pytest.raises(DetectionFailed) as e:
        s.feed(b"AA")
    assert e.value.why == "too_many_bytes"
    s = ProtocolSniffer(PROTOCOLS)
    with pytest.raises(DetectionFailed) as e:
        s.feed(b"X" * 1000)
    assert e.value.why == "too_many_bytes"
    # a method exactly at the bound still decides
    assert ProtocolSniffer(PROTOCOLS, maxBytes=MIN_BYTES).feed(b"A" * (MIN_BYTES - 1) + b" ") == HTTP1


def test_bad_arguments():
    with pytest.raises(ValueError):
        ProtocolSniffer(PROTOCOLS, maxBytes=MIN_BYTES - 1)
    with pytest.raises(ValueError):
        ProtocolSniffer({"smtp"})
    s = ProtocolSniffer(PROTOCOLS)
    assert s.feed(b"") is None
    assert s.feed(b"GET ") == HTTP1
    with pytest.raises(RuntimeError):
        s.feed(b"x")
