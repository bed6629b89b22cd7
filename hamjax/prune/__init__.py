"""Pruning: remove weights (unstructured, N:M, blocks) or whole neurons, channels and heads.

Modules, bottom to top:

* :mod:`~hamjax.prune.ranking`: scores to exact-count masks, shared by all.
* :mod:`~hamjax.prune.masks`: unstructured ``*_masks`` functions,
  :func:`apply_masks`, :func:`check_masks`, :func:`sparsity_of`.
* :mod:`~hamjax.prune.patterns`: :func:`nm_masks` and :func:`block_masks`.
* :mod:`~hamjax.prune.transforms`: ``*_prune`` :class:`~hamjax.Transform`
  factories and their states.
* :mod:`~hamjax.prune.schedules`: sparsity schedules.
* :mod:`~hamjax.prune.masked`: :func:`masked_optimizer`, the optax adapter.
* :mod:`~hamjax.prune.groups`, :mod:`~hamjax.prune.structured`,
  :mod:`~hamjax.prune.rebuild`: structured pruning of the reference models
  and the physical shrink to a smaller dense model.
* :mod:`~hamjax.prune.dependency`, :mod:`~hamjax.prune.group_scores`,
  :mod:`~hamjax.prune.group_masks`: channel groups of any model, found in its
  jaxpr, their importance, and the channels kept and masks that remove whole groups.
* :mod:`~hamjax.prune.iterative`: prune -> finetune cycles (runs
  :func:`hamjax.train.fit`).

A *mask tree* has the structure of ``params``: a bool array (``True`` keeps
the weight) at each pruned leaf, ``None`` elsewhere.
"""

from hamjax._select import default_filter, selected
from hamjax.prune.dependency import ChannelGroup, Member, channel_groups, member_channels
from hamjax.prune.group_masks import group_channels, group_masks
from hamjax.prune.group_scores import IMPORTANCE_METHODS, group_importance
from hamjax.prune.groups import GRANULARITIES, ShrunkConfig
from hamjax.prune.iterative import METHODS, iterative_prune
from hamjax.prune.masked import SCHEDULED_METHODS, MaskedState, masked_optimizer
from hamjax.prune.masks import (
    apply_masks,
    check_masks,
    layer_sparsities,
    magnitude_masks,
    random_masks,
    saliency_masks,
    sparsity_of,
)
from hamjax.prune.patterns import BLOCK_SCORES, INCOMPATIBLE, block_masks, nm_masks
from hamjax.prune.ranking import SCOPES
from hamjax.prune.rebuild import NarrowSelfAttention, build_shrunk, shrink, shrunk_model
from hamjax.prune.schedules import constant_schedule, polynomial_schedule
from hamjax.prune.shrink_any import shrink_groups
from hamjax.prune.structured import NORMS, StructuredPruneState, neuron_masks, structured_masks, structured_prune
from hamjax.prune.student import INITS, make_student
from hamjax.prune.transforms import (
    MovementState,
    PruneState,
    block_prune,
    global_magnitude_prune,
    magnitude_prune,
    movement_prune,
    nm_prune,
    random_prune,
    saliency_prune,
)

__all__ = [
    "BLOCK_SCORES",
    "GRANULARITIES",
    "IMPORTANCE_METHODS",
    "INCOMPATIBLE",
    "INITS",
    "METHODS",
    "NORMS",
    "SCHEDULED_METHODS",
    "SCOPES",
    "ChannelGroup",
    "MaskedState",
    "Member",
    "MovementState",
    "NarrowSelfAttention",
    "PruneState",
    "ShrunkConfig",
    "StructuredPruneState",
    "apply_masks",
    "block_masks",
    "block_prune",
    "build_shrunk",
    "channel_groups",
    "check_masks",
    "constant_schedule",
    "default_filter",
    "global_magnitude_prune",
    "group_channels",
    "group_importance",
    "group_masks",
    "iterative_prune",
    "layer_sparsities",
    "magnitude_masks",
    "magnitude_prune",
    "make_student",
    "masked_optimizer",
    "member_channels",
    "movement_prune",
    "neuron_masks",
    "nm_masks",
    "nm_prune",
    "polynomial_schedule",
    "random_masks",
    "random_prune",
    "saliency_masks",
    "saliency_prune",
    "selected",
    "shrink",
    "shrink_groups",
    "shrunk_model",
    "sparsity_of",
    "structured_masks",
    "structured_prune",
]
