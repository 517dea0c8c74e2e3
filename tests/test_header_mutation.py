"""
Tests for the header_mutation stream filter, and for the example filter of docs/filters.md (which lives in
tests/fixtures/example_filter and must stay identical to the doc).
"""

import importlib.util
import pathlib
import re

import pytest
from twisted.internet.task import Clock
from twisted.plugin import IPlugin
from zope.interface.verify import verifyObject

from txmesh.testing import FakeConfigContext as FakeContext
from txmesh.testing import FakeDecoderCallbacks, FakeRuntime
from txmesh.testing import RecordingInstaller as FakeInstaller
from txmesh.errors import ConfigError
from txmesh.filters.header_mutation import HeaderMutationFactory
from txmesh.interfaces import FilterStatus, IFilterFactory, IStreamDecoderFilter, IStreamEncoderFilter
from txmesh.stream import HeaderMap, RequestHead, ResponseHead, StreamInfo

ROOT = pathlib.Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "tests" / "fixtures" / "example_filter" / "txmesh" / "plugins" / "example_api_key.py"
T0 = 1795255200.123


class FakeEncoderCallbacks:
    def __init__(self, streamInfo):
        self.streamInfo = streamInfo


def build(raw):
    return HeaderMutationFactory().buildConfig(raw, FakeContext())


def install(config, info, request, clock=None):
    """createFilters + set callbacks, as the chain does; returns (installer, decoder callbacks)."""
    installer = FakeInstaller()
    HeaderMutationFactory().createFilters(config, installer, FakeRuntime())
    dcb = FakeDecoderCallbacks(info, request, clock)
    for f in installer.decoders:
        f.setDecoderFilterCallbacks(dcb)
    for f in installer.encoders:
        f.setEncoderFilterCallbacks(FakeEncoderCallbacks(info))
    return installer, dcb


def newStream():
    info = StreamInfo(T0, "http/1.1", "ingress", "10.0.0.1:5555")
    request = RequestHead(b"GET", b"/p", b"example.com",
                          HeaderMap.fromPairs([("x-foo", "1"), ("x-drop", "a"), ("x-trace", "t-9"),
                                               ("x-drop", "b")]))
    return info, request


def test_request_add_append_replace_remove():
    config = build({
        "request_headers_to_remove": ["X-Drop"],
        "request_headers_to_add": [
            {"name": "X-Foo", "value": "2"},
            {"name": "x-env", "value": "prod", "append": False},
            {"name": "x-trace", "value": "mine", "append": False},
        ],
    })
    info, request = newStream()
    installer, dcb = install(config, info, request)
    assert installer.encoders == [] and len(installer.decoders) == 1
    assert installer.decoders[0].decodeHeaders(request, True) is FilterStatus.CONTINUE
    assert request.headers.items() == [(b"x-foo", b"1"), (b"x-foo", b"2"), (b"x-env", b"prod"),
                                       (b"x-trace", b"mine")]
    assert dcb.routeCleared == 1


def test_plain_values_are_precompiled_bytes():
    config = build({"request_headers_to_add": [{"name": "x-a", "value": "100%% plain"},
                                               {"name": "x-n", "value": 42}]})
    assert config.requestAdd == ((b"x-a", b"100% plain", True), (b"x-n", b"42", True))


def test_request_variables():
    config = build({"request_headers_to_add": [
        {"name": "x-client", "value": "%DOWNSTREAM_REMOTE_ADDRESS%"},
        {"name": "x-start", "value": "t=%START_TIME%"},
        {"name": "x-proto", "value": "%PROTOCOL%/%REQ(X-Foo)%/%REQ(:authority)%/%REQ(:path)%"},
        {"name": "x-missing", "value": "%REQ(x-nope)%"},
    ]})
    info, request = newStream()
    installer, _ = install(config, info, request)
    installer.decoders[0].decodeHeaders(request, False)
    h = request.headers
    assert h.get(b"x-client") == b"10.0.0.1:5555"
    assert h.get(b"x-start") == b"t=2026-11-21T10:00:00.123Z"
    assert h.get(b"x-proto") == b"HTTP/1.1/1/example.com//p"
    # an empty rendered value is not added
    assert b"x-missing" not in h


def test_response_side_with_upstream_host_and_request_header():
    config = build({
        "response_headers_to_remove": ["server"],
        "response_headers_to_add": [
            {"name": "x-upstream", "value": "%UPSTREAM_HOST%"},
            {"name": "x-trace", "value": "%REQ(x-trace)%"},
            {"name": "x-served-by", "value": "txmesh", "append": False},
        ],
    })
    info, request = newStream()
    installer, _ = install(config, info, request)
    # the response side reads the request, so the filter is installed on both sides
    assert installer.decoders == installer.encoders and len(installer.decoders) == 1
    f = installer.decoders[0]
    f.decodeHeaders(request, True)
    assert request.headers.get(b"x-drop") == b"a"  # no request mutations configured
    info.upstreamHost = "127.0.0.1:8080"
    response = ResponseHead(200, HeaderMap.fromPairs([("server", "nginx"), ("x-served-by", "a"),
                                                      ("content-type", "text/plain")]))
    assert f.encodeHeaders(response, False) is FilterStatus.CONTINUE
    assert response.headers.items() == [(b"content-type", b"text/plain"), (b"x-upstream", b"127.0.0.1:8080"),
                                        (b"x-trace", b"t-9"), (b"x-served-by", b"txmesh")]


