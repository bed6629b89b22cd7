"""Groups: the removable units of the reference models, where their entries sit, and the widths they set.

A *group* is one removable unit of a layer: a hidden neuron (a kernel column
and its bias entry), a conv channel (an output-channel slice of the kernel,
its bias, and the batch-norm scale and bias that follow it: a channel whose
kernel is zero still outputs ``beta``), or an attention head (its ``head_dim``
columns of the query, key and value kernels and biases). A :class:`Group`
lists the leaves a mask zeroes so that the unit outputs exactly ``0``
(``masked``), the leaves its score reads (``scored``) and the leaves only
:func:`hamjax.prune.shrink` slices (``dependent``: the next layer's inputs,
batch statistics). :mod:`hamjax.prune.structured` masks groups and
:mod:`hamjax.prune.rebuild` slices them away; both read them from here.

MLP and CNN configs hold one width per layer. ViT and HAMNet configs hold one
``num_heads`` and ``mlp_ratio`` for all layers, so a shrunk one is a
:class:`ShrunkConfig` with per-layer widths.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import numpy as np

from hamjax.models import CNNConfig, HAMNetConfig, MLPConfig, ViTConfig

GRANULARITIES = {
    MLPConfig: ("neurons",),
    CNNConfig: ("channels", "neurons"),
    ViTConfig: ("heads", "neurons"),
    HAMNetConfig: ("heads", "neurons"),
}
"""The ``granularity=`` values structured pruning accepts for each reference model config class."""


@dataclasses.dataclass(frozen=True)
class ShrunkConfig:
    """Per-layer widths of a shrunk :class:`~hamjax.models.ViT` or :class:`~hamjax.models.HAMNet`.

    Their configs hold one ``num_heads`` and ``mlp_ratio`` for all layers; a
    shrunk model keeps ``base.hidden_size`` (the residual width) and
    ``head_dim = base.hidden_size // base.num_heads`` but narrows each layer
    on its own. :func:`hamjax.prune.build_shrunk` builds the module.

    Attributes:
      base: the :class:`~hamjax.models.ViTConfig` or
        :class:`~hamjax.models.HAMNetConfig` before shrinking.
      heads: attention heads per layer; ``0`` for a HAMNet mixer layer.
      mlp_hidden: channel-MLP inner width per layer.
      token_hidden: token-MLP inner width per layer; ``0`` for attention layers.

    Examples:
      >>> from hamjax.models import ViTConfig
      >>> from hamjax.prune import ShrunkConfig
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


def widths_of(config) -> dict[str, tuple[int, ...]]:
    """The per-layer widths that structured pruning changes, by config field (``{"sizes": (...)}`` for an MLP)."""
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


def with_widths(config, widths: dict):
    """``config`` with new per-layer widths; a ViT/HAMNet at its base widths gives the base config back."""
    widths = {k: tuple(v) for k, v in widths.items()}
    if isinstance(config, MLPConfig | CNNConfig):
        return dataclasses.replace(config, **widths)
    base = config.base if isinstance(config, ShrunkConfig) else config
    return base if widths == widths_of(base) else ShrunkConfig(base, **widths)


class Slot(NamedTuple):
    """Where a group's units sit in one leaf: unit ``u`` owns the indices ``t * G * repeat + u * repeat + r``."""

    path: tuple
    axis: int
    repeat: int = 1  # consecutive indices per unit (head_dim for heads)
    tile: int = 1  # times the unit pattern repeats (H * W for channels flattened into a dense layer)


class Group(NamedTuple):
    """The ``size`` units of one layer that structured pruning masks and shrink slices, with the leaves they own."""

    name: str
    granularity: str
    field: tuple[str, int] | None  # the config width it sets
    size: int
    masked: tuple[Slot, ...]  # zeroed by the mask: the unit then outputs exactly 0
    scored: tuple[Slot, ...]
    dependent: tuple[Slot, ...]  # only sliced away by shrink (the next layer's inputs, batch stats)


def _ffn_group(prefix: tuple, name: str, field, size: int) -> Group:
    kernel = Slot((*prefix, "fc1", "kernel"), 1)
    return Group(
        name,
        "neurons",
        field,
        size,
        (kernel, Slot((*prefix, "fc1", "bias"), 0)),
        (kernel,),
        (Slot((*prefix, "fc2", "kernel"), 0),),
    )


