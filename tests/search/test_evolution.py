"""Genome operators (mutate, crossover, blend) and population-based training steps.

Compiles dominate this file's time, so tests share one space and one batch
size, build inputs with numpy, and pass hyperparameters as arrays (traced).
Search spaces themselves are tested in test_space.py.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from genomes import SPACE, N, as_numpy, assert_batches_equal, assert_dtypes, prng

from hamjax.search import evolution as ev
from hamjax.search import space as space_module
from hamjax.search.evolution import Choice, Float, Int, Space


@pytest.fixture(scope="module")
def other(batch):
    return as_numpy(SPACE.sample(prng(1), N))


def test_space_names_are_reexported():
    assert (ev.Int, ev.Float, ev.Choice, ev.Space, ev.Gene) == (
        space_module.Int,
        space_module.Float,
        space_module.Choice,
        space_module.Space,
        space_module.Gene,
    )


# ---------------------------------------------------------------- mutate


def test_mutate_rate_zero_is_identity(batch):
    assert_batches_equal(as_numpy(ev.mutate(prng(1), SPACE, batch, rate=0.0, scale=0.5)), batch)


def test_mutate_rate_one_changes_every_choice_and_stays_in_bounds(batch):
    m = ev.mutate(prng(1), SPACE, batch, rate=1.0, scale=0.3)
    assert_dtypes(m)
    SPACE.validate(m)
    m = as_numpy(m)
    assert (m["act"] != batch["act"]).all() and (m["opt"] != batch["opt"]).all()
    # Other options are drawn uniformly: from act = 0, both 1 and 2 appear about equally.
    from_zero = m["act"][batch["act"] == 0]
    assert abs((from_zero == 1).mean() - 0.5) < 0.1
    # Int steps are 1..round(0.3 * 3) = 1 for depth, at most round(0.3 * 504) = 151 for width.
    d = np.abs(m["depth"] - batch["depth"])
    assert d.max() == 1 and (d == 1).mean() > 0.6
    w = np.abs(m["width"] - batch["width"])
    # Only members at a bound stepping outwards stay put.
    assert w.max() <= 151 and w.max() > 100 and (w > 0).mean() > 0.97
    # A log gene moves in log space: the log10 step has sd 0.3 * 4 = 1.2 before clipping.
    step = np.log10(m["lr"]) - np.log10(batch["lr"])
    assert 0.5 < np.abs(step).mean() < 1.2 and abs(step.mean()) < 0.2


def test_mutate_fraction_matches_rate(batch):
    m = as_numpy(ev.mutate(prng(2), SPACE, batch, rate=0.3))
    for name in ("lr", "dropout", "act", "opt"):
        changed = (m[name] != batch[name]).mean()
        # Binomial sd = sqrt(0.3 * 0.7 / 1024) = 0.014; clipping at a bound may hide a few float moves.
        assert abs(changed - 0.3) < 0.05, (name, changed)


def test_mutate_jit_equals_eager_and_accepts_traced_rate(batch):
    eager = ev.mutate(prng(3), SPACE, batch, rate=0.5, scale=0.2)
    jitted = jax.jit(lambda k, g, r, s: ev.mutate(k, SPACE, g, rate=r, scale=s))(prng(3), batch, 0.5, 0.2)
    assert_dtypes(jitted)
    for n in SPACE.names:
        # XLA may fuse log/exp differently inside a larger program: floats agree to an ulp.
        np.testing.assert_allclose(jitted[n], eager[n], rtol=3e-7, atol=0, err_msg=n)


def test_mutate_rejects_bad_arguments(batch):
    with pytest.raises(ValueError, match=r"mutate: rate must be a finite number >= 0 and <= 1, got 1.5"):
        ev.mutate(prng(1), SPACE, batch, rate=1.5)
    with pytest.raises(ValueError, match="mutate: scale must be a finite number >= 0, got -0.1"):
        ev.mutate(prng(1), SPACE, batch, scale=-0.1)
    with pytest.raises(ValueError, match="genomes must map exactly the genes"):
        ev.mutate(prng(1), SPACE, {"lr": batch["lr"]})
    with pytest.raises(ValueError, match=rf"genomes\['dropout'\]: expected shape \({N},\), got \(3,\)"):
        ev.mutate(prng(1), SPACE, {**batch, "dropout": batch["dropout"][:3]})


def test_mutate_handles_degenerate_and_extreme_genes():
    space = Space(
        {"one": Choice(("only",)), "fixed": Int(3, 3), "point": Float(2.0, 2.0), "wide": Int(-(2**30), 2**30 - 1)}
    )
    g = {
        "one": np.zeros(4, np.int32),
        "fixed": np.full(4, 3, np.int32),
        "point": np.full(4, 2.0, np.float32),
        "wide": np.array([-(2**30), 2**30 - 1, 0, 5], np.int32),
    }
    m = as_numpy(ev.mutate(prng(1), space, g, rate=1.0, scale=1.0))
    space.validate(m)
    assert_batches_equal({n: m[n] for n in ("one", "fixed", "point")}, {n: g[n] for n in ("one", "fixed", "point")})
    assert (m["wide"][2:] != g["wide"][2:]).all()  # steps of up to 2**30 move without overflowing int32


# ---------------------------------------------------------------- crossover / blend


def test_crossover_rates_and_gene_sources(batch, other):
    assert_batches_equal(as_numpy(ev.crossover(prng(2), SPACE, batch, other, rate=0.0)), batch)
    assert_batches_equal(as_numpy(ev.crossover(prng(2), SPACE, batch, other, rate=1.0)), other)
    c = ev.crossover(prng(2), SPACE, batch, other)
    assert_dtypes(c)
    c = as_numpy(c)
    for n in SPACE.names:
        assert ((c[n] == batch[n]) | (c[n] == other[n])).all(), n
    from_b = np.mean([(c[n] == other[n]).mean() for n in ("lr", "dropout")])
    assert abs(from_b - 0.5) < 0.05
    with pytest.raises(ValueError, match=f"crossover: the parents must have the same number of members, got {N} and 3"):
        ev.crossover(prng(2), SPACE, batch, {n: v[:3] for n, v in other.items()})
    with pytest.raises(ValueError, match="crossover: rate must be a finite number >= 0 and <= 1"):
        ev.crossover(prng(2), SPACE, batch, other, rate=-0.5)


def test_blend_stays_in_parent_interval_and_bounds(batch, other):
    inside = ev.blend(prng(2), SPACE, batch, other, alpha=0.0)
    assert_dtypes(inside)
    inside = as_numpy(inside)
    for n in ("lr", "dropout"):
        lo, hi = np.minimum(batch[n], other[n]), np.maximum(batch[n], other[n])
        assert ((inside[n] >= lo * (1 - 1e-5)) & (inside[n] <= hi * (1 + 1e-5))).all(), n
    wide = ev.blend(prng(3), SPACE, batch, other, alpha=2.0)
    SPACE.validate(wide)
    wide = as_numpy(wide)
    lo, hi = np.minimum(batch["dropout"], other["dropout"]), np.maximum(batch["dropout"], other["dropout"])
    assert ((wide["dropout"] < lo) | (wide["dropout"] > hi)).mean() > 0.3  # alpha = 2 lands most beyond the parents
    for n in ("width", "act"):
        assert ((wide[n] == batch[n]) | (wide[n] == other[n])).all()
        assert abs((wide[n] == other[n])[batch[n] != other[n]].mean() - 0.5) < 0.06
    with pytest.raises(ValueError, match="blend: alpha must be a finite number >= 0"):
        ev.blend(prng(2), SPACE, batch, other, alpha=-1.0)


# ---------------------------------------------------------------- exploit_explore


def _population(p=8):
    rng = np.random.default_rng(p)
    params = {
        "w": rng.normal(size=(p, 3)).astype(np.float32),
        "b": np.arange(p, dtype=np.float32),
        # optax-like state: nested tuples with a count and moments.
        "opt": ((np.arange(p, dtype=np.int32), {"mu": rng.normal(size=(p, 3)).astype(np.float32)}), ()),
    }
    hparams = {
        "lr": np.linspace(0.01, 0.08, p, dtype=np.float32),
        "wd": np.full((p,), 1e-4, np.float32),
        "mom": np.full((p,), 0.9, jnp.bfloat16),  # dtypes are kept
    }
    return params, hparams


def _member(tree, i):
    return [np.asarray(leaf)[i] for leaf in jax.tree.leaves(tree)]


def _check_pbt(params, hparams, out, replaced, donors, factors=(0.8, 1.2)):
    new_params, new_hparams, source = as_numpy(out)
    assert out[2].dtype == jnp.int32
    assert jax.tree.structure(new_params) == jax.tree.structure(params)
    assert jax.tree.map(lambda x: x.dtype, new_params) == jax.tree.map(lambda x: x.dtype, params)
    assert {n: new_hparams[n].dtype for n in hparams} == {n: np.asarray(h).dtype for n, h in hparams.items()}
    for i in range(source.shape[0]):
        s = int(source[i])
        assert (s in donors) if i in replaced else (s == i), (i, s)
        for x, y in zip(_member(new_params, i), _member(params, s), strict=True):
            assert x.tobytes() == y.tobytes()
        for n in hparams:
            if i in replaced:
                ratio = float(new_hparams[n][i]) / float(hparams[n][s])
                tol = 1e-2 if hparams[n].dtype == jnp.bfloat16 else 1e-5
                assert any(math.isclose(ratio, f, rel_tol=tol) for f in factors), (n, ratio)
            else:
                assert new_hparams[n][i].tobytes() == hparams[n][i].tobytes()


def test_exploit_explore_replaces_the_bottom_quarter_from_the_top():
    params, hparams = _population()
    fitness = np.array([5.0, 1.0, 7.0, 0.5, 3.0, 8.0, 2.0, 4.0], np.float32)  # worst: 3, 1; best: 5, 2
    seen_sources, seen_factors = set(), set()
    for seed in range(8):
        out = ev.exploit_explore(prng(seed), fitness, params, hparams)
        _check_pbt(params, hparams, out, replaced={1, 3}, donors={2, 5})
        source, new_h = np.asarray(out[2]), as_numpy(out[1])
        seen_sources |= {int(source[1]), int(source[3])}
        seen_factors |= {round(float(new_h["lr"][i] / hparams["lr"][source[i]]), 3) for i in (1, 3)}
    assert seen_sources == {2, 5} and seen_factors == {0.8, 1.2}
    # Other fractions share the compiled step: floor(fraction * P) members, at least one.
    for fraction, count in [(0.5, 4), (0.1, 1)]:
        out = ev.exploit_explore(prng(0), fitness, params, hparams, fraction=fraction)
        order = np.argsort(fitness)
        _check_pbt(params, hparams, out, replaced=set(order[:count]), donors=set(order[-count:]))


def test_exploit_explore_nan_is_worst_and_bounds_clip():
    params, hparams = _population()
    fitness = np.array([5.0, 1.0, np.nan, 0.5, 3.0, 8.0, 2.0, 4.0], np.float32)  # worst: 2 (NaN), 3; best: 5, 0
    out = ev.exploit_explore(prng(0), fitness, params, hparams, factors=(2.0,), bounds={"lr": (0.0, 0.05)})
    _check_pbt(params, {n: hparams[n] for n in ("wd", "mom")}, out, replaced={2, 3}, donors={0, 5}, factors=(2.0,))
    source, new_h = np.asarray(out[2]), as_numpy(out[1])
    for i in (2, 3):
        expected = min(2 * float(hparams["lr"][source[i]]), 0.05)
        assert math.isclose(float(new_h["lr"][i]), expected, rel_tol=1e-6)


def test_exploit_explore_under_jit_and_small_populations():
    params, hparams = _population()
    fitness = -np.arange(8, dtype=np.float32)  # worst: 7, 6; best: 0, 1
    out = jax.jit(functools.partial(ev.exploit_explore, fraction=0.25))(prng(1), fitness, params, hparams)
    _check_pbt(params, hparams, out, replaced={6, 7}, donors={0, 1})
    np.testing.assert_array_equal(out[2], ev.exploit_explore(prng(1), fitness, params, hparams)[2])
    # P = 3: a tiny fraction still replaces one member; hparams may be None.
    p3, _ = _population(3)
    _, new_h, source = ev.exploit_explore(prng(2), np.array([2.0, 0.0, 1.0]), p3, None, fraction=0.01)
    assert new_h is None and source.tolist() == [0, 0, 2]
    # P = 1: nothing to exploit.
    p1, h1 = _population(1)
    _, new_h, source = ev.exploit_explore(prng(2), np.array([1.0]), p1, h1)
    assert source.tolist() == [0] and new_h["lr"].tolist() == h1["lr"].tolist()


def test_exploit_explore_rejects_bad_arguments():
    params, hparams = _population()
    fitness = np.arange(8, dtype=np.float32)
    for fraction in (0.0, 0.6, -0.1):
        with pytest.raises(ValueError, match="exploit_explore: fraction must be a finite number > 0 and <= 0.5"):
            ev.exploit_explore(prng(0), fitness, params, hparams, fraction=fraction)
    bad = {**params, "opt": ((params["opt"][0][0], {"mu": np.zeros((7, 3))}), ())}
    with pytest.raises(ValueError, match=r"params leaf \['opt'\]\[0\]\[1\]\['mu'\] must have leading member axis 8"):
        ev.exploit_explore(prng(0), fitness, bad, hparams)
    with pytest.raises(ValueError, match=r"hparams\['lr'\] must be a \(8,\) float array"):
        ev.exploit_explore(prng(0), fitness, params, {"lr": np.ones(7)})
    with pytest.raises(ValueError, match=r"fitness must be a \(P,\) array"):
        ev.exploit_explore(prng(0), fitness[:, None], params, hparams)
    with pytest.raises(ValueError, match=r"bounds names \['beta'\] are not hparams"):
        ev.exploit_explore(prng(0), fitness, params, hparams, bounds={"beta": (0.0, 1.0)})
    with pytest.raises(ValueError, match=r"bounds\['lr'\] must have low <= high"):
        ev.exploit_explore(prng(0), fitness, params, hparams, bounds={"lr": (1.0, 0.0)})
    with pytest.raises(ValueError, match=r"bounds\['lr'\] must be a \(low, high\) pair"):
        ev.exploit_explore(prng(0), fitness, params, hparams, bounds={"lr": 1.0})
    with pytest.raises(ValueError, match="factors must be a non-empty"):
        ev.exploit_explore(prng(0), fitness, params, hparams, factors=())


# ---------------------------------------------------------------- replace_nonfinite

_replace_jit = jax.jit(ev.replace_nonfinite)


def test_replace_nonfinite_copies_from_finite_members():
    params, hparams = _population()
    fitness = np.array([1.0, np.nan, 2.0, np.inf, 3.0, -np.inf, 0.0, np.nan], np.float32)
    finite = {0, 2, 4, 6}
    seen = set()
    for seed in range(6):
        out = ev.replace_nonfinite(prng(seed), fitness, params, hparams)
        _check_pbt(params, hparams, out, replaced={1, 3, 5, 7}, donors=finite, factors=(1.0,))
        seen |= set(np.asarray(out[2]).tolist())
    assert seen == finite  # every finite member serves as a donor
    jitted = _replace_jit(prng(0), fitness, params, hparams)
    np.testing.assert_array_equal(jitted[2], ev.replace_nonfinite(prng(0), fitness, params, hparams)[2])


def test_replace_nonfinite_all_nonfinite():
    params, hparams = _population()
    fitness = np.full(8, np.nan, np.float32)
    with pytest.raises(ValueError, match="no member has finite fitness"):
        ev.replace_nonfinite(prng(0), fitness, params, hparams)
    # Under tracing the population is returned unchanged.
    new_p, _, source = _replace_jit(prng(0), fitness, params, hparams)
    assert source.tolist() == list(range(8))
    np.testing.assert_array_equal(new_p["w"], params["w"])


# ---------------------------------------------------------------- a whole loop under lax.scan


def test_evolution_loop_under_scan_improves_fitness(batch):
    def fitness(g):
        return -(
            (jnp.log10(g["lr"]) + 3.0) ** 2
            + (10.0 * (g["dropout"] - 0.2)) ** 2
            + ((g["width"].astype(jnp.float32) - 100) / 50.0) ** 2
            + (g["act"] != 1).astype(jnp.float32)
            + (g["opt"] != 0).astype(jnp.float32)
        )

    def step(g, k):
        k2, k3, k4 = jax.random.split(k, 3)
        f = fitness(g)
        elite = jax.tree.map(lambda v: v[jnp.argsort(-f)[:16]], g)
        pa = jax.tree.map(lambda v: jnp.concatenate([v, v]), elite)
        pb = jax.tree.map(lambda v: jnp.roll(v, 7), pa)  # pairs elite i with elite i - 7 (mod 16)
        child = ev.crossover(k4, SPACE, ev.blend(k2, SPACE, pa, pb), pa, rate=0.2)
        child = ev.mutate(k3, SPACE, child, rate=0.3, scale=0.05)
        return jax.tree.map(lambda e, c: jnp.concatenate([e, c[16:]]), elite, child), jnp.max(f)

    g0 = {n: v[:32] for n, v in batch.items()}
    final, best = jax.jit(lambda g, ks: jax.lax.scan(step, g, ks))(g0, jax.random.split(prng(1), 30))
    SPACE.validate(final)
    assert_dtypes(final)
    assert float(best[-1]) > float(best[0]) and float(best[-1]) > -0.1, best
