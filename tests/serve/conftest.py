"""Fixtures of the server's tests: a tiny ONNX classifier written once per session, and a wait for readiness."""

import time

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

FEATURES, CLASSES = 4, 3


def write_linear_onnx(path, *, features=FEATURES, classes=CLASSES, batch="B", seed=0):
    """A linear classifier ``x @ w + b`` as an ONNX file; returns ``(path, w, b)`` to check outputs against."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(features, classes)).astype(np.float32)
    b = rng.normal(size=(classes,)).astype(np.float32)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, features])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, classes])
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Add", ["h", "b"], ["y"])]
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")]
    graph = helper.make_graph(nodes, "linear", [x], [y], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path, w, b


@pytest.fixture(scope="session")
def linear_onnx(tmp_path_factory):
    """``(path, w, b)`` of a 4-feature, 3-class linear ONNX model."""
    return write_linear_onnx(tmp_path_factory.mktemp("serve-model") / "linear.onnx")


def _wait_ready(client, timeout=10.0):
    """Poll ``/readyz`` until it answers 200; returns its JSON."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = client.get("/readyz")
        if response.status_code == 200:
            return response.json()
        time.sleep(0.01)
    raise AssertionError(f"/readyz never answered 200: {response.status_code} {response.text}")


@pytest.fixture(scope="session")
def wait_ready():
    """``wait_ready(client, timeout=10.0)``: poll ``/readyz`` until 200, return its JSON."""
    return _wait_ready


@pytest.fixture(scope="session")
def onnx_writer():
    """``write(path, *, features, classes, batch, seed) -> (path, w, b)``: a linear ONNX classifier."""
    return write_linear_onnx
