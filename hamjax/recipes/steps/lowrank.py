"""The ``lowrank`` recipe step: kernels factored by truncated SVD, then finetuned with the factors trained.

Runs :func:`hamjax.graph.lowrank` on the current model with ranks chosen
by retained ``energy`` or a parameter ``budget`` (over the model or per
layer, :data:`hamjax.graph.SCOPES`), then finetunes the factors with
:func:`hamjax.fit` (resuming from the step's checkpoints under the run's
workdir). The factored params no longer follow a reference model's
layout, so steps that need the architecture must come before it.
"""

from __future__ import annotations

import jax
import numpy as np

from hamjax import graph, report, train
from hamjax.recipes.schema import Context, Field, StepKind

FIELDS = {
    "energy": Field(float, None, above=0.0, high=1.0, doc="retained fraction of squared singular values, (0, 1]"),
    "budget": Field(float, None, above=0.0, high=1.0, doc="fraction of the parameters kept, (0, 1]"),
    "scope": Field(str, "model", choices=graph.SCOPES, doc="where budget applies: the whole model or each layer"),
    "rank_multiple": Field(int, 1, low=1, doc="round chosen ranks down to a multiple of this (8 suits CPUs)"),
    "finetune_epochs": Field(int, 3, low=0, doc="epochs of finetuning the factors"),
    "learning_rate": Field(float, 5e-4, above=0.0, doc="finetuning learning rate"),
    "batch_size": Field(int, 128, low=1, doc="finetuning batch size"),
    "stage": Field(str, "lowrank", doc="name of the row this step adds to the report"),
}


def check(f: dict) -> str | None:
    """The rules across the lowrank step's fields; a message for the first one broken, else ``None``.

    Args:
      f: the step's fields with defaults filled in.

    Examples:
      >>> from hamjax.recipes.steps import lowrank
      >>> lowrank.check({"energy": None, "budget": None})
      'give energy (retained fraction of squared singular values) or budget (fraction of parameters)'
      >>> lowrank.check({"energy": 0.9, "budget": 0.5})
      'give energy or budget, not both'
    """
    if f["energy"] is None and f["budget"] is None:
        return "give energy (retained fraction of squared singular values) or budget (fraction of parameters)"
    if f["energy"] is not None and f["budget"] is not None:
        return "give energy or budget, not both"
    return None


def _count(params) -> int:
    return int(sum(np.size(leaf) for leaf in jax.tree.leaves(params)))


def run(f: dict, context: Context) -> Context:
    """Factor ``context``'s model, finetune the factors, add a report row.

    Args:
      f: the step's validated fields (:data:`FIELDS`).
      context: the run so far.

    Returns:
      ``context`` with the factored model.

    Examples:
      >>> import hamjax
      >>> from hamjax import recipes
      >>> apply_fn, params = hamjax.functional(hamjax.models.build("mlp", input_shape=(8, 8, 1)))
      >>> context = recipes.Context(apply_fn, params, hamjax.data.load("digits"), progress=False)
      >>> step = {"kind": "lowrank", "budget": 0.5, "finetune_epochs": 0}
      >>> fields = recipes.validate({"name": "r", "steps": [step]}).steps[0].params
      >>> run(dict(fields), context).stages[-1].name
      'lowrank'
    """
    before = _count(context.params)
    apply_fn, params = graph.lowrank(
        context.apply_fn,
        context.params,
        context.dataset.train.x[:2],
        energy=f["energy"],
        budget=f["budget"],
        scope=f["scope"],
        rank_multiple=f["rank_multiple"],
    )
    if f["finetune_epochs"]:
        config = train.TrainConfig(
            epochs=f["finetune_epochs"],
            batch_size=f["batch_size"],
            learning_rate=f["learning_rate"],
            seed=context.seed,
        )
        result = train.fit(
            apply_fn,
            params,
            context.dataset,
            config,
            checkpoint_dir=context.checkpoint_dir(f["stage"]),
            progress=context.progress,
        )
        context.note_resumed(f["stage"], result)
        params = result.params
    context.apply_fn, context.params, context.config = apply_fn, params, None
    nodes = jax.tree.leaves(params, is_leaf=lambda n: isinstance(n, graph.Factors))
    ranks = [int(n.v.shape[0]) for n in nodes if isinstance(n, graph.Factors)]
    how = f"energy {f['energy']:g}" if f["energy"] is not None else f"budget {f['budget']:g} ({f['scope']})"
    notes = f"{how}: {len(ranks)} layers factored, ranks {ranks}; {_count(params)} of {before} params"
    context.stages.append(report.Stage.from_model(f["stage"], apply_fn, params, notes=notes))
    return context


KIND = StepKind(
    "lowrank",
    FIELDS,
    run,
    doc="factor dense and convolution kernels by truncated SVD (rank by energy or budget), then finetune",
    check=check,
)
