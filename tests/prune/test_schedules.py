"""Sparsity schedules: the Zhu & Gupta polynomial, the constant schedule, and their argument checks."""

import jax
import jax.numpy as jnp
import pytest

from hamjax import prune


def test_polynomial_schedule_follows_zhu_gupta():
    s_i, s_f, t0, end, every = 0.1, 0.8, 5, 25, 4
    schedule = prune.polynomial_schedule(s_f, initial_sparsity=s_i, begin_step=t0, end_step=end, update_every=every)
    got = jax.jit(jax.vmap(schedule))(jnp.arange(40))
    for t in range(40):
        tq = min(max(t, t0), end)
        tq = end if tq >= end else t0 + (tq - t0) // every * every
        want = s_f + (s_i - s_f) * (1 - (tq - t0) / (end - t0)) ** 3
        assert float(got[t]) == pytest.approx(want, abs=1e-6), t
    assert float(got[0]) == pytest.approx(s_i) and float(got[end]) == pytest.approx(s_f)
    assert float(prune.constant_schedule(0.3)(7)) == pytest.approx(0.3)


def test_schedule_errors():
    with pytest.raises(ValueError, match="end_step must be an integer >= 6"):
        prune.polynomial_schedule(0.5, begin_step=5, end_step=5)
    with pytest.raises(ValueError, match="update_every must be an integer >= 1"):
        prune.polynomial_schedule(0.5, end_step=5, update_every=0)
    with pytest.raises(ValueError, match="power must be a finite number > 0"):
        prune.polynomial_schedule(0.5, end_step=5, power=0)
    with pytest.raises(ValueError, match=r"final_sparsity must be a scalar in \[0, 1\)"):
        prune.polynomial_schedule(1.0, end_step=5)
    with pytest.raises(ValueError, match="initial_sparsity"):
        prune.polynomial_schedule(0.5, initial_sparsity=2.0, end_step=5)
