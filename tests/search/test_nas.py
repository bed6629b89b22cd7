import jax
import jax.numpy as jnp
import numpy as np
import pytest
from supernets import HAND_PICKED, NO_ATTENTION, OUTSIDE_THE_SPACE, SMALL, STEM, STEM2, TINY, architecture, sampled

from hamjax import measure
from hamjax.search import nas, supernet
from hamjax.search import population as pop

GENOMES = HAND_PICKED + sampled(SMALL, 4)


@pytest.fixture(scope="module")
def small():
    params = nas.init(SMALL, jax.random.key(0))
    # Non-zero biases and norms, so that every parameter matters to the output.
    rng = np.random.default_rng(1)
    params = jax.tree.map(lambda a: a + 0.1 * rng.normal(size=a.shape).astype(np.float32), params)
    x = jnp.asarray(rng.normal(size=(5, 8, 8, 2)), jnp.float32)
    return params, x


# genes ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("change", "match"), OUTSIDE_THE_SPACE)
def test_param_count_rejects_genomes_outside_the_space(change, match):
    with pytest.raises(ValueError, match=match):
        nas.param_count(SMALL, HAND_PICKED[1] | change)


def test_nas_reexports_the_supernet():
    for name in ("OPS", "SupernetConfig", "space", "encode", "decode", "init"):
        assert getattr(nas, name) is getattr(supernet, name), name


def test_describe():
    assert nas.describe(HAND_PICKED[1]) == "depth 3: dense/12/relu, conv/4/tanh, attention/8/silu"
    assert nas.describe(HAND_PICKED[3]) == "depth 2: conv/8/relu, identity"


# the supernet ----------------------------------------------------------------------------------


def test_apply_rejects_bad_inputs(small):
    params, x = small
    genome = nas.encode(SMALL, HAND_PICKED[0])
    with pytest.raises(ValueError, match="must be a scalar"):
        nas.apply(SMALL, params, nas.space(SMALL).encode(HAND_PICKED[0]), x)
    with pytest.raises(ValueError, match="genes"):
        nas.apply(SMALL, params, {"depth": genome["depth"]}, x)
    with pytest.raises(ValueError, match=r"x must have shape \(N, 8, 8, 2\)"):
        nas.apply(SMALL, params, genome, x[..., :1])


def test_apply_vmaps_over_a_population_of_architectures(small):
    params, x = small
    members = GENOMES[:4]
    genomes = {k: jnp.stack([nas.encode(SMALL, v)[k] for v in members]) for k in nas.space(SMALL).names}
    rng = np.random.default_rng(3)
    supernets = jax.tree.map(lambda a: a[None] + 0.1 * rng.normal(size=(4, *a.shape)).astype(np.float32), params)
    over_members = jax.jit(jax.vmap(lambda p, g: nas.apply(SMALL, p, g, x)))
    logits = over_members(supernets, genomes)
    assert logits.shape == (4, 5, 3)
    for i, values in enumerate(members):
        want = nas.apply(SMALL, pop.member(supernets, i), nas.encode(SMALL, values), x)
        np.testing.assert_allclose(logits[i], want, atol=1e-5, rtol=1e-5)
    # different architectures on the same weights give different functions
    shared = over_members(jax.tree.map(lambda a: np.stack([a] * 4), params), genomes)
    assert np.min(np.abs(np.diff(np.asarray(shared), axis=0)).max(axis=(1, 2))) > 1e-4


# masking and materialising ---------------------------------------------------------------------


