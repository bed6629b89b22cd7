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
import numpy as np
from jax.interpreters import ad, batching, mlir

from hamjax import quant_graph

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
    here = {os.path.abspath(__file__), os.path.abspath(quant_graph.__file__)}
    for frame in frames:
        if not any(s in frame.file_name for s in libraries) and os.path.abspath(frame.file_name) not in here:
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
    """``fn``'s jaxpr for one input of ``spec``; its output must be one array."""
    try:
        closed, out = jax.make_jaxpr(fn, return_shape=True)(spec)
    except Exception as err:
        raise ExportError(f"export: tracing the model on input {spec.shape} {spec.dtype} failed: {err}") from err
    if len(jax.tree.leaves(out)) != 1:
        raise ExportError(f"export: the model must return one array, got {jax.tree.structure(out)}")
    return closed


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
