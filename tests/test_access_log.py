"""Tests for the access_log stream filter: exact lines, flush timing, files, counters, config errors."""

import io
import json

import pytest
from twisted.plugin import IPlugin
from zope.interface.verify import verifyObject

from txmesh.testing import FakeConfigContext as FakeContext
from txmesh.testing import FakeDecoderCallbacks
from txmesh.testing import FakeRuntime as _FakeRuntime
from txmesh.testing import RecordingInstaller as FakeInstaller
from txmesh.errors import ConfigError
from txmesh.filters.access_log import AccessLogFactory, isoTime
from txmesh.interfaces import FilterStatus, IFilterFactory, IStreamDecoderFilter
from txmesh.stream import HeaderMap, RequestHead, StreamInfo

T0 = 1795255200.123  # 2026-11-21T10:00:00.123Z


class FakeRuntime(_FakeRuntime):
    def __init__(self):
        _FakeRuntime.__init__(self)
        self.clock.advance(T0)


class CollectingStream(io.StringIO):
    """A text stream that records how many times it was flushed."""

    flushes = 0

    def flush(self):
        self.flushes += 1


class BrokenStream:
    def write(self, data):
        raise OSError(28, "No space left on device")

    def flush(self):
        pass


def makeStream(runtime, **infoFields):
    info = StreamInfo(T0, "http/1.1", "ingress", "10.0.0.1:5555")
    for k, v in infoFields.items():
        setattr(info, k, v)
    request = RequestHead(b"GET", b"/path?q=1", b"example.com",
                          HeaderMap.fromPairs([("x-request-id", "req-1"), ("authorization", "secret")]))
    return info, request


def runStream(factory, config, runtime, info, request, duration=0.005):
    """Install the filter, decode the request, finish the stream after ``duration`` seconds."""
    installer = FakeInstaller()
    factory.createFilters(config, installer, runtime)
    [f] = installer.decoders
    assert installer.encoders == []
    f.setDecoderFilterCallbacks(FakeDecoderCallbacks(info, request, runtime.clock))
    assert f.decodeHeaders(request, True) is FilterStatus.CONTINUE
    runtime.clock.advance(duration)
    if info.endTime is None:
        info.endTime = runtime.clock.seconds()
    f.onStreamComplete()
    return f


def build(raw, stdout=None):
    factory = AccessLogFactory(stdout=stdout if stdout is not None else CollectingStream())
    return factory, factory.buildConfig(raw, FakeContext())


def test_text_line_exact():
    runtime = FakeRuntime()
    factory, config = build({})
    info, request = makeStream(runtime, responseCode=200, bytesReceived=0, bytesSent=1234,
                               upstreamHost="127.0.0.1:8080", responseFlags={"UT", "UF"})
    runStream(factory, config, runtime, info, request)
    config.writer.flush()
    assert factory.stdout.getvalue() == (
        '[2026-11-21T10:00:00.123Z] "GET /path?q=1 HTTP/1.1" 200 UF,UT 0 1234 5 "10.0.0.1:5555" '
        '"example.com" "127.0.0.1:8080" "req-1" "-" "-" "-" -\n')
    assert "secret" not in factory.stdout.getvalue()
    assert runtime.stats.total("access_log_lines") == 1


def test_text_line_missing_values_and_reset_stream():
    runtime = FakeRuntime()
    factory, config = build({"format": "text"})
    info = StreamInfo(T0, "h2", "ingress", "")
    info.responseFlags.add("DC")
    request = RequestHead(b"POST", b"/", b"")
    runStream(factory, config, runtime, info, request, duration=0.0)
    config.writer.flush()
    assert factory.stdout.getvalue() == (
        '[2026-11-21T10:00:00.123Z] "POST / HTTP/2" 0 DC 0 0 0 "-" "-" "-" "-" "-" "-" "-" -\n')


def test_text_escapes_request_derived_values():
    runtime = FakeRuntime()
    factory, config = build({})
    info, _ = makeStream(runtime, responseCode=404)
    request = RequestHead(b"GET", b'/a"b\\c\n[x] \xc3\xa9', b"ex\x00.com",
                          HeaderMap([(b"x-request-id", b'id" "forged')]))
    runStream(factory, config, runtime, info, request)
    config.writer.flush()
    line = factory.stdout.getvalue()
    assert line == (
        '[2026-11-21T10:00:00.123Z] "GET /a\\x22b\\x5cc\\x0a[x] \\xc3\\xa9 HTTP/1.1" 404 - 0 0 5 "10.0.0.1:5555" '
        '"ex\\x00.com" "-" "id\\x22 \\x22forged" "-" "-" "-" -\n')
    assert line.count("\n") == 1


