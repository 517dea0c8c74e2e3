"""
The network filter chain (txmesh.filters.network) on StringTransports: order of connectionMade/dataReceived, STOP
and continueReading with buffering, replacement and injection, write filters in reverse order, closing from a
filter, connectionLost everywhere, and the transport calls a listener protocol makes (producers, pauses, aborts,
addresses) as they reach the real transport; the built-in network filters as plugins.
"""

import os
import re

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IPushProducer, ITCPTransport
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.plugin import IPlugin, getPlugins
from twisted.python.failure import Failure
from zope.interface import alsoProvides, implementer
from zope.interface.verify import verifyObject

import txmesh.plugins
from tests import support
from txmesh.config import FilterEntry, loads
from txmesh.errors import ConfigError
from txmesh.filters.network import FilteringFactory, FilteringProtocol
from txmesh.interfaces import (
    FilterStatus,
    IConnectionInfo,
    IFilterChainFactoryCallbacks,
    IFilterFactory,
    IReadFilter,
    IReadFilterCallbacks,
    IWriteFilter,
)
from txmesh.protocols.transport import Writer
from txmesh.service import MeshService
from txmesh.testing import FakeRuntime

CONTINUE, STOP = FilterStatus.CONTINUE, FilterStatus.STOP
PEER = IPv4Address("TCP", "10.1.2.3", 5555)
HOST = IPv4Address("TCP", "127.0.0.1", 15001)


class Inner(Protocol):
    """The listener protocol under the chain: records what reaches it."""

    def __init__(self, log):
        self.log = log
        self.received = []
        self.lost = None

    def connectionMade(self):
        self.log.append("protocol.connectionMade")

    def dataReceived(self, data):
        self.received.append(data)

    def connectionLost(self, reason):
        self.log.append("protocol.connectionLost")
        self.lost = reason


class InnerFactory(Factory):
    def __init__(self):
        self.log = []
        self.built = []

    def buildProtocol(self, addr):
        p = Inner(self.log)
        self.built.append(p)
        return p


@implementer(IReadFilter, IWriteFilter)
class Scripted:
    """A read and write filter whose answers the test sets; it logs every call with its name."""

    def __init__(self, name, log, made=CONTINUE, read=CONTINUE, write=CONTINUE):
        self.name = name
        self.log = log
        self.made = made
        self.read = read
        self.write = write
        self.callbacks = None
        self.seen = []

    def initializeReadFilterCallbacks(self, callbacks):
        self.callbacks = callbacks

    def connectionMade(self):
        self.log.append(self.name + ".connectionMade")
        return self.made() if callable(self.made) else self.made

    def dataReceived(self, data):
        self.seen.append(data)
        self.log.append("%s.read(%s)" % (self.name, data.decode()))
        return self.read(data) if callable(self.read) else self.read

    def connectionLost(self, reason):
        self.log.append(self.name + ".connectionLost")

    def writeData(self, data):
        self.log.append("%s.write(%s)" % (self.name, data.decode()))
        return self.write(data) if callable(self.write) else self.write


class OneFilter:
    """An IFilterFactory stand-in that installs the given instance (read, write or both)."""

    def __init__(self, f, read=True, write=True):
        self.f, self.read, self.write = f, read, write

    def createFilters(self, config, callbacks, runtime):
        self.installer = callbacks
        if self.read:
            callbacks.addReadFilter(self.f)
        if self.write:
            callbacks.addWriteFilter(self.f)


class PeerTransport(StringTransport):
    """A StringTransport that counts reading pauses and knows abortConnection as distinct from loseConnection."""

    def __init__(self):
        StringTransport.__init__(self, hostAddress=HOST, peerAddress=PEER)
        self.aborted = False

    def abortConnection(self):
        self.aborted = True
        StringTransport.abortConnection(self)


def connect(*filters, bufferLimit=1 << 20, innerFactory=None):
    """A FilteringProtocol over ``filters`` (Scripted or OneFilter) connected to a PeerTransport."""
    inner = innerFactory or InnerFactory()
    entries = [FilterEntry("f%d" % i, f if isinstance(f, OneFilter) else OneFilter(f), None)
               for i, f in enumerate(filters)]
    factory = FilteringFactory(inner, entries, FakeRuntime(), "ingress", bufferLimit)
    proto = factory.buildProtocol(PEER)
    transport = PeerTransport()
    proto.makeConnection(transport)
    return proto, transport, inner


