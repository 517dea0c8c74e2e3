"""
Tests for txmesh.admin: the admin Site is driven over an in-memory transport with raw HTTP bytes, and the
assertions are on what a client sees (status line, headers, body).
"""

import json

import pytest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parseOpenMetrics
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.web.server import Site

from txmesh.admin import makeAdminSite
from txmesh.speedups import describe as describeSpeedups
from txmesh.stats import StatsStore


class FakeClusterManager:
    """The one method the admin API needs from the cluster manager."""

    def describe(self):
        return [
            {
                "name": "web",
                "lb_policy": "round_robin",
                "hosts": [
                    {
                        "address": "127.0.0.1:8080",
                        "weight": 1,
                        "healthy": True,
                        "active_requests": 2,
                        "counters": {"requests": 7, "connect_failures": 1},
                    }
                ],
            }
        ]


class Response:
    def __init__(self, raw):
        head, _, self.body = raw.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        self.statusLine = lines[0]
        self.code = int(lines[0].split()[1])
        self.headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            self.headers.setdefault(name.strip().lower(), []).append(value.strip())

    def header(self, name):
        return self.headers[name][0]

    def json(self):
        return json.loads(self.body)


def request(site, target, method=b"GET", headers=()):
    """Send one request on a new in-memory connection and return the parsed response."""
    transport = StringTransport()
    protocol = site.buildProtocol(None)
    protocol.makeConnection(transport)
    lines = [method + b" " + target + b" HTTP/1.1", b"Host: 127.0.0.1", b"Connection: close"]
    lines.extend(headers)
    protocol.dataReceived(b"\r\n".join(lines) + b"\r\n\r\n")
    return Response(transport.value())


class World:
    def __init__(self):
        self.stats = StatsStore()
        self.ready = True
        self.draining = False
        self.config = {"admin": {"address": "tcp:9901:interface=127.0.0.1"}, "listeners": [], "clusters": []}
        self.site = makeAdminSite(
            self.stats,
            FakeClusterManager(),
            lambda: self.config,
            lambda: self.ready,
            isDraining=lambda: self.draining,
            reactor=Clock(),
        )

    def get(self, target, **kw):
        return request(self.site, target, **kw)


@pytest.fixture
def world():
    w = World()
    listener = w.stats.scope(listener="outbound")
    listener.counter("downstream_requests", help="requests received").inc(5)
    listener.counter("downstream_responses", code_class="2xx").inc(4)
    listener.counter("downstream_responses", code_class="5xx").inc(1)
    w.stats.scope(cluster="web").gauge("upstream_active_connections").set(3)
    w.stats.scope(cluster="db").gauge("upstream_active_connections").set(1)
    return w


def test_returnsSite(world):
    assert isinstance(world.site, Site)


def test_readyLive(world):
    r = world.get(b"/ready")
    assert (r.code, r.body) == (200, b"LIVE\n")
    assert r.header(b"content-type").startswith(b"text/plain")


def test_readyNotReady(world):
    world.ready = False
    r = world.get(b"/ready")
    assert (r.code, r.body) == (503, b"NOT READY\n")


def test_readyDraining(world):
    world.draining = True
    r = world.get(b"/ready")
    assert (r.code, r.body) == (503, b"DRAINING\n")


def test_readyWithoutDrainingCallable():
    site = makeAdminSite(StatsStore(), None, dict, lambda: False, reactor=Clock())
    assert request(site, b"/ready").code == 503


def test_statsJson(world):
    r = world.get(b"/stats")
    assert r.code == 200
    assert r.header(b"content-type") == b"application/json"
    body = r.json()
    assert body["downstream_requests"] == [{"labels": {"listener": "outbound"}, "value": 5}]
    assert {s["labels"]["code_class"]: s["value"] for s in body["downstream_responses"]} == {"2xx": 4, "5xx": 1}


def test_statsReflectsLiveValues(world):
    world.stats.counter("downstream_requests", (("listener", "outbound"),)).inc(2)
    assert world.get(b"/stats").json()["downstream_requests"][0]["value"] == 7


def test_statsFilterOnName(world):
    body = world.get(b"/stats?filter=%5Eupstream_").json()
    assert list(body) == ["upstream_active_connections"]


