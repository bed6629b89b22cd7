"""How a model uses each params leaf: the weights of its dense and convolution ops, found in the jaxpr.

:func:`weight_filter` decides by use what :func:`hamjax.prune.default_filter`
guesses by name: a leaf is a weight when every use of it is the weight
operand of a ``dot_general`` or ``conv_general_dilated`` site
(:func:`~hamjax.jaxpr.find_sites`). A table that is gathered (token
embeddings), added (position tables), multiplied elementwise (norm scales)
or read by any other op is not a weight, whatever its name or rank; an
embedding that is gathered and also used as the output projection (tied
weights) is not either, because pruning it would change the lookup.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.extend.core as jcore
import jax.numpy as jnp

from hamjax._base import TRAINABLE, is_protocol_apply
from hamjax.jaxpr.interpret import intercept
from hamjax.jaxpr.sites import find_sites


@dataclasses.dataclass(frozen=True)
class WeightFilter:
    """A ``filter(path, leaf) -> bool`` that selects the weights :func:`weight_filter` found by use.

    It accepts key paths of the params it was built from and, for a
    :class:`hamjax.ApplyFn`, also key paths inside their trainable
    collection (``params["params"]``, what the mask functions see through
    :func:`hamjax._base.trainable`).

    Attributes:
      paths: ``jax.tree_util.keystr`` of every selected leaf, as built and,
        for an :class:`hamjax.ApplyFn`, relative to ``params["params"]``.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from hamjax import jaxpr
      >>> keep = jaxpr.WeightFilter(frozenset({"['w']"}))
      >>> keep((jax.tree_util.DictKey("w"),), jnp.ones((2, 2))), keep((jax.tree_util.DictKey("pos"),), jnp.ones((2, 2)))
      (True, False)
    """

    paths: frozenset[str]

    def __call__(self, path, leaf) -> bool:
        """Whether the floating leaf at ``path`` is a selected weight.

        Args:
          path: a jax key path.
          leaf: the leaf at ``path``.

        Returns:
          ``True`` for a selected weight.
        """
        dtype = getattr(leaf, "dtype", None)
        if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
            return False
        return jax.tree_util.keystr(tuple(path)) in self.paths


def _live_inputs(jaxpr) -> list[bool]:
    """Whether each input of ``jaxpr`` reaches its outputs (or an effect); sub-jaxprs count as one op."""
    live = {v for v in jaxpr.outvars if not isinstance(v, jcore.Literal)}
    for eqn in reversed(jaxpr.eqns):
        if eqn.effects or any(v in live for v in eqn.outvars if not isinstance(v, jcore.DropVar)):
            live.update(v for v in eqn.invars if not isinstance(v, jcore.Literal))
    return [v in live for v in jaxpr.invars]


def _abstract(tree):
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(jnp.shape(a), jnp.result_type(a)), tree)


def weight_filter(apply_fn, params, x, **kw) -> WeightFilter:
    """The filter that selects the leaves ``apply_fn`` uses only as dense or convolution weights.

    A leaf is selected when it is the weight operand of at least one site
    (:func:`~hamjax.jaxpr.find_sites`: a ``dot_general`` or
    ``conv_general_dilated`` whose other operand depends on the input,
    reached from the leaf through layout ops only) and the model reads it
    nowhere else: with every site's weight replaced by zeros, the output no
    longer depends on it. Position tables that are added, embeddings that
    are gathered, biases, norm scales and batch statistics are left out
    whatever their names. Nothing runs: the model is traced abstractly.

    Use it wherever the model is known; functions that see only params
    (:func:`hamjax.prune.magnitude_masks` and the other ``*_masks``) fall
    back to the name-based :func:`hamjax.prune.default_filter` when given
    no filter.

    Args:
      apply_fn: any apply function of the contract (NNX, Linen or plain jnp).
      params: its params (variables for an :class:`hamjax.ApplyFn`); arrays
        or ``jax.ShapeDtypeStruct`` s.
      x: an example input (only shape and dtype matter).
      **kw: keyword arguments for ``apply_fn``.

    Returns:
      A :class:`WeightFilter`, a ``filter(path, leaf) -> bool`` for
      ``params`` (and, for an :class:`hamjax.ApplyFn`, for
      ``params["params"]``).

    Raises:
      ValueError: if ``apply_fn`` has no dense or convolution op with a
        params weight.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from hamjax import jaxpr, prune
      >>> params = {"embed": jnp.ones((9, 4)), "pos": jnp.ones((3, 4)), "w": jnp.ones((4, 2))}
      >>> f = lambda p, t: (p["embed"][t] + p["pos"]) @ p["w"]
      >>> keep = jaxpr.weight_filter(f, params, jnp.zeros((3,), jnp.int32))
      >>> sorted(keep.paths)
      ["['w']"]
      >>> prune.selected(params, keep), prune.selected(params)  # the name-based default takes pos
      (["['w']"], ["['pos']", "['w']"])
    """
    abstract_params, abstract_x = _abstract(params), _abstract(x)
    try:
        sites = find_sites(apply_fn, abstract_params, abstract_x, **kw)
    except ValueError:
        raise ValueError(
            "weight_filter: apply_fn has no dot_general or conv_general_dilated with a params weight; "
            "no leaf is a dense or convolution weight"
        ) from None
    weights = {s.leaf for s in sites if s.leaf is not None}

    def zero_weights(i, site, a, w):
        del i, site
        return a, jnp.zeros(w.shape, w.dtype)

    closed = jax.make_jaxpr(lambda p, xx: intercept(apply_fn, zero_weights)(p, xx, **kw))(abstract_params, abstract_x)
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    live = _live_inputs(closed.jaxpr)[: len(leaves)]
    paths = set()
    for (path, _), read in zip(leaves, live, strict=True):
        if read or jax.tree_util.keystr(path) not in weights:
            continue
        paths.add(jax.tree_util.keystr(path))
        if is_protocol_apply(apply_fn) and path and getattr(path[0], "key", None) == TRAINABLE:
            paths.add(jax.tree_util.keystr(path[1:]))
    return WeightFilter(frozenset(paths))
