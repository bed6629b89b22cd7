"""The ``quantize`` recipe step: post-training int8 (weight-only, dynamic, static) or QAT.

The step leaves the float model as the current model (later steps can
still train or prune it) and puts the quantized pair in
``context.extras["quantized"] = (qapply, qparams)`` for exporters, with a
report row that shows its accuracy and int storage. Its speed is measured
where integer kernels run (onnxruntime, the export step), not here: the
JAX model simulates integer arithmetic in float32.
"""

from __future__ import annotations

import numpy as np

from hamjax import data as data_lib
from hamjax import measure, quant, report
from hamjax import train as train_lib
from hamjax.recipe_steps import stage_checkpoint_dir
from hamjax.recipes import Context, Field, register_step

QUANT_MODES = ("weight_only", "dynamic", "static", "qat")

_QUANT_FIELDS = {
    "mode": Field(str, "static", choices=QUANT_MODES, doc="weight_only, dynamic, static (calibrated) or qat"),
    "bits": Field(int, 8, low=2, high=16, doc="weight bit width (int4 and below stored one code per byte)"),
    "act_bits": Field(int, 8, low=2, high=16, doc="activation bit width (dynamic, static, qat)"),
    "per_channel": Field(bool, True, doc="one weight scale per output channel"),
    "symmetric": Field(bool, True, doc="symmetric weights (zero point 0)"),
    "method": Field(str, "mse", choices=quant.CALIBRATION_METHODS, doc="activation calibration method"),
    "percentile": Field(float, 99.99, above=50.0, high=100.0, doc="percentile for method = percentile"),
    "calibration_batches": Field(int, 8, low=1, doc="training batches used to calibrate activation ranges"),
    "batch_size": Field(int, 128, low=1, doc="examples per calibration and QAT batch"),
    "finetune_epochs": Field(int, 0, low=0, doc="QAT epochs with fake-quantized weights and activations"),
    "learning_rate": Field(float, 1e-4, above=0.0, doc="QAT learning rate"),
    "stage": Field(str, "int8", doc="name of the row this step adds to the report"),
}


def _check_quant(f: dict) -> str | None:
    if f["mode"] == "qat" and f["finetune_epochs"] < 1:
        return "mode = 'qat' needs finetune_epochs >= 1"
    if f["mode"] != "qat" and f["finetune_epochs"]:
        return f"finetune_epochs = {f['finetune_epochs']} only applies to mode = 'qat' (got mode = {f['mode']!r})"
    return None


def calibration_batches(dataset, count: int, batch_size: int, seed: int) -> list[np.ndarray]:
    """``count`` training batches of inputs, in the order training would draw them."""
    train = dataset.train
    batch_size = min(batch_size, len(train.y))
    return [data_lib.batch_at(train, batch_size, i, seed=seed)[0] for i in range(count)]


def _run_quantize(f: dict, context: Context) -> Context:
    apply_fn, params, mode = context.apply_fn, context.params, f["mode"]
    batches = calibration_batches(context.dataset, f["calibration_batches"], f["batch_size"], context.seed)
    common = dict(per_channel=f["per_channel"], symmetric=f["symmetric"])
    calibration = dict(method=f["method"], percentile=f["percentile"], bits=f["act_bits"])
    if mode == "qat":
        ranges = quant.calibrate(apply_fn, params, batches, **calibration)
        qat_fn = quant.fake_quant_apply(
            apply_fn, bits=f["bits"], act_bits=f["act_bits"], method="static", ranges=ranges, **common
        )
        config = train_lib.TrainConfig(
            epochs=f["finetune_epochs"],
            batch_size=f["batch_size"],
            learning_rate=f["learning_rate"],
            seed=context.seed,
        )
        result = train_lib.fit(
            qat_fn,
            params,
            context.dataset,
            config,
            checkpoint_dir=stage_checkpoint_dir(context, f["stage"]),
            progress=context.progress,
        )
        params = context.params = result.params
    qapply, qparams = quant.quantize_model(
        apply_fn,
        params,
        method="static" if mode == "qat" else mode,
        bits=f["bits"],
        act_bits=f["act_bits"],
        calibration=batches,
        example=batches[0],
        calibration_method=f["method"],
        percentile=f["percentile"],
        **common,
    )
    context.extras["quantized"] = (qapply, qparams)
    what = f"int{f['bits']} {mode}, {'per-channel' if f['per_channel'] else 'per-tensor'}"
    if mode in ("static", "qat"):
        what += f", activations int{f['act_bits']} calibrated by {f['method']}"
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


register_step(
    "quantize",
    _QUANT_FIELDS,
    _run_quantize,
    doc="quantize the current model to int8 (weight-only, dynamic, static with calibration, or QAT)",
    check=_check_quant,
)
