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

roundRobin = LoadBalancerFactory("round_robin", RoundRobinLoadBalancer)
weightedRoundRobin = LoadBalancerFactory("weighted_round_robin", WeightedRoundRobinLoadBalancer)
random = LoadBalancerFactory("random", RandomLoadBalancer)
leastRequest = LoadBalancerFactory("least_request", LeastRequestLoadBalancer)

for _factory in (roundRobin, weightedRoundRobin, random, leastRequest):
    alsoProvides(_factory, IPlugin)
del _factory
