"""The strict contract: apply functions refuse variables that do not fit the model, naming the path."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from flax.core import FrozenDict

import hamjax
from hamjax import _base


class _TwoLayers(nnx.Module):
    def __init__(self, rngs):
        self.linear = nnx.Linear(3, 2, rngs=rngs)
        self.linear2 = nnx.Linear(2, 2, rngs=rngs)

    def __call__(self, x):
        return self.linear2(self.linear(x))


@pytest.fixture
def nnx_pair():
    return hamjax.functional(_TwoLayers(nnx.Rngs(0)))


X = jnp.linspace(-1.0, 1.0, 12).reshape(4, 3)


def _with(params, **changes):
    return {"params": {**params, **changes}}


@pytest.mark.parametrize("jit", [False, True])
def test_functional_refuses_a_missing_layer(nnx_pair, jit):
    apply_fn, v = nnx_pair
    call = jax.jit(apply_fn) if jit else apply_fn
    with pytest.raises(
        ValueError, match=r"^apply_fn: variables\['params'\]\['linear2'\] is missing \(the module has it\)"
    ):
        call({"params": {"linear": v["params"]["linear"]}}, X)
    bias_only = _with(v["params"], linear={"kernel": v["params"]["linear"]["kernel"]})
    with pytest.raises(ValueError, match=r"variables\['params'\]\['linear'\]\['bias'\] is missing"):
        call(bias_only, X)


@pytest.mark.parametrize("jit", [False, True])
def test_functional_refuses_an_extra_key(nnx_pair, jit):
    apply_fn, v = nnx_pair
    call = jax.jit(apply_fn) if jit else apply_fn
    with pytest.raises(ValueError, match=r"^apply_fn: variables\['params'\]\['foo'\] is not in the module"):
        call(_with(v["params"], foo={"kernel": jnp.ones((2, 2))}), X)
    with pytest.raises(ValueError, match=r"variables\['foo'\] is not in the module"):
        call({**v, "foo": {"a": jnp.ones(2)}}, X)


@pytest.mark.parametrize("jit", [False, True])
def test_functional_refuses_a_wrong_shape_naming_the_path(nnx_pair, jit):
    apply_fn, v = nnx_pair
    call = jax.jit(apply_fn) if jit else apply_fn
    bad = _with(v["params"], linear={**v["params"]["linear"], "kernel": jnp.ones((3, 4))})
    with pytest.raises(
        ValueError,
        match=r"^apply_fn: variables\['params'\]\['linear'\]\['kernel'\] has shape \(3, 4\); the module's is \(3, 2\)",
    ):
        call(bad, X)
    with pytest.raises(ValueError, match=r"\['linear'\] is an array of shape \(3,\); the module has a subtree there"):
        call(_with(v["params"], linear=jnp.ones(3)), X)
    nested = _with(v["params"], linear={**v["params"]["linear"], "bias": {"b": jnp.ones(2)}})
    with pytest.raises(
        ValueError, match=r"\['linear'\]\['bias'\] is a subtree; the module's is an array of shape \(2,\)"
    ):
        call(nested, X)


def test_functional_refuses_variables_that_are_not_a_mapping(nnx_pair):
    apply_fn, _ = nnx_pair
    with pytest.raises(TypeError, match="apply_fn: variables must be a mapping"):
        apply_fn(None, X)


def test_functional_good_path_is_unchanged_and_dtypes_may_differ(nnx_pair):
    apply_fn, v = nnx_pair
    module = _TwoLayers(nnx.Rngs(0))
    np.testing.assert_allclose(jax.jit(apply_fn)(v, X), module(X), rtol=1e-6)
    np.testing.assert_allclose(apply_fn(v, X), module(X), rtol=1e-6)
    half = jax.tree.map(lambda a: a.astype(jnp.bfloat16), v)  # a precision policy's cast is not a shape change
    assert apply_fn(half, X.astype(jnp.bfloat16)).dtype == jnp.bfloat16
    grads = jax.grad(lambda p: apply_fn({"params": p}, X).sum())(v["params"])
    assert jax.tree.structure(grads) == jax.tree.structure(v["params"])


def test_a_repeated_eager_call_does_not_walk_the_tree_again(nnx_pair, monkeypatch):
    apply_fn, v = nnx_pair
    walks = []
    real = _base._first_difference
    monkeypatch.setattr(_base, "_first_difference", lambda *a: walks.append(1) or real(*a))
    apply_fn(v, X)
    apply_fn(jax.tree.map(jnp.zeros_like, v), X)  # same structure and shapes: the signature is known
    assert walks == []
    frozen = FrozenDict(v)  # another container type: walked once, then remembered
    apply_fn(frozen, X)
    apply_fn(frozen, X)
    assert walks == [1]
    with pytest.raises(ValueError, match="linear2"):  # a failing signature is not remembered
        apply_fn({"params": {"linear": v["params"]["linear"]}}, X)
    with pytest.raises(ValueError, match="linear2"):
        apply_fn({"params": {"linear": v["params"]["linear"]}}, X)
    assert walks == [1, 1, 1]


def test_jit_checks_at_trace_time_only(nnx_pair, monkeypatch):
    apply_fn, v = nnx_pair
    walks, traces = [], []
    real = _base._leaf_paths
    monkeypatch.setattr(_base, "_leaf_paths", lambda t: walks.append(1) or real(t))
    f = jax.jit(lambda v, x: traces.append(1) or apply_fn(v, x))
    np.testing.assert_allclose(f(v, X), apply_fn(v, X), rtol=1e-6)
    f(jax.tree.map(jnp.ones_like, v), X)
    assert traces == [1]  # one trace, so one check
    assert walks == []  # the traced signature is the module's: nothing to walk


def test_vmap_over_a_member_axis_sees_per_member_shapes(nnx_pair):
    apply_fn, v = nnx_pair
    members = jax.tree.map(lambda a: jnp.stack([a, 2 * a, 3 * a]), v)
    ys = jax.vmap(apply_fn, in_axes=(0, None))(members, X)
    assert ys.shape == (3, 4, 2)
    for i in range(3):
        np.testing.assert_allclose(ys[i], apply_fn(jax.tree.map(lambda a, i=i: a[i], members), X), rtol=1e-5)
    bad = jax.tree.map(lambda a: a, members)
    bad["params"]["linear"]["kernel"] = jnp.ones((3, 3, 4))
    with pytest.raises(ValueError, match=r"\['linear'\]\['kernel'\] has shape \(3, 4\); the module's is \(3, 2\)"):
        jax.vmap(apply_fn, in_axes=(0, None))(bad, X)
    with pytest.raises(
        ValueError, match=r"\['bias'\] has shape \(3, 2\); the module's is \(2,\)"
    ):  # a member axis without vmap is refused
        apply_fn(members, X)


class _LinenTwo(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        h = nn.Dropout(0.5, deterministic=not train)(nn.Dense(4)(x))
        return nn.Dense(2)(h)


@pytest.fixture
def linen_pair():
    model = _LinenTwo()
    return model, model.init(jax.random.key(0), X)


def test_linen_functional_refuses_none_or_non_mapping_variables(linen_pair):
    model, _ = linen_pair
    with pytest.raises(TypeError, match=r"^linen_functional: variables must be a mapping .*got None$"):
        hamjax.linen_functional(model, None)
    with pytest.raises(TypeError, match="linen_functional: variables must be a mapping"):
        hamjax.linen_functional(model, [1, 2])


def test_linen_functional_refuses_an_nnx_module_at_wrap_time(linen_pair):
    _, variables = linen_pair
    with pytest.raises(
        TypeError, match=r"linen_functional: model must be a flax.linen.Module, got Linear; .*hamjax.functional"
    ):
        hamjax.linen_functional(nnx.Linear(3, 2, rngs=nnx.Rngs(0)), variables)
    with pytest.raises(TypeError, match=r"model must be a flax.linen.Module, got function$"):
        hamjax.linen_functional(lambda p, x: x, variables)


def test_linen_apply_fn_names_the_path(linen_pair):
    model, variables = linen_pair
    apply_fn, v = hamjax.linen_functional(model, variables)
    p = v["params"]
    with pytest.raises(ValueError, match=r"^apply_fn: variables\['params'\]\['foo'\] is not in the module$"):
        apply_fn({"params": {**p, "foo": jnp.ones(2)}}, X)  # flax alone ignores the extra key
    with pytest.raises(ValueError, match=r"variables\['params'\]\['Dense_0'\] is missing"):
        jax.jit(apply_fn)({"params": {"Dense_1": p["Dense_1"]}}, X)
    bad = {"params": {**p, "Dense_1": {**p["Dense_1"], "kernel": jnp.ones((4, 3))}}}
    with pytest.raises(ValueError, match=r"\['Dense_1'\]\['kernel'\] has shape \(4, 3\); the module's is \(4, 2\)"):
        apply_fn(bad, X)
    np.testing.assert_allclose(jax.jit(apply_fn)(v, X), model.apply(variables, X), rtol=1e-6)
    y, new = apply_fn(v, X, train=True, rng=jax.random.key(1), mutable=True)
    assert y.shape == (4, 2) and jax.tree.structure(new) == jax.tree.structure(v)
