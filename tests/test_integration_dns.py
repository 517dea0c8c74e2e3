"""
DNS discovery end to end: txmesh under twistd with a cluster ``discovery: {type: dns}`` resolving through a real DNS
server (tests/dns_server.py: Twisted's authoritative server, a subprocess) whose records change mid-test; curl
through txmesh reaches the real upstreams (Python's http.server on 127.0.0.2 and 127.0.0.3, one port) the records
name, then none once the name is gone.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile

import pytest

from tests import support
from tests.test_integration_health import waitFor

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(not shutil.which("curl"), reason="curl not installed"),
]

CONFIG = """
admin:
  address: tcp:{admin}:interface=127.0.0.1
listeners:
  - name: outbound
    protocol: http
    address: tcp:{listen}:interface=127.0.0.1
    route_config:
      virtual_hosts:
        - name: app
          domains: ["*"]
          routes:
            - match: {{prefix: /}}
              route: {{cluster: web}}
clusters:
  - name: web
    discovery:
      type: dns
      hosts: ["svc.test.internal:{upstream}"]
      resolvers: ["127.0.0.1:{dns}"]
      hosts_file: ""
      lookup_family: v4_only
      min_ttl: 200ms
      failure_refresh_rate: 200ms
      timeout: 1s
      initial_fetch_timeout: 5s
"""


def writeZone(path, records):
    with open(path + ".tmp", "w") as f:
        json.dump(records, f)
    os.rename(path + ".tmp", path)


def curl(port):
    """(status, body) of GET /who through txmesh."""
    out = subprocess.run(["curl", "-s", "-m", "3", "-w", "\n%{http_code}", "http://127.0.0.1:%d/who" % (port,)],
                         capture_output=True, text=True, timeout=10).stdout
    body, _, status = out.rpartition("\n")
    return status, body.strip()


@pytest.fixture
def mesh():
    procs = []
    try:
        work = tempfile.mkdtemp(prefix="txmesh-dns-")
        upstream = support.freePort()
        for ip, who in (("127.0.0.2", "a"), ("127.0.0.3", "b")):
            root = os.path.join(work, who)
            os.makedirs(root)
            with open(os.path.join(root, "who"), "w") as f:
                f.write(who)
            procs.append(support.Proc([sys.executable, "-m", "http.server", str(upstream), "--bind", ip,
                                       "--directory", root]))
            waitFor(lambda ip=ip: _listening(ip, upstream))
        zone, portFile = os.path.join(work, "zone.json"), os.path.join(work, "dns.port")
        writeZone(zone, {"svc": [["A", "127.0.0.2", 1]]})
        procs.append(support.Proc([sys.executable, os.path.join(support.ROOT, "tests", "dns_server.py"), zone,
                                   portFile]))
        waitFor(lambda: os.path.exists(portFile))
        with open(portFile) as f:
            dnsPort = int(f.read())
        admin, listen = support.freePort(), support.freePort()
        procs.append(support.startTxmesh(CONFIG.format(admin=admin, listen=listen, upstream=upstream, dns=dnsPort),
                                         admin))
        support.waitForPort(listen)
        yield listen, admin, zone
    finally:
        for p in reversed(procs):
            p.stop()


def _listening(ip, port):
    try:
        with socket.create_connection((ip, port), timeout=0.5):
            return True
    except OSError:
        return False


def test_curl_follows_the_records(mesh):
    listen, admin, zone = mesh
    assert waitFor(lambda: curl(listen) == ("200", "a"))
    writeZone(zone, {"svc": [["A", "127.0.0.2", 1], ["A", "127.0.0.3", 1]]})
    seen = set()
    waitFor(lambda: seen.add(curl(listen)) or {("200", "a"), ("200", "b")} <= seen)
    writeZone(zone, {"svc": [["A", "127.0.0.3", 1]]})
    waitFor(lambda: all(curl(listen) == ("200", "b") for _ in range(4)))
    status, body = support.adminGet(admin, "/clusters")
    assert status == 200 and b"svc.test.internal" in body and b"127.0.0.3" in body
    writeZone(zone, {})  # NXDOMAIN: a real empty set, the cluster answers no-healthy-upstream
    waitFor(lambda: curl(listen)[0] == "503")
