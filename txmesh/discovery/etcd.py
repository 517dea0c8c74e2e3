"""
etcd v3 for discovery and registration (issue 12): one L{EtcdClient} per ``registries`` entry, shared by the etcd
discovery sources (``watchPrefix``) and the local app's registration (``putWithLease``, L{EtcdRegistrar}), over
etcd's HTTP/JSON gateway (txmesh.discovery.etcd_gateway: treq, endpoints in turn, each call bounded).

- A prefix watch reads the prefix (``/v3/kv/range``), then watches from the revision after it (one streamed
  ``/v3/watch``).  A broken stream is opened again at the revision after the last one seen, after a jittered
  exponential backoff on the injected reactor, so no change is lost and nothing is re-read; a watch etcd cancels
  because that revision was compacted re-reads the whole prefix and watches again.
- A key under a lease: granted (``/v3/lease/grant``), put with it (``/v3/kv/put``), kept alive every TTL/3
  (``/v3/lease/keepalive``).  A lease etcd no longer knows (the keep-alive answers no TTL: it expired while etcd was
  unreachable, or somebody revoked it) is granted again and the key put again.  Withdrawing revokes the lease and
  deletes the key.
"""

import json
import random

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from txmesh.discovery.etcd_gateway import (GRPC_NOT_FOUND, Backoff, EtcdError, EtcdUnavailable, Gateway, JSONBody,
                                           asBytes, b64, prefixEnd, unb64)
