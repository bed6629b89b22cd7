"""A supernet, configs and hand-made histories shared by test_proposals.py and test_engine.py."""

import jax
import numpy as np

from hamjax.search import engine, nas

TINY = dict(patch_size=4, hidden_size=16, max_layers=2, widths=(8, 16), num_heads=2)
SN = nas.SupernetConfig(input_shape=(8, 8, 1), num_classes=10, **TINY)  # the digits supernet, for runs without data
LATENCY = ("accuracy", "params", "latency")
INF, NAN = float("inf"), float("nan")


def supernet_of(ds):
    return nas.SupernetConfig(input_shape=tuple(ds.input_shape), num_classes=ds.num_classes, **TINY)


def search_config(**kw):
    base = dict(generations=3, population_size=4, steps=10, batch_size=64, sample_size=2, eval_rows=120)
    return engine.SearchConfig(**{**base, **kw})


def made_history(n, *, seed=0, accuracies=None):
    """``n`` hand-made candidates of ``SN`` with accuracies (every fifth diverged) and fake latencies."""
    space = nas.space(SN)
    genomes = space.sample(jax.random.key(seed), n)
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        values = nas.decode(SN, {k: genomes[k][i] for k in space.names})
        size = nas.param_count(SN, values)
        acc = accuracies[i] if accuracies is not None else (float(rng.uniform(0.1, 0.9)) if i % 5 else -INF)
        out.append(engine.Candidate(0, values, acc, size, nas.describe(values), size / 1000))
    return out
