"""
The /stats -> /metrics names (txmesh.metric_names) and the one table of them in docs/metrics.md: the table says what
the code exports, follows Prometheus' naming conventions, and lists every series the code registers (found in the
source: string names given to counter/gauge/histogram/LabelledCounter and the modules' tables of series, plus the
series named from a prefix, expanded here; a name built some other way is caught by the in-memory mesh check).
"""

import ast
import pathlib
import re

from tests.test_request_stats import MESH, metrics
from txmesh.metric_names import RENAMED, prometheusName
from txmesh.testing import InMemoryMesh
from txmesh.upstream.host import HOST_COUNTERS
from txmesh.upstream.outlier import EJECTION_TYPES

ROOT = pathlib.Path(__file__).resolve().parent.parent
ROW = re.compile(r"^\| `([a-z0-9_]+)` \| `([a-z0-9_]+)` \| (counter|gauge|histogram) \| ([^|]*) \| ([^|]*) \|$")
_CALLS = {"counter", "gauge", "computedGauge", "histogram", "c", "make"}
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


def docTable():
    """{/stats name: (/metrics name, type)} from docs/metrics.md's table."""
    rows = {}
    for line in (ROOT / "docs" / "metrics.md").read_text().splitlines():
        m = ROW.match(line)
        if m:
            assert m.group(1) not in rows, "%s listed twice" % m.group(1)
            rows[m.group(1)] = (m.group(2), m.group(3))
    return rows


def sourceNames():
    """{name: file} of the series names written in txmesh/ (see the module docstring)."""
    found = {}
    for path in sorted((ROOT / "txmesh").rglob("*.py")):
        if path.name == "metric_names.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            arg = None
            if isinstance(node, ast.Call):
                f = node.func
                name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else None
                if name in _CALLS and node.args:
                    arg = node.args[0]
                elif name == "LabelledCounter" and len(node.args) > 1:
                    arg = node.args[1]
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and _NAME.match(arg.value):
                    found[arg.value] = path.name
            elif (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
                  and re.search(r"_(STATS|COUNTERS)$", node.targets[0].id) and isinstance(node.value, ast.Tuple)
                  and node.targets[0].id != "HOST_COUNTERS"):
                for elt in node.value.elts:
                    if isinstance(elt, ast.Tuple) and elt.elts and isinstance(elt.elts[0], ast.Constant):
                        found[elt.elts[0].value] = path.name
    # series named from a prefix
    for name, _ in HOST_COUNTERS:
        found["upstream_host_" + name] = "host.py"
    for kind in EJECTION_TYPES:
        found["outlier_detection_ejections_detected_" + kind] = found[
            "outlier_detection_ejections_enforced_" + kind] = "outlier.py"
    for breaker in ("cx", "rq_pending", "rq", "rq_retry"):
        found["circuit_breakers_remaining_" + breaker] = found["circuit_breakers_open_" + breaker] = "resources.py"
    return found


def exported(statsName, kind):
    name = "txmesh_" + prometheusName(statsName)
    return name + "_total" if kind == "counter" and not name.endswith("_total") else name


def test_the_table_says_what_metrics_exports():
    wrong = {s: (p, exported(s, kind)) for s, (p, kind) in docTable().items() if p != exported(s, kind)}
    assert wrong == {}, "docs/metrics.md: (listed, exported)"


def test_every_series_in_the_source_is_in_the_table():
    missing = sorted(set(sourceNames()) - set(docTable()))
    assert missing == [], "add these to docs/metrics.md's table (and txmesh/metric_names.py if the rule reads badly)"


def test_every_series_of_a_running_listener_is_in_the_table():
    mesh = InMemoryMesh(MESH)
    backend = mesh.upstream("backend")
    client = mesh.connect()
    client.request(path=b"/a")
    backend.requests[0].respond(200, body=b"ok")
    client.response()
    missing = sorted(set(mesh.stats.snapshot()) - set(docTable()))
    assert missing == []


def test_names_follow_prometheus_conventions():
    rows = docTable()
    names = [p for p, _ in rows.values()]
    assert len(names) == len(set(names)), "two /stats names export one /metrics name"
    for statsName, (name, kind) in rows.items():
        tokens = name.split("_")
        assert "rq" not in tokens and "cx" not in tokens, name
        assert name.endswith("_total") == (kind == "counter"), name
        if kind == "histogram":
            assert name.endswith(("_seconds", "_bytes")), name
    # the renames are all used, and none maps to a name the rule gives another series
    assert set(RENAMED) <= set(rows)


def test_the_exposition_uses_the_table_names():
    families = metrics(InMemoryMesh(MESH).stats)
    rows = {p for p, _ in docTable().values()}
    for family in families.values():
        if family.name.startswith("txmesh_") and family.name != "txmesh_build_info":
            name = family.name + "_total" if family.type == "counter" else family.name
            assert name in rows, name