def test_stream_info_request_id_wins():
    runtime = FakeRuntime()
    factory, config = build({})
    info, request = makeStream(runtime, responseCode=200, requestId="generated-7")
    runStream(factory, config, runtime, info, request)
    config.writer.flush()
    assert factory.stdout.getvalue().endswith('"generated-7" "-" "-" "-" -\n')


def test_json_line_exact():
    runtime = FakeRuntime()
    factory, config = build({"format": "json"})
    info, request = makeStream(runtime, responseCode=503, bytesReceived=10, bytesSent=19,
                               upstreamHost="127.0.0.1:8080", responseFlags={"UF"})
    runStream(factory, config, runtime, info, request, duration=1.5)
    config.writer.flush()
    out = factory.stdout.getvalue()
    assert out == (
        '{"start_time":"2026-11-21T10:00:00.123Z","method":"GET","path":"/path?q=1","protocol":"HTTP/1.1",'
        '"response_code":503,"response_flags":"UF","bytes_received":10,"bytes_sent":19,"duration":1500,'
        '"downstream_remote_address":"10.0.0.1:5555","authority":"example.com","upstream_host":"127.0.0.1:8080",'
        '"request_id":"req-1","user_agent":null,"route_name":null,"upstream_cluster":null,'
        '"upstream_service_time":null,"grpc_status":null}\n')
    assert json.loads(out)["response_flags"] == "UF"


def test_json_missing_values_are_null_and_escaped():
    runtime = FakeRuntime()
    factory, config = build({"format": "json"})
    info = StreamInfo(T0, "dubbo", "ingress", "10.0.0.2:1")
    request = RequestHead(b"invoke", b'/svc"\n', b"")
    runStream(factory, config, runtime, info, request)
    config.writer.flush()
    out = factory.stdout.getvalue()
    assert out.count("\n") == 1
    record = json.loads(out)
    assert record["path"] == '/svc"\n'
    assert record["protocol"] == "DUBBO"
    assert record["response_flags"] is None and record["upstream_host"] is None
    assert record["request_id"] is None and record["authority"] is None


def test_flush_timer_one_second_after_first_line():
    runtime = FakeRuntime()
    factory, config = build({})
    out = factory.stdout
    info, request = makeStream(runtime, responseCode=200)
    runStream(factory, config, runtime, info, request, duration=0.0)
    assert out.getvalue() == ""
    assert len(runtime.clock.getDelayedCalls()) == 1
    # a second line in the same window rides the same timer
    info2, request2 = makeStream(runtime, responseCode=201)
    runStream(factory, config, runtime, info2, request2, duration=0.5)
    assert len(runtime.clock.getDelayedCalls()) == 1
    runtime.clock.advance(0.499)
    assert out.getvalue() == ""
    runtime.clock.advance(0.001)
    lines = out.getvalue().splitlines()
    assert [line.split()[4] for line in lines] == ["200", "201"]
    assert out.flushes == 1
    # idle: no timer left running
    assert runtime.clock.getDelayedCalls() == []
    assert runtime.stats.total("access_log_lines") == 2


def test_full_buffer_flushes_at_once():
    runtime = FakeRuntime()
    factory, config = build({})
    config.writer.maxBufferedLines = 3
    for _ in range(3):
        info, request = makeStream(runtime, responseCode=200)
        runStream(factory, config, runtime, info, request, duration=0.0)
    assert len(factory.stdout.getvalue().splitlines()) == 3
    assert runtime.clock.getDelayedCalls() == []


def test_close_flushes_and_closes_the_file(tmp_path):
    path = tmp_path / "access.log"
    path.write_text("old line\n")
    runtime = FakeRuntime()
    factory = AccessLogFactory()
    config = factory.buildConfig({"path": str(path)}, FakeContext())
    info, request = makeStream(runtime, responseCode=200)
    runStream(factory, config, runtime, info, request)
    assert path.read_text() == "old line\n"
    config.writer.close()
    assert path.read_text() == (
        'old line\n[2026-11-21T10:00:00.123Z] "GET /path?q=1 HTTP/1.1" 200 - 0 0 5 "10.0.0.1:5555" '
        '"example.com" "-" "req-1" "-" "-" "-" -\n')
    assert config.writer.stream.closed
    assert runtime.clock.getDelayedCalls() == []
    config.writer.close()  # idempotent
    # a stream finishing after shutdown is counted as lost, not raised
    info, request = makeStream(runtime, responseCode=200)
    runStream(factory, config, runtime, info, request)
    assert runtime.stats.total("access_log_write_errors") == 1
    assert len(path.read_text().splitlines()) == 2


