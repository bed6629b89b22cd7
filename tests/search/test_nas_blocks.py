import jax
import jax.numpy as jnp
import numpy as np

from hamjax.search import nas, nas_blocks


def test_nas_reexports_the_activation_names():
    assert nas.ACTIVATIONS is nas_blocks.ACTIVATIONS and set(nas_blocks.ACTIVATION_FNS) == set(nas.ACTIVATIONS)


def test_depthwise_conv_equals_grouped_lax_conv():
    rng = np.random.default_rng(0)
    u = jnp.asarray(rng.normal(size=(2, 16, 6)), jnp.float32)
    p = {"w_in": jnp.eye(6), "kernel": jnp.asarray(rng.normal(size=(3, 3, 6)), jnp.float32), "w_out": jnp.eye(6)}
    want = jax.lax.conv_general_dilated(
        u.reshape(2, 4, 4, 6),
        p["kernel"][:, :, None, :],
        (1, 1),
        "SAME",
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=6,
    )
    got = nas_blocks.conv(p, u, lambda h: h, None, (4, 4))
    np.testing.assert_allclose(got, want.reshape(2, 16, 6), atol=1e-5)


def test_select_activation_picks_by_index():
    h = jnp.linspace(-2.0, 2.0, 7)
    for i, name in enumerate(nas_blocks.ACTIVATIONS):
        np.testing.assert_allclose(nas_blocks.select_activation(jnp.asarray(i))(h), nas_blocks.ACTIVATION_FNS[name](h))


def test_normals_are_consecutive_slices_of_one_draw():
    key = jax.random.key(3)
    normal = nas_blocks.Normals(key, 10)
    a, b = normal((2, 3), 1.0), normal((4,), 0.5)
    assert normal.done()
    flat = jax.random.normal(key, (10,), jnp.float32)
    np.testing.assert_array_equal(a, flat[:6].reshape(2, 3))
    np.testing.assert_array_equal(b, flat[6:] * 0.5)


def test_layer_norm_params_start_as_the_identity_affine():
    p = nas_blocks.layer_norm_params(4)
    x = jnp.arange(8.0).reshape(1, 2, 4)
    assert p["scale"].dtype == jnp.float32 and p["bias"].shape == (4,)
    out = nas_blocks.layer_norm(p, x)
    np.testing.assert_allclose(out.mean(-1), 0.0, atol=1e-6)
