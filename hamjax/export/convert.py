"""``export.onnx``: an apply function and its params to a checked ONNX file.

Parameters are baked in as initializers and the batch dimension stays
symbolic (``B``), so one file serves every batch size. Three precisions:

* ``"fp32"``: the model as JAX runs it.
* ``"fp16"``: params and activations in float16 (inputs and outputs stay
  float32 unless ``fp16_io=True``). For GPUs; onnxruntime's CPU provider has
  few float16 kernels.
* ``"int8"``: a QDQ graph of hamjax's quantized model (see
  :mod:`hamjax.export.qdq`): pass a :class:`~hamjax.quant.QuantizedApply`
  and its qparams, or a float model with ``calibration`` batches (static
  int8, per-channel weights, MSE-calibrated activations).

Nothing is called done before it is checked: ``onnx.checker``, then
onnxruntime against JAX on fresh random inputs (uniform over the example's
range) and on real data (the example and ``check_data``). fp32 must agree to
a maximum relative error (``max|onnx - jax| / max|jax|``) of 1e-5, fp16 to
1e-2; int8 must give the same argmax as hamjax's quantized JAX model on at
least 99.5% of the rows, a row whose two classes are tied at int8 resolution
(:data:`INT8_TIE`) counting as agreeing, and :attr:`ExportResult.sites`
says, per quantized site, whether onnxruntime runs it as an integer kernel
(a site it runs in float warns with
:class:`~hamjax.export.coverage.FloatSiteWarning`). A failed check raises
:class:`ExportError` with the numbers and leaves the rejected model next to
``path`` for inspection.
The file is written atomically (a temporary file, then a rename).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import jax
import numpy as np

from hamjax import checkpoint
from hamjax._base import call_model
from hamjax.export import coverage, graph, qdq, rewrites
from hamjax.export.graph import ExportError
from hamjax.precision import get_policy

PRECISIONS = ("fp32", "fp16", "int8")
MAX_RELATIVE_ERROR = {"fp32": 1e-5, "fp16": 1e-2}
MIN_ARGMAX_AGREEMENT = 0.995
CHECK_BATCH = 256
INT8_TIE = 1e-2
"""int8 checks: logits within this fraction of the largest |logit| of JAX's output count as tied."""


@dataclasses.dataclass(frozen=True)
class Check:
    """One comparison of onnxruntime against JAX.

    Attributes:
      inputs: ``"random"`` or ``"data"``.
      rows: how many input rows were compared.
      max_relative_error: ``max|onnx - jax| / max|jax|``.
      argmax_agreement: fraction of rows with the same argmax over the last axis.
      passed: whether the precision's threshold holds.
      ties: int8: rows counted as agreeing although their argmax differs,
        because JAX's logit for onnxruntime's class is within
        :data:`INT8_TIE` of its maximum (a tie at int8 resolution: the int32
        bias of an integer convolution moves outputs by up to half its
        quantum, enough to swap two logits that close).
    """

    inputs: str
    rows: int
    max_relative_error: float
    argmax_agreement: float
    passed: bool
    ties: int = 0


@dataclasses.dataclass(frozen=True)
class ExportResult:
    """What :func:`onnx` wrote and how it checked.

    Attributes:
      path: the ONNX file.
      precision: ``"fp32"``, ``"fp16"`` or ``"int8"``.
      size_bytes: the file's size.
      input_shape: the input shape, ``None`` for the symbolic batch.
      ops: the op types of the exported graph.
      runtime_ops: the op types onnxruntime runs after optimizing it (CPU).
      integer_ops: those of ``runtime_ops`` that are integer kernels.
      checks: the comparisons against JAX.
      seconds: time taken by the export and checks.
      sites: int8: per quantized site, the op onnxruntime runs it with and
        whether that is an integer kernel (:func:`hamjax.export.coverage.site_kernels`);
        empty for fp32 and fp16.
    """

    path: Path
    precision: str
    size_bytes: int
    input_shape: tuple
    ops: tuple[str, ...]
    runtime_ops: tuple[str, ...]
    integer_ops: tuple[str, ...]
    checks: tuple[Check, ...]
    seconds: float
    sites: tuple[coverage.SiteKernel, ...] = ()


def _validate(apply_fn, params, example, path, precision, calibration) -> tuple[np.ndarray, Path]:
    from hamjax.quant import QuantizedApply

    if precision not in PRECISIONS:
        raise ValueError(f"export.onnx: precision must be one of {PRECISIONS}, got {precision!r}")
    if not callable(apply_fn):
        raise ValueError(f"export.onnx: apply_fn must be callable, got {type(apply_fn).__name__}")
    example = np.asarray(example)
    if example.ndim < 1 or example.shape[0] < 1:
        raise ValueError(f"export.onnx: example_input needs a leading batch axis with rows, got shape {example.shape}")
    if not np.issubdtype(example.dtype, np.floating):
        raise ValueError(f"export.onnx: example_input must be floating, got dtype {example.dtype}")
    if not np.all(np.isfinite(example)):
        raise ValueError("export.onnx: example_input has non-finite values")
    quantized = isinstance(apply_fn, QuantizedApply)
    if quantized and precision != "int8":
        raise ValueError(f"export.onnx: a QuantizedApply exports as precision='int8', got {precision!r}")
    if quantized and calibration is not None:
        raise ValueError("export.onnx: calibration is for float models; this model is already quantized")
    if precision == "int8" and not quantized and calibration is None:
        raise ValueError(
            "export.onnx: precision='int8' needs calibration batches for a float model, "
            "or a (qapply, qparams) pair from hamjax.quant.quantize_model"
        )
    if quantized and not (isinstance(params, dict) and "weights" in params):
        raise ValueError("export.onnx: a QuantizedApply needs its qparams ({'weights', 'activations'})")
    return example, _check_path(path)


