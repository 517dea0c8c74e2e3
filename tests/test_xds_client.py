"""
The xDS client's transports without a network (issue 13 part 3): the sans-IO discovery state (txmesh/xds/discovery.py:
ACK/NACK, nonces, subscriptions, what a new stream asks for), the ADS driver (txmesh/xds/ads.py) on an in-memory
stream handle with a Clock (order, one update at a time, reconnect with full-jitter backoff), and the
``dynamic_resources`` block's load errors.  The real control planes are in tests/test_integration_xds.py.
"""

import random

import pytest
from google.protobuf import any_pb2
from twisted.internet import defer
from twisted.internet.task import Clock
from zope.interface import implementer
from zope.interface.verify import verifyObject

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.service.discovery.v3 import discovery_pb2
from tests.test_config import errorOf
from txmesh.config import NodeConfig, loads
from txmesh.interfaces import IXdsResourceHandler, IXdsTransport
from txmesh.protocols.h2 import grpc
from txmesh.stats import StatsStore
from txmesh.stream import HeaderMap, ResponseHead
from txmesh.xds.ads import ADS_PATH, AdsClient, backoffDelay
from txmesh.xds.client import XdsClient
from txmesh.xds.config import XdsConfig
from txmesh.xds.discovery import CDS, EDS, LDS, RDS, DiscoveryState, XdsStats

NODE = NodeConfig(id="sidecar-1", cluster="web", metadata={"zone": "a", "weight": 3})


@implementer(IXdsResourceHandler)
class FakeHandler:
    """Records updates; each answers with the Deferred the test fires (None: ACK, a string: NACK)."""

    def __init__(self, types=(CDS, EDS, LDS, RDS)):
        self.types = tuple(types)
        self.names = {t: frozenset() for t in types}
        self.updates = []  # (typeUrl, version, resources, Deferred)
        self.watchers = []

    def typeUrls(self):
        return self.types

    def subscriptions(self, typeUrl):
        return self.names[typeUrl]

    def watchSubscriptions(self, callback):
        self.watchers.append(callback)

    def update(self, typeUrl, versionInfo, resources):
        d = defer.Deferred()
        self.updates.append((typeUrl, versionInfo, resources, d))
        return d

    def rename(self, typeUrl, names):
        self.names[typeUrl] = frozenset(names)
        for w in self.watchers:
            w(typeUrl)


def response(typeUrl, version, nonce, resources):
    packed = []
    for r in resources:
        a = any_pb2.Any()
        a.Pack(r)
        packed.append(a)
    return discovery_pb2.DiscoveryResponse(version_info=version, nonce=nonce, type_url=typeUrl, resources=packed)


def clusters(*names):
    return [cluster_pb2.Cluster(name=n, type=cluster_pb2.Cluster.EDS) for n in names]


# -- the sans-IO state ----------------------------------------------------------------------------------------------


def test_handlers_and_transports_provide_their_interfaces():
    verifyObject(IXdsResourceHandler, FakeHandler())
    stats = XdsStats(StatsStore(), (CDS,))
    ads = AdsClient(XdsConfig(cluster="xds"), NODE, FakeHandler(), FakeCluster(), Clock(), random.Random(1), stats)
    verifyObject(IXdsTransport, ads)
    client = XdsClient(XdsConfig(cluster="xds"), NODE, FakeHandler(), FakeCluster(), Clock(), random.Random(1),
                       StatsStore())
    verifyObject(IXdsTransport, client)


def test_a_stream_opens_with_the_wildcard_types_in_envoys_order_and_the_node():
    h = FakeHandler()
    state = DiscoveryState(NODE, h.typeUrls(), h.subscriptions)
    requests = state.streamStarted()
    assert [r.type_url for r in requests] == [CDS, LDS]  # EDS and RDS wait for names
    first = requests[0]
    assert (first.version_info, first.response_nonce, list(first.resource_names)) == ("", "", [])
    assert (first.node.id, first.node.cluster, first.node.user_agent_name) == ("sidecar-1", "web", "txmesh")
    assert dict(first.node.metadata) == {"zone": "a", "weight": 3.0}


