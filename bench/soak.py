#!/usr/bin/env python3
"""
The soak (issue 15 part 5): a sidecar pair under steady mixed traffic and scheduled misbehaviour for ``--duration``
minutes; fails (exit 1) when a txmesh grows (RSS, open fds, pending timers) or a client sees an error the
misbehaviour does not explain.

Topology (docs/sidecar-pair.md), every process on loopback and stopped by PID at the end (also on Ctrl-C/SIGTERM):

    clients -> outbound txmesh -> inbound txmesh -> apps
                (etc/outbound.yaml)  (etc/inbound.yaml)   nginx (HTTP/1.1, static files),
                                                          tests/grpc_peers/echo_server.py (grpcio),
                                                          tests/dubbo_peers/provider.js (sofa-rpc-node)

The two sidecars run the shipped example configs with only ports and access-log paths changed
(tests/test_pair_integration.py's ``pairConfigs``).  Clients, all at once, each at a fixed moderate rate:

- ``http_keepalive``: http.client GETs on one keep-alive connection; ``http_newconn``: one connection per GET;
- ``grpc_unary``, ``grpc_stream`` (a server-streaming call of 5 messages, then a bidi call of 3): grpcio;
- ``dubbo``: the sofa-rpc-node consumer (tests/dubbo_peers/consumer.js ``steady``) calling ``echo``.

Misbehaviour, one action every ``--chaos-interval`` seconds, in turn: each kind of app SIGKILLed and restarted on
its port after ``--down`` s; clients that disconnect mid-request (a half-sent body, a cancelled stream, half a Dubbo
frame); slowloris heads (one header byte a second); clients that stop reading an 8 MiB response; malformed requests
(HTTP/1.1, HTTP/2, Dubbo: each must get its protocol's error or a close, never a hang); connection floods (200 at
once, within the limits).  Half the actions aim at the outbound, half at the inbound.

Every ``--sample-interval`` (between two actions, so a flood in progress is not what is measured) it samples each
txmesh: RSS (/proc/PID/statm), open fds (/proc/PID/fd), the admin's ``reactor_pending_calls`` and the connection and
request gauges (/stats), and each client kind's calls: ok, errors explained by the misbehaviour (a call that
overlapped the outage of its own kind of app, from the kill to ``--grace`` s after the restart) and unexplained ones.

The verdict compares the first sample after ``--warmup`` with the median of the last ``--window`` samples: RSS within
+max(10 %, 8 MiB), fds within +10, pending timers within +max(10, 10 %); any unexplained error, a sidecar that
died, a client kind without a successful call or a misbehaviour check that failed also fail the run.  It prints a
table over time and writes a JSON report (``--report``).

    .venv/bin/python bench/soak.py                               # 30 minutes
    .venv/bin/python bench/soak.py --duration 0.5 --sample-interval 3 --warmup 6 --chaos-interval 1 --hold 2 --down 1
"""

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(1, REPO)

from benchlib import BenchError, Processes, descendants, freePort, render, waitForPort  # noqa: E402

HOST = "peer.svc"  # the outbound's HTTP virtual host (etc/outbound.yaml)
SMALL, BIG = "/small", "/big"
BIG_SIZE = 8 << 20
GRPC_PEER = os.path.join(REPO, "tests", "grpc_peers", "echo_server.py")
DUBBO_PEERS = os.path.join(REPO, "tests", "dubbo_peers")
TWISTD = "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"
KINDS = ("http_keepalive", "http_newconn", "grpc_unary", "grpc_stream", "dubbo")
APP_OF = {"http_keepalive": "http", "http_newconn": "http", "grpc_unary": "grpc", "grpc_stream": "grpc",
          "dubbo": "dubbo"}
GAUGES = ("reactor_pending_calls", "downstream_cx_active", "downstream_rq_active", "upstream_cx_active",
          "upstream_rq_active")
PAGE = os.sysconf("SC_PAGE_SIZE")


# ---------------------------------------------------------------------------------------------------- bookkeeping


