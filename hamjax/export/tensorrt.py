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

TensorRT and cuda-python (device memory and streams, no pycuda) are
optional and imported inside the functions that need them::

    pip install tensorrt cuda-python

Examples:
  >>> from hamjax.export import tensorrt
  >>> ok, reason = tensorrt.available()
  >>> isinstance(ok, bool) and isinstance(reason, str)
  True
"""

from __future__ import annotations

import functools
import math
import os
import pathlib
from typing import Any

import numpy as np

from hamjax import checkpoint

PRECISIONS = ("fp32", "fp16", "int8")
INSTALL_HINT = "pip install tensorrt cuda-python"
_DEFAULT_MIN_BATCH = 1
_DEFAULT_MAX_BATCH = 256
_QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


class TensorRTUnavailable(RuntimeError):
    """TensorRT, cuda-python or a CUDA device is missing; the message says which and how to install.

    Examples:
      >>> issubclass(TensorRTUnavailable, RuntimeError)
      True
    """


def _import_cudart() -> Any:
    """The CUDA runtime bindings of cuda-python (``cuda.bindings.runtime`` from 12.6, ``cuda.cudart`` before)."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        from cuda import cudart
    return cudart


def _cuda_call(cudart: Any, call: str, result: tuple) -> Any:
    """Check the ``cudaError_t`` a cuda-python call returns first; return the remaining values."""
    err, *values = result
    if err != cudart.cudaError_t.cudaSuccess:
        try:
            detail = cudart.cudaGetErrorName(err)[1].decode()
        except Exception:  # the error name is a courtesy; the call's failure is the news
            detail = str(err)
        raise RuntimeError(f"{call} failed: {detail}")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


def available() -> tuple[bool, str]:
    """Whether engines can be built and run here, and why not.

    Checks, in order, that ``tensorrt`` imports, that cuda-python imports and
    that ``cudaGetDeviceCount`` sees at least one CUDA device. Never raises.

    Returns:
      ``(True, "TensorRT x.y.z on <GPU name>")`` or ``(False, reason)``; a
      reason names what is missing and how to install it.

    Examples:
      >>> ok, reason = available()
      >>> ok or "tensorrt" in reason.lower() or "cuda" in reason.lower()
      True
    """
    try:
        try:
            import tensorrt as trt
        except Exception as e:  # ImportError, or OSError from a wheel whose CUDA libraries do not load
            return (
                False,
                f"the tensorrt package is not importable ({type(e).__name__}: {e}); install with: {INSTALL_HINT}",
            )
        try:
            cudart = _import_cudart()
        except Exception as e:
            return False, f"cuda-python is not importable ({type(e).__name__}: {e}); install with: {INSTALL_HINT}"
        err, count = cudart.cudaGetDeviceCount()
        if err != cudart.cudaError_t.cudaSuccess or count < 1:
            return (
                False,
                f"TensorRT {trt.__version__} is installed but no CUDA device is visible ({err}, {count} devices)",
            )
        name = "CUDA device 0"
        err, props = cudart.cudaGetDeviceProperties(0)
        if err == cudart.cudaError_t.cudaSuccess:
            raw = props.name
            name = raw.split(b"\0")[0].decode(errors="replace") if isinstance(raw, bytes) else str(raw)
        return True, f"TensorRT {trt.__version__} on {name}"
    except Exception as e:  # a half-working CUDA install must read as unavailable, not crash the caller
        return False, f"TensorRT or CUDA failed to initialise ({type(e).__name__}: {e})"


def _require_available() -> None:
    ok, reason = available()
    if not ok:
        raise TensorRTUnavailable(f"TensorRT is unavailable: {reason}")


@functools.cache
def _logger() -> Any:
    # One logger per process: TensorRT warns when builders and runtimes are given different loggers.
    import tensorrt as trt

    return trt.Logger(trt.Logger.WARNING)


