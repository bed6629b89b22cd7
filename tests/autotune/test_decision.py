"""hamjax.autotune.decision: one decision of the space, recipe keys and storage keys."""

import numpy as np

from hamjax import recipes
from hamjax.autotune.decision import Decision, key, storage_key


def _recipe(*steps):
    return recipes.validate({"name": "r", "steps": list(steps)})


def test_a_continuous_decision_rounds_clips_and_draws_on_its_grid():
    d = Decision("prune.sparsity", low=0.1, high=0.9, resolution=0.01, default=0.5)
    assert d.continuous and d.clip(0.934) == 0.9 and d.clip(0.0) == 0.1 and d.clip(0.456) == 0.46
    assert d.accepts(0.46) and not d.accepts(0.465) and not d.accepts(1) and not d.accepts(0.95)
    draws = [d.uniform(np.random.default_rng(s)) for s in range(20)]
    assert all(d.accepts(v) for v in draws)


def test_a_discrete_decision_accepts_its_choices_only_with_their_type():
    d = Decision("steps.prune", choices=(True, False), default=False)
    assert not d.continuous and d.accepts(True) and not d.accepts(1)  # 1 == True, but not a bool
    assert {d.uniform(np.random.default_rng(s)) for s in range(20)} == {True, False}


def test_keys_ignore_names_and_written_defaults_and_storage_keys_ignore_training():
    a = _recipe({"kind": "prune", "sparsity": 0.5, "finetune_epochs": 1}, {"kind": "quantize"})
    b = _recipe({"kind": "prune", "sparsity": 0.5, "finetune_epochs": 30, "learning_rate": 2e-3}, {"kind": "quantize"})
    c = _recipe({"kind": "prune", "sparsity": 0.5, "finetune_epochs": 1}, {"kind": "quantize", "method": "dynamic"})
    d = _recipe({"kind": "prune", "sparsity": 0.6, "finetune_epochs": 1}, {"kind": "quantize"})
    e = _recipe({"kind": "prune", "sparsity": 0.5, "finetune_epochs": 1}, {"kind": "quantize", "skip": "['w']"})
    assert key(a) != key(b) and key(a) != key(c)
    assert storage_key(a) == storage_key(b) == storage_key(c)  # epochs, rate, quantize method: same stored size
    assert storage_key(a) != storage_key(d) and storage_key(a) != storage_key(e)  # a deeper cut, a float layer
    renamed = recipes.validate({**a.to_dict(), "name": "other"})
    assert key(renamed) == key(a) and storage_key(renamed) == storage_key(a)
