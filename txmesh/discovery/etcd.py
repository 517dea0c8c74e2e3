"""
etcd v3 through its HTTP/JSON gateway (the grpc-gateway every etcd >= 3.4 serves on its client port), with treq on
an HTTPConnectionPool of its own (never the data path's): one L{EtcdClient} per ``registries`` entry, shared by the
etcd discovery sources (``watchPrefix``) and the local app's registration (``putWithLease``, L{EtcdRegistrar}).

The gateway speaks JSON with keys and values in base64 and 64-bit numbers as strings:

- ``/v3/kv/range`` (key .. range_end: a prefix), ``/v3/kv/put`` (with a lease), ``/v3/kv/deleterange``;
- ``/v3/watch``: one POST of a ``create_request``, answered by a stream of ``{"result": WatchResponse}`` objects
  for as long as the watch lives (split with txmesh.discovery.json_stream);
- ``/v3/lease/grant``, ``/v3/lease/keepalive`` (one keep-alive per POST), ``/v3/lease/revoke``.

Every call tries the endpoints in turn, each attempt bounded by the registry's ``timeout``.  A watch whose stream
breaks resumes at the revision after the last one it saw (no change is lost, nothing is re-read); a watch etcd
cancels because that revision was compacted re-reads the whole prefix and watches again.  Retries wait a jittered
exponential backoff on the injected reactor.  A lease that etcd no longer knows (the keep-alive answers no TTL:
it expired while etcd was unreachable, or somebody revoked it) is granted again and the key put again.
"""

import base64
import json
import random

import treq.client
from twisted.internet import defer
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool, ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from zope.interface import implementer

from txmesh.discovery.json_stream import JSONStreamDecoder, JSONStreamError
from txmesh.errors import TxmeshError
from txmesh.interfaces import IEtcdClient, IRegistrar

GRPC_NOT_FOUND = 5  # etcd's "requested lease not found"
GRPC_UNAVAILABLE = 14  # no leader, shutting down: another endpoint may do better
BACKOFF_BASE = 0.2
BACKOFF_MAX = 10.0
_HEADERS = Headers({b"content-type": [b"application/json"], b"user-agent": [b"txmesh"]})


class EtcdError(TxmeshError):
    """etcd answered a call with an error: ``code`` is its gRPC status code (None for a bare HTTP error)."""

    def __init__(self, message, code=None):
        self.code = code
        super().__init__(message)


class EtcdUnavailable(EtcdError):
    """No endpoint answered (refused, timed out, cut off, or etcd said Unavailable)."""


def _key(key):
    return key.encode("utf-8") if isinstance(key, str) else bytes(key)


def _b64(data):
    return base64.b64encode(data).decode("ascii")


def _unb64(text):
    return base64.b64decode(text) if text else b""


def prefixEnd(prefix):
    """etcd's ``range_end`` for every key starting with ``prefix`` (bytes): its last byte below 0xff plus one."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"  # the prefix was empty or all 0xff: every key from it on


class _JSONBody(Protocol):
    """A response body split into JSON objects (``received(obj)``), then ``ended(reason)`` unless aborted."""

    def __init__(self, received, ended):
        self.received = received
        self.ended = ended
        self.decoder = JSONStreamDecoder()
        self.done = False

    def connectionMade(self):
        if self.done:  # aborted before the body started
            self.transport.stopProducing()

    def dataReceived(self, data):
        if self.done:
            return
        try:
            objects = self.decoder.feed(data)
        except JSONStreamError as e:
            self.done = True
            self.transport.stopProducing()
            self.ended(e)
            return
        for obj in objects:
            if self.done:
                break
            self.received(obj)

    def connectionLost(self, reason):
        if not self.done:
            self.done = True
            self.ended(reason)

    def abort(self):
        """Stop reading and close the connection; ``ended`` is not called."""
        if not self.done:
            self.done = True
            if self.transport is not None:
                self.transport.stopProducing()


def _answer(response):
    """The one JSON object of a unary call's body: a Deferred firing with it (an EtcdError for a non-200)."""
    objects = []

    def ended(reason):
        if isinstance(reason, Exception):
            d.errback(EtcdUnavailable("bad answer from etcd: %s" % (reason,)))
        elif not reason.check(ResponseDone, PotentialDataLoss) or body.decoder.pending():
            d.errback(reason)
        elif response.code != 200:
            obj = objects[0] if objects else {}
            code = obj.get("code")
            message = "etcd: HTTP %d %s" % (response.code, obj.get("message") or obj.get("error") or "")
            unavailable = code == GRPC_UNAVAILABLE or (code is None and response.code >= 500)
            d.errback((EtcdUnavailable if unavailable else EtcdError)(message.strip(), code))
        elif not objects:
            d.errback(EtcdUnavailable("etcd answered an empty body"))
        else:
            d.callback(objects[0])

    body = _JSONBody(objects.append, ended)
    d = defer.Deferred(lambda _: body.abort())
    response.deliverBody(body)
    return d


