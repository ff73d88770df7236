"""Fit a forecaster on a list of series and write a model directory."""
from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

from forecaster import artifact
from forecaster.model import ForecastSpec, QuantileForecaster, TrainingParams

from .sources import Series


def common_step(series: list[Series]) -> int:
    steps = Counter(s.step_seconds for s in series)
    if len(steps) > 1:
        detail = ", ".join(f"{step}s x{count}" for step, count in sorted(steps.items()))
        raise ValueError(f"series have different steps ({detail}); train one model per step")
    return next(iter(steps))


def train(series: list[Series], out: str | Path, source: str, name: str = "perf-predictor",
          version: str | None = None, window: int = 336, horizon: int = 12,
          quantiles: tuple[float, ...] = (0.1, 0.5, 0.9), params: TrainingParams | None = None,
          log=print) -> dict:
    """Fit on every series and save; returns the model card."""
    if not series:
        raise ValueError("no series to train on")
    spec = ForecastSpec(window=window, horizon=horizon, quantiles=quantiles, step_seconds=common_step(series))
    usable = [s for s in series if len(s.values) >= window + horizon]
    if not usable:
        raise ValueError(f"every series is shorter than window + horizon = {window + horizon} points")
    params = params or TrainingParams()
    log(f"training on {len(usable)} series ({sum(len(s.values) for s in usable):,} points), "
        f"window {window}, horizon {horizon}, quantiles {list(spec.quantiles)}")
    started = time.perf_counter()
    forecaster = QuantileForecaster.fit([s.values for s in usable], spec, params, progress=log)
    seconds = round(time.perf_counter() - started, 2)
    card = artifact.save(
        out, forecaster, name=name, version=version,
        training={
            "source": source,
            "series": [{"name": s.name, "rows": int(len(s.values))} for s in usable],
            "skipped_short_series": [s.name for s in series if len(s.values) < window + horizon],
            "total_rows": int(sum(len(s.values) for s in usable)),
            "params": {k: v for k, v in vars(params).items() if k != "extra"},
            "fit_seconds": seconds,
        },
    )
    log(f"wrote {out} (version {card['version']}) in {seconds}s")
    return card
