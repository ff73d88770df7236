"""`python -m training.evaluate`: rolling-origin backtests of the model against baselines.

Two questions, two tables:

- temporal (`--model DIR`, or a model trained here on the first 80%): for every series the last
  HOLDOUT (default 20%) is the test span, and the model was fitted on the part before it;
- leave-series-out (`--leave-series-out`): the series are grouped by source (`source_of`: the name
  without its instance id, so the eight `ec2_cpu_utilization_*` series are one group); each group in
  turn is left out, a model is trained on every other group's series, whole, and backtested on the
  left-out group's test span. This is what a team gets on metrics the model has never seen. With
  `--histories`, it is also scored from short histories (cold start: 2 h, 6 h, a day of points).

Origins are placed every EVERY points (default 12: hourly at a 5-minute step) from the start of the
test span; at each origin every method forecasts the next H points from the history before it:

- MASE of the median, scaled by the in-sample (pre-test) mean absolute error of the daily
  seasonal-naive forecast: below 1 beats "same time yesterday" as measured on the training part;
- sMAPE of the median (percent, 0..200);
- mean pinball loss over the quantiles, divided by the same scale (so series of any unit average);
- coverage: the fraction of actual points inside the outer band (p10-p90), 0.8 is ideal.

Overall figures are the mean over series (each series counts once, whatever its length).
Baselines on exactly the same origins (`training.baselines`): last value, seasonal naive, ETS and
the anchors (statsforecast AutoARIMA, AutoTheta, AutoETS; Prophet), the fitted ones on the trailing
two days (or the short history), cached on disk. Point baselines count as every quantile and have no band.

The model must not have seen the test span: the card records the holdout it was trained with
(`python -m training --holdout 0.2`); evaluating a model whose card shows it trained on the same
series' test span is refused unless --allow-seen-data (the report then says so).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from forecaster import artifact
from forecaster.model import ForecastSpec, QuantileForecaster, TrainingParams, quantile_name

from . import baselines, metrics, sources
from .train import apply_holdout, holdout_split

MODEL = "model"
POINT_METHODS = ("last_value", "seasonal_naive")
STATS_ANCHORS = ("auto_arima", "auto_theta", "auto_ets")  # "the best anchor" is the best of these
METHODS = (MODEL, *POINT_METHODS, "ets", *baselines.ANCHORS)
NAMES = {MODEL: "model", "last_value": "last value", "seasonal_naive": "seasonal naive", "ets": "ETS (statsmodels)",
         "auto_arima": "AutoARIMA", "auto_theta": "AutoTheta", "auto_ets": "AutoETS", "prophet": "Prophet"}
TARGETS = {"mase_vs_ets": 0.90, "mase_vs_last_value": 0.85, "coverage": (0.75, 0.85),
           "mase_vs_best_anchor": 0.90, "series_share": 2 / 3}
HISTORY_LABELS = {24: "2 h", 72: "6 h", 288: "1 day"}


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


def history_before(values: np.ndarray, origins: np.ndarray, points: int) -> np.ndarray:
    """The last `points` before each origin (fewer if the series starts later), [n, points]."""
    points = int(min(points, origins.min()))
    return np.stack([values[o - points : o] for o in origins])


def source_of(name: str) -> str:
    """A series' source: its name without a piece suffix (#k) and a trailing instance id (hex or ticker)."""
    base = re.sub(r"#\d+$", "", name)
    return re.sub(r"_(?:[0-9a-f]{6}|[A-Z]{2,5})$", "", base)


def score(actual: np.ndarray, forecast_q: np.ndarray, quantiles: tuple[float, ...], scale: float,
          point: bool) -> dict:
    mid = forecast_q[int(np.argmin(np.abs(np.asarray(quantiles) - 0.5)))]
    return {
        "mase": metrics.mase(actual, mid, scale),
        "smape": metrics.smape(actual, mid),
        "pinball": metrics.pinball(actual, forecast_q, quantiles) / scale,
        "coverage": None if point else metrics.coverage(actual, forecast_q[0], forecast_q[-1]),
        "mae_by_step": (np.abs(actual - mid).mean(axis=0) / scale).tolist(),
    }


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


