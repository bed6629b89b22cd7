"""Sparsity schedules: ``schedule(step) -> sparsity``, jittable in ``step``, for gradual pruning.

A schedule is a pure function of the update count; :func:`hamjax.prune.masked_optimizer`
calls it inside its jitted update. The target sparsity may be an array leaf,
so a search can ``vmap`` over it.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from hamjax._checks import check_fraction, check_int, check_positive

Schedule = Callable[[jax.Array], jax.Array]


def polynomial_schedule(
    final_sparsity, *, initial_sparsity=0.0, begin_step: int = 0, end_step: int, update_every: int = 1, power=3
) -> Schedule:
    """The gradual pruning schedule of Zhu & Gupta (2017).

    .. math::

        s_t = s_f + (s_i - s_f) \\left(1 - \\frac{t' - t_0}{n \\Delta t}\\right)^{p}

    where ``t' = t0 + floor((t - t0) / Δt) Δt`` is ``t`` clipped to
    ``[t0, t0 + n Δt]`` and held between updates: sparsity moves every
    ``update_every`` steps, is ``s_i`` before ``begin_step`` and ``s_f`` from
    ``end_step`` on.

    Args:
      final_sparsity: ``s_f`` in ``[0, 1)``; may be an array leaf that a
        search varies.
      initial_sparsity: ``s_i`` in ``[0, 1)``.
      begin_step: ``t0 >= 0``.
      end_step: ``t0 + n Δt``, > ``begin_step``.
      update_every: ``Δt >= 1`` steps between sparsity updates.
      power: ``p > 0`` (3 in the paper).

    Returns:
      ``schedule(step) -> sparsity``, a float32 scalar; jittable in ``step``.

    Examples:
      >>> from hamjax import prune
      >>> schedule = prune.polynomial_schedule(0.8, end_step=10)
      >>> [round(float(schedule(t)), 4) for t in (0, 5, 10, 20)]
      [0.0, 0.7, 0.8, 0.8]

    References:
      Zhu & Gupta, "To prune, or not to prune: exploring the efficacy of
      pruning for model compression", ICLR workshop 2018 (arXiv 1710.01878).
    """
    where = "polynomial_schedule"
    s_f = jnp.asarray(check_fraction(where, "final_sparsity", final_sparsity), jnp.float32)
    s_i = jnp.asarray(check_fraction(where, "initial_sparsity", initial_sparsity), jnp.float32)
    begin = check_int(where, "begin_step", begin_step, minimum=0)
    end = check_int(where, "end_step", end_step, minimum=begin + 1)
    every = check_int(where, "update_every", update_every, minimum=1)
    check_positive(where, "power", power)

    def schedule(step):
        t = jnp.clip(jnp.asarray(step, jnp.int32), begin, end)
        t = jnp.where(t >= end, end, begin + (t - begin) // every * every)
        frac = (t - begin).astype(jnp.float32) / (end - begin)
        return s_f + (s_i - s_f) * (1.0 - frac) ** power

    return schedule


def constant_schedule(sparsity) -> Schedule:
    """A schedule that is ``sparsity`` at every step (one-shot pruning at the first update).

    Args:
      sparsity: fraction in ``[0, 1)``, possibly an array leaf.

    Returns:
      ``schedule(step) -> sparsity`` as a float32 scalar.

    Examples:
      >>> from hamjax import prune
      >>> float(prune.constant_schedule(0.5)(123))
      0.5

    References:
      Han et al., "Learning both Weights and Connections for Efficient Neural
      Networks", NeurIPS 2015.
    """
    s = jnp.asarray(check_fraction("constant_schedule", "sparsity", sparsity), jnp.float32)

    def schedule(step):
        del step
        return s

    return schedule
