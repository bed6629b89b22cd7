"""Search spaces: gene validation, sampling, validate, encode/decode and the unit cube.

Compiles dominate this file's time, so tests share one space and one batch
size and build inputs with numpy.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from genomes import SPACE, N, as_numpy, assert_batches_equal, assert_dtypes, prng

from hamjax.search.space import Choice, Float, Int, Space

VALUES = {"lr": 3e-4, "dropout": 0.1, "width": 128, "depth": 4, "act": "gelu", "opt": "sgd"}


# ---------------------------------------------------------------- space construction


@pytest.mark.parametrize(
    ("genes", "match"),
    [
        ({}, "non-empty"),
        ({"w": Int(5, 2)}, "gene 'w': low must be <= high"),
        ({"x": Float(1.0, 0.5)}, "gene 'x': low must be <= high"),
        ({"lr": Float(0.0, 1.0, log=True)}, "gene 'lr': a log gene needs low > 0"),
        ({"lr": Float(-1.0, 1.0, log=True)}, "gene 'lr': a log gene needs low > 0"),
        ({"act": Choice(())}, "gene 'act': Choice needs a non-empty"),
        ({"act": Choice(([1], [2]))}, "gene 'act': Choice options must be hashable"),
        ({"act": Choice(("a", "a"))}, "gene 'act': Choice options must be distinct"),
        ({"x": Float(0.0, math.inf)}, "gene 'x': high must be a finite number"),
        ({"x": Float(0.0, 1e39)}, "gene 'x': high must be a finite number within float32"),
        ({"lr": Float(1e-50, 1.0, log=True)}, r"gene 'lr': a log gene needs low > 0 \(as a float32\)"),
        ({"n": Int(0, 2.5)}, "gene 'n': high must be an int"),
        ({"n": Int(-(2**31), 2**31 - 2)}, "gene 'n': high - low must fit in int32"),
        ({"n": (0, 3)}, "gene 'n': expected Int, Float or Choice"),
    ],
)
def test_space_rejects_bad_genes(genes, match):
    with pytest.raises(ValueError, match=match):
        Space(genes)


def test_space_is_ordered_hashable_and_accepts_list_options():
    a = Space({"b": Int(0, 1), "a": Choice(["x", "y"])})
    assert a.names == ("b", "a") and a.genes["a"].options == ("x", "y") and len(a) == 2
    assert a == Space({"b": Int(0, 1), "a": Choice(("x", "y"))}) and hash(a) == hash(Space(a.genes))
    assert a != Space({"a": Choice(("x", "y")), "b": Int(0, 1)})


# ---------------------------------------------------------------- sample / validate / encode / decode


def test_sample_is_within_bounds_typed_and_deterministic(batch):
    g = SPACE.sample(prng(0), N)
    assert_dtypes(g)
    assert all(v.shape == (N,) for v in g.values())
    SPACE.validate(g)
    assert_batches_equal(as_numpy(g), batch)
    assert not np.array_equal(batch["lr"], SPACE.sample(prng(1), N)["lr"])
    # Every value of the small discrete genes appears, and the extremes of the wide one are reached.
    assert set(batch["depth"].tolist()) == {1, 2, 3, 4}
    assert set(batch["act"].tolist()) == {0, 1, 2} and set(batch["opt"].tolist()) == {0, 1}
    assert batch["width"].min() < 20 and batch["width"].max() > 500
    assert batch["dropout"].min() >= 0.0 and batch["dropout"].max() <= 0.5


def test_log_gene_is_log_uniform(batch):
    x = np.log10(batch["lr"].astype(np.float64))
    # log10(lr) is uniform on [-5, -1]: each decade holds a quarter (binomial sd 0.014 at N = 1024).
    counts = np.histogram(x, bins=4, range=(-5, -1))[0] / N
    np.testing.assert_allclose(counts, 0.25, atol=0.05)
    assert abs(x.mean() - (-3.0)) < 0.15  # sd of the mean: 1.15 / 32


@pytest.mark.parametrize(
    ("gene", "value", "match"),
    [
        ("width", 513, r"gene 'width' has value 513 at member 1; allowed: integers in \[8, 512\]"),
        ("dropout", np.nan, r"gene 'dropout' has value nan .*finite floats in \[0.0, 0.5\]"),
        ("dropout", 0.75, r"gene 'dropout' has value 0.75"),
        ("act", 3, r"gene 'act' has value 3 .*integers in \[0, 2\] \(indices of \('relu', 'gelu', 'silu'\)\)"),
        ("opt", -1, r"gene 'opt' has value -1"),
        ("depth", 2.5, r"gene 'depth' has value 2.5"),
    ],
)
def test_validate_names_the_gene_value_and_range(batch, gene, value, match):
    g = {n: v[:3].copy() for n, v in batch.items()}
    g[gene] = g[gene].astype(np.float64)
    g[gene][1] = value
    with pytest.raises(ValueError, match="genome outside its search space: " + match):
        SPACE.validate(g)


def test_validate_checks_keys_shapes_and_concreteness(batch):
    g = {n: v[:3] for n, v in batch.items()}
    with pytest.raises(ValueError, match=r"missing \['opt'\], extra \['optimizer'\]"):
        SPACE.validate({**{n: v for n, v in g.items() if n != "opt"}, "optimizer": g["opt"]})
    with pytest.raises(ValueError, match="gene 'depth': length 2 differs from the batch length 3"):
        SPACE.validate({**g, "depth": g["depth"][:2]})
    with pytest.raises(ValueError, match=r"gene 'lr': expected a 1-D \(N,\) array, got shape \(3, 1\)"):
        SPACE.validate({**g, "lr": g["lr"][:, None]})
    with pytest.raises(ValueError, match="genomes must be a mapping"):
        SPACE.validate([1, 2])
    with pytest.raises(TypeError, match="concrete"):
        jax.jit(SPACE.validate)(g)
    # Integral floats are accepted for int genes, and float32-rounded bounds for float genes.
    SPACE.validate({**g, "depth": np.array([1.0, 4.0, 2.0]), "dropout": np.float32([0.5, 0.0, 0.5])})


def test_encode_decode_round_trip(batch):
    g = SPACE.encode(VALUES)
    assert_dtypes(g)
    assert g["act"].tolist() == [1] and g["width"].shape == (1,)
    back = SPACE.decode(g, 0)
    assert list(back) == list(VALUES)
    assert {k: back[k] for k in ("width", "depth", "act", "opt")} == {
        k: VALUES[k] for k in ("width", "depth", "act", "opt")
    }
    assert math.isclose(back["lr"], 3e-4, rel_tol=1e-6) and math.isclose(back["dropout"], 0.1, rel_tol=1e-6)
    assert isinstance(back["width"], int) and isinstance(back["lr"], float) and back["act"] == "gelu"
    for i in range(5):
        assert_batches_equal(
            as_numpy(SPACE.encode(SPACE.decode(batch, i))), {n: v[i : i + 1] for n, v in batch.items()}
        )
    assert SPACE.decode(batch, -1) == SPACE.decode(batch, N - 1)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"act": "tanh"}, r"gene 'act': 'tanh' is not one of the options"),
        ({"width": 4}, r"gene 'width' has value 4"),
        ({"width": 8.0}, r"gene 'width': expected an int"),
        ({"lr": 1.0}, r"gene 'lr' has value 1.0"),
    ],
)
def test_encode_rejects_values_outside_the_space(change, match):
    with pytest.raises(ValueError, match=match):
        SPACE.encode(VALUES | change)


def test_encode_and_decode_reject_bad_arguments(batch):
    with pytest.raises(ValueError, match="values must map exactly the genes"):
        SPACE.encode({"lr": 1e-3})
    with pytest.raises(ValueError, match=f"i must index a member of the batch of {N}, got {N}"):
        SPACE.decode(batch, N)


def test_unit_round_trip(batch):
    u = SPACE.to_unit(batch)
    assert u.shape == (N, len(SPACE)) and u.dtype == jnp.float32
    assert float(u.min()) >= 0.0 and float(u.max()) <= 1.0
    back = as_numpy(SPACE.from_unit(u))
    assert_dtypes(back)
    for name in ("width", "depth", "act", "opt"):
        np.testing.assert_array_equal(back[name], batch[name], err_msg=name)
    np.testing.assert_allclose(back["lr"], batch["lr"], rtol=1e-5)
    np.testing.assert_allclose(back["dropout"], batch["dropout"], rtol=1e-5, atol=1e-7)
    # Corners map to the bounds; a log gene's midpoint is the geometric mean; u is clipped into [0, 1].
    corners = np.asarray(u).copy()
    corners[:4] = [[0.0] * 6, [1.0] * 6, [0.5] * 6, [-3.0] * 3 + [7.0] * 3]
    c = as_numpy(SPACE.from_unit(corners))
    assert c["width"][:4].tolist() == [8, 512, 260, 8] and c["act"][:4].tolist() == [0, 2, 1, 2]
    np.testing.assert_allclose(c["lr"][:4], [1e-5, 1e-1, 1e-3, 1e-5], rtol=1e-5)
    with pytest.raises(ValueError, match=r"u must have shape \(N, 6\)"):
        SPACE.from_unit(np.zeros((3, 5)))


def test_from_unit_of_uniform_points_is_uniform(batch):
    u = np.random.default_rng(0).random((N, len(SPACE)), dtype=np.float32)
    g = as_numpy(SPACE.from_unit(u))
    np.testing.assert_allclose(np.bincount(g["act"], minlength=3) / N, 1 / 3, atol=0.05)
    np.testing.assert_allclose(np.bincount(g["depth"], minlength=5)[1:] / N, 1 / 4, atol=0.05)
