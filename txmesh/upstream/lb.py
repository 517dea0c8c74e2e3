"""
Load balancers: round_robin, weighted_round_robin, random and least_request, with slow start for new hosts; the
hash policies (ring_hash, maglev) are in txmesh/upstream/lb_hash.py and peak_ewma in txmesh/upstream/lb_ewma.py.

Each policy is an ILoadBalancerFactory (found as a Twisted plugin through ``txmesh/plugins/txmesh_lb.py``) whose
``create(hosts, random, options)`` makes an ILoadBalancer for one host set.  Everything that depends only on the
host set (rings, tables, weighted sequences, cumulative weights) is computed in ``create``, which the cluster
calls on a host-set change, never per request; ``chooseHost`` runs per request and does O(1) (O(log n) for the
ring and the EDF schedule) work when the first pick is healthy and not already attempted.  Requests in flight keep
their host and connection: a new balancer only changes where the next requests go.

Health can change without a host-set change (a health checker flips ``host.healthy``), so health is checked at
pick time: a bad first pick falls back to a bounded number of re-picks, then to a scan of the healthy hosts.  With
``LBContext.ignoreHealth`` (panic mode) every host counts as healthy.
"""

import bisect
import dataclasses
import heapq
import math
import weakref

from zope.interface import implementer

from txmesh.config import LbConfig
from txmesh.interfaces import ILoadBalancer, ILoadBalancerFactory, ILoadBalancerOptions

# The longest precomputed weighted round-robin cycle; larger weight sums are scaled down to about this.
MAX_WRR_CYCLE = 8192

DEFAULT_LB_CONFIG = LbConfig()


@dataclasses.dataclass(frozen=True, slots=True)
class LBContext:
    """
    What the router knows when it asks for a host.

    hashKey: for hash-based policies (ring_hash, maglev): an int (the 64-bit hash the route's hash policies made,
        txmesh.upstream.hashing.requestHash) or bytes/str (hashed here); None picks at random.
    attempted: hosts already tried by earlier attempts of this request (IHost objects or their addresses);
        avoided while another healthy host exists.
    ignoreHealth: pick regardless of ``host.healthy`` (panic mode: too few hosts are healthy to trust the flags).
    """

    hashKey: object = None
    attempted: frozenset = frozenset()
    ignoreHealth: bool = False


@implementer(ILoadBalancerOptions)
@dataclasses.dataclass(frozen=True)
class LoadBalancerOptions:
    """
    What a cluster gives every balancer it makes (see ILoadBalancerOptions): one object per cluster, passed to
    each ``create`` so that state kept in ``hostState`` (latency estimates) survives host-set changes.
    """

    clock: object = None
    config: object = None
    stats: object = None
    hostState: object = dataclasses.field(default_factory=weakref.WeakKeyDictionary, compare=False)


NO_OPTIONS = LoadBalancerOptions()


def wasAttempted(host, attempted):
    """Whether ``host`` is in an LBContext's ``attempted`` (as the IHost or its address)."""
    return host in attempted or host.address in attempted


class PickingLoadBalancer:
    """
    Shared pick-then-fallback logic for policies that draw a host (the base of the built-in ones and of
    lb_ewma's); subclasses implement ``_pick()`` (may return None for no hosts).
    """

    def __init__(self, hosts, random, options=None):
        self.hosts = tuple(hosts)
        self._random = random

    def chooseHost(self, context=None):
        host = self._pick()
        if context is None:
            if host is not None and host.healthy:
                return host
            return self._chooseSlow(frozenset(), False)
        attempted = context.attempted
        if host is not None and (host.healthy or context.ignoreHealth) and not (attempted
                                                                                and wasAttempted(host, attempted)):
            return host
        return self._chooseSlow(attempted, context.ignoreHealth)

    def _chooseSlow(self, attempted, ignoreHealth):
        hosts = self.hosts
        if not hosts:
            return None
        # A few more picks of the policy keep its distribution when a minority of hosts is bad.
        for _ in range(len(hosts)):
            host = self._pick()
            if (ignoreHealth or host.healthy) and not (attempted and wasAttempted(host, attempted)):
                return host
        healthy = list(hosts) if ignoreHealth else [h for h in hosts if h.healthy]
        if not healthy:
            return None
        fresh = [h for h in healthy if not wasAttempted(h, attempted)] if attempted else healthy
        return self._random.choice(fresh or healthy)


