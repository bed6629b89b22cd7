"""Function matching: the teacher and the student see one augmented view, and the teacher may be regularised.

With an ``augment`` function, :func:`hamjax.distill.fit` draws a fresh view of every batch and runs
the teacher online on that same view, so the student matches the teacher's function on inputs the
training split does not hold (Beyer et al. 2022: "consistent" teaching; a cached teacher output
belongs to the clean image and would no longer match the view). The teacher itself can be
regularised at every step (Hinton et al. 2015): ``teacher_method="dropout"`` runs it in train mode
(its dropout on, a fresh key per step, batch statistics of the view instead of its running averages,
which are not updated), and ``teacher_noise`` adds Gaussian input jitter to the teacher's view only.

:func:`view_keys` derives the per-step keys from the step's key, so the student's own dropout key
is the same with or without a view; :func:`check_view` checks everything before anything is traced.

References:
  Beyer et al., "Knowledge distillation: A good teacher is patient and consistent", CVPR 2022.
  Hinton, Vinyals and Dean, "Distilling the knowledge in a neural network", 2015.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from hamjax._base import call_model
from hamjax._checks import check_choice, check_number
from hamjax.augment import parse

__all__ = ["TEACHER_METHODS", "ViewKeys", "check_view", "teacher_forward", "view_keys"]

TEACHER_METHODS = ("eval", "dropout")
"""The ``teacher_method=`` values of :func:`hamjax.distill.fit`: the teacher in eval or in train mode."""

_SALT = 0x7EAC


def _describe(a) -> str:
    return f"{a.dtype}[{','.join(str(d) for d in a.shape)}]"


class ViewKeys(NamedTuple):
    """The keys one step draws from, besides the student's own dropout key.

    Attributes:
      augment: the key of the ``augment`` function.
      mix: the key of mixup (:func:`hamjax.augment.mixup`).
      teacher: the key of the teacher's dropout and input jitter.
    """

    augment: jax.Array
    mix: jax.Array
    teacher: jax.Array


def view_keys(rng: jax.Array) -> ViewKeys:
    """The view's keys of one step, folded from the step's key ``rng`` (which stays the student's key).

    Args:
      rng: the step's key (``fold_in(key(seed), count)`` in :func:`hamjax.train.make_train_step`).

    Returns:
      A :class:`ViewKeys` of three keys, independent of ``rng`` and of each other.

    Examples:
      >>> import jax
      >>> from hamjax.distill import view_keys
      >>> keys = view_keys(jax.random.key(0))
      >>> bool((jax.random.key_data(keys.augment) != jax.random.key_data(keys.teacher)).any())
      True
    """
    keys = jax.random.split(jax.random.fold_in(rng, _SALT), 3)
    return ViewKeys(keys[0], keys[1], keys[2])


def teacher_forward(forward: Callable, method: str = "eval", noise: float = 0.0) -> Callable:
    """A teacher's ``forward(params, x, key) -> (logits, taps)`` in ``method``'s mode with input jitter ``noise``.

    ``forward`` is a captured apply function (:func:`hamjax.jaxpr.capture`) returning
    ``(logits, taps)``. The result is under ``stop_gradient``; batch statistics a train-mode
    teacher computes are dropped, so the teacher's params never change.

    Args:
      forward: the captured teacher apply function (any kind of the contract).
      method: one of :data:`TEACHER_METHODS`: ``"eval"`` (deterministic) or ``"dropout"``
        (train mode: dropout on with ``key``, batch statistics of the batch).
      noise: standard deviation of Gaussian noise added to the teacher's input, ``>= 0``.

    Returns:
      ``fn(params, x, key)``; ``key`` is unused when ``method="eval"`` and ``noise=0``.

    Raises:
      ValueError: an unknown ``method`` or a negative ``noise``.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from hamjax.distill import teacher_forward
      >>> fn = teacher_forward(lambda p, x: (x @ p, {}), noise=0.1)
      >>> y, taps = fn(jnp.eye(2), jnp.zeros((3, 2)), jax.random.key(0))
      >>> y.shape, bool((y != 0).any())
      ((3, 2), True)
    """
    where = "teacher_forward"
    check_choice(where, "method", method, TEACHER_METHODS)
    check_number(where, "noise", noise, minimum=0)
    train = method == "dropout"

    def fn(params, x, key):
        drop_key, noise_key = jax.random.split(key)
        if noise:
            x = x + (noise * jax.random.normal(noise_key, x.shape, jnp.float32)).astype(x.dtype)
        out, _ = call_model(forward, params, x, train=train, rng=drop_key if train else None)
        return jax.lax.stop_gradient(out)

    return fn


def check_view(
    where: str, augment: Any, x: np.ndarray, *, mixup: float = 0.0, teacher_method: str, teacher_noise: float
) -> tuple[Callable | None, bool]:
    """Check ``fit``'s view arguments on a few examples before tracing; say whether the teacher must run online.

    Args:
      where: the caller, for the error message.
      augment: ``None``, a spec string for :func:`hamjax.augment.parse` (``"shift=2,rotate=10"``),
        or a callable ``(key, x) -> x`` returning a batch of ``x``'s shape and dtype.
      x: a few training examples.
      mixup: the Beta alpha of :func:`hamjax.augment.mixup`, ``>= 0`` (0 is off).
      teacher_method: one of :data:`TEACHER_METHODS`.
      teacher_noise: a number ``>= 0``.

    Returns:
      ``(augment, online)``: the augmentation as a callable (or ``None``), and ``True`` when
      anything changes the teacher's input or output from step to step (then its outputs cannot
      be cached).

    Raises:
      ValueError: ``augment`` neither ``None``, a valid spec nor callable, or returning another
        shape or dtype; a negative ``mixup``; an unknown ``teacher_method``; a negative or
        non-finite ``teacher_noise``.

    Examples:
      >>> import numpy as np
      >>> from hamjax.distill import check_view
      >>> x = np.zeros((4, 8, 8, 1), np.float32)
      >>> check_view("fit", None, x, teacher_method="eval", teacher_noise=0.0)
      (None, False)
      >>> check_view("fit", "shift=2", x, teacher_method="eval", teacher_noise=0.0)
      (shift=2, True)
      >>> check_view("fit", lambda k, x: x[:, :2], x, teacher_method="eval", teacher_noise=0.0)
      Traceback (most recent call last):
      ...
      ValueError: fit: augment must return a batch shaped like its input, float32[4,8,8,1], got float32[4,2,8,1]
    """
    check_choice(where, "teacher_method", teacher_method, TEACHER_METHODS)
    check_number(where, "teacher_noise", teacher_noise, minimum=0)
    check_number(where, "mixup", mixup, minimum=0)
    if isinstance(augment, str):
        try:
            augment = parse(augment)
        except ValueError as err:
            raise ValueError(f"{where}: augment {err}") from None
    if augment is not None:
        if not callable(augment):
            raise ValueError(
                f"{where}: augment must be None, a spec string such as 'shift=2,rotate=10' or a function "
                f"(key, x) -> x, got {type(augment).__name__}"
            )
        x = jnp.asarray(x)
        out = jax.eval_shape(augment, jax.random.key(0), x)
        if getattr(out, "shape", None) != x.shape or getattr(out, "dtype", None) != x.dtype:
            got = _describe(out) if hasattr(out, "shape") else type(out).__name__
            raise ValueError(f"{where}: augment must return a batch shaped like its input, {_describe(x)}, got {got}")
    return augment, augment is not None or mixup > 0 or teacher_method != "eval" or teacher_noise > 0
