"""Structured pruning: masks that remove whole neurons, conv channels and attention heads.

A *group* is one removable unit of a layer: a hidden neuron (a kernel column
and its bias entry), a conv channel (an output-channel slice of the kernel,
its bias, and the batch-norm scale and bias that follow it: a channel whose
kernel is zero still outputs ``beta``), or an attention head (its ``head_dim``
columns of the query, key and value kernels and biases). A mask zeroes every
leaf entry a group needs to output exactly ``0``; since ``relu``, ``gelu``,
``tanh`` and ``silu`` map ``0`` to ``0`` and a head with ``q = k = v = 0``
attends uniformly over zero values, nothing downstream needs masking, and
:func:`hamjax.shrink.shrink` can then slice the groups away exactly.

Mask trees mirror the tree they were computed from: a ``bool`` array of the
leaf's shape, or ``None`` for leaves left alone. Apply them with::

    jax.tree.map(lambda m, p: p if m is None else p * m.astype(p.dtype), masks, params,
                 is_leaf=lambda x: x is None)

Within a layer of ``G`` groups, exactly ``min(floor(s * G), G - 1)`` groups
with the lowest score (the L1 or L2 norm of the group's weights) are dropped:
scores are ranked with a stable double ``argsort``, so ties break by index
and the count is exact even when the sparsity ``s`` is a traced array (one
``jax.vmap`` call prunes at many sparsities).

References:
  Li et al., "Pruning Filters for Efficient ConvNets", ICLR 2017.
  Michel et al., "Are Sixteen Heads Really Better than One?", NeurIPS 2019.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from hamjax._base import Transform
from hamjax.models import CNNConfig, HAMNetConfig, MLPConfig, ViTConfig

__all__ = ["ShrunkConfig", "StructuredPruneState", "neuron_masks", "structured_masks", "structured_prune"]

NORMS = ("l1", "l2")
KINDS = {
    MLPConfig: ("neurons",),
    CNNConfig: ("channels", "neurons"),
    ViTConfig: ("heads", "neurons"),
    HAMNetConfig: ("heads", "neurons"),
}


@dataclasses.dataclass(frozen=True)
class ShrunkConfig:
    """Per-layer widths of a shrunk :class:`~hamjax.models.ViT` or :class:`~hamjax.models.HAMNet`.

    Their configs hold one ``num_heads`` and ``mlp_ratio`` for all layers; a
    shrunk model keeps ``base.hidden_size`` (the residual width) and
    ``head_dim = base.hidden_size // base.num_heads`` but narrows each layer
    on its own. :func:`hamjax.shrink.build_shrunk` builds the module.

    Attributes:
      base: the :class:`~hamjax.models.ViTConfig` or
        :class:`~hamjax.models.HAMNetConfig` before shrinking.
      heads: attention heads per layer; ``0`` for a HAMNet mixer layer.
      mlp_hidden: channel-MLP inner width per layer.
      token_hidden: token-MLP inner width per layer; ``0`` for attention layers.

    Examples:
      >>> from hamjax.models import ViTConfig
      >>> from hamjax.structured import ShrunkConfig
      >>> ShrunkConfig(ViTConfig(num_layers=2), heads=(2, 4), mlp_hidden=(64, 128), token_hidden=(0, 0)).heads
      (2, 4)
    """

    base: ViTConfig | HAMNetConfig
    heads: tuple[int, ...]
    mlp_hidden: tuple[int, ...]
    token_hidden: tuple[int, ...]

    def __post_init__(self):
        if not isinstance(self.base, ViTConfig | HAMNetConfig):
            raise TypeError(f"ShrunkConfig.base: expected a ViTConfig or HAMNetConfig, got {type(self.base).__name__}")
        kinds = _layer_kinds(self.base)
        for name in ("heads", "mlp_hidden", "token_hidden"):
            value = tuple(int(v) for v in getattr(self, name))
            object.__setattr__(self, name, value)
            if len(value) != len(kinds):
                raise ValueError(f"ShrunkConfig.{name}={value!r}: expected {len(kinds)} entries, one per layer")
        for i, kind in enumerate(kinds):
            attention = kind == "attention"
            if not (0 < self.heads[i] <= self.base.num_heads if attention else self.heads[i] == 0):
                raise ValueError(f"ShrunkConfig.heads={self.heads!r}: layer {i} ({kind}) has {self.heads[i]} heads")
            if self.mlp_hidden[i] < 1 or (self.token_hidden[i] == 0) != attention or self.token_hidden[i] < 0:
                raise ValueError(
                    f"ShrunkConfig: layer {i} ({kind}) has mlp_hidden={self.mlp_hidden[i]}, "
                    f"token_hidden={self.token_hidden[i]}; expected positive widths (token_hidden 0 for attention)"
                )


def _layer_kinds(base) -> tuple[str, ...]:
    if isinstance(base, HAMNetConfig):
        return base.layer_kinds
    return ("attention",) * base.num_layers


def _widths(config) -> dict[str, tuple[int, ...]]:
    """The per-layer widths that structured pruning changes, by config field."""
    if isinstance(config, MLPConfig):
        return {"sizes": config.sizes}
    if isinstance(config, CNNConfig):
        return {"channels": config.channels, "dense": config.dense}
    if isinstance(config, ShrunkConfig):
        return {"heads": config.heads, "mlp_hidden": config.mlp_hidden, "token_hidden": config.token_hidden}
    if isinstance(config, ViTConfig | HAMNetConfig):
        kinds = _layer_kinds(config)
        mlp = max(1, round(config.hidden_size * config.mlp_ratio))
        token = max(1, round(config.num_tokens * config.mlp_ratio)) if isinstance(config, HAMNetConfig) else 0
        return {
            "heads": tuple(config.num_heads if k == "attention" else 0 for k in kinds),
            "mlp_hidden": (mlp,) * len(kinds),
            "token_hidden": tuple(0 if k == "attention" else token for k in kinds),
        }
    raise TypeError(
        f"config: expected an MLPConfig, CNNConfig, ViTConfig, HAMNetConfig or ShrunkConfig, got {type(config).__name__}"
    )


def _with_widths(config, widths: dict):
    """``config`` with new per-layer widths; a ViT/HAMNet at its base widths gives the base config back."""
    widths = {k: tuple(v) for k, v in widths.items()}
    if isinstance(config, MLPConfig | CNNConfig):
        return dataclasses.replace(config, **widths)
    base = config.base if isinstance(config, ShrunkConfig) else config
    return base if widths == _widths(base) else ShrunkConfig(base, **widths)


class _Slot(NamedTuple):
    """Where a group's units sit in one leaf: unit ``u`` owns the indices ``t * G * repeat + u * repeat + r``."""

    path: tuple
    axis: int
    repeat: int = 1  # consecutive indices per unit (head_dim for heads)
    tile: int = 1  # times the unit pattern repeats (H * W for channels flattened into a dense layer)


