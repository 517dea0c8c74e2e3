"""
The ``protocol: auto`` listener: detects each connection's protocol from its first bytes and hands the connection
to the listener its ``detect`` map names for that protocol (docs/configuration.md "Protocol detection").

- L{AutoListenerFactory}: one per auto listener; it takes the connection (the overload bounds and its own
  ``limits.max_connections`` apply, as on every listener) and keeps it on its books only while detecting.
- L{DetectingProtocol}: one per connection.  It feeds the bytes to a sans-IO L{ProtocolSniffer}; on a verdict
  it leaves its listener's books (the overload count included) *before* the target's factory is asked for a
  protocol, so a connection is counted once, by one listener, at any time; the target factory's own bounds
  (``limits.max_connections``, network filters) then apply as on a port of its own.  The target protocol is
  connected to the same transport and gets every byte read so far.  On Twisted's TCP and UNIX transports the
  transport's protocol is switched (L{txmesh.twisted_private.switchProtocol}), so the detector leaves the data
  path entirely; elsewhere it forwards what it receives.
- TLS: a ClientHello on a listener with an L{IServerTLS} starts TLS on the connection (Twisted's
  ``TLSMemoryBIOProtocol``, the ClientHello replayed into it) and detection starts again on the decrypted bytes;
  a negotiated ALPN protocol (``h2``, ``http/1.1``) with a target decides at once.  Without an IServerTLS a
  ClientHello is refused (``no_tls``).
- Failures close the connection and are counted in ``downstream_cx_detect_failed{listener,reason}``: ``timeout``
  (no verdict within ``detection_timeout``, the TLS handshake included), ``unknown``, ``too_many_bytes``,
  ``no_tls``, ``tls_handshake`` (the handshake failed).
"""

from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Protocol
from twisted.protocols.tls import TLSMemoryBIOFactory
from zope.interface import implementer

from txmesh.errors import DetectionFailed
from txmesh.interfaces import IListenerConnection
from txmesh.protocols.auto.codec import HTTP1, HTTP2, TLS, ProtocolSniffer
from txmesh.protocols.listener import ConnectionStats, ListenerFactory
from txmesh.stats import LabelledCounter
from txmesh.twisted_private import switchProtocol

# what a negotiated ALPN protocol decides without reading a byte
_ALPN = {b"h2": HTTP2, b"http/1.1": HTTP1}


class AutoListenerStats(ConnectionStats):
    """An auto listener's counters: connections while detecting, refusals at accept, verdicts and failures."""

    def __init__(self, stats, listener):
        ConnectionStats.__init__(self, stats, listener)
        s = self._scope
        self.detected = LabelledCounter(s, "downstream_cx_detected",
                                        "Connections whose protocol was detected (tls, then the protocol inside)",
                                        "protocol").inc
        self.failed = LabelledCounter(s, "downstream_cx_detect_failed",
                                      "Connections closed because protocol detection failed", "reason").inc


class AutoListenerFactory(ListenerFactory):
    """
    The factory of one ``protocol: auto`` listener.

    @param listenerConfig: the auto listener's ListenerConfig (``detect``: timeout, byte bound).
    @param runtime: the service's Runtime (clock, stats, overload).
    @param targets: ``{protocol: factory}`` for the protocols of L{txmesh.protocols.auto.codec} (``http1``,
        ``http2``, ``dubbo``): the factory each detected connection is handed to (the target listener's factory,
        or its network-filter wrapper: what its port would serve).
    @param serverTLS: the listener's L{txmesh.interfaces.IServerTLS}, or None: TLS ClientHellos are refused.
    """

    def __init__(self, listenerConfig, runtime, targets, serverTLS=None, stats=None):
        stats = stats if stats is not None else AutoListenerStats(runtime.stats, listenerConfig.name)
        ListenerFactory.__init__(self, listenerConfig, None, runtime, stats)
        detect = listenerConfig.detect
        self.targets = dict(targets)
        self.timeout = detect.timeout
        self.maxBytes = detect.maxBytes
        self.serverTLS = serverTLS
        plain = frozenset(self.targets)
        self.outerProtocols = plain | {TLS}  # a ClientHello is recognised (and refused without serverTLS)
        self.innerProtocols = plain
        self.protocol = DetectingProtocol  # ListenerFactory.buildProtocol: the overload bounds, then one of these


