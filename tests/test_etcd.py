"""
txmesh.discovery.etcd against a real etcd (Debian's, started by tests/registry_servers.py) on the real reactor
(tests/reactor_thread.py): prefix watches see puts and deletes, resume after etcd is killed and restarted without
re-reading, recover from a compaction; keys under leases are kept alive, vanish when the keep-alives stop (a
crashed txmesh), come back when the lease is lost, go when withdrawn; endpoints are tried in turn, every call
bounded.  Every wait is bounded.
"""

import base64
import json
import threading
from random import Random

import pytest
from treq.testing import RequestTraversalAgent
from twisted.internet import defer
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.protocols import portforward
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from zope.interface.verify import verifyObject

from tests.reactor_thread import onReactor, reactor, waitFor
from tests.support import freePort
from txmesh.discovery.etcd import EtcdClient, EtcdRegistrar
from txmesh.discovery.etcd_gateway import EtcdError, EtcdUnavailable, prefixEnd
from txmesh.discovery_config import EtcdRegistryConfig
from txmesh.interfaces import IEtcdClient, IRegistrar

pytestmark = pytest.mark.timeout(40)


def b64(data):
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def put(server, key, value, lease=None):
    body = {"key": b64(key), "value": b64(value)}
    if lease:
        body["lease"] = lease
    return int(server.call("/v3/kv/put", body)["header"]["revision"])


def delete(server, key):
    return int(server.call("/v3/kv/deleterange", {"key": b64(key)})["header"]["revision"])


def get(server, key):
    """The kv of ``key`` (value decoded, lease) or None."""
    kvs = server.call("/v3/kv/range", {"key": b64(key)}).get("kvs")
    if not kvs:
        return None
    return {"value": base64.b64decode(kvs[0].get("value", "")).decode(), "lease": kvs[0].get("lease")}


def client(*urls, timeout=2.0, name="etcd"):
    return EtcdClient(EtcdRegistryConfig(name=name, endpoints=tuple(urls), timeout=timeout), reactor())


class Recorder:
    """What a watch delivered: each (items, revision) and each failure, checking they come on the reactor thread."""

    def __init__(self):
        self.sets = []
        self.failures = []
        self.threads = set()

    def changed(self, items, revision):
        self.threads.add(threading.current_thread().name)
        self.sets.append((items, revision))

    def failed(self, reason):
        self.threads.add(threading.current_thread().name)
        self.failures.append(reason)

    def last(self):
        return self.sets[-1][0] if self.sets else None


def watching(url, prefix):
    """A client on ``url`` watching ``prefix``: (client, Recorder, the watch)."""
    c = client(url)
    rec = Recorder()
    return c, rec, onReactor(c.watchPrefix, prefix, rec.changed, rec.failed)


def test_interfaces(etcd):
    c = client(etcd.url)
    verifyObject(IEtcdClient, c)
    verifyObject(IRegistrar, EtcdRegistrar(c, "/k", "v", 5))


def test_prefix_end():
    assert prefixEnd(b"/svc/") == b"/svc0"
    assert prefixEnd(b"a\xff") == b"b"
    assert prefixEnd(b"\xff\xff") == b"\0"


def test_watch_sees_puts_and_deletes(etcd):
    put(etcd, "/t-watch/a", "1")
    put(etcd, "/t-watchX", "outside the prefix")
    c, rec, w = watching(etcd.url, "/t-watch/")
    try:
        waitFor(lambda: rec.last() == {"/t-watch/a": b"1"})
        assert c.connected
        put(etcd, "/t-watch/b", "2")
        waitFor(lambda: rec.last() == {"/t-watch/a": b"1", "/t-watch/b": b"2"})
        rev = put(etcd, "/t-watch/a", "3")
        waitFor(lambda: rec.last() == {"/t-watch/a": b"3", "/t-watch/b": b"2"})
        assert rec.sets[-1][1] == str(rev)  # the version is the etcd revision of the change
        delete(etcd, "/t-watch/a")
        waitFor(lambda: rec.last() == {"/t-watch/b": b"2"})
        revisions = [int(r) for _, r in rec.sets]
        assert revisions == sorted(revisions)
        assert (w.lists, w.resumes, rec.failures) == (1, 0, [])
    finally:
        onReactor(c.stop)
    assert rec.threads == {"test-reactor"}