class Outages:
    """When each kind of app was down: (kind, killed at, listening again at or None while down), wall-clock s."""

    def __init__(self, grace):
        self.grace = grace
        self._lock = threading.Lock()
        self._spans = []

    def begin(self, app, start):
        with self._lock:
            self._spans.append([app, start, None])

    def end(self, app, end):
        with self._lock:
            for span in self._spans:
                if span[0] == app and span[2] is None:
                    span[2] = end

    def explains(self, app, start, end):
        """Whether a call to ``app`` from ``start`` to ``end`` overlapped one of its outages (plus the grace)."""
        with self._lock:
            return any(a == app and start <= (e if e is not None else float("inf")) + self.grace and end >= s
                       for a, s, e in self._spans)

    def spans(self):
        with self._lock:
            return [tuple(span) for span in self._spans]


class Calls:
    """
    Per client kind: calls ok, and every failed call (kind, start, end, error); each failure is classified when
    counted (L{snapshot}), against the outages known then, so a call failing while its app is still down counts
    as explained.
    """

    KEEP = 20

    def __init__(self, outages):
        self.outages = outages
        self._lock = threading.Lock()
        self.ok = {k: 0 for k in KINDS}
        self.failed = []

    def record(self, kind, start, end, error=None):
        with self._lock:
            if error is None:
                self.ok[kind] += 1
            else:
                self.failed.append((kind, start, end, str(error)[:300]))

    def snapshot(self):
        """{kind: {"ok", "explained", "unexplained"}} so far."""
        with self._lock:
            counts = {k: {"ok": n, "explained": 0, "unexplained": 0} for k, n in self.ok.items()}
            failed = list(self.failed)
        for kind, start, end, _ in failed:
            counts[kind]["explained" if self.outages.explains(APP_OF[kind], start, end) else "unexplained"] += 1
        return counts

    def unexplained(self):
        """The first L{KEEP} unexplained failures."""
        with self._lock:
            failed = list(self.failed)
        return [{"kind": kind, "start": round(start, 3), "end": round(end, 3), "error": error}
                for kind, start, end, error in failed
                if not self.outages.explains(APP_OF[kind], start, end)][:self.KEEP]


# ---------------------------------------------------------------------------------------------------- processes


class Apps:
    """The local app of the inbound sidecar: one process per kind, each killed (SIGKILL) and restarted on its port."""

    def __init__(self, procs, workdir):
        self.procs, self.workdir = procs, workdir
        self.ports = {"http": freePort(), "grpc": freePort(), "dubbo": freePort()}
        self.nginx = shutil.which("nginx")
        self.node = shutil.which("node")
        os.makedirs(os.path.join(workdir, "www"))
        with open(os.path.join(workdir, "www", SMALL[1:]), "wb") as f:
            f.write(b"s" * 100)
        with open(os.path.join(workdir, "www", BIG[1:]), "wb") as f:
            f.write(b"b" * BIG_SIZE)

    def argv(self, kind):
        port = self.ports[kind]
        if kind == "http":
            conf = render("upstream-nginx.conf.in", os.path.join(self.workdir, "upstream-nginx.conf"),
                          DIR=self.workdir, PORT=port)
            return [self.nginx, "-p", self.workdir, "-e", os.path.join(self.workdir, "upstream-nginx.error.log"),
                    "-c", conf], None
        if kind == "grpc":
            return [sys.executable, GRPC_PEER, str(port)], None
        return [self.node, os.path.join(DUBBO_PEERS, "provider.js"), str(port)], DUBBO_PEERS

    def start(self, kind):
        argv, cwd = self.argv(kind)
        self.procs.start("app-" + kind, argv, self.ports[kind], cwd=cwd)

    def kill(self, kind):
        """SIGKILL the app and its children (nginx's worker): no goodbye to the inbound's pooled connections."""
        for name, proc, _ in list(self.procs.started):
            if name == "app-" + kind:
                for pid in descendants(proc.pid):
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                proc.wait(timeout=10)
        self.procs.stop("app-" + kind)


