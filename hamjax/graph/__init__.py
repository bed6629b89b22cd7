"""Graph transforms on any model of the contract, through its jaxpr.

Each transform takes ``(apply_fn, params)`` and returns a new pair (or
transforms the params), works on Flax NNX, Linen and plain ``jax.numpy``
models, composes with pruning, quantization and distillation, and exports
to ONNX.
"""

from hamjax.graph.attention import FoundAttention, find_attention, fuse_attention
from hamjax.graph.fold import FoldedSite, fold, foldable
from hamjax.graph.fused import fused_attention
from hamjax.graph.lowrank import SCOPES, Factors, lowrank, lowrank_apply, svd_factors
from hamjax.graph.matching import Matching, bipartite_matching, merged_positions, weighted_merge
from hamjax.graph.remat import REMAT_POLICIES, rematerialize
from hamjax.graph.tome import MARKS, MergePlan, merge_plan, merge_tokens

__all__ = [
    "MARKS",
    "REMAT_POLICIES",
    "SCOPES",
    "Factors",
    "FoldedSite",
    "FoundAttention",
    "Matching",
    "MergePlan",
    "bipartite_matching",
    "find_attention",
    "fold",
    "foldable",
    "fuse_attention",
    "fused_attention",
    "lowrank",
    "lowrank_apply",
    "merge_plan",
    "merge_tokens",
    "merged_positions",
    "rematerialize",
    "svd_factors",
    "weighted_merge",
]
