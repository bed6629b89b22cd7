"""The ``fuse`` recipe step: explicit attention rewritten to one fused ``jax.nn.dot_product_attention``.

Runs :func:`hamjax.graph.fuse_attention` on the current model: every
``softmax(q k^T * scale + bias) v`` the model computes op by op becomes one
fused op, which XLA compiles as ``jax.nn.dot_product_attention`` (cuDNN's
kernel with ``implementation = "cudnn"`` on an NVIDIA GPU) and the export
step writes as one ONNX ``Attention`` operator. Params are unchanged, so
the step can run anywhere after training; a model without attention is
left as it is and the report says so.
"""

from __future__ import annotations

from hamjax import graph, report
from hamjax.recipes.schema import Context, Field, StepKind

IMPLEMENTATIONS = ("auto", "xla", "cudnn")
"""The step's ``implementation`` values; ``"auto"`` lets JAX choose (``implementation=None``)."""

FIELDS = {
    "implementation": Field(
        str, "auto", choices=IMPLEMENTATIONS, doc="auto (JAX chooses), xla, or cudnn (NVIDIA GPUs)"
    ),
    "stage": Field(str, "fused", doc="name of the row this step adds to the report"),
}


def run(f: dict, context: Context) -> Context:
    """Fuse ``context``'s attention and add a report row saying how many attentions were fused.

    Args:
      f: the step's validated fields (:data:`FIELDS`).
      context: the run so far.

    Returns:
      ``context`` with the fused model (unchanged when there is no attention).

    Examples:
      >>> import hamjax
      >>> from hamjax import recipes
      >>> apply_fn, params = hamjax.functional(hamjax.models.build("vit", input_shape=(8, 8, 1), patch_size=4))
      >>> context = recipes.Context(apply_fn, params, hamjax.data.load("digits"), progress=False)
      >>> fields = recipes.validate({"name": "r", "steps": [{"kind": "fuse"}]}).steps[0].params
      >>> run(dict(fields), context).stages[-1].notes
      '2 attentions fused: (B, 4, 4, 16) x 4 keys, (B, 4, 4, 16) x 4 keys'
    """
    example = context.dataset.train.x[:2]
    found = graph.find_attention(context.apply_fn, context.params, example)
    if found:
        implementation = None if f["implementation"] == "auto" else f["implementation"]
        context.apply_fn, context.params = graph.fuse_attention(
            context.apply_fn, context.params, implementation=implementation
        )
        shapes = ", ".join(
            f"(B, {', '.join(str(d) for d in a.shape[1:])}) x {a.keys} keys"
            + (" + bias" if a.bias else "")
            + (" + mask" if a.mask else "")
            for a in found
        )
        notes = f"{len(found)} attentions fused: {shapes}"
    else:
        notes = "nothing to fuse: no explicit attention"
    context.stages.append(report.Stage.from_model(f["stage"], context.apply_fn, context.params, notes=notes))
    return context


KIND = StepKind(
    "fuse",
    FIELDS,
    run,
    doc="fuse explicit attention (softmax(q k^T) v) into one jax.nn.dot_product_attention / ONNX Attention op",
)
