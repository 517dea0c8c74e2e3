"""
A bounded, seeded run of every fuzz target (tests/fuzz_targets.py: the codecs and parsers, with their properties):
the seed corpus from tests/fixtures/fuzz/<target>/ and a fixed number of mutations of it, the same on every run.
The coverage-guided, unbounded run is bench/fuzz.py (atheris); what it found is replayed here from
tests/fixtures/fuzz/regressions/ (each file named after its target), with tests of the fixes as a user sees them.
"""

import os
import pickle
import random
import time

import pytest
from hpack import Encoder
from twisted.internet.testing import StringTransport

from tests import fuzz_seeds, fuzz_targets
from txmesh.errors import ConfigError
from txmesh.protocols.h2 import frames as F
from txmesh.protocols.h2.codec import H2Connection
from txmesh.protocols.http1.client import HTTP1ClientProtocol
from txmesh.protocols.http1.codec import HTTPCodecError, MessageComplete, RequestDecoder, ResponseDecoder
from txmesh.stream import HeaderMap, RequestHead

REGRESSIONS = os.path.join(fuzz_seeds.FIXTURES, "fuzz", "regressions")
# mutated inputs per target: a few seconds in all (config.loads finds its plugins on every call, so it gets fewer)
RUNS = {"http1-request": 4000, "http1-response": 4000, "h2-server": 2000, "h2-client": 2000, "hpack": 2000,
        "grpc": 4000, "dubbo": 2000, "hessian2": 2000, "config": 200}


def mutate(rng, data, corpus):
    """libFuzzer's kinds of mutation, a few at a time: flip, insert, erase, duplicate, splice, cut, interesting ints."""
    data = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(8)
        pos = rng.randint(0, len(data))
        if op == 0 and pos < len(data):
            data[pos] ^= 1 << rng.randrange(8)
        elif op == 1:
            data[pos:pos] = rng.randbytes(rng.randint(1, 4))
        elif op == 2:
            del data[pos:pos + rng.randint(1, 16)]
        elif op == 3 and data:
            a = rng.randrange(len(data))
            data[pos:pos] = data[a:a + rng.randint(1, 32)]
        elif op == 4:
            other = rng.choice(corpus)
            a = rng.randint(0, len(other))
            data[pos:] = other[a:a + rng.randint(1, 200)]
        elif op == 5:
            del data[pos:]
        elif op == 6 and pos < len(data):
            data[pos] = rng.choice([0, 1, 0x7F, 0x80, 0xFF, 0x0A, 0x0D, 0x3A, 0x20])
        elif op == 7 and pos + 4 <= len(data):
            data[pos:pos + 4] = rng.choice([b"\0\0\0\0", b"\xff\xff\xff\xff", b"\x7f\xff\xff\xff", b"\0\0\x40\x01"])
    return bytes(data)


@pytest.mark.parametrize("name", sorted(fuzz_targets.TARGETS))
def test_seeds_and_their_mutations_keep_the_properties(name):
    target = fuzz_targets.TARGETS[name]
    corpus = [data for _, data in fuzz_seeds.load(name)]
    assert corpus
    for data in corpus:
        target(data)
    rng = random.Random(name)
    for i in range(RUNS[name]):
        data = mutate(rng, rng.choice(corpus), corpus)
        try:
            target(data)
        except Exception as e:
            raise AssertionError("%s failed on mutation %d: %r" % (name, i, data)) from e


@pytest.mark.parametrize("path", sorted(os.listdir(REGRESSIONS)))
def test_what_the_fuzzers_found_stays_fixed(path):
    name = next(n for n in sorted(fuzz_targets.TARGETS, key=len, reverse=True) if path.startswith(n + "-"))
    with open(os.path.join(REGRESSIONS, path), "rb") as f:
        fuzz_targets.TARGETS[name](f.read())


# -- the shortcuts the targets take for speed keep their checks -------------------------------------------------------

@pytest.mark.parametrize("build", [fuzz_targets._listenerConnection, fuzz_targets._defaultConnection,
                                   fuzz_targets._libraryConnection])
def test_a_snapshot_connection_is_the_one_built_afresh(build):
    """The h2-client target copies its connections (3 requests sent) from a pickled snapshot: each copy is in the
    state building one gives, and what one copy receives does not reach the next."""
    first = fuzz_targets.prepared(("test", build), lambda: build(True))
    assert pickle.dumps(first) == pickle.dumps(build(True))
    data = [data for _, data in fuzz_seeds.load("h2-client")][0]
    if build is fuzz_targets._libraryConnection:
        first.receive_data(data)
    else:
        first.receiveData(data)
    assert pickle.dumps(first) != pickle.dumps(build(True))
    assert pickle.dumps(fuzz_targets.prepared(("test", build), lambda: build(True))) == pickle.dumps(build(True))


