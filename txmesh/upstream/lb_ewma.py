"""
peak_ewma: Linkerd's latency-aware balancing (tower's PeakEwma, after Finagle's).

Each host has a response-time estimate fed by the router through the host's monitor (``host.addMonitor``; the
router reports the time from sending an attempt to its response head).  The estimate is *peak-sensitive*: a
response slower than the estimate replaces it at once; a faster one pulls it down by an exponentially weighted
average whose weight decays with the time since the last update (``decay_time``, 10 s).  Between responses the
estimate decays towards zero, so a host that was slow is tried again after a while rather than starved for ever.
A host without samples starts at ``default_rtt`` (30 ms).

A pick draws two distinct hosts at random (``choice_count``) and takes the one with the lower cost
``estimate * (active requests + 1) / weight`` (Linkerd ignores weights; dividing by them is txmesh's).  Estimates
live in the cluster's ``hostState`` and survive host-set changes.
"""

import math

from zope.interface import implementer

from txmesh.interfaces import IHostMonitor, ILoadBalancer
from txmesh.upstream.lb import DEFAULT_LB_CONFIG, NO_OPTIONS, PickingLoadBalancer


@implementer(IHostMonitor)
class PeakEwma:
    """
    One host's peak-sensitive EWMA of response times, on an injected clock.

    @param clock: an IReactorTime.
    @param decayTime: seconds; an older estimate weighs exp(-elapsed / decayTime).
    @param defaultRtt: the estimate before the first sample (seconds).
    """

    __slots__ = ("_clock", "_decay", "_estimate", "_stamp")

    def __init__(self, clock, decayTime, defaultRtt):
        self._clock = clock
        self._decay = decayTime
        self._estimate = defaultRtt
        self._stamp = clock.seconds()

    def _update(self, rtt):
        now = self._clock.seconds()
        if rtt > self._estimate:
            self._estimate = rtt
        elif now > self._stamp:
            w = math.exp((self._stamp - now) / self._decay)
            self._estimate = self._estimate * w + rtt * (1.0 - w)
        if now > self._stamp:
            self._stamp = now
        return self._estimate

    def estimate(self):
        """The estimate now (decayed towards zero since the last update), in seconds."""
        return self._update(0.0)

    def putResponseTime(self, seconds):
        self._update(seconds)

    def putResult(self, outcome):
        pass


@implementer(ILoadBalancer)
class PeakEwmaLoadBalancer(PickingLoadBalancer):
    """Power of ``choice_count`` choices on ``estimate * (active + 1) / weight`` (see the module docstring)."""

    def __init__(self, hosts, random, options=None):
        super().__init__(hosts, random, options)
        options = options or NO_OPTIONS
        if options.clock is None:
            raise ValueError("peak_ewma needs the cluster's clock (LoadBalancerOptions.clock)")
        config = options.config or DEFAULT_LB_CONFIG
        self._choices = min(config.choiceCount, len(self.hosts))
        state = options.hostState
        estimators = []
        for host in self.hosts:
            ewma = state.get(host)
            if type(ewma) is not PeakEwma:
                ewma = state[host] = PeakEwma(options.clock, config.decayTime, config.defaultRtt)
                host.addMonitor(ewma)
            estimators.append(ewma)
        self._estimators = estimators

    def _cost(self, i):
        host = self.hosts[i]
        return self._estimators[i].estimate() * (host.activeRequests + 1) / host.weight

    def _pick(self):
        hosts = self.hosts
        n = len(hosts)
        if n < 2:
            return hosts[0] if n else None
        randrange = self._random.randrange
        # choice_count distinct hosts (tower's p2c draws two distinct indexes)
        best = randrange(n)
        bestHealthy = hosts[best].healthy
        bestCost = self._cost(best)
        drawn = {best}
        for _ in range(self._choices - 1):
            i = randrange(n)
            while i in drawn:
                i = randrange(n)
            drawn.add(i)
            healthy = hosts[i].healthy
            cost = self._cost(i)
            if (healthy and not bestHealthy) or (healthy == bestHealthy and cost < bestCost):
                best, bestCost, bestHealthy = i, cost, healthy
        return hosts[best]
