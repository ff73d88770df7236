"""A replay's worst day as a Mermaid `xychart-beta` line chart, so a Markdown page (the README) can show
one plot as text that GitHub renders and a diff can read: demand, and the ready capacity of both
policies, one point per demand step over the day around reactive scaling's largest shortfall (the PNG's
lower panel)."""
from __future__ import annotations

import numpy as np

from .compare import SeriesResult, worst_day

COLOURS = ("#9e9e9e", "#d62728", "#1f77b4")  # demand, reactive, predictive (as the PNG)


def chart(result: SeriesResult) -> str:
    """The fenced Markdown block. Capacity per demand step is the least ready capacity within the step
    (what the step's overload is judged against); hours on the x axis count from the replay's start."""
    reactive, predictive = result.trajectories["reactive"], result.trajectories["predictive"]
    lo, hi = worst_day(result)
    sync = float(reactive.time[1] - reactive.time[0]) if len(reactive.time) > 1 else result.step
    per_step = max(1, int(round(result.step / sync)))
    first = int(round((-reactive.time[0]) % result.step / sync))  # the first slice that starts a demand step
    whole = (len(reactive.time) - first) // per_step  # whole demand steps in the replay
    count = min((hi - lo) // per_step, whole)
    lo = first + min(max(0, lo - first) // per_step, whole - count) * per_step
    stop = lo + count * per_step

    def steps(values: np.ndarray, reduce) -> np.ndarray:
        return reduce(values[lo:stop].reshape(-1, per_step), axis=1)

    demand = steps(reactive.demand, np.max)
    lines = [demand, steps(reactive.ready * result.capacity, np.min), steps(predictive.ready * result.capacity, np.min)]
    start_h, end_h = (reactive.time[lo] - result.start) / 3600, (reactive.time[stop - per_step] - result.start) / 3600
    top = float(max(line.max() for line in lines)) * 1.05 or 1.0
    palette = ", ".join(COLOURS)

    def row(values: np.ndarray) -> str:
        return "[" + ", ".join(f"{v:.4g}" for v in values) + "]"

    return "\n".join([
        "```mermaid",
        f'%%{{init: {{"themeVariables": {{"xyChart": {{"plotColorPalette": "{palette}"}}}}}}}}%%',
        "xychart-beta",
        f'    title "{result.name}: demand (grey), ready capacity reactive (red), predictive (blue)"',
        f'    x-axis "hours since the replay started" {start_h:.1f} --> {end_h:.1f}',
        f'    y-axis "per {result.step / 60:g} minutes" 0 --> {top:.4g}',
        *(f"    line {row(line)}" for line in lines),
        "```",
    ])
