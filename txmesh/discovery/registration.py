"""
The local app published in the registries users already run (issue 12, part 3; mesher's and MOSN's publish side),
under the address of txmesh's inbound listener, so callers come through the sidecar.

- L{RegistrationManager} runs the local app's active health check (issue 11's checkers and scheduler, on one
  L{txmesh.upstream.host.Host} for the app) and keeps every registration published while the app passes it: after
  ``healthy_threshold`` passes in a row it registers, on failure (``unhealthy_threshold`` network failures, or at
  once for a refused connect or a wrong answer) it withdraws; on drain it withdraws first, then waits
  ``drain_grace`` so callers' registries notice before the listeners close.
- L{ZooKeeperRegistrar} writes Dubbo 2's provider URLs (``{root}/{interface}/providers/{URL.encode(url)}``) and
  consumer nodes (``.../consumers/...``) as ephemeral nodes through the shared IZooKeeperSession, which creates them
  again after a session loss.
- etcd entries use ``txmesh.discovery.etcd.EtcdRegistrar`` (one key under a lease kept alive).

See docs/discovery.md, "Registering the local app".
"""

import fcntl
import ipaddress
import json
import os
import random as _random
import socket
import struct

from twisted.internet import defer, task
from twisted.logger import Logger
from zope.interface import implementer

from txmesh.discovery.etcd import EtcdRegistrar
from txmesh.interfaces import IRegistrar
from txmesh.protocols.dubbo.url import DubboURL
from txmesh.upstream.health import HealthCheckSession, HealthCheckStats
from txmesh.upstream.host import HealthFlag, Host

DUBBO_PROTOCOL_VERSION = "2.0.2"  # the ``dubbo`` parameter Dubbo 2.7 providers and consumers write
_SIOCGIFADDR = 0x8915  # Linux: an interface's IPv4 address
_WILDCARD = ("", "0.0.0.0", "::")


def firstNonLoopbackIPv4():
    """
    The first IPv4 address of this node's interfaces (in their index order) outside 127.0.0.0/8, or None.
    Linux only (SIOCGIFADDR); the standard library lists interfaces but not their addresses.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _, name in socket.if_nameindex():
            try:
                packed = fcntl.ioctl(s.fileno(), _SIOCGIFADDR, struct.pack("256s", name.encode()[:15]))
            except OSError:
                continue  # no IPv4 address, or down
            address = ipaddress.IPv4Address(packed[20:24])
            if not address.is_loopback and not address.is_unspecified:
                return str(address)
    return None


def advertisedHost(config, nodeAddress=firstNonLoopbackIPv4):
    """
    The host callers are told to dial: ``advertise_address``; else the listener's own interface when it is bound to
    one address (127.0.0.1 for a loopback listener); else, bound to all, the node's first non-loopback IPv4
    (``nodeAddress()``), or 127.0.0.1 when it has none.
    """
    if config.advertiseAddress:
        return config.advertiseAddress
    if config.listenerInterface not in _WILDCARD:
        return config.listenerInterface
    return nodeAddress() or "127.0.0.1"


def _dubboParameters(interface, version, group, application, pid, timestamp):
    parameters = {"application": application, "dubbo": DUBBO_PROTOCOL_VERSION, "interface": interface,
                  "pid": str(pid), "timestamp": str(timestamp)}
    if version:
        parameters["version"] = version
    if group:
        parameters["group"] = group
    return parameters


def providerURL(service, host, port, application, pid, timestamp, anyhost=False):
    """
    The provider URL Dubbo 2.7 writes for ``service`` (a DubboServiceConfig): ``dubbo://host:port/interface?
    anyhost=..&application=..&deprecated=false&dubbo=2.0.2&dynamic=true&generic=false&interface=..&methods=..&pid=..&
    register=true&side=provider&timestamp=..[&version=..][&group=..]``, plus the service's own ``parameters``.
    """
    parameters = _dubboParameters(service.interface, service.version, service.group, application, pid, timestamp)
    parameters.update({"anyhost": "true" if anyhost else "false", "deprecated": "false", "dynamic": "true",
                       "generic": "false", "register": "true", "side": "provider"})
    if service.methods:
        parameters["methods"] = ",".join(sorted(service.methods))
    parameters.update(service.parameters)
    return DubboURL("dubbo", host, port, service.interface, parameters)


def consumerURL(subscription, host, application, pid, timestamp):
    """A Dubbo 2 consumer node's URL: ``consumer://host/interface?category=consumers&check=false&side=consumer&..``."""
    parameters = _dubboParameters(subscription.interface, subscription.version, subscription.group, application,
                                  pid, timestamp)
    parameters.update({"category": "consumers", "check": "false", "side": "consumer"})
    return DubboURL("consumer", host, 0, subscription.interface, parameters)