def wins_of(per_series: list[dict]) -> dict:
    """Per method: on how many series the model's MASE is lower; and on how many it is at most 0.90 x the
    best statistical anchor's of that series."""
    wins = {m: sum(s["metrics"][MODEL]["mase"] < s["metrics"][m]["mase"] for s in per_series)
            for m in METHODS[1:] if all(m in s["metrics"] for s in per_series)}
    if all(a in s["metrics"] for a in STATS_ANCHORS for s in per_series):
        wins["within_0.90_of_best_anchor"] = sum(
            s["metrics"][MODEL]["mase"] <= TARGETS["mase_vs_best_anchor"] * min(s["metrics"][a]["mase"] for a in STATS_ANCHORS)
            for s in per_series)
    return {"n_series": len(per_series), **wins}


def check_targets(overall: dict, wins: dict | None = None) -> dict:
    m = overall[MODEL]
    checks = {}
    if "ets" in overall:
        checks["mase_vs_ets"] = {"ratio": m["mase"] / overall["ets"]["mase"], "max": TARGETS["mase_vs_ets"]}
    checks["mase_vs_last_value"] = {"ratio": m["mase"] / overall["last_value"]["mase"],
                                    "max": TARGETS["mase_vs_last_value"]}
    if all(a in overall for a in STATS_ANCHORS):
        best = min(STATS_ANCHORS, key=lambda a: overall[a]["mase"])
        checks["mase_vs_best_anchor"] = {"ratio": m["mase"] / overall[best]["mase"], "anchor": best,
                                         "max": TARGETS["mase_vs_best_anchor"]}
    for c in checks.values():
        c["ok"] = bool(c["ratio"] <= c["max"])
    if wins and "within_0.90_of_best_anchor" in wins:
        share = wins["within_0.90_of_best_anchor"] / wins["n_series"]
        checks["series_within_0.90_of_best_anchor"] = {"share": share, "min": TARGETS["series_share"],
                                                      "ok": bool(share >= TARGETS["series_share"] - 1e-9)}
    lo, hi = TARGETS["coverage"]
    checks["coverage"] = {"value": m["coverage"], "min": lo, "max": hi, "ok": bool(lo <= m["coverage"] <= hi)}
    others = {k: v["pinball"] for k, v in overall.items() if k != MODEL}
    checks["pinball_below_every_baseline"] = {"model": m["pinball"], "baselines": others,
                                              "ok": bool(all(m["pinball"] < v for v in others.values()))}
    checks["all_ok"] = all(c["ok"] for c in checks.values())
    return checks


def _fmt(x, digits=3):
    return "—" if x is None else f"{x:.{digits}f}"


def _overall_table(overall: dict, wins: dict | None = None) -> list[str]:
    head = "| method | MASE (p50) | sMAPE % | pinball (scaled) | p10–p90 coverage |"
    lines = [head + (" model wins (series) |" if wins else ""), "|---" * (5 + bool(wins)) + "|"]
    for method, m in overall.items():
        row = (f"| {NAMES[method]} | {_fmt(m['mase'])} | {_fmt(m['smape'], 1)} | {_fmt(m['pinball'], 4)} "
               f"| {_fmt(m['coverage'])} |")
        if wins:
            row += f" {wins[method]}/{wins['n_series']} |" if method in wins else " |"
        lines.append(row)
    return lines


def _targets_line(targets: dict) -> str:
    parts = []
    for k, v in targets.items():
        if not isinstance(v, dict):
            continue
        detail = next((f"{v[f]:.3f}" for f in ("ratio", "share", "value") if f in v), "")
        parts.append(f"{k} {detail} {'ok' if v['ok'] else 'MISSED'}".replace("  ", " "))
    return "Targets: " + "; ".join(parts)


