"""
txmesh.twisted_private on the installed Twisted: every private name it relies on still exists and still means what
the module's docstrings say.  setup.cfg's upper bound on Twisted is the newest release these tests passed on; when
one fails after an upgrade, the message names the attribute and the version.

The transports are real L{twisted.internet.tcp.Server} objects on a loopback TCP connection made with plain sockets,
driven by a MemoryReactorClock: no reactor loop, nothing to wait for.
"""

import errno
import importlib
import os
import pathlib
import re
import socket

import pytest
import twisted
from twisted.application.internet import StreamServerEndpointService
from twisted.internet import defer, tcp
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock

import txmesh
from twisted.internet.epollreactor import EPollReactor
from twisted.internet.protocol import ClientFactory

from txmesh.twisted_private import (
    PRIVATE_NAMES,
    adoptTCPPort,
    parseServerEndpoint,
    raiseBindErrorsSynchronously,
    watchAcceptErrors,
)

TWISTED = twisted.__version__


def _closeReactor(r):
    """Close a never-run reactor's descriptors (its epoll object and its waker's pipe)."""
    r.waker.connectionLost(None)
    r._poller.close()


class _ClientFactory(ClientFactory):
    protocol = Protocol


def _missing(owner, name):
    return ("Twisted %s has no %s.%s, which txmesh/twisted_private.py relies on: find the replacement in that "
            "Twisted release, change the module, then move the Twisted bound in setup.cfg" % (TWISTED, owner, name))


def _resolve(owner):
    module, _, attr = owner.rpartition(".")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError):
        return importlib.import_module(owner)


@pytest.fixture
def connection():
    """A real TCP server-side transport over one end of a loopback connection, and the other end."""
    with socket.create_server(("127.0.0.1", 0)) as listening:
        peer = socket.create_connection(listening.getsockname(), timeout=5)
        ours, _ = listening.accept()  # the kernel completed the handshake already: no wait
    proto = Protocol()
    conn = tcp.Server(ours, proto, ("127.0.0.1", 1), None, 1, MemoryReactorClock())
    proto.makeConnection(conn)
    peer.setblocking(False)
    yield conn, peer
    ours.close()
    peer.close()


@pytest.mark.parametrize("owner,name", PRIVATE_NAMES, ids=["%s.%s" % p for p in PRIVATE_NAMES])
def test_private_name_exists(owner, name, connection):
    conn, _ = connection
    if owner in ("twisted.internet.tcp.Port", "twisted.internet.tcp.Connector", "twisted.internet.tcp.Server"):
        assert hasattr(_resolve(owner), name), _missing(owner, name)
    elif owner == "twisted.internet.epollreactor.EPollReactor":
        # _poller and _selectables are set by __init__: check a real (never run) reactor
        r = EPollReactor()
        try:
            assert hasattr(r, name), _missing(owner, name)
        finally:
            _closeReactor(r)
    elif owner.startswith(("twisted.internet.abstract.", "twisted.internet.tcp.")):
        # instance attributes (FileDescriptor.__init__ sets _tempDataLen): check a real transport
        assert hasattr(conn, name), _missing(owner, name)
    else:
        assert hasattr(_resolve(owner), name), _missing(owner, name)


def test_lean_loop_names_mean_what_doPoll_reads():
    """_poller polls, _selectables maps fds to selectables, and the masks are epoll's."""
    import select

    r = EPollReactor()
    try:
        assert isinstance(r._selectables, dict), _missing("EPollReactor", "_selectables (a dict fd -> selectable)")
        assert callable(r._poller.poll), _missing("EPollReactor", "_poller.poll")
        assert (r._POLL_IN, r._POLL_OUT) == (select.EPOLLIN, select.EPOLLOUT)
        assert r._POLL_DISCONNECTED == select.EPOLLHUP | select.EPOLLERR
    finally:
        _closeReactor(r)


def test_connector_makes_its_transport_through_makeTransport():
    """BaseConnector.connect builds the transport with _makeTransport: txmesh.tcp.Connector's (ClientClassConnector) is used."""
    from txmesh import tcp as txtcp

    reactor = MemoryReactorClock()
    with socket.create_server(("127.0.0.1", 0)) as listening:
        c = txtcp.Connector("127.0.0.1", listening.getsockname()[1], _ClientFactory(), 5, None, reactor)
        c.connect()
        try:
            assert isinstance(c.transport, txtcp.Client)
        finally:
            c.transport.socket.close()


def test_adoptTCPPort_builds_the_given_port_class_on_a_listening_descriptor():
    from txmesh import tcp as txtcp

    reactor = MemoryReactorClock()
    with socket.create_server(("127.0.0.1", 0)) as listening:
        p = adoptTCPPort(txtcp.Port, reactor, listening.fileno(), socket.AF_INET, Factory.forProtocol(Protocol))
        try:
            assert isinstance(p, txtcp.Port)
            assert p.getHost().port == listening.getsockname()[1]
        finally:
            p.socket.close()


def test_parse_tcp():
    kind, args, kwargs = parseServerEndpoint("tcp:8080:interface=127.0.0.1")
    assert (kind, args[0], kwargs["interface"]) == ("tcp", 8080, "127.0.0.1")


def test_parse_tcp6_plugin():
    kind, args, kwargs = parseServerEndpoint(r"tcp6:8080:interface=\:\:1")
    assert (kind, int(args[0]), kwargs["interface"]) == ("tcp6", 8080, "::1")


def test_parse_unix():
    kind, args, _ = parseServerEndpoint("unix:/run/txmesh.sock")
    assert (kind, args[0]) == ("unix", "/run/txmesh.sock")


