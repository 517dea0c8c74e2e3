"""
Overload protection for the whole process (Envoy's overload manager in spirit): what every listener asks before it
takes a connection, and what watches the process.

- L{Overload}: the global connection count and limit (``overload.max_connections``, Envoy's
  ``global_downstream_max_connections``) and the memory monitor: every ``memory_check_interval`` it reads the
  process RSS; at or above ``memory_high_watermark`` new connections are refused and idle keep-alive connections
  closed (each listener factory's ``closeIdleConnections``), until the RSS falls to ``memory_low_watermark``.
  Listener factories ask L{Overload.refusal} in ``buildProtocol`` (per connection, never per request).
- L{AcceptBackoff}: a listening port that cannot accept (out of file descriptors or kernel memory) stops reading
  for a short, growing delay instead of spinning in Twisted's accept loop.
- L{LogOncePer}: a warning logged at most once per interval per key, with the number of events it stands for.
- L{StatmReader}: the process RSS from ``/proc/self/statm``, the default reader the service injects.
"""

import errno
import os

from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.logger import Logger
from zope.interface import implementer

from txmesh.config import OverloadConfig
from txmesh.stats import StatsStore
from txmesh.twisted_private import watchAcceptErrors

# accept() errors that mean "the process or the system is out of a resource", not "this client went away"
RESOURCE_ERRORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})

# why a connection was refused, as buildProtocol reports it
LISTENER_LIMIT = "listener_max_connections"
GLOBAL_LIMIT = "global_max_connections"
MEMORY = "memory_pressure"


class LogOncePer:
    """
    Log a warning at most once per ``interval`` seconds of ``clock`` per key; the events in between are counted and
    reported (``n``) by the next line logged for that key.  Counters carry the exact numbers; this keeps a flood of
    refusals from becoming a flood of log lines.
    """

    def __init__(self, clock, log, interval=10.0):
        self.clock = clock
        self.log = log
        self.interval = interval
        self._last = {}  # key -> [time of the last line, events since]

    def warn(self, key, fmt, **kw):
        now = self.clock.seconds()
        entry = self._last.get(key)
        if entry is None:
            entry = self._last[key] = [None, 0]
        entry[1] += 1
        if entry[0] is not None and now - entry[0] < self.interval:
            return
        n, entry[0], entry[1] = entry[1], now, 0
        self.log.warn(fmt, n=n, interval=self.interval, **kw)


class StatmReader:
    """
    The process's resident set size in bytes, read from ``/proc/self/statm`` (its second field, in pages).  The file
    stays open and is re-read with ``pread``, so reading needs no new file descriptor: it works when the process is
    out of them, which is when it matters.

    @raise OSError: when the file cannot be opened or read (not Linux).
    """

    def __init__(self, path="/proc/self/statm", pageSize=None):
        self.path = path
        self.pageSize = pageSize if pageSize is not None else os.sysconf("SC_PAGE_SIZE")
        self._fd = None

    def __call__(self):
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        return int(os.pread(self._fd, 256, 0).split()[1]) * self.pageSize

    def close(self):
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class Overload:
    """
    The process-wide overload state one config gives (see the module docstring).

    @param config: the L{OverloadConfig} (None: no bounds).
    @param clock: the IReactorTime the memory checks run on.
    @param stats: the StatsStore.
    @param readRSS: ``readRSS() -> bytes`` (raising OSError when it cannot tell); only used with a memory mark.
    @ivar memoryPressure: True from the check that saw the RSS at or above the high mark to the one that saw it at
        or below the low mark.
    """

    log = Logger()

    def __init__(self, config, clock, stats=None, readRSS=None):
        self.config = config if config is not None else OverloadConfig()
        self.clock = clock
        self.maxConnections = self.config.maxConnections
        self.memoryPressure = False
        self.listenerFactories = []
        self._readRSS = readRSS
        self._timer = None
        self._readFailed = False
        self.logOnce = LogOncePer(clock, self.log)
        stats = stats if stats is not None else StatsStore()
        self._stats = stats
        self.active = stats.gauge("overload_downstream_cx_active", help="Downstream connections open, all listeners")
        self.pressureGauge = stats.gauge("overload_memory_pressure",
                                         help="1 while the RSS is above the memory high-water mark")
        self.rssGauge = stats.gauge("overload_memory_rss_bytes", help="The process RSS at the last check")
        self.pressureEntered = stats.counter("overload_memory_pressure_entered",
                                             help="Times the RSS reached the memory high-water mark")

    # -- connections (per connection, from the listener base) ------------------------------------------------

    def refusal(self, listenerOpen, listenerLimit):
        """
        Why a new connection must be refused, or None to take it.

        @param listenerOpen: connections open on the listener asking.
        @param listenerLimit: the listener's ``limits.max_connections`` (0: none).
        @return: L{MEMORY}, L{GLOBAL_LIMIT}, L{LISTENER_LIMIT} or None.
        """
        if self.memoryPressure:
            return MEMORY
        if self.maxConnections and self.active.value >= self.maxConnections:
            return GLOBAL_LIMIT
        if listenerLimit and listenerOpen >= listenerLimit:
            return LISTENER_LIMIT
        return None

    def connectionOpened(self):
        self.active.value += 1

    def connectionClosed(self):
        self.active.value -= 1

    # -- the memory monitor ---------------------------------------------------------------------------------------

    def watch(self, factory):
        """Close ``factory``'s idle connections (an IListenerFactory) while under memory pressure."""
        self.listenerFactories.append(factory)

    def unwatch(self, factory):
        """Forget ``factory`` (a listener removed or replaced by a reload)."""
        if factory in self.listenerFactories:
            self.listenerFactories.remove(factory)

    def start(self):
        """Start the memory checks (if a high-water mark is configured); the first runs now."""
        if self.config.memoryHighWatermark and self._timer is None and self._readRSS is not None:
            self.check()

    def stop(self):
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None

    def check(self):
        """Read the RSS once, change state at the marks (logged once per change), and schedule the next check."""
        self._timer = self.clock.callLater(self.config.memoryCheckInterval, self.check)
        try:
            rss = self._readRSS()
        except (OSError, ValueError, IndexError) as e:
            if not self._readFailed:
                self._readFailed = True
                self.log.error("overload: cannot read the process RSS ({e}); the memory state stays as it was", e=e)
            return
        if self._readFailed:
            self._readFailed = False
            self.log.info("overload: reading the process RSS again")
        self.rssGauge.value = rss
        c = self.config
        if not self.memoryPressure and rss >= c.memoryHighWatermark:
            self.memoryPressure = True
            self.pressureGauge.value = 1
            self.pressureEntered.value += 1
            self.log.warn("overload: RSS {rss} bytes reached the high-water mark ({high}): refusing new connections "
                          "and closing idle ones until it falls to {low}", rss=rss, high=c.memoryHighWatermark,
                          low=c.memoryLowWatermark)
        elif self.memoryPressure and rss <= c.memoryLowWatermark:
            self.memoryPressure = False
            self.pressureGauge.value = 0
            self.log.warn("overload: RSS {rss} bytes fell to the low-water mark ({low}): accepting connections again",
                          rss=rss, low=c.memoryLowWatermark)
        if self.memoryPressure:
            # every check, not only the first: connections that finished their requests since are idle now
            for f in self.listenerFactories:
                closed = f.closeIdleConnections()
                if closed:
                    self._stats.counter("downstream_cx_overload_idle_closed", (("listener", f.listenerName),),
                                        "Idle connections closed under memory pressure").inc(closed)
                    self.logOnce.warn(("idle_closed", f.listenerName),
                                      "listener {l}: closed {closed} idle connection(s) under memory pressure "
                                      "({n} sweep(s) in the last {interval}s)", l=f.listenerName, closed=closed)