class _Group(NamedTuple):
    name: str
    kind: str
    field: tuple[str, int] | None  # the config width it sets
    size: int
    masked: tuple[_Slot, ...]  # zeroed by the mask: the unit then outputs exactly 0
    scored: tuple[_Slot, ...]
    dependent: tuple[_Slot, ...]  # only sliced away by shrink (the next layer's inputs, batch stats)


def _ffn_group(prefix: tuple, name: str, field, size: int) -> _Group:
    kernel = _Slot((*prefix, "fc1", "kernel"), 1)
    return _Group(
        name,
        "neurons",
        field,
        size,
        (kernel, _Slot((*prefix, "fc1", "bias"), 0)),
        (kernel,),
        (_Slot((*prefix, "fc2", "kernel"), 0),),
    )


def _model_groups(config) -> list[_Group]:
    """Every group of a reference model, in layer order."""
    widths = _widths(config)
    groups = []
    if isinstance(config, MLPConfig):
        sizes = widths["sizes"]
        for i in range(len(sizes) - 2):
            layer = ("params", "layers", i)
            kernel = _Slot((*layer, "kernel"), 1)
            masked = (kernel, _Slot((*layer, "bias"), 0))
            nxt = _Slot(("params", "layers", i + 1, "kernel"), 0)
            groups.append(_Group(f"layers/{i}", "neurons", ("sizes", i + 1), sizes[i + 1], masked, (kernel,), (nxt,)))
        return groups
    if isinstance(config, CNNConfig):
        channels, dense = widths["channels"], widths["dense"]
        h, w, _ = config.input_shape
        for _ in channels:
            h, w = h // 2, w // 2
        first_dense = ("params", "dense", 0, "kernel") if dense else ("params", "head", "kernel")
        for i, c in enumerate(channels):
            conv, norm, stats = ("params", "convs", i), ("params", "norms", i), ("batch_stats", "norms", i)
            kernel = _Slot((*conv, "kernel"), 3)
            masked = (kernel, _Slot((*conv, "bias"), 0), _Slot((*norm, "scale"), 0), _Slot((*norm, "bias"), 0))
            # x.reshape(N, -1) on NHWC puts feature (h * W + w) * C + c in the first dense row.
            nxt = (
                _Slot(("params", "convs", i + 1, "kernel"), 2)
                if i + 1 < len(channels)
                else _Slot(first_dense, 0, 1, h * w)
            )
            dependent = (_Slot((*stats, "mean"), 0), _Slot((*stats, "var"), 0), nxt)
            groups.append(_Group(f"convs/{i}", "channels", ("channels", i), c, masked, (kernel,), dependent))
        for j, n in enumerate(dense):
            layer = ("params", "dense", j)
            kernel = _Slot((*layer, "kernel"), 1)
            nxt = ("params", "dense", j + 1, "kernel") if j + 1 < len(dense) else ("params", "head", "kernel")
            masked = (kernel, _Slot((*layer, "bias"), 0))
            groups.append(_Group(f"dense/{j}", "neurons", ("dense", j), n, masked, (kernel,), (_Slot(nxt, 0),)))
        return groups
    base = config.base if isinstance(config, ShrunkConfig) else config
    head_dim = base.hidden_size // base.num_heads
    stack = "blocks" if isinstance(base, ViTConfig) else "layers"
    for i, kind in enumerate(_layer_kinds(base)):
        layer = ("params", stack, i)
        if kind == "attention":
            attn = (*layer, "attn")
            kernels = tuple(_Slot((*attn, p, "kernel"), 1, head_dim) for p in ("query", "key", "value"))
            biases = tuple(_Slot((*attn, p, "bias"), 0, head_dim) for p in ("query", "key", "value"))
            out = _Slot((*attn, "out", "kernel"), 0, head_dim)
            heads = widths["heads"][i]
            groups.append(
                _Group(f"{stack}/{i}/attn", "heads", ("heads", i), heads, kernels + biases, (*kernels, out), (out,))
            )
        else:
            token = widths["token_hidden"][i]
            groups.append(_ffn_group((*layer, "token_mlp"), f"{stack}/{i}/token_mlp", ("token_hidden", i), token))
        groups.append(_ffn_group((*layer, "mlp"), f"{stack}/{i}/mlp", ("mlp_hidden", i), widths["mlp_hidden"][i]))
    return groups


