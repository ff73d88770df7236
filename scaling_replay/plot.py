"""One PNG per series: demand against the ready capacity of both policies, over the whole replay and over
the day around reactive scaling's worst overload."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .compare import SeriesResult, worst_day  # noqa: E402


def _panel(ax, result: SeriesResult, lo: int, hi: int) -> None:
    reactive, predictive = result.trajectories["reactive"], result.trajectories["predictive"]
    hours = (reactive.time[lo:hi] - result.start) / 3600
    ax.fill_between(hours, reactive.demand[lo:hi], step="post", color="0.8", label="demand")
    ax.step(hours, reactive.ready[lo:hi] * result.capacity, where="post", color="tab:red", lw=0.9,
            label=f"ready capacity, reactive ({result.reactive.overloaded_minutes:,.0f} min overloaded)")
    ax.step(hours, predictive.ready[lo:hi] * result.capacity, where="post", color="tab:blue", lw=0.9,
            label=f"ready capacity, predictive ({result.predictive.overloaded_minutes:,.0f} min overloaded)")
    ax.set_xlabel("hours since replay start")
    ax.set_ylabel("per 5 minutes")
    ax.set_xlim(hours[0], hours[-1])


def write_png(result: SeriesResult, path: Path) -> Path:
    n = len(result.trajectories["reactive"].time)
    lo, hi = worst_day(result)
    fig, axes = plt.subplots(2, 1, figsize=(12, 7), constrained_layout=True)
    _panel(axes[0], result, 0, n)
    axes[0].set_title(f"{result.name}: whole replay, replica-hours reactive {result.reactive.replica_hours:,.0f}, "
                      f"predictive {result.predictive.replica_hours:,.0f}")
    _panel(axes[1], result, lo, hi)
    axes[1].set_title("the day around reactive scaling's largest shortfall")
    axes[1].legend(loc="upper left", fontsize=8)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
