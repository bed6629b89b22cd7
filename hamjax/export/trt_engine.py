"""Run TensorRT engines as a :class:`hamjax.measure.Runner`, and say whether TensorRT and a GPU are here at all.

:func:`available` checks that ``tensorrt`` and cuda-python import and that a
CUDA device is visible, never raising; :class:`Engine` loads a serialized
engine and runs batches of host numpy arrays through it, so
:func:`hamjax.measure.measure` times it exactly as it times JAX and
onnxruntime (host-to-device and device-to-host copies are part of every
call). Engines are built by :func:`hamjax.export.tensorrt.build`, which
re-exports everything here.

TensorRT and cuda-python (device memory and streams, no pycuda) are
optional and imported inside the functions that need them::

    pip install tensorrt cuda-python
"""

from __future__ import annotations

import functools
import os
import pathlib
from typing import Any

import numpy as np

INSTALL_HINT = "pip install tensorrt cuda-python"


class TensorRTUnavailable(RuntimeError):
    """TensorRT, cuda-python or a CUDA device is missing; the message says which and how to install.

    Examples:
      >>> issubclass(TensorRTUnavailable, RuntimeError)
      True
    """


def import_cudart() -> Any:
    """The CUDA runtime bindings of cuda-python (``cuda.bindings.runtime`` from 12.6, ``cuda.cudart`` before).

    Returns:
      The ``cudart`` module.

    Raises:
      ImportError: cuda-python is not installed.

    Examples:
      >>> try:  # doctest: +SKIP
      ...     cudart = import_cudart()
      ... except ImportError:
      ...     cudart = None
    """
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        from cuda import cudart
    return cudart


def cuda_call(cudart: Any, call: str, result: tuple) -> Any:
    """Check the ``cudaError_t`` a cuda-python call returns first; return the remaining values.

    Args:
      cudart: the module from :func:`import_cudart`.
      call: the call's name, for the message.
      result: what the call returned, ``(err, *values)``.

    Returns:
      ``None``, the one value, or a tuple of the values.

    Raises:
      RuntimeError: naming ``call`` and the CUDA error.

    Examples:
      >>> cudart = import_cudart()  # doctest: +SKIP
      >>> stream = cuda_call(cudart, "cudaStreamCreate", cudart.cudaStreamCreate())  # doctest: +SKIP
    """
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
            cudart = import_cudart()
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


def require_available() -> None:
    """Raises :class:`TensorRTUnavailable` with :func:`available`'s reason unless engines can be built and run here.

    Examples:
      >>> ok, _ = available()
      >>> try:
      ...     require_available()
      ... except TensorRTUnavailable as err:
      ...     assert not ok and "TensorRT is unavailable" in str(err)
    """
    ok, reason = available()
    if not ok:
        raise TensorRTUnavailable(f"TensorRT is unavailable: {reason}")


@functools.cache
def trt_logger() -> Any:
    """The process's one ``tensorrt.Logger`` (warnings and errors): builders and runtimes must share it.

    Examples:
      >>> logger = trt_logger() if available()[0] else None  # doctest: +SKIP
    """
    import tensorrt as trt

    return trt.Logger(trt.Logger.WARNING)


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
        require_available()
        import tensorrt as trt

        self.name = name
        self.path = path
        self.size_bytes = path.stat().st_size
        self._runtime = trt.Runtime(trt_logger())
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
        self._cudart = import_cudart()
        self._stream = cuda_call(self._cudart, "cudaStreamCreate", self._cudart.cudaStreamCreate())

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
                cuda_call(cudart, "cudaFree", cudart.cudaFree(ptr))
            self._in_ptr = int(cuda_call(cudart, "cudaMalloc", cudart.cudaMalloc(in_bytes)))
            self._in_bytes = in_bytes
        if out_bytes > self._out_bytes:
            ptr, self._out_ptr, self._out_bytes = self._out_ptr, 0, 0
            if ptr:
                cuda_call(cudart, "cudaFree", cudart.cudaFree(ptr))
            self._out_ptr = int(cuda_call(cudart, "cudaMalloc", cudart.cudaMalloc(out_bytes)))
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
        cuda_call(cudart, "cudaMemcpyAsync", cudart.cudaMemcpyAsync(self._in_ptr, x.ctypes.data, x.nbytes, h2d, stream))
        if not context.execute_async_v3(int(stream)):
            raise RuntimeError(f"TensorRT execute_async_v3 failed on a batch of shape {x.shape}")
        cuda_call(
            cudart, "cudaMemcpyAsync", cudart.cudaMemcpyAsync(y.ctypes.data, self._out_ptr, y.nbytes, d2h, stream)
        )
        cuda_call(cudart, "cudaStreamSynchronize", cudart.cudaStreamSynchronize(stream))
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
                cuda_call(cudart, call, fn(handle))
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
