"""Random weight masks: DropConnect, inverted dropout on the weights instead of the activations."""

from __future__ import annotations

import itertools
from typing import Any

import jax
import jax.numpy as jnp

from hamjax._checks import check_fraction, is_traced
from hamjax._select import Filter, map_selected


def drop_connect(key: jax.Array, params: Any, rate: Any, filter: Filter | None = None) -> Any:
    """Zero each selected weight with probability ``rate`` and scale the kept ones by ``1 / (1 - rate)``.

    Every selected leaf draws its own mask from ``fold_in(key, i)`` (``i``
    its index among the selected leaves), so ``E[drop_connect(key, p, r)] =
    p``. Call it inside the loss on the params the model sees, with a fresh
    key per step; gradients reach the kept weights (scaled by the same
    factor). Leaves the filter does not select come back as they are.

    Args:
      key: a ``jax.random`` key.
      params: any pytree of arrays.
      rate: drop probability in ``[0, 1)``; may be a traced scalar.
      filter: ``filter(path, leaf) -> bool``; kernels only
        (:func:`hamjax._select.default_filter`) if ``None``.

    Returns:
      A tree like ``params`` (same dtypes).

    Raises:
      ValueError: a concrete ``rate`` outside ``[0, 1)``, or a filter that is
        not callable or selects no leaf.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from hamjax import regularize
      >>> params = {"w": jnp.ones((4, 4)), "b": jnp.ones(4)}
      >>> out = regularize.drop_connect(jax.random.key(0), params, 0.5)
      >>> sorted(set(out["w"].ravel().tolist())), out["b"].tolist()
      ([0.0, 2.0], [1.0, 1.0, 1.0, 1.0])

    References:
      Wan et al., "Regularization of Neural Networks using DropConnect",
      ICML 2013.
    """
    check_fraction("drop_connect", "rate", rate)
    if not is_traced(rate) and float(rate) == 0.0:
        return params
    index = itertools.count()
    keep = 1.0 - jnp.asarray(rate, jnp.float32)

    def mask(path, leaf):
        del path
        kept = jax.random.bernoulli(jax.random.fold_in(key, next(index)), keep, leaf.shape)
        return jnp.where(kept, leaf / keep.astype(leaf.dtype), jnp.zeros((), leaf.dtype))

    masked = map_selected("drop_connect", params, filter, mask)
    return jax.tree.map(lambda w, m: w if m is None else m, params, masked, is_leaf=lambda t: t is None)
