"""L-infinity adversarial examples (FGSM, PGD) on any model of the contract, and PGD robust accuracy.

The model runs in eval mode through :func:`hamjax._base.call_model`;
gradients are taken with respect to the inputs only (the params are held
constant with ``stop_gradient``), and the examples come back with
``stop_gradient`` too, so a training step can use them as data. Inputs stay
in the valid range ``clip = (lo, hi)`` (``(0, 1)`` for the bundled images;
``None`` for no clipping).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hamjax._base import call_model
from hamjax._checks import check_int, check_number, is_traced
from hamjax._losses import cross_entropy


def _check_epsilon(where: str, epsilon: Any) -> None:
    if not is_traced(epsilon):
        check_number(where, "epsilon", epsilon, minimum=0)


def _check_clip(where: str, clip: Any) -> tuple[float, float] | None:
    if clip is None:
        return None
    if not isinstance(clip, tuple | list) or len(clip) != 2:
        raise ValueError(f"{where}: clip must be a pair (lo, hi) or None, got {clip!r}")
    lo = check_number(where, "clip[0]", clip[0])
    hi = check_number(where, "clip[1]", clip[1])
    if not lo <= hi:
        raise ValueError(f"{where}: clip must be a pair (lo, hi) with lo <= hi, got {clip!r}")
    return lo, hi


def _input_gradient(apply_fn, params, x, y, loss_fn) -> jax.Array:
    frozen = jax.lax.stop_gradient(params)

    def loss(inputs):
        logits, _ = call_model(apply_fn, frozen, inputs)
        return loss_fn(logits, y)

    return jax.grad(loss)(x)


def _clipped(x: jax.Array, clip: tuple[float, float] | None) -> jax.Array:
    if clip is None:
        return x
    return jnp.clip(x, jnp.asarray(clip[0], x.dtype), jnp.asarray(clip[1], x.dtype))


def fgsm(
    apply_fn,
    params: Any,
    x: jax.Array,
    y: jax.Array,
    *,
    epsilon: Any,
    loss_fn: Callable | None = None,
    clip: tuple[float, float] | None = (0.0, 1.0),
) -> jax.Array:
    """The fast gradient sign method: ``clip(x + epsilon * sign(d loss / d x))``.

    Args:
      apply_fn: any apply function of the contract.
      params: its params (variables for a protocol apply function).
      x: floating inputs ``(N, ...)``.
      y: the targets ``loss_fn`` takes (integer labels ``(N,)``, or probability rows).
      epsilon: the L-infinity radius, ``>= 0``; may be a traced scalar.
      loss_fn: ``loss_fn(logits, y) -> scalar``; :func:`hamjax.distill.cross_entropy` if ``None``.
      clip: the valid input range ``(lo, hi)``, or ``None``.

    Returns:
      Adversarial inputs like ``x`` (same shape and dtype), without gradient.

    Raises:
      ValueError: a negative or non-finite concrete ``epsilon``, or a bad ``clip``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from hamjax import regularize
      >>> apply_fn = lambda p, x: x @ p
      >>> w = jnp.array([[1.0, -1.0], [0.0, 0.0]])
      >>> x = jnp.array([[0.5, 0.5]])
      >>> regularize.fgsm(apply_fn, w, x, jnp.array([0]), epsilon=0.1).tolist()
      [[0.4000000059604645, 0.5]]

    References:
      Goodfellow et al., "Explaining and Harnessing Adversarial Examples",
      ICLR 2015. https://arxiv.org/abs/1412.6572
    """
    _check_epsilon("fgsm", epsilon)
    clip = _check_clip("fgsm", clip)
    loss_fn = cross_entropy if loss_fn is None else loss_fn
    x = jnp.asarray(x)
    grad = _input_gradient(apply_fn, params, x, y, loss_fn)
    eps = jnp.asarray(epsilon, x.dtype)
    return jax.lax.stop_gradient(_clipped(x + eps * jnp.sign(grad), clip))


def pgd(
    apply_fn,
    params: Any,
    x: jax.Array,
    y: jax.Array,
    *,
    epsilon: Any,
    steps: int,
    step_size: Any = None,
    key: jax.Array | None = None,
    loss_fn: Callable | None = None,
    clip: tuple[float, float] | None = (0.0, 1.0),
) -> jax.Array:
    """Projected gradient descent on the loss (ascent), inside the L-infinity ball of radius ``epsilon``.

    ``x_0 = x`` (or ``x + U(-epsilon, epsilon)`` when ``key`` is given, the
    random start of Madry et al.), then ``steps`` times
    ``x_{k+1} = clip(project(x_k + step_size * sign(d loss / d x_k)))``
    where ``project`` keeps ``|x_k - x| <= epsilon``.

    Args:
      apply_fn: any apply function of the contract.
      params: its params.
      x: floating inputs ``(N, ...)``.
      y: the targets ``loss_fn`` takes.
      epsilon: the radius, ``>= 0``; may be a traced scalar.
      steps: the number of gradient steps, ``>= 1`` (static).
      step_size: the step per iteration; ``2.5 * epsilon / steps`` if ``None``.
      key: a ``jax.random`` key for the random start, or ``None`` to start at ``x``.
      loss_fn: ``loss_fn(logits, y) -> scalar``; cross-entropy if ``None``.
      clip: the valid input range ``(lo, hi)``, or ``None``.

    Returns:
      Adversarial inputs like ``x``, without gradient.

    Raises:
      ValueError: a negative concrete ``epsilon`` or ``step_size``,
        ``steps < 1``, or a bad ``clip``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from hamjax import regularize
      >>> apply_fn = lambda p, x: x @ p
      >>> w = jnp.array([[1.0, -1.0], [0.0, 0.0]])
      >>> x = jnp.array([[0.5, 0.5]])
      >>> adv = regularize.pgd(apply_fn, w, x, jnp.array([0]), epsilon=0.1, steps=5)
      >>> [round(a, 4) for a in adv[0].tolist()]
      [0.4, 0.5]

    References:
      Madry et al., "Towards Deep Learning Models Resistant to Adversarial
      Attacks", ICLR 2018. https://arxiv.org/abs/1706.06083
    """
    _check_epsilon("pgd", epsilon)
    steps = check_int("pgd", "steps", steps, minimum=1)
    if step_size is not None and not is_traced(step_size):
        check_number("pgd", "step_size", step_size, minimum=0)
    clip = _check_clip("pgd", clip)
    loss_fn = cross_entropy if loss_fn is None else loss_fn
    x = jnp.asarray(x)
    eps = jnp.asarray(epsilon, x.dtype)
    alpha = 2.5 * eps / steps if step_size is None else jnp.asarray(step_size, x.dtype)
    start = x
    if key is not None:
        start = _clipped(x + jax.random.uniform(key, x.shape, x.dtype, -1.0, 1.0) * eps, clip)

    def body(_, current):
        grad = _input_gradient(apply_fn, params, current, y, loss_fn)
        moved = jnp.clip(current + alpha * jnp.sign(grad), x - eps, x + eps)
        return _clipped(moved, clip)

    return jax.lax.stop_gradient(jax.lax.fori_loop(0, steps, body, start))


def _arrays(split: Any) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(split, tuple) and len(split) == 2 and not hasattr(split, "x"):
        return np.asarray(split[0]), np.asarray(split[1])
    if not (hasattr(split, "x") and hasattr(split, "y")):
        raise ValueError(
            f"robust_accuracy: split must have .x and .y arrays (a hamjax.data.Split) or be a pair (x, y), "
            f"got {type(split).__name__}"
        )
    return np.asarray(split.x), np.asarray(split.y)


def robust_accuracy(
    apply_fn,
    params: Any,
    split: Any,
    *,
    epsilon: float,
    steps: int = 10,
    batch_size: int = 256,
    seed: int = 0,
    clip: tuple[float, float] | None = (0.0, 1.0),
) -> float:
    """The accuracy on PGD adversarial examples (random start), over a whole split.

    Args:
      apply_fn: any apply function of the contract.
      params: its params.
      split: an object with ``.x`` (inputs) and ``.y`` (integer labels)
        arrays, such as a :class:`hamjax.data.Split`, or a pair ``(x, y)``.
      epsilon: the L-infinity radius, ``>= 0`` (0 gives the clean accuracy).
      steps: PGD steps, ``>= 1``.
      batch_size: examples per attacked batch, ``>= 1``.
      seed: the seed of the random starts (batch ``i`` uses ``fold_in(key(seed), i)``).
      clip: the valid input range ``(lo, hi)``, or ``None``.

    Returns:
      The fraction of examples still classified correctly, a Python float.

    Raises:
      ValueError: a bad ``epsilon``, ``steps``, ``batch_size``, ``clip`` or ``split``.

    Examples:
      >>> import numpy as np
      >>> from hamjax import regularize
      >>> apply_fn = lambda p, x: (x - 0.5) @ p  # class 0 when x[:, 0] > 0.5
      >>> w = np.array([[1.0, -1.0], [0.0, 0.0]], np.float32)
      >>> x, y = np.array([[0.9, 0.5], [0.4, 0.5]], np.float32), np.array([0, 1], np.int32)
      >>> regularize.robust_accuracy(apply_fn, w, (x, y), epsilon=0.0)
      1.0
      >>> regularize.robust_accuracy(apply_fn, w, (x, y), epsilon=0.2)
      0.5
    """
    check_number("robust_accuracy", "epsilon", epsilon, minimum=0)
    steps = check_int("robust_accuracy", "steps", steps, minimum=1)
    batch_size = check_int("robust_accuracy", "batch_size", batch_size, minimum=1)
    seed = check_int("robust_accuracy", "seed", seed)
    clip = _check_clip("robust_accuracy", clip)
    x, y = _arrays(split)
    if len(x) != len(y) or len(x) == 0:
        raise ValueError(f"robust_accuracy: split must hold as many labels as inputs (>= 1), got {len(x)} and {len(y)}")

    @jax.jit
    def correct(params, xb, yb, key):
        adv = pgd(apply_fn, params, xb, yb, epsilon=epsilon, steps=steps, key=key, clip=clip)
        logits, _ = call_model(apply_fn, params, adv)
        return jnp.sum(jnp.argmax(logits, axis=-1) == yb)

    base, total = jax.random.key(seed), 0
    for i, start in enumerate(range(0, len(x), batch_size)):
        xb, yb = jnp.asarray(x[start : start + batch_size]), jnp.asarray(y[start : start + batch_size])
        total += int(correct(params, xb, yb, jax.random.fold_in(base, i)))
    return total / len(x)
