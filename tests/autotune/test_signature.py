import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from any_models import transformer
from reference_models import plain_transformer, random_model

from hamjax.autotune import signature
from hamjax.autotune.signature import Signature, model_signature, similarity
from hamjax.models.cnn import max_pool_2x2

X = jnp.ones((2, 8, 8, 1), jnp.float32)


def _shapes(tree):
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), tree)


# The same 2-layer MLP (64 -> 16 -> 10, relu) written three ways.
class LinenMLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.relu(nn.Dense(16)(x.reshape(x.shape[0], -1)))
        return nn.Dense(10)(h)


def _jnp_mlp(p, x):
    h = jax.nn.relu(x.reshape(x.shape[0], -1) @ p["w1"] + p["b1"][None])
    return h @ p["w2"] + p["b2"][None]


JNP_MLP = {"w1": jnp.ones((64, 16)), "b1": jnp.ones(16), "w2": jnp.ones((16, 10)), "b2": jnp.ones(10)}


# The same small CNN (conv 5x5 SAME -> batch norm -> relu -> 2x2 pool -> dense 16 -> head) written three ways.
class LinenCNN(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.Conv(4, (5, 5), padding="SAME")(x)
        h = max_pool_2x2(nn.relu(nn.BatchNorm(use_running_average=True)(h)))
        h = nn.relu(nn.Dense(16)(h.reshape(h.shape[0], -1)))
        return nn.Dense(10)(h)


def _jnp_cnn(p, x):
    h = jax.lax.conv_general_dilated(x, p["k"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    h = h + p["kb"][None, None, None]
    h = (h - p["mean"][None, None, None]) * jax.lax.rsqrt(p["var"][None, None, None] + 1e-5)
    h = max_pool_2x2(jax.nn.relu(h * p["scale"][None, None, None] + p["shift"][None, None, None]))
    h = jax.nn.relu(h.reshape(h.shape[0], -1) @ p["w1"] + p["b1"][None])
    return h @ p["w2"] + p["b2"][None]


JNP_CNN = {
    "k": jnp.ones((5, 5, 1, 4)),
    "kb": jnp.ones(4),
    **{n: jnp.ones(4) for n in ("mean", "var", "scale", "shift")},
    "w1": jnp.ones((64, 16)),
    "b1": jnp.ones(16),
    "w2": jnp.ones((16, 10)),
    "b2": jnp.ones(10),
}


@pytest.fixture(scope="module")
def mlps():
    nnx_fn, _, nnx_vars = random_model("mlp", sizes=(64, 16, 10), input_shape=(8, 8, 1))
    linen = LinenMLP()
    return [
        (nnx_fn, nnx_vars),
        (linen.apply, _shapes(jax.eval_shape(linen.init, jax.random.key(0), X))),
        (_jnp_mlp, JNP_MLP),
    ]


@pytest.fixture(scope="module")
def cnns():
    nnx_fn, _, nnx_vars = random_model("cnn", input_shape=(8, 8, 1), channels=(4,), dense=(16,))
    linen = LinenCNN()
    return [
        (nnx_fn, nnx_vars),
        (linen.apply, _shapes(jax.eval_shape(linen.init, jax.random.key(0), X))),
        (_jnp_cnn, JNP_CNN),
    ]


def test_one_mlp_written_three_ways_has_one_key(mlps):
    sigs = [model_signature(f, p, X) for f, p in mlps]
    assert len({s.key for s in sigs}) == 1
    sig = sigs[0]
    assert (sig.family, sig.dense, sig.dense_params, sig.depth) == ("mlp", 2, 64 * 16 + 16 * 10, 2)
    assert (sig.params, sig.input_shape, sig.input_kind, sig.num_outputs) == (
        64 * 16 + 16 + 160 + 10,
        (8, 8, 1),
        "image",
        10,
    )
    assert (sig.conv, sig.attention, sig.norm, sig.embedding) == (0, 0, 0, 0)
    assert sig.evidence == ("2 dense sites, no conv or attention",)


def test_one_cnn_written_three_ways_has_one_key(cnns):
    sigs = [model_signature(f, p, X) for f, p in cnns]
    assert len({s.key for s in sigs}) == 1, [s for s in sigs]
    sig = sigs[0]
    assert (sig.family, sig.conv, sig.conv_params, sig.dense, sig.depth) == ("cnn", 1, 100, 2, 3)
    assert (sig.norm, sig.norm_params) == (1, 8)  # scale and shift; running statistics feed the rsqrt
    assert sig.params == 100 + 4 + 16 + 64 * 16 + 16 + 160 + 10
    assert sig.evidence[0] == "1 conv site, no attention"


def test_key_is_stable_across_runs():
    # A pinned digest: the key is a hash of integers and strings only, the same in every process and release.
    sig = model_signature(_jnp_mlp, JNP_MLP, X)
    assert sig.key == model_signature(_jnp_mlp, _shapes(JNP_MLP), np.zeros((5, 8, 8, 1), np.float32)).key
    assert sig.key == PINNED_MLP_KEY


PINNED_MLP_KEY = "9af713fb4cf3b1fc5451aec17b563d277c61c851e64cb3d11c51fd7f27567245"


def test_reference_models_get_their_families():
    mlp = model_signature(*random_model("mlp", sizes=(64, 32, 32, 10), input_shape=(8, 8, 1))[::2], X)
    cnn = model_signature(*random_model("cnn", input_shape=(8, 8, 1), channels=(4, 8), dense=(16,))[::2], X)
    f, _, v = random_model("vit", input_shape=(8, 8, 1), patch_size=4, hidden_size=16, num_layers=3)
    vit = model_signature(f, v, X)
    assert (mlp.family, mlp.dense, mlp.depth) == ("mlp", 3, 3)
    assert (cnn.family, cnn.conv, cnn.norm, cnn.depth) == ("cnn", 2, 2, 4)  # conv, conv, dense, head
    assert (vit.family, vit.attention) == ("vit", 3)
    assert vit.evidence[0] == "3 attention sites"
    assert vit.evidence[1].startswith("patch embedding: dense on patches")
    # Per block: query, key, value and output projections (16 x 16 each); 2 layer norms per block and a final one.
    assert (vit.attention_params, vit.norm, vit.norm_params) == (3 * 4 * 256, 7, 7 * 32)
    assert vit.depth == 1 + 3 * 4 + 1  # patch embedding, (qkv, out, fc1, fc2) per block, head
    assert vit.dense == 1 + 3 * 6 + 1


def test_plain_jnp_transformers():
    f, p, x = transformer()  # float sequences, fused qkv, RMS norm, two blocks
    sig = model_signature(f, p, x)
    assert (sig.family, sig.input_kind, sig.attention, sig.norm, sig.embedding) == ("transformer", "sequence", 2, 2, 0)
    assert sig.evidence == ("2 attention sites", "attention on sequence input")
    assert sig.attention_params == 2 * (16 * 48 + 16 * 16)
    f, p, tokens = plain_transformer()  # integer tokens gathered from an embedding table
    sig = model_signature(f, p, tokens)
    assert (sig.family, sig.input_kind, sig.attention, sig.embedding) == ("transformer", "tokens", 1, 1)
    assert sig.embedding_params == p["embed"].size


def _conv_attention(p, x, *, stem):
    """A conv patch embedding (stride == kernel), optionally after a 3x3 conv stem, then one attention block."""
    dn = ("NHWC", "HWIO", "NHWC")
    if stem:
        x = jax.nn.relu(jax.lax.conv_general_dilated(x, p["stem"], (1, 1), "SAME", dimension_numbers=dn))
    h = jax.lax.conv_general_dilated(x, p["patch"], (4, 4), "VALID", dimension_numbers=dn)
    h = h.reshape(h.shape[0], -1, 8)
    q, k, v = h @ p["q"], h @ p["k"], h @ p["v"]
    att = jax.nn.softmax(jnp.einsum("btd,bsd->bts", q, k), axis=-1)
    return jnp.einsum("bts,bsd->btd", att, v).mean(axis=1) @ p["out"]


def test_conv_patch_embedding_is_vit_and_a_conv_stem_makes_it_hybrid():
    p = {"stem": jnp.ones((3, 3, 1, 2)), "patch": jnp.ones((4, 4, 2, 8))}
    p |= {n: jnp.ones((8, 8)) for n in ("q", "k", "v")} | {"out": jnp.ones((8, 3))}
    vit = model_signature(lambda p, x: _conv_attention(p, x, stem=False), {**p, "patch": jnp.ones((4, 4, 1, 8))}, X)
    assert vit.family == "vit"
    assert vit.evidence[1] == "patch embedding: conv with stride == kernel (4, 4) on image input"
    assert vit.attention_params == 3 * 64 + 24
    hybrid = model_signature(lambda p, x: _conv_attention(p, x, stem=True), p, X)
    assert hybrid.family == "hybrid"
    assert hybrid.evidence == (
        "1 attention site",
        "1 conv site beyond a patch embedding, with attention",
        "patch embedding: conv with stride == kernel (4, 4) (after other convs)",
    )


def test_round_trip_through_json(cnns):
    sig = model_signature(*cnns[0], X)
    d = json.loads(json.dumps(sig.to_dict()))
    assert d["key"] == sig.key
    back = Signature.from_dict(d)
    assert back == sig and back.key == sig.key


@pytest.mark.parametrize(
    ("bad", "phrase"),
    [
        ("not a dict", "d must be a dict"),
        ({"family": "mlp"}, "d is not a signature"),
        ({"colour": "red"}, "unknown fields ['colour']"),
    ],
)
def test_from_dict_refuses_what_is_not_a_signature(bad, phrase):
    with pytest.raises(ValueError, match=phrase.replace("[", r"\[").replace("]", r"\]")):
        Signature.from_dict(bad)


def test_from_dict_refuses_an_unknown_family(cnns):
    d = model_signature(*cnns[0], X).to_dict() | {"family": "rnn"}
    with pytest.raises(ValueError, match="family or input_kind unknown"):
        Signature.from_dict(d)


def _mlp_of(width):
    p = {"w1": jnp.ones((64, width)), "b1": jnp.ones(width), "w2": jnp.ones((width, 10)), "b2": jnp.ones(10)}
    return model_signature(_jnp_mlp, p, X)


def test_similarity_is_one_for_equal_decreases_with_distance_and_drops_across_families(cnns):
    base = _mlp_of(16)
    assert similarity(base, _mlp_of(16)) == 1.0
    near, far = similarity(base, _mlp_of(24)), similarity(base, _mlp_of(256))
    assert 1.0 > near > far > 0.0
    assert similarity(base, _mlp_of(24)) == similarity(_mlp_of(24), base)
    cnn = model_signature(*cnns[2], X)
    assert similarity(base, cnn) < 0.3 * near
    assert 0.0 <= similarity(base, cnn) < 1.0


def test_no_weighted_op_is_refused():
    with pytest.raises(ValueError, match="model_signature: apply_fn has no dense or convolution op"):
        model_signature(lambda p, x: x * p["s"], {"s": jnp.ones(3)}, jnp.ones((2, 3)))


def test_module_lists():
    assert signature.FAMILIES == ("mlp", "cnn", "transformer", "vit", "hybrid")
    assert signature.KINDS == ("dense", "conv", "attention", "norm", "embedding")
