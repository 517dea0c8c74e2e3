"""
Hot restart (txmesh/hot_restart.py, hot_restart_wire.py, hot_restart_config.py): the message codec, the hand-over
of real listening sockets by SCM_RIGHTS between two L{HotRestart}s in one process (each end of a real AF_UNIX
socketpair, each side on its own MemoryReactorClock, messages pumped by hand), the state machine's refusals and
timeouts, and the config block's errors.  Nothing sleeps; the sockets are real so descriptors really move.
"""

import os
import socket
import stat

import pytest
from twisted.internet import defer, unix
from twisted.internet.interfaces import ISystemHandle
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock
from zope.interface import implementer
from zope.interface.verify import verifyObject

from txmesh import tcp as txtcp
from txmesh.config import ConfigError, loads
from txmesh.hot_restart import HotRestart, NoHotRestart, _ControlProtocol
from txmesh.hot_restart_takeover import Inheritance, addressFits, receiveSockets, requestSockets, takeOver
from txmesh.hot_restart_config import HotRestartConfig
from txmesh.hot_restart_wire import MAX_MESSAGE, HandoverError, MessageDecoder, encode
from txmesh.interfaces import IHotRestart
from txmesh.twisted_private import adoptTCPPort

pytestmark = pytest.mark.timeout(15)


# -- the codec --


def test_encode_decode_whole_and_byte_by_byte():
    data = encode({"type": "drain", "adopted": ["listener:web"]}) + encode({"type": "draining", "pid": 7})
    whole = MessageDecoder().feed(data)
    assert [m["type"] for m, _ in whole] == ["drain", "draining"]
    assert whole[0][0]["adopted"] == ["listener:web"] and whole[0][0]["protocol"] == 1
    d = MessageDecoder()
    out = []
    for i in range(len(data)):
        out += d.feed(data[i:i + 1])
    assert [m for m, _ in out] == [m for m, _ in whole]


def test_declared_descriptors_go_with_their_message():
    r, w = os.pipe()
    d = MessageDecoder()
    data = encode({"type": "sockets", "fds": 1, "sockets": [{"name": "admin"}]})
    assert d.feed(data[:3], [r]) == []
    [(message, fds)] = d.feed(data[3:] + encode({"type": "draining"}))[:1]
    assert fds == [r] and message["type"] == "sockets"
    os.close(r)
    os.close(w)


def _closed(fd):
    try:
        os.fstat(fd)
    except OSError:
        return True
    return False


@pytest.mark.parametrize("data,reason", [
    (b"\xff\xff\xff\xff", "over the %d-byte limit" % (MAX_MESSAGE,)),
    (b"\x00\x00\x00\x03abc", "not a JSON message"),
    (b"\x00\x00\x00\x02[]", "must be a JSON object"),
    (b'\x00\x00\x00\x0e{"protocol":2}', "protocol version 2"),
    (b'\x00\x00\x00\x0e{"protocol":1}', "needs a 'type'"),
    (encode({"type": "sockets", "fds": 2}), "declares 2 descriptor(s), 1 arrived"),
    (encode({"type": "error", "reason": "busy"}), "the other process refused: busy"),
])
def test_malformed_input_raises_and_closes_every_descriptor(data, reason):
    r, w = os.pipe()
    os.close(w)
    with pytest.raises(HandoverError) as info:
        MessageDecoder().feed(data, [r])
    assert reason in info.value.reason
    assert _closed(r)


def test_close_closes_unclaimed_descriptors():
    r, w = os.pipe()
    d = MessageDecoder()
    d.feed(b"\x00", [r, w])
    assert d.close() == 2 and _closed(r) and _closed(w)


# -- two processes in one: real sockets, memory reactors --


class SocketTransport:
    """A transport over one end of a real AF_UNIX stream: each write goes out at once with the queued fds."""

    def __init__(self, sock, protocol):
        self.sock = sock
        self.protocol = protocol
        self.fds = []
        self.closed = False

    def sendFileDescriptor(self, fd):
        self.fds.append(fd)

    def write(self, data):
        if not self.closed:
            socket.send_fds(self.sock, [data], self.fds)
            self.fds = []

    def loseConnection(self):
        if not self.closed:
            self.closed = True
            self.sock.close()
            self.protocol.connectionLost(None)

    def deliver(self):
        """Hand the protocol what the peer sent (descriptors are closed: a control server gets none)."""
        self.sock.setblocking(False)
        while not self.closed:
            try:
                data, fds, _, _ = socket.recv_fds(self.sock, 65536, 16)
            except BlockingIOError:
                return
            for fd in fds:
                os.close(fd)
            if not data:
                self.loseConnection()
                return
            self.protocol.dataReceived(data)


@implementer(ISystemHandle)
class HandleTransport(SocketTransport):
    def getHandle(self):
        return self.sock


