"""The ``prune`` recipe step: unstructured, N:M, block or structured pruning, then masked finetuning.

Unstructured methods zero single weights (stored dense, so bytes and speed
stay the dense model's until a sparse runtime uses them) of the leaves the
model uses as dense or convolution weights
(:func:`hamjax.jaxpr.weight_filter`: decided by use, so a position table
that is added or an embedding that is gathered is left whole whatever its
name); structured ones remove whole channels. ``method = "groups"`` works
on any model: it removes channels of every prunable channel group the
jaxpr shows (:func:`hamjax.prune.channel_groups`: dense and conv outputs
with their biases, norms and consumers, residual-coupled channels, heads),
ranked by ``importance`` per group or globally (``scope``), and with
``shrink = true`` makes the model physically smaller
(:func:`hamjax.prune.shrink_groups`). ``neurons``, ``channels`` and
``heads`` are the reference models' granularities
(:func:`hamjax.prune.structured_masks`), kept because they prune one kind
of unit at a time and shrink to a rebuilt NNX module of a smaller config;
on a model without a reference config they take the general path. The lists of
methods are the prune family's: :data:`hamjax.prune.SCHEDULED_METHODS`
(during training), :data:`hamjax.prune.METHODS` (iterative cycles) and the
granularities of :func:`hamjax.prune.structured_masks`.
"""

from __future__ import annotations

import jax
import numpy as np

from hamjax import data, jaxpr, prune, report, train
from hamjax._base import trainable, with_trainable
from hamjax.recipes.schema import Context, Field, StepKind

SCHEDULES = ("one_shot", "polynomial", "iterative")
"""How the step reaches its sparsity: at once, along a cubic schedule while finetuning, or in cycles."""

GRANULAR = tuple(dict.fromkeys(g for granularities in prune.GRANULARITIES.values() for g in granularities))
STRUCTURED = ("groups", *GRANULAR)
"""The structured methods: ``groups`` (any model) and the units :func:`hamjax.prune.structured_masks` removes."""


def _grads(f: dict, apply_fn, params, context: Context):
    return train.batch_grads(apply_fn, params, context.dataset.train, f["batch_size"], seed=context.seed)


def _weights(context: Context) -> jaxpr.WeightFilter:
    """The leaves the model uses as dense or conv weights (by use, not name: an added ``pos`` table is not one)."""
    return jaxpr.weight_filter(context.apply_fn, context.params, context.dataset.train.x[:2])


# One-shot masks over the trainable params, by method.
_ONE_SHOT = {
    "magnitude": lambda f, tp, ctx, grads: prune.magnitude_masks(tp, f["sparsity"], filter=_weights(ctx)),
    "global_magnitude": lambda f, tp, ctx, grads: prune.magnitude_masks(
        tp, f["sparsity"], scope="global", filter=_weights(ctx)
    ),
    "random": lambda f, tp, ctx, grads: prune.random_masks(
        tp, f["sparsity"], jax.random.key(ctx.seed), filter=_weights(ctx)
    ),
    "saliency": lambda f, tp, ctx, grads: prune.saliency_masks(tp, grads(), f["sparsity"], filter=_weights(ctx)),
    "nm": lambda f, tp, ctx, grads: prune.nm_masks(
        tp, f["n"], f["m"], incompatible=f["incompatible"], filter=_weights(ctx)
    ),
    "block": lambda f, tp, ctx, grads: prune.block_masks(
        tp, f["sparsity"], block=(f["block"], f["block"]), score=f["block_score"], filter=_weights(ctx)
    ),
}

UNSTRUCTURED = tuple(dict.fromkeys((*_ONE_SHOT, *prune.SCHEDULED_METHODS, *prune.METHODS)))
"""The unstructured methods: one-shot masks, the family's scheduled ones (movement) and its iterative ones."""

FIELDS = {
    "method": Field(str, "magnitude", choices=UNSTRUCTURED + STRUCTURED, doc="what to prune and how to score it"),
    "sparsity": Field(float, 0.5, low=0.0, high=0.999, doc="fraction of weights (or groups) removed, in [0, 1)"),
    "n": Field(int, 2, low=1, doc="N of N:M (method nm)"),
    "m": Field(int, 4, low=1, doc="M of N:M (method nm)"),
    "incompatible": Field(
        str, "raise", choices=prune.INCOMPATIBLE, doc="layers whose input axis m does not divide: raise or skip (nm)"
    ),
    "block": Field(int, 4, low=1, doc="side of square blocks (method block)"),
    "block_score": Field(str, "l2", choices=prune.BLOCK_SCORES, doc="score of a block: l2 norm or mean |w| (block)"),
    "schedule": Field(str, "one_shot", choices=SCHEDULES, doc="one_shot, polynomial (Zhu & Gupta) or iterative"),
    "cycles": Field(int, 3, low=1, doc="prune -> finetune cycles (schedule iterative)"),
    "finetune_epochs": Field(int, 5, low=0, doc="epochs of masked finetuning per cycle"),
    "learning_rate": Field(float, 5e-4, above=0.0, doc="finetuning learning rate"),
    "batch_size": Field(int, 128, low=1, doc="finetuning batch size"),
    "shrink": Field(bool, False, doc="structured only: make the model physically smaller"),
    "importance": Field(
        str, "l2", choices=prune.IMPORTANCE_METHODS, doc="channel importance of method groups (taylor: weight x grad)"
    ),
    "scope": Field(str, "layer", choices=("layer", "global"), doc="method groups: sparsity per group or overall"),
    "multiple": Field(int, 1, low=1, doc="method groups: round kept channel counts up to a multiple"),
    "stage": Field(str, "pruned", doc="name of the row this step adds to the report"),
}


