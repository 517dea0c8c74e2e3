"""
The DNS discovery source (txmesh.discovery.dns) with a scripted resolver and a Clock: strict and logical sets, TTL
clamping, refresh, the failure back-off, lookup families, /etc/hosts names, stop(); its config errors.
"""

import random

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.names import common, dns, error
from twisted.plugin import getPlugins
from zope.interface import implementer
from zope.interface.verify import verifyObject

import txmesh.plugins
from txmesh import config
from txmesh.config import EndpointConfig
from txmesh.discovery.base import SourceContext
from txmesh.discovery.dns import DNSSource, DNSSourceFactory, makeResolver
from txmesh.discovery.dns_config import DNSConfig
from txmesh.errors import ConfigError
from txmesh.interfaces import IDiscoverySource, IDiscoverySourceFactory, IHostSetSink
from txmesh.stats import StatsStore


@implementer(IHostSetSink)
class RecordingSink:
    """Every call the source makes, in order: ("hosts", [(host, port, weight)...], version) or ("failed", reason)."""

    def __init__(self):
        self.calls = []

    def hostsUpdated(self, endpoints, version):
        self.calls.append(("hosts", [(e.host, e.port, e.weight) for e in endpoints], version))

    def sourceFailed(self, reason):
        self.calls.append(("failed", reason))

    @property
    def last(self):
        return self.calls[-1]


class ScriptedResolver(common.ResolverBase):
    """
    An IResolver answering from ``answers`` {(name, "A"|"AAAA"): [(address, ttl), ...] or an exception}; a name it
    does not know is NXDOMAIN.  With ``hold`` set, queries wait in ``pending`` until the test fires them.
    """

    def __init__(self, answers=None):
        super().__init__()
        self.answers = dict(answers or {})
        self.queries = []
        self.hold = False
        self.pending = []

    def _lookup(self, name, cls, type, timeout):
        kind = "AAAA" if type == dns.AAAA else "A"
        self.queries.append((name.decode(), kind))
        if self.hold:
            d = defer.Deferred()
            self.pending.append(d)
            return d
        value = self.answers.get((name.decode(), kind))
        if value is None:
            return defer.fail(error.DNSNameError(name))
        if isinstance(value, Exception):
            return defer.fail(value)
        records = [dns.RRHeader(name, type, dns.IN, ttl, dns.Record_AAAA(a, ttl) if type == dns.AAAA else
                                dns.Record_A(a, ttl)) for a, ttl in value]
        return defer.succeed((records, [], []))


def targets(*specs):
    return tuple(EndpointConfig(name, port, weight) for name, port, weight in specs)


def nextIn(clock):
    """Seconds until the source's next round (its only timer between rounds)."""
    (call,) = clock.getDelayedCalls()
    return call.getTime() - clock.seconds()


def makeSource(answers, *, names=(("svc.example", 80, 1),), **kw):
    cfg = DNSConfig(targets=targets(*names), **kw)
    clock, sink, resolver = Clock(), RecordingSink(), ScriptedResolver(answers)
    stats = StatsStore().scope(cluster="c")
    rng = random.Random()
    rng.random = lambda: 1.0  # the back-off's jitter at its top: delays are exact
    source = DNSSource(cfg, clock, sink, resolver, stats, "c", rng)
    return source, clock, sink, resolver, stats


def test_contracts_and_plugin():
    source, _, sink, _, _ = makeSource({("svc.example", "A"): [("10.0.0.1", 30)]})
    verifyObject(IDiscoverySource, source)
    verifyObject(IHostSetSink, sink)
    factory = {p.name: p for p in getPlugins(IDiscoverySourceFactory, txmesh.plugins)}["dns"]
    verifyObject(IDiscoverySourceFactory, factory)
    assert factory.registryType is None and "hosts" in factory.keys


