"""Rebuilding smaller models: physically remove what structured masks zeroed (smaller kernels, configs, a faster model).

:func:`shrink` slices every group that a mask removed out of the variables:
a neuron's kernel column and bias entry and the matching row of the next
layer's kernel; a conv channel's kernel slice, bias, batch-norm scale, bias
and statistics and the next conv's input channel (or, after the last stage,
the first dense layer's rows of the flattened ``(H, W, C)`` features); an
attention head's query, key and value columns and biases and its rows of
``out``. Because a removed group outputs exactly ``0`` in the masked model,
the shrunk model computes the same function (eval mode).

Any model shrinks through :func:`hamjax.prune.shrink_groups` (its channel
groups, found in the jaxpr); this reference-model path stays because it
rebuilds a real NNX module of a smaller config, which later steps can prune
or distill again by config (a student of fewer layers), and which trains and
exports without re-evaluating a jaxpr.

MLP and CNN configs already hold one width per layer, so their shrunk config
is an :class:`~hamjax.models.MLPConfig` or :class:`~hamjax.models.CNNConfig`.
ViT and HAMNet configs hold one ``num_heads`` and ``mlp_ratio`` for all
layers, so a shrunk one is a :class:`~hamjax.prune.ShrunkConfig`: the
residual width ``hidden_size`` and ``head_dim`` stay, and each layer keeps
its own head count and MLP widths. :func:`build_shrunk` builds it as the
reference NNX module with narrower submodules swapped in (the attention's
inner width ``heads * head_dim`` may differ from ``hidden_size``), so the
shrunk model trains, fine-tunes with dropout and exports like the original,
and no model config needed new fields.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from hamjax._base import functional
from hamjax.models import CNN, MLP, CNNConfig, HAMNet, HAMNetConfig, MLPConfig, ViT, ViTConfig
from hamjax.models.vit import FeedForward, SelfAttention
from hamjax.prune.groups import (
    Group,
    ShrunkConfig,
    as_variables,
    check_shapes,
    flatten_paths,
    model_groups,
    path_str,
    unit_view,
    widths_of,
    with_widths,
)


class NarrowSelfAttention(SelfAttention):
    """:class:`~hamjax.models.vit.SelfAttention` whose inner width ``num_heads * head_dim`` may differ from ``hidden_size``.

    ``query``, ``key`` and ``value`` are ``nnx.Linear(hidden_size, num_heads
    * head_dim)`` and ``out`` is ``nnx.Linear(num_heads * head_dim,
    hidden_size)``; the forward pass is inherited unchanged.

    Args:
      hidden_size: model (residual) width.
      num_heads: number of heads.
      head_dim: width of one head.
      rngs: ``nnx.Rngs``.
      tap: the name of the attention probabilities.

    Examples:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from hamjax.prune import NarrowSelfAttention
      >>> NarrowSelfAttention(8, 1, 4, rngs=nnx.Rngs(0))(jnp.ones((3, 5, 8))).shape
      (3, 5, 8)
    """

    def __init__(self, hidden_size: int, num_heads: int, head_dim: int, *, rngs: nnx.Rngs, tap: str = "attention"):
        inner = num_heads * head_dim
        self.num_heads = num_heads
        self.tap = tap
        self.query = nnx.Linear(hidden_size, inner, rngs=rngs)
        self.key = nnx.Linear(hidden_size, inner, rngs=rngs)
        self.value = nnx.Linear(hidden_size, inner, rngs=rngs)
        self.out = nnx.Linear(inner, hidden_size, rngs=rngs)


def build_shrunk(config, *, seed: int = 0) -> nnx.Module:
    """Build the (freshly initialized) NNX module that a shrunk config describes.

    Args:
      config: an :class:`~hamjax.models.MLPConfig`,
        :class:`~hamjax.models.CNNConfig`, :class:`~hamjax.models.ViTConfig`,
        :class:`~hamjax.models.HAMNetConfig` or :class:`ShrunkConfig`.
      seed: seed of the ``nnx.Rngs`` for initialization and dropout.

    Returns:
      The module; for a :class:`ShrunkConfig`, the base ViT or HAMNet with
      each layer's ``attn`` (a :class:`NarrowSelfAttention`), ``mlp`` and
      ``token_mlp`` built at that layer's widths.

    Raises:
      TypeError: for any other config.

    Examples:
      >>> import jax.numpy as jnp
      >>> from hamjax.models import ViTConfig
      >>> from hamjax.prune import ShrunkConfig, build_shrunk
      >>> base = ViTConfig(input_shape=(8, 8, 1), patch_size=4, hidden_size=16, num_layers=2)
      >>> model = build_shrunk(ShrunkConfig(base, heads=(1, 3), mlp_hidden=(8, 5), token_hidden=(0, 0)))
      >>> model.blocks[0].attn.query.kernel.shape, model(jnp.ones((2, 8, 8, 1))).shape
      ((16, 4), (2, 10))
    """
    rngs = nnx.Rngs(seed)
    for config_cls, cls in ((MLPConfig, MLP), (CNNConfig, CNN), (ViTConfig, ViT), (HAMNetConfig, HAMNet)):
        if isinstance(config, config_cls):
            return cls(config, rngs=rngs)
    if not isinstance(config, ShrunkConfig):
        raise TypeError(
            f"build_shrunk: expected an MLPConfig, CNNConfig, ViTConfig, HAMNetConfig or ShrunkConfig, "
            f"got {type(config).__name__}"
        )
    base = config.base
    model = (ViT if isinstance(base, ViTConfig) else HAMNet)(base, rngs=rngs)
    d, rate = base.hidden_size, base.dropout_rate
    layers = model.blocks if isinstance(base, ViTConfig) else model.layers
    widths = zip(layers, config.heads, config.mlp_hidden, config.token_hidden, strict=True)
    for layer, heads, mlp_hidden, token_hidden in widths:
        if heads:
            layer.attn = NarrowSelfAttention(d, heads, d // base.num_heads, rngs=rngs, tap=layer.attn.tap)
        else:
            layer.token_mlp = FeedForward(base.num_tokens, token_hidden, rate, rngs=rngs)
        layer.mlp = FeedForward(d, mlp_hidden, rate, rngs=rngs)
    return model


def _mask_table(flat: dict, masks) -> dict:
    """``{path: bool ndarray or None}`` over the paths of ``flat``; masks may cover only ``"params"``."""
    flat_masks, _ = flatten_paths(masks)
    if set(flat_masks) != set(flat):
        prefixed = {("params", *p): m for p, m in flat_masks.items()}
        if set(prefixed) != {p for p in flat if p[0] == "params"}:
            missing = sorted(path_str(p) for p in set(flat) - set(flat_masks))[:3]
            extra = sorted(path_str(p) for p in set(flat_masks) - set(flat))[:3]
            raise ValueError(
                f"shrink: masks do not mirror variables (or their params): missing {missing}, unexpected {extra}"
            )
        flat_masks = prefixed
    table = dict.fromkeys(flat)
    for path, m in flat_masks.items():
        if m is None:
            continue
        if isinstance(m, jax.core.Tracer):
            raise ValueError(
                f"shrink: masks[{path_str(path)}] is traced; shrink changes shapes and needs concrete masks"
            )
        m = np.asarray(m).astype(bool)
        if m.shape != np.shape(flat[path]):
            raise ValueError(
                f"shrink: masks[{path_str(path)}] has shape {m.shape}, expected {np.shape(flat[path])} like the leaf"
            )
        table[path] = m
    return table


def _kept_units(group: Group, table: dict) -> np.ndarray:
    """``(G,)`` bool: which units the masks keep; raises unless each unit is kept or removed whole."""
    kept, first = None, None
    for s in group.masked:
        m = table[s.path]
        if m is None:
            slot_kept = np.ones(group.size, bool)
        else:
            units = unit_view(m, s, group.size, xp=np)
            slot_kept = units.all(axis=1)
            partial = np.flatnonzero(units.any(axis=1) & ~slot_kept)
            if partial.size:
                raise ValueError(
                    f"shrink: masks[{path_str(s.path)}] keeps only part of unit(s) {partial[:5].tolist()} of "
                    f"{group.name}; structured masks must remove whole {group.granularity}"
                )
        if kept is None:
            kept, first = slot_kept, s.path
        elif not np.array_equal(kept, slot_kept):
            raise ValueError(
                f"shrink: {group.name} is not masked as whole {group.granularity}: masks[{path_str(first)}] removes "
                f"{np.flatnonzero(~kept).tolist()[:8]} but masks[{path_str(s.path)}] removes "
                f"{np.flatnonzero(~slot_kept).tolist()[:8]}"
            )
    return kept


def shrink(config, variables, masks):
    """Slice the groups that ``masks`` removed out of a reference model.

    Args:
      config: the model's config, or a :class:`ShrunkConfig` (shrinking twice works).
      variables: the model's variables from :func:`hamjax.functional` (or
        only ``"params"`` for a model without batch norm).
      masks: a mask tree over ``variables`` (or over its ``"params"``), such
        as :func:`~hamjax.prune.structured_masks` gives, or several of
        them combined with ``&``. Every mask must remove whole groups.

    Returns:
      ``(new_config, new_variables)``: the config with the new per-layer
      widths (see the module docstring; unchanged widths give ``config``
      back) and variables of the same structure and dtypes with smaller
      leaves. ``build_shrunk(new_config)`` loads them through
      :func:`hamjax.functional`; its eval-mode outputs equal the masked
      model's.

    Raises:
      ValueError: if the masks do not mirror ``variables``, mask a group
        only in part, mask leaves that are no group's, are traced, or remove
        every unit of a layer; or if ``variables`` do not match ``config``.

    Examples:
      >>> import hamjax
      >>> from hamjax.models import build, config_of
      >>> from hamjax.prune import shrink, structured_masks
      >>> model = build("mlp", input_shape=(8, 8, 1))
      >>> _, variables = hamjax.functional(model)
      >>> masks = structured_masks(config_of(model), variables, 0.5, granularity="neurons")
      >>> new_config, new_variables = shrink(config_of(model), variables, masks)
      >>> new_config.sizes, new_variables["params"]["layers"][1]["kernel"].shape
      ((64, 256, 256, 10), (256, 256))
    """
    tree, unwrap = as_variables(variables)
    flat, treedef = flatten_paths(tree)
    groups = model_groups(config)
    check_shapes(config, groups, flat)
    table = _mask_table(flat, masks)
    group_leaves = {s.path for g in groups for s in g.masked}
    for path, m in table.items():
        if m is not None and path not in group_leaves and not m.all():
            raise ValueError(
                f"shrink: masks[{path_str(path)}] zeroes entries of a leaf that holds no removable group; "
                "expected None (or all True) there"
            )
    widths = {k: list(v) for k, v in widths_of(config).items()}
    new = dict(flat)
    for g in groups:
        kept = _kept_units(g, table)
        n = int(kept.sum())
        if n == 0:
            raise ValueError(
                f"shrink: masks remove all {g.size} {g.granularity} of {g.name}; expected at least one kept"
            )
        widths[g.field[0]][g.field[1]] = n
        if n == g.size:
            continue
        for s in g.masked + g.dependent:
            index = np.flatnonzero(np.tile(np.repeat(kept, s.repeat), s.tile))
            new[s.path] = jnp.take(jnp.asarray(new[s.path]), index, axis=s.axis)
    return with_widths(config, widths), unwrap(jax.tree_util.tree_unflatten(treedef, list(new.values())))


def shrunk_model(config, variables, masks, *, seed: int = 0):
    """The smaller dense model that :func:`shrink` describes, as a pure ``(apply_fn, variables)`` pair.

    Args:
      config: the model's config (or a :class:`ShrunkConfig`).
      variables: its variables from :func:`hamjax.functional`.
      masks: structured masks over ``variables`` (see :func:`shrink`).
      seed: seed of the module's dropout stream.

    Returns:
      ``(apply_fn, new_variables)`` as :func:`hamjax.functional` gives them
      for :func:`build_shrunk` of the new config: jit-able, and speaking the
      training protocol (``train=``, ``rng=``, ``mutable=``) for fine-tuning.

    Raises:
      ValueError: as :func:`shrink`.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> import hamjax
      >>> from hamjax.models import build, config_of
      >>> from hamjax.prune import shrunk_model, structured_masks
      >>> model = build("cnn", input_shape=(8, 8, 1))
      >>> _, variables = hamjax.functional(model)
      >>> masks = structured_masks(config_of(model), variables, 0.5, granularity="channels")
      >>> apply_fn, small = shrunk_model(config_of(model), variables, masks)
      >>> jax.jit(apply_fn)(small, jnp.ones((2, 8, 8, 1))).shape
      (2, 10)
    """
    new_config, new_variables = shrink(config, variables, masks)
    new_variables, _ = as_variables(new_variables)
    # Build the module abstractly and load the shrunk values: random init would only be thrown away,
    # and compiling the initializers for every new shape dominates the cost on CPU.
    abstract = nnx.eval_shape(lambda: build_shrunk(new_config, seed=seed))
    graphdef, params, stats, rest = nnx.split(abstract, nnx.Param, nnx.BatchStat, ...)
    loaded = {"params": params, "batch_stats": stats}
    expected = {c: jax.tree.map(lambda a: tuple(a.shape), nnx.to_pure_dict(st)) for c, st in loaded.items() if st}
    got = {c: jax.tree.map(np.shape, new_variables[c]) for c in new_variables}
    if got != expected:
        raise ValueError(
            f"shrunk_model: the shrunk variables do not fit {type(new_config).__name__}; expected the "
            f"collections {sorted(expected)} of the model's variables, got {sorted(new_variables)}"
        )
    for collection, state in loaded.items():
        if state:
            nnx.replace_by_pure_dict(state, new_variables[collection])
    rest = jax.tree.map(lambda a: _fresh(a, seed), rest)
    apply_fn, _ = functional(nnx.merge(graphdef, params, stats, rest))
    return apply_fn, new_variables


def _fresh(leaf, seed: int):
    """A concrete value for an abstract RNG-state leaf: the dropout key from ``seed``, counters at 0."""
    if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
        return jax.random.split(jax.random.key(seed), leaf.shape) if leaf.shape else jax.random.key(seed)
    return jnp.zeros(leaf.shape, leaf.dtype)
