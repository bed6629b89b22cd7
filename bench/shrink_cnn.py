"""Shrink a Linen ResNet the benchmark writes itself: half its channels by group L2, finetuned, timed in JAX and onnxruntime.

Run: ``python bench/shrink_cnn.py --quick`` (6 + 6 epochs, 5 timing rounds)
or ``python bench/shrink_cnn.py`` (12 + 12 epochs, 9 rounds). The last line
printed is one JSON object ``{"bench": "shrink_cnn", "env", "results",
"targets"}``; ``bench/shrink.py`` calls :func:`run`.

The model (:class:`ResNet`, Flax Linen, 28x28x1 inputs): a 3x3 conv +
BatchNorm + relu stem of ``WIDTH`` channels, a residual block at ``WIDTH``,
a strided residual block to ``2 * WIDTH`` with a 1x1 conv + BatchNorm
projection shortcut, a residual block at ``2 * WIDTH``, global average
pooling and a dense head. Every convolution is unbiased and followed by a
BatchNorm. It is trained with :func:`hamjax.fit` on the bundled MNIST subset
(Adam 2e-3, 20 warm-up steps then cosine decay, batch 64, the best
validation params kept), through :func:`hamjax.linen_functional`.

Then, timed as ``discovery_s``, ``keep_s`` and ``shrink_s``:
``groups = prune.channel_groups(apply_fn, variables, x)``, the keep vectors
of 50% of every prunable group's channels by group L2
(``prune.group_channels``), and ``prune.shrink_groups``. The shrunk model
is checked against the masked one (``prune.group_masks`` at the same
sparsity, applied with ``prune.apply_masks``) on a test batch, finetuned
with :func:`hamjax.fit` on the same schedule for as many epochs as the
dense model had (the learning rate 2e-3 chosen over 1e-3 on the validation
split), and both models are exported with :func:`hamjax.export.onnx` (fp32,
dynamic batch).

Timing: batch 256 of the test split; JAX jit and onnxruntime (CPU provider,
default threads) for each model, all four runners interleaved in bursts of
about 0.3 s, each figure the median over rounds of a burst's p50.

Targets (issue 18): dense / shrunk throughput at batch 256 >= 1.6 under jit
and >= 1.6 in onnxruntime; test accuracy of the dense model minus that of
the shrunk, finetuned model <= 1.0 point.
"""

from __future__ import annotations

import argparse
import functools
import sys
import tempfile
import time
from pathlib import Path

import flax.linen as nn
import jax
import numpy as np

import hamjax
from hamjax import export, measure, prune
from hamjax.export import runtime

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import finish, interleaved_timings

WIDTH = 32
SPARSITY = 0.5
LEARNING_RATE = 2e-3
BATCH = 256
SEED = 0


class ResidualBlock(nn.Module):
    """Two 3x3 conv + BatchNorm layers and a skip addition; a 1x1 conv + BatchNorm shortcut when the shape changes."""

    features: int
    strides: int = 1

    @nn.compact
    def __call__(self, x, train: bool = False):
        norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9)
        y = nn.Conv(self.features, (3, 3), strides=self.strides, use_bias=False)(x)
        y = nn.relu(norm()(y))
        y = norm()(nn.Conv(self.features, (3, 3), use_bias=False)(y))
        if self.strides != 1 or x.shape[-1] != self.features:
            x = norm()(nn.Conv(self.features, (1, 1), strides=self.strides, use_bias=False)(x))
        return nn.relu(x + y)


class ResNet(nn.Module):
    """Stem, three residual blocks (the second strided, with a projection shortcut), mean pool, dense head."""

    width: int = WIDTH
    num_classes: int = 10

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Conv(self.width, (3, 3), use_bias=False)(x)
        x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9)(x))
        x = ResidualBlock(self.width)(x, train)
        x = ResidualBlock(2 * self.width, strides=2)(x, train)
        x = ResidualBlock(2 * self.width)(x, train)
        return nn.Dense(self.num_classes)(x.mean(axis=(1, 2)))


