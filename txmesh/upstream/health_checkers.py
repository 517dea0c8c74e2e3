"""
The protocol-neutral active health checks: ``tcp`` (connect; optionally send bytes and expect bytes back) and
``http`` (an HTTP/1.1 request through treq, its status checked against ranges).  Each is an
IHealthCheckerFactory, found as a plugin through txmesh/plugins/txmesh_health.py; the gRPC and Dubbo checks live in
their protocol packages (txmesh/protocols/h2/health.py, txmesh/protocols/dubbo/health.py).
"""

import dataclasses

import treq.client
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.http_headers import Headers
from zope.interface import implementer

from txmesh.interfaces import IHealthChecker, IHealthCheckerFactory
from txmesh.upstream.health import (
    CONNECT_BACKSTOP,
    PASSED,
    ProbeChecker,
    ProbeProtocol,
    failed,
    networkFailure,
)

USER_AGENT = b"txmesh/HC"  # Envoy sends Envoy/HC


def payload(value, context, key):
    """
    Bytes from a mesh.yaml payload: a string (its UTF-8 bytes) or a mapping with one of ``text`` (a string) or
    ``hex`` (hex digits, as Envoy's Payload.text).
    """
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, dict) and len(value) == 1:
        (kind, text), = value.items()
        if kind == "text" and isinstance(text, str):
            return text.encode("utf-8")
        if kind == "hex" and isinstance(text, str):
            try:
                return bytes.fromhex(text)
            except ValueError:
                raise context.error("not hex digits: %r" % (text,), key) from None
    raise context.error("must be a string, {text: string} or {hex: digits}", key)


# -- tcp ------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class TCPCheckConfig:
    send: bytes = b""
    expect: bytes = b""


class _TCPProbe(ProbeProtocol):
    """Writes ``send`` on connect; passes once ``expect`` was read (at once when there is nothing to expect)."""

    lostReason = "connection closed before the expected bytes"

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.received = b""

    def connectionMade(self):
        if self.config.send:
            self.transport.write(self.config.send)
        if not self.config.expect:
            self.finish(PASSED)

    def dataReceived(self, data):
        self.received += data
        expect = self.config.expect
        if expect in self.received:
            self.finish(PASSED)
        elif len(self.received) > max(4 * len(expect), 65536):
            self.finish(failed("%d bytes received without the expected ones" % (len(self.received),)))


@implementer(IHealthChecker)
class TCPChecker(ProbeChecker):
    """Connects to the host (and exchanges the configured bytes) on a connection of its own."""

    def makeProtocol(self):
        return _TCPProbe(self.config)


@implementer(IHealthCheckerFactory)
class TCPCheckerFactory:
    name = "tcp"
    protocols = None
    keys = ("send", "expect")

    def buildConfig(self, raw, context):
        send = payload(raw["send"], context, "send") if raw.get("send") is not None else b""
        expect = payload(raw["expect"], context, "expect") if raw.get("expect") is not None else b""
        return TCPCheckConfig(send, expect)

    def makeChecker(self, config, host, reactor):
        return TCPChecker(config, host, reactor)


# -- http -----------------------------------------------------------------------------------------------------------

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "TRACE", "PATCH"})


@dataclasses.dataclass(frozen=True, slots=True)
class HTTPCheckConfig:
    path: str = "/"
    method: str = "GET"
    host: str = ""  # the Host header; the loader defaults it to the cluster's name (as Envoy)
    expectedStatuses: tuple = ((200, 201),)  # [start, end) ranges, Envoy's default: 200 only
    headers: tuple = ()  # (name, value) str pairs added to the request

    def expected(self, status):
        return any(start <= status < end for start, end in self.expectedStatuses)