def test_ack_carries_the_version_and_nonce_and_nack_the_previous_version_and_error_detail():
    h = FakeHandler()
    state = DiscoveryState(NODE, h.typeUrls(), h.subscriptions)
    state.streamStarted()
    update = state.received(response(CDS, "v1", "n1", clusters("a", "b")))
    assert [c.name for c in update.resources] == ["a", "b"] and update.error is None
    ack = state.applied(update, None)
    assert (ack.type_url, ack.version_info, ack.response_nonce, ack.HasField("error_detail")) == (CDS, "v1", "n1",
                                                                                                 False)
    bad = state.received(response(CDS, "v2", "n2", clusters("c")))
    nack = state.applied(bad, "cluster 'c': lb_policy MAGLEV is not supported")
    assert (nack.version_info, nack.response_nonce) == ("v1", "n2")
    assert (nack.error_detail.code, nack.error_detail.message) == (3, "cluster 'c': lb_policy MAGLEV is not supported")
    described = state.describe()["cds"]
    assert (described["version_info"], described["accepted"], described["rejected"]) == ("v1", 1, 1)
    assert described["last_error"].startswith("cluster 'c'") and described["rejected_version"] == "v2"
    # a REST poll repeats the refusal until a version is accepted (Envoy's REST subscription)
    poll = state.request(CDS)
    assert (poll.version_info, poll.response_nonce, poll.error_detail.message[:11]) == ("v1", "n2", "cluster 'c'")
    # the next accepted version clears the error
    state.applied(state.received(response(CDS, "v3", "n3", clusters("a"))), None)
    assert state.describe()["cds"]["last_error"] is None
    assert not state.request(CDS).HasField("error_detail")


def test_a_resource_of_another_type_or_that_does_not_parse_is_nacked_without_the_handler():
    h = FakeHandler()
    state = DiscoveryState(NODE, h.typeUrls(), h.subscriptions)
    state.streamStarted()
    wrong = response(CDS, "v1", "n1", [endpoint_pb2.ClusterLoadAssignment(cluster_name="a")])
    update = state.received(wrong)
    assert update.error.startswith("resource 0 is a type.googleapis.com/envoy.config.endpoint.v3")
    garbage = discovery_pb2.DiscoveryResponse(version_info="v2", nonce="n2", type_url=CDS)
    garbage.resources.add(type_url=CDS, value=b"\xff\xff\xff")
    assert "does not parse" in state.received(garbage).error
    # a type not subscribed to is ignored, as Envoy does
    assert state.received(response("type.googleapis.com/envoy.service.runtime.v3.Runtime", "1", "x", [])) is None


def test_named_types_ask_once_they_have_names_and_a_new_stream_resends_versions_and_names():
    h = FakeHandler()
    state = DiscoveryState(NODE, h.typeUrls(), h.subscriptions)
    state.streamStarted()
    assert state.subscriptionsChanged(EDS) is None  # still nothing to ask for
    h.names[EDS] = frozenset({"b", "a"})
    eds = state.subscriptionsChanged(EDS)
    assert (eds.type_url, list(eds.resource_names), eds.version_info) == (EDS, ["a", "b"], "")
    assert state.subscriptionsChanged(EDS) is None  # unchanged
    state.applied(state.received(response(EDS, "e1", "n5", [])), None)
    state.applied(state.received(response(CDS, "c1", "n6", [])), None)
    # dropping every name still says so (the control plane stops sending them)
    h.names[EDS] = frozenset()
    assert list(state.subscriptionsChanged(EDS).resource_names) == []
    h.names[EDS] = frozenset({"a"})
    state.subscriptionsChanged(EDS)
    # reconnect: last accepted versions and names, no nonce of the old stream
    reopened = {r.type_url: r for r in state.streamStarted()}
    assert sorted(reopened) == sorted([CDS, EDS, LDS])
    assert (reopened[CDS].version_info, reopened[CDS].response_nonce) == ("c1", "")
    assert (reopened[EDS].version_info, list(reopened[EDS].resource_names)) == ("e1", ["a"])


# -- the ADS driver on an in-memory stream -------------------------------------------------------------------------


