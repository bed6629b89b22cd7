"""The built-in recipe steps: ``train`` and ``prune``.

Each step is ``run(fields, context) -> context`` registered with
:func:`hamjax.recipes.register_step` together with its fields, so that
loading a recipe validates every value before anything runs.
"""

from __future__ import annotations

import os

import jax
import numpy as np

from hamjax import data as data_lib
from hamjax import prune, report
from hamjax import train as train_lib
from hamjax._base import trainable, with_trainable
from hamjax.recipes import Context, Field, RecipeError, register_step

_TRAIN_FIELDS = {
    "epochs": Field(int, 10, low=1, doc="passes over the training split"),
    "batch_size": Field(int, 128, low=1, doc="examples per step"),
    "learning_rate": Field(float, 1e-3, above=0.0, doc="peak learning rate"),
    "optimizer": Field(str, "adam", choices=train_lib.OPTIMIZERS, doc="optax optimizer"),
    "weight_decay": Field(float, 0.0, low=0.0, doc="weight decay"),
    "warmup_steps": Field(int, 0, low=0, doc="linear warm-up then cosine decay; 0 keeps the rate constant"),
    "eval_every": Field(int, None, low=1, doc="steps between validations (default: each epoch)"),
    "patience": Field(int, None, low=1, doc="early stopping after this many validations without improvement"),
    "stage": Field(str, "dense", doc="name of the row this step adds to the report"),
}


def stage_checkpoint_dir(context: Context, stage: str) -> str | None:
    """Where a step that trains keeps its checkpoints: one directory per step under the run's workdir."""
    if context.workdir is None:
        return None
    return os.path.join(context.workdir, f"checkpoints-{len(context.stages)}-{stage}")


def _run_train(fields: dict, context: Context) -> Context:
    stage = fields.pop("stage")
    config = train_lib.TrainConfig(seed=context.seed, **fields)
    result = train_lib.fit(
        context.apply_fn,
        context.params,
        context.dataset,
        config,
        checkpoint_dir=stage_checkpoint_dir(context, stage),
        progress=context.progress,
    )
    context.params = result.params
    context.stages.append(report.Stage.from_model(stage, context.apply_fn, result.params))
    # The trained model with its architecture, for callers that save it (hamjax optimize).
    context.extras["trained"] = (context.config, result.params)
    return context


register_step("train", _TRAIN_FIELDS, _run_train, doc="train the current model with optax")


UNSTRUCTURED = ("magnitude", "global_magnitude", "random", "saliency", "movement", "nm", "block")
STRUCTURED = ("neurons", "channels", "heads")
SCHEDULES = ("one_shot", "polynomial", "iterative")
_DURING_TRAINING = ("magnitude", "global_magnitude", "movement")
_ITERATIVE = ("magnitude", "global_magnitude", "random", "saliency", "block")

_PRUNE_FIELDS = {
    "method": Field(str, "magnitude", choices=UNSTRUCTURED + STRUCTURED, doc="what to prune and how to score it"),
    "sparsity": Field(float, 0.5, low=0.0, high=0.999, doc="fraction of weights (or groups) removed, in [0, 1)"),
    "n": Field(int, 2, low=1, doc="N of N:M (method nm)"),
    "m": Field(int, 4, low=1, doc="M of N:M (method nm)"),
    "block": Field(int, 4, low=1, doc="side of square blocks (method block)"),
    "schedule": Field(str, "one_shot", choices=SCHEDULES, doc="one_shot, polynomial (Zhu & Gupta) or iterative"),
    "cycles": Field(int, 3, low=1, doc="prune -> finetune cycles (schedule iterative)"),
    "finetune_epochs": Field(int, 5, low=0, doc="epochs of masked finetuning per cycle"),
    "learning_rate": Field(float, 5e-4, above=0.0, doc="finetuning learning rate"),
    "batch_size": Field(int, 128, low=1, doc="finetuning batch size"),
    "shrink": Field(bool, False, doc="structured only: rebuild a smaller dense model"),
    "stage": Field(str, "pruned", doc="name of the row this step adds to the report"),
}


def _check_prune(f: dict) -> str | None:
    if f["n"] > f["m"]:
        return f"n={f['n']} must be <= m={f['m']} (keep n of every m weights)"
    if f["shrink"] and f["method"] not in STRUCTURED:
        return f"shrink=true needs a structured method {list(STRUCTURED)}, got method={f['method']!r}"
    if f["method"] in STRUCTURED and f["schedule"] != "one_shot":
        return f"structured method {f['method']!r} supports schedule='one_shot' only, got {f['schedule']!r}"
    if f["schedule"] == "polynomial" and f["method"] not in _DURING_TRAINING:
        return f"schedule='polynomial' prunes during training with {list(_DURING_TRAINING)}, got {f['method']!r}"
    if f["method"] == "movement" and f["schedule"] != "polynomial":
        return "method='movement' scores weights during training: use schedule='polynomial'"
    if f["schedule"] == "iterative" and f["method"] not in _ITERATIVE:
        return f"schedule='iterative' supports methods {list(_ITERATIVE)}, got {f['method']!r}"
    if f["schedule"] in ("polynomial", "iterative") and f["finetune_epochs"] < 1:
        return f"schedule={f['schedule']!r} needs finetune_epochs >= 1"
    return None


