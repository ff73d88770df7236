"""`python -m training --data PATH --out MODEL_DIR`: train a model directory the predictor can serve."""
from __future__ import annotations

import argparse
import sys

from forecaster.model import TrainingParams

from . import sources
from .train import train


def parse_quantiles(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(q) for q in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"quantiles must be comma-separated numbers, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training", description=__doc__)
    sources.add_arguments(p)
    p.add_argument("--holdout", type=float, default=0.0,
                   help="train on the first 1-HOLDOUT of every series and keep the rest for "
                        "`python -m training.evaluate` (e.g. 0.2; default 0: train on everything)")
    p.add_argument("--out", default="models/default", help="model directory to write")
    p.add_argument("--name", default="perf-predictor", help="model name recorded in the card")
    p.add_argument("--version", help="model version (default: UTC time of training)")
    p.add_argument("--window", type=int, default=336, help="points of history per forecast")
    p.add_argument("--horizon", type=int, default=12, help="points to forecast")
    p.add_argument("--quantiles", type=parse_quantiles, default=(0.1, 0.5, 0.9))
    p.add_argument("--max-iter", type=int, default=TrainingParams.max_iter, help="boosting rounds per quantile")
    p.add_argument("--stride", type=int, default=TrainingParams.stride, help="points between training origins")
    p.add_argument("--jobs", type=int, default=0, help="processes fitting quantiles in parallel (0: one per core)")
    p.add_argument("--calibration", type=float, default=TrainingParams.calibration,
                   help="share of each series' end held out to calibrate the band width, then refit on all (0: off)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        series, source = sources.load(args)
        train(series, args.out, source=source, name=args.name, version=args.version, window=args.window,
              horizon=args.horizon, quantiles=args.quantiles,
              params=TrainingParams(max_iter=args.max_iter, stride=args.stride, jobs=args.jobs,
                                            calibration=args.calibration), holdout=args.holdout)
    except (OSError, ValueError) as exc:
        print(f"training failed: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
