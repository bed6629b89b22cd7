"""Trace a function to a jaxpr with a symbolic batch and convert it to ONNX through jax2onnx.

The function is traced by JAX first (``jax.make_jaxpr`` with the batch as
the symbolic dimension ``B``), so what is exported is exactly the program
JAX runs: Flax modules, ``jit`` and ``custom_jvp`` calls have already been
reduced to primitives. Before conversion one walk over the jaxpr (:func:`check`)
refuses what cannot export: a primitive jax2onnx has no lowering for, random
numbers and FFTs (:data:`REFUSED`) and complex arithmetic, each named with
the line of user code that produced it, instead of failing deep in the
converter or in onnxruntime.
The jaxpr is then re-evaluated under jax2onnx's tracer; nothing the caller
has jitted is touched, so jit caches stay valid.

:func:`tag` marks a value with a name that survives conversion as the
output name of an ONNX ``Identity`` node (``hamjax_tag__NAME``); the int8
exporter rewrites those nodes into quantize/dequantize operators.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from typing import Any

import jax
import jax.extend.core as jcore
import jax.numpy as jnp
import numpy as np
from jax.extend.source_info_util import user_context
from jax.interpreters import ad, batching, mlir

from hamjax.export import attention
from hamjax.jaxpr import bind_equation, call_body, interpret

TAG_PRIMITIVE = "hamjax_export_tag"
TAG_PREFIX = "hamjax_tag__"
OPSET = 23

# Primitives refused before conversion, by family: (the primitives, why). jax2onnx has plugins for
# some of them, but random bits lower only for static shapes (and an exported model must not depend
# on a draw), and the FFT lowering makes complex tensors onnxruntime refuses to load.
REFUSED: dict[str, tuple[frozenset[str], str]] = {
    "random": (
        frozenset(
            {
                "random_seed",
                "random_bits",
                "random_wrap",
                "random_unwrap",
                "random_split",
                "random_fold_in",
                "random_clone",
                "random_gamma",
                "threefry2x32",
                "threefry4x32",
                "iota_2x32_shape",  # the counters threefry hashes
                "rng_bit_generator",
                "rng_uniform",
            }
        ),
        "random numbers (an exported model must be deterministic: export it in eval mode, dropout off, "
        "with no jax.random call inside the model)",
    ),
    "fft": (
        frozenset({"fft"}),
        "FFT (jnp.fft; its ONNX form needs complex tensors, which onnxruntime cannot run)",
    ),
}
COMPLEX_REASON = "complex numbers (onnxruntime has no complex tensors; compute real and imaginary parts as real arrays)"
NO_LOWERING_REASON = "jax2onnx cannot lower these primitives"
_UNKNOWN = "unknown location"

_tag_p = jcore.Primitive(TAG_PRIMITIVE)
_tag_p.def_impl(lambda x, *, tag: x)
_tag_p.def_abstract_eval(lambda aval, *, tag: aval)
# An identity everywhere else, so tagged functions still jit, vmap and differentiate.
mlir.register_lowering(_tag_p, mlir.lower_fun(lambda x, *, tag: x, multiple_results=False))
batching.primitive_batchers[_tag_p] = lambda args, dims, *, tag: (_tag_p.bind(args[0], tag=tag), dims[0])
ad.deflinear2(_tag_p, lambda ct, x, *, tag: [ct])


class ExportError(ValueError):
    """A function or model that cannot be exported, or an export whose check failed; the message says why."""


def tag(x, name: str):
    """``x`` unchanged, marked so that its ONNX value is named ``hamjax_tag__<name>``."""
    if not name.isidentifier():
        raise ValueError(f"tag: name must be an identifier, got {name!r}")
    return _tag_p.bind(x, tag=name)


@functools.cache
def _register_tag_plugin() -> None:
    """Teach jax2onnx to lower :func:`tag` to an ``Identity`` whose output carries the tag."""
    from jax2onnx.plugins._ir_shapes import _ensure_value_metadata, _stamp_type_and_shape
    from jax2onnx.plugins.plugin_system import PrimitiveLeafPlugin, register_primitive

    @register_primitive(jaxpr_primitive=TAG_PRIMITIVE, since="hamjax", context="hamjax", component="tag", testcases=[])
    class _TagPlugin(PrimitiveLeafPlugin):
        def lower(self, ctx, eqn) -> None:
            inp = ctx.get_value_for_var(eqn.invars[0], name_hint=ctx.fresh_name("tag_in"))
            spec = ctx.get_value_for_var(eqn.outvars[0], name_hint=ctx.fresh_name("tag_out"))
            out = ctx.builder.Identity(inp, _outputs=[TAG_PREFIX + eqn.params["tag"]])
            out.type = getattr(spec, "type", None) or inp.type
            _stamp_type_and_shape(out, tuple(eqn.outvars[0].aval.shape))
            _ensure_value_metadata(ctx, out)
            ctx.bind_value_for_var(eqn.outvars[0], out)


def input_spec(example, *, dynamic_batch: bool = True) -> jax.ShapeDtypeStruct:
    """The traced input: ``example``'s shape and dtype, with a symbolic batch ``B`` if ``dynamic_batch``."""
    example = np.asarray(example) if not hasattr(example, "shape") else example
    shape = tuple(example.shape)
    if not shape:
        raise ExportError("export: example_input must have a leading batch axis, got a scalar")
    if dynamic_batch:
        (batch,) = jax.export.symbolic_shape("B")
        shape = (batch, *shape[1:])
    return jax.ShapeDtypeStruct(shape, example.dtype)


