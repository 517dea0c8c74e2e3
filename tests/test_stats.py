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
