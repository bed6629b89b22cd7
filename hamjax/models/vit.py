"""A small Vision Transformer, and the attention block it shares with HAMNet."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from hamjax.models import _validate
from hamjax.models.residual import DropPath, drop_path_rates


class SelfAttention(nnx.Module):
    """Multi-head self-attention with separate, head-major projections.

    ``query``, ``key`` and ``value`` are ``nnx.Linear(hidden, hidden)``; column
    ``h * head_dim + d`` of their kernels is dimension ``d`` of head ``h``, and
    row ``h * head_dim + d`` of ``out/kernel`` reads it back, so removing head
    ``h`` means slicing those columns and rows. Attention itself is
    ``softmax(Q K^T / sqrt(head_dim)) V`` with the softmax in float32; the
    probabilities ``(N, heads, T, T)`` are marked with ``checkpoint_name``
    as ``tap`` so that :func:`hamjax.jaxpr.capture` can read them
    (attention transfer), the keys ``(N, T, heads, head_dim)`` as
    ``tap + "/keys"`` and the scores before the softmax as ``tap + "/logits"``
    (token merging, :mod:`hamjax.graph.tome`).

    Args:
      hidden_size: model width; divisible by ``num_heads``.
      num_heads: number of heads.
      rngs: ``nnx.Rngs``.
      tap: the name of the attention probabilities.

    Examples:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from hamjax.models.vit import SelfAttention
      >>> SelfAttention(8, 2, rngs=nnx.Rngs(0))(jnp.ones((3, 5, 8))).shape
      (3, 5, 8)
    """

    def __init__(self, hidden_size: int, num_heads: int, *, rngs: nnx.Rngs, tap: str = "attention"):
        if hidden_size % num_heads:
            raise ValueError(f"SelfAttention: hidden_size={hidden_size} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.tap = tap
        self.query = nnx.Linear(hidden_size, hidden_size, rngs=rngs)
        self.key = nnx.Linear(hidden_size, hidden_size, rngs=rngs)
        self.value = nnx.Linear(hidden_size, hidden_size, rngs=rngs)
        self.out = nnx.Linear(hidden_size, hidden_size, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Attend over tokens: ``(N, T, hidden) -> (N, T, hidden)``."""
        n, t, _ = x.shape
        heads = self.num_heads
        q, k, v = (proj(x).reshape(n, t, heads, -1) for proj in (self.query, self.key, self.value))
        k = checkpoint_name(k, f"{self.tap}/keys")
        scores = checkpoint_name(jnp.einsum("nthd,nshd->nhts", q, k) / math.sqrt(q.shape[-1]), f"{self.tap}/logits")
        probs = checkpoint_name(jax.nn.softmax(scores.astype(jnp.float32), axis=-1).astype(q.dtype), self.tap)
        y = jnp.einsum("nhts,nshd->nthd", probs, v)
        return self.out(y.reshape(n, t, -1))