def _nonzeros(params) -> int:
    return int(sum(np.count_nonzero(np.asarray(leaf)) for leaf in jax.tree.leaves(params)))


def _unstructured_masks(f: dict, apply_fn, params, context: Context):
    tp, s = trainable(apply_fn, params), f["sparsity"]
    method = f["method"]
    if method == "magnitude":
        return prune.magnitude_masks(tp, s)
    if method == "global_magnitude":
        return prune.magnitude_masks(tp, s, scope="global")
    if method == "random":
        return prune.random_masks(tp, s, jax.random.key(context.seed))
    if method == "saliency":
        grads = train_lib.batch_grads(apply_fn, params, context.dataset.train, f["batch_size"], seed=context.seed)
        return prune.saliency_masks(tp, grads, s)
    if method == "nm":
        return prune.nm_masks(tp, f["n"], f["m"])
    return prune.block_masks(tp, s, block=(f["block"], f["block"]))


def _finetune_config(f: dict, context: Context) -> train_lib.TrainConfig:
    return train_lib.TrainConfig(
        epochs=f["finetune_epochs"], batch_size=f["batch_size"], learning_rate=f["learning_rate"], seed=context.seed
    )


def _finetune(f: dict, context: Context, params, optimizer_for, stage: str, *, final: bool = False):
    """Finetune with the optimizer ``optimizer_for(inner, total_steps)`` builds.

    Returns the best params by validation accuracy, or the last ones with
    ``final=True`` (gradual pruning: earlier params are not yet at the target sparsity).
    """
    config = _finetune_config(f, context)
    total = data_lib.steps_per_epoch(len(context.dataset.train.y), config.batch_size) * config.epochs
    result = train_lib.fit(
        context.apply_fn,
        params,
        context.dataset,
        config,
        optimizer=optimizer_for(train_lib.make_optimizer(config, total), total),
        checkpoint_dir=stage_checkpoint_dir(context, stage),
        progress=context.progress,
    )
    return result.state.params if final else result.params


def _run_prune(f: dict, context: Context) -> Context:
    apply_fn, params, stage = context.apply_fn, context.params, f["stage"]
    method = f["method"]
    if method in STRUCTURED:
        return _run_structured(f, context)
    if f["schedule"] == "iterative":
        targets = [f["sparsity"] * (i + 1) / f["cycles"] for i in range(f["cycles"])]
        params, _, _ = prune.iterative_prune(
            apply_fn,
            params,
            context.dataset,
            targets,
            _finetune_config(f, context),
            method=method,
            block=(f["block"], f["block"]),
            progress=context.progress,
        )
    elif f["schedule"] == "polynomial":

        def optimizer_for(inner, total):
            schedule = prune.polynomial_schedule(
                f["sparsity"], end_step=max(1, int(0.75 * total)), update_every=max(1, total // 20)
            )
            return prune.masked_optimizer(inner, method=method, schedule=schedule)

        params = _finetune(f, context, params, optimizer_for, stage, final=True)
    else:
        masks = _unstructured_masks(f, apply_fn, params, context)
        params = with_trainable(apply_fn, params, prune.apply_masks(trainable(apply_fn, params), masks))
        if f["finetune_epochs"]:
            params = _finetune(f, context, params, lambda inner, total: prune.masked_optimizer(inner, masks), stage)
    context.params = params
    context.stages.append(
        report.Stage.from_model(
            stage,
            apply_fn,
            params,
            param_count=_nonzeros(params),
            notes=f"{method} {f['sparsity']:.0%} unstructured: stored dense, so bytes and speed stay the dense "
            "model's until a sparse runtime uses them; params counts nonzeros",
        )
    )
    return context


def _run_structured(f: dict, context: Context) -> Context:
    if context.config is None:
        raise RecipeError(
            f"prune method {f['method']!r} needs a reference model (hamjax.models) to know its layers; "
            "this model has no config"
        )
    apply_fn, params, stage = context.apply_fn, context.params, f["stage"]
    masks = prune.structured_masks(context.config, params, f["sparsity"], granularity=f["method"])
    params = prune.apply_masks(params, masks)
    if f["finetune_epochs"]:
        train_masks = trainable(apply_fn, masks)
        params = _finetune(f, context, params, lambda inner, total: prune.masked_optimizer(inner, train_masks), stage)
    if f["shrink"]:
        apply_fn, params = prune.shrunk_model(context.config, params, masks)
        context.apply_fn, context.config = apply_fn, None
        notes = f"{f['method']} {f['sparsity']:.0%} structured, shrunk to a smaller dense model"
        row = report.Stage.from_model(stage, apply_fn, params, notes=notes)
    else:
        notes = f"{f['method']} {f['sparsity']:.0%} structured, masked (not shrunk); params counts nonzeros"
        row = report.Stage.from_model(stage, apply_fn, params, param_count=_nonzeros(params), notes=notes)
    context.params = params
    context.stages.append(row)
    return context


register_step(
    "prune",
    _PRUNE_FIELDS,
    _run_prune,
    doc="prune the current model (unstructured, N:M, block or structured + shrink), then finetune with masks kept",
    check=_check_prune,
)
