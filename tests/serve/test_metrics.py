"""hamjax.serve.metrics: the series and their names, the drift gauges' worst-16 window, JSON log lines."""

import json
import logging

from hamjax.serve import metrics

NAMES = {
    "hamjax_requests",
    "hamjax_request_latency_seconds",
    "hamjax_batch_size",
    "hamjax_queue_depth",
    "hamjax_cache_hits",
    "hamjax_cache_misses",
    "hamjax_invalid_inputs",
    "hamjax_drift_psi_max",
    "hamjax_drift_psi",
    "hamjax_ab_p_value",
    "hamjax_inflight_requests",
}


def test_every_series_the_issue_names_is_in_its_own_registry():
    a, b = metrics.Metrics(max_batch=8), metrics.Metrics(max_batch=8)
    assert {m.name for m in a.registry.collect()} == NAMES
    a.requests.labels(variant="v", code="200").inc()
    text, content_type = a.render()
    assert b'hamjax_requests_total{code="200",variant="v"} 1.0' in text and content_type.startswith("text/plain")
    assert b"hamjax_requests_total{" not in b.render()[0]  # registries are not shared between apps


def test_batch_buckets_end_at_max_batch():
    assert metrics.batch_buckets(1) == (1.0,)
    assert metrics.batch_buckets(32) == (1.0, 2.0, 4.0, 8.0, 16.0, 32.0)
    assert metrics.batch_buckets(24) == (1.0, 2.0, 4.0, 8.0, 16.0, 24.0)


def test_only_the_worst_features_are_exported_and_those_that_leave_are_removed():
    m = metrics.Metrics(max_batch=4)
    worst = {f"x[{i}]": 1.0 / (i + 1) for i in range(20)}
    m.set_drift("v", 1.0, worst)
    shown = {s.labels["feature"] for fam in m.registry.collect() if fam.name == "hamjax_drift_psi" for s in fam.samples}
    assert shown == {f"x[{i}]" for i in range(metrics.WORST_FEATURES)}
    m.set_drift("v", 0.5, {"x[99]": 0.5})
    shown = {s.labels["feature"] for fam in m.registry.collect() if fam.name == "hamjax_drift_psi" for s in fam.samples}
    assert shown == {"x[99]"}


def test_json_lines_carry_the_request_fields_and_errors():
    record = logging.LogRecord("hamjax.serve", logging.WARNING, "", 0, "predict %s", ("failed",), None)
    record.request_id, record.variant, record.status = "r1", "a", 503
    line = json.loads(metrics.JsonFormatter().format(record))
    assert line["message"] == "predict failed" and line["level"] == "warning"
    assert (line["request_id"], line["variant"], line["status"]) == ("r1", "a", 503)
    assert line["time"].endswith("+00:00")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        import sys

        record.exc_info = sys.exc_info()
    assert "RuntimeError: boom" in json.loads(metrics.JsonFormatter().format(record))["error"]
