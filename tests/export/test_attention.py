"""Attention exports as one ONNX Attention operator and passes export.onnx's checks against JAX."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hamjax
from hamjax import export, graph


@pytest.fixture(scope="module")
def vit():
    apply_fn, params = hamjax.functional(hamjax.models.build("vit", input_shape=(28, 28, 1)))
    x = np.random.default_rng(0).uniform(size=(8, 28, 28, 1)).astype(np.float32)
    return apply_fn, params, x


def test_vit_attention_exports_as_attention_operators(vit, tmp_path):
    apply_fn, params, x = vit
    result = export.onnx(apply_fn, params, x, tmp_path / "vit.onnx")
    assert "Attention" in result.ops and "Attention" in result.runtime_ops
    assert all(c.passed for c in result.checks)
    import onnx

    graph_nodes = onnx.load(tmp_path / "vit.onnx").graph.node
    nodes = [n.op_type for n in graph_nodes]
    assert nodes.count("Attention") == 2 and "Softmax" not in nodes and "ReduceMax" not in nodes
    # the head split and merge around each Attention are gone: it reads and writes (B, T, 64)
    made = {o: n.op_type for n in graph_nodes for o in n.output}
    for node in (n for n in graph_nodes if n.op_type == "Attention"):
        assert {a.name: a.i for a in node.attribute if a.name.endswith("num_heads")} == {
            "q_num_heads": 4,
            "kv_num_heads": 4,
        }
        assert all(made[i] != "Transpose" for i in node.input)


def test_fused_model_exports_the_same_operators(vit, tmp_path):
    apply_fn, params, x = vit
    fused, params = graph.fuse_attention(apply_fn, params)
    result = export.onnx(fused, params, x, tmp_path / "fused.onnx")
    assert "Attention" in result.ops and all(c.passed for c in result.checks)


def test_masked_plain_attention_exports(tmp_path):
    rng = np.random.default_rng(1)
    w = jnp.asarray(rng.normal(size=(8, 8)) / 3, jnp.float32)
    causal = jnp.tril(jnp.ones((6, 6), bool))

    def apply_fn(p, x):
        q, k = x @ p, x
        s = jnp.einsum("ntc,nsc->nts", q, k) / np.float32(np.sqrt(8))
        s = jnp.where(causal[None], s, -1e9)
        return (jax.nn.softmax(s) @ x).mean(axis=1)

    x = rng.normal(size=(4, 6, 8)).astype(np.float32)
    result = export.onnx(apply_fn, w, x, tmp_path / "masked.onnx")
    assert "Attention" in result.ops and all(c.passed for c in result.checks)


def test_int8_export_quantizes_the_projections_around_attention(vit, tmp_path):
    apply_fn, params, x = vit
    result = export.onnx(apply_fn, params, x, tmp_path / "vit8.onnx", precision="int8", calibration=[x])
    assert "Attention" in result.ops and all(c.passed for c in result.checks)
    assert result.integer_ops


def test_bias_and_inverted_mask_export_as_one_attention_mask(tmp_path):
    rng = np.random.default_rng(2)
    w = jnp.asarray(rng.normal(size=(8, 8)) / 3, jnp.float32)
    bias = jnp.asarray(rng.normal(size=(1, 6, 6)), jnp.float32)
    blocked = ~jnp.tril(jnp.ones((6, 6), bool))[None]  # True where a query must not look

    def apply_fn(p, x):
        s = jnp.einsum("ntc,nsc->nts", x @ p, x) * np.float32(0.5) + bias
        s = jnp.where(blocked, -jnp.inf, s)
        return jax.nn.softmax(s) @ x

    x = rng.normal(size=(4, 6, 8)).astype(np.float32)
    (found,) = graph.find_attention(apply_fn, w, x)
    assert found.bias and found.mask and found.scale == 0.5
    fused, _ = graph.fuse_attention(apply_fn, w)
    assert float(jnp.max(jnp.abs(jax.jit(fused)(w, x) - apply_fn(w, x)))) <= 1e-5
    result = export.onnx(apply_fn, w, x, tmp_path / "bias_mask.onnx")
    assert "Attention" in result.ops and "Where" in result.ops and all(c.passed for c in result.checks)


def test_nnx_multi_head_attention_exports_as_attention(tmp_path):
    from flax import nnx

    class Model(nnx.Module):
        def __init__(self):
            self.attention = nnx.MultiHeadAttention(num_heads=2, in_features=8, decode=False, rngs=nnx.Rngs(0))

        def __call__(self, x):
            return self.attention(x).mean(axis=1)

    apply_fn, params = hamjax.functional(Model())
    x = np.random.default_rng(3).normal(size=(4, 5, 8)).astype(np.float32)
    result = export.onnx(apply_fn, params, x, tmp_path / "nnx_mha.onnx")
    assert "Attention" in result.ops and "Exp" not in result.ops and all(c.passed for c in result.checks)
