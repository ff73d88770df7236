"""Micro-batching: concurrent forecasts share predict calls and each gets exactly its own rows back."""
from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from predictor.batching import MicroBatcher


class SlowModel:
    """Stands in for the forecaster's cost profile: a fixed cost per call, whatever the batch."""

    def __init__(self, seconds: float = 0.05):
        self.seconds = seconds
        self.batches: list[int] = []

    def __call__(self, windows: np.ndarray) -> np.ndarray:
        self.batches.append(len(windows))
        time.sleep(self.seconds)
        return np.stack([windows[:, :2] * 1.0, windows[:, :2] * 2.0])  # [q=2, n, h=2], traceable per row


def rows(start: int, n: int) -> np.ndarray:
    return np.arange(start, start + n, dtype=float)[:, None] * np.ones((1, 4))


def test_concurrent_requests_share_predict_calls_and_get_their_own_rows():
    model = SlowModel()
    sizes: list[int] = []
    batcher = MicroBatcher(model, on_batch=sizes.append)

    async def scenario():
        first = asyncio.create_task(batcher.forecast(rows(0, 1)))
        await asyncio.sleep(0.01)  # the first predict is running now; these queue behind it
        rest = [asyncio.create_task(batcher.forecast(rows(100 * i, 3))) for i in range(1, 9)]
        return await first, await asyncio.gather(*rest)

    first, rest = asyncio.run(scenario())
    assert model.batches == [1, 24] and sizes == [1, 24]
    np.testing.assert_array_equal(first[1], rows(0, 1)[:, :2] * 2)
    for i, out in enumerate(rest, start=1):
        assert out.shape == (2, 3, 2)
        np.testing.assert_array_equal(out[0], rows(100 * i, 3)[:, :2])


def test_batches_respect_the_series_limit_but_never_split_a_request():
    model = SlowModel(0.02)
    batcher = MicroBatcher(model, max_series=10)

    async def scenario():
        blocker = asyncio.create_task(batcher.forecast(rows(0, 1)))
        await asyncio.sleep(0.005)
        waiting = [asyncio.create_task(batcher.forecast(rows(0, n))) for n in (4, 4, 4, 25)]
        await asyncio.gather(blocker, *waiting)

    asyncio.run(scenario())
    assert model.batches == [1, 8, 4, 25]


def test_max_delay_gathers_requests_that_arrive_slightly_apart():
    model = SlowModel(0.0)
    batcher = MicroBatcher(model, max_delay_s=0.05)

    async def scenario():
        tasks = [asyncio.create_task(batcher.forecast(rows(0, 1)))]
        await asyncio.sleep(0.01)
        tasks.append(asyncio.create_task(batcher.forecast(rows(0, 2))))
        await asyncio.gather(*tasks)

    asyncio.run(scenario())
    assert model.batches == [3]


def test_a_failing_predict_fails_every_request_of_its_batch_and_the_next_batch_still_runs():
    calls = []

    def flaky(windows):
        calls.append(len(windows))
        time.sleep(0.02)
        if len(calls) == 2:
            raise RuntimeError("boom")
        return np.stack([windows[:, :2]])

    batcher = MicroBatcher(flaky)

    async def scenario():
        first = asyncio.create_task(batcher.forecast(rows(0, 1)))
        await asyncio.sleep(0.005)
        doomed = [asyncio.create_task(batcher.forecast(rows(0, 1))) for _ in range(2)]
        await first
        results = await asyncio.gather(*doomed, return_exceptions=True)
        after = await batcher.forecast(rows(5, 1))
        return results, after

    results, after = asyncio.run(scenario())
    assert all(isinstance(r, RuntimeError) for r in results)
    np.testing.assert_array_equal(after[0], rows(5, 1)[:, :2])


def test_small_batches_that_allow_it_run_on_the_event_loop_and_others_on_the_forecast_thread():
    import threading

    where: list[tuple[int, str]] = []

    def model(windows: np.ndarray) -> np.ndarray:
        where.append((len(windows), threading.current_thread().name))
        return np.stack([windows[:, :2]])

    batcher = MicroBatcher(model, inline_max_series=4)

    async def scenario():
        loop_thread = threading.current_thread().name
        await batcher.forecast(rows(0, 4), inline=True)  # small, allowed: on the loop
        await batcher.forecast(rows(0, 5), inline=True)  # too many series: thread
        await batcher.forecast(rows(0, 1), inline=False)  # not allowed (gRPC): thread
        return loop_thread

    loop_thread = asyncio.run(scenario())
    assert where[0] == (4, loop_thread)
    assert where[1][0] == 5 and where[1][1].startswith("forecast")
    assert where[2][0] == 1 and where[2][1].startswith("forecast")


def test_callbacks_get_their_rows_as_soon_as_predicted_and_cancelled_entries_are_skipped():
    """The callback form the native gRPC front uses: no coroutine per request; a cancelled entry costs
    no predict rows and hears nothing; a callback that fails does not lose the others' replies."""
    model = SlowModel(0.0)
    batcher = MicroBatcher(model, inline_max_series=64)
    heard: list[tuple[str, object]] = []

    def listener(name: str):
        def done(result, exc):
            heard.append((name, exc if exc is not None else result))
            if name == "faulty":
                raise RuntimeError("this reply could not be written")
        return done

    async def scenario():
        batcher.submit(rows(0, 1), True, listener("faulty"))
        dropped = batcher.submit(rows(10, 2), True, listener("dropped"))
        batcher.submit(rows(20, 3), True, listener("kept"))
        dropped.cancel()
        assert heard == []  # nothing is predicted before the loop gets control back
        await asyncio.sleep(0)
        await asyncio.sleep(0)

    asyncio.run(scenario())
    assert model.batches == [4]  # 1 + 3 rows; the cancelled entry's 2 are not predicted
    assert [name for name, _ in heard] == ["faulty", "kept"]
    np.testing.assert_array_equal(heard[1][1][0], rows(20, 3)[:, :2])


def test_a_batcher_moves_to_a_new_event_loop():
    """A worker process or a test may run the same model on another loop; nothing is left waiting on the old one."""
    model = SlowModel(0.01)
    batcher = MicroBatcher(model)

    async def leave_one_running():
        asyncio.get_running_loop().create_task(batcher.forecast(rows(0, 1)))  # the loop closes under it
        await asyncio.sleep(0)

    asyncio.run(leave_one_running())
    out = asyncio.run(asyncio.wait_for(batcher.forecast(rows(7, 1)), 5))
    np.testing.assert_array_equal(out[0], rows(7, 1)[:, :2])


@pytest.mark.parametrize("nice", [None, 3, 0])
def test_predicts_run_at_a_lower_cpu_priority_than_the_event_loop_and_so_do_threads_they_start(nice):
    """The forecast thread yields the core to the event loop (batching.lower_priority): its nice value is
    the loop's + FORECAST_NICE, or + `nice` (--forecast_nice), at most 19, read from the kernel for the
    thread that ran the predict and for a thread that predict started (numba's threads are started that way)."""
    import os
    import threading

    from predictor.batching import FORECAST_NICE

    seen: list[int] = []

    def model(windows: np.ndarray) -> np.ndarray:
        seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        child = threading.Thread(target=lambda: seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id())))
        child.start()
        child.join()
        return np.stack([windows[:, :2]])

    batcher = MicroBatcher(model) if nice is None else MicroBatcher(model, nice=nice)
    loop_nice = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    asyncio.run(batcher.forecast(rows(0, 1), inline=False))
    assert seen == [min(19, loop_nice + (FORECAST_NICE if nice is None else nice))] * 2
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == loop_nice  # the loop's own is unchanged
