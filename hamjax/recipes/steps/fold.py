"""The ``fold`` recipe step: batch norms (any per-channel affine) folded into the layers before them.

Runs :func:`hamjax.graph.fold` on the current model, in inference mode:
the folded model has no batch statistics and no train mode, so put the
step after training and before quantization (calibration then sees the
folded weights) and export. The folded params no longer match a reference
model's layout, so steps that need the architecture (structured pruning,
a student from the config) must come before it.
"""

from __future__ import annotations

from hamjax import graph, report
from hamjax.recipes.schema import Context, Field, StepKind

FIELDS = {
    "stage": Field(str, "folded", doc="name of the row this step adds to the report"),
}


def run(f: dict, context: Context) -> Context:
    """Fold ``context``'s model and add a report row naming the folded layers.

    Args:
      f: the step's validated fields (:data:`FIELDS`).
      context: the run so far.

    Returns:
      ``context`` with the folded model (unchanged when nothing folds).

    Raises:
      ValueError: a norm in train mode (from :func:`hamjax.graph.fold`).

    Examples:
      >>> import hamjax
      >>> from hamjax import recipes
      >>> apply_fn, params = hamjax.functional(hamjax.models.build("cnn", input_shape=(8, 8, 1)))
      >>> context = recipes.Context(apply_fn, params, hamjax.data.load("digits"), progress=False)
      >>> fields = recipes.validate({"name": "r", "steps": [{"kind": "fold"}]}).steps[0].params
      >>> row = run(dict(fields), context).stages[-1]
      >>> row.name, "batch_stats" in context.params
      ('folded', False)
    """
    example = context.dataset.train.x[:2]
    folded = graph.foldable(context.apply_fn, context.params, example)
    if folded:
        context.apply_fn, context.params = graph.fold(context.apply_fn, context.params, example)
        context.config = None  # the params no longer follow the reference model's layout
        layers = ", ".join(f"{s.kernel} ({'/'.join(s.ops)})" for s in folded)
        notes = f"{len(folded)} layers folded: {layers}"
    else:
        notes = "nothing to fold: no per-channel affine after a layer"
    context.stages.append(report.Stage.from_model(f["stage"], context.apply_fn, context.params, notes=notes))
    return context


KIND = StepKind(
    "fold",
    FIELDS,
    run,
    doc="fold inference batch norms (per-channel affines) into the convolution or dense layer before them",
)
