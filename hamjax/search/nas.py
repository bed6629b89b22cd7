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

import dataclasses
import functools
import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hamjax._checks import check_int
from hamjax.search import evolution
from hamjax.search import nas_blocks as blocks
from hamjax.search.nas_blocks import ACTIVATIONS

OPS = ("dense", "attention", "conv", "identity")


@dataclasses.dataclass(frozen=True)
class SupernetConfig:
    """The static shape of a supernet (hashable, so it can close over jitted functions).

    Args:
      input_shape: ``(H, W, C)`` of one input image.
      num_classes: number of logits.
      patch_size: side ``p`` of the square patches; must divide ``H`` and ``W``.
        There are ``T = (H / p) * (W / p)`` tokens.
      hidden_size: token width ``D``.
      max_layers: layers allocated in the supernet (the largest ``depth``).
      widths: candidate inner widths of a layer; ``max(widths)`` is allocated.
        Each must be divisible by ``num_heads``.
      num_heads: attention heads.
      stem_channels: ``()`` (the default) embeds each ``p x p`` patch with
        one linear map. ``(c_1, ..., c_k)`` makes the stem convolutional
        (Xiao et al. 2021): ``k`` 3x3 convolutions of stride 2 with
        ``c_1 .. c_k`` output channels, each followed by relu, then a
        linear map of each position's ``c_k`` channels to ``D``; the
        convolutions halve the image ``k`` times, so ``patch_size`` must be
        ``2**k`` and the token grid is the same as the linear stem's.
      ops: the op choices of every layer, a non-empty subset of :data:`OPS`
        (kept in :data:`OPS` order, which is the order of the ``op`` gene's
        options). The supernet allocates and computes only these, so leaving
        out an op the data does not need makes every training step cheaper
        (attention is the costliest: at 49 tokens, more than half of a
        layer's multiply-adds).
    """

    input_shape: tuple[int, int, int] = (28, 28, 1)
    num_classes: int = 10
    patch_size: int = 7
    hidden_size: int = 64
    max_layers: int = 4
    widths: tuple[int, ...] = (32, 64, 128)
    num_heads: int = 4
    stem_channels: tuple[int, ...] = ()
    ops: tuple[str, ...] = OPS

    def __post_init__(self):
        shape = self.input_shape
        if not isinstance(shape, tuple | list) or len(shape) != 3:
            raise ValueError(f"SupernetConfig: input_shape must be (H, W, C), got {shape!r}")
        shape = tuple(check_int("SupernetConfig", f"input_shape[{i}]", v, minimum=1) for i, v in enumerate(shape))
        object.__setattr__(self, "input_shape", shape)
        for name, minimum in (("num_classes", 1), ("patch_size", 1), ("hidden_size", 1), ("max_layers", 1)):
            object.__setattr__(self, name, check_int("SupernetConfig", name, getattr(self, name), minimum=minimum))
        heads = check_int("SupernetConfig", "num_heads", self.num_heads, minimum=1)
        object.__setattr__(self, "num_heads", heads)
        p = self.patch_size
        if shape[0] % p or shape[1] % p:
            raise ValueError(
                f"SupernetConfig: patch_size {p} must divide the input height and width, got input_shape {shape}"
            )
        widths = self.widths
        if not isinstance(widths, tuple | list) or not widths:
            raise ValueError(f"SupernetConfig: widths must be a non-empty tuple of ints, got {widths!r}")
        widths = tuple(check_int("SupernetConfig", "widths[]", w, minimum=1) for w in widths)
        if len(set(widths)) != len(widths):
            raise ValueError(f"SupernetConfig: widths must be distinct, got {widths}")
        bad = [w for w in widths if w % heads]
        if bad:
            raise ValueError(f"SupernetConfig: every width must be divisible by num_heads={heads}, got {bad}")
        object.__setattr__(self, "widths", widths)
        stem = self.stem_channels
        if not isinstance(stem, tuple | list):
            raise ValueError(f"SupernetConfig: stem_channels must be a tuple of ints, got {stem!r}")
        stem = tuple(check_int("SupernetConfig", "stem_channels[]", c, minimum=1) for c in stem)
        if stem and p != 2 ** len(stem):
            raise ValueError(
                f"SupernetConfig: {len(stem)} stride-2 stem convolutions (stem_channels={stem}) need "
                f"patch_size {2 ** len(stem)}, got {p}"
            )
        object.__setattr__(self, "stem_channels", stem)
        ops = self.ops
        if isinstance(ops, str) or not isinstance(ops, tuple | list) or not ops:
            raise ValueError(f"SupernetConfig: ops must be a non-empty tuple of names from {OPS}, got {ops!r}")
        unknown = [op for op in ops if op not in OPS]
        if unknown or len(set(ops)) != len(ops):
            raise ValueError(f"SupernetConfig: ops must be distinct names from {OPS}, got {tuple(ops)}")
        object.__setattr__(self, "ops", tuple(op for op in OPS if op in ops))

    @property
    def grid(self) -> tuple[int, int]:
        """The token grid ``(H / p, W / p)``."""
        return self.input_shape[0] // self.patch_size, self.input_shape[1] // self.patch_size

    @property
    def num_tokens(self) -> int:
        """``T = (H / p) * (W / p)``."""
        return self.grid[0] * self.grid[1]

    @property
    def max_width(self) -> int:
        """The allocated inner width ``W = max(widths)``."""
        return max(self.widths)

    @property
    def embed_features(self) -> int:
        """Features the stem's linear map takes per token: ``p**2 * C``, or ``c_k`` for a convolutional stem."""
        if self.stem_channels:
            return self.stem_channels[-1]
        return self.patch_size**2 * self.input_shape[2]

    @property
    def stem_convs(self) -> tuple[tuple[int, int], ...]:
        """``(in, out)`` channels of each stem convolution (empty for the linear stem)."""
        ins = (self.input_shape[2], *self.stem_channels)
        return tuple(zip(ins[:-1], self.stem_channels, strict=True))


