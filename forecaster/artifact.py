"""The model directory: `model-card.json`, the estimators (skops) and their trees (npz), written by
training, read by serving.

A model directory comes from object storage others can write to, so loading never runs code from it:
every artifact's sha256 must match the card. Serving reads the trees from `trees.npz`, plain numeric
arrays loaded without pickle, so it never imports scikit-learn or skops (seconds of start-up).
Training and evaluation, and directories written before the npz, load the estimators with skops,
which may only rebuild the types listed here.
"""
from __future__ import annotations

import hashlib
import json
import platform
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from . import features
from .compiled import NODE_FIELDS, TreeArrays
from .model import ForecastSpec, QuantileForecaster

CARD_FILE = "model-card.json"
ESTIMATORS_FILE = "estimators.skops"
TREES_FILE = "trees.npz"
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
    """Write the estimators, their trees (what serving loads) and a card describing them; returns the card."""
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    import skops.io as sio

    sio.dump({"estimators": forecaster.estimators}, model_dir / ESTIMATORS_FILE)
    save_trees(model_dir / TREES_FILE, forecaster.trees)
    now = datetime.now(timezone.utc)
    card = {
        "card_schema_version": CARD_SCHEMA_VERSION,
        "name": name,
        "version": version or now.strftime("%Y%m%dT%H%M%SZ"),
        "created_at": now.isoformat(timespec="seconds"),
        **forecaster.spec.to_dict(),
        **card_fields,
        "libraries": library_versions(),
        "artifacts": {f: sha256_of(model_dir / f) for f in (ESTIMATORS_FILE, TREES_FILE)},
    }
    write_card(model_dir, card)
    return card


def save_trees(path: Path, trees: list[TreeArrays]) -> None:
    """Model m's node fields as `m/<field>`, its tree sizes as `m/sizes`, the baselines as `baselines`."""
    arrays = {"baselines": np.array([t.baseline for t in trees], dtype=np.float64)}
    for m, t in enumerate(trees):
        arrays |= {f"{m}/{f}": t.nodes[f] for f in NODE_FIELDS} | {f"{m}/sizes": np.asarray(t.sizes, np.int64)}
    with path.open("wb") as fh:
        np.savez(fh, **arrays)


def load_trees(path: Path, spec: ForecastSpec) -> list[TreeArrays]:
    """The trees of `spec`'s quantiles from `save_trees`' file, checked to stay inside their arrays."""
    n_features = len(features.feature_names(spec.horizon))
    try:
        with np.load(path, allow_pickle=False) as npz:  # an object array raises instead of unpickling
            baselines = npz["baselines"]
            if baselines.shape != (len(spec.quantiles),) or baselines.dtype.kind != "f":
                raise ValueError(f"'baselines' must be {len(spec.quantiles)} floats, one per quantile")
            trees = [TreeArrays({f: npz[f"{m}/{f}"] for f in NODE_FIELDS}, npz[f"{m}/sizes"], float(baselines[m]))
                     for m in range(len(spec.quantiles))]
    except Exception as exc:  # numpy and zipfile raise many types for malformed files
        raise ModelLoadError(f"cannot load {TREES_FILE}: {type(exc).__name__}: {exc}") from None
    for m, t in enumerate(trees):
        try:
            t.check(n_features)
        except ValueError as exc:
            raise ModelLoadError(f"{TREES_FILE} is malformed in model {m}: {exc}") from None
    return trees


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


def load(model_dir: str | Path, estimators: bool = False) -> tuple[QuantileForecaster, dict]:
    """Verify and load a model directory, or raise ModelLoadError saying what is wrong. From its trees
    (TREES_FILE) unless `estimators` asks for scikit-learn's or the card lists no trees."""
    model_dir = Path(model_dir)
    card = read_card(model_dir)
    verify_artifacts(model_dir, card)
    from_trees = TREES_FILE in card["artifacts"] and not estimators
    if ESTIMATORS_FILE not in card["artifacts"] and not from_trees:
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
    if from_trees:
        return QuantileForecaster(spec, trees=load_trees(model_dir / TREES_FILE, spec)), card
    import skops.io as sio  # scikit-learn and scipy come with it: only when the estimators are needed

    path = model_dir / ESTIMATORS_FILE
    untrusted = sorted(set(sio.get_untrusted_types(file=path)) - set(TRUSTED_TYPES))
    if untrusted:
        raise ModelLoadError(f"{ESTIMATORS_FILE} holds types this server will not load: {', '.join(untrusted)}")
    try:
        payload = sio.load(path, trusted=TRUSTED_TYPES)
        return QuantileForecaster(spec, payload["estimators"]), card
    except Exception as exc:  # skops raises many types for malformed files
        raise ModelLoadError(f"cannot load {ESTIMATORS_FILE}: {type(exc).__name__}: {exc}") from None
