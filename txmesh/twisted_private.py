"""
Every use txmesh makes of a private Twisted name, in one place (STYLE.md habit 14).

Twisted gives no public way to do these things; each function names the Twisted source it reads and why
txmesh needs it.  ``tests/test_twisted_private.py`` checks every name on real Twisted objects and fails naming the
missing attribute and the installed Twisted version; ``setup.cfg`` bounds Twisted to the releases that test
passed on.  Nothing else in txmesh may import a ``_``-name from Twisted or read one off a Twisted object.
"""

from twisted.internet import tcp
from twisted.internet.endpoints import _parseServer

# (owner, attribute) of every private Twisted name used below; the test module checks each on real objects
PRIVATE_NAMES = (
    ("twisted.internet.abstract.FileDescriptor", "_tempDataLen"),
    ("twisted.internet.abstract.FileDescriptor", "_writeDisconnected"),
    ("twisted.internet.tcp._AbortingMixin", "_aborting"),
    ("twisted.internet.endpoints", "_parseServer"),
    ("twisted.application.internet.StreamServerEndpointService", "_raiseSynchronously"),
    # not ``_``-names, but undocumented internals of the listening port that watchAcceptErrors relies on
    ("twisted.internet.tcp.Port", "doRead"),
)


def tcpTransportIdle(t):
    """
    Whether the socket of TCP transport ``t`` (a L{twisted.internet.tcp.Connection}) may be written directly: open,
    not closing or aborted, not TLS, and nothing in Twisted's write buffers, so bytes sent now cannot overtake
    bytes Twisted holds.  L{txmesh.protocols.transport.Writer} calls it before each direct ``send()``.

    Relies on C{twisted/internet/abstract.py} (``FileDescriptor``: ``_tempDataLen``, the bytes ``write`` appended
    since the last ``doWrite``, beside the public-looking ``dataBuffer``; ``_writeDisconnected``, set once
    ``loseWriteConnection`` shut the write side) and C{twisted/internet/tcp.py} (``_AbortingMixin._aborting``, set
    by ``abortConnection``).  Twisted has no public "write buffer empty" query (``IConsumer`` only offers a
    producer, told when the buffer is *full*), hence the private reads.
    """
    return not (t._tempDataLen or t.dataBuffer or not t.connected or t.disconnecting or t._writeDisconnected
                or t.TLS or t._aborting)


def parseServerEndpoint(description):
    """
    Parse a server endpoint string (the syntax of L{twisted.internet.endpoints.serverFromString}) without making an
    endpoint, so config can be checked before anything binds.

    @return: ``(prefix, args, kwargs)``: ``prefix`` the lowercase endpoint type (``"tcp"``, ``"unix"``, ``"ssl"``,
        or a plugin's prefix such as ``"tcp6"``); for the built-in types ``args``/``kwargs`` are already converted
        by Twisted's parser (``tcp``: ``args[0]`` the port as an int, ``kwargs["interface"]``; ``unix``:
        ``args[0]`` the path); for plugins they are the raw strings.
    @raise ValueError: (and TypeError, KeyError, OSError for ssl key files) as Twisted's parsers raise them.

    Relies on C{twisted/internet/endpoints.py}'s ``_parseServer(description, factory)``, which
    ``serverFromString`` itself calls.  The public ``serverFromString`` builds endpoint objects whose port,
    interface and path are private attributes (``TCP4ServerEndpoint._port``, ``._interface``), so it would trade
    one private name for several; txmesh needs the port and interface to find two listeners on one address.
    """
    kind, args, kwargs = _parseServer(description, None)
    prefix = kind.lower() if isinstance(kind, str) else kind.prefix.lower()
    return prefix, args, kwargs


def raiseBindErrorsSynchronously(service):
    """
    Make a L{twisted.application.internet.StreamServerEndpointService} raise from ``privilegedStartService``
    when its endpoint fails to listen at once (a taken port), instead of only logging the failure: txmesh must
    not start with a listener missing.  ``twistd`` and ``strports.service`` do the same.

    Relies on C{twisted/application/internet.py}'s ``StreamServerEndpointService._raiseSynchronously``
    (documented there as an ``@ivar`` since 10.2, never made public); the service resets it after starting.
    """
    service._raiseSynchronously = True


class _AcceptWatchingSocket:
    """A listening socket that reports the accept() errors it is asked to watch, then raises them as before."""

    __slots__ = ("_socket", "_errors", "_failed")

    def __init__(self, sock, errors, failed):
        self._socket = sock
        self._errors = errors
        self._failed = failed

    def accept(self):
        try:
            return self._socket.accept()
        except OSError as e:
            if e.errno in self._errors:
                self._failed(e.errno)
            raise

    def __getattr__(self, name):
        return getattr(self._socket, name)


def watchAcceptErrors(port, errors, failed):
    """
    Call ``failed(errno)`` each time the listening ``port`` (a L{twisted.internet.tcp.Port}: TCP, UNIX, SSL and
    systemd-adopted ports are all of this kind) fails to accept a connection with an errno in ``errors``, then let
    Twisted handle the error as it does.  Other ports are left alone.

    Relies on C{twisted/internet/tcp.py}: ``Port.doRead`` accepts through ``self.socket.accept()`` (in
    ``_accept``) up to ``numberAccepts`` times per read event, and on ``EMFILE``, ``ENFILE``, ``ENOBUFS`` and
    ``ENOMEM`` logs "Could not accept new connection" and returns, leaving the connection in the backlog, so a
    level-triggered reactor calls ``doRead`` again at once, in a tight loop, while the process is out of
    descriptors.  Twisted says nothing to the factory about it, hence the socket stand-in: ``port.socket`` is an
    attribute of every connected port, but not part of any interface.

    @return: True if the port is watched.
    """
    if not isinstance(port, tcp.Port) or getattr(port, "socket", None) is None:
        return False
    port.socket = _AcceptWatchingSocket(port.socket, frozenset(errors), failed)
    return True
