"""
The txmesh reactor (txmesh/reactor.py, the loop in txmesh/twisted_private.py), each scenario in a subprocess
(tests/reactor_scripts.py) so the global reactor it installs never leaks into the suite; Twisted's epoll reactor
runs the same scenario for comparison.
"""

import hashlib
import json
import os
import subprocess
import sys

import pytest

from tests import support

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "tests", "reactor_scripts.py")


def run(*args, code=None):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, SCRIPT, *args] if code is None else [sys.executable, "-c", code]
    p = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout.strip().splitlines()[-1]), p.stderr


def test_exception_in_dataReceived_is_logged_as_twisted_logs_it_and_the_connection_closed():
    ours, oursErr = run("exception", "txmesh")
    stock, _ = run("exception", "epoll")
    assert ours["reactor"] == "txmesh.reactor.TxmeshReactor"
    assert ours["serverTransport"] == "txmesh.tcp.Port"
    # logged once, as an error with its failure, in the connection's log context (system = its logPrefix)
    assert ours["errors"] == 1
    assert ours["failureType"] == "ValueError"
    assert ours["system"] == ours["log_system"] == "Boom,0,127.0.0.1"
    assert 'raise ValueError("boom in dataReceived")' in ours["traceback"]
    assert "Unhandled Error" in oursErr and "boom in dataReceived" in oursErr
    # the connection closed: the server's protocol lost it with the exception, the client saw it closed
    assert (ours["serverLost"], ours["clientLost"]) == ("ValueError", "ConnectionDone")
    # and all of it exactly as Twisted's loop does it (the traceback differs only in the reactor's own frame)
    for key in ("errors", "failureType", "system", "log_system", "keys", "serverLost", "clientLost"):
        assert ours[key] == stock[key], key
    assert ours["traceback"].split("\n", 3)[3] == stock["traceback"].split("\n", 3)[3]


@pytest.mark.parametrize("kind", ["txmesh", "epoll"])
def test_timers_callFromThread_spawnProcess_and_tcp_still_work(kind):
    out, _ = run("basics", kind)
    assert "error" not in out, out.get("error")
    assert out["timers"] == ["0", "a", "b"]
    assert out["threadOk"] is True
    assert out["spawned"] == ["spawned", 0]
    assert out["echoOk"] is True  # 4 MiB echoed intact, in order
    assert out["refused"] == "ConnectionRefusedError"
    if kind == "txmesh":  # endpoint strings (tcp:, and systemd:'s adoptStreamPort) reach txmesh's transports
        assert (out["serverConn"], out["clientConn"]) == ("txmesh.tcp.Server", "txmesh.tcp.Client")
        assert out["adopted"] == "txmesh.tcp.Port"
    else:
        assert (out["serverConn"], out["clientConn"]) == ("twisted.internet.tcp.Server",
                                                          "twisted.internet.tcp.Client")
        assert out["adopted"] == "twisted.internet.tcp.Port"


@pytest.mark.parametrize("kind", ["txmesh", "epoll"])
def test_startTLS_after_held_plain_bytes_keeps_their_order(kind):
    """Plain bytes the transport still holds go out before the TLS handshake, then TLS works both ways."""
    out, _ = run("starttls", kind)
    assert (out["plainOk"], out["tlsEcho"], out["clientLost"]) == (True, True, "ConnectionDone")
    if kind == "txmesh":
        assert out["heldAtStartTLS"] is True  # the case under test: startTLS with bytes held


INSTALL = """
import json
%s
from txmesh.tap import installDefaultReactor
installed = installDefaultReactor()
from twisted.internet import reactor
from twisted.application.reactors import getReactorTypes
print(json.dumps({"installed": installed, "reactor": type(reactor).__name__,
                  "plugins": sorted(r.shortName for r in getReactorTypes())}))
"""


def test_twistd_txmesh_installs_the_txmesh_reactor_unless_another_was_chosen():
    out, _ = run(code=INSTALL % "")
    assert (out["installed"], out["reactor"]) == (True, "TxmeshReactor")
    assert "txmesh-epoll" in out["plugins"]  # twistd -r txmesh-epoll
    # twistd -r poll installs its reactor while parsing options, before the plugin's makeService
    out, _ = run(code=INSTALL % "from twisted.internet import pollreactor; pollreactor.install()")
    assert (out["installed"], out["reactor"]) == (False, "PollReactor")


PROXY = """
admin:
  address: tcp:{admin}:interface=127.0.0.1
listeners:
  - name: http
    protocol: http
    address: tcp:{listen}:interface=127.0.0.1
    filters: [{{name: router}}]
    route_config:
      virtual_hosts:
        - name: app
          domains: ["*"]
          routes: [{{match: {{prefix: /}}, route: {{cluster: echo}}}}]
clusters:
  - name: echo
    endpoints: [{{address: "127.0.0.1:{echo}"}}]
"""


@pytest.mark.parametrize("twistdArgs,reactorClass", [((), "txmesh.reactor.TxmeshReactor"),
                                                     (("-r", "epoll"), "twisted.internet.epollreactor.EPollReactor"),
                                                     (("-r", "txmesh-epoll"), "txmesh.reactor.TxmeshReactor")])
def test_twistd_txmesh_proxies_on_its_reactor_or_the_one_chosen_with_r(twistdArgs, reactorClass):
    import http.client

    procs = []
    try:
        up, echo, _ = support.startUpstream()
        procs.append(up)
        admin, listen = support.freePort(), support.freePort()
        tx = support.startTxmesh(PROXY.format(admin=admin, listen=listen, echo=echo), admin, twistdArgs=twistdArgs)
        procs.append(tx)
        support.waitForPort(listen, proc=tx.popen)
        c = http.client.HTTPConnection("127.0.0.1", listen, timeout=10)
        for i in range(3):  # keep-alive: the connections reused
            body = os.urandom(1 << 20)  # more than the kernel takes at once: partial sends and held bytes
            c.request("POST", "/echo/%d" % i, body=body, headers={"Host": "app.svc"})
            r = c.getresponse()
            assert r.status == 200
            echoed = json.loads(r.read())
            assert echoed["body_sha256"] == hashlib.sha256(body).hexdigest()
            c.request("GET", "/bytes/3000000", headers={"Host": "app.svc"})
            r = c.getresponse()
            assert (r.status, r.read()) == (200, b"x" * 3000000)
        c.close()
        assert ", reactor %s, config " % reactorClass in tx.output()  # the startup version line (txmesh.startup)
    finally:
        for p in reversed(procs):
            p.stop()
