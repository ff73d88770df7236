"""CSV files in the `timestamp,value` format of the NAB corpus: one series per file.

Timestamps may be ISO 8601 (`2014-02-14 14:30:00`, `...T...Z`) or Unix seconds.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from .base import Series, regularize


def parse_timestamps(raw: list[str]) -> np.ndarray:
    try:
        return np.array([float(t) for t in raw]).astype(np.int64)
    except ValueError:
        cleaned = [t.strip().rstrip("Z").replace(" ", "T") for t in raw]
        return np.array(cleaned, dtype="datetime64[s]").astype(np.int64)


def read_csv(path: Path) -> list[Series]:
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or not {"timestamp", "value"} <= set(reader.fieldnames):
            raise ValueError(f"{path}: expected a header with 'timestamp' and 'value' columns")
        rows = [(r["timestamp"], r["value"]) for r in reader if r["timestamp"]]
    if not rows:
        raise ValueError(f"{path}: no rows")
    stamps = parse_timestamps([t for t, _ in rows])
    values = np.array([float(v) if v.strip() else np.nan for _, v in rows])
    return regularize(path.stem, stamps, values)


def load(path: str | Path) -> list[Series]:
    """One CSV file, or every *.csv in a directory (sorted by name)."""
    path = Path(path)
    files = sorted(path.glob("*.csv")) if path.is_dir() else [path]
    if not files:
        raise ValueError(f"no .csv files in {path}")
    series: list[Series] = []
    for file in files:
        series.extend(read_csv(file))
    return series
