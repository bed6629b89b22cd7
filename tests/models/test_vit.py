import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from hamjax._base import functional
from hamjax.models import ViT, ViTConfig, build, config_of
from hamjax.models.vit import patchify

SMALL = {"hidden_size": 16, "num_layers": 1, "num_heads": 2, "mlp_ratio": 2}


def small(input_shape=(8, 8, 1), **kw):
    return build("vit", input_shape=input_shape, **{**SMALL, **kw})


def abstract(**kw):
    return nnx.eval_shape(lambda: small(**kw))


@pytest.mark.parametrize(("shape", "patch"), [((28, 28, 1), 7), ((8, 8, 1), 4)])
def test_output_shape_and_default_patch(shape, patch):
    model = abstract(input_shape=shape)
    assert config_of(model).patch_size == patch
    apply_fn, variables = functional(model)
    assert jax.eval_shape(apply_fn, variables, jnp.ones((3, *shape))).shape == (3, 10)


def test_param_paths_are_head_major():
    _, variables = functional(abstract(num_layers=2))
    params = variables["params"]
    assert params["patch_embed"]["kernel"].shape == (16, 16)
    assert params["pos_embed"].shape == (1, 4, 16)
    for name in ("query", "key", "value", "out"):
        assert params["blocks"][1]["attn"][name]["kernel"].shape == (16, 16)
    assert params["blocks"][0]["mlp"]["fc1"]["kernel"].shape == (16, 32)
    assert set(params) == {"patch_embed", "pos_embed", "blocks", "norm", "head"}


def test_patchify_is_row_major():
    x = jnp.arange(2 * 4 * 4 * 3, dtype=jnp.float32).reshape(2, 4, 4, 3)
    patches = patchify(x, 2)
    assert patches.shape == (2, 4, 12)
    np.testing.assert_array_equal(patches[1, 2], x[1, 2:4, 0:2].reshape(-1))


def _layer_norm(x, p):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / jnp.sqrt(var + 1e-6) * p["scale"][None, None] + p["bias"][None, None]


def _dense(x, p):
    return x @ p["kernel"] + p["bias"][None, None]


def _attention(x, p, num_heads):
    """softmax(Q K^T / sqrt(d)) V, one head at a time, head h in kernel columns h*d:(h+1)*d."""
    d = x.shape[-1] // num_heads
    q, k, v = (_dense(x, p[n]) for n in ("query", "key", "value"))
    heads = []
    for h in range(num_heads):
        cols = slice(h * d, (h + 1) * d)
        scores = jnp.einsum("ntd,nsd->nts", q[..., cols], k[..., cols]) / np.sqrt(d)
        heads.append(jnp.einsum("nts,nsd->ntd", jax.nn.softmax(scores, axis=-1), v[..., cols]))
    return _dense(jnp.concatenate(heads, axis=-1), p["out"])


def test_attention_matches_reference():
    model = small(num_heads=4)
    block = model.blocks[0]
    p = functional(block)[1]["params"]
    x = jax.random.normal(jax.random.key(0), (3, 4, 16))

    @jax.jit
    def reference(p, x):
        attn = _attention(x, p["attn"], 4)
        h = x + _attention(_layer_norm(x, p["norm1"]), p["attn"], 4)
        mlp = p["mlp"]
        return attn, h + _dense(jax.nn.gelu(_dense(_layer_norm(h, p["norm2"]), mlp["fc1"])), mlp["fc2"])

    attn, want = reference(p, x)
    np.testing.assert_allclose(nnx.jit(lambda m, x: m(x))(block.attn, x), attn, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(nnx.jit(lambda m, x: m(x))(block, x), want, atol=1e-5, rtol=1e-5)


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
    with pytest.raises(ValueError, match=r"ViT: input x has shape \(2, 8, 8, 3\)"):
        abstract()(jnp.ones((2, 8, 8, 3)))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"patch_size": 5}, r"ViTConfig\.patch_size=5: expected a divisor .*input_shape=\(28, 28, 1\)"),
        ({"hidden_size": 66}, r"ViTConfig\.hidden_size=66: expected a multiple of num_heads=4"),
        ({"num_layers": 0}, r"ViTConfig\.num_layers=0"),
        ({"mlp_ratio": 0}, r"ViTConfig\.mlp_ratio=0: expected a positive number"),
        ({"input_shape": (28, 28, 1, 1)}, r"ViTConfig\.input_shape=\(28, 28, 1, 1\)"),
        ({"dropout_rate": 2}, r"ViTConfig\.dropout_rate=2"),
        ({"drop_path": 1.0}, r"ViTConfig\.drop_path=1\.0: expected a number in \[0, 1\)"),
        ({"drop_path": -0.1}, r"ViTConfig\.drop_path=-0\.1"),
    ],
)
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ViTConfig(**kwargs)


def test_build_override():
    model = abstract(num_classes=3)
    assert isinstance(model, ViT)
    assert config_of(model) == ViTConfig(input_shape=(8, 8, 1), patch_size=4, num_classes=3, **SMALL)
