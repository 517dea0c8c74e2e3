"""
Load balancers: round_robin, weighted_round_robin, random and least_request.

Each policy is an ILoadBalancerFactory (found as a Twisted plugin through ``txmesh/plugins/txmesh_lb.py``) whose
``create(hosts, random)`` makes an ILoadBalancer for one host set.  Everything that depends only on the host set
(rings, weighted sequences, cumulative weights) is computed in ``create``; ``chooseHost`` runs per request and
does O(1) work when the first pick is healthy and not already attempted.

Health can change without a host-set change (a health checker flips ``host.healthy``), so health is checked at
pick time: a bad first pick falls back to a bounded number of re-picks, then to a scan of the healthy hosts.
"""

import bisect
import dataclasses
import math

from zope.interface import implementer

from txmesh.interfaces import ILoadBalancer, ILoadBalancerFactory

# The longest precomputed weighted round-robin cycle; larger weight sums are scaled down to about this.
MAX_WRR_CYCLE = 8192


@dataclasses.dataclass(frozen=True, slots=True)
class LBContext:
    """
    What the router knows when it asks for a host.

    hashKey: bytes or str for hash-based policies (unused by the built-in policies).
    attempted: hosts already tried by earlier attempts of this request (IHost objects or their addresses);
        avoided while another healthy host exists.
    ignoreHealth: the cluster's priority level is in panic (txmesh.upstream.cluster): pick among all hosts,
        healthy or not; every balancer honours it.
    """

    hashKey: object = None
    attempted: frozenset = frozenset()
    ignoreHealth: bool = False


def _tried(host, attempted):
    return host in attempted or host.address in attempted


class _LoadBalancer:
    """Shared pick-then-fallback logic; subclasses implement ``_pick()`` (may return None for no hosts)."""

    def __init__(self, hosts, random):
        self.hosts = tuple(hosts)
        self._random = random

    def chooseHost(self, context=None):
        host = self._pick()
        if host is not None and host.healthy and (context is None or not context.attempted
                                                  or not _tried(host, context.attempted)):
            return host
        if context is not None and context.ignoreHealth:
            return _chooseIgnoringHealth(self.hosts, host, context.attempted, self._random)
        return self._chooseSlow(context.attempted if context is not None else frozenset())

    def _chooseSlow(self, attempted):
        hosts = self.hosts
        # A few more picks of the policy keep its distribution when a minority of hosts is bad.
        for _ in range(len(hosts)):
            host = self._pick()
            if host.healthy and not (attempted and _tried(host, attempted)):
                return host
        healthy = [h for h in hosts if h.healthy]
        if not healthy:
            return None
        fresh = [h for h in healthy if not _tried(h, attempted)] if attempted else healthy
        return self._random.choice(fresh or healthy)


def _chooseIgnoringHealth(hosts, host, attempted, random):
    """Panic mode: the policy's pick ``host`` whatever its health, unless already attempted and another exists."""
    if host is None or not (attempted and _tried(host, attempted)):
        return host
    fresh = [h for h in hosts if not _tried(h, attempted)]
    return random.choice(fresh) if fresh else host


@implementer(ILoadBalancer)
class RoundRobinLoadBalancer(_LoadBalancer):
    """Each host in turn, ignoring weights."""

    def __init__(self, hosts, random):
        super().__init__(hosts, random)
        # Start at a random offset so that many proxies do not all hit the first host first.
        self._next = random.randrange(len(self.hosts)) if self.hosts else 0

    def _pick(self):
        hosts = self.hosts
        if not hosts:
            return None
        i = self._next
        if i >= len(hosts):
            i = 0
        self._next = i + 1
        return hosts[i]


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
class WeightedRoundRobinLoadBalancer(_LoadBalancer):
    """
    nginx's smooth weighted round robin.  The cycle is precomputed per host set (weights divided by their gcd and,
    past MAX_WRR_CYCLE, scaled down keeping every host at least 1), so a pick is an index increment.
    """

    def __init__(self, hosts, random):
        super().__init__(hosts, random)
        weights = [h.weight for h in self.hosts]
        if weights:
            g = math.gcd(*weights)
            weights = [w // g for w in weights]
            total = sum(weights)
            if total > MAX_WRR_CYCLE:
                weights = [max(1, round(w * MAX_WRR_CYCLE / total)) for w in weights]
        self._sequence = [self.hosts[i] for i in smoothWeightedSequence(weights)]
        self._next = random.randrange(len(self._sequence)) if self._sequence else 0

    def _pick(self):
        seq = self._sequence
        if not seq:
            return None
        i = self._next
        if i >= len(seq):
            i = 0
        self._next = i + 1
        return seq[i]


@implementer(ILoadBalancer)
class RandomLoadBalancer(_LoadBalancer):
    """A random host, with probability proportional to its weight."""

    def __init__(self, hosts, random):
        super().__init__(hosts, random)
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
class LeastRequestLoadBalancer(_LoadBalancer):
    """
    Power of two choices: draw two hosts (by weight) and take the one with fewer active requests per unit of
    weight; on a tie the first draw wins, so an idle cluster gets traffic in proportion to the weights.
    """

    def __init__(self, hosts, random):
        super().__init__(hosts, random)
        self._sample = _weightedSampler(self.hosts, random)
        self._weighted = len({h.weight for h in self.hosts}) > 1

    def _pick(self):
        a = self._sample()
        if a is None:
            return None
        b = self._sample()
        if not b.healthy:
            return a
        if not a.healthy:
            return b
        if self._weighted:
            # a/wa > b/wb without division.
            return b if b.activeRequests * a.weight < a.activeRequests * b.weight else a
        return b if b.activeRequests < a.activeRequests else a


@implementer(ILoadBalancerFactory)
class LoadBalancerFactory:
    """A named policy: ``create(hosts, random)`` builds the policy's balancer class over the host set."""

    def __init__(self, name, balancerClass):
        self.name = name
        self._balancerClass = balancerClass

    def create(self, hosts, random):
        return self._balancerClass(hosts, random)

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
