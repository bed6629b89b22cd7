"""Bipartite soft matching: which tokens merge, their size-weighted average, and where each token goes.

The numerics of token merging (:mod:`hamjax.graph.tome`), on arrays with
a leading batch axis and static token counts, so every shape is known at
trace time and the ops lower to ONNX (top-k, gathers, matrix products;
no scatter):

* :func:`bipartite_matching` splits ``T`` tokens into the even positions
  ``A`` (``ceil(T / 2)``) and the odd positions ``B`` (``floor(T / 2)``),
  links every ``A`` token to its most similar ``B`` token (cosine
  similarity of the metric) and picks the ``r`` links with the highest
  similarity: those ``A`` tokens merge into their ``B`` partner.
* :func:`weighted_merge` averages the merged tokens by size (how many
  original tokens each one stands for), giving ``T - r`` tokens laid out
  as ``[unmerged A tokens, B tokens]``.
* :func:`merged_positions` says where each of the ``T`` tokens sits among
  the ``T - r``, so a model can go back to its original token count.

References:
  Bolya, Fu, Dai, Zhang, Feichtenhofer, Hoffman. Token Merging: Your ViT
  But Faster. ICLR 2023.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["Matching", "bipartite_matching", "merged_positions", "weighted_merge"]


class Matching(NamedTuple):
    """Which tokens of ``A`` (the even positions) merge, and into which token of ``B`` (the odd positions).

    Attributes:
      unmerged: ``(N, ceil(T / 2) - r)`` int32, the ``A`` indices that stay,
        most similar first.
      merged: ``(N, r)`` int32, the ``A`` indices that merge.
      into: ``(N, r)`` int32, the ``B`` index each merged token joins.
    """

    unmerged: jax.Array
    merged: jax.Array
    into: jax.Array


def bipartite_matching(metric: jax.Array, r: int) -> Matching:
    """Choose ``r`` merges between the even and the odd tokens by cosine similarity.

    ``A = metric[:, 0::2]``, ``B = metric[:, 1::2]``; each ``a`` in ``A`` is
    linked to ``argmax_b cos(a, b)``, and the ``r`` links of highest
    similarity merge. No gradient flows through the choice.

    Args:
      metric: ``(N, T, C)`` float, one feature vector per token (ToMe uses
        the attention keys).
      r: static number of merges, ``0 <= r <= T // 2``.

    Returns:
      A :class:`Matching`.

    Examples:
      >>> import jax.numpy as jnp
      >>> from hamjax.graph.matching import bipartite_matching
      >>> metric = jnp.array([[[1.0, 0.0], [1.0, 0.01], [0.0, 1.0], [1.0, 1.0]]])
      >>> m = bipartite_matching(metric, 1)
      >>> m.merged.tolist(), m.into.tolist(), m.unmerged.tolist()
      ([[0]], [[0]], [[1]])
    """
    t = metric.shape[1]
    if not 0 <= r <= t // 2:
        raise ValueError(f"bipartite_matching: r must be in [0, {t // 2}] for {t} tokens, got {r!r}")
    metric = jax.lax.stop_gradient(metric).astype(jnp.float32)
    metric = metric * jax.lax.rsqrt(jnp.sum(metric * metric, axis=-1, keepdims=True) + jnp.float32(1e-12))
    a, b = metric[:, 0::2], metric[:, 1::2]
    scores = jnp.einsum("nic,njc->nij", a, b)
    best = jnp.max(scores, axis=-1)
    partner = jnp.argmax(scores, axis=-1).astype(jnp.int32)
    _, order = jax.lax.top_k(best, a.shape[1])
    order = order.astype(jnp.int32)
    merged = order[:, :r]
    return Matching(order[:, r:], merged, jnp.take_along_axis(partner, merged, axis=1))


def _pick(x: jax.Array, index: jax.Array) -> jax.Array:
    return jnp.take_along_axis(x, index[:, :, None], axis=1)


def weighted_merge(x: jax.Array, size: jax.Array, matching: Matching) -> tuple[jax.Array, jax.Array]:
    """Merge tokens by their size-weighted average.

    A merged token is ``sum(size_i * x_i) / sum(size_i)`` over the tokens
    it stands for; the sizes add up. The output holds the unmerged ``A``
    tokens first (in the order of ``matching.unmerged``), then every ``B``
    token.

    Args:
      x: ``(N, T, C)`` tokens.
      size: ``(N, T, 1)`` how many original tokens each token stands for
        (ones before the first merge), in ``x``'s dtype.
      matching: from :func:`bipartite_matching` on these ``T`` tokens.

    Returns:
      ``(x, size)`` with ``T - r`` tokens.

    Examples:
      >>> import jax.numpy as jnp
      >>> from hamjax.graph.matching import Matching, weighted_merge
      >>> x = jnp.array([[[1.0], [3.0], [5.0], [7.0]]])
      >>> m = Matching(jnp.array([[1]]), jnp.array([[0]]), jnp.array([[0]]))
      >>> y, s = weighted_merge(x, jnp.ones((1, 4, 1)), m)
      >>> y[0, :, 0].tolist(), s[0, :, 0].tolist()
      ([5.0, 2.0, 7.0], [1.0, 2.0, 1.0])
    """
    weighted = x * size
    a, b = weighted[:, 0::2], weighted[:, 1::2]
    size_a, size_b = size[:, 0::2], size[:, 1::2]
    # A one-hot product instead of a scatter-add: exact, deterministic, and a MatMul in ONNX.
    target = (matching.into[:, :, None] == jnp.arange(b.shape[1], dtype=jnp.int32)[None, None, :]).astype(x.dtype)
    b = b + jnp.einsum("nrj,nrc->njc", target, _pick(a, matching.merged))
    size_b = size_b + jnp.einsum("nrj,nrc->njc", target, _pick(size_a, matching.merged))
    total = jnp.concatenate([_pick(a, matching.unmerged), b], axis=1)
    size = jnp.concatenate([_pick(size_a, matching.unmerged), size_b], axis=1)
    return total / size, size


def merged_positions(matching: Matching, t: int) -> jax.Array:
    """Where each of the ``t`` tokens before a merge sits after it.

    Args:
      matching: from :func:`bipartite_matching` on ``t`` tokens.
      t: the token count before the merge.

    Returns:
      ``(N, t)`` int32 indices into the ``t - r`` merged tokens.

    Examples:
      >>> import jax.numpy as jnp
      >>> from hamjax.graph.matching import Matching, merged_positions
      >>> m = Matching(jnp.array([[1]]), jnp.array([[0]]), jnp.array([[0]]))
      >>> merged_positions(m, 4).tolist()
      [[1, 1, 0, 2]]
    """
    kept = matching.unmerged.shape[1]
    half = np.arange(t) // 2
    slots = jnp.arange((t + 1) // 2, dtype=jnp.int32)[None, None, :]
    zero = jnp.int32(0)
    # Each A token is either among `unmerged` (its rank there) or among `merged` (its partner's slot after them).
    from_kept = jnp.where(
        matching.unmerged[:, :, None] == slots, jnp.arange(kept, dtype=jnp.int32)[None, :, None], zero
    ).sum(axis=1)
    from_merged = jnp.where(matching.merged[:, :, None] == slots, (kept + matching.into)[:, :, None], zero).sum(axis=1)
    even = (from_kept + from_merged)[:, half]
    odd = jnp.asarray(kept + half, jnp.int32)[None, :]
    return jnp.where(jnp.asarray(np.arange(t) % 2 == 0)[None, :], even, odd)
