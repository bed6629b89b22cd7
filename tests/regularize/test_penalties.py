import jax
import jax.numpy as jnp
import numpy as np
import pytest
from reference_models import plain_mlp, random_model

from hamjax import regularize


def tree():
    """A kernel, a bias, an embedding table and batch statistics: only the kernel is selected by default."""
    return {
        "dense": {"kernel": jnp.array([[1.0, -2.0], [0.5, 0.0]]), "bias": jnp.array([10.0, -10.0])},
        "embedding": jnp.full((3, 2), 7.0),
        "batch_stats": {"w": jnp.full((2, 2), 5.0)},
    }


def test_values_on_known_arrays():
    p = tree()
    assert float(regularize.l1(p)) == pytest.approx(3.5)
    assert float(regularize.l2(p)) == pytest.approx(0.5 * (1 + 4 + 0.25))
    assert float(regularize.elastic_net(p, l1=0.1, l2=2.0)) == pytest.approx(0.35 + 2 * 2.625)
    assert float(regularize.elastic_net(p)) == 0.0
    assert regularize.l1(p).dtype == jnp.float32


def test_filter_selects_the_leaves():
    p = tree()
    biases = lambda path, leaf: jax.tree_util.keystr(path).endswith("['bias']")  # noqa: E731
    assert float(regularize.l1(p, filter=biases)) == pytest.approx(20.0)
    assert float(regularize.l2(p, filter=biases)) == pytest.approx(100.0)
    everything = lambda path, leaf: True  # noqa: E731
    assert float(regularize.l1(p, filter=everything)) == pytest.approx(3.5 + 20 + 42 + 20)
    with pytest.raises(ValueError, match="l1: filter must be a callable"):
        regularize.l1(p, filter="kernels")
    with pytest.raises(ValueError, match="elastic_net: filter selects no leaf"):
        regularize.elastic_net(p, l1=1.0, filter=lambda path, leaf: False)


def test_bf16_leaves_are_summed_in_float32():
    p = {"w": jnp.full((4, 4), 0.1, jnp.bfloat16)}
    assert regularize.l2(p).dtype == jnp.float32
    assert float(regularize.l1(p)) == pytest.approx(16 * float(jnp.bfloat16(0.1)), rel=1e-6)


def test_gradients_are_sign_and_weight_at_kernels_only():
    p = tree()
    g1 = jax.grad(regularize.l1)(p)
    np.testing.assert_array_equal(g1["dense"]["kernel"], np.sign(p["dense"]["kernel"]))
    np.testing.assert_array_equal(g1["dense"]["bias"], 0.0)
    g2 = jax.grad(regularize.l2)(p)
    np.testing.assert_array_equal(g2["dense"]["kernel"], p["dense"]["kernel"])
    np.testing.assert_array_equal(g2["embedding"], 0.0)


def test_jit_and_vmap_over_coefficients():
    p = tree()
    cs = jnp.array([0.0, 0.5, 2.0])
    batched = jax.jit(jax.vmap(lambda a, b: regularize.elastic_net(p, l1=a, l2=b)))(cs, cs[::-1])
    loop = [float(regularize.elastic_net(p, l1=float(a), l2=float(b))) for a, b in zip(cs, cs[::-1], strict=True)]
    np.testing.assert_allclose(batched, loop, rtol=1e-6)


def test_nnx_variables_and_plain_model():
    _, _, variables = random_model("cnn", input_shape=(8, 8, 1), channels=(4, 8), dense=(16,))
    kernels = [v for path, v in jax.tree_util.tree_leaves_with_path(variables) if path[-1].key == "kernel"]
    assert len(kernels) == 4  # two convolutions, one dense layer, the head
    expected = sum(float(jnp.abs(k).sum()) for k in kernels)
    assert float(regularize.l1(variables)) == pytest.approx(expected, rel=1e-5)
    _, params = plain_mlp()
    expected = 0.5 * float((params["w1"] ** 2).sum() + (params["w2"] ** 2).sum())
    assert float(regularize.l2(params)) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("bad", [-1.0, float("nan"), "0.1"])
def test_bad_coefficients(bad):
    with pytest.raises(ValueError, match="elastic_net: l2 must be a finite number >= 0"):
        regularize.elastic_net(tree(), l2=bad)
