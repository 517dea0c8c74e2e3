"""
A/B of the resilience parts (issue 11) configured but not firing, on bench/inproc.py's in-memory HTTP/1.1 path:
the same build, the same run, configs without and with ``local_rate_limit`` (per source address, a bucket that
never empties), ``error_rate_breaker`` (per route, never opening) and ``circuit_breakers``; plus a no-op
``header_mutation`` as the cost of any one stream filter.  Usage: python bench/limits_ab.py [N] [ROUNDS]
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import inproc  # noqa: E402 (the bench next to this one)

BASE = inproc.CONFIG
RATE_LIMIT = """      - name: local_rate_limit
        config: {token_bucket: {max_tokens: 1000000000, tokens_per_fill: 1000000, fill_interval: 1s},
                 descriptor: source_address}
"""
BREAKER = """      - name: error_rate_breaker
        config: {scope: route}
"""
NOOP = """      - name: header_mutation
        config: {}
"""


def withFilters(filters, circuitBreakers=False):
    text = BASE.replace("    route_config:", "    filters:\n" + filters + "    route_config:")
    if circuitBreakers:
        text = text.replace('"127.0.0.1:1"}]}', '"127.0.0.1:1"}], circuit_breakers: {max_connections: 100}}')
    return text


def withResilience(filters):
    """Every data-path part of issue 11 configured, none firing: a retry policy, outlier detection, breakers and
    the limits (health checks run off the data path, on their own connections: not in this in-memory path)."""
    text = withFilters(filters, circuitBreakers=True)
    text = text.replace("route: {cluster: c}", "route: {cluster: c, retry_policy: {retry_on: 'connect-failure,reset,"
                        "gateway-error', num_retries: 2, per_try_timeout: 1s}}")
    return text.replace("circuit_breakers: {max_connections: 100}}",
                        "circuit_breakers: {max_connections: 100}, outlier_detection: {}}")


CASES = [("base", BASE), ("noop filter", withFilters(NOOP)), ("local_rate_limit", withFilters(RATE_LIMIT)),
         ("error_rate_breaker", withFilters(BREAKER)),
         ("all limits", withFilters(RATE_LIMIT + BREAKER, circuitBreakers=True)),
         ("retry+outlier+cb", withResilience("")),
         ("all of issue 11", withResilience(RATE_LIMIT + BREAKER))]


def perRequest(config, n):
    inproc.CONFIG = config
    inproc.run(1000)
    t = time.perf_counter()
    inproc.run(n)
    return (time.perf_counter() - t) / n * 1e6


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    results = {name: [] for name, _ in CASES}
    for _ in range(rounds):
        for name, config in CASES:
            results[name].append(perRequest(config, n))
    base = min(results["base"])
    for name, _ in CASES:
        best = min(results[name])
        print("%-20s %6.2f µs per request (best of %d)  %+5.1f%%" % (name, best, rounds, (best / base - 1) * 100))