def space(config: SupernetConfig) -> evolution.Space:
    """The search space of ``config``'s architectures: ``1 + 3 * max_layers`` genes.

    Examples:
      >>> len(space(SupernetConfig(max_layers=3)))
      10
    """
    genes: dict[str, evolution.Gene] = {"depth": evolution.Int(1, config.max_layers)}
    for i in range(config.max_layers):
        genes[f"op{i}"] = evolution.Choice(config.ops)
        genes[f"width{i}"] = evolution.Choice(config.widths)
        genes[f"act{i}"] = evolution.Choice(ACTIVATIONS)
    return evolution.Space(genes)


def encode(config: SupernetConfig, values: Mapping[str, Any]) -> dict[str, jax.Array]:
    """One member's Python gene values as int32 scalars (a ``Choice`` as the index of its option).

    Raises:
      ValueError: ``values`` is not exactly the genes of :func:`space`, or a value lies outside it.

    Examples:
      >>> config = SupernetConfig(max_layers=1)
      >>> g = encode(config, {"depth": 1, "op0": "conv", "width0": 64, "act0": "tanh"})
      >>> {k: int(v) for k, v in g.items()}
      {'depth': 1, 'op0': 2, 'width0': 1, 'act0': 2}
    """
    batch = space(config).encode(values)
    return {name: v[0] for name, v in batch.items()}


def decode(config: SupernetConfig, genome: Mapping[str, Any]) -> dict[str, Any]:
    """The inverse of :func:`encode`: concrete scalar genes (int, or integral floats) to Python values.

    Examples:
      >>> config = SupernetConfig(max_layers=1)
      >>> decode(config, {"depth": 1, "op0": 0, "width0": 2, "act0": 1})
      {'depth': 1, 'op0': 'dense', 'width0': 128, 'act0': 'gelu'}
    """
    if not isinstance(genome, Mapping):
        raise ValueError(f"decode: genome must be a mapping name -> scalar, got {type(genome).__name__}")
    batch = {}
    for name, v in genome.items():
        if np.ndim(v) != 0:
            raise ValueError(f"decode: gene {name!r} must be a scalar, got shape {np.shape(v)}")
        batch[name] = np.reshape(np.asarray(v), (1,))
    return space(config).decode(batch, 0)


def _check_values(config: SupernetConfig, values: Mapping[str, Any]) -> dict[str, Any]:
    encode(config, values)  # validates against the space, naming the bad gene
    return dict(values)


# ---------------------------------------------------------------------------------------------
# parameters


class _Normals:
    """Consecutive slices of ONE standard-normal draw.

    One random-bits computation instead of one per weight: the jitted init
    compiles several times faster, which matters when a population of
    supernets is initialised under ``vmap``.
    """

    def __init__(self, key: jax.Array, total: int):
        self._flat = jax.random.normal(key, (total,), jnp.float32)
        self._offset = 0

    def __call__(self, shape: tuple[int, ...], scale: float) -> jax.Array:
        n = math.prod(shape)
        out = self._flat[self._offset : self._offset + n].reshape(shape) * scale
        self._offset += n
        return out

    def done(self) -> bool:
        return self._offset == self._flat.shape[0]


