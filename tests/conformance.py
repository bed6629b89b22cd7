"""The shared conformance checks every hamjax transform passes (STYLE.md rule 7).

Three kinds of transform, one check each:

* ``check_transform(make, hparams_batch)`` for param transforms
  (``make(hp) -> Transform``);
* ``check_function_transform(make, hparams_batch, apply_fn, params, x)`` for
  function transforms (``make(hp)(apply_fn) -> apply_fn``);
* ``check_optax_adapter(make, hparams_batch)`` for optax adapters
  (``make(hp) -> optax.GradientTransformation``).

Each checks that:

* the ``variant`` (``jax.jit`` by default; a ``chex.variants`` test passes
  ``self.variant``, so the checks run once jitted and once eagerly) equals
  plain eager Python;
* vmap over the batch of hyperparameters equals a Python loop;
* dtypes are preserved (float32 and bfloat16);
* the state keeps its structure and dtypes under ``lax.scan``;
* a second jitted call with new values does not re-trace.

A transform joins by adding a case to ``CASES`` in ``test_conformance.py``,
``test_conformance_functions.py`` or ``test_conformance_optax.py``.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import optax


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


def example_grads(params, step):
    """Gradients that are a fixed function of the params and the step (``step`` may be traced), in each leaf's dtype."""
    return jax.tree.map(lambda w: jnp.cos(3 * w + step.astype(w.dtype)).astype(w.dtype), params)


def _is_jit(variant) -> bool:
    """Whether ``variant`` compiles: ``jax.jit`` itself, or chex's ``with_jit`` variant."""
    return getattr(variant, "type", chex.ChexVariantType.WITH_JIT) == chex.ChexVariantType.WITH_JIT


def _index(tree, i):
    return jax.tree.map(lambda a: a[i], tree)


def _batch_size(hparams_batch) -> int:
    leaves = jax.tree.leaves(hparams_batch)
    return leaves[0].shape[0] if leaves else 0


def _assert_no_retrace(fn, first_args, second_args) -> None:
    traces = []

    def traced(*args):
        traces.append(1)
        return fn(*args)

    f = jax.jit(traced)
    jax.block_until_ready(f(*first_args))
    jax.block_until_ready(f(*second_args))
    assert len(traces) == 1, f"re-traced on the second call ({len(traces)} traces)"


def _run(make, hp, params, steps: int = 1):
    t = make(hp)
    state = t.init(params)
    for _ in range(steps):
        params, state = t.apply(params, state)
    return params, state


def check_transform(make, hparams_batch, *, variant=jax.jit, params_fn=example_params, rtol=1e-5, atol=1e-6) -> None:
    """Run every conformance check on the param transform factory ``make``.

    Args:
      make: ``make(hp) -> Transform`` where ``hp`` is a pytree of arrays.
      hparams_batch: ``hp`` pytree whose leaves have a leading batch axis (>= 2);
        ``{}`` for a transform without hyperparameters.
      variant: wraps the functions under test: ``jax.jit``, or a
        ``chex.variants`` test's ``self.variant``.
      params_fn: ``params_fn(dtype, seed=0) -> params``.
      rtol, atol: tolerances for the float comparisons.

    Raises:
      AssertionError: naming the check that failed.
    """
    n = _batch_size(hparams_batch) or 2
    params = params_fn(jnp.float32)
    hp0 = _index(hparams_batch, 0)

    def run(p, hp):
        return _run(make, hp, p)

    eager = run(params, hp0)
    chex.assert_trees_all_close(variant(run)(params, hp0), eager, rtol=rtol, atol=atol, custom_message="jit vs eager")

    batched = variant(jax.vmap(lambda hp: run(params, hp), axis_size=n))(hparams_batch)
    for i in range(n):
        looped = eager if i == 0 else run(params, _index(hparams_batch, i))
        chex.assert_trees_all_close(_index(batched, i), looped, rtol=rtol, atol=atol, custom_message=f"vmap member {i}")

    for dtype in (jnp.float32, jnp.bfloat16):
        p = params_fn(dtype)
        out, _ = variant(run)(p, hp0)
        chex.assert_trees_all_equal_shapes_and_dtypes(out, p, custom_message=f"params of dtype {jnp.dtype(dtype)}")

    t = make(hp0)

    def body(carry, _):
        return t.apply(*carry), None

    scanned, _ = variant(lambda c: jax.lax.scan(body, c, None, length=3))((params, t.init(params)))
    looped = _run(make, hp0, params, steps=3)
    chex.assert_trees_all_close(scanned, looped, rtol=rtol, atol=atol, custom_message="lax.scan vs loop")

    if _is_jit(variant):
        _assert_no_retrace(run, (params, hp0), (params_fn(jnp.float32, seed=1), _index(hparams_batch, n - 1)))


