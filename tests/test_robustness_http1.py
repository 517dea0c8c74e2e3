"""
Robustness of the HTTP/1.1 listener under generated and mutated input (seeded, so every run is the same): valid
pipelined requests, chunked and sized bodies, then bytes inserted, deleted, flipped or cut, fed in random splits
through the real filter chain and router to an in-memory upstream that answers every request it gets.

After every feed and clock step: nothing escaped ``dataReceived``; at the end, an open connection has answered
every complete request in order, a closed one ended with a 4xx/5xx or a response that said it closes; no request
is dropped without a word; the request gauge is back to 0 once the connection is gone.
"""

import random

import pytest
from twisted.internet import defer
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from txmesh.protocols.http1.client import HTTP1ClientProtocol
from txmesh.protocols.http1.codec import (
    HTTPCodecError,
    MessageComplete,
    RequestDecoder,
    RequestStarted,
    ResponseDecoder,
    ResponseStarted,
)
from txmesh.testing import InMemoryMesh

CONFIG = """
listeners:
  - name: l
    protocol: http
    address: tcp:0
    route_config:
      virtual_hosts: [{name: all, domains: ["*"], routes: [{match: {prefix: /}, route: {cluster: c}}]}]
clusters: [{name: c, endpoints: [{address: "127.0.0.1:1"}]}]
"""
CASES = 300


class Upstream:
    """One upstream connection: the proxy's client protocol on a StringTransport, answered by a fake server."""

    def __init__(self, rng):
        self.proto = HTTP1ClientProtocol()
        self.transport = StringTransport()
        self.proto.makeConnection(self.transport)
        self.decoder = RequestDecoder()
        self.rng = rng
        self.lost = False
        self.path = None

    def pump(self):
        """Answer the requests the proxy finished sending; sometimes drop the connection instead."""
        if self.lost:
            return False
        if self.transport.disconnecting:
            self.lose()
            return True
        data = self.transport.value()
        if not data:
            return False
        self.transport.clear()
        progress = False
        try:
            events = self.decoder.feed(data)
        except HTTPCodecError as e:
            pytest.fail("the proxy sent a malformed request upstream: %s" % (e,))
        for ev in events:
            if isinstance(ev, HTTPCodecError):
                pytest.fail("the proxy sent a malformed request upstream: %s" % (ev,))
            if type(ev) is RequestStarted:
                self.path = ev.head.path
            elif type(ev) is MessageComplete:
                progress = True
                roll = self.rng.random()
                if roll < 0.05:
                    self.lose()
                    return True
                body = b"ok:" + self.path
                if roll < 0.2:
                    self.proto.dataReceived(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nx-path: " + self.path
                                            + b"\r\n\r\n%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n")
                else:
                    self.proto.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nx-path: " % len(body)
                                            + self.path + b"\r\n\r\n" + body)
        return progress

    def lose(self):
        if not self.lost:
            self.lost = True
            self.proto.connectionLost(Failure(ConnectionDone()))


class InMemoryListener:
    """
    One listener connection on a StringTransport (``server``, ``transport``) wired by txmesh.testing.InMemoryMesh
    to in-memory upstreams that answer every request (``upstreams``).
    """

    def __init__(self, rng, text):
        self.upstreams = []

        def connect(host, clusterConfig):
            u = Upstream(rng)
            self.upstreams.append(u)
            return defer.succeed(u.proto)

        self.mesh = InMemoryMesh(text, connect=connect, seed=1)
        self.clock, self.stats, self.factory = self.mesh.clock, self.mesh.stats, self.mesh.factory
        self.server = self.factory.buildProtocol(None)
        self.transport = StringTransport()
        self.server.makeConnection(self.transport)

    def pump(self):
        for _ in range(100):
            if not any([u.pump() for u in list(self.upstreams)]):
                return

    def close(self):
        """The downstream connection goes away (as the reactor would say after loseConnection)."""
        self.server.connectionLost(Failure(ConnectionDone()))
        self.pump()


class Mesh(InMemoryListener):
    def __init__(self, rng):
        InMemoryListener.__init__(self, rng, CONFIG)


# -- input generation ------------------------------------------------------------------------------------------

def validRequest(rng, i):
    path = b"/r%d" % i
    method = rng.choice([b"GET", b"GET", b"POST", b"PUT", b"HEAD", b"DELETE"])
    head = [method + b" " + path + b" HTTP/1.1", b"Host: app.svc"]
    body = b""
    kind = rng.random()
    if method in (b"POST", b"PUT") or kind < 0.2:
        payload = bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 40)))
        if rng.random() < 0.5:
            head.append(b"Content-Length: %d" % len(payload))
            body = payload
        else:
            head.append(b"Transfer-Encoding: chunked")
            cut = rng.randint(0, len(payload))
            parts = [p for p in (payload[:cut], payload[cut:]) if p]
            body = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n"
            if rng.random() < 0.2:
                body += b"x-trailer: t\r\n"
            body += b"\r\n"
    if rng.random() < 0.1:
        head.append(b"Expect: 100-continue" if body else b"Connection: close")
    for _ in range(rng.randint(0, 3)):
        head.append(b"x-h%d: %s" % (rng.randint(0, 9), bytes(rng.choice(b"abcXYZ019 -") for _ in range(5))))
    return b"\r\n".join(head) + b"\r\n\r\n" + body