def test_watch_resumes_after_etcd_restart_without_losing_a_change(etcd_server):
    put(etcd_server, "/t-rs/a", "1")
    c, rec, w = watching(etcd_server.url, "/t-rs/")
    try:
        waitFor(lambda: rec.last() == {"/t-rs/a": b"1"})
        etcd_server.kill()
        waitFor(lambda: rec.failures and not c.connected, timeout=10)
        etcd_server.start()
        # changes made while the watcher is still away, and more once it may be back
        put(etcd_server, "/t-rs/b", "2")
        delete(etcd_server, "/t-rs/a")
        put(etcd_server, "/t-rs/c", "3")
        waitFor(lambda: rec.last() == {"/t-rs/b": b"2", "/t-rs/c": b"3"}, timeout=20)
        assert w.lists == 1 and w.resumes >= 1  # resumed from its revision: the changes came as events
        assert c.connected
        put(etcd_server, "/t-rs/d", "4")
        waitFor(lambda: "/t-rs/d" in rec.last())
    finally:
        onReactor(c.stop)


class _CutServer(portforward.ProxyServer):
    def connectionMade(self):
        self.factory.open.add(self)
        super().connectionMade()

    def connectionLost(self, reason):
        self.factory.open.discard(self)
        super().connectionLost(reason)


class CuttableProxy(portforward.ProxyFactory):
    """A loopback TCP forwarder to etcd that a test cuts (every connection dropped, nothing listening) and restores."""

    protocol = _CutServer

    def __init__(self, port):
        super().__init__("127.0.0.1", port)
        self.open = set()
        self.listenPort = freePort()
        self.url = "http://127.0.0.1:%d" % (self.listenPort,)
        self.listening = None

    def listen(self):
        self.listening = reactor().listenTCP(self.listenPort, self, interface="127.0.0.1")

    def cut(self):
        for p in list(self.open):
            p.transport.abortConnection()
        return self.listening.stopListening()


def test_watch_across_a_compaction_reads_the_prefix_again(etcd_server):
    proxy = CuttableProxy(etcd_server.port)
    onReactor(proxy.listen)
    put(etcd_server, "/t-cp/a", "1")
    c, rec, w = watching(proxy.url, "/t-cp/")
    try:
        waitFor(lambda: rec.last() == {"/t-cp/a": b"1"})
        onReactor(proxy.cut)
        waitFor(lambda: rec.failures, timeout=10)
        # while the watcher is away: changes, then the history it would resume from is compacted away
        put(etcd_server, "/t-cp/b", "2")
        delete(etcd_server, "/t-cp/a")
        rev = put(etcd_server, "/t-cp/c", "3")
        etcd_server.call("/v3/kv/compaction", {"revision": str(rev), "physical": True})
        onReactor(proxy.listen)
        waitFor(lambda: rec.last() == {"/t-cp/b": b"2", "/t-cp/c": b"3"}, timeout=20)
        assert (w.compactions, w.lists) == (1, 2)
        assert int(rec.sets[-1][1]) >= rev
        put(etcd_server, "/t-cp/d", "4")  # and it watches again
        waitFor(lambda: "/t-cp/d" in rec.last())
    finally:
        onReactor(c.stop)
        onReactor(proxy.cut)


def test_key_kept_alive_then_gone_after_the_ttl_when_txmesh_crashes(etcd):
    c = client(etcd.url)
    onReactor(c.putWithLease, "/t-lease/me", "127.0.0.1:8080", 2)
    kv = get(etcd, "/t-lease/me")
    assert kv["value"] == "127.0.0.1:8080" and kv["lease"]
    # keep-alives every TTL/3: the key outlives its TTL while they go on
    waitFor(lambda: c.describeKey("/t-lease/me")["keep_alives"] >= 4, timeout=10)
    assert get(etcd, "/t-lease/me") is not None
    onReactor(c.stop)  # a crash: no revoke, no delete
    assert get(etcd, "/t-lease/me") is not None
    waitFor(lambda: get(etcd, "/t-lease/me") is None, timeout=10)


