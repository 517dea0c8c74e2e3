"""
The hot-restart control protocol's messages, sans-IO (docs/operations.md "Hot restart").

A message is a 4-byte big-endian length and that many bytes of a UTF-8 JSON object with ``"protocol": 1`` and a
``"type"``.  Listening sockets travel as SCM_RIGHTS descriptors on the same stream: a message that carries them says
how many (``"fds": n``) and they arrive with its first bytes (Twisted's UNIX transport sends one descriptor with
each of the next bytes written; ``socket.send_fds`` sends them all with the first chunk), so every descriptor a
message declares has arrived by the time its last byte has.  The exchange, new process N to old process O:

  N -> O  ``{"type": "get_sockets", "pid": N}``
  O -> N  ``{"type": "sockets", "pid": O, "sockets": [{"name": "listener:web", "address": "127.0.0.1:15001"}, ...],
           "fds": n, "environment": {...}}`` with n descriptors, in the order of ``sockets``; or
          ``{"type": "error", "reason": "..."}``
  N -> O  ``{"type": "drain", "adopted": ["listener:web", "admin"]}`` once N serves
  O -> N  ``{"type": "draining", "pid": O}`` once O's control socket is closed; O then drains and exits.
"""

import json
import os
import struct

from txmesh.errors import CodecError

PROTOCOL = 1
MAX_MESSAGE = 65536
MAX_FDS = 1024
_HEADER = struct.Struct("!I")


class HandoverError(CodecError):
    """The other process broke the hand-over protocol, or answered with an error (``reason`` says which)."""


def encode(message, maxMessage=MAX_MESSAGE):
    """The bytes of one message (a dict); ``protocol`` is added."""
    body = json.dumps(dict(message, protocol=PROTOCOL), separators=(",", ":"), sort_keys=True).encode("utf-8")
    if len(body) > maxMessage:
        raise HandoverError("message of %d bytes is over the %d-byte limit" % (len(body), maxMessage))
    return _HEADER.pack(len(body)) + body


def closeAll(fds):
    """Close descriptors received and not kept (their owner keeps its own copies)."""
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


class MessageDecoder:
    """
    ``feed(data, fds)`` -> [(message, [fd, ...])]: the complete messages in ``data`` (and earlier pieces), each with
    the descriptors it declared; an empty list means "need more".  Malformed input raises L{HandoverError} after
    closing every descriptor held; so does ``close()`` for the ones nobody took (a connection lost mid-message).
    ``maxMessage`` bounds one message (the workers' channel carries stats dumps, larger than a hand-over).
    """

    def __init__(self, maxMessage=MAX_MESSAGE):
        self.maxMessage = maxMessage
        self._buffer = b""
        self._fds = []

    def feed(self, data, fds=()):
        self._fds.extend(fds)
        self._buffer += data
        out = []
        try:
            if len(self._fds) > MAX_FDS:
                raise HandoverError("more than %d descriptors received" % (MAX_FDS,))
            while len(self._buffer) >= _HEADER.size:
                (length,) = _HEADER.unpack_from(self._buffer)
                if length > self.maxMessage:
                    raise HandoverError("message of %d bytes is over the %d-byte limit" % (length, self.maxMessage))
                end = _HEADER.size + length
                if len(self._buffer) < end:
                    break
                body, self._buffer = self._buffer[_HEADER.size:end], self._buffer[end:]
                message = _parse(body)
                count = message.get("fds", 0)
                if type(count) is not int or count < 0:
                    raise HandoverError("'fds' must be a count, not %r" % (count,))
                if count > len(self._fds):
                    raise HandoverError("message declares %d descriptor(s), %d arrived" % (count, len(self._fds)))
                taken, self._fds = self._fds[:count], self._fds[count:]
                out.append((message, taken))
        except HandoverError:
            closeAll(fd for _, taken in out for fd in taken)
            self.close()
            raise
        return out

    def close(self):
        """Close the descriptors that came without a message to claim them; @return: how many."""
        fds, self._fds = self._fds, []
        closeAll(fds)
        return len(fds)


def _parse(body):
    try:
        message = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise HandoverError("not a JSON message: %s" % (e,)) from None
    if not isinstance(message, dict):
        raise HandoverError("a message must be a JSON object")
    if message.get("protocol") != PROTOCOL:
        raise HandoverError("protocol version %r, this txmesh speaks %d" % (message.get("protocol"), PROTOCOL))
    if not isinstance(message.get("type"), str):
        raise HandoverError("a message needs a 'type'")
    if message["type"] == "error":
        raise HandoverError("the other process refused: %s" % (message.get("reason"),))
    return message


def expect(message, kind):
    """``message`` if its type is ``kind``, else L{HandoverError}."""
    if message["type"] != kind:
        raise HandoverError("expected a '%s' message, got '%s'" % (kind, message["type"]))
    return message
