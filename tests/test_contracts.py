"""
Every contract between txmesh's parts is a zope Interface in txmesh/interfaces.py: each implementation the running
mesh uses says @implementer and really provides it (verifyObject on live objects, made through the public paths a
user's config takes).  The pools, handles, network filters, router and protocol descriptors are checked beside
their own tests (test_conn_pool, test_network, test_router, test_protocols); this module covers the rest.
"""

import random

import pytest
from twisted.plugin import getPlugins
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from zope.interface.verify import verifyClass, verifyObject

import txmesh.plugins
from txmesh import interfaces as I
from txmesh.filters.chain import ActiveStream, FilterChainTemplate
from txmesh.protocols.dubbo import codec as dc
from txmesh.protocols.dubbo.server import DubboCall
from txmesh.protocols.h2.client import H2ClientProtocol
from txmesh.protocols.h2.downstream import H2DownstreamStream
from txmesh.protocols.http1.codec import RequestDecoder, ResponseDecoder
from txmesh.protocols.http1.server import HTTP1ServerProtocol
from txmesh.config import loads
from txmesh.stats import StatsStore
from txmesh.stream import StreamInfo
from txmesh.testing import InMemoryMesh
from txmesh.upstream.lb import LoadBalancerOptions
from txmesh.upstream.cluster import ClusterManager

MESH = """
listeners:
- name: ingress
  protocol: http1
  address: tcp:0
  filters:
    - {name: header_mutation, config: {response_headers_to_add: [{name: x-a, value: b}]}}
    - {name: router}
  route_config:
    virtual_hosts: [{name: all, domains: ["*"], routes: [{match: {prefix: /}, route: {cluster: backend}}]}]
clusters: [{name: backend, endpoints: [{address: "10.0.0.1:80"}, {address: "10.0.0.2:80"}]}]
"""


@pytest.fixture
def proxied():
    """A request in flight through a real listener, chain, router and pool."""
    mesh = InMemoryMesh(MESH)
    client = mesh.connect()
    client.send(b"GET /a HTTP/1.1\r\nHost: app\r\n\r\n")
    [stream] = mesh.streams
    return mesh, stream


def test_the_stream_and_its_listener_side(proxied):
    mesh, stream = proxied
    assert verifyObject(I.IStreamFactory, mesh.template)
    assert verifyObject(I.IStream, stream)
    assert verifyObject(I.IStreamInfo, stream.streamInfo)
    assert isinstance(stream.downstream, HTTP1ServerProtocol)
    assert verifyObject(I.IDownstreamStream, stream.downstream)
    assert verifyObject(I.IListenerFactory, mesh.factory)
    assert verifyObject(I.IRequestStats, mesh.runtime.requestStats)  # told of the stream's end


def test_filters_and_the_callbacks_they_get(proxied):
    _, stream = proxied
    router = stream.decoders[-1]
    [headerMutation] = stream.encoders
    assert verifyObject(I.IStreamDecoderFilter, router)
    assert verifyObject(I.IStreamEncoderFilter, headerMutation)
    assert verifyObject(I.IStreamDecoderFilterCallbacks, router.callbacks)
    assert verifyObject(I.IStreamEncoderFilterCallbacks, headerMutation.encoderCallbacks)
    for factory in getPlugins(I.IFilterFactory, txmesh.plugins):
        assert verifyObject(I.IFilterFactory, factory)


def test_filter_configs_holding_resources():
    from txmesh.filters.access_log import AccessLogFactory
    from txmesh.testing import FakeConfigContext

    config = AccessLogFactory().buildConfig({"path": "-"}, FakeConfigContext())
    assert verifyObject(I.IFilterConfigResources, config)


def test_clusters_hosts_and_load_balancers(proxied):
    mesh, _ = proxied
    cluster = mesh.clusters.get("backend")
    assert verifyObject(I.ICluster, cluster)
    for host in cluster.hosts:
        assert verifyObject(I.IHost, host)
    factories = list(getPlugins(I.ILoadBalancerFactory, txmesh.plugins))
    assert {f.name for f in factories} >= {"round_robin", "weighted_round_robin", "random", "least_request"}
    options = LoadBalancerOptions(clock=Clock())
    assert verifyObject(I.ILoadBalancerOptions, options)
    for factory in factories:
        assert verifyObject(I.ILoadBalancerFactory, factory)
        assert verifyObject(I.ILoadBalancer, factory.create(cluster.hosts, random.Random(1), options))


@pytest.mark.parametrize("codec", [RequestDecoder(), ResponseDecoder(), dc.DubboDecoder()],
                         ids=["http1-request", "http1-response", "dubbo"])
def test_codecs(codec):
    assert verifyObject(I.ICodec, codec)
    assert codec.feed(b"") == []


def test_the_http2_and_dubbo_listener_sides():
    assert verifyClass(I.IDownstreamStream, H2DownstreamStream)
    [frame] = dc.DubboDecoder().feed(dc.encodeHeartbeat(7))
    call = DubboCall(object(), frame, None, "svc.m")
    assert verifyObject(I.IDownstreamStream, call)


def test_upstream_clients():
    from txmesh.protocols.dubbo.client import DubboClientProtocol
    from txmesh.protocols.http1.client import HTTP1ClientProtocol

    dubbo = DubboClientProtocol()
    dubbo.makeConnection(StringTransport())
    assert verifyObject(I.IMultiplexClient, dubbo)
    http1 = HTTP1ClientProtocol()
    http1.makeConnection(StringTransport())
    assert verifyObject(I.IUpstreamStream, http1)
    assert verifyObject(I.IPooledConnection, http1)
    assert verifyClass(I.IHTTP2ClientConnection, H2ClientProtocol)


def test_an_active_stream_made_by_hand_provides_IStream():
    template = FilterChainTemplate((), None, None)
    assert verifyObject(I.IStreamFactory, template)
    stream = ActiveStream(template, None, StreamInfo(0.0, "http/1.1", "l"))
    assert verifyObject(I.IStream, stream)


def test_health_checker_plugins_and_the_checkers_a_config_builds():
    factories = {p.name: p for p in getPlugins(I.IHealthCheckerFactory, txmesh.plugins)}
    assert {"tcp", "http", "grpc", "dubbo"} <= set(factories)
    text = "listeners: [{name: l, address: 'tcp:0', default_cluster: h}]\nclusters:\n" + "".join(
        "  - {name: %s, protocol: %s, endpoints: [{address: '10.0.0.1:80'}], health_checks: [{type: %s}]}\n"
        % (kind, protocol, kind) for kind, protocol in (("tcp", "http2"), ("http", "http1"), ("grpc", "grpc"),
                                                        ("dubbo", "dubbo")))
    config = loads(text.replace("default_cluster: h", "default_cluster: tcp"))
    clusters = ClusterManager(MemoryReactorClock(), config.clusters, lambda c: None, StatsStore(), random.Random(1))
    for cluster in clusters:
        verifyObject(I.IHealthCheckerFactory, cluster.config.healthChecks[0].factory)
        [session] = cluster.healthChecker.sessions.values()
        verifyObject(I.IHealthChecker, session.checker)
