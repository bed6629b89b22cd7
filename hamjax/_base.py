"""The one contract: models as ``(apply_fn, params)``, transforms as ``(init, apply)``.

A model is a pair ``(apply_fn, params)`` where ``params`` is any pytree of
arrays and ``apply_fn(params, x, **kw) -> y`` is pure. Three kinds of model
give this pair:

* a Flax NNX module, through :func:`functional`;
* a Flax Linen module, through :func:`linen_functional` (or ``model.apply``
  itself when the model keeps no mutable collections);
* a hand-written ``jax.numpy`` function.

:func:`functional` and :func:`linen_functional` return an :class:`ApplyFn`,
a callable that also speaks the *training protocol*: it accepts
``train=``, ``rng=`` and ``mutable=`` keywords, and with ``mutable=True``
returns ``(y, new_variables)`` with updated non-trainable collections
(batch-norm statistics). A plain function speaks only ``apply_fn(params, x)``.

A :class:`Transform` is a pair of pure functions over a params pytree:
``init(params) -> state`` and ``apply(params, state, **extra) ->
(params, state)``. :func:`chain` composes transforms; its state is the tuple
of the sub-states.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import numpy as np

Params = Any
State = Any
PyTree = Any

TRAINABLE = "params"


class Transform(NamedTuple):
    """A parameter transform: two pure functions over a params pytree.

    Attributes:
      init: ``init(params) -> state``; the state is a pytree whose structure
        never changes afterwards.
      apply: ``apply(params, state, **extra) -> (params, state)``. Keyword
        arguments a transform does not use are accepted and ignored, so a
        :func:`chain` can pass the same extras (gradients, a batch) to all.

    Examples:
      >>> import jax.numpy as jnp
      >>> import hamjax
      >>> t = hamjax.identity()
      >>> p, s = t.apply({"w": jnp.ones(2)}, t.init({"w": jnp.ones(2)}))
      >>> p["w"].tolist()
      [1.0, 1.0]
    """

    init: Callable[[Params], State]
    apply: Callable[..., tuple[Params, State]]


class IdentityState(NamedTuple):
    """The (empty) state of :func:`identity`."""


def identity() -> Transform:
    """Return the transform that leaves params unchanged.

    Returns:
      A :class:`Transform` whose state is an empty :class:`IdentityState`.

    Examples:
      >>> import jax.numpy as jnp
      >>> import hamjax
      >>> t = hamjax.identity()
      >>> params = {"w": jnp.arange(3.0)}
      >>> out, _ = t.apply(params, t.init(params))
      >>> out["w"].tolist()
      [0.0, 1.0, 2.0]
    """

    def init(params):
        del params
        return IdentityState()

    def apply(params, state, **extra):
        del extra
        return params, state

    return Transform(init, apply)


class ChainState(NamedTuple):
    """The state of :func:`chain`: one sub-state per transform, in order."""

    states: tuple


def chain(*transforms: Transform) -> Transform:
    """Compose transforms left to right.

    ``chain(a, b).apply(p, s)`` applies ``a`` then ``b`` to the params ``a``
    returned; every transform receives the same keyword extras.

    Args:
      *transforms: :class:`Transform` values, applied in the order given.

    Returns:
      A :class:`Transform` whose state is a :class:`ChainState`.

    Raises:
      TypeError: if an argument is not a :class:`Transform`.

    Examples:
      >>> import jax.numpy as jnp
      >>> import hamjax
      >>> t = hamjax.chain(hamjax.identity(), hamjax.identity())
      >>> params = {"w": jnp.ones(2)}
      >>> out, state = t.apply(params, t.init(params))
      >>> len(state.states)
      2
    """
    for i, t in enumerate(transforms):
        if not isinstance(t, Transform):
            raise TypeError(f"chain: argument {i} is {type(t).__name__}, expected a hamjax.Transform")

    def init(params):
        return ChainState(tuple(t.init(params) for t in transforms))

    def apply(params, state, **extra):
        if len(state.states) != len(transforms):
            raise ValueError(f"chain: state has {len(state.states)} sub-states, expected {len(transforms)}")
        new_states = []
        for t, s in zip(transforms, state.states, strict=True):
            params, s = t.apply(params, s, **extra)
            new_states.append(s)
        return params, ChainState(tuple(new_states))

    return Transform(init, apply)


@dataclasses.dataclass(frozen=True, eq=False)
class ApplyFn:
    """A pure apply function that also speaks hamjax's training protocol.

    Call it as ``apply_fn(variables, x)`` for inference, or as
    ``apply_fn(variables, x, train=True, rng=key, mutable=True)`` in a
    training step, which returns ``(y, new_variables)``: ``variables`` with
    its non-trainable collections (``"batch_stats"``) updated.

    ``variables`` is a dict of collections; gradients flow only into
    ``variables["params"]``.

    Attributes:
      fn: ``fn(variables, x, *, train, rng, mutable, **kw)``.
      collections: names of the collections in ``variables``.
    """

    fn: Callable[..., Any]
    collections: tuple[str, ...]

    def __call__(self, variables, x, *, train=False, rng=None, mutable=False, **kw):
        return self.fn(variables, x, train=train, rng=rng, mutable=mutable, **kw)


def is_protocol_apply(apply_fn) -> bool:
    """Whether ``apply_fn`` speaks the training protocol of :class:`ApplyFn`."""
    return isinstance(apply_fn, ApplyFn)


def trainable(apply_fn, params: Params) -> Params:
    """The part of ``params`` that gradients update.

    Args:
      apply_fn: the model's apply function.
      params: the model's params (variables for an :class:`ApplyFn`).

    Returns:
      ``params["params"]`` for an :class:`ApplyFn`, else ``params`` itself.
    """
    if is_protocol_apply(apply_fn):
        return params[TRAINABLE]
    return params


def with_trainable(apply_fn, params: Params, new_trainable: Params) -> Params:
    """Put ``new_trainable`` back where :func:`trainable` took it from."""
    if is_protocol_apply(apply_fn):
        return {**params, TRAINABLE: new_trainable}
    return new_trainable


def optax_update(optimizer, updates, state, params=None, **extra):
    """``optimizer.update(updates, state, params, **extra)`` with standard dtype promotion inside it.

    optax's own arithmetic promotes implicitly (``adam``'s bias correction
    raises a Python float to the power of an int32 count), which a process
    that sets ``jax_numpy_dtype_promotion="strict"`` refuses. Every hamjax
    call into an optax optimizer goes through here, so hamjax trains under
    strict promotion (as its tests run) while its own code stays checked by it.

    Args:
      optimizer: an ``optax.GradientTransformation``.
      updates: the gradients (or updates) pytree.
      state: the optimizer's state.
      params: the params, for optimizers that need them.
      **extra: extra arguments of an ``optax.GradientTransformationExtraArgs``.

    Returns:
      ``(updates, state)`` as ``optimizer.update`` returns them.

    Examples:
      >>> import jax, jax.numpy as jnp, optax
      >>> from hamjax._base import optax_update
      >>> params, opt = {"w": jnp.ones(2)}, optax.adam(0.5)
      >>> with jax.numpy_dtype_promotion("strict"):
      ...     updates, state = optax_update(opt, {"w": jnp.ones(2)}, opt.init(params), params)
      >>> [round(u, 4) for u in updates["w"].tolist()]
      [-0.5, -0.5]
    """
    with jax.numpy_dtype_promotion("standard"):
        return optimizer.update(updates, state, params, **extra)


def call_model(apply_fn, params, x, *, train: bool = False, rng=None, **kw):
    """Call any model kind; return ``(y, params)`` with updated collections.

    A plain function is called as ``apply_fn(params, x, **kw)`` and
    ``params`` comes back unchanged; an :class:`ApplyFn` is called in train
    or eval mode with ``rng`` for dropout.

    Args:
      apply_fn: any apply function of the contract.
      params: its params (variables for an :class:`ApplyFn`).
      x: the input batch.
      train: train mode (dropout on, batch statistics updated).
      rng: the dropout key, or ``None``.
      **kw: more keyword arguments for ``apply_fn``.

    Returns:
      ``(y, params)``, with new batch statistics in train mode.

    Examples:
      >>> import jax.numpy as jnp
      >>> import hamjax
      >>> y, params = hamjax.call_model(lambda p, x: x @ p["w"], {"w": jnp.ones((3, 2))}, jnp.ones((1, 3)))
      >>> y.tolist()
      [[3.0, 3.0]]
    """
    if is_protocol_apply(apply_fn):
        if train:
            return apply_fn(params, x, train=True, rng=rng, mutable=True, **kw)
        return apply_fn(params, x, train=False, rng=rng, **kw), params
    return apply_fn(params, x, **kw), params


def _leaf_paths(tree) -> dict[tuple, tuple]:
    """``{bare keys: (key path, shape)}`` of every leaf (bare keys, so a FrozenDict matches a dict)."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    bare = [tuple(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))) for k in p) for p, _ in flat]
    return {b: (path, np.shape(leaf)) for b, (path, leaf) in zip(bare, flat, strict=True)}


