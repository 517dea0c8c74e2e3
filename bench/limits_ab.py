"""
A/B of the resilience parts (issue 11) configured but not firing, on bench/inproc.py's in-memory HTTP/1.1 path:
the same build, the same run, configs without and with ``local_rate_limit`` (per source address, a bucket that
never empties), ``error_rate_breaker`` (per route, never opening) and ``circuit_breakers``, a retry policy and
outlier detection; plus ``header_mutation`` with an empty config, which installs no filter per stream (the cost
of a filter configured that has nothing to do: none).

    python bench/limits_ab.py [N] [ROUNDS]                      # the cases, alternating, ROUNDS rounds
    python bench/limits_ab.py [N] [ROUNDS] --base-tree DIR      # and the same cases on the txmesh in DIR
    python bench/limits_ab.py --instructions [--base-tree DIR]  # instructions per request, under valgrind

Each round runs every case once (N requests after 1,000 untimed), in turn, so drift on a busy machine spreads
over all of them; the report gives each case's median µs per request, the spread (min-max) and the median's
difference to the base case's.  With ``--base-tree`` every round runs this tree and DIR (a checkout of the commit
to compare with) alternately, each in a fresh process, and the report puts the two side by side.

Time on a machine shared with other work is noisy even as CPU time (caches and cores are shared): on the 2-core
machine these figures were taken on, two rounds of one case differ by up to 20 %.  ``--instructions`` counts
instead: one process per tree under ``valgrind --tool=callgrind`` (``PYTHONHASHSEED=0``) runs every case for 100
and for 600 requests, callgrind counting only those runs (they run inside ``itertools.starmap``, whose C
``starmap_next`` toggles the count), and (600's count - 100's) / 500 is the machine instructions per request:
deterministic, so one run says it; a few minutes for two trees side by side.  Instructions are not time (cache
misses and branches are not in them) but track the Python work done per request closely.
"""

import gc
import itertools
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
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
    text = BASE.replace("    route_config:", "    filters:\n" + filters + "    route_config:") if filters else BASE
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
    t = time.process_time()  # CPU time: a busy machine delays the run, but does not bill it here
    inproc.run(n)
    return (time.process_time() - t) / n * 1e6


def oneRound(n):
    """{case: µs per request}, every case once."""
    return {name: perRequest(config, n) for name, config in CASES}


def inTree(tree, n):
    """One round in a fresh process on the txmesh of ``tree`` (this bench's code, that tree's package)."""
    env = dict(os.environ, PYTHONPATH=tree)
    out = subprocess.run([sys.executable, os.path.abspath(__file__), str(n), "--one-round"], cwd=tree, env=env,
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out.splitlines()[-1])


def instructionsChild(n1, n2):
    """
    Under callgrind (see L{instructionsPerRequest}): every case warmed up, then run for ``n1`` and for ``n2``
    requests, each run inside itertools.starmap's C ``starmap_next``, the one function callgrind counts and dumps
    after.
    """
    for _, config in CASES:
        inproc.CONFIG = config
        inproc.run(300)
        gc.collect()  # each counted run starts with empty generations: collections fall alike in every run
        next(itertools.starmap(inproc.run, ((n1,),)))
        gc.collect()
        next(itertools.starmap(inproc.run, ((n2,),)))


def instructionsIn(tree, n1=100, n2=600):
    """{case: machine instructions per request} on the txmesh of ``tree``: one process under valgrind's callgrind
    (``PYTHONHASHSEED=0``), counting only the timed runs; (count of n2 requests - count of n1) / (n2 - n1)."""
    env = dict(os.environ, PYTHONPATH=tree, PYTHONHASHSEED="0")
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["valgrind", "--tool=callgrind", "--collect-atstart=no", "--toggle-collect=starmap_next",
                        "--dump-after=starmap_next", "--callgrind-out-file=" + os.path.join(tmp, "cg.out"),
                        sys.executable, os.path.abspath(__file__), "--callgrind-child", str(n1), str(n2)],
                       cwd=tree, env=env, check=True, capture_output=True)
        dumps = sorted((int(f.rpartition(".")[2]), f) for f in os.listdir(tmp) if f.startswith("cg.out."))
        counts = []
        for _, f in dumps:
            with open(os.path.join(tmp, f)) as dump:
                counts.append(int(re.search(r"^summary: (\d+)", dump.read(), re.M).group(1)))
    if len(counts) != 2 * len(CASES):
        raise RuntimeError("expected %d callgrind dumps, got %d" % (2 * len(CASES), len(counts)))
    return {name: (counts[2 * i + 1] - counts[2 * i]) / float(n2 - n1) for i, (name, _) in enumerate(CASES)}


def instructionsPerRequest(trees):
    """{(tree, case): instructions per request}, the trees measured side by side."""
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda tree: instructionsIn(tree[1]), trees))
    return {(tree, name): value for (tree, _), got in zip(trees, results) for name, value in got.items()}


def reportInstructions(trees):
    got = instructionsPerRequest(trees)
    print("machine instructions per request (callgrind, runs of 600 and 100 requests)")
    for tree, path in trees:
        base = got[tree, "base"]
        print("%s tree (%s):" % (tree, path))
        for name, _ in CASES:
            print("  %-20s %8.0f  %+5.1f%% vs base" % (name, got[tree, name], (got[tree, name] / base - 1) * 100))
    if len(trees) > 1:
        print("this tree vs base tree, per case:")
        for name, _ in CASES:
            a, b = got["this", name], got["base", name]
            print("  %-20s %8.0f vs %8.0f  %+5.1f%%" % (name, a, b, (a / b - 1) * 100))


def summary(values):
    return statistics.median(values), min(values), max(values)


def main(argv):
    if "--one-round" in argv:
        print(json.dumps(oneRound(int(argv[0]))))
        return
    if argv[:1] == ["--callgrind-child"]:
        instructionsChild(int(argv[1]), int(argv[2]))
        return
    baseTree = None
    if "--base-tree" in argv:
        i = argv.index("--base-tree")
        baseTree = os.path.abspath(argv[i + 1])
        del argv[i:i + 2]
    thisTree = os.path.dirname(HERE)
    trees = [("this", thisTree)] + ([("base", baseTree)] if baseTree else [])
    if "--instructions" in argv:
        reportInstructions(trees)
        return
    n = int(argv[0]) if argv else 20000
    rounds = int(argv[1]) if len(argv) > 1 else 5
    results = {tree: {name: [] for name, _ in CASES} for tree, _ in trees}
    for _ in range(rounds):
        for tree, path in trees:
            got = inTree(path, n) if baseTree else oneRound(n)
            for name, value in got.items():
                results[tree][name].append(value)
    print("µs per request, median [min-max] of %d rounds, %d requests each" % (rounds, n))
    for tree, path in trees:
        base = statistics.median(results[tree]["base"])
        print("%s tree (%s):" % (tree, path))
        for name, _ in CASES:
            med, low, high = summary(results[tree][name])
            print("  %-20s %6.2f [%6.2f-%6.2f]  %+5.1f%% vs base" % (name, med, low, high, (med / base - 1) * 100))
    if baseTree:
        print("this tree vs base tree, per case (medians):")
        for name, _ in CASES:
            a, b = statistics.median(results["this"][name]), statistics.median(results["base"][name])
            print("  %-20s %6.2f vs %6.2f  %+5.1f%%" % (name, a, b, (a / b - 1) * 100))


if __name__ == "__main__":
    main(sys.argv[1:])
