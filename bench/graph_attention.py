"""Attention fusion benchmark: the reference ViT in onnxruntime (attention as ONNX Attention) against JAX jit.

Run: ``python bench/graph_attention.py --quick`` (untrained ViT, 5 timing
rounds; about 2 minutes on 2 cores) or ``python bench/graph_attention.py``
(2 training epochs on the bundled MNIST subset, 9 rounds). The last line
printed is one JSON object ``{"bench": "graph_attention", "env", "results",
"targets"}``; ``bench/graph.py`` calls :func:`run`.

The reference ViT (``hamjax.models.build("vit", input_shape=(28, 28, 1))``:
16 tokens, width 64, 4 heads, 2 blocks) is exported with
``hamjax.export.onnx`` (fp32, symbolic batch, checked against JAX), which
writes each attention as one ONNX ``Attention`` operator
(:mod:`hamjax.export.attention`). For comparison, the same model is also
exported with that lowering switched off (attention op by op, as before:
its two products, ``ReduceMax``, ``Exp``, ``ReduceSum``, ``Div``...). Measured, interleaved as in
``bench/export.py`` (each round times every runner for a ~0.3 s burst,
order rotating; medians over rounds of the burst p50s):

* batch 1 latency of JAX jit (the unfused model), JAX jit of the fused
  model (:func:`hamjax.graph.fuse_attention`), onnxruntime fp32 with the
  ``Attention`` operator and onnxruntime fp32 op by op (CPU provider,
  default threads);
* batch 256 latency of JAX jit unfused and fused;
* the fused model's agreement with the original on the test split, and the
  ONNX node counts.

Target: onnxruntime fp32 / JAX jit latency p50 at batch 1 <= 1.0. The fused
model's jit speed against the unfused one is reported, not targeted.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from unittest import mock

import numpy as np
from timing import finish, interleaved_p50, logits

import hamjax
from hamjax import export, graph, measure
from hamjax.export import attention as export_attention
from hamjax.export import runtime


def _nodes(path: Path) -> dict[str, int]:
    import onnx

    ops = [n.op_type for n in onnx.load(path).graph.node]
    return {"nodes": len(ops), "Attention": ops.count("Attention"), "Einsum": ops.count("Einsum")}


def run(quick: bool) -> tuple[list[dict], list[dict]]:
    """Export and time the reference ViT with and without attention fusion; ``(results, targets)``."""
    epochs, rounds = (0, 5) if quick else (2, 9)
    ds = hamjax.data.load("mnist", seed=0)
    apply_fn, params = hamjax.functional(hamjax.models.build("vit", input_shape=ds.input_shape, seed=0))
    if epochs:
        config = hamjax.TrainConfig(epochs=epochs, batch_size=128, learning_rate=1e-3)
        params = hamjax.fit(apply_fn, params, ds, config, progress=False).params
    x = np.asarray(ds.test.x)
    fused_apply, fused_params = graph.fuse_attention(apply_fn, params)
    found = graph.find_attention(apply_fn, params, x[:1])
    original, fused = logits(apply_fn, params, x), logits(fused_apply, fused_params, x)
    rel = float(np.max(np.abs(fused - original)) / np.max(np.abs(original)))
    agreement = float(np.mean(fused.argmax(-1) == original.argmax(-1)))
    with tempfile.TemporaryDirectory() as tmp:
        example, check = x[:64], x[64:512]
        lowered = export.onnx(apply_fn, params, example, Path(tmp) / "attention.onnx", check_data=check)
        with mock.patch.object(export_attention, "lower", lambda closed, spec: closed):
            by_ops = export.onnx(apply_fn, params, example, Path(tmp) / "by_ops.onnx", check_data=check)
        nodes = {"attention": _nodes(lowered.path), "op by op": _nodes(by_ops.path)}
        runners = {
            "jax jit": measure.JaxRunner(apply_fn, params, name="jax jit"),
            "jax jit fused": measure.JaxRunner(fused_apply, fused_params, name="jax jit fused"),
            "ort fp32 attention": runtime.Session(lowered.path, name="ort fp32 attention"),
            "ort fp32 op by op": runtime.Session(by_ops.path, name="ort fp32 op by op"),
        }
        batch1 = interleaved_p50(runners, x[:1], rounds, max_runs=2000)
        jit_only = {k: runners[k] for k in ("jax jit", "jax jit fused")}
        batch256 = interleaved_p50(jit_only, x[:256], rounds, max_runs=2000)
    ratio = batch1["ort fp32 attention"] / batch1["jax jit"]
    results = [
        {
            "model": "vit",
            "part": "attention",
            "train_epochs": epochs,
            "attentions_fused": len(found),
            "attention_shape_btnh": list(found[0].shape) if found else None,
            "fused_vs_original_argmax_agreement": agreement,
            "fused_vs_original_max_relative_error": rel,
            "onnx_max_relative_error": max(float(c.max_relative_error) for c in lowered.checks),
            "onnx_nodes": nodes,
            "ort_runtime_ops": list(lowered.runtime_ops),
            "batch1_p50_ms": batch1,
            "batch256_p50_ms": batch256,
            "ort_fp32_over_jax_jit_batch1": ratio,
            "ort_fp32_op_by_op_over_jax_jit_batch1": batch1["ort fp32 op by op"] / batch1["jax jit"],
            "jit_fused_speedup_batch1": batch1["jax jit"] / batch1["jax jit fused"],
            "jit_fused_speedup_batch256": batch256["jax jit"] / batch256["jax jit fused"],
        }
    ]
    targets = [
        {
            "name": "attention: onnxruntime fp32 / JAX jit latency p50, ViT, batch 1",
            "measured": round(ratio, 4),
            "goal": "<= 1.0",
            "met": bool(ratio <= 1.0),
        },
        {
            "name": "attention: fused model's max relative output error on the test split",
            "measured": rel,
            "goal": "<= 1e-5",
            "met": bool(rel <= 1e-5),
        },
    ]
    return results, targets


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="untrained ViT and 5 timing rounds")
    args = parser.parse_args(argv)
    results, targets = run(args.quick)
    for r in results:
        for k in ("batch1_p50_ms", "batch256_p50_ms"):
            print(k, {name: round(v, 4) for name, v in r[k].items()})
        print("onnx nodes", r["onnx_nodes"])
    return finish("graph_attention", results, targets)


if __name__ == "__main__":
    sys.exit(main())
