"""Export: ONNX files (fp32, fp16, int8 QDQ) checked in onnxruntime, runtimes that run them, TensorRT engines.

* :func:`onnx` writes an apply function and its params as an ONNX file
  through jax2onnx and checks it against JAX (:mod:`hamjax.export.convert`).
* :mod:`hamjax.export.runtime`: :class:`~hamjax.export.runtime.Session`, an
  onnxruntime session with batching and provider choice that
  :mod:`hamjax.measure` measures like any other runner.
* :mod:`hamjax.export.tensorrt`: TensorRT engines built from those files, where a
  GPU and the ``tensorrt`` extra exist, and run by :mod:`hamjax.export.trt_engine`.
* :mod:`hamjax.export.graph` and :mod:`hamjax.export.qdq`: the tracing and
  the int8 rewrite underneath; :mod:`hamjax.export.integer` lays the int8
  graph out so onnxruntime runs integer kernels, and
  :mod:`hamjax.export.coverage` says per quantized site whether it does.
"""

from hamjax.export import coverage, graph, integer, nodes, qdq, rewrites, runtime, tensorrt, trt_engine
from hamjax.export.convert import (
    MAX_RELATIVE_ERROR,
    MIN_ARGMAX_AGREEMENT,
    PRECISIONS,
    Check,
    ExportResult,
    onnx,
)
from hamjax.export.coverage import FloatSiteWarning, SiteKernel
from hamjax.export.graph import ExportError

__all__ = [
    "MAX_RELATIVE_ERROR",
    "MIN_ARGMAX_AGREEMENT",
    "PRECISIONS",
    "Check",
    "ExportError",
    "ExportResult",
    "FloatSiteWarning",
    "SiteKernel",
    "coverage",
    "graph",
    "integer",
    "nodes",
    "onnx",
    "qdq",
    "rewrites",
    "runtime",
    "tensorrt",
    "trt_engine",
]
