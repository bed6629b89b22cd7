"""Build TensorRT engines from the ONNX files hamjax exports and run them as a measure.Runner.

:func:`build` parses an ONNX file (from :func:`hamjax.export.onnx`) with
TensorRT's ONNX parser and writes a serialized engine with one optimization
profile over the batch dimension; :class:`Engine` loads it and runs batches
of host numpy arrays, so :func:`hamjax.measure.measure` times it exactly as
it times JAX and onnxruntime (host-to-device and device-to-host copies are
part of every call).

Precisions: ``"fp32"`` builds with no reduced-precision flag and TF32 off
(TensorRT enables it by default), so products are true float32; ``"fp16"`` lets
TensorRT choose float16 kernels; ``"int8"`` needs an explicitly quantized
graph (``QuantizeLinear``/``DequantizeLinear`` with int8 codes and zero
points of 0, which is all TensorRT accepts) and builds it with the FP16 and
INT8 flags, so quantized layers use the graph's own scales and the rest may
run in float16. Implicit INT8 calibration is deprecated in TensorRT 10 and
not supported here. TensorRT 11 removed the FP16 and INT8 builder flags
(networks are strongly typed): there ``"int8"`` still builds from the Q/DQ
graph and ``"fp16"`` raises, because the precision must then live in the
graph itself.

:class:`Engine`, :func:`available` and :class:`TensorRTUnavailable` live in
:mod:`hamjax.export.trt_engine` and are re-exported here. TensorRT and
cuda-python (device memory and streams, no pycuda) are optional and
imported inside the functions that need them::

    pip install tensorrt cuda-python

Examples:
  >>> from hamjax.export import tensorrt
  >>> ok, reason = tensorrt.available()
  >>> isinstance(ok, bool) and isinstance(reason, str)
  True
"""

from __future__ import annotations

import os
import pathlib
from typing import Any

import numpy as np

from hamjax import checkpoint
from hamjax._checks import check_choice, check_int, check_positive
from hamjax.export.trt_engine import (
    INSTALL_HINT,
    Engine,
    TensorRTUnavailable,
    available,
    require_available,
    trt_logger,
)

__all__ = ["INSTALL_HINT", "PRECISIONS", "Engine", "TensorRTUnavailable", "available", "build"]

PRECISIONS = ("fp32", "fp16", "int8")
_DEFAULT_MIN_BATCH = 1
_DEFAULT_MAX_BATCH = 256
_QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


def _batch_range(
    fixed: int | None, min_batch: int | None, opt_batch: int | None, max_batch: int | None
) -> tuple[int, int, int]:
    """``(min, opt, max)`` batch sizes of the optimization profile, validated."""
    given = {"min_batch": min_batch, "opt_batch": opt_batch, "max_batch": max_batch}
    given = {k: check_int("build", k, v, minimum=1) for k, v in given.items() if v is not None}
    if fixed is not None:
        other = {k: v for k, v in given.items() if v != fixed}
        if other:
            raise ValueError(f"the ONNX input has a fixed batch of {fixed}; got {other} (leave them unset)")
        return fixed, fixed, fixed
    lo = given.get("min_batch", _DEFAULT_MIN_BATCH)
    hi = given.get("max_batch", _DEFAULT_MAX_BATCH)
    if lo > hi:
        raise ValueError(f"need min_batch <= max_batch, got min_batch={lo}, max_batch={hi}")
    opt = given.get("opt_batch", min(max(lo, 32), hi))
    if not lo <= opt <= hi:
        raise ValueError(f"need 1 <= min_batch <= opt_batch <= max_batch, got min={lo}, opt={opt}, max={hi}")
    return lo, opt, hi


def _zero_point_problem(model: Any) -> str | None:
    """Why the graph's Q/DQ zero points do not suit TensorRT (int8 and all zero), or None."""
    from onnx import TensorProto, numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type not in _QDQ_OPS or len(node.input) < 3 or node.input[2] not in inits:
            continue
        zp = inits[node.input[2]]
        if zp.data_type == TensorProto.UINT8:
            return f"{node.op_type} {node.name or node.output[0]!r} has a uint8 zero point (asymmetric activations)"
        if zp.data_location != TensorProto.EXTERNAL and np.any(numpy_helper.to_array(zp) != 0):
            return f"{node.op_type} {node.name or node.output[0]!r} has a nonzero zero point"
    return None


