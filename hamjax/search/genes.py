"""The genes of a search space: :class:`Int`, :class:`Float` and :class:`Choice`, and their checks.

A gene is a frozen, hashable description of one searchable value; a
:class:`~hamjax.search.space.Space` is an ordered mapping of names to genes.
In a genome batch (:data:`Genomes`) an ``Int`` gene is an int32 column, a
``Float`` gene a float32 column and a ``Choice`` gene the int32 index of its
option. The genes are re-exported by :mod:`hamjax.search.space`, where users
import them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

Genomes = dict[str, jax.Array]

_INT32 = np.iinfo(np.int32)
_F32_MAX = float(np.finfo(np.float32).max)


@dataclasses.dataclass(frozen=True)
class Int:
    """An integer gene in ``[low, high]`` (both inclusive), stored as int32.

    Args:
      low: the smallest value, an int within int32.
      high: the largest value, ``>= low``; ``high - low`` must fit in int32.

    Examples:
      >>> Int(1, 8).high
      8
    """

    low: int
    high: int


@dataclasses.dataclass(frozen=True)
class Float:
    """A float gene in ``[low, high]``, stored as float32; ``log`` searches ``log(x)`` uniformly.

    Args:
      low: the smallest value, finite within float32.
      high: the largest value, ``>= low``.
      log: search in log space (needs ``low > 0``).

    Examples:
      >>> Float(1e-4, 1e-1, log=True).log
      True
    """

    low: float
    high: float
    log: bool = False


@dataclasses.dataclass(frozen=True)
class Choice:
    """A categorical gene over ``options``, stored as the int32 index of the option.

    Args:
      options: distinct, hashable options; a list is stored as a tuple.

    Examples:
      >>> Choice(["relu", "gelu"]).options
      ('relu', 'gelu')
    """

    options: tuple

    def __post_init__(self):
        if not isinstance(self.options, tuple) and isinstance(self.options, Sequence):
            object.__setattr__(self, "options", tuple(self.options))


Gene = Int | Float | Choice


def check_gene(name: str, gene: Any) -> Gene:
    """``gene`` with plain Python bounds, or ``ValueError`` naming the gene and what is wrong.

    Args:
      name: the gene's name in its space, for the message.
      gene: an :class:`Int`, :class:`Float` or :class:`Choice`.

    Returns:
      The gene, its bounds converted to ``int`` or ``float``.

    Examples:
      >>> import numpy as np
      >>> check_gene("width", Int(np.int64(8), 64))
      Int(low=8, high=64)
      >>> check_gene("width", Int(64, 8))
      Traceback (most recent call last):
      ...
      ValueError: gene 'width': low must be <= high, got low=64, high=8
    """
    where = f"gene {name!r}"
    if isinstance(gene, Int):
        for side in ("low", "high"):
            v = getattr(gene, side)
            if isinstance(v, bool) or not isinstance(v, int | np.integer) or not _INT32.min <= v < _INT32.max:
                raise ValueError(f"{where}: {side} must be an int within int32, got {v!r}")
        if gene.low > gene.high:
            raise ValueError(f"{where}: low must be <= high, got low={gene.low!r}, high={gene.high!r}")
        if gene.high - gene.low > _INT32.max:
            raise ValueError(f"{where}: high - low must fit in int32, got low={gene.low!r}, high={gene.high!r}")
        return Int(int(gene.low), int(gene.high))
    if isinstance(gene, Float):
        for side in ("low", "high"):
            v = getattr(gene, side)
            if isinstance(v, bool) or not isinstance(v, int | float | np.number) or not abs(v) <= _F32_MAX:
                raise ValueError(f"{where}: {side} must be a finite number within float32, got {v!r}")
        if gene.low > gene.high:
            raise ValueError(f"{where}: low must be <= high, got low={gene.low!r}, high={gene.high!r}")
        if gene.log and not np.float32(gene.low) > 0:
            raise ValueError(f"{where}: a log gene needs low > 0 (as a float32), got low={gene.low!r}")
        return Float(float(gene.low), float(gene.high), bool(gene.log))
    if isinstance(gene, Choice):
        if not isinstance(gene.options, tuple) or not gene.options:
            raise ValueError(f"{where}: Choice needs a non-empty tuple of options, got {gene.options!r}")
        try:
            distinct = len(set(gene.options))
        except TypeError as e:
            raise ValueError(f"{where}: Choice options must be hashable, got {gene.options!r}") from e
        if distinct != len(gene.options):
            raise ValueError(f"{where}: Choice options must be distinct, got {gene.options!r}")
        return gene
    raise ValueError(f"{where}: expected Int, Float or Choice, got {gene!r}")
