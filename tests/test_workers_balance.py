"""
``connection_balance: exact`` (txmesh/workers_balance.py) on real sockets and a memory reactor: the parent's accept
loop hands each connection to the worker with the fewest, skips a worker that cannot take one, counts what none
took; a worker adopts what it is handed into its listener's factory and reports each close; a paused port refuses.
"""

import socket

import pytest
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IListeningPort, IReadDescriptor
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from zope.interface.verify import verifyObject

from tests.test_workers import FakePort
from txmesh import config
from txmesh.errors import ConfigError
from txmesh.stats import StatsStore
from txmesh.workers_balance import ExactBalancer, HandedPort, ParentHandoff, WorkerHandoff, handoffPair


class Worker:
    def __init__(self, index, reactor, closed):
        self.index = index
        parentEnd, self.end = handoffPair()
        self.handoff = ParentHandoff(reactor, parentEnd, self, closed)

    def received(self):
        """[(record, descriptors)] waiting on the worker's end."""
        self.end.setblocking(False)
        out = []
        while True:
            try:
                data, fds, _, _ = socket.recv_fds(self.end, 1024, 8)
            except BlockingIOError:
                return out
            out.append((data, fds))


@pytest.fixture
def world():
    reactor = MemoryReactorClock()
    listening = socket.socket()
    listening.bind(("127.0.0.1", 0))
    listening.listen(16)
    closed = []
    workers = [Worker(i, reactor, lambda w, name: closed.append((w.index, name))) for i in range(2)]

    class Port:
        def fileno(self):
            return listening.fileno()

    stats = StatsStore()
    balancer = ExactBalancer(reactor, "web", Port(), lambda: workers, stats)
    clients = []

    def connect(n):
        for _ in range(n):
            clients.append(socket.create_connection(listening.getsockname(), timeout=5))

    yield reactor, balancer, workers, connect, clients, closed, stats
    for c in clients:
        c.close()
    balancer.stop()
    listening.close()
    for w in workers:
        w.handoff.stop()
        w.end.close()


def test_each_connection_goes_to_the_worker_with_the_fewest(world):
    reactor, balancer, workers, connect, clients, closed, stats = world
    verifyObject(IReadDescriptor, balancer)
    balancer.start()
    assert balancer in reactor.getReaders()
    connect(4)
    balancer.doRead()
    got = [w.received() for w in workers]
    assert [len(g) for g in got] == [2, 2] and all(data == b"hweb" and len(fds) == 1 for g in got for data, fds in g)
    assert balancer.counts == {0: 2, 1: 2} and balancer.handed.value == 4
    # the descriptors are the accepted connections: what a client sends arrives on the worker's copy
    clients[0].sendall(b"ping")
    first = socket.socket(fileno=got[0][0][1][0])
    assert first.recv(4) == b"ping"
    first.close()
    for g in got:
        for _, fds in g[1:] if g is got[0] else g:
            socket.socket(fileno=fds[0]).close()
    # a worker's close is counted down; the next connection goes there
    balancer.closed(workers[1])
    connect(1)
    balancer.doRead()
    assert [len(w.received()) for w in workers] == [0, 1] and balancer.counts == {0: 2, 1: 2}
    balancer.workerEnded(workers[0])
    assert balancer.counts == {1: 2}


def test_a_worker_that_cannot_take_it_is_skipped_and_none_means_closed(world):
    reactor, balancer, workers, connect, clients, closed, stats = world
    workers[0].end.close()  # worker 0 is gone: its socket refuses
    connect(1)
    balancer.doRead()
    assert balancer.counts == {1: 1} and len(workers[1].received()) == 1
    workers[1].end.close()
    connect(1)
    balancer.doRead()
    assert balancer.failed.value == 1 and balancer.handed.value == 1
    clients[-1].settimeout(5)
    assert clients[-1].recv(10) == b""  # closed by the parent


def test_the_parent_hears_each_close_a_worker_reports(world):
    reactor, balancer, workers, connect, clients, closed, stats = world
    workers[1].end.send(b"cweb")
    workers[1].end.send(b"cweb")
    assert workers[1].handoff.doRead() is None
    assert closed == [(1, "web"), (1, "web")]
    workers[1].end.close()
    assert workers[1].handoff.doRead() is not None  # the worker is gone: the reactor drops the reader


class Recorder(Protocol):
    def __init__(self, made):
        self.made = made

    def connectionMade(self):
        self.made.append(self)


def test_a_worker_adopts_a_handed_connection_into_its_factory_and_reports_its_close():
    reactor = MemoryReactorClock()
    made = []
    factory = Factory.forProtocol(lambda: Recorder(made))
    shared = FakePort(15001)
    port = HandedPort(reactor, shared, factory)
    verifyObject(IListeningPort, port)
    assert shared.paused  # the shared socket is never accepted from here
    parentEnd, workerEnd = handoffPair()
    closes = []
    parent = ParentHandoff(reactor, parentEnd, object(), lambda w, name: closes.append(name))
    handoff = WorkerHandoff(reactor, workerEnd.detach(), {"web": port})
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    client = socket.create_connection(server.getsockname(), timeout=5)
    conn, _ = server.accept()
    try:
        assert parent.send("web", conn.fileno())
        handoff.doRead()
        (protocol,) = made
        assert protocol.transport.getPeer().port == client.getsockname()[1]
        protocol.transport.connectionLost(Failure(ConnectionDone()))
        parent.doRead()
        assert closes == ["web"]
        # paused (the accept gate, a drain): refused, closed, and reported at once
        port.pauseProducing()
        assert parent.send("web", conn.fileno())
        handoff.doRead()
        parent.doRead()
        assert len(made) == 1 and closes == ["web", "web"] and handoff.refused == 1
        # for a listener it does not have: the same
        port.resumeProducing()
        assert parent.send("other", conn.fileno())
        handoff.doRead()
        parent.doRead()
        assert closes == ["web", "web", "other"]
        port.stopListening()
        assert shared.stopped and not port.listening
    finally:
        for s in (client, conn, server):
            s.close()
        handoff.stop()
        parent.stop()


def test_connection_balance_is_kernel_or_exact_and_fixed_while_workers_run(tmp_path):
    base = """
workers: %d
listeners:
  - name: web
    address: tcp:15001:interface=127.0.0.1
    connection_balance: %s
    route_config: {virtual_hosts: [{name: a, domains: ["*"], routes: [{match: {prefix: /}, direct_response: {status: 200}}]}]}
"""
    assert config.loads(base % (2, "exact")).listeners[0].connectionBalance == "exact"
    assert config.loads(base % (1, "kernel")).listeners[0].connectionBalance == "kernel"
    with pytest.raises(ConfigError) as e:
        config.loads(base % (2, "round_robin"), filename="mesh.yaml")
    assert "mesh.yaml:6: listeners[0].connection_balance: must be kernel, exact or reuse_port" in str(e.value)
    from txmesh.config_diff import diffConfigs

    with pytest.raises(ConfigError) as e:
        diffConfigs(config.loads(base % (2, "kernel")), config.loads(base % (2, "exact")))
    assert "listeners[0].connection_balance" in str(e.value) and "restart" in str(e.value)
    diffConfigs(config.loads(base % (1, "kernel")), config.loads(base % (1, "exact")))  # one process: no matter
