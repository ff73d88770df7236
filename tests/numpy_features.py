"""The feature transform written with plain numpy reductions, as it was before it was compiled: an
independent statement of what every column means, for tests/test_features.py to hold the compiled
transform to. Short histories (leading NaN) use numpy's NaN-skipping reductions over the last span."""
from __future__ import annotations

import numpy as np

from forecaster import features
from forecaster.features import (ANCHOR_POINTS, MEAN_SPANS, MIN_HISTORY, N_LAGS, SEASON, SEASONAL_HALF_WIDTH,
                                 STD_SPANS, TREND_SPAN, min_window)


def numpy_make_features(windows: np.ndarray, horizon: int) -> tuple[np.ndarray, np.ndarray]:
    """forecaster.features.make_features in numpy reductions: (X [n * horizon, F] float32, levels [n])."""
    windows = np.array(windows, dtype=np.float64)
    n, width = windows.shape
    if width < min_window(horizon):
        raise ValueError(f"windows need at least {min_window(horizon)} points, got {width}")
    have = np.empty(n, dtype=np.int64)
    for w in range(n):  # history: the points after the last non-finite one
        bad = np.flatnonzero(~np.isfinite(windows[w]))
        have[w] = width - (bad[-1] + 1 if len(bad) else 0)
        windows[w, : width - have[w]] = np.nan
    if have.min() < MIN_HISTORY:
        raise ValueError(f"at least {MIN_HISTORY} points are needed")
    level = np.nanmean(np.abs(windows[:, -SEASON:]), axis=1)
    levels = np.where(level > 1e-9, level, 1.0)
    scaled = windows / levels[:, None]
    last = width - 1

    shared = [scaled[:, last - N_LAGS + 1 :][:, ::-1]]
    shared += [np.nanmean(scaled[:, -k:], axis=1, keepdims=True) for k in MEAN_SPANS]
    shared += [np.nanstd(scaled[:, -k:], axis=1, keepdims=True) for k in STD_SPANS]
    shared += [
        np.nanmin(scaled[:, -12:], axis=1, keepdims=True),
        np.nanmax(scaled[:, -12:], axis=1, keepdims=True),
        np.nanmin(scaled[:, -SEASON:], axis=1, keepdims=True),
        np.nanmax(scaled[:, -SEASON:], axis=1, keepdims=True),
        scaled[:, -6:].mean(axis=1, keepdims=True) - scaled[:, -12:-6].mean(axis=1, keepdims=True),
    ]
    shared_block = np.concatenate(shared, axis=1)

    steps = np.arange(1, horizon + 1)
    origin_yesterday = last - SEASON
    target_yesterday = origin_yesterday + steps  # index of the target's time, one day earlier
    yesterday = scaled[:, target_yesterday]  # [n, H]
    offsets = np.arange(-SEASONAL_HALF_WIDTH, SEASONAL_HALF_WIDTH + 1)
    smooth = scaled[:, target_yesterday[:, None] + offsets[None, :]].mean(axis=2)  # NaN if any point is missing
    move = yesterday - scaled[:, [origin_yesterday]]
    last_minus_yesterday = np.repeat(scaled[:, [last]] - scaled[:, [origin_yesterday]], horizon, axis=1)
    no_day = have < SEASON + SEASONAL_HALF_WIDTH  # some step's day-ago neighbourhood is missing
    for block in (yesterday, smooth, move, last_minus_yesterday):
        block[no_day] = np.nan
    slope = np.empty(n)
    for w in range(n):
        span = min(TREND_SPAN, have[w])
        t = np.arange(span) - (span - 1) / 2
        slope[w] = scaled[w, -span:] @ t / (t @ t)
    trend = slope[:, None] * steps[None, :]
    anchor = scaled[:, -ANCHOR_POINTS:].mean(axis=1)
    days = np.repeat((have / SEASON)[:, None], horizon, axis=1)
    per_step = np.stack(
        [np.broadcast_to(steps, (n, horizon)), yesterday, smooth, move, last_minus_yesterday, trend, days], axis=2
    )  # [n, H, 7]

    rows = np.concatenate(
        [np.repeat(shared_block[:, None, :], horizon, axis=1), per_step], axis=2
    )  # [n, H, F]
    rows[:, :, features._relative_columns(horizon)] -= anchor[:, None, None]
    return rows.reshape(n * horizon, -1).astype(np.float32), levels