def _check_path(path) -> Path:
    """``path`` as a Path, or raises if the ONNX file could not be written there (before any work)."""
    try:
        path = Path(path)
    except TypeError as err:
        raise ValueError(f"export.onnx: path must be a path to a .onnx file, got {path!r}") from err
    if path.suffix != ".onnx":
        raise ValueError(f"export.onnx: path must end in .onnx, got {str(path)!r}")
    parent = path.parent
    if not parent.exists():
        # a regular file further up is the cause to report (check_file does), not a missing directory
        above = next((a for a in parent.parents if a.exists()), None)
        if above is None or above.is_dir():
            raise FileNotFoundError(f"export.onnx: the directory {str(parent)!r} of path {str(path)!r} does not exist")
    checkpoint.check_file("export.onnx", "path", path)
    return path


def _build(apply_fn, params, example, precision, dynamic_batch, fp16_io, calibration, kw):
    """``(onnx model, reference function, quantized sites)``: the JAX function the file must reproduce."""
    from hamjax import quant

    if precision == "int8":
        if not isinstance(apply_fn, quant.QuantizedApply):
            # what the quantized model cannot export, this float one cannot either: say so before calibrating
            spec = graph.input_spec(example, dynamic_batch=dynamic_batch)
            graph.check(graph.trace(lambda x: call_model(apply_fn, params, x, **kw)[0], spec))
            apply_fn, params = quant.quantize_model(apply_fn, params, calibration=calibration, **kw)
        model = qdq.quantized_model(apply_fn, params, example, dynamic_batch=dynamic_batch, **kw)
        qapply, qparams = apply_fn, params
        sites = [(row["name"], row["primitive"]) for row in qapply.site_table(qparams)]
        return model, jax.jit(lambda x: qapply(qparams, x, **kw)), sites
    if precision == "fp16":
        policy = get_policy(f"p=f16,c=f16,o={'f16' if fp16_io else 'f32'}")
        p16 = policy.cast_to_param(params)

        def fn(x):
            return policy.cast_to_output(call_model(apply_fn, p16, policy.cast_to_compute(x), **kw)[0])

        spec_example = example.astype(np.float16) if fp16_io else example.astype(np.float32)
    else:

        def fn(x):
            return call_model(apply_fn, params, x, **kw)[0]

        spec_example = example
    spec = graph.input_spec(spec_example, dynamic_batch=dynamic_batch)
    model = graph.convert(graph.trace(fn, spec), spec, model_name=f"hamjax_{precision}")
    rewrites.matmul_einsums(model)  # dense layers on 3-D inputs (the attention projections) run as MatMul
    return model, jax.jit(lambda x: call_model(apply_fn, params, x, **kw)[0]), []


def _compare(kind: str, got: np.ndarray, want: np.ndarray, precision: str) -> Check:
    got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
    if got.shape != want.shape:
        raise ExportError(f"export.onnx: onnxruntime gave shape {got.shape}, JAX {want.shape} ({kind} inputs)")
    scale = max(float(np.max(np.abs(want))), 1e-30)
    rel = float(np.max(np.abs(got - want))) / scale if np.all(np.isfinite(got)) else float("inf")
    agree = float(np.mean(np.argmax(got, -1) == np.argmax(want, -1))) if want.ndim >= 1 and want.shape[-1] > 1 else 1.0
    ties = 0
    if precision == "int8" and want.ndim >= 1 and want.shape[-1] > 1:
        chosen = np.take_along_axis(want, np.argmax(got, -1)[..., None], -1)[..., 0]
        close = np.max(want, -1) - chosen <= INT8_TIE * scale
        ties = int(np.sum(close & (np.argmax(got, -1) != np.argmax(want, -1))))
    rows = int(np.prod(got.shape[:-1])) if got.ndim > 1 else 1
    within = agree + ties / rows if precision == "int8" else agree
    passed = within >= MIN_ARGMAX_AGREEMENT if precision == "int8" else rel <= MAX_RELATIVE_ERROR[precision]
    return Check(kind, int(got.shape[0]) if got.ndim else 1, rel, agree, bool(passed), ties)


