import os

import jax
import pytest
from postgres_server import postgresql_server, postgresql_url  # noqa: F401 (fixtures every folder may use)

# Strict numerics, as equinox's tests run (STYLE.md): no implicit rank or dtype promotion.
jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_numpy_dtype_promotion", "strict")
os.environ.setdefault("HAMJAX_TEST", "1")
# `hamjax optimize` keeps compiled programs in the user's cache folder by default; tests (and the CLI runs in
# subprocesses they start) keep none unless a test names a temporary folder.
os.environ.setdefault("HAMJAX_COMPILE_CACHE", "")


@pytest.fixture(scope="session")
def digits():
    from hamjax import data

    return data.load("digits", seed=0)


@pytest.fixture(scope="session")
def mnist():
    from hamjax import data

    return data.load("mnist", seed=0)
