"""
Active health checking: the scheduler that runs a cluster's health check on each of its hosts, with Envoy's
semantics (HealthCheckerImplBase), whatever the kind of check.

Each host gets a L{HealthCheckSession} holding an L{IHealthChecker} made by the configured
L{IHealthCheckerFactory} (the tcp and http ones are in txmesh.upstream.health_checkers, gRPC and Dubbo in their
protocol packages).  A session checks every ``interval`` (``unhealthy_interval`` while the host is unhealthy,
``no_traffic_interval`` while it never had a request, when set) plus jitter, bounds each check by ``timeout``, and
turns the results into ``HealthFlag.FAILED_ACTIVE_HC`` on the host:

- a host that answered wrongly (bad status, NOT_SERVING, unexpected bytes) or refused the connection fails at
  once (Envoy: an active failure ignores ``unhealthy_threshold``; txmesh fails fast on a refused connect too);
- other network failures and timeouts count: ``unhealthy_threshold`` of them in a row fail the host;
- a failed host comes back after ``healthy_threshold`` passes in a row;
- a new host starts failed and pending (Envoy's FAILED_ACTIVE_HC | PENDING_ACTIVE_HC) and its first check decides:
  one pass makes it healthy at once, as in Envoy.

See docs/resilience.md, "Active health checks".
"""

import dataclasses
import enum
import ipaddress

from twisted.internet import defer
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.protocol import Protocol
from twisted.logger import Logger

from txmesh.upstream.host import HealthFlag

_FAILED = HealthFlag.FAILED_ACTIVE_HC
_PENDING = HealthFlag.PENDING_ACTIVE_HC


class CheckOutcome(enum.Enum):
    """What one check came to."""

    PASSED = "passed"
    FAILED = "failed"  # the host answered, wrongly: fails the host at once (Envoy's active failure)
    REFUSED = "refused"  # connection refused: fails the host at once (fail fast)
    NETWORK = "network"  # connect timeout, reset, closed or undecodable answer: counts toward unhealthy_threshold
    TIMEOUT = "timeout"  # no answer within the check's timeout: counts toward unhealthy_threshold


@dataclasses.dataclass(frozen=True, slots=True)
class CheckResult:
    """One check's outcome and, for a failure, why (shown by /clusters)."""

    outcome: CheckOutcome
    reason: str = ""

    @property
    def passed(self):
        return self.outcome is CheckOutcome.PASSED


PASSED = CheckResult(CheckOutcome.PASSED)


def failed(reason):
    return CheckResult(CheckOutcome.FAILED, reason)


def networkFailure(failure):
    """The CheckResult of a failed connect or exchange: REFUSED for a refused connect, else NETWORK."""
    if failure.check(ConnectionRefusedError):
        return CheckResult(CheckOutcome.REFUSED, "connection refused")
    return CheckResult(CheckOutcome.NETWORK, failure.getErrorMessage() or failure.type.__name__)


def clientEndpoint(reactor, hostname, port, timeout):
    """A client endpoint to hostname:port (an IP literal connects directly, a name is resolved) on ``reactor``."""
    try:
        ip = ipaddress.ip_address(hostname)
    except ValueError:
        return HostnameEndpoint(reactor, hostname, port, timeout=timeout)
    if ip.version == 4:
        return TCP4ClientEndpoint(reactor, hostname, port, timeout=timeout)
    return TCP6ClientEndpoint(reactor, hostname, port, timeout=timeout)


# the connect timeout of a check's own connection: only a backstop, the scheduler cancels a check at its timeout
CONNECT_BACKSTOP = 60


def probeHost(reactor, host, protocol, exchange):
    """
    Connect ``protocol`` to ``host`` on a connection of the check's own, run ``exchange(protocol) ->
    Deferred[CheckResult]`` once connected, then close the connection.

    @return: a Deferred[CheckResult]: a failed connect is REFUSED or NETWORK; cancelling it aborts the connect or
        the connection.
    """
    state = {"proto": None}

    def cancel(_):
        connecting.cancel()
        proto = state["proto"]
        if proto is not None and proto.transport is not None:
            proto.transport.abortConnection()

    result = defer.Deferred(cancel)

    def fire(checkResult):
        if not result.called:
            result.callback(checkResult)
        proto = state["proto"]
        if proto is not None and proto.transport is not None:
            proto.transport.loseConnection()

    def connected(proto):
        state["proto"] = proto
        d = exchange(proto)
        d.addCallback(fire)
        d.addErrback(lambda f: fire(networkFailure(f)))

    def connectFailed(failure):
        if not failure.check(defer.CancelledError):
            fire(networkFailure(failure))

    connecting = connectProtocol(clientEndpoint(reactor, host.hostname, host.port, CONNECT_BACKSTOP),
                                 protocol)
    connecting.addCallbacks(connected, connectFailed)
    return result


class ProbeProtocol(Protocol):
    """The base of a check's client protocol: ``finished`` fires once with the check's CheckResult."""

    lostReason = "connection closed before the answer"

    def __init__(self):
        self.finished = defer.Deferred()

    def connectionLost(self, reason):
        self.finish(CheckResult(CheckOutcome.NETWORK, self.lostReason))

    def finish(self, result):
        if not self.finished.called:
            self.finished.callback(result)


