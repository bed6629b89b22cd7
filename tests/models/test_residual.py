import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from hamjax import functional
from hamjax.models import build, config_of
from hamjax.models.residual import DropPath, drop_path_rates


def test_rates_grow_linearly_to_the_last_block():
    assert drop_path_rates(0.3, 3) == (0.1, 0.2, 0.3)
    assert drop_path_rates(0.1, 1) == (0.1,)
    assert drop_path_rates(0.0, 4) == (0.0, 0.0, 0.0, 0.0)


def test_whole_examples_drop_and_the_mean_is_kept():
    layer = DropPath(0.25, rngs=nnx.Rngs(0))
    y = layer(jnp.ones((4000, 3, 2)))
    per_example = np.asarray(y).reshape(4000, -1)
    assert (per_example == per_example[:, :1]).all()  # one decision per example
    assert set(np.unique(per_example).tolist()) == {0.0, float(np.float32(1) / np.float32(0.75))}
    assert abs(float(y.mean()) - 1.0) < 0.05
    second = layer(jnp.ones((4000, 3, 2)))
    assert not np.array_equal(second, y)  # the stream advances


def test_eval_mode_and_rate_zero_return_the_input():
    x = jnp.arange(6.0).reshape(2, 3)
    assert DropPath(0.5, rngs=nnx.Rngs(0))(x, deterministic=True) is x
    assert DropPath(0.0, rngs=nnx.Rngs(0))(x) is x
    viewed = nnx.view(DropPath(0.5, rngs=nnx.Rngs(0)), deterministic=True)
    assert viewed(x) is x
    y = jax.jit(lambda v: DropPath(0.5, deterministic=True, rngs=nnx.Rngs(0))(v))(x)
    np.testing.assert_array_equal(y, x)


@pytest.mark.parametrize("rate", [1.0, -0.5, True])
def test_bad_rate(rate):
    with pytest.raises(ValueError, match=r"DropPath: rate must be a number in \[0, 1\)"):
        DropPath(rate, rngs=nnx.Rngs(0))


SMALL = {
    "vit": {"hidden_size": 16, "num_layers": 2, "num_heads": 2, "mlp_ratio": 2},
    "hamnet": {"hidden_size": 16, "num_layers": 2, "num_heads": 2},
}


def _small(name, **kw):
    return build(name, input_shape=(8, 8, 1), **{**SMALL[name], **kw})


@pytest.mark.parametrize("name", ["vit", "hamnet"])
def test_drop_path_trains_per_example_and_leaves_eval_alone(name):
    """Stochastic depth: same params and eval outputs as without it; train outputs depend on the key."""
    x = jnp.asarray(np.random.default_rng(0).random((8, 8, 8, 1)), jnp.float32)
    plain_fn, plain = functional(_small(name))
    apply_fn, variables = functional(_small(name, drop_path=0.5))
    assert jax.tree.all(jax.tree.map(lambda a, b: bool((a == b).all()), plain, variables))
    np.testing.assert_array_equal(apply_fn(variables, x), plain_fn(plain, x))
    train = jax.jit(lambda k: apply_fn(variables, x, train=True, rng=k))
    np.testing.assert_array_equal(train(jax.random.key(1)), train(jax.random.key(1)))
    assert not np.allclose(train(jax.random.key(1)), train(jax.random.key(2)))
    np.testing.assert_array_equal(plain_fn(plain, x, train=True, rng=jax.random.key(1)), plain_fn(plain, x))


@pytest.mark.parametrize("name", ["vit", "hamnet"])
def test_a_config_without_drop_path_loads_with_zero(name):
    from hamjax.models import saved

    entry = saved.config_to_dict(config_of(nnx.eval_shape(lambda: _small(name))))
    assert entry["fields"]["drop_path"] == 0.0
    del entry["fields"]["drop_path"]
    assert saved.config_from_dict(entry).drop_path == 0.0
    entry["fields"]["drop_path"] = 0.25
    assert saved.config_from_dict(entry).drop_path == 0.25
