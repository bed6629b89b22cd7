"""Rematerialisation: a function's forward pass split into checkpointed segments, for training in less memory.

``jax.checkpoint`` around a whole loss saves nothing: the backward pass
recomputes the whole forward at once, so every activation is live again.
Memory drops when the forward is cut into segments, each under its own
``jax.checkpoint``: the backward pass keeps only the values that cross a
segment boundary and recomputes one segment at a time (Chen et al. 2016,
about ``sqrt(n)`` segments of ``n`` operations). :func:`rematerialize`
does this to any function of arrays, through its jaxpr (``jit`` calls
inlined, every other equation re-bound as it is), so it works on Flax NNX,
Linen and plain ``jax.numpy`` models alike, and cuts where the fewest bytes
are live. Inside a segment the named ``jax.checkpoint_policies`` policy
says what is saved besides the boundaries.

References:
  Chen, Xu, Zhang, Guestrin. Training Deep Nets with Sublinear Memory Cost. 2016.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.extend.core as jcore
import jax.numpy as jnp
import numpy as np

from hamjax._checks import check_choice, check_int
from hamjax.jaxpr import bind_equation, call_body

__all__ = ["REMAT_POLICIES", "rematerialize"]

# name -> the attribute of jax.checkpoint_policies; "none" means no rematerialisation.
_POLICY_ATTRS = {
    "full": "nothing_saveable",
    "dots": "dots_saveable",
    "dots_with_no_batch_dims": "dots_with_no_batch_dims_saveable",
}

REMAT_POLICIES: tuple[str, ...] = (
    "none",
    *(name for name, attr in _POLICY_ATTRS.items() if hasattr(jax.checkpoint_policies, attr)),
)
"""Policy names :func:`rematerialize` accepts (those the installed JAX has): ``"none"`` keeps every
activation; ``"full"`` saves only segment boundaries (``nothing_saveable``); ``"dots"`` also saves
matrix products and convolutions (``dots_saveable``); ``"dots_with_no_batch_dims"`` saves those
without batch dimensions (``dots_with_no_batch_dims_saveable``)."""

_INLINED = ("jit", "pjit", "closed_call", "core_call")


class _Literal:
    """A literal operand of a flattened equation."""

    def __init__(self, value):
        self.value = value


def _flatten(jaxpr, consts, ins: list, nodes: list, values: dict, count: list) -> list:
    """Append ``jaxpr``'s equations to ``nodes`` as ``(eqn, in_ids, out_ids)``, inlining ``jit`` calls.

    Values get fresh integer ids, so a body called twice gets two sets; ``values`` holds the constants.
    """
    env: dict = {}

    def fresh():
        count[0] += 1
        return count[0]

    for var, const in zip(jaxpr.constvars, consts, strict=True):
        env[var] = fresh()
        values[env[var]] = const
    env.update(zip(jaxpr.invars, ins, strict=True))

    def read(var):
        return _Literal(var.val) if isinstance(var, jcore.Literal) else env[var]

    for eqn in jaxpr.eqns:
        args = [read(v) for v in eqn.invars]
        body = call_body(eqn) if eqn.primitive.name in _INLINED else None
        if body is not None:
            outs = _flatten(body[0], body[1], args, nodes, values, count)
        else:
            outs = [fresh() for _ in eqn.outvars]
            nodes.append((eqn, args, outs))
        env.update(zip(eqn.outvars, outs, strict=True))
    return [read(v) for v in jaxpr.outvars]


def _nbytes(eqn, index: int) -> int:
    aval = eqn.outvars[index].aval
    try:
        return math.prod(aval.shape) * np.dtype(aval.dtype).itemsize
    except TypeError:  # random keys and other extended dtypes: small
        return 0


def _boundaries(nodes: list, outputs: list, segments: int) -> list[int]:
    """Cut points (node indices) near ``i * n / segments`` where the fewest bytes defined inside are live."""
    n = len(nodes)
    last, size, born = {}, {}, {}
    for i, (eqn, args, outs) in enumerate(nodes):
        for a in args:
            if not isinstance(a, _Literal):
                last[a] = i
        for j, o in enumerate(outs):
            born[o], size[o] = i, _nbytes(eqn, j)
    for o in outputs:
        if not isinstance(o, _Literal):
            last[o] = n
    live = np.zeros(n + 1)
    for o, b in born.items():
        live[b + 1 : last.get(o, b) + 1] += size[o]
    cuts, width = [], n / segments
    for k in range(1, segments):
        lo, hi = max(int((k - 0.5) * width), (cuts[-1] + 1) if cuts else 1), min(int((k + 0.5) * width), n - 1)
        if lo <= hi:
            cuts.append(lo + int(np.argmin(live[lo : hi + 1])))
    return cuts


def _run_segment(nodes: list, ins: list, outs: list, *vals):
    env = dict(zip(ins, vals, strict=True))
    for eqn, args, results in nodes:
        got = bind_equation(eqn, [a.value if isinstance(a, _Literal) else env[a] for a in args])
        env.update(zip(results, got, strict=True))
    return [env[o] for o in outs]


def _is_float(x) -> bool:
    return jnp.issubdtype(jnp.result_type(x), jnp.inexact)


def _checkpointed(fn: Callable, saveable) -> Callable:
    """``jax.checkpoint(fn, policy=saveable)`` whose recomputation waits for its cotangent.

    XLA's common-subexpression elimination on the CPU merges a plain
    ``jax.checkpoint``'s recomputation with the forward pass (and its
    scheduler may recompute every segment before the first is needed), which
    undoes the saving. Here the backward pass runs inside a ``lax.cond`` on a
    value of the cotangent, both branches the same: XLA neither merges
    computations across the branch boundary nor starts the recomputation
    before the cotangent exists.
    """

    @jax.custom_vjp
    def run(*args):
        return fn(*args)

    def forward(*args):
        return jax.vjp(jax.checkpoint(fn, policy=saveable), *args)

    def backward(vjp_fn, cotangent):
        leaves, tree = jax.tree.flatten(cotangent)
        keep = [i for i, leaf in enumerate(leaves) if _is_float(leaf)]
        zeros = [np.zeros(np.shape(leaf), leaf.dtype) for leaf in leaves]  # float0, for integer outputs
        arg_shapes, arg_tree = jax.tree.flatten(jax.eval_shape(vjp_fn, cotangent))

        def back(vjp_fn, kept):
            full = list(zeros)
            for i, leaf in zip(keep, kept, strict=True):
                full[i] = leaf
            return [g for g in jax.tree.leaves(vjp_fn(jax.tree.unflatten(tree, full))) if _is_float(g)]

        kept = [leaves[i] for i in keep]
        sized = [leaf for leaf in kept if np.size(leaf)]
        if sized:
            grads = iter(jax.lax.cond(jnp.isnan(sized[0].ravel()[0]), back, back, vjp_fn, kept))
        else:
            grads = iter(back(vjp_fn, kept))
        full = [next(grads) if _is_float(g) else np.zeros(g.shape, g.dtype) for g in arg_shapes]
        return jax.tree.unflatten(arg_tree, full)

    run.defvjp(forward, backward)
    return run


def rematerialize(fn: Callable, policy: str = "full", *, segments: int | None = None) -> Callable:
    """``fn`` computed in checkpointed segments, so its gradient keeps fewer activations.

    The values are those of ``fn`` (the same operations, re-bound in order);
    under ``jax.grad`` the backward pass recomputes each segment's forward
    instead of storing it, saving what ``policy`` names inside a segment.

    Args:
      fn: any function of pytrees of arrays returning a pytree of arrays (a
        loss, a model's apply function with its keyword arguments bound).
      policy: one of :data:`REMAT_POLICIES`; ``"none"`` returns ``fn`` itself.
      segments: how many segments to cut the forward into; ``None`` is about
        ``sqrt`` of the number of operations.

    Returns:
      A function with ``fn``'s signature and outputs.

    Raises:
      ValueError: naming ``policy`` and the names there are, or a
        ``segments`` below 1, before anything is traced.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from hamjax.graph import rematerialize
      >>> def loss(w, x):
      ...     for _ in range(4):
      ...         x = jnp.tanh(x @ w)
      ...     return jnp.sum(x)
      >>> w, x = jnp.eye(3) * 0.5, jnp.ones((2, 3))
      >>> g = jax.grad(rematerialize(loss, "full"))(w, x)
      >>> bool(jnp.allclose(g, jax.grad(loss)(w, x)))
      True
      >>> rematerialize(loss, "everything")
      Traceback (most recent call last):
      ...
      ValueError: rematerialize: policy must be one of ...
    """
    check_choice("rematerialize", "policy", policy, REMAT_POLICIES)
    if segments is not None:
        check_int("rematerialize", "segments", segments, minimum=1)
    if policy == "none":
        return fn
    saveable = getattr(jax.checkpoint_policies, _POLICY_ATTRS[policy])

    def remat_fn(*args, **kwargs):
        flat, in_tree = jax.tree.flatten((args, kwargs))

        def flat_fn(*leaves):
            a, kw = jax.tree.unflatten(in_tree, leaves)
            return fn(*a, **kw)

        closed, shape = jax.make_jaxpr(flat_fn, return_shape=True)(*flat)
        nodes, values, count = [], {}, [0]
        ins = []
        for _ in closed.jaxpr.invars:
            count[0] += 1
            ins.append(count[0])
        outputs = _flatten(closed.jaxpr, closed.consts, ins, nodes, values, count)
        values.update(zip(ins, flat, strict=True))
        cuts = _boundaries(nodes, outputs, segments or max(1, round(math.sqrt(len(nodes)))))
        starts = [0, *cuts]
        for start, stop in zip(starts, [*cuts, len(nodes)], strict=True):
            part = nodes[start:stop]
            later = {a for _, args, _ in nodes[stop:] for a in args if not isinstance(a, _Literal)}
            later |= {o for o in outputs if not isinstance(o, _Literal)}
            made = {o for _, _, outs in part for o in outs}
            seg_outs = [o for o in dict.fromkeys(o for _, _, outs in part for o in outs) if o in later]
            seg_ins = list(dict.fromkeys(a for _, args, _ in part for a in args if not isinstance(a, _Literal)))
            seg_ins = [a for a in seg_ins if a not in made]
            if not seg_outs:  # nothing of it is used later
                continue

            def segment(*vals, part=part, seg_ins=seg_ins, seg_outs=seg_outs):
                return _run_segment(part, seg_ins, seg_outs, *vals)

            got = _checkpointed(segment, saveable)(*[values[a] for a in seg_ins])
            values.update(zip(seg_outs, got, strict=True))
        leaves = [o.value if isinstance(o, _Literal) else values[o] for o in outputs]
        return jax.tree.unflatten(jax.tree.structure(shape), leaves)

    return remat_fn
