"""Token merging (ToMe) for any model whose attention blocks are marked.

A transformer spends its time on tokens; many of them say the same thing.
:func:`merge_tokens` merges ``r`` tokens in every marked attention block
by bipartite soft matching on the attention keys
(:mod:`hamjax.graph.matching`), averages them weighted by how many original
tokens each one stands for, and adds ``log(size)`` to the attention logits
(proportional attention), so a merged token keeps the weight of the tokens
it replaces. Token counts shrink block after block: the transformer runs on
fewer tokens, without retraining.

**Marking a model.** The model names four kinds of value with
``jax.ad_checkpoint.checkpoint_name`` (an identity in JAX and in ONNX, no
hamjax import needed), told apart by the last ``/``-part of the name:

* ``".../keys"``: the attention keys, ``(N, T, ...)`` with tokens on axis 1
  (the matching metric, flattened per token: all heads together, where
  ToMe averages them, since the head axis of an unknown layout is unknown);
* ``".../logits"``: the attention logits before the softmax,
  ``(N, ..., T)`` with the key tokens last (``log(size)`` is added here);
* ``".../merge"``: the token stream ``(N, T, C)`` where tokens merge,
  usually after the attention's residual add (ToMe merges between the
  attention and the MLP); the value after the marker has ``T - r`` tokens;
* ``".../unmerge"``: ``(N, T, C)`` where the model needs its original token
  count back (before mean pooling, or before a layer with weights over the
  token axis); every original token takes the value of the token it was
  merged into, so a mean over tokens is the size-weighted mean.

The keys and logits of a block come before its merge marker. A block
without a ``keys`` marker matches on the token stream itself.
:class:`hamjax.models.ViT` and :class:`hamjax.models.HAMNet` are marked
(``blocks/{i}/attention/keys`` ... ``unmerge``); a hand-written model marks
itself the same way (see :func:`merge_tokens`'s example).

**How.** While the merged apply function is traced, hamjax answers these
markers itself (the binding of ``jax.extend.core.primitives.name_p`` is
redirected, in that thread only, for the duration of the call), so the
model's own code runs on the merged tokens with static shapes: it jits,
vmaps over params (a population), differentiates and exports to ONNX. The
marked values keep their batch axis (vmapping single examples is refused). Markers inside a nested ``jax.jit``
or ``jax.checkpoint`` are refused (their traces are cached and would leak
the merge into unmerged calls).

References:
  Bolya, Fu, Dai, Zhang, Feichtenhofer, Hoffman. Token Merging: Your ViT
  But Faster. ICLR 2023.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.extend.core as jcore
import jax.numpy as jnp
from jax.extend.core.primitives import name_p

from hamjax._base import ApplyFn
from hamjax._checks import check_int
from hamjax.graph.matching import bipartite_matching, merged_positions, weighted_merge

__all__ = ["MARKS", "MergePlan", "merge_plan", "merge_tokens"]

MARKS = ("keys", "logits", "merge", "unmerge")
"""The last ``/``-parts of the marker names token merging answers."""

_WHERE = "merge_tokens"
_LOCAL = threading.local()
_LOCK = threading.Lock()
_INSTALLED = [0]


def _role(name: str) -> str | None:
    role = name.rsplit("/", 1)[-1]
    return role if role in MARKS else None


def _bind(*args, **params):
    stack = getattr(_LOCAL, "stack", None)
    if not stack or stack[-1] is None or len(args) != 1 or _role(params.get("name", "")) is None:
        return type(name_p).bind(name_p, *args, **params)
    args = (stack[-1](args[0], params["name"]),)
    # The primitive's own rules (vmap's batcher, jvp) bind it again on inner values: let those through.
    stack.append(None)
    try:
        return type(name_p).bind(name_p, *args, **params)
    finally:
        stack.pop()


@contextlib.contextmanager
def _answering(handler):
    """Send this thread's marker bindings with a role to ``handler(value, name) -> value``."""
    with _LOCK:
        if not _INSTALLED[0]:
            name_p.bind = _bind
        _INSTALLED[0] += 1
    stack = _LOCAL.__dict__.setdefault("stack", [])
    stack.append(handler)
    try:
        yield
    finally:
        stack.pop()
        with _LOCK:
            _INSTALLED[0] -= 1
            if not _INSTALLED[0]:
                del name_p.bind


