"""
The DNS discovery source (issue 12, part 1): Envoy's STRICT_DNS and LOGICAL_DNS cluster types through Twisted's own
resolver (``twisted.names``), honouring /etc/hosts and /etc/resolv.conf.  Its keys: txmesh.discovery.dns_config.

- **strict**: every A/AAAA record of every name is a host; the set is the union over the names (an address:port
  two names share is one host, with the first name's weight).  NXDOMAIN and an empty answer are a real empty set for
  that name, as Envoy's c-ares resolver reports ARES_ENOTFOUND/ARES_ENODATA as "completed, no records".
- **logical**: one host per name, the first address of the answer, kept while it stays in the answers (Envoy moves
  its logical host to whatever comes first each time; txmesh keeps it, because here a changed host is a removed
  host whose pool drains, and round-robin DNS reorders every answer).  As in Envoy, an empty answer does not empty
  a logical name: it counts as a failure and the last address stays.

One *round* resolves every name; a round in which any name fails changes nothing (``sink.sourceFailed``) and the
next comes after a jittered exponential back-off (``failure_refresh_rate``).  After a good round the next comes at
``refresh_rate``, or, with ``respect_dns_ttl``, at the smallest TTL of the records used, clamped to
[``min_ttl``, ``max_ttl``].  Every good round delivers the whole set (``sink.hostsUpdated``; the sink skips the
rebuild when nothing changed); its ``version`` is a hash of the sorted set, so equal sets have equal versions.
"""

import dataclasses
import hashlib
import os
import random
import socket

from twisted.internet import defer
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.logger import Logger
from twisted.names import client, dns, error, hosts, resolve
from twisted.python.failure import Failure
from zope.interface import implementer

from txmesh.discovery.dns_config import KEYS, buildDNSConfig
from txmesh.interfaces import IDiscoverySource, IDiscoverySourceFactory

# twisted.names' errors for a server's failing answer (their messages are whole DNS messages): the rcode's name
_RCODES = ((error.DNSServerError, "SERVFAIL"), (error.DNSQueryRefusedError, "REFUSED"),
           (error.DNSFormatError, "FORMERR"), (error.DNSNotImplementedError, "NOTIMP"),
           (error.DNSUnknownError, "an unknown rcode"))


class ResolvConfResolver(client.Resolver):
    """
    Twisted's DNS client, reading resolv.conf when a query goes out (if the file changed) instead of on a
    timer: ``client.Resolver`` re-reads it every 60 s on a DelayedCall that nothing public cancels, which would
    outlive a stopped source.  The parsing stays Twisted's (``parseConfig``).
    """

    log = Logger()
    _resolvMtime = None

    def maybeParseConfig(self):
        if self.resolv is None:
            return
        try:
            with open(self.resolv, "rb") as f:
                mtime = os.fstat(f.fileno()).st_mtime
                if mtime != self._resolvMtime:
                    self._resolvMtime = mtime
                    self.parseConfig(f)
        except FileNotFoundError:
            if self._resolvMtime is not False:
                self._resolvMtime = False
                self.parseConfig(())  # Twisted's answer to a missing file: 127.0.0.1:53
        except OSError as e:
            # unreadable: keep the servers read before (Twisted's client would raise out of its timer); at first, none
            # were read: Twisted's default for an empty file
            if self._resolvMtime is None:
                self._resolvMtime = False
                self.parseConfig(())
                self.log.warn("cannot read {path} ({e}): asking 127.0.0.1:53", path=self.resolv, e=e)

    def queryUDP(self, queries, timeout=None):
        self.maybeParseConfig()
        return super().queryUDP(queries, timeout)


def makeResolver(config, reactor):
    """
    The resolver ``client.createResolver`` would build (/etc/hosts first, then the DNS servers of resolv.conf or of
    ``resolvers``), with the reactor injected (createResolver takes none and would use the global one) and without
    its cache: the source itself re-resolves at the records' TTL.
    """
    chain = []
    if config.hostsFile:
        chain.append(hosts.Resolver(config.hostsFile.encode("utf-8")))
    if config.resolvers:
        chain.append(ResolvConfResolver(servers=list(config.resolvers), reactor=reactor))
    else:
        chain.append(ResolvConfResolver(resolv=config.resolvConf, reactor=reactor))
    return resolve.ResolverChain(chain)


class _Answer:
    """One name's addresses from one round (in answer order) and the smallest TTL among them (None: no records)."""

    __slots__ = ("addresses", "ttl")

    def __init__(self, addresses=(), ttl=None):
        self.addresses = tuple(addresses)
        self.ttl = ttl

    def merged(self, other):
        ttls = [t for t in (self.ttl, other.ttl) if t is not None]
        seen = dict.fromkeys(self.addresses + other.addresses)
        return _Answer(tuple(seen), min(ttls) if ttls else None)