def _check(session, reference, example, check_data, precision, fp16_io, seed) -> list[Check]:
    rng = np.random.default_rng(seed)
    lo, hi = float(example.min()), float(example.max())
    if hi <= lo:
        lo, hi = lo - 1.0, hi + 1.0
    fresh = rng.uniform(lo, hi, size=(min(CHECK_BATCH, 64), *example.shape[1:])).astype(np.float32)
    data = example if check_data is None else np.concatenate([example, np.asarray(check_data, example.dtype)])
    checks = []
    for kind, x in (("random", fresh), ("data", data[: 4 * CHECK_BATCH])):
        x_in = x.astype(np.float16) if fp16_io else x.astype(np.float32)
        try:
            got = session(x_in)
        except Exception as err:
            raise ExportError(f"export.onnx: onnxruntime cannot run the exported {precision} model: {err}") from err
        # the reference is the float32 model: float16 inputs (fp16_io) are widened to it, not promoted inside it
        want = np.concatenate(
            [
                np.asarray(reference(x_in[i : i + CHECK_BATCH].astype(np.float32)))
                for i in range(0, len(x_in), CHECK_BATCH)
            ]
        )
        checks.append(_compare(kind, got, want, precision))
    return checks


def _failure(checks: list[Check], precision: str, rejected: Path) -> str:
    bound = (
        f"argmax agreement >= {MIN_ARGMAX_AGREEMENT}"
        if precision == "int8"
        else f"max relative error <= {MAX_RELATIVE_ERROR[precision]:g}"
    )
    parts = [
        f"{c.inputs} inputs ({c.rows} rows): max relative error {c.max_relative_error:.3g}, "
        f"argmax agreement {c.argmax_agreement:.4f} ({c.ties} rows tied)"
        for c in checks
        if not c.passed
    ]
    return f"export.onnx: the {precision} model fails its check ({bound}): {'; '.join(parts)}; kept at {rejected}"


def onnx(
    apply_fn,
    params,
    example_input,
    path: str | os.PathLike,
    *,
    dynamic_batch: bool = True,
    precision: str = "fp32",
    calibration=None,
    check_data=None,
    fp16_io: bool = False,
    seed: int = 0,
    **kw: Any,
) -> ExportResult:
    """Export a model to an ONNX file and check it in onnxruntime against JAX.

    Args:
      apply_fn: any apply function of the contract (a plain function, a
        :class:`hamjax.ApplyFn` in eval mode), or a
        :class:`~hamjax.quant.QuantizedApply` for ``precision="int8"``.
      params: its params (the qparams for a QuantizedApply).
      example_input: a real input batch: its shape and dtype define the
        ONNX input, and it is part of the check.
      path: the ``.onnx`` file to write (its directory must exist and be
        writable; ``path`` must not be a directory).
      dynamic_batch: a symbolic batch dimension (else the example's batch).
      precision: ``"fp32"``, ``"fp16"`` or ``"int8"``.
      calibration: for ``"int8"`` of a float model: input batches that
        calibrate the activation ranges.
      check_data: more real inputs for the check.
      fp16_io: for ``"fp16"``: float16 inputs and outputs too.
      seed: the random check inputs' seed.
      **kw: keyword arguments for ``apply_fn``.

    Returns:
      An :class:`ExportResult`.

    Warns:
      FloatSiteWarning: an int8 model with a quantized site onnxruntime runs
        in float (:attr:`ExportResult.sites` names it and the op).

    Raises:
      ValueError: bad arguments, or a ``path`` that is a directory or whose
        directory is a regular file or not writable (all before anything is
        traced).
      FileNotFoundError: ``path``'s directory does not exist.
      ExportError: before conversion, a model that cannot be exported: a
        primitive jax2onnx cannot lower, random numbers (``jax.random``,
        dropout in train mode), FFTs or complex arithmetic, each named with
        the line that produced it (:func:`hamjax.export.graph.check`); or a
        failed check (with the numbers).
    """
    import time

    import onnx as onnx_lib

    from hamjax.export import runtime

    started = time.perf_counter()
    example, path = _validate(apply_fn, params, example_input, path, precision, calibration)
    model, reference, sites = _build(apply_fn, params, example, precision, dynamic_batch, fp16_io, calibration, kw)
    try:
        onnx_lib.checker.check_model(model)
    except onnx_lib.checker.ValidationError as err:
        raise ExportError(f"export.onnx: onnx.checker rejects the {precision} model: {err}") from err
    data = model.SerializeToString()
    session = runtime.Session(data, providers="cpu")
    checks = _check(session, reference, example, check_data, precision, fp16_io, seed)
    if not all(c.passed for c in checks):
        rejected = path.with_name(f"{path.stem}.rejected.onnx")
        checkpoint.atomic_write(rejected, data)
        raise ExportError(_failure(checks, precision, rejected))
    checkpoint.atomic_write(path, data)
    kernels = coverage.site_kernels(session.optimized_graph(), sites, model.graph) if sites else ()
    coverage.warn_float_sites(kernels)
    shape = tuple(None if isinstance(d, str) or d is None else d for d in session.input_shape)
    return ExportResult(
        path=path,
        precision=precision,
        size_bytes=path.stat().st_size,
        input_shape=shape,
        ops=tuple(sorted({n.op_type for n in model.graph.node})),
        runtime_ops=session.optimized_ops(),
        integer_ops=session.integer_ops(),
        checks=tuple(checks),
        seconds=time.perf_counter() - started,
        sites=kernels,
    )
