"""The built-in recipe steps: ``train`` and ``prune``.

Each step is ``run(fields, context) -> context`` registered with
:func:`hamjax.recipes.register_step` together with its fields, so that
loading a recipe validates every value before anything runs.
"""

from __future__ import annotations

import os

from hamjax import report
from hamjax import train as train_lib
from hamjax.recipes import Context, Field, register_step

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


def _checkpoint_dir(context: Context, stage: str) -> str | None:
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
        checkpoint_dir=_checkpoint_dir(context, stage),
        progress=context.progress,
    )
    context.params = result.params
    context.stages.append(report.Stage.from_model(stage, context.apply_fn, result.params))
    return context


register_step("train", _TRAIN_FIELDS, _run_train, doc="train the current model with optax")
