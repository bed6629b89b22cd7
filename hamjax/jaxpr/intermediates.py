"""Read named intermediate activations out of any apply function.

Feature, attention and relational distillation compare what two models
compute inside, so they need those values from models hamjax did not
write. :func:`capture` gets them through the jaxpr (the mechanism of
:func:`hamjax.jaxpr.intercept`), which works the same on Flax NNX,
Flax Linen and plain ``jax.numpy`` functions. Two kinds of value have
names:

* **marked values**: anything the model passes through
  ``jax.ad_checkpoint.checkpoint_name(value, "name")``, an identity that
  ``jit``, ``vmap``, ``grad`` and ONNX export all keep. The reference
  models mark their hidden layers, their pooled ``"embedding"`` and, for
  the ViT and HAMNet, the attention probabilities of every block. A
  name used twice becomes ``"name"``, ``"name#1"``.
* **layer outputs**: the output of every matrix product or convolution
  with a weight, named by the weight's ``/``-joined key path
  (``"params/layers/0/kernel"``). These need no change to the model.

:func:`names` lists what a model offers; :func:`capture` returns a model
whose output is ``(y, {name: value})``.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax

from hamjax._base import ApplyFn
from hamjax.jaxpr.interpret import intercept


def _check_names(wanted) -> tuple[str, ...]:
    if isinstance(wanted, str):
        wanted = (wanted,)
    wanted = tuple(wanted)
    bad = [n for n in wanted if not isinstance(n, str)]
    if bad:
        raise ValueError(f"capture: intermediate names must be strings, got {bad!r}")
    if len(set(wanted)) != len(wanted):
        raise ValueError(f"capture: names={wanted!r} repeat a name")
    return wanted


def _record(found: dict, seen: list, wanted: frozenset, name: str, value):
    if name in seen:
        raise ValueError(
            f"capture: two intermediates are named {name!r} (a marked value and a weight path); rename the marker"
        )
    seen.append(name)
    if name in wanted:
        found[name] = value
    return value


def _select(found: dict, seen: list, wanted: tuple[str, ...]) -> dict:
    missing = [n for n in wanted if n not in found]
    if missing:
        raise ValueError(
            f"capture: the model has no intermediate named {missing}; it has {seen} "
            "(mark a value with jax.ad_checkpoint.checkpoint_name to name it)"
        )
    return {n: found[n] for n in wanted}


def capture(apply_fn, wanted: str | Sequence[str]):
    """A function transform: ``apply_fn`` that also returns the named intermediates.

    The result is called like ``apply_fn`` and returns ``(y, taps)`` where
    ``y`` is the model's output and ``taps`` is ``{name: array}`` in the
    order of ``wanted``; in train mode with ``mutable=True`` an
    :class:`~hamjax.ApplyFn` returns ``((y, taps), new_variables)``.
    Gradients flow through the captured values as through ``y``. The
    jaxpr is traced at each call, so call the result under ``jax.jit``.

    Args:
      apply_fn: any apply function of the contract.
      wanted: one name or a sequence of names (see the module docstring and
        :func:`names`).

    Returns:
      The capturing apply function.

    Raises:
      ValueError: for a name that is not a string or repeats (at once), or
        that the model does not have (when it is traced; the message lists
        the names it has).

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from jax.ad_checkpoint import checkpoint_name
      >>> from hamjax import jaxpr
      >>> def f(p, x):
      ...     h = checkpoint_name(jnp.tanh(x @ p["w1"]), "hidden")
      ...     return h @ p["w2"]
      >>> params = {"w1": jnp.ones((3, 4)), "w2": jnp.ones((4, 2))}
      >>> y, taps = jax.jit(jaxpr.capture(f, ["hidden", "w2"]))(params, jnp.ones((5, 3)))
      >>> taps["hidden"].shape, bool(jnp.array_equal(taps["w2"], y))
      ((5, 4), True)
    """
    wanted = _check_names(wanted)
    wanted_set = frozenset(wanted)

    def run(call, *args, **kw):
        found, seen = {}, []
        on_output = functools.partial(_record, found, seen, wanted_set)
        out = call(intercept(apply_fn, on_output=on_output), *args, **kw)
        return out, _select(found, seen, wanted)

    if isinstance(apply_fn, ApplyFn):

        def fn(variables, x, *, train, rng, mutable, **kw):
            out, taps = run(lambda f, *a, **k: f.fn(*a, **k), variables, x, train=train, rng=rng, mutable=mutable, **kw)
            if mutable:
                y, new_variables = out
                return (y, taps), new_variables
            return out, taps

        return ApplyFn(fn, apply_fn.collections)

    @functools.wraps(apply_fn)
    def captured(params, x, **kw):
        return run(lambda f, *a, **k: f(*a, **k), params, x, **kw)

    return captured


def names(apply_fn, params, x, **kw) -> tuple[str, ...]:
    """The names of the intermediates of ``apply_fn`` on inputs shaped like ``x``, in evaluation order.

    Args:
      apply_fn: any apply function of the contract.
      params: its params.
      x: an example input (only shapes and dtypes matter; nothing runs).
      **kw: keyword arguments for ``apply_fn``.

    Returns:
      A tuple of names for :func:`capture`.

    Examples:
      >>> import jax.numpy as jnp
      >>> from hamjax import jaxpr, models, functional
      >>> apply_fn, params = functional(models.build("mlp", input_shape=(8, 8, 1), sizes=(64, 32, 10)))
      >>> jaxpr.names(apply_fn, params, jnp.ones((1, 8, 8, 1)))
      ('params/layers/0/kernel', 'hidden/0', 'embedding', 'params/layers/1/kernel')
    """
    seen: list[str] = []

    def on_output(name, value):
        seen.append(name)
        return value

    jax.eval_shape(lambda p, xx: intercept(apply_fn, on_output=on_output)(p, xx, **kw), params, x)
    return tuple(seen)


def shapes(apply_fn, params, x, wanted: str | Sequence[str], **kw) -> dict[str, jax.ShapeDtypeStruct]:
    """The shapes and dtypes of the named intermediates, found without running the model.

    Checks the names up front: a missing name raises here, before any
    training step is compiled.

    Args:
      apply_fn: any apply function of the contract.
      params: its params.
      x: an example input.
      wanted: the names, as for :func:`capture`.
      **kw: keyword arguments for ``apply_fn``.

    Returns:
      ``{name: jax.ShapeDtypeStruct}``.

    Raises:
      ValueError: as :func:`capture`.

    Examples:
      >>> import jax.numpy as jnp
      >>> from hamjax import jaxpr
      >>> jaxpr.shapes(lambda p, x: x @ p["w"], {"w": jnp.ones((3, 2))}, jnp.ones((4, 3)), "w")["w"].shape
      (4, 2)
    """

    def taps(p, xx):
        out = capture(apply_fn, wanted)(p, xx, **kw)
        return (out[0] if kw.get("mutable") else out)[1]

    return jax.eval_shape(taps, params, x)
