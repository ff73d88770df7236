"""The one feature transform used by training and serving, so the served model sees what it was fitted on.

A row describes one (series window, horizon step) pair: the window's recent shape scaled by its own
level, plus what the same time yesterday did for the target step. Scaling by level lets one global
model serve CPU percentages, bytes per second and request counts alike.
"""
from __future__ import annotations

import functools

import numba
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
    windows = np.ascontiguousarray(windows, dtype=np.float64)
    n, width = windows.shape
    if width < min_window(horizon):
        raise ValueError(f"windows need at least {min_window(horizon)} points, got {width}")
    levels = series_levels(windows)
    relative = _relative_mask(horizon)
    rows = np.empty((n * horizon, len(relative)), dtype=np.float32)
    _fill_rows(windows, levels, horizon, _MEAN_SPANS, _STD_SPANS, relative, rows)
    return rows, levels


_MEAN_SPANS = np.array(MEAN_SPANS)
_STD_SPANS = np.array(STD_SPANS)


@functools.lru_cache(maxsize=None)
def _relative_mask(horizon: int) -> np.ndarray:
    mask = np.zeros(len(feature_names(horizon)), dtype=np.bool_)
    mask[_relative_columns(horizon)] = True
    mask.flags.writeable = False
    return mask


@numba.njit(cache=False, nogil=True)
def _fill_rows(windows, levels, horizon, mean_spans, std_spans, relative, rows):
    """The rows, one window at a time in compiled code: numpy's many small reductions cost ~0.3 ms for
    one window, most of a single-series forecast; this costs microseconds. Same arithmetic in float64
    (sums in a different order, which float32 output hides; tests compare with plain numpy)."""
    n, width = windows.shape
    last = width - 1
    n_shared = N_LAGS + len(mean_spans) + len(std_spans) + 5
    shared = np.empty(n_shared)
    scaled = np.empty(width)
    t_mid = (TREND_SPAN - 1) / 2
    t_norm = 0.0
    for j in range(TREND_SPAN):
        t_norm += (j - t_mid) ** 2
    for w in range(n):
        for j in range(width):
            scaled[j] = windows[w, j] / levels[w]
        col = 0
        for k in range(N_LAGS):
            shared[col] = scaled[last - k]
            col += 1
        for span in mean_spans:
            shared[col] = _mean(scaled, width - span, width)
            col += 1
        for span in std_spans:
            mean = _mean(scaled, width - span, width)
            acc = 0.0
            for j in range(width - span, width):
                acc += (scaled[j] - mean) ** 2
            shared[col] = np.sqrt(acc / span)
            col += 1
        for span in (12, SEASON):
            lo, hi = scaled[width - span], scaled[width - span]
            for j in range(width - span, width):
                lo = min(lo, scaled[j])
                hi = max(hi, scaled[j])
            shared[col] = lo
            shared[col + 1] = hi
            col += 2
        shared[col] = _mean(scaled, width - 6, width) - _mean(scaled, width - 12, width - 6)
        slope = 0.0
        for j in range(TREND_SPAN):
            slope += scaled[width - TREND_SPAN + j] * (j - t_mid)
        slope /= t_norm
        anchor = _mean(scaled, width - ANCHOR_POINTS, width)
        origin_yesterday = last - SEASON
        for step in range(1, horizon + 1):
            r = w * horizon + step - 1
            for c in range(n_shared):
                rows[r, c] = shared[c] - anchor if relative[c] else shared[c]
            target = origin_yesterday + step
            yesterday = scaled[target]
            smooth = _mean(scaled, target - SEASONAL_HALF_WIDTH, target + SEASONAL_HALF_WIDTH + 1)
            per_step = (float(step), yesterday, smooth, yesterday - scaled[origin_yesterday],
                        scaled[last] - scaled[origin_yesterday], slope * step)
            for k in range(6):
                c = n_shared + k
                rows[r, c] = per_step[k] - anchor if relative[c] else per_step[k]


@numba.njit(cache=False, nogil=True, inline="always")
def _mean(values, lo, hi):
    acc = 0.0
    for j in range(lo, hi):
        acc += values[j]
    return acc / (hi - lo)


def _relative_columns(horizon: int) -> np.ndarray:
    names = feature_names(horizon)
    return np.array([i for i, name in enumerate(names)
                     if name.startswith(RELATIVE[:4]) or name in RELATIVE[4:]])
