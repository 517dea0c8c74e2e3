"""
Overload protection (txmesh/overload.py and the listener base): connection limits per listener and across
listeners, the memory high-water mark, the accept backoff on EMFILE/ENFILE, and the write timeout of clients that
do not read.  In memory, on the clock; the accept backoff on a real listening port with a stand-in socket.
"""

import errno
import os

import pytest
from twisted.internet import tcp
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import Logger
from zope.interface.verify import verifyObject

from tests.h2wire import PREFACE, SETTINGS, rawFrame
from txmesh.config import loads
from txmesh.errors import ConfigError
from txmesh.interfaces import IListenerConnection, IListenerFactory
from txmesh.overload import AcceptBackoff, LogOncePer, Overload, StatmReader
from txmesh.service import MeshService
from txmesh.stats import StatsStore
from txmesh.testing import InMemoryMesh

CONFIG = """\
{overload}
clusters:
  - name: backend
    endpoints:
      - {{address: "10.0.0.1:80"}}
listeners:
  - name: web
    protocol: {protocol}
    address: tcp:15001
    default_cluster: {default}
    limits: {limits}
    route_config:
      virtual_hosts:
        - name: all
          domains: ["*"]
          routes:
            - match: {{prefix: /direct}}
              direct_response: {{status: 200, body: "ok"}}
            - match: {{prefix: /}}
              route: {{cluster: backend}}
"""


def config(overload="", protocol="http1", limits="{}"):
    default = "backend" if protocol == "dubbo" else "null"
    return CONFIG.format(overload=overload, protocol=protocol, limits=limits, default=default)


class RSS:
    """A settable process RSS (the injected reader)."""

    def __init__(self, value=0):
        self.value = value

    def __call__(self):
        if isinstance(self.value, Exception):
            raise self.value
        return self.value


def collectLogs(obj):
    """Replace ``obj``'s logger with one that records events; return the list."""
    events = []
    obj.log = Logger(observer=events.append)
    return events


def warnings(events):
    return [e for e in events if e["log_level"].name in ("warn", "error")]


# -- configuration ---------------------------------------------------------------------------------------------


def test_overload_block_and_limits_load():
    cfg = loads(config("overload: {max_connections: 100, memory_high_watermark: 1000000, "
                       "memory_check_interval: 250ms}", limits="{max_connections: 10, write_timeout: 5s}"))
    assert cfg.overload.maxConnections == 100
    assert cfg.overload.memoryHighWatermark == 1000000
    assert cfg.overload.memoryLowWatermark == 900000  # 90% of the high mark by default
    assert cfg.overload.memoryCheckInterval == 0.25
    limits = cfg.listeners[0].limits
    assert (limits.maxConnections, limits.writeTimeout) == (10, 5.0)


def test_defaults_bound_nothing_but_the_write_timeout():
    cfg = loads(config())
    assert (cfg.overload.maxConnections, cfg.overload.memoryHighWatermark) == (0, 0)
    assert (cfg.listeners[0].limits.maxConnections, cfg.listeners[0].limits.writeTimeout) == (0, 300.0)


@pytest.mark.parametrize("overload, limits, expected", [
    ("overload: {max_connections: -1}", "{}", "<string>:1: overload.max_connections: must be >= 0, got -1"),
    ("overload: {memory_low_watermark: 10}", "{}",
     "<string>:1: overload.memory_low_watermark: needs memory_high_watermark"),
    ("overload:\n  memory_high_watermark: 10\n  memory_low_watermark: 10", "{}",
     "<string>:3: overload.memory_low_watermark: must be below memory_high_watermark (10), got 10"),
    ("overload:\n  memory_high_watermark: 10\n  memory_check_interval: 0", "{}",
     "<string>:3: overload.memory_check_interval: must be between 10ms and 1h"),
    ("overload: {max_conns: 1}", "{}",
     "<string>:1: overload.max_conns: unknown key 'max_conns' (allowed: max_connections, memory_high_watermark, "
     "memory_low_watermark, memory_check_interval)"),
    ("", "{max_connections: -2}", "<string>:11: listeners[0].limits.max_connections: must be >= 0, got -2"),
    ("", "{write_timeout: soon}",
     "<string>:11: listeners[0].limits.write_timeout: invalid duration 'soon' (use e.g. 250ms, 1.5s, 2m, 1h)"),
])
def test_bad_keys_name_file_line_and_key_path(overload, limits, expected):
    with pytest.raises(ConfigError) as e:
        loads(config(overload, limits=limits))
    assert str(e.value) == expected


