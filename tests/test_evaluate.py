"""Backtest metrics with answers worked out by hand, the baselines, and `python -m training.evaluate` end to end."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from training import baselines, evaluate, metrics
from training.sources import synthetic
from training.train import holdout_split

from .conftest import REPO


def test_mase_of_a_perfect_forecast_is_zero_and_scales_by_seasonal_naive_error():
    history = np.arange(600, dtype=float)  # y[t] - y[t-288] = 288 everywhere
    scale = metrics.seasonal_naive_scale(history)
    assert scale == 288
    actual = np.array([[1.0, 2.0, 3.0]])
    assert metrics.mase(actual, actual, scale) == 0
    assert metrics.mase(actual, np.array([[2.0, 2.0, 2.0]]), 2.0) == pytest.approx(1 / 3)


def test_scale_falls_back_for_short_and_constant_histories():
    assert metrics.seasonal_naive_scale(np.arange(100, dtype=float)) == 1  # < a day: one-step naive
    assert metrics.seasonal_naive_scale(np.full(1000, 7.0)) == 1.0  # constant: no division by zero


def test_smape_known_answer_and_zero_over_zero():
    # (2*10/210 + 0) / 2 points, in percent
    assert metrics.smape(np.array([100.0, 0.0]), np.array([110.0, 0.0])) == pytest.approx(100 * (20 / 210) / 2)
    assert metrics.smape(np.array([0.0]), np.array([5.0])) == pytest.approx(200)


def test_pinball_loss_formula():
    y = np.array([10.0])
    assert metrics.pinball(y, np.array([[8.0]]), [0.9]) == pytest.approx(0.9 * 2)  # under-forecast: q * (y - f)
    assert metrics.pinball(y, np.array([[12.0]]), [0.9]) == pytest.approx(0.1 * 2)  # over-forecast: (1 - q) * (f - y)
    # p10=8, p50=10, p90=12 around y=10: losses 0.2, 0, 0.2
    assert metrics.pinball(y, np.array([[8.0], [10.0], [12.0]]), [0.1, 0.5, 0.9]) == pytest.approx(0.4 / 3)
    # a point forecast counts as every quantile: mean of q-weighted losses = |error| / 2 for symmetric quantiles
    point = metrics.as_quantiles(np.array([7.0]), 3)
    assert metrics.pinball(y, point, [0.1, 0.5, 0.9]) == pytest.approx((0.1 * 3 + 0.5 * 3 + 0.9 * 3) / 3)


def test_coverage_counts_points_inside_the_band_inclusive():
    assert metrics.coverage(np.array([1.0, 5.0, 10.0]), np.zeros(3), np.full(3, 6.0)) == pytest.approx(2 / 3)
    assert metrics.coverage(np.array([0.0]), np.array([0.0]), np.array([0.0])) == 1.0


def test_point_baselines():
    windows = np.arange(2 * 336, dtype=float).reshape(2, 336)
    np.testing.assert_array_equal(baselines.last_value(windows, 3), [[335] * 3, [671] * 3])
    # origin = 336: the same time yesterday of steps 1..3 are indices 336-288+0..2
    np.testing.assert_array_equal(baselines.seasonal_naive(windows, 3), [[48, 49, 50], [384, 385, 386]])


def test_ets_baseline_follows_a_trend_and_gives_ordered_quantiles():
    y = np.linspace(10, 20, 576) + np.random.default_rng(0).normal(0, 0.1, 576)
    (f,) = baselines.ets_forecasts([y[None, :]], 6, (0.1, 0.5, 0.9), jobs=1)
    assert f.shape == (3, 1, 6)
    assert np.all(f[0] < f[1]) and np.all(f[1] < f[2])
    assert 19.5 < f[1, 0, 0] < 20.6


def test_backtest_windows_never_reach_into_the_future_or_before_the_test_span():
    values = np.arange(2000, dtype=float)
    split, origins, windows, actuals = evaluate.backtest_windows(values, 336, 12, 0.2, 12)
    assert split == holdout_split(2000, 0.2) == 1600
    assert origins[0] == 1600 and np.all(np.diff(origins) == 12) and origins[-1] + 12 <= 2000
    np.testing.assert_array_equal(windows[:, -1] + 1, actuals[:, 0])  # actuals start right after the window
    assert actuals.min() >= split


def test_leak_check():
    card = {"training": {"holdout": 0.0, "series": [{"name": "a"}]}}
    assert "saw" in evaluate.check_leak(card, ["a", "b"], 0.2)
    assert evaluate.check_leak(card, ["other"], 0.2) is None
    assert evaluate.check_leak({"training": {"holdout": 0.2, "series": [{"name": "a"}]}}, ["a"], 0.2) is None


@pytest.fixture(scope="module")
def small_csv_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("csv")
    for s in synthetic.generate(n_series=3, days=6, seed=11):
        stamps = s.start + np.arange(len(s.values)) * np.timedelta64(s.step_seconds, "s")
        rows = "\n".join(f"{str(t).replace('T', ' ')},{v:.4f}" for t, v in zip(stamps, s.values))
        (root / f"{s.name}.csv").write_text("timestamp,value\n" + rows + "\n")
    return root


def run(*args):
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=600)


def test_evaluate_writes_report_plots_and_card_summary(small_csv_set, tmp_path):
    model = tmp_path / "model"
    proc = run("-m", "training", "--data", str(small_csv_set), "--holdout", "0.2", "--max-iter", "20", "--jobs", "1", "--out", str(model))
    assert proc.returncode == 0, proc.stderr
    report = tmp_path / "report"
    proc = run("-m", "training.evaluate", "--data", str(small_csv_set), "--model", str(model), "--report", str(report),
               "--every", "48", "--plots", "2", "--cache-dir", "", "--no-anchors", "--no-prophet")
    assert proc.returncode == 0, proc.stderr
    data = json.loads((report / "report.json").read_text())
    assert data["n_series"] == 3 and data["leak"] is None
    assert set(data["overall"]) == {"model", "last_value", "seasonal_naive", "ets"}
    for m in data["overall"].values():
        assert {"mase", "smape", "pinball", "coverage", "mae_by_step"} <= set(m)
        assert len(m["mae_by_step"]) == 12 and m["mase"] > 0
    assert data["overall"]["last_value"]["coverage"] is None and 0 <= data["overall"]["model"]["coverage"] <= 1
    assert {"mase_vs_ets", "mase_vs_last_value", "coverage", "pinball_below_every_baseline"} <= set(data["targets"])
    md = (report / "report.md").read_text()
    assert "| model |" in md and "| ETS (statsmodels) |" in md and "MASE (p50)" in md
    assert (report / "error_by_step.png").stat().st_size > 1000
    plots = sorted(p.name for p in report.glob("series_*.png"))
    assert len(plots) == 3 and plots == sorted(s["plot"] for s in data["series"])
    card = json.loads((model / "model-card.json").read_text())
    assert card["training"]["holdout"] == 0.2
    assert card["backtest"]["overall"]["model"]["mase"] == pytest.approx(data["overall"]["model"]["mase"])


def test_evaluate_refuses_a_model_that_saw_the_test_span(small_csv_set, tmp_path):
    model = tmp_path / "model"
    assert run("-m", "training", "--data", str(small_csv_set), "--max-iter", "10", "--jobs", "1", "--out", str(model)).returncode == 0
    proc = run("-m", "training.evaluate", "--data", str(small_csv_set), "--model", str(model),
               "--report", str(tmp_path / "r"), "--no-ets", "--no-anchors", "--no-prophet", "--plots", "0")
    assert proc.returncode == 2 and "refusing to backtest" in proc.stderr and "--holdout 0.2" in proc.stderr
    proc = run("-m", "training.evaluate", "--data", str(small_csv_set), "--model", str(model),
               "--report", str(tmp_path / "r"), "--no-ets", "--no-anchors", "--no-prophet", "--plots", "0",
               "--allow-seen-data")
    assert proc.returncode == 0, proc.stderr
    data = json.loads((tmp_path / "r" / "report.json").read_text())
    assert "saw" in data["leak"] and "Warning" in (tmp_path / "r" / "report.md").read_text()
    assert json.loads((model / "model-card.json").read_text())["backtest"]["seen_test_data"] is True


def test_sources_group_series_by_where_they_come_from():
    assert evaluate.source_of("ec2_cpu_utilization_24ae8d") == evaluate.source_of("ec2_cpu_utilization_fe7f93")
    assert evaluate.source_of("ec2_network_in_5abac7#1") == "ec2_network_in"
    assert evaluate.source_of("Twitter_volume_AAPL") == evaluate.source_of("Twitter_volume_GOOG") == "Twitter_volume"
    assert evaluate.source_of("grok_asg_anomaly") == "grok_asg_anomaly"


def test_leave_series_out_trains_without_the_fold_and_scores_short_histories(small_csv_set, tmp_path):
    """Three synthetic series from three sources: three folds, each model trained on the other two;
    the cold-start rows forecast from 24 and 72 points."""
    report = tmp_path / "lso"
    proc = run("-m", "training.evaluate", "--data", str(small_csv_set), "--leave-series-out", "--no-temporal",
               "--report", str(report), "--every", "48", "--plots", "0", "--cache-dir", "", "--no-ets",
               "--no-anchors", "--no-prophet", "--histories", "24,72", "--param", "max_iter=10",
               "--param", "stride=24")
    assert proc.returncode == 0, proc.stderr
    data = json.loads((report / "report.json").read_text())
    lso = data["leave_series_out"]
    assert len(lso["folds"]) == 3 and all(len(v) == 1 for v in lso["folds"].values())
    assert proc.stderr.count("trained on 2 in") == 3
    assert lso["training"]["max_iter"] == 10 and "overall" not in data
    assert lso["wins"]["n_series"] == 3 and 0 <= lso["wins"]["last_value"] <= 3
    assert set(data["cold_start"]) == {"2 h", "6 h", "full"}
    for label in ("2 h", "6 h"):
        assert data["cold_start"][label]["model"]["mase"] > 0 and 0 <= data["cold_start"][label]["model"]["coverage"] <= 1
    md = (report / "report.md").read_text()
    assert "## Leave-series-out" in md and "## Cold start" in md and "| 2 h |" in md


def test_anchors_give_ordered_quantiles_from_statsforecast_and_prophet():
    pytest.importorskip("statsforecast")
    pytest.importorskip("prophet")
    y = 50 + 10 * np.sin(np.arange(576) * 2 * np.pi / 288) + np.random.default_rng(0).normal(0, 1, 576)
    for method in baselines.ANCHORS:
        (f,) = baselines.fitted_forecasts(method, [y[None, :]], 6, (0.1, 0.5, 0.9), jobs=1)
        assert f.shape == (3, 1, 6) and np.all(f[0] <= f[1]) and np.all(f[1] <= f[2]), method
        assert np.all(np.abs(f[1, 0] - 50) < 15), method  # near the cycle, not a fallback to nonsense
        assert np.any(f[0] < f[2]), method  # a band, not a point


def test_an_exploding_fitted_forecast_is_held_near_its_window():
    windows = np.array([[10.0, 12.0, 11.0], [0.0, 0.0, 0.0]])
    forecasts = np.array([[[1e33, 11.0]], [[5.0, -1e30]]]).transpose(0, 2, 1)  # [q=2, n=2, H=1]
    held = baselines.sane(forecasts, windows)
    assert held[0, 0, 0] == 12.0 + 10 * 2.0 and held[1, 0, 0] == 5.0  # inside: unchanged
    assert held[0, 1, 0] == pytest.approx(0, abs=1e-6) and held[1, 1, 0] == pytest.approx(0, abs=1e-6)
