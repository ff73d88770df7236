"""The compiled feature transform gives the same float32 rows as the plain numpy statement of it."""
from __future__ import annotations

import numpy as np
import pytest

from forecaster import features
from tests.numpy_features import numpy_make_features

RNG = np.random.default_rng(42)
WINDOWS = {
    "lognormal": RNG.lognormal(3, 0.5, (300, 336)),
    "longer than needed": RNG.lognormal(1, 1, (20, 500)),
    "flat zero": np.zeros((3, 336)),
    "negative and positive": RNG.normal(0, 1, (40, 336)),
    "huge values": RNG.lognormal(30, 2, (20, 336)),
    "tiny values": RNG.lognormal(-30, 2, (20, 336)),
    "a step change": np.concatenate([np.full((5, 300), 10.0), np.full((5, 36), 90.0)], axis=1),
}
# short histories: NaN up to a random point, every length from the minimum to past a day and a bit
SHORT = RNG.lognormal(3, 0.5, (336 - features.MIN_HISTORY + 1, 336))
for row, have in enumerate(range(features.MIN_HISTORY, 337)):
    SHORT[row, : 336 - have] = np.nan
WINDOWS["short histories"] = SHORT
WINDOWS["a gap inside: only the points after it count"] = np.where(np.arange(336) == 200, np.inf, RNG.lognormal(3, 0.5, (4, 336)))


@pytest.mark.parametrize("name", list(WINDOWS))
@pytest.mark.parametrize("horizon", [12, 6])
def test_compiled_rows_equal_numpy(name, horizon):
    windows = WINDOWS[name]
    rows, levels = features.make_features(windows, horizon)
    expected_rows, expected_levels = numpy_make_features(windows, horizon)
    assert rows.dtype == np.float32 and rows.shape == (len(windows) * horizon, len(features.feature_names(horizon)))
    np.testing.assert_array_equal(levels, expected_levels)
    np.testing.assert_array_equal(rows, expected_rows)


def test_too_short_windows_are_refused():
    with pytest.raises(ValueError, match="at least"):
        features.make_features(np.ones((1, 100)), 12)
    short = np.ones((2, 336))
    short[1, : 336 - features.MIN_HISTORY + 1] = np.nan
    with pytest.raises(ValueError, match=f"series 1 has {features.MIN_HISTORY - 1} finite points"):
        features.make_features(short, 12)


def test_short_history_features():
    """Below a day and a bit the day-ago features are missing; spans shrink to the points there."""
    windows = np.full((2, 336), np.nan)
    windows[0, -100:] = np.arange(100.0) + 1
    windows[1, -300:] = np.arange(300.0) + 1
    rows, levels = features.make_features(windows, 12)
    names = features.feature_names(12)
    rows = rows.reshape(2, 12, -1)
    assert levels[0] == pytest.approx(50.5) and np.all(np.isnan(rows[0, :, names.index("yesterday")]))
    assert not np.isnan(rows[1]).any()
    assert rows[0, 0, names.index("history_days")] == pytest.approx(100 / 288)
    # mean over the last 288 points of a 100-point history: the mean of all 100, relative to the anchor
    anchor = (windows[0, -3:].mean()) / levels[0]
    assert rows[0, 0, names.index("mean_288")] == pytest.approx(50.5 / 50.5 - anchor, rel=1e-5)
