"""Shrink a plain jax.numpy transformer the benchmark writes itself: half its heads and half its MLP width, timed under jit.

Run: ``python bench/shrink_transformer.py --quick`` (4 epochs, 2 of
finetuning, 5 timing rounds) or ``python bench/shrink_transformer.py`` (10,
5, 9). The last line printed is one JSON object ``{"bench":
"shrink_transformer", "env", "results", "targets"}``; ``bench/shrink.py``
calls :func:`run`.

The model (:func:`transformer`, no flax): the 28x28x1 image cut into 16
patches of 7x7, a patch embedding ``(49, DIM)`` plus a learned position
table ``pos`` ``(16, DIM)``, ``DEPTH`` pre-norm blocks (LayerNorm, a fused
qkv kernel ``(DIM, 3 * DIM)`` whose output is reshaped to ``(B, T, 3,
HEADS, DIM // HEADS)``, softmax attention, an output projection, LayerNorm,
an MLP of hidden width ``4 * DIM`` with GELU), mean pooling over tokens, a
final LayerNorm and a dense head. It is trained with :func:`hamjax.fit` on
the bundled MNIST subset (Adam 1e-3, 20 warm-up steps then cosine decay,
batch 64).

Then :func:`hamjax.prune.channel_groups` finds the groups (named by
:func:`group_kind` from their members: heads, within-head features, MLP
hidden units, other), ``prune.group_channels`` picks the 50% of channels to
keep by group L2 and ``prune.shrink_groups`` returns the smaller model. Two
cuts of the same trained params: ``heads+mlp`` (the target's: half the
heads and half the MLP width, the within-head feature groups left whole)
and ``all prunable`` (half of every prunable group, within-head features
too). The residual stream is normalised by LayerNorm (a mean over the
channel axis), so its width stays. Each shrunk model is checked against the
masked one and finetuned briefly; test accuracies before and after are
reported.

Timing: batch 256 of the test split, JAX jit, the dense model and both
shrunk ones interleaved in bursts of about 0.3 s, each figure the median
over rounds of a burst's p50.

Target (issue 18): dense / shrunk (``heads+mlp``) throughput at batch 256
under jit >= 1.5, with 50% of the heads and 50% of the MLP width removed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import hamjax
from hamjax import measure

sys.path.insert(0, str(Path(__file__).resolve().parent))
from shrink_cnn import group_summary, masked_difference, shrink, train
from timing import finish, interleaved_timings

DIM = 128
HEADS = 8
DEPTH = 2
PATCH = 7
SPARSITY = 0.5
BATCH = 256
SEED = 0


def layer_norm(h, scale, bias, eps: float = 1e-6):
    """LayerNorm over the last axis, written out."""
    mean = jnp.mean(h, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(h - mean), axis=-1, keepdims=True)
    lead = (1,) * (h.ndim - 1)
    return (h - mean) * jax.lax.rsqrt(var + eps) * scale.reshape(*lead, -1) + bias.reshape(*lead, -1)


def transformer_params(seed: int = SEED, dim: int = DIM, depth: int = DEPTH, num_classes: int = 10) -> dict:
    """Params of :func:`transformer_apply`, drawn with numpy (scaled normal kernels, zero biases, unit norms)."""
    rng = np.random.default_rng(seed)

    def normal(*shape):
        return jnp.asarray(rng.normal(size=shape) / np.sqrt(shape[0]), jnp.float32)

    def zeros(*shape):
        return jnp.zeros(shape, jnp.float32)

    tokens = (28 // PATCH) ** 2
    blocks = [
        {
            "ln_a": (jnp.ones(dim), zeros(dim)),
            "wqkv": normal(dim, 3 * dim),
            "bqkv": zeros(3 * dim),
            "wo": normal(dim, dim),
            "bo": zeros(dim),
            "ln_m": (jnp.ones(dim), zeros(dim)),
            "up": normal(dim, 4 * dim),
            "up_b": zeros(4 * dim),
            "down": normal(4 * dim, dim),
            "down_b": zeros(dim),
        }
        for _ in range(depth)
    ]
    return {
        "patch_w": normal(PATCH * PATCH, dim),
        "patch_b": zeros(dim),
        "pos": jnp.asarray(0.02 * rng.normal(size=(tokens, dim)), jnp.float32),
        "blocks": blocks,
        "ln_f": (jnp.ones(dim), zeros(dim)),
        "cls_w": normal(dim, num_classes),
        "cls_b": zeros(num_classes),
    }


def transformer_apply(p, x):
    """Logits ``(B, 10)`` of images ``x`` ``(B, 28, 28, 1)``; ``HEADS`` heads of ``DIM // HEADS``."""
    b, n = x.shape[0], 28 // PATCH
    t, head_dim = n * n, DIM // HEADS
    patches = x.reshape(b, n, PATCH, n, PATCH).transpose(0, 1, 3, 2, 4).reshape(b, t, PATCH * PATCH)
    h = patches @ p["patch_w"] + p["patch_b"][None, None] + p["pos"][None]
    for blk in p["blocks"]:
        qkv = (layer_norm(h, *blk["ln_a"]) @ blk["wqkv"] + blk["bqkv"][None, None]).reshape(b, t, 3, HEADS, head_dim)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        weights = jax.nn.softmax(jnp.einsum("bthd,bshd->bhts", q, k) / np.float32(np.sqrt(head_dim)), axis=-1)
        attended = jnp.einsum("bhts,bshd->bthd", weights, v).reshape(b, t, DIM)
        h = h + attended @ blk["wo"] + blk["bo"][None, None]
        hidden = jax.nn.gelu(layer_norm(h, *blk["ln_m"]) @ blk["up"] + blk["up_b"][None, None])
        h = h + hidden @ blk["down"] + blk["down_b"][None, None]
    return layer_norm(h.mean(axis=1), *p["ln_f"]) @ p["cls_w"] + p["cls_b"][None]


