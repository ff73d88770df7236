"""A model directory is verified before anything in it is used; a bad one leaves no server running."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import skops.io as sio
from sklearn.preprocessing import FunctionTransformer

from forecaster import artifact

from .conftest import MODEL_NAME, start_server, stop_server


def copy_model(model_dir: Path, tmp_path: Path) -> Path:
    target = tmp_path / "model"
    shutil.copytree(model_dir, target)
    return target


def refresh_card_hash(model: Path, file_name: str = artifact.ESTIMATORS_FILE) -> None:
    card = json.loads((model / artifact.CARD_FILE).read_text())
    card["artifacts"][file_name] = artifact.sha256_of(model / file_name)
    artifact.write_card(model, card)


def without_trees(model: Path) -> Path:
    """The model directory as written before trees.npz: the estimators alone."""
    card = json.loads((model / artifact.CARD_FILE).read_text())
    del card["artifacts"][artifact.TREES_FILE]
    artifact.write_card(model, card)
    (model / artifact.TREES_FILE).unlink()
    return model


def rewrite_trees(model: Path, **changed) -> None:
    """trees.npz with some arrays replaced (saved as given, pickling allowed), its hash in the card."""
    with np.load(model / artifact.TREES_FILE) as npz:
        arrays = dict(npz) | changed
    with (model / artifact.TREES_FILE).open("wb") as fh:
        np.savez(fh, **arrays)
    refresh_card_hash(model, artifact.TREES_FILE)


def sample_windows(card: dict) -> np.ndarray:
    """Series of a few shapes: random walks, a flat one, one that is only partly there (NaN)."""
    rng = np.random.default_rng(1)
    windows = 50 + np.cumsum(rng.normal(size=(40, card["window"])), axis=1)
    windows[1] = 7.0
    windows[2, : card["window"] // 2] = np.nan
    return windows


class RunsCode:
    """Unpickling this would create the file it names."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def run_until_exit(model: Path, tmp_path: Path) -> tuple[int, str]:
    """Start the real server on a bad model: it must exit non-zero and never answer ready."""
    server = start_server(model, tmp_path / "server.log")
    try:
        code = server.process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        stop_server(server)
        pytest.fail(f"server kept running on a bad model:\n{server.log()}")
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{server.http_url}/v2/models/{MODEL_NAME}/ready", timeout=2)
    return code, server.log()


def test_round_trip_predicts_identically(model_dir):
    forecaster, card = artifact.load(model_dir)
    again, _ = artifact.load(model_dir)
    windows = np.random.default_rng(1).uniform(10, 20, size=(3, card["window"]))
    np.testing.assert_array_equal(forecaster.predict(windows), again.predict(windows))
    assert card["output_names"] == ["p10", "p50", "p90"]
    assert set(card["libraries"]) >= {"python", "numpy", "scikit-learn", "skops"}
    assert card["training"]["source"] == "synthetic" and card["training"]["series"]


@pytest.mark.parametrize("file_name", [artifact.ESTIMATORS_FILE, artifact.TREES_FILE])
def test_corrupted_artifact_is_refused(model_dir, tmp_path, file_name):
    model = copy_model(model_dir, tmp_path)
    path = model / file_name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(artifact.ModelLoadError, match=f"artifact {file_name} is corrupt: sha256"):
        artifact.load(model)
    code, log = run_until_exit(model, tmp_path)
    assert code != 0
    assert f"model {MODEL_NAME} not loaded" in log and "is corrupt" in log


def test_artifact_with_untrusted_type_is_refused(model_dir, tmp_path):
    """A file whose hash matches but which would call eval() on load must never be instantiated; the
    server reads the estimators when the directory has no trees.npz."""
    model = without_trees(copy_model(model_dir, tmp_path))
    sio.dump({"estimators": [FunctionTransformer(func=eval)] * 3}, model / artifact.ESTIMATORS_FILE)
    refresh_card_hash(model)
    with pytest.raises(artifact.ModelLoadError, match="builtins.eval"):
        artifact.load(model)
    code, log = run_until_exit(model, tmp_path)
    assert code != 0 and "will not load: builtins.eval" in log


def test_missing_model_dir_exits_non_zero(tmp_path):
    code, log = run_until_exit(tmp_path / "nowhere", tmp_path)
    assert code != 0 and "no model-card.json" in log