def test_the_h2_client_target_gives_what_connections_built_afresh_give():
    for _, data in fuzz_seeds.load("h2-client"):
        pieces = fuzz_targets.splits(data, fuzz_targets.rngFor(data))
        for p in ([data], pieces):
            snapshot = fuzz_targets._runH2(True, p)
            fuzz_targets._SNAPSHOTS.clear()
            assert fuzz_targets._runH2(True, p) == snapshot


def test_the_hessian2_round_trip_still_catches_a_writer_that_loses_a_value(monkeypatch):
    """The round trip takes the first 16 values of the input (it took all): a bad writer still fails it."""
    value = fuzz_targets.Hessian2Writer.writeSimpleValue

    def lossy(self, v):
        value(self, v[:-1] if isinstance(v, str) and len(v) > 3 else v)

    data = b"\x00\x05hello" * 20
    assert len(fuzz_targets._valuesFrom(data)) > fuzz_targets._ROUND_TRIP_VALUES
    fuzz_targets.hessianRead(data)
    monkeypatch.setattr(fuzz_targets.Hessian2Writer, "writeSimpleValue", lossy)
    with pytest.raises(AssertionError):
        fuzz_targets.hessianRead(data)


def test_the_config_target_finds_plugins_as_twisted_does_and_puts_getplugins_back(tmp_path):
    """The config target looks plugins up once per search path, only while config.loads runs."""
    import twisted.plugin

    import txmesh.plugins
    from txmesh.interfaces import IFilterFactory

    assert (sorted(p.name for p in fuzz_targets._samePlugins(IFilterFactory, txmesh.plugins))
            == sorted(p.name for p in twisted.plugin.getPlugins(IFilterFactory, txmesh.plugins)))
    fuzz_targets.configLoads(b"listeners: []\nplugin_paths: [%s]\n" % (str(tmp_path).encode(),))
    for m in fuzz_targets._PLUGIN_USERS:
        assert m.getPlugins is twisted.plugin.getPlugins


def test_seed_corpus_is_what_the_captures_give():
    """tests/fixtures/fuzz/ is ``bench/fuzz.py --write-seeds`` of the current captures (rerun it when they change)."""
    for name, inputs in fuzz_seeds.seeds().items():
        assert sorted(inputs) == fuzz_seeds.load(name), name


# -- the fixes, as a user sees them --------------------------------------------------------------------------------

def test_a_control_character_in_mesh_yaml_is_a_config_error():
    """Found by the config target: PyYAML's reader refused the text before parseYAML's try, so a ReaderError escaped."""
    with pytest.raises(ConfigError) as e:
        fuzz_targets.config.loads("\x08listeners: []\n", "mesh.yaml")
    assert str(e.value).startswith("mesh.yaml: invalid YAML")


@pytest.mark.parametrize("text", ["~", "null", "# only a comment\n---\n"])
def test_a_null_mesh_yaml_is_empty(text):
    """Found by the config target: a document that is null got past the empty check and raised AttributeError."""
    with pytest.raises(ConfigError) as e:
        fuzz_targets.config.loads(text, "mesh.yaml")
    assert str(e.value) == "mesh.yaml:1: the configuration is empty"


def test_mesh_yaml_nested_too_deeply_is_a_config_error():
    """Found by hand beside the config target: PyYAML composes recursively, so 1200 '[' raised RecursionError."""
    with open(os.path.join(REGRESSIONS, "config-deep-nesting")) as f:
        text = f.read()
    with pytest.raises(ConfigError) as e:
        fuzz_targets.config.loads(text, "mesh.yaml")
    assert str(e.value) == "mesh.yaml: invalid YAML: nested too deeply"


def test_mesh_yaml_aliases_of_aliases_are_not_walked_path_by_path():
    """
    Found by hand beside the config target: recording a line for every key path walked each path through aliases
    of aliases, 10^9 of them for 9 levels of 10 (a "billion laughs"); now each node once, in well under a second.
    """
    with open(os.path.join(REGRESSIONS, "config-alias-bomb")) as f:
        text = f.read()
    started = time.process_time()
    with pytest.raises(ConfigError) as e:
        fuzz_targets.config.loads(text, "mesh.yaml")
    assert time.process_time() - started < 2
    assert str(e.value).startswith("mesh.yaml:1: a: unknown key 'a'")


def test_an_error_under_an_alias_still_names_the_line_of_its_anchor():
    text = ("clusters:\n  - &c {name: c, endpoints: [{address: '127.0.0.1:1'}]}\n  - *c\n"
            "listeners:\n  - name: l\n    protocol: http\n    address: tcp:0\n")
    with pytest.raises(ConfigError) as e:
        fuzz_targets.config.loads(text, "mesh.yaml")
    assert str(e.value).startswith("mesh.yaml:2: clusters[1].name: duplicate cluster name 'c'")