class FeedForward(nnx.Module):
    """Two-layer MLP ``fc1 -> gelu -> dropout -> fc2`` on the last axis.

    Args:
      features: input and output width.
      hidden: inner width.
      dropout_rate: dropout after the activation.
      rngs: ``nnx.Rngs``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from hamjax.models.vit import FeedForward
      >>> FeedForward(4, 8, 0.0, rngs=nnx.Rngs(0))(jnp.ones((2, 4))).shape
      (2, 4)
    """

    def __init__(self, features: int, hidden: int, dropout_rate: float, *, rngs: nnx.Rngs):
        self.fc1 = nnx.Linear(features, hidden, rngs=rngs)
        self.fc2 = nnx.Linear(hidden, features, rngs=rngs)
        self.dropout = nnx.Dropout(dropout_rate, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Apply the MLP: ``(..., features) -> (..., features)``."""
        return self.fc2(self.dropout(jax.nn.gelu(self.fc1(x))))


class Block(nnx.Module):
    """Pre-LN transformer block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``.

    With ``drop_path > 0`` each residual branch is dropped per example in
    train mode (:class:`~hamjax.models.residual.DropPath`, stochastic depth).
    Parameter paths: ``norm1``, ``attn/{query,key,value,out}``, ``norm2``,
    ``mlp/{fc1,fc2}``, each with ``kernel``/``bias`` (norms: ``scale``/``bias``).
    The token stream after the attention's residual add is marked
    ``tap + "/merge"``, where token merging (:mod:`hamjax.graph.tome`)
    merges tokens.

    Args:
      hidden_size: model width.
      num_heads: attention heads.
      mlp_hidden: inner width of the MLP.
      dropout_rate: dropout on both residual branches and inside the MLP.
      rngs: ``nnx.Rngs``.
      tap: the name of the attention probabilities (see :class:`SelfAttention`).
      drop_path: the probability of skipping each residual branch per example (train mode), in ``[0, 1)``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from hamjax.models.vit import Block
      >>> Block(8, 2, 16, 0.0, rngs=nnx.Rngs(0))(jnp.ones((1, 4, 8))).shape
      (1, 4, 8)
    """

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        mlp_hidden: int,
        dropout_rate: float,
        *,
        rngs: nnx.Rngs,
        tap: str = "attention",
        drop_path: float = 0.0,
    ):
        self.norm1 = nnx.LayerNorm(hidden_size, rngs=rngs)
        self.attn = SelfAttention(hidden_size, num_heads, rngs=rngs, tap=tap)
        self.norm2 = nnx.LayerNorm(hidden_size, rngs=rngs)
        self.mlp = FeedForward(hidden_size, mlp_hidden, dropout_rate, rngs=rngs)
        self.dropout = nnx.Dropout(dropout_rate, rngs=rngs)
        # Forked from the dropout's stream, not from rngs: the params drawn after this block stay as they were.
        self.drop_path = DropPath(drop_path, rngs=self.dropout.rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Apply the block: ``(N, T, hidden) -> (N, T, hidden)``."""
        x = checkpoint_name(x + self.drop_path(self.dropout(self.attn(self.norm1(x)))), f"{self.attn.tap}/merge")
        return x + self.drop_path(self.dropout(self.mlp(self.norm2(x))))


@dataclasses.dataclass(frozen=True)
class ViTConfig:
    """Configuration of :class:`ViT`.

    Attributes:
      input_shape: ``(H, W, C)``; ``patch_size`` must divide ``H`` and ``W``.
      patch_size: side of the square, non-overlapping patches.
      hidden_size: token width; divisible by ``num_heads``.
      num_layers: number of transformer blocks.
      num_heads: attention heads per block.
      mlp_ratio: MLP inner width is ``round(hidden_size * mlp_ratio)``.
      num_classes: number of logits.
      dropout_rate: dropout on embeddings and residual branches, in ``[0, 1)``.
      drop_path: stochastic depth, in ``[0, 1)``: in train mode block ``i``
        (from 0) of ``L`` skips each residual branch per example with
        probability ``drop_path * (i + 1) / L`` (linear in depth, the last
        block at ``drop_path``); eval mode is unchanged.

    Examples:
      >>> from hamjax.models import ViTConfig
      >>> ViTConfig(input_shape=(8, 8, 1), patch_size=4).num_patches
      4
    """

    input_shape: tuple[int, int, int] = (28, 28, 1)
    patch_size: int = 7
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    mlp_ratio: float = 2
    num_classes: int = 10
    dropout_rate: float = 0.0
    drop_path: float = 0.0

    def __post_init__(self):
        _validate.image_shape("ViTConfig", "input_shape", self.input_shape)
        object.__setattr__(self, "input_shape", tuple(self.input_shape))
        for name in ("patch_size", "hidden_size", "num_layers", "num_heads", "num_classes"):
            _validate.positive_int("ViTConfig", name, getattr(self, name))
        _validate.positive_number("ViTConfig", "mlp_ratio", self.mlp_ratio)
        _validate.rate("ViTConfig", "dropout_rate", self.dropout_rate)
        _validate.rate("ViTConfig", "drop_path", self.drop_path)
        h, w, _ = self.input_shape
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(
                f"ViTConfig.patch_size={self.patch_size}: expected a divisor of the image height and width "
                f"of input_shape={self.input_shape!r}"
            )
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"ViTConfig.hidden_size={self.hidden_size}: expected a multiple of num_heads={self.num_heads}"
            )

    @property
    def num_patches(self) -> int:
        """Number of tokens: ``(H // patch_size) * (W // patch_size)``."""
        h, w, _ = self.input_shape
        return (h // self.patch_size) * (w // self.patch_size)


def patchify(x: jax.Array, patch_size: int) -> jax.Array:
    """Cut images into flattened non-overlapping patches, row-major.

    Args:
      x: ``(N, H, W, C)`` with ``patch_size`` dividing ``H`` and ``W``.
      patch_size: patch side ``p``.

    Returns:
      ``(N, (H // p) * (W // p), p * p * C)``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from hamjax.models.vit import patchify
      >>> patchify(jnp.ones((2, 8, 8, 3)), 4).shape
      (2, 4, 48)
    """
    n, h, w, c = x.shape
    p = patch_size
    x = x.reshape(n, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(n, (h // p) * (w // p), p * p * c)


class ViT(nnx.Module):
    """Vision Transformer classifier with mean pooling over tokens (no CLS token).

    Patches (:func:`patchify`) go through ``patch_embed`` (an ``nnx.Linear``),
    plus a learned ``pos_embed`` ``(1, T, hidden)``; then ``blocks/{i}`` (see
    :class:`Block`; attention kernels at ``blocks/{i}/attn/query/kernel`` etc.,
    ``(hidden, hidden)``, head-major), the mean over tokens, ``norm`` and
    ``head``. Mean pooling keeps every token's output in the loss and avoids
    a concatenation in the exported graph.

    Named intermediates (:mod:`hamjax.jaxpr.intermediates`): ``blocks/{i}`` (each
    block's output, ``(N, T, hidden)``), ``blocks/{i}/attention`` (its
    attention probabilities, ``(N, heads, T, T)``) and ``embedding`` (the
    normalized pooled tokens, ``(N, hidden)``); token merging
    (:func:`hamjax.graph.merge_tokens`) reads ``blocks/{i}/attention/keys``,
    ``.../logits``, ``.../merge`` and ``unmerge`` (before pooling).

    Args:
      config: a :class:`ViTConfig`.
      rngs: ``nnx.Rngs`` for initialization and dropout.

    Examples:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from hamjax.models import ViT, ViTConfig
      >>> model = ViT(ViTConfig(input_shape=(8, 8, 1), patch_size=4, hidden_size=16), rngs=nnx.Rngs(0))
      >>> model(jnp.ones((2, 8, 8, 1))).shape
      (2, 10)
    """

    def __init__(self, config: ViTConfig, *, rngs: nnx.Rngs):
        self.config = config
        c, d = config.input_shape[-1], config.hidden_size
        self.patch_embed = nnx.Linear(config.patch_size**2 * c, d, rngs=rngs)
        self.pos_embed = nnx.Param(nnx.initializers.normal(0.02)(rngs.params(), (1, config.num_patches, d)))
        mlp_hidden = max(1, round(d * config.mlp_ratio))
        rates = drop_path_rates(config.drop_path, config.num_layers)
        self.blocks = nnx.List(
            [
                Block(
                    d,
                    config.num_heads,
                    mlp_hidden,
                    config.dropout_rate,
                    rngs=rngs,
                    tap=f"blocks/{i}/attention",
                    drop_path=rates[i],
                )
                for i in range(config.num_layers)
            ]
        )
        self.norm = nnx.LayerNorm(d, rngs=rngs)
        self.head = nnx.Linear(d, config.num_classes, rngs=rngs)
        self.dropout = nnx.Dropout(config.dropout_rate, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Classify a batch.

        Args:
          x: ``(N, H, W, C)`` float32 matching ``config.input_shape``.

        Returns:
          ``(N, num_classes)`` logits.
        """
        _validate.check_input("ViT", x, self.config.input_shape)
        x = self.dropout(self.patch_embed(patchify(x, self.config.patch_size)) + self.pos_embed[...])
        for i, block in enumerate(self.blocks):
            x = checkpoint_name(block(x), f"blocks/{i}")
        # Merged tokens go back to one row per patch, so the mean below is the size-weighted mean.
        x = checkpoint_name(x, "unmerge")
        return self.head(checkpoint_name(self.norm(x.mean(axis=1)), "embedding"))
