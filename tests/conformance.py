"""The shared conformance check every hamjax transform passes (STYLE.md rule 7).

``check_transform(make, hparams_batch)`` builds ``make(hp)`` for each
hyperparameter pytree in the batch and checks that:

* jit equals eager;
* vmap over the batch of hyperparameters equals a Python loop;
* dtypes of params are preserved (float32 and bfloat16 params);
* the state keeps its structure and dtypes under ``lax.scan``;
* a second jitted call with new values does not re-trace.

A transform joins by adding a case to ``CASES`` in ``test_conformance.py``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def example_params(dtype=jnp.float32, seed: int = 0) -> dict:
    """A small params tree with the leaf kinds transforms meet: dense and conv kernels, biases, a norm."""
    k = jax.random.split(jax.random.key(seed), 3)
    tree = {
        "dense_0": {"kernel": jax.random.normal(k[0], (16, 32)), "bias": jnp.linspace(-1, 1, 32)},
        "dense_1": {"kernel": jax.random.normal(k[1], (32, 8)), "bias": jnp.zeros(8)},
        "conv": {"kernel": jax.random.normal(k[2], (3, 3, 4, 8)), "bias": jnp.zeros(8)},
        "norm": {"scale": jnp.ones(32), "bias": jnp.zeros(32)},
    }
    return jax.tree.map(lambda a: a.astype(dtype), tree)


def _run(make, hp, params, steps: int = 1):
    t = make(hp)
    state = t.init(params)
    for _ in range(steps):
        params, state = t.apply(params, state)
    return params, state


def _assert_trees_close(a, b, what: str, rtol=1e-6, atol=1e-6):
    sa, sb = jax.tree.structure(a), jax.tree.structure(b)
    assert sa == sb, f"{what}: tree structures differ: {sa} vs {sb}"
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        np.testing.assert_allclose(x, y, rtol=rtol, atol=atol, err_msg=what)


def _index(tree, i):
    return jax.tree.map(lambda a: a[i], tree)


def check_transform(make, hparams_batch, *, params_fn=example_params, rtol=1e-5, atol=1e-6) -> None:
    """Run every conformance check on the transform factory ``make``.

    Args:
      make: ``make(hp) -> Transform`` where ``hp`` is a pytree of arrays.
      hparams_batch: ``hp`` pytree whose leaves have a leading batch axis (>= 2).
      params_fn: ``params_fn(dtype) -> params``.
      rtol, atol: tolerances for the float comparisons.

    Raises:
      AssertionError: naming the check that failed.
    """
    n = jax.tree.leaves(hparams_batch)[0].shape[0] if jax.tree.leaves(hparams_batch) else 2
    params = params_fn(jnp.float32)
    hp0 = _index(hparams_batch, 0)

    # jit equals eager
    eager = _run(make, hp0, params)
    jitted = jax.jit(lambda p, hp: _run(make, hp, p))(params, hp0)
    _assert_trees_close(jitted, eager, "jit vs eager", rtol, atol)

    # vmap over hyperparameters equals a Python loop
    batched = jax.jit(jax.vmap(lambda hp: _run(make, hp, params), axis_size=n))(hparams_batch)
    for i in range(n):
        _assert_trees_close(
            _index(batched, i), _run(make, _index(hparams_batch, i), params), f"vmap member {i}", rtol, atol
        )

    # dtypes preserved
    for dtype in (jnp.float32, jnp.bfloat16):
        p = params_fn(dtype)
        out, _ = jax.jit(lambda p, hp: _run(make, hp, p))(p, hp0)
        for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(p), jax.tree.leaves(out), strict=True):
            assert b.dtype == a.dtype, f"dtype of {jax.tree_util.keystr(path)} changed: {a.dtype} -> {b.dtype}"
            assert b.shape == a.shape, f"shape of {jax.tree_util.keystr(path)} changed: {a.shape} -> {b.shape}"

    # state structure stable under lax.scan
    t = make(hp0)
    state = t.init(params)

    def body(carry, _):
        p, s = carry
        return t.apply(p, s), None

    (scanned_p, scanned_s), _ = jax.jit(lambda c: jax.lax.scan(body, c, None, length=3))((params, state))
    looped = _run(make, hp0, params, steps=3)
    _assert_trees_close((scanned_p, scanned_s), looped, "lax.scan vs loop", rtol, atol)

    # no re-trace on the second call
    traces = []

    def traced(p, hp):
        traces.append(1)
        return _run(make, hp, p)

    f = jax.jit(traced)
    jax.block_until_ready(f(params, hp0))
    jax.block_until_ready(f(params_fn(jnp.float32, seed=1), _index(hparams_batch, n - 1)))
    assert len(traces) == 1, f"re-traced on the second call ({len(traces)} traces)"


def check_function_transform(make, hparams_batch, apply_fn, params, x, *, dtypes=True, rtol=1e-5, atol=1e-6) -> None:
    """The conformance checks for a function transform (``apply_fn -> apply_fn``).

    ``make(hp)`` returns the transform for the hyperparameter pytree ``hp``;
    the checks run ``make(hp)(apply_fn)(params, x)``:

    * jit equals eager;
    * vmap over the batch of hyperparameters equals a Python loop;
    * output dtypes follow the params' dtype (float32 and bfloat16), unless
      ``dtypes=False`` (a precision policy sets them itself);
    * ``jax.grad`` through it gives finite gradients shaped and typed like params;
    * a second jitted call with new inputs does not re-trace.
    """
    n = jax.tree.leaves(hparams_batch)[0].shape[0] if jax.tree.leaves(hparams_batch) else 2
    hp0 = _index(hparams_batch, 0)

    def call(p, xx, hp):
        return make(hp)(apply_fn)(p, xx)

    eager = call(params, x, hp0)
    _assert_trees_close(jax.jit(call)(params, x, hp0), eager, "jit vs eager", rtol, atol)

    batched = jax.jit(jax.vmap(lambda hp: call(params, x, hp), axis_size=n))(hparams_batch)
    for i in range(n):
        _assert_trees_close(_index(batched, i), call(params, x, _index(hparams_batch, i)), f"vmap {i}", rtol, atol)

    if dtypes:
        for dtype in (jnp.float32, jnp.bfloat16):
            cast = jax.tree.map(lambda a, d=dtype: a.astype(d) if jnp.issubdtype(a.dtype, jnp.floating) else a, params)
            out = jax.jit(call)(cast, x.astype(dtype), hp0)
            assert {o.dtype for o in jax.tree.leaves(out)} == {jnp.dtype(dtype)}, f"output dtype is not {dtype}"

    grads = jax.jit(jax.grad(lambda p: sum(jnp.sum(o.astype(jnp.float32)) for o in jax.tree.leaves(call(p, x, hp0)))))(
        params
    )
    assert jax.tree.structure(grads) == jax.tree.structure(params), "grad structure differs from params"
    for g, p in zip(jax.tree.leaves(grads), jax.tree.leaves(params), strict=True):
        assert g.dtype == p.dtype and g.shape == p.shape, f"grad {g.dtype}{g.shape} vs param {p.dtype}{p.shape}"
        assert bool(jnp.all(jnp.isfinite(g))), "non-finite gradient"

    traces = []

    def traced(p, xx, hp):
        traces.append(1)
        return call(p, xx, hp)

    f = jax.jit(traced)
    jax.block_until_ready(f(params, x, hp0))
    jax.block_until_ready(f(params, x + 1, _index(hparams_batch, n - 1)))
    assert len(traces) == 1, f"re-traced on the second call ({len(traces)} traces)"
