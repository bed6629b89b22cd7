"""Every optax adapter runs through the shared conformance check, once jitted and once eagerly (chex variants).

An adapter joins by adding a ``(name, make, hparams_batch, grads_fn)`` case to ``CASES``.
"""

from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax
import pytest
from absl.testing import parameterized
from conformance import check_optax_adapter, example_grads, example_params

from hamjax import distill, precision, prune, regularize

FIXED_MASKS = prune.magnitude_masks(example_params(), 0.5)
LEARNING_RATE = {"learning_rate": jnp.array([0.1, 0.03, 0.01])}
SPARSITY = {"sparsity": jnp.array([0.3, 0.5, 0.8])}
DECAY = {"decay": jnp.array([0.5, 0.9, 0.99])}
LOSS_SCALE = 2.0**10


def scaled_grads_with_an_overflow(params, step):
    """Gradients of a loss scaled by ``LOSS_SCALE``, with an ``inf`` at step 1: the skip path runs too."""
    grads = jax.tree.map(lambda g: (g * LOSS_SCALE).astype(g.dtype), example_grads(params, step))
    kernel = grads["dense_0"]["kernel"]
    grads["dense_0"]["kernel"] = jnp.where(step == 1, jnp.inf, kernel).astype(kernel.dtype)
    return grads


def _scheduled(method):
    def make(hp):
        schedule = prune.polynomial_schedule(hp["sparsity"], end_step=4, update_every=2)
        return prune.masked_optimizer(optax.adam(0.05), method=method, schedule=schedule, update_every=2)

    return (f"masked_optimizer(method={method!r}, polynomial schedule)", make, SPARSITY, example_grads)


# Fixed masks and the loss-scale settings are static (checked before tracing), so those cases have no array
# hyperparameters to vmap over ({}). The wrapped optimizers take Python-number learning rates: an array learning
# rate would promote bfloat16 updates to float32 inside optax, before the adapter sees them.
CASES = [
    (
        "masked_optimizer(fixed masks)",
        lambda hp: prune.masked_optimizer(optax.adam(0.05), FIXED_MASKS, method=None),
        {},
        example_grads,
    ),
    *[_scheduled(method) for method in prune.SCHEDULED_METHODS],
    (
        "dynamic_loss_scale",
        lambda hp: precision.dynamic_loss_scale(optax.adam(0.05), initial_scale=LOSS_SCALE, growth_interval=2),
        {},
        scaled_grads_with_an_overflow,
    ),
    (
        "static_loss_scale",
        lambda hp: precision.static_loss_scale(optax.sgd(0.1), LOSS_SCALE),
        {},
        scaled_grads_with_an_overflow,
    ),
    ("ema_teacher", lambda hp: distill.ema_teacher(optax.sgd(0.1), hp["decay"]), DECAY, example_grads),
    (
        "spectral_penalty",
        lambda hp: optax.chain(regularize.spectral_penalty(hp["coefficient"]), optax.sgd(0.1)),
        {"coefficient": jnp.array([0.0, 0.1, 1.0])},
        example_grads,
    ),
]


class OptaxAdapterConformance(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(*CASES)
    def test_conforms(self, make, hparams, grads_fn):
        check_optax_adapter(make, hparams, variant=self.variant, grads_fn=grads_fn)


def test_every_scheduled_method_is_a_case():
    names = {c[0] for c in CASES}
    for method in prune.SCHEDULED_METHODS:
        assert any(f"method={method!r}" in name for name in names), method


class _CountState(NamedTuple):
    count: jax.Array


def test_the_check_catches_updates_that_lose_the_params_dtype():
    def make(hp):
        del hp

        def update(updates, state, params=None):
            del params
            return jax.tree.map(lambda u: u.astype(jnp.float32), updates), state

        return optax.GradientTransformation(lambda p: _CountState(jnp.zeros((), jnp.int32)), update)

    with pytest.raises(AssertionError, match="updates vs params of dtype bfloat16"):
        check_optax_adapter(make, {})


def test_the_check_catches_a_state_whose_dtype_changes_after_an_update():
    def make(hp):
        del hp

        def update(updates, state, params=None):
            del params
            return updates, _CountState((state.count + 1).astype(jnp.float32))

        return optax.GradientTransformation(lambda p: _CountState(jnp.zeros((), jnp.int32)), update)

    with pytest.raises(AssertionError, match="state after updates"):
        check_optax_adapter(make, {})


def test_the_check_catches_an_adapter_that_ignores_its_hyperparameter_under_vmap():
    seen = []

    def make(hp):
        seen.append(hp["learning_rate"])
        rate = hp["learning_rate"] if len(seen) % 2 else 0.5  # a Python branch on how often make ran

        def update(updates, state, params=None):
            del params
            return jax.tree.map(lambda g: -g * jnp.asarray(rate, g.dtype), updates), state

        return optax.GradientTransformation(lambda p: _CountState(jnp.zeros((), jnp.int32)), update)

    with pytest.raises(AssertionError):
        check_optax_adapter(make, LEARNING_RATE)
