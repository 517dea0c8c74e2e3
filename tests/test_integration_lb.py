"""
Load balancing end to end over loopback: txmesh under twistd in front of three real upstreams
(tests/upstream_server.py); peak_ewma avoids the one that answers slowly, ring_hash sends each key to one upstream.
"""

import http.client
import os
import sys
from collections import Counter

import pytest

from tests import support

pytestmark = pytest.mark.timeout(90)

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
            - match: {{prefix: /hashed}}
              route:
                cluster: hashed
                hash_policy: [{{header: {{header_name: x-user}}}}]
            - match: {{prefix: /}}
              route: {{cluster: ewma}}
clusters:
  - name: ewma
    lb_policy: peak_ewma
    endpoints: [{endpoints}]
  - name: hashed
    lb_policy: ring_hash
    endpoints: [{endpoints}]
"""

SLOW_MS = 300


@pytest.fixture(scope="module")
def mesh():
    procs = []
    try:
        ports = []
        for delay in (0, 0, SLOW_MS):
            http, raw = support.freePort(), support.freePort()
            proc = support.Proc([sys.executable, os.path.join(support.ROOT, "tests", "upstream_server.py"),
                                 str(http), str(raw), str(delay)])
            procs.append(proc)
            support.waitForPort(http, proc=proc.popen)
            ports.append(http)
        admin, listen = support.freePort(), support.freePort()
        endpoints = ", ".join('{address: "127.0.0.1:%d"}' % p for p in ports)
        procs.append(support.startTxmesh(CONFIG.format(admin=admin, listen=listen, endpoints=endpoints), admin))
        support.waitForPort(listen)
        yield listen, ports
    finally:
        for p in procs:
            p.stop()


def get(listen, path, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", listen, timeout=10)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        response.read()
        assert response.status == 200
        return int(response.getheader("x-upstream-port"))
    finally:
        conn.close()


def test_peak_ewma_avoids_the_slow_upstream(mesh):
    listen, ports = mesh
    counts = Counter(get(listen, "/echo/%d" % i) for i in range(60))
    # round robin would send it 20; after its first slow answer its estimate (300 ms, decaying over 10 s) loses
    # every draw against the fast hosts' few milliseconds
    assert counts[ports[2]] <= 4, counts
    # each fast host wins at least its draws against the slow one (a third of the picks); between the two fast
    # ones the lower estimate wins, so their split need not be even
    assert counts[ports[0]] >= 10 and counts[ports[1]] >= 10, counts


def test_ring_hash_sends_each_key_to_one_upstream(mesh):
    listen, ports = mesh
    byUser = {}
    for _ in range(3):
        for user in range(8):
            port = get(listen, "/hashed/echo", {"x-user": "user-%d" % user})
            assert byUser.setdefault(user, port) == port
    assert len(set(byUser.values())) >= 2