# -- connection limits -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["http1", "http2", "dubbo"])
def test_listener_limit_refuses_past_it_and_admits_again_when_one_closes(protocol):
    mesh = InMemoryMesh(config(protocol=protocol, limits="{max_connections: 2}"))
    a, b = mesh.connect(), mesh.connect()
    c = mesh.connect()
    assert (a.closed, b.closed, c.closed) == (False, False, True)
    assert c.protocol is None  # refused before any protocol was built
    assert mesh.value("downstream_cx_overflow", listener="web") == 1
    assert mesh.value("downstream_cx", listener="web") == 2
    a.disconnect()
    d = mesh.connect()
    assert not d.closed
    assert mesh.value("downstream_cx_overflow", listener="web") == 1


def test_global_limit_counts_every_listener():
    text = """\
overload: {max_connections: 2}
listeners:
  - {name: one, address: "tcp:0", route_config: {virtual_hosts: [{name: a, domains: ["*"]}]}}
  - {name: two, address: "tcp:0", protocol: dubbo}
"""
    svc = MeshService(loads(text), MemoryReactorClock(), installSignal=lambda *a: None)
    one, two = svc.listenerFactories

    def connect(factory):
        p = factory.buildProtocol(None)
        if p is not None:
            p.makeConnection(StringTransport())
        return p

    first, second = connect(one), connect(two)
    assert first is not None and second is not None
    assert connect(one) is None and connect(two) is None
    assert svc.stats.total("downstream_global_cx_overflow") == 2
    assert svc.stats.value("downstream_global_cx_overflow", listener="one") == 1
    assert svc.stats.value("overload_downstream_cx_active") == 2
    first.connectionLost(None)
    assert svc.stats.value("overload_downstream_cx_active") == 1
    assert connect(two) is not None


def test_refusals_are_logged_once_per_interval():
    mesh = InMemoryMesh(config(limits="{max_connections: 1, request_headers_timeout: 1h}"))
    events = collectLogs(mesh.overload.logOnce)
    mesh.connect()
    for _ in range(5):
        mesh.connect()
    assert len(warnings(events)) == 1
    mesh.advance(10)
    mesh.connect()
    [_, second] = warnings(events)
    assert second["n"] == 5  # the four held back and this one
    assert mesh.value("downstream_cx_overflow", listener="web") == 6


# -- memory high-water mark --------------------------------------------------------------------------------------


MEMORY = "overload: {memory_high_watermark: 1000, memory_low_watermark: 500, memory_check_interval: 1s}"


def test_memory_pressure_refuses_new_connections_and_closes_idle_ones_until_the_low_mark():
    rss = RSS(100)
    mesh = InMemoryMesh(config(MEMORY), readRSS=rss)
    events = collectLogs(mesh.overload)
    mesh.overload.start()
    idle, busy, fresh = mesh.connect(), mesh.connect(), mesh.connect()
    idle.request(path=b"/direct")
    assert idle.response().status == 200
    busy.request(path=b"/slow")  # the upstream does not answer: in flight
    assert idle.protocol.isIdle() and not busy.protocol.isIdle()
    assert not fresh.protocol.isIdle()  # no request yet: bounded by request_headers_timeout, not closed here

    rss.value = 1000
    mesh.advance(1)
    assert mesh.value("overload_memory_pressure") == 1
    assert idle.closed and not idle.aborted
    assert not busy.closed and not fresh.closed
    assert mesh.value("downstream_cx_overload_idle_closed", listener="web") == 1
    assert mesh.connect().closed
    assert mesh.value("downstream_cx_overload_reject", listener="web") == 1

    rss.value = 600  # between the marks: still under pressure
    mesh.advance(1)
    assert mesh.connect().closed
    assert mesh.value("overload_memory_rss_bytes") == 600

    rss.value = 500
    mesh.advance(1)
    assert mesh.value("overload_memory_pressure") == 0
    assert not mesh.connect().closed
    assert len(warnings(events)) == 2  # one per transition, not per check
    assert mesh.value("overload_memory_pressure_entered") == 1


