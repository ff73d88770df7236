"""The replay simulation: the HPA algorithm on hand-computable cases, the service model's accounting, the
floor (predictive never below what the reactive metric asks for), and a short slice of real NAB demand
replayed with forecasts from the real predictor through the forecast loop's v2 client and Recommender."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from forecast_loop.capacity import Capacity, Recommender
from scaling_replay.hpa import HPA, HPASettings, per_pod_proposal
from scaling_replay.replay import Predictive, ServiceModel, lagged_rate, outcome, replay

from .conftest import REPO, shared_dir

STEP = 300.0


# -- the HPA algorithm: kubernetes pkg/controller/podautoscaler/replica_calculator.go and horizontal.go ----
def test_per_pod_proposal_keeps_the_current_count_within_the_tolerance():
    # GetExternalPerPodMetricReplicas: ratio = 105 / (10 * 10) = 1.05, within 0.1: stay at 10
    assert per_pod_proposal(105.0, 10.0, 10, 0.1) == 10
    # 95 / 100 = 0.95: stay; 89 / 100 = 0.89: ceil(8.9) = 9; 111 / 100: ceil(11.1) = 12
    assert per_pod_proposal(95.0, 10.0, 10, 0.1) == 10
    assert per_pod_proposal(89.0, 10.0, 10, 0.1) == 9
    assert per_pod_proposal(111.0, 10.0, 10, 0.1) == 12


def test_hpa_takes_the_larger_metric_and_limits_scale_up_to_double_or_four():
    hpa = HPA(HPASettings(), now=0.0, current=2)
    # reactive asks ceil(30 / 10) = 3, forecast ceil(200 / 10) = 20: the larger, limited to max(2*2, 4) = 4
    assert hpa.sync(15.0, 2, [(30.0, 10.0), (200.0, 10.0)]) == 4
    assert hpa.sync(30.0, 4, [(30.0, 10.0), (200.0, 10.0)]) == 8  # then doubling: 2 * 4
    assert hpa.sync(45.0, 8, [(30.0, 10.0), (200.0, 10.0)]) == 16
    assert hpa.sync(60.0, 16, [(30.0, 10.0), (200.0, 10.0)]) == 20


def test_hpa_scale_down_waits_for_five_minutes_of_lower_recommendations():
    hpa = HPA(HPASettings(), now=0.0, current=10)
    # the load drops to 20 (2 replicas) at t=15: the 10 recorded at t=0 holds until it is older than 300 s
    replicas = {t: hpa.sync(float(t), 10, [(20.0, 10.0)]) for t in range(15, 316, 15)}
    assert all(r == 10 for t, r in replicas.items() if t <= 300)
    assert replicas[315] == 2


def test_hpa_clamps_to_min_and_max_replicas():
    hpa = HPA(HPASettings(min_replicas=2, max_replicas=5), now=0.0, current=3)
    assert hpa.sync(15.0, 3, [(1000.0, 10.0)]) == 5
    assert hpa.sync(30.0, 1, [(0.0, 10.0)]) == 2  # below min: set to min before any metric
    assert hpa.sync(45.0, 7, [(0.0, 10.0)]) == 5  # above max: set to max


# -- the service model on a synthetic step of demand ---------------------------------------------------------
def test_reactive_replay_of_a_step_of_demand_by_hand():
    """Demand 40 for 2 hours, then 160. capacity 10, target 0.8 * 10 = 8 per pod, scrape lag 30 s, rate window
    120 s, pods ready 60 s after creation. Before the step: ceil(40 / 8) = 5 pods. The step is at t=7200; the
    metric at sync t is the mean over [t-150, t-30]: at 7230 it is still 40; at 7245, 15 s of 160 in 120 s:
    40 + 120*15/120 = 55, ratio 55/40 = 1.375, ceil(55/8) = 7; at 7260: 70 -> 9; 7275: 85 -> 11; 7290:
    100 -> 13; 7305: 115 -> 15; 7320: 130, but 130 / (8 * 15) = 1.08 is within the tolerance 0.1: 15 stays;
    7335: 145 -> 19; 7350: 160 / (8 * 19) = 1.05: 19 stays (every step within the 2x limit)."""
    values = np.array([40.0] * 24 + [160.0] * 24)
    service = ServiceModel(capacity=10.0, start_delay=60.0, target_utilisation=0.8, scrape_lag=30.0,
                           rate_window=120.0)
    trajectory = replay(values, STEP, service, HPASettings(), start=3600.0, end=8400.0)
    at = {float(t): i for i, t in enumerate(trajectory.time)}
    assert trajectory.pods[at[7185.0]] == 5 and trajectory.ready[at[7185.0]] == 5
    assert trajectory.pods[at[7230.0]] == 5
    expected = {7245.0: 7, 7260.0: 9, 7275.0: 11, 7290.0: 13, 7305.0: 15, 7320.0: 15, 7335.0: 19, 7350.0: 19,
                8385.0: 19}
    assert {t: int(trajectory.pods[at[t]]) for t in expected} == expected
    # pods created at t are ready from the slice starting at t + 60
    assert trajectory.ready[at[7290.0]] == 5 and trajectory.ready[at[7305.0]] == 7
    assert trajectory.ready[at[7380.0]] == 15 and trajectory.ready[at[7395.0]] == 19
    # overloaded: 160 above 10 per ready pod from 7200 through 7380 (15 ready), not from 7395 (19 ready):
    # 13 slices of 15 s
    result = outcome(trajectory, service, 15.0)
    assert result.overloaded_minutes == pytest.approx(13 * 15 / 60)


def test_accounting_sums_up():
    rng = np.random.default_rng(3)
    values = rng.gamma(2.0, 20.0, 200)
    service = ServiceModel(capacity=8.0, start_delay=120.0)
    trajectory = replay(values, STEP, service, HPASettings(), start=3600.0, end=len(values) * STEP)
    result = outcome(trajectory, service, 15.0)
    slices = len(trajectory.time)
    assert result.minutes == pytest.approx(slices * 0.25)
    assert result.replica_hours == pytest.approx(trajectory.pods.sum() * 15 / 3600)
    shortfall = sum(max(d - r * 8.0, 0.0) for d, r in zip(trajectory.demand, trajectory.ready))
    assert result.unserved_share == pytest.approx(shortfall / trajectory.demand.sum())
    assert 0 < result.overloaded_minutes < result.minutes
    assert (trajectory.ready <= trajectory.pods).all()
    # the demand of each slice is its bucket's value
    assert np.array_equal(trajectory.demand, values[(trajectory.time // STEP).astype(int)])


def test_lagged_rate_is_the_mean_over_the_window_before_the_lag():
    values = np.array([10.0, 20.0, 30.0])
    got = lagged_rate(values, STEP, np.array([330.0, 450.0, 630.0]), lag=30.0, window=120.0)
    # [180, 300] all 10; [300, 420] all 20; [480, 600] all 20
    assert got == pytest.approx([10.0, 20.0, 20.0])


def test_predictive_is_never_below_the_reactive_floor():
    """With a forecast that is wrong on purpose (always 0), the predictive policy scales exactly as reactive;
    with any forecast, every sync sets at least what the reactive metric alone asks (up to the HPA's limit)."""
    rng = np.random.default_rng(5)
    values = np.repeat(rng.gamma(2.0, 30.0, 40), 3)
    service = ServiceModel(capacity=10.0, start_delay=180.0)
    settings = HPASettings()
    start, end = 3600.0, len(values) * STEP
    reactive = replay(values, STEP, service, settings, start, end)

    def predictive(forecasts):
        recommender = Recommender(Capacity(per_replica=10.0, max_replicas=settings.max_replicas, calibrate=False), 60.0)
        return replay(values, STEP, service, settings, start, end, Predictive(recommender, forecasts, 60.0))

    zero = predictive(np.zeros((len(values), 12)))
    assert np.array_equal(zero.pods, reactive.pods)
    noisy = predictive(rng.gamma(2.0, 30.0, (len(values), 12)))
    limit = np.maximum(2 * noisy.before, 4)
    assert (noisy.pods >= np.minimum(noisy.reactive_proposal, limit)).all()
    assert np.isfinite(noisy.forecast_load).any() and not np.array_equal(noisy.pods, reactive.pods)


# -- the command on a short slice of real demand, with the real predictor -----------------------------------
def test_replay_command_on_a_slice_of_nab_tweets_with_the_real_predictor(model_dir, tmp_path):
    path = shared_dir() / "data" / "nab-tweets" / "Twitter_volume_GOOG.csv"
    if not path.is_file():
        pytest.skip(f"NAB tweets not found at {path} (set PERF_PREDICTOR_SHARED)")
    out = tmp_path / "replay"
    proc = subprocess.run(
        [sys.executable, "-m", "scaling_replay", "--model-dir", str(model_dir), "--out", str(out),
         "--data", str(path), "--points", str(336 + 288)],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    document = json.loads((out / "results.json").read_text())
    (row,) = document["series"]
    assert row["series"] == "Twitter_volume_GOOG"
    assert row["replayed_minutes"] == pytest.approx(288 * 5 - 0.5)  # one day, less the 30 s scrape lag
    for policy in ("reactive", "predictive"):
        r = row[policy]
        assert 0 <= r["overloaded_minutes"] <= r["minutes"]
        assert 0 <= r["unserved_share"] < 1
        assert r["replica_hours"] >= r["minutes"] / 60  # at least one replica all the time
    assert row["replica_hours_ratio"] == pytest.approx(
        row["predictive"]["replica_hours"] / row["reactive"]["replica_hours"])
    # the forecast trigger only adds replicas on top of the reactive floor
    assert row["predictive"]["replica_hours"] >= row["reactive"]["replica_hours"]
    # the loop's calibration ran on the actuals (one outcome per origin whose steps ended: about a day's)
    calibration = row["calibration"]
    assert 250 <= calibration["outcomes"] <= 288 and 0 <= calibration["exceedance"] <= 1
    assert 0.2 <= calibration["factor"] <= 5 and calibration["factor"] != 1.0
    assert document["model"]["window"] == 336 and (out / "Twitter_volume_GOOG.png").stat().st_size > 10_000
    chart = (out / "Twitter_volume_GOOG.mermaid.md").read_text()  # parsed by Mermaid in test_markdown_charts.py
    assert chart.startswith("```mermaid\n") and chart.count("\n    line [") == 3


def test_perfect_forecasts_are_the_buckets_after_each_origin():
    from scaling_replay.compare import perfect_forecasts

    values = np.arange(10.0)
    got = perfect_forecasts(values, window=4, horizon=3)
    assert np.isnan(got[:3]).all()
    assert got[3].tolist() == [4.0, 5.0, 6.0] and got[8].tolist() == [9.0, 9.0, 9.0]


@pytest.mark.parametrize("argv, message", [
    (["--perfect-forecast", "--data", "no-such-file.csv"], "no-such-file.csv"),
    (["--perfect-forecast", "--points", "0"], "must be at least 1"),
    (["--data", "x.csv"], "one of the arguments --perfect-forecast --model-dir --model-url is required"),
])
def test_replay_command_rejects_bad_input_with_a_clear_message(tmp_path, argv, message):
    proc = subprocess.run([sys.executable, "-m", "scaling_replay", "--out", str(tmp_path / "out"), *argv],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
