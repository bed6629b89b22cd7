"""fp16 loss scaling as optax adapters: dynamic (grow and back off) and static.

float16 has a narrow exponent range (about 6e-8 to 65504), so small
gradients underflow to zero. Loss scaling multiplies the loss by ``S``
before differentiating and divides the gradients by ``S`` before the
update; :func:`dynamic_loss_scale` adapts ``S``, skipping the steps whose
gradients overflowed. Its state is a pytree in the optax state, so
:func:`loss_scale_of` finds the scale there and the whole step stays one
jitted, ``lax.scan``-able function. :func:`prepare_training` sets a model
and its optimizer up to train under a :class:`~hamjax.precision.Policy`,
with loss scaling when the policy computes in float16.

References:
  Micikevicius et al., "Mixed Precision Training", ICLR 2018.
  https://arxiv.org/abs/1710.03740 ; jmp (https://github.com/google-deepmind/jmp).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from hamjax._base import optax_update, trainable
from hamjax._checks import check_choice, check_int, check_number, check_positive
from hamjax.precision.policy import Policy, get_policy, is_floating, with_policy

__all__ = [
    "LOSS_SCALES",
    "DynamicLossScaleState",
    "all_finite",
    "dynamic_loss_scale",
    "loss_scale_of",
    "prepare_training",
    "static_loss_scale",
]

PyTree = Any

LOSS_SCALES = ("auto", "dynamic", "none")
"""The ``loss_scale=`` values of :func:`prepare_training` and :class:`hamjax.TrainConfig`."""


def all_finite(tree: PyTree) -> jax.Array:
    """Whether every floating element of ``tree`` is finite, as a scalar boolean array.

    Args:
      tree: a pytree; its non-floating leaves are ignored.

    Returns:
      A boolean scalar array (``True`` for a tree with no floating leaf).

    Examples:
      >>> import jax.numpy as jnp
      >>> from hamjax.precision import all_finite
      >>> bool(all_finite({"a": jnp.ones(2), "b": jnp.array([1.0, jnp.inf])}))
      False
    """
    checks = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if is_floating(x)]
    return functools.reduce(jnp.logical_and, checks, jnp.asarray(True))


class DynamicLossScaleState(NamedTuple):
    """The state of :func:`dynamic_loss_scale` and :func:`static_loss_scale`.

    Attributes:
      loss_scale: float32 scalar ``S``; the loss is multiplied by it before
        differentiation (see :func:`loss_scale_of`).
      finite_count: int32 scalar, consecutive steps with finite gradients
        since the scale last changed.
      skipped_count: int32 scalar, steps skipped because a gradient was not finite.
      inner_state: the wrapped optimizer's state.
    """

    loss_scale: jax.Array
    finite_count: jax.Array
    skipped_count: jax.Array
    inner_state: optax.OptState


def _unscale(g, scale):
    if not is_floating(g):
        return g
    # float32, or the gradient's own dtype when wider: picked by width, since strict promotion has no
    # bfloat16 -> float32 path for jnp.promote_types to find
    wide = g.dtype if jnp.finfo(g.dtype).bits > 32 else jnp.dtype(jnp.float32)
    return (g.astype(wide) / scale.astype(wide)).astype(g.dtype)


def _loss_scaled(inner: optax.GradientTransformation, initial_scale: float, next_scale: Callable):
    inner = optax.with_extra_args_support(inner)

    def init_fn(params):
        # two separate zeros, not one array twice: a train step that donates its state donates each buffer once
        finite_count, skipped_count = jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32)
        scale = jnp.asarray(initial_scale, jnp.float32)
        return DynamicLossScaleState(scale, finite_count, skipped_count, inner.init(params))

    def update_fn(updates, state, params=None, **extra_args):
        grads = jax.tree.map(lambda g: _unscale(g, state.loss_scale), updates)
        finite = all_finite(grads)
        new_updates, new_inner = optax_update(inner, grads, state.inner_state, params, **extra_args)
        # Both branches are computed and one is selected (as jmp does): this stays cheap under vmap and scan.
        new_updates = jax.tree.map(lambda u: jnp.where(finite, u, jnp.zeros_like(u)), new_updates)
        new_inner = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new_inner, state.inner_state)
        loss_scale, finite_count = next_scale(state.loss_scale, state.finite_count, finite)
        skipped_count = state.skipped_count + jnp.where(finite, 0, 1).astype(jnp.int32)
        return new_updates, DynamicLossScaleState(loss_scale, finite_count, skipped_count, new_inner)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def dynamic_loss_scale(
    inner: optax.GradientTransformation,
    *,
    initial_scale: float = 2.0**15,
    growth_interval: int = 2000,
    growth_factor: float = 2.0,
    backoff_factor: float = 0.5,
    min_scale: float = 1.0,
) -> optax.GradientTransformationExtraArgs:
    """Wrap ``inner`` for training on gradients of a scaled loss, adapting the scale.

    ``update`` receives ``g = ∇(S·L)`` where ``S`` is the state's
    ``loss_scale``. It divides by ``S`` (in float32, then back to each
    gradient's dtype) and, when every gradient is finite, runs ``inner`` on
    ``g / S``; after ``growth_interval`` finite steps in a row ``S`` grows
    to ``S·growth_factor``. When any gradient is ``inf`` or ``nan`` the
    step is skipped: the updates are zeros, ``inner``'s state is kept,
    ``S`` drops to ``max(S·backoff_factor, min_scale)`` and ``skipped_count``
    counts it. :func:`hamjax.train.make_train_step` scales the loss by
    :func:`loss_scale_of` of the optimizer state, so this is all a
    training loop needs.

    Args:
      inner: the optimizer that sees the unscaled gradients.
      initial_scale: the first ``S`` (> 0).
      growth_interval: finite steps in a row before ``S`` grows (>= 1).
      growth_factor: what ``S`` is multiplied by when it grows (> 1).
      backoff_factor: what ``S`` is multiplied by after an overflow, in (0, 1).
      min_scale: the floor of ``S`` (> 0, at most ``initial_scale``).

    Returns:
      An optax transformation whose state is a :class:`DynamicLossScaleState`.

    Raises:
      ValueError: naming the argument and its value, before anything is traced.

    Examples:
      >>> import jax.numpy as jnp, optax
      >>> from hamjax.precision import dynamic_loss_scale
      >>> opt = dynamic_loss_scale(optax.sgd(0.1), initial_scale=8.0, growth_interval=2)
      >>> params = {"w": jnp.ones(2)}
      >>> state = opt.init(params)
      >>> updates, state = opt.update({"w": jnp.array([8.0, 16.0])}, state, params)
      >>> updates["w"].tolist(), float(state.loss_scale)
      ([-0.10000000149011612, -0.20000000298023224], 8.0)
      >>> updates, state = opt.update({"w": jnp.array([jnp.inf, 0.0])}, state, params)
      >>> updates["w"].tolist(), float(state.loss_scale), int(state.skipped_count)
      ([0.0, 0.0], 4.0, 1)

    References:
      Micikevicius et al., "Mixed Precision Training", ICLR 2018 (section 3.2).
    """
    where = "dynamic_loss_scale"
    initial_scale = check_positive(where, "initial_scale", initial_scale)
    min_scale = check_positive(where, "min_scale", min_scale)
    growth_interval = check_int(where, "growth_interval", growth_interval, minimum=1)
    growth_factor = check_number(where, "growth_factor", growth_factor, minimum=1, exclusive_minimum=True)
    backoff_factor = check_number(
        where, "backoff_factor", backoff_factor, minimum=0, maximum=1, exclusive_minimum=True, exclusive_maximum=True
    )
    if min_scale > initial_scale:
        raise ValueError(f"{where}: min_scale={min_scale!r} must be <= initial_scale={initial_scale!r}")

    def next_scale(scale, finite_count, finite):
        good = finite_count + 1
        grow = good >= growth_interval
        grown = scale * growth_factor
        grown = jnp.where(grow & jnp.isfinite(grown), grown, scale)
        shrunk = jnp.maximum(scale * backoff_factor, min_scale)
        new_scale = jnp.where(finite, grown, shrunk).astype(jnp.float32)
        new_good = jnp.where(finite & ~grow, good, 0).astype(jnp.int32)
        return new_scale, new_good

    return _loss_scaled(inner, initial_scale, next_scale)


def static_loss_scale(inner: optax.GradientTransformation, scale: float) -> optax.GradientTransformationExtraArgs:
    """Wrap ``inner`` for gradients of ``scale·L`` with a fixed ``scale``.

    Like :func:`dynamic_loss_scale` (same state type, non-finite steps are
    skipped and counted) but ``loss_scale`` never changes.

    Args:
      inner: the optimizer that sees the unscaled gradients.
      scale: the loss scale (> 0).

    Returns:
      An optax transformation whose state is a :class:`DynamicLossScaleState`.

    Examples:
      >>> import jax.numpy as jnp, optax
      >>> from hamjax.precision import static_loss_scale
      >>> opt = static_loss_scale(optax.sgd(1.0), 4.0)
      >>> updates, state = opt.update({"w": jnp.array([4.0])}, opt.init({"w": jnp.zeros(1)}))
      >>> updates["w"].tolist(), float(state.loss_scale)
      ([-1.0], 4.0)
    """
    scale = check_positive("static_loss_scale", "scale", scale)

    def next_scale(loss_scale, finite_count, finite):
        return loss_scale, jnp.where(finite, finite_count + 1, 0).astype(jnp.int32)

    return _loss_scaled(inner, scale, next_scale)


def _find_loss_scale(opt_state) -> jax.Array | None:
    try:
        return optax.tree_utils.tree_get(opt_state, "loss_scale")
    except KeyError as err:
        raise ValueError(
            "loss_scale_of: the optimizer state holds more than one loss_scale (loss-scale adapters nested "
            "inside each other); wrap the optimizer once"
        ) from err


def loss_scale_of(opt_state) -> jax.Array:
    """The loss scale held anywhere in an optax state, or float32 ``1.0`` if there is none.

    Args:
      opt_state: any optax state, for example of an ``optax.chain``
        containing :func:`dynamic_loss_scale`.

    Returns:
      A float32 scalar array.

    Raises:
      ValueError: if the state holds more than one loss scale.

    Examples:
      >>> import jax.numpy as jnp, optax
      >>> from hamjax.precision import dynamic_loss_scale, loss_scale_of
      >>> params = {"w": jnp.ones(2)}
      >>> float(loss_scale_of(dynamic_loss_scale(optax.adam(1e-3)).init(params)))
      32768.0
      >>> float(loss_scale_of(optax.adam(1e-3).init(params)))
      1.0
    """
    found = _find_loss_scale(opt_state)
    return jnp.ones((), jnp.float32) if found is None else found


def prepare_training(
    apply_fn: Callable,
    params: PyTree,
    optimizer: optax.GradientTransformation,
    policy: Policy | str | None,
    *,
    loss_scale: str = "auto",
) -> tuple[Callable, PyTree, optax.GradientTransformation]:
    """Set a model and its optimizer up to train under ``policy``.

    :func:`hamjax.train.fit` does this when ``TrainConfig.precision`` is
    set; a hand-written loop can call it and scale its loss by
    :func:`loss_scale_of` of the optimizer state.

    Args:
      apply_fn: the model's apply function (any kind of the contract).
      params: its params; floating leaves are cast to ``param_dtype``.
      optimizer: the optax optimizer over the trainable params.
      policy: a :class:`~hamjax.precision.Policy`, its string, or ``None`` (no casting).
      loss_scale: one of :data:`LOSS_SCALES`: ``"dynamic"`` wraps ``optimizer`` in
        :func:`dynamic_loss_scale`; ``"auto"`` does so when the policy
        computes in float16; ``"none"`` never does. An optimizer that already
        holds a loss scale is left as it is.

    Returns:
      ``(apply_fn, params, optimizer)``.

    Raises:
      ValueError: for an unknown ``loss_scale`` or a bad policy.

    Examples:
      >>> import jax.numpy as jnp, optax
      >>> from hamjax.precision import loss_scale_of, prepare_training
      >>> f, p, opt = prepare_training(lambda p, x: x @ p["w"], {"w": jnp.ones((3, 2))}, optax.sgd(0.1), "p=f32,c=f16,o=f32")
      >>> f(p, jnp.ones((1, 3))).dtype.name, float(loss_scale_of(opt.init(p)))
      ('float32', 32768.0)
    """
    check_choice("prepare_training", "loss_scale", loss_scale, LOSS_SCALES)
    if policy is not None:
        policy = get_policy(policy)
        apply_fn = with_policy(apply_fn, policy)
        params = policy.cast_to_param(params)
    half = policy is not None and policy.compute_dtype == jnp.float16
    if loss_scale == "dynamic" or (loss_scale == "auto" and half):
        abstract_state = jax.eval_shape(optimizer.init, trainable(apply_fn, params))
        if _find_loss_scale(abstract_state) is None:
            optimizer = dynamic_loss_scale(optimizer)
    return apply_fn, params, optimizer
