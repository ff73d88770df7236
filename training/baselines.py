"""Baselines the backtest compares the model with, on exactly the same origins.

- last value: every future point equals the last observed one;
- seasonal naive: every future point equals the value at the same time yesterday;
- ETS: statsmodels' `ETSModel` with additive errors and a damped additive trend (heuristic
  initialisation: about 6x faster than estimating the initial states and within noise of it on these
  windows); its quantiles come from the model's analytic forecast variance;
- anchors, the forecasters people reach for (the `eval` extra): statsforecast's AutoARIMA, AutoTheta
  and AutoETS and Prophet, each refitted at every origin on the trailing FIT_POINTS (two days), with
  daily seasonality where the method can use it (season 288; AutoETS cannot take a season over 24, so
  it is non-seasonal). Their p10/p90 are the 80% prediction interval, p50 the mean.

Point baselines return one forecast that is used for every quantile. The fitted baselines are slow
(~0.05-0.5 s a fit), so `fitted_forecasts` spreads them over processes and caches each series' result
on disk, keyed by a hash of the method's configuration and the exact windows it fitted.
"""
from __future__ import annotations

import hashlib
import logging
import os
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from .metrics import SEASON

FIT_POINTS = 2 * SEASON
ETS_FIT_POINTS = FIT_POINTS
STEP_SECONDS = 300
CONFIGS = {
    "ets": "ETSModel(error=add,trend=add,damped_trend=True,initialization_method=heuristic);v1",
    "auto_arima": f"statsforecast.AutoARIMA(season_length={SEASON});v1",
    "auto_theta": f"statsforecast.AutoTheta(season_length={SEASON});v1",
    "auto_ets": "statsforecast.AutoETS(season_length=1);v1",
    "prophet": "Prophet(daily_seasonality=True,weekly=False,yearly=False,uncertainty_samples=200,seed=0);v1",
}
ANCHORS = ("auto_arima", "auto_theta", "auto_ets", "prophet")
ETS_CONFIG = CONFIGS["ets"]


def last_value(windows: np.ndarray, horizon: int) -> np.ndarray:
    return np.repeat(windows[:, -1:], horizon, axis=1)


def seasonal_naive(windows: np.ndarray, horizon: int, season: int = SEASON) -> np.ndarray:
    """The same time yesterday; a window shorter than a day repeats its last value instead."""
    start = windows.shape[1] - season
    if start < 0:
        return last_value(windows, horizon)
    return windows[:, start : start + horizon].copy()


def _ets(y: np.ndarray, horizon: int, quantiles: tuple[float, ...]) -> np.ndarray:
    import pandas as pd
    from scipy.stats import norm
    from statsmodels.tsa.exponential_smoothing.ets import ETSModel

    model = ETSModel(pd.Series(y), error="add", trend="add", damped_trend=True, initialization_method="heuristic")
    pred = model.fit(disp=False).get_prediction(start=len(y), end=len(y) + horizon - 1)
    mean = np.asarray(pred.predicted_mean, dtype=np.float64)
    std = np.sqrt(np.maximum(np.asarray(pred.forecast_variance, dtype=np.float64), 0))
    return mean[None, :] + norm.ppf(np.asarray(quantiles))[:, None] * std[None, :]


def _levels(quantiles: tuple[float, ...]) -> list[int]:
    return sorted({int(round(100 * abs(1 - 2 * q))) for q in quantiles if abs(q - 0.5) > 1e-9})


def _from_intervals(quantiles, mean, lower: dict, upper: dict) -> np.ndarray:
    """Quantile rows from a central forecast and symmetric intervals {level: bound}."""
    rows = []
    for q in quantiles:
        level = int(round(100 * abs(1 - 2 * q)))
        rows.append(mean if level == 0 else (lower[level] if q < 0.5 else upper[level]))
    return np.asarray(rows, dtype=np.float64)


def _statsforecast(method: str):
    from statsforecast.models import AutoARIMA, AutoETS, AutoTheta

    model = {"auto_arima": lambda: AutoARIMA(season_length=SEASON),
             "auto_theta": lambda: AutoTheta(season_length=SEASON),
             "auto_ets": lambda: AutoETS(season_length=1)}[method]()

    def fit(y, horizon, quantiles):
        levels = _levels(quantiles)
        out = model.forecast(y=y, h=horizon, level=levels)
        return _from_intervals(quantiles, np.asarray(out["mean"]), {lv: np.asarray(out[f"lo-{lv}"]) for lv in levels},
                               {lv: np.asarray(out[f"hi-{lv}"]) for lv in levels})
    return fit


