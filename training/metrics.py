"""Forecast-quality metrics for the backtest. Plain numpy, known answers in tests/test_evaluate.py.

Conventions: `actual` and point forecasts are arrays of the same shape; quantile forecasts carry a
leading quantile axis (`[n_quantiles, *actual.shape]`). A point forecast used as a quantile forecast
is simply repeated for every quantile (see `as_quantiles`).
"""
from __future__ import annotations

import numpy as np

SEASON = 288


def seasonal_naive_scale(history: np.ndarray, season: int = SEASON) -> float:
    """MASE denominator: in-sample mean absolute error of the seasonal-naive forecast y[t] = y[t - season].

    Falls back to the one-step naive error when the history is shorter than a season and a day, and to
    1.0 for a constant history (so a perfect forecast still scores 0 and nothing divides by zero).
    """
    history = np.asarray(history, dtype=np.float64)
    lag = season if len(history) > season else 1
    if len(history) <= lag:
        return 1.0
    scale = float(np.mean(np.abs(history[lag:] - history[:-lag])))
    return scale if scale > 1e-12 else 1.0


def mase(actual: np.ndarray, point: np.ndarray, scale: float) -> float:
    return float(np.mean(np.abs(np.asarray(actual) - np.asarray(point))) / scale)


def smape(actual: np.ndarray, point: np.ndarray) -> float:
    """Symmetric MAPE in percent (0..200); a point where both actual and forecast are 0 counts as 0."""
    actual, point = np.asarray(actual, dtype=np.float64), np.asarray(point, dtype=np.float64)
    denom = np.abs(actual) + np.abs(point)
    ratio = np.divide(2 * np.abs(actual - point), denom, out=np.zeros_like(denom), where=denom > 0)
    return float(100 * ratio.mean())


def pinball(actual: np.ndarray, forecast_q: np.ndarray, quantiles) -> float:
    """Mean over quantiles and points of the pinball loss max(q (y - f), (q - 1) (y - f))."""
    actual = np.asarray(actual, dtype=np.float64)
    forecast_q = np.asarray(forecast_q, dtype=np.float64)
    q = np.asarray(quantiles, dtype=np.float64).reshape((-1,) + (1,) * actual.ndim)
    diff = actual[None] - forecast_q
    return float(np.mean(np.maximum(q * diff, (q - 1) * diff)))


def coverage(actual: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> float:
    """Fraction of actual points inside [lower, upper]."""
    actual = np.asarray(actual)
    return float(np.mean((actual >= lower) & (actual <= upper)))


def as_quantiles(point: np.ndarray, n_quantiles: int) -> np.ndarray:
    return np.repeat(np.asarray(point, dtype=np.float64)[None], n_quantiles, axis=0)
