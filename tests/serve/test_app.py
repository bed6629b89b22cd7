import io
import json
import logging
import threading

import numpy as np
import pytest
from fastapi.testclient import TestClient

from hamjax.serve.app import create_app
from hamjax.serve.config import ServeConfig
from hamjax.serve.metrics import JsonFormatter


class Gated:
    """A fake model whose warm-up and predictions wait for events; it doubles its input."""

    name, kind, version, reference, input_shape = "default", "fake", "0123456789abcdef", None, (2,)

    def __init__(self, fail_warm=False):
        self.warm_gate, self.predict_gate = threading.Event(), threading.Event()
        self.fail_warm = fail_warm
        self.entered = threading.Semaphore(0)

    def validate(self, x):
        return np.asarray(x, np.float32)

    def warm(self):
        self.warm_gate.wait(5)
        if self.fail_warm:
            raise RuntimeError("no kernel for this shape")
        return (1,)

    def predict(self, x):
        self.entered.release()
        self.predict_gate.wait(5)
        return 2 * x


def _config(path, **kw):
    return ServeConfig(models={"default": str(path)}, max_batch=8, max_wait_ms=1.0, **kw)


@pytest.fixture(scope="module")
def client(linear_onnx, wait_ready):
    app = create_app(_config(linear_onnx[0], cache_size=16))
    with TestClient(app) as c:
        wait_ready(c)
        yield c


def _metric(client, line_start, headers=None):
    text = client.get("/metrics", headers=headers or {}).text
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(line_start)]
    return values[0] if values else 0.0


def test_predict_answers_outputs_request_id_variant_and_version(client, linear_onnx):
    _, w, b = linear_onnx
    x = [[0.5, -1.0, 2.0, 0.25], [1.0, 2.0, 3.0, 4.0]]
    r = client.post("/v1/predict", json={"inputs": x}, headers={"X-Request-Id": "req-1"})
    assert r.status_code == 200 and r.headers["x-request-id"] == "req-1"
    body = r.json()
    np.testing.assert_allclose(body["outputs"], np.array(x, np.float32) @ w + b, rtol=1e-5)
    assert (body["request_id"], body["variant"]) == ("req-1", "default")
    assert body["model_version"] == client.get("/readyz").json()["variants"]["default"]
    fresh = client.post("/v1/predict", json={"inputs": x}, headers={"X-Request-Id": "bad id with spaces"})
    assert fresh.json()["request_id"] != "bad id with spaces" and len(fresh.json()["request_id"]) == 32


def test_npy_bodies_are_read_without_pickle(client, linear_onnx):
    _, w, b = linear_onnx
    x = np.random.default_rng(1).normal(size=(3, 4)).astype(np.float32)
    buf = io.BytesIO()
    np.save(buf, x)
    r = client.post("/v1/predict", content=buf.getvalue(), headers={"Content-Type": "application/x-npy"})
    assert r.status_code == 200
    np.testing.assert_allclose(r.json()["outputs"], x @ w + b, rtol=1e-5)


def test_a_repeated_input_is_served_from_the_cache(client):
    x = {"inputs": [[9.0, 8.0, 7.0, 6.0]]}
    hits = _metric(client, "hamjax_cache_hits_total")
    batches = _metric(client, 'hamjax_batch_size_count{variant="default"}')
    first, second = client.post("/v1/predict", json=x).json(), client.post("/v1/predict", json=x).json()
    assert first["outputs"] == second["outputs"] and first["request_id"] != second["request_id"]
    assert _metric(client, "hamjax_cache_hits_total") == hits + 1
    assert _metric(client, 'hamjax_batch_size_count{variant="default"}') == batches + 1  # the hit skipped the batcher


def test_metrics_expose_every_series_of_the_brief(client):
    client.post("/v1/predict", json={"inputs": [[1, 2, 3, 4]]})
    client.post("/v1/predict", json={"inputs": [[1, 2, 3]]})
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    for name in (
        "hamjax_requests_total",
        "hamjax_request_latency_seconds_bucket",
        "hamjax_batch_size_bucket",
        "hamjax_queue_depth",
        "hamjax_cache_hits_total",
        "hamjax_cache_misses_total",
        "hamjax_invalid_inputs_total",
        "hamjax_drift_psi_max",
        "hamjax_drift_psi",
        "hamjax_ab_p_value",
        "hamjax_inflight_requests",
    ):
        assert name in r.text, name
    assert 'hamjax_invalid_inputs_total{reason="shape"}' in r.text
    assert 'hamjax_requests_total{code="422",variant="default"}' in r.text
    assert 'hamjax_batch_size_bucket{le="8.0",variant="default"}' in r.text


