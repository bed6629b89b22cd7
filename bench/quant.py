"""Quantization benchmark: int8/int4 accuracy and bytes, QAT, honest step times, bf16.

Run: ``python bench/quant.py [--quick]``. The last line printed is one JSON
object: ``{"bench": "quant", "env", "results", "targets"}``.

For the default MLP (784-512-512-10) and the CNN (LeNet-like with
BatchNorm) on the bundled MNIST subset, per seed:

* the float model, trained with early stopping;
* post-training quantization: weight-only int8 and int4, dynamic int8, and
  static int8 per-channel with min-max, percentile and MSE calibration (and
  per-tensor MSE), all through the general jaxpr rewriting;
* quantization-aware training: static int8 fake-quant finetuning for a few
  epochs from the float model, then conversion; its control is the float
  model finetuned for the same epochs (the QAT drop is measured against
  the better of the two float models, so extra training cannot pass for
  quantization quality);
* bytes of the int storage against float32;
* the largest quantize/dequantize error in units of half a step on random
  tensors (2 to 16 bits);
* step times in JAX: a QAT step against a float step, and the simulated
  int8 forward against the float forward (XLA:CPU has no faster int8
  matrix product; speed from int8 is measured in onnxruntime, bench/export.py).

The bf16/fp16 section comes from ``bench/precision.py``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import hamjax
from hamjax import data as data_lib
from hamjax import measure, quant
from hamjax._base import trainable
from hamjax.recipes.steps.quantization import calibration_batches
from hamjax.train import TrainConfig, TrainState, evaluate, fit, make_optimizer, make_train_step

MODELS = (("mlp", {}), ("cnn", {}))


def _points(a: float, b: float) -> float:
    # accuracies are k / 1000 on the test split: round away float noise
    return round(100 * (a - b), 9)


def ptq_rows(apply_fn, params, ds, batches):
    """Test accuracy and bytes of every post-training variant."""
    variants = [
        ("int8 weight-only", dict(method="weight_only", bits=8)),
        ("int4 weight-only", dict(method="weight_only", bits=4)),
        ("int8 dynamic", dict(method="dynamic")),
        ("int8 static minmax", dict(method="static", calibration_method="minmax")),
        ("int8 static percentile", dict(method="static", calibration_method="percentile", percentile=99.99)),
        ("int8 static mse", dict(method="static", calibration_method="mse")),
        ("int8 static mse per-tensor", dict(method="static", calibration_method="mse", per_channel=False)),
    ]
    rows = {}
    for name, kw in variants:
        qapply, qparams = quant.quantize_model(
            apply_fn, params, calibration=batches if kw["method"] == "static" else None, example=batches[0], **kw
        )
        rows[name] = {
            "accuracy": evaluate(qapply, qparams, ds.test)["accuracy"],
            "bytes": measure.param_bytes(qparams),
            "model": (qapply, qparams),
        }
    return rows


def qat(apply_fn, params, ds, batches, epochs, seed):
    """QAT from the float params, and the float control finetuned for the same epochs."""
    cfg = TrainConfig(epochs=epochs, batch_size=128, learning_rate=1e-4, seed=seed)
    ranges = quant.calibrate(apply_fn, params, batches, method="mse")
    qat_fn = quant.fake_quant_apply(apply_fn, method="static", ranges=ranges)
    trained = fit(qat_fn, params, ds, cfg, progress=False).params
    qapply, qparams = quant.quantize_model(apply_fn, trained, calibration=batches, calibration_method="mse")
    control = fit(apply_fn, params, ds, cfg, progress=False).params
    return evaluate(qapply, qparams, ds.test)["accuracy"], evaluate(apply_fn, control, ds.test)["accuracy"], qat_fn


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def step_times(apply_fn, params, qat_fn, qmodel, ds, repeats: int, steps: int = 20):
    """QAT step / float step, and simulated int8 forward / float forward, medians in one run."""
    x, y = data_lib.batch_at(ds.train, 128, 0, seed=0)
    opt = make_optimizer(TrainConfig(), 1000)
    out = {}
    for name, fn in (("float", apply_fn), ("qat", qat_fn)):
        step = make_train_step(fn, opt)

        def run(step=step):
            state = TrainState(jax.tree.map(jnp.copy, params), opt.init(trainable(apply_fn, params)), jnp.int32(0))
            for _ in range(steps):
                state, metrics = step(state, x, y)
            return metrics["loss"]

        run()
        out[name] = _median_time(run, repeats) / steps
    xb = jnp.asarray(ds.test.x[:256])
    fwd_float = jax.jit(lambda p, x: apply_fn(p, x))
    qapply, qparams = qmodel
    fwd_int8 = jax.jit(lambda p, x: qapply(p, x))
    for f, p in ((fwd_float, params), (fwd_int8, qparams)):
        f(p, xb).block_until_ready()
    return {
        "qat_step_ratio": out["qat"] / out["float"],
        "float_step_ms": 1e3 * out["float"],
        "simulated_int8_forward_ratio": _median_time(lambda: fwd_int8(qparams, xb), repeats * 5)
        / _median_time(lambda: fwd_float(params, xb), repeats * 5),
    }


def half_step_error(trials: int, seed: int) -> float:
    """Largest |dequantize(quantize(x)) - x| / (scale / 2 + 4 ulp(x)) over random tensors, bits and modes."""
    rng = np.random.default_rng(seed)
    worst = 0.0
    for _ in range(trials):
        bits = int(rng.integers(2, 17))
        symmetric = bool(rng.integers(2))
        x = jnp.asarray(rng.standard_t(3, size=(16, 32)) * rng.uniform(0.01, 100), jnp.float32)
        axes = -1 if rng.integers(2) else None
        lo, hi = quant.minmax(x, axes)
        scale, zp = quant.compute_qparams(lo, hi, bits=bits, symmetric=symmetric)
        err = jnp.abs(quant.dequantize(quant.quantize(x, scale, zp, bits=bits, symmetric=symmetric), scale, zp) - x)
        # exact arithmetic gives <= scale / 2; float32 adds a few ulps of x (visible at 16 bits)
        bound = scale / 2 + 4 * jnp.finfo(jnp.float32).eps * jnp.abs(x)
        worst = max(worst, float(jnp.max(err / bound)))
    return worst


def _precision_section(quick: bool) -> dict:
    path = Path(__file__).with_name("precision.py")
    spec = importlib.util.spec_from_file_location("bench_precision", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.run(quick)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one seed, fewer epochs and repeats (< 10 min)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-precision", action="store_true", help="leave out the bf16/fp16 section")
    args = parser.parse_args(argv)
    quick = args.quick
    seeds = [args.seed] if quick else [args.seed + i for i in range(3)]
    dense_epochs, qat_epochs = (12, 2) if quick else (25, 4)
    results, targets, per_model = [], [], {}
    for name, overrides in MODELS:
        acc = {k: [] for k in ("float", "qat", "control")}
        ptq = {}
        for seed in seeds:
            ds = data_lib.load("mnist", seed=seed)
            module = hamjax.models.build(name, seed=seed, input_shape=ds.input_shape, **overrides)
            apply_fn, params = hamjax.functional(module)
            params = fit(apply_fn, params, ds, TrainConfig(epochs=dense_epochs, seed=seed, patience=5), progress=False)
            params = params.params
            batches = calibration_batches(ds, 8, 128, seed)
            acc["float"].append(evaluate(apply_fn, params, ds.test)["accuracy"])
            rows = ptq_rows(apply_fn, params, ds, batches)
            for k, r in rows.items():
                ptq.setdefault(k, []).append(r["accuracy"])
            q_acc, c_acc, qat_fn = qat(apply_fn, params, ds, batches, qat_epochs, seed)
            acc["qat"].append(q_acc)
            acc["control"].append(c_acc)
            if seed == seeds[0]:
                fp32_bytes = measure.param_bytes(params)
                int8_bytes = rows["int8 static mse"]["bytes"]
                times = step_times(
                    apply_fn, params, qat_fn, rows["int8 static mse"]["model"], ds, repeats=5 if quick else 11
                )
        mean = {k: float(np.mean(v)) for k, v in acc.items()}
        row = {
            "model": name,
            "seeds": seeds,
            "float_accuracy": acc["float"],
            "qat_accuracy": acc["qat"],
            "float_finetuned_control_accuracy": acc["control"],
            "ptq_accuracy": ptq,
            "fp32_bytes": fp32_bytes,
            "int8_bytes": int8_bytes,
            "bytes_ratio": fp32_bytes / int8_bytes,
            **times,
        }
        results.append(row)
        per_model[name] = (mean, {k: float(np.mean(v)) for k, v in ptq.items()}, row)
    for name, (mean, ptq_mean, row) in per_model.items():
        drop = _points(mean["float"], ptq_mean["int8 static mse"])
        targets.append(
            {
                "name": f"{name}: static per-channel int8 PTQ accuracy drop (points, mean of {len(seeds)} seeds)",
                "measured": round(drop, 3),
                "goal": "<= 0.3",
                "met": drop <= 0.3,
            }
        )
        qdrop = _points(max(mean["float"], mean["control"]), mean["qat"])
        targets.append(
            {
                "name": f"{name}: QAT int8 accuracy drop vs the better float model (points)",
                "measured": round(qdrop, 3),
                "goal": "<= 0.1",
                "met": qdrop <= 0.1,
            }
        )
        targets.append(
            {
                "name": f"{name}: parameter bytes fp32 / int8 storage (scales, zero points, float biases included)",
                "measured": round(row["bytes_ratio"], 3),
                "goal": ">= 3.9",
                "met": row["bytes_ratio"] >= 3.9,
            }
        )
    worst = half_step_error(200 if quick else 2000, args.seed)
    results.append({"half_step_error_max": worst})
    targets.append(
        {
            "name": "quantize/dequantize error / (half a step + 4 ulp), random tensors, 2-16 bits",
            "measured": round(worst, 6),
            "goal": "<= 1.0",
            "met": worst <= 1.0,
        }
    )
    if not args.skip_precision:
        precision = _precision_section(quick)
        results.append({"precision": precision["results"]})
        targets.extend(precision["targets"])
    print(json.dumps({"bench": "quant", "env": measure.environment(), "results": results, "targets": targets}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