def _layer_norm_params(d: int) -> dict:
    return {"scale": jnp.ones((d,), jnp.float32), "bias": jnp.zeros((d,), jnp.float32)}


def init(config: SupernetConfig, key: jax.Array) -> dict:
    """Supernet params: a plain dict of float32 arrays, made in one compiled call.

    With ``P = patch_size**2 * C`` (``c_k`` for a convolutional stem), ``T``
    tokens, ``D = hidden_size``, ``W = max(widths)`` and ``K = num_classes``::

      stem:   {"kernel": (P, D), "bias": (D,)},  pos: (T, D)
              (a convolutional stem adds "convs": [k x {"kernel": (3, 3, c_in, c_out), "bias": (c_out,)}])
      layers: [max_layers x {"ln": {"scale": (D,), "bias": (D,)},   (and only the ops of config.ops)
               "dense": {"w1": (D, W), "b1": (W,), "w2": (W, D), "b2": (D,)},
               "attention": {"q": (D, W), "k": (D, W), "v": (D, W), "out": (W, D)},
               "conv": {"w_in": (D, W), "kernel": (3, 3, W), "w_out": (W, D)}}]
      head:   {"ln": {...}, "kernel": (D, K), "bias": (K,)}

    Examples:
      >>> params = init(SupernetConfig(), jax.random.key(0))
      >>> params["layers"][0]["attention"]["q"].shape
      (64, 128)
    """
    if not isinstance(config, SupernetConfig):
        raise ValueError(f"config must be a SupernetConfig, got {type(config).__name__}")
    return _init(config, key)


@functools.partial(jax.jit, static_argnums=0)
def _init(config: SupernetConfig, key: jax.Array) -> dict:
    d, width, k = config.hidden_size, config.max_width, config.num_classes
    patch = config.embed_features
    convs = config.stem_convs
    drawn = {"dense": 2 * d * width, "attention": 4 * d * width, "conv": 2 * d * width + 9 * width}
    per_layer = sum(drawn.get(op, 0) for op in config.ops)
    total = config.max_layers * per_layer + (patch + config.num_tokens + k) * d
    total += sum(9 * a * b for a, b in convs)
    normal = _Normals(key, total)
    layers = []
    for _ in range(config.max_layers):
        layer = {"ln": _layer_norm_params(d)}
        if "dense" in config.ops:
            layer["dense"] = {
                "w1": normal((d, width), d**-0.5),
                "b1": jnp.zeros((width,), jnp.float32),
                "w2": normal((width, d), width**-0.5),
                "b2": jnp.zeros((d,), jnp.float32),
            }
        if "attention" in config.ops:
            layer["attention"] = {
                "q": normal((d, width), d**-0.5),
                "k": normal((d, width), d**-0.5),
                "v": normal((d, width), d**-0.5),
                "out": normal((width, d), width**-0.5),
            }
        if "conv" in config.ops:
            layer["conv"] = {
                "w_in": normal((d, width), d**-0.5),
                "kernel": normal((3, 3, width), 1 / 3),
                "w_out": normal((width, d), width**-0.5),
            }
        layers.append(layer)
    params = {
        "stem": {"kernel": normal((patch, d), patch**-0.5), "bias": jnp.zeros((d,), jnp.float32)},
        "pos": normal((config.num_tokens, d), 0.02),
        "layers": layers,
        "head": {
            "ln": _layer_norm_params(d),
            "kernel": normal((d, k), d**-0.5),
            "bias": jnp.zeros((k,), jnp.float32),
        },
    }
    if convs:
        params["stem"]["convs"] = [
            {"kernel": normal((3, 3, a, b), (2 / (9 * a)) ** 0.5), "bias": jnp.zeros((b,), jnp.float32)}
            for a, b in convs
        ]
    if not normal.done():
        raise RuntimeError("init: the size of the random draw does not match the weights")
    return params


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
    return jax.vmap(functools.partial(_init, config))(keys)


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
      >>> state, losses = trainer.train(trainer.init(params), jnp.ones((2, 8, 8, 8, 1)), jnp.zeros((2, 8), jnp.int32))
      >>> losses.shape
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
    values = _check_values(config, genome_values)
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
    values = _check_values(config, genome_values)
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
