"""A built-in synthetic workload, so training and tests work offline with no data at hand.

Each series is 14 days at a 5-minute step and looks like a service metric: a daily cycle (busy
days, quiet nights), a weekly cycle (quieter weekends), a slow trend, occasional bursts that rise
fast and decay, and multiplicative noise. Three families at different scales: request rate (req/s,
hundreds), CPU utilisation (%, capped at 100) and p99 latency (ms, spiky). Seeded, so reproducible.
"""
from __future__ import annotations

import numpy as np

from .base import Series

STEP_SECONDS = 300
POINTS_PER_DAY = 86400 // STEP_SECONDS
START = np.datetime64("2026-01-05T00:00:00", "s")  # a Monday


def _shape(rng: np.random.Generator, n: int) -> np.ndarray:
    t = np.arange(n)
    day = t / POINTS_PER_DAY
    phase = rng.uniform(-0.1, 0.1)
    daily = 0.5 * (1 - np.cos(2 * np.pi * (day - 0.25 + phase)))  # trough at night, peak mid-afternoon
    weekday = (day.astype(int) % 7) < 5
    weekly = np.where(weekday, 1.0, rng.uniform(0.5, 0.8))
    trend = 1 + rng.uniform(-0.15, 0.3) * t / n
    bursts = np.zeros(n)
    for start in rng.choice(n, size=rng.integers(2, 6), replace=False):
        length = rng.integers(6, 36)
        decay = np.exp(-np.arange(length) / (length / 3))
        end = min(n, start + length)
        bursts[start:end] += rng.uniform(0.3, 1.2) * decay[: end - start]
    base = rng.uniform(0.15, 0.4)
    return (base + (1 - base) * daily * weekly) * trend + bursts


def generate(n_series: int = 9, days: int = 14, seed: int = 7) -> list[Series]:
    rng = np.random.default_rng(seed)
    n = days * POINTS_PER_DAY
    out = []
    for i in range(n_series):
        family = ("requests", "cpu", "latency")[i % 3]
        shape = _shape(rng, n)
        if family == "requests":
            scale = rng.uniform(50, 2000)
            values = rng.poisson(np.maximum(shape * scale, 0) * 1.0).astype(float)
        elif family == "cpu":
            values = np.clip(shape * rng.uniform(20, 60) * rng.lognormal(0, 0.05, n), 0, 100)
        else:
            values = rng.uniform(20, 200) * (0.6 + 0.4 * shape) * rng.lognormal(0, 0.15, n)
        out.append(Series(f"synthetic-{family}-{i}", values, STEP_SECONDS, START))
    return out
