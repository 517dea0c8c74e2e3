"""The outcome table (txmesh.upstream.outcome), the host's health flags and monitor, the cluster's resources, and
the router reporting each attempt's outcome to the host's monitor."""

import pytest
from twisted.python.failure import Failure
from zope.interface import implementer
from zope.interface.verify import verifyObject

from txmesh import errors
from txmesh.interfaces import IHost, IHostMonitor, IHostMonitorEvents, IResourceLimit
from txmesh.stats import StatsStore
from txmesh.stream import HeaderMap, ResponseHead
from txmesh.testing import RecordingUpstreamStream
from txmesh.upstream.host import NULL_MONITOR, HealthFlag, Host
from txmesh.upstream.outcome import Outcome, classifyDubbo, classifyError, classifyGRPC, classifyHTTP
from txmesh.upstream.resources import ClusterResources, ResourceLimit

from tests.test_router import Harness


@pytest.mark.parametrize("status,outcome", [
    (200, Outcome.SUCCESS), (404, Outcome.SUCCESS), (429, Outcome.SUCCESS), (499, Outcome.SUCCESS),
    (500, Outcome.EXT_ORIGIN_FAILURE), (501, Outcome.EXT_ORIGIN_FAILURE), (505, Outcome.EXT_ORIGIN_FAILURE),
    (502, Outcome.GATEWAY_FAILURE), (503, Outcome.GATEWAY_FAILURE), (504, Outcome.GATEWAY_FAILURE)])
def test_http_statuses(status, outcome):
    assert classifyHTTP(status) is outcome


def test_grpc_statuses():
    # as the HTTP status Envoy maps each code to (grpcToHttpStatus): 500, 504, 501, 500, 503, 500
    failures = {2: Outcome.EXT_ORIGIN_FAILURE, 4: Outcome.GATEWAY_FAILURE, 12: Outcome.EXT_ORIGIN_FAILURE,
                13: Outcome.EXT_ORIGIN_FAILURE, 14: Outcome.GATEWAY_FAILURE, 15: Outcome.EXT_ORIGIN_FAILURE}
    for code in range(17):
        assert classifyGRPC(code) is failures.get(code, Outcome.SUCCESS), code


@pytest.mark.parametrize("status,outcome", [
    (20, Outcome.SUCCESS), (40, Outcome.SUCCESS), (90, Outcome.SUCCESS),
    (60, Outcome.GATEWAY_FAILURE), (100, Outcome.GATEWAY_FAILURE),
    (30, Outcome.EXT_ORIGIN_FAILURE), (31, Outcome.EXT_ORIGIN_FAILURE), (50, Outcome.EXT_ORIGIN_FAILURE),
    (70, Outcome.EXT_ORIGIN_FAILURE), (80, Outcome.EXT_ORIGIN_FAILURE), (77, Outcome.EXT_ORIGIN_FAILURE)])
def test_dubbo_statuses(status, outcome):
    assert classifyDubbo(status) is outcome


@pytest.mark.parametrize("exc,outcome", [
    (errors.ConnectFailure("x"), Outcome.LOCAL_ORIGIN_CONNECT_FAILED),
    (errors.ConnectTimeout("x"), Outcome.LOCAL_ORIGIN_CONNECT_FAILED),
    (errors.UpstreamTimeout("x"), Outcome.LOCAL_ORIGIN_TIMEOUT),
    (errors.UpstreamReset("x"), Outcome.LOCAL_ORIGIN_RESET),
    (errors.UpstreamRemoteReset("x"), Outcome.LOCAL_ORIGIN_RESET),
    (errors.BadUpstreamResponse("x"), Outcome.LOCAL_ORIGIN_RESET),
    (errors.Overflow("x"), None), (errors.PoolClosed("x"), None), (errors.NoHealthyUpstream("x"), None),
    (errors.StreamIdleTimeout("x"), None), (errors.MaxStreamDuration("x"), None)])
def test_errors(exc, outcome):
    assert classifyError(exc) is outcome


def test_outcome_properties():
    assert not Outcome.SUCCESS.isFailure and not Outcome.LOCAL_ORIGIN_CONNECT_SUCCESS.isFailure
    assert Outcome.GATEWAY_FAILURE.isFailure and Outcome.GATEWAY_FAILURE.isGateway
    assert Outcome.LOCAL_ORIGIN_RESET.isLocalOrigin and not Outcome.EXT_ORIGIN_FAILURE.isLocalOrigin


