"""The overload bound (predictor/admission.py), driven window by window with a clock of the test's own and
the loop's delay given as samples; then once on a real event loop, whose delay the bound samples itself.

A refusal is a request arriving while `held` has reached the bound. Every expected bound follows from the
module's definition: in a window with refusals, a mean delay above DELAY_TARGET_S cuts the bound to the target
over the delay of itself (between DEEPEST_CUT and CUT; not below limit / FLOOR_SHARE), one below half of it
raises the bound by one, and a window without refusals restores the limit.
"""
from __future__ import annotations

import asyncio
import time

import pytest
import uvloop

from predictor.admission import CUT, DEEPEST_CUT, DELAY_TARGET_S, FLOOR_SHARE, TICK_S, WINDOW_S, Admission

LIMIT = 64
LATE = DELAY_TARGET_S * 1.5  # a loop running this late cuts the bound
PROMPT = DELAY_TARGET_S * 0.25  # this late raises it
BETWEEN = DELAY_TARGET_S * 0.75  # this late holds it


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def window(admission: Admission, clock: Clock, refused: bool, delay: float | None = None) -> int:
    """One window: a few requests answered, a refusal in it if `refused`, the loop sampled `delay` late
    (nothing sampled if None); then the next window begins (a request arriving at its start rolls it
    over). Returns the bound for the next window."""
    for _ in range(10):
        assert admission.enter()
        admission.leave()
    if refused:
        held = admission.held
        while admission.enter():  # fill the bound, then one more is refused
            pass
        admission.held = held
    if delay is not None:
        for _ in range(round(WINDOW_S / TICK_S)):
            admission.record_delay(delay)
    clock.now += WINDOW_S
    admission.full()  # the first request of the next window closes this one
    return admission.bound


@pytest.fixture
def clock() -> Clock:
    return Clock()