def _connectionFailure(failure):
    """
    True for a failure another endpoint may not have: not an answer from etcd, nor our caller's cancel (a timeout
    is a TimeoutError).
    """
    if failure.check(defer.CancelledError):
        return False
    return not failure.check(EtcdError) or failure.check(EtcdUnavailable)


class _Backoff:
    """Jittered exponential delays: 0.5x to 1x of min(BACKOFF_MAX, BACKOFF_BASE * 2**attempt)."""

    def __init__(self, random):
        self.random = random
        self.attempt = 0

    def next(self):
        delay = min(BACKOFF_MAX, BACKOFF_BASE * 2 ** min(self.attempt, 16))
        self.attempt += 1
        return delay * (0.5 + 0.5 * self.random.random())

    def reset(self):
        self.attempt = 0


@implementer(IEtcdClient)
class EtcdClient:
    """
    @param config: a txmesh.discovery_config.EtcdRegistryConfig.
    @param reactor: the reactor (IReactorTime, IReactorTCP): timers, timeouts, connections.
    @param agent: the IAgent to use (default: an Agent on a persistent HTTPConnectionPool of the client's own).
    @param random: a random.Random for the backoff's jitter.
    """

    log = Logger()

    def __init__(self, config, reactor, agent=None, random=random):
        self.config = config
        self.reactor = reactor
        self.random = random
        if agent is None:
            self.pool = HTTPConnectionPool(reactor, persistent=True)
            agent = Agent(reactor, connectTimeout=config.timeout, pool=self.pool)
        else:
            self.pool = None
        self.http = treq.client.HTTPClient(agent)
        self.connected = False
        self._current = 0  # the endpoint that answered last
        self._inflight = set()
        self._watches = set()
        self._leases = {}  # key (bytes) -> _Lease
        self._stopped = False

    # -- calls --

    def _setConnected(self, connected):
        if connected != self.connected:
            self.connected = connected
            if connected:
                self.log.info("etcd registry {name}: connected to {url}", name=self.config.name,
                              url=self.config.endpoints[self._current])
            else:
                self.log.warn("etcd registry {name}: no endpoint answers ({urls})", name=self.config.name,
                              urls=", ".join(self.config.endpoints))

    def _send(self, path, body, read):
        """Try each endpoint in turn from the last good one: ``read(response)`` makes the result."""
        data = json.dumps(body).encode("utf-8")
        endpoints = self.config.endpoints

        def attempt(left, last):
            if self._stopped:
                return defer.fail(defer.CancelledError("etcd client stopped"))
            if left == 0:
                self._setConnected(False)
                return defer.fail(EtcdUnavailable("etcd %s unreachable: %s" % (
                    self.config.name, last.getErrorMessage())))
            url = endpoints[self._current] + path
            d = self.http.request("POST", url, data=data, headers=_HEADERS, reactor=self.reactor, unbuffered=True)
            d.addCallback(read)
            d.addTimeout(self.config.timeout, self.reactor)
            self._inflight.add(d)

            def done(result):
                self._inflight.discard(d)
                return result

            def failed(failure):
                if self._stopped or not _connectionFailure(failure):
                    return failure  # an answer (etcd is there), or our own stop
                self._current = (self._current + 1) % len(endpoints)
                return attempt(left - 1, failure)

            return d.addBoth(done).addErrback(failed)

        return attempt(len(endpoints), None)

    def call(self, path, body):
        """
        POST ``body`` (a JSON-able dict) to the gateway's ``path`` (``/v3/kv/range`` ...).
        @return: a Deferred firing with the decoded answer; failing with L{EtcdError} (etcd's answer: ``code``
            names why) or L{EtcdUnavailable} (no endpoint answered within ``timeout``).
        """
        d = self._send(path, body, _answer)
        return d.addCallback(self._answered)

    def _answered(self, answer):
        self._setConnected(True)
        return answer

    def openStream(self, path, body, stream):
        """
        POST ``body`` and deliver the answer's body to ``stream`` (a L{_JSONBody}: each JSON object, then the end).
        @return: a Deferred fired once the stream is open (its headers arrived); failing as ``call`` does.
        """

        def read(response):
            if response.code != 200:
                return _answer(response)  # fails with etcd's error
            response.deliverBody(stream)

        return self._send(path, body, read)

    # -- watches --

    def watchPrefix(self, prefix, callback, failed=None):
        w = _PrefixWatch(self, _key(prefix), callback, failed)
        self._watches.add(w)
        w.start()
        return w

    # -- keys under leases --

    def putWithLease(self, key, value, ttl):
        key = _key(key)
        value = _key(value)
        lease = self._leases.get(key)
        if lease is None:
            lease = self._leases[key] = _Lease(self, key, value, ttl)
            lease.publish()
        elif (lease.value, lease.ttl) != (value, ttl):
            lease.update(value, ttl)
        return lease.whenWritten()

    def deleteKey(self, key):
        key = _key(key)
        lease = self._leases.pop(key, None)
        if lease is not None:
            return lease.withdraw()
        return self.call("/v3/kv/deleterange", {"key": _b64(key)}).addCallback(lambda _: None)

    def describeKey(self, key):
        lease = self._leases.get(_key(key))
        return lease.describe() if lease is not None else None

    def stop(self):
        self._stopped = True
        for w in list(self._watches):
            w.cancel()
        for lease in list(self._leases.values()):
            lease.halt()  # no revoke: the leases expire on their own (stop after deregistration)
        self._leases.clear()
        for d in list(self._inflight):
            d.cancel()
        self.connected = False
        if self.pool is not None:
            return self.pool.closeCachedConnections()
        return defer.succeed(None)


