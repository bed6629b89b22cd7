"""How important each channel of a channel group is, summed over every member slice of the group.

For a channel ``c`` of a :class:`~hamjax.prune.ChannelGroup`, each member
contributes its slice (the kernel column, the bias entry, the norm's scale,
the consumers' input rows that belong to ``c``):

* ``"l2"``: the sum over members of each slice's L2 norm;
* ``"l1"``: the sum over members of each slice's L1 norm;
* ``"taylor"``: first-order Taylor, the sum over members and over each
  slice of ``|weight * gradient|``, the loss change to first order when the
  channel is removed (Molchanov et al., "Importance Estimation for Neural
  Network Pruning", CVPR 2019; DepGraph's group Taylor importance);
* ``"random"``: uniform ``[0, 1)`` draws, the baseline every criterion
  should beat.

:mod:`~hamjax.prune.group_masks` ranks these to choose the channels to keep.
"""

from __future__ import annotations

import operator

import jax
import jax.numpy as jnp

from hamjax._checks import check_choice
from hamjax.prune.dependency import ChannelGroup, Member, member_channels

IMPORTANCE_METHODS = ("l2", "l1", "taylor", "random")
"""The ``method=`` values of :func:`group_importance`, :func:`~hamjax.prune.group_channels` and
:func:`~hamjax.prune.group_masks`."""


