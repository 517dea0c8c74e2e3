"""
The admin HTTP API, on twisted.web.

Meant for loopback (operators, health probes, Prometheus): ``/ready``, ``/stats``, ``/metrics``, ``/clusters``,
``/config_dump``, ``/registrations`` and ``/certs`` (when configured), ``/server_info``, ``/listeners``, ``/explain``,
``/status.json``, ``/static/`` (the status page's script and style), ``/help`` and the root ``/`` serve GET and HEAD
only (405 otherwise); the actions, ``POST /reopen_logs`` (for logrotate),
``POST /healthcheck/fail`` and ``/ok``, ``POST /drain_listeners``, ``POST /reload``, serve POST only, and ``/logging`` shows the log
level on GET and changes it on POST.  Every page says whether it changes state (``changesState``): those that
do take POST for the change and nothing else (405 with ``Allow: POST``).  ``/config_dump`` is redacted
(txmesh.admin_security.redactConfig); with ``admin.auth`` every request must carry the bearer token (401 with
``WWW-Authenticate: Bearer`` otherwise).  Every JSON key is snake_case.  Any other path is a 404 and
nothing is ever served from the file system (the status page's three files are package data, read once at start).

The root answers by ``Accept``: a browser (``text/html``) gets the live status page (txmesh/status_page/, polling
``/status.json`` every second), ``application/json`` the endpoints as JSON, anything else (curl) the plain-text list
of endpoints it always served, which ``/help`` also serves.  Every body is computed at request time from the
injected collaborators, so the admin API costs nothing on the data path.
"""

import importlib.resources
import json
import platform
import re

import twisted
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import InfoMetricFamily
from prometheus_client.exposition import choose_encoder
from twisted.internet import defer
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

import txmesh
from txmesh.speedups import describe as describeSpeedups
from txmesh.status import StatusView

from txmesh.admin_security import redactConfig

_log = Logger(namespace="txmesh.admin")

TEXT = b"text/plain; charset=utf-8"
JSON = b"application/json"
HTML = b"text/html; charset=utf-8"

# The status page's files (package data): path under /static/ -> (file in txmesh/status_page/, content type)
STATIC_FILES = {b"status.js": ("status.js", b"text/javascript; charset=utf-8"),
                b"status.css": ("status.css", b"text/css; charset=utf-8")}
# What the status page may load: its own script, style and /status.json; nothing inline, nothing from elsewhere
STATUS_PAGE_CSP = (b"default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
                   b"base-uri 'none'; form-action 'none'; frame-ancestors 'none'")

# Longest accepted ?filter= regex: the API is loopback-only, but a scrape should not be made to compile an essay.
MAX_FILTER_LENGTH = 1024


def _reply(request, code, body, contentType=TEXT):
    """Set the status and the headers every admin reply carries; return the body as bytes."""
    request.setResponseCode(code)
    request.setHeader(b"content-type", contentType)
    request.setHeader(b"cache-control", b"no-cache, no-store")
    request.setHeader(b"x-content-type-options", b"nosniff")
    return body if isinstance(body, bytes) else body.encode("utf-8")


def _jsonDefault(value):
    """Make config values that are not plain JSON (bytes, sets, frozen objects) printable rather than a 500."""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=repr)
    return str(value)


def _jsonReply(request, value):
    if isinstance(value, defer.Deferred):  # the workers' parent asks its workers first (txmesh.workers_parent)
        return _later(request, value, lambda v: _jsonReply(request, v))
    body = json.dumps(value, indent=2, sort_keys=True, default=_jsonDefault) + "\n"
    return _reply(request, 200, body, JSON)


