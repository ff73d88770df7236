"""The overload bound (predictor/admission.py), driven window by window with a clock of the test's own.

Throughput is set by how many held requests are answered in a window; a refusal is a request arriving
while `held` has reached the bound. Every expected bound follows from the module's definition: `limit`
scaled by the smoothed throughput over the best, after two windows in a row with refusals.
"""
from __future__ import annotations

import pytest

from predictor.admission import PROBE_WINDOWS, SLACK, WINDOW_S, Admission

LIMIT = 64


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def window(admission: Admission, clock: Clock, rate: float, refused: bool) -> int:
    """One window: `rate` completions a second, and a refusal in it if `refused`; then the next window
    begins (a request arriving at its start rolls it over). Returns the bound for the next window."""
    for _ in range(round(rate * WINDOW_S)):
        assert admission.enter()
        admission.leave()
    if refused:
        held = admission.held
        while admission.enter():  # fill the bound, then one more is refused
            pass
        admission.held = held
    clock.now += WINDOW_S
    admission.full()  # the first request of the next window closes this one
    return admission.bound


def settled(admission: Admission, clock: Clock, rate: float, refused: bool, windows: int = 12) -> int:
    for _ in range(windows):
        bound = window(admission, clock, rate, refused)
    return bound


@pytest.fixture
def clock() -> Clock:
    return Clock()


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


def test_under_overload_the_bound_follows_throughput_over_the_best_seen(clock):
    admission = Admission(LIMIT, clock)
    assert settled(admission, clock, 1000, refused=False) == LIMIT  # at capacity, nothing refused
    # refusals take half the CPU: throughput halves, and so does the bound (wait = bound / throughput)
    assert settled(admission, clock, 500, refused=True) == LIMIT // 2
    assert settled(admission, clock, 375, refused=True) == round(LIMIT * 0.375)
    # never below a quarter of the limit, however slow
    assert settled(admission, clock, 50, refused=True) == LIMIT // 4


def test_throughput_within_the_slack_of_the_best_keeps_the_limit(clock):
    admission = Admission(LIMIT, clock)
    settled(admission, clock, 1000, refused=False)
    assert settled(admission, clock, 1000 * SLACK * 1.05, refused=True) == LIMIT
    assert settled(admission, clock, 1000 * SLACK * 0.9, refused=True) < LIMIT


def test_a_window_without_refusals_restores_the_limit(clock):
    admission = Admission(LIMIT, clock)
    settled(admission, clock, 1000, refused=False)
    assert settled(admission, clock, 500, refused=True) == LIMIT // 2
    assert window(admission, clock, 500, refused=False) == LIMIT


def test_one_window_of_refusals_is_not_overload(clock):
    """A burst: refusals in one window only (or in the first window after a quiet spell, whose
    throughput says nothing about the process's speed) leave the limit alone."""
    admission = Admission(LIMIT, clock)
    settled(admission, clock, 1000, refused=False)
    for _ in range(5):
        assert window(admission, clock, 100, refused=True) == LIMIT
        assert window(admission, clock, 100, refused=False) == LIMIT
    clock.now += 10  # quiet
    assert window(admission, clock, 100, refused=True) == LIMIT


def test_a_lowered_bound_is_probed_at_the_limit_so_clients_that_retry_at_once_cannot_pin_it_down(clock):
    admission = Admission(LIMIT, clock)
    settled(admission, clock, 1000, refused=False)
    assert window(admission, clock, 500, refused=True) == LIMIT  # one window of refusals: not yet
    bounds = [window(admission, clock, 500, refused=True) for _ in range(2 * (PROBE_WINDOWS + 1))]
    for first in (0, PROBE_WINDOWS + 1):
        assert all(bound < LIMIT for bound in bounds[first:first + PROBE_WINDOWS])
        assert bounds[first + PROBE_WINDOWS] == LIMIT  # the probe
    # once probed, the retrying clients are all held and nothing is refused: the limit stays
    assert [window(admission, clock, 900, refused=False) for _ in range(3)] == [LIMIT] * 3


def test_each_new_bound_is_told_once(clock):
    told: list[int] = []
    admission = Admission(LIMIT, clock, on_bound=told.append)
    settled(admission, clock, 1000, refused=False)
    settled(admission, clock, 500, refused=True)
    window(admission, clock, 500, refused=False)
    assert told[0] < LIMIT and told[-2:] == [LIMIT // 2, LIMIT]  # lowered as throughput fell, then restored
    assert all(a != b for a, b in zip(told, told[1:]))  # only changes are told


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