def zookeeperNodes(entry, root, host, port, application, pid, timestamp, anyhost=False):
    """
    [(node path, URL)] of a ZooKeeperPublishConfig: a provider node per service, a consumer node per subscription.
    """
    base = root.rstrip("/")
    nodes = []
    for service in entry.services:
        url = providerURL(service, host, port, service.application or application, pid, timestamp, anyhost)
        nodes.append(("%s/%s/providers/%s" % (base, service.interface, url.encode()), url))
    for subscription in entry.subscribe:
        url = consumerURL(subscription, host, application, pid, timestamp)
        nodes.append(("%s/%s/consumers/%s" % (base, subscription.interface, url.encode()), url))
    return nodes


def etcdKeyValue(entry, host, port):
    """The (key str, value bytes) of an EtcdPublishConfig, its {address}/{host}/{port} filled in."""
    address = "[%s]:%d" % (host, port) if ":" in host else "%s:%d" % (host, port)
    fields = {"address": address, "host": host, "port": port}
    key = entry.key.format(**fields)
    if entry.value is not None:
        value = entry.value.format(**fields)
    else:
        # the shape the etcd discovery source reads (txmesh.discovery.etcd_source.parseEntry)
        doc = {"address": address}
        if entry.metadata:
            doc["metadata"] = dict(entry.metadata)
        value = json.dumps(doc, sort_keys=True)
    return key, value.encode("utf-8")


@implementer(IRegistrar)
class ZooKeeperRegistrar:
    """
    Dubbo registry nodes in one ZooKeeper registry, kept as ephemeral nodes by the shared session (created again
    after a session expiry; gone with the session if txmesh dies).

    @param session: the registry's IZooKeeperSession.
    @param nodes: [(path, DubboURL)] (L{zookeeperNodes}).
    """

    def __init__(self, session, nodes):
        self.session = session
        self.nodes = tuple(nodes)
        self.published = False

    def register(self):
        self.published = True
        return defer.gatherResults([self.session.ensureEphemeral(path) for path, _ in self.nodes],
                                   consumeErrors=True)

    def deregister(self):
        self.published = False
        return defer.gatherResults([self.session.removeEphemeral(path) for path, _ in self.nodes],
                                   consumeErrors=True)

    def describe(self):
        return {"type": "zookeeper", "registry": self.session.config.name, "published": self.published,
                "connected": self.session.connected, "urls": [url.format() for _, url in self.nodes],
                "paths": [path for path, _ in self.nodes]}


class _Published:
    """The manager's view of one registrar: what it wants of it, and how the last call went."""

    def __init__(self, name, registrar, scope):
        self.name = name
        self.registrar = registrar
        self.wanted = False
        self.state = "withdrawn"  # registering, registered, withdrawing, withdrawn, failed
        self.lastError = None
        self.retry = None
        self.registered = scope.counter("registration_registered", help="Registrations of the local app made.")
        self.withdrawn = scope.counter("registration_withdrawn", help="Registrations of the local app withdrawn.")
        self.errors = scope.counter("registration_errors", help="Registration calls that failed (retried).")
        self.gauge = scope.gauge("registration_published", help="1 while the local app is published there.")


