"""Training's data handling and the shared feature transform."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from forecaster import artifact, features, model
from forecaster.model import ForecastSpec, quantile_name
from training.sources import csv_files, regularize, synthetic

from .conftest import REPO, shared_dir


def test_regularize_fills_short_gaps_and_splits_on_long_ones():
    stamps = np.array([0, 300, 600, 1500, 1800] + [1800 + 300 * k for k in range(10, 14)])
    values = np.array([1.0, 2.0, 3.0, 6.0, 7.0, 10.0, 11.0, 12.0, 13.0])
    pieces = regularize("s", stamps, values, max_fill_steps=3)
    assert [p.step_seconds for p in pieces] == [300, 300]
    np.testing.assert_allclose(pieces[0].values, [1, 2, 3, 4, 5, 6, 7])  # 2-point gap interpolated
    np.testing.assert_allclose(pieces[1].values, [10, 11, 12, 13])  # 9-point gap split
    assert pieces[1].start == np.datetime64(1800 + 3000, "s")


def test_csv_reader_parses_nab_format(tmp_path):
    path = tmp_path / "cpu.csv"
    path.write_text("timestamp,value\n2014-02-14 14:30:00,0.1\n2014-02-14 14:35:00,0.2\n"
                    "2014-02-14 14:40:00,0.3\n")
    (series,) = csv_files.load(path)
    assert series.name == "cpu" and series.step_seconds == 300
    np.testing.assert_allclose(series.values, [0.1, 0.2, 0.3])
    assert series.start == np.datetime64("2014-02-14T14:30:00")


def test_csv_reader_rejects_wrong_header(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("time,val\n1,2\n")
    with pytest.raises(ValueError, match="'timestamp' and 'value'"):
        csv_files.load(path)


def test_nab_directory_loads():
    nab = shared_dir() / "data" / "nab"
    if not nab.is_dir():
        pytest.skip(f"NAB data not found at {nab} (set PERF_PREDICTOR_SHARED)")
    series = csv_files.load(nab)
    assert len(series) >= 15 and all(s.step_seconds == 300 for s in series)
    assert all(np.isfinite(s.values).all() for s in series)


def test_synthetic_workload_is_reproducible_and_shaped_like_metrics():
    a, b = synthetic.generate(seed=3), synthetic.generate(seed=3)
    assert [s.name for s in a] == [s.name for s in b]
    np.testing.assert_array_equal(a[0].values, b[0].values)
    for s in a:
        daily = s.values[: 288 * 5].reshape(5, 288).mean(axis=0)
        assert daily.max() > 1.5 * daily.min(), f"{s.name} has no daily cycle"
    cpu = [s for s in a if "cpu" in s.name]
    assert all(s.values.max() <= 100 for s in cpu)


def test_features_are_scale_free():
    rng = np.random.default_rng(0)
    windows = rng.uniform(1, 2, size=(4, 336))
    x1, levels1 = features.make_features(windows, 12)
    x2, levels2 = features.make_features(windows * 1e6, 12)
    np.testing.assert_allclose(x1, x2, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(levels2, levels1 * 1e6)
    assert x1.shape == (4 * 12, len(features.feature_names(12)))


def test_seasonal_feature_reads_yesterday_at_the_target_time():
    windows = np.arange(336, dtype=float)[None, :] + 1
    x, level = features.make_features(windows, 12)
    col = features.feature_names(12).index("yesterday")
    anchor = features.anchors(windows, level)[0]  # level-like features are relative to the anchor
    # step h targets index 335 + h; yesterday is index 335 + h - 288 (value = index + 1)
    np.testing.assert_allclose((x[:, col] + anchor) * level[0], [335 + h - 288 + 1 for h in range(1, 13)], rtol=1e-5)


def test_spec_rejects_bad_settings():
    with pytest.raises(ValueError, match="window must be at least"):
        ForecastSpec(window=100)
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        ForecastSpec(quantiles=(0.5, 1.5))
    assert [quantile_name(q) for q in (0.1, 0.5, 0.9, 0.975)] == ["p10", "p50", "p90", "p97.5"]


def test_training_cli_reports_bad_data(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "training", "--data", str(tmp_path), "--out", str(tmp_path / "m")],
                          cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 2 and "no .csv files" in proc.stderr


def test_forecasts_from_short_histories(model_dir):
    """Cold start: from min_history points up, a short history is the same forecast whether it comes
    short or NaN-padded to the window; a band that never crosses; fewer points are refused."""
    forecaster, card = artifact.load(model_dir)
    assert card["min_history"] == features.MIN_HISTORY == forecaster.spec.min_history
    rng = np.random.default_rng(4)
    for points in (features.MIN_HISTORY, 72, 300):
        short = rng.uniform(50, 150, size=(5, points))
        padded = np.concatenate([np.full((5, card["window"] - points), np.nan), short], axis=1)
        out = forecaster.predict(short)
        assert out.shape == (3, 5, card["horizon"]) and np.all(np.isfinite(out)) and np.all(np.diff(out, axis=0) >= 0)
        np.testing.assert_array_equal(out, forecaster.predict(padded))
    # the history a window holds changes the forecast: the day-ago features are there only for a full window
    full = rng.uniform(50, 150, size=(1, card["window"]))
    assert not np.array_equal(forecaster.predict(full), forecaster.predict(full[:, -100:]))
    with pytest.raises(ValueError, match=f"at least {features.MIN_HISTORY}"):
        forecaster.predict(rng.uniform(50, 150, size=(2, features.MIN_HISTORY - 1)))


def test_training_cuts_a_share_of_windows_short():
    windows = np.ones((4000, 336))
    cut = model.shorten(windows, 0.3, features.MIN_HISTORY, np.random.default_rng(0))
    lengths = features.history_lengths(cut)
    assert 0.27 < np.mean(lengths < 336) < 0.33 and lengths.min() >= features.MIN_HISTORY
    assert np.median(lengths[lengths < 336]) < 120  # log-uniform: short histories are common
    assert np.array_equal(model.shorten(windows, 0.0, features.MIN_HISTORY, np.random.default_rng(0)), windows)
