"""A global, direct multi-horizon quantile forecaster: one gradient-boosted model per quantile.

The forecast step is a feature, so one model covers every step of the horizon. Each model predicts
the future point, scaled by the window's level, relative to the window's anchor (its last few
points; `features.anchors`). Quantiles are sorted per step after prediction so the band never
crosses, and a window that never went negative gets no negative forecast (metrics such as CPU,
bytes and request rates are non-negative).

Training rows: every `stride`-th window of every series, and of each window's `horizon` steps a
seeded random choice of `steps_per_window` (neighbouring steps of one window are nearly the same
example; sampling them keeps the row count, and the fit time, down without losing windows). A seeded
share of the windows (`short_history`) has its history cut to a length between `min_history` and the
window, log-uniformly, so the same trees forecast a series that has only been up for two hours.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Callable, Iterable, Sequence

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor, as_completed

import numpy as np

from . import features
from .compiled import CompiledTrees, TreeArrays

if TYPE_CHECKING:  # scikit-learn is imported where a model is fitted, never to serve one
    from sklearn.ensemble import HistGradientBoostingRegressor


def quantile_name(q: float) -> str:
    """0.1 -> 'p10', 0.5 -> 'p50', 0.975 -> 'p97.5'."""
    pct = round(q * 100, 6)
    return f"p{int(pct)}" if float(pct).is_integer() else f"p{pct:g}"


@dataclass(frozen=True)
class ForecastSpec:
    """What a model predicts from what; saved in the model card and checked on every request."""

    window: int = 336
    horizon: int = 12
    quantiles: tuple[float, ...] = (0.1, 0.5, 0.9)
    step_seconds: int = 300
    feature_version: int = features.FEATURE_VERSION
    band_scale: float = 1.0  # widens (>1) or narrows the band around the median; set by calibration
    min_history: int = features.MIN_HISTORY  # fewest points a request may send (shorter ones are NaN-padded)

    def __post_init__(self) -> None:
        if self.horizon < 1:
            raise ValueError("horizon must be at least 1")
        if self.window < features.min_window(self.horizon):
            raise ValueError(f"window must be at least {features.min_window(self.horizon)} points")
        if not features.MIN_HISTORY <= self.min_history <= self.window:
            raise ValueError(f"min_history must be between {features.MIN_HISTORY} and the window")
        qs = tuple(float(q) for q in self.quantiles)
        if not qs or any(not 0 < q < 1 for q in qs) or len(set(qs)) != len(qs):
            raise ValueError("quantiles must be distinct values strictly between 0 and 1")
        object.__setattr__(self, "quantiles", tuple(sorted(qs)))
        if not self.band_scale > 0:
            raise ValueError("band_scale must be positive")

    @property
    def output_names(self) -> list[str]:
        return [quantile_name(q) for q in self.quantiles]

    def to_dict(self) -> dict:
        return asdict(self) | {"output_names": self.output_names}


@dataclass
class TrainingParams:
    max_iter: int = 150
    learning_rate: float = 0.08
    max_leaf_nodes: int = 15
    min_samples_leaf: int = 40
    l2_regularization: float = 1.0
    stride: int = 2
    steps_per_window: int = 3
    random_state: int = 0
    jobs: int = 0  # processes fitting quantiles in parallel; 0: one per core (at most one per quantile)
    calibration: float = 0.2  # share of each series' end held out to calibrate the band width; 0: off
    short_history: float = 0.3  # share of training windows cut to a random shorter history
    extra: dict = field(default_factory=dict)


def shorten(windows: np.ndarray, share: float, min_history: int, rng: np.random.Generator) -> np.ndarray:
    """A copy of windows with a random `share` of them NaN before a log-uniform history length."""
    n, width = windows.shape
    if share <= 0 or width <= min_history:
        return windows
    cut = rng.random(n) < share
    lengths = np.exp(rng.uniform(np.log(min_history), np.log(width), n)).astype(np.int64)
    out = np.array(windows, dtype=np.float64)
    out[np.arange(width)[None, :] < np.where(cut, width - lengths, 0)[:, None]] = np.nan
    return out


def training_rows(series: Iterable[np.ndarray], spec: ForecastSpec, stride: int, steps_per_window: int | None = None,
                  random_state: int = 0, short_history: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Windows of every series (one origin per `stride` points), each with `steps_per_window` of its next
    `horizon` points (all of them when None), as feature rows and scaled, anchored targets; a
    `short_history` share of the windows keeps only a random part of its history (`shorten`)."""
    rng = np.random.default_rng(random_state)
    keep = spec.horizon if not steps_per_window else min(steps_per_window, spec.horizon)
    xs, ys = [], []
    for values in series:
        values = np.asarray(values, dtype=np.float64)
        span = spec.window + spec.horizon
        if len(values) < span:
            continue
        blocks = np.lib.stride_tricks.sliding_window_view(values, span)[::stride]
        windows, future = blocks[:, : spec.window], blocks[:, spec.window :]
        windows = shorten(windows, short_history, spec.min_history, rng)
        x, levels = features.make_features(windows, spec.horizon)
        y = future / levels[:, None] - features.anchors(windows, levels)[:, None]  # [n, H]
        x = x.reshape(len(windows), spec.horizon, -1)
        if keep < spec.horizon:
            pick = np.argsort(rng.random((len(windows), spec.horizon)), axis=1)[:, :keep]
            x = np.take_along_axis(x, pick[:, :, None], axis=1)
            y = np.take_along_axis(y, pick, axis=1)
        xs.append(x.reshape(-1, x.shape[-1]))
        ys.append(y.reshape(-1))
    if not xs:
        raise ValueError(f"no series has the {spec.window + spec.horizon} points one training example needs")
    return np.concatenate(xs), np.concatenate(ys).astype(np.float32)