def _series_table(per_series: list[dict]) -> list[str]:
    methods = [m for m in METHODS if all(m in s["metrics"] for s in per_series)]
    lines = ["| series | windows | " + " | ".join(NAMES[m] for m in methods) + " | model coverage |",
             "|---" * (len(methods) + 3) + "|"]
    for s in per_series:
        m = s["metrics"]
        lines.append(f"| {s['name']} | {s['windows']} | " + " | ".join(_fmt(m[k]["mase"]) for k in methods)
                     + f" | {_fmt(m[MODEL]['coverage'])} |")
    return lines


def write_markdown(report: dict, path: Path) -> None:
    lines = [f"# Backtest: {report['data']}", ""]
    lines += [f"Test span: last {report['holdout']:g} of each series; origins every {report['every']} points; "
              f"horizon {report['horizon']}; {report['n_series']} series, {report['n_windows']} windows. "
              "Overall = mean over series. Fitted baselines on the trailing "
              f"{baselines.FIT_POINTS} points at each origin.", ""]
    if report.get("leak"):
        lines += [f"**Warning: {report['leak']}. These numbers are optimistic.**", ""]
    if "overall" in report:
        lines += [f"## Temporal (model {report['model']['name']} {report['model']['version']})", ""]
        lines += _overall_table(report["overall"]) + ["", _targets_line(report["targets"]), ""]
    lso = report.get("leave_series_out")
    if lso:
        lines += ["## Leave-series-out", "", "Folds (left out together): " + "; ".join(
            f"{k} ({len(v)})" for k, v in lso["folds"].items()) + f". Training: {lso['training']}", ""]
        lines += _overall_table(lso["overall"], lso["wins"]) + ["", _targets_line(lso["targets"]), ""]
    cold = report.get("cold_start")
    if cold:
        methods = [m for m in METHODS if m not in POINT_METHODS and all(m in c for c in cold.values())]
        lines += ["## Cold start (leave-series-out models): MASE of p50 by history available", "",
                  "| history | " + " | ".join(NAMES[m] for m in methods) + " | model pinball | best anchor pinball | model coverage |",
                  "|---" * (len(methods) + 4) + "|"]
        for label, c in cold.items():
            best = min((a for a in STATS_ANCHORS if a in c), key=lambda a: c[a]["pinball"], default=None)
            lines.append(f"| {label} | " + " | ".join(_fmt(c[m]["mase"]) for m in methods)
                         + f" | {_fmt(c[MODEL]['pinball'], 4)} | {_fmt(c[best]['pinball'], 4) if best else '—'} "
                         f"| {_fmt(c[MODEL]['coverage'])} |")
        lines.append("")
    if "series" in report:
        lines += ["## Temporal, per series (MASE of p50)", ""] + _series_table(report["series"]) + [""]
    if lso:
        lines += ["## Leave-series-out, per series (MASE of p50)", ""] + _series_table(lso["series"]) + [""]
    if report.get("plots"):
        lines += ["## Plots", "", "![error by horizon step](error_by_step.png)", ""]
        lines += [f"- [{s['name']}]({s['plot']})" for s in report["series"] if s.get("plot")]
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


def series_data(series, window: int, horizon: int, holdout: float, every: int) -> tuple[list[dict], list[str]]:
    data, skipped = [], []
    for s in series:
        split, origins, windows, actuals = backtest_windows(s.values, window, horizon, holdout, every)
        if len(origins) == 0:
            skipped.append(s.name)
            continue
        data.append({"name": s.name, "values": s.values, "split": split, "origins": origins, "windows": windows,
                     "actuals": actuals, "scale": metrics.seasonal_naive_scale(s.values[:split]), "forecasts": {}})
    if not data:
        raise ValueError(f"no series has a test span with a full window ({window}) of history before it")
    return data, skipped


