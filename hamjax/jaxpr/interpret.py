"""Re-evaluate any apply function's jaxpr with hooks at its weighted ops and named values.

hamjax rewrites models it did not write (Flax NNX, Linen, plain
``jax.numpy``) by tracing ``apply_fn`` to a jaxpr and evaluating it again,
equation by equation, while tracking where each value comes from: from
the inputs, or from one params leaf through layout ops only (reshape,
transpose, dtype casts). That provenance finds the *sites*
(:class:`~hamjax.jaxpr.Site`): a ``dot_general`` or
``conv_general_dilated`` where one operand depends on the input (the
activation) and the other does not (the weight). Products of two
activations (attention scores) are not sites. :func:`intercept` hands each
site's operands, and each named value, to a callback that may read or
replace them: quantization fake-quantizes them, calibration records their
ranges, distillation captures intermediates, exporters collect the weights
as the ops see them.

Calls (``jit``, ``custom_jvp_call``, ``custom_vjp_call``, checkpoint) are
inlined so sites inside them are found; control flow (``scan``,
``while``, ``cond``) is evaluated as it is, and a weight that flows into it
is reported with a warning, because its ops are not rewritten.

Sites are named by the key path of their weight leaf
(``"['params']['layers'][0]['kernel']"``; a second use of the same leaf
adds ``"#1"``), or by the primitive and its index for a computed weight.
The order of sites is the order of evaluation, the same on every trace of
the same function.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.extend.core as jcore
import numpy as np

from hamjax._base import ApplyFn
from hamjax.jaxpr.equations import MARKER_PRIMITIVE, SITE_PRIMITIVES, Site, bind_equation, call_body

# Inlining these drops their custom derivative rule, so a marked value inside one is not read.
_CUSTOM = {"custom_jvp_call", "custom_vjp_call"}
_SAME_LAYOUT = {"convert_element_type", "copy", "copy_p", "reduce_precision", "optimization_barrier"}


# A value's provenance: does it depend on the inputs, and which params leaf
# (with the map from its axes to the leaf's) it is a pure re-layout of.
@dataclasses.dataclass(frozen=True)
class _Tag:
    dep: bool
    leaf: int | None = None
    axes: tuple[int, ...] | None = None


_DATA = _Tag(True)
_CONST = _Tag(False)

Hook = Callable[[int, Site, jax.Array, jax.Array], tuple[jax.Array, jax.Array]]
"""``hook(index, site, activation, weight) -> (activation, weight)``, called at every site."""

OutputHook = Callable[[str, jax.Array], jax.Array]
"""``on_output(name, value) -> value``, called at every named intermediate."""


@dataclasses.dataclass(frozen=True)
class Span:
    """Equations of one jaxpr that a rewrite replaces by one function (see :func:`intercept`'s ``rewrite``).

    Attributes:
      equations: indices of the replaced equations in the jaxpr; ``fn`` runs
        in place of the last one, the others are not evaluated.
      inputs: the variables or literals ``fn`` reads, all defined before the
        last equation.
      outputs: the variables ``fn`` defines, outputs of equations in the
        span; no equation outside the span reads any other of their outputs.
      fn: ``fn(*input values) -> list of output values``; it runs while
        tracing.

    Examples:
      >>> import jax.numpy as jnp
      >>> from hamjax import jaxpr
      >>> def cosines(j):  # every sin computed as a cos
      ...     return [
      ...         jaxpr.Span((i,), tuple(e.invars), tuple(e.outvars), lambda x: [jnp.cos(x)])
      ...         for i, e in enumerate(j.eqns)
      ...         if e.primitive.name == "sin"
      ...     ]
      >>> f = jaxpr.intercept(lambda p, x: jnp.sin(x) * p, rewrite=cosines)
      >>> float(f(jnp.float32(2.0), jnp.float32(0.0)))
      2.0
    """

    equations: tuple[int, ...]
    inputs: tuple[Any, ...]
    outputs: tuple[Any, ...]
    fn: Callable[..., list]


Rewrite = Callable[[Any], Sequence[Span]]
"""``rewrite(jaxpr) -> spans``: the equations of one ``jax.extend.core.Jaxpr`` to replace (none: an empty tuple)."""


def _channel_axes(eqn, weight_operand: int, ndim: int) -> tuple[int, ...]:
    if eqn.primitive.name == "dot_general":
        contract, _ = eqn.params["dimension_numbers"]
        reduced = set(contract[weight_operand])
        return tuple(i for i in range(ndim) if i not in reduced)
    if weight_operand == 1:
        return (eqn.params["dimension_numbers"].rhs_spec[0],)
    return ()


class _Context:
    def __init__(
        self,
        leaf_paths: list[str],
        leaf_names: list[str],
        hook: Hook | None,
        on_output: OutputHook | None,
        rewrite: Rewrite | None = None,
    ):
        self.leaf_paths = leaf_paths
        self.rewrite = rewrite
        self.plans: dict[int, tuple[dict[int, Span], set[int]]] = {}
        self.leaf_names = leaf_names
        self.hook = hook
        self.on_output = on_output
        self.sites: list[Site] = []
        self.uses: dict[str, int] = {}
        self.marker_uses: dict[str, int] = {}
        self.has_marker: dict[int, bool] = {}
        self.skipped: list[str] = []

    def marker(self, name: str) -> str:
        k = self.marker_uses.get(name, 0)
        self.marker_uses[name] = k + 1
        return name if k == 0 else f"{name}#{k}"

    def contains_marker(self, jaxpr) -> bool:
        key = id(jaxpr)
        if key not in self.has_marker:
            self.has_marker[key] = any(
                e.primitive.name == MARKER_PRIMITIVE
                or ((sub := call_body(e)) is not None and self.contains_marker(sub[0]))
                for e in jaxpr.eqns
            )
        return self.has_marker[key]

    def plan(self, jaxpr) -> tuple[dict[int, Span], set[int]]:
        """``({last equation: span}, equations not evaluated)`` of ``jaxpr`` under the rewrite."""
        key = id(jaxpr)
        if key not in self.plans:
            spans = () if self.rewrite is None else self.rewrite(jaxpr)
            at = {max(s.equations): s for s in spans}
            self.plans[key] = (jaxpr, at, {i for s in spans for i in s.equations})
        return self.plans[key][1:]

    def contains_span(self, jaxpr) -> bool:
        return self.rewrite is not None and (
            bool(self.plan(jaxpr)[0])
            or any((sub := call_body(e)) is not None and self.contains_span(sub[0]) for e in jaxpr.eqns)
        )

    def site(self, eqn, w: int, tags, invals) -> Site:
        tag = tags[w]
        ndim = np.ndim(invals[w])
        axes = _channel_axes(eqn, w, ndim)
        if tag.leaf is not None:
            leaf = self.leaf_paths[tag.leaf]
            base, path = leaf, self.leaf_names[tag.leaf]
            leaf_axes = None if tag.axes is None or not axes else tuple(tag.axes[a] for a in axes)
        else:
            leaf, base, leaf_axes = None, f"{eqn.primitive.name}#{len(self.sites)}", None
            path = base
        k = self.uses.get(base, 0)
        self.uses[base] = k + 1
        name = base if k == 0 else f"{base}#{k}"
        path = path if k == 0 else f"{path}#{k}"
        return Site(
            name,
            leaf,
            eqn.primitive.name,
            w,
            axes,
            leaf_axes,
            tuple(np.shape(invals[1 - w])),
            tuple(np.shape(invals[w])),
            eqn.params.get("dimension_numbers"),
            path,
        )


def _layout_tag(eqn, tag: _Tag) -> _Tag:
    """The tag of a layout op's output: same leaf, axes permuted or lost."""
    if tag.leaf is None:
        return _Tag(tag.dep)
    name = eqn.primitive.name
    if name in _SAME_LAYOUT:
        return tag
    if name == "transpose" and tag.axes is not None:
        return _Tag(False, tag.leaf, tuple(tag.axes[p] for p in eqn.params["permutation"]))
    if name in ("reshape", "squeeze", "expand_dims", "broadcast_in_dim", "transpose"):
        return _Tag(False, tag.leaf, None)
    return _Tag(tag.dep)


def _eval(jaxpr, consts, args, tags, ctx: _Context):
    env, env_tags = {}, {}

    def read(v):
        return v.val if isinstance(v, jcore.Literal) else env[v]

    def tag_of(v):
        return _CONST if isinstance(v, jcore.Literal) else env_tags[v]

    for v, c in zip(jaxpr.constvars, consts, strict=True):
        env[v], env_tags[v] = c, _CONST
    for v, a, t in zip(jaxpr.invars, args, tags, strict=True):
        env[v], env_tags[v] = a, t
    spans, skipped = ctx.plan(jaxpr)
    for i, eqn in enumerate(jaxpr.eqns):
        if i in spans:
            span = spans[i]
            dep = _Tag(any(tag_of(v).dep for v in span.inputs))
            for v, val in zip(span.outputs, span.fn(*[read(v) for v in span.inputs]), strict=True):
                env[v], env_tags[v] = val, dep
            continue
        if i in skipped:
            continue
        invals = [read(v) for v in eqn.invars]
        intags = [tag_of(v) for v in eqn.invars]
        dep = any(t.dep for t in intags)
        name = eqn.primitive.name
        sub = call_body(eqn)
        if name in SITE_PRIMITIVES and len(invals) == 2 and intags[0].dep != intags[1].dep:
            w = 0 if intags[1].dep else 1
            site = ctx.site(eqn, w, intags, invals)
            ctx.sites.append(site)
            if ctx.hook is not None:
                a, wv = ctx.hook(len(ctx.sites) - 1, site, invals[1 - w], invals[w])
                invals[1 - w], invals[w] = a, wv
            outs, outtags = bind_equation(eqn, invals), [_DATA]
            if ctx.on_output is not None:
                outs = [ctx.on_output(site.path, outs[0])]
        elif name == MARKER_PRIMITIVE and ctx.on_output is not None:
            outs, outtags = [ctx.on_output(ctx.marker(eqn.params["name"]), bind_equation(eqn, invals)[0])], intags
        elif sub is not None and (
            any(t.leaf is not None for t in intags)
            or (dep and not all(t.dep for t in intags))
            or (ctx.on_output is not None and name not in _CUSTOM and ctx.contains_marker(sub[0]))
            or (name not in _CUSTOM and ctx.contains_span(sub[0]))
        ):
            # A weight enters the call next to data or alone, or a named value or a rewrite is inside: inline it.
            outs, outtags = _eval(sub[0], sub[1], invals, intags, ctx)
        else:
            outs = bind_equation(eqn, invals)
            if not dep and len(eqn.outvars) == 1 and len(intags) == 1:
                outtags = [_layout_tag(eqn, intags[0])]
            else:
                outtags = [_Tag(dep)]
                # jaxprs_in_params also looks inside tuples (cond's branches), not only at scan's body
                if any(t.leaf is not None for t in intags) and any(True for _ in jcore.jaxprs_in_params(eqn.params)):
                    ctx.skipped.append(name)
        if len(outtags) == 1 and len(eqn.outvars) > 1:
            outtags = outtags * len(eqn.outvars)
        for v, val, t in zip(eqn.outvars, outs, outtags, strict=True):
            if not isinstance(v, jcore.DropVar):
                env[v], env_tags[v] = val, t
    return [read(v) for v in jaxpr.outvars], [tag_of(v) for v in jaxpr.outvars]


def _split_kw(kw: dict) -> tuple[dict, dict]:
    """Array keyword arguments are traced inputs; everything else is static."""
    dyn = {k: v for k, v in kw.items() if isinstance(v, (jax.Array, np.ndarray))}
    return {k: v for k, v in kw.items() if k not in dyn}, dyn


def _run(
    fn, params, x, kw: dict, hook: Hook | None, on_output: OutputHook | None = None, rewrite: Rewrite | None = None
) -> tuple[Any, _Context]:
    """Trace ``fn(params, x, **kw)`` and evaluate it with ``hook`` at every site."""
    static, dyn = _split_kw(kw)
    pleaves, ptree = jax.tree_util.tree_flatten_with_path(params)
    leaf_paths = [jax.tree_util.keystr(p) for p, _ in pleaves]
    leaf_names = [jax.tree_util.keystr(p, simple=True, separator="/") for p, _ in pleaves]
    n = len(pleaves)

    def flat_fn(*flat):
        p = jax.tree.unflatten(ptree, flat[:n])
        xx, d = jax.tree.unflatten(data_tree, flat[n:])
        return fn(p, xx, **static, **d)

    data_leaves, data_tree = jax.tree.flatten((x, dyn))
    flat = [leaf for _, leaf in pleaves] + data_leaves
    closed, out_shape = jax.make_jaxpr(flat_fn, return_shape=True)(*flat)
    ctx = _Context(leaf_paths, leaf_names, hook, on_output, rewrite)
    tags = [_Tag(False, i, tuple(range(np.ndim(a)))) for i, a in enumerate(flat[:n])] + [_DATA] * len(data_leaves)
    outs, _ = _eval(closed.jaxpr, closed.consts, flat, tags, ctx)
    if ctx.skipped:
        warnings.warn(
            f"hamjax.jaxpr.intercept: weights flow into {sorted(set(ctx.skipped))}, whose inner ops are not rewritten",
            stacklevel=3,
        )
    return jax.tree.unflatten(jax.tree.structure(out_shape), outs), ctx


def intercept(
    apply_fn, hook: Hook | None = None, *, on_output: OutputHook | None = None, rewrite: Rewrite | None = None
):
    """A function transform: ``apply_fn`` with ``hook`` called at every site.

    ``hook(index, site, activation, weight) -> (activation, weight)`` may
    read or replace either operand of each site (record statistics of it,
    fake-quantize it, factorise or mask the weight). ``on_output(name,
    value) -> value`` sees, and may replace, every named intermediate: each
    site's output (named by :attr:`Site.path`) and each value marked with
    ``jax.ad_checkpoint.checkpoint_name`` (named by its name, ``"#k"`` added
    for repeats); calls that hold a marked value are inlined (except
    ``custom_jvp``/``custom_vjp`` functions, whose gradient rule inlining
    would drop). ``rewrite(jaxpr) -> spans`` replaces groups of equations
    by functions (:class:`Span`; graph rewrites such as attention fusion):
    it is asked once per jaxpr evaluated, and calls holding a span are
    inlined. The result speaks the same protocol as ``apply_fn``: a
    :class:`hamjax.ApplyFn` stays one (train mode, dropout keys and updated
    batch statistics work). The jaxpr is traced at each call, so call the
    result under ``jax.jit``.

    Args:
      apply_fn: any apply function of the contract.
      hook: the operand callback, or ``None``; it runs while tracing, on
        traced arrays.
      on_output: the output callback, or ``None``.
      rewrite: the equation-group rewrite, or ``None``.

    Returns:
      The rewritten apply function.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from hamjax import jaxpr
      >>> def f(p, x):
      ...     return jnp.tanh(x @ p["w1"]) @ p["w2"]
      >>> params = {"w1": jnp.ones((3, 4)), "w2": jnp.ones((4, 2))}
      >>> doubled = jaxpr.intercept(f, lambda i, site, a, w: (2 * a, w))
      >>> bool(jnp.allclose(doubled(params, jnp.ones((1, 3))), 2 * jnp.tanh(jnp.full((1, 4), 6.0)) @ params["w2"]))
      True
    """
    if isinstance(apply_fn, ApplyFn):
        inner = apply_fn.fn

        def fn(variables, x, *, train, rng, mutable, **kw):
            call = functools.partial(inner, train=train, mutable=mutable)
            return _run(
                lambda p, xx, **k: call(p, xx, **k), variables, x, {"rng": rng, **kw}, hook, on_output, rewrite
            )[0]

        return ApplyFn(fn, apply_fn.collections)

    @functools.wraps(apply_fn)
    def rewritten(params, x, **kw):
        return _run(apply_fn, params, x, kw, hook, on_output, rewrite)[0]

    return rewritten