class AcceptBackoff:
    """
    One listener's accept backoff: when its port fails to accept for want of a resource (L{RESOURCE_ERRORS}), the
    port stops reading for ``initialDelay`` seconds, doubling on each failure up to ``maxDelay``, then reads
    again; after ``maxDelay`` * 2 without a failure the next pause starts from ``initialDelay`` again.  Twisted
    would otherwise call accept() in a tight loop (see L{txmesh.twisted_private.watchAcceptErrors}).  Counted in
    ``downstream_cx_accept_error{listener,error}`` and ``downstream_cx_accept_paused{listener}``; logged once per
    ``logOnce`` interval.
    """

    log = Logger()
    initialDelay = 0.01
    maxDelay = 1.0

    def __init__(self, clock, listenerName, stats, logOnce=None):
        self.clock = clock
        self.listenerName = listenerName
        self.ports = []
        self._scope = stats.scope(listener=listenerName)
        self._errors = {}
        self.paused = self._scope.counter("downstream_cx_accept_paused",
                                          help="Times the listener stopped accepting for lack of descriptors/memory")
        self._logOnce = logOnce if logOnce is not None else LogOncePer(clock, self.log)
        self._delay = self.initialDelay
        self._lastFailure = None
        self._timers = {}  # port -> DelayedCall resuming it

    def endpoint(self, endpoint):
        """An IStreamServerEndpoint listening like ``endpoint``, whose ports back off on accept failures."""
        return _WatchedEndpoint(endpoint, self)

    def watch(self, port):
        """Back ``port`` off on accept failures (an IListeningPort; ports other than Twisted's TCP/UNIX ones: no-op)."""
        if watchAcceptErrors(port, RESOURCE_ERRORS, lambda code: self.acceptFailed(port, code)):
            self.ports.append(port)
        else:
            self.log.info("listener {l}: its port kind {k} cannot back off on accept errors", l=self.listenerName,
                          k=type(port).__name__)
        return port

    def acceptFailed(self, port, code):
        name = errno.errorcode.get(code, str(code))
        counter = self._errors.get(name)
        if counter is None:
            counter = self._errors[name] = self._scope.counter(
                "downstream_cx_accept_error", help="accept() failures for lack of descriptors or memory", error=name)
        counter.value += 1
        if port in self._timers:
            return  # already paused: the rest of this read event's accepts
        now = self.clock.seconds()
        if self._lastFailure is None or now - self._lastFailure > 2 * self.maxDelay:
            self._delay = self.initialDelay
        self._lastFailure = now
        delay = self._delay
        self._delay = min(delay * 2, self.maxDelay)
        port.stopReading()
        self._timers[port] = self.clock.callLater(delay, self._resume, port)
        self.paused.value += 1
        self._logOnce.warn(("accept", self.listenerName),
                           "listener {l}: cannot accept connections ({error}); not accepting for {delay}s "
                           "({n} pause(s) in the last {interval}s)", l=self.listenerName, error=name, delay=delay)

    def _resume(self, port):
        del self._timers[port]
        if port.connected and not port.disconnecting:
            port.startReading()

    def stop(self):
        """Cancel pending resumes (the listener is stopping)."""
        timers, self._timers = self._timers, {}
        for t in timers.values():
            if t.active():
                t.cancel()


@implementer(IStreamServerEndpoint)
class _WatchedEndpoint:
    """An endpoint whose ports are handed to an L{AcceptBackoff} as they start listening."""

    def __init__(self, endpoint, backoff):
        self.wrapped = endpoint
        self.backoff = backoff

    def listen(self, factory):
        return self.wrapped.listen(factory).addCallback(self.backoff.watch)
