"""What every data source hands to training: named series of values on a fixed step.

Gap policy (all sources): points are snapped to the series' step (the median spacing of its
timestamps); gaps of up to MAX_FILL_STEPS missing points are filled by linear interpolation;
a longer gap splits the series into separate pieces, so no invented stretch is ever trained on.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MAX_FILL_STEPS = 6


@dataclass
class Series:
    name: str
    values: np.ndarray  # float64, one point per step, oldest first, no NaN
    step_seconds: int
    start: np.datetime64  # timestamp of values[0], UTC


def infer_step(epoch_seconds: np.ndarray) -> int:
    diffs = np.diff(np.unique(epoch_seconds))
    if len(diffs) == 0:
        raise ValueError("need at least two distinct timestamps to infer the step")
    return int(np.median(diffs))


def regularize(name: str, epoch_seconds: np.ndarray, values: np.ndarray, step_seconds: int | None = None,
               max_fill_steps: int = MAX_FILL_STEPS) -> list[Series]:
    """Snap (timestamp, value) points to a regular grid and apply the gap policy above."""
    epoch_seconds = np.asarray(epoch_seconds, dtype=np.int64)
    values = np.asarray(values, dtype=np.float64)
    keep = np.isfinite(values)
    epoch_seconds, values = epoch_seconds[keep], values[keep]
    if len(values) < 2:
        return []
    order = np.argsort(epoch_seconds, kind="stable")
    epoch_seconds, values = epoch_seconds[order], values[order]
    step = step_seconds or infer_step(epoch_seconds)
    slots = np.rint((epoch_seconds - epoch_seconds[0]) / step).astype(np.int64)
    grid = np.full(slots[-1] + 1, np.nan)
    grid[slots] = values  # several points in one slot: the last one wins
    pieces, missing = [], np.isnan(grid)
    # split wherever a run of missing points is longer than the fill limit
    bounds, piece_start = [], 0
    if missing.any():  # (the common case has no gap at all: no walk over every point)
        run_start = None
        for i, gap in enumerate(missing):
            if gap and run_start is None:
                run_start = i
            elif not gap and run_start is not None:
                if i - run_start > max_fill_steps:
                    bounds.append((piece_start, run_start))
                    piece_start = i
                run_start = None
    bounds.append((piece_start, len(grid)))
    for k, (lo, hi) in enumerate(bounds):
        piece = grid[lo:hi]
        idx = np.arange(len(piece))
        ok = ~np.isnan(piece)
        piece = np.interp(idx, idx[ok], piece[ok])
        start = np.datetime64(int(epoch_seconds[0] + lo * step), "s")
        pieces.append(Series(name if len(bounds) == 1 else f"{name}#{k}", piece, step, start))
    return pieces