def add_baselines(data: list[dict], horizon: int, quantiles, fitted: tuple[str, ...], jobs: int, cache_dir,
                  timing: dict, history: int | None = None, key: str = "forecasts") -> None:
    """Naive and fitted baselines into d[key] for every series, from `history` points (default: the
    model's window for the naive ones, the trailing FIT_POINTS for the fitted ones)."""
    nq = len(quantiles)
    for d in data:
        windows = d["windows"] if history is None else d["windows"][:, -history:]
        d[key]["last_value"] = metrics.as_quantiles(baselines.last_value(windows, horizon), nq)
        d[key]["seasonal_naive"] = metrics.as_quantiles(baselines.seasonal_naive(windows, horizon), nq)
    points = history or baselines.FIT_POINTS
    for method in fitted:
        t = time.perf_counter()
        total = sum(len(d["origins"]) for d in data)
        bar = _progress(total, f"{NAMES[method]} on {points} points ({jobs} processes)")
        out = baselines.fitted_forecasts(method, [history_before(d["values"], d["origins"], points) for d in data],
                                         horizon, quantiles, jobs=jobs, cache_dir=cache_dir, progress=bar.update)
        bar.close()
        for d, f in zip(data, out):
            d[key][method] = f
        timing[f"{method}_{points}_seconds"] = round(time.perf_counter() - t, 2)


def scored(data: list[dict], quantiles, key: str = "forecasts") -> list[dict]:
    return [{"name": d["name"], "windows": int(len(d["origins"])), "test_points": int(len(d["values"]) - d["split"]),
             "scale": d["scale"], "plot": d.get("plot"),
             "metrics": {m: score(d["actuals"], f, quantiles, d["scale"], point=m in POINT_METHODS)
                         for m, f in d[key].items()}}
            for d in data]


def model_forecasts(forecaster: QuantileForecaster, windows: np.ndarray) -> np.ndarray:
    with threadpool_limits(limits=1):  # OpenMP threads on a busy machine only oversubscribe it
        return forecaster.predict(windows).astype(np.float64)


def leave_series_out(data: list[dict], series, spec: ForecastSpec, params: TrainingParams, histories, log,
                     timing: dict) -> dict[str, list[str]]:
    """Per source group: fit on every other group's series, forecast this group's windows (and from each
    short history). Returns the folds {source: [series names]}."""
    folds: dict[str, list[str]] = {}
    for s in series:
        folds.setdefault(source_of(s.name), []).append(s.name)
    by_name = {d["name"]: d for d in data}
    fit_seconds = []
    for k, (source, names) in enumerate(folds.items()):
        train = [s.values for s in series if source_of(s.name) != source and len(s.values) >= spec.window + spec.horizon]
        t = time.perf_counter()
        forecaster = QuantileForecaster.fit(train, spec, params)
        fit_seconds.append(time.perf_counter() - t)
        log(f"fold {k + 1}/{len(folds)}: left out {source} ({len(names)} series), trained on {len(train)} "
            f"in {fit_seconds[-1]:.1f}s, band scale {forecaster.spec.band_scale:.3f}")
        for name in names:
            d = by_name.get(name)
            if d is None:
                continue
            d["lso"][MODEL] = model_forecasts(forecaster, d["windows"])
            for h in histories:
                d[f"cold_{h}"][MODEL] = model_forecasts(forecaster, d["windows"][:, -h:])
    timing["lso_fit_seconds_per_fold"] = [round(x, 1) for x in fit_seconds]
    return folds