def _where(eqn) -> str:
    """The innermost frame of user code (not JAX, Flax or jax2onnx) that produced ``eqn``."""
    frames = getattr(getattr(eqn.source_info, "traceback", None), "frames", None) or []
    libraries = (f"{os.sep}jax{os.sep}", f"{os.sep}flax{os.sep}", f"{os.sep}jax2onnx{os.sep}")
    # hamjax/export/ (this exporter) and hamjax/jaxpr/ (its interpreter) are not user code either
    ours = (os.path.dirname(os.path.abspath(__file__)), os.path.dirname(os.path.abspath(interpret.__file__)))
    for frame in frames:
        path = os.path.abspath(frame.file_name)
        if not any(s in frame.file_name for s in libraries) and os.path.dirname(path) not in ours:
            return f"{frame.file_name}:{frame.line_num} ({frame.function_name})"
    return _UNKNOWN


def _is_complex(var) -> bool:
    dtype = getattr(getattr(var, "aval", None), "dtype", None)
    return dtype is not None and jnp.issubdtype(dtype, jnp.complexfloating)


def refusals(closed: jcore.ClosedJaxpr) -> dict[str, list[str]]:
    """Why ``closed`` cannot be exported: ``{reason: ["primitive at file:line (function)", ...]}``.

    One walk over the jaxpr and every jaxpr nested in it. An equation inside
    a ``jit`` or control-flow body whose own traceback holds no user code
    takes the line of the call that encloses it. Each primitive is named once
    per reason, at its first occurrence. Complex values are named by the
    equations that make them from real ones (a complex constant: by those
    that use it). Primitives without a jax2onnx lowering are looked up only
    when nothing else is refused: the lookup loads every jax2onnx plugin
    (seconds, once per process), which a model refused anyway need not wait
    for.

    Args:
      closed: a traced model (:func:`trace`).

    Returns:
      A dict from the reason (:data:`NO_LOWERING_REASON`, a :data:`REFUSED`
      family's reason, :data:`COMPLEX_REASON`) to the equations refused for
      it, in program order; empty if the model can be converted.

    Examples:
      >>> import jax.numpy as jnp, numpy as np
      >>> from hamjax.export import graph
      >>> spec = graph.input_spec(np.ones((2, 4), np.float32))
      >>> graph.refusals(graph.trace(jnp.tanh, spec))
      {}
      >>> [reason.split()[0] for reason in graph.refusals(graph.trace(lambda x: jnp.fft.fft(x).real, spec))]
      ['FFT', 'complex']
    """
    family = {name: reason for names, reason in REFUSED.values() for name in names}
    found: dict[str, dict[str, str]] = {}
    every: dict[str, str] = {}  # every other primitive, for the lowering lookup
    made, used = {}, {}  # complex values: equations that make them from real inputs, and the others

    def walk(jaxpr, outer: str) -> None:
        for eqn in jaxpr.eqns:
            name, where = eqn.primitive.name, _where(eqn)
            where = outer if where == _UNKNOWN else where
            subs = list(jcore.jaxprs_in_params(eqn.params))
            if name in family:
                found.setdefault(family[name], {}).setdefault(name, where)
                continue
            every.setdefault(name, where)
            if not subs and any(_is_complex(v) for v in eqn.outvars):
                (used if any(_is_complex(v) for v in eqn.invars) else made).setdefault(name, where)
            elif not subs and any(_is_complex(v) for v in eqn.invars):
                used.setdefault(name, where)
            for sub in subs:
                walk(sub, where)

    walk(closed.jaxpr, _UNKNOWN)
    if made or used:
        found[COMPLEX_REASON] = made or used
    if not found:
        from jax2onnx.plugins.plugin_system import PLUGIN_REGISTRY, import_all_plugins

        import_all_plugins()
        _register_tag_plugin()
        missing = {name: where for name, where in every.items() if name not in PLUGIN_REGISTRY}
        if missing:
            found[NO_LOWERING_REASON] = missing
    order = [NO_LOWERING_REASON, *(reason for _, reason in REFUSED.values()), COMPLEX_REASON]
    return {r: [f"{n} at {w}" for n, w in found[r].items()] for r in order if r in found}


