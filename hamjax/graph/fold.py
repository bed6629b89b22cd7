"""Batch-norm folding: a per-channel affine after a convolution or dense layer moves into its kernel and bias.

An inference-mode batch norm computes ``(z - mean) * rsqrt(var + eps) *
gamma + beta`` on a layer's output ``z = conv(x, W) + b``: per output
channel, ``z * s + t``. Folding rewrites ``W`` into ``W * s`` (scaled along
its output-channel axis) and the bias into ``t``, so the model computes
``conv(x, W * s) + t``: the same function, with the normalisation (and any
other per-channel ``add``/``sub``/``mul``/``div`` by params-only values)
gone from the jaxpr and from the exported graph. It works on what the model
lowers to, so Flax NNX and Linen batch norms and hand-written ``jax.numpy``
affines fold alike.

The analysis walks the jaxpr that :func:`hamjax.jaxpr.intercept` evaluates
(calls that take weights are inlined there): from each site
(:class:`hamjax.jaxpr.Site`) whose weight is one params leaf it follows the
chain of element-wise ``add``/``sub``/``mul``/``div``/``neg`` whose other
operand is computed from params only and varies along the output-channel
axis only. The folded model re-evaluates the same jaxpr with each chain
replaced by one bias add and the equations nothing reads any more left out.
Folding is done at inference: the folded model has no batch statistics and
no train mode. Run it before quantization, so calibration sees the folded
weights.

References:
  Jacob et al., "Quantization and Training of Neural Networks for Efficient
  Integer-Arithmetic-Only Inference", CVPR 2018 (section 3.2, batch-norm folding).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.extend.core as jcore
import jax.numpy as jnp
import numpy as np

from hamjax.jaxpr import SITE_PRIMITIVES, bind_equation, find_sites, intercept

_AFFINE = {"add", "sub", "mul", "div", "neg"}
_REDUCTIONS = {"reduce_sum", "reduce_max", "reduce_min", "reduce_prod", "argmax", "argmin"}
_LAYOUT = {"reshape", "transpose", "convert_element_type", "broadcast_in_dim", "squeeze", "expand_dims", "copy"}


@dataclasses.dataclass(frozen=True)
class FoldedSite:
    """One layer whose following per-channel affine was folded into it.

    Attributes:
      site: the layer's :attr:`hamjax.jaxpr.Site.name` (its kernel's key path).
      ops: the primitives of the folded chain, in order (``("add", "sub", "mul", "add")``
        for a biased convolution and a batch norm).
      kernel: the folded kernel's ``/``-joined path in the folded params.
      bias: the folded bias's ``/``-joined path in the folded params.
    """

    site: str
    ops: tuple[str, ...]
    kernel: str
    bias: str


@dataclasses.dataclass(frozen=True)
class _Chain:
    ordinal: int  # which site, in evaluation order
    ops: tuple[str, ...]
    out_axis: int


def _flat_jaxpr(apply_fn, template, x, kw):
    """The jaxpr ``intercept`` evaluates (calls that take weights inlined), params invars first."""
    leaves, tree = jax.tree.flatten(template)

    def flat_fn(flat, xx):
        return intercept(apply_fn)(jax.tree.unflatten(tree, flat), xx, **kw)

    closed, out_shape = jax.make_jaxpr(flat_fn, return_shape=True)(leaves, x)
    return closed, len(leaves), jax.tree.structure(out_shape)


def _consumers(jaxpr) -> dict:
    users: dict = {}
    for i, e in enumerate(jaxpr.eqns):
        for v in e.invars:
            if not isinstance(v, jcore.Literal):
                users.setdefault(v, []).append(i)
    return users


def _outvars(jaxpr) -> set:
    return {v for v in jaxpr.outvars if not isinstance(v, jcore.Literal)}


def _site_eqns(jaxpr, n: int) -> list[tuple[int, int]]:
    """``(equation index, weight operand)`` of every site, in order, by the inputs each value depends on."""
    dep = {v: k >= n for k, v in enumerate(jaxpr.invars)}
    found = []
    for i, e in enumerate(jaxpr.eqns):
        d = [False if isinstance(v, jcore.Literal) else dep.get(v, False) for v in e.invars]
        for v in e.outvars:
            dep[v] = any(d)
        if e.primitive.name in SITE_PRIMITIVES and len(d) == 2 and d[0] != d[1]:
            found.append((i, 0 if d[1] else 1))
    return found


def _site_out_axis(eqn, weight_operand: int) -> int | None:
    out_ndim = eqn.outvars[0].aval.ndim
    if eqn.primitive.name == "conv_general_dilated":
        return eqn.params["dimension_numbers"].out_spec[1] if weight_operand == 1 else None
    contract, batch = eqn.params["dimension_numbers"]
    w_free = eqn.invars[weight_operand].aval.ndim - len(contract[weight_operand]) - len(batch[weight_operand])
    if w_free != 1 or batch[0]:
        return None
    return out_ndim - 1 if weight_operand == 1 else 0


def _channel_vector(value, shape, axis) -> np.ndarray | None:
    """``value`` as one number per channel of an output of ``shape``, or ``None`` when it varies elsewhere."""
    c = np.asarray(value, np.float64)
    n = shape[axis]
    if c.ndim == 0:
        return np.full(n, float(c))
    if c.ndim != len(shape) or any(c.shape[i] != 1 for i in range(len(shape)) if i != axis):
        return None
    if c.shape[axis] not in (1, n):
        return None
    return np.broadcast_to(c.reshape(-1), (n,)).copy()


def _check_train_mode(jaxpr, users, var, site_name):
    for i in users.get(var, ()):
        e = jaxpr.eqns[i]
        if e.primitive.name in _REDUCTIONS and 0 in tuple(e.params.get("axes", ())):
            raise ValueError(
                f"fold: the norm at {site_name!r} uses batch statistics (train mode); fold needs inference mode"
            )


def _only_feeds(jaxpr, users, outvars, var, site_index: int) -> bool:
    """Whether ``var`` reaches nothing but the site's equation, through layout ops (a kernel read nowhere else)."""
    todo = [var]
    while todo:
        v = todo.pop()
        if v in outvars:
            return False
        for i in users.get(v, ()):
            e = jaxpr.eqns[i]
            if i == site_index:
                continue
            if e.primitive.name not in _LAYOUT:
                return False
            todo.extend(e.outvars)
    return True


