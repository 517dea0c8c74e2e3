"""txmesh.protocols.dubbo.url: Dubbo 2 registry URLs as real providers write them in ZooKeeper."""

import pytest

from txmesh.protocols.dubbo import url

# a provider node name as Apache Dubbo 2.7 writes it under /dubbo/<interface>/providers (URL.encode of the URL)
REAL = ("dubbo%3A%2F%2F192.168.1.7%3A20880%2Forg.apache.dubbo.demo.DemoService%3Fanyhost%3Dtrue%26application%3D"
        "demo-provider%26deprecated%3Dfalse%26dubbo%3D2.0.2%26dynamic%3Dtrue%26generic%3Dfalse%26interface%3D"
        "org.apache.dubbo.demo.DemoService%26methods%3DsayHello%2CsayHelloAsync%26pid%3D4242%26release%3D2.7.8"
        "%26side%3Dprovider%26timestamp%3D1600000000000%26version%3D1.0.0")


def test_decode_real_provider_node():
    u = url.decode(REAL)
    assert (u.protocol, u.host, u.port, u.path) == ("dubbo", "192.168.1.7", 20880,
                                                     "org.apache.dubbo.demo.DemoService")
    assert u.interface == "org.apache.dubbo.demo.DemoService"
    assert u.get("methods") == "sayHello,sayHelloAsync"
    assert u.get("version") == "1.0.0" and u.get("side") == "provider"
    assert u.address == "192.168.1.7:20880"


def test_round_trip():
    u = url.decode(REAL)
    assert url.decode(u.encode()) == u
    assert u.format().startswith("dubbo://192.168.1.7:20880/org.apache.dubbo.demo.DemoService?anyhost=true&")


def test_ipv6_and_parameters_needing_escapes():
    u = url.DubboURL("dubbo", "::1", 20880, "a.B", {"group": "g 1&x", "methods": "m1,m2"})
    text = u.format()
    assert text.startswith("dubbo://[::1]:20880/a.B?")
    assert url.parse(text) == u
    assert url.decode(u.encode()) == u


def test_consumer_url_without_port():
    u = url.parse("consumer://10.0.0.9/a.B?category=consumers&side=consumer")
    assert (u.host, u.port, u.get("category")) == ("10.0.0.9", 0, "consumers")


@pytest.mark.parametrize("bad", ["no-scheme", "dubbo://:20880/x", "dubbo://h:port/x", "dubbo://h:70000/x", "://h/x"])
def test_not_a_url(bad):
    with pytest.raises(url.DubboURLError):
        url.parse(bad)
