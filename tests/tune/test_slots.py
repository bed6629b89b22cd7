import jax.numpy as jnp
import numpy as np

from hamjax.search.population import Population
from hamjax.tune import slots


def states():
    trainer = Population(lambda p, x: x @ p["w"])
    a = trainer.init({"w": jnp.zeros((2, 3, 2))}, {"learning_rate": jnp.asarray([0.1, 0.2])})
    b = trainer.init({"w": jnp.ones((1, 3, 2))}, {"learning_rate": jnp.asarray([0.5])})
    return a, b


def test_concat_repeat_scatter():
    a, b = states()
    grown = slots.concat(a, slots.repeat(b, 2))
    np.testing.assert_allclose(grown.hparams["learning_rate"], [0.1, 0.2, 0.5, 0.5])
    assert grown.params["w"].shape == (4, 3, 2) and grown.opt_state.hyperparams["learning_rate"].shape == (4,)
    count = int(a.count)
    placed = slots.scatter(a, np.asarray([1]), b)  # a is donated
    np.testing.assert_allclose(placed.hparams["learning_rate"], [0.1, 0.5])
    np.testing.assert_array_equal(placed.params["w"][:, 0, 0], [0.0, 1.0])
    assert int(placed.count) == count


def test_scatter_drops_rows_aimed_out_of_range():
    a, b = states()
    both = slots.concat(b, b)
    placed = slots.scatter(a, np.asarray([0, 2]), both)  # the second row is padding
    np.testing.assert_allclose(placed.hparams["learning_rate"], [0.5, 0.2])


def test_bucket_live_slots():
    bucket = slots.Bucket(32)
    assert bucket.live == [] and bucket.state is None
    bucket.slots = [{"trial": 0}, None, {"trial": 2}]
    assert bucket.live == [0, 2]