def test_strict_is_the_union_of_every_record_sorted_and_merged():
    source, _, sink, _, _ = makeSource(
        {("a.example", "A"): [("10.0.0.9", 30), ("10.0.0.1", 30)],
         ("b.example", "A"): [("10.0.0.1", 30), ("10.0.0.5", 30)]},
        names=(("a.example", 80, 2), ("b.example", 80, 1)))
    source.start()
    # one host per address:port; the first name's weight wins for the shared one; addresses sorted per name
    assert sink.calls == [("hosts", [("10.0.0.1", 80, 2), ("10.0.0.9", 80, 2), ("10.0.0.5", 80, 1)],
                           source.version)]


def test_version_names_the_set():
    source, clock, sink, resolver, _ = makeSource({("svc.example", "A"): [("10.0.0.1", 10), ("10.0.0.2", 10)]})
    source.start()
    first = sink.last[2]
    resolver.answers[("svc.example", "A")] = [("10.0.0.2", 10), ("10.0.0.1", 10)]  # reordered: the same set
    clock.advance(10)
    assert sink.last == ("hosts", [("10.0.0.1", 80, 1), ("10.0.0.2", 80, 1)], first)
    resolver.answers[("svc.example", "A")] = [("10.0.0.2", 10)]
    clock.advance(10)
    assert sink.last == ("hosts", [("10.0.0.2", 80, 1)], sink.last[2]) and sink.last[2] != first


@pytest.mark.parametrize("ttl,expected", [(0, 5.0), (1, 5.0), (42, 42.0), (86400, 300.0)])
def test_next_resolution_at_the_ttl_clamped(ttl, expected):
    source, clock, _, resolver, _ = makeSource({("svc.example", "A"): [("10.0.0.1", ttl)]})
    source.start()
    assert source.describe()["next_resolution_in"] == expected
    clock.advance(expected - 0.001)
    assert len(resolver.queries) == 1
    clock.advance(0.001)
    assert len(resolver.queries) == 2


def test_the_smallest_ttl_of_a_round_wins():
    source, clock, _, resolver, _ = makeSource(
        {("a.example", "A"): [("10.0.0.1", 60), ("10.0.0.2", 20)], ("b.example", "A"): [("10.0.0.3", 40)]},
        names=(("a.example", 80, 1), ("b.example", 80, 1)))
    source.start()
    assert source.describe()["next_resolution_in"] == 20


def test_refresh_rate_without_respect_dns_ttl():
    source, clock, _, resolver, _ = makeSource({("svc.example", "A"): [("10.0.0.1", 600)]},
                                               respectDnsTtl=False, refreshRate=2.5)
    source.start()
    clock.advance(2.5)
    clock.advance(2.5)
    assert len(resolver.queries) == 3


def test_failure_keeps_the_set_and_backs_off_doubling_to_the_cap_then_recovers():
    source, clock, sink, resolver, stats = makeSource({("svc.example", "A"): [("10.0.0.1", 30)]},
                                                      failureBaseInterval=1.0, failureMaxInterval=5.0)
    source.start()
    resolver.answers[("svc.example", "A")] = error.DNSServerError("boom")
    clock.advance(30)
    assert sink.last == ("failed", "dns: svc.example: the server answered SERVFAIL")
    delays = []
    for _ in range(5):
        delays.append(source.describe()["next_resolution_in"])
        clock.advance(delays[-1])
    assert delays == [1.0, 2.0, 4.0, 5.0, 5.0]
    assert [c[0] for c in sink.calls] == ["hosts"] + ["failed"] * 6  # the set was never touched
    assert stats.store.value("dns_queries", cluster="c", result="failure") == 6
    resolver.answers[("svc.example", "A")] = [("10.0.0.7", 30)]
    clock.advance(source.describe()["next_resolution_in"])
    assert sink.last[:2] == ("hosts", [("10.0.0.7", 80, 1)])
    assert source.describe()["consecutive_failures"] == 0 and source.describe()["next_resolution_in"] == 30


def test_backoff_jitter_stays_within_half_and_whole_interval():
    source, clock, sink, resolver, _ = makeSource({("svc.example", "A"): error.DNSServerError("x")},
                                                  failureBaseInterval=4.0, failureMaxInterval=40.0)
    source.random = random.Random(7)
    source.start()
    interval = 4.0
    for _ in range(6):
        delay = nextIn(clock)
        assert interval / 2 <= delay <= interval
        clock.advance(delay)
        interval = min(interval * 2, 40.0)