def test_artifact_missing_from_dir_is_refused(model_dir, tmp_path):
    model = copy_model(model_dir, tmp_path)
    (model / artifact.ESTIMATORS_FILE).unlink()
    with pytest.raises(artifact.ModelLoadError, match="missing"):
        artifact.load(model)


def test_card_naming_a_path_outside_the_dir_is_refused(model_dir, tmp_path):
    model = copy_model(model_dir, tmp_path)
    card = json.loads((model / artifact.CARD_FILE).read_text())
    card["artifacts"]["../../etc/passwd"] = "0" * 64
    artifact.write_card(model, card)
    with pytest.raises(artifact.ModelLoadError, match="not a plain file name"):
        artifact.load(model)


def test_trees_forecast_bit_identically_to_the_estimators(model_dir):
    served, card = artifact.load(model_dir)
    fitted, _ = artifact.load(model_dir, estimators=True)
    assert served.estimators == [] and len(fitted.estimators) == len(card["quantiles"])
    windows = sample_windows(card)
    for rows in (windows, windows.astype(np.float32), windows[:, -card["min_history"]:]):
        np.testing.assert_array_equal(served.predict(rows), fitted.predict(rows))
        np.testing.assert_array_equal(served.predict(rows, threads=2), fitted.predict(rows))


def test_directory_without_trees_loads_the_estimators(model_dir, tmp_path):
    model = without_trees(copy_model(model_dir, tmp_path))
    loaded, card = artifact.load(model)
    assert len(loaded.estimators) == len(card["quantiles"])
    windows = sample_windows(card)
    np.testing.assert_array_equal(loaded.predict(windows), artifact.load(model_dir)[0].predict(windows))


def test_trees_holding_a_pickle_are_refused_unopened(model_dir, tmp_path):
    """An object array (a pickle) in trees.npz is refused, even with the card's hash, and never unpickled."""
    model = copy_model(model_dir, tmp_path)
    marker = tmp_path / "code-ran"
    rewrite_trees(model, **{"0/value": np.array([RunsCode(marker)], dtype=object)})
    with pytest.raises(artifact.ModelLoadError, match=f"cannot load {artifact.TREES_FILE}: ValueError: .*allow_pickle"):
        artifact.load(model)
    assert not marker.exists()
    code, log = run_until_exit(model, tmp_path)
    assert code != 0 and f"cannot load {artifact.TREES_FILE}" in log and not marker.exists()


@pytest.mark.parametrize("field, change, reason", [
    ("0/left", lambda a: a + np.uint32(1 << 20), "left child lies outside its tree"),
    ("1/right", lambda a: np.zeros_like(a), "right child lies outside its tree or before its parent"),
    ("2/feature_idx", lambda a: a + 10_000, "reads a feature outside"),
    ("0/value", lambda a: a.astype(np.int64), "thresholds and values float"),
    ("2/is_leaf", lambda a: a * 2, "is_leaf must be 0 or 1"),
    ("1/sizes", lambda a: a[:-1], "add up to the node count"),
    ("baselines", lambda a: a[:1], "one per quantile"),
])
def test_trees_pointing_outside_their_arrays_are_refused(model_dir, tmp_path, field, change, reason):
    """The compiled walker does not bounds-check, so indices are checked once at load."""
    model = copy_model(model_dir, tmp_path)
    with np.load(model / artifact.TREES_FILE) as npz:
        rewrite_trees(model, **{field: change(npz[field])})
    with pytest.raises(artifact.ModelLoadError, match=reason):
        artifact.load(model)


def test_serving_never_imports_scikit_learn(model_dir):
    """What serving imports and loads: no scikit-learn, skops or scipy.stats (together 1.4 s of start-up
    here). numba itself imports scipy's top package, a few milliseconds."""
    script = (
        "import sys\n"
        "import predictor.__main__, predictor.rest, predictor.grpc_server\n"
        "from predictor.model import PerfPredictor\n"
        f"model = PerfPredictor('m', {str(model_dir)!r})\n"
        "assert model.load()\n"
        "print(sorted(set(sys.modules) & {'sklearn', 'skops', 'scipy.stats', 'scipy.sparse'}))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
