"""
Outlier detection (Envoy's passive health checking): a per-cluster OutlierDetector and a per-host
HostOutlierMonitor that reads the Outcome of every attempt the router reports.

Consecutive-failure ejections run inline, as the failing attempt is reported; success-rate and
failure-percentage ejections, un-ejections and the decay of the ejection multiplier run on the interval timer, as
in Envoy (``source/common/upstream/outlier_detection_impl.cc``).  An ejection sets the host's
HealthFlag.FAILED_OUTLIER_CHECK: the balancers skip it unless its priority level is in panic.

Without ``split_external_local_origin_errors`` every failure counts as an HTTP-like code (a connect failure or a
reset as 503, a timeout as 504, an upstream's failure as its class), so local-origin failures feed the
consecutive 5xx and gateway-failure counters and the one success rate.  With it, local-origin failures have their
own consecutive counter and success rate, and an answer from the upstream counts as a local-origin success.
"""

import math

from twisted.logger import Logger
from zope.interface import implementer

from txmesh.interfaces import IHostMonitor, IHostMonitorEvents, IOutlierDetector
from txmesh.upstream.host import HealthFlag
from txmesh.upstream.outcome import Outcome

FAILED_OUTLIER_CHECK = HealthFlag.FAILED_OUTLIER_CHECK

# Envoy's OutlierEjectionType names: the suffixes of the detected/enforced counters
CONSECUTIVE_5XX = "consecutive_5xx"
CONSECUTIVE_GATEWAY_FAILURE = "consecutive_gateway_failure"
CONSECUTIVE_LOCAL_ORIGIN_FAILURE = "consecutive_local_origin_failure"
SUCCESS_RATE = "success_rate"
LOCAL_ORIGIN_SUCCESS_RATE = "local_origin_success_rate"
FAILURE_PERCENTAGE = "failure_percentage"
LOCAL_ORIGIN_FAILURE_PERCENTAGE = "local_origin_failure_percentage"
EJECTION_TYPES = (CONSECUTIVE_5XX, CONSECUTIVE_GATEWAY_FAILURE, CONSECUTIVE_LOCAL_ORIGIN_FAILURE, SUCCESS_RATE,
                  LOCAL_ORIGIN_SUCCESS_RATE, FAILURE_PERCENTAGE, LOCAL_ORIGIN_FAILURE_PERCENTAGE)

# Outcomes that count as a gateway failure (502/503/504) when origins are not split: Envoy maps a connect failure
# (and the router's resets) to 503 and a timeout to 504.
_GATEWAY_LIKE = frozenset((Outcome.GATEWAY_FAILURE, Outcome.LOCAL_ORIGIN_CONNECT_FAILED,
                           Outcome.LOCAL_ORIGIN_TIMEOUT, Outcome.LOCAL_ORIGIN_RESET))
_SUCCESS = Outcome.SUCCESS
_EXT_FAILURE = Outcome.EXT_ORIGIN_FAILURE
_GATEWAY = Outcome.GATEWAY_FAILURE
_CONNECT_SUCCESS = Outcome.LOCAL_ORIGIN_CONNECT_SUCCESS


def successRateThreshold(rates, stdevFactor):
    """
    (mean, ejection threshold) of a list of success rates (percent): the threshold is mean - factor x stdev, the
    population standard deviation, with ``stdevFactor`` in thousandths (Envoy's success_rate_stdev_factor: 1900
    means 1.9).  E.g. rates 50, 100, 100, 100, 100: mean 90, stdev 20, threshold 90 - 1.9 x 20 = 52.
    """
    mean = sum(rates) / len(rates)
    variance = sum((r - mean) ** 2 for r in rates) / len(rates)
    return mean, mean - stdevFactor / 1000.0 * math.sqrt(variance)


class _Bucket:
    """Requests and successes of one origin: counted this interval, and as of the last interval."""

    __slots__ = ("total", "success", "lastTotal", "lastSuccess")

    def __init__(self):
        self.total = self.success = self.lastTotal = self.lastSuccess = 0

    def swap(self):
        self.lastTotal, self.lastSuccess = self.total, self.success
        self.total = self.success = 0

    def lastRate(self):
        """The success rate (percent) of the last interval, or None when it saw no request."""
        return 100.0 * self.lastSuccess / self.lastTotal if self.lastTotal else None


