"""
txmesh's log observer and formats: levels, the demotion of Twisted's real factory and port lines, text and JSON
lines, journald priority prefixes (one per line, tracebacks included), ``$JOURNAL_STREAM`` detection, the twistd
options that choose them, and ``txmesh --version``.
"""

import io
import json
import os

import pytest
from twisted.internet.protocol import Factory
from twisted.logger import ILogObserver, LogLevel, Logger, globalLogPublisher
from twisted.python import failure, log as legacyLog, usage
from zope.interface.verify import verifyObject

import twisted
import txmesh
from txmesh import cli, tap
from txmesh.logs import OperatorLogObserver, formatJSON, formatText, isJournalStream, levelOf, parseLevel

pytestmark = pytest.mark.timeout(30)


def captured(action):
    """The events ``action()`` publishes to Twisted's global log (where Factory and twisted.python.log go)."""
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        action()
    finally:
        globalLogPublisher.removeObserver(events.append)
    return events


def emitted(observer, level, fmt, **fields):
    Logger(namespace="txmesh.test", observer=observer).emit(level, fmt, **fields)


def test_observer_provides_ILogObserver():
    assert verifyObject(ILogObserver, OperatorLogObserver(io.StringIO()))


def test_twisted_factory_and_port_lines_are_debug():
    factory = Factory()
    events = captured(factory.doStart) + captured(factory.doStop)
    events += captured(lambda: legacyLog.msg("HTTP1ListenerFactory starting on 15001"))
    events += captured(lambda: legacyLog.msg("(TCP Port 15001 Closed)"))
    assert len(events) == 4
    assert [levelOf(e) for e in events] == [LogLevel.debug] * 4
    out = io.StringIO()
    observer = OperatorLogObserver(out)
    for e in events:
        observer(e)
    assert out.getvalue() == ""
    observer.level = LogLevel.debug
    for e in events:
        observer(e)
    assert [line.split(" ", 2)[1] for line in out.getvalue().splitlines()] == ["debug"] * 4
    assert "Starting factory <twisted.internet.protocol.Factory" in out.getvalue()


def test_other_legacy_and_error_lines_keep_their_level():
    [msg] = captured(lambda: legacyLog.msg("a listener said something"))
    assert levelOf(msg) == LogLevel.info
    [err] = captured(lambda: legacyLog.err(failure.Failure(ValueError("boom")), "bad thing"))
    assert levelOf(err) == LogLevel.critical


def test_level_filter():
    out = io.StringIO()
    observer = OperatorLogObserver(out, level=LogLevel.warn)
    emitted(observer, LogLevel.info, "hidden")
    emitted(observer, LogLevel.warn, "shown {n}", n=1)
    emitted(observer, LogLevel.error, "shown too")
    lines = out.getvalue().splitlines()
    assert [line.split(" ", 1)[1] for line in lines] == ["warn [txmesh.test] shown 1", "error [txmesh.test] shown too"]


def test_text_line_has_time_level_namespace_and_indented_traceback():
    out = io.StringIO()
    observer = OperatorLogObserver(out)
    try:
        1 / 0
    except ZeroDivisionError:
        Logger(namespace="txmesh.test", observer=observer).failure("cannot divide {what}", what="this")
    lines = out.getvalue().splitlines()
    stamp, head = lines[0].split(" ", 1)
    assert len(stamp) == len("2026-12-05T08:00:00.123+0000")
    assert head == "critical [txmesh.test] cannot divide this"
    assert lines[1] == "\tTraceback (most recent call last):"
    assert lines[-1].startswith("\tbuiltins.ZeroDivisionError") or lines[-1].startswith("\tZeroDivisionError")


def test_journald_prefixes_every_line_with_the_priority_and_drops_the_time():
    out = io.StringIO()
    observer = OperatorLogObserver(out, level=LogLevel.debug, journald=True)
    for level in (LogLevel.debug, LogLevel.info, LogLevel.warn, LogLevel.error, LogLevel.critical):
        emitted(observer, level, "at {name}", name=level.name)
    assert out.getvalue().splitlines() == [
        "<7>debug [txmesh.test] at debug", "<6>info [txmesh.test] at info", "<4>warn [txmesh.test] at warn",
        "<3>error [txmesh.test] at error", "<2>critical [txmesh.test] at critical"]
    out.truncate(0)
    out.seek(0)
    Logger(namespace="txmesh.test", observer=observer).failure("lost", failure.Failure(KeyError("k")),
                                                                level=LogLevel.error)
    lines = out.getvalue().splitlines()
    assert len(lines) > 2 and all(line.startswith("<3>") for line in lines)


