"""Fit a forecaster on a list of series and write a model directory."""
from __future__ import annotations

import sys
import time
from collections import Counter
from pathlib import Path

from forecaster import artifact, digest
from forecaster.model import ForecastSpec, QuantileForecaster, TrainingParams

from .sources import Series


def common_step(series: list[Series]) -> int:
    steps = Counter(s.step_seconds for s in series)
    if len(steps) > 1:
        detail = ", ".join(f"{step}s x{count}" for step, count in sorted(steps.items()))
        raise ValueError(f"series have different steps ({detail}); train one model per step")
    return next(iter(steps))


def progress_bar(total: int, desc: str):
    """A tqdm bar on stderr (tqdm is in the train extra); a silent stand-in without it."""
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        class _Silent:
            def update(self, n):
                pass

            def close(self):
                pass

        return _Silent()
    return tqdm(total=total, desc=desc, file=sys.stderr, dynamic_ncols=True, mininterval=0.5)


def holdout_split(n: int, fraction: float) -> int:
    """Index where a series' held-out tail starts: the last `fraction` of its points are for testing."""
    if not 0 <= fraction < 1:
        raise ValueError("holdout must be in [0, 1)")
    return n - int(round(n * fraction))


def apply_holdout(series: list[Series], fraction: float) -> list[Series]:
    """The first (1 - fraction) of every series, the part a backtest may let the model see."""
    if fraction == 0:
        return list(series)
    return [Series(s.name, s.values[: holdout_split(len(s.values), fraction)], s.step_seconds, s.start)
            for s in series]


def train(series: list[Series], out: str | Path, source: str, name: str = "perf-predictor",
          version: str | None = None, window: int = 336, horizon: int = 12,
          quantiles: tuple[float, ...] = (0.1, 0.5, 0.9), params: TrainingParams | None = None,
          log=print, holdout: float = 0.0) -> dict:
    """Fit on every series (on the first 1 - holdout of each) and save; returns the model card."""
    if not series:
        raise ValueError("no series to train on")
    full_rows = {s.name: int(len(s.values)) for s in series}
    series = apply_holdout(series, holdout)
    spec = ForecastSpec(window=window, horizon=horizon, quantiles=quantiles, step_seconds=common_step(series))
    usable = [s for s in series if len(s.values) >= window + horizon]
    if not usable:
        raise ValueError(f"every series is shorter than window + horizon = {window + horizon} points")
    params = params or TrainingParams()
    log(f"training on {len(usable)} series ({sum(len(s.values) for s in usable):,} points), "
        f"window {window}, horizon {horizon}, quantiles {list(spec.quantiles)}")
    started = time.perf_counter()
    forecaster = QuantileForecaster.fit([s.values for s in usable], spec, params, progress=log, bar=progress_bar)
    seconds = round(time.perf_counter() - started, 2)
    card = artifact.save(
        out, forecaster, name=name, version=version,
        training={
            "source": source,
            "holdout": holdout,
            "series": [{"name": s.name, "rows": int(len(s.values)), "rows_in_source": full_rows[s.name]}
                       for s in usable],
            "skipped_short_series": [s.name for s in series if len(s.values) < window + horizon],
            "total_rows": int(sum(len(s.values) for s in usable)),
            "params": {k: v for k, v in vars(params).items() if k != "extra"},
            "fit_seconds": seconds,
        },
    )
    log(f"wrote {out} (version {card['version']}) in {seconds}s")
    log(f"model digest {digest.of_directory(out)} (pin it with the chart's model.digest)")
    return card
