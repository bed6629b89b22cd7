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
}

REGULARIZATION = {
    "accumulate": Field(int, 1, low=1, doc="micro-batches per update (gradient accumulation)"),
    "clip_norm": Field(float, None, above=0.0, doc="clip the gradient to this global norm"),
    "clip_leaf_norm": Field(float, None, above=0.0, doc="clip each leaf's gradient to this norm"),
    "label_smoothing": Field(float, 0.0, low=0.0, doc="label smoothing, in [0, 1)"),
    "mixup": Field(float, 0.0, low=0.0, doc="mixup Beta alpha (0: off)"),
    "cutmix": Field(float, 0.0, low=0.0, doc="CutMix Beta alpha (0: off)"),
    "augment": Field(str, None, doc="augmentation spec, e.g. 'shift=2,rotate=10,cutout=8' or 'randaugment=0.5'"),
    "l1": Field(float, 0.0, low=0.0, doc="L1 penalty on kernels"),
    "l2": Field(float, 0.0, low=0.0, doc="L2 penalty on kernels (with l1: elastic net)"),
    "spectral": Field(float, 0.0, low=0.0, doc="spectral-norm penalty on kernels"),
    "drop_connect": Field(float, 0.0, low=0.0, doc="DropConnect rate on kernels, in [0, 1)"),
    "adversarial": Field(str, "none", choices=train.ADVERSARIAL_METHODS, doc="train on FGSM or PGD inputs"),
    "epsilon": Field(float, 0.0, low=0.0, doc="adversarial L-infinity radius"),
    "adversarial_steps": Field(int, 1, low=1, doc="PGD steps"),
    "data_parallel": Field(bool, False, doc="split every batch over all devices (hamjax.parallel)"),
}
"""The augmentation and regularisation fields of :class:`hamjax.train.TrainConfig`, shared by the training steps."""

FIELDS = {**FIELDS, **REGULARIZATION, "stage": Field(str, "dense", doc="name of the row this step adds to the report")}


def check(f: dict) -> str | None:
    """The rules across the regularisation fields; a message for the first one broken, else ``None``.

    Args:
      f: the step's fields with defaults filled in.

    Examples:
      >>> check({"label_smoothing": 1.0, "drop_connect": 0.0, "adversarial": "none", "epsilon": 0.0, "augment": None})
      'label_smoothing must be < 1, got 1.0'
      >>> check({"label_smoothing": 0.1, "drop_connect": 0.0, "adversarial": "pgd", "epsilon": 0.0, "augment": None})
      "adversarial = 'pgd' needs epsilon > 0"
    """
    for name in ("label_smoothing", "drop_connect"):
        if f[name] >= 1:
            return f"{name} must be < 1, got {f[name]!r}"
    if f["adversarial"] != "none" and f["epsilon"] <= 0:
        return f"adversarial = {f['adversarial']!r} needs epsilon > 0"
    if f["augment"] is not None:
        from hamjax import augment

        try:
            augment.parse(f["augment"])
        except ValueError as err:
            return f"augment = {f['augment']!r}: {err}"
    return None


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
    context.stages.append(
        report.Stage.from_model(stage, context.apply_fn, result.params, notes="; ".join(result.notes))
    )
    context.extras.setdefault("dense", (context.apply_fn, result.params, context.config))
    return context


KIND = StepKind("train", FIELDS, run, doc="train the current model with optax", check=check)