@pytest.mark.parametrize("name, message", [
    ("config-5000-digit-integer", "mesh.yaml: invalid YAML: Exceeds the limit (4300 digits)"),
    ("config-superscript-port", "mesh.yaml:2: clusters[0].endpoints[0].address: invalid port in 'h:\u00b2'"),
])
def test_numbers_python_will_not_convert_are_config_errors(name, message):
    """
    Found by hand beside the config target (its inputs stop at 4 KiB): PyYAML's int() of more than 4300 digits, and
    a port of Unicode digits ('\u00b2'.isdigit() is true, int() refuses it), raised ValueError.
    """
    with open(os.path.join(REGRESSIONS, name), encoding="utf-8") as f:
        text = f.read()
    with pytest.raises(ConfigError) as e:
        fuzz_targets.config.loads(text, "mesh.yaml")
    assert str(e.value).startswith(message)


def test_an_http2_content_length_of_5000_digits_is_a_malformed_request():
    """
    Found by hand beside the h2-server target (its inputs stop at 4 KiB): int() of a content-length past 4300 digits
    raised ValueError out of receiveData.  Like HTTP/1.1's, a content-length over 18 digits is malformed: the stream
    is reset (PROTOCOL_ERROR), the connection stays.
    """
    block = Encoder().encode([(b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"a"), (b":path", b"/"),
                              (b"content-length", b"1" * 5000)])
    conn = H2Connection(False)
    conn.initiateConnection()
    conn.dataToSend()
    events = conn.receiveData(F.PREFACE + F.settingsFrame({}) + F.headerFrames(1, block, False, 16384))
    assert [type(e).__name__ for e in events] == ["RemoteSettingsChanged", "StreamReset"]
    assert conn.dataToSend().endswith(F.rstStreamFrame(1, F.ErrorCodes.PROTOCOL_ERROR))
    assert not conn.closed
    ok = Encoder().encode([(b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"a"), (b":path", b"/"),
                           (b"content-length", b"9" * 18)])
    [started] = conn.receiveData(F.headerFrames(3, ok, False, 16384))
    assert type(started).__name__ == "RequestReceived"


def test_a_whole_response_before_bad_bytes_in_the_same_read_is_delivered():
    """
    Found by the http1-response target: a complete response followed by bad framing in one read raised at once and
    the response was lost (the client got a 502), while the same bytes in two reads delivered it.
    """
    decoder = ResponseDecoder()
    decoder.expect(b"GET")
    events = decoder.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nbad header\r\n\r\n")
    assert [type(e).__name__ for e in events] == ["ResponseStarted", "BodyData", "MessageComplete", "HTTPCodecError"]
    assert decoder.feed(b"more") == []

    class Responder:
        def __init__(self):
            self.got = []

        def upstreamHeaders(self, head, ended):
            self.got.append(("headers", head.status, ended))

        def upstreamData(self, data, ended):
            self.got.append(("data", data, ended))

        def upstreamTrailers(self, trailers):
            self.got.append(("trailers",))

        def upstreamComplete(self, reusable):
            self.got.append(("complete", reusable))

        def upstreamFailed(self, exc):
            self.got.append(("failed", type(exc).__name__))

    proto = HTTP1ClientProtocol()
    transport = StringTransport()
    proto.makeConnection(transport)
    responder = Responder()
    proto.sendRequest(RequestHead(b"GET", b"/", b"h", HeaderMap([])), True, responder)
    proto.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nbad header\r\n\r\n")
    # the whole 200 reaches the router, the connection is not handed back for reuse, and no 502 follows (the last
    # body piece carries the end, after upstreamComplete: IUpstreamResponder's order)
    assert responder.got == [("headers", 200, False), ("complete", False), ("data", b"ok", True)]
    assert transport.disconnecting or transport.disconnected