class RegistrationManager:
    """
    Keeps the local app's registrations published while it passes its health check.

    @param config: the txmesh.discovery_config.RegistrationConfig.
    @param reactor: an IReactorTime (and IReactorTCP for the real checkers).
    @param registrars: [(registry name, IRegistrar)].
    @param stats: the StatsStore (``registration_*`` series, labelled registry=name).
    @param address: the "host:port" published (the inbound listener's, as callers dial it), for logs and describe.
    @param random: a random.Random for the check's jitter.
    @param checker: the local app's IHealthChecker (default: made by the configured checker factory).
    @ivar retryDelay: seconds before a failed register or deregister call is tried again.
    @ivar withdrawTimeout: on drain, how long withdrawing may take before the grace starts anyway.
    """

    log = Logger()
    retryDelay = 5.0
    withdrawTimeout = 5.0

    def __init__(self, config, reactor, registrars, stats, address, random=None, checker=None):
        self.config = config
        self.clock = reactor
        self.address = address
        self.draining = False
        self.healthy = False
        self.held = False  # the operator's POST /healthcheck/fail: withdrawn whatever the app's health
        self.host = Host(config.appHost, config.appPort, healthy=True)
        check = config.healthCheck
        if checker is None:
            checker = check.factory.makeChecker(check.checkerConfig, self.host, reactor)
        # registration_health_check_*: the check's series; its ``healthy`` gauge is 1 while the app passes
        self.stats = HealthCheckStats(stats.scope(), prefix="registration_")
        self.session = HealthCheckSession(self.host, check, checker, reactor, random or _random.Random(), self.stats,
                                          self._healthChanged, firstCheckDecides=False)
        self.entries = [_Published(name, r, stats.scope(registry=name)) for name, r in registrars]

    def start(self):
        """Start checking the local app; it is registered once healthy."""
        self.log.info("registration: publishing {address} (listener {listener}) once the local app {app} passes "
                      "its {type} check", address=self.address, listener=self.config.listener,
                      app=self.host.address, type=self.config.healthCheck.type)
        self.session.start()

    def _healthChanged(self):
        healthy = not self.host.healthFlags & HealthFlag.FAILED_ACTIVE_HC
        if healthy == self.healthy:
            return
        self.healthy = healthy
        self.stats.health_check_healthy.value = int(healthy)
        if self.draining:
            return
        if healthy:
            self.log.info("registration: the local app {app} is healthy; registering {address} in {registries}",
                          app=self.host.address, address=self.address, registries=self._names())
        else:
            reason = self.session.lastCheck[1].reason if self.session.lastCheck else ""
            self.log.warn("registration: the local app {app} fails its health check ({reason}); withdrawing "
                          "{address} from {registries}", app=self.host.address, reason=reason or "-",
                          address=self.address, registries=self._names())
        for entry in self.entries:
            self._want(entry, healthy and not self.held)

    def hold(self, held):
        """
        The operator's ``POST /healthcheck/fail`` (``held`` true) and ``POST /healthcheck/ok``: while held every
        registration is withdrawn, whatever the local app's health; released, it is registered again if the app
        passes its check.  The check keeps running meanwhile.
        """
        if held == self.held:
            return
        self.held = held
        if self.draining:
            return
        self.log.info("registration: {what} {address} in {registries} (admin healthcheck {state})",
                      what="withdrawing" if held else ("registering" if self.healthy else "not yet registering"),
                      address=self.address, registries=self._names(), state="fail" if held else "ok")
        for entry in self.entries:
            self._want(entry, self.healthy and not held)

    def _names(self):
        return ", ".join(e.name for e in self.entries)

    def _want(self, entry, wanted):
        if entry.retry is not None and entry.retry.active():
            entry.retry.cancel()
        entry.retry = None
        if entry.wanted == wanted and entry.state != "failed":
            return None  # idempotent
        entry.wanted = wanted
        return self._call(entry)

    def _call(self, entry):
        wanted = entry.wanted
        entry.state = "registering" if wanted else "withdrawing"
        d = defer.maybeDeferred(entry.registrar.register if wanted else entry.registrar.deregister)
        d.addCallbacks(self._called, self._callFailed, callbackArgs=(entry, wanted), errbackArgs=(entry, wanted))
        return d

    def _called(self, _, entry, wanted):
        if entry.wanted != wanted:
            return  # overtaken by the other call, which settles the state
        entry.state = "registered" if wanted else "withdrawn"
        entry.gauge.value = int(wanted)
        (entry.registered if wanted else entry.withdrawn).value += 1
        if entry.lastError is not None:
            self.log.info("registration in {name}: {what} after an error", name=entry.name,
                          what="registered" if wanted else "withdrawn")
        entry.lastError = None

    def _callFailed(self, failure, entry, wanted):
        entry.errors.value += 1
        if entry.wanted != wanted:
            return
        reason = failure.getErrorMessage() or failure.type.__name__
        if entry.lastError is None:  # log once per change
            self.log.error("registration in {name}: {what} failed ({reason}); retrying every {delay}s",
                           name=entry.name, what="register" if wanted else "deregister", reason=reason,
                           delay=self.retryDelay)
        entry.lastError = reason
        entry.state = "failed"
        if not self.draining or not wanted:
            entry.retry = self.clock.callLater(self.retryDelay, self._retry, entry)

    def _retry(self, entry):
        entry.retry = None
        if entry.state == "failed":
            self._call(entry)

    @defer.inlineCallbacks
    def drain(self):
        """
        Withdraw every registration first (bounded by ``withdrawTimeout``), then wait ``drain_grace`` so callers'
        registries notice, before the service stops accepting.  No grace when nothing was published.
        @return: a Deferred fired when the listeners may close.
        """
        if self.draining:
            return
        self.draining = True
        self.session.stop()
        published = [e for e in self.entries if e.wanted or e.state in ("registered", "registering", "failed")]
        self._cancelRetries()
        if not published:
            return
        self.log.info("registration: draining; withdrawing {address} from {registries}, then waiting {grace}s",
                      address=self.address, registries=self._names(), grace=self.config.drainGrace)
        calls = [self._want(e, False) for e in published]
        withdrawing = defer.gatherResults([d for d in calls if d is not None], consumeErrors=True)
        withdrawing.addTimeout(self.withdrawTimeout, self.clock)
        try:
            yield withdrawing
        except defer.TimeoutError:
            self.log.warn("registration: withdrawing took over {t}s; draining anyway", t=self.withdrawTimeout)
        if self.config.drainGrace:
            yield task.deferLater(self.clock, self.config.drainGrace)

    def stop(self):
        """Stop the check and the retries (after ``drain``, or on a stop without drain)."""
        self.draining = True
        self.session.stop()
        self._cancelRetries()

    def _cancelRetries(self):
        for e in self.entries:
            if e.retry is not None and e.retry.active():
                e.retry.cancel()
            e.retry = None

    def describe(self):
        """A JSON-able dict for the admin API's ``/registrations``: what is published where, and the app's health."""
        return {
            "listener": self.config.listener,
            "address": self.address,
            "draining": self.draining,
            "held": self.held,
            "drain_grace": self.config.drainGrace,
            "local_app": {"address": self.host.address, "healthy": self.healthy, "check": self.session.describe()},
            "registries": [dict(e.registrar.describe(), name=e.name, state=e.state, last_error=e.lastError)
                           for e in self.entries],
        }