def test_a_query_that_never_answers_fails_at_the_timeout():
    source, clock, sink, resolver, stats = makeSource({}, timeout=2.0)
    resolver.hold = True
    source.start()
    clock.advance(1.999)
    assert sink.calls == []
    clock.advance(0.001)
    assert sink.last == ("failed", "dns: svc.example: timed out")
    assert stats.store.value("dns_queries", cluster="c", result="timeout") == 1
    assert resolver.pending[0].called  # cancelled: its resolver may drop it


def test_strict_nxdomain_and_empty_answers_are_an_empty_set():
    source, clock, sink, resolver, stats = makeSource({("svc.example", "A"): [("10.0.0.1", 10)]},
                                                      lookupFamily="v4_only")
    source.start()
    del resolver.answers[("svc.example", "A")]  # NXDOMAIN
    clock.advance(10)
    assert sink.last[:2] == ("hosts", [])
    resolver.answers[("svc.example", "A")] = []  # NOERROR, no records
    clock.advance(5)  # no TTL in an empty answer: refresh_rate
    assert sink.last[:2] == ("hosts", [])
    assert stats.store.value("dns_queries", cluster="c", result="not_found") == 2


def test_logical_keeps_its_address_while_it_is_answered():
    source, clock, sink, resolver, _ = makeSource({("svc.example", "A"): [("10.0.0.1", 10), ("10.0.0.2", 10)]},
                                                  mode="logical")
    source.start()
    assert sink.last[1] == [("10.0.0.1", 80, 1)]
    resolver.answers[("svc.example", "A")] = [("10.0.0.2", 10), ("10.0.0.1", 10)]  # rotated by round-robin DNS
    clock.advance(10)
    assert sink.last[1] == [("10.0.0.1", 80, 1)]
    resolver.answers[("svc.example", "A")] = [("10.0.0.3", 10), ("10.0.0.2", 10)]  # gone: the new first one
    clock.advance(10)
    assert sink.last[1] == [("10.0.0.3", 80, 1)]


def test_logical_empty_answer_keeps_the_last_address_as_envoy():
    source, clock, sink, resolver, _ = makeSource({("svc.example", "A"): [("10.0.0.1", 10)]}, mode="logical",
                                                  lookupFamily="v4_only")
    source.start()
    del resolver.answers[("svc.example", "A")]
    clock.advance(10)
    assert sink.last == ("failed", "dns: svc.example: no addresses (a logical name keeps its last address)")
    resolver.answers[("svc.example", "A")] = [("10.0.0.4", 10)]
    clock.advance(source.describe()["next_resolution_in"])
    assert sink.last[1] == [("10.0.0.4", 80, 1)]


def test_logical_one_host_per_name():
    source, _, sink, _, _ = makeSource(
        {("a.example", "A"): [("10.0.0.1", 10), ("10.0.0.2", 10)], ("b.example", "A"): [("10.0.1.1", 10)]},
        names=(("a.example", 80, 1), ("b.example", 81, 3)), mode="logical")
    source.start()
    assert sink.last[1] == [("10.0.0.1", 80, 1), ("10.0.1.1", 81, 3)]


BOTH = {("svc.example", "A"): [("10.0.0.1", 10)], ("svc.example", "AAAA"): [("fd00::1", 10)]}


@pytest.mark.parametrize("family,answers,queries,hosts", [
    ("v4_only", BOTH, [("svc.example", "A")], ["10.0.0.1"]),
    ("v6_only", BOTH, [("svc.example", "AAAA")], ["fd00::1"]),
    ("v4_preferred", BOTH, [("svc.example", "A")], ["10.0.0.1"]),
    ("v4_preferred", {("svc.example", "AAAA"): [("fd00::1", 10)]}, [("svc.example", "A"), ("svc.example", "AAAA")],
     ["fd00::1"]),
    ("auto", BOTH, [("svc.example", "AAAA")], ["fd00::1"]),
    ("auto", {("svc.example", "A"): [("10.0.0.1", 10)]}, [("svc.example", "AAAA"), ("svc.example", "A")],
     ["10.0.0.1"]),
    ("all", BOTH, [("svc.example", "A"), ("svc.example", "AAAA")], ["10.0.0.1", "fd00::1"]),
    ("all", {("svc.example", "A"): [("10.0.0.1", 10)], ("svc.example", "AAAA"): error.DNSServerError("x")},
     [("svc.example", "A"), ("svc.example", "AAAA")], ["10.0.0.1"]),
])
def test_lookup_families(family, answers, queries, hosts):
    source, _, sink, resolver, _ = makeSource(answers, lookupFamily=family)
    source.start()
    assert resolver.queries == queries
    assert [h for h, _, _ in sink.last[1]] == hosts


