"""Named intermediates (hamjax.jaxpr.intermediates) on plain jax.numpy functions, Flax Linen and the NNX reference models."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.ad_checkpoint import checkpoint_name
from reference_models import normal, random_model

import hamjax
from hamjax import jaxpr

SHAPE = (8, 8, 1)


def _images(n=4, seed=1):
    return normal(np.random.default_rng(seed), (n, *SHAPE))


# ---------------------------------------------------------------- plain jax.numpy


def _captured_y(f, p, x, wanted=()):
    return jaxpr.capture(f, wanted)(p, x)[0]


def _plain_params(seed=0):
    rng = np.random.default_rng(seed)
    params = {"w1": normal(rng, (3, 5)), "b1": normal(rng, (5,)), "w2": normal(rng, (5, 2))}
    return params, normal(rng, (4, 3))


def _plain(p, x):
    h = checkpoint_name(jnp.tanh(x @ p["w1"] + p["b1"][None]), "hidden/0")
    return h @ p["w2"]


def test_plain_function_names_and_values():
    params, x = _plain_params()
    assert jaxpr.names(_plain, params, x) == ("w1", "hidden/0", "w2")
    # Taps come back in the order asked for, not the order of evaluation.
    y, taps = jaxpr.capture(_plain, ["w2", "hidden/0", "w1"])(params, x)
    assert list(taps) == ["w2", "hidden/0", "w1"]
    pre = np.asarray(x) @ np.asarray(params["w1"])
    hidden = np.tanh(pre + np.asarray(params["b1"])[None])
    np.testing.assert_allclose(taps["w1"], pre, rtol=1e-5, atol=1e-6)  # the product, before the bias
    np.testing.assert_allclose(taps["hidden/0"], hidden, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(y, hidden @ np.asarray(params["w2"]), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(taps["w2"], y)  # the last product is the output itself
    # One name as a plain string.
    _, taps = jaxpr.capture(_plain, "hidden/0")(params, x)
    assert list(taps) == ["hidden/0"]
    np.testing.assert_allclose(taps["hidden/0"], hidden, rtol=1e-5, atol=1e-6)


def test_weight_names_are_slash_joined_key_paths():
    rng = np.random.default_rng(0)
    params = {"enc": {"layers": [{"kernel": normal(rng, (3, 4))}, {"kernel": normal(rng, (4, 2))}]}}
    x = normal(rng, (2, 3))

    def f(p, x):
        layers = p["enc"]["layers"]
        return jax.nn.relu(x @ layers[0]["kernel"]) @ layers[1]["kernel"]

    assert jaxpr.names(f, params, x) == ("enc/layers/0/kernel", "enc/layers/1/kernel")
    y, taps = jaxpr.capture(f, ["enc/layers/0/kernel"])(params, x)
    np.testing.assert_allclose(taps["enc/layers/0/kernel"], x @ params["enc"]["layers"][0]["kernel"], rtol=1e-6)
    np.testing.assert_array_equal(y, f(params, x))


def test_repeated_marker_and_weight_used_twice_get_numbered_names():
    rng = np.random.default_rng(0)
    params = {"v": normal(rng, (3, 3))}
    x = normal(rng, (4, 3))

    def f(p, x):
        h = checkpoint_name(x @ p["v"], "h")
        h = checkpoint_name(jnp.tanh(h) @ p["v"], "h")
        return 2.0 * h

    assert jaxpr.names(f, params, x) == ("v", "h", "v#1", "h#1")
    y, taps = jaxpr.capture(f, ["h", "h#1", "v", "v#1"])(params, x)
    first = np.asarray(x) @ np.asarray(params["v"])
    second = np.tanh(first) @ np.asarray(params["v"])
    np.testing.assert_allclose(taps["h"], first, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(taps["h#1"], second, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(taps["v"], taps["h"])
    np.testing.assert_array_equal(taps["v#1"], taps["h#1"])
    np.testing.assert_array_equal(y, 2.0 * taps["h#1"])
    assert not np.allclose(taps["h"], taps["h#1"])


@jax.custom_jvp
def _softsign(a):
    return checkpoint_name(a / (1 + jnp.abs(a)), "in_custom_jvp")


@_softsign.defjvp
def _softsign_jvp(primals, tangents):
    (a,), (t,) = primals, tangents
    return _softsign(a), t / (1 + jnp.abs(a)) ** 2


def test_markers_inside_jit_are_found_and_custom_jvp_is_left_whole():
    rng = np.random.default_rng(0)
    params = {"w": normal(rng, (3, 4)), "v": normal(rng, (4, 2))}
    x = normal(rng, (5, 3))
    # Only activations enter these calls: they are inlined because a marker is inside.
    inner = jax.jit(lambda a: 2.0 * checkpoint_name(jnp.sin(a), "in_jit"))
    outer = jax.jit(lambda a: checkpoint_name(inner(a) + 1.0, "in_nested_jit"))

    def f(p, x):
        return _softsign(outer(x @ p["w"])) @ p["v"]

    # The custom_jvp function is not inlined (that would drop its rule), so its marker is not read.
    assert jaxpr.names(f, params, x) == ("w", "in_jit", "in_nested_jit", "v")
    y, taps = jax.jit(jaxpr.capture(f, ["in_jit", "in_nested_jit"]))(params, x)
    pre = np.asarray(x) @ np.asarray(params["w"])
    in_jit = np.sin(pre)
    nested = 2.0 * in_jit + 1.0
    soft = nested / (1 + np.abs(nested))
    np.testing.assert_allclose(taps["in_jit"], in_jit, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(taps["in_nested_jit"], nested, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(y, soft @ np.asarray(params["v"]), rtol=1e-5, atol=1e-6)
    # The custom derivative here is the true one, so the gradient through the captured function is unchanged.
    grads = [jax.grad(lambda p, h=h: h(p, x).sum())(params) for h in (f, lambda p, x: _captured_y(f, p, x))]
    chex.assert_trees_all_close(grads[1], grads[0], rtol=1e-5, atol=1e-6)


@jax.custom_jvp
def _ste_round(a):
    return checkpoint_name(jnp.round(a), "rounded")


@_ste_round.defjvp
def _ste_round_jvp(primals, tangents):
    (a,), (t,) = primals, tangents
    return _ste_round(a), t  # straight-through: the derivative of round taken as 1


def test_capture_keeps_the_custom_jvp_rule():
    params, x = _plain_params()

    def f(p, x):
        return _ste_round(x @ p["w1"]) @ p["w2"]

    want = jax.grad(lambda p: f(p, x).sum())(params)
    assert np.abs(np.asarray(want["w1"])).max() > 0  # the straight-through gradient is not zero
    got = jax.grad(lambda p: _captured_y(f, p, x, "w2").sum())(params)
    chex.assert_trees_all_close(got, want, rtol=1e-5, atol=1e-6)
    # A marker inside a custom_jvp function is not read: inlining the call would drop its rule.
    assert "rounded" not in jaxpr.names(f, params, x)
    with pytest.raises(ValueError, match="rounded"):
        jaxpr.capture(f, "rounded")(params, x)


# ---------------------------------------------------------------- the model is unchanged


def test_plain_output_is_bit_identical():
    params, x = _plain_params()
    captured = jaxpr.capture(_plain, ["hidden/0", "w2"])
    np.testing.assert_array_equal(jax.jit(captured)(params, x)[0], jax.jit(_plain)(params, x))
    np.testing.assert_array_equal(captured(params, x)[0], _plain(params, x))


def test_nnx_output_and_batch_stats_are_bit_identical():
    apply_fn, _, params = random_model("cnn", input_shape=SHAPE, dropout_rate=0.5)
    x = _images()
    captured = jaxpr.capture(apply_fn, ["features/1", "embedding"])
    assert isinstance(captured, hamjax.ApplyFn)
    assert captured.collections == apply_fn.collections
    y, taps = jax.jit(captured)(params, x)
    np.testing.assert_array_equal(y, jax.jit(apply_fn)(params, x))
    assert taps["features/1"].shape == (4, 2, 2, 16)

    key = jax.random.key(2)
    (y1, taps), v1 = jax.jit(lambda p, x: captured(p, x, train=True, rng=key, mutable=True))(params, x)
    y0, v0 = jax.jit(lambda p, x: apply_fn(p, x, train=True, rng=key, mutable=True))(params, x)
    np.testing.assert_array_equal(y1, y0)
    chex.assert_trees_all_equal(v1, v0)
    # Train mode really ran: statistics moved, and dropout (after hidden/1) zeroed part of the embedding.
    assert not np.allclose(v1["batch_stats"]["norms"][0]["mean"], params["batch_stats"]["norms"][0]["mean"])
    assert 0 < np.mean(np.asarray(taps["embedding"]) == 0) < 1
    head = params["params"]["head"]
    np.testing.assert_allclose(y1, taps["embedding"] @ head["kernel"] + head["bias"][None], rtol=1e-5, atol=1e-5)
    # Train mode without mutable: (y, taps).
    y2, taps2 = jax.jit(lambda p, x: captured(p, x, train=True, rng=key))(params, x)
    np.testing.assert_array_equal(y2, y0)
    np.testing.assert_array_equal(taps2["embedding"], taps["embedding"])


def test_nnx_attention_model_output_is_bit_identical():
    apply_fn, _, params = random_model("vit", input_shape=SHAPE, num_layers=1, hidden_size=16, num_heads=2)
    x = _images()
    y, _ = jax.jit(jaxpr.capture(apply_fn, ["blocks/0/attention", "embedding"]))(params, x)
    np.testing.assert_array_equal(y, jax.jit(apply_fn)(params, x))


class _LinenNet(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Dense(8)(x)
        x = nn.BatchNorm(use_running_average=not train)(x)
        x = checkpoint_name(nn.relu(x), "hidden")
        x = nn.Dropout(0.5, deterministic=not train)(x)
        return nn.Dense(3)(x)


def _linen():
    model = _LinenNet()
    rng = np.random.default_rng(3)
    x = normal(rng, (6, 4))
    shapes = jax.eval_shape(model.init, jax.random.key(0), x)

    def draw(path, a):
        value = rng.normal(size=a.shape)
        if path[-1].key == "var":
            value = 0.5 + np.abs(value)
        return jnp.asarray(0.5 * value, jnp.float32)

    variables = jax.tree_util.tree_map_with_path(draw, shapes)
    apply_fn, variables = hamjax.linen_functional(model, variables)
    return apply_fn, variables, x


def test_linen_output_and_batch_stats_are_bit_identical():
    apply_fn, variables, x = _linen()
    assert jaxpr.names(apply_fn, variables, x) == ("params/Dense_0/kernel", "hidden", "params/Dense_1/kernel")
    captured = jaxpr.capture(apply_fn, ["hidden", "params/Dense_1/kernel"])
    y, taps = jax.jit(captured)(variables, x)
    np.testing.assert_array_equal(y, jax.jit(apply_fn)(variables, x))
    # Eval mode: the hidden tap is the normalized, activated Dense_0 output.
    p, stats = variables["params"], variables["batch_stats"]["BatchNorm_0"]
    h = x @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"][None]
    h = (h - stats["mean"][None]) / jnp.sqrt(stats["var"][None] + 1e-5)
    h = jax.nn.relu(h * p["BatchNorm_0"]["scale"][None] + p["BatchNorm_0"]["bias"][None])
    np.testing.assert_allclose(taps["hidden"], h, rtol=1e-5, atol=1e-5)

    key = jax.random.key(4)
    (y1, taps), v1 = jax.jit(lambda v, x: captured(v, x, train=True, rng=key, mutable=True))(variables, x)
    y0, v0 = jax.jit(lambda v, x: apply_fn(v, x, train=True, rng=key, mutable=True))(variables, x)
    np.testing.assert_array_equal(y1, y0)
    chex.assert_trees_all_equal(v1, v0)
    assert not np.allclose(v1["batch_stats"]["BatchNorm_0"]["mean"], stats["mean"])
    assert not np.allclose(y1, y)  # batch statistics and dropout changed the output


# ---------------------------------------------------------------- reference models


def _marked(apply_fn, params, x):
    return [n for n in jaxpr.names(apply_fn, params, x) if not n.startswith("params/")]


def _check_shapes(apply_fn, params, x, expected):
    got = jaxpr.shapes(apply_fn, params, x, list(expected))
    assert {k: (v.shape, v.dtype) for k, v in got.items()} == {k: (s, jnp.float32) for k, s in expected.items()}
    _, taps = jax.jit(jaxpr.capture(apply_fn, list(expected)))(params, x)
    assert {k: v.shape for k, v in taps.items()} == expected
    return taps


def test_mlp_taps():
    apply_fn, _, params = random_model("mlp", input_shape=SHAPE)
    x = _images()
    assert _marked(apply_fn, params, x) == ["hidden/0", "hidden/1", "embedding"]
    taps = _check_shapes(apply_fn, params, x, {"hidden/0": (4, 512), "hidden/1": (4, 512), "embedding": (4, 512)})
    layers = params["params"]["layers"]
    h0 = jax.nn.relu(x.reshape(4, 64) @ layers[0]["kernel"] + layers[0]["bias"][None])
    np.testing.assert_allclose(taps["hidden/0"], h0, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(taps["embedding"], taps["hidden/1"])  # no dropout in eval mode
    # The embedding is what the head reads: head(embedding) reproduces the logits.
    y = jax.jit(apply_fn)(params, x)
    np.testing.assert_allclose(
        taps["embedding"] @ layers[2]["kernel"] + layers[2]["bias"][None], y, rtol=1e-4, atol=1e-5
    )


def test_cnn_taps():
    apply_fn, _, params = random_model("cnn", input_shape=SHAPE)
    x = _images()
    assert _marked(apply_fn, params, x) == ["features/0", "features/1", "hidden/0", "hidden/1", "embedding"]
    expected = {
        "features/0": (4, 4, 4, 6),
        "features/1": (4, 2, 2, 16),
        "hidden/0": (4, 120),
        "hidden/1": (4, 84),
        "embedding": (4, 84),
    }
    taps = _check_shapes(apply_fn, params, x, expected)
    assert all(np.min(np.asarray(taps[k])) >= 0 for k in expected)  # after relu
    dense = params["params"]["dense"][0]
    h0 = jax.nn.relu(taps["features/1"].reshape(4, 64) @ dense["kernel"] + dense["bias"][None])
    np.testing.assert_allclose(taps["hidden/0"], h0, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(taps["embedding"], taps["hidden/1"])
    head = params["params"]["head"]
    y = jax.jit(apply_fn)(params, x)
    np.testing.assert_allclose(taps["embedding"] @ head["kernel"] + head["bias"][None], y, rtol=1e-4, atol=1e-5)


def _check_attention(probs, heads, tokens):
    probs = np.asarray(probs)
    assert probs.shape == (4, heads, tokens, tokens)
    assert probs.min() >= 0
    np.testing.assert_allclose(probs.sum(axis=-1), np.ones((4, heads, tokens)), atol=1e-5)
    assert probs.std() > 1e-3  # not uniform: the scores depend on the tokens


def test_vit_taps():
    apply_fn, config, params = random_model("vit", input_shape=SHAPE)
    assert (config.num_patches, config.hidden_size, config.num_heads, config.num_layers) == (4, 64, 4, 2)
    x = _images()
    assert _marked(apply_fn, params, x) == [
        "blocks/0/attention/keys",
        "blocks/0/attention/logits",
        "blocks/0/attention",
        "blocks/0/attention/merge",
        "blocks/0",
        "blocks/1/attention/keys",
        "blocks/1/attention/logits",
        "blocks/1/attention",
        "blocks/1/attention/merge",
        "blocks/1",
        "unmerge",
        "embedding",
    ]
    expected = {
        "blocks/0": (4, 4, 64),
        "blocks/0/attention": (4, 4, 4, 4),
        "blocks/1": (4, 4, 64),
        "blocks/1/attention": (4, 4, 4, 4),
        "embedding": (4, 64),
    }
    taps = _check_shapes(apply_fn, params, x, expected)
    for i in range(2):
        _check_attention(taps[f"blocks/{i}/attention"], 4, 4)
    assert not np.allclose(taps["blocks/0/attention"], taps["blocks/1/attention"])
    head = params["params"]["head"]
    y = jax.jit(apply_fn)(params, x)
    np.testing.assert_allclose(taps["embedding"] @ head["kernel"] + head["bias"][None], y, rtol=1e-4, atol=1e-5)


def test_hamnet_taps():
    apply_fn, config, params = random_model("hamnet", input_shape=SHAPE)
    assert config.layer_kinds == ("attention", "mixer", "attention", "mixer")
    x = _images()
    assert _marked(apply_fn, params, x) == [
        "layers/0/attention/keys",
        "layers/0/attention/logits",
        "layers/0/attention",
        "layers/0/attention/merge",
        "layers/0",
        "layers/0/unmerge",
        "layers/1",
        "layers/2/attention/keys",
        "layers/2/attention/logits",
        "layers/2/attention",
        "layers/2/attention/merge",
        "layers/2",
        "layers/2/unmerge",
        "layers/3",
        "embedding",
    ]
    expected = {f"layers/{i}": (4, 8, 64) for i in range(4)}
    expected |= {"layers/0/attention": (4, 4, 8, 8), "layers/2/attention": (4, 4, 8, 8), "embedding": (4, 64)}
    taps = _check_shapes(apply_fn, params, x, expected)
    for i in (0, 2):
        _check_attention(taps[f"layers/{i}/attention"], 4, 8)
    with pytest.raises(ValueError, match="layers/1/attention"):  # mixer layers have no attention
        jaxpr.shapes(apply_fn, params, x, "layers/1/attention")


# ---------------------------------------------------------------- gradients and transforms


def test_gradient_through_a_tap_equals_the_hand_gradient():
    params, x = _plain_params()
    captured = jaxpr.capture(_plain, "hidden/0")
    got = jax.grad(lambda p: captured(p, x)[1]["hidden/0"].sum())(params)
    h = np.tanh(np.asarray(x) @ np.asarray(params["w1"]) + np.asarray(params["b1"])[None])
    dh = 1 - h**2  # d sum(tanh(z)) / dz
    np.testing.assert_allclose(got["w1"], np.asarray(x).T @ dh, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got["b1"], dh.sum(axis=0), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(got["w2"], np.zeros((5, 2)))  # the tap does not depend on w2
    # A loss on both the output and a tap: the sum of the two gradients.
    both = jax.grad(lambda p: captured(p, x)[0].sum() + captured(p, x)[1]["hidden/0"].sum())(params)
    out = jax.grad(lambda p: _plain(p, x).sum())(params)
    chex.assert_trees_all_close(both, jax.tree.map(jnp.add, got, out), rtol=1e-5, atol=1e-5)


def test_gradient_of_the_output_is_unchanged_on_nnx():
    apply_fn, _, params = random_model("mlp", input_shape=SHAPE)
    x = _images()
    captured = jaxpr.capture(apply_fn, "embedding")
    grads = [
        jax.jit(jax.grad(lambda p, h=h: h(p, x).sum()))(params) for h in (apply_fn, lambda p, x: captured(p, x)[0])
    ]
    chex.assert_trees_all_equal(grads[1], grads[0])


def test_jit_matches_eager():
    params, x = _plain_params()
    captured = jaxpr.capture(_plain, ["w1", "hidden/0"])
    chex.assert_trees_all_close(jax.jit(captured)(params, x), captured(params, x), rtol=1e-6, atol=1e-6)


def test_vmap_over_params_matches_per_member_calls():
    stacked = [_plain_params(seed)[0] for seed in range(3)]
    _, x = _plain_params()
    batch = jax.tree.map(lambda *a: jnp.stack(a), *stacked)
    captured = jaxpr.capture(_plain, ["hidden/0", "w1"])
    y, taps = jax.vmap(lambda p: captured(p, x))(batch)
    assert y.shape == (3, 4, 2) and taps["hidden/0"].shape == (3, 4, 5)
    for i, p in enumerate(stacked):
        yi, ti = captured(p, x)
        np.testing.assert_allclose(y[i], yi, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(taps["hidden/0"][i], ti["hidden/0"], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(taps["w1"][i], ti["w1"], rtol=1e-5, atol=1e-6)
    assert not np.allclose(taps["hidden/0"][0], taps["hidden/0"][1])

    # An NNX model: a vmapped and jitted ensemble of two sets of variables.
    apply_fn, _, p0 = random_model("mlp", input_shape=SHAPE, seed=0)
    _, _, p1 = random_model("mlp", input_shape=SHAPE, seed=1)
    xm = _images()
    captured = jaxpr.capture(apply_fn, ["hidden/0", "embedding"])
    y, taps = jax.jit(jax.vmap(lambda p: captured(p, xm)))(jax.tree.map(lambda a, b: jnp.stack([a, b]), p0, p1))
    for i, p in enumerate((p0, p1)):
        yi, ti = jax.jit(captured)(p, xm)
        np.testing.assert_allclose(y[i], yi, rtol=1e-5, atol=1e-5)
        chex.assert_trees_all_close({k: v[i] for k, v in taps.items()}, ti, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- errors


def test_missing_name_raises_with_the_available_names():
    params, x = _plain_params()
    captured = jaxpr.capture(_plain, ["hidden/0", "hidden/9"])
    with pytest.raises(ValueError, match="no intermediate named") as info:
        captured(params, x)
    message = str(info.value)
    assert "'hidden/9'" in message
    assert all(f"'{n}'" in message for n in ("w1", "hidden/0", "w2"))
    with pytest.raises(ValueError, match="hidden/9"):
        jax.jit(captured)(params, x)
    # NNX: a typo in a layer name lists the real ones.
    apply_fn, _, mparams = random_model("mlp", input_shape=SHAPE)
    with pytest.raises(ValueError, match=r"'hidden/2'.*'hidden/1'"):
        jaxpr.capture(apply_fn, "hidden/2")(mparams, _images())


@pytest.mark.parametrize(
    ("wanted", "match"),
    [([1], "must be strings"), (["hidden/0", None], "must be strings"), (["hidden/0", "hidden/0"], "repeat")],
)
def test_bad_names_raise_before_tracing(wanted, match):
    def never_called(p, x):
        raise AssertionError("capture traced the model")

    with pytest.raises(ValueError, match=match):
        jaxpr.capture(never_called, wanted)
    with pytest.raises(ValueError, match=match):
        jaxpr.capture(hamjax.ApplyFn(never_called, ("params",)), wanted)


def test_shapes():
    params, x = _plain_params()
    got = jaxpr.shapes(_plain, params, x, ["hidden/0", "w2"])
    assert got == {
        "hidden/0": jax.ShapeDtypeStruct((4, 5), jnp.float32),
        "w2": jax.ShapeDtypeStruct((4, 2), jnp.float32),
    }
    assert jaxpr.shapes(_plain, params, jnp.zeros((7, 3)), "hidden/0")["hidden/0"].shape == (7, 5)
    with pytest.raises(ValueError, match=r"'nope'.*'hidden/0'"):
        jaxpr.shapes(_plain, params, x, ["hidden/0", "nope"])
    with pytest.raises(ValueError, match="repeat"):
        jaxpr.shapes(_plain, params, x, ["w1", "w1"])


def test_keyword_arguments_reach_the_model():
    params, x = _plain_params()

    def f(p, x, *, scale, offset):
        return checkpoint_name(scale * (x @ p["w1"]) + offset, "scaled")

    offset = jnp.arange(5.0)[None]
    assert jaxpr.names(f, params, x, scale=3.0, offset=offset) == ("w1", "scaled")
    assert jaxpr.shapes(f, params, x, "scaled", scale=3.0, offset=offset)["scaled"].shape == (4, 5)
    y, taps = jaxpr.capture(f, "scaled")(params, x, scale=3.0, offset=offset)
    np.testing.assert_allclose(taps["scaled"], 3.0 * (x @ params["w1"]) + offset, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(y, taps["scaled"])
