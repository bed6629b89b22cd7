"""Single jaxpr equations: which calls can be inlined, how to re-bind one, which ops consume a weight.

These are the pieces every walker of a jaxpr needs, whatever it rewrites:
the interpreter of :mod:`hamjax.jaxpr.interpret`, the ONNX exporter's
re-evaluation, and graph rewrites. A *site* (:class:`Site`) is an equation
whose one operand is computed from the inputs (the activation) and whose
other one is not (the weight: a params leaf, possibly reshaped, transposed
or computed from params and constants): a matrix product or a convolution
with a weight. Quantization, low-rank factorisation and structural pruning
all act at sites.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.extend.core as jcore

SITE_PRIMITIVES = ("dot_general", "conv_general_dilated")
"""The primitives that can be sites: matrix products and convolutions."""

MARKER_PRIMITIVE = "name"
"""The primitive of ``jax.ad_checkpoint.checkpoint_name``: an identity that names a value."""

# ``jax.checkpoint`` binds "remat2" in current JAX ("checkpoint"/"remat" in older releases).
_CALLS = {
    "jit",
    "pjit",
    "closed_call",
    "core_call",
    "custom_jvp_call",
    "custom_vjp_call",
    "remat",
    "remat2",
    "checkpoint",
}
_SUBJAXPR_KEYS = ("jaxpr", "call_jaxpr", "fun_jaxpr")


@dataclasses.dataclass(frozen=True)
class Site:
    """One op that consumes a weight: a ``dot_general`` or ``conv_general_dilated`` with a params operand.

    Attributes:
      name: unique name (the weight leaf's key path, ``"#k"`` for repeats;
        ``"primitive#i"`` for a computed weight).
      leaf: key path of the params leaf the weight comes from through layout
        ops only, or ``None`` for a computed weight.
      primitive: ``"dot_general"`` or ``"conv_general_dilated"``.
      weight_operand: 0 or 1, the weight's position among the op's operands.
      channel_axes: the weight's output-channel axes at the op.
      leaf_channel_axes: the same axes in the leaf's coordinates, or ``None``
        when the path from the leaf does not preserve them (a reshape).
      activation_shape, weight_shape: operand shapes at the op.
      dimension_numbers: the op's dimension numbers, for exporters.
      path: the name of the op's output as an intermediate: the weight
        leaf's ``/``-joined key path (``"params/layers/0/kernel"``, with
        ``"#k"`` for repeats), or ``name`` for a computed weight.

    Examples:
      >>> import jax.numpy as jnp
      >>> from hamjax import jaxpr
      >>> (site,) = jaxpr.find_sites(lambda p, x: x @ p["w"], {"w": jnp.ones((3, 2))}, jnp.ones((4, 3)))
      >>> site.name, site.primitive, site.weight_operand, site.activation_shape, site.weight_shape, site.path
      ("['w']", 'dot_general', 1, (4, 3), (3, 2), 'w')
    """

    name: str
    leaf: str | None
    primitive: str
    weight_operand: int
    channel_axes: tuple[int, ...]
    leaf_channel_axes: tuple[int, ...] | None
    activation_shape: tuple[int, ...]
    weight_shape: tuple[int, ...]
    dimension_numbers: Any = dataclasses.field(compare=False, repr=False, default=None)
    path: str = ""


def call_body(eqn) -> tuple[jcore.Jaxpr, Any] | None:
    """``(jaxpr, consts)`` of a call equation that can be inlined, else ``None``.

    Calls are ``jit``, ``closed_call``, ``custom_jvp_call``,
    ``custom_vjp_call`` and ``checkpoint``/``remat``; control flow
    (``scan``, ``while``, ``cond``) is not a call.

    Args:
      eqn: a ``jax.extend.core.JaxprEqn``.

    Returns:
      The body and its constants, or ``None``.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from hamjax import jaxpr
      >>> closed = jax.make_jaxpr(lambda x: jax.jit(jnp.sin)(x) + 1.0)(1.0)
      >>> body, consts = jaxpr.call_body(closed.jaxpr.eqns[0])
      >>> [e.primitive.name for e in body.eqns], jaxpr.call_body(closed.jaxpr.eqns[1])
      (['sin'], None)
    """
    if eqn.primitive.name not in _CALLS:
        return None
    for key in _SUBJAXPR_KEYS:
        sub = eqn.params.get(key)
        if isinstance(sub, jcore.ClosedJaxpr):
            return sub.jaxpr, sub.consts
        if isinstance(sub, jcore.Jaxpr):
            return sub, ()
    return None


def bind_equation(eqn, invals) -> list:
    """Apply ``eqn``'s primitive to ``invals`` under the equation's context.

    Args:
      eqn: a ``jax.extend.core.JaxprEqn``.
      invals: one value per input variable (arrays or tracers).

    Returns:
      The outputs, always as a list (one element for single-result primitives).

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from hamjax import jaxpr
      >>> eqn = jax.make_jaxpr(jnp.sin)(0.0).jaxpr.eqns[0]
      >>> [float(v) for v in jaxpr.bind_equation(eqn, [jnp.float32(0.0)])]
      [0.0]
    """
    params = eqn.primitive.get_bind_params(eqn.params)
    # Older JAX returns (subfuns, params), newer JAX the params alone.
    subfuns, params = params if isinstance(params, tuple) else ((), params)
    with eqn.ctx.manager:
        out = eqn.primitive.bind(*subfuns, *invals, **params)
    return out if eqn.primitive.multiple_results else [out]
