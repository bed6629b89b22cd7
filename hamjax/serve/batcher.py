"""Dynamic batching: one owner task per model gathers requests into batches that never exceed ``max_batch`` rows.

A request is a block of rows; :meth:`Batcher.submit` queues it and waits
for its rows of the output. The owner task takes the oldest request, then
keeps adding the next ones in arrival order while they fit in ``max_batch``
rows, until the batch is full, the next request does not fit (it starts the
next batch; a request is never split), or ``max_wait_ms`` have passed since
the first request of the batch arrived. The batch runs in one dedicated
worker thread, so the event loop keeps accepting requests while the runtime
computes, and only one runtime call runs at a time per model (concurrent calls
into one session contend for the same threads). Requests that arrive while a
batch runs form the next one.

The queue is bounded in rows (``max_queue``): a request beyond it is refused
at once with :class:`QueueFull`, so overload answers quickly instead of
queueing without end. :meth:`Batcher.drain` stops taking requests, answers
everything already accepted and stops the worker.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from hamjax._checks import check_int, check_number


class QueueFull(RuntimeError):
    """The batcher holds ``max_queue`` rows already: answer 503 and let the client retry."""


class Draining(RuntimeError):
    """The batcher is draining for shutdown and takes no new requests."""


GAP_WEIGHT = 0.2
"""The weight of the newest gap in the mean gap between arrivals (about the last five arrivals count)."""


class Batcher:
    """Gather concurrent requests into batches for one model, run them in one worker thread, split the results.

    Args:
      model: anything with ``predict(x) -> y`` (one synchronous call on up to
        ``max_batch`` rows, returning one output row per input row), and
        optionally ``warm()`` and ``name``.
      max_batch: most rows in one ``predict`` call; a request with more is refused.
      max_wait_ms: how long a batch may wait for more rows after its first request arrived. It waits only
        while requests arrive fast enough that a follower is likely within it (the mean gap between arrivals,
        an exponentially weighted average, is below half of ``max_wait_ms``: for Poisson arrivals, a follower
        within the wait is then more than 86% likely): a lone request under light load, or from a client that
        waits for each answer, runs at once.
      max_queue: most rows waiting (not yet in a running batch); beyond it :class:`QueueFull`.
      on_batch: ``on_batch(rows, seconds)`` after each batch (rows without padding), e.g. for metrics.

    Examples:
      >>> import asyncio, numpy as np
      >>> class Double:
      ...     def predict(self, x):
      ...         return 2 * x
      >>> async def main():
      ...     batcher = Batcher(Double(), max_batch=4, max_wait_ms=1.0, max_queue=16)
      ...     outs = await asyncio.gather(*(batcher.submit(np.full((1, 2), i)) for i in range(3)))
      ...     await batcher.drain()
      ...     return [o.tolist() for o in outs]
      >>> asyncio.run(main())
      [[[0, 0]], [[2, 2]], [[4, 4]]]
    """

    def __init__(
        self,
        model: Any,
        *,
        max_batch: int,
        max_wait_ms: float,
        max_queue: int,
        on_batch: Callable[[int, float], None] | None = None,
    ):
        self.model = model
        self.max_batch = check_int("Batcher", "max_batch", max_batch, minimum=1)
        self.max_wait = check_number("Batcher", "max_wait_ms", max_wait_ms, minimum=0) / 1000.0
        self.max_queue = check_int("Batcher", "max_queue", max_queue, minimum=self.max_batch)
        self.on_batch = on_batch
        name = getattr(model, "name", "model")
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"hamjax-{name}")
        # (rows array, future, arrival time); only the event loop's thread touches it.
        self._queue: collections.deque[tuple[np.ndarray, asyncio.Future, float]] = collections.deque()
        self._rows = 0
        self._wake: asyncio.Event | None = None
        self._owner: asyncio.Task | None = None
        self._closed = False
        self.batches = 0
        self.gap = math.inf  # the exponentially weighted mean seconds between arrivals
        self._last_arrival: float | None = None

    @property
    def depth(self) -> int:
        """Rows waiting for a batch (the one running excluded)."""
        return self._rows

    @property
    def closed(self) -> bool:
        """Whether :meth:`drain` was called: no new requests are taken."""
        return self._closed

    def _start(self) -> None:
        if self._owner is None:
            self._wake = asyncio.Event()
            self._owner = asyncio.get_running_loop().create_task(self._run(), name="hamjax-batcher")

    async def warm(self) -> Any:
        """Run the model's ``warm()`` in the worker thread (so it is warm where batches run); returns its result."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.model.warm)

    async def submit(self, x: np.ndarray) -> np.ndarray:
        """Queue ``x`` (at most ``max_batch`` rows) and wait for its output rows.

        Args:
          x: a validated input with rows on axis 0.

        Returns:
          The model's output for ``x``'s rows.

        Raises:
          Draining: after :meth:`drain` began.
          QueueFull: ``max_queue`` rows are already waiting.
          ValueError: ``x`` has no rows or more than ``max_batch``.
          Exception: whatever the model raised for the batch.
        """
        if self._closed:
            raise Draining("the server is shutting down")
        rows = int(x.shape[0])
        if not 1 <= rows <= self.max_batch:
            raise ValueError(f"Batcher.submit: x must have 1 to {self.max_batch} rows, got {rows}")
        if self._rows + rows > self.max_queue:
            raise QueueFull(f"{self._rows} rows are queued (max_queue={self.max_queue}); retry shortly")
        self._start()
        future = asyncio.get_running_loop().create_future()
        now = time.perf_counter()
        if self._last_arrival is not None:
            gap = now - self._last_arrival
            self.gap = gap if math.isinf(self.gap) else (1 - GAP_WEIGHT) * self.gap + GAP_WEIGHT * gap
        self._last_arrival = now
        self._queue.append((x, future, now))
        self._rows += rows
        self._wake.set()
        return await future

    def _take(self) -> tuple[np.ndarray, asyncio.Future]:
        x, future, _ = self._queue.popleft()
        self._rows -= x.shape[0]
        return x, future

    async def _gather(self) -> list[tuple[np.ndarray, asyncio.Future]]:
        """The next batch: the oldest request, then followers in order while they fit and the wait lasts."""
        deadline = self._queue[0][2] + self.max_wait
        batch = [self._take()]
        rows = batch[0][0].shape[0]
        while rows < self.max_batch:
            if self._queue:
                if rows + self._queue[0][0].shape[0] > self.max_batch:
                    break  # the next request starts the next batch
                batch.append(self._take())
                rows += batch[-1][0].shape[0]
                continue
            left = deadline - time.perf_counter()
            if left <= 0 or self._closed or self.gap > self.max_wait / 2:
                break  # no time left, or a follower is not likely within the wait
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), left)
            except TimeoutError:
                break
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                if self._closed:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = await self._gather()
            live = [(x, f) for x, f in batch if not f.done()]  # a cancelled request (client gone) is skipped
            if not live:
                continue
            xs = [x for x, _ in live]
            started = time.perf_counter()
            try:
                y = await loop.run_in_executor(self._executor, self.model.predict, np.concatenate(xs))
                y = np.asarray(y)
                if y.ndim == 0 or y.shape[0] != sum(x.shape[0] for x in xs):
                    raise ValueError(f"the model returned shape {y.shape} for {sum(x.shape[0] for x in xs)} rows")
            except Exception as err:
                for _, future in live:
                    if not future.done():
                        future.set_exception(err)
                continue
            seconds = time.perf_counter() - started
            self.batches += 1
            if self.on_batch is not None:
                self.on_batch(sum(x.shape[0] for x in xs), seconds)
            for part, (_, future) in zip(np.split(y, np.cumsum([x.shape[0] for x in xs[:-1]])), live, strict=True):
                if not future.done():
                    future.set_result(part)

    async def drain(self) -> None:
        """Take no new requests, answer every accepted one, then stop the owner task and the worker thread."""
        self._closed = True
        if self._owner is not None:
            self._wake.set()
            await self._owner
        self._executor.shutdown(wait=True)
