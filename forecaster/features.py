"""The one feature transform used by training and serving, so the served model sees what it was fitted on.

A row describes one (series window, horizon step) pair: the window's recent shape scaled by its own
level, plus what the same time yesterday did for the target step. Scaling by level lets one global
model serve CPU percentages, bytes per second and request counts alike.

A window may hold less history than its width: everything up to its last NaN is "not there" (the
forecaster pads short histories with NaN on the left). Means, spreads and extremes then run over the
points that are there, the day-ago features are NaN (the trees learned where NaN goes) until a day
and a bit is there, and `history_days` says how much history the row had. At least MIN_HISTORY
points (two hours at a 5-minute step) must be there.
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
MIN_HISTORY = N_LAGS  # the lags are the one feature block that cannot shrink
# 2: the model predicts each future point relative to the anchor (mean of the last ANCHOR_POINTS
#    points, scaled); level-like features are relative to the anchor too; a linear-trend
#    extrapolation feature; forecasts of a window that never went negative are clipped at 0.
# 3: short histories (leading NaN): spans shrink to the points there, day-ago features NaN below a day,
#    a `history_days` feature.
FEATURE_VERSION = 3


def min_window(horizon: int) -> int:
    """Shortest window that holds every feature: a day of history plus the neighbourhood of yesterday.
    (A window this wide may still hold less history, down to MIN_HISTORY points; see the module doc.)"""
    return SEASON + SEASONAL_HALF_WIDTH + 1 + max(N_LAGS, horizon)


def history_lengths(windows: np.ndarray) -> np.ndarray:
    """Points each window has: those after its last non-finite value."""
    bad = ~np.isfinite(windows)
    width = windows.shape[1]
    last_bad = np.where(bad.any(axis=1), width - 1 - np.argmax(bad[:, ::-1], axis=1), -1)
    return width - 1 - last_bad


def trailing(windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(windows as float64 with NaN before each one's history, history lengths), checked against MIN_HISTORY."""
    windows = np.asarray(windows, dtype=np.float64)
    if np.isfinite(windows).all():  # the usual case, kept cheap: one check, no copy
        return windows, np.full(len(windows), windows.shape[1], dtype=np.int64)
    windows = windows.copy()
    avail = history_lengths(windows)
    if avail.min(initial=MIN_HISTORY) < MIN_HISTORY:
        row = int(np.argmin(avail))
        raise ValueError(f"series {row} has {avail[row]} finite points at its end; at least {MIN_HISTORY} are needed")
    cols = np.arange(windows.shape[1])
    windows[cols[None, :] < (windows.shape[1] - avail)[:, None]] = np.nan
    return windows, avail


def series_levels(windows: np.ndarray) -> np.ndarray:
    """Mean absolute value over the last day of each window (what of it is there); 1 where a series is flat zero."""
    recent = np.abs(windows[:, -SEASON:])
    if np.isnan(recent).any():
        with np.errstate(invalid="ignore"):
            level = np.nanmean(recent, axis=1)
    else:
        level = recent.mean(axis=1)
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
              f"trend_{TREND_SPAN}", "history_days"]
    return names


# features that are levels (not spreads or differences): given relative to the anchor
RELATIVE = ("lag_", "mean_", "min_", "max_", "yesterday", "yesterday_smooth")


def make_features(windows: np.ndarray, horizon: int) -> tuple[np.ndarray, np.ndarray]:
    """Feature rows for every window and every step 1..horizon, ordered window-major.

    Level-like features (lags, means, extremes, yesterday) are relative to the anchor, the point
    the model's targets are relative to (`anchors`); `trend_36` is the least-squares slope of the
    last 36 points (fewer if fewer are there) times the step, a straight-line extrapolation.

    Returns (X of shape [n * horizon, F] float32, levels of shape [n]).
    """
    windows = np.ascontiguousarray(windows, dtype=np.float64)
    n, width = windows.shape
    if width < min_window(horizon):
        raise ValueError(f"windows need at least {min_window(horizon)} points, got {width}")
    windows, avail = trailing(windows)
    levels = series_levels(windows)
    relative = _relative_mask(horizon)
    rows = np.empty((n * horizon, len(relative)), dtype=np.float32)
    _fill_rows(windows, avail, levels, horizon, _MEAN_SPANS, _STD_SPANS, relative, rows)
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
def _fill_rows(windows, avail, levels, horizon, mean_spans, std_spans, relative, rows):
    """The rows, one window at a time in compiled code: numpy's many small reductions cost ~0.3 ms for
    one window, most of a single-series forecast; this costs microseconds. Same arithmetic in float64
    (sums in a different order, which float32 output hides; tests compare with plain numpy)."""
    n, width = windows.shape
    last = width - 1
    n_shared = N_LAGS + len(mean_spans) + len(std_spans) + 5
    shared = np.empty(n_shared)
    scaled = np.empty(width)
    for w in range(n):
        have = avail[w]
        first = width - have  # oldest point there
        for j in range(width):
            scaled[j] = windows[w, j] / levels[w]
        col = 0
        for k in range(N_LAGS):
            shared[col] = scaled[last - k]
            col += 1
        for span in mean_spans:
            shared[col] = _mean(scaled, width - min(span, have), width)
            col += 1
        for span in std_spans:
            lo = width - min(span, have)
            mean = _mean(scaled, lo, width)
            acc = 0.0
            for j in range(lo, width):
                acc += (scaled[j] - mean) ** 2
            shared[col] = np.sqrt(acc / (width - lo))
            col += 1
        for span in (12, SEASON):
            start = width - min(span, have)
            lo, hi = scaled[start], scaled[start]
            for j in range(start, width):
                lo = min(lo, scaled[j])
                hi = max(hi, scaled[j])
            shared[col] = lo
            shared[col + 1] = hi
            col += 2
        shared[col] = _mean(scaled, width - 6, width) - _mean(scaled, width - 12, width - 6)
        span = min(TREND_SPAN, have)
        t_mid = (span - 1) / 2
        t_norm = 0.0
        slope = 0.0
        for j in range(span):
            t_norm += (j - t_mid) ** 2
            slope += scaled[width - span + j] * (j - t_mid)
        slope /= t_norm
        anchor = _mean(scaled, width - ANCHOR_POINTS, width)
        origin_yesterday = last - SEASON
        has_day = origin_yesterday + 1 - SEASONAL_HALF_WIDTH >= first  # every step's day-ago neighbourhood
        days = have / SEASON
        for step in range(1, horizon + 1):
            r = w * horizon + step - 1
            for c in range(n_shared):
                rows[r, c] = shared[c] - anchor if relative[c] else shared[c]
            if has_day:
                target = origin_yesterday + step
                yesterday = scaled[target]
                smooth = _mean(scaled, target - SEASONAL_HALF_WIDTH, target + SEASONAL_HALF_WIDTH + 1)
                move = yesterday - scaled[origin_yesterday]
                last_move = scaled[last] - scaled[origin_yesterday]
            else:
                yesterday = smooth = move = last_move = np.nan
            per_step = (float(step), yesterday, smooth, move, last_move, slope * step, days)
            for k in range(7):
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
