"""Every transform runs through the shared conformance check.

Later transforms join by adding a ``(name, make, hparams_batch)`` case.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import pytest
from conformance import check_transform

import hamjax


class ScaleState(NamedTuple):
    count: jax.Array


def _scale(hp):
    """A minimal well-behaved transform: multiply float leaves by a traced factor, count calls."""

    def init(params):
        del params
        return ScaleState(jnp.zeros((), jnp.int32))

    def apply(params, state, **extra):
        del extra
        return jax.tree.map(lambda a: (a * hp["factor"]).astype(a.dtype), params), ScaleState(state.count + 1)

    return hamjax.Transform(init, apply)


CASES = [
    ("identity", lambda hp: hamjax.identity(), {}),
    ("chain(identity, identity)", lambda hp: hamjax.chain(hamjax.identity(), hamjax.identity()), {}),
    ("chain(scale, scale)", lambda hp: hamjax.chain(_scale(hp), _scale(hp)), {"factor": jnp.array([0.5, 2.0, 3.0])}),
]


@pytest.mark.parametrize(("name", "make", "hparams"), CASES, ids=[c[0] for c in CASES])
def test_conformance(name, make, hparams):
    check_transform(make, hparams)


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