def test_statsFilterOnLabel(world):
    body = world.get(b'/stats?filter=cluster%3D%22web%22').json()
    assert body == {"upstream_active_connections": [{"labels": {"cluster": "web"}, "value": 3}]}


def test_statsFilterInvalidRegex(world):
    r = world.get(b"/stats?filter=%28unclosed")
    assert r.code == 400
    assert b"invalid filter regex" in r.body


def test_statsFilterTooLong(world):
    assert world.get(b"/stats?filter=" + b"a" * 2000).code == 400


def test_statsText(world):
    r = world.get(b"/stats?format=text")
    assert r.code == 200
    assert r.header(b"content-type").startswith(b"text/plain")
    lines = r.body.decode().splitlines()
    assert 'downstream_requests{listener="outbound"} 5' in lines
    assert 'downstream_responses{listener="outbound",code_class="5xx"} 1' in lines
    assert 'upstream_active_connections{cluster="db"} 1' in lines
    assert lines == sorted(lines)


def test_statsTextFiltered(world):
    r = world.get(b"/stats?format=text&filter=5xx")
    assert r.body == b'downstream_responses{listener="outbound",code_class="5xx"} 1\n'


def test_statsUnknownFormat(world):
    assert world.get(b"/stats?format=xml").code == 400


def test_metricsPrometheusText(world):
    r = world.get(b"/metrics")
    assert r.code == 200
    assert r.header(b"content-type") == CONTENT_TYPE_LATEST.encode()
    families = {f.name: f for f in text_string_to_metric_families(r.body.decode())}
    requests = families["txmesh_downstream_requests"]
    assert requests.type == "counter"
    assert requests.documentation == "requests received"
    assert [(s.name, s.labels, s.value) for s in requests.samples] == [
        ("txmesh_downstream_requests_total", {"listener": "outbound"}, 5.0)
    ]
    responses = {s.labels["code_class"]: s.value for s in families["txmesh_downstream_responses"].samples}
    assert responses == {"2xx": 4.0, "5xx": 1.0}
    gauge = families["txmesh_upstream_active_connections"]
    assert gauge.type == "gauge"
    assert {s.labels["cluster"]: s.value for s in gauge.samples} == {"web": 3.0, "db": 1.0}


def test_metricsOnlyOurSeries(world):
    """
    A private registry: txmesh's series and the process collector's standard names, none of the platform/gc
    collectors of prometheus_client's global registry.
    """
    body = world.get(b"/metrics").body.decode()
    names = {f.name for f in text_string_to_metric_families(body)}
    assert names and all(n.startswith(("txmesh_", "process_")) for n in names)
    assert not any(n.startswith(("python_gc", "python_info")) for n in names)


def test_metricsOpenMetricsOnRequest(world):
    r = world.get(b"/metrics", headers=[b"Accept: application/openmetrics-text; version=1.0.0"])
    assert r.code == 200
    assert r.header(b"content-type").startswith(b"application/openmetrics-text")
    assert r.body.endswith(b"# EOF\n")
    names = {f.name for f in parseOpenMetrics(r.body.decode())}
    assert "txmesh_downstream_requests" in names


def test_metricsEmptyStore():
    """Without a series of txmesh's own: the build info and the process collector only."""
    site = makeAdminSite(StatsStore(), None, dict, lambda: True, reactor=Clock())
    r = request(site, b"/metrics")
    assert r.code == 200
    families = {f.name: f for f in text_string_to_metric_families(r.body.decode())}
    assert {n for n in families if n.startswith("txmesh_")} == {"txmesh_build_info"}
    [info] = families["txmesh_build_info"].samples
    assert info.value == 1 and info.labels["mode"] == describeSpeedups()["mode"] and set(info.labels) == {
        "version", "python", "twisted", "mode"}
    assert {"process_cpu_seconds", "process_resident_memory_bytes", "process_open_fds",
            "process_start_time_seconds"} <= set(families)


def test_clusters(world):
    r = world.get(b"/clusters")
    assert r.code == 200
    assert r.header(b"content-type") == b"application/json"
    (cluster,) = r.json()
    assert cluster["name"] == "web"
    assert cluster["hosts"][0]["counters"]["requests"] == 7


