"""Every function transform (``apply_fn -> apply_fn``) runs through the shared conformance check.

Once jitted and once eagerly (chex variants); a transform joins by adding a
``(name, make, hparams_batch, dtypes, tolerance)`` case.
"""

import chex
import jax
import jax.numpy as jnp
import pytest
from absl.testing import parameterized
from conformance import check_function_transform

from hamjax import graph, jaxpr, precision, quant


def _mlp(params, x):
    h = jax.nn.relu(x @ params["w1"] + params["b1"][None])
    return h @ params["w2"]


def _params():
    k1, k2 = jax.random.split(jax.random.key(0))
    return {"w1": jax.random.normal(k1, (8, 16)), "b1": jnp.zeros(16), "w2": jax.random.normal(k2, (16, 4))}


X = jax.random.normal(jax.random.key(1), (5, 8))
BITS = {"bits": jnp.array([3.0, 5.0, 8.0])}
RANGES = {"['w1']": (-3.0, 3.0), "['w2']": (0.0, 6.0)}
TOL = 1e-4


def _lowrank(energy):
    """Factor w1 and w2 at static rank 4 with a (traced) retained energy, then run the factored model."""

    def transform(f):
        def factored(p, x):
            factors = {k: graph.Factors(*graph.svd_factors(p[k], 4, energy=energy), p[k].shape) for k in ("w1", "w2")}
            return graph.lowrank_apply(f)({**p, **factors}, x)

        return factored

    return transform


CASES = [
    ("intercept(identity)", lambda hp: lambda f: jaxpr.intercept(f, lambda i, s, a, w: (a, w)), {}, True, TOL),
    (
        "fake_quant_apply(static)",
        lambda hp: (
            lambda f: quant.fake_quant_apply(f, bits=hp["bits"], act_bits=hp["bits"], method="static", ranges=RANGES)
        ),
        BITS,
        True,
        TOL,
    ),
    (
        "fake_quant_apply(dynamic, per-tensor)",
        lambda hp: lambda f: quant.fake_quant_apply(f, bits=hp["bits"], method="dynamic", per_channel=False),
        BITS,
        True,
        TOL,
    ),
    (
        "fake_quant_apply(weights only)",
        lambda hp: lambda f: quant.fake_quant_apply(f, bits=hp["bits"], method="weight_only"),
        BITS,
        True,
        TOL,
    ),
    (
        "lowrank_apply(svd_factors, energy)",
        lambda hp: _lowrank(hp["energy"]),
        {"energy": jnp.array([0.3, 0.7, 1.0])},
        True,
        TOL,
    ),
    ("fuse_attention", lambda hp: lambda f: graph.fuse_attention(f, None)[0], {}, True, TOL),
    ("rematerialize(full)", lambda hp: lambda f: graph.rematerialize(f, "full", segments=2), {}, True, TOL),
    ("rematerialize(dots)", lambda hp: lambda f: graph.rematerialize(f, "dots"), {}, True, TOL),
    # bf16 compute rounds differently under jit (fusion) than eagerly: compare at bf16's precision.
    ("with_policy(bf16 compute)", lambda hp: lambda f: precision.with_policy(f, "p=f32,c=bf16,o=f32"), {}, False, 2e-2),
]


class FunctionTransformConformance(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(*CASES)
    def test_conforms(self, make, hparams, dtypes, tol):
        check_function_transform(
            make, hparams, _mlp, _params(), X, variant=self.variant, dtypes=dtypes, rtol=tol, atol=tol
        )


def test_the_check_catches_a_transform_that_retraces():
    calls = []

    def leaky(f):
        def g(p, x):
            calls.append(1)
            return f(p, x) + len(calls)  # a Python counter baked into each trace

        return g

    with pytest.raises(AssertionError):
        check_function_transform(lambda hp: leaky, {}, _mlp, _params(), X)