def _walk(jaxpr, users, outvars, start, ops=None) -> list[int]:
    """The single-consumer, shape-keeping affine equations after ``start``; ``ops`` replays a recorded chain."""
    chain, v = [], start
    while v not in outvars and len(users.get(v, ())) == 1:
        e = jaxpr.eqns[users[v][0]]
        if ops is not None and (len(chain) == len(ops) or e.primitive.name != ops[len(chain)]):
            break
        if e.primitive.name not in _AFFINE or e.outvars[0].aval.shape != v.aval.shape:
            break
        chain.append(users[v][0])
        v = e.outvars[0]
    return chain


def _compose(jaxpr, chain, start, axis, is_dep, value):
    """Per-channel ``(s, t)`` with ``chain(z) == z * s + t``, over the longest prefix of ``chain`` that is affine."""
    n = start.aval.shape[axis]
    s, t, kept, v = np.ones(n), np.zeros(n), [], start
    for j in chain:
        f = jaxpr.eqns[j]
        name = f.primitive.name
        if name == "neg":
            s, t = -s, -t
        else:
            k = 1 if f.invars[0] is v else 0
            other = f.invars[k]
            if is_dep(other):
                break
            c = _channel_vector(value(other), start.aval.shape, axis)
            if c is None or (name == "div" and (k == 0 or np.any(c == 0))):
                break
            if name == "add":
                t = t + c
            elif name == "sub":
                s, t = (s, t - c) if k == 1 else (-s, c - t)
            elif name == "mul":
                s, t = s * c, t * c
            else:
                s, t = s / c, t / c
        kept.append(j)
        v = f.outvars[0]
    return kept, s, t


