"""Overload: the inference requests one process holds at once are bounded, and one past the bound is
refused at once (REST 503 `{"error": ...}` with Retry-After, gRPC UNAVAILABLE) instead of queueing.

A request is held from when its body has been read (REST) or its message has arrived (gRPC) until its
reply: it is decoded, queued for the micro-batcher, predicted and encoded meanwhile. A REST request past
the bound is refused by its connection on its headers (connections.py), its body dropped unread by
anything; the application looks before reading the body too, for the requests the connection leaves
to it. Memory stays bounded however much is offered.

Under overload the bound follows how late the event loop runs. Everything a process does for a request
(reading it, refusing it, decoding, replying) waits its turn on one loop, and the work of held requests
comes in bursts (a batch decoded, a batch answered), so the more it holds, the longer every refusal and
every reply waits behind the others. So while requests are refused, a timer every TICK_S measures how
late the loop runs it. A window with refusals whose mean delay is above DELAY_TARGET_S cuts the bound to
the target over the delay of itself (between DEEPEST_CUT and CUT), one below half of it raises the bound
by one, never below `limit / FLOOR_SHARE` nor above `limit`; a window with no refusal restores `limit`.
This is CoDel's rule (RFC 8289: act on a delay that lasts an interval, not on a burst) applied to the
loop, with short windows and from the first one, as the requests let in before the first cuts are the
slowest of an overload. Clients that retry at once cannot pin the bound down: if the loop keeps up with
them, its delay is low and the bound climbs back. docs/design.md has the measured effect.

Refusals are counted in `perf_predictor_rejected_total{reason="overload"}`, not as 5xx requests: load
alone must not fire the error-ratio alert (benchmarks/overload.py measures the bound).
"""
from __future__ import annotations

import asyncio
import time
from typing import Callable, Optional

OVERLOAD = "overload"  # the reason refusals are counted under
RETRY_AFTER_S = 1
RETRY_AFTER = ((b"retry-after", str(RETRY_AFTER_S).encode()),)  # the header every refusal carries
WINDOW_S = 0.05  # the bound is reconsidered once a window
TICK_S = 0.002  # while refusing, the loop's delay is sampled this often
DELAY_TARGET_S = 0.002  # a mean delay above this in a window of overload cuts the bound
CUT = 0.7  # the bound kept by a cut, at most
DEEPEST_CUT = 0.5  # and at least: target / delay in between (a loop twice as late as the target halves it)
FLOOR_SHARE = 16  # the bound never falls below limit / FLOOR_SHARE (and 1)


class Admission:
    """The requests one process holds for one model; `limit` 0 means unbounded. Call from the event loop."""

    __slots__ = ("limit", "held", "bound", "on_bound", "_clock", "_window_end", "_refused", "_refused_before",
                 "_delay_sum", "_delays", "_watched")

    def __init__(self, limit: int, clock: Callable[[], float] = time.monotonic,
                 on_bound: Callable[[int], None] = lambda bound: None):
        self.limit = limit
        self.held = 0
        self.bound = limit  # what `held` may reach now: `limit`, or less while overloaded (above)
        self.on_bound = on_bound  # told each new bound (the metric)
        self._clock = clock
        self._window_end = clock() + WINDOW_S
        self._refused = False  # in this window
        self._refused_before = False  # in the window before (the delay is sampled until a window has none)
        self._delay_sum = 0.0  # the loop's delays sampled in this window, and how many
        self._delays = 0
        self._watched: Optional[asyncio.AbstractEventLoop] = None  # the loop whose delay is being sampled

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
        if self._watched is None or self._watched.is_closed():
            self._watch()
        return True

    def enter(self) -> bool:
        """Takes a place, or False when there is none (then nothing is held)."""
        if self.full():
            return False
        self.held += 1
        return True

    def leave(self) -> None:
        self.held -= 1

    def record_delay(self, seconds: float) -> None:
        """One sample of how late the event loop ran a callback."""
        self._delay_sum += seconds
        self._delays += 1

    def _watch(self) -> None:
        """Samples the running loop's delay while requests are refused (a process not refusing pays nothing)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a caller of its own): the bound then stays as it is
            return
        self._watched = loop
        loop.call_later(TICK_S, self._tick, loop, self._clock() + TICK_S)

    def _tick(self, loop: asyncio.AbstractEventLoop, due: float) -> None:
        now = self._clock()
        self.record_delay(max(0.0, now - due))
        if now >= self._window_end:  # with no request arriving, the windows still turn (and the ticks stop)
            self._next_window(now)
        if (self._refused or self._refused_before) and self._watched is loop:
            loop.call_later(TICK_S, self._tick, loop, now + TICK_S)
        elif self._watched is loop:
            self._watched = None

    def _next_window(self, now: float) -> None:
        quiet = now - self._window_end >= WINDOW_S  # whole windows passed with no request at all
        delay = self._delay_sum / self._delays if self._delays else None
        bound = self.bound
        if not self._refused or quiet:
            self.bound = self.limit
        elif delay is not None:
            if delay > DELAY_TARGET_S:
                kept = min(CUT, max(DEEPEST_CUT, DELAY_TARGET_S / delay))
                self.bound = max(1, self.limit // FLOOR_SHARE, int(self.bound * kept))
            elif delay < DELAY_TARGET_S / 2:
                self.bound = min(self.limit, self.bound + 1)
        if self.bound != bound:
            self.on_bound(self.bound)
        self._refused_before, self._refused = self._refused, False
        self._delay_sum, self._delays = 0.0, 0
        self._window_end = now + WINDOW_S

    def message(self) -> str:
        return (f"the server is at capacity ({self.held} requests in progress in this process); "
                f"retry in {RETRY_AFTER_S}s or elsewhere")