def transformer(seed: int = SEED):
    """``(apply_fn, params)`` of the plain-jnp transformer."""
    return transformer_apply, transformer_params(seed)


KINDS = ("heads", "head_dim", "mlp", "other")


def group_kind(group) -> str:
    """What a group is, from its members: ``"heads"``, ``"head_dim"``, ``"mlp"`` or ``"other"``.

    A group with a member on the output axis of a ``wqkv`` kernel is the
    attention heads when it has ``HEADS`` channels, the within-head features
    when it has ``DIM // HEADS``; one with a member on the output axis of an
    ``up`` kernel is the MLP's hidden units.
    """
    outputs = [m.path for m in group.members if m.axis == 1]
    if any("'wqkv'" in path for path in outputs):
        return {HEADS: "heads", DIM // HEADS: "head_dim"}.get(group.size, "other")
    if any("'up'" in path for path in outputs):
        return "mlp"
    return "other"


def removed_counts(shrunk: dict) -> dict:
    """``{kind: {"removed", "of"}}``: channels removed, of all channels in the groups of each kind but ``other``."""
    removed, totals = dict.fromkeys(KINDS[:3], 0), dict.fromkeys(KINDS[:3], 0)
    for group, keep in zip(shrunk["groups"], shrunk["keep"], strict=True):
        kind = group_kind(group)
        if kind in totals:
            totals[kind] += group.size
            removed[kind] += 0 if keep is None else group.size - int(np.sum(keep))
    return {kind: {"removed": removed[kind], "of": totals[kind]} for kind in totals}


def run(quick: bool) -> tuple[list[dict], list[dict]]:
    """Train, shrink and time the transformer.

    Two shrunk models come from the same trained params: the target's, with
    50% of the heads and of the MLP width removed (the within-head feature
    groups left whole), and, as a result beside it, one with 50% of every
    prunable group removed (heads, within-head features and MLP width).

    Args:
      quick: 4 epochs (2 of finetuning) and 5 timing rounds instead of 10 (5) and 9.

    Returns:
      ``(results, targets)``.
    """
    epochs, finetune_epochs, rounds = (4, 2, 5) if quick else (10, 5, 9)
    ds = hamjax.data.load("mnist", seed=SEED)
    x_test, y_test = ds.test.x, ds.test.y
    batch = x_test[:BATCH]

    apply_fn, params = transformer()
    params, train_s = train(apply_fn, params, ds, epochs, 1e-3)
    dense_acc = measure.accuracy(apply_fn, x_test, y_test, params=params)
    runners = {"jit dense": measure.JaxRunner(apply_fn, params, name="jit dense")}
    results = []
    variants = {"heads+mlp": lambda g: group_kind(g) in ("heads", "mlp"), "all prunable": None}
    for name, chosen in variants.items():
        shrunk = shrink(apply_fn, params, batch[:8], SPARSITY, chosen)
        apply_s, params_s = shrunk["apply_fn"], shrunk["params"]
        pruned_acc = measure.accuracy(apply_s, x_test, y_test, params=params_s)
        tuned, finetune_s = train(apply_s, params_s, ds, finetune_epochs, 1e-3)
        runners[f"jit {name}"] = measure.JaxRunner(apply_s, params_s, name=f"jit {name}")
        results.append(
            {
                "model": f"plain-jnp transformer, dim {DIM}, {HEADS} heads, depth {DEPTH}, 16 patches",
                "cut": name,
                "params_dense": measure.param_count(params),
                "params_shrunk": measure.param_count(params_s),
                "epochs": epochs,
                "train_s": train_s,
                "discovery_s": shrunk["discovery_s"],
                "keep_s": shrunk["keep_s"],
                "shrink_s": shrunk["shrink_s"],
                "shrunk_vs_masked_max_relative": masked_difference(apply_fn, params, shrunk, batch, SPARSITY),
                "removed": removed_counts(shrunk),
                "groups": [
                    {"kind": group_kind(g), **row}
                    for g, row in zip(shrunk["groups"], group_summary(shrunk["groups"], shrunk["keep"]), strict=True)
                ],
                "finetune_epochs": finetune_epochs,
                "finetune_s": finetune_s,
                "test_accuracy": {
                    "dense": dense_acc,
                    "shrunk_before_finetune": pruned_acc,
                    "shrunk_finetuned": measure.accuracy(apply_s, x_test, y_test, params=tuned),
                },
            }
        )
    timings = interleaved_timings(runners, batch, rounds)
    results.extend({"runner": name, "batch": BATCH, "rounds": rounds, **t} for name, t in timings.items())
    for row in results[: len(variants)]:
        row["dense_over_shrunk_throughput"] = timings["jit dense"]["p50_ms"] / timings[f"jit {row['cut']}"]["p50_ms"]
    target_row = results[0]
    counts = [target_row["removed"][kind] for kind in ("heads", "mlp")]
    halves = all(c["of"] > 0 and 2 * c["removed"] >= c["of"] for c in counts)
    what = "heads and MLP width" if counts[0]["of"] else "MLP width only (no head group found)"
    ratio = target_row["dense_over_shrunk_throughput"]
    targets = [
        {"name": f"transformer dense / shrunk jit throughput, batch 256, 50% of {what} removed", "measured": ratio,
         "goal": ">= 1.5", "met": bool(ratio >= 1.5 and halves)},
    ]  # fmt: skip
    return results, targets


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4 epochs, 5 timing rounds")
    args = parser.parse_args(argv)
    results, targets = run(args.quick)
    return finish("shrink_transformer", results, targets)


if __name__ == "__main__":
    raise SystemExit(main())