def _analyse(apply_fn, params, x, kw):
    """The foldable chains of the model with their per-channel scale and shift, and the folded jaxpr's live leaves."""
    closed, n, _ = _flat_jaxpr(apply_fn, params, x, kw)
    jaxpr = closed.jaxpr
    sites = find_sites(apply_fn, params, x, **kw)
    site_eqns = _site_eqns(jaxpr, n)
    if len(sites) != len(site_eqns):
        raise ValueError(f"fold: found {len(sites)} sites but {len(site_eqns)} weighted ops in the jaxpr")
    leaf_values = jax.tree.leaves(params)
    values = dict(zip(jaxpr.constvars, closed.consts, strict=True))
    values.update(zip(jaxpr.invars[:n], leaf_values, strict=True))
    dep = {v: k >= n for k, v in enumerate(jaxpr.invars)}
    dep.update((v, False) for v in jaxpr.constvars)

    def is_dep(v):
        return False if isinstance(v, jcore.Literal) else dep[v]

    def value(v):
        return v.val if isinstance(v, jcore.Literal) else values[v]

    for e in jaxpr.eqns:  # params-only values, computed once, for the chains' constants
        d = any(is_dep(v) for v in e.invars)
        dep.update((v, d) for v in e.outvars)
        if not d:
            values.update(zip(e.outvars, bind_equation(e, [value(v) for v in e.invars]), strict=True))
    users, outvars = _consumers(jaxpr), _outvars(jaxpr)
    uses: dict = {}
    for site in sites:
        uses[site.leaf] = uses.get(site.leaf, 0) + 1
    keys = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    found = []
    for ordinal, (site, (i, w)) in enumerate(zip(sites, site_eqns, strict=True)):
        e = jaxpr.eqns[i]
        out = e.outvars[0]
        chain = _walk(jaxpr, users, outvars, out)
        for v in [out, *(jaxpr.eqns[j].outvars[0] for j in chain)]:
            _check_train_mode(jaxpr, users, v, site.name)
        axis = _site_out_axis(e, w)
        if site.leaf is None or uses[site.leaf] != 1 or axis is None or not site.leaf_channel_axes:
            continue
        if not _only_feeds(jaxpr, users, outvars, jaxpr.invars[keys.index(site.leaf)], i):
            continue  # the kernel is also read by another op, which a scaled kernel would change
        chain, s, t = _compose(jaxpr, chain, out, axis, is_dep, value)
        if not chain or [jaxpr.eqns[j].primitive.name for j in chain] == ["add"]:
            continue  # nothing to fold, or a bias add only
        ops = tuple(jaxpr.eqns[j].primitive.name for j in chain)
        found.append((_Chain(ordinal, ops, axis), keys.index(site.leaf), site, s, t))
    return jaxpr, n, found


def _plan(jaxpr, n: int, chains) -> tuple[dict, set]:
    """``{last chain equation: (site output var, chain)}`` and the live equations once chains are replaced."""
    users, outvars, site_eqns = _consumers(jaxpr), _outvars(jaxpr), _site_eqns(jaxpr, n)
    skip, replaced = set(), {}
    for ch in chains:
        out = jaxpr.eqns[site_eqns[ch.ordinal][0]].outvars[0]
        found = _walk(jaxpr, users, outvars, out, ch.ops)
        if len(found) != len(ch.ops):
            raise ValueError("fold: the model's jaxpr differs on this input from the one it was folded on")
        skip.update(found)
        replaced[found[-1]] = (out, ch)
    needed, live = set(outvars), set()
    for i in range(len(jaxpr.eqns) - 1, -1, -1):
        e = jaxpr.eqns[i]
        if (i in skip and i not in replaced) or not any(v in needed for v in e.outvars):
            continue
        live.add(i)
        ins = [replaced[i][0]] if i in replaced else e.invars
        needed.update(v for v in ins if not isinstance(v, jcore.Literal))
    return replaced, live


def _used_invars(jaxpr, n: int, live: set, replaced: dict) -> list[int]:
    read = set()
    for i in live:
        read.update(
            v for v in ([replaced[i][0]] if i in replaced else jaxpr.eqns[i].invars) if not isinstance(v, jcore.Literal)
        )
    return [k for k in range(n) if jaxpr.invars[k] in read]


