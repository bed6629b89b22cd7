"""Mixed-precision policies: which dtype params are stored in, the model computes in, outputs come out in.

A :class:`Policy` names three dtypes in the style of jmp: the dtype params
are stored and updated in, the dtype the model computes in, and the dtype
of its outputs. ``"p=f32,c=bf16,o=f32"`` keeps float32 master weights,
runs the forward and backward passes in bfloat16 and hands float32 logits
to the loss. :func:`with_policy` turns an apply function into one that
computes under the policy; gradients with respect to float32 params come
back float32, because the cast is differentiated like any other op.

Only floating leaves are ever cast (:func:`is_floating`). fp16 loss scaling
and :func:`~hamjax.precision.prepare_training`, which sets a model and its
optimizer up for both, are in :mod:`hamjax.precision.loss_scale`.

References:
  Micikevicius et al., "Mixed Precision Training", ICLR 2018.
  https://arxiv.org/abs/1710.03740 ; jmp (https://github.com/google-deepmind/jmp).
"""

from __future__ import annotations

import dataclasses
import functools
import weakref
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hamjax._base import ApplyFn, is_protocol_apply

__all__ = ["Policy", "get_policy", "is_floating", "policy_of", "with_policy"]

PyTree = Any

_DTYPES = {
    "f32": "float32",
    "float32": "float32",
    "fp32": "float32",
    "bf16": "bfloat16",
    "bfloat16": "bfloat16",
    "f16": "float16",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
    "f64": "float64",
    "float64": "float64",
}
_SHORT = {"float32": "f32", "bfloat16": "bf16", "float16": "f16", "float64": "f64"}
_KEYS = {
    "p": "param_dtype",
    "param": "param_dtype",
    "params": "param_dtype",
    "c": "compute_dtype",
    "compute": "compute_dtype",
    "o": "output_dtype",
    "out": "output_dtype",
    "output": "output_dtype",
}
_LONG = {"param_dtype": "params", "compute_dtype": "compute", "output_dtype": "output"}
_FORMS = "'p=f32,c=bf16,o=f32', 'params=float32,compute=bfloat16,output=float32' or one dtype such as 'bf16'"
_ACCEPTED = "f32/float32, bf16/bfloat16, f16/float16/half, f64/float64 (with jax_enable_x64)"


def _dtype(value, what: str) -> np.dtype:
    """``value`` as a floating dtype this JAX configuration can hold, or a ValueError naming ``what``."""
    if isinstance(value, str):
        name = _DTYPES.get(value.strip().lower())
        if name is None:
            raise ValueError(f"{what}: unknown dtype {value!r}; expected one of {_ACCEPTED}; policy forms: {_FORMS}")
        value = name
    try:
        dtype = jnp.dtype(value)
    except TypeError as err:
        raise ValueError(f"{what}: {value!r} is not a dtype; expected one of {_ACCEPTED}") from err
    if dtype.name not in _SHORT:
        raise ValueError(f"{what}: {dtype.name} is not a floating dtype a policy can use; expected {_ACCEPTED}")
    if dtype.itemsize == 8 and not jax.config.jax_enable_x64:
        raise ValueError(f"{what}: float64 needs jax.config.update('jax_enable_x64', True); without it, use f32")
    return dtype


def is_floating(x) -> bool:
    """Whether ``x`` is an array (or scalar) of a floating dtype: the leaves a policy casts.

    Python scalars are weakly typed and take the dtype of the arrays they meet, so they are not
    floating leaves; nor are integers, booleans and PRNG key arrays.

    Args:
      x: any pytree leaf.

    Returns:
      A Python bool.

    Examples:
      >>> import jax.numpy as jnp
      >>> from hamjax.precision import is_floating
      >>> is_floating(jnp.ones(2, jnp.bfloat16)), is_floating(jnp.arange(2)), is_floating(0.5)
      (True, False, False)
    """
    return hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.floating)


def _cast_floating(tree: PyTree, dtype) -> PyTree:
    return jax.tree.map(lambda x: x.astype(dtype) if is_floating(x) and x.dtype != dtype else x, tree)


