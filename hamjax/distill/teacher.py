"""A mean teacher: an exponential moving average of the student's params teaches the student.

:func:`ema_update` is one step of the average, leaf by leaf; :func:`ema_teacher` is the optax
adapter that keeps the average in the optimizer state, so that a jitted training step reads it
there (``optax.tree_utils.tree_get(state, "ema")``) and the whole loop stays ``lax.scan``-able;
:class:`EmaTeacher` asks :func:`hamjax.distill.fit` to use it as the teacher.

References:
  Tarvainen and Valpola, "Mean teachers are better role models", NeurIPS 2017.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from hamjax._base import optax_update
from hamjax._checks import check_fraction, check_number
from hamjax.distill._numerics import scalar_hyperparameter

__all__ = ["EmaTeacher", "EmaTeacherState", "ema_teacher", "ema_update"]


def ema_update(teacher_params: Any, student_params: Any, *, decay=0.999) -> Any:
    """A mean-teacher step: ``decay * teacher + (1 - decay) * student``, leaf by leaf.

    Computed in float32 (or wider) and cast back to each teacher leaf's dtype; non-floating teacher leaves are
    kept. A bfloat16 teacher rounds away updates below its resolution: keep EMA copies in float32.

    Args:
      teacher_params: a pytree of arrays.
      student_params: a pytree of the same structure and leaf shapes.
      decay: in [0, 1], a scalar; 1 keeps the teacher, 0 copies the student.

    Returns:
      The updated teacher pytree.

    Raises:
      ValueError: different tree structures or leaf shapes, or concrete ``decay`` outside [0, 1].

    Examples:
      >>> import jax.numpy as jnp
      >>> from hamjax import distill
      >>> distill.ema_update({"w": jnp.zeros(2)}, {"w": jnp.ones(2)}, decay=0.75)["w"].tolist()
      [0.25, 0.25]

    References:
      Tarvainen and Valpola, "Mean teachers are better role models", NeurIPS 2017.
    """
    where = "ema_update"
    ts, ss = jax.tree.structure(teacher_params), jax.tree.structure(student_params)
    if ts != ss:
        raise ValueError(f"{where}: teacher_params and student_params must have one tree structure, got {ts} and {ss}")
    d = scalar_hyperparameter(where, "decay", decay, unit=True)

    def leaf(path, t, s):
        t = jnp.asarray(t)
        if t.shape != np.shape(s):
            raise ValueError(f"{where}: leaf {jax.tree_util.keystr(path)} has shapes {t.shape} and {np.shape(s)}")
        if not jnp.issubdtype(t.dtype, jnp.floating):
            return t
        ct = t.dtype if t.dtype.itemsize > 4 else jnp.float32  # float64 leaves are not narrowed
        return (d.astype(ct) * t.astype(ct) + (1.0 - d).astype(ct) * jnp.asarray(s).astype(ct)).astype(t.dtype)

    return jax.tree_util.tree_map_with_path(leaf, teacher_params, student_params)


class EmaTeacherState(NamedTuple):
    """State of :func:`ema_teacher`.

    Attributes:
      ema: the moving average of the params, a pytree like them.
      inner_state: the wrapped optimizer's state.
    """

    ema: Any
    inner_state: optax.OptState


def ema_teacher(inner: optax.GradientTransformation, decay: float) -> optax.GradientTransformation:
    """An optax adapter that runs ``inner`` and keeps an EMA of the params it updates, readable as ``"ema"``.

    After each update, ``ema <- decay * ema + (1 - decay) * (params + updates)`` (:func:`ema_update`).

    Args:
      inner: the optimizer whose updates are applied.
      decay: the EMA decay in ``[0, 1]``.

    Returns:
      An ``optax.GradientTransformation`` whose state is an :class:`EmaTeacherState`;
      ``optax.tree_utils.tree_get(state, "ema")`` reads the average. ``update`` needs ``params``.

    Raises:
      ValueError: a concrete ``decay`` outside ``[0, 1]``; ``update`` called without ``params``.

    Examples:
      >>> import jax.numpy as jnp, optax
      >>> from hamjax.distill import ema_teacher
      >>> opt = ema_teacher(optax.sgd(1.0), 0.5)
      >>> params = {"w": jnp.zeros(2)}
      >>> updates, state = opt.update({"w": -jnp.ones(2)}, opt.init(params), params)
      >>> optax.tree_utils.tree_get(state, "ema")["w"].tolist()
      [0.5, 0.5]
    """
    check_fraction("ema_teacher", "decay", decay, closed=True)

    def init_fn(params):
        # copies, not the params themselves: a training step that donates its params donates each buffer once
        return EmaTeacherState(jax.tree.map(jnp.array, params), inner.init(params))

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError("ema_teacher: update needs params")
        updates, inner_state = optax_update(inner, updates, state.inner_state, params)
        ema = ema_update(state.ema, optax.apply_updates(params, updates), decay=decay)
        return updates, EmaTeacherState(ema, inner_state)

    return optax.GradientTransformation(init_fn, update_fn)


@dataclasses.dataclass(frozen=True)
class EmaTeacher:
    """Use an exponential moving average of the student's params as the (only) teacher of :func:`hamjax.distill.fit`.

    ``ema <- decay * ema + (1 - decay) * params`` after every step (a mean teacher); the average
    lives in the optimizer state (:func:`ema_teacher`), so it is never cached.

    Args:
      decay: the EMA decay in ``[0, 1]``.

    Raises:
      ValueError: a ``decay`` that is not a number in ``[0, 1]``.

    Examples:
      >>> from hamjax.distill import EmaTeacher
      >>> EmaTeacher(decay=0.99).decay
      0.99
    """

    decay: float = 0.999

    def __post_init__(self):
        check_number("EmaTeacher", "decay", self.decay, minimum=0, maximum=1)