def test_a_version_less_connect_line_is_refused_at_once():
    """
    Found by the http1-request target: ``CONNECT h\\n\\r\\n`` (no HTTP version) ended llhttp's head but not ours,
    so the 400 came at whichever later byte the split of the input brought, or never.
    """
    decoder = RequestDecoder()
    with pytest.raises(HTTPCodecError) as e:
        decoder.feed(b"CONNECT h.s&\n\r\nxyz")
    assert e.value.status == 400
    events = RequestDecoder().feed(b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\nCONNECT h.s&\n\r\nxyz")
    assert [type(e).__name__ for e in events] == ["RequestStarted", "MessageComplete", "HTTPCodecError"]
    assert type(events[1]) is MessageComplete


def test_a_request_carrying_an_informational_status_is_a_stream_error_only():
    """
    Found by the h2-server target (a divergence from h2, not a txmesh bug): a request's HEADERS with a :status
    starting with "1" and no END_STREAM.  RFC 9113 8.1.1: a malformed request, a stream error; h2 reads it as an
    informational response and makes it a connection error.
    """
    with open(os.path.join(REGRESSIONS, "h2-server-request-with-informational-status"), "rb") as f:
        data = f.read()
    ours, theirs = fuzz_targets.h2Agreement(False, data)
    assert ours is None and theirs is None
    block = Encoder().encode([(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/"),
                              (b":status", b"127.0.0.1:1")])
    conn = H2Connection(False)
    conn.initiateConnection()
    conn.dataToSend()
    conn.receiveData(F.PREFACE + F.settingsFrame({}) + F.headerFrames(1, block, False, 16384))
    assert not conn.closed


def test_frames_on_a_stream_txmesh_reset_for_a_malformed_response_are_ignored():
    """
    Found by the h2-client target (a divergence from h2, not a txmesh bug): a response HEADERS carrying :method and
    no :status, then DATA on the same stream.  RFC 9113 8.1.1: a malformed response, a stream error, so txmesh
    sends RST_STREAM; 5.1: the frames still arriving on that stream are then ignored, and the connection's other
    streams go on.  h2 (not validating headers) takes the HEADERS as a response and makes the later frames a
    connection error (STREAM_CLOSED).
    """
    with open(os.path.join(REGRESSIONS, "h2-client-frames-after-a-malformed-response"), "rb") as f:
        data = f.read()
    ours, theirs = fuzz_targets.h2Agreement(True, data)
    assert ours is None and theirs is None
    _onlyStreamOneIsReset([(b":method", b"POST"), (b"server", b"x")])


def _onlyStreamOneIsReset(responseHeaders):
    """A client connection gets ``responseHeaders`` and a body on stream 1, a good response on 3: only 1 is reset."""
    conn = H2Connection(True)
    conn.initiateConnection()
    for sid in (1, 3):
        conn.sendHeaders(sid, [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"a"), (b":path", b"/")],
                         True)
    conn.dataToSend()
    enc = Encoder()
    events = conn.receiveData(
        F.settingsFrame({})
        + F.headerFrames(1, enc.encode(responseHeaders), False, 16384)
        + F.frame(F.DATA, F.END_STREAM, 1, b"body")
        + F.headerFrames(3, enc.encode([(b":status", b"200")]), False, 16384)
        + F.frame(F.DATA, F.END_STREAM, 3, b"ok"))
    assert not conn.closed
    kinds = [(type(e).__name__, e.stream_id) for e in events if hasattr(e, "stream_id")]
    assert ("StreamReset", 1) in kinds
    assert ("ResponseReceived", 3) in kinds and ("DataReceived", 3) in kinds
    assert not [k for k in kinds if k[1] == 1 and k[0] != "StreamReset"]
    assert F.rstStreamFrame(1, 1) in conn.dataToSend()


def test_a_response_repeating_content_length_is_a_stream_error_only():
    """
    Found by the h2-client target (a divergence from h2, not a txmesh bug): a response HEADERS carrying
    content-length twice (13 and 181).  RFC 9113 8.1.1 / RFC 9110 8.6: a malformed response, a stream error, so
    txmesh resets that stream and the connection's other streams go on (a repeated value is refused even when the
    copies agree, which 8.6 allows); h2 makes differing values a connection error.
    """
    with open(os.path.join(REGRESSIONS, "h2-client-conflicting-content-length"), "rb") as f:
        data = f.read()
    ours, theirs = fuzz_targets.h2Agreement(True, data)
    assert ours is None and theirs is None
    for lengths in ((b"13", b"181"), (b"4", b"4")):
        _onlyStreamOneIsReset([(b":status", b"200"), (b"content-length", lengths[0]), (b"content-length", lengths[1])])


def test_the_repeated_content_length_divergence_needs_txmesh_to_reset_that_stream():
    """The divergence's condition is not a blanket pass: it holds only where txmesh itself reset the stream."""
    with open(os.path.join(REGRESSIONS, "h2-client-conflicting-content-length"), "rb") as f:
        data = fuzz_targets.wholeFrames(f.read(), True)
    assert fuzz_targets.repeatedContentLength(data, True)
    enc = Encoder()
    single = (F.settingsFrame({}) + F.headerFrames(1, enc.encode([(b":status", b"200"), (b"content-length", b"2")]),
                                                   False, 16384) + F.frame(F.DATA, F.END_STREAM, 1, b"ok"))
    assert not fuzz_targets.repeatedContentLength(single, True)
