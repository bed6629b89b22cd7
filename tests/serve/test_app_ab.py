"""The A/B routes of the app: variant choice, feedback and its errors, the report, the p-value metric, persistence."""

import time

import numpy as np
import pytest
from fastapi.testclient import TestClient

from hamjax.serve.app import create_app
from hamjax.serve.config import ServeConfig


@pytest.fixture(scope="module")
def variants(tmp_path_factory, onnx_writer):
    folder = tmp_path_factory.mktemp("ab-models")
    return {name: str(onnx_writer(folder / f"{name}.onnx", seed=seed)[0]) for seed, name in enumerate(("a", "b"))}


def _client(variants, state_dir, **kw):
    return TestClient(create_app(ServeConfig(models=variants, max_batch=8, state_dir=str(state_dir), **kw)))


def _predict(client, x, **headers):
    r = client.post("/v1/predict", json={"inputs": x}, headers=headers)
    assert r.status_code == 200, r.text
    return r.json()


def test_a_client_key_keeps_its_variant_and_x_variant_overrides(variants, tmp_path, wait_ready):
    with _client(variants, tmp_path) as c:
        wait_ready(c)
        x = [[1.0, 2.0, 3.0, 4.0]]
        seen = {_predict(c, x, **{"X-Client-Key": "user-42"})["variant"] for _ in range(5)}
        assert len(seen) == 1
        by_field = c.post("/v1/predict", json={"inputs": x, "client": "user-42"}).json()["variant"]
        assert by_field == seen.pop()
        keys = {_predict(c, x, **{"X-Client-Key": f"user-{i}"})["variant"] for i in range(40)}
        assert keys == {"a", "b"}
        assert _predict(c, x, **{"X-Variant": "b"})["variant"] == "b"
        r = c.post("/v1/predict", json={"inputs": x}, headers={"X-Variant": "c"})
        assert r.status_code == 404 and r.json()["detail"] == "unknown variant 'c'; known: a, b"


def test_a_zero_weight_sends_no_traffic(variants, tmp_path, wait_ready):
    with _client(variants, tmp_path, split={"a": 1.0, "b": 0.0}) as c:
        wait_ready(c)
        assert {_predict(c, [[0.0, 1.0, 0.0, 1.0]])["variant"] for _ in range(20)} == {"a"}


def test_feedback_scores_the_served_classes_and_refuses_bad_requests(variants, tmp_path, wait_ready):
    with _client(variants, tmp_path) as c:
        wait_ready(c)
        served = _predict(c, [[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]])
        classes = np.argmax(served["outputs"], axis=1).tolist()
        labels = [classes[0], (classes[1] + 1) % 3]
        r = c.post("/v1/feedback", json={"request_id": served["request_id"], "labels": labels})
        assert r.status_code == 200
        assert r.json() == {
            "request_id": served["request_id"],
            "variant": served["variant"],
            "correct": 1,
            "total": 2,
            "accuracy": 0.5,
        }
        again = c.post("/v1/feedback", json={"request_id": served["request_id"], "labels": labels})
        assert again.status_code == 422 and "given before" in again.json()["detail"]
        unknown = c.post("/v1/feedback", json={"request_id": "never-served", "labels": [1]})
        assert unknown.status_code == 404 and "unknown or expired request id 'never-served'" in unknown.json()["detail"]
        other = _predict(c, [[1.0, 1.0, 1.0, 1.0]])
        for body, match in [
            ({"request_id": other["request_id"], "labels": [1, 2]}, "must hold 1 classes"),
            ({"request_id": other["request_id"], "labels": ["cat"]}, "labels must be a list of integer classes"),
            ({"request_id": other["request_id"], "labels": [True]}, "labels must be a list of integer classes"),
            ({"request_id": 7, "labels": [1]}, '"request_id" (a string)'),
            ({"labels": [1]}, '"request_id" (a string)'),
        ]:
            r = c.post("/v1/feedback", json=body)
            assert r.status_code == 422 and match in r.json()["detail"], (body, r.text)
        bad_json = c.post("/v1/feedback", content=b"{oops", headers={"Content-Type": "application/json"})
        assert bad_json.status_code == 422
        assert c.post("/v1/feedback", json={"request_id": other["request_id"], "labels": 1}).status_code == 200


def test_expired_request_ids_take_no_feedback(variants, tmp_path, wait_ready):
    with _client(variants, tmp_path, feedback_ttl_s=0.05) as c:
        wait_ready(c)
        served = _predict(c, [[1.0, 2.0, 3.0, 4.0]])
        time.sleep(0.2)
        r = c.post("/v1/feedback", json={"request_id": served["request_id"], "labels": [0]})
        assert r.status_code == 404 and "unknown or expired" in r.json()["detail"]


def test_the_report_and_p_value_survive_a_restart(variants, tmp_path, wait_ready):
    with _client(variants, tmp_path) as c:
        wait_ready(c)
        for i in range(6):
            served = _predict(c, [[float(i), 1.0, 0.0, 0.0]], **{"X-Variant": "ab"[i % 2]})
            label = int(np.argmax(served["outputs"][0]))
            assert (
                c.post("/v1/feedback", json={"request_id": served["request_id"], "labels": [label]}).status_code == 200
            )
        report = c.get("/v1/ab").json()
        assert {n: v["requests"] for n, v in report["variants"].items()} == {"a": 3, "b": 3}
        assert report["variants"]["a"]["accuracy"] == 1.0 and report["comparisons"][0]["decision"] == "continue"
        metrics = c.get("/metrics").text
        assert f"hamjax_ab_p_value {float(report['p_value'])}" in metrics
    with _client(variants, tmp_path) as c:
        wait_ready(c)
        assert c.get("/v1/ab").json()["variants"]["b"]["feedback"] == 3