def test_write_error_is_counted_and_serving_goes_on():
    runtime = FakeRuntime()
    factory, config = build({}, stdout=BrokenStream())
    info, request = makeStream(runtime, responseCode=200)
    runStream(factory, config, runtime, info, request)
    runtime.clock.advance(1)
    assert runtime.stats.value("access_log_write_errors", path="-") == 1
    assert runtime.stats.value("access_log_lines", path="-") == 1
    # the failed batch is dropped, not retried forever
    runtime.clock.advance(1)
    assert runtime.stats.value("access_log_write_errors", path="-") == 1


def test_dash_means_sys_stdout(capsys):
    runtime = FakeRuntime()
    factory = AccessLogFactory()
    config = factory.buildConfig({"path": "-"}, FakeContext())
    info, request = makeStream(runtime, responseCode=200)
    runStream(factory, config, runtime, info, request)
    runtime.clock.advance(1)
    assert capsys.readouterr().out.startswith('[2026-11-21T10:00:00.123Z] "GET /path?q=1 HTTP/1.1" 200 ')


@pytest.mark.parametrize("raw, path, reason", [
    ({"format": "xml"}, "format", "not 'text' or 'json', and no %OPERATOR%"),
    ({"format": ["json"]}, "format", "must be 'text', 'json' or a format string"),
    ({"path": ""}, "path", "must be '-'"),
    ({"path": 3}, "path", "must be '-'"),
    ({"path": "/nonexistent-dir/x/access.log"}, "path", "cannot open"),
    ({"fromat": "json"}, "fromat", "unknown key"),
    (["path"], "", "must be a mapping"),
])
def test_config_errors_name_the_key(raw, path, reason):
    with pytest.raises(ConfigError) as e:
        AccessLogFactory().buildConfig(raw, FakeContext())
    assert e.value.path == path
    assert reason in e.value.reason


def test_defaults_and_plugin():
    from txmesh.plugins.txmesh_filters_extra import accessLog

    config = accessLog.buildConfig(None, FakeContext())
    assert (config.path, config.format) == ("-", "text")
    assert verifyObject(IFilterFactory, accessLog)
    assert IPlugin.providedBy(accessLog)
    assert accessLog.name == "access_log" and accessLog.kind == "stream"
    runtime = FakeRuntime()
    installer = FakeInstaller()
    accessLog.createFilters(config, installer, runtime)
    assert verifyObject(IStreamDecoderFilter, installer.decoders[0])


def test_iso_time_rounds_to_milliseconds():
    assert isoTime(T0) == "2026-11-21T10:00:00.123Z"
    assert isoTime(1795255200.9996) == "2026-11-21T10:00:01.000Z"
    assert isoTime(0) == "1970-01-01T00:00:00.000Z"


def test_relative_path_is_relative_to_the_config_file_and_config_close(tmp_path):
    context = FakeContext()
    context.filename = str(tmp_path / "mesh.yaml")
    runtime = FakeRuntime()
    factory = AccessLogFactory()
    config = factory.buildConfig({"path": "access.log", "format": "json"}, context)
    assert config.writer.path == str(tmp_path / "access.log")
    info, request = makeStream(runtime, responseCode=200)
    runStream(factory, config, runtime, info, request)
    config.close()  # what the service calls on stop
    assert json.loads((tmp_path / "access.log").read_text())["response_code"] == 200


class FakeFiles:
    """The runtime's reopenable-files registry, as far as a config sees it."""

    def __init__(self):
        self.registered = []

    def register(self, f):
        self.registered.append(f)


def logLine(factory, config, runtime, path):
    info, request = makeStream(runtime, responseCode=200)
    request = RequestHead(b"GET", path, b"example.com")
    runStream(factory, config, runtime, info, request)