def test_clustersWithoutManager():
    site = makeAdminSite(StatsStore(), None, dict, lambda: True, reactor=Clock())
    assert request(site, b"/clusters").json() == []


def test_configDump(world):
    r = world.get(b"/config_dump")
    assert r.code == 200
    assert r.header(b"content-type") == b"application/json"
    assert r.json() == world.config


def test_configDumpNonJsonValues(world):
    world.config = {"name": b"bytes", "tags": frozenset(["b", "a"]), "timeout": object.__new__(Clock)}
    body = world.get(b"/config_dump").json()
    assert body["name"] == "bytes"
    assert body["tags"] == ["a", "b"]
    assert isinstance(body["timeout"], str)


def test_index(world):
    r = world.get(b"/")
    assert r.code == 200
    assert r.header(b"content-type").startswith(b"text/plain")
    for path in (b"/ready", b"/stats", b"/metrics", b"/clusters", b"/config_dump"):
        assert path in r.body


def test_trailingSlashAccepted(world):
    assert world.get(b"/stats/").code == 200


@pytest.mark.parametrize(
    "target", [b"/nope", b"/stats/extra", b"/ready/x/y", b"/..%2f..%2fetc/passwd", b"/metrics.txt", b"//"]
)
def test_unknownPath404(world, target):
    r = world.get(target)
    assert r.code == 404
    assert r.body == b"not found\n"


@pytest.mark.parametrize("method", [b"POST", b"PUT", b"DELETE", b"PATCH", b"OPTIONS"])
def test_otherMethods405(world, method):
    r = world.get(b"/stats", method=method, headers=[b"Content-Length: 0"])
    assert r.code == 405
    assert r.header(b"allow") == b"GET, HEAD"


def test_postToIndex405(world):
    assert world.get(b"/", method=b"POST", headers=[b"Content-Length: 0"]).code == 405


def test_head(world):
    get = world.get(b"/stats")
    head = world.get(b"/stats", method=b"HEAD")
    assert head.code == 200
    assert head.body == b""
    assert head.header(b"content-length") == get.header(b"content-length")


def test_headReady503(world):
    world.ready = False
    r = world.get(b"/ready", method=b"HEAD")
    assert (r.code, r.body) == (503, b"")


def test_noCachingAndNoSniff(world):
    r = world.get(b"/stats")
    assert r.header(b"cache-control") == b"no-cache, no-store"
    assert r.header(b"x-content-type-options") == b"nosniff"


def test_brokenCollaboratorIs500WithoutTraceback():
    def broken():
        raise RuntimeError("secret detail")

    site = makeAdminSite(StatsStore(), None, broken, lambda: True, reactor=Clock())
    r = request(site, b"/config_dump")
    assert r.code == 500
    assert b"secret detail" not in r.body


class FakeReopen:
    """The service's reopenLogs: counts calls and reports the failures it is told to."""

    def __init__(self, reopened=2, failures=()):
        self.calls = 0
        self.result = (reopened, list(failures))

    def __call__(self):
        self.calls += 1
        return self.result


def test_postReopenLogs():
    reopen = FakeReopen()
    site = makeAdminSite(StatsStore(), None, dict, lambda: True, reactor=Clock(), reopenLogs=reopen)
    r = request(site, b"/reopen_logs", method=b"POST", headers=[b"Content-Length: 0"])
    assert (r.code, r.body) == (200, b"OK\n")
    assert reopen.calls == 1
    assert b"/reopen_logs" in request(site, b"/").body


def test_reopenLogsFailureIs500NamingThePath():
    reopen = FakeReopen(1, [("/var/log/gone/access.log", "No such file or directory")])
    site = makeAdminSite(StatsStore(), None, dict, lambda: True, reactor=Clock(), reopenLogs=reopen)
    r = request(site, b"/reopen_logs", method=b"POST", headers=[b"Content-Length: 0"])
    assert r.code == 500
    assert r.body == (b"reopened 1 log file(s); 1 failed:\n"
                      b"/var/log/gone/access.log: No such file or directory\n")