class ProbeChecker:
    """
    The base of checkers that run one exchange per check on a connection of their own (tcp, grpc, dubbo):
    subclasses say which protocol to connect (``makeProtocol``) and what to do once connected (``exchange``).
    """

    def __init__(self, config, host, reactor):
        self.config = config
        self.host = host
        self.reactor = reactor

    def check(self):
        return probeHost(self.reactor, self.host, self.makeProtocol(), self.exchange)

    def makeProtocol(self):
        """A new client protocol for one check's connection."""
        raise NotImplementedError()

    def exchange(self, proto):
        """``proto`` is connected: a Deferred[CheckResult] of the check (default: ``proto.finished``)."""
        return proto.finished


# (name, kind, help): the cluster's health-check series, Envoy's cluster.<name>.health_check.* names
HEALTH_CHECK_STATS = (
    ("health_check_attempt", "counter", "Health checks started."),
    ("health_check_success", "counter", "Health checks that passed."),
    ("health_check_failure", "counter", "Health checks that failed (network failures and timeouts included)."),
    ("health_check_network_failure", "counter",
     "Health checks that failed on the network: refused or failed connect, reset, timeout."),
    ("health_check_timeout", "counter", "Health checks that got no answer within their timeout."),
    ("health_check_healthy", "gauge", "Hosts of the cluster that pass their active health check."),
)


class HealthCheckStats:
    """The health-check series of one cluster, on its scope (labelled cluster=name)."""

    def __init__(self, scope, prefix=""):
        # prefix: "registration_" for the local app's check (txmesh.discovery.registration), whose series have no
        # cluster label
        for name, kind, help in HEALTH_CHECK_STATS:
            make = scope.counter if kind == "counter" else scope.gauge
            setattr(self, name, make(prefix + name, help=help))


class HealthCheckSession:
    """
    The active health check of one host: its checker, its timers and its consecutive counts.

    @param config: the txmesh.config.HealthCheckConfig.
    @param checker: the host's IHealthChecker.
    @param clock: an IReactorTime.
    @param random: a random.Random (jitter).
    @param stats: the cluster's L{HealthCheckStats}.
    @param changed: called with no argument when the host's FAILED_ACTIVE_HC flag changed.
    @param firstCheckDecides: True (Envoy's rule for a new host): one pass on the first check makes it healthy;
        False: it needs ``healthy_threshold`` passes like any failed host (the local app's registration).
    """

    log = Logger()

    def __init__(self, host, config, checker, clock, random, stats, changed, firstCheckDecides=True):
        self.host = host
        self.firstCheckDecides = firstCheckDecides
        self.config = config
        self.checker = checker
        self.clock = clock
        self.random = random
        self.stats = stats
        self._changed = changed
        self.consecutivePasses = 0
        self.consecutiveFailures = 0
        self.lastCheck = None  # (time, CheckResult)
        self._firstCheck = True
        self._timer = None
        self._timeoutTimer = None
        self._inflight = None
        self._stopped = False
        host.setHealthFlag(_FAILED | _PENDING)

    def start(self):
        """Schedule the first check, after a random part of ``initial_jitter``."""
        self._stopped = False
        initial = self.config.initialJitter
        self._schedule(self.random.uniform(0, initial) if initial else 0.0)

    def stop(self):
        """Cancel the timers and any check in flight; the host keeps its flags."""
        self._stopped = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        d, self._inflight = self._inflight, None
        if d is not None:
            d.cancel()
        self._cancelTimeout()

    def _schedule(self, delay):
        self._timer = self.clock.callLater(delay, self._run)

    def nextInterval(self):
        """The wait before the next check: the base interval for the host's state, plus jitter (Envoy's rules)."""
        c = self.config
        if c.noTrafficInterval and not self.host.stats.rq_total.value:
            base = c.noTrafficInterval
        elif self.host.healthFlags & _FAILED:
            base = c.unhealthyInterval
        else:
            base = c.interval
        jitter = 0.0
        if c.intervalJitter:
            jitter += self.random.uniform(0, c.intervalJitter)
        if c.intervalJitterPercent:
            jitter += self.random.uniform(0, base * c.intervalJitterPercent / 100.0)
        return base + jitter

    def _run(self):
        self._timer = None
        self.stats.health_check_attempt.value += 1
        try:
            d = self.checker.check()
        except Exception:
            self.log.failure("health checker {checker!r} raised", checker=self.checker)
            d = defer.succeed(CheckResult(CheckOutcome.NETWORK, "checker error"))
        self._inflight = d
        self._timeoutTimer = self.clock.callLater(self.config.timeout, self._timedOut, d)
        d.addCallbacks(self._checked, self._checkFailed, callbackArgs=(d,), errbackArgs=(d,))

    def _timedOut(self, d):
        self._timeoutTimer = None
        if self._inflight is d:
            self._inflight = None
            d.cancel()  # the checker closes its connection; its result (CancelledError) is ignored below
            self._record(CheckResult(CheckOutcome.TIMEOUT, "no answer within %gs" % (self.config.timeout,)))

    def _cancelTimeout(self):
        t, self._timeoutTimer = self._timeoutTimer, None
        if t is not None and t.active():
            t.cancel()

    def _checkFailed(self, failure, d):
        if failure.check(defer.CancelledError):
            return None  # timed out or stopped: already handled
        self.log.failure("health check of {host} failed unexpectedly", failure, host=self.host.address)
        return self._checked(CheckResult(CheckOutcome.NETWORK, failure.getErrorMessage()), d)

    def _checked(self, result, d):
        if self._inflight is not d:
            return None  # timed out or stopped meanwhile
        self._inflight = None
        self._cancelTimeout()
        self._record(result)

    def _record(self, result):
        stats = self.stats
        host = self.host
        self.lastCheck = (self.clock.seconds(), result)
        wasFailed = bool(host.healthFlags & _FAILED)
        flags = _FAILED if wasFailed else 0
        if result.passed:
            stats.health_check_success.value += 1
            self.consecutiveFailures = 0
            self.consecutivePasses += 1
            if wasFailed and ((self._firstCheck and self.firstCheckDecides)
                              or self.consecutivePasses >= self.config.healthyThreshold):
                flags &= ~_FAILED
        else:
            stats.health_check_failure.value += 1
            outcome = result.outcome
            if outcome is CheckOutcome.TIMEOUT:
                stats.health_check_timeout.value += 1
            if outcome is not CheckOutcome.FAILED:
                stats.health_check_network_failure.value += 1
            self.consecutivePasses = 0
            self.consecutiveFailures += 1
            if not wasFailed and (outcome in (CheckOutcome.FAILED, CheckOutcome.REFUSED)
                                  or self.consecutiveFailures >= self.config.unhealthyThreshold):
                flags |= _FAILED
        self._firstCheck = False
        nowFailed = bool(flags & _FAILED)
        if nowFailed and not wasFailed:
            host.setHealthFlag(_FAILED)
        elif wasFailed and not nowFailed:
            host.clearHealthFlag(_FAILED)
        if host.healthFlags & _PENDING:
            host.clearHealthFlag(_PENDING)
        if nowFailed != wasFailed:
            self.log.info("{host} is now {state} by its active health check ({outcome}: {reason})",
                          host=host.address, state="unhealthy" if nowFailed else "healthy",
                          outcome=result.outcome.value, reason=result.reason or "-")
            self._changed()
        if not self._stopped:
            self._schedule(self.nextInterval())

    def describe(self):
        """A JSON-able dict of the last check and the consecutive counts, for /clusters."""
        last = None
        if self.lastCheck is not None:
            t, result = self.lastCheck
            last = {"time": t, "result": result.outcome.value, "reason": result.reason}
        return {"type": self.config.type, "last_check": last, "consecutive_passes": self.consecutivePasses,
                "consecutive_failures": self.consecutiveFailures}


