"""
The source_ip network filter: allow/deny by CIDR (IPv4, IPv6, IPv4-mapped), deny winning, refusal at once, its
counters, and config errors naming the key.
"""

import ipaddress

import pytest
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from zope.interface.verify import verifyObject

from txmesh.config import loads
from txmesh.errors import ConfigError
from txmesh.filters.source_ip import SourceIPConfig, SourceIPFactory, SourceIPFilter
from txmesh.interfaces import FilterStatus, IReadFilter
from txmesh.testing import (FakeConfigContext, FakeConnection, FakeReadFilterCallbacks, FakeRuntime, RecordingInstaller,
                            buildConfigError)


def build(raw):
    return SourceIPFactory().buildConfig(raw, FakeConfigContext())


def connect(config, peer, runtime=None):
    """(status, connection, runtime) after connectionMade for a peer."""
    runtime = runtime or FakeRuntime()
    installer = RecordingInstaller()
    SourceIPFactory().createFilters(config, installer, runtime)
    [f] = installer.readFilters
    connection = FakeConnection(peer=peer, listenerName="ingress")
    f.initializeReadFilterCallbacks(FakeReadFilterCallbacks(connection))
    return f.connectionMade(), connection, runtime


def v4(host):
    return IPv4Address("TCP", host, 5555)


def v6(host):
    return IPv6Address("TCP", host, 5555)


@pytest.mark.parametrize("raw, peer, allowed", [
    ({"allow": ["10.0.0.0/8"]}, v4("10.9.8.7"), True),
    ({"allow": ["10.0.0.0/8"]}, v4("11.0.0.1"), False),
    ({"allow": ["10.0.0.0/8"], "deny": ["10.1.0.0/16"]}, v4("10.1.2.3"), False),  # deny wins
    ({"allow": ["10.0.0.0/8"], "deny": ["10.1.0.0/16"]}, v4("10.2.0.1"), True),
    ({"deny": ["192.0.2.1"]}, v4("192.0.2.1"), False),  # a bare address is a range of one
    ({"deny": ["192.0.2.1"]}, v4("192.0.2.2"), True),  # only deny: everything else passes
    ({"allow": ["2001:db8::/32"]}, v6("2001:db8::1"), True),
    ({"allow": ["2001:db8::/32"]}, v6("2001:db9::1"), False),
    ({"allow": ["2001:db8::/32"]}, v4("10.0.0.1"), False),
    ({"allow": ["127.0.0.0/8"]}, v6("::ffff:127.0.0.1"), True),  # IPv4-mapped matches as IPv4
    ({"deny": ["127.0.0.0/8"]}, v6("::ffff:127.0.0.1"), False),
    ({"allow": ["::1/128", "127.0.0.1/32"]}, v6("::1"), True),
    ({"allow": ["127.0.0.0/8"]}, UNIXAddress("/tmp/s"), False),  # no IP: matches no range
    ({"deny": ["127.0.0.0/8"]}, UNIXAddress("/tmp/s"), True),
])
def test_decision(raw, peer, allowed):
    status, connection, runtime = connect(build(raw), peer)
    if allowed:
        assert status is FilterStatus.CONTINUE and connection.closed is None
    else:
        assert status is FilterStatus.STOP and connection.closed == "close"
    assert runtime.stats.value("source_ip_allowed", listener="ingress") == int(allowed)
    assert runtime.stats.value("source_ip_denied", listener="ingress") == int(not allowed)


def test_countersAddUp():
    config = build({"allow": ["10.0.0.0/8"]})
    runtime = FakeRuntime()
    for host in ("10.0.0.1", "10.0.0.2", "8.8.8.8"):
        connect(config, v4(host), runtime)
    assert runtime.stats.value("source_ip_allowed", listener="ingress") == 2
    assert runtime.stats.value("source_ip_denied", listener="ingress") == 1


def test_config():
    assert build({"allow": ["10.0.0.0/8", " ::1 "], "deny": None}) == SourceIPConfig(
        (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("::1/128")), ())


@pytest.mark.parametrize("raw, path, reason", [
    ({}, "", "needs a non-empty allow or deny list"),
    ({"allow": [], "deny": []}, "", "needs a non-empty allow or deny list"),
    ({"allow": "10.0.0.0/8"}, "allow", "must be a list of CIDR ranges"),
    ({"deny": [10]}, "deny[0]", "must be a CIDR range like 10.0.0.0/8 or 2001:db8::/32"),
    ({"deny": ["10.0.0.0/8", "10.0.0.1/8"]}, "deny[1]", "not a CIDR range: 10.0.0.1/8 has host bits set"),
    ({"allow": ["10.0.0.0/33"]}, "allow[0]", "not a CIDR range: '10.0.0.0/33' does not appear to be an IPv4 or "
                                             "IPv6 network"),
    ({"allow": ["10.0.0.0/8"], "permit": []}, "permit", "unknown key (expected one of: allow, deny)"),
])
def test_configErrorsNameTheKey(raw, path, reason):
    error = buildConfigError(SourceIPFactory(), raw)
    assert (error.path, error.reason) == (path, reason)


def test_configErrorInMeshYamlNamesFileLineAndKeyPath():
    text = ("listeners:\n  - name: l\n    protocol: dubbo\n    address: tcp:0\n    network_filters:\n"
            "      - name: source_ip\n        config:\n          allow:\n            - 10.0.0.0/8\n"
            "            - 10.0.0.300\n")
    with pytest.raises(ConfigError) as info:
        loads(text, "mesh.yaml")
    assert str(info.value) == ("mesh.yaml:10: listeners[0].network_filters[0].config.allow[1]: not a CIDR range: "
                               "'10.0.0.300' does not appear to be an IPv4 or IPv6 network")


def test_listedUnderFiltersIsAnError():
    text = ("listeners:\n  - name: l\n    address: tcp:0\n    filters:\n      - name: source_ip\n")
    with pytest.raises(ConfigError) as info:
        loads(text, "mesh.yaml")
    assert str(info.value) == ("mesh.yaml:5: listeners[0].filters[0].name: 'source_ip' is a network filter; list it"
                               " under network_filters")


def test_filterInterface():
    f = SourceIPFilter(build({"deny": ["10.0.0.0/8"]}), FakeRuntime())
    verifyObject(IReadFilter, f)
    assert f.dataReceived(b"x") is FilterStatus.CONTINUE