def test_response_only_config_installs_an_encoder_only():
    config = build({"response_headers_to_add": [{"name": "x-proto", "value": "%PROTOCOL%"}]})
    info, request = newStream()
    installer, _ = install(config, info, request)
    assert installer.decoders == [] and len(installer.encoders) == 1
    response = ResponseHead(204)
    installer.encoders[0].encodeHeaders(response, True)
    assert response.headers.items() == [(b"x-proto", b"HTTP/1.1")]
    # no upstream (a local reply): %UPSTREAM_HOST% renders empty and is skipped
    config = build({"response_headers_to_add": [{"name": "x-up", "value": "%UPSTREAM_HOST%"}]})
    installer, _ = install(config, info, request)
    response = ResponseHead(503)
    installer.encoders[0].encodeHeaders(response, True)
    assert response.headers.items() == []


def test_empty_config_installs_nothing():
    installer, _ = install(build({}), *newStream())
    assert installer.decoders == installer.encoders == []


def test_plugin_and_interfaces():
    from txmesh.plugins.txmesh_filters_extra import headerMutation

    assert verifyObject(IFilterFactory, headerMutation) and IPlugin.providedBy(headerMutation)
    assert headerMutation.name == "header_mutation"
    assert headerMutation.protocols == frozenset({"http", "grpc"})
    config = headerMutation.buildConfig({"request_headers_to_add": [{"name": "a", "value": "b"}],
                                         "response_headers_to_remove": ["c"]}, FakeContext())
    installer = FakeInstaller()
    headerMutation.createFilters(config, installer, FakeRuntime())
    f = installer.decoders[0]
    assert verifyObject(IStreamDecoderFilter, f) and verifyObject(IStreamEncoderFilter, f)


@pytest.mark.parametrize("raw, path, reason", [
    ({"request_headers_to_add": [{"name": "Host", "value": "x"}]}, "request_headers_to_add[0].name",
     "connection-level"),
    ({"response_headers_to_remove": ["ok", "Transfer-Encoding"]}, "response_headers_to_remove[1]",
     "connection-level"),
    ({"request_headers_to_remove": [":path"]}, "request_headers_to_remove[0]", "pseudo-header"),
    ({"request_headers_to_add": [{"name": "bad name", "value": "x"}]}, "request_headers_to_add[0].name",
     "not a valid header name"),
    ({"request_headers_to_add": [{"name": "x-a", "value": "%UPSTREAM_HOST%"}]},
     "request_headers_to_add[0].value", "only known on the response side"),
    ({"request_headers_to_add": [{"name": "x-a", "value": "%NOPE%"}]}, "request_headers_to_add[0].value",
     "unknown variable %NOPE%"),
    ({"request_headers_to_add": [{"name": "x-a", "value": "50%"}]}, "request_headers_to_add[0].value",
     "%%"),
    ({"request_headers_to_add": [{"name": "x-a", "value": "a\r\nx-evil: 1"}]},
     "request_headers_to_add[0].value", "CR, LF"),
    ({"request_headers_to_add": [{"name": "x-a", "value": "v", "append": "yes"}]},
     "request_headers_to_add[0].append", "true or false"),
    ({"request_headers_to_add": [{"name": "x-a", "valeu": "v"}]}, "request_headers_to_add[0].valeu",
     "unknown key"),
    ({"response_headers_to_add": {"name": "x"}}, "response_headers_to_add", "must be a list"),
    ({"request_headers": []}, "request_headers", "unknown key"),
])
def test_config_errors_name_the_key(raw, path, reason):
    with pytest.raises(ConfigError) as e:
        build(raw)
    assert e.value.path == path
    assert reason in e.value.reason


# -- the docs/filters.md example -----------------------------------------------------------------------------


def loadExample():
    spec = importlib.util.spec_from_file_location("example_api_key_under_test", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_example_in_docs_is_the_fixture():
    doc = (ROOT / "docs" / "filters.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", doc, re.S)
    assert EXAMPLE.read_text() in blocks


def runExample(headers, clock):
    factory = loadExample().apiKey
    assert verifyObject(IFilterFactory, factory) and IPlugin.providedBy(factory)
    config = factory.buildConfig({"keys": ["s3cret"]}, FakeContext())
    installer = FakeInstaller()
    factory.createFilters(config, installer, FakeRuntime())
    [f] = installer.decoders
    request = RequestHead(b"GET", b"/", b"example.com", HeaderMap.fromPairs(headers))
    dcb = FakeDecoderCallbacks(StreamInfo(T0, "http/1.1", "ingress"), request, clock)
    f.setDecoderFilterCallbacks(dcb)
    return f, dcb, f.decodeHeaders(request, True)


def test_example_missing_key_is_401():
    f, dcb, status = runExample([], Clock())
    assert status is FilterStatus.STOP
    assert dcb.localReplies == [(401, b"missing x-api-key\n", "api_key_missing")]


def test_example_known_key_continues_after_the_lookup():
    clock = Clock()
    f, dcb, status = runExample([("x-api-key", "s3cret")], clock)
    assert status is FilterStatus.STOP and dcb.continued == 0
    clock.advance(0)
    assert dcb.continued == 1 and dcb.localReplies == []


def test_example_unknown_key_is_403():
    clock = Clock()
    f, dcb, status = runExample([("x-api-key", "guess")], clock)
    clock.advance(0)
    assert dcb.continued == 0
    assert dcb.localReplies == [(403, b"unknown x-api-key\n", "api_key_unknown")]


def test_example_reset_cancels_the_lookup():
    clock = Clock()
    f, dcb, status = runExample([("x-api-key", "s3cret")], clock)
    f.onStreamReset("downstream_reset")
    assert clock.getDelayedCalls() == []
    clock.advance(1)
    assert dcb.continued == 0 and dcb.localReplies == []


def test_example_config_error():
    with pytest.raises(ConfigError) as e:
        loadExample().apiKey.buildConfig({"keys": "s3cret"}, FakeContext())
    assert e.value.path == "keys"
