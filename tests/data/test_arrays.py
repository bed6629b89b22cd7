"""Tests for hamjax.data.arrays: from_arrays and load_npz, their splits and every refusal."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hamjax
from hamjax import data


def _arrays(n: int = 200, classes: int = 4, shape=(6, 6, 1), seed: int = 0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    # Inputs that encode their row, so that rows can be followed through the cut.
    x = rng.random((n, *shape), dtype=np.float32)
    x.reshape(n, -1)[:, 0] = np.arange(n)
    return x, y


def _rows(split: data.Split) -> list[int]:
    return split.x.reshape(len(split.y), -1)[:, 0].astype(int).tolist()


# --------------------------------------------------------------------------- splits


def test_cut_sizes_dtypes_and_no_overlap():
    x, y = _arrays()
    ds = data.from_arrays(x, y, seed=0)
    assert isinstance(ds, data.Dataset)
    assert (ds.name, ds.num_classes, ds.input_shape) == ("arrays", 4, (6, 6, 1))
    assert [len(s.y) for s in (ds.train, ds.val, ds.test)] == [140, 20, 40]
    rows = [set(_rows(s)) for s in (ds.train, ds.val, ds.test)]
    assert not rows[0] & rows[1] and not rows[0] & rows[2] and not rows[1] & rows[2]
    assert rows[0] | rows[1] | rows[2] == set(range(200))
    for split in (ds.train, ds.val, ds.test):
        assert split.x.dtype == np.float32 and split.y.dtype == np.int32
        np.testing.assert_array_equal(split.y, y[_rows(split)])  # rows stay paired with their labels
        np.testing.assert_array_equal(split.x, x[_rows(split)])
        np.testing.assert_array_equal(np.bincount(split.y), [len(split.y) // 4] * 4)  # stratified


def test_cut_is_deterministic_in_seed():
    x, y = _arrays()
    a, b, c = data.from_arrays(x, y, seed=3), data.from_arrays(x, y, seed=3), data.from_arrays(x, y, seed=4)
    for split_a, split_b in zip(a[1:4], b[1:4], strict=True):
        np.testing.assert_array_equal(split_a.x, split_b.x)
        np.testing.assert_array_equal(split_a.y, split_b.y)
    assert set(_rows(a.test)) != set(_rows(c.test))


def test_unstratified_cut_and_other_fractions():
    x, y = _arrays(n=100, classes=2)
    ds = data.from_arrays(x, y, val_fraction=0.25, test_fraction=0.05, stratify=False, seed=1)
    assert [len(s.y) for s in (ds.train, ds.val, ds.test)] == [70, 25, 5]
    assert sorted(_rows(ds.train) + _rows(ds.val) + _rows(ds.test)) == list(range(100))


def test_given_splits_are_kept_and_only_the_missing_one_is_cut():
    x, y = _arrays(n=100)
    xv, yv = _arrays(n=12, seed=1)
    ds = data.from_arrays(x, y, val=(xv, yv), test_fraction=0.3, name="mine")
    assert ds.name == "mine"
    np.testing.assert_array_equal(ds.val.x, xv)
    np.testing.assert_array_equal(ds.val.y, yv)
    assert [len(s.y) for s in (ds.train, ds.val, ds.test)] == [70, 12, 30]
    xt, yt = _arrays(n=8, seed=2)
    both = data.from_arrays(x, y, val=[xv, yv], test=(xt, yt))
    np.testing.assert_array_equal(both.train.x, x)  # nothing to cut: training keeps its order
    np.testing.assert_array_equal(both.test.y, yt)


def test_results_do_not_alias_the_callers_arrays():
    x, y = _arrays(n=50)
    xt, yt = _arrays(n=10, seed=2)
    ds = data.from_arrays(x, y, val=(xt, yt), test=(xt, yt))
    ds.train.x[...] = -1.0
    ds.val.y[...] = 0
    assert x.min() >= 0.0 and yt.max() == 3


def test_num_classes_inferred_from_every_split_or_given():
    x, y = _arrays(n=40, classes=3)
    xv, yv = np.ones((2, 6, 6, 1)), np.array([0, 6])
    assert data.from_arrays(x, y, val=(xv, yv)).num_classes == 7
    assert data.from_arrays(x, y, num_classes=10).num_classes == 10


def test_lists_integers_bools_and_uint8_are_converted_unscaled():
    ds = data.from_arrays([[0, 1], [2, 3], [4, 5], [6, 7]], [0, 1, 0, 1], val=([[1, 2]], [1]), test=([[1, 2]], [0]))
    np.testing.assert_array_equal(ds.train.x, np.array([[0, 1], [2, 3], [4, 5], [6, 7]], np.float32))
    assert ds.train.x.dtype == np.float32 and ds.input_shape == (2,)
    images = np.full((20, 4, 4, 1), 255, np.uint8)
    with pytest.warns(data.UnscaledInputsWarning, match="from_arrays: x looks like unscaled pixel values"):
        ds = data.from_arrays(images, np.arange(20) % 2, val_fraction=0.2, test_fraction=0.2)
    assert ds.train.x.dtype == np.float32 and ds.train.x.max() == 255.0  # converted, not rescaled behind one's back
    flags = data.from_arrays(np.ones((20, 3), bool), np.arange(20, dtype=np.uint8) % 2)
    assert flags.train.x.max() == 1.0 and flags.train.y.dtype == np.int32
    low = data.from_arrays(jnp.ones((20, 3), jnp.bfloat16), np.arange(20) % 2)
    assert low.train.x.dtype == np.float32


def test_fit_and_evaluate_take_the_dataset_unchanged():
    x, y = _arrays(n=256, classes=4, shape=(8,))
    x[np.arange(256), y] += 3.0  # learnable: the label's feature stands out

    def apply_fn(params, x):
        h = jax.nn.relu(x @ params["w1"] + params["b1"][None])
        return h @ params["w2"] + params["b2"][None]

    k1, k2 = jax.random.split(jax.random.key(0))
    params = {
        "w1": jax.random.normal(k1, (8, 16)) * 0.3,
        "b1": jnp.zeros(16),
        "w2": jax.random.normal(k2, (16, 4)) * 0.3,
        "b2": jnp.zeros(4),
    }
    ds = data.from_arrays(x, y, seed=0)
    config = hamjax.TrainConfig(epochs=1, batch_size=32, learning_rate=1e-2)
    result = hamjax.fit(apply_fn, params, ds, config, progress=False)
    assert len(result.history) == 1 and result.history[0]["step"] == len(ds.train.y) // 32
    metrics = hamjax.train.evaluate(apply_fn, result.params, ds.test)
    assert 0.0 <= metrics["accuracy"] <= 1.0 and np.isfinite(metrics["loss"])


# --------------------------------------------------------------------------- refusals

X, Y = np.ones((10, 3), np.float32), np.arange(10) % 2


def _nan(shape, where=0):
    a = np.ones(shape, np.float32)
    a.flat[where] = np.nan
    return a


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        ((X, Y[:9]), {}, "from_arrays: x and y must have the same length, got 10 and 9"),
        (
            (X, Y),
            {"val": (X[:5], Y[:4])},
            r"from_arrays: val\[0\] and val\[1\] must have the same length, got 5 and 4",
        ),
        ((X[:0], Y[:0]), {}, "from_arrays: x and y hold no examples; expected at least 1"),
        (
            (X, Y),
            {"test": (X[:0], Y[:0])},
            r"from_arrays: test\[0\] and test\[1\] hold no examples; expected at least 1",
        ),
        ((np.array([[object()]] * 10), Y), {}, "from_arrays: x must hold numbers, got an array of dtype object"),
        ((np.array([["a", "b"]] * 10), Y), {}, "from_arrays: x must hold numbers, got an array of dtype <U1"),
        (
            (np.ones((10, 3), np.complex64), Y),
            {},
            "from_arrays: x must hold real numbers, got an array of dtype complex64",
        ),
        ((_nan((10, 3)), Y), {}, r"from_arrays: x holds 1 non-finite values \(NaN or inf\) of 30; expected finite"),
        (
            (X, Y),
            {"test": (np.full((2, 3), np.inf), [0, 1])},
            r"from_arrays: test\[0\] holds 6 non-finite values \(NaN or inf\) of 6; expected finite",
        ),
        (
            (np.full((10, 3), 1e300), Y),
            {},
            r"from_arrays: x holds values beyond the float32 range \(largest magnitude 1e\+300\)",
        ),
        (
            (np.ones(10), Y),
            {},
            r"from_arrays: x must have at least 2 dims \(examples, \*input_shape\), got shape \(10,\)",
        ),
        ((np.ones((10, 0)), Y), {}, r"from_arrays: x has shape \(10, 0\), whose input shape \(0,\) holds nothing"),
        (
            (X, Y),
            {"val": (np.ones((4, 4)), Y[:4])},
            r"from_arrays: val\[0\] holds inputs of shape \(4,\), but x holds \(3,\); every split needs the same input shape",
        ),
        (
            (X, Y.astype(np.float64)),
            {},
            r"from_arrays: y must hold integer class labels, got dtype float64 \(whole numbers\); "
            r"cast them with y.astype\(np.int32\)",
        ),
        (
            (X, Y + 0.5),
            {},
            "from_arrays: y must hold integer class labels, got dtype float64 with values such as 0.5",
        ),
        (
            (X, np.where(Y == 0, np.nan, 1.0)),
            {},
            "from_arrays: y must hold integer class labels, got dtype float64 with values such as nan",
        ),
        (
            (X, Y.astype(bool)),
            {},
            "from_arrays: y must hold integer class labels 0 .. num_classes - 1, got dtype bool",
        ),
        (
            (X, np.array(["cat"] * 10)),
            {},
            "from_arrays: y must hold integer class labels 0 .. num_classes - 1, got dtype <U3",
        ),
        (
            (X, np.array([0, 1, 2, -1, 0, 1, 2, 0, 1, 2])),
            {},
            "from_arrays: y holds label -1 at index 3; expected labels >= 0",
        ),
        (
            (X, np.array([0, 1, 5, 0, 1, 2, 0, 1, 2, 0])),
            {"num_classes": 3},
            r"from_arrays: y holds label 5 at index 2; expected labels in \[0, 3\) for num_classes=3",
        ),
        (
            (X, Y),
            {"val": (X[:2], [0, 2]), "num_classes": 2},
            r"from_arrays: val\[1\] holds label 2 at index 1; expected labels in \[0, 2\) for num_classes=2",
        ),
        (
            (X, np.eye(2)[Y]),
            {},
            r"from_arrays: y must be 1-D class labels \(examples,\), got shape \(10, 2\); "
            r"for one-hot labels pass y.argmax\(axis=1\)",
        ),
        ((X, Y[:, None]), {}, r"from_arrays: y must be 1-D class labels \(examples,\), got shape \(10, 1\)$"),
        (({"x": X, "y": Y}, Y), {}, r"from_arrays: x must be an array, got a dict with keys \['x', 'y'\]$"),
        (
            ((X, Y), Y),
            {},
            r"from_arrays: x must be an array, got a tuple of 2 items; the \(x, y\) pairs go to val= and test=",
        ),
        ((X, None), {}, "from_arrays: y must be an array, got NoneType"),
        ((X, "labels"), {}, "from_arrays: y must be an array, got str 'labels'"),
        (([[1, 2], [3]], [0, 1]), {}, "from_arrays: x must be an array, got a list of 2 items that numpy cannot stack"),
        ((X, Y), {"val": X}, "from_arrays: val must be an \\(x, y\\) pair of arrays or None, got ndarray"),
        ((X, Y), {"test": {"x": X}}, r"from_arrays: test must be an \(x, y\) pair of arrays or None, got a dict"),
        ((X, Y), {"val": (X, Y, Y)}, r"from_arrays: val must be an \(x, y\) pair .*, got a tuple of 3 items"),
        ((X, Y), {"val_fraction": 1.0}, "from_arrays: val_fraction must be a finite number > 0 and < 1, got 1.0"),
        (
            (X, Y),
            {"val": (X, Y), "test_fraction": -0.2},
            "from_arrays: test_fraction must be a finite number > 0 and < 1, got -0.2",
        ),
        (
            (X, Y),
            {"val_fraction": 0.5, "test_fraction": 0.5},
            r"from_arrays: val_fraction \+ test_fraction must be < 1 to leave training data",
        ),
        ((X[:3], Y[:3]), {}, "from_arrays: val_fraction=0.1 leaves an empty split of the 3 examples"),
        ((X, Y), {"seed": -1}, "from_arrays: seed must be an integer >= 0, got -1"),
        ((X, Y), {"num_classes": 0}, "from_arrays: num_classes must be an integer in \\[1, 2147483647\\], got 0"),
        ((X, Y), {"stratify": "yes"}, "from_arrays: stratify must be True or False, got 'yes'"),
        ((X, Y), {"name": ""}, "from_arrays: name must be a non-empty string, got ''"),
    ],
)
def test_from_arrays_refuses_bad_input_with_one_line(args, kwargs, message):
    with pytest.raises(ValueError, match=f"^{message}") as info:
        data.from_arrays(*args, **kwargs)
    assert "\n" not in str(info.value)


def test_non_finite_bfloat16_inputs_are_named_as_such():
    x = jnp.ones((10, 3), jnp.bfloat16).at[2, 1].set(jnp.inf)
    with pytest.raises(
        ValueError, match=r"^from_arrays: x holds 1 non-finite values \(NaN or inf\) of 30; expected finite$"
    ):
        data.from_arrays(x, Y)


def test_arguments_are_checked_before_the_arrays():
    with pytest.raises(ValueError, match="from_arrays: seed must be"):
        data.from_arrays(None, None, seed=-1)


# --------------------------------------------------------------------------- load_npz


def test_load_npz_with_every_split(tmp_path):
    x, y = _arrays(n=60)
    path = tmp_path / "mine.npz"
    np.savez(path, x_train=x[:40], y_train=y[:40], x_val=x[40:50], y_val=y[40:50], x_test=x[50:], y_test=y[50:])
    ds = data.load_npz(path)
    assert ds.name == "mine" and ds.num_classes == 4 and ds.input_shape == (6, 6, 1)
    np.testing.assert_array_equal(ds.train.x, x[:40])
    np.testing.assert_array_equal(ds.val.y, y[40:50])
    np.testing.assert_array_equal(ds.test.x, x[50:])


def test_load_npz_cuts_what_the_file_lacks_like_from_arrays(tmp_path):
    x, y = _arrays(n=100)
    path = tmp_path / "train_only.npz"
    np.savez_compressed(path, x_train=x, y_train=y)
    ds = data.load_npz(str(path), seed=2, name="n", test_fraction=0.3)
    expected = data.from_arrays(x, y, seed=2, test_fraction=0.3)
    assert ds.name == "n" and [len(s.y) for s in (ds.train, ds.val, ds.test)] == [60, 10, 30]
    for got, want in zip(ds[1:4], expected[1:4], strict=True):
        np.testing.assert_array_equal(got.x, want.x)
        np.testing.assert_array_equal(got.y, want.y)


def _write(path, **arrays):
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        (
            {"x_train": X},
            r"lacks y_train; expected x_train, y_train and optionally x_val, y_val, x_test, y_test "
            r"\(found \['x_train'\]\)",
        ),
        ({"x_val": X, "y_val": Y}, r"lacks x_train, y_train; expected .* \(found \['x_val', 'y_val'\]\)"),
        (
            {"x_train": X, "y_train": Y, "x_test": X},
            r"lacks y_test; expected .* \(found \['x_test', 'x_train', 'y_train'\]\)",
        ),
        (
            {"images": X, "labels": Y},
            r"holds arrays \['images', 'labels'\] that hamjax does not read; expected .* \(found \['images', 'labels'\]\)",
        ),
        ({"x_train": X, "y_train": Y + 0.5}, "y_train must hold integer class labels, got dtype float64"),
        ({"x_train": X, "y_train": Y[:9]}, "x_train and y_train must have the same length, got 10 and 9"),
        ({"x_train": _nan((10, 3)), "y_train": Y}, r"x_train holds 1 non-finite values \(NaN or inf\)"),
        (
            {"x_train": X, "y_train": Y, "x_val": np.ones((2, 5)), "y_val": [0, 1]},
            r"x_val holds inputs of shape \(5,\), but x_train holds \(3,\)",
        ),
        ({"x_train": np.array([[1, None]] * 10), "y_train": Y}, r"array 'x_train' cannot be read without pickle"),
    ],
)
def test_load_npz_names_the_file_and_the_arrays(tmp_path, arrays, message):
    path = _write(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ValueError, match=f"^load_npz: {re.escape(str(path))}:? {message}") as info:
        data.load_npz(path)
    assert "\n" not in str(info.value)


def test_load_npz_refuses_other_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="load_npz: no file '.*missing.npz'"):
        data.load_npz(tmp_path / "missing.npz")
    text = tmp_path / "notes.npz"
    text.write_text("x_train,y_train\n1,0\n")
    with pytest.raises(ValueError, match=f"^load_npz: {re.escape(str(text))} is not an .npz archive of arrays"):
        data.load_npz(text)
    single = tmp_path / "single.npy"
    np.save(single, X)
    with pytest.raises(ValueError, match=r"holds a single array \(.npy\); expected an .npz archive with x_train"):
        data.load_npz(single)
    with pytest.raises(TypeError, match="val"):
        data.load_npz(_write(tmp_path / "ok.npz", x_train=X, y_train=Y), val=(X, Y))
