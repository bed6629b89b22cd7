"""The built-in recipe step kinds, one module each, collected in :data:`BUILTIN`.

* ``train``: :mod:`hamjax.recipes.steps.training` (:mod:`hamjax.train`);
* ``prune``: :mod:`hamjax.recipes.steps.pruning` (:mod:`hamjax.prune`);
* ``distill``: :mod:`hamjax.recipes.steps.distillation` (:mod:`hamjax.distill`);
* ``lowrank``: :mod:`hamjax.recipes.steps.lowrank` (:func:`hamjax.graph.lowrank`);
* ``fold``: :mod:`hamjax.recipes.steps.fold` (:func:`hamjax.graph.fold`);
* ``fuse``: :mod:`hamjax.recipes.steps.fuse` (:func:`hamjax.graph.fuse_attention`);
* ``merge``: :mod:`hamjax.recipes.steps.merge` (:func:`hamjax.graph.merge_tokens`);
* ``quantize``: :mod:`hamjax.recipes.steps.quantization` (:mod:`hamjax.quant`);
* ``precision``: :mod:`hamjax.recipes.steps.mixed_precision` (:mod:`hamjax.precision`);
* ``export``: :mod:`hamjax.recipes.steps.onnx_export` (:mod:`hamjax.export`).

Each module exposes ``KIND``, a :class:`hamjax.recipes.StepKind`. A new
built-in kind is a module here and one entry in :data:`BUILTIN`; imports
point one way (registry -> steps -> schema and the families), so nothing
registers itself on import.

Examples:
  >>> from hamjax.recipes.steps import BUILTIN
  >>> sorted(BUILTIN)
  ['distill', 'export', 'fold', 'fuse', 'lowrank', 'merge', 'precision', 'prune', 'quantize', 'train']
"""

from hamjax.recipes.schema import StepKind
from hamjax.recipes.steps import (
    distillation,
    fold,
    fuse,
    lowrank,
    merge,
    mixed_precision,
    onnx_export,
    pruning,
    quantization,
    training,
)

__all__ = ["BUILTIN"]

BUILTIN: dict[str, StepKind] = {
    kind.name: kind
    for kind in (
        training.KIND,
        pruning.KIND,
        distillation.KIND,
        lowrank.KIND,
        fold.KIND,
        fuse.KIND,
        merge.KIND,
        quantization.KIND,
        mixed_precision.KIND,
        onnx_export.KIND,
    )
}
"""The built-in step kinds by name, in the order a recipe usually runs them."""