def unsupported(closed: jcore.ClosedJaxpr) -> list[str]:
    """``"primitive at file:line (function)"`` for every equation of ``closed`` :func:`refusals` refuses."""
    return [entry for entries in refusals(closed).values() for entry in entries]


def check(closed: jcore.ClosedJaxpr) -> None:
    """Raise :class:`ExportError` naming every primitive :func:`refusals` refuses, with its line; else nothing.

    Args:
      closed: a traced model (:func:`trace`).

    Raises:
      ExportError: one line, each reason followed by its primitives.

    Examples:
      >>> import jax, numpy as np
      >>> from hamjax.export import graph
      >>> spec = graph.input_spec(np.ones((2, 4), np.float32))
      >>> graph.check(graph.trace(lambda x: x + jax.random.normal(jax.random.key(0), x.shape), spec))
      Traceback (most recent call last):
      ...
      hamjax.export.graph.ExportError: export: the model cannot be exported: random numbers (...): random_seed at ...
    """
    found = refusals(closed)
    if found:
        parts = "; ".join(f"{reason}: {', '.join(entries)}" for reason, entries in found.items())
        raise ExportError(f"export: the model cannot be exported: {parts}")


def trace(fn, spec: jax.ShapeDtypeStruct) -> jcore.ClosedJaxpr:
    """``fn``'s jaxpr for one input of ``spec``, pooling windows rewritten; its output must be one array."""
    try:
        with attention.whole_dot_product_attention():  # one ONNX Attention (hamjax.export.attention)
            closed, out = jax.make_jaxpr(fn, return_shape=True)(spec)
    except Exception as err:
        raise ExportError(f"export: tracing the model on input {spec.shape} {spec.dtype} failed: {err}") from err
    if len(jax.tree.leaves(out)) != 1:
        raise ExportError(f"export: the model must return one array, got {jax.tree.structure(out)}")
    if _has_pool(closed.jaxpr):
        closed = jax.make_jaxpr(lambda x: _eval_without_pools(closed.jaxpr, closed.consts, [x])[0])(spec)
    return closed


_POOLS = {"reduce_window_max": (jax.lax.max, -np.inf), "reduce_window_sum": (jax.lax.add, 0.0)}


def _has_pool(jaxpr) -> bool:
    return any(
        e.primitive.name in _POOLS or any(_has_pool(sub) for sub in jcore.jaxprs_in_params(e.params))
        for e in jaxpr.eqns
    )


def _pool_by_slices(eqn, x):
    """A max or sum pooling window as the max or sum of strided slices, one per window offset.

    jax2onnx lowers ``reduce_window_*`` on an NHWC array to a ``MaxPool`` over
    four spatial axes, which onnxruntime refuses ("Unsupported pooling
    size"); strided slices and elementwise max/add export everywhere and
    compute the same values.
    """
    p = eqn.params
    if any(d != 1 for d in (*p["base_dilation"], *p["window_dilation"])):
        return None
    combine, is_max = _POOLS[eqn.primitive.name][0], eqn.primitive.name == "reduce_window_max"
    out_shape = eqn.outvars[0].aval.shape
    # Gathers at fixed indices, not slices or pads: the batch axis is symbolic and jax2onnx needs constant
    # slice limits and pad shapes. Padding is read as the nearest edge value (the window's max is unchanged
    # as long as every window holds a real value) or masked to zero (a sum).
    parts = [x]
    windows = zip(p["window_dimensions"], p["window_strides"], p["padding"], strict=True)
    for axis, (size, stride, (lo, _)) in enumerate(windows):
        if size == 1 and stride == 1 and lo == 0:
            continue
        length = x.shape[axis]
        raw = [o - lo + stride * np.arange(out_shape[axis]) for o in range(size)]
        valid = [(r >= 0) & (r < length) for r in raw]
        if not np.all(np.any(valid, axis=0)):
            return None
        gathered = []
        for r, ok in zip(raw, valid, strict=True):
            taken = [jnp.take(part, np.clip(r, 0, length - 1), axis=axis) for part in parts]
            if not (is_max or ok.all()):
                mask = ok.astype(x.dtype).reshape([-1 if d == axis else 1 for d in range(x.ndim)])
                taken = [t * mask for t in taken]
            gathered += taken
        parts = gathered
    return functools.reduce(combine, parts)