def resnet(width: int = WIDTH, seed: int = SEED, input_shape=(28, 28, 1), num_classes: int = 10):
    """``(apply_fn, variables)`` of a freshly initialised :class:`ResNet`."""
    model = ResNet(width, num_classes)
    variables = model.init(jax.random.key(seed), np.zeros((1, *input_shape), np.float32))
    return hamjax.linen_functional(model, variables)


def keep_channels(params, groups, sparsity: float, chosen=None) -> tuple:
    """The keep vectors removing ``sparsity`` of the channels of every prunable group by group L2.

    ``chosen(group) -> bool``, when given, picks the groups to cut; the others
    are left whole (``None``).
    """
    keep = prune.group_channels(params, groups, sparsity)
    if chosen is None:
        return keep
    return tuple(k if k is not None and chosen(g) else None for g, k in zip(groups, keep, strict=True))


def group_summary(groups, keep) -> list[dict]:
    """Per group: its size, channels kept, member count, and whether (or why not) it is prunable."""
    return [
        {
            "size": g.size,
            "kept": None if k is None else int(np.sum(k)),
            "members": len(g.members),
            "prunable": g.prunable,
            **({"reason": g.reason} if g.reason else {}),
        }
        for g, k in zip(groups, keep, strict=True)
    ]


def shrink(apply_fn, params, x, sparsity: float = SPARSITY, chosen=None) -> dict:
    """Group discovery, keep vectors (:func:`keep_channels`) and shrink, timed.

    Returns ``{"groups", "keep", "apply_fn", "params", "discovery_s", "keep_s", "shrink_s"}``.
    """
    started = time.perf_counter()
    groups = prune.channel_groups(apply_fn, params, x)
    discovered = time.perf_counter()
    keep = keep_channels(params, groups, sparsity, chosen)
    chosen = time.perf_counter()
    apply_s, params_s = prune.shrink_groups(apply_fn, params, x, groups, keep)
    done = time.perf_counter()
    return {
        "groups": groups,
        "keep": keep,
        "apply_fn": apply_s,
        "params": params_s,
        "discovery_s": round(discovered - started, 3),
        "keep_s": round(chosen - discovered, 3),
        "shrink_s": round(done - chosen, 3),
    }


def masked_difference(apply_fn, params, shrunk: dict, x, sparsity: float = SPARSITY) -> float:
    """Largest |masked - shrunk| output on ``x`` over the largest |masked| output (masks of the groups cut)."""
    cut = [g for g, k in zip(shrunk["groups"], shrunk["keep"], strict=True) if k is not None]
    masks = prune.group_masks(params, cut, sparsity)
    masked = np.asarray(jax.jit(apply_fn)(prune.apply_masks(params, masks), x))
    small = np.asarray(jax.jit(shrunk["apply_fn"])(shrunk["params"], x))
    return float(np.max(np.abs(masked - small)) / max(np.max(np.abs(masked)), 1e-30))


def train(apply_fn, params, ds, epochs: int, learning_rate: float):
    """:func:`hamjax.fit` with Adam, 20 warm-up steps then cosine decay, batch 64; ``(params, seconds)``."""
    config = hamjax.TrainConfig(epochs=epochs, batch_size=64, learning_rate=learning_rate, warmup_steps=20, seed=SEED)
    started = time.perf_counter()
    result = hamjax.fit(apply_fn, params, ds, config, progress=False)
    return result.params, round(time.perf_counter() - started, 1)