@implementer(IHostMonitor, IHostMonitorEvents)
class HostOutlierMonitor:
    """What outlier detection knows of one host: consecutive failures, success-rate buckets, ejection state."""

    readsResponseTimes = False  # outcomes only: the router does not time attempts for it

    __slots__ = ("host", "_detector", "_split", "consecutive5xx", "consecutiveGateway", "consecutiveLocal",
                 "external", "local", "ejected", "ejectedAt", "unejectedAt", "numEjections", "backoff", "jitter")

    def __init__(self, host, detector):
        self.host = host
        self._detector = detector
        self._split = detector.config.splitExternalLocalOriginErrors
        self.consecutive5xx = self.consecutiveGateway = self.consecutiveLocal = 0
        self.external = _Bucket()
        self.local = _Bucket()  # used only when origins are split
        self.ejected = False
        self.ejectedAt = None
        self.unejectedAt = None
        self.numEjections = 0  # ejections ever
        self.backoff = 0  # the ejection-time multiplier: +1 per ejection (capped), -1 per healthy interval
        self.jitter = 0.0

    def putResult(self, outcome):
        if outcome is _SUCCESS and not self._split:  # the per-request case, inline: _external's first branch
            bucket = self.external
            bucket.total += 1
            bucket.success += 1
            self.consecutive5xx = self.consecutiveGateway = 0
            return
        if self._split:
            if outcome.isLocalOrigin:
                if outcome is _CONNECT_SUCCESS:
                    self.consecutiveLocal = 0
                else:
                    self._localFailure()
                return
            # the upstream answered: the connection worked
            self.local.total += 1
            self.local.success += 1
            self.consecutiveLocal = 0
        elif outcome is _CONNECT_SUCCESS:
            return
        self._external(outcome)

    def putResponseTime(self, seconds):
        pass  # outlier detection does not look at latency (Envoy's does not either)

    def _external(self, outcome):
        """Envoy's putHttpResponseCode, with the outcome standing for the code's class."""
        bucket = self.external
        bucket.total += 1
        if outcome is _SUCCESS:
            bucket.success += 1
            self.consecutive5xx = self.consecutiveGateway = 0
            return
        config = self._detector.config
        if outcome is _GATEWAY or (not self._split and outcome in _GATEWAY_LIKE):
            self.consecutiveGateway += 1
            if self.consecutiveGateway == config.consecutiveGatewayFailure:
                self._detector.consecutiveFailed(self, CONSECUTIVE_GATEWAY_FAILURE)
        else:
            self.consecutiveGateway = 0
        self.consecutive5xx += 1
        if self.consecutive5xx == config.consecutive5xx:
            self._detector.consecutiveFailed(self, CONSECUTIVE_5XX)

    def _localFailure(self):
        self.local.total += 1
        self.consecutiveLocal += 1
        if self.consecutiveLocal == self._detector.config.consecutiveLocalOriginFailure:
            self._detector.consecutiveFailed(self, CONSECUTIVE_LOCAL_ORIGIN_FAILURE)

    def resetConsecutive(self):
        self.consecutive5xx = self.consecutiveGateway = self.consecutiveLocal = 0


class OutlierStats:
    """The cluster's outlier_detection_* series (Envoy's cluster.<name>.outlier_detection.* names)."""

    def __init__(self, scope):
        self.ejections_active = scope.gauge("outlier_detection_ejections_active", help="Hosts ejected now.")
        self.ejections_enforced_total = scope.counter(
            "outlier_detection_ejections_enforced_total", help="Ejections enforced, of every type.")
        self.ejections_overflow = scope.counter(
            "outlier_detection_ejections_overflow", help="Ejections not done because of max_ejection_percent.")
        self.detected = {}
        self.enforced = {}
        for kind in EJECTION_TYPES:
            self.detected[kind] = scope.counter(
                "outlier_detection_ejections_detected_" + kind,
                help="Hosts found outliers by %s (ejected or not)." % (kind.replace("_", " "),))
            self.enforced[kind] = scope.counter(
                "outlier_detection_ejections_enforced_" + kind,
                help="Ejections enforced for %s." % (kind.replace("_", " "),))