def _select(config, kind: str) -> list[_Group]:
    """The groups of ``kind``; raises for a kind the model does not have."""
    base = config.base if isinstance(config, ShrunkConfig) else config
    valid = next((kinds for cls, kinds in KINDS.items() if isinstance(base, cls)), None)
    if valid is None:
        _widths(config)  # raises the TypeError naming the expected configs
    if kind not in valid:
        raise ValueError(f"kind={kind!r} is not valid for a {type(base).__name__} model; expected one of {valid}")
    return [g for g in _model_groups(config) if g.kind == kind]


def _path_str(path: tuple) -> str:
    return "/".join(map(str, path))


def _key(entry) -> Any:
    for attr in ("key", "idx", "name"):
        if hasattr(entry, attr):
            return getattr(entry, attr)
    return entry


def _flatten(tree) -> tuple[dict, Any]:
    """``{path: leaf}`` in tree order (``None`` leaves kept) and the treedef that rebuilds the tree."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: x is None)
    return {tuple(_key(k) for k in path): leaf for path, leaf in leaves}, treedef


def _as_variables(tree) -> tuple[Any, Any]:
    """A ``{"params": ...}`` variables dict for ``tree``, and the function that maps results back."""
    if isinstance(tree, Mapping) and "params" in tree:
        return tree, lambda t: t
    return {"params": tree}, lambda t: t["params"]


def _check_shapes(config, groups, flat: dict) -> None:
    for g in groups:
        for s in g.masked + g.scored + g.dependent:
            if s.path not in flat or flat[s.path] is None:
                raise ValueError(
                    f"variables have no leaf {_path_str(s.path)}, which {g.name} of {type(config).__name__} needs; "
                    "expected the model's variables (or its params collection)"
                )
            shape = np.shape(flat[s.path])
            want = g.size * s.repeat * s.tile
            if len(shape) <= s.axis or shape[s.axis] != want:
                raise ValueError(
                    f"variables do not match the config: {_path_str(s.path)} has shape {shape}, "
                    f"expected {want} along axis {s.axis} for {g.size} units of {g.name}"
                )


def _check_sparsity(where: str, sparsity) -> None:
    if isinstance(sparsity, jax.core.Tracer):
        return
    value = np.asarray(sparsity)
    if value.ndim != 0 or value.dtype == bool or not np.issubdtype(value.dtype, np.number) or not 0 <= value < 1:
        raise ValueError(f"{where}: sparsity={sparsity!r}; expected a scalar in [0, 1)")


def _check_norm(where: str, norm: str) -> None:
    if norm not in NORMS:
        raise ValueError(f"{where}: norm={norm!r}; expected one of {NORMS}")


def _units(x, slot: _Slot, size: int, xp=jnp):
    """``(size, -1)``: the entries of leaf ``x`` that belong to each unit of ``slot``."""
    x = xp.moveaxis(x, slot.axis, 0).reshape(slot.tile, size, slot.repeat, -1)
    return x.swapaxes(0, 1).reshape(size, -1)


def _scores(group: _Group, flat: dict, norm: str) -> jax.Array:
    total = jnp.zeros((group.size,), jnp.float32)
    for s in group.scored:
        u = _units(jnp.asarray(flat[s.path], jnp.float32), s, group.size)
        total = total + (jnp.abs(u).sum(axis=1) if norm == "l1" else jnp.square(u).sum(axis=1))
    return total if norm == "l1" else jnp.sqrt(total)


def _keep(scores: jax.Array, sparsity, size: int) -> jax.Array:
    """``(size,)`` bool: all but the ``min(floor(s * size), size - 1)`` lowest scores."""
    rank = jnp.argsort(jnp.argsort(scores, stable=True), stable=True)
    drop = jnp.floor(jnp.asarray(sparsity, jnp.float32) * size).astype(jnp.int32)
    return rank >= jnp.minimum(drop, size - 1)


def _slot_mask(keep: jax.Array, slot: _Slot, shape: tuple) -> jax.Array:
    line = jnp.tile(jnp.repeat(keep, slot.repeat), slot.tile)
    return jnp.broadcast_to(line.reshape([-1 if d == slot.axis else 1 for d in range(len(shape))]), shape)


def _group_masks(tree, groups, sparsity, norm: str):
    flat, treedef = _flatten(tree)
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
        keep = _keep(_scores(g, flat, norm), sparsity, g.size)
        for s in g.masked:
            m = _slot_mask(keep, s, np.shape(flat[s.path]))
            masks[s.path] = m & masks[s.path] if s.path in masks else m
    return masks


def _apply_masks(params, masks):
    return jax.tree.map(
        lambda m, p: p if m is None else p * m.astype(p.dtype), masks, params, is_leaf=lambda x: x is None
    )


def _natural(path: tuple) -> tuple:
    """Sort key that orders ``Dense_2`` before ``Dense_10``."""
    return tuple(
        tuple((0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", str(k)) if t) for k in path
    )


def neuron_masks(params, sparsity, *, norm: str = "l2", exclude_last: bool = True):
    """Masks that remove the lowest-norm output neurons of every dense layer of any params tree.

    Every 2-D leaf is taken as a dense kernel ``(in, out)`` of a sequential
    stack; each output column ``j`` scores ``||W[:, j]||`` and the
    ``min(floor(s * out), out - 1)`` lowest columns of each kernel are
    masked, with entry ``j`` of the sibling ``bias`` (or ``b``) leaf of shape
    ``(out,)``. The last kernel in natural path order (``Dense_10`` after
    ``Dense_2``) is the classifier and is left alone unless
    ``exclude_last=False``. For the reference models with their attention or
    conv layers, use :func:`structured_masks`.

    Args:
      params: any pytree of arrays: NNX variables from
        :func:`hamjax.functional`, Linen params, a plain dict.
      sparsity: fraction of neurons to drop per layer, in ``[0, 1)``; a float
        or a (possibly traced) scalar array.
      norm: ``"l1"`` or ``"l2"``.
      exclude_last: leave the last kernel (the classifier) unmasked.

    Returns:
      A mask tree shaped like ``params``: ``bool`` arrays for the masked
      kernels and biases, ``None`` elsewhere.

    Raises:
      ValueError: for a concrete sparsity outside ``[0, 1)`` or an unknown norm.

    Examples:
      >>> import jax.numpy as jnp
      >>> from hamjax.structured import neuron_masks
      >>> params = {"l0": {"w": jnp.arange(8.0).reshape(2, 4), "b": jnp.ones(4)}, "l1": {"w": jnp.ones((4, 3))}}
      >>> masks = neuron_masks(params, 0.5)
      >>> masks["l0"]["b"].tolist(), masks["l1"]["w"] is None
      ([False, False, True, True], True)
    """
    _check_norm("neuron_masks", norm)
    _check_sparsity("neuron_masks", sparsity)
    flat, _ = _flatten(params)
    kernels = sorted((p for p, a in flat.items() if a is not None and np.ndim(a) == 2), key=_natural)
    if exclude_last:
        kernels = kernels[:-1]
    groups = []
    for path in kernels:
        out = np.shape(flat[path])[1]
        kernel = _Slot(path, 1)
        biases = [(*path[:-1], b) for b in ("bias", "b")]
        bias = next((b for b in biases if b in flat and np.shape(flat[b]) == (out,)), None)
        masked = (kernel,) if bias is None else (kernel, _Slot(bias, 0))
        groups.append(_Group(_path_str(path), "neurons", None, out, masked, (kernel,), ()))
    return _group_masks(params, groups, sparsity, norm)


def structured_masks(config, variables, sparsity, *, kind: str, norm: str = "l2"):
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
      kind: ``"neurons"`` (every model), ``"channels"`` (CNN) or ``"heads"``
        (ViT, HAMNet).
      norm: ``"l1"`` or ``"l2"``.

    Returns:
      A mask tree shaped like ``variables``: ``bool`` arrays on the group
      leaves, ``None`` elsewhere.

    Raises:
      ValueError: for an invalid kind, norm or concrete sparsity, or
        variables that do not match ``config``.
      TypeError: if ``config`` is not a reference model config.

    Examples:
      >>> import hamjax
      >>> from hamjax.models import build, config_of
      >>> from hamjax.structured import structured_masks
      >>> model = build("vit", input_shape=(8, 8, 1), hidden_size=16)
      >>> _, variables = hamjax.functional(model)
      >>> masks = structured_masks(config_of(model), variables, 0.5, kind="heads")
      >>> int(masks["params"]["blocks"][0]["attn"]["query"]["bias"].sum())  # 2 of 4 heads of 4 dims
      8
    """
    groups = _select(config, kind)
    _check_norm("structured_masks", norm)
    _check_sparsity("structured_masks", sparsity)
    tree, unwrap = _as_variables(variables)
    _check_shapes(config, groups, _flatten(tree)[0])
    return unwrap(_group_masks(tree, groups, sparsity, norm))


