"""Batch-norm folding benchmark: the reference CNN folded, checked on the whole MNIST test split and in ONNX.

Run: ``python bench/graph_fold.py --quick`` (1 training epoch, 5 timing
rounds) or ``python bench/graph_fold.py`` (3 epochs, 9 rounds). The last
line printed is one JSON object ``{"bench": "graph_fold", "env", "results",
"targets"}``; ``bench/graph.py`` calls :func:`run`.

The reference CNN (NNX, ``Conv -> BatchNorm -> relu -> pool`` twice, then
dense layers) is trained on the bundled MNIST subset with ``hamjax.fit`` so
that its batch statistics are real, then folded with
:func:`hamjax.graph.fold`. Measured:

* predictions of the folded and original models on the whole test split:
  argmax agreement and ``max|folded - original| / max|original|`` over all
  logits;
* ops in the jaxpr (recursively) and ONNX node types of both models
  (``hamjax.export.onnx``, fp32), and after each ``Conv``/``Gemm``
  (through layout ``Transpose``/``Reshape``) the element-wise
  ``Add``/``Sub``/``Mul``/``Div`` whose other operand is a constant: the
  original has the bias add and the batch norm's ``Sub``, ``Mul``,
  ``Add``; the folded one the bias add only;
* throughput under ``jax.jit`` at batch 256 of both (interleaved bursts,
  medians over rounds, as ``bench/export.py``), reported, not targeted.

Targets: same predictions on the whole test split (agreement 1.0);
max relative output error <= 1e-5; no normalisation op (``Sub``, ``Div``,
``Sqrt``, ``Mul``, ``BatchNormalization``) in the folded ONNX graph; at most
one constant element-wise op (the layer's bias ``Add``) after each ``Conv``
and ``Gemm``.
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
from pathlib import Path

import jax
import numpy as np
from timing import finish, interleaved_p50, logits

import hamjax
from hamjax import export, graph, measure

NORMALISATION = ("Sub", "Div", "Sqrt", "Mul", "BatchNormalization")
ELEMENTWISE = ("Add", "Sub", "Mul", "Div")
LAYOUT = ("Transpose", "Reshape", "Identity")


def count_eqns(jaxpr) -> int:
    """Equations of a jaxpr, those inside calls and control flow included."""
    return sum(
        1 + sum(count_eqns(getattr(s, "jaxpr", s)) for s in jax.extend.core.jaxprs_in_params(e.params))
        for e in jaxpr.eqns
    )


def constant_ops_after_layers(model) -> dict[str, int]:
    """Per ``Conv``/``Gemm`` node: the chain of element-wise ops by constants that follows it."""
    consumers = collections.defaultdict(list)
    for node in model.graph.node:
        for name in node.input:
            consumers[name].append(node)
    constants = {i.name for i in model.graph.initializer} | {
        n.output[0] for n in model.graph.node if n.op_type == "Constant"
    }
    produced_by_constant = {}
    for node in model.graph.node:  # constants reshaped for broadcasting stay constants
        if node.op_type in LAYOUT and node.input and node.input[0] in constants | set(produced_by_constant):
            produced_by_constant[node.output[0]] = True
    constants |= set(produced_by_constant)
    out = {}
    for node in model.graph.node:
        if node.op_type not in ("Conv", "Gemm"):
            continue
        count, value = 0, node.output[0]
        while len(consumers[value]) == 1:
            nxt = consumers[value][0]
            if nxt.op_type in LAYOUT:
                value = nxt.output[0]
                continue
            others = [i for i in nxt.input if i != value]
            if nxt.op_type in ELEMENTWISE and others and all(i in constants for i in others):
                count, value = count + 1, nxt.output[0]
                continue
            break
        out[node.name or f"{node.op_type}#{len(out)}"] = count
    return out


def _onnx_summary(apply_fn, params, x, path: Path) -> dict:
    import onnx

    result = export.onnx(apply_fn, params, x[:1], path, check_data=x[:256])
    model = onnx.load(str(path))
    ops = collections.Counter(n.op_type for n in model.graph.node)
    after = constant_ops_after_layers(model)
    return {
        "nodes": sum(ops.values()),
        "op_types": dict(sorted(ops.items())),
        "normalisation_ops": sum(ops[o] for o in NORMALISATION),
        "constant_ops_after_layer": after,
        "max_constant_ops_after_a_layer": max(after.values()) if after else 0,
        "onnx_max_relative_error": max(float(c.max_relative_error) for c in result.checks),
    }


def run(quick: bool) -> tuple[list[dict], list[dict]]:
    """Train, fold and measure the reference CNN; ``(results, targets)``."""
    epochs, rounds = (1, 5) if quick else (3, 9)
    ds = hamjax.data.load("mnist", seed=0)
    apply_fn, params = hamjax.functional(hamjax.models.build("cnn"))
    config = hamjax.TrainConfig(epochs=epochs, batch_size=128, learning_rate=1e-3)
    params = hamjax.fit(apply_fn, params, ds, config, progress=False).params
    x = np.asarray(ds.test.x)
    folded_apply, folded_params = graph.fold(apply_fn, params, x[:2])
    sites = graph.foldable(apply_fn, params, x[:2])
    original, folded = logits(apply_fn, params, x), logits(folded_apply, folded_params, x)
    rel = float(np.max(np.abs(folded - original)) / np.max(np.abs(original)))
    agreement = float(np.mean(folded.argmax(-1) == original.argmax(-1)))
    eqns = {
        "original": count_eqns(jax.make_jaxpr(apply_fn)(params, x[:2]).jaxpr),
        "folded": count_eqns(jax.make_jaxpr(folded_apply)(folded_params, x[:2]).jaxpr),
    }
    with tempfile.TemporaryDirectory() as tmp:
        onnx_original = _onnx_summary(apply_fn, params, x, Path(tmp) / "original.onnx")
        onnx_folded = _onnx_summary(folded_apply, folded_params, x, Path(tmp) / "folded.onnx")
    batch = x[:256]
    runners = {
        "original": measure.JaxRunner(apply_fn, params, name="original"),
        "folded": measure.JaxRunner(folded_apply, folded_params, name="folded"),
    }
    p50 = interleaved_p50(runners, batch, rounds)
    results = [
        {
            "model": "cnn",
            "part": "fold",
            "train_epochs": epochs,
            "test_rows": len(x),
            "folded_layers": [f"{s.kernel} ({'/'.join(s.ops)})" for s in sites],
            "argmax_agreement": agreement,
            "max_relative_error": rel,
            "accuracy_original": float(np.mean(original.argmax(-1) == np.asarray(ds.test.y))),
            "accuracy_folded": float(np.mean(folded.argmax(-1) == np.asarray(ds.test.y))),
            "jaxpr_eqns": eqns,
            "onnx_original": onnx_original,
            "onnx_folded": onnx_folded,
            "jit_batch256_p50_ms": p50,
            "jit_speedup_folded_over_original": p50["original"] / p50["folded"],
        }
    ]
    targets = [
        {"name": "fold: argmax agreement on the test split", "measured": agreement, "goal": ">= 1.0"},
        {"name": "fold: max relative output error", "measured": rel, "goal": "<= 1e-5"},
        {
            "name": "fold: normalisation ops in the folded ONNX graph",
            "measured": onnx_folded["normalisation_ops"],
            "goal": "== 0",
        },
        {
            "name": "fold: constant element-wise ops after a Conv/Gemm in the folded ONNX graph (its bias Add)",
            "measured": onnx_folded["max_constant_ops_after_a_layer"],
            "goal": "<= 1",
        },
    ]
    targets[0]["met"] = agreement >= 1.0
    targets[1]["met"] = rel <= 1e-5
    targets[2]["met"] = onnx_folded["normalisation_ops"] == 0
    targets[3]["met"] = onnx_folded["max_constant_ops_after_a_layer"] <= 1
    return results, targets


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 training epoch and 5 timing rounds")
    args = parser.parse_args(argv)
    results, targets = run(args.quick)
    return finish("graph_fold", results, targets)


if __name__ == "__main__":
    sys.exit(main())