def test_connectionMadeInOrderThenTheProtocol():
    log = []
    proto, transport, inner = connect(Scripted("a", log), Scripted("b", log))
    assert log == ["a.connectionMade", "b.connectionMade"]
    assert inner.log == ["protocol.connectionMade"]
    assert inner.built[0].transport is proto


def test_readFiltersInOrderThenTheProtocol():
    log = []
    proto, transport, inner = connect(Scripted("a", log), Scripted("b", log))
    proto.dataReceived(b"x")
    assert log[2:] == ["a.read(x)", "b.read(x)"]
    assert inner.built[0].received == [b"x"]


def test_stopInConnectionMadeHoldsTheConnectionUntilContinue():
    log = []
    a, b = Scripted("a", log, made=STOP), Scripted("b", log)
    proto, transport, inner = connect(a, b)
    assert log == ["a.connectionMade"]
    assert inner.built == [] and transport.producerState == "paused"
    proto.dataReceived(b"early")
    a.callbacks.continueReading()
    assert log == ["a.connectionMade", "b.connectionMade", "a.read(early)", "b.read(early)"]
    assert inner.built[0].received == [b"early"]
    assert transport.producerState == "producing"


def test_refusedConnectionNeverReachesTheProtocol():
    log = []

    a = Scripted("a", log)
    a.made = lambda: (a.callbacks.connection.close(abort=True), STOP)[1]
    b = Scripted("b", log)
    proto, transport, inner = connect(a, b)
    assert transport.aborted
    assert log == ["a.connectionMade"]
    assert inner.built == []
    proto.dataReceived(b"ignored")
    assert a.seen == []
    proto.connectionLost(Failure(ConnectionError()))
    assert log[1:] == ["a.connectionLost", "b.connectionLost"]
    assert inner.log == []


def test_stopInDataReceivedBuffersUntilContinue():
    log = []
    a, b, c = Scripted("a", log), Scripted("b", log, read=STOP), Scripted("c", log)
    proto, transport, inner = connect(a, b, c)
    protocol = inner.built[0]
    proto.dataReceived(b"1")
    proto.dataReceived(b"2")
    proto.dataReceived(b"3")
    assert protocol.received == [] and c.seen == []
    assert a.seen == [b"1"]  # later bytes queue behind the held ones, before any filter
    b.read = CONTINUE
    b.callbacks.continueReading()
    # the held bytes resume at the next filter; the queued ones pass every filter, in one piece
    assert c.seen == [b"1", b"23"]
    assert a.seen == [b"1", b"23"]
    assert protocol.received == [b"1", b"23"]


def test_continueReadingFromAnotherFilterOrTwiceIsIgnored():
    log = []
    a, b = Scripted("a", log), Scripted("b", log, read=STOP)
    proto, transport, inner = connect(a, b)
    proto.dataReceived(b"1")
    a.callbacks.continueReading()
    assert inner.built[0].received == []
    b.read = CONTINUE
    b.callbacks.continueReading()
    b.callbacks.continueReading()
    assert inner.built[0].received == [b"1"]


def test_bufferLimitPausesReadingAndDrainingResumes():
    log = []
    a = Scripted("a", log, read=STOP)
    proto, transport, inner = connect(a, bufferLimit=4)
    proto.dataReceived(b"held")
    proto.dataReceived(b"1234")
    assert transport.producerState == "producing"
    proto.dataReceived(b"5")
    assert transport.producerState == "paused"
    a.read = CONTINUE
    a.callbacks.continueReading()
    assert inner.built[0].received == [b"held", b"12345"]
    assert transport.producerState == "producing"


