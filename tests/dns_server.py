"""
A real authoritative DNS server for the DNS discovery tests: Twisted's own (``twisted.names.server``) over UDP and TCP
on one free loopback port, answering from records the test changes while it runs.

In-process (the reactor thread of tests/reactor_thread.py): ``listen(reactor, authority)`` with a ``ZoneAuthority``
whose ``setRecords`` replaces the zone.  As a subprocess (the end-to-end test):

    python tests/dns_server.py ZONE_JSON PORT_FILE

serves ZONE_JSON ({"name": [["A", "127.0.0.2", ttl], ["AAAA", "::1", ttl]], ...}), re-read whenever its mtime
changes (write it with an atomic rename), and writes the port it bound to PORT_FILE.
"""

import json
import os
import sys

from twisted.internet import defer
from twisted.internet.error import CannotListenError
from twisted.names import authority, dns, server

ORIGIN = b"test.internal"


class ZoneAuthority(authority.FileAuthority):
    """
    The zone ``test.internal`` from a dict {name: [(type, address, ttl), ...]} (names without the origin are put
    under it); NXDOMAIN for the zone's other names.  ``path``: a JSON file of that dict, re-read when it changes.
    While ``silent``, queries go unanswered (a server that stopped responding).
    """

    silent = False

    def __init__(self, records=None, path=None):
        self.path = path
        self.mtime = None
        super().__init__(None)
        self.setRecords(records or {})

    def loadFile(self, filename):
        self.soa = (ORIGIN, dns.Record_SOA(mname=b"ns." + ORIGIN, rname=b"admin." + ORIGIN, serial=1,
                                           refresh=60, retry=60, expire=60, minimum=1, ttl=1))

    def setRecords(self, records):
        zone = {ORIGIN: [self.soa[1]]}
        for name, entries in records.items():
            fqdn = name.encode("ascii").lower()
            if not fqdn.endswith(ORIGIN):
                fqdn += b"." + ORIGIN
            zone[fqdn] = [dns.Record_A(address, ttl=ttl) if kind == "A" else dns.Record_AAAA(address, ttl=ttl)
                          for kind, address, ttl in entries]
        self.records = zone

    def _lookup(self, name, cls, type, timeout=None):
        if self.silent:
            return defer.Deferred()
        if self.path is not None:
            st = os.stat(self.path)
            mtime = (st.st_ino, st.st_mtime_ns)
            if mtime != self.mtime:
                self.mtime = mtime
                with open(self.path) as f:
                    self.setRecords(json.load(f))
        return super()._lookup(name, cls, type, timeout)


def listen(reactor, zone, interface="127.0.0.1"):
    """Serve ``zone`` on ``interface``, UDP and TCP on one free port; @return: (port number, [listening ports])."""
    factory = server.DNSServerFactory(authorities=[zone])
    for _ in range(20):
        udp = reactor.listenUDP(0, dns.DNSDatagramProtocol(factory), interface=interface)
        number = udp.getHost().port
        try:
            tcp = reactor.listenTCP(number, factory, interface=interface)
        except CannotListenError:
            udp.stopListening()
            continue
        return number, [udp, tcp]
    raise RuntimeError("no loopback port free for both UDP and TCP after 20 tries")


def main(zonePath, portFile):
    from twisted.internet import reactor
    number, _ = listen(reactor, ZoneAuthority(path=zonePath))
    with open(portFile + ".tmp", "w") as f:
        f.write(str(number))
    os.rename(portFile + ".tmp", portFile)
    reactor.run()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
