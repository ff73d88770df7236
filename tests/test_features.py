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
