"""Chunked streaming to the device with bounded memory and prefetch.

:func:`stream` cuts a large array, a pytree of arrays, or a generator of
arrays of any row counts into fixed-shape chunks (so a jitted consumer
compiles once); a background thread puts them on the device ahead of the
consumer, never more than ``prefetch`` chunks ahead.
"""

from __future__ import annotations

import queue
import threading
import warnings
from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple

import jax
import numpy as np

from hamjax._checks import check_int


class Chunk(NamedTuple):
    """One fixed-shape chunk produced by :func:`stream`.

    Attributes:
      data: pytree of device arrays shaped like the source, every leaf with
        leading dimension ``chunk_size`` (rows past ``valid`` are zeros when
        padding).
      valid: number of real rows at the start of ``data``.
    """

    data: Any
    valid: int


def _is_array(value: Any) -> bool:
    """Array-likes that can be sliced lazily: numpy/jax arrays, memmaps, h5py datasets."""
    return hasattr(value, "shape") and hasattr(value, "__getitem__") and not isinstance(value, (list, tuple, dict))


def _rows(tree: Any, what: str) -> int:
    """The shared leading dimension of the leaves of ``tree``."""
    leaves = jax.tree.leaves(tree)
    if not leaves or not all(_is_array(leaf) for leaf in leaves):
        raise ValueError(f"{what} must be an array or a pytree of arrays, got {type(tree).__name__}")
    shapes = [tuple(leaf.shape) for leaf in leaves]
    if any(len(shape) == 0 for shape in shapes) or len({shape[0] for shape in shapes}) != 1:
        raise ValueError(f"{what}: every leaf needs the same leading dimension, got leaf shapes {shapes}")
    return shapes[0][0]


def _is_iterable_of_pieces(source: Any) -> bool:
    """Whether ``source`` yields pieces, rather than being one array or pytree of arrays."""
    if isinstance(source, (list, Iterator)):
        return True
    if _is_array(source) or not isinstance(source, Iterable):
        return False
    # A registered pytree (tuple, dict, NamedTuple) is one source; an iterable
    # jax does not know flattens to itself, with a warning that will become an
    # error in later jax versions.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            leaves = jax.tree.leaves(source)
        except (TypeError, ValueError):
            return True
    return len(leaves) == 1 and leaves[0] is source


def _slices(tree: Any, rows: int, size: int) -> Iterator[Any]:
    """Lazy row slices of an in-memory or on-disk array pytree."""
    for start in range(0, rows, size):
        yield jax.tree.map(lambda leaf, start=start: leaf[start : start + size], tree)


def _chunks(pieces: Iterable[Any], size: int, pad: bool) -> Iterator[tuple[Any, int]]:
    """Regroups pieces of any row counts into host chunks of ``size`` rows."""
    buffer: list[Any] = []
    buffered = 0
    treedef = None

    def emit(count: int) -> tuple[Any, int]:
        nonlocal buffer, buffered
        taken, rest, need = [], [], count
        for piece in buffer:
            rows = len(jax.tree.leaves(piece)[0])
            if need >= rows:
                taken.append(piece)
            elif need > 0:
                taken.append(jax.tree.map(lambda a, n=need: a[:n], piece))
                rest.append(jax.tree.map(lambda a, n=need: a[n:], piece))
            else:
                rest.append(piece)
            need -= min(need, rows)
        buffer, buffered = rest, buffered - count
        chunk = taken[0] if len(taken) == 1 else jax.tree.map(lambda *a: np.concatenate(a, axis=0), *taken)
        if pad and count < size:
            chunk = jax.tree.map(lambda a: np.concatenate([a, np.zeros((size - count, *a.shape[1:]), a.dtype)]), chunk)
        return chunk, count

    for index, piece in enumerate(pieces):
        what = f"stream: piece {index} of source"
        rows = _rows(piece, what)
        piece_def = jax.tree.structure(piece)
        if treedef is None:
            treedef = piece_def
        elif piece_def != treedef:
            raise ValueError(f"{what} has structure {piece_def}, expected {treedef} like the first piece")
        if rows:
            buffer.append(jax.tree.map(np.asarray, piece))
            buffered += rows
        while buffered >= size:
            yield emit(size)
    if buffered:
        yield emit(buffered)


