"""Tests for hamjax.search.member_hparams: names and ranges, the per-member learning-rate scale, mixup."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from hamjax.search import member_hparams as mh


def test_warmup_then_cosine_matches_optax_one_step_later():
    # optax's warm-up reaches the peak at count w; the population's at count w - 1 (its first update is not 0)
    w, d, peak = 5, 20, 1.0
    ref = optax.warmup_cosine_decay_schedule(0.0, peak, w, d, 0.0)
    hp = {"warmup_steps": jnp.float32(w), "decay_steps": jnp.float32(d)}
    got = [float(mh.learning_rate_scale(t, hp)) for t in range(d)]
    np.testing.assert_allclose(got[:w], [(t + 1) / w for t in range(w)], rtol=1e-6)
    np.testing.assert_allclose(got[w:], [float(ref(t)) for t in range(w, d)], rtol=1e-5, atol=1e-6)


def test_zero_turns_each_off():
    hp = {"warmup_steps": jnp.float32(0), "decay_steps": jnp.float32(0)}
    assert [float(mh.learning_rate_scale(t, hp)) for t in (0, 7)] == [1.0, 1.0]
    assert float(mh.learning_rate_scale(3, {})) == 1.0


def test_mix_is_augment_mixup_when_on():
    key, x, t = jax.random.key(3), jnp.arange(12.0).reshape(6, 2), jax.nn.one_hot(jnp.arange(6) % 3, 3)
    got = mh.mix(key, x, t, jnp.float32(0.3))
    want = mh.augment.mixup(key, x, t, jnp.float32(0.3))
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    ("hparams", "match"),
    [
        ({"warmup_steps": 1.5}, "f: hyperparameter warmup_steps must be finite and an integer >= 0"),
        ({"mixup": float("nan")}, "f: hyperparameter mixup must be finite and >= 0"),
        ({"schedule": 1.0}, "f: unknown hyperparameters"),
    ],
)
def test_check_hparams_names_the_bad_value(hparams, match):
    with pytest.raises(ValueError, match=match):
        mh.check_hparams("f", hparams, 2)
