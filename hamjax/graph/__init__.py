"""Graph transforms on any model of the contract, through its jaxpr.

Each transform takes ``(apply_fn, params)`` and returns a new pair (or
transforms the params), works on Flax NNX, Linen and plain ``jax.numpy``
models, composes with pruning, quantization and distillation, and exports
to ONNX.
"""

from hamjax.graph.fold import FoldedSite, fold, foldable
from hamjax.graph.lowrank import SCOPES, Factors, lowrank, lowrank_apply, svd_factors

__all__ = [
    "SCOPES",
    "Factors",
    "FoldedSite",
    "fold",
    "foldable",
    "lowrank",
    "lowrank_apply",
    "svd_factors",
]
