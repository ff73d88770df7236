"""What headroom buys in the autoscaling replay: the trade-off of one model's forecasts at every width.

    .venv/bin/python benchmarks/replay_frontier.py --model-dir DIR [--factors 0,0.5,1,1.5,2,3] [--half first|second]

For each factor f the recommendation uses median + f * (p90 - median) of the served model's forecasts, as
it is (no live calibration), through the same `scaling_replay.compare` as `benchmarks/scaling_replay.py`:
f = 0 is the median, 1 the model's p90, larger is more headroom. Prints, per series, the change in
overloaded minutes and in replica-hours against reactive at each factor, so one can see whether any width
of this model's band reaches the target (at least 50% fewer overloaded minutes with at most 10% more
replica-hours). `--files` picks the series (default: the replay's default demand series; with `--half
second`, the second half of each, as the benchmark's own-history source replays them).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH.parent)]

from scaling_replay import demand  # noqa: E402
from scaling_replay.compare import Settings, compare  # noqa: E402
from scaling_replay.served_model import ServedModel, client, origin_forecasts  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", type=Path, required=True)
    ap.add_argument("--factors", default="0,0.5,1,1.5,2,3")
    ap.add_argument("--files", type=Path, nargs="*", help="timestamp,value CSVs (default: the replay's series)")
    ap.add_argument("--half", choices=("second",), help="replay only the second half of each file")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()
    factors = [float(f) for f in args.factors.split(",")]
    files = args.files or demand.default_files()
    settings = replace(Settings(), calibrate=False)
    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp, ServedModel(args.model_dir) as served:
        model = client(served.url)
        spec = model.spec()
        if args.half:
            files = _second_halves(files, spec.window, Path(tmp))
        print(f"| series | {' | '.join(f'f = {f:g}' for f in factors)} |")
        print("|---|" + "---:|" * len(factors))
        for s in demand.load(files):
            if len(s.values) <= spec.window:
                continue
            p90, median = origin_forecasts(model, spec, s.values, 0.9)
            cells = []
            for f in factors:
                forecast = np.where(np.isfinite(p90), median + f * (p90 - median), np.nan)
                r = compare(s.name, s.values, s.step_seconds, forecast, spec.window, settings, median)
                out.setdefault(s.name, {})[f"{f:g}"] = {"overload_change": -r.overload_reduction,
                                                         "replica_hours_change": r.replica_hours_ratio - 1,
                                                         "target_met": r.target_met}
                cells.append(f"{-100 * r.overload_reduction:+.0f}% · {100 * (r.replica_hours_ratio - 1):+.1f}%"
                             + (" ✓" if r.target_met else ""))
            print(f"| {s.name} | {' | '.join(cells)} |", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"model_dir": str(args.model_dir), "series": out}, indent=2) + "\n")
    return 0


def _second_halves(files: list[Path], window: int, into: Path) -> list[Path]:
    """benchmarks/scaling_replay.py's own split (loaded by path: `scaling_replay` is the package's name)."""
    spec = importlib.util.spec_from_file_location("scaling_replay_benchmark", BENCH / "scaling_replay.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.halves(files, window, into)[1]


if __name__ == "__main__":
    sys.exit(main())
