"""
The admin API's exposure (issue 14 part 7): who may use it (a bearer token from a file), what ``/config_dump``
never shows (secrets, by key name and by shape), and the stale UNIX socket file a crashed process leaves.

The address rules (loopback by default; beyond loopback only with ``admin.auth``; a unix: socket's file mode) are
checked at config load (txmesh.config._buildAdmin); the pages' POST-only rule is in txmesh.admin.
"""

import errno
import hmac
import os
import re
import socket
import stat

from twisted.logger import Logger
from zope.interface import implementer

from txmesh.config import readBearerTokenFile
from txmesh.interfaces import IAdminAuthenticator

REDACTED = "[redacted]"
# a key whose lower-cased name contains one of these holds a secret (or a mapping around one)
SENSITIVE_WORDS = ("private_key", "privatekey", "password", "passwd", "passphrase", "secret", "token",
                   "credential", "api_key", "apikey", "inline_bytes", "inline_string")
# ... unless it names where the secret is kept: a file's path is shown, its content is never read
_PATH_SUFFIXES = ("_file", "_path", "_dir", "filename")
_PEM = "-----BEGIN"
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^:@/\s]*):(?P<password>[^@/\s]*)@")


def _sensitive(key):
    name = str(key).lower()
    return any(w in name for w in SENSITIVE_WORDS) and not name.endswith(_PATH_SUFFIXES)


def _redactString(value):
    if _PEM in value:
        return REDACTED  # inline key or certificate material, whatever its key is called
    if "://" in value and "@" in value:
        return _USERINFO.sub(lambda m: m.group("scheme") + m.group("user") + ":" + REDACTED + "@", value)
    return value


def redactConfig(value, secret=False):
    """
    A copy of the loaded configuration (plain YAML data) fit to show: the value of every key named like a secret
    (``SENSITIVE_WORDS``: private_key, password, token, secret ...; not ``*_file``/``*_path`` keys, whose value is
    a path) is ``[redacted]``, and inside a mapping held by such a key so is every value but paths; anywhere, a
    string holding PEM material is ``[redacted]`` and the password of a ``scheme://user:password@`` URL too.
    """
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if str(k).lower().endswith(_PATH_SUFFIXES) and not isinstance(v, (dict, list)):
                out[k] = _redactString(v) if isinstance(v, str) else v
            elif secret or _sensitive(k):
                out[k] = redactConfig(v, True) if isinstance(v, (dict, list)) else REDACTED
            else:
                out[k] = redactConfig(v)
        return out
    if isinstance(value, list):
        return [redactConfig(v, secret) for v in value]
    if secret:
        return REDACTED
    if isinstance(value, str):
        return _redactString(value)
    return value


@implementer(IAdminAuthenticator)
class BearerTokenFile:
    """
    ``Authorization: Bearer <token>`` against the token in ``path`` (RFC 6750), compared in constant time.  The
    file is read again when it changes (its inode, size or mtime), so a token can be rotated without a restart;
    while it cannot be read every request is refused (and that is logged once per change).
    """

    scheme = b"Bearer"
    log = Logger()

    def __init__(self, path):
        self.path = path
        self._stamp = None
        self._token = None
        self._problem = None

    def _current(self):
        try:
            st = os.stat(self.path)
            stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        except OSError as e:
            stamp, problem = None, "cannot read %s: %s" % (self.path, e.strerror)
        else:
            if stamp == self._stamp:
                return self._token
            try:
                self._token, problem = readBearerTokenFile(self.path), None
            except ValueError as e:
                self._token, problem = None, str(e)
        if problem is not None:
            self._token = None
            if problem != self._problem:
                self.log.error("admin API: refusing every request: {problem}", problem=problem)
        self._stamp, self._problem = stamp, problem
        return self._token

    def authenticate(self, authorization):
        token = self._current()
        if token is None or not authorization:
            return False
        scheme, _, credentials = authorization.strip().partition(b" ")
        if scheme.lower() != b"bearer":
            return False
        return hmac.compare_digest(credentials.strip(), token)


def removeStaleUnixSocket(path):
    """
    Remove ``path`` if it is a UNIX socket nobody listens on (a crashed process's; Twisted's ``lockfile`` cleans
    only the ones left with their ``.lock``).  A socket that answers, or a file that is not a socket, is left for
    the bind to refuse.  @return: True if it was removed.
    """
    try:
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            return False
    except OSError:
        return False
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError as e:
        if e.errno != errno.ECONNREFUSED:
            return False
    else:
        return False
    finally:
        probe.close()
    try:
        os.unlink(path)
    except OSError:
        return False
    return True