def _first_difference(reference: dict, tree) -> str | None:
    """Where ``tree`` first departs from ``reference`` (from :func:`_leaf_paths`) in structure or leaf shape."""
    got, keystr = _leaf_paths(tree), jax.tree_util.keystr
    got_inner, ref_inner = ({p[:k] for p in paths for k in range(1, len(p))} for paths in (got, reference))
    for path, (keys, shape) in reference.items():
        cut = next((k for k in range(1, len(path)) if path[:k] not in got_inner), len(path))  # name a layer
        at = keystr(keys[:cut])
        if path[:cut] in got and cut < len(path):
            return f"{at} is an array of shape {got[path[:cut]][1]}; the module has a subtree there"
        if path in got_inner:
            return f"{at} is a subtree; the module's is an array of shape {shape}"
        if path not in got:
            return f"{at} is missing (the module has it)"
        if got[path][1] != shape:
            return f"{at} has shape {got[path][1]}; the module's is {shape}"
    for path, (keys, _) in got.items():
        if path not in reference:
            cut = next((k for k in range(1, len(path)) if path[:k] not in ref_inner), len(path))
            return f"{keystr(keys[:cut])} is not in the module"
    return None


def _tree_check(where: str, arg: str, reference) -> Callable[[Any], None]:
    """A check that a tree has ``reference``'s structure and leaf shapes (not dtypes: policies cast them).

    Passed ``(treedef, shapes)`` are remembered: a repeated eager call only flattens; jit checks at trace time.
    """
    paths = _leaf_paths(reference)

    def signature(tree):
        leaves, treedef = jax.tree.flatten(tree)
        return treedef, tuple(np.shape(leaf) for leaf in leaves)

    passed = {signature(reference)}

    def check(tree) -> None:
        if (sig := signature(tree)) in passed:
            return
        if (problem := _first_difference(paths, tree)) is not None:
            raise ValueError(f"{where}: {arg}{problem}")
        passed.add(sig)

    return check


