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