def mutate(rng, data):
    data = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        op = rng.random()
        pos = rng.randrange(len(data) + 1) if data else 0
        if op < 0.3 and data:
            del data[pos:pos + rng.randint(1, 4)]
        elif op < 0.55:
            data[pos:pos] = bytes(rng.choice(b"\r\n :\x00\x7f\xff0aZ\t") for _ in range(rng.randint(1, 3)))
        elif op < 0.8 and pos < len(data):
            data[pos] ^= 1 << rng.randrange(8)
        else:
            del data[pos:]
    return bytes(data)


def splits(rng, data, sizes=(1, 2, 7, 30)):
    """``data`` cut at random into parts of the given sizes (or the whole rest)."""
    out = []
    pos = 0
    while pos < len(data):
        n = rng.choice(sizes + (len(data),))
        out.append(data[pos:pos + n])
        pos += n
    return out


def reference(data):
    """
    What a correct listener must answer, as the codec reads ``data``: the request heads started, how many of them
    are complete, whether the input turns bad.
    """
    decoder = RequestDecoder()
    try:
        events = decoder.feed(data)
    except HTTPCodecError:
        return [], 0, True
    heads = []
    complete = 0
    bad = False
    for ev in events:
        if type(ev) is RequestStarted:
            heads.append(ev.head)
        elif type(ev) is MessageComplete:
            complete += 1
        elif isinstance(ev, HTTPCodecError):
            bad = True
    return heads, complete, bad


def responses(data, requests):
    """The final responses in ``data``, read as answers to ``requests`` (then to GETs: local error replies)."""
    decoder = ResponseDecoder()
    for head in requests:
        decoder.expect(head.method)
    for _ in range(2):
        decoder.expect(b"GET")
    return [ev for ev in decoder.feed(data) + decoder.eof() if type(ev) is ResponseStarted]


def run(seed, mutateIt):
    rng = random.Random(seed)
    data = b"".join(validRequest(rng, i) for i in range(rng.randint(1, 4)))
    if mutateIt:
        data = mutate(rng, data)
    mesh = Mesh(rng)
    for part in splits(rng, data):
        mesh.server.dataReceived(part)  # an exception here would be logged by Twisted and drop the connection
        mesh.pump()
        mesh.clock.advance(rng.choice([0, 0, 0.1, 1]))
        mesh.pump()
    for _ in range(5):
        mesh.clock.advance(20)
        mesh.pump()
    expected, complete, bad = reference(data)
    wire = mesh.transport.value()
    got = responses(wire, expected)
    closed = mesh.transport.disconnecting
    context = "seed %d input %r wire %r" % (seed, data, wire)
    # in order: each proxied answer is for the request at its position
    for i, r in enumerate(got):
        xpath = r.head.headers.get(b"x-path")
        if xpath is not None:
            assert i < len(expected) and xpath == expected[i].path, context
    if not closed:
        assert len(got) == complete and not bad, context
    else:
        assert got, "closed without a response: " + context
        last = got[-1]
        assert last.head.status >= 400 or not last.keepAlive, context
        assert len(got) <= complete + 1, context
    mesh.close()
    assert mesh.stats.total("downstream_rq_active") == 0, context
    assert mesh.stats.total("downstream_cx_active") == 0, context


@pytest.mark.parametrize("block", range(3))
def test_valid_pipelined_requests_in_random_splits_are_all_answered_in_order(block):
    for seed in range(block * CASES // 3, (block + 1) * CASES // 3):
        run(seed, False)


@pytest.mark.parametrize("block", range(3))
def test_mutated_requests_are_answered_or_refused_never_dropped(block):
    for seed in range(10000 + block * CASES, 10000 + (block + 1) * CASES):
        run(seed, True)


def test_bad_chunk_inside_a_proxied_request_gives_one_400_and_cancels_the_request():
    """Regression: a malformed chunk while the request was in flight wrote a 400 but left the stream running, so
    the upstream's answer (or a 504) followed the 400 on a closed connection and the close was done twice."""
    mesh = Mesh(random.Random(0))
    mesh.server.dataReceived(b"POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n")
    mesh.server.dataReceived(b"zz\r\n")
    mesh.clock.advance(100)
    mesh.pump()
    [r] = responses(mesh.transport.value(), [])
    assert r.head.status == 400
    assert mesh.transport.disconnecting
    assert mesh.stats.total("downstream_rq_active") == 0
    [u] = mesh.upstreams
    assert u.lost  # the upstream exchange was given up, not left waiting
    mesh.close()
    assert mesh.stats.total("downstream_cx_active") == 0
