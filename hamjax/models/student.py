"""Smaller versions of the reference models, for distillation students."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
from flax import nnx

from hamjax.models.cnn import CNN, CNNConfig
from hamjax.models.hamnet import HAMNet, HAMNetConfig
from hamjax.models.mlp import MLP, MLPConfig
from hamjax.models.vit import ViT, ViTConfig

_CLASSES = ((MLPConfig, MLP), (CNNConfig, CNN), (ViTConfig, ViT), (HAMNetConfig, HAMNet))


def from_config(config, *, seed: int = 0) -> nnx.Module:
    """Build the reference model that ``config`` describes.

    Args:
      config: an :class:`~hamjax.models.MLPConfig`, :class:`~hamjax.models.CNNConfig`,
        :class:`~hamjax.models.ViTConfig` or :class:`~hamjax.models.HAMNetConfig`.
      seed: seed of the ``nnx.Rngs`` for initialization and dropout.

    Returns:
      The freshly initialized ``nnx.Module``.

    Raises:
      TypeError: for any other config.

    Examples:
      >>> from hamjax.models import MLPConfig, from_config
      >>> from_config(MLPConfig(sizes=(64, 8, 10))).layers[0].kernel.shape
      (64, 8)
    """
    for config_cls, cls in _CLASSES:
        if isinstance(config, config_cls):
            return cls(config, rngs=nnx.Rngs(seed))
    raise TypeError(f"from_config: expected a reference model config, got {type(config).__name__}")


def _dense(a: int, b: int) -> int:
    return a * b + b


def _block(d: int, mlp: int) -> int:
    return 4 * d + 4 * _dense(d, d) + _dense(d, mlp) + _dense(mlp, d)  # two norms, q/k/v/out, MLP


def param_count(config) -> int:
    """The number of trainable parameters of the model ``config`` describes, without building it.

    Args:
      config: a reference model config (see :func:`from_config`).

    Returns:
      The count (batch-norm statistics are not parameters).

    Examples:
      >>> from hamjax.models import MLPConfig, param_count
      >>> param_count(MLPConfig(sizes=(784, 512, 512, 10)))
      669706
    """
    if not isinstance(config, tuple(c for c, _ in _CLASSES)):
        raise TypeError(f"param_count: expected a reference model config, got {type(config).__name__}")
    if isinstance(config, MLPConfig):
        return sum(_dense(a, b) for a, b in itertools.pairwise(config.sizes))
    if isinstance(config, CNNConfig):
        k, chans = config.kernel_size, (config.input_shape[-1], *config.channels)
        convs = sum(_dense(k * k * a, b) + 2 * b for a, b in itertools.pairwise(chans))
        widths = (config.flat_features, *config.dense, config.num_classes)
        return convs + sum(_dense(a, b) for a, b in itertools.pairwise(widths))
    d, mlp = config.hidden_size, max(1, round(config.hidden_size * config.mlp_ratio))
    tail = 2 * d + _dense(d, config.num_classes)
    if isinstance(config, ViTConfig):
        patch = config.patch_size**2 * config.input_shape[-1]
        return _dense(patch, d) + config.num_patches * d + config.num_layers * _block(d, mlp) + tail
    t = config.num_tokens  # HAMNetConfig
    token = max(1, round(t * config.mlp_ratio))
    mixer = 4 * d + _dense(t, token) + _dense(token, t) + _dense(d, mlp) + _dense(mlp, d)
    layers = sum(_block(d, mlp) if kind == "attention" else mixer for kind in config.layer_kinds)
    return _dense(config.input_size // t, d) + t * d + layers + tail


def _scaled(n: int, ratio: float, multiple: int = 1) -> int:
    return max(multiple, round(n * ratio / multiple) * multiple)


def _kept(n: int, ratio: float) -> int:
    return max(1, min(n, round(n * ratio)))


def _shrunk(config, width: float, depth: float):
    if isinstance(config, MLPConfig):
        hidden = config.sizes[1:-1]
        kept = hidden[: _kept(len(hidden), depth)] if hidden else ()
        return dataclasses.replace(
            config, sizes=(config.sizes[0], *(_scaled(w, width) for w in kept), config.sizes[-1])
        )
    if isinstance(config, CNNConfig):
        channels = config.channels[: _kept(len(config.channels), depth)]
        dense = config.dense[: _kept(len(config.dense), depth)] if config.dense else ()
        return dataclasses.replace(
            config,
            channels=tuple(_scaled(c, width) for c in channels),
            dense=tuple(_scaled(w, width) for w in dense),
        )
    heads = config.num_heads
    return dataclasses.replace(
        config,
        hidden_size=_scaled(config.hidden_size, width, heads),
        num_layers=_kept(config.num_layers, depth),
    )


def make_student(config, *, width_ratio: float | None = None, depth_ratio: float = 1.0, param_ratio=None):
    """The config of a smaller model of the same family, for distillation.

    Widths (hidden sizes, channels, the ViT and HAMNet token width) are
    multiplied by ``width_ratio`` and rounded (token widths to a multiple of
    the head count, so heads keep their number and get narrower); depth
    (hidden layers, conv stages and dense layers, transformer layers) by
    ``depth_ratio``, keeping the first layers and at least one. Inputs and
    classes do not change. Given ``param_ratio`` instead of
    ``width_ratio``, the width ratio is searched (bisection on the exact
    parameter count) so that the student has about that fraction of the
    teacher's parameters.

    Args:
      config: a reference model config (see :func:`from_config`).
      width_ratio: in ``(0, 1]``; exclusive with ``param_ratio``.
      depth_ratio: in ``(0, 1]``.
      param_ratio: the wanted parameter fraction, in ``(0, 1]``.

    Returns:
      The student's config, of the same class as ``config``.

    Raises:
      ValueError: for a ratio outside ``(0, 1]``, both or neither of
        ``width_ratio`` and ``param_ratio``, or a ``param_ratio`` that the
        depth leaves out of reach.
      TypeError: for a config that is not a reference model's.

    Examples:
      >>> from hamjax.models import MLPConfig, make_student
      >>> make_student(MLPConfig(sizes=(784, 512, 512, 10)), width_ratio=0.25).sizes
      (784, 128, 128, 10)
      >>> make_student(MLPConfig(sizes=(784, 512, 512, 10)), param_ratio=0.25).sizes
      (784, 173, 173, 10)
    """
    if not isinstance(config, tuple(c for c, _ in _CLASSES)):
        raise TypeError(f"make_student: expected a reference model config, got {type(config).__name__}")
    if (width_ratio is None) == (param_ratio is None):
        raise ValueError(
            f"make_student: give exactly one of width_ratio and param_ratio, got {width_ratio!r} and {param_ratio!r}"
        )
    given = {"width_ratio": width_ratio, "depth_ratio": depth_ratio, "param_ratio": param_ratio}
    for name, value in given.items():
        if value is None and name != "depth_ratio":
            continue
        if isinstance(value, bool) or not (isinstance(value, int | float | np.floating) and 0 < value <= 1):
            raise ValueError(f"make_student: {name}={value!r}; expected a number in (0, 1]")
    if width_ratio is not None:
        return _shrunk(config, width_ratio, depth_ratio)
    goal = param_ratio * param_count(config)
    low, high = 0.0, 1.0
    if param_count(_shrunk(config, high, depth_ratio)) < goal:
        raise ValueError(
            f"make_student: param_ratio={param_ratio} is out of reach with depth_ratio={depth_ratio} "
            f"(full width gives {param_count(_shrunk(config, 1.0, depth_ratio)) / param_count(config):.3f})"
        )
    for _ in range(30):
        mid = (low + high) / 2
        low, high = (mid, high) if param_count(_shrunk(config, mid, depth_ratio)) < goal else (low, mid)
    below, above = _shrunk(config, low, depth_ratio), _shrunk(config, high, depth_ratio)
    return min((below, above), key=lambda c: abs(param_count(c) - goal))