class Reactor(MemoryReactorClock):
    """Adopts ports for real (txmesh's TCP port), adopts connections as SocketTransports, binds UNIX for real."""

    def __init__(self):
        MemoryReactorClock.__init__(self)
        self.connections = []

    def adoptStreamPort(self, fd, family, factory):
        return adoptTCPPort(txtcp.Port, self, fd, family, factory)

    def adoptStreamConnection(self, fd, family, factory):
        protocol = factory.buildProtocol(None)
        transport = SocketTransport(socket.socket(fileno=os.dup(fd)), protocol)
        self.connections.append(transport)
        protocol.makeConnection(transport)
        return transport

    def listenUNIX(self, address, factory, backlog=50, mode=0o666, wantPID=0):
        p = unix.Port(address, factory, backlog, mode, self)
        p.startListening()
        return p


class BindTCP:
    """An endpoint binding 127.0.0.1:0 with txmesh's TCP port on ``reactor``."""

    def __init__(self, reactor):
        self.reactor = reactor
        self.calls = 0

    def listen(self, factory):
        self.calls += 1
        return defer.succeed(txtcp.listenTCP(self.reactor, 0, factory, interface="127.0.0.1"))


class Served(Factory):
    def __init__(self):
        self.built = []

    def buildProtocol(self, addr):
        p = Protocol()
        self.built.append(p)
        return p


def _listen(hot, name, address, endpoint, factory=None):
    ports = []
    hot.endpoint(name, address, endpoint).listen(factory or Served()).addCallback(ports.append)
    return ports[0]


def _closePort(reactor, port):
    port.stopListening()
    reactor.advance(0)


class Pair:
    """An old process serving one listener and the admin, and the control connection a new process opened."""

    def __init__(self, tmp_path, timeout=5.0, **kwargs):
        self.config = HotRestartConfig(socket=str(tmp_path / "hot.sock"), timeout=timeout)
        self.oldReactor = Reactor()
        self.drained = []
        self.old = HotRestart(self.oldReactor, self.config, lambda: self.drained.append(True), pid=100,
                              environment={"WATCHDOG_USEC": "30000000"}, **kwargs)
        self.web = _listen(self.old, "listener:web", "tcp:0:interface=127.0.0.1", BindTCP(self.oldReactor))
        self.admin = _listen(self.old, "admin", "tcp:0:interface=127.0.0.1", BindTCP(self.oldReactor))
        self.client, server = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.client.settimeout(5)
        self.server = self.connect(server)

    def connect(self, sock, transport=SocketTransport):
        protocol = _ControlProtocol(self.old)
        t = transport(sock, protocol)
        protocol.makeConnection(t)
        return t

    def handOver(self):
        self.client.sendall(requestSockets(200))
        self.server.deliver()
        return receiveSockets(self.client)

    def close(self):
        for port in (self.web, self.admin):
            if port.connected:
                _closePort(self.oldReactor, port)
        self.old.stop()
        self.oldReactor.advance(0)


@pytest.fixture
def pair(tmp_path):
    p = Pair(tmp_path)
    p.old.serving()
    yield p
    p.close()


def test_contracts(tmp_path):
    verifyObject(IHotRestart, HotRestart(Reactor(), HotRestartConfig(str(tmp_path / "s")), lambda: None))
    verifyObject(IHotRestart, NoHotRestart())


def test_a_serving_process_listens_on_its_control_socket_mode_0600(pair):
    assert pair.old.state == "serving"
    assert stat.S_IMODE(os.stat(pair.config.socket).st_mode) == 0o600
    assert stat.S_ISSOCK(os.stat(pair.config.socket).st_mode)