def test_a_connection_that_finishes_its_request_under_pressure_is_closed_at_the_next_check():
    rss = RSS(5000)
    mesh = InMemoryMesh(config(MEMORY), readRSS=rss)
    upstream = mesh.upstream("backend")
    client = mesh.connect()
    client.request(path=b"/slow")
    mesh.overload.start()
    assert not client.closed
    upstream.unanswered[0].respond(200, body=b"done")
    mesh.runTurns()
    assert client.response().status == 200
    mesh.advance(1)
    assert client.closed


def test_an_unreadable_rss_is_logged_once_and_keeps_the_state():
    rss = RSS(OSError("no /proc"))
    mesh = InMemoryMesh(config(MEMORY), readRSS=rss)
    events = collectLogs(mesh.overload)
    mesh.overload.start()
    mesh.advance(1)
    mesh.advance(1)
    assert len(warnings(events)) == 1
    assert not mesh.connect().closed
    rss.value = 2000
    mesh.advance(1)
    assert mesh.connect().closed


def test_http2_idle_connection_gets_goaway_and_dubbo_idle_connection_is_closed():
    h2 = InMemoryMesh(config(protocol="http2"))
    client = h2.connect()
    client.send(PREFACE + rawFrame(SETTINGS, 0, 0))
    assert client.protocol.isIdle()
    assert h2.factory.closeIdleConnections() == 1
    h2.runTurns()
    assert client.closed
    assert rawFrame(7, 0, 0)[3:4] in client.received()  # a GOAWAY frame type went out

    dubbo = InMemoryMesh(config(protocol="dubbo"))
    call = dubbo.connect()
    assert call.protocol.isIdle()
    assert dubbo.factory.closeIdleConnections() == 1
    assert call.closed


@pytest.mark.parametrize("protocol", ["http1", "http2", "dubbo"])
def test_listener_protocols_and_factories_provide_the_contracts(protocol):
    mesh = InMemoryMesh(config(protocol=protocol))
    assert verifyObject(IListenerConnection, mesh.connect().protocol)
    assert verifyObject(IListenerFactory, mesh.factory)


def test_statm_reader_reads_resident_pages(tmp_path):
    statm = tmp_path / "statm"
    statm.write_text("5000 300 20 1 0 100 0\n")
    reader = StatmReader(str(statm), pageSize=4096)
    assert reader() == 300 * 4096
    statm.write_text("5000 301 20 1 0 100 0\n")
    assert reader() == 301 * 4096
    reader.close()


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs Linux /proc")
def test_statm_reader_reads_this_process():
    reader = StatmReader()
    assert reader() > 1 << 20
    reader.close()


# -- write timeout ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["http1", "http2", "dubbo"])
def test_a_client_that_does_not_read_is_dropped_after_the_write_timeout(protocol):
    mesh = InMemoryMesh(config(protocol=protocol, limits="{write_timeout: 5s}"))
    client = mesh.connect()
    client.fillWriteBuffer()
    mesh.advance(4.9)
    assert not client.closed
    mesh.advance(0.2)
    assert client.aborted
    assert mesh.value("downstream_cx_write_timeout", listener="web") == 1