def check(f: dict) -> str | None:
    """The rules across the prune step's fields; a message for the first one broken, else ``None``.

    Args:
      f: the step's fields with defaults filled in.

    Examples:
      >>> from hamjax.recipes.steps import pruning
      >>> pruning.check({**{k: v.default for k, v in pruning.FIELDS.items()}, "n": 5})
      'n=5 must be <= m=4 (keep n of every m weights)'
    """
    method, schedule = f["method"], f["schedule"]
    if f["n"] > f["m"]:
        return f"n={f['n']} must be <= m={f['m']} (keep n of every m weights)"
    if f["shrink"] and method not in STRUCTURED:
        return f"shrink=true needs a structured method {list(STRUCTURED)}, got method={method!r}"
    if method in STRUCTURED and schedule != "one_shot":
        return f"structured method {method!r} supports schedule='one_shot' only, got {schedule!r}"
    if schedule == "polynomial" and method not in prune.SCHEDULED_METHODS:
        return f"schedule='polynomial' prunes during training with {list(prune.SCHEDULED_METHODS)}, got {method!r}"
    if method not in _ONE_SHOT and method not in STRUCTURED and schedule == "one_shot":
        return f"method={method!r} scores weights during training: use schedule='polynomial'"
    if schedule == "iterative" and method not in prune.METHODS:
        return f"schedule='iterative' supports methods {list(prune.METHODS)}, got {method!r}"
    if schedule in ("polynomial", "iterative") and f["finetune_epochs"] < 1:
        return f"schedule={schedule!r} needs finetune_epochs >= 1"
    if (f["importance"], f["scope"], f["multiple"]) != ("l2", "layer", 1) and method != "groups":
        return f"importance, scope and multiple apply to method='groups', got method={method!r}"
    if f["block_score"] != "l2" and (method != "block" or schedule != "one_shot"):
        return f"block_score={f['block_score']!r} applies to method='block' with schedule='one_shot' only"
    return None


def _nonzeros(params) -> int:
    return int(sum(np.count_nonzero(np.asarray(leaf)) for leaf in jax.tree.leaves(params)))


def _finetune_config(f: dict, context: Context) -> train.TrainConfig:
    return train.TrainConfig(
        epochs=f["finetune_epochs"], batch_size=f["batch_size"], learning_rate=f["learning_rate"], seed=context.seed
    )


def _finetune(f: dict, context: Context, params, optimizer_for, *, final: bool = False):
    """Finetune with the optimizer ``optimizer_for(inner, total_steps)`` builds.

    Returns the best params by validation accuracy, or the last ones with
    ``final=True`` (gradual pruning: earlier params are not yet at the target sparsity).
    """
    config = _finetune_config(f, context)
    total = data.steps_per_epoch(len(context.dataset.train.y), config.batch_size) * config.epochs
    result = train.fit(
        context.apply_fn,
        params,
        context.dataset,
        config,
        optimizer=optimizer_for(train.make_optimizer(config, total), total),
        checkpoint_dir=context.checkpoint_dir(f["stage"]),
        progress=context.progress,
    )
    context.note_resumed(f["stage"], result)
    return result.state.params if final else result.params


