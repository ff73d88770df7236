"""A client of the served model over KServe's v2 REST protocol, with the binary tensor extension.

`spec()` reads what the loop needs from the server: W (the input's shape), H and the quantiles (the
outputs' shapes and names, `p10`...), from the v2 model metadata; the step from the model card, as the
server publishes it in `perf_predictor_model_info{step_seconds}` on its `/metrics` (v2 metadata has no
place for it). `forecast(history)` sends [n, W] FP64 rows in calls of at most `max_batch_series` and
returns [n_quantiles, n, H]. Every failure is a `ModelError` whose `reason` is a stable code.
"""
from __future__ import annotations

import http.client
import json
import re
import socket
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from .config import ModelConfig

INPUT_NAME = "history"
_QUANTILE_OUTPUT = re.compile(r"^p(\d+(?:\.\d+)?)$")
HEADER_LENGTH = "Inference-Header-Content-Length"


class ModelError(Exception):
    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class ModelSpec:
    window: int
    horizon: int
    quantiles: tuple[float, ...]  # ascending
    outputs: tuple[str, ...]  # output names, in the order of `quantiles`
    step: Optional[float]  # seconds; None when the server does not publish it
    version: str = ""

    @property
    def median_index(self) -> int:
        """The index of the quantile nearest 0.5: the forecast the loop scores and calibrates around."""
        return min(range(len(self.quantiles)), key=lambda i: abs(self.quantiles[i] - 0.5))


class V2Client:
    def __init__(self, config: ModelConfig):
        self.config = config
        self.base = f"{config.url}/v2/models/{urllib.parse.quote(config.name, safe='')}"

    def _token(self) -> dict:
        if not self.config.bearer_token_file:
            return {}
        # read on every call: the Secret is rotated in place; its first token is the one to send
        try:
            lines = [line.strip() for line in Path(self.config.bearer_token_file).read_text().splitlines()]
        except OSError as exc:
            raise ModelError("model_token", f"cannot read the model's bearer token file: {exc}") from None
        token = next((t for t in lines if t and not t.startswith("#")), None)
        if token is None:
            raise ModelError("model_token", f"{self.config.bearer_token_file} holds no token")
        return {"Authorization": "Bearer " + token}

    def _call(self, url: str, body: Optional[bytes] = None, headers: Optional[dict] = None) -> tuple[int, dict, bytes]:
        request = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET",
                                         headers={**(headers or {}), **self._token()})
        where = f"the model at {self.config.url}"
        try:
            with urllib.request.urlopen(request, timeout=self.config.timeout) as resp:
                return resp.status, dict(resp.headers), resp.read()
        except urllib.error.HTTPError as exc:
            try:
                detail = exc.read()[:300].decode(errors="replace")
            except OSError:
                detail = ""
            if exc.code in (502, 503, 504):
                raise ModelError("model_not_ready", f"{where} is not ready ({exc.code}): {detail}") from None
            raise ModelError("model_error", f"{where} answered {exc.code}: {detail}") from None
        except (TimeoutError, socket.timeout):
            raise ModelError("model_timeout", f"{where} did not answer in {self.config.timeout:g}s") from None
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, (TimeoutError, socket.timeout)):
                raise ModelError("model_timeout", f"{where} did not answer in {self.config.timeout:g}s") from None
            raise ModelError("model_unreachable", f"cannot reach {where}: {exc.reason}") from None
        except (ConnectionError, http.client.HTTPException) as exc:
            raise ModelError("model_unreachable", f"cannot reach {where}: {exc!r}") from None

    def _json(self, url: str) -> dict:
        _, _, body = self._call(url)
        try:
            payload = json.loads(body)
        except ValueError:
            raise ModelError("model_malformed", f"{url} did not answer with JSON") from None
        if not isinstance(payload, dict):
            raise ModelError("model_malformed", f"{url} answered with {type(payload).__name__}, not an object")
        return payload

    def spec(self) -> ModelSpec:
        ready = self._json(f"{self.base}/ready")
        if ready.get("ready") is not True:
            raise ModelError("model_not_ready", f"model {self.config.name} is not ready")
        meta = self._json(self.base)
        try:
            inputs = {t["name"]: t for t in meta["inputs"]}
            window = int(inputs[INPUT_NAME]["shape"][-1])
            outputs = []
            for t in meta["outputs"]:
                match = _QUANTILE_OUTPUT.match(t["name"])
                if match:
                    outputs.append((float(match.group(1)) / 100, t["name"], int(t["shape"][-1])))
        except (KeyError, TypeError, ValueError, IndexError):
            raise ModelError("model_malformed", f"model metadata of {self.config.name} has no '{INPUT_NAME}' input "
                                                "of shape [-1, W] and pNN outputs of shape [-1, H]") from None
        horizons = {h for _, _, h in outputs}
        if window < 2 or not outputs or len(horizons) != 1 or min(horizons) < 1:
            raise ModelError("model_malformed", f"model metadata of {self.config.name}: window {window}, "
                                                f"outputs {outputs}: not a quantile forecaster")
        outputs.sort()
        return ModelSpec(window=window, horizon=horizons.pop(), quantiles=tuple(q for q, _, _ in outputs),
                         outputs=tuple(n for _, n, _ in outputs), step=self._card_step(),
                         version=str((meta.get("versions") or [""])[0]))

    def _card_step(self) -> Optional[float]:
        """The step from the server's model-card metric; None when it is not there."""
        try:
            _, _, body = self._call(f"{self.config.url}/metrics")
            for family in text_string_to_metric_families(body.decode(errors="replace")):
                if family.name == "perf_predictor_model_info":
                    for sample in family.samples:
                        if sample.labels.get("model") == self.config.name and sample.labels.get("step_seconds"):
                            return float(sample.labels["step_seconds"])
        except (ModelError, ValueError):
            pass
        return None

    def forecast(self, history: np.ndarray, spec: ModelSpec) -> np.ndarray:
        """[n, W] -> [n_quantiles, n, H] float64, in as few calls as `max_batch_series` allows."""
        n = len(history)
        out = np.empty((len(spec.outputs), n, spec.horizon))
        size = self.config.max_batch_series
        for lo in range(0, n, size):
            out[:, lo: lo + size] = self._infer(history[lo: lo + size], spec)
        return out

    def _infer(self, rows: np.ndarray, spec: ModelSpec) -> np.ndarray:
        raw = np.ascontiguousarray(rows, dtype="<f8").tobytes()
        header = json.dumps({
            "inputs": [{"name": INPUT_NAME, "datatype": "FP64", "shape": list(rows.shape),
                        "parameters": {"binary_data_size": len(raw)}}],
            "outputs": [{"name": name, "parameters": {"binary_data": True}} for name in spec.outputs],
        }).encode()
        _, headers, body = self._call(f"{self.base}/infer", header + raw, {
            "Content-Type": "application/octet-stream", HEADER_LENGTH: str(len(header))})
        return decode_reply(body, headers, spec, len(rows))