def _prophet(y, horizon, quantiles):
    import pandas as pd
    from prophet import Prophet

    for name in ("cmdstanpy", "prophet"):
        logging.getLogger(name).setLevel(logging.ERROR)
    # a synthetic clock at the data's step: with two days of history only the daily cycle is
    # estimable, and its Fourier terms do not care which hour the window starts at
    ds = pd.date_range("2000-01-03", periods=len(y) + horizon, freq=f"{STEP_SECONDS}s")
    np.random.seed(0)  # Prophet samples its intervals with numpy's global generator
    levels = _levels(quantiles)
    lower, upper, mean = {}, {}, None
    for lv in levels:
        m = Prophet(interval_width=lv / 100, daily_seasonality=True, weekly_seasonality=False,
                    yearly_seasonality=False, uncertainty_samples=200)
        m.fit(pd.DataFrame({"ds": ds[: len(y)], "y": y}))
        pred = m.predict(pd.DataFrame({"ds": ds[len(y):]}))
        mean = pred["yhat"].to_numpy()
        lower[lv], upper[lv] = pred["yhat_lower"].to_numpy(), pred["yhat_upper"].to_numpy()
    return _from_intervals(quantiles, mean, lower, upper)


def _fitter(method: str):
    if method == "ets":
        return _ets
    if method == "prophet":
        return _prophet
    return _statsforecast(method)


def _fit_chunk(args) -> np.ndarray:
    method, windows, horizon, quantiles = args
    fit = _fitter(method)
    out = []
    for y in windows:
        forecast = None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                forecast = fit(np.asarray(y, dtype=np.float64), horizon, quantiles)
            except Exception:  # a fit that fails falls back to the last value
                forecast = None
        if forecast is None or not np.all(np.isfinite(forecast)):
            forecast = np.full((len(quantiles), horizon), y[-1], dtype=np.float64)
        out.append(np.sort(forecast, axis=0))
    return np.stack(out, axis=1)  # [q, n, H]


def default_cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "perf-predictor" / "ets"


def fitted_forecasts(method: str, windows_by_series: list[np.ndarray], horizon: int, quantiles: tuple[float, ...],
                     jobs: int = 2, cache_dir: Path | None = None, progress=None) -> list[np.ndarray]:
    """`method`'s quantile forecasts [n_quantiles, n_origins, horizon] for each series' windows, each
    fitted on the window's last FIT_POINTS.

    Fits are spread over `jobs` processes; results are cached per series by a hash of the fitted
    windows and the method's configuration, so re-running a backtest on the same data costs nothing.
    """
    config = CONFIGS[method]
    fit_windows = [np.ascontiguousarray(w[:, -FIT_POINTS:], dtype=np.float64) for w in windows_by_series]
    results: list[np.ndarray | None] = [None] * len(fit_windows)
    keys = []
    for i, w in enumerate(fit_windows):
        digest = hashlib.sha256(f"{config};{horizon};{tuple(quantiles)}".encode())
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
        args = [(method, fit_windows[i][lo : lo + 16], horizon, tuple(quantiles)) for i, lo in tasks]
        if jobs > 1:
            with ProcessPoolExecutor(max_workers=jobs) as pool:
                outs = pool.map(_fit_chunk, args)
                for (i, lo), out in zip(tasks, outs):
                    parts[i][lo] = out
                    if progress:
                        progress(out.shape[1])
        else:
            for (i, lo), a in zip(tasks, args):
                parts[i][lo] = out = _fit_chunk(a)
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
    return [sane(f, w) for f, w in zip(results, fit_windows)]


def sane(forecasts: np.ndarray, windows: np.ndarray, reach: float = 10.0) -> np.ndarray:
    """Forecasts [q, n, H] held within each fitted window's range widened by `reach` times its span:
    AutoETS now and then picks an explosive multiplicative model whose band reaches 1e33, which would
    swamp every mean it enters; no forecast an hour ahead worth scoring goes that far."""
    lo, hi = windows.min(axis=1), windows.max(axis=1)
    span = np.maximum(hi - lo, 1e-9 + 1e-6 * np.abs(hi))
    return np.clip(forecasts, (lo - reach * span)[None, :, None], (hi + reach * span)[None, :, None])


def ets_forecasts(windows_by_series, horizon, quantiles, jobs=2, cache_dir=None, progress=None):
    return fitted_forecasts("ets", windows_by_series, horizon, quantiles, jobs, cache_dir, progress)
