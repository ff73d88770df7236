"""The compiled tree walker gives exactly scikit-learn's predictions, in one thread or several."""
from __future__ import annotations

import numpy as np
import pytest

from forecaster import artifact, features
from forecaster.compiled import CompiledTrees


@pytest.fixture(scope="module")
def loaded(model_dir):
    return artifact.load(model_dir, estimators=True)


def sample_rows(card: dict, n: int, seed: int) -> np.ndarray:
    windows = np.random.default_rng(seed).lognormal(3, 0.5, size=(n, card["window"]))
    return features.make_features(windows, card["horizon"])[0]


@pytest.mark.parametrize("n", [1, 7, 700])
@pytest.mark.parametrize("threads", [1, 2])
def test_compiled_trees_equal_scikit_learn(loaded, n, threads):
    forecaster, card = loaded
    x = sample_rows(card, n, seed=n)
    expected = np.stack([est.predict(x) for est in forecaster.estimators])
    np.testing.assert_array_equal(CompiledTrees.of(forecaster.estimators).predict(x, threads=threads), expected)


def test_missing_values_follow_scikit_learn(loaded):
    forecaster, card = loaded
    x = sample_rows(card, 20, seed=1).astype(np.float64)
    x[::3, ::2] = np.nan
    expected = np.stack([est.predict(x) for est in forecaster.estimators])
    np.testing.assert_array_equal(CompiledTrees.of(forecaster.estimators).predict(x), expected)


def test_forecaster_predict_is_the_same_with_more_threads(loaded):
    forecaster, card = loaded
    windows = np.random.default_rng(3).lognormal(3, 0.5, size=(600, card["window"]))
    np.testing.assert_array_equal(forecaster.predict(windows, threads=2), forecaster.predict(windows))


def test_values_at_and_beside_every_threshold_go_scikit_learns_way(loaded):
    """The float32 walk rounds thresholds; rows sitting exactly on, just below and just above them
    are where a rounding mistake would show."""
    forecaster, card = loaded
    base = sample_rows(card, 1, seed=5)[0]
    splits = [(int(f), float(t)) for est in forecaster.estimators for (tree,) in est._predictors
              for f, t, leaf in zip(tree.nodes["feature_idx"], tree.nodes["num_threshold"], tree.nodes["is_leaf"])
              if not leaf]
    rows = []
    for f, t in splits[::7]:
        near = np.float32(t)
        for v in (near, np.nextafter(near, np.float32(-np.inf)), np.nextafter(near, np.float32(np.inf))):
            row = base.copy()
            row[f] = v
            rows.append(row)
    x = np.array(rows, dtype=np.float32)
    expected = np.stack([est.predict(x) for est in forecaster.estimators])
    np.testing.assert_array_equal(CompiledTrees.of(forecaster.estimators).predict(x), expected)
    np.testing.assert_array_equal(CompiledTrees.of(forecaster.estimators).predict(x, threads=2), expected)


def test_float32_rows_with_missing_values_take_the_exact_walk(loaded):
    forecaster, card = loaded
    x = sample_rows(card, 9, seed=2)
    x[::2, 1::3] = np.nan
    expected = np.stack([est.predict(x) for est in forecaster.estimators])
    np.testing.assert_array_equal(CompiledTrees.of(forecaster.estimators).predict(x), expected)