@implementer(IOutlierDetector)
class OutlierDetector:
    """
    The outlier detector of one cluster.

    @param config: a txmesh.config.OutlierDetectionConfig.
    @param clock: an IReactorTime for the interval timer and ejection times.
    @param random: a random.Random for the enforcing_* percentages and the ejection jitter.
    @param scope: the cluster's txmesh.stats.Scope.
    """

    log = Logger()

    def __init__(self, config, clock, random, scope):
        self.config = config
        self._clock = clock
        self._random = random
        self.stats = OutlierStats(scope)
        self._monitors = {}  # IHost -> HostOutlierMonitor
        self._active = 0  # hosts ejected now
        self._enforcing = {
            CONSECUTIVE_5XX: config.enforcingConsecutive5xx,
            CONSECUTIVE_GATEWAY_FAILURE: config.enforcingConsecutiveGatewayFailure,
            CONSECUTIVE_LOCAL_ORIGIN_FAILURE: config.enforcingConsecutiveLocalOriginFailure,
            SUCCESS_RATE: config.enforcingSuccessRate,
            LOCAL_ORIGIN_SUCCESS_RATE: config.enforcingLocalOriginSuccessRate,
            FAILURE_PERCENTAGE: config.enforcingFailurePercentage,
            LOCAL_ORIGIN_FAILURE_PERCENTAGE: config.enforcingFailurePercentageLocalOrigin,
        }
        self._timer = clock.callLater(config.interval, self._intervalPassed)

    # -- the host set ---------------------------------------------------------------------------------------

    def hostsChanged(self, added, removed):
        for host in removed:
            monitor = self._monitors.pop(host, None)
            if monitor is None:
                continue
            host.removeMonitor(monitor)
            if monitor.ejected:
                self._setActive(self._active - 1)
                host.clearHealthFlag(FAILED_OUTLIER_CHECK)
        for host in added:
            if host not in self._monitors:
                monitor = self._monitors[host] = HostOutlierMonitor(host, self)
                host.addMonitor(monitor)

    def stop(self):
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def describeHost(self, host):
        monitor = self._monitors.get(host)
        if monitor is None:
            return None
        until = None
        if monitor.ejected:
            until = monitor.ejectedAt + self._ejectionTime(monitor)
        return {
            "ejected": monitor.ejected,
            "ejected_until": until,  # on the cluster's clock; freed at the first interval tick after it
            "times_ejected": monitor.numEjections,
            "ejection_multiplier": monitor.backoff,
            "success_rate": monitor.external.lastRate(),
            "local_origin_success_rate": monitor.local.lastRate() if self.config.splitExternalLocalOriginErrors
            else None,
        }

    # -- ejection -------------------------------------------------------------------------------------------

    def consecutiveFailed(self, monitor, kind):
        """A monitor reached a consecutive-failure threshold (called inline from putResult)."""
        if self._monitors.get(monitor.host) is not monitor:
            return
        # reset the counter that fired, so a further bout of failures is detected again
        if kind == CONSECUTIVE_5XX:
            monitor.consecutive5xx = 0
        elif kind == CONSECUTIVE_GATEWAY_FAILURE:
            monitor.consecutiveGateway = 0
        else:
            monitor.consecutiveLocal = 0
        if monitor.ejected:
            return
        self.stats.detected[kind].value += 1
        self._eject(monitor, kind)

    def _eject(self, monitor, kind):
        config = self.config
        # Envoy: eject only while the share of ejected hosts, this one included, stays within max_ejection_percent
        # (so a 10% default ejects nobody in a cluster under 10 hosts), unless always_eject_one_host lets the first
        # ejection through.
        share = 100.0 * (self._active + 1) / len(self._monitors)
        if not (share <= config.maxEjectionPercent or (config.alwaysEjectOneHost and self._active == 0)):
            self.stats.ejections_overflow.value += 1
            return
        enforcing = self._enforcing[kind]
        if enforcing < 100 and not self._random.random() * 100 < enforcing:
            return
        self._setActive(self._active + 1)
        self.stats.ejections_enforced_total.value += 1
        self.stats.enforced[kind].value += 1
        monitor.ejected = True
        monitor.ejectedAt = self._clock.seconds()
        monitor.numEjections += 1
        if monitor.backoff * config.baseEjectionTime < config.maxEjectionTime + config.baseEjectionTime:
            monitor.backoff += 1
        monitor.jitter = self._random.uniform(0, config.maxEjectionTimeJitter) if config.maxEjectionTimeJitter \
            else 0.0
        self.log.info("cluster host {host} ejected ({kind}) for {seconds}s", host=monitor.host.address, kind=kind,
                      seconds=self._ejectionTime(monitor))
        monitor.host.setHealthFlag(FAILED_OUTLIER_CHECK)

    def _ejectionTime(self, monitor):
        config = self.config
        return min(config.baseEjectionTime * monitor.backoff, config.maxEjectionTime) + monitor.jitter

    def _setActive(self, n):
        self._active = n
        self.stats.ejections_active.value = n

    # -- the interval ---------------------------------------------------------------------------------------

    def _intervalPassed(self):
        self._timer = None
        now = self._clock.seconds()
        split = self.config.splitExternalLocalOriginErrors
        for monitor in list(self._monitors.values()):
            self._checkUneject(monitor, now)
            monitor.external.swap()
            if split:
                monitor.local.swap()
        self._processSuccessRates(False)
        if split:
            self._processSuccessRates(True)
        self._timer = self._clock.callLater(self.config.interval, self._intervalPassed)

    def _checkUneject(self, monitor, now):
        config = self.config
        if not monitor.ejected:
            # a host that stayed in service for an interval since its last un-ejection: the multiplier decays
            if (monitor.backoff and monitor.unejectedAt is not None
                    and now - monitor.unejectedAt >= config.interval):
                monitor.backoff -= 1
            return
        if now - monitor.ejectedAt >= self._ejectionTime(monitor):
            self._setActive(self._active - 1)
            monitor.ejected = False
            monitor.unejectedAt = now
            # a few failures right after coming back must not eject it again at once
            monitor.resetConsecutive()
            self.log.info("cluster host {host} back in service", host=monitor.host.address)
            monitor.host.clearHealthFlag(FAILED_OUTLIER_CHECK)

    def _processSuccessRates(self, local):
        config = self.config
        if len(self._monitors) < min(config.successRateMinimumHosts, config.failurePercentageMinimumHosts):
            return
        srHosts, fpHosts = [], []
        for monitor in self._monitors.values():
            if monitor.ejected:
                continue
            bucket = monitor.local if local else monitor.external
            volume = bucket.lastTotal
            if not volume:
                continue
            rate = bucket.lastRate()
            if volume >= config.successRateRequestVolume:
                srHosts.append((monitor, rate))
            if volume >= config.failurePercentageRequestVolume:
                fpHosts.append((monitor, rate))
        if srHosts and len(srHosts) >= config.successRateMinimumHosts:
            kind = LOCAL_ORIGIN_SUCCESS_RATE if local else SUCCESS_RATE
            _, threshold = successRateThreshold([rate for _, rate in srHosts], config.successRateStdevFactor)
            for monitor, rate in srHosts:
                if rate < threshold:
                    self.stats.detected[kind].value += 1
                    self._eject(monitor, kind)
        if fpHosts and len(fpHosts) >= config.failurePercentageMinimumHosts:
            kind = LOCAL_ORIGIN_FAILURE_PERCENTAGE if local else FAILURE_PERCENTAGE
            for monitor, rate in fpHosts:
                if 100.0 - rate >= config.failurePercentageThreshold and not monitor.ejected:
                    self.stats.detected[kind].value += 1
                    self._eject(monitor, kind)
