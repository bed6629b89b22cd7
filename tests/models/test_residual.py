import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

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
