"""
The admin API's actions end to end (issue 16 part 4): txmesh under twistd, driven with curl as an operator would.
POST /healthcheck/fail turns /ready to 503 and /ok back to 200; POST /drain_listeners refuses new connections while
a request already in flight on an open one is answered.
"""

import json
import shutil
import subprocess
import time

import pytest

from tests import support

CURL = shutil.which("curl")

CONFIG = """\
node: {id: it-1, cluster: admin-test}
admin: {address: "tcp:%(admin)d:interface=127.0.0.1"}
drain_timeout: 5s
listeners:
- name: web
  address: tcp:%(web)d:interface=127.0.0.1
  route_config:
    virtual_hosts:
    - name: all
      domains: ["*"]
      routes:
      - {name: slow, match: {prefix: /slow}, route: {cluster: app}}
      - {name: rest, match: {prefix: /}, route: {cluster: app}}
clusters:
- {name: app, endpoints: [{address: "127.0.0.1:%(upstream)d"}]}
"""


def curl(*args, timeout=5):
    """(exit status, stdout) of curl with ``args``; a status line code is asked with -w."""
    done = subprocess.run([CURL, "-s", "--max-time", str(timeout), *args], capture_output=True, timeout=timeout + 5)
    return done.returncode, done.stdout.decode("utf-8", "replace")


def code(url, *args):
    status, out = curl("-o", "/dev/null", "-w", "%{http_code}", *args, url)
    return int(out) if status == 0 else -status


@pytest.fixture
def mesh():
    upstream, http, _ = support.startUpstream()
    ports = {"admin": support.freePort(), "web": support.freePort(), "upstream": http}
    proc = support.startTxmesh(CONFIG % ports, ports["admin"])
    support.waitForPort(ports["web"], proc=proc.popen)
    yield proc, ports
    proc.stop()
    upstream.stop()


@pytest.mark.skipif(CURL is None, reason="needs curl")
def test_healthcheck_fail_ok_and_drain_listeners_with_curl(mesh):
    proc, ports = mesh
    admin = "http://127.0.0.1:%d" % ports["admin"]
    web = "http://127.0.0.1:%d" % ports["web"]
    assert code(admin + "/ready") == 200
    assert code(web + "/echo") == 200

    # healthcheck fail -> /ready 503 -> ok -> 200; a GET on the action is 405 with Allow: POST
    assert code(admin + "/healthcheck/fail", "-X", "POST") == 200
    status, out = curl("-w", "\n%{http_code}", admin + "/ready")
    assert out == "HEALTHCHECK FAILED\n\n503"
    assert code(web + "/echo") == 200  # still serving: only its readiness changed
    status, out = curl("-i", admin + "/healthcheck/ok")
    assert out.startswith("HTTP/1.1 405") and "Allow: POST" in out
    assert code(admin + "/healthcheck/ok", "-X", "POST") == 200
    assert code(admin + "/ready") == 200

    info = json.loads(curl(admin + "/server_info")[1])
    assert (info["state"], info["node"]["id"], info["config_file"]) == ("live", "it-1", proc.configPath)
    explained = json.loads(curl("-G", admin + "/explain", "--data-urlencode", "path=/slow/1",
                                "--data-urlencode", "header=x-a:1")[1])
    assert (explained["route"]["name"], explained["action"]["cluster"]) == ("slow", "app")
    assert explained["action"]["host"]["address"] == "127.0.0.1:%d" % ports["upstream"]
    assert code(admin + "/logging?level=debug", "-X", "POST") == 200
    assert json.loads(curl(admin + "/logging")[1])["level"] == "debug"

    # a request in flight on an open connection, then drain_listeners
    slow = subprocess.Popen([CURL, "-s", "--max-time", "10", "-w", "\n%{http_code}", web + "/slow/1500"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 5
        while b'downstream_rq_active{listener="web"} 1' not in support.adminGet(ports["admin"],
                                                                                 "/stats?format=text")[1]:
            assert time.monotonic() < deadline, "the slow request never arrived"
            time.sleep(0.05)
        status, out = curl("-X", "POST", admin + "/drain_listeners")
        assert json.loads(out)["stopped"] == 1
        assert code(web + "/echo") == -7  # curl: couldn't connect (the port is closed)
        listeners = json.loads(curl(admin + "/listeners")[1])
        assert [(entry["name"], entry["accepting"], entry["connections"]) for entry in listeners] == [("web", False, 1)]
        assert code(admin + "/ready") == 503
        out, _ = slow.communicate(timeout=10)
    finally:
        if slow.poll() is None:
            slow.kill()
            slow.wait(5)
    assert out.decode().endswith("slow done\n\n200")
    assert json.loads(curl(admin + "/server_info")[1])["state"] == "draining"
    assert proc.stop() in (0, -15)  # the drain at SIGTERM completes with the listener already closed
    assert "drain_listeners: 1 listener(s) stopped accepting" in proc.output()