def test_a_client_that_reads_again_in_time_is_kept():
    mesh = InMemoryMesh(config(limits="{write_timeout: 5s, request_headers_timeout: 1h}"))
    client = mesh.connect()
    client.fillWriteBuffer()
    mesh.advance(4)
    client.drainWriteBuffer()
    mesh.advance(10)
    assert not client.closed
    client.fillWriteBuffer()  # a new episode gets the whole timeout again
    mesh.advance(4)
    assert not client.closed
    mesh.advance(1)
    assert client.aborted


def test_write_timeout_zero_never_closes():
    mesh = InMemoryMesh(config(limits="{write_timeout: 0, request_headers_timeout: 1h, idle_timeout: 2h}"))
    client = mesh.connect()
    client.fillWriteBuffer()
    mesh.advance(1800)
    assert not client.closed


# -- accept backoff ----------------------------------------------------------------------------------------------


class FailingSocket:
    """A listening socket whose accept() fails with the given errnos, then has nothing to accept."""

    def __init__(self, errors=()):
        self.errors = list(errors)
        self.accepts = 0

    def accept(self):
        self.accepts += 1
        code = self.errors.pop(0) if self.errors else errno.EAGAIN
        raise OSError(code, os.strerror(code))


@pytest.fixture
def port():
    """A real listening tcp.Port on a MemoryReactorClock; its socket is swapped for a FailingSocket."""
    clock = MemoryReactorClock()
    p = tcp.Port(0, Factory.forProtocol(Protocol), interface="127.0.0.1", reactor=clock)
    p.startListening()
    failing = FailingSocket()
    real, p.socket = p.socket, failing
    yield p, clock, failing
    p.socket = real
    p.stopListening()
    clock.advance(0)


def test_accept_failures_pause_the_port_for_a_growing_delay(port):
    p, clock, failing = port
    stats = StatsStore()
    logOnce = LogOncePer(clock, None)
    events = collectLogs(logOnce)
    backoff = AcceptBackoff(clock, "web", stats, logOnce)
    backoff.watch(p)
    delays = []
    for code in (errno.EMFILE, errno.ENFILE, errno.EMFILE, errno.EMFILE, errno.EMFILE, errno.EMFILE, errno.EMFILE,
                 errno.EMFILE):
        failing.errors.append(code)
        assert p in clock.getReaders()
        p.doRead()
        assert p not in clock.getReaders()  # not reading: no spin
        [resume] = clock.getDelayedCalls()
        delays.append(round(resume.getTime() - clock.seconds(), 3))
        clock.advance(resume.getTime() - clock.seconds())
        assert p in clock.getReaders()
    assert delays == [0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.0]
    assert stats.value("downstream_cx_accept_error", listener="web", error="EMFILE") == 7
    assert stats.value("downstream_cx_accept_error", listener="web", error="ENFILE") == 1
    assert stats.value("downstream_cx_accept_paused", listener="web") == 8
    assert len(warnings(events)) == 1  # within one log interval
    clock.advance(5)  # quiet: the next pause starts small again
    failing.errors.append(errno.ENOBUFS)
    p.doRead()
    clock.advance(0.01)
    assert p in clock.getReaders()


def test_other_accept_errors_and_a_stopped_port_are_left_to_twisted(port):
    p, clock, failing = port
    stats = StatsStore()
    backoff = AcceptBackoff(clock, "web", stats)
    backoff.watch(p)
    failing.errors.append(errno.ECONNABORTED)
    p.doRead()
    assert p in clock.getReaders()
    assert stats.total("downstream_cx_accept_error") == 0
    failing.errors.append(errno.EMFILE)
    p.doRead()
    p.disconnecting = True  # stopListening meanwhile: the resume must not read again
    clock.advance(1)
    assert p not in clock.getReaders()
    p.disconnecting = False


def test_a_port_that_is_not_tcp_is_not_watched():
    backoff = AcceptBackoff(MemoryReactorClock(), "web", StatsStore())
    marker = object()
    assert backoff.watch(marker) is marker
    assert backoff.ports == []


def test_overload_without_bounds_admits_everything():
    o = Overload(None, MemoryReactorClock())
    o.connectionOpened()
    assert o.refusal(10 ** 6, 0) is None
    o.start()  # no memory mark: nothing scheduled
    o.stop()


