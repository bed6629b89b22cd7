"""The ``precision`` recipe step: finetune and serve the current model under a dtype policy.

A recipe such as ``transforms/bf16.toml`` trains the model, then runs::

    [[steps]]
    kind = "precision"
    policy = "p=f32,c=bf16,o=f32"
    finetune_epochs = 2

The step finetunes under the policy (float16 compute gets dynamic loss
scaling unless ``loss_scale = "none"``), leaves the params in the policy's
param dtype and the policy-wrapped apply function in the context, so the
steps after it train and measure the model as it will run.
"""

from __future__ import annotations

from hamjax import precision, report, train
from hamjax.recipes.schema import Context, Field, StepKind

FIELDS = {
    "policy": Field(str, "p=f32,c=bf16,o=f32", doc="dtype policy p=params,c=compute,o=output (or one dtype)"),
    "loss_scale": Field(
        str, "auto", choices=precision.LOSS_SCALES, doc="auto: dynamic loss scaling when computing in float16"
    ),
    "finetune_epochs": Field(int, 2, low=0, doc="epochs of finetuning under the policy; 0 only casts"),
    "learning_rate": Field(float, 5e-4, above=0.0, doc="finetuning learning rate"),
    "batch_size": Field(int, 128, low=1, doc="finetuning batch size"),
    "stage": Field(str, "bf16", doc="name of the row this step adds to the report"),
}


def check(f: dict) -> str | None:
    """A message if ``policy`` is not a dtype policy, else ``None``.

    Args:
      f: the step's fields with defaults filled in.

    Examples:
      >>> from hamjax.recipes.steps import mixed_precision
      >>> mixed_precision.check({"policy": "p=f32,c=bf16,o=f32"}) is None
      True
    """
    try:
        precision.Policy.parse(f["policy"])
    except ValueError as err:
        return f"policy={f['policy']!r} is not a dtype policy: {err}"
    return None


def run(f: dict, context: Context) -> Context:
    """Finetune (or cast) ``context``'s model under the step's dtype policy and serve it under it.

    Args:
      f: the step's validated fields (:data:`FIELDS`).
      context: the run so far.

    Returns:
      ``context`` with the policy-wrapped apply function, the params in the
      policy's param dtype and one more report row.

    Examples:
      >>> import hamjax
      >>> from hamjax import recipes
      >>> apply_fn, params = hamjax.functional(hamjax.models.build("mlp", input_shape=(8, 8, 1)))
      >>> context = recipes.Context(apply_fn, params, hamjax.data.load("digits"), progress=False)
      >>> fields = {"policy": "p=bf16,c=bf16,o=f32", "loss_scale": "auto", "finetune_epochs": 0,
      ...           "learning_rate": 5e-4, "batch_size": 128, "stage": "bf16"}
      >>> run(fields, context).extras["policy"]
      'p=bf16,c=bf16,o=f32'
    """
    policy, stage = precision.get_policy(f["policy"]), f["stage"]
    params = context.params
    if f["finetune_epochs"]:
        config = train.TrainConfig(
            epochs=f["finetune_epochs"],
            batch_size=f["batch_size"],
            learning_rate=f["learning_rate"],
            seed=context.seed,
            precision=str(policy),
            loss_scale=f["loss_scale"],
        )
        result = train.fit(
            context.apply_fn,
            params,
            context.dataset,
            config,
            checkpoint_dir=context.checkpoint_dir(stage),
            progress=context.progress,
        )
        context.note_resumed(stage, result)
        params = result.params
    else:
        params = policy.cast_to_param(params)
    apply_fn = precision.with_policy(context.apply_fn, policy)
    context.apply_fn, context.params = apply_fn, params
    context.extras["policy"] = str(policy)
    notes = f"policy {policy}: params stored in {policy.param_dtype.name}, computed in {policy.compute_dtype.name}"
    context.stages.append(report.Stage.from_model(stage, apply_fn, params, notes=notes))
    return context


KIND = StepKind(
    "precision",
    FIELDS,
    run,
    doc="finetune and serve the model under a mixed-precision dtype policy (bf16 / f16 compute)",
    check=check,
)
