"""
etcd v3's HTTP/JSON gateway (the grpc-gateway every etcd >= 3.4 serves on its client port), as txmesh.discovery.etcd
calls it: JSON bodies POSTed with treq on an HTTPConnectionPool of its own (never the data path's), keys and values
in base64, 64-bit numbers as strings.  A unary call's answer is one JSON object; a streamed one (``/v3/watch``) is
a sequence of ``{"result": ...}`` objects for as long as it lives, split with txmesh.discovery.json_stream.

Every call tries the endpoints in turn from the last one that answered (and the first one again), each attempt
bounded by the registry's ``timeout``; a failure etcd itself answers (an error object with its gRPC code) is not retried elsewhere, except
Unavailable.
"""

import base64
import json

import treq.client
from twisted.internet import defer
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.web.client import Agent, HTTPConnectionPool, ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer

from txmesh.discovery.json_stream import JSONStreamDecoder, JSONStreamError
from txmesh.errors import TxmeshError

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


def asBytes(key):
    return key.encode("utf-8") if isinstance(key, str) else bytes(key)


def b64(data):
    return base64.b64encode(data).decode("ascii")


def unb64(text):
    return base64.b64decode(text, validate=True) if text else b""


def prefixEnd(prefix):
    """etcd's ``range_end`` for every key starting with ``prefix`` (bytes): its last byte below 0xff plus one."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"  # the prefix was empty or all 0xff: every key from it on


@implementer(IBodyProducer)
class _BytesProducer:
    """
    A request body written at once (treq's default producer for bytes runs on the global reactor's cooperator;
    this one needs no reactor).
    """

    def __init__(self, data):
        self.body = data
        self.length = len(data)

    def startProducing(self, consumer):
        consumer.write(self.body)
        return defer.succeed(None)

    def stopProducing(self):
        pass

    def pauseProducing(self):
        pass

    def resumeProducing(self):
        pass


class JSONBody(Protocol):
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
        if response.code != 200:
            # etcd's error object (gRPC code and message) if the body is one; a bare HTTP error otherwise
            obj = objects[0] if objects else {}
            code = obj.get("code")
            message = "etcd: HTTP %d %s" % (response.code, obj.get("message") or obj.get("error") or "")
            unavailable = code == GRPC_UNAVAILABLE or (code is None and response.code >= 500)
            d.errback((EtcdUnavailable if unavailable else EtcdError)(message.strip(), code))
        elif isinstance(reason, Exception):
            d.errback(EtcdUnavailable("bad answer from etcd: %s" % (reason,)))
        elif not reason.check(ResponseDone, PotentialDataLoss) or body.decoder.pending():
            d.errback(reason)  # cut off mid-answer
        elif not objects:
            d.errback(EtcdUnavailable("etcd answered an empty body"))
        else:
            d.callback(objects[0])

    body = JSONBody(objects.append, ended)
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


class Backoff:
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


class _Call:
    """
    One call to the gateway: an attempt per endpoint in turn from the last good one, each bounded by the timeout, one
    more attempt than endpoints (a pooled connection etcd closed when it restarted fails the first try on it).
    Cancelling ``result`` cancels the attempt in flight and tries no other.
    """

    def __init__(self, gateway, path, data, read):
        self.gateway = gateway
        self.path = path
        self.data = data
        self.read = read
        self.result = defer.Deferred(self._cancel)
        self.inFlight = None
        self.cancelled = False

    def _cancel(self, result):
        self.cancelled = True  # the attempt's failure is ignored: result fails with CancelledError
        if self.inFlight is not None:
            self.inFlight.cancel()

    def attempt(self, left, last):
        g = self.gateway
        if left == 0:
            g.setConnected(False)
            self.result.errback(EtcdUnavailable("etcd %s unreachable: %s" % (g.config.name, last.getErrorMessage())))
            return
        url = g.config.endpoints[g.current] + self.path
        d = self.inFlight = g.http.request("POST", url, data=self.data, headers=_HEADERS, reactor=g.reactor,
                                           unbuffered=True)
        d.addCallback(self.read)
        d.addTimeout(g.config.timeout, g.reactor)
        g.inflight.add(self)
        d.addCallbacks(self._done, self._failed, errbackArgs=(left,))

    def _done(self, value):
        self.inFlight = None
        self.gateway.inflight.discard(self)
        if not self.cancelled:
            self.result.callback(value)

    def _failed(self, failure, left):
        self.inFlight = None
        g = self.gateway
        g.inflight.discard(self)
        if self.cancelled:
            return None
        if g.stopped or not _connectionFailure(failure):
            if failure.check(EtcdError):
                g.setConnected(True)  # etcd answered, with an error
            self.result.errback(failure)
            return None
        g.current = (g.current + 1) % len(g.config.endpoints)
        self.attempt(left - 1, failure)
        return None


class Gateway:
    """
    The calls to one etcd cluster's gateway.  ``connected``: the last call (or watch stream) got through.

    @param config: a txmesh.discovery_config.EtcdRegistryConfig (endpoints, timeout, name).
    @param reactor: IReactorTime and IReactorTCP: timeouts, connections.
    @param agent: the IAgent to use (default: an Agent on a persistent HTTPConnectionPool of its own).
    """

    log = Logger()

    def __init__(self, config, reactor, agent=None):
        self.config = config
        self.reactor = reactor
        if agent is None:
            self.pool = HTTPConnectionPool(reactor, persistent=True)
            agent = Agent(reactor, connectTimeout=config.timeout, pool=self.pool)
        else:
            self.pool = None
        self.http = treq.client.HTTPClient(agent, data_to_body_producer=_BytesProducer)
        self.connected = False
        self.current = 0  # the endpoint that answered last
        self.inflight = set()
        self.stopped = False

    def setConnected(self, connected):
        """Record (and log a change of) whether etcd answers."""
        if connected != self.connected:
            self.connected = connected
            if connected:
                self.log.info("etcd registry {name}: connected to {url}", name=self.config.name,
                              url=self.config.endpoints[self.current])
            else:
                self.log.warn("etcd registry {name}: no endpoint answers ({urls})", name=self.config.name,
                              urls=", ".join(self.config.endpoints))

    def _send(self, path, body, read):
        """One call, endpoint by endpoint: ``read(response)`` makes its result.  @return: its Deferred."""
        call = _Call(self, path, json.dumps(body).encode("utf-8"), read)
        call.attempt(len(self.config.endpoints) + 1, None)
        return call.result

    def call(self, path, body):
        """
        POST ``body`` (a JSON-able dict) to the gateway's ``path`` (``/v3/kv/range`` ...).
        @return: a Deferred firing with the decoded answer; failing with L{EtcdError} (etcd's answer: ``code``
            names why) or L{EtcdUnavailable} (no endpoint answered within ``timeout``).
        """
        d = self._send(path, body, _answer)
        return d.addCallback(self._answered)

    def _answered(self, answer):
        self.setConnected(True)
        return answer

    def openStream(self, path, body, stream):
        """
        POST ``body`` and deliver the answer's body to ``stream`` (a L{JSONBody}: each JSON object, then the end).
        @return: a Deferred fired once the stream is open (its headers arrived); failing as ``call`` does.
        """

        def read(response):
            if response.code != 200:
                return _answer(response)  # fails with etcd's error
            response.deliverBody(stream)

        return self._send(path, body, read)

    def stop(self):
        """Cancel every call in flight and close the pool's connections.  @return: a Deferred."""
        self.stopped = True
        for call in list(self.inflight):
            call.result.cancel()
        self.connected = False
        if self.pool is not None:
            return self.pool.closeCachedConnections()
        return defer.succeed(None)
