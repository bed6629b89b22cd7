"""Weight penalties as loss terms: L1, L2 and the elastic net over selected kernels.

Each is a scalar function of a params pytree, added to a training loss:
``loss + elastic_net(params, l1=1e-5, l2=1e-4)``. Leaves are chosen by a
filter (:func:`hamjax._select.default_filter`: weight matrices and conv
kernels, not biases, norm scales, embeddings or batch statistics), so the
same call works on a plain dict of arrays, Linen variables or the variables
of :func:`hamjax.functional`. Coefficients may be traced (a population vmaps
over them); concrete ones are checked to be finite and ``>= 0``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from hamjax._checks import check_number, is_traced
from hamjax._select import Filter, is_none, map_selected


def _selected_leaves(where: str, params: Any, filter: Filter | None) -> list[jax.Array]:
    tree = map_selected(where, params, filter, lambda path, leaf: jnp.asarray(leaf).astype(jnp.float32))
    return [leaf for leaf in jax.tree.leaves(tree, is_leaf=is_none) if leaf is not None]


def _abs_sum(leaves: list[jax.Array]) -> jax.Array:
    # sign(w) * w is |w| with the gradient sign(w): 0 at w = 0 (jnp.abs gives 1 there), so zeros stay put.
    return sum((jnp.sum(jax.lax.stop_gradient(jnp.sign(w)) * w) for w in leaves), jnp.zeros((), jnp.float32))


def _half_square_sum(leaves: list[jax.Array]) -> jax.Array:
    return 0.5 * sum((jnp.sum(jnp.square(w)) for w in leaves), jnp.zeros((), jnp.float32))


def check_coefficient(where: str, arg: str, value: Any) -> Any:
    """``value`` unchanged if it is traced or a finite number ``>= 0``; raises otherwise.

    Examples:
      >>> check_coefficient("elastic_net", "l1", 1e-4)
      0.0001
      >>> check_coefficient("elastic_net", "l1", -1.0)
      Traceback (most recent call last):
      ...
      ValueError: elastic_net: l1 must be a finite number >= 0, got -1.0
    """
    if not is_traced(value):
        check_number(where, arg, value, minimum=0)
    return value


def l1(params: Any, filter: Filter | None = None) -> jax.Array:
    """The L1 norm of the selected leaves: ``sum |w|``, in float32.

    Its gradient is ``sign(w)``, 0 at ``w = 0``.

    Args:
      params: any pytree of arrays.
      filter: ``filter(path, leaf) -> bool``; kernels only
        (:func:`hamjax._select.default_filter`) if ``None``.

    Returns:
      A float32 scalar.

    Raises:
      ValueError: if ``filter`` is not callable or selects no leaf.

    Examples:
      >>> import jax.numpy as jnp
      >>> from hamjax import regularize
      >>> params = {"w": jnp.array([[1.0, -2.0], [0.5, 0.0]]), "b": jnp.array([10.0, 10.0])}
      >>> float(regularize.l1(params))
      3.5
    """
    return _abs_sum(_selected_leaves("l1", params, filter))


def l2(params: Any, filter: Filter | None = None) -> jax.Array:
    """Half the squared L2 norm of the selected leaves: ``0.5 * sum w^2``, in float32.

    Its gradient is ``w`` itself, so ``lambda * l2(params)`` in a loss is
    weight decay of ``lambda`` under plain SGD.

    Args:
      params: any pytree of arrays.
      filter: ``filter(path, leaf) -> bool``; kernels only if ``None``.

    Returns:
      A float32 scalar.

    Raises:
      ValueError: if ``filter`` is not callable or selects no leaf.

    Examples:
      >>> import jax.numpy as jnp
      >>> from hamjax import regularize
      >>> params = {"w": jnp.array([[1.0, -2.0], [0.0, 0.0]]), "b": jnp.array([10.0, 10.0])}
      >>> float(regularize.l2(params))
      2.5
    """
    return _half_square_sum(_selected_leaves("l2", params, filter))


def elastic_net(params: Any, l1: Any = 0.0, l2: Any = 0.0, filter: Filter | None = None) -> jax.Array:
    """The elastic-net penalty ``l1 * sum |w| + l2 * 0.5 * sum w^2`` over the selected leaves.

    Args:
      params: any pytree of arrays.
      l1: the L1 coefficient, ``>= 0``; may be a traced scalar.
      l2: the L2 coefficient, ``>= 0``; may be a traced scalar.
      filter: ``filter(path, leaf) -> bool``; kernels only if ``None``.

    Returns:
      A float32 scalar.

    Raises:
      ValueError: if a concrete coefficient is negative or not finite, or
        ``filter`` is not callable or selects no leaf.

    Examples:
      >>> import jax.numpy as jnp
      >>> from hamjax import regularize
      >>> params = {"w": jnp.array([[1.0, -2.0]]), "b": jnp.array([10.0])}
      >>> float(regularize.elastic_net(params, l1=0.5, l2=2.0))
      6.5

    References:
      Zou & Hastie, "Regularization and variable selection via the elastic
      net", JRSS B 2005.
    """
    check_coefficient("elastic_net", "l1", l1)
    check_coefficient("elastic_net", "l2", l2)
    leaves = _selected_leaves("elastic_net", params, filter)
    a = jnp.asarray(l1, jnp.float32)
    b = jnp.asarray(l2, jnp.float32)
    return a * _abs_sum(leaves) + b * _half_square_sum(leaves)
