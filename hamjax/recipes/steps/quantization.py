"""The ``quantize`` recipe step: post-training int8 (weight-only, dynamic, static) or QAT.

The step leaves the float model as the current model (later steps can
still train or prune it) and puts the quantized pair in
``context.extras["quantized"] = (qapply, qparams)`` for exporters, with a
report row that shows its accuracy and int storage. Its speed is measured
where integer kernels run (onnxruntime, the export step), not here: the
JAX model simulates integer arithmetic in float32.

The step's ``method`` is one of :data:`hamjax.quant.METHODS` or ``"qat"``;
its ``calibration_method`` one of :data:`hamjax.quant.CALIBRATION_METHODS`.
Recipes written before these names (``mode = ...``, ``method = "mse"``)
are refused with a message that gives the new field name.
"""

from __future__ import annotations

import numpy as np

from hamjax import data, measure, quant, report, train
from hamjax.recipes.schema import Context, Field, StepKind

METHODS = (*quant.METHODS, "qat")
"""The quantize step's methods: the quant family's post-training ones, and quantization-aware training."""

FIELDS = {
    "method": Field(str, "static", choices=METHODS, doc="weight_only, dynamic, static (calibrated) or qat"),
    "bits": Field(int, 8, low=2, high=16, doc="weight bit width (int4 and below stored one code per byte)"),
    "act_bits": Field(int, 8, low=2, high=16, doc="activation bit width (dynamic, static, qat)"),
    "per_channel": Field(bool, True, doc="one weight scale per output channel"),
    "symmetric": Field(bool, True, doc="symmetric weights (zero point 0)"),
    "calibration_method": Field(
        str, "mse", choices=quant.CALIBRATION_METHODS, doc="how activation ranges are calibrated"
    ),
    "percentile": Field(float, 99.99, above=50.0, high=100.0, doc="for calibration_method = percentile"),
    "calibration_batches": Field(int, 8, low=1, doc="training batches used to calibrate activation ranges"),
    "batch_size": Field(int, 128, low=1, doc="examples per calibration and QAT batch"),
    "finetune_epochs": Field(int, 0, low=0, doc="QAT epochs with fake-quantized weights and activations"),
    "learning_rate": Field(float, 1e-4, above=0.0, doc="QAT learning rate"),
    "skip": Field(
        str,
        "",
        doc="weight sites kept in float: comma-separated key paths as hamjax.jaxpr.find_sites names them "
        "(the names hamjax.autotune.layer_sensitivity ranks)",
    ),
    "stage": Field(str, "int8", doc="name of the row this step adds to the report"),
}

RENAMED = {"mode": "method", "method": "calibration_method"}
"""Field names of the quantize step before the library's one vocabulary, and their names now."""


def check(f: dict) -> str | None:
    """The rules across the quantize step's fields; a message for the first one broken, else ``None``.

    Args:
      f: the step's fields with defaults filled in.

    Examples:
      >>> from hamjax.recipes.steps import quantization
      >>> quantization.check({"method": "qat", "finetune_epochs": 0})
      "method = 'qat' needs finetune_epochs >= 1"
    """
    if f["method"] == "qat" and f["finetune_epochs"] < 1:
        return "method = 'qat' needs finetune_epochs >= 1"
    if f["method"] != "qat" and f["finetune_epochs"]:
        return f"finetune_epochs = {f['finetune_epochs']} only applies to method = 'qat' (got method = {f['method']!r})"
    return None


def skipped(f: dict) -> tuple[str, ...]:
    """The site names of the ``skip`` field, in order, without blanks or repeats.

    Examples:
      >>> skipped({"skip": "['w1'], ['w2'],,['w1']"})
      ("['w1']", "['w2']")
    """
    return tuple(dict.fromkeys(name.strip() for name in f.get("skip", "").split(",") if name.strip()))