def test_registration_comes_back_after_the_lease_was_lost(etcd):
    c = client(etcd.url)
    registrar = EtcdRegistrar(c, "/t-lost/me", '{"address": "127.0.0.1:8081"}', 2)
    try:
        onReactor(registrar.register)
        first = get(etcd, "/t-lost/me")["lease"]
        assert onReactor(registrar.describe)["published"]
        etcd.call("/v3/lease/revoke", {"ID": first})  # the lease lost (as if it expired while etcd was away)
        assert get(etcd, "/t-lost/me") is None
        waitFor(lambda: get(etcd, "/t-lost/me") is not None, timeout=10)
        kv = get(etcd, "/t-lost/me")
        assert kv["lease"] != first and kv["value"] == '{"address": "127.0.0.1:8081"}'
        assert c.describeKey("/t-lost/me")["grants"] == 2
        onReactor(registrar.deregister)
        assert get(etcd, "/t-lost/me") is None
        ttl = etcd.call("/v3/kv/lease/timetolive", {"ID": kv["lease"]})
        assert int(ttl["TTL"]) == -1  # revoked, not left to expire
        d = onReactor(registrar.describe)
        assert (d["registered"], d["published"], d["key"], d["registry"]) == (False, False, "/t-lost/me", "etcd")
    finally:
        onReactor(c.stop)


def test_put_waits_for_etcd_and_a_new_value_replaces_the_old(etcd_server):
    c = client(etcd_server.url, timeout=1.0)
    try:
        etcd_server.kill()
        written = []
        onReactor(lambda: c.putWithLease("/t-wait/me", "v1", 3).addCallback(written.append) and None)
        waitFor(lambda: not c.connected and c.describeKey("/t-wait/me")["written"] is False)
        assert written == []
        etcd_server.start()
        waitFor(lambda: written, timeout=20)
        assert get(etcd_server, "/t-wait/me")["value"] == "v1"
        onReactor(c.putWithLease, "/t-wait/me", "v2", 3)
        assert get(etcd_server, "/t-wait/me")["value"] == "v2"
    finally:
        onReactor(c.stop)


class _Silent(Protocol):
    """Accepts and never answers."""


def test_endpoints_tried_in_turn_each_call_bounded(etcd):
    silent = freePort()
    port = onReactor(lambda: reactor().listenTCP(silent, Factory.forProtocol(_Silent), interface="127.0.0.1"))
    refused = "http://127.0.0.1:%d" % (freePort(),)
    c = client(refused, "http://127.0.0.1:%d" % (silent,), etcd.url, timeout=0.5)
    try:
        put(etcd, "/t-turn/a", "1")
        rec = Recorder()
        onReactor(c.watchPrefix, "/t-turn/", rec.changed)
        waitFor(lambda: rec.last() == {"/t-turn/a": b"1"}, timeout=10)
        assert c.connected
        dead = client(refused, "http://127.0.0.1:%d" % (silent,), timeout=0.5)
        with pytest.raises(EtcdUnavailable):
            onReactor(dead.call, "/v3/kv/range", {"key": b64("/x")}, timeout=5)
        assert not dead.connected
        onReactor(dead.stop)
        # an answer from etcd is not retried elsewhere: it says what is wrong
        with pytest.raises(EtcdError) as e:
            onReactor(c.call, "/v3/kv/range", {"key": 5})
        assert e.value.code == 3 and not isinstance(e.value, EtcdUnavailable)
    finally:
        onReactor(c.stop)
        onReactor(port.stopListening)


def test_stop_cancels_watches_and_keepalives(etcd):
    c = client(etcd.url)
    rec = Recorder()
    onReactor(c.watchPrefix, "/t-stop/", rec.changed)
    onReactor(c.putWithLease, "/t-stop/me", "x", 5)
    waitFor(lambda: rec.last() == {"/t-stop/me": b"x"})
    onReactor(c.stop)
    n = len(rec.sets)
    put(etcd, "/t-stop/other", "y")
    # a second watcher sees the put; the stopped one got nothing more
    c2 = client(etcd.url)
    rec2 = Recorder()
    onReactor(c2.watchPrefix, "/t-stop/", rec2.changed)
    waitFor(lambda: rec2.last() and "/t-stop/other" in rec2.last())
    onReactor(c2.stop)
    assert len(rec.sets) == n
    assert not c.connected


