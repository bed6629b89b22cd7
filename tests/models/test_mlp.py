import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hamjax._base import functional
from hamjax.models import MLP, MODELS, MLPConfig, build, config_of


def small(input_shape=(8, 8, 1), **kw):
    return build("mlp", input_shape=input_shape, sizes=(int(np.prod(input_shape)), 32, 10), **kw)


@pytest.mark.parametrize("shape", [(28, 28, 1), (8, 8, 1)])
def test_output_shape(shape):
    assert small(shape)(jnp.ones((3, *shape))).shape == (3, 10)


def test_default_param_count_and_paths(param_count):
    model = build("mlp")
    assert config_of(model) == MLPConfig(sizes=(784, 512, 512, 10))
    assert param_count(model) == 784 * 512 + 512 + 512 * 512 + 512 + 512 * 10 + 10 == 669_706
    _, variables = functional(model)
    params = variables["params"]
    assert list(variables) == ["params"]
    assert params["layers"][0]["kernel"].shape == (784, 512)
    assert params["layers"][2]["bias"].shape == (10,)


def test_matches_hand_computation():
    model = small(activation="tanh")
    _, variables = functional(model)
    x = jax.random.normal(jax.random.key(0), (4, 8, 8, 1))
    h = x.reshape(4, 64)
    layers = variables["params"]["layers"]
    h = jnp.tanh(h @ layers[0]["kernel"] + layers[0]["bias"][None])
    want = h @ layers[1]["kernel"] + layers[1]["bias"][None]
    np.testing.assert_allclose(model(x), want, rtol=1e-5, atol=1e-5)


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


def test_wrong_input_size_raises():
    with pytest.raises(ValueError, match=r"expected sizes\[0\]=64"):
        small()(jnp.ones((2, 28, 28, 1)))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"sizes": (784,)}, r"MLPConfig\.sizes=\(784,\).*at least 2"),
        ({"sizes": (784, 0, 10)}, r"MLPConfig\.sizes=.*element 0"),
        ({"activation": "swish"}, r"MLPConfig\.activation='swish'.*relu"),
        ({"dropout_rate": 1.0}, r"MLPConfig\.dropout_rate=1\.0.*\[0, 1\)"),
    ],
)
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MLPConfig(**kwargs)


def test_build_rejects_unknown_name_and_override():
    with pytest.raises(ValueError, match=r"unknown model name='resnet'.*'mlp', 'cnn', 'vit', 'hamnet'"):
        build("resnet")
    with pytest.raises(ValueError, match=r"unknown override.*'hidden_size'.*MLPConfig"):
        build("mlp", hidden_size=3)
    with pytest.raises(ValueError, match="input_shape"):
        build("mlp", input_shape=(28, 28))


def test_build_defaults_and_config_of():
    assert MODELS == ("mlp", "cnn", "vit", "hamnet")
    model = build("mlp", input_shape=(8, 8, 1), num_classes=3, dropout_rate=0.1)
    assert isinstance(model, MLP)
    assert config_of(model) == MLPConfig(sizes=(64, 512, 512, 3), dropout_rate=0.1)
    with pytest.raises(TypeError, match="config_of"):
        config_of(object())