class _PrefixWatch:
    """
    One ``watchPrefix``: a full read of the prefix, then a watch from the revision after it; on a broken stream
    the watch is opened again from the revision after the last one seen, after a backoff; on a compaction the
    prefix is read again.  ``lists`` and ``resumes`` count both kinds of restart.
    """

    def __init__(self, client, prefix, callback, failed):
        self.client = client
        self.prefix = prefix
        self.rangeEnd = prefixEnd(prefix)
        self.callback = callback
        self.failed = failed
        self.items = {}  # key (str) -> value (bytes)
        self.revision = 0  # the revision the items reflect
        self.listed = False
        self.active = True
        self.lists = 0
        self.resumes = 0
        self.compactions = 0
        self._backoff = _Backoff(client.random)
        self._recovering = False
        self._pending = None  # the call in flight
        self._stream = None
        self._timer = None

    def start(self):
        self._list()

    def cancel(self):
        self.active = False
        self.client._watches.discard(self)
        self._halt()

    def _halt(self):
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.cancel()
        if self._stream is not None:
            self._stream.abort()
            self._stream = None

    def _list(self):
        self.lists += 1
        d = self._pending = self.client.call("/v3/kv/range", {"key": _b64(self.prefix),
                                                              "range_end": _b64(self.rangeEnd)})
        d.addCallbacks(self._listed, self._broken)

    def _listed(self, answer):
        self._pending = None
        self.items = {_unb64(kv["key"]).decode("utf-8", "replace"): _unb64(kv.get("value"))
                      for kv in answer.get("kvs", ())}
        self.revision = int(answer["header"]["revision"])
        self.listed = True
        self._recovering = False
        self._deliver()
        self._watch()

    def _watch(self):
        body = {"create_request": {"key": _b64(self.prefix), "range_end": _b64(self.rangeEnd),
                                   "start_revision": str(self.revision + 1)}}
        # the stream exists before the request, so a restart decided while its first bytes are delivered aborts it
        stream = self._stream = _JSONBody(self._received, self._ended)
        d = self._pending = self.client.openStream("/v3/watch", body, stream)

        def opened(_):
            if self._pending is d:
                self._pending = None

        def failed(failure):
            if self._pending is d:
                self._broken(failure)

        d.addCallbacks(opened, failed)

    def _received(self, obj):
        if not self.active:
            return
        result = obj.get("result")
        if not isinstance(result, dict):
            self._restart(EtcdError("watch stream error: %s" % (json.dumps(obj.get("error", obj))[:200],)))
            return
        compacted = int(result.get("compact_revision") or 0)
        if compacted:
            # the revision we resume at is gone: read everything again
            self.compactions += 1
            self.client.log.info("etcd watch of {prefix}: revision {rev} compacted (now {c}); reading the prefix again",
                                 prefix=self.prefix, rev=self.revision + 1, c=compacted)
            self._halt()
            self._list()
            return
        if result.get("canceled"):
            self._restart(EtcdError("etcd canceled the watch: %s" % (result.get("cancel_reason", ""),)))
            return
        if result.get("created"):
            self._backoff.reset()
            self.client._setConnected(True)
            if self._recovering:
                self._recovering = False
                self._deliver()  # back: the last known set is current again (changes since follow)
            return
        events = result.get("events")
        if not events:
            return  # a progress notification
        for event in events:
            kv = event["kv"]
            key = _unb64(kv["key"]).decode("utf-8", "replace")
            if event.get("type") == "DELETE":
                self.items.pop(key, None)
            else:
                self.items[key] = _unb64(kv.get("value"))
            self.revision = max(self.revision, int(kv.get("mod_revision") or 0))
        self._deliver()

    def _ended(self, reason):
        self._stream = None
        if self.active:
            self._restart(reason)

    def _broken(self, failure):
        self._pending = None
        if failure.check(defer.CancelledError):
            return  # our own cancel or stop
        self._restart(failure)

    def _restart(self, reason):
        """The stream (or the read) failed: tell the owner, then resume (or read again) after a backoff."""
        self._halt()
        self.client._setConnected(False)
        self._recovering = True
        message = reason.getErrorMessage() if isinstance(reason, Failure) else str(reason)
        if self._backoff.attempt == 0:  # once per outage; the retries that fail too are not logged again
            self.client.log.warn("etcd watch of {prefix} broken ({why}); retrying", prefix=self.prefix, why=message)
        if self.failed is not None:
            self.failed(message)
        self._timer = self.client.reactor.callLater(self._backoff.next(), self._again)

    def _again(self):
        self._timer = None
        if not self.active:
            return
        if self.listed:
            self.resumes += 1
            self._watch()
        else:
            self._list()

    def _deliver(self):
        self.callback(dict(self.items), str(self.revision))


