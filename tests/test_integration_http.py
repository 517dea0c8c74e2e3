"""
Smoke tests, end to end over loopback: txmesh under twistd between real clients (curl, http.client) and real
upstreams (nginx from Debian's packages, and the scriptable Python upstream).  Behaviour (timeouts, local
replies, pipelining, defences, drain) is tested in memory against the clock in tests/test_http1_server.py; here
only what needs real processes and sockets: bodies through kernel buffers, curl's 100-continue, nginx, the admin
API, the access log file, SIGTERM.
"""

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import time

import pytest

from tests import support

pytestmark = pytest.mark.timeout(120)

CONFIG = """
drain_timeout: 5s
admin:
  address: tcp:{admin}:interface=127.0.0.1
listeners:
  - name: outbound
    protocol: http
    address: tcp:{listen}:interface=127.0.0.1
    limits:
      max_request_line: 2048
      max_header_bytes: 4096
      max_headers: 30
      request_headers_timeout: 1s
      idle_timeout: 2s
      max_request_body: 1000000
    filters:
      - name: access_log
        config: {{path: "{accesslog}"}}
      - name: access_log
        config:
          path: "{jsonlog}"
          json_format:
            status: "%RESPONSE_CODE%"
            route: "%ROUTE_NAME%"
            cluster: "%UPSTREAM_CLUSTER%"
            upstream: "%UPSTREAM_HOST%"
            agent: "%REQ(USER-AGENT)%"
            tag: "%REQ(X-TAG):4%"
            vhost: "%RESP(X-VHOST)%"
            path: "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%"
            peer: "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"
            local: "%DOWNSTREAM_LOCAL_ADDRESS%"
            timing: {{total: "%DURATION%", upstream: "%RESPONSE_DURATION%", attempts: "%UPSTREAM_REQUEST_ATTEMPT_COUNT%"}}
            details: "%RESPONSE_CODE_DETAILS%"
            text: "%PROTOCOL% %REQ(:METHOD)% took %DURATION%ms"
      - name: router
    route_config:
      virtual_hosts:
        - name: app
          domains: ["app.svc", "*.app.svc"]
          response_headers_to_add: [{{name: x-vhost, value: app}}]
          routes:
            - match: {{prefix: /direct}}
              direct_response: {{status: 200, body: "direct\\n"}}
            - match: {{prefix: /static}}
              route: {{cluster: nginx}}
            - match: {{prefix: /}}
              name: echo_all
              route: {{cluster: echo}}
              request_headers_to_add: [{{name: x-added, value: "yes"}}]
              request_headers_to_remove: [x-secret]
clusters:
  - name: echo
    endpoints: [{{address: "127.0.0.1:{echo}"}}]
  - name: nginx
    endpoints: [{{address: "127.0.0.1:{nginx}"}}]
"""


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    procs = []
    try:
        up, echo, _ = support.startUpstream()
        procs.append(up)
        nginxPort = support.freePort()
        docroot = str(tmp_path_factory.mktemp("www"))
        os.makedirs(os.path.join(docroot, "static"))
        with open(os.path.join(docroot, "static", "small.txt"), "wb") as f:
            f.write(b"s" * 100)
        with open(os.path.join(docroot, "static", "big.bin"), "wb") as f:
            f.write(os.urandom(3 * 1024 * 1024))
        ng = None
        if support.NGINX:
            ng, _ = support.startNginx("server { listen 127.0.0.1:%d; root %s; }" % (nginxPort, docroot))
            procs.append(ng)
            support.waitForPort(nginxPort, proc=ng.popen)
        admin, listen = support.freePort(), support.freePort()
        logDir = tmp_path_factory.mktemp("log")
        accesslog, jsonlog = str(logDir / "access.log"), str(logDir / "access.json")
        cfg = CONFIG.format(admin=admin, listen=listen, echo=echo, nginx=nginxPort, accesslog=accesslog,
                            jsonlog=jsonlog)
        tx = support.startTxmesh(cfg, admin)
        procs.append(tx)
        support.waitForPort(listen, proc=tx.popen)
        yield {"admin": admin, "port": listen, "docroot": docroot, "accesslog": accesslog, "jsonlog": jsonlog,
               "proc": tx,
               "nginx": ng is not None}
    finally:
        for p in reversed(procs):
            p.stop()


