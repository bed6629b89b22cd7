import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from hamjax._base import functional
from hamjax.models import CNN, CNNConfig, build, config_of
from hamjax.models.cnn import max_pool_2x2

SMALL = {"channels": (4, 8), "kernel_size": 3, "dense": (16,)}


def small(input_shape=(8, 8, 1), **kw):
    return build("cnn", input_shape=input_shape, **{**SMALL, **kw})


def abstract(**kw):
    return nnx.eval_shape(lambda: build("cnn", **kw))


@pytest.mark.parametrize("shape", [(28, 28, 1), (8, 8, 1)])
def test_output_shape(shape):
    apply_fn, variables = functional(abstract(input_shape=shape, **SMALL))
    assert jax.eval_shape(apply_fn, variables, jnp.ones((3, *shape))).shape == (3, 10)


def test_default_lenet_shape():
    model = abstract(input_shape=(8, 8, 1), channels=(8, 16))
    assert config_of(model).flat_features == 2 * 2 * 16
    apply_fn, variables = functional(model)
    assert jax.eval_shape(apply_fn, variables, jnp.ones((2, 8, 8, 1))).shape == (2, 10)


def test_max_pool_matches_reference():
    x = jax.random.normal(jax.random.key(0), (2, 7, 6, 3))
    want = np.asarray(x)[:, :6].reshape(2, 3, 2, 3, 2, 3).max(axis=(2, 4))
    np.testing.assert_array_equal(max_pool_2x2(x), want)


def test_param_count_and_paths(param_count):
    model = small()
    # conv 3x3x1x4+4, bn 2*4, conv 3x3x4x8+8, bn 2*8, dense (2*2*8)x16+16, head 16x10+10
    assert param_count(model) == 40 + 8 + 296 + 16 + 528 + 170 == 1058
    _, variables = functional(model)
    assert sorted(variables) == ["batch_stats", "params"]
    assert variables["params"]["convs"][1]["kernel"].shape == (3, 3, 4, 8)
    assert variables["batch_stats"]["norms"][0]["mean"].shape == (4,)
    assert variables["params"]["head"]["kernel"].shape == (16, 10)


def test_batch_norm_statistics(batch):
    x, _ = batch((8, 8, 1), n=8)
    apply_fn, variables = functional(small())
    y_train, new = apply_fn(variables, x, train=True, rng=jax.random.key(0), mutable=True)
    stats, new_stats = variables["batch_stats"]["norms"], new["batch_stats"]["norms"]
    assert not np.allclose(stats[0]["mean"], new_stats[0]["mean"])
    assert not np.allclose(stats[1]["var"], new_stats[1]["var"])
    chex.assert_trees_all_equal(new["params"], variables["params"])
    y_eval = apply_fn(variables, x)
    np.testing.assert_array_equal(apply_fn(variables, x), y_eval)
    assert not np.allclose(y_train, y_eval)
    assert not np.allclose(apply_fn(new, x), y_eval)


def test_functional_matches_eager(functional_matches_eager, batch):
    x, _ = batch((8, 8, 1), n=4)
    functional_matches_eager(small(dropout_rate=0.3), x)


def test_dropout(dropout_behaves, batch):
    x, _ = batch((8, 8, 1), n=4)
    dropout_behaves(small(dropout_rate=0.5), x)


def test_sgd_reduces_loss(sgd_losses, batch):
    x, y = batch((8, 8, 1))
    losses = sgd_losses(small(), x, y)
    assert losses[-1] < losses[0]


def test_wrong_input_shape_raises():
    with pytest.raises(ValueError, match=r"CNN: input x has shape \(2, 28, 28, 1\), expected \(N, 8, 8, 1\)"):
        small()(jnp.ones((2, 28, 28, 1)))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"input_shape": (28, 28)}, r"CNNConfig\.input_shape=\(28, 28\)"),
        ({"input_shape": (8, 8, 1), "channels": (4, 4, 4, 4)}, r"CNNConfig\.channels=.*below 2x2 at stage 3"),
        ({"channels": ()}, r"CNNConfig\.channels=\(\)"),
        ({"kernel_size": 0}, r"CNNConfig\.kernel_size=0: expected a positive int"),
        ({"num_classes": 1.5}, r"CNNConfig\.num_classes=1\.5"),
        ({"dropout_rate": -0.1}, r"CNNConfig\.dropout_rate=-0\.1"),
    ],
)
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CNNConfig(**kwargs)


def test_build_passes_input_shape():
    model = abstract(input_shape=(8, 8, 3), num_classes=4)
    assert isinstance(model, CNN)
    assert config_of(model) == CNNConfig(input_shape=(8, 8, 3), num_classes=4)