class FakeStream:
    """An IUpstreamStream: what was sent, decoded; ``respond`` plays the control plane."""

    def __init__(self):
        self.head = None
        self.responder = None
        self.reader = grpc.MessageReader(1 << 20)
        self.requests = []
        self.abandoned = False
        self.ended = False

    def sendRequest(self, head, endStream, responder):
        self.head, self.responder = head, responder
        self.ended = endStream

    def writeBody(self, data, endStream):
        for message in self.reader.feed(data):
            req = discovery_pb2.DiscoveryRequest()
            req.ParseFromString(message)
            self.requests.append(req)

    def abandon(self):
        self.abandoned = True

    def respond(self, msg, split=False):
        if self.responder.status is None:
            self.responder.upstreamHeaders(ResponseHead(200, HeaderMap([(b"content-type", b"application/grpc")]),
                                                        version=(2, 0)), False)
        data = grpc.frameMessage(msg.SerializeToString())
        if split:  # byte by byte: the reader joins them
            for i in range(len(data)):
                self.responder.upstreamData(data[i:i + 1], False)
        else:
            self.responder.upstreamData(data, False)

    def endWith(self, status):
        self.responder.upstreamComplete(True)
        self.responder.upstreamTrailers(HeaderMap([(b"grpc-status", status)]))


class FakePool:
    def __init__(self):
        self.streams = []
        self.refuse = None
        self.released, self.discarded = [], []

    def acquire(self):
        if self.refuse is not None:
            return defer.fail(self.refuse)
        s = FakeStream()
        self.streams.append(s)
        return defer.succeed(s)

    def release(self, s):
        self.released.append(s)

    def discard(self, s):
        self.discarded.append(s)


class FakeHost:
    address = "127.0.0.1:18000"
    hostname, port = "127.0.0.1", 18000


class FakeCluster:
    def __init__(self):
        self.pool = FakePool()
        self.host = FakeHost()

    def chooseHost(self, context=None):
        return self.host

    def poolFor(self, host):
        return self.pool


def makeAds(config=None):
    clock, cluster, handler, store = Clock(), FakeCluster(), FakeHandler(), StatsStore()
    config = config or XdsConfig(cluster="xds", reconnectBase=0.5, reconnectMax=4.0)
    ads = AdsClient(config, NODE, handler, cluster, clock, random.Random(7), XdsStats(store, handler.typeUrls()))
    return ads, clock, cluster, handler, store


def test_the_stream_is_a_grpc_call_that_acks_after_the_handler_applied():
    ads, clock, cluster, handler, store = makeAds()
    ads.start()
    stream = cluster.pool.streams[0]
    assert (stream.head.method, stream.head.path, stream.head.authority) == (b"POST", ADS_PATH, b"xds")
    assert stream.head.headers.get(b"content-type") == b"application/grpc" and not stream.ended
    assert [r.type_url for r in stream.requests] == [CDS, LDS]
    assert store.value("xds_stream_connected") == 1
    stream.respond(response(CDS, "1", "a", clusters("x")), split=True)
    assert [(t, v, [c.name for c in r]) for t, v, r, _ in handler.updates] == [(CDS, "1", ["x"])]
    assert len(stream.requests) == 2  # no ACK before the handler answered
    handler.rename(EDS, ["x"])  # applying CDS made an EDS cluster: EDS is asked for at once
    handler.updates[0][3].callback(None)
    eds, ack = stream.requests[2:]
    assert (eds.type_url, list(eds.resource_names)) == (EDS, ["x"])
    assert (ack.type_url, ack.version_info, ack.response_nonce) == (CDS, "1", "a")
    assert store.value("xds_update_success", type="cds") == 1
    assert store.value("xds_update_attempt", type="cds") == 1