def _later(request, d, render):
    """Answer ``request`` once ``d`` fires, with ``render(result)``; a ValueError is a 400, anything else a 500."""
    finished = []
    request.notifyFinish().addBoth(finished.append)  # the client may go away first

    def failed(f):
        if f.check(ValueError, LookupError):
            return _reply(request, 400, "%s\n" % (f.value,))
        _log.failure("admin: {path}", f, path=request.path)
        return _reply(request, 500, "internal error\n")

    def done(body):
        if not finished:
            request.setHeader(b"content-length", b"%d" % len(body))
            request.write(body)
            request.finish()

    d.addCallbacks(render, failed).addCallback(done)
    return NOT_DONE_YET


def _arg(request, name):
    """The first value of query argument ``name`` as str, or None."""
    values = request.args.get(name.encode("ascii"))
    if not values:
        return None
    return values[0].decode("utf-8", "replace")


def _seriesName(name, labels):
    """``name{k="v",...}``: the series key /stats?format=text prints and ?filter= matches against."""
    if not labels:
        return name
    inner = ",".join('%s="%s"' % (k, _escapeLabel(v)) for k, v in labels.items())
    return "%s{%s}" % (name, inner)


def _escapeLabel(value):
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class _Endpoint(Resource):
    """
    A leaf admin page: GET/HEAD only (``methods``), no sub-paths.  Subclasses implement ``renderPage(request) -> bytes``.

    HEAD runs the GET code and twisted.web drops the body but keeps its Content-Length.
    """

    isLeaf = True
    description = ""
    methods = (b"GET", b"HEAD")
    # every page says whether it changes the proxy's state (then only POST may change it; tests/test_admin.py
    # walks the route table and refuses a page that leaves this None)
    changesState = None
    # "/stats/" is "/stats"; the index is only "/", so "//" is a 404
    allowTrailingSlash = True

    def render(self, request):
        if request.method not in self.methods:
            request.setHeader(b"allow", b", ".join(self.methods))
            return _reply(request, 405, "method not allowed\n")
        if request.postpath and (request.postpath != [b""] or not self.allowTrailingSlash):
            return _reply(request, 404, "not found\n")
        return self.renderPage(request)


class _NotFound(_Endpoint):
    changesState = False

    def render(self, request):
        return _reply(request, 404, "not found\n")


class ReadyPage(_Endpoint):
    """
    200 ``LIVE`` while serving; 503 ``DRAINING`` once shutdown (or ``POST /drain_listeners``) began, 503
    ``HEALTHCHECK FAILED`` after ``POST /healthcheck/fail``, 503 ``NOT READY`` before startup ends.
    """

    description = "readiness: 200 LIVE, 503 DRAINING or NOT READY"
    changesState = False

    def __init__(self, isReady, isDraining, healthcheckFailed=None):
        super().__init__()
        self._isReady = isReady
        self._isDraining = isDraining
        self._healthcheckFailed = healthcheckFailed

    def renderPage(self, request):
        if self._isDraining is not None and self._isDraining():
            return _reply(request, 503, "DRAINING\n")
        if self._healthcheckFailed is not None and self._healthcheckFailed():
            return _reply(request, 503, "HEALTHCHECK FAILED\n")
        if not self._isReady():
            return _reply(request, 503, "NOT READY\n")
        return _reply(request, 200, "LIVE\n")


