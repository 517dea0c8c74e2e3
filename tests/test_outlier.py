"""
Outlier detection (txmesh.upstream.outlier) on a Clock: every ejection rule, ejection times, un-ejection, decay,
max ejection percent, split origins; its config; and through the router that an ejected host gets no traffic.
"""

import random

import pytest
from twisted.internet.task import Clock
from zope.interface.verify import verifyObject

from txmesh.config import ConfigError, OutlierDetectionConfig, loads
from txmesh.interfaces import IHostMonitor, IOutlierDetector
from txmesh.stats import StatsStore
from txmesh.testing import InMemoryMesh
from txmesh.upstream.host import HealthFlag, Host
from txmesh.upstream.outcome import Outcome
from txmesh.upstream.outlier import OutlierDetector, successRateThreshold

OK = Outcome.SUCCESS
E500 = Outcome.EXT_ORIGIN_FAILURE
E503 = Outcome.GATEWAY_FAILURE
REFUSED = Outcome.LOCAL_ORIGIN_CONNECT_FAILED
TIMEOUT = Outcome.LOCAL_ORIGIN_TIMEOUT


class Detected:
    """A detector over n fresh hosts on a Clock, with its stats store."""

    def __init__(self, n=5, **config):
        config.setdefault("maxEjectionPercent", 100)
        self.clock = Clock()
        self.store = StatsStore()
        self.config = OutlierDetectionConfig(**config)
        self.detector = OutlierDetector(self.config, self.clock, random.Random(0), self.store.scope(cluster="c"))
        self.hosts = [Host("10.0.0.%d" % (i + 1), 80) for i in range(n)]
        self.detector.hostsChanged(self.hosts, [])

    def put(self, i, *outcomes):
        for outcome in outcomes:
            self.hosts[i].monitor.putResult(outcome)

    def stat(self, name):
        return self.store.value("outlier_detection_" + name, cluster="c")

    def ejected(self):
        return [i for i, h in enumerate(self.hosts) if h.healthFlags & HealthFlag.FAILED_OUTLIER_CHECK]

    def state(self, i):
        return self.detector.describeHost(self.hosts[i])


def test_detector_and_monitor_provide_their_interfaces():
    d = Detected(1)
    assert verifyObject(IOutlierDetector, d.detector)
    assert verifyObject(IHostMonitor, d.hosts[0].monitor)


def test_consecutive_5xx_ejects_and_a_success_resets_the_count():
    d = Detected()
    d.put(0, E500, E500, E500, E500, OK, E500, E500, E500, E500)
    assert d.ejected() == [] and d.stat("ejections_detected_consecutive_5xx") == 0
    d.put(0, E500)
    assert d.ejected() == [0]
    assert not d.hosts[0].healthy and d.hosts[0].healthFlags == HealthFlag.FAILED_OUTLIER_CHECK
    assert (d.stat("ejections_active"), d.stat("ejections_enforced_total"),
            d.stat("ejections_enforced_consecutive_5xx"), d.stat("ejections_detected_consecutive_5xx")) == (1, 1, 1, 1)


def test_gateway_failures_count_as_5xx_too_and_gateway_enforcement_defaults_to_off():
    d = Detected()
    d.put(0, E503, E503, E503, E503, E503)
    assert d.ejected() == [0]
    # both thresholds were reached; Envoy's enforcing_consecutive_gateway_failure defaults to 0
    assert d.stat("ejections_detected_consecutive_gateway_failure") == 1
    assert d.stat("ejections_enforced_consecutive_gateway_failure") == 0
    assert d.stat("ejections_enforced_consecutive_5xx") == 1


def test_consecutive_gateway_failure_ejection_and_a_500_breaks_the_run():
    d = Detected(consecutive5xx=0, consecutiveGatewayFailure=3, enforcingConsecutiveGatewayFailure=100)
    d.put(1, E503, E503, E500, E503, E503)
    assert d.ejected() == []
    d.put(1, E503)
    assert d.ejected() == [1] and d.stat("ejections_enforced_consecutive_gateway_failure") == 1


def test_local_origin_failures_count_as_gateway_failures_when_origins_are_not_split():
    d = Detected(consecutive5xx=0, consecutiveGatewayFailure=3, enforcingConsecutiveGatewayFailure=100)
    d.put(0, REFUSED, TIMEOUT, Outcome.LOCAL_ORIGIN_RESET)
    assert d.ejected() == [0] and d.stat("ejections_enforced_consecutive_gateway_failure") == 1
    assert d.stat("ejections_detected_consecutive_local_origin_failure") == 0


