"""Token merging: the marker protocol on plain, Linen and NNX models, bad r, ONNX (the numerics: test_matching.py)."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.ad_checkpoint import checkpoint_name

import hamjax
from hamjax.graph import merge_plan, merge_tokens
from tests.reference_models import normal, random_model

C = 8


def _norm(x):
    mean = x.mean(axis=-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(((x - mean) ** 2).mean(axis=-1, keepdims=True) + jnp.float32(1e-5))


def plain_transformer(p, x):
    """A hand-written jnp transformer on tokens ``(N, T, C)``, its attention blocks marked for token merging."""
    for i, blk in enumerate(p["blocks"]):
        h = _norm(x)
        q, k, v = h @ blk["q"], h @ blk["k"], h @ blk["v"]
        k = checkpoint_name(k, f"blocks/{i}/keys")
        logits = checkpoint_name(jnp.einsum("ntc,nsc->nts", q, k) / jnp.float32(math.sqrt(C)), f"blocks/{i}/logits")
        x = checkpoint_name(x + jax.nn.softmax(logits, axis=-1) @ v @ blk["o"], f"blocks/{i}/merge")
        x = x + jax.nn.gelu(_norm(x) @ blk["w1"]) @ blk["w2"]
    return checkpoint_name(x, "unmerge").mean(axis=1) @ p["head"]


def plain_params(blocks=2, seed=0):
    rng = np.random.default_rng(seed)
    names = {"q": (C, C), "k": (C, C), "v": (C, C), "o": (C, C), "w1": (C, 2 * C), "w2": (2 * C, C)}
    return {
        "blocks": [{k: normal(rng, s) / math.sqrt(s[0]) for k, s in names.items()} for _ in range(blocks)],
        "head": normal(rng, (C, 3)),
    }


class LinenBlock(nn.Module):
    name_prefix: str

    @nn.compact
    def __call__(self, x):
        h = nn.LayerNorm()(x)
        q, k, v = nn.Dense(C)(h), nn.Dense(C)(h), nn.Dense(C)(h)
        k = checkpoint_name(k, f"{self.name_prefix}/keys")
        logits = checkpoint_name(
            jnp.einsum("ntc,nsc->nts", q, k) / jnp.float32(math.sqrt(C)), f"{self.name_prefix}/logits"
        )
        x = checkpoint_name(x + nn.Dense(C)(jax.nn.softmax(logits, axis=-1) @ v), f"{self.name_prefix}/merge")
        return x + nn.Dense(C)(nn.gelu(nn.Dense(2 * C)(nn.LayerNorm()(x))))


class LinenTransformer(nn.Module):
    @nn.compact
    def __call__(self, x):
        for i in range(2):
            x = LinenBlock(f"b{i}")(x)
        return nn.Dense(3)(checkpoint_name(x, "unmerge").mean(axis=1))


@pytest.fixture(scope="module")
def tokens():
    return normal(np.random.default_rng(1), (4, 16, C))


@pytest.fixture(scope="module")
def linen_model(tokens):
    model = LinenTransformer()
    return hamjax.linen_functional(model, model.init(jax.random.key(0), tokens))


def _duplicated(x):
    """Tokens in identical pairs (2i, 2i + 1): merging a pair loses nothing under proportional attention."""
    return jnp.repeat(x[:, : x.shape[1] // 2], 2, axis=1)


# ---------------------------------------------------------------- the transform


def test_r0_is_the_original_model_exactly(tokens, linen_model):
    params = plain_params()
    merged, same = merge_tokens(plain_transformer, params, tokens, 0)
    assert same is params
    np.testing.assert_array_equal(jax.jit(merged)(params, tokens), jax.jit(plain_transformer)(params, tokens))
    apply_fn, variables = linen_model
    merged, _ = merge_tokens(apply_fn, variables, tokens, 0)
    np.testing.assert_array_equal(jax.jit(merged)(variables, tokens), jax.jit(apply_fn)(variables, tokens))
    vit, _, vparams = random_model("vit", patch_size=4)
    x = normal(np.random.default_rng(0), (2, 28, 28, 1))
    merged, _ = merge_tokens(vit, vparams, x, 0)
    np.testing.assert_array_equal(jax.jit(merged)(vparams, x), jax.jit(vit)(vparams, x))


@pytest.mark.parametrize("model", ["plain", "linen"])
def test_merging_duplicate_tokens_with_proportional_attention_changes_nothing(tokens, linen_model, model):
    apply_fn, params = (plain_transformer, plain_params()) if model == "plain" else linen_model
    x = _duplicated(tokens)
    reference = jax.jit(apply_fn)(params, x)
    # Five of the eight identical pairs merge: the sizes differ (2 and 1), so log(size) matters.
    merged, _ = merge_tokens(apply_fn, params, x, (5, 0))
    assert merge_plan(apply_fn, params, x, (5, 0)).tokens == (16, 11)
    np.testing.assert_allclose(jax.jit(merged)(params, x), reference, rtol=2e-5, atol=2e-5)
    flat, _ = merge_tokens(apply_fn, params, x, (5, 0), proportional=False)
    assert not np.allclose(jax.jit(flat)(params, x), reference, rtol=1e-3, atol=1e-3)


def test_merged_apply_jits_like_eager_and_shrinks_the_token_stream(tokens):
    def stream(p, x):
        for i in range(3):
            x = checkpoint_name(jnp.tanh(checkpoint_name(x, f"b{i}/keys") @ p), f"b{i}/merge")
        return checkpoint_name(x, "unmerge")

    params = jnp.eye(C) + 0.1
    merged, _ = merge_tokens(stream, params, tokens, 3)
    eager = merged(params, tokens)
    assert eager.shape == tokens.shape
    np.testing.assert_allclose(jax.jit(merged)(params, tokens), eager, rtol=1e-5, atol=1e-6)
    assert not np.allclose(eager, stream(params, tokens), rtol=1e-3, atol=1e-3)
    assert merge_plan(stream, params, tokens, 3).tokens == (16, 13, 10)
    assert merge_plan(stream, params, tokens, [4, 2, 0]).r == (4, 2, 0)


def test_sizes_enter_the_logits_as_log_size(tokens):
    def two_blocks(p, x):
        del p
        x = checkpoint_name(checkpoint_name(x, "a/keys") * 1.0, "a/merge")
        n, t, _ = x.shape
        return checkpoint_name(jnp.zeros((n, 2, t, t), x.dtype), "b/logits")

    bias = np.asarray(jax.jit(merge_tokens(two_blocks, {}, tokens, 6)[0])({}, tokens))
    assert bias.shape == (4, 2, 10, 10)
    np.testing.assert_allclose(np.exp(bias).sum(-1), np.full((4, 2, 10), 16.0), rtol=1e-5)
    assert np.exp(bias).max() > 1.5  # some tokens stand for two


def test_the_class_token_never_merges_and_unmerge_gives_the_size_weighted_mean(tokens):
    x = tokens.at[:, 1].set(tokens[:, 0])  # the class token's twin: the best match of all

    def identity(p, xx):
        del p
        return checkpoint_name(checkpoint_name(checkpoint_name(xx, "b/keys"), "b/merge"), "b/out")

    merged = jax.jit(merge_tokens(identity, {}, x, 7, class_token=True)[0])({}, x)
    assert merged.shape == (4, 9, C)
    np.testing.assert_array_equal(merged[:, 0], x[:, 0])

    def pooled(p, xx):
        del p
        return checkpoint_name(checkpoint_name(checkpoint_name(xx, "b/keys"), "b/merge"), "unmerge").mean(axis=1)

    np.testing.assert_allclose(jax.jit(merge_tokens(pooled, {}, x, 7)[0])({}, x), x.mean(1), rtol=1e-5, atol=1e-6)


def test_reference_models_merge_under_jit():
    vit, _, params = random_model("vit", patch_size=4, num_layers=3)
    x = normal(np.random.default_rng(0), (3, 28, 28, 1))
    assert merge_plan(vit, params, x, 8).tokens == (49, 41, 33)
    merged, _ = merge_tokens(vit, params, x, 8)
    y = jax.jit(merged)(params, x)
    assert y.shape == (3, 10) and np.isfinite(np.asarray(y)).all()
    hamnet, _, hparams = random_model("hamnet")
    assert merge_plan(hamnet, hparams, x, 5).tokens == (16, 16)  # unmerged before every mixer layer
    y = jax.jit(merge_tokens(hamnet, hparams, x, 5)[0])(hparams, x)
    assert y.shape == (3, 10) and np.isfinite(np.asarray(y)).all()


# ---------------------------------------------------------------- bad input


def test_bad_r_is_refused_before_tracing_naming_r(tokens):
    params = plain_params()
    calls = []

    def counted(p, x):
        calls.append(1)
        return plain_transformer(p, x)

    with pytest.raises(ValueError, match=r"merge_tokens: r=6 merges 6 tokens at 'blocks/1/merge', which holds 10"):
        merge_tokens(counted, params, tokens, 6)
    with pytest.raises(ValueError, match=r"merge_tokens: r=9 merges 9 tokens at 'blocks/0/merge'"):
        merge_tokens(plain_transformer, params, tokens, 9)
    with pytest.raises(ValueError, match=r"merge_tokens: r must be an integer >= 0|merge_tokens: r must be"):
        merge_tokens(plain_transformer, params, tokens, -1)
    with pytest.raises(ValueError, match=r"merge_tokens: r\[1\]"):
        merge_tokens(plain_transformer, params, tokens, [1, 2.5])
    with pytest.raises(ValueError, match=r"one value per merge marker \(2\), got 3"):
        merge_tokens(plain_transformer, params, tokens, [1, 1, 1])
    with pytest.raises(ValueError, match="at most 7 can merge there"):
        merge_tokens(plain_transformer, params, tokens, 8, class_token=True)


def test_models_without_markers_or_with_nested_markers_are_refused(tokens):
    with pytest.raises(ValueError, match="marks no tokens to merge"):
        merge_tokens(lambda p, x: x * 2.0, {}, tokens, 1)

    @jax.jit
    def inner(x):
        return checkpoint_name(x, "b/merge")

    with pytest.raises(ValueError, match="'b/merge' sits inside a nested jax.jit"):
        merge_tokens(lambda p, x: inner(x), {}, tokens, 1)


def test_the_marker_binding_is_restored(tokens):
    from jax.extend.core.primitives import name_p

    params = plain_params()
    before = plain_transformer(params, tokens)
    merged, params = merge_tokens(plain_transformer, params, tokens, 2)
    assert not np.allclose(jax.jit(merged)(params, tokens), before)
    assert "bind" not in vars(name_p)
    np.testing.assert_array_equal(plain_transformer(params, tokens), before)  # unmerged afterwards


# ---------------------------------------------------------------- export


@pytest.mark.slow  # 7-25 s each here, most of it jax2onnx
@pytest.mark.parametrize("model", ["plain", "vit"])
def test_merged_model_exports_to_onnx(tmp_path, tokens, model):
    if model == "plain":
        apply_fn, params, x, r = plain_transformer, plain_params(), tokens, 4
    else:
        apply_fn, _, params = random_model("vit", patch_size=4, hidden_size=32)
        x, r = normal(np.random.default_rng(0), (4, 28, 28, 1)), 12
    merged, _ = merge_tokens(apply_fn, params, x, r)
    result = hamjax.export.onnx(merged, params, np.asarray(x), tmp_path / "tome.onnx")
    assert result.input_shape[0] is None  # any batch size
    assert all(check.passed for check in result.checks)
    assert "TopK" in result.ops


def test_vmap_over_params_equals_a_loop_and_gradients_flow(tokens):
    members = [plain_params(seed=s) for s in (0, 1, 2)]
    stacked = jax.tree.map(lambda *a: jnp.stack(a), *members)
    merged, _ = merge_tokens(plain_transformer, members[0], tokens, 3)
    population = jax.jit(jax.vmap(merged, in_axes=(0, None)))(stacked, tokens)
    loop = jnp.stack([jax.jit(merged)(p, tokens) for p in members])
    np.testing.assert_allclose(population, loop, rtol=1e-5, atol=1e-5)
    grads = jax.jit(jax.grad(lambda p: merged(p, tokens).sum()))(members[0])
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))
    assert float(jnp.abs(grads["blocks"][1]["q"]).sum()) > 0


def test_fusion_composes_after_merging_and_not_before(tokens):
    from hamjax import graph

    params = plain_params()
    merged, _ = merge_tokens(plain_transformer, params, tokens, 3)
    fused, _ = graph.fuse_attention(merged, params)
    np.testing.assert_allclose(jax.jit(fused)(params, tokens), jax.jit(merged)(params, tokens), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="merge tokens first"):
        merge_tokens(*graph.fuse_attention(plain_transformer, params), tokens, 3)


@pytest.mark.slow
def test_quantization_composes_after_merging(tokens):
    from hamjax import quant

    params = plain_params()
    merged, _ = merge_tokens(plain_transformer, params, tokens, 3)
    y = jax.jit(merged)(params, tokens)
    qapply, qparams = quant.quantize_model(merged, params, calibration=[np.asarray(tokens)])
    assert float(jnp.abs(jax.jit(qapply)(qparams, tokens) - y).max()) <= 0.1 * float(jnp.abs(y).max())