class StatsPage(_Endpoint):
    """
    Every counter and gauge.  JSON ``{name: [{"labels": {...}, "value": n}]}`` by default; ``?format=text`` prints
    one ``name{labels} value`` line per series.  ``?filter=REGEX`` keeps the series whose ``name{labels}`` key the
    regex matches anywhere (so ``filter=cluster="web"`` works as well as ``filter=^upstream_``).
    """

    description = "counters and gauges as JSON; ?filter=REGEX, ?format=text"
    changesState = False

    def __init__(self, stats):
        super().__init__()
        self._stats = stats

    def renderPage(self, request):
        fmt = _arg(request, "format") or "json"
        if fmt not in ("json", "text"):
            return _reply(request, 400, "format must be json or text\n")
        pattern = _arg(request, "filter")
        match = None
        if pattern:
            if len(pattern) > MAX_FILTER_LENGTH:
                return _reply(request, 400, "filter longer than %d characters\n" % MAX_FILTER_LENGTH)
            try:
                match = re.compile(pattern).search
            except re.error as e:
                return _reply(request, 400, "invalid filter regex: %s\n" % (e,))
        snapshot = {}
        for name, series in self._stats.snapshot().items():
            kept = [s for s in series if match is None or match(_seriesName(name, s["labels"]))]
            if kept:
                snapshot[name] = kept
        if fmt == "json":
            return _jsonReply(request, snapshot)
        lines = []
        for name in sorted(snapshot):
            for s in snapshot[name]:
                value = s["value"]
                if isinstance(value, dict):  # a histogram: count, sum, quantiles and buckets on the one line
                    value = json.dumps(value, sort_keys=True, separators=(",", ":"))
                lines.append("%s %s\n" % (_seriesName(name, s["labels"]), value))
        lines.sort()
        return _reply(request, 200, "".join(lines))


class BuildInfo:
    """
    ``txmesh_build_info`` (Prometheus' ``*_info`` idiom, a gauge of 1): txmesh's version, Python's, Twisted's and the
    hot path's mode (txmesh/speedups.py: ``compiled``, ``partly-compiled`` or ``pure-python``).
    """

    def collect(self):
        info = InfoMetricFamily("txmesh_build", "txmesh's version, Python's and Twisted's, and the hot path's mode")
        info.add_metric([], {"version": txmesh.__version__, "python": platform.python_version(),
                             "twisted": twisted.__version__, "mode": describeSpeedups()["mode"]})
        yield info


class MetricsPage(_Endpoint):
    """
    Prometheus exposition of the StatsStore, ``txmesh_build_info`` and prometheus_client's process collector
    (``process_cpu_seconds_total``, ``process_resident_memory_bytes``, ``process_open_fds``,
    ``process_start_time_seconds``, ...: the names every process dashboard reads), rendered by prometheus_client
    from a private registry (so the process-global default registry and its other import-time collectors play no
    part).  The Prometheus text format unless ``Accept`` asks for OpenMetrics.
    """

    description = "Prometheus text exposition"
    changesState = False

    def __init__(self, stats):
        super().__init__()
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(stats)
        self._registry.register(BuildInfo())
        ProcessCollector(registry=self._registry)

    def renderPage(self, request):
        accept = (request.getHeader(b"accept") or b"").decode("latin-1")
        if "application/openmetrics-text" in accept:
            encoder, contentType = choose_encoder(accept)
        else:
            encoder, contentType = generate_latest, CONTENT_TYPE_LATEST
        return _reply(request, 200, encoder(self._registry), contentType.encode("ascii"))


class ClustersPage(_Endpoint):
    """The cluster manager's ``describe()``: per cluster its lb policy and hosts with health, load and counters."""

    description = "clusters, hosts and their counters as JSON"
    changesState = False

    def __init__(self, clusterManager):
        super().__init__()
        self._clusterManager = clusterManager

    def renderPage(self, request):
        clusters = [] if self._clusterManager is None else self._clusterManager.describe()
        return _jsonReply(request, clusters)


class ConfigDumpPage(_Endpoint):
    """The loaded configuration as JSON."""

    description = "the loaded configuration as JSON"
    changesState = False

    def __init__(self, configDump):
        super().__init__()
        self._configDump = configDump

    def renderPage(self, request):
        return _jsonReply(request, redactConfig(self._configDump()))


class RegistrationsPage(_Endpoint):
    """The local app's registration (txmesh.discovery.registration): what is published where, and its health."""

    description = "the local app's registrations and its health check as JSON"
    changesState = False

    def __init__(self, describe):
        super().__init__()
        self._describe = describe

    def renderPage(self, request):
        return _jsonReply(request, self._describe())


