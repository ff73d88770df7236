"""Autoscaling replay benchmark: every default demand series in full, reactive against predictive.

    .venv/bin/python benchmarks/scaling_replay.py [--out benchmarks/results/scaling_replay]

Four forecast sources through the same recommendation and HPA (`python -m scaling_replay`, one
configuration for every series, its defaults):
- `default`: the model `python -m training --out DIR` trains by default (the built-in synthetic
  workload, so none of the replayed series is in its training data); also without the live calibration
  (`default-uncalibrated`), to show what the calibration changes;
- `leave-series-out`: two models trained with `python -m training --data ...` on real NAB series: each
  on the NAB series that are not demand (CPU, disk write, ASG) plus half of the demand series, and each
  replaying only the other half, so no series is replayed by a model that saw it;
- `own-history`: what a team does with its own Prometheus history: one model trained on the first half
  of every replayed series, replaying only the second half of each (its reactive baseline is that half's);
- `perfect`: the actual future as the forecast: the bound any model has through this recommendation.
Writes OUT/results.json (read by benchmarks/report.py) and OUT/<source>/<series>.png. Models are trained
into .cache/bench/replay-models once and reused (delete the directory to retrain).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path[:0] = [str(REPO)]

from scaling_replay import __main__ as replay_cli  # noqa: E402
from scaling_replay import demand  # noqa: E402

MODELS = REPO / ".cache" / "bench" / "replay-models"
WINDOW = 336  # the default model's window: the history each replayed half starts with


def train(out: Path, files: list[Path]) -> Path:
    if (out / "model-card.json").exists():
        return out
    command = [sys.executable, "-m", "training", "--out", str(out)] + [a for f in files for a in ("--data", str(f))]
    print("training:", " ".join(command[1:4]), f"({len(files)} files)" if files else "(synthetic)", flush=True)
    subprocess.run(command, cwd=REPO, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return out


def folds() -> list[tuple[list[Path], list[Path]]]:
    """(replayed, trained on) per fold: demand files alternate between the two folds; every model also
    trains on the NAB series that are not demand."""
    replayed = demand.default_files()
    others = sorted(f for f in (demand.shared_dir() / "data" / "nab").glob("*.csv") if f not in replayed)
    halves = [replayed[0::2], replayed[1::2]]
    return [(halves[0], halves[1] + others), (halves[1], halves[0] + others)]


def halves(files: list[Path], window: int, out: Path) -> tuple[list[Path], list[Path]]:
    """Each file cut in two at its middle row: (first halves to train on, second halves to replay, each with
    the `window` rows before it as history), written under `out`."""
    train_files, replay_files = [], []
    for f in files:
        header, *rows = f.read_text().splitlines()
        half = len(rows) // 2
        for part, kept, into in (("train", rows[:half], train_files), ("replay", rows[max(0, half - window):], replay_files)):
            path = out / part / f.name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("\n".join([header, *kept]) + "\n")
            into.append(path)
    return train_files, replay_files


def replay(out: Path, files: list[Path], model_dir: Path | None, *extra: str) -> dict:
    argv = ["--out", str(out), *extra] + [a for f in files for a in ("--data", str(f))]
    argv += ["--model-dir", str(model_dir)] if model_dir else ["--perfect-forecast"]
    return replay_cli.run(replay_cli.build_parser().parse_args(argv))


SOURCES = {  # results key: heading
    "default": "the default model (trained on the built-in synthetic workload)",
    "default-uncalibrated": "the default model without the live calibration (`--no-calibrate`)",
    "leave-series-out": "leave-series-out models (trained on NAB, never on the series they replay)",
    "own-history": "a model trained on the first half of the replayed series themselves, replaying the second half",
    "perfect": "a perfect forecast (the actual future): the bound through this recommendation and HPA",
}


def render(document: dict, level: int = 2) -> str:
    """The results as markdown: one table per forecast source, a row per replayed series."""
    h = "#" * level
    any_source = next(iter(document["sources"].values()))
    st = any_source["settings"]
    load = document["load_average"]
    lines = [f"{h} Autoscaling replay", "",
             f"{document['measured_at']} · git {document['git']} · {document['machine']} · "
             f"`{document['command']}` in {document['seconds']:.0f} s · load average at start "
             f"{' / '.join(map(str, load['start']))}, at end {' / '.join(map(str, load['end']))}", "",
             f"One configuration for every series: pods ready {st['start_delay']:g} s after creation; reactive "
             f"trigger at {st['target_utilisation']:.0%} of a replica's capacity, its metric a "
             f"{st['rate_window']:g}-s rate scraped {st['scrape_lag']:g} s late; HPA sync "
             f"{st['hpa']['sync_period']:g} s, tolerance {st['hpa']['tolerance']:g}, scale-down stabilisation "
             f"{st['hpa']['downscale_stabilization']:g} s; forecast trigger: the recommendation at quantile "
             f"{st['quantile']:g} ({'calibrated live per series' if st.get('calibrate') else 'as the model gives it'}"
             f"), reported in whole replicas, per_replica = one replica's capacity, lead time = pod start, loop "
             f"interval {st['loop_interval']:g} s, scale-down window {st['scale_down_window']:g} s. "
             f"Capacity per replica: {st['capacity_rule']}. Target: at least 50% fewer overloaded minutes "
             "with at most 10% more replica-hours."]
    for key, heading in SOURCES.items():
        source = document["sources"].get(key)
        if source is None:
            continue
        order = {r["series"]: i for i, r in enumerate(document["sources"]["default"]["series"])} \
            if "default" in document["sources"] else {}
        rows = sorted(source["series"], key=lambda r: order.get(r["series"], len(order)))
        met = sum(r["target_met"] for r in rows)
        lines += ["", f"{h}# Forecasts from {heading}: target met on {met} of {len(rows)}", "",
                  "| series | days | overloaded min, reactive → predictive | unserved, reactive → predictive "
                  "| replica-hours, reactive → predictive | target |",
                  "|---|---:|---:|---:|---:|---|"]
        for r in rows:
            re_, pr = r["reactive"], r["predictive"]
            change = "n/a" if r["overload_reduction"] is None else f"{-100 * r['overload_reduction']:+.0f}%"
            lines.append(
                f"| {r['series']} | {r['replayed_minutes'] / 1440:.1f} | {re_['overloaded_minutes']:,.0f} → "
                f"{pr['overloaded_minutes']:,.0f} ({change}) | {100 * re_['unserved_share']:.2f}% → "
                f"{100 * pr['unserved_share']:.2f}% | {re_['replica_hours']:,.0f} → {pr['replica_hours']:,.0f} "
                f"({100 * (r['replica_hours_ratio'] - 1):+.1f}%) | {'met' if r['target_met'] else 'missed'} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=BENCH / "results" / "scaling_replay")
    args = ap.parse_args()
    started = time.monotonic()
    load_start = os.getloadavg()
    sources = {}
    default_model = train(MODELS / "default", [])
    sources["default"] = replay(args.out / "default", demand.default_files(), default_model)
    sources["default-uncalibrated"] = replay(args.out / "default-uncalibrated", demand.default_files(), default_model,
                                             "--no-calibrate")
    fold_docs = []
    for i, (replayed, trained_on) in enumerate(folds()):
        model = train(MODELS / f"fold-{i}", trained_on)
        doc = replay(args.out / "leave-series-out", replayed, model)
        doc["trained_on"] = [f.name for f in trained_on]
        fold_docs.append(doc)
    sources["leave-series-out"] = {**fold_docs[0], "series": [r for d in fold_docs for r in d["series"]],
                                   "folds": [{"trained_on": d["trained_on"], "model": d["model"],
                                              "replayed": [r["series"] for r in d["series"]]} for d in fold_docs]}
    train_files, replay_files = halves(demand.default_files(), WINDOW, MODELS.parent / "replay-own-history")
    sources["own-history"] = replay(args.out / "own-history", replay_files, train(MODELS / "own-history", train_files))
    sources["perfect"] = replay(args.out / "perfect", demand.default_files(), None)
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    document = {
        "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "git": git,
        "command": "benchmarks/scaling_replay.py", "machine": f"{os.cpu_count()} cores, python {platform.python_version()}",
        "load_average": {"start": [round(x, 1) for x in load_start], "end": [round(x, 1) for x in os.getloadavg()]},
        "seconds": round(time.monotonic() - started, 1), "sources": sources,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(document, indent=2) + "\n")
    print(f"wrote {args.out / 'results.json'} in {document['seconds']:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