class SlowStart:
    """
    Envoy's slow start: a host that joined a running cluster (``host.addedAt`` set) and is healthy gets the
    weight ``weight * max(timeFactor ** (1 / aggression), minWeightPercent / 100)`` where ``timeFactor`` is its
    age over the window, until the window has passed.  While some host ramps, picks go through an EDF schedule
    over the ramped weights; afterwards the policy's own cheap pick comes back (one flag test per request).
    """

    __slots__ = ("clock", "window", "exponent", "floor", "until")

    def __init__(self, config, clock, hosts):
        self.clock = clock
        self.window = config.window
        self.exponent = 1.0 / config.aggression
        self.floor = config.minWeightPercent / 100.0
        added = [h.addedAt for h in hosts if h.addedAt is not None]
        self.until = max(added) + self.window if added else 0.0

    def ramping(self):
        return self.clock.seconds() < self.until

    def factor(self, host, now):
        added = host.addedAt
        if added is None or not host.healthy:
            return 1.0
        age = now - added
        if age >= self.window:
            return 1.0
        f = max(age, 0.001) / self.window
        if self.exponent != 1.0:
            f **= self.exponent
        return max(f, self.floor)


def _slowStart(hosts, options):
    """A SlowStart for the balancer, or None when not configured or no host of this set ramps."""
    config = options.config
    ss = config.slowStart if config is not None else None
    if ss is None or options.clock is None:
        return None
    ramp = SlowStart(ss, options.clock, hosts)
    return ramp if ramp.ramping() else None


class EdfSchedule:
    """
    Earliest-deadline-first weighted picks (Envoy's EdfScheduler): each host is due at ``1 / weight`` after its
    last pick, and its weight is asked again (``weightOf(host)``) each time it is picked, so dynamic weights
    (slow start, active requests) apply as they change.  O(log n) per pick.
    """

    __slots__ = ("_hosts", "_weightOf", "_heap", "_seq")

    def __init__(self, hosts, weightOf, random):
        self._hosts = hosts
        self._weightOf = weightOf
        # random first deadlines within each host's period: proxies started together do not pick in lockstep
        self._heap = [(random.random() / _positive(weightOf(h)), i, i) for i, h in enumerate(hosts)]
        heapq.heapify(self._heap)
        self._seq = len(hosts)

    def pick(self):
        heap = self._heap
        if not heap:
            return None
        deadline, _, i = heap[0]
        host = self._hosts[i]
        self._seq += 1
        heapq.heapreplace(heap, (deadline + 1.0 / _positive(self._weightOf(host)), self._seq, i))
        return host


def _positive(weight):
    return weight if weight > 1e-9 else 1e-9


class _RampingLoadBalancer(PickingLoadBalancer):
    """
    A policy with slow start: ``_steady()`` is its own pick; while a new host ramps (see SlowStart), picks come
    from an EDF schedule over ``_rampWeight(host, factor)``.
    """

    def __init__(self, hosts, random, options=None):
        super().__init__(hosts, random, options)
        self._ramp = _slowStart(self.hosts, options or NO_OPTIONS)
        if self._ramp is None:
            self._pick = self._steady
        else:
            ramp = self._ramp
            self._edf = EdfSchedule(self.hosts, lambda h: self._rampWeight(h, ramp.factor(h, ramp.clock.seconds())),
                                    random)

    def _pick(self):
        # only while ramping (otherwise __init__ bound _pick to _steady)
        if self._ramp.ramping():
            return self._edf.pick()
        self._pick = self._steady
        return self._steady()

    def _rampWeight(self, host, factor):
        return host.weight * factor


@implementer(ILoadBalancer)
class RoundRobinLoadBalancer(_RampingLoadBalancer):
    """Each host in turn, ignoring weights (a ramping new host is weighted by its slow-start factor alone)."""

    def __init__(self, hosts, random, options=None):
        super().__init__(hosts, random, options)
        # Start at a random offset so that many proxies do not all hit the first host first.
        self._next = random.randrange(len(self.hosts)) if self.hosts else 0

    def _steady(self):
        hosts = self.hosts
        if not hosts:
            return None
        i = self._next
        if i >= len(hosts):
            i = 0
        self._next = i + 1
        return hosts[i]

    def _rampWeight(self, host, factor):
        return factor


def smoothWeightedSequence(weights):
    """
    One cycle of nginx's smooth weighted round robin over ``weights`` (a list of ints >= 1), as a list of indexes.

    Each pick adds every weight to its host's current value, takes the largest and subtracts the total from it: a
    cycle of ``sum(weights)`` picks contains index i exactly weights[i] times, spread out rather than in runs.
    """
    total = sum(weights)
    current = [0] * len(weights)
    out = []
    for _ in range(total):
        best = 0
        for i, w in enumerate(weights):
            current[i] += w
            if current[i] > current[best]:
                best = i
        current[best] -= total
        out.append(best)
    return out