@pytest.mark.parametrize("method", [b"GET", b"HEAD", b"PUT"])
def test_reopenLogsOnlyByPost(method):
    reopen = FakeReopen()
    site = makeAdminSite(StatsStore(), None, dict, lambda: True, reactor=Clock(), reopenLogs=reopen)
    r = request(site, b"/reopen_logs", method=method, headers=[b"Content-Length: 0"])
    assert r.code == 405
    assert r.header(b"allow") == b"POST"
    assert reopen.calls == 0


def test_reopenLogsWithoutCallableIs404(world):
    assert world.get(b"/reopen_logs", method=b"POST", headers=[b"Content-Length: 0"]).code == 404


# -- issue 16 part 4: server_info, listeners, logging, healthcheck, drain_listeners, explain ---------------------

from zope.interface import implementer  # noqa: E402
from zope.interface.verify import verifyObject  # noqa: E402

from txmesh.interfaces import IMeshControl  # noqa: E402


@implementer(IMeshControl)
class FakeControl:
    """Records what the admin pages ask of the mesh."""

    def __init__(self):
        self.calls = []
        self.level = "info"
        self.twistdObserver = False

    def serverInfo(self):
        return {"version": "0.1.0", "state": "live", "uptime_seconds": 1.5}

    def describeListeners(self):
        return [{"name": "web", "protocol": "http1", "address": "tcp:0", "bound": ["127.0.0.1:5000"],
                 "connections": 2, "draining": False, "accepting": True}]

    def failHealthcheck(self):
        self.calls.append("fail")
        return {"healthcheck_failed": True}

    def okHealthcheck(self):
        self.calls.append("ok")
        return {"healthcheck_failed": False}

    def drainListeners(self, graceful):
        self.calls.append(("drain", graceful))
        return {"stopped": 1, "graceful": graceful}

    def logLevel(self):
        return {"level": self.level}

    def setLogLevel(self, name):
        if self.twistdObserver:
            raise LookupError("twistd's own observer is in use")
        if name not in ("debug", "info", "warn", "error", "critical"):
            raise ValueError("unknown log level %r" % (name,))
        self.level = name
        return self.logLevel()

    def reload(self):
        self.calls.append("reload")
        self.reloading = defer.Deferred()  # fired by the test: the reload ends later
        return self.reloading

    def explain(self, args):
        if "path" not in args:
            raise ValueError("path= missing")
        return {"args": args}


@pytest.fixture
def controlled():
    control = FakeControl()
    state = {"failed": False}
    site = makeAdminSite(StatsStore(), None, dict, lambda: not state["failed"], reactor=Clock(), control=control,
                         healthcheckFailed=lambda: state["failed"])
    return site, control, state


def post(site, target):
    return request(site, target, method=b"POST", headers=[b"Content-Length: 0"])


def test_fakeControlProvidesTheInterface():
    verifyObject(IMeshControl, FakeControl())


def test_serverInfoAndListeners(controlled):
    site, _, _ = controlled
    r = request(site, b"/server_info")
    assert (r.code, r.header(b"content-type")) == (200, b"application/json")
    assert r.json()["state"] == "live"
    assert request(site, b"/listeners").json()[0]["bound"] == ["127.0.0.1:5000"]
    index = request(site, b"/").body
    for path in (b"/server_info", b"/listeners", b"/logging", b"/healthcheck", b"/drain_listeners", b"/explain"):
        assert path in index


def test_withoutControlThePagesAre404(world):
    for path in (b"/server_info", b"/listeners", b"/logging", b"/explain"):
        assert world.get(path).code == 404
    assert world.get(b"/healthcheck/fail", method=b"POST", headers=[b"Content-Length: 0"]).code == 404


def test_healthcheckFailAndOk(controlled):
    site, control, state = controlled
    r = post(site, b"/healthcheck/fail")
    assert (r.code, r.json()) == (200, {"healthcheck_failed": True})
    state["failed"] = True
    r = request(site, b"/ready")
    assert (r.code, r.body) == (503, b"HEALTHCHECK FAILED\n")
    assert post(site, b"/healthcheck/ok").json() == {"healthcheck_failed": False}
    assert control.calls == ["fail", "ok"]