# -- hosts ----------------------------------------------------------------------------------------------------------

def test_host_contract_and_flags():
    host = Host("10.0.0.1", 80, priority=1, locality="zone-a", metadata={"version": "1.0"})
    verifyObject(IHost, host)
    verifyObject(IHostMonitor, NULL_MONITOR)
    assert host.monitor is NULL_MONITOR and host.priority == 1 and host.metadata["version"] == "1.0"
    seen = []
    host.addHealthWatcher(lambda h: seen.append(h.healthy))
    host.setHealthFlag(HealthFlag.FAILED_ACTIVE_HC)
    host.setHealthFlag(HealthFlag.FAILED_OUTLIER_CHECK)  # still unhealthy: no second call
    host.clearHealthFlag(HealthFlag.FAILED_ACTIVE_HC)
    assert not host.healthy and seen == [False]
    host.clearHealthFlag(HealthFlag.FAILED_OUTLIER_CHECK)
    assert host.healthy and host.healthFlags == 0 and seen == [False, True]
    assert Host("10.0.0.2", 80, healthy=False).healthFlags == HealthFlag.FAILED_EDS_HEALTH
    with pytest.raises(TypeError):
        host.metadata["x"] = "y"


def test_resource_limits_and_gauges():
    scope = StatsStore().scope(cluster="c")
    resources = ClusterResources(maxRequests=2, scope=scope)
    verifyObject(IResourceLimit, resources.requests)
    rq = resources.requests
    assert rq.canCreate()
    rq.inc()
    rq.inc()
    assert not rq.canCreate()
    assert scope.store.value("circuit_breakers_remaining_rq", cluster="c") == 0
    assert scope.store.value("circuit_breakers_open_rq", cluster="c") == 1
    rq.dec()
    rq.dec()
    rq.dec()  # never below zero
    assert rq.count == 0 and scope.store.value("circuit_breakers_remaining_rq", cluster="c") == 2
    assert resources.retries.max == 3 and resources.connections.max == 1024
    assert ResourceLimit(5).canCreate()


# -- the router reports to the host's monitor ------------------------------------------------------------------------

@implementer(IHostMonitor)
class RecordingMonitor:
    def __init__(self):
        self.results = []
        self.times = []

    def putResult(self, outcome):
        self.results.append(outcome)

    def putResponseTime(self, seconds):
        self.times.append(seconds)


@pytest.fixture
def h():
    harness = Harness()
    harness.monitor = RecordingMonitor()
    harness.host.addMonitor(harness.monitor)  # the only monitor: host.monitor is it (no fan-out)
    return harness


def test_a_response_status_is_reported_with_its_response_time(h):
    handle = RecordingUpstreamStream()
    h.start(idle=handle)
    h.mesh.clock.advance(0.25)
    handle.responder.upstreamHeaders(ResponseHead(503), True)
    handle.responder.upstreamComplete(True)
    assert h.monitor.results == [Outcome.GATEWAY_FAILURE] and h.monitor.times == [0.25]


def test_grpc_outcome_waits_for_the_trailers(h):
    handle = RecordingUpstreamStream()
    h.start(idle=handle)
    handle.responder.upstreamHeaders(ResponseHead(200, HeaderMap([(b"content-type", b"application/grpc")])), False)
    assert h.monitor.results == []
    handle.responder.upstreamTrailers(HeaderMap([(b"grpc-status", b"14")]))
    handle.responder.upstreamComplete(True)
    assert h.monitor.results == [Outcome.GATEWAY_FAILURE]


def test_grpc_trailers_only_and_missing_status(h):
    handle = RecordingUpstreamStream()
    h.start(idle=handle)
    handle.responder.upstreamHeaders(
        ResponseHead(200, HeaderMap([(b"content-type", b"application/grpc+proto"), (b"grpc-status", b"5")])), True)
    handle.responder.upstreamComplete(True)
    handle = RecordingUpstreamStream()
    h.start(idle=handle)
    handle.responder.upstreamHeaders(ResponseHead(200, HeaderMap([(b"content-type", b"application/grpc")])), False)
    handle.responder.upstreamComplete(True)  # no grpc-status at all: UNKNOWN
    assert h.monitor.results == [Outcome.SUCCESS, Outcome.EXT_ORIGIN_FAILURE]


