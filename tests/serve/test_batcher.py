import asyncio
import threading
import time

import numpy as np
import pytest

from hamjax.serve.batcher import Batcher, Draining, QueueFull


class Recorder:
    """A fake model: doubles its input, records every batch's rows, optionally sleeps or waits for a gate."""

    name = "fake"

    def __init__(self, seconds=0.0, gate=None, fail_on=None):
        self.sizes, self.threads = [], set()
        self.seconds, self.gate, self.fail_on = seconds, gate, fail_on

    def predict(self, x):
        self.threads.add(threading.get_ident())
        if self.gate is not None:
            self.gate.wait(5)
        if self.seconds:
            time.sleep(self.seconds)
        self.sizes.append(x.shape[0])
        if self.fail_on is not None and self.fail_on in x[:, 0]:
            raise RuntimeError("boom")
        return 2 * x

    def warm(self):
        return "warm"


def run(coroutine):
    return asyncio.run(coroutine)


def test_concurrent_requests_are_batched_split_back_and_never_over_max_batch():
    model = Recorder(seconds=0.002)

    async def main():
        batcher = Batcher(model, max_batch=8, max_wait_ms=5.0, max_queue=1000)
        rng = np.random.default_rng(0)
        xs = [np.full((int(rng.integers(1, 6)), 2), i, np.float32) for i in range(120)]
        outs = await asyncio.gather(*(batcher.submit(x) for x in xs))
        await batcher.drain()
        return xs, outs

    xs, outs = run(main())
    for x, y in zip(xs, outs, strict=True):
        np.testing.assert_array_equal(y, 2 * x)
    assert max(model.sizes) <= 8 and sum(model.sizes) == sum(len(x) for x in xs)
    assert len(model.sizes) < 120  # requests shared batches
    assert len(model.threads) == 1 and threading.get_ident() not in model.threads


def test_a_request_that_does_not_fit_waits_for_the_next_batch():
    model = Recorder()

    async def main():
        batcher = Batcher(model, max_batch=8, max_wait_ms=20.0, max_queue=64)
        outs = await asyncio.gather(*(batcher.submit(np.full((n, 1), n)) for n in (5, 5, 3)))
        await batcher.drain()
        return outs

    outs = run(main())
    assert model.sizes == [5, 8]  # 5 alone (the next 5 does not fit), then 5 + 3
    assert [o[:, 0].tolist() for o in outs] == [[10] * 5, [10] * 5, [6] * 3]


def test_max_wait_bounds_how_long_a_lone_request_waits():
    model = Recorder()

    async def one(wait_ms):
        batcher = Batcher(model, max_batch=8, max_wait_ms=wait_ms, max_queue=64)
        await batcher.submit(np.ones((1, 1)))  # the owner task starts: not part of the timing
        started = time.perf_counter()
        await batcher.submit(np.ones((1, 1)))
        elapsed = time.perf_counter() - started
        await batcher.drain()
        return elapsed

    assert 0.05 <= run(one(50.0)) < 0.5
    assert run(one(0.0)) < 0.05


def test_a_trickle_of_requests_runs_at_once_and_a_burst_waits_for_followers():
    model = Recorder()

    async def trickle():
        batcher = Batcher(model, max_batch=8, max_wait_ms=30.0, max_queue=64)
        times = []
        for _ in range(4):  # arrivals 60 ms apart: no follower is expected within the 30 ms wait
            await asyncio.sleep(0.06)
            started = time.perf_counter()
            await batcher.submit(np.ones((1, 1)))
            times.append(time.perf_counter() - started)
        burst = await asyncio.gather(*(batcher.submit(np.ones((1, 1))) for _ in range(6)))
        await batcher.drain()
        return times, batcher.gap, len(burst)

    times, gap, answered = run(trickle())
    assert max(times[1:]) < 0.02 and answered == 6  # the first sets no gap yet and waits its 30 ms at most
    assert gap < 0.03 and model.sizes[-1] > 1  # the burst pulled the mean gap down: its requests were batched