def check_function_transform(
    make, hparams_batch, apply_fn, params, x, *, variant=jax.jit, dtypes=True, rtol=1e-5, atol=1e-6
) -> None:
    """The conformance checks for a function transform (``apply_fn -> apply_fn``).

    ``make(hp)`` returns the transform for the hyperparameter pytree ``hp``;
    the checks run ``make(hp)(apply_fn)(params, x)``:

    * ``variant`` (jit) equals eager;
    * vmap over the batch of hyperparameters equals a Python loop;
    * output dtypes follow the params' dtype (float32 and bfloat16), unless
      ``dtypes=False`` (a precision policy sets them itself);
    * ``jax.grad`` through it gives finite gradients shaped and typed like params;
    * a second jitted call with new inputs does not re-trace.
    """
    n = _batch_size(hparams_batch) or 2
    hp0 = _index(hparams_batch, 0)

    def call(p, xx, hp):
        return make(hp)(apply_fn)(p, xx)

    eager = call(params, x, hp0)
    chex.assert_trees_all_close(
        variant(call)(params, x, hp0), eager, rtol=rtol, atol=atol, custom_message="jit vs eager"
    )

    batched = variant(jax.vmap(lambda hp: call(params, x, hp), axis_size=n))(hparams_batch)
    for i in range(n):
        looped = eager if i == 0 else call(params, x, _index(hparams_batch, i))
        chex.assert_trees_all_close(_index(batched, i), looped, rtol=rtol, atol=atol, custom_message=f"vmap {i}")

    if dtypes:
        for dtype in (jnp.float32, jnp.bfloat16):
            cast = jax.tree.map(lambda a, d=dtype: a.astype(d) if jnp.issubdtype(a.dtype, jnp.floating) else a, params)
            out = variant(call)(cast, x.astype(dtype), hp0)
            assert {o.dtype for o in jax.tree.leaves(out)} == {jnp.dtype(dtype)}, f"output dtype is not {dtype}"

    def total(p):
        return sum(jnp.sum(o.astype(jnp.float32)) for o in jax.tree.leaves(call(p, x, hp0)))

    grads = variant(jax.grad(total))(params)
    chex.assert_trees_all_equal_shapes_and_dtypes(grads, params, custom_message="grads vs params")
    chex.assert_tree_all_finite(grads)

    if _is_jit(variant):
        _assert_no_retrace(call, (params, x, hp0), (params, x + 1, _index(hparams_batch, n - 1)))


def _train(make, hp, params, steps: int, grads_fn):
    opt = make(hp)
    state = opt.init(params)
    for i in range(steps):
        updates, state = opt.update(grads_fn(params, jnp.asarray(i, jnp.int32)), state, params)
        params = optax.apply_updates(params, updates)
    return params, state


