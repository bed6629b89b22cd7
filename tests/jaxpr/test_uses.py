"""weight_filter: the leaves a model uses only as dense or convolution weights, decided by use, not by name."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from reference_models import plain_transformer, random_model

import hamjax
from hamjax import jaxpr, prune


def test_a_transformer_s_added_pos_and_gathered_embed_are_left_out():
    apply_fn, params, tokens = plain_transformer()
    keep = jaxpr.weight_filter(apply_fn, params, tokens)
    weights = ["['attn_out']", "['attn_qkv']", "['head']", "['mlp_in']", "['mlp_out']"]
    assert prune.selected(params, keep) == weights
    assert prune.selected(params) == [*weights, "['pos']"]  # the name-based default prunes the (16, 64) table
    masks = prune.magnitude_masks(params, 0.5, filter=keep, scope="global")
    assert masks["pos"] is None and masks["embed"] is None and not masks["head"].all()


def test_a_tied_embedding_is_not_a_weight_and_a_reshaped_kernel_is():
    rng = np.random.default_rng(0)
    params = {
        "table": jnp.asarray(rng.normal(size=(9, 4)), jnp.float32),
        "qkv": jnp.asarray(rng.normal(size=(4, 3, 4)), jnp.float32),
        "scaled": jnp.ones((12, 4)),
    }

    def f(p, t):
        h = p["table"][t]
        h = (h @ p["qkv"].reshape(4, 12)) @ (2.0 * p["scaled"])
        return h @ p["table"].T  # the output projection shares the gathered table

    keep = jaxpr.weight_filter(f, params, jnp.zeros((3,), jnp.int32))
    assert sorted(keep.paths) == ["['qkv']"]  # tied and computed weights are not pruned as weights


def test_linen_cnn_selects_kernels_and_accepts_variables_or_their_params():
    class CNN(nn.Module):
        @nn.compact
        def __call__(self, x, train: bool = False):
            x = nn.relu(nn.BatchNorm(use_running_average=not train)(nn.Conv(4, (3, 3))(x)))
            x = x + self.param("offset", nn.initializers.zeros, (8, 8, 4))[None]
            return nn.Dense(3)(x.reshape(x.shape[0], -1))

    model = CNN()
    x = jnp.ones((1, 8, 8, 1))
    apply_fn, variables = hamjax.linen_functional(model, model.init(jax.random.key(0), x))
    keep = jaxpr.weight_filter(apply_fn, variables, x)
    assert prune.selected(variables, keep) == ["['params']['Conv_0']['kernel']", "['params']['Dense_0']['kernel']"]
    assert prune.selected(variables["params"], keep) == ["['Conv_0']['kernel']", "['Dense_0']['kernel']"]
    assert "['params']['offset']" in prune.selected(variables)  # by name the added (8, 8, 4) offset is a kernel


def test_nnx_models_select_the_same_kernels_as_the_default_where_names_are_right():
    class Block(nnx.Module):
        def __init__(self, rngs):
            self.up, self.norm, self.down = (
                nnx.Linear(8, 16, rngs=rngs),
                nnx.LayerNorm(16, rngs=rngs),
                nnx.Linear(16, 3, rngs=rngs),
            )

        def __call__(self, x):
            return self.down(nnx.gelu(self.norm(self.up(x))))

    apply_fn, variables = hamjax.functional(Block(nnx.Rngs(0)))
    keep = jaxpr.weight_filter(apply_fn, variables, jnp.ones((2, 8)))
    assert prune.selected(variables, keep) == ["['params']['down']['kernel']", "['params']['up']['kernel']"]
    for name in ("mlp", "cnn", "vit"):
        apply_fn, _, variables = random_model(name, input_shape=(8, 8, 1))
        keep = jaxpr.weight_filter(apply_fn, variables, jnp.ones((1, 8, 8, 1)))
        assert prune.selected(variables, keep) == prune.selected(variables), name


def test_works_on_abstract_and_traced_params():
    apply_fn, params, tokens = plain_transformer()
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), params)
    expected = jaxpr.weight_filter(apply_fn, params, tokens).paths
    assert jaxpr.weight_filter(apply_fn, abstract, tokens).paths == expected

    def count(p):
        keep = jaxpr.weight_filter(apply_fn, p, tokens)
        return sum(jnp.sum(p[k]) for k in p if keep((jax.tree_util.DictKey(k),), p[k]))

    stacked = jax.tree.map(lambda a: jnp.stack([a, 2 * a]), params)
    totals = jax.jit(jax.vmap(count))(stacked)
    np.testing.assert_allclose(totals[1], 2 * totals[0], rtol=1e-5)
    assert float(totals[0]) == pytest.approx(float(sum(jnp.sum(params[k[2:-2]]) for k in expected)), rel=1e-5)


def test_integer_leaves_are_never_selected_and_a_model_without_sites_raises():
    keep = jaxpr.WeightFilter(frozenset({"['w']"}))
    assert not keep((jax.tree_util.DictKey("w"),), jnp.ones((2, 2), jnp.int32))
    with pytest.raises(ValueError, match="weight_filter: apply_fn has no dot_general or conv_general_dilated"):
        jaxpr.weight_filter(lambda p, x: x * p["w"][None], {"w": jnp.ones(3)}, jnp.ones((1, 3)))
