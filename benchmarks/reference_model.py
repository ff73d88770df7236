"""The issue's reference: the "straightforward 36-model forecaster" the targets are measured against.

One `HistGradientBoostingRegressor(loss="quantile")` per (quantile, horizon step): 3 x 12 = 36 models,
125 boosting rounds each (~4,500 trees), trained on the project's built-in synthetic workload. Its
features are a frozen copy of the project's feature transform as of issue 7 (`forecaster/features.py`
at commit 2bf80b4: 43 features per (window, step) row; the model for step h only sees the rows of step
h), so the yardstick neither moves nor breaks while the project's own features change. Targets are
scaled by the window's level and taken relative to the mean of its last 3 points, like the project's
model, so both forecast the same thing and answer in the same format:
`predict(windows [n, >=W]) -> float32 [n_quantiles, n, H]`, quantiles sorted per step.

Persistence: a pickle of plain scikit-learn estimators and numbers, written and read only by this
benchmark on this machine (it never loads a file from anyone else), so pickle is acceptable here; the
served project model itself is loaded through `forecaster.artifact` (plain arrays, or skops).

    python benchmarks/reference_model.py --out .cache/bench/reference.pkl   # train (about a minute)
"""
from __future__ import annotations

import argparse
import pickle
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

FORMAT = 1
FEATURES = "frozen-2bf80b4"  # the transform below; part of the cache key
SEASON, N_LAGS, SEASONAL_HALF_WIDTH, ANCHOR_POINTS = 288, 24, 3, 3
MEAN_SPANS = (3, 6, 12, 36, 72, SEASON)
STD_SPANS = (12, 72, SEASON)
DEFAULTS = dict(window=336, horizon=12, quantiles=(0.1, 0.5, 0.9), max_iter=125, stride=8,
                learning_rate=0.08, max_leaf_nodes=31, min_samples_leaf=40, l2_regularization=1.0)


def _anchor(windows: np.ndarray, levels: np.ndarray) -> np.ndarray:
    return windows[:, -ANCHOR_POINTS:].mean(axis=1) / levels


def make_features(windows: np.ndarray, horizon: int) -> tuple[np.ndarray, np.ndarray]:
    """Frozen copy of forecaster.features.make_features at 2bf80b4: (X [n * horizon, 43] float32, levels [n])."""
    windows = np.asarray(windows, dtype=np.float64)
    n, width = windows.shape
    if width < SEASON + SEASONAL_HALF_WIDTH + 1 + max(N_LAGS, horizon):
        raise ValueError(f"windows of {width} points are too short")
    level = np.abs(windows[:, -SEASON:]).mean(axis=1)
    levels = np.where(level > 1e-9, level, 1.0)
    scaled = windows / levels[:, None]
    last = width - 1
    shared = [scaled[:, last - N_LAGS + 1:][:, ::-1]]
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
    target_yesterday = origin_yesterday + steps
    yesterday = scaled[:, target_yesterday]
    offsets = np.arange(-SEASONAL_HALF_WIDTH, SEASONAL_HALF_WIDTH + 1)
    smooth = scaled[:, target_yesterday[:, None] + offsets[None, :]].mean(axis=2)
    move = yesterday - scaled[:, [origin_yesterday]]
    last_minus_yesterday = np.repeat(scaled[:, [last]] - scaled[:, [origin_yesterday]], horizon, axis=1)
    per_step = np.stack(
        [np.broadcast_to(steps, (n, horizon)), yesterday, smooth, move, last_minus_yesterday], axis=2)
    rows = np.concatenate(
        [np.repeat(shared_block[:, None, :], horizon, axis=1), per_step], axis=2).reshape(n * horizon, -1)
    return rows.astype(np.float32), levels