def startPair(procs, workdir, app):
    """Both sidecars from the shipped configs; returns {side: {"pid", "admin", "http", "grpc", "dubbo"}}."""
    from tests.test_pair_integration import pairConfigs
    ports = {side: {p: freePort() for p in ("http", "grpc", "dubbo")} for side in ("inbound", "outbound")}
    admins = {side: freePort() for side in ports}
    logs = tuple(os.path.join(workdir, side + ".access.log") for side in ("inbound", "outbound"))
    texts = dict(zip(("inbound", "outbound"), pairConfigs(app, ports["inbound"], ports["outbound"],
                                                          admins["inbound"], admins["outbound"], logs)))
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    sides = {}
    for side in ("inbound", "outbound"):
        path = os.path.join(workdir, side + ".yaml")
        with open(path, "w") as f:
            f.write(texts[side])
        proc = procs.start("txmesh-" + side, [sys.executable, "-c", TWISTD, "-n", "--pidfile=", "txmesh", "--config",
                                              path], admins[side], env=env, cwd=REPO)
        for port in ports[side].values():
            if not waitForPort(port, proc, time.monotonic() + 15):
                raise BenchError("txmesh-%s does not listen on %d" % (side, port))
        sides[side] = dict(ports[side], pid=proc.pid, admin=admins[side], proc=proc)
    return sides


# ---------------------------------------------------------------------------------------------------- clients


class Driver(threading.Thread):
    """One client kind calling at ``rate`` calls/s until stopped; each call's outcome goes to ``calls``."""

    def __init__(self, kind, rate, calls, stop):
        super().__init__(name="soak-" + kind, daemon=True)
        self.kind, self.rate, self.calls, self.stop = kind, rate, calls, stop

    def run(self):
        step = 1.0 / self.rate
        nextAt = time.monotonic()
        while not self.stop.is_set():
            start = time.time()
            try:
                self.once()
                error = None
            except Exception as e:  # every failure is an outcome to classify
                error = "%s: %s" % (type(e).__name__, e)
            self.calls.record(self.kind, start, time.time(), error)
            nextAt = max(nextAt + step, time.monotonic())
            self.stop.wait(nextAt - time.monotonic())
        self.close()

    def close(self):
        pass


class HttpFailed(Exception):
    pass


def checkSmall(resp, body):
    if resp.status != 200 or len(body) != 100:
        raise HttpFailed("status %d, %d bytes; x-txmesh-node %s, x-txmesh-error %s" % (
            resp.status, len(body), resp.getheader("x-txmesh-node"), resp.getheader("x-txmesh-error")))


class HttpKeepAlive(Driver):
    def __init__(self, port, *a):
        super().__init__("http_keepalive", *a)
        import http.client
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)

    def once(self):
        try:
            self.conn.request("GET", SMALL, headers={"Host": HOST})
            resp = self.conn.getresponse()
            checkSmall(resp, resp.read())
        except Exception:
            self.conn.close()  # the next call opens a new connection
            raise

    def close(self):
        self.conn.close()


class HttpNewConn(Driver):
    def __init__(self, port, *a):
        super().__init__("http_newconn", *a)
        self.port = port

    def once(self):
        import http.client
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=15)
        try:
            conn.request("GET", SMALL, headers={"Host": HOST, "Connection": "close"})
            resp = conn.getresponse()
            checkSmall(resp, resp.read())
        finally:
            conn.close()


class GrpcUnary(Driver):
    def __init__(self, channel, *a):
        super().__init__("grpc_unary", *a)
        self.unary = channel.unary_unary("/test.Echo/Unary", request_serializer=None, response_deserializer=None)

    def once(self):
        if self.unary(b"soak", timeout=10) != b"soak":
            raise ValueError("wrong answer")


