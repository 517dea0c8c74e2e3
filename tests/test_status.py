"""
txmesh.status (what /status.json says) against the clock, and the admin's root, /status.json, /static/ and /help as
a client sees them.  The page itself in a browser: tests/test_status_page_browser.py.
"""

import json

from twisted.internet.task import Clock
from zope.interface.verify import verifyObject

from tests.test_admin import FakeClusterManager, FakeControl, request
from txmesh.admin import makeAdminSite
from txmesh.interfaces import IStatusView
from txmesh.request_stats import RequestStats
from txmesh.stats import StatsStore
from txmesh.status import StatusView
from txmesh.stream import StreamInfo


def ended(rs, clock, duration, code=200, cluster="web"):
    info = StreamInfo(clock.seconds() - duration, "http/1.1", "ingress")
    info.clusterName, info.routeName, info.responseCode, info.endTime = cluster, "r", code, clock.seconds()
    rs.streamEnded(info)


def world():
    clock = Clock()
    clock.advance(1000)
    rs = RequestStats(StatsStore())
    return clock, rs, StatusView(clock, FakeClusterManager(), rs, FakeControl())


def test_it_provides_the_interface():
    assert verifyObject(IStatusView, world()[2])


def test_the_first_reading_shows_totals_hosts_and_listeners_but_no_rates_yet():
    clock, rs, view = world()
    ended(rs, clock, 0.01)
    status = view.status()
    assert status["window_seconds"] is None
    assert status["server"]["state"] == "live" and status["listeners"][0]["name"] == "web"
    [web] = status["clusters"]
    assert web["name"] == "web" and web["requests_total"] == 1
    assert web["requests_per_second"] is None and web["latency_seconds"] == {"p50": None, "p90": None, "p99": None}
    assert (web["healthy_hosts"], web["total_hosts"]) == (1, 1)
    assert web["hosts"] == [{"address": "127.0.0.1:8080", "weight": 1, "healthy": True, "active_requests": 2}]
    json.dumps(status)  # all of it JSON-able


def test_rates_failures_and_percentiles_over_the_window():
    clock, rs, view = world()
    ended(rs, clock, 5.0)  # before the window's first reading: not in the figures below
    view.status()
    for _ in range(10):
        clock.advance(0.1)
        ended(rs, clock, 0.002)
    ended(rs, clock, 0.4, code=503)
    clock.advance(1.0)
    [web] = view.status()["clusters"]
    assert web["requests_total"] == 12 and web["failures_total"] == 0 + 1
    assert web["requests_per_second"] == round(11 / 2.0, 3)
    assert web["failure_rate"] == round(1 / 11, 4)
    lat = web["latency_seconds"]
    assert 0.001 < lat["p50"] <= 0.0025 and 0.25 < lat["p99"] <= 0.5


def test_readings_are_spaced_and_the_window_slides():
    clock, rs, view = world()
    view.status()
    clock.advance(0.2)
    view.status()  # closer than minInterval to the last reading: not kept
    ended(rs, clock, 0.01)
    clock.advance(0.2)
    assert view.status()["window_seconds"] == 0.4
    clock.advance(30)  # every reading left the window: nothing to compare with
    assert view.status()["window_seconds"] is None
    clock.advance(1)
    [web] = view.status()["clusters"]
    assert web["requests_per_second"] == 0.0 and web["failure_rate"] is None


def test_streams_no_cluster_took_are_shown_apart():
    clock, rs, view = world()
    ended(rs, clock, 0.01, code=404, cluster=None)
    assert view.status()["no_cluster"]["requests_total"] == 1
    assert "no_cluster" not in StatusView(clock, None, RequestStats(StatsStore())).status()


def site():
    clock, rs, view = world()
    ended(rs, clock, 0.01)
    return makeAdminSite(StatsStore(), FakeClusterManager(), dict, lambda: True,
                         reactor=clock, control=FakeControl(), requestStats=rs)


def test_the_root_serves_browsers_the_status_page_and_others_the_list_of_endpoints():
    s = site()
    page = request(s, b"/", headers=[b"Accept: text/html,application/xhtml+xml,*/*;q=0.8"])
    assert page.code == 200 and page.header(b"content-type") == b"text/html; charset=utf-8"
    assert b'<script src="/static/status.js"' in page.body and b"http" not in page.body.split(b"<body")[0]
    assert page.header(b"content-security-policy").startswith(b"default-src 'none'; script-src 'self'")
    assert page.header(b"vary") == b"accept"
    text = request(s, b"/")  # curl and scripts: the plain-text list, as before the page
    assert text.header(b"content-type").startswith(b"text/plain") and b"/status.json" in text.body
    assert request(s, b"/help").body == text.body
    listing = request(s, b"/", headers=[b"Accept: application/json"]).json()
    assert "/metrics" in listing and "/status.json" in listing


def test_status_json_and_the_static_files():
    s = site()
    status = request(s, b"/status.json").json()
    assert status["clusters"][0]["requests_total"] == 1
    js = request(s, b"/static/status.js")
    assert js.code == 200 and js.header(b"content-type") == b"text/javascript; charset=utf-8"
    assert b"/status.json" in js.body
    assert request(s, b"/static/status.css").header(b"content-type") == b"text/css; charset=utf-8"
    for target in (b"/static/", b"/static/index.html", b"/static/../admin.py", b"/static/status.js/x"):
        assert request(s, target).code == 404, target
    assert request(s, b"/static/status.js", method=b"POST", headers=[b"Content-Length: 0"]).code == 405