def test_split_origins_local_failures_have_their_own_counter():
    d = Detected(splitExternalLocalOriginErrors=True, consecutiveLocalOriginFailure=3)
    d.put(0, REFUSED, REFUSED, E500, REFUSED)  # an answer, even a 500, shows the connection works
    d.put(1, E500, E500, E500, E500, REFUSED)  # the 5xx count ignores local-origin failures
    assert d.ejected() == []
    d.put(0, REFUSED, TIMEOUT)
    assert d.ejected() == [0]
    assert d.stat("ejections_enforced_consecutive_local_origin_failure") == 1
    d.put(1, E500)
    assert d.ejected() == [0, 1] and d.stat("ejections_enforced_consecutive_5xx") == 1


def test_ejection_time_grows_with_each_ejection_and_is_capped():
    d = Detected(interval=10.0, baseEjectionTime=30.0, maxEjectionTime=100.0)
    durations = []
    for _ in range(6):
        d.put(0, *[E500] * 5)
        assert d.ejected() == [0]
        ejectedAt = d.clock.seconds()
        while d.ejected():
            d.clock.advance(10)
        durations.append(d.clock.seconds() - ejectedAt)
    # base x times ejected, capped at max (un-ejection happens on the interval ticks, every 10s here)
    assert durations == [30, 60, 90, 100, 100, 100]
    assert d.state(0)["times_ejected"] == 6
    assert d.stat("ejections_active") == 0


def test_unejection_waits_for_the_interval_tick():
    d = Detected(interval=10.0, baseEjectionTime=30.0)
    d.clock.advance(5)
    d.put(0, *[E500] * 5)
    assert d.state(0)["ejected_until"] == 35
    d.clock.pump([5] * 6)  # t=35: the ejection time is over, but the next tick is at 40
    assert d.ejected() == [0]
    d.clock.advance(5)
    assert d.ejected() == [] and d.hosts[0].healthy


def test_unejection_resets_the_consecutive_counts():
    d = Detected(interval=10.0, baseEjectionTime=10.0)
    d.put(0, E500, E500, E500, E500, E500, E500, E500)  # ejected; two more while ejected
    d.clock.advance(10)
    assert d.ejected() == []
    d.put(0, E500, E500, E500, E500)
    assert d.ejected() == []


def test_the_multiplier_decays_while_the_host_stays_healthy():
    d = Detected(interval=10.0, baseEjectionTime=30.0)
    for _ in range(3):
        d.put(0, *[E500] * 5)
        while d.ejected():
            d.clock.advance(10)
    assert d.state(0)["ejection_multiplier"] == 3
    d.clock.advance(10)  # one interval in service since the un-ejection
    assert d.state(0)["ejection_multiplier"] == 2
    d.clock.pump([10, 10])
    assert d.state(0)["ejection_multiplier"] == 0
    d.put(0, *[E500] * 5)
    assert d.state(0)["ejected_until"] == d.clock.seconds() + 30  # back to the base time


def test_max_ejection_percent_counts_the_host_to_eject():
    d = Detected(10, maxEjectionPercent=10)
    d.put(0, *[E500] * 5)
    d.put(1, *[E500] * 5)
    assert d.ejected() == [0]  # 1 of 10 is 10%; 2 of 10 would be 20%
    assert d.stat("ejections_overflow") == 1 and d.stat("ejections_detected_consecutive_5xx") == 2


def test_the_default_ten_percent_ejects_nobody_in_a_small_cluster_unless_always_eject_one_host():
    d = Detected(5, maxEjectionPercent=10)
    d.put(0, *[E500] * 5)
    assert d.ejected() == [] and d.stat("ejections_overflow") == 1
    d = Detected(5, maxEjectionPercent=10, alwaysEjectOneHost=True)
    d.put(0, *[E500] * 5)
    d.put(1, *[E500] * 5)
    assert d.ejected() == [0] and d.stat("ejections_overflow") == 1


def test_a_single_host_cluster_can_lose_its_only_host():
    d = Detected(1, maxEjectionPercent=100)
    d.put(0, *[E500] * 5)
    assert d.ejected() == [0]  # the cluster routes through panic mode then (tests/test_priority.py)


def test_enforcing_percentage_is_a_chance():
    d = Detected(20, enforcingConsecutive5xx=50)
    for i in range(20):
        d.put(i, *[E500] * 5)
    assert d.stat("ejections_detected_consecutive_5xx") == 20
    assert 3 < len(d.ejected()) < 17 and d.stat("ejections_enforced_total") == len(d.ejected())