from txmesh.interfaces import IEtcdClient, IRegistrar


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
        self.gateway = Gateway(config, reactor, agent)
        self._watches = set()
        self._leases = {}  # key (bytes) -> _Lease

    @property
    def connected(self):
        return self.gateway.connected

    def call(self, path, body):
        """
        POST ``body`` (a JSON-able dict) to the gateway's ``path`` (``/v3/kv/range`` ...).
        @return: a Deferred firing with the decoded answer; failing with EtcdError (etcd's answer: ``code`` names
            why) or EtcdUnavailable (no endpoint answered within ``timeout``).
        """
        return self.gateway.call(path, body)

    # -- watches --

    def watchPrefix(self, prefix, callback, failed=None):
        w = _PrefixWatch(self, asBytes(prefix), callback, failed)
        self._watches.add(w)
        w.start()
        return w

    # -- keys under leases --

    def putWithLease(self, key, value, ttl):
        key = asBytes(key)
        value = asBytes(value)
        lease = self._leases.get(key)
        if lease is None:
            lease = self._leases[key] = _Lease(self, key, value, ttl)
            lease.publish()
        elif (lease.value, lease.ttl) != (value, ttl):
            lease.update(value, ttl)
        return lease.whenWritten()

    def deleteKey(self, key):
        key = asBytes(key)
        lease = self._leases.pop(key, None)
        if lease is not None:
            return lease.withdraw()
        return self.call("/v3/kv/deleterange", {"key": b64(key)}).addCallback(lambda _: None)

    def describeKey(self, key):
        lease = self._leases.get(asBytes(key))
        return lease.describe() if lease is not None else None

    def stop(self):
        for w in list(self._watches):
            w.cancel()
        for lease in list(self._leases.values()):
            lease.halt()  # no revoke: the leases expire on their own (stop comes after deregistration)
        self._leases.clear()
        return self.gateway.stop()


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
        self._backoff = Backoff(client.random)
        self._recovering = False
        self._pending = None  # the call in flight
        self._stream = None
        self._timer = None
        self._delivery = None

    def start(self):
        self._list()

    def describe(self):
        return {"revision": self.revision, "watching": self._stream is not None and self._timer is None,
                "lists": self.lists, "resumes": self.resumes, "compactions": self.compactions}

    def cancel(self):
        self.active = False
        self.client._watches.discard(self)
        self._halt()
        if self._delivery is not None:
            self._delivery.cancel()
            self._delivery = None

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
        d = self._pending = self.client.call("/v3/kv/range", {"key": b64(self.prefix),
                                                              "range_end": b64(self.rangeEnd)})

        def listed(answer):
            if self._pending is d:
                self._pending = None
                self._listed(answer)

        def failed(failure):
            if self._pending is d:  # else cancelled by us
                self._pending = None
                self._restart(failure)

        d.addCallbacks(listed, failed)

    def _listed(self, answer):
        try:
            items = {unb64(kv["key"]).decode("utf-8", "replace"): unb64(kv.get("value"))
                     for kv in answer.get("kvs", ())}
            revision = int(answer["header"]["revision"])
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            self._restart(EtcdUnavailable("malformed range answer: %r" % (e,)))
            return
        self.items = items
        self.revision = revision
        self.listed = True
        self._recovering = False
        self._deliver()
        self._watch()

    def _watch(self):
        body = {"create_request": {"key": b64(self.prefix), "range_end": b64(self.rangeEnd),
                                   "start_revision": str(self.revision + 1)}}
        # the stream exists before the request, so a restart decided while its first bytes are delivered aborts it
        stream = self._stream = JSONBody(self._received, self._ended)
        d = self._pending = self.client.gateway.openStream("/v3/watch", body, stream)

        def opened(_):
            if self._pending is d:
                self._pending = None

        def failed(failure):
            if self._pending is d:  # else cancelled by us
                self._pending = None
                self._restart(failure)

        d.addCallbacks(opened, failed)

    def _received(self, obj):
        if not self.active:
            return
        try:
            self._apply(obj)
        except (KeyError, TypeError, ValueError, AttributeError) as e:  # base64's errors are ValueErrors
            self._restart(EtcdUnavailable("malformed watch response: %r" % (e,)))

    def _apply(self, obj):
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
            self.client.gateway.setConnected(True)
            if self._recovering:
                self._recovering = False
                self._deliver()  # back: the last known set is current again (changes since follow)
            return
        events = result.get("events")
        if not events:
            return  # a progress notification
        for event in events:
            kv = event["kv"]
            key = unb64(kv["key"]).decode("utf-8", "replace")
            if event.get("type") == "DELETE":
                self.items.pop(key, None)
            else:
                self.items[key] = unb64(kv.get("value"))
            self.revision = max(self.revision, int(kv.get("mod_revision") or 0))
        self._deliver()

    def _ended(self, reason):
        self._stream = None
        if self.active:
            self._restart(reason)

    def _restart(self, reason):
        """The stream (or the read) failed: tell the owner, then resume (or read again) after a backoff."""
        self._halt()
        self.client.gateway.setConnected(False)
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
        """
        Deliver the view once what was read so far is applied (a call on the next reactor turn): watch responses read
        together, a burst of changes, give one host set.
        """
        if self._delivery is None:
            self._delivery = self.client.reactor.callLater(0, self._delivered)

    def _delivered(self):
        self._delivery = None
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
        self._backoff = Backoff(client.random)

    def whenWritten(self):
        if self.written:
            return defer.succeed(None)
        d = defer.Deferred(lambda d: self._waiters.remove(d) if d in self._waiters else None)
        self._waiters.append(d)
        return d

    def describe(self):
        return {"key": self.key.decode("utf-8", "replace"), "ttl": self.ttl,
                "lease": self.leaseID, "written": self.written, "grants": self.grants, "keep_alives": self.keepAlives}

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
        try:
            leaseID, ttl = answer["ID"], int(answer.get("TTL") or self.ttl)
        except (KeyError, TypeError, ValueError) as e:
            self._failed(Failure(EtcdUnavailable("malformed lease grant answer: %r" % (e,))))
            return
        self.leaseID = leaseID
        self.grantedTTL = max(1, ttl)
        self.grants += 1
        self._put()

    def _put(self):
        d = self._pending = self.client.call("/v3/kv/put", {"key": b64(self.key), "value": b64(self.value),
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
        try:
            ttl = int((answer.get("result") or {}).get("TTL") or 0)
        except (TypeError, ValueError, AttributeError):
            ttl = 0  # an answer we cannot read: grant and put again rather than trust it
        if ttl <= 0:
            # etcd no longer has the lease (expired while we could not reach it, or revoked): the key is gone
            self.client.log.warn("etcd registry {name}: lease {lease} of {key} lost; granting a new one",
                                 name=self.client.config.name, lease=self.leaseID, key=self.key)
            self.leaseID = None
            self.written = False
            self.publish()
            return
        self.keepAlives += 1
        self._backoff.reset()
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
            d.addErrback(lambda f: None if f.check(EtcdError) and f.value.code == GRPC_NOT_FOUND else f)
        d.addCallback(lambda _: self.client.call("/v3/kv/deleterange", {"key": b64(self.key)}))
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
