"""
Dubbo's READONLY event across hot restarts, with the real sofa-rpc-node consumer and provider (tests/dubbo_peers):

  loop_consumer.js --> outbound txmesh --> inbound txmesh (hot-restarted) --> provider.js
  loop_consumer.js ------------------------^   (a second consumer, straight to the inbound)

The inbound sidecar is hot-restarted under back-to-back calls: its old process drains with READONLY and
``limits.drain_grace``.  The outbound sidecar's Dubbo client honours READONLY (its pool stops using the connection and
opens another, to the new process): no call through it may be lost.  The direct consumer's dubbo-remoting decodes
every event request as a heartbeat and its connection ignores it (node_modules/dubbo-remoting/lib/protocol/request.js,
sofa-rpc-node's RpcConnection listens to responses only), so for it READONLY changes nothing: its losses are
reported, not asserted (docs/operations.md has the figures).
"""

import os
import subprocess
import sys
import time

import pytest

from tests import support
from tests.test_integration_dubbo import NODE, PEERS
from tests.test_integration_hot_restart import TWISTD, _waitForLine
from tests.test_pair_integration import DUBBO

pytestmark = [pytest.mark.timeout(60),
              pytest.mark.skipif(not DUBBO, reason="node or the Dubbo peers (npm ci in tests/dubbo_peers) missing")]

ROUTE = """    route_config:
      virtual_hosts:
        - name: all
          domains: ["*"]
          routes:
            - match: {{dubbo: {{interface: "org.txmesh.peers.*"}}}}
              route: {{cluster: next, timeout: 5s}}
"""
INBOUND = """
drain_timeout: 5s
hot_restart: {{socket: {sock}, timeout: 10s}}
admin: {{address: "tcp:{admin}:interface=127.0.0.1"}}
listeners:
  - name: dubbo_in
    protocol: dubbo
    address: tcp:{port}:interface=127.0.0.1
    limits: {{drain_grace: {grace}}}
""" + ROUTE + """
clusters:
  - {{name: next, protocol: dubbo, endpoints: [{{address: "127.0.0.1:{next}"}}]}}
"""
OUTBOUND = """
admin: {{address: "tcp:{admin}:interface=127.0.0.1"}}
listeners:
  - name: dubbo_out
    protocol: dubbo
    address: tcp:{port}:interface=127.0.0.1
""" + ROUTE + """
clusters:
  - {{name: next, protocol: dubbo, endpoints: [{{address: "127.0.0.1:{next}"}}]}}
"""


class Consumer:
    """tests/dubbo_peers/loop_consumer.js: echo() back to back on one connection; ``counts()`` so far."""

    def __init__(self, port):
        self.popen = subprocess.Popen([NODE, os.path.join(PEERS, "loop_consumer.js"), "127.0.0.1:%d" % port],
                                      cwd=PEERS, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=subprocess.DEVNULL)
        self.lines = support.JsonLines(self.popen)
        self.lines.next(15)  # ready

    def counts(self):
        self.popen.stdin.write(b"\n")
        self.popen.stdin.flush()
        return self.lines.next(10)

    def waitFor(self, ok, timeout=10):
        deadline = time.monotonic() + timeout
        while self.counts()["ok"] < ok:
            assert time.monotonic() < deadline, self.counts()
            time.sleep(0.05)

    def stop(self):
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(5)


def hotRestarts(tmp_path, grace, restarts):
    """Run the chain above, hot-restart the inbound ``restarts`` times; @return: (via outbound, direct) counts."""
    procs, consumers = [], []
    try:
        providerPort = support.freePort()
        provider = support.Proc([NODE, os.path.join(PEERS, "provider.js"), str(providerPort)], cwd=PEERS)
        procs.append(provider)
        support.waitForPort(providerPort, proc=provider.popen)
        inPort, outPort, inAdmin, outAdmin = (support.freePort() for _ in range(4))
        text = INBOUND.format(sock=tmp_path / "hot.sock", admin=inAdmin, port=inPort, grace=grace, next=providerPort)
        if grace is None:  # a txmesh without drain_grace (the figures before READONLY)
            text = "\n".join(line for line in text.split("\n") if "drain_grace" not in line)
        inbound = support.startTxmesh(text, inAdmin)
        procs.append(inbound)
        procs.append(support.startTxmesh(OUTBOUND.format(admin=outAdmin, port=outPort, next=inPort), outAdmin))
        support.waitForPort(inPort)
        support.waitForPort(outPort)
        via, direct = Consumer(outPort), Consumer(inPort)
        consumers += [via, direct]
        env = dict(os.environ, PYTHONPATH=support.ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        old = inbound
        for _ in range(restarts):
            via.waitFor(via.counts()["ok"] + 100)
            direct.waitFor(direct.counts()["ok"] + 100)
            new = support.Proc(TWISTD + ["--config", inbound.configPath, "--hot-restart"], env=env)
            procs.append(new)
            assert old.popen.wait(20) == 0, old.output()
            _waitForLine(new, "took over from pid %d" % (old.pid,))
            old = new
        via.waitFor(via.counts()["ok"] + 100)
        direct.waitFor(direct.counts()["ok"] + 100)
        return via.counts(), direct.counts()
    finally:
        for c in consumers:
            c.stop()
        for p in reversed(procs):
            p.stop()


def test_readonly_spares_the_calls_of_a_client_that_honours_it(tmp_path):
    via, direct = hotRestarts(tmp_path, "1s", 1)
    print("drain_grace 1s, 1 hot restart: through the outbound %r; straight to the inbound %r" % (via, direct))
    assert via["errors"] == {}, via  # txmesh's Dubbo client left each read-only connection in time
    assert via["ok"] > 200 and direct["ok"] > 200
    assert direct["errors"].keys() <= {"RpcSocketCloseError"}, direct  # at most the call the close raced


if __name__ == "__main__":
    # the before/after figures of docs/operations.md: python -m tests.test_integration_dubbo_drain GRACE RESTARTS
    import pathlib
    import tempfile
    grace, restarts = (None if sys.argv[1] == "none" else sys.argv[1]), int(sys.argv[2])
    with tempfile.TemporaryDirectory() as d:
        print(grace, restarts, hotRestarts(pathlib.Path(d), grace, restarts))