def _put(q: queue.Queue, item: Any, stop: threading.Event) -> bool:
    """Blocks until ``item`` is queued or ``stop`` is set; returns whether it was queued."""
    while not stop.is_set():
        try:
            q.put(item, timeout=0.05)
            return True
        except queue.Full:
            continue
    return False


class _Failure(NamedTuple):
    error: BaseException


_END = object()


def _produce(pieces: Iterable[Any], size: int, pad: bool, device: Any, q: queue.Queue, stop: threading.Event) -> None:
    try:
        for chunk, valid in _chunks(pieces, size, pad):
            if not _put(q, Chunk(jax.device_put(chunk, device), valid), stop):
                return
        _put(q, _END, stop)
    except BaseException as error:  # any failure, even SystemExit, belongs to the consumer thread
        _put(q, _Failure(error), stop)


def _consume(pieces: Iterable[Any], size: int, prefetch: int, pad: bool, device: Any) -> Iterator[Chunk]:
    q: queue.Queue = queue.Queue(maxsize=prefetch)
    stop = threading.Event()
    thread = threading.Thread(
        target=_produce, args=(pieces, size, pad, device, q, stop), name="hamjax.streaming", daemon=True
    )
    thread.start()
    try:
        while True:
            item = q.get()
            if item is _END:
                return
            if isinstance(item, _Failure):
                raise item.error
            yield item
    finally:
        stop.set()
        # Drop queued chunks now so their device memory is freed with the stream.
        while not q.empty():
            q.get_nowait()


def stream(source: Any, chunk_size: int, *, prefetch: int = 2, pad: bool = True, device: Any = None) -> Iterator[Chunk]:
    """Streams a large source to the device in fixed-size chunks.

    A background thread cuts ``source`` into chunks of ``chunk_size`` rows,
    moves each to ``device`` with :func:`jax.device_put` and keeps at most
    ``prefetch`` of them waiting in a bounded queue, so the whole source is
    never held at once and the next chunk transfers while the current one is
    processed. With ``pad=True`` every chunk has the same shape (the last is
    padded with zeros), so a jitted consumer compiles once; ``valid`` tells
    how many rows are real. An exception in the source is re-raised in the
    consumer; closing the returned generator (or breaking out of a ``for``
    loop over it and dropping it) stops the thread. An iterator passed as
    ``source`` is not closed.

    Args:
      source: an array (numpy, jax, memmap or anything sliceable with a
        ``shape``), a pytree of arrays sharing their leading dimension (not a
        list), or an iterable (list, generator) yielding such arrays or
        pytrees with any row counts, all with the same structure.
      chunk_size: rows per chunk, >= 1.
      prefetch: chunks prepared ahead of the consumer, >= 1.
      pad: pad the last chunk with zero rows to ``chunk_size``.
      device: a device or sharding for :func:`jax.device_put`; the default
        device if None.

    Returns:
      An iterator of :class:`Chunk`.

    Raises:
      ValueError: for bad ``chunk_size`` or ``prefetch``, or leaves with
        different leading dimensions (for an iterable source, raised while
        iterating).

    Examples:
      >>> import numpy as np
      >>> chunks = list(stream(np.arange(10.0), 4))
      >>> [c.valid for c in chunks], chunks[-1].data.tolist()
      ([4, 4, 2], [8.0, 9.0, 0.0, 0.0])
    """
    chunk_size = check_int("stream", "chunk_size", chunk_size, minimum=1)
    prefetch = check_int("stream", "prefetch", prefetch, minimum=1)
    if _is_iterable_of_pieces(source):
        pieces = source
    else:
        rows = _rows(source, "stream: source")
        pieces = _slices(source, rows, chunk_size)
    return _consume(pieces, chunk_size, prefetch, pad, device)