def test_protocolPauseAndChainPauseAreKeptApart():
    log = []
    a = Scripted("a", log, read=STOP)
    proto, transport, inner = connect(a, bufferLimit=1)
    proto.pauseProducing()  # the protocol's backpressure
    proto.dataReceived(b"x")
    proto.dataReceived(b"yy")  # over the limit: the chain pauses too
    a.read = CONTINUE
    a.callbacks.continueReading()
    assert transport.producerState == "paused"  # the protocol has not resumed
    proto.resumeProducing()
    assert transport.producerState == "producing"
    proto.pauseProducing()
    proto.pauseProducing()
    proto.resumeProducing()
    assert transport.producerState == "producing"


def test_replacementBytesGoOnAndEmptyConsumes():
    log = []
    a = Scripted("a", log, read=lambda d: d.upper())
    b = Scripted("b", log, read=lambda d: b"" if d == b"DROP" else CONTINUE)
    proto, transport, inner = connect(a, b)
    proto.dataReceived(b"hi")
    proto.dataReceived(b"drop")
    assert b.seen == [b"HI", b"DROP"]
    assert inner.built[0].received == [b"HI"]


def test_injectReadDataStartsAfterTheInjectingFilter():
    log = []
    a, b, c = Scripted("a", log), Scripted("b", log, read=b""), Scripted("c", log)
    proto, transport, inner = connect(a, b, c)
    proto.dataReceived(b"kept")
    b.callbacks.injectReadData(b"later")
    assert a.seen == [b"kept"]
    assert c.seen == [b"later"]
    assert inner.built[0].received == [b"later"]


def test_injectBeforeAcceptIsAnError():
    log = []
    a = Scripted("a", log, made=STOP)
    proto, transport, inner = connect(a)
    with pytest.raises(RuntimeError):
        a.callbacks.injectReadData(b"x")


def test_writeFiltersRunInReverseOrderAndMayReplace():
    log = []
    a = Scripted("a", log, write=lambda d: d + b"-a")
    b = Scripted("b", log, write=lambda d: d + b"-b")
    proto, transport, inner = connect(a, b)
    inner.built[0].transport.write(b"out")
    assert log[2:] == ["b.write(out)", "a.write(out-b)"]
    assert transport.value() == b"out-b-a"
    inner.built[0].transport.writeSequence([b"x", b"y"])
    assert transport.value() == b"out-b-axy-b-a"


def test_writeStopOrEmptyWritesNothing():
    log = []
    a = Scripted("a", log, write=lambda d: STOP if d == b"secret" else (b"" if d == b"none" else CONTINUE))
    proto, transport, inner = connect(a)
    proto.write(b"secret")
    proto.write(b"none")
    proto.write(b"ok")
    assert transport.value() == b"ok"


def test_filterWritesThroughTheWriteFiltersAndCloses():
    log = []
    a = Scripted("a", log, write=lambda d: d.upper())

    def greet():
        a.callbacks.connection.write(b"bye\n")
        a.callbacks.connection.close()
        return STOP

    a.made = greet
    proto, transport, inner = connect(a)
    assert transport.value() == b"BYE\n"
    assert transport.disconnecting and not transport.aborted
    assert inner.built == []


def test_filterClosingMidReadStopsTheChain():
    log = []
    a = Scripted("a", log)
    a.read = lambda d: (a.callbacks.connection.close(abort=True), CONTINUE)[1]
    b = Scripted("b", log)
    proto, transport, inner = connect(a, b)
    proto.dataReceived(b"x")
    assert transport.aborted
    assert b.seen == [] and inner.built[0].received == []


def test_connectionLostReachesTheProtocolAndEveryFilter():
    log = []
    proto, transport, inner = connect(Scripted("a", log), Scripted("b", log, read=STOP))
    reason = Failure(ConnectionError("gone"))
    proto.dataReceived(b"x")
    proto.connectionLost(reason)
    assert inner.log == ["protocol.connectionMade", "protocol.connectionLost"]
    assert log[-2:] == ["a.connectionLost", "b.connectionLost"]
    assert inner.built[0].lost is reason
    proto.dataReceived(b"late")
    assert inner.built[0].received == []
    assert proto.factory.protocols == {}


