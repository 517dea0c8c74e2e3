"""
Test doubles for people who write txmesh filters (as treq ships treq.testing): build a filter's config and
install its per-stream instances without a running mesh.

    from txmesh.testing import FakeConfigContext, FakeRuntime, RecordingInstaller

    config = MyFilterFactory().buildConfig({"header": "x-api-key"}, FakeConfigContext())
    installer = RecordingInstaller()
    MyFilterFactory().createFilters(config, installer, FakeRuntime())
    [f] = installer.decoders

A network filter is tested the same way, with L{FakeReadFilterCallbacks} around a L{FakeConnection}:

    MyNetworkFilterFactory().createFilters(config, installer, FakeRuntime())
    [f] = installer.readFilters
    callbacks = FakeReadFilterCallbacks(FakeConnection(peer=IPv4Address("TCP", "10.0.0.1", 5555)))
    f.initializeReadFilterCallbacks(callbacks)
    assert f.connectionMade() is FilterStatus.CONTINUE
"""

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from zope.interface import implementer

from txmesh.errors import ConfigError
from txmesh.interfaces import IConnectionInfo, IFilterChainFactoryCallbacks, IReadFilterCallbacks
from txmesh.stats import StatsStore


class FakeConfigContext:
    """The ``context`` of IFilterFactory.buildConfig: errors name the sub-path only (no file, no line)."""

    def error(self, reason, subpath=""):
        return ConfigError(reason, path=subpath)


def buildConfigError(factory, raw):
    """The ConfigError ``factory.buildConfig(raw, FakeConfigContext())`` raises (AssertionError if it builds)."""
    try:
        factory.buildConfig(raw, FakeConfigContext())
    except ConfigError as e:
        return e
    raise AssertionError("%r built a config from %r" % (factory, raw))


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


@implementer(IConnectionInfo)
class FakeConnection:
    """
    The ``connection`` a network filter sees: records what it writes and how it closes.

    @ivar written: the bytes written, one item per call.
    @ivar closed: None while open, then "close" or "abort".
    """

    def __init__(self, peer=None, host=None, listenerName="test"):
        self.peer = peer if peer is not None else IPv4Address("TCP", "127.0.0.1", 40000)
        self.host = host if host is not None else IPv4Address("TCP", "127.0.0.1", 15001)
        self.listenerName = listenerName
        self.written = []
        self.closed = None

    def write(self, data):
        self.written.append(data)

    def close(self, abort=False):
        if self.closed is None:
            self.closed = "abort" if abort else "close"


@implementer(IReadFilterCallbacks)
class FakeReadFilterCallbacks:
    """What a read filter is given: counts ``continueReading`` calls and records injected bytes."""

    def __init__(self, connection=None):
        self.connection = connection if connection is not None else FakeConnection()
        self.continued = 0
        self.injected = []

    def continueReading(self):
        self.continued += 1

    def injectReadData(self, data):
        self.injected.append(data)
