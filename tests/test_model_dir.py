"""A model directory is verified before anything in it is used; a bad one leaves no server running."""
from __future__ import annotations

import json
import shutil
import subprocess
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


def refresh_card_hash(model: Path) -> None:
    card = json.loads((model / artifact.CARD_FILE).read_text())
    card["artifacts"][artifact.ESTIMATORS_FILE] = artifact.sha256_of(model / artifact.ESTIMATORS_FILE)
    artifact.write_card(model, card)


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


def test_corrupted_artifact_is_refused(model_dir, tmp_path):
    model = copy_model(model_dir, tmp_path)
    path = model / artifact.ESTIMATORS_FILE
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(artifact.ModelLoadError, match="corrupt: sha256"):
        artifact.load(model)
    code, log = run_until_exit(model, tmp_path)
    assert code != 0
    assert f"model {MODEL_NAME} not loaded" in log and "is corrupt" in log


def test_artifact_with_untrusted_type_is_refused(model_dir, tmp_path):
    """A file whose hash matches but which would call eval() on load must never be instantiated."""
    model = copy_model(model_dir, tmp_path)
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