def test_reopen_after_rename_writes_to_the_new_file(tmp_path):
    log = tmp_path / "access.log"
    runtime = FakeRuntime()
    factory = AccessLogFactory()
    config = factory.buildConfig({"path": str(log)}, FakeContext())
    files = FakeFiles()
    config.registerFiles(files)
    assert files.registered == [config.writer]
    logLine(factory, config, runtime, b"/before")
    runtime.clock.advance(1)
    log.rename(tmp_path / "access.log.1")  # what logrotate does
    logLine(factory, config, runtime, b"/buffered")  # still buffered when the reopen comes: goes to the old file
    assert config.writer.reopen() is True
    logLine(factory, config, runtime, b"/after")
    runtime.clock.advance(1)
    rotated = (tmp_path / "access.log.1").read_text()
    assert '"GET /before ' in rotated and '"GET /buffered ' in rotated and "/after" not in rotated
    assert log.read_text().count("\n") == 1 and '"GET /after ' in log.read_text()
    config.close()
    assert config.writer.stream.closed
    assert config.writer.reopen() is False  # closed: nothing reopened


def test_failed_reopen_keeps_writing_to_the_old_file(tmp_path):
    logDir = tmp_path / "logs"
    logDir.mkdir()
    runtime = FakeRuntime()
    factory = AccessLogFactory()
    config = factory.buildConfig({"path": str(logDir / "access.log")}, FakeContext())
    logDir.rename(tmp_path / "gone")
    with pytest.raises(OSError):
        config.writer.reopen()
    logLine(factory, config, runtime, b"/still-logged")
    runtime.clock.advance(1)
    assert '"GET /still-logged ' in (tmp_path / "gone" / "access.log").read_text()
    assert runtime.stats.total("access_log_write_errors") == 0
    # once the directory is back, the next reopen succeeds
    logDir.mkdir()
    assert config.writer.reopen() is True
    logLine(factory, config, runtime, b"/new")
    config.close()
    assert '"GET /new ' in (logDir / "access.log").read_text()


def test_stdout_is_not_registered_nor_reopened():
    factory, config = build({"path": "-"})
    files = FakeFiles()
    config.registerFiles(files)
    assert files.registered == []
    assert config.writer.reopen() is False


class GrpcContext(FakeContext):
    listenerProtocol = "grpc"


@pytest.mark.parametrize("events, code", [
    ([("headers", 200, [(b"grpc-status", b"14")], True)], 14),  # trailers-only local reply
    ([("headers", 200, [], False), ("trailers", [(b"grpc-status", b"5")])], 5),
    ([("headers", 200, [], False), ("trailers", [(b"grpc-status", b"0")])], 0),
    ([("headers", 503, [], True)], 14),  # an upstream HTTP error without grpc-status, as the client sees it
    ([("headers", 200, [], False), ("reset", "upstream_request_timeout")], 4),
    ([("reset", "downstream_reset")], 1),
    # a grpc-status Python's int() refuses (past 4300 digits) raised ValueError when the line was written
    ([("headers", 200, [], False), ("trailers", [(b"grpc-status", b"1" * 5000)])], 2),
])
def test_grpc_lines_log_the_grpc_status_not_the_http_200(events, code):
    from txmesh.interfaces import IStreamEncoderFilter
    from txmesh.stream import ResponseHead
    runtime = FakeRuntime()
    factory = AccessLogFactory(stdout=CollectingStream())
    config = factory.buildConfig({"format": "json"}, GrpcContext())
    installer = FakeInstaller()
    factory.createFilters(config, installer, runtime)
    [f] = installer.decoders
    assert installer.encoders == [f] and verifyObject(IStreamEncoderFilter, f)
    info = StreamInfo(T0, "grpc", "grpc_in", "10.0.0.1:5555")
    request = RequestHead(b"POST", b"/pkg.Svc/M", b"svc")
    f.setDecoderFilterCallbacks(FakeDecoderCallbacks(info, request, runtime.clock))
    f.decodeHeaders(request, True)
    for event in events:
        if event[0] == "headers":
            info.responseCode = event[1]
            f.encodeHeaders(ResponseHead(event[1], HeaderMap(event[2])), event[3])
        elif event[0] == "trailers":
            f.encodeTrailers(HeaderMap(event[1]))
        else:
            f.onStreamReset(event[1])
    info.endTime = runtime.clock.seconds()
    f.onStreamComplete()
    config.writer.flush()
    assert json.loads(factory.stdout.getvalue())["response_code"] == code