def test_aFailingConnectionLostIsLoggedAndTheOthersStillRun():
    log = []
    a, b = Scripted("a", log), Scripted("b", log)

    def boom(reason):
        raise ValueError("boom")

    a.connectionLost = boom
    proto, transport, inner = connect(a, b)
    proto.connectionLost(Failure(ConnectionError()))
    assert log[-1] == "b.connectionLost"
    assert inner.log[-1] == "protocol.connectionLost"


def test_readOnlyAndWriteOnlyFilters():
    log = []
    r, w = Scripted("r", log), Scripted("w", log, write=lambda d: d * 2)
    proto, transport, inner = connect(OneFilter(r, write=False), OneFilter(w, read=False))
    assert proto.readFilters == [r] and proto.writeFilters == [w]
    proto.dataReceived(b"in")
    proto.write(b"o")
    assert r.seen == [b"in"] and w.seen == []
    assert transport.value() == b"oo"


def test_transportCallsPassThrough():
    log = []
    proto, transport, inner = connect(Scripted("a", log))
    protocol = inner.built[0]
    t = protocol.transport
    assert t.getPeer() == PEER and t.getHost() == HOST
    assert proto.peer == PEER and proto.host == HOST and proto.listenerName == "ingress"

    @implementer(IPushProducer)
    class Producer:
        def pauseProducing(self):
            pass

        def resumeProducing(self):
            pass

        def stopProducing(self):
            pass

    producer = Producer()
    t.registerProducer(producer, True)
    assert transport.producer is producer and transport.streaming
    t.unregisterProducer()
    assert transport.producer is None
    t.pauseProducing()
    assert transport.producerState == "paused"
    t.resumeProducing()
    assert transport.producerState == "producing"
    t.loseConnection()
    assert transport.disconnecting and t.disconnecting and not transport.aborted


def test_abortConnectionReachesTheRealTransport():
    proto, transport, inner = connect(Scripted("a", []))
    inner.built[0].transport.abortConnection()
    assert transport.aborted and proto.disconnecting


def test_wrapperProvidesTheTransportsInterfaces():
    # what the real transport provides is provided by the wrapper too (a TCP transport's ITCPTransport, ...)
    tcp = PeerTransport()
    alsoProvides(tcp, ITCPTransport)
    other = FilteringFactory(InnerFactory(), [], FakeRuntime(), "x").buildProtocol(PEER)
    other.makeConnection(tcp)
    assert ITCPTransport.providedBy(other)
    assert IConnectionInfo.providedBy(other)


def test_newWriterIsUsedForTheRealTransport():
    sent = []

    class RecordingWriter:
        def __init__(self, transport):
            self.transport = transport

        def write(self, data):
            sent.append(data)

    factory = FilteringFactory(InnerFactory(), [FilterEntry("a", OneFilter(Scripted("a", [])), None)],
                               FakeRuntime(), "ingress", newWriter=RecordingWriter)
    proto = factory.buildProtocol(PEER)
    proto.makeConnection(PeerTransport())
    proto.write(b"z")
    assert sent == [b"z"]


def test_aFactoryReturningNoProtocolClosesTheConnection():
    class Refusing(Factory):
        def buildProtocol(self, addr):
            return None

    proto, transport, inner = connect(Scripted("a", []), innerFactory=Refusing())
    assert transport.disconnecting


def installerOf(proto):
    """The IFilterChainFactoryCallbacks the chain gave its first OneFilter."""
    return proto.factory.entries[0][0].installer


def test_streamFiltersCannotBeInstalledInANetworkChain():
    proto, transport, inner = connect(Scripted("a", []))
    installer = installerOf(proto)
    for method in (installer.addStreamDecoderFilter, installer.addStreamEncoderFilter, installer.addStreamFilter):
        with pytest.raises(TypeError, match="list it under filters"):
            method(object())


def test_interfaces():
    a = Scripted("a", [])
    proto, transport, inner = connect(a)
    verifyObject(IConnectionInfo, proto)
    verifyObject(IPushProducer, proto)
    verifyObject(IReadFilterCallbacks, a.callbacks)
    verifyObject(IFilterChainFactoryCallbacks, installerOf(proto))
    assert isinstance(proto, FilteringProtocol)