def _fit_quantile(x: np.ndarray, y: np.ndarray, q: float, params: TrainingParams) -> "HistGradientBoostingRegressor":
    from sklearn.ensemble import HistGradientBoostingRegressor
    from threadpoolctl import threadpool_limits

    est = HistGradientBoostingRegressor(
        loss="quantile",
        quantile=q,
        max_iter=params.max_iter,
        learning_rate=params.learning_rate,
        max_leaf_nodes=params.max_leaf_nodes,
        min_samples_leaf=params.min_samples_leaf,
        l2_regularization=params.l2_regularization,
        early_stopping=False,
        random_state=params.random_state,
        **params.extra,
    )
    with threadpool_limits(limits=1):
        return est.fit(x, y)


def _calibration_split(series: list[np.ndarray], spec: ForecastSpec, share: float) -> tuple[list, list]:
    """Each long enough series as (all but its last `share`, that last share with a window of history)."""
    head, tail = [], []
    for values in series:
        cut = len(values) - int(len(values) * share)
        if cut >= spec.window + spec.horizon and len(values) - cut >= spec.horizon:
            head.append(values[:cut])
            tail.append(values[cut - spec.window :])
    return head, tail


def _rows(series: list[np.ndarray], spec: ForecastSpec, params: TrainingParams, bar, label: str):
    stage = bar(len(series), label) if bar else None
    parts = []
    for values in series:
        if len(values) >= spec.window + spec.horizon:
            parts.append(training_rows([values], spec, params.stride, params.steps_per_window,
                                       params.random_state + len(parts), params.short_history))
        if stage:
            stage.update(1)
    if stage:
        stage.close()
    if not parts:
        raise ValueError(f"no series has the {spec.window + spec.horizon} points one training example needs")
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _fit_estimators(rows, spec: ForecastSpec, params: TrainingParams, progress, bar, label: str) -> list:
    x, y = rows
    progress(f"{label}: {len(x):,} training rows x {x.shape[1]} features")
    jobs = max(1, min(params.jobs or (os.cpu_count() or 1), len(spec.quantiles)))
    stage = bar(len(spec.quantiles), f"{label}: {len(spec.quantiles)} quantiles ({jobs} processes)") if bar else None
    fitted: dict[float, "HistGradientBoostingRegressor"] = {}
    if jobs == 1:
        for q in spec.quantiles:
            fitted[q] = _fit_quantile(x, y, q, params)
            progress(f"fitted quantile {q:g}")
            if stage:
                stage.update(1)
    else:
        # one single-threaded process per quantile: on a busy machine OpenMP's threads oversubscribe the
        # cores and a 2-thread fit can be 10x slower than a 1-thread one; separate processes never do
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
            futures = {pool.submit(_fit_quantile, x, y, q, params): q for q in spec.quantiles}
            for future in as_completed(futures):
                fitted[futures[future]] = future.result()
                progress(f"fitted quantile {futures[future]:g}")
                if stage:
                    stage.update(1)
    if stage:
        stage.close()
    return [fitted[q] for q in spec.quantiles]


