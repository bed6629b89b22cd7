"""Structured pruning: masks that remove whole neurons, conv channels and attention heads.

The units of :func:`structured_masks` are the reference models'
:class:`~hamjax.prune.groups.Group` s of :mod:`hamjax.prune.groups` (kept
beside the general channel groups because they prune one kind of unit at a
time, neurons, channels or heads, and pair with :func:`hamjax.prune.shrink`'s
rebuilt modules);
:func:`neuron_masks` works on any model through its channel groups
(:func:`hamjax.prune.channel_groups`, found by use in the jaxpr). A mask
zeroes every leaf entry a group needs to output exactly ``0``; since
``relu``, ``gelu``, ``tanh`` and ``silu`` map ``0`` to ``0`` and a head with
``q = k = v = 0`` attends uniformly over zero values, nothing downstream
needs masking, and :func:`hamjax.prune.shrink` can then slice the groups
away exactly.

Mask trees mirror the tree they were computed from: a ``bool`` array of the
leaf's shape, or ``None`` for leaves left alone. Apply them with
:func:`hamjax.prune.apply_masks`.

Within a layer of ``G`` groups, exactly ``min(floor(s * G), G - 1)`` groups
with the lowest score (the L1 or L2 norm of the group's weights) are dropped
(:func:`hamjax.prune.ranking.keep_top`): ties break by index and the count
is exact even when the sparsity ``s`` is a traced array (one ``jax.vmap``
call prunes at many sparsities).

References:
  Li et al., "Pruning Filters for Efficient ConvNets", ICLR 2017.
  Michel et al., "Are Sixteen Heads Really Better than One?", NeurIPS 2019.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from hamjax._base import Transform
from hamjax._checks import check_choice, check_fraction, check_int
from hamjax.prune.dependency import channel_groups
from hamjax.prune.group_masks import group_masks
from hamjax.prune.groups import (
    GRANULARITIES,
    Group,
    ShrunkConfig,
    Slot,
    as_variables,
    check_shapes,
    flatten_paths,
    model_groups,
    unit_view,
    widths_of,
)
from hamjax.prune.masks import apply_masks
from hamjax.prune.ranking import keep_top

NORMS = ("l1", "l2")
"""The ``norm=`` values that score a group: the L1 or L2 norm of its weights."""


def _select(where: str, config, granularity: str) -> list[Group]:
    """The groups of ``granularity``; raises for a granularity the model does not have."""
    base = config.base if isinstance(config, ShrunkConfig) else config
    valid = next((names for cls, names in GRANULARITIES.items() if isinstance(base, cls)), None)
    if valid is None:
        widths_of(config)  # raises the TypeError naming the expected configs
    if granularity not in valid:
        raise ValueError(
            f"{where}: granularity must be one of {valid} for a {type(base).__name__} model, got {granularity!r}"
        )
    return [g for g in model_groups(config) if g.granularity == granularity]


def _scores(group: Group, flat: dict, norm: str) -> jax.Array:
    total = jnp.zeros((group.size,), jnp.float32)
    for s in group.scored:
        u = unit_view(jnp.asarray(flat[s.path], jnp.float32), s, group.size, xp=jnp)
        total = total + (jnp.abs(u).sum(axis=1) if norm == "l1" else jnp.square(u).sum(axis=1))
    return total if norm == "l1" else jnp.sqrt(total)


def _slot_mask(keep: jax.Array, slot: Slot, shape: tuple) -> jax.Array:
    line = jnp.tile(jnp.repeat(keep, slot.repeat), slot.tile)
    return jnp.broadcast_to(line.reshape([-1 if d == slot.axis else 1 for d in range(len(shape))]), shape)


def _group_masks(tree, groups, sparsity, norm: str):
    flat, treedef = flatten_paths(tree)
    paths = tuple(dict.fromkeys(s.path for g in groups for s in g.masked + g.scored))
    computed = _masks_of(tuple(flat[p] for p in paths), sparsity, groups=tuple(groups), paths=paths, norm=norm)
    masks = {**dict.fromkeys(flat), **computed}
    return jax.tree_util.tree_unflatten(treedef, [masks[p] for p in flat])


@functools.partial(jax.jit, static_argnames=("groups", "paths", "norm"))
def _masks_of(leaves, sparsity, *, groups, paths, norm):
    # One compiled call instead of dozens of eager ops; nests inside a caller's jit or vmap.
    flat = dict(zip(paths, leaves, strict=True))
    masks = {}
    for g in groups:
        keep = keep_top(_scores(g, flat, norm), sparsity, min_kept=1)
        for s in g.masked:
            m = _slot_mask(keep, s, np.shape(flat[s.path]))
            masks[s.path] = m & masks[s.path] if s.path in masks else m
    return masks


def neuron_masks(params, sparsity, *, norm: str = "l2", apply_fn=None, x=None, multiple: int = 1):
    """Masks that remove the lowest-norm neurons and channels of any model, found by use in its jaxpr.

    The units are the prunable :func:`~hamjax.prune.channel_groups` of
    ``apply_fn``: each output neuron of a dense layer or output channel of
    a convolution together with every slice that must go with it (the bias
    added to it, the following norm's scale, bias and running statistics,
    the matching input rows of every consumer, channels coupled by residual
    additions), whatever the leaves are named. The model's output channels
    are never pruned. :func:`~hamjax.prune.group_masks` scores each channel
    by the summed norms of its slices and masks the lowest
    ``floor(s * size)`` of every group (at least one kept). The params
    alone do not say which leaf is a bias, which layer is the classifier or
    which axis is a convolution's channel, so ``apply_fn`` and ``x`` are
    required. For the reference models' head and neuron groups, see
    :func:`structured_masks`.

    Args:
      params: the model's params (variables for an :class:`hamjax.ApplyFn`).
      sparsity: fraction of channels removed per group, in ``[0, 1)``; a
        float or a (possibly traced) scalar array.
      norm: ``"l1"`` or ``"l2"``.
      apply_fn: the model's apply function (NNX, Linen or plain jnp).
      x: an example input (only its shape and dtype matter).
      multiple: round each group's kept count up to a multiple of this where
        the group is large enough.

    Returns:
      A mask tree shaped like ``params``: ``bool`` arrays at the leaves of
      prunable groups, ``None`` elsewhere.

    Raises:
      ValueError: without ``apply_fn`` and ``x``, for a concrete sparsity
        outside ``[0, 1)``, an unknown norm, or a model with no prunable
        channel group (the reasons named).

    Examples:
      >>> import jax.numpy as jnp
      >>> from hamjax.prune import neuron_masks
      >>> params = [(jnp.arange(8.0).reshape(2, 4), jnp.ones(4)), (jnp.ones((4, 3)), jnp.zeros(3))]
      >>> def f(p, x):
      ...     (w0, b0), (w1, b1) = p
      ...     return jnp.maximum(x @ w0 + b0[None], 0.0) @ w1 + b1[None]
      >>> masks = neuron_masks(params, 0.5, apply_fn=f, x=jnp.ones((1, 2)))
      >>> masks[0][1].tolist(), masks[1][0][:, 0].tolist(), masks[1][1] is None
      ([False, False, True, True], [False, False, True, True], True)
    """
    check_choice("neuron_masks", "norm", norm, NORMS)
    check_fraction("neuron_masks", "sparsity", sparsity)
    multiple = check_int("neuron_masks", "multiple", multiple, minimum=1)
    if apply_fn is None or x is None:
        raise ValueError(
            "neuron_masks: apply_fn and x are needed: biases, norms, consumers and the output layer are found by "
            "use in the model's jaxpr (prune.channel_groups); guessing them from params names gave wrong masks"
        )
    groups = channel_groups(apply_fn, params, x)
    if not any(g.prunable for g in groups):
        reasons = sorted({g.reason for g in groups})
        raise ValueError(f"neuron_masks: apply_fn has no prunable channel group; reasons: {reasons}")
    return group_masks(params, groups, sparsity, method=norm, multiple=multiple)


def structured_masks(config, variables, sparsity, *, granularity: str, norm: str = "l2"):
    """Masks that remove whole neurons, channels or heads of a reference model.

    Per layer, ``min(floor(s * G), G - 1)`` of its ``G`` groups with the
    lowest norm are masked:

    * ``"neurons"``: hidden units of the MLP, of the CNN's dense layers, of
      each ViT/HAMNet block's MLP (``mlp/fc1`` columns and bias) and of each
      HAMNet token MLP; score ``||fc1[:, j]||``.
    * ``"channels"`` (CNN): per conv stage, the kernel's output channel, the
      conv bias and the batch-norm scale and bias; score the kernel slice.
    * ``"heads"`` (ViT, HAMNet): per attention layer, the head's query, key
      and value columns and biases; score the norm of its query, key, value
      columns and ``out`` rows together.

    Args:
      config: the model's config (:func:`hamjax.models.config_of`) or a
        :class:`ShrunkConfig`.
      variables: its variables from :func:`hamjax.functional`, or only their
        ``"params"`` collection; the masks mirror what is passed.
      sparsity: fraction of groups to drop per layer, in ``[0, 1)``; a float
        or a (possibly traced) scalar array.
      granularity: ``"neurons"`` (every model), ``"channels"`` (CNN) or
        ``"heads"`` (ViT, HAMNet); see ``GRANULARITIES``.
      norm: ``"l1"`` or ``"l2"``.

    Returns:
      A mask tree shaped like ``variables``: ``bool`` arrays on the group
      leaves, ``None`` elsewhere.

    Raises:
      ValueError: for an invalid granularity, norm or concrete sparsity, or
        variables that do not match ``config``.
      TypeError: if ``config`` is not a reference model config.

    Examples:
      >>> import hamjax
      >>> from hamjax.models import build, config_of
      >>> from hamjax.prune import structured_masks
      >>> model = build("vit", input_shape=(8, 8, 1), hidden_size=16)
      >>> _, variables = hamjax.functional(model)
      >>> masks = structured_masks(config_of(model), variables, 0.5, granularity="heads")
      >>> int(masks["params"]["blocks"][0]["attn"]["query"]["bias"].sum())  # 2 of 4 heads of 4 dims
      8
    """
    groups = _select("structured_masks", config, granularity)
    check_choice("structured_masks", "norm", norm, NORMS)
    check_fraction("structured_masks", "sparsity", sparsity)
    tree, unwrap = as_variables(variables)
    check_shapes(config, groups, flatten_paths(tree)[0])
    return unwrap(_group_masks(tree, groups, sparsity, norm))


class StructuredPruneState(NamedTuple):
    """State of :func:`structured_prune`: the mask tree, fixed at ``init``."""

    masks: Any


def structured_prune(config, sparsity, *, granularity: str, norm: str = "l2") -> Transform:
    """One-shot structured pruning of a reference model as a :class:`~hamjax.Transform`.

    ``init`` computes :func:`structured_masks` from the params it is given;
    every ``apply`` applies them (:func:`hamjax.prune.apply_masks`), so pruned groups stay zero
    through fine-tuning. ``sparsity`` may be a traced array: ``jax.vmap``
    over it prunes a population at many sparsities in one call.

    Args:
      config: the model's config or a :class:`ShrunkConfig`.
      sparsity: fraction of groups to drop per layer, in ``[0, 1)``.
      granularity: ``"neurons"``, ``"channels"`` or ``"heads"`` (see :func:`structured_masks`).
      norm: ``"l1"`` or ``"l2"``.

    Returns:
      A :class:`~hamjax.Transform` over the model's variables (or their
      ``"params"``) whose state is a :class:`StructuredPruneState`.

    Raises:
      ValueError: for an invalid granularity, norm or concrete sparsity.

    Examples:
      >>> import hamjax
      >>> from hamjax.models import build, config_of
      >>> from hamjax.prune import structured_prune
      >>> model = build("mlp", input_shape=(8, 8, 1))
      >>> _, variables = hamjax.functional(model)
      >>> t = structured_prune(config_of(model), 0.25, granularity="neurons")
      >>> pruned, state = t.apply(variables, t.init(variables))
      >>> int((pruned["params"]["layers"][0]["kernel"] != 0).any(axis=0).sum())  # 512 - floor(0.25 * 512)
      384
    """
    _select("structured_prune", config, granularity)
    check_choice("structured_prune", "norm", norm, NORMS)
    check_fraction("structured_prune", "sparsity", sparsity)

    def init(params):
        return StructuredPruneState(structured_masks(config, params, sparsity, granularity=granularity, norm=norm))

    def apply(params, state, **extra):
        del extra
        return apply_masks(params, state.masks), state

    return Transform(init, apply)