def test_preferred_family_failing_with_nothing_from_the_other_fails_the_round():
    source, _, sink, _, _ = makeSource({("svc.example", "A"): error.DNSQueryRefusedError("x")})
    source.start()
    assert sink.last == ("failed", "dns: svc.example: the server answered REFUSED")


def test_address_literals_are_never_looked_up():
    cfg = DNSConfig(targets=(EndpointConfig("127.0.0.1", 8080),))
    resolver, sink = ScriptedResolver(), RecordingSink()
    DNSSource(cfg, Clock(), sink, resolver, StatsStore().scope()).start()
    assert resolver.queries == [] and sink.last[1] == [("127.0.0.1", 8080, 1)]


def test_stop_cancels_the_query_in_flight_and_every_timer():
    source, clock, sink, resolver, _ = makeSource({})
    resolver.hold = True
    source.start()
    source.stop()
    assert resolver.pending[0].called and clock.getDelayedCalls() == [] and sink.calls == []
    source, clock, sink, resolver, _ = makeSource({("svc.example", "A"): [("10.0.0.1", 10)]})
    source.start()
    source.stop()
    clock.advance(60)
    assert clock.getDelayedCalls() == [] and len(sink.calls) == 1 and len(resolver.queries) == 1


def test_start_twice_is_one_loop_and_start_after_stop_resumes():
    source, clock, sink, resolver, _ = makeSource({("svc.example", "A"): [("10.0.0.1", 10)]})
    source.start()
    source.start()
    assert len(resolver.queries) == 1 and len(clock.getDelayedCalls()) == 1
    source.stop()
    source.start()
    clock.advance(10)
    assert len(resolver.queries) == 3 and len(clock.getDelayedCalls()) == 1


def test_a_failing_sink_does_not_stop_the_refresh():
    source, clock, sink, resolver, _ = makeSource({("svc.example", "A"): [("10.0.0.1", 10)]},
                                                  failureBaseInterval=1.0)

    def broken(endpoints, version):
        raise RuntimeError("sink bug")

    sink.hostsUpdated = broken
    source.start()
    clock.advance(1.0)
    assert len(resolver.queries) == 2


def test_describe_is_json():
    import json
    source, _, _, _, _ = makeSource({("svc.example", "A"): [("10.0.0.1", 10)]})
    source.start()
    described = json.loads(json.dumps(source.describe()))
    assert described["names"] == [{"name": "svc.example", "port": 80, "addresses": ["10.0.0.1"], "ttl": 10,
                                   "error": None}]
    assert described["mode"] == "strict" and described["version"] == source.version


def test_etc_hosts_names_through_the_real_resolver(tmp_path):
    """Names in the hosts file answer without a query going out (the servers here are never reached)."""
    hostsFile = tmp_path / "hosts"
    hostsFile.write_text("127.0.0.1 localhost\n10.1.2.3 app.internal app\n10.1.2.4 app.internal\n")
    cfg = DNSConfig(targets=targets(("app.internal", 9000, 1)), hostsFile=str(hostsFile),
                    resolvers=(("127.0.0.1", 9),), lookupFamily="v4_only")
    clock, sink = Clock(), RecordingSink()
    source = DNSSource(cfg, clock, sink, makeResolver(cfg, clock), StatsStore().scope())
    source.start()
    assert sink.last[1] == [("10.1.2.3", 9000, 1), ("10.1.2.4", 9000, 1)]
    # twisted.names gives hosts-file records a TTL of an hour: clamped to max_ttl
    assert source.describe()["next_resolution_in"] == 300
    hostsFile.write_text("10.1.2.5 app.internal\n")
    clock.advance(300)
    assert sink.last[1] == [("10.1.2.5", 9000, 1)]
    source.stop()
    assert clock.getDelayedCalls() == []