def decode_reply(body: bytes, headers: dict, spec: ModelSpec, n: int) -> np.ndarray:
    """A v2 infer reply (JSON, or JSON + binary outputs) -> [n_quantiles, n, H]; ModelError if it is not one."""
    def malformed(message: str) -> ModelError:
        return ModelError("model_malformed", f"the model's reply {message}")

    length = {k.lower(): v for k, v in headers.items()}.get(HEADER_LENGTH.lower())
    try:
        json_length = int(length) if length is not None else len(body)
    except ValueError:
        raise malformed(f"has a bad {HEADER_LENGTH}: {length!r}") from None
    if not 0 < json_length <= len(body):
        raise malformed(f"has {HEADER_LENGTH} {json_length} for {len(body)} bytes")
    try:
        reply = json.loads(body[:json_length])
        outputs = {o["name"]: o for o in reply["outputs"]}
    except (ValueError, KeyError, TypeError):
        raise malformed("is not a v2 inference response with 'outputs'") from None
    result = np.empty((len(spec.outputs), n, spec.horizon))
    offset = json_length
    blocks = {}
    for entry in reply["outputs"]:  # binary blocks follow the JSON in the order of the outputs
        size = (entry.get("parameters") or {}).get("binary_data_size") if isinstance(entry, dict) else None
        if size is not None:
            if not isinstance(size, int) or size < 0 or offset + size > len(body):
                raise malformed(f"declares {size} bytes of binary data that the body does not carry")
            blocks[entry.get("name")] = body[offset: offset + size]
            offset += size
    for i, name in enumerate(spec.outputs):
        entry = outputs.get(name)
        if entry is None:
            raise malformed(f"has no output {name!r}")
        if entry.get("shape") != [n, spec.horizon]:
            raise malformed(f"output {name!r} has shape {entry.get('shape')}, expected {[n, spec.horizon]}")
        try:
            if name in blocks:
                dtype = {"FP32": "<f4", "FP64": "<f8"}[entry.get("datatype")]
                values = np.frombuffer(blocks[name], dtype=dtype)
            else:
                values = np.asarray(entry["data"], dtype=np.float64)
            result[i] = values.reshape(n, spec.horizon)
        except (KeyError, TypeError, ValueError):
            raise malformed(f"output {name!r} is not {n}x{spec.horizon} numbers") from None
    if not np.isfinite(result).all():
        raise malformed("holds NaN or infinite forecasts")
    return result