def test_parse_unknown_type():
    with pytest.raises(ValueError):
        parseServerEndpoint("nope:80")


class _RefusingEndpoint:
    def listen(self, factory):
        return defer.fail(CannotListenError("127.0.0.1", 80, OSError("address in use")))


def test_bind_errors_raise_from_privileged_start():
    svc = StreamServerEndpointService(_RefusingEndpoint(), Factory())
    raiseBindErrorsSynchronously(svc)
    with pytest.raises(CannotListenError):
        svc.privilegedStartService()


_PRIVATE_IMPORT = re.compile(r"from twisted[\w.]* import [^\n]*\b_[a-zA-Z]|import twisted[\w.]*\._[a-zA-Z]")


def test_no_other_module_uses_them():
    """The point of the module: a Twisted upgrade has one place to look."""
    names = [name for _, name in PRIVATE_NAMES]
    root = pathlib.Path(txmesh.__file__).parent
    offenders = []
    for path in sorted(root.rglob("*.py")):
        if path.name == "twisted_private.py":
            continue
        text = path.read_text()
        # doRead is listed for tcp.Port's; a module with IReadDescriptors of its own implements the public method
        mine = [n for n in names if n != "doRead" or "@implementer(IReadDescriptor)" not in text]
        offenders += ["%s: %s" % (path.relative_to(root), n) for n in mine if re.search(r"\b%s\b" % n, text)]
        offenders += ["%s: %s" % (path.relative_to(root), m.group()) for m in _PRIVATE_IMPORT.finditer(text)]
    assert not offenders, "private Twisted names outside txmesh/twisted_private.py: %s" % (offenders,)


class _FailingAccept:
    """Stands for a listening socket whose accept() fails with ``code`` once, then has nothing to accept."""

    def __init__(self, code):
        self.codes = [code]

    def accept(self):
        code = self.codes.pop(0) if self.codes else errno.EAGAIN
        raise OSError(code, os.strerror(code))


@pytest.mark.parametrize("code", [errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM])
def test_port_doRead_accepts_through_port_socket_and_survives_resource_errors(code):
    """
    watchAcceptErrors: tcp.Port.doRead still accepts with ``self.socket.accept()`` (a real connection goes through the
    stand-in), and a resource error is seen by the watcher, logged by Twisted and not raised.
    """
    clock = MemoryReactorClock()
    built = []
    factory = Factory.forProtocol(Protocol)
    factory.buildProtocol = lambda addr: built.append(addr) or Protocol()
    port = tcp.Port(0, factory, interface="127.0.0.1", reactor=clock)
    port.startListening()
    seen = []
    try:
        assert watchAcceptErrors(port, {code}, seen.append), _missing("twisted.internet.tcp.Port", "socket")
        with socket.create_connection(("127.0.0.1", port.getHost().port), timeout=5):
            port.doRead()
            assert len(built) == 1, "tcp.Port.doRead no longer accepts through port.socket (Twisted %s)" % (TWISTED,)
        watched = port.socket
        port.socket = _FailingAccept(code)
        watchAcceptErrors(port, {code}, seen.append)
        port.doRead()
        assert seen == [code], "tcp.Port.doRead no longer calls port.socket.accept() (Twisted %s)" % (TWISTED,)
        port.socket = watched
    finally:
        port.stopListening()
        clock.advance(0)


def test_watchAcceptErrors_leaves_other_ports_alone():
    assert not watchAcceptErrors(object(), {errno.EMFILE}, lambda code: None)


def _pendingAfterStop(share):
    """
    Stop a bound txmesh TCP port whose socket another holder (a dup) keeps, with a connection waiting in the
    backlog: is the connection still there to accept from the other copy?
    """
    from txmesh import tcp as txtcp
    from txmesh.twisted_private import shareListeningPort

    reactor = MemoryReactorClock()
    port = txtcp.listenTCP(reactor, 0, Factory.forProtocol(Protocol), interface="127.0.0.1")
    other = socket.socket(fileno=os.dup(port.fileno()))
    client = socket.create_connection(("127.0.0.1", port.getHost().port), timeout=5)
    try:
        if share:
            shareListeningPort(port)
        port.stopListening()
        reactor.advance(0)
        other.setblocking(False)
        try:
            accepted, _ = other.accept()
        except OSError:
            return False
        accepted.sendall(b"x")
        ok = client.recv(1) == b"x"
        accepted.close()
        return ok
    finally:
        client.close()
        other.close()


def test_stopping_a_shared_port_leaves_the_socket_and_its_backlog_to_the_other_holder():
    assert _pendingAfterStop(share=True)


def test_without_sharing_stopping_a_port_shuts_the_socket_down_for_every_holder():
    """The hazard shareListeningPort exists for: Twisted's shutdown(2) resets the backlog everywhere."""
    assert not _pendingAfterStop(share=False)


def test_stopping_a_shared_unix_port_leaves_its_path(tmp_path):
    from twisted.internet import unix

    from txmesh.twisted_private import shareListeningPort

    path = str(tmp_path / "l.sock")
    reactor = MemoryReactorClock()
    port = unix.Port(path, Factory.forProtocol(Protocol), reactor=reactor, wantPID=1)
    port.startListening()
    assert os.path.islink(path + ".lock")
    other = socket.socket(fileno=os.dup(port.fileno()))
    shareListeningPort(port)
    assert not os.path.lexists(path + ".lock")  # released: nobody takes the path for a stale one later
    port.stopListening()
    reactor.advance(0)
    assert os.path.exists(path)
    client = socket.socket(socket.AF_UNIX)
    client.connect(path)  # still listening through the other copy
    client.close()
    other.close()