def _eval_without_pools(jaxpr, consts, args) -> list:
    """Evaluate ``jaxpr`` with pooling windows computed by :func:`_pool_by_slices`; calls are inlined."""
    env = {}

    def read(v):
        return v.val if isinstance(v, jcore.Literal) else env[v]

    env.update(zip(jaxpr.constvars, consts, strict=True))
    env.update(zip(jaxpr.invars, args, strict=True))
    for eqn in jaxpr.eqns:
        invals = [read(v) for v in eqn.invars]
        body = call_body(eqn)
        # The rewritten jaxpr keeps each equation's user line (for check); an inlined body's equations
        # without one keep their caller's.
        known = _where(eqn) != _UNKNOWN
        with user_context(eqn.source_info.traceback) if known else contextlib.nullcontext():
            pooled = _pool_by_slices(eqn, invals[0]) if eqn.primitive.name in _POOLS else None
            if pooled is not None:
                outs = [pooled]
            elif body is not None and eqn.primitive.name not in ("custom_jvp_call", "custom_vjp_call"):
                outs = _eval_without_pools(body[0], body[1], invals)
            else:
                outs = bind_equation(eqn, invals)
        env.update(zip(eqn.outvars, outs, strict=True))
    return [read(v) for v in jaxpr.outvars]


@contextlib.contextmanager
def _quiet():
    # onnx_ir logs a warning for every shape value it leaves untyped; they are harmless.
    logger = logging.getLogger("onnx_ir")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def convert(closed: jcore.ClosedJaxpr, spec: jax.ShapeDtypeStruct, *, model_name: str = "hamjax_model") -> Any:
    """The ONNX ``ModelProto`` of ``closed`` (input ``input``, output ``output``).

    Raises:
      ExportError: a model :func:`check` refuses (each primitive named, with
        where it came from), or a conversion failure (naming the primitive
        being lowered where jax2onnx's traceback shows it).
    """
    from jax2onnx import to_onnx

    check(closed)
    # explicit attention becomes one ONNX Attention operator (hamjax.export.attention)
    attention.register_plugin()
    closed = attention.lower(closed, spec)
    run_all = jcore.jaxpr_as_fun(closed)

    def run(x):
        return run_all(x)[0]

    try:
        with _quiet():
            model = to_onnx(
                run, [spec], model_name=model_name, opset=OPSET, input_names=["input"], output_names=["output"]
            )
    except Exception as err:
        lines = str(err).strip().splitlines()
        raise ExportError(
            f"export: jax2onnx failed to convert the model{_lowering(err)}: "
            f"{type(err).__name__}: {lines[0] if lines else ''}"
        ) from err
    attention.simplify(model)
    drop_zero_gemm_bias(model)
    return model


def _lowering(err: BaseException) -> str:
    """`` while lowering PRIMITIVE at file:line``, read from jax2onnx's frames in ``err``'s traceback, or ``""``.

    jax2onnx lowers each equation in ``lower_equation_with_plugin(plugin, *,
    eqn, primitive_name, ...)``, nested for ``jit`` and control-flow bodies;
    the innermost such frame is the primitive that failed, and the innermost
    with user code in its equation's traceback the line. Another jax2onnx
    version without that frame gives ``""`` (the message then names no
    primitive rather than a guessed one).
    """
    name, where = None, _UNKNOWN
    tb = err.__traceback__
    while tb is not None:
        frame = tb.tb_frame
        if frame.f_code.co_name == "lower_equation_with_plugin" and "jax2onnx" in frame.f_code.co_filename:
            eqn, primitive = frame.f_locals.get("eqn"), frame.f_locals.get("primitive_name")
            if isinstance(eqn, jcore.JaxprEqn) and isinstance(primitive, str):
                name, at = primitive, _where(eqn)
                where = where if at == _UNKNOWN else at
        tb = tb.tb_next
    return "" if name is None else f" while lowering {name} at {where}"


def drop_zero_gemm_bias(model) -> None:
    """Remove the all-zero float32 ``C`` jax2onnx gives every ``Gemm`` (in place).

    It is a no-op in float32, has the wrong type in a float16 graph
    (onnxruntime rejects the model), and hides a ``Gemm`` from
    onnxruntime's int8 fusions.
    """
    from onnx import numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type != "Gemm" or len(node.input) < 3 or node.input[2] not in inits:
            continue
        beta = next((a.f for a in node.attribute if a.name == "beta"), 1.0)
        if beta == 0.0 or not np.any(numpy_helper.to_array(inits[node.input[2]])):
            del node.input[2]
            for a in [a for a in node.attribute if a.name == "beta"]:
                node.attribute.remove(a)
    prune(model)


def prune(model) -> None:
    """Remove nodes and initializers nothing reaches the outputs through (in place)."""
    graph = model.graph
    used = {o.name for o in graph.output}
    keep = []
    for node in reversed(graph.node):
        if any(o in used for o in node.output):
            keep.append(node)
            used.update(node.input)
    keep.reverse()
    del graph.node[:]
    graph.node.extend(keep)
    alive = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(alive)