class CertsPage(_Endpoint):
    """
    ``/certs`` (Envoy's): each TLS listener's certificates and CA bundle as loaded now (after rotation): path,
    serial, SANs, not_after, days_until_expiration.  Never a private key.
    """

    description = "the listeners' TLS certificates (path, serial, SANs, expiry) as JSON"
    changesState = False

    def __init__(self, describe):
        super().__init__()
        self._describe = describe

    def renderPage(self, request):
        return _jsonReply(request, {"certificates": self._describe()})


class ReopenLogsPage(_Endpoint):
    """
    ``POST /reopen_logs``: reopen every access-log file, as Envoy's endpoint of that name (and SIGUSR1) do.
    200 ``OK`` when all reopened; 500 naming each path that could not be (its lines keep going to the old file).
    """

    description = "POST: reopen the access-log files (after logrotate)"
    changesState = True
    methods = (b"POST",)

    def __init__(self, reopenLogs):
        super().__init__()
        self._reopenLogs = reopenLogs

    def renderPage(self, request):
        result = self._reopenLogs()
        if isinstance(result, defer.Deferred):  # the workers' parent asks its workers
            return _later(request, result, lambda r: self._answer(request, r))
        return self._answer(request, result)

    def _answer(self, request, result):
        reopened, failures = result
        if failures:
            lines = ["reopened %d log file(s); %d failed:\n" % (reopened, len(failures))]
            lines.extend("%s: %s\n" % failure for failure in failures)
            return _reply(request, 500, "".join(lines))
        return _reply(request, 200, "OK\n")


class ServerInfoPage(_Endpoint):
    """Versions, reactor, uptime, state, config file and digest, node (IMeshControl.serverInfo)."""

    description = "version, uptime, state, config file and digest, node as JSON"
    changesState = False

    def __init__(self, control):
        super().__init__()
        self._control = control

    def renderPage(self, request):
        return _jsonReply(request, self._control.serverInfo())


class ListenersPage(_Endpoint):
    """Each listener: name, protocol, configured and bound address, open connections, draining."""

    description = "listeners: addresses, connections, draining as JSON"
    changesState = False

    def __init__(self, control):
        super().__init__()
        self._control = control

    def renderPage(self, request):
        return _jsonReply(request, self._control.describeListeners())


class LoggingPage(_Endpoint):
    """``GET /logging``: the operator log's level; ``POST /logging?level=debug|info|warn|error|critical`` sets it."""

    description = "the log level as JSON; POST ?level=debug|info|warn|error|critical changes it"
    changesState = True
    methods = (b"GET", b"HEAD", b"POST")

    def __init__(self, control):
        super().__init__()
        self._control = control

    def renderPage(self, request):
        if request.method != b"POST":
            if b"level" in request.args:  # a change asked with GET: refused, not silently shown
                request.setHeader(b"allow", b"POST")
                return _reply(request, 405, "changing the level needs POST\n")
            return _jsonReply(request, self._control.logLevel())
        level = _arg(request, "level")
        if not level:
            return _reply(request, 400, "POST /logging?level=debug|info|warn|error|critical\n")
        try:
            return _jsonReply(request, self._control.setLogLevel(level))
        except ValueError as e:
            return _reply(request, 400, "%s\n" % (e,))
        except LookupError as e:
            return _reply(request, 409, "%s\n" % (e.args[0],))


class HealthcheckPage(_Endpoint):
    """
    ``POST /healthcheck/fail``: ``/ready`` answers 503 and the local app's registrations are withdrawn (Envoy's
    endpoint of that name: callers take the sidecar out of rotation before maintenance); ``POST /healthcheck/ok``
    undoes it.  Both are POST only; other sub-paths are 404.
    """

    description = "POST /healthcheck/fail, /healthcheck/ok: fail or restore readiness"
    changesState = True
    methods = (b"POST",)

    def __init__(self, control):
        super().__init__()
        self._actions = {b"fail": control.failHealthcheck, b"ok": control.okHealthcheck}

    def render(self, request):
        action = self._actions.get(request.postpath[0]) if len(request.postpath) == 1 else None
        if action is None:
            return _reply(request, 404, "not found\n")
        if request.method not in self.methods:
            request.setHeader(b"allow", b", ".join(self.methods))
            return _reply(request, 405, "method not allowed\n")
        return _jsonReply(request, action())


