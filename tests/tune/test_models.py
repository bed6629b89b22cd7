"""Tests for hamjax.tune.models: one model and trainer per structural bucket."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hamjax.tune.models import Models, check_builder, reference, trainer_of


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


def _hidden(build, **structure):
    """The kernel shapes of a built reference model (dense layers only: rank 2)."""
    return [tuple(a.shape) for a in jax.tree.leaves(build(**structure)[1]) if a.ndim == 2]


def test_reference_mlp_depth_width_and_activation(digits):
    build = reference("mlp", digits)
    assert _hidden(build, depth=3, width=8) == [(64, 8), (8, 8), (8, 8), (8, 10)]
    x = digits.val.x[:4]
    relu, tanh = build(width=8, depth=1, activation="relu"), build(width=8, depth=1, activation="tanh")
    assert _hidden(lambda: relu) == [(64, 8), (8, 10)]
    assert not np.allclose(relu[0](relu[1], x), tanh[0](tanh[1], x))  # same params, another activation


@pytest.mark.slow
def test_reference_depth_of_the_other_models(digits):
    dense = _hidden(reference("cnn", digits), depth=3)[-4:]  # the CNN's dense layers repeat their last size
    assert [s[1] for s in dense] == [120, 84, 84, 10]
    for name in ("vit", "hamnet"):
        a, b = (reference(name, digits)(depth=d, width=16)[1] for d in (1, 2))
        assert len(jax.tree.leaves(b)) > len(jax.tree.leaves(a))


def test_reference_refuses_what_a_model_cannot_vary(digits):
    with pytest.raises(ValueError, match=r"reference model 'cnn' has no activation to choose \(only the mlp config"):
        reference("cnn", digits, structure=["depth", "activation"])
    with pytest.raises(
        ValueError, match=r"searches \['activation'\], but model\(width=None, depth=None\) takes no such"
    ):
        check_builder("tune", reference("vit", digits), ["activation"])
    build = reference("mlp", digits)
    with pytest.raises(ValueError, match="tune.models.reference: depth must be an integer >= 1, got 0"):
        build(depth=0)
    with pytest.raises(ValueError, match="tune.models.reference: activation must be one of"):
        build(activation="softmax")
    with pytest.raises(ValueError, match="tune: a width, depth or activation needs a reference model"):
        reference("hamjax.models:build", digits)


def test_check_builder_takes_keywords_or_kwargs():
    check_builder("tune", lambda depth, activation: None, ["depth", "activation"])
    check_builder("tune", lambda **structure: None, ["width", "depth", "activation"])
    check_builder("tune", None, [])
    with pytest.raises(ValueError, match=r"tune: \['depth'\] change the model: give model=lambda depth:"):
        check_builder("tune", None, ["depth"])
    with pytest.raises(ValueError, match="tune: model must be model"):
        check_builder("tune", 3, [])