# -- unit tests: the client on a Clock, over treq's in-memory agent, against a scripted gateway --

class ScriptedGateway(Resource):
    """Records each POST (path, JSON body, request) and leaves it open for the test to answer."""

    isLeaf = True

    def __init__(self):
        super().__init__()
        self.requests = []

    def render_POST(self, request):
        self.requests.append((request.path.decode(), json.loads(request.content.read()), request))
        return NOT_DONE_YET


class Scripted:
    """An EtcdClient on a Clock whose calls reach a ScriptedGateway through treq's RequestTraversalAgent."""

    def __init__(self, endpoints=("http://127.0.0.1:2379",), timeout=2.0):
        self.clock = Clock()
        self.gateway = ScriptedGateway()
        self.agent = RequestTraversalAgent(self.gateway)
        self.client = EtcdClient(EtcdRegistryConfig(name="etcd", endpoints=tuple(endpoints), timeout=timeout),
                                 self.clock, agent=self.agent, random=Random(7))

    def take(self, path):
        """The one request waiting, which must be to ``path``: (body, request)."""
        self.agent.flush()
        assert [r[0] for r in self.gateway.requests] == [path]
        _, body, request = self.gateway.requests.pop()
        return body, request

    def idle(self):
        self.agent.flush()
        return self.gateway.requests == []

    def write(self, request, data, finish=False, code=200):
        request.setResponseCode(code)
        request.write(data if isinstance(data, bytes) else json.dumps(data).encode())
        if finish:
            request.finish()
        self.agent.flush()
        self.clock.advance(0)  # the watch's delivery

    def answer(self, path, obj, code=200):
        body, request = self.take(path)
        self.write(request, obj, True, code)
        return body


HEADER = {"header": {"revision": "10"}}


def test_keep_alive_every_third_of_the_ttl_then_a_new_lease_when_lost():
    s = Scripted()
    done = []
    s.client.putWithLease("/k", "v", 9).addCallback(done.append)
    assert s.answer("/v3/lease/grant", {"ID": "7", "TTL": "9"}) == {"TTL": 9}
    assert s.answer("/v3/kv/put", HEADER) == {"key": b64("/k"), "value": b64("v"), "lease": "7"}
    assert done == [None]
    s.clock.advance(2.9)
    assert s.idle()
    s.clock.advance(0.1)
    assert s.answer("/v3/lease/keepalive", {"result": {"ID": "7", "TTL": "9"}}) == {"ID": "7"}
    s.clock.advance(3)
    s.answer("/v3/lease/keepalive", {"result": {"ID": "7"}})  # no TTL: etcd lost the lease
    assert s.client.describeKey("/k")["written"] is False
    s.answer("/v3/lease/grant", {"ID": "8", "TTL": "9"})
    assert s.answer("/v3/kv/put", HEADER)["lease"] == "8"
    assert s.client.describeKey("/k") == {"key": "/k", "ttl": 9, "lease": "8", "written": True, "grants": 2,
                                          "keep_alives": 1}
    # a keep-alive that cannot reach etcd is retried, sooner than the TTL
    s.clock.advance(3)
    s.take("/v3/lease/keepalive")
    s.clock.advance(2)  # the call's timeout; one more try on a fresh connection
    s.take("/v3/lease/keepalive")
    s.clock.advance(2)
    assert s.client.connected is False
    s.clock.advance(0.2)
    s.answer("/v3/lease/keepalive", {"result": {"ID": "8", "TTL": "9"}})
    assert s.client.connected