def test_success_rate_threshold_arithmetic():
    assert successRateThreshold([50, 100, 100, 100, 100], 1900) == (90, 52)
    mean, threshold = successRateThreshold([90, 95, 100], 1000)
    assert mean == 95 and threshold == pytest.approx(95 - (50 / 3) ** 0.5)


def test_success_rate_ejection_on_the_interval():
    d = Detected(6, interval=10.0)
    d.put(0, *[OK] * 50 + [E500, OK] * 25)  # 75 of 100, never 5 in a row
    d.put(1, *[OK] * 94 + [E500] * 4 + [OK] * 2)  # 96%
    for i in range(2, 6):
        d.put(i, *[OK] * 100)
    # rates 75, 96, 100 x 4: mean 95.17, stdev 8.9, threshold 95.17 - 1.9 x 8.9 = 78.2: only host 0 is under
    assert d.ejected() == []
    d.clock.advance(10)
    assert d.ejected() == [0]
    assert d.stat("ejections_enforced_success_rate") == 1 and d.stat("ejections_detected_success_rate") == 1
    assert d.state(1)["success_rate"] == 96.0 and d.state(2)["success_rate"] == 100.0


def test_success_rate_needs_the_request_volume_and_minimum_hosts():
    d = Detected(6, interval=10.0)
    d.put(0, *[OK, E500] * 49)  # 98 requests: under success_rate_request_volume
    for i in range(1, 6):
        d.put(i, *[OK] * 100)
    d.clock.advance(10)
    assert d.ejected() == []
    d = Detected(6, interval=10.0)
    d.put(0, *[OK, E500] * 50)
    for i in range(1, 4):  # four hosts with volume: under success_rate_minimum_hosts (5)
        d.put(i, *[OK] * 100)
    d.clock.advance(10)
    assert d.ejected() == [] and d.stat("ejections_detected_success_rate") == 0


def test_success_rate_counts_only_the_last_interval():
    d = Detected(5, interval=10.0)
    d.put(0, *[OK, E500] * 50)
    d.clock.advance(10)  # not enough hosts had volume: nothing ejected, and the counts start again
    for i in range(5):
        d.put(i, *[OK] * 100)
    d.clock.advance(10)
    assert d.ejected() == [] and d.state(0)["success_rate"] == 100.0


def test_failure_percentage_ejection():
    d = Detected(5, interval=10.0, enforcingFailurePercentage=100, consecutive5xx=0)
    d.put(0, *[OK, E500, E500, E500, E500, E500, E500, E500, E500, E500] * 5)  # 90% failures, 50 requests
    d.put(1, *[OK, OK, E500, E500, E500, E500, E500, E500, E500, E500] * 5)  # 80%: under the 85% threshold
    for i in range(2, 5):
        d.put(i, *[OK] * 50)
    d.clock.advance(10)
    assert d.ejected() == [0]
    assert d.stat("ejections_enforced_failure_percentage") == 1


def test_failure_percentage_is_detected_but_not_enforced_by_default():
    d = Detected(5, interval=10.0, consecutive5xx=0)
    d.put(0, *[OK, E500, E500, E500, E500, E500, E500, E500, E500, E500] * 5)
    for i in range(1, 5):
        d.put(i, *[OK] * 50)
    d.clock.advance(10)
    assert d.ejected() == [] and d.stat("ejections_detected_failure_percentage") == 1


def test_local_origin_success_rate_when_split():
    d = Detected(5, interval=10.0, splitExternalLocalOriginErrors=True, enforcingFailurePercentageLocalOrigin=100,
                 consecutiveLocalOriginFailure=0, enforcingLocalOriginSuccessRate=0)
    d.put(0, *[OK, REFUSED, REFUSED, REFUSED, REFUSED, REFUSED, REFUSED, REFUSED, REFUSED, REFUSED] * 10)
    for i in range(1, 5):
        d.put(i, *[OK] * 100)
    d.clock.advance(10)
    assert d.ejected() == [0]
    assert d.stat("ejections_enforced_local_origin_failure_percentage") == 1
    # its local-origin success rate (10 of 100) was under the threshold too, but that type is not enforced here
    assert d.stat("ejections_detected_local_origin_success_rate") == 1
    assert d.state(0)["local_origin_success_rate"] == 10.0 and d.state(0)["success_rate"] == 100.0