@dataclasses.dataclass(frozen=True)
class Policy:
    """Which dtype params are stored in, the model computes in, and outputs come out in.

    Only floating leaves are cast; integers, booleans, PRNG key arrays and
    ``None`` pass through. A policy is hashable, so it can be a static
    argument of ``jax.jit``.

    Attributes:
      param_dtype: dtype of the stored params and of the optimizer's updates.
      compute_dtype: dtype of params and inputs inside the model.
      output_dtype: dtype of the model's floating outputs.

    Examples:
      >>> import jax.numpy as jnp
      >>> from hamjax.precision import Policy
      >>> policy = Policy.parse("p=f32,c=bf16,o=f32")
      >>> str(policy), policy.compute_dtype.name
      ('p=f32,c=bf16,o=f32', 'bfloat16')
      >>> tree = policy.cast_to_compute({"w": jnp.ones(2), "step": jnp.zeros((), jnp.int32)})
      >>> tree["w"].dtype.name, tree["step"].dtype.name
      ('bfloat16', 'int32')
    """

    param_dtype: Any = jnp.float32
    compute_dtype: Any = jnp.float32
    output_dtype: Any = jnp.float32

    def __post_init__(self):
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, _dtype(getattr(self, f.name), f"Policy.{f.name}"))

    @classmethod
    def parse(cls, spec: str) -> Policy:
        """Parse a policy string.

        Keys are ``p``/``params``, ``c``/``compute`` and ``o``/``output``, in
        any order, with spaces allowed; all three are required unless the
        string is one dtype, which sets all three.

        Args:
          spec: for example ``"p=f32,c=bf16,o=f32"``,
            ``"params=float32, compute=bfloat16, output=float32"`` or ``"bf16"``.

        Returns:
          The :class:`Policy`; ``Policy.parse(str(policy)) == policy``.

        Raises:
          ValueError: naming the bad part of ``spec`` and the accepted forms.

        Examples:
          >>> from hamjax.precision import Policy
          >>> str(Policy.parse("compute = bfloat16, output=float32, params=float32"))
          'p=f32,c=bf16,o=f32'
          >>> str(Policy.parse("half"))
          'p=f16,c=f16,o=f16'
        """
        if not isinstance(spec, str):
            raise ValueError(f"Policy.parse: expected a string such as {_FORMS}, got {type(spec).__name__} {spec!r}")
        text = spec.strip()
        if not text:
            raise ValueError(f"Policy.parse: empty policy string; expected {_FORMS}")
        if "=" not in text and "," not in text:
            dtype = _dtype(text, f"Policy.parse({spec!r})")
            return cls(dtype, dtype, dtype)
        values: dict[str, np.dtype] = {}
        for part in text.split(","):
            key, sep, value = part.partition("=")
            key = key.strip().lower()
            if not sep or not key or not value.strip():
                raise ValueError(
                    f"Policy.parse({spec!r}): bad part {part.strip()!r}; expected key=dtype as in {_FORMS}"
                )
            field = _KEYS.get(key)
            if field is None:
                raise ValueError(
                    f"Policy.parse({spec!r}): unknown key {key!r}; expected p/params, c/compute, o/output as in {_FORMS}"
                )
            if field in values:
                raise ValueError(f"Policy.parse({spec!r}): {_LONG[field]} is given twice")
            values[field] = _dtype(value, f"Policy.parse({spec!r}), key {key!r}")
        missing = [name for field, name in _LONG.items() if field not in values]
        if missing:
            raise ValueError(f"Policy.parse({spec!r}): missing {', '.join(missing)}; give all three as in {_FORMS}")
        return cls(**values)

    def __str__(self) -> str:
        return (
            f"p={_SHORT[self.param_dtype.name]},c={_SHORT[self.compute_dtype.name]},o={_SHORT[self.output_dtype.name]}"
        )

    def __repr__(self) -> str:
        return f"Policy.parse({str(self)!r})"

    def cast_to_param(self, tree: PyTree) -> PyTree:
        """Cast the floating leaves of ``tree`` to ``param_dtype``; other leaves pass through."""
        return _cast_floating(tree, self.param_dtype)

    def cast_to_compute(self, tree: PyTree) -> PyTree:
        """Cast the floating leaves of ``tree`` to ``compute_dtype``; other leaves pass through."""
        return _cast_floating(tree, self.compute_dtype)

    def cast_to_output(self, tree: PyTree) -> PyTree:
        """Cast the floating leaves of ``tree`` to ``output_dtype``; other leaves pass through."""
        return _cast_floating(tree, self.output_dtype)


def get_policy(policy: Policy | str) -> Policy:
    """A :class:`Policy` from a policy or its string form (see :meth:`Policy.parse`).

    Args:
      policy: a :class:`Policy`, returned as it is, or a string such as ``"p=f32,c=bf16,o=f32"``.

    Returns:
      The :class:`Policy`.

    Raises:
      ValueError: naming the bad part of a string.

    Examples:
      >>> from hamjax.precision import get_policy
      >>> get_policy("p=f32,c=f16,o=f32").compute_dtype.name
      'float16'
    """
    if isinstance(policy, Policy):
        return policy
    if not isinstance(policy, str):
        raise ValueError(
            f"get_policy: policy must be a Policy or a string such as 'p=f32,c=bf16,o=f32', got {type(policy).__name__}"
            f" {policy!r}"
        )
    return Policy.parse(policy)


