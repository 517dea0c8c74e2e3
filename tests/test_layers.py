"""
The layers of docs/architecture.md, checked on the source: a module imports only modules of its own layer or
lower ones (imports inside functions count too).  The table here is the one the doc shows; a new module must be
placed in it, or this test fails naming it.
"""

import ast
import fnmatch
import os

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "txmesh")

# (layer, glob patterns of module paths under txmesh/), lowest first
LAYERS = (
    ("contracts", ["interfaces.py", "errors.py", "stream.py", "stats.py", "metric_names.py", "twisted_private.py", "tcp.py", "reuse_port.py",
                   "speedups.py",
                   "protocols/descriptor.py", "__init__.py", "plugins/__init__.py", "protocols/__init__.py",
                   "protocols/*/__init__.py", "filters/__init__.py", "upstream/__init__.py",
                   "discovery/__init__.py", "tls/__init__.py", "xds/__init__.py"]),
    ("codecs and config", ["protocols/*/codec.py", "protocols/*/events.py", "protocols/*/wire.py",
                           "protocols/*/frames.py", "protocols/*/hpack.py", "protocols/*/hessian2.py",
                           "protocols/*/grpc.py", "protocols/*/defences.py", "protocols/*/url.py", "config.py", "config_reader.py",
                           "routing.py", "routing_config.py", "discovery_config.py", "detect_config.py", "path_normalization.py",
                           "tls/material.py", "tls/server_config.py", "tls/upstream_config.py", "config_diff.py",
                           "hot_restart_wire.py", "hot_restart_config.py",
                           "trace_context.py", "tracing_config.py", "xds/config.py", "xds/translate.py",
                           "xds/translate_routes.py", "xds/translate_common.py", "xds/translate_filters.py",
                           "xds/translate_listeners.py", "tunnel_config.py", "workers_config.py"]),
    ("filters, upstream", ["filters/*.py", "upstream/*.py", "discovery/*.py", "tls/*.py", "runtime.py", "overload.py",
                           "request_stats.py", "tracer.py", "worker_stats.py", "xds/state.py", "xds/rest.py", "xds/discovery.py"]),
    ("protocols (glue)", ["protocols/listener.py", "protocols/transport.py", "protocols/alpn.py", "protocols/*/*.py", "listeners.py", "xds/ads.py",
                          "protocols/tunnel.py"]),
    ("service", ["service.py", "admin.py", "admin_security.py", "control.py", "status.py", "explain.py", "tap.py", "reactor.py", "cli.py", "testing.py", "systemd.py", "logs.py",
                 "startup.py", "reload.py", "hot_restart.py", "hot_restart_takeover.py", "worker.py", "workers.py",
                 "workers_parent.py", "workers_control.py", "workers_xds.py", "workers_balance.py", "xds/client.py"]),
    ("plugins", ["plugins/*.py"]),
)


def layerOf(relpath):
    for i, (_, patterns) in enumerate(LAYERS):
        if any(fnmatch.fnmatch(relpath, p) and (p.count("/") == relpath.count("/")) for p in patterns):
            return i
    return None


def moduleFile(dotted):
    """txmesh.a.b -> 'a/b.py' or 'a/b/__init__.py' (relative to txmesh/), or None outside txmesh."""
    parts = dotted.split(".")
    if parts[0] != "txmesh":
        return None
    rel = os.path.join(*parts[1:]) if len(parts) > 1 else ""
    if rel and os.path.isfile(os.path.join(ROOT, rel + ".py")):
        return rel + ".py"
    if os.path.isfile(os.path.join(ROOT, rel, "__init__.py")):
        return os.path.join(rel, "__init__.py") if rel else "__init__.py"
    return None


def imports(path):
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module
            for a in node.names:  # from txmesh.protocols import grpc
                yield node.module + "." + a.name


def sources():
    for dirpath, _, files in os.walk(ROOT):
        for f in files:
            if f.endswith(".py"):
                full = os.path.join(dirpath, f)
                yield os.path.relpath(full, ROOT), full


def test_every_module_has_a_layer():
    unplaced = [rel for rel, _ in sources() if layerOf(rel) is None]
    assert unplaced == [], "place these modules in a layer (tests/test_layers.py and docs/architecture.md)"


def test_no_module_imports_a_higher_layer():
    violations = []
    for rel, full in sources():
        mine = layerOf(rel)
        for dotted in set(imports(full)):
            target = moduleFile(dotted)
            if target is None or target == rel:
                continue
            theirs = layerOf(target)
            if theirs is not None and mine is not None and theirs > mine:
                violations.append("%s (%s) imports %s (%s)" % (rel, LAYERS[mine][0], target, LAYERS[theirs][0]))
    assert violations == []