def test_make_source_through_the_factory(tmp_path):
    hostsFile = tmp_path / "hosts"
    hostsFile.write_text("10.9.9.9 db.internal\n")
    factory = DNSSourceFactory()
    cfg = DNSConfig(targets=targets(("db.internal", 5432, 1)), hostsFile=str(hostsFile), lookupFamily="v4_only")
    clock, sink = Clock(), RecordingSink()
    source = factory.makeSource(cfg, SourceContext(clock, "db", "http1", StatsStore().scope(cluster="db")), sink)
    source.start()
    assert sink.last[1] == [("10.9.9.9", 5432, 1)]
    source.stop()


# -- config --

MESH = """\
clusters:
  - name: backend
    discovery:
      type: dns
%s
listeners:
  - name: outbound
    address: tcp:15001:interface=127.0.0.1
    route_config:
      virtual_hosts:
        - name: all
          domains: ["*"]
          routes:
            - match: {prefix: /}
              route: {cluster: backend}
"""


def load(keys):
    return config.loads(MESH % "\n".join("      " + line for line in keys.strip().splitlines()), "mesh.yaml")


def test_config_full():
    mesh = load("""
mode: logical
hosts: ["api.example.com:443", {address: "10.0.0.1:8080", weight: 3, priority: 1, locality: z1}, "[::1]:80"]
lookup_family: all
refresh_rate: 2s
respect_dns_ttl: false
min_ttl: 1s
max_ttl: 1m
failure_refresh_rate: {base_interval: 500ms, max_interval: 8s}
timeout: 1500ms
resolvers: ["127.0.0.1:5353", "10.0.0.53", "[::1]:5353", "fd00::53"]
hosts_file: ""
""")
    d = mesh.clusters[0].discovery
    c = d.sourceConfig
    assert d.type == "dns" and d.registry is None
    assert c.targets == (EndpointConfig("api.example.com", 443), EndpointConfig("10.0.0.1", 8080, 3, 1, "z1"),
                         EndpointConfig("::1", 80))
    assert (c.mode, c.lookupFamily, c.refreshRate, c.respectDnsTtl, c.minTtl, c.maxTtl) == (
        "logical", "all", 2.0, False, 1.0, 60.0)
    assert (c.failureBaseInterval, c.failureMaxInterval, c.timeout) == (0.5, 8.0, 1.5)
    assert c.resolvers == (("127.0.0.1", 5353), ("10.0.0.53", 53), ("::1", 5353), ("fd00::53", 53))
    assert c.hostsFile == ""
    assert c.retransmits() == (1.0, 0.5)


def test_config_defaults():
    c = load('hosts: ["svc.example:80"]').clusters[0].discovery.sourceConfig
    assert (c.mode, c.lookupFamily, c.refreshRate, c.respectDnsTtl, c.minTtl, c.maxTtl, c.timeout) == (
        "strict", "v4_preferred", 5.0, True, 5.0, 300.0, 5.0)
    assert (c.failureBaseInterval, c.failureMaxInterval) == (5.0, 50.0)
    assert (c.resolvers, c.resolvConf, c.hostsFile) == ((), "/etc/resolv.conf", "/etc/hosts")
    assert c.retransmits() == (1.0, 3.0, 1.0)