class ClusterHealthChecker:
    """
    The active health check of one cluster: a session per host, following the host set.

    @param config: the cluster's txmesh.config.HealthCheckConfig.
    @param reactor: an IReactorTCP and IReactorTime: checks connect with it and run on its clock.
    @param random: a random.Random for the jitter.
    @param scope: the cluster's txmesh.stats.Scope.
    @param upstreamTLS: the cluster's IUpstreamTLS (its ``tls`` block), or None: with it, each host's checker gets
        a reactor whose TCP connects are the cluster's verified TLS connects (txmesh.tls.client.TLSConnectingReactor).
    """

    def __init__(self, config, reactor, random, scope, upstreamTLS=None):
        self.config = config
        self.reactor = reactor
        self.upstreamTLS = upstreamTLS
        self.random = random
        self.stats = HealthCheckStats(scope)
        self.sessions = {}  # IHost -> HealthCheckSession
        self.running = False

    def setHosts(self, hosts):
        """Follow the cluster's host set: new hosts get a session (started if running), removed ones lose theirs."""
        current = set(hosts)
        for host in [h for h in self.sessions if h not in current]:
            self.sessions.pop(host).stop()
        for host in hosts:
            if host not in self.sessions:
                reactor = self.reactor if self.upstreamTLS is None else self.upstreamTLS.reactorFor(self.reactor, host)
                checker = self.config.factory.makeChecker(self.config.checkerConfig, host, reactor)
                session = HealthCheckSession(host, self.config, checker, self.reactor, self.random, self.stats,
                                             self._changed)
                self.sessions[host] = session
                if self.running:
                    session.start()
        self._changed()

    def start(self):
        """Start checking every host."""
        if not self.running:
            self.running = True
            for session in list(self.sessions.values()):
                session.start()

    def stop(self):
        """Stop every check (drain, shutdown); checks in flight are cancelled, closing their connections."""
        self.running = False
        for session in self.sessions.values():
            session.stop()

    def _changed(self):
        self.stats.health_check_healthy.value = sum(
            1 for h in self.sessions if not h.healthFlags & _FAILED)

    def describeHost(self, host):
        """The host's health-check dict for /clusters, or None if it has no session."""
        session = self.sessions.get(host)
        return session.describe() if session is not None else None