class DrainListenersPage(_Endpoint):
    """
    ``POST /drain_listeners``: every listener stops accepting (its port is closed, so new connections are
    refused) while the open ones finish; ``?graceful`` also asks each open connection to close once its in-flight
    requests are answered.  ``/ready`` answers DRAINING from then on; there is no undo but a restart.
    """

    description = "POST: stop accepting on every listener (?graceful: close connections once idle)"
    changesState = True
    methods = (b"POST",)

    def __init__(self, control):
        super().__init__()
        self._control = control

    def renderPage(self, request):
        # ``?graceful`` alone (no ``=``) is not in request.args: read the query itself
        query = request.uri.partition(b"?")[2]
        params = dict(p.partition(b"=")[::2] for p in query.split(b"&") if p)
        graceful = b"graceful" in params and params[b"graceful"] not in (b"0", b"false", b"no")
        return _jsonReply(request, self._control.drainListeners(graceful))


class ReloadPage(_Endpoint):
    """
    ``POST /reload``: re-read the config file and apply it, as SIGHUP does (IMeshControl.reload).  Answers once the
    reload is done: 200 with ``{"outcome": "applied"|"unchanged", "version": ..., "changes": ...}``, or 400 with
    ``{"outcome": "rejected", "error": "file:line: key.path: reason", ...}`` (the old config keeps serving).
    """

    description = "POST: re-read the config file and apply it (as SIGHUP)"
    changesState = True
    methods = (b"POST",)

    def __init__(self, control):
        super().__init__()
        self._control = control

    def renderPage(self, request):
        finished = []
        request.notifyFinish().addBoth(finished.append)  # the client may go away before the reload ends

        def done(result):
            if finished:
                return
            body = _reply(request, 400 if result["outcome"] == "rejected" else 200,
                          json.dumps(result, indent=2, sort_keys=True, default=_jsonDefault) + "\n", JSON)
            request.setHeader(b"content-length", b"%d" % len(body))
            request.write(body)
            request.finish()

        self._control.reload().addCallback(done)
        return NOT_DONE_YET


class ExplainPage(_Endpoint):
    """
    ``/explain?listener=..&method=..&authority=..&path=..&header=name:value`` (HTTP, gRPC) or
    ``?listener=..&interface=..&method=..&version=..&group=..&attachment=k:v`` (Dubbo): which virtual host, route,
    cluster and host the listener would choose, and which matcher failed for each earlier route (txmesh.explain).
    """

    description = "which vhost, route, cluster and host a request would get, and why"
    changesState = False

    def __init__(self, control):
        super().__init__()
        self._control = control

    def renderPage(self, request):
        args = {k.decode("utf-8", "replace"): [v.decode("utf-8", "replace") for v in vs]
                for k, vs in request.args.items()}
        try:
            return _jsonReply(request, self._control.explain(args))
        except ValueError as e:
            return _reply(request, 400, "%s\n" % (e,))


class HelpPage(_Endpoint):
    """A plain-text list of the endpoints, one per line (what ``/`` shows to anything but a browser)."""

    description = "this list"
    changesState = False
    allowTrailingSlash = False

    def __init__(self, pages):
        super().__init__()
        self._pages = pages

    def renderPage(self, request):
        width = max(len(path) for path in self._pages) + 2
        lines = ["txmesh admin\n\n", "%-*s %s\n" % (width, "/", "the live status page (browsers); this list (others)")]
        for path, page in self._pages.items():
            lines.append("%-*s %s\n" % (width, "/" + path, page.description))
        return _reply(request, 200, "".join(lines))


