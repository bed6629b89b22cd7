"""The ``export`` recipe step: ONNX files of the current model, measured in onnxruntime.

The step writes ``model.fp32.onnx`` (and ``.fp16``, ``.int8`` as asked) to
``<workdir>/export`` through :func:`hamjax.export.onnx`, each checked
against JAX before it counts, and adds one report row per file
(``"onnx fp32"``, ``"onnx int8"``) measured by an onnxruntime
:class:`~hamjax.export.runtime.Session`. Beside every ONNX file it writes
the input statistics of the training split (``model.fp32.stats.json``,
:class:`~hamjax.export.input_stats.InputStats`), which ``hamjax serve``
monitors input drift against. The int8 file is the quantized
model an earlier ``quantize`` step left in ``context.extras["quantized"]``,
or, without one, a static int8 model calibrated here. Where TensorRT and a
GPU exist, a ``"tensorrt fp16"`` row is added too. The current model is
not changed.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from pathlib import Path

from hamjax import measure, report
from hamjax.recipes.schema import Context, Field, StepKind
from hamjax.recipes.steps.quantization import calibration_batches

FIELDS = {
    "precisions": Field(str, "fp32,int8", doc="comma-separated: fp32, fp16, int8"),
    "tensorrt": Field(bool, True, doc="also build and measure a TensorRT fp16 engine where TensorRT and a GPU exist"),
    "threads": Field(int, 0, low=0, doc="onnxruntime intra-op threads (0: its default)"),
    "stage": Field(str, "onnx", doc="prefix of the rows this step adds (onnx fp32, onnx int8)"),
}


def _precisions(value: str) -> list[str]:
    from hamjax.export import PRECISIONS

    names = [p.strip() for p in value.split(",") if p.strip()]
    return names if names and all(p in PRECISIONS for p in names) and len(set(names)) == len(names) else []


def check(f: dict) -> str | None:
    """A message if ``precisions`` is not a list of distinct export precisions, else ``None``.

    Args:
      f: the step's fields with defaults filled in.

    Examples:
      >>> from hamjax.recipes.steps import onnx_export
      >>> onnx_export.check({"precisions": "fp32,int4"})
      "precisions = 'fp32,int4': give distinct names among ('fp32', 'fp16', 'int8'), comma-separated"
    """
    from hamjax.export import PRECISIONS

    if not _precisions(f["precisions"]):
        return f"precisions = {f['precisions']!r}: give distinct names among {PRECISIONS}, comma-separated"
    return None


def _summary(result) -> str:
    checks = ", ".join(
        f"{c.inputs}: rel err {c.max_relative_error:.1e}, argmax agreement {c.argmax_agreement:.4f}"
        for c in result.checks
    )
    from hamjax.export import coverage

    kernels = f"; integer kernels: {', '.join(result.integer_ops)}" if result.integer_ops else ""
    sites = f"; {coverage.summary(result.sites)}" if result.sites else ""
    return f"{result.path.name}, checked against JAX ({checks}){kernels}{sites}"


def run(f: dict, context: Context) -> Context:
    """Export ``context``'s model to checked ONNX files and add one onnxruntime row per file.

    Args:
      f: the step's validated fields (:data:`FIELDS`).
      context: the run so far; files go to ``workdir/export`` (a temporary
        folder without a workdir).

    Returns:
      ``context`` with the export results in ``context.extras["onnx <precision>"]``.

    Examples:
      >>> import hamjax
      >>> from hamjax import recipes
      >>> apply_fn, params = hamjax.functional(hamjax.models.build("mlp", input_shape=(8, 8, 1)))
      >>> context = recipes.Context(apply_fn, params, hamjax.data.load("digits"), progress=False)
      >>> fields = {"precisions": "fp32", "tensorrt": False, "threads": 0, "stage": "onnx"}
      >>> run(fields, context).extras["onnx fp32"].path.name  # doctest: +SKIP
      'model.fp32.onnx'
    """
    from hamjax import export
    from hamjax.export import runtime, tensorrt
    from hamjax.export.input_stats import InputStats, stats_path

    out = Path(context.path("export", "the ONNX files") or tempfile.mkdtemp(prefix="hamjax-export-"))
    out.mkdir(parents=True, exist_ok=True)
    dataset = context.dataset
    example, check_data = dataset.val.x[:64], dataset.val.x[64:512]
    threads = f["threads"] or None
    count = measure.param_count(context.params)
    stats = InputStats.from_data(dataset.train.x)
    for precision in _precisions(f["precisions"]):
        path = out / f"model.{precision}.onnx"
        if precision == "int8" and "quantized" in context.extras:
            qapply, qparams = context.extras["quantized"]
            result = export.onnx(qapply, qparams, example, path, precision="int8", check_data=check_data)
        elif precision == "int8":
            batches = calibration_batches(dataset, 8, 128, context.seed)
            result = export.onnx(
                context.apply_fn,
                context.params,
                example,
                path,
                precision="int8",
                calibration=batches,
                check_data=check_data,
            )
        else:
            result = export.onnx(
                context.apply_fn, context.params, example, path, precision=precision, check_data=check_data
            )
        stats.save(stats_path(path))
        name = f"{f['stage']} {precision}"
        context.stages.append(
            report.Stage(
                name,
                lambda p=path, n=name: runtime.Session(p, threads=threads, name=n),
                size_bytes=result.size_bytes,
                param_count=count,
                notes=f"onnxruntime CPU; {_summary(result)}",
            )
        )
        context.extras[f"onnx {precision}"] = result
    ok, why = tensorrt.available()
    if f["tensorrt"] and ok:
        fp32 = out / "model.fp32.onnx"
        if not fp32.exists():
            export.onnx(context.apply_fn, context.params, example, fp32, check_data=check_data)
            stats.save(stats_path(fp32))
        engine = tensorrt.build(fp32, "fp16")
        context.stages.append(
            report.Stage(
                "tensorrt fp16",
                lambda: tensorrt.Engine(engine),
                size_bytes=os.path.getsize(engine),
                param_count=count,
                notes=f"TensorRT fp16 engine from {fp32.name} ({why})",
            )
        )
    elif f["tensorrt"] and context.stages:
        last = context.stages[-1]
        context.stages[-1] = dataclasses.replace(last, notes=f"{last.notes}; no TensorRT row: {why}")
    return context


KIND = StepKind(
    "export",
    FIELDS,
    run,
    doc="write the current model as checked ONNX files (fp32, fp16, int8 QDQ) and measure them in onnxruntime",
    check=check,
)