def run(f: dict, context: Context) -> Context:
    """Prune ``context``'s model as the fields say, finetune it with the masks kept, add a report row.

    Args:
      f: the step's validated fields (:data:`FIELDS`).
      context: the run so far; a structured method needs ``context.config``.

    Returns:
      ``context`` with the pruned (or shrunk) model.

    Raises:
      RecipeError: a structured method on a model without a reference config.

    Examples:
      >>> import hamjax
      >>> from hamjax import recipes
      >>> apply_fn, params = hamjax.functional(hamjax.models.build("mlp", input_shape=(8, 8, 1)))
      >>> context = recipes.Context(apply_fn, params, hamjax.data.load("digits"), progress=False)
      >>> fields = recipes.validate({"name": "r", "steps": [{"kind": "prune", "method": "nm"}]}).steps[0].params
      >>> run(dict(fields), context).stages[-1].name  # doctest: +SKIP
      'pruned'
    """
    apply_fn, params, method = context.apply_fn, context.params, f["method"]
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
            filter=_weights(context),
            block=(f["block"], f["block"]),
            progress=context.progress,
        )
    elif f["schedule"] == "polynomial":

        def optimizer_for(inner, total):
            schedule = prune.polynomial_schedule(
                f["sparsity"], end_step=max(1, int(0.75 * total)), update_every=max(1, total // 20)
            )
            return prune.masked_optimizer(inner, method=method, schedule=schedule, filter=_weights(context))

        params = _finetune(f, context, params, optimizer_for, final=True)
    else:
        tp = trainable(apply_fn, params)
        masks = _ONE_SHOT[method](f, tp, context, lambda: _grads(f, apply_fn, params, context))
        params = with_trainable(apply_fn, params, prune.apply_masks(tp, masks))
        if f["finetune_epochs"]:
            params = _finetune(f, context, params, lambda inner, total: prune.masked_optimizer(inner, masks))
    context.params = params
    amount = f"{f['n']}:{f['m']}" if method == "nm" else f"{f['sparsity']:.0%}"
    context.stages.append(
        report.Stage.from_model(
            f["stage"],
            apply_fn,
            params,
            param_count=_nonzeros(params),
            notes=f"{method} {amount} unstructured: stored dense, so bytes and speed stay the dense "
            "model's until a sparse runtime uses them; params counts nonzeros",
        )
    )
    return context


def _masked_finetune(f: dict, context: Context, params, masks):
    """``params`` masked, finetuned with the masks kept where the step asks for epochs."""
    params = prune.apply_masks(params, masks)
    if f["finetune_epochs"]:
        train_masks = trainable(context.apply_fn, masks)
        params = _finetune(f, context, params, lambda inner, total: prune.masked_optimizer(inner, train_masks))
    return params


def _structured_row(f: dict, context: Context, apply_fn, params, amount: str, shrunk: str | None) -> Context:
    """Put the structured step's model in ``context`` and add its report row."""
    if shrunk is not None:
        row = report.Stage.from_model(f["stage"], apply_fn, params, notes=f"{amount}, {shrunk}")
    else:
        notes = f"{amount}, masked (not shrunk); params counts nonzeros"
        row = report.Stage.from_model(f["stage"], apply_fn, params, param_count=_nonzeros(params), notes=notes)
    context.params = params
    context.stages.append(row)
    return context


def _run_groups(f: dict, context: Context) -> Context:
    """Any model: remove channels of its channel groups, finetune with the masks kept, shrink physically."""
    apply_fn, params = context.apply_fn, context.params
    x = context.dataset.train.x[:2]
    groups = prune.channel_groups(apply_fn, params, x)
    grads = _grads(f, apply_fn, params, context) if f["importance"] == "taylor" else None
    how = {"method": f["importance"], "scope": f["scope"], "multiple": f["multiple"], "grads": grads}
    how["key"] = context.seed if f["importance"] == "random" else None
    keep = prune.group_channels(params, groups, f["sparsity"], **how)
    params = _masked_finetune(f, context, params, prune.group_masks(params, groups, f["sparsity"], **how))
    unit = f"{f['method']} " if f["method"] != "groups" else ""
    amount = f"{unit}channel groups {f['sparsity']:.0%} ({f['importance']}, {f['scope']})"
    if not f["shrink"]:
        return _structured_row(f, context, apply_fn, params, amount, None)
    apply_fn, params = prune.shrink_groups(apply_fn, params, x, groups, keep)
    context.apply_fn, context.config = apply_fn, None
    return _structured_row(f, context, apply_fn, params, amount, "shrunk physically")


def _run_structured(f: dict, context: Context) -> Context:
    if f["method"] == "groups" or context.config is None:
        return _run_groups(f, context)
    config = context.config
    masks = prune.structured_masks(config, context.params, f["sparsity"], granularity=f["method"])
    params = _masked_finetune(f, context, context.params, masks)
    amount = f"{f['method']} {f['sparsity']:.0%} structured"
    if not f["shrink"]:
        return _structured_row(f, context, context.apply_fn, params, amount, None)
    small_config, _ = prune.shrink(config, params, masks)
    apply_fn, params = prune.shrunk_model(config, params, masks, seed=context.seed)
    context.apply_fn, context.config = apply_fn, small_config
    return _structured_row(f, context, apply_fn, params, amount, "shrunk to a smaller dense model")


KIND = StepKind(
    "prune",
    FIELDS,
    run,
    doc="prune the current model (unstructured, N:M, block or structured + shrink), then finetune with masks kept",
    check=check,
)
