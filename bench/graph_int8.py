"""Integer kernels in onnxruntime: int8 against fp32 throughput, and per-site integer coverage.

Run: ``python bench/graph_int8.py --quick`` (1 epoch, 5 timing rounds) or
``python bench/graph_int8.py`` (3 epochs, 9 rounds). The last line printed
is one JSON object: ``{"bench": "graph_int8", "env", "results", "targets"}``.

For the MLP, the CNN and the ViT (``hamjax.models.build(name,
input_shape=(28, 28, 1))``), each trained briefly on ``hamjax.data.load("mnist")``
with ``hamjax.fit`` (batch 128, learning rate 1e-3):

* static int8 post-training quantization (per-channel weights, MSE
  calibration on training batches of 128), exported with ``export.onnx``
  (``precision="int8"``: output quantization for convolutions and ``Gemm`` s,
  3-D products as ``MatMul``, reshape max pools as ``MaxPool``) and fp32;
  for the CNN also the int8 graph without output quantization
  (``qdq.quantized_model(..., integer_outputs=False)``, the layout before),
  so the gain shows in the same run;
* per quantized site, the kernel onnxruntime runs it with and whether it is
  an integer kernel (``ExportResult.sites``);
* onnxruntime throughput at batch 256 (CPU provider, default threads),
  interleaved as in ``bench/export.py``: every round times each session for
  a short burst, runner order rotating; a session's p50 is the median over
  rounds of its burst p50, and ratios compare medians from the same run;
* argmax agreement of onnxruntime int8 with hamjax's quantized JAX model
  over the whole test split, and test accuracies.

Targets: CNN int8 / fp32 throughput at batch 256 >= 1.5 with argmax
agreement >= 0.995; ViT int8 / fp32 throughput at batch 256 >= 1.3.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import hamjax
from hamjax import export, measure, quant
from hamjax.export import qdq, runtime
from hamjax.recipes.steps.quantization import calibration_batches
from hamjax.train import TrainConfig, fit

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import finish, interleaved_timings

MODELS = ("mlp", "cnn", "vit")
BATCH = 256
TARGETS = {"cnn": 1.5, "vit": 1.3}


def _predictions(fn, x: np.ndarray, batch: int = 256) -> np.ndarray:
    return np.concatenate([np.asarray(fn(x[i : i + batch])).argmax(-1) for i in range(0, len(x), batch)])


def run_model(name: str, ds, quick: bool, seed: int, workdir: Path) -> tuple[list[dict], dict]:
    """Train, quantize, export and time one model; ``(result rows, summary)``."""
    module = hamjax.models.build(name, seed=seed, input_shape=(28, 28, 1), num_classes=ds.num_classes)
    apply_fn, params = hamjax.functional(module)
    started = time.perf_counter()
    config = TrainConfig(epochs=1 if quick else 3, batch_size=128, learning_rate=1e-3, seed=seed)
    params = fit(apply_fn, params, ds, config, progress=False).params
    train_s = time.perf_counter() - started
    batches = calibration_batches(ds, 4 if quick else 8, 128, seed)
    qapply, qparams = quant.quantize_model(apply_fn, params, calibration=batches)
    example, check_data = ds.val.x[:64], ds.val.x[64:512]
    fp32 = export.onnx(apply_fn, params, example, workdir / f"{name}.fp32.onnx", check_data=check_data)
    int8 = export.onnx(qapply, qparams, example, workdir / f"{name}.int8.onnx", precision="int8", check_data=check_data)
    sessions = {"ort fp32": runtime.Session(fp32.path, name="ort fp32"), "ort int8": runtime.Session(int8.path)}
    if name == "cnn":
        before = qdq.quantized_model(qapply, qparams, example, integer_outputs=False)
        sessions["ort int8, float conv outputs"] = runtime.Session(before)
    x_test, y_test = ds.test.x, ds.test.y
    jax_int8 = measure.JaxRunner(qapply, qparams)
    agreement = float(np.mean(_predictions(sessions["ort int8"], x_test) == _predictions(jax_int8, x_test)))
    accuracy = {
        "jax float": measure.accuracy(apply_fn, x_test, y_test, params=params),
        "jax int8": measure.accuracy(qapply, x_test, y_test, params=qparams),
        "ort int8": measure.accuracy(sessions["ort int8"], x_test, y_test),
    }
    x = np.take(x_test, np.arange(BATCH) % len(x_test), axis=0)
    timings = interleaved_timings(sessions, x, 5 if quick else 9, 0.3)
    rows = [
        {"model": name, "runner": runner, "batch": BATCH, "p50_ms": t["p50_ms"], "samples_per_s": t["samples_per_s"]}
        for runner, t in timings.items()
    ]
    sites = [{"site": k.site, "primitive": k.primitive, "kernel": k.kernel, "integer": k.integer} for k in int8.sites]
    ratio = timings["ort int8"]["samples_per_s"] / timings["ort fp32"]["samples_per_s"]
    summary = {
        "model": name,
        "train_s": round(train_s, 1),
        "accuracy": accuracy,
        "argmax_agreement": agreement,
        "int8_over_fp32": ratio,
        "integer_sites": f"{sum(s['integer'] for s in sites)} of {len(sites)}",
        "sites": sites,
        "int8_runtime_ops": list(int8.runtime_ops),
    }
    if name == "cnn":
        summary["before_over_fp32"] = (
            timings["ort int8, float conv outputs"]["samples_per_s"] / timings["ort fp32"]["samples_per_s"]
        )
    return rows, summary


def targets_of(summaries: dict) -> list[dict]:
    targets = []
    for name, goal in TARGETS.items():
        if name not in summaries:
            continue
        ratio = summaries[name]["int8_over_fp32"]
        targets.append(
            {
                "name": f"onnxruntime int8 / fp32 throughput, {name.upper()}, batch {BATCH}",
                "measured": round(ratio, 3),
                "goal": f">= {goal}",
                "met": bool(ratio >= goal),
            }
        )
    if "cnn" in summaries:
        agreement = summaries["cnn"]["argmax_agreement"]
        targets.append(
            {
                "name": "onnxruntime int8 argmax agreement with hamjax int8, CNN, test split",
                "measured": round(agreement, 4),
                "goal": ">= 0.995",
                "met": bool(agreement >= 0.995),
            }
        )
    return targets


def run(quick: bool, models=MODELS, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Every model's rows and summary, and the targets; see the module docstring."""
    ds = hamjax.data.load("mnist")
    results, summaries = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in models:
            rows, summary = run_model(name, ds, quick, seed, Path(tmp))
            results += rows
            results.append({"model": name, "summary": summary})
            summaries[name] = summary
    return results, targets_of(summaries)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 epoch and 5 timing rounds")
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma list from {','.join(MODELS)}")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if not models or set(models) - set(MODELS):
        parser.error(f"--models: expected a comma list from {','.join(MODELS)}, got {args.models!r}")
    results, targets = run(args.quick, models, args.seed)
    for row in results:
        if "summary" in row:
            s = row["summary"]
            print(
                f"{s['model']}: int8/fp32 {s['int8_over_fp32']:.2f}x, integer sites {s['integer_sites']}, "
                f"agreement {s['argmax_agreement']:.4f}, accuracy {s['accuracy']}"
            )
            for site in s["sites"]:
                print(f"    {site['site']:<45} {site['primitive']:<22} {site['kernel']}")
        else:
            print(f"  {row['model']:<4} {row['runner']:<30} {row['p50_ms']:9.2f} ms {row['samples_per_s']:10,.0f}/s")
    return finish("graph_int8", results, targets)


if __name__ == "__main__":
    raise SystemExit(main())