class IndexPage(HelpPage):
    """
    The admin root.  By ``Accept``: ``text/html`` (a browser) gets the status page, ``application/json`` the
    endpoints as ``{"/path": description}``, anything else the plain-text list (as before the status page).
    """

    allowTrailingSlash = False

    def __init__(self, pages, html):
        super().__init__(pages)
        self._html = html

    def renderPage(self, request):
        request.setHeader(b"vary", b"accept")
        accept = request.getHeader(b"accept") or b""
        if b"text/html" in accept:
            request.setHeader(b"content-security-policy", STATUS_PAGE_CSP)
            return _reply(request, 200, self._html, HTML)
        if b"application/json" in accept:
            return _jsonReply(request, {"/" + path: page.description for path, page in self._pages.items()})
        return HelpPage.renderPage(self, request)


class StatusJsonPage(_Endpoint):
    """``/status.json``: what the status page polls (L{txmesh.interfaces.IStatusView.status})."""

    description = "listeners, clusters, hosts, requests/s, failures and latency per cluster, as JSON (the status page's)"
    changesState = False

    def __init__(self, view):
        super().__init__()
        self.view = view  # an IStatusView (set by makeAdminSite once the site's reactor is known)

    def renderPage(self, request):
        return _jsonReply(request, self.view.status())


class StaticPage(_Endpoint):
    """``/static/<name>``: the status page's script and style, from package data read once (L{STATIC_FILES})."""

    description = "the status page's script and style"
    changesState = False
    allowTrailingSlash = False

    def __init__(self, files):
        super().__init__()
        self._files = files

    def render(self, request):
        if request.method in self.methods and len(request.postpath) == 1 and request.postpath[0] in self._files:
            body, contentType = self._files[request.postpath[0]]
            request.setHeader(b"content-security-policy", STATUS_PAGE_CSP)
            return _reply(request, 200, body, contentType)
        if request.method not in self.methods:
            request.setHeader(b"allow", b", ".join(self.methods))
            return _reply(request, 405, "method not allowed\n")
        return _reply(request, 404, "not found\n")


def _statusPageFile(name):
    """A file of txmesh/status_page/ (package data) as bytes."""
    return importlib.resources.files("txmesh").joinpath("status_page", name).read_bytes()


class AdminRoot(Resource):
    """Dispatches the first path segment to a page; everything else is a 404."""

    def __init__(self, pages, index):
        super().__init__()
        self.pages = dict(pages)  # the route table: first path segment (str) -> page
        self._pages = {path.encode("ascii"): page for path, page in pages.items()}
        self._index = index
        self._notFound = _NotFound()

    def getChild(self, path, request):
        if path == b"":
            return self._index
        return self._pages.get(path, self._notFound)

    def render(self, request):
        # Reached only for an empty request path, which twisted.web treats as "/".
        return self._index.render(request)


class _Unauthorized(_Endpoint):
    """401 with a challenge (RFC 6750), whatever the path and method."""

    changesState = False

    def __init__(self, scheme, error):
        super().__init__()
        challenge = scheme + b' realm="txmesh admin"'
        self._challenge = challenge + b', error="invalid_token"' if error else challenge

    def render(self, request):
        request.setHeader(b"www-authenticate", self._challenge)
        return _reply(request, 401, "unauthorized\n")


class AdminSite(Site):
    """
    A Site that does not write a line per admin request (a scrape every few seconds would drown the log), and asks
    its L{txmesh.interfaces.IAdminAuthenticator} (if any) before any page runs.
    """

    authenticator = None
    unauthorized = None  # a Counter of the requests refused

    def log(self, request):
        pass

    def getResourceFor(self, request):
        authenticator = self.authenticator
        if authenticator is not None:
            authorization = request.getHeader(b"authorization")
            if not authenticator.authenticate(authorization):
                if self.unauthorized is not None:
                    self.unauthorized.value += 1
                return _Unauthorized(authenticator.scheme, authorization is not None)
        return Site.getResourceFor(self, request)


