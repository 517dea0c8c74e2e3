"""
Test doubles for people who write txmesh filters (as treq ships treq.testing): build a filter's config and
install its per-stream instances without a running mesh.

    from txmesh.testing import FakeConfigContext, FakeRuntime, RecordingInstaller

    config = MyFilterFactory().buildConfig({"header": "x-api-key"}, FakeConfigContext())
    installer = RecordingInstaller()
    MyFilterFactory().createFilters(config, installer, FakeRuntime())
    [f] = installer.decoders

And for people who write connection pools: a connect function that records its attempts (L{FakeConnector}) and
the client protocol it connects (L{FakeClientProtocol}).
"""

from twisted.internet import defer
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from zope.interface import implementer

from txmesh.errors import ConfigError
from txmesh.interfaces import IFilterChainFactoryCallbacks
from txmesh.stats import StatsStore


class FakeConfigContext:
    """The ``context`` of IFilterFactory.buildConfig: errors name the sub-path only (no file, no line)."""

    def error(self, reason, subpath=""):
        return ConfigError(reason, path=subpath)


class FakeRuntime:
    """The ``runtime`` given to createFilters: a fake clock (advance it in tests) and a fresh stats store."""

    def __init__(self, clock=None, stats=None):
        self.clock = clock if clock is not None else Clock()
        self.stats = stats if stats is not None else StatsStore()


@implementer(IFilterChainFactoryCallbacks)
class RecordingInstaller:
    """Records the filters a factory installs, in decode and encode order as the chain would hold them."""

    def __init__(self):
        self.decoders = []
        self.encoders = []
        self.readFilters = []
        self.writeFilters = []

    def addStreamDecoderFilter(self, f):
        self.decoders.append(f)

    def addStreamEncoderFilter(self, f):
        self.encoders.append(f)

    def addStreamFilter(self, f):
        self.decoders.append(f)
        self.encoders.append(f)

    def addReadFilter(self, f):
        self.readFilters.append(f)

    def addWriteFilter(self, f):
        self.writeFilters.append(f)


class FakeClientProtocol(Protocol):
    """Stands in for a ping-pong client protocol: reports its loss to the pool (``onConnectionLost``) as they do."""

    onConnectionLost = None

    def connectionLost(self, reason=Failure(ConnectionDone())):
        if self.onConnectionLost is not None:
            self.onConnectionLost(self)


class FakeConnector:
    """A pool's ``connect(host)``: records each attempt (a Deferred) for the test to complete or fail."""

    def __init__(self, protocolFactory=FakeClientProtocol):
        self.protocolFactory = protocolFactory
        self.attempts = []  # Deferreds, in order
        self.cancelled = 0

    def __call__(self, host):
        d = defer.Deferred(lambda _: self._cancelled())
        self.attempts.append(d)
        return d

    def _cancelled(self):
        self.cancelled += 1

    def succeed(self, i=-1):
        """Complete attempt ``i`` with a new protocol connected to a StringTransport; returns the protocol."""
        proto = self.protocolFactory()
        proto.makeConnection(StringTransport())
        self.attempts[i].callback(proto)
        return proto