class GrpcStream(Driver):
    def __init__(self, channel, *a):
        super().__init__("grpc_stream", *a)
        self.serverStream = channel.unary_stream("/test.Echo/ServerStream", request_serializer=None,
                                                 response_deserializer=None)
        self.bidi = channel.stream_stream("/test.Echo/Bidi", request_serializer=None, response_deserializer=None)

    def once(self):
        got = list(self.serverStream(b"5:64", timeout=10))
        if [len(m) for m in got] != [64] * 5:
            raise ValueError("server stream: %r" % ([len(m) for m in got],))
        got = list(self.bidi(iter([b"a", b"bb", b"ccc"]), timeout=10))
        if got != [b"a", b"bb", b"ccc"]:
            raise ValueError("bidi: %r" % (got,))


class DubboSteady(threading.Thread):
    """The sofa-rpc-node consumer's ``steady`` scenario, one JSON line a second read back into ``calls``."""

    def __init__(self, port, rate, calls, stop, workdir):
        super().__init__(name="soak-dubbo", daemon=True)
        self.calls, self.stop = calls, stop
        self.log = open(os.path.join(workdir, "dubbo-consumer.err"), "wb")
        self.proc = subprocess.Popen([shutil.which("node"), os.path.join(DUBBO_PEERS, "consumer.js"),
                                      "127.0.0.1:%d" % port, "steady", str(rate)], cwd=DUBBO_PEERS,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log,
                                     start_new_session=True)

    def run(self):
        for line in self.proc.stdout:
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if "fatal" in entry:
                self.calls.record("dubbo", time.time(), time.time(), "consumer: " + entry["fatal"])
            for _ in range(entry.get("ok", 0)):
                self.calls.record("dubbo", 0, 0)
            for e in entry.get("errors", ()):
                self.calls.record("dubbo", e["start"], e["end"], e["message"])

    def finish(self):
        """Close its stdin (it stops after the call in flight), wait for it; kill it if it does not end."""
        try:
            self.proc.stdin.close()
            self.proc.wait(timeout=15)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait(timeout=5)
        self.join(5)
        self.log.close()


# ---------------------------------------------------------------------------------------------------- misbehaviour


def connect(port, timeout=5.0):
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.settimeout(timeout)
    return s


def readAll(s, limit=65536):
    """What the peer sends until it closes (or the socket's timeout): the bytes, and whether it closed."""
    data = b""
    try:
        while len(data) < limit:
            chunk = s.recv(4096)
            if not chunk:
                return data, True
            data += chunk
    except socket.timeout:
        return data, False
    except OSError:
        return data, True
    return data, False


