import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from hamjax.search import selection

DRAWS = 200_000
SIZE = 8


@pytest.fixture(scope="module")
def fitness():
    # Distinct, of both signs, in no particular order.
    return np.random.default_rng(0).normal(0.0, 3.0, SIZE).astype(np.float32)


def _order(f):
    """Positions, 0 = best, ties by lower index, NaN/-inf last: an independent reference."""
    f = np.where(np.isnan(f), -np.inf, np.asarray(f, np.float64))
    order = sorted(range(len(f)), key=lambda i: (-f[i], i))
    position = np.empty(len(f), int)
    position[order] = np.arange(len(f))
    return position


def _assert_matches(picks, expected):
    """Chi-square goodness of fit of the picks against ``expected``; zero-probability members never picked."""
    picks = np.asarray(picks)
    assert picks.dtype == np.int32
    counts = np.bincount(picks, minlength=len(expected))
    expected = np.asarray(expected, np.float64)
    never = expected == 0
    assert counts[never].sum() == 0
    f_exp = expected[~never] / expected[~never].sum() * counts.sum()
    assert stats.chisquare(counts[~never], f_exp).pvalue > 1e-3


SAMPLERS = [
    ("tournament", dict(k=2)),
    ("tournament", dict(k=3, replace=False)),
    ("tournament", dict(k=1)),
    ("roulette", dict()),
    ("rank", dict(pressure=1.5)),
    ("rank", dict(pressure=2.0)),
]


@pytest.mark.parametrize(("method", "kw"), SAMPLERS)
def test_sampling_matches_probabilities(fitness, method, kw):
    picks = getattr(selection, method)(jax.random.key(1), fitness, DRAWS, **kw)
    assert picks.shape == (DRAWS,)
    _assert_matches(picks, selection.probabilities(fitness, method, **kw))


@pytest.mark.parametrize(("method", "kw"), SAMPLERS)
def test_non_finite_members(method, kw):
    f = np.array([1.0, np.nan, -2.0, -np.inf, 0.5, 3.0, np.nan, -1.0], np.float32)
    p = np.asarray(selection.probabilities(f, method, **kw))
    bad = ~np.isfinite(f)
    if method == "roulette":
        assert np.all(p[bad] == 0)
    else:
        # Ranked last, so never more likely than a finite member.
        assert p[bad].max() <= p[~bad].min()
        np.testing.assert_array_equal(np.sort(_order(f)[bad]), [5, 6, 7])
    if method == "tournament" and kw.get("replace", True):
        # A non-finite member wins only if every contestant is non-finite.
        np.testing.assert_allclose(p[bad].sum(), (3 / 8) ** kw["k"], rtol=1e-5)
    _assert_matches(getattr(selection, method)(jax.random.key(2), f, DRAWS, **kw), p)