EMFILE_SCRIPT = r'''
import json, os, resource, socket, sys
from twisted.internet import reactor
from twisted.internet.endpoints import AdoptedStreamServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from txmesh.overload import AcceptBackoff
from txmesh.stats import StatsStore

soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, soft), hard))
stats = StatsStore()
backoff = AcceptBackoff(reactor, "web", stats)
served = []

class Served(Protocol):
    def connectionMade(self):
        served.append(1)
        self.transport.loseConnection()

reads = [0]
hog = []
result = {}

def start():
    # after the reactor started (its waker and signal pipes need descriptors too)
    listening = socket.create_server(("127.0.0.1", 0))
    listening.setblocking(False)
    early.extend(socket.create_connection(listening.getsockname()) for _ in range(5))  # in the backlog
    while True:
        try:
            hog.append(os.open(os.devnull, os.O_RDONLY))
        except OSError:
            break
    os.close(hog.pop())  # one descriptor left: the port takes it, Twisted's EMFILE reserve cannot be made
    endpoint = AdoptedStreamServerEndpoint(reactor, listening.fileno(), socket.AF_INET)
    if sys.argv[1] == "backoff":
        endpoint = backoff.endpoint(endpoint)
    endpoint.listen(Factory.forProtocol(Served)).addCallback(watchReads)
    reactor.callLater(0.5, freeDescriptors)

def watchReads(port):
    doRead = port.doRead
    def countingRead():
        reads[0] += 1
        doRead()
    port.doRead = countingRead

def freeDescriptors():
    result["readsWhileOut"] = reads[0]
    for fd in hog:
        os.close(fd)
    reactor.callLater(0.3, reactor.stop)

early = []
reactor.callWhenRunning(start)
reactor.run()
result.update(served=len(served), errors=stats.total("downstream_cx_accept_error"),
              paused=stats.total("downstream_cx_accept_paused"))
print(json.dumps(result))
'''


@pytest.mark.timeout(60)
@pytest.mark.skipif(not hasattr(os, "sysconf") or not os.path.exists("/proc/self/statm"), reason="needs Linux")
def test_real_emfile_pauses_the_port_then_serves_again():
    """
    A real listening port in a subprocess with RLIMIT_NOFILE lowered and every descriptor taken (Twisted's own
    EMFILE reserve too, as when the process ran out before the port started): accept() fails with a real EMFILE,
    the port pauses, and serves the waiting clients once descriptors are free.  (``plain`` as the script's
    argument runs the same without the backoff, for comparison.)
    """
    import json
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

    def run(mode):
        out = subprocess.run([sys.executable, "-c", EMFILE_SCRIPT, mode], capture_output=True, text=True,
                             timeout=30, cwd=root, env=dict(os.environ, PYTHONPATH=root))
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout.strip().splitlines()[-1])

    result = run("backoff")
    assert result["errors"] >= 1 and result["paused"] >= 1  # the real EMFILE reached the watcher
    assert result["readsWhileOut"] < 20  # paused 10, 20, 40 ... ms between tries
    assert result["served"] == 5  # descriptors free again: the port reads again and the waiting clients are served


def test_the_service_reads_the_rss_on_its_clock_and_stops_with_it():
    text = MEMORY + "\nlisteners:\n  - {name: web, address: \"tcp:0\", protocol: dubbo}\n"
    reactor = MemoryReactorClock()
    rss = RSS(2000)
    svc = MeshService(loads(text), reactor, installSignal=lambda *a: None, readRSS=rss)
    svc.startService()
    assert svc.stats.value("overload_memory_pressure") == 1
    assert svc.listenerFactories[0].buildProtocol(None) is None
    rss.value = 10
    reactor.advance(1)
    assert svc.stats.value("overload_memory_pressure") == 0
    svc.stopService()
    reactor.advance(30)
    assert not [c for c in reactor.getDelayedCalls() if c.active()]
