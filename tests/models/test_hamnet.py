import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from hamjax._base import functional
from hamjax.models import HAMNet, HAMNetConfig, build, config_of
from hamjax.models.hamnet import MixerBlock
from hamjax.models.vit import Block

SMALL = {"hidden_size": 16, "num_layers": 2, "num_heads": 2}


def small(input_shape=(8, 8, 1), **kw):
    return build("hamnet", input_shape=input_shape, **{**SMALL, **kw})


def abstract(**kw):
    return nnx.eval_shape(lambda: small(**kw))


@pytest.mark.parametrize(("shape", "tokens"), [((28, 28, 1), 16), ((8, 8, 1), 8)])
def test_output_shape_and_default_tokens(shape, tokens):
    model = abstract(input_shape=shape)
    assert (config_of(model).input_size, config_of(model).num_tokens) == (np.prod(shape), tokens)
    apply_fn, variables = functional(model)
    assert jax.eval_shape(apply_fn, variables, jnp.ones((3, *shape))).shape == (3, 10)


def test_layer_kinds_and_paths():
    model = abstract(num_layers=5, attention_every=3)
    assert config_of(model).layer_kinds == ("attention", "mixer", "mixer", "attention", "mixer")
    assert [type(layer) for layer in model.layers] == [Block, MixerBlock, MixerBlock, Block, MixerBlock]
    params = functional(model)[1]["params"]
    assert params["embed"]["kernel"].shape == (8, 16)
    assert params["pos_embed"].shape == (1, 8, 16)
    assert params["layers"][3]["attn"]["query"]["kernel"].shape == (16, 16)
    assert params["layers"][1]["token_mlp"]["fc1"]["kernel"].shape == (8, 16)
    assert params["layers"][1]["mlp"]["fc2"]["kernel"].shape == (32, 16)


def _layer_norm(x, p):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / jnp.sqrt(var + 1e-6) * p["scale"][None, None] + p["bias"][None, None]


def _mlp(x, p):
    h = jax.nn.gelu(x @ p["fc1"]["kernel"] + p["fc1"]["bias"][None, None])
    return h @ p["fc2"]["kernel"] + p["fc2"]["bias"][None, None]


def test_mixer_block_matches_reference():
    model = small()
    block = model.layers[1]
    p = functional(block)[1]["params"]
    x = jax.random.normal(jax.random.key(0), (3, 8, 16))

    @jax.jit
    def reference(p, x):
        h = x + _mlp(_layer_norm(x, p["norm1"]).transpose(0, 2, 1), p["token_mlp"]).transpose(0, 2, 1)
        return h + _mlp(_layer_norm(h, p["norm2"]), p["mlp"])

    got = nnx.jit(lambda m, x: m(x))(block, x)
    np.testing.assert_allclose(got, reference(p, x), atol=1e-5, rtol=1e-5)


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
    with pytest.raises(ValueError, match=r"HAMNet: input x has shape \(2, 28, 28, 1\).*input_size=64"):
        abstract()(jnp.ones((2, 28, 28, 1)))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"input_size": 100}, r"HAMNetConfig\.input_size=100: expected a multiple of num_tokens=16"),
        ({"hidden_size": 30}, r"HAMNetConfig\.hidden_size=30: expected a multiple of num_heads=4"),
        ({"attention_every": 0}, r"HAMNetConfig\.attention_every=0: expected a positive int"),
        ({"num_tokens": True}, r"HAMNetConfig\.num_tokens=True"),
        ({"mlp_ratio": -1.0}, r"HAMNetConfig\.mlp_ratio=-1\.0"),
        ({"dropout_rate": 1}, r"HAMNetConfig\.dropout_rate=1"),
        ({"drop_path": 1.0}, r"HAMNetConfig\.drop_path=1\.0: expected a number in \[0, 1\)"),
        ({"drop_path": -0.1}, r"HAMNetConfig\.drop_path=-0\.1"),
    ],
)
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        HAMNetConfig(**kwargs)


def test_build_override():
    model = abstract(attention_every=1)
    assert isinstance(model, HAMNet)
    assert config_of(model) == HAMNetConfig(input_size=64, num_tokens=8, attention_every=1, **SMALL)
    with pytest.raises(ValueError, match=r"unknown override.*'patch_size'.*HAMNetConfig"):
        build("hamnet", patch_size=4)
