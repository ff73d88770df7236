"""The model directory: `model-card.json` plus skops artifacts, written by training, read by serving.

A model directory comes from object storage others can write to, so loading never runs code from it:
every artifact's sha256 must match the card, and skops may only rebuild the types listed here.
"""
from __future__ import annotations

import hashlib
import json
import platform
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import skops.io as sio

from . import features
from .model import ForecastSpec, QuantileForecaster

CARD_FILE = "model-card.json"
ESTIMATORS_FILE = "estimators.skops"
CARD_SCHEMA_VERSION = 1
# Beyond skops' defaults (scikit-learn estimators, numpy arrays, builtins), the only type our
# artifacts hold. Anything else in a file is refused before it is instantiated.
TRUSTED_TYPES = ["sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor"]


class ModelLoadError(RuntimeError):
    """The model directory is missing, corrupt, or holds something we will not load."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for dist in ("numpy", "scikit-learn", "skops"):
        versions[dist] = metadata.version(dist)
    return versions


def save(model_dir: str | Path, forecaster: QuantileForecaster, name: str, version: str | None = None,
         **card_fields: Any) -> dict:
    """Write the estimators and a card describing them; returns the card."""
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    sio.dump({"estimators": forecaster.estimators}, model_dir / ESTIMATORS_FILE)
    now = datetime.now(timezone.utc)
    card = {
        "card_schema_version": CARD_SCHEMA_VERSION,
        "name": name,
        "version": version or now.strftime("%Y%m%dT%H%M%SZ"),
        "created_at": now.isoformat(timespec="seconds"),
        **forecaster.spec.to_dict(),
        **card_fields,
        "libraries": library_versions(),
        "artifacts": {ESTIMATORS_FILE: sha256_of(model_dir / ESTIMATORS_FILE)},
    }
    write_card(model_dir, card)
    return card


def write_card(model_dir: Path, card: dict) -> None:
    (Path(model_dir) / CARD_FILE).write_text(json.dumps(card, indent=2) + "\n")


def read_card(model_dir: str | Path) -> dict:
    path = Path(model_dir) / CARD_FILE
    try:
        card = json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelLoadError(f"no {CARD_FILE} in {model_dir}: not a perf-predictor model directory") from None
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read {path}: {exc}") from None
    if not isinstance(card, dict) or not isinstance(card.get("artifacts"), dict):
        raise ModelLoadError(f"{path} has no 'artifacts' table")
    return card


def verify_artifacts(model_dir: Path, card: dict) -> None:
    for file_name, expected in card["artifacts"].items():
        path = model_dir / file_name
        if Path(file_name).name != file_name:
            raise ModelLoadError(f"artifact name {file_name!r} in the card is not a plain file name")
        if not path.is_file():
            raise ModelLoadError(f"artifact {file_name} listed in the card is missing from {model_dir}")
        actual = sha256_of(path)
        if actual != expected:
            raise ModelLoadError(f"artifact {file_name} is corrupt: sha256 {actual} does not match the card's {expected}")


def load(model_dir: str | Path) -> tuple[QuantileForecaster, dict]:
    """Verify and load a model directory, or raise ModelLoadError saying what is wrong."""
    model_dir = Path(model_dir)
    card = read_card(model_dir)
    verify_artifacts(model_dir, card)
    if ESTIMATORS_FILE not in card["artifacts"]:
        raise ModelLoadError(f"the card lists no {ESTIMATORS_FILE}")
    try:
        spec = ForecastSpec(
            window=int(card["window"]),
            horizon=int(card["horizon"]),
            quantiles=tuple(card["quantiles"]),
            step_seconds=int(card["step_seconds"]),
            feature_version=int(card["feature_version"]),
            band_scale=float(card.get("band_scale", 1.0)),
            min_history=int(card.get("min_history", features.MIN_HISTORY)),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelLoadError(f"model card has an invalid or missing field: {exc}") from None
    if spec.feature_version != features.FEATURE_VERSION:
        raise ModelLoadError(
            f"model was trained with feature version {spec.feature_version}, this build has {features.FEATURE_VERSION}"
        )
    path = model_dir / ESTIMATORS_FILE
    untrusted = sorted(set(sio.get_untrusted_types(file=path)) - set(TRUSTED_TYPES))
    if untrusted:
        raise ModelLoadError(f"{ESTIMATORS_FILE} holds types this server will not load: {', '.join(untrusted)}")
    try:
        payload = sio.load(path, trusted=TRUSTED_TYPES)
        return QuantileForecaster(spec, payload["estimators"]), card
    except Exception as exc:  # skops raises many types for malformed files
        raise ModelLoadError(f"cannot load {ESTIMATORS_FILE}: {type(exc).__name__}: {exc}") from None
