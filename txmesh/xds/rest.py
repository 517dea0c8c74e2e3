"""
REST-JSON polling (Envoy's ``api_type: REST``): every ``refresh_delay`` each subscribed type is asked for in turn
(CDS, EDS, LDS, RDS) with a POST of a JSON DiscoveryRequest to ``/v3/discovery:clusters`` (``:endpoints``,
``:listeners``, ``:routes``) on a host of the control plane's static cluster, through treq, each bounded by
``request_timeout``.  A 200 carries a JSON DiscoveryResponse, handed to the IXdsResourceHandler; the next request
of that type carries the outcome as the stream's ACK/NACK would (the accepted ``version_info``, the ``response_nonce``
and, after a refusal, ``error_detail``).  A 304 means nothing changed.  A failed poll (connect, timeout, another
status, a body that does not parse) is counted and the next round comes after the same delay.

The protocol is L{txmesh.xds.discovery.DiscoveryState}, as for the ADS stream.
"""

import json
from io import BytesIO

import treq.client
from twisted.internet import defer
from twisted.internet.task import Cooperator
from twisted.logger import Logger
from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool
from zope.interface import implementer

from txmesh.interfaces import IXdsTransport
from txmesh.xds.discovery import REST_PATHS, SHORT_NAMES, DiscoveryState

MAX_RESPONSE_BYTES = 64 << 20


class PollFailed(Exception):
    """A REST poll that brought no response to apply: the reason, for the log and ``/server_info``."""


