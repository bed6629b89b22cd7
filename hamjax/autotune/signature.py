"""A model's signature: what its jaxpr holds (sites, sizes, depth) and its family, for any apply function.

:func:`model_signature` traces ``apply_fn`` once (nothing runs) and walks
its jaxpr, inlining calls (:func:`hamjax.jaxpr.call_body`), with every
value tagged by where it comes from: the input, one params leaf through
layout ops, or neither. It counts and sizes five kinds of site:

* **dense**: a ``dot_general`` with a weight operand, and **conv**: a
  ``conv_general_dilated`` with one; these two come from
  :func:`hamjax.jaxpr.find_sites`, the definition quantization and pruning
  act on; their size is the number of weight elements (each leaf once);
* **attention**: a product of two activations whose result goes through a
  softmax (an ``exp``) into a second product of two activations; each pair
  is one block (all heads of one einsum together); its size is the weights
  of the sites feeding the two products (query, key, value) and of the
  first site reading the result (the output projection);
* **norm**: an ``rsqrt`` (or ``sqrt``) of a value computed from the input
  (layer norm, RMS norm, batch norm in train mode) or from params (batch
  norm with running statistics); its size is the params leaves combined
  elementwise with the normalised value (scale and shift);
* **embedding**: a ``gather`` from a params leaf at indices that depend on
  the input; its size is the table's.

The family follows from the sites and the input: attention on an image
input ``(N, H, W, C)`` is ``"vit"`` (evidence: the patch embedding, a conv
with stride equal to its kernel or a dense op on patches cut from the image
by reshapes); attention on token (integer) or sequence input is
``"transformer"``; convs beyond one patch embedding together with
attention are ``"hybrid"``; convs without attention ``"cnn"``; dense sites
only ``"mlp"``. Ops inside control flow (``scan``, ``while``, ``cond``)
are not entered, as :mod:`hamjax.jaxpr` does not rewrite them either.

``depth`` is the number of dense, conv and embedding sites on the longest
path from the input to the output (products of two activations do not
count). ``params`` is the number of elements of every floating leaf of
params (batch statistics included, so a network written with Flax NNX,
Linen or ``jax.numpy`` gives one count). Nothing depends on leaf names, so
the three ways of writing one network share one :attr:`Signature.key`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math

import jax
import jax.extend.core as jcore
import jax.numpy as jnp
import numpy as np

from hamjax.jaxpr import SITE_PRIMITIVES, call_body, find_sites

FAMILIES = ("mlp", "cnn", "transformer", "vit", "hybrid")
"""The model families a signature names."""

KINDS = ("dense", "conv", "attention", "norm", "embedding")
"""The site kinds a signature counts and sizes."""

INPUT_KINDS = ("image", "sequence", "tokens", "vector")
"""How the input is read: ``(N, H, W, C)`` floats, ``(N, T, F)`` floats, integers, or anything else."""

_LAYOUT = {"reshape", "transpose", "squeeze", "expand_dims", "broadcast_in_dim", "convert_element_type", "copy"}
_ELEMENTWISE = {"mul", "add", "sub", "div", "neg", "convert_element_type", "broadcast_in_dim", "reshape", "copy"}
_KEY_FIELDS = (
    "family",
    "input_kind",
    "input_shape",
    "num_outputs",
    "params",
    "depth",
    *(f"{k}{p}" for k in KINDS for p in ("", "_params")),
)


@dataclasses.dataclass(frozen=True)
class Signature:
    """What a model is made of, and its family, with the evidence for it.

    Attributes:
      family: one of :data:`FAMILIES`.
      evidence: why (``"2 attention sites"``, ``"patch embedding: ..."``);
        not part of :attr:`key`.
      params: elements of every floating params leaf.
      input_shape: one example's input shape (without the batch axis).
      input_kind: one of :data:`INPUT_KINDS`.
      num_outputs: size of the output's last axis.
      depth: dense, conv and embedding sites on the longest input-to-output path.
      dense, conv, attention, norm, embedding: how many sites of each kind.
      dense_params: weight elements of the dense sites (each leaf once);
        likewise ``conv_params``, ``attention_params`` (the projections,
        which are dense sites too), ``norm_params`` (scales and shifts) and
        ``embedding_params`` (the tables); see the module doc.

    Examples:
      >>> import jax.numpy as jnp
      >>> from hamjax import autotune
      >>> params = {"w1": jnp.ones((4, 8)), "w2": jnp.ones((8, 3))}
      >>> sig = autotune.model_signature(lambda p, x: jnp.tanh(x @ p["w1"]) @ p["w2"], params, jnp.ones((2, 4)))
      >>> sig.family, sig.dense, sig.dense_params, sig.depth, sig.evidence
      ('mlp', 2, 56, 2, ('2 dense sites, no conv or attention',))
      >>> autotune.Signature.from_dict(sig.to_dict()) == sig
      True
    """

    family: str
    evidence: tuple[str, ...]
    params: int
    input_shape: tuple[int, ...]
    input_kind: str
    num_outputs: int
    depth: int
    dense: int = 0
    dense_params: int = 0
    conv: int = 0
    conv_params: int = 0
    attention: int = 0
    attention_params: int = 0
    norm: int = 0
    norm_params: int = 0
    embedding: int = 0
    embedding_params: int = 0

    @property
    def key(self) -> str:
        """A stable hex digest (SHA-256) of every field but ``evidence``."""
        canonical = json.dumps({f: _plain(getattr(self, f)) for f in _KEY_FIELDS}, sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()

    def to_dict(self) -> dict:
        """A JSON-safe dict of every field, plus ``"key"``."""
        return {**{f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}, "key": self.key}

    @classmethod
    def from_dict(cls, d: dict) -> Signature:
        """The signature :meth:`to_dict` wrote (``"key"`` is ignored; unknown fields raise).

        Args:
          d: a dict from :meth:`to_dict`, possibly through JSON.

        Returns:
          The :class:`Signature`.

        Raises:
          ValueError: a field missing, unknown, or of the wrong kind.
        """
        if not isinstance(d, dict):
            raise ValueError(f"Signature.from_dict: d must be a dict, got {d!r}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names - {"key"})
        if unknown:
            raise ValueError(f"Signature.from_dict: d has unknown fields {unknown}")
        try:
            kw = {k: v for k, v in d.items() if k != "key"}
            kw["evidence"] = tuple(str(e) for e in kw["evidence"])
            kw["input_shape"] = tuple(int(s) for s in kw["input_shape"])
            for f in names - {"family", "evidence", "input_shape", "input_kind"}:
                if f in kw:
                    kw[f] = int(kw[f])
            sig = cls(**kw)
        except (KeyError, TypeError) as e:
            raise ValueError(f"Signature.from_dict: d is not a signature ({e})") from None
        if sig.family not in FAMILIES or sig.input_kind not in INPUT_KINDS:
            raise ValueError(f"Signature.from_dict: family or input_kind unknown in {d!r}")
        return sig


def _plain(v):
    return list(v) if isinstance(v, tuple) else v


class _Info:
    """What the walk knows of one value (see :func:`_walk`)."""

    __slots__ = ("attn", "dep", "depth", "from_input", "leaf", "norm", "param", "proj", "scores", "softmax")

    def __init__(self, dep=False, leaf=None, from_input=False, depth=0):
        self.dep, self.leaf, self.from_input, self.depth = dep, leaf, from_input, depth
        self.param = leaf is not None  # computed from params (running statistics), not from constants alone
        self.scores = self.softmax = False
        self.proj = self.attn = self.norm = frozenset()


class _Census:
    """Counts gathered by the walk; site weights as ``(leaf index or None, size)``."""

    def __init__(self, leaf_sizes):
        self.leaf_sizes = leaf_sizes
        self.site_weights: list[tuple[int | None, int]] = []
        self.patch: list[str] = []
        self.attention: list[set[int]] = []  # site ids per attention block
        self.norms: list[set[int]] = []  # leaf indices per norm
        self.embeddings: list[int] = []  # leaf index per embedding

    def weight_params(self, site_ids) -> int:
        seen, total = set(), 0
        for i in site_ids:
            leaf, size = self.site_weights[i]
            if leaf is None or leaf not in seen:
                seen.add(leaf)
                total += size
        return total


def _site(eqn, info, avals, census: _Census, input_rank: int) -> _Info:
    w = 0 if info[1].dep else 1
    act, weight = info[1 - w], info[w]
    site_id = len(census.site_weights)
    census.site_weights.append((weight.leaf, math.prod(avals[w].shape)))
    for block in act.attn:
        census.attention[block].add(site_id)
    if eqn.primitive.name == "conv_general_dilated" and w == 1:
        spec = eqn.params["dimension_numbers"].rhs_spec
        kernel = tuple(avals[1].shape[a] for a in spec[2:])
        strides = tuple(eqn.params["window_strides"])
        if strides == kernel and max(kernel) > 1:
            on = " on image input" if act.from_input else " (after other convs)"
            census.patch.append(f"patch embedding: conv with stride == kernel {kernel}{on}")
    elif act.from_input and eqn.primitive.name == "dot_general" and input_rank == 4 and len(avals[1 - w].shape) >= 3:
        census.patch.append("patch embedding: dense on patches cut from the image input (reshape/transpose)")
    out = _Info(True, depth=max(act.depth, weight.depth) + 1)
    out.proj = frozenset({site_id})
    return out


def _product(info, census: _Census) -> _Info:
    """A product of two activations: attention scores, or the probabilities times the values."""
    out = _Info(True, depth=max(i.depth for i in info))
    proj = frozenset().union(*(i.proj for i in info))
    if any(i.softmax for i in info):
        census.attention.append(set(proj))
        out.attn = frozenset({len(census.attention) - 1})
    else:
        out.scores, out.proj = True, proj
    return out


def _generic(eqn, info, census: _Census) -> list[_Info]:
    name = eqn.primitive.name
    dep = any(i.dep for i in info)
    out = _Info(dep, depth=max((i.depth for i in info), default=0))
    out.param = any(i.param for i in info)
    out.scores = any(i.scores for i in info)
    out.softmax = any(i.softmax for i in info) or (name == "exp" and out.scores)
    out.proj = frozenset().union(*(i.proj for i in info))
    out.attn = frozenset().union(*(i.attn for i in info))
    if len(info) == 1 and name in _LAYOUT:
        out.leaf = info[0].leaf if not dep else None
        out.param = out.param or out.leaf is not None
        out.from_input = info[0].from_input
    if name in ("rsqrt", "sqrt") and (dep or out.param):
        census.norms.append(set())
        out.norm = frozenset({len(census.norms) - 1})
    elif name in _ELEMENTWISE:
        out.norm = frozenset().union(*(i.norm for i in info))
        if out.norm:
            for i in info:
                if i.leaf is not None:
                    for n in out.norm:
                        census.norms[n].add(i.leaf)
    if name == "gather" and info and info[0].leaf is not None and any(i.dep for i in info[1:]):
        census.embeddings.append(info[0].leaf)
        out.depth += 1
    return [out] * max(1, len(eqn.outvars))


def _walk(jaxpr, infos, census: _Census, input_rank: int) -> list[_Info]:
    env = dict(zip(jaxpr.invars, infos, strict=True))
    for v in jaxpr.constvars:
        env[v] = _Info()

    def get(v):
        return _Info() if isinstance(v, jcore.Literal) else env[v]

    for eqn in jaxpr.eqns:
        info = [get(v) for v in eqn.invars]
        avals = [v.aval for v in eqn.invars]
        sub = call_body(eqn)
        if sub is not None:
            outs = _walk(sub[0], info, census, input_rank)
        elif eqn.primitive.name in SITE_PRIMITIVES and len(info) == 2 and info[0].dep != info[1].dep:
            outs = [_site(eqn, info, avals, census, input_rank)]
        elif eqn.primitive.name == "dot_general" and len(info) == 2 and info[0].dep and info[1].dep:
            outs = [_product(info, census)]
        else:
            outs = _generic(eqn, info, census)
        for v, o in zip(eqn.outvars, outs, strict=True):
            if not isinstance(v, jcore.DropVar):
                env[v] = o
    return [get(v) for v in jaxpr.outvars]


def _input_kind(x) -> str:
    if not jnp.issubdtype(jnp.result_type(x), jnp.floating):
        return "tokens"
    return {4: "image", 3: "sequence"}.get(np.ndim(x), "vector")


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def _family(census: _Census, counts: dict, input_kind: str) -> tuple[str, tuple[str, ...]]:
    dense, conv, attention = counts["dense"], counts["conv"], counts["attention"]
    # One conv with stride == kernel is the patch embedding; more of them are downsampling convs.
    patch_convs = min(1, sum(p.startswith("patch embedding: conv") for p in census.patch))
    if not attention:
        if conv:
            return "cnn", (f"{_n(conv, 'conv site')}, no attention", _n(dense, "dense site"))
        return "mlp", (f"{_n(dense, 'dense site')}, no conv or attention",)
    evidence = [_n(attention, "attention site")]
    if conv > patch_convs:
        evidence.append(f"{_n(conv - patch_convs, 'conv site')} beyond a patch embedding, with attention")
        return "hybrid", (*evidence, *census.patch[:1])
    if input_kind == "image":
        return "vit", (*evidence, *(census.patch[:1] or ["attention on image input"]))
    return "transformer", (*evidence, f"attention on {input_kind} input")


def model_signature(apply_fn, params, x) -> Signature:
    """The signature of ``apply_fn`` on inputs like ``x``, from its jaxpr (nothing runs).

    Args:
      apply_fn: any apply function of the contract (Flax NNX through
        :func:`hamjax.functional`, Linen, plain ``jax.numpy``).
      params: its params (arrays or ``jax.ShapeDtypeStruct`` s).
      x: an example batch ``(N, ...)``; only its shape and dtype matter.

    Returns:
      A :class:`Signature`.

    Raises:
      ValueError: ``x`` has no batch axis, or ``apply_fn`` has no dense or
        convolution op with a params weight.

    Examples:
      >>> import jax.numpy as jnp
      >>> from hamjax import autotune
      >>> sig = autotune.model_signature(lambda p, x: x.reshape(2, -1) @ p["w"], {"w": jnp.ones((12, 5))},
      ...                                jnp.ones((2, 2, 3, 2)))
      >>> sig.family, sig.input_shape, sig.input_kind, sig.num_outputs, sig.params, len(sig.key)
      ('mlp', (2, 3, 2), 'image', 5, 60, 64)
    """
    if np.ndim(x) < 1:
        raise ValueError(f"model_signature: x must be a batch with a leading batch axis, got shape {np.shape(x)}")
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), jnp.result_type(a)), params)
    ax = jax.ShapeDtypeStruct(np.shape(x), jnp.result_type(x))
    try:
        sites = find_sites(apply_fn, abstract, ax)
    except ValueError:
        raise ValueError(
            "model_signature: apply_fn has no dense or convolution op with a params weight; nothing to tune"
        ) from None
    leaves = jax.tree.leaves(abstract)
    closed, out = jax.make_jaxpr(lambda p, xx: apply_fn(p, xx), return_shape=True)(abstract, ax)
    census = _Census([math.prod(a.shape) for a in leaves])
    infos = [_Info(False, i) for i in range(len(leaves))] + [_Info(True, from_input=True)]
    outs = _walk(closed.jaxpr, infos, census, np.ndim(x))
    counts, sizes = _site_counts(sites, census)
    family, evidence = _family(census, counts, _input_kind(x))
    first = jax.tree.leaves(out)[0]
    floating = [a for a in leaves if jnp.issubdtype(a.dtype, jnp.floating)]
    return Signature(
        family=family,
        evidence=evidence,
        params=sum(math.prod(a.shape) for a in floating),
        input_shape=tuple(int(s) for s in np.shape(x)[1:]),
        input_kind=_input_kind(x),
        num_outputs=int(first.shape[-1]) if first.ndim else 1,
        depth=max((o.depth for o in outs), default=0),
        **{k: counts[k] for k in KINDS},
        **{f"{k}_params": sizes[k] for k in KINDS},
    )


def _site_counts(sites, census: _Census) -> tuple[dict, dict]:
    """Counts and parameter totals per kind; dense and conv from the shared :func:`find_sites`."""
    counts, sizes = {}, {}
    for kind, primitive in (("dense", "dot_general"), ("conv", "conv_general_dilated")):
        mine = [s for s in sites if s.primitive == primitive]
        counts[kind] = len(mine)
        sizes[kind] = sum({s.leaf or s.name: math.prod(s.weight_shape) for s in mine}.values())
    counts["attention"] = len(census.attention)
    sizes["attention"] = census.weight_params(set().union(*census.attention))
    counts["norm"] = len(census.norms)
    sizes["norm"] = sum(census.leaf_sizes[i] for i in set().union(*census.norms))
    counts["embedding"] = len(census.embeddings)
    sizes["embedding"] = sum(census.leaf_sizes[i] for i in set(census.embeddings))
    return counts, sizes


def similarity(a: Signature, b: Signature) -> float:
    """How alike two signatures are, in ``[0, 1]``: 1 exactly when their keys are equal.

    ``exp(-d)`` with ``d`` the mean absolute difference of ``log(1 + v)``
    over the sizes and counts (params, depth, outputs, input size, and each
    kind's count and parameters), times 0.25 for another family and 0.5
    for another input kind; below 1 whenever the keys differ.

    Args:
      a, b: two :class:`Signature` s.

    Returns:
      A float in ``[0, 1]``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from hamjax import autotune
      >>> def sig(width):
      ...     p = {"w1": jnp.ones((4, width)), "w2": jnp.ones((width, 3))}
      ...     return autotune.model_signature(lambda p, x: jnp.tanh(x @ p["w1"]) @ p["w2"], p, jnp.ones((2, 4)))
      >>> autotune.similarity(sig(8), sig(8)), 0.5 < autotune.similarity(sig(8), sig(16)) < 1.0
      (1.0, True)
    """
    for arg, s in (("a", a), ("b", b)):
        if not isinstance(s, Signature):
            raise ValueError(f"similarity: {arg} must be a Signature, got {type(s).__name__}")
    if a.key == b.key:
        return 1.0

    def features(s: Signature):
        return [s.params, s.depth, s.num_outputs, math.prod(s.input_shape)] + [
            getattr(s, f) for k in KINDS for f in (k, f"{k}_params")
        ]

    d = float(np.mean([abs(math.log1p(u) - math.log1p(v)) for u, v in zip(features(a), features(b), strict=True)]))
    s = math.exp(-d) * (1.0 if a.family == b.family else 0.25) * (1.0 if a.input_kind == b.input_kind else 0.5)
    return min(s, 0.999)