def _inspect_onnx(path: pathlib.Path, precision: str) -> tuple[str, tuple[int, ...], int | None]:
    """The single input's name, its non-batch dims and its fixed batch (None when symbolic)."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:
        raise ValueError(f"onnx_path {str(path)!r} is not a loadable ONNX file: {e}") from e
    g = model.graph
    inits = {t.name for t in g.initializer}
    inputs = [i for i in g.input if i.name not in inits]
    if len(inputs) != 1 or len(g.output) != 1:
        raise ValueError(
            f"onnx_path {str(path)!r} must have exactly one input and one output, "
            f"got inputs {[i.name for i in inputs]} and outputs {[o.name for o in g.output]}"
        )
    (inp,) = inputs
    dims = list(inp.type.tensor_type.shape.dim)
    if not dims:
        raise ValueError(f"input {inp.name!r} of {str(path)!r} needs a leading batch dimension, got a scalar")
    rest = []
    for i, d in enumerate(dims[1:], start=1):
        if not d.HasField("dim_value") or d.dim_value < 1:
            raise ValueError(f"input {inp.name!r} must be fixed beyond the batch axis; axis {i} is {d.dim_param!r}")
        rest.append(int(d.dim_value))
    fixed = int(dims[0].dim_value) if dims[0].HasField("dim_value") and dims[0].dim_value > 0 else None
    if precision == "int8":
        ops = {n.op_type for n in g.node}
        if "DynamicQuantizeLinear" in ops:
            raise ValueError(
                "precision='int8': the graph quantizes activations dynamically (DynamicQuantizeLinear), "
                "which TensorRT does not support; quantize with static activations and export again"
            )
        if not ops & set(_QDQ_OPS):
            raise ValueError(
                f"precision='int8' needs an explicitly quantized graph (QuantizeLinear/DequantizeLinear), and "
                f"{str(path)!r} has none: export it with hamjax.export.onnx(..., precision='int8') first "
                "(implicit INT8 calibration is deprecated in TensorRT 10 and not supported here)"
            )
        problem = _zero_point_problem(model)
        if problem:
            raise ValueError(
                f"precision='int8': TensorRT supports only symmetric int8 quantization (zero point 0), but {problem}; "
                "quantize with hamjax.quant.quantize_model(..., symmetric=True, act_symmetric=True) and export again"
            )
    return inp.name, tuple(rest), fixed


def _default_out(onnx_path: pathlib.Path, precision: str) -> pathlib.Path:
    return onnx_path.with_name(f"{onnx_path.stem}.{precision}.engine")


def _precision_flags(trt: Any, precision: str) -> list:
    flags = getattr(trt, "BuilderFlag", None)
    has_fp16, has_int8 = hasattr(flags, "FP16"), hasattr(flags, "INT8")
    if precision == "fp16" and not has_fp16:
        raise RuntimeError(
            f"TensorRT {trt.__version__} has no FP16 builder flag (TensorRT 11 builds strongly typed networks): "
            "export a float16 graph with hamjax.export.onnx(..., precision='fp16') and build it with "
            "precision='fp32', or install tensorrt<11"
        )
    wanted = {"fp32": [], "fp16": ["FP16"], "int8": ["FP16", "INT8"]}[precision]
    return [getattr(flags, f) for f in wanted if (f == "FP16" and has_fp16) or (f == "INT8" and has_int8)]


def build(
    onnx_path: str | os.PathLike,
    precision: str = "fp16",
    *,
    out: str | os.PathLike | None = None,
    min_batch: int | None = None,
    opt_batch: int | None = None,
    max_batch: int | None = None,
    workspace_gib: float = 2.0,
) -> pathlib.Path:
    """Build and serialize a TensorRT engine from an ONNX file.

    Every argument is checked before TensorRT is touched. The engine has one
    optimization profile over the batch dimension (the first axis of the
    single input); TensorRT tunes its kernels for ``opt_batch`` rows and
    accepts any batch in ``[min_batch, max_batch]``.

    Args:
      onnx_path: an ONNX file with one input, shape ``(batch, ...)`` with
        only the batch symbolic (or fixed), and one output.
      precision: one of :data:`PRECISIONS`. ``"int8"`` needs a Q/DQ graph
        with int8, zero-point-0 quantizers (``hamjax.export.onnx(...,
        precision="int8")`` of a model quantized with ``symmetric=True,
        act_symmetric=True``).
      out: the engine path; defaults to ``<stem>.<precision>.engine`` beside
        ``onnx_path``. Written atomically.
      min_batch, opt_batch, max_batch: the profile, ``1 <= min <= opt <=
        max``; defaults 1, ``min(max(min_batch, 32), max_batch)`` and 256.
        For a graph with a fixed batch they default to it, and any other
        value is an error.
      workspace_gib: the builder's workspace memory limit in GiB, > 0.

    Returns:
      The path of the written engine.

    Raises:
      ValueError: a bad argument or graph, or TensorRT's parser errors.
      FileNotFoundError: ``onnx_path`` does not exist.
      TensorRTUnavailable: TensorRT, cuda-python or a GPU is missing.
      RuntimeError: TensorRT failed to build the engine.

    Examples:
      >>> from hamjax.export import tensorrt
      >>> if tensorrt.available()[0]:  # doctest: +SKIP
      ...     path = tensorrt.build("model.onnx", "fp16", max_batch=64)
    """
    check_choice("build", "precision", precision, PRECISIONS)
    src = pathlib.Path(onnx_path)
    if not src.is_file():
        raise FileNotFoundError(f"onnx_path {str(src)!r} does not exist or is not a file")
    workspace_gib = check_positive("build", "workspace_gib", workspace_gib)
    input_name, rest, fixed = _inspect_onnx(src, precision)
    lo, opt, hi = _batch_range(fixed, min_batch, opt_batch, max_batch)
    dst = pathlib.Path(checkpoint.check_file("build", "out", _default_out(src, precision) if out is None else out))
    if dst.resolve() == src.resolve():
        raise ValueError(f"out must differ from onnx_path, got {str(dst)!r}")

    require_available()
    import tensorrt as trt

    logger = trt_logger()
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10 networks are always explicit-batch
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(src)):
        errors = "\n".join(f"  {parser.get_error(i)}" for i in range(parser.num_errors))
        raise ValueError(f"TensorRT could not parse {str(src)!r} ({parser.num_errors} errors):\n{errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, max(1, int(workspace_gib * 2**30)))
    for flag in _precision_flags(trt, precision):
        config.set_flag(flag)
    if precision == "fp32" and hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)  # on by default; "fp32" means float32 products, not 10-bit ones
    if fixed is None:
        profile = builder.create_optimization_profile()
        profile.set_shape(input_name, (lo, *rest), (opt, *rest), (hi, *rest))
        config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build a {precision} engine from {str(src)!r}; see its log above")
    checkpoint.atomic_write(dst, memoryview(serialized))
    return dst