class _Lease:
    """
    One key kept under a lease: granted, put, then kept alive every TTL/3; granted and put again when etcd no
    longer knows the lease.  A failed step is retried after a backoff until ``withdraw``/``halt``.
    """

    def __init__(self, client, key, value, ttl):
        self.client = client
        self.key = key
        self.value = value
        self.ttl = ttl
        self.leaseID = None
        self.grantedTTL = None
        self.written = False
        self.active = True
        self.grants = 0
        self.keepAlives = 0
        self._waiters = []
        self._pending = None
        self._timer = None
        self._backoff = _Backoff(client.random)

    def whenWritten(self):
        if self.written:
            return defer.succeed(None)
        d = defer.Deferred(lambda d: self._waiters.remove(d) if d in self._waiters else None)
        self._waiters.append(d)
        return d

    def describe(self):
        return {"key": self.key.decode("utf-8", "replace"), "ttl": self.ttl,
                "lease": self.leaseID, "written": self.written, "grants": self.grants, "keepAlives": self.keepAlives}

    def _later(self, delay, f):
        self._timer = self.client.reactor.callLater(delay, f)

    def _stopTimers(self):
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None

    def publish(self):
        """Grant a lease unless one is held, put the key under it, then keep it alive."""
        self._timer = None
        if not self.active:
            return
        if self.leaseID is None:
            d = self._pending = self.client.call("/v3/lease/grant", {"TTL": int(self.ttl)})
            d.addCallbacks(self._granted, self._failed)
        else:
            self._put()

    def _granted(self, answer):
        self._pending = None
        self.leaseID = answer["ID"]
        self.grantedTTL = int(answer.get("TTL") or self.ttl)
        self.grants += 1
        self._put()

    def _put(self):
        d = self._pending = self.client.call("/v3/kv/put", {"key": _b64(self.key), "value": _b64(self.value),
                                                            "lease": self.leaseID})
        d.addCallbacks(self._put_done, self._failed)

    def _put_done(self, answer):
        self._pending = None
        self._backoff.reset()
        if not self.written:
            self.written = True
            self.client.log.info("etcd registry {name}: {key} written under lease {lease} (TTL {ttl}s)",
                                 name=self.client.config.name, key=self.key, lease=self.leaseID, ttl=self.grantedTTL)
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(None)
        self._later(self.grantedTTL / 3.0, self._keepAlive)

    def _failed(self, failure):
        self._pending = None
        if failure.check(defer.CancelledError) or not self.active:
            return
        if failure.check(EtcdError) and failure.value.code == GRPC_NOT_FOUND:
            self.leaseID = None  # the lease went between the grant and the put
        self.client.log.warn("etcd registry {name}: writing {key} failed ({why}); retrying",
                             name=self.client.config.name, key=self.key, why=failure.getErrorMessage())
        self._later(self._backoff.next(), self.publish)

    def _keepAlive(self):
        self._timer = None
        d = self._pending = self.client.call("/v3/lease/keepalive", {"ID": self.leaseID})
        d.addCallbacks(self._keptAlive, self._keepAliveFailed)

    def _keptAlive(self, answer):
        self._pending = None
        result = answer.get("result") or {}
        if int(result.get("TTL") or 0) <= 0:
            # etcd no longer has the lease (expired while we could not reach it, or revoked): the key is gone
            self.client.log.warn("etcd registry {name}: lease {lease} of {key} lost; granting a new one",
                                 name=self.client.config.name, lease=self.leaseID, key=self.key)
            self.leaseID = None
            self.written = False
            self.publish()
            return
        self.keepAlives += 1
        self._later(self.grantedTTL / 3.0, self._keepAlive)

    def _keepAliveFailed(self, failure):
        self._pending = None
        if failure.check(defer.CancelledError) or not self.active:
            return
        self.client.log.warn("etcd registry {name}: keep-alive of {key} failed ({why})",
                             name=self.client.config.name, key=self.key, why=failure.getErrorMessage())
        # keep trying at the keep-alive pace; if the lease expires meanwhile the next answer says so
        self._later(min(self.grantedTTL / 3.0, self._backoff.next()), self._keepAlive)

    def update(self, value, ttl):
        """A new value (and TTL) for the key: put again (under a new lease if the TTL changed)."""
        self._stopTimers()
        old = self.leaseID if ttl != self.ttl else None
        if old is not None:
            self.leaseID = None
            self.client.call("/v3/lease/revoke", {"ID": old}).addErrback(lambda f: None)  # best effort
        self.value = value
        self.ttl = ttl
        self.written = False
        self.publish()

    def halt(self):
        """Stop keeping the key (no revoke: the lease expires by itself); waiters fail with CancelledError."""
        self.active = False
        self._stopTimers()
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.errback(defer.CancelledError("registration of %r withdrawn" % (self.key,)))

    def withdraw(self):
        """Stop keeping the key, revoke its lease (which deletes it) and delete it.  @return: a Deferred."""
        self.halt()
        self.written = False
        d = defer.succeed(None)
        if self.leaseID is not None:
            leaseID, self.leaseID = self.leaseID, None
            d.addCallback(lambda _: self.client.call("/v3/lease/revoke", {"ID": leaseID}))
            d.addErrback(lambda f: f.trap(EtcdError) if f.value.code == GRPC_NOT_FOUND else f)
        d.addCallback(lambda _: self.client.call("/v3/kv/deleterange", {"key": _b64(self.key)}))
        return d.addCallback(lambda _: None)