def test_each_call_bounded_then_the_next_endpoint():
    s = Scripted(endpoints=("http://127.0.0.1:1", "http://127.0.0.1:2"))
    results = []
    s.client.call("/v3/kv/range", {"key": b64("/a")}).addBoth(results.append)
    _, first = s.take("/v3/kv/range")
    assert first.getHeader("host") == "127.0.0.1:1"
    s.clock.advance(2)
    _, second = s.take("/v3/kv/range")
    assert second.getHeader("host") == "127.0.0.1:2"
    s.write(second, HEADER, True)
    assert results == [HEADER] and s.client.connected
    # the endpoint that answered is asked first next time; when none answers the call fails, bounded
    s.client.call("/v3/kv/range", {}).addBoth(results.append)
    hosts = []
    for _ in range(3):  # each endpoint, then the first one again
        _, request = s.take("/v3/kv/range")
        hosts.append(request.getHeader("host"))
        s.clock.advance(2)
    assert hosts == ["127.0.0.1:2", "127.0.0.1:1", "127.0.0.1:2"]
    assert results[-1].check(EtcdUnavailable) and not s.client.connected


@pytest.mark.parametrize("code, body, error", [
    (200, b"<html>not etcd</html>", EtcdUnavailable),  # not JSON: try another endpoint
    (503, b"", EtcdUnavailable),
    (503, b'{"error": "etcdserver: no leader", "code": 14}', EtcdUnavailable),
    (400, b'{"error": "bad", "message": "bad", "code": 3}', EtcdError),  # an answer: no other endpoint
    (404, b"404 page not found\n", EtcdError),
    (200, b"", EtcdUnavailable),
])
def test_bad_answers_are_typed_errors(code, body, error):
    s = Scripted(endpoints=("http://127.0.0.1:1",))
    results = []
    s.client.call("/v3/kv/range", {}).addBoth(results.append)
    _, request = s.take("/v3/kv/range")
    s.write(request, body, True, code)
    if error is EtcdUnavailable:  # tried again
        _, request = s.take("/v3/kv/range")
        s.write(request, body, True, code)
    assert s.idle()
    assert results[0].check(EtcdError)
    assert isinstance(results[0].value, EtcdUnavailable) == (error is EtcdUnavailable)


def watchScripted():
    s = Scripted()
    rec = Recorder()
    w = s.client.watchPrefix("/p/", rec.changed, rec.failed)
    s.answer("/v3/kv/range", {"header": {"revision": "10"}, "kvs": [{"key": b64("/p/a"), "value": b64("1")}]})
    assert rec.sets == [({"/p/a": b"1"}, "10")]
    body, stream = s.take("/v3/watch")
    assert body == {"create_request": {"key": b64("/p/"), "range_end": b64("/p0"), "start_revision": "11"}}
    s.write(stream, b'{"result": {"header": {"revision": "10"}, "created": true}}\n')
    return s, rec, w, stream


def test_broken_stream_resumes_after_a_jittered_backoff():
    s, rec, w, stream = watchScripted()
    # an event split across writes
    event = json.dumps({"result": {"header": {"revision": "12"}, "events": [
        {"kv": {"key": b64("/p/b"), "value": b64("2"), "mod_revision": "12"}}]}}).encode()
    s.write(stream, event[:17])
    s.write(stream, event[17:])
    assert rec.sets[-1] == ({"/p/a": b"1", "/p/b": b"2"}, "12")
    delays = []
    for attempt in range(8):
        stream.finish()  # the stream ends (etcd went away)
        s.agent.flush()
        assert len(rec.failures) == attempt + 1
        waited = 0.0
        while s.idle():
            s.clock.advance(0.01)
            waited += 0.01
        delays.append(waited)
        body, stream = s.take("/v3/watch")
        assert body["create_request"]["start_revision"] == "13"  # resumes after the last revision seen
    base = [min(10.0, 0.2 * 2 ** n) for n in range(8)]
    assert all(b * 0.5 - 0.02 <= d <= b + 0.02 for d, b in zip(delays, base)), delays
    assert len(set(round(d / b, 2) for d, b in zip(delays, base))) > 1  # jittered
    # back: the set is delivered again, and the backoff starts over
    s.write(stream, b'{"result": {"header": {"revision": "12"}, "created": true}}')
    assert rec.sets[-1] == ({"/p/a": b"1", "/p/b": b"2"}, "12") and len(rec.sets) == 3
    assert (w.lists, w.resumes) == (1, 8)