_NNX_COLLECTIONS = (("params", "Param"), ("batch_stats", "BatchStat"))


def functional(module) -> tuple[ApplyFn, dict]:
    """Turn a Flax NNX module into the pair ``(apply_fn, variables)``.

    ``variables`` is a dict of plain nested dicts of arrays:
    ``{"params": ..., "batch_stats": ...}`` (collections that are empty are
    left out). RNG state and other variables stay inside ``apply_fn``;
    dropout draws from the ``rng`` passed at call time. ``apply_fn`` is pure
    and cheap under plain :func:`jax.jit` (the module is merged at trace
    time, not on every call).

    Args:
      module: an ``flax.nnx.Module``. It is not modified.

    Returns:
      ``(apply_fn, variables)``; ``apply_fn(variables, x, *, train=False,
      rng=None, mutable=False, **kw)`` calls the module in eval mode
      (``deterministic=True``, ``use_running_average=True``) unless
      ``train=True``.

    Raises:
      TypeError: if ``module`` is not an NNX module.
      ValueError: from ``apply_fn``, if ``variables`` differs from the
        module's in collections, structure or a leaf's shape (dtypes may
        differ), naming the first differing path; checked once per trace.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from flax import nnx
      >>> import hamjax
      >>> apply_fn, variables = hamjax.functional(nnx.Linear(3, 2, rngs=nnx.Rngs(0)))
      >>> jax.jit(apply_fn)(variables, jnp.ones((4, 3))).shape
      (4, 2)
    """
    from flax import nnx

    if not isinstance(module, nnx.Module):
        raise TypeError(f"functional: expected a flax.nnx.Module, got {type(module).__name__}")
    types = [getattr(nnx, name) for _, name in _NNX_COLLECTIONS]
    eval_module = nnx.view(module, deterministic=True, use_running_average=True, raise_if_not_found=False)
    train_module = nnx.view(module, deterministic=False, use_running_average=False, raise_if_not_found=False)
    eval_def, *eval_states = nnx.split(eval_module, *types, ...)
    train_def, *_ = nnx.split(train_module, *types, ...)
    templates = dict(zip([c for c, _ in _NNX_COLLECTIONS], eval_states[:-1], strict=True))
    rest = eval_states[-1]
    streams = sorted(
        {getattr(v, "tag", None) for _, v in nnx.to_flat_state(rest) if isinstance(v, nnx.RngKey)} - {None}
    )
    variables = {c: nnx.to_pure_dict(s) for c, s in templates.items() if len(nnx.to_flat_state(s))}
    names = tuple(variables)
    check = _tree_check("apply_fn", "variables", variables)

    def _state(collection, pure):
        state = jax.tree.map(lambda v: v, templates[collection])
        nnx.replace_by_pure_dict(state, pure)
        return state

    def fn(variables, x, *, train, rng, mutable, **kw):
        if not isinstance(variables, Mapping):
            raise TypeError(f"apply_fn: variables must be a mapping of collections, got {type(variables).__name__}")
        if missing := set(names) - set(variables):
            raise ValueError(f"apply_fn: variables lack collections {sorted(missing)}; have {sorted(variables)}")
        check(variables)
        states = [_state(c, variables[c]) if c in variables else templates[c] for c, _ in _NNX_COLLECTIONS]
        model = nnx.merge(train_def if train else eval_def, *states, rest, copy=True)
        if rng is not None and streams:
            keys = jax.random.split(rng, len(streams))
            nnx.reseed(model, **{s: k for s, k in zip(streams, keys, strict=True)})
        y = model(x, **kw)
        if not mutable:
            return y
        _, *new_states = nnx.split(model, *types, ...)
        new_vars = {c: nnx.to_pure_dict(s) for (c, _), s in zip(_NNX_COLLECTIONS, new_states[:-1], strict=False)}
        return y, {c: new_vars[c] for c in names}

    return ApplyFn(fn, names), variables