def test_full_hand_over(pair):
    inheritance = pair.handOver()
    assert pair.old.state == "handing over"
    assert (inheritance.pid, inheritance.names()) == (100, ["admin", "listener:web"])
    assert inheritance.environment == {"WATCHDOG_USEC": "30000000"}

    # the new process listens on the inherited socket with txmesh's TCP port; nothing is bound anew
    newReactor, announced, fallback, served = Reactor(), [], BindTCP(None), Served()
    new = HotRestart(newReactor, pair.config, lambda: None, inheritance, announced.append, pid=200)
    webPort = pair.web.getHost().port
    port = _listen(new, "listener:web", "tcp:%d:interface=127.0.0.1" % webPort, fallback, served)
    assert isinstance(port, txtcp.Port) and port.getHost().port == webPort and fallback.calls == 0

    # a client waiting in the backlog while both hold the socket is accepted by the new process's port
    waiting = socket.create_connection(("127.0.0.1", webPort), timeout=5)
    port.doRead()
    assert len(served.built) == 1 and isinstance(served.built[0].transport, txtcp.Server)

    # serving: MAINPID to the service manager, the drain request on the inherited connection
    new.serving()
    assert announced == [200] and new.state == "taking over"
    assert inheritance.names() == []  # the admin socket was not taken: closed here, drained by the old one
    pair.server.deliver()
    assert pair.old.state == "draining"
    assert pair.oldReactor.readers.isdisjoint({pair.web})  # stopped accepting at once
    pair.oldReactor.advance(0)  # the control port closes, then the answer and the drain
    assert pair.drained == [True] and not os.path.exists(pair.config.socket)
    newReactor.connections[0].deliver()
    assert new.state == "serving" and new.controlPort is not None
    assert stat.S_IMODE(os.stat(pair.config.socket).st_mode) == 0o600

    # the old process stops listening: its copy closes without shutdown(2); the new port still accepts, and the
    # connection it accepted earlier was not reset
    queued = socket.create_connection(("127.0.0.1", webPort), timeout=5)
    _closePort(pair.oldReactor, pair.web)
    port.doRead()
    assert len(served.built) == 2
    for client, protocol in zip((waiting, queued), served.built):
        protocol.transport.write(b"still here")
        assert client.recv(100) == b"still here"
    for s in (waiting, queued):
        s.close()
    _closePort(newReactor, port)
    new.stop()
    newReactor.advance(0)


def test_sockets_not_adopted_close_as_usual_in_the_old_process(pair):
    inheritance = pair.handOver()
    new = HotRestart(Reactor(), pair.config, lambda: None, inheritance, pid=200)
    _listen(new, "listener:web", "tcp:0:interface=127.0.0.1", BindTCP(new.reactor))  # the same name: adopted
    new.serving()
    pair.server.deliver()
    pair.oldReactor.advance(0)
    adminPort = pair.admin.getHost().port
    _closePort(pair.oldReactor, pair.admin)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", adminPort), timeout=5)
    _closePort(new.reactor, new.ports["listener:web"])


def test_a_new_process_that_goes_away_before_it_serves_changes_nothing(pair):
    inheritance = pair.handOver()
    inheritance.closeUnused()
    inheritance.connection.close()
    pair.server.deliver()
    assert pair.old.state == "serving" and pair.drained == []
    assert pair.web in pair.oldReactor.readers
    # and the next one may try again
    client, server = socket.socketpair()
    pair.client, pair.server = client, pair.connect(server)
    pair.client.settimeout(5)
    assert pair.handOver().names() == ["admin", "listener:web"]


def test_a_new_process_that_does_not_serve_in_time_is_given_up(tmp_path):
    p = Pair(tmp_path, timeout=3.0)
    p.old.serving()
    p.handOver().closeUnused()
    p.oldReactor.advance(3.0)
    assert p.old.state == "serving" and p.server.closed and p.drained == []
    p.close()


def test_refusals(tmp_path):
    p = Pair(tmp_path)
    # not serving yet (discovered clusters warming): no hand-over
    with pytest.raises(HandoverError, match="cannot hand over while starting"):
        p.handOver()
    p.old.serving()
    client, server = socket.socketpair()
    p.client, p.server = client, p.connect(server)
    p.client.settimeout(5)
    p.handOver()
    # a second new process while one is under way
    other, server = socket.socketpair()
    other.settimeout(5)
    second = p.connect(server)
    other.sendall(requestSockets(300))
    second.deliver()
    with pytest.raises(HandoverError, match="cannot hand over while handing over"):
        receiveSockets(other)
    # a drain request from a connection that got no sockets
    third, server = socket.socketpair()
    third.settimeout(5)
    t = p.connect(server)
    third.sendall(encode({"type": "drain", "adopted": []}))
    t.deliver()
    assert p.old.state == "handing over" and p.drained == []
    p.close()


def test_a_peer_of_another_user_is_refused(tmp_path):
    p = Pair(tmp_path, allowedUIDs={os.getuid() + 12345})
    p.old.serving()
    client, server = socket.socketpair()
    t = p.connect(server, HandleTransport)
    assert t.closed
    client.close()
    p.close()


def test_the_old_process_does_not_answer_the_drain_request(pair):
    inheritance = pair.handOver()
    new = HotRestart(Reactor(), pair.config, lambda: None, inheritance, pid=200)
    new.serving()
    new.reactor.advance(pair.config.timeout)
    # both serve; the old one's control socket is still there: the new one cannot listen on it
    assert new.state == "serving" and new.controlPort is None
    assert pair.drained == []


def test_take_over_with_nobody_there(tmp_path):
    path = str(tmp_path / "hot.sock")
    assert takeOver(path, 2) is None
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(path)  # a file left by a process that did not stop cleanly: connection refused
    stale.close()
    assert takeOver(path, 2) is None