def _check_batch_arg(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def _batch_range(
    fixed: int | None, min_batch: int | None, opt_batch: int | None, max_batch: int | None
) -> tuple[int, int, int]:
    """``(min, opt, max)`` batch sizes of the optimization profile, validated."""
    given = {"min_batch": min_batch, "opt_batch": opt_batch, "max_batch": max_batch}
    given = {k: _check_batch_arg(v, k) for k, v in given.items() if v is not None}
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
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    src = pathlib.Path(onnx_path)
    if not src.is_file():
        raise FileNotFoundError(f"onnx_path {str(src)!r} does not exist or is not a file")
    if isinstance(workspace_gib, bool) or not isinstance(workspace_gib, int | float | np.integer | np.floating):
        raise ValueError(f"workspace_gib must be a number of GiB > 0, got {workspace_gib!r}")
    if not (workspace_gib > 0 and math.isfinite(workspace_gib)):
        raise ValueError(f"workspace_gib must be a finite number of GiB > 0, got {workspace_gib!r}")
    input_name, rest, fixed = _inspect_onnx(src, precision)
    lo, opt, hi = _batch_range(fixed, min_batch, opt_batch, max_batch)
    dst = _default_out(src, precision) if out is None else pathlib.Path(out)
    if dst.resolve() == src.resolve():
        raise ValueError(f"out must differ from onnx_path, got {str(dst)!r}")

    _require_available()
    import tensorrt as trt

    logger = _logger()
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


def _numpy_dtype(trt: Any, dtype: Any, tensor: str) -> np.dtype:
    try:
        return np.dtype(trt.nptype(dtype))
    except TypeError as e:  # bfloat16, fp8, int4... have no numpy type
        raise ValueError(f"engine tensor {tensor!r} has dtype {dtype}, which numpy cannot hold") from e


class Engine:
    """A :class:`hamjax.measure.Runner` over a serialized TensorRT engine.

    Device buffers are allocated on the first call and grown when a larger
    batch arrives; each call copies the input to the device, runs the engine
    on its own CUDA stream, copies the output back and waits for it, so the
    result is a host array and :meth:`block` has nothing to wait for. The
    copies use the caller's ordinary (pageable, not pinned) numpy memory, as
    every other runtime in :mod:`hamjax.measure` does. Free the device memory
    with :meth:`close` or a ``with`` block.

    Args:
      engine_path: a file written by :func:`build` (with this TensorRT
        version, for this GPU).
      name: label for reports.

    Attributes:
      input_name, output_name: the engine's I/O tensor names.
      input_dtype, output_dtype: their numpy dtypes.
      input_shape: the input's shape, ``-1`` at a dynamic batch.
      batch_range: ``(min, max)`` batch sizes the engine accepts.
      size_bytes: size of the engine file, for :func:`hamjax.measure.measure`.

    Examples:
      >>> from hamjax.export import tensorrt
      >>> if tensorrt.available()[0]:  # doctest: +SKIP
      ...     with tensorrt.Engine("model.fp16.engine") as engine:
      ...         y = engine.to_numpy(engine.block(engine(x)))
    """

    _cudart: Any = None
    _stream: Any = None
    _in_ptr: int = 0
    _out_ptr: int = 0

    def __init__(self, engine_path: str | os.PathLike, *, name: str = "tensorrt"):
        if not isinstance(name, str):
            raise ValueError(f"name must be a str, got {type(name).__name__}")
        path = pathlib.Path(engine_path)
        if not path.is_file():
            raise FileNotFoundError(f"engine_path {str(path)!r} does not exist or is not a file")
        _require_available()
        import tensorrt as trt

        self.name = name
        self.path = path
        self.size_bytes = path.stat().st_size
        self._runtime = trt.Runtime(_logger())
        engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
        if engine is None:
            raise RuntimeError(
                f"TensorRT {trt.__version__} could not deserialize {str(path)!r} "
                "(built by another TensorRT version or for another GPU?); see its log above"
            )
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or len(outputs) != 1:
            raise ValueError(f"engine must have one input and one output, got inputs {inputs} and outputs {outputs}")
        self.input_name, self.output_name = inputs[0], outputs[0]
        self.input_dtype = _numpy_dtype(trt, engine.get_tensor_dtype(self.input_name), self.input_name)
        self.output_dtype = _numpy_dtype(trt, engine.get_tensor_dtype(self.output_name), self.output_name)
        self.input_shape = tuple(int(d) for d in engine.get_tensor_shape(self.input_name))
        if not self.input_shape:
            raise ValueError(f"engine input {self.input_name!r} is a scalar; it needs a batch axis")
        if self.input_shape[0] < 0:
            lo, _, hi = engine.get_tensor_profile_shape(self.input_name, 0)
            self.batch_range = (int(lo[0]), int(hi[0]))
        else:
            self.batch_range = (self.input_shape[0], self.input_shape[0])
        self._engine = engine
        self._context = engine.create_execution_context()
        if self._context is None:
            raise RuntimeError(f"TensorRT could not create an execution context for {str(path)!r} (out of memory?)")
        memory = getattr(engine, "device_memory_size_v2", None)  # TensorRT >= 10.1; 11 dropped the old name
        self._context_bytes = int(memory if memory is not None else engine.device_memory_size)
        self._in_bytes = self._out_bytes = 0
        self._peak_buffers = 0
        self._cudart = _import_cudart()
        self._stream = _cuda_call(self._cudart, "cudaStreamCreate", self._cudart.cudaStreamCreate())

    def _check_input(self, x: Any) -> np.ndarray:
        x = np.asarray(x)
        want = self.input_shape
        if x.ndim != len(want) or any(w >= 0 and s != w for s, w in zip(x.shape[1:], want[1:], strict=True)):
            raise ValueError(f"x must have shape (batch, {', '.join(map(str, want[1:]))}), got {x.shape}")
        lo, hi = self.batch_range
        if not lo <= x.shape[0] <= hi:
            raise ValueError(f"x has {x.shape[0]} rows; this engine accepts batches of {lo} to {hi}")
        if x.dtype != self.input_dtype:
            same_kind = all(np.issubdtype(d, np.floating) for d in (x.dtype, self.input_dtype)) or all(
                np.issubdtype(d, np.integer) for d in (x.dtype, self.input_dtype)
            )
            if not same_kind:
                raise ValueError(f"x must have dtype {self.input_dtype} (or one castable to it), got {x.dtype}")
        return np.ascontiguousarray(x, dtype=self.input_dtype)

    def _reserve(self, in_bytes: int, out_bytes: int) -> None:
        """Grow the device buffers to hold ``in_bytes`` and ``out_bytes``."""
        cudart = self._cudart
        if in_bytes > self._in_bytes:
            ptr, self._in_ptr, self._in_bytes = self._in_ptr, 0, 0
            if ptr:
                _cuda_call(cudart, "cudaFree", cudart.cudaFree(ptr))
            self._in_ptr = int(_cuda_call(cudart, "cudaMalloc", cudart.cudaMalloc(in_bytes)))
            self._in_bytes = in_bytes
        if out_bytes > self._out_bytes:
            ptr, self._out_ptr, self._out_bytes = self._out_ptr, 0, 0
            if ptr:
                _cuda_call(cudart, "cudaFree", cudart.cudaFree(ptr))
            self._out_ptr = int(_cuda_call(cudart, "cudaMalloc", cudart.cudaMalloc(out_bytes)))
            self._out_bytes = out_bytes
        self._peak_buffers = max(self._peak_buffers, self._in_bytes + self._out_bytes)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Run one batch ``(batch, ...)``; returns the output as a host array with ``batch`` rows."""
        if self._cudart is None:
            raise RuntimeError(f"engine {self.name!r} is closed")
        x = self._check_input(x)
        context, cudart, stream = self._context, self._cudart, self._stream
        if not context.set_input_shape(self.input_name, x.shape):
            raise ValueError(f"TensorRT rejected input shape {x.shape} for {self.input_name!r}")
        out_shape = tuple(int(d) for d in context.get_tensor_shape(self.output_name))
        if any(d < 0 for d in out_shape):
            raise RuntimeError(f"TensorRT could not infer the output shape for input shape {x.shape}: {out_shape}")
        y = np.empty(out_shape, self.output_dtype)
        # 256-byte floor: cudaMalloc(0) returns no usable address, and a tiny floor costs nothing.
        self._reserve(max(x.nbytes, 256), max(y.nbytes, 256))
        context.set_tensor_address(self.input_name, self._in_ptr)
        context.set_tensor_address(self.output_name, self._out_ptr)
        h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        _cuda_call(
            cudart, "cudaMemcpyAsync", cudart.cudaMemcpyAsync(self._in_ptr, x.ctypes.data, x.nbytes, h2d, stream)
        )
        if not context.execute_async_v3(int(stream)):
            raise RuntimeError(f"TensorRT execute_async_v3 failed on a batch of shape {x.shape}")
        _cuda_call(
            cudart, "cudaMemcpyAsync", cudart.cudaMemcpyAsync(y.ctypes.data, self._out_ptr, y.nbytes, d2h, stream)
        )
        _cuda_call(cudart, "cudaStreamSynchronize", cudart.cudaStreamSynchronize(stream))
        return y

    def block(self, y: Any) -> Any:
        """Return ``y``: every call already waited for its output."""
        return y

    def to_numpy(self, y: Any) -> np.ndarray:
        """Return ``y`` as a numpy array (it already is one)."""
        return np.asarray(y)

    def peak_memory_bytes(self) -> int | None:
        """Device bytes this engine allocated at their peak, or None before the first call.

        The I/O buffers at their largest plus the execution context's
        activation memory (``device_memory_size``, sized for the largest
        profile shape); the engine's weights are not counted (the engine
        file's :attr:`size_bytes` is a close proxy).
        """
        if not self._peak_buffers:
            return None
        return self._peak_buffers + self._context_bytes

    def close(self) -> None:
        """Free the device buffers and the stream, and release the engine. Safe to call twice."""
        cudart = self._cudart
        if cudart is None:
            return
        self._cudart = None
        in_ptr, out_ptr, stream = self._in_ptr, self._out_ptr, self._stream
        self._in_ptr = self._out_ptr = self._in_bytes = self._out_bytes = 0
        self._stream = None
        self._context = self._engine = self._runtime = None
        errors = []
        frees = [("cudaFree", cudart.cudaFree, p) for p in (in_ptr, out_ptr) if p]
        if stream is not None:
            frees.append(("cudaStreamDestroy", cudart.cudaStreamDestroy, stream))
        for call, fn, handle in frees:
            try:
                _cuda_call(cudart, call, fn(handle))
            except RuntimeError as e:  # free the rest before reporting
                errors.append(str(e))
        if errors:
            raise RuntimeError("closing the TensorRT engine: " + "; ".join(errors))

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close()

    def __del__(self) -> None:
        if self._cudart is None:  # never opened or already closed; module globals may be gone at exit
            return
        try:
            self.close()
        except Exception:  # interpreter shutdown or a dead CUDA context: nothing left to free
            return