class _Merger:
    """The merge state of one call: sizes and where each original token went, updated marker by marker."""

    def __init__(self, r: tuple[int, ...], class_token: bool, proportional: bool, r_arg: Any):
        self.r, self.protected, self.proportional, self.r_arg = r, int(class_token), proportional, r_arg
        self.block = 0
        self.metric = None
        self.size = None
        self.index = None
        self.seen: list[tuple[str, int, int]] = []

    def __call__(self, value, name: str):
        role = _role(name)
        if role == "keys":
            self.metric = value.reshape(value.shape[0], value.shape[1], -1)
            return value
        if role == "logits":
            if self.size is None or not self.proportional:
                return value
            t = self.size.shape[1]
            if value.ndim < 2 or value.shape[-1] != t:
                raise ValueError(f"{_WHERE}: the logits marked {name!r} have shape {value.shape}, expected {t} last")
            bias = jnp.log(self.size[:, :, 0]).astype(value.dtype)
            bias = bias.reshape((bias.shape[0],) + (1,) * (value.ndim - 2) + (t,))
            # Spelled out to the logits' shape: jax2onnx turns the add into an attention mask, which
            # onnxruntime's Attention op refuses when a query axis is broadcast.
            return value + jnp.broadcast_to(bias, value.shape)
        if role == "merge":
            return self._merge(value, name)
        if self.index is None:
            return value
        value = jnp.take_along_axis(value, self.index[:, :, None], axis=1)
        self.size = self.index = None
        return value

    def _merge(self, x, name: str):
        block, self.block = self.block, self.block + 1
        metric, self.metric = (x if self.metric is None else self.metric), None
        if x.ndim != 3:
            raise ValueError(f"{_WHERE}: the tokens marked {name!r} must be (N, T, C), got shape {x.shape}")
        t, p = x.shape[1], self.protected
        if block >= len(self.r):
            raise ValueError(
                f"{_WHERE}: {name!r} is bound more often than apply_fn's jaxpr shows ({len(self.r)} merge markers):"
                " a transform that re-evaluates the jaxpr (quantization, fuse_attention) wraps the model;"
                " merge tokens first and apply it to the merged model"
            )
        r = self.r[block]
        self.seen.append((name, t, r))
        if r > (t - p) // 2:
            raise ValueError(
                f"{_WHERE}: r={self.r_arg!r} merges {r} tokens at {name!r}, which holds {t} tokens"
                f"{' (1 class token)' if p else ''}: at most {(t - p) // 2} can merge there"
            )
        if metric.shape[1] != t:
            raise ValueError(f"{_WHERE}: the keys before {name!r} hold {metric.shape[1]} tokens, the stream {t}")
        if r == 0:
            return x
        if self.size is None:
            self.size = jnp.ones_like(x[:, :, :1])
            self.index = jnp.zeros_like(x[:, :, 0], dtype=jnp.int32) + jnp.arange(t, dtype=jnp.int32)[None, :]
        matching = bipartite_matching(metric[:, p:], r)
        rest, size = weighted_merge(x[:, p:], self.size[:, p:].astype(x.dtype), matching)
        positions = merged_positions(matching, t - p) + jnp.int32(p)
        if p:
            head = jnp.zeros_like(positions[:, :p]) + jnp.arange(p, dtype=jnp.int32)[None, :]
            positions = jnp.concatenate([head, positions], axis=1)
        self.index = jnp.take_along_axis(positions, self.index, axis=1)
        self.size = jnp.concatenate([self.size[:, :p], size.astype(self.size.dtype)], axis=1)
        return jnp.concatenate([x[:, :p], rest], axis=1)


class MergePlan(NamedTuple):
    """Where a model merges tokens, as :func:`merge_plan` finds it.

    Attributes:
      names: the ``merge`` markers, in order.
      tokens: the token count at each of them, after the merges before it.
      r: tokens merged at each of them.
    """

    names: tuple[str, ...]
    tokens: tuple[int, ...]
    r: tuple[int, ...]


def _marker_names(jaxpr, top: bool, found: list[str]) -> None:
    for eqn in jaxpr.eqns:
        if eqn.primitive is name_p and _role(eqn.params["name"]) is not None:
            if not top:
                raise ValueError(
                    f"{_WHERE}: the marker {eqn.params['name']!r} sits inside a nested jax.jit or jax.checkpoint;"
                    " mark the attention blocks at the top level of apply_fn"
                )
            found.append(eqn.params["name"])
        for sub in jcore.jaxprs_in_params(eqn.params):
            _marker_names(sub, False, found)


def _check_r(r, count: int) -> tuple[int, ...]:
    if isinstance(r, Sequence) and not isinstance(r, str):
        values = tuple(check_int(_WHERE, f"r[{i}]", v, minimum=0) for i, v in enumerate(r))
        if len(values) != count:
            raise ValueError(f"{_WHERE}: r must give one value per merge marker ({count}), got {len(values)}: {r!r}")
        return values
    return (check_int(_WHERE, "r", r, minimum=0),) * count


