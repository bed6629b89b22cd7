import re
import warnings

import numpy as np
import pytest

from hamjax import data
from hamjax.data import Split, check_dataset, check_inputs, check_labels, check_split, describe_value


def _toy():
    return data.from_arrays(np.ones((20, 3), np.float32), np.arange(20) % 2, seed=0)


def test_describe_value_names_containers_and_types():
    assert describe_value({"x": 1, "y": 2}) == "a dict with keys ['x', 'y']"
    assert describe_value((1, 2)) == "a tuple of 2 items"
    assert describe_value("abc") == "str 'abc'"
    assert describe_value(3) == "int"


def test_check_inputs_converts_and_refuses_non_finite():
    x = np.ones((2, 3), np.float32)
    assert check_inputs("w", "x", x, copy=False) is x
    assert check_inputs("w", "x", x) is not x
    assert check_inputs("w", "x", np.ones((2, 3), np.uint8)).dtype == np.float32  # 0/1: no unscaled warning
    with pytest.raises(
        ValueError, match=re.escape("w: x holds 1 non-finite values (NaN or inf) of 6; expected finite")
    ):
        check_inputs("w", "x", np.array([[1.0, 2.0, np.inf], [0.0, 0.0, 0.0]]))
    with pytest.raises(ValueError, match=re.escape("w: x must have at least 2 dims (examples, *input_shape)")):
        check_inputs("w", "x", np.ones(3))


def test_unscaled_pixels_warn_and_scaled_or_other_inputs_do_not():
    pixels = np.random.default_rng(0).integers(0, 256, (4, 8, 8, 1))
    with pytest.warns(data.UnscaledInputsWarning, match=r"fit: dataset\.train\.x looks like unscaled pixel values"):
        check_inputs("fit", "dataset.train.x", pixels.astype(np.uint8))
    with pytest.warns(data.UnscaledInputsWarning, match=r"whole numbers in \[0, 255\], dtype float32.*/ 255"):
        check_inputs("fit", "x", pixels.astype(np.float32))
    with pytest.warns(data.UnscaledInputsWarning, match="dtype uint8"):
        check_inputs("fit", "x", pixels.reshape(4, 64).astype(np.uint8))  # flat uint8 images too
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_inputs("fit", "x", pixels.astype(np.float32) / 255)
        check_inputs("fit", "x", np.ones((4, 8, 8), np.uint8))  # binary images
        check_inputs("fit", "x", pixels.reshape(4, 64).astype(np.float32))  # flat features, not images
        check_inputs("fit", "x", pixels.astype(np.float32) - 128)  # centred
        check_inputs("fit", "x", pixels.astype(np.float32) + 0.5)  # not whole numbers
    with pytest.warns(data.UnscaledInputsWarning, match="from_arrays: x"):
        data.from_arrays(pixels.astype(np.uint8).repeat(5, 0), np.arange(20) % 2)


def test_check_labels_refuses_floats_negatives_and_labels_out_of_range():
    assert check_labels("w", "y", np.array([0, 2]), num_classes=3).tolist() == [0, 2]
    with pytest.raises(ValueError, match=re.escape("w: y must hold integer class labels, got dtype float32 (whole")):
        check_labels("w", "y", np.array([0.0, 1.0], np.float32))
    with pytest.raises(ValueError, match=re.escape("w: y holds label -1 at index 1; expected labels >= 0")):
        check_labels("w", "y", np.array([0, -1]))
    with pytest.raises(
        ValueError, match=re.escape("w: y holds label 3 at index 0; expected labels in [0, 3) for num_classes=3")
    ):
        check_labels("w", "y", np.array([3, 0]), num_classes=3)
    with pytest.raises(ValueError, match=re.escape("expected labels in [0, 2) for the model's 2 logits")):
        check_labels("w", "y", np.array([2]), num_classes=2, of="the model's 2 logits")


def test_check_split_needs_equal_lengths_and_examples():
    with pytest.raises(ValueError, match=re.escape("w: x and y must have the same length, got 3 and 2")):
        check_split("w", "x", "y", np.ones((3, 2)), np.arange(2))
    with pytest.raises(ValueError, match=re.escape("w: x and y hold no examples; expected at least 1")):
        check_split("w", "x", "y", np.ones((0, 2)), np.zeros(0, np.int32))


def test_check_dataset_names_the_split_and_the_array():
    ds = _toy()
    check_dataset("fit", "dataset", ds)
    with pytest.raises(
        ValueError,
        match=re.escape(
            "fit: dataset must be a hamjax.data.Dataset, got a tuple of 2 items; make one with hamjax.data.from_arrays(x, y)"
        ),
    ):
        check_dataset("fit", "dataset", (ds.train.x, ds.train.y))
    with pytest.raises(
        ValueError, match=re.escape("fit: dataset must be a hamjax.data.Dataset, got a dict with keys ['x', 'y']")
    ):
        check_dataset("fit", "dataset", {"x": ds.train.x, "y": ds.train.y})
    bad = ds._replace(val=Split(ds.val.x, ds.val.y + 1))
    with pytest.raises(ValueError, match=re.escape("fit: dataset.val.y holds label 2 at index")):
        check_dataset("fit", "dataset", bad)
    with pytest.raises(ValueError, match=re.escape("for dataset.num_classes=2")):
        check_dataset("fit", "dataset", bad)
    with pytest.raises(
        ValueError, match=re.escape("fit: dataset.val must be a hamjax.data.Split, got a tuple of 2 items")
    ):
        check_dataset("fit", "dataset", ds._replace(val=(ds.val.x, ds.val.y)))
    # the test split is checked only when asked for
    empty_test = ds._replace(test=Split(ds.test.x[:0], ds.test.y[:0]))
    check_dataset("fit", "dataset", empty_test)
    with pytest.raises(ValueError, match=re.escape("fit: dataset.test.x and dataset.test.y hold no examples")):
        check_dataset("fit", "dataset", empty_test, splits=("test",))
    # a tighter bound, such as the model's logit count
    with pytest.raises(ValueError, match=re.escape("expected labels in [0, 1) for the model's 1 logits")):
        check_dataset("fit", "dataset", ds, num_classes=1, of="the model's 1 logits")