def cut(bound: int, delay: float = LATE) -> int:
    ticks = round(WINDOW_S / TICK_S)
    mean = sum([delay] * ticks) / ticks  # as the window adds up its samples
    kept = min(CUT, max(DEEPEST_CUT, DELAY_TARGET_S / mean))
    return max(1, LIMIT // FLOOR_SHARE, int(bound * kept))


def test_requests_past_the_bound_are_refused_and_a_reply_frees_a_place(clock):
    admission = Admission(2, clock)
    assert admission.enter() and admission.enter()
    assert admission.full() and not admission.enter()
    assert admission.held == 2  # a refusal holds nothing
    admission.leave()
    assert admission.enter()


def test_limit_zero_never_refuses(clock):
    admission = Admission(0, clock)
    for _ in range(10_000):
        assert admission.enter()
    assert not admission.full()


def test_under_overload_a_late_loop_cuts_the_bound_window_by_window_down_to_the_floor(clock):
    admission = Admission(LIMIT, clock)
    assert [window(admission, clock, refused=False, delay=LATE) for _ in range(3)] == [LIMIT] * 3  # nothing refused
    expected, bound = [], LIMIT
    for _ in range(12):
        bound = cut(bound)
        expected.append(bound)
    assert [window(admission, clock, refused=True, delay=LATE) for _ in range(12)] == expected
    assert expected[-1] == LIMIT // FLOOR_SHARE and abs(expected[0] - LIMIT * DELAY_TARGET_S / LATE) < 1


@pytest.mark.parametrize("late, kept", [(DELAY_TARGET_S * 1.1, CUT), (DELAY_TARGET_S * 1.6, 1 / 1.6),
                                        (DELAY_TARGET_S * 5, DEEPEST_CUT)])
def test_the_later_the_loop_the_deeper_the_cut_within_its_limits(clock, late, kept):
    admission = Admission(LIMIT, clock)
    assert window(admission, clock, refused=True, delay=late) == cut(LIMIT, late)
    assert abs(cut(LIMIT, late) - LIMIT * kept) < 1


def test_a_loop_that_keeps_up_raises_the_bound_one_at_a_time_and_one_in_between_holds_it(clock):
    admission = Admission(LIMIT, clock)
    for _ in range(20):
        floor = window(admission, clock, refused=True, delay=LATE)
    assert floor == LIMIT // FLOOR_SHARE
    assert [window(admission, clock, refused=True, delay=BETWEEN) for _ in range(5)] == [floor] * 5
    assert [window(admission, clock, refused=True, delay=PROMPT) for _ in range(5)] == [floor + i for i in range(1, 6)]
    assert window(admission, clock, refused=True, delay=LATE) == cut(floor + 5)


def test_a_window_without_refusals_restores_the_limit(clock):
    admission = Admission(LIMIT, clock)
    for _ in range(5):
        window(admission, clock, refused=True, delay=LATE)
    assert admission.bound < LIMIT
    assert window(admission, clock, refused=False) == LIMIT


def test_refusals_while_the_loop_keeps_up_leave_the_limit_alone(clock):
    """A burst: refusals, but the loop on time (or a window closed after a quiet spell) keep the limit;
    a late loop cuts it at once, and the next window without refusals restores it."""
    admission = Admission(LIMIT, clock)
    for _ in range(5):
        assert window(admission, clock, refused=True, delay=BETWEEN) == LIMIT
        assert window(admission, clock, refused=False, delay=LATE) == LIMIT
    assert window(admission, clock, refused=True, delay=LATE) == cut(LIMIT)
    window(admission, clock, refused=True, delay=LATE)
    held = admission.held
    while admission.enter():  # refusals and a late loop in this window, then nothing for 10 s
        pass
    admission.record_delay(LATE)
    admission.held = held
    clock.now += 10  # the window closes with whole quiet windows after it: the limit comes back
    assert not admission.full() and admission.bound == LIMIT


def test_without_samples_of_the_loop_the_bound_stays(clock):
    """A caller with no event loop (nothing sampled the delay) keeps the limit under refusals."""
    admission = Admission(LIMIT, clock)
    assert [window(admission, clock, refused=True) for _ in range(5)] == [LIMIT] * 5


def test_clients_that_retry_at_once_cannot_pin_the_bound_down(clock):
    """Refusals never stop, but the loop keeps up with them: the bound climbs back to the limit."""
    admission = Admission(LIMIT, clock)
    for _ in range(20):
        window(admission, clock, refused=True, delay=LATE)
    bounds = [window(admission, clock, refused=True, delay=PROMPT) for _ in range(LIMIT)]
    assert bounds[-1] == LIMIT and bounds == sorted(bounds)


def test_each_new_bound_is_told_once(clock):
    told: list[int] = []
    admission = Admission(LIMIT, clock, on_bound=told.append)
    for _ in range(3):
        window(admission, clock, refused=True, delay=LATE)
    window(admission, clock, refused=True, delay=BETWEEN)
    window(admission, clock, refused=False)
    # cut three times, held, then restored; only changes are told
    assert told == [cut(LIMIT), cut(cut(LIMIT)), cut(cut(cut(LIMIT))), LIMIT]


def test_the_bound_samples_the_running_loops_delay_while_it_refuses():
    """On a real uvloop loop (the server's): a refusal starts the sampling; a loop kept busy 10 ms at a
    time cuts the bound; once nothing is refused the limit comes back and the sampling stops."""
    limit = 16

    async def scenario() -> tuple[int, int, bool]:
        admission = Admission(limit)
        for _ in range(limit):
            assert admission.enter()
        until = time.monotonic() + 6 * WINDOW_S
        while time.monotonic() < until:  # refused all along, the loop blocked 10 ms at a time
            assert admission.full()
            time.sleep(0.01)
            await asyncio.sleep(0)
        busy = admission.bound
        for _ in range(limit):
            admission.leave()
        await asyncio.sleep(3 * WINDOW_S)
        assert not admission.full()  # rolls the window over: none refused in it
        await asyncio.sleep(3 * TICK_S)
        return busy, admission.bound, admission._watched is None

    busy, after, stopped = uvloop.run(scenario())
    assert busy < limit
    assert after == limit
    assert stopped


def test_the_refusal_message_says_how_many_requests_are_in_progress(clock):
    admission = Admission(3, clock)
    for _ in range(3):
        admission.enter()
    assert "3 requests in progress" in admission.message()


def test_the_metric_follows_every_bound_told_back_to_the_limit():
    """perf_predictor_requests_held_bound is set on each change, a bound seen before included (a bound
    lowered and then restored must read as restored). In a process of its own: predictor.metrics brings
    kserve's protos, which cannot share a process with tritonclient's (other tests import those)."""
    import os
    import subprocess
    import sys

    script = ("from prometheus_client import REGISTRY\n"
              "from predictor import metrics\n"
              f"for bound in {(LIMIT, LIMIT // 2, LIMIT)!r}:\n"
              "    metrics.record_bound('admission-test', bound)\n"
              "    print(REGISTRY.get_sample_value('perf_predictor_requests_held_bound', {'model': 'admission-test'}))\n")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                         env={k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"})
    assert run.returncode == 0, run.stderr[-2000:]
    assert [float(v) for v in run.stdout.split()] == [LIMIT, LIMIT // 2, LIMIT]
