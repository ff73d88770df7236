"""Each target's recent history from Prometheus: one row of the model's W points per label set.

The range query, its paging and its error reasons are training's Prometheus source
(`training.sources.prometheus.fetch`), and every label set goes through training's gap policy
(`training.sources.base.regularize`), so the loop forecasts exactly what a model trained from the same
query would have seen. The query covers W steps plus the fill limit, ending at the last whole step,
so a gap at the start of the window can still be filled. A label set is skipped, with its reason, when
the policy cannot give it W points that end at that step:

- `stale`: its newest point is older than the window's end (the series stopped);
- `gap`: a gap longer than the fill limit inside the last W steps;
- `short_history`: fewer than W points in all;
- `non_finite`: nothing left once NaN and Inf values are dropped;
- `over_max_series`: beyond the target's `max_series` (label sets in sorted order; the rest dropped).
"""
from __future__ import annotations

import ssl
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from training.sources import prometheus
from training.sources.base import MAX_FILL_STEPS, regularize

from .config import PrometheusConfig, Target

Key = tuple  # a label set as sorted (name, value) pairs


@dataclass
class Windows:
    keys: list[Key] = field(default_factory=list)
    values: np.ndarray = field(default_factory=lambda: np.empty((0, 0)))  # [n, W], oldest first
    skipped: Counter = field(default_factory=Counter)  # reason -> label sets
    returned: int = 0  # label sets the query returned


def series_key(labels: dict) -> Key:
    """The series' own labels, without the metric name (a forecast is not the metric itself)."""
    return tuple(sorted((str(k), str(v)) for k, v in labels.items() if k != "__name__"))


class PrometheusReader:
    def __init__(self, config: PrometheusConfig):
        self.config = config
        self.context = ssl.create_default_context(cafile=config.ca_file) if config.ca_file else None

    def _headers(self) -> dict:
        if not self.config.bearer_token_file:
            return {}
        # read on every query: projected service-account tokens are rotated in place
        return {"Authorization": "Bearer " + Path(self.config.bearer_token_file).read_text().strip()}

    def windows(self, target: Target, window: int, end: int) -> Windows:
        """Raises `prometheus.PrometheusError` (with a `reason`) when the query itself fails."""
        step = int(target.step)
        start = end - (window - 1 + MAX_FILL_STEPS) * step
        try:
            headers = self._headers()
        except OSError as exc:
            raise prometheus.Unreachable("prometheus_token", f"cannot read the bearer token file: {exc}") from None
        raw = prometheus.fetch(self.config.url, target.query, start, end, step, timeout=self.config.timeout,
                               headers=headers, context=self.context)
        out = Windows(returned=len(raw))
        by_key: dict[Key, tuple] = {}
        for labels, stamps, values in raw.values():
            by_key[series_key(labels)] = (stamps, values)  # same labels but __name__: the later one wins
        keys = sorted(by_key)
        if len(keys) > target.max_series:
            out.skipped["over_max_series"] = len(keys) - target.max_series
            keys = keys[: target.max_series]
        rows = []
        for key in keys:
            stamps, values = by_key[key]
            order = np.argsort(stamps, kind="stable")
            pieces = regularize("", np.rint(stamps[order]).astype(np.int64), values[order], step_seconds=step)
            if not pieces:
                out.skipped["non_finite" if not np.isfinite(values).all() else "short_history"] += 1
                continue
            last = pieces[-1]
            last_stamp = int(last.start.astype("datetime64[s]").astype(np.int64)) + (len(last.values) - 1) * step
            if last_stamp != end:
                out.skipped["stale"] += 1
            elif len(last.values) < window:
                out.skipped["gap" if len(pieces) > 1 else "short_history"] += 1
            else:
                out.keys.append(key)
                rows.append(last.values[-window:])
        out.values = np.stack(rows) if rows else np.empty((0, window))
        return out