def makeAdminSite(stats, clusterManager, configDump, isReady, *, isDraining=None, reactor=None, reopenLogs=None,
                  registrations=None, control=None, healthcheckFailed=None, requestStats=None, certificates=None,
                  authenticator=None):
    """
    Build the admin API.

    @param stats: the process's L{txmesh.stats.StatsStore}.
    @param clusterManager: has ``describe() -> list[dict]``; None serves an empty list.
    @param configDump: callable returning the loaded config as a plain dict.
    @param isReady: callable -> bool, false until the listeners are bound.
    @param isDraining: optional callable -> bool, true once a graceful stop began (``/ready`` says DRAINING).
    @param reactor: the IReactorTime for the HTTP channels' timeouts; twisted.web's default (the global reactor)
        when None, so tap.py should pass its reactor.
    @param reopenLogs: optional callable -> (number reopened, [(path, reason), ...]) behind ``POST /reopen_logs``
        (the service's L{txmesh.service.MeshService.reopenLogs}); without it that path is a 404.
    @param registrations: optional callable -> dict behind ``/registrations`` (the local app's registration);
        without it that path is a 404.
    @param control: optional L{txmesh.interfaces.IMeshControl} behind ``/server_info``, ``/listeners``,
        ``/logging``, ``POST /healthcheck/fail`` and ``/ok``, ``POST /drain_listeners``, ``POST /reload`` and
        ``/explain``; without it
        those paths are 404s.
    @param healthcheckFailed: optional callable -> bool, true after ``POST /healthcheck/fail`` (``/ready`` says so).
    @param requestStats: optional L{txmesh.interfaces.IRequestStats} whose per-cluster totals ``/status.json`` shows
        (requests/s, failures, latency); without it those figures are empty.
    @param certificates: optional callable -> list of dicts behind ``/certs`` (the listeners' TLS material).
    @param authenticator: optional L{txmesh.interfaces.IAdminAuthenticator} every request must pass (401 with its
        challenge otherwise, counted as ``admin_rq_unauthorized``); None: the address alone guards the API.
    @return: a L{twisted.web.server.Site} to listen on with an endpoint.
    """
    pages = {
        "ready": ReadyPage(isReady, isDraining, healthcheckFailed),
        "stats": StatsPage(stats),
        "metrics": MetricsPage(stats),
        "clusters": ClustersPage(clusterManager),
        "config_dump": ConfigDumpPage(configDump),
    }
    if reopenLogs is not None:
        pages["reopen_logs"] = ReopenLogsPage(reopenLogs)
    if registrations is not None:
        pages["registrations"] = RegistrationsPage(registrations)
    if certificates is not None:
        pages["certs"] = CertsPage(certificates)
    if control is not None:
        pages.update({"server_info": ServerInfoPage(control), "listeners": ListenersPage(control),
                      "logging": LoggingPage(control), "healthcheck": HealthcheckPage(control),
                      "drain_listeners": DrainListenersPage(control), "explain": ExplainPage(control),
                      "reload": ReloadPage(control)})
    statusPage = pages["status.json"] = StatusJsonPage(None)
    pages["static"] = StaticPage({path: (_statusPageFile(name), contentType)
                                  for path, (name, contentType) in STATIC_FILES.items()})
    pages["help"] = HelpPage(pages)
    site = AdminSite(AdminRoot(pages, IndexPage(pages, _statusPageFile("index.html"))), reactor=reactor)
    site.displayTracebacks = False
    # the status page's readings are timed by the site's reactor (the one given, else twisted.web's default)
    statusPage.view = StatusView(site.reactor, clusterManager, requestStats, control)
    if authenticator is not None:
        site.authenticator = authenticator
        site.unauthorized = stats.counter("admin_rq_unauthorized", (), "Admin requests refused: no or a wrong token")
    return site