def _used(config, params, values):
    """A bool pytree like params: True exactly for the entries the architecture uses."""
    used = jax.tree.map(lambda a: np.zeros(a.shape, bool), params)
    for part in ("stem", "pos", "head"):
        used[part] = jax.tree.map(lambda a: np.ones(a.shape, bool), params[part])
    per_head = config.max_width // config.num_heads
    for i in range(values["depth"]):
        op, w = values[f"op{i}"], values[f"width{i}"]
        if op == "identity":
            continue
        layer = used["layers"][i]
        layer["ln"] = jax.tree.map(lambda a: np.ones(a.shape, bool), params["layers"][i]["ln"])
        if op == "dense":
            layer["dense"]["w1"][:, :w] = layer["dense"]["b1"][:w] = layer["dense"]["w2"][:w] = True
            layer["dense"]["b2"][:] = True
        elif op == "conv":
            layer["conv"]["w_in"][:, :w] = layer["conv"]["kernel"][..., :w] = layer["conv"]["w_out"][:w] = True
        else:
            channels = np.arange(config.max_width) % per_head < w // config.num_heads
            for n in ("q", "k", "v"):
                layer["attention"][n][:, channels] = True
            layer["attention"]["out"][channels] = True
    return used


@pytest.mark.parametrize("index", range(len(GENOMES)))
def test_masking_is_real(small, index):
    params, x = small
    values = GENOMES[index]
    genome = nas.encode(SMALL, values)
    used = _used(SMALL, params, values)
    rng = np.random.default_rng(4)
    noise = jax.tree.map(lambda a: rng.normal(size=a.shape).astype(np.float32), params)
    unused_changed = jax.tree.map(lambda a, u, n: np.where(u, a, a + n), params, used, noise)
    used_changed = jax.tree.map(lambda a, u, n: np.where(u, a + n, a), params, used, noise)
    want = nas.apply(SMALL, params, genome, x)
    np.testing.assert_allclose(nas.apply(SMALL, unused_changed, genome, x), want, atol=1e-6, rtol=0)
    assert float(jnp.abs(nas.apply(SMALL, used_changed, genome, x) - want).max()) > 1e-3
    # the architecture's parameter count is exactly the used entries
    assert nas.param_count(SMALL, values) == sum(int(u.sum()) for u in jax.tree.leaves(used))


@pytest.mark.parametrize("index", range(len(GENOMES)))
def test_materialise_matches_apply_and_counts_params(small, index):
    params, x = small
    values = GENOMES[index]
    fn, small_params = nas.materialise(SMALL, params, values)
    np.testing.assert_allclose(fn(small_params, x), nas.apply(SMALL, params, nas.encode(SMALL, values), x), atol=1e-5)
    assert measure.param_count(small_params) == nas.param_count(SMALL, values)
    active = [i for i in range(values["depth"]) if values[f"op{i}"] != "identity"]
    assert len(small_params["layers"]) == len(active)
    assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(small_params))


def test_materialised_attention_keeps_every_head_narrower(small):
    params, _ = small
    _, small_params = nas.materialise(SMALL, params, architecture(1, ("attention", 4, "relu")))
    q = small_params["layers"][0]["q"]
    assert q.shape == (12, 4)
    full = params["layers"][0]["attention"]["q"]
    np.testing.assert_array_equal(q, jnp.concatenate([full[:, 0:2], full[:, 6:8]], axis=1))


def test_identity_layers_add_no_params():
    stem_and_head = 8 * 12 + 12 + 16 * 12 + 2 * 12 + 12 * 3 + 3
    all_identity = architecture(3, *[("identity", 12, "relu")] * 3)
    assert nas.param_count(SMALL, all_identity) == stem_and_head
    one = architecture(1, ("dense", 8, "relu"))
    with_identities = architecture(3, ("dense", 8, "relu"), ("identity", 12, "gelu"), ("identity", 4, "tanh"))
    assert (
        nas.param_count(SMALL, with_identities)
        == nas.param_count(SMALL, one)
        == stem_and_head + 24 + 2 * 12 * 8 + 8 + 12
    )
    # layers beyond depth count for nothing whatever they hold
    assert nas.param_count(SMALL, architecture(1, ("dense", 8, "relu"), ("conv", 12, "relu"))) == nas.param_count(
        SMALL, one
    )


# populations -------------------------------------------------------------------------------------


def _tiny_batches(steps=3):
    rng = np.random.default_rng(1)
    return rng.normal(size=(steps, 8, 8, 8, 1)).astype(np.float32), rng.integers(0, 10, (steps, 8)).astype(np.int32)