@implementer(IHealthChecker)
class HTTPChecker:
    """
    One HTTP/1.1 request per check through treq, on a connection of its own (a non-persistent
    HTTPConnectionPool: never the data-path pool), closed after the response.
    """

    def __init__(self, config, host, reactor):
        self.config = config
        self.host = host
        hostname = "[%s]" % (host.hostname,) if ":" in host.hostname else host.hostname
        self.url = "http://%s:%d%s" % (hostname, host.port, config.path)
        headers = Headers({b"user-agent": [USER_AGENT]})
        headers.setRawHeaders(b"host", [config.host.encode("utf-8")])
        for name, value in config.headers:
            headers.addRawHeader(name.encode("utf-8"), value.encode("utf-8"))
        self.headers = headers
        self.client = treq.client.HTTPClient(Agent(reactor, connectTimeout=CONNECT_BACKSTOP,
                                                   pool=HTTPConnectionPool(reactor, persistent=False)))

    def check(self):
        d = self.client.request(self.config.method, self.url, headers=self.headers)
        d.addCallbacks(self._responded, networkFailure)
        return d

    def _responded(self, response):
        status = response.code
        result = PASSED if self.config.expected(status) else failed("status %d" % (status,))
        # read (and drop) the body, so the connection closes cleanly; a body that never ends hits the timeout
        d = treq.collect(response, lambda data: None)
        d.addCallbacks(lambda _: result, lambda f: result if not result.passed else networkFailure(f))
        return d


@implementer(IHealthCheckerFactory)
class HTTPCheckerFactory:
    name = "http"
    protocols = frozenset({"http1"})
    keys = ("path", "method", "host", "expected_statuses", "request_headers")

    def buildConfig(self, raw, context):
        path = raw.get("path", "/")
        if not isinstance(path, str) or not path.startswith("/") or not path.isascii() or any(
                c.isspace() for c in path):
            raise context.error("must be an absolute path like /healthz", "path")
        method = raw.get("method", "GET")
        if not isinstance(method, str) or method.upper() not in _METHODS:
            raise context.error("must be one of %s" % (", ".join(sorted(_METHODS)),), "method")
        host = raw.get("host", context.clusterName)
        if not isinstance(host, str) or not host.isprintable() or not host.isascii():
            raise context.error("must be printable ASCII", "host")
        return HTTPCheckConfig(path=path, method=method.upper(), host=host,
                               expectedStatuses=self._statuses(raw.get("expected_statuses"), context),
                               headers=self._headers(raw.get("request_headers"), context))

    @staticmethod
    def _statuses(raw, context):
        if raw is None:
            return ((200, 201),)
        if not isinstance(raw, list) or not raw:
            raise context.error("must be a list of statuses or {start, end} ranges", "expected_statuses")
        ranges = []
        for i, item in enumerate(raw):
            where = "expected_statuses[%d]" % (i,)
            if isinstance(item, int) and not isinstance(item, bool):
                start, end = item, item + 1
            elif isinstance(item, dict) and set(item) == {"start", "end"} and all(
                    isinstance(item[k], int) and not isinstance(item[k], bool) for k in item):
                start, end = item["start"], item["end"]
            else:
                raise context.error("must be a status or {start: N, end: M} (end excluded, as Envoy)", where)
            if not 100 <= start < end <= 600:
                raise context.error("must lie within [100, 600) with start < end", where)
            ranges.append((start, end))
        return tuple(ranges)

    @staticmethod
    def _headers(raw, context):
        if raw is None:
            return ()
        if not isinstance(raw, dict):
            raise context.error("must be a mapping of header names to values", "request_headers")
        out = []
        for name, value in raw.items():
            if (not isinstance(name, str) or not name or not name.isascii() or not all(
                    c.isalnum() or c in "!#$%&'*+-.^_`|~" for c in name) or name.lower() == "host"
                    or not isinstance(value, (str, int)) or "\r" in str(value) or "\n" in str(value)):
                raise context.error("header names are tokens (not host: use the host key), values one-line "
                                    "strings", "request_headers.%s" % (name,))
            out.append((name, str(value)))
        return tuple(out)

    def makeChecker(self, config, host, reactor):
        return HTTPChecker(config, host, reactor)