def test_responses_are_applied_one_at_a_time_in_order_and_a_nack_keeps_the_version():
    ads, clock, cluster, handler, store = makeAds()
    ads.start()
    stream = cluster.pool.streams[0]
    stream.respond(response(CDS, "1", "a", clusters("x")))
    stream.respond(response(LDS, "L1", "b", []))
    assert len(handler.updates) == 1  # LDS waits for CDS
    handler.updates[0][3].callback("cluster 'x': no")
    assert len(handler.updates) == 2 and handler.updates[1][0] == LDS
    nack = stream.requests[-1]
    assert (nack.type_url, nack.version_info, nack.response_nonce, nack.error_detail.message) == (CDS, "", "a",
                                                                                                  "cluster 'x': no")
    handler.updates[1][3].callback(None)
    assert (stream.requests[-1].type_url, stream.requests[-1].version_info) == (LDS, "L1")
    assert store.value("xds_update_rejected", type="cds") == 1
    assert ads.describe()["types"]["cds"]["last_error"] == "cluster 'x': no"


def test_stream_end_reconnects_with_full_jitter_backoff_and_resends_the_accepted_versions():
    ads, clock, cluster, handler, store = makeAds()
    ads.start()
    stream = cluster.pool.streams[0]
    stream.respond(response(CDS, "7", "a", clusters("x")))
    handler.updates[0][3].callback(None)
    stream.endWith(b"14")
    assert cluster.pool.released == [stream] and store.value("xds_stream_connected") == 0
    assert store.value("xds_stream_failure") == 1 and ads.describe()["last_stream_error"] == "grpc-status 14"
    delays = []
    cluster.pool.refuse = Exception("connection refused")
    for _ in range(6):  # every reconnect fails: the bound doubles up to max_interval
        call = clock.getDelayedCalls()[0]
        delays.append(call.getTime() - clock.seconds())
        clock.advance(delays[-1])
    bounds = [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert all(0 <= d <= b for d, b in zip(delays, bounds)), delays
    assert len(set(delays)) == len(delays)  # jittered
    cluster.pool.refuse = None
    clock.advance(clock.getDelayedCalls()[0].getTime() - clock.seconds())
    reopened = cluster.pool.streams[-1]
    assert [(r.type_url, r.version_info, r.response_nonce) for r in reopened.requests] == [(CDS, "7", ""),
                                                                                         (LDS, "", "")]
    # a response on the new stream resets the backoff
    reopened.respond(response(LDS, "L", "z", []))
    assert ads.failures == 0


def test_backoff_delay_is_uniform_below_the_doubling_bound():
    r = random.Random(3)
    assert all(0 <= backoffDelay(r, 0.5, 30, n) <= min(30, 0.5 * 2 ** (n - 1)) for n in range(1, 40))


def test_an_ack_for_an_ended_stream_is_not_sent_and_stop_cancels_the_stream():
    ads, clock, cluster, handler, store = makeAds()
    ads.start()
    first = cluster.pool.streams[0]
    first.respond(response(CDS, "1", "a", clusters("x")))
    first.responder.upstreamFailed(Exception("upstream reset the stream (INTERNAL_ERROR)"))
    assert cluster.pool.discarded == [first]
    sent = len(first.requests)
    handler.updates[0][3].callback(None)  # applied after the stream ended
    assert len(first.requests) == sent
    clock.advance(1)
    second = cluster.pool.streams[1]
    assert second.requests[0].version_info == "1"  # accepted all the same
    ads.stop()
    assert second.abandoned and cluster.pool.discarded[-1] is second
    assert clock.getDelayedCalls() == []


def test_a_malformed_message_or_http_error_ends_the_stream():
    ads, clock, cluster, handler, store = makeAds()
    ads.start()
    stream = cluster.pool.streams[0]
    stream.responder.upstreamHeaders(ResponseHead(200, HeaderMap(), version=(2, 0)), False)
    stream.responder.upstreamData(b"\x01\x00\x00\x00\x01x", False)  # compressed: never negotiated
    assert "compressed" in ads.describe()["last_stream_error"]
    clock.advance(1)
    stream = cluster.pool.streams[1]
    stream.responder.upstreamHeaders(ResponseHead(200, HeaderMap(), version=(2, 0)), False)
    stream.responder.upstreamData(grpc.frameMessage(b"\xff\xff"), False)
    assert "does not parse" in ads.describe()["last_stream_error"]
    clock.advance(2)
    stream = cluster.pool.streams[2]
    stream.responder.upstreamHeaders(ResponseHead(404, HeaderMap(), version=(2, 0)), True)
    assert ads.describe()["last_stream_error"] == "HTTP status 404"
    assert store.value("xds_stream_failure") == 3


def test_initial_fetch_timeout_is_counted_for_types_with_nothing_accepted():
    clock, cluster, handler, store = Clock(), FakeCluster(), FakeHandler(), StatsStore()
    client = XdsClient(XdsConfig(cluster="xds", initialFetchTimeout=5), NODE, handler, cluster, clock,
                       random.Random(1), store)
    client.start()
    stream = cluster.pool.streams[0]
    stream.respond(response(CDS, "1", "a", []))
    handler.updates[0][3].callback(None)
    clock.advance(5)
    assert store.value("xds_init_fetch_timeout") == 1  # LDS only (EDS and RDS have no names)
    assert client.describe()["connected"] is True
    client.stop()


# -- the dynamic_resources block ------------------------------------------------------------------------------------

XDS_BASE = """\
node: {id: sidecar-1, cluster: web, metadata: {zone: a, tags: [x, y]}}
clusters:
  - name: xds
    protocol: grpc
    endpoints: [{address: '127.0.0.1:18000'}]
  - name: rest
    endpoints: [{address: '127.0.0.1:18001'}]
"""


def test_dynamic_resources_load_with_no_listener_of_its_own():
    mesh = loads(XDS_BASE + "dynamic_resources:\n  cluster: xds\n  reconnect: {base_interval: 250ms, "
                 "max_interval: 10s}\n", filename="mesh.yaml")
    assert mesh.listeners == ()
    assert mesh.dynamicResources == XdsConfig(apiType="GRPC", cluster="xds", reconnectBase=0.25, reconnectMax=10.0)
    assert mesh.node.metadata == {"zone": "a", "tags": ["x", "y"]}
    rest = loads(XDS_BASE + "dynamic_resources: {api_type: REST, cluster: rest, refresh_delay: 200ms, lds: false}\n"
                            "listeners: [{name: web, address: 'tcp:0'}]\n", filename="mesh.yaml")
    assert (rest.dynamicResources.apiType, rest.dynamicResources.refreshDelay, rest.dynamicResources.lds) == (
        "REST", 0.2, False)


@pytest.mark.parametrize("block, expected", [
    ("dynamic_resources: {cluster: nope}",
     "mesh.yaml:8: dynamic_resources.cluster: no static cluster named 'nope' (the control plane is reached through "
     "one of mesh.yaml's clusters)"),
    ("dynamic_resources: {cluster: rest}",
     "mesh.yaml:8: dynamic_resources.cluster: cluster 'rest' has protocol http1; api_type GRPC needs protocol grpc"),
    ("dynamic_resources: {cluster: xds, api_type: DELTA_GRPC}",
     "mesh.yaml:8: dynamic_resources.api_type: must be GRPC (ADS, state of the world) or REST (REST-JSON polling), "
     "not 'DELTA_GRPC'"),
    ("listeners: [{name: a, address: 'tcp:0'}]\ndynamic_resources:\n  cluster: xds\n  lds: false\n  cds: false",
     "mesh.yaml:9: dynamic_resources: asks for nothing: set lds, cds or both"),
    ("dynamic_resources:\n  cluster: xds\n  reconnect: {base_interval: 2s, max_interval: 1s}",
     "mesh.yaml:10: dynamic_resources.reconnect.max_interval: must be between base_interval (2s) and 1h"),
    ("dynamic_resources:\n  cluster: xds\n  refresh_delay: 0s",
     "mesh.yaml:10: dynamic_resources.refresh_delay: must be between 0.01s and 1h"),
    ("dynamic_resources: {cluster: xds, ads: true}",
     "mesh.yaml:8: dynamic_resources.ads: unknown key 'ads' (allowed: cluster, api_type, lds, cds, "
     "refresh_delay, request_timeout, initial_fetch_timeout, reconnect)"),
    ("dynamic_resources: {cluster: xds, lds: false}",
     "mesh.yaml:1: missing required key 'listeners'"),
])
def test_dynamic_resources_errors(block, expected):
    assert errorOf(XDS_BASE + block + "\n") == expected


def test_node_metadata_must_be_json():
    assert errorOf("node: {metadata: {when: 2024-01-01}}\nlisteners: [{name: a, address: 'tcp:0'}]\n") == (
        "mesh.yaml:1: node.metadata.when: must be a string, number, boolean, list or mapping, not date")


def test_a_dynamic_resources_bootstrap_validates_against_the_schema():
    import json
    from importlib import resources

    import jsonschema
    import yaml
    schema = json.loads(resources.files("txmesh").joinpath("mesh.schema.json").read_text())
    doc = yaml.safe_load(XDS_BASE + "dynamic_resources: {cluster: xds, api_type: GRPC, initial_fetch_timeout: 5s,"
                                    " reconnect: {base_interval: 1s}}\n")
    jsonschema.Draft202012Validator(schema).validate(doc)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(schema).validate(dict(doc, dynamic_resources={"cluster": "xds",
                                                                                      "api_type": "DELTA"}))


# -- the REST poller against the test control plane's REST-JSON endpoints (the reactor in its thread) --------------


@implementer(IXdsResourceHandler)
class AnsweringHandler(FakeHandler):
    """Answers at once: a NACK for the versions in ``refuse``; accepting CDS subscribes EDS to its clusters."""

    def __init__(self):
        FakeHandler.__init__(self)
        self.refuse = {}

    def update(self, typeUrl, versionInfo, resources):
        self.updates.append((typeUrl, versionInfo, resources, None))
        if versionInfo in self.refuse:
            return defer.succeed(self.refuse[versionInfo])
        if typeUrl == CDS:
            self.rename(EDS, [c.name for c in resources])
        return defer.succeed(None)


def test_rest_poller_polls_in_order_and_acks_and_nacks_in_the_next_poll():
    from tests.reactor_thread import onReactor, waitFor
    from tests.xds_control_plane import ControlPlane
    from txmesh.xds.rest import RestPoller

    plane = ControlPlane().start()
    handler, store = AnsweringHandler(), StatsStore()
    cluster = FakeCluster()
    cluster.host = type("Host", (), {"address": "127.0.0.1:%d" % plane.restPort, "hostname": "127.0.0.1",
                                     "port": plane.restPort})()
    plane.setSnapshot(CDS, "c1", clusters("app"))
    plane.setSnapshot(EDS, "e1", [endpoint_pb2.ClusterLoadAssignment(cluster_name="app")])
    poller = None
    try:
        def make():
            from twisted.internet import reactor
            p = RestPoller(XdsConfig(apiType="REST", cluster="xds", refreshDelay=0.05, requestTimeout=2), NODE,
                           handler, cluster, reactor, XdsStats(store, handler.typeUrls()))
            p.start()
            return p

        poller = onReactor(make)
        plane.waitFor(lambda: plane.ackOf("sidecar-1", EDS, "e1"), "the EDS ACK")
        first = plane.recorded("sidecar-1")[:3]
        # EDS right after the CDS that named its cluster, in the same round (Envoy's order), then LDS
        assert [(r.typeUrl, r.version, r.transport) for r in first] == [(CDS, "", "rest"), (EDS, "", "rest"),
                                                                         (LDS, "", "rest")]
        assert first[1].names == ("app",) and first[0].metadata == {"zone": "a", "weight": 3}
        handler.refuse["c2"] = "cluster 'b': no"
        plane.setSnapshot(CDS, "c2", clusters("app", "b"))
        nack = plane.waitNack("sidecar-1", CDS, "c2")
        assert (nack.version, nack.error) == ("c1", "cluster 'b': no")
        waitFor(lambda: poller.describe()["types"]["cds"]["rejected"] >= 1)
        described = onReactor(poller.describe)
        assert described["connected"] is True and described["types"]["cds"]["version_info"] == "c1"
        assert store.value("xds_update_rejected", type="cds") >= 1
        assert store.value("xds_update_success", type="eds") == 1
    finally:
        if poller is not None:
            onReactor(poller.stop)
        plane.stop()
