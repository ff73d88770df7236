"""Overload: the inference requests one process holds at once are bounded, and one past the bound is
refused at once (REST 503 `{"error": ...}` with Retry-After, gRPC UNAVAILABLE) instead of queueing.

A request is held from when its body has been read (REST) or its message has arrived (gRPC) until its
reply: it is decoded, queued for the micro-batcher, predicted and encoded meanwhile. A REST request past
the bound is refused by its connection on its headers (connections.py), its body dropped unread by
anything; the application looks before reading the body too, for the requests the connection leaves
to it. Memory stays bounded however much is offered.

The bound follows the throughput. A held request waits about `bound / throughput` (Little's law), and
under heavy overload the refusals themselves take the process's CPU (reading a refused body is most of
it), so throughput falls and a fixed bound would let the wait grow as much. So when requests have been
refused in two windows in a row, the bound becomes `limit` scaled by the throughput now over the best
the process has shown (smoothed over windows; not below a quarter of `limit`; unscaled while within
SLACK of the best): accepted requests keep about the latency they have at capacity. A window with no
refusal restores `limit`. Clients that retry at once would otherwise hold a lowered bound down for good
(their refusals keep the throughput down), so every PROBE_WINDOWS windows one is served at `limit`: a
probe costs the requests it admits a longer wait, so it is rare.

Refusals are counted in `perf_predictor_rejected_total{reason="overload"}`, not as 5xx requests: load
alone must not fire the error-ratio alert (benchmarks/overload.py measures the bound).
"""
from __future__ import annotations

import time
from typing import Callable

OVERLOAD = "overload"  # the reason refusals are counted under
RETRY_AFTER_S = 1
RETRY_AFTER = ((b"retry-after", str(RETRY_AFTER_S).encode()),)  # the header every refusal carries
WINDOW_S = 0.1  # throughput is measured over windows this long
SLACK = 0.8  # throughput at least this share of the best: the bound stays `limit`
PROBE_WINDOWS = 300  # after this many windows (30 s) below `limit`, one window at `limit` (below)


class Admission:
    """The requests one process holds for one model; `limit` 0 means unbounded."""

    __slots__ = ("limit", "held", "bound", "on_bound", "_clock", "_window_end", "_completed", "_refused", "_refused_before",
                 "_rate", "_best", "_below")

    def __init__(self, limit: int, clock: Callable[[], float] = time.monotonic,
                 on_bound: Callable[[int], None] = lambda bound: None):
        self.limit = limit
        self.held = 0
        self.bound = limit  # what `held` may reach now: `limit`, or less while overloaded (above)
        self.on_bound = on_bound  # told each new bound (the metric)
        self._clock = clock
        self._window_end = clock() + WINDOW_S
        self._completed = 0  # requests answered in this window
        self._refused = False  # in this window
        self._refused_before = False  # in the window before
        self._rate = 0.0  # completions a second, smoothed over windows
        self._best = 0.0  # the highest `_rate` so far
        self._below = 0  # windows in a row with the bound below `limit`

    def full(self) -> bool:
        """True when a request arriving now would be refused (and then it is counted as refused)."""
        if self.limit <= 0:
            return False
        now = self._clock()
        if now >= self._window_end:
            self._next_window(now)
        if self.held < self.bound:
            return False
        self._refused = True
        return True

    def enter(self) -> bool:
        """Takes a place, or False when there is none (then nothing is held)."""
        if self.full():
            return False
        self.held += 1
        return True

    def leave(self) -> None:
        self.held -= 1
        self._completed += 1

    def _next_window(self, now: float) -> None:
        length = now - self._window_end + WINDOW_S
        windows = length / WINDOW_S  # more than one when nothing arrived for a while
        rate = self._completed / length
        weight = 0.5 ** windows
        self._rate = weight * self._rate + (1 - weight) * rate
        self._best = max(self._best, self._rate)
        overloaded = self._refused and self._refused_before and windows < 2
        bound = self.bound
        if overloaded and self._best > 0 and self._rate < SLACK * self._best and self._below < PROBE_WINDOWS:
            self.bound = max(1, self.limit // 4, round(self.limit * self._rate / self._best))
            self._below += 1
        elif not self._refused or self._below:
            self.bound, self._below = self.limit, 0
        if self.bound != bound:
            self.on_bound(self.bound)
        self._refused_before, self._refused, self._completed = self._refused, False, 0
        self._window_end = now + WINDOW_S

    def message(self) -> str:
        return (f"the server is at capacity ({self.held} requests in progress in this process); "
                f"retry in {RETRY_AFTER_S}s or elsewhere")
