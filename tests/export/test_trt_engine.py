"""hamjax.export.trt_engine: whether TensorRT and a GPU are here, and the Engine runner's checks without them."""

import pytest

from hamjax.export import trt_engine

HAS_TENSORRT, WHY_NOT = trt_engine.available()


@pytest.mark.skipif(HAS_TENSORRT, reason="TensorRT is available here")
def test_available_says_what_is_missing():
    ok, reason = trt_engine.available()
    assert ok is False
    assert "tensorrt" in reason.lower()
    assert "pip install tensorrt cuda-python" in reason


@pytest.mark.skipif(HAS_TENSORRT, reason="TensorRT is available here")
def test_engine_without_tensorrt_raises_unavailable(tmp_path):
    path = tmp_path / "model.fp16.engine"
    path.write_bytes(b"not an engine")
    with pytest.raises(trt_engine.TensorRTUnavailable, match="tensorrt"):
        trt_engine.Engine(path)


def test_engine_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.engine"):
        trt_engine.Engine(tmp_path / "missing.engine")


def test_unavailable_is_a_runtime_error():
    assert issubclass(trt_engine.TensorRTUnavailable, RuntimeError)


@pytest.mark.skipif(HAS_TENSORRT, reason="TensorRT is available here")
def test_require_available_raises_with_the_reason():
    with pytest.raises(trt_engine.TensorRTUnavailable, match="TensorRT is unavailable: .*" + trt_engine.INSTALL_HINT):
        trt_engine.require_available()


def test_engine_name_must_be_a_string(tmp_path):
    with pytest.raises(ValueError, match="name must be a str, got int"):
        trt_engine.Engine(tmp_path / "missing.engine", name=3)


def test_cuda_call_reports_the_call_and_the_error():
    class FakeCudart:
        class cudaError_t:
            cudaSuccess = 0

        @staticmethod
        def cudaGetErrorName(err):
            return 0, b"cudaErrorMemoryAllocation"

    assert trt_engine.cuda_call(FakeCudart, "cudaMalloc", (0, 1234)) == 1234
    assert trt_engine.cuda_call(FakeCudart, "cudaFree", (0,)) is None
    assert trt_engine.cuda_call(FakeCudart, "cudaX", (0, 1, 2)) == (1, 2)
    with pytest.raises(RuntimeError, match="cudaMalloc failed: cudaErrorMemoryAllocation"):
        trt_engine.cuda_call(FakeCudart, "cudaMalloc", (2, None))