@pytest.mark.parametrize(("method", "kw"), SAMPLERS)
def test_all_non_finite(method, kw):
    # All tied at -inf: roulette is uniform, the others order the members by index.
    f = np.array([np.nan, -np.inf] * (SIZE // 2), np.float32)
    p = np.asarray(selection.probabilities(f, method, **kw))
    np.testing.assert_allclose(p.sum(), 1.0, rtol=1e-6)
    if method == "roulette":
        np.testing.assert_allclose(p, 1 / SIZE)
    else:
        np.testing.assert_allclose(p, selection.probabilities(np.arange(SIZE, 0, -1.0), method, **kw))
    _assert_matches(getattr(selection, method)(jax.random.key(3), f, DRAWS, **kw), p)


def test_tournament_probabilities_closed_form(fitness):
    position = _order(fitness)
    for k in range(1, SIZE + 1):
        with_replacement = ((SIZE - position) ** k - (SIZE - position - 1) ** k) / SIZE**k
        np.testing.assert_allclose(selection.probabilities(fitness, "tournament", k=k), with_replacement, atol=1e-7)
        without = [math.comb(SIZE - r - 1, k - 1) / math.comb(SIZE, k) for r in position]
        np.testing.assert_allclose(
            selection.probabilities(fitness, "tournament", k=k, replace=False), without, atol=1e-7
        )
    np.testing.assert_allclose(selection.probabilities(fitness, "tournament", k=1), 1 / SIZE)
    strongest = np.asarray(selection.probabilities(fitness, "tournament", k=SIZE))
    best = int(np.argmax(fitness))
    assert strongest[best] == strongest.max() and strongest[best] > 0.6
    np.testing.assert_allclose(
        selection.probabilities(fitness, "tournament", k=SIZE, replace=False), np.eye(SIZE)[best]
    )


def test_ties_go_to_the_lower_index():
    f = np.array([1.0, 2.0, 2.0, 0.0, 2.0, -1.0, 1.0, 0.0], np.float32)
    np.testing.assert_array_equal(selection.elite(f, SIZE), [1, 2, 4, 0, 6, 3, 7, 5])
    np.testing.assert_allclose(selection.probabilities(f, "tournament", k=SIZE, replace=False), np.eye(SIZE)[1])
    for method, kw in SAMPLERS[:2]:
        p = selection.probabilities(f, method, **kw)
        np.testing.assert_allclose(p, selection.probabilities(-np.array([3, 0, 1, 5, 2, 7, 4, 6.0]), method, **kw))
        _assert_matches(getattr(selection, method)(jax.random.key(4), f, DRAWS, **kw), p)


def test_tournament_large_population_probabilities_are_finite():
    f = jnp.arange(2000.0)
    for replace in (True, False):
        p = np.asarray(selection.probabilities(f, "tournament", k=40, replace=replace))
        assert np.all(np.isfinite(p)) and np.all(p >= 0)
        np.testing.assert_allclose(p.sum(), 1.0, rtol=1e-4)


def test_roulette_probabilities_closed_form(fitness):
    assert fitness.min() < 0 < fitness.max()
    low, high = fitness.min(), fitness.max()
    weights = fitness.astype(np.float64) - low + selection.ROULETTE_EPS * (high - low)
    np.testing.assert_allclose(selection.probabilities(fitness, "roulette"), weights / weights.sum(), rtol=1e-5)
    # Shift and positive scale do not change the proportions.
    moved = 7.0 * fitness - 100.0
    np.testing.assert_allclose(
        selection.probabilities(moved, "roulette"), selection.probabilities(fitness, "roulette"), rtol=1e-4
    )
    # Arrays of SIZE members (float32 after sanitize), so one compilation serves every case.
    np.testing.assert_allclose(selection.probabilities(np.full(SIZE, -3.0), "roulette"), 1 / SIZE)
    plus_inf = np.array([0.0, np.inf, 5.0, np.inf, -np.inf, np.nan, 1e30, -1e30])
    np.testing.assert_allclose(selection.probabilities(plus_inf, "roulette"), [0, 0.5, 0, 0.5, 0, 0, 0, 0])
    # A range of 6e38 overflows float32; the weights must not.
    extreme = np.array([-3e38, 3e38, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    weights = np.array([0.0, 6.0, 3.0, 3.0, 3.0, 3.0, 3.0, 3.0]) + 6e-3
    np.testing.assert_allclose(selection.probabilities(extreme, "roulette"), weights / weights.sum(), rtol=1e-5)


def test_rank_probabilities_closed_form(fitness):
    linear_rank = SIZE - 1 - _order(fitness)
    for s in (1.0, 1.25, 1.5, 2.0):
        expected = (2 - s) / SIZE + 2 * linear_rank * (s - 1) / (SIZE * (SIZE - 1))
        p = selection.probabilities(fitness, "rank", pressure=s)
        np.testing.assert_allclose(p, expected, atol=1e-7)
        np.testing.assert_allclose(np.sum(p), 1.0, rtol=1e-6)
    np.testing.assert_allclose(selection.probabilities(fitness, "rank", pressure=1.0), 1 / SIZE)
    hardest = np.asarray(selection.probabilities(fitness, "rank", pressure=2.0))
    assert hardest[int(np.argmin(fitness))] == 0.0
    np.testing.assert_allclose(hardest[int(np.argmax(fitness))], 2 / SIZE)
    np.testing.assert_array_equal(selection.probabilities(jnp.array([4.0]), "rank", pressure=2.0), [1.0])


@pytest.mark.parametrize("method", selection.METHODS)
def test_probabilities_sum_to_one(fitness, method):
    p = selection.probabilities(fitness, method)
    assert p.shape == (SIZE,) and p.dtype == jnp.float32
    np.testing.assert_allclose(np.sum(p), 1.0, rtol=1e-6)


def test_elite():
    f = np.array([0.5, np.nan, 2.0, -np.inf, 0.5, 7.0, -3.0, np.nan], np.float32)
    top = selection.elite(f, SIZE)
    assert top.dtype == jnp.int32
    np.testing.assert_array_equal(top, [5, 2, 0, 4, 6, 1, 3, 7])
    np.testing.assert_array_equal(selection.elite(f, 2), [5, 2])
    assert selection.elite(f, 0).shape == (0,)


def test_population_of_one():
    f = np.array([np.nan], np.float32)
    for method, kw in [
        ("tournament", dict(k=1)),
        ("tournament", dict(k=1, replace=False)),
        ("roulette", {}),
        ("rank", {}),
    ]:
        np.testing.assert_array_equal(selection.probabilities(f, method, **kw), [1.0])
        np.testing.assert_array_equal(getattr(selection, method)(jax.random.key(0), f, 4, **kw), [0, 0, 0, 0])
    np.testing.assert_array_equal(selection.elite(f, 1), [0])


def test_sanitize():
    out = selection.sanitize(jnp.array([1.0, jnp.nan, -jnp.inf, jnp.inf], jnp.bfloat16))
    assert out.dtype == jnp.float32
    np.testing.assert_array_equal(out, [1.0, -np.inf, -np.inf, np.inf])
    np.testing.assert_array_equal(selection.sanitize(np.array([2, 3])), [2.0, 3.0])


CALLS = [
    functools.partial(selection.tournament, k=2),
    functools.partial(selection.tournament, k=3, replace=False),
    selection.roulette,
    functools.partial(selection.rank, pressure=1.5),
]


@pytest.mark.parametrize("select", CALLS)
def test_jit_vmap_and_determinism(fitness, select):
    # DRAWS picks, so that the eager calls reuse the compilations of the sampling tests.
    key = jax.random.key(5)
    eager = select(key, fitness, DRAWS)
    np.testing.assert_array_equal(eager, select(key, fitness, DRAWS))
    assert not np.array_equal(eager, select(jax.random.key(6), fitness, DRAWS))
    keys = jax.random.split(key, 3)
    batched = jax.jit(jax.vmap(lambda k: select(k, fitness, DRAWS)))(keys)
    assert batched.shape == (3, DRAWS) and batched.dtype == jnp.int32
    for i in range(3):
        np.testing.assert_array_equal(batched[i], select(keys[i], fitness, DRAWS))


def test_jit_with_static_arguments(fitness):
    key = jax.random.key(7)
    jitted = jax.jit(selection.tournament, static_argnames=("num", "k", "replace"))
    np.testing.assert_array_equal(jitted(key, fitness, DRAWS, k=2), selection.tournament(key, fitness, DRAWS, k=2))
    np.testing.assert_array_equal(jax.jit(selection.elite, static_argnums=1)(fitness, 3), selection.elite(fitness, 3))
    every = jax.jit(lambda f: [selection.probabilities(f, method, **kw) for method, kw in SAMPLERS])(fitness)
    for (method, kw), p in zip(SAMPLERS, every, strict=True):
        np.testing.assert_allclose(p, selection.probabilities(fitness, method, **kw))


def test_traced_pressure(fitness):
    pressures = jnp.array([1.0, 1.5, 2.0])
    p = jax.vmap(lambda s: selection.probabilities(fitness, "rank", pressure=s))(pressures)
    picks = jax.jit(jax.vmap(lambda s: selection.rank(jax.random.key(0), fitness, DRAWS, pressure=s)))(pressures)
    for i, s in enumerate([1.0, 1.5, 2.0]):
        np.testing.assert_allclose(p[i], selection.probabilities(fitness, "rank", pressure=s), atol=1e-7)
        np.testing.assert_array_equal(picks[i], selection.rank(jax.random.key(0), fitness, DRAWS, pressure=s))


EMPTY, MATRIX, GOOD = np.zeros(0, np.float32), np.zeros((2, 3), np.float32), np.arange(3.0)
KEY = jax.random.key(0)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: selection.tournament(KEY, EMPTY, 2), r"population size must be >= 1, got fitness of shape \(0,\)"),
        (lambda: selection.roulette(KEY, EMPTY, 2), r"population size must be >= 1"),
        (lambda: selection.rank(KEY, EMPTY, 2), r"population size must be >= 1"),
        (lambda: selection.elite(EMPTY, 0), r"population size must be >= 1"),
        (lambda: selection.probabilities(EMPTY, "roulette"), r"population size must be >= 1"),
        (
            lambda: selection.tournament(KEY, MATRIX, 2),
            r"fitness must be a 1-D array of shape \(P,\), got shape \(2, 3\)",
        ),
        (lambda: selection.roulette(KEY, MATRIX, 2), r"1-D array .* got shape \(2, 3\)"),
        (lambda: selection.elite(np.float32(1.0), 1), r"1-D array .* got shape \(\)"),
        (lambda: selection.tournament(KEY, GOOD, 2, k=4), r"tournament: k must be an integer in \[1, 3\], got 4"),
        (
            lambda: selection.probabilities(GOOD, "tournament", k=4),
            r"probabilities: k must be an integer in \[1, 3\], got 4",
        ),
        (lambda: selection.tournament(KEY, GOOD, 2, k=0), r"tournament: k must be an integer in \[1, 3\], got 0"),
        (lambda: selection.tournament(KEY, GOOD, 0), r"num must be an integer >= 1, got 0"),
        (lambda: selection.roulette(KEY, GOOD, 0), r"num must be an integer >= 1, got 0"),
        (lambda: selection.rank(KEY, GOOD, -1), r"num must be an integer >= 1, got -1"),
        (lambda: selection.roulette(KEY, GOOD, 2.5), r"num must be an integer >= 1, got 2.5"),
        (lambda: selection.elite(GOOD, 4), r"elite: n must be an integer in \[0, 3\], got 4"),
        (lambda: selection.elite(GOOD, -1), r"elite: n must be an integer in \[0, 3\], got -1"),
        (
            lambda: selection.rank(KEY, GOOD, 2, pressure=2.5),
            r"rank: pressure must be a finite number >= 1 and <= 2, got 2.5",
        ),
        (
            lambda: selection.rank(KEY, GOOD, 2, pressure=0.5),
            r"rank: pressure must be a finite number >= 1 and <= 2, got 0.5",
        ),
        (
            lambda: selection.probabilities(GOOD, "rank", pressure=2.5),
            r"probabilities: pressure must be a finite number >= 1 and <= 2",
        ),
        (lambda: selection.rank(KEY, GOOD, 2, pressure=jnp.ones(2)), r"pressure must be a scalar, got shape \(2,\)"),
        (lambda: selection.probabilities(GOOD, "best"), r"probabilities: method must be one of .*, got 'best'"),
    ],
)
def test_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_errors_before_tracing():
    with pytest.raises(ValueError, match=r"got shape \(2, 3\)"):
        jax.jit(lambda f: selection.roulette(KEY, f, 2))(MATRIX)
    with pytest.raises(ValueError, match=r"k must be an integer in \[1, 3\], got 4"):
        jax.jit(lambda f: selection.tournament(KEY, f, 2, k=4))(GOOD)
    with pytest.raises(TypeError, match=r"roulette takes no keyword"):
        selection.probabilities(GOOD, "roulette", pressure=1.5)


@settings(max_examples=30, deadline=None)
@given(
    values=st.lists(
        st.one_of(st.floats(width=32), st.sampled_from([np.nan, -np.inf, np.inf])), min_size=SIZE, max_size=SIZE
    ),
    seed=st.integers(0, 2**31 - 1),
    pressure=st.floats(1.0, 2.0),
)
def test_indices_in_range(values, seed, pressure):
    # A fixed shape (that of the sampling tests) keeps this to one compilation per sampler.
    f = np.array(values, np.float32)
    key = jax.random.key(seed)
    for method, kw in [*SAMPLERS[:2], ("roulette", {}), ("rank", dict(pressure=pressure))]:
        picks = getattr(selection, method)(key, f, DRAWS, **kw)
        assert picks.dtype == jnp.int32
        assert int(picks.min()) >= 0 and int(picks.max()) < SIZE
        p = np.asarray(selection.probabilities(f, method, **kw))
        assert np.all(np.isfinite(p)) and np.all(p >= 0)
        np.testing.assert_allclose(p.sum(), 1.0, rtol=1e-5)
        assert np.all(p[np.asarray(picks)] > 0)
    assert sorted(np.asarray(selection.elite(f, SIZE)).tolist()) == list(range(SIZE))
