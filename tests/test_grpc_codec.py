"""The sans-IO gRPC helpers: grpc-timeout, status mappings, message prefixes."""

import pytest

from txmesh.protocols.h2 import grpc


@pytest.mark.parametrize("value, seconds", [(b"1S", 1.0), (b"250m", 0.25), (b"2M", 120.0), (b"1H", 3600.0),
                                            (b"5u", 5e-6), (b"100n", 1e-7), (b"99999999S", 99999999.0)])
def test_timeout(value, seconds):
    assert grpc.parseTimeout(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", [b"", b"S", b"1", b"1x", b"-1S", b"123456789S", b"1.5S"])
def test_malformed_timeout_is_ignored(value):
    assert grpc.parseTimeout(value) is None


def test_cause_mapping():
    assert grpc.statusForCause("no_route", 404) == grpc.UNIMPLEMENTED
    assert grpc.statusForCause("no_healthy_upstream", 503) == grpc.UNAVAILABLE
    assert grpc.statusForCause("upstream_connect_failure", 503) == grpc.UNAVAILABLE
    assert grpc.statusForCause("upstream_reset_before_response", 503) == grpc.UNAVAILABLE
    assert grpc.statusForCause("upstream_overflow", 503) == grpc.UNAVAILABLE
    assert grpc.statusForCause("upstream_request_timeout", 504) == grpc.DEADLINE_EXCEEDED
    assert grpc.statusForCause(None, 403) == grpc.PERMISSION_DENIED


@pytest.mark.parametrize("status, code", [(400, 13), (401, 16), (403, 7), (404, 12), (429, 14), (502, 14),
                                          (503, 14), (504, 14), (500, 2), (418, 2)])
def test_http_mapping(status, code):
    assert grpc.statusForHTTP(status) == code


def test_message_percent_encoding():
    assert grpc.encodeMessage("ok 100%") == b"ok 100%25"
    assert grpc.encodeMessage("caf\u00e9\n") == b"caf%C3%A9%0A"


def _msg(body):
    return b"\x00" + len(body).to_bytes(4, "big") + body


def test_counter_counts_messages_split_anywhere():
    stream = _msg(b"a" * 10) + _msg(b"") + _msg(b"b" * 300)
    for step in (1, 2, 3, 7, len(stream)):
        c = grpc.MessageCounter()
        for i in range(0, len(stream), step):
            c.feed(stream[i:i + step])
        assert c.messages == 3


def test_counter_enforces_max_message_size():
    c = grpc.MessageCounter(100)
    c.feed(_msg(b"x" * 100))
    with pytest.raises(grpc.MessageLimitExceeded):
        c.feed(_msg(b"x" * 101)[:3])
        c.feed(_msg(b"x" * 101)[3:])
