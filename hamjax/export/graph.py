"""Trace a function to a jaxpr with a symbolic batch and convert it to ONNX through jax2onnx.

The function is traced by JAX first (``jax.make_jaxpr`` with the batch as
the symbolic dimension ``B``), so what is exported is exactly the program
JAX runs: Flax modules, ``jit`` and ``custom_jvp`` calls have already been
reduced to primitives. Every primitive is checked against jax2onnx's
registry before conversion, so one it cannot lower is named, with the line
of user code that produced it, instead of failing deep in the converter.
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
from jax.interpreters import ad, batching, mlir

from hamjax.jaxpr import bind_equation, call_body, interpret

TAG_PRIMITIVE = "hamjax_export_tag"
TAG_PREFIX = "hamjax_tag__"
OPSET = 23

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
    here = os.path.abspath(__file__)
    interpreter = os.path.dirname(os.path.abspath(interpret.__file__))  # hamjax/jaxpr/, not user code either
    for frame in frames:
        path = os.path.abspath(frame.file_name)
        if not any(s in frame.file_name for s in libraries) and path != here and os.path.dirname(path) != interpreter:
            return f"{frame.file_name}:{frame.line_num} ({frame.function_name})"
    return "unknown location"


def _primitives(jaxpr, out: dict) -> dict:
    for eqn in jaxpr.eqns:
        out.setdefault(eqn.primitive.name, eqn)
        for sub in jcore.jaxprs_in_params(eqn.params):
            _primitives(sub, out)
    return out


def unsupported(closed: jcore.ClosedJaxpr) -> list[str]:
    """``"primitive at file:line"`` for every primitive of ``closed`` jax2onnx has no lowering for."""
    from jax2onnx.plugins.plugin_system import PLUGIN_REGISTRY, import_all_plugins

    import_all_plugins()
    _register_tag_plugin()
    found = _primitives(closed.jaxpr, {})
    return [f"{name} at {_where(eqn)}" for name, eqn in found.items() if name not in PLUGIN_REGISTRY]


def trace(fn, spec: jax.ShapeDtypeStruct) -> jcore.ClosedJaxpr:
    """``fn``'s jaxpr for one input of ``spec``, pooling windows rewritten; its output must be one array."""
    try:
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
      ExportError: a primitive jax2onnx cannot lower (named, with where it
        came from), or a conversion failure.
    """
    from jax2onnx import to_onnx

    missing = unsupported(closed)
    if missing:
        raise ExportError(f"export: jax2onnx cannot lower these primitives: {'; '.join(missing)}")

    run_all = jcore.jaxpr_as_fun(closed)

    def run(x):
        return run_all(x)[0]

    try:
        with _quiet():
            model = to_onnx(
                run, [spec], model_name=model_name, opset=OPSET, input_names=["input"], output_names=["output"]
            )
    except Exception as err:
        raise ExportError(f"export: jax2onnx failed to convert the model: {type(err).__name__}: {err}") from err
    drop_zero_gemm_bias(model)
    return model


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
