"""
Retries end to end over loopback (issue 11 part 5): txmesh under twistd in front of nginx answering 503, the
scriptable upstream (tests/upstream_server.py) answering 200, and a port nothing listens on.  Every test is
bounded by its clients' timeouts and waitFor.
"""

import concurrent.futures
import http.client
import json

import pytest

from tests import support

pytestmark = pytest.mark.skipif(not support.NGINX, reason="nginx not installed")

CONFIG = """
admin: {{address: "tcp:{admin}:interface=127.0.0.1"}}
listeners:
  - name: ingress
    protocol: http
    address: tcp:{listen}:interface=127.0.0.1
    route_config:
      virtual_hosts:
        - name: app
          domains: ["*"]
          routes:
            - match: {{prefix: /half}}
              route:
                cluster: half
                retry_policy: {{retry_on: "5xx", num_retries: 2}}
            - match: {{prefix: /dead}}
              route:
                cluster: dead
                retry_policy:
                  retry_on: "connect-failure,reset"
                  num_retries: 2
                  retry_budget: {{budget_percent: 100, min_retry_concurrency: 10}}
            - match: {{prefix: /storm}}
              route:
                cluster: failing
                retry_policy:
                  retry_on: "5xx"
                  num_retries: 3
                  retry_budget: {{budget_percent: 20, min_retry_concurrency: 1}}
clusters:
  - name: half
    lb_policy: round_robin
    endpoints: [{{address: "127.0.0.1:{echo}"}}, {{address: "127.0.0.1:{unavailable}"}}]
  - name: dead
    lb_policy: round_robin
    endpoints: [{{address: "127.0.0.1:{echo}"}}, {{address: "127.0.0.1:{echo2}"}}]
  - name: failing
    endpoints: [{{address: "127.0.0.1:{unavailable}"}}, {{address: "127.0.0.1:{unavailable2}"}}]
"""


@pytest.fixture(scope="module")
def mesh():
    procs = []
    try:
        up, echo, _ = support.startUpstream()
        procs.append(up)
        unavailable, unavailable2 = support.freePort(), support.freePort()
        ng, _ = support.startNginx(
            "server { listen 127.0.0.1:%d; location / { return 503; } }\n"
            "server { listen 127.0.0.1:%d; location / { return 503; } }" % (unavailable, unavailable2))
        procs.append(ng)
        support.waitForPort(unavailable, proc=ng.popen)
        up2, echo2, _ = support.startUpstream()  # killed by a test, mid-load
        procs.append(up2)
        admin, listen = support.freePort(), support.freePort()
        cfg = CONFIG.format(admin=admin, listen=listen, echo=echo, unavailable=unavailable,
                            unavailable2=unavailable2, echo2=echo2)
        tx = support.startTxmesh(cfg, admin)
        procs.append(tx)
        support.waitForPort(listen, proc=tx.popen)
        yield {"admin": admin, "port": listen, "victim": up2}
    finally:
        for p in reversed(procs):
            p.stop()


def get(mesh, path):
    c = http.client.HTTPConnection("127.0.0.1", mesh["port"], timeout=10)
    try:
        c.request("GET", path, headers={"Host": "app.svc"})
        r = c.getresponse()
        r.read()
        return r.status
    finally:
        c.close()


def stat(mesh, name, **labels):
    _, body = support.adminGet(mesh["admin"], "/stats")
    return sum(s["value"] for s in json.loads(body).get(name, [])
               if all(s["labels"].get(k) == v for k, v in labels.items()))


def test_a_503_host_is_retried_on_the_other_and_every_request_succeeds(mesh):
    assert [get(mesh, "/half/%d" % i) for i in range(20)] == [200] * 20
    assert stat(mesh, "upstream_rq_retry", cluster="half") >= 5  # round robin sent about half to the 503 host
    assert stat(mesh, "upstream_rq_retry_success", cluster="half") == stat(mesh, "upstream_rq_retry", cluster="half")


def test_an_upstream_killed_mid_load_loses_no_request(mesh):
    def one(i):
        if i == 40:
            mesh["victim"].signal(9)  # SIGKILL: connections reset, later connects refused
        return get(mesh, "/dead/%d" % i)

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(200)))
    assert results == [200] * 200
    assert stat(mesh, "upstream_rq_retry", cluster="dead") >= 1


def test_a_budget_stops_a_retry_storm_when_every_host_fails(mesh):
    n = 60
    before = stat(mesh, "upstream_rq_total", cluster="failing")
    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        results = list(pool.map(lambda i: get(mesh, "/storm/%d" % i), range(n)))
    assert results == [503] * n
    attempts = stat(mesh, "upstream_rq_total", cluster="failing") - before
    retries = stat(mesh, "upstream_rq_retry", cluster="failing")
    assert attempts == n + retries
    # without the budget every request would make num_retries + 1 = 4 attempts
    assert attempts < 4 * n * 0.75, attempts
    assert stat(mesh, "upstream_rq_retry_budget_exhausted", cluster="failing") > 0
