"""A LeNet-style convolutional network with batch norm."""

from __future__ import annotations

import dataclasses
import itertools

import jax
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from hamjax.models import _validate


def max_pool_2x2(x: jax.Array) -> jax.Array:
    """2x2 max pooling with stride 2 by reshape and max (exports cleanly to ONNX).

    An odd trailing row or column is dropped, as in ``VALID`` pooling.

    Args:
      x: ``(N, H, W, C)``.

    Returns:
      ``(N, H // 2, W // 2, C)``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from hamjax.models.cnn import max_pool_2x2
      >>> max_pool_2x2(jnp.arange(16.0).reshape(1, 4, 4, 1))[0, :, :, 0].tolist()
      [[5.0, 7.0], [13.0, 15.0]]
    """
    n, h, w, c = x.shape
    x = x[:, : h // 2 * 2, : w // 2 * 2, :]
    return x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


@dataclasses.dataclass(frozen=True)
class CNNConfig:
    """Configuration of :class:`CNN`.

    Attributes:
      input_shape: ``(H, W, C)`` of one image.
      channels: output channels of each conv stage; each stage halves H and W,
        so the image must stay at least 2x2 before every pool.
      kernel_size: square conv kernel size.
      dense: widths of the hidden dense layers after the conv stages.
      num_classes: number of logits.
      dropout_rate: dropout after every hidden dense layer, in ``[0, 1)``.

    Examples:
      >>> from hamjax.models import CNNConfig
      >>> CNNConfig(input_shape=(8, 8, 1), channels=(8, 16)).dense
      (120, 84)
    """

    input_shape: tuple[int, int, int] = (28, 28, 1)
    channels: tuple[int, ...] = (6, 16)
    kernel_size: int = 5
    dense: tuple[int, ...] = (120, 84)
    num_classes: int = 10
    dropout_rate: float = 0.0

    def __post_init__(self):
        _validate.image_shape("CNNConfig", "input_shape", self.input_shape)
        _validate.positive_ints("CNNConfig", "channels", self.channels, min_len=1)
        _validate.positive_int("CNNConfig", "kernel_size", self.kernel_size)
        _validate.positive_ints("CNNConfig", "dense", self.dense)
        _validate.positive_int("CNNConfig", "num_classes", self.num_classes)
        _validate.rate("CNNConfig", "dropout_rate", self.dropout_rate)
        for name in ("input_shape", "channels", "dense"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        h, w, _ = self.input_shape
        for stage in range(len(self.channels)):
            if h < 2 or w < 2:
                raise ValueError(
                    f"CNNConfig.channels={self.channels!r}: {len(self.channels)} pooling stages shrink "
                    f"input_shape={self.input_shape!r} below 2x2 at stage {stage}; expected fewer stages"
                )
            h, w = h // 2, w // 2

    @property
    def flat_features(self) -> int:
        """Number of features entering the first dense layer."""
        h, w, _ = self.input_shape
        for _ in self.channels:
            h, w = h // 2, w // 2
        return h * w * self.channels[-1]


class CNN(nnx.Module):
    """LeNet-like classifier: per stage ``Conv(SAME) -> BatchNorm -> relu -> 2x2 max pool``, then dense layers.

    Parameter paths: ``convs/{i}/kernel`` ``(k, k, C_in, C_out)`` and
    ``convs/{i}/bias``; ``norms/{i}/scale|bias`` (params) and
    ``norms/{i}/mean|var`` (batch stats); ``dense/{j}/kernel|bias`` for the
    hidden dense layers; ``head/kernel|bias`` for the classifier. Named
    intermediates (:mod:`hamjax.jaxpr.intermediates`): ``features/{i}``, stage
    ``i``'s pooled maps ``(N, H_i, W_i, C_i)``; ``hidden/{j}``, dense layer
    ``j``'s activation; ``embedding``, what the head reads.

    Args:
      config: a :class:`CNNConfig`.
      rngs: ``nnx.Rngs`` for initialization and dropout.

    Examples:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from hamjax.models import CNN, CNNConfig
      >>> model = CNN(CNNConfig(input_shape=(8, 8, 1), channels=(8, 16)), rngs=nnx.Rngs(0))
      >>> model(jnp.ones((2, 8, 8, 1))).shape
      (2, 10)
    """

    def __init__(self, config: CNNConfig, *, rngs: nnx.Rngs):
        self.config = config
        k = config.kernel_size
        in_channels = (config.input_shape[-1], *config.channels[:-1])
        self.convs = nnx.List(
            [
                nnx.Conv(a, b, kernel_size=(k, k), padding="SAME", rngs=rngs)
                for a, b in zip(in_channels, config.channels, strict=True)
            ]
        )
        self.norms = nnx.List([nnx.BatchNorm(c, rngs=rngs) for c in config.channels])
        widths = (config.flat_features, *config.dense)
        self.dense = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in itertools.pairwise(widths)])
        self.head = nnx.Linear(widths[-1], config.num_classes, rngs=rngs)
        self.dropout = nnx.Dropout(config.dropout_rate, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Classify a batch.

        Args:
          x: ``(N, H, W, C)`` float32 matching ``config.input_shape``.

        Returns:
          ``(N, num_classes)`` logits.
        """
        _validate.check_input("CNN", x, self.config.input_shape)
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms, strict=True)):
            x = checkpoint_name(max_pool_2x2(jax.nn.relu(norm(conv(x)))), f"features/{i}")
        x = x.reshape(x.shape[0], -1)
        for i, layer in enumerate(self.dense):
            x = self.dropout(checkpoint_name(jax.nn.relu(layer(x)), f"hidden/{i}"))
        return self.head(checkpoint_name(x, "embedding"))