def test_connect_failure_reset_and_timeout_are_reported_once(h):
    h.start()
    h.pool.waiting[0].errback(Failure(errors.ConnectFailure("refused")))
    handle = RecordingUpstreamStream()
    h.start(idle=handle)
    handle.responder.upstreamFailed(errors.UpstreamReset("closed"))
    handle = RecordingUpstreamStream()
    h.start(idle=handle)
    h.mesh.clock.advance(6)  # the route timeout is 5s
    handle.responder.upstreamFailed(errors.UpstreamReset("late"))  # after the timeout: not reported again
    assert h.monitor.results == [Outcome.LOCAL_ORIGIN_CONNECT_FAILED, Outcome.LOCAL_ORIGIN_RESET,
                                 Outcome.LOCAL_ORIGIN_TIMEOUT]


def test_an_overflow_says_nothing_about_the_host(h):
    h.start()
    h.pool.waiting[0].errback(Failure(errors.Overflow("full")))
    assert h.monitor.results == []


def test_monitors_fan_out_and_come_off_again():
    host = Host("10.0.0.1", 80)
    a, b = RecordingMonitor(), RecordingMonitor()
    host.addMonitor(a)
    assert host.monitor is a
    host.addMonitor(b)
    host.monitor.putResult(Outcome.SUCCESS)
    host.monitor.putResponseTime(0.5)
    assert a.results == b.results == [Outcome.SUCCESS] and a.times == b.times == [0.5]
    host.removeMonitor(a)
    assert host.monitor is b
    host.removeMonitor(b)
    assert host.monitor is NULL_MONITOR


@implementer(IHostMonitor, IHostMonitorEvents)
class ResultsOnlyMonitor(RecordingMonitor):
    readsResponseTimes = False


def test_attempts_are_timed_only_for_monitors_that_read_response_times():
    from txmesh.upstream.outlier import HostOutlierMonitor

    assert verifyObject(IHostMonitorEvents, NULL_MONITOR) and not NULL_MONITOR.readsResponseTimes
    assert IHostMonitorEvents.implementedBy(HostOutlierMonitor) and not HostOutlierMonitor.readsResponseTimes
    host = Host("10.0.0.1", 80)
    assert not host.timesResponses
    blind, reader = ResultsOnlyMonitor(), RecordingMonitor()  # a monitor without IHostMonitorEvents reads all
    host.addMonitor(blind)
    assert not host.timesResponses
    host.addMonitor(reader)
    assert host.timesResponses
    host.removeMonitor(reader)
    assert not host.timesResponses and host.monitor is blind
    host.addMonitor(reader)
    host.removeMonitor(blind)
    assert host.timesResponses and host.monitor is reader
    host.removeMonitor(reader)
    assert not host.timesResponses and host.monitor is NULL_MONITOR


def test_a_results_only_monitor_gets_the_outcomes_and_no_response_times():
    h = Harness()
    blind = ResultsOnlyMonitor()
    h.host.addMonitor(blind)
    handle = RecordingUpstreamStream()
    h.start(idle=handle)
    h.mesh.clock.advance(0.25)
    handle.responder.upstreamHeaders(ResponseHead(503), True)
    handle.responder.upstreamComplete(True)
    assert blind.results == [Outcome.GATEWAY_FAILURE] and blind.times == []
    reader = RecordingMonitor()  # beside it, a monitor that reads them: both told, the times to both
    h.host.addMonitor(reader)
    handle = RecordingUpstreamStream()
    h.start(idle=handle)
    h.mesh.clock.advance(0.5)
    handle.responder.upstreamHeaders(ResponseHead(200), True)
    handle.responder.upstreamComplete(True)
    assert reader.results == [Outcome.SUCCESS] and reader.times == [0.5]
    assert blind.results == [Outcome.GATEWAY_FAILURE, Outcome.SUCCESS] and blind.times == [0.5]


def test_the_failure_sets_say_what_the_classifiers_say():
    """The per-request verdicts error_rate_breaker uses (sets, no Outcome made) agree with the table, code by code."""
    from txmesh.upstream.outcome import DUBBO_SUCCESS_STATUSES, GRPC_FAILURE_CODES, HTTP_FAILURE_MIN

    for status in range(100, 1000):
        assert (status >= HTTP_FAILURE_MIN) == classifyHTTP(status).isFailure, status
    for code in range(0, 40):
        assert (code in GRPC_FAILURE_CODES) == classifyGRPC(code).isFailure, code
    for status in range(0, 256):
        assert (status not in DUBBO_SUCCESS_STATUSES) == classifyDubbo(status).isFailure, status