def test_a_full_batch_runs_without_waiting():
    async def main():
        batcher = Batcher(Recorder(), max_batch=4, max_wait_ms=2000.0, max_queue=64)
        started = time.perf_counter()
        await asyncio.gather(*(batcher.submit(np.ones((2, 1))) for _ in range(2)))
        elapsed = time.perf_counter() - started
        await batcher.drain()
        return elapsed

    assert run(main()) < 1.0


def test_the_queue_is_bounded_in_rows():
    gate = threading.Event()
    model = Recorder(gate=gate)

    async def main():
        batcher = Batcher(model, max_batch=4, max_wait_ms=0.0, max_queue=8)
        running = asyncio.ensure_future(batcher.submit(np.ones((4, 1))))
        await asyncio.sleep(0.05)  # that batch now blocks the worker
        queued = [asyncio.ensure_future(batcher.submit(np.ones((4, 1)))) for _ in range(2)]
        await asyncio.sleep(0)
        assert batcher.depth == 8
        with pytest.raises(QueueFull, match="8 rows are queued"):
            await batcher.submit(np.ones((1, 1)))
        gate.set()
        await asyncio.gather(running, *queued)
        await batcher.drain()

    run(main())
    assert model.sizes == [4, 4, 4]


def test_drain_answers_everything_accepted_then_refuses():
    model = Recorder(seconds=0.01)

    async def main():
        batcher = Batcher(model, max_batch=4, max_wait_ms=1.0, max_queue=1000)
        pending = [asyncio.ensure_future(batcher.submit(np.full((1, 1), i))) for i in range(40)]
        await asyncio.sleep(0)
        await batcher.drain()
        assert all(p.done() for p in pending)
        with pytest.raises(Draining):
            await batcher.submit(np.ones((1, 1)))
        return [p.result()[0, 0] for p in pending]

    assert run(main()) == [2 * i for i in range(40)]


def test_a_failing_batch_fails_its_requests_only():
    model = Recorder(fail_on=7)

    async def main():
        batcher = Batcher(model, max_batch=2, max_wait_ms=10.0, max_queue=64)
        results = await asyncio.gather(*(batcher.submit(np.full((1, 1), i)) for i in (6, 7, 8)), return_exceptions=True)
        after = await batcher.submit(np.full((1, 1), 9))
        await batcher.drain()
        return results, after

    (a, b, c), after = run(main())
    assert isinstance(a, RuntimeError) and isinstance(b, RuntimeError)  # 6 and 7 shared the failing batch
    assert c[0, 0] == 16 and after[0, 0] == 18


def test_a_cancelled_request_is_skipped():
    gate = threading.Event()
    model = Recorder(gate=gate)

    async def main():
        batcher = Batcher(model, max_batch=1, max_wait_ms=0.0, max_queue=64)
        first = asyncio.ensure_future(batcher.submit(np.full((1, 1), 1)))
        await asyncio.sleep(0.05)
        gone = asyncio.ensure_future(batcher.submit(np.full((1, 1), 2)))
        kept = asyncio.ensure_future(batcher.submit(np.full((1, 1), 3)))
        await asyncio.sleep(0)
        gone.cancel()
        gate.set()
        await asyncio.gather(first, kept)
        await batcher.drain()

    run(main())
    assert model.sizes == [1, 1]


def test_warm_runs_in_the_worker_thread_and_sizes_are_checked():
    model = Recorder()

    async def main():
        batcher = Batcher(model, max_batch=2, max_wait_ms=0.0, max_queue=4)
        assert await batcher.warm() == "warm"
        with pytest.raises(ValueError, match="1 to 2 rows, got 3"):
            await batcher.submit(np.ones((3, 1)))
        await batcher.drain()

    run(main())
    with pytest.raises(ValueError, match="max_queue must be an integer >= 4"):
        Batcher(model, max_batch=4, max_wait_ms=1.0, max_queue=2)
