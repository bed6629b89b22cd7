"""Latency, throughput, memory, size and accuracy, measured the same way on every runtime.

Everything here talks to a model through a :class:`Runner` (run a batch, wait
for it, convert to numpy). :class:`JaxRunner` wraps ``(apply_fn, params)``; an
onnxruntime or TensorRT session needs only the same three methods and a
``name`` to be timed and scored by the same code. Each call is timed on its own
with ``time.perf_counter`` around ``runner.block(runner(x))`` after warm-up
calls that absorb compilation; inputs are host numpy arrays on every runtime,
so host-to-device transfer is part of every latency.

Sizes, peak memory and the environment a measurement was taken in come from
:mod:`hamjax.footprint` and are re-exported here.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, Protocol, runtime_checkable

import jax
import numpy as np

from hamjax._checks import check_int, check_number
from hamjax.footprint import (
    CompiledMemory,
    compiled_memory,
    environment,
    param_bytes,
    param_count,
    peak_memory_bytes,
    process_peak_rss_bytes,
)

__all__ = [
    "CompiledMemory",
    "JaxRunner",
    "Latency",
    "Measurement",
    "Runner",
    "Throughput",
    "accuracy",
    "compiled_memory",
    "environment",
    "latency",
    "measure",
    "param_bytes",
    "param_count",
    "peak_memory_bytes",
    "process_peak_rss_bytes",
    "throughput",
]


@runtime_checkable
class Runner(Protocol):
    """Anything that runs a model on a batch: jax, onnxruntime, TensorRT, numpy.

    ``runner(x)`` runs one batch ``(batch, ...)`` and may return device arrays,
    ``block(y)`` waits until ``y`` is computed and returns it, ``to_numpy(y)``
    returns the output as one host array, and ``name`` labels reports. An
    optional ``peak_memory_bytes() -> int | None`` and ``compiled_memory_bytes(x) -> int | None`` are reported.

    Examples:
      >>> import numpy as np
      >>> class NumpyRunner:
      ...     name = "numpy"
      ...     def __call__(self, x): return x @ np.eye(2, dtype=x.dtype)
      ...     def block(self, y): return y
      ...     def to_numpy(self, y): return np.asarray(y)
      >>> isinstance(NumpyRunner(), Runner)
      True
    """

    name: str

    def __call__(self, x: np.ndarray) -> Any: ...

    def block(self, y: Any) -> Any: ...

    def to_numpy(self, y: Any) -> np.ndarray: ...


class JaxRunner:
    """A :class:`Runner` for a ``(apply_fn, params)`` model.

    ``params`` go to the device once and enter the jitted function as an
    argument, not as baked-in constants: one compilation per input shape.

    Args:
      apply_fn: ``apply_fn(params, x) -> y``, pure.
      params: any pytree of arrays.
      name: label for reports.
      jit: if False, ``apply_fn`` runs eagerly (op by op).

    Examples:
      >>> import jax.numpy as jnp, numpy as np
      >>> runner = JaxRunner(lambda p, x: x @ p["w"], {"w": jnp.eye(2)})
      >>> runner.to_numpy(runner.block(runner(np.ones((3, 2), np.float32)))).shape
      (3, 2)
    """

    def __init__(self, apply_fn: Callable[[Any, Any], Any], params: Any, *, name: str = "jax", jit: bool = True):
        self.name = name
        self.apply_fn = apply_fn
        self.params = jax.device_put(params)
        self._fn = jax.jit(apply_fn) if jit else apply_fn

    def __call__(self, x: np.ndarray) -> Any:
        return self._fn(self.params, x)

    def block(self, y: Any) -> Any:
        return jax.block_until_ready(y)

    def to_numpy(self, y: Any) -> np.ndarray:
        leaves = jax.tree_util.tree_leaves(y)
        if len(leaves) != 1:
            raise ValueError(f"to_numpy expects a model that returns one array, got {len(leaves)} leaves")
        return np.asarray(jax.device_get(leaves[0]))

    def peak_memory_bytes(self) -> int | None:
        """Peak bytes in use on the default device, which holds ``params``; None where not reported."""
        return peak_memory_bytes()

    def compiled_memory_bytes(self, x: np.ndarray) -> int | None:
        """Bytes XLA plans for one call on ``x`` (:func:`compiled_memory`'s total); None where not reported."""
        planned = compiled_memory(self._fn, self.params, x) if hasattr(self._fn, "lower") else None
        return None if planned is None else planned.total_bytes


class Latency(NamedTuple):
    """Per-call latency of one batch size, in milliseconds, over ``runs`` timed calls.

    Examples:
      >>> Latency(batch_size=1, p50_ms=2.0, p95_ms=2.5, mean_ms=2.1, runs=50).p50_ms
      2.0
    """

    batch_size: int
    p50_ms: float
    p95_ms: float
    mean_ms: float
    runs: int


class Throughput(NamedTuple):
    """Samples per second at one batch size: ``batch_size / p50_batch_ms * 1000``.

    Examples:
      >>> Throughput(batch_size=256, samples_per_s=128000.0, p50_batch_ms=2.0).samples_per_s
      128000.0
    """

    batch_size: int
    samples_per_s: float
    p50_batch_ms: float


def _rows(where: str, arg: str, x: Any) -> int:
    """The leading (batch) size of ``x``, which must be an array with at least one row."""
    shape = getattr(x, "shape", None)
    if shape is None or len(shape) == 0:
        raise ValueError(f"{where}: {arg} must be an array with a leading batch axis, got {type(x).__name__} {shape}")
    if shape[0] < 1:
        raise ValueError(f"{where}: {arg} must not be empty, got shape {tuple(shape)}")
    return int(shape[0])


def _check_sizes(where: str, arg: str, sizes: Sequence[int], *, allow_empty: bool) -> None:
    if isinstance(sizes, int | np.integer) or not (allow_empty or len(sizes)):
        raise ValueError(f"{where}: {arg} must be a non-empty sequence of integers >= 1, got {sizes!r}")
    for i, b in enumerate(sizes):
        check_int(where, f"{arg}[{i}]", b, minimum=1)


def _batch_of(
    where: str, arg: str, make_input: Callable[[int], np.ndarray] | np.ndarray, batch_size: int
) -> np.ndarray:
    """Build a batch of ``batch_size`` rows from a factory or by tiling example rows."""
    if callable(make_input):
        x = make_input(batch_size)
        if _rows(where, arg, x) != batch_size:
            raise ValueError(f"{where}: {arg}({batch_size}) returned {x.shape[0]} rows, expected {batch_size}")
        return x
    n = _rows(where, arg, make_input)
    if n == batch_size:
        return make_input
    return np.take(np.asarray(make_input), np.arange(batch_size) % n, axis=0)


def latency(runner: Runner, x: np.ndarray, *, warmup: int = 10, runs: int = 100, min_time_s: float = 0.0) -> Latency:
    """Time ``runner.block(runner(x))`` call by call, after ``warmup`` untimed calls.

    Args:
      runner: a :class:`Runner`.
      x: one batch, shape ``(batch, ...)``.
      warmup: untimed calls first, >= 0.
      runs: timed calls, >= 1; more are made until they total ``min_time_s``.
      min_time_s: least total timed seconds, >= 0.

    Returns:
      A :class:`Latency`; ``p50_ms`` and ``p95_ms`` are ``np.percentile``.

    Examples:
      >>> import jax.numpy as jnp, numpy as np
      >>> runner = JaxRunner(lambda p, x: x * p, jnp.float32(2))
      >>> lat = latency(runner, np.ones((4, 3), np.float32), warmup=1, runs=5)
      >>> lat.batch_size, lat.runs, lat.p50_ms <= lat.p95_ms
      (4, 5, True)
    """
    check_int("latency", "warmup", warmup, minimum=0)
    check_int("latency", "runs", runs, minimum=1)
    check_number("latency", "min_time_s", min_time_s, minimum=0)
    batch_size = _rows("latency", "x", x)
    for _ in range(warmup):
        runner.block(runner(x))
    times: list[float] = []
    total = 0.0
    while len(times) < runs or total < min_time_s:
        start = time.perf_counter()
        runner.block(runner(x))
        elapsed = time.perf_counter() - start
        times.append(elapsed)
        total += elapsed
    ms = np.asarray(times) * 1e3
    return Latency(
        batch_size=batch_size,
        p50_ms=float(np.percentile(ms, 50)),
        p95_ms=float(np.percentile(ms, 95)),
        mean_ms=float(ms.mean()),
        runs=len(times),
    )


def throughput(
    runner: Runner,
    make_input: Callable[[int], np.ndarray] | np.ndarray,
    batch_sizes: Sequence[int],
    *,
    warmup: int = 3,
    runs: int = 20,
) -> list[Throughput]:
    """Samples per second at each batch size: ``batch_size / median batch time``.

    Args:
      runner: a :class:`Runner`.
      make_input: ``make_input(batch_size) -> array`` of that many rows, or an
        array of example rows, tiled (or sliced) to each batch size.
      batch_sizes: batch sizes to try, each >= 1.
      warmup: untimed calls per batch size, >= 0.
      runs: timed calls per batch size, >= 1.

    Returns:
      One :class:`Throughput` per batch size, in the order given.

    Examples:
      >>> import jax.numpy as jnp, numpy as np
      >>> runner = JaxRunner(lambda p, x: x * p, jnp.float32(2))
      >>> rows = np.ones((3, 5), np.float32)
      >>> [t.batch_size for t in throughput(runner, rows, [1, 8], warmup=1, runs=3)]
      [1, 8]
    """
    _check_sizes("throughput", "batch_sizes", batch_sizes, allow_empty=False)
    check_int("throughput", "warmup", warmup, minimum=0)
    check_int("throughput", "runs", runs, minimum=1)
    results = []
    for b in batch_sizes:
        lat = latency(runner, _batch_of("throughput", "make_input", make_input, int(b)), warmup=warmup, runs=runs)
        per_s = int(b) / (lat.p50_ms / 1e3) if lat.p50_ms > 0 else math.inf
        results.append(Throughput(batch_size=int(b), samples_per_s=per_s, p50_batch_ms=lat.p50_ms))
    return results


def accuracy(runner_or_apply: Any, x: np.ndarray, y: np.ndarray, *, batch_size: int = 256, params: Any = None) -> float:
    """Top-1 accuracy of a model on ``(x, y)``, evaluated in batches.

    The last, partial batch runs at its own size (a jitted model compiles at
    most two shapes). Predictions are the argmax of the output's last axis; a
    1-D output is read as class ids.

    Args:
      runner_or_apply: a :class:`Runner`, or an ``apply_fn`` with ``params=``.
      x: inputs, shape ``(n, ...)``.
      y: labels, shape ``(n,)`` class ids or ``(n, classes)`` one-hot.
      batch_size: rows per batch, >= 1.
      params: the params of an ``apply_fn``; None with a Runner.

    Returns:
      The fraction of correct predictions, in ``[0, 1]``.

    Examples:
      >>> import jax.numpy as jnp, numpy as np
      >>> x = np.eye(3, dtype=np.float32)
      >>> accuracy(lambda p, x: x @ p, x, np.array([0, 1, 0]), params=jnp.eye(3), batch_size=2)
      0.6666666666666666
    """
    if isinstance(runner_or_apply, Runner):
        if params is not None:
            raise ValueError("accuracy: params must be None when runner_or_apply is a Runner (it holds its own)")
        runner = runner_or_apply
    elif callable(runner_or_apply):
        if params is None:
            raise ValueError("accuracy: params is required when runner_or_apply is an apply_fn")
        runner = JaxRunner(runner_or_apply, params)
    else:
        raise ValueError(
            f"accuracy: runner_or_apply must be a Runner or an apply_fn, got {type(runner_or_apply).__name__}"
        )
    check_int("accuracy", "batch_size", batch_size, minimum=1)
    n = _rows("accuracy", "x", x)
    labels = np.asarray(y)
    if labels.ndim == 0 or labels.shape[0] != n:
        raise ValueError(f"accuracy: y must have {n} rows like x, got shape {labels.shape}")
    if labels.ndim > 1:
        labels = labels.argmax(-1)
    correct = 0
    for start in range(0, n, batch_size):
        out = runner.to_numpy(runner.block(runner(x[start : start + batch_size])))
        pred = out.argmax(-1) if out.ndim > 1 else out
        correct += int(np.sum(pred == labels[start : start + batch_size]))
    return correct / n


@dataclasses.dataclass(frozen=True)
class Measurement:
    """Everything :func:`measure` reports about one model on one runtime.

    Attributes:
      name: label of the model or variant.
      params: parameter count (0 when unknown, e.g. an opaque engine).
      size_bytes: bytes of the weights (or of the serialized model).
      latency: latency at the latency batch size, or None if not measured.
      throughput: one entry per throughput batch size.
      accuracy: top-1 accuracy on the test set, or None without one.
      peak_memory_bytes: device high-water mark, or None where not reported.
      compiled_memory_bytes: XLA's plan for one call at the first throughput batch (:func:`compiled_memory`), or None.

    Examples:
      >>> m = Measurement("m", 10, 40, None, (), None, None)
      >>> Measurement.from_dict(m.to_dict()) == m
      True
    """

    name: str
    params: int
    size_bytes: int
    latency: Latency | None
    throughput: tuple[Throughput, ...]
    accuracy: float | None
    peak_memory_bytes: int | None
    compiled_memory_bytes: int | None = None

    def to_dict(self) -> dict:
        """Return a JSON-serialisable dict (plain ints, floats, lists and None)."""
        return {
            "name": self.name,
            "params": int(self.params),
            "size_bytes": int(self.size_bytes),
            "latency": None if self.latency is None else _plain(self.latency),
            "throughput": [_plain(t) for t in self.throughput],
            "accuracy": None if self.accuracy is None else float(self.accuracy),
            "peak_memory_bytes": None if self.peak_memory_bytes is None else int(self.peak_memory_bytes),
            "compiled_memory_bytes": None if self.compiled_memory_bytes is None else int(self.compiled_memory_bytes),
        }

    @classmethod
    def from_dict(cls, d: dict) -> Measurement:
        """Rebuild a :class:`Measurement` from :meth:`to_dict` output."""
        lat = None if d["latency"] is None else Latency(**d["latency"])
        return cls(**{**d, "latency": lat, "throughput": tuple(Throughput(**t) for t in d["throughput"])})


def _plain(row: NamedTuple) -> dict:
    return {k: int(v) if isinstance(v, int | np.integer) else float(v) for k, v in row._asdict().items()}


def measure(
    runner: Runner,
    *,
    name: str,
    params: Any = None,
    size_bytes: int | None = None,
    example: np.ndarray,
    x_test: np.ndarray | None = None,
    y_test: np.ndarray | None = None,
    latency_batch: int | None = 1,
    throughput_batches: Sequence[int] = (256,),
    warmup: int = 10,
    runs: int = 50,
) -> Measurement:
    """Measure size, latency, throughput, accuracy and memory of one runner.

    Args:
      runner: a :class:`Runner`.
      name: label for the result.
      params: the weights pytree, for the count and default size; defaults to
        ``runner.params`` where the runner has one (:class:`JaxRunner`).
      size_bytes: model size; defaults to ``param_bytes(params)``. Required
        when there are no params (pass the serialized model's size).
      example: example input rows ``(n, ...)``, tiled to each batch size.
      x_test, y_test: test inputs and labels for :func:`accuracy`, or None.
      latency_batch: batch size for :func:`latency`, or None to skip it.
      throughput_batches: batch sizes for :func:`throughput` (may be empty).
      warmup, runs: untimed and timed calls per timing.

    Returns:
      A :class:`Measurement`.

    Examples:
      >>> import jax.numpy as jnp, numpy as np
      >>> runner = JaxRunner(lambda p, x: x @ p["w"], {"w": jnp.eye(4)})
      >>> m = measure(runner, name="eye", example=np.ones((2, 4), np.float32),
      ...             throughput_batches=(8,), warmup=1, runs=3)
      >>> m.params, m.size_bytes, m.latency.batch_size, m.throughput[0].batch_size
      (16, 64, 1, 8)
    """
    _rows("measure", "example", example)
    check_int("measure", "warmup", warmup, minimum=0)
    check_int("measure", "runs", runs, minimum=1)
    if latency_batch is not None:
        check_int("measure", "latency_batch", latency_batch, minimum=1)
    _check_sizes("measure", "throughput_batches", throughput_batches, allow_empty=True)
    if (x_test is None) != (y_test is None):
        raise ValueError("measure: x_test and y_test must be given together")
    if params is None:
        params = getattr(runner, "params", None)
    if size_bytes is None:
        if params is None:
            raise ValueError("measure: size_bytes is required when there are no params to size")
        size_bytes = param_bytes(params)
    lat = None
    if latency_batch is not None:
        lat = latency(runner, _batch_of("measure", "example", example, latency_batch), warmup=warmup, runs=runs)
    thr = throughput(runner, example, throughput_batches, warmup=warmup, runs=runs) if throughput_batches else []
    acc = None if x_test is None else accuracy(runner, x_test, y_test)
    peak = getattr(runner, "peak_memory_bytes", None)
    planned, batch = getattr(runner, "compiled_memory_bytes", None), (*throughput_batches, latency_batch)[0]
    planned = planned(_batch_of("measure", "example", example, batch)) if callable(planned) and batch else None
    return Measurement(
        name=name,
        params=0 if params is None else param_count(params),
        size_bytes=int(size_bytes),
        latency=lat,
        throughput=tuple(thr),
        accuracy=acc,
        peak_memory_bytes=peak() if callable(peak) else None,
        compiled_memory_bytes=planned,
    )
