"""The ``train`` recipe step: train the current model with optax.

The first ``train`` step of a run also leaves the trained model in
``context.extras["dense"] = (apply_fn, params, config)``: the dense model that every
later row is compared with and that ``hamjax optimize`` keeps as ``OUT/dense``.
"""

from __future__ import annotations

from hamjax import report, train
from hamjax.recipes.schema import Context, Field, StepKind

FIELDS = {
    "epochs": Field(int, 10, low=1, doc="passes over the training split"),
    "batch_size": Field(int, 128, low=1, doc="examples per step"),
    "learning_rate": Field(float, 1e-3, above=0.0, doc="peak learning rate"),
    "optimizer": Field(str, "adam", choices=train.OPTIMIZERS, doc="optax optimizer"),
    "weight_decay": Field(float, 0.0, low=0.0, doc="weight decay"),
    "warmup_steps": Field(int, 0, low=0, doc="linear warm-up then cosine decay; 0 keeps the rate constant"),
    "eval_every": Field(int, None, low=1, doc="steps between validations (default: each epoch)"),
    "patience": Field(int, None, low=1, doc="early stopping after this many validations without improvement"),
    "checkpoint_seconds": Field(
        float, 30.0, low=0.0, doc="least seconds between epoch-end checkpoints (0: every epoch); the last is kept"
    ),
    "remat": Field(
        str, "none", choices=train.REMAT_POLICIES, doc="rematerialisation policy: recompute activations to save memory"
    ),
    "stage": Field(str, "dense", doc="name of the row this step adds to the report"),
}


def run(fields: dict, context: Context) -> Context:
    """Train ``context``'s model with :func:`hamjax.fit`; keep the best params by validation accuracy.

    Args:
      fields: the step's validated fields (:data:`FIELDS`).
      context: the run so far.

    Returns:
      ``context`` with the trained params and one more report row.

    Examples:
      >>> import hamjax
      >>> from hamjax import recipes
      >>> apply_fn, params = hamjax.functional(hamjax.models.build("mlp", input_shape=(8, 8, 1)))
      >>> context = recipes.Context(apply_fn, params, hamjax.data.load("digits"), progress=False)
      >>> fields = recipes.validate({"name": "r", "steps": [{"kind": "train", "epochs": 1}]}).steps[0].params
      >>> run(dict(fields), context).stages[-1].name  # doctest: +SKIP
      'dense'
    """
    fields = dict(fields)
    stage = fields.pop("stage")
    config = train.TrainConfig(seed=context.seed, **fields)
    result = train.fit(
        context.apply_fn,
        context.params,
        context.dataset,
        config,
        checkpoint_dir=context.checkpoint_dir(stage),
        progress=context.progress,
    )
    context.note_resumed(stage, result)
    context.params = result.params
    context.stages.append(report.Stage.from_model(stage, context.apply_fn, result.params))
    context.extras.setdefault("dense", (context.apply_fn, result.params, context.config))
    return context


KIND = StepKind("train", FIELDS, run, doc="train the current model with optax")
