"""Tests for hamjax.tune.models: one model and trainer per structural bucket."""

import jax.numpy as jnp
import pytest

from hamjax.tune.models import Models, trainer_of


def _build(width):
    return (lambda p, x: x @ p["w"]), {"w": jnp.zeros((4, width))}


def test_each_width_is_built_once_and_auto_is_fixed_for_all():
    models = Models(None, None, build=_build, execution="auto", teacher=None)
    a, b = models.get((("width", 8),)), models.get((("width", 16),))
    assert models.get((("width", 8),)) is a and a.params["w"].shape == (4, 8) and b.params["w"].shape == (4, 16)
    a.trainer.chosen = "sequential"
    assert models.fix() == "sequential" and b.trainer.execution == "sequential" == models.execution


def test_without_a_builder_every_bucket_shares_the_one_model():
    f = lambda p, x: x @ p["w"]  # noqa: E731
    models = Models(f, {"w": jnp.zeros((4, 2))}, build=None, execution="vmap", teacher=None)
    assert models.get(()).apply_fn is f and models.get(()).trainer is trainer_of(f, "vmap", None)


def test_a_builder_that_returns_something_else_is_named():
    models = Models(None, None, build=lambda width: {"w": jnp.zeros((4, width))}, execution="vmap", teacher=None)
    with pytest.raises(ValueError, match=r"tune: model\(\*\*\{'width': 8\}\) must return \(apply_fn, params\)"):
        models.get((("width", 8),))