def test_changes_read_together_give_one_host_set():
    s, rec, w, stream = watchScripted()
    events = b"".join(json.dumps({"result": {"header": {"revision": str(r)}, "events": [
        {"kv": {"key": b64("/p/%d" % r), "value": b64("x"), "mod_revision": str(r)}}]}}).encode() for r in (11, 12, 13))
    s.write(stream, events)
    assert len(rec.sets) == 2 and rec.sets[-1] == ({"/p/a": b"1", "/p/11": b"x", "/p/12": b"x", "/p/13": b"x"}, "13")


@pytest.mark.parametrize("message", [
    b'{"error": {"grpc_code": 14, "http_code": 503, "message": "etcdserver: shutdown"}}',
    b'{"result": {"header": {}, "canceled": true, "cancel_reason": "bye"}}',
    b'[not json',
    b'{"result": {"header": {}, "events": [{"type": "PUT"}]}}',  # an event without its kv
    b'{"result": {"header": {}, "events": [{"kv": {"key": "***"}}]}}',  # not base64
])
def test_stream_errors_restart_the_watch(message):
    s, rec, w, stream = watchScripted()
    s.write(stream, message)
    assert len(rec.failures) == 1
    assert s.idle()
    s.clock.advance(0.2)
    body, _ = s.take("/v3/watch")
    assert body["create_request"]["start_revision"] == "11"


def test_malformed_range_answer_is_retried():
    s = Scripted()
    rec = Recorder()
    s.client.watchPrefix("/p/", rec.changed, rec.failed)
    s.answer("/v3/kv/range", {"kvs": []})  # no header
    assert len(rec.failures) == 1 and rec.sets == []
    s.clock.advance(0.2)
    s.answer("/v3/kv/range", {"header": {"revision": "3"}})
    assert rec.sets == [({}, "3")]


def test_compaction_reads_the_prefix_again():
    s, rec, w, stream = watchScripted()
    s.write(stream, b'{"result": {"header": {}, "canceled": true, "compact_revision": "15"}}')
    s.answer("/v3/kv/range", {"header": {"revision": "20"}, "kvs": [{"key": b64("/p/c"), "value": b64("3")}]})
    assert rec.sets[-1] == ({"/p/c": b"3"}, "20") and rec.failures == []
    body, _ = s.take("/v3/watch")
    assert body["create_request"]["start_revision"] == "21"
    assert (w.lists, w.compactions) == (2, 1)


def test_withdraw_revokes_and_deletes_even_when_the_lease_is_gone():
    s = Scripted()
    s.client.putWithLease("/k", "v", 6)
    s.answer("/v3/lease/grant", {"ID": "7", "TTL": "6"})
    s.answer("/v3/kv/put", HEADER)
    done = []
    s.client.deleteKey("/k").addBoth(done.append)
    assert s.answer("/v3/lease/revoke", {"error": "etcdserver: requested lease not found", "code": 5}, 404) == {
        "ID": "7"}
    assert s.answer("/v3/kv/deleterange", HEADER) == {"key": b64("/k")}
    assert done == [None]
    s.clock.advance(10)
    assert s.idle()  # no keep-alive any more


def test_withdraw_while_granting_and_stop():
    s = Scripted()
    results = []
    s.client.putWithLease("/k", "v", 6).addBoth(results.append)
    s.take("/v3/lease/grant")  # never answered
    d = s.client.deleteKey("/k")
    assert results[0].check(defer.CancelledError)
    s.answer("/v3/kv/deleterange", HEADER)  # no lease known: just the delete
    assert d.called and s.client.describeKey("/k") is None
    rec = Recorder()
    s.client.watchPrefix("/p/", rec.changed, rec.failed)
    pending = s.client.putWithLease("/k2", "v", 6)
    pending.addErrback(results.append)
    s.client.stop()
    assert results[-1].check(defer.CancelledError)
    s.clock.advance(60)
    s.agent.flush()
    assert [r[0] for r in s.gateway.requests] in ([], ["/v3/kv/range", "/v3/lease/grant"])
    n = len(s.gateway.requests)
    s.clock.advance(60)
    assert len(s.gateway.requests) == n and rec.sets == [] and rec.failures == []