class ReferenceForecaster:
    """36 quantile x horizon models; the same predict contract as `forecaster.model.QuantileForecaster`."""

    def __init__(self, state: dict):
        self.window = int(state["window"])
        self.horizon = int(state["horizon"])
        self.quantiles = tuple(state["quantiles"])
        self.models = state["models"]  # models[q][h]
        self.output_names = [f"p{round(q * 100):d}" for q in self.quantiles]

    @property
    def n_trees(self) -> int:
        return sum(len(m._predictors) for per_q in self.models for m in per_q)

    def predict(self, windows: np.ndarray) -> np.ndarray:
        windows = np.asarray(windows, dtype=np.float64)[:, -self.window:]
        n, h = len(windows), self.horizon
        x, levels = make_features(windows, h)
        x = x.reshape(n, h, -1)
        scaled = np.empty((len(self.quantiles), n, h))
        for qi, per_step in enumerate(self.models):
            for step, model in enumerate(per_step):
                scaled[qi, :, step] = model.predict(x[:, step, :])
        scaled += _anchor(windows, levels)[None, :, None]
        scaled.sort(axis=0)
        out = scaled * levels[None, :, None]
        nonneg = windows.min(axis=1) >= 0
        out[:, nonneg] = np.maximum(out[:, nonneg], 0.0)
        return out.astype(np.float32)


def training_windows(window: int, horizon: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
    from training.sources import synthetic

    xs, ys = [], []
    for series in synthetic.generate():
        values = np.asarray(series.values, dtype=np.float64)
        blocks = np.lib.stride_tricks.sliding_window_view(values, window + horizon)[::stride]
        xs.append(blocks[:, :window])
        ys.append(blocks[:, window:])
    return np.concatenate(xs), np.concatenate(ys)


def train(**overrides) -> dict:
    from sklearn.ensemble import HistGradientBoostingRegressor

    p = {**DEFAULTS, **overrides}
    windows, future = training_windows(p["window"], p["horizon"], p["stride"])
    x, levels = make_features(windows, p["horizon"])
    x = x.reshape(len(windows), p["horizon"], -1)
    y = future / levels[:, None] - _anchor(windows, levels)[:, None]
    models = []
    for q in p["quantiles"]:
        per_step = []
        for step in range(p["horizon"]):
            est = HistGradientBoostingRegressor(
                loss="quantile", quantile=q, max_iter=p["max_iter"], learning_rate=p["learning_rate"],
                max_leaf_nodes=p["max_leaf_nodes"], min_samples_leaf=p["min_samples_leaf"],
                l2_regularization=p["l2_regularization"], early_stopping=False, random_state=0)
            per_step.append(est.fit(x[:, step, :], y[:, step]))
        models.append(per_step)
    return {"format": FORMAT, "params": p, "window": p["window"], "horizon": p["horizon"],
            "quantiles": tuple(p["quantiles"]), "models": models, "rows_per_model": len(windows)}


def cache_key(**overrides) -> dict:
    import sklearn

    return {"format": FORMAT, "sklearn": sklearn.__version__, "features": FEATURES,
            **{k: (list(v) if isinstance(v, tuple) else v) for k, v in {**DEFAULTS, **overrides}.items()}}


def ensure(path: Path, log=print, **overrides) -> Path:
    """Train the reference into `path` unless a file made with the same parameters is already there."""
    key = cache_key(**overrides)
    if path.is_file():
        try:
            with path.open("rb") as fh:
                if pickle.load(fh).get("key") == key:
                    return path
        except Exception:  # a stale or truncated cache is simply rebuilt
            pass
    started = time.perf_counter()
    log(f"training the 36-model reference forecaster into {path} ...")
    state = train(**overrides)
    state["key"] = key
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with tmp.open("wb") as fh:
        pickle.dump(state, fh, protocol=pickle.HIGHEST_PROTOCOL)
    tmp.replace(path)
    log(f"reference trained in {time.perf_counter() - started:.0f} s")
    return path


def load(path: str | Path) -> ReferenceForecaster:
    with Path(path).open("rb") as fh:
        return ReferenceForecaster(pickle.load(fh))  # our own file, see the module docstring


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(REPO / ".cache" / "bench" / "reference.pkl"))
    args = ap.parse_args()
    ref = load(ensure(Path(args.out)))
    print(f"{len(ref.models) * len(ref.models[0])} models, {ref.n_trees} trees")


if __name__ == "__main__":
    main()
