"""Export benchmark: JAX jit against onnxruntime fp32 and int8 (QDQ) on CPU, speed and accuracy.

Run: ``python bench/export.py --quick`` (3 epochs, 5 timing rounds; under
10 minutes on 2 cores) or ``python bench/export.py`` (10 epochs, 9 rounds).
``--models mlp,cnn`` picks models, ``--seed`` the seed. The last line
printed is one JSON object: ``{"bench": "export", "env", "results",
"targets"}``.

For the MLP (784-512-512-10), the CNN and the ViT (reference configs on
MNIST 28x28x1), each trained on the bundled MNIST subset with
``hamjax.fit`` (batch 128, learning rate 1e-3):

* static int8 post-training quantization (per-channel weights, MSE
  calibration on 8 training batches of 128);
* ``export.onnx`` to fp32 and to int8 QDQ: seconds (the first export of the
  process includes jax2onnx's plugin import), file bytes, the checks
  against JAX and the integer kernels onnxruntime runs;
* three runners, JAX jit, onnxruntime fp32 and onnxruntime int8 (CPU
  provider, default threads; every runner takes host numpy inputs), at
  batch sizes 1, 32 and 256 from the test split: latency p50 and p95 (ms)
  and throughput (batch / p50, samples/s);
* test accuracy of the float model in JAX, the quantized model in JAX and
  both ONNX files, and the argmax agreement of onnxruntime int8 with
  hamjax's quantized JAX model over the whole test split.

The machine is shared and noisy, so runners are interleaved: for each model
and batch size, every round times each runner for a short burst (~0.3 s,
runner order rotating from round to round), and a runner's p50 and p95 are
the medians over rounds of its burst p50 and p95. Ratios compare these
medians from the same run.

Targets (MLP): onnxruntime int8 / fp32 throughput at batch 256 >= 1.5;
onnxruntime int8 argmax agreement with hamjax int8 >= 0.995; onnxruntime
fp32 / JAX jit latency p50 at batch 1 <= 1.0. The same ratios for the CNN
and the ViT are reported as results.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from timing import interleaved_timings

import hamjax
from hamjax import data as data_lib
from hamjax import export, measure, quant
from hamjax.export import runtime
from hamjax.recipes.steps.quantization import calibration_batches
from hamjax.train import TrainConfig, fit

MODELS = ("mlp", "cnn", "vit")
BATCHES = (1, 32, 256)
RUNNERS = ("jax jit", "ort fp32", "ort int8")


def _rows(x: np.ndarray, batch: int) -> np.ndarray:
    """``batch`` rows of ``x``, tiled when ``x`` has fewer."""
    return np.take(x, np.arange(batch) % len(x), axis=0)


def _predictions(runner, x: np.ndarray, batch: int = 256) -> np.ndarray:
    return np.concatenate(
        [runner.to_numpy(runner.block(runner(x[i : i + batch]))).argmax(-1) for i in range(0, len(x), batch)]
    )


def _checks(result: export.ExportResult) -> list[dict]:
    return [
        {
            "inputs": c.inputs,
            "rows": c.rows,
            "max_relative_error": float(c.max_relative_error),
            "argmax_agreement": float(c.argmax_agreement),
            "passed": bool(c.passed),
        }
        for c in result.checks
    ]


def run_model(name: str, ds, args, workdir: Path) -> tuple[dict, list[dict]]:
    """Train, quantize, export and time one model; ``(per-model summary, timing rows)``."""
    seed = args.seed
    module = hamjax.models.build(name, seed=seed, input_shape=ds.input_shape, num_classes=ds.num_classes)
    apply_fn, params = hamjax.functional(module)
    started = time.perf_counter()
    config = TrainConfig(epochs=args.epochs, batch_size=128, learning_rate=1e-3, seed=seed)
    params = fit(apply_fn, params, ds, config, progress=False).params
    train_s = time.perf_counter() - started
    qapply, qparams = quant.quantize_model(apply_fn, params, calibration=calibration_batches(ds, 8, 128, seed))
    example, check_data = ds.val.x[:64], ds.val.x[64:512]
    fp32 = export.onnx(apply_fn, params, example, workdir / f"{name}.fp32.onnx", check_data=check_data)
    int8 = export.onnx(qapply, qparams, example, workdir / f"{name}.int8.onnx", precision="int8", check_data=check_data)
    runners = {
        "jax jit": measure.JaxRunner(apply_fn, params, name="jax jit"),
        "ort fp32": runtime.Session(fp32.path, name="ort fp32"),
        "ort int8": runtime.Session(int8.path, name="ort int8"),
    }
    x_test, y_test = ds.test.x, ds.test.y
    accuracy = {
        "jax float": measure.accuracy(apply_fn, x_test, y_test, params=params),
        "jax int8": measure.accuracy(qapply, x_test, y_test, params=qparams),
        "ort fp32": measure.accuracy(runners["ort fp32"], x_test, y_test),
        "ort int8": measure.accuracy(runners["ort int8"], x_test, y_test),
    }
    agreement = float(
        np.mean(_predictions(runners["ort int8"], x_test) == _predictions(measure.JaxRunner(qapply, qparams), x_test))
    )
    rows, timings = [], {}
    for batch in BATCHES:
        timings[batch] = interleaved_timings(runners, _rows(x_test, batch), args.rounds, args.burst_s)
        for runner, t in timings[batch].items():
            rows.append({"model": name, "runner": runner, "batch": batch, "rounds": args.rounds, **t})
    ratios = {}
    for batch in BATCHES:
        t = timings[batch]
        ratios[f"ort int8 / fp32 throughput, batch {batch}"] = (
            t["ort int8"]["samples_per_s"] / t["ort fp32"]["samples_per_s"]
        )
        ratios[f"ort fp32 / jax jit latency p50, batch {batch}"] = t["ort fp32"]["p50_ms"] / t["jax jit"]["p50_ms"]
        ratios[f"ort int8 / jax jit latency p50, batch {batch}"] = t["ort int8"]["p50_ms"] / t["jax jit"]["p50_ms"]
    summary = {
        "model": name,
        "params": measure.param_count(params),
        "epochs": args.epochs,
        "train_s": round(train_s, 2),
        "accuracy": accuracy,
        "ort_int8_vs_jax_int8_argmax_agreement": agreement,
        "fp32_onnx_bytes": int(fp32.size_bytes),
        "int8_onnx_bytes": int(int8.size_bytes),
        "onnx_bytes_ratio": fp32.size_bytes / int8.size_bytes,
        "export_s": {"fp32": round(fp32.seconds, 2), "int8": round(int8.seconds, 2)},
        "integer_ops": list(int8.integer_ops),
        "fp32_integer_ops": list(fp32.integer_ops),
        "int8_runtime_ops": list(int8.runtime_ops),
        "checks": {"fp32": _checks(fp32), "int8": _checks(int8)},
        "ratios": ratios,
    }
    return summary, rows


def print_table(summary: dict, rows: list[dict]) -> None:
    print(f"\n== {summary['model']} ({summary['params']:,} params, {summary['epochs']} epochs, {summary['train_s']} s)")
    print(f"{'runner':<10} {'batch':>5} {'p50 ms':>9} {'p95 ms':>9} {'samples/s':>11}")
    for r in rows:
        print(f"{r['runner']:<10} {r['batch']:>5} {r['p50_ms']:>9.3f} {r['p95_ms']:>9.3f} {r['samples_per_s']:>11,.0f}")
    acc = "  ".join(f"{k} {v:.3f}" for k, v in summary["accuracy"].items())
    print(f"test accuracy: {acc}")
    print(f"ort int8 vs hamjax int8 argmax agreement: {summary['ort_int8_vs_jax_int8_argmax_agreement']:.4f}")
    print(
        f"onnx bytes: fp32 {summary['fp32_onnx_bytes']:,}  int8 {summary['int8_onnx_bytes']:,} "
        f"({summary['onnx_bytes_ratio']:.2f}x); export s: fp32 {summary['export_s']['fp32']}  "
        f"int8 {summary['export_s']['int8']}"
    )
    print(f"integer ops (int8): {', '.join(summary['integer_ops']) or 'none'}")
    print(f"ops onnxruntime runs (int8): {', '.join(summary['int8_runtime_ops'])}")
    for k, v in summary["ratios"].items():
        print(f"  {k}: {v:.3f}")


def mlp_targets(summary: dict) -> list[dict]:
    ratios = summary["ratios"]
    int8_fp32 = ratios["ort int8 / fp32 throughput, batch 256"]
    agreement = summary["ort_int8_vs_jax_int8_argmax_agreement"]
    fp32_jax = ratios["ort fp32 / jax jit latency p50, batch 1"]
    return [
        {
            "name": "onnxruntime int8 / fp32 throughput, MLP, batch 256",
            "measured": round(int8_fp32, 4),
            "goal": ">= 1.5",
            "met": bool(int8_fp32 >= 1.5),
        },
        {
            "name": "onnxruntime int8 argmax agreement with hamjax int8, MLP",
            "measured": round(agreement, 4),
            "goal": ">= 0.995",
            "met": bool(agreement >= 0.995),
        },
        {
            "name": "onnxruntime fp32 / JAX jit latency p50, MLP, batch 1",
            "measured": round(fp32_jax, 4),
            "goal": "<= 1.0",
            "met": bool(fp32_jax <= 1.0),
        },
    ]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 epochs and 5 timing rounds (< 10 min on 2 cores)")
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma list from {','.join(MODELS)}")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = sorted(set(names) - set(MODELS))
    if unknown or not names:
        parser.error(f"--models: expected a comma list from {','.join(MODELS)}, got {args.models!r}")
    args.epochs, args.rounds = (3, 5) if args.quick else (10, 9)
    args.burst_s = 0.3
    ds = data_lib.load("mnist", seed=args.seed)
    results, targets = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            summary, rows = run_model(name, ds, args, Path(tmp))
            print_table(summary, rows)
            results.extend(rows)
            results.append(summary)
            if name == "mlp":
                targets.extend(mlp_targets(summary))
            sys.stdout.flush()
    print(json.dumps({"bench": "export", "env": measure.environment(), "results": results, "targets": targets}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
