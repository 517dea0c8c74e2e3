"""The built-in load-balancing policies, as Twisted plugins providing ILoadBalancerFactory."""

from twisted.plugin import IPlugin
from zope.interface import alsoProvides

from txmesh.upstream.lb import (
    LeastRequestLoadBalancer,
    LoadBalancerFactory,
    RandomLoadBalancer,
    RoundRobinLoadBalancer,
    WeightedRoundRobinLoadBalancer,
)
from txmesh.upstream.lb_ewma import PeakEwmaLoadBalancer
from txmesh.upstream.lb_hash import MaglevLoadBalancer, RingHashLoadBalancer

roundRobin = LoadBalancerFactory("round_robin", RoundRobinLoadBalancer)
weightedRoundRobin = LoadBalancerFactory("weighted_round_robin", WeightedRoundRobinLoadBalancer)
random = LoadBalancerFactory("random", RandomLoadBalancer)
leastRequest = LoadBalancerFactory("least_request", LeastRequestLoadBalancer)
ringHash = LoadBalancerFactory("ring_hash", RingHashLoadBalancer)
maglev = LoadBalancerFactory("maglev", MaglevLoadBalancer)
peakEwma = LoadBalancerFactory("peak_ewma", PeakEwmaLoadBalancer)

for _factory in (roundRobin, weightedRoundRobin, random, leastRequest, ringHash, maglev, peakEwma):
    alsoProvides(_factory, IPlugin)
del _factory
