"""Tests for hamjax.footprint: parameter counts and bytes, peak memory, the environment record."""

import jax
import jax.numpy as jnp
import numpy as np

from hamjax import footprint


def test_param_count_and_bytes_respect_dtypes_and_skip_none():
    params = {
        "f32": jnp.zeros((3, 4), jnp.float32),
        "bf16": jnp.zeros((5,), jnp.bfloat16),
        "int8": np.zeros((2, 7), np.int8),
        "nested": {"none": None, "scale": np.float32(1.0)},
        "abstract": jax.ShapeDtypeStruct((2, 2), jnp.float32),
    }
    assert footprint.param_count(params) == 12 + 5 + 14 + 1 + 4
    assert footprint.param_bytes(params) == 12 * 4 + 5 * 2 + 14 * 1 + 4 + 4 * 4
    assert footprint.param_count({}) == 0 and footprint.param_bytes(None) == 0


def test_peak_memory_is_none_on_cpu_and_rss_positive():
    # jax 0.10 CPU devices return None from memory_stats(): no number is reported rather than a guess.
    if jax.default_backend() == "cpu":
        assert jax.devices()[0].memory_stats() is None
        assert footprint.peak_memory_bytes() is None
    assert footprint.process_peak_rss_bytes() > 1 << 20


def test_environment_names_versions_and_the_device():
    env = footprint.environment()
    assert env["jax"] == jax.__version__ and env["cpu_count"] >= 1
    assert env["device"].startswith(jax.devices()[0].platform + ":")
    assert set(env) >= {"python", "platform", "hamjax", "jaxlib", "flax", "optax", "orbax-checkpoint", "onnxruntime"}
