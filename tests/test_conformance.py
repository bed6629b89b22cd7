"""Every param transform runs through the shared conformance check, once jitted and once eagerly (chex variants).

Later transforms join by adding a ``(name, make, hparams_batch)`` case.
"""

from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import pytest
from absl.testing import parameterized
from conformance import check_transform

import hamjax
from hamjax import prune, quant, regularize


class ScaleState(NamedTuple):
    count: jax.Array


def _scale(hp):
    """A minimal well-behaved transform: multiply float leaves by a traced factor, count calls."""

    def init(params):
        del params
        return ScaleState(jnp.zeros((), jnp.int32))

    def apply(params, state, **extra):
        del extra
        return jax.tree.map(lambda a: a * hp["factor"].astype(a.dtype), params), ScaleState(state.count + 1)

    return hamjax.Transform(init, apply)


def _with_fixed_grads(t):
    """Feed ``grads=`` that are a fixed function of params, so grads-reading transforms run in the harness."""

    def apply(params, state, **extra):
        del extra
        return t.apply(params, state, grads=jax.tree.map(lambda w: jnp.cos(3 * w).astype(w.dtype), params))

    return hamjax.Transform(t.init, apply)


SPARSITY = {"sparsity": jnp.array([0.3, 0.5, 0.8])}
BITS = {"bits": jnp.array([4.0, 6.0, 8.0])}

CASES = [
    ("identity", lambda hp: hamjax.identity(), {}),
    ("chain(identity, identity)", lambda hp: hamjax.chain(hamjax.identity(), hamjax.identity()), {}),
    ("chain(scale, scale)", lambda hp: hamjax.chain(_scale(hp), _scale(hp)), {"factor": jnp.array([0.5, 2.0, 3.0])}),
    ("magnitude_prune", lambda hp: prune.magnitude_prune(hp["sparsity"]), SPARSITY),
    ("global_magnitude_prune", lambda hp: prune.global_magnitude_prune(hp["sparsity"]), SPARSITY),
    ("random_prune", lambda hp: prune.random_prune(hp["sparsity"], seed=1), SPARSITY),
    ("nm_prune(2, 4)", lambda hp: prune.nm_prune(2, 4), {}),
    ("block_prune", lambda hp: prune.block_prune(hp["sparsity"], block=(4, 4)), SPARSITY),
    ("block_prune(2, 2)", lambda hp: prune.block_prune(hp["sparsity"], block=(2, 2)), SPARSITY),
    ("saliency_prune", lambda hp: _with_fixed_grads(prune.saliency_prune(hp["sparsity"])), SPARSITY),
    ("movement_prune", lambda hp: _with_fixed_grads(prune.movement_prune(hp["sparsity"])), SPARSITY),
    ("fake_quant_weights", lambda hp: quant.fake_quant_weights(hp["bits"]), BITS),
    ("fake_quant_weights(per-tensor)", lambda hp: quant.fake_quant_weights(hp["bits"], per_channel=False), BITS),
    (
        "fake_quant_weights(asymmetric, per-tensor)",
        lambda hp: quant.fake_quant_weights(hp["bits"], symmetric=False, per_channel=False),
        BITS,
    ),
    (
        "fake_quant_weights(asymmetric, every float leaf, axis 0)",
        lambda hp: quant.fake_quant_weights(
            hp["bits"], symmetric=False, filter=lambda p, x: True, channel_axes=lambda p, x: (0,)
        ),
        {"bits": jnp.array([2.0, 9.0, 16.0])},
    ),
    ("spectral_normalize", lambda hp: regularize.spectral_normalize(iterations=2), {}),
]


class TransformConformance(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(*CASES)
    def test_conforms(self, make, hparams):
        check_transform(make, hparams, variant=self.variant)


def test_harness_catches_a_state_whose_structure_changes():
    def make(hp):
        del hp

        def init(params):
            del params
            return ()

        def apply(params, state, **extra):
            return params, (*state, jnp.zeros(()))

        return hamjax.Transform(init, apply)

    with pytest.raises((AssertionError, TypeError)):
        check_transform(make, {"x": jnp.zeros(2)})


def test_harness_catches_a_dtype_change():
    def make(hp):
        del hp
        t = hamjax.identity()
        return hamjax.Transform(t.init, lambda p, s, **e: (jax.tree.map(lambda a: a.astype(jnp.float32), p), s))

    with pytest.raises(AssertionError, match="dtype"):
        check_transform(make, {"x": jnp.zeros(2)})


def test_harness_catches_python_state_that_breaks_vmap_equivalence():
    calls = []

    def make(hp):
        def apply(params, state, **extra):
            calls.append(1)  # hidden Python state: the result depends on how often apply ran
            return jax.tree.map(lambda a: a * len(calls), params), state

        return hamjax.Transform(lambda p: (), apply)

    with pytest.raises(AssertionError):
        check_transform(make, {"x": jnp.zeros(2)})