@implementer(ILoadBalancer)
class WeightedRoundRobinLoadBalancer(_RampingLoadBalancer):
    """
    nginx's smooth weighted round robin.  The cycle is precomputed per host set (weights divided by their gcd and,
    past MAX_WRR_CYCLE, scaled down keeping every host at least 1), so a pick is an index increment.
    """

    def __init__(self, hosts, random, options=None):
        super().__init__(hosts, random, options)
        weights = [h.weight for h in self.hosts]
        if weights:
            g = math.gcd(*weights)
            weights = [w // g for w in weights]
            total = sum(weights)
            if total > MAX_WRR_CYCLE:
                weights = [max(1, round(w * MAX_WRR_CYCLE / total)) for w in weights]
        self._sequence = [self.hosts[i] for i in smoothWeightedSequence(weights)]
        self._next = random.randrange(len(self._sequence)) if self._sequence else 0

    def _steady(self):
        seq = self._sequence
        if not seq:
            return None
        i = self._next
        if i >= len(seq):
            i = 0
        self._next = i + 1
        return seq[i]


@implementer(ILoadBalancer)
class RandomLoadBalancer(PickingLoadBalancer):
    """A random host, with probability proportional to its weight."""

    def __init__(self, hosts, random, options=None):
        super().__init__(hosts, random, options)
        self._pick = _weightedSampler(self.hosts, random)


def _weightedSampler(hosts, random):
    """A no-argument callable returning a host drawn with probability weight/total (None if no hosts)."""
    if not hosts:
        return lambda: None
    rand = random.random
    n = len(hosts)
    if len({h.weight for h in hosts}) == 1:
        return lambda: hosts[int(rand() * n)]
    cumulative = []
    total = 0
    for h in hosts:
        total += h.weight
        cumulative.append(total)
    bisectRight = bisect.bisect_right

    def pick():
        return hosts[bisectRight(cumulative, rand() * total)]

    return pick


@implementer(ILoadBalancer)
class LeastRequestLoadBalancer(_RampingLoadBalancer):
    """
    Envoy's least request.  All weights equal: the host with the fewest active requests among ``choice_count``
    (default 2) drawn at random with replacement; on a tie the first draw wins.  Weights differ (or a new host
    ramps in slow start): an EDF schedule over ``weight / (active + 1) ** active_request_bias`` (bias 1.0 by
    default; 0 makes it weighted round robin), the host's weight re-read each time it is picked.
    """

    def __init__(self, hosts, random, options=None):
        config = (options or NO_OPTIONS).config or DEFAULT_LB_CONFIG
        self._choices = config.choiceCount
        self._bias = config.activeRequestBias
        super().__init__(hosts, random, options)
        self._sample = _weightedSampler(self.hosts, random)
        if len({h.weight for h in self.hosts}) > 1:
            self._steady = EdfSchedule(self.hosts, lambda h: self._rampWeight(h, 1.0), random).pick
            if self._ramp is None:
                self._pick = self._steady

    def _steady(self):
        sample = self._sample
        best = sample()
        if best is None:
            return None
        for _ in range(self._choices - 1):
            other = sample()
            if other.activeRequests < best.activeRequests and other.healthy:
                best = other
            elif not best.healthy:
                best = other
        return best

    def _rampWeight(self, host, factor):
        bias = self._bias
        if bias == 1.0:
            return host.weight * factor / (host.activeRequests + 1)
        if bias == 0.0:
            return host.weight * factor
        return host.weight * factor / (host.activeRequests + 1) ** bias


@implementer(ILoadBalancerFactory)
class LoadBalancerFactory:
    """
    A named policy: ``create(hosts, random, options)`` builds the policy's balancer class over the host set
    (``options``: an ILoadBalancerOptions, or None for the defaults without a clock).
    """

    def __init__(self, name, balancerClass):
        self.name = name
        self._balancerClass = balancerClass

    def create(self, hosts, random, options=None):
        return self._balancerClass(hosts, random, options)

    def __repr__(self):
        return "<LoadBalancerFactory %s>" % (self.name,)


def findLoadBalancerFactory(name, factories):
    """
    The ILoadBalancerFactory named ``name`` among ``factories`` (the caller finds them, e.g.
    ``getPlugins(ILoadBalancerFactory, txmesh.plugins)``: this layer does not import the plugin package), or None.
    """
    for factory in factories:
        if factory.name == name:
            return factory
    return None
