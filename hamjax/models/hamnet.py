"""HAMNet: a hybrid of self-attention and MLP-Mixer token mixing over a flat input."""

from __future__ import annotations

import dataclasses
import math

import jax
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from hamjax.models import _validate
from hamjax.models.residual import DropPath, drop_path_rates
from hamjax.models.vit import Block, FeedForward


@dataclasses.dataclass(frozen=True)
class HAMNetConfig:
    """Configuration of :class:`HAMNet`.

    Attributes:
      hidden_size: token width; divisible by ``num_heads``.
      num_layers: number of layers.
      input_size: values per example (``H * W * C``); divisible by ``num_tokens``.
      num_heads: heads of the attention layers.
      dropout_rate: dropout on embeddings and residual branches, in ``[0, 1)``.
      num_tokens: the flat input is cut into this many equal chunks.
      mlp_ratio: channel MLP width is ``round(hidden_size * mlp_ratio)`` and
        token MLP width ``round(num_tokens * mlp_ratio)``.
      attention_every: layer ``i`` mixes tokens with attention when
        ``i % attention_every == 0``, else with a token MLP.
      num_classes: number of logits.
      drop_path: stochastic depth, in ``[0, 1)``: in train mode layer ``i``
        (from 0) of ``L`` skips each residual branch per example with
        probability ``drop_path * (i + 1) / L`` (linear in depth); eval mode
        is unchanged.

    Examples:
      >>> from hamjax.models import HAMNetConfig
      >>> HAMNetConfig(input_size=64, num_tokens=8).layer_kinds
      ('attention', 'mixer', 'attention', 'mixer')
    """

    hidden_size: int = 64
    num_layers: int = 4
    input_size: int = 784
    num_heads: int = 4
    dropout_rate: float = 0.0
    num_tokens: int = 16
    mlp_ratio: float = 2
    attention_every: int = 2
    num_classes: int = 10
    drop_path: float = 0.0

    def __post_init__(self):
        for name in ("hidden_size", "num_layers", "input_size", "num_heads", "num_tokens", "attention_every"):
            _validate.positive_int("HAMNetConfig", name, getattr(self, name))
        _validate.positive_int("HAMNetConfig", "num_classes", self.num_classes)
        _validate.positive_number("HAMNetConfig", "mlp_ratio", self.mlp_ratio)
        _validate.rate("HAMNetConfig", "dropout_rate", self.dropout_rate)
        _validate.rate("HAMNetConfig", "drop_path", self.drop_path)
        if self.input_size % self.num_tokens:
            raise ValueError(
                f"HAMNetConfig.input_size={self.input_size}: expected a multiple of num_tokens={self.num_tokens}"
            )
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"HAMNetConfig.hidden_size={self.hidden_size}: expected a multiple of num_heads={self.num_heads}"
            )

    @property
    def layer_kinds(self) -> tuple[str, ...]:
        """``"attention"`` or ``"mixer"`` for each layer, in order."""
        return tuple("attention" if i % self.attention_every == 0 else "mixer" for i in range(self.num_layers))


