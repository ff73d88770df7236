"""Baselines the backtest compares the model with, on exactly the same origins and windows.

- last value: every future point equals the last observed one;
- seasonal naive: every future point equals the value at the same time yesterday;
- ETS: statsmodels' `ETSModel` with additive errors and a damped additive trend, fitted on the last
  two days before each origin (heuristic initialisation: about 6x faster than estimating the initial
  states and within noise of it on these windows); its quantiles come from the model's analytic
  forecast variance.

Point baselines return one forecast that is used for every quantile.
"""
from __future__ import annotations

import hashlib
import os
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from .metrics import SEASON

ETS_FIT_POINTS = 2 * SEASON
ETS_CONFIG = "ETSModel(error=add,trend=add,damped_trend=True,initialization_method=heuristic);v1"


def last_value(windows: np.ndarray, horizon: int) -> np.ndarray:
    return np.repeat(windows[:, -1:], horizon, axis=1)


def seasonal_naive(windows: np.ndarray, horizon: int, season: int = SEASON) -> np.ndarray:
    start = windows.shape[1] - season
    return windows[:, start : start + horizon].copy()


def _ets_one(y: np.ndarray, horizon: int, quantiles: tuple[float, ...]) -> np.ndarray:
    import pandas as pd
    from scipy.stats import norm
    from statsmodels.tsa.exponential_smoothing.ets import ETSModel

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            model = ETSModel(pd.Series(y), error="add", trend="add", damped_trend=True,
                             initialization_method="heuristic")
            fit = model.fit(disp=False)
            pred = fit.get_prediction(start=len(y), end=len(y) + horizon - 1)
            mean = np.asarray(pred.predicted_mean, dtype=np.float64)
            std = np.sqrt(np.maximum(np.asarray(pred.forecast_variance, dtype=np.float64), 0))
            out = mean[None, :] + norm.ppf(np.asarray(quantiles))[:, None] * std[None, :]
            if np.all(np.isfinite(out)):
                return out
        except Exception:  # a fit that fails to converge falls back to the last value
            pass
    return np.full((len(quantiles), horizon), y[-1], dtype=np.float64)


def _ets_chunk(args) -> np.ndarray:
    windows, horizon, quantiles = args
    return np.stack([_ets_one(w, horizon, quantiles) for w in windows], axis=1)  # [q, n, H]


def default_cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "perf-predictor" / "ets"


def ets_forecasts(windows_by_series: list[np.ndarray], horizon: int, quantiles: tuple[float, ...],
                  jobs: int = 2, cache_dir: Path | None = None, progress=None) -> list[np.ndarray]:
    """ETS quantile forecasts [n_quantiles, n_origins, horizon] for each series' windows.

    Fits are spread over `jobs` processes; results are cached per series by a hash of the fitted
    windows and the configuration, so re-running a backtest on the same data costs nothing.
    """
    fit_windows = [np.ascontiguousarray(w[:, -ETS_FIT_POINTS:], dtype=np.float64) for w in windows_by_series]
    results: list[np.ndarray | None] = [None] * len(fit_windows)
    keys = []
    for i, w in enumerate(fit_windows):
        digest = hashlib.sha256(f"{ETS_CONFIG};{horizon};{quantiles}".encode())
        digest.update(w.tobytes())
        keys.append(digest.hexdigest()[:32])
        if cache_dir is not None and (cache_dir / f"{keys[i]}.npy").is_file():
            try:
                results[i] = np.load(cache_dir / f"{keys[i]}.npy")
            except (OSError, ValueError):
                results[i] = None
    todo = [i for i, r in enumerate(results) if r is None]
    # chunks of ~16 windows keep both processes busy and the progress bar moving
    tasks = [(i, lo) for i in todo for lo in range(0, len(fit_windows[i]), 16)]
    parts: dict[int, dict[int, np.ndarray]] = {i: {} for i in todo}
    if tasks:
        args = [(fit_windows[i][lo : lo + 16], horizon, tuple(quantiles)) for i, lo in tasks]
        if jobs > 1:
            with ProcessPoolExecutor(max_workers=jobs) as pool:
                for (i, lo), out in zip(tasks, pool.map(_ets_chunk, args)):
                    parts[i][lo] = out
                    if progress:
                        progress(out.shape[1])
        else:
            for (i, lo), a in zip(tasks, args):
                parts[i][lo] = out = _ets_chunk(a)
                if progress:
                    progress(out.shape[1])
    for i in todo:
        results[i] = np.concatenate([parts[i][lo] for lo in sorted(parts[i])], axis=1)
        if cache_dir is not None:
            try:
                cache_dir.mkdir(parents=True, exist_ok=True)
                np.save(cache_dir / f"{keys[i]}.npy", results[i])
            except OSError:
                pass
    return results  # type: ignore[return-value]
