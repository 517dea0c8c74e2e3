"""
The ``hot_restart`` block of mesh.yaml: where a running txmesh listens for the process that takes its listening
sockets over (txmesh/hot_restart.py, docs/operations.md "Hot restart").
"""

import os
from dataclasses import dataclass

from txmesh.config_reader import joinPath
from txmesh.twisted_private import parseServerEndpoint

# sockaddr_un.sun_path holds 108 bytes with the terminating NUL
MAX_SOCKET_PATH = 107


@dataclass(frozen=True, slots=True)
class HotRestartConfig:
    """
    @ivar socket: the absolute path of the UNIX control socket (mode 0600).
    @ivar timeout: how long a new process waits for the old one's sockets, and how long the old one waits for the
        new one to become ready before it gives up the hand-over and keeps serving alone.
    """

    socket: str
    timeout: float = 30.0


def buildHotRestart(r, raw, addresses):
    """
    The HotRestartConfig of ``raw["hot_restart"]``, or None without one.
    @param addresses: the admin's and the listeners' endpoint strings: the control socket may not be one of them.
    """
    if raw.get("hot_restart") is None:
        return None
    path = "hot_restart"
    m = r.mapping(raw["hot_restart"], path, required=("socket",), optional=("timeout",))
    where = joinPath(path, "socket")
    socket = r.get(m, path, "socket", str)
    if not os.path.isabs(socket):
        raise r.error("must be an absolute path, not '%s'" % (socket,), where)
    if len(os.fsencode(socket)) > MAX_SOCKET_PATH:
        raise r.error("a UNIX socket path has at most %d bytes, got %d" % (MAX_SOCKET_PATH, len(os.fsencode(socket))),
                      where)
    for address in addresses:
        kind, args, _ = parseServerEndpoint(address)
        if kind == "unix" and os.path.abspath(args[0]) == os.path.normpath(socket):
            raise r.error("'%s' is also the address of a listener or the admin" % (socket,), where)
    timeout = r.duration(m, path, "timeout", 30.0)
    if not 1.0 <= timeout <= 3600.0:
        raise r.error("must be between 1s and 1h", joinPath(path, "timeout"))
    return HotRestartConfig(socket=os.path.normpath(socket), timeout=timeout)