def calibration_batches(dataset, count: int, batch_size: int, seed: int) -> list[np.ndarray]:
    """``count`` training batches of inputs, in the order training would draw them.

    Args:
      dataset: a :class:`hamjax.data.Dataset`.
      count: how many batches.
      batch_size: examples per batch (at most the training split's size).
      seed: the run's seed.

    Returns:
      A list of ``count`` input arrays.

    Examples:
      >>> import hamjax
      >>> from hamjax.recipes.steps.quantization import calibration_batches
      >>> [b.shape for b in calibration_batches(hamjax.data.load("digits"), 2, 16, seed=0)]
      [(16, 8, 8, 1), (16, 8, 8, 1)]
    """
    split = dataset.train
    batch_size = min(batch_size, len(split.y))
    return [data.batch_at(split, batch_size, i, seed=seed)[0] for i in range(count)]


def _qat(f: dict, context: Context, batches, common: dict):
    """Quantization-aware training from calibrated ranges; the finetuned float params."""
    ranges = quant.calibrate(
        context.apply_fn,
        context.params,
        batches,
        method=f["calibration_method"],
        percentile=f["percentile"],
        bits=f["act_bits"],
    )
    qat_fn = quant.fake_quant_apply(
        context.apply_fn, bits=f["bits"], act_bits=f["act_bits"], method="static", ranges=ranges, **common
    )
    config = train.TrainConfig(
        epochs=f["finetune_epochs"], batch_size=f["batch_size"], learning_rate=f["learning_rate"], seed=context.seed
    )
    result = train.fit(
        qat_fn,
        context.params,
        context.dataset,
        config,
        checkpoint_dir=context.checkpoint_dir(f["stage"]),
        progress=context.progress,
    )
    context.note_resumed(f["stage"], result)
    return result.params


def run(f: dict, context: Context) -> Context:
    """Quantize ``context``'s model; leave the quantized pair in ``context.extras["quantized"]``.

    Args:
      f: the step's validated fields (:data:`FIELDS`).
      context: the run so far.

    Returns:
      ``context`` with one more report row (QAT also updates the float params).

    Examples:
      >>> import hamjax
      >>> from hamjax import recipes
      >>> apply_fn, params = hamjax.functional(hamjax.models.build("mlp", input_shape=(8, 8, 1)))
      >>> context = recipes.Context(apply_fn, params, hamjax.data.load("digits"), progress=False)
      >>> fields = recipes.validate({"name": "r", "steps": [{"kind": "quantize"}]}).steps[0].params
      >>> run(dict(fields), context).stages[-1].name
      'int8'
    """
    apply_fn, method = context.apply_fn, f["method"]
    batches = calibration_batches(context.dataset, f["calibration_batches"], f["batch_size"], context.seed)
    common = dict(per_channel=f["per_channel"], symmetric=f["symmetric"], skip=skipped(f))
    if method == "qat":
        context.params = _qat(f, context, batches, common)
    params = context.params
    qapply, qparams = quant.quantize_model(
        apply_fn,
        params,
        method="static" if method == "qat" else method,
        bits=f["bits"],
        act_bits=f["act_bits"],
        calibration=batches,
        example=batches[0],
        calibration_method=f["calibration_method"],
        percentile=f["percentile"],
        **common,
    )
    context.extras["quantized"] = (qapply, qparams)
    what = f"int{f['bits']} {method}, {'per-channel' if f['per_channel'] else 'per-tensor'}"
    if common["skip"]:
        what += f", {len(common['skip'])} site(s) kept in float ({', '.join(common['skip'])})"
    if method in ("static", "qat"):
        what += f", activations int{f['act_bits']} calibrated by {f['calibration_method']}"
    context.stages.append(
        report.Stage(
            f["stage"],
            lambda: measure.JaxRunner(qapply, qparams, name=f["stage"]),
            qparams,
            param_count=measure.param_count(params),
            notes=f"{what}; size is the int storage; speed is measured in onnxruntime (export), "
            "since the JAX model simulates integer arithmetic in float32",
            timed=False,
        )
    )
    return context


KIND = StepKind(
    "quantize",
    FIELDS,
    run,
    doc="quantize the current model to int8 (weight-only, dynamic, static with calibration, or QAT)",
    check=check,
    renamed=RENAMED,
)