class QuantileForecaster:
    """Fitted, or loaded from a model directory: with its scikit-learn `estimators` (training and
    evaluation), or with only their `trees` as plain arrays (serving), one per quantile either way."""

    def __init__(self, spec: ForecastSpec, estimators: Sequence["HistGradientBoostingRegressor"] = (),
                 trees: Sequence[TreeArrays] = ()):
        self.spec = spec
        self.estimators = list(estimators)
        self.trees = list(trees) or [TreeArrays.of(e) for e in self.estimators]
        if len(self.trees) != len(spec.quantiles):
            raise ValueError(f"expected {len(spec.quantiles)} estimators, got {len(self.trees)}")
        self._trees: CompiledTrees | None = None

    def compile(self, threads: int = 1) -> "QuantileForecaster":
        """Flatten the trees and JIT-compile the walker now (once per process), not on the first request."""
        self._trees = CompiledTrees(self.trees)
        self.predict(np.ones((1, self.spec.window)))
        if threads > 1:
            self.predict(np.ones((64, self.spec.window)), threads=threads)  # the parallel walker
        return self

    @classmethod
    def fit(
        cls,
        series: Sequence[np.ndarray],
        spec: ForecastSpec,
        params: TrainingParams | None = None,
        progress: Callable[[str], None] = lambda _msg: None,
        bar: Callable[[int, str], object] | None = None,
    ) -> "QuantileForecaster":
        """Fit one estimator per quantile. `bar(total, desc)`, when given, makes a progress bar (an
        object with update(n) and close(), e.g. tqdm) for each stage: building rows, then each quantile."""
        params = params or TrainingParams()
        series = [np.asarray(v, dtype=np.float64) for v in series]
        scale = 1.0
        if params.calibration > 0:
            head, tail = _calibration_split(series, spec, params.calibration)
            if head and tail:
                trial = cls(replace(spec, band_scale=1.0), _fit_estimators(_rows(head, spec, params, bar, "features (calibration)"),
                                                  spec, params, progress, bar, "calibration"))
                scale = trial.band_scale_for(tail, stride=max(1, params.stride * 3))
                progress(f"band calibrated on the last {params.calibration:.0%} of each series: scale {scale:.3f}")
        estimators = _fit_estimators(_rows(series, spec, params, bar, "features"), spec, params, progress, bar, "fit")
        return cls(replace(spec, band_scale=scale), estimators)

    def band_scale_for(self, series: Sequence[np.ndarray], stride: int) -> float:
        """The factor on the band's distance from the median that makes the outer quantiles hold their
        nominal share (e.g. 80% for p10-p90) of these series' actual next points."""
        ratios = []
        for values in series:
            blocks = np.lib.stride_tricks.sliding_window_view(values, self.spec.window + self.spec.horizon)[::stride]
            forecast = self.predict(blocks[:, : self.spec.window])
            actual = blocks[:, self.spec.window :]
            mid = forecast[self.median_index()]
            lo, hi = forecast[0], forecast[-1]
            with np.errstate(divide="ignore", invalid="ignore"):
                above = np.where(actual > mid, (actual - mid) / (hi - mid), 0.0)
                below = np.where(actual < mid, (mid - actual) / (mid - lo), 0.0)
            ratios.append(np.nan_to_num(np.maximum(above, below), nan=0.0, posinf=np.inf).ravel())
        nominal = self.spec.quantiles[-1] - self.spec.quantiles[0]
        return float(np.clip(np.quantile(np.concatenate(ratios), nominal), 0.5, 4.0))

    def median_index(self) -> int:
        return int(np.argmin([abs(q - 0.5) for q in self.spec.quantiles]))

    def predict(self, windows: np.ndarray, threads: int = 1) -> np.ndarray:
        """Forecast quantiles for windows [n, >=min_history] -> float32 [n_quantiles, n, horizon], never crossing.

        Only each window's last `spec.window` points count. A shorter history is padded with NaN on the
        left, or may come padded: the points up to a window's last NaN are not there (`features`).
        `threads` > 1 lets a large batch use more cores."""
        windows = np.asarray(windows, dtype=np.float64)
        if windows.shape[1] < self.spec.window:
            pad = np.full((len(windows), self.spec.window - windows.shape[1]), np.nan)
            windows = np.concatenate([pad, windows], axis=1)
        windows = windows[:, -self.spec.window :]
        x, levels = features.make_features(windows, self.spec.horizon)
        n, h = len(windows), self.spec.horizon
        if self._trees is None:
            self._trees = CompiledTrees(self.trees)
        scaled = self._trees.predict(x, threads).reshape(len(self.trees), n, h)
        scaled += features.anchors(windows, levels)[None, :, None]
        scaled.sort(axis=0)  # monotone rearrangement: quantile order holds at every step
        if self.spec.band_scale != 1.0:
            mid = scaled[self.median_index()]
            scaled = mid + self.spec.band_scale * (scaled - mid)  # keeps the order
        out = scaled * levels[None, :, None]
        lowest = windows.min(axis=1)
        if np.isnan(lowest).any():  # short histories: the points that are there
            with np.errstate(invalid="ignore"):
                lowest = np.nanmin(windows, axis=1)
        nonneg = lowest >= 0
        out[:, nonneg] = np.maximum(out[:, nonneg], 0.0)  # clipping keeps the order
        return out.astype(np.float32)
