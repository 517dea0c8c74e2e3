"""
The new process's side of a hot restart, before its service exists (txmesh/hot_restart.py has the rest): ask the
running txmesh for its listening sockets over the control socket (blocking and bounded: tap.py calls ``takeOver``
before the reactor runs), check what came, and pick the socket each listener listens on (``Inheritance.take``).
"""

import ipaddress
import os
import socket

from twisted.logger import Logger

from txmesh.hot_restart_wire import HandoverError, MessageDecoder, closeAll, encode, expect
from txmesh.twisted_private import parseServerEndpoint

# the service manager's variables a new process inherits when its own environment lacks them (a process started
# by ``ExecReload=`` gets no ``$WATCHDOG_USEC``, yet systemd expects its pings once it is the main process)
INHERITED_ENVIRONMENT = ("NOTIFY_SOCKET", "WATCHDOG_USEC")

log = Logger(namespace="txmesh.hot_restart")

class Inheritance:
    """
    What a new process got from the old one: its ``pid``, the listening sockets by name, the service manager's
    variables, and the connection the drain request goes back on.  A worker (txmesh/worker.py) gets one from its
    parent the same way: ``message`` is the whole message the sockets came with.
    """

    def __init__(self, pid, sockets, environment, connection, message=None):
        self.pid = pid
        self._sockets = dict(sockets)
        self.environment = environment
        self.connection = connection
        self.message = message or {}
        self.adopted = []
        # a worker's channel (txmesh/worker.py): what came after the start message in the same reads (a request
        # the parent sent at once, e.g. the admin's ``dump``), and the decoder holding any partial message
        self.early = []
        self.decoder = None

    def add(self, name, sock):
        """One more socket to take under ``name`` (a worker's parent sends those a reload binds); a socket already
        held under that name is closed."""
        old = self._sockets.pop(name, None)
        if old is not None:
            old.close()
        self._sockets[name] = sock

    def names(self):
        return sorted(self._sockets)

    def take(self, name, address):
        """
        The inherited socket for the listener ``name`` at ``address`` (its endpoint string), or None: the one of
        that name if its address fits, else one of another name whose address fits (a renamed listener), else
        None (bind anew).  A socket taken is the caller's.
        """
        sock = self._sockets.get(name)
        if sock is not None and addressFits(sock, address):
            return self._take(name)
        if _concreteAddress(address):
            for other, sock in sorted(self._sockets.items()):
                if addressFits(sock, address):
                    return self._take(other)
        return None

    def _take(self, name):
        self.adopted.append(name)
        return self._sockets.pop(name)

    def closeUnused(self):
        """Close the inherited sockets no listener took (the old process's copies are not affected)."""
        sockets, self._sockets = self._sockets, {}
        for sock in sockets.values():
            sock.close()
        return sorted(sockets)


def _concreteAddress(address):
    try:
        kind, args, _ = parseServerEndpoint(address)
    except (ValueError, TypeError, KeyError, OSError):
        return False
    return kind == "unix" or (kind in ("tcp", "tcp6") and int(args[0]) != 0)


def addressFits(sock, address):
    """
    Whether the listening ``sock`` is what the endpoint string ``address`` would bind: tcp/tcp6 the same port (any,
    for port 0) and interface, unix the same path; a ``systemd:`` endpoint any stream socket (matched by name).
    TLS and other kinds never fit: they are bound anew.
    """
    try:
        kind, args, kwargs = parseServerEndpoint(address)
    except (ValueError, TypeError, KeyError, OSError):
        return False
    if kind in ("tcp", "tcp6"):
        if sock.family not in (socket.AF_INET, socket.AF_INET6):
            return False
        host, port = sock.getsockname()[:2]
        wanted = int(args[0])
        interface = kwargs.get("interface") or ("::" if kind == "tcp6" else "0.0.0.0")
        try:
            sameHost = ipaddress.ip_address(interface) == ipaddress.ip_address(host)
        except ValueError:
            return False
        return sameHost and wanted in (0, port)
    if kind == "unix":
        return sock.family == socket.AF_UNIX and os.fsdecode(sock.getsockname()) == os.path.abspath(args[0])
    return kind == "systemd"


