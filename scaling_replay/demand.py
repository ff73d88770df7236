"""The demand series replayed, and the one rule that sizes a replica from each series' own scale.

Default series (from `$PERF_PREDICTOR_SHARED`, default ../shared beside the repo):
- all 7 of `data/nab-tweets`: Twitter mention volume per 5 minutes, counts of events arriving from
  outside, with daily and weekly cycles and bursts: the closest thing in NAB to a request rate;
- of `data/nab`, the three network-in series (`ec2_network_in_*`, `iio_us-east-1_i-a2eb1cd9_NetworkIn`):
  bytes an instance received, which scale with the requests it receives. The CPU, disk-write and ASG series are the service's response to load
  (CPU is bounded at 100%, and it changes with the replica count), not demand, so they are left out.
A series with a gap longer than the loaders fill is several pieces; each piece is replayed on its own.

Sizing rule: `capacity` (what one ready replica serves) = the series' 99th percentile / REPLICAS_AT_P99, so
every series needs 10 fully used replicas at its 99th percentile, whatever its unit or scale.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from training.sources.base import Series
from training.sources.csv_files import read_csv

REPO = Path(__file__).resolve().parent.parent
NAB_DEMAND = ("ec2_network_in_257a54", "ec2_network_in_5abac7", "iio_us-east-1_i-a2eb1cd9_NetworkIn")
REPLICAS_AT_P99 = 10


def shared_dir() -> Path:
    return Path(os.environ.get("PERF_PREDICTOR_SHARED", REPO.parent / "shared")).resolve()


def default_files() -> list[Path]:
    data = shared_dir() / "data"
    files = sorted((data / "nab-tweets").glob("*.csv")) + [data / "nab" / f"{name}.csv" for name in NAB_DEMAND]
    missing = [str(f) for f in files if not f.is_file()]
    if missing or not files:
        raise FileNotFoundError(f"NAB series not found ({', '.join(missing) or data}); "
                                "set PERF_PREDICTOR_SHARED or pass --data")
    return files


def load(paths: list[Path]) -> list[Series]:
    return [piece for path in paths for piece in read_csv(Path(path))]


def capacity_for(values: np.ndarray) -> float:
    """The sizing rule: the 99th percentile of demand fills REPLICAS_AT_P99 replicas."""
    p99 = float(np.percentile(values, 99))
    if not p99 > 0:
        raise ValueError("the series' 99th percentile is not positive: no demand to size a replica from")
    return p99 / REPLICAS_AT_P99
