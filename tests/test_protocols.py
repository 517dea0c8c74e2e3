"""
Protocol descriptors: one vocabulary of protocol names (older spellings still accepted), config, the service and
the clusters built from descriptors found as plugins, a third-party protocol added the same way, and the
listener factories every descriptor builds providing IListenerFactory.
"""

import os
import textwrap

import pytest
from twisted.internet.testing import MemoryReactorClock, StringTransport
from zope.interface.verify import verifyObject

from txmesh import config
from txmesh.interfaces import IConnectionPool, IListenerFactory, IProtocol
from txmesh.protocols.descriptor import findProtocols
from txmesh.protocols.dubbo.protocol import DUBBO
from txmesh.protocols.h2.protocol import GRPC, HTTP2
from txmesh.protocols.http1.protocol import HTTP1
from txmesh.service import MeshService

HERE = os.path.dirname(os.path.abspath(__file__))


def mesh(listenerProtocol, clusterProtocol="http1", filters="[{name: router}]", extra=""):
    """A mesh.yaml with one listener and one cluster; a Dubbo listener routes by its default_cluster."""
    if listenerProtocol == "dubbo":
        routing = "default_cluster: backend"
    else:
        routing = ("route_config:\n      virtual_hosts: [{name: all, domains: [\"*\"], routes: [{match: {prefix: /},"
                   " route: {cluster: backend}}]}]")
    return config.loads(textwrap.dedent("""\
        %s
        clusters:
          - name: backend
            protocol: %s
            endpoints: [{address: 127.0.0.1:8080}]
        listeners:
          - name: l
            address: tcp:0:interface=127.0.0.1
            protocol: %s
            filters: %s
            %s
        """) % (extra, clusterProtocol, listenerProtocol, filters, routing))


@pytest.mark.parametrize("descriptor", [HTTP1, HTTP2, GRPC, DUBBO], ids=lambda d: d.name)
def test_builtin_descriptors_provide_IProtocol(descriptor):
    assert verifyObject(IProtocol, descriptor)
    assert descriptor.listens and descriptor.upstream


def test_names_and_older_spellings_find_the_same_descriptor():
    found = findProtocols()
    assert found["http1"] is found["http"] is HTTP1
    assert found["http2"] is found["h2"] is HTTP2
    assert found["grpc"] is GRPC and found["dubbo"] is DUBBO


@pytest.mark.parametrize("spelling, canonical", [("http", "http1"), ("http1", "http1"), ("http2", "http2"),
                                                 ("h2", "http2"), ("grpc", "grpc"), ("dubbo", "dubbo")])
def test_listener_protocol_spellings(spelling, canonical):
    cluster = "dubbo" if canonical == "dubbo" else "http1"
    lc = mesh(spelling, cluster).listeners[0]
    assert lc.protocol == canonical
    assert lc.descriptor is findProtocols()[canonical]


@pytest.mark.parametrize("spelling, canonical", [("http1", "http1"), ("http", "http1"), ("h2", "http2"),
                                                 ("http2", "http2"), ("grpc", "grpc"), ("dubbo", "dubbo")])
def test_cluster_protocol_spellings(spelling, canonical):
    cc = mesh("http1", spelling).clusters[0]
    assert cc.protocol == canonical and cc.descriptor is findProtocols()[canonical]


@pytest.mark.parametrize("listener, cluster", [("http1", "http1"), ("http2", "http2"), ("grpc", "grpc"),
                                               ("dubbo", "dubbo")])
def test_service_builds_listener_factories_and_pools_from_descriptors(listener, cluster):
    cfg = mesh(listener, cluster)
    svc = MeshService(cfg, MemoryReactorClock(), installSignal=lambda *a: None)
    factory = svc.listenerFactories[0]
    assert verifyObject(IListenerFactory, factory)
    assert factory.listenerName == "l"
    c = svc.clusters.get("backend")
    pool = c.poolFor(c.hosts[0])
    assert verifyObject(IConnectionPool, pool)


def test_http2_listener_loads_every_builtin_http_filter():
    """An http2 listener used to refuse every built-in filter ("does not support protocol 'http2'")."""
    cfg = mesh("http2", filters="""
              - name: header_mutation
                config: {request_headers_to_add: [{name: x-a, value: b}]}
              - name: access_log
                config: {path: /dev/null}
              - name: router""")
    assert [f.name for f in cfg.listeners[0].filters] == ["header_mutation", "access_log", "router"]


def test_filter_of_another_family_is_refused_with_the_listener_protocol_name():
    with pytest.raises(config.ConfigError) as e:
        mesh("dubbo", "dubbo", filters="[{name: header_mutation}, {name: router}]")
    assert "filter 'header_mutation' does not support protocol 'dubbo'" in str(e.value)


def test_requests_carry_the_listener_protocol_name():
    from tests.h2wire import PREFACE, ListenerConfig, Runtime, Template
    from hyperframe.frame import SettingsFrame
    from txmesh.protocols.h2.server import H2ListenerFactory
    from tests.test_h2_defences import headersFrame, request

    template = Template()
    proto = H2ListenerFactory(ListenerConfig(), template, Runtime()).buildProtocol(None)
    proto.makeConnection(StringTransport())
    proto.dataReceived(PREFACE + SettingsFrame(0).serialize() + headersFrame(1, request()))
    head = template.log[0][1]
    assert head.protocol == "http2"
    assert template.streams[0].info.protocol == "h2"


def test_third_party_protocol_from_plugin_paths():
    plugins = os.path.join(HERE, "fixtures", "example_protocol", "txmesh", "plugins")
    cfg = config.loads(textwrap.dedent("""\
        plugin_paths: [%s]
        listeners:
          - name: echo
            address: tcp:0:interface=127.0.0.1
            protocol: echo
            filters: []
        """) % (plugins,))
    lc = cfg.listeners[0]
    assert lc.protocol == "example_echo"
    svc = MeshService(cfg, MemoryReactorClock(), installSignal=lambda *a: None)
    factory = svc.listenerFactories[0]
    assert verifyObject(IListenerFactory, factory)
    proto = factory.buildProtocol(None)
    t = StringTransport()
    proto.makeConnection(t)
    proto.dataReceived(b"hello\r\n")
    assert t.value() == b"hello\r\n"


def test_a_protocol_without_an_upstream_side_is_refused_for_clusters():
    plugins = os.path.join(HERE, "fixtures", "example_protocol", "txmesh", "plugins")
    with pytest.raises(config.ConfigError) as e:
        mesh("http1", "echo", extra="plugin_paths: [%s]" % (plugins,))
    assert "clusters[0].protocol: unknown cluster protocol 'echo' (known: dubbo, grpc, http1, http2)" in str(e.value)