def model_groups(config) -> list[Group]:
    """Every group of a reference model (or of a :class:`ShrunkConfig`), in layer order."""
    widths = widths_of(config)
    groups = []
    if isinstance(config, MLPConfig):
        sizes = widths["sizes"]
        for i in range(len(sizes) - 2):
            layer = ("params", "layers", i)
            kernel = Slot((*layer, "kernel"), 1)
            masked = (kernel, Slot((*layer, "bias"), 0))
            nxt = Slot(("params", "layers", i + 1, "kernel"), 0)
            groups.append(Group(f"layers/{i}", "neurons", ("sizes", i + 1), sizes[i + 1], masked, (kernel,), (nxt,)))
        return groups
    if isinstance(config, CNNConfig):
        channels, dense = widths["channels"], widths["dense"]
        h, w, _ = config.input_shape
        for _ in channels:
            h, w = h // 2, w // 2
        first_dense = ("params", "dense", 0, "kernel") if dense else ("params", "head", "kernel")
        for i, c in enumerate(channels):
            conv, norm, stats = ("params", "convs", i), ("params", "norms", i), ("batch_stats", "norms", i)
            kernel = Slot((*conv, "kernel"), 3)
            masked = (kernel, Slot((*conv, "bias"), 0), Slot((*norm, "scale"), 0), Slot((*norm, "bias"), 0))
            # x.reshape(N, -1) on NHWC puts feature (h * W + w) * C + c in the first dense row.
            nxt = (
                Slot(("params", "convs", i + 1, "kernel"), 2)
                if i + 1 < len(channels)
                else Slot(first_dense, 0, 1, h * w)
            )
            dependent = (Slot((*stats, "mean"), 0), Slot((*stats, "var"), 0), nxt)
            groups.append(Group(f"convs/{i}", "channels", ("channels", i), c, masked, (kernel,), dependent))
        for j, n in enumerate(dense):
            layer = ("params", "dense", j)
            kernel = Slot((*layer, "kernel"), 1)
            nxt = ("params", "dense", j + 1, "kernel") if j + 1 < len(dense) else ("params", "head", "kernel")
            masked = (kernel, Slot((*layer, "bias"), 0))
            groups.append(Group(f"dense/{j}", "neurons", ("dense", j), n, masked, (kernel,), (Slot(nxt, 0),)))
        return groups
    base = config.base if isinstance(config, ShrunkConfig) else config
    head_dim = base.hidden_size // base.num_heads
    stack = "blocks" if isinstance(base, ViTConfig) else "layers"
    for i, kind in enumerate(_layer_kinds(base)):
        layer = ("params", stack, i)
        if kind == "attention":
            attn = (*layer, "attn")
            kernels = tuple(Slot((*attn, p, "kernel"), 1, head_dim) for p in ("query", "key", "value"))
            biases = tuple(Slot((*attn, p, "bias"), 0, head_dim) for p in ("query", "key", "value"))
            out = Slot((*attn, "out", "kernel"), 0, head_dim)
            heads = widths["heads"][i]
            groups.append(
                Group(f"{stack}/{i}/attn", "heads", ("heads", i), heads, kernels + biases, (*kernels, out), (out,))
            )
        else:
            token = widths["token_hidden"][i]
            groups.append(_ffn_group((*layer, "token_mlp"), f"{stack}/{i}/token_mlp", ("token_hidden", i), token))
        groups.append(_ffn_group((*layer, "mlp"), f"{stack}/{i}/mlp", ("mlp_hidden", i), widths["mlp_hidden"][i]))
    return groups


def path_str(path: tuple) -> str:
    """A key path as ``"params/layers/0/kernel"``, for errors."""
    return "/".join(map(str, path))


def _key(entry) -> Any:
    for attr in ("key", "idx", "name"):
        if hasattr(entry, attr):
            return getattr(entry, attr)
    return entry


def flatten_paths(tree) -> tuple[dict, Any]:
    """``{path: leaf}`` in tree order (``None`` leaves kept) and the treedef that rebuilds the tree."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: x is None)
    return {tuple(_key(k) for k in path): leaf for path, leaf in leaves}, treedef


def as_variables(tree) -> tuple[Any, Any]:
    """A ``{"params": ...}`` variables dict for ``tree``, and the function that maps results back."""
    if isinstance(tree, Mapping) and "params" in tree:
        return tree, lambda t: t
    return {"params": tree}, lambda t: t["params"]


def check_shapes(config, groups, flat: dict) -> None:
    """Raises unless the leaves in ``flat`` (from :func:`flatten_paths`) hold every group of ``config`` at its size."""
    for g in groups:
        for s in g.masked + g.scored + g.dependent:
            if s.path not in flat or flat[s.path] is None:
                raise ValueError(
                    f"variables have no leaf {path_str(s.path)}, which {g.name} of {type(config).__name__} needs; "
                    "expected the model's variables (or its params collection)"
                )
            shape = np.shape(flat[s.path])
            want = g.size * s.repeat * s.tile
            if len(shape) <= s.axis or shape[s.axis] != want:
                raise ValueError(
                    f"variables do not match the config: {path_str(s.path)} has shape {shape}, "
                    f"expected {want} along axis {s.axis} for {g.size} units of {g.name}"
                )


def unit_view(x, slot: Slot, size: int, xp=np):
    """``(size, -1)``: the entries of leaf ``x`` that belong to each unit of ``slot`` (``xp``: numpy or jax.numpy)."""
    x = xp.moveaxis(x, slot.axis, 0).reshape(slot.tile, size, slot.repeat, -1)
    return x.swapaxes(0, 1).reshape(size, -1)