def test_population_trains_supernets_and_leaves_genomes_bit_identical():
    values = [
        architecture(1, ("dense", 8, "relu"), config=TINY),
        architecture(2, ("attention", 16, "gelu"), ("conv", 8, "tanh"), config=TINY),
        architecture(2, ("conv", 16, "silu"), ("identity", 8, "relu"), config=TINY),
        architecture(2, ("identity", 8, "relu"), ("attention", 8, "silu"), config=TINY),
    ]
    genomes = {k: jnp.stack([nas.encode(TINY, v)[k] for v in values]) for k in nas.space(TINY).names}
    params = nas.population_params(TINY, jax.random.key(0), genomes)
    assert all(g.dtype == jnp.float32 and g.shape == (4,) for g in params["genome"].values())
    member0 = nas.member_params(TINY, pop.member(params, 0)["supernet"], nas.encode(TINY, values[0]))
    assert jax.tree.structure(pop.member(params, 0)) == jax.tree.structure(member0)
    before = jax.tree.map(np.array, params)

    xs, ys = _tiny_batches()
    trainer = pop.Population(nas.member_apply(TINY))
    state = trainer.init(params, {"learning_rate": 1e-2})
    np.testing.assert_array_equal(state.hparams["weight_decay"], 0.0)  # Population's default
    state, losses = trainer.train(state, xs, ys)
    assert losses.shape == (4, 3) and bool(jnp.all(jnp.isfinite(losses)))
    for name, gene in state.params["genome"].items():
        assert gene.dtype == jnp.float32
        np.testing.assert_array_equal(np.asarray(gene).view(np.uint32), before["genome"][name].view(np.uint32))
    for i, v in enumerate(values):
        assert nas.decode(TINY, pop.member(nas.genome_of(state.params), i)) == v
    # Adam moves a weight by about the learning rate whenever its gradient is non-zero, so: gradient
    # reached every leaf of each member's chosen sub-network, and exactly nothing else (unchosen ops,
    # units beyond the width, attention channels beyond width/heads, layers beyond depth).
    after = jax.tree.map(np.asarray, state.params["supernet"])
    for i, v in enumerate(values):
        old, new = pop.member(before["supernet"], i), pop.member(after, i)
        used = _used(TINY, old, v)
        leaves = zip(jax.tree_util.tree_leaves_with_path(used), jax.tree.leaves(old), jax.tree.leaves(new), strict=True)
        for (path, u), a, b in leaves:
            path = jax.tree_util.keystr(path)
            np.testing.assert_array_equal(np.where(u, 0.0, b), np.where(u, 0.0, a), err_msg=f"member {i} {path}")
            if u.any():
                assert np.abs(b - a)[u].max() > 1e-3, f"member {i} {path} did not train"


def test_member_apply_equals_apply_on_the_rounded_genome(small):
    params, x = small
    values = HAND_PICKED[1]
    member = nas.member_params(SMALL, params, nas.encode(SMALL, values))
    assert all(v.dtype == jnp.float32 for v in member["genome"].values())
    grads = jax.grad(lambda g: jnp.sum(nas.member_apply(SMALL)({"supernet": params, "genome": g}, x)))(member["genome"])
    assert all(g.dtype == jnp.float32 and float(g) == 0.0 for g in grads.values())
    np.testing.assert_array_equal(
        nas.member_apply(SMALL)(member, x), nas.apply(SMALL, params, nas.encode(SMALL, values), x)
    )
    assert {k: int(v) for k, v in nas.genome_of(member).items()} == {
        k: int(v) for k, v in nas.encode(SMALL, values).items()
    }


# convolutional stem and the depthwise convolution -----------------------------------------------


def test_linear_stem_embeds_each_patch(small):
    params, x = small
    assert "convs" not in params["stem"]
    tokens = nas._tokens(SMALL, params, x)
    stem, pos = jax.tree.map(np.asarray, (params["stem"], params["pos"]))
    for r in range(4):
        for c in range(4):
            patch = x[:, 2 * r : 2 * r + 2, 2 * c : 2 * c + 2, :].reshape(5, 8)
            want = np.asarray(patch) @ stem["kernel"] + stem["bias"] + pos[4 * r + c]
            np.testing.assert_allclose(tokens[:, 4 * r + c], want, atol=1e-5)


