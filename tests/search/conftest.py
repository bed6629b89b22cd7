import pytest
from genomes import SPACE, N, as_numpy, prng


@pytest.fixture(scope="module")
def batch():
    """A genome batch of the shared space, as numpy arrays."""
    return as_numpy(SPACE.sample(prng(0), N))
