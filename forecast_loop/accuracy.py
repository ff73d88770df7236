"""Live accuracy: each forecast is kept until the window holds the H actual values that followed it.

Scored like `training.evaluate`: the MASE of the median, scaled by the seasonal-naive error of the
history the forecast was made from (`training.metrics.seasonal_naive_scale`), and the share of actual
points inside the outer band (lowest to highest quantile, p10-p90). Scores are kept per origin (one
bucket per step, summed over series) for `window` seconds; the target's figure is the mean over every
scored forecast in the window. A series that has not been seen for H steps is forgotten.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from training.metrics import coverage, mase, seasonal_naive_scale

from .history import Key


@dataclass
class _Pending:
    lower: np.ndarray  # [H]
    median: np.ndarray
    upper: np.ndarray
    scale: float


@dataclass(frozen=True)
class Score:
    mase: float
    coverage: float
    scored: int  # forecasts in the window


class LiveAccuracy:
    def __init__(self, step: int, horizon: int, window_seconds: float, median_index: int):
        self.step, self.horizon, self.window_seconds = step, horizon, window_seconds
        self.median_index = median_index
        self.pending: dict[Key, dict[int, _Pending]] = {}
        self.last_seen: dict[Key, int] = {}
        self.buckets: deque[list] = deque()  # [origin, sum of MASE, forecasts, points covered, points]

    def observe(self, end: int, keys: list[Key], windows: np.ndarray, forecasts: np.ndarray) -> None:
        """`windows` [n, W] end at `end`; `forecasts` [n_quantiles, n, H] were made from them now."""
        width = windows.shape[1]
        bucket = {}
        for i, key in enumerate(keys):
            waiting = self.pending.setdefault(key, {})
            for origin in [o for o in waiting if o + self.horizon * self.step <= end]:
                made = waiting.pop(origin)
                first = width - (end - origin) // self.step  # index of the point after the origin
                if first < 0:
                    continue  # its actuals have left the window
                actual = windows[i, first: first + self.horizon]
                b = bucket.setdefault(origin, [origin, 0.0, 0, 0, 0])
                b[1] += mase(actual, made.median, made.scale)
                b[2] += 1
                b[3] += int(round(coverage(actual, made.lower, made.upper) * len(actual)))
                b[4] += len(actual)
            waiting[end] = _Pending(forecasts[0, i].copy(), forecasts[self.median_index, i].copy(),
                                    forecasts[-1, i].copy(), seasonal_naive_scale(windows[i]))
            self.last_seen[key] = end
        self._add(sorted(bucket.values()))
        self._forget(end)

    def _add(self, scored: list[list]) -> None:
        for b in scored:
            if self.buckets and self.buckets[-1][0] == b[0]:
                for j in range(1, 5):
                    self.buckets[-1][j] += b[j]
            else:
                self.buckets.append(b)

    def _forget(self, end: int) -> None:
        while self.buckets and self.buckets[0][0] < end - self.window_seconds:
            self.buckets.popleft()
        gone = [k for k, seen in self.last_seen.items() if seen < end - self.horizon * self.step]
        for key in gone:
            del self.last_seen[key], self.pending[key]

    def score(self) -> Score | None:
        forecasts = sum(b[2] for b in self.buckets)
        if not forecasts:
            return None
        return Score(mase=sum(b[1] for b in self.buckets) / forecasts,
                     coverage=sum(b[3] for b in self.buckets) / max(1, sum(b[4] for b in self.buckets)),
                     scored=forecasts)