def test_probes_answer(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json()["status"] == "ready"


def test_one_json_log_line_per_request_without_the_inputs(client, caplog):
    with caplog.at_level(logging.INFO, logger="hamjax.serve"):
        client.post("/v1/predict", json={"inputs": [[123.456, 2, 3, 4]]}, headers={"X-Request-Id": "log-1"})
    (record,) = [r for r in caplog.records if getattr(r, "request_id", None) == "log-1"]
    line = json.loads(JsonFormatter().format(record))
    assert {k: line[k] for k in ("request_id", "variant", "status", "rows")} == {
        "request_id": "log-1",
        "variant": "default",
        "status": 200,
        "rows": 1,
    }
    assert line["latency_ms"] > 0 and "time" in line and "123.456" not in json.dumps(line)


def test_readyz_waits_for_warm_up_and_predictions_wait_too(tmp_path):
    model = Gated()
    model.predict_gate.set()
    app = create_app(_config(tmp_path / "unused.onnx"), models={"default": model})
    with TestClient(app) as c:
        assert c.get("/readyz").status_code == 503 and c.get("/readyz").json()["status"] == "warming"
        assert c.get("/healthz").status_code == 200
        refused = c.post("/v1/predict", json={"inputs": [[1, 2]]})
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
        model.warm_gate.set()
        for _ in range(500):
            if c.get("/readyz").status_code == 200:
                break
        assert c.post("/v1/predict", json={"inputs": [[1, 2]]}).json()["outputs"] == [[2.0, 4.0]]


def test_a_failed_warm_up_keeps_the_server_unready_with_the_reason(tmp_path):
    model = Gated(fail_warm=True)
    model.warm_gate.set()
    app = create_app(_config(tmp_path / "unused.onnx"), models={"default": model})
    with TestClient(app) as c:
        for _ in range(500):
            r = c.get("/readyz")
            if r.json()["status"] == "failed":
                break
        assert r.status_code == 503 and "no kernel for this shape" in r.json()["detail"]


def test_a_full_queue_answers_503_with_retry_after(tmp_path, wait_ready):
    model = Gated()
    model.warm_gate.set()
    config = ServeConfig(models={"default": str(tmp_path / "m.onnx")}, max_batch=1, max_wait_ms=0.0, max_queue=1)
    app = create_app(config, models={"default": model})
    with TestClient(app) as c:
        wait_ready(c)
        results = []
        threads = [threading.Thread(target=lambda: results.append(c.post("/v1/predict", json={"inputs": [[1, 2]]})))]
        threads[0].start()
        assert model.entered.acquire(timeout=5)  # the first request runs (and blocks) in the worker
        threads.append(
            threading.Thread(target=lambda: results.append(c.post("/v1/predict", json={"inputs": [[3, 4]]})))
        )
        threads[1].start()
        for _ in range(500):
            if app.state.serve.batchers["default"].depth == 1:
                break
            threading.Event().wait(0.005)
        r = c.post("/v1/predict", json={"inputs": [[5, 6]]})
        assert r.status_code == 503 and r.headers["retry-after"] == "1" and "max_queue=1" in r.json()["detail"]
        model.predict_gate.set()
        for t in threads:
            t.join(5)
        assert sorted(r.status_code for r in results) == [200, 200]


def test_draining_refuses_new_predictions_and_readiness(client):
    state = client.app.state.serve
    state.begin_drain()
    try:
        r = client.post("/v1/predict", json={"inputs": [[1, 2, 3, 4]]})
        assert r.status_code == 503 and r.json()["detail"] == "the server is shutting down"
        assert client.get("/readyz").json()["status"] == "draining"
        assert client.get("/healthz").status_code == 200
    finally:
        state.draining = False


def test_the_lifespan_drains_the_batchers(linear_onnx, wait_ready):
    app = create_app(_config(linear_onnx[0]))
    with TestClient(app) as c:
        wait_ready(c)
        assert c.post("/v1/predict", json={"inputs": [[1, 2, 3, 4]]}).status_code == 200
    assert app.state.serve.draining and all(b.closed for b in app.state.serve.batchers.values())


def test_a_token_guards_the_api_and_metrics_but_not_the_probes(linear_onnx, wait_ready):
    app = create_app(_config(linear_onnx[0], token="s3cret"))
    good = {"Authorization": "Bearer s3cret"}
    with TestClient(app) as c:
        wait_ready(c)
        assert c.get("/healthz").status_code == 200
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret"}):
            r = c.post("/v1/predict", json={"inputs": [[1, 2, 3, 4]]}, headers=headers)
            assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
            assert c.get("/metrics", headers=headers).status_code == 401
            assert c.get("/v1/monitor", headers=headers).status_code == 401
        assert c.post("/v1/predict", json={"inputs": [[1, 2, 3, 4]]}, headers=good).status_code == 200
        assert _metric(c, 'hamjax_requests_total{code="401"', headers=good) == 3


def test_monitor_reports_drift_against_the_saved_statistics(tmp_path, onnx_writer, wait_ready):
    from hamjax.serve.reference import InputStats, stats_path

    path, _, _ = onnx_writer(tmp_path / "m.onnx")
    InputStats.from_data(np.random.default_rng(0).normal(size=(2000, 4))).save(stats_path(path))
    bare, _, _ = onnx_writer(tmp_path / "bare.onnx")
    config = ServeConfig(models={"default": str(path)}, max_batch=8)
    app = create_app(config)
    with TestClient(app) as c:
        wait_ready(c)
        shifted = np.random.default_rng(1).normal(size=(8, 4)) + np.array([0.0, 0.0, 0.0, 3.0])
        for _ in range(5):
            assert c.post("/v1/predict", json={"inputs": shifted.tolist()}).status_code == 200
        report = c.get("/v1/monitor").json()["default"]
        assert report["rows"] == 40 and report["worst"][0]["feature"] == "x[3]"
        assert _metric(c, 'hamjax_drift_psi_max{variant="default"}') == pytest.approx(report["psi_max"])
        assert 'hamjax_drift_psi{feature="x[3]",variant="default"}' in c.get("/metrics").text
    with TestClient(create_app(ServeConfig(models={"default": str(bare)}))) as c:
        assert c.get("/v1/monitor").json()["default"]["reference"] is None
