"""
Test doubles for people who write txmesh filters (as treq ships treq.testing): build a filter's config and
install its per-stream instances without a running mesh.

    from txmesh.testing import FakeConfigContext, FakeRuntime, RecordingInstaller

    config = MyFilterFactory().buildConfig({"header": "x-api-key"}, FakeConfigContext())
    installer = RecordingInstaller()
    MyFilterFactory().createFilters(config, installer, FakeRuntime())
    [f] = installer.decoders
"""

from twisted.internet.task import Clock
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
