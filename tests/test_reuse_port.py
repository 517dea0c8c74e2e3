"""
txmesh/reuse_port.py: the SO_REUSEPORT endpoint of ``connection_balance: reuse_port`` on real sockets (the
reactor's ``adoptStreamPort`` stands in), and the listener key's validation.
"""

import errno
import os
import socket

import pytest
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.internet.protocol import Factory
from zope.interface.verify import verifyObject

from txmesh import config
from txmesh.errors import ConfigError
from txmesh.reuse_port import ReusePortEndpoint, parseAddress

pytestmark = pytest.mark.timeout(30)


class AdoptingReactor:
    """``adoptStreamPort`` keeps a copy of the descriptor (as a reactor's port does)."""

    def __init__(self):
        self.adopted = []

    def adoptStreamPort(self, fd, family, factory):
        sock = socket.socket(family, socket.SOCK_STREAM, fileno=os.dup(fd))
        self.adopted.append((sock, factory))
        return sock


def _listen(endpoint):
    result = []
    endpoint.listen(Factory()).addBoth(result.append)
    return result[0]


def test_sockets_share_one_port_and_the_kernel_spreads_connections():
    reactor = AdoptingReactor()
    first = _listen(ReusePortEndpoint.fromAddress(reactor, "tcp:0:interface=127.0.0.1"))
    port = first.getsockname()[1]
    second = _listen(ReusePortEndpoint.fromAddress(reactor, "tcp:0:interface=127.0.0.1", port))
    verifyObject(IStreamServerEndpoint, ReusePortEndpoint.fromAddress(reactor, "tcp:0"))
    try:
        assert second.getsockname() == ("127.0.0.1", port)
        # a socket without SO_REUSEPORT cannot join
        plain = socket.socket()
        with pytest.raises(OSError) as e:
            plain.bind(("127.0.0.1", port))
        assert e.value.errno == errno.EADDRINUSE
        plain.close()
        clients = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(40)]
        got = []
        for s in (first, second):
            s.setblocking(False)
            n = 0
            while True:
                try:
                    conn, _ = s.accept()
                except BlockingIOError:
                    break
                conn.close()
                n += 1
            got.append(n)
        assert sum(got) == 40 and all(got), got  # all 40 on one socket: odds 2^-39
        for c in clients:
            c.close()
    finally:
        for sock, _ in reactor.adopted:
            sock.close()


def test_a_port_taken_without_reuse_port_is_a_cannot_listen_error():
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    try:
        failure = _listen(ReusePortEndpoint.fromAddress(AdoptingReactor(), "tcp:%d:interface=127.0.0.1"
                                                        % (taken.getsockname()[1],)))
        assert failure.check(CannotListenError)
    finally:
        taken.close()


def test_addresses():
    assert parseAddress("tcp:8080:interface=127.0.0.1:backlog=7") == (socket.AF_INET, "127.0.0.1", 8080, 7)
    assert parseAddress("tcp:8080") == (socket.AF_INET, "", 8080, 50)
    assert parseAddress("tcp:8080:interface=\\:\\:1")[0] == socket.AF_INET6
    assert parseAddress("tcp6:8080")[:3] == (socket.AF_INET6, "::", 8080)
    with pytest.raises(ValueError):
        parseAddress("unix:/tmp/x.sock")


BASE = """
workers: 2
listeners:
  - name: web
    address: %s
    connection_balance: %s
    route_config: {virtual_hosts: [{name: a, domains: ["*"], routes: [{match: {prefix: /}, direct_response: {status: 200}}]}]}
"""


def test_reuse_port_needs_a_tcp_address():
    assert config.loads(BASE % ("tcp:15001", "reuse_port")).listeners[0].connectionBalance == "reuse_port"
    assert config.loads(BASE % ("tcp6:15001", "reuse_port")).listeners[0].connectionBalance == "reuse_port"
    for address in ("unix:/tmp/txmesh-web.sock", "systemd:domain=INET:index=0"):
        with pytest.raises(ConfigError) as e:
            config.loads(BASE % (address, "reuse_port"), filename="mesh.yaml")
        assert "mesh.yaml:6: listeners[0].connection_balance: reuse_port binds a socket per worker" in str(e.value)
