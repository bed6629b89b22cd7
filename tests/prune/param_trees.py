"""The parameter tree that test_transforms.py and test_masked.py prune, and its zero counts per leaf."""

import jax
import jax.numpy as jnp


def param_tree(seed=0):
    """Two dense layers (kernels ``(20, 40)`` and ``(40, 12)``, biases) and a norm scale, from ``seed``."""
    k = jax.random.split(jax.random.key(seed), 3)
    return {
        "a": {"kernel": jax.random.normal(k[0], (20, 40)), "bias": jnp.linspace(-1, 1, 40)},
        "b": {"kernel": 3.0 * jax.random.normal(k[1], (40, 12)), "bias": jnp.ones(12)},
        "norm": {"scale": jnp.ones(12)},
    }


def zero_counts(tree) -> dict[str, int]:
    """``{keystr(path): number of zero entries}`` for every leaf of ``tree``."""
    leaves = jax.tree_util.tree_leaves_with_path(tree)
    return {jax.tree_util.keystr(p): int((x == 0).sum()) for p, x in leaves}
