"""
txmesh runs from a plain ``pip install .``: the ``xds`` and ``tracing`` extras (Envoy's protos, the OpenTelemetry
SDK) are imported only when mesh.yaml asks for them.  A service that imported txmesh.xds.state at module level
made every start fail without xds-protos (``ModuleNotFoundError: envoy``), which CI, installing every extra,
did not see: here each process entry point is imported, and a file-configured service built and started on a
memory reactor, in a Python where those packages cannot be imported.
"""

import subprocess
import sys
import textwrap

from tests import support

SCRIPT = textwrap.dedent("""
    import sys
    for name in ("envoy", "xds", "udpa", "validate", "opentelemetry", "google.protobuf", "grpc"):
        sys.modules[name] = None  # import fails, as without the extras
    from twisted.internet.testing import MemoryReactorClock
    from txmesh import config, tap, workers, workers_parent, workers_xds, control, admin  # noqa: F401
    from txmesh.service import MeshService
    cfg = config.loads('''
    listeners:
      - name: web
        protocol: http
        address: tcp:0
        route_config:
          virtual_hosts: [{name: all, domains: ["*"], routes: [{match: {prefix: /}, route: {cluster: c}}]}]
    clusters: [{name: c, endpoints: [{address: "127.0.0.1:1"}]}]
    ''')
    reactor = MemoryReactorClock()
    service = MeshService(cfg, reactor, installSignal=lambda signum, handler: None)
    service.startService()
    assert reactor.tcpServers
    print("ok")
""")


def test_a_file_configured_sidecar_needs_no_optional_extra():
    out = subprocess.run([sys.executable, "-c", SCRIPT], cwd=support.ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-3000:]
