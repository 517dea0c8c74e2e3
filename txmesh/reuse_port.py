"""
``connection_balance: reuse_port`` (issue 10 part 4; docs/operations.md "Workers"): one listening socket per worker,
each bound with ``SO_REUSEPORT`` to the listener's address, so the kernel hashes each new connection to one
worker's socket (Envoy's ``enable_reuse_port``) instead of every worker waiting on one shared socket.

The parent of ``workers: N`` binds the N sockets (the first decides the port of a ``tcp:0`` listener, the others bind
that port) and keeps them: worker ``i`` is always handed socket ``i``, so the connections queued on the socket of a
worker that died wait in its backlog for its restart instead of being reset.  Only ``tcp:`` and ``tcp6:`` addresses
can be bound this way (systemd's sockets and a UNIX socket are one socket each; config refuses the rest).
"""

import socket

from twisted.internet import defer
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IStreamServerEndpoint
from zope.interface import implementer

from txmesh.twisted_private import parseServerEndpoint

# the endpoint kinds whose address this module can bind itself
REUSE_PORT_KINDS = ("tcp", "tcp6")


def parseAddress(address):
    """
    ``(family, interface, port, backlog)`` of a ``tcp:``/``tcp6:`` endpoint string.
    @raise ValueError: for another kind.
    """
    kind, args, kwargs = parseServerEndpoint(address)
    if kind not in REUSE_PORT_KINDS:
        raise ValueError("%s: not a tcp: or tcp6: address" % (address,))
    if kind == "tcp":
        interface = kwargs.get("interface", "")
        family = socket.AF_INET6 if ":" in interface else socket.AF_INET
    else:
        interface = kwargs.get("interface", "::")
        family = socket.AF_INET6
    return family, interface, int(args[0]), int(kwargs.get("backlog", 50))


@implementer(IStreamServerEndpoint)
class ReusePortEndpoint:
    """
    Listens on a new ``SO_REUSEPORT`` socket bound to ``interface``:``port`` (the reactor adopts it: for txmesh's
    reactor, a L{txmesh.tcp.Port}).  Any number of these may listen on one address at once, as the same user.
    """

    def __init__(self, reactor, family, interface, port, backlog=50):
        self.reactor = reactor
        self.family = family
        self.interface = interface
        self.port = port
        self.backlog = backlog

    @classmethod
    def fromAddress(cls, reactor, address, port=None):
        """The endpoint of ``address`` (``tcp:``/``tcp6:``), on ``port`` instead of the address's when given."""
        family, interface, configured, backlog = parseAddress(address)
        return cls(reactor, family, interface, configured if port is None else port, backlog)

    def listen(self, factory):
        sock = socket.socket(self.family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((self.interface, self.port))
            sock.listen(self.backlog)
            sock.setblocking(False)
        except OSError as e:
            sock.close()
            return defer.fail(CannotListenError(self.interface, self.port, e))
        try:
            return defer.succeed(self.reactor.adoptStreamPort(sock.fileno(), self.family, factory))
        except Exception:
            return defer.fail()
        finally:
            sock.close()  # the port has its own descriptor (adoptStreamPort dups it)