def _nest(flat: dict) -> dict:
    out: dict = {}
    for path, v in flat.items():
        *parents, last = path.split("/")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = v
    return out


def _bias_path(kernel: str, taken) -> str:
    parent = kernel.rsplit("/", 1)[0] + "/" if "/" in kernel else ""
    path = parent + "bias"
    return path if path not in taken else parent + "folded_bias"


def _check_kw(kw: dict) -> None:
    if kw.get("train"):
        raise ValueError(
            "fold: train=True makes every norm use batch statistics (train mode); fold needs inference mode"
        )
    if kw.get("mutable"):
        raise ValueError("fold: mutable=True updates batch statistics (train mode); fold needs inference mode")


def _fold(apply_fn, params, x, kw):
    _check_kw(kw)
    jaxpr, n, found = _analyse(apply_fn, params, x, kw)
    leaves_with_path = jax.tree_util.tree_flatten_with_path(params)[0]
    names = [jax.tree_util.keystr(p, simple=True, separator="/") or "kernel" for p, _ in leaves_with_path]
    values = [v for _, v in leaves_with_path]
    replaced, live = _plan(jaxpr, n, [f[0] for f in found])
    flat = {names[k]: values[k] for k in _used_invars(jaxpr, n, live, replaced)}
    folded, biases = [], {}
    for chain, leaf, site, s, t in found:
        w = np.asarray(values[leaf], np.float64)
        shape = [1] * w.ndim
        shape[site.leaf_channel_axes[0]] = -1
        flat[names[leaf]] = jnp.asarray(w * s.reshape(shape), values[leaf].dtype)
        bias = _bias_path(names[leaf], flat)
        flat[bias] = jnp.asarray(t, values[leaf].dtype)
        biases[chain.ordinal] = bias
        folded.append(FoldedSite(site.name, chain.ops, names[leaf], bias))
    return [f[0] for f in found], names, biases, _nest(flat), tuple(folded)


def foldable(apply_fn, params, x, **kw) -> tuple[FoldedSite, ...]:
    """The layers :func:`fold` would fold, and the ops it would remove after each, without folding.

    Args:
      apply_fn: any apply function of the contract, in inference mode.
      params: its params (concrete arrays: the chains' constants are read).
      x: an example input (its batch size does not matter).
      **kw: keyword arguments for ``apply_fn``.

    Returns:
      One :class:`FoldedSite` per folded layer, in evaluation order.

    Raises:
      ValueError: as :func:`fold`.

    Examples:
      >>> import jax.numpy as jnp
      >>> from hamjax import graph
      >>> f = lambda p, x: (x @ p["w"] - p["mean"][None]) * p["scale"][None]
      >>> p = {"w": jnp.ones((3, 2)), "mean": jnp.ones(2), "scale": jnp.full(2, 2.0)}
      >>> [(s.site, s.ops, s.bias) for s in graph.foldable(f, p, jnp.ones((4, 3)))]
      [("['w']", ('sub', 'mul'), 'bias')]
    """
    return _fold(apply_fn, params, x, kw)[-1]