@pytest.mark.parametrize("keys,message", [
    ("mode: round_robin\nhosts: [a.example:80]",
     "mesh.yaml:5: clusters[0].discovery.mode: unknown mode 'round_robin' (known: strict, logical)"),
    ("hosts: []", "mesh.yaml:5: clusters[0].discovery.hosts: must list at least one name:port to resolve"),
    ("mode: strict", "mesh.yaml:3: clusters[0].discovery.hosts: must list at least one name:port to resolve"),
    ("hosts: [a.example]", "mesh.yaml:5: clusters[0].discovery.hosts[0]: invalid address 'a.example'"),
    ("hosts: ['bad_name!:80']", "mesh.yaml:5: clusters[0].discovery.hosts[0]: invalid DNS name 'bad_name!'"),
    ("hosts: [a.example:80, A.example:80]", "mesh.yaml:5: clusters[0].discovery.hosts[1]: duplicate host "
     "'a.example:80' (also clusters[0].discovery.hosts[0])"),
    ("hosts:\n  - {address: a.example:80, weight: 0}",
     "mesh.yaml:6: clusters[0].discovery.hosts[0].weight: must be between 1 and 128, got 0"),
    ("hosts:\n  - {address: a.example:80, metadata: {a: b}}",
     "mesh.yaml:6: clusters[0].discovery.hosts[0].metadata: unknown key 'metadata'"),
    ("hosts: [a.example:80]\nlookup_family: V4_ONLY", "mesh.yaml:6: clusters[0].discovery.lookup_family: unknown "
     "lookup_family 'V4_ONLY' (known: v4_only, v6_only, v4_preferred, auto, all)"),
    ("hosts: [a.example:80]\nrefresh_rate: 0s", "mesh.yaml:6: clusters[0].discovery.refresh_rate: must be at least"),
    ("hosts: [a.example:80]\nmin_ttl: 10s\nmax_ttl: 5s",
     "mesh.yaml:7: clusters[0].discovery.max_ttl: must be >= min_ttl (10s)"),
    ("hosts: [a.example:80]\nfailure_refresh_rate: {base_interval: 2s, max_interval: 1s}",
     "mesh.yaml:6: clusters[0].discovery.failure_refresh_rate: max_interval must be >= base_interval (2s)"),
    ("hosts: [a.example:80]\nfailure_refresh_rate: {base: 2s}",
     "mesh.yaml:6: clusters[0].discovery.failure_refresh_rate.base: unknown key 'base'"),
    ("hosts: [a.example:80]\nresolvers: [dns.google:53]",
     "mesh.yaml:6: clusters[0].discovery.resolvers[0]: must be an IP address, optionally with :port"),
    ("hosts: [a.example:80]\nresolvers: ['127.0.0.1:99999']",
     "mesh.yaml:6: clusters[0].discovery.resolvers[0]: invalid port"),
    ("hosts: [a.example:80]\nrespect_dns_ttl: yes please",
     "mesh.yaml:6: clusters[0].discovery.respect_dns_ttl: must be"),
    ("hosts: [a.example:80]\nregistry: zk", "mesh.yaml:6: clusters[0].discovery.registry: discovery 'dns' uses no"),
])
def test_config_errors(keys, message):
    with pytest.raises(ConfigError) as e:
        load(keys)
    assert str(e.value).startswith(message), str(e.value)


def test_endpoint_config_is_what_the_sink_gets():
    source, _, _, _, _ = makeSource({("svc.example", "A"): [("10.0.0.1", 10)]})
    got = []

    @implementer(IHostSetSink)
    class Sink:
        def hostsUpdated(self, endpoints, version):
            got.append(endpoints)

        def sourceFailed(self, reason):
            pass

    source.sink = Sink()
    source.start()
    assert got == [(EndpointConfig("10.0.0.1", 80),)]


# -- against a real DNS server: Twisted's authoritative server on a loopback port, in the reactor thread --


@pytest.fixture
def dnsServer():
    """(zone, port): tests/dns_server.py's ZoneAuthority served over UDP and TCP on 127.0.0.1."""
    from tests.dns_server import ZoneAuthority, listen
    from tests.reactor_thread import onReactor, reactor
    zone = ZoneAuthority()
    port, ports = onReactor(listen, reactor(), zone)
    yield zone, port
    for p in ports:
        onReactor(p.stopListening)