def evaluate(series, model_dir: Path | None, report_dir: Path, data_desc: str, holdout: float = 0.2, every: int = 12,
             jobs: int = 2, cache_dir: Path | None = None, with_ets: bool = True, anchors: tuple[str, ...] = (),
             plots: int = 3, allow_seen_data: bool = False, update_card: bool = True,
             lso: bool = False, histories: tuple[int, ...] = (), params: TrainingParams | None = None,
             spec: ForecastSpec | None = None, temporal: bool = True, log=print) -> dict:
    started = time.perf_counter()
    timing: dict = {}
    params = params or TrainingParams()
    report: dict = {"data": data_desc, "holdout": holdout, "every": every}
    card, leak, forecaster = None, None, None
    if model_dir is not None:
        forecaster, card = artifact.load(model_dir)
        spec = forecaster.spec
        leak = check_leak(card, [s.name for s in series], holdout)
        if leak and not allow_seen_data:
            raise ValueError(f"refusing to backtest: {leak} (or pass --allow-seen-data)")
        if leak:
            log(f"WARNING: {leak}")
    spec = spec or ForecastSpec(step_seconds=series[0].step_seconds if series else 300)
    steps = {s.step_seconds for s in series}
    if steps != {spec.step_seconds}:
        log(f"WARNING: data step(s) {sorted(steps)}s differ from the model's {spec.step_seconds}s")
    data, skipped = series_data(series, spec.window, spec.horizon, holdout, every)
    total = sum(len(d["origins"]) for d in data)
    fitted = (("ets",) if with_ets else ()) + tuple(anchors)
    report |= {"horizon": spec.horizon, "window": spec.window, "quantiles": list(spec.quantiles),
               "n_series": len(data), "n_windows": int(total), "skipped_series": skipped, "leak": leak,
               "fitted_baselines_points": baselines.FIT_POINTS}

    if temporal:
        if forecaster is None:
            t = time.perf_counter()
            train = [s.values for s in apply_holdout(series, holdout) if len(s.values) >= spec.window + spec.horizon]
            forecaster = QuantileForecaster.fit(train, spec, params)
            timing["temporal_fit_seconds"] = round(time.perf_counter() - t, 1)
            report["model"] = {"dir": None, "name": "trained here on the first "
                               f"{1 - holdout:g} of every series", "version": "-"}
        else:
            report["model"] = {"dir": str(model_dir), "name": card.get("name"), "version": card.get("version")}
        t = time.perf_counter()
        for d in data:
            d["forecasts"][MODEL] = model_forecasts(forecaster, d["windows"])
        timing["model_seconds"] = round(time.perf_counter() - t, 2)
    add_baselines(data, spec.horizon, spec.quantiles, fitted, jobs, cache_dir, timing)

    if temporal:
        for d in data:
            d["plot"] = f"series_{_safe(d['name'])}.png" if plots > 0 else None
        per_series = scored(data, spec.quantiles)
        report |= {"overall": overall_of(per_series), "series": per_series}
        report["targets"] = check_targets(report["overall"])

    if lso:
        for d in data:
            d["lso"] = {k: v for k, v in d["forecasts"].items() if k != MODEL}
            for h in histories:
                d[f"cold_{h}"] = {}
        folds = leave_series_out(data, series, spec, params, histories, log, timing)
        per_series = scored(data, spec.quantiles, "lso")
        overall, wins = overall_of(per_series), wins_of(per_series)
        report["leave_series_out"] = {
            "folds": folds, "training": {k: v for k, v in dataclasses.asdict(params).items() if v or k == "extra"},
            "overall": overall, "wins": wins, "targets": check_targets(overall, wins), "series": per_series}
        cold = {}
        for h in histories:
            add_baselines(data, spec.horizon, spec.quantiles, tuple(anchors), jobs, cache_dir, timing, h, f"cold_{h}")
            cold[HISTORY_LABELS.get(h, f"{h} points")] = overall_of(scored(data, spec.quantiles, f"cold_{h}"))
        if cold:
            cold["full"] = {m: v for m, v in overall.items() if m not in POINT_METHODS}
            report["cold_start"] = cold
            short = cold[HISTORY_LABELS.get(min(histories), f"{min(histories)} points")]
            best = [short[a]["mase"] for a in STATS_ANCHORS if a in short]
            if best:
                report["leave_series_out"]["targets"]["cold_start_shortest_vs_best_anchor"] = {
                    "ratio": short[MODEL]["mase"] / min(best), "max": 1.0, "ok": bool(short[MODEL]["mase"] <= min(best))}

    report_dir.mkdir(parents=True, exist_ok=True)
    if temporal and plots > 0:
        t = time.perf_counter()
        plot_all(report_dir, data, report["overall"], spec.quantiles, plots)
        report["plots"] = True
        timing["plot_seconds"] = round(time.perf_counter() - t, 2)
    timing["total_seconds"] = round(time.perf_counter() - started, 2)
    report["timing"] = timing
    (report_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    write_markdown(report, report_dir / "report.md")
    if update_card and card is not None and temporal:
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


def _param(text: str) -> tuple[str, object]:
    key, _, value = text.partition("=")
    fields = {f.name: f for f in dataclasses.fields(TrainingParams)}
    if key not in fields or key == "extra":
        raise argparse.ArgumentTypeError(f"unknown training parameter {key!r} (one of {', '.join(fields)})")
    try:
        return key, type(getattr(TrainingParams(), key))(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad value for {key}: {value!r}") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sources.add_arguments(p)
    p.add_argument("--model", help="model directory (trained with --holdout) for the temporal table; without "
                   "it a model is trained here on the first 1-HOLDOUT of every series")
    p.add_argument("--report", required=True, help="directory for report.json, report.md and the plots")
    p.add_argument("--holdout", type=float, default=0.2, help="test span: last fraction of each series (0.2)")
    p.add_argument("--every", type=int, default=12, help="points between origins (12: hourly at 5 min)")
    p.add_argument("--leave-series-out", action="store_true",
                   help="also train with each source group left out and backtest on it (the generalisation table)")
    p.add_argument("--no-temporal", action="store_true", help="only the leave-series-out table")
    p.add_argument("--histories", default="24,72,288",
                   help="short histories (points) the leave-series-out models are also scored from ('' : none)")
    p.add_argument("--param", type=_param, action="append", default=[], metavar="KEY=VALUE",
                   help="a training parameter for the models trained here, e.g. max_iter=150 (repeatable)")
    p.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="processes for the fitted baselines")
    p.add_argument("--cache-dir", default=str(baselines.default_cache_dir()),
                   help="cache of fitted baselines' forecasts ('' to disable)")
    p.add_argument("--no-ets", action="store_true", help="skip the statsmodels ETS baseline (fast smoke runs)")
    p.add_argument("--no-anchors", action="store_true", help="skip statsforecast's AutoARIMA, AutoTheta, AutoETS")
    p.add_argument("--no-prophet", action="store_true", help="skip Prophet")
    p.add_argument("--plots", type=int, default=3, help="band-vs-actual windows plotted per series (0: none)")
    p.add_argument("--allow-seen-data", action="store_true",
                   help="backtest even when the card shows the model trained on the test span (flagged)")
    p.add_argument("--no-card-update", action="store_true",
                   help="do not record the backtest summary in the model card")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.model and not args.leave_series_out:
        print("evaluate failed: give --model, --leave-series-out or both", file=sys.stderr)
        return 2
    anchors = (() if args.no_anchors else STATS_ANCHORS) + (() if args.no_prophet else ("prophet",))
    try:
        histories = tuple(int(h) for h in args.histories.split(",") if h.strip()) if args.leave_series_out else ()
        series, desc = sources.load(args)
        evaluate(series, Path(args.model) if args.model else None, Path(args.report), desc, holdout=args.holdout,
                 every=args.every, jobs=args.jobs, cache_dir=Path(args.cache_dir) if args.cache_dir else None,
                 with_ets=not args.no_ets, anchors=anchors, plots=args.plots, allow_seen_data=args.allow_seen_data,
                 update_card=not args.no_card_update, lso=args.leave_series_out, histories=histories,
                 params=TrainingParams(**dict(args.param)), temporal=not args.no_temporal,
                 log=lambda m: print(m, file=sys.stderr))
    except (OSError, ValueError, artifact.ModelLoadError) as exc:
        print(f"evaluate failed: {exc}", file=sys.stderr)
        return 2
    print((Path(args.report) / "report.md").read_text())
    return 0  # the report says whether the targets were met; a backtest that ran is a success


if __name__ == "__main__":
    sys.exit(main())
