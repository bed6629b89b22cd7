"""The ``merge`` recipe step: token merging (ToMe) in the marked attention blocks, without retraining.

Runs :func:`hamjax.graph.merge_tokens` on the current model: ``r`` tokens
merge in every marked attention block (the ViT and HAMNet are marked; a
custom model marks its blocks as :mod:`hamjax.graph.tome` describes). The
params do not change; the apply function runs on fewer tokens. Put it
after training and before export; steps that re-evaluate the model's jaxpr
(``quantize``, ``fuse``) come after it, since merging answers markers while
the model's own code is traced.
"""

from __future__ import annotations

from hamjax import graph, report
from hamjax.recipes.schema import Context, Field, RecipeError, StepKind

FIELDS = {
    "r": Field(int, 8, low=0, doc="tokens merged in every marked attention block"),
    "class_token": Field(bool, False, doc="token 0 is a class token and never merges"),
    "proportional": Field(bool, True, doc="add log(size) to the attention logits (proportional attention)"),
    "stage": Field(str, "merged", doc="name of the row this step adds to the report"),
}


def run(f: dict, context: Context) -> Context:
    """Merge tokens in ``context``'s model and add a report row with the token count of each block.

    Args:
      f: the step's validated fields (:data:`FIELDS`).
      context: the run so far.

    Returns:
      ``context`` with the merged apply function (same params).

    Raises:
      RecipeError: a model without marked attention blocks, or ``r`` larger
        than a block allows (the message names ``r`` and the block).

    Examples:
      >>> import hamjax
      >>> from hamjax import recipes
      >>> apply_fn, params = hamjax.functional(hamjax.models.build("vit", input_shape=(8, 8, 1), patch_size=2))
      >>> context = recipes.Context(apply_fn, params, hamjax.data.load("digits"), progress=False)
      >>> fields = recipes.validate({"name": "r", "steps": [{"kind": "merge", "r": 4}]}).steps[0].params
      >>> run(dict(fields), context).stages[-1].notes
      'r=4 per block: tokens 16 -> 12 -> 8'
    """
    example = context.dataset.train.x[:2]
    try:
        plan = graph.merge_plan(context.apply_fn, context.params, example, f["r"], class_token=f["class_token"])
        context.apply_fn, context.params = graph.merge_tokens(
            context.apply_fn,
            context.params,
            example,
            f["r"],
            class_token=f["class_token"],
            proportional=f["proportional"],
        )
    except ValueError as err:
        raise RecipeError(f"merge: {err}") from err
    counts = [*plan.tokens, plan.tokens[-1] - plan.r[-1]]
    notes = f"r={f['r']} per block: tokens {' -> '.join(str(t) for t in counts)}"
    context.stages.append(report.Stage.from_model(f["stage"], context.apply_fn, context.params, notes=notes))
    return context


KIND = StepKind(
    "merge",
    FIELDS,
    run,
    doc="merge r similar tokens in every marked attention block (ToMe), without retraining",
)