def check_optax_adapter(
    make,
    hparams_batch,
    *,
    variant=jax.jit,
    steps: int = 4,
    params_fn=example_params,
    grads_fn=example_grads,
    rtol=1e-5,
    atol=1e-6,
) -> None:
    """Run every conformance check on the optax adapter factory ``make``.

    Each run inits the optimizer on the params and does ``steps`` updates
    (``update(grads_fn(params, step), state, params)`` then
    ``optax.apply_updates``). The checks:

    * ``variant`` (jit) equals eager over the ``steps`` updates, params and state;
    * vmap over the batch of hyperparameters equals a Python loop;
    * float32 and bfloat16 params keep their shapes and dtypes, and so do the
      updates; the state after an update has the structure, shapes and dtypes
      of the state ``init`` returned; the trained params are finite;
    * ``steps`` updates under ``lax.scan`` equal the Python loop (scan itself
      refuses a state whose structure or dtypes change);
    * a second jitted call with new params and hyperparameters does not re-trace.

    Args:
      make: ``make(hp) -> optax.GradientTransformation`` where ``hp`` is a
        pytree of arrays; its ``update`` is called with ``params``.
      hparams_batch: ``hp`` pytree whose leaves have a leading batch axis
        (>= 2), or ``{}`` for an adapter without array hyperparameters (the
        vmap check is then skipped).
      variant: wraps the functions under test: ``jax.jit``, or a
        ``chex.variants`` test's ``self.variant``.
      steps: updates per run (>= 2, so state carried between updates is checked).
      params_fn: ``params_fn(dtype, seed=0) -> params``.
      grads_fn: ``grads_fn(params, step) -> grads``, ``step`` an int32 scalar
        array (traced under ``lax.scan``).
      rtol, atol: tolerances for the float comparisons.

    Raises:
      AssertionError: naming the check that failed.
    """
    n = _batch_size(hparams_batch)
    params = params_fn(jnp.float32)
    hp0 = _index(hparams_batch, 0) if n else hparams_batch

    def train(p, hp):
        return _train(make, hp, p, steps, grads_fn)

    def first_update(p, hp):
        opt = make(hp)
        state = opt.init(p)
        updates, _ = opt.update(grads_fn(p, jnp.zeros((), jnp.int32)), state, p)
        return state, updates

    eager = train(params, hp0)
    for dtype in (jnp.float32, jnp.bfloat16):
        p = params_fn(dtype)
        what = f"params of dtype {jnp.dtype(dtype)}"
        # before any training: optax.apply_updates would refuse updates of another dtype under strict promotion
        state, updates = variant(first_update)(p, hp0)
        chex.assert_trees_all_equal_shapes_and_dtypes(updates, p, custom_message=f"updates vs {what}")
        out, out_state = variant(train)(p, hp0)
        chex.assert_trees_all_equal_shapes_and_dtypes(out, p, custom_message=f"trained vs initial {what}")
        chex.assert_trees_all_equal_shapes_and_dtypes(out_state, state, custom_message=f"state after updates, {what}")
        chex.assert_tree_all_finite(out)
        if dtype == jnp.float32:
            chex.assert_trees_all_close(
                (out, out_state), eager, rtol=rtol, atol=atol, custom_message=f"jit vs eager over {steps} updates"
            )

    if n:
        batched = variant(jax.vmap(lambda hp: train(params, hp)))(hparams_batch)
        for i in range(n):
            looped = eager if i == 0 else train(params, _index(hparams_batch, i))
            chex.assert_trees_all_close(_index(batched, i), looped, rtol=rtol, atol=atol, custom_message=f"vmap {i}")

    def scanned(p, hp):
        opt = make(hp)

        def body(carry, step):
            p, state = carry
            updates, state = opt.update(grads_fn(p, step), state, p)
            return (optax.apply_updates(p, updates), state), None

        return jax.lax.scan(body, (p, opt.init(p)), jnp.arange(steps, dtype=jnp.int32))[0]

    chex.assert_trees_all_close(
        variant(scanned)(params, hp0), eager, rtol=rtol, atol=atol, custom_message="lax.scan vs loop"
    )

    if _is_jit(variant):
        hp_last = _index(hparams_batch, n - 1) if n else hp0
        _assert_no_retrace(train, (params, hp0), (params_fn(jnp.float32, seed=1), hp_last))