# wrapper -> (the function it wraps, its policy); weak, so wrappers are collected as usual
_WRAPPED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def policy_of(apply_fn) -> Policy | None:
    """The policy :func:`with_policy` gave ``apply_fn``, or ``None`` for an unwrapped function.

    Args:
      apply_fn: any apply function.

    Returns:
      A :class:`Policy` or ``None``.

    Examples:
      >>> from hamjax.precision import policy_of, with_policy
      >>> f = lambda p, x: x @ p["w"]
      >>> str(policy_of(with_policy(f, "bf16"))), policy_of(f)
      ('p=bf16,c=bf16,o=bf16', None)
    """
    entry = _WRAPPED.get(apply_fn)
    return entry[1] if entry is not None else None


def _restore_dtypes(new: PyTree, like: PyTree, policy: Policy) -> PyTree:
    if jax.tree.structure(new) != jax.tree.structure(like):
        return policy.cast_to_param(new)
    return jax.tree.map(lambda n, o: n.astype(o.dtype) if is_floating(n) and is_floating(o) else n, new, like)


def with_policy(apply_fn: Callable, policy: Policy | str, *, keep: tuple[str, ...] = ("batch_stats",)) -> Callable:
    """Make ``apply_fn`` compute under ``policy``.

    The wrapped function casts the floating leaves of the params and of the
    input to ``compute_dtype``, calls ``apply_fn`` and casts the floating
    leaves of its output to ``output_dtype``. Wrapping a function that
    :func:`with_policy` returned replaces its policy instead of nesting a
    second one.

    An :class:`~hamjax.ApplyFn` stays an ``ApplyFn`` with the same
    collections, so :func:`hamjax.train.fit` trains it. With
    ``mutable=True`` every leaf of the returned variables gets back the
    dtype it had in the variables passed in. The collections in ``keep``
    enter the model in the dtype they are stored in, because batch-norm
    running averages updated in bfloat16 drift: a momentum-0.99 step
    smaller than half a bfloat16 ulp (0.2-0.4% of the value) rounds away,
    and NNX rounds the momentum itself to 0.98828125, which biases the
    average low by about 15%. Models that promote dtypes (Flax NNX and
    Linen ``BatchNorm``) then normalize in float32, and the layers after a
    batch norm compute in float32; pass ``keep=()`` to compute everything
    in ``compute_dtype`` and accept the drifting statistics.

    Args:
      apply_fn: ``apply_fn(params, x, *args, **kw)`` or an
        :class:`~hamjax.ApplyFn`.
      policy: a :class:`Policy` or its string form.
      keep: names of ``ApplyFn`` collections passed in their stored dtype;
        ignored for a plain function.

    Returns:
      The wrapped function, of the same kind as ``apply_fn``.

    Raises:
      TypeError: if ``keep`` is not a tuple or list of collection names.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from hamjax.precision import with_policy
      >>> f = with_policy(lambda p, x: x @ p["w"], "p=f32,c=bf16,o=f32")
      >>> params = {"w": jnp.ones((3, 2))}
      >>> f(params, jnp.ones((4, 3))).dtype.name
      'float32'
      >>> jax.grad(lambda p: f(p, jnp.ones((4, 3))).sum())(params)["w"].dtype.name
      'float32'
    """
    policy = get_policy(policy)
    if not isinstance(keep, tuple | list) or not all(isinstance(k, str) for k in keep):
        raise TypeError(f"with_policy: keep must be a tuple of collection names, got {keep!r}")
    keep = tuple(keep)
    base, _ = _WRAPPED.get(apply_fn, (apply_fn, None))

    if is_protocol_apply(base):

        def fn(variables, x, *, train, rng, mutable, **kw):
            passed = {c: v if c in keep else policy.cast_to_compute(v) for c, v in variables.items()}
            # Flax layers promote on purpose: kept collections meet compute-dtype activations, and BatchNorm
            # widens half-precision statistics to float32 (jnp.promote_types). That is what keep and the
            # policy ask for, so the model runs under standard promotion even where the process sets strict.
            with jax.numpy_dtype_promotion("standard"):
                out = base(passed, policy.cast_to_compute(x), train=train, rng=rng, mutable=mutable, **kw)
            if not mutable:
                return policy.cast_to_output(out)
            y, new_variables = out
            return policy.cast_to_output(y), _restore_dtypes(new_variables, variables, policy)

        wrapped = ApplyFn(fn, base.collections)
    else:

        @functools.wraps(base)
        def wrapped(params, x, *args, **kw):
            return policy.cast_to_output(base(policy.cast_to_compute(params), policy.cast_to_compute(x), *args, **kw))

    _WRAPPED[wrapped] = (base, policy)
    return wrapped