def test_stem_convolutions_equal_lax_conv():
    params = nas.init(STEM2, jax.random.key(1))
    params["stem"]["convs"] = jax.tree.map(lambda a: a + 0.1, params["stem"]["convs"])
    x = jnp.asarray(np.random.default_rng(0).normal(size=(3, 8, 8, 2)), jnp.float32)
    h = x
    for conv in params["stem"]["convs"]:
        h = jax.lax.conv_general_dilated(
            h, conv["kernel"], (2, 2), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        h = jax.nn.relu(h + conv["bias"][None, None, None, :])
    stem, pos = jax.tree.map(np.asarray, (params["stem"], params["pos"]))
    want = np.asarray(h).reshape(3, 4, 5) @ stem["kernel"] + stem["bias"] + pos
    np.testing.assert_allclose(nas._tokens(STEM2, params, x), want, atol=1e-5)


def test_supernet_has_no_grouped_convolution():
    """A grouped lax convolution under vmap over members ran hundreds of times slower on XLA:CPU."""
    genome = nas.encode(STEM, HAND_PICKED[1])
    jaxpr = jax.make_jaxpr(lambda p, x: nas.apply(STEM, p, genome, x))(
        nas.init(STEM, jax.random.key(0)), jnp.ones((2, 8, 8, 2))
    )
    assert "conv_general_dilated" not in str(jaxpr)


@pytest.mark.parametrize("config", [STEM, STEM2], ids=["stem1", "stem2"])
@pytest.mark.parametrize("index", [1, 2, 5])
def test_stem_materialise_matches_apply_and_counts_params(config, index):
    rng = np.random.default_rng(1)
    params = jax.tree.map(
        lambda a: a + 0.1 * rng.normal(size=a.shape).astype(np.float32), nas.init(config, jax.random.key(0))
    )
    x = jnp.asarray(rng.normal(size=(5, 8, 8, 2)), jnp.float32)
    values = GENOMES[index]
    fn, small_params = nas.materialise(config, params, values)
    np.testing.assert_allclose(fn(small_params, x), nas.apply(config, params, nas.encode(config, values), x), atol=1e-5)
    assert measure.param_count(small_params) == nas.param_count(config, values)
    used = _used(config, params, values)
    assert nas.param_count(config, values) == sum(int(u.sum()) for u in jax.tree.leaves(used))
    # the stem's convolutions are counted exactly: 9 * in * out + out each
    stem = sum(9 * a * b + b for a, b in config.stem_convs) + config.embed_features * 12 + 12
    assert measure.param_count(small_params["stem"]) == stem


# a subset of ops ---------------------------------------------------------------------------------


@pytest.mark.parametrize("index", [2, 3])
def test_ops_subset_masks_materialises_and_counts(index):
    rng = np.random.default_rng(2)
    params = jax.tree.map(
        lambda a: a + 0.1 * rng.normal(size=a.shape).astype(np.float32), nas.init(NO_ATTENTION, jax.random.key(0))
    )
    x = jnp.asarray(rng.normal(size=(5, 8, 8, 2)), jnp.float32)
    values = HAND_PICKED[index]
    genome = nas.encode(NO_ATTENTION, values)
    want = nas.apply(NO_ATTENTION, params, genome, x)
    used = _used(NO_ATTENTION, params, values)
    noise = jax.tree.map(lambda a: rng.normal(size=a.shape).astype(np.float32), params)
    unused_changed = jax.tree.map(lambda a, u, n: np.where(u, a, a + n), params, used, noise)
    np.testing.assert_allclose(nas.apply(NO_ATTENTION, unused_changed, genome, x), want, atol=1e-6, rtol=0)
    fn, small_params = nas.materialise(NO_ATTENTION, params, values)
    np.testing.assert_allclose(fn(small_params, x), want, atol=1e-5)
    assert measure.param_count(small_params) == nas.param_count(NO_ATTENTION, values)
    assert nas.param_count(NO_ATTENTION, values) == sum(int(u.sum()) for u in jax.tree.leaves(used))
