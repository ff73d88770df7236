"""Cross-request micro-batching: concurrent forecasts share one predict call.

Tree ensembles cost about the same per call whatever the batch size, so requests that arrive while
a predict is running wait for it to finish and then go together in the next one. A lone request
starts at once (no added latency); `max_delay` optionally holds a batch open a little longer.

Small batches of requests that allow it (`inline`) are predicted on the event loop itself: handing
a sub-millisecond predict to the forecast thread and back costs more than the predict, and requests
that arrive meanwhile still wait in the socket and form the next batch. grpcio's requests do not
allow it: grpc.aio accepts calls one at a time through the event loop, so a busy loop would stop them
from gathering and batches would shrink to one.

The batcher is driven by loop callbacks, not a task: a batch is taken by a callback scheduled when the
first request of it arrives (after every request already on its way through the loop), and each
request's `done` is called as soon as its rows are predicted, so a server that can write its reply from
there (the native gRPC server) does so before anything else runs.

The forecast thread (and numba's threads, which it starts) runs at a lower CPU priority than the event
loop (nice +`nice`, FORECAST_NICE by default): on a saturated core the loop gets most of it, so reads,
refusals and replies are not held up behind predicts, and predicts still get a share, so accepted
requests' forecasts are not starved. docs/design.md has the measured balance.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Optional

import numpy as np

logger = logging.getLogger("perf_predictor")

FORECAST_NICE = 5  # added to the forecast thread's nice value by default (weight about a third of the loop's)
Predict = Callable[[np.ndarray], np.ndarray]
# called on the event loop with the request's forecasts [q, n, h], or with the exception that failed its batch
Done = Callable[[Optional[np.ndarray], Optional[BaseException]], None]


class Pending:
    __slots__ = ("windows", "inline", "done", "cancelled")

    def __init__(self, windows: np.ndarray, inline: bool, done: Done):
        self.windows = windows
        self.inline = inline  # may be predicted on the event loop
        self.done = done
        self.cancelled = False

    def cancel(self) -> None:
        """Not predicted if its batch has not been taken yet, and `done` is not called."""
        self.cancelled = True


class MicroBatcher:
    def __init__(self, predict: Predict, max_delay_s: float = 0.0, max_series: int = 4096,
                 on_batch: Callable[[int], None] = lambda n_series: None, inline_max_series: int = 0,
                 nice: int = FORECAST_NICE):
        self.predict = predict
        self.inline_max_series = inline_max_series
        self.on_batch = on_batch
        self.max_delay_s = max_delay_s
        self.max_series = max_series
        self._pending: list[Pending] = []
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._scheduled = False  # a callback will take the next batch
        self._running = False  # a batch is being predicted on the forecast thread
        # One thread runs every predict that is not inline: the event loop stays free, and requests
        # never compete for the cores with each other's OpenMP teams.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="forecast",
                                            initializer=lower_priority, initargs=(nice,))

    def submit(self, windows: np.ndarray, inline: bool, done: Done) -> Pending:
        """Queues windows [n, W]; `done` gets the predict function's output for them, [q, n, h]. Call
        from the event loop. `inline`: may be predicted on the event loop when its batch is small."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # first use, or a new loop (worker process, tests): nothing carries over
            self._loop, self._scheduled, self._running, self._pending = loop, False, False, []
        item = Pending(windows, inline, done)
        self._pending.append(item)
        self._schedule()
        return item

    async def forecast(self, windows: np.ndarray, inline: bool = False) -> np.ndarray:
        """`submit` for a coroutine: the forecasts, or what failed the batch raised."""
        return await until_done(lambda done: self.submit(windows, inline, done))

    def _schedule(self) -> None:
        if self._scheduled or self._running or not self._pending:
            return
        self._scheduled = True
        if self.max_delay_s > 0 and sum(len(p.windows) for p in self._pending) < self.max_series:
            self._loop.call_later(self.max_delay_s, self._take)
        else:
            self._loop.call_soon(self._take)

    def _batch(self) -> list[Pending]:
        batch, rows = [], 0
        while self._pending and (not batch or rows + len(self._pending[0].windows) <= self.max_series):
            item = self._pending.pop(0)
            if not item.cancelled:
                batch.append(item)
                rows += len(item.windows)
        return batch

    def _take(self) -> None:
        self._scheduled = False
        batch = self._batch()
        if not batch:
            return
        windows = batch[0].windows if len(batch) == 1 else np.concatenate([p.windows for p in batch])
        self.on_batch(len(windows))
        if len(windows) <= self.inline_max_series and all(p.inline for p in batch):
            try:
                result = self.predict(windows)
            except Exception as exc:  # surfaced to every request of the batch
                self._deliver(batch, None, exc)
            else:
                self._deliver(batch, result, None)
            self._schedule()
        else:
            self._running = True
            loop = self._loop
            job = self._executor.submit(self.predict, windows)
            job.add_done_callback(lambda job: self._back_on_loop(loop, batch, job))

    def _back_on_loop(self, loop: asyncio.AbstractEventLoop, batch: list[Pending], job: Future) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile, and its requests with it
            loop.call_soon_threadsafe(self._finished, loop, batch, job)

    def _finished(self, loop: asyncio.AbstractEventLoop, batch: list[Pending], job: Future) -> None:
        if loop is not self._loop:
            return
        self._running = False
        exc = job.exception()
        self._deliver(batch, None if exc else job.result(), exc)
        self._schedule()

    @staticmethod
    def _deliver(batch: list[Pending], result: Optional[np.ndarray], exc: Optional[BaseException]) -> None:
        start = 0
        for p in batch:
            if not p.cancelled:
                try:
                    p.done(None if result is None else result[:, start : start + len(p.windows)], exc)
                except Exception:  # one request's reply failing must not lose the others'
                    logger.exception("delivering a forecast failed")
            start += len(p.windows)


def lower_priority(nice: int = FORECAST_NICE) -> None:
    """The calling thread (and the threads it starts) yields the CPU to the event loop: `nice` added to its
    nice value. Raising one's own nice value needs no privilege; if it fails all the same, predicts share
    the CPU evenly with the loop, and that is said once."""
    if nice <= 0:
        return
    thread = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, thread, min(19, os.getpriority(os.PRIO_PROCESS, thread) + nice))
    except OSError as exc:
        logger.warning("the forecast thread keeps the event loop's CPU priority: %s", exc)


async def until_done(submit: Callable[[Done], Any]) -> Any:
    """Awaits a call made with a `done` callback: `submit(done)` makes it and returns what cancels it
    (its queue entry, say), or None if `done` was called at once; cancelling the caller cancels that."""
    future = asyncio.get_running_loop().create_future()

    def done(result: Any, exc: Optional[BaseException]) -> None:
        if future.done():  # the caller was cancelled
            return
        if exc is None:
            future.set_result(result)
        else:
            future.set_exception(exc)

    item = submit(done)
    try:
        return await future
    except asyncio.CancelledError:
        if item is not None:
            item.cancel()
        raise