def _sortKey(address):
    """Numeric order, IPv4 before IPv6 (inet_pton: a twentieth of ipaddress's cost, for answers of 1,000 records)."""
    if ":" in address:
        return 1, socket.inet_pton(socket.AF_INET6, address)
    return 0, socket.inet_pton(socket.AF_INET, address)


@implementer(IDiscoverySource)
class DNSSource:
    """
    One cluster's DNS discovery (see the module docstring).

    @param config: a L{DNSConfig}.
    @param reactor: IReactorTime for the refresh timers and query deadlines (and the resolver's sockets).
    @param sink: the cluster's IHostSetSink.
    @param resolver: a L{twisted.internet.interfaces.IResolver} (``lookupAddress``, ``lookupIPV6Address``);
        L{makeResolver} builds the real one.
    @param stats: the cluster's txmesh.stats.Scope: ``dns_queries{result=ok|not_found|timeout|failure}``.
    @param random: a random.Random for the failure back-off's jitter.
    """

    log = Logger()

    def __init__(self, config, reactor, sink, resolver, stats, clusterName="", random=random):
        self.config = config
        self.reactor = reactor
        self.sink = sink
        self.resolver = resolver
        self.clusterName = clusterName
        self.random = random
        self.queries = {result: stats.counter("dns_queries", "DNS queries by the dns discovery source, by outcome",
                                              result=result) for result in ("ok", "not_found", "timeout", "failure")}
        self.running = False
        self.addresses = {}  # target -> tuple of addresses now in use (logical: at most one)
        self.ttls = {}  # target -> the last answer's TTL or None
        self.errors = {}  # target -> why its last resolution failed
        self.version = None
        self.consecutiveFailures = 0
        self._round = None  # the DeferredList of the round in flight
        self._next = None  # the DelayedCall of the next round

    # -- IDiscoverySource --

    def start(self):
        if self.running:
            return
        self.running = True
        self._resolveAll()

    def stop(self):
        self.running = False
        if self._next is not None and self._next.active():
            self._next.cancel()
        self._next = None
        inFlight, self._round = self._round, None
        if inFlight is not None:
            inFlight.cancel()

    def describe(self):
        nextIn = None
        if self._next is not None and self._next.active():
            nextIn = round(max(0.0, self._next.getTime() - self.reactor.seconds()), 3)
        return {
            "mode": self.config.mode,
            "lookup_family": self.config.lookupFamily,
            "resolvers": ["%s:%d" % s for s in self.config.resolvers],  # [] : resolv_conf's nameservers
            "resolv_conf": None if self.config.resolvers else self.config.resolvConf,
            "hosts_file": self.config.hostsFile or None,
            "names": [{"name": t.host, "port": t.port, "addresses": list(self.addresses.get(t, ())),
                       "ttl": self.ttls.get(t), "error": self.errors.get(t)} for t in self.config.targets],
            "version": self.version,
            "consecutive_failures": self.consecutiveFailures,
            "next_resolution_in": nextIn,
        }

    # -- rounds --

    def _resolveAll(self):
        self._next = None
        if not self.running:
            return
        d = defer.DeferredList([self._resolveTarget(t) for t in self.config.targets], consumeErrors=True)
        self._round = d
        d.addCallback(self._roundDone, d)

    def _roundDone(self, results, d):
        if d is not self._round or not self.running:
            return  # stopped (or superseded) meanwhile
        self._round = None
        try:
            delay = self._apply(results)
        except Exception:
            self.log.failure("dns discovery of cluster {cluster}: unexpected error", cluster=self.clusterName)
            delay = self._failed()
        if self.running:
            self._next = self.reactor.callLater(delay, self._resolveAll)

    def _apply(self, results):
        """Deliver one round's outcome to the sink; @return: the delay until the next round."""
        failures = []
        answers = {}
        for target, (ok, result) in zip(self.config.targets, results):
            if not ok:
                failures.append((target, self._why(result)))
            elif self.config.mode == "logical" and not result.addresses:
                failures.append((target, "no addresses (a logical name keeps its last address)"))
            else:
                answers[target] = result
        for target, why in failures:
            self.errors[target] = why
        if failures:
            self.sink.sourceFailed("dns: " + "; ".join("%s: %s" % (t.host, why) for t, why in failures))
            return self._failed()
        self.consecutiveFailures = 0
        for target, answer in answers.items():
            self.errors.pop(target, None)
            self.ttls[target] = answer.ttl
            if self.config.mode == "strict":
                self.addresses[target] = tuple(sorted(answer.addresses, key=_sortKey))
            else:
                current = self.addresses.get(target, ())
                if not current or current[0] not in answer.addresses:
                    self.addresses[target] = answer.addresses[:1]
        endpoints = self._endpoints()
        self.version = hashlib.sha1(repr([(e.host, e.port, e.weight, e.priority, e.locality)
                                          for e in endpoints]).encode("utf-8")).hexdigest()[:12]
        self.sink.hostsUpdated(endpoints, self.version)
        ttls = [a.ttl for a in answers.values() if a.ttl is not None]
        if self.config.respectDnsTtl and ttls:
            return min(max(min(ttls), self.config.minTtl), self.config.maxTtl)
        return self.config.refreshRate

    def _endpoints(self):
        seen, out = set(), []
        for target in self.config.targets:
            for address in self.addresses.get(target, ()):
                if (address, target.port) not in seen:
                    seen.add((address, target.port))
                    out.append(dataclasses.replace(target, host=address))
        return tuple(out)

    def _failed(self):
        """Count a failed round; @return: the back-off: base x 2^(n-1), capped, jittered to [1/2, 1] of that."""
        self.consecutiveFailures += 1
        interval = min(self.config.failureBaseInterval * 2 ** min(self.consecutiveFailures - 1, 32),
                       self.config.failureMaxInterval)
        return interval * (0.5 + 0.5 * self.random.random())

    @staticmethod
    def _why(failure):
        if failure.check(defer.TimeoutError, error.DNSQueryTimeoutError, defer.CancelledError):
            return "timed out"
        for kind, rcode in _RCODES:
            if failure.check(kind):
                return "the server answered %s" % (rcode,)
        return failure.getErrorMessage() or failure.type.__name__

    # -- one name --

    def _resolveTarget(self, target):
        if isIPAddress(target.host) or isIPv6Address(target.host):
            return defer.succeed(_Answer((target.host,)))  # an address literal: never looked up
        family = self.config.lookupFamily
        if family == "v4_only":
            d = self._query(target.host, False)
        elif family == "v6_only":
            d = self._query(target.host, True)
        elif family == "all":
            d = self._both(target.host)
        else:
            d = self._preferred(target.host, family == "auto")
        return d.addTimeout(self.config.timeout, self.reactor)  # cancels the query (or both) in flight

    def _preferred(self, name, v6First):
        """Envoy's AUTO (AAAA, then A if none) and V4_PREFERRED (A, then AAAA if none)."""
        firstFailure = []

        def fallback(result):
            if isinstance(result, Failure):
                if result.check(defer.CancelledError):
                    return result  # timed out or stopped: no second query
                firstFailure.append(result)
            elif result.addresses:
                return result
            return self._query(name, not v6First).addCallback(lastEmpty)

        def lastEmpty(result):
            if not result.addresses and firstFailure:
                return firstFailure[0]  # nothing from either family and one failed: the round failed
            return result

        return self._query(name, v6First).addBoth(fallback)

    def _both(self, name):
        """Envoy's ALL: A and AAAA together; fails only when both fail."""
        d = defer.DeferredList([self._query(name, False), self._query(name, True)], consumeErrors=True)

        def combine(results):
            (ok4, r4), (ok6, r6) = results
            if not ok4 and not ok6:
                return r4
            return (r4 if ok4 else _Answer()).merged(r6 if ok6 else _Answer())

        return d.addCallback(combine)

    def _query(self, name, v6):
        """One query of one family: an _Answer (empty for NXDOMAIN or no records) or a failure."""
        lookup = self.resolver.lookupIPV6Address if v6 else self.resolver.lookupAddress
        d = defer.maybeDeferred(lookup, name, self.config.retransmits())
        kind = dns.AAAA if v6 else dns.A

        def answered(result):
            records = [rr for rr in result[0] if rr.type == kind]
            self.queries["ok" if records else "not_found"].inc()
            if v6:
                addresses = [socket.inet_ntop(socket.AF_INET6, rr.payload.address) for rr in records]
            else:
                addresses = [rr.payload.dottedQuad() for rr in records]
            return _Answer(addresses, min(rr.ttl for rr in records) if records else None)

        def failed(failure):
            # NXDOMAIN, or no record anywhere in the chain (a bare DomainError); the other DomainErrors are the rcodes
            # of a failing server (SERVFAIL, REFUSED ...)
            if failure.check(error.DNSNameError) or failure.type is error.DomainError:
                self.queries["not_found"].inc()
                return _Answer()
            if failure.check(defer.CancelledError) and not self.running:
                return failure  # stopped
            # cancelled while running: the name's ``timeout`` (its resolver's own timeout: DNSQueryTimeoutError)
            self.queries["timeout" if failure.check(defer.CancelledError, defer.TimeoutError,
                                                    error.DNSQueryTimeoutError) else "failure"].inc()
            return failure

        return d.addCallbacks(answered, failed)


@implementer(IDiscoverySourceFactory)
class DNSSourceFactory:
    """``discovery: {type: dns, ...}``: the plugin (txmesh/plugins/txmesh_discovery_dns.py)."""

    name = "dns"
    keys = KEYS
    registryType = None

    def buildConfig(self, raw, context):
        return buildDNSConfig(raw, context)

    def makeSource(self, config, context, sink):
        return DNSSource(config, context.reactor, sink, makeResolver(config, context.reactor), context.stats,
                         context.clusterName)