@pytest.mark.parametrize("name", ["connection_limit", "source_ip"])
def test_builtInNetworkFiltersArePlugins(name):
    found = {p.name: p for p in getPlugins(IFilterFactory, txmesh.plugins)}
    factory = found[name]
    verifyObject(IFilterFactory, factory)
    verifyObject(IPlugin, factory)
    assert factory.kind == "network" and factory.protocols == {"http", "grpc", "dubbo"}


EXAMPLE_PLUGINS = os.path.join(support.ROOT, "tests", "fixtures", "example_network_filter", "txmesh", "plugins")
EXAMPLE_CONFIG = """
plugin_paths: ["%s"]
listeners:
  - name: ingress
    address: tcp:0
    network_filters:
      - name: example_preamble
        config: {token: %s}
"""


def test_thirdPartyNetworkFilterFromPluginPaths():
    """The fixture plugin (tests/fixtures/example_network_filter) loads through plugin_paths and runs."""
    mesh = loads(EXAMPLE_CONFIG % (EXAMPLE_PLUGINS, "open-sesame"))
    listener = mesh.listeners[0]
    [entry] = listener.networkFilters
    assert entry.name == "example_preamble" and entry.config == b"open-sesame"
    runtime = FakeRuntime()
    factory = FilteringFactory(InnerFactory(), listener.networkFilters, runtime, listener.name)

    good = factory.buildProtocol(PEER)
    good.makeConnection(PeerTransport())
    good.dataReceived(b"open-")
    good.dataReceived(b"sesame\r\nGET / HTTP/1.1\r\n")
    good.dataReceived(b"\r\n")
    assert factory.wrappedFactory.built[0].received == [b"GET / HTTP/1.1\r\n", b"\r\n"]

    bad = factory.buildProtocol(PEER)
    transport = PeerTransport()
    bad.makeConnection(transport)
    bad.dataReceived(b"guess\r\nGET / HTTP/1.1\r\n\r\n")
    assert transport.value() == b"bad preamble\r\n" and transport.disconnecting
    assert factory.wrappedFactory.built[1].received == []
    assert runtime.stats.value("example_preamble_refused") == 1


def test_thirdPartyNetworkFilterConfigError():
    with pytest.raises(ConfigError) as info:
        loads(EXAMPLE_CONFIG % (EXAMPLE_PLUGINS, "[1]"), "mesh.yaml")
    assert str(info.value) == ("mesh.yaml:8: listeners[0].network_filters[0].config.token: must be a one-line "
                               "string")


def test_exampleInDocsIsTheFixture():
    with open(os.path.join(support.ROOT, "docs", "filters.md")) as f:
        blocks = re.findall(r"```python\n(.*?)```", f.read(), re.S)
    with open(os.path.join(EXAMPLE_PLUGINS, "example_preamble.py")) as f:
        assert f.read() in blocks


SERVICE_CONFIG = """
admin: {address: "tcp:0:interface=127.0.0.1"}
listeners:
  - name: plain
    address: tcp:0
  - name: filtered
    address: tcp:0
    network_filters:
      - {name: source_ip, config: {deny: [10.0.0.0/8]}}
"""


def test_serviceWrapsOnlyListenersWithNetworkFilters():
    reactor = MemoryReactorClock()
    service = MeshService(loads(SERVICE_CONFIG), reactor, installSignal=lambda *a: None)
    service.startService()
    try:
        # each port holds a switch (txmesh.listeners.SwitchableFactory) a reload may point elsewhere
        served = {s.name: s.factory.current for s in service if s.name.startswith("listener:")}
        plain, filtered = service.listenerFactories
        assert served["listener:plain"] is plain
        wrapper = served["listener:filtered"]
        assert isinstance(wrapper, FilteringFactory) and wrapper.wrappedFactory is filtered
        assert wrapper.listenerName == "filtered" and wrapper.newWriter is Writer
        # a connection from a denied address never reaches the HTTP listener
        proto = wrapper.buildProtocol(IPv4Address("TCP", "10.0.0.1", 1))
        proto.makeConnection(StringTransport(peerAddress=IPv4Address("TCP", "10.0.0.1", 1)))
        assert filtered.connections == set()
        assert service.stats.value("source_ip_denied", listener="filtered") == 1
    finally:
        service.stopService()
