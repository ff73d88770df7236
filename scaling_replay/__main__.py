"""`python -m scaling_replay --model-dir DIR --out OUT`: replay real demand under reactive and predictive
autoscaling; writes OUT/results.json, OUT/<series>.png (demand, ready capacity of both policies) and
OUT/<series>.mermaid.md (the worst day as a Mermaid chart for Markdown pages)."""
from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import nullcontext
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

from forecast_loop.v2_client import ModelError, ModelSpec

from . import demand
from .compare import TARGET_OVERLOAD_REDUCTION, TARGET_REPLICA_HOURS_RATIO, Settings, compare, perfect_forecasts
from .hpa import HPASettings
from .served_model import ServedModel, client, origin_forecasts


# the default model's shape (python -m training: W 336, H 12, 5-minute step), for --perfect-forecast
PERFECT = ModelSpec(window=336, horizon=12, quantiles=(0.1, 0.5, 0.9), outputs=("p10", "p50", "p90"), step=300.0,
                    version="perfect-forecast")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m scaling_replay", description=__doc__)
    model = p.add_mutually_exclusive_group(required=True)
    model.add_argument("--perfect-forecast", action="store_true",
                       help="no model: the predictive policy sees the actual future (a bound, not a result)")
    model.add_argument("--model-dir", type=Path, help="model directory: the command serves it with "
                       "`python -m predictor` on free loopback ports for the run")
    model.add_argument("--model-url", help="base URL of a predictor that already serves the model")
    p.add_argument("--out", type=Path, required=True, help="output directory (results.json, one PNG per series)")
    p.add_argument("--data", type=Path, action="append",
                   help="a timestamp,value CSV to replay (repeat; default: the NAB demand series of "
                        "$PERF_PREDICTOR_SHARED, see scaling_replay/demand.py)")
    p.add_argument("--points", type=positive_int, help="replay only the last POINTS points of each series "
                   "(the model's window of them is history, not replayed)")
    p.add_argument("--no-plots", action="store_true", help="write results.json only")
    d = Settings()
    p.add_argument("--start-delay", type=float, default=d.start_delay, help="seconds from pod creation to ready")
    p.add_argument("--target-utilisation", type=float, default=d.target_utilisation,
                   help="reactive trigger's target: this share of one replica's capacity")
    p.add_argument("--quantile", type=float, default=d.quantile, help="forecast quantile the recommendation uses")
    p.add_argument("--loop-interval", type=float, default=d.loop_interval, help="forecast loop interval, seconds")
    p.add_argument("--lead-time", type=float, help="the recommendation's lead time, seconds (default: the "
                   "start delay)")
    p.add_argument("--scale-down-window", type=float, default=d.scale_down_window,
                   help="the recommendation's scale-down window, seconds")
    p.add_argument("--no-calibrate", dest="calibrate", action="store_false",
                   help="the model's own quantile, without the recommendation's live calibration")
    return p


def run(args: argparse.Namespace, log=print) -> dict:
    settings = Settings(start_delay=args.start_delay, target_utilisation=args.target_utilisation,
                        quantile=args.quantile, loop_interval=args.loop_interval,
                        scale_down_window=args.scale_down_window, lead_time=args.lead_time,
                        calibrate=args.calibrate, hpa=HPASettings())
    series = demand.load(args.data or demand.default_files())
    args.out.mkdir(parents=True, exist_ok=True)
    serving = ServedModel(args.model_dir) if args.model_dir else nullcontext()
    results = []
    started = time.monotonic()
    with serving as served:
        if args.perfect_forecast:
            model, spec = None, PERFECT
        else:
            model = client(served.url if args.model_dir else args.model_url)
            spec = model.spec()
        if spec.step is not None and any(s.step_seconds != spec.step for s in series):
            raise ValueError(f"the model's step is {spec.step:g}s; every replayed series must have it")
        for s in series:
            values = s.values[-args.points:] if args.points else s.values
            if len(values) <= spec.window:
                log(f"{s.name}: {len(values)} points, not more than the model's window {spec.window}: skipped")
                continue
            t0 = time.monotonic()
            if model is None:
                forecasts = median = perfect_forecasts(values, spec.window, spec.horizon)
            else:
                forecasts, median = origin_forecasts(model, spec, values, settings.quantile)
            t1 = time.monotonic()
            result = compare(s.name, values, s.step_seconds, forecasts, spec.window, settings, median)
            t2 = time.monotonic()
            row = {**result.as_dict(), "forecast_seconds": round(t1 - t0, 2), "replay_seconds": round(t2 - t1, 2)}
            if not args.no_plots:
                from .plot import write_png
                from .mermaid import chart
                row["plot"] = write_png(result, args.out / f"{s.name}.png").name
                (args.out / f"{s.name}.mermaid.md").write_text(chart(result) + "\n")
            results.append(row)
            log(summary_line(row))
    document = {
        "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": {"dir": str(args.model_dir) if args.model_dir else None, "url": args.model_url,
                  "perfect_forecast": args.perfect_forecast,
                  "version": spec.version, "window": spec.window, "horizon": spec.horizon,
                  "quantiles": list(spec.quantiles), "step_seconds": spec.step},
        "settings": {**settings.as_dict(), "capacity_rule": f"99th percentile of the replayed demand / "
                     f"{demand.REPLICAS_AT_P99} replicas", "points": args.points},
        "target": {"overload_reduction_at_least": TARGET_OVERLOAD_REDUCTION,
                   "replica_hours_ratio_at_most": TARGET_REPLICA_HOURS_RATIO},
        "series": results,
        "seconds": round(time.monotonic() - started, 1),
    }
    (args.out / "results.json").write_text(json.dumps(document, indent=2) + "\n")
    return document


def summary_line(row: dict) -> str:
    r, p = row["reactive"], row["predictive"]
    reduction = row["overload_reduction"]
    return (f"{row['series']}: overloaded min {r['overloaded_minutes']:.0f} -> {p['overloaded_minutes']:.0f} "
            f"({'n/a' if reduction is None else f'{-100 * reduction:+.0f}%'}), unserved "
            f"{100 * r['unserved_share']:.2f}% -> {100 * p['unserved_share']:.2f}%, replica-hours "
            f"{r['replica_hours']:.0f} -> {p['replica_hours']:.0f} ({100 * (row['replica_hours_ratio'] - 1):+.1f}%)"
            f" target {'met' if row['target_met'] else 'MISSED'}")


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        document = run(args)
    except (OSError, ValueError, RuntimeError, ModelError) as exc:
        print(f"scaling replay failed: {exc}", file=sys.stderr)
        return 2
    met = sum(row["target_met"] for row in document["series"])
    print(f"target met on {met} of {len(document['series'])} series; wrote {args.out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