def makeRegistration(config, reactor, registries, stats, port, node, random=None, nodeAddress=firstNonLoopbackIPv4,
                     pid=None):
    """
    The RegistrationManager of a ``registration`` config, once its listener is bound.

    @param registries: the service's txmesh.discovery.registries.RegistryClients (sessions shared with discovery).
    @param port: the port the inbound listener is bound to.
    @param node: the txmesh.config.NodeConfig (the default Dubbo ``application``: its cluster, else its id).
    """
    host = advertisedHost(config, nodeAddress)
    pid = os.getpid() if pid is None else pid
    timestamp = int(reactor.seconds() * 1000)
    address = "[%s]:%d" % (host, port) if ":" in host else "%s:%d" % (host, port)
    anyhost = config.listenerInterface in _WILDCARD
    registrars = []
    for entry in config.publish:
        client = registries.get(entry.registry)
        if entry.type == "zookeeper":
            application = entry.application or node.cluster or node.id
            nodes = zookeeperNodes(entry, client.config.root, host, port, application, pid, timestamp, anyhost)
            registrars.append((entry.registry, ZooKeeperRegistrar(client, nodes)))
        else:
            key, value = etcdKeyValue(entry, host, port)
            registrars.append((entry.registry, EtcdRegistrar(client, key, value, entry.ttl)))
    return RegistrationManager(config, reactor, registrars, stats, address, random)
