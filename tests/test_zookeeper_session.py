"""
txmesh.discovery.zookeeper_session against a real ZooKeeper (Debian's, started by tests/registry_servers.py): watches,
ephemeral nodes kept across session expiry and a server restart, every callback on the reactor thread.
"""

import threading

from kazoo.client import KazooClient
from zope.interface.verify import verifyObject

from tests.reactor_thread import onReactor, reactor, waitFor
from txmesh.discovery.zookeeper_session import ZooKeeperSession
from txmesh.discovery_config import ZooKeeperRegistryConfig
from txmesh.interfaces import IZooKeeperSession


def _session(hosts, name="zk"):
    return ZooKeeperSession(ZooKeeperRegistryConfig(name=name, hosts=hosts, sessionTimeout=4.0), reactor())


def _kazoo(hosts):
    k = KazooClient(hosts=hosts)
    k.start(30)
    return k


def test_interface(zookeeper):
    verifyObject(IZooKeeperSession, _session(zookeeper.hosts))


def test_watch_children_on_the_reactor_thread(zookeeper):
    session = _session(zookeeper.hosts)
    seen = []
    threadsSeen = set()

    def callback(children, version):
        threadsSeen.add(threading.current_thread().name)
        seen.append((children, version))

    onReactor(session.start)
    onReactor(session.watchChildren, "/t-watch/providers", callback)
    waitFor(lambda: seen and seen[-1][0] == [])  # not there yet: no children
    k = _kazoo(zookeeper.hosts)
    try:
        k.create("/t-watch/providers/a", b"1", makepath=True)
        waitFor(lambda: seen[-1][0] == ["a"])
        k.create("/t-watch/providers/b", b"2")
        waitFor(lambda: seen[-1][0] == ["a", "b"])
        k.delete("/t-watch/providers/a")
        waitFor(lambda: seen[-1][0] == ["b"])
        assert onReactor(session.getChildrenData, "/t-watch/providers") == {"b": b"2"}
    finally:
        k.stop()
        onReactor(session.stop)
    assert threadsSeen == {"test-reactor"}
    assert all(v.isdigit() for _, v in seen)  # the parent's pzxid


def test_ephemeral_comes_back_after_session_expiry(zookeeper):
    session = _session(zookeeper.hosts)
    states = []
    session.addStateListener(states.append)
    onReactor(session.start)
    onReactor(session.ensureEphemeral, "/t-eph/providers/me", b"data")
    k = _kazoo(zookeeper.hosts)
    try:
        assert k.get("/t-eph/providers/me")[0] == b"data"
        # expire our session from outside: a second client on the same session id closes it
        sid, password = session.client.client_id
        thief = KazooClient(hosts=zookeeper.hosts, client_id=(sid, password))
        thief.start(10)
        thief.stop()
        waitFor(lambda: "lost" in states, timeout=20)
        waitFor(lambda: session.connected and session.sessionsEstablished == 2, timeout=20)
        waitFor(lambda: k.exists("/t-eph/providers/me") is not None, timeout=10)
        assert k.exists("/t-eph/providers/me").ephemeralOwner == session.client.client_id[0]
        onReactor(session.removeEphemeral, "/t-eph/providers/me")
        assert k.exists("/t-eph/providers/me") is None
    finally:
        k.stop()
        onReactor(session.stop)


def test_server_restart_keeps_watches_and_ephemerals(zookeeper_server):
    session = _session(zookeeper_server.hosts)
    seen = []
    onReactor(session.start)
    onReactor(session.ensureEphemeral, "/t-rs/providers/me", b"x")
    onReactor(session.watchChildren, "/t-rs/providers", lambda c, v: seen.append(c))
    waitFor(lambda: seen and seen[-1] == ["me"])
    zookeeper_server.kill()
    waitFor(lambda: not session.connected, timeout=20)
    zookeeper_server.start()
    waitFor(lambda: session.connected, timeout=30)
    k = _kazoo(zookeeper_server.hosts)
    try:
        waitFor(lambda: k.exists("/t-rs/providers/me") is not None, timeout=20)
        k.create("/t-rs/providers/other", b"")
        waitFor(lambda: seen[-1] == ["me", "other"], timeout=10)
    finally:
        k.stop()
        onReactor(session.stop)