def test_take_over_unexpected_answer(tmp_path):
    a, b = socket.socketpair()
    b.sendall(encode({"type": "draining"}))
    with pytest.raises(HandoverError, match="expected a 'sockets' message"):
        receiveSockets(a)
    b.close()
    a.close()


# -- which inherited socket a listener takes --


@pytest.fixture
def listening():
    s = socket.create_server(("127.0.0.1", 0))
    yield s
    s.close()


def test_address_fits(listening, tmp_path):
    port = listening.getsockname()[1]
    assert addressFits(listening, "tcp:%d:interface=127.0.0.1" % port)
    assert addressFits(listening, "tcp:0:interface=127.0.0.1")
    assert not addressFits(listening, "tcp:%d:interface=127.0.0.2" % port)
    assert not addressFits(listening, "tcp:%d" % port)  # all interfaces is another address
    assert not addressFits(listening, "tcp:%d:interface=127.0.0.1" % (port + 1))
    assert addressFits(listening, "systemd:domain=INET:index=0")
    assert not addressFits(listening, "unix:/run/x.sock")
    path = str(tmp_path / "l.sock")
    u = socket.socket(socket.AF_UNIX)
    u.bind(path)
    u.listen()
    assert addressFits(u, "unix:" + path) and not addressFits(u, "unix:/elsewhere")
    u.close()


def test_take_by_name_then_by_address(listening):
    port = listening.getsockname()[1]
    inheritance = Inheritance(1, [("listener:old-name", listening)], {}, None)
    assert inheritance.take("listener:web", "tcp:0:interface=127.0.0.1") is None  # port 0 never matches by address
    assert inheritance.take("listener:web", "tcp:%d:interface=127.0.0.1" % port) is listening  # renamed
    assert inheritance.adopted == ["listener:old-name"]


def test_take_refuses_a_moved_listener(listening):
    port = listening.getsockname()[1]
    inheritance = Inheritance(1, [("listener:web", listening)], {}, None)
    assert inheritance.take("listener:web", "tcp:%d:interface=127.0.0.1" % (port + 1)) is None
    assert inheritance.closeUnused() == ["listener:web"]


# -- config --


BASE = """\
listeners:
  - name: web
    address: tcp:15001:interface=127.0.0.1
    route_config:
      virtual_hosts:
        - name: all
          domains: ["*"]
          routes:
            - match: {prefix: /}
              direct_response: {status: 200}
"""


def test_config_block():
    cfg = loads(BASE + "hot_restart:\n  socket: /run/txmesh/hot.sock\n  timeout: 5s\n")
    assert cfg.hotRestart == HotRestartConfig(socket="/run/txmesh/hot.sock", timeout=5.0)
    assert loads(BASE).hotRestart is None
    assert loads(BASE + "hot_restart:\n  socket: /run/txmesh/hot.sock\n").hotRestart.timeout == 30.0


@pytest.mark.parametrize("block,expected", [
    ("hot_restart:\n  socket: hot.sock\n",
     "mesh.yaml:12: hot_restart.socket: must be an absolute path, not 'hot.sock'"),
    ("hot_restart:\n  socket: /%s\n" % ("x" * 110,),
     "mesh.yaml:12: hot_restart.socket: a UNIX socket path has at most 107 bytes, got 111"),
    ("hot_restart:\n  timeout: 5s\n", "mesh.yaml:11: hot_restart: missing required key 'socket'"),
    ("hot_restart:\n  socket: /run/hot.sock\n  port: 1\n",
     "mesh.yaml:13: hot_restart.port: unknown key 'port' (allowed: socket, timeout)"),
    ("hot_restart:\n  socket: /run/hot.sock\n  timeout: 0.5s\n",
     "mesh.yaml:13: hot_restart.timeout: must be between 1s and 1h"),
    ("hot_restart:\n  socket: /run/admin.sock\nadmin:\n  address: unix:/run/admin.sock\n",
     "mesh.yaml:12: hot_restart.socket: '/run/admin.sock' is also the address of a listener or the admin"),
])
def test_config_errors(block, expected):
    with pytest.raises(ConfigError) as info:
        loads(BASE + block, filename="mesh.yaml")
    assert str(info.value) == expected


def test_schema():
    import json
    from importlib import resources

    import jsonschema
    import yaml

    validator = jsonschema.Draft202012Validator(
        json.loads(resources.files("txmesh").joinpath("mesh.schema.json").read_text()))
    validator.validate(yaml.safe_load(BASE + "hot_restart:\n  socket: /run/txmesh/hot.sock\n  timeout: 10s\n"))
    for bad in ("hot_restart:\n  socket: hot.sock\n", "hot_restart:\n  timeout: 10s\n",
                "hot_restart:\n  socket: /run/hot.sock\n  port: 1\n"):
        with pytest.raises(jsonschema.ValidationError):
            validator.validate(yaml.safe_load(BASE + bad))
