"""Students for any model: the same architecture, narrower, built from its channel groups.

:func:`make_student` removes the same fraction of channels from every
prunable group (:func:`~hamjax.prune.group_channels`), the fraction found by
bisection so that the student has the asked share of the teacher's
trainable parameters, and shrinks the model physically
(:func:`~hamjax.prune.shrink_groups`). The student either inherits the
teacher's most important channels (a strong start for distillation) or is
freshly initialised at the smaller shapes. For hamjax's reference models,
:func:`hamjax.models.make_student` still builds a student from the config:
it can also change depth, which channel groups cannot.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from hamjax._base import trainable, with_trainable
from hamjax._checks import check_choice, check_int
from hamjax.prune.dependency import channel_groups
from hamjax.prune.group_masks import group_channels
from hamjax.prune.shrink_any import leaf_masks, shrink_groups

INITS = ("inherit", "fresh")
"""The ``init=`` values of :func:`make_student`."""


def _count(params, masks: dict) -> int:
    total = 0
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        dims = list(np.shape(leaf))
        for axis, m in masks.get(jax.tree_util.keystr(path), {}).items():
            dims[axis] -= int((~m).sum())
        total += int(np.prod(dims))
    return total


def _fresh(params, seed: int):
    """Leaves drawn anew: matrices from a normal with the leaf's own std, vectors filled with their mean."""
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed), max(len(leaves), 1))

    def draw(key, a):
        a = jnp.asarray(a)
        if not jnp.issubdtype(a.dtype, jnp.floating):
            return a
        if a.ndim >= 2:
            return (jax.random.normal(key, a.shape, jnp.float32) * jnp.std(a.astype(jnp.float32))).astype(a.dtype)
        return jnp.full_like(a, jnp.mean(a))

    return jax.tree.unflatten(tree, [draw(k, a) for k, a in zip(keys, leaves, strict=False)])


def make_student(
    apply_fn, params, x, *, param_ratio: float, init: str = "inherit", method: str = "l2", multiple: int = 1, seed=0
):
    """A narrower model of the same structure with about ``param_ratio`` of the trainable parameters.

    Args:
      apply_fn: any apply function of the contract (NNX, Linen or plain jnp).
      params: its params (variables for an :class:`hamjax.ApplyFn`).
      x: an example input.
      param_ratio: the student's share of the teacher's trainable
        parameters, in ``(0, 1]``; the student has at most this share where
        the groups allow it (the channels that cannot be removed stay).
      init: ``"inherit"`` (the teacher's most important channels, by
        ``method``) or ``"fresh"`` (trainable leaves drawn anew at the
        smaller shapes: matrices from a normal with the teacher leaf's std,
        vectors filled with its mean; batch statistics are inherited).
      method: the channel importance for ``"inherit"``: ``"l2"``, ``"l1"``
        or ``"random"``.
      multiple: round kept channel counts up to a multiple of this.
      seed: the seed of ``"fresh"`` and of ``"random"`` importance.

    Returns:
      ``(apply_fn, params)`` of the student (from
      :func:`~hamjax.prune.shrink_groups`).

    Raises:
      ValueError: for a ratio outside ``(0, 1]``, an unknown init or method,
        or a model with no prunable channel group.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from hamjax import prune
      >>> params = {"w": jnp.ones((8, 64)), "v": jnp.ones((64, 4))}
      >>> f = lambda p, x: jax.nn.relu(x @ p["w"]) @ p["v"]
      >>> student_fn, student = prune.make_student(f, params, jnp.ones((1, 8)), param_ratio=0.5)
      >>> student["w"].shape, student_fn(student, jnp.ones((3, 8))).shape
      ((8, 32), (3, 4))
    """
    if isinstance(param_ratio, bool) or not isinstance(param_ratio, (int, float)) or not 0 < param_ratio <= 1:
        raise ValueError(f"make_student: param_ratio must be in (0, 1], got {param_ratio!r}")
    check_choice("make_student", "init", init, INITS)
    check_choice("make_student", "method", method, ("l2", "l1", "random"))
    multiple = check_int("make_student", "multiple", multiple, minimum=1)
    groups = channel_groups(apply_fn, params, x)
    if not any(g.prunable for g in groups):
        reasons = "; ".join(dict.fromkeys(g.reason for g in groups))[:300]
        raise ValueError(f"make_student: the model has no prunable channel group ({reasons})")
    target = param_ratio * sum(int(np.size(a)) for a in jax.tree.leaves(trainable(apply_fn, params)))
    key = jax.random.key(seed) if method == "random" else None

    def keep_at(s) -> list:
        kept = group_channels(params, groups, s, method=method, multiple=multiple, key=key)
        return [None if k is None or bool(np.all(k)) else np.asarray(k) for k in kept]

    prefix = "['params']" if trainable(apply_fn, params) is not params else ""

    def count(keep) -> int:
        masks = {p[len(prefix) :]: m for p, m in leaf_masks(groups, keep).items() if p.startswith(prefix)}
        return _count(trainable(apply_fn, params), masks)

    lo, hi, best = 0.0, 0.999, None
    for _ in range(20):  # bisect for the smallest sparsity whose student fits
        mid = (lo + hi) / 2
        keep = keep_at(mid)
        if count(keep) <= target:
            best, hi = keep, mid
        else:
            lo = mid
    student_fn, student = shrink_groups(apply_fn, params, x, groups, keep_at(0.999) if best is None else best)
    if init == "fresh":
        student = with_trainable(student_fn, student, _fresh(trainable(student_fn, student), seed))
    return student_fn, student