def runSource(port, *names, **kw):
    from tests.reactor_thread import onReactor, reactor
    kw.setdefault("lookupFamily", "v4_only")
    cfg = DNSConfig(targets=tuple(EndpointConfig(n, 8080) for n in names), resolvers=(("127.0.0.1", port),),
                    hostsFile="", minTtl=0.2, timeout=1.0, failureBaseInterval=0.2, **kw)
    r = reactor()
    sink = RecordingSink()
    source = DNSSource(cfg, r, sink, makeResolver(cfg, r), StatsStore().scope())
    onReactor(source.start)
    return source, sink


def hostsNow(sink):
    return sink.calls and sink.last[0] == "hosts" and [h for h, _, _ in sink.last[1]]


def test_strict_follows_a_real_server_at_the_ttl(dnsServer):
    from tests.reactor_thread import onReactor, waitFor
    zone, port = dnsServer
    many = [("A", "10.0.%d.%d" % (i // 200, i % 200 + 1), 1) for i in range(60)]  # a large answer (60 hosts, ~1 KB)
    zone.setRecords({"svc": [("A", "127.0.0.2", 1), ("A", "127.0.0.3", 1)], "big": many})
    source, sink = runSource(port, "svc.test.internal", "big.test.internal")
    try:
        waitFor(lambda: hostsNow(sink) and len(hostsNow(sink)) == 62, timeout=5)
        assert hostsNow(sink)[:2] == ["127.0.0.2", "127.0.0.3"]
        assert 0.2 <= source.describe()["next_resolution_in"] <= 1.0  # the records' TTL of 1 s
        onReactor(zone.setRecords, {"svc": [("A", "127.0.0.3", 1), ("A", "127.0.0.4", 1)]})  # big: NXDOMAIN now
        waitFor(lambda: hostsNow(sink) == ["127.0.0.3", "127.0.0.4"], timeout=5)
        onReactor(zone.setRecords, {})
        waitFor(lambda: hostsNow(sink) == [], timeout=5)
        assert sink.last[2] == source.version
    finally:
        onReactor(source.stop)


def test_logical_and_families_against_a_real_server(dnsServer):
    from tests.reactor_thread import onReactor, waitFor
    zone, port = dnsServer
    zone.setRecords({"lb": [("A", "127.0.0.5", 1), ("A", "127.0.0.6", 1), ("AAAA", "::1", 1)]})
    logical, logicalSink = runSource(port, "lb.test.internal", mode="logical")
    auto, autoSink = runSource(port, "lb.test.internal", lookupFamily="auto")
    try:
        waitFor(lambda: hostsNow(logicalSink) == ["127.0.0.5"] and hostsNow(autoSink) == ["::1"], timeout=5)
        onReactor(zone.setRecords, {"lb": [("A", "127.0.0.6", 1), ("A", "127.0.0.7", 1)]})
        waitFor(lambda: hostsNow(logicalSink) == ["127.0.0.6"] and hostsNow(autoSink) == ["127.0.0.6", "127.0.0.7"],
                timeout=5)
    finally:
        onReactor(logical.stop)
        onReactor(auto.stop)


def _ipv6Loopback():
    import socket
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _ipv6Loopback(), reason="no IPv6 loopback (::1) on this machine")
def test_an_ipv6_dns_server():
    from tests.dns_server import ZoneAuthority, listen
    from tests.reactor_thread import onReactor, reactor, waitFor
    zone = ZoneAuthority({"svc": [("A", "127.0.0.2", 1)]})
    port, ports = onReactor(listen, reactor(), zone, "::1")
    cfg = DNSConfig(targets=(EndpointConfig("svc.test.internal", 8080),), resolvers=(("::1", port),), hostsFile="",
                    lookupFamily="v4_only", timeout=1.0)
    sink = RecordingSink()
    source = DNSSource(cfg, reactor(), sink, makeResolver(cfg, reactor()), StatsStore().scope())
    try:
        onReactor(source.start)
        waitFor(lambda: hostsNow(sink) == ["127.0.0.2"], timeout=5)
    finally:
        onReactor(source.stop)
        for p in ports:
            onReactor(p.stopListening)


def test_a_silent_server_fails_the_source_and_the_set_stays(dnsServer):
    from tests.reactor_thread import onReactor, waitFor
    zone, port = dnsServer
    zone.setRecords({"svc": [("A", "127.0.0.2", 1)]})
    source, sink = runSource(port, "svc.test.internal")
    try:
        waitFor(lambda: hostsNow(sink) == ["127.0.0.2"], timeout=5)
        onReactor(setattr, zone, "silent", True)  # queries reach it and go unanswered
        onReactor(zone.setRecords, {"svc": [("A", "127.0.0.9", 1)]})
        waitFor(lambda: sink.last[0] == "failed", timeout=5)
        assert sink.last == ("failed", "dns: svc.test.internal: timed out")
        assert [c[1] for c in sink.calls if c[0] == "hosts"][-1] == [("127.0.0.2", 8080, 1)]
        onReactor(setattr, zone, "silent", False)
        waitFor(lambda: hostsNow(sink) == ["127.0.0.9"], timeout=5)
    finally:
        onReactor(source.stop)


def test_schema_accepts_the_dns_keys():
    import json
    from importlib import resources

    import jsonschema
    import yaml
    keys = """
mode: logical
hosts: ["api.example.com:443", {address: "10.0.0.1:8080", weight: 3, priority: 1, locality: z1}]
lookup_family: v4_preferred
refresh_rate: 2s
respect_dns_ttl: true
min_ttl: 1s
max_ttl: 1m
failure_refresh_rate: {base_interval: 500ms, max_interval: 8s}
timeout: 1500ms
resolvers: ["127.0.0.1:5353"]
resolv_conf: /etc/resolv.conf
hosts_file: /etc/hosts
"""
    text = MESH % "\n".join("      " + line for line in keys.strip().splitlines())
    schema = json.loads(resources.files("txmesh").joinpath("mesh.schema.json").read_text())
    jsonschema.Draft202012Validator(schema).validate(yaml.safe_load(text))
    config.loads(text)
    bad = yaml.safe_load(MESH % "      hosts: [a.example:80]\n      lookup_family: V4_ONLY")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(schema).validate(bad)


def test_resolv_conf_is_read_when_it_changes_and_leaves_no_timer(tmp_path):
    """Twisted's client re-reads resolv.conf on a 60 s timer of its own; txmesh's reads it on use, when changed."""
    import os
    resolvConf = tmp_path / "resolv.conf"
    resolvConf.write_text("search example\nnameserver 10.0.0.53\n")
    clock = Clock()
    cfg = DNSConfig(targets=targets(("svc.example", 80, 1)), resolvConf=str(resolvConf), hostsFile="")
    chain = makeResolver(cfg, clock)
    (resolver,) = chain.resolvers
    assert resolver.dynServers == [("10.0.0.53", 53)] and clock.getDelayedCalls() == []
    resolvConf.write_text("nameserver 10.0.0.54\nnameserver 10.0.0.55\n")
    os.utime(resolvConf, (1, 1))
    resolver.maybeParseConfig()
    assert resolver.dynServers == [("10.0.0.54", 53), ("10.0.0.55", 53)]
    resolvConf.unlink()
    resolver.maybeParseConfig()
    assert resolver.dynServers == [("127.0.0.1", 53)]  # Twisted's answer to no resolv.conf
    assert clock.getDelayedCalls() == []


def test_an_unreadable_resolv_conf_does_not_stop_the_source(tmp_path):
    resolvConf = tmp_path / "resolv.conf"
    resolvConf.mkdir()  # open() fails with IsADirectoryError, not FileNotFoundError
    cfg = DNSConfig(targets=targets(("svc.example", 80, 1)), resolvConf=str(resolvConf), hostsFile="")
    (resolver,) = makeResolver(cfg, Clock()).resolvers
    assert resolver.dynServers == [("127.0.0.1", 53)]


def test_resolvers_replace_resolv_conf():
    cfg = DNSConfig(targets=targets(("svc.example", 80, 1)), resolvers=(("127.0.0.1", 5353),), hostsFile="",
                    resolvConf="/nonexistent/resolv.conf")
    (resolver,) = makeResolver(cfg, Clock()).resolvers
    assert resolver.servers == [("127.0.0.1", 5353)] and resolver.resolv is None