def test_json_lines():
    out = io.StringIO()
    observer = OperatorLogObserver(out, format="json")
    emitted(observer, LogLevel.info, "listener {listener}: {protocol} on {address}", listener="web",
            protocol="http1", address="127.0.0.1:15001", factory=object(), ratio=0.5, n=None)
    record = json.loads(out.getvalue())
    assert record.pop("time").endswith("Z")
    assert record == {"level": "info", "namespace": "txmesh.test", "message": "listener web: http1 on 127.0.0.1:15001",
                      "listener": "web", "protocol": "http1", "address": "127.0.0.1:15001", "ratio": 0.5, "n": None}
    out.truncate(0)
    out.seek(0)
    Logger(namespace="txmesh.test", observer=observer).failure("lost", failure.Failure(KeyError("k")))
    record = json.loads(out.getvalue())  # one line, the traceback inside
    assert out.getvalue().count("\n") == 1
    assert record["level"] == "critical" and "KeyError" in record["traceback"]


def test_json_with_journald_is_prefixed():
    out = io.StringIO()
    emitted(OperatorLogObserver(out, format="json", journald=True), LogLevel.error, "bad")
    assert out.getvalue().startswith('<3>{"time": ')
    assert json.loads(out.getvalue()[3:])["message"] == "bad"


def test_formatters_on_a_legacy_event_name_its_system():
    [event] = captured(lambda: legacyLog.msg("hello", system="web,1,127.0.0.1"))
    assert formatText(event, LogLevel.info, timestamp=False) == "info [web,1,127.0.0.1] hello"
    assert json.loads(formatJSON(event, LogLevel.info))["namespace"] == "web,1,127.0.0.1"


def test_journal_stream_detection(tmp_path):
    with open(tmp_path / "out", "w") as f, open(tmp_path / "other", "w") as other:
        st = os.fstat(f.fileno())
        env = {"JOURNAL_STREAM": "%d:%d" % (st.st_dev, st.st_ino)}
        assert isJournalStream(f.fileno(), env)
        assert not isJournalStream(other.fileno(), env)  # redirected elsewhere: the variable is inherited, not true
        assert not isJournalStream(f.fileno(), {})
        assert not isJournalStream(f.fileno(), {"JOURNAL_STREAM": "garbage"})
        assert isJournalStream(f, env)
        assert not isJournalStream(io.StringIO(), env)  # no descriptor


def test_parse_level():
    assert parseLevel("INFO") is LogLevel.info
    assert parseLevel("warning") is LogLevel.warn
    with pytest.raises(ValueError, match="unknown log level 'loud' \\(known: debug, info, warn, error, critical\\)"):
        parseLevel("loud")
    with pytest.raises(ValueError, match="unknown log format 'xml'"):
        OperatorLogObserver(io.StringIO(), format="xml")


class TwistdOptions(dict):
    """What txmesh.tap reads of twistd's own options (the sub-options' ``parent``)."""


def options(*args, **twistd):
    o = tap.Options()
    o.parent = TwistdOptions(twistd) if twistd else None
    o.parseOptions(["--config", "mesh.yaml", *args])
    return o


def test_tap_log_options():
    o = options()
    assert (o["log-level"], o["log-format"]) == (LogLevel.info, "text")
    o = options("--log-level", "debug", "--log-format", "json")
    assert (o["log-level"], o["log-format"]) == (LogLevel.debug, "json")
    with pytest.raises(usage.UsageError, match="--log-level: unknown log level 'verbose'"):
        options("--log-level", "verbose")
    with pytest.raises(usage.UsageError, match="--log-format: 'xml' is not one of text, json"):
        options("--log-format", "xml")


def test_tap_observer_follows_twistd_options(tmp_path):
    with open(tmp_path / "stdout", "w") as stdout:
        observer = tap.makeObserver(options("--log-level", "warn", nodaemon=True), stdout)
        assert (observer.stream, observer.level, observer.journald) == (stdout, LogLevel.warn, False)
        assert tap.makeObserver(options(nodaemon=True, syslog=True), stdout) is None
        assert tap.makeObserver(options(nodaemon=True, logger=object()), stdout) is None
    logfile = str(tmp_path / "txmesh.log")
    observer = tap.makeObserver(options(nodaemon=False, logfile=logfile))
    emitted(observer, LogLevel.info, "to the file")
    observer.stream.close()
    assert open(logfile).read().endswith(" info [txmesh.test] to the file\n")


def test_config_error_in_the_chosen_format(tmp_path):
    with open(tmp_path / "stderr", "w+") as stderr:
        tap.reportConfigError(options("--log-format", "json"), "mesh.yaml:3: listeners: must be a list", stderr)
        stderr.seek(0)
        record = json.loads(stderr.read())
    assert (record["level"], record["message"]) == ("error", "txmesh: invalid configuration: mesh.yaml:3: "
                                                             "listeners: must be a list")


def test_cli_version(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0
    import platform

    lines = capsys.readouterr().out.splitlines()
    assert lines[:4] == [
        "txmesh %s" % (txmesh.__version__,), "Python %s" % (platform.python_version(),),
        "Twisted %s" % (twisted.__version__,), "reactor txmesh-epoll (txmesh.reactor.TxmeshReactor)"]
    assert lines[4].startswith("hot path ")  # the compiled cores' mode (tests/test_speedups.py)
