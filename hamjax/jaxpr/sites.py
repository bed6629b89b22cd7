"""The weighted ops of any apply function: where a rewrite can act, and along which axes.

:func:`find_sites` lists every :class:`~hamjax.jaxpr.Site` of a model
without running it; :func:`weight_channel_axes` turns the sites into the
output-channel axes of each params leaf, for rewrites that work per
output channel (per-channel quantization scales, channel pruning).
"""

from __future__ import annotations

import jax

from hamjax.jaxpr.equations import Site
from hamjax.jaxpr.interpret import intercept


def find_sites(apply_fn, params, x, **kw) -> tuple[Site, ...]:
    """The ops of ``apply_fn`` that consume a weight, on inputs shaped like ``x``, in evaluation order.

    Nothing runs: the model is traced with ``jax.eval_shape``.

    Args:
      apply_fn: any apply function of the contract.
      params: its params.
      x: an example input (only shapes and dtypes matter).
      **kw: keyword arguments for ``apply_fn``.

    Returns:
      A tuple of :class:`~hamjax.jaxpr.Site`.

    Raises:
      ValueError: if ``apply_fn`` has no matrix product or convolution with
        a params operand.

    Examples:
      >>> import jax.numpy as jnp
      >>> from hamjax import jaxpr
      >>> sites = jaxpr.find_sites(lambda p, x: x @ p["w"].T, {"w": jnp.ones((5, 3))}, jnp.ones((2, 3)))
      >>> [(s.name, s.channel_axes, s.leaf_channel_axes) for s in sites]
      [("['w']", (1,), (0,))]
    """
    found: list[Site] = []

    def hook(i, site, a, w):
        found.append(site)
        return a, w

    jax.eval_shape(lambda p, xx: intercept(apply_fn, hook)(p, xx, **kw), params, x)
    if not found:
        raise ValueError(
            "find_sites: apply_fn has no dot_general or conv_general_dilated with a params operand; "
            "nothing to quantize or rewrite"
        )
    return tuple(found)


def weight_channel_axes(sites) -> dict[str, tuple[int, ...]]:
    """Per-leaf output-channel axes for the leaves whose every use agrees on them.

    Args:
      sites: from :func:`find_sites`.

    Returns:
      ``{leaf key path: axes}``; leaves used with different or unknown axes
      are left out (rewrite those per tensor, or at the op).

    Examples:
      >>> import jax.numpy as jnp
      >>> from hamjax import jaxpr
      >>> f = lambda p, x: (x @ p["w"].T) @ p["v"].reshape(5, 2)
      >>> sites = jaxpr.find_sites(f, {"w": jnp.ones((5, 3)), "v": jnp.ones((10,))}, jnp.ones((2, 3)))
      >>> jaxpr.weight_channel_axes(sites)
      {"['w']": (0,)}
    """
    axes: dict[str, tuple[int, ...] | None] = {}
    for s in sites:
        if s.leaf is None:
            continue
        if s.leaf in axes and axes[s.leaf] != s.leaf_channel_axes:
            axes[s.leaf] = None
        else:
            axes.setdefault(s.leaf, s.leaf_channel_axes)
    return {k: v for k, v in axes.items() if v is not None}