def fold(apply_fn, params, x, **kw):
    """Fold every per-channel affine (an inference-mode batch norm) after a layer into its kernel and bias.

    For a layer ``z = conv(x, W)`` (or ``x @ W``) followed by element-wise
    ``add``/``sub``/``mul``/``div``/``neg`` by params-only values that vary
    along the output-channel axis only, so that the chain computes
    ``z * s + t``, the folded model computes ``conv(x, W * s) + t``. The
    folded params keep every leaf the folded model still reads (the batch
    statistics and norm scales are gone), the folded kernels at their
    paths, and each layer's bias at ``.../bias`` (``.../folded_bias`` when
    that path holds another leaf). Layers whose kernel is shared, or whose
    output is not followed by such a chain, stay as they are.

    Args:
      apply_fn: any apply function of the contract (Flax NNX through
        :func:`hamjax.functional`, Linen through
        :func:`hamjax.linen_functional`, plain ``jax.numpy``), called in
        inference mode.
      params: its params (concrete arrays).
      x: an example input: the folded model takes any batch size.
      **kw: static keyword arguments for ``apply_fn``, baked into the folded model.

    Returns:
      ``(folded_apply, folded_params)``: ``folded_apply(folded_params, x)``
      is a plain apply function (no train mode) equal to
      ``apply_fn(params, x, **kw)`` within float rounding; with nothing to
      fold, ``(apply_fn, params)`` unchanged.

    Raises:
      ValueError: ``train=True`` or ``mutable=True`` in ``kw`` (at once), or
        a norm that computes statistics over the batch ("fold: the norm at
        ... uses batch statistics (train mode); fold needs inference mode").

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from hamjax import graph
      >>> def f(p, x):
      ...     z = x @ p["w"] + p["b"][None]
      ...     return jax.nn.relu((z - p["mean"][None]) * jax.lax.rsqrt(p["var"][None] + 1e-5) * p["g"][None])
      >>> p = {"w": jnp.ones((3, 2)), "b": jnp.ones(2), "mean": jnp.ones(2), "var": jnp.full(2, 4.0),
      ...      "g": jnp.full(2, 2.0)}
      >>> folded_apply, folded_params = graph.fold(f, p, jnp.ones((1, 3)))
      >>> sorted(folded_params)
      ['bias', 'w']
      >>> x = jnp.arange(6.0).reshape(2, 3)
      >>> bool(jnp.allclose(folded_apply(folded_params, x), f(p, x), rtol=1e-5))
      True
    """
    chains, names, biases, folded_params, folded = _fold(apply_fn, params, x, kw)
    if not folded:
        return apply_fn, params
    tree, leaves = jax.tree.structure(params), [(np.shape(a), a.dtype) for a in jax.tree.leaves(params)]

    def folded_apply(fparams, x):
        given = {
            jax.tree_util.keystr(p, simple=True, separator="/"): v
            for p, v in jax.tree_util.tree_flatten_with_path(fparams)[0]
        }
        # Traced with the given leaves' dtypes (folded params cast to bf16 run in bf16); the folded-away
        # leaves take the given floating dtype when there is one.
        floats = {jnp.dtype(v.dtype) for v in given.values() if jnp.issubdtype(v.dtype, jnp.floating)}
        common = floats.pop() if len(floats) == 1 else None

        def spec(shape, dtype, name):
            if name in given:
                return jax.ShapeDtypeStruct(shape, given[name].dtype)
            return jax.ShapeDtypeStruct(shape, common if common and jnp.issubdtype(dtype, jnp.floating) else dtype)

        template = jax.tree.unflatten(tree, [spec(*leaf, name) for leaf, name in zip(leaves, names, strict=True)])
        closed, n, out_tree = _flat_jaxpr(apply_fn, template, x, kw)
        jaxpr = closed.jaxpr
        replaced, live = _plan(jaxpr, n, chains)
        env = dict(zip(jaxpr.constvars, closed.consts, strict=True))
        env.update((v, given[name]) for v, name in zip(jaxpr.invars[:n], names, strict=True) if name in given)
        env.update(zip(jaxpr.invars[n:], jax.tree.leaves(x), strict=True))

        def read(v):
            return v.val if isinstance(v, jcore.Literal) else env[v]

        for i in sorted(live):
            e = jaxpr.eqns[i]
            if i in replaced:
                out, chain = replaced[i]
                z = env[out]
                shape = [1] * z.ndim
                shape[chain.out_axis] = -1
                env[e.outvars[0]] = z + jnp.reshape(given[biases[chain.ordinal]], shape).astype(z.dtype)
                continue
            outs = bind_equation(e, [read(v) for v in e.invars])
            env.update((v, o) for v, o in zip(e.outvars, outs, strict=True) if not isinstance(v, jcore.DropVar))
        return jax.tree.unflatten(out_tree, [read(v) for v in jaxpr.outvars])

    return folded_apply, folded_params
