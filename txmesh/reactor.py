"""
The txmesh reactor (``twistd -r txmesh-epoll``; the txmesh twistd plugin installs it unless ``-r`` names another).

Twisted's epoll reactor with two changes, both for the per-request cost measured in issue 10:
  - its loop dispatches reads and writes without a logging context around each event
    (L{txmesh.twisted_private.LeanEPollReactor}); exceptions are still logged as Twisted logs them;
  - ``listenTCP``, ``connectTCP`` and ``adoptStreamPort`` (TCP) make txmesh's TCP transports (L{txmesh.tcp}), which
    write at once when nothing is buffered.  Every ``tcp:``/``systemd:`` endpoint, and so every listener and every
    upstream connection, goes through these three methods.

Under another reactor (``twistd -r epoll``) txmesh runs on Twisted's own loop and transports, unchanged otherwise.
"""

import socket

from twisted.internet.main import installReactor

from txmesh import tcp
from txmesh.twisted_private import LeanEPollReactor, adoptTCPPort


class TxmeshReactor(LeanEPollReactor):
    """L{LeanEPollReactor} making txmesh's TCP transports."""

    def listenTCP(self, port, factory, backlog=50, interface=""):
        return tcp.listenTCP(self, port, factory, backlog, interface)

    def connectTCP(self, host, port, factory, timeout=30, bindAddress=None):
        return tcp.connectTCP(self, host, port, factory, timeout, bindAddress)

    def adoptStreamPort(self, fileDescriptor, addressFamily, factory):
        if addressFamily in (socket.AF_INET, socket.AF_INET6):
            return adoptTCPPort(tcp.Port, self, fileDescriptor, addressFamily, factory)
        return super().adoptStreamPort(fileDescriptor, addressFamily, factory)


def install():
    """Install L{TxmeshReactor} as the global reactor (the reactor plugin's entry point)."""
    r = TxmeshReactor()
    installReactor(r)
    return r