def linen_functional(model, variables: Mapping, *, rng_name: str = "dropout") -> tuple[ApplyFn, dict]:
    """Wrap a Flax Linen module so that it speaks the training protocol.

    The module's ``__call__`` must take ``train`` as a keyword when it has
    batch norm or dropout; a module without it is called without ``train``.

    Args:
      model: a ``flax.linen.Module``.
      variables: its variables, from ``model.init``.
      rng_name: the RNG collection name that dropout uses.

    Returns:
      ``(apply_fn, variables)`` as :func:`functional` gives them; ``apply_fn``
      refuses variables whose structure or leaf shapes differ from these,
      naming the first differing path (flax itself ignores extra keys).

    Raises:
      TypeError: if ``model`` is not a ``flax.linen.Module`` (an NNX module
        goes through :func:`functional`) or ``variables`` is not a mapping.
      ValueError: if ``variables`` has no ``"params"`` collection.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> import flax.linen as nn
      >>> import hamjax
      >>> m = nn.Dense(2)
      >>> apply_fn, v = hamjax.linen_functional(m, m.init(jax.random.key(0), jnp.ones((1, 3))))
      >>> apply_fn(v, jnp.ones((4, 3))).shape
      (4, 2)
    """
    import inspect

    import flax.linen as nn
    from flax import nnx

    if not isinstance(model, nn.Module):
        hint = "; for a Flax NNX module use hamjax.functional(module)" if isinstance(model, nnx.Module) else ""
        raise TypeError(f"linen_functional: model must be a flax.linen.Module, got {type(model).__name__}{hint}")
    if not isinstance(variables, Mapping):
        raise TypeError(f"linen_functional: variables must be a mapping (model.init's output), got {variables!r:.40}")
    if TRAINABLE not in variables:
        raise ValueError(f"linen_functional: variables have no 'params' collection; have {sorted(variables)}")
    takes_train = "train" in inspect.signature(model.__call__).parameters
    variables = dict(variables)
    names = tuple(variables)
    mutable_names = [c for c in names if c != TRAINABLE]
    check = _tree_check("apply_fn", "variables", variables)

    def fn(variables, x, *, train, rng, mutable, **kw):
        check(variables)
        if takes_train:
            kw["train"] = train
        rngs = {rng_name: rng} if rng is not None else None
        if not mutable:
            return model.apply(variables, x, rngs=rngs, **kw)
        y, updates = model.apply(variables, x, rngs=rngs, mutable=mutable_names, **kw)
        return y, {**variables, **updates}

    return ApplyFn(fn, names), variables
