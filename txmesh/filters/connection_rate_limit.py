"""
The ``connection_rate_limit`` network filter (Envoy's envoy.filters.network.local_ratelimit): new connections per
listener through a token bucket; a connection that finds the bucket empty is closed at once, with nothing read or
written, and counted.

config: ``token_bucket`` (required: ``max_tokens``, ``tokens_per_fill`` default 1, ``fill_interval`` >= 50ms; e.g.
100 connections per second with bursts of 20: ``{max_tokens: 20, tokens_per_fill: 100, fill_interval: 1s}``).
Stats, labelled ``listener``: ``connection_rate_limit_ok`` (connections let through) and
``connection_rate_limit_rate_limited`` (connections closed; Envoy's ``local_rate_limit.rate_limited``).  The bucket
is the filter config's own, refilled lazily from the clock; a reload starts a new, full one.
"""

from dataclasses import dataclass, field

from twisted.plugin import IPlugin
from zope.interface import implementer

from txmesh.config_reader import checkFilterKeys
from txmesh.filters.token_bucket import TokenBucket, buildTokenBucketConfig
from txmesh.filters.network import AdmissionFilter
from txmesh.interfaces import IFilterFactory

_KEYS = ("token_bucket",)


class _Bucket:
    """The listener's bucket, made full on its first connection (when the clock is known)."""

    __slots__ = ("config", "bucket")

    def __init__(self, config):
        self.config = config
        self.bucket = None

    def consume(self, now):
        if self.bucket is None:
            self.bucket = TokenBucket(self.config, now)
        return self.bucket.consume(now)


@dataclass(frozen=True, slots=True)
class ConnectionRateLimitConfig:
    bucket: _Bucket = field(compare=False)


class ConnectionRateLimitFilter(AdmissionFilter):
    """One connection's instance: takes a token, or closes the connection."""

    __slots__ = ()

    admitted = ("connection_rate_limit_ok", "Connections a connection_rate_limit filter let through")
    refused = ("connection_rate_limit_rate_limited", "Connections closed by a connection_rate_limit filter")

    def admit(self, connection):
        return self.config.bucket.consume(self.runtime.clock.seconds())


@implementer(IFilterFactory, IPlugin)
class ConnectionRateLimitFactory:
    """The ``connection_rate_limit`` network filter kind; see the module docstring."""

    name = "connection_rate_limit"
    kind = "network"
    protocols = frozenset({"http", "grpc", "dubbo"})
    terminal = False

    def buildConfig(self, raw, context):
        """@raise txmesh.errors.ConfigError: for an unknown key or a bad ``token_bucket``."""
        checkFilterKeys(raw, _KEYS, context)
        return ConnectionRateLimitConfig(_Bucket(buildTokenBucketConfig(raw, context)))

    def createFilters(self, config, callbacks, runtime):
        callbacks.addReadFilter(ConnectionRateLimitFilter(config, runtime))
