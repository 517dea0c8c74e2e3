"""
Compiled cores against pure Python (issue 10 part 3, docs/performance.md "Issue 10 part 3: compiled cores"), on
the three in-memory request paths, in the same run:

- ``http1``: one proxied HTTP/1.1 GET (bench/inproc.py: listener, filter chain, router, pool, client);
- ``grpc``: one proxied unary call of 32 bytes (bench/grpc_bench.py's L{inprocCall}: both h2 connections);
- ``dubbo``: one proxied two-way Dubbo call, the captured sofa-rpc-node ``echo`` frames
  (tests/fixtures/dubbo-frames) through a Dubbo listener and the multiplexed pool (txmesh.testing.InMemoryMesh).

Each variant runs in a fresh process: ``compiled`` is this tree as it is (its compiled modules, where built:
``python setup.py build_ext --inplace``), ``pure`` this tree with ``TXMESH_NO_EXTENSIONS=1``, and with
``--base-tree DIR`` the txmesh in DIR (a checkout of the commit to compare with).  ``--variants`` names others:
``NAME=DIR`` or ``NAME=DIR:pure``.

    python bench/cores_ab.py [N] [ROUNDS] [--base-tree DIR]     # CPU µs per request, variants alternating
    python bench/cores_ab.py --instructions [--base-tree DIR] [--requests 100,600]   # instructions (callgrind)

Timing: each round runs every variant once, in turn (N requests of each workload after 500 untimed), the time of
txmesh's own steps (``time.perf_counter`` around each, as bench/inproc.py and grpc_bench.py); the report gives the median and min-max over the rounds.  ``--instructions``
runs one process per variant under ``valgrind --tool=callgrind`` (``PYTHONHASHSEED=0``), counting only txmesh's
own steps (each runs inside ``itertools.starmap``, whose C ``starmap_next`` toggles collection, so the peers' work
in the gRPC and Dubbo paths is not counted); a dump after 100 and after 600 requests of each workload, and
(600's count - 100's) / 500 is the instructions per request: deterministic, so one run says it.
"""

import gc
import itertools
import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
THIS_TREE = os.path.dirname(HERE)
WORKLOADS = ("http1", "grpc", "dubbo")

DUBBO_MESH = """
listeners:
- name: dubbo_in
  protocol: dubbo
  address: tcp:0
  route_config:
    virtual_hosts:
    - name: all
      domains: ["*"]
      routes:
      - match: {dubbo: {interface: org.txmesh.peers.EchoService}}
        route: {cluster: provider}
clusters:
- name: provider
  protocol: dubbo
  endpoints: [{address: "10.0.0.1:20880"}]
"""


def direct(fn, data):
    fn(data)


def counted(fn, data):
    """One of txmesh's steps inside ``starmap_next``: the function callgrind counts (--toggle-collect)."""
    next(itertools.starmap(fn, ((data,),)))


def http1Call(call):
    import inproc
    server, st, upstreams = inproc.build()

    def one():
        call(server.dataReceived, inproc.REQUEST)
        up, ut = upstreams[0]
        ut.clear()
        call(up.dataReceived, inproc.RESPONSE)
        st.clear()
    return one


def grpcCall(call):
    import grpc_bench
    return grpc_bench.inprocCall(call)


def dubboCall(call):
    from twisted.internet import defer
    from twisted.internet.testing import StringTransport

    from txmesh.protocols.dubbo.client import DubboClientProtocol
    from txmesh.testing import InMemoryMesh

    fixtures = os.path.join(THIS_TREE, "tests", "fixtures", "dubbo-frames", "sofa-consumer__sofa-provider")

    def load(name):
        with open(os.path.join(fixtures, name)) as f:
            return bytes.fromhex(f.read())

    request, response = load("c0-c2s-000-req-echo.hex"), load("c0-s2c-000-resp-echo-status20.hex")
    upstreams = []

    def connect(host, clusterConfig):
        proto = DubboClientProtocol()
        proto.makeConnection(StringTransport())
        upstreams.append(proto)
        return defer.succeed(proto)

    mesh = InMemoryMesh(DUBBO_MESH, connect=connect)
    mesh.streams = None  # the mesh records every stream for tests; a bench keeps none
    mesh.template.streams = _Discard()
    client = mesh.factory.buildProtocol(None)
    transport = StringTransport()
    client.makeConnection(transport)

    def one():
        call(client.dataReceived, request)
        up = upstreams[0]
        sent = up.transport.value()
        up.transport.clear()
        # the provider's answer carries the id txmesh gave the forwarded request (header bytes 4-12)
        call(up.dataReceived, response[:4] + sent[4:12] + response[12:])
        transport.clear()
    return one


class _Discard(list):
    """A list that keeps nothing (InMemoryMesh's stream record, in a bench)."""

    def append(self, item):
        pass


BUILDERS = {"http1": http1Call, "grpc": grpcCall, "dubbo": dubboCall}


class Timed:
    """A step wrapper that adds up the time of txmesh's own steps only (the peers' work is not timed)."""

    def __init__(self):
        self.seconds = 0.0

    def __call__(self, fn, data):
        t = time.perf_counter()
        fn(data)
        self.seconds += time.perf_counter() - t


def timedChild(n):
    """{workload: µs of txmesh's steps per request} in this process, and the mode txmesh runs in."""
    out = {}
    for name in WORKLOADS:
        timed = Timed()
        one = BUILDERS[name](timed)
        for _ in range(500):
            one()
        gc.collect()
        timed.seconds = 0.0
        for _ in range(n):
            one()
        out[name] = timed.seconds / n * 1e6
    try:
        from txmesh.speedups import describe
        out["mode"] = describe()["mode"]
    except ImportError:  # a tree from before the compiled cores
        out["mode"] = "pure-python"
    print(json.dumps(out))


