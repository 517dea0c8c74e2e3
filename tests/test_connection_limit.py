"""
The connection_limit network filter: per-listener counting, refusal (at once or after ``delay`` on the fake clock),
its counters, and config errors naming the key.
"""

import pytest
from twisted.python.failure import Failure
from zope.interface.verify import verifyObject

from txmesh.config import loads
from txmesh.errors import ConfigError
from txmesh.filters.connection_limit import ConnectionLimitConfig, ConnectionLimitFactory, ConnectionLimitFilter
from txmesh.interfaces import FilterStatus, IReadFilter
from txmesh.testing import (FakeConfigContext, FakeConnection, FakeReadFilterCallbacks, FakeRuntime, RecordingInstaller,
                            buildConfigError)

ACTIVE = "connection_limit_active_connections"
LIMITED = "connection_limit_limited_connections"


def open_(config, runtime, listener="ingress"):
    """A filter instance on a new FakeConnection, after its connectionMade; returns (filter, connection, status)."""
    installer = RecordingInstaller()
    ConnectionLimitFactory().createFilters(config, installer, runtime)
    [f] = installer.readFilters
    connection = FakeConnection(listenerName=listener)
    f.initializeReadFilterCallbacks(FakeReadFilterCallbacks(connection))
    return f, connection, f.connectionMade()


def test_connectionsUpToTheLimitPassThenAreRefusedAtOnce():
    runtime = FakeRuntime()
    config = ConnectionLimitConfig(2)
    opened = [open_(config, runtime) for _ in range(3)]
    assert [status for _, _, status in opened] == [FilterStatus.CONTINUE, FilterStatus.CONTINUE, FilterStatus.STOP]
    assert [c.closed for _, c, _ in opened] == [None, None, "close"]
    assert runtime.stats.value(ACTIVE, listener="ingress") == 2
    assert runtime.stats.value(LIMITED, listener="ingress") == 1


def test_aClosedConnectionFreesItsPlace():
    runtime = FakeRuntime()
    config = ConnectionLimitConfig(1)
    first, _, _ = open_(config, runtime)
    _, refused, status = open_(config, runtime)
    assert status is FilterStatus.STOP
    first.connectionLost(Failure(ConnectionError()))
    assert runtime.stats.value(ACTIVE, listener="ingress") == 0
    _, again, status = open_(config, runtime)
    assert status is FilterStatus.CONTINUE and again.closed is None


def test_aRefusedConnectionDoesNotCountWhenItCloses():
    runtime = FakeRuntime()
    config = ConnectionLimitConfig(1)
    open_(config, runtime)
    refused, _, _ = open_(config, runtime)
    refused.connectionLost(Failure(ConnectionError()))
    assert runtime.stats.value(ACTIVE, listener="ingress") == 1


def test_listenersCountApart():
    runtime = FakeRuntime()
    config = ConnectionLimitConfig(1)
    assert open_(config, runtime, "a")[2] is FilterStatus.CONTINUE
    assert open_(config, runtime, "b")[2] is FilterStatus.CONTINUE
    assert open_(config, runtime, "a")[2] is FilterStatus.STOP


def test_delayClosesLaterOnTheClock():
    runtime = FakeRuntime()
    config = ConnectionLimitConfig(1, delay=0.5)
    open_(config, runtime)
    _, refused, status = open_(config, runtime)
    assert status is FilterStatus.STOP and refused.closed is None
    runtime.clock.advance(0.49)
    assert refused.closed is None
    runtime.clock.advance(0.01)
    assert refused.closed == "close"


def test_peerLeavingDuringTheDelayCancelsTheTimer():
    runtime = FakeRuntime()
    config = ConnectionLimitConfig(1, delay=1)
    open_(config, runtime)
    refused, connection, _ = open_(config, runtime)
    refused.connectionLost(Failure(ConnectionError()))
    assert runtime.clock.getDelayedCalls() == []
    assert connection.closed is None


def test_dataPassesThrough():
    f, _, _ = open_(ConnectionLimitConfig(1), FakeRuntime())
    assert f.dataReceived(b"x") is FilterStatus.CONTINUE


def build(raw):
    return ConnectionLimitFactory().buildConfig(raw, FakeConfigContext())


def test_config():
    assert build({"max_connections": 10}) == ConnectionLimitConfig(10, 0.0)
    assert build({"max_connections": 1, "delay": "250ms"}) == ConnectionLimitConfig(1, 0.25)


@pytest.mark.parametrize("raw, path, reason", [
    ({}, "max_connections", "must be an integer >= 1 (required)"),
    ({"max_connections": 0}, "max_connections", "must be an integer >= 1 (required)"),
    ({"max_connections": "10"}, "max_connections", "must be an integer >= 1 (required)"),
    ({"max_connections": True}, "max_connections", "must be an integer >= 1 (required)"),
    ({"max_connections": 1, "delay": "soon"}, "delay", "invalid duration 'soon' (use e.g. 250ms, 1.5s, 2m, 1h)"),
    ({"max_connections": 1, "delay": -1}, "delay", "must be a duration >= 0, got -1"),
    ({"max_connections": 1, "burst": 2}, "burst", "unknown key (expected one of: max_connections, delay)"),
])
def test_configErrorsNameTheKey(raw, path, reason):
    error = buildConfigError(ConnectionLimitFactory(), raw)
    assert (error.path, error.reason) == (path, reason)


def test_configErrorInMeshYamlNamesFileLineAndKeyPath():
    text = ("listeners:\n  - name: l\n    address: tcp:0\n    network_filters:\n"
            "      - name: connection_limit\n        config: {max_connections: 0}\n")
    with pytest.raises(ConfigError) as info:
        loads(text, "mesh.yaml")
    assert str(info.value) == ("mesh.yaml:6: listeners[0].network_filters[0].config.max_connections: must be an "
                               "integer >= 1 (required)")


@pytest.mark.parametrize("protocol", ["http", "http2", "grpc", "dubbo"])
def test_loadsOnEveryListenerProtocol(protocol):
    text = ("listeners:\n  - name: l\n    protocol: %s\n    address: tcp:0\n    network_filters:\n"
            "      - name: connection_limit\n        config: {max_connections: 3}\n" % (protocol,))
    [entry] = loads(text).listeners[0].networkFilters
    assert entry.config == ConnectionLimitConfig(3)


def test_filterInterface():
    verifyObject(IReadFilter, ConnectionLimitFilter(ConnectionLimitConfig(1), FakeRuntime()))
