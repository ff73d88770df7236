"""The one feature transform used by training and serving, so the served model sees what it was fitted on.

A row describes one (series window, horizon step) pair: the window's recent shape scaled by its own
level, plus what the same time yesterday did for the target step. Scaling by level lets one global
model serve CPU percentages, bytes per second and request counts alike.
"""
from __future__ import annotations

import numpy as np

SEASON = 288  # points per day at the 5-minute step Prometheus users most often record at
N_LAGS = 24
MEAN_SPANS = (3, 6, 12, 36, 72, SEASON)
STD_SPANS = (12, 72, SEASON)
SEASONAL_HALF_WIDTH = 3
ANCHOR_POINTS = 3
TREND_SPAN = 36
# 2: the model predicts each future point relative to the anchor (mean of the last ANCHOR_POINTS
#    points, scaled); level-like features are relative to the anchor too; a linear-trend
#    extrapolation feature; forecasts of a window that never went negative are clipped at 0.
FEATURE_VERSION = 2


def min_window(horizon: int) -> int:
    """Shortest window that holds every feature: a day of history plus the neighbourhood of yesterday."""
    return SEASON + SEASONAL_HALF_WIDTH + 1 + max(N_LAGS, horizon)


def series_levels(windows: np.ndarray) -> np.ndarray:
    """Mean absolute value over the last day of each window; 1 where a series is flat zero."""
    level = np.abs(windows[:, -SEASON:]).mean(axis=1)
    return np.where(level > 1e-9, level, 1.0)


def anchors(windows: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """What the model's scaled targets are relative to: the mean of the last few points over the level.

    Predicting the change from "where the series is now" rather than its absolute scaled value lets
    the trees spend their splits on the shape of the next hour instead of on every possible level.
    """
    return np.asarray(windows, dtype=np.float64)[:, -ANCHOR_POINTS:].mean(axis=1) / levels


def feature_names(horizon: int) -> list[str]:
    del horizon  # the names do not depend on it; kept for symmetry with make_features
    names = [f"lag_{k}" for k in range(1, N_LAGS + 1)]
    names += [f"mean_{n}" for n in MEAN_SPANS] + [f"std_{n}" for n in STD_SPANS]
    names += ["min_12", "max_12", f"min_{SEASON}", f"max_{SEASON}", "slope_6"]
    names += ["step", "yesterday", "yesterday_smooth", "yesterday_move", "last_minus_yesterday",
              f"trend_{TREND_SPAN}"]
    return names


# features that are levels (not spreads or differences): given relative to the anchor
RELATIVE = ("lag_", "mean_", "min_", "max_", "yesterday", "yesterday_smooth")


def make_features(windows: np.ndarray, horizon: int) -> tuple[np.ndarray, np.ndarray]:
    """Feature rows for every window and every step 1..horizon, ordered window-major.

    Level-like features (lags, means, extremes, yesterday) are relative to the anchor, the point
    the model's targets are relative to (`anchors`); `trend_36` is the least-squares slope of the
    last 36 points times the step, a straight-line extrapolation.

    Returns (X of shape [n * horizon, F] float32, levels of shape [n]).
    """
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
    rows[:, :, _relative_columns(horizon)] -= anchor[:, None, None]
    return rows.reshape(n * horizon, -1).astype(np.float32), levels


def _relative_columns(horizon: int) -> np.ndarray:
    names = feature_names(horizon)
    return np.array([i for i, name in enumerate(names)
                     if name.startswith(RELATIVE[:4]) or name in RELATIVE[4:]])