def merge_plan(apply_fn, params, x, r: int | Sequence[int], *, class_token: bool = False, **kw) -> MergePlan:
    """Check ``r`` against a model's marked blocks and say where it merges how many tokens.

    Nothing runs: the model is traced abstractly on inputs shaped like ``x``.

    Args:
      apply_fn, params: a model of the contract with marked attention blocks.
      x: an example input (only its shape and dtype matter).
      r: tokens merged per block, one int for every block or one per block.
      class_token: token 0 is a class token and never merges.
      **kw: keyword arguments for ``apply_fn``.

    Returns:
      A :class:`MergePlan`.

    Raises:
      ValueError: a model without ``merge`` markers, markers inside a nested
        jit, ``r`` not a non-negative int (or one per block), or merging more
        than half of the tokens a block holds.

    Examples:
      >>> import jax.numpy as jnp
      >>> from hamjax import functional, models
      >>> from hamjax.graph import merge_plan
      >>> apply_fn, params = functional(models.build("vit", patch_size=4, num_layers=3))
      >>> merge_plan(apply_fn, params, jnp.ones((1, 28, 28, 1)), 8).tokens
      (49, 41, 33)
    """
    found: list[str] = []
    closed = jax.make_jaxpr(lambda p, xx: apply_fn(p, xx, **kw))(params, x)
    _marker_names(closed.jaxpr, True, found)
    merges = [n for n in found if _role(n) == "merge"]
    if not merges:
        raise ValueError(
            f"{_WHERE}: apply_fn marks no tokens to merge; mark the token stream of each attention block with"
            " jax.ad_checkpoint.checkpoint_name(x, '<block>/merge') (see hamjax.graph.tome)"
        )
    values = _check_r(r, len(merges))
    merger = _Merger(values, class_token, True, r)
    with _answering(merger):
        jax.eval_shape(lambda p, xx: apply_fn(p, xx, **kw), params, x)
    names, tokens, rs = zip(*merger.seen, strict=True)
    return MergePlan(names, tokens, rs)


def merge_tokens(
    apply_fn,
    params,
    x,
    r: int | Sequence[int],
    *,
    class_token: bool = False,
    proportional: bool = True,
    **kw,
):
    """A model that merges ``r`` tokens in every marked attention block (ToMe), without retraining.

    At each ``merge`` marker the ``r`` most similar pairs (cosine similarity
    of the block's keys, bipartite matching) become one token, the
    size-weighted average of the two; with ``proportional`` the attention
    logits gain ``log(size)`` on the key axis. ``r = 0`` everywhere is the
    original model exactly. Shapes stay static (token counts are fixed per
    block), so the result jits, exports to ONNX and runs at any batch size;
    it is an inference transform (dropout and train mode work, but a model
    trained merged is not the aim).

    Args:
      apply_fn: a model of the contract (plain, Linen or NNX) whose attention
        blocks are marked (see :mod:`hamjax.graph.tome`).
      params: its params; returned unchanged.
      x: an example input: the blocks' token counts are checked on its shape
        before anything is traced for real.
      r: tokens merged per block: one int for every block, or one per
        ``merge`` marker in order.
      class_token: token 0 is a class token and never merges.
      proportional: add ``log(size)`` to the marked attention logits.
      **kw: keyword arguments ``apply_fn`` needs for the check.

    Returns:
      ``(merged_apply_fn, params)``; the apply function speaks ``apply_fn``'s
      protocol (an :class:`hamjax.ApplyFn` stays one).

    Raises:
      ValueError: as :func:`merge_plan`, naming ``r`` when a block would
        merge more tokens than it has, before anything is compiled.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from jax.ad_checkpoint import checkpoint_name
      >>> from hamjax.graph import merge_tokens
      >>> def attend(p, x):  # (N, T, C): one marked attention block, then mean pooling
      ...     k = checkpoint_name(x @ p["k"], "block/keys")
      ...     logits = checkpoint_name(jnp.einsum("ntc,nsc->nts", x @ p["q"], k), "block/logits")
      ...     x = checkpoint_name(x + jax.nn.softmax(logits, axis=-1) @ x, "block/merge")
      ...     return checkpoint_name(jnp.tanh(x), "unmerge").mean(axis=1)
      >>> params = {"q": jnp.eye(4), "k": jnp.eye(4)}
      >>> x = jax.random.normal(jax.random.key(0), (2, 16, 4))
      >>> merged, params = merge_tokens(attend, params, x, 6)
      >>> jax.jit(merged)(params, x).shape
      (2, 4)
      >>> same, _ = merge_tokens(attend, params, x, 0)
      >>> bool(jnp.array_equal(same(params, x), attend(params, x)))
      True
    """
    plan = merge_plan(apply_fn, params, x, r, class_token=class_token, **kw)

    def run(call, *args, **kwargs):
        with _answering(_Merger(plan.r, class_token, proportional, r)):
            return call(*args, **kwargs)

    if isinstance(apply_fn, ApplyFn):
        inner = apply_fn.fn

        def fn(variables, xx, **kwargs):
            return run(inner, variables, xx, **kwargs)

        return ApplyFn(fn, apply_fn.collections), params

    @functools.wraps(apply_fn)
    def merged(p, xx, **kwargs):
        return run(apply_fn, p, xx, **kwargs)

    return merged, params
