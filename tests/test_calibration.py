"""Band calibration: the scale found on held-out data makes the p10-p90 band hold 80% of it."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from forecaster.model import ForecastSpec, QuantileForecaster, TrainingParams
from training.sources import synthetic


@pytest.fixture(scope="module")
def fitted():
    series = [s.values for s in synthetic.generate(n_series=4, days=10, seed=5)]
    params = TrainingParams(max_iter=15, stride=12, jobs=1, calibration=0.25)
    return QuantileForecaster.fit(series, ForecastSpec(), params), series


def coverage(model: QuantileForecaster, series, stride: int = 6) -> float:
    inside = []
    for values in series:
        blocks = np.lib.stride_tricks.sliding_window_view(values, model.spec.window + model.spec.horizon)[::stride]
        forecast = model.predict(blocks[:, : model.spec.window])
        actual = blocks[:, model.spec.window :]
        inside.append(((actual >= forecast[0]) & (actual <= forecast[-1])).ravel())
    return float(np.concatenate(inside).mean())


def test_fit_records_a_band_scale_and_predict_applies_it(fitted):
    model, series = fitted
    scale = model.spec.band_scale
    assert scale != 1.0 and 0.5 <= scale <= 4.0
    plain = QuantileForecaster(replace(model.spec, band_scale=1.0), model.estimators)
    windows = np.stack([v[-model.spec.window:] for v in series])
    scaled, unscaled = model.predict(windows), plain.predict(windows)
    np.testing.assert_allclose(scaled[1], unscaled[1], rtol=1e-6)  # the median does not move
    np.testing.assert_allclose(scaled[2] - scaled[1], scale * (unscaled[2] - unscaled[1]), rtol=1e-4, atol=1e-3)
    assert (scaled[0] <= scaled[1]).all() and (scaled[1] <= scaled[2]).all()


def test_the_scale_found_on_data_gives_nominal_coverage_on_that_data(fitted):
    model, series = fitted
    tails = [v[-(model.spec.window + 600):] for v in series]
    plain = QuantileForecaster(replace(model.spec, band_scale=1.0), model.estimators)
    scale = plain.band_scale_for(tails, stride=6)
    calibrated = QuantileForecaster(replace(model.spec, band_scale=scale), model.estimators)
    assert 0.78 <= coverage(calibrated, tails) <= 0.83, (scale, coverage(plain, tails))
