"""Stochastic depth for residual blocks: :class:`DropPath` and the per-block rates of a model."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


def drop_path_rates(rate: float, num_blocks: int) -> tuple[float, ...]:
    """The linear rule of Huang et al. 2016: block ``i`` (from 0) drops with ``rate * (i + 1) / num_blocks``.

    The last block drops its branch with probability ``rate``; earlier ones,
    whose features more blocks build on, less often.

    Args:
      rate: the last block's rate, in ``[0, 1)``.
      num_blocks: the number of residual blocks.

    Returns:
      One rate per block.

    Examples:
      >>> drop_path_rates(0.2, 4)
      (0.05, 0.1, 0.15, 0.2)
    """
    return tuple(round(rate * (i + 1) / num_blocks, 12) for i in range(num_blocks))


class DropPath(nnx.Module):
    """Drops a residual branch per example: ``x * mask / (1 - rate)`` with ``mask ~ Bernoulli(1 - rate)`` of shape ``(N, 1, ...)``.

    In a block ``x + drop_path(branch(x))``, each example skips the branch
    with probability ``rate`` in train mode (timm's ``drop_path``); in eval
    mode (``deterministic=True``, set by ``nnx.view`` and by
    :func:`hamjax.functional`) and at rate 0 it returns its input unchanged,
    adding nothing to the graph.

    Args:
      rate: the drop probability, in ``[0, 1)``.
      deterministic: the default mode; ``nnx.view(module, deterministic=...)`` sets it.
      rngs: ``nnx.Rngs`` or an ``nnx.RngStream`` to fork the mask stream from.

    Examples:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from hamjax.models.residual import DropPath
      >>> layer = DropPath(0.5, rngs=nnx.Rngs(0))
      >>> y = layer(jnp.ones((8, 3, 2)))
      >>> sorted(set(y.reshape(8, -1).max(axis=1).tolist()) | set(y.reshape(8, -1).min(axis=1).tolist()))
      [0.0, 2.0]
      >>> layer(jnp.ones((2, 3)), deterministic=True).tolist()
      [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]]

    References:
      Huang et al., "Deep Networks with Stochastic Depth", ECCV 2016.
      https://arxiv.org/abs/1603.09382
    """

    def __init__(
        self, rate: float, *, deterministic: bool = False, rngs: nnx.Rngs | nnx.RngStream, rng_collection="dropout"
    ):
        if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0.0 <= rate < 1.0:
            raise ValueError(f"DropPath: rate must be a number in [0, 1), got {rate!r}")
        self.rate = float(rate)
        self.deterministic = deterministic
        self.rngs = rngs[rng_collection].fork() if isinstance(rngs, nnx.Rngs) else rngs.fork()

    def __call__(self, x: jax.Array, *, deterministic: bool | None = None) -> jax.Array:
        """``x`` with whole examples zeroed and the rest scaled by ``1 / (1 - rate)`` (train mode)."""
        deterministic = self.deterministic if deterministic is None else deterministic
        if deterministic or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        mask = jax.random.bernoulli(self.rngs(), keep, (x.shape[0],) + (1,) * (x.ndim - 1))
        return jnp.where(mask, x / jnp.asarray(keep, x.dtype), jnp.zeros((), x.dtype))

    def set_view(self, deterministic: bool | None = None):
        """Set the mode for ``nnx.view``.

        Args:
          deterministic: ``True`` for eval mode (no drops).
        """
        if deterministic is not None:
            self.deterministic = deterministic
