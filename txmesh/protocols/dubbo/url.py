"""
Dubbo 2's registry URLs, sans-IO: what a provider writes under ``/{root}/{interface}/providers/`` in ZooKeeper (one
child node per provider, the whole URL percent-encoded as the node name), and what a consumer writes under
``consumers/``.  Dubbo's own ``URL.encode``/``URL.decode`` are ``URLEncoder``/``URLDecoder`` in UTF-8; a URL is
``protocol://[user[:password]@]host[:port][/path]?key=value&...`` with the parameters percent-encoded themselves.

    dubbo://10.0.0.5:20880/org.apache.dubbo.demo.DemoService?anyhost=true&application=demo-provider&
        interface=org.apache.dubbo.demo.DemoService&methods=sayHello,sayHelloAsync&side=provider&version=1.0.0&...
"""

from dataclasses import dataclass, field
from urllib.parse import parse_qsl, quote, unquote, urlencode


class DubboURLError(ValueError):
    """A registry entry that is not a Dubbo URL."""


@dataclass(frozen=True)
class DubboURL:
    protocol: str
    host: str
    port: int
    path: str  # the interface for provider and consumer URLs (without the leading '/')
    parameters: dict = field(default_factory=dict)  # str -> str

    def get(self, key, default=None):
        return self.parameters.get(key, default)

    @property
    def interface(self):
        """The service interface: the ``interface`` parameter, else the path."""
        return self.parameters.get("interface") or self.path

    @property
    def address(self):
        return "%s:%d" % (self.host, self.port)

    def format(self):
        """The URL text (parameters in sorted order, as Dubbo writes them)."""
        hostPort = self.host if not self.port else "%s:%d" % (self.host, self.port)
        if ":" in self.host and not self.host.startswith("["):
            hostPort = "[%s]:%d" % (self.host, self.port) if self.port else "[%s]" % (self.host,)
        query = urlencode(sorted(self.parameters.items()), safe=",", quote_via=quote)
        return "%s://%s/%s%s" % (self.protocol, hostPort, self.path, "?" + query if query else "")

    def encode(self):
        """The ZooKeeper node name: the whole URL percent-encoded (Dubbo's ``URL.encode``)."""
        return quote(self.format(), safe="")


def parse(text):
    """
    A DubboURL from its text.  @raise DubboURLError: not ``protocol://host[:port]/path?query``.
    """
    if not isinstance(text, str):
        text = text.decode("utf-8")
    protocol, sep, rest = text.partition("://")
    if not sep or not protocol:
        raise DubboURLError("not a URL (no '://'): %r" % (text[:200],))
    rest, _, query = rest.partition("?")
    hostPort, _, path = rest.partition("/")
    if "@" in hostPort:
        hostPort = hostPort.rpartition("@")[2]
    port = 0
    if hostPort.startswith("["):
        host, _, tail = hostPort[1:].partition("]")
        if tail.startswith(":"):
            port = _port(tail[1:], text)
    elif hostPort.count(":") == 1:
        host, _, p = hostPort.partition(":")
        port = _port(p, text)
    else:
        host = hostPort
    if not host:
        raise DubboURLError("no host: %r" % (text[:200],))
    parameters = dict(parse_qsl(query, keep_blank_values=True)) if query else {}
    return DubboURL(protocol, host, port, path, parameters)


def decode(nodeName):
    """A DubboURL from a registry node name (percent-encoded URL text)."""
    return parse(unquote(nodeName))


def _port(text, whole):
    try:
        port = int(text)
    except ValueError:
        raise DubboURLError("bad port %r in %r" % (text, whole[:200])) from None
    if not 0 <= port <= 65535:
        raise DubboURLError("bad port %d in %r" % (port, whole[:200]))
    return port
