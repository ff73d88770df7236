"""`python -m training.evaluate --data PATH --model MODEL_DIR --report DIR`: a rolling-origin backtest.

For every series, the last HOLDOUT (default 20%) of its points is the test span. Origins are placed
every EVERY points (default 12: hourly at a 5-minute step) from the start of the test span; at each
origin the model and the baselines forecast the next H points from the history before the origin,
and the forecasts are scored against what happened:

- MASE of the median, scaled by the in-sample (pre-test) mean absolute error of the daily
  seasonal-naive forecast: below 1 beats "same time yesterday" as measured on the training part;
- sMAPE of the median (percent, 0..200);
- mean pinball loss over the quantiles, divided by the same scale (so series of any unit average);
- coverage: the fraction of actual points inside the outer band (p10-p90), 0.8 is ideal.

Overall figures are the mean over series (each series counts once, whatever its length).
Baselines on exactly the same windows: last value, seasonal naive (same time yesterday) and ETS
(`training.baselines`). Point baselines count as every quantile and have no band.

The model must not have seen the test span: the card records the holdout it was trained with
(`python -m training --holdout 0.2`); evaluating a model whose card shows it trained on the same
series' test span is refused unless --allow-seen-data (the report then says so).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from forecaster import artifact
from forecaster.model import quantile_name

from . import baselines, metrics, sources
from .train import holdout_split

MODEL = "model"
METHODS = (MODEL, "last_value", "seasonal_naive", "ets")
POINT_METHODS = {"last_value", "seasonal_naive"}
TARGETS = {"mase_vs_ets": 0.90, "mase_vs_last_value": 0.85, "coverage": (0.75, 0.85)}


def _progress(total: int, desc: str):
    try:
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, unit="win", file=sys.stderr, dynamic_ncols=True)
    except ImportError:  # pragma: no cover - tqdm is in the train extra
        class _Plain:
            def update(self, n):
                pass

            def close(self):
                print(f"{desc}: done", file=sys.stderr)

        return _Plain()


def backtest_windows(values: np.ndarray, window: int, horizon: int, holdout: float, every: int):
    """(split, origins, windows [n, window], actuals [n, horizon]) for one series."""
    n = len(values)
    split = holdout_split(n, holdout)
    origins = np.arange(max(split, window), n - horizon + 1, every)
    if len(origins) == 0:
        return split, origins, np.empty((0, window)), np.empty((0, horizon))
    windows = np.stack([values[o - window : o] for o in origins])
    actuals = np.stack([values[o : o + horizon] for o in origins])
    return split, origins, windows, actuals


def score(actual: np.ndarray, forecast_q: np.ndarray, quantiles: tuple[float, ...], scale: float,
          point: bool) -> dict:
    mid = forecast_q[int(np.argmin(np.abs(np.asarray(quantiles) - 0.5)))]
    out = {
        "mase": metrics.mase(actual, mid, scale),
        "smape": metrics.smape(actual, mid),
        "pinball": metrics.pinball(actual, forecast_q, quantiles) / scale,
        "coverage": None if point else metrics.coverage(actual, forecast_q[0], forecast_q[-1]),
        "mae_by_step": (np.abs(actual - mid).mean(axis=0) / scale).tolist(),
    }
    return out


def check_leak(card: dict, series_names: list[str], holdout: float) -> str | None:
    """A reason the model may have seen the test span, or None."""
    training = card.get("training", {})
    trained = {s.get("name") for s in training.get("series", [])}
    overlap = trained & set(series_names)
    if not overlap:
        return None
    seen_holdout = float(training.get("holdout", 0.0) or 0.0)
    if seen_holdout + 1e-9 < holdout:
        return (f"the model was trained on {len(overlap)} of these series with holdout {seen_holdout:g}, "
                f"so it saw (part of) the last {holdout:g} used as the test span; train with --holdout {holdout:g}")
    return None


def overall_of(per_series: list[dict]) -> dict:
    out = {}
    for method in METHODS:
        rows = [s["metrics"][method] for s in per_series if method in s["metrics"]]
        if not rows:
            continue
        agg = {k: float(np.mean([r[k] for r in rows])) for k in ("mase", "smape", "pinball")}
        covs = [r["coverage"] for r in rows if r["coverage"] is not None]
        agg["coverage"] = float(np.mean(covs)) if covs else None
        agg["mae_by_step"] = np.mean([r["mae_by_step"] for r in rows], axis=0).tolist()
        out[method] = agg
    return out


def check_targets(overall: dict) -> dict:
    m = overall[MODEL]
    checks = {}
    if "ets" in overall:
        checks["mase_vs_ets"] = {"ratio": m["mase"] / overall["ets"]["mase"], "max": TARGETS["mase_vs_ets"]}
    checks["mase_vs_last_value"] = {"ratio": m["mase"] / overall["last_value"]["mase"],
                                    "max": TARGETS["mase_vs_last_value"]}
    for c in checks.values():
        c["ok"] = bool(c["ratio"] <= c["max"])
    lo, hi = TARGETS["coverage"]
    checks["coverage"] = {"value": m["coverage"], "min": lo, "max": hi, "ok": bool(lo <= m["coverage"] <= hi)}
    worst = {k: v["pinball"] for k, v in overall.items() if k != MODEL}
    checks["pinball_below_every_baseline"] = {"model": m["pinball"], "baselines": worst,
                                              "ok": bool(all(m["pinball"] < v for v in worst.values()))}
    checks["all_ok"] = all(c["ok"] for c in checks.values())
    return checks


def _fmt(x, digits=3):
    return "—" if x is None else f"{x:.{digits}f}"


def write_markdown(report: dict, path: Path) -> None:
    names = {MODEL: "model", "last_value": "last value", "seasonal_naive": "seasonal naive", "ets": "ETS"}
    lines = [f"# Backtest of {report['model']['name']} {report['model']['version']}", ""]
    lines += [f"Data: `{report['data']}`; test span: last {report['holdout']:g} of each series; origins every "
              f"{report['every']} points; horizon {report['horizon']}; {report['n_series']} series, "
              f"{report['n_windows']} windows. Overall = mean over series.", ""]
    if report.get("leak"):
        lines += [f"**Warning: {report['leak']}. These numbers are optimistic.**", ""]
    lines += ["| method | MASE (p50) | sMAPE % | pinball (scaled) | p10–p90 coverage |", "|---|---|---|---|---|"]
    for method, m in report["overall"].items():
        lines.append(f"| {names[method]} | {_fmt(m['mase'])} | {_fmt(m['smape'], 1)} | {_fmt(m['pinball'], 4)} "
                     f"| {_fmt(m['coverage'])} |")
    t = report["targets"]
    lines += ["", "Targets: " + "; ".join(
        f"{k} {'ok' if v['ok'] else 'MISSED'}" for k, v in t.items() if isinstance(v, dict)), ""]
    lines += ["## Per series (MASE of p50; model coverage)", "",
              "| series | windows | model | last value | seasonal naive | ETS | coverage |",
              "|---|---|---|---|---|---|---|"]
    for s in report["series"]:
        m = s["metrics"]
        lines.append(f"| {s['name']} | {s['windows']} | " + " | ".join(
            _fmt(m[k]["mase"]) if k in m else "—" for k in METHODS) + f" | {_fmt(m[MODEL]['coverage'])} |")
    lines += ["", "## Plots", "", "![error by horizon step](error_by_step.png)", ""]
    for s in report["series"]:
        if s.get("plot"):
            lines.append(f"- [{s['name']}]({s['plot']})")
    lines += ["", f"Timing: {json.dumps(report['timing'])}", ""]
    path.write_text("\n".join(lines))


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:120]


def plot_all(report_dir: Path, series_data: list[dict], overall: dict, quantiles, per_series_plots: int) -> None:
    os.environ.setdefault("MPLCONFIGDIR", tempfile.mkdtemp(prefix="mpl-"))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for method, m in overall.items():
        steps = np.arange(1, len(m["mae_by_step"]) + 1)
        ax.plot(steps, m["mae_by_step"], marker="o", label=method)
    ax.set_xlabel("forecast step")
    ax.set_ylabel("MAE of p50 / seasonal-naive scale")
    ax.set_title("Error by horizon step (mean over series)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(report_dir / "error_by_step.png", dpi=90)
    plt.close(fig)

    context = 72
    for d in series_data:
        n = len(d["origins"])
        picks = np.unique(np.linspace(0, n - 1, min(per_series_plots, n)).round().astype(int))
        fig, axes = plt.subplots(1, len(picks), figsize=(4.5 * len(picks), 3.2), squeeze=False)
        for ax, k in zip(axes[0], picks):
            o = d["origins"][k]
            v = d["values"]
            hist_x = np.arange(o - context, o)
            fut_x = np.arange(o, o + d["actuals"].shape[1])
            ax.plot(hist_x, v[o - context : o], color="black", lw=1, label="history")
            ax.plot(fut_x, d["actuals"][k], color="black", lw=1, ls="--", label="actual")
            fq = d["forecasts"][MODEL][:, k]
            ax.fill_between(fut_x, fq[0], fq[-1], color="tab:blue", alpha=0.25,
                            label=f"{quantile_name(quantiles[0])}–{quantile_name(quantiles[-1])}")
            ax.plot(fut_x, fq[len(quantiles) // 2], color="tab:blue", lw=1.5, label="model p50")
            if "ets" in d["forecasts"]:
                ax.plot(fut_x, d["forecasts"]["ets"][len(quantiles) // 2, k], color="tab:orange", lw=1, label="ETS")
            ax.set_title(f"origin {o}", fontsize=9)
            ax.tick_params(labelsize=7)
        axes[0][0].legend(fontsize=7)
        fig.suptitle(d["name"], fontsize=9)
        fig.tight_layout()
        fig.savefig(report_dir / d["plot"], dpi=80)
        plt.close(fig)


def evaluate(series, model_dir: Path, report_dir: Path, data_desc: str, holdout: float = 0.2, every: int = 12,
             jobs: int = 2, cache_dir: Path | None = None, with_ets: bool = True, plots: int = 3,
             allow_seen_data: bool = False, update_card: bool = True, log=print) -> dict:
    started = time.perf_counter()
    forecaster, card = artifact.load(model_dir)
    spec = forecaster.spec
    leak = check_leak(card, [s.name for s in series], holdout)
    if leak and not allow_seen_data:
        raise ValueError(f"refusing to backtest: {leak} (or pass --allow-seen-data)")
    if leak:
        log(f"WARNING: {leak}")
    steps = {s.step_seconds for s in series}
    if steps != {spec.step_seconds}:
        log(f"WARNING: data step(s) {sorted(steps)}s differ from the model's {spec.step_seconds}s")

    data, skipped = [], []
    for s in series:
        split, origins, windows, actuals = backtest_windows(s.values, spec.window, spec.horizon, holdout, every)
        if len(origins) == 0:
            skipped.append(s.name)
            continue
        data.append({"name": s.name, "values": s.values, "split": split, "origins": origins, "windows": windows,
                     "actuals": actuals, "scale": metrics.seasonal_naive_scale(s.values[:split]), "forecasts": {}})
    if not data:
        raise ValueError(f"no series has a test span with a full window ({spec.window}) of history before it")
    total = sum(len(d["origins"]) for d in data)
    timing = {}

    t = time.perf_counter()
    bar = _progress(total, "model")
    for d in data:
        with threadpool_limits(limits=1):  # OpenMP threads on a busy machine only oversubscribe it
            d["forecasts"][MODEL] = forecaster.predict(d["windows"]).astype(np.float64)
        d["forecasts"]["last_value"] = metrics.as_quantiles(baselines.last_value(d["windows"], spec.horizon),
                                                            len(spec.quantiles))
        d["forecasts"]["seasonal_naive"] = metrics.as_quantiles(
            baselines.seasonal_naive(d["windows"], spec.horizon), len(spec.quantiles))
        bar.update(len(d["origins"]))
    bar.close()
    timing["model_and_naive_seconds"] = round(time.perf_counter() - t, 2)

    if with_ets:
        t = time.perf_counter()
        bar = _progress(total, f"ETS ({jobs} processes)")
        ets = baselines.ets_forecasts([d["windows"] for d in data], spec.horizon, spec.quantiles, jobs=jobs,
                                      cache_dir=cache_dir, progress=bar.update)
        bar.close()
        for d, f in zip(data, ets):
            d["forecasts"]["ets"] = f
        timing["ets_seconds"] = round(time.perf_counter() - t, 2)

    per_series = []
    for d in data:
        d["plot"] = f"series_{_safe(d['name'])}.png" if plots > 0 else None
        per_series.append({
            "name": d["name"], "windows": int(len(d["origins"])), "test_points": int(len(d["values"]) - d["split"]),
            "scale": d["scale"], "plot": d["plot"],
            "metrics": {m: score(d["actuals"], f, spec.quantiles, d["scale"], point=m in POINT_METHODS)
                        for m, f in d["forecasts"].items()},
        })
    overall = overall_of(per_series)
    report_dir.mkdir(parents=True, exist_ok=True)
    if plots > 0:
        t = time.perf_counter()
        plot_all(report_dir, data, overall, spec.quantiles, plots)
        timing["plot_seconds"] = round(time.perf_counter() - t, 2)
    timing["total_seconds"] = round(time.perf_counter() - started, 2)

    report = {
        "model": {"dir": str(model_dir), "name": card.get("name"), "version": card.get("version")},
        "data": data_desc, "holdout": holdout, "every": every, "horizon": spec.horizon, "window": spec.window,
        "quantiles": list(spec.quantiles), "n_series": len(per_series), "n_windows": int(total),
        "skipped_series": skipped, "leak": leak,
        "overall": overall, "targets": check_targets(overall), "series": per_series, "timing": timing,
    }
    (report_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    write_markdown(report, report_dir / "report.md")
    if update_card:
        card["backtest"] = summary_for_card(report)
        artifact.write_card(model_dir, card)
    return report


def summary_for_card(report: dict) -> dict:
    return {
        "data": report["data"], "holdout": report["holdout"], "every": report["every"],
        "n_series": report["n_series"], "n_windows": report["n_windows"], "seen_test_data": bool(report["leak"]),
        "overall": {m: {k: v for k, v in r.items() if k != "mae_by_step"} for m, r in report["overall"].items()},
        "targets_met": report["targets"]["all_ok"],
    }


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sources.add_arguments(p)
    p.add_argument("--model", required=True, help="model directory (trained with --holdout)")
    p.add_argument("--report", required=True, help="directory for report.json, report.md and the plots")
    p.add_argument("--holdout", type=float, default=0.2, help="test span: last fraction of each series (0.2)")
    p.add_argument("--every", type=int, default=12, help="points between origins (12: hourly at 5 min)")
    p.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="processes for the ETS fits")
    p.add_argument("--cache-dir", default=str(baselines.default_cache_dir()),
                   help="cache of ETS forecasts ('' to disable)")
    p.add_argument("--no-ets", action="store_true", help="skip the ETS baseline (fast smoke runs)")
    p.add_argument("--plots", type=int, default=3, help="band-vs-actual windows plotted per series (0: none)")
    p.add_argument("--allow-seen-data", action="store_true",
                   help="backtest even when the card shows the model trained on the test span (flagged)")
    p.add_argument("--no-card-update", action="store_true",
                   help="do not record the backtest summary in the model card")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        series, desc = sources.load(args)
        evaluate(series, Path(args.model), Path(args.report), desc, holdout=args.holdout,
                 every=args.every, jobs=args.jobs, cache_dir=Path(args.cache_dir) if args.cache_dir else None,
                 with_ets=not args.no_ets, plots=args.plots, allow_seen_data=args.allow_seen_data,
                 update_card=not args.no_card_update, log=lambda m: print(m, file=sys.stderr))
    except (OSError, ValueError, artifact.ModelLoadError) as exc:
        print(f"evaluate failed: {exc}", file=sys.stderr)
        return 2
    print((Path(args.report) / "report.md").read_text())
    return 0  # the report says whether the targets were met; a backtest that ran is a success


if __name__ == "__main__":
    sys.exit(main())
