"""The compiled tree walker gives exactly scikit-learn's predictions, in one thread or several."""
from __future__ import annotations

import numpy as np
import pytest

from forecaster import artifact, features
from forecaster.compiled import CompiledTrees


@pytest.fixture(scope="module")
def loaded(model_dir):
    return artifact.load(model_dir)


def sample_rows(card: dict, n: int, seed: int) -> np.ndarray:
    windows = np.random.default_rng(seed).lognormal(3, 0.5, size=(n, card["window"]))
    return features.make_features(windows, card["horizon"])[0]


@pytest.mark.parametrize("n", [1, 7, 700])
@pytest.mark.parametrize("threads", [1, 2])
def test_compiled_trees_equal_scikit_learn(loaded, n, threads):
    forecaster, card = loaded
    x = sample_rows(card, n, seed=n)
    expected = np.stack([est.predict(x) for est in forecaster.estimators])
    np.testing.assert_array_equal(CompiledTrees(forecaster.estimators).predict(x, threads=threads), expected)


def test_missing_values_follow_scikit_learn(loaded):
    forecaster, card = loaded
    x = sample_rows(card, 20, seed=1).astype(np.float64)
    x[::3, ::2] = np.nan
    expected = np.stack([est.predict(x) for est in forecaster.estimators])
    np.testing.assert_array_equal(CompiledTrees(forecaster.estimators).predict(x), expected)


def test_forecaster_predict_is_the_same_with_more_threads(loaded):
    forecaster, card = loaded
    windows = np.random.default_rng(3).lognormal(3, 0.5, size=(600, card["window"]))
    np.testing.assert_array_equal(forecaster.predict(windows, threads=2), forecaster.predict(windows))