class StructuredPruneState(NamedTuple):
    """State of :func:`structured_prune`: the mask tree, fixed at ``init``."""

    masks: Any


def structured_prune(config, sparsity, *, kind: str, norm: str = "l2") -> Transform:
    """One-shot structured pruning of a reference model as a :class:`~hamjax.Transform`.

    ``init`` computes :func:`structured_masks` from the params it is given;
    every ``apply`` multiplies the params by them, so pruned groups stay zero
    through fine-tuning. ``sparsity`` may be a traced array: ``jax.vmap``
    over it prunes a population at many sparsities in one call.

    Args:
      config: the model's config or a :class:`ShrunkConfig`.
      sparsity: fraction of groups to drop per layer, in ``[0, 1)``.
      kind: ``"neurons"``, ``"channels"`` or ``"heads"`` (see :func:`structured_masks`).
      norm: ``"l1"`` or ``"l2"``.

    Returns:
      A :class:`~hamjax.Transform` over the model's variables (or their
      ``"params"``) whose state is a :class:`StructuredPruneState`.

    Raises:
      ValueError: for an invalid kind, norm or concrete sparsity.

    Examples:
      >>> import hamjax
      >>> from hamjax.models import build, config_of
      >>> from hamjax.structured import structured_prune
      >>> model = build("mlp", input_shape=(8, 8, 1))
      >>> _, variables = hamjax.functional(model)
      >>> t = structured_prune(config_of(model), 0.25, kind="neurons")
      >>> pruned, state = t.apply(variables, t.init(variables))
      >>> int((pruned["params"]["layers"][0]["kernel"] != 0).any(axis=0).sum())  # 512 - floor(0.25 * 512)
      384
    """
    _select(config, kind)
    _check_norm("structured_prune", norm)
    _check_sparsity("structured_prune", sparsity)

    def init(params):
        return StructuredPruneState(structured_masks(config, params, sparsity, kind=kind, norm=norm))

    def apply(params, state, **extra):
        del extra
        return _apply_masks(params, state.masks), state

    return Transform(init, apply)


_SHRINK_NAMES = ("build_shrunk", "shrink", "shrunk_model")


def __getattr__(name: str):
    # shrink.py builds on the groups defined here, so it cannot be imported at the top of this module;
    # resolving these names lazily lets ``structured.shrunk_model`` work whichever module loads first.
    if name in _SHRINK_NAMES:
        from hamjax import shrink

        return getattr(shrink, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