def _by_path(tree) -> dict[str, jax.Array]:
    return {jax.tree_util.keystr(p): leaf for p, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _as_key(where: str, key):
    if key is None:
        raise ValueError(f"{where}: method='random' needs key= (a jax.random key or an int seed)")
    if not isinstance(key, bool):
        try:
            return jax.random.key(operator.index(key))
        except TypeError:
            pass
    dtype, shape = getattr(key, "dtype", None), getattr(key, "shape", None)
    if dtype is not None and (jnp.issubdtype(dtype, jax.dtypes.prng_key) or (dtype == jnp.uint32 and shape == (2,))):
        return key
    raise ValueError(f"{where}: key must be a jax.random key or an int seed, got {key!r}")


def checked_inputs(where: str, params, groups, method: str, grads=None, key=None):
    """Checks that ``params`` (and ``grads`` or ``key`` where ``method`` needs them) fit ``groups``.

    Args:
      where: the caller's name, for errors.
      params: the params the groups were found in.
      groups: the groups that will be scored.
      method: one of :data:`IMPORTANCE_METHODS` (already checked).
      grads: the gradients for ``"taylor"``.
      key: the key or int seed for ``"random"``.

    Returns:
      ``(leaves, grad_leaves, key)``: params' leaves by key path, the
      gradients' leaves by key path (``None`` unless ``"taylor"``) and the
      key as a ``jax.random`` key (``None`` unless ``"random"``).

    Raises:
      ValueError: naming the member leaf that ``params`` or ``grads`` lacks
        or has at another shape, or the missing ``grads`` or ``key``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from hamjax import prune
      >>> from hamjax.prune.group_scores import checked_inputs
      >>> g = prune.ChannelGroup(2, (prune.Member("['w']", 1, 1, 0, 2, 0),), True, "")
      >>> checked_inputs("demo", {"w": jnp.ones((3, 2))}, [g], "taylor", grads={"w": jnp.ones(2)})
      Traceback (most recent call last):
      ...
      ValueError: demo: grads['w'] has shape (2,), but params['w'] has shape (3, 2); grads must be shaped like params
    """
    leaves = _by_path(params)
    grad_leaves = None
    if method == "taylor":
        if grads is None:
            raise ValueError(f"{where}: method='taylor' needs grads= (a pytree like params, e.g. jax.grad of a loss)")
        grad_leaves = _by_path(grads)
    for g in groups:
        for m in g.members:
            if m.path not in leaves:
                raise ValueError(f"{where}: params has no leaf {m.path}; were the groups found in these params?")
            shape = jnp.shape(leaves[m.path])
            if not (0 <= m.axis < len(shape) and m.stop <= shape[m.axis]):
                raise ValueError(
                    f"{where}: params{m.path} has shape {shape}, too small for the group's member on axis {m.axis} "
                    f"up to index {m.stop}; were the groups found in these params?"
                )
            if grad_leaves is None:
                continue
            if m.path not in grad_leaves:
                raise ValueError(f"{where}: grads has no leaf {m.path}; grads must be shaped like params")
            if jnp.shape(grad_leaves[m.path]) != shape:
                raise ValueError(
                    f"{where}: grads{m.path} has shape {jnp.shape(grad_leaves[m.path])}, but params{m.path} has shape "
                    f"{shape}; grads must be shaped like params"
                )
    return leaves, grad_leaves, _as_key(where, key) if method == "random" else None


def _slice_sums(a: jax.Array, member: Member, size: int, fn) -> jax.Array:
    """Per channel, the sum of ``fn`` over the member's slice of ``a``: shape ``(size,)``."""
    part = jax.lax.slice_in_dim(a, member.start, member.stop, axis=member.axis).astype(jnp.float32)
    rows = jnp.moveaxis(part, member.axis, 0).reshape(member.stop - member.start, -1)
    return jax.ops.segment_sum(fn(rows).sum(axis=1), jnp.asarray(member_channels(member, size)), size)


def importance(leaves, group: ChannelGroup, method: str, grad_leaves=None, key=None) -> jax.Array:
    """Per-channel importance of ``group`` from checked inputs (:func:`checked_inputs`).

    Args:
      leaves: params' leaves by key path.
      group: the group.
      method: one of :data:`IMPORTANCE_METHODS`.
      grad_leaves: the gradients' leaves by key path, for ``"taylor"``.
      key: a ``jax.random`` key, for ``"random"``.

    Returns:
      A float32 array of shape ``(group.size,)``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from hamjax import prune
      >>> from hamjax.prune.group_scores import importance
      >>> g = prune.ChannelGroup(2, (prune.Member("['w']", 1, 1, 0, 2, 0),), True, "")
      >>> importance({"['w']": jnp.array([[1.0, -2.0]])}, g, "l1").tolist()
      [1.0, 2.0]
    """
    if method == "random":
        return jax.random.uniform(key, (group.size,), jnp.float32)
    total = jnp.zeros((group.size,), jnp.float32)
    for m in group.members:
        a = leaves[m.path]
        if method == "l2":
            total = total + jnp.sqrt(_slice_sums(a, m, group.size, jnp.square))
        elif method == "l1":
            total = total + _slice_sums(a, m, group.size, jnp.abs)
        else:
            product = a.astype(jnp.float32) * grad_leaves[m.path].astype(jnp.float32)
            total = total + _slice_sums(product, m, group.size, jnp.abs)
    return total


def group_importance(params, group: ChannelGroup, method: str = "l2", *, grads=None, key=None) -> jax.Array:
    """Per-channel importance of ``group``, summed over all its members (see the module docstring).

    Args:
      params: the params the group was found in.
      group: a :class:`~hamjax.prune.ChannelGroup`.
      method: ``"l2"``, ``"l1"``, ``"taylor"`` or ``"random"``.
      grads: for ``"taylor"``, a pytree like ``params`` holding the loss's
        gradient (``jax.grad(loss)(params, ...)``).
      key: for ``"random"``, a ``jax.random`` key or an int seed.

    Returns:
      A float32 array of shape ``(group.size,)``; higher is more important.

    Raises:
      ValueError: for an unknown method, a member leaf missing from
        ``params`` (or ``grads``) or shaped otherwise, ``"taylor"`` without
        ``grads``, or ``"random"`` without ``key``.

    Examples:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> from hamjax import prune
      >>> params = {"w": jnp.array([[3.0, 0.0], [4.0, 1.0]]), "v": jnp.ones((2, 1))}
      >>> f = lambda p, x: jnp.tanh(x @ p["w"]) @ p["v"]
      >>> g = prune.channel_groups(f, params, jnp.ones((1, 2)))[0]
      >>> prune.group_importance(params, g).tolist()
      [6.0, 2.0]
      >>> grads = jax.grad(lambda p: f(p, jnp.ones((1, 2))).sum())(params)
      >>> [round(float(s), 3) for s in prune.group_importance(params, g, "taylor", grads=grads)]
      [1.0, 1.182]
      >>> prune.group_importance(params, g, "random", key=0).shape
      (2,)
    """
    check_choice("group_importance", "method", method, IMPORTANCE_METHODS)
    leaves, grad_leaves, key = checked_inputs("group_importance", params, [group], method, grads, key)
    return importance(leaves, group, method, grad_leaves, key)