class MixerBlock(nnx.Module):
    """MLP-Mixer layer: ``x + token_mlp(norm1(x))`` across tokens, then ``x + mlp(norm2(x))``.

    Parameter paths: ``norm1``, ``token_mlp/{fc1,fc2}`` (acting on the token
    axis), ``norm2``, ``mlp/{fc1,fc2}`` (acting on channels).

    Args:
      num_tokens: number of tokens ``T``.
      hidden_size: token width.
      token_hidden: inner width of the token MLP.
      mlp_hidden: inner width of the channel MLP.
      dropout_rate: dropout on both residual branches and inside the MLPs.
      rngs: ``nnx.Rngs``.
      drop_path: the probability of skipping each residual branch per example (train mode), in ``[0, 1)``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from hamjax.models.hamnet import MixerBlock
      >>> MixerBlock(4, 8, 8, 16, 0.0, rngs=nnx.Rngs(0))(jnp.ones((2, 4, 8))).shape
      (2, 4, 8)
    """

    def __init__(
        self,
        num_tokens: int,
        hidden_size: int,
        token_hidden: int,
        mlp_hidden: int,
        dropout_rate: float,
        *,
        rngs,
        drop_path: float = 0.0,
    ):
        self.norm1 = nnx.LayerNorm(hidden_size, rngs=rngs)
        self.token_mlp = FeedForward(num_tokens, token_hidden, dropout_rate, rngs=rngs)
        self.norm2 = nnx.LayerNorm(hidden_size, rngs=rngs)
        self.mlp = FeedForward(hidden_size, mlp_hidden, dropout_rate, rngs=rngs)
        self.dropout = nnx.Dropout(dropout_rate, rngs=rngs)
        self.drop_path = DropPath(drop_path, rngs=self.dropout.rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Apply the layer: ``(N, T, hidden) -> (N, T, hidden)``."""
        mixed = self.token_mlp(self.norm1(x).transpose(0, 2, 1)).transpose(0, 2, 1)
        x = x + self.drop_path(self.dropout(mixed))
        return x + self.drop_path(self.dropout(self.mlp(self.norm2(x))))


class HAMNet(nnx.Module):
    """Hybrid attention/MLP classifier over a flattened input.

    The flat input ``(N, input_size)`` is cut into ``num_tokens`` chunks,
    each projected by ``embed`` (an ``nnx.Linear(input_size // num_tokens,
    hidden)``) plus a learned ``pos_embed`` ``(1, T, hidden)``. Layer ``i``
    (``layers/{i}``) is a ViT :class:`~hamjax.models.vit.Block` (attention
    kernels at ``layers/{i}/attn/query/kernel`` etc., head-major) when
    ``i % attention_every == 0``, else a :class:`MixerBlock`; both end in a
    channel MLP with a residual. Tokens are mean-pooled, normalized by
    ``norm`` and classified by ``head``.

    Named intermediates (:mod:`hamjax.jaxpr.intermediates`): ``layers/{i}`` (each
    layer's output, ``(N, T, hidden)``), ``layers/{i}/attention`` (the
    attention probabilities of attention layers, ``(N, heads, T, T)``) and
    ``embedding`` (the normalized pooled tokens, ``(N, hidden)``). Token
    merging (:func:`hamjax.graph.merge_tokens`) merges inside attention
    layers (``layers/{i}/attention/merge``) and restores the token count at
    ``layers/{i}/unmerge`` after the last of a run of attention layers,
    since a mixer layer's weights span the token axis.

    Args:
      config: a :class:`HAMNetConfig`.
      rngs: ``nnx.Rngs`` for initialization and dropout.

    Examples:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from hamjax.models import HAMNet, HAMNetConfig
      >>> cfg = HAMNetConfig(hidden_size=16, num_layers=2, input_size=64, num_tokens=8)
      >>> HAMNet(cfg, rngs=nnx.Rngs(0))(jnp.ones((2, 8, 8, 1))).shape
      (2, 10)
    """

    def __init__(self, config: HAMNetConfig, *, rngs: nnx.Rngs):
        self.config = config
        d, t = config.hidden_size, config.num_tokens
        self.embed = nnx.Linear(config.input_size // t, d, rngs=rngs)
        self.pos_embed = nnx.Param(nnx.initializers.normal(0.02)(rngs.params(), (1, t, d)))
        mlp_hidden = max(1, round(d * config.mlp_ratio))
        token_hidden = max(1, round(t * config.mlp_ratio))
        rate = config.dropout_rate
        paths = drop_path_rates(config.drop_path, config.num_layers)
        self.layers = nnx.List(
            [
                Block(d, config.num_heads, mlp_hidden, rate, rngs=rngs, tap=f"layers/{i}/attention", drop_path=paths[i])
                if kind == "attention"
                else MixerBlock(t, d, token_hidden, mlp_hidden, rate, rngs=rngs, drop_path=paths[i])
                for i, kind in enumerate(config.layer_kinds)
            ]
        )
        self.norm = nnx.LayerNorm(d, rngs=rngs)
        self.head = nnx.Linear(d, config.num_classes, rngs=rngs)
        self.dropout = nnx.Dropout(rate, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Classify a batch.

        Args:
          x: ``(N, ...)`` float32 with ``prod(x.shape[1:]) == input_size``.

        Returns:
          ``(N, num_classes)`` logits.
        """
        features = math.prod(x.shape[1:])
        if features != self.config.input_size:
            raise ValueError(
                f"HAMNet: input x has shape {tuple(x.shape)} ({features} features per example), "
                f"expected input_size={self.config.input_size}"
            )
        x = x.reshape(x.shape[0], self.config.num_tokens, -1)
        x = self.dropout(self.embed(x) + self.pos_embed[...])
        kinds = self.config.layer_kinds
        for i, layer in enumerate(self.layers):
            x = checkpoint_name(layer(x), f"layers/{i}")
            if kinds[i] == "attention" and kinds[i + 1 : i + 2] != ("attention",):
                # Token mixing and mean pooling need one row per input chunk again.
                x = checkpoint_name(x, f"layers/{i}/unmerge")
        return self.head(checkpoint_name(self.norm(x.mean(axis=1)), "embedding"))
