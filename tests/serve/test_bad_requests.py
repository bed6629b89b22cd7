"""The issue's bad-input rows over HTTP: each gets its 4xx and a message, and the server keeps serving."""

import io
import re

import numpy as np
import pytest
from fastapi.testclient import TestClient

from hamjax.serve.app import create_app
from hamjax.serve.config import ServeConfig

LIMIT = 4096


@pytest.fixture(scope="module")
def client(linear_onnx, wait_ready):
    config = ServeConfig(models={"default": str(linear_onnx[0])}, max_batch=4, max_body_bytes=LIMIT, token="t0k")
    with TestClient(create_app(config), headers={"Authorization": "Bearer t0k"}) as c:
        wait_ready(c)
        yield c
        # Nothing above crashed the server or answered 500, and it still serves.
        assert c.post("/v1/predict", json={"inputs": [[1, 2, 3, 4]]}).status_code == 200
        assert 'code="500"' not in c.get("/metrics").text


def _npy(x) -> bytes:
    buf = io.BytesIO()
    np.save(buf, x, allow_pickle=True)
    return buf.getvalue()


def _post(client, body, content_type="application/json", headers=None):
    return client.post("/v1/predict", content=body, headers={"Content-Type": content_type, **(headers or {})})


@pytest.mark.parametrize(
    ("body", "status", "match"),
    [
        # wrong shape
        (b'{"inputs": [[1, 2, 3]]}', 422, r"expected shape \(rows, 4\), got \(1, 3\)"),
        (b'{"inputs": [1, 2, 3, 4]}', 422, "expected shape"),
        (b'{"inputs": [[[1, 2, 3, 4]]]}', 422, "expected shape"),
        (b'{"inputs": [[1, 2, 3, 4], [1, 2]]}', 422, "not a rectangular array of numbers"),
        # wrong dtype / non-numeric JSON
        (b'{"inputs": [["a", "b", "c", "d"]]}', 422, "expected numbers"),
        (b'{"inputs": [[true, false, true, false]]}', 422, "expected numbers"),
        (b'{"inputs": [[1, null, 3, 4]]}', 422, "expected numbers"),
        (b'{"inputs": [[1, {"a": 1}, 3, 4]]}', 422, "expected numbers"),
        (b'{"inputs": [[100000000000000000000000000000, 2, 3, 4]]}', 422, "expected numbers"),
        (b'{"inputs": "1,2,3,4"}', 422, "expected"),
        (b"not json at all", 422, "body is not JSON"),
        (b"\xff\xfe\x00", 422, "body is not JSON"),
        (b"[[1, 2, 3, 4]]", 422, 'a JSON object with "inputs"'),
        (b'{"x": [[1, 2, 3, 4]]}', 422, 'a JSON object with "inputs"'),
        (b"", 422, "body is not JSON"),
        # empty batch
        (b'{"inputs": []}', 422, "empty batch"),
        (b'{"inputs": [[]]}', 422, "expected shape"),
        # too many rows
        (b'{"inputs": [[1, 2, 3, 4], [1, 2, 3, 4], [1, 2, 3, 4], [1, 2, 3, 4], [1, 2, 3, 4]]}', 413, "max_batch=4"),
        # NaN and infinities, as JSON's extensions and as overflow
        (b'{"inputs": [[NaN, 2, 3, 4]]}', 422, "NaN or infinite"),
        (b'{"inputs": [[Infinity, 2, 3, 4]]}', 422, "NaN or infinite"),
        (b'{"inputs": [[1e999, 2, 3, 4]]}', 422, "NaN or infinite"),
        # unknown variant, bad fields
        (b'{"inputs": [[1, 2, 3, 4]], "variant": "nope"}', 404, "unknown variant 'nope'; known: default"),
        (b'{"inputs": [[1, 2, 3, 4]], "variant": 3}', 422, "variant must be a string"),
        (b'{"inputs": [[1, 2, 3, 4]], "client": [1]}', 200, None),  # "client" is read only to choose an A/B arm
    ],
)
def test_bad_json_bodies(client, body, status, match):
    r = _post(client, body)
    assert r.status_code == status, r.text
    if match is not None:
        assert set(r.json()) == {"detail"}
        assert re.search(match, r.json()["detail"]), r.json()["detail"]
    assert r.headers["x-request-id"]


@pytest.mark.parametrize(
    ("x", "status", "match"),
    [
        (np.ones((2, 3), np.float32), 422, "expected shape"),
        (np.array([["a", "b", "c", "d"]]), 422, "expected numbers"),
        (np.ones((1, 4), np.complex64), 422, "expected numbers"),
        (np.zeros((0, 4), np.float32), 422, "empty batch"),
        (np.full((1, 4), np.nan), 422, "NaN or infinite"),
        (np.array([[1, None, 3, 4]], dtype=object), 422, "not a .npy array.*pickle"),
    ],
)
def test_bad_npy_bodies(client, x, status, match):
    r = _post(client, _npy(x), "application/x-npy")
    assert r.status_code == status
    assert re.search(match, r.json()["detail"]), r.json()["detail"]


def test_bytes_that_are_not_npy(client):
    r = _post(client, b"\x93NUMPY garbage", "application/x-npy")
    assert r.status_code == 422 and "not a .npy array" in r.json()["detail"]


def test_a_body_over_the_limit_is_refused_before_it_is_parsed(client):
    big = b'{"inputs": [[' + b"1, " * LIMIT + b"1]]}"
    r = _post(client, big)
    assert r.status_code == 413 and f"over the limit of {LIMIT} bytes" in r.json()["detail"]

    def chunks():  # no Content-Length: the streamed size is what is bounded
        for _ in range(LIMIT // 64 + 2):
            yield b" " * 64

    r = client.post("/v1/predict", content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and "over the limit" in r.json()["detail"]
    assert 'hamjax_invalid_inputs_total{reason="body"} 2.0' in client.get("/metrics").text


def test_an_unknown_variant_header_lists_the_known_ones(client):
    r = client.post("/v1/predict", json={"inputs": [[1, 2, 3, 4]]}, headers={"X-Variant": "b"})
    assert r.status_code == 404 and r.json()["detail"] == "unknown variant 'b'; known: default"


def test_a_missing_or_wrong_token_is_401(client):
    for auth in ("", "Bearer nope", "t0k"):
        r = client.post("/v1/predict", json={"inputs": [[1, 2, 3, 4]]}, headers={"Authorization": auth})
        assert r.status_code == 401 and r.json() == {"detail": "missing or wrong bearer token"}
        assert r.headers["www-authenticate"] == 'Bearer realm="hamjax"'


def test_feedback_without_an_ab_test_is_404(client):
    r = client.post("/v1/feedback", json={"request_id": "x", "labels": [1]})
    assert r.status_code == 404 and "no A/B test runs" in r.json()["detail"]
    assert client.get("/v1/ab").status_code == 404


def test_a_bad_model_file_stops_the_app_before_it_serves(tmp_path):
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"PK\x03\x04 a zip, not ONNX")
    with pytest.raises(ValueError, match="model 'default': .* is not a model onnxruntime can run"):
        create_app(ServeConfig(models={"default": str(bad)}))
