"""
Token buckets for the rate-limit filters (``local_rate_limit``, ``connection_rate_limit``), with Envoy's
``token_bucket`` config: ``max_tokens`` (the burst), ``tokens_per_fill`` (default 1) added every ``fill_interval``.

Buckets refill lazily: a take computes how many whole intervals passed since the last fill and adds their tokens,
so no timer runs per bucket and an idle bucket costs nothing.  The fills land on the same interval boundaries
Envoy's timer would (counted from the bucket's creation), so a bucket never gives more than ``max_tokens`` at once
nor more than ``tokens_per_fill`` per interval on average.
"""

from dataclasses import dataclass

from zope.interface import implementer

from txmesh.config_reader import parseDuration
from txmesh.interfaces import ITokenBucket

MIN_FILL_INTERVAL = 0.05  # Envoy refuses fill intervals under 50 ms


@dataclass(frozen=True, slots=True)
class TokenBucketConfig:
    maxTokens: int
    tokensPerFill: int = 1
    fillInterval: float = 1.0


def buildTokenBucketConfig(raw, context, key="token_bucket"):
    """
    The TokenBucketConfig of ``raw[key]`` (required), for a filter's buildConfig.

    @raise txmesh.errors.ConfigError: made by ``context.error``, naming the bad key.
    """
    tb = raw.get(key)
    if not isinstance(tb, dict):
        raise context.error("must be a mapping with max_tokens and fill_interval (required)", key)
    for k in tb:
        if k not in ("max_tokens", "tokens_per_fill", "fill_interval"):
            raise context.error("unknown key (expected one of: max_tokens, tokens_per_fill, fill_interval)",
                                "%s.%s" % (key, k))
    maxTokens = tb.get("max_tokens")
    if type(maxTokens) is not int or maxTokens < 1:
        raise context.error("must be an integer >= 1 (required)", key + ".max_tokens")
    perFill = tb.get("tokens_per_fill", 1)
    if type(perFill) is not int or perFill < 1:
        raise context.error("must be an integer >= 1", key + ".tokens_per_fill")
    if tb.get("fill_interval") is None:
        raise context.error("missing required key 'fill_interval'", key)
    try:
        interval = parseDuration(tb["fill_interval"])
    except ValueError as e:
        raise context.error(str(e), key + ".fill_interval") from None
    if interval < MIN_FILL_INTERVAL:
        raise context.error("must be at least 50ms (as Envoy's)", key + ".fill_interval")
    return TokenBucketConfig(maxTokens, perFill, interval)


@implementer(ITokenBucket)
class TokenBucket:
    """
    One bucket, full at creation.

    @param config: a TokenBucketConfig.
    @param now: the clock's seconds() at creation (fills count from it).

    @ivar tokens: the tokens left.
    @ivar lastFill: the interval boundary the last fill landed on (seconds): no fill is due before ``lastFill +
        fillInterval``, so a take with ``tokens > 0`` and ``now - lastFill < fillInterval`` is ``tokens -= 1``
        (what L{consume} does first; local_rate_limit inlines it, once per request).
    """

    __slots__ = ("maxTokens", "tokensPerFill", "fillInterval", "tokens", "lastFill")

    def __init__(self, config, now):
        self.maxTokens = config.maxTokens
        self.tokensPerFill = config.tokensPerFill
        self.fillInterval = config.fillInterval
        self.tokens = config.maxTokens
        self.lastFill = now

    def _refill(self, now):
        if self.tokens >= self.maxTokens:
            # full: the fills that passed add nothing; keep the phase of the interval boundaries
            if now - self.lastFill >= self.fillInterval:
                self.lastFill += (now - self.lastFill) // self.fillInterval * self.fillInterval
            return
        fills = int((now - self.lastFill) // self.fillInterval)
        if fills > 0:
            self.tokens = min(self.maxTokens, self.tokens + fills * self.tokensPerFill)
            self.lastFill += fills * self.fillInterval

    def consume(self, now):
        if self.tokens > 0 and now - self.lastFill < self.fillInterval:
            self.tokens -= 1  # the per-request path: no fill is due
            return True
        self._refill(now)
        if self.tokens > 0:
            self.tokens -= 1
            return True
        return False

    def remaining(self, now):
        self._refill(now)
        return self.tokens

    def secondsToNextFill(self, now):
        self._refill(now)
        return max(0.0, self.lastFill + self.fillInterval - now)

