"""A multilayer perceptron over flattened images."""

from __future__ import annotations

import dataclasses
import itertools
import math

import jax
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from hamjax.models import _validate

ACTIVATIONS = {"relu": jax.nn.relu, "gelu": jax.nn.gelu, "tanh": jax.nn.tanh, "silu": jax.nn.silu}


@dataclasses.dataclass(frozen=True)
class MLPConfig:
    """Configuration of :class:`MLP`.

    Attributes:
      sizes: layer widths, input first and classes last; ``sizes[0]`` must
        equal the number of values in one input example (``H * W * C``).
      activation: one of ``"relu"``, ``"gelu"``, ``"tanh"``, ``"silu"``.
      dropout_rate: dropout after every hidden activation, in ``[0, 1)``.

    Examples:
      >>> from hamjax.models import MLPConfig
      >>> MLPConfig(sizes=(64, 32, 10)).sizes
      (64, 32, 10)
    """

    sizes: tuple[int, ...] = (784, 512, 512, 10)
    activation: str = "relu"
    dropout_rate: float = 0.0

    def __post_init__(self):
        _validate.positive_ints("MLPConfig", "sizes", self.sizes, min_len=2)
        object.__setattr__(self, "sizes", tuple(self.sizes))
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"MLPConfig.activation={self.activation!r}: expected one of {sorted(ACTIVATIONS)}")
        _validate.rate("MLPConfig", "dropout_rate", self.dropout_rate)


class MLP(nnx.Module):
    """Fully connected classifier: ``Linear -> act -> dropout`` per hidden layer.

    Parameters live at ``layers/{i}/kernel`` with shape ``(sizes[i], sizes[i+1])``
    and ``layers/{i}/bias`` with shape ``(sizes[i+1],)``. Named intermediates
    (:mod:`hamjax.jaxpr.intermediates`): ``hidden/{i}``, the activation of hidden
    layer ``i`` ``(N, sizes[i+1])``, and ``embedding``, the last of them.

    Args:
      config: an :class:`MLPConfig`.
      rngs: ``nnx.Rngs`` for initialization and dropout.

    Examples:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from hamjax.models import MLP, MLPConfig
      >>> model = MLP(MLPConfig(sizes=(64, 32, 10)), rngs=nnx.Rngs(0))
      >>> model(jnp.ones((2, 8, 8, 1))).shape
      (2, 10)
    """

    def __init__(self, config: MLPConfig, *, rngs: nnx.Rngs):
        self.config = config
        sizes = config.sizes
        self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in itertools.pairwise(sizes)])
        self.dropout = nnx.Dropout(config.dropout_rate, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Classify a batch.

        Args:
          x: ``(N, ...)`` float32 with ``prod(x.shape[1:]) == sizes[0]``.

        Returns:
          ``(N, sizes[-1])`` logits.
        """
        features = math.prod(x.shape[1:])
        if features != self.config.sizes[0]:
            raise ValueError(
                f"MLP: input x has shape {tuple(x.shape)} ({features} features per example), "
                f"expected sizes[0]={self.config.sizes[0]} features"
            )
        act = ACTIVATIONS[self.config.activation]
        x = x.reshape(x.shape[0], features)
        for i, layer in enumerate(self.layers[:-1]):
            x = self.dropout(checkpoint_name(act(layer(x)), f"hidden/{i}"))
        return self.layers[-1](checkpoint_name(x, "embedding"))