@pytest.mark.parametrize("target", [b"/healthcheck/fail", b"/healthcheck/ok", b"/drain_listeners"])
@pytest.mark.parametrize("method", [b"GET", b"HEAD", b"PUT"])
def test_actionsOnlyByPost(controlled, target, method):
    site, control, _ = controlled
    r = request(site, target, method=method, headers=[b"Content-Length: 0"])
    assert r.code == 405
    assert r.header(b"allow") == b"POST"
    assert control.calls == []


@pytest.mark.parametrize("target", [b"/healthcheck", b"/healthcheck/", b"/healthcheck/other", b"/healthcheck/ok/x"])
def test_healthcheckOtherPaths404(controlled, target):
    site, control, _ = controlled
    assert post(site, target).code == 404
    assert control.calls == []


@pytest.mark.parametrize("query, graceful", [(b"", False), (b"?graceful", True), (b"?graceful=true", True),
                                             (b"?graceful=0", False)])
def test_drainListeners(controlled, query, graceful):
    site, control, _ = controlled
    r = post(site, b"/drain_listeners" + query)
    assert (r.code, r.json()["graceful"]) == (200, graceful)
    assert control.calls == [("drain", graceful)]


def test_logging(controlled):
    site, control, _ = controlled
    assert request(site, b"/logging").json() == {"level": "info"}
    r = post(site, b"/logging?level=debug")
    assert (r.code, r.json()) == (200, {"level": "debug"})
    assert control.level == "debug"
    r = post(site, b"/logging?level=loud")
    assert (r.code, r.body) == (400, b"unknown log level 'loud'\n")
    assert post(site, b"/logging").code == 400
    control.twistdObserver = True
    r = post(site, b"/logging?level=info")
    assert r.code == 409 and b"twistd's own observer" in r.body
    r = request(site, b"/logging", method=b"PUT", headers=[b"Content-Length: 0"])
    assert (r.code, r.header(b"allow")) == (405, b"GET, HEAD, POST")


def test_explainPage(controlled):
    site, _, _ = controlled
    r = request(site, b"/explain?path=/a&header=x:1&header=y:2")
    assert r.code == 200
    assert r.json() == {"args": {"path": ["/a"], "header": ["x:1", "y:2"]}}
    r = request(site, b"/explain?method=GET")
    assert (r.code, r.body) == (400, b"path= missing\n")
    assert post(site, b"/explain?path=/").code == 405


def _postOn(site, target):
    """POST on an in-memory connection left open: (transport, response parser) for answers that come later."""
    transport = StringTransport()
    protocol = site.buildProtocol(None)
    protocol.makeConnection(transport)
    protocol.dataReceived(b"POST " + target + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                          b"Content-Length: 0\r\n\r\n")
    transport.site = protocol
    return transport


def test_post_reload_answers_once_the_reload_ends(controlled):
    site, control, _ = controlled
    transport = _postOn(site, b"/reload")
    assert control.calls == ["reload"] and transport.value() == b""  # nothing until the reload ends
    control.reloading.callback({"outcome": "applied", "error": None, "version": 2})
    r = Response(transport.value())
    assert r.code == 200 and r.header(b"content-type") == b"application/json"
    assert r.json() == {"outcome": "applied", "error": None, "version": 2}


def test_post_reload_rejected_is_400_with_the_error(controlled):
    site, control, _ = controlled
    transport = _postOn(site, b"/reload")
    control.reloading.callback({"outcome": "rejected", "error": "m.yaml:3: listeners[0].name: required",
                                "version": 1})
    r = Response(transport.value())
    assert r.code == 400 and r.json()["error"] == "m.yaml:3: listeners[0].name: required"


def test_post_reload_client_gone_before_the_end(controlled):
    site, control, _ = controlled
    transport = _postOn(site, b"/reload")
    transport.site.connectionLost(ConnectionDone())
    control.reloading.callback({"outcome": "applied", "error": None, "version": 2})  # nothing written, no error
    assert transport.value() == b""


def test_get_reload_is_405(controlled):
    site, control, _ = controlled
    assert request(site, b"/reload").code == 405
    assert control.calls == []
