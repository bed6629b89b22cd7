"""The supernet of :mod:`hamjax.search.nas`: its static shape, the genome space of its architectures, its params.

:class:`SupernetConfig` fixes the shapes; :func:`space` is the search space
of its architectures (``depth``, and per layer ``op``, ``width`` and
``act``); :func:`encode` and :func:`decode` move one member's genes between
Python values and int32 scalars; :func:`init` draws the params in one
compiled call. :mod:`hamjax.search.nas` describes the design, computes the
sub-network a genome selects (``apply``), trains populations of them and
materialises the chosen one; it re-exports every name here.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hamjax._checks import check_int
from hamjax.search import nas_blocks as blocks
from hamjax.search.nas_blocks import ACTIVATIONS
from hamjax.search.space import Choice, Gene, Int, Space

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


def space(config: SupernetConfig) -> Space:
    """The search space of ``config``'s architectures: ``1 + 3 * max_layers`` genes.

    Examples:
      >>> len(space(SupernetConfig(max_layers=3)))
      10
    """
    genes: dict[str, Gene] = {"depth": Int(1, config.max_layers)}
    for i in range(config.max_layers):
        genes[f"op{i}"] = Choice(config.ops)
        genes[f"width{i}"] = Choice(config.widths)
        genes[f"act{i}"] = Choice(ACTIVATIONS)
    return Space(genes)


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


def check_values(config: SupernetConfig, values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` as a dict once they are checked against :func:`space` (``ValueError`` names a bad gene).

    Args:
      config: the :class:`SupernetConfig`.
      values: one member's Python gene values (see :func:`decode`).

    Returns:
      A copy of ``values``.

    Examples:
      >>> check_values(SupernetConfig(max_layers=1), {"depth": 1, "op0": "conv", "width0": 32, "act0": "relu"})
      {'depth': 1, 'op0': 'conv', 'width0': 32, 'act0': 'relu'}
    """
    encode(config, values)  # validates against the space, naming the bad gene
    return dict(values)


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
    normal = blocks.Normals(key, total)
    layers = []
    for _ in range(config.max_layers):
        layer = {"ln": blocks.layer_norm_params(d)}
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
            "ln": blocks.layer_norm_params(d),
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
