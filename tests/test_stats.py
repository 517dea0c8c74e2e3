"""txmesh.stats: LabelledCounter (the counters, scopes and exposition are exercised through tests/test_admin.py)."""

from prometheus_client import generate_latest
from prometheus_client.registry import CollectorRegistry

from txmesh.stats import Counter, LabelledCounter, StatsStore


def _labelled(store=None, **kw):
    store = store if store is not None else StatsStore()
    return store, LabelledCounter(store.scope(listener="in"), "downstream_rq_error", "Local error replies by cause",
                                  "cause", **kw)


def test_inc_counts_per_value_under_the_scope_labels():
    store, errors = _labelled()
    errors.inc("no_route")
    errors.inc("no_route")
    errors.inc("timeout", 3)
    assert store.value("downstream_rq_error", listener="in", cause="no_route") == 2
    assert store.value("downstream_rq_error", listener="in", cause="timeout") == 3
    assert store.snapshot()["downstream_rq_error"] == [
        {"labels": {"listener": "in", "cause": "no_route"}, "value": 2},
        {"labels": {"listener": "in", "cause": "timeout"}, "value": 3},
    ]


def test_item_is_the_stores_counter_made_once():
    store, errors = _labelled()
    c = errors["no_route"]
    assert isinstance(c, Counter)
    assert errors["no_route"] is c
    assert store.counter("downstream_rq_error", (("listener", "in"), ("cause", "no_route"))) is c


def test_label_function_formats_each_value_once():
    calls = []

    def label(code):
        calls.append(code)
        return code.decode("ascii") if code else "none"

    store, statuses = _labelled(label=label)
    for code in (b"0", b"0", b"", b"14"):
        statuses.inc(code)
    assert calls == [b"0", b"", b"14"]
    assert store.value("downstream_rq_error", listener="in", cause="none") == 1
    assert store.value("downstream_rq_error", listener="in", cause="0") == 2


def test_non_string_values_use_str():
    store, statuses = _labelled()
    statuses.inc(20)
    assert store.value("downstream_rq_error", listener="in", cause="20") == 1


def test_help_text_reaches_metrics():
    store, errors = _labelled()
    errors.inc("no_route")
    registry = CollectorRegistry()
    registry.register(store)
    text = generate_latest(registry).decode()
    # /metrics names follow Prometheus' conventions (txmesh.metric_names): downstream_rq_error is local replies
    assert "# HELP txmesh_downstream_local_replies_total Local error replies by cause" in text
    assert 'txmesh_downstream_local_replies_total{cause="no_route",listener="in"} 1.0' in text


def test_store_cap_still_applies():
    store, errors = _labelled(StatsStore(maxSeriesPerMetric=2))
    for cause in ("a", "b", "c", "d"):
        errors.inc(cause)
    assert store.value("downstream_rq_error", listener="_other", cause="_other") == 2
    assert errors["c"] is errors["d"]


def test_computed_gauge_asked_again_reads_the_newest_reader():
    """A component made again under the same labels (an on-demand cluster re-made after idle removal) owns the series."""
    store = StatsStore()
    store.scope(cluster="c").computedGauge("age", lambda: 5.0)
    assert store.value("age", cluster="c") == 5.0
    store.scope(cluster="c").computedGauge("age", lambda: 1.0)
    assert store.value("age", cluster="c") == 1.0 and len(store.snapshot()["age"]) == 1


# -- histograms (issue 16 part 1) ----------------------------------------------------------------------------------


def test_histogram_counts_each_observation_in_the_bucket_of_its_inclusive_upper_bound():
    from txmesh.stats import Histogram

    h = Histogram((0.1, 1.0))
    for v in (0.05, 0.1, 0.5, 1.0, 7.0):
        h.observe(v)
    assert h.counts == [2, 2, 1] and h.value == 5 and abs(h.sum - 8.65) < 1e-9
    assert h.cumulative() == [("0.1", 2), ("1.0", 4), ("+Inf", 5)]


def test_quantiles_interpolate_as_histogram_quantile_does():
    from txmesh.stats import quantile

    bounds = (0.1, 1.0, 10.0)
    assert quantile(bounds, [0, 0, 0, 0], 0.5) is None
    assert quantile(bounds, [4, 0, 0, 0], 0.5) == 0.05  # the first bucket starts at 0
    assert abs(quantile(bounds, [0, 10, 0, 0], 0.9) - 0.91) < 1e-9
    assert quantile(bounds, [1, 0, 0, 9], 0.99) == 10.0  # in +Inf: the highest finite bound


def test_histograms_reach_metrics_as_histogram_families_and_stats_as_summaries():
    from prometheus_client.parser import text_string_to_metric_families

    store = StatsStore()
    h = store.scope(listener="in").histogram("request_duration_seconds", help="Stream durations")
    assert store.scope(listener="in").histogram("request_duration_seconds") is h
    h.observe(0.003)
    h.observe(0.2)
    registry = CollectorRegistry()
    registry.register(store)
    [family] = text_string_to_metric_families(generate_latest(registry).decode())
    assert (family.name, family.type, family.documentation) == (
        "txmesh_request_duration_seconds", "histogram", "Stream durations")
    samples = {(s.name, s.labels.get("le")): s.value for s in family.samples}
    assert samples[("txmesh_request_duration_seconds_bucket", "0.0025")] == 0
    assert samples[("txmesh_request_duration_seconds_bucket", "0.005")] == 1
    assert samples[("txmesh_request_duration_seconds_bucket", "+Inf")] == 2
    assert samples[("txmesh_request_duration_seconds_count", None)] == 2
    assert abs(samples[("txmesh_request_duration_seconds_sum", None)] - 0.203) < 1e-9
    [series] = store.snapshot()["request_duration_seconds"]
    assert series["labels"] == {"listener": "in"}
    assert series["value"]["count"] == 2 and series["value"]["p50"] == 0.005
    assert store.value("request_duration_seconds", listener="in") == 2
