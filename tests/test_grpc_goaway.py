"""
Upstream GOAWAY with real grpcio peers: the upstream server is stopped gracefully (``server.stop(grace)`` sends
GOAWAY) while a streaming call runs through txmesh.  The call in flight finishes OK; a new call goes to a new
connection (here, to a second server that shares the port with SO_REUSEPORT), never to the goaway'd one.
"""

import json
import signal
import sys
import time

import grpc
import pytest

from tests import support
from tests.test_grpc_integration import CONFIG, OPTIONS, PEER, call

pytestmark = pytest.mark.timeout(60)

def _stat(admin, name):
    _, body = support.adminGet(admin, "/stats")
    return sum(s["value"] for s in json.loads(body).get(name, []))


def _waitFor(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met within %gs" % (timeout,))
        time.sleep(0.05)


def test_upstream_goaway_lets_the_call_in_flight_finish_and_new_calls_go_elsewhere():
    port, admin, listen = support.freePort(), support.freePort(), support.freePort()
    procs = []
    channel = None
    try:
        first = support.Proc([sys.executable, PEER, str(port), "first"])
        procs.append(first)
        support.waitForPort(port, proc=first.popen)
        text = CONFIG.format(admin=admin, listen=listen, upstream=port, dead=support.freePort())
        mesh = support.startTxmesh(text, admin)
        procs.append(mesh)
        channel = grpc.insecure_channel("127.0.0.1:%d" % (listen,), options=OPTIONS)
        whoami = call(channel, "Unary")
        assert whoami(b"whoami", timeout=10) == b"first"  # txmesh now holds a connection to the first server
        second = support.Proc([sys.executable, PEER, str(port), "second"])
        procs.append(second)
        _waitFor(lambda: "ready" in second.output() or second.popen.poll() is not None)
        assert second.popen.poll() is None, second.output()

        stream = call(channel, "ServerStream", "unary_stream")(b"10:100:slow", timeout=20)
        got = [next(stream)]
        first.signal(signal.SIGUSR1)  # graceful stop: GOAWAY, the stream in flight may finish
        _waitFor(lambda: _stat(admin, "upstream_h2_goaway_received") >= 1)
        # a new call while the goaway'd connection still carries the stream: it goes to a new connection
        assert whoami(b"whoami", timeout=10) == b"second"
        got.extend(stream)
        assert stream.code() == grpc.StatusCode.OK
        assert got == [bytes([65 + i]) * 100 for i in range(10)]
        assert whoami(b"whoami", timeout=10) == b"second"
        first.popen.wait(15)  # the first server exits once its last call ended
        assert _stat(admin, "upstream_h2_goaway_retried") == 0
    finally:
        if channel is not None:
            channel.close()
        for p in reversed(procs):
            p.stop()
