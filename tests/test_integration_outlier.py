"""
Outlier detection end to end over loopback: txmesh under twistd in front of two nginx servers, one of which
flaps (answers 503 while a flag file exists, 200 otherwise).  The flapping host is ejected after its consecutive
5xx, gets no traffic while ejected, and is brought back on time once healthy.  The rules themselves are tested on
a Clock in tests/test_outlier.py.
"""

import http.client
import json
import os
import time

import pytest

from tests import support

pytestmark = [pytest.mark.timeout(60),
              pytest.mark.skipif(support.NGINX is None, reason="nginx is not installed")]

NGINX = """
server {{ listen 127.0.0.1:{a};
  location / {{ add_header x-host a always; if (-f {flag}) {{ return 503 "down\\n"; }} return 200 "a\\n"; }} }}
server {{ listen 127.0.0.1:{b};
  location / {{ add_header x-host b always; return 200 "b\\n"; }} }}
"""

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
              route: {{cluster: web, timeout: 5s}}
clusters:
  - name: web
    lb_policy: round_robin
    endpoints: [{{address: "127.0.0.1:{a}"}}, {{address: "127.0.0.1:{b}"}}]
    outlier_detection:
      consecutive_5xx: 3
      max_ejection_percent: 50
      interval: 0.5s
      base_ejection_time: 2s
"""


@pytest.fixture
def mesh(tmp_path):
    procs = []
    try:
        a, b, admin, listen = (support.freePort() for _ in range(4))
        flag = str(tmp_path / "down")
        ng, _ = support.startNginx(NGINX.format(a=a, b=b, flag=flag))
        procs.append(ng)
        support.waitForPort(a, proc=ng.popen)
        support.waitForPort(b, proc=ng.popen)
        tx = support.startTxmesh(CONFIG.format(admin=admin, listen=listen, a=a, b=b), admin)
        procs.append(tx)
        support.waitForPort(listen, proc=tx.popen)
        yield {"admin": admin, "port": listen, "flag": flag, "a": "127.0.0.1:%d" % a}
    finally:
        for p in reversed(procs):
            p.stop()


def get(mesh):
    c = http.client.HTTPConnection("127.0.0.1", mesh["port"], timeout=10)
    try:
        c.request("GET", "/", headers={"Host": "app"})
        r = c.getresponse()
        r.read()
        return r.status, r.getheader("x-host")
    finally:
        c.close()


def hostA(mesh):
    _, body = support.adminGet(mesh["admin"], "/clusters")
    [web] = [c for c in json.loads(body) if c["name"] == "web"]
    [a] = [h for h in web["hosts"] if h["address"] == mesh["a"]]
    return a


def test_a_flapping_host_is_ejected_and_brought_back(mesh):
    open(mesh["flag"], "w").close()  # host a starts answering 503
    answers = [get(mesh) for _ in range(12)]
    # round robin sends a every other request until its third 503 ejects it; from then on only b answers
    assert answers.count((503, "a")) == 3, answers
    assert answers[-4:] == [(200, "b")] * 4, answers
    a = hostA(mesh)
    assert a["outlier"]["ejected"] and a["outlier"]["times_ejected"] == 1 and not a["healthy"]
    assert "failed_outlier_check" in a["health_flags"]

    os.remove(mesh["flag"])  # a recovers; it is back after base_ejection_time (2s) at an interval tick
    deadline = time.monotonic() + 10
    while hostA(mesh)["outlier"]["ejected"]:
        assert time.monotonic() < deadline, "host a was never brought back"
        time.sleep(0.1)
    answers = [get(mesh) for _ in range(6)]
    assert all(status == 200 for status, _ in answers), answers
    assert {host for _, host in answers} == {"a", "b"}
    assert hostA(mesh)["healthy"]