def request(mesh, method, path, body=None, headers=None, host="app.svc", chunked=False):
    c = http.client.HTTPConnection("127.0.0.1", mesh["port"], timeout=10)
    h = {"Host": host}
    h.update(headers or {})
    c.request(method, path, body=body, headers=h, encode_chunked=chunked)
    r = c.getresponse()
    data = r.read()
    c.close()
    return r, data


def stats(mesh):
    _, body = support.adminGet(mesh["admin"], "/stats")
    return json.loads(body)


def statValue(mesh, name, **labels):
    for series in stats(mesh).get(name, []):
        if all(series["labels"].get(k) == v for k, v in labels.items()):
            return series["value"]
    return 0


def waitFor(condition, timeout=5.0):
    """Poll ``condition`` until it holds (bounded)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in %gs" % timeout
        time.sleep(0.02)


def test_get_through_proxy_adds_forwarding_headers(mesh):
    r, data = request(mesh, "GET", "/hello?x=1", headers={"X-Secret": "s", "Connection": "keep-alive, x-hop",
                                                          "X-Hop": "1"})
    assert r.status == 200
    echoed = json.loads(data)
    names = dict(echoed["headers"])
    assert echoed["path"] == "/hello?x=1"
    assert names["host"] == "app.svc"
    assert names["x-forwarded-for"] == "127.0.0.1"
    assert names["x-forwarded-proto"] == "http"
    assert len(names["x-request-id"]) == 36
    assert names["x-added"] == "yes"
    assert "x-secret" not in names and "x-hop" not in names
    assert r.getheader("x-vhost") == "app"


def test_post_content_length_and_chunked_bodies_stream_through(mesh):
    body = os.urandom(200000)
    r, data = request(mesh, "POST", "/upload", body=body)
    echoed = json.loads(data)
    assert echoed["body_length"] == len(body)

    def gen():
        for i in range(0, len(body), 7000):
            yield body[i:i + 7000]

    r, data = request(mesh, "PUT", "/upload", body=gen(), headers={"Transfer-Encoding": "chunked"}, chunked=True)
    assert r.status == 200
    assert json.loads(data)["body_length"] == len(body)


def test_expect_100_continue_with_curl(mesh):
    if not shutil.which("curl"):
        pytest.skip("curl not installed")
    body = "x" * 5000
    out = subprocess.run(["curl", "-sS", "-v", "--max-time", "10", "-H", "Host: app.svc", "-H",
                          "Expect: 100-continue", "--data-binary", body, "http://127.0.0.1:%d/up" % mesh["port"]],
                         capture_output=True, timeout=20)
    assert b"HTTP/1.1 100 Continue" in out.stderr
    assert json.loads(out.stdout)["body_length"] == 5000


def test_nginx_upstream_large_body(mesh):
    if not mesh["nginx"]:
        pytest.skip("nginx not installed")
    with open(os.path.join(mesh["docroot"], "static", "big.bin"), "rb") as f:
        expected = f.read()
    r, data = request(mesh, "GET", "/static/big.bin")
    assert r.status == 200 and data == expected
    if shutil.which("curl"):
        out = subprocess.run(["curl", "-sS", "--max-time", "10", "-H", "Host: app.svc",
                              "http://127.0.0.1:%d/static/small.txt" % mesh["port"]], capture_output=True, timeout=20)
        assert out.stdout == b"s" * 100


def test_admin_endpoints_show_counters(mesh):
    request(mesh, "GET", "/direct")
    assert statValue(mesh, "downstream_rq", listener="outbound") >= 1
    assert statValue(mesh, "downstream_rq_xx", listener="outbound", code_class="2xx") >= 1
    status, body = support.adminGet(mesh["admin"], "/metrics")
    assert status == 200 and b"txmesh_downstream_requests_total{" in body
    status, body = support.adminGet(mesh["admin"], "/clusters")
    assert status == 200 and "echo" in body.decode()
    status, body = support.adminGet(mesh["admin"], "/config_dump")
    assert json.loads(body)["listeners"][0]["name"] == "outbound"
    assert support.adminGet(mesh["admin"], "/ready")[0] == 200


def test_access_log_lines(mesh):
    request(mesh, "GET", "/direct?log=1")
    deadline = time.monotonic() + 5
    text = ""
    while time.monotonic() < deadline:
        if os.path.exists(mesh["accesslog"]):
            with open(mesh["accesslog"]) as f:
                text = f.read()
            if "/direct?log=1" in text:
                break
        time.sleep(0.2)
    line = [ln for ln in text.splitlines() if "/direct?log=1" in ln][0]
    assert '"GET /direct?log=1 HTTP/1.1" 200' in line


def test_access_log_json_format_with_curl(mesh):
    """A json_format line for a real curl request through txmesh under twistd, field by field."""
    out = subprocess.run(["curl", "-s", "-m", "10", "-o", "/dev/null", "-w", "%{http_code}", "-A", "curl-al/1.0",
                          "-H", "Host: app.svc", "-H", "X-Tag: abcdefgh",
                          "http://127.0.0.1:%d/logged/json?x=1" % mesh["port"]], capture_output=True, timeout=15)
    assert out.stdout == b"200"
    deadline = time.monotonic() + 5
    lines = []
    while time.monotonic() < deadline and not lines:
        if os.path.exists(mesh["jsonlog"]):
            with open(mesh["jsonlog"]) as f:
                lines = [json.loads(ln) for ln in f if "/logged/json" in ln]
        time.sleep(0.1)
    [line] = lines
    timing = line.pop("timing")
    assert timing["attempts"] == 1 and 0 <= timing["upstream"] <= timing["total"] < 5000
    local = line.pop("local")
    assert local == "127.0.0.1:%d" % mesh["port"]
    assert line == {"status": 200, "route": "echo_all", "cluster": "echo", "upstream": line["upstream"],
                    "agent": "curl-al/1.0", "tag": "abcd", "vhost": "app", "path": "/logged/json?x=1",
                    "peer": "127.0.0.1", "details": "via_upstream", "text": "HTTP/1.1 GET took %dms" % timing["total"]}
    assert line["upstream"].startswith("127.0.0.1:")


def test_sigterm_drains_in_flight_requests(tmp_path):
    up, echo, raw_ = support.startUpstream()
    admin, listen = support.freePort(), support.freePort()
    cfg = """
drain_timeout: 5s
admin: {address: "tcp:%d:interface=127.0.0.1"}
listeners:
  - name: l
    protocol: http
    address: tcp:%d:interface=127.0.0.1
    route_config:
      virtual_hosts: [{name: all, domains: ["*"], routes: [{match: {prefix: /}, route: {cluster: echo}}]}]
clusters: [{name: echo, endpoints: [{address: "127.0.0.1:%d"}]}]
""" % (admin, listen, echo)
    tx = support.startTxmesh(cfg, admin)
    try:
        support.waitForPort(listen, proc=tx.popen)
        c = http.client.HTTPConnection("127.0.0.1", listen, timeout=10)
        c.request("GET", "/slow/1000")
        waitFor(lambda: statValue({"admin": admin}, "downstream_rq_active", listener="l") == 1)  # it is in flight
        tx.signal(signal.SIGTERM)
        r = c.getresponse()
        assert (r.status, r.read()) == (200, b"slow done\n")
        # twistd re-raises the signal after a clean shutdown, so the exit status says "terminated by SIGTERM"
        assert tx.popen.wait(10) in (0, -signal.SIGTERM)
        assert "drain timeout" not in tx.output()
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", listen), timeout=1).close()
    finally:
        tx.stop()
        up.stop()
