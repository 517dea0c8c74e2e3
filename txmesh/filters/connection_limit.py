"""
The ``connection_limit`` network filter (Envoy's envoy.filters.network.connection_limit): at most
``max_connections`` open connections per listener; a connection past it is refused (closed, after ``delay`` if
set, with nothing read or written) and counted.

config: ``max_connections`` (int >= 1, required), ``delay`` (a duration, default 0: close at once).  Stats,
labelled ``listener``: ``connection_limit_active_connections`` (gauge: connections this filter let through and
still open; it is also the count the limit is checked against) and ``connection_limit_limited_connections``
(counter: connections refused).
"""

from dataclasses import dataclass

from twisted.plugin import IPlugin
from zope.interface import implementer

from txmesh.config_reader import checkFilterKeys, parseDuration
from txmesh.interfaces import FilterStatus, IFilterFactory, IReadFilter

_KEYS = ("max_connections", "delay")


@dataclass(frozen=True, slots=True)
class ConnectionLimitConfig:
    maxConnections: int
    delay: float = 0.0


@implementer(IReadFilter)
class ConnectionLimitFilter:
    """One connection's instance: counts itself in, or refuses the connection."""

    __slots__ = ("config", "runtime", "callbacks", "_active", "_delayed")

    def __init__(self, config, runtime):
        self.config = config
        self.runtime = runtime
        self.callbacks = None
        self._active = None  # the gauge this connection is counted in, once let through
        self._delayed = None

    def initializeReadFilterCallbacks(self, callbacks):
        self.callbacks = callbacks

    def connectionMade(self):
        connection = self.callbacks.connection
        labels = (("listener", connection.listenerName),)
        stats = self.runtime.stats
        active = stats.gauge("connection_limit_active_connections", labels,
                             "Connections open under a connection_limit filter")
        if active.value < self.config.maxConnections:
            active.value += 1
            self._active = active
            return FilterStatus.CONTINUE
        stats.counter("connection_limit_limited_connections", labels,
                      "Connections refused by a connection_limit filter").inc()
        if self.config.delay:
            # the chain holds the connection (not reading) until the timer closes it
            self._delayed = self.runtime.clock.callLater(self.config.delay, connection.close)
        else:
            connection.close()
        return FilterStatus.STOP

    def dataReceived(self, data):
        return FilterStatus.CONTINUE

    def connectionLost(self, reason):
        if self._active is not None:
            self._active.value -= 1
            self._active = None
        if self._delayed is not None and self._delayed.active():
            self._delayed.cancel()
        self._delayed = None


@implementer(IFilterFactory, IPlugin)
class ConnectionLimitFactory:
    """The ``connection_limit`` network filter kind; see the module docstring."""

    name = "connection_limit"
    kind = "network"
    protocols = frozenset({"http", "grpc", "dubbo"})
    terminal = False

    def buildConfig(self, raw, context):
        """
        @raise txmesh.errors.ConfigError: for an unknown key, a missing or bad ``max_connections``, a bad ``delay``.
        """
        checkFilterKeys(raw, _KEYS, context)
        limit = raw.get("max_connections")
        if type(limit) is not int or limit < 1:
            raise context.error("must be an integer >= 1 (required)", "max_connections")
        delay = raw.get("delay")
        try:
            delay = 0.0 if delay is None else parseDuration(delay)
        except ValueError as e:
            raise context.error(str(e), "delay") from None
        return ConnectionLimitConfig(limit, delay)

    def createFilters(self, config, callbacks, runtime):
        callbacks.addReadFilter(ConnectionLimitFilter(config, runtime))

