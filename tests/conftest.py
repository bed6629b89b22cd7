import os

import jax
import pytest

# Strict numerics, as equinox's tests run (STYLE.md): no implicit rank or dtype promotion.
jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_numpy_dtype_promotion", "strict")
os.environ.setdefault("HAMJAX_TEST", "1")


@pytest.fixture(scope="session")
def digits():
    from hamjax import data

    return data.load("digits", seed=0)


@pytest.fixture(scope="session")
def mnist():
    from hamjax import data

    return data.load("mnist", seed=0)
