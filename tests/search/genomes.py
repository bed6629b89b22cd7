"""The search space and genome-batch helpers shared by test_space.py and test_evolution.py.

Compiles dominate those files' time, so they share one space and one batch size.
"""

import jax
import jax.numpy as jnp
import numpy as np

from hamjax.search.space import Choice, Float, Int, Space

SPACE = Space(
    {
        "lr": Float(1e-5, 1e-1, log=True),
        "dropout": Float(0.0, 0.5),
        "width": Int(8, 512),
        "depth": Int(1, 4),
        "act": Choice(("relu", "gelu", "silu")),
        "opt": Choice(("adam", "sgd")),
    }
)
N = 1024


def prng(seed=0):
    return jax.random.key(seed)


def as_numpy(tree):
    return jax.tree.map(np.asarray, tree)


def assert_batches_equal(a, b):
    assert set(a) == set(b)  # jit returns dicts with sorted keys: genome batches are unordered
    for n in a:
        assert np.asarray(a[n]).dtype == np.asarray(b[n]).dtype, n
        np.testing.assert_array_equal(a[n], b[n], err_msg=n)


def assert_dtypes(genomes, space=SPACE):
    assert set(genomes) == set(space.names)
    for name, gene in space.genes.items():
        assert genomes[name].dtype == (jnp.float32 if isinstance(gene, Float) else jnp.int32), name