def run(quick: bool) -> tuple[list[dict], list[dict]]:
    """Train, shrink, finetune, export and time the ResNet.

    Args:
      quick: 6 + 6 epochs and 5 timing rounds instead of 12 + 12 and 9.

    Returns:
      ``(results, targets)``.
    """
    epochs, finetune_epochs, rounds = (6, 6, 5) if quick else (12, 12, 9)
    ds = hamjax.data.load("mnist", seed=SEED)
    x_test, y_test = ds.test.x, ds.test.y
    batch = x_test[:BATCH]

    apply_fn, variables = resnet()
    variables, train_s = train(apply_fn, variables, ds, epochs, LEARNING_RATE)
    dense_acc = measure.accuracy(apply_fn, x_test, y_test, params=variables)

    shrunk = shrink(apply_fn, variables, batch[:8])
    difference = masked_difference(apply_fn, variables, shrunk, batch)
    apply_s = shrunk["apply_fn"]
    pruned_acc = measure.accuracy(apply_s, x_test, y_test, params=shrunk["params"])
    variables_s, finetune_s = train(apply_s, shrunk["params"], ds, finetune_epochs, LEARNING_RATE)
    shrunk_acc = measure.accuracy(apply_s, x_test, y_test, params=variables_s)

    workdir = Path(tempfile.mkdtemp(prefix="shrink_cnn_"))
    exports = {
        "dense": export.onnx(apply_fn, variables, batch[:64], workdir / "dense.onnx", check_data=x_test[256:512]),
        "shrunk": export.onnx(apply_s, variables_s, batch[:64], workdir / "shrunk.onnx", check_data=x_test[256:512]),
    }
    runners = {
        "jit dense": measure.JaxRunner(apply_fn, variables, name="jit dense"),
        "jit shrunk": measure.JaxRunner(apply_s, variables_s, name="jit shrunk"),
        "ort dense": runtime.Session(exports["dense"].path, name="ort dense"),
        "ort shrunk": runtime.Session(exports["shrunk"].path, name="ort shrunk"),
    }
    ort_acc = {k: measure.accuracy(runners[f"ort {k}"], x_test, y_test) for k in exports}
    timings = interleaved_timings(runners, batch, rounds)
    jit_ratio = timings["jit dense"]["p50_ms"] / timings["jit shrunk"]["p50_ms"]
    ort_ratio = timings["ort dense"]["p50_ms"] / timings["ort shrunk"]["p50_ms"]
    drop = 100 * (dense_acc - shrunk_acc)

    results = [
        {
            "model": f"linen resnet, width {WIDTH}",
            "params_dense": measure.param_count(variables["params"]),
            "params_shrunk": measure.param_count(variables_s["params"]),
            "epochs": epochs,
            "finetune_epochs": finetune_epochs,
            "train_s": train_s,
            "finetune_s": finetune_s,
            "discovery_s": shrunk["discovery_s"],
            "keep_s": shrunk["keep_s"],
            "shrink_s": shrunk["shrink_s"],
            "shrunk_vs_masked_max_relative": difference,
            "groups": group_summary(shrunk["groups"], shrunk["keep"]),
            "test_accuracy": {
                "dense": dense_acc,
                "shrunk_before_finetune": pruned_acc,
                "shrunk_finetuned": shrunk_acc,
                "ort_dense": ort_acc["dense"],
                "ort_shrunk": ort_acc["shrunk"],
            },
            "onnx_checks_passed": {k: all(c.passed for c in r.checks) for k, r in exports.items()},
            "onnx_bytes": {k: int(r.size_bytes) for k, r in exports.items()},
        },
        *({"runner": name, "batch": BATCH, "rounds": rounds, **t} for name, t in timings.items()),
    ]
    targets = [
        {"name": "resnet dense / shrunk jit throughput, batch 256", "measured": jit_ratio, "goal": ">= 1.6",
         "met": jit_ratio >= 1.6},
        {"name": "resnet dense / shrunk onnxruntime throughput, batch 256", "measured": ort_ratio, "goal": ">= 1.6",
         "met": ort_ratio >= 1.6},
        {"name": "resnet test accuracy drop, dense - shrunk finetuned (points)", "measured": drop, "goal": "<= 1.0",
         "met": drop <= 1.0},
    ]  # fmt: skip
    return results, targets


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="6 + 6 epochs, 5 timing rounds")
    args = parser.parse_args(argv)
    results, targets = run(args.quick)
    return finish("shrink_cnn", results, targets)


if __name__ == "__main__":
    raise SystemExit(main())
