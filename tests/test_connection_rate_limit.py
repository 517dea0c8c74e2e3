"""The connection_rate_limit network filter: a token bucket of new connections per listener, on a Clock."""

import pytest
from zope.interface.verify import verifyObject

from txmesh.errors import ConfigError
from txmesh.filters.connection_rate_limit import ConnectionRateLimitFactory
from txmesh.interfaces import FilterStatus, IFilterFactory, IReadFilter
from txmesh.testing import FakeConfigContext, FakeConnection, FakeReadFilterCallbacks, FakeRuntime, RecordingInstaller

OK = "connection_rate_limit_ok"
LIMITED = "connection_rate_limit_rate_limited"


def build(raw):
    return ConnectionRateLimitFactory().buildConfig(raw, FakeConfigContext())


def open_(config, runtime):
    installer = RecordingInstaller()
    ConnectionRateLimitFactory().createFilters(config, installer, runtime)
    [f] = installer.readFilters
    verifyObject(IReadFilter, f)
    connection = FakeConnection(listenerName="ingress")
    f.initializeReadFilterCallbacks(FakeReadFilterCallbacks(connection))
    return connection, f.connectionMade()


def test_burst_then_closed_at_once_then_refilled_on_the_clock():
    verifyObject(IFilterFactory, ConnectionRateLimitFactory())
    runtime = FakeRuntime()
    config = build({"token_bucket": {"max_tokens": 2, "tokens_per_fill": 1, "fill_interval": "500ms"}})
    opened = [open_(config, runtime) for _ in range(3)]
    assert [s for _, s in opened] == [FilterStatus.CONTINUE, FilterStatus.CONTINUE, FilterStatus.STOP]
    assert [c.closed for c, _ in opened] == [None, None, "close"]
    assert runtime.stats.value(OK, listener="ingress") == 2
    assert runtime.stats.value(LIMITED, listener="ingress") == 1
    runtime.clock.advance(0.49)
    assert open_(config, runtime)[1] is FilterStatus.STOP
    runtime.clock.advance(0.01)
    assert open_(config, runtime)[1] is FilterStatus.CONTINUE
    assert open_(config, runtime)[1] is FilterStatus.STOP
    assert runtime.clock.getDelayedCalls() == []  # no timer per bucket


@pytest.mark.parametrize("raw, reason", [
    ({}, "token_bucket"),
    ({"token_bucket": {"max_tokens": 1, "fill_interval": "1s"}, "max_connections": 1}, "max_connections"),
    ({"token_bucket": {"max_tokens": 1, "tokens_per_fill": 0, "fill_interval": "1s"}}, "tokens_per_fill"),
])
def test_config_errors_name_the_key(raw, reason):
    with pytest.raises(ConfigError) as e:
        build(raw)
    assert reason in str(e.value)
