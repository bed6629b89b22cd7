"""Search spaces: the genes :class:`Int`, :class:`Float`, :class:`Choice` and the :class:`Space` over them.

A :class:`Space` is an ordered mapping ``name -> gene`` of :class:`Int`,
:class:`Float` and :class:`Choice` genes. A *genome batch* is a dict
``name -> (N,) array`` (int32 for ``Int``/``Choice`` genes, a ``Choice``
stored as the index of its option; float32 for ``Float`` genes), so a whole
population is a fixed-structure pytree that ``jax.vmap`` and ``lax.scan``
carry (like any dict pytree, it comes back from ``jax.jit`` with sorted
keys; :attr:`Space.names` keeps the order). A :class:`Space` is hashable, so
it is a static argument: :meth:`Space.sample`, :meth:`Space.to_unit` and
:meth:`Space.from_unit` each compile once per space and batch size.
Concrete-only helpers (:meth:`Space.validate`, :meth:`Space.decode`,
:meth:`Space.encode`) move between arrays and Python values.

The genes are defined in :mod:`hamjax.search.genes` and the column layout
the jitted operators share in :mod:`hamjax.search.encoding`; both are
imported here, where users find them. The operators on genome batches
(mutation, crossover, population-based training) are in
:mod:`hamjax.search.evolution`, which re-exports ``Int``, ``Float``,
``Choice`` and ``Space``.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hamjax._checks import check_int, is_traced
from hamjax.search.encoding import assemble, from_search, layout_of, stack_columns, to_search
from hamjax.search.genes import Choice, Float, Gene, Genomes, Int, check_gene

__all__ = ["Choice", "Float", "Gene", "Genomes", "Int", "Space", "check_genomes"]


class Space:
    """An ordered, immutable, hashable mapping ``name -> gene``.

    Args:
      genes: a mapping of gene names to :class:`Int`, :class:`Float` or
        :class:`Choice`; the order fixes the columns of :meth:`to_unit`.

    Examples:
      >>> import jax
      >>> space = Space({"lr": Float(1e-4, 1e-1, log=True), "width": Int(16, 256), "act": Choice(("relu", "gelu"))})
      >>> genomes = space.sample(jax.random.key(0), 8)
      >>> genomes["width"].shape, genomes["width"].dtype
      ((8,), dtype('int32'))
      >>> sorted(space.decode(genomes, 0))
      ['act', 'lr', 'width']
    """

    def __init__(self, genes: Mapping[str, Gene]):
        if not isinstance(genes, Mapping) or not genes:
            raise ValueError(f"genes must be a non-empty mapping name -> Int | Float | Choice, got {genes!r}")
        items = []
        for name, gene in genes.items():
            if not isinstance(name, str):
                raise ValueError(f"gene names must be strings, got {name!r}")
            items.append((name, check_gene(name, gene)))
        self._items: tuple[tuple[str, Gene], ...] = tuple(items)

    @property
    def names(self) -> tuple[str, ...]:
        """Gene names, in order."""
        return tuple(n for n, _ in self._items)

    @property
    def genes(self) -> dict[str, Gene]:
        """A copy of the ``name -> gene`` mapping."""
        return dict(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Space) and self._items == other._items

    def __hash__(self) -> int:
        return hash(self._items)

    def __repr__(self) -> str:
        return f"Space({dict(self._items)!r})"

    def sample(self, key: jax.Array, num: int) -> Genomes:
        """Draws ``num`` members uniformly (log-uniformly for log floats).

        Args:
          key: a PRNG key.
          num: static number of members.

        Returns:
          A genome batch ``name -> (num,)`` (int32 or float32).
        """
        return _sample(self, key, check_int("sample", "num", num, minimum=1))

    def validate(self, genomes: Mapping[str, Any]) -> None:
        """Checks a concrete genome batch against the space; raises ``ValueError`` naming the bad gene.

        Args:
          genomes: ``name -> (N,)`` arrays with exactly the space's names.
        """
        if not isinstance(genomes, Mapping):
            raise ValueError(f"genomes must be a mapping name -> (N,) array, got {type(genomes).__name__}")
        missing = [n for n in self.names if n not in genomes]
        extra = [n for n in genomes if n not in self.names]
        if missing or extra:
            raise ValueError(
                f"genomes keys must be the space's genes {list(self.names)}: missing {missing}, extra {extra}"
            )
        length = None
        for name, gene in self._items:
            value = genomes[name]
            if is_traced(value):
                raise TypeError(f"validate needs concrete arrays; gene {name!r} is traced (call it outside jit)")
            v = np.asarray(value)
            if v.ndim != 1:
                raise ValueError(f"gene {name!r}: expected a 1-D (N,) array, got shape {v.shape}")
            if length is None:
                length = v.shape[0]
            elif v.shape[0] != length:
                raise ValueError(f"gene {name!r}: length {v.shape[0]} differs from the batch length {length}")
            if not (np.issubdtype(v.dtype, np.integer) or np.issubdtype(v.dtype, np.floating)):
                raise ValueError(f"gene {name!r}: expected a numeric array, got dtype {v.dtype}")
            if isinstance(gene, Float):
                lo, hi = np.float32(gene.low), np.float32(gene.high)
                v32 = v.astype(np.float32)
                bad = ~np.isfinite(v) | (v32 < lo) | (v32 > hi)
                allowed = f"finite floats in [{gene.low}, {gene.high}]"
            else:
                lo, hi = (gene.low, gene.high) if isinstance(gene, Int) else (0, len(gene.options) - 1)
                bad = ~np.isfinite(v) | (v != np.round(v)) | (v < lo) | (v > hi)
                allowed = f"integers in [{lo}, {hi}]" + (
                    f" (indices of {gene.options!r})" if isinstance(gene, Choice) else ""
                )
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                value = v[i].item()
                if not isinstance(gene, Float) and isinstance(value, float) and value.is_integer():
                    value = int(value)
                raise ValueError(
                    f"genome outside its search space: gene {name!r} has value {value!r} at member {i}; allowed: {allowed}"
                )

    def decode(self, genomes: Mapping[str, Any], i: int) -> dict[str, Any]:
        """Member ``i`` of a concrete genome batch as Python values (a ``Choice`` as its option).

        Args:
          genomes: a concrete genome batch; it is validated first.
          i: the member, negative counting from the end.

        Returns:
          ``name -> int | float | option``, in :attr:`names` order.
        """
        self.validate(genomes)
        n = np.asarray(genomes[self.names[0]]).shape[0]
        i = check_int("decode", "i", i, minimum=-n)
        if i >= n:
            raise ValueError(f"i must index a member of the batch of {n}, got {i}")
        out = {}
        for name, gene in self._items:
            v = np.asarray(genomes[name])[i]
            if isinstance(gene, Int):
                out[name] = int(v)
            elif isinstance(gene, Float):
                out[name] = float(v)
            else:
                out[name] = gene.options[int(v)]
        return out

    def encode(self, values: Mapping[str, Any]) -> Genomes:
        """One member (a batch of 1) from Python values; the inverse of :meth:`decode`.

        Args:
          values: ``name -> value`` for every gene: an int for ``Int``, a number
            for ``Float``, one of the options for ``Choice``.

        Returns:
          A genome batch ``name -> (1,)``; ``ValueError`` names a value outside the space.
        """
        if not isinstance(values, Mapping) or set(values) != set(self.names):
            got = list(values) if isinstance(values, Mapping) else type(values).__name__
            raise ValueError(f"values must map exactly the genes {list(self.names)}, got {got}")
        raw = {}
        for name, gene in self._items:
            v = values[name]
            if isinstance(gene, Choice):
                if v not in gene.options:
                    raise ValueError(f"gene {name!r}: {v!r} is not one of the options {gene.options!r}")
                raw[name] = np.asarray([gene.options.index(v)])
            elif isinstance(gene, Int):
                if isinstance(v, bool) or not isinstance(v, int | np.integer):
                    raise ValueError(f"gene {name!r}: expected an int in [{gene.low}, {gene.high}], got {v!r}")
                raw[name] = np.asarray([v])
            else:
                raw[name] = np.asarray([v], np.float64)
        self.validate(raw)
        return {n: jnp.asarray(raw[n], jnp.float32 if isinstance(g, Float) else jnp.int32) for n, g in self._items}

    def to_unit(self, genomes: Mapping[str, jax.Array]) -> jax.Array:
        """Maps a genome batch to ``(N, d)`` float32 coordinates in ``[0, 1]``, columns in :attr:`names` order.

        Floats map linearly (in ``log`` for log genes). An ``Int`` or ``Choice``
        with ``n`` values maps value ``j`` to the centre ``(j + 0.5) / n`` of its
        bin, so :meth:`from_unit` of uniform points is uniform over the values.
        Computed in float32: exact for ``Int`` ranges up to ``2**24`` values.
        Jittable.

        Args:
          genomes: a genome batch ``name -> (N,)``.

        Returns:
          ``(N, len(space))`` float32.
        """
        return _to_unit(self, check_genomes("Space.to_unit", "genomes", self, genomes))

    def from_unit(self, u: jax.Array) -> Genomes:
        """Maps ``(N, d)`` points of ``[0, 1]^d`` (clipped into it) to a genome batch; inverse of :meth:`to_unit`.

        Args:
          u: ``(N, len(space))`` coordinates, columns in :attr:`names` order
            (e.g. from a quasi-random sequence or an Optuna sampler).

        Returns:
          A genome batch ``name -> (N,)``.
        """
        if jnp.ndim(u) != 2 or jnp.shape(u)[1] != len(self._items):
            raise ValueError(f"u must have shape (N, {len(self._items)}), got {jnp.shape(u)}")
        return _from_unit(self, u)


# The space is static everywhere: each operator compiles once per space and batch shape, so an
# eager call is one dispatch instead of dozens, and a call under an outer jit is inlined.
@functools.partial(jax.jit, static_argnums=(0, 2))
def _sample(space: Space, key: jax.Array, num: int) -> Genomes:
    lay = layout_of(space)
    k_float, k_int = jax.random.split(key)
    groups = []
    if lay.floats:
        u = jax.random.uniform(k_float, (num, len(lay.floats)), jnp.float32)
        groups.append((lay.floats, from_search(lay, lay.low[None, :] + u * (lay.high - lay.low)[None, :])))
    if lay.discrete:
        shape = (num, len(lay.discrete))
        low = jnp.broadcast_to(lay.int_low[None, :], shape)
        high = jnp.broadcast_to(lay.int_high[None, :] + 1, shape)
        groups.append((lay.discrete, jax.random.randint(k_int, shape, low, high, jnp.int32)))
    return assemble(space.names, *groups)


@functools.partial(jax.jit, static_argnums=0)
def _to_unit(space: Space, genomes: Genomes) -> jax.Array:
    lay = layout_of(space)
    groups = []
    if lay.floats:
        width = lay.high - lay.low
        s = to_search(lay, stack_columns(genomes, lay.floats, jnp.float32))
        u = jnp.where(width[None, :] > 0, (s - lay.low[None, :]) / np.where(width > 0, width, 1.0)[None, :], 0.0)
        groups.append((lay.floats, u))
    if lay.discrete:
        # Value j of n maps to its bin centre (j + 0.5) / n, so from_unit of uniform points is uniform.
        n = (lay.int_high.astype(np.int64) - lay.int_low + 1).astype(np.float32)
        v = stack_columns(genomes, lay.discrete, jnp.int32)
        groups.append((lay.discrete, ((v - lay.int_low[None, :]).astype(jnp.float32) + 0.5) / n[None, :]))
    cols = assemble(space.names, *groups)
    return jnp.clip(jnp.stack([cols[n] for n in space.names], axis=1), 0.0, 1.0).astype(jnp.float32)


@functools.partial(jax.jit, static_argnums=0)
def _from_unit(space: Space, u: jax.Array) -> Genomes:
    lay = layout_of(space)
    u = jnp.clip(jnp.asarray(u, jnp.float32), 0.0, 1.0)
    index = {n: j for j, n in enumerate(space.names)}
    groups = []
    if lay.floats:
        uf = u[:, np.array([index[n] for n in lay.floats])]
        groups.append((lay.floats, from_search(lay, lay.low[None, :] + uf * (lay.high - lay.low)[None, :])))
    if lay.discrete:
        ud = u[:, np.array([index[n] for n in lay.discrete])]
        width = lay.int_high - lay.int_low  # fits in int32 (checked by Space)
        n = width.astype(np.float32) + 1
        # float -> int32 saturates, and the minimum keeps low + j <= high even where float32 rounds up.
        j = jnp.minimum(jnp.floor(ud * n[None, :]).astype(jnp.int32), width[None, :])
        groups.append((lay.discrete, lay.int_low[None, :] + j))
    return assemble(space.names, *groups)


def check_genomes(where: str, arg: str, space: Space, genomes: Mapping[str, Any]) -> Genomes:
    """Checks that ``genomes`` is a batch of ``space`` by keys and shapes only (static, so it runs under jit).

    Args:
      where: the caller, for the message.
      arg: the argument's name, for the message.
      space: the :class:`Space`.
      genomes: ``name -> (N,)`` arrays, concrete or traced.

    Returns:
      A plain dict in the space's order.

    Examples:
      >>> import numpy as np
      >>> space = Space({"n": Int(0, 3)})
      >>> check_genomes("mutate", "genomes", space, {"n": np.zeros(4, np.int32)})["n"].shape
      (4,)
      >>> check_genomes("mutate", "genomes", space, {"m": np.zeros(4)})
      Traceback (most recent call last):
      ...
      ValueError: mutate: genomes must map exactly the genes ['n'], got ['m']
    """
    if not isinstance(space, Space):
        raise ValueError(f"{where}: space must be a Space, got {type(space).__name__}")
    if not isinstance(genomes, Mapping) or set(genomes) != set(space.names):
        got = sorted(genomes) if isinstance(genomes, Mapping) else type(genomes).__name__
        raise ValueError(f"{where}: {arg} must map exactly the genes {list(space.names)}, got {got}")
    length = None
    for name in space.names:
        shape = jnp.shape(genomes[name])
        if len(shape) != 1 or (length is not None and shape[0] != length):
            raise ValueError(
                f"{where}: {arg}[{name!r}]: expected shape ({length if length is not None else 'N'},), got {shape}"
            )
        length = shape[0]
    return {n: genomes[n] for n in space.names}