def test_removed_hosts_are_forgotten():
    d = Detected(3)
    d.put(0, *[E500] * 5)
    host = d.hosts[0]
    d.detector.hostsChanged([], [host])
    assert d.stat("ejections_active") == 0 and host.healthy
    assert d.detector.describeHost(host) is None
    host.monitor.putResult(E500)  # the null monitor again


def test_stop_cancels_the_timer():
    d = Detected(1)
    d.detector.stop()
    assert d.clock.getDelayedCalls() == []


# -- config --------------------------------------------------------------------------------------------------

CLUSTER = """listeners:
- name: ingress
  address: tcp:0
  default_cluster: backend
clusters:
- name: backend
  endpoints: [{address: "10.0.0.1:80"}]
"""


def cluster(extra):
    return loads(CLUSTER + "".join("  %s\n" % line for line in extra.splitlines())).clusters[0]


def test_outlier_detection_config_defaults_and_keys():
    assert cluster("").outlierDetection is None
    assert cluster("outlier_detection: {}").outlierDetection == OutlierDetectionConfig()
    od = cluster("outlier_detection:\n  consecutive_5xx: 3\n  interval: 1s\n  base_ejection_time: 500s\n"
                 "  max_ejection_percent: 50\n  split_external_local_origin_errors: true\n"
                 "  enforcing_failure_percentage: 20\n  success_rate_stdev_factor: 1000").outlierDetection
    assert (od.consecutive5xx, od.interval, od.baseEjectionTime, od.maxEjectionTime, od.maxEjectionPercent,
            od.splitExternalLocalOriginErrors, od.enforcingFailurePercentage, od.successRateStdevFactor) == (
        3, 1.0, 500.0, 500.0, 50, True, 20, 1000)


@pytest.mark.parametrize("extra, expected", [
    ("outlier_detection: {max_ejection_percent: 101}",
     "<string>:8: clusters[0].outlier_detection.max_ejection_percent: must be between 0 and 100, got 101"),
    ("outlier_detection: {interval: 0s}", "<string>:8: clusters[0].outlier_detection.interval: must be a duration > 0"),
    ("outlier_detection: {base_ejection_time: 60s, max_ejection_time: 30s}",
     "<string>:8: clusters[0].outlier_detection.max_ejection_time: must be >= base_ejection_time (60s)"),
    ("outlier_detection: {consecutive_5xxx: 3}",
     "<string>:8: clusters[0].outlier_detection.consecutive_5xxx: unknown key 'consecutive_5xxx'"),
    ("outlier_detection: {split_external_local_origin_errors: 1}",
     "<string>:8: clusters[0].outlier_detection.split_external_local_origin_errors: must be a boolean"),
])
def test_outlier_detection_config_errors(extra, expected):
    with pytest.raises(ConfigError) as info:
        cluster(extra)
    assert str(info.value).startswith(expected)


# -- through the router ----------------------------------------------------------------------------------------

MESH = """
listeners:
- name: ingress
  protocol: http
  address: tcp:0
  route_config:
    virtual_hosts:
    - name: app
      domains: ["*"]
      routes:
      - match: {prefix: /}
        route: {cluster: backend, timeout: 5s}
clusters:
- name: backend
  lb_policy: round_robin
  endpoints: [{address: "10.0.0.1:80"}, {address: "10.0.0.2:80"}]
  outlier_detection: {consecutive_5xx: 3, max_ejection_percent: 50, interval: 1s, base_ejection_time: 5s}
"""


def test_an_ejected_host_gets_no_traffic_until_it_comes_back():
    mesh = InMemoryMesh(MESH)
    bad, good = mesh.upstream("10.0.0.1:80"), mesh.upstream("10.0.0.2:80")
    bad.respondWith(503)
    good.respondWith(200)
    client = mesh.connect()

    def send(n):
        statuses = []
        for _ in range(n):
            client.request(b"GET", b"/")
            statuses.append(client.responses()[-1].status)
        return statuses

    statuses = send(12)
    assert len(bad.requests) == 3 and statuses.count(503) == 3  # the third 503 ejected it
    assert len(good.requests) == 9
    assert mesh.value("outlier_detection_ejections_active", cluster="backend") == 1
    [described] = [c for c in mesh.clusters.describe() if c["name"] == "backend"]
    assert [h["outlier"]["ejected"] for h in described["hosts"]] == [True, False]
    bad.respondWith(200)
    mesh.advance(5)  # the tick at t=5 brings it back
    assert mesh.value("outlier_detection_ejections_active", cluster="backend") == 0
    assert send(4) == [200] * 4 and len(bad.requests) == 5
