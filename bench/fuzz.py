"""
Coverage-guided fuzzing of every txmesh codec and parser with atheris (libFuzzer for Python).  The targets and the
properties they check are in tests/fuzz_targets.py; tests/test_fuzz.py runs them, bounded, in the suite.

Usage (atheris comes with the ``fuzz`` extra: ``pip install -e '.[fuzz]'``):

    python bench/fuzz.py TARGET --runs N        one target for N executions (0: until stopped), in this process
    python bench/fuzz.py all --runs N           every target for N executions, one subprocess each, and a table
    python bench/fuzz.py TARGET --seconds S     one target for S seconds
    python bench/fuzz.py --write-seeds          (re)write tests/fixtures/fuzz/<target>/ from the captures
    python bench/fuzz.py TARGET --reproduce F   run one input file through the target (a crash or regression)

Each target starts from its seed corpus, tests/fixtures/fuzz/<target>/ (made from the captured real frames in
tests/fixtures/), and grows a working corpus in bench/results/fuzz/<target>/corpus/; a crashing input is written to
bench/results/fuzz/<target>/crash-<sha1>.  The last lines give executions, executions/s and the coverage atheris
reports (``cov``: instrumented edges reached, ``ft``: features; txmesh and hpack are instrumented: atheris's
bytecode rewriting breaks PyYAML's scanner, so the YAML parser itself runs uninstrumented).
"""

import argparse
import os
import re
import subprocess
import sys
import time
import types

# atheris instruments Python bytecode: the compiled cores (txmesh.speedups) would be invisible to it, and
# UNINSTRUMENTED's copy of a compiled method's code object crashed the interpreter ("deadly signal" on the first
# dubbo inputs in a built tree).  The fuzzers always run the pure-Python modules; the compiled ones get the bounded
# run of every target (tests/test_fuzz.py), as .ci/run runs the whole suite in both modes.
os.environ["TXMESH_NO_EXTENSIONS"] = "1"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
SEEDS = os.path.join(ROOT, "tests", "fixtures", "fuzz")
RESULTS = os.path.join(ROOT, "bench", "results", "fuzz")
TARGET_NAMES = ["http1-request", "http1-response", "hpack", "grpc", "dubbo", "hessian2", "config", "h2-server",
                "h2-client"]
MAX_LEN = {"config": 4096, "h2-server": 4096, "h2-client": 4096}


# Functions atheris 2.3.0 miscompiles on CPython 3.11 (the instrumented code segfaults in libpython when the loop
# exits through an exception): they run uninstrumented, so only their coverage is not seen.
UNINSTRUMENTED = [("txmesh.protocols.dubbo.hessian2", "Hessian2Reader", "_skipString")]


def instrumentedTargets():
    """tests.fuzz_targets with txmesh and hpack instrumented for coverage (but for UNINSTRUMENTED)."""
    import importlib

    import atheris

    plain = {}
    for module, cls, name in UNINSTRUMENTED:
        plain[module, cls, name] = getattr(getattr(importlib.import_module(module), cls), name).__code__
    for module in [m for m in sys.modules if m == "txmesh" or m.startswith("txmesh.")]:
        del sys.modules[module]
    with atheris.instrument_imports(include=["txmesh", "hpack"], exclude=["txmesh.plugins"]):
        from tests import fuzz_targets
    for (module, cls, name), code in plain.items():
        m = sys.modules[module]
        setattr(getattr(m, cls), name, types.FunctionType(code, m.__dict__, name))
    return fuzz_targets


def runOne(name, runs, seconds, extra):
    import atheris

    target = instrumentedTargets().TARGETS[name]
    work = os.path.join(RESULTS, name)
    corpus = os.path.join(work, "corpus")
    os.makedirs(corpus, exist_ok=True)
    argv = [sys.argv[0], corpus, os.path.join(SEEDS, name), "-artifact_prefix=%s/" % (work,),
            "-max_len=%d" % (MAX_LEN.get(name, 2048),), "-timeout=10", "-rss_limit_mb=4096", "-print_final_stats=1",
            "-runs=%d" % (runs if runs else -1,)]
    if seconds:
        argv.append("-max_total_time=%d" % (seconds,))
    atheris.Setup(argv + extra, target)
    atheris.Fuzz()


def runAll(names, runs, seconds):
    """Each target in a subprocess (atheris exits at the end of a run); a table of what each reached."""
    rows = []
    for name in names:
        cmd = [sys.executable, os.path.abspath(__file__), name, "--runs", str(runs)]
        if seconds:
            cmd += ["--seconds", str(seconds)]
        start = time.monotonic()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        elapsed = time.monotonic() - start
        rows.append((name, proc.returncode) + summary(proc.stderr) + (elapsed,))
        with open(os.path.join(RESULTS, name + ".log"), "w") as f:
            f.write(proc.stderr)
        if proc.returncode:
            sys.stderr.write(proc.stderr[-4000:])
    print("%-15s %4s %12s %10s %7s %7s %9s" % ("target", "rc", "executions", "exec/s", "cov", "ft", "seconds"))
    for name, rc, execs, cov, ft, elapsed in rows:
        rate = "%d" % (int(execs) / elapsed,) if execs.isdigit() else "?"
        print("%-15s %4d %12s %10s %7s %7s %9.1f" % (name, rc, execs, rate, cov, ft, elapsed))
    return max(r[1] for r in rows)


def summary(log):
    """(executions, cov, ft) from libFuzzer's log."""
    def last(pattern):
        found = re.findall(pattern, log)
        return found[-1] if found else "?"
    return last(r"stat::number_of_executed_units:\s+(\d+)"), last(r"cov: (\d+)"), last(r"ft: (\d+)")


def writeSeeds():
    """The seed corpus of each target, from the captures in tests/fixtures (small: a few dozen files each)."""
    from tests import fuzz_seeds

    for name, inputs in fuzz_seeds.seeds().items():
        d = os.path.join(SEEDS, name)
        os.makedirs(d, exist_ok=True)
        for old in os.listdir(d):
            os.remove(os.path.join(d, old))
        for label, data in inputs:
            with open(os.path.join(d, label), "wb") as f:
                f.write(data)
        print("%s: %d seeds" % (name, len(inputs)))


def reproduce(name, path):
    from tests import fuzz_targets

    with open(path, "rb") as f:
        fuzz_targets.TARGETS[name](f.read())
    print("ok: %s passes %s" % (path, name))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("target", nargs="?", help="one of %s, or all" % (", ".join(TARGET_NAMES),))
    p.add_argument("--skip", default="", help="with all: targets to leave out, comma-separated")
    p.add_argument("--runs", type=int, default=100000, help="executions per target (0: no bound)")
    p.add_argument("--seconds", type=int, default=0, help="stop a target after this many seconds")
    p.add_argument("--write-seeds", action="store_true")
    p.add_argument("--reproduce", metavar="FILE")
    args, extra = p.parse_known_args()
    if args.write_seeds:
        writeSeeds()
    elif args.target is None:
        p.error("a target, or all")
    elif args.reproduce:
        reproduce(args.target, args.reproduce)
    elif args.target == "all":
        skip = set(args.skip.split(","))
        sys.exit(runAll([n for n in TARGET_NAMES if n not in skip], args.runs, args.seconds))
    elif args.target not in TARGET_NAMES:
        p.error("unknown target %r" % (args.target,))
    else:
        runOne(args.target, args.runs, args.seconds, extra)


if __name__ == "__main__":
    main()
