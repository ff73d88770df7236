"""The feature transform written with plain numpy reductions, as it was before it was compiled: an
independent statement of what every column means, for tests/test_features.py to hold the compiled
transform to."""
from __future__ import annotations

import numpy as np

from forecaster import features
from forecaster.features import (ANCHOR_POINTS, MEAN_SPANS, N_LAGS, SEASON, SEASONAL_HALF_WIDTH, STD_SPANS,
                                 TREND_SPAN, min_window, series_levels)


def numpy_make_features(windows: np.ndarray, horizon: int) -> tuple[np.ndarray, np.ndarray]:
    """forecaster.features.make_features in numpy reductions: (X [n * horizon, F] float32, levels [n])."""
    windows = np.asarray(windows, dtype=np.float64)
    n, width = windows.shape
    if width < min_window(horizon):
        raise ValueError(f"windows need at least {min_window(horizon)} points, got {width}")
    levels = series_levels(windows)
    scaled = windows / levels[:, None]
    last = width - 1

    shared = [scaled[:, last - N_LAGS + 1 :][:, ::-1]]
    shared += [scaled[:, -k:].mean(axis=1, keepdims=True) for k in MEAN_SPANS]
    shared += [scaled[:, -k:].std(axis=1, keepdims=True) for k in STD_SPANS]
    shared += [
        scaled[:, -12:].min(axis=1, keepdims=True),
        scaled[:, -12:].max(axis=1, keepdims=True),
        scaled[:, -SEASON:].min(axis=1, keepdims=True),
        scaled[:, -SEASON:].max(axis=1, keepdims=True),
        scaled[:, -6:].mean(axis=1, keepdims=True) - scaled[:, -12:-6].mean(axis=1, keepdims=True),
    ]
    shared_block = np.concatenate(shared, axis=1)

    steps = np.arange(1, horizon + 1)
    origin_yesterday = last - SEASON
    target_yesterday = origin_yesterday + steps  # index of the target's time, one day earlier
    yesterday = scaled[:, target_yesterday]  # [n, H]
    offsets = np.arange(-SEASONAL_HALF_WIDTH, SEASONAL_HALF_WIDTH + 1)
    smooth = scaled[:, target_yesterday[:, None] + offsets[None, :]].mean(axis=2)
    move = yesterday - scaled[:, [origin_yesterday]]
    last_minus_yesterday = np.repeat(scaled[:, [last]] - scaled[:, [origin_yesterday]], horizon, axis=1)
    t = np.arange(TREND_SPAN) - (TREND_SPAN - 1) / 2
    slope = scaled[:, -TREND_SPAN:] @ t / (t @ t)
    trend = slope[:, None] * steps[None, :]
    anchor = scaled[:, -ANCHOR_POINTS:].mean(axis=1)
    per_step = np.stack(
        [np.broadcast_to(steps, (n, horizon)), yesterday, smooth, move, last_minus_yesterday, trend], axis=2
    )  # [n, H, 6]

    rows = np.concatenate(
        [np.repeat(shared_block[:, None, :], horizon, axis=1), per_step], axis=2
    )  # [n, H, F]
    rows[:, :, features._relative_columns(horizon)] -= anchor[:, None, None]
    return rows.reshape(n * horizon, -1).astype(np.float32), levels