def takeOver(path, timeout, pid=None):
    """
    Ask the txmesh listening on the control socket ``path`` for its listening sockets (blocking, before the
    reactor runs; every wait bounded by ``timeout`` seconds).

    @return: an L{Inheritance}, or None when no process listens there (no such file, connection refused).
    @raise HandoverError: the old process refused (a hand-over already under way, not serving yet), broke the
        protocol, or did not answer in time; nothing was taken.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
    except (FileNotFoundError, ConnectionRefusedError):
        sock.close()
        return None
    except OSError as e:
        sock.close()
        raise HandoverError("cannot connect to %s: %s" % (path, e.strerror or e)) from None
    try:
        sock.sendall(requestSockets(pid))
        return receiveSockets(sock)
    except socket.timeout:
        sock.close()
        raise HandoverError("no answer from %s within %gs" % (path, timeout)) from None
    except (HandoverError, OSError) as e:
        sock.close()
        if isinstance(e, HandoverError):
            raise
        raise HandoverError("hand-over from %s failed: %s" % (path, e)) from None


def requestSockets(pid=None):
    """The bytes of the request for the old process's sockets."""
    return encode({"type": "get_sockets", "pid": os.getpid() if pid is None else pid})


def receiveSockets(sock, decoder=None, keepLater=False):
    """
    Read the old process's answer from the connected (blocking or timed) ``sock``: an L{Inheritance} holding
    ``sock`` for the drain request.  With ``keepLater`` (a worker's channel, where the parent may send requests
    right after the start message) messages that came in the same reads are kept in its ``early`` and the decoder
    in its ``decoder``; otherwise more than one message is a broken answer.
    @raise HandoverError: a refusal or a broken answer (descriptors closed).
    """
    decoder = decoder if decoder is not None else MessageDecoder()
    later = [] if keepLater else None
    message, fds = _receiveOne(sock, decoder, later)
    inheritance = _inheritance(message, fds, sock)
    if keepLater:
        inheritance.early, inheritance.decoder = later, decoder
    return inheritance


def _receiveOne(sock, decoder, later=None):
    while True:
        data, fds, flags, _ = socket.recv_fds(sock, 65536, 64, socket.MSG_CMSG_CLOEXEC)
        if flags & socket.MSG_CTRUNC:
            closeAll(fds)
            decoder.close()
            raise HandoverError("descriptors were cut off (too many at once)")
        if not data and not fds:
            decoder.close()
            raise HandoverError("the old process closed the connection without an answer")
        messages = decoder.feed(data, fds)
        if messages:
            if later is not None:
                later.extend(messages[1:])
            elif len(messages) > 1:
                closeAll(fd for _, taken in messages for fd in taken)
                raise HandoverError("more than one answer")
            return messages[0]


def _inheritance(message, fds, connection):
    try:
        expect(message, "sockets")
        entries = message.get("sockets")
        if not isinstance(entries, list) or len(entries) != len(fds):
            raise HandoverError("'sockets' must list one entry per descriptor (%d sent)" % (len(fds),))
        names = [entry.get("name") if isinstance(entry, dict) else None for entry in entries]
        if not all(isinstance(n, str) and n for n in names) or len(set(names)) != len(names):
            raise HandoverError("each socket needs a distinct name")
        sockets = []
        for name, fd in zip(names, fds):
            sock = socket.socket(fileno=fd)
            sockets.append((name, sock))
            if sock.type != socket.SOCK_STREAM or not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
                raise HandoverError("socket '%s' is not a listening stream socket" % (name,))
    except HandoverError:
        closeAll(fds)
        raise
    environment = message.get("environment")
    environment = {k: v for k, v in environment.items() if k in INHERITED_ENVIRONMENT and isinstance(v, str)} \
        if isinstance(environment, dict) else {}
    pid = message.get("pid")
    return Inheritance(pid if type(pid) is int else None, sockets, environment, connection, message)
