"""A global, direct multi-horizon quantile forecaster: one gradient-boosted model per quantile.

The forecast step is a feature, so one model covers every step of the horizon; quantiles are
sorted per step after prediction so the band never crosses.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable, Sequence

import numpy as np
from sklearn.ensemble import HistGradientBoostingRegressor

from . import features


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

    def __post_init__(self) -> None:
        if self.horizon < 1:
            raise ValueError("horizon must be at least 1")
        if self.window < features.min_window(self.horizon):
            raise ValueError(f"window must be at least {features.min_window(self.horizon)} points")
        qs = tuple(float(q) for q in self.quantiles)
        if not qs or any(not 0 < q < 1 for q in qs) or len(set(qs)) != len(qs):
            raise ValueError("quantiles must be distinct values strictly between 0 and 1")
        object.__setattr__(self, "quantiles", tuple(sorted(qs)))

    @property
    def output_names(self) -> list[str]:
        return [quantile_name(q) for q in self.quantiles]

    def to_dict(self) -> dict:
        return asdict(self) | {"output_names": self.output_names}


@dataclass
class TrainingParams:
    max_iter: int = 200
    learning_rate: float = 0.08
    max_leaf_nodes: int = 31
    min_samples_leaf: int = 40
    l2_regularization: float = 1.0
    stride: int = 3
    random_state: int = 0
    extra: dict = field(default_factory=dict)


def training_rows(series: Iterable[np.ndarray], spec: ForecastSpec, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """Every window of every series (one origin per `stride` points) with its next `horizon` points."""
    xs, ys = [], []
    for values in series:
        values = np.asarray(values, dtype=np.float64)
        span = spec.window + spec.horizon
        if len(values) < span:
            continue
        blocks = np.lib.stride_tricks.sliding_window_view(values, span)[::stride]
        windows, future = blocks[:, : spec.window], blocks[:, spec.window :]
        x, levels = features.make_features(windows, spec.horizon)
        xs.append(x)
        ys.append((future / levels[:, None]).reshape(-1))
    if not xs:
        raise ValueError(f"no series has the {spec.window + spec.horizon} points one training example needs")
    return np.concatenate(xs), np.concatenate(ys).astype(np.float32)


class QuantileForecaster:
    def __init__(self, spec: ForecastSpec, estimators: Sequence[HistGradientBoostingRegressor]):
        if len(estimators) != len(spec.quantiles):
            raise ValueError(f"expected {len(spec.quantiles)} estimators, got {len(estimators)}")
        self.spec = spec
        self.estimators = list(estimators)

    @classmethod
    def fit(
        cls,
        series: Sequence[np.ndarray],
        spec: ForecastSpec,
        params: TrainingParams | None = None,
        progress: Callable[[str], None] = lambda _msg: None,
    ) -> "QuantileForecaster":
        params = params or TrainingParams()
        x, y = training_rows(series, spec, params.stride)
        progress(f"built {len(x):,} training rows x {x.shape[1]} features")
        estimators = []
        for q in spec.quantiles:
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
            est.fit(x, y)
            estimators.append(est)
            progress(f"fitted quantile {q:g}")
        return cls(spec, estimators)

    def predict(self, windows: np.ndarray) -> np.ndarray:
        """Forecast quantiles for windows [n, >=window] -> float32 [n_quantiles, n, horizon], never crossing."""
        windows = np.asarray(windows, dtype=np.float64)[:, -self.spec.window :]
        x, levels = features.make_features(windows, self.spec.horizon)
        n, h = len(windows), self.spec.horizon
        scaled = np.stack([est.predict(x).reshape(n, h) for est in self.estimators])
        scaled.sort(axis=0)  # monotone rearrangement: quantile order holds at every step
        return (scaled * levels[None, :, None]).astype(np.float32)