@implementer(IRegistrar)
class EtcdRegistrar:
    """
    The local app as one etcd key under a lease kept alive (``registration`` entries of an etcd registry):
    ``register`` puts it (the returned Deferred fires once written, however long etcd takes to come back),
    ``deregister`` revokes the lease and deletes the key.  While registered the key comes back by itself after
    its lease was lost.

    @param client: the registry's L{IEtcdClient}.
    @param key: the key (str or bytes), e.g. ``/services/orders/10.0.0.5:8080``.
    @param value: its value (str or bytes), e.g. the JSON the etcd discovery source reads.
    @param ttl: the lease's TTL in seconds (an int; etcd may raise it to its minimum).
    """

    def __init__(self, client, key, value, ttl):
        self.client = client
        self.key = key
        self.value = value
        self.ttl = ttl
        self.registered = False

    def register(self):
        self.registered = True
        return self.client.putWithLease(self.key, self.value, self.ttl)

    def deregister(self):
        if not self.registered:
            return defer.succeed(None)
        self.registered = False
        return self.client.deleteKey(self.key)

    def describe(self):
        state = self.client.describeKey(self.key) or {}
        value = self.value.decode("utf-8", "replace") if isinstance(self.value, bytes) else self.value
        key = self.key.decode("utf-8", "replace") if isinstance(self.key, bytes) else self.key
        return {"registry": self.client.config.name, "type": "etcd", "key": key, "value": value, "ttl": self.ttl,
                "registered": self.registered, "published": bool(state.get("written")), "lease": state.get("lease")}