@implementer(IXdsTransport)
class RestPoller:
    """
    One REST-JSON xDS client.

    @param config: the XdsConfig (refresh_delay, request_timeout, the cluster's name).
    @param node: the txmesh.config.NodeConfig.
    @param handler: the IXdsResourceHandler.
    @param cluster: the control plane's ICluster: each round asks the host its load balancer picks.
    @param reactor: IReactorTime and IReactorTCP (timers, treq's connections).
    @param stats: an L{txmesh.xds.discovery.XdsStats}.
    @param agent: the IAgent (default: an Agent on a persistent HTTPConnectionPool of its own).
    """

    log = Logger()

    def __init__(self, config, node, handler, cluster, reactor, stats, agent=None):
        from google.protobuf import json_format

        self._json = json_format
        self.config = config
        self.handler = handler
        self.cluster = cluster
        self.clock = reactor
        self.stats = stats
        self.state = DiscoveryState(node, handler.typeUrls(), handler.subscriptions)
        self.pool = None
        if agent is None:
            self.pool = HTTPConnectionPool(reactor, persistent=True)
            agent = Agent(reactor, connectTimeout=max(1, int(config.requestTimeout + 0.999)), pool=self.pool)
        # request bodies are written by a cooperator on the injected reactor (treq's default uses the global one)
        self._cooperator = Cooperator(scheduler=lambda work: reactor.callLater(0, work), started=True)
        self.http = treq.client.HTTPClient(
            agent, data_to_body_producer=lambda body: FileBodyProducer(BytesIO(body), self._cooperator))
        self.connected = False
        self.server = None
        self.lastPollError = None
        self._timer = None
        self._round = None
        self._stopped = True
        handler.watchSubscriptions(self._subscriptionsChanged)

    def start(self):
        self._stopped = False
        self._poll()

    def stop(self):
        """Stop polling: the round in flight is cancelled, the connections closed.  @return: a Deferred."""
        self._stopped = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self._round is not None:
            self._round.cancel()
        self._cooperator.stop()
        if self.connected:
            self.connected = False
            self.stats.connected.set(0)
        return self.pool.closeCachedConnections() if self.pool is not None else defer.succeed(None)

    def _subscriptionsChanged(self, typeUrl):
        # the next round asks for the new names; a named type that gets its first names is asked for at once
        # (Envoy's REST subscription also starts a fetch when its names change)
        if not self._stopped and self._round is None and self._timer is not None and self._timer.active():
            self._timer.cancel()
            self._poll()

    def _poll(self):
        self._timer = None
        if self._stopped:
            return
        self._round = self._pollRound()
        self._round.addErrback(lambda f: f.trap(defer.CancelledError))
        self._round.addBoth(self._roundDone)

    def _roundDone(self, _):
        self._round = None
        if not self._stopped:
            self._timer = self.clock.callLater(self.config.refreshDelay, self._poll)

    @defer.inlineCallbacks
    def _pollRound(self):
        host = self.cluster.chooseHost(None)
        if host is None:
            self._failed("cluster '%s' has no healthy host" % (self.config.cluster,))
            return
        self.server = host.address
        for typeUrl in self.state.typeUrls:
            request = self.state.request(typeUrl)
            if request is None:
                continue
            try:
                response = yield self._fetch(host, typeUrl, request)
            except PollFailed as e:
                self._failed(str(e))  # the other types are still asked for (Envoy polls each on its own)
                continue
            if not self.connected:
                self.connected = True
                self.stats.connected.set(1)
                self.log.info("xDS: REST polls of {server} answer", server=self.server)
            if response is None:
                continue  # 304: unchanged
            update = self.state.received(response)
            if update is None:
                continue
            self.stats.count(typeUrl, "xds_update_attempt")
            error = update.error
            if error is None:
                error = yield defer.maybeDeferred(self.handler.update, typeUrl, update.version,
                                                  list(update.resources)).addErrback(self._handlerFailed)
            self._answered(update, error)

    def _handlerFailed(self, failure):
        self.log.failure("xDS: the resource handler failed", failure)
        return "internal error: %s" % (failure.getErrorMessage(),)

    def _answered(self, update, error):
        # the state makes the ACK/NACK request; REST sends it as the next poll of the type (state.request)
        self.state.applied(update, error)
        name = SHORT_NAMES.get(update.typeUrl, update.typeUrl)
        if error is None:
            self.stats.count(update.typeUrl, "xds_update_success")
            self.log.info("xDS: {type} version {version} applied ({n} resource(s))", type=name,
                          version=update.version, n=len(update.resources))
        else:
            self.stats.count(update.typeUrl, "xds_update_rejected")
            self.log.warn("xDS: {type} version {version} rejected: {error}", type=name, version=update.version,
                          error=error)

    @defer.inlineCallbacks
    def _fetch(self, host, typeUrl, request):
        """
        POST one DiscoveryRequest.  @return: a Deferred firing with the DiscoveryResponse, or None (304).
        @raise PollFailed: no answer within request_timeout, another status, a body that is not one.
        """
        url = "http://%s:%d%s" % (host.hostname, host.port, REST_PATHS[typeUrl])
        # Envoy's field names (snake_case), and empty fields too: a control plane may require ``node.cluster``
        body = self._json.MessageToJson(request, preserving_proto_field_name=True, indent=None,
                                        always_print_fields_with_no_presence=True).encode("utf-8")
        d = self.http.post(url, data=body, headers={b"content-type": [b"application/json"]})
        timer = self.clock.callLater(self.config.requestTimeout, d.cancel)
        try:
            response = yield d
            if response.code == 304:
                yield response.collect(lambda data: None)
                return None
            chunks = []
            size = [0]

            def collect(data):
                size[0] += len(data)
                if size[0] > MAX_RESPONSE_BYTES:
                    raise PollFailed("a response body above %d bytes" % (MAX_RESPONSE_BYTES,))
                chunks.append(data)

            yield treq.collect(response, collect)
        except defer.CancelledError:
            raise PollFailed("no answer from %s within %gs" % (url, self.config.requestTimeout)) from None
        except PollFailed:
            raise
        except Exception as e:
            raise PollFailed("%s: %s" % (url, e or type(e).__name__)) from None
        finally:
            if timer.active():
                timer.cancel()
        text = b"".join(chunks)
        if response.code != 200:
            raise PollFailed("%s answered HTTP %d: %s" % (url, response.code, text[:200].decode("utf-8", "replace")))
        message = self.state.msgs.discovery.DiscoveryResponse()
        try:
            self._json.Parse(text, message, ignore_unknown_fields=True)
        except (self._json.ParseError, json.JSONDecodeError, UnicodeDecodeError) as e:
            raise PollFailed("%s: not a DiscoveryResponse: %s" % (url, e)) from None
        if not message.type_url:
            message.type_url = typeUrl
        if message.type_url != typeUrl:
            raise PollFailed("%s answered with %s resources" % (url, message.type_url))
        return message

    def _failed(self, why):
        self.stats.failure.value += 1
        if self.connected:
            self.connected = False
            self.stats.connected.set(0)
        if why != self.lastPollError:
            self.log.warn("xDS: REST poll failed: {why}", why=why)
        self.lastPollError = why

    def describe(self):
        return {"api_type": "REST", "cluster": self.config.cluster, "server": self.server,
                "connected": self.connected, "last_stream_error": self.lastPollError,
                "types": self.state.describe()}
