"""Architecture search: architectures as genomes, trained as masked sub-networks of one supernet.

A population of *different* architectures cannot be one vmapped program if
every member has its own shapes. So every member holds the same, largest,
supernet (:func:`init`), and its genome decides which part of it computes
(:func:`apply`). The genome of :func:`space` has, for a supernet of
``max_layers`` residual token layers,

* ``"depth"``: ``Int(1, max_layers)``, the number of active layers;
* per layer ``i``: ``f"op{i}"`` in ``config.ops`` (by default every op of
  :data:`OPS`), ``f"width{i}"`` in ``config.widths`` and ``f"act{i}"`` in
  :data:`ACTIVATIONS`.

Layer ``i`` computes ``x + op_i(LN(x))`` when ``i < depth`` and leaves ``x``
alone otherwise. Every op of ``config.ops`` is computed at the allocated width
``W = max(widths)`` with the inner units beyond ``width_i`` multiplied by
zero after the first projection, every activation is computed and one is
selected by index, and the ops' outputs are selected by ``op_i``
(``"identity"`` contributes nothing). Genes only ever enter as array values
in ``jnp.where`` and masks, never in Python control flow, so ``apply`` is
jit-, vmap- and grad-friendly and ``jax.vmap`` over ``(params, genome)`` is a
population of architectures in one call. The price is that each member pays
for the whole supernet at train time; :func:`materialise` then cuts the
chosen sub-network out (only the chosen op of each active layer, the first
``width_i`` units) as a small standalone model with the same outputs, and
:func:`param_count` counts its parameters without building it.

The tokens come from the stem: by default a linear map of each ``p x p``
patch (plus a learned position embedding); with
``SupernetConfig.stem_channels`` a few stride-2 3x3 convolutions first
(see :class:`SupernetConfig`), which on small image datasets such as the
MNIST subset gives the token layers local, translation-equivariant features
to work on. The stem is shared by every architecture of the space.

The ops, on tokens ``h = LN(x)`` of shape ``(N, T, D)``, inner mask ``m``:

* ``dense``: ``(act(h W1 + b1) * m) W2 + b2``;
* ``attention``: multi-head self-attention with ``num_heads`` heads whose
  head dimension is ``width_i / num_heads`` (the mask keeps the first
  channels *of every head*, so a narrower width means narrower heads, not
  fewer), scores scaled by ``1 / sqrt(width_i / num_heads)``, softmax in
  float32; ``act`` is applied to the heads' output before the output
  projection (``act(0) = 0`` for every activation, so masked channels stay 0);
* ``conv``: in-projection to ``W`` channels, a depthwise 3x3 convolution
  (zero "SAME" padding) over the ``(H/p, W/p)`` token grid, ``act``, mask,
  out-projection.

Training a population with :class:`hamjax.search.population.Population`:
that trainer differentiates and updates *every* leaf of a member's params,
and ``jax.grad`` refuses integer leaves, so a member's params are
``{"supernet": params, "genome": float32 genes}`` (:func:`member_params`,
:func:`population_params`) and :func:`member_apply` rounds the genes back to
integers behind ``jax.lax.stop_gradient``. Their gradient is exactly zero,
so Adam's moments stay zero and AdamW's update of a gene is exactly zero when
its weight decay is 0, which is the ``Population`` default: genomes come out
of training bit-identical. A member trained with ``weight_decay > 0`` would
decay its genes too; do not set it for NAS populations. Because the genome
lives in the params, :func:`hamjax.search.evolution.exploit_explore` copies a
winner's architecture together with its weights.

:class:`SupernetConfig`, :func:`space`, :func:`encode`, :func:`decode` and
:func:`init` are defined in :mod:`hamjax.search.supernet` and the numeric
blocks in :mod:`hamjax.search.nas_blocks`; this module re-exports them.

Examples:
  >>> import jax, jax.numpy as jnp
  >>> from hamjax.search import nas
  >>> config = nas.SupernetConfig(input_shape=(8, 8, 1), patch_size=4, hidden_size=16,
  ...                             max_layers=2, widths=(8, 16), num_heads=2)
  >>> params = nas.init(config, jax.random.key(0))
  >>> values = {"depth": 1, "op0": "attention", "width0": 8, "act0": "gelu",
  ...           "op1": "dense", "width1": 16, "act1": "relu"}
  >>> nas.apply(config, params, nas.encode(config, values), jnp.ones((2, 8, 8, 1))).shape
  (2, 10)
  >>> nas.describe(values)
  'depth 1: attention/8/gelu'
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hamjax.search import nas_blocks as blocks
from hamjax.search.nas_blocks import ACTIVATIONS
from hamjax.search.supernet import OPS, SupernetConfig, check_values, decode, encode, init, space

__all__ = [
    "ACTIVATIONS",
    "OPS",
    "SupernetConfig",
    "apply",
    "decode",
    "describe",
    "encode",
    "genome_of",
    "init",
    "materialise",
    "member_apply",
    "member_params",
    "param_count",
    "population_params",
    "space",
]


# ---------------------------------------------------------------------------------------------
# the ops, shared by the supernet (mask given) and the materialised model (mask None)


def _check_input(config: SupernetConfig, x: Any) -> None:
    h, w, c = config.input_shape
    if np.ndim(x) != 4 or tuple(np.shape(x)[1:]) != (h, w, c):
        raise ValueError(f"x must have shape (N, {h}, {w}, {c}), got {tuple(np.shape(x))}")


def _tokens(config: SupernetConfig, params: dict, x: jax.Array) -> jax.Array:
    _, _, c = config.input_shape
    p = config.patch_size
    gh, gw = config.grid
    x = jnp.asarray(x, params["stem"]["kernel"].dtype)
    if config.stem_channels:
        for conv in params["stem"]["convs"]:
            x = blocks.stem_conv(conv, x)
        patches = x.reshape(x.shape[0], gh * gw, config.embed_features)
    else:
        patches = x.reshape(x.shape[0], gh, p, gw, p, c).transpose(0, 1, 3, 2, 4, 5)
        patches = patches.reshape(x.shape[0], gh * gw, p * p * c)
    return patches @ params["stem"]["kernel"] + blocks.vec(params["stem"]["bias"]) + params["pos"][None]


# ---------------------------------------------------------------------------------------------
# the supernet


def _check_genome(config: SupernetConfig, genome: Any) -> None:
    """Static checks (keys and shapes only), so they run on tracers too."""
    names = space(config).names
    if not isinstance(genome, Mapping) or set(genome) != set(names):
        got = sorted(genome) if isinstance(genome, Mapping) else type(genome).__name__
        raise ValueError(f"genome must map exactly the genes {list(names)}, got {got}")
    for name in names:
        if np.ndim(genome[name]) != 0:
            raise ValueError(
                f"genome[{name!r}] must be a scalar (one member; vmap for a batch), got shape {np.shape(genome[name])}"
            )


def _genes(genome: Mapping[str, Any]) -> dict[str, jax.Array]:
    out = {}
    for name, v in genome.items():
        # Genes never carry gradient: the float encoding of member params is rounded behind stop_gradient.
        v = jax.lax.stop_gradient(jnp.asarray(v))
        if jnp.issubdtype(v.dtype, jnp.inexact):
            v = jnp.round(v)
        out[name] = v.astype(jnp.int32)
    return out


def apply(config: SupernetConfig, params: dict, genome: Mapping[str, Any], x: jax.Array) -> jax.Array:
    """The logits of the sub-network ``genome`` selects, computed inside the supernet.

    Args:
      config: the :class:`SupernetConfig` (static).
      params: supernet params from :func:`init`.
      genome: one member's genes as scalars (from :func:`encode`; ``Choice``
        genes as indices); integral floats are rounded. ``jax.vmap`` over
        ``(params, genome)`` evaluates a population of architectures.
      x: ``(N, H, W, C)`` inputs.

    Returns:
      ``(N, num_classes)`` logits in the params' dtype.

    The keys and shapes of ``genome`` and ``x`` are checked here; the gene
    *values* are not (they may be traced): out-of-range values select
    ``"identity"`` for ``op``, ``relu`` for ``act``, the nearest width, and
    every layer for a depth above ``max_layers``. Validate with :func:`encode`
    or ``space(config).validate``. The computation is compiled once per
    config and shapes (it is inlined when called under ``jit``).

    Examples:
      >>> config = SupernetConfig(input_shape=(8, 8, 1), patch_size=4, hidden_size=16, max_layers=1,
      ...                         widths=(8, 16), num_heads=2)
      >>> g = encode(config, {"depth": 1, "op0": "conv", "width0": 8, "act0": "silu"})
      >>> jax.jit(lambda p, g, x: apply(config, p, g, x))(init(config, jax.random.key(0)), g,
      ...                                                  jnp.ones((3, 8, 8, 1))).shape
      (3, 10)
    """
    if not isinstance(config, SupernetConfig):
        raise ValueError(f"config must be a SupernetConfig, got {type(config).__name__}")
    _check_genome(config, genome)
    _check_input(config, x)
    return _apply(config, params, dict(genome), x)


@functools.partial(jax.jit, static_argnums=0)
def _apply(config: SupernetConfig, params: dict, genome: dict, x: jax.Array) -> jax.Array:
    genes = _genes(genome)
    widths = jnp.asarray(config.widths, jnp.int32)
    big, heads = config.max_width, config.num_heads
    units = jnp.arange(big)
    x = _tokens(config, params, x)
    for i, layer in enumerate(params["layers"]):
        width = widths[jnp.clip(genes[f"width{i}"], 0, len(config.widths) - 1)]
        mask = units < width
        # The attention width is split over heads: keep the first width/heads channels of each head.
        head_mask = units % (big // heads) < width // heads
        act = blocks.select_activation(genes[f"act{i}"])
        h = blocks.layer_norm(layer["ln"], x)
        op = genes[f"op{i}"]
        out = jnp.zeros_like(x)  # "identity" and any unknown index: no change
        for j, name in enumerate(config.ops):
            if name == "dense":
                value = blocks.dense(layer["dense"], h, act, mask)
            elif name == "attention":
                value = blocks.attention(layer["attention"], h, act, head_mask, heads, big // heads, width // heads)
            elif name == "conv":
                value = blocks.conv(layer["conv"], h, act, mask, config.grid)
            else:
                continue
            out = jnp.where(op == j, value, out)
        x = jnp.where(i < genes["depth"], x + out, x)
    return blocks.head(params, x)


# ---------------------------------------------------------------------------------------------
# members of a Population


def member_params(config: SupernetConfig, params: dict, genome: Mapping[str, Any]) -> dict:
    """One member's trainable params: ``{"supernet": params, "genome": float32 scalar genes}``.

    The genes are stored as float32 because :class:`~hamjax.search.population.Population`
    differentiates every leaf; :func:`member_apply` gives them zero gradient.
    """
    _check_genome(config, genome)
    return {"supernet": params, "genome": {k: v.astype(jnp.float32) for k, v in _genes(genome).items()}}


def population_params(config: SupernetConfig, key: jax.Array, genomes: Mapping[str, Any]) -> dict:
    """A population of members, one supernet (its own init key) per genome of the batch.

    Args:
      config: the :class:`SupernetConfig`.
      key: a PRNG key, split over members.
      genomes: a genome batch ``name -> (P,)`` of :func:`space` (e.g. ``space(config).sample(key, P)``).

    Returns:
      ``{"supernet": params with leading (P,) axis, "genome": name -> (P,) float32}``.
    """
    names = space(config).names
    if not isinstance(genomes, Mapping) or set(genomes) != set(names):
        raise ValueError(f"population_params: genomes must map exactly the genes {list(names)}")
    lengths = {np.shape(genomes[n]) for n in names}
    if len(lengths) != 1 or len(next(iter(lengths))) != 1:
        raise ValueError(f"population_params: every gene must be a (P,) array of one P, got shapes {lengths}")
    (p,) = lengths.pop()
    supernets = _init_many(config, jax.random.split(key, p))
    return {"supernet": supernets, "genome": {n: jnp.asarray(genomes[n]).astype(jnp.float32) for n in names}}


@functools.partial(jax.jit, static_argnums=0)
def _init_many(config: SupernetConfig, keys: jax.Array) -> dict:
    return jax.vmap(functools.partial(init, config))(keys)


def genome_of(member: Mapping[str, Any]) -> dict[str, jax.Array]:
    """The int32 genes of member params (one member or a population: shapes are kept)."""
    return {k: jnp.round(v).astype(jnp.int32) for k, v in member["genome"].items()}


def member_apply(config: SupernetConfig) -> Callable[[dict, jax.Array], jax.Array]:
    """An apply function of hamjax's contract over :func:`member_params`: ``f(p, x) -> logits``.

    ``Population(member_apply(config))`` trains a population of architectures;
    the genes get exactly zero gradient, so they stay bit-identical under the
    default ``weight_decay=0`` (a positive weight decay would shrink them).

    Examples:
      >>> from hamjax.search import population as pop
      >>> config = SupernetConfig(input_shape=(8, 8, 1), patch_size=4, hidden_size=16, max_layers=2,
      ...                         widths=(8, 16), num_heads=2)
      >>> params = population_params(config, jax.random.key(0), space(config).sample(jax.random.key(1), 4))
      >>> trainer = pop.Population(member_apply(config))
      >>> xs, ys = jnp.ones((2, 8, 8, 8, 1)), jnp.zeros((2, 8), jnp.int32)
      >>> state, losses = trainer.train(trainer.init(params), xs, ys)  # doctest: +SKIP
      >>> losses.shape  # doctest: +SKIP
      (4, 2)
    """

    def apply_fn(p: dict, x: jax.Array) -> jax.Array:
        return apply(config, p["supernet"], p["genome"], x)

    return apply_fn


# ---------------------------------------------------------------------------------------------
# the chosen architecture on its own


def _active_layers(values: Mapping[str, Any]) -> list[tuple[int, str, int, str]]:
    layers = []
    for i in range(values["depth"]):
        if values[f"op{i}"] != "identity":
            layers.append((i, values[f"op{i}"], values[f"width{i}"], values[f"act{i}"]))
    return layers


def param_count(config: SupernetConfig, genome_values: Mapping[str, Any]) -> int:
    """Parameters of the materialised architecture: stem, the chosen op of each active layer, head.

    A layer at or beyond ``depth``, or with op ``"identity"``, has none (not
    even its layer norm, which it never uses).

    Examples:
      >>> config = SupernetConfig(input_shape=(8, 8, 1), patch_size=4, hidden_size=16, max_layers=1,
      ...                         widths=(8, 16), num_heads=2)
      >>> param_count(config, {"depth": 1, "op0": "identity", "width0": 8, "act0": "relu"})
      538
    """
    values = check_values(config, genome_values)
    d, k = config.hidden_size, config.num_classes
    total = config.embed_features * d + d + config.num_tokens * d + 2 * d + d * k + k
    total += sum(9 * a * b + b for a, b in config.stem_convs)
    for _, op, w, _ in _active_layers(values):
        total += 2 * d
        total += {"dense": 2 * d * w + w + d, "attention": 4 * d * w, "conv": 2 * d * w + 9 * w}[op]
    return total


def _head_channels(config: SupernetConfig, width: int) -> np.ndarray:
    """Indices of the attention channels a width keeps: the first ``width / heads`` of every head."""
    per_head = config.max_width // config.num_heads
    return np.concatenate([h * per_head + np.arange(width // config.num_heads) for h in range(config.num_heads)])


def materialise(
    config: SupernetConfig, params: dict, genome_values: Mapping[str, Any]
) -> tuple[Callable[[dict, jax.Array], jax.Array], dict]:
    """The chosen sub-network as a standalone model ``(apply_fn, small_params)``.

    Only the chosen op of each active layer is kept, sliced to its first
    ``width`` units (for attention: the first ``width / num_heads`` channels
    of each head). ``apply_fn(small_params, x)`` equals
    ``apply(config, params, encode(config, genome_values), x)`` up to float
    rounding, and ``measure.param_count(small_params) == param_count(config, genome_values)``.

    Args:
      config: the :class:`SupernetConfig`.
      params: supernet params (one member, no leading axis).
      genome_values: Python gene values (see :func:`decode`).

    Returns:
      ``(apply_fn, small_params)``: a plain-jnp function of the contract and a
      dict ``{"stem", "pos", "layers": [...], "head"}`` of float arrays; the op
      names and activations are closed over, not stored.

    Examples:
      >>> config = SupernetConfig(input_shape=(8, 8, 1), patch_size=4, hidden_size=16, max_layers=2,
      ...                         widths=(8, 16), num_heads=2)
      >>> values = {"depth": 1, "op0": "dense", "width0": 8, "act0": "relu",
      ...           "op1": "conv", "width1": 8, "act1": "relu"}
      >>> fn, small = materialise(config, init(config, jax.random.key(0)), values)
      >>> small["layers"][0]["w1"].shape
      (16, 8)
    """
    values = check_values(config, genome_values)
    heads = config.num_heads
    spec, layers = [], []
    for i, op, w, act in _active_layers(values):
        layer = params["layers"][i]
        if op == "dense":
            p = layer["dense"]
            small = {"w1": p["w1"][:, :w], "b1": p["b1"][:w], "w2": p["w2"][:w, :], "b2": p["b2"]}
        elif op == "attention":
            p = layer["attention"]
            channels = _head_channels(config, w)
            small = {n: p[n][:, channels] for n in ("q", "k", "v")}
            small["out"] = p["out"][channels, :]
        else:
            p = layer["conv"]
            small = {"w_in": p["w_in"][:, :w], "kernel": p["kernel"][:, :, :w], "w_out": p["w_out"][:w, :]}
        layers.append({"ln": dict(layer["ln"]), **small})
        spec.append((op, w, act))
    small_params = {"stem": params["stem"], "pos": params["pos"], "layers": layers, "head": params["head"]}
    small_params = jax.tree.map(jnp.array, small_params)

    def apply_fn(p: dict, x: jax.Array) -> jax.Array:
        _check_input(config, x)
        x = _tokens(config, p, x)
        for (op, w, act), layer in zip(spec, p["layers"], strict=True):
            h = blocks.layer_norm(layer["ln"], x)
            fn = blocks.ACTIVATION_FNS[act]
            if op == "dense":
                out = blocks.dense(layer, h, fn, None)
            elif op == "attention":
                out = blocks.attention(layer, h, fn, None, heads, w // heads, w // heads)
            else:
                out = blocks.conv(layer, h, fn, None, config.grid)
            x = x + out
        return blocks.head(p, x)

    return apply_fn, small_params


def describe(genome_values: Mapping[str, Any]) -> str:
    """A one-line summary of the active layers, e.g. ``"depth 2: dense/64/relu, attention/32/gelu"``.

    Examples:
      >>> describe({"depth": 2, "op0": "dense", "width0": 64, "act0": "relu",
      ...           "op1": "identity", "width1": 32, "act1": "gelu"})
      'depth 2: dense/64/relu, identity'
    """
    depth = genome_values["depth"]
    parts = []
    for i in range(depth):
        op = genome_values[f"op{i}"]
        parts.append(op if op == "identity" else f"{op}/{genome_values[f'width{i}']}/{genome_values[f'act{i}']}")
    return f"depth {depth}: " + ", ".join(parts)
