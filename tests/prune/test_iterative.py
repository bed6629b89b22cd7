"""iterative_prune: prune -> finetune cycles reach exact sparsities and keep accuracy on digits."""

import math

import numpy as np
import pytest
from reference_models import row_token_model

from hamjax import prune
from hamjax.train import TrainConfig, evaluate


def test_iterative_prune_reaches_90_percent_on_digits(digits, nnx_model):
    apply_fn, params = nnx_model
    config = TrainConfig(epochs=5, batch_size=64, learning_rate=4e-3)
    out, masks, history = prune.iterative_prune(apply_fn, params, digits, [0.5, 0.75, 0.9], config)
    assert [h["target_sparsity"] for h in history] == [0.5, 0.75, 0.9]
    layers = prune.layer_sparsities(out["params"])
    assert layers == {
        "['layers'][0]['kernel']": math.floor(0.9 * 4096) / 4096,
        "['layers'][1]['kernel']": math.floor(0.9 * 640) / 640,
    }
    assert history[-1]["sparsity"] == pytest.approx(0.9, abs=1e-3)
    assert history[-1]["val_accuracy"] > 0.85
    assert evaluate(apply_fn, out, digits.val)["accuracy"] == history[-1]["val_accuracy"]
    assert not np.asarray(out["params"]["layers"][0]["bias"] == 0).all()
    prune.check_masks(out["params"], masks)


@pytest.mark.parametrize("method", ["random", "saliency", "global_magnitude", "block"])
def test_iterative_prune_methods_are_exactly_sparse(method, digits, plain_model):
    apply_fn, params = plain_model
    config = TrainConfig(epochs=1, batch_size=128, learning_rate=3e-3)
    filt = (lambda p, x: x.shape == (64, 64)) if method == "block" else None
    out, masks, history = prune.iterative_prune(
        apply_fn, params, digits, [0.5, 0.8], config, method=method, filter=filt
    )
    final = math.floor(0.8 * 256) / 256 if method == "block" else 0.8  # 256 tiles of 4x4
    assert [h["sparsity"] for h in history] == pytest.approx([0.5, final], abs=1e-3)
    assert prune.sparsity_of(out, masks) == pytest.approx(final, abs=1e-3)


def test_iterative_prune_errors(digits, plain_model):
    apply_fn, params = plain_model
    config = TrainConfig(epochs=1, batch_size=128)
    with pytest.raises(ValueError, match=r"iterative_prune: method must be one of \(.*\), got 'nm'"):
        prune.iterative_prune(apply_fn, params, digits, [0.5], config, method="nm")
    with pytest.raises(ValueError, match="at least one target"):
        prune.iterative_prune(apply_fn, params, digits, [], config)
    with pytest.raises(ValueError, match=r"sparsities must be a scalar in \[0, 1\), got 1.2"):
        prune.iterative_prune(apply_fn, params, digits, [0.5, 1.2], config)


def test_iterative_prune_by_default_prunes_the_weights_the_model_uses_not_an_added_pos_table(digits):
    apply_fn, params = row_token_model()
    config = TrainConfig(epochs=1, batch_size=128, learning_rate=1e-3)
    out, masks, _ = prune.iterative_prune(apply_fn, params, digits, [0.5], config)
    assert masks["pos"] is None and not np.any(np.asarray(out["pos"]) == 0)
    assert prune.layer_sparsities(out, masks) == {"['head']": 0.5, "['proj']": 0.5}