@implementer(IListenerConnection)
class DetectingProtocol(Protocol):
    """
    One connection of an auto listener until its protocol is known (see the module docstring).

    @ivar next: what the detector forwards to once decided, when the transport could not be switched (the TLS
        layer or the target protocol); None before.
    """

    def __init__(self, factory):
        self.factory = factory
        self.sniffer = ProtocolSniffer(factory.outerProtocols, factory.maxBytes)
        self.next = None
        self.tls = None  # the TLSMemoryBIOProtocol, once a ClientHello came
        self._counted = False
        self._handshaken = False
        self._timer = None

    # -- the raw transport's events ---------------------------------------------------------------------------

    def connectionMade(self):
        f = self.factory
        f.connectionOpened(self)
        self._counted = True
        if f.timeout:
            self._timer = f.clock.callLater(f.timeout, self._timedOut)

    def dataReceived(self, data):
        if self.next is not None:
            self.next.dataReceived(data)
            return
        if not self._counted:
            return  # failed or handed on: nothing more is read here
        protocol = self._sniff(self.sniffer, data)
        if protocol is None:
            return
        if protocol == TLS:
            self.factory.stats.detected(TLS)
            if self.factory.serverTLS is None:
                self._fail("no_tls")
            else:
                self._startTLS()
        else:
            self._handOff(protocol, self.transport, self)

    def connectionLost(self, reason):
        nxt, self.next = self.next, None
        if nxt is not None:
            nxt.connectionLost(reason)  # the TLS layer first: a failed handshake is counted as such
        self._release()

    # -- detection ------------------------------------------------------------------------------------------------

    def _sniff(self, sniffer, data):
        try:
            return sniffer.feed(data)
        except DetectionFailed as e:
            self._fail(e.why)
            return None

    def _fail(self, why):
        f = self.factory
        f.stats.failed(why)
        f.overload.logOnce.warn(("detect_failed", f.listenerName, why),
                                "listener {l}: closed a connection whose protocol was not detected ({why}); "
                                "{n} in the last {interval}s", l=f.listenerName, why=why)
        self._release()
        self.transport.loseConnection()

    def _timedOut(self):
        self._timer = None
        if self._counted:
            self._fail("timeout")

    def _release(self):
        """Leave the auto listener's books (once): the connection is handed on, failed or gone."""
        if not self._counted:
            return
        self._counted = False
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None
        self.factory.connectionClosed(self)

    def _handOff(self, protocol, transport, current):
        """
        Give the connection to ``protocol``'s target: ``transport`` (the raw one, or the TLS layer) switches from
        ``current`` (this detector or the decrypted-side sniffer) to the target protocol, which gets the bytes read.
        """
        f = self.factory
        data = self.sniffer.data
        f.stats.detected(protocol)
        self._release()  # before the target's factory counts it (overload: once)
        target = f.targets[protocol].buildProtocol(transport.getPeer())
        if target is None:  # refused by the target's bounds, which counted it
            self.transport.loseConnection()
            return
        if not switchProtocol(transport, current, target):
            current.next = target
        target.makeConnection(transport)
        if data:
            target.dataReceived(data)

    # -- TLS ------------------------------------------------------------------------------------------------------

    def _startTLS(self):
        f = self.factory
        hello = self.sniffer.data
        self.sniffer = ProtocolSniffer(f.innerProtocols, f.maxBytes)  # for the decrypted bytes
        # the creator is read per connection: IServerTLS keeps it current when certificates rotate
        tlsFactory = TLSMemoryBIOFactory(f.serverTLS.serverCreator, False, f, clock=f.clock)
        decrypted = _DecryptedSide(self)
        self.tls = tls = tlsFactory.protocol(tlsFactory, decrypted)
        transport = self.transport
        if not switchProtocol(transport, self, tls):
            self.next = tls
        tls.makeConnection(transport)
        tls.dataReceived(hello)

    def handshakeCompleted(self, decrypted):
        self._handshaken = True
        if not self._counted:
            return
        protocol = _ALPN.get(self.tls.negotiatedProtocol)
        if protocol in self.factory.targets:
            self._handOff(protocol, self.tls, decrypted)

    def decryptedReceived(self, decrypted, data):
        if not self._counted:
            return
        protocol = self._sniff(self.sniffer, data)
        if protocol is not None:
            self._handOff(protocol, self.tls, decrypted)

    def decryptedLost(self, reason):
        """The TLS layer lost the connection before a verdict (a failed handshake, the peer gone)."""
        if self._counted and not self._handshaken:
            self.factory.stats.failed("tls_handshake")
        self._release()

    # -- IListenerConnection: a connection being detected carries nothing ---------------------------------------

    def isIdle(self):
        return True

    def drain(self):
        self._release()
        self.transport.loseConnection()

    def closeIfIdle(self):
        self.drain()
        return True


@implementer(IHandshakeListener)
class _DecryptedSide(Protocol):
    """What the TLS layer delivers to until a verdict: the decrypted bytes and the handshake, back to the detector."""

    def __init__(self, detector):
        self.detector = detector
        self.next = None

    def handshakeCompleted(self):
        self.detector.handshakeCompleted(self)

    def dataReceived(self, data):
        if self.next is not None:
            self.next.dataReceived(data)
        else:
            self.detector.decryptedReceived(self, data)

    def connectionLost(self, reason):
        nxt, self.next = self.next, None
        if nxt is not None:
            nxt.connectionLost(reason)
        else:
            self.detector.decryptedLost(reason)