def callgrindChild(n1, n2):
    """Under callgrind: per workload, a dump (math.factorial's, --dump-after) after n1 and after n2 counted
    requests."""
    for name in WORKLOADS:
        one = BUILDERS[name](direct)
        for _ in range(300):
            one()
        one = BUILDERS[name](counted)
        for _ in range(50):  # the counting wrapper's first calls, and a new connection's, warmed up too
            one()
        math.factorial(1)  # dumps (and so drops) what the warm-up counted
        for n in (n1, n2):
            gc.collect()
            for _ in range(n):
                one()
            math.factorial(1)


def envFor(tree, pure):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([tree, HERE, os.environ.get("PYTHONPATH", "")]))
    env.pop("TXMESH_NO_EXTENSIONS", None)
    if pure:
        env["TXMESH_NO_EXTENSIONS"] = "1"
    return env


def inVariant(variant, n):
    _, tree, pure = variant
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--timed-child", str(n)], cwd=tree,
                         env=envFor(tree, pure), check=True, capture_output=True, text=True).stdout
    return json.loads(out.splitlines()[-1])


def instructionsIn(variant, n1=100, n2=600):
    """{workload: machine instructions per request} of one variant, one process under callgrind."""
    _, tree, pure = variant
    env = dict(envFor(tree, pure), PYTHONHASHSEED="0")
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["valgrind", "--tool=callgrind", "--collect-atstart=no", "--toggle-collect=starmap_next",
                        "--dump-after=math_factorial", "--callgrind-out-file=" + os.path.join(tmp, "cg.out"),
                        sys.executable, os.path.abspath(__file__), "--callgrind-child", str(n1), str(n2)],
                       cwd=tree, env=env, check=True, capture_output=True)
        dumps = sorted((int(f.rpartition(".")[2]), f) for f in os.listdir(tmp) if f.startswith("cg.out."))
        counts = []
        for _, f in dumps:
            with open(os.path.join(tmp, f)) as dump:
                counts.append(int(re.search(r"^summary: (\d+)", dump.read(), re.M).group(1)))
    if len(counts) != 3 * len(WORKLOADS):
        raise RuntimeError("expected %d callgrind dumps, got %d" % (3 * len(WORKLOADS), len(counts)))
    return {name: (counts[3 * i + 2] - counts[3 * i + 1]) / float(n2 - n1) for i, name in enumerate(WORKLOADS)}


def parseVariants(argv):
    variants = [("compiled", THIS_TREE, False), ("pure", THIS_TREE, True)]
    if "--variants" in argv:
        i = argv.index("--variants")
        variants = []
        for spec in argv[i + 1].split(","):
            name, _, where = spec.partition("=")
            tree, _, flag = where.partition(":")
            variants.append((name, os.path.abspath(tree), flag == "pure"))
        del argv[i:i + 2]
    if "--base-tree" in argv:
        i = argv.index("--base-tree")
        variants.append(("base", os.path.abspath(argv[i + 1]), False))
        del argv[i:i + 2]
    return variants


def report(variants, got, unit, fmt):
    first = variants[0][0]
    print("| workload | " + " | ".join(v[0] for v in variants) + " | " +
          " | ".join("%s vs %s" % (v[0], first) for v in variants[1:]) + " |")
    print("|---" * (2 * len(variants)) + "|")
    for name in WORKLOADS:
        cells = [fmt(got[v[0]][name]) for v in variants]
        ratios = ["%+.1f%%" % ((_median(got[v[0]][name]) / _median(got[first][name]) - 1) * 100) for v in variants[1:]]
        print("| %s (%s) | %s | %s |" % (name, unit, " | ".join(cells), " | ".join(ratios)))


def _median(value):
    return statistics.median(value) if isinstance(value, list) else value


def main(argv):
    if argv[:1] == ["--timed-child"]:
        sys.path.insert(0, HERE)
        timedChild(int(argv[1]))
        return
    if argv[:1] == ["--callgrind-child"]:
        sys.path.insert(0, HERE)
        callgrindChild(int(argv[1]), int(argv[2]))
        return
    variants = parseVariants(argv)
    for name, tree, pure in variants:
        print("%s: %s%s" % (name, tree, " (TXMESH_NO_EXTENSIONS=1)" if pure else ""))
    if "--instructions" in argv:
        counts = (100, 600)
        if "--requests" in argv:  # N1,N2: fewer for a quicker run on a busy machine
            i = argv.index("--requests")
            counts = tuple(int(v) for v in argv[i + 1].split(","))
        with ThreadPoolExecutor(2) as pool:
            results = list(pool.map(lambda variant: instructionsIn(variant, *counts), variants))
        got = {v[0]: r for v, r in zip(variants, results)}
        print("machine instructions per request (callgrind, runs of %d and %d requests)" % counts[::-1])
        report(variants, got, "instructions", lambda v: "%.0f" % v)
        return
    n = int(argv[0]) if argv else 5000
    rounds = int(argv[1]) if len(argv) > 1 else 3
    got = {v[0]: {name: [] for name in WORKLOADS} for v in variants}
    modes = {}
    for _ in range(rounds):
        for variant in variants:
            out = inVariant(variant, n)
            modes[variant[0]] = out.pop("mode")
            for name in WORKLOADS:
                got[variant[0]][name].append(out[name])
    print("modes: " + ", ".join("%s=%s" % item for item in modes.items()))
    print("CPU µs per request, median [min-max] of %d rounds, %d requests each" % (rounds, n))
    report(variants, got, "µs", lambda v: "%.1f [%.1f-%.1f]" % (statistics.median(v), min(v), max(v)))


if __name__ == "__main__":
    main(sys.argv[1:])