class Chaos(threading.Thread):
    """
    One misbehaviour every ``interval`` s, in turn.  ``lock`` is held while one runs, so samples fall between them.
    Each action appends {"t", "action", "target", "result", "ok"} to ``events``; ``ok`` False is a failed check.
    """

    def __init__(self, args, apps, sides, outages, stop, lock):
        super().__init__(name="soak-chaos", daemon=True)
        self.args, self.apps, self.sides, self.outages, self.stop, self.lock = args, apps, sides, outages, stop, lock
        self.events = []
        self.actions = [("kill", "http"), ("slowloris", "outbound"), ("kill", "grpc"), ("malformed", "outbound"),
                        ("kill", "dubbo"), ("stop_reading", "outbound"), ("disconnect", "outbound"),
                        ("flood", "outbound"), ("slowloris", "inbound"), ("malformed", "inbound"),
                        ("stop_reading", "inbound"), ("disconnect", "inbound"), ("flood", "inbound")]

    def run(self):
        i = 0
        while not self.stop.wait(self.args.chaos_interval):
            action, target = self.actions[i % len(self.actions)]
            i += 1
            with self.lock:
                t = time.time()
                try:
                    result, ok = getattr(self, action)(target)
                except Exception as e:
                    result, ok = "%s: %s" % (type(e).__name__, e), False
                self.events.append({"t": round(t, 3), "action": action, "target": target, "result": result,
                                    "ok": ok})
                time.sleep(self.args.settle)  # closed sockets reach the sidecars before a sample may look

    def kill(self, app):
        start = time.time()
        self.outages.begin(app, start)
        self.apps.kill(app)
        self.stop.wait(self.args.down)
        try:
            self.apps.start(app)
        finally:
            self.outages.end(app, time.time())
        return "down %.1f s" % (time.time() - start), True

    def slowloris(self, side):
        """20 heads, one byte a second: txmesh must close them (request_headers_timeout, 408) or keep serving."""
        port = self.sides[side]["http"]
        socks = [connect(port) for _ in range(20)]
        head = b"GET /small HTTP/1.1\r\nHost: peer.svc\r\nX-Slow: " + b"a" * 1000
        closed = 0
        end = time.monotonic() + self.args.hold
        sent = 0
        while time.monotonic() < end and closed < len(socks) and sent < len(head):
            for s in socks:
                try:
                    s.send(head[sent:sent + 1])
                except OSError:
                    pass
            sent += 1
            self.stop.wait(1.0)
        answers = 0
        for s in socks:
            s.settimeout(0.05)
            data, gone = readAll(s)
            answers += data.startswith(b"HTTP/1.1 408")
            closed += gone
            s.close()
        return "%d slow heads for %.0f s: %d answered 408, %d closed by txmesh" % (
            len(socks), self.args.hold, answers, closed), True

    def stop_reading(self, side):
        """4 clients ask for 8 MiB and read nothing for ``hold`` s, then go; the sidecar must not stall the others."""
        port = self.sides[side]["http"]
        socks = []
        for _ in range(4):
            s = connect(port)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.sendall(b"GET %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (BIG.encode(), HOST.encode()))
            socks.append(s)
        self.stop.wait(self.args.hold)
        for s in socks:
            s.close()
        return "4 clients of %s, not reading for %.0f s" % (BIG, self.args.hold), True

    def disconnect(self, side):
        """Go away mid-request: half a body, a request dropped before its answer, a cancelled stream, half a Dubbo
        frame."""
        ports = self.sides[side]
        s = connect(ports["http"])
        s.sendall(b"POST /small HTTP/1.1\r\nHost: peer.svc\r\nContent-Length: 10000\r\n\r\n" + b"x" * 100)
        s.close()
        s = connect(ports["http"])
        s.sendall(b"GET %s HTTP/1.1\r\nHost: peer.svc\r\n\r\n" % BIG.encode())
        s.recv(1000)
        s.close()
        import grpc
        with grpc.insecure_channel("127.0.0.1:%d" % ports["grpc"]) as channel:
            stream = channel.unary_stream("/test.Echo/ServerStream", request_serializer=None,
                                          response_deserializer=None)(b"20:64:slow", timeout=10)
            next(stream)
            stream.cancel()
        s = connect(ports["dubbo"])
        s.sendall(b"\xda\xbb\xc2\x00" + (1).to_bytes(8, "big") + (1000).to_bytes(4, "big") + b"\x00" * 10)
        s.close()
        return "half an HTTP body, a dropped GET /big, a cancelled gRPC stream, half a Dubbo frame", True

    def malformed(self, side):
        """Each listener gets bytes its protocol forbids: an HTTP 400, an HTTP/2 GOAWAY or a close, never a hang."""
        ports = self.sides[side]
        out, ok = [], True
        s = connect(ports["http"])
        s.sendall(b"GET /small HTTP/1.1\r\nHost: peer.svc\r\nBad Header: x\r\n\r\n")
        data, gone = readAll(s)
        s.close()
        out.append("http: %r" % (data.split(b"\r\n", 1)[0],))
        ok &= data.startswith(b"HTTP/1.1 400")
        s = connect(ports["grpc"])
        s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x04\xff\x00\x00\x00\x00\x00garbage-frames")
        data, gone = readAll(s)
        s.close()
        goaway = b"\x07\x00\x00\x00\x00\x00" in data  # a GOAWAY frame header (type 7) on stream 0
        out.append("grpc: %s" % ("GOAWAY" if goaway else "closed" if gone else "no answer"))
        ok &= goaway or gone
        s = connect(ports["dubbo"])
        s.sendall(b"\x12\x34" + b"\x00" * 30)
        data, gone = readAll(s)
        s.close()
        out.append("dubbo: %s" % ("closed" if gone else "no close"))
        ok &= gone
        return ", ".join(out), ok

    def flood(self, side):
        """200 connections at once to each listener (no limit is configured: all must be accepted), then closed."""
        socks, refused = [], 0
        for proto in ("http", "grpc", "dubbo"):
            for _ in range(200):
                try:
                    socks.append(connect(self.sides[side][proto], timeout=2))
                except OSError:
                    refused += 1
        self.stop.wait(1.0)
        for s in socks:
            s.close()
        return "%d connections opened, %d refused" % (len(socks), refused), refused == 0


# ---------------------------------------------------------------------------------------------------- sampling


class ProcSampler:
    """One txmesh's figures: RSS and fds from /proc, the gauges from its admin /stats."""

    def sample(self, name, side):
        """The figures of sidecar ``name`` (``side``: its pid, proc and admin port)."""
        pid, admin = side["pid"], side["admin"]
        out = {"alive": side["proc"].poll() is None}
        if not out["alive"]:
            return dict(out, rss_kib=0, fds=0, **{name: 0 for name in GAUGES})
        with open("/proc/%d/statm" % pid) as f:
            out["rss_kib"] = int(f.read().split()[1]) * PAGE // 1024
        out["fds"] = len(os.listdir("/proc/%d/fd" % pid))
        url = "http://127.0.0.1:%d/stats?filter=^(%s)" % (admin, "|".join(GAUGES))
        with urllib.request.urlopen(url, timeout=10) as r:
            stats = json.load(r)
        for name in GAUGES:
            out[name] = sum(s["value"] for s in stats.get(name, ()))
        return out


def median(values):
    return statistics.median(values) if values else 0


def evaluate(samples, warmup, window, calls, events, rssPercent=10.0, rssMiB=8.0, fdSlack=10, timerSlack=10,
             timerPercent=10.0):
    """
    The verdict of a run: a list of failures (empty: the run passed) and the figures compared.

    @param samples: [{"t": seconds since start, "sides": {side: ProcSampler.sample()}, ...}] in time order.
    @param warmup: seconds; the baseline is the first sample at or after it.
    @param window: how many of the last samples make the final window (their median is compared).
    @param calls: {kind: {"ok", "explained", "unexplained"}} at the end.
    @param events: the misbehaviour log (Chaos.events).
    """
    failures, figures = [], {}
    after = [s for s in samples if s["t"] >= warmup]
    if len(after) < 2:
        failures.append("too few samples after the warm-up (%d): run longer or sample more often" % len(after))
        return failures, figures
    base, last = after[0], after[-window:]
    for side in base["sides"]:
        b = base["sides"][side]
        rss = median([s["sides"][side]["rss_kib"] for s in last])
        fds = median([s["sides"][side]["fds"] for s in last])
        timers = median([s["sides"][side]["reactor_pending_calls"] for s in last])
        rssBound = b["rss_kib"] + max(b["rss_kib"] * rssPercent / 100, rssMiB * 1024)
        fdBound = b["fds"] + fdSlack
        timerBound = b["reactor_pending_calls"] + max(timerSlack, b["reactor_pending_calls"] * timerPercent / 100)
        figures[side] = {"rss_kib": [b["rss_kib"], rss, rssBound], "fds": [b["fds"], fds, fdBound],
                         "timers": [b["reactor_pending_calls"], timers, timerBound]}
        if rss > rssBound:
            failures.append("%s RSS grew: %d KiB after the warm-up, %d KiB at the end (bound %d)"
                            % (side, b["rss_kib"], rss, rssBound))
        if fds > fdBound:
            failures.append("%s open fds grew: %d -> %d (bound %d)" % (side, b["fds"], fds, fdBound))
        if timers > timerBound:
            failures.append("%s pending timers grew: %d -> %d (bound %d)"
                            % (side, b["reactor_pending_calls"], timers, timerBound))
        if not all(s["sides"][side]["alive"] for s in samples):
            failures.append("%s died during the run" % side)
    for kind, c in sorted(calls.items()):
        if c["unexplained"]:
            failures.append("%s: %d unexplained errors" % (kind, c["unexplained"]))
        if not c["ok"]:
            failures.append("%s: no successful call" % kind)
    for e in events:
        if not e["ok"]:
            failures.append("misbehaviour check failed: %s %s: %s" % (e["action"], e["target"], e["result"]))
    return failures, figures


def row(sample, previous):
    """One line of the table over time: per side RSS MiB, fds, timers, downstream cx; per kind calls since."""
    cells = ["%6.0f" % sample["t"]]
    for side in ("outbound", "inbound"):
        s = sample["sides"][side]
        cells.append("%6.1f %4d %5d %4d" % (s["rss_kib"] / 1024, s["fds"], s["reactor_pending_calls"],
                                            s["downstream_cx_active"]))
    for kind in KINDS:
        now, was = sample["calls"][kind], previous["calls"][kind] if previous else {"ok": 0, "explained": 0,
                                                                                  "unexplained": 0}
        cells.append("%5d/%d/%d" % tuple(now[k] - was[k] for k in ("ok", "explained", "unexplained")))
    return " | ".join(cells)


HEADER = ("     t | out MiB  fds  tmrs  cxd |  in MiB  fds  tmrs  cxd | " +
          " | ".join("%s ok/expl/unexpl" % k for k in KINDS))


# ---------------------------------------------------------------------------------------------------- main


def parseArgs(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=30.0, help="minutes of traffic (default 30)")
    p.add_argument("--sample-interval", type=float, default=30.0, help="seconds between samples (default 30)")
    p.add_argument("--warmup", type=float, default=120.0, help="seconds before the baseline sample (default 120)")
    p.add_argument("--window", type=int, default=3, help="last samples whose median is compared (default 3)")
    p.add_argument("--chaos-interval", type=float, default=20.0,
                   help="seconds between two misbehaviours (default 20: each kind of app killed every ~4 min)")
    p.add_argument("--down", type=float, default=5.0, help="seconds a killed app stays down (default 5)")
    p.add_argument("--hold", type=float, default=12.0,
                   help="seconds slow heads and non-reading clients hold on (default 12, past the 10 s "
                        "request_headers_timeout)")
    p.add_argument("--settle", type=float, default=2.0,
                   help="seconds after each misbehaviour before a sample may be taken (default 2)")
    p.add_argument("--grace", type=float, default=5.0,
                   help="seconds after an app is back during which its clients' errors are explained (default 5)")
    p.add_argument("--rate", type=float, default=10.0,
                   help="calls/s of each of http_keepalive, grpc_unary, dubbo; half that for http_newconn, a fifth "
                        "for grpc_stream (default 10)")
    p.add_argument("--report", default=os.path.join(tempfile.gettempdir(), "txmesh-soak-report.json"),
                   help="where the JSON report goes")
    return p.parse_args(argv)


def _terminated(signum, frame):
    raise KeyboardInterrupt("signal %d" % signum)


def main(argv=None, sampler=None):
    args = parseArgs(argv)
    for tool in ("node", "nginx"):
        if shutil.which(tool) is None:
            sys.exit("%s is not installed" % tool)
    if not os.path.isdir(os.path.join(DUBBO_PEERS, "node_modules", "sofa-rpc-node")):
        sys.exit("the Dubbo peers are not installed: cd tests/dubbo_peers && npm ci")
    import grpc
    sampler = sampler or ProcSampler()
    previousHandler = signal.signal(signal.SIGTERM, _terminated)
    workdir = tempfile.mkdtemp(prefix="txmesh-soak-")
    os.chmod(workdir, 0o755)  # nginx workers run as nobody when we are root
    procs = Processes(workdir)
    stop, lock = threading.Event(), threading.Lock()
    outages = Outages(args.grace)
    calls = Calls(outages)
    samples, drivers, channels, chaos, dubbo = [], [], [], None, None
    failures, figures, interrupted = [], {}, False
    started = time.monotonic()
    try:
        apps = Apps(procs, workdir)
        for kind in ("http", "grpc", "dubbo"):
            apps.start(kind)
        sides = startPair(procs, workdir, apps.ports)
        out = sides["outbound"]
        for _ in range(2):
            channels.append(grpc.insecure_channel("127.0.0.1:%d" % out["grpc"]))
        drivers = [HttpKeepAlive(out["http"], args.rate, calls, stop),
                   HttpNewConn(out["http"], args.rate / 2, calls, stop),
                   GrpcUnary(channels[0], args.rate, calls, stop),
                   GrpcStream(channels[1], args.rate / 5, calls, stop)]
        dubbo = DubboSteady(out["dubbo"], args.rate, calls, stop, workdir)
        for d in drivers + [dubbo]:
            d.start()
        chaos = Chaos(args, apps, sides, outages, stop, lock)
        chaos.start()
        started = time.monotonic()
        end = started + args.duration * 60
        print(HEADER)
        nextSample = started + args.sample_interval
        while True:
            now = time.monotonic()
            if now >= end:
                break
            time.sleep(max(0.0, min(nextSample, end) - now))
            if time.monotonic() >= end:
                break
            with lock:  # between two misbehaviours
                sample = {"t": round(time.monotonic() - started, 1), "wall": round(time.time(), 3),
                          "sides": {name: sampler.sample(name, side) for name, side in sides.items()},
                          "calls": calls.snapshot()}
            samples.append(sample)
            print(row(sample, samples[-2] if len(samples) > 1 else None), flush=True)
            while nextSample <= time.monotonic():  # the samples a long action delayed are skipped
                nextSample += args.sample_interval
    except KeyboardInterrupt:
        print("\ninterrupted; stopping", file=sys.stderr)
        interrupted = True
    except BenchError as e:
        print(str(e), file=sys.stderr)
        failures.append(str(e))
    finally:
        stop.set()
        if chaos is not None:
            chaos.join(60)
        for d in drivers:
            d.join(30)
        if dubbo is not None:
            dubbo.finish()
        for c in channels:
            c.close()
        final = calls.snapshot()
        procs.stopAll()
        keep = os.path.join(os.path.dirname(os.path.abspath(args.report)), "txmesh-soak-logs")
        shutil.rmtree(keep, ignore_errors=True)
        shutil.copytree(workdir, keep, ignore=shutil.ignore_patterns("www"))
        shutil.rmtree(workdir, ignore_errors=True)
        signal.signal(signal.SIGTERM, previousHandler)
    if not failures:
        more, figures = evaluate(samples, args.warmup, args.window, final, chaos.events if chaos else [])
        failures += more
    if interrupted:
        failures.append("interrupted")
    report = {"args": vars(args), "machine": machine(), "samples": samples, "calls": final,
              "unexplained": calls.unexplained(), "outages": outages.spans(),
              "events": chaos.events if chaos else [], "figures": figures, "failures": failures,
              "verdict": "FAILED" if failures else "OK"}
    with open(args.report, "w") as f:
        json.dump(report, f, indent=1)
    printSummary(report)
    return 1 if failures else 0


def machine():
    import platform
    return {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
            "loadavg": os.getloadavg()}


def printSummary(report):
    print("")
    print("calls (ok / explained errors / unexplained errors):")
    for kind, c in report["calls"].items():
        print("  %-15s %7d / %5d / %5d" % (kind, c["ok"], c["explained"], c["unexplained"]))
    for e in report["unexplained"][:10]:
        print("  unexplained %s: %s" % (e["kind"], e["error"]))
    print("misbehaviour: %d actions, %d app outages" % (len(report["events"]), len(report["outages"])))
    for side, fig in report["figures"].items():
        print("  %-8s RSS %d -> %d KiB (bound %d); fds %d -> %d (bound %d); timers %d -> %d (bound %d)" % (
            side, *fig["rss_kib"], *fig["fds"], *fig["timers"]))
    for f in report["failures"]:
        print("FAIL: " + f)
    print(report["verdict"])


if __name__ == "__main__":
    sys.exit(main())
